//! The devices and sessions pages.
use std::fmt::Write;

use hyper::StatusCode;

use super::html::{self, badge, empty_row, esc, page, post_button, table, url};
use super::{Who, html_answer};
use crate::hub::Hub;
use crate::hub::guard::internal;
use crate::hub::http::{Answer, ApiError};
use crate::hub::model::Role;
use crate::util::now_secs;

/// Devices the person may see (admins: all), where each is online, its
/// agent; filtered by `q` (id or site) and `status`.
pub async fn devices(hub: &Hub, who: &Who, query: &[(String, String)], rows_only: bool) -> Result<Answer, ApiError> {
    let q = super::session::field(query, "q").trim().to_lowercase();
    let status = super::session::field(query, "status");
    let admin = who.user.role == Role::Admin;
    let list = hub.store.devices_for(&who.user.name, admin).await.map_err(internal)?;
    let certs = hub.store.certs().await.map_err(internal)?;
    let now = now_secs();
    let (mut rows, mut online, mut shown) = (String::new(), 0, 0);
    for d in &list {
        let p = hub.board.presence(&d.id);
        let is_online = p.status == "online";
        online += usize::from(is_online);
        let matches = q.is_empty() || d.id.to_lowercase().contains(&q) || d.site.to_lowercase().contains(&q);
        if !matches || (status == "online" && !is_online) || (status == "offline" && is_online) {
            continue;
        }
        shown += 1;
        let heard = p.last_heartbeat.map(|h| format!("{} ago", html::span(now.saturating_sub(h) as i64)));
        let _ = write!(
            rows,
            "<tr><th scope=\"row\"><a href=\"/console/devices/{}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url(&d.id),
            esc(&d.id),
            esc(&d.site),
            if is_online { badge("ok", "online") } else { badge("off", "offline") },
            esc(&p.relays.join(", ")),
            esc(&p.transports.join(", ")),
            heard_cell(heard.as_deref(), p.clock_offset_ms.filter(|_| is_online)),
            esc(p.agent_version.as_deref().unwrap_or("-")),
            esc(&d.consent),
            cert_cell(certs.get(&d.id), now),
        );
    }
    if shown == 0 {
        let none = if admin { "No device in service." } else { "No devices on your sites." };
        rows = empty_row(9, if list.is_empty() { none } else { "No device matches." });
    }
    if rows_only {
        return Ok(html_answer(StatusCode::OK, rows));
    }
    let selected = |v: &str| if v == status { " selected" } else { "" };
    let filter = format!(
        "<form method=\"get\" action=\"/console/devices\" class=\"filters\" role=\"search\">\
         <label for=\"q\">Device or site</label><input id=\"q\" name=\"q\" value=\"{}\" type=\"search\">\
         <label for=\"status\">Status</label><select id=\"status\" name=\"status\">\
         <option value=\"\"{}>any</option><option value=\"online\"{}>online</option><option value=\"offline\"{}>offline</option></select>\
         <button type=\"submit\">Filter</button></form>",
        esc(&q),
        selected(""),
        selected("online"),
        selected("offline"),
    );
    let summary = format!(
        "<p class=\"summary\"><strong>{online}</strong> of <strong>{}</strong> devices online · updated every 5 s <span class=\"stamp\"></span></p>",
        list.len()
    );
    let refresh = format!("/console/devices?part=rows&q={}&status={}", url(&q), url(status));
    let heads =
        ["Device", "Site", "Status", "Relays", "Transport", "Last heartbeat", "Agent", "Consent", "Certificate"];
    let body = format!(
        "{summary}{filter}{}{}",
        table("Devices", &heads, &rows, Some(&refresh)),
        super::retire::listed(hub, who).await?
    );
    Ok(html_answer(StatusCode::OK, page("Devices", Some(who), "devices", &body)))
}

/// When the device was last heard from, with a badge when its clock is off.
pub(super) fn heard_cell(heard: Option<&str>, clock_offset_ms: Option<i64>) -> String {
    let mut out = esc(heard.unwrap_or("-"));
    if let Some(o) = clock_offset_ms.filter(|o| crate::util::clock::skewed(*o)) {
        out += &format!(" {}", badge("bad", &format!("clock {}", crate::util::clock::describe_offset(o))));
    }
    out
}

/// When a device's certificate expires (a badge within 30 days or past),
/// and its renewal while one is under way.
pub(super) fn cert_cell(c: Option<&crate::hub::store::DeviceCert>, now: u64) -> String {
    let Some(c) = c.filter(|c| c.not_after > 0) else { return "-".into() };
    let day = esc(&crate::util::clock::day(c.not_after));
    let mut out = match c.not_after.checked_sub(now) {
        None => format!("{} {day}", badge("bad", "expired")),
        Some(left) if left < 30 * 86_400 => format!("{} {day}", badge("wait", &format!("{} days", left / 86_400))),
        Some(_) => day,
    };
    match c.renewal() {
        Some("pending") => out += " · renewal waits for the CA",
        Some("issued") => out += " · renewed, not yet installed",
        _ => {}
    }
    out
}

