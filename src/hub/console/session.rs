//! Console sessions: a login token in a `__Host-` cookie (HttpOnly, Secure,
//! SameSite=Strict), an idle timeout kept here in memory, and a CSRF token
//! per session. A hub restart ends every console session (log in again);
//! API tokens are not affected.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::util::lock;

/// The session cookie: a login token, as `tether login` gets one.
pub const SESSION_COOKIE: &str = "__Host-tether";
/// The login form's CSRF value (double submit: cookie and form field).
pub const LOGIN_COOKIE: &str = "__Host-tether-login";
/// At most this many console sessions at once (oldest idle ones go first).
const MAX_SESSIONS: usize = 10_000;

struct Entry {
    user: String,
    csrf: String,
    last: Instant,
}

/// The live console sessions, by login-token hash.
pub struct ConsoleSessions {
    idle: Duration,
    map: Mutex<HashMap<String, Entry>>,
}

impl ConsoleSessions {
    pub fn new(idle: Duration) -> ConsoleSessions {
        ConsoleSessions { idle, map: Mutex::new(HashMap::new()) }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A session for the login token with hash `token_hash`; returns its CSRF token.
    pub fn start(&self, token_hash: &str, user: &str) -> String {
        let csrf = hex::encode(crate::random_bytes::<32>());
        let mut map = lock(&self.map);
        map.retain(|_, e| e.last.elapsed() < self.idle);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token_hash.to_string(), Entry { user: user.into(), csrf: csrf.clone(), last: Instant::now() });
        csrf
    }

    /// The account and CSRF token of a live session. `touch`: the request is
    /// the person's (not the page's own refresh), so the idle clock restarts.
    /// A session idle past the timeout is ended here: `Err(user)`.
    pub fn get(&self, token_hash: &str, touch: bool) -> Option<Result<(String, String), String>> {
        let mut map = lock(&self.map);
        let e = map.get_mut(token_hash)?;
        if e.last.elapsed() >= self.idle {
            let user = e.user.clone();
            map.remove(token_hash);
            return Some(Err(user));
        }
        if touch {
            e.last = Instant::now();
        }
        Some(Ok((e.user.clone(), e.csrf.clone())))
    }

    pub fn end(&self, token_hash: &str) {
        lock(&self.map).remove(token_hash);
    }
}

/// What the hub stores for a console cookie's token: the hash of the token
/// under a console prefix, never equal to the API token hash of anything.
pub fn token_hash(cookie_token: &str) -> String {
    crate::hub::auth::token_hash(&format!("console:{cookie_token}"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for `name`: host-only, HTTPS only, not readable by script,
/// never sent from another site. `max_age` `None`: until the browser closes;
/// `Some(0)`: delete.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age.map(|a| format!("; Max-Age={a}")).unwrap_or_default();
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}")
}

/// Equal CSRF tokens, compared in constant time; empty never matches.
pub fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `application/x-www-form-urlencoded` (and query strings) into pairs.
pub fn form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `name` in `pairs`, or "".
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_cookies_and_tokens() {
        let f = form("user=al%20ice&password=a+b%26c&code=123456&x=%zz&y=%4");
        assert_eq!(field(&f, "user"), "al ice");
        assert_eq!(field(&f, "password"), "a b&c");
        assert_eq!(field(&f, "x"), "%zz");
        assert_eq!(field(&f, "y"), "%4");
        assert_eq!(field(&f, "missing"), "");
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::COOKIE, "a=1; __Host-tether=tok; __Host-tether-login=l".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("l"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("", ""));
        let s = ConsoleSessions::new(Duration::from_secs(60));
        let csrf = s.start("h", "alice");
        assert_eq!(s.get("h", true), Some(Ok(("alice".into(), csrf))));
        s.end("h");
        assert_eq!(s.get("h", true), None);
        let s = ConsoleSessions::new(Duration::ZERO);
        s.start("h", "bob");
        assert_eq!(s.get("h", false), Some(Err("bob".into())));
        assert_eq!(s.get("h", false), None);
    }
}
