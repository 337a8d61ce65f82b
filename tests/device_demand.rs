//! Capture on demand in the whole service (in-process server on 127.0.0.1, the
//! test-pattern camera and the tone microphone, WebRTC clients): with nobody in a room
//! the device captures nothing; a participant joining brings the device's stream up
//! within 3 s; after the last one leaves and the grace, capture stops again;
//! `always_on` captures with nobody there; a push of the device's stream and an
//! operator's room recording make it capture too.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};

use common::*;
use room_media::*;
use webrtc_client::*;

const DEVICE: &str = "Room system";
/// `[device] capture_grace_ms` of these tests.
const GRACE: Duration = Duration::from_millis(1000);

fn device(c: &mut huddle::config::Config) {
    c.device.camera = "test-pattern".into();
    c.device.microphone = "tone".into();
    c.device.width = 320;
    c.device.height = 240;
    c.device.framerate = 15;
    c.device.bitrate_kbps = 300;
    c.device.capture_grace_ms = GRACE.as_millis() as u64;
}

/// The warnings (and errors) logged about the device while these tests run: going
/// idle and coming back are normal, not worth a warning (nor a failed stream).
struct Warnings;

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static LOGGER: Warnings = Warnings;

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        let line = record.args().to_string();
        if self.enabled(record.metadata()) && (line.contains("device") || line.contains(DEVICE)) {
            WARNINGS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    }

    fn flush(&self) {}
}

impl Warnings {
    fn install() {
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(log::LevelFilter::Warn);
    }

    fn assert_none() {
        let warnings = WARNINGS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(warnings.is_empty(), "{warnings:#?}");
    }
}

/// `GET /api/v1/device` from loopback.
async fn device_view(addr: SocketAddr) -> Value {
    let (status, _, body) = http_get(addr, "/api/v1/device").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// (video, audio) frames delivered so far, from the device view.
fn frames(view: &Value) -> (u64, u64) {
    let n = |source: &str| view[source]["frames"].as_u64().expect("frames");
    (n("camera"), n("microphone"))
}

/// `huddle_device_frames_total{kind}` from `/metrics`: (video, audio).
async fn metric_frames(addr: SocketAddr) -> (u64, u64) {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let value = |kind: &str| {
        let prefix = format!("huddle_device_frames_total{{kind=\"{kind}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {body}"))
    };
    (value("video"), value("audio"))
}

/// Asserts that the device captures nothing for `time`: its counts stand still and its
/// view says idle.
async fn assert_idle_for(addr: SocketAddr, time: Duration) {
    let before = device_view(addr).await;
    let metrics_before = metric_frames(addr).await;
    tokio::time::sleep(time).await;
    let after = device_view(addr).await;
    assert_eq!(frames(&before), frames(&after), "{before} → {after}");
    assert_eq!(metrics_before, metric_frames(addr).await);
    assert_eq!(after["idle"], true, "{after}");
    for source in ["camera", "microphone"] {
        let s = &after[source];
        assert_eq!(s["capturing"], false, "{after}");
        assert_eq!(s["delivering"], false, "{after}");
        assert_eq!(s["on"], true, "idle is not switched off: {after}");
        assert_eq!(s["info"], "Idle: nobody to send to", "{after}");
    }
}

/// Reads `client`'s frames until the room event PUBLISHED of `stream` (within `limit`);
/// its payload.
async fn published(client: &mut Client, stream: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = client
            .recv_within(left)
            .await
            .unwrap_or_else(|| panic!("no PUBLISHED of {stream} within {limit:?}"));
        let p = &v["data"][0]["payload"];
        if v["message"] == "OnDataEvent" && p["name"] == "PUBLISHED" && p["info"]["name"] == stream
        {
            return p.clone();
        }
    }
}

