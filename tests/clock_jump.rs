//! Fault injection (issue 17): the system clock jumping under the running service
//! (NTP catching up on a device that booted without a real-time clock, an operator
//! setting the date). The real `huddle` binary runs under libfaketime with only the
//! wall clock faked (`FAKETIME_DONT_FAKE_MONOTONIC=1`), its offset read from a file
//! the test rewrites: three days forward, then two hours behind the real time.
//! Meanwhile two members chat, a publisher streams to a player and the room is
//! recorded. Every timer of the service is monotonic, so nothing notices: the
//! sessions stay (keepalives), the chat and the media flow, no stream fails, and the
//! room record's timeline (its duration, its streams' offsets) is the real one, not
//! three days long. The time stamps of the service's log lines show the jump took
//! effect. (hyper's `Date` header is seen to stop after a backward jump, until the
//! clock passes the time it last rendered: cosmetic, and not Huddle's.)
//!
//! libfaketime is Debian's `faketime` package (`scripts/install-deps.sh test`). Under
//! qemu-user (`HUDDLE_TEST_EXEC_WRAPPER`, the aarch64 suite) the host's library cannot
//! be preloaded into the emulated binary: the test says so and does not run there.

mod common;
#[path = "support/process.rs"]
mod process;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::Value;

use common::*;
use process::{huddle_command, Running, TempFile};
use webrtc_client::*;

const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;

/// Debian's libfaketime, wherever its multiarch directory is.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("libfaketime not found: install Debian's faketime (scripts/install-deps.sh test)")
    })
}

