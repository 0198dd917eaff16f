//! Requests and answers of the hub's `/api/v1`, one struct each, used by the
//! hub's handlers and by its clients alike.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A specialist's role. Ordered: each role can do what the ones before can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Diagnostic services only.
    Viewer,
    /// Every service of entitled devices.
    Engineer,
    /// Accounts, devices, ending sessions, audit; every device.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "engineer" => Ok(Role::Engineer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (viewer, engineer, admin)")),
        }
    }
}

/// Every refusal's body: a stable code and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ApiErrorBody {
    pub error: String,
    pub message: String,
}

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub code: String,
}

/// The answer to a login: a bearer token for `expires_at` (unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginAnswer {
    pub token: String,
    pub expires_at: u64,
    pub user: String,
    pub role: Role,
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub user: String,
    pub role: Role,
    pub sites: Vec<String>,
}

/// One entry of `GET /api/v1/devices`: where the device can be reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    pub id: String,
    pub site: String,
    /// The hub's consent policy: `auto` or `required`.
    pub consent: String,
    /// `online` or `offline`.
    pub status: String,
    /// Relays it is attached to (with a fresh report).
    pub relays: Vec<String>,
    /// The transport to each of `relays`: `tcp` or `quic`.
    #[serde(default)]
    pub transports: Vec<String>,
    /// Unix seconds.
    pub last_heartbeat: Option<u64>,
    pub agent_version: Option<String>,
    /// When the certificate the device last presented to a relay expires
    /// (Unix seconds; none: never seen).
    #[serde(default)]
    pub cert_expires: Option<u64>,
    /// Its certificate renewal: `pending`, `issued` or `installed`.
    #[serde(default)]
    pub cert_renewal: Option<String>,
    /// How far its clock is off from its relay's (milliseconds, device minus
    /// relay; positive: ahead), while it is online and sends its clock.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// When, by whom and why it was retired (`GET /api/v1/devices?retired=true`, admins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<RetiredView>,
}

/// A device's retirement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetiredView {
    /// Unix seconds.
    pub at: i64,
    /// `cli:NAME` or `console:NAME`.
    pub by: String,
    pub reason: String,
}

impl RetiredView {
    /// "retired 2026-12-04 22:40 UTC by cli:ops: sold to another hospital".
    pub fn describe(&self) -> String {
        let when = time::OffsetDateTime::from_unix_timestamp(self.at).map_or_else(
            |_| self.at.to_string(),
            |t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute()
                )
            },
        );
        format!("retired {when} by {}: {}", self.by, self.reason)
    }
}

/// `POST /api/v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub device: String,
    pub service: String,
    /// Why: shown to the device's operator and kept in the record.
    pub reason: String,
    /// Hex of the client's end-to-end public key.
    pub client_key: String,
    /// Change-ticket reference; else the first `ABC-123` word of `reason`.
    #[serde(default)]
    pub ticket: Option<String>,
}

/// A relay a grant may be presented to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayAddr {
    pub name: String,
    /// Specialist-leg address (17443), or the load balancer in front of the twins.
    pub addr: String,
    /// Name to verify in the relay's certificate; defaults to `name`.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The answer to `POST /api/v1/sessions`: the signed grant (hex) and the
/// relays to present it to, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionGranted {
    pub session: String,
    /// Hex of the grant's signed body.
    pub grant: String,
    /// Hex of its Ed25519 signature.
    pub sig: String,
    pub relays: Vec<RelayAddr>,
    pub expires_at: u64,
    pub consent_required: bool,
}

/// One session as the hub records it, from grant to end
/// (`GET /api/v1/sessions`, `GET /api/v1/sessions/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub specialist: String,
    pub device: String,
    pub service: String,
    pub reason: String,
    pub ticket: Option<String>,
    /// The specialist's address as the hub saw it.
    pub source: String,
    /// Relay the hub routed to.
    pub relay: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub consent_required: bool,
    /// `granted`, `live`, `ended`, `revoked`.
    pub state: String,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
    pub bytes_to_device: i64,
    pub bytes_to_client: i64,
    pub duration_ms: i64,
    /// How the specialist reached the relay: `tcp` or `quic` (empty until live).
    #[serde(default)]
    pub transport: String,
}

/// The answer to `POST /api/v1/sessions/{id}/end`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEnded {
    pub session: String,
    pub state: String,
}

