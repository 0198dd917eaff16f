//! What a QUIC leg puts on the wire: datagrams as large as the path
//! carries, and acknowledgements no more often than they are needed.
use std::time::Duration;

use tether::quic;

use crate::harness::*;
use crate::quic::dial_as_device;

/// A QUIC leg's datagrams grow past Ethernet's 1 452 bytes where the path
/// carries them (loopback here), to [`quic::MAX_DATAGRAM`], through path MTU
/// discovery: quinn's own bound (1 452) and the payload size it accepts by
/// default (1 472) would hold every leg to Ethernet-sized packets. Nothing
/// is lost on the way, and no black hole is taken for one. The search
/// probes the bound first (vendor/quinn-proto/TETHER-PATCHES.md), so a path
/// that carries it costs one probe, not the dozen of a binary search from
/// 1 200 bytes, each nearly as large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_leg_sends_datagrams_as_large_as_its_path_carries() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (endpoint, addr) = crate::quic_inputs::agent_listener(&pki);
    let sink = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(64 << 20).await.unwrap();
        (conn, got)
    });
    let (conn, _) = dial_as_device(&pki, "mtu-1", addr).await;
    let data = random(8 << 20);
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    let (server_conn, got) = within(30, sink).await.unwrap();
    assert!(got == data, "the stream carried other bytes ({} of {})", got.len(), data.len());
    let grown = within(10, async {
        loop {
            let mtu = conn.stats().path.current_mtu;
            if mtu + 20 > quic::MAX_DATAGRAM {
                return mtu;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(grown <= quic::MAX_DATAGRAM, "{grown} bytes: above the bound");
    let stats = conn.stats();
    assert_eq!(stats.path.black_holes_detected, 0, "{stats:?}");
    assert_eq!(stats.path.lost_packets, 0, "{stats:?}");
    assert_eq!(stats.path.current_mtu, quic::MAX_DATAGRAM, "{stats:?}");
    assert_eq!(stats.path.sent_plpmtud_probes, 1, "one probe, of the bound: {stats:?}");
    // The relay's side probes too: its acknowledgements and replies may be as large.
    assert!(server_conn.stats().path.current_mtu > 1452, "{:?}", server_conn.stats());
}

/// Each end of a QUIC leg asks its peer (QUIC's ACK frequency extension) to
/// acknowledge every [`quic::ACK_ELICITING_THRESHOLD`] + 1 ack-eliciting
/// packets, not every second one: small packets that the next data would
/// acknowledge anyway (a new connection's join and first bytes, the agent's
/// `Paired` and answer) do not each cost an ACK of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_leg_asks_its_peer_to_acknowledge_small_packets_less_often() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (endpoint, addr) = crate::quic_inputs::agent_listener(&pki);
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
    let sink = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let _ = conn_tx.send(conn.clone());
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut first = [0u8; 1];
        recv.read_exact(&mut first).await.unwrap();
        send.write_all(&first).await.unwrap();
        recv.read_to_end(1 << 20).await.unwrap().len()
    });
    let (conn, _) = dial_as_device(&pki, "acks-1", addr).await;
    let server = within(10, async { conn_rx.await.unwrap() }).await;
    // A round trip, and each side's request taken by the other.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let mut echo = [0u8; 1];
    within(10, recv.read_exact(&mut echo)).await.unwrap();
    within(10, async {
        while conn.stats().frame_rx.ack_frequency == 0 || server.stats().frame_rx.ack_frequency == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (sent0, acks0) = (conn.stats().udp_tx.datagrams, server.stats().frame_tx.acks);
    // Small writes a few milliseconds apart, well within the peer's maximum
    // ACK delay (25 ms) of one another, until 40 packets went (a loaded host
    // may put two writes in one).
    let mut writes = 0;
    while conn.stats().udp_tx.datagrams - sent0 < 40 && writes < 400 {
        send.write_all(&[writes as u8; 10]).await.unwrap();
        writes += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (sent, acks) = (conn.stats().udp_tx.datagrams - sent0, server.stats().frame_tx.acks - acks0);
    send.finish().unwrap();
    let got = within(10, sink).await.unwrap();
    assert_eq!(got, 10 * writes, "the stream carried every byte");
    assert!(sent >= 40, "the writes went as separate packets ({sent} datagrams for {writes} writes)");
    let every = u64::from(quic::ACK_ELICITING_THRESHOLD) + 1;
    assert!(
        acks <= sent / every + 3 && acks < sent / 2,
        "{acks} ACKs for {sent} packets: asked for one every {every}, QUIC's default is one every 2"
    );
    assert!(acks > 0, "the packets were acknowledged");
}
