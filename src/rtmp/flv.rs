//! FLV tag bodies as RTMP carries them (rml_rtmp hands them over without the FLV tag
//! header): video (H.264/AVC in AVCC form), audio (AAC), and the reverse direction for
//! players and pushes.
//!
//! Pure functions over bytes, no I/O, no allocation on the parse side (results borrow
//! the input), so every parser here can be fed arbitrary bytes by a fuzzer. Whatever a
//! client sends that Huddle does not take (other codecs, Enhanced RTMP) is a typed
//! [`FlvError`] whose text is the refusal reason for the log and the RTMP status.

use thiserror::Error;

/// What is wrong with a tag body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlvError {
    #[error("empty {0} tag")]
    Empty(&'static str),
    #[error("truncated {what}: {need} bytes needed, {have} present")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("video codec {name} (FLV codec id {id}) is not supported: publish H.264")]
    UnsupportedVideoCodec { id: u8, name: &'static str },
    #[error(
        "Enhanced RTMP video ({}) is not supported: publish H.264 (codec id 7)",
        fourcc_text(.fourcc)
    )]
    EnhancedRtmp { fourcc: [u8; 4] },
    #[error("video frame type {0} (video info/command frame) carries no picture")]
    VideoCommandFrame(u8),
    #[error("unknown AVC packet type {0}")]
    UnknownAvcPacketType(u8),
    #[error("audio format {name} (FLV sound format {id}) is not supported: publish AAC")]
    UnsupportedAudioFormat { id: u8, name: &'static str },
    #[error("unknown AAC packet type {0}")]
    UnknownAacPacketType(u8),
    #[error("bad AVCDecoderConfigurationRecord: {0}")]
    BadAvcConfig(&'static str),
    #[error("bad AudioSpecificConfig: {0}")]
    BadAacConfig(&'static str),
    #[error("NAL unit length {length} at offset {offset} runs past the end of the access unit ({size} bytes)")]
    NalUnitOverrun {
        offset: usize,
        length: usize,
        size: usize,
    },
    #[error("NAL unit length size {0} is not 1, 2 or 4")]
    BadNalLengthSize(u8),
    #[error("parameter set of {0} bytes does not fit the avcC")]
    ParameterSetTooLarge(usize),
}

fn fourcc_text(f: &[u8; 4]) -> String {
    f.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// FLV video codec id of H.264/AVC.
pub const CODEC_AVC: u8 = 7;
/// FLV sound format of AAC.
pub const SOUND_AAC: u8 = 10;

/// FLV video frame types (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Key,
    Inter,
    DisposableInter,
    GeneratedKey,
}

impl FrameType {
    pub fn is_key(self) -> bool {
        matches!(self, FrameType::Key | FrameType::GeneratedKey)
    }
}

/// An AVC video tag body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// `AVCPacketType` 0: the AVCDecoderConfigurationRecord (parse with [`parse_avc_config`]).
    SequenceHeader(&'a [u8]),
    /// `AVCPacketType` 1: one access unit of length-prefixed NAL units.
    Frame {
        frame_type: FrameType,
        /// Composition time offset in ms (PTS − DTS); non-zero means B-frames.
        composition_time: i32,
        /// The NAL units (iterate with [`avcc_nal_units`]).
        data: &'a [u8],
    },
    /// `AVCPacketType` 2: end of sequence.
    EndOfSequence,
}

fn video_codec_name(id: u8) -> &'static str {
    match id {
        1 => "JPEG",
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        7 => "H.264",
        12 => "HEVC (non-standard id 12)",
        13 => "AV1 (non-standard id 13)",
        _ => "unknown",
    }
}

/// Parses an FLV video tag body. Only H.264 is accepted; every other codec, and
/// Enhanced RTMP (IsExHeader, FourCC), is a refusal naming what was sent.
pub fn parse_video(body: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty("video"))?;
    if first & 0x80 != 0 {
        // Enhanced RTMP: [IsExHeader:1][FrameType:3][PacketType:4][FourCC:4]...
        let fourcc = match body.get(1..5) {
            Some(&[a, b, c, d]) => [a, b, c, d],
            _ => {
                return Err(FlvError::Truncated {
                    what: "Enhanced RTMP video header",
                    need: 5,
                    have: body.len(),
                })
            }
        };
        return Err(FlvError::EnhancedRtmp { fourcc });
    }
    let frame_type = first >> 4;
    let codec = first & 0x0f;
    if codec != CODEC_AVC {
        return Err(FlvError::UnsupportedVideoCodec {
            id: codec,
            name: video_codec_name(codec),
        });
    }
    let frame_type = match frame_type {
        1 => FrameType::Key,
        2 => FrameType::Inter,
        3 => FrameType::DisposableInter,
        4 => FrameType::GeneratedKey,
        other => return Err(FlvError::VideoCommandFrame(other)),
    };
    let header = body.get(..5).ok_or(FlvError::Truncated {
        what: "AVC video header",
        need: 5,
        have: body.len(),
    })?;
    // SI24, sign-extended.
    let cts =
        (((header[2] as i32) << 24) | ((header[3] as i32) << 16) | ((header[4] as i32) << 8)) >> 8;
    let data = &body[5..];
    match header[1] {
        0 => Ok(VideoTag::SequenceHeader(data)),
        1 => Ok(VideoTag::Frame {
            frame_type,
            composition_time: cts,
            data,
        }),
        2 => Ok(VideoTag::EndOfSequence),
        other => Err(FlvError::UnknownAvcPacketType(other)),
    }
}

