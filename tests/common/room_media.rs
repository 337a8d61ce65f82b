//! A WebRTC stand-in (`webrtc_client`) publishing or playing in a room over a Room
//! API session (`common::Client`): for test crates that have both modules at their
//! root (`#[path = "common/room_media.rs"] mod room_media;`).

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::common::Client;
use crate::webrtc_client::{stream_request, RtcClient};

/// Publishes (`publish`) or plays `stream` in `room` over `ws` with `pc`, as the SDK
/// does: the answer is applied, then PUBLISHING/PLAYING must come (PENDING echoes
/// skipped) and the peer connects.
pub async fn start_stream(
    ws: &mut Client,
    pc: &mut RtcClient,
    publish: bool,
    ids: (&str, &str, &str),
    kinds: (bool, bool),
) {
    start_stream_with(ws, pc, publish, ids, kinds, str::to_owned).await
}

/// `start_stream`, with the answer changed by `answer` before the peer applies it.
pub async fn start_stream_with(
    ws: &mut Client,
    pc: &mut RtcClient,
    publish: bool,
    (msid, room, stream): (&str, &str, &str),
    kinds: (bool, bool),
    answer: impl FnOnce(&str) -> String,
) {
    let mut answer = Some(answer);
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
                let change = answer.take().expect("one answer");
                pc.apply_answer(&change(sdp)).await;
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

/// What a `Relay` drops toward the player: `drop` of every `every` RTP packets. With
/// `repairable`, their retransmissions pass (a NACK repairs the loss); without, every
/// retransmission of a dropped packet is dropped too.
#[derive(Debug, Clone, Copy)]
pub struct Loss {
    pub drop: u64,
    pub every: u64,
    pub repairable: bool,
}

/// What a `Relay` saw on its way to the player.
#[derive(Debug, Default)]
pub struct RelaySeen {
    /// RTP packets dropped.
    pub dropped: AtomicU64,
    /// Packets that came again after they were dropped, and were let through.
    pub repaired: AtomicU64,
    /// The SSRCs of sender reports (RTCP 200; the SRTCP header is in the clear).
    pub sender_reports: Mutex<HashSet<u32>>,
}

/// A UDP relay on 127.0.0.1 between a player and the SFU, which loses RTP toward the
/// player as its `Loss` says (STUN, DTLS and RTCP pass). Packets are SRTP: the RTP
/// header (SSRC, sequence number) is in the clear.
pub struct Relay {
    player_side: UdpSocket,
    sfu_side: UdpSocket,
    pub seen: Arc<RelaySeen>,
}

impl Relay {
    pub async fn bind() -> Relay {
        Relay {
            player_side: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            sfu_side: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            seen: Arc::default(),
        }
    }

    /// The SFU's answer with its 127.0.0.1 candidate replaced by the relay's, which
    /// starts relaying to it (until the test's runtime ends).
    pub fn answer(self, answer: &str, loss: Loss) -> String {
        let sfu: SocketAddr = answer
            .lines()
            .find_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                (l.starts_with("a=candidate:") && words.get(4) == Some(&"127.0.0.1"))
                    .then(|| format!("127.0.0.1:{}", words[5]).parse().ok())
                    .flatten()
            })
            .expect("a 127.0.0.1 candidate in the answer");
        let port = self.player_side.local_addr().expect("addr").port();
        tokio::spawn(self.run(sfu, loss));
        answer.replace(
            &format!(" 127.0.0.1 {} typ host", sfu.port()),
            &format!(" 127.0.0.1 {port} typ host"),
        )
    }

    async fn run(self, sfu: SocketAddr, loss: Loss) {
        let Relay {
            player_side,
            sfu_side,
            seen,
        } = self;
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let mut player = None;
        let mut n = 0u64;
        let mut dropped = HashSet::new();
        loop {
            tokio::select! {
                r = player_side.recv_from(&mut a) => {
                    let Ok((len, from)) = r else { return };
                    player = Some(from);
                    let _ = sfu_side.send_to(&a[..len], sfu).await;
                }
                r = sfu_side.recv_from(&mut b) => {
                    let Ok((len, _)) = r else { return };
                    let version_2 = len > 12 && b[0] >> 6 == 2;
                    // RTCP packet types are 200-207; RTP's marker and payload type
                    // never look like them in the tests (payload types < 128).
                    if version_2 && b[1] == 200 {
                        let ssrc = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        seen.sender_reports.lock().expect("relay").insert(ssrc);
                    }
                    if version_2 && !(200..=207).contains(&b[1]) {
                        let id = (
                            u16::from_be_bytes([b[2], b[3]]),
                            u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                        );
                        let again = dropped.contains(&id);
                        n += 1;
                        if (again && !loss.repairable) || (!again && n % loss.every < loss.drop) {
                            dropped.insert(id);
                            seen.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if again {
                            seen.repaired.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(to) = player {
                        let _ = player_side.send_to(&b[..len], to).await;
                    }
                }
            }
        }
    }
}
