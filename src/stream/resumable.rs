//! Resumable tunnels: the I/O around [`super::resume`].
//!
//! The end-to-end TLS of a tunnelled connection runs over one end of an
//! in-memory pipe; a driver task owns the other end and a leg. It numbers the
//! bytes, keeps what the peer has not acknowledged, and when the leg breaks
//! (error, EOF without FIN, or silence past `dead_after`) it takes a new leg
//! from its [`LegSource`] (the client dials the twin; the agent is handed the
//! leg the relay asked it to dial), proves itself with a MAC under a key
//! exported from the end-to-end TLS session, and resumes from the peer's last
//! received byte. The applications see a pause, not an error.
//!
//! Wire, inside a leg: `u8 type` then `DATA seq:u64 len:u32 bytes`,
//! `ACK upto:u64` (bytes *delivered*; `fin+1` confirms the FIN), `FIN at:u64`,
//! `RESUME next:u64 mac:[32]`, `PING`, `PONG`.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Prefixed;
use super::resume::{Inbound, Outbound};
use crate::leg::Leg;

const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;
const RESUME: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;
/// Largest DATA payload.
pub const MAX_DATA: usize = 32 * 1024;

/// Tuning of a resumable stream.
#[derive(Debug, Clone, Copy)]
pub struct ResumeConfig {
    /// Most bytes kept unacknowledged per direction (back-pressure bound).
    pub cap: usize,
    /// Liveness probe interval when the leg is otherwise quiet.
    pub ping: Duration,
    /// A leg silent this long is dead (a frozen relay sends no FIN or RST).
    pub dead_after: Duration,
    /// Give up when no new leg could be had within this.
    pub resume_deadline: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            cap: 8 << 20,
            ping: Duration::from_millis(500),
            dead_after: Duration::from_millis(2000),
            resume_deadline: Duration::from_secs(30),
        }
    }
}

/// Which end this is (binds the resume MAC to a direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Device,
}

type LegFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<(Leg, Bytes)>> + Send + 'a>>;

/// Where replacement legs come from.
pub trait LegSource: Send {
    fn next_leg(&mut self) -> LegFuture<'_>;
}

/// What a stream reports as it happens.
#[derive(Debug, Clone)]
pub enum ResumeEvent {
    /// Resumed on a new leg: the pause since the old leg was last heard, and
    /// the bytes sent again.
    Resumed { pause: Duration, retransmitted: u64 },
    /// A replacement leg failed its resume (wrong MAC, silence, protocol).
    Refused { why: String },
}

/// Receives [`ResumeEvent`]s.
pub type OnEvent = Box<dyn Fn(ResumeEvent) + Send + Sync>;

/// The resume key, set once the end-to-end TLS handshake is done.
pub type ResumeKey = Arc<OnceLock<[u8; 32]>>;

/// Statistics of one stream, for metrics and audit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub resumes: u64,
    pub retransmitted: u64,
    /// The longest pause between a leg breaking and the next one resuming.
    pub max_pause: Duration,
}

struct Book {
    out: Outbound,
    inb: Inbound,
    /// Received, not yet delivered to the application (chunks as they came).
    pending: std::collections::VecDeque<Bytes>,
    delivered: u64,
    fin_out: Option<u64>,
    fin_acked: bool,
    fin_in: Option<u64>,
    fin_delivered: bool,
    /// Per leg: what we told this leg already.
    acked_sent: u64,
    fin_sent: bool,
    pong_due: bool,
    last_heard: Instant,
    stats: Stats,
}

