//! Accepting connections the same way on every listener.
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The next connection, or `None` once `stop` is cancelled. Accept errors
/// (EMFILE and friends) are logged and followed by a short pause instead of
/// a spin.
pub async fn accept(listener: &TcpListener, name: &str, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => r,
        };
        match r {
            Ok(x) => return Some(x),
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
