//! Renewing the device's certificate through the relays, with the fleet
//! CA's key offline. Once the certificate has less than `cert_renew_days`
//! left, the agent makes a new key (`KEY.next`, 0600, never sent), asks for
//! a certificate for it on a fetch leg (the request signed by the new key,
//! proven by the current one), and asks again every `cert_check_secs` until
//! the CA's holder has signed it (`tether certs renewals --sign`). It checks
//! what comes back (fleet CA, device role, its own id, its new key), writes
//! an audit record naming the new certificate (signed with the old key, so
//! the chain's signatures can be followed across the change), installs
//! both files (the old ones kept as `.prev`), and restarts as itself once no
//! session is live (or two days before the old certificate ends), so that
//! every connection from then on presents the new certificate.
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::KeyPair;
use serde_json::json;
use sha2::Digest;

use super::Shared;
use super::config::AgentConfig;
use super::fetch::{FetchError, Fetcher};
use crate::api::CertRenewalState;
use crate::metrics::AGENT_CERT_RENEWALS;
use crate::proto::repo::RepoFrame;
use crate::tls::renewal;

/// `PATH.next` / `PATH.prev`.
fn beside(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{ext}"));
    PathBuf::from(s)
}

/// Completes an install a crash interrupted: a waiting `KEY.next` goes in
/// place only with its certificate (`CERT.next`), and the key first, so
/// every state in between is finished here. Called before the agent loads
/// its certificate.
pub fn finish_install(cfg: &AgentConfig) -> std::io::Result<()> {
    let (cert_next, key_next) = (beside(&cfg.cert, "next"), beside(&cfg.key, "next"));
    if !cert_next.exists() {
        return Ok(());
    }
    if key_next.exists() {
        std::fs::rename(&key_next, &cfg.key)?;
    }
    std::fs::rename(&cert_next, &cfg.cert)
}

/// What one check did.
enum Step {
    /// Nothing to do until the next check.
    Later,
    /// A new certificate is installed: restart to present it (the one in
    /// use expires at the given Unix second).
    Installed(u64),
}

/// Live sessions hold the restart off until the certificate in use has this
/// little left (seconds): then it restarts anyway, since a device whose
/// certificate ran out is reached by nobody.
const RESTART_ANYWAY: u64 = 2 * 86_400;

/// Whether the restart waits: while sessions are live, until the end nears.
fn restart_waits(live: usize, now: u64, expires: u64) -> bool {
    live > 0 && now + RESTART_ANYWAY < expires
}

