//! The meeting-room device's own camera and microphone, as a participant of its rooms.
//!
//! - `h264`: Annex-B parsing and RTP packetization (pure).
//! - `camera`: camera sources yielding H.264 access units (V4L2 UVC H.264 capture,
//!   GStreamer pipelines for SoC encoders and the test pattern).
//! - `microphone`: ALSA capture or a generated tone, encoded to Opus.
//! - `supervisor`: stall detection and retry backoff (pure, time as input).
//! - `participant`: the device in the rooms (pure; driven by the room-core driver).
//! - `demand`: whether capture is needed now, with a grace period (pure).
//!
//! Each source runs on its own thread: open, deliver RTP packets into the SFU's
//! `DeviceFeed`, and on failure or stall close, report, wait (backoff) and reopen.
//! Each source can be switched off and on at run time (`Device::control`, the admin
//! API): off, its thread closes it (a camera's light goes out) and reports it gone,
//! as for a camera that vanished; on, it opens it again like a camera that came back.
//! Capture also follows the demand (`DeviceControl::set_demand`): not needed, every
//! source is closed the same way (idle) until needed again.
//!
//! For the stream core (`crate::media`) the camera and microphone together are one
//! ordinary named source, `SOURCE`; it forwards their packets to every room's device
//! stream without re-encoding.

pub mod camera;
pub mod control;
pub mod demand;
pub mod echo;
pub mod h264;
pub mod levels;
pub mod microphone;
pub mod participant;
pub mod speaker;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

pub use participant::{Participant, Policy};
use supervisor::Supervisor;

use crate::config;
use crate::media::{Codec, Kind};
use crate::sfu::task::DeviceFeed;
use h264::RtpPacket;

/// The name the device's camera and microphone have as a source of the media engine
/// (`MediaRequest::PublishExternal`, `MediaEvent::SourceChanged`).
pub const SOURCE: &str = "device";

/// Why a device stream cannot be published while neither source delivers.
pub const UNAVAILABLE: &str = "The device's camera and microphone are not available";

/// What an idle source says (nothing needs the device's media now).
pub const IDLE: &str = "Idle: nobody to send to";

/// A camera or microphone as the capture thread drives it: opened, polled for RTP
/// packets, closed. Implementations block at most `timeout` in `poll`.
pub trait Source: Send {
    /// For log lines and failure reasons: "camera /dev/video0", "microphone hw:1,0".
    fn name(&self) -> String;
    fn kind(&self) -> Kind;
    fn open(&mut self) -> Result<(), String>;
    /// Waits up to `timeout` for media and appends its RTP packets to `out`;
    /// `Ok(false)` when nothing arrived in time.
    fn poll(&mut self, timeout: Duration, out: &mut Vec<RtpPacket>) -> Result<bool, String>;
    /// What the packets are, once known (a camera's profile is in its first SPS).
    fn codec(&self) -> Option<Codec>;
    /// A player needs a key frame.
    fn key_frame(&mut self) {}
    fn close(&mut self);
}

/// Retry and stall times of the capture threads.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub retry: Duration,
    pub stall: Duration,
}

/// What every source delivers, combined into one device state for the SFU. After
/// the start and after every change of the demand, the state goes out only once
/// every source has made its first attempt under it (opened and delivering, failed,
/// switched off, idle), so the device's stream starts (and resumes) with both camera
/// and microphone instead of publishing one and republishing a moment later.
pub(crate) struct Shared {
    feed: DeviceFeed,
    state: Mutex<Combined>,
    /// How many times the demand changed: odd while capture is needed. Written under
    /// `state`'s lock; the threads read it every time round their loops. A report
    /// carries the value its source acted under.
    demand: AtomicU64,
}

struct Combined {
    audio: Option<Codec>,
    video: Option<Codec>,
    /// Every source's kind.
    kinds: Vec<Kind>,
    /// Sources that have not reported under the current demand yet.
    waiting: Vec<Kind>,
}

/// Whether a value of `Shared::demand` means "needed".
fn needed(demand: u64) -> bool {
    demand % 2 == 1
}

impl Shared {
    fn report(&self, kind: Kind, codec: Option<Codec>, info: String, demand: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match kind {
            Kind::Audio => state.audio = codec,
            Kind::Video => state.video = codec,
        }
        if demand == self.demand.load(Ordering::Acquire) {
            state.waiting.retain(|k| *k != kind);
        }
        if state.waiting.is_empty() {
            // Sent under the lock: the SFU sees the states in the order they happened.
            self.feed
                .state(state.audio.clone(), state.video.clone(), info);
        }
    }

