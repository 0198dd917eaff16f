//! TLS to PostgreSQL, named in the URL as libpq names it:
//! `postgres://…?sslmode=verify-full&sslrootcert=CA.pem`. The server's
//! certificate must chain to that CA and name the host of the URL; anything
//! weaker is refused with the reason, and a plain connection to a host off
//! this machine is logged as a warning.
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::sql::StoreError;

/// How to reach the database: the URL for tokio-postgres (our TLS options
/// taken out) and, with `verify-full`, the TLS client configuration.
pub struct Target {
    pub url: String,
    pub tls: Option<Arc<ClientConfig>>,
}

fn refused(why: impl Into<String>) -> StoreError {
    StoreError::Db(format!("PostgreSQL URL: {}", why.into()))
}

/// Reads `sslmode` and `sslrootcert` out of `url` (a relative `sslrootcert`
/// is taken from `base`).
pub fn target(url: &str, base: &Path) -> Result<Target, StoreError> {
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root) = (None, None);
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => mode = Some(decode(v)),
            "sslrootcert" => root = Some(decode(v)),
            "sslcert" | "sslkey" => {
                return Err(refused("client certificates (sslcert, sslkey) are not supported; use a password"));
            }
            _ => rest.push(kv),
        }
    }
    let tls = match (mode.as_deref(), root) {
        (None | Some("disable"), None) => {
            if let Some(host) = off_machine_host(head) {
                tracing::warn!(host, "PostgreSQL without TLS: add sslmode=verify-full&sslrootcert=CA.pem to the URL");
            }
            None
        }
        (None | Some("disable"), Some(_)) => return Err(refused("sslrootcert needs sslmode=verify-full")),
        (Some("verify-full"), Some(root)) => Some(client_config(&base.join(root))?),
        (Some("verify-full"), None) => return Err(refused("sslmode=verify-full needs sslrootcert=CA.pem")),
        (Some(m @ ("allow" | "prefer" | "require")), _) => {
            return Err(refused(format!(
                "sslmode={m} does not check the server's certificate: use sslmode=verify-full&sslrootcert=CA.pem"
            )));
        }
        (Some("verify-ca"), _) => {
            return Err(refused("sslmode=verify-ca does not check the server's name: use sslmode=verify-full"));
        }
        (Some(m), _) => return Err(refused(format!("unknown sslmode {m:?}"))),
    };
    // tokio-postgres then insists on TLS (no plain fallback).
    if tls.is_some() {
        rest.push("sslmode=require");
    }
    let url = if rest.is_empty() { head.to_string() } else { format!("{head}?{}", rest.join("&")) };
    Ok(Target { url, tls })
}

fn client_config(root: &Path) -> Result<Arc<ClientConfig>, StoreError> {
    let roots = crate::tls::load_roots(root).map_err(|e| refused(format!("sslrootcert: {e}")))?;
    let cfg = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| refused(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `%XX` escapes, as in any URL query value.
fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = || std::str::from_utf8(b.get(i + 1..i + 3)?).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex()) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL's host when it is neither loopback nor a Unix socket directory.
fn off_machine_host(head: &str) -> Option<String> {
    let after = head.split_once("://")?.1;
    let authority = after.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    let local = host.is_empty()
        || host == "localhost"
        || host.starts_with('%')
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!local).then(|| host.to_string())
}

/// rustls for tokio-postgres.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

pub struct Connect {
    cfg: Arc<ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

/// The TLS stream to the server. No channel binding: the certificate check
/// (verify-full) is what stops a man in the middle.
pub struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        let name = rustls::pki_types::ServerName::try_from(domain)?.to_owned();
        Ok(Connect { cfg: self.0.clone(), name })
    }
}

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let t = tokio_rustls::TlsConnector::from(self.cfg).connect(self.name, socket).await?;
            Ok(Stream(t))
        })
    }
}

