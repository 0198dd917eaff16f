//! The devices the hub retired, as its report answers list them (only
//! when the list this relay holds is not the hub's): their control channels
//! are dropped and their hellos refused, `device_retired` (audited, counted).
//! A relay without a hub link holds none; a relay that restarts holds none
//! until its first answer, a report period later.
use std::collections::HashSet;
use std::sync::RwLock;

use serde_json::json;

use super::state::State;
use crate::api::RetiredDevices;

/// Audit record and metric label of a dropped channel.
const DROPPED: &str = "agent_dropped";

#[derive(Default)]
pub struct Retired {
    /// The list's tag (sent back in each report) and its devices.
    held: RwLock<(String, HashSet<String>)>,
}

impl Retired {
    pub fn tag(&self) -> String {
        self.held.read().map(|h| h.0.clone()).unwrap_or_default()
    }

    pub fn contains(&self, device: &str) -> bool {
        self.held.read().is_ok_and(|h| h.1.contains(device))
    }

    pub fn len(&self) -> usize {
        self.held.read().map(|h| h.1.len()).unwrap_or(0)
    }

    fn replace(&self, list: RetiredDevices) {
        if let Ok(mut h) = self.held.write() {
            *h = (list.tag, list.devices.into_iter().collect());
        }
    }
}

/// Takes the hub's list in, and drops the channel of each device on it
/// that is attached here.
pub fn apply(state: &State, list: RetiredDevices) {
    let attached: Vec<String> = list.devices.iter().filter(|d| state.agents.contains_key(*d)).cloned().collect();
    tracing::info!(retired = list.devices.len(), tag = %list.tag, "retired devices from the hub");
    state.retired.replace(list);
    crate::metrics::RELAY_RETIRED_DEVICES.set(state.retired.len() as i64);
    for device in attached {
        if let Some(a) = state.agents.get(&device) {
            // The channel's loop sees the device on the list, and tells the agent why.
            a.cancel.cancel();
            crate::metrics::RELAY_AGENTS_DROPPED.with_label_values(&["device_retired"]).inc();
            state.audit.record(DROPPED, json!({"relay": state.cfg.name, "device": device, "reason": "device_retired"}));
            tracing::warn!(%device, "the hub retired this device: dropping its control channel");
        }
    }
}
