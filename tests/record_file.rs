//! `record::recorder::start` end to end: libx264 H.264 (640x360, baseline, a key frame a
//! second) split into access units and packetized by the device packetizer, Opus from
//! libopus (20 ms), both paced in real time with unrelated RTP origins, into fragmented
//! MP4 that the real ffprobe/ffmpeg must read and decode without a word.

#[path = "common/synth.rs"]
mod synth;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use huddle::device::h264::{self, Packetizer, RtpPacket};
use huddle::media::codec::{Chosen, Codec, Family, Kind};
use huddle::record::catalog::{self, RecordKind, RecordMeta};
use huddle::record::recorder::{self, RecordSummary};
use tokio::sync::mpsc;

use synth::{h264_access_units, h264_codec, opus_codec, opus_packets};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn meta(dir: &Path, stream: &str) -> RecordMeta {
    let now = SystemTime::now();
    RecordMeta {
        name: catalog::unique_name(dir, stream, now, ".mp4"),
        kind: RecordKind::Stream,
        room: "room".into(),
        stream: Some(stream.into()),
        login: Some("alice".into()),
        started: catalog::rfc3339(now),
        ended: None,
        duration_ms: None,
        error: None,
    }
}

/// What to feed.
struct Feed {
    video: Vec<Bytes>,
    audio: Vec<Bytes>,
    /// Audio packets (20 ms slots) not sent: a muted publisher.
    audio_gap: std::ops::Range<usize>,
    /// Called once this many ms into the feed.
    midway: Option<(u64, Box<dyn FnOnce() + Send>)>,
    /// The video frames are VP8 (else H.264 access units).
    vp8: bool,
    /// The first picture is sent this late (a camera turned on after the microphone).
    video_from_ms: u64,
}

/// VP8 frames of libvpx at 30 fps, a key frame a second (from an IVF file).
fn vp8_frames(dir: &Path, size: &str, seconds: u32) -> Vec<Bytes> {
    let file = dir.join(format!("source-{size}.ivf"));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", &format!("testsrc=size={size}:rate=30")])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libvpx",
            "-g",
            "30",
            "-deadline",
            "realtime",
            "-f",
            "ivf",
        ])
        .arg(&file)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let data = std::fs::read(&file).unwrap();
    let mut frames = Vec::new();
    let mut at = 32;
    while at + 12 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        frames.push(Bytes::copy_from_slice(&data[at + 12..at + 12 + len]));
        at += 12 + len;
    }
    assert_eq!(frames.len(), seconds as usize * 30);
    frames
}

/// RFC 7741 packets of one VP8 frame (a 1-byte descriptor, S on the first).
fn vp8_packetize(frame: &[u8], seq: &mut u16, timestamp: u32, out: &mut Vec<RtpPacket>) {
    let count = frame.len().div_ceil(1200);
    for (i, chunk) in frame.chunks(1200).enumerate() {
        let mut p = RtpPacket::default();
        p.header.version = 2;
        p.header.payload_type = 96;
        p.header.sequence_number = *seq;
        p.header.timestamp = timestamp;
        p.header.ssrc = 99;
        p.header.marker = i + 1 == count;
        let mut payload = vec![if i == 0 { 0x10 } else { 0 }];
        payload.extend_from_slice(chunk);
        p.payload = payload.into();
        *seq = seq.wrapping_add(1);
        out.push(p);
    }
}

