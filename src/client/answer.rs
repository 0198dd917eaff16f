//! Waiting for the relay's answer to a session request, and telling the
//! specialist what the wait is: the device may be asking the person at it to
//! approve, which can take minutes.
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::leg::Leg;
use crate::proto::{Frame, FrameIo};

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

/// Reads the relay's answer on `io`, telling `progress` how long it has
/// waited at [`FIRST_NOTICE`] and at each multiple of [`NOTICE_EVERY`].
pub(super) async fn read(
    io: &mut FrameIo<Leg>,
    relay: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Frame, String> {
    let start = Instant::now();
    let (mut next, mut notices) = (start + FIRST_NOTICE, 0);
    let answer = io.read_frame();
    tokio::pin!(answer);
    loop {
        tokio::select! {
            a = &mut answer => return a.map_err(|e| e.to_string()),
            _ = sleep_until(next) => {
                progress(Progress::Waiting { relay: relay.to_string(), after: next - start });
                notices += 1;
                next = start + NOTICE_EVERY * notices;
            }
        }
    }
}