struct Shared {
    book: Mutex<Book>,
    /// Something to send (data, ack, fin, pong).
    to_send: Notify,
    /// Something to deliver, or the FIN.
    to_deliver: Notify,
    /// Room for more application bytes (acks arrived).
    room: Notify,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        match self.book.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Starts a resumable stream over `first` (with bytes already read past its
/// preamble) and returns the application's end of it, plus a handle that
/// reports statistics when the stream is over.
pub fn start(
    first: (Leg, Bytes),
    side: Side,
    conn: u32,
    key: ResumeKey,
    source: Box<dyn LegSource>,
    cfg: ResumeConfig,
    on_event: Option<OnEvent>,
) -> (DuplexStream, tokio::task::JoinHandle<Result<Stats, String>>) {
    let (app, ours) = tokio::io::duplex(256 * 1024);
    let shared = Arc::new(Shared {
        book: Mutex::new(Book {
            out: Outbound::new(cfg.cap),
            inb: Inbound::new(),
            pending: std::collections::VecDeque::new(),
            delivered: 0,
            fin_out: None,
            fin_acked: false,
            fin_in: None,
            fin_delivered: false,
            acked_sent: 0,
            fin_sent: false,
            pong_due: false,
            last_heard: Instant::now(),
            stats: Stats::default(),
        }),
        to_send: Notify::new(),
        to_deliver: Notify::new(),
        room: Notify::new(),
    });
    let (app_r, app_w) = tokio::io::split(ours);
    let task = tokio::spawn(async move {
        let legs = manage_legs(&shared, first, side, conn, &key, source, cfg, on_event);
        tokio::select! {
            r = legs => r?,
            r = read_app(&shared, app_r) => r?,
            r = deliver(&shared, app_w) => r?,
        }
        Ok(shared.book().stats)
    });
    (app, task)
}

/// Application -> outbound buffer, as room allows. Never cancelled mid-way.
async fn read_app(sh: &Shared, mut app: ReadHalf<DuplexStream>) -> Result<(), String> {
    let mut buf = BytesMut::new();
    loop {
        let room = sh.book().out.room();
        if room == 0 {
            sh.room.notified().await;
            continue;
        }
        // Read straight into a chunk that is kept as it is (no second copy).
        let want = room.min(64 * 1024);
        buf.reserve(want);
        let n = (&mut app).take(want as u64).read_buf(&mut buf).await.map_err(|e| format!("application side: {e}"))?;
        {
            let mut b = sh.book();
            if n == 0 {
                b.fin_out = Some(b.out.written());
            } else {
                b.out.write_bytes(buf.split().freeze());
            }
        }
        sh.to_send.notify_one();
        if n == 0 {
            // Half-closed by the application; the other direction goes on.
            return std::future::pending().await;
        }
    }
}

/// Received bytes -> application, then its FIN. Never cancelled mid-way.
async fn deliver(sh: &Shared, mut app: WriteHalf<DuplexStream>) -> Result<(), String> {
    loop {
        let (chunk, fin_now) = {
            let b = sh.book();
            let chunk = b.pending.front().cloned().unwrap_or_default();
            (chunk, !b.fin_delivered && b.fin_in.is_some_and(|at| at == b.delivered))
        };
        if chunk.is_empty() {
            if fin_now {
                let _ = app.shutdown().await;
                sh.book().fin_delivered = true;
                sh.to_send.notify_one();
            }
            sh.to_deliver.notified().await;
            continue;
        }
        app.write_all(&chunk).await.map_err(|e| format!("application side: {e}"))?;
        {
            let mut b = sh.book();
            b.pending.pop_front();
            b.delivered += chunk.len() as u64;
        }
        sh.to_send.notify_one();
    }
}

fn mac(key: &[u8; 32], side: Side, conn: u32, next: u64) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(match side {
        Side::Client => b"tether resume client",
        Side::Device => b"tether resume device",
    });
    ctx.update(&conn.to_be_bytes());
    ctx.update(&next.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

enum LegEnd {
    Done,
    Broken(String),
}

#[allow(clippy::too_many_arguments)]
async fn manage_legs(
    sh: &Shared,
    first: (Leg, Bytes),
    side: Side,
    conn: u32,
    key: &ResumeKey,
    mut source: Box<dyn LegSource>,
    cfg: ResumeConfig,
    on_event: Option<OnEvent>,
) -> Result<(), String> {
    let report = |e: ResumeEvent| {
        if let Some(f) = &on_event {
            f(e)
        }
    };
    let mut leg = first;
    let mut resuming = false;
    let mut last_heard = Instant::now();
    loop {
        let (stream, prefix) = leg;
        let stream = Prefixed::new(prefix, stream);
        let (mut lr, mut lw) = tokio::io::split(stream);
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        {
            let mut b = sh.book();
            b.acked_sent = 0;
            b.fin_sent = false;
            b.last_heard = Instant::now();
        }
        let end = if resuming {
            let sent_before = sh.book().stats.retransmitted;
            match handshake(sh, &mut lr, &mut lw, &mut rbuf, side, conn, key, cfg).await {
                Ok(()) => {
                    let (pause, again) = {
                        let mut b = sh.book();
                        b.stats.resumes += 1;
                        let pause = last_heard.elapsed();
                        b.stats.max_pause = b.stats.max_pause.max(pause);
                        (pause, b.stats.retransmitted - sent_before)
                    };
                    report(ResumeEvent::Resumed { pause, retransmitted: again });
                    None
                }
                Err(e) => {
                    report(ResumeEvent::Refused { why: e.clone() });
                    Some(LegEnd::Broken(e))
                }
            }
        } else {
            None
        };
        let end = match end {
            Some(e) => e,
            None => {
                sh.to_send.notify_one();
                sh.room.notify_one();
                tokio::select! {
                    r = read_leg(sh, &mut lr, &mut rbuf) => r,
                    r = write_leg(sh, &mut lw, cfg) => r,
                    r = watch(sh, cfg) => r,
                }
            }
        };
        match end {
            LegEnd::Done => {
                let _ = lw.shutdown().await;
                return Ok(());
            }
            LegEnd::Broken(why) => {
                tracing::info!(conn, %why, "leg broken; resuming");
                last_heard = last_heard.max(sh.book().last_heard);
                let started = Instant::now();
                leg = match tokio::time::timeout(cfg.resume_deadline, next_leg(&mut source)).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => return Err(format!("no leg to resume on: {e}")),
                    Err(_) => return Err(format!("no leg to resume on within {:?}", cfg.resume_deadline)),
                };
                let _ = started;
                resuming = true;
            }
        }
    }
}

async fn next_leg(source: &mut Box<dyn LegSource>) -> std::io::Result<(Leg, Bytes)> {
    let mut backoff = crate::util::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match source.next_leg().await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "no leg yet");
                tokio::time::sleep(backoff.next_pause()).await;
            }
        }
    }
}

