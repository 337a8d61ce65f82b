//! Routing datagrams of the one shared UDP socket to their peer connection.
//!
//! A browser's first datagrams are STUN binding requests whose USERNAME is
//! `"<our ufrag>:<its ufrag>"`; our ufrag names the peer. Once a peer has been seen
//! from an address, everything else from that address (DTLS, SRTP, SRTCP) goes to it.
//!
//! The ufrag is no secret (it travels in the answer SDP), so a STUN message may add or
//! move a route only when its MESSAGE-INTEGRITY verifies with the peer's ICE password
//! (and its FINGERPRINT, if any, is right): otherwise a few forged datagrams would
//! take a peer's address over. A STUN response reaches a peer only when it answers a
//! request that peer sent (same transaction id, from the address it went to: the
//! ICE-lite agent still sends a triggered check to a new pair and needs its answer),
//! and it never adds or moves a route. Every other STUN message (bad or missing
//! integrity, unsolicited responses, indications, truncated or malformed ones) is
//! dropped here, before it reaches a peer.
//! The table is bounded: a peer keeps at most `MAX_ADDRS_PER_PEER` addresses and the
//! last `MAX_TRANSACTIONS_PER_PEER` requests it sent.
//!
//! An address is whatever names the remote end of a path (`A`): a `SocketAddr` for one
//! UDP socket; the engine uses (transport, address), so a TCP connection (ICE-TCP) and
//! a UDP port of the same number are two different paths.

use std::collections::HashMap;
use std::net::SocketAddr;

use ring::hmac;

/// Addresses remembered per peer (a browser checks from each of its interfaces).
pub const MAX_ADDRS_PER_PEER: usize = 4;
/// Requests of a peer whose response is still welcome (an ICE-lite agent sends one
/// triggered check per new pair, and retransmits it a few times).
pub const MAX_TRANSACTIONS_PER_PEER: usize = 8;

const HEADER: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_FINGERPRINT: u16 = 0x8028;
/// RFC 5389 §15.5: the CRC-32 is XOR-ed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Whether a datagram is STUN by RFC 7983's first-byte rule (0..=3); such datagrams
/// never reach a peer unless they pass `verified_request`.
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.first().is_some_and(|&first| first < 4)
}

/// The parts of a well-formed STUN message that routing needs, found without
/// allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunView<'a> {
    /// The message class: 0 request, 1 indication, 2 success, 3 error response.
    pub class: u8,
    pub transaction: [u8; 12],
    pub username: Option<&'a str>,
    /// Offset of the MESSAGE-INTEGRITY attribute (its type field) in the datagram.
    integrity: Option<usize>,
    /// Offset of the FINGERPRINT attribute, when it is the last attribute.
    fingerprint: Option<usize>,
}

/// Reads a STUN message (RFC 5389: first two bits zero, magic cookie, length a
/// multiple of 4 and exactly the rest of the datagram, attributes within it).
/// `None` for anything else.
pub fn parse_stun(b: &[u8]) -> Option<StunView<'_>> {
    if b.len() < HEADER || b[0] & 0xC0 != 0 || b[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || HEADER + len != b.len() {
        return None;
    }
    let message_type = u16::from_be_bytes([b[0], b[1]]);
    let class = (((message_type >> 7) & 0b10) | ((message_type >> 4) & 0b01)) as u8;
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&b[8..HEADER]);
    let mut view = StunView {
        class,
        transaction,
        username: None,
        integrity: None,
        fingerprint: None,
    };
    let mut i = HEADER;
    while i < b.len() {
        let head = b.get(i..i + 4)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let l = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = b.get(i + 4..i + 4 + l)?;
        let next = i + 4 + l.div_ceil(4) * 4;
        if next > b.len() {
            return None;
        }
        if kind == ATTR_FINGERPRINT {
            // FINGERPRINT is the last attribute when present (RFC 5389 §15.5).
            if l != 4 || next != b.len() {
                return None;
            }
            view.fingerprint = Some(i);
        } else if view.integrity.is_none() {
            // Attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are not covered
            // by it and are ignored (RFC 5389 §15.4).
            match kind {
                ATTR_USERNAME => view.username = Some(std::str::from_utf8(value).ok()?),
                ATTR_MESSAGE_INTEGRITY if l == 20 => view.integrity = Some(i),
                ATTR_MESSAGE_INTEGRITY => return None,
                _ => {}
            }
        }
        i = next;
    }
    Some(view)
}

