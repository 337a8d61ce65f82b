//! The speaker path's audio core (`huddle::audio`) with simulated time: synthetic RTP
//! made by encoding real tones with the device's Opus encoder (or G.711), delivered
//! to a `Track` on a simulated network, pulled every 10 ms by a simulated sound card
//! whose clock may differ from the sender's, and mixed.

use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use huddle::audio::g711::{linear_to_alaw, linear_to_ulaw};
use huddle::audio::{goertzel, power_db, Mixer, Period, Track, TrackStats, PERIOD, RATE};
use huddle::media::Family;

const TARGET: Duration = Duration::from_millis(60);
const TARGET_MS: f64 = 60.0;

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone)]
struct Packet {
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

/// A sender of a sine tone: Opus (48 kHz RTP clock) or G.711 (8 kHz).
struct Sender {
    codec: Family,
    opus: Option<Encoder>,
    freq: f64,
    amp: f64,
    /// Samples per frame at the codec's rate.
    frame: usize,
    seq: u16,
    ts: u32,
    n: u64,
}

impl Sender {
    fn opus(freq: f64, amp: f64, frame_ms: usize, seq: u16, ts: u32) -> Sender {
        Sender {
            codec: Family::Opus,
            opus: Some(huddle::device::microphone::encoder().expect("encoder")),
            freq,
            amp,
            frame: 48 * frame_ms,
            seq,
            ts,
            n: 0,
        }
    }

    fn g711(codec: Family, freq: f64, amp: f64) -> Sender {
        Sender {
            codec,
            opus: None,
            freq,
            amp,
            frame: 160,
            seq: 1000,
            ts: 5000,
            n: 0,
        }
    }

    fn rate(&self) -> f64 {
        if self.codec == Family::Opus {
            48_000.0
        } else {
            8_000.0
        }
    }

    fn frame_us(&self) -> f64 {
        self.frame as f64 * 1e6 / self.rate()
    }

    fn next(&mut self) -> Packet {
        let rate = self.rate();
        let samples: Vec<f32> = (0..self.frame)
            .map(|i| {
                let t = (self.n + i as u64) as f64 / rate;
                (self.amp * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as f32
            })
            .collect();
        self.n += self.frame as u64;
        let payload = match self.codec {
            Family::Opus => {
                let mut buf = vec![0u8; 1500];
                let n = self
                    .opus
                    .as_ref()
                    .expect("an Opus sender")
                    .encode_float(&samples, &mut buf)
                    .expect("encode");
                buf.truncate(n);
                buf
            }
            Family::Pcmu => samples
                .iter()
                .map(|&s| linear_to_ulaw((s * 32767.0) as i16))
                .collect(),
            _ => samples
                .iter()
                .map(|&s| linear_to_alaw((s * 32767.0) as i16))
                .collect(),
        };
        let p = Packet {
            seq: self.seq,
            ts: self.ts,
            payload,
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.frame as u32);
        p
    }
}

/// The simulation: a sender producing a frame every `frame / speed`, a network that
/// may drop, delay or reorder packets, and a sound card pulling every 10 ms.
struct Sim {
    track: Track,
    base: Instant,
    /// Simulated microseconds.
    now_us: f64,
    next_pull_us: f64,
    next_send_us: f64,
    /// Packets on the wire: (arrival time, packet).
    wire: Vec<(f64, Packet)>,
    out: Vec<f32>,
    /// `stats` after each pull.
    history: Vec<TrackStats>,
}

impl Sim {
    fn new(track: Track) -> Sim {
        Sim {
            track,
            base: Instant::now(),
            now_us: 0.0,
            next_pull_us: 10_000.0,
            next_send_us: 0.0,
            wire: Vec::new(),
            out: Vec::new(),
            history: Vec::new(),
        }
    }

    fn at(&self, us: f64) -> Instant {
        self.base + Duration::from_micros(us as u64)
    }

