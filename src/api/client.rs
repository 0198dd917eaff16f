//! An HTTPS JSON client for the hub's API: used by `tether login`/`devices`/
//! `connect`… and by relays for their reports (with a client certificate).
//! One kept-alive HTTP/1.1 connection, re-dialled when it breaks.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::ApiErrorBody;
use crate::tls::{self, TlsError};

/// Why a call to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    #[error("hub url {0:?}: expected https://HOST[:PORT]")]
    BadUrl(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `tls_refused`: the TLS handshake failed on a certificate (the hub
    /// refused ours, or we the hub's): trying again at once will not help.
    #[error("cannot reach the hub at {addr}: {detail}")]
    Unreachable { addr: String, detail: String, tls_refused: bool },
    #[error("hub refused ({status}): {message}")]
    Api { status: u16, code: String, message: String },
    #[error("hub answer is not what was expected: {0}")]
    BadAnswer(String),
}

impl HubClientError {
    /// Whether the hub and this client refused each other's certificates
    /// (revoked, expired, another CA): a retry waits for someone to fix it.
    pub fn tls_refused(&self) -> bool {
        matches!(self, HubClientError::Unreachable { tls_refused: true, .. })
    }

    /// The hub's stable error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            HubClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A non-2xx answer, from its status and body.
    pub fn from_answer(status: StatusCode, body: &[u8]) -> HubClientError {
        let e: ApiErrorBody = serde_json::from_slice(body).unwrap_or_default();
        HubClientError::Api {
            status: status.as_u16(),
            code: if e.error.is_empty() { "unknown".into() } else { e.error },
            message: if e.message.is_empty() { "no reason given".into() } else { e.message },
        }
    }
}

pub struct HubClient {
    authority: String,
    server_name: String,
    tls: Arc<ClientConfig>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// A kept-alive connection: the request side, and the task that drives it
/// (whose error says why the connection ended).
struct Conn {
    send: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` and the host of an `https://` URL (port 443 by default).
fn authority_of(url: &str) -> Option<(String, String)> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let host = uri.host().filter(|h| !h.is_empty())?;
    let port = uri.port_u16().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let authority = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
    Some((authority, bare))
}

impl HubClient {
    /// `url` is `https://host[:port]`; `server_name` overrides the name checked
    /// in the hub's certificate.
    pub fn new(
        url: &str,
        ca: &Path,
        client_cert: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<HubClient, HubClientError> {
        HubClient::with_crl(url, (ca, None), client_cert, server_name)
    }

    /// [`HubClient::new`], refusing a hub whose certificate the CRL revokes.
    pub fn with_crl(
        url: &str,
        (ca, crl): (&Path, Option<&Path>),
        client_cert: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<HubClient, HubClientError> {
        let (authority, host) = authority_of(url).ok_or_else(|| HubClientError::BadUrl(url.into()))?;
        let tls = tls::client_config_with_crl(ca, crl, client_cert, tls::ALPN_HTTP1)?;
        Ok(HubClient {
            authority,
            server_name: server_name.map(str::to_string).unwrap_or(host),
            tls,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn dial(&self) -> Result<Conn, HubClientError> {
        let unreachable = |e: &(dyn std::error::Error + 'static)| self.unreachable(e);
        let stream = tokio::time::timeout(TIMEOUT, tls::dial(&self.authority, &self.server_name, self.tls.clone()))
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| unreachable(&e))?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        Ok(Conn { send, task: tokio::spawn(conn) })
    }

    /// Why a connection failed: the error of the task that drove it when it
    /// has one. A refusal can end that task before the request is handed to
    /// it, and the request then fails with only "connection was not ready".
    async fn failure(
        &self,
        e: hyper::Error,
        task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ) -> HubClientError {
        match tokio::time::timeout(Duration::from_secs(1), task).await {
            Ok(Ok(Err(ended))) => self.unreachable(&ended),
            _ => self.unreachable(&e),
        }
    }

    /// One request with an optional JSON body; returns status and body.
    /// Retries once on a fresh connection when a kept-alive one turns out to be dead.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        json_body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), HubClientError> {
        self.send(method, path, token, json_body, "application/json").await
    }

    /// One request whose body (if any) is of `content_type`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        json_body: Option<Bytes>,
        content_type: &'static str,
    ) -> Result<(StatusCode, Bytes), HubClientError> {
        let (status, _, body) = self.exchange(method, path, token, json_body, content_type).await?;
        Ok((status, body))
    }

    /// [`HubClient::send`], with the answer's headers.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        json_body: Option<Bytes>,
        content_type: &'static str,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), HubClientError> {
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            let (Conn { mut send, task }, reused) = match guard.take() {
                Some(c) if !c.send.is_closed() => (c, true),
                _ => (self.dial().await?, false),
            };
            let mut req = Request::builder().method(method.clone()).uri(path).header("host", &self.authority);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            if json_body.is_some() {
                req = req.header("content-type", content_type);
            }
            let req = req
                .body(Full::new(json_body.clone().unwrap_or_default()))
                .map_err(|e| HubClientError::BadAnswer(e.to_string()))?;
            let result = tokio::time::timeout(TIMEOUT, async {
                let resp = send.send_request(req).await?;
                let (parts, body) = resp.into_parts();
                let bytes = body.collect().await?.to_bytes();
                Ok::<_, hyper::Error>((parts.status, parts.headers, bytes))
            })
            .await;
            match result {
                Ok(Ok(out)) => {
                    *guard = Some(Conn { send, task });
                    return Ok(out);
                }
                // A fresh connection that fails is the hub's answer (a
                // client certificate it refuses fails here, after TLS 1.3's
                // client side is done): not tried again.
                Ok(Err(e)) if attempt == 0 && reused => tracing::debug!(error = %e, "hub connection lost; redialling"),
                Ok(Err(e)) => return Err(self.failure(e, task).await),
                Err(_) => return Err(self.timed_out()),
            }
        }
        Err(HubClientError::Unreachable {
            addr: self.authority.clone(),
            detail: "connection lost".into(),
            tls_refused: false,
        })
    }

    fn timed_out(&self) -> HubClientError {
        HubClientError::Unreachable { addr: self.authority.clone(), detail: "timed out".into(), tls_refused: false }
    }

    /// `e` with its causes; refused when one of them is a TLS certificate
    /// refusal, ours by the hub (an alert) or the hub's by us.
    fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> HubClientError {
        let mut tls_refused = false;
        let mut cause = Some(e);
        while let Some(c) = cause {
            let rustls = c
                .downcast_ref::<rustls::Error>()
                .or_else(|| c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref()));
            if let Some(r) = rustls {
                tls_refused |= matches!(r, rustls::Error::AlertReceived(_) | rustls::Error::InvalidCertificate(_));
            }
            cause = c.source();
        }
        HubClientError::Unreachable { addr: self.authority.clone(), detail: crate::util::with_causes(e), tls_refused }
    }

    /// A call whose 2xx answer is `T` as JSON; other answers become [`HubClientError::Api`].
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<T, HubClientError> {
        let json_body = match body {
            Some(b) => Some(Bytes::from(serde_json::to_vec(b).map_err(|e| HubClientError::BadAnswer(e.to_string()))?)),
            None => None,
        };
        let (status, bytes) = self.call(method, path, token, json_body).await?;
        if !status.is_success() {
            return Err(HubClientError::from_answer(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| HubClientError::BadAnswer(format!("{status}: {e}")))
    }

    /// `GET path`, answered with `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, token: Option<&str>) -> Result<T, HubClientError> {
        self.request::<(), T>(Method::GET, path, token, None).await
    }

    /// `POST path` with `body`, answered with `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> Result<T, HubClientError> {
        self.request(Method::POST, path, token, Some(body)).await
    }

    /// `GET path` answered with text (the audit export's JSON lines).
    pub async fn text(&self, path: &str, token: Option<&str>) -> Result<String, HubClientError> {
        let (status, body) = self.call(Method::GET, path, token, None).await?;
        if !status.is_success() {
            return Err(HubClientError::from_answer(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

#[cfg(test)]
mod tests;
