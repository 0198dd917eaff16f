//! The web console in a real browser (Debian's chromium over chromedriver):
//! sign in with a TOTP code computed here, see the device online, watch a
//! `tether connect` session appear live without a reload, end it as admin
//! and see the tunnel close, read the audit; a wrong code gets the generic
//! error, a form without its CSRF token is refused. Screenshots of every
//! page land in `target/tmp/console/` (look at them).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::hub::{PASSWORD, add_user, code, connect, hub_audit, hub_cli, login, run, token_of};
use crate::jobs::{add_job, jobs_cli};
use crate::webdriver::{Browser, installed};

fn shots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(tools) = installed() else { return };
    let fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, repo: true, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let ada = add_user(&fleet, "ada", "admin", &["st-marys"]).await;
    let eng = add_user(&fleet, "eve", "engineer", &["st-marys"]).await;
    let hub = fleet.hub.as_ref().unwrap();
    let base = hub.url();
    let shots = shots();
    // An API token for reading the hub's audit at the end (this step's
    // code; the browser signs in with the next step's).
    let ada_profile = login(&fleet, "ada", &ada).await;
    let token = token_of(&ada_profile);
    let p = ada_profile.to_str().unwrap();
    let b = Browser::start(&tools, &fleet.pki.dir.join("hub.pem"), &fleet.dir().join("chromedriver.log")).await;

    // Not signed in: the console sends you to the sign-in form.
    b.goto(&format!("{base}/")).await;
    assert!(b.url().await.ends_with("/console/login"), "{}", b.url().await);
    b.screenshot(&shots.join("1-sign-in.png")).await;

    // A wrong code: the generic sentence, nothing about which part was wrong.
    b.type_into("#user", "ada").await;
    b.type_into("#password", PASSWORD).await;
    let wrong = format!("{:06}", (code(&ada, 0).parse::<u32>().unwrap() + 1) % 1_000_000);
    b.type_into("#code", &wrong).await;
    b.click("button[type=submit]").await;
    let t = b.wait_text("wrong user name, password or code").await;
    assert!(!t.contains("bad_code") && b.url().await.ends_with("/console/login"), "{t}");
    b.screenshot(&shots.join("2-wrong-code.png")).await;

    // The right code: a session cookie the page's script cannot read.
    b.type_into("#user", "ada").await;
    b.type_into("#password", PASSWORD).await;
    // From the keyboard: Enter in the code field sends the form.
    b.type_into("#code", &format!("{}\u{E007}", code(&ada, 1))).await;
    b.wait_text("Devices").await;
    assert!(b.url().await.ends_with("/console/devices"), "{}", b.url().await);
    let cookies = b.cookies().await;
    let c = cookies.iter().find(|c| c["name"] == "__Host-tether").unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(
        (&c["httpOnly"], &c["secure"], &c["sameSite"]),
        (&Value::Bool(true), &Value::Bool(true), &Value::from("Strict"))
    );
    assert!(b.run("return document.cookie").await.as_str().unwrap_or("x").is_empty(), "script can read cookies");

    // demo device online on both relays (the page's own refresh shows it).
    let t = b.wait_text("relay-a, relay-b").await;
    assert!(t.contains(DEVICE) && t.contains("online") && t.contains(env!("CARGO_PKG_VERSION")), "{t}");
    b.screenshot(&shots.join("3-devices.png")).await;

    // A session opened with `tether connect` shows up live, without a reload.
    b.goto(&format!("{base}/console/sessions")).await;
    b.wait_text("No live session.").await;
    let profile = login(&fleet, "eve", &eng).await;
    let (mut child, addr, id) = connect(&profile, "echo", "ticket CHG-7: pump alarm").await;
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let data = random(256 * 1024);
    conn.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).await.unwrap();
    assert!(back == data);
    let t = b.wait_text(&id).await;
    assert!(t.contains("eve") && t.contains("live"), "{t}");
    // Bytes arrive with the relay's next full report (every 10 s): at least
    // the 256 KiB sent each way (plus the tunnel's framing).
    let kib = |t: &str, arrow: &str| -> f64 {
        let row = t.lines().find(|l| l.contains(&id)).unwrap_or("");
        let words: Vec<&str> = row.split_whitespace().collect();
        words.windows(3).find(|w| w[1] == "KiB" && w[2] == arrow).and_then(|w| w[0].parse().ok()).unwrap_or(0.0)
    };
    b.wait_for("256 KiB each way", |t| kib(t, "↓") >= 256.0 && kib(t, "↑") >= 256.0).await;
    b.screenshot(&shots.join("4-sessions-live.png")).await;

    // The admin ends it: confirm, and the tunnel closes.
    b.click(&format!("tr[data-session=\"{id}\"] button")).await;
    assert!(b.accept_dialog().await.contains(&id));
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stayed open after the admin ended the session");
    println!("the tunnel closed {:?} after End was confirmed", t0.elapsed());
    let _ = within(10, child.wait()).await;
    let t = b.wait_text("revoked").await;
    assert!(t.contains("No live session.") && t.contains("by ada"), "{t}");
    b.screenshot(&shots.join("5-sessions-ended.png")).await;

    // The audit: the login, the grant, the end; the hub's chain verified.
    b.goto(&format!("{base}/console/audit")).await;
    let t = b.wait_text("session_revoked").await;
    assert!(t.contains("session_granted") && t.contains("login_failed") && t.contains("verified"), "{t}");
    b.screenshot(&shots.join("6-audit.png")).await;
    b.goto(&format!("{base}/console/audit?event=session_revoked")).await;
    let t = b.wait_text("1 matching").await;
    assert!(t.contains(&id) && !t.contains("session_granted"), "{t}");

    // Software and jobs: a release, a site rollout by batch, a job waiting
    // for the person at the device, cancelled from the console.
    let file = fleet.dir().join("tool.bin");
    std::fs::write(&file, random(100_000)).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let publish = [
        "repo",
        "publish",
        "--profile",
        p,
        "--targets-key",
        key.to_str().unwrap(),
        "tool",
        "1.0",
        file.to_str().unwrap(),
    ];
    let (ok, _, err) = run(&publish, "").await;
    assert!(ok, "{err}");
    let (ok, _, err) = jobs_cli(&["add", "--profile", p, "--site", "st-marys", "run", "hello"]).await;
    assert!(ok, "{err}");
    let waiting = add_job(p, &["--consent", "required", "install", "tool@1.0"]).await;
    b.goto(&format!("{base}/console/jobs")).await;
    let t = b.wait_text("SUCCEEDED").await;
    assert!(t.contains("tool 1.0") || t.contains("tool\n1.0") || t.contains("tool 1.0 package"), "{t}");
    // The check's output is folded under its reason until someone opens it.
    assert!(!t.contains("hello from the device"), "output folded: {t}");
    b.click("tr[data-job] details.output summary").await;
    b.wait_text("hello from the device").await;
    b.wait_text("Batch 1").await;
    b.wait_for("the waiting job", |t| t.contains(&waiting)).await;
    b.screenshot(&shots.join("7-jobs.png")).await;
    b.click(&format!("tr[data-job=\"{waiting}\"] button")).await;
    assert!(b.accept_dialog().await.contains(&waiting));
    b.wait_for("the job cancelled", |t| t.lines().any(|l| l.contains(&waiting) && l.contains("CANCELED"))).await;

    // A device's page, from its row: where it is, its sessions; the admin
    // makes each next session need the approval of the person at it.
    b.goto(&format!("{base}/console/devices")).await;
    b.click(&format!("a[href=\"/console/devices/{DEVICE}\"]")).await;
    let t = b.wait_text("Access policy").await;
    assert!(t.contains("relay-a (tcp), relay-b (tcp)") && t.contains(&id) && t.contains("eve"), "{t}");
    b.run("document.querySelector('#consent').value = 'required'; return 1").await;
    b.click("#policy button").await;
    let t = b.wait_text("Saved: consent auto → required").await;
    assert!(t.contains("sessions already live go on"), "{t}");
    b.screenshot(&shots.join("7b-device-policy.png")).await;
    let list = hub_cli(&fleet, &["device", "list"], "").await;
    assert!(list.lines().any(|l| l.contains(DEVICE) && l.contains("required")), "{list}");
    // Retired there, with a reason and a confirmation; then put back.
    b.type_into("#retire-reason", "scrapped after the flood").await;
    b.click("#retire button").await;
    assert!(b.accept_dialog().await.contains(&format!("Retire {DEVICE}?")));
    let t = b.wait_text("Retired. No session was open.").await;
    assert!(t.contains("by console:ada: scrapped after the flood") && t.contains("Put back in service"), "{t}");
    b.screenshot(&shots.join("7c-device-retired.png")).await;
    b.click("#reinstate button").await;
    assert!(b.accept_dialog().await.contains("back in service"));
    b.wait_text("Back in service").await;

    // Accounts: a form with its CSRF token taken out is refused, and adds nobody.
    b.goto(&format!("{base}/console/accounts")).await;
    b.wait_text("Add an account").await;
    b.type_into("#name", "mallory").await;
    b.type_into("#new-password", "quiet lantern harbour 93 maple").await;
    b.run("document.querySelector('form[action=\"/console/accounts\"] input[name=csrf]').remove(); return 1").await;
    b.click("form[action=\"/console/accounts\"] button").await;
    let t = b.wait_text("CSRF check failed").await;
    assert!(!t.contains("mallory"), "{t}");
    b.screenshot(&shots.join("8-csrf-refused.png")).await;
    let users = hub_cli(&fleet, &["user", "list"], "").await;
    assert!(!users.contains("mallory"), "{users}");

    // A password the policy refuses: said on the page, nobody added.
    b.goto(&format!("{base}/console/accounts")).await;
    b.type_into("#name", "weakling").await;
    b.type_into("#new-password", "password1234").await;
    b.click("form[action=\"/console/accounts\"] button").await;
    let t = b.wait_text("Not added: password refused").await;
    assert!(!t.contains("Enrol weakling"), "{t}");

    // With it: added, and the enrolment QR code shown once.
    b.goto(&format!("{base}/console/accounts")).await;
    b.type_into("#name", "grace").await;
    b.type_into("#new-password", "quiet lantern harbour 93 maple").await;
    b.click("form[action=\"/console/accounts\"] button").await;
    let t = b.wait_text("Enrol grace").await;
    assert!(t.contains("grace") && t.contains("engineer"), "{t}");
    assert!(b.source().await.contains("<svg"), "no QR code");
    b.screenshot(&shots.join("9-accounts-enrol.png")).await;

    // No page broke its own CSP (violations show in the browser's console).
    let log = b.log().await;
    let csp: Vec<&Value> =
        log.iter().filter(|m| m["message"].as_str().unwrap_or("").contains("Content Security Policy")).collect();
    assert!(csp.is_empty(), "CSP violations: {csp:?}");

    // Log out: the cookie's token admits nothing any more.
    b.click(".account button").await;
    b.wait_text("Sign in").await;
    b.goto(&format!("{base}/console/sessions")).await;
    assert!(b.url().await.ends_with("/console/login"));

    // Each refusal and each step is in the hub's audit, with its reason.
    let audit = hub_audit(&fleet, &token).await;
    let has = |event: &str, key: &str, value: &str| audit.iter().any(|r| r["event"] == event && r[key] == value);
    assert!(has("console_refused", "reason", "csrf"), "no CSRF refusal audited");
    assert!(has("login_failed", "via", "console") && has("login", "via", "console") && has("logout", "via", "console"));
    assert!(has("user_added", "by", "console:ada") && has("session_revoked", "by", "ada"));
    assert!(has("device_changed", "by", "console:ada"), "the policy change is not audited");
    assert!(has("user_add_refused", "user", "weakling"), "a refused account is not audited");
    assert!(audit.iter().any(|r| r["event"] == "job_state" && r["to"] == "CANCELED" && r["job"] == waiting.as_str()));
}