    /// Runs for `seconds`; `sender` is asked for a packet every `frame / speed` (a
    /// frame's audio is sent when it is complete) and `net` decides each packet's
    /// delay in µs (None: lost).
    fn run(
        &mut self,
        seconds: f64,
        sender: Option<&mut Sender>,
        speed: f64,
        net: &mut dyn FnMut(&Packet) -> Option<f64>,
    ) {
        let end = self.now_us + seconds * 1e6;
        let mut sender = sender;
        if let Some(s) = sender.as_deref() {
            self.next_send_us = self.next_send_us.max(self.now_us) + s.frame_us() / speed;
        }
        // Bounded: one pull per 10 ms and one packet per frame.
        loop {
            let send = sender
                .as_ref()
                .map(|_| self.next_send_us)
                .unwrap_or(f64::MAX);
            let arrive = self.wire.iter().map(|(t, _)| *t).fold(f64::MAX, f64::min);
            let t = send.min(arrive).min(self.next_pull_us);
            if t >= end {
                self.now_us = end;
                break;
            }
            self.now_us = t;
            if t == arrive {
                let i = self
                    .wire
                    .iter()
                    .position(|(a, _)| *a == arrive)
                    .expect("the earliest packet");
                let (_, p) = self.wire.remove(i);
                let now = self.at(t);
                self.track.push(now, p.seq, p.ts, &p.payload);
            } else if t == send {
                let s = sender.as_deref_mut().expect("a sender");
                let p = s.next();
                self.next_send_us += s.frame_us() / speed;
                if let Some(delay) = net(&p) {
                    self.wire.push((t + delay, p));
                }
            } else {
                let mut period: Period = [0.0; PERIOD];
                let now = self.at(t);
                self.track.pull(now, &mut period);
                self.out.extend_from_slice(&period);
                self.history.push(self.track.stats());
                self.next_pull_us += 10_000.0;
            }
        }
    }

    /// The output between `from` and `to` seconds (of pulls).
    fn output(&self, from: f64, to: f64) -> &[f32] {
        let a = ((from * f64::from(RATE)) as usize).min(self.out.len());
        let b = ((to * f64::from(RATE)) as usize).min(self.out.len());
        &self.out[a..b]
    }

    /// The index of the first non-silent period at or after `from`.
    fn first_sound(&self, from: usize) -> Option<usize> {
        self.out
            .chunks(PERIOD)
            .enumerate()
            .skip(from)
            .find(|(_, p)| p.iter().any(|&s| s != 0.0))
            .map(|(i, _)| i)
    }
}

fn on_time(_: &Packet) -> Option<f64> {
    Some(1_000.0)
}

fn opus_track() -> Track {
    Track::new(Family::Opus, 48_000, TARGET).expect("an Opus track")
}

fn tone_db(samples: &[f32], freq: f32) -> f32 {
    power_db(goertzel(samples, freq, RATE))
}

/// -6 dBFS: a sine of amplitude 0.5 has power 0.25.
const TONE_DB: f32 = -6.0206;

#[test]
fn an_opus_tone_comes_out_at_its_frequency_and_level_after_the_target() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 100, 1234);
    sim.run(3.0, Some(&mut s), 1.0, &mut on_time);
    // The first packet arrives at 21 ms; 60 ms are buffered at 61 ms; the next pull
    // (70 ms, period 6) plays.
    let first = sim.first_sound(0).expect("sound");
    assert!(
        (5..=7).contains(&first),
        "first sound in period {first} (target {TARGET_MS} ms)"
    );
    let db = tone_db(sim.output(1.0, 3.0), 1000.0);
    assert!((db - TONE_DB).abs() < 1.0, "1 kHz at {db} dB");
    // Nothing else of note.
    let other = tone_db(sim.output(1.0, 3.0), 2500.0);
    assert!(other < TONE_DB - 40.0, "2.5 kHz at {other} dB");
    let st = sim.track.stats();
    assert_eq!(
        (st.lost, st.late, st.concealed, st.underruns),
        (0, 0, 0, 0),
        "{st:?}"
    );
    assert!((149..=150).contains(&st.received), "{st:?}");
    assert!((40..=80).contains(&st.depth_ms), "{st:?}");
    // -6 dBFS sine: RMS -9 dBFS, loudness (60 - 9) / 60.
    let level = sim.track.level();
    assert!((level - 0.85).abs() < 0.03, "level {level}");
}

