//! H.264 as cameras and encoders hand it over (Annex-B byte streams, one access unit
//! at a time) and as WebRTC carries it (RTP, RFC 6184 packetization-mode 1).
//!
//! Pure code: no I/O, no clock. The camera sources feed `Packetizer::packetize` with
//! each access unit; it remembers the last SPS/PPS and puts them in front of every
//! IDR that lacks them, so a player that joins at any key frame can decode.

use bytes::{BufMut, Bytes, BytesMut};

/// NAL unit types (ITU-T H.264 table 7-1) that matter here.
pub mod nal {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    /// RTP aggregation packet (RFC 6184 §5.7.1).
    pub const STAP_A: u8 = 24;
    /// RTP fragmentation unit (RFC 6184 §5.8).
    pub const FU_A: u8 = 28;
}

/// The type of a NAL unit (its first byte without the start code).
pub fn nal_type(unit: &[u8]) -> u8 {
    unit.first().map_or(0, |b| b & 0x1f)
}

/// Splits an Annex-B byte stream at its start codes (`00 00 01` or `00 00 00 01`).
/// Yields each NAL unit without its start code; bytes before the first start code
/// and empty units are skipped.
pub fn nal_units(data: &[u8]) -> NalUnits<'_> {
    NalUnits {
        data,
        pos: find_start(data, 0).map_or(data.len(), |(_, end)| end),
    }
}

pub struct NalUnits<'a> {
    data: &'a [u8],
    /// Where the next unit begins (just after a start code).
    pos: usize,
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.pos < self.data.len() {
            let begin = self.pos;
            let (end, next) = match find_start(self.data, begin) {
                Some((start, after)) => (start, after),
                None => (self.data.len(), self.data.len()),
            };
            self.pos = next;
            // A 4-byte start code leaves one zero byte at the end of the previous
            // unit (trailing_zero_8bits); drop those.
            let mut end = end;
            while end > begin && self.data[end - 1] == 0 {
                end -= 1;
            }
            if end > begin {
                return Some(&self.data[begin..end]);
            }
        }
        None
    }
}

/// The first `00 00 01` at or after `from`: (index of its first byte, index after it).
fn find_start(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= data.len() {
        // Skip fast over bytes that cannot start a start code.
        if data[i + 2] > 1 {
            i += 3;
            continue;
        }
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            return Some((i, i + 3));
        }
        i += 1;
    }
    None
}

/// `profile_idc`, the constraint flags and `level_idc` of an SPS: the three bytes of
/// SDP's `profile-level-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLevel {
    pub profile: u8,
    pub constraints: u8,
    pub level: u8,
}

impl ProfileLevel {
    /// From an SPS NAL unit (header byte included).
    pub fn from_sps(sps: &[u8]) -> Option<ProfileLevel> {
        if nal_type(sps) != nal::SPS {
            return None;
        }
        match sps.get(1..4) {
            Some(&[profile, constraints, level]) => Some(ProfileLevel {
                profile,
                constraints,
                level,
            }),
            _ => None,
        }
    }

    /// `42e01f`-style hex.
    pub fn hex(self) -> String {
        format!(
            "{:02x}{:02x}{:02x}",
            self.profile, self.constraints, self.level
        )
    }

    /// Constrained baseline (profile 66 with constraint_set1): every browser decodes it.
    pub fn is_constrained_baseline(self) -> bool {
        self.profile == 66 && self.constraints & 0x40 != 0
    }

    /// A profile name for log lines.
    pub fn name(self) -> &'static str {
        match self.profile {
            66 if self.is_constrained_baseline() => "Constrained Baseline",
            66 => "Baseline",
            77 => "Main",
            88 => "Extended",
            100 => "High",
            110 => "High 10",
            122 => "High 4:2:2",
            244 => "High 4:4:4",
            _ => "unknown",
        }
    }

    /// Whether WebRTC browsers negotiate it (Chromium offers 42e0/4200/4d00 only).
    pub fn browsers_decode(self) -> bool {
        matches!(self.profile, 66 | 77)
    }
}

/// What an access unit holds, for the source and the packetizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub idr: bool,
    pub sps: bool,
    pub pps: bool,
    /// Coded slices of any kind (an AU with none carries no picture).
    pub slices: usize,
}

pub fn summarize(access_unit: &[u8]) -> Summary {
    let mut s = Summary::default();
    for unit in nal_units(access_unit) {
        match nal_type(unit) {
            nal::IDR => {
                s.idr = true;
                s.slices += 1;
            }
            nal::SLICE..=4 => s.slices += 1,
            nal::SPS => s.sps = true,
            nal::PPS => s.pps = true,
            _ => {}
        }
    }
    s
}

/// RTP packets of one media stream, as the SFU forwards them.
pub type RtpPacket = rtc::rtp::Packet;

