//! Audit that holds up against someone who can write the log file: signed
//! records, truncation shown against the hub's anchors, and heads the hub
//! refuses to anchor (forged, rolled back).
use serde_json::{Value, json};
use tether::api::{AgentHead, Anchor, Head, RelayReport};

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_cli, hub_client, hub_fleet, login, run, token_of};
use crate::udp_gate::twins_behind_gates;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(String::from).collect()
}

/// Re-hashes `records` from the first on, as someone without the key would
/// after an edit: every hash is right again, the signatures stay as they were.
fn rehash(records: &mut [Value]) {
    let mut prev = tether::audit::GENESIS.to_string();
    for r in records.iter_mut() {
        let m = r.as_object_mut().unwrap();
        let sig = m.remove("sig");
        m.insert("prev".into(), prev.clone().into());
        let fields: Value =
            m.iter().filter(|(k, _)| k.as_str() != "hash").map(|(k, v)| (k.clone(), v.clone())).collect();
        let (line, hash) = tether::audit::link(
            fields["seq"].as_u64().unwrap(),
            &prev,
            fields["ts"].as_str().unwrap(),
            fields["event"].as_str().unwrap(),
            fields.clone(),
        );
        let mut again: Value = serde_json::from_str(&line).unwrap();
        if let Some(s) = sig {
            again["sig"] = s;
        }
        *r = again;
        prev = hash;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_rehashed_log_and_a_truncated_log_are_named() {
    let fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "boss", &boss).await;
    let token = token_of(&profile);
    // Some records: a session through relay-a.
    let s = fleet.session("echo").await;
    drop(s.connect().await.unwrap());
    s.close();
    let log = fleet.relays[0].audit.clone();
    let cert = fleet.pki.path("relay-a.pem");
    // The hub anchors relay-a's chain: its first head at once, and the last
    // head once the chain stops moving within about 20 s (anchors at most
    // every 10 s, heads re-sent every 10 s).
    let last_seq = || {
        let last: Value = serde_json::from_str(lines(&log).last().unwrap()).unwrap();
        last["seq"].as_u64().unwrap()
    };
    let mut anchored = 0;
    for _ in 0..600 {
        let a: Vec<Anchor> = hub_client(&fleet).get("/api/v1/audit/anchors/relay:relay-a", Some(&token)).await.unwrap();
        anchored = a.last().map_or(0, |a| a.seq);
        if anchored >= 2 && anchored == last_seq() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(anchored >= 2 && anchored == last_seq(), "the hub did not anchor relay-a's last head: {anchored}");
    let verify = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["audit", "verify", file.to_str().unwrap(), "--cert", cert.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let args = verify(&log, &["--profile", profile.to_str().unwrap()]);
    let ok = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(ok.0, "the untouched log does not verify: {ok:?}");
    assert!(ok.1.contains("every record signed") && ok.1.contains("matches the hub's"), "{}", ok.1);

    // Edit the second record and re-hash everything after it.
    let mut records: Vec<Value> = lines(&log).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    records[1]["peer"] = json!("10.9.9.9:1");
    rehash(&mut records);
    let forged = fleet.dir().join("forged.jsonl");
    std::fs::write(&forged, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let chain_only = run(&["audit", "verify", forged.to_str().unwrap()], "").await;
    assert!(chain_only.0, "re-hashing should fool the hash chain alone: {chain_only:?}");
    let args = verify(&forged, &[]);
    let caught = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(!caught.0, "a forged, re-hashed log verified with --cert");
    assert!(caught.2.contains("record seq 2: the signature does not match"), "{}", caught.2);
    // Without its signatures, it is named as unsigned.
    for r in records.iter_mut() {
        r.as_object_mut().unwrap().remove("sig");
    }
    std::fs::write(&forged, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let unsigned = run(&verify(&forged, &[]).iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(unsigned.2.contains("record seq 1 is not signed"), "{}", unsigned.2);

    // Cut the log short of what the hub anchored: intact by itself, caught by the anchors.
    let cut = fleet.dir().join("cut.jsonl");
    let keep: String = lines(&log).iter().take(anchored as usize - 1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cut, keep).unwrap();
    let alone = run(&verify(&cut, &[]).iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(alone.0, "a truncated log is intact by itself: {alone:?}");
    let args = verify(&cut, &["--profile", profile.to_str().unwrap()]);
    let truncated = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(!truncated.0 && truncated.2.contains("truncated"), "{truncated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_rolled_back_anchors_are_refused() {
    let fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&login(&fleet, "boss", &boss).await);
    // The agent writes records (a session); its real, signed heads reach the
    // hub through the relays.
    let s = fleet.session("echo").await;
    drop(s.connect().await.unwrap());
    let mut agent_anchor = None;
    for _ in 0..600 {
        let a: Vec<Anchor> =
            hub_client(&fleet).get(&format!("/api/v1/audit/anchors/agent:{DEVICE}"), Some(&token)).await.unwrap();
        if let Some(last) = a.last().filter(|a| a.seq >= 2) {
            agent_anchor = Some(last.clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some(agent_anchor) = agent_anchor else {
        let m = hub_client(&fleet).text("/metrics", None).await.unwrap();
        panic!(
            "the agent's signed head was never anchored: {:?}\n{}",
            m.lines().filter(|l| l.contains("anchor")).collect::<Vec<_>>(),
            fleet.logs()
        );
    };
    let as_relay = |name: &str| {
        let (c, k) = (fleet.pki.path(&format!("{name}.pem")), fleet.pki.path(&format!("{name}.key")));
        tether::api::HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), Some((&c, &k)), None)
            .unwrap()
    };
    let device_cert =
        hex::encode(tether::tls::load_certs(&fleet.pki.path(&format!("{DEVICE}.pem"))).unwrap()[0].as_ref());
    let relay_key = tether::audit::Signer::load(&fleet.pki.path("relay-a.key")).unwrap();
    let device_key = tether::audit::Signer::load(&fleet.pki.path(&format!("{DEVICE}.key"))).unwrap();
    let report = |heads: Vec<AgentHead>, own: Option<Head>| RelayReport {
        ready: true,
        agent_heads: heads,
        audit_head: own,
        ..Default::default()
    };
    let hash = "ab".repeat(32);
    let cases: Vec<(&str, RelayReport)> = vec![
        // A relay forges a device's head: signed with its own key, not the device's.
        (
            "bad_signature",
            report(
                vec![AgentHead {
                    device: DEVICE.into(),
                    head: Head { seq: agent_anchor.seq + 5, hash: hash.clone(), sig: relay_key.sign(&hash) },
                    cert: device_cert.clone(),
                    ..Default::default()
                }],
                None,
            ),
        ),
        // A head without any signature.
        (
            "unsigned",
            report(
                vec![AgentHead {
                    device: DEVICE.into(),
                    head: Head { seq: agent_anchor.seq + 6, hash: hash.clone(), sig: String::new() },
                    cert: device_cert.clone(),
                    ..Default::default()
                }],
                None,
            ),
        ),
        // A genuine device signature, rolled back below the anchor by a relay
        // that delivered the anchored head first (one that never delivered a
        // higher head lags behind its twin: `a_thawed_relays_older_head_is_stale_not_a_rollback`).
        (
            "rollback",
            report(
                vec![
                    AgentHead {
                        device: DEVICE.into(),
                        head: Head {
                            seq: agent_anchor.seq,
                            hash: agent_anchor.hash.clone(),
                            sig: device_key.sign(&agent_anchor.hash),
                        },
                        cert: device_cert.clone(),
                        ..Default::default()
                    },
                    AgentHead {
                        device: DEVICE.into(),
                        head: Head { seq: agent_anchor.seq - 1, hash: hash.clone(), sig: device_key.sign(&hash) },
                        cert: device_cert.clone(),
                        ..Default::default()
                    },
                ],
                None,
            ),
        ),
        // The same sequence with another hash.
        (
            "fork",
            report(
                vec![AgentHead {
                    device: DEVICE.into(),
                    head: Head { seq: agent_anchor.seq, hash: hash.clone(), sig: device_key.sign(&hash) },
                    cert: device_cert.clone(),
                    ..Default::default()
                }],
                None,
            ),
        ),
        // Another device's head under this device's name, with its own valid cert.
        (
            "wrong_device",
            report(
                vec![AgentHead {
                    device: "someone-else".into(),
                    head: Head { seq: 1, hash: hash.clone(), sig: device_key.sign(&hash) },
                    cert: device_cert.clone(),
                    ..Default::default()
                }],
                None,
            ),
        ),
    ];
    for (reason, r) in cases {
        let refusals = async || {
            let m = as_relay("relay-a").text("/metrics", None).await.unwrap();
            parse_metric(&m, "tether_hub_anchor_refusals_total", &[&format!("reason=\"{reason}\"")])
        };
        let before = refusals().await;
        let _: tether::api::ReportAnswer = as_relay("relay-a").post("/api/v1/relay/report", None, &r).await.unwrap();
        assert!(refusals().await > before, "{reason} not refused");
    }
    // None of them moved the anchor.
    let after: Vec<Anchor> =
        hub_client(&fleet).get(&format!("/api/v1/audit/anchors/agent:{DEVICE}"), Some(&token)).await.unwrap();
    assert!(after.iter().all(|a| a.hash != hash), "a refused head was anchored: {after:?}");
    let audit = hub_audit(&fleet, &token).await;
    for reason in ["bad_signature", "rollback", "fork"] {
        assert!(audit.iter().any(|r| r["event"] == "anchor_refused" && r["reason"] == reason), "{reason} not audited");
    }
}

/// A relay frozen while the agent's chain moves on through its twin still
/// holds the older head when it thaws, and repeats it in its next full
/// report: a relay lagging, not the device going back. The hub counts it as
/// stale, does not anchor it, and refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_relays_older_head_is_stale_not_a_rollback() {
    thawed_relay(false).await;
}

/// The same with the hub restarted while the relay is frozen: what each
/// relay delivered is kept in the database, so the restarted hub still knows
/// that relay-a never delivered the newer head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_relays_older_head_is_stale_not_a_rollback_after_a_hub_restart() {
    thawed_relay(true).await;
}

/// The sequence of the agent's latest anchored head.
pub(crate) async fn anchored_seq(fleet: &Fleet, token: &str) -> u64 {
    let a: Vec<Anchor> =
        hub_client(fleet).get(&format!("/api/v1/audit/anchors/agent:{DEVICE}"), Some(token)).await.unwrap();
    a.last().map_or(0, |a| a.seq)
}

async fn thawed_relay(restart_hub: bool) {
    // The agent's QUIC goes through gates, so that relay-a, once thawed,
    // hears nothing newer from the agent.
    let (mut fleet, gates) = twins_behind_gates(Opts { hub: true, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&login(&fleet, "boss", &boss).await);
    let head = || fleet.agent_audit().last().map_or(0, |r| r["seq"].as_u64().unwrap());
    let anchored = async || anchored_seq(&fleet, &token).await;
    // Anchors at most every 10 s per chain; heads re-sent at least every 10 s.
    let until_anchored = async |what: &str| {
        for _ in 0..600 {
            if head() > 0 && anchored().await == head() {
                return head();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{what}: the agent's head {} was not anchored ({})\n{}", head(), anchored().await, fleet.logs());
    };
    // Records in the agent's chain (a session), delivered by both relays.
    let s = fleet.session("echo").await;
    drop(within(30, s.connect()).await.unwrap());
    let first = until_anchored("before the freeze").await;
    // relay-a is cut off from the agent and frozen; the chain moves on
    // through relay-b.
    gates[0].block();
    let relay_a = fleet.relays[0].proc.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &relay_a]).status().unwrap().success());
    let mut only_b = fleet.profile();
    only_b.relays.retain(|r| r.name == "relay-b");
    let s = within(30, tether::client::ClientSession::open(&only_b, DEVICE, "echo")).await.unwrap();
    drop(within(30, s.connect()).await.unwrap());
    let second = until_anchored("relay-a frozen").await;
    assert!(second > first, "the chain did not move: {first} -> {second}");
    if restart_hub {
        fleet.restart_hub();
    }
    let anchored = async || anchored_seq(&fleet, &token).await;
    assert!(std::process::Command::new("kill").args(["-CONT", &relay_a]).status().unwrap().success());
    // Its next full report (at most 10 s) carries the head it held.
    let metric = async |name: &str, label: &str| {
        let m = hub_client(&fleet).text("/metrics", None).await.unwrap();
        parse_metric(&m, name, &[label])
    };
    let (stale, rollback) = (
        async || metric("tether_hub_audit_heads_stale_total", "relay=\"relay-a\"").await,
        async || metric("tether_hub_anchor_refusals_total", "reason=\"rollback\"").await,
    );
    for _ in 0..300 {
        if stale().await + rollback().await >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rollback().await, 0.0, "a lagging relay's head was called a rollback\n{}", fleet.logs());
    assert!(stale().await >= 1.0, "relay-a never delivered its older head\n{}", fleet.logs());
    assert_eq!(anchored().await, second, "the older head moved the anchor");
    let audit = hub_audit(&fleet, &token).await;
    let refused: Vec<&Value> = audit.iter().filter(|r| r["event"] == "anchor_refused").collect();
    assert!(refused.is_empty(), "a lagging relay's head was refused: {refused:?}");
}

/// A relay whose log rotates (`audit_rotate_bytes`) keeps one chain across
/// its files: `tether audit verify NAME.* NAME --cert` checks it whole, and
/// the newest file alone names the records it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_relay_log_verifies_across_its_files() {
    let fleet = Fleet::start(Opts { relay_top: "audit_rotate_bytes = 2048\n", ..Opts::default() }).await;
    for _ in 0..4 {
        let s = fleet.session("echo").await;
        drop(within(30, s.connect()).await.unwrap());
        s.close();
    }
    let log = fleet.relays[0].audit.clone();
    // The sessions' ends are written after `close` returns: list the files
    // once the log is complete, or a rotation after the listing leaves a gap.
    eventually("the relay audited the four sessions' ends", async || {
        let mut all = tether::audit::rotated(&log);
        all.push(log.clone());
        let text: String = all.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
        text.lines().filter(|l| l.contains("\"session_end\"")).count() >= 4
    })
    .await;
    let mut files = tether::audit::rotated(&log);
    assert!(files.len() >= 2, "the relay's log did not rotate: {files:?}");
    files.push(log.clone());
    let cert = fleet.pki.path("relay-a.pem");
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--cert".into(), cert.display().to_string()]);
    let whole = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), "").await;
    assert!(whole.0, "{whole:?}");
    assert!(
        whole.1.contains(&format!("({} files)", files.len())) && whole.1.contains("every record signed"),
        "{}",
        whole.1
    );
    let alone = run(&["audit", "verify", log.to_str().unwrap()], "").await;
    assert!(!alone.0 && alone.2.contains("missing before"), "{alone:?}");
}
