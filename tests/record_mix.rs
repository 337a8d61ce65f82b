//! The offline room mix with real files: two fragmented MP4 stream recordings made
//! with ffmpeg (H.264 baseline + Opus, like the recorder's), the second joining 3 s
//! into the room; the mix is checked with ffprobe and decoded frames (the layout at
//! each moment), the room record hook runs (and a hanging one is killed), a pending
//! mix survives a restart, a room cut short while recording is finalized and mixed,
//! and a room whose files are missing fails without touching anything else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use huddle::config;
use huddle::record::catalog::{self, MixState, RecordKind, RecordMeta, RoomManifest, RoomStream};
use huddle::record::hook::{self, HookOutcome};
use huddle::record::mix::{self, Mixer};

/// Log lines of this test process.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target().starts_with("huddle") {
            let line = format!("{} {}", record.level(), record.args());
            eprintln!("{line}");
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn init_log() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        log::set_boxed_logger(Box::new(Capture)).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

fn logged(needle: &str) -> bool {
    LINES.lock().unwrap().iter().any(|l| l.contains(needle))
}

/// A fresh directory for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-mix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const FRAG: &str = "+frag_keyframe+empty_moov+default_base_moof";

/// The two stream recordings, made once (kept in the target's temp dir across runs):
/// alice (testsrc2, 440 Hz, 10 s) and bob (red, 880 Hz, 6 s).
fn sources() -> &'static (PathBuf, PathBuf) {
    static SOURCES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("record_mix-sources");
        std::fs::create_dir_all(&dir).unwrap();
        let alice = dir.join("alice.mp4");
        let bob = dir.join("bob.mp4");
        for (file, video, freq, secs) in [
            (&alice, "testsrc2=size=640x360:rate=30", 440, "10"),
            (&bob, "color=c=red:size=640x360:rate=30", 880, "6"),
        ] {
            if file.exists() {
                continue;
            }
            let sine = format!("sine=frequency={freq}:sample_rate=48000");
            let part = file.with_extension("part.mp4");
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                video,
                "-f",
                "lavfi",
                "-i",
                &sine,
                "-t",
                secs,
                "-c:v",
                "libx264",
                "-profile:v",
                "baseline",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "30",
                "-c:a",
                "libopus",
                "-ac",
                "2",
                "-movflags",
                FRAG,
                part.to_str().unwrap(),
            ]);
            std::fs::rename(&part, file).unwrap();
        }
        (alice, bob)
    })
}

const BOB: &str = "bob's: [x], 100%;";

/// Copies the sources into `dir` and writes a manifest of the room `Daily <name>`:
/// alice 0-10 s, bob 3-9 s, 10 s, in state `state`.
fn room(dir: &Path, name: &str, state: MixState) -> PathBuf {
    let (alice, bob) = sources();
    let alice_file = format!("{name}-alice.mp4");
    let bob_file = format!("{name}-bob.mp4");
    std::fs::copy(alice, dir.join(&alice_file)).unwrap();
    std::fs::copy(bob, dir.join(&bob_file)).unwrap();
    let finished = state != MixState::Recording;
    let manifest = RoomManifest {
        room: format!("Daily {name}"),
        started: "2026-12-02T10:15:00.000Z".into(),
        ended: finished.then(|| "2026-12-02T10:15:10.000Z".into()),
        duration_ms: finished.then_some(10_000),
        streams: vec![
            RoomStream {
                stream: "alice-cam".into(),
                login: "alice".into(),
                file: alice_file,
                start_ms: 0,
                end_ms: finished.then_some(10_000),
            },
            RoomStream {
                stream: "bob-cam".into(),
                login: BOB.into(),
                file: bob_file,
                start_ms: 3_000,
                end_ms: finished.then_some(9_000),
            },
        ],
        mix: state,
        mix_file: format!("{name}-mix.mp4"),
        mix_error: None,
    };
    let path = dir.join(format!("{name}.room.json"));
    catalog::store(&path, &manifest).unwrap();
    path
}

fn records(dir: &Path) -> config::Records {
    config::Records {
        dir: dir.to_path_buf(),
        ..config::Records::default()
    }
}

