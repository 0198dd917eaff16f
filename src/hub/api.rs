//! `/api/v1`: dispatch over the one route table ([`crate::api::Route`]),
//! login, and the handlers that are not sessions.
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::guard::{authenticate, internal, metrics_reader, read_body, relay_identity, require_admin};
use super::http::{self, Answer, ApiError, Peer, error_answer, json_answer};
use super::limits::Busy;
use super::model::Role;
use super::{Hub, auth, sessions};
use crate::api::{
    Anchor, DeviceView, Health, LoginAnswer, LoginRequest, Me, RelayHealth, RelayReport, Route, parse_since,
};
use crate::util::now_secs;

pub async fn handle(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Answer {
    match route(hub, req, peer).await {
        Ok(a) => a,
        Err(e) => error_answer(&e),
    }
}

async fn route(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(route) = Route::of(method.as_str(), &path) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {path}")));
    };
    match route {
        Route::RepoMetadata(_) | Route::RepoList | Route::RepoPublish | Route::BlobPut(_) | Route::BlobGet(_) => {
            super::repo_api::handle(hub, route, req, peer).await
        }
        Route::JobCreate
        | Route::Jobs
        | Route::Job(_)
        | Route::JobCancel(_)
        | Route::DeviceJobs(_)
        | Route::DeviceJobReport(..)
        | Route::RelayEvents => super::jobs::handle(hub, route, req, peer).await,
        Route::DeviceUpload(..) | Route::JobUpload(_) => super::uploads::handle(hub, route, req, peer).await,
        Route::DeviceCert(_) | Route::CertRequests | Route::CertIssue(_) => {
            super::certs::handle(hub, route, req, peer).await
        }
        Route::RolloutCreate | Route::Rollouts | Route::RolloutCancel(_) => {
            super::rollouts::handle(hub, route, req, peer).await
        }
        Route::Health => {
            let relays = hub.board.relay_states().into_iter();
            let relays =
                relays.map(|(name, reporting, ready, sessions)| RelayHealth { name, reporting, ready, sessions });
            Ok(health_answer(hub.store.engine(), hub.store.reachable(), relays.collect()))
        }
        Route::Metrics => {
            metrics_reader(hub, peer).await?;
            crate::metrics::HUB_DEVICES_CLOCK_SKEWED.set(hub.board.clock_skewed() as i64);
            Ok(metrics_answer())
        }
        Route::Login => {
            let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
            let answer = login(hub, &http::parse(&body)?, peer, "api").await?;
            Ok(json_answer(StatusCode::OK, &answer))
        }
        Route::RelayReport => {
            let relay = relay_identity(hub, peer).await?;
            let body = read_body(hub, req, 16 * 1024 * 1024, peer).await?;
            let report: RelayReport = http::parse(&body)?;
            let answer = sessions::relay_report(hub, &relay, peer.cert.as_deref(), report).await?;
            Ok(json_answer(StatusCode::OK, &answer))
        }
        Route::Me => {
            let user = authenticate(hub, &req, peer).await?;
            let sites = hub.store.entitlements(&user.name).await.map_err(internal)?;
            Ok(json_answer(StatusCode::OK, &Me { user: user.name, role: user.role, sites }))
        }
        Route::Devices => {
            let user = authenticate(hub, &req, peer).await?;
            let list = if http::query(&req, "retired") == Some("true") {
                require_admin(hub, &user, peer, "devices_retired").await?;
                hub.store.devices_retired().await.map_err(internal)?
            } else {
                hub.store.devices_for(&user.name, user.role == Role::Admin).await.map_err(internal)?
            };
            let certs = hub.store.certs().await.map_err(internal)?;
            let out: Vec<DeviceView> = list
                .into_iter()
                .map(|d| {
                    let p = hub.board.presence(&d.id);
                    let c = certs.get(&d.id);
                    DeviceView {
                        id: d.id,
                        site: d.site,
                        consent: d.consent,
                        status: p.status,
                        relays: p.relays,
                        transports: p.transports,
                        last_heartbeat: p.last_heartbeat,
                        agent_version: p.agent_version,
                        cert_expires: c.map(|c| c.not_after).filter(|t| *t > 0),
                        cert_renewal: c.and_then(|c| c.renewal()).map(str::to_string),
                        clock_offset_ms: p.clock_offset_ms,
                        retired: d.retired,
                    }
                })
                .collect();
            Ok(json_answer(StatusCode::OK, &out))
        }
        Route::SessionCreate => {
            let user = authenticate(hub, &req, peer).await?;
            let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
            let want = http::parse(&body)?;
            let out = sessions::create(hub, &user, peer, want).await?;
            Ok(json_answer(StatusCode::CREATED, &out))
        }
        Route::Sessions => {
            let user = authenticate(hub, &req, peer).await?;
            let limit = http::query(&req, "limit").and_then(|l| l.parse().ok()).unwrap_or(100).clamp(1, 10_000);
            let all = user.role == Role::Admin && http::query(&req, "all") != Some("false");
            let mut list = hub.store.sessions((!all).then_some(user.name.as_str()), limit).await.map_err(internal)?;
            list.iter_mut().for_each(|s| with_live_bytes(hub, s));
            Ok(json_answer(StatusCode::OK, &list))
        }
        Route::Session(id) => {
            let user = authenticate(hub, &req, peer).await?;
            match hub.store.session(id).await.map_err(internal)? {
                Some(mut s) if s.specialist == user.name || user.role == Role::Admin => {
                    with_live_bytes(hub, &mut s);
                    Ok(json_answer(StatusCode::OK, &s))
                }
                _ => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_session", format!("no session {id} of yours"))),
            }
        }
        Route::SessionEnd(id) => {
            let user = authenticate(hub, &req, peer).await?;
            let out = sessions::end(hub, &user, peer, id).await?;
            Ok(json_answer(StatusCode::OK, &out))
        }
        Route::Audit => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "audit_export").await?;
            let since = match http::query(&req, "since") {
                Some(s) => parse_since(s).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_since", "since: RFC 3339 time or unix seconds")
                })?,
                None => 0,
            };
            let limit = http::query(&req, "limit").and_then(|l| l.parse().ok()).unwrap_or(100_000).clamp(1, 1_000_000);
            let lines = hub.store.audit_since(since, limit).await.map_err(internal)?;
            hub.audit.record("audit_exported", json!({"by": user.name, "from": peer.addr.ip().to_string(), "since": since, "records": lines.len()})).await;
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(http::text_answer(StatusCode::OK, "application/x-ndjson", text))
        }
        Route::Anchors => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "audit_anchors").await?;
            let anchors: Vec<Anchor> = hub
                .store
                .anchors()
                .await
                .map_err(internal)?
                .into_iter()
                .map(|(source, seq, hash, at)| Anchor { source, seq, hash, at })
                .collect();
            Ok(json_answer(StatusCode::OK, &anchors))
        }
        Route::AnchorHistory(source) => {
            let user = authenticate(hub, &req, peer).await?;
            require_admin(hub, &user, peer, "audit_anchors").await?;
            let anchors: Vec<Anchor> = hub
                .store
                .anchor_history(source)
                .await
                .map_err(internal)?
                .into_iter()
                .map(|(seq, hash, _, at)| Anchor { source: source.to_string(), seq, hash, at })
                .collect();
            Ok(json_answer(StatusCode::OK, &anchors))
        }
    }
}

