//! The pipe between a resumable stream's application end (the end-to-end
//! TLS reads and writes it) and the stream's driver. Unlike an in-memory
//! byte pipe, chunks change hands without a second copy: what the
//! application writes is taken by the driver as one `Bytes` (it becomes the
//! retransmit buffer's chunk as it is), a writer that has its bytes in a
//! buffer of its own (the sealed record layer) hands that buffer over
//! without a copy at all ([`AppEnd::poll_put`]), and what the driver
//! received is handed over as the chunk it already is. A direction holds memory only
//! while bytes wait in it, so a held connection that once moved a burst does
//! not keep the burst's buffer.
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    /// Application -> driver: written, not yet taken: chunks handed over
    /// whole, then the bytes copied in after them (`tail`).
    out: VecDeque<Bytes>,
    tail: BytesMut,
    out_len: usize,
    /// The application shut down its writing side, or is gone.
    out_closed: bool,
    /// The application waits for room to write.
    out_waker: Option<Waker>,
    /// Driver -> application: handed over, not yet read.
    inbound: VecDeque<Bytes>,
    inbound_len: usize,
    /// No more bytes will come to the application (FIN, or the driver is gone).
    inbound_done: bool,
    /// The application waits for bytes.
    in_waker: Option<Waker>,
    app_gone: bool,
    driver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Bytes each direction holds before its writer waits.
    cap: usize,
    /// For the driver: the application wrote or shut down.
    written: Notify,
    /// For the driver: the application read (room), or is gone.
    read: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }
}

/// The application's end: `AsyncRead + AsyncWrite`.
pub struct AppEnd(Arc<Shared>);

/// The driver's end: takes what the application wrote, hands over what
/// arrived.
pub struct DriverEnd(Arc<Shared>);

/// A pipe whose directions each hold up to `cap` bytes.
pub fn pipe(cap: usize) -> (AppEnd, DriverEnd) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        cap: cap.max(1),
        written: Notify::new(),
        read: Notify::new(),
    });
    (AppEnd(shared.clone()), DriverEnd(shared))
}

impl DriverEnd {
    /// Up to `max` (> 0) bytes the application wrote, as one chunk; `None`
    /// once it shut down its writing side and everything was taken.
    pub async fn take(&self, max: usize) -> Option<Bytes> {
        loop {
            {
                let mut s = self.0.lock();
                if s.out_len > 0 {
                    let n = max.max(1);
                    let chunk = match s.out.front_mut() {
                        Some(front) if front.len() > n => front.split_to(n),
                        Some(_) => s.out.pop_front().unwrap_or_default(),
                        None => {
                            let n = n.min(s.tail.len());
                            let chunk = s.tail.split_to(n).freeze();
                            if s.tail.is_empty() {
                                // Let the spare capacity go with the chunk.
                                s.tail = BytesMut::new();
                            }
                            chunk
                        }
                    };
                    s.out_len -= chunk.len();
                    if let Some(w) = s.out_waker.take() {
                        w.wake();
                    }
                    return Some(chunk);
                }
                if s.out_closed {
                    return None;
                }
            }
            self.0.written.notified().await;
        }
    }

    /// Hands `chunk` to the application, waiting while the direction is
    /// full; an error if the application is gone.
    pub async fn give(&self, chunk: Bytes) -> io::Result<()> {
        loop {
            {
                let mut s = self.0.lock();
                if s.app_gone {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if s.inbound_len < self.0.cap {
                    s.inbound_len += chunk.len();
                    if !chunk.is_empty() {
                        s.inbound.push_back(chunk);
                    }
                    if let Some(w) = s.in_waker.take() {
                        w.wake();
                    }
                    return Ok(());
                }
            }
            self.0.read.notified().await;
        }
    }

    /// No more bytes for the application: its reads end once it read what
    /// was handed over.
    pub fn finish(&self) {
        let mut s = self.0.lock();
        s.inbound_done = true;
        if let Some(w) = s.in_waker.take() {
            w.wake();
        }
    }
}

impl Drop for DriverEnd {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.driver_gone = true;
        s.inbound_done = true;
        for w in [s.in_waker.take(), s.out_waker.take()].into_iter().flatten() {
            w.wake();
        }
    }
}

impl Drop for AppEnd {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.app_gone = true;
            s.out_closed = true;
            s.inbound.clear();
            s.inbound_len = 0;
        }
        self.0.written.notify_one();
        self.0.read.notify_one();
    }
}

