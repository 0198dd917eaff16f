//! Frame encode/decode cost (criterion, in-process).
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tether::proto::{Frame, Grant, GrantSigner, Reason, SessionId};

fn frames(c: &mut Criterion) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let signer = GrantSigner::from_pkcs8(doc.as_ref()).unwrap();
    let grant = signer.sign(&Grant {
        session: SessionId::random(),
        device: "INJ-0042".into(),
        services: vec!["ssh".into(), "vnc".into()],
        specialist: "alice".into(),
        role: "engineer".into(),
        client_key: vec![7u8; 32].into(),
        relays: vec!["relay-a".into(), "relay-b".into()],
        issued_at: 1,
        expires_at: 2,
        consent: false,
        reason: String::new(),
    });
    let samples = [
        ("heartbeat", Frame::Heartbeat { seq: 42, clock: Some(1_780_000_000_000) }),
        ("access_request", Frame::AccessRequest { grant, service: "ssh".into() }),
        (
            "session_end",
            Frame::SessionEnd {
                session: SessionId::random(),
                reason: Reason::ClientClosed,
                bytes_to_device: 1,
                bytes_to_client: 2,
            },
        ),
    ];
    let mut g = c.benchmark_group("frames");
    for (name, f) in samples {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            let mut out = BytesMut::with_capacity(1024);
            b.iter(|| {
                out.clear();
                f.encode(&mut out);
            })
        });
        let wire = buf.freeze();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let mut input = BytesMut::from(&wire[..]);
                Frame::decode(&mut input).unwrap().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
