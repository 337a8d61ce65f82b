//! A play peer's media past the `rtc` pipeline: the forwarding fast path.
//!
//! Once DTLS is done, a player's RTP no longer goes through the peer connection's
//! handler chain (sender checks, interceptors, stats, a copy per layer): the stream
//! core's packet is written once into a reused buffer, protected with the player's own
//! SRTP sending context (the keys the DTLS handshake exported, `rtc`'s
//! `local_srtp_keys`) and handed to the socket as it is. What the interceptors did for
//! a sender is done here, with the same rules:
//! - the last `HISTORY` video packets are kept (the stream core's own packet, no copy of
//!   its payload) and a player's NACK gets them again, protected anew (same index, so
//!   the same bytes);
//! - a sender report per track every second (NTP and RTP time of now, packets and
//!   payload octets sent), which the browser needs for lip sync.
//!
//! The peer connection keeps everything else: ICE, DTLS, the player's RTCP (decrypted
//! by its receiving context), and it sends no RTP or RTCP for these SSRCs itself (no
//! sender interceptors are registered for players), so the SRTP and SRTCP indexes here
//! are the only ones. Sans-I/O: time comes in, protected datagrams go out.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::peer_connection::SrtpKeys;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;

/// Video packets kept for NACKs: ~0.9 s at 2.5 Mbit/s, more than a browser waits.
pub const HISTORY: usize = 512;
/// Retransmissions per player per second, and at once: a NACK is a few bytes and
/// can name hundreds of packets, so what it may cost us is bounded (about the packet
/// rate of a 2.5 Mbit/s stream).
pub const RESEND_PER_SEC: u32 = 300;
/// Besides, a player earns one retransmission for every two video packets it is sent
/// (saved up to `RESEND_BURST`, which it starts with: a key frame lost whole): a
/// player behind a congested link NACKs most of what it is sent, again and again, and
/// answering all of it would pour more into the link than the stream itself (seen in
/// tests/sfu_ws.rs's bad network: 2 168 datagrams dropped at a 200 kbps link carrying
/// 400 packets). Repair then costs at most half again the stream's rate; libwebrtc caps
/// its retransmissions by its bandwidth estimate the same way.
pub const RESEND_BURST: u32 = 128;
/// Sender reports this often, the first one this soon after the first packet.
const REPORT_EVERY: Duration = Duration::from_secs(1);
const FIRST_REPORT: Duration = Duration::from_millis(200);
/// Seconds from 1900 (NTP's epoch) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One outgoing track: what its sender reports say.
#[derive(Debug, Clone, Copy)]
struct Track {
    ssrc: u32,
    clock_rate: u32,
    packets: u32,
    octets: u32,
    /// The RTP time of the last packet sent and when it was sent.
    last: (u32, Instant),
}

/// Wall-clock time for sender reports: a fixed pairing of the monotonic clock with the
/// system clock, so reports of one player (audio and video) share one timeline.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix: Duration,
}

impl WallClock {
    pub fn new(at: Instant, wall: SystemTime) -> Self {
        WallClock {
            at,
            unix: wall.duration_since(UNIX_EPOCH).unwrap_or_default(),
        }
    }

