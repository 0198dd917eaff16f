//! The hub with real processes: accounts created with the CLI, login with a
//! TOTP code computed here, `tether connect` through the hub to the device,
//! records and audit at hub, relays and agent, revocation, and every refusal.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tether::api::HubClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

pub const PASSWORD: &str = "violet staple quarantine 42 orbit";

pub async fn hub_fleet(extra: &'static str) -> Fleet {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, hub_extra: extra, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    fleet
}

/// `tether hub --config … ARGS` with `stdin`; returns stdout, panics on failure.
pub async fn hub_cli(fleet: &Fleet, args: &[&str], stdin: &str) -> String {
    let hub = fleet.hub.as_ref().unwrap();
    let out = run(&[&["hub", "--config", hub.config.to_str().unwrap()], args].concat(), stdin).await;
    assert!(out.0, "tether hub {args:?} failed: {}", out.2);
    out.1
}

/// Runs `tether ARGS`; returns (success, stdout, stderr).
pub async fn run(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    let out = within(60, child.wait_with_output()).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Adds an account with the CLI; returns its TOTP secret from the enrolment URI.
pub async fn add_user(fleet: &Fleet, name: &str, role: &str, sites: &[&str]) -> String {
    let mut args = vec!["user", "add", name, "--role", role];
    for s in sites {
        args.extend(["--site", s]);
    }
    let out = hub_cli(fleet, &args, &format!("{PASSWORD}\n")).await;
    assert!(out.contains('█') || out.contains('▀') || out.contains('▄'), "no QR code in {out}");
    out.split("secret=").nth(1).and_then(|r| r.split('&').next()).expect("enrolment URI").to_string()
}

/// The code for the step after the current one: valid (one step of skew), and
/// never the one a previous login in this step used.
pub fn code(secret: &str, offset: u64) -> String {
    let step = tether::util::now_secs() / 30;
    tether::totp::code_at(secret, step + offset).unwrap()
}

/// `tether login` into a new profile; returns the profile's path.
pub async fn login(fleet: &Fleet, user: &str, secret: &str) -> PathBuf {
    let hub = fleet.hub.as_ref().unwrap();
    let profile = fleet.dir().join(format!("{user}-profile.toml"));
    let ca = fleet.pki.path("ca.pem");
    let args = [
        "login",
        "--profile",
        profile.to_str().unwrap(),
        "--hub",
        &hub.url(),
        "--user",
        user,
        "--ca",
        ca.to_str().unwrap(),
    ];
    // Host name check: the test hub's certificate names localhost / 127.0.0.1.
    let out = run(&args, &format!("{PASSWORD}\n{}\n", code(secret, 0))).await;
    assert!(out.0, "login failed: {} {}\n{}", out.1, out.2, fleet.logs());
    profile
}

pub fn hub_client(fleet: &Fleet) -> HubClient {
    HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), None, None).unwrap()
}

/// The hub's `/metrics` text.
pub async fn hub_metrics(fleet: &Fleet) -> String {
    let body = hub_client(fleet).call(Method::GET, "/metrics", None, None).await.unwrap().1;
    String::from_utf8_lossy(&body).into_owned()
}

/// Sum of the hub's samples of metric `name` whose labels contain all of `labels`.
pub async fn hub_metric(fleet: &Fleet, name: &str, labels: &[&str]) -> f64 {
    parse_metric(&hub_metrics(fleet).await, name, labels)
}

pub fn token_of(profile: &Path) -> String {
    let p: toml::Table = toml::from_str(&std::fs::read_to_string(profile).unwrap()).unwrap();
    p["hub"]["token"].as_str().unwrap().to_string()
}

/// The hub's audit records (admin export).
pub async fn hub_audit(fleet: &Fleet, admin_token: &str) -> Vec<Value> {
    let (status, body) =
        hub_client(fleet).call(Method::GET, "/api/v1/audit?since=0", Some(admin_token), None).await.unwrap();
    assert!(status.is_success(), "{status}");
    String::from_utf8_lossy(&body).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The body of a grant request for the echo service of DEVICE.
pub fn grant_body(reason: &str) -> Option<bytes::Bytes> {
    let body = serde_json::json!({"device": DEVICE, "service": "echo", "reason": reason, "client_key": "00ff"});
    Some(serde_json::to_vec(&body).unwrap().into())
}

/// `tether connect` as a process; returns it, the local address and the session id.
pub async fn connect(
    profile: impl AsRef<Path>,
    service: &str,
    reason: &str,
) -> (tokio::process::Child, String, String) {
    let profile = profile.as_ref();
    let mut child = tokio::process::Command::new(BIN)
        .args(["connect", "--profile", profile.to_str().unwrap(), DEVICE, service, "--listen", "127.0.0.1:0"])
        .args(["--reason", reason])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within(30, lines.next_line()).await.unwrap().expect("connect printed nothing");
    // "session ID ready: ADDR -> device/service via relay"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(2), Some(&"ready:"), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, words[3].to_string(), words[1].to_string())
}

/// What an exited `connect` (of [`connect`]) wrote to its stderr.
pub async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut err = String::new();
    let mut pipe = child.stderr.take().expect("stderr piped, read once");
    within(10, pipe.read_to_string(&mut err)).await.unwrap();
    err
}

