//! Bytes through a tunnel arrive intact, in both directions, many at once.
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Writes `data` (then half-closes) while reading everything back; returns what came back.
async fn round_trip(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let writer = async {
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let both = async { tokio::join!(writer, reader).1 };
    within(120, both).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_identical() {
    let fleet = Fleet::start(Opts::default()).await;
    let (session, addr) = serve_locally(&fleet).await;
    let data = random(64 << 20);
    let got = round_trip(TcpStream::connect(addr).await.unwrap(), &data).await;
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data), "bytes changed in transit");

    // The relay counted the payload both ways, and audits the session's byte counts at its end.
    assert!(fleet.metric(0, "tether_relay_bytes_total", &["to_device"]).await >= (64 << 20) as f64);
    assert!(fleet.metric(0, "tether_relay_bytes_total", &["to_client"]).await >= (64 << 20) as f64);
    session.close();
    let id = session.id.to_string();
    // The relay counts what it carries: end-to-end TLS records, a little more than the payload.
    let carried =
        |v: &serde_json::Value| v.as_u64().is_some_and(|n| ((64u64 << 20)..(64u64 << 20) * 101 / 100).contains(&n));
    eventually("relay audits the session end with byte counts", async || {
        fleet.relay_audit(0).iter().any(|r| {
            r["event"] == "session_end"
                && r["session"] == id.as_str()
                && carried(&r["bytes_to_device"])
                && carried(&r["bytes_to_client"])
        })
    })
    .await;
    // The agent counts plaintext to and from the service: exactly the payload.
    eventually("agent audits the session end with byte counts", async || {
        fleet.agent_audit().iter().any(|r| {
            r["event"] == "session_end"
                && r["session"] == id.as_str()
                && r["bytes_to_device"] == (64u64 << 20)
                && r["bytes_to_client"] == (64u64 << 20)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections_in_one_session() {
    let fleet = Fleet::start(Opts::default()).await;
    let (session, addr) = serve_locally(&fleet).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let data = random(256 * 1024);
                let got = round_trip(TcpStream::connect(addr).await.unwrap(), &data).await;
                Sha256::digest(&got) == Sha256::digest(&data)
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap(), "a connection's bytes changed");
    }
    // One session, one consent decision, fifty tunnels.
    assert_eq!(fleet.agent_audit().iter().filter(|r| r["event"] == "access_requested").count(), 1);
    assert_eq!(fleet.metric(0, "tether_relay_tunnels_total", &[]).await, 50.0);
    assert_eq!(fleet.metric(0, "tether_relay_sessions_active", &[]).await, 1.0);
    assert!(fleet.metric(0, "tether_relay_pairing_seconds_count", &[]).await >= 50.0);
    session.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_legs_carry_bytes_intact_too() {
    // Relays that accept only TLS legs: the same tunnel over the other transport.
    let fleet = Fleet::start(Opts { raw_legs: false, ..Opts::default() }).await;
    let (session, addr) = serve_locally(&fleet).await;
    let data = random(8 << 20);
    let got = round_trip(TcpStream::connect(addr).await.unwrap(), &data).await;
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    session.close();
}
