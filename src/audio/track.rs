//! One remote audio stream on the speaker path: a jitter buffer ordered by RTP
//! sequence number, the Opus or G.711 decoder into a small 48 kHz FIFO, loss
//! concealment, and the control of the clock drift between the sender and the sound
//! card (10 ms dropped when the buffer stays too deep, 10 ms concealed when it stays
//! too shallow).
//!
//! Sans-I/O: `push` when a packet arrives, `pull` once per 10 ms period of the sound
//! card. The pulls are the clock: depth and drift are measured in samples played.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use audiopus::coder::Decoder;
use audiopus::{Channels, SampleRate};

use super::g711::{self, Upsampler, FACTOR};
use super::{rms, Period, PERIOD, RATE};
use crate::media::Family;

/// The longest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5_760;
/// At most 1 s of audio held in packets; beyond, the buffer resets.
const MAX_HELD: usize = RATE as usize;
/// At most this many packets held (1 s of 10 ms frames); beyond, the buffer resets.
const MAX_PACKETS: usize = 100;
/// A payload longer than this is not a packet of a voice stream: dropped (and then
/// concealed as lost).
const MAX_PAYLOAD: usize = 8_000;
/// A sequence number further than this from the highest seen (either way) is not
/// this stream's any more: after a second such packet that follows it, the stream
/// restarts there (a new SSRC, a restarted sender).
const WINDOW: i64 = MAX_PACKETS as i64;
/// The largest target accepted by [`Track::new`].
pub const MAX_TARGET: Duration = Duration::from_millis(500);
/// Consecutive lost packets concealed; a longer gap is skipped (no delay added).
const MAX_CONCEAL_RUN: u32 = 5;
/// The fade-in after (re)buffering, in samples (5 ms).
const FADE_IN: usize = 240;
/// The smoothing of the depth: an exponential average over ~1 s of periods.
const SMOOTHING: f32 = 0.01;
/// How far (in samples, 30 ms) the smoothed depth may rise above the target before
/// 10 ms is dropped (a fast sender).
const DRIFT_MARGIN: usize = 1_440;
/// How far (in samples, 20 ms) below the buffer's natural mean the smoothed depth
/// may fall before 10 ms is concealed (a slow sender); never below 20 ms of depth.
const LOW_MARGIN: usize = 960;
/// Periods between two drift corrections (so up to 4 % of drift is followed).
const DRIFT_COOLDOWN: u32 = 25;
/// Periods a pending drop waits for a quiet spot before it crossfades anyway.
const QUIET_WAIT: u32 = 50;
/// Below this RMS a period is a quiet spot (about -50 dBFS).
const QUIET_RMS: f32 = 0.003;
/// Periods of the level meter's window (100 ms).
const LEVEL_PERIODS: usize = 10;

/// Counters of one track; `depth_ms` is the buffered audio (decoded and in packets),
/// smoothed over ~1 s while playing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets that came after their turn to play (dropped).
    pub late: u64,
    /// Packets that never came in time (concealed or skipped).
    pub lost: u64,
    /// Periods or frames made up: PLC, FEC, repetition, undecodable payloads, and
    /// 10 ms stretches for a slow sender.
    pub concealed: u64,
    /// Times the buffer ran empty while playing (then it re-buffers to the target).
    pub underruns: u64,
    /// 10 ms drops because the buffer stayed too deep (a fast sender).
    pub dropped_for_drift: u64,
    /// Times the buffer was thrown away: over 1 s held, or the stream jumped.
    pub reset: u64,
    pub depth_ms: u32,
}

enum Codec {
    Opus(Box<Decoder>),
    G711 { alaw: bool, up: Box<Upsampler> },
}

struct Held {
    /// RTP timestamp, extended, in 48 kHz samples.
    ts: i64,
    payload: Vec<u8>,
    /// Its audio in 48 kHz samples (a guess for an undecodable payload).
    samples: usize,
    garbage: bool,
}

/// One remote stream: jitter buffer + decoder + drift control.
pub struct Track {
    codec: Codec,
    /// RTP clock ticks to 48 kHz samples.
    scale: i64,
    target: usize,
    held: BTreeMap<i64, Held>,
    held_samples: usize,
    /// The highest extended sequence number seen, its extended and raw timestamps.
    highest: Option<(i64, i64, u32)>,
    /// A packet out of the window, kept in case the stream restarted there.
    candidate: Option<(u16, u32, Vec<u8>)>,
    /// The next sequence number to decode and its expected timestamp (48 kHz).
    next_seq: Option<i64>,
    next_ts: i64,
    fifo: VecDeque<f32>,
    playing: bool,
    last_arrival: Option<Instant>,
    /// The duration of the last frame decoded (the guess for lost ones).
    last_frame: usize,
    /// The last 10 ms decoded (G.711's concealment repeats it).
    last_decoded: Period,
    conceal_run: u32,
    fade_in: usize,
    smoothed: f32,
    cooldown: u32,
    drop_wait: u32,
    levels: [f32; LEVEL_PERIODS],
    level_pos: usize,
    stats: TrackStats,
    scratch: Vec<f32>,
}

