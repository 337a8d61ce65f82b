//! The device's speaker: every other participant's audio in the device's rooms,
//! decoded, jitter-buffered, mixed, limited and played on an ALSA playback device
//! in 10 ms periods (`crate::audio` is the pure part; this is its thread).
//!
//! The server's speaker wiring (`server::speaker`) attaches to the streams to hear
//! and sends their RTP here through a bounded queue (`SpeakerHandle`), which never
//! waits: a full queue drops, the jitter buffer conceals. The thread:
//! - paces itself: one period every 10 ms by the monotonic clock, a few periods
//!   ahead, so an output that never blocks (alsa-lib's `null`/`file` plugins) is
//!   still played in real time; on a real card the card's own delay corrects the
//!   schedule (drift between the card's crystal and the system clock);
//! - hands every period it plays to the echo canceller (`echo::EchoCanceller`) as the
//!   far end;
//! - writes each stream's loudness into `levels::Levels` (the room display);
//! - recovers underruns in place, and a vanished card (USB speakerphone unplugged)
//!   by closing, waiting (backoff) and reopening, like the camera;
//! - closes the card when nothing has been heard for a few seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};

use super::echo::EchoCanceller;
use super::levels::Levels;
use super::microphone::{open_pcm, recovery_for, Recovery};
use super::supervisor::Supervisor;
use super::{Beat, Trouble};
use crate::audio::{Mixer, Period, Track, PERIOD};
use crate::config;
use crate::media::Family;

/// Inputs queued toward the speaker thread: about 2 s of 6 streams' 20 ms packets.
const QUEUE: usize = 600;
/// Periods written ahead of the schedule: the card's buffer (and the latency it adds).
const AHEAD: u32 = 3;
/// The card is closed after this long with nothing to play.
const IDLE_CLOSE: Duration = Duration::from_secs(3);
/// How often the levels are published: every 10 periods (100 ms).
const LEVEL_EVERY: u64 = 10;
/// Behind the schedule by more than this (a stalled thread, a card that blocked):
/// start the schedule again from now instead of rushing to catch up.
const REANCHOR: Duration = Duration::from_millis(200);
const PERIOD_TIME: Duration = Duration::from_millis(10);

/// What the speaker thread is told.
pub enum Input {
    /// A stream to hear from now on (`id` names it in later inputs).
    Start {
        id: u64,
        stream: String,
        family: Family,
        clock_rate: u32,
    },
    Packet {
        id: u64,
        sequence: u16,
        timestamp: u32,
        payload: Bytes,
    },
    /// The stream ended (or is no longer heard).
    End { id: u64 },
}

/// Counts of the speaker thread, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct SpeakerStats {
    /// Periods written to the output.
    pub periods: AtomicU64,
    /// Underruns of the card, recovered in place.
    pub underruns: AtomicU64,
    /// Times the output was (re)opened.
    pub opens: AtomicU64,
    /// Inputs dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Streams being heard now.
    pub streams: AtomicU64,
}

/// Where the mix goes: opened, written one period at a time, closed.
pub trait Output: Send {
    fn name(&self) -> String;
    fn open(&mut self) -> Result<(), String>;
    /// Writes one period (may block while the card's buffer is full).
    fn write(&mut self, period: &[i16; PERIOD]) -> Result<(), WriteError>;
    /// Frames queued in the card and not played yet, when it says (`None`: unknown).
    fn delay(&self) -> Option<i64>;
    fn close(&mut self);
}

#[derive(Debug)]
pub enum WriteError {
    /// An underrun, recovered in place: go on.
    Recovered,
    /// The device is gone or broken: close, wait, reopen.
    Failed(String),
}

/// A handle to send the speaker thread its inputs; cheap to clone.
#[derive(Clone)]
pub struct SpeakerHandle {
    tx: SyncSender<Input>,
    next: Arc<AtomicU64>,
    stats: Arc<SpeakerStats>,
}

