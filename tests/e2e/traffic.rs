//! In-process traffic for the tests: services that count what reaches
//! them, a forwarder a test can cut, transfers that check every byte, and
//! the waiting and metric helpers the tests share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tether::client::ClientSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::Fleet;

pub fn parse_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    // A relay that is (re)starting answers nothing yet: that reads as empty.
    let Ok(mut s) = TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Audit records with `event` whose `reason` is `reason`.
pub fn audited(records: &[Value], event: &str, reason: &str) -> bool {
    records.iter().any(|r| r["event"] == event && r["reason"] == reason)
}

/// Awaits `f`, failing the test after `secs` seconds instead of hanging.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.unwrap_or_else(|_| panic!("not done within {secs} s"))
}

/// Polls `f` until it returns true (bounded: 10 s).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A TCP service that counts connections and bytes, and discards input.
pub struct CountingService {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    /// Connections currently open.
    pub open: Arc<AtomicU64>,
}

impl CountingService {
    pub async fn start(stop: CancellationToken) -> CountingService {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (conns, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let open = Arc::new(AtomicU64::new(0));
        let (c, b, o) = (conns.clone(), bytes.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! { _ = stop.cancelled() => return, r = l.accept() => r.unwrap() };
                c.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let (b, o) = (b.clone(), o.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CountingService { addr, conns, bytes, open }
    }
}

/// A TCP forwarder the test can cut (every connection dropped, new ones
/// refused) and heal: a network partition on loopback.
pub struct CutProxy {
    pub addr: SocketAddr,
    target: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    silent: Arc<tokio::sync::Notify>,
    quiet: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CutProxy {
    pub async fn start(target: Option<SocketAddr>) -> CutProxy {
        let target = Arc::new(std::sync::Mutex::new(target));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let silent = Arc::new(tokio::sync::Notify::new());
        let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, k2, s2, q2, t2) = (cut.clone(), conns.clone(), silent.clone(), quiet.clone(), target.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: the dialler sees the connection close
                }
                let (s3, silent_now) = (s2.clone(), q2.load(Ordering::SeqCst));
                let Some(target) = *t2.lock().unwrap() else { continue };
                let task = tokio::spawn(async move {
                    if silent_now {
                        let _held = inbound;
                        return std::future::pending::<()>().await;
                    }
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                            // Silent: keep both sockets open, forward nothing.
                            _ = s3.notified() => std::future::pending::<()>().await,
                        }
                    }
                });
                k2.lock().unwrap().push(task);
            }
        });
        CutProxy { addr, target, cut, silent, quiet, conns }
    }

    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = Some(to);
    }

    pub fn cut(&self) {
        self.quiet.store(false, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Packets dropped, no FIN, no RST: connections stay open and go quiet.
    pub fn go_silent(&self) {
        self.quiet.store(true, Ordering::SeqCst);
        self.silent.notify_waiters();
    }

    pub fn heal(&self) {
        self.quiet.store(false, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `n` unpredictable bytes (SHA-256 in counter mode from a random seed: fast).
pub fn random(n: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let seed: [u8; 32] = tether::random_bytes();
    let mut out = Vec::with_capacity(n + 32);
    let mut ctr = 0u64;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(ctr.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        ctr += 1;
    }
    out.truncate(n);
    out
}

/// Writes `data` to `addr` (then half-closes) while reading everything back.
pub struct Transfer {
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<(Vec<u8>, std::io::Result<()>)>,
    sent: Vec<u8>,
}

impl Transfer {
    pub async fn start(addr: SocketAddr, data: Vec<u8>) -> Transfer {
        let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in data.chunks(64 * 1024) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let r = r.read_to_end(&mut got).await;
            (got, r.map(|_| ()))
        });
        Transfer { writer, reader, sent }
    }

    /// Waits for both directions; asserts the local connection never saw an
    /// error and that every byte came back intact, once.
    pub async fn finish(self, what: &str) {
        use sha2::{Digest, Sha256};
        within(120, self.writer).await.unwrap();
        let (got, closed) = within(120, self.reader).await.unwrap();
        closed.unwrap_or_else(|e| panic!("{what}: the local connection saw an error: {e}"));
        assert_eq!(got.len(), self.sent.len(), "{what}: bytes lost or added");
        assert_eq!(Sha256::digest(&got), Sha256::digest(&self.sent), "{what}: bytes changed");
    }
}

/// Serves `session` on a local listener, as `tether connect` does; returns its address.
pub async fn serve(session: &Arc<ClientSession>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(session.clone().serve(listener));
    addr
}

/// A session to `echo`, served locally.
pub async fn serve_locally(fleet: &Fleet) -> (Arc<ClientSession>, SocketAddr) {
    let session = fleet.session("echo").await;
    let addr = serve(&session).await;
    (session, addr)
}
