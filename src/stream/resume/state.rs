//! Both directions of one resumable stream with the FIN/ACK/PING handshake,
//! without I/O: events in, frames and wake-ups out.
use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::{Inbound, Outbound, Violation};
use crate::proto::stream::{MAX_DATA, StreamFrame, encode_data_header};

/// What may arrive past a full window in the frames of one read (the driver
/// reads at most 64 KiB at a time, and stops at the window).
const WINDOW_SLACK: usize = 256 * 1024;

/// An ACK goes alone once this much was delivered unacknowledged; below it,
/// it rides with our next DATA, KEYED or FIN, or goes at the ping tick
/// ([`StreamState::force_ack`]). Small against any stream's cap (≥ 64 KiB),
/// so a sender never waits on it; a request and its answer cost one frame
/// each way instead of two.
pub const ACK_EVERY: u64 = 16 * 1024;

/// Statistics of one stream, for metrics and audit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub resumes: u64,
    pub retransmitted: u64,
    /// The longest pause between a leg breaking and the next one resuming.
    pub max_pause: Duration,
}

/// Which of the driver's tasks an event gives work to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// Something to put on the leg (data, ack, fin, keyed).
    pub send: bool,
    /// Something to hand to the application, or its FIN.
    pub deliver: bool,
    /// Room for more application bytes.
    pub room: bool,
}

/// What the application's side should get next.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Chunk(Bytes),
    /// Everything was delivered and the peer closed: shut the application's side.
    Fin,
    Nothing,
}

/// Both directions of one resumable stream: the sequence numbers and unacked
/// bytes ([`Outbound`], [`Inbound`]), what waits for the application, the
/// FIN handshake, liveness, and what this leg was already told.
#[derive(Debug)]
pub struct StreamState {
    out: Outbound,
    inb: Inbound,
    /// Received, not yet delivered to the application (chunks as they came).
    pending: VecDeque<Bytes>,
    /// Bytes in `pending`, and the most it may hold before the leg is no longer read.
    pending_bytes: usize,
    window: usize,
    delivered: u64,
    fin_out: Option<u64>,
    fin_acked: bool,
    fin_in: Option<u64>,
    fin_delivered: bool,
    /// Per leg: what we told this leg already.
    acked_sent: u64,
    fin_sent: bool,
    /// Our resume key is set (end-to-end TLS complete), and this leg was told.
    keyed: bool,
    keyed_sent: bool,
    /// The peer said it holds its key: from then on its resumes need a real MAC.
    peer_keyed: bool,
    last_heard: Instant,
    /// The peer was heard at least once (any leg).
    heard: bool,
    /// The next [`Self::fill`] acknowledges whatever was delivered.
    ack_forced: bool,
    stats: Stats,
}

impl StreamState {
    /// A stream keeping at most `cap` unacknowledged bytes.
    pub fn new(cap: usize, now: Instant) -> StreamState {
        StreamState {
            out: Outbound::new(cap),
            inb: Inbound::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            window: cap,
            delivered: 0,
            fin_out: None,
            fin_acked: false,
            fin_in: None,
            fin_delivered: false,
            acked_sent: 0,
            fin_sent: false,
            keyed: false,
            keyed_sent: false,
            peer_keyed: false,
            last_heard: now,
            heard: false,
            ack_forced: false,
            stats: Stats::default(),
        }
    }

    /// Application bytes that fit now.
    pub fn room(&self) -> usize {
        self.out.room()
    }

    /// The application wrote `chunk` (within [`Self::room`]).
    pub fn app_wrote(&mut self, chunk: Bytes) {
        self.out.write_bytes(chunk);
    }

    /// The application closed its sending side.
    pub fn app_closed(&mut self) {
        self.fin_out = Some(self.out.written());
    }

    /// What to hand to the application next.
    pub fn next_delivery(&self) -> Delivery {
        match self.pending.front() {
            Some(c) => Delivery::Chunk(c.clone()),
            None if !self.fin_delivered && self.fin_in == Some(self.delivered) => Delivery::Fin,
            None => Delivery::Nothing,
        }
    }

    /// The chunk from [`Self::next_delivery`] reached the application.
    pub fn chunk_delivered(&mut self) {
        if let Some(c) = self.pending.pop_front() {
            self.delivered += c.len() as u64;
            self.pending_bytes -= c.len();
        }
    }

    /// Undelivered bytes fill the window: stop reading the leg until the
    /// application takes some (the peer then waits on TCP back-pressure).
    pub fn receive_full(&self) -> bool {
        self.pending_bytes >= self.window
    }

    /// How long the peer has been silent, not counting time the leg was
    /// left unread on purpose (a full window is not a dead leg).
    pub fn silence(&mut self, now: Instant) -> Duration {
        if self.receive_full() {
            self.last_heard = now;
        }
        now.saturating_duration_since(self.last_heard)
    }

