//! The hub under abuse: parallel password guesses, a source that floods
//! logins, and a password reset that must end every old login.
use hyper::Method;
use serde_json::{Value, json};
use tether::api::HubClientError;

use super::hub::*;
use crate::harness::*;

async fn guess(fleet: &Fleet, user: &str, password: &str) -> Result<Value, HubClientError> {
    let body = json!({"user": user, "password": password, "code": "123456"});
    hub_client(fleet).request::<Value, Value>(Method::POST, "/api/v1/login", None, Some(&body)).await
}

fn code_of(r: &Result<Value, HubClientError>) -> String {
    match r {
        Err(HubClientError::Api { status, code, .. }) => format!("{status} {code}"),
        Ok(_) => "200".into(),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn parallel_guesses_each_count_and_stop_at_the_lockout() {
    let fleet =
        hub_fleet("[lockout]\nmax_failures = 3\nbase_delay_secs = 60\n[login]\nper_source_per_minute = 1000\n").await;
    add_user(&fleet, "mallory", "engineer", &["st-marys"]).await;
    // 24 guesses at once: one is checked at a time per account name; the
    // rest are told to retry, and none is counted twice or lost.
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let f = &fleet;
            async move { code_of(&guess(f, "mallory", &format!("guess number {i} is wrong")).await) }
        })
        .collect();
    let answers: Vec<String> = futures_all(tasks.into_iter().map(Box::pin).collect()).await;
    let failed = answers.iter().filter(|a| *a == "401 login_failed").count();
    assert!((1..=3).contains(&failed), "at most the lockout's worth of guesses were checked: {answers:?}");
    assert!(
        answers.iter().all(|a| a == "401 login_failed" || a == "429 login_busy" || a == "429 locked"),
        "every other guess was turned away before any check: {answers:?}"
    );
    // Guess on, one at a time, until locked: exactly the limit was checked in all.
    let mut more = 0;
    loop {
        let a = code_of(&guess(&fleet, "mallory", "one more wrong guess").await);
        match a.as_str() {
            "401 login_failed" => more += 1,
            "429 locked" => break,
            "429 login_busy" => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            other => panic!("unexpected {other}"),
        }
        assert!(more <= 3, "more guesses checked than the lockout allows");
    }
    assert_eq!(failed + more, 3, "each failure counted once: {failed} in parallel, {more} after");
    let admin = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &admin).await);
    let audit = hub_audit(&fleet, &admin_t).await;
    let counted = audit.iter().filter(|r| r["event"] == "login_failed" && r["user"] == "mallory").count();
    assert_eq!(counted, 3, "each checked guess audited once");
    assert!(audit.iter().any(|r| r["event"] == "login_refused_busy" && r["user"] == "mallory"));
    let metrics = hub_client(&fleet).call(Method::GET, "/metrics", None, None).await.unwrap().1;
    let text = String::from_utf8_lossy(&metrics);
    assert!(parse_metric(&text, "tether_hub_refusals_total", &["login_busy"]) >= 1.0, "busy refusals counted");
}

#[tokio::test]
async fn a_flooding_source_is_rate_limited_and_a_password_reset_ends_old_logins() {
    let fleet = hub_fleet("[login]\nper_source_per_minute = 6\n").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let admin = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "alice", &alice).await;
    let old = token_of(&profile);
    let admin_t = token_of(&login(&fleet, "boss", &admin).await);
    let me = async |t: &str| hub_client(&fleet).get::<Value>("/api/v1/me", Some(t)).await;
    me(&old).await.expect("the token works");

    // A password reset revokes every token of the account.
    let out = hub_cli(&fleet, &["user", "passwd", "alice"], "a brand new passphrase for alice 77\n").await;
    assert!(out.contains("tokens are revoked"), "{out}");
    let e = me(&old).await.expect_err("the old token is dead");
    assert_eq!(e.code(), Some("bad_token"), "{e}");

    // Two logins were spent above; four more, then the source is turned away.
    for i in 0..4 {
        assert_eq!(code_of(&guess(&fleet, &format!("nobody{i}"), "not a password at all").await), "401 login_failed");
    }
    let (status, body) = hub_client(&fleet)
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(serde_json::to_vec(&json!({"user": "x", "password": "y", "code": "1"})).unwrap().into()),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status.as_u16(), v["error"].as_str()), (429, Some("rate_limited")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("try again in"));
    for _ in 0..5 {
        assert_eq!(code_of(&guess(&fleet, "alice", "x").await), "429 rate_limited");
    }
    let audit = hub_audit(&fleet, &admin_t).await;
    let limited: Vec<_> = audit.iter().filter(|r| r["event"] == "login_rate_limited").collect();
    assert_eq!(limited.len(), 1, "one audit record for the burst, not one per attempt: {limited:?}");
    assert!(
        audit.iter().any(|r| r["event"] == "user_password_set" && r["user"] == "alice" && r["tokens_revoked"] == 1)
    );
}

/// Runs the futures at once; their outputs in order.
async fn futures_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test]
async fn a_trickled_login_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fleet = hub_fleet("body_timeout_secs = 1\n").await;
    let url = fleet.hub.as_ref().unwrap().url();
    let addr = url.trim_start_matches("https://").to_string();
    let cfg = tether::tls::client_config(&fleet.pki.path("ca.pem"), None, tether::tls::ALPN_HTTP1).unwrap();
    let mut s = tether::tls::dial(&addr, "localhost", cfg).await.unwrap();
    let head =
        "POST /api/v1/login HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if s.write_all(b" ").await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), trickle).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "a trickled body was not cut off: {text:?}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let metrics = hub_client(&fleet).call(Method::GET, "/metrics", None, None).await.unwrap().1;
    assert!(parse_metric(&String::from_utf8_lossy(&metrics), "tether_hub_refusals_total", &["body_timeout"]) >= 1.0);
    let admin = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &admin).await);
    let audit = hub_audit(&fleet, &admin_t).await;
    assert!(audit.iter().any(|r| r["event"] == "request_refused" && r["reason"] == "body_timeout"), "not audited");
}

