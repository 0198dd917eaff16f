//! One plain-HTTP GET over hyper: `tether dev` and the load generator ask a
//! relay's admin port for `/readyz` and `/metrics`.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// `GET path` from the plain-HTTP server at `addr`; status and body, within 5 s.
pub async fn get(addr: &str, path: &str) -> std::io::Result<(StatusCode, Bytes)> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", addr).body(Empty::<Bytes>::new()).map_err(std::io::Error::other)?;
        let resp = send.send_request(req).await.map_err(std::io::Error::other)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")))
}
