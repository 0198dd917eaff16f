//! Site rollouts (`/api/v1/rollouts`): one job for each device of a site,
//! a batch at a time. The next batch is queued when every job of the batch
//! before has ended; once FAILED and TIMED_OUT jobs reach `abort_after` the
//! rollout is ABORTED, its jobs not yet started are cancelled and the
//! devices left get none. A driver task moves rollouts on when one of their
//! jobs ends (and every few seconds, in case a nudge was lost); each move is
//! a compare-and-set on the rollout's row, so two hubs on one database never
//! queue a batch twice.
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::guard::{authenticate, internal, read_body, require_admin};
use super::http::{self, Answer, ApiError, Peer, json_answer};
use super::jobs::{check_target, deadline, move_job, new_id, queue};
use super::model::User;
use crate::api::{JobState, JobView, RolloutRequest, RolloutState, RolloutView, Route};
use crate::util::now_secs;

/// One rollout moves at a time in this process.
static MOVING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn handle(hub: &Hub, route: Route<'_>, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    match route {
        Route::RolloutCreate => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "rollout_create").await?;
            let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
            let want: RolloutRequest = http::parse(&body)?;
            Ok(json_answer(StatusCode::CREATED, &create(hub, &user, peer, want).await?))
        }
        Route::Rollouts => {
            let user = authenticate(hub, &req, peer).await?;
            let mut all = hub.store.rollouts(200).await.map_err(internal)?;
            let mut mine = Vec::with_capacity(all.len());
            for r in all.drain(..) {
                if hub.store.entitled(&user.name, &r.site).await.map_err(internal)? {
                    mine.push(r);
                }
            }
            Ok(json_answer(StatusCode::OK, &mine))
        }
        Route::RolloutCancel(id) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "rollout_cancel").await?;
            Ok(json_answer(StatusCode::OK, &cancel(hub, &user, peer, id).await?))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such rollouts route")),
    }
}

/// `N` devices, or `P%` of `n` (rounded up), at least one.
fn batch_size(batch: &str, n: usize) -> Option<u32> {
    let size = match batch.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<u32>().ok()? {
            p @ 1..=100 => (n as u64 * u64::from(p)).div_ceil(100) as u32,
            _ => return None,
        },
        None => batch.trim().parse::<u32>().ok().filter(|&b| b > 0)?,
    };
    Some(size.max(1))
}

async fn entitled_site(hub: &Hub, user: &User, peer: &Peer, site: &str, action: &str) -> Result<(), ApiError> {
    if hub.store.entitled(&user.name, site).await.map_err(internal)? {
        return Ok(());
    }
    let who = json!({"user": user.name, "site": site, "action": action, "from": peer.addr.ip().to_string()});
    hub.refused("job_refused", "not_entitled", who).await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "not_entitled", format!("you are not entitled to site {site}")))
}

async fn create(hub: &Hub, user: &User, peer: &Peer, want: RolloutRequest) -> Result<RolloutView, ApiError> {
    entitled_site(hub, user, peer, &want.site, "rollout_create").await?;
    let now = now_secs() as i64;
    let devices = hub.store.devices_of_site(&want.site).await.map_err(internal)?;
    let checked = check_target(hub, want.kind, &want.target)
        .and_then(|()| deadline(want.timeout_secs, now))
        .and_then(|_| match devices.is_empty() {
            true => Err(("no_devices", format!("site {} has no devices", want.site))),
            false => Ok(()),
        })
        .and_then(|()| {
            batch_size(&want.batch, devices.len())
                .ok_or(("bad_batch", format!("--batch {:?}: a number of devices, or 1% to 100%", want.batch)))
        });
    let batch = match checked {
        Ok(b) => b,
        Err((code, message)) => {
            hub.refused("job_refused", code, json!({"user": user.name, "site": want.site, "target": want.target}))
                .await;
            return Err(ApiError::new(StatusCode::BAD_REQUEST, code, message));
        }
    };
    let r = RolloutView {
        id: format!("roll-{}", hex::encode(crate::random_bytes::<8>())),
        site: want.site,
        kind: want.kind,
        target: want.target,
        devices,
        batch_size: batch,
        abort_after: want.abort_after,
        consent_required: want.consent_required,
        timeout_secs: want.timeout_secs.unwrap_or(3600),
        started: 0,
        state: RolloutState::Running,
        reason: String::new(),
        created_by: user.name.clone(),
        created_at: now,
        updated_at: now,
    };
    hub.store.rollout_add(&r).await.map_err(internal)?;
    hub.audit
        .record(
            "rollout_created",
            json!({"rollout": r.id, "site": r.site, "kind": r.kind.as_str(), "target": r.target,
                   "devices": r.devices.len(), "batch_size": batch, "abort_after": r.abort_after, "by": user.name}),
        )
        .await;
    advance(hub, &r.id).await?;
    hub.store.rollout(&r.id).await.map_err(internal)?.ok_or_else(|| internal("the rollout vanished"))
}

