//! The job queue at the hub, with real processes: `tether jobs add|list|cancel`
//! as an admin runs them, the device's view through its relay (relay
//! certificate only), the relays' long poll, state changes, and each refusal.
use hyper::Method;
use serde_json::Value;
use tether::api::HubClient;

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_cli, hub_client, login, run, token_of};

/// A hub with a repository holding tool/1.0, DEVICE at st-marys, and an
/// admin entitled to st-marys; returns the fleet and the admin's profile.
pub async fn jobs_fleet(agent: bool) -> (Fleet, String) {
    jobs_fleet_with(Opts { relays: 1, hub: true, repo: true, agent, ..Opts::default() }).await
}

pub async fn jobs_fleet_with(opts: Opts) -> (Fleet, String) {
    let fleet = Fleet::start(opts).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let secret = add_user(&fleet, "boss", "admin", &["st-marys"]).await;
    let profile = login(&fleet, "boss", &secret).await.to_str().unwrap().to_string();
    let file = fleet.dir().join("tool.bin");
    std::fs::write(&file, random(100_000)).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let (ok, _, err) = run(&["repo", "publish", "--profile", &profile, "--targets-key", k, "tool", "1.0", f], "").await;
    assert!(ok, "{err}");
    (fleet, profile)
}

pub async fn jobs_cli(args: &[&str]) -> (bool, String, String) {
    run(&[&["jobs"], args].concat(), "").await
}

pub fn as_relay(fleet: &Fleet) -> HubClient {
    let cert = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), Some((&cert.0, &cert.1)), None)
        .unwrap()
}

