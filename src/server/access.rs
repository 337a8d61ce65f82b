//! Who may use the admin API (`/api/v1`): default deny.
//!
//! With `[api] keys` a request needs `Authorization: Bearer <key>` naming one of them;
//! the keys are kept as SHA-256 digests (plain keys of the configuration are hashed at
//! start, `"sha256:<hex>"` entries decoded) and a presented key's digest is compared
//! with every one of them without an early exit. Without keys only loopback clients
//! (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) are answered: the device's own panel.
//! The peer address is the TCP peer's: `X-Forwarded-For`, `Forwarded` and the like are
//! not trusted.
//!
//! A wrong key and a missing key get the same 401. Failed attempts are counted per
//! source address in a token bucket of `failed_attempts_per_minute`; an address over it
//! gets 429 with `Retry-After` (before its key is even looked at) until the bucket
//! refills. The map of buckets is bounded like `listener::Admission`'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use ring::digest::{digest, SHA256};

use super::control::ApiError;
use crate::config;

/// Buckets kept before full ones are pruned.
const PRUNE_ABOVE: usize = 4096;
/// Buckets kept at most; addresses beyond share one bucket.
const MAX_BUCKETS: usize = 8192;

/// The configured keys as SHA-256 digests.
#[derive(Clone)]
pub(crate) struct Keys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys)", self.digests.len())
    }
}

impl Keys {
    /// The digests of `[api] keys` (entries that are neither are left out: the
    /// configuration's validation refuses them).
    pub fn new(cfg: &config::Api) -> Keys {
        let digests = cfg
            .keys
            .iter()
            .filter_map(|key| match key.strip_prefix("sha256:") {
                Some(hex) => decode_hex(hex),
                None => Some(sha256(key.as_bytes())),
            })
            .collect();
        Keys { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `key` is one of them, in time independent of which one (or none).
    pub fn matches(&self, key: &str) -> bool {
        let presented = sha256(key.as_bytes());
        let found = self.digests.iter().fold(0u8, |found, d| {
            let diff = d
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            // 1 when equal, without a branch on the bytes.
            found | (((u16::from(diff)).wrapping_sub(1) >> 8) as u8 & 1)
        });
        found == 1
    }
}

/// The SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// 64 hex digits as 32 bytes.
fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Loopback: 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The key of `Authorization: Bearer <key>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// The one answer to a wrong or missing key.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::new(
        401,
        "unauthorized",
        "A valid API key is required: Authorization: Bearer <key>",
    )
}

/// Whether a request from `peer` with `headers` may use the admin API: a configured key
/// in `Authorization: Bearer`, or, with no key configured, a loopback peer. 401 when not
/// (403 for a non-loopback peer while no key is configured). Rate limiting is the
/// caller's ([`Failures`]).
pub(crate) fn check(keys: &Keys, peer: IpAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return match is_loopback(peer) {
            true => Ok(()),
            false => Err(ApiError::new(
                403,
                "forbidden",
                "The admin API answers loopback clients only: configure [api] keys to use it from the network",
            )),
        };
    }
    match bearer(headers) {
        Some(key) if keys.matches(key) => Ok(()),
        _ => Err(unauthorized()),
    }
}

/// A token bucket of failed attempts per source address.
#[derive(Debug)]
pub(crate) struct Failures {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Failures {
    pub fn new(per_minute: u32) -> Failures {
        Failures {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        self.capacity() / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + elapsed * self.rate()).min(self.capacity()),
            at: now,
        }
    }

    fn key(buckets: &HashMap<IpAddr, Bucket>, ip: IpAddr) -> IpAddr {
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&ip) {
            // Addresses beyond the bound share one bucket.
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            ip
        }
    }

    /// `Err(retry after)` when `ip` has no failed attempt left.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(&buckets, ip);
        let Some(b) = buckets.get(&key).copied() else {
            return Ok(());
        };
        let b = self.refilled(b, now);
        if b.tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / self.rate();
        Err(Duration::from_secs_f64(wait.max(0.0)).max(Duration::from_secs(1)))
    }

    /// Counts a failed attempt of `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_ABOVE {
            let capacity = self.capacity();
            let rate = self.rate();
            buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + elapsed * rate < capacity
            });
        }
        let key = Self::key(&buckets, ip);
        let full = Bucket {
            tokens: self.capacity(),
            at: now,
        };
        let b = self.refilled(buckets.get(&key).copied().unwrap_or(full), now);
        buckets.insert(
            key,
            Bucket {
                tokens: (b.tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn keys_and_loopback() {
        let hashed = format!(
            "sha256:{}",
            sha256(b"second-key-0123456789")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let cfg = config::Api {
            keys: vec!["first-key-0123456789".into(), hashed],
            ..config::Api::default()
        };
        let keys = Keys::new(&cfg);
        let far: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(check(&keys, far, &headers("Bearer first-key-0123456789")).is_ok());
        assert!(check(&keys, far, &headers("bearer second-key-0123456789")).is_ok());
        let wrong = check(&keys, far, &headers("Bearer nope")).unwrap_err();
        let missing = check(&keys, far, &HeaderMap::new()).unwrap_err();
        assert_eq!(wrong, missing);
        assert_eq!(wrong.status, 401);
        // Keys configured: loopback needs one too.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(check(&keys, lo, &HeaderMap::new()).unwrap_err().status, 401);

        let none = Keys::new(&config::Api::default());
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(
                check(&none, ip.parse().unwrap(), &HeaderMap::new()).is_ok(),
                "{ip}"
            );
        }
        for ip in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"] {
            let mut h = headers("Bearer first-key-0123456789");
            h.insert("x-forwarded-for", "127.0.0.1".parse().unwrap());
            assert_eq!(
                check(&none, ip.parse().unwrap(), &h).unwrap_err().status,
                403
            );
        }
    }

    #[test]
    fn failures_are_limited() {
        let f = Failures::new(3);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(f.admit(ip, t0).is_ok());
            f.failed(ip, t0);
        }
        let wait = f.admit(ip, t0).unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20));
        assert!(f.admit(other, t0).is_ok());
        // One attempt back after a third of a minute.
        assert!(f.admit(ip, t0 + Duration::from_secs(21)).is_ok());
    }
}
