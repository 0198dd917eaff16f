//! The software and jobs page: the repository's releases, rollouts by batch,
//! and each device's jobs; admins can cancel.
use std::collections::HashMap;
use std::fmt::Write;

use hyper::StatusCode;

use super::html::{self, badge, empty_row, esc, post_button, table};
use super::{Who, html_answer};
use crate::api::{JobState, JobView, RolloutState, RolloutView};
use crate::hub::Hub;
use crate::hub::guard::internal;
use crate::hub::http::{Answer, ApiError};
use crate::hub::model::Role;

pub async fn page(hub: &Hub, who: &Who, rows_only: bool) -> Result<Answer, ApiError> {
    let admin = who.user.role == Role::Admin;
    let mut jobs = hub.store.jobs(None, 300).await.map_err(internal)?;
    if !admin {
        let mine = hub.store.devices_for(&who.user.name, false).await.map_err(internal)?;
        jobs.retain(|j| mine.iter().any(|d| d.id == j.device));
    }
    let job_rows = job_rows(who, admin, &jobs);
    if rows_only {
        return Ok(html_answer(StatusCode::OK, job_rows));
    }
    let mut rollouts = Vec::new();
    for r in hub.store.rollouts(50).await.map_err(internal)? {
        if hub.store.entitled(&who.user.name, &r.site).await.map_err(internal)? {
            let of = hub.store.jobs_of_rollout(&r.id).await.map_err(internal)?;
            rollouts.push((r, of));
        }
    }
    let mut rollout_rows = String::new();
    for (r, of) in &rollouts {
        rollout_rows.push_str(&rollout_row(who, admin, r, of));
    }
    if rollout_rows.is_empty() {
        rollout_rows = empty_row(6, "No rollout yet (tether rollout add).");
    }
    let body = format!(
        "{}{}{}",
        releases(hub),
        table(
            "Rollouts",
            &["Rollout", "Release or task", "Site", "State", "Progress by batch", ""],
            &rollout_rows,
            None
        ),
        table(
            "Jobs (newest first)",
            &["Job", "Device", "Task", "State", "Why", "Queued by", "Updated (UTC)", ""],
            &job_rows,
            Some("/console/jobs?part=rows")
        ),
    );
    Ok(html_answer(StatusCode::OK, html::page("Software and jobs", Some(who), "jobs", &body)))
}

fn releases(hub: &Hub) -> String {
    let Some(repo) = &hub.repo else {
        return "<p class=\"summary\">This hub has no software repository (<code>[repo]</code> in hub.toml).</p>"
            .into();
    };
    let l = crate::hub::repo_api::listing(repo);
    let mut rows = String::new();
    for t in &l.targets {
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td><code title=\"{}\">{}…</code></td></tr>",
            esc(&t.info.name),
            esc(&t.info.version),
            esc(t.info.kind.as_deref().unwrap_or("package")),
            html::bytes(t.length),
            esc(&t.sha256),
            esc(&t.sha256.chars().take(12).collect::<String>()),
        );
    }
    if rows.is_empty() {
        rows = empty_row(5, "Nothing published yet (tether repo publish).");
    }
    let caption = if l.targets_version == 0 {
        "Releases".to_string()
    } else {
        format!(
            "Releases (signed targets version {}; devices trust this listing until {} UTC)",
            l.targets_version,
            html::time(l.timestamp_expires as i64)
        )
    };
    table(&caption, &["Name", "Version", "Kind", "Size", "SHA-256"], &rows, None)
}

fn rollout_row(who: &Who, admin: bool, r: &RolloutView, jobs: &[JobView]) -> String {
    let state: HashMap<&str, JobState> = jobs.iter().map(|j| (j.device.as_str(), j.state)).collect();
    let mut batches = String::new();
    for (i, batch) in r.devices.chunks(r.batch_size.max(1) as usize).enumerate() {
        let count =
            |f: &dyn Fn(Option<JobState>) -> bool| batch.iter().filter(|d| f(state.get(d.as_str()).copied())).count();
        let ok = count(&|s| s == Some(JobState::Succeeded));
        let bad = count(&|s| s.is_some_and(|s| s.is_final() && s != JobState::Succeeded));
        let running = count(&|s| s.is_some_and(|s| !s.is_final()));
        let waiting = batch.len() - ok - bad - running;
        let _ = write!(
            batches,
            "<li>Batch {}: <progress max=\"{}\" value=\"{}\" aria-label=\"batch {} done\"></progress> {ok} ok, {bad} failed, {running} running, {waiting} not started</li>",
            i + 1,
            batch.len(),
            ok + bad,
            i + 1
        );
    }
    let cancel = if admin && r.state == RolloutState::Running {
        post_button(who, &format!("/console/rollouts/{}/cancel", r.id), "Cancel", &format!("Cancel rollout {}?", r.id))
    } else {
        String::new()
    };
    let kind = match r.state {
        RolloutState::Running => "wait",
        RolloutState::Completed => "ok",
        RolloutState::Aborted => "bad",
        RolloutState::Canceled => "off",
    };
    format!(
        "<tr><th scope=\"row\"><code>{}</code></th><td>{} {}</td><td>{}</td><td>{} {}</td><td><ul class=\"batches\">{batches}</ul></td><td>{cancel}</td></tr>",
        esc(&r.id),
        esc(r.kind.as_str()),
        esc(&r.target),
        esc(&r.site),
        badge(kind, r.state.as_str()),
        esc(&r.reason),
    )
}

fn job_rows(who: &Who, admin: bool, jobs: &[JobView]) -> String {
    let mut rows = String::new();
    for j in jobs {
        let kind = match j.state {
            JobState::Succeeded => "ok",
            JobState::Queued | JobState::InProgress => "wait",
            JobState::Canceled => "off",
            _ => "bad",
        };
        let cancel = if admin && !j.state.is_final() {
            post_button(who, &format!("/console/jobs/{}/cancel", j.id), "Cancel", &format!("Cancel job {}?", j.id))
        } else {
            String::new()
        };
        // A check's output, folded under its reason (`<pre>`: as the device sent it).
        let output = match j.output.as_str() {
            "" => String::new(),
            o => format!(
                "<details class=\"output\"><summary>output, {} bytes</summary><pre>{}</pre></details>",
                o.len(),
                esc(o)
            ),
        };
        let _ = write!(
            rows,
            "<tr data-job=\"{}\"><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{} {}</td><td>{}</td><td>{}{output}</td><td>{}</td><td>{}</td><td>{cancel}</td></tr>",
            esc(&j.id),
            esc(&j.id),
            esc(&j.device),
            esc(j.kind.as_str()),
            esc(&j.target),
            badge(kind, j.state.as_str()),
            esc(&j.reason),
            esc(&j.created_by),
            html::time(j.updated_at),
        );
    }
    if rows.is_empty() {
        rows = empty_row(8, "No job yet (tether jobs add).");
    }
    rows
}
