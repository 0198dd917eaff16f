//! The narrow interface between a relay and its twin link. The relay owns a
//! [`Replica`] (what the twin told us, the facts we publish, requests for the
//! twin) and implements [`TwinHost`], the few things the link asks of it.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{Notify, broadcast, mpsc};

use super::PeerView;
use crate::proto::twin::Fact;
use crate::proto::{Frame, Reason, SessionId};
use crate::util::lock;

/// The twin link (17003): mTLS with relay certificates, ALPN `tether-twin/1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinConfig {
    /// The twin's name; its certificate's common name must match.
    pub name: String,
    /// Where to dial the twin's link listener.
    pub addr: String,
    /// Name to verify in the twin's certificate; defaults to `name`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Where this relay listens for its twin.
    pub listen: SocketAddr,
}

/// What the link needs to know of the relay it serves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This relay's name.
    pub me: String,
    pub twin: TwinConfig,
    pub ca: PathBuf,
    /// The relay's CRL: a revoked twin certificate is refused and dropped.
    pub crl: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub handshake_timeout: Duration,
}

/// What the twin link asks of the relay.
pub trait TwinHost: Send + Sync + 'static {
    /// Our own facts as they stand, for a snapshot to the twin.
    fn own_facts(&self) -> Vec<Fact>;
    /// The twin asks the device attached here to open a data leg
    /// (a `TwinOpen` frame) for a client leg that waits at the twin.
    fn twin_open(&self, open: Frame);
    /// The twin ended a session; end our copy too.
    fn twin_ended(&self, session: SessionId, reason: Reason);
    /// Counts and audits a refused twin connection.
    fn refused(&self, peer: SocketAddr, reason: &str, detail: &str);
    /// Counts a connection closed before its first byte (nothing refused).
    fn left_early(&self, peer: SocketAddr);
    /// Writes an audit record.
    fn audit(&self, event: &str, fields: serde_json::Value);
}

/// The relay's side of replication: the twin's view, our fact stream,
/// requests for the twin, and the link's health.
pub struct Replica {
    peer: Mutex<PeerView>,
    /// Facts with their publish index (1, 2, ...).
    facts: broadcast::Sender<(u64, Fact)>,
    published: Mutex<u64>,
    /// The highest publish index the twin has acknowledged (directly, or by a snapshot taken after it).
    acked: AtomicU64,
    acked_changed: Notify,
    /// Our facts are flowing to the twin.
    out_up: AtomicBool,
    /// Connections from the twin whose facts are flowing to us (two for a
    /// moment when it reconnects before the old one is seen to end).
    in_links: AtomicUsize,
    /// Facts sent to the twin and not yet acknowledged.
    lag: AtomicU64,
    requests: mpsc::UnboundedSender<Frame>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<Frame>>>,
    /// Woken whenever the view changes (a session may have become known).
    changed: Notify,
}

impl Default for Replica {
    fn default() -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        Replica {
            peer: Mutex::new(PeerView::default()),
            facts: broadcast::channel(8192).0,
            published: Mutex::new(0),
            acked: AtomicU64::new(0),
            acked_changed: Notify::new(),
            out_up: AtomicBool::new(false),
            in_links: AtomicUsize::new(0),
            lag: AtomicU64::new(0),
            requests,
            requests_rx: Mutex::new(Some(rx)),
            changed: Notify::new(),
        }
    }
}

impl Replica {
    /// What the twin holds, as it told us.
    pub fn peer(&self) -> std::sync::MutexGuard<'_, PeerView> {
        lock(&self.peer)
    }

    /// Streams a fact to the twin (dropped when no link is up; the next
    /// link starts with a snapshot). Returns its publish index.
    pub fn publish(&self, fact: Fact) -> u64 {
        let mut n = lock(&self.published);
        *n += 1;
        let _ = self.facts.send((*n, fact));
        *n
    }

    /// Waits (at most `within`) until the twin has acknowledged the fact
    /// published as `index`. False at once when no link to the twin is up.
    pub async fn replicated(&self, index: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.acked_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.holds(index) {
                return true;
            }
            if !self.out_up.load(Ordering::Relaxed) || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Sends a request (not a fact) to the twin: `TwinOpen`. False when no link could take it.
    pub fn request(&self, frame: Frame) -> bool {
        self.requests.send(frame).is_ok()
    }

    /// Whether the twin acknowledged the fact published as `index`
    /// (directly, or by a snapshot taken after it); index 0 is no fact.
    pub fn holds(&self, index: u64) -> bool {
        self.acked.load(Ordering::Relaxed) >= index
    }

    /// The twin's facts are flowing to us.
    pub fn link_up(&self) -> bool {
        self.in_links.load(Ordering::Relaxed) > 0
    }

    /// Facts sent to the twin and not yet acknowledged.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Waits until the view changes or the link goes down (a caller looking
    /// for a session the twin may be about to announce). Register interest
    /// with `notified` before checking, then await it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    // The link's side.

    pub(super) fn apply(&self, fact: Fact) {
        let mut peer = self.peer();
        peer.apply(fact);
        // Used grants the twin announces expire here too (amortised).
        if peer.consumed.len() % 1024 == 1023 {
            peer.purge(crate::util::now_secs());
        }
        drop(peer);
        self.changed.notify_waiters();
    }

    pub(super) fn snapshot_begin(&self) {
        self.peer().snapshot_begin();
    }

    pub(super) fn snapshot_end(&self) {
        let mut peer = self.peer();
        peer.snapshot_end(crate::util::now_secs());
        peer.purge(crate::util::now_secs());
        drop(peer);
        self.changed.notify_waiters();
    }

    /// A connection from the twin came up; its facts flow to us.
    pub(super) fn in_link_up(&self) {
        self.in_links.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// A connection from the twin that had come up ended. True when it was
    /// the last: the twin's facts no longer flow to us. (Only a link that
    /// came up counts: a stranger on the twin port changes nothing.)
    pub(super) fn in_link_down(&self) -> bool {
        let last = self.in_links.fetch_sub(1, Ordering::Relaxed) == 1;
        if last {
            self.peer().link_lost();
        }
        self.changed.notify_waiters();
        last
    }

    pub(super) fn set_lag(&self, events: u64) {
        self.lag.store(events, Ordering::Relaxed);
    }

    /// Subscribes to our facts; also returns the last index published
    /// before: a snapshot taken after this reflects everything up to it.
    pub(super) fn subscribe(&self) -> (broadcast::Receiver<(u64, Fact)>, u64) {
        let n = lock(&self.published);
        (self.facts.subscribe(), *n)
    }

    pub(super) fn set_out_up(&self, up: bool) {
        self.out_up.store(up, Ordering::Relaxed);
        self.acked_changed.notify_waiters();
    }

    /// The twin acknowledged everything up to publish index `index`.
    pub(super) fn set_acked(&self, index: u64) {
        self.acked.fetch_max(index, Ordering::Relaxed);
        self.acked_changed.notify_waiters();
    }

    pub(super) fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<Frame>> {
        lock(&self.requests_rx).take()
    }
}
