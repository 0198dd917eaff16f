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

/// Waits until relay `i`'s link to its twin is up and the twin has
/// acknowledged every fact `i` sent (the lag is counted only while the link
/// is up).
pub async fn replicated(fleet: &Fleet, i: usize) {
    eventually("replication caught up", async || {
        fleet.metric(i, "tether_twin_link_up", &["direction=\"out\""]).await == 1.0
            && fleet.metric(i, "tether_twin_replication_lag_events", &[]).await == 0.0
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
    let mut t = within(30, session.connect_via(&twin)).await.expect("the twin pairs the session").0;
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
    // A valid relay certificate that is not the twin's (a third relay's).
    let issued = fleet.pki.ca.issue_relay("relay-c", &["relay-c"]).unwrap();
    issued.write(&fleet.pki.dir, "relay-c").unwrap();
    let (c, k) = (fleet.pki.path("relay-c.pem"), fleet.pki.path("relay-c.key"));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&c, &k)), tether::twin::link::ALPN_TWIN).unwrap();
    let listen = fleet.relays[1].twin.unwrap().to_string();
    // A connection that says nothing: refused at the handshake's deadline.
    let _silent = tokio::net::TcpStream::connect(&listen).await.unwrap();
    let conn = tls::dial(&listen, "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn);
    let _ = io.write_frame(&Frame::TwinHello { version: VERSION, relay: "relay-a".into() }).await;
    let ans = within(10, io.read_frame()).await;
    assert!(matches!(ans, Ok(Frame::Error { .. }) | Err(_)), "{ans:?}");
    eventually("the impostor is counted", async || {
        fleet.metric(1, "tether_relay_handshake_failures_total", &["reason=\"not_the_twin\""]).await >= 1.0
    })
    .await;
    // A TCP connection closed before its first byte (a health check, a port
    // scan): counted, nothing refused.
    let mut tcp = tokio::net::TcpStream::connect(&listen).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert_eq!(within(10, tcp.read(&mut [0u8; 1])).await.unwrap(), 0);
    eventually("the early close is counted", async || {
        let labels = ["listener=\"twin\"", "reason=\"closed_early\""];
        fleet.metric(1, "tether_relay_handshake_failures_total", &labels).await == 1.0
    })
    .await;
    eventually("the silent one is refused at the deadline", async || {
        let labels = ["listener=\"twin\"", "reason=\"timeout\""];
        fleet.metric(1, "tether_relay_handshake_failures_total", &labels).await == 1.0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // None took the real twin's link down (each had: a stranger's ending
    // marked the link from the twin down, until the twin reconnected).
    assert_eq!(fleet.metric(1, "tether_twin_link_up", &["direction=\"in\""]).await, 1.0);
    let refused: Vec<_> = fleet.relay_audit(1).into_iter().filter(|r| r["event"] == "handshake_refused").collect();
    let reasons: Vec<_> = refused.iter().map(|r| r["reason"].as_str().unwrap_or_default()).collect();
    assert_eq!(reasons, ["not_the_twin", "timeout"], "the early close is not audited: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_partition_both_serve_and_a_replayed_grant_is_useless() {
    use tether::stream::e2e::ClientKey;
    let fleet = Fleet::start(Opts { relays: 2, twins: true, ..Opts::default() }).await;
    let proxies = &fleet.links;
    for i in 0..2 {
        eventually("twin link up", async || fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0)
            .await;
    }

    // A silent partition (no FIN, no RST) is noticed by the link's heartbeat.
    proxies[0].go_silent();
    proxies[1].go_silent();
    for i in 0..2 {
        eventually("silent partition noticed", async || {
            fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 0.0
                && fleet.metric(i, "tether_twin_link_up", &["direction=\"out\""]).await == 0.0
        })
        .await;
    }
    // Partition: the twins no longer hear each other.
    proxies[0].cut();
    proxies[1].cut();
    for i in 0..2 {
        eventually("twin link down", async || {
            fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 0.0
        })
        .await;
    }
    // Both keep serving the device attached to them.
    let owner = ClientKey::generate().unwrap();
    let grant = fleet.grant(|g| g.client_key = owner.public_key().to_vec().into());
    assert!(matches!(fleet.open_raw(0, grant.clone(), "echo").await, Frame::SessionReady { .. }));
    let other = fleet.grant(|_| {});
    assert!(matches!(fleet.open_raw(1, other, "echo").await, Frame::SessionReady { .. }));

    // The grant used on relay-a has not reached relay-b: presented there, it
    // is admitted by the relay, but the device's own replay cache refuses it,
    // and even a fresh session id would be useless without the client key
    // (e2e_tls::a_grant_is_useless_without_the_client_key_it_names).
    match fleet.open_raw(1, grant.clone(), "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("a replayed grant got a session during the partition: {other:?}"),
    }
    assert!(audited(&fleet.agent_audit(), "access_refused", "grant_reused"), "the device refused the replay itself");

    // Heal: the views converge; relay-b now refuses the replay on its own.
    proxies[0].heal();
    proxies[1].heal();
    for i in 0..2 {
        eventually("twin link heals", async || {
            fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0
                && fleet.metric(i, "tether_twin_replication_lag_events", &[]).await == 0.0
        })
        .await;
    }
    let before = fleet.agent_audit().iter().filter(|r| r["event"] == "access_refused").count();
    match fleet.open_raw(1, grant, "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fleet.agent_audit().iter().filter(|r| r["event"] == "access_refused").count(),
        before,
        "after healing, the twin refuses from replicated state without asking the device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_attached_only_to_one_twin_is_reached_through_the_other() {
    let mut fleet = Fleet::start(Opts { relays: 2, twins: true, agent: false, ..Opts::default() }).await;
    // The agent reaches relay-b's data port but not its control port (attached only to relay-a).
    let text = std::fs::read_to_string(&fleet.agent_cfg).unwrap();
    let b_control = format!("control = \"{}\"", fleet.relays[1].control);
    assert!(text.contains(&b_control));
    std::fs::write(&fleet.agent_cfg, text.replace(&b_control, "control = \"127.0.0.1:9\"")).unwrap();
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    assert_eq!(fleet.metric(1, "tether_relay_agents_attached", &[]).await, 0.0);
    for i in 0..2 {
        eventually("twin link up", async || fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0)
            .await;
    }
    replicated(&fleet, 0).await;

    let session = fleet.session("echo").await;
    let twin = fleet.profile().relays[1].clone();
    let mut t = within(30, session.connect_via(&twin)).await.expect("reached through the twin").0;
    t.write_all(b"around").await.unwrap();
    t.flush().await.unwrap();
    let mut buf = [0u8; 6];
    within(30, t.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"around");
    // The request went over the twin link; the data leg came to relay-b.
    assert_eq!(fleet.metric(1, "tether_relay_tunnels_total", &[]).await, 1.0);
    assert_eq!(fleet.metric(0, "tether_relay_tunnels_total", &[]).await, 0.0);
}

/// Found by the soak: a relay died, came back empty, and its first snapshot
/// made the survivor forget the sessions the dead one carried, while their
/// clients (slowed by a crowd reconnecting at once) had not moved yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_its_carrier_restarting_before_its_client_moves() {
    use tether::proto::{LegSide, leg_mac};
    let mut fleet = twins().await;
    // A session admitted by relay 1, driven by hand: its client is slow to move.
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut control = FrameIo::new(tls::dial(&fleet.relays[1].client.to_string(), "localhost", cfg).await.unwrap());
    control
        .write_frame(&Frame::ClientOpen { version: VERSION, grant: fleet.grant(|_| {}), service: "echo".into() })
        .await
        .unwrap();
    let Frame::SessionReady { session, token, twin_holds, .. } = within(30, control.read_frame()).await.unwrap() else {
        panic!("no session")
    };
    assert!(twin_holds, "relay 0 did not hold the session before it was ready");
    let before = fleet.metric(0, "tether_twin_snapshots_received_total", &[]).await;
    // Relay 1 dies and is back, knowing nothing, before the client moves.
    fleet.restart_relay(1);
    drop(control);
    eventually("relay 0 took the restarted twin's snapshot", async || {
        fleet.metric(0, "tether_twin_snapshots_received_total", &[]).await > before
    })
    .await;
    // The client moves its control leg to relay 0: the session is still there.
    let moved = Frame::ClientResume { version: VERSION, session, mac: leg_mac(&token, LegSide::Control, &session, 0) };
    let ans = fleet.client_exchange(0, moved).await;
    assert!(matches!(ans, Frame::SessionReady { .. }), "{ans:?}");
    // And a new connection of it pairs with the device through relay 0.
    let mac = leg_mac(&token, LegSide::Client { resumes: 0 }, &session, 1);
    let ans = fleet.client_exchange(0, Frame::ClientJoin { version: VERSION, session, conn: 1, mac, resumes: 0 }).await;
    assert!(matches!(ans, Frame::Paired { .. }), "{ans:?}");
    assert!(
        audited(&fleet.relay_audit(0), "session_adopted", "")
            || fleet.relay_audit(0).iter().any(|r| r["event"] == "session_adopted")
    );
}
