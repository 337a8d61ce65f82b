//! SFU benchmark (`make bench`, `cargo bench --bench sfu`): not a test, no timing
//! assertions.
//!
//! The real `huddle` binary (release) runs as a child process on 127.0.0.1 with a
//! temporary configuration. One publisher (a `webrtc` 0.21.1 client, like the
//! integration tests' browser stand-in) sends H.264 at 2.5 Mbps (30 fps, a key frame
//! every 2 s, 1100-byte packets) and Opus (20 ms, 80 bytes); N players, each with its
//! own WebSocket session joined to the room, play the stream. Every payload carries
//! the packet's index and its send time (nanoseconds of this process's monotonic
//! clock), so each player measures latency (receive time - send time) and loss
//! (indices that never arrived, after NACK retransmissions).
//!
//! For each N: a fresh server, the publisher, baseline RSS, N players, 3 s warm-up,
//! 10 s measured. Server CPU is `utime + stime` of the server process over the
//! window; per forwarded packet it is divided by N x packets sent. The table goes to
//! stdout and, for the default plan, between the markers in `docs/benchmarks.md`.
//!
//! `HUDDLE_BENCH_PLAYERS=1,5` runs another plan (printed only, the doc is left alone).

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use support::{
    clock_ticks_per_sec, count_warning, http_address, machine, process_ticks, rss_kib,
    start_huddle, write_doc, Proc, Ws, AUDIO, STEP, VIDEO,
};
use webrtc_client::{h264, opus, rtp_packet, Media, RtcClient};

const PLAYERS: &[usize] = &[1, 10, 30];
const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(10);
/// After the window: packets of the window still in flight (or retransmitted) count.
const GRACE: Duration = Duration::from_millis(500);

const ROOM: &str = "bench";
const STREAM: &str = "bench-pub-cam";
const PUB_AUDIO_SSRC: u32 = 0x1111_1111;
const PUB_VIDEO_SSRC: u32 = 0x2222_2222;

/// 2.5 Mbps of H.264 payload: per 2 s (60 frames) one 37-packet key frame and 59
/// 9-packet frames of 1100 bytes = 624 800 bytes.
const FPS: u64 = 30;
const KEY_FRAME_EVERY: u64 = 60;
const KEY_FRAME_PACKETS: usize = 37;
const DELTA_FRAME_PACKETS: usize = 9;
const VIDEO_PAYLOAD: usize = 1100;
const AUDIO_PAYLOAD: usize = 80;
/// Where the index and send time sit in a payload: after the FU-A indicator and
/// header (video), after the Opus TOC byte (audio).
const VIDEO_STAMP_AT: usize = 2;
const AUDIO_STAMP_AT: usize = 1;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds of this process's monotonic clock.
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------
// The server process

struct Server {
    proc: Proc,
    http: SocketAddr,
    media_port: u16,
    /// Server log lines at WARN or ERROR (the first few are echoed).
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

[device]
camera = "none"
microphone = "none"

[log]
level = "info"
"#;
        let warnings = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std_mpsc::channel::<(Option<SocketAddr>, Option<u16>)>();
        let w = Arc::clone(&warnings);
        let proc = start_huddle(
            "huddle-bench",
            tag,
            SECTIONS,
            |_| "server".into(),
            move |line| {
                let http = http_address(line);
                let media = line
                    .split_once("media on UDP port ")
                    .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse().ok());
                if http.is_some() || media.is_some() {
                    let _ = tx.send((http, media));
                }
                // Counted; the first few echoed.
                count_warning(line, &w, "server");
            },
        );
        let (mut http, mut media_port) = (None, None);
        let deadline = Instant::now() + STEP;
        while http.is_none() || media_port.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((h, m)) => {
                    http = http.or(h);
                    media_port = media_port.or(m);
                }
                Err(_) => {
                    panic!(
                        "the server did not log its HTTP address and media port within {STEP:?}"
                    );
                }
            }
        }
        Server {
            proc,
            http: http.unwrap(),
            media_port: media_port.unwrap(),
            warnings,
        }
    }

    /// SIGTERM, then wait (SIGKILL after 5 s); the server's directory goes with it.
    fn stop(self) {
        self.proc.stop(true);
    }
}

// ---------------------------------------------------------------------------------
// The publisher's camera and microphone

