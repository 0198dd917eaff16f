//! The audit page: the hub's own records filtered by device, account, event
//! and time; the verification status of its chain; export as JSON lines.
use std::fmt::Write;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::html::{self, badge, empty_row, esc, table, url};
use super::session::field;
use super::{Who, html_answer};
use crate::hub::Hub;
use crate::hub::guard::{internal, require_admin};
use crate::hub::http::{Answer, ApiError, Peer};

/// Records scanned per page (newest first) and shown at most.
const SCAN: i64 = 20_000;
const SHOWN: usize = 500;
/// Records checked per database read, and reads per page view.
const CHUNK: i64 = 5_000;
const CHUNKS_PER_VIEW: usize = 200;

/// How far the hub's chain is verified: checked once, then only what was
/// added since (the page asks for the rest each time it is shown).
pub struct ChainCheck {
    state: tokio::sync::Mutex<(u64, String, Option<String>)>,
}

/// What the page says about the chain.
struct ChainStatus {
    through: u64,
    head: u64,
    broken: Option<String>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        ChainCheck { state: tokio::sync::Mutex::new((0, crate::audit::GENESIS.to_string(), None)) }
    }
}

impl ChainCheck {
    async fn run(&self, hub: &Hub) -> Result<ChainStatus, ApiError> {
        let mut st = self.state.lock().await;
        for _ in 0..CHUNKS_PER_VIEW {
            if st.2.is_some() {
                break;
            }
            let lines = hub.store.audit_after(st.0, CHUNK).await.map_err(internal)?;
            let Some(last) = lines.last() else { break };
            let last_hash = serde_json::from_str::<Value>(last).ok().and_then(|v| v["hash"].as_str().map(String::from));
            let text = lines.join("\n");
            match crate::audit::verify_lines(text.as_bytes(), &st.1, st.0) {
                Ok(n) => {
                    st.0 += n;
                    st.1 = last_hash.unwrap_or_default();
                }
                Err((line, why)) => {
                    let bad = st.0 + line as u64;
                    crate::metrics::HUB_REFUSALS.with_label_values(&["audit_chain_broken"]).inc();
                    tracing::error!(seq = bad, why, "the hub's audit chain does not verify");
                    st.2 = Some(why);
                }
            }
            if (lines.len() as i64) < CHUNK {
                break;
            }
        }
        let head = hub.audit.head().await.0;
        Ok(ChainStatus { through: st.0, head, broken: st.2.clone() })
    }
}

/// The filters of the page and of its export.
struct Filter {
    device: String,
    user: String,
    event: String,
    since: i64,
    until: i64,
    since_text: String,
    until_text: String,
}

impl Filter {
    fn of(q: &[(String, String)]) -> Result<Filter, ApiError> {
        let now = crate::util::now_secs() as i64;
        let day = |name: &str, default: i64| -> Result<(i64, String), ApiError> {
            let t = field(q, name).trim();
            if t.is_empty() {
                return Ok((default, String::new()));
            }
            let full = if t.len() == 10 { format!("{t}T00:00:00Z") } else { t.to_string() };
            crate::api::parse_since(&full).map(|v| (v, t.to_string())).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_time",
                    format!("{name}: a date (YYYY-MM-DD) or RFC 3339 time"),
                )
            })
        };
        let (since, since_text) = day("since", now - 7 * 86_400)?;
        let (until, until_text) = day("until", i64::MAX - 1)?;
        // A day given alone means up to its end.
        let until = if until_text.len() == 10 { until + 86_400 } else { until };
        Ok(Filter {
            device: field(q, "device").trim().into(),
            user: field(q, "user").trim().into(),
            event: field(q, "event").trim().into(),
            since,
            until,
            since_text,
            until_text,
        })
    }

    fn matches(&self, r: &Value) -> bool {
        let is = |keys: &[&str], want: &str| want.is_empty() || keys.iter().any(|k| r[*k].as_str() == Some(want));
        is(&["event"], &self.event) && is(&["device"], &self.device) && is(&["user", "specialist", "by"], &self.user)
    }

    fn query(&self) -> String {
        format!(
            "device={}&user={}&event={}&since={}&until={}",
            url(&self.device),
            url(&self.user),
            url(&self.event),
            url(&self.since_text),
            url(&self.until_text)
        )
    }

    /// Matching records (as stored, and parsed), newest first.
    async fn records(&self, hub: &Hub) -> Result<(Vec<(String, Value)>, usize), ApiError> {
        let lines = hub.store.audit_newest(self.since, self.until, SCAN).await.map_err(internal)?;
        let scanned = lines.len();
        let out = lines
            .into_iter()
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok().map(|v| (l, v)))
            .filter(|(_, r)| self.matches(r));
        Ok((out.collect(), scanned))
    }
}

