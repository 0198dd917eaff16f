//! A session's later connections are keyed from its first end-to-end TLS
//! handshake: only that handshake's two ends can open one. A header replayed
//! as another connection, forged by whoever holds only the session token (as
//! the relay does), or naming a handshake that never happened, is refused,
//! counted and audited, and never makes the device connect to its service.
use std::sync::atomic::Ordering;

use tether::agent::operator::{Request, request};
use tether::proto::{Frame, FrameIo, Reason, VERSION};
use tether::stream::derived::{HEADER_LEN, MARKER, SessionSecret};
use tether::stream::e2e;
use tether::stream::sealed::Sealed;
use tether::tls;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::e2e_tls::{SinkSession, joined, sink_session};
use crate::harness::*;

/// Writes `header` (and a few bytes) as connection `conn`'s first flight,
/// and waits for the agent to audit its refusal with `why`.
async fn refused(
    fleet: &Fleet,
    session: tether::proto::SessionId,
    token: [u8; 32],
    conn: u32,
    header: &[u8],
    why: &str,
) {
    let (mut pipe, _driver) = joined(fleet, session, token, conn).await.unwrap();
    pipe.write_all(header).await.unwrap();
    // The agent may have refused and closed the stream already.
    let _ = pipe.write_all(b"0123456789abcdef0123456789abcdef").await;
    eventually(&format!("the agent audits connection {conn} refused: {why}"), async || {
        fleet.agent_audit().iter().any(|r| {
            r["event"] == "e2e_refused" && r["conn"] == conn && r["detail"].as_str().is_some_and(|d| d.contains(why))
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sessions_secret_opens_a_keyed_connection_and_a_replayed_or_forged_header_never_reaches_the_service() {
    let svc = CountingService::start(CancellationToken::new()).await;
    let owner = e2e::ClientKey::generate().unwrap();
    let SinkSession { fleet, session, token, _control } = sink_session(&svc, &owner).await;

    // Connection 1: end-to-end TLS with the grant's key; both ends offer keyed connections.
    let (pipe, _d1) = joined(&fleet, session, token, 1).await.unwrap();
    let e2e_cfg = e2e::client_config(&fleet.pki.path("ca.pem"), &owner).unwrap();
    let name = tls::server_name(DEVICE).unwrap();
    let mut first = within(30, tokio_rustls::TlsConnector::from(e2e_cfg).connect(name, pipe)).await.unwrap();
    assert_eq!(first.get_ref().1.alpn_protocol(), Some(tls::ALPN_E2E_KEYED));
    first.write_all(b"one").await.unwrap();
    first.flush().await.unwrap();
    eventually("connection 1 reaches the service", async || svc.bytes.load(Ordering::SeqCst) == 3).await;
    let secret = SessionSecret::export(&**first.get_ref().1, &session, 1).unwrap();

    // Connection 2, keyed from it: no handshake, and it reaches the service.
    let (header, keys) = secret.open(&session, 2);
    let (pipe, _d2) = joined(&fleet, session, token, 2).await.unwrap();
    let up = keys.upstream();
    let mut second = Sealed::salted(pipe, up, Box::new(move |s| keys.downstream(s)), header.to_vec());
    second.write_all(b"two!").await.unwrap();
    second.flush().await.unwrap();
    eventually("keyed connection 2 reaches the service", async || svc.bytes.load(Ordering::SeqCst) == 7).await;
    assert_eq!(svc.conns.load(Ordering::SeqCst), 2);

    // The same header replayed as connection 3 (the relay saw it go by).
    refused(&fleet, session, token, 3, &header, "wrong MAC").await;
    // A header made with the session token but without the secret.
    let mut forged = [0u8; HEADER_LEN];
    forged[0] = MARKER;
    forged[1..5].copy_from_slice(&1u32.to_be_bytes());
    forged[5..].copy_from_slice(&tether::util::random_bytes::<32>());
    refused(&fleet, session, token, 4, &forged, "wrong MAC").await;
    // A header naming a connection that never completed a handshake (the
    // agent waits 5 s for it), or one that cannot key others (above 64).
    forged[1..5].copy_from_slice(&3u32.to_be_bytes());
    refused(&fleet, session, token, 5, &forged, "keyed nothing here").await;
    forged[1..5].copy_from_slice(&99u32.to_be_bytes());
    refused(&fleet, session, token, 6, &forged, "keyed nothing here").await;

    assert_eq!(svc.conns.load(Ordering::SeqCst), 2, "a refused header made the device connect its service");
    assert_eq!(svc.bytes.load(Ordering::SeqCst), 7, "bytes of a refused connection reached the service");
    let metrics = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    let metrics = metrics["text"].as_str().unwrap();
    assert_eq!(parse_metric(metrics, "tether_agent_refusals_total", &["reason=\"e2e_failed\""]), 4.0, "{metrics}");
    assert_eq!(parse_metric(metrics, "tether_agent_e2e_connections_total", &["kind=\"keyed\""]), 1.0, "{metrics}");
}

/// On a device that takes its legs as streams of its QUIC connection, the
/// agent answers a connection's opening with its first end-to-end bytes. A
/// keyed header that fails is refused there, before any `Paired`: the relay
/// passes the reason to the client, counts and audits it, and the service
/// never hears of it; the session's other connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_keyed_header_is_refused_to_the_client_with_its_reason_over_quic() {
    let svc = CountingService::start(CancellationToken::new()).await;
    let owner = e2e::ClientKey::generate().unwrap();
    let SinkSession { fleet, session, token, _control } = crate::e2e_tls::sink_session_over(&svc, &owner, "quic").await;
    let (pipe, _d1) = joined(&fleet, session, token, 1).await.unwrap();
    let e2e_cfg = e2e::client_config(&fleet.pki.path("ca.pem"), &owner).unwrap();
    let name = tls::server_name(DEVICE).unwrap();
    let mut first = within(30, tokio_rustls::TlsConnector::from(e2e_cfg).connect(name, pipe)).await.unwrap();
    first.write_all(b"one").await.unwrap();
    first.flush().await.unwrap();
    eventually("connection 1 reaches the service", async || svc.bytes.load(Ordering::SeqCst) == 3).await;
    let secret = SessionSecret::export(&**first.get_ref().1, &session, 1).unwrap();

    // Connection 2 as a client sends it: the join and a forged header in one write.
    let mut forged = [0u8; HEADER_LEN];
    forged[0] = MARKER;
    forged[1..5].copy_from_slice(&1u32.to_be_bytes());
    forged[5..].copy_from_slice(&tether::util::random_bytes::<32>());
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let leg = tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(leg);
    let mac = tether::proto::leg_mac(&token, tether::proto::LegSide::Client { resumes: 0 }, &session, 2);
    let mut flight = Frame::ClientJoin { version: VERSION, session, conn: 2, mac, resumes: 0 }.encoded().to_vec();
    let mut data = bytes::BytesMut::new();
    tether::proto::stream::encode_data_header(&mut data, 0, forged.len());
    flight.extend_from_slice(&data);
    flight.extend_from_slice(&forged);
    io.get_mut().write_all(&flight).await.unwrap();
    io.get_mut().flush().await.unwrap();
    match within(30, io.read_frame()).await.unwrap() {
        Frame::Error { reason, message } => {
            assert_eq!(reason, Reason::EndToEndFailed, "{message}");
            assert!(message.contains("end-to-end"), "{message}");
        }
        other => panic!("the relay answered a refused header with {}", other.kind()),
    }
    assert!(audited(&fleet.relay_audit(0), "client_refused", "e2e_failed"), "the relay did not audit it");
    let metrics = fleet.metrics(0).await;
    assert_eq!(parse_metric(&metrics, "tether_relay_grant_refusals_total", &["reason=\"e2e_failed\""]), 1.0);
    eventually("the agent audits connection 2 refused: wrong MAC", async || {
        fleet.agent_audit().iter().any(|r| {
            r["event"] == "e2e_refused"
                && r["conn"] == 2
                && r["detail"].as_str().is_some_and(|d| d.contains("wrong MAC"))
        })
    })
    .await;

    // The session goes on: a keyed connection with the real secret, and connection 1.
    let (header, keys) = secret.open(&session, 3);
    let (pipe, _d3) = joined(&fleet, session, token, 3).await.unwrap();
    let mut third = Sealed::salted(pipe, keys.upstream(), Box::new(move |s| keys.downstream(s)), header.to_vec());
    third.write_all(b"three").await.unwrap();
    third.flush().await.unwrap();
    first.write_all(b"!").await.unwrap();
    first.flush().await.unwrap();
    eventually("connections 3 and 1 reach the service", async || svc.bytes.load(Ordering::SeqCst) == 9).await;
    assert_eq!(svc.conns.load(Ordering::SeqCst), 2, "the refused header made the device connect its service");
}
