//! Live sessions survive the death of the relay they run through: the ends
//! resume through the twin from the last acknowledged byte.
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

fn random(n: usize) -> Vec<u8> {
    let seed: [u8; 32] = tether::random_bytes();
    let mut out = Vec::with_capacity(n + 32);
    let mut ctr = 0u64;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(ctr.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        ctr += 1;
    }
    out.truncate(n);
    out
}

async fn twins() -> Fleet {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, ..Opts::default() }).await;
    for i in 0..2 {
        eventually("twin links up", async || {
            fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0
                && fleet.metric(i, "tether_twin_link_up", &["direction=\"out\""]).await == 1.0
        })
        .await;
    }
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_carrying_relay_loses_no_byte() {
    let mut fleet = twins().await;
    let session = fleet.session("echo").await;
    assert_eq!(session.relay.name, "relay-a");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(session.clone().serve(listener));

    let data = random(64 << 20);
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(64 << 20);
        let r = r.read_to_end(&mut got).await;
        (got, r.map(|_| ()))
    });

    // Kill relay-a once a good part of the transfer went through it.
    eventually("the transfer is under way through relay-a", async || {
        fleet.metric(0, "tether_relay_bytes_total", &["to_client"]).await >= (8 << 20) as f64
    })
    .await;
    fleet.relays[0].proc.kill(); // SIGKILL

    within(120, writer).await.unwrap();
    let (got, closed) = within(120, reader).await.unwrap();
    closed.expect("the local connection saw an error");
    assert_eq!(got.len(), data.len(), "bytes lost or added");
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data), "bytes changed");
    // The session moved to the twin and is still usable.
    assert_eq!(session.current_relay().name, "relay-b");
    assert!(session.end_reason().is_none(), "the session ended: {:?}", session.end_reason());
    assert!(fleet.relay_audit(1).iter().any(|r| r["event"] == "session_adopted"));
    assert!(fleet.metric(1, "tether_relay_tunnels_total", &[]).await >= 1.0, "no leg went through the twin");
    // The device side resumed the connection, and says how.
    let mut record = serde_json::Value::Null;
    eventually("the agent audits the resumed tunnel", async || {
        match fleet.agent_audit().into_iter().find(|r| r["event"] == "tunnel_resumed") {
            Some(r) => {
                record = r;
                true
            }
            None => false,
        }
    })
    .await;
    assert!(record["resumes"].as_u64() >= Some(1), "{record}");
    eprintln!("failover: {record}");
}