/// Checks now and then every `cert_check_secs`; restarts the agent once a
/// new certificate is installed and no session is live.
pub async fn run(state: Shared) {
    if state.cfg.cert_renew_days == 0 {
        return;
    }
    let every = Duration::from_secs(state.cfg.cert_check_secs.max(1));
    // The first check waits for the channels to attach.
    let mut wait = every.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        match step(&state).await {
            Ok(Step::Later) => {}
            Ok(Step::Installed(expires)) => return restart_when_idle(&state, expires).await,
            Err(e) => {
                AGENT_CERT_RENEWALS.with_label_values(&["failed"]).inc();
                tracing::warn!(device = %state.cfg.device, error = %e, "certificate renewal: will try again");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Sign(#[from] crate::audit::sign::SignError),
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("the hub's answer: {0}")]
    Answer(#[from] serde_json::Error),
    #[error("the certificate that came back is refused: {0}")]
    Refused(#[from] renewal::Refusal),
}

async fn step(state: &Shared) -> Result<Step, RenewError> {
    let cfg = &state.cfg;
    let current = crate::tls::load_certs(&cfg.cert)?.into_iter().next().map(|c| c.to_vec()).unwrap_or_default();
    let expires = renewal::not_after(&current).unwrap_or(0);
    let now = crate::util::now_secs();
    if expires > now + cfg.cert_renew_days * 86_400 {
        return Ok(Step::Later);
    }
    let next_path = beside(&cfg.key, "next");
    let (next, made) = match std::fs::read_to_string(&next_path) {
        Ok(pem) => (KeyPair::from_pem(&pem).map_err(crate::tls::TlsError::from)?, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(crate::tls::TlsError::from)?;
            crate::tls::pki::write_file(&next_path, &key.serialize_pem(), true)?;
            (key, true)
        }
        Err(e) => return Err(e.into()),
    };
    let csr = renewal::make_request(&cfg.device, &next)?;
    let digest = hex::encode(sha2::Sha256::digest(csr.as_bytes()));
    let proof = crate::audit::sign::Signer::load(&cfg.key)?.sign_as(crate::audit::sign::RENEWAL, &digest);
    let req = RepoFrame::CertRenew {
        version: crate::proto::VERSION,
        csr: csr.into_bytes().into(),
        cert: current.clone().into(),
        proof: hex::decode(proof).unwrap_or_default().into(),
    };
    let answer = Fetcher::new(state.clone()).call(req).await.inspect_err(|e| {
        if let FetchError::Refused { code, message, .. } = e {
            AGENT_CERT_RENEWALS.with_label_values(&["refused"]).inc();
            let fields = json!({"device": cfg.device, "reason": code, "detail": message});
            state.audit.record("cert_renewal_refused", fields);
        }
    })?;
    let got: CertRenewalState = serde_json::from_slice(&answer)?;
    if got.cert.is_empty() {
        if made {
            AGENT_CERT_RENEWALS.with_label_values(&["requested"]).inc();
            state.audit.record("cert_requested", json!({"device": cfg.device, "current_not_after": expires}));
            tracing::info!(device = %cfg.device, expires, "asked for a renewed certificate; waiting for the fleet CA's signature");
        }
        return Ok(Step::Later);
    }
    let der = renewal::der_of(&got.cert).and_then(|der| check(cfg, &next, &der, expires).map(|()| der));
    let der = der.inspect_err(|e| {
        AGENT_CERT_RENEWALS.with_label_values(&["refused"]).inc();
        state
            .audit
            .record("cert_renewal_refused", json!({"device": cfg.device, "reason": e.code, "detail": e.message}));
    })?;
    let not_after = renewal::not_after(&der).unwrap_or(0);
    // Before the files move: the record the old key signs names the new
    // certificate, which signs every record after it.
    state
        .audit
        .record("cert_renewed", json!({"device": cfg.device, "not_after": not_after, "cert": hex::encode(&der)}));
    install(cfg, &got.cert)?;
    AGENT_CERT_RENEWALS.with_label_values(&["installed"]).inc();
    tracing::info!(device = %cfg.device, not_after, "renewed certificate installed; restarting to present it once no session is live");
    Ok(Step::Installed(expires))
}

/// What came back is a fleet device certificate for this device and its
/// new key, outliving the current one.
fn check(cfg: &AgentConfig, next: &KeyPair, der: &[u8], expires: u64) -> Result<(), renewal::Refusal> {
    renewal::check_device_cert(&cfg.ca, cfg.crl.as_deref(), &cfg.device, der)?;
    if renewal::cert_key(der).as_deref() != Some(next.public_key_raw()) {
        let message = "it is not for the key this device made for it".to_string();
        return Err(renewal::Refusal { code: "wrong_key", message });
    }
    if renewal::not_after(der).unwrap_or(0) <= expires {
        let message = "it expires no later than the certificate in use".to_string();
        return Err(renewal::Refusal { code: "not_newer", message });
    }
    Ok(())
}

/// Keeps the current files as `.prev`, then puts the new ones in place.
fn install(cfg: &AgentConfig, cert_pem: &str) -> std::io::Result<()> {
    let to_io = |e: crate::tls::TlsError| std::io::Error::other(e.to_string());
    crate::tls::pki::write_file(&beside(&cfg.cert, "next"), cert_pem, false).map_err(to_io)?;
    std::fs::copy(&cfg.cert, beside(&cfg.cert, "prev"))?;
    let old_key = std::fs::read_to_string(&cfg.key)?;
    crate::tls::pki::write_file(&beside(&cfg.key, "prev"), &old_key, true).map_err(to_io)?;
    finish_install(cfg)
}

/// Restarts as this same binary once no session is live (a session is
/// never cut for a certificate that still has days to run), or when the
/// certificate in use (ending at `expires`) is about to run out.
async fn restart_when_idle(state: &Shared, expires: u64) {
    loop {
        let live = state.sessions.len();
        if restart_waits(live, crate::util::now_secs(), expires) {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
            }
        }
        if live > 0 {
            tracing::warn!(live, "restarting with live sessions: the certificate in use expires within 2 days");
        }
        let fields = json!({"device": state.cfg.device, "why": "certificate renewed", "live_sessions": live});
        state.audit.record("agent_restarting", fields);
        if std::env::var_os("INVOCATION_ID").is_some() {
            tracing::info!("exiting for systemd to start the agent with its renewed certificate");
            std::process::exit(super::jobs::RESTART_STATUS);
        }
        use std::os::unix::process::CommandExt;
        let e = match std::env::current_exe() {
            Ok(bin) => std::process::Command::new(bin).args(std::env::args_os().skip(1)).exec(),
            Err(e) => e,
        };
        tracing::error!(error = %e, "could not restart; the renewed certificate is used from the next start");
        return;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_sessions_hold_the_restart_off_until_two_days_before_the_end() {
        let day = 86_400;
        assert!(!super::restart_waits(0, 0, 30 * day), "nothing live: at once");
        assert!(super::restart_waits(1, 0, 30 * day), "a session is not cut for weeks left");
        assert!(super::restart_waits(3, 27 * day, 30 * day));
        assert!(!super::restart_waits(1, 28 * day, 30 * day), "two days left: restart anyway");
        assert!(!super::restart_waits(1, 31 * day, 30 * day), "expired: restart anyway");
    }
}
