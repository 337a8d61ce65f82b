//! Device stream benchmark (`make bench`, `cargo bench --bench device`): what the
//! device's own stream costs in CPU with the test pattern and the tone, split into
//! the software encoder's share and Huddle's own. A measurement, not a test: no
//! assertions about the figures.
//!
//! The release `huddle` binary runs as a child process with `[device] camera =
//! "test-pattern"`, `microphone = "tone"` and `rooms = ["bench"]`, so it publishes
//! its stream at start (no browser, only 127.0.0.1). After a warm-up, per-thread CPU
//! time (`utime + stime` of `/proc/PID/task/TID/stat`) is read at the start and the
//! end of the window and the threads are grouped by name: the GStreamer pipeline
//! (its streaming thread `videotestsrc0:src` and the x264 threads it starts, which
//! inherit its name), `huddle-video` (appsink pull, RTP packetization, hand-off to
//! the SFU), `huddle-audio` (tone and Opus), the tokio workers (named `huddle`:
//! SFU, signalling) and the main thread.
//!
//! References, each its own process measured the same way: the exact pipeline
//! Huddle logs at debug level, run by `gst-launch-1.0` into a `fakesink` instead of
//! the appsink (the encoder's cost, test pattern included), and the same pipeline
//! cut before the encoder (the test pattern alone). Huddle's own cost = Huddle's
//! total − the pipeline alone; the encoder's = the pipeline alone − the pattern alone.
//!
//! Cases: 1280x720@30 and 640x360@30 with nobody watching, and 1280x720@30 with one
//! WebRTC player (a `webrtc` 0.21.1 client in this process, as in `benches/sfu.rs`).
//! Every case runs `HUDDLE_BENCH_REPEAT` times (default 3), interleaved; the table
//! gives the median and the range. The default plan also rewrites the section
//! between the markers in `docs/benchmarks.md`. These cases run with `[device]
//! always_on = true` (capturing with nobody in the room).
//!
//! Capture on demand: the whole service's CPU with no room at all, `always_on =
//! true` against the default `false` (idle: the sources closed), `IDLE_MEASURE`
//! each (process `utime + stime`); printed at the end of the default plan, and alone
//! with `HUDDLE_BENCH_IDLE=1`.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use support::{
    clock_ticks_per_sec, command_output, count_warning, http_address, loadavg, process_ticks,
    rss_kib, spawn, thread_ticks, write_doc, Proc, AUDIO, STEP, VIDEO,
};

/// Capture sizes; the player case runs at the first.
const SIZES: &[(u32, u32)] = &[(1280, 720), (640, 360)];
const FPS: u32 = 30;
const BITRATE_KBPS: u32 = 1500;
const REPEAT: usize = 3;
const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(20);

const ROOM: &str = "bench";
/// The device's login; its stream is "{ROOM}-{LOGIN}".
const LOGIN: &str = "Room system";

// ---------------------------------------------------------------------------------
// /proc

/// Busy clock ticks of the whole machine (every CPU), from the `cpu` line of /proc/stat.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("/proc/stat: no cpu line");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("/proc/stat: a number"))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    assert!(f.len() >= 8, "/proc/stat: short cpu line {line:?}");
    f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
}

struct Snapshot {
    at: Instant,
    process: (u64, u64),
    threads: HashMap<u32, (String, u64)>,
    machine: u64,
    bench: (u64, u64),
}

fn snapshot(pid: i32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        process: process_ticks(&pid.to_string()),
        threads: thread_ticks(pid),
        machine: machine_busy_ticks(),
        bench: process_ticks("self"),
    }
}

/// CPU seconds of one window.
struct Measured {
    secs: f64,
    process: f64,
    /// Of which in the kernel.
    process_sys: f64,
    /// (tid, name, CPU s) of every thread alive at the end.
    threads: Vec<(u32, String, f64)>,
    /// Threads that ended in the window: process − Σ threads.
    exited: f64,
    /// This process (the player, in the player case).
    bench: f64,
    /// Everything else on the machine: busy − process − bench.
    others: f64,
    rss_kib: u64,
}

