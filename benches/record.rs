//! Recording benchmark (`make bench`, `cargo bench --bench record`): what recording an
//! RTMP publisher costs the server in CPU and memory, and how fast the offline room mix
//! runs. A measurement, not a test: no assertions about the figures.
//!
//! 1. CPU per recorded stream: the release `huddle` binary as a child process (as in
//!    `benches/rtmp.rs`) and one RTMP publisher of `benches/rtmp.rs`'s cached source
//!    (1280x720@30 H.264 2.5 Mbps + AAC, `ffmpeg -re -stream_loop -1 -c copy`), not
//!    recorded and then recorded (`?record=true` on the stream key: fragmented MP4 of
//!    the H.264 and the room's Opus), each on a fresh server, 3 s of warm-up, 10 s
//!    measured, twice in turn. Server CPU is `utime + stime` of the process and of its
//!    threads by name (the recording's writer thread is `record`). The AAC → Opus
//!    transcode is the RTMP edge's and runs in both cases.
//! 2. RSS per recording: a fresh server, VmRSS and RssAnon with nothing, after 1 and
//!    after 3 more RTMP publishers (a room each), once not recorded and once recorded.
//! 3. The offline mix (`huddle::record::mix::mix_room`, default `[records.mixer]`): 2
//!    and 4 participants joining at 0, 3, 6, 9 s, each a ~20 s fragmented MP4 (the
//!    source's H.264 copied, its audio as Opus; made once, cached), timed in this
//!    process (the call blocks); the ffmpeg's CPU from `getrusage(RUSAGE_CHILDREN)`.
//!
//! The tables go to stdout and between the markers in `docs/benchmarks.md`.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use huddle::config;
use huddle::record::catalog::{self, MixState, RoomManifest, RoomStream};
use huddle::record::mix::mix_room;
use nix::sys::resource::{getrusage, UsageWho};
use support::{
    clock_ticks_per_sec, count_warning, cpu_by_thread, http_address, loadavg, machine,
    process_ticks, rss_kib, source_file, spawn, start_huddle, status_kib, thread_ticks, write_doc,
    Proc, STEP,
};

const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(10);
/// Not recorded / recorded, this many times in turn.
const ROUNDS: usize = 2;
/// After starting sessions, before reading RSS.
const SETTLE: Duration = Duration::from_secs(2);
/// RTMP publishers in the RSS runs.
const SESSIONS: usize = 4;
/// The writer thread of a recording (`src/record/recorder.rs`).
const WRITER: &str = "record";

const ROOM: &str = "bench";
const LOGIN: &str = "rtmp";

/// The mix's inputs: participants join this far into the room, in s.
const JOINS: &[u64] = &[0, 3, 6, 9];
const PARTICIPANTS: &[usize] = &[2, 4];
const MIX_INPUT: &str = "record-bench-1280x720p30-x264-baseline-g60-2500k-opus64k-20s-frag.mp4";

// ---------------------------------------------------------------------------------
// ffmpeg

fn ffmpeg(what: String, args: &[&str]) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(args);
    let label = what.clone();
    spawn(
        &mut cmd,
        |pid| format!("{what} (ffmpeg pid {pid})"),
        None,
        move |line| eprintln!("  [{label}] {line}"),
    )
    .expect("ffmpeg is installed")
}

/// Publishes the source (H.264 + AAC) as `LOGIN` in `room`, in a loop, recorded or not.
fn publish(rtmp: SocketAddr, source: &Path, room: &str, record: bool) -> Proc {
    let query = if record { "?record=true" } else { "" };
    let url = format!("rtmp://{rtmp}/{room}/{LOGIN}{query}");
    let src = source.to_str().expect("a UTF-8 path");
    ffmpeg(
        format!("publisher {room}"),
        &[
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            src,
            "-c",
            "copy",
            "-f",
            "flv",
            &url,
        ],
    )
}

