//! Who is asking, and may they: bearer-token authentication, the admin
//! check, relay identity, entitlement to a device's site, bounded request
//! bodies, and the one answer for internal errors.
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::Hub;
use super::auth;
use super::http::{self, ApiError, Peer};
use super::model::{Role, User};
use super::store::StoreError;
use crate::util::now_secs;

/// The answer to a failure inside the hub: 503 `database_unavailable` when
/// the database cannot be reached, 503 `database_full` when it has no room
/// to write (the store logged either once), else 500.
pub fn internal<E: std::fmt::Display + 'static>(e: E) -> ApiError {
    let any = &e as &dyn std::any::Any;
    let store = any.downcast_ref::<StoreError>().or_else(|| match any.downcast_ref::<super::HubError>() {
        Some(super::HubError::Store(s)) => Some(s),
        _ => None,
    });
    match store {
        Some(StoreError::Unavailable(why)) => {
            tracing::debug!(error = %why, "refused: the database is unreachable");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_TEXT);
        }
        // Logged once by the store, when it began.
        Some(StoreError::Full(why)) => {
            tracing::debug!(error = %why, "refused: the database has no room to write");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, DATABASE_FULL, DATABASE_FULL_TEXT);
        }
        _ => {}
    }
    tracing::error!(error = %e, "hub internal error");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the hub's log")
}

/// The error code of a request refused because the database has no room to write.
pub const DATABASE_FULL: &str = "database_full";
const DATABASE_FULL_TEXT: &str =
    "the hub's database has no room to write (its disk is full); sessions already open go on; try again later";

/// The error code of a request refused because the database is unreachable.
pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
const DATABASE_UNAVAILABLE_TEXT: &str =
    "the hub's database is unreachable; sessions already open go on; try again in a minute";

/// The account behind the request's bearer token.
pub async fn authenticate(hub: &Hub, req: &Request<Incoming>, peer: &Peer) -> Result<User, ApiError> {
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    account_of(hub, token, peer, req.uri().path()).await
}

/// The account a login token (bearer or console cookie) stands for: known,
/// not expired, account enabled. Each refusal is counted and audited.
pub async fn account_of(hub: &Hub, token: Option<&str>, peer: &Peer, path: &str) -> Result<User, ApiError> {
    let from = peer.addr.ip().to_string();
    let refuse = |code: &'static str, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    let Some(token) = token else {
        hub.refused_stranger("auth_refused", "no_token", peer.addr.ip(), json!({"from": from, "path": path})).await;
        return Err(refuse("no_token", "log in first (tether login): no bearer token"));
    };
    let hash = auth::token_hash(token);
    let Some((name, expires_at)) = hub.store.token(&hash).await.map_err(internal)? else {
        hub.refused_stranger("auth_refused", "bad_token", peer.addr.ip(), json!({"from": from, "path": path})).await;
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

/// Admits a scrape of `/metrics` from a source in `metrics_from` (the port
/// faces the specialists; the counts are nobody else's business).
pub fn metrics_allowed(cfg: &super::HubConfig, peer: &Peer) -> Result<(), ApiError> {
    let from = peer.addr.ip().to_canonical();
    if cfg.metrics_from.iter().any(|n| n.contains(&from)) {
        return Ok(());
    }
    let why = "this address may not read the hub's metrics (the hub's metrics_from)";
    Err(ApiError::new(StatusCode::FORBIDDEN, "metrics_not_allowed", why))
}

/// [`metrics_allowed`], a refusal counted and audited.
pub async fn metrics_reader(hub: &Hub, peer: &Peer) -> Result<(), ApiError> {
    let Err(e) = metrics_allowed(&hub.cfg, peer) else { return Ok(()) };
    let from = peer.addr.ip().to_canonical();
    hub.refused_stranger("metrics_refused", e.code, from, json!({"from": from.to_string()})).await;
    Err(e)
}

/// The peer's relay name, when it presented a configured relay's certificate.
pub async fn relay_identity(hub: &Hub, peer: &Peer) -> Result<String, ApiError> {
    match peer.relay() {
        Some(name) if hub.board.is_relay(name) => Ok(name.to_string()),
        _ => {
            let role = peer.cert_role.map(|r| r.name());
            let fields = json!({"from": peer.addr.to_string(), "cert": peer.cert_name, "cert_role": role});
            hub.refused("relay_report_refused", "not_a_relay", fields).await;
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_relay",
                "reports need a configured relay's client certificate",
            ))
        }
    }
}

/// The request's body, bounded in size and in time; a body trickled past
/// `body_timeout_secs` is counted and audited (a slow-body attack shows).
pub async fn read_body(hub: &Hub, req: Request<Incoming>, max: usize, peer: &Peer) -> Result<bytes::Bytes, ApiError> {
    let within = std::time::Duration::from_secs(hub.cfg.body_timeout_secs.max(1));
    let body = http::body(req, max, within).await;
    if let Err(e) = &body
        && e.code == "body_timeout"
    {
        hub.refused("request_refused", e.code, json!({"from": peer.addr.ip().to_string()})).await;
    }
    body
}

/// The device, if `user` is entitled to its site (admins too: a job reaches
/// into a hospital's device, so the site must be theirs). Unknown and not
/// entitled look the same.
pub async fn entitled_device(
    hub: &Hub,
    user: &User,
    peer: &Peer,
    device: &str,
    action: &str,
) -> Result<crate::hub::model::Device, ApiError> {
    if let Some(d) = hub.store.device(device).await.map_err(internal)?
        && hub.store.entitled(&user.name, &d.site).await.map_err(internal)?
    {
        return Ok(d);
    }
    hub.refused(
        "job_refused",
        "not_entitled",
        json!({"user": user.name, "device": device, "action": action, "from": peer.addr.ip().to_string()}),
    )
    .await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "not_entitled", format!("you are not entitled to device {device}")))
}

/// Job `id`, when `user` is entitled to its device's site (`action` names
/// what for in the refusal's audit record); 404 `no_job` when there is none.
pub async fn entitled_job(
    hub: &Hub,
    user: &User,
    peer: &Peer,
    id: &str,
    action: &str,
) -> Result<crate::api::JobView, ApiError> {
    let none = || ApiError::new(StatusCode::NOT_FOUND, "no_job", format!("no job {id}"));
    let job = hub.store.job(id).await.map_err(internal)?.ok_or_else(none)?;
    entitled_device(hub, user, peer, &job.device, action).await?;
    Ok(job)
}
