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
//! The wire is [`crate::proto::stream`]; the bookkeeping is
//! [`super::resume::StreamState`]; this file is only the driver.
mod handshake;
mod write;

pub use write::Hold;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Prefixed;
use super::blocks::Blocks;
use super::pipe::{AppEnd, DriverEnd};
pub use super::resume::Stats;
use super::resume::{Delivery, StreamState, Wake};
use crate::leg::{Leg, SendUnder};
pub use crate::proto::stream::Side;
use handshake::handshake;
use write::write_leg;

/// Tuning of a resumable stream.
#[derive(Debug, Clone, Copy)]
pub struct ResumeConfig {
    /// Most bytes kept unacknowledged per direction (back-pressure bound).
    pub cap: usize,
    /// Liveness probe interval when the leg is otherwise quiet.
    pub ping: Duration,
    /// A leg silent this long is dead (a frozen relay sends no FIN or RST).
    pub dead_after: Duration,
    /// The same before the peer was first heard: a client writes on a new
    /// connection's leg before the relay paired it, and the pairing may take
    /// longer than `dead_after` (the client bounds it itself).
    pub first_silence: Duration,
    /// Give up when no new leg could be had within this.
    pub resume_deadline: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            cap: 8 << 20,
            ping: Duration::from_millis(500),
            dead_after: Duration::from_millis(2000),
            first_silence: Duration::from_millis(2000),
            resume_deadline: Duration::from_secs(30),
        }
    }
}

type LegFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<(Leg, Bytes)>> + Send + 'a>>;

/// Where replacement legs come from.
pub trait LegSource: Send {
    fn next_leg(&mut self) -> LegFuture<'_>;
    /// Why the last try for a leg failed, for the message of a stream that
    /// found none before its deadline (a source that keeps trying says it
    /// here; one that only waits has nothing to say).
    fn last_failure(&self) -> Option<String> {
        None
    }
    /// How to find the QUIC stream under the legs this source (and the
    /// stream's first leg) come in; `None`: the driver writes bytes.
    fn send_under(&self) -> Option<SendUnder> {
        None
    }
    /// Returns when a replacement leg is already here while the current
    /// one still looks alive: the peer resumed on it, so the current leg
    /// leads nowhere, whether or not it has failed yet (a relay killed
    /// between two of our writes). The leg stays for [`Self::next_leg`].
    /// A source that dials its legs has none waiting: it never returns.
    fn replacement(&mut self) -> ReplacementFuture<'_> {
        Box::pin(std::future::pending())
    }
}

/// What [`LegSource::replacement`] returns.
pub type ReplacementFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

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

struct Shared {
    book: Mutex<StreamState>,
    /// Something to send (data, ack, fin, keyed, ping).
    to_send: Notify,
    /// Something to deliver, or the FIN.
    to_deliver: Notify,
    /// Room for more application bytes (acks arrived).
    room: Notify,
    /// The application took received bytes (the receive window has room).
    drained: Notify,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, StreamState> {
        crate::util::lock(&self.book)
    }

    fn wake(&self, w: Wake) {
        if w.deliver {
            self.to_deliver.notify_one();
        }
        if w.room {
            self.room.notify_one();
        }
        if w.send {
            self.to_send.notify_one();
        }
    }
}

/// A stream's first leg.
pub struct FirstLeg {
    pub leg: Leg,
    /// Bytes already read from it past its preamble: the stream's.
    pub read: Bytes,
    /// Our side's last frame before the stream (the client's join), not yet
    /// written: it goes with the stream's first bytes in one write, one
    /// packet on a QUIC leg and one TLS record on a TCP one, instead of a
    /// packet of its own that every hop then forwards, acknowledges and
    /// wakes for.
    pub greeting: Bytes,
    /// Whether the greeting waits for the stream's first bytes; without,
    /// it goes at once, alone if the stream has nothing yet.
    pub hold: Option<Hold>,
}

impl From<(Leg, Bytes)> for FirstLeg {
    fn from((leg, read): (Leg, Bytes)) -> FirstLeg {
        FirstLeg { leg, read, greeting: Bytes::new(), hold: None }
    }
}

