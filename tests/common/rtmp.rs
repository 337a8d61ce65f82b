//! Raw-RTMP client helpers and ffmpeg publishers for the RTMP tests, on 127.0.0.1:
//! a client that completes the handshake, hand-made messages (chunk sizes, AMF
//! commands, media, data), a bad client that sends its steps and waits for the close,
//! and the capture of this process's log lines (the server logs every close with the
//! peer and the reason).
//!
//! Every wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::Client;

/// Log lines of Huddle in this test process.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) && r.target().starts_with("huddle") {
            let line = format!("{} {}", r.level(), r.args());
            eprintln!("{line}");
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs the capture of Info lines and above as this process's logger (once; later
/// calls do nothing).
pub fn capture_logs() {
    capture_logs_at(log::LevelFilter::Info);
}

/// Installs the capture of lines at `level` and above (once for the process).
pub fn capture_logs_at(level: log::LevelFilter) {
    let _ = log::set_logger(&Capture).map(|()| log::set_max_level(level));
}

/// Every captured line containing `needle`.
pub fn logged_all(needle: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// The first captured line containing `needle`.
pub fn logged(needle: &str) -> Option<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains(needle))
        .cloned()
}

/// Waits (up to 5 s) for a log line about the client at `port` containing "closed"
/// and `reason`.
pub async fn logged_close(port: u16, reason: &str) -> String {
    let peer = format!("127.0.0.1:{port}");
    for _ in 0..50 {
        let found = LINES
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&peer) && l.contains("closed") && l.contains(reason))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no close of {peer} logged with {reason:?}");
}

/// A client that completes the handshake.
pub async fn handshaken(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs.generate_outbound_p0_and_p1().unwrap();
    s.write_all(&c0c1).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("handshake answer")
            .unwrap();
        assert!(n > 0, "server closed during the handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).await.unwrap()
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                s.write_all(&response_bytes).await.unwrap();
                return s;
            }
        }
    }
}

/// Reads until the server closes (or fails after `secs`); what it sent.
pub async fn closed_within(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("not closed within {secs} s"),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn set_chunk_size(size: u32) -> Vec<u8> {
    // fmt 0, csid 2, timestamp 0, length 4, type 1 (SetChunkSize), stream 0.
    let mut v = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    v.extend_from_slice(&size.to_be_bytes());
    v
}

/// One message as chunks of the default 128-byte size.
pub fn chunks(message: RtmpMessage, stream_id: u32) -> Vec<u8> {
    let payload = message
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .unwrap();
    ChunkSerializer::new()
        .serialize(&payload, true, false)
        .unwrap()
        .bytes
}

pub fn command(name: &str, stream_id: u32, args: Vec<Amf0Value>) -> Vec<u8> {
    let message = RtmpMessage::Amf0Command {
        command_name: name.into(),
        transaction_id: 2.0,
        command_object: Amf0Value::Null,
        additional_arguments: args,
    };
    chunks(message, stream_id)
}

pub fn video(stream_id: u32, data: &[u8]) -> Vec<u8> {
    let message = RtmpMessage::VideoData {
        data: data.to_vec().into(),
    };
    chunks(message, stream_id)
}

/// An AMF0 data message on `stream_id` of strings of `len` bytes in all (60 000 at
/// the most each: AMF0 strings are shorter than 64 KiB); each string adds 3 bytes.
pub fn amf_data(stream_id: u32, len: usize) -> Vec<u8> {
    let mut values = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(60_000);
        values.push(Amf0Value::Utf8String("x".repeat(n)));
        left -= n;
    }
    let message = RtmpMessage::Amf0Data { values };
    chunks(message, stream_id)
}

/// A `releaseStream` of 70 041 bytes of AMF (over the 64 KiB command limit).
pub fn huge_command() -> Vec<u8> {
    let args = (0..5)
        .map(|_| Amf0Value::Utf8String("x".repeat(14_000)))
        .collect();
    command("releaseStream", 0, args)
}

