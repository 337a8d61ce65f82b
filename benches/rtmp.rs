//! RTMP edge benchmark (`make bench`, `cargo bench --bench rtmp`): what an RTMP
//! publisher and an RTMP player cost the server in CPU and memory. A measurement, not
//! a test: no assertions about the figures.
//!
//! The release `huddle` binary runs as a child process with a temporary configuration
//! (`[rtmp] listen = "127.0.0.1:0"`, no camera or microphone). At start the bench
//! encodes a source file once (ffmpeg: 1280x720@30 H.264 Constrained Baseline, no
//! B-frames, a key frame every 2 s, 2.5 Mbps, and AAC-LC 128 kbps; kept in Cargo's
//! target tmp dir). Publishers are `ffmpeg -re -stream_loop -1 -i FILE -c copy -f flv
//! rtmp://…/bench/rtmp` (no encoding in the loop; ffmpeg is its own process and not
//! measured); WebRTC players are `webrtc` 0.21.1 clients in this process (as in
//! `benches/sfu.rs`); RTMP players are `ffmpeg -i rtmp://…/bench/bench-rtmp -c copy -f
//! null -`.
//!
//! Cases, each on a fresh server, 3 s of warm-up, 10 s measured: the publisher's
//! video alone (`-an`) and video + AAC, each to 10 WebRTC players (the difference is
//! the AAC → Opus transcode and the Opus forwarding); video + AAC with 0, 1 and 3 RTMP
//! players (H.264 to FLV, Opus → AAC per player). Server CPU is `utime + stime` of the
//! process and, per thread, of `/proc/PID/task/*/stat`, grouped by thread name. Then
//! RSS: a fresh server, RSS with nothing, after 1 and 4 RTMP publishers (a room each)
//! and after 1 and 4 RTMP players (one per publisher).
//!
//! The table goes to stdout and between the markers in `docs/benchmarks.md`.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use support::{
    clock_ticks_per_sec, count_warning, cpu_by_thread, http_address, loadavg, machine,
    process_ticks, rss_kib, source_file, spawn, start_huddle, start_player, status_kib,
    thread_ticks, write_doc, Player, Proc, STEP,
};

const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(10);
/// After starting sessions, before reading RSS.
const SETTLE: Duration = Duration::from_secs(2);
const WEBRTC_PLAYERS: usize = 10;
const RTMP_PLAYERS: &[usize] = &[0, 1, 3];
/// RTMP publishers (and then players) in the RSS run.
const SESSIONS: usize = 4;

const ROOM: &str = "bench";
const LOGIN: &str = "rtmp";
/// What an RTMP publisher `LOGIN` in `room` publishes.
fn stream_of(room: &str) -> String {
    format!("{room}-{LOGIN}")
}

/// An ffmpeg process (`-loglevel error`); its error lines are echoed.
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

/// Publishes the source (with its AAC or not) as `LOGIN` in `room`, in a loop.
fn publish(rtmp: SocketAddr, source: &Path, room: &str, audio: bool) -> Proc {
    let url = format!("rtmp://{rtmp}/{room}/{LOGIN}");
    let src = source.to_str().expect("a UTF-8 path");
    let mut args = vec!["-re", "-stream_loop", "-1", "-i", src];
    if !audio {
        args.push("-an");
    }
    args.extend(["-c", "copy", "-f", "flv", &url]);
    ffmpeg(format!("publisher {room}"), &args)
}

/// Plays `room`'s RTMP publisher over RTMP into a null muxer (no decoding).
fn play_rtmp(rtmp: SocketAddr, room: &str, i: usize) -> Proc {
    let url = format!("rtmp://{rtmp}/{room}/{}", stream_of(room));
    ffmpeg(
        format!("rtmp player {i} of {room}"),
        &["-i", &url, "-c", "copy", "-f", "null", "-"],
    )
}

// ---------------------------------------------------------------------------------
// The server process

enum Event {
    Http(SocketAddr),
    Rtmp(SocketAddr),
    /// An RTMP publisher's stream is published in its room.
    Publishing,
    /// An RTMP player plays.
    Playing,
}

