//! `/api/v1`: routes, authentication, and the handlers that are not sessions.
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth;
use super::http::{self, Answer, ApiError, Peer, error_answer, json_answer};
use super::model::{Role, User};
use super::relays::RelayReport;
use super::{Hub, sessions};
use crate::proto::grant::now_secs;

/// A stable label for metrics (ids stripped).
pub fn route_label(method: &Method, path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "v1", "login"]) => "login",
        ("GET", ["api", "v1", "me"]) => "me",
        ("GET", ["api", "v1", "devices"]) => "devices",
        ("POST", ["api", "v1", "sessions"]) => "session_create",
        ("GET", ["api", "v1", "sessions"]) => "sessions",
        ("GET", ["api", "v1", "sessions", _]) => "session",
        ("POST", ["api", "v1", "sessions", _, "end"]) => "session_end",
        ("GET", ["api", "v1", "audit"]) => "audit",
        ("GET", ["api", "v1", "audit", "anchors"]) => "anchors",
        ("POST", ["api", "v1", "relay", "report"]) => "relay_report",
        ("GET", ["api", "v1", "healthz"]) => "healthz",
        ("GET", ["metrics"]) => "metrics",
        _ => "other",
    }
}

pub async fn handle(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Answer {
    match route(hub, req, peer).await {
        Ok(a) => a,
        Err(e) => error_answer(&e),
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

async fn route(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "healthz"]) => Ok(health(hub)),
        ("GET", ["metrics"]) => {
            Ok(http::text_answer(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render()))
        }
        ("POST", ["api", "v1", "login"]) => {
            let body = http::body(req, hub.cfg.max_body_bytes).await?;
            login(hub, &http::parse(&body)?, peer).await
        }
        ("POST", ["api", "v1", "relay", "report"]) => {
            let relay = relay_identity(hub, peer).await?;
            let body = http::body(req, 16 * 1024 * 1024).await?;
            let report: RelayReport = http::parse(&body)?;
            let answer = sessions::relay_report(hub, &relay, report).await;
            Ok(json_answer(StatusCode::OK, &serde_json::to_value(answer).unwrap_or_default()))
        }
        ("GET", ["api", "v1", "me"]) => {
            let user = authenticate(hub, &req, peer).await?;
            let sites = hub.store.entitlements(&user.name).await.map_err(internal)?;
            Ok(json_answer(StatusCode::OK, &json!({"user": user.name, "role": user.role, "sites": sites})))
        }
        ("GET", ["api", "v1", "devices"]) => {
            let user = authenticate(hub, &req, peer).await?;
            devices(hub, &user).await
        }
        ("POST", ["api", "v1", "sessions"]) => {
            let user = authenticate(hub, &req, peer).await?;
            let body = http::body(req, hub.cfg.max_body_bytes).await?;
            let want = http::parse(&body)?;
            let out = sessions::create(hub, &user, peer, want).await?;
            Ok(json_answer(StatusCode::CREATED, &out))
        }
        ("GET", ["api", "v1", "sessions"]) => {
            let user = authenticate(hub, &req, peer).await?;
            let limit = query_param(&req, "limit").and_then(|l| l.parse().ok()).unwrap_or(100).clamp(1, 10_000);
            let all = user.role == Role::Admin && query_param(&req, "all") != Some("false");
            let list = hub.store.sessions((!all).then_some(user.name.as_str()), limit).await.map_err(internal)?;
            Ok(json_answer(StatusCode::OK, &serde_json::to_value(list).unwrap_or_default()))
        }
        ("GET", ["api", "v1", "sessions", id]) => {
            let user = authenticate(hub, &req, peer).await?;
            match hub.store.session(id).await.map_err(internal)? {
                Some(s) if s.specialist == user.name || user.role == Role::Admin => {
                    Ok(json_answer(StatusCode::OK, &serde_json::to_value(s).unwrap_or_default()))
                }
                _ => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_session", format!("no session {id} of yours"))),
            }
        }
        ("POST", ["api", "v1", "sessions", id, "end"]) => {
            let user = authenticate(hub, &req, peer).await?;
            let id = id.to_string();
            sessions::end(hub, &user, peer, &id).await
        }
        ("GET", ["api", "v1", "audit"]) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "audit_export").await?;
            let since = match query_param(&req, "since") {
                Some(s) => parse_since(s).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_since", "since: RFC 3339 time or unix seconds")
                })?,
                None => 0,
            };
            let limit = query_param(&req, "limit").and_then(|l| l.parse().ok()).unwrap_or(100_000).clamp(1, 1_000_000);
            let lines = hub.store.audit_since(since, limit).await.map_err(internal)?;
            hub.audit.record("audit_exported", json!({"by": user.name, "from": peer.addr.ip().to_string(), "since": since, "records": lines.len()})).await;
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(http::text_answer(StatusCode::OK, "application/x-ndjson", text))
        }
        ("GET", ["api", "v1", "audit", "anchors"]) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "audit_anchors").await?;
            let anchors = hub.store.anchors().await.map_err(internal)?;
            let v: Vec<Value> = anchors
                .into_iter()
                .map(|(source, seq, hash, at)| json!({"source": source, "seq": seq, "hash": hash, "at": at}))
                .collect();
            Ok(json_answer(StatusCode::OK, &Value::Array(v)))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {path}"))),
    }
}