impl SpeakerHandle {
    /// A new id for a stream to hear.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an input, never waiting; `false` when the thread is gone.
    pub fn send(&self, input: Input) -> bool {
        match self.tx.try_send(input) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    pub fn stats(&self) -> &SpeakerStats {
        &self.stats
    }
}

/// The running speaker thread.
pub struct Speaker {
    handle: SpeakerHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    beat: Arc<Beat>,
    name: String,
}

/// The ALSA PCM the configuration names (`None`: no speaker). "auto" is the default
/// PCM when the machine has a sound card.
pub fn pcm_name(cfg: &config::Device) -> Option<String> {
    match cfg.speaker.trim() {
        "none" => None,
        "auto" if alsa::card::Iter::new().next().is_none() => None,
        "auto" => Some("default".into()),
        pcm => Some(pcm.to_owned()),
    }
}

impl Speaker {
    /// The configured speaker (`None` for "none", or "auto" without a sound card).
    pub fn start(
        cfg: &config::Device,
        levels: Levels,
        echo: Option<Arc<EchoCanceller>>,
    ) -> Option<Speaker> {
        let Some(pcm) = pcm_name(cfg) else {
            info!("device: no speaker (speaker = \"{}\")", cfg.speaker);
            return None;
        };
        let timing = super::Timing {
            retry: Duration::from_millis(cfg.retry_ms),
            stall: Duration::from_millis(cfg.stall_timeout_ms),
        };
        let target = Duration::from_millis(cfg.speaker_latency_ms);
        Speaker::start_with(Box::new(AlsaOutput::new(pcm)), target, timing, levels, echo)
    }

    /// Runs the speaker thread on `output`.
    pub fn start_with(
        output: Box<dyn Output>,
        target: Duration,
        timing: super::Timing,
        levels: Levels,
        echo: Option<Arc<EchoCanceller>>,
    ) -> Option<Speaker> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(SpeakerStats::default());
        let handle = SpeakerHandle {
            tx,
            next: Arc::new(AtomicU64::new(1)),
            stats: stats.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let beat = Arc::new(Beat::new());
        let name = output.name();
        info!("device: starting {name}");
        let thread = {
            let (stop, beat) = (stop.clone(), beat.clone());
            let mut player = Player {
                output,
                open: false,
                tracks: HashMap::new(),
                mixer: Mixer::new(),
                levels,
                echo,
                stats,
                target,
                supervisor: Supervisor::new(timing.retry, timing.stall),
                retry_at: None,
                anchor: Instant::now(),
                written: 0,
                card_paces: false,
                last_heard: Instant::now(),
            };
            std::thread::Builder::new()
                .name("huddle-speaker".into())
                .spawn(move || player.run(rx, &stop, &beat))
        };
        match thread {
            Ok(t) => Some(Speaker {
                handle,
                stop,
                thread: Some(t),
                beat,
                name,
            }),
            Err(e) => {
                warn!("device: cannot start the speaker thread: {e}");
                None
            }
        }
    }

    pub fn handle(&self) -> SpeakerHandle {
        self.handle.clone()
    }

