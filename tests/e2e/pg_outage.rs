//! The hub on PostgreSQL when the database goes away: PostgreSQL ends the
//! hub's connections (as a restart or `pg_terminate_backend` does), then is
//! unreachable for a while (maintenance, a failover). Live sessions never
//! notice; new requests are refused by name; the hub comes back by itself,
//! without a restart; what happened meanwhile (a session's end, a refusal)
//! is stored once the database is back, and the audit chain stays whole.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::harness::*;
use crate::hub::{
    add_user, connect, echo_once, grant_body, hub_audit, hub_cli, hub_client, hub_metric, login, run, token_of,
};
use crate::pg_backup::{pg, postgres};
use crate::restarts::{audit_verifies, grant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Open,
    /// Connections cut, new ones closed at once: the database is down.
    Closed,
    /// Nothing forwarded and nothing closed: a host that hangs, or a
    /// network that drops packets without a reset.
    Frozen,
}

/// A TCP forwarder between the hub and PostgreSQL that the test can close
/// or freeze, and open again.
struct Gate {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

/// How long a frozen connection is held (the test is over long before).
const HOLD: Duration = Duration::from_secs(120);

impl Gate {
    async fn start(upstream: String) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Open);
        let live = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let l = live.clone();
        // Ends with the test's runtime.
        tokio::spawn(async move {
            while let Ok((mut from, _)) = listener.accept().await {
                let mode = *rx.borrow();
                let task = match mode {
                    Mode::Closed => continue, // dropped: closed at once
                    Mode::Frozen => tokio::spawn(async move {
                        let _held = from;
                        tokio::time::sleep(HOLD).await;
                    }),
                    Mode::Open => {
                        let (up, mut rx) = (upstream.clone(), rx.clone());
                        tokio::spawn(async move {
                            let Ok(mut to) = TcpStream::connect(&up).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut from, &mut to) => {}
                                // Both sockets stay open; nothing moves.
                                _ = async { drop(rx.wait_for(|m| *m == Mode::Frozen).await) } => {
                                    tokio::time::sleep(HOLD).await
                                }
                            }
                        })
                    }
                };
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Gate { addr, mode, live }
    }

    fn cut(&self) {
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn close(&self) {
        self.mode.send_replace(Mode::Closed);
        self.cut();
    }

    fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    fn open(&self) {
        self.cut();
        self.mode.send_replace(Mode::Open);
    }
}

/// A hub (and twin relays, an agent) on a schema of its own in the test
/// PostgreSQL, reached through a gate, its connections named `app`; an
/// admin logged in. Returns the fleet, the gate, the schema, `app`, the
/// admin's profile and token.
async fn gated_hub(url: &str) -> (Fleet, Gate, String, String, PathBuf, String) {
    let schema = format!("t_{}", hex::encode(tether::random_bytes::<6>()));
    pg("psql", &[url, "-qc", &format!("CREATE SCHEMA {schema}")]);
    let host = url.split('@').nth(1).and_then(|r| r.split('/').next()).expect("postgres://USER@HOST:PORT/DB");
    let gate = Gate::start(host.to_string()).await;
    let app = format!("tether-{schema}");
    let sep = if url.contains('?') { '&' } else { '?' };
    let hub_url = format!(
        "{}{sep}options=-csearch_path%3D{schema}&application_name={app}",
        url.replacen(host, &gate.addr.to_string(), 1)
    );
    let extra: &'static str = Box::leak(format!("database = \"{hub_url}\"\n").into_boxed_str());
    let fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, hub_extra: extra, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "boss", &boss).await;
    let token = token_of(&profile);
    (fleet, gate, schema, app, profile, token)
}