async fn report(relay: &HubClient, id: &str, state: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&serde_json::json!({"state": state, "reason": "test"})).unwrap();
    let path = format!("/api/v1/device/{DEVICE}/jobs/{id}");
    let (status, body) = relay.call(Method::POST, &path, None, Some(body.into())).await.unwrap();
    (status.as_u16(), serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_queued_listed_reported_and_cancelled_and_each_refusal_is_named() {
    let (fleet, p) = jobs_fleet(false).await;
    let relay = as_relay(&fleet);
    let (status, body) = relay.call(Method::GET, "/api/v1/relay/events?after=0&wait=0", None, None).await.unwrap();
    assert!(status.is_success());
    let start: Value = serde_json::from_slice(&body).unwrap();

    // The relay's long poll is answered as soon as a job is queued.
    let polling = {
        let relay = as_relay(&fleet);
        let after = start["last"].as_u64().unwrap();
        tokio::spawn(async move {
            let path = format!("/api/v1/relay/events?after={after}&wait=8");
            let t = std::time::Instant::now();
            let (_, body) = relay.call(Method::GET, &path, None, None).await.unwrap();
            (t.elapsed(), serde_json::from_slice::<Value>(&body).unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (ok, out, err) = jobs_cli(&["add", "--profile", &p, "--device", DEVICE, "--json", "install", "tool@1.0"]).await;
    assert!(ok, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "QUEUED");
    assert_eq!(job["kind"], "install");
    let (waited, events) = within(10, polling).await.unwrap();
    assert!(events["devices"].as_array().unwrap().iter().any(|d| d == DEVICE), "{events}");
    assert!(waited < std::time::Duration::from_secs(8), "answered before the poll's 8 s ran out: {waited:?}");

    // The device's view, through its relay only.
    let (status, body) = relay.call(Method::GET, &format!("/api/v1/device/{DEVICE}/jobs"), None, None).await.unwrap();
    assert!(status.is_success());
    let mine: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], id.as_str());
    let token = token_of(std::path::Path::new(&p));
    let (status, body) = hub_client(&fleet)
        .call(Method::GET, &format!("/api/v1/device/{DEVICE}/jobs"), Some(&token), None)
        .await
        .unwrap();
    assert_eq!(status, 403, "an account is not a relay: {}", String::from_utf8_lossy(&body));

    // States move forward only; a repeated report changes nothing.
    assert_eq!(report(&relay, &id, "IN_PROGRESS").await.0, 200);
    assert_eq!(report(&relay, &id, "IN_PROGRESS").await.0, 200);
    let (status, body) = report(&relay, &id, "QUEUED").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("bad_transition")));
    let (ok, out, _) = jobs_cli(&["list", "--profile", &p, "--device", DEVICE, "--json"]).await;
    assert!(ok);
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["state"], "IN_PROGRESS");
    assert!(listed[0]["created_at"].as_i64().unwrap() > 0 && listed[0]["updated_at"].as_i64().is_some());

    // Cancelled while in progress: the device's next report learns it.
    let (ok, out, err) = jobs_cli(&["cancel", "--profile", &p, &id]).await;
    assert!(ok && out.contains("CANCELED"), "{out} {err}");
    let (status, body) = report(&relay, &id, "SUCCEEDED").await;
    assert_eq!((status, body["state"].as_str()), (409, Some("CANCELED")));
    let (ok, _, err) = jobs_cli(&["cancel", "--profile", &p, &id]).await;
    assert!(!ok && err.contains("already ended CANCELED"), "{err}");
    let (ok, out, _) = jobs_cli(&["list", "--profile", &p]).await;
    assert!(ok && out.contains(&id) && out.contains("CANCELED") && out.contains("canceled by boss"), "{out}");

    // Refusals: each named, and audited at the hub.
    let stranger = add_user(&fleet, "stranger", "admin", &[]).await;
    let sp = login(&fleet, "stranger", &stranger).await;
    let sp = sp.to_str().unwrap();
    let (ok, _, err) = jobs_cli(&["add", "--profile", sp, "--device", DEVICE, "install", "tool@1.0"]).await;
    assert!(!ok && err.contains("not entitled"), "an admin of another site: {err}");
    let eng = add_user(&fleet, "eng", "engineer", &["st-marys"]).await;
    let ep = login(&fleet, "eng", &eng).await;
    let (ok, _, err) = jobs_cli(&["add", "--profile", ep.to_str().unwrap(), "--device", DEVICE, "run", "disk"]).await;
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    for (args, code) in [
        (vec!["install", "tool@9.9"], "the repository has no tool@9.9"),
        (vec!["install", "tool"], "an install names NAME@VERSION"),
        (vec!["upload", "../etc"], "a name of 1-64 letters"),
        (vec!["run", "x", "--timeout", "0"], "timeout_secs: 1 to"),
    ] {
        let all = [&["add", "--profile", &p, "--device", DEVICE][..], &args].concat();
        let (ok, _, err) = jobs_cli(&all).await;
        assert!(!ok && err.contains(code), "{args:?}: {err}");
    }
    let (ok, _, err) = jobs_cli(&["show", "--profile", sp, &id]).await;
    assert!(!ok && err.contains("not entitled to device"), "another site's job: {err}");
    let (ok, _, err) = jobs_cli(&["show", "--profile", &p, "job-0000000000000000"]).await;
    assert!(!ok && err.contains("no job job-0000000000000000"), "{err}");
    let (ok, _, err) = jobs_cli(&["add", "--profile", &p, "--device", "ghost", "run", "disk"]).await;
    assert!(!ok && err.contains("not entitled"), "an unknown device looks like one not entitled to: {err}");
    let audit = hub_audit(&fleet, &token).await;
    for code in ["not_entitled", "unknown_target", "bad_target", "bad_timeout", "job_finished"] {
        assert!(audited(&audit, "job_refused", code), "job_refused {code} audited");
    }
    assert!(audited(&audit, "job_report_refused", "bad_transition"), "a report moving a job backwards is audited");
    let read_refused = |r: &Value| r["event"] == "job_refused" && r["action"] == "job_read" && r["user"] == "stranger";
    assert!(audit.iter().any(read_refused), "another site's job shown: refused and audited");
    assert!(audit.iter().any(|r| r["event"] == "job_created" && r["job"] == id.as_str()));
    assert!(audit.iter().any(|r| r["event"] == "job_state" && r["to"] == "CANCELED"));
}

