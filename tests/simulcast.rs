//! Simulcast end to end: a `webrtc` 0.21.1 publisher sends three rid layers (q, h, f:
//! synthetic H.264 whose key frames and layer the test controls, the mid and rid
//! header extensions on every packet); the SFU answers `a=simulcast:recv`, learns each
//! layer's SSRC from its rid and forwards exactly one layer per player. A player that
//! asks for the low layer (`sendData` `setLayer`) and then the high one switches at a
//! key frame of each new layer, with continuous sequence numbers and a monotonic
//! clock; a player whose REMB says 90 kbps moves to the low layer while another
//! player stays on the high one; a player behind a relay that loses a third of its RTP
//! (retransmissions too) moves to the low layer from its receiver reports. Without
//! simulcast, such a player gets key frames only while another gets every frame; and a
//! publisher that loses a third on its way in thins nobody (that loss is not the
//! players'). The server runs in process on 127.0.0.1; every wait is bounded.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::sync::Arc;
use std::time::Duration;

use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use webrtc::media_stream::track_local::TrackLocal;

use common::*;
use webrtc_client::*;

const ROOM: &str = "r";
const STREAM: &str = "r-alice-5c";
const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;
/// The layers low → high: rid, SSRC, payload bytes per 20 ms packet (80, 200 and
/// 440 kbps), first sequence number and timestamp.
const LAYERS: [(&str, u32, usize, u16, u32); 3] = [
    ("q", 0x0100_0001, 200, 1_000, 7_000_000),
    ("h", 0x0200_0002, 500, 30_000, 900_000_000),
    ("f", 0x0300_0003, 1100, 65_000, 4_000_000_000),
];

/// Reads frames until one matches (each wait bounded by the client).
async fn until(c: &mut Client, what: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let v = c.recv().await;
        if matches(&v) {
            return v;
        }
    }
    panic!("{}: no {what}", c.name);
}

/// The server with its media on 127.0.0.1 (and `tweak`).
async fn sfu_server(tweak: impl FnOnce(&mut huddle::config::Config)) -> huddle::server::Server {
    start_server(|c| {
        c.media.udp_port = 0;
        c.media.advertise_ips = vec!["127.0.0.1".parse().unwrap()];
        tweak(c);
    })
    .await
}

/// Three members in the room, each having seen the later ones join.
async fn three(addr: std::net::SocketAddr, logins: [&str; 3]) -> (Client, Client, Client) {
    let mut first = Client::connect(addr, logins[0]).await;
    first.join(ROOM).await;
    let mut second = Client::connect(addr, logins[1]).await;
    second.join(ROOM).await;
    let mut third = Client::connect(addr, logins[2]).await;
    third.join(ROOM).await;
    first.expect_event_in(ROOM, "JOINED").await;
    first.expect_event_in(ROOM, "JOINED").await;
    second.expect_event_in(ROOM, "JOINED").await;
    (first, second, third)
}

async fn set_layer(c: &mut Client, layer: &str) {
    let op = c
        .send_data(
            "setLayer",
            json!({"mediaSessionId": "m-play", "layer": layer}),
        )
        .await;
    let v = until(c, "DataStatusEvent", |v| {
        v["message"] == "DataStatusEvent" && v["data"][0]["operationId"] == op
    })
    .await;
    assert_eq!(v["data"][0]["status"], "ACCEPTED", "{v}");
}

/// The id the offer gave a header extension.
fn extmap_id(sdp: &str, uri: &str) -> u8 {
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

/// The mid of the offer's video m-line.
fn video_mid(sdp: &str) -> String {
    let video = sdp.split("m=video").nth(1).expect("a video m-line");
    video
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .expect("a mid")
        .to_owned()
}

/// (layer, key frame) of a packet the player got: the payload says it.
fn what(p: &Packet) -> (u8, bool) {
    (p.payload[1], p.payload[0] & 0x1f == 5)
}

/// Video packets the player gets over `d`.
async fn video_for(pc: &mut RtcClient, d: Duration) -> Vec<Packet> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match pc.next_media(left).await {
            Some(Media::Rtp { kind, packet }) if kind == VIDEO => out.push(packet),
            Some(_) => {}
            None => break,
        }
    }
    out
}

