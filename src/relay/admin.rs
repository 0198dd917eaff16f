//! Admin HTTP (17090): `/metrics`, `/healthz`, `/readyz`, served by hyper;
//! one request per connection, bounded in time.
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::state::State;

/// A request and its answer must be done within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Some((tcp, _)) = crate::util::net::accept(&listener, "admin", &state.drain).await else { return };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &state);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
}

fn answer(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let ready = state.ready.load(Ordering::Relaxed) && !state.shutdown.is_cancelled();
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            crate::metrics::RELAY_READY.set(ready.into());
            (StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if ready => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}