#[test]
fn reordered_neighbours_are_put_back_in_place() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 65_500, u32::MAX - 48_000);
    // Every even packet is delayed past its odd successor (by 25 ms), across the
    // 16-bit sequence and 32-bit timestamp wraps.
    let mut net = |p: &Packet| {
        Some(if p.seq.is_multiple_of(2) {
            26_000.0
        } else {
            1_000.0
        })
    };
    sim.run(3.0, Some(&mut s), 1.0, &mut net);
    let st = sim.track.stats();
    assert_eq!(
        (st.lost, st.late, st.concealed, st.underruns),
        (0, 0, 0, 0),
        "{st:?}"
    );
    let db = tone_db(sim.output(0.5, 3.0), 1000.0);
    assert!((db - TONE_DB).abs() < 1.0, "1 kHz at {db} dB");
}

#[test]
fn duplicates_are_ignored_and_a_late_packet_is_dropped() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 7, 0);
    let mut k = 0;
    let mut net = |p: &Packet| {
        k += 1;
        // Packet 50 (sequence 57) comes 300 ms late: after its turn.
        Some(if p.seq == 57 { 300_000.0 } else { 1_000.0 })
    };
    sim.run(2.0, Some(&mut s), 1.0, &mut net);
    let before = sim.track.stats();
    assert_eq!(before.late, 1, "{before:?}");
    assert_eq!(before.lost, 1, "{before:?}");
    assert_eq!(before.concealed, 1, "{before:?}");
    assert_eq!(before.underruns, 0, "{before:?}");
    // The same packets again (an RTP retransmission storm): nothing changes but
    // `received`; those already played count as late.
    let mut replay = Sender::opus(1000.0, 0.5, 20, 7, 0);
    let now = sim.at(sim.now_us);
    for _ in 0..k {
        let p = replay.next();
        sim.track.push(now, p.seq, p.ts, &p.payload);
    }
    let after = sim.track.stats();
    assert_eq!(after.received, before.received + k as u64);
    assert_eq!(after.lost, before.lost);
    assert!(after.late > before.late);
    let db = tone_db(sim.output(0.5, 2.0), 1000.0);
    assert!((db - TONE_DB).abs() < 1.0, "1 kHz at {db} dB");
}

#[test]
fn five_percent_loss_is_concealed_and_the_tone_keeps_its_power() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 0, 0);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut dropped = 0u64;
    let mut net = |_: &Packet| {
        if rng.chance(0.05) {
            dropped += 1;
            None
        } else {
            Some(1_000.0)
        }
    };
    sim.run(10.0, Some(&mut s), 1.0, &mut net);
    let st = sim.track.stats();
    assert!(dropped >= 10, "only {dropped} dropped");
    // The last packet lost may not be due yet.
    assert!(
        st.lost + 1 >= dropped && st.lost <= dropped,
        "{st:?}, {dropped} dropped"
    );
    assert!(st.concealed >= st.lost, "{st:?}");
    assert_eq!(st.underruns, 0, "{st:?}");
    let db = tone_db(sim.output(0.5, 10.0), 1000.0);
    assert!((db - TONE_DB).abs() < 3.0, "1 kHz at {db} dB with loss");
}

/// A sender whose clock runs `speed` times the card's, for 10 simulated minutes.
fn drift(speed: f64) -> Sim {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 0, 0);
    let mut rng = Rng(42);
    // Some jitter (0-8 ms) so the depth is not a clean sawtooth.
    let mut net = |_: &Packet| Some(1_000.0 + (rng.next() % 8_000) as f64);
    sim.run(600.0, Some(&mut s), speed, &mut net);
    let settled = &sim.history[500..];
    let (lo, hi) = settled.iter().fold((u32::MAX, 0), |(lo, hi), s| {
        (lo.min(s.depth_ms), hi.max(s.depth_ms))
    });
    eprintln!(
        "speed {speed}: depth {lo}..{hi} ms, {:?}",
        sim.track.stats()
    );
    assert!(
        lo as f64 >= TARGET_MS - 40.0 && hi as f64 <= TARGET_MS + 40.0,
        "depth {lo}..{hi} ms"
    );
    // The tone survives the corrections.
    let db = tone_db(sim.output(590.0, 600.0), 1000.0);
    assert!(
        (db - TONE_DB).abs() < 1.5,
        "1 kHz at {db} dB after 10 minutes"
    );
    sim
}

