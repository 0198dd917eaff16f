//! A stream split into a reading and a writing half, as `tokio::io::split`
//! does, whose writing half can also reach the stream itself: the resumable
//! stream's driver hands a QUIC leg's stream its chunks without copying them
//! ([`crate::leg::SendUnder`]), which `AsyncWrite`'s byte slices cannot.
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Both halves of `stream`; each locks it for one poll at a time.
pub fn split<T>(stream: T) -> (ReadPart<T>, WritePart<T>) {
    let shared = Arc::new(Mutex::new(stream));
    (ReadPart(shared.clone()), WritePart(shared))
}

pub struct ReadPart<T>(Arc<Mutex<T>>);

pub struct WritePart<T>(Arc<Mutex<T>>);

impl<T> WritePart<T> {
    /// Runs `f` on the stream (while the reading half waits for it).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut super::lock(&self.0))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadPart<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *super::lock(&self.0)).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WritePart<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *super::lock(&self.0)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *super::lock(&self.0)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        super::lock(&self.0).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *super::lock(&self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *super::lock(&self.0)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[tokio::test]
    async fn both_halves_work_at_once_and_the_writer_reaches_the_stream() {
        let (near, mut far) = tokio::io::duplex(64);
        let (mut r, mut w) = super::split(near);
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 5];
            r.read_exact(&mut got).await.unwrap();
            got
        });
        w.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        far.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        far.write_all(b"hello").await.unwrap();
        assert_eq!(&reader.await.unwrap(), b"hello");
        // The writing half reaches the stream itself: a write made there arrives.
        let n = std::future::poll_fn(|cx| w.with(|s| std::pin::Pin::new(s).poll_write(cx, b"!"))).await.unwrap();
        let mut one = [0u8; 1];
        far.read_exact(&mut one).await.unwrap();
        assert_eq!((n, &one), (1, b"!"));
    }
}
