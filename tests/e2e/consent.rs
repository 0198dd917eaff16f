//! On-site consent: nothing reaches the device's service before approval;
//! denial and timeout reach the specialist as named errors.
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether::agent::operator::{Request, request};
use tether::client::ClientSession;
use tether::proto::Reason;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

async fn consent_fleet(timeout_secs: u64) -> (Fleet, CountingService) {
    let svc = CountingService::start(CancellationToken::new()).await;
    let opts = Opts {
        consent: "required",
        consent_timeout_secs: timeout_secs,
        extra_services: vec![("svc".into(), svc.addr.to_string())],
        ..Opts::default()
    };
    (Fleet::start(opts).await, svc)
}

async fn pending_session(fleet: &Fleet) -> String {
    let mut id = String::new();
    eventually("the request is pending at the device", async || {
        let ans = request(&fleet.socket(), &Request::Pending).await.unwrap();
        match ans["pending"].as_array().and_then(|p| p.first()) {
            Some(p) => {
                id = p["session"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    })
    .await;
    id
}

fn operator_cli(fleet: &Fleet, verb: &str, id: &str) -> std::process::Output {
    Command::new(BIN).args(["agent", "--config"]).arg(&fleet.agent_cfg).args([verb, id]).output().unwrap()
}

/// Asks for `svc`; the request must still wait, with nothing sent to the
/// service, `wait` after it is pending at the device. Then approves it and
/// sends `msg` through the admitted session. Returns the session id.
async fn waits_then_approved(fleet: &Fleet, svc: &CountingService, wait: Duration, msg: &[u8]) -> String {
    let profile = fleet.profile();
    let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
    let id = pending_session(fleet).await;
    tokio::time::sleep(wait).await;
    if opening.is_finished() {
        let err = opening.await.unwrap().err().map(|e| e.to_string());
        panic!("the request did not wait for the person on site: {err:?}");
    }
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0, "the service was contacted before approval");

    let out = operator_cli(fleet, "approve", &id);
    assert!(out.status.success(), "approve failed: {}", String::from_utf8_lossy(&out.stderr));
    let session = opening.await.unwrap().expect("admitted after approval");
    let mut t = within(30, session.connect()).await.unwrap();
    t.write_all(msg).await.unwrap();
    t.flush().await.unwrap();
    eventually("bytes reach the service after approval", async || svc.bytes.load(Ordering::SeqCst) == msg.len() as u64)
        .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_reaches_the_service_before_approval() {
    let (fleet, svc) = consent_fleet(60).await;
    let id = waits_then_approved(&fleet, &svc, Duration::from_millis(300), b"after approval").await;
    let audit = fleet.agent_audit();
    assert!(audit.iter().any(|r| r["event"] == "consent_requested" && r["session"] == id.as_str()));
    assert!(audit.iter().any(|r| r["event"] == "consent_given" && r["session"] == id.as_str()));
}

/// A device waiting for the person on site tells its relay at once, so the
/// relay does not take it for silent (`agent_silent`) however long the
/// person takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_the_person_on_site_is_not_taken_for_a_silent_device() {
    let (fleet, svc) = consent_fleet(60).await;
    // Past the relay's wait for a first sign of life (5 s).
    waits_then_approved(&fleet, &svc, Duration::from_secs(7), b"approved late").await;
    assert_eq!(fleet.metric(0, "tether_relay_grant_refusals_total", &["agent_silent"]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_gives_the_client_the_named_error() {
    let (fleet, svc) = consent_fleet(60).await;
    let profile = fleet.profile();
    let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
    let id = pending_session(&fleet).await;
    assert!(operator_cli(&fleet, "deny", &id).status.success());
    let err = opening.await.unwrap().err().expect("denied");
    assert_eq!(err.reason(), Some(Reason::ConsentDenied), "{err}");
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0);
    assert!(audited(&fleet.agent_audit(), "access_refused", "consent_denied"));
    assert!(audited(&fleet.relay_audit(0), "client_refused", "consent_denied"));
    assert_eq!(fleet.metric(0, "tether_relay_grant_refusals_total", &["consent_denied"]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answering_times_out_with_its_reason() {
    let (fleet, _svc) = consent_fleet(1).await;
    let err = ClientSession::open(&fleet.profile(), DEVICE, "svc").await.err().expect("timed out");
    assert_eq!(err.reason(), Some(Reason::ConsentTimedOut), "{err}");
    assert!(audited(&fleet.agent_audit(), "access_refused", "consent_timed_out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ends_a_live_session() {
    let fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let _t = within(30, session.connect()).await.unwrap();
    let out = operator_cli(&fleet, "end", &session.id.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), session.ended()).await.unwrap();
    assert_eq!(reason, Reason::EndedOnSite);
    // The client may hear the end before the relay's audit line is written.
    eventually("the relay audits the end on site", async || {
        audited(&fleet.relay_audit(0), "session_end", "ended_on_site")
    })
    .await;
}

/// Our own tmux server (`-L`), apart from any other; killed when dropped.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        tmux(&self.0, &["kill-server"]);
    }
}

/// Runs `tmux -L SOCKET ARGS` (our own tmux server, apart from any other).
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux").arg("-L").arg(socket).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The person at the device, in a real terminal (tmux): readable tables, and
/// `pending --watch` asking yes or no for each request as it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_at_the_device_answers_at_a_prompt_and_reads_tables() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("CI").is_err(), "tmux is not installed but CI must run this test");
        eprintln!("SKIPPED: tmux is not installed (apt-get install -y tmux)");
        return;
    }
    let (fleet, svc) = consent_fleet(60).await;
    let cfg = fleet.agent_cfg.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new(BIN).args(["agent", "--config", &cfg]).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["pending"]), "Nothing is waiting for your consent.\n");
    assert_eq!(cli(&["sessions"]), "No live session.\n");

    let socket = format!("tether-test-{}-{}", std::process::id(), hex::encode(tether::random_bytes::<4>()));
    let watch = format!("{BIN} agent --config {cfg} pending --watch");
    let _server = Tmux(socket.clone());
    tmux(&socket, &["new-session", "-d", "-s", "site", "-x", "160", "-y", "50", &watch]);
    let screen = || tmux(&socket, &["capture-pane", "-p", "-t", "site"]);
    let result = async {
        eventually("the watch starts", async || screen().contains("Watching for requests")).await;
        // A request: shown in the table and at the prompt; "y" lets it in.
        let profile = fleet.profile();
        let opening = tokio::spawn(async move {
            let source = tether::client::GrantSource::from_profile(&profile, Some("CHG-7: pump alarm"))?;
            ClientSession::open_with(&profile, &source, DEVICE, "svc").await
        });
        eventually("the prompt asks", async || screen().contains("Approve? [y]es / [n]o")).await;
        let shown = screen();
        assert!(shown.contains("specialist  alice (engineer)") && shown.contains("service     svc"), "{shown}");
        assert!(shown.contains("reason      CHG-7: pump alarm"), "{shown}");
        let table = cli(&["pending"]);
        assert!(table.starts_with("Access requests waiting for your consent:\nSESSION"), "{table}");
        assert!(table.contains("alice (engineer)") && table.contains("svc") && table.contains("relay-a"), "{table}");
        assert!(table.contains("CHG-7: pump alarm"), "{table}");
        tmux(&socket, &["send-keys", "-t", "site", "maybe", "Enter"]);
        eventually("an unclear answer is asked again", async || screen().contains("Please answer y or n.")).await;
        tmux(&socket, &["send-keys", "-t", "site", "y", "Enter"]);
        let session = within(30, opening).await.unwrap().expect("admitted after y at the prompt");
        eventually("the terminal says so", async || screen().contains("Approved: the session opens now.")).await;
        let mut t = within(30, session.connect()).await.unwrap();
        t.write_all(b"on site").await.unwrap();
        t.flush().await.unwrap();
        eventually("bytes reach the service", async || svc.bytes.load(Ordering::SeqCst) == 7).await;
        let live = cli(&["sessions"]);
        assert!(
            live.starts_with("SESSION") && live.contains(&session.id.to_string()) && live.contains("alice"),
            "{live}"
        );

        // The next request: "n" refuses it, by name at the specialist.
        let profile = fleet.profile();
        let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
        eventually("the next prompt", async || screen().matches("Approve? [y]es / [n]o").count() == 3).await;
        tmux(&socket, &["send-keys", "-t", "site", "n", "Enter"]);
        let err = within(30, opening).await.unwrap().err().expect("denied at the prompt");
        assert_eq!(err.reason(), Some(Reason::ConsentDenied), "{err}");
        eventually("the terminal says so", async || screen().contains("Denied: the specialist is told so.")).await;
        // Scripts still get JSON.
        let json: serde_json::Value = serde_json::from_str(&cli(&["sessions", "--json"])).unwrap();
        assert_eq!(json["sessions"].as_array().unwrap().len(), 1);
        let audit = fleet.agent_audit();
        assert!(audit.iter().any(|r| r["event"] == "consent_given"));
        assert!(audit.iter().any(|r| r["event"] == "consent_denied"));
        drop(t);
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(120), result).await;
    let last = screen();
    std::fs::write(fleet.dir().join("site-terminal.txt"), &last).unwrap();
    if std::env::var_os("TETHER_SHOW_TERMINAL").is_some() {
        eprintln!("{last}");
    }
    outcome.unwrap_or_else(|_| panic!("not done within 120 s; the terminal showed:\n{last}"));
}

/// `tether connect` as a process; its stderr lines are kept as they come,
/// with the time each came after the start.
pub(crate) struct Connecting {
    pub(crate) child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<(Duration, String)>>>,
}

impl Connecting {
    pub(crate) fn start(profile: &std::path::Path, reason: &str) -> Connecting {
        Self::start_with(profile, reason, &[])
    }

    /// [`Connecting::start`] with more arguments for `connect`.
    fn start_with(profile: &std::path::Path, reason: &str, more: &[&str]) -> Connecting {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(BIN)
            .args(["connect", "--profile", profile.to_str().unwrap(), DEVICE, "echo", "--listen", "127.0.0.1:0"])
            .args(["--reason", reason])
            .args(more)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr: std::sync::Arc<std::sync::Mutex<Vec<(Duration, String)>>> = Default::default();
        let (kept, start) = (stderr.clone(), std::time::Instant::now());
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                kept.lock().unwrap().push((start.elapsed(), l));
            }
        });
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Connecting { child, stdout, stderr }
    }

    /// The first stderr line containing `text`, and when it came.
    pub(crate) fn said(&self, text: &str) -> Option<(Duration, String)> {
        self.stderr.lock().unwrap().iter().find(|(_, l)| l.contains(text)).cloned()
    }

    /// The session id from "session ID ready: …".
    async fn ready(&mut self) -> String {
        self.ready_at().await.0
    }

    /// The session id and the local address from "session ID ready: ADDR -> …".
    async fn ready_at(&mut self) -> (String, String) {
        let line = within(30, self.stdout.next_line()).await.unwrap().expect("connect printed nothing");
        assert!(line.contains(" ready: "), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        (words[1].to_string(), words[3].to_string())
    }
}

