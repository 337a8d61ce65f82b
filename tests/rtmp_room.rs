//! An RTMP publisher (Debian's ffmpeg) is a room participant: a WebSocket member sees
//! it join and publish `<room>-<login>`, a WebRTC player receives its H.264 (SPS/PPS
//! before the IDR) and its audio as Opus, and when ffmpeg ends its stream is
//! unpublished and it leaves. In token mode a publish without a token never joins.
//! Everything on 127.0.0.1 (the server's `[rtmp] listen` is 127.0.0.1:0).

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::process::{Command, Stdio};
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};

use common::rtmp::{events_until, ffmpeg, finish};
use common::*;
use huddle::auth::Rooms;
use huddle::device::h264::{self, nal};
use room_media::*;
use webrtc_client::*;

const SECRET: &str = "rtmp room test secret";

fn starts_idr(p: &rtc::rtp::Packet) -> bool {
    let t = h264::nal_type(&p.payload);
    t == nal::IDR
        || (t == nal::FU_A
            && p.payload
                .get(1)
                .is_some_and(|h| h & 0x9f == 0x80 | nal::IDR))
}

/// Whether the packet carries an SPS (alone or first in a STAP-A).
fn carries_sps(p: &rtc::rtp::Packet) -> bool {
    match h264::nal_type(&p.payload) {
        t if t == nal::SPS => true,
        t if t == nal::STAP_A => p.payload.get(3).map(|b| b & 0x1f) == Some(nal::SPS),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_publisher_is_a_room_participant_with_h264_and_opus() {
    let room = "studio";
    let server = start_server(|_| {}).await;
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests");
    assert!(rtmp.ip().is_loopback(), "tests never listen on 0.0.0.0");
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    assert!(alice.join(room).await.is_empty());

    let child = ffmpeg(&format!("rtmp://127.0.0.1:{}/{room}/obs", rtmp.port()), 10);
    let joined = events_until(&mut alice, room, "JOINED", Duration::from_secs(10)).await;
    assert_eq!(joined.last().unwrap()["info"], "obs", "{joined:?}");
    let published = events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    let stream = format!("{room}-obs");
    assert_eq!(
        published.last().unwrap()["info"],
        json!({"login": "obs", "name": stream}),
        "{published:?}"
    );
    // A later joiner finds it in STATE.
    let mut bob = Client::connect(addr, "bob").await;
    let state = bob.join(room).await;
    assert!(
        state
            .iter()
            .any(|e| e["login"] == "obs" && e["name"] == stream.as_str()),
        "{state:?}"
    );
    events_until(&mut alice, room, "JOINED", Duration::from_secs(5)).await;

    let codecs = [
        (RtpCodecKind::Audio, opus(111)),
        (RtpCodecKind::Video, h264(106)),
    ];
    let mut pc = RtcClient::player("alice-pc", &codecs).await;
    play_in_room(&mut alice, &mut pc, room, &stream).await;
    let (got, _) = pc
        .collect_rtp(
            &[RtpCodecKind::Video, RtpCodecKind::Audio],
            // RTMP cannot ask the encoder for a key frame: ~3 s of video holds at least
            // two of its IDRs (one a second), even when the player joins mid-GOP on a
            // slow (emulated) server.
            90,
            Duration::from_secs(10),
        )
        .await;
    let (video, audio) = (&got[0].1, &got[1].1);
    assert!(
        video.len() >= 90 && audio.len() >= 90,
        "video {} audio {}",
        video.len(),
        audio.len()
    );
    assert!(video.iter().all(|p| p.header.payload_type == 106));
    assert!(audio.iter().all(|p| p.header.payload_type == 111));
    let at = video
        .iter()
        .position(starts_idr)
        .expect("an IDR reaches the player");
    assert!(
        video[..at].iter().any(carries_sps),
        "SPS/PPS come before the IDR"
    );
    assert!(
        audio
            .iter()
            .all(|p| !p.payload.is_empty() && p.payload.len() < 1000),
        "Opus packets"
    );
    // Audio timestamps advance by 20 ms (960 at 48 kHz) per packet.
    let steps: Vec<u32> = audio
        .windows(2)
        .map(|w| w[1].header.timestamp.wrapping_sub(w[0].header.timestamp))
        .collect();
    assert!(
        steps.iter().filter(|s| **s == 960).count() * 10 >= steps.len() * 8,
        "{steps:?}"
    );

    let status = finish(child, Duration::from_secs(30)).await;
    assert!(status.success(), "ffmpeg: {status}");
    let end = events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["UNPUBLISHED", "LEFT"], "{end:?}");
    assert_eq!(end[0]["info"], json!({"login": "obs", "name": stream}));
    assert_eq!(end[1]["info"], "obs");
    let end = events_until(&mut bob, room, "LEFT", Duration::from_secs(5)).await;
    assert!(end.iter().any(|p| p["name"] == "UNPUBLISHED"), "{end:?}");
    assert_eq!(server.stats().participants, 2);
    pc.close().await;
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_refuses_an_rtmp_publish_without_a_token() {
    let room = "daily";
    let server = start_server(|c| {
        c.auth.mode = huddle::config::AuthMode::Token;
        c.auth.secret = SECRET.into();
    })
    .await;
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests");
    let token = |sub: &str| token(SECRET, sub, Rooms::List(vec![room.into()]), true);
    let mut alice = Client::open(server.local_addr(), "alice").await;
    let mut frame = connection_frame(Some("alice"));
    frame["data"][0]["custom"]["token"] = json!(token("alice"));
    alice.send_json(frame).await;
    alice.expect_message("getUserData").await;
    assert!(alice.join(room).await.is_empty());

    // No token: refused before it is anybody.
    let child = ffmpeg(&format!("rtmp://127.0.0.1:{}/{room}/obs", rtmp.port()), 2);
    let status = finish(child, Duration::from_secs(30)).await;
    assert!(!status.success(), "ffmpeg's publish is refused");
    alice.sync().await;
    assert_eq!(server.stats().participants, 1);

    // With a token for that login, it joins.
    let url = format!(
        "rtmp://127.0.0.1:{}/{room}/obs?token={}",
        rtmp.port(),
        token("obs")
    );
    let child = ffmpeg(&url, 2);
    let joined = events_until(&mut alice, room, "JOINED", Duration::from_secs(10)).await;
    assert_eq!(joined.last().unwrap()["info"], "obs");
    let _ = finish(child, Duration::from_secs(30)).await;
    events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    alice.close().await;
    server.shutdown().await;
}

/// OBS reconnects before its old socket is gone: the new publish of the same
/// room/login replaces the old one (it leaves, the new one joins and publishes). Room
/// limits apply as for browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_replaces_the_stale_publisher_and_a_full_room_refuses() {
    let room = "studio";
    let server = start_server(|c| c.rooms.max_participants = 2).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let url = format!("rtmp://127.0.0.1:{port}/{room}/obs");
    let mut first = ffmpeg(&url, 20);
    events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;

    let second = ffmpeg(&url, 3);
    let events = events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        ["UNPUBLISHED", "LEFT", "JOINED", "PUBLISHED"],
        "{events:?}"
    );
    // The replaced connection is closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first.try_wait().expect("wait for ffmpeg").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced ffmpeg is still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // alice and obs fill the room: another publisher is refused.
    let carol = ffmpeg(&format!("rtmp://127.0.0.1:{port}/{room}/carol"), 2);
    let status = finish(carol, Duration::from_secs(30)).await;
    assert!(!status.success(), "a full room refuses the publish");
    assert_eq!(server.stats().participants, 2);

    assert!(finish(second, Duration::from_secs(30)).await.success());
    let end = events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["UNPUBLISHED", "LEFT"], "{end:?}");
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_rtmp_port_in_use_is_named_with_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = test_config();
    c.rtmp.listen = taken.local_addr().unwrap();
    let e = match huddle::server::Server::start(c).await {
        Ok(_) => panic!("the RTMP port is taken"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.starts_with(&format!(
            "cannot listen on {} ([rtmp] listen): ",
            taken.local_addr().unwrap()
        )),
        "{e}"
    );
    assert!(e.contains("set [rtmp] listen to another address"), "{e}");
}

