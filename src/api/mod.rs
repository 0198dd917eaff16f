//! What every role shares with the hub: the typed requests and answers of
//! `/api/v1` (docs/openapi.yaml), the relays' reports, and [`HubClient`].
//! The hub serves these types; the client, relays and load generator send
//! them. None of them imports `crate::hub`.
pub mod certs;
pub mod client;
pub mod jobs;
pub mod report;
pub mod types;

pub use certs::{CertIssue, CertRenewal, CertRenewalState, CertRequestView};
pub use client::{HubClient, HubClientError};
pub use jobs::{
    JobKind, JobReport, JobRequest, JobState, JobView, RelayEvents, RolloutRequest, RolloutState, RolloutView,
    UploadProgress,
};
pub use report::{
    AgentHead, AgentSeen, AgentsDelta, EndedSession, Head, LiveBytes, RelayReport, ReportAnswer, RetiredDevices,
    RevokedSession, cert_sha,
};
pub use types::*;
