//! `tether connect`'s forwarder: each local connection through the session.
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::ClientSession;
use crate::proto::Reason;
use crate::splice::{Meter, splice};

impl ClientSession {
    /// Forwards every connection accepted on `listener` through the session,
    /// until the session ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Reason {
        loop {
            let (local, peer) = tokio::select! {
                r = self.ended() => return r,
                a = listener.accept() => match a {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "local accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = local.set_nodelay(true);
            let s = self.clone();
            tokio::spawn(async move {
                let mut local = local;
                // Boxed: once connected, the task holds only the splice. What
                // the application writes while the relay pairs the
                // connection goes with it (keyed connections).
                let tunnel = match Box::pin(s.connect_early(&mut local)).await {
                    Ok((t, _)) => t,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "tunnelled connection refused");
                        eprintln!("connection from {peer} refused: {e}");
                        return;
                    }
                };
                tokio::select! {
                    r = splice(local, bytes::Bytes::new(), tunnel, bytes::Bytes::new(), Meter::new(&s.to_device), Meter::new(&s.to_client)) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "tunnelled connection closed");
                        }
                    }
                    _ = s.ended.cancelled() => {}
                }
            });
        }
    }
}
