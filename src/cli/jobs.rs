//! `tether jobs add|list|show|rollouts|cancel`: maintenance jobs for devices (or
//! every device of a site, in batches), queued at the hub and picked up by
//! each device's agent through its relay.
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::specialist::load;
use crate::api::{JobKind, JobRequest, JobView, RolloutRequest, RolloutView};
use crate::client::hub::HubSession;

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Admin: queue a job: `install NAME@VERSION`, `upload SET` or `run CHECK`.
    Add {
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The device that runs it.
        #[arg(long)]
        device: Option<String>,
        /// Every device of a site, a batch at a time (a rollout).
        #[arg(long, conflicts_with = "device")]
        site: Option<String>,
        /// Print the created job as JSON.
        #[arg(long)]
        json: bool,
        /// `required`: the on-site operator approves before it runs.
        #[arg(long, value_parser = ["required", "auto"])]
        consent: Option<String>,
        /// Seconds before an unfinished job is TIMED_OUT (default 3600).
        #[arg(long)]
        timeout: Option<u64>,
        /// A rollout's batch: N devices or P% of the site (default 10%).
        #[arg(long)]
        batch: Option<String>,
        /// Stop a rollout after this many FAILED or TIMED_OUT jobs.
        #[arg(long)]
        abort_after: Option<u32>,
        kind: JobKind,
        target: String,
    },
    /// Jobs, newest first.
    List {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One job in full: its times, why it is where it is, and a check's output.
    Show {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        id: String,
    },
    /// Site rollouts, newest first.
    Rollouts {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Admin: cancel a job (or a rollout, `roll-...`) that has not ended.
    Cancel {
        #[arg(long)]
        profile: Option<PathBuf>,
        id: String,
    },
}

pub async fn run(cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::Add { profile, device, site, json, consent, timeout, batch, abort_after, kind, target } => {
            if site.is_none() && (batch.is_some() || abort_after.is_some()) {
                bail!("--batch and --abort-after are for a site rollout: name the site with --site S");
            }
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            if let Some(site) = site {
                let req = RolloutRequest {
                    site,
                    kind,
                    target,
                    batch: batch.unwrap_or_else(|| "10%".into()),
                    abort_after: abort_after.unwrap_or(0),
                    consent_required: consent.as_deref() == Some("required"),
                    timeout_secs: timeout,
                };
                let r: RolloutView = hub.post("/api/v1/rollouts", &req).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    let abort = match r.abort_after {
                        0 => "never aborts".to_string(),
                        n => format!("aborts after {n} failures"),
                    };
                    println!(
                        "rollout {} on {}: {} {} to {} devices, {} at a time, {abort}; {}",
                        r.id,
                        r.site,
                        r.kind.as_str(),
                        r.target,
                        r.devices.len(),
                        r.batch_size,
                        r.reason
                    );
                }
                return Ok(());
            }
            let Some(device) = device else { bail!("name the device (--device D) or the site (--site S)") };
            let req = JobRequest {
                device,
                kind,
                target,
                consent_required: consent.as_deref() == Some("required"),
                timeout_secs: timeout,
            };
            let job: JobView = hub.post("/api/v1/jobs", &req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!("queued {} for {}: {} {}", job.id, job.device, job.kind.as_str(), job.target);
            }
            Ok(())
        }
        JobsCmd::List { profile, device, json } => {
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            let path = match &device {
                Some(d) => format!("/api/v1/jobs?device={d}"),
                None => "/api/v1/jobs".into(),
            };
            let jobs: Vec<JobView> = hub.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            println!(
                "{:<22} {:<12} {:<8} {:<24} {:<12} {:<8} REASON",
                "ID", "DEVICE", "KIND", "TARGET", "STATE", "AGE"
            );
            let now = crate::util::now_secs() as i64;
            for j in jobs {
                let age = human((now - j.created_at).max(0));
                println!(
                    "{:<22} {:<12} {:<8} {:<24} {:<12} {:<8} {}",
                    j.id,
                    j.device,
                    j.kind.as_str(),
                    j.target,
                    j.state.as_str(),
                    age,
                    one_line(&j.reason)
                );
            }
            Ok(())
        }
        JobsCmd::Show { profile, json, id } => {
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            let job: JobView = hub.get(&format!("/api/v1/jobs/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", shown(&job));
            }
            Ok(())
        }
        JobsCmd::Rollouts { profile, json } => {
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            let all: Vec<RolloutView> = hub.get("/api/v1/rollouts").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            println!("{:<22} {:<12} {:<24} {:<10} {:<9} REASON", "ID", "SITE", "TARGET", "STATE", "DEVICES");
            for r in all {
                let target = format!("{} {}", r.kind.as_str(), r.target);
                let done = format!("{}/{}", r.started, r.devices.len());
                println!(
                    "{:<22} {:<12} {:<24} {:<10} {:<9} {}",
                    r.id,
                    r.site,
                    target,
                    r.state.as_str(),
                    done,
                    one_line(&r.reason)
                );
            }
            Ok(())
        }
        JobsCmd::Cancel { profile, id } if id.starts_with("roll-") => {
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            let r: RolloutView = hub.post(&format!("/api/v1/rollouts/{id}/cancel"), &serde_json::json!({})).await?;
            println!("{} is {}", r.id, r.state.as_str());
            Ok(())
        }
        JobsCmd::Cancel { profile, id } => {
            let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
            let job: JobView = hub.post(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({})).await?;
            println!("{} is {}", job.id, job.state.as_str());
            Ok(())
        }
    }
}

/// A reason as one table cell: its lines joined (an install's failing
/// command may have printed several).
fn one_line(s: &str) -> String {
    printable(s).lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// What a device sent, safe for a terminal: control characters other than
/// newline and tab (an escape sequence could rewrite the screen) are shown
/// as `\u{1b}`; a carriage return, which could hide a line, is dropped.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            '\r' => String::new(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// `jobs show`: a field a line, then the output as the device sent it.
fn shown(j: &JobView) -> String {
    use crate::util::clock::rfc3339;
    let consent = if j.consent_required { "required" } else { "auto" };
    let mut out = format!("{}: {} {} on {}\n", j.id, j.kind.as_str(), j.target, j.device);
    out += &format!("state:    {}\n", j.state.as_str());
    if !j.reason.is_empty() {
        out += &format!("reason:   {}\n", printable(j.reason.trim_end()).replace('\n', "\n          "));
    }
    out += &format!("queued:   {} by {} (consent: {consent})\n", rfc3339(j.created_at), j.created_by);
    out += &format!("updated:  {}\n", rfc3339(j.updated_at));
    if !j.state.is_final() {
        out += &format!("deadline: {} (TIMED_OUT if not done by then)\n", rfc3339(j.deadline));
    }
    if !j.rollout.is_empty() {
        out += &format!("rollout:  {}\n", j.rollout);
    }
    if j.kind == JobKind::Upload && j.state == crate::api::JobState::Succeeded {
        out += &format!("archive:  at the hub: tether uploads get {} --out DIR\n", j.id);
    }
    match printable(&j.output).as_str() {
        "" => out += "output:   none\n",
        o => {
            out += &format!("output ({} bytes):\n{o}", j.output.len());
            if !o.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
