//! What an RTP payload says about key frames, without decoding: whether a packet
//! starts a key frame, and the picture size its header carries (H.264: the SPS,
//! packetization-mode 1 with single NAL units, STAP-A and FU-A; VP8: the key frame's
//! header after its payload descriptor). Pure, allocation-free.

use super::codec::Family;

/// A packet that starts a key frame, and the picture size when the packet carries it
/// (H.264: an SPS in it; VP8: always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFrameStart {
    pub size: Option<(u32, u32)>,
}

/// Whether this payload starts a key frame of `family` (`None`: it does not, or the
/// family is not video). A few byte comparisons unless it does.
pub fn key_frame_start(family: Family, payload: &[u8]) -> Option<KeyFrameStart> {
    match family {
        Family::H264 { .. } => h264(payload),
        Family::Vp8 => vp8(payload),
        Family::Opus | Family::Pcmu | Family::Pcma => None,
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

fn h264(payload: &[u8]) -> Option<KeyFrameStart> {
    let first = *payload.first()?;
    match first & 0x1f {
        NAL_SPS => Some(KeyFrameStart {
            size: sps_size(payload),
        }),
        NAL_IDR => Some(KeyFrameStart { size: None }),
        STAP_A => {
            let mut rest = payload.get(1..)?;
            let mut found = None;
            while rest.len() > 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let unit = rest.get(2..2 + len)?;
                match unit.first().map(|b| b & 0x1f) {
                    Some(NAL_SPS) => {
                        return Some(KeyFrameStart {
                            size: sps_size(unit),
                        })
                    }
                    Some(NAL_IDR) => found = Some(KeyFrameStart { size: None }),
                    _ => {}
                }
                rest = &rest[2 + len..];
            }
            found
        }
        FU_A => {
            let header = *payload.get(1)?;
            let start = header & 0x80 != 0;
            let kind = header & 0x1f;
            (start && (kind == NAL_IDR || kind == NAL_SPS)).then_some(KeyFrameStart { size: None })
        }
        _ => None,
    }
}

fn vp8(payload: &[u8]) -> Option<KeyFrameStart> {
    let b0 = *payload.first()?;
    // S: start of a partition; PID 0: the first partition, where the frame starts.
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return None;
    }
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    let frame = payload.get(at..)?;
    // P bit 0: a key frame; then the 3-byte tag's rest and the start code 9d 01 2a.
    if frame.first()? & 0x01 != 0 {
        return None;
    }
    let size = vp8_key_frame_size(frame).map(|(w, h)| (u32::from(w), u32::from(h)));
    Some(KeyFrameStart { size })
}

/// What an SPS says (the recorder's avcC needs more than the picture size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub width: u32,
    pub height: u32,
    /// A profile whose SPS (and avcC) carries the chroma format and bit depths.
    pub high_profile: bool,
    pub chroma_format: u8,
    pub bit_depth_luma_minus8: u8,
    pub bit_depth_chroma_minus8: u8,
}

/// Reads the bits of an RBSP (emulation prevention bytes removed on the fly).
struct Bits<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
    current: u8,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Bits<'a> {
        Bits {
            data,
            byte: 0,
            bit: 8,
            zeros: 0,
            current: 0,
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.bit == 8 {
            let mut b = *self.data.get(self.byte)?;
            self.byte += 1;
            if self.zeros >= 2 && b == 3 {
                b = *self.data.get(self.byte)?;
                self.byte += 1;
                self.zeros = 0;
            }
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
            self.current = b;
            self.bit = 0;
        }
        let v = (self.current >> (7 - self.bit)) & 1;
        self.bit += 1;
        Some(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    fn se(&mut self) -> Option<i32> {
        let v = self.ue()?;
        let magnitude = v.div_ceil(2) as i32;
        Some(if v % 2 == 1 { magnitude } else { -magnitude })
    }
}

impl SpsInfo {
    /// Parses an SPS NAL unit (header byte included) up to the frame cropping.
    pub fn parse(sps: &[u8]) -> Option<SpsInfo> {
        if sps.first()? & 0x1f != NAL_SPS {
            return None;
        }
        let mut r = Bits::new(sps.get(1..)?);
        let profile = r.bits(8)?;
        r.bits(16)?; // constraints, level
        r.ue()?; // seq_parameter_set_id
        let high_profile = matches!(
            profile,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        );
        let mut chroma_format = 1;
        let mut separate_planes = false;
        let (mut depth_luma, mut depth_chroma) = (0, 0);
        if high_profile {
            chroma_format = r.ue()?;
            if chroma_format > 3 {
                return None;
            }
            if chroma_format == 3 {
                separate_planes = r.bit()? == 1;
            }
            depth_luma = r.ue()?.min(6);
            depth_chroma = r.ue()?.min(6);
            r.bit()?; // qpprime_y_zero_transform_bypass
            if r.bit()? == 1 {
                let lists = if chroma_format == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bit()? == 1 {
                        let size = if i < 6 { 16 } else { 64 };
                        let (mut last, mut next) = (8i32, 8i32);
                        for _ in 0..size {
                            if next != 0 {
                                let delta = r.se()?;
                                next = (last + delta + 256).rem_euclid(256);
                            }
                            if next != 0 {
                                last = next;
                            }
                        }
                    }
                }
            }
        }
        r.ue()?; // log2_max_frame_num_minus4
        match r.ue()? {
            0 => {
                r.ue()?;
            }
            1 => {
                r.bit()?;
                r.se()?;
                r.se()?;
                let cycle = r.ue()?;
                if cycle > 255 {
                    return None;
                }
                for _ in 0..cycle {
                    r.se()?;
                }
            }
            _ => {}
        }
        r.ue()?; // max_num_ref_frames
        r.bit()?; // gaps_in_frame_num_value_allowed
        let width_mbs = u64::from(r.ue()?) + 1;
        let height_units = u64::from(r.ue()?) + 1;
        let frame_mbs_only = u64::from(r.bit()?);
        if frame_mbs_only == 0 {
            r.bit()?;
        }
        r.bit()?; // direct_8x8_inference
        let mut crop = [0u64; 4];
        if r.bit()? == 1 {
            for c in &mut crop {
                *c = u64::from(r.ue()?);
            }
        }
        let array_type = if separate_planes { 0 } else { chroma_format };
        let (sub_w, sub_h) = match array_type {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let (crop_x, crop_y) = if array_type == 0 {
            (1, 2 - frame_mbs_only)
        } else {
            (sub_w, sub_h * (2 - frame_mbs_only))
        };
        let width = (width_mbs * 16).checked_sub(crop_x * (crop[0] + crop[1]))?;
        let height =
            ((2 - frame_mbs_only) * height_units * 16).checked_sub(crop_y * (crop[2] + crop[3]))?;
        if width == 0 || height == 0 || width > 16_384 || height > 16_384 {
            return None;
        }
        Some(SpsInfo {
            width: width as u32,
            height: height as u32,
            high_profile,
            chroma_format: chroma_format as u8,
            bit_depth_luma_minus8: depth_luma as u8,
            bit_depth_chroma_minus8: depth_chroma as u8,
        })
    }
}

/// The picture size in a VP8 key frame's header (RFC 6386 9.1), `None` for an
/// interframe or a short/broken header.
pub fn vp8_key_frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    match frame {
        [tag, _, _, 0x9d, 0x01, 0x2a, w0, w1, h0, h1, ..] if tag & 1 == 0 => {
            let width = u16::from_le_bytes([*w0, *w1]) & 0x3fff;
            let height = u16::from_le_bytes([*h0, *h1]) & 0x3fff;
            (width > 0 && height > 0).then_some((width, height))
        }
        _ => None,
    }
}