/// A server stopping while an RTMP publisher streams: shutdown completes, the encoder's
/// connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_live_rtmp_publisher_completes() {
    let room = "studio";
    let server = start_server(|_| {}).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let child = ffmpeg(&format!("rtmp://127.0.0.1:{port}/{room}/obs"), 30);
    events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown within 10 s");
    let status = finish(child, Duration::from_secs(20)).await;
    assert!(
        !status.success(),
        "ffmpeg's connection was closed: {status}"
    );
}

/// Runs an ffmpeg-family tool (bounded): its exit status, stdout and stderr.
async fn run_tool(program: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg is installed");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let Ok(out) = waited else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("{program} {args:?} did not finish within {limit:?}");
    };
    let out = out.expect("join").expect("wait for the tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audio and video codecs ffprobe finds at `url` (empty when it cannot open it;
/// ffmpeg's RTMP client also lists a data stream for RTMP's own data messages).
async fn probe(url: &str) -> Vec<String> {
    let (_, out, _) = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,codec_type",
            "-of",
            "json",
            url,
        ],
        Duration::from_secs(20),
    )
    .await;
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mut names: Vec<String> = v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["codec_type"] == "audio" || s["codec_type"] == "video")
        .filter_map(|s| s["codec_name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Video frames ffmpeg decodes from `url` in `seconds` (framemd5 lines of stream 0),
/// and its error output.
async fn decode(url: &str, seconds: u32) -> (usize, String) {
    let t = seconds.to_string();
    let (_, out, err) = run_tool(
        "ffmpeg",
        &[
            "-hide_banner",
            "-v",
            "error",
            "-i",
            url,
            "-t",
            &t,
            "-map",
            "0:v",
            "-f",
            "framemd5",
            "-",
        ],
        Duration::from_secs(30),
    )
    .await;
    let frames = out
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with('0'))
        .count();
    (frames, err)
}

/// ffprobe and ffmpeg play an RTMP publisher's stream back over RTMP: H.264 and AAC,
/// decodable from its first frame; a player is a member of the room while it plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_player_gets_a_room_stream_as_h264_and_aac() {
    let room = "studio";
    let server = start_server(|_| {}).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let publisher = ffmpeg(&format!("rtmp://127.0.0.1:{port}/{room}/obs"), 20);
    events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;

    let url = format!("rtmp://127.0.0.1:{port}/{room}/{room}-obs");
    assert_eq!(probe(&url).await, ["aac", "h264"]);
    let events = events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["JOINED", "LEFT"], "{events:?}");
    assert!(
        events[0]["info"]
            .as_str()
            .is_some_and(|l| l.starts_with("RTMP player ")),
        "{events:?}"
    );

    let (frames, errors) = decode(&url, 4).await;
    assert!(frames >= 60, "{frames} frames decoded; {errors}");
    assert!(errors.trim().is_empty(), "decoding errors: {errors}");
    events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    assert_eq!(server.stats().participants, 2, "alice and the publisher");

    // No such stream: refused before anyone sees the player.
    assert!(probe(&format!("rtmp://127.0.0.1:{port}/{room}/nope"))
        .await
        .is_empty());
    alice.sync().await;
    // A stream of another room: the room core refuses the play (the player has
    // joined that room, and leaves it).
    assert!(probe(&format!("rtmp://127.0.0.1:{port}/other/{room}-obs"))
        .await
        .is_empty());
    alice.sync().await;
    assert_eq!(server.stats().participants, 2, "nobody stays behind");

    let mut publisher = publisher;
    let _ = publisher.kill();
    let _ = publisher.wait();
    alice.close().await;
    server.shutdown().await;
}

