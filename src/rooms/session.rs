//! A signalling session as the room core sees it: identity, liveness, rate budget,
//! the rooms it is in and the media sessions (publishes and plays) it owns.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::messages::{ConnectInfo, SessionId};

/// What a `mediaSessionId` of a session refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The session publishes the stream of that name.
    Publish(String),
    /// The session plays the stream of that name.
    Play(String),
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: SessionId,
    /// Set by the `connection` message; `None` until then.
    pub info: Option<ConnectInfo>,
    pub last_seen: Instant,
    pub next_ping: Instant,
    pub rate: TokenBucket,
    pub rooms: BTreeSet<String>,
    pub endpoints: HashMap<String, Endpoint>,
    /// A participant inside the service (the device's camera and microphone): no
    /// socket, so no pings, no rate limit, and its streams are fed by `source`.
    pub local: bool,
    /// A local participant's name in the media engine: the named source its streams
    /// are fed from, the named sink its plays go to (an RTMP player).
    pub source: String,
    /// May use the reserved (device) login: the device's own participant only, not a
    /// local participant of another edge (an RTMP publisher).
    pub reserved_ok: bool,
}

impl Session {
    pub fn new(id: SessionId, now: Instant, ping_interval: Duration, rate: TokenBucket) -> Self {
        Session {
            id,
            info: None,
            last_seen: now,
            next_ping: now + ping_interval,
            rate,
            rooms: BTreeSet::new(),
            endpoints: HashMap::new(),
            local: false,
            source: String::new(),
            reserved_ok: false,
        }
    }

    /// The login given in `connection`, if any (empty counts as none).
    pub fn login(&self) -> Option<&str> {
        self.info
            .as_ref()
            .and_then(|i| i.login.as_deref())
            .filter(|l| !l.is_empty())
    }
}

/// A token bucket measured in messages. Going below zero is allowed down to
/// `-burst`: that debt is how far a session may keep flooding after being told to
/// slow down before it is disconnected.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    rate_per_sec: f64,
    burst: f64,
    last: Instant,
}

/// The verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accept,
    /// Over the limit: answer with an error.
    Reject,
    /// Far over the limit: close the session.
    Close,
}

impl TokenBucket {
    pub fn new(now: Instant, rate_per_sec: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst),
            last: now,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Admit::Accept
        } else if self.tokens >= -self.burst {
            Admit::Reject
        } else {
            Admit::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rejects_then_closes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 10, 5);
        for _ in 0..5 {
            assert_eq!(b.admit(t0), Admit::Accept);
        }
        for _ in 0..5 {
            assert_eq!(b.admit(t0), Admit::Reject);
        }
        assert_eq!(b.admit(t0), Admit::Close);
    }

    #[test]
    fn bucket_refills_with_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 10, 2);
        assert_eq!(b.admit(t0), Admit::Accept);
        assert_eq!(b.admit(t0), Admit::Accept);
        assert_eq!(b.admit(t0), Admit::Reject);
        // 1 s at 10/s refills far past the debt, capped at the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), Admit::Accept);
        assert_eq!(b.admit(t1), Admit::Accept);
        assert_eq!(b.admit(t1), Admit::Reject);
    }
}
