//! A room stream (RTP) into FLV tags for RTMP players and pushes.
//!
//! - [`check`]: FLV carries H.264 and AAC only: video H.264 or none, audio Opus
//!   (transcoded to AAC) or none; VP8 and G.711 are refused with the reason.
//! - [`H264Depacketizer`]: RFC 6184 (single NAL unit, STAP-A, FU-A) into Annex-B access
//!   units, ended by the marker bit or a timestamp change, through a small reordering
//!   window. A loss, a broken FU-A or an access unit over [`MAX_ACCESS_UNIT`] drops the
//!   access unit and everything up to the next IDR (which gets the cached SPS/PPS in
//!   front when it lacks them); the caller is told once to ask for a key frame.
//! - [`TrackClock`]: no RTCP sender reports reach the egress, and a WebRTC publisher's
//!   audio (48 kHz) and video (90 kHz) RTP clocks have unrelated random origins, so each
//!   track is anchored at arrival: its first packet maps to its arrival time (ms since
//!   the egress started), later ones to that plus the RTP delta over the clock rate. The
//!   delta is unwrapped across 2^32 relative to the previous packet (a reordered packet
//!   steps back a little, never 2^32), and a track's times never go backwards (clamped).
//! - [`FlvMux`]: rebases both tracks on the first tag (time 0); video starts with the AVC
//!   sequence header and a key frame; while the stream has video, audio is dropped
//!   until video has started; the AAC sequence header goes once before the first frame.
//!   A tag the player's queue refuses drops video up to the next key frame.
//! - [`run`]: the async driver; Opus → AAC runs on its own thread ([`OpusToAac`]).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use log::warn;
use thiserror::Error;
use tokio::sync::mpsc;

use super::audio::{AudioError, OpusToAac};
use super::flv;
use super::media::FlvVideoEgress;
use super::server::{FlvTag, TagKind};
use crate::device::h264::{nal, nal_type, RtpPacket};
use crate::media::codec::{Chosen, Family, Kind};

/// Whether a stream with these codecs can be played over RTMP; `Err` is the reason.
pub fn check(codecs: &Chosen) -> Result<(), String> {
    match codecs.video.as_ref().map(|c| c.family) {
        None | Some(Family::H264 { .. }) => {}
        Some(Family::Vp8) => {
            return Err("VP8 cannot be carried over RTMP (FLV has no VP8): \
                 publish H.264 to play this stream over RTMP"
                .into())
        }
        Some(other) => return Err(format!("{} is not a video codec", other.name())),
    }
    match codecs.audio.as_ref().map(|c| c.family) {
        None | Some(Family::Opus) => {}
        Some(family @ (Family::Pcmu | Family::Pcma)) => {
            return Err(format!(
                "{} audio cannot be carried over RTMP (FLV audio is AAC, transcoded from \
                 Opus only): publish Opus to play this stream over RTMP",
                family.name()
            ))
        }
        Some(other) => return Err(format!("{} is not an audio codec", other.name())),
    }
    if codecs.video.is_none() && codecs.audio.is_none() {
        return Err("the stream has neither audio nor video".into());
    }
    for codec in [&codecs.video, &codecs.audio].into_iter().flatten() {
        if codec.clock_rate == 0 {
            return Err(format!("{} with a clock rate of 0", codec.family.name()));
        }
    }
    Ok(())
}

/// Largest access unit taken; a larger one is dropped (then up to the next IDR).
pub const MAX_ACCESS_UNIT: usize = 4 << 20;
/// Slots of the reordering window (sequence numbers ahead of the expected one).
const WINDOW: usize = 16;
/// Packets held behind a gap before the gap counts as a loss.
const REORDER_DEPTH: usize = 4;
/// A packet further behind than this means the sender's numbering restarted.
const RESTART: usize = 256;
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// One Annex-B access unit (4-byte start codes) and its RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub data: Bytes,
    pub timestamp: u32,
    /// Holds an IDR slice.
    pub key: bool,
}

/// What one packet did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Taken, or held for reordering.
    Ok,
    /// Dropped: waiting for a key frame (since the start or an earlier loss).
    Waiting,
    /// A loss or a broken unit was just found: the access unit is dropped, and so is
    /// everything up to the next IDR. Ask the source for a key frame.
    Lost,
}

#[derive(Debug)]
struct Held {
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Bytes,
}

/// RTP H.264 (packetization-mode 1) into Annex-B access units. Pure; allocates only
/// to grow the access-unit buffer (reused once the previous unit is dropped) and to
/// cache changed parameter sets.
#[derive(Debug)]
pub struct H264Depacketizer {
    next_seq: Option<u16>,
    held: [Option<Held>; WINDOW],
    held_count: usize,
    buf: BytesMut,
    /// RTP timestamp of the access unit being built.
    timestamp: Option<u32>,
    in_fu: bool,
    /// The access unit being built is dropped when it ends.
    broken: bool,
    /// Packets were lost just before the next one.
    gap: bool,
    idr: bool,
    has_sps: bool,
    has_pps: bool,
    waiting: bool,
    lost_now: bool,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

impl Default for H264Depacketizer {
    fn default() -> Self {
        H264Depacketizer::new()
    }
}

impl H264Depacketizer {
    pub fn new() -> H264Depacketizer {
        H264Depacketizer {
            next_seq: None,
            held: std::array::from_fn(|_| None),
            held_count: 0,
            buf: BytesMut::new(),
            timestamp: None,
            in_fu: false,
            broken: false,
            // Joining mid-stream: the first access unit counts only if it is seen from
            // its start.
            gap: true,
            idr: false,
            has_sps: false,
            has_pps: false,
            waiting: true,
            lost_now: false,
            sps: None,
            pps: None,
        }
    }

    /// Dropping access units until an IDR.
    pub fn waiting_for_key_frame(&self) -> bool {
        self.waiting
    }

