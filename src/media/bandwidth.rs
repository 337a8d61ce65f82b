//! A player's bandwidth as far as the layer choice needs it: the receiver's estimate
//! (REMB) and the loss it reports (RTCP receiver reports) cap the simulcast layer it
//! gets. Pure: the time is passed in.
//!
//! A receiver's estimate follows what it receives: a browser's REMB stays within about
//! 1–1.5 times the received rate while nothing is congested (measured with Chromium: 5–11
//! kbps while it got a 10 kbps layer). So the estimate cannot say that a higher layer
//! would fit; it says whether the current one does. Down: at once when the estimate is
//! below half the current layer's rate, or when more than a tenth of the packets were
//! lost (then no step up for a while); after 2 s when it stays below 85 % of it. Up, one
//! layer at a time, after 3 s in which the next layer fits 85 % of the estimate or the
//! estimate is at least 1.2 times the current layer's rate (the receiver keeps up with
//! more than it gets).

use std::time::{Duration, Instant};

/// Share of the estimate a layer may use (the rest is audio, RTCP, retransmissions).
const HEADROOM_PERCENT: u64 = 85;
/// An estimate at least this share of the current layer's rate: the receiver keeps up.
const KEEPS_UP_PERCENT: u64 = 120;
/// Below this share of the current layer's rate: down at once.
const FAR_BELOW_PERCENT: u64 = 50;
/// A receiver report's fraction lost (of 256) above which the layer steps down: 10 %.
const LOSS_DOWN: u8 = 26;
/// How long the next layer must fit (or the receiver keep up) before a step up.
pub const UP_AFTER: Duration = Duration::from_secs(3);
/// How long the estimate must stay below the current layer before a step down.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);
/// After a step down for loss, no step up for this long.
pub const HOLD_AFTER_LOSS: Duration = Duration::from_secs(8);
/// An estimate older than this no longer counts (the player stopped sending it).
const STALE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct Estimator {
    /// The receiver's last estimate, bits per second, and when it came.
    remb: Option<(u64, Instant)>,
    /// Loss reported since the last decision (the worst fraction, of 256).
    loss: Option<u8>,
    /// The layer allowed now (`None`: not decided yet).
    cap: Option<usize>,
    /// Since when a step up has been possible.
    up_since: Option<Instant>,
    /// Since when the estimate has been below the current layer.
    down_since: Option<Instant>,
    /// No step up before this (after a loss).
    hold_until: Option<Instant>,
}

impl Estimator {
    /// A REMB from the player: what its receiver thinks it can take.
    pub fn remb(&mut self, now: Instant, bps: u64) {
        self.remb = Some((bps, now));
    }

    /// A receiver report's fraction lost (of 256) for the video it is sent.
    pub fn loss(&mut self, fraction_lost: u8) {
        self.loss = Some(self.loss.unwrap_or(0).max(fraction_lost));
    }

    /// The receiver's estimate, when fresh.
    pub fn estimate(&self, now: Instant) -> Option<u64> {
        self.remb
            .filter(|(_, at)| now.saturating_duration_since(*at) < STALE)
            .map(|(bps, _)| bps)
    }

    /// The highest layer the player may get now, given each layer's received bitrate
    /// (low → high; 0 for a layer not arriving). `None`: no limit (no layers, or the
    /// top one).
    pub fn cap(&mut self, now: Instant, layers: &[u64]) -> Option<usize> {
        let top = layers.len().checked_sub(1)?;
        let current = self.cap.unwrap_or(top).min(top);
        let rate = layers[current];
        let estimate = self.estimate(now);
        // The highest layer that fits the estimate (the lowest when none does).
        let fit = estimate.map_or(top, |bps| {
            let budget = bps * HEADROOM_PERCENT / 100;
            layers.iter().rposition(|&l| l <= budget).unwrap_or(0)
        });
        let lossy = self.loss.take().is_some_and(|f| f > LOSS_DOWN);
        let below = estimate.is_some_and(|bps| bps * 100 < rate * HEADROOM_PERCENT);
        let far_below = estimate.is_some_and(|bps| bps * 100 < rate * FAR_BELOW_PERCENT);
        let next_fits = current < top
            && estimate.is_none_or(|bps| {
                layers[current + 1] * 100 <= bps * HEADROOM_PERCENT
                    || bps * 100 >= rate * KEEPS_UP_PERCENT
            });
        if !below {
            self.down_since = None;
        }
        let new = if lossy {
            self.hold_until = Some(now + HOLD_AFTER_LOSS);
            fit.min(current.saturating_sub(1))
        } else if far_below {
            fit.min(current)
        } else if below {
            let since = *self.down_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= DOWN_AFTER {
                fit.min(current.saturating_sub(1))
            } else {
                current
            }
        } else if next_fits && self.hold_until.is_none_or(|t| now >= t) {
            match self.up_since {
                Some(since) if now.saturating_duration_since(since) >= UP_AFTER => current + 1,
                Some(_) => current,
                None => {
                    self.up_since = Some(now);
                    current
                }
            }
        } else {
            self.up_since = None;
            current
        };
        if new != current {
            // Each step waits again.
            self.up_since = None;
            self.down_since = None;
        }
        self.cap = Some(new);
        (new < top).then_some(new)
    }
}

