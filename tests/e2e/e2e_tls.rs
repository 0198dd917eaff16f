//! End-to-end TLS between client and agent: the relay carries ciphertext it
//! cannot read, cannot alter undetected, and a grant is useless without the
//! client key it names.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether::client::ClientSession;
use tether::proto::{Frame, FrameIo, Reason, VERSION};
use tether::relay::{Listeners, RelayConfig, Taps};
use tether::stream::{Prefixed, e2e, resumable};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// An in-process relay (real listeners, real TLS) with taps on the spliced bytes,
/// and a real agent process attached to it.
struct Tapped {
    _tmp: tempfile::TempDir,
    pki: Pki,
    relay: RelayProc,
    _agent: Proc,
    stop: CancellationToken,
    quic: bool,
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `quic`: the agent and the client use QUIC legs (else TCP).
async fn tapped(taps: Taps, service: SocketAddr, quic: bool) -> Tapped {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = RelayConfig {
        name: "relay-a".into(),
        control: any,
        data: any,
        client: any,
        admin: any,
        ca: pki.path("ca.pem"),
        cert: pki.path("relay-a.pem"),
        key: pki.path("relay-a.key"),
        crl: None,
        grant_public_key: pki.path("grant.pub"),
        audit_log: tmp.path().join("relay-audit.jsonl"),
        replay_file: None,
        dev: false,
        raw_legs: true,
        proxy_protocol_from: vec![],
        audit_rotate_bytes: 0,
        quic,
        quic_agents: None,
        quic_clients: None,
        twin: None,
        hub: None,
        limits: Default::default(),
    };
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let a = listeners.addrs();
    let stop = CancellationToken::new();
    tokio::spawn(tether::relay::run_with_taps(listeners, cfg, stop.clone(), taps));
    let relay = RelayProc {
        name: "relay-a".into(),
        proc: Proc { child: std::process::Command::new("true").spawn().unwrap() },
        control: a.control,
        data: a.data,
        client: a.client,
        admin: a.admin,
        audit: tmp.path().join("relay-audit.jsonl"),
        twin: None,
        quic_agents: a.quic_agents,
        quic_clients: a.quic_clients,
        threads: 0,
    };
    let cert = (pki.path(&format!("{DEVICE}.pem")), pki.path(&format!("{DEVICE}.key")));
    let opts = Opts { transport: if quic { "quic" } else { "tcp" }, ..Opts::default() };
    let agent_cfg = write_agent_config(tmp.path(), &pki, &[&relay], service, &opts, (&cert.0, &cert.1));
    let agent = start_agent(tmp.path(), &agent_cfg);
    Tapped { _tmp: tmp, pki, relay, _agent: agent, stop, quic }
}

impl Tapped {
    async fn session(&self) -> Arc<ClientSession> {
        let profile = tether::client::Profile {
            specialist: "alice".into(),
            role: "engineer".into(),
            ca: self.pki.path("ca.pem"),
            hub: None,
            path: None,
            grant_signing_key: Some(self.pki.path("grant.key")),
            grant_ttl_secs: 60,
            repo_targets_key: None,
            resume_buffer_bytes: 8 << 20,
            resume_deadline_secs: 30,
            transport: if self.quic { tether::quic::Transport::Quic } else { tether::quic::Transport::Tcp },
            relays: vec![tether::client::RelayEntry {
                name: "relay-a".into(),
                addr: self.relay.client.to_string(),
                server_name: Some("localhost".into()),
            }],
        };
        for _ in 0..200 {
            match ClientSession::open(&profile, DEVICE, "echo").await {
                Ok(s) => return s,
                Err(e) if e.reason() == Some(Reason::NotAttached) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("agent never attached");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_sees_the_plaintext() {
    never_sees_the_plaintext(false).await;
}

/// Over QUIC legs the relay moves quinn's own chunks from one stream to the
/// other (no copy): the tap sees each of them, and still no plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_sees_the_plaintext_over_quic() {
    let before = tether::metrics::RELAY_TUNNELS_QUIC_CHUNKS.get();
    never_sees_the_plaintext(true).await;
    assert!(tether::metrics::RELAY_TUNNELS_QUIC_CHUNKS.get() >= before + 2, "the tunnels did not move as QUIC chunks");
}

async fn never_sees_the_plaintext(quic: bool) {
    let seen_down = Arc::new(Mutex::new(Vec::new()));
    let seen_up = Arc::new(Mutex::new(Vec::new()));
    let (d, u) = (seen_down.clone(), seen_up.clone());
    let taps = Taps {
        to_device: Some(Arc::new(move |b: &mut [u8]| d.lock().unwrap().extend_from_slice(b))),
        to_client: Some(Arc::new(move |b: &mut [u8]| u.lock().unwrap().extend_from_slice(b))),
    };
    let stop = CancellationToken::new();
    let echo_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_l.local_addr().unwrap();
    tokio::spawn(tether::dev::echo_server(echo_l, stop.clone()));
    let fleet = tapped(taps, echo, quic).await;

    let marker = b"PATIENT-ID:7781-DOE^JANE ";
    let payload: Vec<u8> = marker.iter().copied().cycle().take(marker.len() * 2000).collect();
    let session = fleet.session().await;
    // The first connection runs TLS; the second is keyed from it.
    for keyed in [false, true] {
        let mut t = within(30, session.connect()).await.unwrap();
        assert_eq!(matches!(t, tokio_util::either::Either::Right(_)), keyed);
        t.write_all(&payload).await.unwrap();
        t.flush().await.unwrap();
        let mut back = vec![0u8; payload.len()];
        within(30, t.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, payload, "the application got its bytes back intact");
    }

    let down = seen_down.lock().unwrap().clone();
    let up = seen_up.lock().unwrap().clone();
    assert!(
        down.len() >= 2 * payload.len() && up.len() >= 2 * payload.len(),
        "the relay carried the traffic ({} / {})",
        down.len(),
        up.len()
    );
    assert!(!contains(&down, marker), "plaintext marker visible to the relay toward the device");
    assert!(!contains(&up, marker), "plaintext marker visible to the relay toward the client");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_altering_one_byte_makes_the_tunnel_fail_closed() {
    altering_one_byte(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_altering_one_byte_over_quic_makes_the_tunnel_fail_closed() {
    altering_one_byte(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_altering_one_byte_of_a_keyed_connection_makes_it_fail_closed() {
    altering_one_byte(true, false).await;
}

/// A TLS connection, or (`keyed`) a session's second connection, keyed from
/// the first (which sends nothing to the service).
async fn altering_one_byte(keyed: bool, quic: bool) {
    // Flip one bit of application data, well past the handshake.
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let flip_at = 40_000;
    let taps = Taps {
        to_device: Some(Arc::new(move |b: &mut [u8]| {
            let start = s2.fetch_add(b.len(), Ordering::SeqCst);
            if (start..start + b.len()).contains(&flip_at) {
                b[flip_at - start] ^= 0x01;
            }
        })),
        to_client: None,
    };
    // A service that records everything it receives.
    let received = Arc::new(Mutex::new(Vec::new()));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = l.local_addr().unwrap();
    let r2 = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let r = r2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let fleet = tapped(taps, svc, quic).await;
    let session = fleet.session().await;
    let _first = if keyed { Some(within(30, session.connect()).await.unwrap()) } else { None };
    let mut t = within(30, session.connect()).await.unwrap();
    assert_eq!(matches!(t, tokio_util::either::Either::Right(_)), keyed);
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let _ = t.write_all(&sent).await;
    let _ = t.flush().await;
    // Where the flipped bit lands depends on how the stream was framed:
    // - in a DATA payload: the end-to-end TLS fails closed; the client sees
    //   EOF or an error, never more data, and the service only a prefix;
    // - in a stream frame's header: the stream layer refuses the frame, drops
    //   the leg and resumes on a new one; the service gets every byte intact.
    // - in a frame header, where the leg cannot be replaced: the connection
    //   is closed once its resume deadline (30 s) passes; fail closed again.
    // Either way no altered byte reaches the service.
    let mut buf = [0u8; 64];
    let closed = async {
        let r = t.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "data from a silent service after tampering: {r:?}");
    };
    let healed = async {
        loop {
            if received.lock().unwrap().len() >= sent.len() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let torn_down = within(60, async {
        tokio::select! {
            _ = closed => true,
            _ = healed => false,
        }
    })
    .await;
    assert!(seen.load(Ordering::SeqCst) > flip_at, "the tap did alter a byte");
    let got = received.lock().unwrap().clone();
    assert_eq!(got[..], sent[..got.len().min(sent.len())], "altered data reached the device's service");
    if torn_down {
        assert!(got.len() < sent.len(), "the tunnel closed, yet everything was delivered");
    } else {
        assert_eq!(got.len(), sent.len(), "more than was sent reached the service");
    }
}

/// No replacement legs (this test never breaks one).
pub struct NoLegs;

impl resumable::LegSource for NoLegs {
    fn next_leg(
        &mut self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<(tether::leg::Leg, bytes::Bytes)>> + Send + '_>,
    > {
        Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::NotFound, "none")) })
    }
}

/// Joins connection `conn` of a session by hand (as anyone holding its
/// token can): the resumable stream's application end, and its driver.
pub async fn joined(
    fleet: &Fleet,
    session: tether::proto::SessionId,
    token: [u8; 32],
    conn: u32,
) -> std::io::Result<(tether::stream::pipe::AppEnd, tokio::task::JoinHandle<Result<resumable::Stats, String>>)> {
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let leg = tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg).await?;
    let mut io = FrameIo::new(leg);
    let mac = tether::proto::leg_mac(&token, tether::proto::LegSide::Client { resumes: 0 }, &session, conn);
    io.write_frame(&Frame::ClientJoin { version: VERSION, session, conn, mac, resumes: 0 }).await?;
    assert!(matches!(within(30, io.read_frame()).await.unwrap(), Frame::Paired { .. }));
    let (leg, prefix) = io.into_parts();
    let leg: tether::leg::Leg = Box::new(Prefixed::new(prefix, leg));
    Ok(resumable::start(
        (leg, bytes::Bytes::new()).into(),
        resumable::Side::Client,
        conn,
        Default::default(),
        Box::new(NoLegs),
        Default::default(),
        None,
    ))
}

/// Joins a session by hand and runs end-to-end TLS with `key`.
async fn join_with_key(
    fleet: &Fleet,
    session: tether::proto::SessionId,
    token: [u8; 32],
    conn: u32,
    key: &e2e::ClientKey,
    echo: bool,
) -> std::io::Result<()> {
    let (pipe, _driver) = joined(fleet, session, token, conn).await?;
    let e2e_cfg = e2e::client_config(&fleet.pki.path("ca.pem"), key).unwrap();
    let name = tls::server_name(DEVICE).unwrap();
    let mut t = within(30, tokio_rustls::TlsConnector::from(e2e_cfg).connect(name, pipe)).await?;
    // TLS 1.3: the client learns of a rejected certificate on its first read.
    t.write_all(b"hello").await?;
    t.flush().await?;
    let mut b = [0u8; 5];
    if !echo {
        // A silent service: a refused handshake shows as an error on this read, an accepted one as silence.
        return match tokio::time::timeout(std::time::Duration::from_secs(1), t.read(&mut b)).await {
            Ok(Ok(0)) => Err(std::io::Error::other("closed")),
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        };
    }
    within(30, t.read_exact(&mut b)).await?;
    assert_eq!(&b, b"hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_useless_without_the_client_key_it_names() {
    let fleet = Fleet::start(Opts::default()).await;
    let owner = e2e::ClientKey::generate().unwrap();
    let grant = fleet.grant(|g| g.client_key = owner.public_key().to_vec().into());

    // Whoever presents the grant gets a session at the relay...
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut control = FrameIo::new(tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg).await.unwrap());
    control.write_frame(&Frame::ClientOpen { version: VERSION, grant, service: "echo".into() }).await.unwrap();
    let Frame::SessionReady { session, token, .. } = within(30, control.read_frame()).await.unwrap() else {
        panic!("no session")
    };

    // ...but without the grant's key, the device does not talk to it.
    let thief = e2e::ClientKey::generate().unwrap();
    assert!(join_with_key(&fleet, session, token, 1, &thief, true).await.is_err(), "a foreign key got through");
    eventually("the agent audits the refused end-to-end handshake", async || {
        audited(&fleet.agent_audit(), "e2e_refused", "e2e_failed")
    })
    .await;
    // The key's owner does.
    join_with_key(&fleet, session, token, 2, &owner, true).await.expect("the grant's key works");
}

/// A session for a grant that names `owner`'s key and the `sink` service (a
/// [`CountingService`]), opened by hand: the fleet, the session's id and
/// token, and its control leg (the session lives while it is open).
pub struct SinkSession {
    pub fleet: Fleet,
    pub session: tether::proto::SessionId,
    pub token: [u8; 32],
    pub _control: FrameIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

pub async fn sink_session(svc: &CountingService, owner: &e2e::ClientKey) -> SinkSession {
    sink_session_over(svc, owner, "tcp").await
}

/// [`sink_session`] with the agent on `transport`.
pub async fn sink_session_over(svc: &CountingService, owner: &e2e::ClientKey, transport: &'static str) -> SinkSession {
    let opts = Opts { extra_services: vec![("sink".into(), svc.addr.to_string())], transport, ..Opts::default() };
    let fleet = Fleet::start(opts).await;
    let grant = fleet.grant(|g| {
        g.client_key = owner.public_key().to_vec().into();
        g.services = vec!["sink".into()];
    });
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut control = FrameIo::new(tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg).await.unwrap());
    control.write_frame(&Frame::ClientOpen { version: VERSION, grant, service: "sink".into() }).await.unwrap();
    let Frame::SessionReady { session, token, .. } = within(30, control.read_frame()).await.unwrap() else {
        panic!("no session")
    };
    SinkSession { fleet, session, token, _control: control }
}

/// Without the grant's key nobody makes the device even connect to its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_never_reaches_the_service() {
    let svc = CountingService::start(CancellationToken::new()).await;
    let owner = e2e::ClientKey::generate().unwrap();
    let SinkSession { fleet, session, token, _control } = sink_session(&svc, &owner).await;
    let thief = e2e::ClientKey::generate().unwrap();
    for conn in 1..=5 {
        assert!(join_with_key(&fleet, session, token, conn, &thief, false).await.is_err(), "a foreign key got through");
    }
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0, "the service saw a connection from a client without the key");
    join_with_key(&fleet, session, token, 6, &owner, false).await.expect("the grant's key works");
    eventually("the owner's connection reaches the service", async || svc.conns.load(Ordering::SeqCst) == 1).await;
    let refused = fleet.agent_audit().iter().filter(|r| r["event"] == "e2e_refused").count();
    assert_eq!(refused, 5, "each refused handshake audited at the device");
}
