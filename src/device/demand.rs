//! Whether the device's camera and microphone should capture now: on as soon as they
//! are needed (someone to send to, a push, a recording), off only after a grace
//! period without need, so that a participant who leaves and comes back (or a
//! reconnection) does not restart the camera. Pure: the driver gives the time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Demand {
    grace: Duration,
    /// `[device] always_on`: needed all the time.
    always_on: bool,
    /// Capturing (the state the last change asked for).
    on: bool,
    /// No longer needed: capture stops at this time unless needed again.
    off_at: Option<Instant>,
}

impl Demand {
    /// Starts off (on with `always_on`).
    pub fn new(grace: Duration, always_on: bool) -> Demand {
        Demand {
            grace,
            always_on,
            on: always_on,
            off_at: None,
        }
    }

    /// Whether the sources should capture now.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// What is needed at `now`: `Some(true)` to start capturing, `Some(false)` to
    /// stop, `None` to leave it as it is. Needed again within the grace, nothing
    /// stops.
    pub fn update(&mut self, now: Instant, needed: bool) -> Option<bool> {
        if needed || self.always_on {
            self.off_at = None;
            if self.on {
                return None;
            }
            self.on = true;
            return Some(true);
        }
        if !self.on {
            return None;
        }
        let at = *self.off_at.get_or_insert(now + self.grace);
        if now < at {
            return None;
        }
        self.on = false;
        self.off_at = None;
        Some(false)
    }

    /// When `update` may have a change to make without anything else happening (the
    /// end of the grace).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.off_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn starts_at_once_and_stops_after_the_grace() {
        let t0 = Instant::now();
        let mut d = Demand::new(GRACE, false);
        assert!(!d.is_on());
        assert_eq!(d.update(t0, false), None, "nobody: stays off");
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.update(t0, true), Some(true), "needed: on at once");
        assert_eq!(d.update(t0, true), None);
        let left = t0 + Duration::from_secs(5);
        assert_eq!(d.update(left, false), None, "the grace starts");
        assert_eq!(d.poll_timeout(), Some(left + GRACE));
        assert_eq!(
            d.update(left + GRACE - Duration::from_millis(1), false),
            None
        );
        assert!(d.is_on());
        assert_eq!(d.update(left + GRACE, false), Some(false));
        assert!(!d.is_on());
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.update(left + GRACE * 2, false), None);
    }

    #[test]
    fn needed_again_within_the_grace_nothing_stops() {
        let t0 = Instant::now();
        let mut d = Demand::new(GRACE, false);
        assert_eq!(d.update(t0, true), Some(true));
        assert_eq!(d.update(t0 + Duration::from_secs(1), false), None);
        // Back after 9 s: no change, and the timer is gone.
        assert_eq!(d.update(t0 + Duration::from_secs(10), true), None);
        assert_eq!(d.poll_timeout(), None);
        // Gone again: a new, full grace from this moment.
        let again = t0 + Duration::from_secs(12);
        assert_eq!(d.update(again, false), None);
        assert_eq!(d.poll_timeout(), Some(again + GRACE));
        assert_eq!(
            d.update(t0 + Duration::from_secs(20), false),
            None,
            "not the old grace"
        );
        assert_eq!(d.update(again + GRACE, false), Some(false));
    }

    #[test]
    fn always_on_never_stops() {
        let t0 = Instant::now();
        let mut d = Demand::new(GRACE, true);
        assert!(d.is_on());
        assert_eq!(d.update(t0, false), None);
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.update(t0 + GRACE * 100, false), None);
        assert!(d.is_on());
    }

    #[test]
    fn a_zero_grace_stops_at_once() {
        let t0 = Instant::now();
        let mut d = Demand::new(Duration::ZERO, false);
        assert_eq!(d.update(t0, true), Some(true));
        assert_eq!(d.update(t0, false), Some(false));
        assert_eq!(d.poll_timeout(), None);
    }
}
