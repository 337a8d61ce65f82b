//! Camera sources: each yields H.264 access units (Annex-B) with timestamps and
//! takes key-frame requests. `VideoSource` turns them into RTP for the SFU.
//!
//! - `V4l2Camera`: a UVC camera that encodes H.264 itself, read with V4L2 mmap
//!   streaming (the `v4l` crate; single-planar capture nodes).
//! - `GstCamera`: a GStreamer pipeline ending in an appsink: the test pattern
//!   (videotestsrc + a software encoder), a raw camera into the board's encoder
//!   (SoC M2M encoders such as v4l2h264enc, mpph264enc, vpuenc_h264, which the
//!   `v4l` crate cannot drive), or a pipeline from `[device] pipeline`.
//!
//! The H.264 is passed through: never decoded, never re-encoded.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use gstreamer::prelude::*;
use log::{debug, info, warn};

use super::h264::{self, Packetizer, ProfileLevel, RtpPacket};
use super::Source;
use crate::config::{self, Capture};
use crate::media::{Codec, Family, Kind};

/// One H.264 access unit as a camera delivers it.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// Annex-B byte stream of one picture (with SPS/PPS when the encoder sent them).
    pub data: Bytes,
    /// Capture time on the source's clock.
    pub pts: Duration,
}

/// Where H.264 access units come from.
pub trait Camera: Send {
    fn name(&self) -> String;
    fn open(&mut self) -> Result<(), String>;
    /// Waits up to `timeout` for the next access unit.
    fn next(&mut self, timeout: Duration) -> Result<Option<AccessUnit>, String>;
    /// Asks the encoder for an IDR as soon as it can.
    fn force_key_frame(&mut self);
    fn close(&mut self);
}

/// Dynamic payload type of the device's H.264 (its own numbering; players get theirs).
pub const H264_PAYLOAD_TYPE: u8 = 102;

/// The camera as an RTP source: access units packetized (RFC 6184), the codec taken
/// from the SPS the camera actually emits.
pub struct VideoSource {
    camera: Box<dyn Camera>,
    packetizer: Packetizer,
    profile: Option<ProfileLevel>,
    /// Pictures are dropped until the first IDR (a decoder cannot start elsewhere).
    started: bool,
    /// 90 kHz offset so the stream does not start at zero.
    ts_base: u32,
}

impl VideoSource {
    pub fn new(camera: Box<dyn Camera>) -> VideoSource {
        let ssrc = rand_u32();
        VideoSource {
            camera,
            packetizer: Packetizer::new(H264_PAYLOAD_TYPE, ssrc, h264::DEFAULT_MTU),
            profile: None,
            started: false,
            ts_base: rand_u32(),
        }
    }
}

pub(crate) fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// The SDP description of H.264 with this SPS profile (packetization-mode 1).
pub fn h264_codec(profile: ProfileLevel) -> Codec {
    Codec {
        family: Family::H264 {
            profile: profile.profile,
            constraints: profile.constraints,
        },
        payload_type: H264_PAYLOAD_TYPE,
        clock_rate: 90_000,
        channels: 0,
        fmtp: format!(
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={}",
            profile.hex()
        ),
    }
}

impl Source for VideoSource {
    fn name(&self) -> String {
        self.camera.name()
    }

    fn kind(&self) -> Kind {
        Kind::Video
    }

    fn open(&mut self) -> Result<(), String> {
        self.started = false;
        self.profile = None;
        // A new SSRC per opening: players see a new source and renumber seamlessly.
        self.packetizer = Packetizer::new(H264_PAYLOAD_TYPE, rand_u32(), h264::DEFAULT_MTU);
        self.camera.open()?;
        self.camera.force_key_frame();
        Ok(())
    }

    fn poll(&mut self, timeout: Duration, out: &mut Vec<RtpPacket>) -> Result<bool, String> {
        let Some(au) = self.camera.next(timeout)? else {
            return Ok(false);
        };
        let summary = h264::summarize(&au.data);
        if !self.started {
            if !summary.idr {
                self.camera.force_key_frame();
                // The camera is alive, the picture just cannot start here.
                return Ok(true);
            }
            self.started = true;
        }
        let ts = self
            .ts_base
            .wrapping_add((au.pts.as_nanos() * 9 / 100_000) as u32);
        self.packetizer.packetize(&au.data, ts, out);
        if summary.sps {
            let profile = self.packetizer.sps().and_then(ProfileLevel::from_sps);
            if profile.is_some() && profile != self.profile {
                if let Some(p) = profile {
                    if !p.browsers_decode() {
                        warn!(
                            "device: {} emits H.264 {} ({}): browsers do not negotiate it; \
                             ask the encoder for constrained baseline (board profile)",
                            self.camera.name(),
                            p.name(),
                            p.hex()
                        );
                    } else {
                        info!(
                            "device: {} emits H.264 {} ({})",
                            self.camera.name(),
                            p.name(),
                            p.hex()
                        );
                    }
                }
                self.profile = profile;
            }
        }
        Ok(true)
    }

