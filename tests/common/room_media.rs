//! A WebRTC stand-in (`webrtc_client`) publishing or playing in a room over a Room
//! API session (`common::Client`): for test crates that have both modules at their
//! root (`#[path = "common/room_media.rs"] mod room_media;`).

#![allow(dead_code)]

use std::time::Duration;

use crate::common::Client;
use crate::webrtc_client::{stream_request, RtcClient};

/// Publishes (`publish`) or plays `stream` in `room` over `ws` with `pc`, as the SDK
/// does: the answer is applied, then PUBLISHING/PLAYING must come (PENDING echoes
/// skipped) and the peer connects.
pub async fn start_stream(
    ws: &mut Client,
    pc: &mut RtcClient,
    publish: bool,
    (msid, room, stream): (&str, &str, &str),
    kinds: (bool, bool),
) {
    let offer = pc.create_offer().await;
    ws.send_json(stream_request(publish, msid, stream, room, &offer, kinds))
        .await;
    let status = if publish { "PUBLISHING" } else { "PLAYING" };
    let mut answered = false;
    loop {
        let v = ws.recv().await;
        match v["message"].as_str() {
            Some("setRemoteSDP") => {
                let sdp = v["data"][1].as_str().expect("answer text");
                pc.apply_answer(sdp).await;
                answered = true;
            }
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PENDING" => {}
            // Who talks changes whenever it does (the device's microphone, say).
            Some("OnDataEvent") if v["data"][0]["payload"]["name"] == "ACTIVE_SPEAKER" => {}
            Some("notifyStreamStatusEvent") => {
                assert_eq!(v["data"][0]["status"], status, "{v}");
                assert!(answered, "the answer comes before {status}");
                break;
            }
            _ => panic!("unexpected frame while starting {stream}: {v}"),
        }
    }
    pc.wait_connected(Duration::from_secs(5)).await;
}

/// The answer, then PLAYING, for the play of `stream` (audio and video).
pub async fn play_in_room(ws: &mut Client, pc: &mut RtcClient, room: &str, stream: &str) {
    start_stream(ws, pc, false, ("m-play", room, stream), (true, true)).await;
}
