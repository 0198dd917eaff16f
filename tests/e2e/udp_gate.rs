//! A UDP forwarder the test can close like a firewall that starts dropping
//! UDP: datagrams from each client go to `target` through a socket of their
//! own, and answers come back; `block()` silently drops both ways. A gate
//! may also drop every datagram larger than a size, both ways, as a path
//! with a smaller MTU does (QUIC sets Don't Fragment).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::harness::{Fleet, Opts, start_agent};

pub struct UdpGate {
    blocked: Arc<AtomicBool>,
    oversized: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for UdpGate {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl UdpGate {
    /// Forwards what arrives at `listen` to `target`, datagrams of at most
    /// `max` bytes; starts `blocked` or open.
    pub async fn start(listen: SocketAddr, target: SocketAddr, blocked: bool, max: usize) -> UdpGate {
        let front = Arc::new(UdpSocket::bind(listen).await.expect("bind the gate's UDP port"));
        let blocked = Arc::new(AtomicBool::new(blocked));
        let oversized = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (b, s, o) = (blocked.clone(), stop.clone(), oversized.clone());
        tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                if b.load(Ordering::SeqCst) {
                    continue;
                }
                if n > max {
                    o.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Bounded: the tests have a handful of clients.
                if !backs.contains_key(&from) && backs.len() >= 64 {
                    continue;
                }
                let back = match backs.get(&from) {
                    Some(x) => x.clone(),
                    None => {
                        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        sock.connect(target).await.unwrap();
                        let (sock2, front2, b2, s2, o2) =
                            (sock.clone(), front.clone(), b.clone(), s.clone(), o.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                let n = tokio::select! {
                                    _ = s2.cancelled() => return,
                                    r = sock2.recv(&mut buf) => match r { Ok(n) => n, Err(_) => continue },
                                };
                                if n > max {
                                    o2.fetch_add(1, Ordering::Relaxed);
                                } else if !b2.load(Ordering::SeqCst) {
                                    let _ = front2.send_to(&buf[..n], from).await;
                                }
                            }
                        });
                        backs.insert(from, sock.clone());
                        sock
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        UdpGate { blocked, oversized, stop }
    }

    pub fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
    }

    /// Datagrams dropped for their size, both ways.
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }

    pub fn open(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

/// Twin relays over QUIC whose agent ports sit behind open gates (the agent
/// sends UDP to the data ports' numbers, where the gates listen), `opts`
/// otherwise; the agent attached to both.
pub async fn twins_behind_gates(opts: Opts) -> (Fleet, [UdpGate; 2]) {
    let opts = Opts {
        relays: 2,
        twins: true,
        transport: "quic",
        agent: false,
        relay_top: "quic_agents = \"127.0.0.1:0\"\n",
        ..opts
    };
    let mut fleet = Fleet::start(opts).await;
    fleet.wait_twin_links().await;
    let gate = |i: usize| {
        let r = &fleet.relays[i];
        UdpGate::start(r.data, r.quic_agents.unwrap(), false, usize::MAX)
    };
    let gates = [gate(0).await, gate(1).await];
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    for relay in 0..2 {
        fleet.wait_metric(relay, "tether_relay_agents_attached", 1.0).await;
    }
    (fleet, gates)
}
