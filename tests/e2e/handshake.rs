//! A leg that dies inside a connection's end-to-end handshake: the client has
//! finished it, the agent has not (the client's last flight was on the dead
//! leg, as when a relay freezes at that moment). Real end-to-end TLS over the
//! real resumable streams; the legs are in-memory pipes with a middle that
//! stops forwarding the client's bytes after its first flight.
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tether::leg::Leg;
use tether::proto::stream::StreamFrame;
use tether::stream::e2e;
use tether::stream::resumable::{self, LegSource, ResumeEvent, ResumeKey, Side};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::harness::*;

/// Replacement legs handed in by the test.
struct Handed(mpsc::Receiver<Leg>);

impl LegSource for Handed {
    fn next_leg(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Leg, Bytes)>> + Send + '_>> {
        Box::pin(async move {
            let leg =
                self.0.recv().await.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no more"))?;
            Ok((leg, Bytes::new()))
        })
    }
}

/// Forwards agent -> client freely and client -> agent only up to the first
/// DATA frame (the ClientHello); then the client's bytes vanish, like a relay
/// frozen with the client's Finished inside. Ends when either side closes.
async fn middle(mut to_client: DuplexStream, mut to_agent: DuplexStream) {
    let (mut cr, mut cw) = tokio::io::split(&mut to_client);
    let (mut ar, mut aw) = tokio::io::split(&mut to_agent);
    let up = async {
        let mut buf = BytesMut::new();
        let mut passed_data = false;
        loop {
            if cr.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            while let Ok(Some(f)) = StreamFrame::decode(&mut buf) {
                if passed_data {
                    continue;
                }
                passed_data = matches!(f, StreamFrame::Data { .. });
                let mut out = BytesMut::new();
                f.encode(&mut out);
                if aw.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async {
        let _ = tokio::io::copy(&mut ar, &mut cw).await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leg_lost_inside_the_end_to_end_handshake_resumes_and_a_forged_unkeyed_resume_is_refused_after() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let key = e2e::ClientKey::generate().unwrap();
    let agent_cfg =
        e2e::agent_config(&pki.path(&format!("{DEVICE}.pem")), &pki.path(&format!("{DEVICE}.key")), key.public_key())
            .unwrap();
    let client_cfg = e2e::client_config(&pki.path("ca.pem"), &key).unwrap();
    let cfg = resumable::ResumeConfig { dead_after: std::time::Duration::from_millis(600), ..Default::default() };

    // Leg 1 through the middle that swallows the client's last flight.
    let (c1, m1c) = tokio::io::duplex(1 << 20);
    let (a1, m1a) = tokio::io::duplex(1 << 20);
    tokio::spawn(middle(m1c, m1a));
    let (c_legs, c_rx) = mpsc::channel::<Leg>(4);
    let (a_legs, a_rx) = mpsc::channel::<Leg>(4);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let on_client_event: resumable::OnEvent = Box::new(move |e| ev.lock().unwrap().push(e));

    let (ckey, akey) = (ResumeKey::default(), ResumeKey::default());
    let (cpipe, _cdriver) = resumable::start(
        (Box::new(c1) as tether::leg::Leg, Bytes::new()).into(),
        Side::Client,
        1,
        ckey.clone(),
        Box::new(Handed(c_rx)),
        cfg,
        Some(on_client_event),
    );
    let (apipe, _adriver) = resumable::start(
        (Box::new(a1) as tether::leg::Leg, Bytes::new()).into(),
        Side::Device,
        1,
        akey.clone(),
        Box::new(Handed(a_rx)),
        cfg,
        None,
    );

    // The agent echoes once its handshake completes.
    let agent = tokio::spawn(async move {
        let mut t = tokio_rustls::TlsAcceptor::from(agent_cfg).accept(apipe).await.expect("agent handshake");
        resumable::set_key_from(&**t.get_ref().1, &akey, 1);
        let mut b = [0u8; 5];
        t.read_exact(&mut b).await.unwrap();
        t.write_all(&b).await.unwrap();
        t.flush().await.unwrap();
        t
    });
    let mut client =
        within(10, tokio_rustls::TlsConnector::from(client_cfg).connect(tls::server_name(DEVICE).unwrap(), cpipe))
            .await
            .expect("the client finishes its handshake on leg 1");
    resumable::set_key_from(&**client.get_ref().1, &ckey, 1);
    client.write_all(b"hello").await.unwrap();
    client.flush().await.unwrap();

    // Leg 1 goes silent for the agent; a new leg for both (as the twin gives),
    // through a middle the test can cut later.
    let (c2, m2c) = tokio::io::duplex(1 << 20);
    let (a2, m2a) = tokio::io::duplex(1 << 20);
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut x, mut y) = (m2c, m2a);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut x, &mut y) => {}
            _ = cut_rx => {}
        }
    });
    c_legs.send(Box::new(c2)).await.unwrap();
    a_legs.send(Box::new(a2)).await.unwrap();
    let mut b = [0u8; 5];
    within(15, client.read_exact(&mut b)).await.expect("the connection carries data after the resume");
    assert_eq!(&b, b"hello");
    let _agent_tls = within(5, agent).await.unwrap();
    assert!(events.lock().unwrap().iter().any(|e| matches!(e, ResumeEvent::Resumed { .. })), "the client resumed once");

    // The agent said it holds its key (KEYED): from now on an all-zero MAC
    // toward the client is a forgery. Cut leg 2 and hand the client a leg to
    // a forger (the agent gets none).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(a_legs);
    let (c3, mut forger) = tokio::io::duplex(1 << 20);
    c_legs.send(Box::new(c3)).await.unwrap();
    cut.send(()).unwrap();
    let forge = async {
        let mut buf = BytesMut::new();
        // The client's RESUME first.
        loop {
            forger.read_buf(&mut buf).await.unwrap();
            if let Ok(Some(StreamFrame::Resume { .. })) = StreamFrame::decode(&mut buf) {
                break;
            }
        }
        let mut out = BytesMut::new();
        StreamFrame::Resume { next: 0, mac: [0u8; 32] }.encode(&mut out);
        forger.write_all(&out).await.unwrap();
    };
    within(15, forge).await;
    drop(_agent_tls);
    eventually("the client refuses the forged zero-MAC resume", async || {
        events.lock().unwrap().iter().any(|e| matches!(e, ResumeEvent::Refused { why } if why.contains("MAC")))
    })
    .await;
}
