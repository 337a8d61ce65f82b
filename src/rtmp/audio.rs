//! AAC from an RTMP publisher into Opus for the room: one GStreamer pipeline per
//! publisher (`appsrc ! aacparse ! avdec_aac ! audioconvert ! audioresample ! opusenc !
//! appsink`), 48 kHz stereo, 20 ms packets (the design and its measured cost are in
//! docs/roadmap.md, issue 11).
//!
//! The caller pushes raw AAC frames with their RTMP time and pulls Opus packets with
//! their presentation time; both calls are non-blocking or bounded, so the wiring can
//! run pulls on a blocking thread and pushes from the connection task.

use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use thiserror::Error;

use super::flv::{self, AacConfig};

#[derive(Debug, Error)]
pub enum AudioError {
    #[error("AAC config not usable for decoding: object type {object_type}, {sample_rate} Hz, {channels} channels")]
    Config {
        object_type: u8,
        sample_rate: u32,
        channels: u8,
    },
    #[error("GStreamer: {0}")]
    Gst(String),
}

/// One Opus packet (20 ms at 48 kHz) and its presentation time from the publisher's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    pub data: Bytes,
    pub pts: Duration,
    /// The audio's latest level as -dBov (RFC 6464: 0 loudest, 127 silence), from the
    /// decoded AAC (`level` in the pipeline, 20 ms intervals).
    pub level: Option<u8>,
}

/// An AAC → Opus transcoder for one publisher's audio.
pub struct AacToOpus {
    pipeline: gst::Pipeline,
    src: gstreamer_app::AppSrc,
    sink: gstreamer_app::AppSink,
    bus: gst::Bus,
    /// The first frame's time: PTS are relative to it.
    origin_ms: Option<i64>,
    /// The latest level the pipeline posted.
    level: std::cell::Cell<Option<u8>>,
}

const PIPELINE: &str = "appsrc name=aac format=time is-live=true max-bytes=262144 block=false ! \
    aacparse ! avdec_aac ! audioconvert ! audioresample ! \
    audio/x-raw,rate=48000,channels=2 ! level interval=20000000 ! \
    opusenc frame-size=20 bitrate=64000 ! appsink name=opus sync=false max-buffers=64 drop=false";

fn gst_err(e: impl std::fmt::Display) -> AudioError {
    AudioError::Gst(e.to_string())
}

impl AacToOpus {
    /// A transcoder for AAC described by `config` (a new AudioSpecificConfig from the
    /// publisher means a new transcoder).
    pub fn new(config: AacConfig) -> Result<AacToOpus, AudioError> {
        let bad = AudioError::Config {
            object_type: config.object_type,
            sample_rate: config.sample_rate,
            channels: config.channels,
        };
        let asc = flv::aac_config_bytes(config.object_type, config.sample_rate, config.channels)
            .ok_or(bad)?;
        // Caps need an initialised GStreamer (`launch` initialises it too).
        gst::init().map_err(gst_err)?;
        let caps = gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .field("codec_data", gst::Buffer::from_slice(asc))
            .field("rate", config.sample_rate as i32)
            .field("channels", config.channels.max(1) as i32)
            .build();
        let (pipeline, src, sink, bus) = launch(PIPELINE, ("aac", "opus"), Some(&caps))?;
        Ok(AacToOpus {
            pipeline,
            src,
            sink,
            bus,
            origin_ms: None,
            level: std::cell::Cell::new(None),
        })
    }

    /// Pushes one raw AAC frame with its (unwrapped) RTMP time in ms.
    pub fn push(&mut self, frame: &[u8], time_ms: i64) -> Result<(), AudioError> {
        self.note(check_bus(&self.bus)?);
        let origin = *self.origin_ms.get_or_insert(time_ms);
        let mut buffer = gst::Buffer::from_slice(frame.to_vec());
        if let Some(b) = buffer.get_mut() {
            let ms = (time_ms - origin).max(0) as u64;
            b.set_pts(gst::ClockTime::from_mseconds(ms));
        }
        self.src.push_buffer(buffer).map_err(gst_err)?;
        Ok(())
    }