impl Track {
    /// `family`: Opus (`clock_rate` 48000), PCMU or PCMA (`clock_rate` 8000); others
    /// are an error. `target`: the jitter buffer's target (e.g. 60 ms), at most
    /// [`MAX_TARGET`].
    pub fn new(family: Family, clock_rate: u32, target: Duration) -> Result<Track, String> {
        let (codec, scale) = match (family, clock_rate) {
            (Family::Opus, 48_000) => {
                let decoder = Decoder::new(SampleRate::Hz48000, Channels::Mono)
                    .map_err(|e| format!("Opus decoder: {e}"))?;
                (Codec::Opus(Box::new(decoder)), 1)
            }
            (Family::Pcmu | Family::Pcma, 8_000) => (
                Codec::G711 {
                    alaw: family == Family::Pcma,
                    up: Box::new(Upsampler::new()),
                },
                FACTOR as i64,
            ),
            (Family::Opus | Family::Pcmu | Family::Pcma, rate) => {
                return Err(format!(
                    "{family:?} at a clock rate of {rate} Hz is not supported"
                ))
            }
            (other, _) => return Err(format!("{other:?} is not an audio codec the speaker plays")),
        };
        if target > MAX_TARGET {
            return Err(format!(
                "jitter buffer target {target:?} is over {MAX_TARGET:?}"
            ));
        }
        let target = (target.as_secs_f64() * f64::from(RATE)).round() as usize;
        Ok(Track {
            codec,
            scale,
            target,
            held: BTreeMap::new(),
            held_samples: 0,
            highest: None,
            candidate: None,
            next_seq: None,
            next_ts: 0,
            fifo: VecDeque::with_capacity(3 * PERIOD + MAX_FRAME),
            playing: false,
            last_arrival: None,
            last_frame: 960,
            last_decoded: [0.0; PERIOD],
            conceal_run: 0,
            fade_in: 0,
            smoothed: 0.0,
            cooldown: 0,
            drop_wait: 0,
            levels: [0.0; LEVEL_PERIODS],
            level_pos: 0,
            stats: TrackStats::default(),
            scratch: vec![0.0; MAX_FRAME],
        })
    }

    /// One RTP packet of the stream arrived at `now` (payload = the codec frame).
    pub fn push(&mut self, now: Instant, sequence: u16, timestamp: u32, payload: &[u8]) {
        self.stats.received += 1;
        self.last_arrival = Some(now);
        if payload.len() > MAX_PAYLOAD {
            return;
        }
        if let Some((high, _, _)) = self.highest {
            let seq = extend_seq(high, sequence);
            if (seq - high).abs() > WINDOW {
                match self.candidate.take() {
                    Some((cs, cts, cpayload)) if (1..=3).contains(&sequence.wrapping_sub(cs)) => {
                        self.restart();
                        self.stats.reset += 1;
                        self.insert(cs, cts, &cpayload);
                    }
                    _ => {
                        self.candidate = Some((sequence, timestamp, payload.to_vec()));
                        return;
                    }
                }
            }
        }
        self.insert(sequence, timestamp, payload);
    }

    fn insert(&mut self, sequence: u16, timestamp: u32, payload: &[u8]) {
        let (seq, ts) = match self.highest {
            None => (i64::from(sequence), i64::from(timestamp)),
            Some((high, high_ts, high_raw)) => (
                extend_seq(high, sequence),
                high_ts.saturating_add(i64::from(timestamp.wrapping_sub(high_raw) as i32)),
            ),
        };
        if self.next_seq.is_some_and(|next| seq < next) {
            self.stats.late += 1;
            return;
        }
        if self.held.contains_key(&seq) {
            return;
        }
        if self.highest.is_none_or(|(high, _, _)| seq > high) {
            self.highest = Some((seq, ts, timestamp));
        }
        let samples = match &self.codec {
            Codec::Opus(_) => audiopus::packet::nb_samples(payload, SampleRate::Hz48000)
                .ok()
                .filter(|&n| n > 0 && n <= MAX_FRAME),
            Codec::G711 { .. } => Some(payload.len() * FACTOR).filter(|&n| n > 0),
        };
        let held = Held {
            ts: ts.saturating_mul(self.scale),
            payload: payload.to_vec(),
            samples: samples.unwrap_or(self.last_frame),
            garbage: samples.is_none(),
        };
        if self.held.len() >= MAX_PACKETS || self.held_samples + held.samples > MAX_HELD {
            // Over a second behind: start again from this packet.
            self.stats.reset += 1;
            self.held.clear();
            self.held_samples = 0;
            self.fifo.clear();
            self.playing = false;
            self.next_seq = None;
        }
        self.held_samples += held.samples;
        self.held.insert(seq, held);
    }

