//! Misbehaving peers cost the relay what their sockets cost, not what they
//! promise: the resident memory a thousand connections hold that each sent a
//! frame header claiming a large frame, then nothing. (Untouched reserved
//! pages do not show in RSS, so the decoder's no-reservation rule is asserted
//! on buffer capacity in `proto::tests::a_claimed_length_allocates_nothing…`;
//! this test bounds what the relay really holds.)
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::harness::*;

const PEERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_frames_hold_no_memory_at_the_relay() {
    let fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let mut live = within(30, session.connect()).await.unwrap();
    let rss = async || fleet.metric(0, "tether_relay_resident_memory_bytes", &[]).await;
    let open = async || {
        fleet.metric(0, "tether_relay_open_connections", &["listener=\"client\""]).await
            + fleet.metric(0, "tether_relay_open_connections", &["listener=\"data\""]).await
    };
    let base = open().await;
    let before = rss().await;
    // From four source addresses (each under the per-source cap of 512), to
    // the client and data ports (raw-capable): a header promising 60 000
    // bytes of a data-leg preamble... and nothing more.
    let ports = [fleet.relays[0].client, fleet.relays[0].data];
    let mut held = Vec::with_capacity(PEERS);
    for i in 0..PEERS {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 20 + (i % 4) as u8], 0))).unwrap();
        let mut s = within(10, sock.connect(ports[i % 2])).await.unwrap();
        s.write_all(&60_000u32.to_be_bytes()).await.unwrap();
        held.push(s);
    }
    eventually("the relay holds every half-sent frame", async || open().await >= base + PEERS as f64).await;
    let during = rss().await;
    let grew = (during - before).max(0.0);
    println!(
        "{PEERS} half-sent frames: relay RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per peer",
        before / 1048576.0,
        during / 1048576.0,
        grew / PEERS as f64 / 1024.0
    );
    assert!(grew < 16.0 * 1048576.0, "{PEERS} half-sent frames grew the relay by {:.1} MiB", grew / 1048576.0);

    // The live session never noticed.
    live.write_all(b"fine").await.unwrap();
    live.flush().await.unwrap();
    let mut b = [0u8; 4];
    within(10, tokio::io::AsyncReadExt::read_exact(&mut live, &mut b)).await.unwrap();
    assert_eq!(&b, b"fine");
    drop(held);
    eventually("their slots are freed", async || open().await <= base).await;
}
