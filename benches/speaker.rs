//! Speaker path benchmark (`make bench`, `cargo bench --bench speaker`): the CPU of
//! the speaker's audio core per 10 ms period for 2 and 6 remote Opus streams (20 ms
//! frames at 32 kbit/s, the device's own encoder settings): the tracks (jitter
//! buffer, Opus decoding, drift control) and the mix (sum + limiter). A
//! measurement, not a test: no assertions about the figures.
//!
//! Pure code, one thread, no I/O: the streams are encoded first (not measured), then
//! the simulated speaker clock runs period by period, delivering the packets due and
//! timing each stage with `Instant` (the stages' sum is checked against the thread's
//! CPU time from `getrusage(RUSAGE_THREAD)`). Each stage is a function, so the echo
//! canceller's cost is one more: the microphone's processing (`device::echo`,
//! GStreamer's webrtcdsp with echo cancellation, noise suppression and gain control),
//! fed the mix as its far end every period and a 20 ms microphone frame every other
//! period; it runs on GStreamer's threads, so it is measured as the whole process's CPU
//! (`RUSAGE_SELF`) over its own run. Every case runs `REPEAT` times; the
//! table gives the median and the range. The section between the markers in
//! `docs/benchmarks.md` is rewritten.

#[path = "../tests/common/webrtc_client.rs"]
mod webrtc_client;

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use huddle::audio::{Mixer, Period, Track, PERIOD, RATE};
use huddle::media::Family;
use nix::sys::resource::{getrusage, UsageWho};

use support::{loadavg, machine, write_doc};

/// Remote streams per case.
const STREAMS: &[usize] = &[2, 6];
/// Seconds of audio per run.
const SECONDS: usize = 20;
const REPEAT: usize = 3;
/// Opus frame, samples at 48 kHz (20 ms).
const FRAME: usize = 960;
const TARGET: Duration = Duration::from_millis(60);

struct Packet {
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

/// Set-up, not measured: `n` streams of `SECONDS` of speech-like sound (a tone with
/// a wandering pitch, amplitude-modulated, plus noise) encoded by the device's Opus
/// encoder (32 kbit/s, in-band FEC).
fn encode(n: usize) -> Vec<Vec<Packet>> {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|k| {
            let encoder = huddle::device::microphone::encoder().expect("Opus encoder");
            let mut phase = 0f32;
            let frames = SECONDS * RATE as usize / FRAME;
            (0..frames)
                .map(|f| {
                    let pcm: Vec<f32> = (0..FRAME)
                        .map(|i| {
                            let t = (f * FRAME + i) as f32 / RATE as f32;
                            let pitch = 120.0 + 40.0 * k as f32 + 30.0 * (t * 1.3).sin();
                            phase += 2.0 * std::f32::consts::PI * pitch / RATE as f32;
                            let envelope = 0.5 + 0.5 * (t * 4.0 + k as f32).sin();
                            0.3 * envelope * (phase.sin() + 0.3 * (3.0 * phase).sin())
                                + 0.02 * noise()
                        })
                        .collect();
                    let mut buf = vec![0u8; 1500];
                    let len = encoder.encode_float(&pcm, &mut buf).expect("encode");
                    buf.truncate(len);
                    Packet {
                        seq: (f as u16).wrapping_add(1000 * k as u16),
                        ts: (f * FRAME) as u32,
                        payload: buf,
                    }
                })
                .collect()
        })
        .collect()
}

/// Stage 1, per period: the packets that arrived push into their tracks, and every
/// track is pulled for the period (jitter buffer, decoding, drift control).
fn stage_tracks(
    tracks: &mut [Track],
    streams: &[Vec<Packet>],
    period: usize,
    now: Instant,
    outs: &mut [Period],
) {
    // A frame is sent when it is complete: frame f arrives in period 2f + 2.
    if period.is_multiple_of(2) && period >= 2 {
        let f = period / 2 - 1;
        for (track, stream) in tracks.iter_mut().zip(streams) {
            if let Some(p) = stream.get(f) {
                track.push(now, p.seq, p.ts, &p.payload);
            }
        }
    }
    for (track, out) in tracks.iter_mut().zip(outs.iter_mut()) {
        track.pull(now, out);
    }
}

/// Stage 2, per period: the tracks' periods summed and limited to S16.
fn stage_mix(mixer: &mut Mixer, outs: &[Period], out: &mut [i16; PERIOD]) {
    let inputs: Vec<&Period> = outs.iter().collect();
    mixer.mix(&inputs, out);
}

fn thread_cpu() -> Duration {
    cpu_of(UsageWho::RUSAGE_THREAD)
}

