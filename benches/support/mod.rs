//! What the benchmarks (`benches/sfu.rs`, `benches/device.rs`, `benches/rtmp.rs`,
//! `benches/record.rs`, `benches/janus.rs`) share: `/proc` readings (per process and
//! per thread), the `huddle` child process, the RTMP source file, a Room API client over
//! WebSocket, a WebRTC player (and one that counts what it receives), the SFU load
//! (the stamped camera, the players that measure latency and loss, one measured run:
//! `run_on`, `measure`), the machine's description and the marked sections of
//! `docs/benchmarks.md`.
//!
//! Each bench includes it with `mod support;` (a folder with a `mod.rs`, so Cargo
//! does not take it for a bench target of its own); it expects the bench to include
//! `tests/common/webrtc_client.rs` as `webrtc_client` at its root.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;

use crate::webrtc_client::{h264, opus, rtp_packet, stream_request, Media, RtcClient, Transport};

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
/// records in a fresh directory `$TMPDIR/{name}-{tag}-{this process's pid}`, which
/// goes with the process. `sections` is the rest of its configuration (TOML);
/// `on_line` sees its log (stderr).
pub fn start_huddle(
    name: &str,
    tag: &str,
    sections: &str,
    what: impl FnOnce(i32) -> String,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Proc {
    let (mut cmd, dir) = huddle_command(LOOPBACK, &format!("{name}-{tag}"), sections);
    spawn(&mut cmd, what, Some(dir), on_line).expect("start the huddle binary")
}

/// The command of [`start_huddle`] and its directory `$TMPDIR/{name}-{this process's
/// pid}` (made, with the configuration in it), listening (HTTP) on `net.server` and
/// advertising it as the media address, in `net.server_netns` if any.
/// `sections`: the rest of the configuration; its lines before the first table
/// header are more keys of `[media]` (`media_workers`).
pub fn huddle_command(net: Net, name: &str, sections: &str) -> (Command, PathBuf) {
    let ip = net.server;
    let (media, sections) = match sections.find("\n[") {
        Some(i) if !sections.starts_with('[') => sections.split_at(i + 1),
        _ => ("", sections),
    };
    // `HUDDLE_BENCH_WORKERS`: the media workers of every server a run does not set
    // them for (default: the machine's cores, as the service).
    let mut media = match std::env::var("HUDDLE_BENCH_WORKERS") {
        Ok(w) if media.is_empty() => format!("workers = {}\n", w.trim()),
        _ => media.to_owned(),
    };
    // `HUDDLE_BENCH_UDP_GSO=false`: every server sends datagram by datagram.
    if let Ok(gso) = std::env::var("HUDDLE_BENCH_UDP_GSO") {
        media.push_str(&format!("udp_gso = {}\n", gso.trim()));
    }
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("huddle.toml");
    let toml = format!(
        r#"[http]
listen = "{ip}:0"
tls = false
# Every bench client comes from 127.0.0.1 (hundreds of them in the load runs).
max_connections = 2048
max_connections_per_address = 2048
connection_rate_per_address = 1000

[media]
udp_port = 0
advertise_ips = ["{ip}"]
{media}
[records]
dir = "{}"

{sections}"#,
        dir.join("records").display()
    );
    std::fs::write(&config, toml).expect("write the config");
    let mut cmd = net.server_command(env!("CARGO_BIN_EXE_huddle"));
    cmd.arg("--config")
        .arg(&config)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    (cmd, dir)
}

/// `sections` with `[media] workers` set (see `huddle_command`).
pub fn media_workers(workers: usize, sections: &str) -> String {
    format!("workers = {workers}\n{sections}")
}

/// One HTTP/1.1 request to the server at `addr` (`Connection: close`, bounded by
/// `STEP`): the status and the body; `None` when it fails.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        c.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        // Chunked bodies (axum's JSON) are read without their chunk sizes.
        Some((status, dechunk(body)))
    };
    tokio::time::timeout(STEP, exchange).await.ok()?
}

/// A body without its chunk-size lines if it looks chunked, else as it is.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else {
            return body.to_owned();
        };
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or("");
    }
}

