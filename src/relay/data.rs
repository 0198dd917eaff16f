//! Agent data legs (17002): a preamble naming session and connection, then
//! the leg is handed to the client join waiting for it.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::state::{LegEvent, State};
use crate::metrics;
use crate::proto::{self, Frame, FrameIo, Reason};
use crate::tls;

const LISTENER: &str = "data";

pub async fn serve(state: Arc<State>, tls: TlsStream<TcpStream>, peer: SocketAddr) {
    let Some(device) = tls::peer_common_name(tls.get_ref().1.peer_certificates()) else {
        return state.handshake_failed(LISTENER, peer, "no_device_id", "client certificate has no common name");
    };
    tracing::Span::current().record("device", device.as_str());
    let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_DATA);
    let mut io = FrameIo::new(tls);
    let refuse = |reason: Reason, detail: String| {
        state.refused(
            "data_leg_refused",
            &metrics::RELAY_LEG_REFUSALS,
            reason,
            json!({"peer": peer.to_string(), "device": device, "detail": detail}),
        );
        Frame::Error { reason, message: reason.text().to_string() }
    };
    if !alpn_ok {
        let f = refuse(Reason::AlpnRequired, "no tether ALPN negotiated".into());
        let _ = io.write_frame(&f).await;
        return;
    }
    let timeout = Duration::from_millis(state.cfg.limits.handshake_timeout_ms);
    let (session, conn) = match tokio::time::timeout(timeout, io.read_frame()).await {
        Ok(Ok(Frame::DataOpen { version, session, conn })) => match proto::check_version(version) {
            Ok(()) => (session, conn),
            Err(e) => {
                let f = refuse(Reason::VersionMismatch, e.to_string());
                let _ = io.write_frame(&f).await;
                return;
            }
        },
        Ok(Ok(other)) => {
            let f = refuse(Reason::BadFrame, format!("expected data_open, got {}", other.kind()));
            let _ = io.write_frame(&f).await;
            return;
        }
        Ok(Err(e)) => {
            let reason = match &e {
                proto::FrameIoError::Proto(p) => p.reason(),
                _ => Reason::BadFrame,
            };
            let f = refuse(reason, e.to_string());
            let _ = io.write_frame(&f).await;
            return;
        }
        Err(_) => return state.handshake_failed(LISTENER, peer, "preamble_timeout", "no data_open in time"),
    };
    tracing::Span::current().record("session", session.to_string());

    let owner = state
        .sessions
        .get(&session)
        .map(|s| (s.device.clone(), s.joined.lock().map(|j| j.contains(&conn)).unwrap_or(false)));
    let waiter = match owner {
        Some((ref owner, _)) if *owner != device => None,
        _ => state.legs.remove(&(session, conn)).map(|(_, tx)| tx),
    };
    match waiter {
        Some(tx) => {
            let (stream, prefix) = io.into_parts();
            if let Err(LegEvent::Leg(..)) = tx.send(LegEvent::Leg(Box::new(stream), prefix)) {
                // The join gave up (timeout) just now; the leg is dropped.
                metrics::RELAY_LEG_REFUSALS.with_label_values(&["join_gone"]).inc();
            }
        }
        None => {
            let reason = match owner {
                Some((owner, _)) if owner != device => Reason::DeviceMismatch,
                Some((_, true)) => Reason::AlreadyPaired,
                _ => Reason::UnknownSession,
            };
            let f = refuse(reason, format!("session {session} conn {conn}"));
            let _ = io.write_frame(&f).await;
        }
    }
}
