//! Retiring a device with real processes: `tether hub device retire` on the
//! hub host (a process apart from the running hub) ends the device's live
//! session at the relays and cancels the job waiting at the device; from
//! then on no session, job or certificate renewal reaches it, each refusal
//! named, counted and audited; `reinstate` puts it back.
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::hub::{connect, hub_audit, hub_cli, hub_metric, run, stderr_of, token_of};
use crate::jobs::{add_job, jobs_cli, jobs_fleet_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_device_loses_its_session_and_job_and_nobody_reaches_it_until_reinstated() {
    let opts = Opts { relays: 2, twins: true, hub: true, repo: true, ..Opts::default() };
    let (fleet, p) = jobs_fleet_with(opts).await;
    let profile = std::path::PathBuf::from(&p);
    let token = token_of(&profile);
    let cfg = fleet.agent_cfg.to_str().unwrap().to_string();
    let pending_jobs = async || {
        let (ok, out, err) = run(&["agent", "--config", &cfg, "pending", "--json"], "").await;
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["jobs"].as_array().cloned().unwrap_or_default()
    };
    eventually("the device online at the hub", async || {
        run(&["devices", "--profile", &p, "--json"], "").await.1.contains("online")
    })
    .await;

    // A live session, and a job waiting for the person at the device.
    let (mut child, addr, session) = connect(&profile, "echo", "pressure fault").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    within(10, conn.read_exact(&mut two)).await.unwrap();
    assert_eq!(&two, b"hi");
    let job = add_job(&p, &["--consent", "required", "run", "hello"]).await;
    eventually("the job waits on site", async || pending_jobs().await.iter().any(|j| j["job"] == job.as_str())).await;

    // Retired from the hub host's CLI, while the hub runs.
    let t0 = Instant::now();
    let out = hub_cli(&fleet, &["device", "retire", DEVICE, "--reason", "sold to St Jude's; unit 4"], "").await;
    assert!(out.contains(&format!("device {DEVICE} retired")), "{out}");
    assert!(out.contains(&format!("revoked 1 session: {session}")), "{out}");
    assert!(out.contains(&format!("cancelled 1 job: {job} (run hello)")), "{out}");
    assert!(out.contains("tether certs revoke"), "the operator learns how to cut its channels: {out}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut rest)).await;
    println!("retirement closed the live tunnel {:?} after `hub device retire`", t0.elapsed());
    assert!(closed.is_ok(), "the live session outlived the retirement by 20 s\n{}", fleet.logs());
    let status = within(10, child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(1), "connect says the session was ended: {status}");
    let said = stderr_of(&mut child).await;
    assert!(said.contains(&format!("retired {DEVICE}, and nobody reaches it now (revoked)")), "{said}");
    eventually("the cancelled job leaves the person's list", async || {
        !pending_jobs().await.iter().any(|j| j["job"] == job.as_str())
    })
    .await;
    let withdrawn = |r: &Value| r["event"] == "job_consent_withdrawn" && r["job"] == job.as_str();
    assert!(fleet.agent_audit().iter().any(withdrawn), "the device audits the withdrawn request");
    // Both relays drop its control channel, and refuse it when it dials again.
    for i in 0..2 {
        eventually("the relay drops and refuses the retired device", async || {
            let audit = fleet.relay_audit(i);
            let dropped = audit.iter().any(|r| r["event"] == "agent_dropped" && r["device"] == DEVICE);
            dropped && crate::traffic::audited(&audit, "control_refused", "device_retired")
        })
        .await;
        assert_eq!(fleet.metric(i, "tether_relay_agents_dropped_total", &["device_retired"]).await, 1.0);
        assert!(fleet.metric(i, "tether_relay_frame_errors_total", &["control", "device_retired"]).await >= 1.0);
        assert_eq!(fleet.metric(i, "tether_relay_retired_devices", &[]).await, 1.0);
    }

    // Nobody reaches it: each refusal names the retirement.
    let args = ["connect", "--profile", &p, DEVICE, "echo", "--listen", "127.0.0.1:0", "--reason", "again"];
    let (ok, _, err) = run(&args, "").await;
    assert!(!ok && err.contains("retired") && err.contains("sold to St Jude's; unit 4"), "{err}");
    println!("connect to a retired device: {}", err.trim());
    let (ok, _, err) = jobs_cli(&["add", "--profile", &p, "--device", DEVICE, "run", "hello"]).await;
    assert!(!ok && err.contains("retired") && err.contains("takes no job"), "{err}");
    let (ok, out, _) = run(&["devices", "--profile", &p, "--json"], "").await;
    assert!(ok && !out.contains(DEVICE), "not listed to anyone: {out}");
    let list = hub_cli(&fleet, &["device", "list"], "").await;
    assert!(!list.contains(&format!("{DEVICE} ")) && list.contains("1 retired device not listed"), "{list}");
    let list = hub_cli(&fleet, &["device", "list", "--retired"], "").await;
    assert!(list.contains(DEVICE) && list.contains("sold to St Jude's; unit 4"), "{list}");
    // An admin away from the hub host lists them too.
    let (ok, out, err) = run(&["devices", "--profile", &p, "--retired"], "").await;
    assert!(ok && out.contains(DEVICE) && out.contains("sold to St Jude's; unit 4") && out.contains("cli:"), "{err}");
    let (ok, out, _) = run(&["devices", "--profile", &p, "--retired", "--json"], "").await;
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(ok && listed.len() == 1 && listed[0]["retired"]["reason"] == "sold to St Jude's; unit 4", "{out}");
    let set = run(
        &[
            "hub",
            "--config",
            fleet.hub.as_ref().unwrap().config.to_str().unwrap(),
            "device",
            "set",
            DEVICE,
            "--consent",
            "required",
        ],
        "",
    )
    .await;
    assert!(!set.0 && set.2.contains("reinstate it first"), "{set:?}");
    let again = run(
        &[
            "hub",
            "--config",
            fleet.hub.as_ref().unwrap().config.to_str().unwrap(),
            "device",
            "retire",
            DEVICE,
            "--reason",
            "x",
        ],
        "",
    )
    .await;
    assert!(!again.0 && again.2.contains("already retired"), "{again:?}");
    assert!(hub_metric(&fleet, "tether_hub_refusals_total", &["device_retired"]).await >= 2.0);

    // The record and the audit say who, why, and what it ended.
    let (_, body) = crate::hub::hub_client(&fleet)
        .call(Method::GET, &format!("/api/v1/sessions/{session}"), Some(&token), None)
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["state"], "revoked", "{record}");
    let audit = hub_audit(&fleet, &token).await;
    let retired = audit.iter().find(|r| r["event"] == "device_retired").expect("device_retired audited");
    assert_eq!(retired["device"], DEVICE);
    assert_eq!(retired["reason"], "sold to St Jude's; unit 4");
    assert_eq!(retired["sessions_revoked"], serde_json::json!([session]));
    assert_eq!(retired["jobs_canceled"], serde_json::json!([job]));
    assert!(retired["by"].as_str().unwrap().starts_with("cli:"));
    let refused = |event: &str| audit.iter().any(|r| r["event"] == event && r["reason"] == "device_retired");
    assert!(refused("session_refused") && refused("job_refused"), "both refusals audited");
    assert!(audit.iter().any(|r| r["event"] == "session_revoked" && r["session"] == session.as_str()));

    // Back in service: reachable again.
    let out = hub_cli(&fleet, &["device", "reinstate", DEVICE], "").await;
    assert!(out.contains("back in service"), "{out}");
    // The relays take it again; it dials again after its back-off (at most a minute).
    let t0 = Instant::now();
    let mut online = false;
    for _ in 0..90 {
        if run(&["devices", "--profile", &p, "--json"], "").await.1.contains("online") {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("the device was online again {:?} after `hub device reinstate`", t0.elapsed());
    assert!(online, "the reinstated device did not come back in 90 s\n{}", fleet.logs());
    let (mut child, addr, _) = connect(&profile, "echo", "after reinstatement").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"ok").await.unwrap();
    within(10, conn.read_exact(&mut two)).await.unwrap();
    assert_eq!(&two, b"ok");
    child.kill().await.unwrap();
    let audit = hub_audit(&fleet, &token).await;
    assert!(
        audit.iter().any(|r| r["event"] == "device_reinstated" && r["was"]["reason"] == "sold to St Jude's; unit 4")
    );
}

/// Posts `form` (url-encoded, after the CSRF token of `page`) to `path`.
async fn post(fleet: &Fleet, cookie: &str, page: &str, path: &str, form: &str) -> String {
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: {cookie}");
    crate::console::raw(fleet, &head, &format!("csrf={csrf}&{form}")).await
}

/// On the device's console page: a specialist sees no retire form and has
/// a post refused; an admin's empty reason is named; the admin's retirement
/// ends the live session at once, and the page then says why nobody
/// reaches the device, to the specialist too; reinstating brings the
/// policy form back. Each refusal audited and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_retires_and_reinstates_a_device_on_its_console_page() {
    use crate::console::{console_cookie, device_page, raw};
    let (fleet, profile) = crate::consent::hub_consent_fleet("auto", "auto").await;
    let ada = crate::hub::add_user(&fleet, "ada", "admin", &[]).await;
    let sam = crate::hub::add_user(&fleet, "sam", "engineer", &["st-marys"]).await;
    let token = token_of(&crate::hub::login(&fleet, "ada", &ada).await);
    let sam_profile = crate::hub::login(&fleet, "sam", &sam).await;
    let admin = console_cookie(&fleet, "ada", &ada).await;
    let engineer = console_cookie(&fleet, "sam", &sam).await;
    let (mut child, addr, session) = connect(&profile, "echo", "pressure fault").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    within(10, conn.read_exact(&mut two)).await.unwrap();
    let path = format!("/console/devices/{DEVICE}/retire");

    let theirs = device_page(&fleet, &engineer, DEVICE).await;
    assert!(theirs.starts_with("HTTP/1.1 200") && !theirs.contains("id=\"retire\""), "{theirs}");
    let refused = post(&fleet, &engineer, &theirs, &path, "reason=mine").await;
    assert!(refused.starts_with("HTTP/1.1 403") && refused.contains("needs the admin role"), "{refused}");

    let page = device_page(&fleet, &admin, DEVICE).await;
    assert!(page.contains("id=\"retire\"") && page.contains("data-confirm=\"Retire"), "{page}");
    let empty = post(&fleet, &admin, &page, &path, "reason=+").await;
    assert!(empty.starts_with("HTTP/1.1 400") && empty.contains("Not done: a reason is required"), "{empty}");
    let t0 = Instant::now();
    let done = post(&fleet, &admin, &page, &path, "reason=scrapped+after+the+flood").await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(done.contains(&format!("Revoked 1 session: {session}")) && done.contains("No job was waiting."), "{done}");
    assert!(done.contains("id=\"reinstate\"") && !done.contains("id=\"policy\""), "{done}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    println!("a retirement on the console closed the live tunnel {:?} after the post", t0.elapsed());
    assert!(closed.is_ok(), "the live session outlived the retirement\n{}", fleet.logs());
    assert_eq!(within(10, child.wait()).await.unwrap().code(), Some(1));
    let said = stderr_of(&mut child).await;
    assert!(said.contains(&format!("console:ada retired {DEVICE}")), "connect names who retired it: {said}");
    eventually("the relays drop the device's channel", async || {
        (0..2).all(|i| fleet.relay_audit(i).iter().any(|r| r["event"] == "agent_dropped" && r["device"] == DEVICE))
    })
    .await;
    let twice = post(&fleet, &admin, &page, &path, "reason=again").await;
    assert!(twice.starts_with("HTTP/1.1 409") && twice.contains("already retired"), "{twice}");

    // The specialist still finds its page, which says why; lists leave it out.
    let theirs = device_page(&fleet, &engineer, DEVICE).await;
    assert!(theirs.starts_with("HTTP/1.1 200") && theirs.contains("scrapped after the flood"), "{theirs}");
    assert!(!theirs.contains("id=\"reinstate\""), "{theirs}");
    let list = raw(&fleet, &format!("GET /console/devices HTTP/1.1\r\nCookie: {engineer}"), "").await;
    assert!(list.contains("No devices on your sites.") && !list.contains("Retired devices"), "{list}");
    let list = raw(&fleet, &format!("GET /console/devices HTTP/1.1\r\nCookie: {admin}"), "").await;
    assert!(list.contains("Retired devices (1)") && list.contains("scrapped after the flood"), "{list}");
    let (ok, _, err) = run(&["devices", "--profile", sam_profile.to_str().unwrap(), "--retired"], "").await;
    assert!(!ok && err.contains("admin"), "the list of retired devices is the admins': {err}");

    let back = post(&fleet, &admin, &page, &format!("/console/devices/{DEVICE}/reinstate"), "").await;
    assert!(back.starts_with("HTTP/1.1 200") && back.contains("Back in service"), "{back}");
    assert!(back.contains("id=\"policy\"") && back.contains("id=\"retire\""), "{back}");
    let again = post(&fleet, &admin, &page, &format!("/console/devices/{DEVICE}/reinstate"), "").await;
    assert!(again.starts_with("HTTP/1.1 409") && again.contains("is in service: nothing to reinstate"), "{again}");

    let audit = hub_audit(&fleet, &token).await;
    let has = |event: &str, key: &str, value: &str| audit.iter().any(|r| r["event"] == event && r[key] == value);
    assert!(has("device_retired", "by", "console:ada") && has("device_reinstated", "by", "console:ada"));
    assert!(
        has("device_retire_refused", "reason", "no_reason")
            && has("device_retire_refused", "reason", "already_retired")
    );
    assert!(has("admin_refused", "action", "device_retire"), "the specialist's post is audited");
    assert!(has("admin_refused", "action", "devices_retired"), "and the specialist's list of retired devices");
    assert!(has("device_reinstate_refused", "reason", "not_retired"));
    for reason in ["no_reason", "already_retired", "not_admin", "not_retired"] {
        assert!(hub_metric(&fleet, "tether_hub_refusals_total", &[reason]).await >= 1.0, "{reason} not counted");
    }
}

/// A retirement is several writes. One cut short (the CLI killed, the
/// database gone for a moment), or raced by a grant or a job created as it
/// ran, leaves a session or a job open on a retired device: running
/// `retire` again closes them, and the running hub closes them by itself
/// 30 s after the retirement; meanwhile the device is handed no such job.
/// Each audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_left_unfinished_is_finished_by_retire_again_and_by_the_hub() {
    use tether::api::{JobKind, JobState, JobView, SessionRecord};
    let fleet = Fleet::start(Opts { relays: 1, hub: true, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys"], "").await;
    let boss = crate::hub::add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&crate::hub::login(&fleet, "boss", &boss).await);
    let out = hub_cli(&fleet, &["device", "retire", DEVICE, "--reason", "scrapped"], "").await;
    assert!(out.contains("no session was open") && out.contains("no job was waiting"), "{out}");

    // What a grant and a job that raced the retirement leave behind.
    let store = tether::hub::store::Store::open("sqlite:hub.db", fleet.dir()).await.unwrap();
    let now = tether::util::now_secs() as i64;
    let left = async |n: u32| {
        let session = format!("00112233445566778899aabbccddee{n:02x}");
        let rec = SessionRecord {
            id: session.clone(),
            specialist: "eve".into(),
            device: DEVICE.into(),
            service: "echo".into(),
            state: "granted".into(),
            created_at: now,
            expires_at: now + 600,
            ..Default::default()
        };
        store.session_add(&rec).await.unwrap();
        let job = JobView {
            id: format!("job-raced-{n}"),
            device: DEVICE.into(),
            kind: JobKind::Run,
            target: "hello".into(),
            state: JobState::Queued,
            reason: String::new(),
            consent_required: false,
            created_by: "eve".into(),
            created_at: now,
            updated_at: now,
            deadline: now + 3600,
            output: String::new(),
            rollout: String::new(),
        };
        store.job_add(&job).await.unwrap();
        (session, job.id)
    };

    // `retire` again finishes it, and says what it closed.
    let (s1, j1) = left(1).await;
    let out = hub_cli(&fleet, &["device", "retire", DEVICE, "--reason", "scrapped"], "").await;
    assert!(out.contains("left something open") && out.contains("by cli:"), "{out}");
    assert!(out.contains(&format!("revoked 1 session: {s1}")), "{out}");
    assert!(out.contains(&format!("cancelled 1 job: {j1} (run hello)")), "{out}");
    let again =
        run(&["hub", "--config", fleet.hub.as_ref().unwrap().config.to_str().unwrap(), "device", "retire", DEVICE], "")
            .await;
    assert!(!again.0 && again.2.contains("reason"), "a reason is still required: {again:?}");

    // Left alone, the running hub finishes it; meanwhile the device, asking
    // through its relay, is handed no job to run.
    let (s2, j2) = left(2).await;
    let relay = crate::jobs::as_relay(&fleet);
    let (status, body) = relay.call(Method::GET, &format!("/api/v1/device/{DEVICE}/jobs"), None, None).await.unwrap();
    let handed: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert!(status.is_success(), "{status}");
    let ids: Vec<&str> = handed.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [j1.as_str()], "the cancelled job only, to end it on the device; not {j2}");
    let t0 = std::time::Instant::now();
    let closed = async || {
        let s = store.session(&s2).await.unwrap().unwrap();
        let j = store.job(&j2).await.unwrap().unwrap();
        s.state == "revoked" && j.state == JobState::Canceled
    };
    let mut done = false;
    for _ in 0..60 {
        if closed().await {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("the hub finished the retirement {:?} after the leftovers appeared", t0.elapsed());
    assert!(done, "the hub left session {s2} and job {j2} open on a retired device\n{}", fleet.logs());
    let s = store.session(&s2).await.unwrap().unwrap();
    assert_eq!((s.end_reason.as_deref(), s.ended_by.as_deref()), (Some("device_retired"), Some("hub")));

    let audit = hub_audit(&fleet, &token).await;
    let finished: Vec<&Value> = audit.iter().filter(|r| r["event"] == "device_retirement_finished").collect();
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert!(finished[0]["by"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(finished[0]["sessions_revoked"], serde_json::json!([s1]));
    assert_eq!(finished[1]["by"], "hub");
    assert_eq!(finished[1]["sessions_revoked"], serde_json::json!([s2]));
    assert_eq!(finished[1]["jobs_canceled"], serde_json::json!([j2]));
    assert_eq!(finished[1]["retired"]["reason"], "scrapped");
    let revoked = |s: &str| {
        audit.iter().any(|r| r["event"] == "session_revoked" && r["session"] == s && r["why"] == "device_retired")
    };
    assert!(revoked(&s1) && revoked(&s2));
    assert_eq!(audit.iter().filter(|r| r["event"] == "device_retired").count(), 1, "retired once");
}

/// Each refused `retire` and `reinstate` on the hub host is printed and
/// audited with its code, as on the console: no such device, no reason, a
/// device in service to reinstate, one retired with nothing left open (and
/// a new policy for it), and one whose mark another writer changed under each of the two tries (a
/// reinstatement racing the retirement: here a trigger in the hub's own
/// SQLite database skips the conditional update, as that race would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refused_retirement_on_the_hub_host_is_printed_and_audited_a_raced_one_too() {
    let fleet = Fleet::start(Opts { relays: 1, hub: true, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys"], "").await;
    let boss = crate::hub::add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&crate::hub::login(&fleet, "boss", &boss).await);
    let config = fleet.hub.as_ref().unwrap().config.to_str().unwrap().to_string();
    let refused = async |args: &[&str], says: &str| {
        let out = run(&[&["hub", "--config", config.as_str(), "device"], args].concat(), "").await;
        assert!(!out.0 && out.2.contains(says), "tether hub device {args:?}: {out:?}");
    };
    refused(&["retire", "NOPE", "--reason", "sold"], "no device \"NOPE\"").await;
    refused(&["retire", DEVICE, "--reason", "  "], "a reason is required").await;
    refused(&["reinstate", DEVICE], "is in service: nothing to reinstate").await;

    // The race: the conditional mark matches no row, twice.
    let db = rusqlite::Connection::open(fleet.dir().join("hub.db")).unwrap();
    db.execute_batch(&format!(
        "CREATE TRIGGER raced BEFORE UPDATE OF retired_at ON devices \
         WHEN OLD.id = '{DEVICE}' AND OLD.retired_at = 0 BEGIN SELECT RAISE(IGNORE); END;"
    ))
    .unwrap();
    refused(&["retire", DEVICE, "--reason", "sold"], "being retired and put back in service by others").await;
    let store = tether::hub::store::Store::open("sqlite:hub.db", fleet.dir()).await.unwrap();
    assert!(store.device(DEVICE).await.unwrap().unwrap().retired.is_none(), "nothing half done");
    db.execute_batch("DROP TRIGGER raced;").unwrap();
    hub_cli(&fleet, &["device", "retire", DEVICE, "--reason", "sold"], "").await;
    refused(&["retire", DEVICE, "--reason", "sold"], "is already retired").await;
    refused(&["set", DEVICE, "--consent", "auto"], "reinstate it first").await;

    let audit = hub_audit(&fleet, &token).await;
    let codes = |event: &str| -> Vec<String> {
        let of = audit.iter().filter(|r| r["event"] == event);
        of.inspect(|r| assert!(r["by"].as_str().unwrap().starts_with("cli:"), "{r}"))
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(codes("device_retire_refused"), ["no_device", "no_reason", "busy", "already_retired"]);
    assert_eq!(codes("device_reinstate_refused"), ["not_retired"]);
    assert_eq!(codes("device_set_refused"), ["bad_policy"]);
    assert_eq!(audit.iter().filter(|r| r["event"] == "device_retired").count(), 1, "retired once");
}