/// Waits until the device view satisfies `cond`.
async fn view_until(addr: SocketAddr, what: &str, limit: Duration, cond: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let view = device_view(addr).await;
        if cond(&view) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that the counts grow (both kinds) over `time`.
async fn assert_capturing_for(addr: SocketAddr, time: Duration) {
    let before = frames(&device_view(addr).await);
    tokio::time::sleep(time).await;
    let view = device_view(addr).await;
    let after = frames(&view);
    assert!(
        after.0 > before.0 + 5 && after.1 > before.1 + 10,
        "{before:?} → {after:?}: {view}"
    );
    assert_eq!(view["idle"], false, "{view}");
    assert_eq!(view["camera"]["capturing"], true, "{view}");
    assert_eq!(view["microphone"]["capturing"], true, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_brings_the_device_up_and_after_the_grace_it_idles_again() {
    Warnings::install();
    let server = start_server(|c| {
        device(c);
        c.device.rooms = Vec::new();
        c.device.join_new_rooms = true;
    })
    .await;
    let addr = server.local_addr();
    // Nobody in a room: nothing captured.
    assert_idle_for(addr, Duration::from_secs(2)).await;
    assert_eq!(frames(&device_view(addr).await), (0, 0), "never opened");

    // A participant joins: the device joins too and its stream plays within 3 s.
    let room = "standup";
    let stream = format!("{room}-{DEVICE}");
    let mut alice = Client::connect(addr, "alice").await;
    let joined = Instant::now();
    alice.join(room).await;
    let event = published(&mut alice, &stream, Duration::from_secs(3)).await;
    assert_eq!(event["info"]["login"], DEVICE, "{event}");
    let codecs = [
        (RtpCodecKind::Audio, opus(111)),
        (RtpCodecKind::Video, h264(106)),
    ];
    let mut pc = RtcClient::player("alice-pc", &codecs).await;
    play_in_room(&mut alice, &mut pc, room, &stream).await;
    let playing = joined.elapsed();
    eprintln!("joined → PLAYING in {} ms", playing.as_millis());
    assert!(
        playing < Duration::from_secs(3),
        "PLAYING after {playing:?}"
    );
    let (got, _) = pc
        .collect_rtp(
            &[RtpCodecKind::Video, RtpCodecKind::Audio],
            20,
            Duration::from_secs(10),
        )
        .await;
    let (video, audio) = (&got[0].1, &got[1].1);
    assert!(
        video.len() >= 20 && audio.len() >= 20,
        "video {} audio {}",
        video.len(),
        audio.len()
    );
    assert!(video.iter().all(|p| p.header.payload_type == 106), "H.264");
    assert_capturing_for(addr, Duration::from_millis(700)).await;
    let (video_frames, audio_frames) = metric_frames(addr).await;
    assert!(
        video_frames > 5 && audio_frames > 10,
        "{video_frames} {audio_frames}"
    );

    // The participant leaves: within the grace the device still captures, after it
    // it is idle and the counts stop.
    pc.close().await;
    let left = Instant::now();
    alice.close().await;
    view_until(addr, "still capturing within the grace", GRACE / 2, |v| {
        v["idle"] == false
    })
    .await;
    view_until(addr, "idle after the grace", Duration::from_secs(5), |v| {
        v["idle"] == true && v["camera"]["capturing"] == false
    })
    .await;
    let idle_after = left.elapsed();
    eprintln!("left → idle in {} ms", idle_after.as_millis());
    assert!(idle_after >= GRACE, "idle after {idle_after:?}");
    // Closing takes a poll interval.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_idle_for(addr, Duration::from_secs(2)).await;
    assert_eq!(
        server.stats().rooms,
        0,
        "the device left the room with alice"
    );

    // Back in a new room: up again, both camera and microphone in one publication.
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("again").await;
    published(&mut bob, &format!("again-{DEVICE}"), Duration::from_secs(3)).await;
    let (status, _, body) = http_get(addr, "/api/v1/streams").await;
    assert_eq!(status, 200);
    let streams: Value = serde_json::from_str(&body).expect("JSON");
    let device_stream = streams["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["login"] == DEVICE))
        .cloned()
        .unwrap_or_else(|| panic!("{streams}"));
    assert!(
        !device_stream["audio"].is_null() && !device_stream["video"].is_null(),
        "{device_stream}"
    );
    bob.close().await;
    server.shutdown().await;
    Warnings::assert_none();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_on_captures_with_nobody_there() {
    let server = start_server(|c| {
        device(c);
        c.device.always_on = true;
        c.device.rooms = Vec::new();
    })
    .await;
    let addr = server.local_addr();
    view_until(addr, "capturing", Duration::from_secs(10), |v| {
        v["camera"]["delivering"] == true && v["microphone"]["delivering"] == true
    })
    .await;
    assert_capturing_for(addr, Duration::from_secs(2)).await;
    assert_eq!(server.stats().rooms, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_or_a_room_recording_of_the_device_makes_it_capture() {
    Warnings::install();
    let dir = std::env::temp_dir().join(format!("huddle-demand-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let records = dir.clone();
    let server = start_server(move |c| {
        device(c);
        c.device.rooms = vec!["lobby".into()];
        c.device.join_new_rooms = false;
        c.records.dir = records;
    })
    .await;
    let addr = server.local_addr();
    let rtmp = server.rtmp_addr().expect("rtmp on");
    // Alone in its fixed room: idle.
    assert_idle_for(addr, Duration::from_millis(1500)).await;

    // A push of its stream (to this service's own RTMP listener).
    let url = format!("rtmp://127.0.0.1:{}/elsewhere/pusher", rtmp.port());
    let body = json!({"stream": format!("lobby-{DEVICE}"), "url": url, "retry_ms": 200});
    let (status, headers, answer) = http_request(
        addr,
        "POST",
        "/api/v1/pushes",
        &[("Content-Type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, 201, "{headers}\n{answer}");
    let push: Value = serde_json::from_str(&answer).expect("JSON");
    let id = push["id"].as_str().expect("id").to_owned();
    view_until(
        addr,
        "capturing for the push",
        Duration::from_secs(3),
        |v| v["camera"]["delivering"] == true && v["microphone"]["delivering"] == true,
    )
    .await;
    assert_capturing_for(addr, Duration::from_millis(700)).await;
    let (status, _, _) =
        http_request(addr, "DELETE", &format!("/api/v1/pushes/{id}"), &[], None).await;
    assert_eq!(status, 204);
    view_until(addr, "idle after the push", Duration::from_secs(5), |v| {
        v["idle"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_idle_for(addr, Duration::from_secs(1)).await;

    // A recording of its room, started by an operator: capturing until stopped.
    let (status, _, answer) =
        http_request(addr, "POST", "/api/v1/rooms/lobby/recording", &[], None).await;
    assert_eq!(status, 201, "{answer}");
    view_until(
        addr,
        "capturing for the recording",
        Duration::from_secs(3),
        |v| v["camera"]["delivering"] == true,
    )
    .await;
    assert_capturing_for(addr, Duration::from_millis(700)).await;
    let (status, _, answer) =
        http_request(addr, "DELETE", "/api/v1/rooms/lobby/recording", &[], None).await;
    assert_eq!(status, 204, "{answer}");
    view_until(
        addr,
        "idle after the recording",
        Duration::from_secs(5),
        |v| v["idle"] == true,
    )
    .await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Warnings::assert_none();
}
