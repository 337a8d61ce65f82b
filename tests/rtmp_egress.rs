//! `rtmp::egress::run` end to end against the real Debian ffmpeg: libx264 H.264 split into
//! access units and packetized by the device packetizer (FU-A, STAP-A, a 90 kHz clock
//! that wraps after 0.5 s), Opus from libopus (20 ms, sequence numbers that wrap), both
//! paced in real time with unrelated RTP origins. The FLV tags are written to an FLV
//! file that ffprobe/ffmpeg must read as H.264 + AAC, decode without an error, with
//! audio and video durations within 0.5 s of each other.

#[path = "common/synth.rs"]
mod synth;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use huddle::device::h264::{self, nal, Packetizer, RtpPacket};
use huddle::media::codec::{Chosen, Codec, Family, Kind};
use huddle::rtmp::egress::{self, EgressError, Ended};
use huddle::rtmp::server::{FlvTag, TagKind};
use tokio::sync::mpsc;

use synth::{h264_codec, opus_codec, opus_packets};

/// An FLV file (header, tags, previous-tag sizes) of the egress's tags.
fn flv_file(tags: &[FlvTag]) -> Vec<u8> {
    let mut f = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for tag in tags {
        let kind = match tag.kind {
            TagKind::Audio => 8,
            TagKind::Video => 9,
        };
        let len = tag.data.len() as u32;
        let ts = tag.timestamp_ms;
        f.push(kind);
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.extend_from_slice(&ts.to_be_bytes()[1..]);
        f.push((ts >> 24) as u8);
        f.extend_from_slice(&[0, 0, 0]);
        f.extend_from_slice(&tag.data);
        f.extend_from_slice(&(11 + len).to_be_bytes());
    }
    f
}

fn json(args: &[&str], file: &std::path::Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(file)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_stream_becomes_flv_that_ffmpeg_decodes() {
    let frames = room_stream_to_flv("clean", None).await;
    assert_eq!(frames, 90, "every picture");
}

/// A packet lost in the middle of the second GOP: the rest of it is dropped, a key
/// frame is asked for, and what reaches the player still decodes without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_packet_drops_pictures_up_to_the_next_key_frame() {
    let frames = room_stream_to_flv("lossy", Some(40)).await;
    assert!((60..90).contains(&frames), "{frames} pictures");
}

