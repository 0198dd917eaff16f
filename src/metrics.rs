//! One Prometheus registry; every metric name is defined here.
use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Every collector registered, also kept here: families with no labelled
/// child yet are still listed (HELP and TYPE) by [`render`].
static COLLECTORS: LazyLock<std::sync::Mutex<Vec<Box<dyn prometheus::core::Collector>>>> =
    LazyLock::new(Default::default);

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registering the same name twice is a programming error caught by tests.
    REGISTRY.register(Box::new(c.clone())).expect("metric registered once");
    crate::util::lock(&COLLECTORS).push(Box::new(c.clone()));
    c
}

/// `# HELP` and `# TYPE` of the families without a sample yet (a counter by
/// reason before the first refusal), so that every name is in every scrape.
fn empty_families(part: Option<Part>) -> String {
    use prometheus::proto::MetricType;
    let mut out = String::new();
    for c in crate::util::lock(&COLLECTORS).iter() {
        for mf in c.collect().iter().filter(|mf| mf.get_metric().is_empty() && !foreign(part, mf.name())) {
            let kind = match mf.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            };
            let help = mf.help().replace('\\', "\\\\").replace('\n', "\\n");
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n", name = mf.name());
        }
    }
    out
}

fn fgauge(name: &str, help: &str) -> prometheus::Gauge {
    reg(prometheus::Gauge::new(name, help).expect("valid metric"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    reg(IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    reg(IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

macro_rules! metric {
    ($vis:vis $name:ident: $ty:ty = $init:expr) => {
        $vis static $name: LazyLock<$ty> = LazyLock::new(|| $init);
    };
}

// Relay.
metric!(pub RELAY_AGENTS_ATTACHED: IntGauge = gauge("tether_relay_agents_attached", "Agents with a live control channel to this relay"));
metric!(pub RELAY_CONTROL_CHANNELS: IntGaugeVec = gauge_vec("tether_relay_control_channels", "Live agent control channels, by relay name", &["relay"]));
metric!(pub RELAY_SESSIONS_ACTIVE: IntGauge = gauge("tether_relay_sessions_active", "Sessions admitted and not yet ended"));
metric!(pub RELAY_SESSIONS_ENDED: IntCounterVec = counter_vec("tether_relay_sessions_ended_total", "Sessions ended, by outcome", &["outcome"]));
metric!(pub RELAY_TUNNELS_ACTIVE: IntGauge = gauge("tether_relay_tunnels_active", "Tunnelled connections being spliced"));
metric!(pub RELAY_TUNNELS_TOTAL: IntCounter = counter("tether_relay_tunnels_total", "Tunnelled connections paired"));
metric!(pub RELAY_TUNNELS_QUIC_CHUNKS: IntCounter = counter("tether_relay_tunnels_quic_chunks_total", "Tunnelled connections whose bytes moved as QUIC chunks, without a copy (both legs QUIC streams)"));
metric!(pub RELAY_BYTES: IntCounterVec = counter_vec("tether_relay_bytes_total", "Payload bytes spliced, by direction", &["direction"]));
metric!(pub RELAY_OPEN: IntGaugeVec = gauge_vec("tether_relay_open_connections", "Connections open, authenticated or not, by listener (bounded by max_connections in all)", &["listener"]));
metric!(pub RELAY_PENDING: IntGaugeVec = gauge_vec("tether_relay_pending_connections", "Connections accepted and not yet authenticated, by listener (each holds a handshake slot)", &["listener"]));
metric!(pub PEERS_REVOKED: IntCounterVec = counter_vec("tether_peers_revoked_total", "Live connections dropped because a reloaded CRL revokes the peer's certificate, by the peer's role", &["role"]));
metric!(pub CRL_RELOADS: IntCounterVec = counter_vec("tether_crl_reloads_total", "CRL reloads, by outcome (loaded, failed)", &["outcome"]));
metric!(pub RELAY_HANDSHAKE_FAILURES: IntCounterVec = counter_vec("tether_relay_handshake_failures_total", "TLS handshakes that failed, by listener and reason", &["listener", "reason"]));
metric!(pub RELAY_GRANT_REFUSALS: IntCounterVec = counter_vec("tether_relay_grant_refusals_total", "Client legs refused, by reason", &["reason"]));
metric!(pub RELAY_LEG_REFUSALS: IntCounterVec = counter_vec("tether_relay_leg_refusals_total", "Data legs and joins refused, by reason", &["reason"]));
metric!(pub RELAY_RETIRED_DEVICES: IntGauge = gauge("tether_relay_retired_devices", "Devices the hub retired, as its last list said (their channels are dropped and refused)"));
metric!(pub RELAY_AGENTS_DROPPED: IntCounterVec = counter_vec("tether_relay_agents_dropped_total", "Attached agents' control channels dropped at the hub's word, by reason (device_retired)", &["reason"]));
metric!(pub RELAY_FRAME_ERRORS: IntCounterVec = counter_vec("tether_relay_frame_errors_total", "Connections dropped for a bad frame, by listener and reason", &["listener", "reason"]));
metric!(pub RELAY_CONNECTIONS_REFUSED: IntCounterVec = counter_vec("tether_relay_connections_refused_total", "Connections refused before the handshake, by listener and reason", &["listener", "reason"]));
metric!(pub RELAY_PAIRING_SECONDS: Histogram = reg(Histogram::with_opts(
    HistogramOpts::new("tether_relay_pairing_seconds", "Time from a client leg's join to its paired data leg")
        .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
).expect("valid metric")));
metric!(pub RELAY_RESIDENT_MEMORY: IntGauge = gauge("tether_relay_resident_memory_bytes", "Resident memory of the relay process (read at scrape)"));
metric!(pub PROCESS_RESIDENT_MEMORY: IntGauge = gauge("tether_process_resident_memory_bytes", "Resident memory of the process (read at scrape)"));
metric!(pub PROCESS_CPU: prometheus::Gauge = fgauge("tether_process_cpu_seconds", "CPU time (user and system) the process has used, in seconds (read at scrape)"));

metric!(pub GRANT_KEYS: IntGauge = gauge("tether_grant_keys", "Grant-verifying keys in force (2 during a rollover of the hub's grant key), relay and agent"));

// Every role with an audit log (relay, agent).
metric!(pub AUDIT_WRITE_ERRORS: IntCounter = counter("tether_audit_write_errors_total", "Writes of the audit log that failed (a full or failing disk); the records stay held in memory"));
metric!(pub AUDIT_HELD: IntGauge = gauge("tether_audit_held_records", "Audit records chained and not yet on disk (held while the disk refuses them)"));
metric!(pub AUDIT_LOST: IntCounter = counter("tether_audit_records_lost_total", "Audit records not kept because 4 MiB of records were already held in memory (the log then records audit_records_lost)"));

// Every role.
metric!(pub TLS_HANDSHAKES: IntCounterVec = counter_vec("tether_tls_handshakes_total", "Completed TLS handshakes, by surface, key exchange group and kind (full, resumed, retry)", &["surface", "group", "kind"]));

// Hub.
metric!(pub HUB_REQUESTS: IntCounterVec = counter_vec("tether_hub_requests_total", "API requests, by route and status", &["route", "status"]));
metric!(pub HUB_LOGIN_FAILURES: IntCounterVec = counter_vec("tether_hub_login_failures_total", "Failed logins, by reason (never told to the peer)", &["reason"]));
metric!(pub RELAY_REPO_REQUESTS: IntCounterVec = counter_vec("tether_relay_repo_requests_total", "Fetch-leg requests forwarded to the hub, by outcome", &["outcome"]));
metric!(pub RELAY_REPO_BYTES: IntCounter = counter("tether_relay_repo_bytes_total", "Repository bytes sent to agents on fetch legs"));
metric!(pub AGENT_REPO_BYTES: IntCounter = counter("tether_agent_repo_bytes_total", "Repository bytes received (metadata and artifacts)"));
metric!(pub AGENT_REPO_RESUMES: IntCounter = counter("tether_agent_repo_resumes_total", "Downloads that went on through another leg after a break"));
metric!(pub AGENT_REPO_REFUSED: IntCounterVec = counter_vec("tether_agent_repo_refused_total", "Metadata or artifacts the agent refused, by reason", &["reason"]));
metric!(pub AGENT_JOBS: IntCounterVec = counter_vec("tether_agent_jobs_total", "Jobs the agent ended, by final state", &["state"]));
metric!(pub AGENT_INSTALL_SECONDS: Histogram = reg(Histogram::with_opts(
    HistogramOpts::new("tether_agent_install_seconds", "Time from a job's start to its install's end (download included)")
        .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]),
).expect("valid metric")));
metric!(pub HUB_JOBS: IntCounterVec = counter_vec("tether_hub_jobs_total", "Job state changes, by the state entered", &["state"]));
metric!(pub RELAY_UPLOAD_BYTES: IntCounter = counter("tether_relay_upload_bytes_total", "Upload bytes forwarded from agents to the hub"));
metric!(pub HUB_ROLLOUTS: IntCounterVec = counter_vec("tether_hub_rollouts_total", "Rollouts ended, by final state", &["state"]));
metric!(pub HUB_UPLOAD_BYTES: IntCounter = counter("tether_hub_upload_bytes_total", "Bytes of device uploads stored whole and verified"));
metric!(pub AGENT_UPLOAD_BYTES: IntCounter = counter("tether_agent_upload_bytes_total", "Upload bytes sent toward the hub (resent ones included)"));
metric!(pub HUB_REPO_PUBLISHED: IntCounter = counter("tether_hub_repo_published_total", "Targets versions the repository took"));
metric!(pub HUB_ANCHOR_REFUSALS: IntCounterVec = counter_vec("tether_hub_anchor_refusals_total", "Audit chain heads the hub refused to anchor, by reason (unsigned, bad_certificate, bad_signature, rollback, fork)", &["reason"]));
metric!(pub HUB_AUDIT_HEADS_STALE: IntCounterVec = counter_vec("tether_hub_audit_heads_stale_total", "Audit chain heads below the anchor from a relay that never delivered a higher one for that chain (it lags behind its twin): not anchored, not refused; by relay", &["relay"]));
metric!(pub HUB_DEVICE_CERTS_EXPIRING: IntGauge = gauge("tether_hub_device_certs_expiring", "Devices whose certificate, as a relay last saw it, expires within 30 days (expired ones included)"));
metric!(pub HUB_CERT_RENEWALS_PENDING: IntGauge = gauge("tether_hub_cert_renewals_pending", "Device certificate renewals waiting for the fleet CA's signature (tether certs renewals --sign)"));
metric!(pub HUB_DEVICES_CLOCK_SKEWED: IntGauge = gauge("tether_hub_devices_clock_skewed", "Online devices whose clock is 30 s or more off from their relay's, either way (their audit times are wrong; 2 min ahead, every grant looks expired to them)"));
metric!(pub AGENT_CLOCK_OFFSET: IntGaugeVec = gauge_vec("tether_agent_clock_offset_seconds", "How far this device's clock is off from each relay's (seconds, device minus relay; positive: ahead), from the last heartbeat answer", &["relay"]));
metric!(pub AGENT_CERT_RENEWALS: IntCounterVec = counter_vec("tether_agent_cert_renewals_total", "Certificate renewal steps of the agent, by outcome (requested, installed, refused, failed)", &["outcome"]));
metric!(pub HUB_REFUSALS: IntCounterVec = counter_vec("tether_hub_refusals_total", "Requests refused, by reason", &["reason"]));
metric!(pub HUB_SESSIONS_GRANTED: IntCounter = counter("tether_hub_sessions_granted_total", "Grants signed"));
metric!(pub HUB_SESSIONS_LOST: IntCounter = counter("tether_hub_sessions_lost_total", "Live sessions recorded as ended because no relay holds them any more"));
metric!(pub HUB_RELAY_REPORTS: IntCounterVec = counter_vec("tether_hub_relay_reports_total", "Reports received, by relay", &["relay"]));
metric!(pub HUB_RELAY_AGENTS: IntGaugeVec = gauge_vec("tether_hub_relay_agents", "Agents attached to each relay as the hub holds its list (routing and presence read it)", &["relay"]));
metric!(pub HUB_HEAD_CERTS: IntCounterVec = counter_vec("tether_hub_head_certs_total", "Device certificates with agents' audit heads in relays' reports, by how each came: whole, by_sha (named by its SHA-256, one the hub kept), wanted (named by one the hub does not keep: it asks the relay for it)", &["came"]));
metric!(pub HUB_REPORT_AGENTS: IntCounterVec = counter_vec("tether_hub_report_agents_total", "Agents in relays' reports, by what each said: seen (attached, or its version, transport, certificate or clock changed), heard (a later heartbeat), gone, whole (in the whole list an older relay sends)", &["change"]));
metric!(pub HUB_AGENT_RESYNCS: IntCounterVec = counter_vec("tether_hub_agent_list_resyncs_total", "Times the hub asked a relay for its list of agents again (it held none, or a report's changes did not follow the list it held)", &["relay"]));
metric!(pub HUB_REQUEST_SECONDS: Histogram = reg(Histogram::with_opts(
    HistogramOpts::new("tether_hub_request_seconds", "Time to answer an API request")
        .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
).expect("valid metric")));
metric!(pub HUB_DB_SECONDS: HistogramVec = reg(HistogramVec::new(
    HistogramOpts::new("tether_hub_db_seconds", "Time the hub's database took per statement, by kind (exec, query, batch)")
        .buckets(vec![0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]),
    &["op"],
).expect("valid metric")));
metric!(pub HUB_DB_ERRORS: IntCounterVec = counter_vec("tether_hub_db_errors_total", "Database statements that failed (not counting a name already taken), by kind", &["op"]));
metric!(pub HUB_DATABASE_UP: IntGauge = gauge("tether_hub_database_up", "1 while the hub reaches its database; 0 from a failed dial until a good one (requests that need it are answered 503)"));
metric!(pub HUB_DATABASE_RECONNECTS: IntCounter = counter("tether_hub_database_reconnects_total", "Connections to the database dialled again after one ended (a restart, a failover, pg_terminate_backend)"));
metric!(pub HUB_AUDIT_PENDING: IntGauge = gauge("tether_hub_audit_pending_records", "Hub audit records waiting for the database to take them (kept in order, up to 10 000)"));
metric!(pub HUB_AUDIT_SPOOL_ERRORS: IntCounter = counter("tether_hub_audit_spool_errors_total", "Failed writes of the file that keeps hub audit records waiting for the database (audit_spool): those records are in memory only"));
metric!(pub HUB_AUDIT_DROPPED: IntCounter = counter("tether_hub_audit_dropped_total", "Hub audit records dropped because more than 10 000 waited for the database (the chain says how many)"));
metric!(pub HUB_RELAY_ANCHORED: IntGaugeVec = gauge_vec("tether_hub_relay_anchor_timestamp_seconds", "When the hub last found a relay's audit head anchored (Unix seconds): stale when the relay stops reporting or its heads are refused", &["relay"]));
metric!(pub RELAY_READY: IntGauge = gauge("tether_relay_ready", "1 while this relay admits new sessions (its /readyz answers 200), read at scrape"));
metric!(pub CERT_EXPIRY: IntGaugeVec = gauge_vec("tether_cert_expiry_timestamp_seconds", "When this process's own certificate and its CA expire (Unix seconds), by role and subject name", &["role", "name"]));

// Twin link.
metric!(pub TWIN_LINK_UP: IntGaugeVec = gauge_vec("tether_twin_link_up", "1 while the twin link is up, by direction (out: our facts, in: the twin's)", &["direction"]));
metric!(pub TWIN_LAG_EVENTS: IntGauge = gauge("tether_twin_replication_lag_events", "Facts sent to the twin and not yet acknowledged"));
metric!(pub TWIN_LAG_SECONDS: prometheus::Gauge = reg(prometheus::Gauge::new("tether_twin_replication_lag_seconds", "Age of the oldest fact the twin has not acknowledged").expect("valid metric")));
metric!(pub TWIN_FACTS_RECEIVED: IntCounter = counter("tether_twin_facts_received_total", "Facts received from the twin"));
metric!(pub TWIN_SNAPSHOTS_RECEIVED: IntCounter = counter("tether_twin_snapshots_received_total", "Whole snapshots received from the twin (one per link start)"));

// Failover (the agent measures; the relay that handed over the leg reports).
metric!(pub RELAY_RESUMES: IntCounter = counter("tether_relay_tunnels_resumed_total", "Tunnelled connections resumed on a replacement leg through this relay"));
metric!(pub RELAY_RETRANSMITTED: IntCounter = counter("tether_relay_retransmitted_bytes_total", "Bytes sent again by the device side after resumes through this relay"));
metric!(pub RELAY_FAILOVER_PAUSE: Histogram = reg(Histogram::with_opts(
    HistogramOpts::new("tether_relay_failover_pause_seconds", "Pause of a resumed connection, from its old leg's last frame to the resume (measured at the device)")
        .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0]),
).expect("valid metric")));
metric!(pub RELAY_RESUMES_REFUSED: IntCounterVec = counter_vec("tether_relay_resumes_refused_total", "Replacement legs refused, by reason", &["reason"]));
metric!(pub AGENT_RESUMES: IntCounter = counter("tether_agent_tunnels_resumed_total", "Tunnelled connections resumed on a replacement leg"));
metric!(pub AGENT_RESUMES_REFUSED: IntCounter = counter("tether_agent_resumes_refused_total", "Replacement legs whose resume failed (wrong MAC, silence)"));

// Agent.
metric!(pub AGENT_CONTROL_CHANNELS: IntGaugeVec = gauge_vec("tether_agent_control_channel_up", "1 while the control channel to a relay is up", &["relay"]));
metric!(pub AGENT_REFUSALS: IntCounterVec = counter_vec("tether_agent_refusals_total", "Access requests and opens refused by the agent, by reason", &["reason"]));
metric!(pub AGENT_SESSIONS_ACTIVE: IntGauge = gauge("tether_agent_sessions_active", "Sessions admitted by this agent and not yet ended"));
metric!(pub AGENT_TUNNELS: IntCounter = counter("tether_agent_tunnels_total", "Tunnelled connections opened to local services"));
metric!(pub AGENT_E2E: IntCounterVec = counter_vec("tether_agent_e2e_connections_total", "Tunnelled connections whose end-to-end protection was set up, by kind: a TLS handshake, or keys derived from the session's (keyed)", &["kind"]));
metric!(pub AGENT_QUIC_NOT_USED: IntCounterVec = counter_vec("tether_agent_quic_not_used_total", "Control channels that `auto` dialled over TCP, by relay and why QUIC lost: refused (the relay's UDP port answered port unreachable), no_answer (nothing within the head start: UDP dropped), failed", &["relay", "why"]));
metric!(pub AGENT_RECONNECTS: IntCounterVec = counter_vec("tether_agent_reconnects_total", "Control channel (re)connection attempts, by relay", &["relay"]));
metric!(pub AGENT_HANDSHAKE_SECONDS: HistogramVec = reg(HistogramVec::new(
    HistogramOpts::new("tether_agent_data_leg_seconds", "Time for the agent to dial a data leg, by relay"),
    &["relay"],
).expect("valid metric")));

/// Reads this process's resident set size from /proc (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// CPU time (user + system) this process has used, from /proc (Linux).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Which part of tether this process is: its `/metrics` lists its own
/// families and the shared ones (`tether_tls_*`, `tether_audit_*`,
/// `tether_cert_*`, `tether_process_*`, …), not another part's at zero (a
/// hub listing `tether_relay_ready 0` would fire `TetherRelayNotReady`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Relay,
    Hub,
    Agent,
}

