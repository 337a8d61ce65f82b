//! Who may read `/metrics`: loopback clients, the addresses of `[metrics] allow`, and
//! clients with an `[api]` key (`Authorization: Bearer <key>`).
//!
//! One function, so that it can give way to the admin API's access rule.

use std::net::IpAddr;

use ring::digest::{digest, SHA256};

use crate::config::{in_network, parse_network, Api, Metrics};

/// Whether a client at `peer` sending `authorization` (the header's value) may read
/// the metrics.
pub fn allowed(peer: IpAddr, authorization: Option<&str>, metrics: &Metrics, api: &Api) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    if peer.is_loopback() {
        return true;
    }
    if metrics
        .allow
        .iter()
        .filter_map(|a| parse_network(a))
        .any(|net| in_network(peer, net))
    {
        return true;
    }
    let Some(key) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let presented = digest(&SHA256, key.trim().as_bytes());
    // Every configured key is compared, whichever matches.
    let mut found = false;
    for configured in &api.keys {
        if let Some(expected) = key_digest(configured) {
            found |= same(presented.as_ref(), &expected);
        }
    }
    found
}

/// The SHA-256 of a configured key: `"sha256:<hex>"` or the key itself.
fn key_digest(configured: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    match configured.strip_prefix("sha256:") {
        Some(hex) => {
            let hex = hex.as_bytes();
            if hex.len() != 64 {
                return None;
            }
            for (i, pair) in hex.chunks(2).enumerate() {
                let nibble = |c: u8| (c as char).to_digit(16);
                out[i] = (nibble(pair[0])? * 16 + nibble(pair[1])?) as u8;
            }
        }
        None => out.copy_from_slice(digest(&SHA256, configured.as_bytes()).as_ref()),
    }
    Some(out)
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn rule() {
        let key = "a-long-enough-metrics-key";
        let api = Api {
            keys: vec![
                format!("sha256:{}", hex(digest(&SHA256, key.as_bytes()).as_ref())),
                "the-key-itself-0123456789".into(),
            ],
            ..Api::default()
        };
        let metrics = Metrics {
            enabled: true,
            allow: vec!["10.1.0.0/16".into(), "192.0.2.7".into()],
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Loopback, with or without keys.
        assert!(allowed(ip("127.0.0.1"), None, &metrics, &api));
        assert!(allowed(ip("::1"), None, &metrics, &api));
        assert!(allowed(ip("::ffff:127.0.0.1"), None, &metrics, &api));
        // [metrics] allow.
        assert!(allowed(ip("10.1.2.3"), None, &metrics, &api));
        assert!(allowed(ip("192.0.2.7"), None, &metrics, &api));
        assert!(allowed(ip("::ffff:10.1.9.9"), None, &metrics, &api));
        // Keys, hashed or not.
        let other = ip("198.51.100.4");
        assert!(allowed(
            other,
            Some(&format!("Bearer {key}")),
            &metrics,
            &api
        ));
        assert!(allowed(
            other,
            Some("Bearer the-key-itself-0123456789"),
            &metrics,
            &api
        ));
        // Refused: no key, a wrong key, another scheme, an address outside.
        assert!(!allowed(other, None, &metrics, &api));
        assert!(!allowed(
            other,
            Some("Bearer wrong-key-0123456789"),
            &metrics,
            &api
        ));
        assert!(!allowed(
            other,
            Some(&format!("Basic {key}")),
            &metrics,
            &api
        ));
        assert!(!allowed(ip("10.2.0.1"), None, &metrics, &api));
        assert!(!allowed(other, Some("Bearer "), &metrics, &Api::default()));
    }
}
