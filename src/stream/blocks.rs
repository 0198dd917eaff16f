//! Receive blocks sized to the traffic.
//!
//! The resumable stream reads into a `BytesMut` and splits each read off as a
//! frozen chunk that stays alive until the peer acknowledges it (sending) or
//! the application takes it (receiving). A fixed 64 KiB block per read, as
//! the first version had, made every small interactive write pin a fresh
//! 64 KiB allocation of which it touched a page or two; glibc's allocator
//! kept the touched pages of all those blocks resident, and the agent and the
//! client grew by megabytes per failover in the soak. Blocks start small,
//! double while reads fill them (bulk transfer) and halve while reads are
//! small (interactive), so a quiet connection holds a few KiB and a busy one
//! still reads 64 KiB at a time.
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Smallest and largest block.
pub const MIN: usize = 4 * 1024;
pub const MAX: usize = 64 * 1024;

/// The block size to use next, learnt from the reads so far.
#[derive(Debug, Clone, Copy)]
pub struct Blocks {
    size: usize,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks { size: MIN }
    }
}

impl Blocks {
    /// Makes sure `buf` has room for a read: when less than a quarter of a
    /// block is left, moves to a new block of the current size (carrying the
    /// bytes not yet split off, such as half a frame).
    pub fn ensure(&self, buf: &mut BytesMut) {
        if buf.capacity() - buf.len() >= self.size / 4 {
            return;
        }
        let mut next = BytesMut::with_capacity(self.size.max(buf.len() * 2));
        next.extend_from_slice(buf);
        *buf = next;
    }

    /// Reads at most `limit` bytes from `r` into `buf`, learning from the
    /// read. While nothing arrives and `buf` holds no bytes, it holds no block
    /// either: an idle connection keeps none (it would pin 4 KiB per
    /// direction for as long as it is held).
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        buf: &mut BytesMut,
        limit: usize,
    ) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            self.ensure(buf);
            let room = (buf.capacity() - buf.len()).min(limit);
            let mut limited = (&mut *r).take(room as u64);
            match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut limited), cx, buf) {
                std::task::Poll::Ready(Ok(n)) => {
                    self.observe(n, room);
                    std::task::Poll::Ready(Ok(n))
                }
                std::task::Poll::Pending if buf.is_empty() => {
                    *buf = BytesMut::new();
                    std::task::Poll::Pending
                }
                other => other,
            }
        })
        .await
    }

    /// Learns from a read of `n` bytes into `room` free bytes.
    pub fn observe(&mut self, n: usize, room: usize) {
        if n >= room && self.size < MAX {
            self.size *= 2;
        } else if n < self.size / 8 && self.size > MIN {
            self.size /= 2;
        }
    }

    #[cfg(test)]
    fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_grow_with_full_reads_and_shrink_with_small_ones() {
        let mut b = Blocks::default();
        for _ in 0..10 {
            b.observe(b.size(), b.size());
        }
        assert_eq!(b.size(), MAX);
        for _ in 0..10 {
            b.observe(100, MAX);
        }
        assert_eq!(b.size(), MIN);
    }

    #[tokio::test]
    async fn a_read_that_waits_holds_no_block_and_one_that_reads_does() {
        use tokio::io::AsyncWriteExt;
        let (mut near, mut far) = tokio::io::duplex(1024);
        let mut blocks = Blocks::default();
        let mut buf = BytesMut::new();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), blocks.read(&mut near, &mut buf, 100));
        assert!(waited.await.is_err(), "nothing was written, so the read waits");
        assert_eq!(buf.capacity(), 0, "a waiting read holds no block");
        far.write_all(b"hello").await.unwrap();
        assert_eq!(blocks.read(&mut near, &mut buf, 100).await.unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        // Half a frame held: the block stays while the rest is awaited.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), blocks.read(&mut near, &mut buf, 100));
        assert!(waited.await.is_err());
        assert!(buf.capacity() >= 5 && &buf[..] == b"hello");
    }

    #[test]
    fn a_new_block_carries_the_unsplit_bytes_and_is_not_the_old_size() {
        let b = Blocks::default();
        let mut buf = BytesMut::with_capacity(MAX);
        buf.extend_from_slice(&[7u8; 100]);
        let _chunk = buf.split_to(90).freeze();
        // Plenty of room left: nothing changes.
        b.ensure(&mut buf);
        assert_eq!(&buf[..], &[7u8; 10]);
        // Nearly full, with 100 bytes of half a frame not split off.
        buf.resize(buf.capacity() - 10, 1);
        let half_frame = buf.split_to(buf.len() - 100);
        drop(half_frame);
        b.ensure(&mut buf);
        assert!(buf.capacity() - buf.len() >= MIN / 4);
        assert!(buf.capacity() < MAX, "a small block, not the old block's size: {}", buf.capacity());
        assert_eq!(&buf[..], &[1u8; 100]);
    }
}