struct Server {
    proc: Proc,
    http: SocketAddr,
    rtmp: SocketAddr,
    events: std_mpsc::Receiver<Event>,
    warnings: Arc<AtomicU64>,
}

impl Server {
    fn start(tag: &str) -> Server {
        const SECTIONS: &str = r#"[signalling]
max_sessions = 256
# Every bench client comes from 127.0.0.1.
max_sessions_per_address = 256
rate_messages_per_sec = 1000
rate_burst = 2000

[rooms]
max_participants = 64
max_players = 64

[rtmp]
enabled = true
listen = "127.0.0.1:0"
max_connections = 64

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
            "huddle-rtmp-bench",
            tag,
            SECTIONS,
            |pid| format!("server (pid {pid})"),
            move |line| {
                let event = if let Some(a) = http_address(line) {
                    Some(Event::Http(a))
                } else if let Some((_, r)) = line.split_once("listening on rtmp://") {
                    r.split('/')
                        .next()
                        .and_then(|a| a.parse().ok())
                        .map(Event::Rtmp)
                } else if line.contains("rtmp publisher ") && line.contains(": publishing \"") {
                    Some(Event::Publishing)
                } else if line.contains("rtmp player ") && line.contains(": playing (") {
                    Some(Event::Playing)
                } else {
                    None
                };
                if let Some(e) = event {
                    let _ = tx.send(e);
                }
                count_warning(line, &w, "server");
            },
        );
        let (mut http, mut rtmp) = (None, None);
        let deadline = Instant::now() + STEP;
        while http.is_none() || rtmp.is_none() {
            match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Http(a)) => http = Some(a),
                Ok(Event::Rtmp(a)) => rtmp = Some(a),
                Ok(_) => {}
                Err(_) => panic!("the server did not log its HTTP and RTMP addresses in {STEP:?}"),
            }
        }
        Server {
            proc,
            http: http.unwrap(),
            rtmp: rtmp.unwrap(),
            events,
            warnings,
        }
    }

    /// Waits until the server has logged `n` more publishes (`publishing`) or plays.
    async fn wait(&mut self, publishing: bool, n: usize) {
        let deadline = Instant::now() + STEP;
        let mut seen = 0;
        while seen < n {
            match self.events.try_recv() {
                Ok(Event::Publishing) if publishing => seen += 1,
                Ok(Event::Playing) if !publishing => seen += 1,
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    self.proc.check_running();
                    let what = if publishing { "publishes" } else { "plays" };
                    panic!("{seen} of {n} RTMP {what} within {STEP:?}");
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
    bench: (u64, u64),
}

fn snapshot(pid: i32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        process: process_ticks(&pid.to_string()),
        threads: thread_ticks(pid),
        bench: process_ticks("self"),
    }
}

/// The server's threads, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// The tokio runtime's threads and the main thread (all named `huddle`): RTMP
    /// connections (FLV parsing, RTP packetization, FLV building), the SFU task
    /// (SRTP, `sendto`), signalling, timers.
    Tokio,
    /// A publisher's AAC → Opus: `rtmp-aac-opus` (push, pull, RTP) and the pipeline's
    /// streaming thread (its appsrc is named `aac`).
    AacOpus,
    /// A player's Opus → AAC: `rtmp-aac` and the pipeline's streaming thread (appsrc
    /// `opus`).
    OpusAac,
    /// Anything else, and threads that ended in the window.
    Other,
}

fn group(name: &str) -> Group {
    match name {
        "huddle" => Group::Tokio,
        "rtmp-aac-opus" => Group::AacOpus,
        "rtmp-aac" => Group::OpusAac,
        _ if name.starts_with("aac:") => Group::AacOpus,
        _ if name.starts_with("opus:") => Group::OpusAac,
        _ => Group::Other,
    }
}

/// CPU seconds of one window.
struct Cpu {
    secs: f64,
    total: f64,
    /// Of which in the kernel.
    sys: f64,
    /// Thread name -> (threads, CPU s); threads that ended in the window as "(ended)".
    names: BTreeMap<String, (usize, f64)>,
    /// This process (the WebRTC players).
    bench: f64,
}