/// One request over a fresh TLS connection; returns the whole answer as text.
pub async fn raw(fleet: &Fleet, head: &str, body: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let addr = fleet.hub.as_ref().unwrap().url().trim_start_matches("https://").to_string();
    let cfg = tether::tls::client_config(&fleet.pki.path("ca.pem"), None, tether::tls::ALPN_HTTP1).unwrap();
    let mut s = tether::tls::dial(&addr, "localhost", cfg).await.unwrap();
    let req = format!("{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = within(10, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(answer: &'a str, name: &str) -> Vec<&'a str> {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .filter_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        .collect()
}

/// `name=value` of a Set-Cookie for `name`.
fn cookie_of(answer: &str, name: &str) -> String {
    header(answer, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie {name} in {answer}"))
        .to_string()
}

/// Signs `user` in to the console without a browser (the code of the
/// TOTP step after the current one); returns the session's cookie.
pub async fn console_cookie(fleet: &Fleet, user: &str, secret: &str) -> String {
    let form_page = raw(fleet, "GET /console/login HTTP/1.1", "").await;
    let login_cookie = cookie_of(&form_page, "__Host-tether-login");
    let csrf = form_page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let form = format!("csrf={csrf}&user={user}&password={}&code={}", PASSWORD.replace(' ', "+"), code(secret, 1));
    let head = format!(
        "POST /console/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: {login_cookie}"
    );
    let ok = raw(fleet, &head, &form).await;
    assert!(ok.starts_with("HTTP/1.1 303"), "{ok}");
    cookie_of(&ok, "__Host-tether")
}

/// Without a browser: the headers every page carries, the cookie's flags,
/// a post from another origin or without the login cookie refused, the
/// cookie no bearer token for the API, and the idle timeout ending a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_are_strict_about_origin_cookies_and_idleness() {
    let fleet = crate::hub::hub_fleet("console_idle_secs = 2\n").await;
    let ada = add_user(&fleet, "ada", "admin", &[]).await;
    // An API token to read the audit at the end (this step's code; the
    // console signs in with the next step's).
    let admin = token_of(&login(&fleet, "ada", &ada).await);
    let form_page = raw(&fleet, "GET /console/login HTTP/1.1", "").await;
    assert!(form_page.starts_with("HTTP/1.1 200"), "{form_page}");
    let csp = header(&form_page, "content-security-policy");
    assert!(csp.len() == 1 && csp[0].contains("script-src 'self'") && !csp[0].contains("unsafe"), "{csp:?}");
    assert!(csp[0].contains("frame-ancestors 'none'") && csp[0].contains("form-action 'self'"));
    assert_eq!(header(&form_page, "x-frame-options"), ["DENY"]);
    assert_eq!(header(&form_page, "x-content-type-options"), ["nosniff"]);
    assert_eq!(header(&form_page, "cache-control"), ["no-store"]);
    assert!(!form_page.contains("<script>") && !form_page.contains(" style=") && !form_page.contains(" onclick"));
    let login_cookie = cookie_of(&form_page, "__Host-tether-login");
    let csrf = form_page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert_eq!(login_cookie, format!("__Host-tether-login={csrf}"));
    let form = |code: &str| format!("csrf={csrf}&user=ada&password={}&code={code}", PASSWORD.replace(' ', "+"));
    let post = "POST /console/login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded";

    // From another site: refused before anything is checked.
    let evil = raw(
        &fleet,
        &format!("{post}\r\nCookie: {login_cookie}\r\nOrigin: https://evil.example"),
        &form(&code(&ada, 1)),
    )
    .await;
    assert!(evil.starts_with("HTTP/1.1 403") && evil.contains("another site"), "{evil}");
    // Without the login cookie (a forged cross-site form cannot set it).
    let forged = raw(&fleet, post, &form(&code(&ada, 1))).await;
    assert!(forged.starts_with("HTTP/1.1 403") && forged.contains("CSRF"), "{forged}");

    // Signed in: a host-only, HTTPS-only cookie no script reads.
    let ok = raw(&fleet, &format!("{post}\r\nCookie: {login_cookie}"), &form(&code(&ada, 1))).await;
    assert!(ok.starts_with("HTTP/1.1 303") && header(&ok, "location") == ["/console/devices"], "{ok}");
    let set = header(&ok, "set-cookie").into_iter().find(|c| c.starts_with("__Host-tether=")).unwrap().to_string();
    for flag in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(flag), "{set} lacks {flag}");
    }
    let session = cookie_of(&ok, "__Host-tether");
    let page = raw(&fleet, &format!("GET /console/devices HTTP/1.1\r\nCookie: {session}"), "").await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("ada"), "{page}");

    // The cookie's token is no API token.
    let token = session.trim_start_matches("__Host-tether=");
    let api = raw(&fleet, &format!("GET /api/v1/me HTTP/1.1\r\nAuthorization: Bearer {token}"), "").await;
    assert!(api.starts_with("HTTP/1.1 401"), "{api}");

    // Two idle seconds later the session is over, for good.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = raw(&fleet, &format!("GET /console/devices HTTP/1.1\r\nCookie: {session}"), "").await;
    assert!(late.starts_with("HTTP/1.1 303") && header(&late, "location") == ["/console/login"], "{late}");
    let again = raw(&fleet, &format!("GET /console/devices HTTP/1.1\r\nCookie: {session}"), "").await;
    assert!(again.starts_with("HTTP/1.1 303"), "{again}");

    let audit = hub_audit(&fleet, &admin).await;
    for reason in ["cross_origin", "csrf", "session_idle", "no_session"] {
        assert!(audit.iter().any(|r| r["event"] == "console_refused" && r["reason"] == reason), "{reason} not audited");
    }
    let metrics = String::from_utf8_lossy(
        &crate::hub::hub_client(&fleet).call(hyper::Method::GET, "/metrics", None, None).await.unwrap().1,
    )
    .into_owned();
    for reason in ["cross_origin", "csrf", "session_idle", "no_session"] {
        assert!(parse_metric(&metrics, "tether_hub_refusals_total", &[reason]) >= 1.0, "{reason} not counted");
    }
}

