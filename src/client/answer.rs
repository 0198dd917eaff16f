//! Waiting for the relay's answer to a session request, and telling the
//! specialist what the wait is: the device may be asking the person at it to
//! approve, which can take minutes.
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, WAITING_EVERY};

/// What a session request is waiting for, for the specialist to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The request went to `relay`. `consent`: the hub's policy asks the
    /// person at the device to approve (the grant says so); the device's own
    /// policy may ask too, which only the device knows.
    Asked { relay: String, consent: bool },
    /// No answer `after` the request: the device is up (a relay refuses a
    /// device that sends nothing for 5 s, `agent_silent`) and has not
    /// decided, which a device that needs nobody's approval does at once.
    Waiting { relay: String, after: Duration },
    /// `failed` could not be reached or gave no answer (`why`); the request
    /// goes to `next`, its twin.
    Trying { failed: String, why: String, next: String },
}

/// First [`Progress::Waiting`]: past the relay's 5 s limit for a silent
/// device, so a device still undecided then is up and waiting for someone.
pub const FIRST_NOTICE: Duration = Duration::from_secs(6);
/// Further [`Progress::Waiting`] at each multiple of this.
pub const NOTICE_EVERY: Duration = Duration::from_secs(30);

/// A relay that said the request waits ([`Frame::Waiting`], every
/// [`WAITING_EVERY`]) and then says nothing for this long is taken for
/// frozen, or the path to it for cut: the request goes to its twin.
pub const WAITING_SILENT: Duration = Duration::from_secs(4 * WAITING_EVERY.as_secs());

/// Why a relay gave no answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The leg failed or closed.
    Lost(String),
    /// It said the request waited, then fell silent for [`WAITING_SILENT`]:
    /// it holds the request (and may have used the grant up).
    Silent,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Lost(e) => f.write_str(e),
            NoAnswer::Silent => write!(
                f,
                "it went silent for {} s while the request waited: frozen, or the path to it cut",
                WAITING_SILENT.as_secs()
            ),
        }
    }
}

/// Reads the relay's answer on `io`, telling `progress` how long it has
/// waited at [`FIRST_NOTICE`] and at each multiple of [`NOTICE_EVERY`].
/// A relay that sends [`Frame::Waiting`] (it and this client negotiated
/// them) must keep doing so until it answers.
pub(super) async fn read(
    io: &mut FrameIo<Leg>,
    relay: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Frame, NoAnswer> {
    let start = Instant::now();
    let (mut next, mut notices) = (start + FIRST_NOTICE, 0);
    let mut silent_by: Option<Instant> = None;
    loop {
        tokio::select! {
            // Read afresh each turn: `read_frame` keeps what it read across a cancel.
            a = io.read_frame() => match a {
                Ok(Frame::Waiting { .. }) => silent_by = Some(Instant::now() + WAITING_SILENT),
                a => return a.map_err(|e| NoAnswer::Lost(e.to_string())),
            },
            _ = sleep_until(next) => {
                progress(Progress::Waiting { relay: relay.to_string(), after: next - start });
                notices += 1;
                next = start + NOTICE_EVERY * notices;
            }
            _ = sleep_until(silent_by.unwrap_or(start)), if silent_by.is_some() => return Err(NoAnswer::Silent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Reason, SessionId};

    /// A relay end on one side of a pipe, the client's [`read`] on the other.
    fn pipe() -> (FrameIo<Leg>, FrameIo<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(4096);
        (FrameIo::new(Box::new(a) as Leg), FrameIo::new(b))
    }

    fn ready() -> Frame {
        Frame::SessionReady { session: SessionId::random(), token: [7; 32], raw_legs: false, twin_holds: true }
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_said_the_request_waits_and_then_falls_silent_is_given_up_on() {
        let (mut client, mut relay) = pipe();
        let told = std::sync::Mutex::new(Vec::new());
        let progress = |p: Progress| told.lock().unwrap().push(p);
        relay.write_frame(&Frame::Waiting { secs: 0 }).await.unwrap();
        // Beats every 5 s for a minute keep the request alive; then nothing.
        let beats = async {
            for secs in (5..=60).step_by(5) {
                tokio::time::sleep(WAITING_EVERY).await;
                relay.write_frame(&Frame::Waiting { secs }).await.unwrap();
            }
            relay
        };
        let start = Instant::now();
        let (answer, _relay) = tokio::join!(read(&mut client, "relay-a", &progress), beats);
        assert_eq!(answer, Err(NoAnswer::Silent));
        assert_eq!(start.elapsed(), Duration::from_secs(60) + WAITING_SILENT, "silent from the last beat on");
        let waits = told.lock().unwrap().iter().filter(|p| matches!(p, Progress::Waiting { .. })).count();
        assert_eq!(waits, 3, "at 6, 30 and 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_after_beats_is_the_answer_and_an_older_relay_is_waited_for() {
        let (mut client, mut relay) = pipe();
        relay.write_frame(&Frame::Waiting { secs: 0 }).await.unwrap();
        relay.write_frame(&Frame::Waiting { secs: 5 }).await.unwrap();
        let want = ready();
        relay.write_frame(&want).await.unwrap();
        assert_eq!(read(&mut client, "relay-a", &|_| {}).await, Ok(want));
        let refusal = Frame::Error { reason: Reason::ConsentDenied, message: "answered by nurse".into() };
        relay.write_frame(&refusal).await.unwrap();
        assert_eq!(read(&mut client, "relay-a", &|_| {}).await, Ok(refusal));

        // A relay that never sends `Waiting` (one older than this client) is
        // not held to them: an hour of silence is still a wait.
        let (mut client, relay) = pipe();
        let waited = tokio::time::timeout(Duration::from_secs(3600), read(&mut client, "relay-a", &|_| {})).await;
        assert!(waited.is_err(), "gave up on an older relay: {waited:?}");
        drop(relay);
        assert!(matches!(read(&mut client, "relay-a", &|_| {}).await, Err(NoAnswer::Lost(_))));
    }
}