/// Runs 3 s of H.264 + Opus through `egress::run` in real time, losing the first
/// packet of the first P picture from `lose_from` on; checks the FLV with
/// ffprobe/ffmpeg and returns the number of decoded pictures.
async fn room_stream_to_flv(name: &str, lose_from: Option<usize>) -> usize {
    let dir = std::env::temp_dir().join(format!("huddle-egress-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aus = synth::h264_access_units(&dir, "320x240", 3);
    let opus = opus_packets(150);

    // (send time in ms, kind, packet), video and audio interleaved by time.
    let mut events: Vec<(u64, Kind, RtpPacket)> = Vec::new();
    let mut packetizer = Packetizer::new(102, 0x00ab_cdef, 400);
    let video_origin = u32::MAX - 45_000; // wraps after 0.5 s
    let mut lost = false;
    for (i, au) in aus.iter().enumerate() {
        let mut packets = Vec::new();
        packetizer.packetize(au, video_origin.wrapping_add(i as u32 * 3000), &mut packets);
        if lose_from.is_some_and(|from| i >= from) && !h264::summarize(au).idr && !lost {
            packets.remove(0);
            lost = true;
        }
        let at = i as u64 * 1000 / 30;
        events.extend(packets.into_iter().map(|p| (at, Kind::Video, p)));
    }
    assert_eq!(lost, lose_from.is_some());
    let count = |t: u8| {
        events
            .iter()
            .filter(|e| h264::nal_type(&e.2.payload) == t)
            .count()
    };
    assert!(count(nal::FU_A) > 20, "{} FU-A packets", count(nal::FU_A));
    assert!(count(nal::STAP_A) >= 3, "SPS + PPS before each IDR");
    let audio_origin = 0x7fff_0000u32;
    for (i, data) in opus.iter().enumerate() {
        let mut p = RtpPacket::default();
        p.header.version = 2;
        p.header.payload_type = 111;
        p.header.ssrc = 0x5555;
        p.header.sequence_number = 65_500u16.wrapping_add(i as u16);
        p.header.timestamp = audio_origin.wrapping_add(i as u32 * 960);
        p.header.marker = i == 0;
        p.payload = data.clone();
        events.push((i as u64 * 20, Kind::Audio, p));
    }
    events.sort_by_key(|e| e.0);

    let codecs = Chosen {
        audio: Some(opus_codec()),
        video: Some(h264_codec()),
    };
    let (packet_tx, packet_rx) = mpsc::channel(512);
    let (tag_tx, mut tag_rx) = mpsc::channel(4096);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let egress = tokio::spawn(egress::run(codecs, packet_rx, tag_tx, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    let collector = tokio::spawn(async move {
        let mut tags = Vec::new();
        while let Some(tag) = tag_rx.recv().await {
            tags.push(tag);
        }
        tags
    });
    let start = tokio::time::Instant::now();
    for (at, kind, packet) in events {
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        packet_tx.send((kind, packet)).await.unwrap();
    }
    drop(packet_tx);
    let ended = tokio::time::timeout(Duration::from_secs(10), egress)
        .await
        .expect("run ends after the packets")
        .unwrap();
    assert!(matches!(ended, Ok(Ended::SourceEnded)), "{ended:?}");
    let tags = collector.await.unwrap();
    assert!(
        requests.load(Ordering::Relaxed) > usize::from(lost),
        "a key frame at start (and after the loss)"
    );

    // The order a player needs.
    let head: Vec<(TagKind, u8, u8)> = tags
        .iter()
        .take(2)
        .map(|t| (t.kind, t.data[0], t.data[1]))
        .collect();
    assert_eq!(
        head,
        vec![(TagKind::Video, 0x17, 0), (TagKind::Video, 0x17, 1)],
        "sequence header, then a key frame"
    );
    assert!(tags[0].timestamp_ms < 100 && tags[1].timestamp_ms == tags[0].timestamp_ms);
    let audio_tags: Vec<&FlvTag> = tags.iter().filter(|t| t.kind == TagKind::Audio).collect();
    assert_eq!(&audio_tags[0].data[..2], &[0xaf, 0]);
    assert_eq!(
        audio_tags.iter().filter(|t| t.data[1] == 0).count(),
        1,
        "one AAC sequence header"
    );
    for kind in [TagKind::Video, TagKind::Audio] {
        let times: Vec<u32> = tags
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.timestamp_ms)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{kind:?}: {times:?}"
        );
    }

    let file = dir.join("egress.flv");
    std::fs::write(&file, flv_file(&tags)).unwrap();
    let streams = json(
        &[
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames",
        ],
        &file,
    );
    let streams = streams["streams"].as_array().unwrap();
    let stream = |kind: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} stream in {streams:?}"))
    };
    assert_eq!(stream("video")["codec_name"], "h264");
    assert_eq!(stream("audio")["codec_name"], "aac");
    let frames: usize = stream("video")["nb_read_frames"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(frames >= 60, "{frames} video frames");

    let packets = json(
        &["-show_entries", "packet=codec_type,pts_time,duration_time"],
        &file,
    );
    let span = |kind: &str| {
        let (mut first, mut end) = (f64::MAX, f64::MIN);
        for p in packets["packets"].as_array().unwrap() {
            if p["codec_type"] != kind {
                continue;
            }
            let time = |key: &str| p[key].as_str().and_then(|s| s.parse::<f64>().ok());
            let pts = time("pts_time").unwrap();
            first = first.min(pts);
            end = end.max(pts + time("duration_time").unwrap_or(0.0));
        }
        end - first
    };
    let (video, audio) = (span("video"), span("audio"));
    eprintln!(
        "{} tags, {frames} video frames, video {video:.3} s, audio {audio:.3} s, \
         first audio at {} ms",
        tags.len(),
        audio_tags[0].timestamp_ms
    );
    assert!(video > 2.5, "video {video} s");
    assert!(
        (video - audio).abs() < 0.5,
        "video {video} s, audio {audio} s"
    );

    let decode = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let errors = String::from_utf8_lossy(&decode.stderr);
    assert!(
        decode.status.success() && errors.trim().is_empty(),
        "decode errors: {errors}"
    );
    std::fs::remove_dir_all(&dir).ok();
    frames
}

#[tokio::test]
async fn unsupported_codecs_are_refused_and_a_leaving_player_ends_the_egress() {
    let (_packet_tx, packet_rx) = mpsc::channel(8);
    let (tag_tx, _tag_rx) = mpsc::channel(8);
    let vp8 = Chosen {
        audio: None,
        video: Some(Codec {
            family: Family::Vp8,
            ..h264_codec()
        }),
    };
    let refused = egress::run(vp8, packet_rx, tag_tx, || {}).await;
    assert!(
        matches!(&refused, Err(EgressError::Unsupported(reason)) if reason.contains("VP8")),
        "{refused:?}"
    );

    let video_only = Chosen {
        audio: None,
        video: Some(h264_codec()),
    };
    let (packet_tx, packet_rx) = mpsc::channel(8);
    let (tag_tx, tag_rx) = mpsc::channel(8);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let egress = tokio::spawn(egress::run(video_only, packet_rx, tag_tx, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(requests.load(Ordering::Relaxed), 1, "a key frame at start");
    drop(tag_rx);
    let ended = tokio::time::timeout(Duration::from_secs(2), egress)
        .await
        .expect("run returns when the player leaves")
        .unwrap();
    assert!(matches!(ended, Ok(Ended::PlayerLeft)), "{ended:?}");
    drop(packet_tx);
}

/// Without video, AAC goes out at once: its sequence header first, at time 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_stream_passes_audio_at_once() {
    let audio_only = Chosen {
        audio: Some(opus_codec()),
        video: None,
    };
    let (packet_tx, packet_rx) = mpsc::channel(64);
    let (tag_tx, mut tag_rx) = mpsc::channel(256);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let egress = tokio::spawn(egress::run(audio_only, packet_rx, tag_tx, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    for (i, data) in opus_packets(50).into_iter().enumerate() {
        let mut p = RtpPacket::default();
        p.header.sequence_number = i as u16;
        p.header.timestamp = 3_000_000_000u32.wrapping_add(i as u32 * 960);
        p.payload = data;
        packet_tx.send((Kind::Audio, p)).await.unwrap();
    }
    drop(packet_tx);
    let ended = tokio::time::timeout(Duration::from_secs(10), egress)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Ok(Ended::SourceEnded)), "{ended:?}");
    let mut tags = Vec::new();
    while let Some(tag) = tag_rx.recv().await {
        tags.push(tag);
    }
    assert_eq!(requests.load(Ordering::Relaxed), 0, "no video to ask for");
    assert!(tags.iter().all(|t| t.kind == TagKind::Audio));
    assert_eq!(
        (&tags[0].data[..2], tags[0].timestamp_ms),
        (&[0xaf, 0][..], 0)
    );
    // 1 s of Opus: ~47 AAC frames of 1024 samples.
    assert!((40..=50).contains(&(tags.len() - 1)), "{} tags", tags.len());
    let last = tags.last().unwrap().timestamp_ms;
    assert!((900..1100).contains(&last), "last AAC frame at {last} ms");
}

/// A player that does not read: the egress keeps taking packets (the source never
/// waits), asks for a key frame, and resumes the player on one, header first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_player_never_holds_the_source_up() {
    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    let video_only = Chosen {
        audio: None,
        video: Some(h264_codec()),
    };
    let (packet_tx, packet_rx) = mpsc::channel(8);
    let (tag_tx, mut tag_rx) = mpsc::channel(4);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let egress = tokio::spawn(egress::run(video_only, packet_rx, tag_tx, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    let mut packetizer = Packetizer::new(102, 9, 1200);
    let feed = |packetizer: &mut Packetizer, range: std::ops::Range<u32>| {
        let mut packets = Vec::new();
        for i in range {
            let mut au = vec![0, 0, 0, 1];
            if i % 30 == 0 {
                for set in [SPS, PPS] {
                    au.extend_from_slice(set);
                    au.extend_from_slice(&[0, 0, 0, 1]);
                }
                au.extend_from_slice(&[0x65, 0x88, 1, 2, 3]);
            } else {
                au.extend_from_slice(&[0x41, 0x9a, 1, 2, 3]);
            }
            packetizer.packetize(&Bytes::from(au), i * 3000, &mut packets);
        }
        packets
    };
    // Fast enough that the player's queue of 4 overflows at once.
    for p in feed(&mut packetizer, 0..100) {
        tokio::time::timeout(Duration::from_secs(2), packet_tx.send((Kind::Video, p)))
            .await
            .expect("the egress takes packets while the player does not read")
            .unwrap();
    }
    let mut first = Vec::new();
    while let Ok(tag) = tag_rx.try_recv() {
        first.push(tag);
    }
    assert_eq!(first.len(), 4, "what the queue held");
    assert_eq!(&first[0].data[..2], &[0x17, 0]);
    // 600 ms later the player reads again; the next IDR (frame 120) restarts it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for p in feed(&mut packetizer, 100..125) {
        packet_tx.send((Kind::Video, p)).await.unwrap();
        while let Ok(tag) = tag_rx.try_recv() {
            first.push(tag);
        }
    }
    drop(packet_tx);
    egress.await.unwrap().unwrap();
    while let Some(tag) = tag_rx.recv().await {
        first.push(tag);
    }
    assert!(requests.load(Ordering::Relaxed) >= 2, "asked again");
    let resumed: Vec<(u8, u8, u32)> = first[4..]
        .iter()
        .map(|t| (t.data[0], t.data[1], t.timestamp_ms))
        .collect();
    assert_eq!(
        &resumed[..2],
        &[(0x17, 0, 4000), (0x17, 1, 4000)],
        "{resumed:?}"
    );
    assert!(resumed[2..].iter().all(|t| t.0 == 0x27), "{resumed:?}");
}
