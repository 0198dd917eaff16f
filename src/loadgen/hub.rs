//! Hub benchmarks against a running system (`tether dev`): session setup
//! through the hub, and session requests per second.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::api::{Me, SessionGranted, SessionRequest};

use crate::client::hub::HubSession;
use crate::client::{ClientSession, GrantSource};

/// `POST /sessions` → session open at the relay → first byte back from the device.
pub async fn setup(profile: &std::path::Path, device: &str, service: &str, count: usize) -> Result<()> {
    let p = super::load_profile(profile)?;
    let source = GrantSource::from_profile(&p, Some("loadgen: session setup"))?;
    // Log in (dev profile) before timing: the target excludes the login.
    if let GrantSource::Hub { hub, .. } = &source {
        let _: Me = hub.get("/api/v1/me").await?;
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
    body: Option<SessionRequest>,
) -> Result<(f64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let first = Arc::new(HubSession::from_profile(p)?);
    let _: Me = first.get("/api/v1/me").await?;
    for i in 0..concurrency {
        // Own connection per task; the token from the first login.
        let hub = if i == 0 {
            first.clone()
        } else {
            Arc::new(HubSession::from_profile(&super::load_profile(
                p.path.as_deref().unwrap_or(std::path::Path::new("")),
            )?)?)
        };
        let (ok, failed, body) = (ok.clone(), failed.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let done = match &body {
                    Some(b) => hub.post::<_, SessionGranted>("/api/v1/sessions", b).await.is_ok(),
                    None => hub.get::<Me>("/api/v1/me").await.is_ok(),
                };
                let counter = if done { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
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
    let p = super::load_profile(profile)?;
    let body = SessionRequest {
        device: device.into(),
        service: service.into(),
        reason: "loadgen: session rate".into(),
        client_key: "00ff".into(),
        ticket: None,
    };
    let (base, base_failed) = rate(&p, concurrency, secs, None).await?;
    let (got, failed) = rate(&p, concurrency, secs, Some(body)).await?;
    println!(
        "hub, {concurrency} connections, {secs} s each: POST /sessions {got:.0}/s ({failed} failed); \
         baseline GET /me {base:.0}/s ({base_failed} failed); ratio {:.2}",
        got / base.max(1.0)
    );
    Ok(())
}
