//! The microphone path with real alsa-lib and libopus, no sound card: alsa-lib's own
//! `file` plugin (over the `null` plugin) plays a known tone into a capture PCM,
//! selected with ALSA_CONFIG_PATH. Captured → Opus → decoded again with libopus: the
//! tone's frequency and level come back. A PCM that fails mid-capture is closed,
//! reported, reopened after the backoff, and the tone flows again.

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};
use huddle::device::microphone::{AlsaMicrophone, AudioSource, Microphone, FRAME};
use huddle::device::{Device, Source, Timing};
use huddle::media::{Family, Kind};
use huddle::sfu::task::{DeviceFeed, DeviceInput};

const TONE_HZ: f64 = 1000.0;
const TONE_AMPLITUDE: f64 = 0.5;

/// Writes the tone (mono S16_LE, 48 kHz) and an asoundrc with `pcm.filecap`, and
/// points alsa-lib at it, once per test process.
fn alsa_setup() -> PathBuf {
    static ONCE: Once = Once::new();
    let dir = std::env::temp_dir().join(format!("huddle-alsa-{}", std::process::id()));
    ONCE.call_once(|| {
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("tone.raw");
        let samples: Vec<u8> = (0..48_000 * 20)
            .flat_map(|i| {
                let t = f64::from(i) / 48_000.0;
                let s = (std::f64::consts::TAU * TONE_HZ * t).sin() * TONE_AMPLITUDE;
                ((s * f64::from(i16::MAX)) as i16).to_le_bytes()
            })
            .collect();
        std::fs::write(&raw, samples).unwrap();
        let conf = dir.join("asoundrc");
        std::fs::write(
            &conf,
            format!(
                "pcm.nullcap {{ type null }}\n\
                 pcm.filecap {{ type file; slave.pcm \"nullcap\"; file \"/dev/null\"; \
                 infile \"{}\"; format \"raw\" }}\n",
                raw.display()
            ),
        )
        .unwrap();
        // Before any alsa-lib call of this process; every test here uses this file.
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
    });
    dir
}

/// Decodes Opus packets to 48 kHz mono samples.
fn decode(packets: &[Vec<u8>]) -> Vec<f64> {
    let mut decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
    let mut pcm = Vec::new();
    let mut frame = vec![0i16; 5760];
    for p in packets {
        let n = decoder.decode(Some(p), &mut frame, false).unwrap();
        pcm.extend(
            frame[..n]
                .iter()
                .map(|&s| f64::from(s) / f64::from(i16::MAX)),
        );
    }
    pcm
}

