//! What the benchmarks (`benches/sfu.rs`, `benches/device.rs`, `benches/rtmp.rs`,
//! `benches/record.rs`) share: `/proc` readings (per process and per thread), the
//! `huddle` child process, the RTMP source file, a Room API client over WebSocket, a
//! WebRTC player (and one that counts what it receives), the machine's description and
//! the marked sections of `docs/benchmarks.md`.
//!
//! Each bench includes it with `mod support;` (a folder with a `mod.rs`, so Cargo
//! does not take it for a bench target of its own); it expects the bench to include
//! `tests/common/webrtc_client.rs` as `webrtc_client` at its root.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::webrtc_client::{h264, opus, stream_request, Media, RtcClient};

pub mod raw_player;

/// Any one start-up, signalling or connection step.
pub const STEP: Duration = Duration::from_secs(10);

pub const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
pub const VIDEO: RtpCodecKind = RtpCodecKind::Video;

// ---------------------------------------------------------------------------------
// /proc and other commands

/// The command name and `(utime, stime)` in clock ticks of a `/proc/.../stat` line.
pub fn stat_fields(stat: &str, path: &str) -> (String, (u64, u64)) {
    let open = stat
        .find('(')
        .unwrap_or_else(|| panic!("{path}: no '(' in {stat:?}"));
    let close = stat
        .rfind(')')
        .unwrap_or_else(|| panic!("{path}: no ')' in {stat:?}"));
    let comm = stat[open + 1..close].to_owned();
    // After the name: field 3 (state), ..., 14 (utime), 15 (stime).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize, what: &str| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no {what} (field {}) in {stat:?}", i + 3))
    };
    (comm, (field(11, "utime"), field(12, "stime")))
}

/// `(utime, stime)` of a process ("self" for this one), every thread, dead ones too.
pub fn process_ticks(pid: &str) -> (u64, u64) {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    stat_fields(&stat, &path).1
}

/// Every live thread of `pid`: tid -> (name, utime + stime).
pub fn thread_ticks(pid: i32) -> HashMap<u32, (String, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = format!("{dir}/{tid}/stat");
        // A thread that ended since read_dir: its time is in the process's total.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (name, (u, s)) = stat_fields(&stat, &path);
        out.insert(tid, (name, u + s));
    }
    out
}

/// CPU seconds per thread name between two `thread_ticks` readings: name -> (threads,
/// seconds); what the process spent beyond its live threads (threads that ended in the
/// window) as "(ended)". `total` is the process's seconds over the same window.
pub fn cpu_by_thread(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    total: f64,
    ticks: f64,
) -> std::collections::BTreeMap<String, (usize, f64)> {
    let mut names: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
    for (tid, (name, t)) in after {
        let earlier = before.get(tid).map_or(0, |x| x.1);
        let e = names.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += t.saturating_sub(earlier) as f64 / ticks;
    }
    let sum: f64 = names.values().map(|v| v.1).sum();
    if total - sum > 0.0 {
        names.insert("(ended)".into(), (0, total - sum));
    }
    names
}

/// The load average (1, 5, 15 min).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// VmRSS of `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A KiB field of `/proc/PID/status` (`VmRSS`, `RssAnon`, ...).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no {field}"))
}

pub fn clock_ticks_per_sec() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

/// The trimmed stdout of a command that succeeded.
pub fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

// ---------------------------------------------------------------------------------
// The RTMP source file

/// The RTMP benches' source (`benches/rtmp.rs`, `benches/record.rs`): its encoding
/// settings name the cached file.
pub const SOURCE_SECS: u32 = 20;
pub const SOURCE: &str = "rtmp-bench-1280x720p30-x264-baseline-g60-2500k-aac128k-20s.flv";

// ---------------------------------------------------------------------------------
// The source file and ffmpeg

