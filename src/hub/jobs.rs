//! `/api/v1/jobs` (admins queue, list and cancel maintenance jobs),
//! `/api/v1/device/D/jobs` (a relay fetches and reports for its device), and
//! `/api/v1/relay/events` (a relay's long poll: which devices have news).
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::guard::{authenticate, entitled_device, entitled_job, internal, read_body, relay_identity, require_admin};
use super::http::{self, Answer, ApiError, Peer, json_answer};
use super::model::{Role, User};
use crate::api::{JobKind, JobReport, JobRequest, JobState, JobView, RelayEvents, Route};
use crate::util::{lock, now_secs};

/// Events kept for relays that poll late; older ones make them nudge everyone.
const EVENTS_KEPT: usize = 10_000;
/// Longest a relay's poll is held.
const MAX_WAIT: Duration = Duration::from_secs(8);
const DEFAULT_TIMEOUT: u64 = 3600;
const MAX_TIMEOUT: u64 = 7 * 24 * 3600;

/// Devices whose jobs changed, numbered, for the relays' long polls.
#[derive(Default)]
pub struct JobEvents {
    ring: Mutex<(u64, VecDeque<(u64, String)>)>,
    notify: Notify,
}

impl JobEvents {
    pub fn changed(&self, device: &str) {
        let mut g = lock(&self.ring);
        g.0 += 1;
        let seq = g.0;
        g.1.push_back((seq, device.to_string()));
        if g.1.len() > EVENTS_KEPT {
            g.1.pop_front();
        }
        drop(g);
        self.notify.notify_waiters();
    }

    /// Devices with events after `after`, waiting up to `wait` for one.
    /// `*` stands for every device (the relay asked from too far back).
    pub async fn after(&self, after: u64, wait: Duration) -> RelayEvents {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let g = lock(&self.ring);
                let last = g.0;
                if last > after || after > last {
                    let oldest = g.1.front().map_or(last + 1, |e| e.0);
                    let mut devices: Vec<String> = if after > last || after.saturating_add(1) < oldest {
                        vec!["*".into()]
                    } else {
                        g.1.iter().filter(|e| e.0 > after).map(|e| e.1.clone()).collect()
                    };
                    devices.sort();
                    devices.dedup();
                    return RelayEvents { last, devices };
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return RelayEvents { last: after, devices: vec![] };
            }
        }
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

pub async fn handle(hub: &Hub, route: Route<'_>, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    match route {
        Route::JobCreate => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "job_create").await?;
            let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
            let want: JobRequest = http::parse(&body)?;
            Ok(json_answer(StatusCode::CREATED, &create(hub, &user, peer, want).await?))
        }
        Route::Jobs => {
            let user = authenticate(hub, &req, peer).await?;
            let device = http::query(&req, "device");
            let limit = http::query(&req, "limit").and_then(|l| l.parse().ok()).unwrap_or(200i64).clamp(1, 5000);
            if let Some(d) = device {
                entitled_device(hub, &user, peer, d, "job_list").await?;
            }
            let mut jobs = hub.store.jobs(device, limit).await.map_err(internal)?;
            if user.role != Role::Admin && device.is_none() {
                let mine = hub.store.devices_for(&user.name, false).await.map_err(internal)?;
                jobs.retain(|j| mine.iter().any(|d| d.id == j.device));
            }
            Ok(json_answer(StatusCode::OK, &jobs))
        }
        Route::Job(id) => {
            let user = authenticate(hub, &req, peer).await?;
            Ok(json_answer(StatusCode::OK, &entitled_job(hub, &user, peer, id, "job_read").await?))
        }
        Route::JobCancel(id) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "job_cancel").await?;
            Ok(json_answer(StatusCode::OK, &cancel(hub, &user, peer, id).await?))
        }
        Route::DeviceJobs(device) => {
            relay_identity(hub, peer).await?;
            let mut jobs = hub.store.jobs_for_device(device, now_secs() as i64).await.map_err(internal)?;
            // A retired device is handed no job to run, even one that raced
            // its retirement (the hub's sweep cancels those): only ends.
            if jobs.iter().any(|j| !j.state.is_final())
                && hub.store.device(device).await.map_err(internal)?.is_some_and(|d| d.retired.is_some())
            {
                jobs.retain(|j| j.state.is_final());
            }
            Ok(json_answer(StatusCode::OK, &jobs))
        }
        Route::DeviceJobReport(device, id) => {
            let relay = relay_identity(hub, peer).await?;
            let body = read_body(hub, req, 96 * 1024, peer).await?;
            let report: JobReport = http::parse(&body)?;
            let (status, job) = report_state(hub, &relay, device, id, report).await?;
            Ok(json_answer(status, &job))
        }
        Route::RelayEvents => {
            relay_identity(hub, peer).await?;
            let after = http::query(&req, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let wait = http::query(&req, "wait").and_then(|w| w.parse().ok()).map_or(MAX_WAIT, Duration::from_secs);
            Ok(json_answer(StatusCode::OK, &hub.jobs.after(after, wait.min(MAX_WAIT)).await))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such jobs route")),
    }
}