impl Cpu {
    fn new(a: &Snapshot, b: &Snapshot, ticks: f64) -> Cpu {
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / ticks;
        let total = d(a.process.0 + a.process.1, b.process.0 + b.process.1);
        let names = cpu_by_thread(&a.threads, &b.threads, total, ticks);
        Cpu {
            secs: (b.at - a.at).as_secs_f64(),
            total,
            sys: d(a.process.1, b.process.1),
            names,
            bench: d(a.bench.0 + a.bench.1, b.bench.0 + b.bench.1),
        }
    }

    /// In % of one core.
    fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.secs
    }

    fn group(&self, g: Group) -> f64 {
        let cpu = self.names.iter().filter(|(n, _)| group(n) == g);
        // + 0.0: an empty sum is -0.0.
        self.pct(cpu.map(|(_, v)| v.1).sum::<f64>() + 0.0)
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

// ---------------------------------------------------------------------------------
// CPU cases

struct Case {
    label: String,
    audio: bool,
    webrtc: usize,
    rtmp: usize,
}

struct Outcome {
    case: Case,
    cpu: Cpu,
    rss_kib: u64,
    /// Per WebRTC player: video kbps, video packets/s, audio packets/s.
    received: Option<(f64, f64, f64)>,
    incidents: u64,
    warnings: u64,
}

fn counts(players: &[Player]) -> [u64; 4] {
    players.iter().fold([0; 4], |mut s, p| {
        for (s, c) in s.iter_mut().zip(p.counts.get()) {
            *s += c;
        }
        s
    })
}

async fn run(case: Case, source: &Path, ticks: f64) -> Outcome {
    let mut server = Server::start(&format!("{}-{}-{}", case.audio, case.webrtc, case.rtmp));
    eprintln!("{}: server pid {}", case.label, server.proc.pid);
    let mut publisher = publish(server.rtmp, source, ROOM, case.audio);
    server.wait(true, 1).await;
    let stream = stream_of(ROOM);
    let mut players = Vec::new();
    for i in 0..case.webrtc {
        players.push(start_player(server.http, &format!("p{i:02}"), ROOM, &stream).await);
    }
    let mut rtmp_players: Vec<Proc> = (0..case.rtmp)
        .map(|i| play_rtmp(server.rtmp, ROOM, i))
        .collect();
    server.wait(false, case.rtmp).await;
    tokio::time::sleep(WARMUP).await;

    let (c0, s0) = (counts(&players), snapshot(server.proc.pid));
    tokio::time::sleep(MEASURE).await;
    let (c1, s1) = (counts(&players), snapshot(server.proc.pid));
    let rss = rss_kib(server.proc.pid);
    let cpu = Cpu::new(&s0, &s1, ticks);
    // Everyone was still there at the end of the window.
    publisher.check_running();
    for p in &mut rtmp_players {
        p.check_running();
    }
    let received = (!players.is_empty()).then(|| {
        let per = |i: usize| (c1[i] - c0[i]) as f64 / players.len() as f64 / cpu.secs;
        (per(0) * 8.0 / 1000.0, per(1), per(3))
    });
    let incidents = players
        .iter()
        .map(|p| p.counts.incidents.load(Ordering::Relaxed))
        .sum();
    for p in players {
        p.stop().await;
    }
    for p in rtmp_players {
        p.stop(false);
    }
    publisher.stop(false);
    let warnings = server.warnings.load(Ordering::Relaxed);
    server.proc.stop(true);
    eprintln!(
        "  server {:.1} % of one core; threads: {}",
        cpu.pct(cpu.total),
        cpu.by_name()
    );
    Outcome {
        case,
        cpu,
        rss_kib: rss,
        received,
        incidents,
        warnings,
    }
}

// ---------------------------------------------------------------------------------
// RSS per session

/// Server (VmRSS, RssAnon) in KiB: with nothing, after 1 and `SESSIONS` RTMP
/// publishers, after 1 and `SESSIONS` RTMP players.
async fn rss_run(source: &Path) -> [(u64, u64); 5] {
    let mut server = Server::start("rss");
    eprintln!("RSS: server pid {}", server.proc.pid);
    let pid = server.proc.pid;
    let read = || (rss_kib(pid), status_kib(pid, "RssAnon"));
    tokio::time::sleep(SETTLE).await;
    let mut rss = [read(); 5];
    let rooms: Vec<String> = (0..SESSIONS).map(|i| format!("{ROOM}{i}")).collect();
    let mut procs = Vec::new();
    for (step, range) in [(1, 0..1), (2, 1..SESSIONS)] {
        for room in &rooms[range.clone()] {
            procs.push(publish(server.rtmp, source, room, true));
        }
        server.wait(true, range.len()).await;
        tokio::time::sleep(SETTLE).await;
        rss[step] = read();
    }
    for (step, range) in [(3, 0..1), (4, 1..SESSIONS)] {
        for (i, room) in rooms[range.clone()].iter().enumerate() {
            procs.push(play_rtmp(server.rtmp, room, i));
        }
        server.wait(false, range.len()).await;
        tokio::time::sleep(SETTLE).await;
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
// Report

fn table(rows: &[Outcome]) -> String {
    let mut s = String::from(
        "| case | server CPU, % of one core (of which kernel) | tokio workers + main `huddle` | AAC → Opus threads | Opus → AAC threads | other threads | per WebRTC player: video payload kbps, video pkt/s, audio pkt/s | server RSS at the end | bench process (WebRTC players) CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let c = &r.cpu;
        let received = r.received.map_or("–".into(), |(kbps, v, a)| {
            format!("{kbps:.0} kbps, {v:.0}, {a:.1}")
        });
        let _ = writeln!(
            s,
            "| {} | {:.1} % ({:.1} %) | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {received} | {:.1} MiB | {:.1} % |",
            r.case.label,
            c.pct(c.total),
            c.pct(c.sys),
            c.group(Group::Tokio),
            c.group(Group::AacOpus),
            c.group(Group::OpusAac),
            c.group(Group::Other),
            r.rss_kib as f64 / 1024.0,
            c.pct(c.bench),
        );
    }
    s
}

fn notes(rows: &[Outcome]) -> Vec<String> {
    let mut notes = Vec::new();
    let total = |r: &Outcome| r.cpu.pct(r.cpu.total);
    let find = |audio: bool, webrtc: usize, rtmp: usize| {
        rows.iter()
            .find(|r| (r.case.audio, r.case.webrtc, r.case.rtmp) == (audio, webrtc, rtmp))
    };
    if let (Some(v), Some(av)) = (
        find(false, WEBRTC_PLAYERS, 0),
        find(true, WEBRTC_PLAYERS, 0),
    ) {
        if let Some((_, vpkt, _)) = v.received {
            notes.push(format!(
                "Video path (RTMP in, H.264 to RTP, forwarded to {WEBRTC_PLAYERS} WebRTC players): \
                 {:.1} % of one core, {:.1} µs per forwarded packet ({:.0} video packets/s in, \
                 to each player).",
                total(v),
                v.cpu.total * 1e6 / (vpkt * WEBRTC_PLAYERS as f64 * v.cpu.secs),
                vpkt
            ));
        }
        notes.push(format!(
            "AAC → Opus: {:.1} % of one core by difference (video + AAC − video only; also \
             counts forwarding 50 Opus packets/s to each of the {WEBRTC_PLAYERS} players), \
             {:.1} % by thread (the AAC → Opus threads in the video + AAC run).",
            total(av) - total(v),
            av.cpu.group(Group::AacOpus)
        ));
    }
    if let Some(base) = find(true, 0, 0) {
        for n in RTMP_PLAYERS.iter().copied().filter(|&n| n > 0) {
            let Some(r) = find(true, 0, n) else { continue };
            notes.push(format!(
                "Per RTMP player (0 → {n}): {:.1} % of one core in all, of which \
                 Opus → AAC threads {:.1} %, tokio workers {:.1} %.",
                (total(r) - total(base)) / n as f64,
                (r.cpu.group(Group::OpusAac) - base.cpu.group(Group::OpusAac)) / n as f64,
                (r.cpu.group(Group::Tokio) - base.cpu.group(Group::Tokio)) / n as f64,
            ));
        }
    }
    for r in rows {
        notes.push(format!("Threads, {}: {}.", r.case.label, r.cpu.by_name()));
    }
    for r in rows.iter().filter(|r| r.incidents > 0 || r.warnings > 0) {
        notes.push(format!(
            "{}: {} stream incidents (stopped/failed/socket ended), {} server WARN/ERROR lines.",
            r.case.label, r.incidents, r.warnings
        ));
    }
    notes
}

fn rss_table(rss: &[(u64, u64); 5]) -> String {
    let n = SESSIONS;
    let mut s = String::from(
        "| server with | RSS (of which anonymous) | added | per session |\n|---|---:|---:|---:|\n",
    );
    let rows = [
        ("nothing (started, idle)".to_string(), None),
        ("1 RTMP publisher".to_string(), Some((0, 1))),
        (
            format!("{n} RTMP publishers (a room each)"),
            Some((1, n - 1)),
        ),
        (format!("{n} publishers + 1 RTMP player"), Some((2, 1))),
        (
            format!("{n} publishers + {n} RTMP players (one each)"),
            Some((3, n - 1)),
        ),
    ];
    for (i, (what, from)) in rows.into_iter().enumerate() {
        let (v, a) = rss[i];
        let (added, each) = match from {
            Some((f, k)) => {
                let d = |x: u64, y: u64| y as f64 - x as f64;
                let (dv, da) = (d(rss[f].0, v), d(rss[f].1, a));
                (
                    format!("{dv:+.0} KiB ({da:+.0} KiB)"),
                    format!("{:.0} KiB ({:.0} KiB)", dv / k as f64, da / k as f64),
                )
            }
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            s,
            "| {what} | {:.1} MiB ({:.1} MiB) | {added} | {each} |",
            v as f64 / 1024.0,
            a as f64 / 1024.0
        );
    }
    s
}

fn main() {
    let ticks = clock_ticks_per_sec();
    let started = Instant::now();
    let load_start = loadavg();
    let source = source_file();
    let overall_kbps = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=bit_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(&source)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or("?".into(), |b| format!("{:.0}", b / 1000.0));

    let mut cases = vec![
        Case {
            label: format!("RTMP publisher, video only → {WEBRTC_PLAYERS} WebRTC players"),
            audio: false,
            webrtc: WEBRTC_PLAYERS,
            rtmp: 0,
        },
        Case {
            label: format!("RTMP publisher, video + AAC → {WEBRTC_PLAYERS} WebRTC players"),
            audio: true,
            webrtc: WEBRTC_PLAYERS,
            rtmp: 0,
        },
    ];
    cases.extend(RTMP_PLAYERS.iter().map(|&n| Case {
        label: match n {
            0 => "RTMP publisher, video + AAC, nobody watching".into(),
            1 => "RTMP publisher, video + AAC → 1 RTMP player".into(),
            _ => format!("RTMP publisher, video + AAC → {n} RTMP players"),
        },
        audio: true,
        webrtc: 0,
        rtmp: n,
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows: Vec<Outcome> = cases
        .into_iter()
        .map(|c| rt.block_on(run(c, &source, ticks)))
        .collect();
    let rss = rt.block_on(rss_run(&source));
    drop(rt);
    let load_end = loadavg();

    let mut section = String::new();
    let _ = writeln!(
        section,
        "Measured {}; load average (1/5/15 min) {load_start} at the start, {load_end} at the \
         end. Source: 1280x720@30 H.264 Constrained Baseline (x264 veryfast, no B-frames, \
         GOP 60, 2.5 Mbps) + AAC-LC 128 kbps stereo, {overall_kbps} kbps in all.\n",
        machine()
    );
    section.push_str(&table(&rows));
    section.push('\n');
    for n in notes(&rows) {
        let _ = writeln!(section, "- {n}");
    }
    section.push_str("\nRSS per RTMP session:\n\n");
    section.push_str(&rss_table(&rss));
    println!("\n{section}");
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    write_doc("rtmp", &section);
}
