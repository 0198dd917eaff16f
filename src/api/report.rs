//! What relays tell the hub: every `report_ms` each relay POSTs a
//! [`RelayReport`] to `/api/v1/relay/report` over mTLS with its relay
//! certificate; the [`ReportAnswer`] names the sessions the hub revoked.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AgentSeen {
    pub device: String,
    pub agent_version: String,
    /// `tcp` or `quic`: how its control channel reaches the relay.
    #[serde(default)]
    pub transport: String,
    /// Unix seconds of the agent's last heartbeat (or attach).
    pub last_heartbeat: u64,
    /// Unix seconds at which the certificate it attached with expires.
    #[serde(default)]
    pub cert_expires: u64,
    /// How far the device's clock is off from the relay's (milliseconds,
    /// device minus relay), as its heartbeats say; none before its first
    /// heartbeat, or from an agent that does not send its clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    /// The chain owner's signature over `hash` (hex; see [`crate::audit::sign`]).
    #[serde(default)]
    pub sig: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AgentHead {
    pub device: String,
    #[serde(flatten)]
    pub head: Head,
    /// The device's certificate (hex of DER), as the relay received it: the
    /// hub checks it against the fleet CA and the head's signature with it.
    #[serde(default)]
    pub cert: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EndedSession {
    pub session: String,
    pub device: String,
    pub reason: String,
    pub bytes_to_device: u64,
    pub bytes_to_client: u64,
    pub duration_ms: u64,
    /// Unix seconds.
    pub ended_at: u64,
}

/// `POST /api/v1/relay/report`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RelayReport {
    pub ready: bool,
    /// Live sessions at this relay (its load).
    pub sessions: u64,
    /// Every attached agent; `None` when unchanged since the last report the hub answered.
    #[serde(default)]
    pub agents: Option<Vec<AgentSeen>>,
    /// Sessions admitted since the last answered report.
    #[serde(default)]
    pub started: Vec<String>,
    /// How each of `started` reached the relay (`tcp` or `quic`), in the same order.
    #[serde(default)]
    pub started_transports: Vec<String>,
    /// Sessions whose control leg moved here from the twin since the last
    /// answered report, and how each came (left out when empty, for older hubs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_transports: Vec<String>,
    #[serde(default)]
    pub ended: Vec<EndedSession>,
    #[serde(default)]
    pub audit_head: Option<Head>,
    #[serde(default)]
    pub agent_heads: Vec<AgentHead>,
    /// Byte counts of the live sessions so far (full reports only; empty
    /// is left out, so a relay with no live session still suits an older hub).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<LiveBytes>,
    /// The tag of the retired devices' list this relay holds (left out
    /// while it holds none, for older hubs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub retired_tag: String,
}

/// A live session's bytes so far, as its relay counted them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveBytes {
    pub session: String,
    pub bytes_to_device: u64,
    pub bytes_to_client: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ReportAnswer {
    /// Session ids an admin ended: close them, and refuse their grants.
    pub revoked: Vec<RevokedSession>,
    /// The devices the hub retired, when the relay's `retired_tag` is not
    /// this list's: drop their control channels, and refuse them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<RetiredDevices>,
}

/// Every device retired at the hub, by id, sorted.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct RetiredDevices {
    /// Names this list (empty for an empty list); the relay sends it back.
    pub tag: String,
    pub devices: Vec<String>,
}

impl RetiredDevices {
    /// The list of `devices`, sorted, with its tag.
    pub fn of(mut devices: Vec<String>) -> RetiredDevices {
        devices.sort();
        devices.dedup();
        let tag = match devices.is_empty() {
            true => String::new(),
            false => {
                use sha2::{Digest, Sha256};
                hex::encode(&Sha256::digest(devices.join("\n").as_bytes())[..8])
            }
        };
        RetiredDevices { tag, devices }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokedSession {
    pub session: String,
    /// Unix seconds after which the grant is dead anyway.
    pub expires_at: u64,
}
