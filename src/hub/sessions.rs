//! Sessions: the checks before a grant, routing, the record, revocation, and
//! what relays report about them.
use hyper::StatusCode;
use serde_json::json;

use super::Hub;
use super::guard::{internal, require_admin};
use super::http::{ApiError, Peer};
use super::model::{Role, SessionRecord, User};
use super::store::{Live, SessionEnd, StoreError};
use crate::api::{RelayAddr, RelayReport, ReportAnswer, SessionEnded, SessionGranted, SessionRequest};
use crate::proto::{Grant, SessionId};
use crate::util::now_secs;

const MAX_NAME: usize = 128;
const MAX_REASON: usize = 500;

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// Names are stored and shown verbatim; only length and control characters are refused.
fn check_name(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max {
        return Err(bad("bad_field", format!("{what}: 1 to {max} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(bad("bad_field", format!("{what}: control characters are not allowed")));
    }
    Ok(())
}

/// A change-ticket reference like `CHG-1881` in `text`.
pub fn find_ticket(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).find_map(|w| {
        let (prefix, number) = w.split_once('-')?;
        let ok = !prefix.is_empty()
            && prefix.chars().all(|c| c.is_ascii_alphabetic())
            && !number.is_empty()
            && number.chars().all(|c| c.is_ascii_digit());
        ok.then(|| w.to_string())
    })
}

pub async fn create(hub: &Hub, user: &User, peer: &Peer, want: SessionRequest) -> Result<SessionGranted, ApiError> {
    check_name("device", &want.device, MAX_NAME)?;
    check_name("service", &want.service, MAX_NAME)?;
    check_name("reason", &want.reason, MAX_REASON)?;
    let client_key =
        hex::decode(want.client_key.trim()).ok().filter(|k| !k.is_empty() && k.len() <= 1024).ok_or_else(|| {
            bad("bad_client_key", "client_key: hex of the client's public key (at most 1024 bytes)".into())
        })?;
    let from = peer.addr.ip();
    let who = json!({"user": user.name, "role": user.role, "from": from.to_string(), "device": want.device,
                     "service": want.service, "reason": want.reason});
    let refuse = |status: StatusCode, code: &'static str, message: String| {
        let who = who.clone();
        async move {
            hub.refused("session_refused", code, who).await;
            Err(ApiError::new(status, code, message))
        }
    };
    let device = hub.store.device(&want.device).await.map_err(internal)?;
    let entitled = match &device {
        Some(d) if user.role == Role::Admin => Some(d.clone()),
        Some(d) if hub.store.entitled(&user.name, &d.site).await.map_err(internal)? => Some(d.clone()),
        _ => None,
    };
    // Unknown and not-entitled look the same: no device list by probing.
    let Some(device) = entitled else {
        return refuse(
            StatusCode::FORBIDDEN,
            "not_entitled",
            format!("you are not entitled to device {}", want.device),
        )
        .await;
    };
    if let Some(r) = &device.retired {
        let message = format!(
            "device {} is {}; nobody can reach it (an admin can put it back in service: tether hub device reinstate {})",
            device.id,
            r.describe(),
            device.id
        );
        return refuse(StatusCode::GONE, "device_retired", message).await;
    }
    let needs = hub.cfg.service_role(&want.service);
    if user.role < needs {
        return refuse(
            StatusCode::FORBIDDEN,
            "role_too_low",
            format!("service {} needs role {needs}; you are {}", want.service, user.role),
        )
        .await;
    }
    let site = hub.store.site(&device.site).await.map_err(internal)?.unwrap_or_default();
    if !site.allow_from.is_empty() && !site.allow_from.iter().any(|n| n.contains(&from)) {
        return refuse(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            format!("site {} does not accept specialists from {from}", site.name),
        )
        .await;
    }
    let ticket = want.ticket.clone().filter(|t| !t.trim().is_empty()).or_else(|| find_ticket(&want.reason));
    if let Some(t) = &ticket {
        check_name("ticket", t, MAX_NAME)?;
    }
    if site.require_ticket && ticket.is_none() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "ticket_required",
            format!("site {} requires a change-ticket reference (like CHG-1881) in ticket or reason", site.name),
        )
        .await;
    }
    let Some(route) = hub.board.route(&device.id) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "device_offline",
            format!("device {} is not attached to a ready relay", device.id),
        )
        .await;
    };
    let now = now_secs();
    let consent = device.consent == "required";
    let grant = Grant {
        session: SessionId::random(),
        device: device.id.clone(),
        services: vec![want.service.clone()],
        specialist: user.name.clone(),
        role: user.role.to_string(),
        client_key: client_key.into(),
        relays: route.iter().map(|r| r.name.clone()).collect(),
        issued_at: now,
        expires_at: now + hub.cfg.grant_ttl_secs,
        consent,
        reason: grant_reason(hub, &device.id, &want.reason, ticket.as_deref()),
    };
    let signed = hub.signer.sign(&grant);
    let id = grant.session.to_string();
    let record = SessionRecord {
        id: id.clone(),
        specialist: user.name.clone(),
        device: device.id.clone(),
        service: want.service.clone(),
        reason: want.reason.clone(),
        ticket: ticket.clone(),
        source: from.to_string(),
        relay: route[0].name.clone(),
        created_at: now as i64,
        expires_at: grant.expires_at as i64,
        consent_required: consent,
        state: "granted".into(),
        ..SessionRecord::default()
    };
    hub.store.session_add(&record).await.map_err(internal)?;
    hub.board.routed(&route[0].name);
    crate::metrics::HUB_SESSIONS_GRANTED.inc();
    let mut fields = who;
    fields["session"] = id.clone().into();
    fields["ticket"] = ticket.into();
    fields["relay"] = route[0].name.clone().into();
    fields["consent_required"] = consent.into();
    hub.audit.record("session_granted", fields).await;
    tracing::info!(session = %id, device = %device.id, user = %user.name, "session granted");
    let relays = route
        .iter()
        .map(|r| RelayAddr { name: r.name.clone(), addr: r.addr.clone(), server_name: r.server_name.clone() })
        .collect();
    Ok(SessionGranted {
        session: id,
        grant: hex::encode(&signed.body),
        sig: hex::encode(signed.sig),
        relays,
        expires_at: grant.expires_at,
        consent_required: consent,
    })
}

