//! Waiting for the device's decision on a specialist's request: the agent
//! answers, the specialist gives up, or the relay gives up on the device.
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};

use super::state::State;
use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Outcome, Reason, WAITING_EVERY};

/// A device that sends nothing at all for this long after a request is
/// taken for frozen or cut off, though its channel is still open: one that
/// needs nobody's approval decides in milliseconds, and one that asks the
/// person on site sends its audit head at once (an older agent within its
/// 3 s head check, the request being in its audit chain).
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How the wait for a decision ended.
pub enum Waited {
    /// The device decided.
    Decided(Outcome, Reason),
    /// The relay gave up on the device: the reason and, for the specialist,
    /// why (the relay concluded it, not the device).
    GaveUp(Reason, String),
    /// The specialist left (or sent something) first.
    Withdrawn,
}

/// Waits for the decision of the agent attached as `attach_id`, asked at
/// `asked_ms` (unix ms), for at most `limits.decision_timeout_secs`. The
/// specialist's leg `io` sending anything or ending withdraws the request;
/// where `waits` (the client negotiated it), it hears [`Frame::Waiting`] at
/// once and every [`WAITING_EVERY`] until the answer.
pub async fn wait(
    state: &State,
    decided: oneshot::Receiver<(Outcome, Reason)>,
    (device, attach_id): (&str, u64),
    asked_ms: u64,
    (io, waits): (&mut FrameIo<Leg>, bool),
) -> Waited {
    let limit = Duration::from_secs(state.cfg.limits.decision_timeout_secs);
    let start = Instant::now();
    let mut answer_by = Some(start + ANSWER_WAIT);
    let mut beat = waits.then_some(start);
    tokio::pin!(decided);
    loop {
        tokio::select! {
            d = &mut decided => return match d {
                Ok((outcome, reason)) => Waited::Decided(outcome, reason),
                Err(_) => Waited::GaveUp(
                    Reason::AgentGone,
                    "the relay lost its channel to the device while the request waited: \
                     the device may be off, frozen or cut off"
                        .into(),
                ),
            },
            _ = sleep_until(start + limit) => {
                return Waited::GaveUp(Reason::ConsentTimedOut, format!("the device gave no answer within {} s", limit.as_secs()));
            }
            _ = sleep_until(answer_by.unwrap_or(start)), if answer_by.is_some() => {
                answer_by = None;
                if !heard_since(state, device, attach_id, asked_ms) {
                    return Waited::GaveUp(
                        Reason::AgentSilent,
                        format!(
                            "the device sent nothing for {} s after the request, though its channel to this relay \
                             is still open: it may be frozen, overloaded or cut off",
                            ANSWER_WAIT.as_secs()
                        ),
                    );
                }
            }
            _ = sleep_until(beat.unwrap_or(start)), if beat.is_some() => {
                let secs = u32::try_from(start.elapsed().as_secs()).unwrap_or(u32::MAX);
                if io.write_frame(&Frame::Waiting { secs }).await.is_err() {
                    return Waited::Withdrawn;
                }
                beat = Some(Instant::now() + WAITING_EVERY);
            }
            // Read afresh each turn: `read_frame` keeps what it read across a cancel.
            _ = io.read_frame() => return Waited::Withdrawn,
        }
    }
}

/// Whether the agent attached as `attach_id` sent any frame at or after
/// `since_ms`. An agent no longer attached so counts: its channel's end
/// answers the request (`agent_gone`).
fn heard_since(state: &State, device: &str, attach_id: u64, since_ms: u64) -> bool {
    state.agents.get(device).is_none_or(|a| a.attach_id != attach_id || a.heard_ms.load(Ordering::Relaxed) >= since_ms)
}