#[derive(Default)]
struct Sent {
    /// Next packet index (audio and video share the index space).
    next: AtomicU64,
    video: AtomicU64,
    audio: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

fn stamped(first: &[u8], index: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(first);
    p.extend_from_slice(&index.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
    p.extend((p.len()..len).map(|i| (i as u64).wrapping_mul(index | 1) as u8));
    p
}

async fn write(track: &TrackLocalStaticRTP, p: Packet, sent: &Sent) {
    let len = p.payload.len() as u64;
    match track.write_rtp(p).await {
        Ok(()) => {
            sent.bytes.fetch_add(len, Ordering::Relaxed);
        }
        Err(_) => {
            sent.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The publisher's tracks and where their RTP streams are.
struct Camera {
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticRTP>,
    /// Negotiated payload types (video, audio).
    pts: (u8, u8),
    sent: Arc<Sent>,
    frame: u64,
    video_seq: u16,
    audio_seq: u16,
    audio_ts: u32,
}

impl Camera {
    /// One video frame, its FU-A packets back to back (as an encoder hands them over).
    async fn video_frame(&mut self) {
        let (n, nal) = if self.frame.is_multiple_of(KEY_FRAME_EVERY) {
            (KEY_FRAME_PACKETS, 5u8)
        } else {
            (DELTA_FRAME_PACKETS, 1u8)
        };
        let ts = (self.frame * 90_000 / FPS) as u32;
        for i in 0..n {
            let last = i + 1 == n;
            // FU-A: start bit on the first fragment, end bit on the last.
            let fu = nal | if i == 0 { 0x80 } else { 0 } | if last { 0x40 } else { 0 };
            let index = self.sent.next.fetch_add(1, Ordering::Relaxed);
            let payload = stamped(&[0x60 | 28, fu], index, VIDEO_PAYLOAD);
            let p = rtp_packet(
                self.pts.0,
                PUB_VIDEO_SSRC,
                self.video_seq,
                ts,
                last,
                payload,
            );
            write(&self.video, p, &self.sent).await;
            self.sent.video.fetch_add(1, Ordering::Relaxed);
            self.video_seq = self.video_seq.wrapping_add(1);
        }
        self.frame += 1;
    }

    /// One 20 ms Opus packet.
    async fn audio_packet(&mut self) {
        let index = self.sent.next.fetch_add(1, Ordering::Relaxed);
        let payload = stamped(&[0xfc], index, AUDIO_PAYLOAD);
        let p = rtp_packet(
            self.pts.1,
            PUB_AUDIO_SSRC,
            self.audio_seq,
            self.audio_ts,
            false,
            payload,
        );
        write(&self.audio, p, &self.sent).await;
        self.sent.audio.fetch_add(1, Ordering::Relaxed);
        self.audio_seq = self.audio_seq.wrapping_add(1);
        self.audio_ts = self.audio_ts.wrapping_add(960);
    }

    /// Sends until `stop`: a video frame every 1/30 s, an Opus packet every 20 ms.
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut video = tokio::time::interval(Duration::from_nanos(1_000_000_000 / FPS));
        let mut audio = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = video.tick() => self.video_frame().await,
                _ = audio.tick() => self.audio_packet().await,
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Players

/// What one player received: (packet index, latency in µs), in arrival order.
struct Received {
    pc: RtcClient,
    got: Vec<(u64, u32)>,
}

/// The index and send time a payload of `kind` carries.
fn stamp_of(kind: RtpCodecKind, payload: &[u8]) -> Option<(u64, u64)> {
    let at = if kind == VIDEO {
        VIDEO_STAMP_AT
    } else {
        AUDIO_STAMP_AT
    };
    let stamp = payload.get(at..at + 16)?;
    Some((
        u64::from_be_bytes(stamp[..8].try_into().ok()?),
        u64::from_be_bytes(stamp[8..].try_into().ok()?),
    ))
}

async fn receive(mut pc: RtcClient, mut stop: watch::Receiver<bool>) -> Received {
    let mut got = Vec::with_capacity(64 * 1024);
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = pc.next_media(Duration::from_secs(1)) => m,
        };
        let Some(Media::Rtp { kind, packet }) = m else {
            continue;
        };
        let now = now_ns();
        if let Some((index, sent)) = stamp_of(kind, &packet.payload) {
            let micros = now.saturating_sub(sent) / 1000;
            got.push((index, micros.min(u64::from(u32::MAX)) as u32));
        }
    }
    Received { pc, got }
}

async fn publish(addr: SocketAddr) -> (Ws, RtcClient) {
    let mut ws = Ws::connect(addr, "pub").await;
    ws.join(ROOM).await;
    let mut pc = RtcClient::publisher(
        "pub-pc",
        &[
            (AUDIO, opus(111), PUB_AUDIO_SSRC),
            (VIDEO, h264(125), PUB_VIDEO_SSRC),
        ],
    )
    .await;
    let offer = pc.create_offer().await;
    let answer = ws.offer(ROOM, STREAM, "m-pub", true, &offer).await;
    pc.apply_answer(&answer).await;
    ws.wait_status("m-pub", "PUBLISHING").await;
    pc.wait_connected(STEP).await;
    (ws, pc)
}

// ---------------------------------------------------------------------------------
// One run

struct Row {
    players: usize,
    secs: f64,
    sent_video: u64,
    sent_audio: u64,
    sent_bytes: u64,
    received: u64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_cpu_s: f64,
    /// Of which in the kernel (system time).
    server_sys_s: f64,
    client_cpu_s: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    incidents: u64,
    server_warnings: u64,
}

impl Row {
    fn sent(&self) -> u64 {
        self.sent_video + self.sent_audio
    }
    fn forwarded(&self) -> u64 {
        self.sent() * self.players as u64
    }
    fn us_per_forwarded(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.forwarded().max(1) as f64
    }
    fn loss_pct(&self) -> f64 {
        100.0 * self.lost as f64 / self.forwarded().max(1) as f64
    }
    fn rss_per_player_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.players as f64
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn run(players: usize, ticks: f64) -> Row {
    let server = Server::start(&players.to_string());
    let addr = server.http;
    eprintln!(
        "N = {players}: server pid {} on {addr}, media UDP {}",
        server.proc.pid, server.media_port
    );
    let (stop_tx, stop) = watch::channel(false);
    let incidents = Arc::new(AtomicU64::new(0));

    let (pub_ws, pub_pc) = publish(addr).await;
    let mut sessions = vec![pub_ws.keep_alive(stop.clone(), Arc::clone(&incidents))];
    let sent = Arc::new(Sent::default());
    let pts = (
        pub_pc.negotiated_pt(VIDEO).await,
        pub_pc.negotiated_pt(AUDIO).await,
    );
    let camera = Camera {
        video: Arc::clone(&pub_pc.send_track(VIDEO).track),
        audio: Arc::clone(&pub_pc.send_track(AUDIO).track),
        pts,
        sent: Arc::clone(&sent),
        frame: 0,
        video_seq: 0,
        audio_seq: 0,
        audio_ts: 0,
    };
    let camera = tokio::spawn(camera.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(server.proc.pid);

    let t_setup = Instant::now();
    let mut receivers = Vec::new();
    for i in 0..players {
        let (ws, pc) = support::play(addr, &format!("p{i:02}"), ROOM, STREAM).await;
        sessions.push(ws.keep_alive(stop.clone(), Arc::clone(&incidents)));
        receivers.push(tokio::spawn(receive(pc, stop.clone())));
    }
    eprintln!(
        "  {players} players up in {:.1} s; warm-up {WARMUP:?}, measuring {MEASURE:?}",
        t_setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(WARMUP).await;

    let (server_t0, client_t0) = (
        process_ticks(&server.proc.pid.to_string()),
        process_ticks("self"),
    );
    let (v0, a0, b0) = (
        sent.video.load(Ordering::Relaxed),
        sent.audio.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    let first = sent.next.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let last = sent.next.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (server_t1, client_t1) = (
        process_ticks(&server.proc.pid.to_string()),
        process_ticks("self"),
    );
    let rss_after_kib = rss_kib(server.proc.pid);
    let (v1, a1, b1) = (
        sent.video.load(Ordering::Relaxed),
        sent.audio.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    tokio::time::sleep(GRACE).await;

    // Stop everything; collect what the players got.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(STEP, camera).await;
    let window = (last - first) as usize;
    let (mut received, mut lost) = (0u64, 0u64);
    let mut latencies: Vec<u32> = Vec::new();
    let mut pcs = vec![pub_pc];
    for r in receivers {
        let Ok(Ok(r)) = tokio::time::timeout(STEP, r).await else {
            panic!("a player task did not stop");
        };
        let mut seen = vec![false; window];
        for &(index, micros) in &r.got {
            if index < first || index >= last {
                continue;
            }
            let slot = &mut seen[(index - first) as usize];
            if !*slot {
                *slot = true;
                latencies.push(micros);
            }
        }
        let got = seen.iter().filter(|s| **s).count() as u64;
        received += got;
        lost += window as u64 - got;
        pcs.push(r.pc);
    }
    latencies.sort_unstable();
    let server_warnings = server.warnings.load(Ordering::Relaxed);
    server.stop();
    futures_util::future::join_all(pcs.iter().map(|pc| pc.close())).await;
    for s in sessions {
        let _ = tokio::time::timeout(STEP, s).await;
    }

    Row {
        players,
        secs,
        sent_video: v1 - v0,
        sent_audio: a1 - a0,
        sent_bytes: b1 - b0,
        received,
        lost,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies
            .last()
            .map_or(f64::NAN, |m| f64::from(*m) / 1000.0),
        server_cpu_s: (server_t1.0 + server_t1.1 - server_t0.0 - server_t0.1) as f64 / ticks,
        server_sys_s: (server_t1.1 - server_t0.1) as f64 / ticks,
        client_cpu_s: (client_t1.0 + client_t1.1 - client_t0.0 - client_t0.1) as f64 / ticks,
        rss_before_kib,
        rss_after_kib,
        incidents: incidents.load(Ordering::Relaxed),
        server_warnings,
    }
}

// ---------------------------------------------------------------------------------
// Report

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| players | in: pkt/s (payload Mbps) | out: pkt/s received | server CPU, % of one core (of which kernel) | server CPU per forwarded packet | latency p50 / p99 / max | loss | server RSS before → after players | RSS per player | bench process (clients) CPU, % of one core |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} ({:.2}) | {:.0} | {:.1} % ({:.1} %) | {:.1} µs | {:.2} / {:.2} / {:.1} ms | {:.3} % ({} of {}) | {:.1} → {:.1} MiB | {:.0} KiB | {:.0} % |",
            r.players,
            r.sent() as f64 / r.secs,
            r.sent_bytes as f64 * 8.0 / r.secs / 1e6,
            r.received as f64 / r.secs,
            100.0 * r.server_cpu_s / r.secs,
            100.0 * r.server_sys_s / r.secs,
            r.us_per_forwarded(),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.loss_pct(),
            r.lost,
            r.forwarded(),
            r.rss_before_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.rss_per_player_kib(),
            100.0 * r.client_cpu_s / r.secs,
        );
    }
    s
}

fn main() {
    EPOCH.get_or_init(Instant::now);
    let plan: Vec<usize> = match std::env::var("HUDDLE_BENCH_PLAYERS") {
        Ok(s) => s
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("HUDDLE_BENCH_PLAYERS: numbers, e.g. 1,10")
            })
            .collect(),
        Err(_) => PLAYERS.to_vec(),
    };
    let ticks = clock_ticks_per_sec();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let rows: Vec<Row> = plan.iter().map(|&n| rt.block_on(run(n, ticks))).collect();
    drop(rt);

    let mut section = String::new();
    let _ = writeln!(section, "Measured {}.\n", machine());
    section.push_str(&table(&rows));
    let mut notes: Vec<String> = Vec::new();
    // What one more forwarded packet costs: the difference to the smallest run, which
    // carries the fixed cost (the publisher's leg, RTCP, timers, signalling).
    if let Some(base) = rows.iter().min_by_key(|r| r.players) {
        for r in rows.iter().filter(|r| r.players > base.players) {
            let cpu = r.server_cpu_s / r.secs - base.server_cpu_s / base.secs;
            let pkts = r.sent() as f64 / r.secs * (r.players - base.players) as f64;
            notes.push(format!(
                "Marginal server CPU from N = {} to N = {}: {:.1} µs per added forwarded packet.",
                base.players,
                r.players,
                cpu * 1e6 / pkts
            ));
        }
    }
    notes.extend(
        rows.iter()
            .filter(|r| r.incidents > 0 || r.server_warnings > 0)
            .map(|r| {
                format!(
                    "N = {}: {} stream incidents (stopped/failed/socket ended), {} server WARN/ERROR lines.",
                    r.players, r.incidents, r.server_warnings
                )
            }),
    );
    if !notes.is_empty() {
        section.push('\n');
        for n in notes {
            let _ = writeln!(section, "- {n}");
        }
    }
    println!("\n{section}");
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    if plan == PLAYERS {
        write_doc("sfu", &section);
    }
}