/// The picture size an SPS NAL unit (with its header byte) describes, cropping applied.
pub fn sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    SpsInfo::parse(nal).map(|i| (i.width, i.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H264: Family = Family::H264 {
        profile: 0x42,
        constraints: 0xe0,
    };

    /// Constrained baseline 640x480 (x264 / Chrome style, no cropping).
    const SPS_640X480: [u8; 10] = [0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xa1, 0x00];
    /// High profile 1280x720.
    const SPS_1280X720: [u8; 11] = [
        0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01,
    ];

    #[test]
    fn the_sps_gives_the_picture_size() {
        assert_eq!(sps_size(&SPS_640X480), Some((640, 480)));
        assert_eq!(sps_size(&SPS_1280X720), Some((1280, 720)));
        assert_eq!(sps_size(&[0x67, 0x42]), None);
    }

    #[test]
    fn h264_key_frame_starts_in_every_packetization() {
        // A single SPS.
        assert_eq!(
            key_frame_start(H264, &SPS_640X480),
            Some(KeyFrameStart {
                size: Some((640, 480))
            })
        );
        // STAP-A with SPS and PPS.
        let mut stap = vec![0x78, 0x00, SPS_640X480.len() as u8];
        stap.extend_from_slice(&SPS_640X480);
        stap.extend_from_slice(&[0x00, 0x04, 0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(
            key_frame_start(H264, &stap),
            Some(KeyFrameStart {
                size: Some((640, 480))
            })
        );
        // FU-A: the start of an IDR, not its continuation, not a P slice.
        assert!(key_frame_start(H264, &[0x7c, 0x85, 0x88]).is_some());
        assert!(key_frame_start(H264, &[0x7c, 0x05, 0x88]).is_none());
        assert!(key_frame_start(H264, &[0x7c, 0x81, 0x9a]).is_none());
        assert!(key_frame_start(H264, &[0x41, 0x9a]).is_none());
        assert!(key_frame_start(H264, &[0x65, 0x88]).is_some());
        assert!(key_frame_start(H264, &[]).is_none());
        // A truncated STAP-A is no key frame and no panic.
        assert!(key_frame_start(H264, &[0x78, 0x00, 0x40, 0x67]).is_none());
    }

    #[test]
    fn vp8_key_frames_carry_their_size() {
        // Descriptor with X, I (15-bit picture id); key frame 1280x720.
        let key = [
            0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02,
        ];
        assert_eq!(
            key_frame_start(Family::Vp8, &key),
            Some(KeyFrameStart {
                size: Some((1280, 720))
            })
        );
        // Minimal descriptor, key frame 640x480.
        let key = [
            0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
        ];
        assert_eq!(
            key_frame_start(Family::Vp8, &key).and_then(|k| k.size),
            Some((640, 480))
        );
        // An interframe; a continuation packet.
        assert!(key_frame_start(Family::Vp8, &[0x10, 0x11, 0x02, 0x00]).is_none());
        assert!(key_frame_start(Family::Vp8, &[0x00, 0x10, 0x02, 0x00]).is_none());
        assert!(key_frame_start(Family::Opus, &[0x10]).is_none());
    }
}
