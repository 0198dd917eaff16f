//! A real browser for the console tests: Debian's chromium, driven over the
//! W3C WebDriver protocol by chromedriver (a few JSON calls over loopback
//! HTTP; no client library). The browser trusts exactly the hub's key
//! (`--ignore-certificate-errors-spki-list`), not every certificate.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::free_port;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and chromedriver, or `None` (with why) when not installed here.
/// CI installs both (.ci/run), and there a missing one fails the test.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().map(PathBuf::from).find(|p| p.exists()).or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.exists())
        })
    };
    let browser = find(&["/usr/bin/chromium", "chromium", "chromium-browser"]);
    let driver = find(&["/usr/bin/chromedriver", "chromedriver"]);
    match (browser, driver) {
        (Some(b), Some(d)) => Some((b, d)),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "chromium and chromedriver are not installed but CI must run this test"
            );
            eprintln!(
                "SKIPPED: chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)"
            );
            None
        }
    }
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the WebDriver session first: chromedriver then quits chromium.
        // Killing chromedriver alone leaves the browser running.
        if !self.session.is_empty() {
            quit(self.port, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/ID`, blocking (from `Drop`); waits for the answer,
/// which chromedriver sends once the browser has exited.
fn quit(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let head = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_ok() {
        let _ = s.read(&mut [0u8; 4096]);
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in `pem`.
fn spki_pin(pem: &Path) -> String {
    use sha2::Digest;
    let der = tether::tls::load_certs(pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    data_encoding::BASE64.encode(&sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))
}

impl Browser {
    /// Starts chromedriver and a headless chromium that trusts `hub_cert`'s key.
    pub async fn start((chromium, chromedriver): &(PathBuf, PathBuf), hub_cert: &Path, log: &Path) -> Browser {
        let port = free_port().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1366,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--ignore-certificate-errors-spki-list={}", spki_pin(hub_cert)));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut b = Browser { driver, port, session: String::new(), _profile: profile };
        let mut started = None;
        for _ in 0..100 {
            if let Ok(v) = b.call("POST", "/session", Some(&caps)).await {
                started = v["sessionId"].as_str().map(String::from);
                assert!(started.is_some(), "chromedriver refused the session: {v}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.session = started.expect("chromedriver did not start");
        b
    }

    /// One WebDriver call; `Err` when chromedriver is not reachable. The
    /// value, or a panic naming WebDriver's error.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, std::io::Error> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        // Read the head, then exactly Content-Length bytes (chromedriver
        // may keep the connection open).
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let read = async {
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                raw.extend_from_slice(&buf[..n]);
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
                    if len.is_some_and(|len| raw.len() >= end + 4 + len) {
                        return Ok(());
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read).await.map_err(std::io::Error::other)??;
        let text = String::from_utf8_lossy(&raw);
        let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("WebDriver answered {text}"));
        Ok(v["value"].clone())
    }

    async fn cmd(&self, method: &str, what: &str, body: Value) -> Value {
        let path = format!("/session/{}{what}", self.session);
        let body = (method == "POST").then_some(&body);
        let v = self.call(method, &path, body).await.expect("chromedriver gone");
        assert!(v.get("error").is_none(), "WebDriver {method} {what}: {v}");
        v
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", Value::Null).await.as_str().unwrap_or("").to_string()
    }

    pub async fn source(&self) -> String {
        self.cmd("GET", "/source", Value::Null).await.as_str().unwrap_or("").to_string()
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({})).await;
        self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": text })).await;
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), json!({})).await;
    }

    /// The text of the page's body as a person reads it ("" while the page
    /// is being replaced: a form was just sent).
    pub async fn text(&self) -> String {
        let path = format!("/session/{}/element", self.session);
        let body = json!({"using": "css selector", "value": "body"});
        let Ok(v) = self.call("POST", &path, Some(&body)).await else { return String::new() };
        let Some(e) = v[ELEMENT].as_str() else { return String::new() };
        let path = format!("/session/{}/element/{e}/text", self.session);
        match self.call("GET", &path, None).await {
            Ok(v) => v.as_str().unwrap_or("").to_string(),
            Err(_) => String::new(),
        }
    }

    /// Runs `script` in the page (as a test tool, not as the page: the
    /// page's CSP forbids inline script).
    pub async fn run(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": script, "args": []})).await
    }

    pub async fn accept_dialog(&self) -> String {
        let text = self.cmd("GET", "/alert/text", Value::Null).await.as_str().unwrap_or("").to_string();
        self.cmd("POST", "/alert/accept", json!({})).await;
        text
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", Value::Null).await.as_array().cloned().unwrap_or_default()
    }

    /// The browser's console messages (CSP violations show here).
    pub async fn log(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", json!({"type": "browser"})).await.as_array().cloned().unwrap_or_default()
    }

    pub async fn screenshot(&self, to: &Path) {
        let b64 = self.cmd("GET", "/screenshot", Value::Null).await;
        let png = data_encoding::BASE64.decode(b64.as_str().unwrap_or("").as_bytes()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    /// Waits (up to 30 s) until the page's text contains `what`, without reloading.
    pub async fn wait_text(&self, what: &str) -> String {
        self.wait_for(what, |t| t.contains(what)).await
    }

    /// Waits (up to 30 s) until `ok` holds for the page's text, without reloading.
    pub async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        for _ in 0..300 {
            let t = self.text().await;
            if ok(&t) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {what}:\n{}", self.text().await)
    }
}
