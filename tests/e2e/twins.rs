//! Twin relays replicate session state: a grant used on one twin is refused
//! on the other, and either twin pairs a session's connections.
use tether::proto::{Frame, FrameIo, Reason, VERSION};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

async fn twins() -> Fleet {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, ..Opts::default() }).await;
    for i in 0..2 {
        for dir in ["in", "out"] {
            eventually("twin link up", async || {
                fleet.metric(i, "tether_twin_link_up", &[&format!("direction=\"{dir}\"")]).await == 1.0
            })
            .await;
        }
    }
    fleet
}

/// Waits until relay `i`'s twin has acknowledged every fact `i` sent.
async fn replicated(fleet: &Fleet, i: usize) {
    eventually("replication caught up", async || {
        fleet.metric(i, "tether_twin_replication_lag_events", &[]).await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_used_on_one_twin_is_refused_on_the_other() {
    let fleet = twins().await;
    let grant = fleet.grant(|_| {});
    assert!(matches!(fleet.open_raw(0, grant.clone(), "echo").await, Frame::SessionReady { .. }));
    replicated(&fleet, 0).await;
    match fleet.open_raw(1, grant, "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("the twin admitted a used grant: {other:?}"),
    }
    assert!(audited(&fleet.relay_audit(1), "client_refused", "grant_reused"));
    // The twin refused from replicated state, without asking the device (whose
    // own replay cache would also refuse it).
    assert!(
        !audited(&fleet.agent_audit(), "access_refused", "grant_reused"),
        "the twin forwarded a used grant to the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_twin_pairs_a_sessions_connections() {
    let fleet = twins().await;
    let session = fleet.session("echo").await;
    assert_eq!(session.relay.name, "relay-a");
    replicated(&fleet, 0).await;

    // A connection of that session lands on the twin (as a load balancer may send it).
    let twin = fleet.profile().relays[1].clone();
    let mut t = within(30, session.connect_via(&twin)).await.expect("the twin pairs the session");
    t.write_all(b"via the twin").await.unwrap();
    t.flush().await.unwrap();
    let mut buf = [0u8; 12];
    within(30, t.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"via the twin");
    let id = session.id.to_string();
    assert!(fleet.relay_audit(1).iter().any(|r| r["event"] == "session_adopted" && r["session"] == id.as_str()));
    assert_eq!(fleet.metric(1, "tether_relay_tunnels_total", &[]).await, 1.0);

    // The session ends where it was admitted; the twin ends its copy too.
    session.close();
    eventually("the twin ends the adopted session", async || {
        fleet
            .relay_audit(1)
            .iter()
            .any(|r| r["event"] == "session_end" && r["session"] == id.as_str() && r["adopted"] == true)
    })
    .await;
    let mut rest = [0u8; 1];
    let r = within(10, t.read(&mut rest)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "the tunnel on the twin outlived its session: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_link_refuses_anyone_but_the_twin() {
    let fleet = twins().await;
    // A valid fleet certificate that is not the twin's (a device's).
    let (c, k) = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&c, &k)), tether::twin::link::ALPN_TWIN).unwrap();
    let plan = std::fs::read_to_string(fleet.dir().join("relay-b.toml")).unwrap();
    let listen = plan.lines().find_map(|l| l.strip_prefix("listen = ")).unwrap().trim_matches('"').to_string();
    let conn = tls::dial(&listen, "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn);
    let _ = io.write_frame(&Frame::TwinHello { version: VERSION, relay: "relay-a".into() }).await;
    let ans = within(10, io.read_frame()).await;
    assert!(matches!(ans, Ok(Frame::Error { .. }) | Err(_)), "{ans:?}");
    eventually("the impostor is counted", async || {
        fleet.metric(1, "tether_relay_handshake_failures_total", &["reason=\"not_the_twin\""]).await >= 1.0
    })
    .await;
}