/// The agent version from which grants carry the reason (format 2).
const REASON_IN_GRANT_SINCE: &str = "0.1.1";

/// What the person at the device reads: the reason, and the ticket when it
/// is not in the reason already; empty for an agent too old to read it
/// (it refuses a grant format it does not know).
fn grant_reason(hub: &Hub, device: &str, reason: &str, ticket: Option<&str>) -> String {
    let version = hub.board.presence(device).agent_version.unwrap_or_default();
    if crate::util::version::older(&version, REASON_IN_GRANT_SINCE) {
        return String::new();
    }
    match ticket {
        Some(t) if !reason.contains(t) => format!("{t}: {reason}"),
        _ => reason.to_string(),
    }
}

/// How long after its revocation a session stays on the relays' revocation list.
pub const REVOCATION_KEEP_SECS: u64 = 8 * 3600;

/// Admin: ends a session at both twins (through their next report) and
/// makes its grant useless.
pub async fn end(hub: &Hub, user: &User, peer: &Peer, id: &str) -> Result<SessionEnded, ApiError> {
    require_admin(hub, user, peer, "ending a session").await?;
    let Some(s) = hub.store.session(id).await.map_err(internal)? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_session", format!("no session {id}")));
    };
    let now = now_secs();
    if !hub.store.session_revoke(id, (&user.name, "revoked"), now as i64).await.map_err(internal)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_live", format!("session {id} is already {}", s.state)));
    }
    // Kept until the grant would expire anyway, and at least a while for a live
    // session; the database keeps it across a restart of the hub.
    hub.board.revoke(id, (s.expires_at as u64).max(now + REVOCATION_KEEP_SECS));
    hub.audit
        .record(
            "session_revoked",
            json!({"session": id, "by": user.name, "from": peer.addr.ip().to_string(), "device": s.device, "specialist": s.specialist}),
        )
        .await;
    Ok(SessionEnded { session: id.to_string(), state: "revoked".into() })
}