fn psql_one(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql").args([url, "-tAc", sql]).output().unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_rides_out_a_database_restart_and_outage_and_loses_no_record() {
    let Some(url) = postgres() else { return };
    let (fleet, gate, schema, app, profile, token) = gated_hub(&url).await;
    let (mut session, addr, id) = connect(&profile, "echo", "INC-1").await;
    echo_once(&addr, b"before").await;

    // 1. PostgreSQL ends the hub's connections, as a restart does.
    let ended = psql_one(
        &url,
        &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"),
    );
    assert!(ended.parse::<u32>().unwrap() >= 1, "the hub had no connection to end: {ended}");
    echo_once(&addr, b"restart").await;
    // The very next grant works: the hub dials again, no restart.
    grant(&fleet, &token, "INC-2").await;

    // 2. The database is unreachable.
    gate.close();
    echo_once(&addr, b"outage").await;
    let (status, answer) =
        hub_client(&fleet).call(Method::POST, "/api/v1/sessions", Some(&token), grant_body("INC-3")).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert_eq!(status.as_u16(), 503, "{answer}");
    assert!(answer.contains("database_unavailable"), "{answer}");
    // The specialist reads why.
    let p = profile.to_str().unwrap();
    let (ok, _, err) = run(&["connect", "--profile", p, DEVICE, "echo", "--reason", "INC-3"], "").await;
    assert!(!ok && err.contains("database is unreachable"), "{err}");
    // The operator's checks say so.
    let (status, health) = hub_client(&fleet).call(Method::GET, "/api/v1/healthz", None, None).await.unwrap();
    let health: Value = serde_json::from_slice(&health).unwrap();
    assert_eq!((status.as_u16(), health["database"].as_str()), (503, Some("unreachable")), "{health}");
    assert_eq!(hub_metric(&fleet, "tether_hub_database_up", &[]).await, 0.0);
    // A refusal that needs no database is still judged, and audited later.
    let (status, _) = hub_client(&fleet).call(Method::GET, "/api/v1/devices", None, None).await.unwrap();
    assert_eq!(status.as_u16(), 401);
    // The session ends meanwhile: the relay's report of it is refused, kept
    // by the relay, and sent again.
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &session.id().unwrap().to_string()])
            .status()
            .unwrap()
            .success()
    );
    within(30, session.wait()).await.unwrap();
    eventually("the relay ends the session", async || {
        (0..2).any(|i| fleet.relay_audit(i).iter().any(|r| r["event"] == "session_end" && r["session"] == id.as_str()))
    })
    .await;
    let refused =
        async || hub_metric(&fleet, "tether_hub_requests_total", &["route=\"relay_report\"", "status=\"503\""]).await;
    let before = refused().await;
    eventually("a relay's report with the end refused for the database", async || refused().await > before).await;

    // 3. The database is back: the hub is whole again by itself.
    gate.open();
    eventually("grants work again", async || {
        let (status, _) =
            hub_client(&fleet).call(Method::POST, "/api/v1/sessions", Some(&token), grant_body("INC-4")).await.unwrap();
        status.is_success()
    })
    .await;
    assert_eq!(hub_metric(&fleet, "tether_hub_database_up", &[]).await, 1.0);
    assert!(hub_metric(&fleet, "tether_hub_database_reconnects_total", &[]).await >= 2.0);
    let (status, _) = hub_client(&fleet).call(Method::GET, "/api/v1/healthz", None, None).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    eventually("the session's end is recorded", async || {
        let s: Value = hub_client(&fleet).get(&format!("/api/v1/sessions/{id}"), Some(&token)).await.unwrap();
        s["state"] == "ended" && s["end_reason"] == "client_closed"
    })
    .await;
    // The outage itself is audited (within a second of the database's return).
    eventually("a database_outage record", async || {
        hub_audit(&fleet, &token).await.iter().any(|r| {
            r["event"] == "database_outage"
                && r["statements_refused"].as_u64() >= Some(2)
                && r["seconds"].as_f64().is_some()
                && r["cause"].as_str().is_some_and(|c| !c.is_empty())
        })
    })
    .await;
    let audit = hub_audit(&fleet, &token).await;
    let has = |event: &str, check: &dyn Fn(&Value) -> bool| audit.iter().any(|r| r["event"] == event && check(r));
    assert!(has("session_end", &|r| r["session"] == id.as_str()), "no session_end for {id}");
    assert!(has("auth_refused", &|r| r["reason"] == "no_token"), "the refusal during the outage was lost");
    audit_verifies(&fleet, &profile).await;
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}

/// A database that stops answering without closing anything (a hung host, a
/// network that drops packets): a request that needs it is answered 503
/// within the client's 10 s, not held until TCP gives up; within seconds
/// each connection is given up and the hub says the database is
/// unreachable; it comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_is_given_up_on_in_seconds() {
    let Some(url) = postgres() else { return };
    let (fleet, gate, schema, _, profile, token) = gated_hub(&url).await;
    let (_session, addr, _) = connect(&profile, "echo", "INC-1").await;
    echo_once(&addr, b"before").await;

    gate.freeze();
    // The client gives up after 10 s (api::client): an answer at all is the point.
    let (status, answer) = hub_client(&fleet)
        .call(Method::POST, "/api/v1/sessions", Some(&token), grant_body("INC-2"))
        .await
        .expect("the hub answers within the client's 10 s");
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert_eq!(status.as_u16(), 503, "{answer}");
    assert!(answer.contains("database_unavailable"), "{answer}");
    echo_once(&addr, b"frozen").await;
    // Relays' reports keep reaching the hub; each connection is given up in
    // turn, then a dial finds no answer: the hub says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, health) = hub_client(&fleet).call(Method::GET, "/api/v1/healthz", None, None).await.unwrap();
        if status.as_u16() == 503 {
            let health: Value = serde_json::from_slice(&health).unwrap();
            assert_eq!(health["database"], "unreachable", "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "the hub never found its database unreachable:\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hub_metric(&fleet, "tether_hub_database_up", &[]).await, 0.0);
    echo_once(&addr, b"still").await;

    gate.open();
    eventually("grants work again", async || {
        let hub = hub_client(&fleet);
        let call = hub.call(Method::POST, "/api/v1/sessions", Some(&token), grant_body("INC-3"));
        call.await.is_ok_and(|(status, _)| status.is_success())
    })
    .await;
    eventually("a database_outage record naming the silence", async || {
        hub_audit(&fleet, &token).await.iter().any(|r| {
            r["event"] == "database_outage" && r["cause"].as_str().is_some_and(|c| c.contains("no answer within"))
        })
    })
    .await;
    audit_verifies(&fleet, &profile).await;
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}