    fn demand(&self) -> u64 {
        self.demand.load(Ordering::Acquire)
    }

    fn is_needed(&self) -> bool {
        needed(self.demand())
    }

    /// Capture is needed (or not) from now on; `false` when that was already so.
    fn set_demand(&self, now: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let demand = self.demand.load(Ordering::Acquire);
        if needed(demand) == now {
            return false;
        }
        state.waiting = state.kinds.clone();
        self.demand.store(demand + 1, Ordering::Release);
        true
    }
}

/// The running capture threads.
pub struct Device {
    stop: Arc<AtomicBool>,
    /// The sources' on/off switches and states (the admin API).
    control: control::DeviceControl,
    threads: Vec<Thread>,
    /// A thread whose loop has not come round for this long is stuck.
    hang_after: Duration,
}

/// One source's thread and its heartbeat.
struct Thread {
    name: String,
    handle: JoinHandle<()>,
    beat: Arc<Beat>,
}

/// When a capture thread's loop last came round (milliseconds since `born`): it does
/// at least every `POLL`, also while it waits to retry.
pub(crate) struct Beat {
    born: Instant,
    last: AtomicU64,
}

impl Beat {
    fn new() -> Beat {
        Beat {
            born: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// A capture thread that is not running as it should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// It ended (a panic) while the device runs.
    Dead(String),
    /// Its loop has not come round for too long (stuck in a driver call).
    Hung(String),
}

impl Device {
    /// Starts the configured camera and microphone (`None` when both are "none"):
    /// capturing at once with `[device] always_on`, else idle until
    /// `DeviceControl::set_demand(true)`. `echo` processes the microphone (echo
    /// cancellation against the speaker, noise suppression, gain control) when it is
    /// a sound card.
    pub fn start(
        cfg: &config::Device,
        feed: DeviceFeed,
        echo: Option<Arc<echo::EchoCanceller>>,
    ) -> Option<Device> {
        let timing = Timing {
            retry: Duration::from_millis(cfg.retry_ms),
            stall: Duration::from_millis(cfg.stall_timeout_ms),
        };
        let mut sources: Vec<(Box<dyn Source>, String)> = Vec::new();
        if let Some(camera) = camera::from_config(cfg) {
            let configured = match cfg.pipeline.trim().is_empty() {
                true => cfg.camera.clone(),
                false => "pipeline".into(),
            };
            sources.push((camera, configured));
        }
        if let Some(microphone) = microphone::from_config(cfg, echo) {
            sources.push((microphone, cfg.microphone.clone()));
        }
        if sources.is_empty() {
            info!("device: no camera and no microphone configured");
            return None;
        }
        Some(Device::start_configured(
            sources,
            timing,
            feed,
            cfg.always_on,
        ))
    }

    /// Runs these sources, each on its own thread, into `feed`, capturing at once
    /// (until `DeviceControl::set_demand(false)`).
    pub fn start_with(sources: Vec<Box<dyn Source>>, timing: Timing, feed: DeviceFeed) -> Device {
        let sources = sources
            .into_iter()
            .map(|s| {
                let configured = without_kind(&s.name());
                (s, configured)
            })
            .collect();
        Device::start_configured(sources, timing, feed, true)
    }

    /// Runs these sources (each with what the configuration names it) into `feed`.
    fn start_configured(
        sources: Vec<(Box<dyn Source>, String)>,
        timing: Timing,
        feed: DeviceFeed,
        needed: bool,
    ) -> Device {
        let kinds: Vec<Kind> = sources.iter().map(|(s, _)| s.kind()).collect();
        let shared = Arc::new(Shared {
            feed,
            state: Mutex::new(Combined {
                audio: None,
                video: None,
                waiting: kinds.clone(),
                kinds,
            }),
            demand: AtomicU64::new(u64::from(needed)),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut control = control::DeviceControl::default();
        control.set_shared(shared.clone());
        for (source, configured) in sources {
            let name = source.name();
            info!("device: starting {name}");
            let switch = Arc::new(control::Switch::new(configured));
            control.add(source.kind(), switch.clone());
            let (shared, stop) = (shared.clone(), stop.clone());
            let beat = Arc::new(Beat::new());
            let thread_beat = beat.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("huddle-{}", source.kind().as_str()))
                .spawn(move || {
                    let lane = Lane {
                        shared: &shared,
                        stop: &stop,
                        beat: &thread_beat,
                        switch: &switch,
                    };
                    run(source, timing, &lane)
                });
            match spawned {
                Ok(handle) => threads.push(Thread { name, handle, beat }),
                Err(e) => warn!("device: cannot start a thread for {name}: {e}"),
            }
        }
        Device {
            stop,
            control,
            threads,
            hang_after: HANG_MARGIN + timing.stall,
        }
    }

    /// A handle to switch the camera and microphone and read their state (the admin
    /// API).
    pub fn control(&self) -> control::DeviceControl {
        self.control.clone()
    }

    /// Whether every capture thread runs (for the service watchdog).
    pub fn check(&self) -> Result<(), Trouble> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        for t in &self.threads {
            if t.handle.is_finished() {
                return Err(Trouble::Dead(format!("the {} thread ended", t.name)));
            }
            let silent = t.beat.silent_for();
            if silent > self.hang_after {
                return Err(Trouble::Hung(format!(
                    "the {} thread is stuck ({} s without coming round)",
                    t.name,
                    silent.as_secs()
                )));
            }
        }
        Ok(())
    }

    /// Stops and closes every source (blocks up to about a poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.handle.join();
        }
    }
}

