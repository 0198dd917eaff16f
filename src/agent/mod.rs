//! The agent on the device: dials both relays, verifies grants itself, asks
//! for on-site consent, and connects data legs to allow-listed local services.
//! It never opens a listening TCP or UDP socket; its only listener is the
//! operator's Unix socket (mode 0600, same-user peers only).

mod access;
mod channel;
mod clock;
pub mod config;
mod e2e;
pub mod fetch;
mod jobs;
pub mod operator;
mod renew;
mod state;
mod streams;
mod transport;
mod tunnel;

pub use config::{AgentConfig, Consent};
pub use state::AgentState;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::tls;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("operator socket {path}: {source}")]
    Socket { path: std::path::PathBuf, source: std::io::Error },
    #[error("state file {path}: {source}")]
    State { path: std::path::PathBuf, source: std::io::Error },
}

/// Completes a certificate install a crash interrupted (`KEY.next`,
/// `CERT.next`): first, before anything reads the device's certificate.
pub fn finish_renewal(cfg: &AgentConfig) -> Result<(), AgentError> {
    renew::finish_install(cfg).map_err(|source| AgentError::State { path: cfg.cert.clone(), source })
}

/// Runs the agent until `shutdown` fires.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    crate::tls::spawn_reloader(crate::tls::CRL_RELOAD_PERIOD);
    crate::metrics::init(crate::metrics::Part::Agent);
    finish_renewal(&cfg)?;
    crate::tls::expiry::export(&[&cfg.cert, &cfg.ca]);
    let state = AgentState::new(cfg, shutdown.clone())?;
    let listener = operator::bind(&state.cfg.operator_socket)?;
    let tracker = tokio_util::task::TaskTracker::new();
    for relay in state.cfg.relays.clone() {
        tracker.spawn(channel::attach_loop(state.clone(), relay));
    }
    tracker.spawn(operator::serve(listener, state.clone()));
    tracker.spawn(jobs::run(state.clone()));
    tracker.spawn(renew::run(state.clone()));
    tracing::info!(device = %state.cfg.device, relays = state.cfg.relays.len(), "agent running");
    shutdown.cancelled().await;
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    let _ = std::fs::remove_file(&state.cfg.operator_socket);
    Ok(())
}

/// Keeps `Arc<AgentState>` in one name for the submodules.
pub(crate) type Shared = Arc<AgentState>;