/// Feeds video (30 fps) and audio (50 packets/s) in real time through `start`.
async fn record(dir: &Path, meta: RecordMeta, feed: Feed) -> (RecordSummary, usize) {
    let (tx, rx) = mpsc::channel::<(Kind, RtpPacket)>(1024);
    let video_codec = if feed.vp8 {
        Codec {
            family: Family::Vp8,
            payload_type: 96,
            clock_rate: 90_000,
            channels: 0,
            fmtp: String::new(),
        }
    } else {
        h264_codec()
    };
    let codecs = Chosen {
        audio: Some(opus_codec()),
        video: Some(video_codec),
    };
    let key_frames = Arc::new(AtomicUsize::new(0));
    let counter = key_frames.clone();
    let handle = recorder::start(
        dir,
        meta,
        codecs,
        rx,
        move || {
            counter.fetch_add(1, Ordering::Relaxed);
        },
        Duration::from_millis(500),
    )
    .unwrap();
    let mut packetizer = Packetizer::new(102, 0x1234_5678, h264::DEFAULT_MTU);
    let video_origin = 4_294_000_000u32; // wraps after ~10 s
    let audio_origin = 77_000u32;
    let mut audio_seq = 65_500u16;
    let mut vp8_seq = 1u16;
    let start = tokio::time::Instant::now();
    let mut midway = feed.midway;
    let slots = feed.audio.len();
    let mut next_video = 0;
    let mut packets = Vec::new();
    for slot in 0..slots {
        let t_ms = slot as u64 * 20;
        tokio::time::sleep_until(start + Duration::from_millis(t_ms)).await;
        while next_video < feed.video.len()
            && feed.video_from_ms + next_video as u64 * 1000 / 30 <= t_ms
        {
            packets.clear();
            let ts = video_origin.wrapping_add(next_video as u32 * 3000);
            if feed.vp8 {
                vp8_packetize(&feed.video[next_video], &mut vp8_seq, ts, &mut packets);
            } else {
                packetizer.packetize(&feed.video[next_video], ts, &mut packets);
            }
            for p in packets.drain(..) {
                let _ = tx.try_send((Kind::Video, p));
            }
            next_video += 1;
        }
        if !feed.audio_gap.contains(&slot) {
            let mut p = RtpPacket::default();
            p.header.version = 2;
            p.header.payload_type = 111;
            p.header.sequence_number = audio_seq;
            p.header.timestamp = audio_origin.wrapping_add(slot as u32 * 960);
            p.header.ssrc = 42;
            p.payload = feed.audio[slot].clone();
            audio_seq = audio_seq.wrapping_add(1);
            let _ = tx.try_send((Kind::Audio, p));
        }
        if midway.as_ref().is_some_and(|(at, _)| t_ms >= *at) {
            if let Some((_, f)) = midway.take() {
                f();
            }
        }
    }
    drop(tx);
    let summary = handle.finished().await;
    (summary, key_frames.load(Ordering::Relaxed))
}

fn ffprobe(file: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What `ffmpeg -v error -i f -f null -` prints (nothing for a clean file).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stream<'a>(probe: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} stream: {probe}"))
}