/// Waits until the manifest leaves `Pending`/`Recording`.
fn wait_mixed(path: &Path, within: Duration) -> RoomManifest {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(m) = catalog::load::<RoomManifest>(path) {
            if matches!(m.mix, MixState::Done | MixState::Failed) {
                return m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not mixed in time",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `codec_type,codec_name,duration` of each stream.
fn streams_of(file: &Path) -> Vec<(String, String, f64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,duration",
        ])
        .args(["-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[1].to_string(),
                f[0].to_string(),
                f[2].parse().unwrap_or(-1.0),
            )
        })
        .collect()
}

/// The frame at `t` as 160x90 RGB.
fn frame_at(file: &Path, t: f64) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-v",
            "error",
            "-nostdin",
            "-ss",
            &t.to_string(),
            "-i",
        ])
        .arg(file)
        .args(["-frames:v", "1", "-vf", "scale=160:90", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 160 * 90 * 3);
    out.stdout
}

/// Mean R, G, B of a region (x0..x1, y0..y1 in 160x90).
fn mean(frame: &[u8], x0: usize, x1: usize, y0: usize, y1: usize) -> [f64; 3] {
    let mut sum = [0u64; 3];
    for y in y0..y1 {
        for x in x0..x1 {
            for c in 0..3 {
                sum[c] += u64::from(frame[(y * 160 + x) * 3 + c]);
            }
        }
    }
    let n = ((x1 - x0) * (y1 - y0)) as f64;
    [sum[0] as f64 / n, sum[1] as f64 / n, sum[2] as f64 / n]
}

fn is_black(c: [f64; 3]) -> bool {
    c.iter().all(|v| *v < 20.0)
}

fn is_red(c: [f64; 3]) -> bool {
    c[0] > 180.0 && c[1] < 60.0 && c[2] < 60.0
}