/// One entry of `GET /api/v1/audit/anchors`: the latest chain head of a relay or agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    /// `relay:NAME` or `agent:DEVICE`.
    pub source: String,
    pub seq: u64,
    pub hash: String,
    /// Unix seconds.
    pub at: i64,
}

/// `GET /api/v1/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` (answered with 503) while the database is unreachable.
    pub status: String,
    pub engine: String,
    /// `ok` or `unreachable`.
    #[serde(default)]
    pub database: String,
    pub relays: Vec<RelayHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayHealth {
    pub name: String,
    /// A report arrived recently.
    pub reporting: bool,
    pub ready: bool,
    pub sessions: u64,
}

/// RFC 3339 or unix seconds, as `--since` and `?since=` take it.
pub fn parse_since(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let s = s.replace("%3A", ":").replace("%2B", "+");
    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// The routes of `/api/v1`: one table for dispatch and for metric labels.
/// One artifact of the repository, as `tether repo list` shows it: what the
/// targets role signed (name, version, install and health commands, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoTarget {
    #[serde(flatten)]
    pub info: crate::repo::meta::TargetInfo,
    pub length: u64,
    pub sha256: String,
}

/// `GET /api/v1/repo/targets`: the signed state of the repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoListing {
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    /// Unix seconds; devices refuse the repository past it until the hub signs a new timestamp.
    pub timestamp_expires: u64,
    pub targets: Vec<RepoTarget>,
}

/// `POST /api/v1/repo/targets`: what the hub took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoPublished {
    /// Targets added or changed by this version.
    pub changed: Vec<String>,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
}