/// Live sessions (duration, bytes so far; admins can end one) and past ones.
pub async fn sessions(hub: &Hub, who: &Who, rows_only: bool) -> Result<Answer, ApiError> {
    let admin = who.user.role == Role::Admin;
    let list = hub.store.sessions((!admin).then_some(who.user.name.as_str()), 200).await.map_err(internal)?;
    let now = now_secs() as i64;
    let (mut live, mut past) = (String::new(), String::new());
    for s in &list {
        let reason: String = s.reason.chars().take(60).collect();
        let open = matches!(s.state.as_str(), "live" | "granted") && !(s.state == "granted" && s.expires_at <= now);
        if open {
            let (to_device, to_client) = hub.board.live_bytes(&s.id).unwrap_or((0, 0));
            let end = if admin {
                post_button(
                    who,
                    &format!("/console/sessions/{}/end", s.id),
                    "End",
                    &format!("End session {} now?", s.id),
                )
            } else {
                String::new()
            };
            let _ = write!(
                live,
                "<tr data-session=\"{}\"><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ↓ {} ↑</td><td>{}</td></tr>",
                esc(&s.id),
                esc(&s.id),
                esc(&s.specialist),
                esc(&s.device),
                esc(&s.service),
                esc(&reason),
                state_badge(&s.state),
                esc(&s.relay),
                html::span(now - s.created_at),
                html::bytes(to_device),
                html::bytes(to_client),
                end
            );
        } else {
            let ended = s.ended_at.map(html::time).unwrap_or_else(|| "-".into());
            // An ended session's counts come with its relay's next report.
            let counted = !(s.state == "revoked" && s.duration_ms == 0 && s.bytes_to_device == 0);
            let why = why_ended(s);
            let _ = write!(
                past,
                "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ↓ {} ↑</td><td>{}</td></tr>",
                esc(&s.id),
                esc(&s.specialist),
                esc(&s.device),
                esc(&s.service),
                esc(&reason),
                html::time(s.created_at),
                esc(&ended),
                pending(counted, html::span(s.duration_ms / 1000)),
                state_badge(if s.state == "granted" { "expired" } else { &s.state }),
                pending(counted, html::bytes(s.bytes_to_device.max(0) as u64)),
                pending(counted, html::bytes(s.bytes_to_client.max(0) as u64)),
                esc(&why),
            );
        }
    }
    if live.is_empty() {
        live = empty_row(10, "No live session.");
    }
    if rows_only {
        return Ok(html_answer(StatusCode::OK, live));
    }
    if past.is_empty() {
        past = empty_row(11, "No past session.");
    }
    let live_heads = [
        "Session",
        "Specialist",
        "Device",
        "Service",
        "Reason",
        "State",
        "Relay",
        "Duration",
        "Bytes (to device, to client)",
        "",
    ];
    let past_heads = [
        "Session",
        "Specialist",
        "Device",
        "Service",
        "Reason",
        "Started (UTC)",
        "Ended (UTC)",
        "Duration",
        "State",
        "Bytes",
        "Why it ended",
    ];
    let scope = if admin { "every specialist's sessions" } else { "your sessions" };
    let body = format!(
        "<p class=\"summary\">Showing {scope}; live sessions update every 5 s <span class=\"stamp\"></span>. Bytes are counted at the relay, every 10 s.</p>{}{}",
        table("Live sessions", &live_heads, &live, Some("/console/sessions?part=rows")),
        table("Past sessions (newest first)", &past_heads, &past, None),
    );
    Ok(html_answer(StatusCode::OK, page("Sessions", Some(who), "sessions", &body)))
}

/// Why a session ended, and by whom: `revoked (by ada)`, `never opened`.
pub(super) fn why_ended(s: &crate::api::SessionRecord) -> String {
    match (&s.end_reason, &s.ended_by) {
        (Some(r), Some(by)) => format!("{r} (by {by})"),
        (Some(r), None) => r.clone(),
        (None, Some(by)) => format!("by {by}"),
        _ if s.state == "granted" && s.expires_at <= now_secs() as i64 => "never opened".into(),
        _ => String::new(),
    }
}

pub(super) fn state_badge(state: &str) -> String {
    let kind = match state {
        "live" => "ok",
        "granted" => "wait",
        "revoked" => "bad",
        _ => "off",
    };
    badge(kind, state)
}

/// `value`, or an ellipsis while the relay has not reported it yet.
fn pending(counted: bool, value: String) -> String {
    if counted { value } else { "…".into() }
}
