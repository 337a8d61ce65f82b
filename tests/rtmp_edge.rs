//! The RTMP edge against the real Debian ffmpeg and against broken clients over raw TCP,
//! on 127.0.0.1 only: ffmpeg's publish reaches the handler as room/login, its H.264
//! becomes RTP that decodes again (SPS/PPS before every IDR, monotonic timestamps), its
//! AAC frames arrive with their config; every bad client is closed with the reason in
//! the log while the publish goes on.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huddle::config;
use huddle::device::h264::{nal, nal_type, RtpPacket};
use huddle::rtmp::flv;
use huddle::rtmp::media::FlvVideoEgress;
use huddle::rtmp::server::{
    self, FlvTag, Handler, PlayRequest, PublishRequest, PublisherEvent, Refusal, TagKind,
};
use rml_rtmp::rml_amf0::Amf0Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use common::rtmp::*;

#[derive(Default)]
struct TestHandler {
    publishes: Mutex<Vec<(PublishRequest, mpsc::Receiver<PublisherEvent>)>>,
}

impl Handler for TestHandler {
    async fn publish(
        &self,
        request: PublishRequest,
    ) -> Result<mpsc::Sender<PublisherEvent>, Refusal> {
        if request.login == "mallory" {
            return Err(Refusal::new("mallory may not publish"));
        }
        let (tx, rx) = mpsc::channel(4096);
        self.publishes.lock().unwrap().push((request, rx));
        Ok(tx)
    }

    async fn play(&self, request: PlayRequest) -> Result<mpsc::Receiver<FlvTag>, Refusal> {
        Err(Refusal::new(format!("no stream {}", request.stream)))
    }
}

async fn start() -> (SocketAddr, Arc<TestHandler>) {
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = config::Rtmp {
        // Every client of the test comes from 127.0.0.1.
        max_connections_per_address: 64,
        handshake_timeout_ms: 1500,
        idle_timeout_ms: 3000,
        ..config::Rtmp::default()
    };
    let handler = Arc::new(TestHandler::default());
    tokio::spawn(server::serve(listener, config, handler.clone()));
    (addr, handler)
}