    /// Forgets the stream (a new one starts with the next packet).
    fn restart(&mut self) {
        self.held.clear();
        self.held_samples = 0;
        self.highest = None;
        self.candidate = None;
        self.next_seq = None;
        if self.playing {
            // Whatever was decoded is still faded out by the underrun.
            self.fifo.truncate(PERIOD.min(self.fifo.len()));
        }
        match &mut self.codec {
            Codec::Opus(_) => {}
            Codec::G711 { up, .. } => up.reset(),
        }
    }

    /// The next 10 ms for the mix: silence while (re)buffering, concealment for a
    /// lost packet.
    pub fn pull(&mut self, now: Instant, out: &mut Period) {
        out.fill(0.0);
        if !self.playing && self.ready(now) {
            self.start();
        }
        if self.playing {
            self.play(out);
        }
        let power = rms(out);
        self.levels[self.level_pos] = power * power;
        self.level_pos = (self.level_pos + 1) % LEVEL_PERIODS;
    }

    /// Buffered audio, decoded and in packets, in samples.
    fn depth(&self) -> usize {
        self.fifo.len() + self.held_samples
    }

    fn ready(&self, now: Instant) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let target = Duration::from_secs_f64(self.target as f64 / f64::from(RATE));
        // The sender paused before the target was reached (a short utterance):
        // play what there is.
        let paused = self
            .last_arrival
            .is_some_and(|t| now.saturating_duration_since(t) >= target);
        self.depth() >= self.target || paused
    }

    fn start(&mut self) {
        let Some((&first, held)) = self.held.iter().next() else {
            return;
        };
        match self.next_seq {
            Some(next) if first > next => {
                // Never came while re-buffering.
                self.stats.lost += (first - next) as u64;
            }
            _ => {}
        }
        self.next_seq = Some(first);
        self.next_ts = held.ts;
        self.playing = true;
        self.fade_in = FADE_IN;
        self.conceal_run = 0;
        self.smoothed = self.depth() as f32;
        self.cooldown = DRIFT_COOLDOWN;
        self.drop_wait = 0;
    }

    fn play(&mut self, out: &mut Period) {
        let high = self.smoothed > (self.target + DRIFT_MARGIN) as f32;
        // The buffer's natural mean is about the target less half a frame (it fills a
        // frame at a time and drains a period at a time).
        let low_mark = self
            .target
            .saturating_sub(self.last_frame / 2 + LOW_MARGIN)
            .max(2 * PERIOD);
        let low = self.smoothed < low_mark as f32;
        if self.cooldown > 0 {
            self.cooldown -= 1;
        }
        if low && self.cooldown == 0 && !self.held.is_empty() {
            // A slow sender: make up 10 ms at the end of what is decoded.
            self.conceal(PERIOD, 1.0);
            self.stats.concealed += 1;
            self.smoothed += PERIOD as f32;
            self.cooldown = DRIFT_COOLDOWN;
        }
        let want_drop = high && self.cooldown == 0;
        let want = if want_drop { 2 * PERIOD } else { PERIOD };
        for _ in 0..16 {
            if self.fifo.len() >= want || !self.decode_next() {
                break;
            }
        }
        if self.fifo.len() < PERIOD {
            // Underrun: what is left, then a concealment fading to silence.
            let have = self.fifo.len();
            self.conceal(PERIOD - have, 1.0);
            for (i, o) in out.iter_mut().enumerate() {
                let x = self.fifo.pop_front().unwrap_or(0.0);
                *o = if i < have {
                    x
                } else {
                    x * (PERIOD - i) as f32 / (PERIOD - have) as f32
                };
            }
            self.fifo.clear();
            self.stats.underruns += 1;
            self.playing = false;
            self.apply_fade_in(out);
            self.stats.depth_ms = self.depth_ms(self.depth() as f32);
            return;
        }
        if want_drop && self.fifo.len() >= 2 * PERIOD {
            self.drop_wait += 1;
            let quiet = {
                let (a, b) = self.fifo.as_slices();
                let first: Vec<f32> = a.iter().chain(b).take(2 * PERIOD).copied().collect();
                rms(&first) < QUIET_RMS
            };
            if quiet || self.drop_wait >= QUIET_WAIT {
                // Drop 10 ms: the next two periods crossfaded into one.
                for (i, o) in out.iter_mut().enumerate() {
                    let w = (i as f32 + 0.5) / PERIOD as f32;
                    let a = self.fifo[i];
                    let b = self.fifo[PERIOD + i];
                    *o = a * (1.0 - w) + b * w;
                }
                self.fifo.drain(..2 * PERIOD);
                self.stats.dropped_for_drift += 1;
                self.smoothed -= PERIOD as f32;
                self.cooldown = DRIFT_COOLDOWN;
                self.drop_wait = 0;
                self.finish_period(out);
                return;
            }
        }
        for (o, x) in out.iter_mut().zip(self.fifo.drain(..PERIOD)) {
            *o = x;
        }
        self.finish_period(out);
    }

    fn finish_period(&mut self, out: &mut Period) {
        self.apply_fade_in(out);
        let depth = self.depth() as f32;
        self.smoothed += (depth - self.smoothed) * SMOOTHING;
        self.stats.depth_ms = self.depth_ms(self.smoothed);
    }

    fn depth_ms(&self, samples: f32) -> u32 {
        (samples.max(0.0) * 1000.0 / RATE as f32).round() as u32
    }

    fn apply_fade_in(&mut self, out: &mut Period) {
        for o in out.iter_mut() {
            if self.fade_in == 0 {
                break;
            }
            *o *= (FADE_IN - self.fade_in) as f32 / FADE_IN as f32;
            self.fade_in -= 1;
        }
    }

    /// Decodes the next packet (or conceals its absence) into the FIFO; false when
    /// there is nothing after the play position (an underrun).
    fn decode_next(&mut self) -> bool {
        let Some(next) = self.next_seq else {
            return false;
        };
        if let Some(packet) = self.held.remove(&next) {
            self.held_samples -= packet.samples;
            self.next_seq = Some(next + 1);
            self.next_ts = packet.ts.saturating_add(packet.samples as i64);
            self.conceal_run = 0;
            if packet.garbage || !self.decode(&packet.payload) {
                self.conceal(packet.samples, 1.0);
                self.stats.concealed += 1;
            }
            return true;
        }
        let Some((&successor, after)) = self.held.range(next..).next() else {
            return false;
        };
        let missing = successor - next;
        if self.conceal_run >= MAX_CONCEAL_RUN {
            // A long gap: play on from the successor, adding no delay.
            self.stats.lost += missing as u64;
            self.next_seq = Some(successor);
            self.next_ts = after.ts;
            return true;
        }
        self.stats.lost += 1;
        self.stats.concealed += 1;
        self.conceal_run += 1;
        let gap = after.ts.saturating_sub(self.next_ts);
        let samples = if missing == 1 && gap > 0 && gap <= MAX_FRAME as i64 {
            gap as usize
        } else {
            self.last_frame
        };
        let fec = missing == 1 && !after.garbage;
        let recovered = fec && self.decode_fec(successor, samples);
        if !recovered {
            let gain = 0.5f32.powi(self.conceal_run as i32 - 1);
            self.conceal(samples, gain);
        }
        self.next_seq = Some(next + 1);
        self.next_ts = self.next_ts.saturating_add(samples as i64);
        true
    }

    /// Decodes one payload into the FIFO; false if it is undecodable.
    fn decode(&mut self, payload: &[u8]) -> bool {
        match &mut self.codec {
            Codec::Opus(decoder) => {
                match decoder.decode_float(Some(payload), &mut self.scratch[..], false) {
                    Ok(n) if n > 0 && n <= MAX_FRAME => {
                        self.last_frame = n;
                        push_clamped(&mut self.fifo, &self.scratch[..n]);
                        true
                    }
                    _ => false,
                }
            }
            Codec::G711 { alaw, up } => {
                let expand = if *alaw {
                    g711::alaw_to_linear
                } else {
                    g711::ulaw_to_linear
                };
                let start = self.fifo.len();
                for &code in payload {
                    up.push(f32::from(expand(code)) / 32768.0, &mut self.fifo);
                }
                // The filter's ringing may overshoot full scale a little.
                for s in self.fifo.range_mut(start..) {
                    *s = clamp(*s);
                }
                self.last_frame = payload.len() * FACTOR;
                let n = self.fifo.len().min(PERIOD);
                let start = self.fifo.len() - n;
                for (d, &s) in self.last_decoded[PERIOD - n..]
                    .iter_mut()
                    .zip(self.fifo.range(start..))
                {
                    *d = s;
                }
                true
            }
        }
    }

    /// Opus in-band FEC: the lost frame (`samples` long) from the successor's payload.
    fn decode_fec(&mut self, successor: i64, samples: usize) -> bool {
        let Codec::Opus(decoder) = &mut self.codec else {
            return false;
        };
        let Some(after) = self.held.get(&successor) else {
            return false;
        };
        let samples = frame_size(samples);
        match decoder.decode_float(Some(&after.payload[..]), &mut self.scratch[..samples], true) {
            Ok(n) if n > 0 && n <= samples => {
                push_clamped(&mut self.fifo, &self.scratch[..n]);
                true
            }
            _ => false,
        }
    }

    /// Appends `samples` of concealment: Opus PLC, or G.711's last 10 ms repeated;
    /// scaled by `gain`.
    fn conceal(&mut self, samples: usize, gain: f32) {
        match &mut self.codec {
            Codec::Opus(decoder) => {
                let mut left = samples;
                for _ in 0..(MAX_FRAME / 120 + 1) {
                    if left == 0 {
                        break;
                    }
                    let n = frame_size(left);
                    let got =
                        match decoder.decode_float(None::<&[u8]>, &mut self.scratch[..n], false) {
                            Ok(got) if got <= n => got,
                            _ => 0,
                        };
                    for s in &mut self.scratch[got..n] {
                        *s = 0.0;
                    }
                    let take = n.min(left);
                    for &s in &self.scratch[..take] {
                        self.fifo.push_back(clamp(s * gain));
                    }
                    left -= take;
                }
            }
            Codec::G711 { .. } => {
                for i in 0..samples {
                    self.fifo.push_back(self.last_decoded[i % PERIOD] * gain);
                }
            }
        }
    }

    /// Loudness of what was pulled over the last ~100 ms:
    /// `crate::device::levels::loudness(rms)`.
    pub fn level(&self) -> f32 {
        let mean = self.levels.iter().sum::<f32>() / LEVEL_PERIODS as f32;
        crate::device::levels::loudness(mean.sqrt())
    }

    pub fn stats(&self) -> TrackStats {
        self.stats
    }
}

