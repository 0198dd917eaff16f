//! Property tests: every frame round-trips; arbitrary bytes never panic.
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::repo::RepoFrame;
use super::*;

fn sid() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn reason() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::BadFrame),
        Just(Reason::ConsentDenied),
        Just(Reason::GrantReused),
        Just(Reason::AgentGone),
        Just(Reason::Unknown)
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._-]{0,40}"
}

fn grant() -> impl Strategy<Value = SignedGrant> {
    (proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(body, a, b)| {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&a);
        sig[32..].copy_from_slice(&b);
        SignedGrant { body: Bytes::from(body), sig }
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), text(), text(), proptest::collection::vec(text(), 0..5), any::<bool>()).prop_map(
            |(version, device, agent_version, services, streams)| Frame::Hello {
                version,
                device,
                agent_version,
                services,
                streams
            }
        ),
        (any::<u16>(), text(), any::<u32>()).prop_map(|(version, relay, heartbeat_secs)| Frame::Welcome {
            raw_legs: heartbeat_secs % 2 == 0,
            version,
            relay,
            heartbeat_secs
        }),
        (any::<u64>(), any::<Option<u64>>()).prop_map(|(seq, clock)| Frame::Heartbeat { seq, clock }),
        (any::<u64>(), "[0-9a-f]{0,64}", "[0-9a-f]{0,144}").prop_map(|(seq, hash, sig)| Frame::AuditHead {
            seq,
            hash,
            sig
        }),
        (grant(), text()).prop_map(|(grant, service)| Frame::AccessRequest { grant, service }),
        (sid(), any::<bool>(), reason()).prop_map(|(session, ok, reason)| Frame::Decision {
            session,
            outcome: if ok { Outcome::Allowed } else { Outcome::Refused },
            reason
        }),
        (sid(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(session, conn, key)| Frame::Open {
            session,
            conn,
            key,
            resumes: conn / 3,
            via: if conn % 2 == 0 { String::new() } else { "relay-b".into() },
        }),
        (sid(), any::<u32>(), reason()).prop_map(|(session, conn, reason)| Frame::OpenFailed { session, conn, reason }),
        (sid(), reason(), any::<u64>(), any::<u64>()).prop_map(
            |(session, reason, bytes_to_device, bytes_to_client)| {
                Frame::SessionEnd { session, reason, bytes_to_device, bytes_to_client }
            }
        ),
        (reason(), text()).prop_map(|(reason, message)| Frame::Error { reason, message }),
        (any::<u16>(), grant(), text()).prop_map(|(version, grant, service)| Frame::ClientOpen {
            version,
            grant,
            service
        }),
        (sid(), any::<[u8; 32]>(), any::<bool>(), any::<bool>()).prop_map(|(session, token, raw_legs, twin_holds)| {
            Frame::SessionReady { session, token, raw_legs, twin_holds }
        }),
        (any::<u16>(), sid(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(version, session, conn, mac)| {
            Frame::ClientJoin { version, session, conn, mac, resumes: conn / 2 }
        }),
        (any::<u16>(), sid(), any::<[u8; 32]>()).prop_map(|(version, session, mac)| Frame::ClientResume {
            version,
            session,
            mac
        }),
        (any::<u16>(), sid(), any::<u32>(), any::<[u8; 32]>())
            .prop_map(|(version, session, conn, mac)| Frame::DataOpen { version, session, conn, mac }),
        (sid(), any::<u32>()).prop_map(|(session, conn)| Frame::Paired { session, conn }),
        any::<u32>().prop_map(|secs| Frame::Waiting { secs }),
        (any::<u16>(), any::<bool>(), text(), any::<u64>(), any::<u32>()).prop_map(
            |(version, blob, name, offset, len)| Frame::Repo(RepoFrame::Get { version, blob, name, offset, len })
        ),
        (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..3000))
            .prop_map(|(offset, total, data)| Frame::Repo(RepoFrame::Data { offset, total, data: data.into() })),
        (any::<u16>(), text(), text()).prop_map(|(status, code, message)| Frame::Repo(RepoFrame::Failed {
            status,
            code,
            message
        })),
        (any::<u16>(), text(), any::<u64>(), any::<u64>(), any::<u32>(), text()).prop_map(
            |(version, job, offset, total, len, sha256)| Frame::Repo(RepoFrame::UploadPut {
                version,
                job,
                offset,
                total,
                len,
                sha256
            })
        ),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..3000), proptest::collection::vec(any::<u8>(), 0..99))
            .prop_map(|(version, csr, proof)| Frame::Repo(RepoFrame::CertRenew {
                version,
                cert: csr.iter().rev().copied().collect(),
                csr: csr.into(),
                proof: proof.into()
            })),
    ]
}

