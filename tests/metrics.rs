//! `/metrics`: the exposition parses with a real Prometheus text parser (the
//! `prometheus_client` Python package's OpenMetrics parser, Debian's
//! python3-prometheus-client), has the expected families, and its values move with
//! signalling and media.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};

use common::*;
use webrtc_client::*;

const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;

/// Parses an OpenMetrics exposition with `prometheus_client`; prints one JSON object:
/// families (name -> type) and samples ("name{k=v,...}" -> value, labels sorted).
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families, samples = {}, {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = f.type
    for s in f.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps({"families": families, "samples": samples}))
"#;

/// One parsed scrape.
struct Scrape {
    families: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of a sample, `"name{k=v}"` (labels sorted), or panics.
    fn value(&self, sample: &str) -> f64 {
        *self.samples.get(sample).unwrap_or_else(|| {
            panic!(
                "no sample {sample}; samples: {:?}",
                self.samples.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// A Python that has `prometheus_client`: `$HUDDLE_PYTHON`, the first `python3` on the
/// path, or Debian's (where apt installs python3-prometheus-client, when the path has
/// another Python first, e.g. pyenv's).
fn python() -> String {
    let candidates = std::env::var("HUDDLE_PYTHON")
        .into_iter()
        .chain(["python3".to_owned(), "/usr/bin/python3".to_owned()]);
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python;
        }
    }
    panic!("no python3 with prometheus_client: install python3-prometheus-client (scripts/install-deps.sh test)");
}

/// Parses `text` with the Python parser (which raises on anything malformed).
fn parse(text: &str) -> Scrape {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python())
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-deps.sh test installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let out = child.wait_with_output().expect("python3 ends");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("parser output is JSON");
    let families = v["families"]
        .as_object()
        .expect("families")
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_owned()))
        .collect();
    let samples = v["samples"]
        .as_object()
        .expect("samples")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_f64().unwrap_or(f64::NAN)))
        .collect();
    Scrape { families, samples }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{headers}\n{body}");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_parses_and_moves_with_signalling() {
    // With [api] keys set, loopback still reads without a key.
    let server = start_server(|c| {
        c.api.keys = vec!["a-key-of-sixteen-chars-or-more".into()];
    })
    .await;
    let addr = server.local_addr();

    let before = scrape(addr).await;
    for (family, kind) in [
        ("huddle_build", "info"),
        ("huddle_sessions", "gauge"),
        ("huddle_rooms", "gauge"),
        ("huddle_participants", "gauge"),
        ("huddle_streams", "gauge"),
        ("huddle_players", "gauge"),
        ("huddle_media_peers", "gauge"),
        ("huddle_rtp_packets_received", "counter"),
        ("huddle_rtp_bytes_received", "counter"),
        ("huddle_rtp_packets_sent", "counter"),
        ("huddle_rtp_bytes_sent", "counter"),
        ("huddle_packets_dropped", "counter"),
        ("huddle_rtcp_pli_received", "counter"),
        ("huddle_rtcp_fir_received", "counter"),
        ("huddle_rtcp_nack_received", "counter"),
        ("huddle_rtp_retransmitted", "counter"),
        ("huddle_udp_trains", "counter"),
        ("huddle_udp_train_datagrams", "counter"),
        ("huddle_media_worker_players", "gauge"),
        ("huddle_key_frame_requests", "counter"),
        ("huddle_ice_failures", "counter"),
        ("huddle_dtls_failures", "counter"),
        ("huddle_signalling_messages", "counter"),
        ("huddle_signalling_refusals", "counter"),
        ("huddle_rtmp_sessions", "gauge"),
        ("huddle_recordings_active", "gauge"),
        ("huddle_device_camera_up", "gauge"),
        ("huddle_device_microphone_up", "gauge"),
        ("huddle_device_frames", "counter"),
        ("huddle_webhook_events_delivered", "counter"),
        ("huddle_webhook_delivery_failures", "counter"),
        ("huddle_webhook_events_dropped", "counter"),
        ("huddle_process_resident_memory_bytes", "gauge"),
        ("huddle_process_cpu_seconds", "counter"),
        ("huddle_process_open_fds", "gauge"),
        ("huddle_process_threads", "gauge"),
        ("huddle_tasks", "gauge"),
    ] {
        assert_eq!(
            before.families.get(family).map(String::as_str),
            Some(kind),
            "family {family}; families: {:?}",
            before.families
        );
    }
    let version = format!("huddle_build_info{{version={}}}", huddle::VERSION);
    assert_eq!(before.value(&version), 1.0);
    assert_eq!(before.value("huddle_sessions{}"), 0.0);
    assert_eq!(before.value("huddle_rooms{}"), 0.0);
    assert_eq!(before.value("huddle_streams{source=webrtc}"), 0.0);
    assert!(before.value("huddle_process_resident_memory_bytes{}") > 1e6);
    assert!(before.value("huddle_process_threads{}") >= 2.0);
    assert!(before.value("huddle_tasks{}") >= 1.0);
    assert!(before.value("huddle_process_open_fds{}") >= 3.0);
    for reason in [
        "sink_queue_full",
        "socket_busy",
        "muted",
        "no_route",
        "invalid",
    ] {
        before.value(&format!("huddle_packets_dropped_total{{reason={reason}}}"));
    }

    // A session joins a room; a request is refused.
    let mut alice = Client::connect(addr, "alice").await;
    alice.join("r").await;
    let op = alice.send_data("join", json!({"record": false})).await;
    let info = alice.expect_failed(&op).await;
    alice.sync().await;
    let after = scrape(addr).await;
    assert_eq!(after.value("huddle_sessions{}"), 1.0);
    assert_eq!(after.value("huddle_rooms{}"), 1.0);
    assert_eq!(after.value("huddle_participants{}"), 1.0);
    let moved = |sample: &str| after.value(sample) - before.value(sample);
    assert!(moved("huddle_signalling_messages_total{message=connection}") >= 1.0);
    assert!(moved("huddle_signalling_messages_total{message=join}") >= 1.0);
    assert!(
        moved("huddle_signalling_refusals_total{reason=invalid}") >= 1.0,
        "{info}"
    );

    alice.close().await;
    server.shutdown().await;
}