/// Writes `bytes` to a `connect` listening on `addr` and reads them back
/// from the device's echo service.
pub async fn echo_once(addr: &str, bytes: &[u8]) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    within(10, c.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, bytes);
}

#[tokio::test]
async fn login_connect_record_audit_and_revoke() {
    let fleet = hub_fleet("").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "alice", &alice).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777, 0o600, "token file must be 0600");
    let admin_profile = login(&fleet, "boss", &boss).await;
    let admin_token = token_of(&admin_profile);

    // Both relays report the device; the listing says so.
    eventually("device online on both relays", async || {
        let out = run(&["devices", "--profile", profile.to_str().unwrap(), "--json"], "").await;
        let v: Value = serde_json::from_str(&out.1).unwrap_or_default();
        v[0]["id"] == DEVICE && v[0]["relays"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let table = run(&["devices", "--profile", profile.to_str().unwrap()], "").await.1;
    let online = "online on relay-a (tcp), relay-b (tcp)";
    assert!(table.contains(online) && table.contains(env!("CARGO_PKG_VERSION")), "{table}");

    // Through the hub to the device: bytes intact.
    let (mut child, addr, id) = connect(&profile, "echo", "ticket CHG-1881: injector pressure fault").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let data = random(1 << 20);
    let (mut rd, mut wr) = conn.split();
    let (_, echoed) = tokio::join!(async { wr.write_all(&data).await.unwrap() }, async {
        let mut buf = vec![0u8; data.len()];
        rd.read_exact(&mut buf).await.unwrap();
        buf
    });
    assert!(echoed == data, "bytes differ");

    let record = |token: String, id: String| {
        let c = hub_client(&fleet);
        async move {
            c.request::<serde_json::Value, serde_json::Value>(
                Method::GET,
                &format!("/api/v1/sessions/{id}"),
                Some(&token),
                None,
            )
            .await
            .unwrap()
        }
    };
    let token = token_of(&profile);
    eventually("session live at the hub", async || record(token.clone(), id.clone()).await["state"] == "live").await;
    // While live, the record counts the bytes the relays reported so far.
    eventually("a live session's bytes so far", async || {
        let r = record(token.clone(), id.clone()).await;
        r["state"] == "live" && r["bytes_to_device"].as_i64() >= Some(1 << 20)
    })
    .await;
    let r = record(token.clone(), id.clone()).await;
    assert_eq!(
        (r["specialist"].as_str(), r["ticket"].as_str(), r["source"].as_str()),
        (Some("alice"), Some("CHG-1881"), Some("127.0.0.1"))
    );
    // `tether login` writes no transport: auto, and UDP gets through here.
    assert_eq!(r["transport"], "quic", "{r}");

    // An engineer cannot end sessions; an admin can, and both twins close it within a second.
    let no = run(&["session", "end", &id, "--profile", profile.to_str().unwrap()], "").await;
    assert!(!no.0 && no.2.contains("admin"), "{no:?}");
    let t0 = Instant::now();
    let end = run(&["session", "end", &id, "--profile", admin_profile.to_str().unwrap()], "").await;
    assert!(end.0, "{end:?}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    let pause = t0.elapsed();
    println!("revocation closed the tunnel {pause:?} after `tether session end`");
    assert!(closed.is_ok() && pause < Duration::from_secs(1), "revocation took {pause:?}");
    // Ended by someone else: `connect` says so in its exit status.
    let status = within(10, child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    let said = stderr_of(&mut child).await;
    assert!(said.contains("boss ended the session at the hub (revoked)"), "connect names who: {said}");

    // The record is complete; the audit at hub, relay and agent agree.
    eventually("bytes reported", async || {
        record(token.clone(), id.clone()).await["bytes_to_device"].as_i64() > Some(1 << 20)
    })
    .await;
    let r = record(token.clone(), id.clone()).await;
    assert_eq!(
        (r["state"].as_str(), r["end_reason"].as_str(), r["ended_by"].as_str()),
        (Some("revoked"), Some("revoked"), Some("boss"))
    );
    assert!(r["bytes_to_client"].as_i64() > Some(1 << 20), "{r}");
    let hub = hub_audit(&fleet, &admin_token).await;
    for event in ["login", "session_granted", "session_revoked", "session_end"] {
        assert!(
            hub.iter().any(|x| x["event"] == event && (x["session"] == id.as_str() || event == "login")),
            "hub audit lacks {event}: {:?}",
            hub.iter().map(|x| x["event"].to_string()).collect::<Vec<_>>()
        );
    }
    let relay_has = |event: &str| {
        (0..2).any(|i| fleet.relay_audit(i).iter().any(|x| x["event"] == event && x["session"] == id.as_str()))
    };
    assert!(relay_has("session_start") && relay_has("session_end"));
    assert!(
        fleet
            .agent_audit()
            .iter()
            .any(|x| x["event"] == "session_start" && x["session"] == id.as_str() && x["specialist"] == "alice")
    );
    // No payload anywhere in the logs.
    let needle = hex::encode(&data[..16]);
    for text in [serde_json::to_string(&hub).unwrap(), std::fs::read_to_string(&fleet.relays[0].audit).unwrap()] {
        assert!(!text.contains(&needle));
    }
    // Chain heads of relays and agent are anchored at the hub.
    eventually("anchors", async || {
        let v = hub_client(&fleet)
            .request::<serde_json::Value, serde_json::Value>(
                Method::GET,
                "/api/v1/audit/anchors",
                Some(&admin_token),
                None,
            )
            .await
            .unwrap();
        let sources: Vec<&str> = v.as_array().unwrap().iter().filter_map(|a| a["source"].as_str()).collect();
        ["relay:relay-a", "relay:relay-b", "agent:dev-1"].iter().all(|s| sources.contains(s))
    })
    .await;

    // The export verifies; the same file with a record altered, removed or swapped does not.
    let export = fleet.dir().join("export.jsonl");
    let out = run(
        &[
            "audit",
            "export",
            "--since",
            "1970-01-01T00:00:00Z",
            "--profile",
            admin_profile.to_str().unwrap(),
            "--out",
            export.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert!(out.0, "{out:?}");
    assert!(run(&["audit", "verify", export.to_str().unwrap()], "").await.0);
    let lines: Vec<String> = std::fs::read_to_string(&export).unwrap().lines().map(String::from).collect();
    let tampered = fleet.dir().join("tampered.jsonl");
    let mut altered = lines.clone();
    altered[2] = altered[2].replacen("\"event\":\"", "\"event\":\"x", 1);
    let mut removed = lines.clone();
    removed.remove(3);
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    for (what, ls, want) in [
        ("altered", altered, "seq 3 was altered"),
        ("removed", removed, "seq 4 missing"),
        ("swapped", swapped, "seq 5"),
    ] {
        std::fs::write(&tampered, ls.join("\n") + "\n").unwrap();
        let out = run(&["audit", "verify", tampered.to_str().unwrap()], "").await;
        assert!(!out.0 && out.2.contains(want), "{what}: {}", out.2);
    }
}

/// Stopping `tether connect` (Ctrl-C) ends the session at the relays and the
/// device at once, over QUIC and over TCP: the client says goodbye and waits
/// for the relay's answer (and sends its QUIC close) before it exits. Without
/// that, a twin relay keeps a session whose control leg vanished 10 s for a
/// client that may be moving (15 s over QUIC, whose silence is noticed later),
/// and the person at the device sees it live all that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_connect_ends_the_session_at_the_device_at_once() {
    use tether::agent::operator::{Request, request};
    let fleet = hub_fleet("").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let profile = login(&fleet, "alice", &alice).await;
    let live =
        async || request(&fleet.socket(), &Request::Sessions).await.unwrap()["sessions"].as_array().unwrap().len();
    for transport in ["quic", "tcp"] {
        let mut child = tokio::process::Command::new(BIN)
            .args(["connect", "--profile", profile.to_str().unwrap(), DEVICE, "echo", "--listen", "127.0.0.1:0"])
            .args(["--reason", "goodbye test", "--transport", transport])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(30, lines.next_line()).await.unwrap().unwrap();
        assert!(line.contains(&format!("over {transport}")), "{line}");
        let addr = line.split_whitespace().nth(3).unwrap().to_string();
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        within(10, c.read_exact(&mut b)).await.unwrap();
        assert_eq!(live().await, 1, "{transport}: the session is live at the device");

        let pid = child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        within(10, child.wait()).await.unwrap();
        let rest = within(5, lines.next_line()).await.unwrap().unwrap_or_default();
        assert!(rest.contains("ended: the specialist closed the session"), "{transport}: {rest}");
        // A relay that got no goodbye would keep it 10 s; 3 s is far from both.
        let mut gone = false;
        for _ in 0..30 {
            if live().await == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{transport}: the device still shows the session 3 s after the specialist stopped");
    }
}