/// The service's wall clock, seconds since the epoch: the time stamp of the log line
/// a new room makes (a member joins room `probe`, which no one else uses).
async fn server_clock(addr: std::net::SocketAddr, huddle: &mut Running, probe: &str) -> i64 {
    let mut c = Client::connect(addr, probe).await;
    c.join(probe).await;
    let line = tokio::task::block_in_place(|| {
        huddle.wait_line(
            &format!("room \"{probe}\": created"),
            Duration::from_secs(5),
        )
    });
    c.close().await;
    let stamp = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let out = Command::new("date")
        .args(["-u", "-d", &stamp, "+%s"])
        .output()
        .expect("date(1)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date(1) cannot read {stamp:?} of {line:?}"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Nothing bad for a media session: no FAILED or STOPPED (pongs answered meanwhile).
async fn quiet(c: &mut Client) {
    while let Some(v) = c.recv_any_within(Duration::from_millis(10)).await {
        if let Incoming::Json(v) = v {
            let status = v["data"][0]["status"].as_str().unwrap_or_default();
            assert!(
                !(v["message"] == "notifyStreamStatusEvent"
                    && matches!(status, "FAILED" | "STOPPED")),
                "{}: {v}",
                c.name
            );
        }
    }
}

/// The finished manifest of the room's recording in `dir` (bounded wait).
async fn room_manifest(dir: &Path) -> Value {
    for _ in 0..150 {
        let manifest = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".room.json"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
            .find(|m| !m["duration_ms"].is_null());
        if let Some(m) = manifest {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no finished room manifest in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_jumping_days_forward_and_back_breaks_nothing() {
    if std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty()) {
        eprintln!("skipped under an exec wrapper: the host's libfaketime cannot be preloaded into an emulated binary");
        return;
    }
    let dir = std::env::temp_dir().join(format!("huddle-clock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let records = dir.join("records");
    let offset = dir.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let config = TempFile::new(
        "clock",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls = false\n\
             [media]\nudp_port = 0\nadvertise_ips = [\"127.0.0.1\"]\n\
             [device]\ncamera = \"none\"\nmicrophone = \"none\"\n\
             [rtmp]\nenabled = false\n\
             [rooms]\nidle_timeout_ms = 3000\n\
             [records]\ndir = \"{}\"\n",
            records.display()
        ),
    );
    let mut command = huddle_command();
    command
        .args(["--config", config.path()])
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_CACHE_DURATION", "1");
    let mut huddle = Running::spawn(command, config);
    let addr = huddle.address();
    let skew = server_clock(addr, &mut huddle, "probe-start").await - now_secs();
    assert!(skew.abs() <= 2, "no offset yet: {skew} s");

    // Two members chatting in one room; a publisher, a player and a recording in
    // another.
    let mut alice = Client::connect(addr, "alice").await;
    let mut bob = Client::connect(addr, "bob").await;
    alice.join("talk").await;
    bob.join("talk").await;
    alice.expect_event_in("talk", "JOINED").await;
    let mut carol = Client::connect(addr, "carol").await;
    carol.join("clock").await;
    let (status, _, body) =
        http_request(addr, "POST", "/api/v1/rooms/clock/recording", &[], None).await;
    assert_eq!(status, 201, "{body}");
    let mut carol_pc = RtcClient::publisher(
        "carol-pc",
        &[(AUDIO, opus(111), 0x1111), (VIDEO, h264(125), 0x2222)],
    )
    .await;
    room_media::start_stream(
        &mut carol,
        &mut carol_pc,
        true,
        ("m-carol", "clock", "clock-carol"),
        (true, true),
    )
    .await;
    let camera = Camera::start_for(
        &carol_pc,
        Position {
            video: (1, 0),
            audio: (1, 0),
        },
        Duration::from_secs(60),
    )
    .await;
    let mut dave = Client::connect(addr, "dave").await;
    dave.join("clock").await;
    let mut dave_pc = RtcClient::player("dave-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    room_media::play_in_room(&mut dave, &mut dave_pc, "clock", "clock-carol").await;
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(m) = dave_pc.next_media(Duration::from_secs(5)).await {
                if matches!(m, Media::Rtp { kind, .. } if kind == VIDEO) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            dave_pc
        })
    };

    // Forward three days, then two hours behind the real time; 5 s in each.
    for (n, (jump, expect)) in [("+3d", 3 * 86_400), ("-2h", -7_200)]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&offset, format!("{jump}\n")).unwrap();
        // The service reads the file at most a second later.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let skew = server_clock(addr, &mut huddle, &format!("probe-{n}")).await - now_secs();
        assert!(
            (skew - expect).abs() <= 5,
            "{jump}: the server's clock is {skew} s off"
        );
        let before = received.load(Ordering::Relaxed);
        for i in 0..20 {
            chat_ok(&mut alice, &mut bob, "talk", &format!("{jump} {i}")).await;
            chat_ok(&mut bob, &mut alice, "talk", &format!("{jump} {i} back")).await;
            quiet(&mut carol).await;
            quiet(&mut dave).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let got = received.load(Ordering::Relaxed) - before;
        eprintln!(
            "{jump}: the server's clock {skew} s off; the player got {got} video packets in ~5 s"
        );
        // A packet every 20 ms: ~250 in 5 s.
        assert!(got >= 100, "{jump}: only {got} video packets");
    }

    // The recording ends: its timeline is the real one.
    let (status, _, body) =
        http_request(addr, "DELETE", "/api/v1/rooms/clock/recording", &[], None).await;
    assert_eq!(status, 204, "{body}");
    camera.stop().await;
    carol_pc.close().await;
    let manifest = room_manifest(&records).await;
    let duration = manifest["duration_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (8_000..60_000).contains(&duration),
        "the room was recorded ~12 s, not {duration} ms: {manifest}"
    );
    // A stream's end may come after the room's (its recorder finishing after the
    // stop): seconds, not days.
    let streams = manifest["streams"].as_array().cloned().unwrap_or_default();
    assert_eq!(streams.len(), 1, "{manifest}");
    for s in streams {
        let (start, end) = (s["start_ms"].as_u64(), s["end_ms"].as_u64());
        assert!(
            matches!((start, end), (Some(a), Some(b)) if a <= b && a <= duration && b < duration + 10_000),
            "stream offsets on the room's timeline: {s} (room {duration} ms)"
        );
    }
    eprintln!("room record: {manifest}");
    let pc = counter.await.expect("counter");
    pc.close().await;
    drop((alice, bob, carol, dave));
    huddle.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