/// Moves job `j` (not ended) to CANCELED with `why`.
async fn cancel_job(hub: &Hub, j: &JobView, why: &str, by: &str) -> Result<(), ApiError> {
    move_job(hub, j, JobState::Canceled, why, "", json!({"by": by})).await.map(drop)
}

async fn ended(hub: &Hub, r: &RolloutView, state: RolloutState, reason: &str) -> Result<bool, ApiError> {
    let now = now_secs() as i64;
    let moved = hub.store.rollout_move(&r.id, (r.state, r.started), (state, r.started), reason, now).await;
    if !moved.map_err(internal)? {
        return Ok(false);
    }
    crate::metrics::HUB_ROLLOUTS.with_label_values(&[state.as_str()]).inc();
    hub.audit.record("rollout_ended", json!({"rollout": r.id, "state": state.as_str(), "reason": reason})).await;
    Ok(true)
}

/// Queues the next batch, or ends the rollout, as its jobs allow.
pub async fn advance(hub: &Hub, id: &str) -> Result<(), ApiError> {
    let _turn = MOVING.lock().await;
    let Some(r) = hub.store.rollout(id).await.map_err(internal)? else { return Ok(()) };
    if r.state != RolloutState::Running {
        return Ok(());
    }
    let jobs = hub.store.jobs_of_rollout(id).await.map_err(internal)?;
    let mut failed: Vec<&JobView> =
        jobs.iter().filter(|j| matches!(j.state, JobState::Failed | JobState::TimedOut)).collect();
    failed.sort_by_key(|j| r.devices.iter().position(|d| *d == j.device));
    let left = r.devices.len() - (r.started as usize).min(r.devices.len());
    if r.abort_after > 0 && failed.len() as u32 >= r.abort_after {
        let names: Vec<String> = failed.iter().map(|j| format!("{} {}", j.device, j.state.as_str())).collect();
        let reason = format!(
            "aborted after {} failures ({}); {left} of {} devices got no job",
            failed.len(),
            names.join(", "),
            r.devices.len()
        );
        if ended(hub, &r, RolloutState::Aborted, &reason).await? {
            for j in jobs.iter().filter(|j| j.state == JobState::Queued) {
                cancel_job(hub, j, "its rollout was aborted before it started", "rollout").await?;
            }
        }
        return Ok(());
    }
    if jobs.iter().any(|j| !j.state.is_final()) {
        return Ok(());
    }
    if left == 0 {
        let count = |st: JobState| jobs.iter().filter(|j| j.state == st).count();
        let n = r.devices.len();
        let reason = format!(
            "{n} device{}: {} succeeded, {} failed, {} rejected, {} cancelled",
            if n == 1 { "" } else { "s" },
            count(JobState::Succeeded),
            failed.len(),
            count(JobState::Rejected),
            count(JobState::Canceled)
        );
        ended(hub, &r, RolloutState::Completed, &reason).await?;
        return Ok(());
    }
    let from = r.started as usize;
    let to = (from + r.batch_size as usize).min(r.devices.len());
    let batch_no = from / r.batch_size.max(1) as usize + 1;
    let batches = r.devices.len().div_ceil(r.batch_size.max(1) as usize);
    let now = now_secs() as i64;
    let reason = format!("batch {batch_no} of {batches}");
    let moved = hub.store.rollout_move(id, (r.state, r.started), (r.state, to as u32), &reason, now).await;
    if !moved.map_err(internal)? {
        return Ok(());
    }
    for device in &r.devices[from..to] {
        let job = JobView {
            id: new_id(),
            device: device.clone(),
            kind: r.kind,
            target: r.target.clone(),
            state: JobState::Queued,
            reason: String::new(),
            consent_required: r.consent_required,
            created_by: r.created_by.clone(),
            created_at: now,
            updated_at: now,
            deadline: now + r.timeout_secs as i64,
            output: String::new(),
            rollout: r.id.clone(),
        };
        // One retired since the rollout began: its job is born cancelled, so
        // that the device never sees it and the rollout counts it.
        let mut job = job;
        if hub.store.device(device).await.map_err(internal)?.is_some_and(|d| d.retired.is_some()) {
            job.state = JobState::Canceled;
            job.reason = "the device was retired before its batch".into();
        }
        // A device removed since the rollout began gets no job; the rest go on.
        if let Err(e) = queue(hub, &job).await {
            tracing::warn!(rollout = %r.id, device, error = %e.message, "no job for this device");
        }
    }
    hub.audit
        .record(
            "rollout_batch",
            json!({"rollout": r.id, "batch": batch_no, "of": batches, "devices": &r.devices[from..to]}),
        )
        .await;
    Ok(())
}