#[test]
fn a_fast_sender_is_followed_by_dropping_not_by_delay() {
    let sim = drift(1.01);
    let st = sim.track.stats();
    // 1 % of 600 s is 6 s: about 600 drops of 10 ms.
    assert!((500..=700).contains(&st.dropped_for_drift), "{st:?}");
    assert_eq!((st.underruns, st.reset), (0, 0), "{st:?}");
}

#[test]
fn a_slow_sender_is_followed_by_concealing_not_by_underruns() {
    let sim = drift(0.99);
    let st = sim.track.stats();
    assert!((500..=700).contains(&st.concealed), "{st:?}");
    assert!(st.underruns <= 2, "{st:?}");
    assert_eq!(st.dropped_for_drift, 0, "{st:?}");
}

#[test]
fn a_stopped_sender_drains_to_silence_and_a_new_stream_plays_within_the_target() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 40_000, 77);
    sim.run(2.0, Some(&mut s), 1.0, &mut on_time);
    sim.run(1.0, None, 1.0, &mut on_time);
    let st = sim.track.stats();
    assert_eq!(st.underruns, 1, "{st:?}");
    // Drained: the buffered 60-80 ms, one period fading out, then digital silence.
    let silent_from = sim.first_silence(200).expect("silence after the stop");
    assert!(silent_from <= 200 + 10, "silent from period {silent_from}");
    assert!(sim.out[silent_from * PERIOD..].iter().all(|&x| x == 0.0));
    // The fade-out does not click: no sample step above the tone's own.
    let tail = &sim.out[(silent_from - 3) * PERIOD..silent_from * PERIOD];
    let step = tail
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max);
    assert!(
        step < 0.5 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0 * 1.2,
        "step {step}"
    );
    // A new stream: sequence and timestamp jump (a new SSRC).
    let restart_period = sim.out.len() / PERIOD;
    let mut s2 = Sender::opus(1000.0, 0.5, 20, 7_000, 3_000_000_000);
    sim.run(2.0, Some(&mut s2), 1.0, &mut on_time);
    let first = sim.first_sound(restart_period).expect("plays again");
    // The first frame is complete 20 ms after the restart; then the target and a period.
    let limit = restart_period + (20 + TARGET_MS as usize + 10) / 10;
    assert!(
        first <= limit,
        "plays at period {first}, restart at {restart_period}"
    );
    let st = sim.track.stats();
    assert_eq!(st.reset, 1, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    let db = tone_db(&sim.out[(first + 20) * PERIOD..], 1000.0);
    assert!(
        (db - TONE_DB).abs() < 1.0,
        "1 kHz at {db} dB after the restart"
    );
}

impl Sim {
    fn first_silence(&self, from: usize) -> Option<usize> {
        self.out
            .chunks(PERIOD)
            .enumerate()
            .skip(from)
            .find(|(_, p)| p.iter().all(|&s| s == 0.0))
            .map(|(i, _)| i)
    }
}

#[test]
fn opus_frames_of_10_to_60_ms_play_alike() {
    for frame_ms in [10, 20, 40, 60] {
        let mut sim = Sim::new(opus_track());
        let mut s = Sender::opus(1000.0, 0.5, frame_ms, 1, 1);
        sim.run(2.0, Some(&mut s), 1.0, &mut on_time);
        let st = sim.track.stats();
        assert_eq!(
            (st.lost, st.concealed, st.underruns),
            (0, 0, 0),
            "{frame_ms} ms: {st:?}"
        );
        let db = tone_db(sim.output(0.5, 2.0), 1000.0);
        assert!(
            (db - TONE_DB).abs() < 1.0,
            "{frame_ms} ms: 1 kHz at {db} dB"
        );
    }
}

#[test]
fn g711_tones_come_out_at_48_khz_without_images() {
    for codec in [Family::Pcmu, Family::Pcma] {
        let track = Track::new(codec, 8_000, TARGET).expect("a G.711 track");
        let mut sim = Sim::new(track);
        let mut s = Sender::g711(codec, 1000.0, 0.5);
        sim.run(2.0, Some(&mut s), 1.0, &mut on_time);
        let st = sim.track.stats();
        assert_eq!(
            (st.lost, st.concealed, st.underruns),
            (0, 0, 0),
            "{codec:?}: {st:?}"
        );
        let out = sim.output(0.5, 2.0);
        let db = tone_db(out, 1000.0);
        assert!((db - TONE_DB).abs() < 0.5, "{codec:?}: 1 kHz at {db} dB");
        for image in [7000.0, 9000.0, 15_000.0, 17_000.0] {
            let p = tone_db(out, image);
            assert!(p < db - 40.0, "{codec:?}: image at {image} Hz is {p} dB");
        }
    }
}