#[test]
fn fetch_leg_names_are_metadata_names_or_hashes_never_paths() {
    use super::repo::{metadata_name_ok, sha256_name_ok};
    for ok in ["root.json", "timestamp.json", "snapshot.json", "targets.json", "1.root.json", "42.root.json"] {
        assert!(metadata_name_ok(ok), "{ok}");
    }
    for bad in ["../hub.db", "x.root.json", ".root.json", "/etc/passwd", "targets.json/..", "12345678901.root.json"] {
        assert!(!metadata_name_ok(bad), "{bad}");
    }
    assert!(sha256_name_ok(&"0a".repeat(32)));
    for bad in ["0A".repeat(32), "0a".repeat(31), format!("../{}", "0a".repeat(31)), "zz".repeat(32)] {
        assert!(!sha256_name_ok(&bad), "{bad}");
    }
}

proptest! {
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(frame(), 1..6), split in 0usize..64) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        // Fed in two pieces: the decoder must wait for more bytes, not fail.
        let split = split.min(wire.len());
        let mut buf = BytesMut::from(&wire[..split]);
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            out.push(f);
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            out.push(f);
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        let mut g = Bytes::from(bytes);
        let _ = SignedGrant::decode(&mut g);
    }

    #[test]
    fn grants_round_trip_and_verify(device in text(), services in proptest::collection::vec(text(), 0..4), exp in any::<u64>()) {
        let signer = test_signer();
        let g = Grant { session: SessionId::random(), device, services, specialist: "s".into(), role: "r".into(),
                        client_key: Bytes::from_static(b"k"), relays: vec!["a".into()], issued_at: 1, expires_at: exp, consent: exp % 2 == 0, reason: String::new() };
        let v = GrantVerifier::new(signer.public_key());
        prop_assert_eq!(v.verify(&signer.sign(&g)).unwrap(), g);
    }
}

fn test_signer() -> GrantSigner {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    GrantSigner::from_pkcs8(doc.as_ref()).unwrap()
}

#[test]
fn oversize_length_is_refused_before_allocation() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    assert_eq!(Frame::decode(&mut buf), Err(ProtoError::Oversize { len: 0xffff_ffff, max: MAX_FRAME }));
    assert!(buf.capacity() < 1024, "decoder allocated for an oversize frame");
}

#[test]
fn a_heartbeat_without_a_clock_is_the_frame_older_peers_know() {
    // What every client, twin and older agent sends, and what a relay
    // answers an older agent with: 4-byte length, type, sequence; nothing more.
    let mut old = BytesMut::new();
    Frame::Heartbeat { seq: 7, clock: None }.encode(&mut old);
    assert_eq!(&old[..], &[0, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0, 0, 7]);
    let mut new = BytesMut::new();
    Frame::Heartbeat { seq: 7, clock: Some(1_796_000_000_000) }.encode(&mut new);
    assert_eq!(new.len(), 4 + 17, "the clock trails the sequence");
    assert_eq!(Frame::decode(&mut new).unwrap(), Some(Frame::Heartbeat { seq: 7, clock: Some(1_796_000_000_000) }));
    assert_eq!(Frame::decode(&mut old).unwrap(), Some(Frame::Heartbeat { seq: 7, clock: None }));
}

#[test]
fn version_mismatch_is_named() {
    let e = check_version(VERSION + 1).unwrap_err();
    assert_eq!(e.reason(), Reason::VersionMismatch);
    assert!(e.to_string().contains("not supported"));
}

#[test]
fn tampered_grant_fails_verification() {
    let signer = test_signer();
    let g = Grant {
        session: SessionId::random(),
        device: "d".into(),
        services: vec![],
        specialist: "s".into(),
        role: "r".into(),
        client_key: Bytes::new(),
        relays: vec![],
        issued_at: 1,
        expires_at: 2,
        consent: false,
        reason: String::new(),
    };
    let mut sg = signer.sign(&g);
    sg.sig[0] ^= 1;
    assert_eq!(GrantVerifier::new(signer.public_key()).verify(&sg), Err(GrantError::BadSignature));
}

