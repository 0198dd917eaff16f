//! QUIC legs: a session end to end over QUIC (post-quantum keys, the
//! agent's UDP sockets connected to its relays), `auto` falling back to TCP
//! where UDP is blocked and returning to QUIC, UDP blocked mid-session, and
//! a relay killed under a QUIC session.
use std::time::Duration;

use tether::agent::operator::{Request, request};
use tether::{quic, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::udp_gate::{UdpGate, twins_behind_gates};

/// An echo exchange through `addr` that takes a while: `chunks` chunks of
/// 16 KiB, one every 10 ms, each checked as it comes back.
fn paced_echo(addr: std::net::SocketAddr, chunks: usize) -> tokio::task::JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let (mut r, mut w) = TcpStream::connect(addr).await.map_err(|e| e.to_string())?.into_split();
        let data = random(chunks * 16 * 1024);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for c in sent.chunks(16 * 1024) {
                w.write_all(c).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            w.shutdown().await
        });
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.map_err(|e| format!("the local connection saw an error: {e}"))?;
        writer.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        if got != data {
            return Err(format!("{} bytes back of {}, or changed", got.len(), data.len()));
        }
        Ok(got.len())
    })
}

fn attached_over(records: &[serde_json::Value], transport: &str) -> usize {
    records.iter().filter(|r| r["event"] == "agent_attached" && r["transport"] == transport).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_over_quic_with_post_quantum_keys_and_connected_udp_sockets() {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, transport: "quic", ..Opts::default() }).await;
    for i in 0..2 {
        assert_eq!(attached_over(&fleet.relay_audit(i), "quic"), 1, "relay {i}: the agent attached over QUIC");
        assert_eq!(attached_over(&fleet.relay_audit(i), "tcp"), 0);
    }
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "quic");
    // Several connections at once, each its own stream, bytes both ways.
    let transfers: Vec<_> = futures_join(addr, 4).await;
    for t in transfers {
        t.finish("over QUIC").await;
    }
    // Every leg was a QUIC stream: no TCP leg reached either listener.
    let m = fleet.metrics(0).await;
    for listener in ["control", "data", "client"] {
        let opened = parse_metric(&m, "tether_relay_open_connections", &[&format!("listener=\"{listener}\"")]);
        assert_eq!(opened, 0.0, "a TCP {listener} connection is open");
    }
    for surface in ["quic-agent", "quic-client"] {
        let pq =
            parse_metric(&m, "tether_tls_handshakes_total", &[&format!("surface=\"{surface}\""), "X25519MLKEM768"]);
        assert!(pq >= 1.0, "{surface}: no X25519MLKEM768 handshake");
        let other =
            parse_metric(&m, "tether_tls_handshakes_total", &[&format!("surface=\"{surface}\""), "group=\"X25519\""]);
        assert_eq!(other, 0.0, "{surface}: a classical handshake");
    }
    // The agent's UDP sockets are connected to their relays: nothing else
    // can reach them, and none is listening (unconnected).
    let pid = fleet.agent.as_ref().unwrap().pid();
    let udp = udp_sockets(pid);
    assert_eq!(udp.len(), 2, "one UDP socket per relay: {udp:?}");
    for (state, remote) in &udp {
        assert_eq!(state, "01", "an agent UDP socket is not connected (state {state}): {udp:?}");
        assert!(!remote.starts_with("00000000:"), "an agent UDP socket has no peer: {udp:?}");
    }
}

/// Four transfers of 2 MiB through `addr` at once.
async fn futures_join(addr: std::net::SocketAddr, n: usize) -> Vec<Transfer> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Transfer::start(addr, random(2 << 20)).await);
    }
    out
}

/// (state, remote address) of each UDP socket `pid` holds, from /proc.
pub fn udp_sockets(pid: u32) -> Vec<(String, String)> {
    let mine = crate::no_listen::socket_inodes(pid);
    let mut out = Vec::new();
    for file in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 10 && mine.contains(f[9]) {
                out.push((f[3].to_string(), f[2].to_string()));
            }
        }
    }
    out
}

