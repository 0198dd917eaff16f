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
use std::io;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Returns when `socket`'s peer refused a datagram; pends forever if the
/// socket cannot be watched.
pub async fn refused(socket: io::Result<UdpSocket>) {
    let Ok(socket) = socket else { return std::future::pending().await };
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
