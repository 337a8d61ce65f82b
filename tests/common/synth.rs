//! Real media for the tests that feed RTP themselves (the RTMP egress, the recorder):
//! libx264 access units made by Debian's ffmpeg, Opus packets from libopus, and the
//! codecs the stream core would announce for them.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use huddle::device::h264::{self, nal};
use huddle::media::codec::{Codec, Family};

/// H.264 constrained baseline as a WebRTC publisher's (payload type 102).
pub fn h264_codec() -> Codec {
    Codec {
        family: Family::H264 {
            profile: 0x42,
            constraints: 0xc0,
        },
        payload_type: 102,
        clock_rate: 90_000,
        channels: 0,
        fmtp: "packetization-mode=1".into(),
    }
}

/// Opus stereo (payload type 111).
pub fn opus_codec() -> Codec {
    Codec {
        family: Family::Opus,
        payload_type: 111,
        clock_rate: 48_000,
        channels: 2,
        fmtp: String::new(),
    }
}

/// Access units (Annex-B) of `seconds` of libx264 baseline `size` (e.g. "640x360") at
/// 30 fps, a key frame a second, one slice per picture; the file is made in `dir`.
pub fn h264_access_units(dir: &Path, size: &str, seconds: u32) -> Vec<Bytes> {
    let file = dir.join(format!("source-{size}.h264"));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", &format!("testsrc=size={size}:rate=30")])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .args(["-profile:v", "baseline", "-bf", "0", "-g", "30"])
        .args(["-x264-params", "sliced-threads=0", "-f", "h264"])
        .arg(&file)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let data = std::fs::read(&file).unwrap();
    // One slice per picture: a picture ends an access unit.
    let mut aus = Vec::new();
    let mut au = Vec::new();
    for unit in h264::nal_units(&data) {
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(unit);
        if matches!(h264::nal_type(unit), nal::SLICE | nal::IDR) {
            aus.push(Bytes::from(std::mem::take(&mut au)));
        }
    }
    assert_eq!(aus.len(), seconds as usize * 30);
    aus
}

/// 20 ms Opus packets of a 440 Hz stereo tone.
pub fn opus_packets(count: usize) -> Vec<Bytes> {
    let encoder = audiopus::coder::Encoder::new(
        audiopus::SampleRate::Hz48000,
        audiopus::Channels::Stereo,
        audiopus::Application::Audio,
    )
    .unwrap();
    let mut out = vec![0u8; 1500];
    (0..count)
        .map(|i| {
            let pcm: Vec<i16> = (0..960 * 2)
                .map(|k| {
                    let n = (i * 960 + k / 2) as f64;
                    (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n / 48_000.0).sin()) as i16
                })
                .collect();
            let len = encoder.encode(&pcm, &mut out).unwrap();
            Bytes::copy_from_slice(&out[..len])
        })
        .collect()
}
