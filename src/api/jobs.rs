//! Maintenance jobs: what `tether jobs` sends and the hub answers, and what
//! a device (through its relay) fetches and reports.
use serde::{Deserialize, Serialize};

/// What a job does on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Install a package from the repository (`NAME@VERSION`).
    Install,
    /// Upload a named file set from the device's allow-list.
    Upload,
    /// Run a named check from the device's allow-list.
    Run,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Install => "install",
            JobKind::Upload => "upload",
            JobKind::Run => "run",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "install" => Some(JobKind::Install),
            "upload" => Some(JobKind::Upload),
            "run" => Some(JobKind::Run),
            _ => None,
        }
    }
}

/// A job's state. QUEUED -> IN_PROGRESS -> one of the final states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    /// Denied on site or refused by the device's policy.
    Rejected,
    Canceled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::InProgress => "IN_PROGRESS",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::TimedOut => "TIMED_OUT",
            JobState::Rejected => "REJECTED",
            JobState::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::InProgress,
            JobState::Succeeded,
            JobState::Failed,
            JobState::TimedOut,
            JobState::Rejected,
            JobState::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::InProgress)
    }

    /// True when a job in `self` may move to `next` (the same state again is
    /// a repeated report, accepted and changing nothing).
    pub fn may_become(self, next: JobState) -> bool {
        self == next
            || match self {
                JobState::Queued => next != JobState::Queued,
                JobState::InProgress => next.is_final(),
                _ => false,
            }
    }
}

/// `POST /api/v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub device: String,
    pub kind: JobKind,
    /// `NAME@VERSION` (install), a file set (upload) or a check (run).
    pub target: String,
    /// Wait for the on-site operator before running.
    #[serde(default)]
    pub consent_required: bool,
    /// Seconds the job may take from its creation before it is TIMED_OUT.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A job as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub device: String,
    pub kind: JobKind,
    pub target: String,
    pub state: JobState,
    /// Why it ended (or is where it is), in words.
    pub reason: String,
    pub consent_required: bool,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Unix seconds after which an unfinished job is TIMED_OUT.
    pub deadline: i64,
    /// A check's output (at most 32 KiB), once it ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// `POST /api/v1/device/DEVICE/jobs/ID` (a relay, for its device).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    pub state: JobState,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub output: String,
}

/// `GET /api/v1/relay/events?after=N` (a relay's long poll): devices whose
/// jobs changed after event `after`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RelayEvents {
    /// The last event included; ask with `after=last` next.
    pub last: u64,
    pub devices: Vec<String>,
}

/// `POST /api/v1/device/DEVICE/uploads/JOB` (a relay, for its device): how
/// much of the upload the hub has.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadProgress {
    pub received: u64,
    pub total: u64,
    /// All of it arrived and matched its SHA-256.
    pub complete: bool,
}
