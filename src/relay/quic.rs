//! QUIC listeners: agents on the data port's number over UDP (17002),
//! specialists on the client port's (17443). A connection is authenticated
//! like a TLS leg (agents by their device certificate, checked against the
//! CA and CRL); each bidirectional stream on it is then one leg, served by
//! the same handler as a TCP leg: an agent's stream by its first frame
//! (`DataOpen`: a data leg; anything else: control or fetch), a
//! specialist's stream as a client leg.
//!
//! Bounds before authentication are those of the TCP listeners: the
//! handshake budget and the per-source cap of [`super::gate`], the handshake
//! deadline, `max_connections`; after it, the streams a peer may hold open
//! at once (quinn refuses more by flow control) and one `max_connections`
//! slot per stream.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, Incoming};

use tokio::io::AsyncReadExt;
use tracing::Instrument;

use super::gate::{self, Counted};
use super::state::State;
use super::{Accepted, Auth, client, control, data};
use crate::metrics;
use crate::quic::QuicLeg;
use crate::stream::prefixed::Prefixed;
use crate::tls;

/// Which peers a QUIC listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agents,
    Clients,
}

impl Side {
    fn listener(self) -> &'static str {
        match self {
            Side::Agents => "quic-agent",
            Side::Clients => "quic-client",
        }
    }

    /// Streams a peer may open at first: a specialist opens one per
    /// tunnelled connection, an agent rarely more than its control channel.
    fn initial_streams(self) -> u32 {
        match self {
            Side::Agents => crate::quic::INITIAL_AGENT_STREAMS,
            Side::Clients => crate::quic::INITIAL_STREAMS,
        }
    }
}

/// Builds the endpoint of one QUIC listener on its bound socket.
pub fn endpoint(
    cfg: &super::RelayConfig,
    side: Side,
    socket: std::net::UdpSocket,
) -> Result<Endpoint, super::RelayError> {
    let addr = socket.local_addr().map_err(|source| super::RelayError::Bind {
        what: side.listener(),
        addr: cfg.data,
        source,
    })?;
    let id = tls::Identity { ca: &cfg.ca, cert: &cfg.cert, key: &cfg.key };
    let (client_auth, crl, alpn) = match side {
        Side::Agents => (true, cfg.crl.as_deref(), tls::ALPN_QUIC_AGENT),
        Side::Clients => (false, None, tls::ALPN_QUIC_CLIENT),
    };
    let mut tls = tls::quic_server_config(&id, client_auth, crl, alpn, side.listener())?;
    if side == Side::Clients {
        // A client that reads `Waiting` frames gets them; an older one, not.
        tls = tls::server_offering(tls, &[tls::ALPN_QUIC_CLIENT_WAITS, tls::ALPN_QUIC_CLIENT]);
    }
    // Stateless resets keyed by this relay's own key: stable across restarts.
    let secret = {
        use sha2::Digest;
        let key = std::fs::read(&cfg.key).map_err(|source| super::RelayError::Bind { what: "key", addr, source })?;
        let mut h = sha2::Sha256::new();
        h.update(b"tether quic stateless reset\0");
        h.update(side.listener().as_bytes());
        h.update(&key);
        h.finalize()
    };
    crate::quic::server(socket, tls, &secret, side.initial_streams()).map_err(|e| super::RelayError::Bind {
        what: side.listener(),
        addr,
        source: e.into(),
    })
}

