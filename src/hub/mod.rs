//! The hub: the only place a specialist authenticates and the only signer of
//! grants. HTTPS JSON API under `/api/v1` (docs/openapi.yaml), storage in
//! SQLite or PostgreSQL, hash-chained audit in the database, routing from
//! relay reports.
pub mod admin;
mod anchors;
mod api;
pub mod audit;
mod audit_spool;
pub mod auth;
mod certs;
pub mod config;
mod console;
mod guard;
mod head_certs;
mod http;
mod jobs;
pub mod limits;
mod lost;
pub mod model;
mod relay_agents;
pub mod relays;
pub mod repo;
mod repo_api;
pub mod retire;
mod rollouts;
pub mod secrets;
mod sessions;
pub mod store;
mod uploads;
mod waiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::HubConfig;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proto::GrantSigner;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("repository: {0}")]
    Repo(#[from] repo::RepoStoreError),
    #[error("uploads folder {dir}: {source}")]
    Uploads { dir: std::path::PathBuf, source: std::io::Error },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
}

/// Everything a request handler needs.
pub struct Hub {
    pub cfg: HubConfig,
    pub store: store::Store,
    pub audit: audit::HubAudit,
    pub board: relays::Board,
    /// Bounds on login attempts (per name, per source, password checks at once).
    pub logins: limits::LoginGate,
    /// The signed software repository, when `[repo]` is configured.
    pub repo: Option<repo::RepoStore>,
    /// Which devices' jobs changed, for the relays' long polls.
    pub jobs: jobs::JobEvents,
    /// Uploads being written (one writer per job at a time).
    uploads: uploads::Writing,
    /// Rollouts whose jobs moved, for the rollout driver (`rollouts::drive`).
    rollout_news: tokio::sync::mpsc::UnboundedSender<String>,
    rollout_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    signer: GrantSigner,
    /// Console sessions (cookie, idle clock, CSRF token).
    console: console::ConsoleSessions,
    /// How far the console has verified the hub's audit chain.
    console_chain: console::ChainCheck,
    /// Device certificate expiries last written.
    certs_seen: certs::Seen,
    /// The highest audit head each relay delivered per chain (rollback or lag).
    delivered: anchors::Delivered,
    /// The device certificates that came with agents' heads (`head_certs`).
    head_certs: head_certs::HeadCerts,
    /// Refusals of requests nobody authenticated, past those recorded one
    /// by one (`util::budget`): tallied for an aggregate record.
    strangers: crate::util::budget::Refusals,
}

impl Hub {
    pub async fn open(cfg: HubConfig) -> Result<Arc<Hub>, HubError> {
        let secrets = Arc::new(secrets::SecretBox::load_or_create(&cfg.secrets_key)?);
        let store = store::Store::open(&cfg.database, std::path::Path::new(".")).await?.with_secrets(secrets).await?;
        let signer = crate::tls::pki::load_grant_signer(&cfg.grant_signing_key)?;
        let audit = audit::HubAudit::open(store.clone(), Some(cfg.audit_spool())).await?;
        // At 0 from the start, so increase() sees the first one.
        crate::metrics::HUB_DATABASE_RECONNECTS.inc_by(0);
        crate::metrics::HUB_AUDIT_DROPPED.inc_by(0);
        crate::metrics::HUB_AUDIT_SPOOL_ERRORS.inc_by(0);
        let board = relays::Board::new(cfg.relays.clone(), Duration::from_millis(cfg.relay_stale_ms));
        // Revocations outlive a restart: the relays hear of them again.
        let now = crate::util::now_secs() as i64;
        for (id, until) in store.revocations_live(now, sessions::REVOCATION_KEEP_SECS as i64).await? {
            board.revoke(&id, until);
        }
        let logins = limits::LoginGate::new(cfg.login.clone());
        let repo = match &cfg.repo {
            Some(r) => Some(repo::RepoStore::open(&r.dir, &r.snapshot_key, &r.timestamp_key)?),
            None => None,
        };
        if let Some(u) = &cfg.uploads {
            std::fs::create_dir_all(&u.dir).map_err(|source| HubError::Uploads { dir: u.dir.clone(), source })?;
        }
        let (jobs, uploads) = (jobs::JobEvents::default(), uploads::Writing::default());
        let (rollout_news, rx) = tokio::sync::mpsc::unbounded_channel();
        let rollout_rx = std::sync::Mutex::new(Some(rx));
        let console = console::ConsoleSessions::new(Duration::from_secs(cfg.console_idle_secs.max(1)));
        let console_chain = console::ChainCheck::default();
        Ok(Arc::new(Hub {
            cfg,
            store,
            audit,
            board,
            logins,
            repo,
            jobs,
            uploads,
            rollout_news,
            rollout_rx,
            signer,
            console,
            console_chain,
            certs_seen: certs::Seen::default(),
            delivered: Default::default(),
            head_certs: Default::default(),
            strangers: Default::default(),
        }))
    }

