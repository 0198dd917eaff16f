//! Exponential back-off with optional jitter: the agent's channels, the twin
//! link and the resumable stream's re-dials all use this one.
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    jitter: bool,
    next: Duration,
}

impl Backoff {
    /// Starts at `start`, doubles after each failure, never above `cap`.
    pub fn new(start: Duration, cap: Duration) -> Backoff {
        Backoff { start, cap, jitter: false, next: start }
    }

    /// Each pause scaled by a random factor in [0.5, 1.5), so that a fleet
    /// does not reconnect in lockstep.
    pub fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The pause before the next try; the one after it is twice as long.
    pub fn next_pause(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        if self.jitter {
            let r = u16::from_be_bytes(super::random_bytes()) as f64 / 65536.0;
            d.mul_f64(0.5 + r)
        } else {
            d
        }
    }

    /// It worked: the next failure starts from the beginning again.
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(200), ms(1000));
        let seen: Vec<_> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(seen, vec![ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_pause(), ms(200));
        let mut j = Backoff::new(ms(1000), ms(1000)).with_jitter();
        for _ in 0..100 {
            let p = j.next_pause();
            assert!(p >= ms(500) && p < ms(1500), "{p:?}");
        }
    }
}
