//! Whether a dialler's UDP socket was refused by the relay's port.
//!
//! A socket `connect()`ed to one address gets `ECONNREFUSED` from the
//! kernel when an ICMP "port unreachable" comes back: nothing listens for
//! UDP there (a relay with `quic = false`, a balancer that carries TCP
//! only, a relay's process that is gone) or a firewall rejects rather than
//! drops. quinn ignores it; [`super::socket::Socket`] records it, and
//! [`refused`] returns on it, so [`super::connect`] fails at once and
//! `auto` uses TCP without waiting out QUIC's head start. A datagram that
//! is silently dropped still costs the head start: nothing tells it apart
//! from a slow path.
//!
//! Once connected, [`watch`] goes on looking for the life of the connection.
use std::sync::Arc;

use super::socket::Socket;

/// Returns when the relay's port refused a datagram sent from `socket`.
pub async fn refused(socket: &Socket) {
    let refusals = socket.refusals();
    tokio::select! {
        _ = refusals.next() => {}
        _ = async {
            // An error no send or receive took: recorded by the taking.
            while socket.take_unclaimed_error().await.is_ok() {}
            std::future::pending::<()>().await
        } => {}
    }
}

/// For the life of the connection on `endpoint` (a dialler's endpoint has
/// one): a refusal means the relay's process is gone (its host answers for
/// the port no one holds any more), so the connection is closed at once and
/// what runs over it moves to the twin now, rather than when its keep-alives
/// go unanswered. quinn ignores such errors, as a forged ICMP could close a
/// connection; here the worst a forgery does is move one session's legs to
/// the twin, losing nothing. The watch holds the endpoint, not the
/// connection, so a connection its owner drops is still closed for it, and
/// the watch ends when that close is done.
pub async fn watch(socket: Arc<Socket>, endpoint: quinn::Endpoint, peer: std::net::SocketAddr) {
    tokio::select! {
        _ = refused(&socket) => {
            tracing::info!(%peer, "the relay's UDP port refused a datagram (port unreachable: the relay is gone); closing its QUIC connection");
            endpoint.close(quinn::VarInt::from_u32(0), b"relay port unreachable");
        }
        _ = endpoint.wait_idle() => {}
    }
}