/// `PUT /api/v1/repo/blobs/SHA256`: the artifact stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: String,
    pub length: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Login,
    Me,
    Devices,
    SessionCreate,
    Sessions,
    Session(&'a str),
    SessionEnd(&'a str),
    Audit,
    Anchors,
    /// Every anchor of one source (`relay:NAME`, `agent:DEVICE`), oldest first.
    AnchorHistory(&'a str),
    RelayReport,
    Health,
    Metrics,
    RepoMetadata(&'a str),
    RepoList,
    RepoPublish,
    BlobPut(&'a str),
    BlobGet(&'a str),
    JobCreate,
    Jobs,
    /// One job, its output included (`tether jobs show`).
    Job(&'a str),
    JobCancel(&'a str),
    DeviceJobs(&'a str),
    DeviceJobReport(&'a str, &'a str),
    RelayEvents,
    /// A relay stores a range of its device's upload.
    DeviceUpload(&'a str, &'a str),
    /// An upload job's archive, for `tether uploads get`.
    JobUpload(&'a str),
    RolloutCreate,
    Rollouts,
    RolloutCancel(&'a str),
    /// A relay forwards its device's certificate renewal request.
    DeviceCert(&'a str),
    /// Renewals waiting for the CA's signature (admin).
    CertRequests,
    /// The certificate signed for a device's renewal (admin).
    CertIssue(&'a str),
}

impl<'a> Route<'a> {
    /// The route of `METHOD path`, if there is one.
    pub fn of(method: &str, path: &'a str) -> Option<Route<'a>> {
        let parts: Vec<&'a str> = path.trim_matches('/').split('/').collect();
        Some(match (method, parts.as_slice()) {
            ("POST", ["api", "v1", "login"]) => Route::Login,
            ("GET", ["api", "v1", "me"]) => Route::Me,
            ("GET", ["api", "v1", "devices"]) => Route::Devices,
            ("POST", ["api", "v1", "sessions"]) => Route::SessionCreate,
            ("GET", ["api", "v1", "sessions"]) => Route::Sessions,
            ("GET", ["api", "v1", "sessions", id]) => Route::Session(id),
            ("POST", ["api", "v1", "sessions", id, "end"]) => Route::SessionEnd(id),
            ("GET", ["api", "v1", "audit"]) => Route::Audit,
            ("GET", ["api", "v1", "audit", "anchors"]) => Route::Anchors,
            ("GET", ["api", "v1", "audit", "anchors", source]) => Route::AnchorHistory(source),
            ("POST", ["api", "v1", "relay", "report"]) => Route::RelayReport,
            ("GET", ["api", "v1", "healthz"]) => Route::Health,
            ("GET", ["metrics"]) => Route::Metrics,
            ("GET", ["api", "v1", "repo", "metadata", name]) => Route::RepoMetadata(name),
            ("GET", ["api", "v1", "repo", "targets"]) => Route::RepoList,
            ("POST", ["api", "v1", "repo", "targets"]) => Route::RepoPublish,
            ("PUT", ["api", "v1", "repo", "blobs", sha]) => Route::BlobPut(sha),
            ("GET", ["api", "v1", "repo", "blobs", sha]) => Route::BlobGet(sha),
            ("POST", ["api", "v1", "jobs"]) => Route::JobCreate,
            ("GET", ["api", "v1", "jobs"]) => Route::Jobs,
            ("GET", ["api", "v1", "jobs", id]) => Route::Job(id),
            ("POST", ["api", "v1", "jobs", id, "cancel"]) => Route::JobCancel(id),
            ("GET", ["api", "v1", "device", device, "jobs"]) => Route::DeviceJobs(device),
            ("POST", ["api", "v1", "device", device, "jobs", id]) => Route::DeviceJobReport(device, id),
            ("GET", ["api", "v1", "relay", "events"]) => Route::RelayEvents,
            ("POST", ["api", "v1", "device", device, "uploads", id]) => Route::DeviceUpload(device, id),
            ("GET", ["api", "v1", "jobs", id, "upload"]) => Route::JobUpload(id),
            ("POST", ["api", "v1", "rollouts"]) => Route::RolloutCreate,
            ("GET", ["api", "v1", "rollouts"]) => Route::Rollouts,
            ("POST", ["api", "v1", "rollouts", id, "cancel"]) => Route::RolloutCancel(id),
            ("POST", ["api", "v1", "device", device, "cert"]) => Route::DeviceCert(device),
            ("GET", ["api", "v1", "cert-requests"]) => Route::CertRequests,
            ("POST", ["api", "v1", "cert-requests", device]) => Route::CertIssue(device),
            _ => return None,
        })
    }

    /// A stable label for metrics (ids stripped).
    pub fn label(route: Option<Route<'_>>) -> &'static str {
        match route {
            Some(Route::Login) => "login",
            Some(Route::Me) => "me",
            Some(Route::Devices) => "devices",
            Some(Route::SessionCreate) => "session_create",
            Some(Route::Sessions) => "sessions",
            Some(Route::Session(_)) => "session",
            Some(Route::SessionEnd(_)) => "session_end",
            Some(Route::Audit) => "audit",
            Some(Route::Anchors) => "anchors",
            Some(Route::AnchorHistory(_)) => "anchor_history",
            Some(Route::RelayReport) => "relay_report",
            Some(Route::Health) => "healthz",
            Some(Route::Metrics) => "metrics",
            Some(Route::RepoMetadata(_)) => "repo_metadata",
            Some(Route::RepoList) => "repo_list",
            Some(Route::RepoPublish) => "repo_publish",
            Some(Route::BlobPut(_)) => "blob_put",
            Some(Route::BlobGet(_)) => "blob_get",
            Some(Route::JobCreate) => "job_create",
            Some(Route::Jobs) => "jobs",
            Some(Route::Job(_)) => "job",
            Some(Route::JobCancel(_)) => "job_cancel",
            Some(Route::DeviceJobs(_)) => "device_jobs",
            Some(Route::DeviceJobReport(..)) => "device_job_report",
            Some(Route::RelayEvents) => "relay_events",
            Some(Route::DeviceUpload(..)) => "device_upload",
            Some(Route::JobUpload(_)) => "job_upload",
            Some(Route::RolloutCreate) => "rollout_create",
            Some(Route::Rollouts) => "rollouts",
            Some(Route::RolloutCancel(_)) => "rollout_cancel",
            Some(Route::DeviceCert(_)) => "device_cert",
            Some(Route::CertRequests) => "cert_requests",
            Some(Route::CertIssue(_)) => "cert_issue",
            None => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_paths_and_label_without_ids() {
        assert_eq!(Route::of("POST", "/api/v1/sessions/abc/end"), Some(Route::SessionEnd("abc")));
        assert_eq!(Route::label(Route::of("GET", "/api/v1/sessions/abc")), "session");
        assert_eq!(Route::of("DELETE", "/api/v1/me"), None);
        assert_eq!(Route::label(None), "other");
        assert_eq!(parse_since("2026-11-29T00:00:00Z"), Some(1_795_910_400));
        assert_eq!(parse_since("12"), Some(12));
        assert_eq!(parse_since("yesterday"), None);
    }
}