/// RFC 3339 or unix seconds.
pub fn parse_since(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let s = s.replace("%3A", ":").replace("%2B", "+");
    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

pub fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "hub internal error");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the hub's log")
}

fn health(hub: &Hub) -> Answer {
    let relays: Vec<Value> = hub
        .board
        .relay_states()
        .into_iter()
        .map(|(name, reporting, ready, sessions)| json!({"name": name, "reporting": reporting, "ready": ready, "sessions": sessions}))
        .collect();
    json_answer(StatusCode::OK, &json!({"status": "ok", "engine": hub.store.engine(), "relays": relays}))
}

/// The relay named by the client certificate, if it is one of ours.
async fn relay_identity(hub: &Hub, peer: &Peer) -> Result<String, ApiError> {
    match &peer.cert_name {
        Some(name) if hub.board.is_relay(name) => Ok(name.clone()),
        other => {
            hub.refused("relay_report_refused", "not_a_relay", json!({"from": peer.addr.to_string(), "cert": other}))
                .await;
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_relay",
                "reports need a configured relay's client certificate",
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
    code: String,
}

const LOGIN_FAILED: &str = "wrong user name, password or code";

async fn login(hub: &Hub, l: &Login, peer: &Peer) -> Result<Answer, ApiError> {
    let now = now_secs() as i64;
    let from = peer.addr.ip().to_string();
    if l.user.is_empty() || l.user.len() > 128 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_user", "user: 1 to 128 characters"));
    }
    let (failures, locked_until) = hub.store.login_failures(&l.user).await.map_err(internal)?;
    if now < locked_until {
        crate::metrics::HUB_LOGIN_FAILURES.with_label_values(&["locked"]).inc();
        hub.audit
            .record(
                "login_refused_locked",
                json!({"user": l.user, "from": from, "failures": failures, "locked_until": locked_until}),
            )
            .await;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "locked",
            format!("too many failed logins; try again in {} s", locked_until - now),
        ));
    }
    let user = hub.store.user(&l.user).await.map_err(internal)?;
    let hash = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| auth::decoy_hash().to_string());
    let password = l.password.clone();
    let password_ok =
        tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash)).await.unwrap_or(false);
    let failure = match &user {
        None => Some("unknown_user"),
        Some(_) if !password_ok => Some("bad_password"),
        Some(u) if u.disabled => Some("disabled"),
        Some(u) => match auth::totp_check(&u.totp_secret, l.code.trim(), now as u64) {
            None => Some("bad_code"),
            Some(step) if !hub.store.totp_use(&u.name, step as i64).await.map_err(internal)? => Some("reused_code"),
            Some(_) => None,
        },
    };
    if let Some(reason) = failure {
        let failures = failures + 1;
        let delay = hub.cfg.lockout.delay(failures) as i64;
        hub.store
            .set_login_failures(&l.user, failures, if delay > 0 { now + delay } else { 0 })
            .await
            .map_err(internal)?;
        crate::metrics::HUB_LOGIN_FAILURES.with_label_values(&[reason]).inc();
        hub.audit
            .record("login_failed", json!({"user": l.user, "from": from, "reason": reason, "failures": failures}))
            .await;
        if delay > 0 {
            hub.audit
                .record(
                    "account_locked",
                    json!({"user": l.user, "from": from, "failures": failures, "locked_secs": delay}),
                )
                .await;
        }
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "login_failed", LOGIN_FAILED));
    }
    let Some(user) = user else { return Err(internal("unreachable")) };
    hub.store.clear_login_failures(&user.name).await.map_err(internal)?;
    let (token, hash) = auth::new_token();
    let expires_at = now + hub.cfg.token_ttl_secs as i64;
    hub.store.token_add(&hash, &user.name, expires_at).await.map_err(internal)?;
    hub.audit.record("login", json!({"user": user.name, "from": from, "role": user.role})).await;
    Ok(json_answer(
        StatusCode::OK,
        &json!({"token": token, "expires_at": expires_at, "user": user.name, "role": user.role}),
    ))
}

