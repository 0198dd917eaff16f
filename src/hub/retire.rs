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

/// How old a retirement must be before the running hub finishes what it
/// left open (so as not to race one still in progress).
pub const FINISH_GRACE_SECS: i64 = 30;

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
    #[error("device {0} is being retired and put back in service by others at this moment: try again")]
    Busy(String),
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
            RetireError::Busy(_) => "busy",
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
    /// True when the device was retired before, and this call only closed
    /// what that retirement left open.
    pub finishing: bool,
}

/// Retires device `id` for `reason`; `by` says who (`cli:USER`,
/// `console:NAME`). Audited as `device_retired` with what it revoked and
/// cancelled, and each job's move as `job_state`.
///
/// A retirement is several writes: the mark (new grants and jobs stop at
/// once), then each session and job. Retiring a device already retired
/// finishes what the first one left open (it was cut short, or a grant or
/// job raced it), audited `device_retirement_finished`; with nothing left
/// open it is refused as `already_retired`. The running hub does the same
/// by itself ([`sweep`]).
pub async fn retire((store, audit, by): (&Store, &HubAudit, &str), id: &str, reason: &str) -> Result<Retirement> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(RetireError::NoReason);
    }
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(RetireError::BadReason);
    }
    // Read, then mark only if still in service: a second try covers a
    // reinstatement racing this one.
    for _ in 0..2 {
        let Some(d) = store.device(id).await? else { return Err(RetireError::NoDevice(id.into())) };
        if d.retired.is_some() {
            let r = finish((store, audit, by), d, true).await?;
            if r.sessions.is_empty() && r.jobs.is_empty() {
                let was = r.device.retired.as_ref().map(Retired::describe).unwrap_or_default();
                return Err(RetireError::AlreadyRetired(id.into(), was));
            }
            return Ok(r);
        }
        let retired = Retired { at: now_secs() as i64, by: by.into(), reason: reason.into() };
        if store.device_retire(id, &retired).await? {
            return finish((store, audit, by), Device { retired: Some(retired), ..d }, false).await;
        }
    }
    Err(RetireError::Busy(id.into()))
}

/// Revokes retired device `d`'s open sessions and cancels its unfinished
/// jobs, each audited; then audits the retirement (`device_retired`), or,
/// when `finishing` one done before, what was left of it
/// (`device_retirement_finished`, only when there was something).
async fn finish((store, audit, by): (&Store, &HubAudit, &str), d: Device, finishing: bool) -> Result<Retirement> {
    let (id, now) = (d.id.as_str(), now_secs() as i64);
    let mut sessions = Vec::new();
    for (session, expires_at) in store.device_open_sessions(id).await? {
        if store.session_revoke(&session, (by, "device_retired"), now).await? {
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
    let r = d.retired.as_ref().expect("finish: a retired device");
    if !finishing {
        let fields = json!({"device": id, "site": d.site, "reason": r.reason, "by": by,
                            "sessions_revoked": ids, "jobs_canceled": job_ids});
        audit.record("device_retired", fields).await;
    } else if !ids.is_empty() || !job_ids.is_empty() {
        let fields = json!({"device": id, "site": d.site, "by": by, "sessions_revoked": ids, "jobs_canceled": job_ids,
                            "retired": {"at": r.at, "by": r.by, "reason": r.reason}});
        audit.record("device_retirement_finished", fields).await;
    }
    Ok(Retirement { device: d, sessions, jobs, finishing })
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

/// In the running hub: the retirement and what it revoked reach the
/// relays at their next report (they drop the device's channels), and its
/// cancelled jobs reach the device and its rollout at once.
pub fn enforce(hub: &Hub, r: &Retirement) {
    hub.board.mark_retired(&r.device.id, true);
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
/// that a job waiting for the person at one leaves their list at once; the
/// list of retired devices goes to the relays, which drop and refuse them. A
/// retired device that still has an open session or an unfinished job,
/// [`FINISH_GRACE_SECS`] after its retirement, has them revoked and
/// cancelled by "hub" (audited `device_retirement_finished`).
pub async fn sweep(hub: Arc<Hub>, stop: CancellationToken) {
    let nudged = std::sync::Mutex::new(std::collections::HashSet::<(String, i64)>::new());
    super::every(Duration::from_secs(5), stop, || async {
        let now = now_secs() as i64;
        if let Ok(list) = hub.store.revocations_live(now, REVOCATION_KEEP_SECS as i64).await {
            for (id, until) in list {
                hub.board.revoke(&id, until);
            }
        }
        // Retirements cut short, or raced by a grant or a job, are finished
        // here; a grace period leaves one in progress to finish by itself.
        if let Ok(left) = hub.store.devices_retired_unfinished(now - FINISH_GRACE_SECS, now).await {
            for d in left {
                match finish((&hub.store, &hub.audit, "hub"), d, true).await {
                    Ok(r) => enforce(&hub, &r),
                    Err(e) => tracing::warn!(error = %e, "finishing a retirement"),
                }
            }
        }
        // Every retired device, for the relays to drop and refuse; those
        // retired in the last minute (the CLI's clock is the host's, and a
        // tick may be late) for their nudge.
        let Ok(all) = hub.store.devices_retired_since(1).await else { return };
        let recent: Vec<(String, i64)> = all.iter().filter(|r| r.1 >= now - 60).cloned().collect();
        hub.board.set_retired(all.into_iter().map(|r| r.0).collect());
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