/// `/api/v1/healthz`: 200 while the database is reached, else 503 `degraded`.
pub(super) fn health_answer(engine: &str, reachable: bool, relays: Vec<RelayHealth>) -> Answer {
    let (code, status, database) = match reachable {
        true => (StatusCode::OK, "ok", "ok"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "degraded", "unreachable"),
    };
    let h = Health { status: status.into(), engine: engine.into(), database: database.into(), relays };
    json_answer(code, &h)
}

/// This process's metrics in Prometheus's text format.
pub(super) fn metrics_answer() -> Answer {
    http::text_answer(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render())
}

pub(super) const LOGIN_FAILED: &str = "wrong user name, password or code";

/// Password, code, lockout and limits: one check for the API and the
/// console (`via` says which, in the audit).
pub(super) async fn login(hub: &Hub, l: &LoginRequest, peer: &Peer, via: &str) -> Result<LoginAnswer, ApiError> {
    let now = now_secs() as i64;
    let from = peer.addr.ip().to_string();
    if l.user.is_empty() || l.user.len() > 128 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_user", "user: 1 to 128 characters"));
    }
    // Before anything is looked up or hashed: one attempt per name at a
    // time, bounded password checks, a rate per source.
    let _attempt = match hub.logins.admit(peer.addr.ip(), &l.user, std::time::Instant::now()) {
        Ok(a) => a,
        Err((busy, report)) => return Err(busy_refusal(hub, busy, report, &l.user, &from).await),
    };
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
        Some(u) => match crate::totp::check(&u.totp_secret, l.code.trim(), now as u64) {
            None => Some("bad_code"),
            Some(step) if !hub.store.totp_use(&u.name, step as i64).await.map_err(internal)? => Some("reused_code"),
            Some(_) => None,
        },
    };
    if let Some(reason) = failure {
        let failures = hub.store.login_failure_add(&l.user).await.map_err(internal)?;
        let delay = hub.cfg.lockout.delay(failures) as i64;
        if delay > 0 {
            hub.store.login_lock(&l.user, now + delay).await.map_err(internal)?;
        }
        crate::metrics::HUB_LOGIN_FAILURES.with_label_values(&[reason]).inc();
        hub.audit
            .record(
                "login_failed",
                json!({"user": l.user, "from": from, "reason": reason, "failures": failures, "via": via}),
            )
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
    hub.audit.record("login", json!({"user": user.name, "from": from, "role": user.role, "via": via})).await;
    Ok(LoginAnswer { token, expires_at: expires_at as u64, user: user.name, role: user.role })
}

