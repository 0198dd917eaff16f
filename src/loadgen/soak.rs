//! Soak: many concurrent sessions, each with one tunnelled connection that
//! echoes a numbered, verifiable chunk at a steady pace, for a long time.
//! Relays may be killed and restarted meanwhile (`benches/soak.sh` does); every
//! byte must come back intact and in order. Prints a line per period and a
//! summary with the round trips that stalled (a failover pause) at the end.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::client::{ClientSession, GrantSource};

/// `tether loadgen soak` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Concurrent sessions, one tunnelled connection each.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// How long to run once every session is open.
    #[arg(long, default_value_t = 3600)]
    pub seconds: u64,
    /// Each connection sends one chunk per period and waits for its echo.
    #[arg(long, default_value_t = 5000)]
    pub period_ms: u64,
    #[arg(long, default_value_t = 4096)]
    pub chunk: usize,
    /// A round trip slower than this is counted as a pause.
    #[arg(long, default_value_t = 250)]
    pub pause_ms: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 30)]
    pub report_secs: u64,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    verified: AtomicU64,
    round_trips: AtomicU64,
    /// Connections that broke (bytes in flight lost) or echoed wrong bytes.
    lost: AtomicU64,
    corrupt: AtomicU64,
    sessions_ended: AtomicU64,
    pauses: std::sync::Mutex<Vec<Duration>>,
}

/// A chunk whose every byte depends on the session, the round and the offset.
fn pattern(session: usize, round: u64, len: usize) -> Vec<u8> {
    let mut x = (session as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn run(profile: &std::path::Path, device: &str, service: &str, a: SoakArgs) -> Result<()> {
    let p = super::load_profile(profile)?;
    let source = Arc::new(GrantSource::from_profile(&p, Some("loadgen: soak"))?);
    let tally = Arc::new(Tally::default());
    eprintln!("opening {} sessions to {device}/{service}...", a.sessions);
    let opened = Instant::now();
    let gate = Arc::new(Semaphore::new(16));
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..a.sessions {
        let (p, source, gate, device, service) =
            (p.clone(), source.clone(), gate.clone(), device.to_string(), service.to_string());
        opening.spawn(async move {
            let _slot = gate.acquire_owned().await;
            let s = ClientSession::open_with(&p, &source, &device, &service).await.context("opening a session")?;
            let t = s.connect().await.context("opening its connection")?;
            anyhow::Ok((i, s, t))
        });
    }
    let mut live = Vec::with_capacity(a.sessions);
    while let Some(r) = opening.join_next().await {
        live.push(r??);
    }
    eprintln!("{} sessions open in {:.1} s; soaking for {} s", live.len(), opened.elapsed().as_secs_f64(), a.seconds);
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sessions = Vec::new();
    for (i, s, t) in live {
        sessions.push(s.clone());
        tasks.spawn(drive(i, s, t, a.clone(), tally.clone(), end.into()));
    }
    let reporter = tokio::spawn(report(tally.clone(), start, Duration::from_secs(a.report_secs.max(1))));
    while tasks.join_next().await.is_some() {}
    reporter.abort();
    for s in &sessions {
        s.close();
    }
    summary(&tally, start.elapsed(), a.sessions)
}

/// One connection's life: a numbered chunk per period, each checked on return.
async fn drive(
    i: usize,
    session: Arc<ClientSession>,
    mut t: crate::client::Tunnel,
    a: SoakArgs,
    tally: Arc<Tally>,
    end: tokio::time::Instant,
) {
    let period = Duration::from_millis(a.period_ms.max(10));
    // Spread the connections over the period so the load is even.
    let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    let mut round = 0u64;
    let mut back = vec![0u8; a.chunk];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
        }
        if tokio::time::Instant::now() >= end {
            break;
        }
        round += 1;
        let out = pattern(i, round, a.chunk);
        let began = Instant::now();
        let trip = async {
            t.write_all(&out).await?;
            t.flush().await?;
            t.read_exact(&mut back).await?;
            std::io::Result::Ok(())
        };
        let r = tokio::time::timeout(Duration::from_secs(120), trip).await;
        tally.sent.fetch_add(a.chunk as u64, Relaxed);
        match r {
            Ok(Ok(())) if back == out => {
                tally.verified.fetch_add(a.chunk as u64, Relaxed);
                tally.round_trips.fetch_add(1, Relaxed);
                let took = began.elapsed();
                if took >= Duration::from_millis(a.pause_ms) {
                    crate::util::lock(&tally.pauses).push(took);
                }
                continue;
            }
            Ok(Ok(())) => {
                tally.corrupt.fetch_add(1, Relaxed);
                eprintln!("session {i}: round {round} echoed different bytes");
            }
            Ok(Err(e)) => {
                tally.lost.fetch_add(1, Relaxed);
                eprintln!("session {i}: connection lost in round {round}: {e}");
            }
            Err(_) => {
                tally.lost.fetch_add(1, Relaxed);
                eprintln!("session {i}: round {round} had no echo within 120 s");
            }
        }
        // Carry on with a new connection (the loss is counted) unless the session ended.
        if let Some(reason) = session.end_reason() {
            tally.sessions_ended.fetch_add(1, Relaxed);
            eprintln!("session {i} ended: {reason:?}");
            return;
        }
        match session.connect().await {
            Ok(n) => t = n,
            Err(e) => {
                tally.sessions_ended.fetch_add(1, Relaxed);
                eprintln!("session {i}: cannot reconnect: {e}");
                return;
            }
        }
    }
    let _ = t.shutdown().await;
}

async fn report(tally: Arc<Tally>, start: Instant, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let pauses = crate::util::lock(&tally.pauses).clone();
        let longest = pauses.iter().max().copied().unwrap_or_default();
        eprintln!(
            "[{:>5.0} s] round trips {}, verified {:.1} MiB, lost connections {}, corrupt {}, ended sessions {}, \
             pauses {} (longest {:.2} s)",
            start.elapsed().as_secs_f64(),
            tally.round_trips.load(Relaxed),
            tally.verified.load(Relaxed) as f64 / 1048576.0,
            tally.lost.load(Relaxed),
            tally.corrupt.load(Relaxed),
            tally.sessions_ended.load(Relaxed),
            pauses.len(),
            longest.as_secs_f64()
        );
    }
}

fn summary(tally: &Tally, took: Duration, sessions: usize) -> Result<()> {
    let pauses = crate::util::lock(&tally.pauses).clone();
    let (lost, corrupt, ended) =
        (tally.lost.load(Relaxed), tally.corrupt.load(Relaxed), tally.sessions_ended.load(Relaxed));
    println!(
        "soak: {sessions} sessions for {:.0} s: {} round trips, {:.1} MiB sent, {:.1} MiB verified, \
         lost connections {lost}, corrupt echoes {corrupt}, ended sessions {ended}",
        took.as_secs_f64(),
        tally.round_trips.load(Relaxed),
        tally.sent.load(Relaxed) as f64 / 1048576.0,
        tally.verified.load(Relaxed) as f64 / 1048576.0,
    );
    match super::summary(pauses) {
        Ok(s) => println!("paused round trips: {s}"),
        Err(_) => println!("paused round trips: none"),
    }
    if lost + corrupt + ended > 0 {
        bail!("soak lost data: {lost} connections lost, {corrupt} corrupt echoes, {ended} sessions ended");
    }
    Ok(())
}