    fn codec(&self) -> Option<Codec> {
        self.profile.map(h264_codec)
    }

    fn key_frame(&mut self) {
        self.camera.force_key_frame();
    }

    fn close(&mut self) {
        self.camera.close();
    }
}

/// The camera of this configuration (`None` for "none").
pub fn from_config(cfg: &config::Device) -> Option<Box<dyn Source>> {
    if cfg.camera == "none" {
        return None;
    }
    let video = Video {
        width: cfg.width,
        height: cfg.height,
        framerate: cfg.framerate,
        bitrate_kbps: cfg.bitrate_kbps,
    };
    let camera: Box<dyn Camera> = if !cfg.pipeline.trim().is_empty() {
        Box::new(GstCamera::new(
            "camera pipeline".into(),
            custom_pipeline(&cfg.pipeline),
        ))
    } else {
        let device = match cfg.camera.as_str() {
            "auto" => find_camera(),
            "test-pattern" => None,
            path => Some(path.to_owned()),
        };
        match device {
            None => {
                let encoder = software_encoder(&cfg.encoder);
                Box::new(GstCamera::new(
                    format!("camera test-pattern ({encoder})"),
                    test_pattern_pipeline(&video, &encoder),
                ))
            }
            Some(path) => Box::new(V4l2AutoCamera {
                path,
                capture: cfg.capture,
                encoder: cfg.encoder.clone(),
                video,
                active: None,
            }),
        }
    };
    Some(Box::new(VideoSource::new(camera)))
}

/// Size, rate and bitrate asked of the camera or encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Video {
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub bitrate_kbps: u32,
}

/// The first V4L2 video capture node (not a codec or metadata node), if any.
pub fn find_camera() -> Option<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/dev")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("video")?.parse().ok()?;
            Some((n, format!("/dev/{name}")))
        })
        .collect();
    nodes.sort();
    nodes
        .into_iter()
        .map(|(_, path)| path)
        .find(|path| v4l2::is_capture_node(Path::new(path)))
}

// ----- GStreamer pipelines ------------------------------------------------------

/// The tail every pipeline ends with: whole access units in Annex-B, parameter sets
/// in front of each IDR, into the appsink Huddle pulls from.
const SINK: &str = "h264parse config-interval=-1 ! \
     video/x-h264,stream-format=byte-stream,alignment=au ! \
     appsink name=huddle sync=false max-buffers=8 emit-signals=false";

/// Software encoders, in order of preference, for the test pattern and "auto".
const SOFTWARE_ENCODERS: [&str; 2] = ["x264enc", "openh264enc"];
/// Every encoder "auto" may pick, hardware first.
const ENCODERS: [&str; 5] = [
    "v4l2h264enc",
    "mpph264enc",
    "vpuenc_h264",
    "x264enc",
    "openh264enc",
];

fn element_exists(name: &str) -> bool {
    gst_init().is_ok() && gstreamer::ElementFactory::find(name).is_some()
}

fn gst_init() -> Result<(), String> {
    gstreamer::init().map_err(|e| format!("GStreamer: {e}"))
}

/// The encoder to use for `configured` ("auto": the first that exists).
fn pick_encoder(configured: &str, candidates: &[&str]) -> String {
    if configured != "auto" {
        return configured.to_owned();
    }
    candidates
        .iter()
        .find(|e| element_exists(e))
        .unwrap_or(&candidates[0])
        .to_string()
}

/// The test pattern needs a software encoder: a SoC encoder named by the board is
/// kept only if it exists here.
fn software_encoder(configured: &str) -> String {
    if configured != "auto" && element_exists(configured) {
        return configured.to_owned();
    }
    pick_encoder("auto", &SOFTWARE_ENCODERS)
}