/// The pre-encoded source, made once (cached in Cargo's target tmp dir).
pub fn source_file() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(SOURCE);
    if path.exists() {
        return path;
    }
    let t = Instant::now();
    let part = path.with_extension("part");
    let secs = SOURCE_SECS.to_string();
    // testsrc2 with temporal noise, so that x264 has to spend the bitrate.
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30,noise=alls=12:allf=t",
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs, "-pix_fmt", "yuv420p", "-c:v", "libx264"])
        .args(["-preset", "veryfast", "-profile:v", "baseline", "-bf", "0"])
        .args([
            "-g", "60", "-b:v", "2500k", "-maxrate", "2500k", "-bufsize", "2500k",
        ])
        .args(["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "flv"])
        .arg(&part)
        .status()
        .expect("ffmpeg is installed");
    assert!(
        status.success(),
        "ffmpeg could not encode the source: {status}"
    );
    std::fs::rename(&part, &path).expect("rename the source file");
    eprintln!(
        "source {} encoded in {:.0} s",
        path.display(),
        t.elapsed().as_secs_f64()
    );
    path
}

// ---------------------------------------------------------------------------------
// Child processes

/// A child process that is stopped with SIGTERM (killed after 5 s) and never left
/// behind, even on a panic; its directory (if any) is removed with it.
pub struct Proc {
    pub what: String,
    pub child: Child,
    pub pid: i32,
    pub dir: Option<PathBuf>,
    /// Its first 200 stderr lines.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Starts `cmd` with stdin and stdout closed; a thread hands every stderr line to
/// `on_line` and keeps the first 200. `what(pid)` names it in messages.
pub fn spawn(
    cmd: &mut Command,
    what: impl FnOnce(i32) -> String,
    dir: Option<PathBuf>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::io::Result<Proc> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let stderr = child.stderr.take().expect("child stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            if let Ok(mut l) = l.lock() {
                if l.len() < 200 {
                    l.push(line);
                }
            }
        }
    });
    Ok(Proc {
        what: what(pid),
        child,
        pid,
        dir,
        log,
    })
}

