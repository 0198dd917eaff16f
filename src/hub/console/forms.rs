//! What the console's forms do: sign in and out, end a session, cancel a job
//! or a rollout, add or disable an account, change a device's policy. Every post but the login form's
//! carries the session's CSRF token; the login form carries a double-submit
//! token (cookie and field). A post from another origin is refused.
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::html::{esc, page};
use super::session::{self, LOGIN_COOKIE, SESSION_COOKIE, field, same_token, set_cookie};
use super::{Who, html_answer, redirect};
use crate::api::LoginRequest;
use crate::hub::Hub;
use crate::hub::guard::read_body;
use crate::hub::http::{Answer, ApiError, Peer};

/// The sign-in form, with a fresh double-submit token (and `error`, after a
/// refused attempt).
pub fn login_page(hub: &Hub, error: Option<(StatusCode, &str)>) -> Answer {
    let token = hex::encode(crate::random_bytes::<32>());
    let alert = error.map(|(_, m)| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m))).unwrap_or_default();
    let body = format!(
        "<section class=\"card narrow\">{alert}\
         <form method=\"post\" action=\"/console/login\" class=\"stack\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <label for=\"user\">User name</label>\
         <input id=\"user\" name=\"user\" autocomplete=\"username\" required maxlength=\"128\" autofocus>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <label for=\"code\">6-digit code from your authenticator app</label>\
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" autocomplete=\"one-time-code\" required>\
         <button type=\"submit\" class=\"primary\">Sign in</button></form>\
         <p class=\"hint\">{}: sessions end after {} min without use, and after {} h in any case.</p></section>",
        esc(&hub.cfg.issuer),
        hub.console.idle().as_secs().div_ceil(60),
        hub.cfg.console_session_secs.div_ceil(3600),
    );
    let status = error.map_or(StatusCode::OK, |(s, _)| s);
    let mut a = html_answer(status, page("Sign in", None, "", &body));
    if let Ok(v) = set_cookie(LOGIN_COOKIE, &token, Some(900)).parse() {
        a.headers_mut().append(hyper::header::SET_COOKIE, v);
    }
    a
}

/// `POST /console/login`: the API's login (same checks, limits, lockout and
/// audit), then a cookie session.
pub async fn login(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    from_here(hub, &req, peer).await?;
    let cookie = session::cookie(req.headers(), LOGIN_COOKIE).unwrap_or("").to_string();
    let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
    let f = session::form(&String::from_utf8_lossy(&body));
    if !same_token(&cookie, field(&f, "csrf")) {
        return Err(csrf_refused(hub, peer, "", "/console/login").await);
    }
    let l = LoginRequest {
        user: field(&f, "user").into(),
        password: field(&f, "password").into(),
        code: field(&f, "code").into(),
    };
    match crate::hub::api::login(hub, &l, peer, "console").await {
        Ok(answer) => {
            // The login token becomes a console token: stored under another
            // hash, so that the cookie is no bearer token for the API (where
            // no idle timeout would hold it).
            let internal = crate::hub::guard::internal;
            hub.store.token_remove(&crate::hub::auth::token_hash(&answer.token)).await.map_err(internal)?;
            let hash = session::token_hash(&answer.token);
            let until = crate::util::now_secs() + hub.cfg.console_session_secs;
            hub.store.token_add(&hash, &answer.user, until as i64).await.map_err(internal)?;
            hub.console.start(&hash, &answer.user);
            let mut a = redirect("/console/devices");
            for c in [set_cookie(SESSION_COOKIE, &answer.token, None), set_cookie(LOGIN_COOKIE, "", Some(0))] {
                if let Ok(v) = c.parse() {
                    a.headers_mut().append(hyper::header::SET_COOKIE, v);
                }
            }
            Ok(a)
        }
        // The API's sentence: generic for a wrong name, password or code.
        Err(e) if e.status.is_client_error() => Ok(login_page(hub, Some((e.status, &e.message)))),
        Err(e) => Err(e),
    }
}