#[test]
fn g711_loss_repeats_the_last_period_faded() {
    let track = Track::new(Family::Pcmu, 8_000, TARGET).expect("a G.711 track");
    let mut sim = Sim::new(track);
    let mut s = Sender::g711(Family::Pcmu, 1000.0, 0.5);
    let mut net = |p: &Packet| if p.seq == 1050 { None } else { Some(1_000.0) };
    sim.run(2.0, Some(&mut s), 1.0, &mut net);
    let st = sim.track.stats();
    assert_eq!((st.lost, st.concealed, st.underruns), (1, 1, 0), "{st:?}");
    let db = tone_db(sim.output(0.5, 2.0), 1000.0);
    assert!((db - TONE_DB).abs() < 1.0, "1 kHz at {db} dB");
}

#[test]
fn over_a_second_held_resets_the_buffer() {
    let mut track = opus_track();
    let mut s = Sender::opus(1000.0, 0.5, 20, 0, 0);
    let now = Instant::now();
    // 3 s of packets and nobody pulling (the speaker stalled).
    for _ in 0..150 {
        let p = s.next();
        track.push(now, p.seq, p.ts, &p.payload);
    }
    let mut period = [0f32; PERIOD];
    track.pull(now, &mut period);
    let st = track.stats();
    assert!(st.reset >= 2, "{st:?}");
    assert!(st.depth_ms <= 1_000, "{st:?}");
    // And it plays on from the newest packets.
    for _ in 0..5 {
        let p = s.next();
        track.push(now, p.seq, p.ts, &p.payload);
        track.pull(now, &mut period);
        track.pull(now, &mut period);
    }
    assert!(period.iter().any(|&x| x != 0.0));
}

#[test]
fn only_audio_codecs_at_their_clock_rates_are_accepted() {
    assert!(Track::new(Family::Vp8, 90_000, TARGET).is_err());
    assert!(Track::new(Family::Opus, 8_000, TARGET).is_err());
    assert!(Track::new(Family::Pcmu, 48_000, TARGET).is_err());
    assert!(Track::new(Family::Opus, 48_000, Duration::from_secs(2)).is_err());
    assert!(Track::new(Family::Pcma, 8_000, Duration::ZERO).is_ok());
}