pub async fn page(hub: &Hub, who: &Who, peer: &Peer, q: &[(String, String)]) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "audit_view").await?;
    let f = Filter::of(q)?;
    let chain = hub.console_chain.run(hub).await?;
    let (records, scanned) = f.records(hub).await?;
    let mut rows = String::new();
    for (_, r) in records.iter().take(SHOWN) {
        let mut rest = r.as_object().cloned().unwrap_or_default();
        for k in ["seq", "ts", "event", "prev", "hash", "sig"] {
            rest.remove(k);
        }
        let who_field = ["user", "specialist", "by"].iter().find_map(|k| r[*k].as_str()).unwrap_or("");
        let details: String = Value::Object(rest).to_string().chars().take(400).collect();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"details\"><code>{}</code></td></tr>",
            r["seq"].as_u64().unwrap_or(0),
            esc(&r["ts"].as_str().unwrap_or("").chars().take(19).collect::<String>().replace('T', " ")),
            esc(r["event"].as_str().unwrap_or("")),
            esc(who_field),
            esc(r["device"].as_str().unwrap_or("")),
            esc(&details),
        );
    }
    if rows.is_empty() {
        rows = empty_row(6, "No record matches.");
    }
    let status = match (&chain.broken, chain.through >= chain.head) {
        (Some(why), _) => format!("{} {}", badge("bad", "chain broken"), esc(why)),
        (None, true) => {
            format!("{} all {} records, from the first to the head, link up", badge("ok", "verified"), chain.head)
        }
        (None, false) => format!(
            "{} records 1 to {} of {} link up; reload to go on",
            badge("wait", "verifying"),
            chain.through,
            chain.head
        ),
    };
    let more = if records.len() > SHOWN {
        format!(" (the newest {SHOWN} shown; narrow the filter or export)")
    } else {
        String::new()
    };
    let body = format!(
        "<p class=\"summary\" id=\"chain\">Hub audit chain: {status}</p>\
         <form method=\"get\" action=\"/console/audit\" class=\"filters\" role=\"search\">\
         <label for=\"device\">Device</label><input id=\"device\" name=\"device\" value=\"{}\">\
         <label for=\"user\">Account</label><input id=\"user\" name=\"user\" value=\"{}\">\
         <label for=\"event\">Event</label><input id=\"event\" name=\"event\" value=\"{}\" placeholder=\"e.g. session_granted\">\
         <label for=\"since\">From</label><input id=\"since\" name=\"since\" type=\"date\" value=\"{}\">\
         <label for=\"until\">To</label><input id=\"until\" name=\"until\" type=\"date\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>\
         <p class=\"summary\">{} matching of {scanned} records read{more} · <a href=\"/console/audit/export?{}\" download>Export as JSON lines</a> (records as stored, verifiable with their hashes)</p>{}",
        esc(&f.device),
        esc(&f.user),
        esc(&f.event),
        esc(&f.since_text),
        esc(&f.until_text),
        records.len(),
        esc(&f.query()),
        table(
            "Audit records (newest first, times UTC)",
            &["Seq", "Time", "Event", "Account", "Device", "Details"],
            &rows,
            None
        ),
    );
    Ok(html_answer(StatusCode::OK, html::page("Audit", Some(who), "audit", &body)))
}

/// The matching records as stored, oldest first, one JSON object a line.
pub async fn export(hub: &Hub, who: &Who, peer: &Peer, q: &[(String, String)]) -> Result<Answer, ApiError> {
    require_admin(hub, &who.user, peer, "audit_export").await?;
    let f = Filter::of(q)?;
    let (mut records, _) = f.records(hub).await?;
    records.reverse();
    let mut text = String::new();
    for (line, _) in &records {
        text.push_str(line);
        text.push('\n');
    }
    let fields = json!({"by": who.user.name, "from": peer.addr.ip().to_string(), "since": f.since, "records": records.len(), "via": "console", "filter": f.query()});
    hub.audit.record("audit_exported", fields).await;
    let mut a = crate::hub::http::text_answer(StatusCode::OK, "application/x-ndjson", text);
    a.headers_mut().insert(
        hyper::header::CONTENT_DISPOSITION,
        hyper::header::HeaderValue::from_static("attachment; filename=\"tether-audit.ndjson\""),
    );
    Ok(a)
}
