//! H.264 of real encoders, generated at test time (GStreamer's x264enc, ffmpeg's
//! libx264): Annex-B splitting and parameter-set detection agree with ffprobe, and
//! what `Packetizer` makes of it decodes through GStreamer's `rtph264depay` to the
//! very same pictures as the original stream.

use std::process::Command;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app::{AppSink, AppSrc};
use huddle::device::h264::{self, nal, Packetizer, ProfileLevel};

/// A pipeline from its description, and its appsink named `out`.
fn launch(description: &str) -> (gst::Pipeline, AppSink) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<AppSink>()
        .unwrap();
    (pipeline, sink)
}

/// Every buffer the appsink gives until end of stream.
fn pulled(sink: &AppSink) -> Vec<Vec<u8>> {
    let mut buffers = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().unwrap();
        buffers.push(buffer.map_readable().unwrap().as_slice().to_vec());
    }
    buffers
}

/// Encodes `frames` pictures of a moving test pattern with x264enc, one access unit
/// per buffer (Annex-B), SPS/PPS only in front of the first IDR when `headers_once`.
fn x264_access_units(frames: u32, profile: &str) -> Vec<Bytes> {
    gst::init().unwrap();
    let (pipeline, sink) = launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! \
         video/x-raw,width=320,height=240,framerate=30/1,format=I420 ! \
         x264enc key-int-max=15 bframes=0 speed-preset=ultrafast tune=zerolatency ! \
         video/x-h264,profile={profile},stream-format=byte-stream,alignment=au ! \
         appsink name=out sync=false"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let aus: Vec<Bytes> = pulled(&sink).into_iter().map(Bytes::from).collect();
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(aus.len(), frames as usize, "x264enc gave every frame");
    aus
}

/// Decodes `input` (buffers with `caps`) through `chain` into raw I420 pictures.
fn decode(caps: &str, chain: &str, input: Vec<(Bytes, u64)>) -> Vec<Vec<u8>> {
    let (pipeline, sink) = launch(&format!(
        "appsrc name=in is-live=false format=time caps=\"{caps}\" ! {chain} ! \
         avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! appsink name=out sync=false"
    ));
    let src = pipeline
        .by_name("in")
        .unwrap()
        .downcast::<AppSrc>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let collector = std::thread::spawn(move || pulled(&sink));
    for (data, pts) in input {
        let mut buffer = gst::Buffer::from_slice(data);
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(pts));
        src.push_buffer(buffer).unwrap();
    }
    src.end_of_stream().unwrap();
    let pictures = collector.join().unwrap();
    let bus = pipeline.bus().unwrap();
    if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        panic!("decoder error: {msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    pictures
}

const H264_CAPS: &str = "video/x-h264,stream-format=byte-stream,alignment=au";
const RTP_CAPS: &str =
    "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102";

fn frame_pts(i: usize) -> u64 {
    i as u64 * 1_000_000_000 / 30
}

/// The RTP packets of `aus`, each marshalled as it goes on the wire.
fn packetize(aus: &[Bytes], mtu: usize) -> Vec<(Bytes, u64)> {
    use rtc::shared::marshal::Marshal;
    let mut p = Packetizer::new(102, 0xdead_beef, mtu);
    let mut wire = Vec::new();
    for (i, au) in aus.iter().enumerate() {
        let mut packets = Vec::new();
        p.packetize(au, (i as u32) * 3000, &mut packets);
        for packet in packets {
            assert!(packet.payload.len() <= mtu, "payload over the MTU");
            let bytes = packet.marshal().unwrap();
            wire.push((Bytes::from(bytes.to_vec()), frame_pts(i)));
        }
    }
    wire
}