impl Proc {
    /// Still running? Panics with its stderr if not.
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
            panic!("{} exited early ({status}):\n{log}", self.what);
        }
    }

    /// SIGTERM, then wait (SIGKILL after 5 s); with `expect_success`, an exit status
    /// other than success is reported.
    pub fn stop(mut self, expect_success: bool) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if expect_success && !status.success() {
                        eprintln!("  {} exited with {status}", self.what);
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    eprintln!(
                        "  {} did not stop within 5 s of SIGTERM; killing it",
                        self.what
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only still running after a panic.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts the release `huddle` binary on 127.0.0.1 (any HTTP and UDP port) with its
/// records in a fresh directory `$TMPDIR/{name}-{this process's pid}-{tag}`, which
/// goes with the process. `sections` is the rest of its configuration (TOML);
/// `on_line` sees its log (stderr).
pub fn start_huddle(
    name: &str,
    tag: &str,
    sections: &str,
    what: impl FnOnce(i32) -> String,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Proc {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("huddle.toml");
    let toml = format!(
        r#"[http]
listen = "127.0.0.1:0"
tls = false
# Every bench client comes from 127.0.0.1 (hundreds of them in the load runs).
max_connections = 2048
max_connections_per_address = 2048
connection_rate_per_address = 1000

[media]
udp_port = 0
advertise_ips = ["127.0.0.1"]

[records]
dir = "{}"

{sections}"#,
        dir.join("records").display()
    );
    std::fs::write(&config, toml).expect("write the config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle"));
    cmd.arg("--config")
        .arg(&config)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    spawn(&mut cmd, what, Some(dir), on_line).expect("start the huddle binary")
}

/// The address in Huddle's "listening on http://ADDR" log line.
pub fn http_address(line: &str) -> Option<SocketAddr> {
    line.split_once("listening on http://")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// Counts a WARN or ERROR line of Huddle's log in `warnings`; the first ten are
/// echoed as `  [label] line`.
pub fn count_warning(line: &str, warnings: &AtomicU64, label: &str) {
    if (line.contains(" WARN ") || line.contains(" ERROR "))
        && warnings.fetch_add(1, Ordering::Relaxed) < 10
    {
        eprintln!("  [{label}] {line}");
    }
}

// ---------------------------------------------------------------------------------
// Room API over WebSocket

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Ws {
    ws: WsStream,
    name: String,
    next_op: u64,
}

impl Ws {
    /// Connects, sends `connection` as `login` and waits for `getUserData`.
    pub async fn connect(addr: SocketAddr, login: &str) -> Ws {
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .unwrap_or_else(|_| panic!("{login}: WebSocket handshake timed out"))
            .unwrap_or_else(|e| panic!("{login}: WebSocket handshake: {e}"));
        let mut c = Ws {
            ws,
            name: login.to_owned(),
            next_op: 0,
        };
        c.send(json!({"message": "connection", "data": [{
            "appKey": "roomApp",
            "mediaProviders": ["WebRTC"],
            "clientVersion": "2.0",
            "clientOSVersion": "5.0 (X11; Linux x86_64)",
            "clientBrowserVersion": "Mozilla/5.0 (X11; Linux x86_64) huddle-bench",
            "custom": {"login": login},
        }]}))
        .await;
        c.wait_for("getUserData", |v| v["message"] == "getUserData")
            .await;
        c
    }

    async fn send(&mut self, v: Value) {
        tokio::time::timeout(STEP, self.ws.send(Message::text(v.to_string())))
            .await
            .unwrap_or_else(|_| panic!("{}: send timed out", self.name))
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next JSON frame; server pings are answered and skipped.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: nothing from the server within {STEP:?}", self.name)
                });
            let t = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => panic!("{}: closed by the server: {f:?}", self.name),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: socket error: {e}", self.name),
                None => panic!("{}: socket closed", self.name),
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("server JSON");
            if v["message"] == "ping" {
                self.send(json!({"message": "pong", "data": [null]})).await;
                continue;
            }
            return v;
        }
    }

    /// Reads until a frame satisfies `done` (returned); a FAILED stream status or a
    /// `fail` on the way is fatal, anything else (room events) is skipped.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if done(&v) {
                return v;
            }
            let d = &v["data"][0];
            let failed = v["message"] == "fail"
                || (v["message"] == "notifyStreamStatusEvent" && d["status"] == "FAILED")
                || (v["message"] == "DataStatusEvent" && d["status"] == "FAILED");
            assert!(
                !failed,
                "{}: failure while waiting for {what}: {v}",
                self.name
            );
        }
    }

    pub async fn join(&mut self, room: &str) {
        self.next_op += 1;
        let op = format!("{}-op-{}", self.name, self.next_op);
        self.send(json!({"message": "sendData", "data": [{
            "operationId": op,
            "payload": {"command": "join", "options": {"name": room, "record": false}},
        }]}))
        .await;
        self.wait_for("join ACCEPTED", |v| {
            v["message"] == "DataStatusEvent"
                && v["data"][0]["operationId"] == op.as_str()
                && v["data"][0]["status"] == "ACCEPTED"
        })
        .await;
    }

    /// Sends `publishStream` (`publish`) or `playStream` of `stream` in `room` with
    /// `offer`; returns the answer.
    pub async fn offer(
        &mut self,
        room: &str,
        stream: &str,
        msid: &str,
        publish: bool,
        offer: &str,
    ) -> String {
        self.send(stream_request(
            publish,
            msid,
            stream,
            room,
            offer,
            (true, true),
        ))
        .await;
        let v = self
            .wait_for("setRemoteSDP", |v| {
                v["message"] == "setRemoteSDP" && v["data"][0] == msid
            })
            .await;
        v["data"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{}: setRemoteSDP without SDP: {v}", self.name))
            .to_owned()
    }

    /// `sendData` `setLayer`: the simulcast layer (`low`, `medium`, `high` or `auto`)
    /// the play `msid` of this session wants; waits for its ACCEPTED.
    pub async fn set_layer(&mut self, msid: &str, layer: &str) {
        self.next_op += 1;
        let op = format!("{}-op-{}", self.name, self.next_op);
        self.send(json!({"message": "sendData", "data": [{
            "operationId": op,
            "payload": {"command": "setLayer", "options": {"mediaSessionId": msid, "layer": layer}},
        }]}))
        .await;
        self.wait_for("setLayer ACCEPTED", |v| {
            v["message"] == "DataStatusEvent"
                && v["data"][0]["operationId"] == op.as_str()
                && v["data"][0]["status"] == "ACCEPTED"
        })
        .await;
    }

    pub async fn wait_status(&mut self, msid: &str, status: &str) {
        self.wait_for(status, |v| {
            v["message"] == "notifyStreamStatusEvent"
                && v["data"][0]["mediaSessionId"] == msid
                && v["data"][0]["status"] == status
        })
        .await;
    }

    /// Keeps the session alive in the background (pongs) until `stop`; counts stream
    /// status changes other than PENDING/PUBLISHING/PLAYING (a stream stopped or
    /// failed) and a socket that ended in `incidents`.
    pub fn keep_alive(
        mut self,
        mut stop: watch::Receiver<bool>,
        incidents: Arc<AtomicU64>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = self.ws.next() => m,
                };
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        incidents.fetch_add(1, Ordering::Relaxed);
                        eprintln!("  {}: signalling socket ended", self.name);
                        return;
                    }
                };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                let status = v["data"][0]["status"].as_str();
                if v["message"] == "ping" {
                    let pong = json!({"message": "pong", "data": [null]}).to_string();
                    let _ = self.ws.send(Message::text(pong)).await;
                } else if v["message"] == "notifyStreamStatusEvent"
                    && !matches!(status, Some("PENDING" | "PUBLISHING" | "PLAYING"))
                {
                    incidents.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  {}: {v}", self.name);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        })
    }
}

// ---------------------------------------------------------------------------------
// SDP