impl Drop for Device {
    /// A device dropped without `stop` (a server dropped in a test) still ends its
    /// threads, without waiting for them.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long one `poll` may block: also how fast a stop is noticed.
const POLL: Duration = Duration::from_millis(100);
/// Time a source's `open` may take (GStreamer pipelines, USB cameras) before its
/// thread counts as stuck, on top of the stall timeout.
const HANG_MARGIN: Duration = Duration::from_secs(30);

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "camera /dev/video0" → "/dev/video0" (the device part of a source's name).
fn without_kind(name: &str) -> String {
    ["camera ", "microphone "]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
        .to_owned()
}

/// What a capture thread works with besides its source.
struct Lane<'a> {
    shared: &'a Shared,
    stop: &'a AtomicBool,
    beat: &'a Beat,
    switch: &'a control::Switch,
}

impl Lane<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Why the source should not capture under `demand`, if it should not.
    fn rest(&self, demand: u64) -> Option<Rest> {
        if !self.switch.is_on() {
            Some(Rest::SwitchedOff)
        } else if !needed(demand) {
            Some(Rest::Idle)
        } else {
            None
        }
    }

    /// Whether the thread should leave what it is doing under `demand`: stopping,
    /// switched off, or the demand changed.
    fn interrupted(&self, demand: u64) -> bool {
        self.stopped() || !self.switch.is_on() || self.shared.demand() != demand
    }
}

/// Why a source is closed while the device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rest {
    /// By the admin API.
    SwitchedOff,
    /// Nothing needs it (`DeviceControl::set_demand(false)`).
    Idle,
}

/// Why a source stopped delivering.
enum Interruption {
    Stop,
    /// Switched off or idle.
    Rest,
    Failed(String),
}

/// One source's life: open, deliver, and after a failure or stall close, report,
/// wait and try again, until `stop`. Switched off or idle, it is closed and reported
/// gone until it may capture again (then opened like a source that came back).
fn run(mut source: Box<dyn Source>, timing: Timing, lane: &Lane) {
    let name = source.name();
    let kind = source.kind();
    let mut supervisor = Supervisor::new(timing.retry, timing.stall);
    while !lane.stopped() {
        lane.beat.touch();
        let demand = lane.shared.demand();
        if let Some(rest) = lane.rest(demand) {
            if !resting(&name, kind, rest, demand, lane) {
                break;
            }
            supervisor = Supervisor::new(timing.retry, timing.stall);
            continue;
        }
        let why = match source.open() {
            Err(e) => format!("is not available: {e}"),
            Ok(()) => {
                info!("device: {name}: opened");
                lane.switch.set_capturing(true);
                let device = Some(without_kind(&source.name()));
                lane.switch
                    .report(device, false, Some("Opened, waiting for media".into()));
                supervisor.opened(Instant::now());
                let interruption = deliver(&mut *source, timing, lane, &mut supervisor, demand);
                source.close();
                lane.switch.set_capturing(false);
                match interruption {
                    Interruption::Failed(reason) => format!("failed: {reason}"),
                    Interruption::Rest => continue,
                    Interruption::Stop => break,
                }
            }
        };
        warn!("device: {name} {why}");
        let info = format!("{} {why}", capitalized(&name));
        lane.switch.report(None, false, Some(info.clone()));
        lane.shared.report(kind, None, info, demand);
        let delay = supervisor.failed(Instant::now());
        info!("device: {name}: retrying in {} ms", delay.as_millis());
        pause(delay, lane, demand);
    }
    lane.switch.report(None, false, Some("Stopped".into()));
    info!("device: {name}: stopped");
}

