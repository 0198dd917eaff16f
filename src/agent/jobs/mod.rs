//! Maintenance jobs on the device. The agent asks for its jobs through a
//! relay when the relay says they changed (`JobsWaiting`), on every attach,
//! and every heartbeat; runs each once (by job id: a record under
//! `state_dir/jobs/ID.json` says how far it got), and reports each state
//! change. A report that does not reach the hub stays unreported on disk and
//! is sent again, also after a restart, until the hub has it: no job is left
//! "in progress" by a reboot.
mod checks;
mod install;
mod self_update;
mod upload;

pub(crate) use self_update::RESTART_STATUS;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use super::Shared;
use super::fetch::{FetchError, Fetcher};
use crate::api::{JobKind, JobState, JobView};
use crate::metrics;
use crate::proto::VERSION;
use crate::proto::repo::RepoFrame;

/// How far a job got on this device.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    kind: JobKind,
    target: String,
    state: JobState,
    reason: String,
    /// A check's output (capped).
    #[serde(default)]
    output: String,
    /// The hub has this state.
    reported: bool,
    /// A self-update waiting for its restart (see `self_update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart: Option<self_update::Restart>,
}

fn dir(state: &Shared) -> Option<PathBuf> {
    state.cfg.repo.as_ref().map(|r| r.state_dir.join("jobs"))
}

fn load(state: &Shared, id: &str) -> Option<Record> {
    let bytes = std::fs::read(dir(state)?.join(format!("{id}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn save(state: &Shared, r: &Record) {
    let Some(d) = dir(state) else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&d)?;
        let tmp = d.join(format!(".{}.tmp", r.id));
        std::fs::write(&tmp, serde_json::to_vec(r)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, d.join(format!("{}.json", r.id)))
    };
    if let Err(e) = write() {
        tracing::error!(job = %r.id, error = %e, "cannot save the job's record");
    }
}

fn unreported(state: &Shared) -> Vec<Record> {
    let Some(d) = dir(state) else { return vec![] };
    let Ok(entries) = std::fs::read_dir(d) else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| serde_json::from_slice::<Record>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r| !r.reported)
        .collect()
}

/// Runs until shutdown: asks for jobs when told, on attach, and each heartbeat.
pub async fn run(state: Shared) {
    if state.cfg.repo.is_none() {
        return;
    }
    confirm_restarts(&state);
    let mut fetcher = Fetcher::new(state.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(state.cfg.heartbeat_secs.max(1)));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.jobs_waiting.notified() => {}
            _ = tick.tick() => {}
        }
        if state.relays.is_empty() {
            continue;
        }
        for r in unreported(&state) {
            // Finished before a restart (or a lost report): tell the hub now.
            // Unfinished ones run again below, idempotently.
            if r.state.is_final() {
                report(&state, &mut fetcher, r).await;
            }
        }
        let jobs = match fetcher.call(RepoFrame::JobsGet { version: VERSION }).await {
            Ok(body) => serde_json::from_slice::<Vec<JobView>>(&body).unwrap_or_default(),
            Err(e) => {
                tracing::info!(error = %e, "cannot fetch jobs; trying again later");
                continue;
            }
        };
        for job in jobs {
            let local = load(&state, &job.id);
            match (job.state, local) {
                (JobState::Canceled, Some(mut r)) if !r.state.is_final() => {
                    r.state = JobState::Canceled;
                    r.reported = true;
                    save(&state, &r);
                }
                (JobState::Queued | JobState::InProgress, Some(r)) if r.state.is_final() => {
                    report(&state, &mut fetcher, r).await;
                }
                (JobState::Queued | JobState::InProgress, _) => execute(&state, &mut fetcher, &job).await,
                _ => {}
            }
        }
    }
}

/// A self-update that restarted the agent ends here: SUCCEEDED if this
/// process is the new binary, else FAILED with `current` switched back. The
/// loop then reports it like any finished job.
fn confirm_restarts(state: &Shared) {
    let Some(d) = dir(state) else { return };
    let Ok(entries) = std::fs::read_dir(d) else { return };
    let records =
        entries.flatten().filter_map(|e| serde_json::from_slice::<Record>(&std::fs::read(e.path()).ok()?).ok());
    for mut r in records.filter(|r| r.state == JobState::InProgress) {
        let Some(rs) = r.restart.clone() else { continue };
        (r.state, r.reason) = match self_update::confirm(&rs) {
            Ok(why) => (JobState::Succeeded, why),
            Err(why) => (JobState::Failed, why),
        };
        r.reported = false;
        let event = if r.state == JobState::Succeeded { "agent_updated" } else { "agent_update_failed" };
        tracing::info!(job = %r.id, state = r.state.as_str(), reason = %r.reason, "self-update after the restart");
        state.audit.record(
            event,
            json!({"device": state.cfg.device, "job": r.id, "version": rs.version, "previous": rs.previous, "reason": r.reason}),
        );
        metrics::AGENT_JOBS.with_label_values(&[r.state.as_str()]).inc();
        save(state, &r);
    }
}