/// `tether hub` on `fleet`'s config, its log in `NAME.log`; stdout piped.
fn spawn_hub_process(fleet: &Fleet, name: &str) -> std::process::Child {
    let hub = fleet.hub.as_ref().unwrap();
    std::process::Command::new(BIN)
        .args(["hub", "--config"])
        .arg(&hub.config)
        .stdout(std::process::Stdio::piped())
        .stderr(log_file(fleet.dir(), name))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap()
}

/// A hub started while its database cannot be reached (the hub's host came
/// up first after a power cut) waits for it, saying so in its log and to
/// everyone asking (503 `database_unavailable`, a 503 health, a console page,
/// `tether_hub_database_up 0` in its metrics), and serves once the database
/// answers; a SIGTERM while it waits ends it; a port already taken ends the
/// start at once, not after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_started_before_its_database_waits_for_it_then_serves() {
    let Some(url) = postgres() else { return };
    let (mut fleet, gate, schema, _, profile, token) = gated_hub(&url).await;
    let addr = fleet.hub.as_ref().unwrap().addr;
    fleet.hub.as_mut().unwrap().proc.kill();
    gate.close();

    // Stopped while it waits: it ends by itself, with success.
    let mut early = spawn_hub_process(&fleet, "hub-early");
    let log = fleet.dir().join("hub-early.log");
    eventually("the hub says it waits", async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for the database")
    })
    .await;
    told_it_waits(&fleet).await;
    assert!(std::process::Command::new("kill").args(["-TERM", &early.id().to_string()]).status().unwrap().success());
    let status = within(10, tokio::task::spawn_blocking(move || early.wait())).await.unwrap().unwrap();
    assert!(status.success(), "a hub stopped while waiting: {status}");

    // Its port taken: the start ends at once, naming it, database or not.
    let taken = TcpListener::bind(addr).await.unwrap();
    let mut clash = spawn_hub_process(&fleet, "hub-clash");
    let status = within(10, tokio::task::spawn_blocking(move || clash.wait())).await.unwrap().unwrap();
    assert!(!status.success(), "a hub started on a taken port");
    let log = std::fs::read_to_string(fleet.dir().join("hub-clash.log")).unwrap();
    assert!(log.contains(&format!("binding {addr}")) && !log.contains("waiting for the database"), "{log}");
    drop(taken);

    // Waits, then serves once the database answers.
    let mut hub = spawn_hub_process(&fleet, "hub-waits");
    let log = fleet.dir().join("hub-waits.log");
    eventually("the hub says it waits", async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("waiting for the database")
    })
    .await;
    assert!(hub.try_wait().unwrap().is_none(), "the hub gave up:\n{}", std::fs::read_to_string(&log).unwrap());
    gate.open();
    let stdout = hub.stdout.take().unwrap();
    let line = within(
        45,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(line.starts_with("hub listening"), "{line:?}");
    fleet.hub.as_mut().unwrap().proc = Proc { child: hub };
    grant(&fleet, &token, "INC-2").await;
    audit_verifies(&fleet, &profile).await;
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}