/// A 16-bit sequence number extended next to the highest extended one.
fn extend_seq(high: i64, sequence: u16) -> i64 {
    high + i64::from(sequence.wrapping_sub(high as u16) as i16)
}

/// An Opus decode size covering `samples`: a multiple of 2.5 ms, at most 120 ms.
fn frame_size(samples: usize) -> usize {
    samples.div_ceil(120).clamp(1, MAX_FRAME / 120) * 120
}

fn clamp(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

fn push_clamped(fifo: &mut VecDeque<f32>, samples: &[f32]) {
    fifo.extend(samples.iter().map(|&s| clamp(s)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_extend_across_the_wrap_both_ways() {
        assert_eq!(extend_seq(65_535, 0), 65_536);
        assert_eq!(extend_seq(65_536, 65_535), 65_535);
        assert_eq!(extend_seq(10, 65_530), -6);
        let high = 5 * 65_536 + 100;
        assert_eq!(extend_seq(high, 105), high + 5);
        assert_eq!(extend_seq(high, 95), high - 5);
    }

    #[test]
    fn opus_decode_sizes_are_whole_2_5_ms_up_to_120_ms() {
        assert_eq!(frame_size(0), 120);
        assert_eq!(frame_size(1), 120);
        assert_eq!(frame_size(480), 480);
        assert_eq!(frame_size(481), 600);
        assert_eq!(frame_size(1_000_000), MAX_FRAME);
    }

    #[test]
    fn an_empty_or_undecodable_packet_is_concealed_and_counted() {
        let mut track = Track::new(Family::Opus, 48_000, Duration::ZERO).expect("track");
        let now = Instant::now();
        track.push(now, 1, 0, &[]);
        track.push(now, 2, 960, &[0xFF; 3]);
        let mut out = [1.0f32; PERIOD];
        for _ in 0..6 {
            track.pull(now, &mut out);
            assert!(out.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
        }
        let st = track.stats();
        assert_eq!(st.concealed, 2, "{st:?}");
        assert_eq!(st.received, 2, "{st:?}");
    }
}