    /// The application's side was shut after the peer's FIN.
    pub fn fin_delivered(&mut self) {
        self.fin_delivered = true;
    }

    /// A frame from the leg. `Resume` is only valid in the handshake.
    pub fn on_frame(&mut self, f: StreamFrame, now: Instant) -> Result<Wake, String> {
        self.last_heard = now;
        self.heard = true;
        Ok(match f {
            StreamFrame::Data { seq, data } => {
                let new = self.inb.on_data(seq, data).map_err(|e| e.to_string())?;
                if new.is_empty() {
                    Wake::default()
                } else {
                    self.pending_bytes += new.len();
                    self.pending.push_back(new);
                    // Reading stops at the window; what one read can bring past it is bounded.
                    if self.pending_bytes > self.window + WINDOW_SLACK {
                        return Err(format!(
                            "the peer sent past the receive window ({} bytes undelivered, window {})",
                            self.pending_bytes, self.window
                        ));
                    }
                    Wake { deliver: true, ..Wake::default() }
                }
            }
            StreamFrame::Ack { upto } => {
                match self.fin_out {
                    Some(at) if upto == at + 1 => {
                        self.fin_acked = true;
                        self.out.on_ack(at)
                    }
                    _ => self.out.on_ack(upto),
                }
                .map_err(|e| e.to_string())?;
                Wake { room: true, send: true, ..Wake::default() }
            }
            StreamFrame::Fin { at } => {
                self.fin_in = Some(at);
                Wake { deliver: true, ..Wake::default() }
            }
            // Hearing it is all a PING is for. It is not answered: both ends
            // ping every tick while idle, so each hears the other without a
            // PONG (half the frames of an idle tunnel). A PONG from an older
            // peer is taken like any frame.
            StreamFrame::Ping | StreamFrame::Pong => Wake::default(),
            StreamFrame::Keyed => {
                self.peer_keyed = true;
                Wake::default()
            }
            StreamFrame::Resume { .. } => return Err("unexpected resume".into()),
        })
    }

    /// [`Self::fill_chunks`] as one run of bytes (what a TCP leg is written).
    #[cfg(test)]
    pub fn fill(&mut self, out: &mut BytesMut, batch: usize) {
        let mut chunks = Vec::new();
        self.fill_chunks(&mut chunks, batch);
        for c in chunks {
            out.extend_from_slice(&c);
        }
    }

    /// What this leg should carry next, up to about `batch` bytes: an ACK
    /// for what the application took (and the FIN once delivered) when it is
    /// due (see [`ACK_EVERY`]), DATA, then our FIN once everything before it
    /// is out. As chunks: a DATA frame's payload is the chunk the outbound
    /// buffer holds (a QUIC leg's stream takes it without a copy), and the
    /// bytes between payloads (ACK, KEYED, DATA headers, FIN) are chunks cut
    /// from one small buffer. None is empty.
    pub fn fill_chunks(&mut self, chunks: &mut Vec<Bytes>, batch: usize) {
        let mut head = BytesMut::new();
        let mut total = 0;
        let ack = if self.fin_delivered { self.delivered + 1 } else { self.delivered };
        // The peer's FIN is acknowledged with ours (an application answers
        // a close with its own, mostly at once: one frame, one packet, one
        // wake-up at every hop instead of two), or with our next DATA, or at
        // the tick; at once if ours went before (nothing else will carry it).
        let due = self.ack_forced
            || (self.fin_delivered && self.fin_out.is_some())
            || (self.keyed && !self.keyed_sent)
            || self.out.unsent()
            || self.fin_out.is_some_and(|_| !self.fin_sent)
            || ack - self.acked_sent >= ACK_EVERY;
        self.ack_forced = false;
        if ack > self.acked_sent && due {
            StreamFrame::Ack { upto: ack }.encode(&mut head);
            self.acked_sent = ack;
        }
        if self.keyed && !self.keyed_sent {
            StreamFrame::Keyed.encode(&mut head);
            self.keyed_sent = true;
        }
        while total + head.len() < batch {
            let Some((seq, data)) = self.out.next_to_send(MAX_DATA) else { break };
            encode_data_header(&mut head, seq, data.len());
            total += head.len() + data.len();
            chunks.push(head.split().freeze());
            if !data.is_empty() {
                chunks.push(data);
            }
        }
        if let Some(at) = self.fin_out
            && !self.fin_sent
            && self.out.next_to_send(0).is_none()
            && at == self.out.written()
        {
            StreamFrame::Fin { at }.encode(&mut head);
            self.fin_sent = true;
        }
        if !head.is_empty() {
            chunks.push(head.freeze());
        }
    }

    /// Both FINs are through and our last ACK is written: the stream is over.
    pub fn is_done(&self) -> bool {
        self.fin_acked && self.fin_delivered && self.acked_sent == self.delivered + 1
    }