/// An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1), borrowing its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvcConfig<'a> {
    pub profile: u8,
    pub constraints: u8,
    pub level: u8,
    /// Bytes of each NAL unit length prefix in the frames (1, 2 or 4).
    pub nal_length_size: u8,
    sps_count: u8,
    sps: &'a [u8],
    pps_count: u8,
    pps: &'a [u8],
}

impl<'a> AvcConfig<'a> {
    /// The sequence parameter sets (NAL header byte included).
    pub fn sps(&self) -> ParameterSets<'a> {
        ParameterSets {
            data: self.sps,
            left: self.sps_count,
        }
    }

    /// The picture parameter sets (NAL header byte included).
    pub fn pps(&self) -> ParameterSets<'a> {
        ParameterSets {
            data: self.pps,
            left: self.pps_count,
        }
    }
}

/// Iterator over a validated run of 16-bit-length-prefixed parameter sets.
#[derive(Debug, Clone)]
pub struct ParameterSets<'a> {
    data: &'a [u8],
    left: u8,
}

impl<'a> Iterator for ParameterSets<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (len, rest) = split_u16(self.data)?;
        let (unit, rest) = rest.split_at_checked(len)?;
        self.data = rest;
        Some(unit)
    }
}

fn split_u16(data: &[u8]) -> Option<(usize, &[u8])> {
    match data {
        [a, b, rest @ ..] => Some((u16::from_be_bytes([*a, *b]) as usize, rest)),
        _ => None,
    }
}

/// Walks `count` length-prefixed parameter sets: (the bytes they span, the rest).
fn parameter_sets(data: &[u8], count: u8, nal_type: u8) -> Result<(&[u8], &[u8]), FlvError> {
    let mut rest = data;
    for _ in 0..count {
        let (len, after) =
            split_u16(rest).ok_or(FlvError::BadAvcConfig("parameter set length truncated"))?;
        let (unit, after) = after
            .split_at_checked(len)
            .ok_or(FlvError::BadAvcConfig("parameter set runs past the end"))?;
        if unit.first().map(|b| b & 0x1f) != Some(nal_type) {
            return Err(FlvError::BadAvcConfig(if nal_type == 7 {
                "an SPS entry is not an SPS NAL unit"
            } else {
                "a PPS entry is not a PPS NAL unit"
            }));
        }
        rest = after;
    }
    Ok((&data[..data.len() - rest.len()], rest))
}