/// Accepts QUIC connections until shutdown, refuses them until the drain,
/// then closes the endpoint. Not at shutdown: that would cut every live
/// connection before the drain ended its sessions (a relay without a twin
/// tells each client `relay_shutdown`) or flushed replication to the twin;
/// each connection closes at the drain (`serve`).
pub async fn accept_loop(side: Side, endpoint: Endpoint, state: Arc<State>) {
    let name = side.listener();
    let limits = &state.cfg.limits;
    let hs_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let gate = Arc::new(gate::Gate::new(name, limits.max_handshakes, limits.max_pending_per_source));
    state.tracker.spawn(super::report_drops(state.clone(), gate.clone()));
    loop {
        let incoming = tokio::select! {
            _ = state.drain.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let peer = incoming.remote_address();
        if state.shutdown.is_cancelled() {
            incoming.refuse();
            gate.dropped(peer.ip(), "draining");
            continue;
        }
        let hs_permit = match gate.admit(peer.ip()) {
            Ok(p) => p,
            Err(reason) => {
                incoming.refuse();
                gate.dropped(peer.ip(), reason);
                continue;
            }
        };
        let (state2, gate2) = (state.clone(), gate.clone());
        let span = tracing::info_span!("quic", listener = name, %peer, device = tracing::field::Empty);
        // The task lives as long as the connection: it holds the incoming
        // connection and the handshake's state boxed, not room for them.
        let incoming = Box::new(incoming);
        state.tracker.spawn(
            async move {
                let res = Box::pin(tokio::time::timeout(hs_timeout, handshake(incoming))).await;
                drop(hs_permit);
                let conn = match res {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return state2.handshake_failed(name, peer, failure_label(&e), &e.to_string()),
                    Err(_) => {
                        metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[name, "timeout"]).inc();
                        return gate2.dropped(peer.ip(), "timeout");
                    }
                };
                let device = match side {
                    Side::Clients => None,
                    Side::Agents => match peer_device(&conn) {
                        Some(d) => {
                            gate2.known_good(peer.ip());
                            tracing::Span::current().record("device", d.0.as_str());
                            Some(d)
                        }
                        None => {
                            conn.close(0u32.into(), b"no device id");
                            let detail = "client certificate has no common name";
                            return state2.handshake_failed(name, peer, "no_device_id", detail);
                        }
                    },
                };
                serve(state2, (side, gate2), conn, peer, device).await
            }
            .instrument(span),
        );
    }
    endpoint.close(0u32.into(), b"relay shutting down");
}

async fn handshake(incoming: Box<Incoming>) -> Result<Connection, quinn::ConnectionError> {
    incoming.accept()?.await
}

/// The device a QUIC connection's verified certificate names, and the certificate (DER).
fn peer_device(conn: &Connection) -> Option<(String, Arc<[u8]>)> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    Some((tls::peer_common_name(Some(&certs))?, certs.first()?.as_ref().into()))
}

/// Serves the streams of one connection until it closes.
async fn serve(
    state: Arc<State>,
    (side, gate): (Side, Arc<gate::Gate>),
    conn: Connection,
    peer: SocketAddr,
    device: Option<(String, Arc<[u8]>)>,
) {
    let name = side.listener();
    // A device whose certificate a reloaded CRL revokes loses the whole
    // connection: its control channel, its streams, its sessions here.
    let (device, cert) = device.unzip();
    let mut revoked = state.trust.watch(cert.as_deref());
    let first_byte = Duration::from_millis(state.cfg.limits.handshake_timeout_ms);
    let mut count = crate::quic::StreamCount::new(side.initial_streams(), state.cfg.limits.quic_max_streams);
    // A specialist's connection proves nothing by itself (no certificate):
    // it lives while it has a stream, and a stream only while its first frame
    // is good. One without any for the handshake deadline is closed.
    let mut idle = crate::util::interval_after(first_byte);
    let mut streamless = 0u32;
    // A specialist that negotiated `tether-client-quic/2` reads `Waiting` frames.
    let waits = side == Side::Clients && {
        let negotiated = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        tls::client_waits(negotiated.as_deref())
    };
    loop {
        let (send, recv) = tokio::select! {
            _ = state.drain.cancelled() => return conn.close(0u32.into(), b"relay draining"),
            _ = &mut revoked => {
                conn.close(0u32.into(), b"certificate revoked");
                return state.peer_revoked(name, peer, device.as_deref().unwrap_or_default());
            }
            _ = idle.tick(), if side == Side::Clients => {
                streamless = if count.open() == 0 { streamless + 1 } else { 0 };
                if streamless >= 2 {
                    conn.close(0u32.into(), b"no stream");
                    // Counted, and audited in the listener's aggregate record.
                    return gate.dropped(peer.ip(), "no_stream");
                }
                continue;
            }
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC connection ended");
                    return;
                }
            },
        };
        let counted = count.opened(&conn);
        let Ok(slot) = state.conn_limit.clone().try_acquire_owned() else {
            gate.dropped(peer.ip(), "max_connections");
            drop((send, recv));
            continue;
        };
        let span = tracing::info_span!(
            parent: None,
            "conn",
            listener = name,
            %peer,
            device = tracing::field::Empty,
            session = tracing::field::Empty
        );
        // The stream counts until the leg is dropped, wherever it went (a
        // data leg is handed to the join it pairs with).
        let leg = Counted::new(QuicLeg::new(send, recv), (gate::Open::new(slot, name), counted));
        let stream = Box::new(Stream {
            state: state.clone(),
            leg,
            side,
            peer,
            device: device.clone(),
            cert: cert.clone(),
            conn: conn.clone(),
            first_byte,
            waits,
        });
        state.tracker.spawn(serve_stream(stream).instrument(span));
    }
}