    /// A new leg starts: it has been told nothing yet.
    pub fn new_leg(&mut self, now: Instant) {
        self.acked_sent = 0;
        self.fin_sent = false;
        self.keyed_sent = false;
        self.last_heard = now;
    }

    /// Our resume key is set; returns true the first time (the peer must be told).
    pub fn set_keyed(&mut self) -> bool {
        !std::mem::replace(&mut self.keyed, true)
    }

    /// Whether the peer said it holds its resume key.
    pub fn peer_keyed(&self) -> bool {
        self.peer_keyed
    }

    /// Where our RESUME asks the peer to start: everything before it was received.
    pub fn resume_from(&self) -> u64 {
        self.inb.resume_from()
    }

    /// The peer's RESUME (already authenticated): rewind to what it has.
    /// Returns the bytes that will be sent again.
    pub fn on_peer_resume(&mut self, peer_next: u64, now: Instant) -> Result<u64, Violation> {
        let sent = self.out.sent();
        self.out.on_resume(peer_next)?;
        let again = sent.saturating_sub(peer_next);
        self.stats.retransmitted += again;
        self.last_heard = now;
        Ok(again)
    }

    /// The stream resumed after a pause of `pause`.
    pub fn resumed(&mut self, pause: Duration) {
        self.stats.resumes += 1;
        self.stats.max_pause = self.stats.max_pause.max(pause);
    }

    /// The next [`Self::fill`] sends the ACK even if it is not due (the
    /// writer's ping tick: an idle stream acknowledges within one tick).
    pub fn force_ack(&mut self) {
        self.ack_forced = true;
    }

    /// Whether the peer was ever heard.
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// When the peer was last heard on any leg.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves what `from` has to send into `to`, frame by frame.
    fn carry(from: &mut StreamState, to: &mut StreamState, now: Instant) -> Vec<Wake> {
        let mut wire = BytesMut::new();
        from.fill(&mut wire, 1 << 20);
        let mut wakes = Vec::new();
        while let Some(f) = StreamFrame::decode(&mut wire).unwrap() {
            wakes.push(to.on_frame(f, now).unwrap());
        }
        wakes
    }

    /// What `s` would put on the leg now, as frames.
    fn frames(s: &mut StreamState) -> Vec<StreamFrame> {
        let mut wire = BytesMut::new();
        s.fill(&mut wire, 1 << 20);
        std::iter::from_fn(|| StreamFrame::decode(&mut wire).unwrap()).collect()
    }

    fn drain(s: &mut StreamState) -> Vec<u8> {
        let mut got = Vec::new();
        while let Delivery::Chunk(c) = s.next_delivery() {
            got.extend_from_slice(&c);
            s.chunk_delivered();
        }
        got
    }

    #[test]
    fn data_then_fin_handshake_ends_both_sides() {
        let now = Instant::now();
        let (mut a, mut b) = (StreamState::new(1 << 20, now), StreamState::new(1 << 20, now));
        a.app_wrote(Bytes::from_static(b"hello"));
        a.app_closed();
        let wakes = carry(&mut a, &mut b, now);
        assert!(wakes.iter().any(|w| w.deliver));
        assert_eq!(drain(&mut b), b"hello");
        assert_eq!(b.next_delivery(), Delivery::Fin);
        b.fin_delivered();
        b.app_closed();
        // b acknowledges data and FIN, and sends its own FIN.
        carry(&mut b, &mut a, now);
        assert_eq!(a.next_delivery(), Delivery::Fin);
        a.fin_delivered();
        carry(&mut a, &mut b, now);
        assert!(a.is_done(), "a: both FINs through and its last ACK written");
        assert!(b.is_done());
        assert_eq!(a.room(), 1 << 20, "everything a sent was acknowledged");
    }

    #[test]
    fn a_small_delivery_is_acknowledged_with_the_next_frame_out_or_at_the_tick() {
        let now = Instant::now();
        let (mut a, mut b) = (StreamState::new(1 << 20, now), StreamState::new(1 << 20, now));
        let acks = |s: &mut StreamState| frames(s).iter().filter(|f| matches!(f, StreamFrame::Ack { .. })).count();
        a.app_wrote(Bytes::from_static(b"request"));
        carry(&mut a, &mut b, now);
        drain(&mut b);
        assert_eq!(acks(&mut b), 0, "7 bytes delivered: no ACK of its own");
        // The answer carries it.
        b.app_wrote(Bytes::from_static(b"answer"));
        carry(&mut b, &mut a, now);
        assert_eq!(a.room(), 1 << 20, "the request was acknowledged with the answer");
        // Nothing to send: the tick sends it.
        carry(&mut a, &mut b, now);
        drain(&mut b);
        drain(&mut a);
        assert_eq!(acks(&mut a), 0);
        a.force_ack();
        assert_eq!(acks(&mut a), 1, "the ping tick acknowledges the answer");
        // ACK_EVERY delivered bytes are acknowledged at once.
        a.app_wrote(Bytes::from(vec![1u8; ACK_EVERY as usize]));
        carry(&mut a, &mut b, now);
        drain(&mut b);
        assert_eq!(acks(&mut b), 1);
    }