/// A player of a stream without layers that cannot keep up: more than a tenth of its
/// video lost (after retransmissions) puts it on key frames only for `HOLD_AFTER_LOSS`,
/// renewed by every lossy report. The estimate is not used: a browser's REMB follows
/// what it receives (see above) and would thin every player at its start.
#[derive(Debug, Clone, Default)]
pub struct Thinning {
    until: Option<Instant>,
}

impl Thinning {
    /// A receiver report's fraction lost (`None`: another feedback); whether the
    /// player gets key frames only now.
    pub fn report(&mut self, now: Instant, fraction_lost: Option<u8>) -> bool {
        if fraction_lost.is_some_and(|f| f > LOSS_DOWN) {
            self.until = Some(now + HOLD_AFTER_LOSS);
        }
        self.until.is_some_and(|t| now < t)
    }
}

/// What one receiver report block says of the video we send a player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    /// Fraction lost since the previous report, of 256 (as the receiver counts it).
    pub fraction: u8,
    /// Cumulative number of packets lost (24-bit signed on the wire).
    pub total_lost: u32,
    /// Extended highest sequence number received.
    pub highest: u32,
}

/// The loss between us and a player, from its receiver reports less the sequence
/// numbers that were gaps before us (the publisher's own losses, which the player's
/// reports count too): a lossy publisher must not thin or step down every player.
#[derive(Debug, Clone, Default)]
pub struct DownstreamLoss {
    /// The previous report's highest and cumulative lost, and the gaps up to it.
    last: Option<(u32, u32, u64)>,
}