fn measured(pid: i32, a: &Snapshot, b: &Snapshot, ticks: f64) -> Measured {
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / ticks;
    let process = d(a.process.0 + a.process.1, b.process.0 + b.process.1);
    let mut threads: Vec<(u32, String, f64)> = b
        .threads
        .iter()
        .map(|(tid, (name, t))| {
            let before = a.threads.get(tid).map_or(0, |x| x.1);
            (*tid, name.clone(), d(before, *t))
        })
        .collect();
    threads.sort_by_key(|t| t.0);
    let sum: f64 = threads.iter().map(|t| t.2).sum();
    let bench = d(a.bench.0 + a.bench.1, b.bench.0 + b.bench.1);
    Measured {
        secs: (b.at - a.at).as_secs_f64(),
        process,
        process_sys: d(a.process.1, b.process.1),
        threads,
        exited: (process - sum).max(0.0),
        bench,
        others: (d(a.machine, b.machine) - process - bench).max(0.0),
        rss_kib: rss_kib(pid),
    }
}

/// Huddle's threads, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Gst,
    Video,
    Audio,
    Tokio,
    Main,
}

fn group(pid: i32, tid: u32, name: &str) -> Group {
    match name {
        _ if tid as i32 == pid => Group::Main,
        "huddle-video" => Group::Video,
        "huddle-audio" => Group::Audio,
        // The tokio runtime's threads (workers and blocking pool) are named "huddle".
        "huddle" => Group::Tokio,
        // GStreamer's streaming thread, the x264 threads it starts, GLib's pool.
        _ => Group::Gst,
    }
}

