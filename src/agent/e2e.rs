//! A tunnelled connection's end-to-end protection at the device: a TLS
//! handshake with the client, or, for a session's later connections, keys
//! derived from one of its earlier handshakes ([`crate::stream::derived`]).
//! Either way the client must prove the grant's key (directly, or by the
//! secret only that proof yielded) before the service is connected.
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::either::Either;

use super::state::AgentSession;
use crate::metrics;
use crate::stream::Prefixed;
use crate::stream::derived::{HEADER_LEN, Header, MARKER, SessionSecret};
use crate::stream::pipe::AppEnd;
use crate::stream::resumable::{self, ResumeKey};
use crate::stream::sealed::{SALT, Sealed};
use crate::tls::{self, ALPN_E2E_KEYED};

/// The device's end of a tunnelled connection's protection.
pub type E2e = Either<tokio_rustls::server::TlsStream<Prefixed<AppEnd>>, Sealed<AppEnd>>;

/// Sets up connection `conn`'s protection over `pipe` as the client's first
/// bytes ask, and its resume key. The error names why (for the audit).
pub async fn accept(session: &AgentSession, conn: u32, mut pipe: AppEnd, key: &ResumeKey) -> Result<E2e, String> {
    let mut first = [0u8; 1];
    pipe.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    if first[0] != MARKER {
        let acceptor = tokio_rustls::TlsAcceptor::from(session.e2e.clone());
        let t =
            acceptor.accept(Prefixed::new(Bytes::copy_from_slice(&first), pipe)).await.map_err(|e| e.to_string())?;
        let c = t.get_ref().1;
        tls::handshake_done(c);
        resumable::set_key_from(&**c, key, conn);
        if c.alpn_protocol() == Some(ALPN_E2E_KEYED)
            && let Some(s) = SessionSecret::export(&**c, &session.id, conn)
        {
            session.secrets.keep(s);
        }
        metrics::AGENT_E2E.with_label_values(&["handshake"]).inc();
        return Ok(Either::Left(t));
    }
    let mut h = [0u8; HEADER_LEN];
    h[0] = MARKER;
    pipe.read_exact(&mut h[1..]).await.map_err(|e| format!("keyed header: {e}"))?;
    let header = Header::parse(&h).ok_or("keyed header: bad marker")?;
    let secret = session
        .secrets
        .of(header.base)
        .await
        .ok_or_else(|| format!("keyed header names connection {}, which keyed nothing here", header.base))?;
    let keys = secret.accept(&header, &session.id, conn).ok_or("keyed header: wrong MAC")?;
    let _ = key.set(keys.resume_key());
    let salt: [u8; SALT] = crate::util::random_bytes();
    let mut sealed = Sealed::new(pipe, keys.downstream(&salt), keys.upstream(), salt.to_vec());
    sealed.flush().await.map_err(|e| e.to_string())?;
    metrics::AGENT_E2E.with_label_values(&["keyed"]).inc();
    Ok(Either::Right(sealed))
}