async fn execute(state: &Shared, fetcher: &mut Fetcher, job: &JobView) {
    let span = tracing::info_span!("job", job = %job.id, device = %state.cfg.device);
    execute_in_span(state, fetcher, job).instrument(span).await
}

async fn execute_in_span(state: &Shared, fetcher: &mut Fetcher, job: &JobView) {
    let started = Instant::now();
    let mut r = Record {
        id: job.id.clone(),
        kind: job.kind,
        target: job.target.clone(),
        state: JobState::InProgress,
        reason: String::new(),
        output: String::new(),
        reported: false,
        restart: None,
    };
    save(state, &r);
    state.audit.record(
        "job_started",
        json!({"device": state.cfg.device, "job": job.id, "kind": job.kind.as_str(), "target": job.target}),
    );
    if report(state, fetcher, r.clone()).await == Some(JobState::Canceled) {
        r.state = JobState::Canceled;
        r.reported = true;
        save(state, &r);
        return;
    }
    let consented = match job.consent_required {
        false => true,
        true => match consent(state, job).await {
            // Stopping: the job stays IN_PROGRESS on disk and asks again after the restart.
            None => return,
            Some(Consent::Canceled) => {
                // The hub has it CANCELED already: nothing to report.
                r.state = JobState::Canceled;
                r.reason = "cancelled at the hub while it waited for consent on site".into();
                r.reported = true;
                save(state, &r);
                metrics::AGENT_JOBS.with_label_values(&[r.state.as_str()]).inc();
                return;
            }
            Some(c) => c == Consent::Given,
        },
    };
    let mut restart = None;
    let mut outcome = match job.kind {
        _ if !consented => Err((JobState::Rejected, "denied on site, or nobody on site approved it in time".into())),
        JobKind::Install | JobKind::Upload => {
            // An admin may cancel it while it transfers: a watcher asks for
            // the device's jobs on each nudge and stops the transfer.
            fetcher.cancel = tokio_util::sync::CancellationToken::new();
            let watch = tokio::spawn(watch_cancel(state.clone(), job.id.clone(), fetcher.cancel.clone()));
            let r = if job.kind == JobKind::Install {
                match install::install(state, fetcher, &job.id, &job.target).await {
                    Ok(install::Installed::Done(m)) => Ok(m),
                    Ok(install::Installed::Restart(rs)) => {
                        restart = Some(rs);
                        Ok(String::new())
                    }
                    Err(e) => Err((JobState::Failed, e)),
                }
            } else {
                upload::upload(state, fetcher, &job.id, &job.target).await
            };
            watch.abort();
            // The watcher may have taken a nudge meant for the main loop.
            state.jobs_waiting.notify_one();
            match r {
                Err(_) if fetcher.cancel.is_cancelled() => {
                    Err((JobState::Canceled, "cancelled while transferring; the partial file is removed".into()))
                }
                r => r,
            }
        }
        JobKind::Run => match state.cfg.checks.get(&job.target) {
            None => Err((JobState::Rejected, format!("check {:?} is not on this device's allow-list", job.target))),
            Some(c) => {
                let (ok, why, output) = checks::run(c, &state.cfg.device).await;
                r.output = output;
                if ok { Ok(why) } else { Err((JobState::Failed, why)) }
            }
        },
    };
    if let Some(rs) = restart {
        // The record says what to expect once the new agent runs; the
        // restart below returns only if it could not happen.
        r.restart = Some(rs.clone());
        save(state, &r);
        state.audit.record(
            "agent_restarting",
            json!({"device": state.cfg.device, "job": job.id, "version": rs.version, "previous": rs.previous}),
        );
        let why = self_update::restart(&rs);
        outcome = Err((JobState::Failed, format!("{why}; {}", self_update::switch_back(&rs))));
    }
    (r.state, r.reason) = match outcome {
        Ok(why) => (JobState::Succeeded, why),
        Err((st, why)) => (st, why),
    };
    if job.kind == JobKind::Install {
        metrics::AGENT_INSTALL_SECONDS.observe(started.elapsed().as_secs_f64());
    }
    metrics::AGENT_JOBS.with_label_values(&[r.state.as_str()]).inc();
    tracing::info!(state = r.state.as_str(), reason = %r.reason, "job ended");
    state.audit.record(
        "job_ended",
        json!({"device": state.cfg.device, "job": job.id, "state": r.state.as_str(), "reason": r.reason,
               "ms": started.elapsed().as_millis() as u64}),
    );
    save(state, &r);
    report(state, fetcher, r).await;
}