/// One relay whose QUIC ports sit behind gates the test opens and closes.
async fn gated(agent_blocked: bool, client_blocked: bool) -> (Fleet, UdpGate, UdpGate) {
    gated_with(agent_blocked, client_blocked, usize::MAX).await
}

/// As [`gated`], the gates dropping datagrams of more than `max` bytes.
async fn gated_with(agent_blocked: bool, client_blocked: bool, max: usize) -> (Fleet, UdpGate, UdpGate) {
    let opts = Opts {
        transport: "auto",
        quic_reprobe_secs: 1,
        agent: false,
        relay_top: "quic_agents = \"127.0.0.1:0\"\nquic_clients = \"127.0.0.1:0\"\n",
        ..Opts::default()
    };
    let mut fleet = Fleet::start(opts).await;
    let r = &fleet.relays[0];
    // The agent and the client send UDP to the TCP ports' numbers (their
    // defaults); the gates sit there.
    let agent_gate = UdpGate::start(r.data, r.quic_agents.unwrap(), agent_blocked, max).await;
    let client_gate = UdpGate::start(r.client, r.quic_clients.unwrap(), client_blocked, max).await;
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    (fleet, agent_gate, client_gate)
}

/// The agent's count of control channels `auto` put on relay-a's TCP, for `why`.
async fn quic_not_used(fleet: &Fleet, why: &str) -> f64 {
    let m = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    let labels = ["relay=\"relay-a\"".to_string(), format!("why=\"{why}\"")];
    parse_metric(m["text"].as_str().unwrap(), "tether_agent_quic_not_used_total", &[&labels[0], &labels[1]])
}

async fn echo_once(addr: std::net::SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    within(30, c.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_where_udp_is_blocked_and_returns_to_quic() {
    let (fleet, agent_gate, client_gate) = gated(true, true).await;
    assert_eq!(attached_over(&fleet.relay_audit(0), "tcp"), 1, "UDP blocked: the agent attached over TCP");
    assert_eq!(attached_over(&fleet.relay_audit(0), "quic"), 0);
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "tcp", "UDP blocked: the session runs over TCP");
    assert_eq!(quic_not_used(&fleet, "no_answer").await, 1.0, "counted, with why");
    echo_once(addr).await;
    session.close();
    eventually("the session ends at the agent", async || {
        fleet.agent_audit().iter().any(|r| r["event"] == "session_end")
    })
    .await;

    // UDP opens: the agent's next re-probe (every second here, while no
    // session is live) moves its control channel to QUIC.
    agent_gate.open();
    client_gate.open();
    eventually("the agent moves to QUIC", async || attached_over(&fleet.relay_audit(0), "quic") == 1).await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "quic", "UDP open: a new session runs over QUIC");
    echo_once(addr).await;
    let log = std::fs::read_to_string(fleet.dir().join("agent.log")).unwrap();
    assert!(log.contains("moving the control channel to QUIC"), "the agent says why it moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_mid_session_moves_the_session_to_tcp_without_losing_bytes() {
    let (fleet, _agent_gate, client_gate) = gated(false, false).await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "quic");
    let transfer = paced_echo(addr, 400);
    tokio::time::sleep(Duration::from_millis(800)).await;
    client_gate.block();
    let moved = within(60, transfer).await.unwrap();
    assert_eq!(moved, Ok(400 * 16 * 1024), "every byte came back, in order");
    assert_eq!(session.transport(), "tcp", "the session's legs moved to TCP");
    assert!(session.end_reason().is_none(), "the session ended: {:?}", session.end_reason());
    // The session goes on over TCP: a new connection works.
    echo_once(addr).await;
}

