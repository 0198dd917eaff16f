//! `tether dev`'s signals. Its parts run in their own process group, so a
//! Ctrl-C at the terminal reaches `tether dev` alone, which then stops the
//! parts in order (the agent, then the relays, whose last reports reach a hub
//! still up, then the hub) instead of all of them at once.
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// `stop`: the first SIGINT, SIGTERM or SIGHUP (the terminal closed: the
/// parts, outside its foreground group, would not hear of it). `hurry`: the
/// second, which kills whatever part is still running at once.
#[derive(Clone, Default)]
pub struct Signals {
    pub stop: CancellationToken,
    pub hurry: CancellationToken,
}

impl Signals {
    /// Tokens cancelled by this process's signals, from now on.
    pub fn listen() -> Signals {
        let s = Signals::default();
        let (stop, hurry) = (s.stop.clone(), s.hurry.clone());
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
        else {
            return s;
        };
        tokio::spawn(async move {
            for token in [stop, hurry] {
                tokio::select! { _ = int.recv() => {}, _ = term.recv() => {}, _ = hup.recv() => {} }
                token.cancel();
            }
        });
        s
    }
}
