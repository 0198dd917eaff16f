//! The resumable stream's bookkeeping, without I/O.
//!
//! Between the end-to-end TLS and the legs, each end numbers the bytes it
//! sends, keeps what the peer has not acknowledged (bounded; a full buffer is
//! back-pressure, never a drop), and after a leg breaks resumes on a new leg
//! from the peer's last received byte. Byte `n` of a direction is the `n`-th
//! byte ever written in that direction, counted from 0.
//!
//! [`Outbound`] is one direction's sender, [`Inbound`] the receiver;
//! [`StreamState`] holds both with the FIN/ACK/PING handshake. The driver
//! (`resumable`) feeds it frames and application bytes and sends what it returns.
mod state;

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

pub use state::{Delivery, Stats, StreamState, Wake};

/// A peer said something impossible: the stream cannot continue safely.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Violation {
    #[error("peer acknowledged {ack} but only {sent} bytes were ever sent")]
    AckBeyondSent { ack: u64, sent: u64 },
    #[error("peer asks to resume from {from}, but bytes before {kept} are gone (acknowledged earlier)")]
    ResumeBeforeKept { from: u64, kept: u64 },
    #[error("peer asks to resume from {from}, beyond the {sent} bytes ever sent")]
    ResumeBeyondSent { from: u64, sent: u64 },
    #[error("data at {seq} leaves a gap after {next}")]
    Gap { seq: u64, next: u64 },
}

/// One direction's sender: unacknowledged bytes, kept for retransmission.
#[derive(Debug)]
pub struct Outbound {
    /// Chunks not yet acknowledged, oldest first; the first starts at `acked`.
    kept: VecDeque<Bytes>,
    /// Everything before this is acknowledged (and dropped).
    acked: u64,
    /// Bytes accepted from the application so far (the end of `kept`).
    written: u64,
    /// Bytes handed to the current leg so far.
    sent: u64,
    cap: usize,
}

impl Outbound {
    /// `cap`: most bytes kept unacknowledged (the back-pressure bound).
    pub fn new(cap: usize) -> Self {
        Outbound { kept: VecDeque::new(), acked: 0, written: 0, sent: 0, cap }
    }

    /// Room for more application bytes before back-pressure.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub((self.written - self.acked) as usize)
    }

    /// Takes up to [`Self::room`] bytes from the application; returns how many.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        if n > 0 {
            self.write_bytes(Bytes::copy_from_slice(&data[..n]));
        }
        n
    }

    /// Takes a whole chunk without copying it; the caller keeps within [`Self::room`].
    pub fn write_bytes(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.written += data.len() as u64;
            self.kept.push_back(data);
        }
    }

    /// Whether some written bytes are not on the current leg yet.
    pub fn unsent(&self) -> bool {
        self.sent < self.written
    }

    /// The next bytes to put on the current leg (at most `max`), and their
    /// sequence number; `None` when everything written has been sent.
    pub fn next_to_send(&mut self, max: usize) -> Option<(u64, Bytes)> {
        if self.sent == self.written || max == 0 {
            return None;
        }
        let mut offset = self.acked;
        for chunk in &self.kept {
            let end = offset + chunk.len() as u64;
            if end > self.sent {
                let start = (self.sent - offset) as usize;
                let len = (chunk.len() - start).min(max);
                let seq = self.sent;
                self.sent += len as u64;
                return Some((seq, chunk.slice(start..start + len)));
            }
            offset = end;
        }
        None
    }

    /// The peer has received everything before `upto`.
    pub fn on_ack(&mut self, upto: u64) -> Result<(), Violation> {
        if upto > self.written {
            return Err(Violation::AckBeyondSent { ack: upto, sent: self.written });
        }
        while self.acked < upto {
            let Some(front) = self.kept.front_mut() else { break };
            let drop = ((upto - self.acked) as usize).min(front.len());
            if drop == front.len() {
                self.kept.pop_front();
            } else {
                front.advance(drop);
            }
            self.acked += drop as u64;
        }
        self.sent = self.sent.max(self.acked);
        Ok(())
    }

    /// A new leg: the peer has everything before `from`; send again from there.
    pub fn on_resume(&mut self, from: u64) -> Result<(), Violation> {
        if from > self.written {
            return Err(Violation::ResumeBeyondSent { from, sent: self.written });
        }
        if from < self.acked {
            return Err(Violation::ResumeBeforeKept { from, kept: self.acked });
        }
        self.on_ack(from)?;
        self.sent = from;
        Ok(())
    }

    /// Bytes written but not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.written - self.acked
    }

    /// Bytes handed to the current leg so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes written by the application so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// One direction's receiver: delivers each byte exactly once, in order.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Sequence number of the next byte to deliver.
    next: u64,
    /// What we last acknowledged.
    acked: u64,
}

