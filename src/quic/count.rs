//! The streams a peer holds open on one QUIC connection, and the limit that
//! grows with them: a connection starts with [`super::INITIAL_STREAMS`]
//! (quinn keeps state for every stream the peer may open, so an idle
//! connection should allow few) and doubles when three quarters are in use.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use quinn::{Connection, VarInt};

/// The count of one connection's peer-opened streams and their limit.
pub struct StreamCount {
    open: Arc<AtomicU32>,
    limit: u32,
    max: u32,
}

impl StreamCount {
    /// Starts at `initial` (the connection's transport config), never above `max`.
    pub fn new(initial: u32, max: u32) -> StreamCount {
        let max = max.max(initial);
        StreamCount { open: Arc::new(AtomicU32::new(0)), limit: initial, max }
    }

    /// Counts a stream the peer just opened on `conn`, raising the limit when
    /// three quarters are in use (doubling, up to `max`). The stream counts
    /// until the returned guard is dropped: keep it with the leg, which may
    /// outlive the task that took it.
    pub fn opened(&mut self, conn: &Connection) -> OpenStream {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        if open * 4 >= self.limit * 3 && self.limit < self.max {
            let to = (self.limit * 2).min(self.max);
            conn.set_max_concurrent_bi_streams(VarInt::from_u32(to));
            tracing::debug!(open, from = self.limit, to, "QUIC stream limit raised");
            self.limit = to;
        }
        OpenStream(self.open.clone())
    }

    /// Streams open now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

/// A stream counted open on its connection until dropped.
pub struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
