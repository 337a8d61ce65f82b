//! Routing datagrams of the one shared UDP socket to their peer connection.
//!
//! A browser's first datagrams are STUN binding requests whose USERNAME is
//! `"<our ufrag>:<its ufrag>"`; our ufrag names the peer. Once a peer has been seen
//! from an address, everything else from that address (DTLS, SRTP, SRTCP) goes to it.
//! The table is bounded: a peer keeps at most `MAX_ADDRS_PER_PEER` addresses, so
//! spraying STUN with a guessed ufrag cannot grow it.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Addresses remembered per peer (a browser checks from each of its interfaces).
pub const MAX_ADDRS_PER_PEER: usize = 4;

/// The STUN USERNAME of a binding request, without allocating. `None` for anything
/// that is not a well-formed STUN message with that attribute.
pub fn stun_username(b: &[u8]) -> Option<&str> {
    // RFC 5389: first two bits zero, magic cookie, length a multiple of 4.
    if b.len() < 20 || b[0] & 0xC0 != 0 || b[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let body = b.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let value = body.get(i + 4..i + 4 + l)?;
        if kind == 0x0006 {
            return std::str::from_utf8(value).ok();
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    None
}

/// `<our ufrag>` of a USERNAME.
pub fn local_ufrag(username: &str) -> &str {
    username.split(':').next().unwrap_or_default()
}

/// The route table: ufrag → peer, remote address → peer.
#[derive(Debug, Default)]
pub struct Routes<K: Copy + Eq + std::hash::Hash> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    addrs: HashMap<K, Vec<SocketAddr>>,
}

impl<K: Copy + Eq + std::hash::Hash> Routes<K> {
    pub fn new() -> Self {
        Routes {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    pub fn add_peer(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
        self.addrs.entry(key).or_default();
    }

    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag)
    }

    /// Forgets the peer, its ufrag and every address it was seen from.
    pub fn remove_peer(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        for addr in self.addrs.remove(&key).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&key) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// The peer a datagram from `from` belongs to, learning the address from a STUN
    /// request that names a known ufrag.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<K> {
        if let Some(username) = stun_username(datagram) {
            if let Some(&key) = self.by_ufrag.get(local_ufrag(username)) {
                self.learn(from, key);
                return Some(key);
            }
        }
        self.by_addr.get(&from).copied()
    }

    fn learn(&mut self, from: SocketAddr, key: K) {
        if self.by_addr.get(&from) == Some(&key) {
            return;
        }
        // The address moves to this peer (a browser reusing a port for a new session).
        if let Some(old) = self.by_addr.insert(from, key) {
            if let Some(list) = self.addrs.get_mut(&old) {
                list.retain(|a| *a != from);
            }
        }
        let list = self.addrs.entry(key).or_default();
        if list.len() >= MAX_ADDRS_PER_PEER {
            let oldest = list.remove(0);
            self.by_addr.remove(&oldest);
        }
        list.push(from);
    }

    pub fn peers(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with USERNAME `user` (and a PRIORITY attribute before it).
    fn binding_request(user: &str) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 0x6e, 0x7f, 0x1e, 0xff];
        let u = user.as_bytes();
        attrs.extend_from_slice(&[0x00, 0x06]);
        attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attrs.extend_from_slice(u);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_the_username_of_a_binding_request() {
        let m = binding_request("srv1:brws");
        assert_eq!(stun_username(&m), Some("srv1:brws"));
        assert_eq!(local_ufrag("srv1:brws"), "srv1");
    }

    #[test]
    fn junk_and_truncated_input_is_not_stun() {
        let m = binding_request("srv1:brws");
        for cut in 0..m.len() {
            // Truncations either parse to nothing or never read out of bounds.
            let _ = stun_username(&m[..cut]);
        }
        assert_eq!(stun_username(&m[..m.len() - 4]), None);
        assert_eq!(stun_username(b""), None);
        assert_eq!(stun_username(&[0x80; 40]), None, "RTP is not STUN");
        assert_eq!(stun_username(&[0x16; 40]), None, "DTLS is not STUN");
        let mut huge_len = m.clone();
        huge_len[2] = 0xff;
        assert_eq!(stun_username(&huge_len), None);
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), 1);
        r.add_peer("bbbb".into(), 2);
        let x: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(r.route(x, b"\x16dtls before any check"), None);
        assert_eq!(r.route(x, &binding_request("aaaa:zz")), Some(1));
        assert_eq!(r.route(y, &binding_request("bbbb:zz")), Some(2));
        assert_eq!(r.route(x, b"\x16dtls"), Some(1));
        assert_eq!(r.route(y, b"\x80srtp"), Some(2));
        assert_eq!(r.route(x, &binding_request("nope:zz")), Some(1));
        r.remove_peer(1);
        assert_eq!(r.route(x, b"\x16dtls"), None);
        assert_eq!(r.route(x, &binding_request("aaaa:zz")), None);
        assert_eq!((r.peers(), r.addresses()), (1, 1));
    }

    #[test]
    fn addresses_per_peer_are_bounded() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), 1);
        for port in 0..100u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], 6000 + port));
            r.route(from, &binding_request("aaaa:zz"));
        }
        assert_eq!(r.addresses(), MAX_ADDRS_PER_PEER);
    }
}
