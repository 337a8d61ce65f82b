//! A moderator's mute end to end: the room's creator mutes a publisher's video with
//! the Room API `mute` command; the player is told (`notifyStreamEvent`), its video
//! stops while audio flows, and at the unmute video resumes with a key frame and with
//! no gap in the player's sequence numbers. `webrtc` 0.21.1 clients stand in for
//! browsers; the server runs in process on 127.0.0.1. Every wait is bounded.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::sync::Arc;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use webrtc::media_stream::track_local::TrackLocal;

use common::*;
use webrtc_client::*;

const ROOM: &str = "r";
const STREAM: &str = "r-alice-1a2b";
const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;
const MEDIA_WAIT: Duration = Duration::from_secs(5);

/// Reads frames (each wait bounded by the client) until one matches; others are skipped.
async fn until(c: &mut Client, what: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let v = c.recv().await;
        if matches(&v) {
            return v;
        }
    }
    panic!("{}: no {what}", c.name);
}

fn mute_frame(op: &str, video: bool) -> Value {
    json!({"message": "sendData", "data": [{"operationId": op, "payload": {
        "command": "mute",
        "options": {"name": ROOM, "login": "alice", "video": video},
    }}]})
}

async fn expect_accepted_op(c: &mut Client, op: &str) {
    let v = until(c, "DataStatusEvent", |v| {
        v["message"] == "DataStatusEvent" && v["data"][0]["operationId"] == op
    })
    .await;
    assert_eq!(v["data"][0]["status"], "ACCEPTED", "{v}");
}

async fn expect_stream_event(c: &mut Client, kind: &str, msid: &str) {
    let v = until(c, kind, |v| v["message"] == "notifyStreamEvent").await;
    let d = &v["data"][0];
    assert_eq!(d["type"], kind, "{v}");
    assert_eq!(d["mediaSessionId"], msid, "{v}");
    assert_eq!(d["payload"]["streamName"], STREAM, "{v}");
}

/// H.264 NAL type of a single-NAL payload.
fn nal(p: &rtc::rtp::Packet) -> u8 {
    p.payload.first().map_or(0, |b| b & 0x1f)
}

fn video_seqs(items: &[Media]) -> Vec<u16> {
    items
        .iter()
        .filter_map(|m| match m {
            Media::Rtp { kind, packet } if *kind == VIDEO => Some(packet.header.sequence_number),
            _ => None,
        })
        .collect()
}

fn audio_count(items: &[Media]) -> usize {
    items
        .iter()
        .filter(|m| matches!(m, Media::Rtp { kind, .. } if *kind == AUDIO))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_mutes_and_unmutes_video_without_a_sequence_gap() {
    let server = start_server(|c| {
        c.media.udp_port = 0;
        c.media.advertise_ips = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let addr = server.local_addr();
    // The creator of the room may moderate it.
    let mut boss = Client::connect(addr, "boss").await;
    boss.join(ROOM).await;
    let mut alice = Client::connect(addr, "alice").await;
    alice.join(ROOM).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join(ROOM).await;
    alice.expect_event_in(ROOM, "JOINED").await;

    // Alice publishes H.264 + Opus; a key frame (IDR) every 10th video packet.
    let mut alice_pc = RtcClient::publisher(
        "alice-pc",
        &[
            (AUDIO, opus(111), 0x1111_1111),
            (VIDEO, h264(125), 0x2222_2222),
        ],
    )
    .await;
    room_media::start_stream(
        &mut alice,
        &mut alice_pc,
        true,
        ("m-alice", ROOM, STREAM),
        (true, true),
    )
    .await;
    let video = Arc::clone(&alice_pc.send_track(VIDEO).track);
    let audio = Arc::clone(&alice_pc.send_track(AUDIO).track);
    let (vpt, apt) = (
        alice_pc.negotiated_pt(VIDEO).await,
        alice_pc.negotiated_pt(AUDIO).await,
    );
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0..1500u32 {
            tick.tick().await;
            let mut v = vec![if n % 10 == 0 { 0x65 } else { 0x41 }];
            v.extend(body(n as usize, 600));
            let seq = (60_000 + n) as u16;
            let _ = video
                .write_rtp(rtp_packet(vpt, 0x2222_2222, seq, n * 1800, true, v))
                .await;
            let mut a = vec![0xfc];
            a.extend(body(n as usize, 80));
            let _ = audio
                .write_rtp(rtp_packet(apt, 0x1111_1111, seq, n * 960, false, a))
                .await;
        }
    });

    // Bob plays; video and audio flow.
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    until(&mut bob, "PUBLISHED", |v| {
        v["message"] == "OnDataEvent" && v["data"][0]["payload"]["name"] == "PUBLISHED"
    })
    .await;
    room_media::play_in_room(&mut bob, &mut bob_pc, ROOM, STREAM).await;
    let (got, _) = bob_pc.collect_rtp(&[VIDEO, AUDIO], 20, MEDIA_WAIT).await;
    assert!(got[0].1.len() >= 20 && got[1].1.len() >= 20, "media flows");

    // The creator mutes alice's video.
    boss.send_json(mute_frame("m1", true)).await;
    expect_accepted_op(&mut boss, "m1").await;
    expect_stream_event(&mut bob, "videoMuted", "m-play").await;
    // What was in flight arrives; then no video, audio goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = bob_pc.drain_media();
    let mut seqs: Vec<u16> = got[0].1.iter().map(|p| p.header.sequence_number).collect();
    seqs.extend(video_seqs(&before));
    let last = *seqs.last().expect("video before the mute");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let muted = bob_pc.drain_media();
    assert!(video_seqs(&muted).is_empty(), "no video while muted");
    assert!(
        audio_count(&muted) >= 25,
        "audio flows while video is muted"
    );

    // Unmuted: the publisher is asked for a key frame, video resumes with one, and
    // the player's sequence numbers go on where they stopped.
    alice_pc.drain_media();
    boss.send_json(mute_frame("m2", false)).await;
    expect_accepted_op(&mut boss, "m2").await;
    expect_stream_event(&mut bob, "videoUnmuted", "m-play").await;
    assert!(
        alice_pc
            .wait_key_frame_request(Duration::from_secs(2))
            .await
            .is_some(),
        "a key frame is asked at the unmute"
    );
    let (got, _) = bob_pc.collect_rtp(&[VIDEO], 15, MEDIA_WAIT).await;
    let resumed = &got[0].1;
    assert!(resumed.len() >= 15, "video resumes");
    assert_eq!(nal(&resumed[0]), 5, "video resumes with a key frame");
    for (i, p) in resumed.iter().enumerate() {
        assert_eq!(
            p.header.sequence_number,
            last.wrapping_add(1 + i as u16),
            "no sequence gap across the mute (packet {i})"
        );
    }

    sender.abort();
    alice_pc.close().await;
    bob_pc.close().await;
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown");
}