/// Connections past the hub's cap are turned away before TLS, counted, and
/// written to the audit as one aggregate record per period naming the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_counted_and_audited_in_aggregate() {
    use std::net::SocketAddr;
    use tokio::net::TcpSocket;
    let fleet = hub_fleet("max_connections = 8\n").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let hub = fleet.hub.as_ref().unwrap().addr;
    // 24 silent connections from 127.0.0.31: the cap takes what is left of 8, the rest are dropped.
    let mut held = Vec::new();
    for _ in 0..24 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 31], 0))).unwrap();
        held.push(within(10, sock.connect(hub)).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(held);
    // The hub frees the held slots as it reads each hang-up; until then a
    // new connection is past the cap too, so ask again for a bounded while.
    let mut metrics = None;
    for _ in 0..50 {
        if let Ok((_, m)) = hub_client(&fleet).call(Method::GET, "/metrics", None, None).await {
            metrics = Some(m);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = metrics.expect("the hub did not take a connection within 10 s of the held ones closing");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(parse_metric(&metrics, "tether_hub_refusals_total", &["max_connections"]) >= 16.0);
    // The held ones hung up before their first byte, as a balancer's TCP
    // check does: counted as that (a slot had to be free for the request).
    assert!(parse_metric(&metrics, "tether_hub_refusals_total", &["closed_early"]) >= 1.0, "{metrics}");
    // The record comes with the next 10 s period.
    let r = aggregate_record(&fleet, &admin_t, "connections_dropped").await;
    assert!(r["dropped"]["max_connections"].as_u64() >= Some(16), "{r}");
    assert_eq!(r["top_sources"][0]["source"], "127.0.0.31", "{r}");
}

/// Handshakes the hub refuses are each counted, audited in aggregate, and
/// logged one by one only up to a budget (20 per source and minute): plain
/// HTTP from one source, 60 times, writes 20 lines to the hub's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_logged_one_by_one_only_up_to_a_budget() {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;
    let fleet = hub_fleet("").await;
    let hub = fleet.hub.as_ref().unwrap().addr;
    for _ in 0..60 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 32], 0))).unwrap();
        let mut s = within(10, sock.connect(hub)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n").await.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut [0u8; 256])).await;
    }
    eventually("every refusal is counted", async || {
        let m = hub_metrics(&fleet).await;
        let refused: f64 = m
            .lines()
            .filter(|l| l.starts_with("tether_hub_refusals_total{") && !l.contains("closed_early"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        refused >= 60.0
    })
    .await;
    let log = std::fs::read_to_string(fleet.dir().join("hub.log")).unwrap();
    let lines = log.lines().filter(|l| l.contains("refused before TLS completed")).count();
    assert_eq!(lines, 20, "lines in the hub's log for 60 refused handshakes");
}

/// Requests nobody authenticated (no token) are each counted and refused by
/// name, but recorded one by one only up to the budget (20 per source and
/// minute): 60 from one source write 20 `auth_refused` records and one
/// aggregate `requests_refused` record with the other 40, instead of a
/// database write per request; another source's refusal is still recorded
/// one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_token_past_a_budget_are_audited_in_aggregate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let no_token = async || parse_metric(&hub_metrics(&fleet).await, "tether_hub_refusals_total", &["no_token"]);
    let before = no_token().await;
    let cfg = tether::tls::client_config(&fleet.pki.path("ca.pem"), None, tether::tls::ALPN_HTTP1).unwrap();
    for i in 0..60 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, 33], 0))).unwrap();
        let tcp = within(10, sock.connect(fleet.hub.as_ref().unwrap().addr)).await.unwrap();
        let name = tether::tls::server_name("localhost").unwrap();
        let mut tls = within(10, tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp)).await.unwrap();
        let req = format!("GET /api/v1/devices?n={i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = within(10, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401") && answer.contains("no_token"), "{answer}");
    }
    assert_eq!(no_token().await - before, 60.0, "each refusal is counted");
    // Another source's refusal is recorded one by one.
    let other = tether::api::HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), None, None);
    let _ = other.unwrap().call(Method::GET, "/api/v1/sessions", None, None).await.unwrap();
    let r = aggregate_record(&fleet, &admin_t, "requests_refused").await;
    let audit = hub_audit(&fleet, &admin_t).await;
    let from = |ip: &str| audit.iter().filter(|r| r["event"] == "auth_refused" && r["from"] == ip).count();
    assert_eq!(from("127.0.0.33"), 20, "refusals from the flooding source recorded one by one");
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "auth_refused" && r["from"] == "127.0.0.1" && r["path"] == "/api/v1/sessions"),
        "another source's refusal was not recorded"
    );
    assert_eq!(r["refused_as"], "auth_refused", "{r}");
    assert_eq!(r["dropped"]["no_token"], 40, "{r}");
    assert_eq!(r["top_sources"][0]["source"], "127.0.0.33", "{r}");
}

/// The hub's first `event` record, an aggregate written every 10 s: waited
/// for up to 20 s.
async fn aggregate_record(fleet: &Fleet, admin_t: &str, event: &str) -> Value {
    for _ in 0..40 {
        if let Some(r) = hub_audit(fleet, admin_t).await.into_iter().find(|r| r["event"] == event) {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("no {event} record within 20 s");
}