impl Measured {
    fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.secs
    }

    fn group(&self, pid: i32, g: Group) -> f64 {
        self.threads
            .iter()
            .filter(|(tid, name, _)| group(pid, *tid, name) == g)
            .map(|t| t.2)
            .sum()
    }

    /// GStreamer's streaming thread (the first thread named "element:pad") and the
    /// threads it started, which inherit its name (x264's): (streaming, n, others).
    fn streaming(&self) -> Option<(f64, usize, f64)> {
        let mut named = self.threads.iter().filter(|t| t.1.contains(':'));
        let (_, first, cpu) = named.next()?;
        let others: Vec<f64> = named.filter(|t| &t.1 == first).map(|t| t.2).collect();
        Some((*cpu, others.len(), others.iter().sum()))
    }

    /// "name ×n cpu%" per thread name, busiest first.
    fn by_name(&self, keep: impl Fn(u32, &str) -> bool) -> String {
        let mut names: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (tid, name, cpu) in &self.threads {
            if keep(*tid, name) {
                let e = names.entry(name.as_str()).or_default();
                e.0 += 1;
                e.1 += cpu;
            }
        }
        let mut v: Vec<_> = names.into_iter().collect();
        v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        v.iter()
            .map(|(n, (count, cpu))| format!("{n} ×{count} {:.1} %", self.pct(*cpu)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------
// Child processes

/// What the Huddle child logged that the bench waits for.
enum Event {
    Http(SocketAddr),
    /// (encoder, pipeline description)
    Pipeline(String, String),
    Delivering(RtpCodecKind),
}

struct Huddle {
    proc: Proc,
    http: SocketAddr,
    /// The camera's encoder element and pipeline description, as logged.
    encoder: String,
    pipeline: String,
    /// Log lines so far, and those at WARN or ERROR.
    lines: Arc<AtomicU64>,
    warnings: Arc<AtomicU64>,
}

fn start_huddle(size: (u32, u32), tag: &str) -> Huddle {
    let sections = format!(
        r#"[device]
camera = "test-pattern"
microphone = "tone"
encoder = "auto"
width = {w}
height = {h}
framerate = {FPS}
bitrate_kbps = {BITRATE_KBPS}
login = "{LOGIN}"
rooms = ["{ROOM}"]
always_on = true

[log]
level = "debug"
"#,
        w = size.0,
        h = size.1,
    );
    let lines = Arc::new(AtomicU64::new(0));
    let warnings = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std_mpsc::channel::<Event>();
    let (l, w) = (Arc::clone(&lines), Arc::clone(&warnings));
    let mut proc = support::start_huddle(
        "huddle-device-bench",
        tag,
        &sections,
        |pid| format!("huddle (pid {pid})"),
        move |line| {
            l.fetch_add(1, Ordering::Relaxed);
            if let Some(a) = http_address(line) {
                let _ = tx.send(Event::Http(a));
            }
            // "device: camera test-pattern (x264enc): pipeline videotestsrc ..."
            if let Some((head, pipeline)) = line.split_once("): pipeline ") {
                if let Some((_, encoder)) = head.rsplit_once("camera test-pattern (") {
                    let _ = tx.send(Event::Pipeline(encoder.into(), pipeline.into()));
                }
            }
            if line.contains(": delivering ") {
                if line.contains("device: camera") {
                    let _ = tx.send(Event::Delivering(VIDEO));
                } else if line.contains("device: microphone") {
                    let _ = tx.send(Event::Delivering(AUDIO));
                }
            }
            count_warning(line, &w, "huddle");
        },
    );
    let (mut http, mut pipeline, mut video, mut audio) = (None, None, false, false);
    let deadline = Instant::now() + STEP;
    while http.is_none() || pipeline.is_none() || !video || !audio {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Http(a)) => http = Some(a),
            Ok(Event::Pipeline(e, p)) => pipeline = Some((e, p)),
            Ok(Event::Delivering(k)) if k == VIDEO => video = true,
            Ok(Event::Delivering(_)) => audio = true,
            Err(_) => {
                proc.check_running();
                let log = proc.log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!(
                    "huddle did not log its address, its camera pipeline and both sources \
                     delivering within {STEP:?} (address {http:?}, pipeline {}, video {video}, \
                     audio {audio}):\n{log}",
                    pipeline.is_some()
                );
            }
        }
    }
    let (encoder, pipeline) = pipeline.expect("checked above");
    Huddle {
        proc,
        http: http.expect("checked above"),
        encoder,
        pipeline,
        lines,
        warnings,
    }
}

/// A pipeline description as `gst-launch-1.0` wants it: one argument per word,
/// double quotes removed (gst-launch escapes the spaces inside an argument).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let (mut word, mut quoted, mut any) = (String::new(), false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in the pipeline: {s}");
    if any {
        words.push(word);
    }
    words
}

/// `gst-launch-1.0 -q PIPELINE`.
fn start_gst(pipeline: &str, what: &str) -> Proc {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.arg("-q").args(shell_words(pipeline));
    spawn(
        &mut cmd,
        |pid| format!("gst-launch-1.0 {what} (pid {pid})"),
        None,
        |line| eprintln!("  [gst-launch] {line}"),
    )
    .unwrap_or_else(|e| {
        panic!(
            "cannot run gst-launch-1.0 ({e}): install gstreamer1.0-tools \
             (scripts/install-deps.sh packages gstreamer1.0-tools)"
        )
    })
}

/// The pipeline Huddle runs, into a fakesink instead of Huddle's appsink.
fn pipeline_alone(pipeline: &str) -> String {
    let at = pipeline
        .rfind("! appsink")
        .unwrap_or_else(|| panic!("no appsink at the end of the pipeline: {pipeline}"));
    format!("{}! fakesink sync=false", &pipeline[..at])
}

/// The same pipeline cut before the encoder: the test pattern (and the conversion
/// to I420 the encoder is fed) alone.
fn pattern_alone(pipeline: &str, encoder: &str) -> String {
    let at = pipeline
        .find(&format!("! {encoder} "))
        .unwrap_or_else(|| panic!("no {encoder} in the pipeline: {pipeline}"));
    format!("{}! fakesink sync=false", &pipeline[..at])
}

