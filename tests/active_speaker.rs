//! The active speaker end to end: two `webrtc` 0.21.1 publishers offer the RFC 6464
//! audio-level extension, as browsers do, and send Opus packets carrying it, one loud
//! (-10 dBov) and one silent (-127 dBov). A third member, who publishes nothing, gets
//! the room event `ACTIVE_SPEAKER` naming the loud one within a second of the first
//! loud packet, and nothing more while nothing changes; when the two swap, the event
//! names the other within a second and a half. The admin API's room view and a
//! `room.active_speaker` webhook (to a receiver the test runs) say the same. The
//! server runs in process on 127.0.0.1; every wait is bounded.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use common::*;
use huddle::config::Webhook;
use room_media::start_stream;
use webrtc_client::*;

const ROOM: &str = "r";
const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const LOUD: u8 = 10;
const SILENT: u8 = 127;

/// A webhook receiver: every request's JSON body, answered 200.
struct Hooks {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    async fn start() -> Hooks {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&got);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body (bounded).
                    let body = loop {
                        let n = match tokio::time::timeout(
                            Duration::from_secs(5),
                            socket.read(&mut chunk),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len || buf.len() > 1 << 20 {
                            break buf[end + 4..].to_vec();
                        }
                    };
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        store.lock().unwrap().push(v);
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Hooks { addr, got }
    }

    fn speakers(&self) -> Vec<(String, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "room.active_speaker")
            .map(|v| {
                assert_eq!(v["room"], ROOM, "{v}");
                (
                    v["login"].as_str().unwrap_or_default().to_owned(),
                    v["stream"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// A publisher offering the audio-level extension, audio only.
async fn publisher(ws: &mut Client, login: &str, ssrc: u32) -> RtcClient {
    let mut pc = RtcClient::with_extensions(
        &format!("{login}-pc"),
        &[(AUDIO, opus(111))],
        &[(AUDIO, LEVEL_URI)],
    )
    .await;
    pc.add_send_track(AUDIO, opus(111), ssrc).await;
    let stream = format!("{ROOM}-{login}");
    start_stream(
        ws,
        &mut pc,
        true,
        (&format!("m-{login}"), ROOM, &stream),
        (true, false),
    )
    .await;
    assert!(
        pc.offer.contains(LEVEL_URI),
        "the client offers the extension:\n{}",
        pc.offer
    );
    let answer = pc.answer.clone().unwrap_or_default();
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("a=extmap:") && l.contains(LEVEL_URI)),
        "the answer accepts the audio level extension:\n{answer}"
    );
    pc
}

/// Sends an Opus packet every 20 ms with the level in `level` (read per packet),
/// until `stop`.
async fn talk(pc: &RtcClient, level: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    let track = Arc::clone(&pc.send_track(AUDIO).track);
    let ssrc = pc.send_track(AUDIO).ssrc;
    let pt = pc.negotiated_pt(AUDIO).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let limit = Instant::now() + Duration::from_secs(30);
        let mut n: u32 = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
            tick.tick().await;
            let mut payload = vec![0xfc];
            payload.extend(body(n as usize, 60));
            let packet = rtp_packet(pt, ssrc, n as u16, n * 960, false, payload);
            let ext = HeaderExtension::AudioLevel(AudioLevelExtension {
                level: level.load(Ordering::Relaxed),
                voice: false,
            });
            if track
                .write_rtp_with_extensions(packet, &[ext])
                .await
                .is_err()
            {
                break;
            }
            n += 1;
        }
    });
}

/// The next `ACTIVE_SPEAKER` of `ROOM` within `limit`: login and stream.
async fn next_speaker(c: &mut Client, limit: Duration) -> Option<(String, String)> {
    let (room, login, stream) = c.next_speaker(limit).await?;
    assert_eq!(room, ROOM);
    Some((login, stream))
}

async fn room_speaker(addr: std::net::SocketAddr) -> Value {
    let (status, _, body) = http_get(addr, &format!("/api/v1/rooms/{ROOM}")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["active_speaker"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loud_publisher_becomes_the_active_speaker_and_a_swap_follows() {
    let hooks = Hooks::start().await;
    let url = format!("http://{}/hooks", hooks.addr);
    let server = start_server(|c| {
        c.webhooks = vec![Webhook {
            url,
            secret: "s".into(),
            events: vec!["room.active_speaker".into()],
            timeout_ms: 2000,
            retry_ms: 20,
            max_attempts: 10,
            queue: 64,
        }]
    })
    .await;
    let addr = server.local_addr();
    let mut carol = Client::connect(addr, "carol").await;
    carol.join(ROOM).await;
    let mut alice = Client::connect(addr, "alice").await;
    alice.join(ROOM).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join(ROOM).await;
    alice.expect_event_in(ROOM, "JOINED").await;

    let alice_pc = publisher(&mut alice, "alice", 0x1111_1111).await;
    bob.expect_event_in(ROOM, "PUBLISHED").await;
    let bob_pc = publisher(&mut bob, "bob", 0x2222_2222).await;
    assert_eq!(room_speaker(addr).await, Value::Null);

    let (alice_level, bob_level) = (
        Arc::new(AtomicU8::new(LOUD)),
        Arc::new(AtomicU8::new(SILENT)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    talk(&alice_pc, Arc::clone(&alice_level), Arc::clone(&stop)).await;
    talk(&bob_pc, Arc::clone(&bob_level), Arc::clone(&stop)).await;

    let first = next_speaker(&mut carol, Duration::from_secs(3)).await;
    let took = start.elapsed();
    println!("loud publisher became the active speaker after {took:?}");
    assert_eq!(
        first,
        Some(("alice".to_owned(), format!("{ROOM}-alice"))),
        "after {took:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Every member hears it, the publishers too (the speaker included).
    for c in [&mut alice, &mut bob] {
        let got = next_speaker(c, Duration::from_secs(2)).await;
        assert_eq!(got.map(|g| g.0).as_deref(), Some("alice"), "{}", c.name);
    }
    assert_eq!(room_speaker(addr).await["login"], "alice");

    // Nothing changes: nothing more is sent.
    let again = next_speaker(&mut carol, Duration::from_millis(1500)).await;
    assert_eq!(again, None, "no change, no event");

    // They swap.
    alice_level.store(SILENT, Ordering::Relaxed);
    bob_level.store(LOUD, Ordering::Relaxed);
    let swapped = Instant::now();
    let next = next_speaker(&mut carol, Duration::from_secs(3)).await;
    let took = swapped.elapsed();
    println!("the swap changed the active speaker after {took:?}");
    assert_eq!(
        next,
        Some(("bob".to_owned(), format!("{ROOM}-bob"))),
        "after {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(room_speaker(addr).await["stream"], format!("{ROOM}-bob"));

    wait_until("both webhooks", Duration::from_secs(5), || {
        hooks.speakers().len() >= 2
    })
    .await;
    assert_eq!(
        hooks.speakers(),
        vec![
            ("alice".to_owned(), format!("{ROOM}-alice")),
            ("bob".to_owned(), format!("{ROOM}-bob")),
        ]
    );
    stop.store(true, Ordering::Relaxed);
    alice_pc.close().await;
    bob_pc.close().await;
}