/// A path that carries no UDP datagram larger than Ethernet's (1 472 bytes
/// of payload: a firewall, VPN or tunnel that drops the rest) carries a QUIC
/// session in full: each end's path MTU discovery probes for larger
/// datagrams, the path drops the probes, and both hops stay at what gets
/// through, with no byte lost and no move to TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_drops_datagrams_larger_than_ethernet_still_carries_a_quic_session() {
    let (fleet, agent_gate, client_gate) = gated_with(false, false, 1472).await;
    // On a loaded host TCP may win the agent's race (QUIC's head start is
    // 250 ms); its re-probe (every second here) moves it to QUIC while no
    // session is live. This test is about the agent's QUIC hop too.
    eventually("the agent is attached over QUIC", async || attached_over(&fleet.relay_audit(0), "quic") == 1).await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "quic");
    let moved = within(60, paced_echo(addr, 100)).await.unwrap();
    assert_eq!(moved, Ok(100 * 16 * 1024), "every byte came back, in order");
    // At full speed too: 4 MiB written at once, echoed.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let data = random(4 << 20);
    let (mut r, mut w) = c.split();
    let mut back = vec![0u8; data.len()];
    let (wrote, read) = within(60, async { tokio::join!(w.write_all(&data), r.read_exact(&mut back)) }).await;
    wrote.unwrap();
    read.unwrap();
    assert!(back == data, "the bulk echo came back changed");
    assert_eq!(session.transport(), "quic", "the session stayed on QUIC");
    assert!(session.end_reason().is_none(), "the session ended: {:?}", session.end_reason());
    let (a, c) = (agent_gate.oversized(), client_gate.oversized());
    assert!(a > 0 && c > 0, "both hops probed for larger datagrams and lost the probes ({a}, {c} dropped)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_session_survives_the_death_of_its_relay() {
    let mut fleet = Fleet::start(Opts { relays: 2, twins: true, transport: "quic", ..Opts::default() }).await;
    fleet.wait_twin_links().await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!((session.relay.name.as_str(), session.transport()), ("relay-a", "quic"));
    // The first connection's end-to-end TLS keys the next: the one that resumes.
    echo_once(addr).await;
    let transfer = paced_echo(addr, 300);
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet.relays[0].proc.kill(); // SIGKILL: no CONNECTION_CLOSE reaches anyone
    let moved = within(60, transfer).await.unwrap();
    assert_eq!(moved, Ok(300 * 16 * 1024), "every byte came back, in order");
    assert_eq!(session.current_relay().name, "relay-b");
    assert_eq!(session.transport(), "quic", "the twin took the session over QUIC");
    assert!(session.end_reason().is_none(), "the session ended: {:?}", session.end_reason());
    echo_once(addr).await;
}

/// A relay killed while only the client had something to send: the client
/// hears the relay's port refuse at once and resumes through the twin,
/// which hands the agent a new leg. The agent's own leg to the dead relay
/// gives it no sign (its datagrams vanish here, as behind a firewall that
/// drops), and it would notice only after 2 s of silence; the new leg tells
/// it that the client has left, and it takes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_a_handed_leg_at_once_though_its_own_gives_no_sign_of_death() {
    let (mut fleet, gates) = twins_behind_gates(Opts::default()).await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!((session.relay.name.as_str(), session.transport()), ("relay-a", "quic"));
    // The first connection's end-to-end TLS keys the next: the one that resumes.
    echo_once(addr).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"before").await.unwrap();
    let mut b = [0u8; 6];
    within(30, c.read_exact(&mut b)).await.unwrap();
    gates[0].block();
    fleet.relays[0].proc.kill();
    c.write_all(b"after!").await.unwrap();
    within(30, c.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"after!");
    assert_eq!(session.current_relay().name, "relay-b");
    let log = std::fs::read_to_string(fleet.dir().join("agent.log")).unwrap();
    assert!(log.contains("why=the peer resumed on a new leg"), "the agent took the handed leg for what it was:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_at_once_share_one_quic_connection_per_side() {
    // Past the 16 streams a peer may open at first, on the session's and
    // the agent's connections alike: the relay raises the limits as they
    // fill, and no connection waits, fails or is made twice.
    let fleet = Fleet::start(Opts { transport: "quic", ..Opts::default() }).await;
    let (session, addr) = serve_locally(&fleet).await;
    let mut held = Vec::new();
    for i in 0..100u8 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        within(10, c.read_exact(&mut b)).await.unwrap();
        assert_eq!(b[0], i);
        held.push(c);
    }
    assert_eq!(session.transport(), "quic");
    let m = fleet.metrics(0).await;
    let conns = |surface: &str| parse_metric(&m, "tether_tls_handshakes_total", &[&format!("surface=\"{surface}\"")]);
    assert_eq!((conns("quic-client"), conns("quic-agent")), (1.0, 1.0), "one QUIC connection each");
    assert!(parse_metric(&m, "tether_relay_open_connections", &["listener=\"quic-client\""]) >= 101.0);
    assert_eq!(fleet.metric(0, "tether_relay_tunnels_resumed_total", &[]).await, 0.0, "no leg was replaced");
}