/// Cancels `cancel` once the hub says job `id` was cancelled.
async fn watch_cancel(state: Shared, id: String, cancel: tokio_util::sync::CancellationToken) {
    let mut fetcher = Fetcher::new(state.clone());
    loop {
        tokio::select! {
            _ = state.jobs_waiting.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(state.cfg.heartbeat_secs.max(1))) => {}
        }
        if let Ok(body) = fetcher.call(RepoFrame::JobsGet { version: VERSION }).await
            && serde_json::from_slice::<Vec<JobView>>(&body)
                .is_ok_and(|jobs| jobs.iter().any(|j| j.id == id && j.state == JobState::Canceled))
        {
            tracing::info!(job = %id, "cancelled at the hub; stopping");
            cancel.cancel();
            return;
        }
    }
}

/// How the wait for the on-site operator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consent {
    Given,
    /// Denied, or nobody answered in time.
    Refused,
    /// The hub cancelled the job meanwhile (an admin, or the device's
    /// retirement): it leaves the operator's list and never runs.
    Canceled,
}

/// Waits for the on-site operator (`tether agent approve|deny JOB-ID`), at
/// most `consent_timeout_secs`, while a watcher asks the hub whether the
/// job was cancelled; `None` when the agent is stopping.
async fn consent(state: &Shared, job: &JobView) -> Option<Consent> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.pending_jobs.insert(
        job.id.clone(),
        super::state::PendingJob {
            kind: job.kind.as_str(),
            target: job.target.clone(),
            created_by: job.created_by.clone(),
            since: Instant::now(),
            answer: tx,
        },
    );
    tracing::info!("waiting for on-site consent");
    let wait = Duration::from_secs(state.cfg.consent_timeout_secs);
    let canceled = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(watch_cancel(state.clone(), job.id.clone(), canceled.clone()));
    let answer = tokio::select! {
        r = tokio::time::timeout(wait, rx) => r.ok().and_then(Result::ok),
        _ = canceled.cancelled() => None,
        _ = state.shutdown.cancelled() => {
            watch.abort();
            state.pending_jobs.remove(&job.id);
            return None;
        }
    };
    watch.abort();
    // The watcher may have taken a nudge meant for the main loop.
    state.jobs_waiting.notify_one();
    state.pending_jobs.remove(&job.id);
    if canceled.is_cancelled() {
        state.audit.record(
            "job_consent_withdrawn",
            json!({"device": state.cfg.device, "job": job.id, "why": "cancelled at the hub"}),
        );
        return Some(Consent::Canceled);
    }
    if answer.is_none() {
        state.audit.record("job_consent_timed_out", json!({"device": state.cfg.device, "job": job.id}));
    }
    Some(if answer.is_some_and(|(allow, _)| allow) { Consent::Given } else { Consent::Refused })
}

/// Sends `r`'s state to the hub; marks it reported once the hub has it.
/// Returns the job's state at the hub (None: not reached).
async fn report(state: &Shared, fetcher: &mut Fetcher, mut r: Record) -> Option<JobState> {
    let req = RepoFrame::JobReport {
        version: VERSION,
        job: r.id.clone(),
        state: r.state.as_str().into(),
        reason: r.reason.clone(),
        output: r.output.clone().into(),
    };
    match fetcher.call(req).await {
        Ok(body) => {
            let at_hub = serde_json::from_slice::<JobView>(&body).ok().map(|j| j.state);
            r.reported = true;
            save(state, &r);
            at_hub
        }
        // The hub will never take this report as it is (a 4xx other than a
        // conflict): send it once more without the output, then give up on
        // it rather than retrying it forever.
        Err(FetchError::Refused { status, code, .. }) if (400..500).contains(&status) && status != 409 => {
            tracing::warn!(job = %r.id, code, "the hub refused the report; sending it without its output");
            if !r.output.is_empty() {
                r.output.clear();
                r.reason = format!("{} (output dropped: the hub refused it, {code})", r.reason);
                return Box::pin(report(state, fetcher, r)).await;
            }
            r.reported = true;
            save(state, &r);
            None
        }
        Err(e) => {
            tracing::info!(job = %r.id, error = %e, "report not delivered; it stays queued on disk");
            None
        }
    }
}
