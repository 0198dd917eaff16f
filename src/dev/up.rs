//! `tether dev up`: start the parts, wait until the system is really up,
//! then supervise: a part that dies is reported and restarted.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{DEV_DEVICE, DEV_USER, ECHO_ADDR, HUB_ADDR, Signals};

/// Echoes every byte back, on every accepted connection, until `stop`.
pub async fn echo_server(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (mut s, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

fn spawn(dir: &Path, args: &[&str]) -> Result<Child> {
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C at the terminal reaches `tether
        // dev` alone, which stops the parts in order (`stop_all`).
        .process_group(0)
        // ...so a `kill -9` of dev would leave them running: each stops by
        // itself once dev is gone.
        .env(super::STOP_WITH_PARENT, std::process::id().to_string())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting tether {}", args.join(" ")))
}

fn pretty(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

/// The output of whichever future finishes first.
async fn first_of<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        futs.iter_mut()
            .find_map(|f| match std::pin::Pin::new(f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
            .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
    })
    .await
}

/// Until the hub serves: it listens before its database is open, and
/// relays that report to it meanwhile would be told 503.
async fn wait_serving(dir: &Path) -> Result<()> {
    let hub = crate::api::HubClient::new(&format!("https://{HUB_ADDR}"), &dir.join("pki/ca.pem"), None, None)?;
    for _ in 0..100 {
        if let Ok((status, _)) = hub.call(hyper::Method::GET, "/api/v1/healthz", None, None).await
            && status.is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the hub did not serve on {HUB_ADDR} within 10 s")
}

async fn wait_ready(admin: &str) -> Result<()> {
    for _ in 0..100 {
        if let Ok((status, _)) = crate::util::http::get(admin, "/readyz").await
            && status.is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("relay admin {admin} did not become ready within 10 s")
}

/// One supervised child of `tether dev`.
struct Part {
    name: &'static str,
    args: &'static [&'static str],
    child: Child,
    /// Kept apart: the child forgets its pid once it has been waited for.
    pid: u32,
    started: std::time::Instant,
    /// Pause before the next restart (doubles while it keeps failing fast).
    backoff: crate::util::Backoff,
}

impl Part {
    fn start(dir: &Path, name: &'static str, args: &'static [&'static str]) -> Result<Part> {
        let backoff = crate::util::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let child = spawn(dir, args)?;
        Ok(Part { name, args, pid: child.id().unwrap_or(0), child, started: std::time::Instant::now(), backoff })
    }

    fn pid(&self) -> String {
        self.pid.to_string()
    }
}

/// How a child ended, in words.
fn how(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(9)) => "was killed (SIGKILL)".into(),
            (_, Some(15)) => "was stopped (SIGTERM)".into(),
            (_, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("ended: {s}"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// Starts the hub, both relays and the agent, waits until the hub lists the
/// dev device online on both relays, then supervises: a part that exits is
/// reported and restarted after a short back-off while the rest keep running.
/// `signals.stop` (Ctrl-C) stops them all, in order; `signals.hurry` (a
/// second Ctrl-C) kills what is left.
pub async fn up(dir: &Path, signals: Signals) -> Result<()> {
    let stop = signals.stop.clone();
    if !dir.join("agent.toml").exists() {
        bail!("{} holds no dev setup; run `tether dev init --dir {}` first", dir.display(), dir.display());
    }
    if !dir.join("hub.toml").exists() {
        bail!("{} predates the hub: remove it and run `tether dev` again", dir.display());
    }
    let echo =
        TcpListener::bind(ECHO_ADDR).await.with_context(|| format!("binding the echo service on {ECHO_ADDR}"))?;
    tokio::spawn(echo_server(echo, stop.clone()));
    let mut parts = vec![Part::start(dir, "hub", &["hub", "--config", "hub.toml"])?];
    let result = async {
        wait_serving(dir).await?;
        parts.push(Part::start(dir, "relay-a", &["relay", "--config", "relay-a.toml"])?);
        parts.push(Part::start(dir, "relay-b", &["relay", "--config", "relay-b.toml"])?);
        for admin in ["127.0.0.1:17090", "127.0.0.2:17090"] {
            wait_ready(admin).await?;
        }
        parts.push(Part::start(dir, "agent", &["agent", "--config", "agent.toml"])?);
        wait_online(&dir.join("client.toml"), &["relay-a", "relay-b"]).await
    };
    let started = tokio::select! {
        r = result => r,
        _ = stop.cancelled() => Ok(()),
    };
    if started.is_ok() && !stop.is_cancelled() {
        print_up(dir, &parts);
        supervise(dir, &mut parts, &stop).await;
    }
    stop_all(&mut parts, &signals.hurry).await;
    stop.cancel();
    started
}

fn print_up(dir: &Path, parts: &[Part]) {
    let p = pretty(&dir.join("client.toml"));
    let pid = |name: &str| parts.iter().find(|x| x.name == name).map(Part::pid).unwrap_or_default();
    let pids: Vec<String> = parts.iter().map(|x| format!("{} {}", x.name, x.pid())).collect();
    println!(
        "\ntether dev is up: hub https://{HUB_ADDR}, relay-a 127.0.0.1, relay-b 127.0.0.2, agent {DEV_DEVICE} \
         online on both relays, echo service on {ECHO_ADDR}.\npids: {}",
        pids.join(", ")
    );
    println!(
        "In another terminal, run:\n\n    tether devices --profile {p}\n    \
         tether connect --profile {p} {DEV_DEVICE} echo --listen 127.0.0.1:7000\n\n\
         then e.g. `nc 127.0.0.1 7000`; `tether sessions --profile {p}` lists sessions.\n\
         Try failover: kill -9 {} (relay-a); the session moves to relay-b and relay-a is restarted.\n\
         Maintenance jobs: `tether jobs add --profile {p} --device {DEV_DEVICE} upload logs` (or `run disk`),\n\
         `tether jobs list --profile {p}`, then `tether uploads get --profile {p} JOB-ID --out device-logs`\n\
         (docs/fleet.md walks through publishing and installing software).\n\
         Web console: https://{HUB_ADDR}/console/ (dev certificate: the browser warns once), user {DEV_USER},\n\
         password in {}, code from `tether dev code`.\n\
         Ctrl-C stops everything.\n",
        pid("relay-a"),
        pretty(&dir.join("dev-login/password")),
    );
}

/// One line to stderr in a single write: the parts log to the same stderr,
/// and `eprintln!` writes a formatted line in pieces that their lines can
/// land between.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Restarts whichever part exits, until `stop`.
async fn supervise(dir: &Path, parts: &mut [Part], stop: &CancellationToken) {
    loop {
        let waits = parts.iter_mut().enumerate().map(|(i, p)| Box::pin(async move { (i, p.child.wait().await) }));
        let (i, status) = tokio::select! {
            _ = stop.cancelled() => return,
            r = first_of(waits.collect()) => r,
        };
        let part = &mut parts[i];
        if part.started.elapsed() > Duration::from_secs(30) {
            part.backoff.reset();
        }
        let pause = part.backoff.next_pause();
        say(&format!("{} (pid {}) {}; restarting it in {pause:?}", part.name, part.pid(), how(status)));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        match spawn(dir, part.args) {
            Ok(child) => {
                part.pid = child.id().unwrap_or(0);
                part.child = child;
                part.started = std::time::Instant::now();
                say(&format!("{} restarted (pid {})", part.name, part.pid()));
            }
            Err(e) => say(&format!("cannot restart {}: {e:#}", part.name)),
        }
    }
}

/// How long one part may take to stop: a relay drains (up to 2 s), then sends
/// the hub one last report of how its sessions ended (up to 3 s).
const STOP_WAIT: Duration = Duration::from_secs(6);

/// SIGTERM to each part in the reverse of the order they started (the agent,
/// the relays, then the hub, which so receives the relays' last reports:
/// stopped all at once, those found the hub gone and the sessions' records
/// were left to its `lost` rule), each waited for; SIGKILL to a part still
/// running after [`STOP_WAIT`], or at once after `hurry`: `tether dev` never
/// leaves a part running behind it.
async fn stop_all(parts: &mut [Part], hurry: &CancellationToken) {
    if parts.len() > 1 {
        say("stopping the agent, then the relays, then the hub (Ctrl-C again kills them at once)");
    }
    for p in parts.iter_mut().rev() {
        if let Some(pid) = p.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let ended = tokio::select! {
            r = tokio::time::timeout(STOP_WAIT, p.child.wait()) => r.is_ok(),
            _ = hurry.cancelled() => false,
        };
        if !ended {
            if !hurry.is_cancelled() {
                say(&format!("{} (pid {}) did not stop within {STOP_WAIT:?}; killing it", p.name, p.pid()));
            }
            let _ = p.child.start_kill();
            let _ = p.child.wait().await;
        }
    }
}

/// Waits until the hub lists the dev device online on every relay of `relays`.
async fn wait_online(profile: &Path, relays: &[&str]) -> Result<()> {
    let p = crate::client::Profile::open(profile)?;
    let hub = crate::client::hub::HubSession::from_profile(&p)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = String::from("no answer from the hub");
    while tokio::time::Instant::now() < deadline {
        match hub.get::<Vec<crate::api::DeviceView>>("/api/v1/devices").await {
            Ok(list) => {
                let d = list.iter().find(|d| d.id == DEV_DEVICE);
                if d.is_some_and(|d| relays.iter().all(|r| d.relays.iter().any(|x| x == r))) {
                    return Ok(());
                }
                seen = d.map(|d| format!("{} on [{}]", d.status, d.relays.join(","))).unwrap_or("unknown".into());
            }
            Err(e) => seen = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{DEV_DEVICE} did not come online on {} within 30 s (last seen: {seen})", relays.join(" and "))
}