/// Turns access units into RTP packets (RFC 6184, packetization-mode 1): SPS and PPS
/// go together in one STAP-A, units that fit the MTU go alone, larger ones in FU-A
/// fragments. The marker bit ends each access unit. Access unit delimiters are
/// dropped (they carry nothing a WebRTC receiver uses).
pub struct Packetizer {
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    /// Largest RTP payload.
    mtu: usize,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

/// RTP payload budget: 1200 bytes keeps SRTP + UDP + IP under every path MTU.
pub const DEFAULT_MTU: usize = 1200;

impl Packetizer {
    pub fn new(payload_type: u8, ssrc: u32, mtu: usize) -> Packetizer {
        Packetizer {
            payload_type,
            ssrc,
            sequence: (ssrc >> 16) as u16,
            // FU-A needs room for its two header bytes and at least one byte of data.
            mtu: mtu.max(3),
            sps: None,
            pps: None,
        }
    }

    /// The last SPS seen (its profile is what the stream signals).
    pub fn sps(&self) -> Option<&[u8]> {
        self.sps.as_deref()
    }

    /// Packetizes one access unit (Annex-B) with a 90 kHz `timestamp`, appending the
    /// packets to `out`. Units are sliced out of `access_unit` without copying; only
    /// FU-A fragments and STAP-A aggregates are assembled (they need header bytes
    /// in front of the data).
    pub fn packetize(&mut self, access_unit: &Bytes, timestamp: u32, out: &mut Vec<RtpPacket>) {
        let summary = summarize(access_unit);
        let first = out.len();
        let mut units: Vec<Bytes> = Vec::new();
        for unit in nal_units(access_unit) {
            let unit = access_unit.slice_ref(unit);
            match nal_type(&unit) {
                // Access unit delimiters are not sent; types 0 and 24-31 are unspecified
                // in H.264 and would be read by the receiver as RTP aggregation or
                // fragmentation units (a broken source's bytes, not a picture).
                nal::AUD | 0 | nal::STAP_A..=31 => continue,
                nal::SPS => self.sps = Some(unit.clone()),
                nal::PPS => self.pps = Some(unit.clone()),
                _ => {}
            }
            units.push(unit);
        }
        // A key frame always carries its parameter sets, so any IDR is a start point.
        if summary.idr && !(summary.sps && summary.pps) {
            if let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) {
                units.retain(|u| !matches!(nal_type(u), nal::SPS | nal::PPS));
                units.insert(0, pps);
                units.insert(0, sps);
            }
        }
        let mut i = 0;
        while i < units.len() {
            // SPS + PPS (and anything small after them) in one STAP-A.
            let mut take = 0;
            let mut size = 1;
            while i + take < units.len()
                && matches!(nal_type(&units[i + take]), nal::SPS | nal::PPS)
                && size + 2 + units[i + take].len() <= self.mtu
            {
                size += 2 + units[i + take].len();
                take += 1;
            }
            if take >= 2 {
                self.stap_a(&units[i..i + take], timestamp, out);
                i += take;
                continue;
            }
            let unit = &units[i];
            if unit.len() <= self.mtu {
                self.push(unit.clone(), timestamp, out);
            } else {
                self.fu_a(unit, timestamp, out);
            }
            i += 1;
        }
        if let Some(last) = out.get_mut(first..).and_then(|p| p.last_mut()) {
            last.header.marker = true;
        }
    }

    fn stap_a(&mut self, units: &[Bytes], timestamp: u32, out: &mut Vec<RtpPacket>) {
        let nri = units.iter().map(|u| u[0] & 0x60).max().unwrap_or(0);
        let mut payload = BytesMut::with_capacity(self.mtu);
        payload.put_u8(nri | nal::STAP_A);
        for unit in units {
            // Each unit is at most the MTU here, which is far below u16::MAX.
            payload.put_u16(unit.len() as u16);
            payload.put_slice(unit);
        }
        self.push(payload.freeze(), timestamp, out);
    }

    fn fu_a(&mut self, unit: &Bytes, timestamp: u32, out: &mut Vec<RtpPacket>) {
        let header = unit[0];
        let indicator = (header & 0xe0) | nal::FU_A;
        let data = &unit[1..];
        let chunk = self.mtu - 2;
        let count = data.len().div_ceil(chunk);
        for (n, piece) in data.chunks(chunk).enumerate() {
            let mut fu_header = header & 0x1f;
            if n == 0 {
                fu_header |= 0x80;
            }
            if n + 1 == count {
                fu_header |= 0x40;
            }
            let mut payload = BytesMut::with_capacity(piece.len() + 2);
            payload.put_u8(indicator);
            payload.put_u8(fu_header);
            payload.put_slice(piece);
            self.push(payload.freeze(), timestamp, out);
        }
    }