/// Parses an AVCDecoderConfigurationRecord. At least one SPS and one PPS are required
/// (a WebRTC receiver cannot decode without them).
pub fn parse_avc_config(data: &[u8]) -> Result<AvcConfig<'_>, FlvError> {
    let head = data.get(..6).ok_or(FlvError::Truncated {
        what: "AVCDecoderConfigurationRecord",
        need: 6,
        have: data.len(),
    })?;
    if head[0] != 1 {
        return Err(FlvError::BadAvcConfig("configurationVersion is not 1"));
    }
    let nal_length_size = (head[4] & 0x03) + 1;
    if nal_length_size == 3 {
        return Err(FlvError::BadNalLengthSize(3));
    }
    let sps_count = head[5] & 0x1f;
    let (sps, rest) = parameter_sets(&data[6..], sps_count, 7)?;
    let (&pps_count, rest) = rest
        .split_first()
        .ok_or(FlvError::BadAvcConfig("numOfPictureParameterSets missing"))?;
    let (pps, _extensions) = parameter_sets(rest, pps_count, 8)?;
    if sps_count == 0 || pps_count == 0 {
        return Err(FlvError::BadAvcConfig("no SPS or no PPS"));
    }
    Ok(AvcConfig {
        profile: head[1],
        constraints: head[2],
        level: head[3],
        nal_length_size,
        sps_count,
        sps,
        pps_count,
        pps,
    })
}

/// The NAL units of an AVCC access unit, each without its length prefix. Yields an
/// error (once, then stops) when a length runs past the end.
pub fn avcc_nal_units(data: &[u8], nal_length_size: u8) -> AvccNalUnits<'_> {
    AvccNalUnits {
        data,
        pos: 0,
        size: nal_length_size,
        failed: false,
    }
}

#[derive(Debug, Clone)]
pub struct AvccNalUnits<'a> {
    data: &'a [u8],
    pos: usize,
    size: u8,
    failed: bool,
}

impl<'a> Iterator for AvccNalUnits<'a> {
    type Item = Result<&'a [u8], FlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let n = self.size as usize;
        if !matches!(n, 1 | 2 | 4) {
            self.failed = true;
            return Some(Err(FlvError::BadNalLengthSize(self.size)));
        }
        let offset = self.pos;
        let Some(prefix) = self.data.get(offset..offset + n) else {
            self.failed = true;
            return Some(Err(FlvError::Truncated {
                what: "NAL unit length",
                need: n,
                have: self.data.len() - offset,
            }));
        };
        let length = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let start = offset + n;
        match self.data.get(start..).and_then(|r| r.get(..length)) {
            Some(unit) => {
                self.pos = start + length;
                Some(Ok(unit))
            }
            None => {
                self.failed = true;
                Some(Err(FlvError::NalUnitOverrun {
                    offset,
                    length,
                    size: self.data.len(),
                }))
            }
        }
    }
}

/// An AAC audio tag body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// `AACPacketType` 0: the AudioSpecificConfig (parse with [`parse_aac_config`]).
    SequenceHeader(&'a [u8]),
    /// `AACPacketType` 1: one raw AAC frame.
    Raw(&'a [u8]),
}

fn sound_format_name(id: u8) -> &'static str {
    match id {
        0 => "linear PCM (platform endian)",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (little endian)",
        4 => "Nellymoser 16 kHz",
        5 => "Nellymoser 8 kHz",
        6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "Enhanced RTMP audio (ExHeader)",
        10 => "AAC",
        11 => "Speex",
        14 => "MP3 8 kHz",
        15 => "device-specific",
        _ => "reserved",
    }
}

/// Parses an FLV audio tag body. Only AAC is accepted.
pub fn parse_audio(body: &[u8]) -> Result<AudioTag<'_>, FlvError> {
    let first = *body.first().ok_or(FlvError::Empty("audio"))?;
    let format = first >> 4;
    if format != SOUND_AAC {
        return Err(FlvError::UnsupportedAudioFormat {
            id: format,
            name: sound_format_name(format),
        });
    }
    let packet_type = *body.get(1).ok_or(FlvError::Truncated {
        what: "AAC audio header",
        need: 2,
        have: body.len(),
    })?;
    match packet_type {
        0 => Ok(AudioTag::SequenceHeader(&body[2..])),
        1 => Ok(AudioTag::Raw(&body[2..])),
        other => Err(FlvError::UnknownAacPacketType(other)),
    }
}

/// What an AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type (2 = AAC-LC, 5 = SBR/HE-AAC, 29 = PS).
    pub object_type: u8,
    pub sample_rate: u32,
    /// Channel configuration (0 = defined in the stream, 1..=7).
    pub channels: u8,
}

const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Reads `n` bits MSB-first from `data` at bit `pos`.
fn bits(data: &[u8], pos: &mut usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for _ in 0..n {
        let byte = *data.get(*pos / 8)?;
        v = (v << 1) | ((byte >> (7 - *pos % 8)) & 1) as u32;
        *pos += 1;
    }
    Some(v)
}