    /// 64-bit NTP time (seconds since 1900 . fraction) of `now`.
    pub fn ntp(&self, now: Instant) -> u64 {
        let t = self.unix + now.saturating_duration_since(self.at);
        let secs = t.as_secs().wrapping_add(NTP_UNIX_OFFSET);
        let frac = (u64::from(t.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

pub struct PlayOut {
    srtp: Context,
    /// The packet in clear, written here before it is protected (reused).
    scratch: Vec<u8>,
    tracks: Vec<Track>,
    /// Sent video packets by `sequence number % HISTORY`.
    history: Vec<Option<Packet>>,
    next_report: Option<Instant>,
    clock: WallClock,
    /// Retransmissions left, and when the budget was last topped up.
    budget: (u32, Option<Instant>),
    /// Retransmissions earned by the video sent, in halves (`RESEND_BURST`).
    earned: u32,
}

impl std::fmt::Debug for PlayOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayOut")
            .field("tracks", &self.tracks)
            .field("next_report", &self.next_report)
            .finish_non_exhaustive()
    }
}

impl PlayOut {
    pub fn new(keys: &SrtpKeys, clock: WallClock) -> Result<Self, String> {
        let provider =
            rtc::crypto::default_provider().map_err(|e| format!("crypto provider: {e}"))?;
        let srtp = Context::new(
            &keys.master_key,
            &keys.master_salt,
            keys.profile,
            None,
            None,
            provider.crypto(),
        )
        .map_err(|e| format!("SRTP context: {e}"))?;
        Ok(PlayOut {
            srtp,
            scratch: Vec::with_capacity(1500),
            tracks: Vec::with_capacity(2),
            history: Vec::new(),
            next_report: None,
            clock,
            budget: (RESEND_PER_SEC, None),
            earned: 2 * RESEND_BURST,
        })
    }

    /// The packet protected for the wire. `keep`: kept for NACKs (video).
    pub fn protect(
        &mut self,
        now: Instant,
        packet: Packet,
        clock_rate: u32,
        keep: bool,
    ) -> Result<BytesMut, String> {
        let out = self.seal(&packet)?;
        let header = &packet.header;
        let payload = packet.payload.len() as u32;
        match self.tracks.iter_mut().find(|t| t.ssrc == header.ssrc) {
            Some(t) => {
                t.packets = t.packets.wrapping_add(1);
                t.octets = t.octets.wrapping_add(payload);
                t.last = (header.timestamp, now);
                t.clock_rate = clock_rate;
            }
            None => self.tracks.push(Track {
                ssrc: header.ssrc,
                clock_rate,
                packets: 1,
                octets: payload,
                last: (header.timestamp, now),
            }),
        }
        if self.next_report.is_none() {
            self.next_report = Some(now + FIRST_REPORT);
        }
        if keep {
            self.earned = (self.earned + 1).min(2 * RESEND_BURST);
            if self.history.is_empty() {
                self.history.resize_with(HISTORY, || None);
            }
            let slot = usize::from(packet.header.sequence_number) % HISTORY;
            self.history[slot] = Some(packet);
        }
        Ok(out)
    }

    fn seal(&mut self, packet: &Packet) -> Result<BytesMut, String> {
        let size = packet.marshal_size();
        self.scratch.resize(size, 0);
        let n = packet
            .marshal_to(&mut self.scratch)
            .map_err(|e| format!("RTP: {e}"))?;
        self.srtp
            .encrypt_rtp_with_header(&self.scratch[..n], &packet.header)
            .map_err(|e| format!("SRTP: {e}"))
    }

    /// The kept packets of `ssrc` with these sequence numbers, protected again, each
    /// once, within the retransmission budgets (per second, and earned by what was
    /// sent); those no longer kept are skipped.
    pub fn resend(&mut self, now: Instant, ssrc: u32, seqs: &[u16]) -> Vec<BytesMut> {
        let (left, since) = &mut self.budget;
        let refill = since.map_or(RESEND_PER_SEC, |t| {
            let ms = now.saturating_duration_since(t).as_millis();
            (ms * u128::from(RESEND_PER_SEC) / 1000).min(u128::from(RESEND_PER_SEC)) as u32
        });
        if refill > 0 || since.is_none() {
            *left = (*left + refill).min(RESEND_PER_SEC);
            *since = Some(now);
        }
        let mut wanted: Vec<u16> = seqs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::new();
        for seq in wanted {
            if self.budget.0 == 0 || self.earned < 2 {
                break;
            }
            let slot = usize::from(seq) % HISTORY;
            let Some(packet) = self.history.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            if packet.header.ssrc == ssrc && packet.header.sequence_number == seq {
                if let Ok(b) = self.seal(&packet) {
                    self.budget.0 -= 1;
                    self.earned -= 2;
                    out.push(b);
                }
            }
            self.history[slot] = Some(packet);
        }
        out
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// The sender reports due at `now`, protected, one compound packet per track.
    pub fn reports(&mut self, now: Instant) -> Vec<BytesMut> {
        if self.next_report.is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.next_report = Some(now + REPORT_EVERY);
        let ntp_time = self.clock.ntp(now);
        let mut out = Vec::with_capacity(self.tracks.len());
        for t in &self.tracks {
            let elapsed = now.saturating_duration_since(t.last.1);
            let ticks = elapsed.as_nanos() * u128::from(t.clock_rate) / 1_000_000_000;
            let sr = SenderReport {
                ssrc: t.ssrc,
                ntp_time,
                rtp_time: t.last.0.wrapping_add(ticks as u32),
                packet_count: t.packets,
                octet_count: t.octets,
                ..Default::default()
            };
            let Ok(clear) = sr.marshal() else { continue };
            if let Ok(b) = self.srtp.encrypt_rtcp(&clear) {
                out.push(b);
            }
        }
        out
    }
}

/// The sequence numbers a player's NACKs ask for, by media SSRC.
pub fn nacked(packets: &[Box<dyn rtc::rtcp::packet::Packet>]) -> Vec<(u32, Vec<u16>)> {
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    packets
        .iter()
        .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
        .map(|n| {
            let seqs = n.nacks.iter().flat_map(|pair| pair.packet_list()).collect();
            (n.media_ssrc, seqs)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::rtp::header::Header;
    use rtc::shared::marshal::Unmarshal;
    use rtc::srtp::protection_profile::ProtectionProfile;

    pub(crate) fn keys(profile: ProtectionProfile) -> SrtpKeys {
        SrtpKeys {
            profile,
            master_key: (0..profile.key_len() as u8).collect(),
            master_salt: (100..100 + profile.salt_len() as u8).collect(),
        }
    }

    pub(crate) fn receiver(k: &SrtpKeys) -> Context {
        let provider = rtc::crypto::default_provider().unwrap();
        Context::new(
            &k.master_key,
            &k.master_salt,
            k.profile,
            None,
            None,
            provider.crypto(),
        )
        .unwrap()
    }

    pub(crate) fn packet(ssrc: u32, seq: u16, ts: u32, len: usize) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 102,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                marker: seq.is_multiple_of(3),
                ..Default::default()
            },
            payload: Bytes::from(vec![seq as u8; len]),
        }
    }

    pub(crate) fn clock(t0: Instant) -> WallClock {
        WallClock::new(t0, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    #[test]
    fn what_it_protects_the_player_decrypts_to_the_same_packet() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let k = keys(profile);
            let t0 = Instant::now();
            let mut out = PlayOut::new(&k, clock(t0)).unwrap();
            let mut rx = receiver(&k);
            // Across the sequence number's wrap: the rollover counter follows.
            for i in 0..300u32 {
                let seq = 65_400u16.wrapping_add(i as u16);
                let p = packet(7, seq, i * 3000, 1100);
                let wire = out.protect(t0, p.clone(), 90_000, true).unwrap();
                let mut clear = rx.decrypt_rtp(&wire).unwrap();
                assert_eq!(
                    Packet::unmarshal(&mut clear).unwrap(),
                    p,
                    "{profile:?} {seq}"
                );
            }
        }
    }

    #[test]
    fn a_nack_gets_the_kept_packets_again_and_nothing_it_no_longer_has() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let t0 = Instant::now();
        let mut out = PlayOut::new(&k, clock(t0)).unwrap();
        let mut rx = receiver(&k);
        let mut wires = Vec::new();
        for seq in 0..(HISTORY as u16 + 10) {
            wires.push(
                out.protect(t0, packet(9, seq, 0, 200), 90_000, true)
                    .unwrap(),
            );
        }
        // Lost: 500 and 501 (kept), 3 (overwritten by 515), one of another SSRC.
        let again = out.resend(t0, 9, &[500, 501, 3]);
        assert_eq!(again.len(), 2);
        assert_eq!(again[0], wires[500], "the same index gives the same bytes");
        let mut clear = rx.decrypt_rtp(&again[1]).unwrap();
        assert_eq!(
            Packet::unmarshal(&mut clear)
                .unwrap()
                .header
                .sequence_number,
            501
        );
        assert!(out.resend(t0, 10, &[500]).is_empty());
        // New packets after a retransmission still decrypt (rollover state intact).
        let next = out
            .protect(t0, packet(9, HISTORY as u16 + 10, 0, 200), 90_000, true)
            .unwrap();
        assert!(rx.decrypt_rtp(&next).is_ok());
        // Audio is not kept.
        out.protect(t0, packet(11, 5, 0, 100), 48_000, false)
            .unwrap();
        assert!(out.resend(t0, 11, &[5]).is_empty());
    }

    #[test]
    fn nacks_cost_at_most_the_budget_and_each_packet_once() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let t0 = Instant::now();
        let mut out = PlayOut::new(&k, clock(t0)).unwrap();
        for seq in 0..HISTORY as u16 {
            out.protect(t0, packet(9, seq, 0, 100), 90_000, true)
                .unwrap();
        }
        // One NACK naming a packet a thousand times: one retransmission.
        assert_eq!(out.resend(t0, 9, &[7; 1000]).len(), 1);
        // Every kept packet asked for, again and again: what was saved up, then
        // nothing until more is sent.
        let all: Vec<u16> = (0..HISTORY as u16).collect();
        assert_eq!(out.resend(t0, 9, &all).len(), RESEND_BURST as usize - 1);
        assert!(out.resend(t0, 9, &all).is_empty());
        // 100 packets sent earn 50 retransmissions.
        for seq in 0..100u16 {
            out.protect(t0, packet(9, seq, 0, 100), 90_000, true)
                .unwrap();
        }
        let later = t0 + Duration::from_millis(200);
        assert_eq!(out.resend(later, 9, &all).len(), 50);
        // However much is sent, at most a second's worth per second.
        for _ in 0..4 {
            for seq in 0..HISTORY as u16 {
                out.protect(later, packet(9, seq, 0, 100), 90_000, true)
                    .unwrap();
            }
        }
        let soon = later + Duration::from_millis(100);
        let n = out.resend(soon, 9, &all).len();
        assert_eq!(n, RESEND_BURST as usize, "the saved-up burst, not more");
        let much_later = soon + Duration::from_secs(10);
        for _ in 0..4 {
            for seq in 0..HISTORY as u16 {
                out.protect(much_later, packet(9, seq, 0, 100), 90_000, true)
                    .unwrap();
            }
        }
        assert_eq!(out.resend(much_later, 9, &all).len(), RESEND_BURST as usize);
    }

