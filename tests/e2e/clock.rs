//! A device whose clock runs off. The agent's clock is really moved (with
//! libfaketime, for the agent's process alone): the relays and the agent
//! measure the offset from heartbeats, the fleet view shows it, the hub
//! counts it, both ends audit it, and a grant refused as expired by a
//! device that runs ahead says why to the specialist.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tether::agent::operator::{Request, request};

use crate::console::{console_cookie, raw};
use crate::harness::*;
use crate::hub::{add_user, connect, echo_once, hub_metric, run};
use crate::jobs::jobs_fleet_with;

/// Where Debian's libfaketime is (`apt-get install libfaketime`).
fn faketime() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The agent with its wall clock moved by `offset` ("+300s", "-300s"); its
/// monotonic clock, which timers use, is left alone.
fn start_agent_at(dir: &Path, cfg: &Path, lib: &Path, offset: &str) -> Proc {
    let child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log_file(dir, &format!("agent{offset}")))
        .env("RUST_LOG", "info")
        .env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .spawn()
        .unwrap();
    Proc { child }
}

async fn device(profile: &str) -> Value {
    let (ok, out, err) = run(&["devices", "--profile", profile, "--json"], "").await;
    assert!(ok, "{err}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap().remove(0)
}

/// Waits until the hub shows the device online on both relays with a clock
/// offset within 5 s of `want_ms`.
async fn offset_shown(profile: &str, want_ms: i64) -> Value {
    let mut d = Value::Null;
    for _ in 0..200 {
        d = device(profile).await;
        let online = d["status"] == "online" && d["relays"].as_array().is_some_and(|r| r.len() == 2);
        if online && d["clock_offset_ms"].as_i64().is_some_and(|o| (o - want_ms).abs() < 5_000) {
            return d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the hub never showed an offset near {want_ms} ms: {d}");
}

fn events(records: &[Value], event: &str) -> Vec<Value> {
    records.iter().filter(|r| r["event"] == event).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_clock_that_runs_off_is_shown_counted_audited_and_named_when_grants_look_expired() {
    let Some(lib) = faketime() else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime); .ci/run installs it");
        return;
    };
    let opts = Opts { relays: 2, twins: true, hub: true, repo: true, agent: false, ..Opts::default() };
    let (mut fleet, p) = jobs_fleet_with(opts).await;

    // Five minutes ahead: every two-minute grant has expired by its clock.
    fleet.agent = Some(start_agent_at(fleet.dir(), &fleet.agent_cfg, &lib, "+300s"));
    let d = offset_shown(&p, 300_000).await;
    assert_eq!(d["status"], "online", "{d}");
    let (ok, table, _) = run(&["devices", "--profile", &p], "").await;
    assert!(ok && table.contains("CLOCK 5 min") && table.contains("ahead"), "{table}");
    assert_eq!(hub_metric(&fleet, "tether_hub_devices_clock_skewed", &[]).await, 1.0);
    let ward = add_user(&fleet, "ward", "admin", &[]).await;
    let cookie = console_cookie(&fleet, "ward", &ward).await;
    let rows = raw(&fleet, &format!("GET /console/devices?part=rows HTTP/1.1\r\nCookie: {cookie}"), "").await;
    let badge = rows.split("badge-bad\">clock ").nth(1).and_then(|r| r.split("</span>").next()).unwrap_or("");
    assert!(badge.contains(" min ") && badge.ends_with(" s ahead"), "the console shows no clock badge: {rows}");
    let m = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    for relay in ["relay-a", "relay-b"] {
        let secs = parse_metric(m["text"].as_str().unwrap(), "tether_agent_clock_offset_seconds", &[relay]);
        assert!((295.0..=305.0).contains(&secs), "the agent measured {secs} s against {relay}");
    }

    // The specialist is refused, and told why.
    let connect_args = ["connect", "--profile", &p, DEVICE, "echo", "--listen", "127.0.0.1:0", "--reason", "clock"];
    let (ok, out, err) = run(&connect_args, "").await;
    assert!(!ok, "a grant was taken by a device five minutes ahead: {out}");
    assert!(err.contains("grant_expired") && err.contains("clock is 5 min") && err.contains("set its time"), "{err}");

    // Both ends wrote it down: the device's record of the refusal names its clock.
    let agent = fleet.agent_audit();
    let skewed = events(&agent, "clock_skewed");
    assert_eq!(skewed.len(), 2, "one record per relay: {skewed:?}");
    assert!(skewed.iter().all(|r| (r["offset_ms"].as_i64().unwrap() - 300_000).abs() < 5_000), "{skewed:?}");
    let refused = events(&agent, "access_refused");
    let detail = refused.last().map(|r| r["detail"].as_str().unwrap_or("").to_string()).unwrap_or_default();
    assert!(detail.contains("expired") && detail.contains("clock is 5 min"), "{refused:?}");
    let relays: Vec<Value> = (0..2).flat_map(|i| fleet.relay_audit(i)).collect();
    assert_eq!(events(&relays, "device_clock_skewed").len(), 2, "each relay audits the device's clock once");

    // Five minutes behind: grants still hold (their expiry lies further
    // ahead by the device's clock); the fleet view says which way it is off.
    fleet.agent.as_mut().unwrap().term_and_wait(10).await;
    fleet.agent = Some(start_agent_at(fleet.dir(), &fleet.agent_cfg, &lib, "-300s"));
    offset_shown(&p, -300_000).await;
    let (ok, table, _) = run(&["devices", "--profile", &p], "").await;
    assert!(ok && table.contains("CLOCK 5 min") && table.contains("behind"), "{table}");
    let (mut child, addr, _) = connect(&p, "echo", "clock behind").await;
    echo_once(&addr, b"late").await;
    child.kill().await.unwrap();

    // Set right: nothing flagged any more.
    fleet.agent.as_mut().unwrap().term_and_wait(10).await;
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    let d = offset_shown(&p, 0).await;
    assert!(d["clock_offset_ms"].as_i64().unwrap().abs() < 1_000, "{d}");
    let (ok, table, _) = run(&["devices", "--profile", &p], "").await;
    assert!(ok && !table.contains("CLOCK"), "{table}");
    assert_eq!(hub_metric(&fleet, "tether_hub_devices_clock_skewed", &[]).await, 0.0);
}

/// A device whose clock fell back before its own certificate (a flat clock
/// battery): TLS refuses every relay's certificate against it. The agent
/// says what is wrong, once in its audit and at each try in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_clock_before_its_own_certificate_is_named_as_the_reason_it_cannot_attach() {
    let Some(lib) = faketime() else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime); .ci/run installs it");
        return;
    };
    // The test certificates start a day ago.
    let mut fleet = Fleet::start(Opts { agent: false, ..Opts::default() }).await;
    fleet.agent = Some(start_agent_at(fleet.dir(), &fleet.agent_cfg, &lib, "-2d"));
    let audit = || fleet.agent_audit();
    eventually("the agent audits its clock", async || !events(&audit(), "clock_suspect").is_empty()).await;
    let suspect = events(&audit(), "clock_suspect").remove(0);
    let detail = suspect["detail"].as_str().unwrap();
    assert!(
        detail.contains("before its own certificate's start") && detail.contains("set the device's time"),
        "{detail}"
    );
    let now = tether::util::now_secs() as i64;
    let reads = suspect["clock"].as_i64().unwrap();
    assert!((now - 2 * 86_400 - reads).abs() < 60, "the record holds the device's clock: {reads} against {now}");
    let log = std::fs::read_to_string(fleet.dir().join("agent-2d.log")).unwrap();
    assert!(log.contains("before its own certificate's start"), "{log}");
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 0.0);
    // At the next try it says so again in its log, but audits it once.
    eventually("a second try", async || {
        let log = std::fs::read_to_string(fleet.dir().join("agent-2d.log")).unwrap();
        log.matches("before its own certificate's start").count() >= 2
    })
    .await;
    assert_eq!(events(&audit(), "clock_suspect").len(), 1);
}