    #[test]
    fn a_fin_is_acknowledged_with_our_own_fin_or_at_once_if_ours_went_first() {
        let now = Instant::now();
        let (mut a, mut b) = (StreamState::new(1 << 20, now), StreamState::new(1 << 20, now));
        a.app_closed();
        carry(&mut a, &mut b, now);
        assert_eq!(b.next_delivery(), Delivery::Fin);
        b.fin_delivered();
        assert_eq!(frames(&mut b), vec![], "a's FIN waits for b's own");
        b.app_closed();
        let answer = frames(&mut b);
        assert_eq!(answer, vec![StreamFrame::Ack { upto: 1 }, StreamFrame::Fin { at: 0 }], "one frame each way");
        for f in answer {
            a.on_frame(f, now).unwrap();
        }
        assert_eq!(a.next_delivery(), Delivery::Fin);
        a.fin_delivered();
        // a's FIN went first: nothing else will carry the ACK of b's.
        assert_eq!(frames(&mut a), vec![StreamFrame::Ack { upto: 1 }]);
        assert!(a.is_done());
        // Held, it still goes at the tick (an application that keeps its side open).
        let (mut c, mut d) = (StreamState::new(1 << 20, now), StreamState::new(1 << 20, now));
        c.app_closed();
        carry(&mut c, &mut d, now);
        assert_eq!(d.next_delivery(), Delivery::Fin);
        d.fin_delivered();
        d.force_ack();
        assert_eq!(frames(&mut d), vec![StreamFrame::Ack { upto: 1 }]);
    }

    #[test]
    fn a_ping_is_heard_not_answered_and_a_resume_rewinds_to_the_peer() {
        let now = Instant::now();
        let (mut a, mut b) = (StreamState::new(1 << 20, now), StreamState::new(1 << 20, now));
        let later = now + Duration::from_secs(1);
        assert_eq!(b.on_frame(StreamFrame::Ping, later).unwrap(), Wake::default(), "a ping woke the writer");
        assert_eq!(b.last_heard(), later, "a ping did not count as hearing the peer");
        assert_eq!(b.on_frame(StreamFrame::Pong, later).unwrap(), Wake::default(), "an older peer's pong");
        let mut out = BytesMut::new();
        b.fill(&mut out, 1024);
        assert!(out.is_empty(), "a ping was answered: {out:?}");
        // 10 bytes sent, the leg dies before they arrive; b resumes from 0.
        a.app_wrote(Bytes::from_static(b"0123456789"));
        let mut lost = BytesMut::new();
        a.fill(&mut lost, 1024);
        a.new_leg(now);
        assert_eq!(b.resume_from(), 0);
        assert_eq!(a.on_peer_resume(b.resume_from(), now).unwrap(), 10);
        carry(&mut a, &mut b, now);
        assert_eq!(drain(&mut b), b"0123456789");
        a.resumed(Duration::from_millis(30));
        assert_eq!((a.stats().resumes, a.stats().retransmitted), (1, 10));
        assert!(b.on_frame(StreamFrame::Resume { next: 0, mac: [0; 32] }, now).is_err());
    }

    #[test]
    fn a_full_window_stops_reading_and_a_peer_past_it_is_closed() {
        let now = Instant::now();
        let mut s = StreamState::new(64 * 1024, now);
        let chunk = Bytes::from(vec![7u8; 32 * 1024]);
        s.on_frame(StreamFrame::Data { seq: 0, data: chunk.clone() }, now).unwrap();
        assert!(!s.receive_full());
        s.on_frame(StreamFrame::Data { seq: 32 * 1024, data: chunk.clone() }, now).unwrap();
        assert!(s.receive_full(), "64 KiB undelivered fills the window");
        // While the leg is left unread on purpose, silence does not count.
        assert_eq!(s.silence(now + Duration::from_secs(5)), Duration::ZERO);
        s.chunk_delivered();
        assert!(!s.receive_full(), "the application took 32 KiB");
        // A peer that ignores the window is closed, with a reason.
        let mut seq = 64 * 1024;
        let err = loop {
            match s.on_frame(StreamFrame::Data { seq, data: chunk.clone() }, now) {
                Ok(_) => seq += chunk.len() as u64,
                Err(e) => break e,
            }
            assert!(seq < 1 << 20, "never refused");
        };
        assert!(err.contains("past the receive window"), "{err}");
    }
}
