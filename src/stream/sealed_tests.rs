use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fn pair(k: u8) -> (Direction, Direction) {
    (Direction::new(&[k; 16], [k; 12]), Direction::new(&[k; 16], [k; 12]))
}

#[tokio::test]
async fn records_carry_bytes_both_ways_and_end_with_the_close_record() {
    let (a, b) = duplex(1 << 20);
    let (ab_tx, ab_rx) = pair(1);
    let (ba_tx, ba_rx) = pair(2);
    let mut left = Sealed::new(a, ab_tx, ba_rx, b"HDR".to_vec());
    let mut right = Sealed::new(b, ba_tx, ab_rx, Vec::new());
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    left.write_all(&big).await.unwrap();
    left.shutdown().await.unwrap();
    // The prefix goes out unsealed, first.
    let mut hdr = [0u8; 3];
    right.io.read_exact(&mut hdr).await.unwrap();
    assert_eq!(&hdr, b"HDR");
    let mut got = Vec::new();
    right.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, big);
    right.write_all(b"back").await.unwrap();
    right.flush().await.unwrap();
    let mut b4 = [0u8; 4];
    left.read_exact(&mut b4).await.unwrap();
    assert_eq!(&b4, b"back");
}

#[tokio::test]
async fn one_altered_byte_fails_closed_and_the_plaintext_never_shows() {
    let (a, mut b) = duplex(1 << 20);
    let (tx, _) = pair(3);
    let (_, rx_unused) = pair(4);
    let mut w = Sealed::new(a, tx, rx_unused, Vec::new());
    w.write_all(b"PATIENT-ID:7781").await.unwrap();
    w.flush().await.unwrap();
    let mut wire = vec![0u8; 2 + 15 + 1 + 16];
    b.read_exact(&mut wire).await.unwrap();
    assert!(!wire.windows(7).any(|x| x == b"PATIENT"), "plaintext on the wire");
    for at in 0..wire.len() {
        let mut altered = wire.clone();
        altered[at] ^= 0x01;
        let (c, mut d) = duplex(1 << 16);
        let (_, rx) = pair(3);
        let (tx2, _) = pair(5);
        let mut r = Sealed::new(c, tx2, rx, Vec::new());
        d.write_all(&altered).await.unwrap();
        drop(d);
        let mut buf = [0u8; 64];
        let e = r.read(&mut buf).await.expect_err("an altered record was accepted");
        assert!(matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof), "byte {at}: {e}");
    }
}

#[tokio::test]
async fn an_end_without_the_close_record_is_a_truncation_not_an_end() {
    let (a, b) = duplex(1 << 16);
    let (tx, rx) = pair(6);
    let (tx2, rx2) = pair(7);
    let mut w = Sealed::new(a, tx, rx2, Vec::new());
    let mut r = Sealed::new(b, tx2, rx, Vec::new());
    w.write_all(b"partial").await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    let mut got = [0u8; 7];
    r.read_exact(&mut got).await.unwrap();
    let e = r.read(&mut got).await.expect_err("a cut stream read as a clean end");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_salted_direction_derives_its_keys_from_the_peers_first_bytes() {
    let (a, b) = duplex(1 << 16);
    let salt = [9u8; SALT];
    let key_of = |s: &[u8; SALT]| Direction::new(&[s[0]; 16], [s[1]; 12]);
    let (tx_left, rx_right) = pair(8);
    // The right side sends its salt, then seals with keys derived from it.
    let right_tx = key_of(&salt);
    let mut left = Sealed::salted(a, tx_left, Box::new(key_of), Vec::new());
    let mut right = Sealed::new(b, right_tx, rx_right, salt.to_vec());
    right.write_all(b"salted").await.unwrap();
    right.flush().await.unwrap();
    let mut got = [0u8; 6];
    left.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"salted");
}

#[tokio::test]
async fn a_reader_waiting_with_nothing_received_holds_no_buffer() {
    let (a, b) = duplex(1 << 20);
    let (tx, rx) = pair(10);
    let (tx2, rx2) = pair(11);
    let mut w = Sealed::new(a, tx, rx2, Vec::new());
    let mut r = Sealed::new(b, tx2, rx, Vec::new());
    let big = vec![5u8; 300_000];
    w.write_all(&big).await.unwrap();
    w.flush().await.unwrap();
    let mut got = vec![0u8; big.len()];
    r.read_exact(&mut got).await.unwrap();
    assert_eq!(got, big);
    // Nothing more has come: the read waits, and keeps no buffer while it does.
    let mut one = [0u8; 1];
    let read = r.read(&mut one);
    assert!(tokio::time::timeout(std::time::Duration::from_millis(20), read).await.is_err());
    assert_eq!(r.raw.capacity(), 0, "the waiting reader kept its receive buffer");
    assert_eq!(r.plain.capacity(), 0, "the waiting reader kept its plaintext buffer");
}
