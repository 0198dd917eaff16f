//! A session as the relay sees it: who, what, counters, and its end signal.
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proto::twin::SessionFact;
use crate::proto::{Grant, Reason, SessionId};

pub struct Session {
    pub id: SessionId,
    pub device: String,
    pub service: String,
    pub specialist: String,
    pub role: String,
    pub client_addr: String,
    /// The agent control channel that admitted it.
    pub attach_id: u64,
    pub token: [u8; 32],
    pub started: Instant,
    pub to_device: AtomicU64,
    pub to_client: AtomicU64,
    pub tunnels: AtomicU64,
    /// Connection numbers already joined (each may be paired once).
    pub joined: Mutex<crate::util::NumberSet>,
    pub end: CancellationToken,
    pub end_reason: Mutex<Option<Reason>>,
    /// Admitted by the twin; taken up here from replication.
    pub adopted: bool,
    /// The publish index of its `SessionUp` (0 when the twin admitted it):
    /// the twin holds it once it acknowledged that index, directly or by a
    /// later snapshot (`twin::Replica::holds`). A drain hands over what the
    /// twin holds; the rest ends here.
    pub up_index: AtomicU64,
    /// Unix seconds at admission.
    pub started_at: u64,
    /// Counts control legs taken up here by `ClientResume` (moved from the
    /// twin, or back after a break); woken on each.
    pub control_epoch: AtomicU64,
    pub control_moved: Notify,
}

impl Session {
    pub fn new(grant: &Grant, service: &str, client_addr: String, attach_id: u64, end: CancellationToken) -> Session {
        let fact = SessionFact {
            session: grant.session,
            device: grant.device.clone(),
            service: service.to_string(),
            specialist: grant.specialist.clone(),
            role: grant.role.clone(),
            client: client_addr,
            token: crate::random_bytes(),
            started_at: crate::util::now_secs(),
        };
        Session::from_fact(&fact, attach_id, end, false)
    }

    /// A session the twin admitted, from its replicated fact.
    pub fn adopted(f: &SessionFact, attach_id: u64, end: CancellationToken) -> Session {
        Session::from_fact(f, attach_id, end, true)
    }

    fn from_fact(f: &SessionFact, attach_id: u64, end: CancellationToken, adopted: bool) -> Session {
        Session {
            id: f.session,
            device: f.device.clone(),
            service: f.service.clone(),
            specialist: f.specialist.clone(),
            role: f.role.clone(),
            client_addr: f.client.clone(),
            attach_id,
            token: f.token,
            started: Instant::now(),
            to_device: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            joined: Mutex::new(crate::util::NumberSet::new()),
            end,
            end_reason: Mutex::new(None),
            adopted,
            up_index: AtomicU64::new(0),
            started_at: f.started_at,
            control_epoch: AtomicU64::new(0),
            control_moved: Notify::new(),
        }
    }

    /// The replicated form of this session.
    pub fn fact(&self) -> SessionFact {
        SessionFact {
            session: self.id,
            device: self.device.clone(),
            service: self.service.clone(),
            specialist: self.specialist.clone(),
            role: self.role.clone(),
            client: self.client_addr.clone(),
            token: self.token,
            started_at: self.started_at,
        }
    }

    /// The control leg moved here (`ClientResume`) at least once.
    pub fn control_moved_here(&self) -> bool {
        self.control_epoch.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    pub fn reason(&self) -> Reason {
        self.end_reason.lock().map(|r| r.unwrap_or(Reason::Unknown)).unwrap_or(Reason::Unknown)
    }
}