/// FLV has no VP8: a VP8 stream is refused with the reason. In token mode a player
/// needs a token for the room, and joins under its login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_players_of_vp8_streams_and_without_tokens_are_refused() {
    let room = "daily";
    let server = start_server(|c| {
        c.auth.mode = huddle::config::AuthMode::Token;
        c.auth.secret = SECRET.into();
    })
    .await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let token =
        |sub: &str, publish: bool| token(SECRET, sub, Rooms::List(vec![room.into()]), publish);
    let mut alice = Client::open(server.local_addr(), "alice").await;
    let mut frame = connection_frame(Some("alice"));
    frame["data"][0]["custom"]["token"] = json!(token("alice", true));
    alice.send_json(frame).await;
    alice.expect_message("getUserData").await;
    assert!(alice.join(room).await.is_empty());
    let mut pc = RtcClient::publisher(
        "alice-pc",
        &[
            (RtpCodecKind::Audio, opus(111), 0x1111_1111),
            (RtpCodecKind::Video, vp8(96), 0x2222_2222),
        ],
    )
    .await;
    let stream = format!("{room}-alice");
    start_stream(
        &mut alice,
        &mut pc,
        true,
        ("m-pub", room, &stream),
        (true, true),
    )
    .await;

    let url = format!("rtmp://127.0.0.1:{port}/{room}/{stream}");
    // No token, a token for another room's holder without rights: refused.
    assert!(probe(&url).await.is_empty());
    let bad = format!("{url}?token=not.a.jwt");
    assert!(probe(&bad).await.is_empty());
    alice.sync().await;
    assert_eq!(server.stats().participants, 1);
    // A valid token: the viewer joins the room, and the VP8 stream is refused.
    let (ok, _, err) = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            &format!("{url}?token={}", token("viewer", false)),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert!(!ok, "a VP8 stream cannot be played over RTMP");
    assert!(
        err.contains("StreamNotFound") || err.contains("VP8"),
        "{err}"
    );
    alice.sync().await;
    assert_eq!(server.stats().participants, 1, "refused before joining");
    pc.close().await;
    alice.close().await;
    server.shutdown().await;
}

