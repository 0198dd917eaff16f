//! State that must survive a restart: used grants at the relay and the
//! agent, revocations at the hub, a session's byte counts at the relay that
//! carried them, and the hub's database through a backup and restore.
use serde_json::json;
use tether::proto::{Frame, Reason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::hub::{add_user, connect, hub_audit, hub_client, hub_fleet, login, run, token_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_grants_stay_used_across_restarts_of_relay_and_agent() {
    // One relay, no twin: nothing but its own file can remember the grant.
    let mut fleet = Fleet::start(Opts::default()).await;
    let once = fleet.grant(|_| {});
    assert!(matches!(fleet.open_raw(0, once.clone(), "echo").await, Frame::SessionReady { .. }));
    let used = std::fs::read_to_string(fleet.dir().join("relay-a-audit.used-grants")).unwrap();
    assert_eq!(used.lines().count(), 1, "the relay did not keep the used grant: {used:?}");

    // The relay restarts: the grant is still used.
    fleet.restart_relay(0);
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    match fleet.open_raw(0, once.clone(), "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("a grant used before the relay's restart was admitted again: {other:?}"),
    }

    // A relay that forgot (its file lost) and an agent that restarted: the
    // agent still refuses the grant on its own.
    std::fs::remove_file(fleet.dir().join("relay-a-audit.used-grants")).unwrap();
    fleet.agent.as_mut().unwrap().kill();
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.restart_relay(0);
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    match fleet.open_raw(0, once, "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("the restarted agent admitted a grant it had admitted before: {other:?}"),
    }
    assert!(audited(&fleet.agent_audit(), "access_refused", "grant_reused"), "the agent did not audit the replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_revocations_across_a_restart() {
    let mut fleet = hub_fleet("").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let alice_t = token_of(&login(&fleet, "alice", &alice).await);
    let boss_profile = login(&fleet, "boss", &boss).await;
    let body = json!({"device": DEVICE, "service": "echo", "reason": "INC-7", "client_key": "00ff"});
    let granted: serde_json::Value =
        hub_client(&fleet).post("/api/v1/sessions", Some(&alice_t), &body).await.expect("a grant");
    let id = granted["session"].as_str().expect("session id").to_string();
    let end = run(&["session", "end", &id, "--profile", boss_profile.to_str().unwrap()], "").await;
    assert!(end.0, "{end:?}");

    fleet.restart_hub();
    // What the restarted hub answers a relay's report: the revocation is there.
    let cert = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    let as_relay = tether::api::HubClient::new(
        &fleet.hub.as_ref().unwrap().url(),
        &fleet.pki.path("ca.pem"),
        Some((&cert.0, &cert.1)),
        None,
    )
    .unwrap();
    let answer: tether::api::ReportAnswer = as_relay
        .post("/api/v1/relay/report", None, &tether::api::RelayReport { ready: true, ..Default::default() })
        .await
        .unwrap();
    assert!(
        answer.revoked.iter().any(|r| r.session == id),
        "the restarted hub forgot the revocation of {id}: {answer:?}"
    );
}

/// A relay that carried a session's bytes is killed (`kill -9`) and restarts
/// with its counts at zero: the session's record still holds what it carried,
/// live and after the end, on top of what the twin carried since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_record_keeps_the_bytes_a_killed_relay_carried() {
    const MIB: i64 = 1 << 20;
    let mut fleet = hub_fleet("").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "alice", &alice).await;
    let boss_profile = login(&fleet, "boss", &boss).await;
    let (token, boss_token) = (token_of(&profile), token_of(&boss_profile));
    for i in 0..2 {
        fleet.wait_metric(i, "tether_relay_agents_attached", 1.0).await;
    }
    let (mut child, addr, id) = connect(&profile, "echo", "INC-3303: bytes across a relay's restart").await;
    let hub = hub_client(&fleet);
    let record = async |id: &str| -> serde_json::Value {
        hub.get(&format!("/api/v1/sessions/{id}"), Some(&token)).await.unwrap_or_default()
    };
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let echo = async |conn: &mut tokio::net::TcpStream| {
        let data = random(MIB as usize);
        let (mut rd, mut wr) = conn.split();
        let (_, back) = tokio::join!(async { wr.write_all(&data).await.unwrap() }, async {
            let mut buf = vec![0u8; data.len()];
            within(60, rd.read_exact(&mut buf)).await.unwrap();
            buf
        });
        assert!(back == data, "the echo differs");
    };
    echo(&mut conn).await;
    // Both ways reported before the kill (a relay's last report_ms dies with it).
    eventually("the first MiB in the live record", async || {
        let r = record(&id).await;
        r["state"] == "live" && r["bytes_to_device"].as_i64() >= Some(MIB) && r["bytes_to_client"].as_i64() >= Some(MIB)
    })
    .await;
    let carrier = record(&id).await["relay"].as_str().unwrap().to_string();
    let victim = fleet.relays.iter().position(|r| r.name == carrier).expect("the carrying relay");

    // kill -9: its counts die with it. The connection goes on through the twin.
    fleet.relays[victim].proc.kill();
    echo(&mut conn).await;
    fleet.restart_relay(victim);
    fleet.wait_metric(victim, "tether_relay_agents_attached", 1.0).await;
    let both = async || {
        let r = record(&id).await;
        r["state"] == "live"
            && r["bytes_to_device"].as_i64() >= Some(2 * MIB)
            && r["bytes_to_client"].as_i64() >= Some(2 * MIB)
    };
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !both().await {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    if waited.await.is_err() {
        panic!("the record lost bytes across the restart: {}\n{}", record(&id).await, fleet.logs());
    }
    let kept = |a: &serde_json::Value| {
        a["event"] == "session_bytes_kept" && a["session"] == id.as_str() && a["relay"] == carrier.as_str()
    };
    let audit = hub_audit(&fleet, &boss_token).await;
    let kept_now: Vec<_> = audit.iter().filter(|a| kept(a)).collect();
    assert_eq!(kept_now.len(), 1, "the hub should audit once what it kept: {kept_now:?}");
    assert!(kept_now[0]["bytes_to_device"].as_i64() >= Some(MIB), "{:?}", kept_now[0]);

    // The end (an admin's): the record holds all of it, and not twice.
    let end = run(&["session", "end", &id, "--profile", boss_profile.to_str().unwrap()], "").await;
    assert!(end.0, "{end:?}");
    within(10, child.wait()).await.unwrap();
    drop(conn);
    eventually("the session ended with all its bytes", async || {
        let r = record(&id).await;
        r["state"] == "revoked" && r["bytes_to_device"].as_i64() >= Some(2 * MIB)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let r = record(&id).await;
    let audit = hub_audit(&fleet, &boss_token).await;
    let adds: Vec<_> = audit
        .iter()
        .filter(|a| a["session"] == id.as_str() && (a["event"] == "session_end" || a["event"] == "session_bytes_kept"))
        .map(|a| format!("{} {} {}", a["event"], a["relay"], a["bytes_to_device"]))
        .collect();
    assert!(r["bytes_to_device"].as_i64() < Some(3 * MIB), "counted twice: {r}\nadded: {adds:?}\n{}", fleet.logs());
    assert_eq!(audit.iter().filter(|a| kept(a)).count(), 1, "kept twice");
}

/// Everything that held a session dies (its client, then both relays, which
/// come back without it): no relay will ever report its end. The hub records
/// it ended, reason `lost`, with the bytes the relays had counted, and so
/// does a hub that restarted meanwhile (the `tether dev` stopped and started
/// again). A session still carried stays live throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_no_relay_holds_any_more_is_recorded_lost() {
    const KIB: i64 = 1 << 10;
    let mut fleet = hub_fleet("session_lost_secs = 2").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "alice", &alice).await;
    let boss_token = token_of(&login(&fleet, "boss", &boss).await);
    let token = token_of(&profile);
    for i in 0..2 {
        fleet.wait_metric(i, "tether_relay_agents_attached", 1.0).await;
    }
    let hub = hub_client(&fleet);
    let record = async |id: &str| -> serde_json::Value {
        hub.get(&format!("/api/v1/sessions/{id}"), Some(&token)).await.unwrap_or_default()
    };
    let echo = async |addr: &str| {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let data = random(64 * KIB as usize);
        conn.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        within(30, conn.read_exact(&mut back)).await.unwrap();
        assert!(back == data, "the echo differs");
    };
    let (mut child, addr, id) = connect(&profile, "echo", "INC-4410: a session lost with its relays").await;
    echo(&addr).await;
    eventually("the bytes in the live record", async || {
        let r = record(&id).await;
        r["state"] == "live" && r["bytes_to_device"].as_i64() >= Some(64 * KIB)
    })
    .await;
    child.kill().await.unwrap();
    fleet.relays[0].proc.kill();
    fleet.relays[1].proc.kill();
    let killed_at = tether::util::now_secs() as i64;
    fleet.restart_relay(0);
    fleet.restart_relay(1);
    for i in 0..2 {
        fleet.wait_metric(i, "tether_relay_agents_attached", 1.0).await;
    }
    // Another session, carried all along.
    let (mut child2, addr2, id2) = connect(&profile, "echo", "INC-4411: a session that goes on").await;
    echo(&addr2).await;
    // session_lost_secs after it was last listed, once both relays have reported since.
    let ended = async |id: &str| {
        for _ in 0..300 {
            if record(id).await["state"] == "ended" {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(ended(&id).await, "never recorded lost: {}\n{}", record(&id).await, fleet.logs());
    let r = record(&id).await;
    assert_eq!(r["end_reason"], "lost", "{r}");
    let ended_at = r["ended_at"].as_i64().unwrap();
    assert!(ended_at <= killed_at && ended_at >= r["created_at"].as_i64().unwrap(), "ended when last listed: {r}");
    assert!(r["bytes_to_device"].as_i64() >= Some(64 * KIB), "the bytes the relays carried were lost: {r}");
    let lost = |a: &serde_json::Value, id: &str| a["event"] == "session_lost" && a["session"] == id;
    let audit = hub_audit(&fleet, &boss_token).await;
    assert_eq!(audit.iter().filter(|a| lost(a, &id)).count(), 1, "audited once");
    let metrics = hub.call(hyper::Method::GET, "/metrics", None, None).await.unwrap().1;
    assert!(parse_metric(&String::from_utf8_lossy(&metrics), "tether_hub_sessions_lost_total", &[]) >= 1.0);

    // The other session is carried: three times session_lost_secs later, still live.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        echo(&addr2).await;
    }
    let r2 = record(&id2).await;
    assert_eq!(r2["state"], "live", "a session a relay carries was taken for lost: {r2}\n{}", fleet.logs());

    // Now the whole system stops and starts again, hub and all.
    child2.kill().await.unwrap();
    fleet.relays[0].proc.kill();
    fleet.relays[1].proc.kill();
    fleet.restart_hub();
    fleet.restart_relay(0);
    fleet.restart_relay(1);
    assert!(ended(&id2).await, "never recorded lost: {}\n{}", record(&id2).await, fleet.logs());
    assert_eq!(record(&id2).await["end_reason"], "lost");
    let audit = hub_audit(&fleet, &boss_token).await;
    assert_eq!(audit.iter().filter(|a| lost(a, &id2)).count(), 1, "{}", fleet.logs());
}

/// A relay without a twin that is stopped (SIGTERM) ends its sessions and
/// tells the hub in one last report before it exits: the record has the
/// end, its reason and the bytes at once, not `lost` minutes later. Reports
/// every 5 s here, so that no regular one falls between the end and the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_alone_reports_the_ends_of_its_sessions_before_it_exits() {
    const KIB: i64 = 1 << 10;
    let opts = Opts { relays: 1, hub: true, relay_hub: "report_ms = 5000", ..Opts::default() };
    let mut fleet = Fleet::start(opts).await;
    crate::hub::hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let profile = login(&fleet, "alice", &alice).await;
    let token = token_of(&profile);
    let (_child, addr, id) = connect(&profile, "echo", "INC-4412: the relay is stopped").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let data = random(64 * KIB as usize);
    conn.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    within(30, conn.read_exact(&mut back)).await.unwrap();
    assert!(back == data, "the echo differs");

    let status = fleet.relays[0].proc.term_and_wait(10).await;
    assert!(status.success(), "relay exited with {status}");
    // The relay is gone: what the hub has now came before it exited.
    let r: serde_json::Value = hub_client(&fleet).get(&format!("/api/v1/sessions/{id}"), Some(&token)).await.unwrap();
    assert_eq!((&r["state"], &r["end_reason"]), (&json!("ended"), &json!("relay_shutdown")), "{r}\n{}", fleet.logs());
    assert!(r["bytes_to_device"].as_i64() >= Some(64 * KIB), "the last bytes were not reported: {r}");
    assert!(r["bytes_to_client"].as_i64() >= Some(64 * KIB), "the last bytes were not reported: {r}");
}

/// `tether hub backup FILE` while the hub runs; the copy restored in place of
/// the database gives a hub with the same session records (not one made
/// after the backup) and an audit chain that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_from_its_backup_has_the_same_sessions_and_a_whole_audit_chain() {
    let mut fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "boss", &boss).await;
    let token = token_of(&profile);
    let ids = [grant(&fleet, &token, "INC-1").await, grant(&fleet, &token, "INC-2").await];
    let before = session_ids(&fleet, &token).await;
    assert!(ids.iter().all(|i| before.contains(i)), "{before:?}");

    let backup = fleet.dir().join("hub-backup.db");
    let hub_cfg = fleet.hub.as_ref().unwrap().config.clone();
    let out = run(&["hub", "--config", hub_cfg.to_str().unwrap(), "backup", backup.to_str().unwrap()], "").await;
    assert!(out.0, "backup failed: {}", out.2);
    assert!(out.1.contains("2 session records") && out.1.contains("records verify"), "{}", out.1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    let again = run(&["hub", "--config", hub_cfg.to_str().unwrap(), "backup", backup.to_str().unwrap()], "").await;
    assert!(!again.0 && again.2.contains("exists"), "{again:?}");
    let later = grant(&fleet, &token, "INC-3").await;

    // Restore: the hub stopped, the copy in place of its database.
    fleet.restart_hub_after(|dir| {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("hub.db{suffix}")));
        }
        std::fs::copy(&backup, dir.join("hub.db")).unwrap();
    });
    // The login token from before the backup still admits (a second login in
    // this TOTP step would be refused as a reused code, as it should).
    let after = session_ids(&fleet, &token).await;
    assert_eq!(after, before, "the restored hub lists other sessions");
    assert!(!after.contains(&later), "a session granted after the backup came back");
    audit_verifies(&fleet, &profile).await;
}