#[test]
fn packetized_h264_decodes_to_the_same_pictures_as_the_original() {
    let aus = x264_access_units(45, "constrained-baseline");
    let summary: Vec<h264::Summary> = aus.iter().map(|a| h264::summarize(a)).collect();
    assert!(summary[0].idr && summary[0].sps && summary[0].pps);
    assert_eq!(
        summary.iter().filter(|s| s.idr).count(),
        3,
        "key-int-max=15"
    );
    assert!(summary.iter().all(|s| s.slices >= 1));
    let sps = h264::nal_units(&aus[0])
        .find(|u| h264::nal_type(u) == nal::SPS)
        .unwrap();
    let profile = ProfileLevel::from_sps(sps).unwrap();
    assert!(profile.is_constrained_baseline(), "{}", profile.hex());

    let original: Vec<(Bytes, u64)> = aus
        .iter()
        .enumerate()
        .map(|(i, a)| (a.clone(), frame_pts(i)))
        .collect();
    let expected = decode(H264_CAPS, "h264parse", original);
    assert_eq!(expected.len(), 45);

    // A small MTU forces FU-A for most pictures; SPS+PPS travel in a STAP-A.
    let wire = packetize(&aus, 400);
    assert!(wire.len() > 45 * 2, "{} packets", wire.len());
    let got = decode(RTP_CAPS, "rtpjitterbuffer ! rtph264depay ! h264parse", wire);
    assert_eq!(got.len(), expected.len(), "every picture decoded");
    assert!(
        got == expected,
        "depayloaded pictures differ from the original"
    );
}

#[test]
fn a_player_joining_at_a_later_idr_gets_the_parameter_sets() {
    let aus = x264_access_units(30, "constrained-baseline");
    // An encoder that sends SPS/PPS once: strip them from every later access unit.
    let stripped: Vec<Bytes> = aus
        .iter()
        .enumerate()
        .map(|(i, au)| {
            if i == 0 {
                return au.clone();
            }
            let mut v = Vec::new();
            for unit in h264::nal_units(au) {
                if !matches!(h264::nal_type(unit), nal::SPS | nal::PPS) {
                    v.extend_from_slice(&[0, 0, 0, 1]);
                    v.extend_from_slice(unit);
                }
            }
            Bytes::from(v)
        })
        .collect();
    let second_idr = (1..stripped.len())
        .find(|&i| h264::summarize(&stripped[i]).idr)
        .unwrap();
    assert!(!h264::summarize(&stripped[second_idr]).sps);
    let mut p = Packetizer::new(102, 7, 1200);
    let mut wire = Vec::new();
    for (i, au) in stripped.iter().enumerate() {
        let mut packets = Vec::new();
        p.packetize(au, (i as u32) * 3000, &mut packets);
        // The player joins at the second IDR: everything before it is never sent.
        if i >= second_idr {
            use rtc::shared::marshal::Marshal;
            for packet in packets {
                wire.push((
                    Bytes::from(packet.marshal().unwrap().to_vec()),
                    frame_pts(i),
                ));
            }
        }
    }
    let got = decode(RTP_CAPS, "rtpjitterbuffer ! rtph264depay ! h264parse", wire);
    assert_eq!(
        got.len(),
        stripped.len() - second_idr,
        "decodes from the IDR on"
    );
}

#[test]
fn annex_b_split_of_an_ffmpeg_stream_agrees_with_ffprobe() {
    let dir = std::env::temp_dir().join(format!("huddle-h264-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("main.h264");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=25:duration=2")
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "main",
            "-g",
            "10",
            "-bf",
            "0",
        ])
        .args(["-x264-params", "sliced-threads=0:threads=1"])
        .arg(&file)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    let data = std::fs::read(&file).unwrap();
    let units: Vec<&[u8]> = h264::nal_units(&data).collect();
    let count = |t: u8| units.iter().filter(|u| h264::nal_type(u) == t).count();
    let idr = count(nal::IDR);
    let slices = idr + count(nal::SLICE);
    assert!(count(nal::SPS) >= 1 && count(nal::PPS) >= 1);
    let profile = ProfileLevel::from_sps(
        units
            .iter()
            .find(|u| h264::nal_type(u) == nal::SPS)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(profile.name(), "Main");
    assert!(profile.browsers_decode());

    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=key_frame", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&probe.stdout);
    let frames: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(frames.len(), 50);
    assert_eq!(slices, frames.len(), "one slice per picture");
    assert_eq!(idr, frames.iter().filter(|k| k.starts_with('1')).count());
    std::fs::remove_dir_all(&dir).ok();
}