fn hook_script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("hook.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

#[test]
fn a_late_joiner_gets_a_tile_and_the_hook_runs() {
    init_log();
    let dir = test_dir("late");
    let args_file = dir.join("hook-args.txt");
    let hook = hook_script(
        &dir,
        &format!("printf '%s\\n' \"$1\" \"$2\" > '{}'", args_file.display()),
    );
    let manifest = room(&dir, "late", MixState::Pending);
    let mut records = records(&dir);
    records.on_room_record_hook = hook.to_string_lossy().into_owned();
    let mut mixer = Mixer::start(&records);
    let t0 = Instant::now();
    mixer.submit(&manifest);
    let done = wait_mixed(&manifest, Duration::from_secs(300));
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(done.mix, MixState::Done, "{:?}", done.mix_error);
    assert_eq!(done.mix_error, None);
    println!(
        "mix of 10.0 s (2 inputs, 1280x720, one thread, idle priority): {wall:.2} s wall = {:.2}x real time",
        10.0 / wall
    );
    let out = dir.join("late-mix.mp4");
    let streams = streams_of(&out);
    assert_eq!(streams.len(), 2, "{streams:?}");
    let video = streams.iter().find(|s| s.0 == "video").unwrap();
    let audio = streams.iter().find(|s| s.0 == "audio").unwrap();
    assert_eq!(video.1, "h264");
    assert_eq!(audio.1, "aac");
    assert!((video.2 - 10.0).abs() <= 1.0, "{streams:?}");
    assert!((audio.2 - 10.0).abs() <= 1.0, "{streams:?}");

    // 1.5 s: alice alone, full frame (testsrc2 everywhere, no red tile, no bars).
    let f = frame_at(&out, 1.5);
    let (left, right, top) = (
        mean(&f, 0, 80, 20, 70),
        mean(&f, 80, 160, 20, 70),
        mean(&f, 0, 160, 0, 15),
    );
    println!("t=1.5 left {left:?} right {right:?} top {top:?}");
    assert!(!is_black(left) && !is_black(right) && !is_black(top));
    assert!(!is_red(right));
    // 5 s: two tiles side by side (16:9 in 8:9 tiles: black bars above and below):
    // alice's testsrc2 on the left, bob's red on the right.
    let f = frame_at(&out, 5.0);
    let (left, right, top) = (
        mean(&f, 5, 75, 30, 60),
        mean(&f, 85, 155, 30, 60),
        mean(&f, 0, 160, 0, 15),
    );
    println!("t=5 left {left:?} right {right:?} top {top:?}");
    assert!(!is_black(left) && !is_red(left));
    assert!(is_red(right));
    assert!(is_black(top));
    // 9.5 s: bob left at 9 s, alice full frame again.
    let f = frame_at(&out, 9.5);
    let (right, top) = (mean(&f, 80, 160, 20, 70), mean(&f, 0, 160, 0, 15));
    assert!(!is_red(right) && !is_black(top), "{right:?} {top:?}");

    // A/V sync of the late joiner: his tile and his 880 Hz tone both start at 3 s and
    // end at 9 s (within a frame or two); alice's 440 Hz never stops.
    for (t, red) in [(2.9, false), (3.1, true), (8.9, true), (9.1, false)] {
        let f = frame_at(&out, t);
        let right = mean(&f, 85, 155, 30, 60);
        assert_eq!(is_red(right), red, "t={t}: {right:?}");
    }
    let bob_tone = silences(&out, 880);
    println!("880 Hz silences: {bob_tone:?}");
    assert_eq!(bob_tone.len(), 4, "{bob_tone:?}");
    assert!(bob_tone[0] == ("start", 0.0), "{bob_tone:?}");
    assert!(
        bob_tone[1].0 == "end" && (bob_tone[1].1 - 3.0).abs() < 0.1,
        "{bob_tone:?}"
    );
    assert!(
        bob_tone[2].0 == "start" && (bob_tone[2].1 - 9.0).abs() < 0.1,
        "{bob_tone:?}"
    );
    let alice_tone = silences(&out, 440);
    assert!(
        alice_tone.iter().all(|(_, t)| *t > 9.9),
        "alice's tone has gaps: {alice_tone:?}"
    );

    // The sidecar and the hook.
    let meta: RecordMeta = catalog::load(&catalog::sidecar(&out)).unwrap();
    assert_eq!(meta.kind, RecordKind::Mix);
    assert_eq!(meta.name, "late-mix.mp4");
    assert_eq!(meta.room, "Daily late");
    assert_eq!(meta.duration_ms, Some(10_000));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !args_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    let args = std::fs::read_to_string(&args_file).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        vec![
            std::fs::canonicalize(&out).unwrap().to_str().unwrap(),
            "Daily late"
        ]
    );
    // No temp files left behind.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.') && !name.ends_with(".tmp"), "{name}");
    }
    mixer.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hanging_hook_is_killed() {
    init_log();
    let dir = test_dir("hang");
    let pid_file = dir.join("hook.pid");
    let hook = hook_script(
        &dir,
        &format!("echo $$ > '{}'\nsleep 100", pid_file.display()),
    );
    let manifest = room(&dir, "hang", MixState::Pending);
    let mut records = records(&dir);
    records.on_room_record_hook = hook.to_string_lossy().into_owned();
    records.hook_timeout_ms = 500;
    // Audio only: quick, and no video track.
    records.mixer.video = false;
    let mut mixer = Mixer::start(&records);
    mixer.submit(&manifest);
    let done = wait_mixed(&manifest, Duration::from_secs(300));
    assert_eq!(done.mix, MixState::Done, "{:?}", done.mix_error);
    let streams = streams_of(&dir.join("hang-mix.mp4"));
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(
        (streams[0].0.as_str(), streams[0].1.as_str()),
        ("audio", "aac")
    );
    assert!((streams[0].2 - 10.0).abs() <= 1.0, "{streams:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logged("for room \"Daily hang\" still running after 500 ms: killed") {
        assert!(Instant::now() < deadline, "the hanging hook was not killed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Its process group (the shell and its sleep) is gone (zombies waiting for init
    // to reap them do not count).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !living_in_group(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the hook's process group still lives: {:?}",
            living_in_group(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    mixer.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pending_and_interrupted_rooms_are_mixed_at_start() {
    init_log();
    let dir = test_dir("restart");
    let pending = room(&dir, "pending", MixState::Pending);
    let interrupted = room(&dir, "interrupted", MixState::Recording);
    // Video only and no names, smaller: the other options.
    let mut records = records(&dir);
    records.mixer.audio = false;
    records.mixer.show_names = false;
    records.mixer.width = 640;
    records.mixer.height = 360;
    let mut mixer = Mixer::start(&records);
    let done = wait_mixed(&pending, Duration::from_secs(300));
    assert_eq!(done.mix, MixState::Done, "{:?}", done.mix_error);
    let done = wait_mixed(&interrupted, Duration::from_secs(300));
    assert_eq!(done.mix, MixState::Done, "{:?}", done.mix_error);
    // Finalized from the files: alice's 10 s, bob's 3 + 6 s.
    let duration = done.duration_ms.unwrap();
    assert!((9_900..=10_100).contains(&duration), "{duration}");
    assert_eq!(
        done.ended.as_deref().map(|e| &e[..19]),
        Some("2026-12-02T10:15:10")
    );
    let bob_end = done.streams[1].end_ms.unwrap();
    assert!((8_900..=9_100).contains(&bob_end), "{bob_end}");
    for file in ["pending-mix.mp4", "interrupted-mix.mp4"] {
        let streams = streams_of(&dir.join(file));
        assert_eq!(streams.len(), 1, "{streams:?}");
        assert_eq!(
            (streams[0].0.as_str(), streams[0].1.as_str()),
            ("video", "h264")
        );
        assert!((streams[0].2 - 10.0).abs() <= 1.0, "{streams:?}");
    }
    mixer.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_files_fail_the_mix_and_touch_nothing_else() {
    init_log();
    let dir = test_dir("missing");
    let other = room(&dir, "other", MixState::Done);
    let manifest = room(&dir, "gone", MixState::Pending);
    std::fs::remove_file(dir.join("gone-alice.mp4")).unwrap();
    std::fs::write(dir.join("gone-bob.mp4"), b"not an mp4").unwrap();
    let before: Vec<(String, Vec<u8>)> = listing(&dir)
        .into_iter()
        .filter(|(name, _)| name != "gone.room.json")
        .collect();
    let never = std::sync::atomic::AtomicBool::new(false);
    let result = mix::mix_room(&manifest, &config::Mixer::default(), &never);
    assert!(
        matches!(result, Err(mix::MixError::Failed(_))),
        "{result:?}"
    );
    let failed: RoomManifest = catalog::load(&manifest).unwrap();
    assert_eq!(failed.mix, MixState::Failed);
    let error = failed.mix_error.unwrap();
    assert!(error.contains("no readable stream file"), "{error}");
    assert!(logged("gone-alice.mp4 unreadable, skipped"));
    let after: Vec<(String, Vec<u8>)> = listing(&dir)
        .into_iter()
        .filter(|(name, _)| name != "gone.room.json")
        .collect();
    assert_eq!(
        before.iter().map(|b| &b.0).collect::<Vec<_>>(),
        after.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    assert!(before == after, "files changed");
    assert_eq!(
        catalog::load::<RoomManifest>(&other).unwrap().mix,
        MixState::Done
    );
    // A failed mix is not retried by a new start.
    let mut mixer = Mixer::start(&records(&dir));
    std::thread::sleep(Duration::from_millis(500));
    mixer.stop();
    assert_eq!(
        catalog::load::<RoomManifest>(&manifest).unwrap().mix,
        MixState::Failed
    );

    // One file missing: a mix of what is there.
    let partial = room(&dir, "partial", MixState::Pending);
    std::fs::remove_file(dir.join("partial-bob.mp4")).unwrap();
    let mixer_config = config::Mixer {
        width: 320,
        height: 180,
        ..config::Mixer::default()
    };
    let out = mix::mix_room(&partial, &mixer_config, &never).unwrap();
    assert_eq!(
        catalog::load::<RoomManifest>(&partial).unwrap().mix,
        MixState::Done
    );
    let streams = streams_of(&out);
    assert_eq!(streams.len(), 2, "{streams:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The files of `dir` with their contents, by name.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_shutdown_kills_the_running_mix_and_keeps_it_pending() {
    init_log();
    let dir = test_dir("stop");
    let manifest = room(&dir, "stop", MixState::Pending);
    let mut mixer = Mixer::start(&records(&dir));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logged("room \"Daily stop\": mixing 2 stream file(s)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    mixer.stop();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let m: RoomManifest = catalog::load(&manifest).unwrap();
    if m.mix == MixState::Pending {
        assert!(!dir.join("stop-mix.mp4").exists());
        assert!(!dir.join(".stop-mix.mp4.part").exists());
    } else {
        // The mix was quicker than the stop.
        assert_eq!(m.mix, MixState::Done);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The PIDs of the processes of group `pgid` that are not zombies (from /proc).
fn living_in_group(pgid: i32) -> Vec<i32> {
    let mut living = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            living.push(pid);
        }
    }
    living
}

/// The silences of the `freq` Hz band of a file's audio: `("start" | "end", seconds)`.
fn silences(file: &Path, freq: u32) -> Vec<(&'static str, f64)> {
    let band = format!("bandpass=f={freq}:width_type=h:w=200");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-i"])
        .arg(file)
        .arg("-af")
        .arg(format!("{band},{band},silencedetect=n=-40dB:d=0.2"))
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stderr).replace('\r', "\n");
    let mut found = Vec::new();
    for line in text.lines() {
        for (key, kind) in [("silence_start: ", "start"), ("silence_end: ", "end")] {
            if let Some(rest) = line.split(key).nth(1) {
                let value = rest.split_whitespace().next().unwrap_or("");
                found.push((kind, value.parse::<f64>().unwrap()));
            }
        }
    }
    found
}

#[test]
fn hook_outcomes() {
    init_log();
    let dir = test_dir("hooks");
    let never = std::sync::atomic::AtomicBool::new(false);
    let file = dir.join("x-mix.mp4");
    assert_eq!(
        hook::run_room_hook("", &file, "r", Duration::from_secs(1), &never),
        HookOutcome::None
    );
    let missing = dir.join("no-such-hook");
    let outcome = hook::run_room_hook(
        missing.to_str().unwrap(),
        &file,
        "r",
        Duration::from_secs(1),
        &never,
    );
    assert!(matches!(outcome, HookOutcome::NotStarted(_)), "{outcome:?}");
    assert!(logged("could not start"));
    // A hook with its own arguments, failing: its status is reported.
    let script = hook_script(&dir, "[ \"$1\" = --flag ] && exit 3; exit 0");
    let outcome = hook::run_room_hook(
        &format!("{} --flag", script.display()),
        &file,
        "r",
        Duration::from_secs(5),
        &never,
    );
    match outcome {
        HookOutcome::Exited(status) => assert_eq!(status.code(), Some(3)),
        other => panic!("{other:?}"),
    }
    // Killed promptly at its timeout.
    let script = hook_script(&dir, "sleep 100");
    let t0 = Instant::now();
    let outcome = hook::run_room_hook(
        script.to_str().unwrap(),
        &file,
        "r",
        Duration::from_millis(300),
        &never,
    );
    assert_eq!(outcome, HookOutcome::Killed);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A speed figure for a longer room (run with `--ignored --nocapture`): 60 s, four
/// participants joining at 0, 10, 20, 30 s (1 → 2 → 3 → 4 tiles), labels, 1280x720.
#[test]
#[ignore]
fn speed_of_a_minute_with_four() {
    init_log();
    let dir = test_dir("speed");
    let mut streams = Vec::new();
    for i in 0..4u64 {
        let file = format!("p{i}.mp4");
        let secs = (60 - i * 10).to_string();
        let video = if i % 2 == 0 {
            "testsrc2=size=640x360:rate=30".to_string()
        } else {
            format!(
                "color=c=0x{:06x}:size=640x360:rate=30",
                0x20_40_80 * (i + 1)
            )
        };
        let sine = format!("sine=frequency={}:sample_rate=48000", 300 + 150 * i);
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &video,
            "-f",
            "lavfi",
            "-i",
            &sine,
            "-t",
            &secs,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-c:a",
            "libopus",
            "-ac",
            "2",
            "-movflags",
            FRAG,
            dir.join(&file).to_str().unwrap(),
        ]);
        streams.push(RoomStream {
            stream: format!("s{i}"),
            login: format!("user {i}"),
            file,
            start_ms: i * 10_000,
            end_ms: Some(60_000),
        });
    }
    let manifest = RoomManifest {
        room: "speed".into(),
        started: "2026-12-02T10:15:00.000Z".into(),
        ended: Some("2026-12-02T10:16:00.000Z".into()),
        duration_ms: Some(60_000),
        streams,
        mix: MixState::Pending,
        mix_file: "speed-mix.mp4".into(),
        mix_error: None,
    };
    let path = dir.join("speed.room.json");
    catalog::store(&path, &manifest).unwrap();
    let never = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let out = mix::mix_room(&path, &config::Mixer::default(), &never).unwrap();
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "60 s, 4 inputs, 1280x720: {wall:.1} s wall = {:.2}x real time",
        60.0 / wall
    );
    let streams = streams_of(&out);
    assert_eq!(streams.len(), 2, "{streams:?}");
    if std::env::var_os("HUDDLE_KEEP_MIX").is_some() {
        println!("kept {}", out.display());
    } else {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
