//! RTMP pushes against real peers on 127.0.0.1: an ffmpeg RTMP listener records what a
//! push sends (FLV tags read from an ffmpeg-made file, paced in real time) and ffprobe
//! checks it; the target is killed and restarted mid-push and the push comes back with
//! a decodable stream; an unreachable target is retried with one log line and stopped
//! promptly; another Huddle accepts a push or refuses it with a reason that reaches
//! the push's status.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use huddle::config;
use huddle::rtmp::push::{Push, PushHandle, PushStatus};
use huddle::rtmp::server::{
    self, FlvTag, Handler, PlayRequest, PublishRequest, PublisherEvent, Refusal, TagKind,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use common::rtmp::{capture_logs_at, ffmpeg as room_publisher, logged_all};

fn init_log() {
    capture_logs_at(log::LevelFilter::Debug);
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 6 s of 320x240 30 fps baseline H.264 (a key frame every second) + AAC, made once.
fn input_flv() -> &'static Path {
    static INPUT: OnceLock<PathBuf> = OnceLock::new();
    INPUT.get_or_init(|| {
        let path = temp_dir().join("in.flv");
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x240:rate=30")
            .args(["-f", "lavfi", "-i", "sine", "-t", "6", "-c:v", "libx264"])
            .args(["-pix_fmt", "yuv420p", "-profile:v", "baseline", "-bf", "0"])
            .args(["-g", "30", "-c:a", "aac", "-f", "flv"])
            .arg(&path)
            .stdin(Stdio::null())
            .status()
            .expect("ffmpeg is installed");
        assert!(status.success(), "ffmpeg made no input file");
        path
    })
}

/// The audio and video tags of an FLV file (9-byte header, then tags of an 11-byte
/// header, the body and the 4-byte previous tag size).
fn read_flv(path: &Path) -> Vec<FlvTag> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..3], b"FLV");
    let mut at = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize + 4;
    let mut tags = Vec::new();
    while at + 11 <= bytes.len() {
        let h = &bytes[at..at + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ms = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body = Bytes::copy_from_slice(&bytes[at + 11..at + 11 + size]);
        let kind = match h[0] & 0x1f {
            8 => Some(TagKind::Audio),
            9 => Some(TagKind::Video),
            _ => None,
        };
        if let Some(kind) = kind {
            tags.push(FlvTag {
                kind,
                timestamp_ms: ms,
                data: body,
            });
        }
        at += 11 + size + 4;
    }
    tags
}

fn is_header(t: &FlvTag) -> bool {
    t.data.get(1) == Some(&0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something listens on 127.0.0.1:`port` (read from /proc: a probing
/// connection would be the one connection `ffmpeg -listen 1` accepts), or has
/// accepted a connection there already: `-listen 1` closes its listening socket at
/// the first accept, and a pushing client retrying at that moment (seen under qemu)
/// would leave nothing listening to see.
fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines().skip(1).any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() > 3
                    && format!("{} ", fields[1]).ends_with(&needle)
                    && (fields[3] == "0A" || fields[3] == "01")
            })
        })
    })
}

/// `ffmpeg -listen 1` recording an RTMP publish to `out`, once it listens.
async fn target(port: u16, out: &Path) -> Child {
    let _ = std::fs::remove_file(out);
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-listen", "1", "-f", "flv", "-i"])
        .arg(format!("rtmp://127.0.0.1:{port}/live/key"))
        .args(["-c", "copy"])
        .arg(out)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg is installed");
    let start = Instant::now();
    while !listening(port) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ffmpeg does not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Waits for the child to exit (bounded), returning its output.
async fn finished(child: Child, secs: u64) -> Output {
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    match timeout(Duration::from_secs(secs), waited).await {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("ffmpeg did not finish within {secs} s");
        }
    }
}

fn ffprobe(args: &[&str], file: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `codec,width,height` or `codec,sample_rate` per stream, and the duration.
fn probe(file: &Path) -> (Vec<String>, f64) {
    let streams = ffprobe(
        &[
            "-show_entries",
            "stream=codec_name,width,height,sample_rate",
            "-of",
            "csv=p=0",
        ],
        file,
    );
    let duration = ffprobe(
        &[
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ],
        file,
    );
    (
        streams.lines().map(str::to_string).collect(),
        duration.trim().parse().unwrap_or(-1.0),
    )
}

/// Full decode: ffmpeg's errors (empty when everything decodes) and the frame count.
fn decode(file: &Path) -> (String, usize) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let frames = ffprobe(
        &[
            "-select_streams",
            "v",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ],
        file,
    );
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        frames.trim().parse().unwrap_or(0),
    )
}