impl Inbound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Data at `seq` arrived; returns the part not delivered before (a resent
    /// overlap is trimmed). A gap means the peer skipped bytes: a violation.
    pub fn on_data(&mut self, seq: u64, mut data: Bytes) -> Result<Bytes, Violation> {
        if seq > self.next {
            return Err(Violation::Gap { seq, next: self.next });
        }
        let end = seq + data.len() as u64;
        if end <= self.next {
            return Ok(Bytes::new());
        }
        data.advance((self.next - seq) as usize);
        self.next = end;
        Ok(data)
    }

    /// Where a resume should start: everything before it was delivered.
    pub fn resume_from(&self) -> u64 {
        self.next
    }

    /// An acknowledgement to send, when at least `every` bytes arrived since
    /// the last one (or `force`, e.g. on a timer).
    pub fn ack_due(&mut self, every: u64, force: bool) -> Option<u64> {
        if self.next > self.acked && (force || self.next - self.acked >= every) {
            self.acked = self.next;
            Some(self.next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn back_pressure_never_drops() {
        let mut out = Outbound::new(10);
        assert_eq!(out.write(b"0123456789abc"), 10);
        assert_eq!(out.room(), 0);
        assert_eq!(out.write(b"x"), 0);
        let (seq, b) = out.next_to_send(4).unwrap();
        assert_eq!((seq, &b[..]), (0, &b"0123"[..]));
        out.on_ack(4).unwrap();
        assert_eq!(out.room(), 4);
    }

    #[test]
    fn impossible_peers_are_violations() {
        let mut out = Outbound::new(100);
        out.write(b"hello");
        assert_eq!(out.on_ack(6), Err(Violation::AckBeyondSent { ack: 6, sent: 5 }));
        out.on_ack(3).unwrap();
        assert_eq!(out.on_resume(2), Err(Violation::ResumeBeforeKept { from: 2, kept: 3 }));
        assert_eq!(out.on_resume(9), Err(Violation::ResumeBeyondSent { from: 9, sent: 5 }));
        let mut inb = Inbound::new();
        assert_eq!(inb.on_data(1, Bytes::from_static(b"x")), Err(Violation::Gap { seq: 1, next: 0 }));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write(Vec<u8>),
        Send(usize),
        /// Deliver this many of the frames in flight, in order.
        Deliver(usize),
        Ack,
        /// The leg breaks: frames in flight are lost; the ends resume.
        Break,
        /// The receiver announces its resume point, then still gets this many
        /// frames from the old leg before the sender rewinds (a late relay).
        BreakLate(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Step::Write),
            (1usize..200).prop_map(Step::Send),
            (0usize..4).prop_map(Step::Deliver),
            Just(Step::Ack),
            Just(Step::Break),
            (1usize..4).prop_map(Step::BreakLate),
        ]
    }

    proptest! {
        /// Whatever the pattern of writes, sends, acks and broken legs, the
        /// receiver gets exactly the bytes written, in order, once.
        #[test]
        fn no_byte_lost_or_duplicated_across_broken_legs(steps in proptest::collection::vec(step(), 1..200), cap in 16usize..1024) {
            let mut out = Outbound::new(cap);
            let mut inb = Inbound::new();
            let mut input = Vec::new();
            let mut pending = Vec::new(); // application bytes not yet accepted (back-pressure)
            let mut in_flight: VecDeque<(u64, Bytes)> = VecDeque::new();
            let mut acks_in_flight: VecDeque<u64> = VecDeque::new();
            let mut output = Vec::new();
            for s in steps {
                match s {
                    Step::Write(d) => pending.extend_from_slice(&d),
                    Step::Send(max) => {
                        if let Some(f) = out.next_to_send(max) { in_flight.push_back(f); }
                    }
                    Step::Deliver(n) => {
                        for _ in 0..n {
                            if let Some((seq, b)) = in_flight.pop_front() {
                                output.extend_from_slice(&inb.on_data(seq, b).unwrap());
                            }
                        }
                    }
                    Step::Ack => {
                        if let Some(a) = inb.ack_due(1, true) { acks_in_flight.push_back(a); }
                        if let Some(a) = acks_in_flight.pop_front() { out.on_ack(a).unwrap(); }
                    }
                    Step::Break => {
                        in_flight.clear();
                        acks_in_flight.clear();
                        out.on_resume(inb.resume_from()).unwrap();
                    }
                    Step::BreakLate(n) => {
                        let from = inb.resume_from();
                        for _ in 0..n {
                            if let Some((seq, b)) = in_flight.pop_front() {
                                output.extend_from_slice(&inb.on_data(seq, b).unwrap());
                            }
                        }
                        in_flight.clear();
                        acks_in_flight.clear();
                        out.on_resume(from).unwrap();
                    }
                }
                let n = out.write(&pending);
                input.extend(pending.drain(..n));
            }
            // Drain: a final resume, then everything.
            in_flight.clear();
            out.on_resume(inb.resume_from()).unwrap();
            loop {
                let n = out.write(&pending);
                input.extend(pending.drain(..n));
                match out.next_to_send(usize::MAX) {
                    Some((seq, b)) => output.extend_from_slice(&inb.on_data(seq, b).unwrap()),
                    None if pending.is_empty() => break,
                    None => { let a = inb.ack_due(1, true).unwrap_or(inb.resume_from()); out.on_ack(a).unwrap(); }
                }
            }
            prop_assert_eq!(output, input);
        }
    }
}