// ---------------------------------------------------------------------------------
// Runs

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Huddle with the test pattern and the tone, nobody watching.
    Huddle,
    /// The same with one WebRTC player.
    HuddlePlayer,
    /// The pipeline alone (gst-launch-1.0, fakesink).
    Pipeline,
    /// The test pattern alone (the pipeline cut before the encoder).
    Pattern,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Huddle => "huddle",
            Kind::HuddlePlayer => "huddle + 1 player",
            Kind::Pipeline => "pipeline alone",
            Kind::Pattern => "test pattern alone",
        }
    }
}

struct Run {
    pid: i32,
    m: Measured,
    /// Player: (video kbps, pictures/s, video packets/s, audio packets/s, incidents).
    player: Option<(f64, f64, f64, f64, u64)>,
    /// Huddle: log lines in the window, WARN/ERROR lines in all.
    log_lines: u64,
    warnings: u64,
}

/// The pipelines Huddle logged, per size: (encoder, description).
type Pipelines = BTreeMap<(u32, u32), (String, String)>;

async fn run(kind: Kind, size: (u32, u32), pipelines: &mut Pipelines, ticks: f64) -> Run {
    let tag = format!("{}x{}-{kind:?}", size.0, size.1);
    match kind {
        Kind::Huddle | Kind::HuddlePlayer => {
            let h = start_huddle(size, &tag);
            let known = pipelines
                .entry(size)
                .or_insert_with(|| (h.encoder.clone(), h.pipeline.clone()));
            if known.1 != h.pipeline {
                eprintln!(
                    "  note: the pipeline changed between runs:\n  {}",
                    h.pipeline
                );
            }
            let player = if kind == Kind::HuddlePlayer {
                Some(
                    support::start_player(h.http, "viewer", ROOM, &format!("{ROOM}-{LOGIN}")).await,
                )
            } else {
                None
            };
            let mut h = h;
            eprintln!(
                "  {} {}x{}: pid {} on {}; warm-up {WARMUP:?}, measuring {MEASURE:?}",
                kind.label(),
                size.0,
                size.1,
                h.proc.pid,
                h.http
            );
            tokio::time::sleep(WARMUP).await;
            h.proc.check_running();
            let counts0 = player.as_ref().map(|p| p.counts.get());
            let lines0 = h.lines.load(Ordering::Relaxed);
            let a = snapshot(h.proc.pid);
            tokio::time::sleep(MEASURE).await;
            let b = snapshot(h.proc.pid);
            let counts1 = player.as_ref().map(|p| p.counts.get());
            let log_lines = h.lines.load(Ordering::Relaxed) - lines0;
            h.proc.check_running();
            let m = measured(h.proc.pid, &a, &b, ticks);
            let player = match (player, counts0, counts1) {
                (Some(p), Some(c0), Some(c1)) => {
                    let incidents = p.counts.incidents.load(Ordering::Relaxed);
                    p.stop().await;
                    let per_s = |i: usize| (c1[i] - c0[i]) as f64 / m.secs;
                    Some((
                        per_s(0) * 8.0 / 1000.0,
                        per_s(2),
                        per_s(1),
                        per_s(3),
                        incidents,
                    ))
                }
                _ => None,
            };
            let warnings = h.warnings.load(Ordering::Relaxed);
            let pid = h.proc.pid;
            h.proc.stop(true);
            Run {
                pid,
                m,
                player,
                log_lines,
                warnings,
            }
        }
        Kind::Pipeline | Kind::Pattern => {
            let (encoder, pipeline) = pipelines
                .get(&size)
                .expect("a Huddle run at this size comes first");
            let description = if kind == Kind::Pipeline {
                pipeline_alone(pipeline)
            } else {
                pattern_alone(pipeline, encoder)
            };
            let mut p = start_gst(&description, kind.label());
            eprintln!(
                "  {} {}x{}: pid {}; warm-up {WARMUP:?}, measuring {MEASURE:?}",
                kind.label(),
                size.0,
                size.1,
                p.pid
            );
            tokio::time::sleep(WARMUP).await;
            p.check_running();
            let a = snapshot(p.pid);
            tokio::time::sleep(MEASURE).await;
            let b = snapshot(p.pid);
            p.check_running();
            let m = measured(p.pid, &a, &b, ticks);
            let pid = p.pid;
            // gst-launch-1.0 ends on SIGTERM by the signal: not a failure.
            p.stop(false);
            Run {
                pid,
                m,
                player: None,
                log_lines: 0,
                warnings: 0,
            }
        }
    }
}