/// Starts a resumable stream over `first` and returns the application's end
/// of it, plus a handle that reports statistics when the stream is over.
pub fn start(
    first: FirstLeg,
    side: Side,
    conn: u32,
    key: ResumeKey,
    source: Box<dyn LegSource>,
    cfg: ResumeConfig,
    on_event: Option<OnEvent>,
) -> (AppEnd, tokio::task::JoinHandle<Result<Stats, String>>) {
    let (app, ours) = super::pipe::pipe(256 * 1024);
    let shared = Arc::new(Shared {
        book: Mutex::new(StreamState::new(cfg.cap, Instant::now())),
        to_send: Notify::new(),
        to_deliver: Notify::new(),
        room: Notify::new(),
        drained: Notify::new(),
    });
    let task = tokio::spawn(async move {
        let legs = manage_legs(&shared, first, side, conn, &key, source, cfg, on_event);
        tokio::select! {
            // What the application wrote is in the book before the leg's
            // writer looks: a new connection's first bytes leave with the
            // greeting, and an application's last bytes with its FIN.
            biased;
            r = read_app(&shared, &ours, &key) => r?,
            r = deliver(&shared, &ours) => r?,
            r = legs => r?,
        }
        Ok(shared.book().stats())
    });
    (app, task)
}

/// Application -> outbound buffer, as room allows. Never cancelled mid-way.
/// A resume key set by then is announced (KEYED) with these bytes, not
/// at the watch's next look, up to 100 ms later in a packet of its own.
async fn read_app(sh: &Shared, app: &DriverEnd, key: &ResumeKey) -> Result<(), String> {
    loop {
        let room = sh.book().room();
        if room == 0 {
            sh.room.notified().await;
            continue;
        }
        // What the application wrote becomes the outbound chunk as it is.
        let chunk = app.take(room).await;
        let closed = chunk.is_none();
        {
            let mut b = sh.book();
            if key.get().is_some() {
                b.set_keyed();
            }
            match chunk {
                Some(c) => b.app_wrote(c),
                None => b.app_closed(),
            }
        }
        sh.to_send.notify_one();
        if closed {
            // Half-closed by the application; the other direction goes on.
            return std::future::pending().await;
        }
    }
}

/// Received bytes -> application, then its FIN. Never cancelled mid-way.
async fn deliver(sh: &Shared, app: &DriverEnd) -> Result<(), String> {
    loop {
        let next = sh.book().next_delivery();
        match next {
            Delivery::Chunk(chunk) => {
                app.give(chunk).await.map_err(|e| format!("application side: {e}"))?;
                sh.book().chunk_delivered();
                sh.to_send.notify_one();
                sh.drained.notify_one();
            }
            Delivery::Fin => {
                app.finish();
                sh.book().fin_delivered();
                sh.to_send.notify_one();
                sh.to_deliver.notified().await;
            }
            Delivery::Nothing => sh.to_deliver.notified().await,
        }
    }
}

enum LegEnd {
    Done,
    Broken(String),
    /// A held greeting's stand-in was written: the stream never started.
    Refused,
}

