//! HTTPS plumbing: TLS 1.3 (client certificates optional: relays present
//! theirs), HTTP/1.1 via hyper, bounded bodies, JSON answers.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::HubConfig;
use crate::api::Route;
use crate::tls::{self, TlsError};
use crate::util::proxy::{self, ProxyTrust};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The hub's TLS: a client certificate is optional (relays present theirs)
/// and of any role here; [`Peer::relay`] checks that it is a relay's.
pub fn server_config(cfg: &HubConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let trust = tls::Trust::get(&cfg.ca, cfg.crl.as_deref())?;
    let verifier = trust.client_verifier(None, false);
    let mut c = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls::load_certs(&cfg.cert)?, tls::load_key(&cfg.key)?)?;
    c.session_storage = tls::ServerSessions::new(trust);
    c.alpn_protocols = vec![tls::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(c))
}

/// Who is on the other end of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Common name of a verified client certificate (relays).
    pub cert_name: Option<String>,
    /// The role that certificate names.
    pub cert_role: Option<tls::Role>,
    /// That certificate (DER).
    pub cert: Option<Vec<u8>>,
}

impl Peer {
    /// The relay name of a verified relay certificate.
    pub fn relay(&self) -> Option<&str> {
        self.cert_name.as_deref().filter(|_| self.cert_role == Some(tls::Role::Relay))
    }
}

pub type Answer = Response<Full<Bytes>>;

/// A refusal as the peer sees it: status, a stable code, a sentence.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

pub fn json_answer<T: serde::Serialize>(status: StatusCode, v: &T) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

pub fn error_answer(e: &ApiError) -> Answer {
    let body = crate::api::ApiErrorBody { error: e.code.to_string(), message: e.message.clone() };
    let mut r = json_answer(e.status, &body);
    if e.status == StatusCode::TOO_MANY_REQUESTS
        && let Some(secs) = e.message.split_whitespace().find_map(|w| w.parse::<u64>().ok())
        && let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

pub fn text_answer(status: StatusCode, ctype: &'static str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}

/// An oversize body up to this many bytes is read and dropped before the
/// 413 (see [`body`]); a larger one is refused at once.
const DRAIN_OVERSIZE: usize = 1 << 20;

/// The body, bounded by `max` bytes and `within` time: 413 past the size,
/// 408 when it trickles in too slowly, 400 when unreadable.
pub async fn body(req: Request<Incoming>, max: usize, within: Duration) -> Result<Bytes, ApiError> {
    let too_big =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("request body over {max} bytes"));
    let declared =
        req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > max) {
        // Read (and drop) a modest oversize body first: answering while the
        // client still sends closes the connection with bytes unread, and the
        // kernel's reset then destroys the 413 before the client reads it.
        if n <= DRAIN_OVERSIZE {
            let mut rest = req.into_body();
            let drain = async { while let Some(Ok(_)) = rest.frame().await {} };
            let _ = tokio::time::timeout(within, drain).await;
        }
        return Err(too_big());
    }
    let collected = tokio::time::timeout(within, Limited::new(req.into_body(), max).collect()).await.map_err(|_| {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", format!("the request body took over {within:?}"))
    })?;
    match collected {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_big()),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read the body: {e}"))),
    }
}

/// Parses a JSON body into `T`: 400 naming what is wrong.
/// The value of query parameter `name`, as sent.
pub fn query<'a, B>(req: &'a hyper::Request<B>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

pub fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", format!("malformed JSON body: {e}")))
}

/// The reason counted for a connection closed before its first byte.
const CLOSED_EARLY: &str = "closed_early";

/// A connection's handshake: the PROXY v2 header first when it comes from a
/// trusted balancer (its source is the peer from then on), then TLS. A PROXY
/// header from anyone else is refused by name. A connection that ends before
/// its first byte, or before its first byte after the header (a balancer's
/// health check: HAProxy's sends a `LOCAL` header and resets), is
/// [`CLOSED_EARLY`]. Errors carry the peer, the refusal label and why.
async fn handshake(
    mut tcp: TcpStream,
    tcp_addr: SocketAddr,
    via_balancer: bool,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Result<(TlsStream<TcpStream>, SocketAddr), (SocketAddr, &'static str, String)> {
    let first = first_byte(&tcp, tcp_addr).await?;
    let addr = if via_balancer {
        let addr = proxy::read_header(&mut tcp, tcp_addr).await.map_err(|e| (tcp_addr, e.label(), e.to_string()))?;
        first_byte(&tcp, addr).await?;
        addr
    } else if proxy::looks_like_header(&[first]) {
        return Err((tcp_addr, proxy::FORGED, "a PROXY header from a source not in proxy_protocol_from".into()));
    } else {
        tcp_addr
    };
    match acceptor.accept(tcp).await {
        Ok(s) => Ok((s, addr)),
        Err(e) => Err((addr, tls::handshake_failure_label(&e), e.to_string())),
    }
}

/// The connection's next byte, left unread; its end or a reset first is
/// [`CLOSED_EARLY`].
async fn first_byte(tcp: &TcpStream, addr: SocketAddr) -> Result<u8, (SocketAddr, &'static str, String)> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => Err((addr, CLOSED_EARLY, "closed before its first byte".into())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Err((addr, CLOSED_EARLY, "reset before its first byte".into()))
        }
        Err(e) => Err((addr, "io", e.to_string())),
        Ok(_) => Ok(first[0]),
    }
}

