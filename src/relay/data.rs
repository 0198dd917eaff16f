//! Agent data legs (17002): a preamble naming session and connection with a
//! MAC under the one-time key of the relay's `Open`, then the leg is handed to
//! the client join waiting for it. TLS (mTLS) or raw TCP, see [`crate::leg`].
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use super::pairing::LegContext;
use super::state::{LegEvent, State};
use super::{Accepted, Auth};
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{self, Frame, FrameIo, Reason};

const LISTENER: &str = "data";

pub async fn serve(state: Arc<State>, accepted: Accepted, peer: SocketAddr) {
    // Over TLS the certificate names the device; a raw leg proves itself by MAC only.
    let (device, alpn_ok) = match accepted.auth {
        Auth::Tls { device: Some(device), alpn_ok, .. } => (Some(device), alpn_ok),
        Auth::Tls { device: None, .. } => {
            return state.handshake_failed(LISTENER, peer, "no_device_id", "client certificate has no common name");
        }
        Auth::Raw => (None, true),
    };
    let leg: Leg = accepted.leg;
    if let Some(d) = &device {
        tracing::Span::current().record("device", d.as_str());
    }
    let mut io = FrameIo::new(leg);
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
    let first = state.first_frame(&mut io, (LISTENER, peer), ("preamble_timeout", "no data_open in time")).await;
    let Some(first) = first else { return };
    let (session, conn, mac) = match first {
        Ok(Frame::DataOpen { version, session, conn, mac }) => match proto::check_version(version) {
            Ok(()) => (session, conn, mac),
            Err(e) => {
                let f = refuse(Reason::VersionMismatch, e.to_string());
                let _ = io.write_frame(&f).await;
                return;
            }
        },
        Ok(other) => {
            let f = refuse(Reason::BadFrame, format!("expected data_open, got {}", other.kind()));
            let _ = io.write_frame(&f).await;
            return;
        }
        Err(p) => {
            let f = refuse(p.reason(), proto::FrameIoError::from(p).to_string());
            let _ = io.write_frame(&f).await;
            return;
        }
    };
    tracing::Span::current().record("session", session.to_string());

    let owner = state.sessions.get(&session).map(|s| s.device.clone());
    let joined = || state.sessions.get(&session).is_some_and(|s| s.joined.lock().is_ok_and(|j| j.contains(conn)));
    let ctx = LegContext { owner: owner.as_deref(), device: device.as_deref(), joined: joined() };
    let offered = state.pairing().offer_leg(session, conn, &mac, ctx);
    match offered {
        Ok(tx) => {
            let (stream, prefix) = io.into_parts();
            if let Err(LegEvent::Leg(..)) = tx.send(LegEvent::Leg(stream, prefix)) {
                // The join gave up (timeout) just now; the leg is dropped.
                metrics::RELAY_LEG_REFUSALS.with_label_values(&["join_gone"]).inc();
            }
        }
        Err(reason) => {
            let f = refuse(reason, format!("session {session} conn {conn}"));
            let _ = io.write_frame(&f).await;
        }
    }
}
