//! The mix: every remote track's period summed and brought to S16 through a peak
//! limiter without look-ahead.

use super::{Period, PERIOD, RATE};

/// The limiter's ceiling: -1 dBFS.
pub const CEILING: f32 = 0.891_250_9;
/// The attack: the gain falls to what the period's peak needs within this many
/// samples (1 ms), and never lets a sample above the ceiling even during it.
const ATTACK_SAMPLES: usize = 48;
/// The release's time constant.
const RELEASE_SECONDS: f32 = 0.15;

/// Sums the inputs and limits the sum: gain 1 while the sum stays below
/// [`CEILING`]; above, the gain drops at once (within the period, and per sample
/// where it must) and recovers with a ~150 ms time constant.
pub struct Mixer {
    gain: f32,
    /// Per-sample factor of the release: `gain = need - (need - gain) * release`.
    release: f32,
    sum: [f32; PERIOD],
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mixer {
    pub fn new() -> Mixer {
        Mixer {
            gain: 1.0,
            release: (-1.0 / (RELEASE_SECONDS * RATE as f32)).exp(),
            sum: [0.0; PERIOD],
        }
    }

    /// The limiter's gain after the last period (1.0: not limiting).
    pub fn gain(&self) -> f32 {
        self.gain
    }

    /// Sums `inputs` into `out` as S16 mono, through a look-ahead-free peak limiter
    /// (ceiling -1 dBFS, attack within the period, release ~150 ms): never clips,
    /// never wraps, and a single input below the ceiling passes with unity gain.
    /// No inputs: silence.
    pub fn mix(&mut self, inputs: &[&Period], out: &mut [i16; PERIOD]) {
        self.sum = [0.0; PERIOD];
        for input in inputs {
            for (s, &x) in self.sum.iter_mut().zip(input.iter()) {
                if x.is_finite() {
                    *s += x;
                }
            }
        }
        let peak = self.sum.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let need = if peak > CEILING { CEILING / peak } else { 1.0 };
        let start = self.gain;
        let step = if need < start {
            (start - need) / ATTACK_SAMPLES as f32
        } else {
            0.0
        };
        let mut gain = start;
        for (i, (o, &x)) in out.iter_mut().zip(self.sum.iter()).enumerate() {
            if need < start {
                gain = (start - step * (i + 1) as f32).max(need);
            } else {
                gain = need - (need - gain) * self.release;
            }
            // The attack's ramp may still be above what this sample needs.
            let magnitude = x.abs();
            let g = if magnitude * gain > CEILING {
                CEILING / magnitude
            } else {
                gain
            };
            let y = (x * g * 32767.0).round();
            *o = y.clamp(-32768.0, 32767.0) as i16;
        }
        self.gain = gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{goertzel, power_db};

    fn tone(freq: f32, amp: f32, phase: f32, n: usize) -> Vec<Period> {
        (0..n)
            .map(|p| {
                let mut period = [0f32; PERIOD];
                for (i, s) in period.iter_mut().enumerate() {
                    let t = (p * PERIOD + i) as f32 / RATE as f32;
                    *s = amp * (2.0 * std::f32::consts::PI * freq * t + phase).sin();
                }
                period
            })
            .collect()
    }

    fn to_f32(out: &[i16]) -> Vec<f32> {
        out.iter().map(|&s| f32::from(s) / 32767.0).collect()
    }

    #[test]
    fn six_full_scale_tones_never_exceed_the_ceiling() {
        let tracks: Vec<Vec<Period>> = (0..6)
            .map(|k| tone(300.0 + 170.0 * k as f32, 1.0, k as f32, 200))
            .collect();
        let mut mixer = Mixer::new();
        let limit = (CEILING * 32767.0).round() as i16 + 1;
        let mut all = Vec::new();
        for p in 0..200 {
            let inputs: Vec<&Period> = tracks.iter().map(|t| &t[p]).collect();
            let mut out = [0i16; PERIOD];
            mixer.mix(&inputs, &mut out);
            for (i, &s) in out.iter().enumerate() {
                assert!(s.abs() <= limit, "period {p} sample {i}: {s}");
            }
            all.extend_from_slice(&out);
        }
        // Not wrapped: the sum's sign is kept sample by sample.
        let mut same_sign = 0;
        let mut m = Mixer::new();
        for p in 0..200 {
            let inputs: Vec<&Period> = tracks.iter().map(|t| &t[p]).collect();
            let mut out = [0i16; PERIOD];
            m.mix(&inputs, &mut out);
            for (i, &s) in out.iter().enumerate() {
                let sum: f32 = inputs.iter().map(|x| x[i]).sum();
                if sum.abs() > 0.01 && (f32::from(s) * sum) > 0.0 {
                    same_sign += 1;
                }
                if sum.abs() > 0.01 {
                    assert!(f32::from(s) * sum >= 0.0, "wrapped at {p}/{i}");
                }
            }
        }
        assert!(same_sign > 80_000);
        assert!(
            all.iter().any(|&s| s.abs() > limit - 500),
            "limited far below the ceiling"
        );
    }

    #[test]
    fn one_tone_below_the_ceiling_passes_with_unity_gain() {
        let amp = 0.1; // -20 dBFS
        let t = tone(1000.0, amp, 0.0, 100);
        let mut mixer = Mixer::new();
        let mut all = Vec::new();
        for period in &t {
            let mut out = [0i16; PERIOD];
            mixer.mix(&[period], &mut out);
            for (i, &s) in out.iter().enumerate() {
                assert!((f32::from(s) - period[i] * 32767.0).abs() <= 0.51);
            }
            all.extend(to_f32(&out));
        }
        let db = power_db(goertzel(&all, 1000.0, RATE));
        assert!((db + 20.0).abs() < 0.1, "{db} dB");
        assert_eq!(mixer.gain(), 1.0);
    }

    #[test]
    fn silence_in_silence_out() {
        let mut mixer = Mixer::new();
        let mut out = [7i16; PERIOD];
        mixer.mix(&[], &mut out);
        assert!(out.iter().all(|&s| s == 0));
        let zero = [0f32; PERIOD];
        let nan = [f32::NAN; PERIOD];
        mixer.mix(&[&zero, &zero, &nan], &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn gain_recovers_after_a_loud_burst() {
        let loud = tone(500.0, 1.0, 0.0, 50);
        let quiet = tone(1000.0, 0.1, 0.0, 100);
        let mut mixer = Mixer::new();
        let mut out = [0i16; PERIOD];
        for p in &loud {
            mixer.mix(&[p, p, p], &mut out);
        }
        assert!(mixer.gain() < 0.35, "gain {}", mixer.gain());
        let mut gains = Vec::new();
        let mut tail = Vec::new();
        for (i, p) in quiet.iter().enumerate() {
            mixer.mix(&[p], &mut out);
            gains.push(mixer.gain());
            if i >= 90 {
                tail.extend(to_f32(&out));
            }
        }
        // Recovering, not jumping: after 50 ms still well below 1, after 1 s at unity.
        assert!(gains[4] < 0.9, "{gains:?}");
        assert!(gains.windows(2).all(|w| w[1] >= w[0]));
        let db = power_db(goertzel(&tail, 1000.0, RATE));
        assert!((db + 20.0).abs() < 0.1, "{db} dB after the burst");
    }
}