    /// No more frames: what is queued is encoded, then `pull` reports the end.
    pub fn finish(&self) {
        let _ = self.src.end_of_stream();
    }

    /// The next Opus packet, waiting up to `timeout`; `Ok(None)` when none is ready,
    /// `Err` at the end of the stream or on a pipeline error.
    pub fn pull(&self, timeout: Duration) -> Result<Option<OpusPacket>, AudioError> {
        // The levels posted so far (pull_buffer clears the bus too), then those the
        // packet's own audio may have posted while it was waited for.
        self.note(check_bus(&self.bus)?);
        let pulled = pull_buffer(&self.bus, &self.sink, timeout, "Opus")?;
        self.note(check_bus(&self.bus)?);
        Ok(pulled.map(|(data, pts)| OpusPacket {
            data,
            pts,
            level: self.level.get(),
        }))
    }

    fn note(&self, level: Option<u8>) {
        if level.is_some() {
            self.level.set(level);
        }
    }
}

impl Drop for AacToOpus {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// One AAC frame for RTMP players, with its presentation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacOut {
    pub data: Bytes,
    pub pts: Duration,
}

/// An Opus → AAC transcoder for one played stream (shared by its RTMP players):
/// `opusdec ! audioconvert ! audioresample ! voaacenc` (1 % of a core, against 3.6 % for
/// avenc_aac in the recipe's measurements), AAC-LC 48 kHz stereo, raw frames.
pub struct OpusToAac {
    pipeline: gst::Pipeline,
    src: gstreamer_app::AppSrc,
    sink: gstreamer_app::AppSink,
    bus: gst::Bus,
}

const OPUS_TO_AAC: &str = "appsrc name=opus format=time is-live=true max-bytes=262144 block=false \
    caps=audio/x-opus,channel-mapping-family=0,rate=48000,channels=2 ! \
    opusdec ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! \
    voaacenc bitrate=128000 ! audio/mpeg,stream-format=raw ! \
    appsink name=aac sync=false max-buffers=64 drop=false";

impl OpusToAac {
    pub fn new() -> Result<OpusToAac, AudioError> {
        let (pipeline, src, sink, bus) = launch(OPUS_TO_AAC, ("opus", "aac"), None)?;
        Ok(OpusToAac {
            pipeline,
            src,
            sink,
            bus,
        })
    }

    /// Pushes one Opus packet with its presentation time.
    pub fn push(&self, packet: &[u8], pts: Duration) -> Result<(), AudioError> {
        check_bus(&self.bus)?;
        let mut buffer = gst::Buffer::from_slice(packet.to_vec());
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts.as_nanos() as u64));
        }
        self.src.push_buffer(buffer).map_err(gst_err)?;
        Ok(())
    }

    pub fn finish(&self) {
        let _ = self.src.end_of_stream();
    }

    /// The AudioSpecificConfig for the FLV sequence header (`flv::aac_sequence_header`),
    /// known once the encoder has started.
    pub fn audio_specific_config(&self) -> Option<Vec<u8>> {
        let caps = self.sink.static_pad("sink")?.current_caps()?;
        let s = caps.structure(0)?;
        let buffer = s.get::<gst::Buffer>("codec_data").ok()?;
        let map = buffer.map_readable().ok()?;
        Some(map.to_vec())
    }

    /// The next AAC frame, waiting up to `timeout` (`Err` at the end or on an error).
    pub fn pull(&self, timeout: Duration) -> Result<Option<AacOut>, AudioError> {
        let pulled = pull_buffer(&self.bus, &self.sink, timeout, "AAC")?;
        Ok(pulled.map(|(data, pts)| AacOut { data, pts }))
    }
}

