//! Dialling a relay over TLS, shared by the agent and the client.
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest a TCP connect plus TLS handshake to a relay may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `addr` over TLS, verifying the relay as `server_name`.
pub async fn dial(addr: &str, server_name: &str, cfg: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let name = super::server_name(server_name).map_err(std::io::Error::other)?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
        super::handshake_done(tls.get_ref().1);
        Ok(tls)
    };
    tokio::time::timeout(DIAL_TIMEOUT, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out"))?
}