    /// Takes one packet; completed access units are appended to `out`.
    pub fn push(&mut self, packet: &RtpPacket, out: &mut Vec<AccessUnit>) -> Pushed {
        self.lost_now = false;
        let h = &packet.header;
        let seq = h.sequence_number;
        let next = *self.next_seq.get_or_insert(seq);
        let ahead = seq.wrapping_sub(next) as i16;
        if ahead < 0 && usize::from(ahead.unsigned_abs()) <= RESTART {
            // Late (its place was already given up) or a duplicate.
        } else if ahead == 0 {
            self.take(h.timestamp, h.marker, &packet.payload, out);
            self.next_seq = Some(seq.wrapping_add(1));
            self.drain(out);
        } else if (ahead as usize) < WINDOW {
            let slot = &mut self.held[seq as usize % WINDOW];
            if slot.is_none() {
                *slot = Some(Held {
                    seq,
                    timestamp: h.timestamp,
                    marker: h.marker,
                    payload: packet.payload.clone(),
                });
                self.held_count += 1;
            }
            if self.held_count > REORDER_DEPTH {
                self.skip_gap(out);
            }
        } else {
            // Far ahead (everything held comes before it), or far behind: the
            // sender's numbering restarted.
            while self.held_count > 0 {
                self.skip_gap(out);
            }
            if self.next_seq != Some(seq) {
                self.lose();
            }
            self.take(h.timestamp, h.marker, &packet.payload, out);
            self.next_seq = Some(seq.wrapping_add(1));
        }
        if self.lost_now && self.waiting {
            Pushed::Lost
        } else if self.waiting {
            Pushed::Waiting
        } else {
            Pushed::Ok
        }
    }

    /// Gives up the missing packets before the earliest held one.
    fn skip_gap(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(next) = self.next_seq else { return };
        let earliest = self
            .held
            .iter()
            .flatten()
            .map(|held| held.seq)
            .min_by_key(|seq| seq.wrapping_sub(next));
        match earliest {
            Some(seq) => {
                self.lose();
                self.next_seq = Some(seq);
                self.drain(out);
            }
            None => self.held_count = 0,
        }
    }

    /// Takes held packets that are next in sequence.
    fn drain(&mut self, out: &mut Vec<AccessUnit>) {
        while let Some(next) = self.next_seq {
            let slot = next as usize % WINDOW;
            match self.held[slot].take() {
                Some(held) if held.seq == next => {
                    self.held_count -= 1;
                    self.take(held.timestamp, held.marker, &held.payload, out);
                    self.next_seq = Some(next.wrapping_add(1));
                }
                other => {
                    self.held[slot] = other;
                    break;
                }
            }
        }
    }

    /// The access unit being built cannot be used: drop it and wait for an IDR.
    fn fail(&mut self) {
        self.broken = true;
        if !self.waiting {
            self.lost_now = true;
        }
        self.waiting = true;
    }

    /// Packets are missing before the next one.
    fn lose(&mut self) {
        self.fail();
        self.gap = true;
        self.in_fu = false;
    }

    /// One packet in sequence order.
    fn take(&mut self, timestamp: u32, marker: bool, payload: &[u8], out: &mut Vec<AccessUnit>) {
        if self.timestamp.is_some_and(|t| t != timestamp) {
            self.finish(out);
        }
        if self.timestamp.is_none() {
            self.timestamp = Some(timestamp);
            self.broken = self.gap && !starts_access_unit(payload);
        }
        self.gap = false;
        if !self.broken {
            self.parse(payload);
            if self.buf.len() > MAX_ACCESS_UNIT {
                self.fail();
            }
        }
        if marker {
            self.finish(out);
        }
    }

    fn parse(&mut self, payload: &[u8]) {
        match nal_type(payload) {
            1..=23 if !self.in_fu => self.unit(payload),
            nal::STAP_A if !self.in_fu => {
                let mut rest = payload.get(1..).unwrap_or_default();
                while !rest.is_empty() {
                    let len = match rest {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
                        _ => 0,
                    };
                    let Some(unit) = rest.get(2..2 + len).filter(|u| !u.is_empty()) else {
                        self.fail();
                        return;
                    };
                    self.unit(unit);
                    rest = &rest[2 + len..];
                }
            }
            nal::FU_A => {
                let &[indicator, header, ..] = payload else {
                    self.fail();
                    return;
                };
                let start = header & 0x80 != 0;
                if start == self.in_fu {
                    // A start inside a unit, or a continuation without its start.
                    self.fail();
                    return;
                }
                if start {
                    let unit_header = (indicator & 0xe0) | (header & 0x1f);
                    self.note(unit_header & 0x1f);
                    self.buf.put_slice(&START_CODE);
                    self.buf.put_u8(unit_header);
                    self.in_fu = true;
                }
                self.buf.put_slice(&payload[2..]);
                if header & 0x40 != 0 {
                    self.in_fu = false;
                }
            }
            // Reserved types carry nothing a decoder uses.
            0 | 30 | 31 => {}
            // A single unit or STAP-A inside a FU-A, or STAP-B/MTAP/FU-B (not mode 1).
            _ => self.fail(),
        }
    }

    fn note(&mut self, kind: u8) {
        match kind {
            nal::IDR => self.idr = true,
            nal::SPS => self.has_sps = true,
            nal::PPS => self.has_pps = true,
            _ => {}
        }
    }

    /// One whole NAL unit.
    fn unit(&mut self, unit: &[u8]) {
        let kind = nal_type(unit);
        self.note(kind);
        let cache = match kind {
            nal::SPS => Some(&mut self.sps),
            nal::PPS => Some(&mut self.pps),
            _ => None,
        };
        if let Some(cache) = cache {
            if cache.as_deref() != Some(unit) {
                *cache = Some(Bytes::copy_from_slice(unit));
            }
        }
        self.buf.put_slice(&START_CODE);
        self.buf.put_slice(unit);
    }

