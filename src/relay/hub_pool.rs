//! The relay's kept-alive hub connections for fetch legs (see `repo_fetch`).
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use super::config::RelayConfig;
use crate::api::HubClient;

/// Hub connections kept for fetch legs (each carries one request at a time).
const HUB_CONNECTIONS: usize = 4;
/// Requests in flight per relay (waiting for the hub or sending to an agent):
/// each holds up to 4 MiB, so this bounds the relay's fetch memory at 256 MiB.
const MAX_WAITING: usize = 64;

/// The relay's side of fetch legs: a few kept-alive hub connections.
pub struct Forward {
    hubs: Vec<HubClient>,
    next: AtomicUsize,
    pub waiting: Arc<Semaphore>,
}

impl Forward {
    /// `None` when the relay has no hub link (fetch legs are then refused).
    pub fn new(cfg: &RelayConfig) -> Option<Forward> {
        let link = cfg.hub.as_ref()?;
        let cert = (cfg.cert.as_path(), cfg.key.as_path());
        let mut hubs = Vec::with_capacity(HUB_CONNECTIONS);
        for _ in 0..HUB_CONNECTIONS {
            match HubClient::with_crl(&link.url, (&cfg.ca, cfg.crl.as_deref()), Some(cert), link.server_name.as_deref())
            {
                Ok(c) => hubs.push(c),
                Err(e) => {
                    tracing::error!(error = %e, "fetch legs disabled: no hub client");
                    return None;
                }
            }
        }
        Some(Forward { hubs, next: AtomicUsize::new(0), waiting: Arc::new(Semaphore::new(MAX_WAITING)) })
    }

    pub fn hub(&self) -> &HubClient {
        &self.hubs[self.next.fetch_add(1, Ordering::Relaxed) % self.hubs.len()]
    }
}
