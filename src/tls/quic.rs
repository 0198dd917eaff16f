//! rustls configs for QUIC legs: the same identities, CA, CRL and provider as
//! the TCP surfaces, TLS 1.3 only (QUIC has no other), one ALPN each.
//!
//! quinn does not expose the rustls connection, so the negotiated group is
//! counted by the key exchange itself: the server's groups are wrapped so
//! that each completed exchange counts one handshake of its surface. QUIC
//! legs neither issue nor use session tickets (one handshake per
//! agent-relay pair or per client session), so every such handshake is `full`.
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SupportedKxGroup};
use rustls::{ClientConfig, NamedGroup, ServerConfig};

use super::{Identity, TlsError};

/// ALPN of an agent's QUIC connection (control, data and fetch streams).
pub const ALPN_QUIC_AGENT: &[u8] = b"tether-agent-quic/1";
/// ALPN of a specialist's QUIC connection (control leg and one stream per connection).
pub const ALPN_QUIC_CLIENT: &[u8] = b"tether-client-quic/1";
/// The same, from a client that reads [`crate::proto::Frame::Waiting`] (as
/// [`super::ALPN_CLIENT_WAITS`] over TCP).
pub const ALPN_QUIC_CLIENT_WAITS: &[u8] = b"tether-client-quic/2";

/// Server config of a QUIC listener; `surface` labels its handshakes.
pub fn quic_server_config(
    id: &Identity<'_>,
    client_auth: bool,
    crl: Option<&Path>,
    alpn: &[u8],
    surface: &'static str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = (*super::server_config_with(counting_provider(surface), id, client_auth, crl, alpn)?).clone();
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// Client config of a QUIC leg: as [`super::client_config`], without resumption.
pub fn quic_client_config(
    ca: &Path,
    crl: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = (*super::client_config_with_crl(ca, crl, client_cert, alpn)?).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The crypto provider, with key exchange groups that count completed
/// server-side exchanges for `surface`. One provider per surface, built once.
fn counting_provider(surface: &'static str) -> Arc<CryptoProvider> {
    type Built = Vec<(&'static str, Arc<CryptoProvider>)>;
    static BUILT: LazyLock<Mutex<Built>> = LazyLock::new(Default::default);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(s, _)| *s == surface) {
        return p.clone();
    }
    let mut p = (*super::provider()).clone();
    p.kx_groups = p
        .kx_groups
        .iter()
        .map(|&inner| -> &'static dyn SupportedKxGroup { Box::leak(Box::new(Counted { inner, surface })) })
        .collect();
    let p = Arc::new(p);
    built.push((surface, p.clone()));
    p
}

#[derive(Debug)]
struct Counted {
    inner: &'static dyn SupportedKxGroup,
    surface: &'static str,
}

impl SupportedKxGroup for Counted {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        self.inner.start()
    }

    fn start_and_complete(&self, peer_pub_key: &[u8]) -> Result<CompletedKeyExchange, rustls::Error> {
        let done = self.inner.start_and_complete(peer_pub_key)?;
        let group = super::group_label(Some(self.inner.name()));
        crate::metrics::TLS_HANDSHAKES.with_label_values(&[self.surface, group, "full"]).inc();
        Ok(done)
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}