/// Checks what a player got: sequence numbers without a gap, timestamps that never go
/// back, and every layer (the first one too) starting with a key frame of it. Returns
/// the layers in the order they came. `mid_stream`: the first packet is not the
/// player's first (no key frame expected there).
fn check(name: &str, packets: &[Packet], mid_stream: bool) -> Vec<u8> {
    assert!(!packets.is_empty(), "{name}: no video");
    let mut layers = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let (layer, key) = what(p);
        if layers.last() != Some(&layer) {
            assert!(
                key || (mid_stream && i == 0),
                "{name}: layer {layer} starts with a key frame (packet {i})"
            );
            layers.push(layer);
        }
        if i > 0 {
            let prev = &packets[i - 1];
            assert_eq!(
                p.header.sequence_number,
                prev.header.sequence_number.wrapping_add(1),
                "{name}: sequence numbers continue (packet {i}, layer {layer})"
            );
            assert!(
                p.header.timestamp.wrapping_sub(prev.header.timestamp) < 0x8000_0000,
                "{name}: the clock goes on (packet {i}: {} after {})",
                p.header.timestamp,
                prev.header.timestamp
            );
            assert_eq!(p.header.ssrc, prev.header.ssrc, "{name}: one SSRC");
        }
    }
    layers
}

/// Alice publishes Opus and one H.264 track in three rid layers into `ROOM` (checking
/// the answer's simulcast lines); a task sends a packet of each layer every 20 ms (a
/// frame each), a key frame of each layer once a second, the layers a third of a second
/// apart.
async fn publish_layers(alice: &mut Client) -> (RtcClient, tokio::task::JoinHandle<()>) {
    // Alice: Opus and one H.264 track in three rid layers.
    let mut alice_pc =
        RtcClient::with_engine("alice-pc", &[(AUDIO, opus(111)), (VIDEO, h264(125))], true).await;
    alice_pc.add_send_track(AUDIO, opus(111), 0x0a0a_0a0a).await;
    let rids: Vec<(&str, u32)> = LAYERS.iter().map(|l| (l.0, l.1)).collect();
    alice_pc.add_send_layers(VIDEO, h264(125), &rids).await;
    room_media::start_stream(
        alice,
        &mut alice_pc,
        true,
        ("m-alice", ROOM, STREAM),
        (true, true),
    )
    .await;
    let offer = alice_pc.offer.clone();
    assert!(offer.contains("a=simulcast:send q;h;f"), "{offer}");
    let answer = alice_pc.answer.clone().expect("answer");
    assert!(answer.contains("a=simulcast:recv q;h;f"), "{answer}");
    for rid in ["q", "h", "f"] {
        assert!(answer.contains(&format!("a=rid:{rid} recv")), "{answer}");
    }
    let mid_id = extmap_id(&answer, "urn:ietf:params:rtp-hdrext:sdes:mid");
    let rid_id = extmap_id(&answer, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id");
    let mid = video_mid(&offer);

    // Every 20 ms a packet of each layer (a frame each); a key frame of each layer
    // once a second, the layers a third of a second apart.
    let video = Arc::clone(&alice_pc.send_track(VIDEO).track);
    let audio = Arc::clone(&alice_pc.send_track(AUDIO).track);
    let (vpt, apt) = (
        alice_pc.negotiated_pt(VIDEO).await,
        alice_pc.negotiated_pt(AUDIO).await,
    );
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0..3000u32 {
            tick.tick().await;
            for (l, (rid, ssrc, size, seq0, ts0)) in LAYERS.iter().enumerate() {
                let key = n % 50 == (l as u32) * 17;
                let mut payload = vec![if key { 0x65 } else { 0x41 }, l as u8];
                payload.extend(body(n as usize, size - 2));
                let mut p = rtp_packet(
                    vpt,
                    *ssrc,
                    seq0.wrapping_add(n as u16),
                    ts0.wrapping_add(n * 1800),
                    true,
                    payload,
                );
                p.header
                    .set_extension(mid_id, bytes::Bytes::from(mid.clone().into_bytes()))
                    .expect("mid extension");
                p.header
                    .set_extension(rid_id, bytes::Bytes::from(rid.as_bytes().to_vec()))
                    .expect("rid extension");
                let _ = video.write_rtp(p).await;
            }
            let mut a = vec![0xfc];
            a.extend(body(n as usize, 80));
            let _ = audio
                .write_rtp(rtp_packet(apt, 0x0a0a_0a0a, n as u16, n * 960, false, a))
                .await;
        }
    });
    (alice_pc, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_get_one_layer_switched_at_its_key_frames_by_request_and_by_bandwidth() {
    let server = sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (mut alice, mut bob, mut carol) = three(addr, ["alice", "bob", "carol"]).await;
    let (mut alice_pc, sender) = publish_layers(&mut alice).await;

    // Bob plays: the high layer (nothing asked, nothing limits him), audio too.
    let codecs = [(AUDIO, opus(111)), (VIDEO, h264(106))];
    let mut bob_pc = RtcClient::player("bob-pc", &codecs).await;
    for c in [&mut bob, &mut carol] {
        until(c, "PUBLISHED", |v| {
            v["message"] == "OnDataEvent" && v["data"][0]["payload"]["name"] == "PUBLISHED"
        })
        .await;
    }
    room_media::play_in_room(&mut bob, &mut bob_pc, ROOM, STREAM).await;
    let (got, _) = bob_pc
        .collect_rtp(&[VIDEO, AUDIO], 20, Duration::from_secs(5))
        .await;
    assert!(got[1].1.len() >= 20, "audio flows");
    let mut bob_video = got[0].1.clone();
    bob_video.extend(video_for(&mut bob_pc, Duration::from_millis(1500)).await);
    assert_eq!(
        check("bob", &bob_video, false).last(),
        Some(&2),
        "the high layer by default"
    );

    // Bob asks for the low layer (a small tile): the SFU asks the q layer for a key
    // frame by its SSRC and switches there.
    alice_pc.drain_media();
    set_layer(&mut bob, "low").await;
    let mut asked_q = false;
    while let Some((_, ssrc, _)) = alice_pc
        .wait_key_frame_request(Duration::from_secs(2))
        .await
    {
        if ssrc == LAYERS[0].1 {
            asked_q = true;
            break;
        }
    }
    assert!(asked_q, "a PLI for the low layer's SSRC");
    bob_video.extend(video_for(&mut bob_pc, Duration::from_millis(2000)).await);
    let layers = check("bob", &bob_video, false);
    assert_eq!(layers.last(), Some(&0), "low after asking: {layers:?}");
    // Up again (the focused tile).
    set_layer(&mut bob, "high").await;
    bob_video.extend(video_for(&mut bob_pc, Duration::from_millis(2000)).await);
    let layers = check("bob", &bob_video, false);
    assert_eq!(layers.last(), Some(&2), "high after asking: {layers:?}");
    let switches = layers.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches >= 2, "{layers:?}");

    // Carol plays; her receiver says 90 kbps: only the low layer (80 kbps) fits, and 90
    // is not enough above it to try the next one.
    let mut carol_pc = RtcClient::player("carol-pc", &codecs).await;
    room_media::play_in_room(&mut carol, &mut carol_pc, ROOM, STREAM).await;
    let mut carol_video = video_for(&mut carol_pc, Duration::from_millis(1000)).await;
    assert_eq!(check("carol", &carol_video, false).last(), Some(&2));
    let carol_ssrc = carol_video[0].header.ssrc;
    let track = carol_pc.remote_track(VIDEO).expect("carol's video track");
    for _ in 0..10 {
        track
            .write_rtcp(vec![Box::new(ReceiverEstimatedMaximumBitrate {
                sender_ssrc: 1,
                bitrate: 90_000.0,
                ssrcs: vec![carol_ssrc],
            })])
            .await
            .expect("REMB");
        carol_video.extend(video_for(&mut carol_pc, Duration::from_millis(250)).await);
    }
    carol_video.extend(video_for(&mut carol_pc, Duration::from_millis(1000)).await);
    let layers = check("carol", &carol_video, false);
    assert_eq!(layers, [2, 0], "carol moves to the low layer");
    // Bob is not affected.
    bob_pc.drain_media();
    let bob_after = video_for(&mut bob_pc, Duration::from_millis(1500)).await;
    assert_eq!(check("bob", &bob_after, true), [2], "bob stays high");
    // The low layer's rate is what carol gets now: about 80 kbps, not 440.
    let queued = carol_pc.drain_media();
    assert!(
        queued.iter().all(|m| match m {
            Media::Rtp { kind, packet } => *kind != VIDEO || what(packet).0 == 0,
            _ => true,
        }),
        "carol stays low"
    );
    let last_second = video_for(&mut carol_pc, Duration::from_millis(1000)).await;
    let bytes: usize = last_second.iter().map(|p| p.payload.len()).sum();
    assert!(bytes * 8 < 150_000, "carol gets {} bps of video", bytes * 8);

    sender.abort();
    alice_pc.close().await;
    bob_pc.close().await;
    carol_pc.close().await;
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown");
}