/// A hub fleet whose device is registered with `hub_consent`; the agent's
/// own policy is `device_consent`. Returns it and a logged-in profile.
pub(crate) async fn hub_consent_fleet(hub_consent: &str, device_consent: &'static str) -> (Fleet, std::path::PathBuf) {
    let opts = Opts {
        relays: 2,
        twins: true,
        hub: true,
        consent: device_consent,
        consent_timeout_secs: 60,
        ..Opts::default()
    };
    let fleet = Fleet::start(opts).await;
    crate::hub::hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", hub_consent], "").await;
    let eve = crate::hub::add_user(&fleet, "eve", "engineer", &["st-marys"]).await;
    let profile = crate::hub::login(&fleet, "eve", &eve).await;
    eventually("the device online at the hub", async || {
        let out = crate::hub::run(&["devices", "--profile", profile.to_str().unwrap(), "--json"], "").await;
        out.1.contains("online")
    })
    .await;
    (fleet, profile)
}

fn agent_pending(fleet: &Fleet) -> serde_json::Value {
    let out = Command::new(BIN).arg("agent").arg("--config").arg(&fleet.agent_cfg).args(["pending", "--json"]).output();
    let out = out.unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
}

/// Through the hub: the reason and ticket the specialist gave `tether
/// connect` reach the person at the device inside the signed grant, and the
/// session opens once they approve. `connect` tells the specialist at once
/// that the hub's policy asks the person at the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_signs_the_reason_into_the_grant_and_the_device_shows_it() {
    let (fleet, profile) = hub_consent_fleet("required", "auto").await;
    let cfg = fleet.agent_cfg.to_str().unwrap().to_string();
    let mut connecting = Connecting::start(&profile, "pressure fault, ticket CHG-1881");
    eventually("the request waits at the device", async || {
        agent_pending(&fleet)["pending"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    let p = agent_pending(&fleet)["pending"][0].clone();
    assert_eq!(p["reason"], "pressure fault, ticket CHG-1881", "{p}");
    let table = Command::new(BIN).args(["agent", "--config", &cfg, "pending"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("REASON") && table.contains("pressure fault, ticket CHG-1881"), "{table}");
    let told = "needs the approval of the person at the device (the hub's policy)";
    eventually("connect says whom it waits for", async || connecting.said(told).is_some()).await;
    let id = p["session"].as_str().unwrap();
    let ok = Command::new(BIN).args(["agent", "--config", &cfg, "approve", id]).output().unwrap();
    assert!(ok.status.success());
    assert_eq!(connecting.ready().await, id);
    let _ = connecting.child.start_kill();
}

/// When only the device's own policy asks the person at it (the hub's says
/// auto), `tether connect` cannot know it at once: it says so once the
/// device, up, has not decided past the relay's 5 s limit for a silent
/// device, and again at 30 s, 60 s, …; approval then opens the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_says_what_a_request_waits_for_when_the_device_asks_its_person() {
    let (fleet, profile) = hub_consent_fleet("auto", "required").await;
    let mut connecting = Connecting::start(&profile, "ticket CHG-1882");
    eventually("the request waits at the device", async || {
        agent_pending(&fleet)["pending"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    let told = "has not decided after 6 s: it may be asking the person at the device to approve";
    eventually("connect says what it waits for", async || connecting.said(told).is_some()).await;
    let (at, _) = connecting.said(told).unwrap();
    let (asked, _) = connecting.said(&format!("asking {DEVICE} for echo...")).expect("the first line");
    assert!(at >= asked + Duration::from_secs(5), "said after {at:?}, asked at {asked:?}: before the relay's limit");
    assert!(connecting.said("the hub's policy").is_none(), "the hub's policy is auto");
    let id = agent_pending(&fleet)["pending"][0]["session"].as_str().unwrap().to_string();
    assert!(operator_cli(&fleet, "approve", &id).status.success());
    assert_eq!(connecting.ready().await, id);
    let _ = connecting.child.start_kill();
}

/// The hub's administrator changes a device's consent policy and site with
/// `tether hub device set`: the next grant follows it (the person at the
/// device is asked; a specialist of the old site is no longer entitled),
/// the change is audited with what it was, and a mistake is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_consent_policy_and_site_change_for_the_next_session() {
    use crate::hub::{hub_cli, run};
    let (fleet, profile) = hub_consent_fleet("auto", "auto").await;
    let cfg = fleet.hub.as_ref().unwrap().config.to_str().unwrap().to_string();
    let list = hub_cli(&fleet, &["device", "list"], "").await;
    let row = |list: &str| list.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>();
    assert_eq!(row(&list), ["DEVICE SITE CONSENT".to_string(), format!("{DEVICE} st-marys auto")], "{list}");

    // Auto: admitted without anyone at the device.
    let mut first = Connecting::start(&profile, "ticket CHG-1883");
    first.ready().await;
    let _ = first.child.start_kill();

    let out = hub_cli(&fleet, &["device", "set", DEVICE, "--consent", "required"], "").await;
    assert!(out.contains("site st-marys, consent required (was site st-marys, consent auto)"), "{out}");
    let mut second = Connecting::start(&profile, "ticket CHG-1884");
    eventually("the next request waits for the person at the device", async || {
        agent_pending(&fleet)["pending"].as_array().is_some_and(|p| !p.is_empty())
    })
    .await;
    eventually("connect says so", async || second.said("the hub's policy").is_some()).await;
    let id = agent_pending(&fleet)["pending"][0]["session"].as_str().unwrap().to_string();
    assert!(operator_cli(&fleet, "approve", &id).status.success());
    assert_eq!(second.ready().await, id);
    let _ = second.child.start_kill();

    // Moved to a site eve is not entitled to: her next grant is refused.
    hub_cli(&fleet, &["device", "set", DEVICE, "--site", "st-judes"], "").await;
    let refused = run(
        &["connect", "--profile", profile.to_str().unwrap(), DEVICE, "echo", "--reason", "CHG-1885", "--wait", "0"],
        "",
    )
    .await;
    assert!(!refused.0 && refused.2.contains("not entitled"), "{refused:?}");

    // Mistakes are named, and change nothing.
    let unknown = run(&["hub", "--config", &cfg, "device", "set", "INJ-404", "--consent", "auto"], "").await;
    assert!(!unknown.0 && unknown.2.contains("no device \"INJ-404\""), "{unknown:?}");
    let nothing = run(&["hub", "--config", &cfg, "device", "set", DEVICE], "").await;
    assert!(!nothing.0 && nothing.2.contains("nothing to change"), "{nothing:?}");
    let list = hub_cli(&fleet, &["device", "list"], "").await;
    assert_eq!(row(&list)[1], format!("{DEVICE} st-judes required"), "{list}");

    let boss = crate::hub::add_user(&fleet, "boss", "admin", &[]).await;
    let token = crate::hub::token_of(&crate::hub::login(&fleet, "boss", &boss).await);
    let audit = crate::hub::hub_audit(&fleet, &token).await;
    let changes: Vec<_> = audit.iter().filter(|r| r["event"] == "device_changed").collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["device"], DEVICE);
    assert_eq!((&changes[0]["consent"], &changes[0]["was"]["consent"]), (&"required".into(), &"auto".into()));
    assert_eq!((&changes[1]["site"], &changes[1]["was"]["site"]), (&"st-judes".into(), &"st-marys".into()));
}

/// A relay that freezes (SIGSTOP: no FIN, no RST) while a request waits for
/// the person at the device: over TCP its `Waiting` frames stop (its kernel
/// keeps the connection open) and after 20 s `connect` says so; over QUIC the
/// connection's idle timeout ends it. Either way `connect` asks the twin with
/// a new grant (the frozen relay used the first one up, and the twin knows
/// it), the new request replaces the first in the person's list (the same
/// client key: the same attempt), the person approves it, and the session
/// carries bytes. Before, a client over TCP waited for the frozen relay
/// until Ctrl-C, and one over QUIC was refused by the twin as reusing its
/// grant.
async fn freeze_while_waiting(transport: &str) {
    let (fleet, profile) = hub_consent_fleet("required", "auto").await;
    let mut c = Connecting::start_with(&profile, "ticket CHG-1891", &["--transport", transport]);
    let pending = async || agent_pending(&fleet)["pending"].as_array().cloned().unwrap_or_default();
    eventually("the request waits for the person at the device", async || pending().await.len() == 1).await;
    let first = pending().await[0].clone();
    let via = first["relay"].as_str().unwrap().to_string();
    let (victim, twin) = if via == "relay-a" { (0, "relay-b") } else { (1, "relay-a") };
    let pid = fleet.relays[victim].proc.pid();
    crate::failover::signal(pid, "-STOP");
    let frozen = std::time::Instant::now();
    let moved = within(60, async {
        loop {
            if let Some((_, line)) = c.said(&format!("asking {twin}")) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    println!("over {transport}, connect moved to {twin} {:?} after {via} froze: {moved}", frozen.elapsed());
    assert!(moved.contains(&format!("{via} did not answer")), "{moved}");
    if transport == "tcp" {
        assert!(moved.contains("went silent for 20 s"), "{moved}");
    }
    eventually("a new request, through the twin", async || pending().await.iter().any(|p| p["relay"] == twin)).await;
    // It replaces the first in the person's list: one request to approve.
    let now = pending().await;
    assert_eq!(now.len(), 1, "{now:?}");
    let id = now[0]["session"].as_str().unwrap().to_string();
    let old = first["session"].as_str().unwrap();
    assert_ne!(id, old, "the twin was asked with the used grant");
    let audit = fleet.agent_audit();
    assert!(
        audit.iter().any(|r| r["event"] == "consent_superseded" && r["session"] == old && r["by"] == id.as_str()),
        "the replaced request is not audited"
    );
    assert!(operator_cli(&fleet, "approve", &id).status.success());
    let (ready, addr) = c.ready_at().await;
    assert_eq!(ready, id);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"after the freeze").await.unwrap();
    let mut back = [0u8; 16];
    within(10, tokio::io::AsyncReadExt::read_exact(&mut conn, &mut back)).await.unwrap();
    assert_eq!(&back, b"after the freeze");
    crate::failover::signal(pid, "-CONT");
    let _ = c.child.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_at_a_relay_that_freezes_moves_to_its_twin_over_tcp() {
    freeze_while_waiting("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_at_a_relay_that_freezes_moves_to_its_twin_over_quic() {
    freeze_while_waiting("quic").await;
}

/// `Waiting` frames go only to a client that negotiated them, over TCP and
/// QUIC: one offering `tether-client/2` (`tether-client-quic/2`) gets one at
/// once and one every 5 s while the person at the device decides, then the
/// answer; a client of the version before (`/1` only) gets the answer as its
/// first frame, as it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_frames_go_only_to_clients_that_negotiated_them() {
    use tether::proto::{Frame, FrameIo, VERSION};
    use tether::quic::{Dialler, connect, open_leg};
    use tether::tls::{
        ALPN_CLIENT, ALPN_CLIENT_WAITS, ALPN_QUIC_CLIENT, ALPN_QUIC_CLIENT_WAITS, client_config, client_offering, dial,
        quic_client_config,
    };
    let (fleet, _svc) = consent_fleet(60).await;
    let ca = fleet.pki.path("ca.pem");
    let relay = fleet.relays[0].client.to_string();
    for (quic, newer) in [(false, true), (false, false), (true, true), (true, false)] {
        let (io, _conn): (FrameIo<tether::leg::Leg>, _) = if quic {
            let plain = quic_client_config(&ca, None, None, ALPN_QUIC_CLIENT).unwrap();
            let tls = if newer { client_offering(plain, &[ALPN_QUIC_CLIENT_WAITS, ALPN_QUIC_CLIENT]) } else { plain };
            let c = connect(&relay, "localhost", tls, (Duration::from_secs(10), Dialler::Session)).await.unwrap();
            (FrameIo::new(Box::new(open_leg(&c).await.unwrap())), Some(c))
        } else {
            let plain = client_config(&ca, None, ALPN_CLIENT).unwrap();
            let tls = if newer { client_offering(plain, &[ALPN_CLIENT_WAITS, ALPN_CLIENT]) } else { plain };
            let conn = dial(&relay, "localhost", tls).await.unwrap();
            let negotiated = conn.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(negotiated.as_deref(), Some(if newer { ALPN_CLIENT_WAITS } else { ALPN_CLIENT }));
            (FrameIo::new(Box::new(conn)), None)
        };
        let mut io = io;
        let open = Frame::ClientOpen { version: VERSION, grant: fleet.grant(|_| {}), service: "echo".into() };
        io.write_frame(&open).await.unwrap();
        let id = pending_session(&fleet).await;
        let case = format!("quic {quic}, newer {newer}");
        if newer {
            assert_eq!(within(5, io.read_frame()).await.unwrap(), Frame::Waiting { secs: 0 }, "{case}");
            assert_eq!(within(10, io.read_frame()).await.unwrap(), Frame::Waiting { secs: 5 }, "{case}");
        } else {
            // Past the first beat's time: an older client must have heard nothing.
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        assert!(operator_cli(&fleet, "approve", &id).status.success());
        loop {
            match within(10, io.read_frame()).await.unwrap() {
                Frame::Waiting { .. } if newer => {}
                Frame::SessionReady { session, .. } => break assert_eq!(session.to_string(), id, "{case}"),
                other => panic!("{case}: {other:?}"),
            }
        }
    }
}
