//! Site rollouts with real processes: six agents at one site, an install
//! rolled out two devices at a time that fails on one device per batch and
//! stops at the threshold; a check rolled out to the whole site; and each
//! refusal by name.
use serde_json::Value;
use tether::tls::pki::Validity;

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_cli, login, run, token_of};
use crate::jobs::{jobs_cli, jobs_fleet};

/// An agent for device `id` beside the fleet's own: its own certificate,
/// state, socket and audit log; the same relays and allow-lists.
fn extra_agent(fleet: &Fleet, id: &str) -> Proc {
    let (cert, key, _) = fleet.pki.device_cert(id, Validity::days(1));
    let dir = fleet.dir().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(&fleet.agent_cfg).unwrap();
    let set = |k: &str, v: &std::path::Path| format!("{k} = \"{}\"", v.display());
    let cfg: Vec<String> = text
        .lines()
        .map(|l| match l.split(" = ").next().unwrap_or("") {
            "device" => format!("device = \"{id}\""),
            "cert" => set("cert", &cert),
            "key" => set("key", &key),
            "operator_socket" => set("operator_socket", &dir.join("agent.sock")),
            "audit_log" => set("audit_log", &dir.join("audit.jsonl")),
            "state_dir" => set("state_dir", &dir.join("state")),
            _ => l.to_string(),
        })
        .collect();
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg.join("\n")).unwrap();
    start_agent(&dir, &path)
}

