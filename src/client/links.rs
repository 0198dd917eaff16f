//! How a session's legs reach a relay: streams of one QUIC connection per
//! relay, or TCP legs (TLS, or raw where the relay allows them).
//!
//! With `transport = "auto"` the first leg to a relay races QUIC against TCP
//! ([`quic::race`]). A QUIC connection that fails (UDP blocked, or a leg on
//! it went silent) is dropped, and that relay's legs go over TCP until
//! [`REPROBE`] has passed; then QUIC is raced again.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Connection;
use rustls::ClientConfig;

use super::RelayEntry;
use crate::leg::Leg;
use crate::quic::{self, Transport};
use crate::tls;

/// After QUIC to a relay failed, its legs use TCP this long.
pub const REPROBE: Duration = Duration::from_secs(60);

/// The first leg to complete.
enum Won {
    Quic(Connection, quic::QuicLeg),
    Tcp(Leg),
}

pub struct Links {
    pub mode: Transport,
    tls: Arc<ClientConfig>,
    quic_tls: Arc<ClientConfig>,
    /// Live QUIC connections by relay name; held while one is being made,
    /// so that a burst of new connections makes one QUIC connection.
    quic: tokio::sync::Mutex<HashMap<String, Connection>>,
    failed: std::sync::Mutex<HashMap<String, Instant>>,
}

/// A closed QUIC connection's driver sends the close on its next turn;
/// closing leaves it this long before the process may exit.
const CLOSE_TURN: Duration = Duration::from_millis(20);

impl Links {
    pub fn new(ca: &std::path::Path, mode: Transport) -> Result<Links, tls::TlsError> {
        Ok(Links {
            mode,
            // Offering the ALPN of a client that reads `Waiting` frames too:
            // a relay that sends them picks it, an older one the other.
            tls: tls::client_offering(
                tls::client_config(ca, None, tls::ALPN_CLIENT)?,
                &[tls::ALPN_CLIENT_WAITS, tls::ALPN_CLIENT],
            ),
            quic_tls: tls::client_offering(
                tls::quic_client_config(ca, None, None, tls::ALPN_QUIC_CLIENT)?,
                &[tls::ALPN_QUIC_CLIENT_WAITS, tls::ALPN_QUIC_CLIENT],
            ),
            quic: Default::default(),
            failed: Default::default(),
        })
    }

    /// A leg to `relay`: a new stream when a QUIC connection to it is (or
    /// can be) up, else TCP (`raw` where the relay allows raw legs).
    pub async fn leg(&self, relay: &RelayEntry, raw: bool) -> std::io::Result<Leg> {
        if self.mode == Transport::Tcp {
            return self.tcp(relay, raw).await;
        }
        let mut conns = self.quic.lock().await;
        if let Some(c) = conns.get(&relay.name).filter(|c| quic::alive(c)) {
            let c = c.clone();
            drop(conns);
            return Ok(Box::new(quic::open_leg(&c).await?));
        }
        if self.mode == Transport::Auto && self.failed_lately(&relay.name) {
            drop(conns);
            return self.tcp(relay, raw).await;
        }
        let connect = async {
            let dial = (tls::DIAL_TIMEOUT, quic::Dialler::Session);
            let c = quic::connect(&relay.addr, relay.server_name(), self.quic_tls.clone(), dial)
                .await
                .map_err(|e| quic::Lost::dialling(&relay.addr, e))?;
            let leg = quic::open_leg(&c).await.map_err(|e| quic::Lost::failed(format!("QUIC stream: {e}")))?;
            Ok(Won::Quic(c, leg))
        };
        let won = match self.mode {
            Transport::Quic => connect.await.map_err(String::from),
            _ => {
                let tcp = || async {
                    self.tcp(relay, raw).await.map(Won::Tcp).map_err(|e| format!("TCP to {}: {e}", relay.addr))
                };
                quic::race(connect, tcp).await.map(|(won, lost)| {
                    // Set only when TCP won.
                    if let Some(why) = lost {
                        tracing::info!(relay = %relay.name, %why, "QUIC not used: using TCP");
                    }
                    won
                })
            }
        };
        match won {
            Ok(Won::Quic(c, leg)) => {
                conns.insert(relay.name.clone(), c);
                Ok(Box::new(leg))
            }
            Ok(Won::Tcp(leg)) => {
                self.mark_failed(&relay.name);
                Ok(leg)
            }
            Err(e) => {
                self.mark_failed(&relay.name);
                Err(std::io::Error::other(e))
            }
        }
    }

    async fn tcp(&self, relay: &RelayEntry, raw: bool) -> std::io::Result<Leg> {
        crate::leg::dial(&relay.addr, raw, relay.server_name(), self.tls.clone()).await
    }

    /// Datagrams received so far on the QUIC connection to `relay`, if any.
    pub fn rx(&self, relay: &str) -> Option<u64> {
        let conns = self.quic.try_lock().ok()?;
        conns.get(relay).map(|c| c.stats().udp_rx.datagrams)
    }

    /// A leg through `relay` failed in a way a dead path explains: drop its
    /// QUIC connection (auto: use TCP there for a while), unless datagrams
    /// arrived on it since `rx_before` (then the path is alive and the
    /// failure was something else: the connection's other legs go on).
    pub async fn suspect(&self, relay: &str, rx_before: Option<u64>) {
        let mut conns = self.quic.lock().await;
        if let (Some(before), Some(c)) = (rx_before, conns.get(relay))
            && c.stats().udp_rx.datagrams > before
        {
            return;
        }
        if let Some(c) = conns.remove(relay) {
            c.close(0u32.into(), b"path failed");
            if self.mode == Transport::Auto {
                self.mark_failed(relay);
            }
            let next = match self.mode {
                Transport::Quic => "a new QUIC connection",
                _ => "TCP for 60 s",
            };
            tracing::info!(relay, "QUIC connection lost (relay gone or UDP blocked): legs through it go over {next}");
        }
    }

    /// Closes every QUIC connection and gives each driver [`CLOSE_TURN`] to
    /// send the close, so that the relays hear of it now rather than from
    /// their idle timer.
    pub async fn close_all(&self) {
        let conns: Vec<Connection> = self.quic.lock().await.drain().map(|(_, c)| c).collect();
        for c in &conns {
            c.close(0u32.into(), b"session closed");
        }
        if !conns.is_empty() {
            tokio::time::sleep(CLOSE_TURN).await;
        }
    }

    /// `quic` or `tcp`: how legs to `relay` travel now.
    pub fn transport_to(&self, relay: &str) -> &'static str {
        match self.quic.try_lock() {
            Ok(c) if c.get(relay).is_some_and(quic::alive) => "quic",
            Ok(_) => "tcp",
            Err(_) => "quic",
        }
    }

    fn failed_lately(&self, relay: &str) -> bool {
        crate::util::lock(&self.failed).get(relay).is_some_and(|t| t.elapsed() < REPROBE)
    }

    fn mark_failed(&self, relay: &str) {
        crate::util::lock(&self.failed).insert(relay.to_string(), Instant::now());
    }
}