/// Waits until the status matches.
async fn until(
    status: &mut watch::Receiver<PushStatus>,
    secs: u64,
    what: &str,
    f: impl FnMut(&PushStatus) -> bool,
) -> PushStatus {
    let found = match timeout(Duration::from_secs(secs), status.wait_for(f)).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("no {what} within {secs} s: {:?}", *status.borrow()))
}

/// Every status the push goes through.
fn record(handle: &PushHandle) -> Arc<Mutex<Vec<PushStatus>>> {
    let seen = Arc::new(Mutex::new(vec![handle.status()]));
    let mut rx = handle.subscribe();
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            out.lock().unwrap().push(s);
        }
    });
    seen
}

/// Feeds `tags` in real time as a room would (`try_send`), looping with continuous
/// timestamps until `stop`; returns the number of tags the full channel refused.
fn feed(
    tx: mpsc::Sender<FlvTag>,
    tags: Vec<FlvTag>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let span = tags.last().unwrap().timestamp_ms + 33;
        let mut refused = 0;
        for round in 0u32.. {
            for t in &tags {
                if round > 0 && is_header(t) {
                    continue;
                }
                let ms = t.timestamp_ms + round * span;
                tokio::time::sleep_until(start + Duration::from_millis(ms as u64)).await;
                if stop.load(Ordering::Relaxed) {
                    return refused;
                }
                let tag = FlvTag {
                    timestamp_ms: ms,
                    ..t.clone()
                };
                if tx.try_send(tag).is_err() {
                    refused += 1;
                }
            }
        }
        refused
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_records_in_an_ffmpeg_target() {
    init_log();
    let tags = read_flv(input_flv());
    assert!(tags.len() > 400, "{} tags", tags.len());
    let (headers, media): (Vec<FlvTag>, Vec<FlvTag>) = tags.into_iter().partition(is_header);
    assert_eq!(headers.len(), 2, "AVC + AAC sequence headers");
    let port = free_port();
    let out = temp_dir().join("out1.flv");
    let ffmpeg = target(port, &out).await;

    let (tx, rx) = mpsc::channel(256);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let url = format!("rtmp://127.0.0.1:{port}/live/key");
    let push = Push::new("room1-alice", &url, Duration::from_millis(200)).unwrap();
    let handle = push.spawn(rx, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(
        handle.target(),
        format!("rtmp://127.0.0.1:{port}/live/****")
    );
    // The sequence headers come before the connection: the push caches them.
    for h in headers {
        tx.try_send(h).unwrap();
    }
    let mut status = handle.subscribe();
    until(&mut status, 10, "Live", |s| {
        matches!(s, PushStatus::Live { .. })
    })
    .await;
    assert_eq!(asked.load(Ordering::Relaxed), 1, "a key frame asked for");

    // 6 s of media in real time, from the first (key) frame.
    let start = tokio::time::Instant::now();
    let first = media[0].timestamp_ms;
    for t in media {
        let at = Duration::from_millis((t.timestamp_ms - first) as u64);
        tokio::time::sleep_until(start + at).await;
        tx.try_send(t).expect("the push keeps up");
    }
    drop(tx);
    timeout(Duration::from_secs(10), handle.join())
        .await
        .expect("the push ends when its stream does");
    assert_eq!(
        *status.borrow(),
        PushStatus::Ended {
            reason: "the stream ended".into()
        }
    );
    let output = finished(ffmpeg, 15).await;
    assert!(
        output.status.success(),
        "ffmpeg target: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (streams, duration) = probe(&out);
    assert!(streams.iter().any(|s| s == "h264,320,240"), "{streams:?}");
    assert!(
        streams.iter().any(|s| s.starts_with("aac,44100")),
        "{streams:?}"
    );
    assert!((duration - 6.0).abs() <= 1.0, "duration {duration}");
    let (errors, frames) = decode(&out);
    assert_eq!(errors, "", "decode errors");
    assert!((170..=181).contains(&frames), "{frames} frames");
    eprintln!("out1: {streams:?}, {duration} s, {frames} frames");
    assert_eq!(streams.len(), 2, "{streams:?}");
    let _ = std::fs::remove_file(&out);
    assert!(
        logged_all(&format!("127.0.0.1:{port}"))
            .iter()
            .all(|l| !l.contains("/key")),
        "the key is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_comes_back_after_its_target_restarts() {
    init_log();
    let tags = read_flv(input_flv());
    let port = free_port();
    let dir = temp_dir();
    let (out_a, out_b) = (dir.join("out2a.flv"), dir.join("out2b.flv"));
    let mut ffmpeg_a = target(port, &out_a).await;

    let (tx, rx) = mpsc::channel(256);
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let url = format!("rtmp://127.0.0.1:{port}/live/key");
    let handle = Push::new("room1-bob", &url, Duration::from_millis(200))
        .unwrap()
        .spawn(rx, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
    let seen = record(&handle);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(tx, tags, stop.clone());
    let mut status = handle.subscribe();
    until(&mut status, 10, "Live", |s| {
        matches!(s, PushStatus::Live { .. })
    })
    .await;

    // Kill the target mid-GOP, 3.5 s in.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    ffmpeg_a.kill().unwrap();
    let _ = ffmpeg_a.wait();
    let retrying = until(&mut status, 10, "Retrying", |s| {
        matches!(s, PushStatus::Retrying { .. })
    })
    .await;
    eprintln!("after the kill: {retrying:?}");
    let killed_at = Instant::now();
    let ffmpeg_b = target(port, &out_b).await;
    until(&mut status, 10, "Live again", |s| {
        matches!(s, PushStatus::Live { .. })
    })
    .await;
    eprintln!(
        "live again {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let refused = feeder.await.unwrap();
    // The feeder dropped its sender: the push ends and closes the publish.
    timeout(Duration::from_secs(10), handle.join())
        .await
        .expect("the push ends when its stream does");
    let output = finished(ffmpeg_b, 15).await;
    assert!(
        output.status.success(),
        "ffmpeg target: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let statuses = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = statuses
        .iter()
        .map(|s| match s {
            PushStatus::Connecting { .. } => "connecting",
            PushStatus::Live { .. } => "live",
            PushStatus::Retrying { .. } => "retrying",
            PushStatus::Ended { .. } => "ended",
        })
        .collect();
    let live = kinds.iter().position(|k| *k == "live").unwrap();
    let retry = live + kinds[live..].iter().position(|k| *k == "retrying").unwrap();
    assert!(kinds[retry..].contains(&"live"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"ended"), "{kinds:?}");
    assert_eq!(refused, 0, "the push kept consuming");
    assert!(
        asked.load(Ordering::Relaxed) >= 2,
        "a key frame per connection"
    );

    let (streams, duration) = probe(&out_b);
    assert!(streams.iter().any(|s| s == "h264,320,240"), "{streams:?}");
    assert!(
        streams.iter().any(|s| s.starts_with("aac,44100")),
        "{streams:?}"
    );
    let first = ffprobe(
        &[
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time,flags",
            "-read_intervals",
            "%+#1",
            "-of",
            "csv=p=0",
        ],
        &out_b,
    );
    assert!(first.trim().ends_with("K_"), "first video packet: {first}");
    let start: f64 = first.split(',').next().unwrap().parse().unwrap();
    assert!(start < 0.1, "rebased to 0: {first}");
    let (errors, frames) = decode(&out_b);
    assert_eq!(errors, "", "decode errors");
    assert!(frames > 90, "{frames} frames");
    assert!((3.0..=6.5).contains(&duration), "duration {duration}");
    eprintln!("out2b: {streams:?}, {duration} s, {frames} frames, statuses {kinds:?}");
    assert_eq!(streams.len(), 2, "{streams:?}");
    let _ = std::fs::remove_file(&out_a);
    let _ = std::fs::remove_file(&out_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_retried_and_stopped_promptly() {
    init_log();
    let port = free_port();
    let url = format!("rtmp://127.0.0.1:{port}/live/topsecret");
    let (tx, rx) = mpsc::channel(16);
    let handle = Push::new("room1-carol", &url, Duration::from_millis(100))
        .unwrap()
        .spawn(rx, || {});
    let mut status = handle.subscribe();
    let third = until(&mut status, 5, "a third attempt", |s| {
        matches!(s, PushStatus::Retrying { attempt: 3, .. })
    })
    .await;
    let PushStatus::Retrying { error, next_in, .. } = &third else {
        unreachable!()
    };
    assert!(
        error.contains(&format!("rtmp://127.0.0.1:{port}/live/****"))
            && error.contains("cannot connect")
            && error.contains("refused"),
        "{error}"
    );
    assert!(!error.contains("topsecret"), "{error}");
    assert_eq!(*next_in, Duration::from_millis(400));
    // Tags keep being consumed while the target is away.
    for i in 0..100 {
        tx.send(FlvTag {
            kind: TagKind::Audio,
            timestamp_ms: i,
            data: Bytes::from_static(&[0xaf, 1, 0]),
        })
        .await
        .unwrap();
    }
    let stopped = Instant::now();
    handle.stop();
    timeout(Duration::from_secs(1), handle.join())
        .await
        .expect("stop() ends the push within 1 s");
    eprintln!("stopped in {} ms", stopped.elapsed().as_millis());
    assert_eq!(
        *status.borrow(),
        PushStatus::Ended {
            reason: "stopped".into()
        }
    );
    // One warning for the failure, not one per attempt; no key in any line.
    let lines = logged_all(&format!("127.0.0.1:{port}/"));
    let warnings = lines.iter().filter(|l| l.starts_with("WARN")).count();
    assert_eq!(warnings, 1, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains("topsecret")), "{lines:#?}");
}

/// Another Huddle as the target: publishes to room `open` are taken, others refused.
#[derive(Default)]
struct Huddle {
    events: Mutex<Option<mpsc::Receiver<PublisherEvent>>>,
}

struct Target(Arc<Huddle>);

impl Handler for Target {
    async fn publish(
        &self,
        request: PublishRequest,
    ) -> Result<mpsc::Sender<PublisherEvent>, Refusal> {
        if request.room != "open" {
            return Err(Refusal::new(format!("room {} is full", request.room)));
        }
        let (tx, rx) = mpsc::channel(4096);
        *self.0.events.lock().unwrap() = Some(rx);
        Ok(tx)
    }

    async fn play(&self, _: PlayRequest) -> Result<mpsc::Receiver<FlvTag>, Refusal> {
        Err(Refusal::new("no"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_huddle_takes_a_push_or_refuses_it_with_a_reason() {
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let huddle = Arc::new(Huddle::default());
    tokio::spawn(server::serve(
        listener,
        config::Rtmp::default(),
        Arc::new(Target(huddle.clone())),
    ));

    // Refused: the reason of the other side is in the status.
    let (_tx, rx) = mpsc::channel(16);
    let url = format!("rtmp://{addr}/full/alice");
    let handle = Push::new("s", &url, Duration::from_millis(100))
        .unwrap()
        .spawn(rx, || {});
    let mut status = handle.subscribe();
    let refused = until(&mut status, 5, "Retrying", |s| {
        matches!(s, PushStatus::Retrying { .. })
    })
    .await;
    let PushStatus::Retrying { error, .. } = &refused else {
        unreachable!()
    };
    assert!(
        error.contains("refused the publish") && error.contains("room full is full"),
        "{error}"
    );
    drop(handle);

    // Taken: the other Huddle gets the stream from its sequence headers and a key frame.
    let tags = read_flv(input_flv());
    let (tx, rx) = mpsc::channel(1024);
    let url = format!("rtmp://{addr}/open/alice");
    let handle = Push::new("s", &url, Duration::from_millis(100))
        .unwrap()
        .spawn(rx, || {});
    let mut status = handle.subscribe();
    until(&mut status, 5, "Live", |s| {
        matches!(s, PushStatus::Live { .. })
    })
    .await;
    // Start mid-GOP (the push drops up to the next key frame), as fast as it goes.
    let headers: Vec<FlvTag> = tags.iter().filter(|t| is_header(t)).cloned().collect();
    for t in headers
        .into_iter()
        .chain(tags.into_iter().skip(20).take(200))
    {
        tx.send(t).await.unwrap();
    }
    let mut events = loop {
        if let Some(rx) = huddle.events.lock().unwrap().take() {
            break rx;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let event = timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("media reaches the other Huddle")
            .expect("the publish goes on");
        seen.push(match event {
            PublisherEvent::VideoConfig { profile_level_id } => {
                format!("config {profile_level_id}")
            }
            PublisherEvent::Video { info, .. } => format!("video key={}", info.key),
            PublisherEvent::AudioConfig(c) => format!("audio config {} Hz", c.sample_rate),
            PublisherEvent::Audio(_) => "audio".into(),
            PublisherEvent::Ended { reason } => format!("ended {reason}"),
        });
    }
    let first_video = seen.iter().position(|e| e.starts_with("video")).unwrap();
    assert_eq!(seen[first_video], "video key=true", "{seen:?}");
    assert!(
        seen[..first_video]
            .iter()
            .any(|e| e.starts_with("config 42")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"audio config 44100 Hz".to_string()),
        "{seen:?}"
    );
    handle.stop();
    timeout(Duration::from_secs(2), handle.join())
        .await
        .unwrap();
    // A clean stop ends the publish on the other side.
    let ended = timeout(Duration::from_secs(5), async {
        while let Some(e) = events.recv().await {
            if let PublisherEvent::Ended { reason } = e {
                return reason;
            }
        }
        "channel closed".into()
    })
    .await
    .expect("the other Huddle sees the end");
    eprintln!("other Huddle: {seen:?}; ended: {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_times_out_in_the_handshake() {
    init_log();
    // Accepts TCP connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            held.push(socket);
        }
    });
    let mut push = Push::new(
        "s",
        &format!("rtmp://{addr}/live/k"),
        Duration::from_millis(100),
    )
    .unwrap();
    push.timeouts.handshake = Duration::from_millis(300);
    let (_tx, rx) = mpsc::channel(16);
    let handle = push.spawn(rx, || {});
    let mut status = handle.subscribe();
    let s = until(&mut status, 5, "Retrying", |s| {
        matches!(s, PushStatus::Retrying { .. })
    })
    .await;
    let PushStatus::Retrying { error, .. } = &s else {
        unreachable!()
    };
    assert!(
        error.ends_with("no RTMP handshake within 300 ms"),
        "{error}"
    );
    // Stopped while connecting again.
    until(&mut status, 5, "Connecting", |s| {
        matches!(s, PushStatus::Connecting { attempt: 2 })
    })
    .await;
    let start = Instant::now();
    while accepted.load(Ordering::Relaxed) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no second attempt"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.stop();
    timeout(Duration::from_secs(1), handle.join())
        .await
        .expect("stop() ends a connecting push at once");
}

/// The whole service: `[[rtmp.push]]` sends a room stream (an RTMP publisher's, so
/// H.264 RTP depacketized again and Opus transcoded to AAC) to an ffmpeg target
/// while it is published; the target is killed and restarted and the push resumes
/// on a key frame; when the publisher stops, the push ends and the target's file is
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_pushes_a_room_stream_and_resumes_after_the_target_restarts() {
    init_log();
    let port = free_port();
    let first = temp_dir().join("service1.flv");
    let second = temp_dir().join("service2.flv");
    let server = common::start_server(|c| {
        c.rtmp.push = vec![config::RtmpPush {
            stream: "studio-obs".into(),
            url: format!("rtmp://127.0.0.1:{port}/live/key"),
            retry_ms: 200,
        }];
    })
    .await;
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let ffmpeg = target(port, &first).await;
    let publisher = room_publisher(&format!("rtmp://127.0.0.1:{rtmp}/studio/obs"), 14);

    // ~5 s into the first target, then it dies; a new one takes the rest.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = Command::new("kill")
        .args(["-INT", &ffmpeg.id().to_string()])
        .status();
    // Interrupted, ffmpeg still finishes its file (its exit status says "interrupted").
    let _ = finished(ffmpeg, 15).await;
    let restarted = target(port, &second).await;
    let output = finished(restarted, 30).await;
    assert!(
        output.status.success(),
        "second target: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = finished(publisher, 15).await;

    for (file, least, most) in [(&first, 3.0, 7.0), (&second, 4.0, 9.0)] {
        let (streams, duration) = probe(file);
        let codecs: Vec<&str> = streams.iter().filter_map(|s| s.split(',').next()).collect();
        assert!(
            codecs.contains(&"h264") && codecs.contains(&"aac"),
            "{streams:?}"
        );
        assert!(
            (least..=most).contains(&duration),
            "{}: duration {duration}",
            file.display()
        );
        let (errors, frames) = decode(file);
        assert_eq!(errors, "", "{}: decode errors", file.display());
        assert!(
            frames as f64 >= (duration - 1.0) * 25.0,
            "{frames} frames in {duration} s"
        );
        eprintln!(
            "{}: {streams:?}, {duration} s, {frames} frames",
            file.display()
        );
        let _ = std::fs::remove_file(file);
    }
    assert!(
        !logged_all("push of stream \"studio-obs\"").is_empty(),
        "the push is logged"
    );
    assert!(
        logged_all(&format!("127.0.0.1:{port}"))
            .iter()
            .all(|l| !l.contains("/key")),
        "the key is never logged"
    );
    server.shutdown().await;
}
