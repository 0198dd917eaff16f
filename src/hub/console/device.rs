//! One device's page: where it is online, its agent and certificate, its
//! access policy, and its recent sessions. Admins change the policy here
//! (site and consent: the CLI's `hub device set`, audited as
//! `device_changed` with what it was); everyone else reads it.
use std::fmt::Write;

use hyper::StatusCode;
use serde_json::json;

use super::html::{self, badge, empty_row, esc, table};
use super::pages::{cert_cell, heard_cell, state_badge, why_ended};
use super::session::field;
use super::{Who, html_answer};
use crate::hub::Hub;
use crate::hub::guard::{internal, require_admin};
use crate::hub::http::{Answer, ApiError, Peer};
use crate::hub::model::{Device, Role};
use crate::util::now_secs;

/// Sessions listed on the page, newest first.
const RECENT: i64 = 20;

/// `GET /console/devices/ID`; `notice` is markup shown above the page (what
/// a change did, or why it was refused) and `status` the answer's.
pub async fn page(
    hub: &Hub,
    who: &Who,
    peer: &Peer,
    id: &str,
    notice: Option<(StatusCode, String)>,
) -> Result<Answer, ApiError> {
    let d = visible(hub, who, peer, id).await?;
    let admin = who.user.role == Role::Admin;
    let facts = now_facts(hub, &d.id).await?;
    let policy = if admin && d.retired.is_none() { policy_form(hub, who, &d).await? } else { policy_facts(&d) };
    let retirement = super::retire::card(who, &d);
    let (status, notice) = notice.unwrap_or((StatusCode::OK, String::new()));
    let body = format!(
        "<p class=\"summary\"><a href=\"/console/devices\">All devices</a> · site <strong>{}</strong></p>{notice}{}\
         <section class=\"card\"><h2>Now <span class=\"stamp\"></span></h2>\
         <dl class=\"facts\" data-refresh=\"/console/devices/{}?part=now\">{facts}</dl></section>{policy}{}{}",
        esc(&d.site),
        if d.retired.is_some() { retirement.as_str() } else { "" },
        html::url(&d.id),
        sessions(hub, who, &d.id).await?,
        if d.retired.is_none() { retirement.as_str() } else { "" },
    );
    Ok(html_answer(status, html::page(&format!("Device {}", d.id), Some(who), "devices", &body)))
}

/// `GET /console/devices/ID?part=now`: the "Now" card's facts alone, which
/// the page reloads every 5 s.
pub async fn now(hub: &Hub, who: &Who, peer: &Peer, id: &str) -> Result<Answer, ApiError> {
    let d = visible(hub, who, peer, id).await?;
    Ok(html_answer(StatusCode::OK, now_facts(hub, &d.id).await?))
}

/// Where the device is online and how, its last heartbeat, agent and certificate.
async fn now_facts(hub: &Hub, id: &str) -> Result<String, ApiError> {
    let p = hub.board.presence(id);
    let online = p.status == "online";
    let now = now_secs();
    let cert = hub.store.cert_of(id).await.map_err(internal)?;
    let heard = p.last_heartbeat.map(|h| format!("{} ago", html::span(now.saturating_sub(h) as i64)));
    let fact = |k: &str, v: String| format!("<dt>{}</dt><dd>{v}</dd>", esc(k));
    Ok([
        fact("Status", if online { badge("ok", "online") } else { badge("off", "offline") }),
        fact("Relays (transport)", esc(&or_dash(&attached(&p.relays, &p.transports)))),
        fact("Last heartbeat", heard_cell(heard.as_deref(), p.clock_offset_ms.filter(|_| online))),
        fact("Agent", esc(p.agent_version.as_deref().unwrap_or("-"))),
        fact("Certificate expires", cert_cell(cert.as_ref(), now)),
    ]
    .concat())
}

/// `POST /console/devices/ID` (admins): a new site and consent policy.
/// (Retiring and reinstating: [`super::retire`].)
pub async fn set(hub: &Hub, who: &Who, peer: &Peer, id: &str, f: &[(String, String)]) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "device_set").await?;
    visible(hub, who, peer, id).await?;
    let (site, consent) = (field(f, "site").trim(), field(f, "consent"));
    let by = format!("console:{}", who.user.name);
    let notice = match crate::hub::admin::set_device((&hub.store, &hub.audit, &by), id, Some(site), Some(consent)).await
    {
        Ok((was, now)) if was == now => {
            (StatusCode::OK, "<p class=\"notice\" role=\"status\">Nothing changed.</p>".to_string())
        }
        Ok((was, now)) => {
            let mut changed = Vec::new();
            if was.site != now.site {
                changed.push(format!("site {} → {}", esc(&was.site), esc(&now.site)));
            }
            if was.consent != now.consent {
                changed.push(format!("consent {} → {}", esc(&was.consent), esc(&now.consent)));
            }
            let text = format!(
                "Saved: {}. Sessions granted from now on follow it; sessions already live go on.",
                changed.join(", ")
            );
            let mut notice = format!("<p class=\"notice\" role=\"status\">{text}</p>");
            if was.site != now.site && !hub.store.site_has_specialist(&now.site).await.map_err(internal)? {
                let _ = write!(
                    notice,
                    "<p class=\"error\" role=\"alert\">No account is entitled to site {} yet: only admins reach \
                     this device until one is (<code>tether hub user entitle NAME {}</code>).</p>",
                    esc(&now.site),
                    esc(&now.site)
                );
            }
            (StatusCode::OK, notice)
        }
        Err(e) => {
            let why = format!("{e:#}");
            let fields = json!({"by": who.user.name, "from": peer.addr.ip().to_string(), "device": id,
                                "site": site, "consent": consent, "why": why});
            hub.refused("device_set_refused", "bad_policy", fields).await;
            (StatusCode::BAD_REQUEST, format!("<p class=\"error\" role=\"alert\">Not changed: {}</p>", esc(&why)))
        }
    };
    page(hub, who, peer, id, Some(notice)).await
}