/// An encoder element with its rate control, and the caps that ask it for a profile
/// every browser decodes.
pub fn encoder_fragment(encoder: &str, v: &Video) -> String {
    let kbps = v.bitrate_kbps;
    let bps = u64::from(kbps) * 1000;
    let gop = v.framerate * 2;
    let (element, caps) = match encoder {
        "x264enc" => (
            format!(
                "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
                 key-int-max={gop} byte-stream=true"
            ),
            "profile=constrained-baseline",
        ),
        "openh264enc" => (
            format!("openh264enc bitrate={bps} rate-control=bitrate complexity=low gop-size={gop}"),
            "profile=constrained-baseline",
        ),
        "v4l2h264enc" => (
            format!(
                "v4l2h264enc extra-controls=\"controls,video_bitrate={bps},\
                 h264_i_frame_period={gop},repeat_sequence_header=1\""
            ),
            "profile=(string){constrained-baseline,baseline},level=(string)4",
        ),
        "mpph264enc" => (
            format!("mpph264enc bps={bps} gop={gop} rc-mode=cbr"),
            "profile=(string){constrained-baseline,baseline}",
        ),
        "vpuenc_h264" => (
            format!("vpuenc_h264 bitrate={kbps} gop-size={gop}"),
            "profile=(string){constrained-baseline,baseline}",
        ),
        other => (other.to_owned(), ""),
    };
    if caps.is_empty() {
        element
    } else {
        format!("{element} ! video/x-h264,{caps}")
    }
}

/// videotestsrc with the device's clock burnt in, encoded in software.
pub fn test_pattern_pipeline(v: &Video, encoder: &str) -> String {
    format!(
        "videotestsrc is-live=true pattern=smpte ! \
         video/x-raw,width={w},height={h},framerate={f}/1 ! \
         clockoverlay halignment=center valignment=center font-desc=\"Sans Bold 18\" \
         time-format=\"Huddle %H:%M:%S\" shaded-background=true ! \
         videoconvert ! video/x-raw,format=I420 ! {enc} ! {SINK}",
        w = v.width,
        h = v.height,
        f = v.framerate,
        enc = encoder_fragment(encoder, v),
    )
}

/// A raw V4L2 camera into an encoder (a SoC M2M encoder on the boards).
pub fn raw_camera_pipeline(device: &str, v: &Video, encoder: &str) -> String {
    format!(
        "v4l2src device={device} ! video/x-raw,width={w},height={h},framerate={f}/1 ! \
         videoconvert ! {enc} ! {SINK}",
        w = v.width,
        h = v.height,
        f = v.framerate,
        enc = encoder_fragment(encoder, v),
    )
}

/// `[device] pipeline`: the user's pipeline produces H.264; Huddle adds the tail.
pub fn custom_pipeline(description: &str) -> String {
    format!("{} ! {SINK}", description.trim())
}

/// A GStreamer pipeline whose appsink named `huddle` yields H.264 access units.
pub struct GstCamera {
    name: String,
    description: String,
    running: Option<Running>,
}

struct Running {
    pipeline: gstreamer::Pipeline,
    sink: gstreamer_app::AppSink,
    bus: gstreamer::Bus,
}

