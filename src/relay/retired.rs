//! The devices the hub retired, as its report answers list them (only
//! when the list this relay holds is not the hub's): their control channels
//! are dropped (`hub_report.rs`) and their hellos refused (`control.rs`),
//! `device_retired` (audited, counted).
//! A relay without a hub link holds none; a relay that restarts holds none
//! until its first answer, a report period later.
use std::collections::HashSet;
use std::sync::RwLock;

use crate::api::RetiredDevices;

/// What a retired device's agent is told, after the reason.
pub const WHY: &str = "nobody reaches it, and the relays refuse its channels until an admin puts it back in service";

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

    pub fn replace(&self, list: RetiredDevices) {
        if let Ok(mut h) = self.held.write() {
            *h = (list.tag, list.devices.into_iter().collect());
        }
    }
}