/// Both ends send RESUME{next, mac} and check the peer's; then the sender
/// rewinds to what the peer has.
#[allow(clippy::too_many_arguments)]
async fn handshake<R, W>(
    sh: &Shared,
    lr: &mut R,
    lw: &mut W,
    rbuf: &mut BytesMut,
    side: Side,
    conn: u32,
    key: &ResumeKey,
    cfg: ResumeConfig,
) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let Some(key) = key.get() else { return Err("leg broke before end-to-end TLS was up".into()) };
    let next = sh.book().inb.resume_from();
    let mut out = BytesMut::new();
    out.put_u8(RESUME);
    out.put_u64(next);
    out.put_slice(&mac(key, side, conn, next));
    lw.write_all(&out).await.map_err(|e| e.to_string())?;
    lw.flush().await.map_err(|e| e.to_string())?;
    let peer = match side {
        Side::Client => Side::Device,
        Side::Device => Side::Client,
    };
    let frame = tokio::time::timeout(cfg.dead_after * 2, async {
        loop {
            if let Some(f) = decode(rbuf)? {
                return Ok(f);
            }
            if lr.read_buf(rbuf).await.map_err(|e| e.to_string())? == 0 {
                return Err("leg closed during resume".to_string());
            }
        }
    })
    .await
    .map_err(|_| "no resume from the peer in time".to_string())??;
    let Wire::Resume { next: peer_next, mac: got } = frame else {
        return Err("expected resume".into());
    };
    if !crate::util::ct_eq(&mac(key, peer, conn, peer_next), &got) {
        return Err("resume MAC is wrong".into());
    }
    let mut b = sh.book();
    let sent = b.out.sent();
    b.out.on_resume(peer_next).map_err(|e| e.to_string())?;
    b.stats.retransmitted += sent.saturating_sub(peer_next);
    b.last_heard = Instant::now();
    Ok(())
}

enum Wire {
    Data { seq: u64, data: Bytes },
    Ack { upto: u64 },
    Fin { at: u64 },
    Resume { next: u64, mac: [u8; 32] },
    Ping,
    Pong,
}

fn decode(buf: &mut BytesMut) -> Result<Option<Wire>, String> {
    let Some(&ty) = buf.first() else { return Ok(None) };
    let need = match ty {
        DATA => {
            if buf.len() < 13 {
                return Ok(None);
            }
            let len = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
            if len > MAX_DATA {
                return Err(format!("data frame of {len} bytes"));
            }
            13 + len
        }
        ACK | FIN => 9,
        RESUME => 41,
        PING | PONG => 1,
        other => return Err(format!("unknown stream frame {other}")),
    };
    if buf.len() < need {
        return Ok(None);
    }
    let mut f = buf.split_to(need).freeze();
    f.advance(1);
    Ok(Some(match ty {
        DATA => {
            let seq = f.get_u64();
            f.advance(4);
            Wire::Data { seq, data: f }
        }
        ACK => Wire::Ack { upto: f.get_u64() },
        FIN => Wire::Fin { at: f.get_u64() },
        RESUME => {
            let next = f.get_u64();
            let mut mac = [0u8; 32];
            f.copy_to_slice(&mut mac);
            Wire::Resume { next, mac }
        }
        PING => Wire::Ping,
        _ => Wire::Pong,
    }))
}