/// A login turned away before any check: counted, audited (rate limits once
/// per burst, with the count), answered 429 with a retry time.
async fn busy_refusal(hub: &Hub, busy: Busy, report: Option<u64>, user: &str, from: &str) -> ApiError {
    let (code, message) = match busy {
        Busy::RateLimited { retry_after } => {
            ("rate_limited", format!("too many login attempts from your address; try again in {retry_after} s"))
        }
        Busy::NameBusy => ("login_busy", "another login for this account is being checked; try again in 1 s".into()),
        Busy::Overloaded => ("busy", "the hub is checking too many logins; try again in 1 s".into()),
    };
    crate::metrics::HUB_REFUSALS.with_label_values(&[code]).inc();
    match (busy, report) {
        (Busy::RateLimited { .. }, Some(n)) => {
            hub.audit.record("login_rate_limited", json!({"from": from, "refused_in_burst": n, "user": user})).await;
        }
        (Busy::RateLimited { .. }, None) => {}
        _ => hub.audit.record("login_refused_busy", json!({"from": from, "user": user, "reason": code})).await,
    }
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
}

/// A live session's record counts the bytes its relays reported so far: the
/// stored counts (each relay's adds to them when the session ends there, or
/// when it restarted before) and the live counts of the relays that carry it.
fn with_live_bytes(hub: &Hub, s: &mut crate::api::SessionRecord) {
    if s.state == "live"
        && let Some((to_device, to_client)) = hub.board.live_bytes(&s.id)
    {
        s.bytes_to_device = s.bytes_to_device.saturating_add(i64::try_from(to_device).unwrap_or(i64::MAX));
        s.bytes_to_client = s.bytes_to_client.saturating_add(i64::try_from(to_client).unwrap_or(i64::MAX));
    }
}