    /// The access unit being built ends.
    fn finish(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(timestamp) = self.timestamp.take() else {
            return;
        };
        if std::mem::take(&mut self.in_fu) && !self.broken {
            // A FU-A without its end fragment.
            self.fail();
        }
        if !self.broken && !self.buf.is_empty() && (self.idr || !self.waiting) {
            let data = match (&self.sps, &self.pps) {
                (Some(sps), Some(pps)) if self.idr && !(self.has_sps && self.has_pps) => {
                    let mut au =
                        BytesMut::with_capacity(self.buf.len() + sps.len() + pps.len() + 8);
                    if !self.has_sps {
                        au.put_slice(&START_CODE);
                        au.put_slice(sps);
                    }
                    if !self.has_pps {
                        au.put_slice(&START_CODE);
                        au.put_slice(pps);
                    }
                    au.put_slice(&self.buf);
                    au.freeze()
                }
                _ => self.buf.split().freeze(),
            };
            self.waiting = false;
            out.push(AccessUnit {
                data,
                timestamp,
                key: self.idr,
            });
        }
        self.buf.clear();
        self.broken = false;
        self.idr = false;
        self.has_sps = false;
        self.has_pps = false;
    }
}

/// Whether a packet begins an access unit: parameter sets, an AUD or SEI, or the first
/// slice of a picture (`first_mb_in_slice` = 0, whose ue(v) code is a single 1 bit).
fn starts_access_unit(payload: &[u8]) -> bool {
    let first_slice = |byte: Option<&u8>| byte.is_some_and(|b| b & 0x80 != 0);
    match nal_type(payload) {
        nal::STAP_A | nal::SEI | nal::SPS | nal::PPS | nal::AUD => true,
        nal::SLICE | nal::IDR => first_slice(payload.get(1)),
        nal::FU_A => match payload.get(1) {
            Some(&header) if header & 0x80 != 0 => match header & 0x1f {
                nal::SEI | nal::SPS | nal::PPS | nal::AUD => true,
                nal::SLICE | nal::IDR => first_slice(payload.get(2)),
                _ => false,
            },
            _ => false,
        },
        _ => false,
    }
}

/// One track's RTP clock mapped onto the egress's millisecond clock (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct TrackClock {
    rate: i64,
    /// Unwrapped RTP time and arrival (ms) of the first packet.
    anchor: Option<(i64, i64)>,
    last_rtp: u32,
    last_unwrapped: i64,
    last_ms: i64,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> TrackClock {
        TrackClock {
            rate: i64::from(clock_rate.max(1)),
            anchor: None,
            last_rtp: 0,
            last_unwrapped: 0,
            last_ms: 0,
        }
    }

    /// The time in ms of an RTP timestamp; `arrival_ms` (since the egress started)
    /// anchors the first one.
    pub fn map(&mut self, rtp: u32, arrival_ms: u64) -> u64 {
        let (anchor_rtp, anchor_ms) = match self.anchor {
            Some(anchor) => {
                let step = i64::from(rtp.wrapping_sub(self.last_rtp) as i32);
                self.last_unwrapped = self.last_unwrapped.saturating_add(step);
                anchor
            }
            None => {
                let anchor = (
                    i64::from(rtp),
                    i64::try_from(arrival_ms).unwrap_or(i64::MAX),
                );
                self.anchor = Some(anchor);
                self.last_unwrapped = anchor.0;
                self.last_ms = anchor.1;
                anchor
            }
        };
        self.last_rtp = rtp;
        // Saturating: a hostile source could step 2^31 ticks per packet for hours.
        let delta = self
            .last_unwrapped
            .saturating_sub(anchor_rtp)
            .saturating_mul(1000);
        let ms = anchor_ms.saturating_add(delta.div_euclid(self.rate));
        self.last_ms = self.last_ms.max(ms);
        self.last_ms as u64
    }
}

/// The ordering rules of the tags toward one player (see the module documentation).
/// `send` hands a tag to the player and says whether it was taken.
#[derive(Debug)]
pub struct FlvMux {
    has_video: bool,
    video: FlvVideoEgress,
    sequence_header: Option<Bytes>,
    /// A new sequence header goes out before the next frame.
    header_pending: bool,
    video_started: bool,
    /// Video tags were dropped: wait for a key frame and send the header again.
    resync: bool,
    aac_header_sent: bool,
    /// Egress time of tag time 0.
    base: Option<u64>,
    last: [Option<u32>; 2],
}

impl FlvMux {
    pub fn new(has_video: bool) -> FlvMux {
        FlvMux {
            has_video,
            video: FlvVideoEgress::default(),
            sequence_header: None,
            header_pending: false,
            video_started: false,
            resync: false,
            aac_header_sent: false,
            base: None,
            last: [None; 2],
        }
    }

    /// Video is dropped until a key frame (after a refused tag).
    pub fn resyncing(&self) -> bool {
        self.resync
    }

    /// One access unit at egress time `ms`. True when a tag was refused: the player
    /// needs a key frame.
    pub fn video(
        &mut self,
        au: &AccessUnit,
        ms: u64,
        send: &mut impl FnMut(FlvTag) -> bool,
    ) -> bool {
        let tags = self.video.push(&au.data);
        if let Some(header) = tags.sequence_header {
            self.sequence_header = Some(Bytes::from(header));
            self.header_pending = true;
        }
        let Some(frame) = tags.frame else {
            return false;
        };
        if self.resync && !au.key {
            return false;
        }
        let base = *self.base.get_or_insert(ms);
        let timestamp_ms = self.stamp(TagKind::Video, ms.saturating_sub(base));
        if self.header_pending || self.resync {
            if let Some(header) = &self.sequence_header {
                let tag = FlvTag {
                    kind: TagKind::Video,
                    timestamp_ms,
                    data: header.clone(),
                };
                if !send(tag) {
                    self.resync = true;
                    return true;
                }
            }
            self.header_pending = false;
        }
        let tag = FlvTag {
            kind: TagKind::Video,
            timestamp_ms,
            data: Bytes::from(frame),
        };
        if !send(tag) {
            self.resync = true;
            return true;
        }
        self.resync = false;
        self.video_started = true;
        false
    }

    /// One raw AAC frame at egress time `ms`, with the encoder's AudioSpecificConfig.
    pub fn audio(
        &mut self,
        frame: &[u8],
        config: &[u8],
        ms: u64,
        send: &mut impl FnMut(FlvTag) -> bool,
    ) {
        let base = match self.base {
            Some(base) if self.video_started || !self.has_video => base,
            None if !self.has_video => *self.base.get_or_insert(ms),
            _ => return,
        };
        // Audio from before the first picture stays out.
        let Some(since) = ms.checked_sub(base) else {
            return;
        };
        let timestamp_ms = self.stamp(TagKind::Audio, since);
        if !self.aac_header_sent {
            let tag = FlvTag {
                kind: TagKind::Audio,
                timestamp_ms,
                data: Bytes::from(flv::aac_sequence_header(config)),
            };
            if !send(tag) {
                return;
            }
            self.aac_header_sent = true;
        }
        send(FlvTag {
            kind: TagKind::Audio,
            timestamp_ms,
            data: Bytes::from(flv::aac_frame(frame)),
        });
    }