/// The id an SDP gives the header extension `uri` (the first one listed).
pub fn extmap_id(sdp: &str, uri: &str) -> u8 {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=extmap:"))
        .find_map(|l| {
            let (id, rest) = l.split_once(' ')?;
            (rest.split_whitespace().next() == Some(uri))
                .then(|| id.split('/').next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no extmap {uri} in\n{sdp}"))
}

/// The mid of an SDP's (first) video m-line.
pub fn video_mid(sdp: &str) -> String {
    let video = sdp
        .split("m=video")
        .nth(1)
        .unwrap_or_else(|| panic!("no video m-line in\n{sdp}"));
    video
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .unwrap_or_else(|| panic!("no mid in the video m-line of\n{sdp}"))
        .to_owned()
}

/// A WebRTC player of `stream` in `room` (Opus and H.264), logged in as `login`:
/// joined, PLAYING and connected.
pub async fn play(addr: SocketAddr, login: &str, room: &str, stream: &str) -> (Ws, RtcClient) {
    let mut ws = Ws::connect(addr, login).await;
    ws.join(room).await;
    let mut pc = RtcClient::player(
        &format!("{login}-pc"),
        &[(AUDIO, opus(111)), (VIDEO, h264(106))],
    )
    .await;
    let offer = pc.create_offer().await;
    let msid = format!("m-{login}");
    let answer = ws.offer(room, stream, &msid, false, &offer).await;
    pc.apply_answer(&answer).await;
    ws.wait_status(&msid, "PLAYING").await;
    pc.wait_connected(STEP).await;
    (ws, pc)
}

// ---------------------------------------------------------------------------------
// A WebRTC player that counts what it receives

/// What the player received.
#[derive(Default)]
pub struct Counts {
    pub video_bytes: AtomicU64,
    pub video_packets: AtomicU64,
    /// RTP packets with the marker bit: pictures.
    pub video_frames: AtomicU64,
    pub audio_packets: AtomicU64,
    /// Stream stopped/failed, socket ended.
    pub incidents: Arc<AtomicU64>,
}

impl Counts {
    /// Video bytes, video packets, pictures, audio packets.
    pub fn get(&self) -> [u64; 4] {
        [
            self.video_bytes.load(Ordering::Relaxed),
            self.video_packets.load(Ordering::Relaxed),
            self.video_frames.load(Ordering::Relaxed),
            self.audio_packets.load(Ordering::Relaxed),
        ]
    }
}

/// A playing [`play`]er whose media a task counts until [`Player::stop`].
pub struct Player {
    stop: watch::Sender<bool>,
    pub counts: Arc<Counts>,
    media: JoinHandle<RtcClient>,
    session: JoinHandle<()>,
}

/// [`play`]s `stream` in `room` as `login` and counts what arrives.
pub async fn start_player(addr: SocketAddr, login: &str, room: &str, stream: &str) -> Player {
    let (ws, mut pc) = play(addr, login, room, stream).await;
    let (stop_tx, stop) = watch::channel(false);
    let counts = Arc::new(Counts::default());
    let media = {
        let (counts, mut stop) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.changed() => break,
                    m = pc.next_media(Duration::from_secs(1)) => m,
                };
                match m {
                    Some(Media::Rtp { kind, packet }) if kind == VIDEO => {
                        let len = packet.payload.len() as u64;
                        counts.video_bytes.fetch_add(len, Ordering::Relaxed);
                        counts.video_packets.fetch_add(1, Ordering::Relaxed);
                        if packet.header.marker {
                            counts.video_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Media::Rtp { .. }) => {
                        counts.audio_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Media::Ended { .. }) => {
                        counts.incidents.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            pc
        })
    };
    // The signalling session: pongs, and stream status changes counted as incidents.
    let session = ws.keep_alive(stop, Arc::clone(&counts.incidents));
    Player {
        stop: stop_tx,
        counts,
        media,
        session,
    }
}

impl Player {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Ok(Ok(pc)) = tokio::time::timeout(STEP, self.media).await {
            pc.close().await;
        }
        let _ = tokio::time::timeout(STEP, self.session).await;
    }
}

// ---------------------------------------------------------------------------------
// Report

/// "DATE, CPU, N CPUs (nproc), commit C, rustc VERSION, release build".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Hardware"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = command_output("nproc", &[]).unwrap_or_else(|| "?".into());
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let root = env!("CARGO_MANIFEST_DIR");
    let commit = command_output("git", &["-C", root, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    let dirty = command_output(
        "git",
        &[
            "-C",
            root,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.lock",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let rustc = command_output("rustc", &["--version"]).unwrap_or_default();
    format!(
        "{date}, {cpu}, {nproc} CPUs (nproc), commit {commit}{}, {rustc}, release build",
        if dirty {
            " with uncommitted changes in src/ or Cargo.lock"
        } else {
            ""
        }
    )
}

/// Puts `section` between the markers `<!-- NAME-bench:begin -->` and
/// `<!-- NAME-bench:end -->` of `docs/benchmarks.md` (appended with them when they
/// are not there).
pub fn write_doc(name: &str, section: &str) {
    let begin = format!("<!-- {name}-bench:begin -->");
    let end = format!("<!-- {name}-bench:end -->");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{section}{}", &old[..b], &old[e..])
        }
        _ => format!("{}\n\n{begin}\n{section}{end}\n", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write docs/benchmarks.md");
    eprintln!("figures written to {}", path.display());
}
