//! Recording in the whole service: the device's test-pattern stream (`[device] record`)
//! and an RTMP publisher (`?record=true`) record like a browser's stream (fragmented
//! MP4, H.264 + Opus) and are listed at `/client/records`; a records directory that
//! fills up (a 1 MiB tmpfs in a mount namespace of the service's own) stops the
//! recording with a clear log line, keeps the file playable, and the room keeps
//! forwarding.

mod common;
#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;
use process::{huddle_command, Running, TempFile};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-rec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `GET path` with `Accept: application/json`: the body.
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Codec names ffprobe finds in `file`, and the container's duration.
fn probe(file: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
        ])
        .args(["-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe is installed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut codecs: Vec<String> = v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["codec_name"].as_str().map(str::to_owned))
        .collect();
    codecs.sort();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codecs, duration)
}

/// ffmpeg's complaints decoding `file` (empty: it decodes).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn records(listing: &Value) -> Vec<Value> {
    listing["records"].as_array().cloned().unwrap_or_default()
}

/// Under CPU emulation (the aarch64 suite under qemu-user) everything takes several
/// times as long: the publisher's AAC → Opus transcoder starts in seconds, not
/// milliseconds.
fn emulated() -> bool {
    std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_and_an_rtmp_publisher_record_and_are_listed() {
    let dir = temp_dir("service");
    let records_dir = dir.clone();
    let server = start_server(move |c| {
        c.records.dir = records_dir;
        c.device.camera = "test-pattern".into();
        c.device.microphone = "tone".into();
        c.device.width = 320;
        c.device.height = 240;
        c.device.rooms = vec!["lobby".into()];
        c.device.record = true;
        // Recorded alone in its room (capture on demand would leave it idle).
        c.device.always_on = true;
    })
    .await;
    let addr = server.local_addr();
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine", "-t", "5"])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
        ])
        .args([
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-c:a",
            "aac",
            "-f",
            "flv",
        ])
        .arg(format!("rtmp://127.0.0.1:{rtmp}/studio/obs?record=true"))
        .stdin(Stdio::null())
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "the RTMP publish: {status}");

    // The RTMP record finished and the device's listed (in progress).
    let limit = Duration::from_secs(if emulated() { 60 } else { 20 });
    let deadline = Instant::now() + limit;
    let listing = loop {
        let listing = records(&get_json(addr, "/client/records"));
        let rtmp_done = listing
            .iter()
            .any(|r| r["stream"] == "studio-obs" && r["in_progress"] == false);
        let device = listing.iter().any(|r| r["room"] == "lobby");
        if rtmp_done && device {
            break listing;
        }
        assert!(
            Instant::now() < deadline,
            "within {limit:?}: RTMP record finished {rtmp_done}, device's listed {device}: {listing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rtmp = listing
        .iter()
        .find(|r| r["stream"] == "studio-obs")
        .unwrap();
    assert_eq!(rtmp["kind"], "stream");
    assert_eq!(rtmp["room"], "studio");
    let file = dir.join(rtmp["name"].as_str().unwrap());
    let (codecs, duration) = probe(&file);
    assert_eq!(
        codecs,
        ["h264", "opus"],
        "AAC is recorded as the room's Opus"
    );
    // Emulated, the stream is published only once the transcoder has started.
    let shortest = if emulated() { 1.0 } else { 3.5 };
    assert!(
        (shortest..=6.0).contains(&duration),
        "{duration} s of a 5 s publish"
    );
    assert_eq!(decode_errors(&file), "");

    let device = listing.iter().find(|r| r["room"] == "lobby").unwrap();
    assert_eq!(device["in_progress"], true, "{device}");
    // In progress, it is already playable up to its last fragment.
    let (codecs, _) = probe(&dir.join(device["name"].as_str().unwrap()));
    assert_eq!(codecs, ["h264", "opus"]);

    server.shutdown().await;
    let meta: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("{}.json", device["name"].as_str().unwrap()))).unwrap(),
    )
    .unwrap();
    assert!(
        meta["ended"].is_string(),
        "shutdown ends the recording: {meta}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The service in a mount namespace of its own whose records directory is a 1 MiB
/// tmpfs: the device's 720p test pattern fills it in a few seconds.
#[test]
fn a_full_disk_stops_the_recording_and_the_room_goes_on() {
    let dir = temp_dir("full");
    let records = dir.join("records");
    std::fs::create_dir_all(&records).unwrap();
    let config = TempFile::new(
        "record-full",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls = false\n\
             [media]\nudp_port = 0\nadvertise_ips = [\"127.0.0.1\"]\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\n\
             [records]\ndir = \"{}\"\n\
             [device]\ncamera = \"test-pattern\"\nmicrophone = \"tone\"\n\
             rooms = [\"lobby\"]\nrecord = true\nalways_on = true\nbitrate_kbps = 2500\n",
            records.display()
        ),
    );
    let service = huddle_command();
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m huddle-test \"$0\" && exec \"$@\"")
        .arg(&records)
        .arg(service.get_program())
        .args(service.get_args())
        .args(["--config", config.path()]);
    let mut running = Running::spawn(command, config);
    let addr = running.address();
    let line = running.wait_line("No space left", Duration::from_secs(30));
    assert!(
        line.contains("record"),
        "the log names the recording: {line}"
    );
    // The room goes on: the device still publishes, the service answers.
    let health = process::get(addr, "/health");
    assert!(health.contains("200 OK"), "{health}");
    // The file, seen through the service's own mount namespace, plays up to its last
    // fragment.
    let pid = running.pid();
    let inside =
        PathBuf::from(format!("/proc/{pid}/root")).join(records.strip_prefix("/").unwrap());
    let file = std::fs::read_dir(&inside)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "mp4"))
        .expect("the record is there");
    let (codecs, duration) = probe(&file);
    assert!(codecs.contains(&"h264".to_string()), "{codecs:?}");
    assert!(duration > 0.5, "{duration} s");
    assert_eq!(decode_errors(&file), "");
    // The sidecar says why, once the writer has finished with the file (it logs first).
    let sidecar = format!("{}.json", file.display());
    let deadline = Instant::now() + Duration::from_secs(15);
    let meta = loop {
        let meta: Value = std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if meta["error"].is_string() || Instant::now() > deadline {
            break meta;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        meta["error"].as_str().is_some_and(|e| e.contains("space")),
        "{meta}"
    );
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