/// Why `target` is no target for a `kind` job: (code, message).
pub(super) fn check_target(hub: &Hub, kind: JobKind, target: &str) -> Result<(), (&'static str, String)> {
    match kind {
        JobKind::Install => {
            let Some((name, version)) = target.split_once('@') else {
                return Err(("bad_target", format!("{target:?}: an install names NAME@VERSION")));
            };
            match hub.repo.as_ref().map(|r| r.has_target(&format!("{name}/{version}"))) {
                None => Err(("no_repository", "this hub has no [repo] configured".into())),
                Some(false) => Err(("unknown_target", format!("the repository has no {name}@{version}"))),
                Some(true) => Ok(()),
            }
        }
        JobKind::Upload | JobKind::Run if !name_ok(target) => {
            Err(("bad_target", format!("{target:?}: a name of 1-64 letters, digits, '.', '_', '-'")))
        }
        JobKind::Upload if hub.cfg.uploads.is_none() => {
            Err(("no_uploads", "this hub has no [uploads] configured".into()))
        }
        _ => Ok(()),
    }
}

/// A job's deadline `timeout` seconds from `now`, if the timeout is allowed.
pub(super) fn deadline(timeout: Option<u64>, now: i64) -> Result<i64, (&'static str, String)> {
    match timeout.unwrap_or(DEFAULT_TIMEOUT) {
        t if t == 0 || t > MAX_TIMEOUT => Err(("bad_timeout", format!("timeout_secs: 1 to {MAX_TIMEOUT}"))),
        t => Ok(now + t as i64),
    }
}

/// Stores a new job (QUEUED, or CANCELED when born so), audits it and,
/// unless it is born ended, tells the relays.
pub(super) async fn queue(hub: &Hub, job: &JobView) -> Result<(), ApiError> {
    hub.store.job_add(job).await.map_err(internal)?;
    crate::metrics::HUB_JOBS.with_label_values(&[job.state.as_str()]).inc();
    hub.audit
        .record(
            "job_created",
            json!({"job": job.id, "device": job.device, "kind": job.kind.as_str(), "target": job.target,
                   "consent_required": job.consent_required, "by": job.created_by, "rollout": job.rollout,
                   "state": job.state.as_str(), "reason": job.reason}),
        )
        .await;
    if !job.state.is_final() {
        hub.jobs.changed(&job.device);
    }
    Ok(())
}

/// A new job's id.
pub(super) fn new_id() -> String {
    format!("job-{}", hex::encode(crate::random_bytes::<8>()))
}

async fn create(hub: &Hub, user: &User, peer: &Peer, want: JobRequest) -> Result<JobView, ApiError> {
    if let Some(r) = entitled_device(hub, user, peer, &want.device, "job_create").await?.retired {
        hub.refused("job_refused", "device_retired", json!({"user": user.name, "device": want.device})).await;
        let message = format!("device {} is {}: it takes no job", want.device, r.describe());
        return Err(ApiError::new(StatusCode::CONFLICT, "device_retired", message));
    }
    let now = now_secs() as i64;
    let checked = check_target(hub, want.kind, &want.target).and_then(|()| deadline(want.timeout_secs, now));
    let deadline = match checked {
        Ok(d) => d,
        Err((code, message)) => {
            hub.refused("job_refused", code, json!({"user": user.name, "device": want.device, "target": want.target}))
                .await;
            return Err(ApiError::new(StatusCode::BAD_REQUEST, code, message));
        }
    };
    let job = JobView {
        id: new_id(),
        device: want.device.clone(),
        kind: want.kind,
        target: want.target.clone(),
        state: JobState::Queued,
        reason: String::new(),
        consent_required: want.consent_required,
        created_by: user.name.clone(),
        created_at: now,
        updated_at: now,
        deadline,
        output: String::new(),
        rollout: String::new(),
    };
    queue(hub, &job).await?;
    Ok(job)
}