/// One line per run: every group and thread name.
fn describe(kind: Kind, size: (u32, u32), rep: usize, r: &Run) -> String {
    let m = &r.m;
    let mut s = format!(
        "rep {rep} {} {}x{}: total {:.1} % (kernel {:.1} %), RSS {:.1} MiB",
        kind.label(),
        size.0,
        size.1,
        m.pct(m.process),
        m.pct(m.process_sys),
        m.rss_kib as f64 / 1024.0
    );
    if matches!(kind, Kind::Huddle | Kind::HuddlePlayer) {
        let pid = r.pid;
        let _ = write!(
            s,
            "; GStreamer {:.1} % [{}]; huddle-video {:.1} %; huddle-audio {:.1} %; \
             tokio {:.1} % [{}]; main {:.1} %; exited threads {:.1} %; {} log lines in the window",
            m.pct(m.group(pid, Group::Gst)),
            m.by_name(|tid, n| group(pid, tid, n) == Group::Gst),
            m.pct(m.group(pid, Group::Video)),
            m.pct(m.group(pid, Group::Audio)),
            m.pct(m.group(pid, Group::Tokio)),
            m.by_name(|tid, n| group(pid, tid, n) == Group::Tokio),
            m.pct(m.group(pid, Group::Main)),
            m.pct(m.exited),
            r.log_lines,
        );
    } else {
        let _ = write!(s, "; threads [{}]", m.by_name(|_, _| true));
    }
    if let Some((first, n, others)) = m.streaming().filter(|s| s.1 > 0) {
        let _ = write!(
            s,
            "; streaming thread {:.1} % + the {n} threads it started {:.1} %",
            m.pct(first),
            m.pct(others)
        );
    }
    if let Some((kbps, fps, vpps, apps, incidents)) = r.player {
        let _ = write!(
            s,
            "; player got {kbps:.0} kbps video, {fps:.1} pictures/s, {vpps:.0} video + \
             {apps:.0} audio packets/s, {incidents} incidents; bench process {:.1} %",
            m.pct(m.bench)
        );
    }
    let _ = write!(s, "; rest of the machine {:.0} %", m.pct(m.others));
    s
}

// ---------------------------------------------------------------------------------
// Report

/// "median (min–max)" of percentages.
fn stat(mut v: Vec<f64>, unit: &str) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    if v.len() == 1 {
        format!("{mid:.1}{unit}")
    } else {
        format!("{mid:.1}{unit} ({:.1}–{:.1})", v[0], v[v.len() - 1])
    }
}

type Results = BTreeMap<(Kind, (u32, u32)), Vec<Run>>;

/// The table's rows, in the order `column` fills them.
const ROWS: [&str; 16] = [
    "**Huddle process, total**",
    "(of which in the kernel)",
    "… GStreamer threads in Huddle (test pattern, x264enc, h264parse, appsink)",
    "… `huddle-video` (appsink pull, H.264 parsing, RTP packetization, hand-off)",
    "… `huddle-audio` (440 Hz tone, Opus encoding)",
    "… tokio workers `huddle` (SFU, signalling, timers)",
    "… main thread; process total − Σ threads",
    "Reference: the same pipeline alone (`gst-launch-1.0`, fakesink)",
    "Reference: the test pattern alone (cut before the encoder)",
    "⇒ **encoder** (x264enc + h264parse) = pipeline − pattern",
    "⇒ **Huddle's own** = Huddle total − pipeline alone",
    "cross-check: Huddle's threads outside GStreamer",
    "Huddle RSS at the end of the window (MiB)",
    "Pipeline alone: RSS (MiB)",
    "Player (this bench process) CPU",
    "Rest of the machine during Huddle's windows",
];