impl Drop for OpusToAac {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A transcoding pipeline from its description, playing: its appsrc and appsink (by
/// name; `caps` set on the appsrc before it starts) and its bus.
fn launch(
    description: &str,
    (src, sink): (&str, &str),
    caps: Option<&gst::Caps>,
) -> Result<
    (
        gst::Pipeline,
        gstreamer_app::AppSrc,
        gstreamer_app::AppSink,
        gst::Bus,
    ),
    AudioError,
> {
    gst::init().map_err(gst_err)?;
    let pipeline = gst::parse::launch(description)
        .map_err(gst_err)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| AudioError::Gst("not a pipeline".into()))?;
    let src = pipeline
        .by_name(src)
        .and_then(|e| e.downcast::<gstreamer_app::AppSrc>().ok())
        .ok_or_else(|| AudioError::Gst("no appsrc".into()))?;
    let sink = pipeline
        .by_name(sink)
        .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
        .ok_or_else(|| AudioError::Gst("no appsink".into()))?;
    if caps.is_some() {
        src.set_caps(caps);
    }
    let bus = pipeline
        .bus()
        .ok_or_else(|| AudioError::Gst("no bus".into()))?;
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let _ = pipeline.set_state(gst::State::Null);
        return Err(gst_err(e));
    }
    Ok((pipeline, src, sink, bus))
}

/// The next buffer of `sink` and its PTS, waiting up to `timeout` (`Ok(None)`: none
/// ready; `Err` at the end of the stream or on a pipeline error on `bus`). `what` names
/// the format in errors.
fn pull_buffer(
    bus: &gst::Bus,
    sink: &gstreamer_app::AppSink,
    timeout: Duration,
    what: &str,
) -> Result<Option<(Bytes, Duration)>, AudioError> {
    check_bus(bus)?;
    crate::device::camera::pull_sample(sink, timeout)
        .map_err(|e| AudioError::Gst(format!("{what}: {e}")))
}

