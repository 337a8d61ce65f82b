//! When to give up on a camera or microphone and when to try it again: stall
//! detection and exponential backoff, with time as an input (tested with simulated
//! time; the capture threads pass `Instant::now()`).

use std::time::{Duration, Instant};

/// The longest wait between two attempts to open a source.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// A source that delivered this long counts as recovered: the next failure starts
/// the backoff from the beginning again.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Live { since: Instant, last: Instant },
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    retry: Duration,
    stall: Duration,
    /// Failures in a row (without a healthy stretch between them).
    failures: u32,
    state: State,
}

impl Supervisor {
    pub fn new(retry: Duration, stall: Duration) -> Supervisor {
        Supervisor {
            retry,
            stall,
            failures: 0,
            state: State::Closed,
        }
    }

    /// The source opened.
    pub fn opened(&mut self, now: Instant) {
        self.state = State::Live {
            since: now,
            last: now,
        };
    }

    /// The source delivered media.
    pub fn delivered(&mut self, now: Instant) {
        if let State::Live { since, last } = &mut self.state {
            *last = now;
            if now.duration_since(*since) >= HEALTHY_AFTER {
                self.failures = 0;
            }
        }
    }

    /// Nothing arrived for the stall time.
    pub fn stalled(&self, now: Instant) -> bool {
        match self.state {
            State::Live { last, .. } => now.duration_since(last) >= self.stall,
            State::Closed => false,
        }
    }

    /// The source failed to open or failed while live: how long to wait before the
    /// next attempt (`retry`, doubling, at most `RETRY_MAX`).
    pub fn failed(&mut self, now: Instant) -> Duration {
        if let State::Live { since, .. } = self.state {
            if now.duration_since(since) >= HEALTHY_AFTER {
                self.failures = 0;
            }
        }
        self.state = State::Closed;
        let delay = self
            .retry
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_MAX.max(self.retry));
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backs_off_exponentially_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(ms(1000), ms(3000));
        let delays: Vec<u64> = (0..8)
            .map(|i| s.failed(t0 + ms(i)).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn a_healthy_stretch_resets_the_backoff_a_flapping_source_does_not() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(ms(500), ms(3000));
        assert_eq!(s.failed(t0), ms(500));
        assert_eq!(s.failed(t0 + ms(500)), ms(1000));
        // Opens, delivers for a second, fails: still backing off.
        s.opened(t0 + ms(2000));
        s.delivered(t0 + ms(3000));
        assert_eq!(s.failed(t0 + ms(3000)), ms(2000));
        // Opens and runs for a minute: the next failure starts over.
        s.opened(t0 + ms(10_000));
        for i in 1..=60 {
            s.delivered(t0 + ms(10_000 + i * 1000));
        }
        assert_eq!(s.failed(t0 + ms(70_000)), ms(500));
    }

    #[test]
    fn a_source_stalls_after_the_stall_time_without_media() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(ms(1000), ms(3000));
        assert!(!s.stalled(t0 + ms(10_000)), "closed sources do not stall");
        s.opened(t0);
        assert!(!s.stalled(t0 + ms(2999)));
        assert!(s.stalled(t0 + ms(3000)), "opened but never delivered");
        s.delivered(t0 + ms(2500));
        assert!(!s.stalled(t0 + ms(5499)));
        assert!(s.stalled(t0 + ms(5500)));
        s.failed(t0 + ms(5500));
        assert!(!s.stalled(t0 + ms(60_000)));
    }
}
