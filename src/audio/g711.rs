//! ITU-T G.711 μ-law and A-law decoding (the reference expansion of the G.711
//! tables, as in the ITU/Sun `g711.c`), nearest-code encoders for tests and
//! benchmarks, and an 8 kHz → 48 kHz upsampler for speech.

/// One μ-law code as a 16-bit linear sample (ITU-T G.711, range ±32124).
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let t = ((mantissa << 3) + 0x84) << exponent;
    let v = if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 };
    v as i16
}

/// One A-law code as a 16-bit linear sample (ITU-T G.711, range ±32256).
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let exponent = (a >> 4) & 0x07;
    let mantissa = i32::from(a & 0x0F);
    let t = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    let v = if a & 0x80 != 0 { t } else { -t };
    v as i16
}

/// The code whose expansion is nearest to `sample` (an exact, slow encoder: for
/// tests and benchmarks, not the hot path).
fn nearest(sample: i16, decode: fn(u8) -> i16) -> u8 {
    let mut best = (u32::MAX, 0u8);
    for code in 0..=255u8 {
        let d = (i32::from(decode(code)) - i32::from(sample)).unsigned_abs();
        if d < best.0 {
            best = (d, code);
        }
    }
    best.1
}

/// A 16-bit sample as the nearest μ-law code.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    nearest(sample, ulaw_to_linear)
}

/// A 16-bit sample as the nearest A-law code.
pub fn linear_to_alaw(sample: i16) -> u8 {
    nearest(sample, alaw_to_linear)
}

/// The upsampling factor, 8 kHz to 48 kHz.
pub const FACTOR: usize = 6;
/// Input samples per polyphase branch.
const TAPS_PER_PHASE: usize = 24;
const TAPS: usize = FACTOR * TAPS_PER_PHASE;
/// The low-pass cut-off at 48 kHz: below 4 kHz, so the images at 8 kHz ± f are
/// removed while speech up to ~3 kHz passes flat.
const CUTOFF_HZ: f64 = 3_700.0;

/// An 8 kHz → 48 kHz polyphase FIR upsampler: a 144-tap Blackman-windowed sinc
/// (24 input samples per output phase, ~1.5 ms of delay). Its history is kept across
/// calls, so a stream cut into packets has no clicks at the boundaries.
#[derive(Clone)]
pub struct Upsampler {
    /// `phases[p][k]`: the tap applied to the input `k` samples back for output phase `p`.
    phases: [[f32; TAPS_PER_PHASE]; FACTOR],
    /// The last `TAPS_PER_PHASE` inputs, newest at `(pos + TAPS_PER_PHASE - 1) % len`.
    history: [f32; TAPS_PER_PHASE],
    pos: usize,
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    pub fn new() -> Upsampler {
        let mut h = [0f64; TAPS];
        let fc = CUTOFF_HZ / 48_000.0;
        let mid = (TAPS - 1) as f64 / 2.0;
        for (n, tap) in h.iter_mut().enumerate() {
            let x = n as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let r = 2.0 * std::f64::consts::PI * n as f64 / (TAPS - 1) as f64;
            let window = 0.42 - 0.5 * r.cos() + 0.08 * (2.0 * r).cos();
            *tap = sinc * window;
        }
        let mut phases = [[0f32; TAPS_PER_PHASE]; FACTOR];
        for (p, phase) in phases.iter_mut().enumerate() {
            // Each phase alone has unity gain at DC: no ripple at the input rate.
            let sum: f64 = (0..TAPS_PER_PHASE).map(|k| h[p + FACTOR * k]).sum();
            for (k, tap) in phase.iter_mut().enumerate() {
                *tap = (h[p + FACTOR * k] / sum) as f32;
            }
        }
        Upsampler {
            phases,
            history: [0.0; TAPS_PER_PHASE],
            pos: 0,
        }
    }

    /// Forgets the history (a new stream).
    pub fn reset(&mut self) {
        self.history = [0.0; TAPS_PER_PHASE];
        self.pos = 0;
    }

    /// One 8 kHz sample in, [`FACTOR`] 48 kHz samples appended to `out`.
    pub fn push(&mut self, sample: f32, out: &mut impl Extend<f32>) {
        self.history[self.pos] = sample;
        self.pos = (self.pos + 1) % TAPS_PER_PHASE;
        let mut y = [0f32; FACTOR];
        for (p, phase) in self.phases.iter().enumerate() {
            let mut acc = 0f32;
            for (k, &tap) in phase.iter().enumerate() {
                // k samples back from the newest.
                let i = (self.pos + TAPS_PER_PHASE - 1 - k) % TAPS_PER_PHASE;
                acc += tap * self.history[i];
            }
            y[p] = acc;
        }
        out.extend(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{goertzel, power_db};

    #[test]
    fn reference_values_of_the_g711_tables() {
        // μ-law: 0xFF and 0x7F are the two zeros, 0x00 / 0x80 the extremes.
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        // A-law: 0xD5 / 0x55 are the smallest magnitudes, 0xAA / 0x2A the extremes.
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        // Monotonic in magnitude within a sign, and the encoders invert the decoders.
        for code in 0..=255u8 {
            assert_eq!(
                ulaw_to_linear(linear_to_ulaw(ulaw_to_linear(code))),
                ulaw_to_linear(code)
            );
            assert_eq!(
                alaw_to_linear(linear_to_alaw(alaw_to_linear(code))),
                alaw_to_linear(code)
            );
        }
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        assert_eq!(linear_to_alaw(1000), 0xFA);
    }

    #[test]
    fn upsampler_passes_speech_and_removes_the_images() {
        for freq in [300.0f32, 1000.0, 2500.0] {
            let mut up = Upsampler::new();
            let mut out = Vec::new();
            for i in 0..8000 {
                let x = 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / 8000.0).sin();
                up.push(x, &mut out);
            }
            let tail = &out[out.len() - 24_000..];
            let tone = power_db(goertzel(tail, freq, 48_000));
            assert!(
                (tone - power_db(0.25)).abs() < 0.5,
                "{freq} Hz at {tone} dB"
            );
            for image in [8000.0 - freq, 8000.0 + freq, 16000.0 - freq] {
                let p = power_db(goertzel(tail, image, 48_000));
                assert!(p < tone - 50.0, "{freq} Hz: image at {image} Hz is {p} dB");
            }
        }
    }

    #[test]
    fn upsampler_keeps_its_state_across_calls() {
        let x: Vec<f32> = (0..800).map(|i| (i as f32 * 0.3).sin() * 0.4).collect();
        let mut whole = Vec::new();
        let mut up = Upsampler::new();
        for &s in &x {
            up.push(s, &mut whole);
        }
        let mut split = Vec::new();
        let mut up = Upsampler::new();
        for chunk in x.chunks(160) {
            for &s in chunk {
                up.push(s, &mut split);
            }
        }
        assert_eq!(whole, split);
    }
}
