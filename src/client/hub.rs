//! The specialist's side of the hub: login, token kept in the profile (0600),
//! and authenticated calls. A dev profile (`tether dev`) logs in by itself
//! from its dev-only password and TOTP files.
use std::path::Path;

use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Profile;
use super::profile::HubLogin;
use crate::api::{HubClient, HubClientError, LoginAnswer, LoginRequest};
use crate::util::now_secs;

/// Why a hub call on the specialist's behalf failed.
#[derive(Debug, thiserror::Error)]
pub enum HubCallError {
    #[error(transparent)]
    Hub(#[from] HubClientError),
    #[error("profile has no [hub] section")]
    NoHub,
    #[error("not logged in (or the token expired): run `tether login --profile {0}`")]
    NotLoggedIn(String),
    #[error("profile {path}: {detail}")]
    Profile { path: String, detail: String },
}

pub struct HubSession {
    pub client: HubClient,
    login: HubLogin,
    profile_path: Option<std::path::PathBuf>,
    token: tokio::sync::Mutex<Option<String>>,
}

/// A token still good for at least this long is used as is.
const TOKEN_MARGIN_SECS: u64 = 30;

impl HubSession {
    pub fn from_profile(p: &Profile) -> Result<HubSession, HubCallError> {
        let login = p.hub.clone().ok_or(HubCallError::NoHub)?;
        let client = HubClient::new(&login.url, &p.ca, None, login.server_name.as_deref())?;
        let token = match (&login.token, login.token_expires_at) {
            (Some(t), Some(exp)) if exp > now_secs() + TOKEN_MARGIN_SECS => Some(t.clone()),
            _ => None,
        };
        Ok(HubSession { client, login, profile_path: p.path.clone(), token: tokio::sync::Mutex::new(token) })
    }

    pub fn user(&self) -> &str {
        &self.login.user
    }

    fn profile_name(&self) -> String {
        self.profile_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "PROFILE".into())
    }

    /// Logs in with a password and a code; stores the token in the profile.
    pub async fn login(&self, password: &str, code: &str) -> Result<(String, u64), HubCallError> {
        let req = LoginRequest { user: self.login.user.clone(), password: password.into(), code: code.into() };
        let LoginAnswer { token, expires_at, .. } = self.client.post("/api/v1/login", None, &req).await?;
        if let Some(path) = &self.profile_path {
            store_token(path, &self.login, &token, expires_at)?;
        }
        *self.token.lock().await = Some(token.clone());
        Ok((token, expires_at))
    }

    /// Dev profiles only: password and TOTP code from the dev folder.
    async fn dev_login(&self) -> Result<Option<String>, HubCallError> {
        let (Some(pw), Some(secret)) = (&self.login.dev_password_file, &self.login.dev_totp_secret_file) else {
            return Ok(None);
        };
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| HubCallError::Profile { path: p.display().to_string(), detail: e.to_string() })
        };
        let (password, secret) = (read(pw)?, read(secret)?);
        // A TOTP code is good once: a second login in the same 30 s needs the next step's code.
        let mut last = None;
        for step in [0, 1] {
            let code = crate::totp::code_now(&secret, now_secs(), step).unwrap_or_default();
            match self.login(&password, &code).await {
                Ok((t, _)) => return Ok(Some(t)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HubCallError::NoHub))
    }

    async fn token(&self, renew: bool) -> Result<String, HubCallError> {
        let mut held = self.token.lock().await;
        if !renew && let Some(t) = held.as_ref() {
            return Ok(t.clone());
        }
        drop(held.take());
        drop(held);
        match self.dev_login().await? {
            Some(t) => Ok(t),
            None => Err(HubCallError::NotLoggedIn(self.profile_name())),
        }
    }

    /// An authenticated call answered with `T`; a dev profile logs in again when its token lapsed.
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, HubCallError> {
        let token = self.token(false).await?;
        match self.client.request(method.clone(), path, Some(&token), body).await {
            Err(e) if token_lapsed(&e) && self.login.dev_password_file.is_some() => {
                let token = self.token(true).await?;
                Ok(self.client.request(method, path, Some(&token), body).await?)
            }
            Err(e) if token_lapsed(&e) || e.code() == Some("no_token") => {
                Err(HubCallError::NotLoggedIn(self.profile_name()))
            }
            r => Ok(r?),
        }
    }

    /// `GET path`, answered with `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, HubCallError> {
        self.request::<(), T>(Method::GET, path, None).await
    }

    /// `POST path` with `body`, answered with `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, HubCallError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// A call with a raw body of `ctype` (or none), answered with raw bytes;
    /// a non-2xx answer is an error naming the hub's reason.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<bytes::Bytes>,
        ctype: &'static str,
    ) -> Result<bytes::Bytes, HubCallError> {
        Ok(self.raw_with_headers(method, path, body, ctype).await?.1)
    }

    /// [`HubSession::raw`], with the answer's headers.
    pub async fn raw_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<bytes::Bytes>,
        ctype: &'static str,
    ) -> Result<(hyper::HeaderMap, bytes::Bytes), HubCallError> {
        let mut token = self.token(false).await?;
        for attempt in 0..2 {
            let (status, headers, answer) =
                self.client.exchange(method.clone(), path, Some(&token), body.clone(), ctype).await?;
            if status.is_success() {
                return Ok((headers, answer));
            }
            let e = HubClientError::from_answer(status, &answer);
            if attempt == 0 && token_lapsed(&e) && self.login.dev_password_file.is_some() {
                token = self.token(true).await?;
                continue;
            }
            if token_lapsed(&e) || e.code() == Some("no_token") {
                return Err(HubCallError::NotLoggedIn(self.profile_name()));
            }
            return Err(e.into());
        }
        Err(HubCallError::NotLoggedIn(self.profile_name()))
    }

    /// Raw text (audit export).
    pub async fn text(&self, path: &str) -> Result<String, HubCallError> {
        let token = self.token(false).await?;
        Ok(self.client.text(path, Some(&token)).await?)
    }
}

/// The hub no longer takes the token (it expired, or was revoked).
fn token_lapsed(e: &HubClientError) -> bool {
    matches!(e.code(), Some("token_expired" | "bad_token"))
}

/// Writes `[hub] token` into the profile file, mode 0600.
pub fn store_token(path: &Path, login: &HubLogin, token: &str, expires_at: u64) -> Result<(), HubCallError> {
    let err = |detail: String| HubCallError::Profile { path: path.display().to_string(), detail };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let hub = doc.entry("hub").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(hub) = hub else { return Err(err("[hub] is not a table".into())) };
    hub.insert("url".into(), login.url.clone().into());
    hub.insert("user".into(), login.user.clone().into());
    hub.insert("token".into(), token.into());
    hub.insert("token_expires_at".into(), toml::Value::Integer(expires_at as i64));
    let out = toml::to_string(&doc).map_err(|e| err(e.to_string()))?;
    crate::tls::pki::write_file(path, &out, true).map_err(|e| err(e.to_string()))
}