/// A relay of the version before the clock in heartbeats, as it answers one
/// (what 76680a6 sends, as read off its log): the agent attaches again at
/// once and heartbeats without its clock there; nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_attaches_to_a_relay_older_than_the_clock_in_heartbeats() {
    use tether::proto::{Frame, FrameIo, FrameIoError, ProtoError, Reason, VERSION};
    use tether::tls::{self, Identity};
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let id = Identity { ca: &pki.path("ca.pem"), cert: &pki.path("relay-a.pem"), key: &pki.path("relay-a.key") };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&id, true, None, tls::ALPN_AGENT).unwrap());
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = control.local_addr().unwrap();
    let old = RelayProc::stand_in(at, tmp.path());
    let echo: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cert = (pki.path(&format!("{DEVICE}.pem")), pki.path(&format!("{DEVICE}.key")));
    let cfg = write_agent_config(tmp.path(), &pki, &[&old], echo, &Opts::default(), (&cert.0, &cert.1));
    let _agent = start_agent(tmp.path(), &cfg);

    // The first heartbeat after the welcome, whatever else comes first.
    let attach = async || {
        let (tcp, _) = within(30, control.accept()).await.unwrap();
        let mut io = FrameIo::new(acceptor.accept(tcp).await.unwrap());
        assert!(matches!(within(30, io.read_frame()).await.unwrap(), Frame::Hello { .. }));
        let welcome = Frame::Welcome { version: VERSION, relay: "relay-a".into(), heartbeat_secs: 30, raw_legs: false };
        io.write_frame(&welcome).await.unwrap();
        loop {
            match within(30, io.read_frame()).await.unwrap() {
                Frame::Heartbeat { seq, clock } => return (io, seq, clock),
                _ => continue,
            }
        }
    };
    let (mut io, seq, clock) = attach().await;
    assert_eq!(seq, 1, "the agent heartbeats at once on attach");
    assert!(clock.is_some(), "this agent sends its clock");
    // The old relay's decoder took the clock for 8 trailing bytes.
    let message = FrameIoError::Proto(ProtoError::Trailing { extra: 8 }).to_string();
    io.write_frame(&Frame::Error { reason: Reason::BadFrame, message }).await.unwrap();
    drop(io);

    let t = std::time::Instant::now();
    let (mut io, seq, clock) = attach().await;
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "attached again after {:?}", t.elapsed());
    assert_eq!((seq, clock), (1, None), "the agent still sent its clock to a relay that refuses it");
    io.write_frame(&Frame::Heartbeat { seq, clock: None }).await.unwrap();
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(log.contains("the relay is older than this agent"), "{log}");
}
