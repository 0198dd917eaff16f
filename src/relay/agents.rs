//! An attached agent as the relay holds it: its control channel's queue
//! and what it told us.
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proto::Frame;
use crate::util::clock::Offset;

/// Frames queued for an agent's control channel. Boxed: a queue's first
/// block holds 32 slots whatever is in them, and a `Frame` is ~190 bytes, so
/// unboxed it would cost every idle agent ~6 KiB.
#[derive(Clone)]
pub struct AgentTx(mpsc::Sender<Box<Frame>>);

impl AgentTx {
    /// A queue of `cap` frames and its receiving end.
    pub fn channel(cap: usize) -> (AgentTx, mpsc::Receiver<Box<Frame>>) {
        let (tx, rx) = mpsc::channel(cap);
        (AgentTx(tx), rx)
    }

    /// Queues `f` unless the queue is full or closed; whether it was queued.
    pub fn try_send(&self, f: Frame) -> bool {
        self.0.try_send(Box::new(f)).is_ok()
    }

    /// Queues `f`, waiting for room; false when the channel is gone.
    pub async fn send(&self, f: Frame) -> bool {
        self.0.send(Box::new(f)).await.is_ok()
    }
}

/// A live agent control channel.
pub struct AgentHandle {
    pub attach_id: u64,
    pub tx: AgentTx,
    pub cancel: CancellationToken,
    pub agent_version: String,
    /// `tcp` or `quic`: how the control channel reached us.
    pub transport: &'static str,
    /// Unix seconds of the last heartbeat (or the attach).
    pub last_heartbeat: AtomicU64,
    /// Unix milliseconds of the last frame of any kind from the agent (or the
    /// attach): a device that sends nothing after a request is given up on
    /// (`decision.rs`).
    pub heard_ms: AtomicU64,
    /// The agent's audit chain head and its signature, as it last told us,
    /// and what the hub took of it.
    pub audit_head: super::report_heads::HeadSlot,
    /// The device's certificate (DER; the hub checks heads with it), and its end.
    pub cert: Arc<[u8]>,
    pub cert_expires: u64,
    /// How far the device's clock is off from ours, as its heartbeats say.
    pub clock: Offset,
    /// The agent's QUIC connection, when it takes data legs as streams we
    /// open on it (its `Hello` said so): no round trip for the agent to open one.
    pub streams: Option<quinn::Connection>,
}