/// One column: Huddle runs `h`, and the pipeline (`p`) and pattern (`t`) runs of the
/// same size. Differences pair run i with run i (they ran one after the other).
fn column(h: &[Run], p: &[Run], t: &[Run]) -> Vec<String> {
    const PCT: &str = " %";
    let of = |runs: &[Run], f: &dyn Fn(&Run) -> f64, unit: &str| {
        stat(runs.iter().map(f).collect(), unit)
    };
    let total = |r: &Run| r.m.pct(r.m.process);
    let grp = |g: Group| move |r: &Run| r.m.pct(r.m.group(r.pid, g));
    let diff = |a: &[Run], b: &[Run]| {
        stat(
            a.iter().zip(b).map(|(x, y)| total(x) - total(y)).collect(),
            PCT,
        )
    };
    let rss = |r: &Run| r.m.rss_kib as f64 / 1024.0;
    vec![
        of(h, &total, PCT),
        of(h, &|r| r.m.pct(r.m.process_sys), PCT),
        of(h, &grp(Group::Gst), PCT),
        of(h, &grp(Group::Video), PCT),
        of(h, &grp(Group::Audio), PCT),
        of(h, &grp(Group::Tokio), PCT),
        of(
            h,
            &|r| r.m.pct(r.m.group(r.pid, Group::Main) + r.m.exited),
            PCT,
        ),
        of(p, &total, PCT),
        of(t, &total, PCT),
        diff(p, t),
        diff(h, p),
        of(
            h,
            &|r| r.m.pct(r.m.process - r.m.group(r.pid, Group::Gst)),
            PCT,
        ),
        of(h, &rss, ""),
        of(p, &rss, ""),
        if h.iter().any(|r| r.player.is_some()) {
            of(h, &|r| r.m.pct(r.m.bench), PCT)
        } else {
            "–".into()
        },
        of(h, &|r| r.m.pct(r.m.others), PCT),
    ]
}

fn table(results: &Results) -> String {
    let empty: Vec<Run> = Vec::new();
    let runs = |k: Kind, size: (u32, u32)| results.get(&(k, size)).unwrap_or(&empty);
    let mut labels = Vec::new();
    let mut columns: Vec<Vec<String>> = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let (p, t) = (runs(Kind::Pipeline, size), runs(Kind::Pattern, size));
        labels.push(format!("{}x{}@{FPS}, nobody watching", size.0, size.1));
        columns.push(column(runs(Kind::Huddle, size), p, t));
        if i == 0 {
            labels.push(format!("{}x{}@{FPS}, one WebRTC player", size.0, size.1));
            columns.push(column(runs(Kind::HuddlePlayer, size), p, t));
        }
    }
    let mut s = String::from("| % of one core: median (min–max) |");
    for label in &labels {
        let _ = write!(s, " {label} |");
    }
    s.push_str("\n|---|");
    for _ in &labels {
        s.push_str("---:|");
    }
    s.push('\n');
    for (i, row) in ROWS.iter().enumerate() {
        let _ = write!(s, "| {row} |");
        for c in &columns {
            let _ = write!(s, " {} |", c[i]);
        }
        s.push('\n');
    }
    s
}

