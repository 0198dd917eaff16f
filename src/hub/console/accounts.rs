//! The accounts page (admins): users, roles, sites; adding an account shows
//! its authenticator enrolment (QR code) once; disabling and enabling.
use std::fmt::Write;

use hyper::StatusCode;
use serde_json::json;

use super::html::{self, badge, esc, post_button, table};
use super::session::field;
use super::{Who, html_answer, redirect};
use crate::hub::Hub;
use crate::hub::guard::{internal, require_admin};
use crate::hub::http::{Answer, ApiError, Peer};
use crate::hub::model::Role;

/// The page; `notice` is markup shown above the list (an enrolment, an error).
pub async fn page(hub: &Hub, who: &Who, peer: &Peer, notice: Option<String>) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "accounts_view").await?;
    let mut rows = String::new();
    for u in hub.store.users().await.map_err(internal)? {
        let sites = hub.store.entitlements(&u.name).await.map_err(internal)?;
        let action = if u.name == who.user.name {
            "<small>you</small>".to_string()
        } else if u.disabled {
            post_button(
                who,
                &format!("/console/accounts/{}/enable", html::url(&u.name)),
                "Enable",
                &format!("Enable {}?", u.name),
            )
        } else {
            post_button(
                who,
                &format!("/console/accounts/{}/disable", html::url(&u.name)),
                "Disable",
                &format!("Disable {}? Their sign-ins stop at once.", u.name),
            )
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            esc(&u.name),
            esc(u.role.as_str()),
            if u.disabled { badge("off", "disabled") } else { badge("ok", "active") },
            esc(&sites.join(", ")),
            html::time(u.created_at),
        );
    }
    let add = format!(
        "<section class=\"card\"><h2>Add an account</h2>\
         <form method=\"post\" action=\"/console/accounts\" class=\"grid\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"name\">User name</label><input id=\"name\" name=\"name\" required maxlength=\"128\" autocomplete=\"off\">\
         <label for=\"role\">Role</label><select id=\"role\" name=\"role\"><option value=\"viewer\">viewer: diagnostic services</option>\
         <option value=\"engineer\" selected>engineer: every service</option><option value=\"admin\">admin: accounts, audit, ending sessions</option></select>\
         <label for=\"new-password\">First password (12+ characters, hard to guess)</label>\
         <input id=\"new-password\" name=\"password\" type=\"password\" required minlength=\"12\" autocomplete=\"new-password\">\
         <label for=\"sites\">Sites (comma separated)</label><input id=\"sites\" name=\"sites\" placeholder=\"st-marys, general\">\
         <button type=\"submit\" class=\"primary\">Add account</button></form></section>",
        esc(&who.csrf)
    );
    let body = format!(
        "{}{}{add}",
        notice.unwrap_or_default(),
        table("Accounts", &["Name", "Role", "Status", "Sites", "Created (UTC)", ""], &rows, None)
    );
    Ok(html_answer(StatusCode::OK, html::page("Accounts", Some(who), "accounts", &body)))
}

/// `POST /console/accounts`: the CLI's `hub user add`, with its checks; the
/// enrolment is shown on the answer only.
pub async fn add(hub: &Hub, who: &Who, peer: &Peer, f: &[(String, String)]) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "user_add").await?;
    let name = field(f, "name").trim();
    let role = match field(f, "role").parse::<Role>() {
        Ok(r) => r,
        Err(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_role", "role: viewer, engineer or admin")),
    };
    let sites: Vec<String> =
        field(f, "sites").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let by = format!("console:{}", who.user.name);
    let added =
        crate::hub::admin::add_user((&hub.store, &hub.audit, &by), name, role, field(f, "password"), &sites).await;
    let notice = match added {
        Ok(secret) => {
            let uri = crate::totp::uri(&hub.cfg.issuer, name, &secret);
            format!(
                "<section class=\"card enrol\" aria-labelledby=\"enrol\"><h2 id=\"enrol\">Enrol {} in an authenticator app</h2>\
                 <p>Scan this code with the person's authenticator app now; it is shown only this once.</p>{}\
                 <p>Or type the secret: <code class=\"secret\">{}</code></p></section>",
                esc(name),
                super::qr::svg(&uri, 240, &format!("QR code enrolling {name}")),
                esc(&secret)
            )
        }
        Err(e) => {
            let fields =
                json!({"by": who.user.name, "from": peer.addr.ip().to_string(), "user": name, "why": e.to_string()});
            hub.refused("user_add_refused", "bad_account", fields).await;
            format!("<p class=\"error\" role=\"alert\">Not added: {}</p>", esc(&e.to_string()))
        }
    };
    page(hub, who, peer, Some(notice)).await
}

pub async fn set_disabled(hub: &Hub, who: &Who, peer: &Peer, name: &str, disabled: bool) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "user_disable").await?;
    if name == who.user.name {
        return Err(ApiError::new(StatusCode::CONFLICT, "self", "you cannot disable your own account here"));
    }
    if hub.store.user(name).await.map_err(internal)?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_user", format!("no account {name}")));
    }
    hub.store.user_set_disabled(name, disabled).await.map_err(internal)?;
    let event = if disabled { "user_disabled" } else { "user_enabled" };
    hub.audit.record(event, json!({"user": name, "by": format!("console:{}", who.user.name)})).await;
    Ok(redirect("/console/accounts"))
}
