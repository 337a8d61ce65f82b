//! An RTMP publisher's media turned into what the stream core forwards: H.264 access
//! units from FLV/AVCC into RTP (RFC 6184) through the device's packetizer
//! (`device::h264::Packetizer`), with the avcC's SPS/PPS in front of every IDR (RTMP
//! encoders send them only once, in the sequence header), 90 kHz timestamps from
//! RTMP's milliseconds across the 32-bit rollover, and B-frames (composition time ≠ 0)
//! detected. AAC frames are passed on with their config for the transcoder.
//!
//! Pure: FLV tag bodies and timestamps in, packets and typed outcomes out.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::flv::{self, AacConfig, FlvError, VideoTag};
use crate::device::h264::{self, Packetizer, RtpPacket};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaError {
    #[error(transparent)]
    Flv(#[from] FlvError),
    #[error("H.264 frame before the AVC sequence header")]
    NoVideoConfig,
    #[error("AAC frame before the AAC sequence header")]
    NoAudioConfig,
    /// Browsers' WebRTC decoders do not reorder frames: B-frames would play out of
    /// order (stutter), and Huddle does not transcode video.
    #[error("H.264 with B-frames (composition time {0} ms) cannot be forwarded to browsers: set B-frames to 0 in the encoder (OBS: x264 options bframes=0, or profile baseline)")]
    BFrames(i32),
}

/// RTMP's 32-bit millisecond clock unwrapped into a 64-bit one. A step back of up to
/// 2^30 ms is a (reordered or reset) step back, anything else a forward step, so the
/// rollover at 2^32 ms (and the 24-bit one rml_rtmp already extends) never jumps.
/// ffmpeg's FLV writer wraps at 2^31 ms instead (it keeps the timestamp's top bit
/// clear): a jump from just below 2^31 to near 0 is that wrap, not a step back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    last: Option<(u32, i64)>,
}

impl Clock {
    /// The unwrapped time of an RTMP timestamp (the first one maps to itself).
    pub fn unwrap(&mut self, ms: u32) -> i64 {
        let now = match self.last {
            None => ms as i64,
            Some((raw, ext)) => {
                let step = ms.wrapping_sub(raw) as i32 as i64;
                if step < -(1 << 30) && raw < (1 << 31) && ms < (1 << 31) {
                    ext + step + (1 << 31)
                } else {
                    ext + step
                }
            }
        };
        self.last = Some((ms, now));
        now
    }
}

/// Milliseconds to an RTP 90 kHz timestamp (wrapping, as RTP does).
pub fn rtp_time_90k(ms: i64) -> u32 {
    (ms.wrapping_mul(90)) as u32
}

/// What one video tag body became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoOutcome {
    /// A new sequence header: the profile the stream signals (`42e01f`-style hex).
    Config { profile_level_id: String },
    /// An access unit, packetized into the caller's buffer.
    AccessUnit(AccessUnitInfo),
    /// End of sequence (nothing to forward).
    EndOfSequence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessUnitInfo {
    pub key: bool,
    /// The RTP timestamp (presentation time, 90 kHz).
    pub timestamp: u32,
    /// Unwrapped decode time in ms.
    pub dts_ms: i64,
    pub composition_time: i32,
    /// True on the first frame with a composition time ≠ 0 (B-frames: RTP players
    /// see non-monotonic timestamps; the wiring decides to warn, refuse or transcode).
    pub b_frames_detected: bool,
}

/// The H.264 side of one RTMP publisher.
pub struct H264Ingest {
    packetizer: Packetizer,
    clock: Clock,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    nal_length_size: u8,
    b_frames: bool,
}

impl H264Ingest {
    pub fn new(payload_type: u8, ssrc: u32, mtu: usize) -> H264Ingest {
        H264Ingest {
            packetizer: Packetizer::new(payload_type, ssrc, mtu),
            clock: Clock::default(),
            sps: None,
            pps: None,
            nal_length_size: 4,
            b_frames: false,
        }
    }

    /// Whether B-frames have been seen in this stream.
    pub fn has_b_frames(&self) -> bool {
        self.b_frames
    }

