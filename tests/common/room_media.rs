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
    /// Set: the relay drops everything both ways from then on (the peer's network
    /// gone, without a word).
    pub cut: std::sync::atomic::AtomicBool,
    /// An impaired relay's datagrams dropped by its full queue, and those it passed.
    pub queue_dropped: AtomicU64,
    pub passed: AtomicU64,
}

/// A bad link toward a player (`Relay::impaired_answer`): random loss, a rate cap
/// with a bounded queue (tail drop, like `tc tbf`) and a fixed delay (like netem's).
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    pub loss_percent: u64,
    pub rate_bps: u64,
    pub queue: Duration,
    pub delay: Duration,
}

/// A UDP relay on 127.0.0.1 between a player (or a publisher) and the SFU, which loses
/// RTP toward the player as its `Loss` says (STUN, DTLS and RTCP pass), and everything
/// once `seen.cut` is set. Packets are SRTP: the RTP
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
        let (sfu, answer) = self.redirect(answer);
        tokio::spawn(self.run(sfu, loss));
        answer
    }

    /// `answer`, with the relay making a bad link of the way to the player as
    /// `impairment` says (everything toward the player: STUN, DTLS, RTP, RTCP).
    pub fn impaired_answer(self, answer: &str, impairment: Impairment) -> String {
        let (sfu, answer) = self.redirect(answer);
        tokio::spawn(self.run_impaired(sfu, impairment));
        answer
    }

    /// The SFU's address in `answer`, and the answer with the SFU's 127.0.0.1
    /// candidate turned into the relay's.
    fn redirect(&self, answer: &str) -> (SocketAddr, String) {
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
        let answer = answer.replace(
            &format!(" 127.0.0.1 {} typ host", sfu.port()),
            &format!(" 127.0.0.1 {port} typ host"),
        );
        (sfu, answer)
    }

    async fn run_impaired(self, sfu: SocketAddr, bad: Impairment) {
        let Relay {
            player_side,
            sfu_side,
            seen,
        } = self;
        let player_side = Arc::new(player_side);
        let player: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        // Toward the player: lost at random, then through a link of `rate_bps` with a
        // queue of at most `queue` (what does not fit is dropped, as `tc tbf` does),
        // then `delay` later (as netem's delay), in order.
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let out = {
            let (player_side, player) = (Arc::clone(&player_side), Arc::clone(&player));
            async move {
                while let Some((at, d)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    let to = *player.lock().expect("relay");
                    if let Some(to) = to {
                        let _ = player_side.send_to(&d, to).await;
                    }
                }
            }
        };
        tokio::spawn(out);
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut link_free = tokio::time::Instant::now();
        loop {
            tokio::select! {
                r = player_side.recv_from(&mut a) => {
                    let Ok((len, from)) = r else { return };
                    *player.lock().expect("relay") = Some(from);
                    let _ = sfu_side.send_to(&a[..len], sfu).await;
                }
                r = sfu_side.recv_from(&mut b) => {
                    let Ok((len, _)) = r else { return };
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if rng % 100 < bad.loss_percent {
                        seen.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    let wire = Duration::from_nanos(len as u64 * 8 * 1_000_000_000 / bad.rate_bps.max(1));
                    let done = link_free.max(now) + wire;
                    if done.duration_since(now) > bad.queue {
                        seen.queue_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    link_free = done;
                    seen.passed.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send((done + bad.delay, b[..len].to_vec()));
                }
            }
        }
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
                    if seen.cut.load(Ordering::Relaxed) {
                        continue;
                    }
                    player = Some(from);
                    let _ = sfu_side.send_to(&a[..len], sfu).await;
                }
                r = sfu_side.recv_from(&mut b) => {
                    let Ok((len, _)) = r else { return };
                    if seen.cut.load(Ordering::Relaxed) {
                        continue;
                    }
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