/// The account behind the request's bearer token.
pub async fn authenticate(hub: &Hub, req: &Request<Incoming>, peer: &Peer) -> Result<User, ApiError> {
    let from = peer.addr.ip().to_string();
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refuse = |code: &'static str, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    let Some(token) = token else {
        hub.refused("auth_refused", "no_token", json!({"from": from, "path": req.uri().path()})).await;
        return Err(refuse("no_token", "log in first (tether login): no bearer token"));
    };
    let hash = auth::token_hash(token);
    let Some((name, expires_at)) = hub.store.token(&hash).await.map_err(internal)? else {
        hub.refused("auth_refused", "bad_token", json!({"from": from, "path": req.uri().path()})).await;
        return Err(refuse("bad_token", "the token is not valid; log in again"));
    };
    if expires_at <= now_secs() as i64 {
        hub.refused("auth_refused", "token_expired", json!({"from": from, "user": name})).await;
        return Err(refuse("token_expired", "the token has expired; log in again"));
    }
    match hub.store.user(&name).await.map_err(internal)? {
        Some(u) if !u.disabled => Ok(u),
        _ => {
            hub.refused("auth_refused", "account_disabled", json!({"from": from, "user": name})).await;
            Err(refuse("account_disabled", "the account is disabled"))
        }
    }
}

pub async fn require_admin(hub: &Hub, user: &User, peer: &Peer, what: &str) -> Result<(), ApiError> {
    if user.role == Role::Admin {
        return Ok(());
    }
    hub.refused(
        "admin_refused",
        "not_admin",
        json!({"user": user.name, "from": peer.addr.ip().to_string(), "action": what}),
    )
    .await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "not_admin", format!("{what} needs the admin role")))
}

async fn devices(hub: &Hub, user: &User) -> Result<Answer, ApiError> {
    let list = hub.store.devices_for(&user.name, user.role == Role::Admin).await.map_err(internal)?;
    let out: Vec<Value> = list
        .into_iter()
        .map(|d| {
            let p = hub.board.presence(&d.id);
            json!({"id": d.id, "site": d.site, "consent": d.consent, "status": p.status, "relays": p.relays,
                   "last_heartbeat": p.last_heartbeat, "agent_version": p.agent_version})
        })
        .collect();
    Ok(json_answer(StatusCode::OK, &Value::Array(out)))
}
