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
    /// The site rollout that queued it (empty: queued for this device alone).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rollout: String,
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

/// `POST /api/v1/rollouts`: one job for every device of a site, in batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRequest {
    pub site: String,
    pub kind: JobKind,
    pub target: String,
    /// Devices per batch: `N` or `P%` of the site's devices (at least 1).
    pub batch: String,
    /// Stop after this many FAILED or TIMED_OUT jobs (0: never).
    #[serde(default)]
    pub abort_after: u32,
    #[serde(default)]
    pub consent_required: bool,
    /// Each job's time from its creation (default 3600 s).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A rollout's state: RUNNING -> COMPLETED / ABORTED / CANCELED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    Running,
    /// Every device had its job (some may have failed, below the threshold).
    Completed,
    /// The failures reached `abort_after`; the devices left got no job.
    Aborted,
    Canceled,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "RUNNING",
            RolloutState::Completed => "COMPLETED",
            RolloutState::Aborted => "ABORTED",
            RolloutState::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        [RolloutState::Running, RolloutState::Completed, RolloutState::Aborted, RolloutState::Canceled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// A rollout as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: String,
    pub site: String,
    pub kind: JobKind,
    pub target: String,
    /// The site's devices when it started, in the order they are done.
    pub devices: Vec<String>,
    pub batch_size: u32,
    pub abort_after: u32,
    pub consent_required: bool,
    pub timeout_secs: u64,
    /// Devices given their job so far (the first `started` of `devices`).
    pub started: u32,
    pub state: RolloutState,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}
