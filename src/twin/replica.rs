//! The narrow interface between a relay and its twin link. The relay owns a
//! [`Replica`] (what the twin told us, the facts we publish, requests for the
//! twin) and implements [`TwinHost`], the few things the link asks of it.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Writes an audit record.
    fn audit(&self, event: &str, fields: serde_json::Value);
}

/// The relay's side of replication: the twin's view, our fact stream,
/// requests for the twin, and the link's health.
pub struct Replica {
    peer: Mutex<PeerView>,
    facts: broadcast::Sender<Fact>,
    /// The twin's facts are flowing to us.
    in_up: AtomicBool,
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
            in_up: AtomicBool::new(false),
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
    /// link starts with a snapshot).
    pub fn publish(&self, fact: Fact) {
        let _ = self.facts.send(fact);
    }

    /// Sends a request (not a fact) to the twin: `TwinOpen`. False when no link could take it.
    pub fn request(&self, frame: Frame) -> bool {
        self.requests.send(frame).is_ok()
    }

    /// The twin's facts are flowing to us.
    pub fn link_up(&self) -> bool {
        self.in_up.load(Ordering::Relaxed)
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
        self.peer().apply(fact);
        self.changed.notify_waiters();
    }

    pub(super) fn snapshot_begin(&self) {
        self.peer().snapshot_begin();
    }

    pub(super) fn snapshot_end(&self) {
        self.peer().snapshot_end();
        self.changed.notify_waiters();
    }

    pub(super) fn set_in_up(&self, up: bool) {
        self.in_up.store(up, Ordering::Relaxed);
        if !up {
            self.peer().link_lost();
        }
        self.changed.notify_waiters();
    }

    pub(super) fn set_lag(&self, events: u64) {
        self.lag.store(events, Ordering::Relaxed);
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Fact> {
        self.facts.subscribe()
    }

    pub(super) fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<Frame>> {
        lock(&self.requests_rx).take()
    }
}