/// The device, when `who` may see it (admins: any; others: on their
/// sites). One that exists on another site answers like one that does not,
/// and the attempt is audited.
async fn visible(hub: &Hub, who: &Who, peer: &Peer, id: &str) -> Result<Device, ApiError> {
    let admin = who.user.role == Role::Admin;
    let found = hub.store.device(id).await.map_err(internal)?;
    let Some(d) = found else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_device", format!("no device {id} on your sites")));
    };
    // A retired device stays visible on its site: its page says why nobody reaches it.
    if admin || hub.store.entitled(&who.user.name, &d.site).await.map_err(internal)? {
        return Ok(d);
    }
    let fields = json!({"user": who.user.name, "from": peer.addr.ip().to_string(), "device": id});
    hub.refused("console_refused", "not_entitled", fields).await;
    Err(ApiError::new(StatusCode::NOT_FOUND, "no_device", format!("no device {id} on your sites")))
}

async fn policy_form(hub: &Hub, who: &Who, d: &Device) -> Result<String, ApiError> {
    let mut sites: Vec<String> =
        hub.store.devices_for("", true).await.map_err(internal)?.into_iter().map(|d| d.site).collect();
    sites.sort();
    sites.dedup();
    let options: String = sites.iter().map(|s| format!("<option value=\"{}\">", esc(s))).collect();
    let chosen = |v: &str| if d.consent == v { " selected" } else { "" };
    Ok(format!(
        "<section class=\"card\"><h2>Access policy</h2>\
         <form method=\"post\" action=\"/console/devices/{}\" class=\"grid\" id=\"policy\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"site\">Site (who may reach it: specialists entitled to this site)</label>\
         <input id=\"site\" name=\"site\" value=\"{}\" required maxlength=\"128\" list=\"sites\" autocomplete=\"off\">\
         <datalist id=\"sites\">{options}</datalist>\
         <label for=\"consent\">Approval of each session</label><select id=\"consent\" name=\"consent\">\
         <option value=\"auto\"{}>auto: the hub's grant is enough</option>\
         <option value=\"required\"{}>required: the person at the device approves</option></select>\
         <button type=\"submit\" class=\"primary\">Save policy</button></form>\
         <p class=\"hint\">With auto, the device's own settings may still ask the person at it. \
         Sessions granted from now on follow this policy; sessions already live go on. \
         Each change is written to the audit log with what it was before.</p></section>",
        html::url(&d.id),
        esc(&who.csrf),
        esc(&d.site),
        chosen("auto"),
        chosen("required"),
    ))
}

fn policy_facts(d: &Device) -> String {
    let consent = match d.consent.as_str() {
        "required" => "required: the person at the device approves each session",
        _ => "auto: the hub's grant is enough (the device's own settings may still ask)",
    };
    format!(
        "<section class=\"card\"><h2>Access policy</h2><dl class=\"facts\"><dt>Site</dt><dd>{}</dd>\
         <dt>Approval of each session</dt><dd>{}</dd></dl><p class=\"hint\">An admin changes it.</p></section>",
        esc(&d.site),
        esc(consent)
    )
}

/// The device's newest sessions (a specialist's own only, for a non-admin).
async fn sessions(hub: &Hub, who: &Who, id: &str) -> Result<String, ApiError> {
    let admin = who.user.role == Role::Admin;
    let mine = (!admin).then_some(who.user.name.as_str());
    let list = hub.store.device_sessions(id, mine, RECENT).await.map_err(internal)?;
    let now = now_secs() as i64;
    let mut rows = String::new();
    for s in &list {
        let reason: String = s.reason.chars().take(60).collect();
        let why = why_ended(s);
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.id),
            esc(&s.specialist),
            esc(&s.service),
            esc(&reason),
            html::time(s.created_at),
            state_badge(if s.state == "granted" && s.expires_at <= now { "expired" } else { &s.state }),
            esc(&why),
        );
    }
    if rows.is_empty() {
        rows = empty_row(7, "No session with this device yet.");
    }
    let heads = ["Session", "Specialist", "Service", "Reason", "Started (UTC)", "State", "Why it ended"];
    let caption = if admin { "Recent sessions (newest first)" } else { "Your recent sessions (newest first)" };
    Ok(table(caption, &heads, &rows, None))
}

/// `relay-a (quic), relay-b (tcp)`.
fn attached(relays: &[String], transports: &[String]) -> String {
    let each = relays.iter().enumerate().map(|(i, r)| match transports.get(i) {
        Some(t) => format!("{r} ({t})"),
        None => r.clone(),
    });
    each.collect::<Vec<_>>().join(", ")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}
