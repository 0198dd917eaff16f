use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

use super::*;
use crate::proto::stream::{Decoder, StreamFrame};

/// A leg that keeps what each write carried.
struct Recording {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsyncRead for Recording {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        let n = std::task::ready!(Pin::new(&mut me.inner).poll_write(cx, buf))?;
        me.writes.lock().unwrap().push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct NoLegs;

impl LegSource for NoLegs {
    fn next_leg(&mut self) -> LegFuture<'_> {
        Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::NotFound, "none")) })
    }
}

/// The client's join and the first bytes its application wrote (a keyed
/// header, a ClientHello) leave in one write: one packet, one TLS record.
#[tokio::test]
async fn the_greeting_leaves_with_the_first_bytes_in_one_write() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let leg: Leg = Box::new(Recording { inner: near, writes: writes.clone() });
    let greeting = Bytes::from_static(b"JOIN FRAME");
    let first = FirstLeg { leg, read: Bytes::new(), greeting: greeting.clone(), hold: None };
    let (mut app, _driver) =
        start(first, Side::Client, 1, ResumeKey::default(), Box::new(NoLegs), ResumeConfig::default(), None);
    // Written before the driver first runs, as the client writes its first flight.
    app.write_all(b"first flight").await.unwrap();
    app.flush().await.unwrap();

    // Once the greeting arrived, the first write is done: it must carry the
    // first DATA frame too.
    let mut got = vec![0u8; greeting.len()];
    far.read_exact(&mut got).await.unwrap();
    assert_eq!(got, &greeting[..], "the greeting is not the leg's first bytes");
    let writes = writes.lock().unwrap().clone();
    let behind = writes[0].strip_prefix(&greeting[..]).expect("the first write does not start with the greeting");
    let frame = Decoder::default().next(&mut BytesMut::from(behind)).unwrap();
    assert!(
        matches!(&frame, Some(StreamFrame::Data { seq: 0, data }) if &data[..] == b"first flight"),
        "behind the greeting, the first write holds {frame:?} (writes of {:?} bytes)",
        writes.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// With nothing to go with it, the greeting still leaves at once (the relay
/// waits for a join before it answers anything).
#[tokio::test]
async fn a_greeting_with_nothing_behind_it_is_written_at_once() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let first = FirstLeg { leg: Box::new(near), read: Bytes::new(), greeting: Bytes::from_static(b"JOIN"), hold: None };
    let (_app, _driver) =
        start(first, Side::Client, 1, ResumeKey::default(), Box::new(NoLegs), ResumeConfig::default(), None);
    let mut got = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"JOIN");
}

/// A device's stream whose greeting is held, and its far end.
struct Held {
    far: DuplexStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    app: AppEnd,
    refuse: oneshot::Sender<Bytes>,
    driver: tokio::task::JoinHandle<Result<Stats, String>>,
}

fn held(at_most: Duration) -> Held {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let leg: Leg = Box::new(Recording { inner: near, writes: writes.clone() });
    let (refuse, instead) = oneshot::channel();
    let hold = Some(Hold { at_most, instead });
    let first = FirstLeg { leg, read: Bytes::new(), greeting: Bytes::from_static(b"PAIRED"), hold };
    let (app, driver) =
        start(first, Side::Device, 1, ResumeKey::default(), Box::new(NoLegs), ResumeConfig::default(), None);
    Held { far, writes, app, refuse, driver }
}

/// The agent's `Paired` waits for its first end-to-end bytes and leaves
/// with them, in one write.
#[tokio::test]
async fn a_held_greeting_waits_for_the_first_bytes_and_leaves_with_them() {
    let Held { mut far, writes, mut app, refuse: _refuse, .. } = held(Duration::from_secs(30));
    let mut got = [0u8; 6];
    let early = tokio::time::timeout(Duration::from_millis(200), far.read_exact(&mut got)).await;
    assert!(early.is_err(), "a held greeting left before any bytes: {got:?}");
    app.write_all(b"salt").await.unwrap();
    app.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"PAIRED");
    let writes = writes.lock().unwrap().clone();
    let behind = writes[0].strip_prefix(b"PAIRED".as_slice()).expect("the first write is not the greeting");
    let frame = Decoder::default().next(&mut BytesMut::from(behind)).unwrap();
    assert!(matches!(&frame, Some(StreamFrame::Data { seq: 0, data }) if &data[..] == b"salt"), "{frame:?}");
}

/// A stream that fails before its first bytes (its end dropped, a FIN to
/// send) writes what came instead of the greeting, alone, and closes the leg.
#[tokio::test]
async fn what_comes_instead_of_a_held_greeting_goes_alone_and_closes_the_leg() {
    let Held { mut far, app, refuse, driver, .. } = held(Duration::from_secs(30));
    drop(app);
    refuse.send(Bytes::from_static(b"REFUSED")).unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"REFUSED", "anything but the refusal went on the leg");
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await.unwrap().unwrap();
    assert!(ended.is_err(), "the driver reported a refused stream as {ended:?}");
}

/// A held greeting goes alone when its time is up, or when its sender is
/// dropped (the end-to-end check passed without bytes of its own).
#[tokio::test]
async fn a_held_greeting_goes_alone_when_its_time_is_up_or_its_sender_is_dropped() {
    let Held { mut far, app: _app, refuse: _refuse, .. } = held(Duration::from_millis(50));
    let mut got = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"PAIRED");
    let Held { mut far, app: _app, refuse, .. } = held(Duration::from_secs(30));
    drop(refuse);
    tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"PAIRED");
}

/// A resume key set between two looks of the watch is announced (KEYED)
/// with the next bytes the application writes, not in a write of its own
/// up to 100 ms later.
#[tokio::test]
async fn a_key_set_before_a_write_is_announced_with_it() {
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let leg: Leg = Box::new(Recording { inner: near, writes: writes.clone() });
    let key = ResumeKey::default();
    let (mut app, _driver) = start(
        (leg, Bytes::new()).into(),
        Side::Client,
        1,
        key.clone(),
        Box::new(NoLegs),
        ResumeConfig::default(),
        None,
    );
    // The watch has looked for the key and sleeps.
    tokio::time::sleep(Duration::from_millis(10)).await;
    key.set([7; 32]).unwrap();
    app.write_all(b"after the handshake").await.unwrap();
    app.flush().await.unwrap();
    let mut got = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut got)).await.unwrap().unwrap();
    let first = writes.lock().unwrap()[0].clone();
    let mut decoder = Decoder::default();
    let mut wire = BytesMut::from(&first[..]);
    let frames: Vec<_> = std::iter::from_fn(|| decoder.next(&mut wire).unwrap()).collect();
    assert!(matches!(frames.first(), Some(StreamFrame::Keyed)), "the first write holds {frames:?}");
    assert!(matches!(frames.get(1), Some(StreamFrame::Data { .. })), "the first write holds {frames:?}");
}
