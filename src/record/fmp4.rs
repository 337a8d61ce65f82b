//! A pure fragmented-MP4 (ISO BMFF, ISO/IEC 14496-12) writer for the codecs Huddle
//! records without decoding: H.264 (`avc1` + `avcC` from the SPS/PPS), VP8 (`vp08` +
//! `vpcC`) and Opus (`Opus` + `dOps`, 48 kHz).
//!
//! The file is an init segment (`ftyp` + `moov` with one `trak` per track and
//! `mvex`/`trex`, no samples) followed by fragments (`moof` + `mdat`). Each `traf` has a
//! `tfhd` with default-base-is-moof, a `tfdt` (the track time of its first sample: a gap
//! in the stream is a jump of `tfdt`, never a shifted timeline) and a `trun` with every
//! sample's size, duration, flags (sync or not) and a composition offset of 0 (no
//! B-frames on this path). A sample's duration is the distance to the next sample of its
//! fragment; the last one of a fragment repeats the previous duration. Video samples are
//! AVCC (4-byte lengths); access unit delimiters are dropped, SPS/PPS stay in band (a
//! decoder joining at any key frame, or after an in-band change, has them).
//!
//! VP8 goes into MP4 (`vp08`, the VP Codec ISO Media File Format binding), not WebM:
//! one writer, one crash-safety story (a cut file is readable up to its last complete
//! fragment, which is what `sync_data` after each fragment guarantees) and one file
//! type for the listing and the mixer; ffprobe/ffmpeg and Chrome play `vp08` in MP4,
//! while a cut WebM has neither duration nor cues and needs a remux to seek.
//!
//! No I/O: [`Fmp4Writer::init_segment`] and [`Fmp4Writer::fragment`] append bytes to a
//! caller's `Vec<u8>`; samples are copied into per-track buffers whose capacity is kept
//! across fragments, so steady state allocates nothing per sample.

use crate::device::h264::{nal, nal_type, nal_units};

/// What one track carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackConfig {
    /// H.264 with the SPS and PPS of its first key frame (NAL units without start
    /// codes) and the picture size from the SPS.
    H264 {
        sps: Vec<u8>,
        pps: Vec<u8>,
        width: u16,
        height: u16,
    },
    Vp8 {
        width: u16,
        height: u16,
    },
    /// Opus at 48 kHz.
    Opus {
        channels: u8,
    },
}

impl TrackConfig {
    pub fn is_video(&self) -> bool {
        !matches!(self, TrackConfig::Opus { .. })
    }

    /// Ticks per second of the track's media time.
    pub fn timescale(&self) -> u32 {
        if self.is_video() {
            90_000
        } else {
            48_000
        }
    }