/// Publishes `stream` in room `r` (its own room events and PENDING skipped).
async fn publish(ws: &mut Client, pc: &mut RtcClient, stream: &str) {
    let offer = pc.create_offer().await;
    ws.send_json(stream_request(
        true,
        "m-pub",
        stream,
        "r",
        &offer,
        (true, true),
    ))
    .await;
    loop {
        let v = ws.recv().await;
        match v["message"].as_str() {
            Some("setRemoteSDP") => {
                let sdp = v["data"][1].as_str().expect("answer text");
                pc.apply_answer(sdp).await;
            }
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PUBLISHING" => break,
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PENDING" => {}
            Some("OnDataEvent") => {}
            _ => panic!("unexpected frame while publishing {stream}: {v}"),
        }
    }
    pc.wait_connected(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_counters_grow_when_media_flows() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    alice.join("r").await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    alice.expect_event_in("r", "JOINED").await;

    let mut alice_pc = RtcClient::publisher(
        "alice-pc",
        &[
            (AUDIO, opus(111), 0x1111_1111),
            (VIDEO, h264(125), 0x2222_2222),
        ],
    )
    .await;
    publish(&mut alice, &mut alice_pc, "r-alice-1a2b").await;
    bob.expect_event_in("r", "PUBLISHED").await;
    let camera = Camera::start(
        &alice_pc,
        Position {
            video: (100, 1000),
            audio: (200, 2000),
        },
    )
    .await;
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    room_media::play_in_room(&mut bob, &mut bob_pc, "r", "r-alice-1a2b").await;
    assert!(bob_pc.next_media(Duration::from_secs(5)).await.is_some());

    let first = scrape(addr).await;
    assert_eq!(first.value("huddle_streams{source=webrtc}"), 1.0);
    assert_eq!(first.value("huddle_players{}"), 1.0);
    assert_eq!(first.value("huddle_media_peers{}"), 2.0);
    assert!(first.value("huddle_signalling_messages_total{message=publishStream}") >= 1.0);
    assert!(first.value("huddle_signalling_messages_total{message=playStream}") >= 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = scrape(addr).await;
    camera.stop().await;

    let names: BTreeSet<&str> = second.samples.keys().map(String::as_str).collect();
    assert!(names.contains("huddle_rtmp_sessions{role=publisher}"));
    alice_pc.close().await;
    bob_pc.close().await;
    server.shutdown().await;

    // SFU-COUNTING: these need the SFU task to count into `MediaCounters` (the SFU
    // engineer's part of issue 13); without it they stay at 0 and fail here.
    for kind in ["audio", "video"] {
        for counter in [
            "huddle_rtp_packets_received_total",
            "huddle_rtp_bytes_received_total",
            "huddle_rtp_packets_sent_total",
            "huddle_rtp_bytes_sent_total",
        ] {
            let sample = format!("{counter}{{kind={kind}}}");
            assert!(
                second.value(&sample) > first.value(&sample),
                "SFU-COUNTING: {sample} did not grow while media flowed: {} -> {}",
                first.value(&sample),
                second.value(&sample)
            );
        }
    }
}

#[tokio::test]
async fn disabled_is_not_found() {
    let server = start_server(|c| c.metrics.enabled = false).await;
    let (status, _, _) = http_get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

/// Scrapes until `sample` has `value` (5 s at the most).
async fn wait_for_value(addr: SocketAddr, sample: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = scrape(addr).await.value(sample);
        if got == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} is {got}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_sessions_by_role() {
    use tokio::io::AsyncWriteExt;
    let server = start_server(|c| c.rtmp.enabled = true).await;
    let addr = server.local_addr();
    let rtmp = server.rtmp_addr().expect("RTMP is on");
    const PUBLISHERS: &str = "huddle_rtmp_sessions{role=publisher}";
    assert_eq!(scrape(addr).await.value(PUBLISHERS), 0.0);
    let mut s = common::rtmp::handshaken(rtmp).await;
    for step in common::rtmp::publishing("r", "rtmpalice", vec![]) {
        s.write_all(&step).await.expect("RTMP write");
        // rml_rtmp takes a command once `connect` was answered, as real clients wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for_value(addr, PUBLISHERS, 1.0).await;
    drop(s);
    wait_for_value(addr, PUBLISHERS, 0.0).await;
    server.shutdown().await;
}
