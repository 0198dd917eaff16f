//! How the agent's legs reach a relay: over the relay's QUIC connection when
//! the control channel runs on one, else over TCP.
//!
//! `transport = "auto"` races QUIC against TCP when a control channel is
//! dialled, QUIC with a [`quic::HEAD_START`]: whichever completes first carries the
//! channel. Where UDP is blocked the channel runs on TCP, and QUIC is tried
//! again every `quic_reprobe_secs`.
use std::time::Duration;

use quinn::Connection;

use super::Shared;
use super::config::RelayEndpoint;
use crate::leg::Leg;
use crate::quic::{self, Transport};
use crate::tls;

/// A dialled control channel and how it travels.
pub struct ControlLeg {
    pub leg: Leg,
    /// The QUIC connection it is a stream of, if any.
    pub quic: Option<Connection>,
    /// Completes when a reloaded CRL revokes the relay's certificate.
    pub revoked: tls::Revoked,
}

impl ControlLeg {
    pub fn transport(&self) -> &'static str {
        if self.quic.is_some() { "quic" } else { "tcp" }
    }
}

/// Dials a control channel to `relay` by the configured transport.
pub async fn control(state: &Shared, relay: &RelayEndpoint) -> Result<ControlLeg, String> {
    match state.cfg.transport {
        Transport::Tcp => tcp_control(state, relay).await,
        Transport::Quic => Ok(quic_control(state, relay, tls::DIAL_TIMEOUT).await?),
        Transport::Auto => race(state, relay).await,
    }
}

async fn tcp_control(state: &Shared, relay: &RelayEndpoint) -> Result<ControlLeg, String> {
    let tls = tls::dial(&relay.control, relay.server_name(), state.control_tls.clone())
        .await
        .map_err(|e| format!("dial {}: {e}", relay.control))?;
    let revoked = tls::watch_peer(&state.cfg.ca, state.cfg.crl.as_deref(), tls.get_ref().1.peer_certificates());
    Ok(ControlLeg { leg: Box::new(tls), quic: None, revoked })
}

/// A QUIC connection to `relay` and its first stream.
pub async fn quic_control(state: &Shared, relay: &RelayEndpoint, timeout: Duration) -> Result<ControlLeg, quic::Lost> {
    let addr = relay.quic_addr();
    let conn = quic::connect(addr, relay.server_name(), state.quic_tls.clone(), (timeout, quic::Dialler::Agent))
        .await
        .map_err(|e| quic::Lost::dialling(addr, e))?;
    let leg = quic::open_leg(&conn).await.map_err(|e| quic::Lost::failed(format!("QUIC stream: {e}")))?;
    let certs = conn.peer_identity().and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok());
    let revoked = tls::watch_peer(&state.cfg.ca, state.cfg.crl.as_deref(), certs.as_deref().map(Vec::as_slice));
    Ok(ControlLeg { leg: Box::new(leg), quic: Some(conn), revoked })
}

/// QUIC first, TCP after [`HEAD_START`]; the first to complete wins.
async fn race(state: &Shared, relay: &RelayEndpoint) -> Result<ControlLeg, String> {
    let quic = quic_control(state, relay, tls::DIAL_TIMEOUT);
    let (leg, quic_lost) = quic::race(quic, || tcp_control(state, relay)).await?;
    if let Some(why) = quic_lost {
        crate::metrics::AGENT_QUIC_NOT_USED.with_label_values(&[&relay.name, why.kind]).inc();
        tracing::info!(relay = %relay.name, %why, "QUIC not used: control channel on TCP");
    }
    Ok(leg)
}

/// A data leg to `relay`: a stream of its QUIC connection, or a TCP leg.
pub async fn data_leg(state: &Shared, relay: &RelayEndpoint, raw: bool) -> std::io::Result<Leg> {
    if let Some(conn) = live_quic(state, &relay.name) {
        return Ok(Box::new(quic::open_leg(&conn).await?));
    }
    crate::leg::dial(&relay.data, raw, relay.server_name(), state.data_tls.clone()).await
}

/// A fetch leg to `relay`: a stream of its QUIC connection, or TLS to the control port.
pub async fn fetch_leg(state: &Shared, relay: &RelayEndpoint) -> std::io::Result<Leg> {
    if let Some(conn) = live_quic(state, &relay.name) {
        return Ok(Box::new(quic::open_leg(&conn).await?));
    }
    Ok(Box::new(tls::dial(&relay.control, relay.server_name(), state.control_tls.clone()).await?))
}

fn live_quic(state: &Shared, relay: &str) -> Option<Connection> {
    state.quic.get(relay).map(|c| c.clone()).filter(quic::alive)
}
