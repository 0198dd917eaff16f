//! A keyed connection's first bytes, sent while the relay pairs it, when the
//! relay's answer never comes back although the device has them: the
//! connection resumes through the twin, and the service sees them once.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether::client::{ClientSession, RelayEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Forwards TCP to `target`. Once `hold` is set, a connection that has
/// carried more than `after` bytes towards the target passes nothing back
/// any more (and stays open): the relay's answers to a join are lost on the
/// way while what the client sent got through. The relay may answer before
/// the eater has read everything the client sent behind its join: a held
/// connection's answer waits (at most 2 s) for that count, so that which
/// answers are lost does not depend on how the two directions are scheduled.
async fn answer_eater(target: std::net::SocketAddr, after: u64, hold: Arc<AtomicBool>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            let Ok(out) = TcpStream::connect(target).await else { continue };
            let hold = hold.clone();
            tokio::spawn(async move {
                let (mut ci, mut co) = inbound.into_split();
                let (mut ri, mut ro) = out.into_split();
                let (up_tx, mut up) = tokio::sync::watch::channel(0u64);
                let to_relay = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = ci.read(&mut buf).await {
                        up_tx.send_modify(|up| *up += n as u64);
                        if ro.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    std::future::pending::<()>().await
                };
                let to_client = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = ri.read(&mut buf).await {
                        if hold.load(Ordering::SeqCst) {
                            // A TLS handshake's answer passes after the wait; a join's is eaten.
                            let sent = tokio::time::timeout(Duration::from_secs(2), up.wait_for(|up| *up > after));
                            if matches!(sent.await, Ok(Ok(_))) {
                                continue; // eaten
                            }
                        }
                        if co.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::join!(to_relay, to_client);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_the_device_has_resume_through_the_twin_when_the_answer_is_lost() {
    let svc = CountingService::start(tokio_util::sync::CancellationToken::new()).await;
    let fleet = Fleet::start(Opts {
        relays: 2,
        twins: true,
        extra_services: vec![("sink".into(), svc.addr.to_string())],
        ..Opts::default()
    })
    .await;
    fleet.wait_twin_links().await;
    // The client reaches relay-a through the eater; relay-b directly.
    let request = &[b'q'; 8192][..];
    let hold = Arc::new(AtomicBool::new(false));
    let eater = answer_eater(fleet.relays[0].client, request.len() as u64, hold.clone()).await;
    let mut profile = fleet.profile();
    profile.relays[0] = RelayEntry { addr: eater.to_string(), ..profile.relays[0].clone() };
    let session = within(30, ClientSession::open(&profile, DEVICE, "sink")).await.unwrap();
    assert_eq!(session.current_relay().name, "relay-a");
    // The first connection's end-to-end TLS keys the later ones.
    drop(within(30, session.connect()).await.unwrap());
    eventually("the first connection came and went at the service", async || {
        svc.conns.load(Ordering::SeqCst) == 1 && svc.open.load(Ordering::SeqCst) == 0
    })
    .await;

    hold.store(true, Ordering::SeqCst);
    let conns = svc.conns.load(Ordering::SeqCst);
    let resumed_at_b = fleet.metric(1, "tether_relay_tunnels_resumed_total", &[]).await;
    let mut app: &[u8] = request;
    let (mut t, _) = within(60, session.connect_early(&mut app))
        .await
        .expect("a connection the device has, whose pairing answer was lost, resumes through the twin");
    assert!(app.is_empty(), "the request did not go while the relay paired the connection");
    assert_eq!(session.current_relay().name, "relay-b");
    // The device reports the resume on its control channel, after the data leg carries it.
    eventually("the connection was resumed through relay-b", async || {
        fleet.metric(1, "tether_relay_tunnels_resumed_total", &[]).await > resumed_at_b
    })
    .await;
    t.write_all(b"and the rest").await.unwrap();
    t.flush().await.unwrap();
    let want = request.len() as u64 + 12;
    eventually("the request and the rest reach the service", async || svc.bytes.load(Ordering::SeqCst) == want).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(svc.bytes.load(Ordering::SeqCst), want, "the service saw the request twice");
    assert_eq!(svc.conns.load(Ordering::SeqCst), conns + 1, "the service saw two connections");
    assert!(!audited(&fleet.agent_audit(), "open_refused", "never_opened"), "the device had the connection");
}

/// What `tether connect` reports as sent to the device includes a keyed
/// connection's first bytes, which go while the relay pairs it, before the
/// splice that counts the rest takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_connections_first_bytes_are_counted_as_sent() {
    let fleet = Fleet::start(Opts::default()).await;
    let (session, addr) = serve_locally(&fleet).await;
    let mut sent = 0;
    // The first connection's end-to-end TLS keys the next two.
    for i in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let message = format!("message {i} of three");
        c.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0; message.len()];
        within(30, c.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, message.as_bytes());
        sent += message.len() as u64;
    }
    eventually("both directions counted in full", async || {
        session.to_device.load(Ordering::SeqCst) == sent && session.to_client.load(Ordering::SeqCst) == sent
    })
    .await;
}