/// Rebuilds Annex-B access units from RTP (STAP-A, FU-A, single units).
fn depacketize(packets: &[RtpPacket], out: &mut Vec<u8>) -> Vec<u8> {
    let mut types = Vec::new();
    let put = |unit: &[u8], out: &mut Vec<u8>, types: &mut Vec<u8>| {
        types.push(nal_type(unit));
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(unit);
    };
    for p in packets {
        let payload = &p.payload[..];
        match nal_type(payload) {
            nal::STAP_A => {
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    put(&rest[2..2 + len], out, &mut types);
                    rest = &rest[2 + len..];
                }
            }
            nal::FU_A => {
                let header = payload[1];
                if header & 0x80 != 0 {
                    types.push(header & 0x1f);
                    out.extend_from_slice(&[0, 0, 0, 1, (payload[0] & 0xe0) | (header & 0x1f)]);
                }
                out.extend_from_slice(&payload[2..]);
            }
            _ => put(payload, out, &mut types),
        }
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_while_bad_clients_are_refused() {
    let (addr, handler) = start().await;
    let url = format!("rtmp://127.0.0.1:{}/room/alice", addr.port());
    let mut ffmpeg = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=320x240:rate=30")
        .args(["-f", "lavfi", "-i", "sine", "-t", "3", "-c:v", "libx264"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "30", "-c:a", "aac", "-f", "flv"])
        .arg(&url)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed");

    // Bad clients, all while ffmpeg publishes.
    let publish_args = vec![
        Amf0Value::Utf8String("alice".into()),
        Amf0Value::Utf8String("live".into()),
    ];
    let connect_then_mallory = vec![
        connect("room"),
        command("createStream", 0, vec![]),
        command(
            "publish",
            1,
            vec![
                Amf0Value::Utf8String("mallory".into()),
                Amf0Value::Utf8String("live".into()),
            ],
        ),
    ];
    let cases = vec![
        (
            false,
            vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
            "bad handshake",
        ),
        (false, vec![], "no complete handshake within 1500 ms"),
        (true, vec![vec![0xff; 64]], "RTMP chunks refused"),
        (true, vec![set_chunk_size(0)], "chunk size 0 refused"),
        (
            true,
            vec![set_chunk_size(1 << 31)],
            "chunk size 2147483648 refused",
        ),
        (
            true,
            vec![command("publish", 1, publish_args)],
            "publish before connect",
        ),
        (true, connect_then_mallory, "mallory may not publish"),
        (
            true,
            publishing("room", "bob", vec![video(1, &[0x24, 0, 1, 2])]),
            "media refused: video codec On2 VP6 (FLV codec id 4) is not supported",
        ),
        (
            true,
            publishing(
                "room",
                "eve",
                vec![video(1, &[0x90, b'h', b'v', b'c', b'1', 0])],
            ),
            "Enhanced RTMP video (hvc1) is not supported",
        ),
        (
            true,
            publishing("room", "carol", vec![publish("carol2")]),
            "a second publish or play on one connection",
        ),
        (
            true,
            publishing("room", "dave", vec![video(7, &[0x17, 0, 0, 0, 0])]),
            "video for stream id 7, which is not published",
        ),
        (
            true,
            vec![connect("room"), connect("room")],
            "a second connect on one connection",
        ),
        (
            true,
            vec![connect("room"), huge_command()],
            "message of 70041 bytes on chunk stream 6 exceeds the limit of 65536",
        ),
        (
            true,
            vec![interleaved_chunks()],
            "interleaved chunk streams are not supported",
        ),
        (
            true,
            {
                // Valid AMF data messages of 60 000 bytes each, no publish: the
                // pre-request budget ends it.
                let mut steps = vec![connect("room")];
                for _ in 0..6 {
                    steps.push(amf_data(0, 59_990));
                }
                steps
            },
            "more than 262144 bytes before a publish or play",
        ),
    ];
    let mut tasks = Vec::new();
    for (handshake, send, reason) in cases {
        tasks.push(tokio::spawn(bad_client(addr, handshake, send, reason)));
    }
    for t in tasks {
        let (line, received) = timeout(Duration::from_secs(15), t)
            .await
            .expect("bad client bounded")
            .expect("bad client task");
        assert!(line.starts_with("WARN"), "{line}");
        // Refused publishers also get the reason as an RTMP onStatus.
        for status in ["mallory may not publish", "video codec On2 VP6", "(hvc1)"] {
            if line.contains(status) {
                assert!(sent_text(&received, status), "no onStatus with {status:?}");
            }
        }
    }

    // ffmpeg finishes its 3 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = ffmpeg.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = ffmpeg.kill();
            panic!("ffmpeg did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "ffmpeg: {status}");

    let (request, mut events) = {
        let mut publishes = handler.publishes.lock().unwrap();
        let alice = publishes
            .iter()
            .position(|(r, _)| r.login == "alice")
            .expect("alice's publish");
        publishes.remove(alice)
    };
    assert_eq!(
        (request.room.as_str(), request.login.as_str()),
        ("room", "alice")
    );
    assert_eq!((request.token, request.record), (None, false));

    let mut annex_b = Vec::new();
    let mut access_units = 0;
    let mut key_frames = 0;
    let mut last_ts: Option<u32> = None;
    let mut aac_frames = 0;
    let mut audio_config = None;
    let mut profile = None;
    let mut ended = None;
    while let Ok(Some(event)) = timeout(Duration::from_secs(5), events.recv()).await {
        match event {
            PublisherEvent::VideoConfig { profile_level_id } => profile = Some(profile_level_id),
            PublisherEvent::Video { packets, info } => {
                access_units += 1;
                assert!(!info.b_frames_detected, "baseline has no B-frames");
                assert!(packets.iter().all(|p| p.header.timestamp == info.timestamp));
                assert!(packets.last().unwrap().header.marker);
                if let Some(last) = last_ts {
                    assert!(
                        (info.timestamp.wrapping_sub(last) as i32) > 0,
                        "timestamps increase: {last} then {}",
                        info.timestamp
                    );
                }
                last_ts = Some(info.timestamp);
                let types = depacketize(&packets, &mut annex_b);
                if types.contains(&nal::IDR) {
                    key_frames += 1;
                    assert!(info.key);
                    assert_eq!(&types[..2], &[nal::SPS, nal::PPS], "{types:?}");
                }
            }
            PublisherEvent::AudioConfig(c) => audio_config = Some(c),
            PublisherEvent::Audio(f) => {
                assert!(!f.data.is_empty());
                aac_frames += 1;
            }
            PublisherEvent::Ended { reason } => {
                ended = Some(reason);
                break;
            }
        }
    }
    assert_eq!(profile.as_deref().map(|p| &p[..2]), Some("42"));
    assert!(access_units >= 60, "{access_units} access units");
    assert!(key_frames >= 3, "{key_frames} key frames (-g 30, 3 s)");
    let c = audio_config.expect("AAC config");
    assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 44100, 1));
    assert!(aac_frames >= 100, "{aac_frames} AAC frames");
    assert!(ended.is_some(), "Ended after ffmpeg left");
    assert!(logged("publisher \"alice\" in room \"room\": publishing").is_some());

    // The RTP we produced decodes again.
    let dir = std::env::temp_dir().join(format!("huddle-rtmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("video.h264");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(&annex_b)
        .unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = text.split(',').collect();
    assert_eq!(&fields[..2], &["320", "240"], "{text}");
    let frames: usize = fields[2].parse().unwrap();
    assert_eq!(frames, access_units, "every access unit decodes");
}

/// Relays one publisher to RTMP players the way the stream core will: RTP H.264 back to
/// access units, `FlvVideoEgress` for the sequence header and the first key frame, AAC
/// frames as FLV audio.
#[derive(Default)]
struct RelayHandler {
    player: Mutex<Option<mpsc::Sender<FlvTag>>>,
}

impl RelayHandler {
    async fn relay(self: Arc<Self>, mut events: mpsc::Receiver<PublisherEvent>) {
        // A player starts at a key frame, and audio waits for it: ffprobe decides
        // which streams exist from the first tags it sees.
        let mut egress: Option<FlvVideoEgress> = None;
        let mut started = false;
        let mut asc: Option<[u8; 2]> = None;
        while let Some(event) = events.recv().await {
            let Some(player) = self.player.lock().unwrap().clone() else {
                continue;
            };
            let mut tags = Vec::new();
            let egress = egress.get_or_insert_with(FlvVideoEgress::default);
            match event {
                PublisherEvent::Video { packets, info } => {
                    let mut au = Vec::new();
                    depacketize(&packets, &mut au);
                    let out = egress.push(&au.into());
                    let ms = info.dts_ms as u32;
                    if let Some(h) = out.sequence_header {
                        tags.push((TagKind::Video, ms, h));
                    }
                    if let Some(f) = out.frame {
                        if !started {
                            started = true;
                            if let Some(asc) = asc {
                                tags.push((TagKind::Audio, ms, flv::aac_sequence_header(&asc)));
                            }
                        }
                        tags.push((TagKind::Video, ms, f));
                    }
                }
                PublisherEvent::AudioConfig(c) => {
                    asc = flv::aac_config_bytes(c.object_type, c.sample_rate, c.channels);
                }
                PublisherEvent::Audio(f) if started => {
                    tags.push((TagKind::Audio, f.time_ms as u32, flv::aac_frame(&f.data)))
                }
                PublisherEvent::Ended { .. } => break,
                _ => {}
            }
            for (kind, timestamp_ms, data) in tags {
                let _ = player.try_send(FlvTag {
                    kind,
                    timestamp_ms,
                    data: data.into(),
                });
            }
        }
    }
}

struct Relay(Arc<RelayHandler>);

impl Handler for Relay {
    async fn publish(
        &self,
        _request: PublishRequest,
    ) -> Result<mpsc::Sender<PublisherEvent>, Refusal> {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(self.0.clone().relay(rx));
        Ok(tx)
    }

    async fn play(&self, request: PlayRequest) -> Result<mpsc::Receiver<FlvTag>, Refusal> {
        assert_eq!(
            (request.room.as_str(), request.stream.as_str()),
            ("room", "alice")
        );
        let (tx, rx) = mpsc::channel(4096);
        *self.0.player.lock().unwrap() = Some(tx);
        Ok(rx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_plays_a_relayed_publish() {
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay = Arc::new(RelayHandler::default());
    tokio::spawn(server::serve(
        listener,
        config::Rtmp::default(),
        Arc::new(Relay(relay)),
    ));
    let url = format!("rtmp://127.0.0.1:{port}/room/alice");
    let mut ffmpeg = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=320x240:rate=30")
        .args(["-f", "lavfi", "-i", "sine", "-t", "8", "-c:v", "libx264"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "baseline",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "30", "-c:a", "aac", "-f", "flv"])
        .arg(&url)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg is installed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["15", "ffprobe", "-v", "error", "-show_entries"])
            .args([
                "stream=codec_name,width,height,sample_rate",
                "-of",
                "csv=p=0",
            ])
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let text = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(
        probe.status.success(),
        "ffprobe: {}{text}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("h264,320,240")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("aac,44100")), "{text}");
}

#[test]
fn rtmp_config_keys_parse_and_validate() {
    let path = std::path::Path::new("huddle.toml");
    let c = config::Config::parse("", path).unwrap();
    assert!(c.rtmp.enabled);
    assert_eq!(c.rtmp.listen.port(), 1935);
    let c = config::Config::parse(
        "[rtmp]\nenabled = false\nlisten = \"127.0.0.1:1936\"\nmax_connections = 2\n",
        path,
    )
    .unwrap();
    assert!(!c.rtmp.enabled);
    assert_eq!((c.rtmp.listen.port(), c.rtmp.max_connections), (1936, 2));
    for (text, key) in [
        ("[rtmp]\nmax_connections = 0\n", "rtmp.max_connections"),
        (
            "[rtmp]\nhandshake_timeout_ms = 0\n",
            "rtmp.handshake_timeout_ms",
        ),
        ("[rtmp]\nidle_timeout_ms = 10\n", "rtmp.idle_timeout_ms"),
        ("[rtmp]\nmax_kbps = 1\n", "rtmp.max_kbps"),
    ] {
        let e = config::Config::parse(text, path).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    let e = config::Config::parse("[rtmp]\nport = 1\n", path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("port"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_idle_timeout() {
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = config::Rtmp {
        max_connections: 1,
        idle_timeout_ms: 800,
        ..config::Rtmp::default()
    };
    tokio::spawn(server::serve(
        listener,
        config,
        Arc::new(TestHandler::default()),
    ));
    let mut first = handshaken(addr).await;
    let first_port = first.local_addr().unwrap().port();
    // The second connection is closed at accept while the first is open.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let second_port = second.local_addr().unwrap().port();
    closed_within(&mut second, 3).await;
    let line = logged_close(second_port, "1 connections already open").await;
    assert!(line.contains("rtmp.max_connections"), "{line}");
    // The first, silent after its handshake, meets the idle timeout.
    closed_within(&mut first, 3).await;
    logged_close(first_port, "nothing received for 800 ms").await;
    // Its slot is free again.
    let _third = handshaken(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_continue_across_ffmpegs_timestamp_wrap() {
    capture_logs();
    let (addr, handler) = start().await;
    // RTMP timestamps are 32-bit ms, but ffmpeg's FLV writer wraps them at 2^31 ms
    // (~24.8 days): the offset makes this stream cross that wrap after ~1.5 s.
    let url = format!("rtmp://127.0.0.1:{}/room/rollover", addr.port());
    let status = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["30", "ffmpeg", "-hide_banner", "-loglevel", "error", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=160x120:rate=30",
                "-t",
                "3",
            ])
            .args([
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-profile:v",
                "baseline",
            ])
            .args(["-tune", "zerolatency", "-g", "30", "-an"])
            .args(["-output_ts_offset", "4294965.8", "-f", "flv"])
            .arg(&url)
            .stdin(Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "ffmpeg: {status}");
    let mut events = {
        let mut publishes = handler.publishes.lock().unwrap();
        let i = publishes
            .iter()
            .position(|(r, _)| r.login == "rollover")
            .expect("the publish");
        publishes.remove(i).1
    };
    let mut dts = Vec::new();
    let mut rtp = Vec::new();
    while let Ok(Some(event)) = timeout(Duration::from_secs(5), events.recv()).await {
        match event {
            PublisherEvent::Video { info, .. } => {
                dts.push(info.dts_ms);
                rtp.push(info.timestamp);
            }
            PublisherEvent::Ended { .. } => break,
            _ => {}
        }
    }
    assert!(dts.len() >= 60, "{} access units", dts.len());
    let wrap = 1i64 << 31;
    assert!(dts[0] < wrap && *dts.last().unwrap() > wrap, "{dts:?}");
    assert!(dts.windows(2).all(|w| w[1] > w[0]), "{dts:?}");
    // 90 kHz steps of about one frame (33 ms) all the way through.
    for w in rtp.windows(2) {
        let step = w[1].wrapping_sub(w[0]);
        assert!((2000..=4000).contains(&step), "RTP step {step}");
    }
}