    /// Handles one video tag body with its RTMP timestamp; RTP packets of an access
    /// unit are appended to `out`.
    pub fn push(
        &mut self,
        body: &[u8],
        rtmp_ms: u32,
        out: &mut Vec<RtpPacket>,
    ) -> Result<VideoOutcome, MediaError> {
        match flv::parse_video(body)? {
            VideoTag::SequenceHeader(data) => {
                let config = flv::parse_avc_config(data)?;
                // One SPS/PPS pair is what WebRTC signals; the first of each is used.
                let sps = config.sps().next().map(Bytes::copy_from_slice);
                let pps = config.pps().next().map(Bytes::copy_from_slice);
                let profile_level_id = format!(
                    "{:02x}{:02x}{:02x}",
                    config.profile, config.constraints, config.level
                );
                self.nal_length_size = config.nal_length_size;
                self.sps = sps;
                self.pps = pps;
                Ok(VideoOutcome::Config { profile_level_id })
            }
            VideoTag::EndOfSequence => Ok(VideoOutcome::EndOfSequence),
            VideoTag::Frame {
                frame_type,
                composition_time,
                data,
            } => {
                let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) else {
                    return Err(MediaError::NoVideoConfig);
                };
                let mut annex_b = BytesMut::with_capacity(data.len() + sps.len() + pps.len() + 16);
                let mut has_idr = false;
                let mut has_sets = false;
                for unit in flv::avcc_nal_units(data, self.nal_length_size) {
                    let unit = unit?;
                    match h264::nal_type(unit) {
                        h264::nal::IDR => has_idr = true,
                        h264::nal::SPS | h264::nal::PPS => has_sets = true,
                        _ => {}
                    }
                }
                // The packetizer learns parameter sets from the stream itself: give
                // every IDR the avcC's (it keeps in-band ones when an encoder sends them).
                if has_idr && !has_sets {
                    for set in [&sps, &pps] {
                        annex_b.put_slice(&[0, 0, 0, 1]);
                        annex_b.put_slice(set);
                    }
                }
                for unit in flv::avcc_nal_units(data, self.nal_length_size).flatten() {
                    if unit.is_empty() {
                        continue;
                    }
                    annex_b.put_slice(&[0, 0, 0, 1]);
                    annex_b.put_slice(unit);
                }
                let dts_ms = self.clock.unwrap(rtmp_ms);
                let pts_ms = dts_ms + composition_time as i64;
                let timestamp = rtp_time_90k(pts_ms);
                let b_frames_detected = composition_time != 0 && !self.b_frames;
                self.b_frames |= composition_time != 0;
                self.packetizer.packetize(&annex_b.freeze(), timestamp, out);
                Ok(VideoOutcome::AccessUnit(AccessUnitInfo {
                    key: frame_type.is_key() || has_idr,
                    timestamp,
                    dts_ms,
                    composition_time,
                    b_frames_detected,
                }))
            }
        }
    }
}

/// One raw AAC frame of a publisher, for the AAC → Opus transcoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub config: AacConfig,
    pub data: Bytes,
    /// Unwrapped RTMP time in ms.
    pub time_ms: i64,
}

/// What one audio tag body became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioOutcome {
    Config(AacConfig),
    Frame(AacFrame),
}

/// The AAC side of one RTMP publisher.
#[derive(Debug, Default)]
pub struct AacIngest {
    config: Option<AacConfig>,
    clock: Clock,
}

impl AacIngest {
    pub fn config(&self) -> Option<AacConfig> {
        self.config
    }

    /// Handles one audio tag body; `body` is the `Bytes` rml_rtmp handed over, so the
    /// frame is a slice of it, not a copy.
    pub fn push(&mut self, body: &Bytes, rtmp_ms: u32) -> Result<AudioOutcome, MediaError> {
        match flv::parse_audio(body)? {
            flv::AudioTag::SequenceHeader(asc) => {
                let config = flv::parse_aac_config(asc)?;
                self.config = Some(config);
                Ok(AudioOutcome::Config(config))
            }
            flv::AudioTag::Raw(frame) => {
                let config = self.config.ok_or(MediaError::NoAudioConfig)?;
                Ok(AudioOutcome::Frame(AacFrame {
                    config,
                    data: body.slice_ref(frame),
                    time_ms: self.clock.unwrap(rtmp_ms),
                }))
            }
        }
    }
}