/// A stream a peer opened, to be served as a leg.
struct Stream {
    state: Arc<State>,
    leg: Counted,
    side: Side,
    peer: SocketAddr,
    device: Option<String>,
    cert: Option<Arc<[u8]>>,
    conn: Connection,
    first_byte: Duration,
    /// The connection's ALPN is a specialist's that reads `Waiting` frames.
    waits: bool,
}

/// What a stream turned out to be.
enum Kind {
    Client,
    Data,
    Control,
}

/// Serves one stream as the leg it is. Each phase is boxed: the task lives
/// as long as the leg (an agent's control channel: as long as the agent is
/// attached), and should hold no room for what it did before.
async fn serve_stream(stream: Box<Stream>) {
    let (state, peer) = (stream.state.clone(), stream.peer);
    let Some((kind, accepted)) = Box::pin(identify(stream)).await else { return };
    match kind {
        Kind::Client => Box::pin(client::serve(state, accepted, peer)).await,
        Kind::Data => Box::pin(data::serve(state, accepted, peer)).await,
        Kind::Control => Box::pin(control::serve(state, accepted, peer)).await,
    }
}

/// A specialist's stream is a client leg; an agent's says by its first
/// frame's header which kind of leg it is.
async fn identify(stream: Box<Stream>) -> Option<(Kind, Accepted)> {
    let Stream { state, mut leg, side, peer, device, cert, conn, first_byte, waits } = *stream;
    let auth = Auth::Tls { device, alpn_ok: true, waits };
    if side == Side::Clients {
        return Some((Kind::Client, Accepted { leg: Box::new(leg), auth, cert, transport: "quic", quic: None }));
    }
    let mut header = [0u8; 5];
    match tokio::time::timeout(first_byte, leg.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            state.left_before_first_frame(side.listener(), peer, &e.to_string());
            return None;
        }
        Err(_) => {
            state.handshake_failed(side.listener(), peer, "preamble_timeout", "no frame in time");
            return None;
        }
    }
    let kind = if crate::proto::is_data_open(&header) { Kind::Data } else { Kind::Control };
    let leg = Box::new(Prefixed::new(Bytes::copy_from_slice(&header), leg));
    Some((kind, Accepted { leg, auth, cert, transport: "quic", quic: Some(conn) }))
}

/// A stable label for why a QUIC handshake failed.
fn failure_label(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as E;
    match e {
        // quinn keeps rustls's reason as text: a wrong role shows there only.
        E::TransportError(t) if t.reason.contains(tls::WRONG_ROLE_MARK) => "cert_wrong_role",
        E::TransportError(t) => crypto_label(u64::from(t.code)),
        E::ConnectionClosed(c) => crypto_label(u64::from(c.error_code)),
        E::TimedOut => "timeout",
        E::Reset => "reset",
        E::VersionMismatch => "quic_version",
        E::ApplicationClosed(_) | E::LocallyClosed => "closed",
        E::CidsExhausted => "quic_other",
    }
}

/// QUIC carries a TLS alert as error code 0x100 + the alert.
fn crypto_label(code: u64) -> &'static str {
    match code.checked_sub(0x100) {
        Some(42) => "cert_invalid",
        Some(43) => "cert_unsupported",
        Some(44) => "cert_revoked",
        Some(45) => "cert_expired",
        Some(48) => "cert_unknown_issuer",
        Some(116) => "no_client_cert",
        Some(120) => "alpn_mismatch",
        Some(40) => "handshake_failure",
        Some(_) => "tls_other",
        None => "quic_other",
    }
}
