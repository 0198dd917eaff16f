//! The hub on PostgreSQL when the database goes away: PostgreSQL ends the
//! hub's connections (as a restart or `pg_terminate_backend` does), then is
//! unreachable for a while (maintenance, a failover). Live sessions never
//! notice; new requests are refused by name; the hub comes back by itself,
//! without a restart; what happened meanwhile (a session's end, a refusal)
//! is stored once the database is back, and the audit chain stays whole.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hyper::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::harness::*;
use crate::hub::{add_user, connect, echo_once, hub_audit, hub_cli, hub_client, login, run, token_of};
use crate::pg_backup::{pg, postgres};
use crate::restarts::{audit_verifies, grant};

/// A TCP forwarder between the hub and PostgreSQL: `close` cuts every
/// connection and refuses new ones (the database is down), `open` lets them
/// through again.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Gate {
    async fn start(upstream: String) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, live) = (Arc::new(AtomicBool::new(true)), Arc::new(Mutex::new(Vec::<AbortHandle>::new())));
        let (o, l) = (open.clone(), live.clone());
        // Ends with the test's runtime.
        tokio::spawn(async move {
            while let Ok((mut from, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let up = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut to) = TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Gate { addr, open, live }
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

async fn hub_metric(fleet: &Fleet, name: &str, labels: &[&str]) -> f64 {
    let body = hub_client(fleet).call(Method::GET, "/metrics", None, None).await.unwrap().1;
    parse_metric(&String::from_utf8_lossy(&body), name, labels)
}

fn psql_one(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql").args([url, "-tAc", sql]).output().unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_rides_out_a_database_restart_and_outage_and_loses_no_record() {
    let Some(url) = postgres() else { return };
    let schema = format!("t_{}", hex::encode(tether::random_bytes::<6>()));
    pg("psql", &[&url, "-qc", &format!("CREATE SCHEMA {schema}")]);
    // The hub reaches PostgreSQL through the gate, under a name of its own.
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
    let body = json!({"device": DEVICE, "service": "echo", "reason": "INC-3", "client_key": "00ff"});
    let (status, answer) = hub_client(&fleet)
        .call(Method::POST, "/api/v1/sessions", Some(&token), Some(serde_json::to_vec(&body).unwrap().into()))
        .await
        .unwrap();
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
        let (status, _) = hub_client(&fleet)
            .call(Method::POST, "/api/v1/sessions", Some(&token), Some(serde_json::to_vec(&body).unwrap().into()))
            .await
            .unwrap();
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
