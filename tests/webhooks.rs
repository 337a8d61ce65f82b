//! `[[webhooks]]` against a receiver the test runs (HTTP/1.1 on 127.0.0.1): every
//! event of a join/publish/unpublish/leave cycle arrives once, in order, signed; a
//! filter delivers only its events; a receiver that answers 503 and then is down
//! gets the events once it is back while the rooms carry on; a full queue counts
//! its drops; queued events go out at shutdown. End to end with a real server: an
//! RTMP publisher with `?record=true` gives `recording.started` then
//! `recording.finished`; a room joined with `record: true` is mixed when everyone has
//! left (`mix.finished`); the device's camera switched off and on through the admin
//! API gives `device.camera_lost` then `device.camera_back`.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::rtmp;
use common::*;
use huddle::config::Webhook;
use huddle::events::EventKind;
use room_media::*;
use webrtc_client::*;

const SECRET: &str = "webhook test secret";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Delivery {
    answered: u16,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    json: Value,
}

/// A webhook receiver on 127.0.0.1: records every request, answers `status`.
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Delivery>>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            status: Arc::new(AtomicU16::new(200)),
            got: Arc::default(),
            task: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let (status, got) = (self.status.clone(), self.got.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (status, got) = (status.clone(), got.clone());
                tokio::spawn(async move {
                    let _ = answer(socket, status, got).await;
                });
            }
        }));
    }

    /// Down: the listener is closed (connections are refused).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Back on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("the port again");
        self.serve(listener);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn all(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// The events answered with 2xx, in arrival order.
    fn delivered(&self) -> Vec<Delivery> {
        self.all()
            .into_iter()
            .filter(|d| (200..300).contains(&d.answered))
            .collect()
    }

    /// The first delivered `event` (checked: signed, well formed); panics after
    /// `limit` naming the event and listing what was delivered meanwhile.
    async fn wait_event(&self, event: &str, limit: Duration) -> Delivery {
        let deadline = Instant::now() + limit;
        loop {
            let delivered = self.delivered();
            if let Some(d) = delivered.iter().find(|d| d.json["event"] == event) {
                check_delivery(d);
                return d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for the webhook event {event}; delivered: {:?}",
                summary(&delivered, &["login", "stream", "file"])
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where `event` is in the delivered events (the first one).
    fn position(&self, event: &str) -> Option<usize> {
        self.delivered()
            .iter()
            .position(|d| d.json["event"] == event)
    }

    async fn wait_delivered(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        let got = self.got.clone();
        wait_until(&format!("{n} delivered events"), limit, || {
            got.lock()
                .unwrap()
                .iter()
                .filter(|d| (200..300).contains(&d.answered))
                .count()
                >= n
        })
        .await;
        self.delivered()
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Delivery>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    let answered = status.load(Ordering::SeqCst);
    let mut parts = request_line.split(' ');
    assert_eq!(parts.next(), Some("POST"), "{request_line}");
    let target = parts.next().unwrap_or_default().to_string();
    got.lock().unwrap().push(Delivery {
        answered,
        target,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
        body,
    });
    let reply =
        format!("HTTP/1.1 {answered} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    socket.write_all(reply.as_bytes()).await?;
    socket.shutdown().await
}

fn hook(url: String, events: &[&str]) -> Webhook {
    Webhook {
        url,
        secret: SECRET.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        timeout_ms: 2000,
        retry_ms: 20,
        max_attempts: 30,
        queue: 256,
    }
}

/// The signature header, the id/event headers and the common fields are right.
fn check_delivery(d: &Delivery) {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let sig = d
        .headers
        .get("x-huddle-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .unwrap_or_else(|| panic!("no signature: {d:?}"));
    let mac: Vec<u8> = (0..sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&sig[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(sig.len(), 64, "{sig}");
    ring::hmac::verify(&key, &d.body, &mac).expect("a valid signature");
    assert_eq!(d.headers["content-type"], "application/json");
    assert_eq!(
        d.headers["x-huddle-event"],
        d.json["event"].as_str().unwrap()
    );
    assert_eq!(
        d.headers["x-huddle-delivery"],
        d.json["id"].as_str().unwrap()
    );
    assert!(EventKind::from_name(d.json["event"].as_str().unwrap()).is_some());
    let ts = d.json["timestamp"].as_str().expect("timestamp");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
}

/// (event, room, fields) of each delivery.
fn summary(ds: &[Delivery], fields: &[&str]) -> Vec<Value> {
    ds.iter()
        .map(|d| {
            let mut v = json!({"event": d.json["event"], "room": d.json["room"]});
            for f in fields {
                if let Some(x) = d.json.get(*f) {
                    v[*f] = x.clone();
                }
            }
            v
        })
        .collect()
}

/// A fresh records directory for one test.
fn records_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-webhooks-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One admin API request with a JSON body from 127.0.0.1 (no keys: loopback is
/// allowed): (status, body).
async fn api_json(addr: SocketAddr, method: &str, path: &str, body: Value) -> (u16, String) {
    let json = [("Content-Type", "application/json")];
    let body = Some(body.to_string().into_bytes());
    let (status, _, body) = http_request(addr, method, path, &json, body).await;
    (status, body)
}

/// Reads frames until the `DataStatusEvent` of `op` (other frames skipped); ACCEPTED.
async fn accepted_skipping(c: &mut Client, op: &str) {
    loop {
        let v = c.recv().await;
        if v["message"] == "DataStatusEvent" && v["data"][0]["operationId"] == op {
            assert_eq!(v["data"][0]["status"], "ACCEPTED", "{v}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_publish_leave_cycle_is_delivered_once_in_order_and_signed() {
    let all = Receiver::start().await;
    let joined_only = Receiver::start().await;
    let url = format!("http://hook:pw@{}/hooks/in?token=abc", all.addr);
    let hooks = vec![
        hook(url, &[]),
        hook(joined_only.url("/joined"), &["participant.joined"]),
    ];
    let server = start_server(|c| c.webhooks = hooks).await;
    let addr = server.local_addr();
    let room = "hooked";
    let stream = format!("{room}-alice");

    let mut alice = Client::connect(addr, "alice").await;
    assert!(alice.join(room).await.is_empty());
    let mut pc = RtcClient::publisher(
        "alice-pc",
        &[
            (RtpCodecKind::Audio, opus(111), 0x1111_1111),
            (RtpCodecKind::Video, vp8(96), 0x2222_2222),
        ],
    )
    .await;
    start_stream(
        &mut alice,
        &mut pc,
        true,
        ("m-pub", room, &stream),
        (true, true),
    )
    .await;
    all.wait_delivered(3, Duration::from_secs(5)).await;
    alice
        .send_json(json!({"message": "unPublishStream", "data": [{
            "mediaSessionId": "m-pub", "name": stream, "published": true,
            "hasVideo": true, "hasAudio": true, "status": "PUBLISHING", "record": false,
        }]}))
        .await;
    all.wait_delivered(4, Duration::from_secs(5)).await;
    let op = alice.send_data("leave", json!({"name": room})).await;
    accepted_skipping(&mut alice, &op).await;

    let got = all.wait_delivered(6, Duration::from_secs(5)).await;
    // Nothing more comes (no duplicate).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all.all().len(), 6, "{:?}", summary(&all.all(), &[]));
    for d in &got {
        check_delivery(d);
        assert_eq!(d.target, "/hooks/in?token=abc");
        assert_eq!(d.headers["authorization"], "Basic aG9vazpwdw==");
        assert_eq!(d.headers["host"], all.addr.to_string());
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|d| d.json["id"].clone()).collect();
    assert_eq!(ids.len(), 6, "unique ids");
    assert_eq!(
        summary(&got, &["login", "stream", "record"]),
        vec![
            json!({"event": "room.created", "room": room, "record": false}),
            json!({"event": "participant.joined", "room": room, "login": "alice"}),
            json!({"event": "stream.published", "room": room, "login": "alice", "stream": stream}),
            json!({"event": "stream.unpublished", "room": room, "login": "alice", "stream": stream}),
            json!({"event": "participant.left", "room": room, "login": "alice"}),
            json!({"event": "room.finalized", "room": room, "record": false}),
        ]
    );

    // The filtered receiver got its one event.
    let only = joined_only.wait_delivered(1, Duration::from_secs(5)).await;
    assert_eq!(only.len(), 1, "{:?}", summary(&only, &[]));
    check_delivery(&only[0]);
    assert_eq!(only[0].json["event"], "participant.joined");
    assert_eq!(only[0].target, "/joined");
    assert!(!only[0].headers.contains_key("authorization"));

    // Events of the shutdown (the room left open is finalized) still go out.
    assert!(alice.join("open-at-stop").await.is_empty());
    all.wait_delivered(8, Duration::from_secs(5)).await;
    pc.close().await;
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("shutdown within 8 s");
    let last = all.delivered();
    let last = last.last().unwrap();
    assert_eq!(last.json["event"], "room.finalized", "{:?}", last.json);
    assert_eq!(last.json["room"], "open-at-stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_the_events_once_back_and_rooms_carry_on() {
    let mut receiver = Receiver::start().await;
    receiver.status.store(503, Ordering::SeqCst);
    let hooks = vec![hook(receiver.url("/"), &[])];
    let server = start_server(|c| c.webhooks = hooks).await;
    let addr = server.local_addr();
    let room = "flaky";

    // 503: the attempts fail and are retried; the room answers as always.
    let mut alice = Client::connect(addr, "alice").await;
    let t = Instant::now();
    assert!(alice.join(room).await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let got = receiver.got.clone();
    wait_until("a retried 503", Duration::from_secs(5), || {
        got.lock().unwrap().len() >= 3
    })
    .await;

    // Down: connections refused; a join and a chat answer normally meanwhile.
    receiver.stop().await;
    let mut bob = Client::connect(addr, "bob").await;
    let t = Instant::now();
    let state = bob.join(room).await;
    assert_eq!(state.len(), 1, "{state:?}");
    alice.expect_event_in(room, "JOINED").await;
    chat_ok(&mut alice, &mut bob, room, "still here").await;
    chat_ok(&mut bob, &mut alice, room, "me too").await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    bob.leave(room).await;
    alice.expect_event_in(room, "LEFT").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.stats().participants, 1);

    // Back: everything arrives, in order, each event answered 2xx once.
    receiver.status.store(200, Ordering::SeqCst);
    receiver.restart().await;
    let got = receiver.wait_delivered(4, Duration::from_secs(10)).await;
    for d in &got {
        check_delivery(d);
    }
    assert_eq!(
        summary(&got, &["login"]),
        vec![
            json!({"event": "room.created", "room": room}),
            json!({"event": "participant.joined", "room": room, "login": "alice"}),
            json!({"event": "participant.joined", "room": room, "login": "bob"}),
            json!({"event": "participant.left", "room": room, "login": "bob"}),
        ]
    );
    // The refused attempts were of the first event, with the same id (a retry).
    let first_id = &got[0].json["id"];
    assert!(receiver
        .all()
        .iter()
        .filter(|d| d.answered == 503)
        .all(|d| &d.json["id"] == first_id));
    alice.leave(room).await;
    receiver.wait_delivered(6, Duration::from_secs(5)).await;
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_counts_its_drops_and_emit_never_waits() {
    // A port nobody listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut h = hook(format!("http://{dead}/"), &[]);
    h.queue = 2;
    h.max_attempts = 2;
    h.retry_ms = 200;
    let (events, webhooks) = huddle::server::webhooks::start(&[h]);
    assert!(events.is_active());
    // `emit` is synchronous: the drops are counted by the time it returns, with the
    // receiver dead and no await in between (it never waits for a slot).
    for i in 0..20 {
        events.emit(
            EventKind::ParticipantJoined,
            Some("r"),
            json!({ "login": format!("p{i}") }),
        );
    }
    // At most the queue and the one in flight are kept.
    assert!(events.counters().dropped.get() >= 17);
    // The kept ones are given up after their attempts: all 20 are dropped.
    let started = Instant::now();
    while events.counters().dropped.get() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not all dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events.counters().delivered.get(), 0);
    assert!(events.counters().failed_attempts.get() >= 2);
    tokio::time::timeout(Duration::from_secs(3), webhooks.stop())
        .await
        .expect("stop within the grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_is_cut_at_shutdown_after_the_grace() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            keep.push(s);
        }
    });
    let mut h = hook(format!("http://{addr}/"), &[]);
    h.timeout_ms = 10_000;
    let (events, webhooks) = huddle::server::webhooks::start(&[h]);
    for _ in 0..3 {
        events.emit(EventKind::DeviceCameraLost, None, json!({}));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    webhooks.stop().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The one in flight and the two queued.
    assert_eq!(events.counters().dropped.get(), 3);
}

/// `https://` with the CA bundle of `SSL_CERT_FILE` (the receiver's self-signed
/// certificate): delivered and signed. (No other test of this binary uses https.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_receivers_are_verified_with_the_system_ca_bundle() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("huddle-webhooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("ca.pem");
    std::fs::write(&bundle, cert.cert.pem()).unwrap();
    std::env::set_var("SSL_CERT_FILE", &bundle);
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let status = Arc::new(AtomicU16::new(200));
    let (g, st) = (got.clone(), status.clone());
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (g, st, acceptor) = (g.clone(), st.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let _ = answer(tls, st, g).await;
                }
            });
        }
    });
    let (events, webhooks) =
        huddle::server::webhooks::start(&[hook(format!("https://localhost:{port}/tls"), &[])]);
    events.emit(
        EventKind::RoomCreated,
        Some("secure"),
        json!({"record": true}),
    );
    let g = got.clone();
    wait_until("the https delivery", Duration::from_secs(5), || {
        !g.lock().unwrap().is_empty()
    })
    .await;
    let d = got.lock().unwrap()[0].clone();
    check_delivery(&d);
    assert_eq!(d.target, "/tls");
    assert_eq!(d.json["room"], "secure");
    assert_eq!(d.json["record"], true);
    wait_until("counted", Duration::from_secs(2), || {
        events.counters().delivered.get() == 1
    })
    .await;
    webhooks.stop().await;
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An RTMP publisher with `?record=true`: `recording.started` then
/// `recording.finished`, in its room, signed, naming the stream, the login and the
/// file (which is in the records directory), the finished one with its duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_publisher_recording_is_started_then_finished() {
    let receiver = Receiver::start().await;
    let hooks = vec![hook(receiver.url("/rec"), &[])];
    let dir = records_dir("rtmp-rec");
    let records = dir.clone();
    let server = start_server(move |c| {
        c.webhooks = hooks;
        c.records.dir = records;
    })
    .await;
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let room = "studio";
    let stream = format!("{room}-obs");

    let child = rtmp::ffmpeg(
        &format!("rtmp://127.0.0.1:{rtmp}/{room}/obs?record=true"),
        3,
    );
    let started = receiver
        .wait_event("recording.started", Duration::from_secs(15))
        .await;
    let status = rtmp::finish(child, Duration::from_secs(30)).await;
    assert!(status.success(), "the RTMP publish: {status}");
    let finished = receiver
        .wait_event("recording.finished", Duration::from_secs(15))
        .await;

    let (s, f) = (
        receiver.position("recording.started").unwrap(),
        receiver.position("recording.finished").unwrap(),
    );
    assert!(
        s < f,
        "started before finished: {:?}",
        summary(&receiver.delivered(), &[])
    );
    for d in [&started, &finished] {
        assert_eq!(d.target, "/rec");
        assert_eq!(d.json["room"], room, "{}", d.json);
        assert_eq!(d.json["stream"], stream.as_str(), "{}", d.json);
        assert_eq!(d.json["login"], "obs", "{}", d.json);
    }
    let file = started.json["file"].as_str().expect("a file name");
    assert_eq!(finished.json["file"], file, "the same file");
    assert!(file.ends_with(".mp4"), "{file}");
    assert!(dir.join(file).is_file(), "{file} in {}", dir.display());
    let duration = finished.json["duration_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("duration_ms: {}", finished.json));
    assert!(
        (1_000..=10_000).contains(&duration),
        "{duration} ms of a 3 s publish"
    );
    assert!(
        started.json.get("duration_ms").is_none(),
        "{}",
        started.json
    );
    // Each once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for event in ["recording.started", "recording.finished"] {
        let n = receiver
            .all()
            .iter()
            .filter(|d| d.json["event"] == event)
            .count();
        assert_eq!(n, 1, "{event}: {:?}", summary(&receiver.all(), &[]));
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Joins `room` with `record: true` (the whole room is recorded): ACCEPTED and STATE.
async fn join_recorded(c: &mut Client, room: &str) {
    let op = c
        .send_data("join", json!({"name": room, "record": true}))
        .await;
    let (mut accepted, mut state) = (false, false);
    while !accepted || !state {
        let v = c.recv().await;
        if v["message"] == "DataStatusEvent" && v["data"][0]["operationId"] == op.as_str() {
            assert_eq!(v["data"][0]["status"], "ACCEPTED", "join {room}: {v}");
            accepted = true;
        } else if v["message"] == "OnDataEvent" && v["data"][0]["payload"]["name"] == "STATE" {
            state = true;
        }
    }
}

/// A room joined with `record: true`, an RTMP publisher in it for 3 s, everyone
/// leaves: the room is finalized and mixed, and `mix.finished` names the room, the
/// mixed file (in the records directory), the participant and the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_room_is_mixed_when_everyone_has_left() {
    let receiver = Receiver::start().await;
    let hooks = vec![hook(receiver.url("/mix"), &[])];
    let dir = records_dir("mix");
    let records = dir.clone();
    let server = start_server(move |c| {
        c.webhooks = hooks;
        c.records.dir = records;
        c.records.mixer.width = 320;
        c.records.mixer.height = 240;
        c.records.mixer.frame_rate = 10;
    })
    .await;
    let addr = server.local_addr();
    let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let room = "mixed";
    let stream = format!("{room}-obs");

    let mut alice = Client::connect(addr, "alice").await;
    join_recorded(&mut alice, room).await;
    let created = receiver
        .wait_event("room.created", Duration::from_secs(5))
        .await;
    assert_eq!(created.json["room"], room);
    assert_eq!(created.json["record"], true, "{}", created.json);

    let child = rtmp::ffmpeg(&format!("rtmp://127.0.0.1:{rtmp}/{room}/obs"), 3);
    let status = rtmp::finish(child, Duration::from_secs(30)).await;
    assert!(status.success(), "the RTMP publish: {status}");
    // The stream of a recorded room is recorded; the publisher has left.
    receiver
        .wait_event("recording.finished", Duration::from_secs(15))
        .await;
    rtmp::events_until(&mut alice, room, "LEFT", Duration::from_secs(10)).await;
    alice.leave(room).await;
    let finalized = receiver
        .wait_event("room.finalized", Duration::from_secs(10))
        .await;
    assert_eq!(finalized.json["record"], true, "{}", finalized.json);

    let mixed = receiver
        .wait_event("mix.finished", Duration::from_secs(60))
        .await;
    assert_eq!(mixed.target, "/mix");
    assert_eq!(mixed.json["room"], room, "{}", mixed.json);
    assert_eq!(mixed.json["participants"], json!(["obs"]), "{}", mixed.json);
    assert_eq!(
        mixed.json["streams"],
        json!([stream.as_str()]),
        "{}",
        mixed.json
    );
    let file = mixed.json["file"].as_str().expect("the mixed file's name");
    assert!(dir.join(file).is_file(), "{file} in {}", dir.display());
    assert!(
        mixed.json["duration_ms"].as_u64().is_some_and(|d| d > 0),
        "{}",
        mixed.json
    );
    let order: Vec<Value> = receiver
        .delivered()
        .iter()
        .map(|d| d.json["event"].clone())
        .collect();
    assert!(
        receiver.position("room.finalized") < receiver.position("mix.finished"),
        "{order:?}"
    );
    alice.close().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The device (test pattern and tone, in a room) has its camera switched off and on
/// through the admin API: `device.camera_lost` then `device.camera_back`, without a
/// room, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devices_camera_switched_off_and_on_is_lost_then_back() {
    let receiver = Receiver::start().await;
    let hooks = vec![hook(receiver.url("/device"), &[])];
    let server = start_server(move |c| {
        c.webhooks = hooks;
        c.device.camera = "test-pattern".into();
        c.device.microphone = "tone".into();
        c.device.width = 320;
        c.device.height = 240;
        c.device.rooms = vec!["lobby".into()];
        // Alone in its room: capturing all the same (capture on demand is not the point).
        c.device.always_on = true;
    })
    .await;
    let addr = server.local_addr();

    // The device publishes in its room once its camera delivers.
    let published = receiver
        .wait_event("stream.published", Duration::from_secs(15))
        .await;
    assert_eq!(published.json["room"], "lobby", "{}", published.json);
    let (status, body) = api_json(addr, "PATCH", "/api/v1/device", json!({"camera": false})).await;
    assert_eq!(status, 200, "camera off: {body}");
    let lost = receiver
        .wait_event("device.camera_lost", Duration::from_secs(10))
        .await;
    assert!(
        receiver.position("device.camera_back").is_none(),
        "no camera_back before it is switched on: {:?}",
        summary(&receiver.delivered(), &[])
    );
    let (status, body) = api_json(addr, "PATCH", "/api/v1/device", json!({"camera": true})).await;
    assert_eq!(status, 200, "camera on: {body}");
    let back = receiver
        .wait_event("device.camera_back", Duration::from_secs(15))
        .await;
    assert!(
        receiver.position("device.camera_lost") < receiver.position("device.camera_back"),
        "{:?}",
        summary(&receiver.delivered(), &[])
    );
    for d in [&lost, &back] {
        assert_eq!(d.target, "/device");
        assert!(d.json["room"].is_null(), "no room: {}", d.json);
    }
    // Each once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for event in ["device.camera_lost", "device.camera_back"] {
        let n = receiver
            .all()
            .iter()
            .filter(|d| d.json["event"] == event)
            .count();
        assert_eq!(n, 1, "{event}: {:?}", summary(&receiver.all(), &[]));
    }
    server.shutdown().await;
}
