//! The PROXY protocol v2 behind real HAProxy (`send-proxy-v2`): the hub's
//! site rule and the relay's audit see the specialist's address, not the
//! balancer's; a header from anyone else is refused by name, counted and
//! audited, and a trusted balancer that sends none is refused too.
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tether::api::{HubClient, HubClientError};
use tether::client::{ClientSession, Profile, RelayEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_cli, login, token_of};

/// The balancer's address as the hub and relays see it (HAProxy's `source`).
const BALANCER: &str = "127.0.0.9";

/// Sends `bytes` from `from` (or any loopback address) to `to`; returns
/// whether the server closed the connection without answering a byte.
async fn refused(from: Option<&str>, to: SocketAddr, bytes: &[u8]) -> bool {
    let sock = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    }
    let mut tcp: TcpStream = sock.connect(to).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

async fn session_via(hub: &HubClient, token: &str) -> Result<Value, HubClientError> {
    let body = json!({"device": DEVICE, "service": "echo", "reason": "PROXY protocol", "client_key": "00ff"});
    hub.request::<Value, Value>(Method::POST, "/api/v1/sessions", Some(token), Some(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_from_the_balancer_are_honoured_and_forged_ones_refused() {
    let Some(bin) = crate::haproxy::haproxy() else {
        assert!(std::env::var("CI").is_err(), "haproxy is not installed but CI must run this test");
        eprintln!("SKIPPED: haproxy is not installed (apt-get install -y haproxy)");
        return;
    };
    let trusted = "proxy_protocol_from = [\"127.0.0.9/32\"]\n";
    let fleet = Fleet::start(Opts {
        relays: 2,
        twins: true,
        hub: true,
        hub_extra: trusted,
        relay_top: trusted,
        ..Opts::default()
    })
    .await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let hub_addr = fleet.hub.as_ref().unwrap().addr;
    let relay_a = fleet.relays[0].client;
    let (hub_front, relay_front) = (free_port(), free_port());
    let cfg = format!(
        "global\n    maxconn 100\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1m\n    timeout server 1m\n\
         frontend hub\n    bind {hub_front}\n    default_backend hub\n\
         backend hub\n    server hub {hub_addr} send-proxy-v2 source {BALANCER} check inter 100ms\n\
         frontend relay\n    bind {relay_front}\n    default_backend relay\n\
         backend relay\n    server relay-a {relay_a} send-proxy-v2 source {BALANCER}\n"
    );
    let _lb = crate::haproxy::start(bin, &fleet.dir().join("haproxy.cfg"), &cfg);

    // The hub's site rule sees the specialist (127.0.0.1), not the balancer.
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&login(&fleet, "boss", &boss).await);
    let ca = fleet.pki.path("ca.pem");
    let via_lb = HubClient::new(&format!("https://{hub_front}"), &ca, None, Some("localhost")).unwrap();
    hub_cli(&fleet, &["site", "set", "st-marys", "--allow-from", "127.0.0.1/32"], "").await;
    let mut granted = None;
    for _ in 0..100 {
        match session_via(&via_lb, &token).await {
            Ok(v) => {
                granted = Some(v);
                break;
            }
            // The hub routes only to a device a relay has reported (every 250 ms).
            Err(HubClientError::Api { code, .. }) if code == "device_offline" => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(HubClientError::Api { code, message, .. }) => panic!("refused through the balancer: {code} {message}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await, // HAProxy still starting
        }
    }
    assert!(granted.is_some(), "no grant through the balancer");
    hub_cli(&fleet, &["site", "set", "st-marys", "--allow-from", &format!("{BALANCER}/32")], "").await;
    match session_via(&via_lb, &token).await {
        Err(HubClientError::Api { status: 403, code, message }) => {
            assert_eq!(code, "source_not_allowed");
            assert!(message.contains("from 127.0.0.1"), "{message}");
        }
        other => panic!("the balancer's address must not pass the site rule: {other:?}"),
    }
    hub_cli(&fleet, &["site", "set", "st-marys", "--allow-from", ""], "").await;

    // The relay's audit names the specialist behind the balancer.
    let profile = Profile {
        relays: vec![RelayEntry {
            name: "relay-a".into(),
            addr: relay_front.to_string(),
            server_name: Some("localhost".into()),
        }],
        ..fleet.profile()
    };
    let session = ClientSession::open(&profile, DEVICE, "echo").await.expect("a session through HAProxy");
    let id = session.id.to_string();
    let start = fleet
        .relay_audit(0)
        .into_iter()
        .find(|r| r["event"] == "session_start" && r["session"] == id.as_str())
        .expect("session_start at relay-a");
    let client = start["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "the relay saw {client}, not the specialist");
    let addr = serve(&session).await;
    let transfer = Transfer::start(addr, random(1 << 20)).await;

    // Forged headers, straight to the hub and the relay, from an untrusted source.
    let forged = tether::util::proxy::header("10.1.2.3:4444".parse().unwrap(), hub_addr);
    assert!(refused(None, hub_addr, &forged).await, "the hub accepted a forged PROXY header");
    assert!(refused(None, relay_a, &forged).await, "the relay accepted a forged PROXY header");
    // The balancer's address without a header (a balancer misconfigured).
    let hello = [0x16u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 0, 0, 0, 0, 0];
    assert!(refused(Some(BALANCER), hub_addr, &hello).await, "the hub took a trusted source without a header");
    assert!(refused(Some(BALANCER), relay_a, &hello).await, "the relay took a trusted source without a header");

    // Counted and audited at the relay (the refused connection is closed
    // first, so the count may land a moment after the peer saw the close)...
    let counts = async || {
        (
            fleet.metric(0, "tether_relay_handshake_failures_total", &["client", "proxy_header_untrusted"]).await,
            fleet.metric(0, "tether_relay_handshake_failures_total", &["client", "proxy_header_missing"]).await,
        )
    };
    eventually("both refusals counted", async || counts().await == (1.0, 1.0)).await;
    assert_eq!(counts().await, (1.0, 1.0), "counted once each");
    let audit = fleet.relay_audit(0);
    for reason in ["proxy_header_untrusted", "proxy_header_missing"] {
        assert!(
            audit.iter().any(|r| r["event"] == "handshake_refused" && r["reason"] == reason),
            "no handshake_refused {reason} in the relay's audit"
        );
    }
    // ... and at the hub (one aggregate record per 10 s).
    let plain = HubClient::new(&fleet.hub.as_ref().unwrap().url(), &ca, None, None).unwrap();
    let hub_count = async |reason: &str| {
        let (_, metrics) = plain.call(Method::GET, "/metrics", None, None).await.unwrap();
        parse_metric(&String::from_utf8_lossy(&metrics), "tether_hub_refusals_total", &[reason])
    };
    for reason in ["proxy_header_untrusted", "proxy_header_missing"] {
        eventually("the hub counted the refusal", async || hub_count(reason).await == 1.0).await;
        assert_eq!(hub_count(reason).await, 1.0, "{reason} counted once");
    }
    let mut audited = false;
    for _ in 0..300 {
        let audit = hub_audit(&fleet, &token).await;
        let dropped = |reason: &str| {
            audit.iter().any(|r| r["event"] == "connections_dropped" && r["dropped"][reason].as_u64() >= Some(1))
        };
        if dropped("proxy_header_untrusted") && dropped("proxy_header_missing") {
            audited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(audited, "the hub did not audit the refused headers");

    // HAProxy's health checks of the hub (a LOCAL header, then a reset)
    // refuse nothing: counted as closed_early, never logged above debug nor
    // audited (they came every 2 s, each an INFO line and a `reset` drop).
    eventually("health checks counted", async || hub_count("closed_early").await >= 5.0).await;
    let log = std::fs::read_to_string(fleet.dir().join("hub.log")).unwrap();
    // (The one line from the balancer's address is the header-less hello above.)
    let from_lb = |l: &&str| l.contains(&format!("peer={BALANCER}:")) && !l.contains("proxy_header_missing");
    let noisy: Vec<_> = log.lines().filter(from_lb).collect();
    assert!(noisy.is_empty(), "the balancer's health checks were logged: {noisy:?}");
    assert_eq!(hub_count("reset").await, 0.0, "no health check counted as a reset");
    let audit = hub_audit(&fleet, &token).await;
    assert!(
        !audit.iter().any(|r| r["dropped"]["closed_early"].is_number() || r["dropped"]["reset"].is_number()),
        "health checks were audited"
    );

    // The session through the balancer was untouched by all of it.
    transfer.finish("after forged headers").await;
    assert!(session.end_reason().is_none());
}