/// Parses the start of an AudioSpecificConfig: object type, sample rate, channels.
pub fn parse_aac_config(data: &[u8]) -> Result<AacConfig, FlvError> {
    let short = FlvError::BadAacConfig("truncated");
    let mut pos = 0;
    let mut object_type = bits(data, &mut pos, 5).ok_or(short.clone())?;
    if object_type == 31 {
        object_type = 32 + bits(data, &mut pos, 6).ok_or(short.clone())?;
    }
    if object_type == 0 {
        return Err(FlvError::BadAacConfig("object type 0 (null)"));
    }
    let index = bits(data, &mut pos, 4).ok_or(short.clone())?;
    let sample_rate = match index {
        15 => bits(data, &mut pos, 24).ok_or(short.clone())?,
        i => *AAC_RATES
            .get(i as usize)
            .ok_or(FlvError::BadAacConfig("reserved sampling frequency index"))?,
    };
    if sample_rate == 0 {
        return Err(FlvError::BadAacConfig("sample rate 0"));
    }
    let channels = bits(data, &mut pos, 4).ok_or(short)? as u8;
    Ok(AacConfig {
        object_type: object_type as u8,
        sample_rate,
        channels,
    })
}

/// A two-byte AudioSpecificConfig for an object type with a standard sample rate
/// (`None` for a rate outside the table or an object type above 30).
pub fn aac_config_bytes(object_type: u8, sample_rate: u32, channels: u8) -> Option<[u8; 2]> {
    let index = AAC_RATES.iter().position(|&r| r == sample_rate)? as u8;
    if object_type == 0 || object_type > 30 || channels > 7 {
        return None;
    }
    Some([
        (object_type << 3) | (index >> 1),
        ((index & 1) << 7) | (channels << 3),
    ])
}