/// The value of an exact `/metrics` sample line (`name{labels}`) of the server at
/// `addr`; `None` when the scrape or the sample is missing.
pub async fn metric(addr: SocketAddr, sample: String) -> Option<f64> {
    let (_, body) = http(addr, "GET", "/metrics", None).await?;
    body.lines().find_map(|l| {
        l.strip_prefix(sample.as_str())?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
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

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

    /// The socket and the login, for a client that reads the session itself
    /// (`benches/soak.rs`).
    pub fn into_parts(self) -> (WsStream, String) {
        (self.ws, self.name)
    }

    async fn send(&mut self, v: Value) {
        send_json(&mut self.ws, &self.name, v).await;
    }

    /// The next JSON frame; server pings are answered and skipped.
    async fn recv(&mut self) -> Value {
        loop {
            let v = recv_json(&mut self.ws, &self.name).await;
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
        self,
        stop: watch::Receiver<bool>,
        incidents: Arc<AtomicU64>,
    ) -> JoinHandle<()> {
        let keep = Keep {
            reply: |v| (v["message"] == "ping").then(|| json!({"message": "pong", "data": [null]})),
            incident: |v| {
                let status = v["data"][0]["status"].as_str();
                v["message"] == "notifyStreamStatusEvent"
                    && !matches!(status, Some("PENDING" | "PUBLISHING" | "PLAYING"))
            },
            keepalive: None,
        };
        keep_socket(self.ws, self.name, stop, incidents, keep)
    }
}

/// Sends `v` on a signalling socket (bounded); `name` says whose in a panic.
pub async fn send_json(ws: &mut WsStream, name: &str, v: Value) {
    tokio::time::timeout(STEP, ws.send(Message::text(v.to_string())))
        .await
        .unwrap_or_else(|_| panic!("{name}: send timed out"))
        .unwrap_or_else(|e| panic!("{name}: send: {e}"));
}

/// The next JSON text frame of a signalling socket (bounded); a close, an error or bad
/// JSON is fatal.
pub async fn recv_json(ws: &mut WsStream, name: &str) -> Value {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{name}: nothing from the server within {STEP:?}"));
        let t = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => panic!("{name}: closed by the server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{name}: socket error: {e}"),
            None => panic!("{name}: socket closed"),
        };
        return serde_json::from_str(t.as_str())
            .unwrap_or_else(|e| panic!("{name}: the server sent bad JSON ({e}): {t}"));
    }
}

/// How a signalling session is kept alive: the reply to a message (a pong), whether a
/// message reports a problem, and a message to send every so often.
pub struct Keep {
    pub reply: fn(&Value) -> Option<Value>,
    pub incident: fn(&Value) -> bool,
    pub keepalive: Option<(Duration, Box<dyn FnMut() -> Value + Send>)>,
}

/// Reads a signalling socket (JSON text frames) in the background until `stop`, as
/// `keep` says; counts the problems it reports and a socket that ended in `incidents`
/// (the first of each echoed with `name`).
pub fn keep_socket(
    mut ws: WsStream,
    name: String,
    mut stop: watch::Receiver<bool>,
    incidents: Arc<AtomicU64>,
    mut keep: Keep,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Without a keepalive, a timer that does not fire within a run.
        let (period, mut keepalive) = keep
            .keepalive
            .take()
            .unwrap_or_else(|| (Duration::from_secs(24 * 3600), Box::new(|| Value::Null)));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let m = tokio::select! {
                // The stop first: a task polled only after the server was stopped (a
                // busy machine) must not count the server's goodbye.
                biased;
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    let _ = ws.send(Message::text(keepalive().to_string())).await;
                    continue;
                }
                m = ws.next() => m,
            };
            let t = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    incidents.fetch_add(1, Ordering::Relaxed);
                    eprintln!("  {name}: signalling socket ended");
                    return;
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                continue;
            };
            if let Some(reply) = (keep.reply)(&v) {
                let _ = ws.send(Message::text(reply.to_string())).await;
            } else if (keep.incident)(&v) {
                incidents.fetch_add(1, Ordering::Relaxed);
                eprintln!("  {name}: {v}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    })
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
    play_on(addr, login, room, stream, Transport::Udp).await
}

/// [`play`] with the player's peer connection on `transport`.
pub async fn play_on(
    addr: SocketAddr,
    login: &str,
    room: &str,
    stream: &str,
    transport: Transport,
) -> (Ws, RtcClient) {
    let mut ws = Ws::connect(addr, login).await;
    ws.join(room).await;
    let mut pc = RtcClient::player_on(
        &format!("{login}-pc"),
        &[(AUDIO, opus(111)), (VIDEO, h264(106))],
        transport,
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

// ---------------------------------------------------------------------------------
// The SFU load (benches/sfu.rs, benches/janus.rs): windows, clock, the huddle server

pub const WARMUP: Duration = Duration::from_secs(3);
pub const MEASURE: Duration = Duration::from_secs(10);
/// `HUDDLE_BENCH_QUICK=1`: shorter windows and fewer switches, to check the bench
/// itself (figures printed only, the doc is left alone).
pub const QUICK_WARMUP: Duration = Duration::from_millis(1500);
pub const QUICK_MEASURE: Duration = Duration::from_secs(3);
/// After the window: packets of the window still in flight (or retransmitted) count.
pub const GRACE: Duration = Duration::from_millis(500);

pub const ROOM: &str = "bench";
pub const STREAM: &str = "bench-pub-cam";
pub const PUB_AUDIO_SSRC: u32 = 0x1111_1111;
pub const PUB_VIDEO_SSRC: u32 = 0x2222_2222;

/// 2.5 Mbps of H.264 payload: per 2 s (60 frames) one 37-packet key frame and 59
/// 9-packet frames of 1100 bytes = 624 800 bytes.
pub const FPS: u64 = 30;
pub const KEY_FRAME_EVERY: u64 = 60;
pub const KEY_FRAME_PACKETS: usize = 37;
pub const DELTA_FRAME_PACKETS: usize = 9;
pub const VIDEO_PAYLOAD: usize = 1100;
pub const AUDIO_PAYLOAD: usize = 80;
/// Where the index and send time sit in a payload: after the FU-A indicator and
/// header (video), after the Opus TOC byte (audio).
pub const VIDEO_STAMP_AT: usize = 2;
pub const AUDIO_STAMP_AT: usize = 1;

pub static EPOCH: OnceLock<Instant> = OnceLock::new();
pub static QUICK: OnceLock<bool> = OnceLock::new();

pub fn quick() -> bool {
    *QUICK.get_or_init(|| {
        std::env::var("HUDDLE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// The warm-up and the measured window of a CPU run.
pub fn windows() -> (Duration, Duration) {
    if quick() {
        (QUICK_WARMUP, QUICK_MEASURE)
    } else {
        (WARMUP, MEASURE)
    }
}

/// Nanoseconds of this process's monotonic clock.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------
// The server process

/// Where the SFU benches' server and clients are: loopback (`benches/sfu.rs`), or the
/// two ends of the veth pair `benches/janus.rs` makes between its network namespaces.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    /// The server listens (HTTP) and advertises its media candidate here.
    pub server: IpAddr,
    /// The clients' peer connections bind here.
    pub client: IpAddr,
    /// The server runs in the network namespace of this process (`nsenter`), if any.
    pub server_netns: Option<i32>,
    /// The clients' UDP datagrams so far (received, sent), when they have a network
    /// namespace of their own (its `/proc/net/snmp`).
    pub client_udp: Option<fn() -> (u64, u64)>,
}

pub const LOOPBACK: Net = Net {
    server: IpAddr::V4(Ipv4Addr::LOCALHOST),
    client: IpAddr::V4(Ipv4Addr::LOCALHOST),
    server_netns: None,
    client_udp: None,
};

impl Net {
    /// A command that runs `program` where the server runs: `nsenter --net` into
    /// `server_netns` (it execs the program, so the child's pid is the server's).
    pub fn server_command(&self, program: &str) -> Command {
        match self.server_netns {
            None => Command::new(program),
            Some(pid) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/proc/{pid}/ns/net"))
                    .arg("--")
                    .arg(program);
                cmd
            }
        }
    }

    /// How the clients' peer connections reach the server.
    pub fn transport(&self) -> Transport {
        match self.client {
            IpAddr::V4(Ipv4Addr::LOCALHOST) => Transport::Udp,
            ip => Transport::UdpAt(ip),
        }
    }
}

/// A bench server's limits for `members` in one room, every one from the same address,
/// joining in quick succession (each join is announced to every member: N joins put N
/// events in each session's queue); no camera or microphone.
pub fn sections(members: usize) -> String {
    format!(
        r#"[signalling]
max_sessions = {sessions}
max_sessions_per_address = {sessions}
rate_messages_per_sec = 1000
rate_burst = 2000
outbound_queue = {queue}

[rooms]
max_participants = {members}
max_players = {members}

[device]
camera = "none"
microphone = "none"

[log]
level = "info"
"#,
        sessions = 4 * members,
        queue = (4 * members).max(1024),
    )
}

/// The members of the runs with a few dozen players.
pub const MEMBERS: usize = 64;

pub struct Server {
    pub proc: Proc,
    pub http: SocketAddr,
    pub media_port: u16,
    /// Server log lines at WARN or ERROR (the first few are echoed).
    pub warnings: Arc<AtomicU64>,
}

impl Server {
    pub fn start(tag: &str) -> Server {
        Server::start_on(tag, LOOPBACK)
    }

    /// `start` with HTTP and the media candidate on `net.server`.
    pub fn start_on(tag: &str, net: Net) -> Server {
        Server::start_in(tag, &sections(MEMBERS), net)
    }

    /// `start` with other limits (`sections`).
    pub fn start_with(tag: &str, sections: &str) -> Server {
        Server::start_in(tag, sections, LOOPBACK)
    }

    pub fn start_in(tag: &str, sections: &str, net: Net) -> Server {
        let warnings = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std_mpsc::channel::<(Option<SocketAddr>, Option<u16>)>();
        let w = Arc::clone(&warnings);
        let (mut cmd, dir) = huddle_command(net, &format!("huddle-bench-{tag}"), sections);
        let on_line = move |line: &str| {
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
        };
        let proc = spawn(&mut cmd, |_| "server".into(), Some(dir), on_line)
            .expect("start the huddle binary");
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
    pub fn stop(self) {
        self.proc.stop(true);
    }
}

// ---------------------------------------------------------------------------------
// The publisher's camera and microphone

#[derive(Default)]
pub struct Sent {
    /// Next packet index (audio and video share the index space).
    pub next: AtomicU64,
    pub video: AtomicU64,
    pub audio: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

pub fn stamped(first: &[u8], index: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(first);
    p.extend_from_slice(&index.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
    p.extend((p.len()..len).map(|i| (i as u64).wrapping_mul(index | 1) as u8));
    p
}

pub async fn write(track: &TrackLocalStaticRTP, p: Packet, sent: &Sent) {
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
pub struct Camera {
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio: Arc<TrackLocalStaticRTP>,
    /// Negotiated payload types (video, audio).
    pub pts: (u8, u8),
    pub sent: Arc<Sent>,
    pub frame: u64,
    pub video_seq: u16,
    pub audio_seq: u16,
    pub audio_ts: u32,
}

impl Publisher for Camera {
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
}

/// A bench publisher: a video frame every 1/30 s, an Opus packet every 20 ms.
pub trait Publisher {
    async fn video_frame(&mut self);
    async fn audio_packet(&mut self);

    /// Sends until `stop`.
    async fn run(mut self, mut stop: watch::Receiver<bool>)
    where
        Self: Sized,
    {
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
pub struct Received {
    pub pc: RtcClient,
    pub got: Vec<(u64, u32)>,
}

/// The index and send time a payload of `kind` carries.
pub fn stamp_of(kind: RtpCodecKind, payload: &[u8]) -> Option<(u64, u64)> {
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

/// Reads a player's RTP until `stop`, keeping what `keep` makes of each packet (its
/// kind, payload and latency in µs, from the send time `stamp` finds in it).
pub async fn receive_with<T>(
    pc: &mut RtcClient,
    mut stop: watch::Receiver<bool>,
    capacity: usize,
    mut keep: impl FnMut(RtpCodecKind, &[u8], u64) -> Option<T>,
) -> Vec<T> {
    let mut got = Vec::with_capacity(capacity);
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = pc.next_media(Duration::from_secs(1)) => m,
        };
        let Some(Media::Rtp { kind, packet }) = m else {
            continue;
        };
        if let Some(t) = keep(kind, &packet.payload, now_ns()) {
            got.push(t);
        }
    }
    got
}

/// Microseconds from `sent` to `now` (ns), saturated.
pub fn latency_us(now: u64, sent: u64) -> u32 {
    (now.saturating_sub(sent) / 1000).min(u64::from(u32::MAX)) as u32
}

pub async fn receive(mut pc: RtcClient, stop: watch::Receiver<bool>) -> Received {
    let got = receive_with(&mut pc, stop, 64 * 1024, |kind, payload, now| {
        stamp_of(kind, payload).map(|(index, sent)| (index, latency_us(now, sent)))
    })
    .await;
    Received { pc, got }
}

pub async fn publish(addr: SocketAddr) -> (Ws, RtcClient) {
    publish_on(addr, Transport::Udp).await
}

/// [`publish`] with the publisher's peer connection on `transport`.
pub async fn publish_on(addr: SocketAddr, transport: Transport) -> (Ws, RtcClient) {
    let mut ws = Ws::connect(addr, "pub").await;
    ws.join(ROOM).await;
    let mut pc = RtcClient::publisher_on("pub-pc", &publisher_tracks(), transport).await;
    let offer = pc.create_offer().await;
    let answer = ws.offer(ROOM, STREAM, "m-pub", true, &offer).await;
    pc.apply_answer(&answer).await;
    ws.wait_status("m-pub", "PUBLISHING").await;
    pc.wait_connected(STEP).await;
    (ws, pc)
}

/// The bench publisher's tracks: Opus and H.264 (42e01f, packetization-mode=1).
pub fn publisher_tracks() -> [(RtpCodecKind, RTCRtpCodecParameters, u32); 2] {
    [
        (AUDIO, opus(111), PUB_AUDIO_SSRC),
        (VIDEO, h264(125), PUB_VIDEO_SSRC),
    ]
}

/// Starts the bench [`Camera`] on a connected publisher; it sends until `stop`.
pub async fn start_camera(
    pub_pc: &RtcClient,
    stop: watch::Receiver<bool>,
) -> (Arc<Sent>, JoinHandle<()>) {
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
    (sent, tokio::spawn(camera.run(stop)))
}

// ---------------------------------------------------------------------------------
// One run

pub struct Row {
    pub players: usize,
    pub secs: f64,
    pub sent_video: u64,
    pub sent_audio: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub lost: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_cpu_s: f64,
    /// Of which in the kernel (system time).
    pub server_sys_s: f64,
    pub client_cpu_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub incidents: u64,
    pub server_warnings: u64,
    /// UDP datagrams the clients received and sent in the window (`Net::client_udp`).
    pub client_udp: Option<(u64, u64)>,
}

impl Row {
    pub fn sent(&self) -> u64 {
        self.sent_video + self.sent_audio
    }
    pub fn forwarded(&self) -> u64 {
        self.sent() * self.players as u64
    }
    pub fn us_per_forwarded(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.forwarded().max(1) as f64
    }
    pub fn loss_pct(&self) -> f64 {
        100.0 * self.lost as f64 / self.forwarded().max(1) as f64
    }
    pub fn rss_per_player_kib(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.players as f64
    }
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// A bench client: its signalling session (a task that keeps it alive until the run's
/// stop) and its peer connection.
pub type Client = (JoinHandle<()>, RtcClient);

/// A run's stop signal, the count of what went wrong in its sessions (streams stopped
/// or failed, sockets that ended) before it, and its clients' UDP counters if any.
pub struct RunCtl {
    stop_tx: watch::Sender<bool>,
    pub stop: watch::Receiver<bool>,
    pub incidents: Arc<AtomicU64>,
    client_udp: Option<fn() -> (u64, u64)>,
}

impl RunCtl {
    pub fn new(net: Net) -> RunCtl {
        let (stop_tx, stop) = watch::channel(false);
        RunCtl {
            stop_tx,
            stop,
            incidents: Arc::new(AtomicU64::new(0)),
            client_udp: net.client_udp,
        }
    }
}

/// One run on the server process `pid` whose `publisher` is connected: the bench
/// camera, then `players` players connected one after the other by `play(i)`, warm-up,
/// the measured window and the grace period; then the tally, `stop_server` (which
/// returns the server's WARN/ERROR lines) and every client closed.
pub async fn run_load(
    ctl: RunCtl,
    pid: i32,
    publisher: Client,
    players: usize,
    mut play: impl AsyncFnMut(usize) -> Client,
    ticks: f64,
    stop_server: impl FnOnce() -> u64,
) -> Row {
    let (pub_session, pub_pc) = publisher;
    let mut sessions = vec![pub_session];
    let (sent, camera) = start_camera(&pub_pc, ctl.stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(pid);

    let t_setup = Instant::now();
    let mut receivers = Vec::new();
    for i in 0..players {
        let (session, pc) = play(i).await;
        sessions.push(session);
        receivers.push(tokio::spawn(receive(pc, ctl.stop.clone())));
    }
    let (warmup, measure) = windows();
    eprintln!(
        "  {players} players up in {:.1} s; warm-up {warmup:?}, measuring {measure:?}",
        t_setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(warmup).await;

    let (server_t0, client_t0) = (process_ticks(&pid.to_string()), process_ticks("self"));
    let udp0 = ctl.client_udp.map(|f| f());
    let (v0, a0, b0) = (
        sent.video.load(Ordering::Relaxed),
        sent.audio.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    let first = sent.next.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    let last = sent.next.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (server_t1, client_t1) = (process_ticks(&pid.to_string()), process_ticks("self"));
    let udp1 = ctl.client_udp.map(|f| f());
    let rss_after_kib = rss_kib(pid);
    let (v1, a1, b1) = (
        sent.video.load(Ordering::Relaxed),
        sent.audio.load(Ordering::Relaxed),
        sent.bytes.load(Ordering::Relaxed),
    );
    tokio::time::sleep(GRACE).await;

    // Stop everything; collect what the players got.
    let _ = ctl.stop_tx.send(true);
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
    let server_warnings = stop_server();
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
        incidents: ctl.incidents.load(Ordering::Relaxed),
        server_warnings,
        client_udp: udp0.zip(udp1).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
    }
}

/// One publisher -> `players` on a fresh Huddle on loopback.
pub async fn run(players: usize, ticks: f64) -> Row {
    run_on(players, ticks, LOOPBACK).await
}

/// [`run`] on `net`.
pub async fn run_on(players: usize, ticks: f64, net: Net) -> Row {
    let server = Server::start_on(&players.to_string(), net);
    let (addr, pid) = (server.http, server.proc.pid);
    eprintln!(
        "N = {players}: server pid {pid} on {addr}, media UDP {}",
        server.media_port
    );
    let ctl = RunCtl::new(net);
    let (stop, incidents) = (ctl.stop.clone(), Arc::clone(&ctl.incidents));
    let (ws, pc) = publish_on(addr, net.transport()).await;
    let publisher = (ws.keep_alive(stop.clone(), Arc::clone(&incidents)), pc);
    let play = async |i: usize| {
        let login = format!("p{i:02}");
        let (ws, pc) = play_on(addr, &login, ROOM, STREAM, net.transport()).await;
        (ws.keep_alive(stop.clone(), Arc::clone(&incidents)), pc)
    };
    let stop_server = move || {
        let warnings = server.warnings.load(Ordering::Relaxed);
        server.stop();
        warnings
    };
    run_load(ctl, pid, publisher, players, play, ticks, stop_server).await
}

/// A server with the publisher sending: what a run of `benches/sfu.rs`'s load players
/// starts from.
pub struct Stage {
    pub server: Server,
    pub stop_tx: watch::Sender<bool>,
    pub stop: watch::Receiver<bool>,
    pub incidents: Arc<AtomicU64>,
    /// Signalling sessions kept alive (pongs) until `stop`.
    pub sessions: Vec<JoinHandle<()>>,
    pub sent: Arc<Sent>,
    pub camera: JoinHandle<()>,
    pub pub_pc: RtcClient,
}

pub async fn stage(server: Server, what: &str) -> Stage {
    let addr = server.http;
    eprintln!(
        "{what}: server pid {} on {addr}, media UDP {}",
        server.proc.pid, server.media_port
    );
    let RunCtl {
        stop_tx,
        stop,
        incidents,
        ..
    } = RunCtl::new(LOOPBACK);
    let (pub_ws, pub_pc) = publish(addr).await;
    let sessions = vec![pub_ws.keep_alive(stop.clone(), Arc::clone(&incidents))];
    let (sent, camera) = start_camera(&pub_pc, stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Stage {
        server,
        stop_tx,
        stop,
        incidents,
        sessions,
        sent,
        camera,
        pub_pc,
    }
}

/// A tokio runtime for a bench's runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A plan from an environment variable: player counts, e.g. `1,10` (empty: none).
pub fn plan_from(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(s) => s
            .split(',')
            .filter(|n| !n.trim().is_empty())
            .map(|n| {
                n.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: numbers, e.g. 1,10"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}
