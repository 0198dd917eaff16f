//! What end-to-end TLS and the resumable stream cost: one relay, one run, two
//! paths to the same kind of sink.
//!
//! - `full`: the product path: client library, end-to-end TLS, resumable
//!   stream, raw legs, real agent, sink service.
//! - `bare_raw_legs`: the same relay and raw legs, but the bench plays the
//!   device (a real control channel with a device certificate, answering
//!   `Open` with a data leg that it reads itself) and the client joins by
//!   hand: no end-to-end TLS, no resumable stream, no cryptography per byte.
//! - `bare_tls_legs`: the same with legs in TLS (the foundation's data path:
//!   the relay decrypts and re-encrypts every byte).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tether::client::ClientSession;
use tether::proto::{Frame, FrameIo, Grant, LegSide, Outcome, Reason, SessionId, VERSION, leg_mac};
use tether::tls;
use tether::util::now_secs;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::{SIZE, push, sink_conn};

/// Connection numbers from here on use TLS legs (both sides of the bench agree).
const TLS_CONNS: u32 = 1_000_000;

/// The bench as device `bench-2`: admits everything, serves each `Open` with a
/// raw data leg that it drains itself.
async fn bare_device(pki: std::path::PathBuf, control: SocketAddr, data: SocketAddr) {
    let cert = (pki.join("bench-2.pem"), pki.join("bench-2.key"));
    let cfg = tls::client_config(&pki.join("ca.pem"), Some((&cert.0, &cert.1)), tls::ALPN_AGENT).unwrap();
    let data_tls = tls::client_config(&pki.join("ca.pem"), Some((&cert.0, &cert.1)), tls::ALPN_DATA).unwrap();
    let mut io = FrameIo::new(tls::dial(&control.to_string(), "localhost", cfg).await.unwrap());
    io.write_frame(&Frame::Hello {
        version: VERSION,
        device: "bench-2".into(),
        agent_version: "bench".into(),
        services: vec![],
        streams: false,
    })
    .await
    .unwrap();
    assert!(matches!(io.read_frame().await.unwrap(), Frame::Welcome { .. }));
    while let Ok(f) = io.read_frame().await {
        match f {
            Frame::AccessRequest { grant, .. } => {
                let d = Frame::Decision {
                    session: grant.session_hint(),
                    outcome: Outcome::Allowed,
                    reason: Reason::Unknown,
                };
                io.write_frame(&d).await.unwrap();
            }
            Frame::Open { session, conn, key, .. } => {
                let data_tls = data_tls.clone();
                tokio::spawn(async move {
                    let raw = conn < TLS_CONNS;
                    let leg = tether::leg::dial(&data.to_string(), raw, "localhost", data_tls).await.unwrap();
                    let mut leg = FrameIo::new(leg);
                    let mac = leg_mac(&key, LegSide::Device, &session, conn);
                    leg.write_frame(&Frame::DataOpen { version: VERSION, session, conn, mac }).await.unwrap();
                    assert!(matches!(leg.read_frame().await.unwrap(), Frame::Paired { .. }));
                    let (s, prefix) = leg.into_parts();
                    sink_conn(tether::stream::Prefixed::new(prefix, s)).await;
                });
            }
            _ => {}
        }
    }
}

struct Setup {
    rt: Runtime,
    full: Arc<ClientSession>,
    bare: (SocketAddr, SessionId, [u8; 32]),
    next_conn: std::sync::atomic::AtomicU32,
    next_tls_conn: std::sync::atomic::AtomicU32,
    client_tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (full, bare) = rt.block_on(async {
        let pki = d.join("pki");
        tls::pki::init_dir(&pki, &["bench-1", "bench-2"]).unwrap();
        let sink_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink_l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = sink_l.accept().await {
                tokio::spawn(sink_conn(s));
            }
        });
        let stop = CancellationToken::new();
        let a = common::start_relay(&pki, &d, stop.clone()).await;
        // The real agent, for the full path.
        common::start_agent(&d, "bench-1", &a, &[("sink", sink_addr)], stop).await;
        tokio::spawn(bare_device(pki.clone(), a.control, a.data));

        let full = common::open_session(&common::profile(&pki, a.client), "bench-1", "sink").await;
        // The bare session: a grant and ClientOpen by hand.
        let signer = tls::pki::load_grant_signer(&pki.join("grant.key")).unwrap();
        let now = now_secs();
        let grant = signer.sign(&Grant {
            session: SessionId::random(),
            device: "bench-2".into(),
            services: vec!["sink".into()],
            specialist: "bench".into(),
            role: "engineer".into(),
            client_key: vec![1u8; 32].into(),
            relays: vec!["relay-a".into()],
            issued_at: now,
            expires_at: now + 600,
            consent: false,
            reason: String::new(),
        });
        let cfg = tls::client_config(&pki.join("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
        let mut control = FrameIo::new(tls::dial(&a.client.to_string(), "localhost", cfg).await.unwrap());
        control.write_frame(&Frame::ClientOpen { version: VERSION, grant, service: "sink".into() }).await.unwrap();
        let Frame::SessionReady { session, token, .. } = control.read_frame().await.unwrap() else {
            panic!("bare session")
        };
        tokio::spawn(async move {
            let _keep = control;
            std::future::pending::<()>().await
        });
        (full, (a.client, session, token))
    });
    // The PKI exists now (made inside the runtime above).
    let client_tls = tls::client_config(&d.join("pki").join("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    Setup { rt, full, bare, next_conn: 1.into(), next_tls_conn: TLS_CONNS.into(), client_tls, _dir: dir }
}

/// One bare connection: join by hand over a raw or TLS leg, push, check.
async fn bare_push(s: &Setup, tls_legs: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let (addr, session, token) = s.bare;
    let conn = if tls_legs { s.next_tls_conn.fetch_add(1, Relaxed) } else { s.next_conn.fetch_add(1, Relaxed) };
    let leg = tether::leg::dial(&addr.to_string(), !tls_legs, "localhost", s.client_tls.clone()).await.unwrap();
    let mut io = FrameIo::new(leg);
    let mac = leg_mac(&token, LegSide::Client { resumes: 0 }, &session, conn);
    io.write_frame(&Frame::ClientJoin { version: VERSION, session, conn, mac, resumes: 0 }).await.unwrap();
    assert!(matches!(io.read_frame().await.unwrap(), Frame::Paired { .. }));
    let (leg, prefix) = io.into_parts();
    push(tether::stream::Prefixed::new(prefix, leg)).await;
}

fn layers(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("layers");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for (name, tls_legs) in [("bare_raw_legs", false), ("bare_tls_legs", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                s.rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        bare_push(&s, tls_legs).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.bench_function("full_e2e_tls_and_resumable", |b| {
        b.iter_custom(|n| {
            s.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    push(s.full.connect().await.unwrap()).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
