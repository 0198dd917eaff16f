//! The agent updating itself, with real processes: its own binary published
//! as a target of kind `agent`, installed by a job, and the running agent
//! replaced by it (the same process id, no systemd here); the job reported
//! SUCCEEDED by the new agent after the restart. A binary that fails its
//! check never becomes current, and a package needing a newer agent is
//! refused.
use serde_json::Value;

use crate::harness::*;
use crate::hub::run;
use crate::jobs::{add_job, jobs_fleet, wait_final};

async fn publish(fleet: &Fleet, p: &str, name: &str, version: &str, file: &std::path::Path, extra: &[&str]) {
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let args = [&["repo", "publish", "--profile", p, "--targets-key", k, name, version, f][..], extra].concat();
    let (ok, _, err) = run(&args, "").await;
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_replaces_itself_with_a_new_binary_and_reports_after_the_restart() {
    let (fleet, p) = jobs_fleet(true).await;
    let pid = fleet.agent.as_ref().unwrap().pid();
    // The agent's own binary, without its debug symbols (a smaller package).
    let new = fleet.dir().join("tether-new");
    let stripped = std::process::Command::new("strip").arg("-o").arg(&new).arg(BIN).status();
    if !stripped.is_ok_and(|s| s.success()) {
        std::fs::copy(BIN, &new).unwrap();
    }
    publish(&fleet, &p, "tether", "2.0.0", &new, &["--kind", "agent"]).await;
    let job = wait_final(&fleet, &p, &add_job(&p, &["install", "tether@2.0.0"]).await).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}\n{}", fleet.logs());
    assert_eq!(job["reason"], "the agent restarted as tether 2.0.0 (previous: none)", "{job}");
    let packages = fleet.dir().join("agent-state/packages/tether");
    let exe = std::fs::canonicalize(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(packages.join("2.0.0/tether")).unwrap(),
        "the same process runs the new binary"
    );
    // The new agent works: it takes and runs the next job.
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "hello"]).await).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    let audit = fleet.agent_audit();
    assert!(audit.iter().any(|r| r["event"] == "agent_restarting" && r["version"] == "2.0.0"));
    assert!(audit.iter().any(|r| r["event"] == "agent_updated" && r["version"] == "2.0.0"));

    // A binary that does not run is refused before anything switches.
    let broken = fleet.dir().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    publish(&fleet, &p, "tether", "3.0.0", &broken, &["--kind", "agent"]).await;
    let job = wait_final(&fleet, &p, &add_job(&p, &["install", "tether@3.0.0"]).await).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("failed its check before the switch") && reason.contains("cannot start"), "{reason}");
    assert_eq!(std::fs::read_link(packages.join("current")).unwrap(), std::path::Path::new("2.0.0"));
    assert_eq!(std::fs::canonicalize(format!("/proc/{pid}/exe")).unwrap(), exe, "still the running agent");

    // A package that needs a newer agent than this one.
    let tool = fleet.dir().join("needs-new.bin");
    std::fs::write(&tool, b"x").unwrap();
    publish(&fleet, &p, "needs-new", "1", &tool, &["--min-agent", "99.0"]).await;
    let job: Value = wait_final(&fleet, &p, &add_job(&p, &["install", "needs-new@1"]).await).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("needs agent 99.0 or newer"), "{job}");
}
