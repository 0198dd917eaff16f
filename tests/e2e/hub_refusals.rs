//! Every refusal at the hub: a clear error, the same one where telling more
//! would help an attacker, an audit record, a metric, and a live session
//! through the same hub and relays left untouched.
use hyper::Method;
use serde_json::{Value, json};
use tether::api::HubClientError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hub::*;
use crate::harness::*;

async fn login_raw(fleet: &Fleet, user: &str, password: &str, code: &str) -> Result<Value, HubClientError> {
    hub_client(fleet)
        .request::<serde_json::Value, serde_json::Value>(
            Method::POST,
            "/api/v1/login",
            None,
            Some(&json!({"user": user, "password": password, "code": code})),
        )
        .await
}

fn api_err(r: Result<Value, HubClientError>) -> (u16, String, String) {
    match r {
        Err(HubClientError::Api { status, code, message }) => (status, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn session_req(
    fleet: &Fleet,
    token: &str,
    device: &str,
    service: &str,
    reason: &str,
) -> Result<Value, HubClientError> {
    let body = json!({"device": device, "service": service, "reason": reason, "client_key": "00ff"});
    hub_client(fleet)
        .request::<serde_json::Value, serde_json::Value>(Method::POST, "/api/v1/sessions", Some(token), Some(&body))
        .await
}

#[tokio::test]
async fn refusals_are_clear_audited_counted_and_isolated() {
    let fleet = hub_fleet("[lockout]\nmax_failures = 3\nbase_delay_secs = 60\n").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let vic = add_user(&fleet, "vic", "viewer", &["st-marys"]).await;
    let eve = add_user(&fleet, "eve", "engineer", &[]).await;
    let dis = add_user(&fleet, "dis", "engineer", &["st-marys"]).await;
    add_user(&fleet, "mallory", "engineer", &["st-marys"]).await;
    let alice_profile = login(&fleet, "alice", &alice).await;
    let alice_t = token_of(&alice_profile);
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let vic_t = token_of(&login(&fleet, "vic", &vic).await);
    let eve_t = token_of(&login(&fleet, "eve", &eve).await);
    let dis_t = token_of(&login(&fleet, "dis", &dis).await);
    eventually("device routable", async || session_req(&fleet, &vic_t, DEVICE, "echo", "warm-up").await.is_ok()).await;

    // A live session, which every refusal below must leave alone.
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "connect",
            "--profile",
            alice_profile.to_str().unwrap(),
            DEVICE,
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--reason",
            "CHG-1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within(30, tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)).await.unwrap();
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    let mut live = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let ping = async |s: &mut tokio::net::TcpStream| {
        s.write_all(b"still here").await.unwrap();
        let mut b = [0u8; 10];
        within(10, s.read_exact(&mut b)).await.unwrap();
        assert_eq!(&b, b"still here");
    };
    ping(&mut live).await;

    // A connect without a stated reason fails at once, before asking anyone.
    let p = alice_profile.to_str().unwrap();
    let (ok, _, err) =
        crate::hub::run(&["connect", "--profile", p, DEVICE, "echo", "--listen", "127.0.0.1:0"], "").await;
    assert!(!ok && err.contains("a reason is required: --reason") && !err.contains("asking"), "{err}");

    // Logins: unknown user, wrong password, wrong code, reused code — one outward answer.
    let same = api_err(login_raw(&fleet, "nobody", "violet staple quarantine 42 orbit", &code(&alice, 0)).await);
    assert_eq!((same.0, same.1.as_str()), (401, "login_failed"));
    assert_eq!(api_err(login_raw(&fleet, "alice", "wrong password entirely 99", &code(&alice, 0)).await), same);
    assert_eq!(api_err(login_raw(&fleet, "alice", "violet staple quarantine 42 orbit", "000000").await), same);
    let c = code(&alice, 1);
    login_raw(&fleet, "alice", "violet staple quarantine 42 orbit", &c).await.expect("a fresh code logs in");
    assert_eq!(api_err(login_raw(&fleet, "alice", "violet staple quarantine 42 orbit", &c).await), same, "reused code");
    // Lockout after the limit, for the right password too; audited.
    for _ in 0..3 {
        assert_eq!(api_err(login_raw(&fleet, "mallory", "not the password at all", "123456").await), same);
    }
    let locked = api_err(login_raw(&fleet, "mallory", "violet staple quarantine 42 orbit", "123456").await);
    assert_eq!((locked.0, locked.1.as_str()), (429, "locked"), "{locked:?}");

    // Tokens: forged, expired, of a disabled account.
    let forged = api_err(
        hub_client(&fleet)
            .request::<serde_json::Value, serde_json::Value>(Method::GET, "/api/v1/devices", Some("tt_forged"), None)
            .await,
    );
    assert_eq!((forged.0, forged.1.as_str()), (401, "bad_token"));
    let store = tether::hub::store::Store::open("sqlite:hub.db", fleet.dir()).await.unwrap();
    let (expired, hash) = tether::hub::auth::new_token();
    store.token_add(&hash, "alice", tether::util::now_secs() as i64 - 5).await.unwrap();
    let e = api_err(
        hub_client(&fleet)
            .request::<serde_json::Value, serde_json::Value>(Method::GET, "/api/v1/devices", Some(&expired), None)
            .await,
    );
    assert_eq!((e.0, e.1.as_str()), (401, "token_expired"));
    hub_cli(&fleet, &["user", "disable", "dis"], "").await;
    let d = api_err(
        hub_client(&fleet)
            .request::<serde_json::Value, serde_json::Value>(Method::GET, "/api/v1/devices", Some(&dis_t), None)
            .await,
    );
    assert_eq!((d.0, d.1.as_str()), (401, "account_disabled"));

    // Sessions: not entitled, role too low, source outside the allow-list, no ticket.
    let ne = api_err(session_req(&fleet, &eve_t, DEVICE, "echo", "x").await);
    let unknown = api_err(session_req(&fleet, &eve_t, "no-such-device", "echo", "x").await);
    assert_eq!((ne.0, ne.1.as_str(), unknown.1.as_str()), (403, "not_entitled", "not_entitled"));
    let low = api_err(session_req(&fleet, &vic_t, DEVICE, "ssh", "x").await);
    assert_eq!((low.0, low.1.as_str()), (403, "role_too_low"), "{low:?}");
    hub_cli(&fleet, &["site", "set", "st-marys", "--allow-from", "10.0.0.0/8,192.0.2.0/24"], "").await;
    let src = api_err(session_req(&fleet, &alice_t, DEVICE, "echo", "x").await);
    assert_eq!((src.0, src.1.as_str()), (403, "source_not_allowed"));
    hub_cli(&fleet, &["site", "set", "st-marys", "--allow-from", "127.0.0.0/8", "--require-ticket", "true"], "").await;
    let nt = api_err(session_req(&fleet, &alice_t, DEVICE, "echo", "just looking").await);
    assert_eq!((nt.0, nt.1.as_str()), (400, "ticket_required"));
    session_req(&fleet, &alice_t, DEVICE, "echo", "per INC-4411").await.expect("with a ticket");

    // Bodies: oversize, malformed, unknown fields.
    let c = hub_client(&fleet);
    let big = json!({"device": "x".repeat(70_000)});
    let (st, _) = c
        .call(Method::POST, "/api/v1/sessions", Some(&alice_t), Some(serde_json::to_vec(&big).unwrap().into()))
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 413);
    let (st, body) = c
        .call(Method::POST, "/api/v1/login", None, Some(serde_json::to_vec(&json!("not an object")).unwrap().into()))
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("bad_json"));
    let (st, _) = c
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(
                serde_json::to_vec(&json!({"user": "a", "password": "b", "code": "c", "admin": true})).unwrap().into(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 400);

    // Names with SQL and shell syntax are data.
    let nasty = "INJ';DROP/**/TABLE/**/devices;--$(touch${IFS}/tmp/pwned)";
    hub_cli(&fleet, &["device", "add", nasty, "--site", "st-marys"], "").await;
    let list = run(&["devices", "--profile", alice_profile.to_str().unwrap(), "--json"], "").await.1;
    let ids: Vec<String> = serde_json::from_str::<Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&nasty.to_string()) && ids.contains(&DEVICE.to_string()), "{ids:?}");
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    // Each refusal is in the audit and the metrics.
    let audit = hub_audit(&fleet, &admin_t).await;
    for reason in ["unknown_user", "bad_password", "bad_code", "reused_code"] {
        assert!(audited(&audit, "login_failed", reason), "no login_failed {reason}");
    }
    assert!(audit.iter().any(|r| r["event"] == "account_locked" && r["user"] == "mallory"));
    assert!(audit.iter().any(|r| r["event"] == "login_refused_locked" && r["user"] == "mallory"));
    for reason in ["bad_token", "token_expired", "account_disabled"] {
        assert!(audited(&audit, "auth_refused", reason), "no auth_refused {reason}");
    }
    for reason in ["not_entitled", "role_too_low", "source_not_allowed", "ticket_required"] {
        assert!(audited(&audit, "session_refused", reason), "no session_refused {reason}");
    }
    let (_, metrics) = c.call(Method::GET, "/metrics", None, None).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(parse_metric(&metrics, "tether_hub_login_failures_total", &["reused_code"]) >= 1.0);
    assert!(parse_metric(&metrics, "tether_hub_refusals_total", &["source_not_allowed"]) >= 1.0);
    assert!(parse_metric(&metrics, "tether_hub_requests_total", &["413"]) >= 1.0);

    // And the live session never noticed.
    ping(&mut live).await;
}

