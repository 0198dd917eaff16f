//! `tether hub user|device|site …`: account and inventory administration,
//! run on the hub host against its database (audited as `cli`).
use anyhow::{Context, Result, bail};
use serde_json::json;

use super::HubConfig;
use super::audit::HubAudit;
use super::auth;
use super::model::{Device, Role, Site, User};
use super::store::Store;
use crate::util::now_secs;

/// The database and audit of a hub config, for one command.
pub struct Admin {
    pub store: Store,
    pub audit: HubAudit,
    pub issuer: String,
    by: String,
}

impl Admin {
    pub async fn open(cfg: &HubConfig) -> Result<Admin> {
        let secrets = std::sync::Arc::new(super::secrets::SecretBox::load_or_create(&cfg.secrets_key)?);
        let store = Store::open(&cfg.database, std::path::Path::new(".")).await?.with_secrets(secrets).await?;
        let audit = HubAudit::open(store.clone(), None).await?;
        // Who ran the command, as the login says (sudo keeps the caller in
        // SUDO_USER); else the process's user (a bare shell, a service).
        let who = ["SUDO_USER", "USER", "LOGNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        let by = format!("cli:{}", who.unwrap_or_else(process_user));
        Ok(Admin { store, audit, issuer: cfg.issuer.clone(), by })
    }

    /// Adds an account; returns its TOTP secret (shown once, for enrolment).
    pub async fn user_add(&self, name: &str, role: Role, password: &str, sites: &[String]) -> Result<String> {
        add_user((&self.store, &self.audit, &self.by), name, role, password, sites).await
    }

    pub async fn entitle(&self, name: &str, site: &str) -> Result<()> {
        self.store.user(name).await?.with_context(|| format!("no user {name:?}"))?;
        self.store.entitle(name, site).await?;
        self.audit.record("user_entitled", json!({"user": name, "site": site, "by": self.by})).await;
        Ok(())
    }

    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        // Its tokens stay but admit nothing: every request checks the account.
        self.store.user_set_disabled(name, disabled).await?;
        let event = if disabled { "user_disabled" } else { "user_enabled" };
        self.audit.record(event, json!({"user": name, "by": self.by})).await;
        Ok(())
    }

    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        if let Some(p) = auth::password_problem(password, name) {
            bail!("password refused: {p}");
        }
        let hash = auth::hash_password(password).map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
        self.store.user_set_password(name, &hash).await?;
        self.store.clear_login_failures(name).await?;
        // Whoever logged in with the old password is out.
        let revoked = self.store.tokens_revoke(name).await?;
        self.audit.record("user_password_set", json!({"user": name, "by": self.by, "tokens_revoked": revoked})).await;
        Ok(())
    }

    pub async fn device_add(&self, id: &str, site: &str, consent: &str) -> Result<()> {
        check_account_name(id).context("device id")?;
        check_account_name(site).context("site")?;
        if !matches!(consent, "auto" | "required") {
            bail!("consent: auto or required");
        }
        self.store.device_add(&Device::new(id, site, consent), now_secs() as i64).await?;
        self.audit.record("device_added", json!({"device": id, "site": site, "consent": consent, "by": self.by})).await;
        Ok(())
    }

    /// Changes a device's site or consent policy; returns it before and
    /// after. Grants issued from now on follow it; live sessions go on.
    /// A refusal is audited `device_set_refused`, as on the console.
    pub async fn device_set(&self, id: &str, site: Option<&str>, consent: Option<&str>) -> Result<(Device, Device)> {
        let done = set_device((&self.store, &self.audit, &self.by), id, site, consent).await;
        if let Err(e) = &done {
            let fields = json!({"by": self.by, "device": id, "site": site, "consent": consent, "why": format!("{e:#}"),
                                "reason": "bad_policy"});
            self.audit.record("device_set_refused", fields).await;
        }
        done
    }

    /// Retires a device for good ([`super::retire`]); a refusal is audited
    /// `device_retire_refused`, as on the console.
    pub async fn device_retire(&self, id: &str, reason: &str) -> Result<super::retire::Retirement> {
        let done = super::retire::retire((&self.store, &self.audit, &self.by), id, reason).await;
        self.retire_refused("device_retire", id, done).await
    }

    /// Puts a retired device back in service; a refusal is audited
    /// `device_reinstate_refused`.
    pub async fn device_reinstate(&self, id: &str) -> Result<Device> {
        let done = super::retire::reinstate((&self.store, &self.audit, &self.by), id).await;
        self.retire_refused("device_reinstate", id, done).await
    }

    /// Audits a refused retirement or reinstatement (`ACTION_refused`, its
    /// code as `reason`), as the console does; a database error is no
    /// refusal, and the audit lives in that database anyway. The CLI is a
    /// process of its own, with no metrics to scrape: the audit counts it.
    async fn retire_refused<T>(
        &self,
        action: &str,
        id: &str,
        done: Result<T, super::retire::RetireError>,
    ) -> Result<T> {
        match done {
            Err(e) if !matches!(e, super::retire::RetireError::Store(_)) => {
                let fields = json!({"by": self.by, "device": id, "why": e.to_string(), "reason": e.code()});
                self.audit.record(&format!("{action}_refused"), fields).await;
                Err(e.into())
            }
            done => Ok(done?),
        }
    }

    pub async fn site_set(&self, name: &str, allow_from: Option<&str>, require_ticket: Option<bool>) -> Result<Site> {
        let mut site = self.store.site(name).await?.unwrap_or_else(|| Site { name: name.into(), ..Site::default() });
        if let Some(a) = allow_from {
            site.allow_from = Site::parse_allow_from(a).map_err(anyhow::Error::msg)?;
        }
        if let Some(t) = require_ticket {
            site.require_ticket = t;
        }
        self.store.site_put(&site).await?;
        self.audit
            .record(
                "site_set",
                json!({"site": name, "allow_from": site.allow_from_text(), "require_ticket": site.require_ticket, "by": self.by}),
            )
            .await;
        Ok(site)
    }
}

