//! The device participant over the real Room API and WebRTC (in-process server, Rust
//! clients on 127.0.0.1): the test pattern and the tone arrive as H.264 and Opus RTP in
//! a player; a camera and microphone that cannot be opened leave the device in its
//! room without a stream while everyone else is served.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::json;

use common::*;
use huddle::device::h264::{self, nal};
use room_media::*;
use webrtc_client::*;

const DEVICE: &str = "Room system";

#[tokio::test]
async fn a_player_receives_the_devices_h264_and_opus() {
    let room = "lobby";
    let server = start_server(|c| {
        c.device.camera = "test-pattern".into();
        c.device.microphone = "tone".into();
        c.device.width = 320;
        c.device.height = 240;
        c.device.framerate = 15;
        c.device.bitrate_kbps = 300;
        c.device.rooms = vec![room.into()];
        c.device.join_new_rooms = false;
    })
    .await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    // The device is in its room from the start, and publishes once its sources are up:
    // its stream is in STATE, or PUBLISHED follows.
    let state = alice.join(room).await;
    assert!(
        state.iter().any(|e| e == DEVICE || e["login"] == DEVICE),
        "{state:?}"
    );
    let stream = format!("{room}-{DEVICE}");
    if !state.iter().any(|e| e["name"] == stream.as_str()) {
        let p = tokio::time::timeout(
            Duration::from_secs(15),
            alice.expect_event_in(room, "PUBLISHED"),
        )
        .await
        .expect("the device publishes within 15 s");
        assert_eq!(p["info"], json!({"login": DEVICE, "name": stream}), "{p}");
    }
    assert_eq!(server.stats().participants, 2);
    assert_eq!(server.stats().sessions, 1, "the device has no socket");

    let codecs = [
        (RtpCodecKind::Audio, opus(111)),
        (RtpCodecKind::Video, h264(106)),
    ];
    let mut pc = RtcClient::player("alice-pc", &codecs).await;
    play_in_room(&mut alice, &mut pc, room, &stream).await;
    let (got, _) = pc
        .collect_rtp(
            &[RtpCodecKind::Video, RtpCodecKind::Audio],
            30,
            Duration::from_secs(15),
        )
        .await;
    let (video, audio) = (&got[0].1, &got[1].1);
    assert!(
        video.len() >= 30 && audio.len() >= 30,
        "video {} audio {}",
        video.len(),
        audio.len()
    );
    assert!(
        video.iter().all(|p| p.header.payload_type == 106),
        "the player's PT"
    );
    assert!(audio.iter().all(|p| p.header.payload_type == 111));
    // The key frame the new player asked for comes with its parameter sets: SPS+PPS in a
    // STAP-A right before the IDR's first packet.
    let starts_idr = |p: &rtc::rtp::Packet| {
        let t = h264::nal_type(&p.payload);
        t == nal::IDR
            || (t == nal::FU_A
                && p.payload
                    .get(1)
                    .is_some_and(|h| h & 0x9f == 0x80 | nal::IDR))
    };
    let at = video
        .iter()
        .position(starts_idr)
        .expect("an IDR reaches the new player");
    assert!(at > 0, "the IDR has something before it");
    let stap = &video[at - 1].payload;
    assert_eq!(
        h264::nal_type(stap),
        nal::STAP_A,
        "SPS/PPS right before the IDR"
    );
    assert_eq!(
        stap.get(3).map(|b| b & 0x1f),
        Some(nal::SPS),
        "the STAP-A starts with the SPS"
    );
    assert!(
        audio
            .iter()
            .all(|p| !p.payload.is_empty() && p.payload.len() < 400),
        "Opus voice frames"
    );
    pc.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_whose_camera_and_microphone_fail_stays_in_the_room_without_a_stream() {
    let room = "board room";
    let server = start_server(|c| {
        c.device.camera = "/dev/huddle-no-such-camera".into();
        c.device.microphone = "huddle_no_such_pcm".into();
        c.device.rooms = vec![room.into()];
        c.device.retry_ms = 50;
    })
    .await;
    let addr = server.local_addr();
    // Several failed attempts later the service still serves everyone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut alice = Client::connect(addr, "alice").await;
    let state = alice.join(room).await;
    assert_eq!(state, vec![json!(DEVICE)], "the device, no stream");
    let mut bob = Client::connect(addr, "bob").await;
    bob.join(room).await;
    alice.expect_event_in(room, "JOINED").await;
    let op = bob.send_chat(room, "alice", "still here?").await;
    let msg = alice.expect_event_in(room, "MESSAGE").await;
    assert_eq!(msg["info"], json!({"from": "bob", "text": "still here?"}));
    bob.expect_accepted(&op).await;
    // A new room gets the device too (join_new_rooms), still without a stream.
    let state = bob.join("second").await;
    assert!(state.is_empty());
    bob.expect_event_in("second", "JOINED").await;
    assert_eq!(server.stats().streams, 0);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

/// Issue 10, finding 11: the device's login is reserved. A browser may connect with
/// it (the SDK gets its ESTABLISHED) but every join fails with the reason, so it can
/// neither impersonate the device nor lock it out of a room; the device stays in.
#[tokio::test]
async fn a_browser_cannot_join_as_the_device() {
    let room = "lobby";
    let server = start_server(|c| {
        // A device participant without working sources is enough here.
        c.device.camera = "/dev/huddle-no-such-camera".into();
        c.device.microphone = "huddle_no_such_pcm".into();
        c.device.rooms = vec![room.into()];
        c.device.retry_ms = 50;
    })
    .await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    assert_eq!(alice.join(room).await, vec![json!(DEVICE)]);
    let reason = format!("Login '{DEVICE}' is reserved for the device: connect with another login");
    for login in [DEVICE, " room SYSTEM"] {
        let mut impostor = Client::connect(addr, login).await;
        for target in [room, "a-new-room"] {
            let op = impostor.send_data("join", json!({"name": target})).await;
            assert_eq!(impostor.expect_failed(&op).await, reason, "{login:?}");
        }
        impostor.sync().await;
        impostor.close().await;
    }
    // alice heard nothing of it, and the device is still in its room.
    alice.sync().await;
    let mut bob = Client::connect(addr, "bob").await;
    let state = bob.join(room).await;
    assert_eq!(state, vec![json!(DEVICE), json!("alice")]);
    alice.expect_event_in(room, "JOINED").await;
    assert_eq!(server.stats().rooms, 1, "the refused joins created no room");
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}