/// The reverse direction for players and pushes: an Annex-B access unit (as
/// depacketized from RTP) into FLV video tag bodies. Remembers the parameter sets and
/// emits a new sequence header when they change; frames before the first key frame
/// with known SPS/PPS are dropped, so a player always starts decodable.
#[derive(Debug, Default)]
pub struct FlvVideoEgress {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    announced: bool,
    started: bool,
}

/// Tag bodies for one access unit: an optional sequence header, then the frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EgressTags {
    pub sequence_header: Option<Vec<u8>>,
    pub frame: Option<Vec<u8>>,
}

impl FlvVideoEgress {
    pub fn push(&mut self, access_unit: &Bytes) -> EgressTags {
        let mut key = false;
        for unit in h264::nal_units(access_unit) {
            match h264::nal_type(unit) {
                h264::nal::SPS if self.sps.as_deref() != Some(unit) => {
                    self.sps = Some(access_unit.slice_ref(unit));
                    self.announced = false;
                }
                h264::nal::PPS if self.pps.as_deref() != Some(unit) => {
                    self.pps = Some(access_unit.slice_ref(unit));
                    self.announced = false;
                }
                h264::nal::IDR => key = true,
                _ => {}
            }
        }
        let mut tags = EgressTags::default();
        if !self.announced {
            if let (Some(sps), Some(pps)) = (&self.sps, &self.pps) {
                if let Ok(header) = flv::video_sequence_header(sps, pps) {
                    tags.sequence_header = Some(header);
                    self.announced = true;
                }
            }
        }
        if key && self.announced {
            self.started = true;
        }
        if self.started {
            let units: Vec<&[u8]> = h264::nal_units(access_unit)
                .filter(|u| {
                    !matches!(
                        h264::nal_type(u),
                        h264::nal::SPS | h264::nal::PPS | h264::nal::AUD
                    )
                })
                .collect();
            tags.frame = Some(flv::video_frame(key, &units));
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn clock_unwraps_the_32_bit_rollover() {
        let mut c = Clock::default();
        assert_eq!(c.unwrap(u32::MAX - 10), (u32::MAX - 10) as i64);
        assert_eq!(c.unwrap(5), u32::MAX as i64 + 6);
        assert_eq!(c.unwrap(3), u32::MAX as i64 + 4, "a small step back");
        assert_eq!(c.unwrap(40), u32::MAX as i64 + 41);
        // ffmpeg's 31-bit wrap.
        let mut c = Clock::default();
        assert_eq!(c.unwrap((1 << 31) - 20), (1 << 31) - 20);
        assert_eq!(c.unwrap(13), (1 << 31) + 13);
        assert_eq!(c.unwrap(46), (1 << 31) + 46);
        // A reset to 0 from early in the stream stays a step back.
        let mut c = Clock::default();
        assert_eq!(c.unwrap(5000), 5000);
        assert_eq!(c.unwrap(0), 0);
        // The 90 kHz clock wraps on its own, continuously.
        let a = rtp_time_90k(u32::MAX as i64 + 6);
        let b = rtp_time_90k(u32::MAX as i64 + 41);
        assert_eq!(b.wrapping_sub(a), 35 * 90);
        assert_eq!(rtp_time_90k(1000), 90_000);
    }

    #[test]
    fn every_idr_gets_the_avcc_parameter_sets() {
        let mut ingest = H264Ingest::new(102, 7, 1200);
        let mut out = Vec::new();
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        assert_eq!(
            ingest.push(&flv::video_frame(true, &[idr]), 0, &mut out),
            Err(MediaError::NoVideoConfig)
        );
        let header = flv::video_sequence_header(SPS, PPS).unwrap();
        assert_eq!(
            ingest.push(&header, 0, &mut out).unwrap(),
            VideoOutcome::Config {
                profile_level_id: "42c01e".into()
            }
        );
        for (i, ms) in [0u32, 33, 66, 100].into_iter().enumerate() {
            out.clear();
            let key = i % 2 == 0;
            let unit: &[u8] = if key { idr } else { &[0x41, 0x9a, 1] };
            let sei: &[u8] = &[6, 5, 1, 0x80];
            let VideoOutcome::AccessUnit(info) = ingest
                .push(&flv::video_frame(key, &[sei, unit]), ms, &mut out)
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(info.key, key);
            assert_eq!(info.timestamp, ms * 90);
            assert!(!info.b_frames_detected);
            if key {
                assert_eq!(h264::nal_type(&out[0].payload), h264::nal::STAP_A);
                assert_eq!(out.len(), 3, "STAP-A(SPS,PPS), SEI, IDR");
            } else {
                assert_eq!(out.len(), 2);
            }
            assert!(out.last().unwrap().header.marker);
            assert!(out.iter().all(|p| p.header.timestamp == ms * 90));
        }
    }

    #[test]
    fn b_frames_are_detected_once_and_shift_the_timestamp() {
        let mut ingest = H264Ingest::new(102, 7, 1200);
        let mut out = Vec::new();
        ingest
            .push(&flv::video_sequence_header(SPS, PPS).unwrap(), 0, &mut out)
            .unwrap();
        let mut tag = flv::video_frame(true, &[&[0x65u8, 1][..]]);
        tag[4] = 66; // cts 66 ms
        let VideoOutcome::AccessUnit(a) = ingest.push(&tag, 1000, &mut out).unwrap() else {
            panic!()
        };
        assert!(a.b_frames_detected && ingest.has_b_frames());
        assert_eq!(a.timestamp, 1066 * 90);
        let VideoOutcome::AccessUnit(b) = ingest.push(&tag, 1033, &mut out).unwrap() else {
            panic!()
        };
        assert!(!b.b_frames_detected, "reported once");
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let mut ingest = H264Ingest::new(102, 7, 1200);
        let mut out = Vec::new();
        ingest
            .push(&flv::video_sequence_header(SPS, PPS).unwrap(), 0, &mut out)
            .unwrap();
        let bad = [0x17, 1, 0, 0, 0, 0, 0, 0, 99, 0x65];
        assert!(matches!(
            ingest.push(&bad, 0, &mut out),
            Err(MediaError::Flv(FlvError::NalUnitOverrun { .. }))
        ));
        assert!(matches!(
            ingest.push(&[0x90, b'h', b'v', b'c', b'1'], 0, &mut out),
            Err(MediaError::Flv(FlvError::EnhancedRtmp { .. }))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn aac_frames_carry_their_config_and_time() {
        let mut a = AacIngest::default();
        let raw = Bytes::from(flv::aac_frame(&[0x21, 0x10]));
        assert_eq!(a.push(&raw, 0), Err(MediaError::NoAudioConfig));
        let cfg = a
            .push(&Bytes::from(flv::aac_sequence_header(&[0x12, 0x08])), 0)
            .unwrap();
        assert!(matches!(cfg, AudioOutcome::Config(c) if c.sample_rate == 44100));
        let AudioOutcome::Frame(f) = a.push(&raw, 23).unwrap() else {
            panic!()
        };
        assert_eq!((&f.data[..], f.time_ms), (&[0x21, 0x10][..], 23));
        assert!(a.push(&Bytes::from_static(&[0x2f, 1, 2]), 0).is_err());
    }

    #[test]
    fn egress_starts_at_a_key_frame_after_a_sequence_header() {
        let annex = |units: &[&[u8]]| {
            let mut v = Vec::new();
            for u in units {
                v.extend_from_slice(&[0, 0, 0, 1]);
                v.extend_from_slice(u);
            }
            Bytes::from(v)
        };
        let mut e = FlvVideoEgress::default();
        // A P frame before anything: nothing.
        assert_eq!(e.push(&annex(&[&[0x41, 1]])), EgressTags::default());
        let tags = e.push(&annex(&[&[9, 0x10], SPS, PPS, &[0x65, 1, 2]]));
        let header = tags.sequence_header.unwrap();
        assert_eq!(header, flv::video_sequence_header(SPS, PPS).unwrap());
        let frame = tags.frame.unwrap();
        assert_eq!(frame, flv::video_frame(true, &[&[0x65u8, 1, 2][..]]));
        let tags = e.push(&annex(&[&[0x41, 3]]));
        assert_eq!(tags.sequence_header, None);
        assert_eq!(tags.frame.unwrap()[0], 0x27);
        // Same parameter sets again: no new header.
        let tags = e.push(&annex(&[SPS, PPS, &[0x65, 4]]));
        assert_eq!(tags.sequence_header, None);
    }
}
