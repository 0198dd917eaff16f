//! The relay's long poll for job events at the hub: when a device's jobs
//! change, the relay tells its agent (`JobsWaiting` on the control channel)
//! and the agent asks for them on a fetch leg. One poll per relay, not per
//! device; a job reaches an attached agent within a few milliseconds.
use std::sync::Arc;
use std::time::Duration;

use super::state::State;
use crate::api::{HubClient, RelayEvents};
use crate::proto::Frame;
use crate::proto::repo::RepoFrame;

pub async fn run(state: Arc<State>) {
    let Some(link) = state.cfg.hub.clone() else { return };
    let cert = (state.cfg.cert.as_path(), state.cfg.key.as_path());
    let Ok(client) = HubClient::with_crl(
        &link.url,
        (&state.cfg.ca, state.cfg.crl.as_deref()),
        Some(cert),
        link.server_name.as_deref(),
    ) else {
        return;
    };
    // From "now": the first answer names every device ("*"); agents that
    // just attached ask for their jobs anyway.
    let mut after = u64::MAX;
    // As the reports: a refused certificate is asked about less and less often.
    let mut refused = crate::util::Backoff::new(super::hub_report::REFUSED_FIRST, super::hub_report::REFUSED_CAP);
    loop {
        let wait = if after == u64::MAX { 0 } else { 8 };
        let path = format!("/api/v1/relay/events?after={after}&wait={wait}");
        let got = tokio::select! {
            _ = state.drain.cancelled() => return,
            r = client.get::<RelayEvents>(&path, None) => r,
        };
        match got {
            Ok(ev) => {
                refused.reset();
                after = ev.last;
                nudge(&state, &ev.devices);
            }
            Err(e) => {
                tracing::debug!(error = %e, "job events poll failed; retrying");
                let pause = if e.tls_refused() { refused.next_pause() } else { Duration::from_secs(1) };
                tokio::select! {
                    _ = state.drain.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

fn nudge(state: &State, devices: &[String]) {
    let frame = || Frame::Repo(RepoFrame::JobsWaiting);
    if devices.iter().any(|d| d == "*") {
        for a in state.agents.iter() {
            let _ = a.tx.try_send(frame());
        }
        return;
    }
    for d in devices {
        if let Some(a) = state.agents.get(d) {
            let _ = a.tx.try_send(frame());
        }
    }
}