impl tokio_postgres::tls::TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_modes_are_refused_with_the_reason_and_options_are_taken_out() {
        let base = Path::new("/nonexistent");
        let err = |u: &str| target(u, base).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("postgres://h/db?sslmode=require").contains("does not check the server's certificate"));
        assert!(err("postgres://h/db?sslmode=prefer").contains("does not check the server's certificate"));
        assert!(err("postgres://h/db?sslmode=verify-ca").contains("does not check the server's name"));
        assert!(err("postgres://h/db?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("postgres://h/db?sslrootcert=ca.pem").contains("needs sslmode=verify-full"));
        assert!(err("postgres://h/db?sslmode=verify-full&sslrootcert=ca.pem").contains("sslrootcert"));
        assert!(err("postgres://h/db?sslcert=c.pem").contains("not supported"));
        let plain = target("postgres://u:p@127.0.0.1:5432/db?options=-csearch_path%3Dx", base).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.url, "postgres://u:p@127.0.0.1:5432/db?options=-csearch_path%3Dx");
        assert_eq!(decode("a%2Fb%3dc%zz"), "a/b=c%zz");
        assert_eq!(off_machine_host("postgres://u:p@db.example:5432/x").as_deref(), Some("db.example"));
        assert_eq!(off_machine_host("postgres://u:p@[::1]:5432/x"), None);
        assert_eq!(off_machine_host("postgres://localhost/x"), None);
    }
}

/// Against the real PostgreSQL that CI serves over TLS
/// (`TETHER_TEST_POSTGRES_TLS`, a certificate for `localhost` only).
#[cfg(test)]
mod server_tests {
    use super::super::{Sql, Store, StoreError, Val, postgres::Postgres};
    use std::path::Path;

    fn url() -> Option<String> {
        let url = std::env::var("TETHER_TEST_POSTGRES_TLS").ok();
        if url.is_none() {
            assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES_TLS (.ci/run configures it)");
            eprintln!("TETHER_TEST_POSTGRES_TLS not set: PostgreSQL TLS test skipped (CI runs it)");
        }
        url
    }

    #[tokio::test]
    async fn postgres_over_tls_checks_the_ca_and_the_name() {
        let Some(url) = url() else { return };
        let db = Postgres::connect(&url, Path::new(".")).await.expect("verify-full against the CI server");
        let row = db
            .query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", vec![])
            .await
            .unwrap()
            .remove(0);
        assert_eq!(row.0[0], Val::Int(1), "the server sees this connection as TLS");
        assert!(matches!(&row.0[1], Val::Text(v) if v.starts_with("TLSv1.")), "{:?}", row.0[1]);
        // The store works over it, in its own schema.
        let schema = format!("t_{}", hex::encode(crate::random_bytes::<6>()));
        db.exec(&format!("CREATE SCHEMA {schema}"), vec![]).await.unwrap();
        let store = Store::open(&format!("{url}&options=-csearch_path%3D{schema}"), Path::new(".")).await.unwrap();
        assert_eq!(store.engine(), "postgres");
        store.device_add(&crate::hub::model::Device::new("INJ-1", "s", "auto"), 5).await.unwrap();
        assert_eq!(store.device("INJ-1").await.unwrap().unwrap().site, "s");

        // The certificate names localhost, not 127.0.0.1: refused.
        let by_ip = url.replacen("@localhost:", "@127.0.0.1:", 1);
        let err = Postgres::connect(&by_ip, Path::new(".")).await.err().expect("a name mismatch must fail");
        assert!(err.to_string().contains("not valid for name \"127.0.0.1\""), "{err}");
        // Not an outage: a hub starting on it stops with the reason, it does not wait.
        assert!(matches!(err, StoreError::Db(_)), "a TLS failure is taken for an outage: {err:?}");
        // Another CA: refused.
        let dir = tempfile::tempdir().unwrap();
        crate::tls::pki::init_dir(dir.path(), &[]).unwrap();
        let (head, _) = url.split_once("sslrootcert=").unwrap();
        let other = format!("{head}sslrootcert={}", dir.path().join("ca.pem").display());
        let err = Postgres::connect(&other, Path::new(".")).await.err().expect("an unknown CA must fail");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(matches!(err, StoreError::Db(_)), "a TLS failure is taken for an outage: {err:?}");
    }
}
