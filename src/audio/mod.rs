//! The speaker path's pure audio core (issue 14): per remote stream a [`Track`]
//! (jitter buffer, Opus or G.711 decoder, clock-drift control) and the [`Mixer`]
//! (sum and peak limiter) that the speaker thread runs once per 10 ms period.
//!
//! Sans-I/O: no threads, no clocks read (time comes in as `Instant`), no devices.
//! Everything runs at [`RATE`] mono in periods of [`PERIOD`] samples.

pub mod g711;
pub mod mixer;
pub mod track;

pub use mixer::Mixer;
pub use track::{Track, TrackStats};

/// The mix's sample rate.
pub const RATE: u32 = 48_000;
/// One 10 ms period, mono.
pub const PERIOD: usize = 480;
/// Samples in -1.0..=1.0.
pub type Period = [f32; PERIOD];

/// Power of `freq` in `samples` by the Goertzel algorithm, normalised to the square of
/// the amplitude: a sine of amplitude `a` at `freq` gives about `a * a` (full scale:
/// ~1.0; -20 dBFS: ~0.01), whatever the length. Use a whole number of periods of
/// `freq` (or a long window) for an exact figure. Empty input or `rate == 0`: 0.
pub fn goertzel(samples: &[f32], freq: f32, rate: u32) -> f32 {
    if samples.is_empty() || rate == 0 {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let x = if x.is_finite() { f64::from(x) } else { 0.0 };
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    (4.0 * power / (n * n)) as f32
}

/// Root mean square of `samples` (0 for none; non-finite samples count as 0).
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples
        .iter()
        .map(|&x| {
            if x.is_finite() {
                f64::from(x) * f64::from(x)
            } else {
                0.0
            }
        })
        .sum();
    (sum / samples.len() as f64).sqrt() as f32
}

/// Decibels of a power ratio (`10 log10`), for tests and logs; -200 for 0.
pub fn power_db(power: f32) -> f32 {
    if power <= 0.0 {
        -200.0
    } else {
        10.0 * power.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, amp: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / RATE as f32).sin())
            .collect()
    }

    #[test]
    fn goertzel_is_the_squared_amplitude_at_its_frequency_only() {
        let s = sine(1000.0, 1.0, 4800);
        assert!((goertzel(&s, 1000.0, RATE) - 1.0).abs() < 0.01);
        let s = sine(1000.0, 0.1, 4800);
        assert!((goertzel(&s, 1000.0, RATE) - 0.01).abs() < 0.0005);
        assert!(goertzel(&s, 3000.0, RATE) < 1e-6);
        assert_eq!(goertzel(&[], 1000.0, RATE), 0.0);
    }

    #[test]
    fn rms_of_a_sine_is_amplitude_over_root_two() {
        let s = sine(1000.0, 0.5, 4800);
        assert!((rms(&s) - 0.5 / 2f32.sqrt()).abs() < 1e-3);
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(rms(&[f32::NAN, 0.0]), 0.0);
    }
}