    /// The picture size of a video track.
    pub fn dimensions(&self) -> Option<(u16, u16)> {
        match self {
            TrackConfig::H264 { width, height, .. } | TrackConfig::Vp8 { width, height } => {
                Some((*width, *height))
            }
            TrackConfig::Opus { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SampleInfo {
    time: u64,
    size: u32,
    sync: bool,
}

#[derive(Debug)]
struct Track {
    config: TrackConfig,
    /// Sample data of the fragment being built.
    data: Vec<u8>,
    samples: Vec<SampleInfo>,
    /// Duration of the last sample written, for the last one of the next fragment.
    last_duration: u32,
    /// Time of the last sample taken (pending or written).
    last_time: Option<u64>,
}

/// Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on nothing.
const SYNC: u32 = 0x0200_0000;
/// A non-sync sample: depends on others, `sample_is_non_sync_sample`.
const NON_SYNC: u32 = 0x0101_0000;

/// The muxer state of one file: its tracks and the fragments' sequence number.
#[derive(Debug)]
pub struct Fmp4Writer {
    tracks: Vec<Track>,
    sequence: u32,
}

impl Fmp4Writer {
    /// One track per config, track IDs 1, 2, … in this order; at most 4 tracks (more
    /// are left out: a recording has one video and one audio track).
    pub fn new(configs: Vec<TrackConfig>) -> Fmp4Writer {
        let tracks = configs
            .into_iter()
            .take(4)
            .map(|config| Track {
                last_duration: if config.is_video() { 3000 } else { 960 },
                config,
                data: Vec::new(),
                samples: Vec::new(),
                last_time: None,
            })
            .collect();
        Fmp4Writer {
            tracks,
            sequence: 0,
        }
    }

    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    pub fn config(&self, track: usize) -> Option<&TrackConfig> {
        self.tracks.get(track).map(|t| &t.config)
    }

    /// The time (in the track's timescale) of the last sample taken.
    pub fn last_time(&self, track: usize) -> Option<u64> {
        self.tracks.get(track).and_then(|t| t.last_time)
    }

    /// The time one past the end of the last sample taken (its duration estimated).
    pub fn end_time(&self, track: usize) -> Option<u64> {
        let t = self.tracks.get(track)?;
        let last = t.last_time?;
        let duration = match t.samples.as_slice() {
            [.., a, b] => b.time.saturating_sub(a.time),
            _ => u64::from(t.last_duration),
        };
        Some(last + duration)
    }

    /// Samples waiting for the next fragment.
    pub fn pending(&self) -> usize {
        self.tracks.iter().map(|t| t.samples.len()).sum()
    }

    /// Bytes of sample data waiting for the next fragment.
    pub fn pending_bytes(&self) -> usize {
        self.tracks.iter().map(|t| t.data.len()).sum()
    }

    /// The earliest pending sample time in ms (across tracks).
    pub fn pending_since_ms(&self) -> Option<u64> {
        self.tracks
            .iter()
            .filter_map(|t| {
                t.samples
                    .first()
                    .map(|s| s.time * 1000 / u64::from(t.config.timescale()))
            })
            .min()
    }

    /// A sample of raw bytes (Opus, VP8) at `time` in the track's timescale. A time
    /// not after the previous sample's is moved just after it.
    pub fn push(&mut self, track: usize, time: u64, sync: bool, data: &[u8]) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let start = t.data.len();
        t.data.extend_from_slice(data);
        t.add(time, sync, start);
    }

    /// An H.264 access unit in Annex-B, stored as AVCC (4-byte lengths, no AUD).
    pub fn push_annex_b(&mut self, track: usize, time: u64, sync: bool, access_unit: &[u8]) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let start = t.data.len();
        for unit in nal_units(access_unit) {
            if nal_type(unit) == nal::AUD {
                continue;
            }
            let Ok(len) = u32::try_from(unit.len()) else {
                continue;
            };
            t.data.extend_from_slice(&len.to_be_bytes());
            t.data.extend_from_slice(unit);
        }
        if t.data.len() > start {
            t.add(time, sync, start);
        }
    }

    /// The `ftyp` and `moov` boxes.
    pub fn init_segment(&self, out: &mut Vec<u8>) {
        let ftyp = begin(out, b"ftyp");
        out.extend_from_slice(b"iso6");
        u32be(out, 0);
        for brand in [b"iso6", b"iso5", b"mp41", b"dash"] {
            out.extend_from_slice(brand);
        }
        end(out, ftyp);

        let moov = begin(out, b"moov");
        let mvhd = full(out, b"mvhd", 0, 0);
        u32be(out, 0); // creation
        u32be(out, 0); // modification
        u32be(out, 1000); // timescale
        u32be(out, 0); // duration: fragmented
        u32be(out, 0x0001_0000); // rate
        u16be(out, 0x0100); // volume
        out.extend_from_slice(&[0; 10]);
        matrix(out);
        out.extend_from_slice(&[0; 24]);
        u32be(out, self.tracks.len() as u32 + 1); // next track ID
        end(out, mvhd);
        for (i, track) in self.tracks.iter().enumerate() {
            trak(out, i as u32 + 1, &track.config);
        }
        let mvex = begin(out, b"mvex");
        for i in 0..self.tracks.len() {
            let trex = full(out, b"trex", 0, 0);
            u32be(out, i as u32 + 1);
            u32be(out, 1); // sample description index
            u32be(out, 0);
            u32be(out, 0);
            u32be(out, 0);
            end(out, trex);
        }
        end(out, mvex);
        end(out, moov);
    }

    /// Writes the pending samples as one fragment (`moof` + `mdat`) into `out`; false
    /// (nothing written) when no sample is pending.
    pub fn fragment(&mut self, out: &mut Vec<u8>) -> bool {
        if self.pending() == 0 {
            return false;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let moof_start = out.len();
        let moof = begin(out, b"moof");
        let mfhd = full(out, b"mfhd", 0, 0);
        u32be(out, self.sequence);
        end(out, mfhd);
        // (offset of the data_offset field, offset of the track's data in mdat)
        let mut patches: [(usize, usize); 4] = [(0, 0); 4];
        let mut patch_count = 0;
        let mut data_at = 0usize;
        for (i, track) in self.tracks.iter_mut().enumerate() {
            if track.samples.is_empty() {
                continue;
            }
            let traf = begin(out, b"traf");
            let tfhd = full(out, b"tfhd", 0, 0x02_0000); // default-base-is-moof
            u32be(out, i as u32 + 1);
            end(out, tfhd);
            let tfdt = full(out, b"tfdt", 1, 0);
            u64be(out, track.samples[0].time);
            end(out, tfdt);
            // data offset, duration, size, flags, composition offset
            let trun = full(out, b"trun", 0, 0x0f01);
            u32be(out, track.samples.len() as u32);
            if patch_count < patches.len() {
                patches[patch_count] = (out.len(), data_at);
                patch_count += 1;
            }
            u32be(out, 0); // data offset, patched below
            let n = track.samples.len();
            for k in 0..n {
                let s = track.samples[k];
                let duration = match track.samples.get(k + 1) {
                    Some(next) => {
                        let d = next
                            .time
                            .saturating_sub(s.time)
                            .clamp(1, u64::from(u32::MAX));
                        track.last_duration = d as u32;
                        d as u32
                    }
                    None => track.last_duration,
                };
                u32be(out, duration);
                u32be(out, s.size);
                u32be(out, if s.sync { SYNC } else { NON_SYNC });
                u32be(out, 0);
            }
            end(out, trun);
            end(out, traf);
            data_at += track.data.len();
        }
        end(out, moof);
        let moof_size = out.len() - moof_start;
        for &(at, data) in &patches[..patch_count] {
            let offset = (moof_size + 8 + data) as u32;
            out[at..at + 4].copy_from_slice(&offset.to_be_bytes());
        }
        let mdat_size = 8 + data_at;
        u32be(out, u32::try_from(mdat_size).unwrap_or(u32::MAX));
        out.extend_from_slice(b"mdat");
        for track in &mut self.tracks {
            out.extend_from_slice(&track.data);
            track.data.clear();
            track.samples.clear();
        }
        true
    }
}

impl Track {
    /// A sample at or before the last one is moved one millisecond after it: players
    /// and ffmpeg work in milliseconds, and two samples closer than that (frames of a
    /// busy capturer, stamped in one millisecond) would get the same decode time there.
    fn add(&mut self, time: u64, sync: bool, start: usize) {
        let step = u64::from(self.config.timescale() / 1000).max(1);
        let time = match self.last_time {
            Some(last) if time < last.saturating_add(step) => last.saturating_add(step),
            _ => time,
        };
        self.last_time = Some(time);
        let size = u32::try_from(self.data.len() - start).unwrap_or(u32::MAX);
        self.samples.push(SampleInfo { time, size, sync });
    }
}

fn u16be(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u32be(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u64be(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Starts a box; [`end`] writes its size.
fn begin(out: &mut Vec<u8>, kind: &[u8; 4]) -> usize {
    let at = out.len();
    u32be(out, 0);
    out.extend_from_slice(kind);
    at
}

fn full(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32) -> usize {
    let at = begin(out, kind);
    u32be(out, (u32::from(version) << 24) | (flags & 0x00ff_ffff));
    at
}

fn end(out: &mut [u8], at: usize) {
    let size = u32::try_from(out.len() - at).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn matrix(out: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        u32be(out, v);
    }
}

fn trak(out: &mut Vec<u8>, id: u32, config: &TrackConfig) {
    let video = config.is_video();
    let (width, height) = config.dimensions().unwrap_or((0, 0));
    let trak = begin(out, b"trak");
    let tkhd = full(out, b"tkhd", 0, 3); // enabled, in movie
    u32be(out, 0);
    u32be(out, 0);
    u32be(out, id);
    u32be(out, 0);
    u32be(out, 0); // duration
    out.extend_from_slice(&[0; 8]);
    u16be(out, 0); // layer
    u16be(out, 0); // alternate group
    u16be(out, if video { 0 } else { 0x0100 });
    u16be(out, 0);
    matrix(out);
    u32be(out, u32::from(width) << 16);
    u32be(out, u32::from(height) << 16);
    end(out, tkhd);

    let mdia = begin(out, b"mdia");
    let mdhd = full(out, b"mdhd", 0, 0);
    u32be(out, 0);
    u32be(out, 0);
    u32be(out, config.timescale());
    u32be(out, 0);
    u16be(out, 0x55c4); // "und"
    u16be(out, 0);
    end(out, mdhd);
    let hdlr = full(out, b"hdlr", 0, 0);
    u32be(out, 0);
    out.extend_from_slice(if video { b"vide" } else { b"soun" });
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(if video {
        b"VideoHandler\0".as_slice()
    } else {
        b"SoundHandler\0".as_slice()
    });
    end(out, hdlr);

    let minf = begin(out, b"minf");
    if video {
        let vmhd = full(out, b"vmhd", 0, 1);
        out.extend_from_slice(&[0; 8]);
        end(out, vmhd);
    } else {
        let smhd = full(out, b"smhd", 0, 0);
        u32be(out, 0);
        end(out, smhd);
    }
    let dinf = begin(out, b"dinf");
    let dref = full(out, b"dref", 0, 0);
    u32be(out, 1);
    let url = full(out, b"url ", 0, 1); // media in this file
    end(out, url);
    end(out, dref);
    end(out, dinf);

    let stbl = begin(out, b"stbl");
    let stsd = full(out, b"stsd", 0, 0);
    u32be(out, 1);
    sample_entry(out, config);
    end(out, stsd);
    for kind in [b"stts", b"stsc", b"stco"] {
        let b = full(out, kind, 0, 0);
        u32be(out, 0);
        end(out, b);
    }
    let stsz = full(out, b"stsz", 0, 0);
    u32be(out, 0);
    u32be(out, 0);
    end(out, stsz);
    end(out, stbl);
    end(out, minf);
    end(out, mdia);
    end(out, trak);
}

fn visual_entry(out: &mut Vec<u8>, kind: &[u8; 4], width: u16, height: u16) -> usize {
    let at = begin(out, kind);
    out.extend_from_slice(&[0; 6]);
    u16be(out, 1); // data reference index
    out.extend_from_slice(&[0; 16]);
    u16be(out, width);
    u16be(out, height);
    u32be(out, 0x0048_0000);
    u32be(out, 0x0048_0000);
    u32be(out, 0);
    u16be(out, 1); // frame count
    out.extend_from_slice(&[0; 32]); // compressor name
    u16be(out, 0x0018);
    u16be(out, 0xffff);
    at
}

fn sample_entry(out: &mut Vec<u8>, config: &TrackConfig) {
    match config {
        TrackConfig::H264 {
            sps,
            pps,
            width,
            height,
        } => {
            let entry = visual_entry(out, b"avc1", *width, *height);
            let avcc = begin(out, b"avcC");
            out.push(1);
            out.extend_from_slice(sps.get(1..4).unwrap_or(&[66, 0xc0, 31]));
            out.push(0xff); // 4-byte lengths
            out.push(0xe1); // one SPS
            u16be(out, sps.len() as u16);
            out.extend_from_slice(sps);
            out.push(1);
            u16be(out, pps.len() as u16);
            out.extend_from_slice(pps);
            if let Some(info) = SpsInfo::parse(sps).filter(|i| i.high_profile) {
                out.push(0xfc | info.chroma_format);
                out.push(0xf8 | info.bit_depth_luma_minus8);
                out.push(0xf8 | info.bit_depth_chroma_minus8);
                out.push(0);
            }
            end(out, avcc);
            end(out, entry);
        }
        TrackConfig::Vp8 { width, height } => {
            let entry = visual_entry(out, b"vp08", *width, *height);
            let vpcc = full(out, b"vpcC", 1, 0);
            out.push(0); // profile
            out.push(10); // level (unused by VP8)
            out.push((8 << 4) | (1 << 1)); // 8 bits, 4:2:0 colocated, limited range
            out.extend_from_slice(&[1, 1, 1]); // BT.709
            u16be(out, 0);
            end(out, vpcc);
            end(out, entry);
        }
        TrackConfig::Opus { channels } => {
            let entry = begin(out, b"Opus");
            out.extend_from_slice(&[0; 6]);
            u16be(out, 1);
            out.extend_from_slice(&[0; 8]);
            u16be(out, u16::from(*channels));
            u16be(out, 16);
            u32be(out, 0);
            u32be(out, 48_000 << 16);
            let dops = begin(out, b"dOps");
            out.push(0); // version
            out.push(*channels);
            // A recording joins a live stream: no encoder delay to skip.
            u16be(out, 0);
            u32be(out, 48_000);
            u16be(out, 0); // output gain
            out.push(0); // mapping family 0: mono or stereo
            end(out, dops);
            end(out, entry);
        }
    }
}

pub use crate::media::picture::{vp8_key_frame_size, SpsInfo};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A box: its type and its payload (after the size and type).
    pub(crate) fn boxes(data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        let mut rest = data;
        while rest.len() >= 8 {
            let size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert!(size >= 8 && size <= rest.len(), "box size {size}");
            let kind: [u8; 4] = rest[4..8].try_into().unwrap();
            out.push((kind, &rest[8..size]));
            rest = &rest[size..];
        }
        assert!(rest.is_empty(), "trailing bytes");
        out
    }

    fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        boxes(data)
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(kind)))
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    // libx264 640x360 baseline SPS (crops 8 lines) and a PPS.
    pub(crate) const SPS_360: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    pub(crate) const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];

    #[test]
    fn reads_picture_sizes_from_sps_with_cropping() {
        let info = SpsInfo::parse(SPS_360).unwrap();
        assert_eq!((info.width, info.height), (640, 360));
        assert!(!info.high_profile);
        let high = [
            0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2d, 0x96,
        ];
        let info = SpsInfo::parse(&high).unwrap();
        assert_eq!(
            (info.width, info.height, info.high_profile),
            (640, 360, true)
        );
        assert_eq!(info.chroma_format, 1);
        // High 4:4:4 at an odd size (cropping in luma samples).
        let yuv444 = [
            0x67, 0xf4, 0x00, 0x1e, 0x91, 0x9b, 0x28, 0x14, 0x85, 0xfc, 0x7c, 0xf8, 0x08, 0x80,
            0x00, 0x00, 0x03, 0x00, 0x80, 0x00, 0x00, 0x1e, 0x07, 0x8b, 0x16, 0xcb,
        ];
        let info = SpsInfo::parse(&yuv444).unwrap();
        assert_eq!((info.width, info.height, info.chroma_format), (642, 362, 3));
        // The 320x240 constant of the h264 tests: 20x15 macroblocks, no cropping.
        let small = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8];
        let info = SpsInfo::parse(&small).map(|i| (i.width, i.height));
        assert!(info.is_some());
        assert_eq!(SpsInfo::parse(&[0x67, 0x42]), None);
        assert_eq!(SpsInfo::parse(PPS), None);
        // Fuzz: never panics.
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 24) as usize;
            let mut sps = vec![0x67];
            sps.extend((0..len).map(|k| (seed >> (k % 24)) as u8));
            let _ = SpsInfo::parse(&sps);
        }
    }

    #[test]
    fn reads_vp8_key_frame_sizes() {
        let key = [
            0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0,
        ];
        assert_eq!(vp8_key_frame_size(&key), Some((640, 360)));
        let mut inter = key;
        inter[0] |= 1;
        assert_eq!(vp8_key_frame_size(&inter), None);
        assert_eq!(vp8_key_frame_size(&key[..8]), None);
    }

    #[test]
    fn samples_stamped_in_one_millisecond_are_a_millisecond_apart() {
        let mut w = Fmp4Writer::new(vec![
            TrackConfig::H264 {
                sps: SPS_360.to_vec(),
                pps: PPS.to_vec(),
                width: 640,
                height: 360,
            },
            TrackConfig::Opus { channels: 2 },
        ]);
        let frame = [0, 0, 0, 1, 0x65, 1, 2, 3];
        // Three frames of a burst (the same ms, then earlier), then one well after.
        for time in [7740, 7740, 7700, 9000] {
            w.push_annex_b(0, time, true, &frame);
        }
        assert_eq!(w.last_time(0), Some(9000));
        w.push_annex_b(0, 9000, true, &frame);
        assert_eq!(w.last_time(0), Some(9090), "90 kHz: one ms is 90 ticks");
        w.push(1, 480, true, &[0xfc]);
        w.push(1, 480, true, &[0xfc]);
        assert_eq!(w.last_time(1), Some(528), "48 kHz: one ms is 48 ticks");
    }

    #[test]
    fn writes_an_init_segment_and_fragments_that_parse_back() {
        let mut w = Fmp4Writer::new(vec![
            TrackConfig::H264 {
                sps: SPS_360.to_vec(),
                pps: PPS.to_vec(),
                width: 640,
                height: 360,
            },
            TrackConfig::Opus { channels: 2 },
        ]);
        let mut out = Vec::new();
        w.init_segment(&mut out);
        let top = boxes(&out);
        assert_eq!(
            top.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [*b"ftyp", *b"moov"]
        );
        let moov = child(&out, b"moov");
        let traks: Vec<_> = boxes(moov)
            .into_iter()
            .filter(|(k, _)| k == b"trak")
            .collect();
        assert_eq!(traks.len(), 2);
        let stsd = child(
            child(child(child(traks[0].1, b"mdia"), b"minf"), b"stbl"),
            b"stsd",
        );
        let avc1 = child(&stsd[8..], b"avc1");
        assert_eq!(&avc1[24..28], &[0x02, 0x80, 0x01, 0x68], "640x360");
        let avcc = child(&avc1[78..], b"avcC");
        assert_eq!(&avcc[..6], &[1, 0x42, 0xc0, 0x1e, 0xff, 0xe1]);
        let stsd = child(
            child(child(child(traks[1].1, b"mdia"), b"minf"), b"stbl"),
            b"stsd",
        );
        let opus = child(&stsd[8..], b"Opus");
        let dops = child(&opus[28..], b"dOps");
        assert_eq!(dops, &[0, 2, 0, 0, 0, 0, 0xbb, 0x80, 0, 0, 0]);
        assert_eq!(boxes(child(moov, b"mvex")).len(), 2);

        // Two fragments: video at 30 fps with a key frame, audio every 20 ms.
        let au = |n: u8| {
            [
                0,
                0,
                0,
                1,
                0x09,
                0xf0,
                0,
                0,
                0,
                1,
                0x65,
                n + 1,
                n + 1,
                n + 1,
            ]
        };
        for i in 0..3u64 {
            w.push_annex_b(0, i * 3000, i == 0, &au(i as u8));
        }
        for i in 0..5u64 {
            w.push(1, 480 + i * 960, true, &[0xfc, i as u8]);
        }
        assert_eq!(w.pending(), 8);
        let start = out.len();
        assert!(w.fragment(&mut out));
        assert!(!w.fragment(&mut out), "nothing pending");
        w.push_annex_b(0, 9000, false, &au(3));
        w.push(1, 48_000 + 480, true, &[0xfc, 9]); // after a 1 s gap
        let second = out.len();
        assert!(w.fragment(&mut out));

        let frag = &out[start..second];
        let parts = boxes(frag);
        assert_eq!(parts[0].0, *b"moof");
        assert_eq!(parts[1].0, *b"mdat");
        let moof_len = parts[0].1.len() + 8;
        let trafs: Vec<_> = boxes(parts[0].1)
            .into_iter()
            .filter(|(k, _)| k == b"traf")
            .collect();
        assert_eq!(trafs.len(), 2);
        let trun = child(trafs[0].1, b"trun");
        assert_eq!(be32(trun, 0), 0x0f01);
        assert_eq!(be32(trun, 4), 3);
        let offset = be32(trun, 8) as usize;
        assert_eq!(offset, moof_len + 8);
        // Samples: duration, size, flags, cto.
        let s: Vec<[u32; 4]> = (0..3)
            .map(|k| std::array::from_fn(|j| be32(trun, 12 + k * 16 + j * 4)))
            .collect();
        assert_eq!(s[0], [3000, 8, SYNC, 0], "AUD dropped, 4-byte length");
        assert_eq!(
            s[2],
            [3000, 8, NON_SYNC, 0],
            "the last repeats the previous"
        );
        assert_eq!(&frag[offset..offset + 8], &[0, 0, 0, 4, 0x65, 1, 1, 1]);
        let audio_trun = child(trafs[1].1, b"trun");
        let audio_offset = be32(audio_trun, 8) as usize;
        assert_eq!(audio_offset, offset + 24);
        assert_eq!(&frag[audio_offset..audio_offset + 2], &[0xfc, 0]);
        let tfdt = child(trafs[1].1, b"tfdt");
        assert_eq!(tfdt, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xe0]);
        let tfhd = child(trafs[1].1, b"tfhd");
        assert_eq!(tfhd, &[0, 2, 0, 0, 0, 0, 0, 2]);
        // The gap is a jump of tfdt.
        let parts = boxes(&out[second..]);
        let trafs: Vec<_> = boxes(parts[0].1)
            .into_iter()
            .filter(|(k, _)| k == b"traf")
            .collect();
        let tfdt = child(trafs[1].1, b"tfdt");
        assert_eq!(u64::from_be_bytes(tfdt[4..12].try_into().unwrap()), 48_480);
        let mfhd = child(parts[0].1, b"mfhd");
        assert_eq!(be32(mfhd, 4), 2);
    }
}