/// Polls the job until it leaves QUEUED and IN_PROGRESS (or 60 s pass).
pub async fn wait_final(fleet: &Fleet, p: &str, id: &str) -> Value {
    for _ in 0..600 {
        let (ok, out, err) = jobs_cli(&["list", "--profile", p, "--device", DEVICE, "--json"]).await;
        assert!(ok, "{err}");
        let jobs: Vec<Value> = serde_json::from_str(&out).unwrap();
        let job = jobs.into_iter().find(|j| j["id"] == id).expect("the job is listed");
        if job["state"] != "QUEUED" && job["state"] != "IN_PROGRESS" {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("job {id} did not end in 60 s\n{}", fleet.logs());
}

pub async fn add_job(p: &str, args: &[&str]) -> String {
    let all = [&["add", "--profile", p, "--device", DEVICE, "--json"][..], args].concat();
    let (ok, out, err) = jobs_cli(&all).await;
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_run_on_the_device_and_a_failing_health_check_rolls_back() {
    let (fleet, p) = jobs_fleet(true).await;
    let packages = fleet.dir().join("agent-state/packages");

    // A plain file: kept as packages/tool/1.0/tool, byte for byte.
    let id = add_job(&p, &["install", "tool@1.0"]).await;
    let job = wait_final(&fleet, &p, &id).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("installed tool 1.0"), "{job}");
    let installed = std::fs::read(packages.join("tool/1.0/tool")).unwrap();
    assert_eq!(installed, std::fs::read(fleet.dir().join("tool.bin")).unwrap(), "byte-identical");
    assert_eq!(std::fs::read_link(packages.join("tool/current")).unwrap(), std::path::Path::new("1.0"));

    // A tar with an install script and a health check: version 1 installs,
    // version 2's health check fails and `current` goes back to version 1.
    let key = fleet.dir().join("repo-keys/targets.pem");
    for (version, health) in [("1", "test -f installed"), ("2", "echo not healthy; echo at all >&2; false")] {
        let src = fleet.dir().join(format!("app-{version}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("install.sh"), "echo ok > installed\n").unwrap();
        std::fs::write(src.join("payload.bin"), random(200_000)).unwrap();
        let tar = fleet.dir().join(format!("app-{version}.tar"));
        let st = std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&src).arg(".").status().unwrap();
        assert!(st.success());
        let (k, t) = (key.to_str().unwrap(), tar.to_str().unwrap());
        let args = ["repo", "publish", "--profile", &p, "--targets-key", k, "app", version, t];
        let (ok, _, err) = run(&[&args[..], &["--install", "sh install.sh", "--health", health]].concat(), "").await;
        assert!(ok, "{err}");
    }
    let job = wait_final(&fleet, &p, &add_job(&p, &["install", "app@1"]).await).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert!(packages.join("app/1/installed").exists(), "the install script ran in the package's folder");
    assert_eq!(
        std::fs::read(packages.join("app/1/payload.bin")).unwrap(),
        std::fs::read(fleet.dir().join("app-1/payload.bin")).unwrap()
    );
    let job = wait_final(&fleet, &p, &add_job(&p, &["install", "app@2"]).await).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("health check failed") && reason.contains("not healthy"), "{reason}");
    assert!(reason.contains("rolled back to 1"), "{reason}");
    // The table keeps a job to a line, whatever the failing command printed.
    let (ok, out, err) = jobs_cli(&["list", "--profile", &p]).await;
    assert!(ok, "{err}");
    assert!(out.lines().skip(1).all(|l| l.starts_with("job-")), "one line per job:\n{out}");
    assert!(out.contains("(not healthy | at all); rolled back to 1"), "{out}");
    assert_eq!(std::fs::read_link(packages.join("app/current")).unwrap(), std::path::Path::new("1"));
    assert!(packages.join("app/2").exists(), "the failed version is kept for inspection");
    let audit = fleet.agent_audit();
    assert!(audit.iter().any(|r| r["event"] == "package_rolled_back" && r["version"] == "2"));
    assert!(audit.iter().any(|r| r["event"] == "job_ended" && r["state"] == "SUCCEEDED"));

    // Checks: only those on the device's allow-list run; output comes back capped.
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "disk-check"]).await).await;
    assert_eq!(job["state"], "REJECTED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("not on this device's allow-list"), "{job}");
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "hello"]).await).await;
    assert_eq!((job["state"].as_str(), job["output"].as_str()), (Some("SUCCEEDED"), Some("hello from the device\n")));
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "fails"]).await).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("exit status: 3") && job["output"] == "broken\n", "{job}");
    // `jobs show`: the job a field a line, and the check's output as sent.
    let id = job["id"].as_str().unwrap();
    let (ok, out, err) = jobs_cli(&["show", "--profile", &p, id]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("{id}: run fails on {DEVICE}\nstate:    FAILED\nreason:   exit status: 3")),
        "{out}"
    );
    assert!(out.ends_with("output (7 bytes):\nbroken\n") && out.contains("queued:   20"), "{out}");
    let (ok, out, _) = jobs_cli(&["show", "--profile", &p, "--json", id]).await;
    assert!(ok && serde_json::from_str::<Value>(&out).unwrap() == job, "--json is the listed job: {out}");
    // What a device prints cannot drive the specialist's terminal.
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "screen"]).await).await;
    assert_eq!(job["output"], "before\u{1b}[2J\rafter\n", "{job}");
    let (ok, out, err) = jobs_cli(&["show", "--profile", &p, job["id"].as_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.ends_with("output (17 bytes):\nbefore\\u{1b}[2Jafter\n") && !out.contains('\u{1b}'), "{out:?}");
    let job = wait_final(&fleet, &p, &add_job(&p, &["run", "big"]).await).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["output"].as_str().unwrap().len(), 32 * 1024, "output capped");
    assert!(job["reason"].as_str().unwrap().contains("output cut to 32768 of 100000 bytes"), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_finishes_it_after_its_restart_without_fetching_from_zero() {
    let opts = Opts { relays: 2, twins: true, hub: true, repo: true, download_rate: 8 << 20, ..Opts::default() };
    let (mut fleet, p) = jobs_fleet_with(opts).await;
    let content = random(24 << 20);
    let file = fleet.dir().join("big.bin");
    std::fs::write(&file, &content).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let (ok, _, err) = run(&["repo", "publish", "--profile", &p, "--targets-key", k, "big", "1", f], "").await;
    assert!(ok, "{err}");
    let id = add_job(&p, &["install", "big@1"]).await;
    let sent = async |f: &Fleet| {
        f.metric(0, "tether_relay_repo_bytes_total", &[]).await
            + f.metric(1, "tether_relay_repo_bytes_total", &[]).await
    };
    eventually("a third of the package is on the device", async || sent(&fleet).await >= (8 << 20) as f64).await;
    fleet.agent.as_mut().unwrap().kill();
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    let job = wait_final(&fleet, &p, &id).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    let packages = fleet.dir().join("agent-state/packages");
    assert!(std::fs::read(packages.join("big/1/big")).unwrap() == content, "byte-identical");
    let total = sent(&fleet).await;
    eprintln!("agent restarted mid-download: {total} bytes sent for a {} byte package", content.len());
    assert!(total < content.len() as f64 * 1.2, "resumed, not fetched again from zero: {total}");
}

/// Measurement (ignored in CI): from `POST /api/v1/jobs` answered to the job
/// leaving QUEUED at the hub, with the agent attached; prints percentiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_job_pickup() {
    let (fleet, p) = jobs_fleet(true).await;
    let token = token_of(std::path::Path::new(&p));
    let hub = hub_client(&fleet);
    let mut ms = Vec::new();
    for i in 0..200 {
        let body = serde_json::json!({"device": DEVICE, "kind": "run", "target": format!("check-{i}")});
        let (status, out) = hub
            .call(Method::POST, "/api/v1/jobs", Some(&token), Some(serde_json::to_vec(&body).unwrap().into()))
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        assert_eq!(status, 201);
        let id = serde_json::from_slice::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
        loop {
            let (_, out) = hub
                .call(Method::GET, &format!("/api/v1/jobs?device={DEVICE}&limit=500"), Some(&token), None)
                .await
                .unwrap();
            let jobs: Vec<Value> = serde_json::from_slice(&out).unwrap();
            if jobs.iter().any(|j| j["id"] == id.as_str() && j["state"] != "QUEUED") {
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                let log = fleet.logs();
                panic!("job {i} ({id}) never picked up; agent log:\n{log}");
            }
        }
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    eprintln!(
        "job pickup over {} jobs: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        ms[ms.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needing_consent_waits_for_the_person_at_the_device() {
    let (fleet, p) = jobs_fleet(true).await;
    let cfg = fleet.agent_cfg.to_str().unwrap().to_string();
    let agent = async |args: &[&str]| {
        let (ok, out, err) = run(&[&["agent", "--config", &cfg][..], args, &["--json"]].concat(), "").await;
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    for (answer, want) in [("deny", "REJECTED"), ("approve", "SUCCEEDED")] {
        let id = add_job(&p, &["--consent", "required", "run", "hello"]).await;
        eventually("the job waits on site", async || {
            agent(&["pending"]).await["jobs"].as_array().unwrap().iter().any(|j| j["job"] == id.as_str())
        })
        .await;
        let pending = agent(&["pending"]).await;
        let shown = pending["jobs"].as_array().unwrap().iter().find(|j| j["job"] == id.as_str()).unwrap().clone();
        assert_eq!(
            (shown["kind"].as_str(), shown["target"].as_str(), shown["by"].as_str()),
            (Some("run"), Some("hello"), Some("boss"))
        );
        agent(&[answer, &id]).await;
        let job = wait_final(&fleet, &p, &id).await;
        assert_eq!(job["state"], want, "{job}");
    }
    let audit = fleet.agent_audit();
    assert!(audit.iter().any(|r| r["event"] == "job_consent_denied"));
    assert!(audit.iter().any(|r| r["event"] == "job_consent_given"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_mid_download_stops_and_leaves_no_partial_file() {
    let opts = Opts { relays: 1, hub: true, repo: true, download_rate: 4 << 20, ..Opts::default() };
    let (fleet, p) = jobs_fleet_with(opts).await;
    let file = fleet.dir().join("big.bin");
    std::fs::write(&file, random(24 << 20)).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let (ok, _, err) = run(&["repo", "publish", "--profile", &p, "--targets-key", k, "big", "1", f], "").await;
    assert!(ok, "{err}");
    let id = add_job(&p, &["install", "big@1"]).await;
    eventually("the download is under way", async || {
        fleet.metric(0, "tether_relay_repo_bytes_total", &[]).await >= (4 << 20) as f64
    })
    .await;
    let (ok, out, err) = jobs_cli(&["cancel", "--profile", &p, &id]).await;
    assert!(ok && out.contains("CANCELED"), "{out} {err}");
    eventually("the agent stops and says so", async || {
        fleet
            .agent_audit()
            .iter()
            .any(|r| r["event"] == "job_ended" && r["job"] == id.as_str() && r["state"] == "CANCELED")
    })
    .await;
    let downloads = fleet.dir().join("agent-state/downloads");
    let left: Vec<_> =
        std::fs::read_dir(&downloads).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "partial files left: {left:?}");
    assert!(!fleet.dir().join("agent-state/packages/big").exists(), "nothing installed");
    let sent = fleet.metric(0, "tether_relay_repo_bytes_total", &[]).await;
    assert!(sent < (20 << 20) as f64, "the download stopped early: {sent} bytes sent");
}