impl DownstreamLoss {
    /// A report and the gaps before us up to its highest sequence number (`None`: the
    /// sink keeps the source's numbering; the report is taken as it is). The fraction
    /// (of 256) lost on our side since the previous report; `None` for the first one,
    /// or when nothing new was expected.
    pub fn report(&mut self, r: LossReport, skipped: Option<u64>) -> Option<u8> {
        let Some(skipped) = skipped else {
            return Some(r.fraction);
        };
        let (highest, total, gaps) = self.last.replace((r.highest, r.total_lost, skipped))?;
        let expected = r.highest.wrapping_sub(highest);
        if expected == 0 || expected >= 0x8000_0000 {
            return None;
        }
        // The cumulative count is 24-bit signed (duplicates can make it go down).
        let lost = r.total_lost.wrapping_sub(total) & 0xff_ffff;
        let lost = if lost >= 0x80_0000 {
            i64::from(lost) - 0x100_0000
        } else {
            i64::from(lost)
        };
        let expected = i64::from(expected);
        let before_us = i64::try_from(skipped.saturating_sub(gaps))
            .unwrap_or(i64::MAX)
            .min(expected);
        let ours = expected - before_us;
        if ours == 0 {
            return None;
        }
        let lost = (lost - before_us).clamp(0, ours);
        u8::try_from(lost * 256 / ours).ok().or(Some(u8::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(total_lost: u32, highest: u32) -> LossReport {
        LossReport {
            fraction: 0,
            total_lost,
            highest,
        }
    }

    #[test]
    fn losses_before_us_are_not_the_players() {
        let mut d = DownstreamLoss::default();
        assert_eq!(d.report(rr(0, 1000), Some(0)), None);
        // 100 expected, 30 lost, all 30 gaps of the publisher: none of ours.
        assert_eq!(d.report(rr(30, 1100), Some(30)), Some(0));
        // 100 expected, 40 lost, 10 before us: 30 of 90 ours (85 of 256).
        assert_eq!(d.report(rr(70, 1200), Some(40)), Some(85));
        // Retransmissions repaired more than was lost: none, not negative.
        assert_eq!(d.report(rr(60, 1300), Some(40)), Some(0));
        // Everything expected was a gap before us: nothing to say.
        assert_eq!(d.report(rr(160, 1400), Some(140)), None);
        // Nothing new.
        assert_eq!(d.report(rr(160, 1400), Some(140)), None);
        // The sequence wraps into the next cycle; the 24-bit count wraps too.
        let mut d = DownstreamLoss::default();
        d.report(rr(0xff_fff8, 0x1_fff0), Some(5));
        assert_eq!(d.report(rr(0, 0x2_0010), Some(5)), Some(64));
        // A sink with the source's numbering: the report as it is.
        assert_eq!(
            DownstreamLoss::default().report(
                LossReport {
                    fraction: 77,
                    ..rr(0, 0)
                },
                None
            ),
            Some(77)
        );
    }

    const LAYERS: [u64; 3] = [150_000, 500_000, 1_500_000];

    #[test]
    fn no_feedback_no_limit() {
        let mut e = Estimator::default();
        let t0 = Instant::now();
        assert_eq!(e.cap(t0, &LAYERS), None);
        assert_eq!(e.cap(t0, &[]), None);
    }

    #[test]
    fn a_low_estimate_caps_at_once_and_the_way_up_takes_seconds_per_layer() {
        let mut e = Estimator::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 85 % of 400 kbps: only the low layer fits.
        e.remb(at(0), 400_000);
        assert_eq!(e.cap(at(0), &LAYERS), Some(0));
        // 150 kbps: nothing fits, the low layer still plays.
        e.remb(at(500), 150_000);
        assert_eq!(e.cap(at(500), &LAYERS), Some(0));
        // The link recovers: up one layer only after UP_AFTER, then the next.
        let mut got = Vec::new();
        for s in 1..=10u64 {
            e.remb(at(s * 1000), 5_000_000);
            got.push(e.cap(at(s * 1000), &LAYERS));
        }
        assert_eq!(
            got,
            vec![
                Some(0),
                Some(0),
                Some(0),
                Some(1),
                Some(1),
                Some(1),
                Some(1),
                None,
                None,
                None
            ]
        );
        // And down again at once.
        e.remb(at(11_000), 700_000);
        assert_eq!(e.cap(at(11_000), &LAYERS), Some(1));
    }

    #[test]
    fn an_estimate_that_follows_the_received_rate_climbs_and_a_dip_waits() {
        let mut e = Estimator::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Far below the top layer: down at once, to what fits.
        e.remb(at(0), 200_000);
        assert_eq!(e.cap(at(0), &LAYERS), Some(0));
        // 1.3 times the low layer's rate: the receiver keeps up; up after UP_AFTER,
        // although the middle layer itself does not fit the estimate.
        let mut got = Vec::new();
        for s in 1..=5u64 {
            // Once the middle layer flows, the estimate follows it up.
            let bps = if s < 5 { 195_000 } else { 520_000 };
            e.remb(at(s * 1000), bps);
            got.push(e.cap(at(s * 1000), &LAYERS));
        }
        assert_eq!(got, vec![Some(0), Some(0), Some(0), Some(1), Some(1)]);
        // A short dip below the middle layer (not half of it) waits DOWN_AFTER.
        e.remb(at(6000), 400_000);
        assert_eq!(e.cap(at(6000), &LAYERS), Some(1));
        e.remb(at(6500), 550_000);
        assert_eq!(
            e.cap(at(6500), &LAYERS),
            Some(1),
            "over again: no step down"
        );
        e.remb(at(7000), 400_000);
        assert_eq!(e.cap(at(7000), &LAYERS), Some(1));
        e.remb(at(8000), 400_000);
        assert_eq!(e.cap(at(8000), &LAYERS), Some(1));
        e.remb(at(9000), 400_000);
        assert_eq!(e.cap(at(9000), &LAYERS), Some(0), "below for DOWN_AFTER");
    }

    #[test]
    fn heavy_loss_steps_down_and_holds() {
        let mut e = Estimator::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(e.cap(at(0), &LAYERS), None);
        // 5 % loss: nothing changes.
        e.loss(13);
        assert_eq!(e.cap(at(1000), &LAYERS), None);
        // 30 % loss: one layer down per report.
        e.loss(77);
        assert_eq!(e.cap(at(2000), &LAYERS), Some(1));
        e.loss(77);
        assert_eq!(e.cap(at(3000), &LAYERS), Some(0));
        // The loss is over: held down for HOLD_AFTER_LOSS, then up step by step.
        let mut first_up = None;
        for s in 4..=30u64 {
            if e.cap(at(s * 1000), &LAYERS) == Some(1) && first_up.is_none() {
                first_up = Some(s);
            }
        }
        let first_up = first_up.expect("back up");
        assert!(first_up >= 3 + HOLD_AFTER_LOSS.as_secs(), "{first_up}");
        assert_eq!(e.cap(at(31_000), &LAYERS), None, "all the way up");
    }

    #[test]
    fn heavy_loss_without_layers_means_key_frames_only_for_a_while() {
        let mut t = Thinning::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!t.report(at(0), Some(13)));
        assert!(t.report(at(1), Some(77)));
        assert!(t.report(at(2), None));
        assert!(t.report(at(8), Some(0)));
        assert!(
            !t.report(at(9), Some(0)),
            "HOLD_AFTER_LOSS after the last lossy report"
        );
    }

    #[test]
    fn a_stale_estimate_no_longer_caps() {
        let mut e = Estimator::default();
        let t0 = Instant::now();
        e.remb(t0, 100_000);
        assert_eq!(e.estimate(t0), Some(100_000));
        assert_eq!(e.estimate(t0 + STALE), None);
    }
}