async fn rollouts(p: &str) -> Vec<Value> {
    let (ok, out, err) = jobs_cli(&["rollouts", "--profile", p, "--json"]).await;
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Polls until the rollout is no longer RUNNING (60 s at most).
async fn rollout_end(fleet: &Fleet, p: &str, id: &str) -> Value {
    for _ in 0..600 {
        let r = rollouts(p).await.into_iter().find(|r| r["id"] == id).expect("listed");
        if r["state"] != "RUNNING" {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("rollout {id} still running after 60 s\n{}", fleet.logs());
}

async fn jobs_of(p: &str, rollout: &str) -> Vec<Value> {
    let (ok, out, err) = jobs_cli(&["list", "--profile", p, "--json"]).await;
    assert!(ok, "{err}");
    let mut jobs: Vec<Value> = serde_json::from_str(&out).unwrap();
    jobs.retain(|j| j["rollout"] == rollout);
    jobs.sort_by_key(|j| j["device"].as_str().unwrap().to_string());
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_rollout_goes_batch_by_batch_and_aborts_at_its_failure_threshold() {
    let (fleet, p) = jobs_fleet(true).await;
    let mut agents = Vec::new();
    for i in 2..=6 {
        let id = format!("dev-{i}");
        hub_cli(&fleet, &["device", "add", &id, "--site", "st-marys", "--consent", "auto"], "").await;
        agents.push(extra_agent(&fleet, &id));
    }
    // Healthy everywhere but on dev-2 and dev-4: one failure in each of the
    // first two batches (dev-1 dev-2 | dev-3 dev-4 | dev-5 dev-6).
    let health = r#"case "$TETHER_DEVICE" in dev-2|dev-4) echo "unhealthy on $TETHER_DEVICE"; exit 1;; esac"#;
    let file = fleet.dir().join("app.bin");
    std::fs::write(&file, random(50_000)).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let args = ["repo", "publish", "--profile", &p, "--targets-key", k, "app", "1", f, "--health", health];
    let (ok, _, err) = run(&args, "").await;
    assert!(ok, "{err}");

    let add = ["add", "--profile", &p, "--site", "st-marys", "--json", "install", "app@1"];
    let (ok, out, err) = jobs_cli(&[&add[..], &["--batch", "33%", "--abort-after", "2"]].concat()).await;
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!((r["batch_size"].as_u64(), r["devices"].as_array().unwrap().len()), (Some(2), 6), "{r}");
    assert_eq!(r["started"], 2, "the first batch is queued at once: {r}");

    let r = rollout_end(&fleet, &p, &id).await;
    assert_eq!(r["state"], "ABORTED", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("aborted after 2 failures (dev-2 FAILED, dev-4 FAILED)"), "{reason}");
    assert!(reason.contains("2 of 6 devices got no job"), "{reason}");
    let jobs = jobs_of(&p, &id).await;
    let got: Vec<(&str, &str)> =
        jobs.iter().map(|j| (j["device"].as_str().unwrap(), j["state"].as_str().unwrap())).collect();
    assert_eq!(
        got,
        [("dev-1", "SUCCEEDED"), ("dev-2", "FAILED"), ("dev-3", "SUCCEEDED"), ("dev-4", "FAILED")],
        "the third batch never started"
    );
    assert!(jobs[1]["reason"].as_str().unwrap().contains("unhealthy on dev-2"), "{}", jobs[1]);
    assert!(fleet.dir().join("dev-3/state/packages/app/1/app").exists(), "installed on dev-3");
    assert!(!fleet.dir().join("dev-5/state/packages/app").exists(), "nothing on dev-5");

    // A check to the whole site, three at a time: it completes.
    let add = ["add", "--profile", &p, "--site", "st-marys", "--json", "run", "hello", "--batch", "3"];
    let (ok, out, err) = jobs_cli(&add).await;
    assert!(ok, "{err}");
    let id2 = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let r = rollout_end(&fleet, &p, &id2).await;
    assert_eq!(
        (r["state"].as_str(), r["reason"].as_str()),
        (Some("COMPLETED"), Some("6 devices: 6 succeeded, 0 failed, 0 rejected, 0 cancelled"))
    );
    assert_eq!(jobs_of(&p, &id2).await.len(), 6);
    let (ok, _, err) = jobs_cli(&["cancel", "--profile", &p, &id2]).await;
    assert!(!ok && err.contains("already ended COMPLETED"), "{err}");
    let (ok, out, _) = jobs_cli(&["rollouts", "--profile", &p]).await;
    assert!(ok && out.contains(&id) && out.contains("ABORTED") && out.contains("4/6"), "{out}");

    // A device retired while a rollout runs (its first batch waits for the
    // people on site): its job is born cancelled, never offered to it, and
    // counted so. A rollout begun after the retirement leaves it out.
    let add = ["add", "--profile", &p, "--site", "st-marys", "--json", "run", "hello", "--batch", "3"];
    let (ok, out, err) = jobs_cli(&[&add[..], &["--consent", "required"]].concat()).await;
    assert!(ok, "{err}");
    let id3 = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    hub_cli(&fleet, &["device", "retire", "dev-6", "--reason", "scrapped"], "").await;
    let mut approved = std::collections::HashSet::new();
    for _ in 0..600 {
        if rollouts(&p).await.into_iter().any(|r| r["id"] == id3.as_str() && r["state"] != "RUNNING") {
            break;
        }
        for j in jobs_of(&p, &id3).await.iter().filter(|j| j["state"] == "QUEUED" || j["state"] == "IN_PROGRESS") {
            let (job, device) = (j["id"].as_str().unwrap(), j["device"].as_str().unwrap());
            let cfg =
                if device == DEVICE { fleet.agent_cfg.clone() } else { fleet.dir().join(device).join("agent.toml") };
            if !approved.contains(job) && run(&["agent", "--config", cfg.to_str().unwrap(), "approve", job], "").await.0
            {
                approved.insert(job.to_string());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = rollout_end(&fleet, &p, &id3).await;
    assert_eq!(r["reason"], "6 devices: 5 succeeded, 0 failed, 0 rejected, 1 cancelled", "{r}");
    let jobs = jobs_of(&p, &id3).await;
    let last = jobs.iter().find(|j| j["device"] == "dev-6").unwrap();
    assert_eq!(
        (&last["state"], &last["reason"]),
        (&Value::from("CANCELED"), &Value::from("the device was retired before its batch"))
    );
    assert_eq!(approved.len(), 5, "dev-6 was never asked");
    let (ok, out, err) = jobs_cli(&["add", "--profile", &p, "--site", "st-marys", "--json", "run", "hello"]).await;
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(!r["devices"].as_array().unwrap().iter().any(|d| d == "dev-6"), "{r}");

    // Refusals, each by name and audited.
    for (extra, want) in [
        (vec!["--batch", "0"], "a number of devices, or 1% to 100%"),
        (vec!["--batch", "150%"], "a number of devices, or 1% to 100%"),
    ] {
        let add = [&["add", "--profile", &p, "--site", "st-marys", "run", "hello"][..], &extra].concat();
        let (ok, _, err) = jobs_cli(&add).await;
        assert!(!ok && err.contains(want), "{extra:?}: {err}");
    }
    let (ok, _, err) = jobs_cli(&["add", "--profile", &p, "--site", "elsewhere", "run", "hello"]).await;
    assert!(!ok && err.contains("not entitled to site elsewhere"), "{err}");
    let other = add_user(&fleet, "other", "admin", &["empty-site"]).await;
    let op = login(&fleet, "other", &other).await;
    let (ok, _, err) = jobs_cli(&["add", "--profile", op.to_str().unwrap(), "--site", "empty-site", "run", "x"]).await;
    assert!(!ok && err.contains("site empty-site has no devices"), "{err}");
    let (ok, _, err) = jobs_cli(&["add", "--profile", &p, "--device", DEVICE, "run", "x", "--batch", "2"]).await;
    assert!(!ok && err.contains("--site"), "--batch needs --site: {err}");
    let token = token_of(std::path::Path::new(&p));
    let audit = hub_audit(&fleet, &token).await;
    for code in ["bad_batch", "no_devices", "rollout_finished"] {
        assert!(audited(&audit, "job_refused", code), "{code} audited");
    }
    let batches = audit.iter().filter(|a| a["event"] == "rollout_batch" && a["rollout"] == id.as_str()).count();
    assert_eq!(batches, 2, "two batches of the aborted rollout");
    assert!(audit.iter().any(|a| a["event"] == "rollout_ended" && a["state"] == "ABORTED"));
    drop(agents);
}