pub(super) async fn cancel(hub: &Hub, user: &User, peer: &Peer, id: &str) -> Result<JobView, ApiError> {
    let none = || ApiError::new(StatusCode::NOT_FOUND, "no_job", format!("no job {id}"));
    let job = entitled_job(hub, user, peer, id, "job_cancel").await?;
    if job.state.is_final() {
        hub.refused("job_refused", "job_finished", json!({"user": user.name, "job": id})).await;
        let msg = format!("job {id} already ended {}", job.state.as_str());
        return Err(ApiError::new(StatusCode::CONFLICT, "job_finished", msg));
    }
    let why = format!("canceled by {}", user.name);
    if !move_job(hub, &job, JobState::Canceled, &why, "", json!({"by": user.name})).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "job_moved", "the job changed state meanwhile; look again"));
    }
    hub.store.job(id).await.map_err(internal)?.ok_or_else(none)
}

/// Moves `job` on to `to` by compare-and-set (false: it changed meanwhile).
/// A move is counted, audited as `job_state` with `who` moved it, told to the
/// device's relays; a job that ended loses its partial upload (unless it
/// SUCCEEDED) and nudges its rollout.
pub(super) async fn move_job(
    hub: &Hub,
    job: &JobView,
    to: JobState,
    reason: &str,
    output: &str,
    who: serde_json::Value,
) -> Result<bool, ApiError> {
    let now = now_secs() as i64;
    if !hub.store.job_move(&job.id, (job.state, to), reason, output, now).await.map_err(internal)? {
        return Ok(false);
    }
    crate::metrics::HUB_JOBS.with_label_values(&[to.as_str()]).inc();
    if to.is_final() {
        if to != JobState::Succeeded {
            super::uploads::discard(hub, &job.id);
        }
        hub.rollout_moved(&job.rollout);
    }
    let mut fields = json!({"job": job.id, "device": job.device, "from": job.state.as_str(), "to": to.as_str(),
                            "reason": reason});
    if let (Some(f), Some(w)) = (fields.as_object_mut(), who.as_object()) {
        f.extend(w.clone());
    }
    hub.audit.record("job_state", fields).await;
    hub.jobs.changed(&job.device);
    Ok(true)
}

/// A device's report through its relay. A cancelled job answers 409 with
/// the job, so the device stops it.
async fn report_state(
    hub: &Hub,
    relay: &str,
    device: &str,
    id: &str,
    report: JobReport,
) -> Result<(StatusCode, JobView), ApiError> {
    let none = || ApiError::new(StatusCode::NOT_FOUND, "no_job", format!("no job {id} for device {device}"));
    let job = hub.store.job(id).await.map_err(internal)?.filter(|j| j.device == device).ok_or_else(none)?;
    if job.state == report.state {
        return Ok((StatusCode::OK, job));
    }
    if job.state == JobState::Canceled {
        return Ok((StatusCode::CONFLICT, job));
    }
    let conflict = async |code: &'static str, msg: String| {
        let who = json!({"job": id, "device": device, "relay": relay, "from": job.state.as_str(),
                         "to": report.state.as_str()});
        hub.refused("job_report_refused", code, who).await;
        ApiError::new(StatusCode::CONFLICT, code, msg)
    };
    if !job.state.may_become(report.state) {
        let msg = format!("job {id} is {}; it cannot become {}", job.state.as_str(), report.state.as_str());
        return Err(conflict("bad_transition", msg).await);
    }
    if job.kind == JobKind::Upload && report.state == JobState::Succeeded && !super::uploads::complete(hub, id) {
        let msg = format!("job {id}: the hub does not have the whole upload; send the rest first");
        return Err(conflict("upload_incomplete", msg).await);
    }
    let reason: String = report.reason.chars().take(2000).collect();
    let output: String = report.output.chars().take(32 * 1024).collect();
    if !move_job(hub, &job, report.state, &reason, &output, json!({"relay": relay})).await? {
        return Err(conflict("job_moved", "the job changed state meanwhile".into()).await);
    }
    Ok((StatusCode::OK, hub.store.job(id).await.map_err(internal)?.ok_or_else(none)?))
}

/// Marks unfinished jobs past their deadline TIMED_OUT, every few seconds.
pub async fn sweep(hub: Arc<Hub>, stop: CancellationToken) {
    super::every(Duration::from_secs(5), stop, || async {
        let now = now_secs() as i64;
        let Ok(overdue) = hub.store.jobs_overdue(now).await else { return };
        for j in overdue {
            let _ = move_job(&hub, &j, JobState::TimedOut, "not finished before its deadline", "", json!({})).await;
        }
    })
    .await
}