    /// Whether the thread runs (for the service watchdog).
    pub fn check(&self) -> Result<(), Trouble> {
        if let Some(t) = &self.thread {
            if t.is_finished() && !self.stop.load(Ordering::Relaxed) {
                return Err(Trouble::Dead(format!("the {} thread ended", self.name)));
            }
        }
        let silent = self.beat.silent_for();
        if silent > Duration::from_secs(30) {
            return Err(Trouble::Hung(format!(
                "the {} thread is stuck ({} s without coming round)",
                self.name,
                silent.as_secs()
            )));
        }
        Ok(())
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One stream being heard.
struct Heard {
    stream: String,
    track: Track,
    period: Box<Period>,
}

/// The speaker thread's state.
struct Player {
    output: Box<dyn Output>,
    open: bool,
    tracks: HashMap<u64, Heard>,
    mixer: Mixer,
    levels: Levels,
    echo: Option<Arc<EchoCanceller>>,
    stats: Arc<SpeakerStats>,
    target: Duration,
    supervisor: Supervisor,
    /// After a failure: when to open again.
    retry_at: Option<Instant>,
    /// The schedule: period `written` is due at `anchor + written × 10 ms`.
    anchor: Instant,
    written: u64,
    /// The card reported queued audio at least once: it keeps time itself, and its
    /// delay corrects the schedule.
    card_paces: bool,
    /// When a stream was last being heard.
    last_heard: Instant,
}

impl Player {
    fn run(&mut self, rx: Receiver<Input>, stop: &AtomicBool, beat: &Beat) {
        let mut out = [0i16; PERIOD];
        while !stop.load(Ordering::Relaxed) {
            beat.touch();
            let now = Instant::now();
            if !self.tracks.is_empty() {
                self.last_heard = now;
            }
            // Nothing to play for a while: let the card go.
            if self.tracks.is_empty() && self.open && now - self.last_heard > IDLE_CLOSE {
                info!("device: {}: nothing to play, closed", self.output.name());
                self.close();
            }
            // Open while there is something to hear; once the last stream ended,
            // silence goes on until the card is let go (no click, no underrun, and
            // the echo canceller keeps its far end).
            let wait = if self.open {
                self.due_in(now)
            } else if self.tracks.is_empty() {
                Duration::from_millis(100)
            } else {
                self.try_open(now);
                match self.open {
                    true => Duration::ZERO,
                    false => Duration::from_millis(50),
                }
            };
            if !wait.is_zero() {
                match rx.recv_timeout(wait) {
                    Ok(input) => self.input(input),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                continue;
            }
            while let Ok(input) = rx.try_recv() {
                self.input(input);
            }
            if self.open {
                self.play_period(now, &mut out);
            }
        }
        self.close();
        for heard in self.tracks.values() {
            self.levels.remove(&heard.stream);
        }
        info!("device: {}: stopped", self.output.name());
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Start {
                id,
                stream,
                family,
                clock_rate,
            } => match Track::new(family, clock_rate, self.target) {
                Ok(track) => {
                    info!(
                        "device: speaker: hearing stream {}",
                        crate::logging::escaped(&stream)
                    );
                    self.tracks.insert(
                        id,
                        Heard {
                            stream,
                            track,
                            period: Box::new([0.0; PERIOD]),
                        },
                    );
                    self.stats
                        .streams
                        .store(self.tracks.len() as u64, Ordering::Relaxed);
                }
                Err(e) => warn!(
                    "device: speaker: cannot play stream {}: {e}",
                    crate::logging::escaped(&stream)
                ),
            },
            Input::Packet {
                id,
                sequence,
                timestamp,
                payload,
            } => {
                if let Some(h) = self.tracks.get_mut(&id) {
                    h.track.push(Instant::now(), sequence, timestamp, &payload);
                }
            }
            Input::End { id } => {
                if let Some(h) = self.tracks.remove(&id) {
                    info!(
                        "device: speaker: stream {} ended ({:?})",
                        crate::logging::escaped(&h.stream),
                        h.track.stats()
                    );
                    self.levels.remove(&h.stream);
                }
                self.stats
                    .streams
                    .store(self.tracks.len() as u64, Ordering::Relaxed);
            }
        }
    }

    /// How long until the next period is due (zero: now).
    fn due_in(&mut self, now: Instant) -> Duration {
        let ahead = self.written.saturating_sub(u64::from(AHEAD));
        let due = self.anchor + Duration::from_millis(10 * ahead);
        if due > now {
            return due - now;
        }
        if now - due > REANCHOR {
            // Far behind (the thread or the card stalled): start the schedule again.
            debug!(
                "device: speaker: {} ms behind, rescheduled",
                (now - due).as_millis()
            );
            self.restart_schedule(now);
        }
        Duration::ZERO
    }

    fn restart_schedule(&mut self, now: Instant) {
        self.anchor = now;
        self.written = 0;
    }

    fn play_period(&mut self, now: Instant, out: &mut [i16; PERIOD]) {
        let mut inputs: Vec<&Period> = Vec::with_capacity(self.tracks.len());
        for h in self.tracks.values_mut() {
            h.track.pull(now, &mut h.period);
        }
        inputs.extend(self.tracks.values().map(|h| &*h.period));
        self.mixer.mix(&inputs, out);
        match self.output.write(out) {
            Ok(()) => {}
            Err(WriteError::Recovered) => {
                self.stats.underruns.fetch_add(1, Ordering::Relaxed);
            }
            Err(WriteError::Failed(e)) => {
                self.fail(now, e);
                return;
            }
        }
        if let Some(echo) = &self.echo {
            echo.far(out);
        }
        self.written += 1;
        let periods = self.stats.periods.fetch_add(1, Ordering::Relaxed) + 1;
        self.supervisor.delivered(now);
        self.correct_drift();
        if periods.is_multiple_of(LEVEL_EVERY) {
            for h in self.tracks.values() {
                self.levels.set(&h.stream, h.track.level());
            }
        }
    }

    /// A card that keeps time itself says how much it holds: the schedule follows it
    /// (one period at a time), so the delay neither grows nor runs dry over hours.
    fn correct_drift(&mut self) {
        let Some(delay) = self.output.delay() else {
            return;
        };
        if delay > 0 {
            self.card_paces = true;
        }
        if !self.card_paces || !self.written.is_multiple_of(50) {
            return;
        }
        let period = PERIOD as i64;
        let want = i64::from(AHEAD) * period;
        if delay > want + 2 * period {
            self.anchor += PERIOD_TIME;
        } else if delay < want - 2 * period {
            self.anchor = self.anchor.checked_sub(PERIOD_TIME).unwrap_or(self.anchor);
        }
    }

    fn try_open(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        match self.output.open() {
            Ok(()) => {
                info!("device: {}: opened", self.output.name());
                self.open = true;
                self.retry_at = None;
                self.card_paces = false;
                self.stats.opens.fetch_add(1, Ordering::Relaxed);
                self.supervisor.opened(now);
                self.restart_schedule(now);
            }
            Err(e) => self.fail(now, format!("is not available: {e}")),
        }
    }

    fn fail(&mut self, now: Instant, why: String) {
        self.close();
        let delay = self.supervisor.failed(now);
        warn!(
            "device: {} {why}; retrying in {} ms",
            self.output.name(),
            delay.as_millis()
        );
        self.retry_at = Some(now + delay);
    }

    fn close(&mut self) {
        if self.open {
            self.output.close();
            self.open = false;
        }
    }
}

// ----- ALSA ---------------------------------------------------------------------

/// An ALSA playback PCM (`default`, `plughw:1,0`, a plugin such as `file`).
pub struct AlsaOutput {
    pcm_name: String,
    pcm: Option<alsa::pcm::PCM>,
    channels: usize,
    /// One period interleaved for the card's channel count.
    raw: Vec<i16>,
}

impl AlsaOutput {
    pub fn new(pcm_name: String) -> AlsaOutput {
        AlsaOutput {
            pcm_name,
            pcm: None,
            channels: 1,
            raw: Vec::new(),
        }
    }
}

impl Output for AlsaOutput {
    fn name(&self) -> String {
        format!("speaker {}", self.pcm_name)
    }

    fn open(&mut self) -> Result<(), String> {
        self.close();
        let (pcm, channels) = open_pcm(
            &self.pcm_name,
            alsa::Direction::Playback,
            PERIOD,
            8 * PERIOD,
        )?;
        self.channels = channels;
        {
            // Start playing once two periods are queued: a short start, no early underrun.
            let sw = pcm
                .sw_params_current()
                .map_err(|e| format!("sw params: {e}"))?;
            sw.set_start_threshold(2 * PERIOD as alsa::pcm::Frames)
                .map_err(|e| format!("start threshold: {e}"))?;
            pcm.sw_params(&sw).map_err(|e| format!("sw params: {e}"))?;
        }
        self.raw = vec![0; PERIOD * self.channels];
        self.pcm = Some(pcm);
        Ok(())
    }

    fn write(&mut self, period: &[i16; PERIOD]) -> Result<(), WriteError> {
        let Some(pcm) = &self.pcm else {
            return Err(WriteError::Failed("not open".into()));
        };
        let data: &[i16] = if self.channels == 1 {
            &period[..]
        } else {
            for (frame, &s) in self.raw.chunks_exact_mut(self.channels).zip(period) {
                frame.fill(s);
            }
            &self.raw
        };
        let io = pcm
            .io_i16()
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        let mut done = 0;
        let frames = PERIOD;
        // A bounded number of partial writes: a card that takes nothing is broken.
        for _ in 0..16 {
            if done >= frames {
                return Ok(());
            }
            match io.writei(&data[done * self.channels..]) {
                Ok(n) => done += n,
                Err(e) if recovery_for(e.errno()) == Recovery::Recover => {
                    pcm.try_recover(e, true)
                        .map_err(|e| WriteError::Failed(format!("recovering: {e}")))?;
                    return Err(WriteError::Recovered);
                }
                Err(e) => return Err(WriteError::Failed(e.to_string())),
            }
        }
        Err(WriteError::Failed("the card takes no audio".into()))
    }

    fn delay(&self) -> Option<i64> {
        self.pcm.as_ref().and_then(|p| p.delay().ok())
    }

    fn close(&mut self) {
        if let Some(pcm) = self.pcm.take() {
            let _ = pcm.drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the scripted card saw and does.
    #[derive(Default)]
    struct Card {
        writes: u64,
        opens: u64,
        open_attempts: u64,
        /// The write that fails as if the card was unplugged.
        fail_at: Option<u64>,
        /// Opens refused after that (the card is still away).
        refuse_opens: u64,
    }

    /// A card the test scripts (the real ALSA paths are in tests/speaker.rs).
    struct ScriptedCard(Arc<Mutex<Card>>);

    impl Output for ScriptedCard {
        fn name(&self) -> String {
            "speaker scripted".into()
        }
        fn open(&mut self) -> Result<(), String> {
            let mut c = self.0.lock().unwrap();
            c.open_attempts += 1;
            if c.refuse_opens > 0 {
                c.refuse_opens -= 1;
                return Err("No such device".into());
            }
            c.opens += 1;
            Ok(())
        }
        fn write(&mut self, _period: &[i16; PERIOD]) -> Result<(), WriteError> {
            let mut c = self.0.lock().unwrap();
            c.writes += 1;
            if c.fail_at == Some(c.writes) {
                c.fail_at = None;
                c.refuse_opens = 2;
                return Err(WriteError::Failed("No such device".into()));
            }
            Ok(())
        }
        fn delay(&self) -> Option<i64> {
            None
        }
        fn close(&mut self) {}
    }

    #[test]
    fn a_card_that_vanishes_is_reopened_after_the_backoff_and_plays_again() {
        let card = Arc::new(Mutex::new(Card {
            fail_at: Some(20),
            ..Card::default()
        }));
        let timing = super::super::Timing {
            retry: Duration::from_millis(20),
            stall: Duration::from_secs(5),
        };
        let speaker = Speaker::start_with(
            Box::new(ScriptedCard(card.clone())),
            Duration::from_millis(60),
            timing,
            Levels::default(),
            None,
        )
        .unwrap();
        let handle = speaker.handle();
        let id = handle.next_id();
        assert!(handle.send(Input::Start {
            id,
            stream: "r-alice".into(),
            family: Family::Opus,
            clock_rate: 48_000,
        }));
        // Paced in real time: 60 periods are 0.6 s; bounded wait.
        let deadline = Instant::now() + Duration::from_secs(10);
        while card.lock().unwrap().writes < 60 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let c = card.lock().unwrap();
        assert!(c.writes >= 60, "{} periods written", c.writes);
        // Opened, failed at write 20, refused twice (backoff), opened again.
        assert_eq!(c.opens, 2);
        assert_eq!(c.open_attempts, 4);
        drop(c);
        assert_eq!(handle.stats().opens.load(Ordering::Relaxed), 2);
        speaker.check().unwrap();
        speaker.stop();
    }
}