/// Takes every message off the bus (none may pile up): an error ends the pipeline;
/// the latest `level` message's loudest channel is returned as -dBov.
fn check_bus(bus: &gst::Bus) -> Result<Option<u8>, AudioError> {
    let mut level = None;
    while let Some(msg) = bus.pop() {
        match msg.view() {
            gst::MessageView::Error(e) => return Err(AudioError::Gst(e.error().to_string())),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "level") {
                    level = s.get::<gst::glib::ValueArray>("rms").ok().and_then(|rms| {
                        let loudest = rms
                            .as_slice()
                            .iter()
                            .filter_map(|v| v.get::<f64>().ok())
                            .fold(f64::NEG_INFINITY, f64::max);
                        loudest
                            .is_finite()
                            .then(|| (-loudest).round().clamp(0.0, 127.0) as u8)
                            .or(Some(127))
                    });
                }
            }
            _ => {}
        }
    }
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AAC-LC 44.1 kHz mono frames of a 440 Hz tone, made by GStreamer's own encoder.
    fn aac_tone(buffers: u32) -> Vec<Vec<u8>> {
        gst::init().unwrap();
        let description = format!(
            "audiotestsrc num-buffers={buffers} samplesperbuffer=1024 freq=440 volume=0.5 ! \
             audio/x-raw,rate=44100,channels=1 ! avenc_aac ! aacparse ! \
             audio/mpeg,stream-format=raw ! appsink name=out sync=false"
        );
        let pipeline = gst::parse::launch(&description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let sink = pipeline
            .by_name("out")
            .unwrap()
            .downcast::<gstreamer_app::AppSink>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        let mut frames = Vec::new();
        while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
            let buffer = sample.buffer().unwrap();
            frames.push(buffer.map_readable().unwrap().to_vec());
        }
        pipeline.set_state(gst::State::Null).unwrap();
        frames
    }

    #[test]
    fn aac_becomes_opus_that_decodes_to_the_tone() {
        let frames = aac_tone(100); // ~2.3 s
        assert!(frames.len() >= 90, "{} AAC frames", frames.len());
        let config = flv::parse_aac_config(&[0x12, 0x08]).unwrap();
        let mut t = AacToOpus::new(config).unwrap();
        for (i, f) in frames.iter().enumerate() {
            // RTMP ms as ffmpeg stamps them, starting mid-stream.
            t.push(f, 50_000 + (i as i64 * 1024 * 1000) / 44100)
                .unwrap();
        }
        t.finish();
        let mut packets = Vec::new();
        loop {
            match t.pull(Duration::from_secs(5)) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => panic!("no Opus packet within 5 s"),
                Err(_) => break,
            }
        }
        // 100 × 1024 samples at 44.1 kHz ≈ 2.32 s ≈ 116 packets of 20 ms.
        assert!((100..=125).contains(&packets.len()), "{}", packets.len());
        assert!(
            packets[0].pts < Duration::from_millis(100),
            "{:?}",
            packets[0].pts
        );
        assert!(packets.windows(2).all(|w| w[1].pts > w[0].pts));
        // Decode and look for the tone's energy.
        let mut decoder = audiopus::coder::Decoder::new(
            audiopus::SampleRate::Hz48000,
            audiopus::Channels::Stereo,
        )
        .unwrap();
        let mut pcm = vec![0i16; 5760 * 2];
        let mut energy = 0f64;
        let mut samples = 0usize;
        for p in &packets[10..] {
            let data: &[u8] = &p.data;
            let n = decoder.decode(Some(data), &mut pcm, false).unwrap();
            for s in &pcm[..n * 2] {
                energy += (*s as f64) * (*s as f64);
            }
            samples += n * 2;
        }
        let rms = (energy / samples as f64).sqrt();
        assert!(rms > 3000.0, "RMS {rms}: the tone did not survive");
        // The tone's level (a sine at 0.5 of full scale: -9 dBov) rides along; the last
        // packets (the decoder's flush at the end of the stream) left out.
        let levels: Vec<Option<u8>> = packets[10..packets.len() - 5]
            .iter()
            .map(|p| p.level)
            .collect();
        assert!(
            levels
                .iter()
                .all(|l| l.is_some_and(|l| (7..=11).contains(&l))),
            "levels {levels:?}"
        );
    }

    #[test]
    fn opus_becomes_aac_with_a_config_for_the_sequence_header() {
        let frames = aac_tone(60);
        let mut to_opus = AacToOpus::new(flv::parse_aac_config(&[0x12, 0x08]).unwrap()).unwrap();
        for (i, f) in frames.iter().enumerate() {
            to_opus.push(f, (i as i64 * 1024 * 1000) / 44100).unwrap();
        }
        to_opus.finish();
        let to_aac = OpusToAac::new().unwrap();
        let mut opus = 0;
        while let Ok(Some(p)) = to_opus.pull(Duration::from_secs(5)) {
            to_aac.push(&p.data, p.pts).unwrap();
            opus += 1;
        }
        to_aac.finish();
        let mut aac = Vec::new();
        while let Ok(Some(f)) = to_aac.pull(Duration::from_secs(5)) {
            aac.push(f);
        }
        // ~1.39 s: ~65 AAC frames of 1024 samples at 48 kHz.
        assert!(opus >= 60, "{opus} Opus packets");
        assert!((55..=75).contains(&aac.len()), "{} AAC frames", aac.len());
        let asc = to_aac.audio_specific_config().expect("codec_data");
        let c = flv::parse_aac_config(&asc).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
        assert!(aac.windows(2).all(|w| w[1].pts > w[0].pts));
        // And back: the AAC decodes with the advertised config.
        let mut again = AacToOpus::new(c).unwrap();
        for f in &aac {
            again.push(&f.data, f.pts.as_millis() as i64).unwrap();
        }
        again.finish();
        let mut back = 0;
        while let Ok(Some(_)) = again.pull(Duration::from_secs(5)) {
            back += 1;
        }
        assert!(back >= 55, "{back} Opus packets after the round trip");
    }

    #[test]
    fn unusual_configs_are_refused() {
        let config = AacConfig {
            object_type: 2,
            sample_rate: 12345,
            channels: 2,
        };
        assert!(matches!(
            AacToOpus::new(config),
            Err(AudioError::Config { .. })
        ));
    }
}