static PART: std::sync::OnceLock<Part> = std::sync::OnceLock::new();

/// Whether the family `name` belongs to another part than `part`.
fn foreign(part: Option<Part>, name: &str) -> bool {
    let others: &[&str] = match part {
        None => &[],
        Some(Part::Relay) => &["tether_hub_", "tether_agent_"],
        Some(Part::Hub) => &["tether_relay_", "tether_twin_", "tether_agent_"],
        Some(Part::Agent) => &["tether_relay_", "tether_twin_", "tether_hub_"],
    };
    others.iter().any(|p| name.starts_with(p))
}

/// The Prometheus text exposition of this part's metrics (every registered
/// one before [`init`] names the part).
pub fn render() -> String {
    if let Some(rss) = resident_bytes() {
        RELAY_RESIDENT_MEMORY.set(rss as i64);
        PROCESS_RESIDENT_MEMORY.set(rss as i64);
    }
    if let Some(cpu) = cpu_seconds() {
        PROCESS_CPU.set(cpu);
    }
    let part = PART.get().copied();
    let families: Vec<_> = REGISTRY.gather().into_iter().filter(|mf| !foreign(part, mf.name())).collect();
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default() + &empty_families(part)
}

/// Names this process's part and forces every metric into the registry so
/// that `/metrics` lists them from the start.
pub fn init(part: Part) {
    let _ = PART.set(part);
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&AUDIT_WRITE_ERRORS);
    LazyLock::force(&GRANT_KEYS);
    LazyLock::force(&AUDIT_HELD);
    LazyLock::force(&AUDIT_LOST);
    LazyLock::force(&PEERS_REVOKED);
    LazyLock::force(&CRL_RELOADS);
    LazyLock::force(&RELAY_AGENTS_ATTACHED);
    LazyLock::force(&RELAY_CONTROL_CHANNELS);
    LazyLock::force(&RELAY_SESSIONS_ACTIVE);
    LazyLock::force(&RELAY_SESSIONS_ENDED);
    LazyLock::force(&RELAY_TUNNELS_ACTIVE);
    LazyLock::force(&RELAY_TUNNELS_TOTAL);
    LazyLock::force(&RELAY_TUNNELS_QUIC_CHUNKS);
    LazyLock::force(&RELAY_BYTES);
    LazyLock::force(&RELAY_HANDSHAKE_FAILURES);
    LazyLock::force(&RELAY_PENDING);
    LazyLock::force(&RELAY_OPEN);
    LazyLock::force(&PROCESS_CPU);
    LazyLock::force(&PROCESS_RESIDENT_MEMORY);
    LazyLock::force(&RELAY_GRANT_REFUSALS);
    LazyLock::force(&RELAY_LEG_REFUSALS);
    LazyLock::force(&RELAY_FRAME_ERRORS);
    LazyLock::force(&RELAY_RETIRED_DEVICES);
    LazyLock::force(&RELAY_AGENTS_DROPPED);
    LazyLock::force(&RELAY_CONNECTIONS_REFUSED);
    LazyLock::force(&RELAY_PAIRING_SECONDS);
    LazyLock::force(&RELAY_RESIDENT_MEMORY);
    LazyLock::force(&TWIN_LINK_UP);
    LazyLock::force(&HUB_REQUESTS);
    LazyLock::force(&HUB_LOGIN_FAILURES);
    LazyLock::force(&HUB_REFUSALS);
    LazyLock::force(&HUB_DEVICE_CERTS_EXPIRING);
    LazyLock::force(&HUB_CERT_RENEWALS_PENDING);
    LazyLock::force(&AGENT_CERT_RENEWALS);
    LazyLock::force(&HUB_DEVICES_CLOCK_SKEWED);
    LazyLock::force(&HUB_ANCHOR_REFUSALS);
    LazyLock::force(&HUB_AUDIT_HEADS_STALE);
    LazyLock::force(&HUB_REPO_PUBLISHED);
    LazyLock::force(&HUB_JOBS);
    LazyLock::force(&HUB_UPLOAD_BYTES);
    LazyLock::force(&HUB_ROLLOUTS);
    LazyLock::force(&RELAY_UPLOAD_BYTES);
    LazyLock::force(&AGENT_UPLOAD_BYTES);
    LazyLock::force(&AGENT_JOBS);
    LazyLock::force(&AGENT_INSTALL_SECONDS);
    LazyLock::force(&RELAY_REPO_REQUESTS);
    LazyLock::force(&RELAY_REPO_BYTES);
    LazyLock::force(&AGENT_REPO_BYTES);
    LazyLock::force(&AGENT_REPO_RESUMES);
    LazyLock::force(&AGENT_REPO_REFUSED);
    LazyLock::force(&HUB_SESSIONS_GRANTED);
    LazyLock::force(&HUB_RELAY_REPORTS);
    LazyLock::force(&HUB_SESSIONS_LOST);
    for change in ["seen", "heard", "gone", "whole"] {
        HUB_REPORT_AGENTS.with_label_values(&[change]);
    }
    for came in ["whole", "by_sha", "wanted"] {
        HUB_HEAD_CERTS.with_label_values(&[came]);
    }
    LazyLock::force(&HUB_REQUEST_SECONDS);
    LazyLock::force(&HUB_DB_SECONDS);
    // Every kind at 0 from the start, so increase() sees the first error.
    for op in ["exec", "query", "batch"] {
        HUB_DB_ERRORS.with_label_values(&[op]);
    }
    LazyLock::force(&HUB_RELAY_ANCHORED);
    LazyLock::force(&RELAY_READY);
    LazyLock::force(&CERT_EXPIRY);
    LazyLock::force(&TWIN_LAG_EVENTS);
    LazyLock::force(&TWIN_LAG_SECONDS);
    LazyLock::force(&TWIN_FACTS_RECEIVED);
    LazyLock::force(&TWIN_SNAPSHOTS_RECEIVED);
    LazyLock::force(&RELAY_RESUMES);
    LazyLock::force(&RELAY_RETRANSMITTED);
    LazyLock::force(&RELAY_FAILOVER_PAUSE);
    LazyLock::force(&RELAY_RESUMES_REFUSED);
    LazyLock::force(&AGENT_RESUMES);
    LazyLock::force(&AGENT_RESUMES_REFUSED);
    LazyLock::force(&AGENT_CONTROL_CHANNELS);
    LazyLock::force(&AGENT_REFUSALS);
    LazyLock::force(&AGENT_SESSIONS_ACTIVE);
    LazyLock::force(&AGENT_TUNNELS);
    LazyLock::force(&AGENT_E2E);
    LazyLock::force(&AGENT_RECONNECTS);
    LazyLock::force(&AGENT_QUIC_NOT_USED);
    LazyLock::force(&AGENT_HANDSHAKE_SECONDS);
}