/// What a hub waiting for its database at start answers: health 503, any
/// request 503 `database_unavailable` saying so, the console a page, and
/// its metrics `tether_hub_database_up 0`.
async fn told_it_waits(fleet: &Fleet) {
    let hc = hub_client(fleet);
    let (status, body) = hc.call(Method::GET, "/api/v1/healthz", None, None).await.unwrap();
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status.as_u16(), health["database"].as_str()), (503, Some("unreachable")), "{health}");
    let login = serde_json::json!({"user": "someone", "password": "x", "code": "000000"});
    let err = hc.post::<_, Value>("/api/v1/login", None, &login).await.unwrap_err();
    assert_eq!(err.code(), Some("database_unavailable"), "{err}");
    assert!(err.to_string().contains("the hub is starting and waits for its database"), "{err}");
    let (status, page) = hc.call(Method::GET, "/console/login", None, None).await.unwrap();
    assert_eq!(status.as_u16(), 503);
    assert!(String::from_utf8_lossy(&page).contains("waits for its database"));
    let m = crate::hub::hub_metrics(fleet).await;
    assert_eq!(parse_metric(&m, "tether_hub_database_up", &[]), 0.0, "{m}");
    assert!(m.contains("tether_hub_requests_total{route=\"login\",status=\"503\"} 1"), "{m}");
}

/// Waits until the hub answers healthz with 503 (its database unreachable).
async fn until_unreachable(fleet: &Fleet) {
    eventually("the hub finds its database unreachable", async || {
        let health = hub_client(fleet).call(Method::GET, "/api/v1/healthz", None, None).await;
        health.is_ok_and(|(status, _)| status.as_u16() == 503)
    })
    .await;
}

/// A refusal the hub judges without its database (no token) at `path`.
async fn refuse_at(fleet: &Fleet, path: &str) {
    let (status, _) = hub_client(fleet).call(Method::GET, path, None, None).await.unwrap();
    assert_eq!(status.as_u16(), 401, "{path}");
}

/// The hub stopped or killed while its database is out (an operator's
/// restart "to fix it", a crash, a host reboot): the audit records that
/// waited for the database are on disk, and the next start chains them,
/// each once, before its own; the file goes once they are chained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_waiting_for_the_database_outlive_a_stop_or_kill_of_the_hub() {
    let Some(url) = postgres() else { return };
    let (mut fleet, gate, schema, _, profile, token) = gated_hub(&url).await;
    let spool = fleet.dir().join("hub-audit-waiting.jsonl");
    let spooled = |what: &str| std::fs::read_to_string(&spool).unwrap_or_default().contains(what);

    // 1. Killed (SIGKILL) a moment after a refusal: the refusal is on disk.
    gate.close();
    until_unreachable(&fleet).await;
    refuse_at(&fleet, "/api/v1/devices").await;
    eventually("the refusal is kept on disk", async || spooled("/api/v1/devices")).await;
    fleet.hub.as_mut().unwrap().proc.kill();
    gate.open();
    fleet.restart_hub();
    eventually("the file goes once its records are chained", async || !spool.exists()).await;

    // 2. Stopped (SIGTERM) at once after a refusal: the refusal, the outage
    //    so far and the stop itself are written at the stop.
    gate.close();
    until_unreachable(&fleet).await;
    refuse_at(&fleet, "/api/v1/sessions").await;
    let status = fleet.hub.as_mut().unwrap().proc.term_and_wait(20).await;
    assert!(status.success(), "{status}");
    for what in ["/api/v1/sessions", "\"ongoing_at_hub_stop\":true", "hub_stop"] {
        assert!(spooled(what), "{what} not kept on disk:\n{}", std::fs::read_to_string(&spool).unwrap_or_default());
    }
    gate.open();
    fleet.restart_hub();
    eventually("the file goes once its records are chained", async || !spool.exists()).await;

    let audit = hub_audit(&fleet, &token).await;
    let count = |check: &dyn Fn(&Value) -> bool| audit.iter().filter(|r| check(r)).count();
    for path in ["/api/v1/devices", "/api/v1/sessions"] {
        let refused = |r: &Value| r["event"] == "auth_refused" && r["reason"] == "no_token" && r["path"] == path;
        assert_eq!(count(&refused), 1, "the refusal at {path}, once");
    }
    let outage = |r: &Value| r["event"] == "database_outage" && r["ongoing_at_hub_stop"] == true;
    assert_eq!(count(&outage), 1, "the outage as far as it went at the stop");
    // The stops' records come before the next start's, which counts them.
    let seq_of =
        |check: &dyn Fn(&Value) -> bool| audit.iter().filter(|r| check(r)).map(|r| r["seq"].as_u64().unwrap()).max();
    let stopped = seq_of(&|r: &Value| r["event"] == "hub_stop").unwrap();
    let started = seq_of(&|r: &Value| r["event"] == "hub_start").unwrap();
    assert!(stopped < started, "hub_stop {stopped} after the next hub_start {started}");
    let kept = audit.iter().find(|r| r["seq"] == started).unwrap();
    assert!(kept["records_kept_through_stop"].as_u64() >= Some(3), "{kept}");
    audit_verifies(&fleet, &profile).await;
    pg("psql", &[&url, "-qc", &format!("DROP SCHEMA {schema} CASCADE")]);
}