/// Plays `STREAM` over `ws` through a relay that drops 3 of every 10 RTP packets
/// toward the player, and every retransmission of a dropped one (so NACK cannot
/// repair the loss).
async fn play_through_relay(ws: &mut Client, name: &str) -> RtcClient {
    let codecs = [(AUDIO, opus(111)), (VIDEO, h264(106))];
    let mut pc = RtcClient::player(name, &codecs).await;
    let relay = room_media::Relay::bind().await;
    let loss = room_media::Loss {
        drop: 3,
        every: 10,
        repairable: false,
    };
    room_media::start_stream_with(
        ws,
        &mut pc,
        false,
        ("m-play", ROOM, STREAM),
        (true, true),
        |answer| relay.answer(answer, loss),
    )
    .await;
    pc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_losing_a_third_of_its_packets_moves_to_the_low_layer() {
    let server = sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    alice.join(ROOM).await;
    let mut dave = Client::connect(addr, "dave").await;
    dave.join(ROOM).await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let (alice_pc, sender) = publish_layers(&mut alice).await;
    until(&mut dave, "PUBLISHED", |v| {
        v["message"] == "OnDataEvent" && v["data"][0]["payload"]["name"] == "PUBLISHED"
    })
    .await;

    let mut dave_pc = play_through_relay(&mut dave, "dave-pc").await;

    // The player's receiver reports say about 30 % lost: down one layer per report.
    let mut low = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline && !low {
        // A second of what gets through the relay (about 35 of 50 packets).
        let got = video_for(&mut dave_pc, Duration::from_millis(1000)).await;
        low = got.len() >= 15 && got.iter().all(|p| what(p).0 == 0);
    }
    assert!(low, "dave ends on the low layer");

    sender.abort();
    alice_pc.close().await;
    dave_pc.close().await;
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown");
}

/// Alice publishes without simulcast (a key frame every 10th video packet, 20 ms
/// apart); with `gaps`, every third packet is never sent (lost before the SFU). Dave
/// and Erin have joined too; returns once both saw it PUBLISHED.
async fn publish_plain(
    alice: &mut Client,
    others: [&mut Client; 2],
    gaps: bool,
) -> (RtcClient, tokio::task::JoinHandle<()>) {
    let mut alice_pc = RtcClient::publisher(
        "alice-pc",
        &[
            (AUDIO, opus(111), 0x1111_1111),
            (VIDEO, h264(125), 0x2222_2222),
        ],
    )
    .await;
    room_media::start_stream(
        alice,
        &mut alice_pc,
        true,
        ("m-alice", ROOM, STREAM),
        (true, true),
    )
    .await;
    let video = Arc::clone(&alice_pc.send_track(VIDEO).track);
    let vpt = alice_pc.negotiated_pt(VIDEO).await;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0..3000u32 {
            tick.tick().await;
            if gaps && n % 3 == 1 {
                continue;
            }
            let mut v = vec![if n % 10 == 0 { 0x65 } else { 0x41 }, 0];
            v.extend(body(n as usize, 600));
            let _ = video
                .write_rtp(rtp_packet(vpt, 0x2222_2222, n as u16, n * 1800, true, v))
                .await;
        }
    });
    for c in others {
        until(c, "PUBLISHED", |v| {
            v["message"] == "OnDataEvent" && v["data"][0]["payload"]["name"] == "PUBLISHED"
        })
        .await;
    }
    (alice_pc, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_simulcast_a_player_losing_a_third_gets_key_frames_only_and_others_all() {
    let server = sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (mut alice, mut dave, mut erin) = three(addr, ["alice", "dave", "erin"]).await;
    let (alice_pc, sender) = publish_plain(&mut alice, [&mut dave, &mut erin], false).await;
    let mut dave_pc = play_through_relay(&mut dave, "dave-pc").await;
    let mut erin_pc = RtcClient::player("erin-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    room_media::play_in_room(&mut erin, &mut erin_pc, ROOM, STREAM).await;

    // Dave's reports say about 30 % lost: only key frames for him (what the relay
    // lets through of them), with his sequence numbers closing the withheld gaps.
    let mut only_keys = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline && !only_keys {
        let got = video_for(&mut dave_pc, Duration::from_millis(1500)).await;
        only_keys = got.len() >= 3 && got.iter().all(|p| what(p).1);
    }
    assert!(only_keys, "dave gets key frames only");
    // Erin gets every frame.
    erin_pc.drain_media();
    let erin_got = video_for(&mut erin_pc, Duration::from_millis(1000)).await;
    let deltas = erin_got.iter().filter(|p| !what(p).1).count();
    assert!(deltas >= 30, "erin gets the delta frames too: {deltas}");

    sender.abort();
    alice_pc.close().await;
    dave_pc.close().await;
    erin_pc.close().await;
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown");
}

/// A publisher whose own uplink loses a third: every player's receiver reports say a
/// third lost, but none of it is between the SFU and them, so nobody is thinned (the
/// gaps the SFU passed on are taken off their reports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_losing_a_third_on_its_way_in_thins_no_player() {
    // The test reads no signalling for 18 s: no pings to miss meanwhile.
    let server = sfu_server(|c| c.signalling.ping_interval_ms = 60_000).await;
    let addr = server.local_addr();
    let (mut alice, mut dave, mut erin) = three(addr, ["alice", "dave", "erin"]).await;
    let (alice_pc, sender) = publish_plain(&mut alice, [&mut dave, &mut erin], true).await;
    let mut players = Vec::new();
    for (ws, name) in [(&mut dave, "dave-pc"), (&mut erin, "erin-pc")] {
        let mut pc = RtcClient::player(name, &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
        room_media::play_in_room(ws, &mut pc, ROOM, STREAM).await;
        players.push(pc);
    }
    // Over 9 s (several receiver reports each), every 1.5 s both get delta frames
    // (about 30 a second arrive; key frames only would be none).
    for round in 0..6 {
        for (i, pc) in players.iter_mut().enumerate() {
            let got = video_for(pc, Duration::from_millis(1500)).await;
            let deltas = got.iter().filter(|p| !what(p).1).count();
            let gaps = got
                .windows(2)
                .filter(|w| {
                    w[1].header.sequence_number != w[0].header.sequence_number.wrapping_add(1)
                })
                .count();
            assert!(
                deltas >= 20,
                "player {i}, round {round}: {deltas} delta packets of {} in 1.5 s (thinned?)",
                got.len()
            );
            // The publisher's gaps reach the players as gaps (their decoders and NACKs
            // see the loss).
            assert!(gaps >= 5, "player {i}, round {round}: {gaps} gaps");
        }
    }

    sender.abort();
    alice_pc.close().await;
    for pc in players {
        pc.close().await;
    }
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown");
}
