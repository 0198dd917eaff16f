//! The second level of admission, on the device: the agent checks the grant
//! itself (a compromised relay cannot forge one), its local allow-list, and
//! asks for on-site consent when policy says so.
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::config::Consent;
use super::state::{AgentSession, Pending};
use crate::metrics;
use crate::proto::{Frame, Outcome, Reason, SignedGrant};
use crate::util::now_secs;

pub async fn handle(state: Shared, relay: String, tx: mpsc::Sender<Frame>, signed: SignedGrant, service: String) {
    let hint = signed.session_hint();
    let refuse = |reason: Reason, detail: String| {
        state.refused(
            "access_refused",
            reason,
            json!({"session": hint.to_string(), "relay": relay, "service": service, "detail": detail}),
        );
        Frame::Decision { session: hint, outcome: Outcome::Refused, reason }
    };
    let grant = match state.grants.verify(&signed) {
        Ok(g) => g,
        Err(e) => {
            let _ = tx.send(refuse(e.reason(), e.to_string())).await;
            return;
        }
    };
    let now = now_secs();
    let checks = grant
        .check(&state.cfg.device, &service, now)
        .map_err(|e| match e.reason() {
            Reason::GrantExpired => (e.reason(), format!("{e}{}", super::clock::expired_hint(&state))),
            _ => (e.reason(), e.to_string()),
        })
        .and_then(|()| match state.cfg.services.contains_key(&service) {
            true => Ok(()),
            false => Err((Reason::ServiceNotAllowed, format!("{service} is not in the local allow-list"))),
        })
        .and_then(|()| match state.first_use(grant.session, grant.expires_at, now) {
            true => Ok(()),
            false => Err((Reason::GrantReused, "session id seen before".to_string())),
        });
    if let Err((reason, detail)) = checks {
        let _ = tx.send(refuse(reason, detail)).await;
        return;
    }
    let e2e = match crate::stream::e2e::agent_config(&state.cfg.cert, &state.cfg.key, &grant.client_key) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(refuse(Reason::Internal, format!("end-to-end TLS config: {e}"))).await;
            return;
        }
    };
    let id = grant.session;
    let who = json!({"device": state.cfg.device, "session": id.to_string(), "relay": relay, "service": service,
                     "specialist": grant.specialist, "role": grant.role});
    state.audit.record("access_requested", who.clone());
    // The relay withdrew this request before it was taken up here (it gave
    // up on a device that ran again only later, or the specialist left):
    // start nothing. Nothing awaits from here to the session's start or the
    // consent prompt, so a withdrawal read later finds one of them.
    if let Some(reason) = state.take_withdrawn(id) {
        state.audit.record(
            "access_withdrawn",
            json!({"device": state.cfg.device, "session": id.to_string(), "reason": reason.label()}),
        );
        return;
    }

    // On-site consent when the device's own policy or the hub's asks for it.
    let required = state.cfg.consent == Consent::Required || grant.consent;
    let consent = match required {
        false => Ok("auto".to_string()),
        true => {
            let (answer, rx) = oneshot::channel();
            let pending = Pending {
                grant: grant.clone(),
                service: service.clone(),
                relay: relay.clone(),
                since: Instant::now(),
                answer,
            };
            supersede(&state, &grant, id);
            state.pending.insert(id, pending);
            state.audit.record("consent_requested", who.clone());
            // Tells the relay at once that the request arrived and waits for
            // a person: a relay gives up on a device that sends nothing for a
            // few seconds after a request (relay/decision.rs).
            let _ = tx.try_send(state.head_frame());
            tracing::info!(session = %id, %service, specialist = %grant.specialist, "waiting for on-site consent");
            let timeout = Duration::from_secs(state.cfg.consent_timeout_secs);
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok((true, by))) => Ok(by),
                Ok(Ok((false, by))) => Err((Reason::ConsentDenied, by)),
                // Withdrawn by the relay (client left) or relay lost: nothing to answer.
                Ok(Err(_)) => return,
                Err(_) => {
                    state.pending.remove(&id);
                    Err((Reason::ConsentTimedOut, "nobody answered".to_string()))
                }
            }
        }
    };
    let by = match consent {
        Ok(by) => by,
        Err((reason, by)) => {
            let _ = tx.send(refuse(reason, format!("answered by {by}"))).await;
            return;
        }
    };
    let session = Arc::new(AgentSession {
        id,
        relay: relay.clone(),
        service: service.clone(),
        specialist: grant.specialist.clone(),
        started: Instant::now(),
        to_service: Default::default(),
        from_service: Default::default(),
        tunnels: Default::default(),
        cancel: CancellationToken::new(),
        e2e,
        conns: Default::default(),
        resumable: Default::default(),
        ended: Default::default(),
        secrets: Default::default(),
    });
    state.sessions.insert(id, session);
    metrics::AGENT_SESSIONS_ACTIVE.inc();
    let mut f = who;
    f["consent"] = by.into();
    state.audit.record("session_start", f);
    if tx.send(Frame::Decision { session: id, outcome: Outcome::Allowed, reason: Reason::Unknown }).await.is_err() {
        state.end_session(id, Reason::RelayGone, false);
    }
}

/// The same `tether connect` asking again through another relay (the one
/// it asked first went silent or was lost with the request, and a client's
/// end-to-end key is its own for each attempt): the older request leaves
/// the person's list unanswered, so they approve the one that can open.
fn supersede(state: &super::AgentState, grant: &crate::proto::Grant, id: crate::proto::SessionId) {
    let older: Vec<_> = state
        .pending
        .iter()
        .filter(|p| p.grant.client_key == grant.client_key && p.grant.specialist == grant.specialist)
        .map(|p| *p.key())
        .collect();
    for old in older {
        if let Some((_, p)) = state.pending.remove(&old) {
            state.audit.record(
                "consent_superseded",
                json!({"device": state.cfg.device, "session": old.to_string(), "relay": p.relay, "by": id.to_string()}),
            );
        }
    }
}