/// A grant for DEVICE's echo service; returns its session id.
pub async fn grant(fleet: &Fleet, token: &str, reason: &str) -> String {
    // The hub routes only to a device a relay has reported (every 250 ms):
    // right after the fleet starts it may not have heard yet.
    eventually("the hub lists the device online", async || {
        let d: Vec<serde_json::Value> = hub_client(fleet).get("/api/v1/devices", Some(token)).await.unwrap_or_default();
        d.iter().any(|x| x["id"] == DEVICE && x["status"] == "online")
    })
    .await;
    let body = json!({"device": DEVICE, "service": "echo", "reason": reason, "client_key": "00ff"});
    let g: serde_json::Value = hub_client(fleet).post("/api/v1/sessions", Some(token), &body).await.unwrap();
    g["session"].as_str().unwrap().to_string()
}

/// The ids of the sessions the hub lists, sorted.
pub async fn session_ids(fleet: &Fleet, token: &str) -> Vec<String> {
    let s: Vec<serde_json::Value> = hub_client(fleet).get("/api/v1/sessions", Some(token)).await.unwrap();
    let mut ids: Vec<String> = s.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// The hub's audit chain, exported with `tether audit export`, passes `tether audit verify`.
pub async fn audit_verifies(fleet: &Fleet, admin_profile: &std::path::Path) {
    let export = fleet.dir().join("hub-audit.jsonl");
    let (p, e) = (admin_profile.to_str().unwrap(), export.to_str().unwrap());
    let ex = run(&["audit", "export", "--since", "0", "--profile", p, "--out", e], "").await;
    assert!(ex.0, "{ex:?}");
    let verified = run(&["audit", "verify", e], "").await;
    assert!(verified.0, "the restored hub's audit chain does not verify: {verified:?}");
}

/// A part whose log reader went away (the pipe to a supervisor that died, a
/// log collector restarted) goes on, and stops by itself on SIGTERM: a log
/// line it cannot write is dropped. (tracing-subscriber reported the failed
/// write with `eprintln!`, which panicked on the same closed pipe: the task
/// that logged died, the signal task with it, and the relay and the hub
/// that `tether dev` left behind this way ignored every SIGTERM.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_log_reader_is_gone_goes_on_and_stops_on_sigterm() {
    let mut fleet = Fleet::start(Opts { relays: 1, ..Opts::default() }).await;
    let relay = fleet.restart_relay_logging_to(0, std::process::Stdio::piped());
    drop(relay.stderr.take());
    fleet.agent.as_mut().unwrap().kill();
    let mut agent = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&fleet.agent_cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env("RUST_LOG", "debug")
        .spawn()
        .unwrap();
    drop(agent.stderr.take());
    fleet.agent = Some(Proc { child: agent });
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;

    // Both log as they attach, pair and splice; the connection works.
    fleet.echo_through_new_session(b"still logging").await;

    let agent = fleet.agent.as_mut().unwrap().term_and_wait(10).await;
    assert!(agent.success(), "the agent exited with {agent}");
    let relay = fleet.relays[0].proc.term_and_wait(10).await;
    assert!(relay.success(), "the relay exited with {relay}");
}