fn cpu_of(who: UsageWho) -> Duration {
    let usage = getrusage(who).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

/// Time per period of each stage, and the thread's CPU per period.
struct Run {
    tracks: Duration,
    mix: Duration,
    cpu: Duration,
}

fn run(streams: &[Vec<Packet>]) -> Run {
    let mut tracks: Vec<Track> = streams
        .iter()
        .map(|_| Track::new(Family::Opus, 48_000, TARGET).expect("track"))
        .collect();
    let mut mixer = Mixer::new();
    let mut outs = vec![[0f32; PERIOD]; streams.len()];
    let mut out = [0i16; PERIOD];
    let periods = SECONDS * 100;
    let base = Instant::now();
    let (mut t_tracks, mut t_mix) = (Duration::ZERO, Duration::ZERO);
    let cpu0 = thread_cpu();
    for period in 0..periods {
        let now = base + Duration::from_millis(10 * period as u64);
        let t0 = Instant::now();
        stage_tracks(&mut tracks, streams, period, now, &mut outs);
        let t1 = Instant::now();
        stage_mix(&mut mixer, &outs, &mut out);
        let t2 = Instant::now();
        t_tracks += t1 - t0;
        t_mix += t2 - t1;
        std::hint::black_box(&out);
    }
    let cpu = thread_cpu() - cpu0;
    for t in &tracks {
        let st = t.stats();
        assert_eq!(
            st.underruns, 0,
            "the benchmark's streams play without gaps: {st:?}"
        );
    }
    let n = periods as u32;
    Run {
        tracks: t_tracks / n,
        mix: t_mix / n,
        cpu: cpu / n,
    }
}

/// Stage 3, per period: the echo canceller gets the mix as its far end, and every
/// other period processes a 20 ms microphone frame (the room: the speaker's echo and a
/// talker). Returns the process's CPU per period (GStreamer's threads included).
fn run_echo() -> Duration {
    use huddle::device::echo::{EchoCanceller, Processing};
    let aec = EchoCanceller::new(Processing {
        echo_cancel: true,
        noise_suppression: true,
        auto_gain: true,
    })
    .expect("webrtcdsp (gstreamer1.0-plugins-bad)");
    let tone = |f: f32, a: f32, from: usize, n: usize| -> Vec<i16> {
        (from..from + n)
            .map(|i| {
                ((i as f32 * f * std::f32::consts::TAU / RATE as f32).sin() * a * 32767.0) as i16
            })
            .collect()
    };
    let periods = SECONDS * 100;
    let cpu0 = cpu_of(UsageWho::RUSAGE_SELF);
    for period in 0..periods {
        let far = tone(1000.0, 0.3, period * PERIOD, PERIOD);
        aec.far(&far);
        if period % 2 == 1 {
            let at = (period - 1) * PERIOD;
            let mut mic: Vec<i16> = tone(1000.0, 0.1, at, 2 * PERIOD)
                .iter()
                .zip(tone(600.0, 0.1, at, 2 * PERIOD))
                .map(|(e, n)| e.saturating_add(n))
                .collect();
            aec.process(&mut mic).expect("processing");
            std::hint::black_box(&mic);
        }
    }
    (cpu_of(UsageWho::RUSAGE_SELF) - cpu0) / periods as u32
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let load_start = loadavg();
    let encoded: Vec<(usize, Vec<Vec<Packet>>)> = STREAMS.iter().map(|&n| (n, encode(n))).collect();
    let mut runs: Vec<Vec<Run>> = encoded.iter().map(|_| Vec::new()).collect();
    let mut echo = Vec::new();
    // Interleaved, so a busy moment of the machine does not land on one case.
    for _ in 0..REPEAT {
        for (i, (_, streams)) in encoded.iter().enumerate() {
            runs[i].push(run(streams));
        }
        echo.push(run_echo());
    }
    let echo = median(echo);
    let load_end = loadavg();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {}; load average (1/5/15 min) {load_start} at the start, {load_end} at the \
         end. {SECONDS} s of audio per run, {REPEAT} runs per case: median (range).\n",
        machine()
    );
    if cfg!(debug_assertions) {
        s.push_str(
            "**Not a release build** (the bench was built with debug assertions, e.g. \
             `cargo build --bench speaker` with `--config 'profile.dev.package.huddle.opt-level=3'`): \
             indicative only; `cargo bench --bench speaker` measures the release build.\n\n",
        );
    }
    s.push_str(
        "| remote Opus streams | tracks (jitter + decode), µs per 10 ms | mix (sum + limiter), µs per 10 ms | total, µs per 10 ms | % of one core | thread CPU (getrusage), µs per 10 ms | with the echo canceller, % of one core |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((n, _), runs) in encoded.iter().zip(&runs) {
        let fmt = |(m, lo, hi): (Duration, Duration, Duration)| {
            format!("{:.1} ({:.1}–{:.1})", us(m), us(lo), us(hi))
        };
        let tracks = median(runs.iter().map(|r| r.tracks).collect());
        let mix = median(runs.iter().map(|r| r.mix).collect());
        let total = median(runs.iter().map(|r| r.tracks + r.mix).collect());
        let cpu = median(runs.iter().map(|r| r.cpu).collect());
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {:.2} % | {} | {:.2} % |",
            fmt(tracks),
            fmt(mix),
            fmt(total),
            us(total.0) / 10_000.0 * 100.0,
            fmt(cpu),
            (us(total.0) + us(echo.0)) / 10_000.0 * 100.0,
        );
    }
    let _ = writeln!(
        s,
        "\nThe echo canceller (webrtcdsp: echo cancellation, noise suppression, gain \
         control, 48 kHz mono; the process's CPU over its own run, GStreamer's threads \
         included): {:.1} µs per 10 ms ({:.1}–{:.1}), {:.2} % of one core, whatever the \
         number of remote streams.",
        us(echo.0),
        us(echo.1),
        us(echo.2),
        us(echo.0) / 10_000.0 * 100.0
    );
    println!("\n{s}");
    write_doc("speaker", &s);
}
