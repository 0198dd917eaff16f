//! Markup helpers: every value from outside goes through [`esc`]; pages are
//! put together from these and the one [`page`] frame.
use std::fmt::Write;

use super::Who;
use crate::hub::model::Role;

/// `s` with `& < > " '` as entities: safe in text and in quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` for a query string value (RFC 3986 unreserved kept, the rest %XX).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A UTC time as `2026-11-30 14:05:09`.
pub fn time(unix: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(unix) else { return "-".into() };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `3 s`, `4 min 05 s`, `2 h 03 min`, `5 d 2 h`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        3600..86400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// `812 B`, `1.4 KiB`, `23.0 MiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A coloured label: `kind` is one of the stylesheet's badge classes.
pub fn badge(kind: &str, text: &str) -> String {
    format!("<span class=\"badge badge-{}\">{}</span>", esc(kind), esc(text))
}

/// A form that POSTs to `action` with the session's CSRF token and one
/// button; `confirm` asks first (console.js).
pub fn post_button(who: &Who, action: &str, label: &str, confirm: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\" data-confirm=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"danger\">{}</button></form>",
        esc(action),
        esc(confirm),
        esc(&who.csrf),
        esc(label)
    )
}

/// A table: a caption, column heads, rows already marked up; `refresh` is
/// the URL console.js reloads the rows from.
pub fn table(caption: &str, heads: &[&str], rows: &str, refresh: Option<&str>) -> String {
    let mut h = String::new();
    for c in heads {
        let _ = write!(h, "<th scope=\"col\">{}</th>", esc(c));
    }
    let live = refresh.map(|u| format!(" data-refresh=\"{}\" aria-live=\"polite\"", esc(u))).unwrap_or_default();
    format!(
        "<div class=\"table-wrap\"><table><caption>{}</caption><thead><tr>{h}</tr></thead><tbody{live}>{rows}</tbody></table></div>",
        esc(caption)
    )
}

/// A row standing for "nothing here", across `cols` columns.
pub fn empty_row(cols: usize, text: &str) -> String {
    format!("<tr><td colspan=\"{cols}\" class=\"empty\">{}</td></tr>", esc(text))
}

/// The frame of every page: header, navigation (admin pages for admins),
/// the signed-in account and the logout button.
pub fn page(title: &str, who: Option<&Who>, active: &str, body: &str) -> String {
    let mut nav = String::new();
    let mut account = String::new();
    if let Some(w) = who {
        let admin = w.user.role == Role::Admin;
        let items: &[(&str, &str, bool)] = &[
            ("devices", "Devices", true),
            ("sessions", "Sessions", true),
            ("audit", "Audit", admin),
            ("jobs", "Software and jobs", true),
            ("accounts", "Accounts", admin),
        ];
        nav.push_str("<nav aria-label=\"Console\"><ul>");
        for (path, label, shown) in items {
            if *shown {
                let current = if *path == active { " aria-current=\"page\"" } else { "" };
                let _ = write!(nav, "<li><a href=\"/console/{path}\"{current}>{label}</a></li>");
            }
        }
        nav.push_str("</ul></nav>");
        account = format!(
            "<div class=\"account\"><span>{} <small>({})</small></span>\
             <form method=\"post\" action=\"/console/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out</button></form></div>",
            esc(&w.user.name),
            esc(w.user.role.as_str()),
            esc(&w.csrf)
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · tether</title><link rel=\"stylesheet\" href=\"/console/static/console.css\">\
         <script src=\"/console/static/console.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><div class=\"brand\"><svg class=\"logo\" aria-hidden=\"true\" viewBox=\"0 0 24 24\" width=\"22\" height=\"22\"><circle cx=\"6\" cy=\"12\" r=\"4\"/><circle cx=\"18\" cy=\"12\" r=\"4\"/><path d=\"M10 12h4\"/></svg> tether <small>remote service</small></div>{nav}{account}</header>\
         <main id=\"main\"><h1>{}</h1>{body}</main>\
         <footer>tether {} · every action here is written to the hub's audit log</footer></body></html>\n",
        esc(title),
        esc(title),
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_from_outside_is_escaped_and_units_read_well() {
        assert_eq!(esc("<script>alert('x')</script>&\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(125), "2 min 05 s");
        assert_eq!(span(7380), "2 h 03 min");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert!(table("c", &["<h>"], "", Some("/x?a=1&b=2")).contains("data-refresh=\"/x?a=1&amp;b=2\""));
    }
}