fn notes(results: &Results, reps: usize) -> Vec<String> {
    let mut notes = Vec::new();
    for ((kind, size), runs) in results {
        let players: Vec<_> = runs.iter().filter_map(|r| r.player).collect();
        if !players.is_empty() {
            let field = |f: fn(&(f64, f64, f64, f64, u64)) -> f64, unit: &str| {
                stat(players.iter().map(f).collect(), unit)
            };
            notes.push(format!(
                "{} at {}x{}: the player received {} of H.264, {} pictures/s, {} audio \
                 packets/s; stream incidents: {}.",
                kind.label(),
                size.0,
                size.1,
                field(|p| p.0, " kbps"),
                field(|p| p.1, ""),
                field(|p| p.3, ""),
                players.iter().map(|p| p.4).sum::<u64>()
            ));
        }
        let lines: u64 = runs.iter().map(|r| r.log_lines).sum();
        if lines > 0 {
            notes.push(format!(
                "{} at {}x{}: Huddle logged {lines} lines during the windows.",
                kind.label(),
                size.0,
                size.1
            ));
        }
        let warnings: u64 = runs.iter().map(|r| r.warnings).sum();
        if warnings > 0 {
            notes.push(format!(
                "{} at {}x{}: {warnings} WARN/ERROR lines from Huddle over {reps} runs.",
                kind.label(),
                size.0,
                size.1
            ));
        }
    }
    let others: Vec<f64> = results
        .values()
        .flatten()
        .map(|r| r.m.pct(r.m.others))
        .collect();
    if let (Some(lo), Some(hi)) = (
        others.iter().copied().reduce(f64::min),
        others.iter().copied().reduce(f64::max),
    ) {
        notes.push(format!(
            "Other processes on the machine took {lo:.0}–{hi:.0} % of one core during the \
             windows (of {} %).",
            command_output("nproc", &[])
                .and_then(|n| n.parse::<u32>().ok())
                .map_or_else(|| "?".into(), |n| (n * 100).to_string())
        ));
    }
    notes
}

fn machine(load_start: &str, load_end: &str) -> String {
    let gst = command_output("gst-launch-1.0", &["--version"])
        .and_then(|v| {
            v.lines()
                .next()
                .map(|l| l.replace("gst-launch-1.0 version", "GStreamer"))
        })
        .unwrap_or_default();
    // (One line per installed architecture.)
    let x264 = command_output("dpkg-query", &["-W", "-f=${Version}\\n", "libx264-*"])
        .and_then(|v| v.lines().next().map(|l| format!(", libx264 {l}")))
        .unwrap_or_default();
    format!(
        "{}, {gst}{x264}; load average (1/5/15 min) {load_start} at the start, {load_end} at \
         the end",
        support::machine()
    )
}

// ---------------------------------------------------------------------------------
// Capture on demand: idle CPU with no room

/// How long each idle case is measured.
const IDLE_MEASURE: Duration = Duration::from_secs(10);

/// The service with the 720p test pattern and the tone, no room at all: CPU in % of
/// one core over `IDLE_MEASURE`, after the warm-up (and, with `always_on`, once both
/// sources deliver).
fn idle_cpu(always_on: bool, ticks: f64) -> f64 {
    let sections = format!(
        r#"[device]
camera = "test-pattern"
microphone = "tone"
width = 1280
height = 720
framerate = {FPS}
bitrate_kbps = {BITRATE_KBPS}
rooms = []
always_on = {always_on}
"#
    );
    let (tx, rx) = std_mpsc::channel::<Event>();
    let mut proc = support::start_huddle(
        "huddle-device-idle-bench",
        if always_on { "always-on" } else { "on-demand" },
        &sections,
        |pid| format!("huddle (pid {pid})"),
        move |line| {
            if let Some(a) = http_address(line) {
                let _ = tx.send(Event::Http(a));
            }
            if line.contains(": delivering ") {
                let _ = tx.send(Event::Delivering(VIDEO));
            }
        },
    );
    let deadline = Instant::now() + STEP;
    let (mut up, mut delivering) = (false, 0);
    while !up || (always_on && delivering < 2) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Http(_)) => up = true,
            Ok(Event::Delivering(_)) => delivering += 1,
            Ok(_) => {}
            Err(_) => {
                proc.check_running();
                panic!("huddle (always_on {always_on}) did not come up within {STEP:?}");
            }
        }
    }
    std::thread::sleep(WARMUP);
    let pid = proc.pid.to_string();
    let (u0, s0) = process_ticks(&pid);
    let t0 = Instant::now();
    std::thread::sleep(IDLE_MEASURE);
    let (u1, s1) = process_ticks(&pid);
    let wall = t0.elapsed().as_secs_f64();
    proc.stop(true);
    ((u1 + s1) - (u0 + s0)) as f64 / ticks / wall * 100.0
}