/// `GET /metrics` from `source`, over the hub's TLS; the response as text.
async fn metrics_from(fleet: &Fleet, source: [u8; 4]) -> String {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::from((source, 0))).unwrap();
    let tcp = within(10, sock.connect(fleet.hub.as_ref().unwrap().addr)).await.unwrap();
    let cfg = tether::tls::client_config(&fleet.pki.path("ca.pem"), None, tether::tls::ALPN_HTTP1).unwrap();
    let name = tether::tls::server_name("localhost").unwrap();
    let mut tls = within(10, tokio_rustls::TlsConnector::from(cfg).connect(name, tcp)).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = Vec::new();
    let _ = within(10, tls.read_to_end(&mut text)).await;
    String::from_utf8_lossy(&text).into_owned()
}

/// The hub's `/metrics` answers only the sources in `metrics_from` (by
/// default loopback): anyone else is refused by name, counted and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_metrics_answer_only_the_sources_named_for_them() {
    let fleet = hub_fleet("metrics_from = [\"127.0.0.2/32\"]\n").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let refused = metrics_from(&fleet, [127, 0, 0, 1]).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("metrics_not_allowed") && !refused.contains("tether_hub_"), "{refused}");
    let scrape = metrics_from(&fleet, [127, 0, 0, 2]).await;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    assert_eq!(parse_metric(&scrape, "tether_hub_refusals_total", &["reason=\"metrics_not_allowed\""]), 1.0);
    let audit = hub_audit(&fleet, &admin_t).await;
    let rec = audit.iter().find(|r| r["event"] == "metrics_refused").expect("no metrics_refused record");
    assert_eq!((&rec["from"], &rec["reason"]), (&json!("127.0.0.1"), &json!("metrics_not_allowed")), "{rec}");
}