/// Changes a device's site or consent policy (from the CLI or the console:
/// `by` says who); returns it before and after, and audits
/// `device_changed` with both (nothing, when nothing changes). Grants issued from now on follow it; live
/// sessions go on.
pub async fn set_device(
    (store, audit, by): (&Store, &HubAudit, &str),
    id: &str,
    site: Option<&str>,
    consent: Option<&str>,
) -> Result<(Device, Device)> {
    if consent.is_some_and(|c| !matches!(c, "auto" | "required")) {
        bail!("consent: auto or required");
    }
    if let Some(s) = site {
        check_account_name(s).context("site")?;
    }
    let Some(was) = store.device(id).await? else {
        bail!("no device {id:?} (add it: tether hub device add {id} --site SITE)");
    };
    if let Some(r) = &was.retired {
        bail!("device {id} is {}; reinstate it first (tether hub device reinstate {id})", r.describe());
    }
    let now = Device::new(id, site.unwrap_or(&was.site), consent.unwrap_or(&was.consent));
    if now == was {
        return Ok((was, now));
    }
    store.device_set(&now).await?;
    audit
        .record(
            "device_changed",
            json!({"device": id, "site": now.site, "consent": now.consent,
                   "was": {"site": was.site, "consent": was.consent}, "by": by}),
        )
        .await;
    Ok((was, now))
}

/// Adds an account (from the CLI or the console: `by` says who); returns
/// its TOTP secret, shown once for enrolment.
pub async fn add_user(
    (store, audit, by): (&Store, &HubAudit, &str),
    name: &str,
    role: Role,
    password: &str,
    sites: &[String],
) -> Result<String> {
    check_account_name(name)?;
    if store.user(name).await?.is_some() {
        bail!("there is already an account {name:?}");
    }
    if let Some(p) = auth::password_problem(password, name) {
        bail!("password refused: {p}");
    }
    let owned = password.to_string();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&owned))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    let secret = crate::totp::new_secret();
    let user = User {
        name: name.into(),
        role,
        password_hash: hash,
        totp_secret: secret.clone(),
        disabled: false,
        created_at: now_secs() as i64,
    };
    store.user_add(&user).await?;
    for s in sites {
        store.entitle(name, s).await?;
    }
    audit.record("user_added", json!({"user": name, "role": role, "sites": sites, "by": by})).await;
    Ok(secret)
}

/// Account names and device ids: printable, no spaces, at most 128 bytes.
/// Anything else (quotes, `;`, `$`) is allowed and stored verbatim.
fn check_account_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("{name:?}: 1 to 128 bytes, no spaces or control characters");
    }
    Ok(())
}

/// The enrolment text shown once after `user add`.
pub fn enrolment(issuer: &str, user: &str, secret: &str) -> String {
    let uri = crate::totp::uri(issuer, user, secret);
    format!(
        "TOTP enrolment for {user} (scan once, then keep this secret off screen):\n{}\n{uri}\n",
        auth::qr_text(&uri)
    )
}

/// The name of the user this process runs as (`/etc/passwd`), or `uid N`;
/// `unknown` where neither can be read.
fn process_user() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(uid) = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next())
    else {
        return "unknown".into();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == uid)
        .map_or_else(|| format!("uid {uid}"), |f| f[0].to_string())
}

#[cfg(test)]
mod tests {
    /// A bare shell or a service sets no USER: the audit still names who,
    /// as the system does.
    #[test]
    fn the_process_user_is_named_as_the_system_names_it() {
        let id = std::process::Command::new("id").arg("-un").output().expect("id");
        assert_eq!(super::process_user(), String::from_utf8_lossy(&id.stdout).trim());
    }
}