/// A relay that runs no QUIC: its UDP ports answer "port unreachable", and
/// `auto` takes TCP at once, saying why, instead of waiting out QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_takes_tcp_at_once_where_the_relays_udp_port_refuses() {
    let opts = Opts { transport: "auto", relay_top: "quic = false\n", ..Opts::default() };
    let fleet = Fleet::start(opts).await;
    assert_eq!(attached_over(&fleet.relay_audit(0), "tcp"), 1, "no QUIC at the relay: the agent attached over TCP");
    let log = std::fs::read_to_string(fleet.dir().join("agent.log")).unwrap();
    assert!(log.contains("the relay's UDP port refused it"), "the agent says why it uses TCP:\n{log}");
    assert_eq!(quic_not_used(&fleet, "refused").await, 1.0, "counted, with why");
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "tcp");
    echo_once(addr).await;

    // The refusal ends the attempt itself: with a handshake timeout of a
    // minute, the error is the refusal, not the timeout.
    let client = fleet.relays[0].client.to_string();
    let cfg = tls::quic_client_config(&fleet.pki.path("ca.pem"), None, None, tls::ALPN_QUIC_CLIENT).unwrap();
    let dial = quic::connect(&client, "localhost", cfg, (Duration::from_secs(60), quic::Dialler::Session));
    let e = within(30, dial).await.expect_err("nothing serves QUIC there");
    assert!(matches!(e, quic::QuicError::Refused), "{e}");
}

/// A relay that dies under a QUIC connection: its host answers the next
/// datagram with "port unreachable", and the connection closes on that,
/// rather than when its keep-alives go unanswered (the session's idle
/// timeout here is 5 s; the handshake's 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_closes_at_once_when_its_relays_port_refuses() {
    let mut fleet = Fleet::start(Opts { transport: "quic", ..Opts::default() }).await;
    let client = fleet.relays[0].client.to_string();
    let cfg = tls::quic_client_config(&fleet.pki.path("ca.pem"), None, None, tls::ALPN_QUIC_CLIENT).unwrap();
    let conn =
        quic::connect(&client, "localhost", cfg, (Duration::from_secs(60), quic::Dialler::Session)).await.unwrap();
    fleet.relays[0].proc.kill();
    // Something to send: the first datagram after the relay is gone is
    // refused (an acknowledgement quinn sends on its own may be first).
    // A write is answered by two loss probes, back to back: the second
    // takes the first one's refusal before anything watching the socket
    // can, which the socket must still see.
    if let Ok((mut send, _recv)) = conn.open_bi().await {
        let _ = send.write_all(b"anyone?").await;
    }
    let e = within(30, conn.closed()).await;
    assert!(matches!(e, quinn::ConnectionError::LocallyClosed), "closed on the refusal, not a timeout: {e}");
}