    #[test]
    fn a_player_losing_most_of_its_stream_is_repaired_at_half_its_rate_at_most() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let t0 = Instant::now();
        let mut out = PlayOut::new(&k, clock(t0)).unwrap();
        // 10 s of a 50-packet-a-second stream, each second's packets all asked for
        // again (a link that loses nearly everything).
        let mut resent = 0;
        let mut seq = 0u16;
        for s in 0..10u64 {
            let now = t0 + Duration::from_secs(s);
            let first = seq;
            for _ in 0..50 {
                out.protect(now, packet(9, seq, 0, 100), 90_000, true)
                    .unwrap();
                seq = seq.wrapping_add(1);
            }
            let asked: Vec<u16> = (first..seq).collect();
            resent += out.resend(now, 9, &asked).len();
        }
        // At most the burst saved at the start and one for every two sent; at least
        // the latter.
        assert!(
            (500 / 2..=RESEND_BURST as usize + 500 / 2).contains(&resent),
            "{resent} retransmissions for 500 packets"
        );
    }

    #[test]
    fn sender_reports_every_second_with_counts_and_the_rtp_time_of_now() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let t0 = Instant::now();
        let mut out = PlayOut::new(&k, clock(t0)).unwrap();
        let mut rx = receiver(&k);
        assert_eq!(out.poll_timeout(), None, "nothing sent, nothing to report");
        for i in 0..10u32 {
            out.protect(t0, packet(1, i as u16, 1000 + i * 960, 100), 48_000, false)
                .unwrap();
        }
        out.protect(t0, packet(2, 0, 5000, 1000), 90_000, true)
            .unwrap();
        assert_eq!(out.poll_timeout(), Some(t0 + FIRST_REPORT));
        assert!(out.reports(t0 + Duration::from_millis(100)).is_empty());
        let at = t0 + FIRST_REPORT;
        let reports = out.reports(at);
        assert_eq!(reports.len(), 2);
        assert_eq!(out.poll_timeout(), Some(at + REPORT_EVERY));
        let mut clear = rx.decrypt_rtcp(&reports[0]).unwrap();
        let sr = SenderReport::unmarshal(&mut clear).unwrap();
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (1, 10, 1000));
        // 200 ms after the last packet at 48 kHz: 9600 ticks later.
        assert_eq!(sr.rtp_time, 1000 + 9 * 960 + 9600);
        assert_eq!(sr.ntp_time >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(
            sr.ntp_time & 0xffff_ffff,
            (1u64 << 32) / 5,
            "0.2 s as an NTP fraction"
        );
        let mut clear = rx.decrypt_rtcp(&reports[1]).unwrap();
        let sr = SenderReport::unmarshal(&mut clear).unwrap();
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (2, 1, 1000));
        assert_eq!(sr.rtp_time, 5000 + 18_000);
    }

    #[test]
    fn nacks_are_read_by_media_ssrc() {
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 42,
            nacks: vec![NackPair {
                packet_id: 100,
                lost_packets: 0b101,
            }],
        };
        let packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = vec![Box::new(nack)];
        assert_eq!(nacked(&packets), vec![(42, vec![100, 101, 103])]);
    }
}
