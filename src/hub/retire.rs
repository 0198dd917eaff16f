//! Retiring a device (`tether hub device retire`, or an admin on its
//! console page): a device sold, scrapped or handed to another vendor's
//! care leaves service for good. Nobody is granted a session with it from
//! then on, the sessions it has (granted or live) are revoked, its unfinished
//! jobs are cancelled, it gets no new job (a rollout passes it by) and its
//! certificate is not renewed. Its row stays: sessions, jobs and the audit
//! name it. Its certificate stays valid until it ends or the fleet CRL
//! revokes it, so the operator is told to revoke it.
//!
//! The database changes here serve the CLI (a process of its own on the hub
//! host) and the console alike; the running hub hands revocations to the
//! relays within seconds either way ([`sweep`]).
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::audit::HubAudit;
use super::model::{Device, Retired};
use super::sessions::REVOCATION_KEEP_SECS;
use super::store::{Store, StoreError};
use crate::api::{JobState, JobView};
use crate::util::now_secs;

/// A reason's longest form, in characters.
pub const MAX_REASON: usize = 500;

/// Why a retirement or a reinstatement was not done.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("a reason is required (it goes to the audit log and the device's page)")]
    NoReason,
    #[error("reason: at most {MAX_REASON} characters, no control characters")]
    BadReason,
    #[error("no device {0:?}")]
    NoDevice(String),
    #[error("device {0} is already {1}")]
    AlreadyRetired(String, String),
    #[error("device {0} is in service: nothing to reinstate")]
    NotRetired(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RetireError {
    /// The refusal's code, for the audit record and the metric.
    pub fn code(&self) -> &'static str {
        match self {
            RetireError::NoReason => "no_reason",
            RetireError::BadReason => "bad_reason",
            RetireError::NoDevice(_) => "no_device",
            RetireError::AlreadyRetired(..) => "already_retired",
            RetireError::NotRetired(_) => "not_retired",
            RetireError::Store(_) => "database",
        }
    }
}

type Result<T> = std::result::Result<T, RetireError>;

/// What a retirement did.
pub struct Retirement {
    pub device: Device,
    /// Sessions revoked: (id, the grant's expiry).
    pub sessions: Vec<(String, i64)>,
    /// Jobs cancelled.
    pub jobs: Vec<JobView>,
}

/// Retires device `id` for `reason`; `by` says who (`cli:USER`,
/// `console:NAME`). Audited as `device_retired` with what it revoked and
/// cancelled, and each job's move as `job_state`.
pub async fn retire((store, audit, by): (&Store, &HubAudit, &str), id: &str, reason: &str) -> Result<Retirement> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(RetireError::NoReason);
    }
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(RetireError::BadReason);
    }
    let Some(d) = store.device(id).await? else { return Err(RetireError::NoDevice(id.into())) };
    let already = |r: &Retired| RetireError::AlreadyRetired(id.into(), r.describe());
    if let Some(r) = &d.retired {
        return Err(already(r));
    }
    let now = now_secs() as i64;
    let retired = Retired { at: now, by: by.into(), reason: reason.into() };
    if !store.device_retire(id, &retired).await? {
        let r = store.device(id).await?.and_then(|d| d.retired).unwrap_or(retired);
        return Err(already(&r));
    }
    let mut sessions = Vec::new();
    for (session, expires_at) in store.device_open_sessions(id).await? {
        if store.session_revoke(&session, by, now).await? {
            let fields = json!({"session": session, "by": by, "device": id, "why": "device_retired"});
            audit.record("session_revoked", fields).await;
            sessions.push((session, expires_at));
        }
    }
    let mut jobs = Vec::new();
    let why = "the device was retired";
    for j in store.jobs_for_device(id, now).await?.into_iter().filter(|j| !j.state.is_final()) {
        if store.job_move(&j.id, (j.state, JobState::Canceled), why, "", now).await? {
            crate::metrics::HUB_JOBS.with_label_values(&[JobState::Canceled.as_str()]).inc();
            let fields = json!({"job": j.id, "device": id, "from": j.state.as_str(), "to": "CANCELED",
                                "reason": why, "by": by});
            audit.record("job_state", fields).await;
            jobs.push(j);
        }
    }
    let ids: Vec<&str> = sessions.iter().map(|s| s.0.as_str()).collect();
    let job_ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    audit
        .record(
            "device_retired",
            json!({"device": id, "site": d.site, "reason": reason, "by": by,
                   "sessions_revoked": ids, "jobs_canceled": job_ids}),
        )
        .await;
    let device = Device { retired: Some(retired), ..d };
    Ok(Retirement { device, sessions, jobs })
}

/// Puts retired device `id` back in service (audited `device_reinstated`
/// with the retirement it undoes). What the retirement revoked and
/// cancelled stays so.
pub async fn reinstate((store, audit, by): (&Store, &HubAudit, &str), id: &str) -> Result<Device> {
    let Some(d) = store.device(id).await? else { return Err(RetireError::NoDevice(id.into())) };
    let Some(was) = d.retired.clone() else { return Err(RetireError::NotRetired(id.into())) };
    if !store.device_reinstate(id).await? {
        return Err(RetireError::NotRetired(id.into()));
    }
    audit
        .record(
            "device_reinstated",
            json!({"device": id, "by": by, "was": {"retired_at": was.at, "by": was.by, "reason": was.reason}}),
        )
        .await;
    Ok(Device { retired: None, ..d })
}

/// In the running hub: what a retirement revoked reaches the relays at
/// their next report, and its cancelled jobs reach the device and its
/// rollout at once.
pub fn enforce(hub: &Hub, r: &Retirement) {
    let now = now_secs();
    for (session, expires_at) in &r.sessions {
        hub.board.revoke(session, (*expires_at as u64).max(now + REVOCATION_KEEP_SECS));
    }
    for j in &r.jobs {
        super::uploads::discard(hub, &j.id);
        hub.rollout_moved(&j.rollout);
    }
    if !r.jobs.is_empty() {
        hub.jobs.changed(&r.device.id);
    }
}

/// Every 5 s, what another process changed in the database reaches the
/// relays and devices: every session revoked there joins the revocations
/// the relays are told of (the CLI on the hub host cannot reach this
/// process, nor can another hub on the same database), and the devices of
/// a retirement seen for the first time are nudged to fetch their jobs, so
/// that a job waiting for the person at one leaves their list at once.
pub async fn sweep(hub: Arc<Hub>, stop: CancellationToken) {
    let nudged = std::sync::Mutex::new(std::collections::HashSet::<(String, i64)>::new());
    super::every(Duration::from_secs(5), stop, || async {
        let now = now_secs() as i64;
        if let Ok(list) = hub.store.revocations_live(now, REVOCATION_KEEP_SECS as i64).await {
            for (id, until) in list {
                hub.board.revoke(&id, until);
            }
        }
        // A minute back: the CLI's clock is the host's, and a tick may be late.
        let Ok(recent) = hub.store.devices_retired_since(now - 60).await else { return };
        let mut nudged = crate::util::lock(&nudged);
        nudged.retain(|r| recent.contains(r));
        for r in recent {
            if !nudged.contains(&r) {
                hub.jobs.changed(&r.0);
                nudged.insert(r);
            }
        }
    })
    .await
}