#[allow(clippy::too_many_arguments)]
async fn manage_legs(
    sh: &Shared,
    first: FirstLeg,
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
    let FirstLeg { leg: first, read, greeting, hold } = first;
    let mut greeting = write::Greeting::new(greeting, hold);
    let mut leg = (first, read);
    let mut resuming = false;
    let mut last_heard = Instant::now();
    // One receive and one send buffer for the stream's life, not per leg.
    let mut rbuf = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        let (stream, prefix) = leg;
        let stream = Prefixed::new(prefix, stream);
        let (mut lr, mut lw) = crate::util::split::split(stream);
        // Chunks go to a QUIC leg's stream as they are; bytes to any other.
        let quic = source.send_under().filter(|find| lw.with(|s| find(s.get_mut()).is_some()));
        // What the broken leg left half-read is not this leg's.
        rbuf.clear();
        sh.book().new_leg(Instant::now());
        let end = if resuming {
            match handshake(sh, &mut lr, &mut lw, &mut rbuf, side, conn, key, cfg).await {
                Ok(again) => {
                    let pause = last_heard.elapsed();
                    sh.book().resumed(pause);
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
                    // The watch first: on a new leg it may add a KEYED for
                    // the writer to send with the first bytes.
                    biased;
                    r = watch(sh, key, cfg) => r,
                    r = write_leg(sh, &mut lw, quic, &mut out, &mut greeting, cfg) => r,
                    r = read_leg(sh, &mut lr, &mut rbuf) => r,
                    _ = source.replacement() => LegEnd::Broken("the peer resumed on a new leg".into()),
                }
            }
        };
        match end {
            LegEnd::Done => {
                let _ = lw.shutdown().await;
                return Ok(());
            }
            LegEnd::Refused => {
                let _ = lw.shutdown().await;
                return Err("refused before the stream's first bytes".into());
            }
            LegEnd::Broken(why) => {
                // Said once a new leg is there: a session that ended closes
                // its legs too, and nothing resumes then.
                tracing::debug!(conn, %why, "leg broken");
                // A greeting not written is the broken leg's: the next one has its own.
                greeting = write::Greeting::default();
                last_heard = last_heard.max(sh.book().last_heard());
                leg = match tokio::time::timeout(cfg.resume_deadline, next_leg(&mut source)).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => return Err(format!("no leg to resume on: {e}")),
                    Err(_) => {
                        let last = source.last_failure().map(|why| format!(" (last try: {why})")).unwrap_or_default();
                        return Err(format!("no leg to resume on within {:?}{last}", cfg.resume_deadline));
                    }
                };
                tracing::info!(conn, %why, "leg broken; resuming on a new leg");
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

async fn read_leg<R: tokio::io::AsyncRead + Unpin>(sh: &Shared, lr: &mut R, rbuf: &mut BytesMut) -> LegEnd {
    let mut blocks = Blocks::default();
    let mut frames = crate::proto::stream::Decoder::default();
    loop {
        loop {
            let f = match frames.next(rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return LegEnd::Broken(e.to_string()),
            };
            let woken = sh.book().on_frame(f, Instant::now());
            match woken {
                Ok(w) => sh.wake(w),
                Err(e) => return LegEnd::Broken(e),
            }
        }
        // A full receive window: leave the leg unread until the application takes some.
        loop {
            let drained = sh.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !sh.book().receive_full() {
                break;
            }
            drained.await;
        }
        match blocks.read(lr, rbuf, usize::MAX).await {
            Ok(0) => {
                return if sh.book().is_done() { LegEnd::Done } else { LegEnd::Broken("leg closed".into()) };
            }
            Ok(_) => {}
            Err(e) => return LegEnd::Broken(e.to_string()),
        }
    }
}

/// Declares the leg dead after `dead_after` of silence (a frozen relay), and
/// has the peer told once our resume key is set. It looks for the key every
/// `CHECK` until it is set, a few milliseconds into the stream; after that
/// it wakes only when the silence could have run out (on the `CHECK` grid),
/// not ten times a second for every idle stream.
async fn watch(sh: &Shared, key: &ResumeKey, cfg: ResumeConfig) -> LegEnd {
    const CHECK: Duration = Duration::from_millis(100);
    let mut keyed = false;
    loop {
        let (done, silent, heard) = {
            let mut b = sh.book();
            if !keyed && key.get().is_some() {
                keyed = true;
                if b.set_keyed() {
                    sh.to_send.notify_one();
                }
            }
            (b.is_done(), b.silence(Instant::now()), b.heard())
        };
        let limit = if heard { cfg.dead_after } else { cfg.first_silence.max(cfg.dead_after) };
        // Once done, let the reader see the peer's close.
        if !done && silent > limit {
            return LegEnd::Broken(format!("leg silent for {silent:?}"));
        }
        let wait = if keyed && !done { limit.saturating_sub(silent) } else { Duration::ZERO };
        tokio::time::sleep_until(crate::util::on_grid(CHECK, wait.max(CHECK / 2))).await;
    }
}

/// Sets the resume key of connection `conn` from its end-to-end TLS session
/// (an exporter secret both ends derive alike; the relay cannot).
pub fn set_key_from<D>(e2e: &rustls::ConnectionCommon<D>, key: &ResumeKey, conn: u32) {
    let mut k = [0u8; 32];
    if e2e.export_keying_material(&mut k, EXPORT_LABEL, Some(&conn.to_be_bytes())).is_ok() {
        let _ = key.set(k);
    }
}

/// Label and context of the TLS exporter both ends use for the resume key.
pub const EXPORT_LABEL: &[u8] = b"tether resume";

#[cfg(test)]
mod tests;
