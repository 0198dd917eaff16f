//! What relays tell the hub: every `report_ms` each relay POSTs a
//! [`RelayReport`] to `/api/v1/relay/report` over mTLS with its relay
//! certificate; the [`ReportAnswer`] names the sessions the hub revoked.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
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
    /// Empty when the hub said it keeps the certificates it took
    /// ([`ReportAnswer::certs_kept`]) and took this one: then `cert_sha`
    /// names it.
    #[serde(default)]
    pub cert: String,
    /// [`cert_sha`] of the certificate, sent instead of it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_sha: String,
}

/// Names a device certificate (DER) in a report: hex of its SHA-256.
pub fn cert_sha(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(der))
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
    /// A full report (every live session's counts; see `live`), from a
    /// relay that sends its agents as [`AgentsDelta`]s: older relays mark
    /// a full report by `agents`. Left out when false, for older hubs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    /// The attached agents as changes to the list the hub holds, to a hub
    /// whose answer says it takes them (`ReportAnswer::agents_delta`);
    /// `agents` is then left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents_delta: Option<AgentsDelta>,
}

/// Changes to a relay's list of attached agents, as the hub holds it.
/// The relay sends every change, a batch at a time, and the hub applies
/// them in order: a list of 100 000 agents would pass the hub's 16 MiB
/// body limit, and sending it whole at every attach costs both ends.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct AgentsDelta {
    /// Names the relay process's list (drawn at its start): a list the hub
    /// holds under another name is not this one.
    pub list: u64,
    /// The version of the list these changes apply to; 0 starts the list
    /// again from empty (a relay's first delta, or one the hub asked for).
    pub from: u64,
    /// The version they make.
    pub to: u64,
    /// Agents attached since, or whose version, transport, certificate or
    /// clock changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<AgentSeen>,
    /// Agents whose only news is a later heartbeat: (device, unix seconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heard: Vec<(String, u64)>,
    /// Agents no longer attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
    /// The list is whole with these: false when a batch left changes for
    /// the next report. A list started again from empty replaces the one
    /// the hub shows only once whole.
    pub complete: bool,
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
    /// This hub takes the agents as [`AgentsDelta`]s.
    #[serde(default)]
    pub agents_delta: bool,
    /// The delta did not apply to the list this hub holds (it restarted, or
    /// did not answer a delta it took): start the list again from empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agents_resync: bool,
    /// This hub keeps the device certificates that came with agents' heads:
    /// a head whose certificate it took may come with its [`cert_sha`] only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub certs_kept: bool,
    /// Devices whose head came with a `cert_sha` this hub does not hold (it
    /// restarted): send their heads again, with the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs_wanted: Vec<String>,
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