#[test]
fn garbage_never_panics_and_the_track_recovers() {
    let mut rng = Rng(7);
    for codec in [Family::Opus, Family::Pcmu, Family::Pcma] {
        let rate = if codec == Family::Opus { 48_000 } else { 8_000 };
        let mut track = Track::new(codec, rate, TARGET).expect("a track");
        let base = Instant::now();
        let mut period = [0f32; PERIOD];
        let mut seq = rng.next() as u16;
        let mut ts = rng.next() as u32;
        for i in 0..3_000u64 {
            let len = match rng.next() % 4 {
                0 => 0,
                1 => (rng.next() % 8) as usize,
                2 => (rng.next() % 400) as usize,
                _ => (rng.next() % 10_000) as usize,
            };
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Mostly a plausible stream, sometimes absurd sequence numbers/timestamps.
            match rng.next() % 10 {
                0 => seq = rng.next() as u16,
                1 => ts = rng.next() as u32,
                2 => seq = seq.wrapping_sub(1),
                _ => {
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(960);
                }
            }
            let now = base + Duration::from_millis(10 * i);
            track.push(now, seq, ts, &payload);
            if rng.next().is_multiple_of(2) {
                track.pull(now, &mut period);
                assert!(period.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
            }
        }
        let st = track.stats();
        assert!(st.concealed > 0, "{codec:?}: {st:?}");
        // A real stream afterwards plays.
        let mut sim = Sim::new(track);
        let mut s = if codec == Family::Opus {
            Sender::opus(1000.0, 0.5, 20, seq.wrapping_add(20_000), 0)
        } else {
            let mut s = Sender::g711(codec, 1000.0, 0.5);
            s.seq = seq.wrapping_add(20_000);
            s
        };
        sim.run(2.0, Some(&mut s), 1.0, &mut on_time);
        let db = tone_db(sim.output(1.0, 2.0), 1000.0);
        assert!(
            (db - TONE_DB).abs() < 1.0,
            "{codec:?}: 1 kHz at {db} dB after garbage"
        );
    }
}

#[test]
fn tracks_mixed_keep_their_tones_and_the_limiter_holds() {
    // Two remote speakers at -6 dBFS (their sum peaks near 0 dBFS) through the mixer.
    let mut a = Sim::new(opus_track());
    let mut b = Sim::new(opus_track());
    let mut sa = Sender::opus(700.0, 0.5, 20, 0, 0);
    let mut sb = Sender::opus(1100.0, 0.5, 20, 0, 0);
    a.run(2.0, Some(&mut sa), 1.0, &mut on_time);
    b.run(2.0, Some(&mut sb), 1.0, &mut on_time);
    let mut mixer = Mixer::new();
    let mut mixed = Vec::new();
    for (pa, pb) in a.out.chunks(PERIOD).zip(b.out.chunks(PERIOD)) {
        let pa: Period = pa.try_into().expect("a period");
        let pb: Period = pb.try_into().expect("a period");
        let mut out = [0i16; PERIOD];
        mixer.mix(&[&pa, &pb], &mut out);
        assert!(out.iter().all(|&s| s.abs() <= 29_205), "over -1 dBFS");
        mixed.extend(out.iter().map(|&s| f32::from(s) / 32767.0));
    }
    let tail = &mixed[48_000..];
    for f in [700.0, 1100.0] {
        let db = tone_db(tail, f);
        assert!((db - TONE_DB).abs() < 2.0, "{f} Hz at {db} dB in the mix");
    }
}

#[test]
fn one_stray_packet_with_an_absurd_sequence_does_not_reset_the_stream() {
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 100, 0);
    sim.run(1.0, Some(&mut s), 1.0, &mut on_time);
    let stray = Sender::opus(1000.0, 0.5, 20, 30_000, 999).next();
    let now = sim.at(sim.now_us);
    sim.track.push(now, stray.seq, stray.ts, &stray.payload);
    sim.run(1.0, Some(&mut s), 1.0, &mut on_time);
    let st = sim.track.stats();
    assert_eq!(
        (st.reset, st.lost, st.concealed, st.underruns),
        (0, 0, 0, 0),
        "{st:?}"
    );
    let db = tone_db(sim.output(0.5, 2.0), 1000.0);
    assert!((db - TONE_DB).abs() < 1.0, "1 kHz at {db} dB");
}

#[test]
fn a_pause_in_the_talk_comes_back_at_the_target_delay_not_a_grown_one() {
    // DTX-like: the sender sends nothing for 700 ms (sequence numbers continue, the
    // timestamp jumps), three times, over a 1 % fast sender.
    let mut sim = Sim::new(opus_track());
    let mut s = Sender::opus(1000.0, 0.5, 20, 9, 9);
    let mut depths = Vec::new();
    for _ in 0..3 {
        sim.run(2.0, Some(&mut s), 1.01, &mut on_time);
        depths.push(sim.track.stats().depth_ms);
        sim.run(0.7, None, 1.0, &mut on_time);
        s.ts = s.ts.wrapping_add(48 * 700);
        s.n += 48 * 700;
    }
    let st = sim.track.stats();
    assert_eq!(st.underruns, 3, "{st:?}");
    assert_eq!((st.lost, st.late, st.reset), (0, 0, 0), "{st:?}");
    for d in &depths {
        assert!((30..=90).contains(d), "depths {depths:?}");
    }
    // Each spurt starts again target + a frame after it resumes.
    let resumed = (2.7 * 100.0) as usize;
    let first = sim.first_sound(resumed).expect("sound after the pause");
    assert!(
        first <= resumed + 9,
        "plays at {first}, resumed at {resumed}"
    );
}

#[test]
fn tracks_and_the_mixer_can_move_to_the_speaker_thread() {
    fn send<T: Send>() {}
    send::<Track>();
    send::<Mixer>();
}