/// Power of `freq` in `x` (Goertzel), normalized by the length.
fn power_at(x: &[f64], freq: f64) -> f64 {
    let w = std::f64::consts::TAU * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// The decoded tone: its frequency dominates and its level is the source's.
fn assert_is_the_tone(pcm: &[f64]) {
    // Skip the codec's start-up.
    let steady = &pcm[4800.min(pcm.len())..];
    assert!(steady.len() >= 24_000, "{} samples", steady.len());
    let tone = power_at(steady, TONE_HZ);
    for other in [250.0, 500.0, 1500.0, 2000.0, 4000.0] {
        let p = power_at(steady, other);
        assert!(
            tone > 100.0 * p,
            "{TONE_HZ} Hz {tone:e} vs {other} Hz {p:e}"
        );
    }
    let level = rms(steady);
    let expected = TONE_AMPLITUDE / 2f64.sqrt();
    let db = 20.0 * (level / expected).log10();
    assert!(
        db.abs() < 1.5,
        "level {level:.3}, expected {expected:.3} ({db:+.2} dB)"
    );
}

#[test]
fn a_captured_tone_survives_opus_with_its_frequency_and_level() {
    alsa_setup();
    let mut source = AudioSource::new(Box::new(AlsaMicrophone::new("filecap".into())));
    source.open().expect("filecap opens");
    let codec = source.codec().unwrap();
    assert_eq!((codec.family, codec.clock_rate), (Family::Opus, 48_000));
    assert!(codec.fmtp.contains("useinbandfec=1"));
    let mut packets = Vec::new();
    let mut out = Vec::new();
    let mut last_ts = None;
    for _ in 0..200 {
        out.clear();
        if !source.poll(Duration::from_millis(500), &mut out).unwrap() {
            continue;
        }
        for p in &out {
            if let Some(prev) = last_ts {
                assert_eq!(
                    p.header.timestamp.wrapping_sub(prev),
                    FRAME as u32,
                    "20 ms apart"
                );
            }
            last_ts = Some(p.header.timestamp);
            assert!(p.payload.len() < 400, "a voice frame is small");
            packets.push(p.payload.to_vec());
        }
        if packets.len() >= 100 {
            break;
        }
    }
    source.close();
    assert_eq!(packets.len(), 100, "two seconds of Opus");
    assert_is_the_tone(&decode(&packets));
}

#[test]
fn a_missing_pcm_is_an_error_naming_it() {
    alsa_setup();
    let mut mic = AlsaMicrophone::new("no_such_pcm".into());
    let e = mic.open().unwrap_err();
    assert!(
        e.contains("no_such_pcm") || e.to_lowercase().contains("no such"),
        "{e}"
    );
}

/// The real ALSA microphone, failing the way an unplugged USB microphone does
/// (ENODEV on read) after `fail_after` frames of each opening.
struct Unplugged {
    inner: AlsaMicrophone,
    fail_after: usize,
    frames: usize,
}

impl Microphone for Unplugged {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn open(&mut self) -> Result<(), String> {
        self.frames = 0;
        self.inner.open()
    }
    fn read(&mut self, timeout: Duration, frame: &mut [i16; FRAME]) -> Result<bool, String> {
        self.frames += 1;
        if self.frames > self.fail_after {
            return Err("No such device".into());
        }
        self.inner.read(timeout, frame)
    }
    fn close(&mut self) {
        self.inner.close()
    }
}

#[test]
fn a_pcm_failing_mid_capture_is_reopened_and_the_tone_resumes() {
    alsa_setup();
    let (feed, mut rx, _key_frames) = DeviceFeed::channel();
    let mic = Unplugged {
        inner: AlsaMicrophone::new("filecap".into()),
        fail_after: 60,
        frames: 0,
    };
    let source: Box<dyn Source> = Box::new(AudioSource::new(Box::new(mic)));
    let device = Device::start_with(
        vec![source],
        Timing {
            retry: Duration::from_millis(200),
            stall: Duration::from_secs(2),
        },
        feed,
    );
    // Up (Opus), 60 frames, down with the reason, up again after the backoff, frames.
    let mut states: Vec<(bool, String)> = Vec::new();
    let mut rounds: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while states.len() < 3 && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(DeviceInput::State { audio, video, info }) => {
                assert!(video.is_none());
                if audio.is_some() && !states.is_empty() {
                    rounds.push(Vec::new());
                }
                states.push((audio.is_some(), info));
            }
            Ok(DeviceInput::Packet(kind, p)) => {
                assert_eq!(kind, Kind::Audio);
                if let Some(r) = rounds.last_mut() {
                    r.push(p.payload.to_vec());
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // The second round's packets keep coming; take a second and a half of them.
    let until = Instant::now() + Duration::from_secs(10);
    while rounds.last().map_or(0, Vec::len) < 60 && Instant::now() < until {
        match rx.try_recv() {
            Ok(DeviceInput::Packet(_, p)) => rounds.last_mut().unwrap().push(p.payload.to_vec()),
            Ok(DeviceInput::State { .. }) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    device.stop();
    assert_eq!(states.len(), 3, "states: {states:?}");
    assert!(states[0].0, "first up");
    assert!(!states[1].0, "then down");
    assert!(
        states[1]
            .1
            .contains("Microphone filecap failed: No such device"),
        "{}",
        states[1].1
    );
    assert!(states[2].0, "up again");
    assert!(
        rounds[0].len() >= 50,
        "{} frames before the failure",
        rounds[0].len()
    );
    assert!(rounds[1].len() >= 60);
    assert_is_the_tone(&decode(&rounds[1]));
}