/// What a restarted relay carried before it restarted goes into the
/// session's record now: nothing else would ever report it.
async fn keep_forgotten(hub: &Hub, relay: &str, f: super::relays::Forgotten) {
    let (to_device, to_client) = (f.to_device as i64, f.to_client as i64);
    match hub.store.session_add_bytes(&f.session, to_device, to_client).await {
        Ok(()) => {
            tracing::info!(session = %f.session, relay, to_device, to_client, "kept the bytes a restarted relay carried");
            hub.audit
                .record(
                    "session_bytes_kept",
                    json!({"relay": relay, "session": f.session, "bytes_to_device": f.to_device,
                           "bytes_to_client": f.to_client, "why": "the relay restarted without reporting the session's end"}),
                )
                .await;
        }
        Err(e) if e.is_unavailable() => tracing::debug!(session = %f.session, "byte counts not kept: no database"),
        Err(e) => tracing::error!(session = %f.session, error = %e, "keeping a restarted relay's byte counts"),
    }
}

/// Takes a relay's report. When the database refuses what it carries
/// (starts, moves, ends), the answer is 503: the relay keeps those and
/// sends them again, and an end not stored is taken again then.
pub async fn relay_report(
    hub: &Hub,
    relay: &str,
    relay_cert: Option<&[u8]>,
    r: RelayReport,
) -> Result<ReportAnswer, ApiError> {
    let now = now_secs();
    crate::metrics::HUB_RELAY_REPORTS.with_label_values(&[relay]).inc();
    let taken = hub.board.report(relay, &r, now);
    super::certs::seen(hub, relay, &r);
    for f in taken.forgotten {
        keep_forgotten(hub, relay, f).await;
    }
    for f in taken.found {
        super::lost::found(hub, relay, f).await;
    }
    let mut unstored: Option<StoreError> = None;
    let live = [(&r.started, &r.started_transports, Live::Started), (&r.moved, &r.moved_transports, Live::Moved)];
    for (ids, transports, how) in live {
        for (i, id) in ids.iter().enumerate() {
            let transport = transports.get(i).map(String::as_str).unwrap_or("");
            match hub.store.session_live(id, relay, transport, how).await {
                Err(e) if e.is_unavailable() => unstored = Some(e),
                Err(e) => tracing::error!(session = %id, error = %e, ?how, "recording a session live"),
                Ok(_) => {}
            }
        }
    }
    for e in &r.ended {
        if !hub.board.first_end(relay, &e.session, now) {
            // Sent again: the relay did not get the answer to the report that had it.
            tracing::debug!(session = %e.session, relay, "a session end reported again; taken once");
            continue;
        }
        let end = SessionEnd {
            reason: e.reason.clone(),
            ended_at: e.ended_at as i64,
            bytes_to_device: e.bytes_to_device as i64,
            bytes_to_client: e.bytes_to_client as i64,
            duration_ms: e.duration_ms as i64,
        };
        match hub.store.session_end(&e.session, &end).await {
            Err(err) if err.is_unavailable() => {
                // Taken when the relay sends it again.
                hub.board.forget_end(relay, &e.session);
                unstored = Some(err);
                continue;
            }
            Err(err) => tracing::error!(session = %e.session, error = %err, "recording session end"),
            Ok(_) => {}
        }
        hub.audit
            .record(
                "session_end",
                json!({"relay": relay, "session": e.session, "device": e.device, "reason": e.reason,
                       "bytes_to_device": e.bytes_to_device, "bytes_to_client": e.bytes_to_client, "duration_ms": e.duration_ms}),
            )
            .await;
    }
    let certs_wanted = super::anchors::heads(hub, relay, relay_cert, &r, now).await;
    match unstored {
        Some(e) => Err(internal(e)),
        None => Ok(ReportAnswer { certs_wanted, ..taken.answer }),
    }
}