    fn push(&mut self, payload: Bytes, timestamp: u32, out: &mut Vec<RtpPacket>) {
        let mut packet = RtpPacket::default();
        packet.header.version = 2;
        packet.header.payload_type = self.payload_type;
        packet.header.sequence_number = self.sequence;
        packet.header.timestamp = timestamp;
        packet.header.ssrc = self.ssrc;
        packet.payload = payload;
        self.sequence = self.sequence.wrapping_add(1);
        out.push(packet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annex_b(units: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for (i, u) in units.iter().enumerate() {
            if i % 2 == 0 {
                v.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                v.extend_from_slice(&[0, 0, 1]);
            }
            v.extend_from_slice(u);
        }
        Bytes::from(v)
    }

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn splits_annex_b_at_both_start_code_lengths() {
        let idr = [0x65, 0x88, 0x84, 0x00, 0x00, 0x03, 0x01, 0x02];
        let au = annex_b(&[&[0x09, 0xf0], SPS, PPS, &idr]);
        let units: Vec<&[u8]> = nal_units(&au).collect();
        assert_eq!(units, vec![&[0x09, 0xf0][..], SPS, PPS, &idr[..]]);
        let s = summarize(&au);
        assert!(s.idr && s.sps && s.pps);
        assert_eq!(s.slices, 1);
        // Garbage before the first start code, trailing zeros, empty units.
        let junk = [7, 7, 0, 0, 1, 0x41, 1, 2, 0, 0, 0, 0, 1, 0, 0, 1];
        let units: Vec<&[u8]> = nal_units(&junk).collect();
        assert_eq!(units, vec![&[0x41, 1, 2][..]]);
        assert_eq!(nal_units(&[]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3, 4]).count(), 0);
    }

    /// Found by the `h264` fuzz target: a unit of type 28 went out as a single NAL
    /// unit packet and the receiver read it as an FU-A fragment.
    #[test]
    fn units_of_rtp_reserved_and_unspecified_types_are_not_sent() {
        let idr = [0x65, 0x88, 0x84];
        let au = annex_b(&[SPS, PPS, &[0xfc, 0xc0, 0x1a], &idr, &[0x00, 1], &[0x78, 2]]);
        let mut p = Packetizer::new(96, 1, 1200);
        let mut out = Vec::new();
        p.packetize(&au, 0, &mut out);
        let types: Vec<u8> = out.iter().map(|p| nal_type(&p.payload)).collect();
        assert_eq!(types, [nal::STAP_A, nal::IDR]);
    }

    #[test]
    fn reads_the_profile_of_an_sps() {
        let p = ProfileLevel::from_sps(SPS).unwrap();
        assert_eq!(p.hex(), "42c01f");
        assert!(p.is_constrained_baseline() && p.browsers_decode());
        assert_eq!(p.name(), "Constrained Baseline");
        let high = ProfileLevel::from_sps(&[0x67, 0x64, 0x00, 0x28]).unwrap();
        assert_eq!((high.name(), high.browsers_decode()), ("High", false));
        assert_eq!(ProfileLevel::from_sps(&[0x67, 0x42]), None);
        assert_eq!(ProfileLevel::from_sps(PPS), None);
    }

    #[test]
    fn aggregates_parameter_sets_fragments_large_units_and_marks_the_end() {
        let mut idr = vec![0x65];
        idr.extend((0..3000u32).map(|i| (i % 251) as u8 + 2));
        let au = annex_b(&[SPS, PPS, &idr]);
        let mut p = Packetizer::new(102, 0x1234_5678, 1200);
        let mut out = Vec::new();
        p.packetize(&au, 9000, &mut out);
        // STAP-A, then 3 fragments of 3000 bytes of slice data.
        assert_eq!(out.len(), 4);
        assert_eq!(nal_type(&out[0].payload), nal::STAP_A);
        assert_eq!(&out[0].payload[1..3], &[0, SPS.len() as u8]);
        assert!(out.iter().all(|p| p.payload.len() <= 1200));
        let fu: Vec<u8> = out[1..].iter().map(|p| p.payload[1]).collect();
        assert_eq!(fu, vec![0x85, 0x05, 0x45]);
        let marks: Vec<bool> = out.iter().map(|p| p.header.marker).collect();
        assert_eq!(marks, vec![false, false, false, true]);
        let seqs: Vec<u16> = out.iter().map(|p| p.header.sequence_number).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        assert!(out.iter().all(|p| p.header.timestamp == 9000));
        let rebuilt: Vec<u8> = out[1..]
            .iter()
            .flat_map(|p| p.payload[2..].iter().copied())
            .collect();
        assert_eq!(rebuilt, idr[1..]);
    }

    #[test]
    fn every_idr_gets_the_parameter_sets_in_front() {
        let mut p = Packetizer::new(102, 1, 1200);
        let mut out = Vec::new();
        p.packetize(&annex_b(&[SPS, PPS, &[0x65, 1, 2]]), 0, &mut out);
        out.clear();
        p.packetize(&annex_b(&[&[0x41, 9, 9]]), 3000, &mut out);
        assert_eq!(out.len(), 1, "a P frame goes alone");
        out.clear();
        // An encoder that sends SPS/PPS only once: the packetizer adds them.
        p.packetize(&annex_b(&[&[0x09, 0x10], &[0x65, 3, 4]]), 6000, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(nal_type(&out[0].payload), nal::STAP_A);
        assert_eq!(&out[1].payload[..], &[0x65, 3, 4]);
        assert_eq!(p.sps(), Some(SPS));
    }
}