/// A mix input made once from the source: its H.264 copied, its AAC as Opus, in a
/// fragmented MP4 like a recording (cached in Cargo's target tmp dir).
fn mix_input(source: &Path) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(MIX_INPUT);
    if path.exists() {
        return path;
    }
    let part = path.with_extension("part");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(source)
        .args([
            "-c:v", "copy", "-c:a", "libopus", "-b:a", "64k", "-ar", "48000",
        ])
        .args([
            "-movflags",
            "+frag_keyframe+empty_moov+default_base_moof",
            "-f",
            "mp4",
        ])
        .arg(&part)
        .status()
        .expect("ffmpeg is installed");
    assert!(
        status.success(),
        "ffmpeg could not make the mix input: {status}"
    );
    std::fs::rename(&part, &path).expect("rename the mix input");
    path
}

// ---------------------------------------------------------------------------------
// The server process

enum Event {
    Http,
    Rtmp(SocketAddr),
    Publishing,
    /// A stream's recording started.
    Recording,
}

struct Server {
    proc: Proc,
    rtmp: SocketAddr,
    events: std_mpsc::Receiver<Event>,
    warnings: Arc<AtomicU64>,
}

impl Server {
    fn start(tag: &str) -> Server {
        const SECTIONS: &str = r#"[rooms]
max_participants = 64
max_players = 64

[rtmp]
enabled = true
listen = "127.0.0.1:0"
max_connections = 64
max_connections_per_address = 64

[device]
camera = "none"
microphone = "none"

[log]
level = "info"
"#;
        let warnings = Arc::new(AtomicU64::new(0));
        let (tx, events) = std_mpsc::channel();
        let w = Arc::clone(&warnings);
        let proc = start_huddle(
            "huddle-record-bench",
            tag,
            SECTIONS,
            |pid| format!("server (pid {pid})"),
            move |line| {
                let event = if http_address(line).is_some() {
                    Some(Event::Http)
                } else if let Some((_, r)) = line.split_once("listening on rtmp://") {
                    r.split('/')
                        .next()
                        .and_then(|a| a.parse().ok())
                        .map(Event::Rtmp)
                } else if line.contains("rtmp publisher ") && line.contains(": publishing \"") {
                    Some(Event::Publishing)
                } else if line.contains(": recording into ") && !line.contains(".room.json") {
                    Some(Event::Recording)
                } else {
                    None
                };
                if let Some(e) = event {
                    let _ = tx.send(e);
                }
                count_warning(line, &w, "server");
            },
        );
        let (mut http, mut rtmp) = (false, None);
        let deadline = Instant::now() + STEP;
        while !http || rtmp.is_none() {
            match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Http) => http = true,
                Ok(Event::Rtmp(a)) => rtmp = Some(a),
                Ok(_) => {}
                Err(_) => panic!("the server did not log its HTTP and RTMP addresses in {STEP:?}"),
            }
        }
        Server {
            proc,
            rtmp: rtmp.unwrap(),
            events,
            warnings,
        }
    }

    /// Waits until the server has logged `n` more publishes and, with `record`, `n`
    /// more recordings started.
    fn wait(&mut self, n: usize, record: bool) {
        let deadline = Instant::now() + STEP;
        let (mut published, mut recording) = (0, 0);
        while published < n || (record && recording < n) {
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Publishing) => published += 1,
                Ok(Event::Recording) => recording += 1,
                Ok(_) | Err(_) if Instant::now() < deadline => {}
                _ => {
                    self.proc.check_running();
                    panic!("{published} publishes, {recording} recordings of {n} within {STEP:?}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// CPU

struct Snapshot {
    at: Instant,
    process: (u64, u64),
    threads: HashMap<u32, (String, u64)>,
}

fn snapshot(pid: i32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        process: process_ticks(&pid.to_string()),
        threads: thread_ticks(pid),
    }
}

/// CPU seconds of one window: the process, and per thread name (threads, CPU s).
struct Cpu {
    secs: f64,
    total: f64,
    names: BTreeMap<String, (usize, f64)>,
}

impl Cpu {
    fn new(a: &Snapshot, b: &Snapshot, ticks: f64) -> Cpu {
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / ticks;
        let total = d(a.process.0 + a.process.1, b.process.0 + b.process.1);
        let names = cpu_by_thread(&a.threads, &b.threads, total, ticks);
        Cpu {
            secs: (b.at - a.at).as_secs_f64(),
            total,
            names,
        }
    }

    /// In % of one core.
    fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.secs
    }

    /// % of one core of the threads named `name` (+ 0.0: never -0.0).
    fn named(&self, name: &str) -> f64 {
        self.pct(self.names.get(name).map_or(0.0, |v| v.1) + 0.0)
    }

    /// "name ×n cpu %" per thread name, busiest first.
    fn by_name(&self) -> String {
        let mut v: Vec<_> = self.names.iter().collect();
        v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        v.iter()
            .map(|(n, (count, cpu))| match count {
                0 => format!("{n} {:.1} %", self.pct(*cpu)),
                _ => format!("`{n}` ×{count} {:.1} %", self.pct(*cpu)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Outcome {
    record: bool,
    round: usize,
    cpu: Cpu,
    rss_kib: u64,
    warnings: u64,
}

fn run(record: bool, round: usize, source: &Path, ticks: f64) -> Outcome {
    let mut server = Server::start(&format!("cpu-{record}-{round}"));
    eprintln!(
        "recorded {record}, round {round}: server pid {}",
        server.proc.pid
    );
    let mut publisher = publish(server.rtmp, source, ROOM, record);
    server.wait(1, record);
    std::thread::sleep(WARMUP);
    let s0 = snapshot(server.proc.pid);
    std::thread::sleep(MEASURE);
    let s1 = snapshot(server.proc.pid);
    let rss = rss_kib(server.proc.pid);
    let cpu = Cpu::new(&s0, &s1, ticks);
    publisher.check_running();
    publisher.stop(false);
    let warnings = server.warnings.load(Ordering::Relaxed);
    server.proc.stop(true);
    eprintln!(
        "  server {:.1} % of one core; threads: {}",
        cpu.pct(cpu.total),
        cpu.by_name()
    );
    Outcome {
        record,
        round,
        cpu,
        rss_kib: rss,
        warnings,
    }
}

/// Server (VmRSS, RssAnon) in KiB: with nothing, after 1 and after `SESSIONS` RTMP
/// publishers (a room each), recorded or not.
fn rss_run(source: &Path, record: bool) -> [(u64, u64); 3] {
    let mut server = Server::start(&format!("rss-{record}"));
    eprintln!("RSS, recorded {record}: server pid {}", server.proc.pid);
    let pid = server.proc.pid;
    let read = || (rss_kib(pid), status_kib(pid, "RssAnon"));
    std::thread::sleep(SETTLE);
    let mut rss = [read(); 3];
    let rooms: Vec<String> = (0..SESSIONS).map(|i| format!("{ROOM}{i}")).collect();
    let mut procs = Vec::new();
    for (step, range) in [(1, 0..1), (2, 1..SESSIONS)] {
        for room in &rooms[range.clone()] {
            procs.push(publish(server.rtmp, source, room, record));
        }
        server.wait(range.len(), record);
        std::thread::sleep(SETTLE);
        rss[step] = read();
    }
    for p in &mut procs {
        p.check_running();
    }
    for p in procs.into_iter().rev() {
        p.stop(false);
    }
    server.proc.stop(true);
    eprintln!("  (RSS, RssAnon) in KiB: {rss:?}");
    rss
}

// ---------------------------------------------------------------------------------
// The offline mix

struct Mixed {
    participants: usize,
    duration_s: f64,
    wall_s: f64,
    /// user + system CPU s of the children reaped in the call (the ffmpeg, ffprobes).
    cpu_s: f64,
    result: Result<u64, String>,
}

fn children_cpu_s() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(u.user_time()) + s(u.system_time())
}

/// Mixes a room of `participants` copies of `input` joining at `JOINS`, each present
/// until its file ends.
fn mix(input: &Path, participants: usize) -> Mixed {
    let dir = std::env::temp_dir().join(format!(
        "huddle-record-bench-{}-mix{participants}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mix dir");
    let length_ms = support::SOURCE_SECS as u64 * 1000;
    let streams: Vec<RoomStream> = JOINS[..participants]
        .iter()
        .enumerate()
        .map(|(i, join)| {
            let file = format!("p{i}.mp4");
            std::fs::copy(input, dir.join(&file)).expect("copy the mix input");
            RoomStream {
                stream: format!("mix-p{i}"),
                login: format!("p{i}"),
                file,
                start_ms: join * 1000,
                end_ms: Some(join * 1000 + length_ms),
            }
        })
        .collect();
    let duration_ms = streams.iter().filter_map(|s| s.end_ms).max().unwrap_or(0);
    let manifest = RoomManifest {
        room: format!("mix{participants}"),
        started: "2026-01-01T00:00:00Z".into(),
        ended: Some(format!("2026-01-01T00:00:{:02}Z", duration_ms / 1000)),
        duration_ms: Some(duration_ms),
        streams,
        mix: MixState::Pending,
        mix_file: format!("mix{participants}-mix.mp4"),
        mix_error: None,
    };
    let path = dir.join(format!("mix{participants}.room.json"));
    catalog::store(&path, &manifest).expect("write the manifest");
    let stop = AtomicBool::new(false);
    eprintln!("mix of {participants} participants, {duration_ms} ms");
    let (cpu0, t) = (children_cpu_s(), Instant::now());
    let result = mix_room(&path, &config::Mixer::default(), &stop);
    let (wall_s, cpu_s) = (t.elapsed().as_secs_f64(), children_cpu_s() - cpu0);
    let result = match result {
        Ok(out) => Ok(std::fs::metadata(out).map_or(0, |m| m.len())),
        Err(e) => Err(format!("{e:?}")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let m = Mixed {
        participants,
        duration_s: duration_ms as f64 / 1000.0,
        wall_s,
        cpu_s,
        result,
    };
    eprintln!(
        "  {:.1} s in {:.1} s ({:.2}x real time), CPU {:.1} s: {:?}",
        m.duration_s,
        m.wall_s,
        m.duration_s / m.wall_s,
        m.cpu_s,
        m.result
    );
    m
}

// ---------------------------------------------------------------------------------
// Report

fn cpu_table(rows: &[Outcome]) -> String {
    let mut s = String::from(
        "| case | server CPU, % of one core | writer thread `record` | tokio workers + main `huddle` | AAC → Opus (`rtmp-aac-opus` + `aac:src`) | server RSS at the end |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let c = &r.cpu;
        let _ = writeln!(
            s,
            "| {}, round {} | {:.1} % | {} | {:.1} % | {:.1} % | {:.1} MiB |",
            if r.record {
                "1 RTMP publisher, recorded"
            } else {
                "1 RTMP publisher, not recorded"
            },
            r.round + 1,
            c.pct(c.total),
            if r.record {
                format!("{:.1} %", c.named(WRITER))
            } else {
                "–".into()
            },
            c.named("huddle"),
            c.named("rtmp-aac-opus") + c.named("aac:src"),
            r.rss_kib as f64 / 1024.0,
        );
    }
    s
}

fn cpu_notes(rows: &[Outcome]) -> Vec<String> {
    let mean = |record: bool, f: &dyn Fn(&Cpu) -> f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.record == record)
            .map(|r| f(&r.cpu))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let total = |c: &Cpu| c.pct(c.total);
    let tokio = |c: &Cpu| c.named("huddle");
    let mut notes = vec![format!(
        "Per recorded stream (mean of {ROUNDS} rounds): {:.1} % of one core by difference \
         (recorded − not recorded; of which tokio workers {:+.1} %), the writer thread \
         `record` {:.1} % by thread.",
        mean(true, &total) - mean(false, &total),
        mean(true, &tokio) - mean(false, &tokio),
        mean(true, &|c| c.named(WRITER)),
    )];
    for r in rows {
        notes.push(format!(
            "Threads, {}, round {}: {}.",
            if r.record { "recorded" } else { "not recorded" },
            r.round + 1,
            r.cpu.by_name()
        ));
    }
    for r in rows.iter().filter(|r| r.warnings > 0) {
        notes.push(format!(
            "Recorded {}, round {}: {} server WARN/ERROR lines.",
            r.record,
            r.round + 1,
            r.warnings
        ));
    }
    notes
}

fn rss_table(plain: &[(u64, u64); 3], recorded: &[(u64, u64); 3]) -> String {
    let n = SESSIONS;
    let mib = |(v, a): (u64, u64)| {
        format!(
            "{:.1} MiB ({:.1} MiB)",
            v as f64 / 1024.0,
            a as f64 / 1024.0
        )
    };
    let each = |r: &[(u64, u64); 3], f: usize, t: usize, k: usize| {
        let d = |x: u64, y: u64| (y as f64 - x as f64) / k as f64;
        (d(r[f].0, r[t].0), d(r[f].1, r[t].1))
    };
    let mut s = String::from(
        "| server with | not recorded: RSS (anonymous) | recorded: RSS (anonymous) | per publisher, not recorded | per publisher, recorded | per recording (difference) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let rows = [
        ("nothing (started, idle)".to_string(), None),
        ("1 RTMP publisher".to_string(), Some((0, 1, 1))),
        (
            format!("{n} RTMP publishers (a room each)"),
            Some((1, 2, n - 1)),
        ),
    ];
    for (i, (what, step)) in rows.into_iter().enumerate() {
        let (a, b, c) = match step {
            Some((f, t, k)) => {
                let (p, r) = (each(plain, f, t, k), each(recorded, f, t, k));
                let kib = |(v, a): (f64, f64)| format!("{v:.0} KiB ({a:.0} KiB)");
                (kib(p), kib(r), kib((r.0 - p.0, r.1 - p.1)))
            }
            None => Default::default(),
        };
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {a} | {b} | {c} |",
            mib(plain[i]),
            mib(recorded[i])
        );
    }
    s
}

fn mix_table(rows: &[Mixed]) -> String {
    let mut s = String::from(
        "| participants (join at) | room duration | wall time | × real time | ffmpeg CPU (user + sys) | room duration / CPU time | mix file |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in rows {
        let joins: Vec<String> = JOINS[..m.participants]
            .iter()
            .map(|j| format!("{j} s"))
            .collect();
        let out = match &m.result {
            Ok(bytes) => format!("{:.1} MB", *bytes as f64 / 1e6),
            Err(e) => format!("failed: {e}"),
        };
        let _ = writeln!(
            s,
            "| {} ({}) | {:.1} s | {:.1} s | {:.2}× | {:.1} s ({:.2} cores) | {:.2}× | {out} |",
            m.participants,
            joins.join(", "),
            m.duration_s,
            m.wall_s,
            m.duration_s / m.wall_s,
            m.cpu_s,
            m.cpu_s / m.wall_s,
            m.duration_s / m.cpu_s,
        );
    }
    s
}

fn main() {
    let ticks = clock_ticks_per_sec();
    let started = Instant::now();
    let load_start = loadavg();
    let source = source_file();
    let input = mix_input(&source);

    let mut rows = Vec::new();
    for round in 0..ROUNDS {
        for record in [false, true] {
            rows.push(run(record, round, &source, ticks));
        }
    }
    let plain = rss_run(&source, false);
    let recorded = rss_run(&source, true);
    let mixes: Vec<Mixed> = PARTICIPANTS.iter().map(|&n| mix(&input, n)).collect();
    let load_end = loadavg();

    let mut section = String::new();
    let _ = writeln!(
        section,
        "Measured {}; load average (1/5/15 min) {load_start} at the start, {load_end} at the \
         end. Source: the RTMP benchmark's (1280x720@30 H.264 Constrained Baseline, 2.5 Mbps, \
         + AAC-LC 128 kbps).\n",
        machine()
    );
    section.push_str("CPU per recorded stream (10 s windows):\n\n");
    section.push_str(&cpu_table(&rows));
    section.push('\n');
    for n in cpu_notes(&rows) {
        let _ = writeln!(section, "- {n}");
    }
    section.push_str("\nRSS per recording:\n\n");
    section.push_str(&rss_table(&plain, &recorded));
    section.push_str("\nOffline mix (default `[records.mixer]`: 1280x720, 30 fps, libx264 ultrafast, one thread, AAC):\n\n");
    section.push_str(&mix_table(&mixes));
    println!("\n{section}");
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    write_doc("record", &section);
}
