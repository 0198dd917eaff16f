//! Admin HTTP (17090): `/metrics`, `/healthz`, `/readyz`. Tiny HTTP/1.1
//! responder: one bounded request per connection, then close.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::state::State;

const MAX_REQUEST: usize = 8 * 1024;

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = state.drain.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(tcp, &state)).await;
        });
    }
}

async fn answer(mut tcp: TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        if tcp.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    let line = String::from_utf8_lossy(buf.split(|&b| b == b'\n').next().unwrap_or_default()).to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", crate::metrics::render()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if state.ready.load(Ordering::Relaxed) && !state.shutdown.is_cancelled() => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        "/readyz" => ("503 Service Unavailable", "text/plain", "draining\n".to_string()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    tcp.shutdown().await
}