/// A part started with `TETHER_STOP_WITH_PARENT` (as `tether dev` starts
/// them, each in its own process group) stops by itself, in order, when
/// that parent is killed with SIGKILL: nothing is left holding the ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_parent_was_killed_stops_by_itself() {
    let mut fleet = Fleet::start(Opts { relays: 1, agent: false, ..Opts::default() }).await;
    fleet.restart_relay(0); // pins its ports in its config
    fleet.relays[0].proc.kill();
    let cfg = fleet.dir().join(format!("{}.toml", fleet.relays[0].name));
    let log = fleet.dir().join("orphan.log");
    // sh is the parent: it starts the relay, says its pid, and waits.
    let mut parent = std::process::Command::new("sh")
        .args(["-c", r#"TETHER_STOP_WITH_PARENT=$$ "$0" relay --config "$1" 2>"$2" >/dev/null & echo $!; wait"#, BIN])
        .arg(&cfg)
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(parent.stdout.take().unwrap()), &mut line).unwrap();
    let relay: u32 = line.trim().parse().unwrap();
    // Should it outlive the test (the claim failed), it goes by its pid.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
    let _orphan = KillOnDrop(relay);
    eventually("the relay serves", async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("relay serving")
    })
    .await;

    parent.kill().unwrap();
    parent.wait().unwrap();
    // Gone, or a zombie that init has yet to reap.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{relay}/stat"))
            .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    };
    within(10, async {
        while !gone() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("the process that started this one is gone; shutting down"), "{said}");
}