#[test]
fn a_claimed_length_allocates_nothing_and_preambles_are_capped_by_type() {
    // A header alone claiming a large frame: need more bytes, and no room reserved for them.
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&(60_000u32).to_be_bytes());
    assert!(matches!(Frame::decode(&mut buf), Ok(None)));
    assert!(buf.capacity() < 1024, "a 4-byte header reserved {} bytes", buf.capacity());
    // With its type byte, a preamble claiming 60 000 bytes is refused at once.
    buf.extend_from_slice(&[12]); // ClientJoin
    assert!(matches!(Frame::decode(&mut buf), Err(ProtoError::Oversize { max: 1024, .. })));
    let mut hb = BytesMut::new();
    hb.extend_from_slice(&(300u32).to_be_bytes());
    hb.extend_from_slice(&[3]); // Heartbeat
    assert!(matches!(Frame::decode(&mut hb), Err(ProtoError::Oversize { max: 256, .. })));
}

/// Writes seed inputs for the fuzz targets under `fuzz/seeds/`: real
/// encodings of frames, grants and twin facts. Run after a wire change:
/// `cargo test --lib write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for i in 0..48 {
        let f = frame().new_tree(&mut runner).unwrap().current();
        let mut b = BytesMut::new();
        f.encode(&mut b);
        write("frame_decode", format!("{i:02}-{}", f.kind()), &b);
    }
    let signer = test_signer();
    for i in 0..8u64 {
        let g = Grant {
            session: SessionId([i as u8; 16]),
            specialist: format!("user-{i}"),
            role: "engineer".into(),
            device: format!("demo-{i}"),
            services: vec!["echo".into(), "ssh".into()],
            client_key: Bytes::from(vec![i as u8; 32]),
            relays: vec!["relay-a".into(), "relay-b".into()],
            issued_at: 1_700_000_000 + i,
            expires_at: 1_700_000_120 + i,
            consent: i % 2 == 0,
            reason: if i % 3 == 0 { format!("CHG-{i}: pump ✓") } else { String::new() },
        };
        let mut b = BytesMut::new();
        signer.sign(&g).encode(&mut b);
        write("grant_verify", format!("grant-{i}"), &b);
        write("frame_decode", format!("grant-{i}"), &b);
    }
    let sid = |i: u8| SessionId([i; 16]);
    let facts = [
        twin::Fact::SessionUp(twin::SessionFact {
            session: sid(1),
            device: "demo-1".into(),
            service: "echo".into(),
            specialist: "dev".into(),
            role: "admin".into(),
            client: "127.0.0.1:5000".into(),
            token: [9; 32],
            started_at: 1_700_000_000,
        }),
        twin::Fact::SessionDown { session: sid(2), reason: Reason::AgentGone },
        twin::Fact::Consumed { session: sid(3), expires_at: 1_700_000_120 },
        twin::Fact::Attached { device: "demo-1".into() },
        twin::Fact::Detached { device: "demo-2".into() },
        twin::Fact::ControlHere { session: sid(4) },
    ];
    for (i, f) in facts.iter().enumerate() {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        write("twin_fact", format!("fact-{i}"), &b);
    }
    for i in 0..16 {
        let f = stream::tests::frame().new_tree(&mut runner).unwrap().current();
        let mut b = BytesMut::new();
        f.encode(&mut b);
        write("stream_decode", format!("{i:02}"), &b);
    }
}

#[test]
fn a_long_string_is_cut_at_a_character_boundary_and_still_decodes() {
    let reason = format!("a{}", "ü".repeat(700)); // the cap (1024 bytes) falls inside a character
    let f = Frame::Error { reason: Reason::Internal, message: reason };
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    match Frame::decode(&mut buf).unwrap().unwrap() {
        Frame::Error { message, .. } => assert_eq!(message, format!("a{}", "ü".repeat(511))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hello_without_the_streams_byte_is_the_old_hello_and_means_no_streams() {
    let hello = |streams| Frame::Hello {
        version: VERSION,
        device: "dev-1".into(),
        agent_version: "0.1.0".into(),
        services: vec!["ssh".into()],
        streams,
    };
    let (mut old, mut new) = (BytesMut::new(), BytesMut::new());
    hello(false).encode(&mut old);
    hello(true).encode(&mut new);
    // Without streams the bytes are an older agent's hello exactly: one byte more with.
    assert_eq!(new.len(), old.len() + 1);
    assert_eq!(&new[4..old.len()], &old[4..]);
    assert_eq!(Frame::decode(&mut old).unwrap(), Some(hello(false)));
    assert_eq!(Frame::decode(&mut new).unwrap(), Some(hello(true)));
    // Anything but 0 or 1 there is refused, not read as a yes.
    let mut bad = BytesMut::new();
    hello(true).encode(&mut bad);
    let last = bad.len() - 1;
    bad[last] = 7;
    assert!(matches!(Frame::decode(&mut bad), Err(ProtoError::BadValue { field: "flag", .. })));
}