    /// A job of rollout `id` ended: the rollout may move on.
    pub fn rollout_moved(&self, id: &str) {
        if !id.is_empty() {
            let _ = self.rollout_news.send(id.to_string());
        }
    }

    /// [`Hub::refused`] for a request nobody authenticated (from `from`):
    /// past the budget of refusals recorded one by one (20 per source, 200 in
    /// all, per minute) it is counted and tallied, and written in aggregate
    /// (`requests_refused`, every 10 s), so that a flood of requests without
    /// a valid token cannot make the hub write to its database per request.
    pub async fn refused_stranger(&self, event: &str, reason: &str, from: std::net::IpAddr, fields: serde_json::Value) {
        if self.strangers.one_by_one(event, from, reason) {
            return self.refused(event, reason, fields).await;
        }
        crate::metrics::HUB_REFUSALS.with_label_values(&[reason]).inc();
    }

    /// Counts and audits a refusal; `fields` say who and what, never secrets.
    pub async fn refused(&self, event: &str, reason: &str, mut fields: serde_json::Value) {
        crate::metrics::HUB_REFUSALS.with_label_values(&[reason]).inc();
        if let Some(m) = fields.as_object_mut() {
            m.insert("reason".into(), reason.into());
        }
        tracing::info!(event, reason, "refused");
        self.audit.record(event, fields).await;
    }
}

/// Runs `f` every `period` (the first at once) until `stop`.
pub(crate) async fn every<F: std::future::Future<Output = ()>>(
    period: std::time::Duration,
    stop: CancellationToken,
    mut f: impl FnMut() -> F,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        f().await;
    }
}

/// Writes what the listener turned away before a request (no connection
/// slot, failed or silent TLS), and the requests nobody authenticated that
/// were refused past the budget of one record each, at most once every 10 s
/// and at shutdown.
async fn report_drops(hub: Arc<Hub>, drops: Arc<crate::util::DropTally>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        let last = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Some(fields) = drops.take("hub") {
            // A full hub is worth a warning; peers that hang up mid-handshake
            // (port probes, load-balancer checks) are routine.
            if fields["dropped"].get("max_connections").is_some() {
                tracing::warn!("connections dropped before a request: {fields}");
            } else {
                tracing::info!("connections dropped before a request: {fields}");
            }
            hub.audit.record("connections_dropped", fields).await;
        }
        for mut fields in hub.strangers.take() {
            // Tallied by the event they would have had one by one.
            if let Some(m) = fields.as_object_mut()
                && let Some(event) = m.remove("listener")
            {
                m.insert("refused_as".into(), event);
            }
            tracing::info!("requests refused past the budget for one record each, in aggregate: {fields}");
            hub.audit.record("requests_refused", fields).await;
        }
        if last {
            return;
        }
    }
}

/// The bound API listener.
pub async fn bind(cfg: &HubConfig) -> Result<TcpListener, HubError> {
    TcpListener::bind(cfg.listen).await.map_err(|source| HubError::Bind { addr: cfg.listen, source })
}

/// The hub's TLS: its certificate and the fleet CA (with the CRL).
pub type ServerTls = (Arc<rustls::ServerConfig>, Arc<crate::tls::Trust>);

/// What the hub needs before its database: metrics, the CRL reloader, its
/// certificates (a bad one fails here, before any wait).
pub fn prepare(cfg: &HubConfig) -> Result<ServerTls, HubError> {
    crate::metrics::init(crate::metrics::Part::Hub);
    crate::tls::spawn_reloader(crate::tls::CRL_RELOAD_PERIOD);
    crate::tls::expiry::export(&[&cfg.cert, &cfg.ca]);
    Ok((http::server_config(cfg)?, crate::tls::Trust::get(&cfg.ca, cfg.crl.as_deref())?))
}

