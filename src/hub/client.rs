//! An HTTPS JSON client for the hub's API: used by `tether login`/`devices`/
//! `connect`… and by relays for their reports (with a client certificate).
//! One kept-alive HTTP/1.1 connection, re-dialled when it breaks.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde_json::Value;

use crate::tls::{self, TlsError};

/// Why a call to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    #[error("hub url {0:?}: expected https://HOST[:PORT]")]
    BadUrl(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach the hub at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("hub refused ({status}): {message}")]
    Api { status: u16, code: String, message: String },
    #[error("hub answer is not what was expected: {0}")]
    BadAnswer(String),
}

impl HubClientError {
    /// The hub's stable error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            HubClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub struct HubClient {
    authority: String,
    server_name: String,
    tls: Arc<ClientConfig>,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl HubClient {
    /// `url` is `https://host[:port]`; `server_name` overrides the name checked
    /// in the hub's certificate.
    pub fn new(
        url: &str,
        ca: &Path,
        client_cert: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<HubClient, HubClientError> {
        let rest = url.strip_prefix("https://").ok_or_else(|| HubClientError::BadUrl(url.into()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(HubClientError::BadUrl(url.into()));
        }
        let (host, authority) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => (h.to_string(), authority.to_string()),
            _ => (authority.to_string(), format!("{authority}:443")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = tls::client_config(ca, client_cert, super::http::ALPN_HTTP1)?;
        Ok(HubClient {
            authority,
            server_name: server_name.map(str::to_string).unwrap_or(host),
            tls,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, HubClientError> {
        let unreachable = |detail: String| HubClientError::Unreachable { addr: self.authority.clone(), detail };
        let stream = tokio::time::timeout(TIMEOUT, tls::dial(&self.authority, &self.server_name, self.tls.clone()))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// One request; returns status and body. Retries once on a fresh
    /// connection when a kept-alive one turns out to be dead.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), HubClientError> {
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            let mut send = match guard.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.dial().await?,
            };
            let mut req = Request::builder().method(method.clone()).uri(path).header("host", &self.authority);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let payload = match body {
                Some(v) => {
                    req = req.header("content-type", "application/json");
                    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
                }
                None => Bytes::new(),
            };
            let req = req.body(Full::new(payload)).map_err(|e| HubClientError::BadAnswer(e.to_string()))?;
            let result = tokio::time::timeout(TIMEOUT, async {
                let resp = send.send_request(req).await?;
                let status = resp.status();
                let bytes = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, bytes))
            })
            .await;
            match result {
                Ok(Ok(out)) => {
                    *guard = Some(send);
                    return Ok(out);
                }
                Ok(Err(e)) if attempt == 0 => tracing::debug!(error = %e, "hub connection lost; redialling"),
                Ok(Err(e)) => {
                    return Err(HubClientError::Unreachable { addr: self.authority.clone(), detail: e.to_string() });
                }
                Err(_) => {
                    return Err(HubClientError::Unreachable {
                        addr: self.authority.clone(),
                        detail: "timed out".into(),
                    });
                }
            }
        }
        Err(HubClientError::Unreachable { addr: self.authority.clone(), detail: "connection lost".into() })
    }

    /// A JSON call: 2xx answers parsed, others turned into [`HubClientError::Api`].
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, HubClientError> {
        let (status, bytes) = self.call(method, path, token, body).await?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| HubClientError::BadAnswer(format!("{status}: {e}")))?
        };
        if status.is_success() {
            return Ok(v);
        }
        Err(HubClientError::Api {
            status: status.as_u16(),
            code: v["error"].as_str().unwrap_or("unknown").to_string(),
            message: v["message"].as_str().unwrap_or("no reason given").to_string(),
        })
    }
}
