//! Retirement on the console: the card on a device's page (what a
//! retirement means, and for admins the form that retires the device or
//! puts it back in service), its two forms, and the admins' list of
//! retired devices under the Devices table.
use std::fmt::Write;

use hyper::StatusCode;
use serde_json::json;

use super::Who;
use super::html::{self, esc, table};
use crate::hub::Hub;
use crate::hub::guard::{internal, require_admin};
use crate::hub::http::{ApiError, Peer};
use crate::hub::model::{Device, Role};
use crate::hub::retire::{self, MAX_REASON, RetireError};

/// The device page's retirement card.
pub fn card(who: &Who, d: &Device) -> String {
    let admin = who.user.role == Role::Admin;
    let action = format!("/console/devices/{}", html::url(&d.id));
    match &d.retired {
        Some(r) => {
            let back = if admin {
                format!(
                    "<form method=\"post\" action=\"{action}/reinstate\" id=\"reinstate\" data-confirm=\"Put {} back in \
                     service? Specialists entitled to site {} can reach it again.\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button type=\"submit\">Put back in service</button></form>",
                    esc(&d.id),
                    esc(&d.site),
                    esc(&who.csrf)
                )
            } else {
                String::new()
            };
            format!(
                "<section class=\"card retired\" id=\"retired\"><h2>Retired</h2><p class=\"error\" role=\"status\">{}</p>\
                 <p>Nobody is granted a session with it, it takes no job, and its certificate is not renewed. \
                 The relays drop its channels and refuse it. Revoke its certificate too \
                 (<code>tether certs revoke</code>): a relay that cannot reach the hub, or one of a version \
                 before, would still take it.</p>{back}</section>",
                esc(&r.describe())
            )
        }
        None if admin => format!(
            "<section class=\"card\"><h2>Retire</h2>\
             <form method=\"post\" action=\"{action}/retire\" class=\"grid\" id=\"retire\" data-confirm=\"Retire {}? \
             Its open sessions are revoked and its waiting jobs cancelled.\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"retire-reason\">Why (sold, scrapped, handed over; kept in the audit log)</label>\
             <input id=\"retire-reason\" name=\"reason\" required maxlength=\"{MAX_REASON}\" autocomplete=\"off\">\
             <button type=\"submit\" class=\"danger\">Retire device</button></form>\
             <p class=\"hint\">For a device out of service for good. Its open sessions are revoked and its \
             unfinished jobs cancelled; nobody is granted a session with it, it takes no job, and its \
             certificate is not renewed. It can be put back in service.</p></section>",
            esc(&d.id),
            esc(&who.csrf)
        ),
        None => String::new(),
    }
}

/// `POST /console/devices/ID/retire` and `…/reinstate` (admins): the
/// notice for the device's page, with what was done or why not.
pub async fn post(
    hub: &Hub,
    who: &Who,
    peer: &Peer,
    id: &str,
    f: &[(String, String)],
    retiring: bool,
) -> Result<(StatusCode, String), ApiError> {
    let action = if retiring { "device_retire" } else { "device_reinstate" };
    require_admin(hub, &who.user, peer, action).await?;
    let by = format!("console:{}", who.user.name);
    let reason = super::session::field(f, "reason");
    let done = if retiring {
        retire::retire((&hub.store, &hub.audit, &by), id, reason).await.map(|r| {
            retire::enforce(hub, &r);
            retired_notice(&r)
        })
    } else {
        retire::reinstate((&hub.store, &hub.audit, &by), id).await.map(|d| {
            hub.board.mark_retired(&d.id, false);
            format!(
                "<p class=\"notice\" role=\"status\">Back in service: specialists entitled to site {} can reach it \
                 again. If its certificate was revoked, it needs a new one before it can attach.</p>",
                esc(&d.site)
            )
        })
    };
    let notice = match done {
        Ok(text) => (StatusCode::OK, text),
        Err(RetireError::NoDevice(_)) => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no_device", format!("no device {id} on your sites")));
        }
        Err(RetireError::Store(e)) => return Err(internal(e)),
        Err(e) => {
            let fields =
                json!({"by": who.user.name, "from": peer.addr.ip().to_string(), "device": id, "why": e.to_string()});
            hub.refused(&format!("{action}_refused"), e.code(), fields).await;
            let status = match e {
                RetireError::NoReason | RetireError::BadReason => StatusCode::BAD_REQUEST,
                _ => StatusCode::CONFLICT,
            };
            (status, format!("<p class=\"error\" role=\"alert\">Not done: {}</p>", esc(&e.to_string())))
        }
    };
    Ok(notice)
}

fn retired_notice(r: &retire::Retirement) -> String {
    let mut text = String::from(if r.finishing {
        "It was retired before, but that retirement left something open; closed now. "
    } else {
        "Retired. "
    });
    match r.sessions.len() {
        0 => text.push_str("No session was open. "),
        n => {
            let ids: Vec<&str> = r.sessions.iter().map(|s| s.0.as_str()).collect();
            let them = if n == 1 { "it" } else { "them" };
            let _ =
                write!(text, "Revoked {n} session{}: {}; the relays end {them} at once. ", plural(n), ids.join(", "));
        }
    }
    match r.jobs.len() {
        0 => text.push_str("No job was waiting."),
        n => {
            let ids: Vec<&str> = r.jobs.iter().map(|j| j.id.as_str()).collect();
            let _ = write!(text, "Cancelled {n} job{}: {}.", plural(n), ids.join(", "));
        }
    }
    format!(
        "<p class=\"notice\" role=\"status\">{}</p><p class=\"hint\">The relays drop its channels at their next \
         report to the hub. Revoke its certificate too (<code>tether certs revoke</code>, with those revoked \
         before) and give the CRL to the relays and the hub: that holds even where the hub is out of reach.</p>",
        esc(&text)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The admins' table of retired devices, under the Devices table (empty
/// when there are none, and for everyone else).
pub async fn listed(hub: &Hub, who: &Who) -> Result<String, ApiError> {
    if who.user.role != Role::Admin {
        return Ok(String::new());
    }
    let list = hub.store.devices_retired().await.map_err(internal)?;
    if list.is_empty() {
        return Ok(String::new());
    }
    let mut rows = String::new();
    for d in &list {
        let Some(r) = &d.retired else { continue };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/console/devices/{}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html::url(&d.id),
            esc(&d.id),
            esc(&d.site),
            html::time(r.at),
            esc(&r.by),
            esc(&r.reason),
        );
    }
    let caption = format!("Retired devices ({}): nobody reaches them", list.len());
    Ok(table(&caption, &["Device", "Site", "Retired (UTC)", "By", "Why"], &rows, None))
}