/// Opens the hub. While its database cannot be reached (PostgreSQL still
/// starting after a power cut, a failover, the network), waits and tries
/// again with the cause in the log, until `stop` (then `None`). A database
/// that answers with an error (a wrong password) fails at once.
async fn open_waiting(cfg: HubConfig, stop: &CancellationToken) -> Result<Option<Arc<Hub>>, HubError> {
    let mut pause = crate::util::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let started = std::time::Instant::now();
    loop {
        match Hub::open(cfg.clone()).await {
            Err(HubError::Store(store::StoreError::Unavailable(why))) => {
                crate::metrics::HUB_DATABASE_UP.set(0);
                let waited = started.elapsed().as_secs();
                tracing::warn!(error = %why, waited_secs = waited, "waiting for the database; until it answers, requests are answered 503 database_unavailable");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(pause.next_pause()) => {}
                }
            }
            r => return r.map(Some),
        }
    }
}

/// Serves `listener` until `stop`: first without the hub, answering as
/// [`waiting`] says while its database cannot be reached, then the API and
/// the console once the hub is open (`opened` is told then). A database
/// that refuses the hub (a wrong password, a newer schema) ends it.
pub async fn run(
    listener: TcpListener,
    cfg: HubConfig,
    tls: ServerTls,
    stop: CancellationToken,
    opened: impl FnOnce(&Hub),
) -> Result<(), HubError> {
    let addr = listener.local_addr().ok();
    let hub_once: Arc<std::sync::OnceLock<Arc<Hub>>> = Arc::default();
    let (h, before) = (hub_once.clone(), Arc::new(cfg.clone()));
    let handler = move |req: hyper::Request<hyper::body::Incoming>, peer| {
        let (hub, before) = (h.get().cloned(), before.clone());
        async move {
            match hub {
                None => waiting::answer(&before, &req, &peer),
                Some(hub) if console::is_console(req.uri().path()) => console::handle(&hub, req, &peer).await,
                Some(hub) => api::handle(&hub, req, &peer).await,
            }
        }
    };
    let drops = Arc::new(crate::util::DropTally::default());
    let balancers = crate::util::proxy::ProxyTrust::new(cfg.proxy_protocol_from.clone());
    let serving = stop.child_token();
    let limits = (cfg.max_connections, balancers);
    let server = tokio::spawn(http::serve(listener, tls, limits, drops.clone(), handler, serving.clone()));
    let hub = match open_waiting(cfg, &stop).await {
        Ok(Some(hub)) => hub,
        other => {
            serving.cancel();
            let _ = server.await;
            return other.map(|_| ());
        }
    };
    let mut start = json!({"listen": addr.map(|a| a.to_string()), "engine": hub.store.engine()});
    if hub.audit.kept() > 0 {
        start["records_kept_through_stop"] = hub.audit.kept().into();
    }
    hub.audit.record("hub_start", start).await;
    let _ = hub_once.set(hub.clone());
    opened(&hub);
    let reporter = tokio::spawn(report_drops(hub.clone(), drops.clone(), stop.clone()));
    tokio::spawn(repo_api::refresh_timestamps(hub.clone(), stop.clone()));
    tokio::spawn(jobs::sweep(hub.clone(), stop.clone()));
    tokio::spawn(lost::sweep(hub.clone(), stop.clone()));
    tokio::spawn(certs::sweep(hub.clone(), stop.clone()));
    tokio::spawn(certs::write_seen(hub.clone(), stop.clone()));
    tokio::spawn(rollouts::drive(hub.clone(), stop.clone()));
    tokio::spawn(retire::sweep(hub.clone(), stop.clone()));
    tokio::spawn(audit::watch_database(hub.clone(), stop.clone()));
    let _ = server.await;
    let _ = reporter.await;
    // Stopped during an outage of the database: the outage so far, and what
    // waits for it, go on disk for the next start.
    if let Some(o) = hub.store.outage_now() {
        hub.audit.record("database_outage", audit::outage_fields(&o, true)).await;
    }
    hub.audit.record("hub_stop", json!({})).await;
    hub.audit.keep().await;
    Ok(())
}