pub async fn device_page(fleet: &Fleet, cookie: &str, device: &str) -> String {
    raw(fleet, &format!("GET /console/devices/{device} HTTP/1.1\r\nCookie: {cookie}"), "").await
}

/// Posts the policy form of `device`'s page with the CSRF token of `page`.
async fn post_policy(fleet: &Fleet, cookie: &str, page: &str, site: &str, consent: &str) -> String {
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let head = format!(
        "POST /console/devices/{DEVICE} HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nCookie: {cookie}"
    );
    raw(fleet, &head, &format!("csrf={csrf}&site={}&consent={consent}", site.replace(' ', "+"))).await
}

/// A device's console page without a browser (the browser test clicks
/// through it): an admin changes the device's consent policy there, audited
/// with what it was, and the next `tether connect` follows it; a bad value
/// is named and changes nothing; a specialist reads the policy but cannot
/// post it, and gets no page for a device on another site (audited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_policy_changes_on_its_console_page_for_admins_only() {
    let (fleet, profile) = crate::consent::hub_consent_fleet("auto", "auto").await;
    hub_cli(&fleet, &["device", "add", "INJ-9", "--site", "st-judes"], "").await;
    let ada = add_user(&fleet, "ada", "admin", &[]).await;
    let sam = add_user(&fleet, "sam", "engineer", &["st-marys"]).await;
    let token = token_of(&login(&fleet, "ada", &ada).await);
    let admin = console_cookie(&fleet, "ada", &ada).await;

    let page = device_page(&fleet, &admin, DEVICE).await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("id=\"policy\""), "{page}");
    // Its "Now" card reloads itself from the card's own address.
    assert!(page.contains(&format!("data-refresh=\"/console/devices/{DEVICE}?part=now\"")), "{page}");
    let now = device_page(&fleet, &admin, &format!("{DEVICE}?part=now")).await;
    assert!(now.starts_with("HTTP/1.1 200") && now.contains(">online<") && now.contains("relay-a ("), "{now}");
    assert!(!now.contains("<html") && !now.contains("Access policy"), "the card's facts alone: {now}");
    assert!(page.contains("<option value=\"auto\" selected>") && page.contains("value=\"st-marys\""), "{page}");
    let saved = post_policy(&fleet, &admin, &page, "st-marys", "required").await;
    assert!(saved.starts_with("HTTP/1.1 200") && saved.contains("Saved: consent auto → required"), "{saved}");
    assert!(saved.contains("<option value=\"required\" selected>"), "{saved}");

    // The next session asks the person at the device, as the hub's policy.
    let mut next = crate::consent::Connecting::start(&profile, "ticket CHG-1890");
    eventually("connect says the hub's policy asks the person at the device", async || {
        next.said("the hub's policy").is_some()
    })
    .await;
    let _ = next.child.start_kill();

    // A site name with a space: named, nothing changed; the same values again: nothing to audit.
    let bad = post_policy(&fleet, &admin, &page, "two words", "auto").await;
    assert!(bad.starts_with("HTTP/1.1 400") && bad.contains("Not changed: site"), "{bad}");
    let same = post_policy(&fleet, &admin, &page, "st-marys", "required").await;
    assert!(same.starts_with("HTTP/1.1 200") && same.contains("Nothing changed."), "{same}");
    // A site nobody is entitled to (a typo, say): saved, and said so.
    let typo = post_policy(&fleet, &admin, &page, "st-mary", "required").await;
    assert!(
        typo.contains("Saved: site st-marys → st-mary") && typo.contains("No account is entitled to site st-mary"),
        "{typo}"
    );
    let back = post_policy(&fleet, &admin, &page, "st-marys", "required").await;
    assert!(back.contains("Saved: site st-mary → st-marys") && !back.contains("No account is entitled"), "{back}");

    // A specialist: the policy to read, no form; a post refused; no page
    // for a device on another site, told like one that does not exist.
    let engineer = console_cookie(&fleet, "sam", &sam).await;
    let theirs = device_page(&fleet, &engineer, DEVICE).await;
    assert!(theirs.starts_with("HTTP/1.1 200") && theirs.contains("An admin changes it"), "{theirs}");
    assert!(!theirs.contains("id=\"policy\"") && theirs.contains("required: the person at the device"), "{theirs}");
    let refused = post_policy(&fleet, &engineer, &theirs, "st-marys", "auto").await;
    assert!(refused.starts_with("HTTP/1.1 403") && refused.contains("needs the admin role"), "{refused}");
    let other = device_page(&fleet, &engineer, "INJ-9").await;
    let none = device_page(&fleet, &engineer, "INJ-404").await;
    for (answer, id) in [(&other, "INJ-9"), (&none, "INJ-404")] {
        assert!(
            answer.starts_with("HTTP/1.1 404") && answer.contains(&format!("no device {id} on your sites")),
            "{answer}"
        );
    }

    let list = hub_cli(&fleet, &["device", "list"], "").await;
    assert!(
        list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [DEVICE, "st-marys", "required"]),
        "{list}"
    );
    let audit = hub_audit(&fleet, &token).await;
    let changed: Vec<&Value> = audit.iter().filter(|r| r["event"] == "device_changed").collect();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert_eq!(
        (&changed[0]["by"], &changed[0]["consent"], &changed[0]["was"]["consent"]),
        (&Value::from("console:ada"), &Value::from("required"), &Value::from("auto"))
    );
    let has = |event: &str, reason: &str, key: &str, value: &str| {
        audit.iter().any(|r| r["event"] == event && r["reason"] == reason && r[key] == value)
    };
    assert!(has("device_set_refused", "bad_policy", "site", "two words"), "a refused change is not audited");
    assert!(has("admin_refused", "not_admin", "action", "device_set"), "the specialist's post is not audited");
    assert!(has("console_refused", "not_entitled", "device", "INJ-9"), "the other site's device is not audited");
    assert!(
        !has("console_refused", "not_entitled", "device", "INJ-404"),
        "a device that does not exist is no entitlement refusal"
    );
    let metrics = String::from_utf8_lossy(
        &crate::hub::hub_client(&fleet).call(hyper::Method::GET, "/metrics", None, None).await.unwrap().1,
    )
    .into_owned();
    for reason in ["bad_policy", "not_admin", "not_entitled"] {
        assert!(parse_metric(&metrics, "tether_hub_refusals_total", &[reason]) >= 1.0, "{reason} not counted");
    }
}