impl AsyncRead for AppEnd {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.lock();
        if s.inbound.is_empty() {
            if s.inbound_done {
                return Poll::Ready(Ok(()));
            }
            s.in_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        while buf.remaining() > 0 {
            let Some(front) = s.inbound.front_mut() else { break };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                s.inbound.pop_front();
            }
            s.inbound_len -= n;
        }
        drop(s);
        self.0.read.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl AppEnd {
    /// Takes all of `chunk` as it is (no copy), once the direction has room
    /// for a byte: it may hold up to one chunk past its cap. `chunk` is left
    /// empty, without capacity.
    pub fn poll_put(&self, cx: &mut Context<'_>, chunk: &mut BytesMut) -> Poll<io::Result<()>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut s = self.0.lock();
        if s.driver_gone || s.out_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.out_len >= self.0.cap {
            s.out_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if !s.tail.is_empty() {
            let copied = std::mem::take(&mut s.tail).freeze();
            s.out.push_back(copied);
        }
        s.out_len += chunk.len();
        s.out.push_back(std::mem::take(chunk).freeze());
        drop(s);
        self.0.written.notify_one();
        Poll::Ready(Ok(()))
    }

    fn write_slices(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut s = self.0.lock();
        if s.driver_gone || s.out_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = self.0.cap.saturating_sub(s.out_len);
        if room == 0 {
            s.out_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut left = total.min(room);
        let n = left;
        s.tail.reserve(left);
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = b.len().min(left);
            s.tail.extend_from_slice(&b[..k]);
            left -= k;
        }
        s.out_len += n;
        drop(s);
        if n > 0 {
            self.0.written.notify_one();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for AppEnd {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_slices(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().out_closed = true;
        self.0.written.notify_one();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_end_with_shutdown_and_finish() {
        let (mut app, driver) = pipe(8);
        app.write_all(b"hello").await.unwrap();
        assert_eq!(&driver.take(3).await.unwrap()[..], b"hel");
        assert_eq!(&driver.take(100).await.unwrap()[..], b"lo");
        driver.give(Bytes::from_static(b"wor")).await.unwrap();
        driver.give(Bytes::from_static(b"ld")).await.unwrap();
        driver.finish();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world");
        app.shutdown().await.unwrap();
        assert!(driver.take(1).await.is_none());
    }

    #[tokio::test]
    async fn a_full_direction_makes_its_writer_wait() {
        let (mut app, driver) = pipe(4);
        assert_eq!(app.write(b"abcdef").await.unwrap(), 4, "only the room is taken");
        let mut second = tokio_test_write(&mut app, b"gh");
        assert!(futures_poll_once(&mut second).is_pending(), "a full pipe accepted more");
        assert_eq!(&driver.take(10).await.unwrap()[..], b"abcd");
        assert_eq!(second.await.unwrap(), 2);
        // The driver's side: the application reads to make room.
        driver.give(Bytes::from(vec![1u8; 4])).await.unwrap();
        let give = driver.give(Bytes::from_static(b"x"));
        tokio::pin!(give);
        assert!(futures_poll_once(&mut give).is_pending(), "a full inbound direction took more");
        let mut b = [0u8; 4];
        app.read_exact(&mut b).await.unwrap();
        give.await.unwrap();
    }

    #[tokio::test]
    async fn the_spare_capacity_goes_once_everything_was_taken() {
        let (mut app, driver) = pipe(1 << 20);
        app.write_all(&vec![7u8; 40_000]).await.unwrap();
        let chunk = driver.take(1 << 20).await.unwrap();
        assert_eq!(chunk.len(), 40_000);
        assert_eq!(driver.0.lock().tail.capacity(), 0, "the emptied direction kept its buffer");
    }

    #[tokio::test]
    async fn chunks_put_whole_keep_their_order_with_copied_writes_and_are_not_copied() {
        let (mut app, driver) = pipe(16);
        app.write_all(b"ab").await.unwrap();
        let mut chunk = BytesMut::from(&b"cdefghijklmnopqrstuvwxyz"[..]);
        let at = chunk.as_ptr();
        std::future::poll_fn(|cx| app.poll_put(cx, &mut chunk)).await.unwrap();
        assert!(chunk.is_empty() && chunk.capacity() == 0);
        // Past its cap now: a copied write and a put both wait.
        assert!(futures_poll_once(&mut tokio_test_write(&mut app, b"!")).is_pending());
        let mut more = BytesMut::from(&b"12"[..]);
        assert!(std::future::poll_fn(|cx| Poll::Ready(app.poll_put(cx, &mut more))).await.is_pending());
        assert_eq!(&driver.take(100).await.unwrap()[..], b"ab");
        let whole = driver.take(5).await.unwrap();
        assert_eq!((&whole[..], whole.as_ptr()), (&b"cdefg"[..], at), "the chunk was copied");
        assert_eq!(&driver.take(100).await.unwrap()[..], b"hijklmnopqrstuvwxyz");
        app.write_all(b"xy").await.unwrap();
        std::future::poll_fn(|cx| app.poll_put(cx, &mut more)).await.unwrap();
        assert_eq!(&driver.take(100).await.unwrap()[..], b"xy");
        assert_eq!(&driver.take(100).await.unwrap()[..], b"12");
    }

    #[tokio::test]
    async fn either_end_gone_ends_the_other() {
        let (mut app, driver) = pipe(16);
        drop(driver);
        let mut b = [0u8; 1];
        assert_eq!(app.read(&mut b).await.unwrap(), 0, "reads end when the driver is gone");
        assert_eq!(app.write(b"x").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let (app, driver) = pipe(16);
        drop(app);
        assert!(driver.take(1).await.is_none());
        assert_eq!(driver.give(Bytes::from_static(b"x")).await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    fn tokio_test_write<'a>(
        app: &'a mut AppEnd,
        b: &'a [u8],
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<usize>> + 'a>> {
        Box::pin(app.write(b))
    }

    fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::noop();
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }
}
