//! One tunnelled connection on the device: dial the local service and a data
//! leg to the relay (in parallel), then splice them.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Shared;
use super::config::{RelayEndpoint, target_allowed};
use crate::metrics;
use crate::proto::{Frame, FrameIo, LegSide, Reason, SessionId, VERSION, leg_mac};
use crate::splice::{Meter, splice};
use crate::stream::Prefixed;

const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to dial the data leg the relay asked for.
pub struct LegPlan {
    /// Raw TCP (the relay accepts it) rather than mTLS.
    pub raw: bool,
    /// The one-time key from `Open`; the leg's MAC proves we received it.
    pub key: [u8; 32],
}

pub async fn open(
    state: Shared,
    relay: RelayEndpoint,
    tx: mpsc::Sender<Frame>,
    id: SessionId,
    conn: u32,
    plan: LegPlan,
) {
    let fail = |reason: Reason, detail: String| {
        state.refused(
            "open_refused",
            reason,
            json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": detail}),
        );
        Frame::OpenFailed { session: id, conn, reason }
    };
    // Either twin of the pair may ask: the one that admitted the session, or
    // its twin that replicated it (a load balancer may send the client there).
    let Some(session) = state.sessions.get(&id).map(|s| s.clone()) else {
        let _ = tx.send(fail(Reason::UnknownSession, "no live session with that id".into())).await;
        return;
    };
    // The target comes from the local allow-list only, never from the network.
    let target = match state.cfg.services.get(&session.service).map(|s| s.target.parse::<SocketAddr>()) {
        Some(Ok(addr)) if target_allowed(&addr, &state.cfg.extra_targets) => addr,
        _ => {
            let _ = tx.send(fail(Reason::TargetNotAllowed, format!("service {}", session.service))).await;
            return;
        }
    };
    let started = Instant::now();
    let service = async {
        tokio::time::timeout(SERVICE_TIMEOUT, TcpStream::connect(target))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    };
    let leg = async {
        let leg = crate::leg::dial(&relay.data, plan.raw, relay.server_name(), state.data_tls.clone()).await?;
        let mut io = FrameIo::new(leg);
        let mac = leg_mac(&plan.key, LegSide::Device, &id, conn);
        io.write_frame(&Frame::DataOpen { version: VERSION, session: id, conn, mac }).await?;
        match tokio::time::timeout(SERVICE_TIMEOUT, io.read_frame()).await {
            Ok(Ok(Frame::Paired { .. })) => Ok(io),
            Ok(Ok(Frame::Error { reason, message })) => Err(std::io::Error::other(format!("{reason}: {message}"))),
            Ok(Ok(other)) => Err(std::io::Error::other(format!("unexpected {}", other.kind()))),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no pairing in time")),
        }
    };
    let (service, leg) = tokio::join!(service, leg);
    let service = match service {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(fail(Reason::ServiceUnreachable, format!("{target}: {e}"))).await;
            return;
        }
    };
    let leg = match leg {
        Ok(l) => l,
        Err(e) => {
            // Tell the relay now rather than let the client wait for the pairing timeout.
            tracing::warn!(session = %id, conn, error = %e, "data leg failed");
            let _ = tx.send(Frame::OpenFailed { session: id, conn, reason: Reason::Internal }).await;
            return;
        }
    };
    metrics::AGENT_HANDSHAKE_SECONDS.with_label_values(&[&relay.name]).observe(started.elapsed().as_secs_f64());
    metrics::AGENT_TUNNELS.inc();
    session.tunnels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = service.set_nodelay(true);
    // End-to-end TLS with the specialist's client: nothing reaches the service
    // unless the client proves the key the grant names.
    let (leg, prefix) = leg.into_parts();
    let handshake = tokio_rustls::TlsAcceptor::from(session.e2e.clone()).accept(Prefixed::new(prefix, leg));
    let e2e = match tokio::time::timeout(SERVICE_TIMEOUT * 2, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.refused(
                "e2e_refused",
                Reason::EndToEndFailed,
                json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": e.to_string()}),
            );
            return;
        }
        Err(_) => {
            state.refused(
                "e2e_refused",
                Reason::EndToEndFailed,
                json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": "handshake timed out"}),
            );
            return;
        }
    };
    let (to_service, from_service) = (Meter::new(&session.to_service), Meter::new(&session.from_service));
    let result = tokio::select! {
        r = splice(e2e, bytes::Bytes::new(), service, bytes::Bytes::new(), to_service, from_service) => r,
        _ = session.cancel.cancelled() => Err(std::io::Error::other("session ended")),
    };
    match result {
        // Read the leg's own close_notify so that closing sends FIN, not RST.
        Ok((e2e, _service)) => crate::splice::drain(e2e.into_inner().0).await,
        Err(e) => tracing::debug!(session = %id, conn, error = %e, "tunnel closed"),
    }
}