async fn read_leg<R: tokio::io::AsyncRead + Unpin>(sh: &Shared, lr: &mut R, rbuf: &mut BytesMut) -> LegEnd {
    loop {
        loop {
            let f = match decode(rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return LegEnd::Broken(e),
            };
            let mut b = sh.book();
            b.last_heard = Instant::now();
            match f {
                Wire::Data { seq, data } => match b.inb.on_data(seq, data) {
                    Ok(new) => {
                        if !new.is_empty() {
                            b.pending.push_back(new);
                        }
                        drop(b);
                        sh.to_deliver.notify_one();
                    }
                    Err(e) => return LegEnd::Broken(e.to_string()),
                },
                Wire::Ack { upto } => {
                    let fin = b.fin_out;
                    let r = match fin {
                        Some(at) if upto == at + 1 => {
                            b.fin_acked = true;
                            b.out.on_ack(at)
                        }
                        _ => b.out.on_ack(upto),
                    };
                    if let Err(e) = r {
                        return LegEnd::Broken(e.to_string());
                    }
                    drop(b);
                    sh.room.notify_one();
                    sh.to_send.notify_one();
                }
                Wire::Fin { at } => {
                    b.fin_in = Some(at);
                    drop(b);
                    sh.to_deliver.notify_one();
                }
                Wire::Ping => {
                    b.pong_due = true;
                    drop(b);
                    sh.to_send.notify_one();
                }
                Wire::Pong => {}
                Wire::Resume { .. } => return LegEnd::Broken("unexpected resume".into()),
            }
        }
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        match lr.read_buf(rbuf).await {
            Ok(0) => {
                return if is_done(&sh.book()) { LegEnd::Done } else { LegEnd::Broken("leg closed".into()) };
            }
            Ok(_) => {}
            Err(e) => return LegEnd::Broken(e.to_string()),
        }
    }
}

fn is_done(b: &Book) -> bool {
    b.fin_acked && b.fin_delivered && b.acked_sent == b.delivered + 1
}

async fn write_leg<W: tokio::io::AsyncWrite + Unpin>(sh: &Shared, lw: &mut W, cfg: ResumeConfig) -> LegEnd {
    let mut out = BytesMut::with_capacity(128 * 1024);
    let mut ping = tokio::time::interval(cfg.ping);
    ping.tick().await;
    loop {
        // Done once both FINs are through and our last ACK is written: the
        // writer decides, so that ACK is never cut off.
        if is_done(&sh.book()) {
            let _ = lw.flush().await;
            return LegEnd::Done;
        }
        out.clear();
        {
            let mut b = sh.book();
            // Acknowledge what the application has taken (and the FIN once delivered).
            let ack = if b.fin_delivered { b.delivered + 1 } else { b.delivered };
            if ack > b.acked_sent {
                out.put_u8(ACK);
                out.put_u64(ack);
                b.acked_sent = ack;
            }
            if b.pong_due {
                out.put_u8(PONG);
                b.pong_due = false;
            }
            while out.len() < 96 * 1024 {
                let Some((seq, data)) = b.out.next_to_send(MAX_DATA) else { break };
                out.put_u8(DATA);
                out.put_u64(seq);
                out.put_u32(data.len() as u32);
                out.put_slice(&data);
            }
            if let Some(at) = b.fin_out
                && !b.fin_sent
                && b.out.next_to_send(0).is_none()
                && at == b.out.written()
            {
                out.put_u8(FIN);
                out.put_u64(at);
                b.fin_sent = true;
            }
        }
        if out.is_empty() {
            if let Err(e) = lw.flush().await {
                return LegEnd::Broken(e.to_string());
            }
            tokio::select! {
                _ = sh.to_send.notified() => {}
                _ = ping.tick() => {
                    if let Err(e) = lw.write_all(&[PING]).await {
                        return LegEnd::Broken(e.to_string());
                    }
                }
            }
            continue;
        }
        if let Err(e) = lw.write_all(&out).await {
            return LegEnd::Broken(e.to_string());
        }
    }
}

/// Declares the leg dead after `dead_after` of silence (a frozen relay).
async fn watch(sh: &Shared, cfg: ResumeConfig) -> LegEnd {
    loop {
        tokio::time::sleep((cfg.dead_after / 20).max(Duration::from_millis(10))).await;
        let b = sh.book();
        if is_done(&b) {
            // Let the reader see the peer's close.
            drop(b);
            continue;
        }
        if b.last_heard.elapsed() > cfg.dead_after {
            return LegEnd::Broken(format!("leg silent for {:?}", b.last_heard.elapsed()));
        }
    }
}

/// Label and context of the TLS exporter both ends use for the resume key.
pub const EXPORT_LABEL: &[u8] = b"tether resume";
