//! Who is asking, and may they: bearer-token authentication, the admin
//! check, and the one answer for internal errors.
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::Hub;
use super::auth;
use super::http::{ApiError, Peer};
use super::model::{Role, User};
use crate::util::now_secs;

pub fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "hub internal error");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the hub's log")
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