/// A closed source waits while it is switched off or idle, reporting why (again
/// whenever the reason or the demand changes); `false` when the device stops.
fn resting(name: &str, kind: Kind, mut rest: Rest, mut demand: u64, lane: &Lane) -> bool {
    // Logged when the reason changes, not when only the demand does.
    let report = |rest: Rest, demand: u64, changed: bool| {
        let info = match rest {
            Rest::SwitchedOff => {
                if changed {
                    info!("device: {name}: switched off");
                }
                format!("{} switched off", capitalized(kind_word(kind)))
            }
            Rest::Idle => {
                if changed {
                    debug!("device: {name}: idle");
                }
                IDLE.to_owned()
            }
        };
        lane.switch.report(None, false, Some(info.clone()));
        lane.shared.report(kind, None, info, demand);
    };
    report(rest, demand, true);
    loop {
        if lane.stopped() {
            return false;
        }
        lane.beat.touch();
        let now = lane.shared.demand();
        match lane.rest(now) {
            None => break,
            Some(r) if r != rest || now != demand => {
                let changed = r != rest;
                (rest, demand) = (r, now);
                report(rest, demand, changed);
            }
            Some(_) => std::thread::sleep(REST_POLL),
        }
    }
    match rest {
        Rest::SwitchedOff => {
            info!("device: {name}: switched on");
            lane.switch
                .report(None, false, Some("Switched on, opening".into()));
        }
        Rest::Idle => {
            debug!("device: {name}: needed, opening");
            lane.switch.report(None, false, Some("Opening".into()));
        }
    }
    true
}

/// How often a closed source looks whether it may capture again.
const REST_POLL: Duration = Duration::from_millis(50);

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Video => "camera",
        Kind::Audio => "microphone",
    }
}

/// Polls an open source into the SFU until it fails or stalls, is switched off or
/// idle, or `stop`. The codec is announced with the first media that has one, and
/// again under a new demand (the resumption waits for every source's word).
fn deliver(
    source: &mut dyn Source,
    timing: Timing,
    lane: &Lane,
    supervisor: &mut Supervisor,
    mut demand: u64,
) -> Interruption {
    let (name, kind) = (source.name(), source.kind());
    let shared = lane.shared;
    let mut out: Vec<RtpPacket> = Vec::new();
    let mut announced: Option<Codec> = None;
    let mut dropped = 0u64;
    let interruption = loop {
        lane.beat.touch();
        if lane.stopped() {
            break Interruption::Stop;
        }
        if !lane.switch.is_on() {
            break Interruption::Rest;
        }
        let now = shared.demand();
        if now != demand {
            if !needed(now) {
                break Interruption::Rest;
            }
            // Idle and needed again before this thread noticed: it goes on, and says
            // so under the new demand.
            demand = now;
            if let Some(codec) = &announced {
                shared.report(kind, Some(codec.clone()), String::new(), demand);
            }
        }
        if kind == Kind::Video && shared.feed.take_key_frame_request() {
            source.key_frame();
        }
        out.clear();
        match source.poll(POLL, &mut out) {
            Ok(true) => {
                supervisor.delivered(Instant::now());
                if announced.is_none() {
                    let Some(codec) = source.codec() else {
                        continue;
                    };
                    info!("device: {name}: delivering {}", codec.family.name());
                    let device = Some(without_kind(&source.name()));
                    lane.switch.report(device, true, None);
                    shared.report(kind, Some(codec.clone()), String::new(), demand);
                    announced = Some(codec);
                }
                let frames = match kind {
                    // An access unit ends with the marker bit.
                    Kind::Video => out.iter().filter(|p| p.header.marker).count(),
                    Kind::Audio => out.len(),
                };
                lane.switch.count_frames(frames as u64);
                for packet in out.drain(..) {
                    if !shared.feed.packet(kind, packet) && !shared.feed.is_closed() {
                        dropped += 1;
                        if kind == Kind::Video {
                            shared.feed.want_key_frame();
                        }
                    }
                }
            }
            Ok(false) if supervisor.stalled(Instant::now()) => {
                break Interruption::Failed(format!(
                    "nothing captured for {} ms",
                    timing.stall.as_millis()
                ));
            }
            Ok(false) => {}
            Err(e) => break Interruption::Failed(e),
        }
    };
    if dropped > 0 {
        warn!("device: {name}: {dropped} packets dropped (media engine busy)");
    }
    interruption
}

/// Sleeps `delay`, waking early on `stop`, when switched off or when the demand
/// changes.
fn pause(delay: Duration, lane: &Lane, demand: u64) {
    let until = Instant::now() + delay;
    while !lane.interrupted(demand) {
        lane.beat.touch();
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}
