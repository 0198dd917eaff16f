//! Real processes on port 0 with real TLS: PKI per test, relays and agents as
//! `tether` child processes, services in-process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tether::client::{ClientSession, Profile, RelayEntry};
use tether::proto::{Frame, FrameIo, Grant, GrantSigner, SessionId, SignedGrant, VERSION};
use tether::tls::pki::{self, Ca, Validity};
use tether::util::now_secs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_tether");
pub const DEVICE: &str = "dev-1";

pub use crate::traffic::*;

/// A child process killed (by its own pid) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status (within `secs`).
    pub async fn term_and_wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.exit_within(secs).await
    }

    /// Its exit status, once it exits (within `secs`).
    pub async fn exit_within(&mut self, secs: u64) -> std::process::ExitStatus {
        within(secs, async {
            loop {
                if let Some(s) = self.child.try_wait().unwrap() {
                    break s;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct RelayProc {
    pub name: String,
    pub proc: Proc,
    pub control: SocketAddr,
    pub data: SocketAddr,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub audit: PathBuf,
    /// The twin-link listener, when twins are configured.
    pub twin: Option<SocketAddr>,
    /// Agents' and specialists' QUIC (UDP), when the relay serves QUIC.
    pub quic_agents: Option<SocketAddr>,
    pub quic_clients: Option<SocketAddr>,
    /// The threads its runtime runs on, as its start line says.
    pub threads: usize,
}

impl RelayProc {
    /// relay-a as an agent's config names it, at `at` (all its TCP ports),
    /// for a test that plays the relay itself: no process behind it.
    pub fn stand_in(at: SocketAddr, dir: &Path) -> RelayProc {
        RelayProc {
            name: "relay-a".into(),
            proc: Proc { child: std::process::Command::new("true").spawn().unwrap() },
            control: at,
            data: at,
            client: at,
            admin: at,
            audit: dir.join("none"),
            twin: None,
            quic_agents: None,
            quic_clients: None,
            threads: 0,
        }
    }
}

pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    pub signer: GrantSigner,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        pki::init_dir(&dir, &[DEVICE]).unwrap();
        let ca = Ca::load(&dir).unwrap();
        let signer = pki::load_grant_signer(&dir.join("grant.key")).unwrap();
        Pki { dir, ca, signer }
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
    pub fn device_cert(&self, id: &str, v: Validity) -> (PathBuf, PathBuf, Vec<u8>) {
        let issued = self.ca.issue_device(id, v).unwrap();
        let name = format!("{id}-{}", hex::encode(&issued.serial[..4]));
        issued.write(&self.dir, &name).unwrap();
        (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")), issued.serial)
    }
}

#[derive(Clone)]
pub struct Opts {
    pub consent: &'static str,
    pub relays: usize,
    pub crl: Option<PathBuf>,
    pub handshake_timeout_ms: u64,
    pub consent_timeout_secs: u64,
    pub extra_services: Vec<(String, String)>,
    pub agent: bool,
    /// Issue a device cert for this id and revoke it in the relays' CRL.
    pub revoke: Option<&'static str>,
    /// Relays accept raw-TCP legs (the default); false: TLS legs only.
    pub raw_legs: bool,
    /// With two relays: link them as twins.
    pub twins: bool,
    /// Seconds a broken connection may take to resume (agent and client).
    pub resume_deadline_secs: u64,
    /// Start a hub (SQLite in the test folder) that the relays report to.
    pub hub: bool,
    /// Extra top-level lines for hub.toml.
    pub hub_extra: &'static str,
    /// Extra lines for the relays' `[limits]`.
    pub relay_limits: &'static str,
    /// The relays' `limits.heartbeat_secs` (what they tell agents).
    pub heartbeat_secs: u32,
    /// The hub serves a signed repository (dev keys in `repo-keys/`, as
    /// `tether dev`), and the agent trusts its root and fetches from it.
    pub repo: bool,
    /// The agent's download cap in bytes per second (0: none).
    pub download_rate: u64,
    /// The agent's and the profile's `transport`: `tcp` (the default here,
    /// so that most tests cover the TCP legs), `quic` or `auto`.
    pub transport: &'static str,
    /// The agent's `quic_reprobe_secs`.
    pub quic_reprobe_secs: u64,
    /// Extra top-level lines for the relays' config.
    pub relay_top: &'static str,
    /// Extra lines for the relays' `[hub]` (with `hub`).
    pub relay_hub: &'static str,
    /// A CRL file (empty at first; [`Fleet::revoke`] rewrites it) named by
    /// the relays, the agent and the hub.
    pub crl_all: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            consent: "auto",
            relays: 1,
            crl: None,
            handshake_timeout_ms: 5000,
            consent_timeout_secs: 60,
            extra_services: vec![],
            agent: true,
            revoke: None,
            raw_legs: true,
            twins: false,
            resume_deadline_secs: 30,
            hub: false,
            hub_extra: "",
            relay_limits: "",
            heartbeat_secs: 30,
            repo: false,
            download_rate: 0,
            transport: "tcp",
            quic_reprobe_secs: 300,
            relay_top: "",
            relay_hub: "",
            crl_all: false,
        }
    }
}

pub struct HubProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub config: PathBuf,
}

impl HubProc {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub pki: Pki,
    pub relays: Vec<RelayProc>,
    pub agent: Option<Proc>,
    pub agent_cfg: PathBuf,
    pub echo: SocketAddr,
    pub stop: CancellationToken,
    /// Cert and key revoked by the CRL, when `Opts::revoke` was set.
    pub revoked: Option<(PathBuf, PathBuf)>,
    /// With twins: `links[i]` carries what relay i sends its twin.
    pub links: Vec<CutProxy>,
    pub hub: Option<HubProc>,
    /// The profile's transport (`Opts::transport`).
    pub transport: tether::quic::Transport,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
}

/// A free loopback port, for the twin links and the hub (each must be known
/// before the process that binds it starts). Taken below the kernel's
/// ephemeral range (32768 and up): a port from port 0 can be taken by any
/// outgoing connection of a parallel test before the process binds it (a
/// hub once failed to start that way in CI).
pub fn free_port() -> SocketAddr {
    for _ in 0..1000 {
        let r = tether::random_bytes::<2>();
        let port = 20_000 + u16::from_be_bytes(r) % 12_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port in 20000..32000")
}

/// `(twin name, twin's link address, our link address)`.
pub type TwinPlan = Option<(String, SocketAddr, SocketAddr)>;

pub fn start_relay(dir: &Path, pki: &Pki, name: &str, opts: &Opts, twin: TwinPlan) -> RelayProc {
    start_relay_with(dir, pki, name, opts, twin, None)
}

pub fn start_relay_with(
    dir: &Path,
    pki: &Pki,
    name: &str,
    opts: &Opts,
    twin: TwinPlan,
    hub: Option<SocketAddr>,
) -> RelayProc {
    let mut crl = opts.crl.as_ref().map(|c| format!("crl = \"{}\"\n", c.display())).unwrap_or_default();
    if let Some((twin, addr, listen)) = twin {
        // Top-level keys must precede the tables: put the twin table at the end.
        crl = format!(
            "{crl}\n[twin]\nname = \"{twin}\"\naddr = \"{addr}\"\nserver_name = \"localhost\"\nlisten = \"{listen}\"\n"
        );
    }
    let audit = dir.join(format!("{name}-audit.jsonl"));
    let cfg = format!(
        "name = \"{name}\"\ncontrol = \"127.0.0.1:0\"\ndata = \"127.0.0.1:0\"\nclient = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         ca = \"{ca}\"\ncert = \"{d}/{name}.pem\"\nkey = \"{d}/{name}.key\"\ngrant_public_key = \"{d}/grant.pub\"\n\
         audit_log = \"{audit}\"\nraw_legs = {raw}\n{top}\n{crl}\n[limits]\nhandshake_timeout_ms = {hs}\nheartbeat_secs = {hb}\npairing_timeout_ms = 5000\ndecision_timeout_secs = 120\ndrain_secs = 1\n{extra}\n{hub}",
        extra = opts.relay_limits,
        top = opts.relay_top,
        hub = hub
            .map(|a| format!("\n[hub]\nurl = \"https://{a}\"\nserver_name = \"localhost\"\n{}\n", opts.relay_hub))
            .unwrap_or_default(),
        ca = pki.path("ca.pem").display(),
        d = pki.dir.display(),
        audit = audit.display(),
        hs = opts.handshake_timeout_ms,
        hb = opts.heartbeat_secs,
        raw = opts.raw_legs,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(log_file(dir, name))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(
        line.contains("threads="),
        "{name} did not start: {line:?}\n{}",
        std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
    );
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .parse()
            .unwrap()
    };
    RelayProc {
        name: name.into(),
        twin: line.split_whitespace().find_map(|w| w.strip_prefix("twin=")).map(|a| a.parse().unwrap()),
        quic_agents: line.split_whitespace().find_map(|w| w.strip_prefix("quic-agents=")).map(|a| a.parse().unwrap()),
        quic_clients: line.split_whitespace().find_map(|w| w.strip_prefix("quic-clients=")).map(|a| a.parse().unwrap()),
        threads: line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("threads="))
            .unwrap_or_else(|| panic!("no threads in {line:?}"))
            .parse()
            .unwrap(),
        control: field("control"),
        data: field("data"),
        client: field("client"),
        admin: field("admin"),
        audit,
        proc: Proc { child },
    }
}

/// Writes an agent config for `relays` and returns its path.
pub fn write_agent_config(
    dir: &Path,
    pki: &Pki,
    relays: &[&RelayProc],
    echo: SocketAddr,
    opts: &Opts,
    cert: (&Path, &Path),
) -> PathBuf {
    let mut cfg = format!(
        "device = \"{DEVICE}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ngrant_public_key = \"{}\"\nconsent = \"{}\"\n\
         consent_timeout_secs = {}\nheartbeat_secs = 30\nresume_deadline_secs = {}\noperator_socket = \"{}\"\naudit_log = \"{}\"\n\
         transport = \"{}\"\nquic_reprobe_secs = {}\n",
        pki.path("ca.pem").display(),
        cert.0.display(),
        cert.1.display(),
        pki.path("grant.pub").display(),
        opts.consent,
        opts.consent_timeout_secs,
        opts.resume_deadline_secs,
        dir.join("agent.sock").display(),
        dir.join("agent-audit.jsonl").display(),
        opts.transport,
        opts.quic_reprobe_secs,
    );
    if let (true, Some(crl)) = (opts.crl_all, &opts.crl) {
        cfg += &format!("crl = \"{}\"\n", crl.display());
    }
    for r in relays {
        cfg += &format!(
            "\n[[relays]]\nname = \"{}\"\ncontrol = \"{}\"\ndata = \"{}\"\nserver_name = \"localhost\"\n",
            r.name, r.control, r.data
        );
    }
    cfg += &format!("\n[services.echo]\ntarget = \"{echo}\"\n");
    for (name, target) in &opts.extra_services {
        cfg += &format!("\n[services.{name}]\ntarget = \"{target}\"\n");
    }
    cfg += "\n[checks.hello]\ncommand = \"echo hello from the device\"\n\n[checks.fails]\ncommand = \"echo broken >&2; exit 3\"\n";
    cfg += "\n[checks.big]\ncommand = \"yes x | head -c 100000\"\n";
    // Output that would rewrite a terminal (clear the screen, return the cursor).
    cfg += "\n[checks.screen]\ncommand = \"printf 'before\\\\033[2J\\\\rafter\\\\n'\"\n";
    if opts.repo {
        // The root as shipped with the device (the hub's copy moves on).
        std::fs::copy(dir.join("repo/metadata/root.json"), dir.join("device-root.json")).unwrap();
        cfg += &format!(
            "\n[repo]\nroot = \"{}\"\nstate_dir = \"{}\"\nmax_download_bytes_per_sec = {}\n",
            dir.join("device-root.json").display(),
            dir.join("agent-state").display(),
            opts.download_rate
        );
        // Upload sets: `logs` (the default cap), `tiny` (the same folder,
        // capped at 1000 bytes) and `bulk` (over the hub's 32 MiB cap).
        let (logs, bulk) = (dir.join("device-logs"), dir.join("bulk"));
        cfg += &format!(
            "\n[uploads.logs]\npaths = [\"{l}\"]\n\n[uploads.tiny]\npaths = [\"{l}\"]\nmax_bytes = 1000\n\n\
             [uploads.bulk]\npaths = [\"{b}\"]\nmax_bytes = 1073741824\n",
            l = logs.display(),
            b = bulk.display()
        );
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Writes hub.toml (SQLite in `dir` unless `extra` sets `database`) and starts the hub on `addr`.
pub fn start_hub(dir: &Path, pki: &Pki, addr: SocketAddr, relays: &[RelayProc], extra: &str) -> HubProc {
    // SQLite in `dir`, unless `extra` names another database.
    let sqlite = if extra.contains("database = ") { "" } else { "database = \"sqlite:hub.db\"\n" };
    let mut cfg = format!(
        "listen = \"{addr}\"\nca = \"{ca}\"\ncert = \"{d}/hub.pem\"\nkey = \"{d}/hub.key\"\ngrant_signing_key = \"{d}/grant.key\"\n\
         {sqlite}{extra}\n[service_roles]\necho = \"viewer\"\n",
        ca = pki.path("ca.pem").display(),
        d = pki.dir.display(),
    );
    for r in relays {
        cfg += &format!("\n[[relays]]\nname = \"{}\"\naddr = \"{}\"\nserver_name = \"localhost\"\n", r.name, r.client);
    }
    let config = dir.join("hub.toml");
    std::fs::write(&config, cfg).unwrap();
    let child = spawn_hub(dir, &config, "hub");
    HubProc { proc: Proc { child }, addr, config }
}

/// Starts `tether hub --config CONFIG` (log `LOG.log` in `dir`) and waits for its "listening" line.
fn spawn_hub(dir: &Path, config: &Path, log: &str) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["hub", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(log_file(dir, log))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let log = || std::fs::read_to_string(dir.join(format!("{log}.log"))).unwrap_or_default();
    assert!(line.starts_with("hub listening"), "hub did not start: {line:?}\n{}", log());
    child
}

pub fn start_agent(dir: &Path, cfg: &Path) -> Proc {
    let child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log_file(dir, "agent"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    Proc { child }
}

impl Fleet {
    pub async fn start(mut opts: Opts) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let pki = Pki::new(&dir);
        let mut revoked = None;
        if opts.crl_all {
            let crl = dir.join("crl.pem");
            std::fs::write(&crl, pki.ca.crl(&[]).unwrap()).unwrap();
            opts.crl = Some(crl);
        }
        if let Some(id) = opts.revoke {
            let (cert, key, serial) = pki.device_cert(id, Validity::days(30));
            let crl = dir.join("crl.pem");
            std::fs::write(&crl, pki.ca.crl(&[serial]).unwrap()).unwrap();
            opts.crl = Some(crl);
            revoked = Some((cert, key));
        }
        let names = ["relay-a", "relay-b"];
        // Each twin dials the other through a forwarder the harness holds (no
        // port race; tests can also cut it); the twins listen on port 0.
        let twins = opts.twins && opts.relays == 2;
        let links = if twins { vec![CutProxy::start(None).await, CutProxy::start(None).await] } else { vec![] };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let plan = |i: usize| -> TwinPlan { twins.then(|| (names[1 - i].to_string(), links[i].addr, any)) };
        // The relays must know the hub's address before it starts (it needs theirs).
        let hub_addr = opts.hub.then(free_port);
        let relays: Vec<_> =
            (0..opts.relays).map(|i| start_relay_with(&dir, &pki, names[i], &opts, plan(i), hub_addr)).collect();
        let hub_extra = if opts.repo {
            tether::dev::dev_repository(&dir).unwrap();
            format!(
                "{}\n[repo]\ndir = \"repo\"\nsnapshot_key = \"repo-keys/snapshot.pem\"\ntimestamp_key = \"repo-keys/timestamp.pem\"\n\n\
                 [uploads]\ndir = \"uploads\"\nmax_bytes = 33554432\n",
                opts.hub_extra
            )
        } else {
            opts.hub_extra.to_string()
        };
        let hub_extra = match (opts.crl_all, &opts.crl) {
            (true, Some(crl)) => format!("crl = \"{}\"\n{hub_extra}", crl.display()),
            _ => hub_extra,
        };
        let hub = hub_addr.map(|a| start_hub(&dir, &pki, a, &relays, &hub_extra));
        if twins {
            links[0].set_target(relays[1].twin.expect("relay-b twin listener"));
            links[1].set_target(relays[0].twin.expect("relay-a twin listener"));
        }
        let stop = CancellationToken::new();
        let echo_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = echo_l.local_addr().unwrap();
        tokio::spawn(tether::dev::echo_server(echo_l, stop.clone()));
        let cert = (pki.path(&format!("{DEVICE}.pem")), pki.path(&format!("{DEVICE}.key")));
        let refs: Vec<&RelayProc> = relays.iter().collect();
        let agent_cfg = write_agent_config(&dir, &pki, &refs, echo, &opts, (&cert.0, &cert.1));
        let transport = tether::quic::Transport::parse(opts.transport).expect("auto, quic or tcp");
        let mut fleet = Fleet { tmp, pki, relays, agent: None, agent_cfg, echo, stop, revoked, links, hub, transport };
        if opts.agent {
            fleet.agent = Some(start_agent(&dir, &fleet.agent_cfg));
            for i in 0..fleet.relays.len() {
                fleet.wait_metric(i, "tether_relay_agents_attached", 1.0).await;
            }
        }
        fleet
    }

    /// Rewrites the fleet's CRL (`crl_all`) to revoke the certificates of `pems`.
    pub fn revoke(&self, pems: &[PathBuf]) {
        let serials: Vec<Vec<u8>> = pems
            .iter()
            .flat_map(|p| tether::tls::load_certs(p).unwrap())
            .map(|c| tether::tls::serial_of(&c).unwrap())
            .collect();
        let crl = self.dir().join("crl.pem");
        let tmp = self.dir().join("crl.pem.new");
        std::fs::write(&tmp, self.pki.ca.crl(&serials).unwrap()).unwrap();
        std::fs::rename(&tmp, &crl).unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn profile(&self) -> Profile {
        Profile {
            specialist: "alice".into(),
            role: "engineer".into(),
            ca: self.pki.path("ca.pem"),
            hub: None,
            path: None,
            grant_signing_key: Some(self.pki.path("grant.key")),
            grant_ttl_secs: 60,
            repo_targets_key: None,
            resume_buffer_bytes: 8 << 20,
            resume_deadline_secs: 30,
            transport: self.transport,
            relays: self
                .relays
                .iter()
                .map(|r| RelayEntry {
                    name: r.name.clone(),
                    addr: r.client.to_string(),
                    server_name: Some("localhost".into()),
                })
                .collect(),
        }
    }

    pub async fn session(&self, service: &str) -> Arc<ClientSession> {
        within(30, ClientSession::open(&self.profile(), DEVICE, service)).await.unwrap()
    }

    /// A new session to `echo`, one connection through it, and `msg` back.
    pub async fn echo_through_new_session(&self, msg: &[u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let session = self.session("echo").await;
        let mut conn = within(30, session.connect()).await.unwrap();
        conn.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within(30, conn.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg);
    }

    pub fn grant(&self, f: impl FnOnce(&mut Grant)) -> SignedGrant {
        let now = now_secs();
        let mut g = Grant {
            session: SessionId::random(),
            device: DEVICE.into(),
            services: vec!["echo".into()],
            specialist: "alice".into(),
            role: "engineer".into(),
            client_key: tether::stream::e2e::ClientKey::generate().unwrap().public_key().to_vec().into(),
            relays: vec!["relay-a".into(), "relay-b".into()],
            issued_at: now,
            expires_at: now + 60,
            consent: false,
            reason: String::new(),
        };
        f(&mut g);
        self.pki.signer.sign(&g)
    }

    /// Opens a raw client leg to relay `i` and sends `first`; returns the answer.
    pub async fn client_exchange(&self, i: usize, first: Frame) -> Frame {
        let tls = tether::tls::client_config(&self.pki.path("ca.pem"), None, tether::tls::ALPN_CLIENT).unwrap();
        let conn = tether::tls::dial(&self.relays[i].client.to_string(), "localhost", tls).await.unwrap();
        let mut io = FrameIo::new(conn);
        io.write_frame(&first).await.unwrap();
        within(30, io.read_frame()).await.unwrap()
    }

    pub async fn open_raw(&self, i: usize, grant: SignedGrant, service: &str) -> Frame {
        self.client_exchange(i, Frame::ClientOpen { version: VERSION, grant, service: service.into() }).await
    }

    pub async fn metrics(&self, i: usize) -> String {
        http_get(self.relays[i].admin, "/metrics").await
    }

    /// Sum of every sample of metric `name` whose labels contain all of `labels`.
    pub async fn metric(&self, i: usize, name: &str, labels: &[&str]) -> f64 {
        parse_metric(&self.metrics(i).await, name, labels)
    }

    /// Waits until every relay's twin link is up both ways.
    pub async fn wait_twin_links(&self) {
        for i in 0..self.relays.len() {
            eventually("twin links up", async || {
                self.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0
                    && self.metric(i, "tether_twin_link_up", &["direction=\"out\""]).await == 1.0
            })
            .await;
        }
    }

    pub async fn wait_metric(&self, i: usize, name: &str, want: f64) {
        for _ in 0..200 {
            if self.metric(i, name, &[]).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} on relay {i} never reached {want}: {}", self.metric(i, name, &[]).await);
    }

    pub fn relay_audit(&self, i: usize) -> Vec<Value> {
        tether::audit::read_all(&self.relays[i].audit)
    }

    pub fn agent_audit(&self) -> Vec<Value> {
        tether::audit::read_all(&self.dir().join("agent-audit.jsonl"))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("agent.sock")
    }
}

impl Fleet {
    /// Restarts relay `i` in place: same ports (pinned on first restart), same
    /// twin, fresh state (as after a crash).
    pub fn restart_relay(&mut self, i: usize) {
        let log = log_file(self.dir(), &format!("{}-restarted", self.relays[i].name));
        self.restart_relay_logging_to(i, log);
    }

    /// [`Fleet::restart_relay`], its log going to `stderr`.
    pub fn restart_relay_logging_to(&mut self, i: usize, stderr: Stdio) -> &mut Child {
        let name = self.relays[i].name.clone();
        let cfg = self.dir().join(format!("{name}.toml"));
        let r = &self.relays[i];
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen("control = \"127.0.0.1:0\"", &format!("control = \"{}\"", r.control), 1)
            .replacen("data = \"127.0.0.1:0\"", &format!("data = \"{}\"", r.data), 1)
            .replacen("client = \"127.0.0.1:0\"", &format!("client = \"{}\"", r.client), 1)
            .replacen("admin = \"127.0.0.1:0\"", &format!("admin = \"{}\"", r.admin), 1);
        let text = match r.twin {
            Some(t) => text.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{t}\""), 1),
            None => text,
        };
        std::fs::write(&cfg, text).unwrap();
        self.relays[i].proc.kill();
        let child = Command::new(BIN)
            .args(["relay", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.relays[i].proc = Proc { child };
        &mut self.relays[i].proc.child
    }

    /// Stops the hub and starts it again on the same address, config and database.
    pub fn restart_hub(&mut self) {
        self.restart_hub_after(|_| {});
    }

    /// Kills the hub, runs `between` on the fleet's folder (a restore), and
    /// starts the hub again on the same config.
    pub fn restart_hub_after(&mut self, between: impl FnOnce(&Path)) {
        let hub = self.hub.as_mut().expect("a hub");
        hub.proc.kill();
        between(self.tmp.path());
        hub.proc = Proc { child: spawn_hub(self.tmp.path(), &hub.config, "hub-restarted") };
    }

    /// The tail of every log in the fleet's folder (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir()).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("== {}\n{}\n", p.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        out
    }
}