pub(super) async fn cancel(hub: &Hub, user: &User, peer: &Peer, id: &str) -> Result<RolloutView, ApiError> {
    let none = || ApiError::new(StatusCode::NOT_FOUND, "no_rollout", format!("no rollout {id}"));
    let r = hub.store.rollout(id).await.map_err(internal)?.ok_or_else(none)?;
    entitled_site(hub, user, peer, &r.site, "rollout_cancel").await?;
    let _turn = MOVING.lock().await;
    let r = hub.store.rollout(id).await.map_err(internal)?.ok_or_else(none)?;
    if r.state != RolloutState::Running {
        hub.refused("job_refused", "rollout_finished", json!({"user": user.name, "rollout": id})).await;
        let msg = format!("rollout {id} already ended {}", r.state.as_str());
        return Err(ApiError::new(StatusCode::CONFLICT, "rollout_finished", msg));
    }
    let why = format!("canceled by {}", user.name);
    if !ended(hub, &r, RolloutState::Canceled, &why).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "rollout_moved", "the rollout moved meanwhile; look again"));
    }
    for j in hub.store.jobs_of_rollout(id).await.map_err(internal)?.iter().filter(|j| !j.state.is_final()) {
        cancel_job(hub, j, &format!("its rollout was {why}"), &user.name).await?;
    }
    hub.store.rollout(id).await.map_err(internal)?.ok_or_else(none)
}

/// Moves rollouts on when their jobs end, and every 5 s in any case.
pub async fn drive(hub: std::sync::Arc<Hub>, stop: CancellationToken) {
    let Some(mut news) = crate::util::lock(&hub.rollout_rx).take() else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let ids = tokio::select! {
            _ = stop.cancelled() => return,
            Some(id) = news.recv() => vec![id],
            _ = tick.tick() => hub.store.rollouts_running().await.unwrap_or_default(),
        };
        for id in ids {
            if let Err(e) = advance(&hub, &id).await
                && e.code != super::guard::DATABASE_UNAVAILABLE
            {
                tracing::error!(rollout = %id, error = %e.message, "cannot move the rollout on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_is_a_count_or_a_share_rounded_up_and_never_zero() {
        use super::batch_size;
        assert_eq!(batch_size("10%", 6), Some(1));
        assert_eq!(batch_size("33%", 6), Some(2));
        assert_eq!(batch_size("50%", 5), Some(3));
        assert_eq!(batch_size("100%", 7), Some(7));
        assert_eq!(batch_size("3", 7), Some(3));
        assert_eq!(batch_size("1%", 1), Some(1));
        for bad in ["0", "0%", "101%", "-1", "ten", "", "%"] {
            assert_eq!(batch_size(bad, 10), None, "{bad:?}");
        }
    }
}
