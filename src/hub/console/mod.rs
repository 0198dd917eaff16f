//! The web console, served by the hub on its HTTPS port under `/console/`:
//! server-rendered pages (no template engine: [`html::esc`] on every value),
//! one small script for live refresh and confirmations, one stylesheet, all
//! built into the binary. Sign-in is the API's login (password, code,
//! lockout, limits) into a cookie session ([`session`]); every form carries
//! a CSRF token; every answer carries a strict Content-Security-Policy.
mod accounts;
mod audit;
mod device;
mod fleet;
mod forms;
mod html;
mod pages;
mod qr;
mod retire;
pub mod session;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::Hub;
use super::http::{Answer, ApiError, Peer};
use super::model::User;
pub use audit::ChainCheck;
pub use session::ConsoleSessions;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Sent with every console answer: scripts and styles from this origin
/// only, no inline script, no framing, no form posts elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The signed-in person of a console request.
pub struct Who {
    pub user: User,
    pub csrf: String,
    pub token_hash: String,
}

/// Paths the console answers (the rest is the API's).
pub fn is_console(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

pub async fn handle(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Answer {
    let answer = match route(hub, req, peer).await {
        Ok(a) => a,
        Err(e) => error_page(&e),
    };
    secure(answer)
}

async fn route(hub: &Hub, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    let path = req.uri().path().to_string();
    let (get, post) = (req.method() == Method::GET, req.method() == Method::POST);
    match path.as_str() {
        "/" | "/console" | "/console/" if get => return Ok(redirect("/console/devices")),
        "/console/static/console.css" if get => return Ok(asset("text/css; charset=utf-8", CSS)),
        "/console/static/console.js" if get => return Ok(asset("text/javascript; charset=utf-8", JS)),
        "/console/login" if get => return Ok(forms::login_page(hub, None)),
        "/console/login" if post => return forms::login(hub, req, peer).await,
        _ => {}
    }
    if !get && !post {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "bad_method", "the console takes GET and POST"));
    }
    let refresh = req.headers().contains_key("x-console-refresh");
    let Some(who) = signed_in(hub, &req, peer, !refresh).await? else {
        // Pages send the person to the login form; the page's own refresh
        // gets a 401 and console.js does the same.
        if refresh {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "signed_out", "signed out"));
        }
        return Ok(redirect("/console/login"));
    };
    let query = req.uri().query().map(session::form).unwrap_or_default();
    if post {
        return forms::post(hub, req, peer, &who, &path).await;
    }
    let rows = session::field(&query, "part") == "rows";
    match path.as_str() {
        "/console/devices" => pages::devices(hub, &who, &query, rows).await,
        "/console/sessions" => pages::sessions(hub, &who, rows).await,
        "/console/audit" => audit::page(hub, &who, peer, &query).await,
        "/console/audit/export" => audit::export(hub, &who, peer, &query).await,
        "/console/jobs" => fleet::page(hub, &who, rows).await,
        "/console/accounts" => accounts::page(hub, &who, peer, None).await,
        p if p.starts_with("/console/devices/") => {
            let id = session::decode(p.trim_start_matches("/console/devices/"));
            match session::field(&query, "part") == "now" {
                true => device::now(hub, &who, peer, &id).await,
                false => device::page(hub, &who, peer, &id, None).await,
            }
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no console page {path}"))),
    }
}

/// The person behind the session cookie: `None` without a cookie, or when
/// the session is over (idle, logged out, hub restarted, token expired,
/// account disabled; each counted and audited).
async fn signed_in(hub: &Hub, req: &Request<Incoming>, peer: &Peer, touch: bool) -> Result<Option<Who>, ApiError> {
    let Some(token) = session::cookie(req.headers(), session::SESSION_COOKIE) else { return Ok(None) };
    let token_hash = session::token_hash(token);
    let from = peer.addr.ip().to_string();
    let (name, csrf) = match hub.console.get(&token_hash, touch) {
        Some(Ok(s)) => s,
        Some(Err(user)) => {
            let _ = hub.store.token_remove(&token_hash).await;
            let idle = hub.console.idle().as_secs();
            hub.refused("console_refused", "session_idle", json!({"user": user, "from": from, "idle_secs": idle}))
                .await;
            return Ok(None);
        }
        None => {
            hub.refused("console_refused", "no_session", json!({"from": from, "path": req.uri().path()})).await;
            return Ok(None);
        }
    };
    match super::guard::account_of(hub, Some(&format!("console:{token}")), peer, req.uri().path()).await {
        Ok(user) if user.name == name => Ok(Some(Who { user, csrf, token_hash })),
        Ok(_) => Ok(None),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            hub.console.end(&token_hash);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A refusal as a console page with the console's headers, for an answer
/// given without the hub (while it waits for its database).
pub fn refusal_page(e: &ApiError) -> Answer {
    secure(error_page(e))
}

/// The headers every console answer carries.
fn secure(mut a: Answer) -> Answer {
    let h = a.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    // Not no-referrer: with it, browsers send `Origin: null` on form posts,
    // and the origin check below could not tell this console from anyone.
    set(h, "referrer-policy", "same-origin");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(h, "strict-transport-security", "max-age=31536000");
    set(h, "permissions-policy", "camera=(), microphone=(), geolocation=()");
    if !h.contains_key(hyper::header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    a
}

pub fn html_answer(status: StatusCode, body: String) -> Answer {
    super::http::text_answer(status, "text/html; charset=utf-8", body)
}

fn asset(ctype: &'static str, body: &'static str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    r
}

/// 303 See Other to `to` (after a form post, or to the login form).
pub fn redirect(to: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

/// A refusal as a page: the status, and the same sentence the API gives.
fn error_page(e: &ApiError) -> Answer {
    let body = format!(
        "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/console/devices\">Back to the console</a></p>",
        html::esc(&e.message)
    );
    let title = e.status.canonical_reason().unwrap_or("Refused");
    html_answer(e.status, html::page(title, None, "", &body))
}