fn seconds(v: &serde_json::Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Audio packet times (s) of a file.
fn audio_times(file: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "csv=p=0", "-select_streams", "a"])
        .args(["-show_entries", "packet=pts_time"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_becomes_an_mp4_that_survives_a_cut() {
    let dir = temp_dir("clean");
    let meta = meta(&dir, "room/alice");
    let name = meta.name.clone();
    let file = dir.join(&name);
    let copy = dir.join("copy-at-4s.mp4");
    let (from, to) = (file.clone(), copy.clone());
    let feed = Feed {
        video: h264_access_units(&dir, "640x360", 6),
        audio: opus_packets(300),
        audio_gap: 0..0,
        midway: Some((
            4000,
            Box::new(move || {
                std::fs::copy(&from, &to).unwrap();
            }),
        )),
        vp8: false,
        video_from_ms: 0,
    };
    let cpu = cpu_seconds();
    let wall = Instant::now();
    let (summary, key_frames) = record(&dir, meta, feed).await;
    let cpu = cpu_seconds() - cpu;
    eprintln!(
        "recorded {:?} in {:?}: {} bytes, {} ms, process CPU {cpu:.2} s (ffmpeg encode \
         excluded: it runs before the feed)",
        summary.files,
        wall.elapsed(),
        summary.bytes,
        summary.duration_ms
    );
    assert_eq!(summary.files, vec![name.clone()]);
    assert_eq!(summary.error, None);
    assert!(key_frames >= 1, "a key frame is asked for at start");
    assert!(summary.first_media.is_some());
    assert_eq!(summary.bytes, std::fs::metadata(&file).unwrap().len());

    let probe = ffprobe(&file);
    let video = stream(&probe, "video");
    let audio = stream(&probe, "audio");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(audio["codec_name"], "opus");
    let duration = seconds(&probe["format"]["duration"]);
    let skew = (seconds(&video["start_time"]) - seconds(&audio["start_time"])).abs();
    eprintln!("duration {duration:.3} s, audio/video start difference {skew:.3} s");
    assert!((5.0..=7.0).contains(&duration), "duration {duration}");
    assert!(skew < 0.1, "start times differ by {skew} s");
    assert_eq!(decode_errors(&file), "");

    let side: RecordMeta = catalog::load(&catalog::sidecar(&file)).unwrap();
    assert!(side.ended.is_some());
    let ms = side.duration_ms.unwrap();
    assert!((5000..=7000).contains(&ms), "{ms} ms");
    assert_eq!(side.error, None);

    // The copy taken 4 s in (an open fragment at its end, like a kill -9).
    let probe = ffprobe(&copy);
    let video = stream(&probe, "video");
    let copied = seconds(&probe["format"]["duration"]);
    eprintln!("copy at 4 s: {copied:.3} s, video {}", video["duration"]);
    assert!(copied >= 3.0, "{copied}");
    assert_eq!(decode_errors(&copy), "");

    // A finished file cut at an arbitrary byte inside its last fragment.
    let data = std::fs::read(&file).unwrap();
    let cut = dir.join("cut.mp4");
    std::fs::write(&cut, &data[..data.len() - 1234]).unwrap();
    let probe = ffprobe(&cut);
    assert!(seconds(&probe["format"]["duration"]) >= 5.0);
    assert!(seconds(&stream(&probe, "video")["duration"]) >= 3.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_without_audio_stays_a_gap() {
    let dir = temp_dir("gap");
    let meta = meta(&dir, "gap");
    let file = dir.join(&meta.name);
    let feed = Feed {
        video: h264_access_units(&dir, "640x360", 6),
        audio: opus_packets(300),
        audio_gap: 125..175, // 2.5 s to 3.5 s
        midway: None,
        vp8: false,
        video_from_ms: 0,
    };
    let (summary, _) = record(&dir, meta, feed).await;
    assert_eq!(summary.error, None);
    let probe = ffprobe(&file);
    let duration = seconds(&probe["format"]["duration"]);
    assert!((5.0..=7.0).contains(&duration), "duration {duration}");
    let times = audio_times(&file);
    let jumps: Vec<(f64, f64)> = times
        .windows(2)
        .filter(|w| w[1] - w[0] > 0.5)
        .map(|w| (w[0], w[1]))
        .collect();
    eprintln!("audio packets {}, jumps {jumps:?}", times.len());
    assert_eq!(jumps.len(), 1, "{jumps:?}");
    let (before, after) = jumps[0];
    assert!((after - before - 1.02).abs() < 0.05, "{before} → {after}");
    assert!(*times.last().unwrap() > 5.5, "the audio keeps its end");
    assert!(times.len() < 260, "50 packets fewer: {}", times.len());
    assert_eq!(decode_errors(&file), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_picture_size_goes_on_in_a_second_file() {
    let dir = temp_dir("resize");
    let meta = meta(&dir, "resize");
    let first = meta.name.clone();
    let mut video = h264_access_units(&dir, "640x360", 3);
    video.extend(h264_access_units(&dir, "320x240", 3));
    let feed = Feed {
        video,
        audio: opus_packets(300),
        audio_gap: 0..0,
        midway: None,
        vp8: false,
        video_from_ms: 0,
    };
    let (summary, _) = record(&dir, meta, feed).await;
    assert_eq!(summary.error, None);
    assert_eq!(summary.files.len(), 2, "{:?}", summary.files);
    assert_eq!(summary.files[0], first);
    assert_eq!(
        summary.files[1],
        first.replace(".mp4", "-part2.mp4"),
        "named by catalog::segment_name"
    );
    for (name, (w, h)) in summary.files.iter().zip([(640, 360), (320, 240)]) {
        let file = dir.join(name);
        let probe = ffprobe(&file);
        let video = stream(&probe, "video");
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(w), Some(h))
        );
        assert_eq!(stream(&probe, "audio")["codec_name"], "opus");
        let duration = seconds(&probe["format"]["duration"]);
        eprintln!("{name}: {w}x{h}, {duration:.3} s");
        assert!((2.5..=3.5).contains(&duration), "{name}: {duration}");
        assert_eq!(decode_errors(&file), "");
        let side: RecordMeta = catalog::load(&catalog::sidecar(&file)).unwrap();
        assert!(side.ended.is_some() && side.error.is_none());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_goes_into_mp4_as_vp08() {
    let dir = temp_dir("vp8");
    let meta = meta(&dir, "vp8");
    let file = dir.join(&meta.name);
    let feed = Feed {
        video: vp8_frames(&dir, "640x360", 4),
        audio: opus_packets(200),
        audio_gap: 0..0,
        midway: None,
        vp8: true,
        video_from_ms: 0,
    };
    let (summary, _) = record(&dir, meta, feed).await;
    assert_eq!(summary.error, None);
    let probe = ffprobe(&file);
    let video = stream(&probe, "video");
    assert_eq!(video["codec_name"], "vp8");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(stream(&probe, "audio")["codec_name"], "opus");
    let duration = seconds(&probe["format"]["duration"]);
    eprintln!("vp8: {duration:.3} s");
    assert!((3.5..=4.5).contains(&duration), "{duration}");
    assert_eq!(decode_errors(&file), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_waits_3_s_for_video_then_goes_alone_until_it_starts() {
    let dir = temp_dir("late");
    let meta = meta(&dir, "late");
    let feed = Feed {
        video: h264_access_units(&dir, "640x360", 2),
        audio: opus_packets(300),
        audio_gap: 0..0,
        midway: None,
        vp8: false,
        video_from_ms: 4000,
    };
    let (summary, _) = record(&dir, meta, feed).await;
    assert_eq!(summary.error, None);
    assert_eq!(summary.files.len(), 2, "{:?}", summary.files);
    let first = ffprobe(&dir.join(&summary.files[0]));
    assert_eq!(first["streams"].as_array().unwrap().len(), 1, "audio alone");
    let alone = seconds(&first["format"]["duration"]);
    let second = dir.join(&summary.files[1]);
    let probe = ffprobe(&second);
    let video = stream(&probe, "video");
    let audio = stream(&probe, "audio");
    let skew = (seconds(&video["start_time"]) - seconds(&audio["start_time"])).abs();
    let both = seconds(&probe["format"]["duration"]);
    eprintln!("audio alone {alone:.3} s, then audio + video {both:.3} s (start skew {skew:.3} s)");
    assert!((0.7..=1.3).contains(&alone), "{alone}");
    assert!((1.7..=2.3).contains(&both), "{both}");
    assert!(skew < 0.1, "{skew}");
    assert_eq!(decode_errors(&second), "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Log lines of the child process.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.level() <= log::Level::Warn {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

const CHILD: &str = "HUDDLE_RECORD_CHILD_DIR";
/// The largest file the child may write.
const FILE_LIMIT: u64 = 100_000;

/// A real write error mid-way: a child process (this test binary again) records with
/// RLIMIT_FSIZE set (and SIGXFSZ ignored), so a write past the limit fails with EFBIG
/// like a full disk fails with ENOSPC.
#[test]
fn a_write_error_stops_the_recording_and_keeps_the_file_valid() {
    let dir = temp_dir("efbig");
    // Under CPU emulation (the aarch64 suite under qemu-user without binfmt_misc) the
    // child runs through the same wrapper as this test.
    let exe = std::env::current_exe().unwrap();
    let mut command = match std::env::var("HUDDLE_TEST_EXEC_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut c = Command::new(words.next().unwrap());
            c.args(words).arg(exe);
            c
        }
        _ => Command::new(exe),
    };
    let out = command
        .args(["--exact", "write_error_child", "--ignored", "--nocapture"])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("1 passed"), "{log}");
    let name = std::fs::read_to_string(dir.join("name")).unwrap();
    let file = dir.join(&name);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 0 && size <= FILE_LIMIT, "{size}");
    let side: RecordMeta = catalog::load(&catalog::sidecar(&file)).unwrap();
    let error = side.error.expect("the error is in the sidecar");
    assert!(error.contains("too large"), "{error}");
    assert!(side.ended.is_some());
    let probe = ffprobe(&file);
    let duration = seconds(&probe["format"]["duration"]);
    eprintln!(
        "cut at {size} bytes: {duration:.3} s, sidecar error {error:?}, {} ms",
        side.duration_ms.unwrap_or(0)
    );
    assert!(duration > 0.5, "{duration}");
    assert_eq!(stream(&probe, "video")["codec_name"], "h264");
    assert_eq!(decode_errors(&file), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_write_error_stops_the_recording_and_keeps_the_file_valid"]
async fn write_error_child() {
    let Some(dir) = std::env::var_os(CHILD).map(PathBuf::from) else {
        return;
    };
    let _ = log::set_logger(&Capture).map(|()| log::set_max_level(log::LevelFilter::Info));
    // The sources are made before the limit (ffmpeg inherits it).
    let feed = Feed {
        video: h264_access_units(&dir, "640x360", 6),
        audio: opus_packets(300),
        audio_gap: 0..0,
        midway: None,
        vp8: false,
        video_from_ms: 0,
    };
    let meta = meta(&dir, "efbig");
    std::fs::write(dir.join("name"), &meta.name).unwrap();
    // The sidecars are small: they still fit under the limit.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
        .unwrap();
    }
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_FSIZE,
        FILE_LIMIT,
        FILE_LIMIT,
    )
    .unwrap();
    let name = meta.name.clone();
    let started = Instant::now();
    let (summary, _) = record(&dir, meta, feed).await;
    let error = summary.error.expect("the recording failed");
    assert!(error.contains("too large"), "{error}");
    assert!(summary.bytes <= FILE_LIMIT);
    let logged = LOGGED.lock().unwrap().clone();
    eprintln!("after {:?}: {logged:?}", started.elapsed());
    assert!(
        logged
            .iter()
            .any(|l| l.contains(&name) && l.contains("too large")),
        "{logged:?}"
    );
}

/// CPU seconds (user + system) of this process so far.
fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(usage.user_time()) + t(usage.system_time())
}