/// The STUN USERNAME of a message, without allocating. `None` for anything that is
/// not a well-formed STUN message with that attribute.
pub fn stun_username(b: &[u8]) -> Option<&str> {
    parse_stun(b)?.username
}

/// `<our ufrag>` of a USERNAME.
pub fn local_ufrag(username: &str) -> &str {
    username.split(':').next().unwrap_or_default()
}

/// The message's header with its length field set to `len` (RFC 5389 §15.4, §15.5:
/// integrity and fingerprint are computed as if the message ended after them).
fn header_with_length(b: &[u8], len: usize) -> Option<[u8; HEADER]> {
    let mut header: [u8; HEADER] = b.get(..HEADER)?.try_into().ok()?;
    let len = u16::try_from(len).ok()?;
    header[2..4].copy_from_slice(&len.to_be_bytes());
    Some(header)
}

/// Equality in time independent of where the slices differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CRC-32 (ISO-HDLC, as in zlib), table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &byte in *part {
            c = CRC_TABLE[((c ^ u32::from(byte)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

/// Whether the FINGERPRINT of `b` (if it has one) is right.
fn fingerprint_ok(b: &[u8], view: &StunView<'_>) -> bool {
    let Some(at) = view.fingerprint else {
        return true;
    };
    let Some(header) = header_with_length(b, at + 8 - HEADER) else {
        return false;
    };
    let Some(value) = b.get(at + 4..at + 8) else {
        return false;
    };
    let expected = crc32(&[&header, &b[HEADER..at]]) ^ FINGERPRINT_XOR;
    value == expected.to_be_bytes()
}

/// Whether the MESSAGE-INTEGRITY of `b` is the HMAC-SHA1 of the message under `key`
/// (short-term credentials: the key is the ICE password).
fn integrity_ok(b: &[u8], view: &StunView<'_>, key: &hmac::Key) -> bool {
    let Some(at) = view.integrity else {
        return false;
    };
    let Some(header) = header_with_length(b, at + 24 - HEADER) else {
        return false;
    };
    let Some(received) = b.get(at + 4..at + 24) else {
        return false;
    };
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&header);
    ctx.update(&b[HEADER..at]);
    same_bytes(ctx.sign().as_ref(), received)
}

/// An ICE password as the key of its messages' MESSAGE-INTEGRITY.
pub fn integrity_key(pwd: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, pwd.as_bytes())
}

/// Whether the parsed message `b` is a request whose FINGERPRINT (if any) and
/// MESSAGE-INTEGRITY (required) verify with `key`.
fn verifies(b: &[u8], view: &StunView<'_>, key: &hmac::Key) -> bool {
    view.class == 0 && fingerprint_ok(b, view) && integrity_ok(b, view, key)
}

/// Whether `b` is a STUN request for `<ufrag>:…` whose FINGERPRINT (if any) and
/// MESSAGE-INTEGRITY (required) verify with `key`.
pub fn verified_request(b: &[u8], ufrag: &str, key: &hmac::Key) -> bool {
    parse_stun(b).is_some_and(|view| {
        view.username.map(local_ufrag) == Some(ufrag) && verifies(b, &view, key)
    })
}

/// A peer as the route table knows it: its key and the key of its ICE password.
#[derive(Debug)]
struct Credentials<K> {
    key: K,
    integrity: hmac::Key,
}

/// What the table knows of one peer besides its ufrag.
#[derive(Debug)]
struct PeerRoutes<A> {
    /// Addresses it was seen from, oldest first.
    addrs: Vec<A>,
    /// Requests it sent: (destination, transaction id), a ring.
    transactions: [Option<(A, [u8; 12])>; MAX_TRANSACTIONS_PER_PEER],
    next_transaction: usize,
}

impl<A> Default for PeerRoutes<A> {
    fn default() -> Self {
        PeerRoutes {
            addrs: Vec::new(),
            transactions: std::array::from_fn(|_| None),
            next_transaction: 0,
        }
    }
}

/// The route table: ufrag → peer (with its ICE password), remote address → peer.
#[derive(Debug)]
pub struct Routes<K: Copy + Eq + std::hash::Hash, A: Copy + Eq + std::hash::Hash = SocketAddr> {
    by_ufrag: HashMap<String, Credentials<K>>,
    by_addr: HashMap<A, K>,
    peers: HashMap<K, PeerRoutes<A>>,
}

impl<K: Copy + Eq + std::hash::Hash, A: Copy + Eq + std::hash::Hash> Default for Routes<K, A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + std::hash::Hash, A: Copy + Eq + std::hash::Hash> Routes<K, A> {
    pub fn new() -> Self {
        Routes {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// A peer with our `ufrag` and ICE password `pwd` (what its STUN is checked with).
    pub fn add_peer(&mut self, ufrag: String, pwd: &str, key: K) {
        let integrity = integrity_key(pwd);
        self.by_ufrag.insert(ufrag, Credentials { key, integrity });
        self.peers.entry(key).or_default();
    }

    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag)
    }

    /// Forgets the peer, its ufrag and every address it was seen from.
    pub fn remove_peer(&mut self, key: K) {
        self.by_ufrag.retain(|_, c| c.key != key);
        for addr in self.peers.remove(&key).unwrap_or_default().addrs {
            if self.by_addr.get(&addr) == Some(&key) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Notes a datagram a peer sends to `to`: when it is a STUN request, its response
    /// will be let through.
    pub fn sent(&mut self, key: K, to: A, datagram: &[u8]) {
        if !looks_like_stun(datagram) {
            return;
        }
        let Some(view) = parse_stun(datagram).filter(|v| v.class == 0) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&key) {
            let slot = peer.next_transaction % MAX_TRANSACTIONS_PER_PEER;
            peer.transactions[slot] = Some((to, view.transaction));
            peer.next_transaction = slot + 1;
        }
    }

    /// The peer a datagram from `from` belongs to. A STUN request that names a known
    /// ufrag and verifies with that peer's password goes to it and teaches the route
    /// its address; a response to a request a peer sent to `from` goes to that peer;
    /// any other STUN message goes nowhere; the rest by address.
    pub fn route(&mut self, from: A, datagram: &[u8]) -> Option<K> {
        if !looks_like_stun(datagram) {
            return self.by_addr.get(&from).copied();
        }
        let view = parse_stun(datagram)?;
        if view.class >= 2 {
            let key = *self.by_addr.get(&from)?;
            let peer = self.peers.get_mut(&key)?;
            let slot = peer
                .transactions
                .iter()
                .position(|t| *t == Some((from, view.transaction)))?;
            // One response per request: a replayed copy goes nowhere.
            peer.transactions[slot] = None;
            return Some(key);
        }
        let credentials = self.by_ufrag.get(local_ufrag(view.username?))?;
        if !verifies(datagram, &view, &credentials.integrity) {
            return None;
        }
        let key = credentials.key;
        self.learn(from, key);
        Some(key)
    }

    fn learn(&mut self, from: A, key: K) {
        if self.by_addr.get(&from) == Some(&key) {
            return;
        }
        // The address moves to this peer (a browser reusing a port for a new session).
        if let Some(old) = self.by_addr.insert(from, key) {
            if let Some(peer) = self.peers.get_mut(&old) {
                peer.addrs.retain(|a| *a != from);
            }
        }
        let list = &mut self.peers.entry(key).or_default().addrs;
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
    use rtc::stun::attributes::ATTR_USERNAME as USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST};
    use rtc::stun::textattrs::Username;

    const PWD: &str = "0123456789abcdef01234567";

    /// A binding request as a browser sends it, built by the `rtc` crate's STUN code:
    /// USERNAME, MESSAGE-INTEGRITY with `pwd`, FINGERPRINT if `fingerprint`.
    fn signed_request(user: &str, pwd: &str, fingerprint: bool) -> Vec<u8> {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(USERNAME, user.to_owned())),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                provider.crypto(),
            )),
        ];
        if fingerprint {
            setters.push(Box::new(FINGERPRINT));
        }
        m.build(&setters).unwrap();
        m.raw
    }

    /// A binding request with USERNAME `user` (and a PRIORITY attribute before it),
    /// without MESSAGE-INTEGRITY.
    fn unsigned_request(user: &str) -> Vec<u8> {
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
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    /// `unsigned_request` plus a MESSAGE-INTEGRITY of 20 garbage bytes, as the
    /// forger sends it.
    fn forged_request(user: &str) -> Vec<u8> {
        let mut m = unsigned_request(user);
        m.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        m.extend_from_slice(&[0x5a; 20]);
        let len = (m.len() - HEADER) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn key() -> hmac::Key {
        integrity_key(PWD)
    }

    #[test]
    fn parses_the_username_of_a_binding_request() {
        let m = signed_request("srv1:brws", PWD, true);
        assert_eq!(stun_username(&m), Some("srv1:brws"));
        assert_eq!(
            stun_username(&unsigned_request("srv1:brws")),
            Some("srv1:brws")
        );
        assert_eq!(local_ufrag("srv1:brws"), "srv1");
    }

    #[test]
    fn a_valid_integrity_is_accepted_with_and_without_fingerprint() {
        for fingerprint in [true, false] {
            let m = signed_request("srv1:brws", PWD, fingerprint);
            assert!(
                verified_request(&m, "srv1", &key()),
                "fingerprint {fingerprint}"
            );
            assert!(!verified_request(&m, "srv2", &key()), "another ufrag");
        }
    }

    #[test]
    fn a_bad_or_missing_integrity_is_refused() {
        assert!(!verified_request(
            &signed_request("srv1:brws", "another password", true),
            "srv1",
            &key()
        ));
        assert!(!verified_request(
            &unsigned_request("srv1:brws"),
            "srv1",
            &key()
        ));
        assert!(!verified_request(
            &forged_request("srv1:brws"),
            "srv1",
            &key()
        ));
        // One flipped bit anywhere before the integrity (the username here) breaks it.
        let mut m = signed_request("srv1:brws", PWD, false);
        let at = m.len() - 30;
        m[at] ^= 1;
        assert!(!verified_request(&m, "srv1", &key()));
        // A wrong MESSAGE-INTEGRITY length is malformed.
        let mut m = signed_request("srv1:brws", PWD, false);
        let at = m.len() - 24;
        assert_eq!(m[at..at + 4], [0x00, 0x08, 0x00, 0x14]);
        m[at + 3] = 0x10;
        assert!(!verified_request(&m, "srv1", &key()));
    }

    #[test]
    fn a_bad_fingerprint_is_refused() {
        let mut m = signed_request("srv1:brws", PWD, true);
        let last = m.len() - 1;
        m[last] ^= 0x01;
        assert!(!verified_request(&m, "srv1", &key()));
        // FINGERPRINT must be last.
        let mut m = signed_request("srv1:brws", PWD, true);
        m.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = (m.len() - HEADER) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(!verified_request(&m, "srv1", &key()));
    }

    #[test]
    fn responses_and_indications_are_refused_even_when_signed() {
        for class_bits in [0x0010u16, 0x0100, 0x0110] {
            let mut m = signed_request("srv1:brws", PWD, false);
            let t = u16::from_be_bytes([m[0], m[1]]) | class_bits;
            m[0..2].copy_from_slice(&t.to_be_bytes());
            // Re-sign over the new type, so only the class is wrong.
            let at = m.len() - 24;
            let mut ctx = hmac::Context::with_key(&key());
            ctx.update(&m[..at]);
            let tag = ctx.sign();
            m[at + 4..].copy_from_slice(tag.as_ref());
            assert!(parse_stun(&m).is_some_and(|v| v.class != 0));
            assert!(
                !verified_request(&m, "srv1", &key()),
                "class bits {class_bits:#06x}"
            );
        }
    }

    #[test]
    fn junk_and_truncated_input_is_not_stun() {
        let m = signed_request("srv1:brws", PWD, true);
        for cut in 0..m.len() {
            // Truncations parse to nothing (the length no longer matches) and never
            // read out of bounds.
            assert_eq!(parse_stun(&m[..cut]), None, "cut at {cut}");
            assert!(!verified_request(&m[..cut], "srv1", &key()));
        }
        // A length field that lies about the datagram, either way.
        for len in [0u16, 4, 0xfffc] {
            let mut bad = m.clone();
            bad[2..4].copy_from_slice(&len.to_be_bytes());
            assert_eq!(parse_stun(&bad), None, "length {len}");
        }
        // An attribute running past the end.
        let mut bad = unsigned_request("srv1:brws");
        bad[HEADER + 10] = 0xff;
        assert_eq!(parse_stun(&bad), None);
        assert_eq!(stun_username(b""), None);
        assert_eq!(stun_username(&[0x80; 40]), None, "RTP is not STUN");
        assert_eq!(stun_username(&[0x16; 40]), None, "DTLS is not STUN");
        assert!(!looks_like_stun(&[0x80; 40]) && !looks_like_stun(&[0x16; 40]));
        assert!(looks_like_stun(&m));
    }

    #[test]
    fn routes_by_verified_ufrag_then_by_address() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), PWD, 1);
        r.add_peer("bbbb".into(), "bbbb password", 2);
        let x: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(r.route(x, b"\x16dtls before any check"), None);
        assert_eq!(r.route(x, &signed_request("aaaa:zz", PWD, true)), Some(1));
        assert_eq!(
            r.route(y, &signed_request("bbbb:zz", "bbbb password", true)),
            Some(2)
        );
        assert_eq!(r.route(x, b"\x16dtls"), Some(1));
        assert_eq!(r.route(y, b"\x80srtp"), Some(2));
        // STUN that does not verify goes nowhere, even from a known address.
        assert_eq!(r.route(x, &signed_request("nope:zz", PWD, true)), None);
        assert_eq!(r.route(x, &forged_request("aaaa:zz")), None);
        assert_eq!(r.route(x, &unsigned_request("aaaa:zz")), None);
        r.remove_peer(1);
        assert_eq!(r.route(x, b"\x16dtls"), None);
        assert_eq!(r.route(x, &signed_request("aaaa:zz", PWD, true)), None);
        assert_eq!((r.peers(), r.addresses()), (1, 1));
    }

    #[test]
    fn forged_requests_neither_add_nor_move_a_route() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), PWD, 1);
        r.add_peer("bbbb".into(), "bbbb password", 2);
        let browser: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            r.route(browser, &signed_request("aaaa:zz", PWD, true)),
            Some(1)
        );
        assert_eq!(
            r.route(other, &signed_request("bbbb:zz", "bbbb password", true)),
            Some(2)
        );
        // The attacker knows both ufrags (they are in the answers), not the passwords:
        // from new ports, and from the other peer's own address.
        for port in 0..100u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], 6000 + port));
            assert_eq!(r.route(from, &forged_request("aaaa:zz")), None);
            assert_eq!(
                r.route(from, &signed_request("aaaa:zz", "guess", true)),
                None
            );
            assert_eq!(r.route(from, b"\x80srtp"), None);
        }
        assert_eq!(r.route(other, &forged_request("aaaa:zz")), None);
        assert_eq!(r.addresses(), 2, "no route added");
        assert_eq!(r.route(browser, b"\x80srtp"), Some(1), "no route moved");
        assert_eq!(r.route(other, b"\x80srtp"), Some(2), "no route moved");
    }

    /// `request` turned into a (success) response with the same transaction id.
    fn response_to(request: &[u8]) -> Vec<u8> {
        let mut m = vec![0x01, 0x01, 0x00, 0x00];
        m.extend_from_slice(&request[4..HEADER]);
        m
    }

    #[test]
    fn only_responses_to_requests_a_peer_sent_reach_it() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), PWD, 1);
        r.add_peer("bbbb".into(), "bbbb password", 2);
        let browser: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let attacker: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            r.route(browser, &signed_request("aaaa:zz", PWD, true)),
            Some(1)
        );
        assert_eq!(
            r.route(other, &signed_request("bbbb:zz", "bbbb password", true)),
            Some(2)
        );
        // Peer 1's triggered check toward the browser (and media, which is not noted).
        let check = signed_request("zz:aaaa", "browser password", true);
        r.sent(1, browser, b"\x80srtp");
        r.sent(1, browser, &check);
        let response = response_to(&check);
        assert_eq!(parse_stun(&response).map(|v| v.class), Some(2));
        // Unsolicited, from elsewhere, or for another peer: nowhere.
        assert_eq!(
            r.route(browser, &response_to(&signed_request("zz:aaaa", "x", true))),
            None
        );
        assert_eq!(r.route(attacker, &response), None);
        assert_eq!(r.route(other, &response), None);
        // The real one, once.
        assert_eq!(r.route(browser, &response), Some(1));
        assert_eq!(r.route(browser, &response), None, "a replay goes nowhere");
        assert_eq!(r.addresses(), 2, "responses never add a route");
        // The ring is bounded: the oldest requests are forgotten.
        let checks: Vec<Vec<u8>> = (0..MAX_TRANSACTIONS_PER_PEER + 1)
            .map(|_| signed_request("zz:aaaa", "browser password", false))
            .collect();
        for c in &checks {
            r.sent(1, browser, c);
        }
        assert_eq!(r.route(browser, &response_to(&checks[0])), None);
        assert_eq!(r.route(browser, &response_to(&checks[1])), Some(1));
        r.remove_peer(1);
        assert_eq!(r.route(browser, &response_to(&checks[2])), None);
    }

    #[test]
    fn addresses_per_peer_are_bounded() {
        let mut r: Routes<u32> = Routes::new();
        r.add_peer("aaaa".into(), PWD, 1);
        let m = signed_request("aaaa:zz", PWD, true);
        for port in 0..100u16 {
            let from = SocketAddr::from(([127, 0, 0, 1], 6000 + port));
            assert_eq!(r.route(from, &m), Some(1));
        }
        assert_eq!(r.addresses(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn one_address_over_udp_and_over_tcp_is_two_paths() {
        // The engine's addresses: (transport, remote address).
        let mut r: Routes<u32, (u8, SocketAddr)> = Routes::new();
        r.add_peer("aaaa".into(), PWD, 1);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let (udp, tcp) = (0u8, 1u8);
        assert_eq!(
            r.route((tcp, a), &signed_request("aaaa:zz", PWD, true)),
            Some(1)
        );
        assert_eq!(r.route((tcp, a), b"\x80srtp"), Some(1));
        assert_eq!(r.route((udp, a), b"\x80srtp"), None, "not learnt over UDP");
        r.remove_peer(1);
        assert_eq!(r.route((tcp, a), b"\x80srtp"), None);
    }
}