/// A publisher of audio alone (a podcast encoder, `ffmpeg -vn`) publishes too: a
/// WebRTC player gets its Opus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_rtmp_publisher_publishes() {
    let room = "radio";
    let server = start_server(|_| {}).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let mut child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args([
            "-f", "lavfi", "-i", "sine", "-t", "8", "-c:a", "aac", "-f", "flv",
        ])
        .arg(format!("rtmp://127.0.0.1:{port}/{room}/podcast"))
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed");
    let published = events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    let stream = format!("{room}-podcast");
    assert_eq!(published.last().unwrap()["info"]["name"], stream.as_str());
    let mut pc = RtcClient::player("alice-pc", &[(RtpCodecKind::Audio, opus(111))]).await;
    play_in_room(&mut alice, &mut pc, room, &stream).await;
    let (got, _) = pc
        .collect_rtp(&[RtpCodecKind::Audio], 50, Duration::from_secs(10))
        .await;
    assert!(got[0].1.len() >= 50, "{} Opus packets", got[0].1.len());
    let _ = child.kill();
    let _ = child.wait();
    pc.close().await;
    alice.close().await;
    server.shutdown().await;
}

/// An RTMP publisher's audio level (measured on its decoded AAC) makes it the room's
/// active speaker when it is loud; a silent one beside it never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loud_rtmp_publisher_becomes_the_active_speaker_and_a_silent_one_never() {
    let room = "radio";
    let server = start_server(|_| {}).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let publish = |source: &str, login: &str| {
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args([
                "-f", "lavfi", "-i", source, "-t", "10", "-c:a", "aac", "-f", "flv",
            ])
            .arg(format!("rtmp://127.0.0.1:{port}/{room}/{login}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg is installed")
    };
    // Silence first, then a 440 Hz sine at 1/8 of full scale (-21 dBov).
    let quiet = publish("anullsrc=r=44100:cl=mono", "quiet");
    events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    let loud = publish("sine=frequency=440", "loud");
    let seen = events_until(&mut alice, room, "ACTIVE_SPEAKER", Duration::from_secs(12)).await;
    let speaker = &seen.last().unwrap()["info"];
    assert_eq!(speaker["name"], format!("{room}-loud").as_str(), "{seen:?}");
    assert_eq!(speaker["login"], "loud");
    for mut child in [quiet, loud] {
        let _ = child.kill();
        let _ = child.wait();
    }
    alice.close().await;
    server.shutdown().await;
}

/// H.264 with B-frames would play out of order in browsers: the publish is refused
/// with the reason (NetStream.Publish.Rejected), it never publishes, and a baseline
/// publisher after it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_publisher_with_b_frames_is_refused_with_the_reason() {
    let room = "studio";
    let server = start_server(|_| {}).await;
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(server.local_addr(), "alice").await;
    assert!(alice.join(room).await.is_empty());
    let url = format!("rtmp://127.0.0.1:{port}/{room}/obs");
    let (ok, _, err) = run_tool(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=30",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "main",
            "-bf",
            "2",
            "-g",
            "30",
            "-f",
            "flv",
            &url,
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(!ok, "the B-frame publish is refused: {err}");
    let events = events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["JOINED", "LEFT"], "{events:?}");

    let child = ffmpeg(&url, 2);
    events_until(&mut alice, room, "PUBLISHED", Duration::from_secs(10)).await;
    assert!(finish(child, Duration::from_secs(30)).await.success());
    alice.close().await;
    server.shutdown().await;
}