/// Idle CPU, `always_on` true and false, `reps` times each interleaved: the text of
/// the comparison.
fn idle_comparison(reps: usize, ticks: f64) -> String {
    let (mut on, mut demand) = (Vec::new(), Vec::new());
    for rep in 1..=reps {
        on.push(idle_cpu(true, ticks));
        demand.push(idle_cpu(false, ticks));
        eprintln!(
            "  idle {rep}: always_on {:.2} %, on demand {:.2} %",
            on[rep - 1],
            demand[rep - 1]
        );
    }
    format!(
        "| % of one core, no room, 1280x720@30: median (min–max) | |\n|---|---:|\n\
         | `always_on = true` (capturing, encoding, nobody to send to) | {} |\n\
         | `always_on = false` (idle: camera and microphone closed) | {} |\n",
        stat2(on),
        stat2(demand),
    )
}

/// Median (min–max) in %, two decimals (idle figures are small).
fn stat2(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => "–".into(),
        1 => format!("{:.2} %", v[0]),
        n => format!("{:.2} % ({:.2}–{:.2})", v[n / 2], v[0], v[n - 1]),
    }
}

fn main() {
    let reps: usize = match std::env::var("HUDDLE_BENCH_REPEAT") {
        Ok(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .expect("HUDDLE_BENCH_REPEAT: a positive number"),
        Err(_) => REPEAT,
    };
    let ticks = clock_ticks_per_sec();
    if std::env::var_os("HUDDLE_BENCH_IDLE").is_some() {
        let reps = std::env::var("HUDDLE_BENCH_REPEAT")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(REPEAT);
        eprintln!(
            "device bench, idle only: {reps} repetitions, load average {}",
            loadavg()
        );
        println!("\n{}", idle_comparison(reps, ticks));
        eprintln!("load average at the end {}", loadavg());
        return;
    }
    let load_start = loadavg();
    eprintln!("device bench: {reps} repetitions, load average {load_start}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut pipelines = Pipelines::new();
    let mut results = Results::new();
    for rep in 1..=reps {
        for (i, &size) in SIZES.iter().enumerate() {
            let mut kinds = vec![Kind::Huddle, Kind::Pipeline, Kind::Pattern];
            if i == 0 {
                kinds.push(Kind::HuddlePlayer);
            }
            for kind in kinds {
                let r = rt.block_on(run(kind, size, &mut pipelines, ticks));
                let line = describe(kind, size, rep, &r);
                eprintln!("  {line}");
                results.entry((kind, size)).or_default().push(r);
            }
        }
    }
    drop(rt);
    let load_end = loadavg();

    let mut section = String::new();
    let _ = writeln!(section, "Measured {}.\n", machine(&load_start, &load_end));
    section.push_str(&table(&results));
    section.push('\n');
    for n in notes(&results, reps) {
        let _ = writeln!(section, "- {n}");
    }
    section
        .push_str("\nThe pipelines (as Huddle logs them, the appsink replaced by a fakesink):\n\n");
    for size in SIZES {
        if let Some((encoder, pipeline)) = pipelines.get(size) {
            let _ = writeln!(
                section,
                "- {}x{}: `gst-launch-1.0 {}`; the test pattern alone: the same cut before \
                 `{encoder}`, into `fakesink sync=false`.",
                size.0,
                size.1,
                pipeline_alone(pipeline),
            );
        }
    }
    println!("\n{section}");
    println!(
        "Capture on demand, idle CPU:\n\n{}",
        idle_comparison(reps, ticks)
    );
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    if std::env::var_os("HUDDLE_BENCH_REPEAT").is_none() {
        write_doc("device", &section);
    }
}