impl GstCamera {
    pub fn new(name: String, description: String) -> GstCamera {
        GstCamera {
            name,
            description,
            running: None,
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

impl Camera for GstCamera {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn open(&mut self) -> Result<(), String> {
        self.close();
        gst_init()?;
        debug!("device: {}: pipeline {}", self.name, self.description);
        let element =
            gstreamer::parse::launch(&self.description).map_err(|e| format!("pipeline: {e}"))?;
        let pipeline = element
            .downcast::<gstreamer::Pipeline>()
            .map_err(|_| "pipeline: not a pipeline".to_owned())?;
        let sink = pipeline
            .by_name("huddle")
            .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
            .ok_or("pipeline: no appsink named 'huddle'")?;
        let bus = pipeline.bus().ok_or("pipeline: no bus")?;
        let running = Running {
            pipeline,
            sink,
            bus,
        };
        if let Err(e) = running.pipeline.set_state(gstreamer::State::Playing) {
            let detail = bus_error(&running.bus).unwrap_or_else(|| e.to_string());
            let _ = running.pipeline.set_state(gstreamer::State::Null);
            return Err(detail);
        }
        self.running = Some(running);
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<AccessUnit>, String> {
        let Some(r) = &self.running else {
            return Err("not open".into());
        };
        if let Some(e) = bus_error(&r.bus) {
            return Err(e);
        }
        let Some((data, pts)) = pull_sample(&r.sink, timeout)? else {
            return Ok(None);
        };
        Ok(Some(AccessUnit { data, pts }))
    }

    fn force_key_frame(&mut self) {
        let Some(r) = &self.running else {
            return;
        };
        // GstVideoEncoder's upstream force-key-unit event (x264enc, v4l2h264enc, ...).
        let structure = gstreamer::Structure::builder("GstForceKeyUnit")
            .field("all-headers", true)
            .field("count", 0u32)
            .build();
        let event = gstreamer::event::CustomUpstream::new(structure);
        if !r.sink.send_event(event) {
            debug!("device: {}: key frame request not handled", self.name);
        }
    }

    fn close(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.pipeline.set_state(gstreamer::State::Null);
        }
    }
}

impl Drop for GstCamera {
    fn drop(&mut self) {
        self.close();
    }
}

/// The first error or end-of-stream on the bus, named after the element.
/// The next buffer of an appsink and its PTS, waiting up to `timeout` (`Ok(None)`: none
/// ready; `Err` at the end of the stream). The mapped buffer becomes the bytes' owner:
/// no copy. Shared by the camera and the RTMP audio transcoders.
pub(crate) fn pull_sample(
    sink: &gstreamer_app::AppSink,
    timeout: Duration,
) -> Result<Option<(Bytes, Duration)>, String> {
    let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let Some(sample) = sink.try_pull_sample(gstreamer::ClockTime::from_nseconds(ns)) else {
        if sink.is_eos() {
            return Err("end of stream".into());
        }
        return Ok(None);
    };
    let Some(buffer) = sample.buffer_owned() else {
        return Ok(None);
    };
    let pts = buffer
        .pts()
        .map(|t| Duration::from_nanos(t.nseconds()))
        .unwrap_or_default();
    match buffer.into_mapped_buffer_readable() {
        Ok(mapped) => Ok(Some((Bytes::from_owner(mapped), pts))),
        Err(_) => Err("cannot map a buffer".into()),
    }
}

fn bus_error(bus: &gstreamer::Bus) -> Option<String> {
    use gstreamer::MessageView;
    while let Some(msg) =
        bus.pop_filtered(&[gstreamer::MessageType::Error, gstreamer::MessageType::Eos])
    {
        match msg.view() {
            MessageView::Error(e) => {
                let from = e
                    .src()
                    .map(|s| s.name().to_string())
                    .unwrap_or_else(|| "pipeline".into());
                return Some(format!("{from}: {}", e.error()));
            }
            MessageView::Eos(_) => return Some("end of stream".into()),
            _ => {}
        }
    }
    None
}

// ----- V4L2 ---------------------------------------------------------------------

/// A `/dev/video*` camera: UVC H.264 passed through when it offers H.264 (or when
/// `capture = "uvc-h264"`), else raw frames into the GStreamer `encoder`.
struct V4l2AutoCamera {
    path: String,
    capture: Capture,
    encoder: String,
    video: Video,
    active: Option<Box<dyn Camera>>,
}

impl Camera for V4l2AutoCamera {
    fn name(&self) -> String {
        match &self.active {
            Some(c) => c.name(),
            None => format!("camera {}", self.path),
        }
    }

    fn open(&mut self) -> Result<(), String> {
        self.close();
        let uvc = match self.capture {
            Capture::UvcH264 => true,
            Capture::Gstreamer => false,
            Capture::Auto => v4l2::offers_h264(Path::new(&self.path))?,
        };
        let mut camera: Box<dyn Camera> = if uvc {
            Box::new(v4l2::V4l2Camera::new(self.path.clone(), self.video))
        } else {
            let encoder = pick_encoder(&self.encoder, &ENCODERS);
            Box::new(GstCamera::new(
                format!("camera {} ({encoder})", self.path),
                raw_camera_pipeline(&self.path, &self.video, &encoder),
            ))
        };
        camera.open()?;
        self.active = Some(camera);
        Ok(())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<AccessUnit>, String> {
        match &mut self.active {
            Some(c) => c.next(timeout),
            None => Err("not open".into()),
        }
    }

    fn force_key_frame(&mut self) {
        if let Some(c) = &mut self.active {
            c.force_key_frame();
        }
    }

    fn close(&mut self) {
        if let Some(mut c) = self.active.take() {
            c.close();
        }
    }
}

/// UVC H.264 capture with the `v4l` crate. Thin on purpose: no V4L2 device exists
/// where the tests run; everything after `next` (Annex-B, packetization, key-frame
/// handling) is shared with the other cameras and tested there.
pub mod v4l2 {
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;
    use log::{debug, info};
    use v4l::buffer::Type;
    use v4l::capability::Flags;
    use v4l::control::{Control, Value};
    use v4l::io::mmap::Stream;
    use v4l::io::traits::CaptureStream;
    use v4l::video::capture::Parameters;
    use v4l::video::Capture;
    use v4l::FourCC;

    use super::{AccessUnit, Camera, Video};

    /// `V4L2_CID_MPEG_VIDEO_BITRATE` (codec class base 0x990900 + 207).
    pub const CID_BITRATE: u32 = 0x0099_09cf;
    /// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME` (base + 229), a button control.
    pub const CID_FORCE_KEY_FRAME: u32 = 0x0099_09e5;

    const H264: &[u8; 4] = b"H264";

    /// A single-planar video capture node (not an M2M codec, not metadata).
    pub fn is_capture_node(path: &Path) -> bool {
        let Ok(dev) = v4l::Device::with_path(path) else {
            return false;
        };
        dev.query_caps().is_ok_and(|c| {
            c.capabilities.contains(Flags::VIDEO_CAPTURE)
                && !c.capabilities.contains(Flags::VIDEO_M2M)
        })
    }

    /// Whether the camera can deliver H.264 itself.
    pub fn offers_h264(path: &Path) -> Result<bool, String> {
        let dev = v4l::Device::with_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let formats = dev
            .enum_formats()
            .map_err(|e| format!("{}: formats: {e}", path.display()))?;
        Ok(formats.iter().any(|f| f.fourcc == FourCC::new(H264)))
    }

    pub struct V4l2Camera {
        path: String,
        video: Video,
        open: Option<(v4l::Device, Stream<'static>)>,
        key_frame_control: bool,
    }

    impl V4l2Camera {
        pub fn new(path: String, video: Video) -> V4l2Camera {
            V4l2Camera {
                path,
                video,
                open: None,
                key_frame_control: false,
            }
        }
    }

    impl Camera for V4l2Camera {
        fn name(&self) -> String {
            format!("camera {} (uvc-h264)", self.path)
        }

        fn open(&mut self) -> Result<(), String> {
            self.close();
            let dev = v4l::Device::with_path(&self.path).map_err(|e| e.to_string())?;
            let mut fmt = dev.format().map_err(|e| format!("format: {e}"))?;
            fmt.width = self.video.width;
            fmt.height = self.video.height;
            fmt.fourcc = FourCC::new(H264);
            let fmt = dev
                .set_format(&fmt)
                .map_err(|e| format!("set format: {e}"))?;
            if fmt.fourcc != FourCC::new(H264) {
                return Err(format!("does not deliver H.264 (it offers {})", fmt.fourcc));
            }
            if let Err(e) = dev.set_params(&Parameters::with_fps(self.video.framerate)) {
                debug!("{}: frame rate {}: {e}", self.path, self.video.framerate);
            }
            let controls: Vec<u32> = dev
                .query_controls()
                .map(|c| c.iter().map(|d| d.id).collect())
                .unwrap_or_default();
            if controls.contains(&CID_BITRATE) {
                let bps = i64::from(self.video.bitrate_kbps) * 1000;
                if let Err(e) = dev.set_control(Control {
                    id: CID_BITRATE,
                    value: Value::Integer(bps),
                }) {
                    debug!("{}: bitrate: {e}", self.path);
                }
            }
            self.key_frame_control = controls.contains(&CID_FORCE_KEY_FRAME);
            info!(
                "{}: H.264 {}x{}, key-frame control {}",
                self.path,
                fmt.width,
                fmt.height,
                if self.key_frame_control { "yes" } else { "no" }
            );
            let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
                .map_err(|e| format!("mmap streaming: {e}"))?;
            stream.set_timeout(Duration::from_millis(100));
            self.open = Some((dev, stream));
            Ok(())
        }

        fn next(&mut self, timeout: Duration) -> Result<Option<AccessUnit>, String> {
            let Some((_, stream)) = &mut self.open else {
                return Err("not open".into());
            };
            stream.set_timeout(timeout);
            match stream.next() {
                Ok((buf, meta)) => {
                    let used = (meta.bytesused as usize).min(buf.len());
                    // The buffer goes back to the driver: this copy is the one the API forces.
                    let data = Bytes::copy_from_slice(&buf[..used]);
                    let pts = Duration::from_secs(meta.timestamp.sec.max(0) as u64)
                        + Duration::from_micros(meta.timestamp.usec.max(0) as u64);
                    Ok(Some(AccessUnit { data, pts }))
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }

        fn force_key_frame(&mut self) {
            if let (Some((dev, _)), true) = (&self.open, self.key_frame_control) {
                if let Err(e) = dev.set_control(Control {
                    id: CID_FORCE_KEY_FRAME,
                    value: Value::None,
                }) {
                    debug!("{}: force key frame: {e}", self.path);
                }
            }
        }

        fn close(&mut self) {
            // The stream (its buffers) goes before the device.
            if let Some((dev, stream)) = self.open.take() {
                drop(stream);
                drop(dev);
            }
        }
    }
}