/// A form posted by a signed-in person.
pub async fn post(hub: &Hub, req: Request<Incoming>, peer: &Peer, who: &Who, path: &str) -> Result<Answer, ApiError> {
    from_here(hub, &req, peer).await?;
    let body = read_body(hub, req, hub.cfg.max_body_bytes, peer).await?;
    let f = session::form(&String::from_utf8_lossy(&body));
    if !same_token(&who.csrf, field(&f, "csrf")) {
        return Err(csrf_refused(hub, peer, &who.user.name, path).await);
    }
    let parts: Vec<&str> = path.trim_start_matches("/console/").split('/').collect();
    match parts.as_slice() {
        ["logout"] => {
            let _ = hub.store.token_remove(&who.token_hash).await;
            hub.console.end(&who.token_hash);
            hub.audit
                .record("logout", json!({"user": who.user.name, "from": peer.addr.ip().to_string(), "via": "console"}))
                .await;
            let mut a = redirect("/console/login");
            if let Ok(v) = set_cookie(SESSION_COOKIE, "", Some(0)).parse() {
                a.headers_mut().append(hyper::header::SET_COOKIE, v);
            }
            Ok(a)
        }
        ["sessions", id, "end"] => {
            crate::hub::sessions::end(hub, &who.user, peer, id).await?;
            Ok(redirect("/console/sessions"))
        }
        ["jobs", id, "cancel"] => {
            crate::hub::guard::require_admin(hub, &who.user, peer, "job_cancel").await?;
            crate::hub::jobs::cancel(hub, &who.user, peer, id).await?;
            Ok(redirect("/console/jobs"))
        }
        ["rollouts", id, "cancel"] => {
            crate::hub::guard::require_admin(hub, &who.user, peer, "rollout_cancel").await?;
            crate::hub::rollouts::cancel(hub, &who.user, peer, id).await?;
            Ok(redirect("/console/jobs"))
        }
        ["accounts"] => super::accounts::add(hub, who, peer, &f).await,
        ["devices", id] => super::device::set(hub, who, peer, &session::decode(id), &f).await,
        ["devices", id, action @ ("retire" | "reinstate")] => {
            let id = session::decode(id);
            let notice = super::retire::post(hub, who, peer, &id, &f, *action == "retire").await?;
            super::device::page(hub, who, peer, &id, Some(notice)).await
        }
        ["accounts", name, action @ ("disable" | "enable")] => {
            super::accounts::set_disabled(hub, who, peer, &session::decode(name), *action == "disable").await
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no console form {path}"))),
    }
}

/// A post must come from a console page: when the browser says where the
/// form was (`Sec-Fetch-Site`, `Origin`), it is this hub. The CSRF token is
/// the check that does not depend on the browser; this one stops a form
/// from another site even before the token is looked at.
async fn from_here(hub: &Hub, req: &Request<Incoming>, peer: &Peer) -> Result<(), ApiError> {
    let header = |name: hyper::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(hyper::header::HOST).unwrap_or("");
    let site_ok = header(hyper::header::HeaderName::from_static("sec-fetch-site")).is_none_or(|s| s == "same-origin");
    let origin = header(hyper::header::ORIGIN);
    let origin_ok = origin.is_none_or(|o| !host.is_empty() && o.strip_prefix("https://") == Some(host));
    if site_ok && origin_ok {
        return Ok(());
    }
    let fields = json!({"from": peer.addr.ip().to_string(), "origin": origin, "path": req.uri().path()});
    hub.refused("console_refused", "cross_origin", fields).await;
    Err(ApiError::new(StatusCode::FORBIDDEN, "cross_origin", "a form from another site is not taken"))
}

async fn csrf_refused(hub: &Hub, peer: &Peer, user: &str, path: &str) -> ApiError {
    let fields = json!({"from": peer.addr.ip().to_string(), "user": user, "path": path});
    hub.refused("console_refused", "csrf", fields).await;
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "this form is out of date or was not sent from the console (CSRF check failed): reload the page and try again",
    )
}