/// An AVCDecoderConfigurationRecord for one SPS and one PPS (NAL header bytes
/// included), with 4-byte NAL unit lengths.
pub fn avc_config_bytes(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, FlvError> {
    if sps.len() < 4 || sps[0] & 0x1f != 7 {
        return Err(FlvError::BadAvcConfig("the SPS is not an SPS NAL unit"));
    }
    if pps.is_empty() || pps[0] & 0x1f != 8 {
        return Err(FlvError::BadAvcConfig("the PPS is not a PPS NAL unit"));
    }
    for set in [sps, pps] {
        if set.len() > u16::MAX as usize {
            return Err(FlvError::ParameterSetTooLarge(set.len()));
        }
    }
    let mut v = Vec::with_capacity(11 + sps.len() + pps.len());
    v.extend_from_slice(&[1, sps[1], sps[2], sps[3], 0xfc | 3, 0xe0 | 1]);
    v.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    v.extend_from_slice(sps);
    v.push(1);
    v.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    v.extend_from_slice(pps);
    Ok(v)
}

/// The AVC sequence header video tag body (key frame, packet type 0) for SPS + PPS.
pub fn video_sequence_header(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, FlvError> {
    let config = avc_config_bytes(sps, pps)?;
    let mut v = Vec::with_capacity(5 + config.len());
    v.extend_from_slice(&[0x17, 0, 0, 0, 0]);
    v.extend_from_slice(&config);
    Ok(v)
}

/// A video tag body for one access unit (composition time 0, 4-byte NAL lengths).
/// NAL units are given without start codes.
pub fn video_frame(key: bool, units: &[&[u8]]) -> Vec<u8> {
    let size: usize = units.iter().map(|u| 4 + u.len()).sum();
    let mut v = Vec::with_capacity(5 + size);
    v.extend_from_slice(&[if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]);
    for unit in units {
        v.extend_from_slice(&(unit.len() as u32).to_be_bytes());
        v.extend_from_slice(unit);
    }
    v
}

/// First byte of every AAC audio tag: format 10, "44 kHz", 16-bit, stereo (the fixed
/// values the FLV spec prescribes for AAC; the real ones are in the AudioSpecificConfig).
const AAC_TAG_BYTE: u8 = 0xaf;

/// The AAC sequence header audio tag body for an AudioSpecificConfig.
pub fn aac_sequence_header(config: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + config.len());
    v.extend_from_slice(&[AAC_TAG_BYTE, 0]);
    v.extend_from_slice(config);
    v
}

/// An audio tag body for one raw AAC frame.
pub fn aac_frame(frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + frame.len());
    v.extend_from_slice(&[AAC_TAG_BYTE, 1]);
    v.extend_from_slice(frame);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn parses_ffmpeg_style_video_tags() {
        let header = video_sequence_header(SPS, PPS).unwrap();
        let VideoTag::SequenceHeader(config) = parse_video(&header).unwrap() else {
            panic!("not a sequence header");
        };
        let c = parse_avc_config(config).unwrap();
        assert_eq!((c.profile, c.constraints, c.level), (0x42, 0xc0, 0x1e));
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps().collect::<Vec<_>>(), vec![SPS]);
        assert_eq!(c.pps().collect::<Vec<_>>(), vec![PPS]);

        let sei: &[u8] = &[6, 5, 1, 0x80];
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        let tag = video_frame(true, &[sei, idr]);
        match parse_video(&tag).unwrap() {
            VideoTag::Frame {
                frame_type,
                composition_time,
                data,
            } => {
                assert!(frame_type.is_key());
                assert_eq!(composition_time, 0);
                let units: Vec<&[u8]> = avcc_nal_units(data, 4).map(Result::unwrap).collect();
                assert_eq!(units, vec![sei, idr]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_video(&[0x27, 2, 0, 0, 0]),
            Ok(VideoTag::EndOfSequence)
        );
    }

    #[test]
    fn composition_time_is_signed() {
        let tag = [0x27, 1, 0x00, 0x00, 0x50, 0, 0, 0, 1, 0x41];
        let VideoTag::Frame {
            composition_time, ..
        } = parse_video(&tag).unwrap()
        else {
            panic!()
        };
        assert_eq!(composition_time, 80);
        let tag = [0x27, 1, 0xff, 0xff, 0xd8];
        let VideoTag::Frame {
            composition_time, ..
        } = parse_video(&tag).unwrap()
        else {
            panic!()
        };
        assert_eq!(composition_time, -40);
    }

    #[test]
    fn refuses_other_codecs_and_enhanced_rtmp_by_name() {
        let e = parse_video(&[0x90, b'h', b'v', b'c', b'1', 0]).unwrap_err();
        assert_eq!(e, FlvError::EnhancedRtmp { fourcc: *b"hvc1" });
        assert!(e.to_string().contains("hvc1"), "{e}");
        let e = parse_video(&[0x80, b'a', b'v', b'0', b'1']).unwrap_err();
        assert_eq!(e, FlvError::EnhancedRtmp { fourcc: *b"av01" });
        assert!(matches!(
            parse_video(&[0x80, b'a']),
            Err(FlvError::Truncated { .. })
        ));
        let e = parse_video(&[0x24, 0]).unwrap_err();
        assert!(e.to_string().contains("VP6"), "{e}");
        assert_eq!(
            parse_video(&[0x5c, 0]).unwrap_err(),
            FlvError::UnsupportedVideoCodec {
                id: 12,
                name: "HEVC (non-standard id 12)"
            }
        );
        assert_eq!(parse_video(&[]), Err(FlvError::Empty("video")));
        assert!(matches!(
            parse_video(&[0x17, 1]),
            Err(FlvError::Truncated { .. })
        ));
        assert_eq!(
            parse_video(&[0x17, 7, 0, 0, 0]),
            Err(FlvError::UnknownAvcPacketType(7))
        );
        assert_eq!(parse_video(&[0x57, 0]), Err(FlvError::VideoCommandFrame(5)));
    }

    #[test]
    fn rejects_malformed_avc_configs() {
        let good = avc_config_bytes(SPS, PPS).unwrap();
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(parse_avc_config(&good[..n]).is_err(), "prefix {n}");
        }
        let mut v = good.clone();
        v[0] = 2;
        assert!(parse_avc_config(&v).is_err());
        let mut v = good.clone();
        v[4] = 0xfe; // length size 3
        assert_eq!(parse_avc_config(&v), Err(FlvError::BadNalLengthSize(3)));
        let mut v = good.clone();
        v[7] = 0xff; // SPS length past the end
        assert!(parse_avc_config(&v).is_err());
        let mut v = good.clone();
        v[5] = 0xe0; // no SPS
        assert!(parse_avc_config(&v).is_err());
        assert!(avc_config_bytes(PPS, SPS).is_err());
        assert!(avc_config_bytes(SPS, &[]).is_err());
    }

    #[test]
    fn nal_unit_lengths_are_bounds_checked() {
        let units: Vec<_> = avcc_nal_units(&[0, 0, 0, 9, 0x65, 1], 4).collect();
        assert_eq!(
            units,
            vec![Err(FlvError::NalUnitOverrun {
                offset: 0,
                length: 9,
                size: 6
            })]
        );
        let units: Vec<_> = avcc_nal_units(&[0, 2, 0x41, 1, 0], 2).collect();
        assert_eq!(units.len(), 2);
        assert!(units[1].is_err());
        let units: Vec<_> = avcc_nal_units(&[1, 0x41, 0, 2, 0x41], 1).collect();
        assert_eq!(units[0], Ok(&[0x41][..]));
        assert_eq!(units[1], Ok(&[][..]));
        assert!(units[2].is_err());
        assert_eq!(
            avcc_nal_units(&[1, 2], 3).next(),
            Some(Err(FlvError::BadNalLengthSize(3)))
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0];
        assert!(avcc_nal_units(&huge, 4).next().unwrap().is_err());
        assert_eq!(avcc_nal_units(&[], 4).count(), 0);
    }

    #[test]
    fn parses_aac_tags_and_configs() {
        // ffmpeg's `sine` default: AAC-LC 44.1 kHz mono.
        let header = aac_sequence_header(&[0x12, 0x08]);
        let AudioTag::SequenceHeader(asc) = parse_audio(&header).unwrap() else {
            panic!()
        };
        assert_eq!(
            parse_aac_config(asc).unwrap(),
            AacConfig {
                object_type: 2,
                sample_rate: 44100,
                channels: 1
            }
        );
        // GStreamer's avenc_aac: 48 kHz stereo.
        let c = parse_aac_config(&[0x11, 0x90]).unwrap();
        assert_eq!((c.sample_rate, c.channels), (48000, 2));
        assert_eq!(aac_config_bytes(2, 48000, 2), Some([0x11, 0x90]));
        assert_eq!(aac_config_bytes(2, 44100, 1), Some([0x12, 0x08]));
        assert_eq!(aac_config_bytes(2, 12345, 1), None);
        // Explicit 24-bit rate and escaped object type.
        let c = parse_aac_config(&[0x17, 0x80, 0x5d, 0xc0, 0x10]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
        let c = parse_aac_config(&[0xf8, 0x46, 0x00]).unwrap();
        assert_eq!(c.object_type, 34);
        assert!(parse_aac_config(&[0x12]).is_err());
        assert!(parse_aac_config(&[0x00, 0x00]).is_err());
        assert!(
            parse_aac_config(&[0x16, 0x80]).is_err(),
            "reserved index 13"
        );
        assert!(parse_aac_config(&[]).is_err());

        assert_eq!(
            parse_audio(&aac_frame(&[1, 2, 3])),
            Ok(AudioTag::Raw(&[1, 2, 3][..]))
        );
        let e = parse_audio(&[0x2f, 0xff]).unwrap_err();
        assert!(e.to_string().contains("MP3"), "{e}");
        let e = parse_audio(&[0xb6, 0]).unwrap_err();
        assert!(e.to_string().contains("Speex"), "{e}");
        assert_eq!(parse_audio(&[]), Err(FlvError::Empty("audio")));
        assert!(matches!(
            parse_audio(&[0xaf]),
            Err(FlvError::Truncated { .. })
        ));
        assert_eq!(
            parse_audio(&[0xaf, 2]),
            Err(FlvError::UnknownAacPacketType(2))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz of every parser.
        let mut x = 0x1234_5678u32;
        let mut buf = Vec::new();
        for round in 0..20_000 {
            buf.clear();
            for _ in 0..(round % 40) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            let _ = parse_video(&buf);
            let _ = parse_audio(&buf);
            let _ = parse_avc_config(&buf);
            let _ = parse_aac_config(&buf);
            if let Ok(c) = parse_avc_config(&buf) {
                let _ = c.sps().count() + c.pps().count();
            }
            for size in [1, 2, 4] {
                let _ = avcc_nal_units(&buf, size).count();
            }
        }
    }
}