/// A message on chunk stream 5 while one on 4 is mid-way (rml_rtmp 0.8 panics on
/// this; the server's chunk scanner refuses it first).
pub fn interleaved_chunks() -> Vec<u8> {
    let mut v = vec![0x04, 0, 0, 0, 0x00, 0x03, 0xe8, 18, 0, 0, 0, 0];
    v.extend([0u8; 128]);
    v.push(0xc4);
    v.extend([0u8; 128]);
    v.extend([0x05, 0, 0, 0, 0, 0, 1, 18, 0, 0, 0, 0, 5]);
    v
}

/// `publish` of `name` (the stream key, a query may follow) on stream id 1.
pub fn publish(name: &str) -> Vec<u8> {
    command(
        "publish",
        1,
        vec![
            Amf0Value::Utf8String(name.into()),
            Amf0Value::Utf8String("live".into()),
        ],
    )
}

/// `play` of `name` on stream id 1.
pub fn play(name: &str) -> Vec<u8> {
    command("play", 1, vec![Amf0Value::Utf8String(name.into())])
}

/// connect to `app`, createStream, publish `name`, then `then`.
pub fn publishing(app: &str, name: &str, then: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut steps = vec![
        connect(app),
        command("createStream", 0, vec![]),
        publish(name),
    ];
    steps.extend(then);
    steps
}

pub fn connect(app: &str) -> Vec<u8> {
    let mut props = std::collections::HashMap::new();
    props.insert("app".to_string(), Amf0Value::Utf8String(app.into()));
    let message = RtmpMessage::Amf0Command {
        command_name: "connect".into(),
        transaction_id: 1.0,
        command_object: Amf0Value::Object(props),
        additional_arguments: vec![],
    };
    chunks(message, 0)
}

/// Runs one bad client: what it sends after the handshake (or instead of it), and the
/// reason the log must name. Returns that log line and what the server sent.
/// Steps are sent 300 ms apart (rml_rtmp handles a command only once `connect` was
/// answered, as real clients wait for it).
pub async fn bad_client(
    addr: SocketAddr,
    handshake: bool,
    steps: Vec<Vec<u8>>,
    reason: &str,
) -> (String, Vec<u8>) {
    let mut s = if handshake {
        handshaken(addr).await
    } else {
        TcpStream::connect(addr).await.unwrap()
    };
    let port = s.local_addr().unwrap().port();
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if s.write_all(step).await.is_err() {
            break;
        }
    }
    let received = closed_within(&mut s, 5).await;
    (logged_close(port, reason).await, received)
}

/// Whether `needle` occurs in the bytes the server sent (an `onStatus` text).
pub fn sent_text(received: &[u8], needle: &str) -> bool {
    received
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// ffmpeg publishing `seconds` of a test pattern (baseline H.264, a key frame a
/// second) and a tone (AAC) to `url`.
pub fn ffmpeg(url: &str, seconds: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine", "-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .args(["-profile:v", "baseline", "-tune", "zerolatency", "-g", "30"])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(url)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed")
}

/// Waits (bounded) for ffmpeg to end; its exit status.
pub async fn finish(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for ffmpeg") {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ffmpeg did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Room events (`OnDataEvent` payloads) of `room` until one named `until`; other
/// frames (stream statuses of a player) are skipped.
pub async fn events_until(ws: &mut Client, room: &str, until: &str, limit: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = ws.recv_within(left).await else {
            panic!("no {until} within {limit:?}; room events: {seen:?}");
        };
        if v["message"] != "OnDataEvent" {
            continue;
        }
        let p = v["data"][0]["payload"].clone();
        // Who talks changes whenever it does (ffmpeg's test tones are loud): only a
        // wait for it sees it.
        if p["roomName"] != room || (p["name"] == "ACTIVE_SPEAKER" && until != "ACTIVE_SPEAKER") {
            continue;
        }
        let done = p["name"] == until;
        seen.push(p);
        if done {
            return seen;
        }
    }
}