    /// A u32 tag time that never goes backwards per kind (RTMP time wraps at 2^32 ms).
    fn stamp(&mut self, kind: TagKind, since_base: u64) -> u32 {
        let last = &mut self.last[kind as usize];
        let t = since_base as u32;
        let t = match *last {
            Some(prev) if (t.wrapping_sub(prev) as i32) < 0 => prev,
            _ => t,
        };
        *last = Some(t);
        t
    }
}

#[derive(Debug, Error)]
pub enum EgressError {
    /// The codecs cannot go over RTMP (the reason from [`check`]).
    #[error("{0}")]
    Unsupported(String),
    /// An audio-only stream whose transcoder could not start.
    #[error("Opus → AAC: {0}")]
    Audio(#[from] AudioError),
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The packet channel closed.
    SourceEnded,
    /// The tag channel closed (the player or push left).
    PlayerLeft,
}

/// Least time between two key-frame requests.
const KEY_FRAME_INTERVAL: Duration = Duration::from_millis(500);
/// A request repeated while still waiting for a key frame (it may have been lost).
const KEY_FRAME_RETRY: Duration = Duration::from_secs(2);
/// Opus packets queued toward the transcoder thread (~1.3 s).
const OPUS_QUEUE: usize = 64;
/// AAC frames queued back from it.
const AAC_QUEUE: usize = 64;
/// How long the end of the stream waits for the transcoder's last frames.
const AUDIO_DRAIN: Duration = Duration::from_secs(2);

/// Feeds one RTMP player or push from a stream's RTP packets until the packets end
/// (`Ok(SourceEnded)`) or the player leaves (`Ok(PlayerLeft)`). `key_frame` asks the
/// source for a key frame (at start, then after a loss or a refused tag, at most every
/// 500 ms). Tags go out with `try_send`: a full player queue drops audio, and video up
/// to the next key frame, so neither the source nor other players ever wait. Without a
/// working Opus → AAC transcoder, a stream with video goes on video-only.
pub async fn run(
    codecs: Chosen,
    mut packets: mpsc::Receiver<(Kind, RtpPacket)>,
    tags: mpsc::Sender<FlvTag>,
    mut key_frame: impl FnMut() + Send,
) -> Result<Ended, EgressError> {
    check(&codecs).map_err(EgressError::Unsupported)?;
    let start = Instant::now();
    let has_video = codecs.video.is_some();
    let (mut opus_in, mut aac_out) = match &codecs.audio {
        None => (None, None),
        Some(_) => match spawn_transcoder() {
            Ok((input, output)) => (Some(input), Some(output)),
            Err(e) if has_video => {
                warn!("rtmp egress: no audio (Opus → AAC: {e}), video only");
                (None, None)
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mut video_clock = TrackClock::new(codecs.video.as_ref().map_or(90_000, |c| c.clock_rate));
    let mut audio_clock = TrackClock::new(codecs.audio.as_ref().map_or(48_000, |c| c.clock_rate));
    let mut depacketizer = H264Depacketizer::new();
    let mut mux = FlvMux::new(has_video);
    let mut requests = KeyFrameRequests::default();
    let mut units = Vec::new();
    let mut config: Option<Vec<u8>> = None;
    let mut last_audio_seq: Option<u16> = None;
    let mut send = |tag: FlvTag| tags.try_send(tag).is_ok();
    if has_video {
        requests.want();
        requests.poll(Instant::now(), false, &mut key_frame);
    }
    loop {
        tokio::select! {
            biased;
            _ = tags.closed() => return Ok(Ended::PlayerLeft),
            message = next_audio(&mut aac_out) => match message {
                Some(AudioMessage::Config(c)) => config = Some(c),
                Some(AudioMessage::Frame(data, pts)) => {
                    if let Some(c) = &config {
                        mux.audio(&data, c, pts.as_millis() as u64, &mut send);
                    }
                }
                None => {
                    warn!("rtmp egress: the Opus → AAC transcoder stopped, video only");
                    aac_out = None;
                    opus_in = None;
                }
            },
            packet = packets.recv() => {
                let Some((kind, packet)) = packet else { break };
                let now = Instant::now();
                let arrival_ms = now.duration_since(start).as_millis() as u64;
                match kind {
                    Kind::Video if has_video => {
                        video_clock.map(packet.header.timestamp, arrival_ms);
                        if depacketizer.push(&packet, &mut units) == Pushed::Lost {
                            requests.want();
                        }
                        for au in units.drain(..) {
                            let ms = video_clock.map(au.timestamp, arrival_ms);
                            if mux.video(&au, ms, &mut send) {
                                requests.want();
                            }
                        }
                        let waiting = depacketizer.waiting_for_key_frame() || mux.resyncing();
                        requests.poll(now, waiting, &mut key_frame);
                    }
                    Kind::Audio => {
                        let Some(input) = &opus_in else { continue };
                        let seq = packet.header.sequence_number;
                        // The decoder wants packets in order: late ones are dropped.
                        if last_audio_seq.is_some_and(|last| (seq.wrapping_sub(last) as i16) <= 0) {
                            continue;
                        }
                        last_audio_seq = Some(seq);
                        let ms = audio_clock.map(packet.header.timestamp, arrival_ms);
                        if packet.payload.is_empty() {
                            continue;
                        }
                        let pts = Duration::from_millis(ms);
                        if let Err(std_mpsc::TrySendError::Disconnected(_)) =
                            input.try_send((packet.payload, pts))
                        {
                            opus_in = None;
                        }
                    }
                    Kind::Video => {}
                }
            }
        }
    }
    // The source ended: the transcoder's last frames.
    drop(opus_in);
    if let Some(mut output) = aac_out {
        let deadline = tokio::time::Instant::now() + AUDIO_DRAIN;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, output.recv()).await {
            match message {
                AudioMessage::Config(c) => config = Some(c),
                AudioMessage::Frame(data, pts) => {
                    if let Some(c) = &config {
                        mux.audio(&data, c, pts.as_millis() as u64, &mut send);
                    }
                }
            }
        }
    }
    Ok(Ended::SourceEnded)
}

/// Key-frame requests: at most one per [`KEY_FRAME_INTERVAL`], repeated every
/// [`KEY_FRAME_RETRY`] while still waiting.
#[derive(Debug, Default)]
pub struct KeyFrameRequests {
    last: Option<Instant>,
    pending: bool,
}

impl KeyFrameRequests {
    /// A key frame is wanted (a loss, a start).
    pub fn want(&mut self) {
        self.pending = true;
    }

    /// Calls `key_frame` when a request is due; `waiting`: still no key frame.
    pub fn poll(&mut self, now: Instant, waiting: bool, key_frame: &mut impl FnMut()) {
        let since = self.last.map(|last| now.saturating_duration_since(last));
        let due = match since {
            None => self.pending || waiting,
            Some(since) => {
                (self.pending && since >= KEY_FRAME_INTERVAL)
                    || (waiting && since >= KEY_FRAME_RETRY)
            }
        };
        if due {
            key_frame();
            self.last = Some(now);
            self.pending = false;
        }
    }
}

enum AudioMessage {
    /// The AudioSpecificConfig, before the first frame.
    Config(Vec<u8>),
    Frame(Bytes, Duration),
}

async fn next_audio(output: &mut Option<mpsc::Receiver<AudioMessage>>) -> Option<AudioMessage> {
    match output {
        Some(output) => output.recv().await,
        None => std::future::pending().await,
    }
}

type OpusInput = std_mpsc::SyncSender<(Bytes, Duration)>;

fn spawn_transcoder() -> Result<(OpusInput, mpsc::Receiver<AudioMessage>), AudioError> {
    let transcoder = OpusToAac::new()?;
    let (input, packets) = std_mpsc::sync_channel(OPUS_QUEUE);
    let (frames, output) = mpsc::channel(AAC_QUEUE);
    std::thread::Builder::new()
        .name("rtmp-aac".into())
        .spawn(move || transcode(transcoder, packets, frames))
        .map_err(|e| AudioError::Gst(format!("cannot start the transcoder thread: {e}")))?;
    Ok((input, output))
}

/// The transcoder thread: Opus in, AAC out, until the input closes (then the last
/// frames are drained) or the output closes.
fn transcode(
    transcoder: OpusToAac,
    packets: std_mpsc::Receiver<(Bytes, Duration)>,
    frames: mpsc::Sender<AudioMessage>,
) {
    let mut config_sent = false;
    let mut ended = false;
    loop {
        match packets.recv_timeout(Duration::from_millis(20)) {
            Ok((packet, pts)) => {
                if let Err(e) = transcoder.push(&packet, pts) {
                    warn!("rtmp egress: Opus → AAC: {e}");
                    return;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                transcoder.finish();
                ended = true;
            }
        }
        loop {
            let wait = if ended {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            };
            match transcoder.pull(wait) {
                Ok(Some(aac)) => {
                    if !config_sent {
                        if let Some(config) = transcoder.audio_specific_config() {
                            if frames.blocking_send(AudioMessage::Config(config)).is_err() {
                                return;
                            }
                            config_sent = true;
                        }
                    }
                    if frames
                        .blocking_send(AudioMessage::Frame(aac.data, aac.pts))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) if ended => return,
                Ok(None) => break,
                Err(e) => {
                    if !ended {
                        warn!("rtmp egress: Opus → AAC: {e}");
                    }
                    return;
                }
            }
        }
        if frames.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::h264::Packetizer;
    use crate::media::codec::Codec;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn annex_b(units: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for u in units {
            v.extend_from_slice(&START_CODE);
            v.extend_from_slice(u);
        }
        Bytes::from(v)
    }

    /// A slice NAL unit of `len` bytes (first_mb_in_slice = 0).
    fn slice(kind: u8, len: usize, seed: u8) -> Vec<u8> {
        let header = if kind == nal::IDR { 0x65 } else { 0x41 };
        let mut v = vec![header, 0x88];
        v.extend(
            (0..len.saturating_sub(2)).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1),
        );
        v
    }

    /// Packets of each access unit, 3000 ticks apart from `ts0`.
    fn packetize(p: &mut Packetizer, aus: &[Bytes], ts0: u32) -> Vec<Vec<RtpPacket>> {
        aus.iter()
            .enumerate()
            .map(|(i, au)| {
                let mut out = Vec::new();
                p.packetize(au, ts0.wrapping_add(i as u32 * 3000), &mut out);
                out
            })
            .collect()
    }

    fn push_all(d: &mut H264Depacketizer, packets: &[RtpPacket]) -> (Vec<AccessUnit>, Vec<Pushed>) {
        let mut out = Vec::new();
        let pushed = packets.iter().map(|p| d.push(p, &mut out)).collect();
        (out, pushed)
    }

    fn renumber(packets: &mut [RtpPacket], first: u16) {
        for (i, p) in packets.iter_mut().enumerate() {
            p.header.sequence_number = first.wrapping_add(i as u16);
        }
    }

    /// IDR, P, P, IDR, P: the IDRs and the second P need FU-A at MTU 200.
    fn gop() -> Vec<Bytes> {
        vec![
            annex_b(&[SPS, PPS, &slice(nal::IDR, 3000, 1)]),
            annex_b(&[&slice(nal::SLICE, 150, 2)]),
            annex_b(&[&[6, 5, 1, 0x80], &slice(nal::SLICE, 900, 3)]),
            annex_b(&[SPS, PPS, &slice(nal::IDR, 2500, 4)]),
            annex_b(&[&slice(nal::SLICE, 120, 5)]),
        ]
    }

    fn codec(family: Family, clock_rate: u32) -> Codec {
        Codec {
            family,
            payload_type: 96,
            clock_rate,
            channels: 1,
            fmtp: String::new(),
        }
    }

    #[test]
    fn check_takes_h264_and_opus_only() {
        let h264 = codec(
            Family::H264 {
                profile: 0x42,
                constraints: 0xe0,
            },
            90_000,
        );
        let opus = codec(Family::Opus, 48_000);
        let chosen = |video: Option<&Codec>, audio: Option<&Codec>| Chosen {
            video: video.cloned(),
            audio: audio.cloned(),
        };
        assert_eq!(check(&chosen(Some(&h264), Some(&opus))), Ok(()));
        assert_eq!(check(&chosen(Some(&h264), None)), Ok(()));
        assert_eq!(check(&chosen(None, Some(&opus))), Ok(()));
        let vp8 = check(&chosen(Some(&codec(Family::Vp8, 90_000)), Some(&opus))).unwrap_err();
        assert!(
            vp8.contains("VP8") && vp8.contains("publish H.264"),
            "{vp8}"
        );
        let pcmu = check(&chosen(Some(&h264), Some(&codec(Family::Pcmu, 8000)))).unwrap_err();
        assert!(pcmu.contains("PCMU") && pcmu.contains("Opus"), "{pcmu}");
        assert!(check(&chosen(None, Some(&codec(Family::Pcma, 8000)))).is_err());
        assert!(check(&chosen(None, None)).is_err());
        assert!(check(&chosen(Some(&opus), None)).is_err(), "Opus as video");
        assert!(check(&chosen(
            Some(&codec(
                Family::H264 {
                    profile: 0x42,
                    constraints: 0
                },
                0
            )),
            None
        ))
        .is_err());
    }

    #[test]
    fn single_units_stap_a_and_fu_a_become_the_access_units_again() {
        let aus = gop();
        let mut p = Packetizer::new(102, 0x1234_5678, 200);
        let packets = packetize(&mut p, &aus, 1000);
        assert_eq!(nal_type(&packets[0][0].payload), nal::STAP_A);
        assert_eq!(nal_type(&packets[0][1].payload), nal::FU_A);
        assert_eq!(packets[1].len(), 1, "a single NAL unit packet");
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets.concat());
        assert!(!pushed.contains(&Pushed::Lost), "{pushed:?}");
        assert_eq!(pushed.last(), Some(&Pushed::Ok));
        assert_eq!(out.len(), aus.len());
        for (i, (au, want)) in out.iter().zip(&aus).enumerate() {
            assert_eq!(au.data, want, "access unit {i}");
            assert_eq!(au.timestamp, 1000 + i as u32 * 3000);
            assert_eq!(au.key, i % 3 == 0);
        }
        assert!(!d.waiting_for_key_frame());
    }

    #[test]
    fn a_timestamp_change_ends_an_access_unit_without_marker() {
        let aus = gop();
        let mut p = Packetizer::new(102, 7, 200);
        let mut packets = packetize(&mut p, &aus, 0).concat();
        for packet in &mut packets {
            packet.header.marker = false;
        }
        let mut d = H264Depacketizer::new();
        let (out, _) = push_all(&mut d, &packets);
        // The last one has nothing after it yet.
        assert_eq!(out.len(), aus.len() - 1);
        for (au, want) in out.iter().zip(&aus) {
            assert_eq!(&au.data, want);
        }
    }

    #[test]
    fn a_loss_inside_a_fu_a_drops_up_to_the_next_idr() {
        let aus = gop();
        let mut p = Packetizer::new(102, 7, 200);
        let mut packets = packetize(&mut p, &aus, 0);
        assert!(packets[2].len() >= 5, "the P frame is fragmented");
        packets[2].remove(2);
        let packets = packets.concat();
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert_eq!(
            pushed.iter().filter(|p| **p == Pushed::Lost).count(),
            1,
            "{pushed:?}"
        );
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 3000, 9000, 12000], "the broken P is dropped");
        assert_eq!(out[2].data, aus[3]);
        assert!(!d.waiting_for_key_frame());

        // The same with a broken FU-A (an end fragment lost, a new start follows) and
        // a sender that does not number packets wrong: no gap, but a broken unit.
        let mut p = Packetizer::new(102, 7, 200);
        let mut packets = packetize(&mut p, &aus, 0);
        let last = packets[2].len() - 1;
        packets[2].remove(last); // the end fragment (and the marker) of the P frame
        let mut packets = packets.concat();
        renumber(&mut packets, 100);
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert_eq!(pushed.iter().filter(|p| **p == Pushed::Lost).count(), 1);
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 3000, 9000, 12000]);
    }

    #[test]
    fn a_lost_packet_before_an_idr_start_keeps_the_idr() {
        // P frames are lost whole: the IDR that follows begins a new access unit.
        let aus = gop();
        let mut p = Packetizer::new(102, 7, 200);
        let mut packets = packetize(&mut p, &aus, 0);
        packets[2].clear();
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets.concat());
        assert!(pushed.contains(&Pushed::Lost));
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 3000, 9000, 12000]);
    }

    #[test]
    fn an_idr_without_parameter_sets_gets_the_cached_ones() {
        let idr = slice(nal::IDR, 400, 9);
        let mut p = Packetizer::new(102, 7, 200);
        let mut first = Vec::new();
        p.packetize(&annex_b(&[SPS, PPS, &idr]), 0, &mut first);
        let mut second = Vec::new();
        p.packetize(&annex_b(&[&idr]), 3000, &mut second);
        assert_eq!(
            nal_type(&second[0].payload),
            nal::STAP_A,
            "the packetizer adds them"
        );
        second.remove(0); // a sender that does not
        let mut packets = [first, second].concat();
        renumber(&mut packets, 0);
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert!(!pushed.contains(&Pushed::Lost));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].data, annex_b(&[SPS, PPS, &idr]));
        assert!(out[1].key);
    }

    #[test]
    fn reordered_packets_are_put_back_in_order() {
        let aus = gop();
        let mut p = Packetizer::new(102, 7, 200);
        let mut packets = packetize(&mut p, &aus, 0).concat();
        packets.swap(3, 5); // inside the first IDR's FU-A
        let n = packets.len();
        packets.swap(n - 2, n - 1); // across the last two access units
        packets.swap(20, 23);
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert!(!pushed.contains(&Pushed::Lost), "{pushed:?}");
        assert_eq!(out.len(), aus.len());
        for (au, want) in out.iter().zip(&aus) {
            assert_eq!(&au.data, want);
        }
        // A duplicate is ignored; a packet later than the window is a loss.
        let mut d = H264Depacketizer::new();
        let mut packets = packetize(&mut Packetizer::new(102, 7, 200), &aus, 0).concat();
        // Packet 17 is the first P frame, 18..=23 the second one (SEI, FU-A).
        packets.insert(20, packets[18].clone());
        let late = packets.remove(21);
        packets.insert(21 + REORDER_DEPTH + 2, late);
        let (out, pushed) = push_all(&mut d, &packets);
        assert_eq!(pushed.iter().filter(|p| **p == Pushed::Lost).count(), 1);
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 3000, 9000, 12000], "the second P is broken");
    }

    #[test]
    fn a_restarted_sequence_is_followed_after_a_loss() {
        let aus = gop();
        let mut p = Packetizer::new(102, 0x4000_0000, 200);
        let first = packetize(&mut p, &aus[..3], 0).concat();
        let mut second = packetize(&mut p, &aus[3..], 9000).concat();
        renumber(&mut second, 0x4000 - 1000);
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &[first, second].concat());
        assert_eq!(pushed.iter().filter(|p| **p == Pushed::Lost).count(), 1);
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 3000, 6000, 9000, 12000]);
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap() {
        let aus = gop();
        // The packetizer starts at the top 16 bits of the SSRC: 0xfffd.
        let mut p = Packetizer::new(102, 0xfffd_0000, 200);
        let ts0 = u32::MAX - 4000;
        let packets = packetize(&mut p, &aus, ts0).concat();
        assert!(packets.iter().any(|p| p.header.sequence_number == 0));
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert!(!pushed.contains(&Pushed::Lost));
        assert_eq!(out.len(), aus.len());
        let mut clock = TrackClock::new(90_000);
        let ms: Vec<u64> = out.iter().map(|au| clock.map(au.timestamp, 500)).collect();
        assert_eq!(ms, vec![500, 533, 566, 600, 633]);
    }

    #[test]
    fn joining_mid_stream_waits_for_an_idr_without_reporting_a_loss() {
        let aus = gop();
        let mut p = Packetizer::new(102, 7, 200);
        let packets = packetize(&mut p, &aus, 0);
        // From the middle of the P frame's FU-A.
        let joined = [&packets[2][2..], &packets[3][..], &packets[4][..]].concat();
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &joined);
        assert!(!pushed.contains(&Pushed::Lost));
        assert_eq!(pushed[0], Pushed::Waiting);
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![9000, 12000]);
        // From a second slice of a picture: not a start either.
        let two_slices = annex_b(&[SPS, PPS, &slice(nal::IDR, 50, 1), &[0x65, 0x40, 1, 2]]);
        let mut packets = Vec::new();
        Packetizer::new(102, 7, 200).packetize(&two_slices, 0, &mut packets);
        let mut d = H264Depacketizer::new();
        let (out, _) = push_all(&mut d, &packets[2..]);
        assert!(out.is_empty());
    }

    #[test]
    fn an_oversized_access_unit_is_dropped() {
        let big = annex_b(&[SPS, PPS, &slice(nal::IDR, MAX_ACCESS_UNIT + 10, 1)]);
        let small = annex_b(&[SPS, PPS, &slice(nal::IDR, 100, 2)]);
        let mut p = Packetizer::new(102, 7, 1200);
        let packets = packetize(&mut p, &[small.clone(), big, small.clone()], 0).concat();
        let mut d = H264Depacketizer::new();
        let (out, pushed) = push_all(&mut d, &packets);
        assert_eq!(pushed.iter().filter(|p| **p == Pushed::Lost).count(), 1);
        let times: Vec<u32> = out.iter().map(|au| au.timestamp).collect();
        assert_eq!(times, vec![0, 6000]);
    }

    #[test]
    fn malformed_payloads_are_dropped_without_panics() {
        let mut d = H264Depacketizer::new();
        let mut out = Vec::new();
        let mut seed = 0x2545_f491_u32;
        for i in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 40) as usize;
            let payload: Vec<u8> = (0..len).map(|k| (seed >> (k % 24)) as u8).collect();
            let mut packet = RtpPacket::default();
            packet.header.sequence_number = (i + (seed % 3)) as u16;
            packet.header.timestamp = i / 4;
            packet.header.marker = seed.is_multiple_of(5);
            packet.payload = payload.into();
            d.push(&packet, &mut out);
        }
        // A STAP-A whose length runs past the end breaks its access unit.
        let mut d = H264Depacketizer::new();
        let mut packet = RtpPacket {
            payload: Bytes::from_static(&[24, 0, 7, 0x67, 1, 2]),
            ..Default::default()
        };
        packet.header.marker = true;
        let mut out = Vec::new();
        d.push(&packet, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn track_clocks_are_anchored_at_arrival_and_never_step_back() {
        // Two tracks with unrelated origins; audio arrives 40 ms after video.
        let mut video = TrackClock::new(90_000);
        let mut audio = TrackClock::new(48_000);
        assert_eq!(video.map(3_000_000_000, 1000), 1000);
        assert_eq!(audio.map(17, 1040), 1040);
        assert_eq!(
            video.map(3_000_000_000 + 90_000, 0),
            2000,
            "arrival counts once"
        );
        assert_eq!(audio.map(17 + 48_000, 0), 2040);
        // Across 2^32.
        let mut c = TrackClock::new(90_000);
        assert_eq!(c.map(u32::MAX - 8999, 0), 0);
        assert_eq!(c.map(u32::MAX, 0), 99);
        assert_eq!(c.map(9000, 0), 200);
        // A reordered packet: clamped, and the next one is unwrapped right.
        assert_eq!(c.map(0, 0), 200);
        assert_eq!(c.map(18000, 0), 300);
        // A long run of 20 ms steps through several wraps stays exact.
        let mut c = TrackClock::new(48_000);
        let mut rtp = 4_000_000_000u32;
        c.map(rtp, 0);
        for _ in 0..200_000 {
            rtp = rtp.wrapping_add(960 * 1000);
        }
        assert_eq!(c.map(rtp, 0), 0, "one step of 2^32 looks like a step back");
        let mut c = TrackClock::new(48_000);
        let mut rtp = 4_000_000_000u32;
        c.map(rtp, 0);
        for _ in 0..10_000 {
            rtp = rtp.wrapping_add(960 * 50);
            c.map(rtp, 0);
        }
        assert_eq!(c.map(rtp, 0), 10_000_000, "10 000 s in 1 s steps");
    }

    fn au(data: Bytes, key: bool) -> AccessUnit {
        AccessUnit {
            data,
            timestamp: 0,
            key,
        }
    }

    /// (kind, time, first byte, second byte) of tags.
    fn summary(tags: &[FlvTag]) -> Vec<(TagKind, u32, u8, u8)> {
        tags.iter()
            .map(|t| (t.kind, t.timestamp_ms, t.data[0], t.data[1]))
            .collect()
    }

    #[test]
    fn video_starts_with_the_sequence_header_and_a_key_frame_and_audio_waits() {
        let mut mux = FlvMux::new(true);
        let mut tags = Vec::new();
        let mut send = |t: FlvTag| {
            tags.push(t);
            true
        };
        let asc = [0x11, 0x90];
        let p = au(annex_b(&[&slice(nal::SLICE, 20, 1)]), false);
        let idr = au(annex_b(&[SPS, PPS, &slice(nal::IDR, 20, 2)]), true);
        mux.audio(&[1, 2, 3], &asc, 900, &mut send);
        assert!(!mux.video(&p, 950, &mut send));
        mux.audio(&[1, 2, 3], &asc, 960, &mut send);
        mux.video(&idr, 1000, &mut send);
        mux.audio(&[4], &asc, 990, &mut send); // from before the first picture
        mux.audio(&[5], &asc, 1010, &mut send);
        mux.video(&p, 1033, &mut send);
        mux.audio(&[6], &asc, 1030, &mut send);
        assert_eq!(
            summary(&tags),
            vec![
                (TagKind::Video, 0, 0x17, 0),
                (TagKind::Video, 0, 0x17, 1),
                (TagKind::Audio, 10, 0xaf, 0),
                (TagKind::Audio, 10, 0xaf, 1),
                (TagKind::Video, 33, 0x27, 1),
                (TagKind::Audio, 30, 0xaf, 1),
            ]
        );
        assert_eq!(&tags[2].data[2..], &asc);
    }

    #[test]
    fn audio_only_streams_pass_audio_at_once() {
        let mut mux = FlvMux::new(false);
        let mut tags = Vec::new();
        let mut send = |t: FlvTag| {
            tags.push(t);
            true
        };
        mux.audio(&[1], &[0x11, 0x90], 5000, &mut send);
        mux.audio(&[2], &[0x11, 0x90], 5021, &mut send);
        mux.audio(&[3], &[0x11, 0x90], 5020, &mut send); // clamped
        assert_eq!(
            summary(&tags),
            vec![
                (TagKind::Audio, 0, 0xaf, 0),
                (TagKind::Audio, 0, 0xaf, 1),
                (TagKind::Audio, 21, 0xaf, 1),
                (TagKind::Audio, 21, 0xaf, 1),
            ]
        );
    }

    #[test]
    fn a_full_player_queue_drops_video_until_a_key_frame() {
        let mut mux = FlvMux::new(true);
        let tags = std::cell::RefCell::new(Vec::new());
        let full = std::cell::Cell::new(false);
        let mut send = |t: FlvTag| {
            if full.get() {
                return false;
            }
            tags.borrow_mut().push(t);
            true
        };
        let p = au(annex_b(&[&slice(nal::SLICE, 20, 1)]), false);
        let idr = au(annex_b(&[SPS, PPS, &slice(nal::IDR, 20, 2)]), true);
        let idr_in_band_less = au(annex_b(&[&slice(nal::IDR, 20, 3)]), true);
        assert!(!mux.video(&idr, 0, &mut send));
        assert!(!mux.video(&p, 33, &mut send));
        full.set(true);
        assert!(
            mux.video(&p, 66, &mut send),
            "refused: a key frame is needed"
        );
        assert!(mux.resyncing());
        full.set(false);
        assert!(!mux.video(&p, 100, &mut send), "dropped, not refused");
        mux.audio(&[1], &[0x11, 0x90], 110, &mut send);
        assert!(!mux.video(&idr_in_band_less, 133, &mut send));
        assert!(!mux.video(&p, 166, &mut send));
        let tags = tags.into_inner();
        assert_eq!(
            summary(&tags),
            vec![
                (TagKind::Video, 0, 0x17, 0),
                (TagKind::Video, 0, 0x17, 1),
                (TagKind::Video, 33, 0x27, 1),
                (TagKind::Audio, 110, 0xaf, 0),
                (TagKind::Audio, 110, 0xaf, 1),
                (TagKind::Video, 133, 0x17, 0),
                (TagKind::Video, 133, 0x17, 1),
                (TagKind::Video, 166, 0x27, 1),
            ]
        );
    }

    #[test]
    fn key_frame_requests_are_rate_limited() {
        let mut r = KeyFrameRequests::default();
        let mut calls = 0;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        r.want();
        r.poll(at(0), true, &mut || calls += 1);
        assert_eq!(calls, 1);
        r.want();
        r.poll(at(100), true, &mut || calls += 1);
        assert_eq!(calls, 1, "too soon, kept pending");
        r.poll(at(499), true, &mut || calls += 1);
        assert_eq!(calls, 1);
        r.poll(at(500), true, &mut || calls += 1);
        assert_eq!(calls, 2);
        r.poll(at(2400), true, &mut || calls += 1);
        assert_eq!(calls, 2);
        r.poll(at(2500), true, &mut || calls += 1);
        assert_eq!(calls, 3, "repeated while still waiting");
        r.poll(at(9000), false, &mut || calls += 1);
        assert_eq!(calls, 3);
    }
}