/// A QUIC connection its owner drops is closed for it, at once: the relay
/// hears the close rather than waiting out the idle timeout (5 s for a
/// session), whatever watches the connection for refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_quic_connection_is_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (endpoint, addr) = crate::quic_inputs::agent_listener(&pki);
    let accepted = tokio::spawn(async move { endpoint.accept().await.unwrap().await.unwrap() });
    let (cert, key, _) = pki.device_cert("drop-1", tls::pki::Validity::days(1));
    let cfg =
        tls::quic_client_config(&pki.path("ca.pem"), None, Some((cert.as_path(), key.as_path())), tls::ALPN_QUIC_AGENT)
            .unwrap();
    let conn = quic::connect(&addr.to_string(), "localhost", cfg, (Duration::from_secs(5), quic::Dialler::Session))
        .await
        .unwrap();
    let server_conn = within(30, accepted).await.unwrap();
    drop(conn);
    let e = within(30, server_conn.closed()).await;
    assert!(
        matches!(&e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(0)),
        "the dropped connection was closed, not timed out: {e}"
    );
}

/// A relay's QUIC connection drops its TLS state once the handshake is done
/// (vendor/quinn-proto/TETHER-PATCHES.md, change 4: about 5 KiB per
/// attached agent): what the relay reads afterwards, the device's
/// certificate and the ALPN, is kept; its exporter is gone (tether exports
/// only from the end-to-end TLS), the agent's side keeps its own; and the
/// connection still carries streams both ways across a key update the relay
/// starts after that, whose keys come from the secrets the session keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_quic_connection_keeps_what_it_needs_of_tls_after_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (endpoint, addr) = crate::quic_inputs::agent_listener(&pki);
    let echo = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        for _ in 0..3 {
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            conn.force_key_update();
        }
        conn
    });
    let (conn, cert) = dial_as_device(&pki, "tls-kept-1", addr).await;
    for n in 0..3u8 {
        let data = random(64 << 10 | n as usize);
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let back = within(10, recv.read_to_end(1 << 20)).await.unwrap();
        assert!(back == data, "round trip {n}: other bytes came back ({} of {})", back.len(), data.len());
    }
    let server = within(10, echo).await.unwrap();
    let certs = server.peer_identity().unwrap().downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().unwrap();
    assert_eq!(certs[0].as_ref(), std::fs::read(&cert).map(|pem| pem_der(&pem)).unwrap(), "the device's certificate");
    let hs = server.handshake_data().unwrap().downcast::<quinn::crypto::rustls::HandshakeData>().unwrap();
    assert_eq!(hs.protocol.as_deref(), Some(tls::ALPN_QUIC_AGENT));
    let mut k = [0u8; 32];
    assert!(server.export_keying_material(&mut k, b"tether test", b"").is_err(), "the relay's TLS state is gone");
    assert!(conn.export_keying_material(&mut k, b"tether test", b"").is_ok(), "the agent's stays");
    assert_eq!(server.stats().path.lost_packets, 0);
}

/// A QUIC connection to `addr` as an agent, with a new certificate for
/// device `id`; and that certificate's file.
pub(crate) async fn dial_as_device(
    pki: &Pki,
    id: &str,
    addr: std::net::SocketAddr,
) -> (quinn::Connection, std::path::PathBuf) {
    let (cert, key, _) = pki.device_cert(id, tls::pki::Validity::days(1));
    let cfg =
        tls::quic_client_config(&pki.path("ca.pem"), None, Some((cert.as_path(), key.as_path())), tls::ALPN_QUIC_AGENT)
            .unwrap();
    let conn = quic::connect(&addr.to_string(), "localhost", cfg, (Duration::from_secs(5), quic::Dialler::Agent))
        .await
        .unwrap();
    (conn, cert)
}

/// The DER of the first certificate in a PEM file.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    let mut rd = pem;
    rustls_pemfile::certs(&mut rd).next().unwrap().unwrap().to_vec()
}
