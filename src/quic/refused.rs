//! Whether a dialler's UDP socket was refused by the relay's port.
//!
//! A socket `connect()`ed to one address gets `ECONNREFUSED` from the
//! kernel when an ICMP "port unreachable" comes back: nothing listens for
//! UDP there (a relay with `quic = false`, a balancer that carries TCP
//! only) or a firewall rejects rather than drops. quinn never sees it in
//! time: the error wakes no reader (it is error readiness, not readable),
//! and quinn-udp drops it when the next send gets it: a retransmission, or
//! the close once TCP has won. [`refused`] waits for that readiness on a second handle to
//! the socket, so [`super::connect`] fails at once and `auto` uses TCP
//! without waiting out QUIC's head start. A datagram that is silently
//! dropped still costs the head start: nothing tells it apart from a slow
//! path.
//!
//! Once connected, [`watch`] goes on looking for the life of the connection.
use std::io;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Returns when `socket`'s peer refused a datagram; pends forever without
/// a socket to watch.
pub async fn refused(socket: Option<&UdpSocket>) {
    let Some(socket) = socket else { return std::future::pending().await };
    loop {
        if socket.ready(Interest::ERROR).await.is_err() {
            return std::future::pending().await;
        }
        match socket.take_error() {
            Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return,
            // Another error, or none left: wait for the next.
            _ => {
                let _ = socket.try_io(Interest::ERROR, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            }
        }
    }
}

/// For the life of `conn`: a refusal means the relay's process is gone (its
/// host answers for the port no one holds any more), so `conn` is closed at
/// once and what runs over it moves to the twin now, rather than when its
/// keep-alives go unanswered. quinn ignores such errors, as a forged ICMP
/// could close a connection; here the worst a forgery does is move one
/// session's legs to the twin, losing nothing.
pub async fn watch(socket: UdpSocket, conn: quinn::Connection, peer: std::net::SocketAddr) {
    tokio::select! {
        _ = refused(Some(&socket)) => {
            tracing::info!(%peer, "the relay's UDP port refused a datagram (port unreachable: the relay is gone); closing its QUIC connection");
            conn.close(quinn::VarInt::from_u32(0), b"relay port unreachable");
        }
        _ = conn.closed() => {}
    }
}