/// Serves HTTPS on `listener` until `stop`, answering each request with `handler`.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    (tls, trust): (Arc<ServerConfig>, Arc<tls::Trust>),
    (max_connections, balancers): (usize, ProxyTrust),
    drops: Arc<crate::util::DropTally>,
    handler: H,
    stop: CancellationToken,
) where
    H: Fn(Request<Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let tracker = tokio_util::task::TaskTracker::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    // Refusals logged one by one (all are counted, and audited in aggregate).
    let told = Arc::new(crate::util::RefusalBudget::default());
    loop {
        let Some((tcp, tcp_addr)) = crate::util::net::accept(&listener, "hub", &stop).await else { break };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            crate::metrics::HUB_REFUSALS.with_label_values(&["max_connections"]).inc();
            drops.add(tcp_addr.ip(), "max_connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handler, stop, drops, told) =
            (acceptor.clone(), handler.clone(), stop.clone(), drops.clone(), told.clone());
        let (trust, via_balancer) = (trust.clone(), balancers.trusts(tcp_addr.ip()));
        tracker.spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, tcp_addr, via_balancer, &acceptor));
            let (stream, addr) = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err((addr, label, why))) => {
                    crate::metrics::HUB_REFUSALS.with_label_values(&[label]).inc();
                    // A balancer's TCP check refused nothing: counted, and
                    // neither audited nor logged above debug.
                    if label == CLOSED_EARLY {
                        return tracing::debug!(peer = %addr, why, "hub connection closed before TLS");
                    }
                    if told.one_by_one(addr.ip()) {
                        tracing::info!(peer = %addr, reason = label, why, "hub connection refused before TLS completed");
                    } else {
                        tracing::debug!(peer = %addr, reason = label, why, "hub connection refused before TLS completed");
                    }
                    return drops.add(addr.ip(), label);
                }
                Err(_) => {
                    crate::metrics::HUB_REFUSALS.with_label_values(&["handshake_timeout"]).inc();
                    return drops.add(tcp_addr.ip(), "handshake_timeout");
                }
            };
            tls::count_handshake("hub", stream.get_ref().1);
            let certs = stream.get_ref().1.peer_certificates();
            let cert = certs.and_then(|c| c.first()).map(|c| c.to_vec());
            let revoked = trust.watch(cert.as_deref());
            let cert_role = cert.as_deref().and_then(tls::Role::of);
            let peer = Peer { addr, cert_name: tls::peer_common_name(certs), cert_role, cert };
            let service = hyper::service::service_fn(move |req| {
                let (handler, peer) = (handler.clone(), peer.clone());
                async move {
                    let started = Instant::now();
                    let path = req.uri().path();
                    let route = if path == "/" || path.starts_with("/console") {
                        "console"
                    } else {
                        Route::label(Route::of(req.method().as_str(), path))
                    };
                    let answer = handler(req, peer).await;
                    crate::metrics::HUB_REQUESTS.with_label_values(&[route, answer.status().as_str()]).inc();
                    crate::metrics::HUB_REQUEST_SECONDS.observe(started.elapsed().as_secs_f64());
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // A relay whose certificate a reloaded CRL revokes is cut off
                // (counted, and audited in the hub's aggregate drop record).
                _ = revoked => {
                    crate::metrics::PEERS_REVOKED.with_label_values(&["relay"]).inc();
                    crate::metrics::HUB_REFUSALS.with_label_values(&["cert_revoked"]).inc();
                    tracing::warn!(peer = %addr, "certificate revoked while connected: dropping");
                    drops.add(addr.ip(), "cert_revoked");
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}
