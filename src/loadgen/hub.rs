//! Hub benchmarks against a running system (`tether dev`): session setup
//! through the hub, and session requests per second.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::json;

use crate::client::hub::HubSession;
use crate::client::{ClientSession, GrantSource};

/// `POST /sessions` → session open at the relay → first byte back from the device.
pub async fn setup(profile: &std::path::Path, device: &str, service: &str, count: usize) -> Result<()> {
    let p = crate::client::cli::load(profile)?;
    let source = GrantSource::from_profile(&p, Some("loadgen: session setup"))?;
    // Log in (dev profile) before timing: the target excludes the login.
    if let GrantSource::Hub { hub, .. } = &source {
        hub.call(Method::GET, "/api/v1/me", None).await?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count.min(100_000) {
        let start = Instant::now();
        let session = ClientSession::open_with(&p, &source, device, service).await.context("opening the session")?;
        super::first_byte(&session).await?;
        samples.push(start.elapsed());
        session.close();
    }
    println!("POST /sessions -> first byte from {device}/{service}, {}", super::summary(samples)?);
    Ok(())
}

async fn rate(
    p: &crate::client::Profile,
    concurrency: usize,
    secs: u64,
    body: Option<serde_json::Value>,
    path: &str,
) -> Result<(f64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let first = Arc::new(HubSession::from_profile(p)?);
    first.call(Method::GET, "/api/v1/me", None).await?;
    for i in 0..concurrency {
        // Own connection per task; the token from the first login.
        let hub = if i == 0 {
            first.clone()
        } else {
            Arc::new(HubSession::from_profile(&crate::client::cli::load(
                p.path.as_deref().unwrap_or(std::path::Path::new("")),
            )?)?)
        };
        let (ok, failed, body, path) = (ok.clone(), failed.clone(), body.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let method = if body.is_some() { Method::POST } else { Method::GET };
                match hub.call(method, &path, body.as_ref()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    Ok((ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed)))
}

/// Session requests per second, against `GET /me` (TLS, HTTP, token check) as baseline.
pub async fn sessions(
    profile: &std::path::Path,
    device: &str,
    service: &str,
    concurrency: usize,
    secs: u64,
) -> Result<()> {
    let p = crate::client::cli::load(profile)?;
    let body = json!({"device": device, "service": service, "reason": "loadgen: session rate", "client_key": "00ff"});
    let (base, base_failed) = rate(&p, concurrency, secs, None, "/api/v1/me").await?;
    let (got, failed) = rate(&p, concurrency, secs, Some(body), "/api/v1/sessions").await?;
    println!(
        "hub, {concurrency} connections, {secs} s each: POST /sessions {got:.0}/s ({failed} failed); \
         baseline GET /me {base:.0}/s ({base_failed} failed); ratio {:.2}",
        got / base.max(1.0)
    );
    Ok(())
}
