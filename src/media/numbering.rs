//! A sink's own numbering of one track: its payload type and SSRC, and sequence
//! numbers and timestamps that continue across a change of the source's SSRC.

/// How one sink numbers one track.
#[derive(Debug, Clone)]
pub struct Renumber {
    pub(crate) payload_type: u8,
    pub(crate) ssrc: u32,
    /// Offsets from the current source SSRC's numbering to ours.
    map: Option<(u32, u16, u32)>,
    next_seq: u16,
    next_ts: u32,
    /// Timestamp step assumed across a source change (one frame / one 20 ms packet).
    ts_step: u32,
    /// Packets of the source were withheld (a mute): the next one continues the
    /// sequence numbers where they left off, the timestamps with the source's clock.
    resync: bool,
    /// Sequence numbers skipped so far: gaps of the source (lost before they reached
    /// us) passed on, which the sink's receiver reports count as lost too.
    skipped: u64,
    /// The latest gap: the number after it and `skipped` before it.
    last_gap: Option<(u16, u64)>,
}

impl Renumber {
    /// The sink's payload type and SSRC, where its numbering starts (random, for a
    /// WebRTC player) and the timestamp step assumed across a source change.
    pub fn new(payload_type: u8, ssrc: u32, start_seq: u16, start_ts: u32, ts_step: u32) -> Self {
        Renumber {
            payload_type,
            ssrc,
            map: None,
            next_seq: start_seq,
            next_ts: start_ts,
            ts_step,
            resync: false,
            skipped: 0,
            last_gap: None,
        }
    }

    /// Packets of the current source are withheld from here on (a mute): the next
    /// packet given to `rewrite` gets the next sequence number, so the sink sees no
    /// gap, and its timestamp keeps the source's clock (the withheld time passes, A/V
    /// sync holds).
    pub fn resync(&mut self) {
        self.resync = true;
    }

    /// The sink's sequence number and timestamp for a source packet. A new source
    /// SSRC (a restarted camera, a re-publish into the same stream) continues where
    /// the sink's numbering left off, so its decoder sees one continuous stream.
    pub fn rewrite(&mut self, ssrc: u32, seq: u16, ts: u32) -> (u16, u32) {
        let (seq_offset, ts_offset) = match self.map {
            Some((source, _, to)) if source == ssrc && self.resync => {
                let so = self.next_seq.wrapping_sub(seq);
                self.map = Some((ssrc, so, to));
                (so, to)
            }
            Some((source, so, to)) if source == ssrc => (so, to),
            _ => {
                let so = self.next_seq.wrapping_sub(seq);
                let to = self.next_ts.wrapping_sub(ts);
                self.map = Some((ssrc, so, to));
                (so, to)
            }
        };
        self.resync = false;
        let out_seq = seq.wrapping_add(seq_offset);
        let out_ts = ts.wrapping_add(ts_offset);
        // Only forward progress moves the continuation point (retransmissions and
        // reordered packets do not).
        let gap = out_seq.wrapping_sub(self.next_seq);
        if gap < 0x8000 {
            if gap > 0 {
                self.last_gap = Some((out_seq, self.skipped));
                self.skipped += u64::from(gap);
            }
            self.next_seq = out_seq.wrapping_add(1);
            self.next_ts = out_ts.wrapping_add(self.ts_step);
        }
        (out_seq, out_ts)
    }

    /// Sequence numbers skipped up to `highest` (the highest a receiver report says
    /// it got): the latest gap is left out when it lies beyond, so a report that
    /// crossed the gap's packet on the way is not charged with it.
    pub fn skipped_through(&self, highest: u16) -> u64 {
        match self.last_gap {
            Some((after, before)) if (1..0x8000).contains(&after.wrapping_sub(highest)) => before,
            _ => self.skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(next_seq: u16, next_ts: u32) -> Renumber {
        Renumber::new(100, 1, next_seq, next_ts, 3000)
    }

    #[test]
    fn numbering_is_continuous_across_a_source_change() {
        let mut t = track(1000, 50_000);
        assert_eq!(t.rewrite(7, 40_000, 9_000), (1000, 50_000));
        assert_eq!(t.rewrite(7, 40_001, 12_000), (1001, 53_000));
        // Retransmission of an old packet: mapped, but the continuation stays.
        assert_eq!(t.rewrite(7, 40_000, 9_000), (1000, 50_000));
        // The source restarts with a new SSRC and numbering.
        assert_eq!(t.rewrite(8, 5, 123), (1002, 56_000));
        assert_eq!(t.rewrite(8, 6, 3123), (1003, 59_000));
    }

    #[test]
    fn a_resync_closes_the_gap_of_withheld_packets_and_keeps_the_clock() {
        let mut t = track(1000, 50_000);
        assert_eq!(t.rewrite(7, 100, 9_000), (1000, 50_000));
        assert_eq!(t.rewrite(7, 101, 12_000), (1001, 53_000));
        t.resync();
        // 102..=199 withheld; the timestamps went on for 98 frames.
        assert_eq!(t.rewrite(7, 200, 306_000), (1002, 347_000));
        assert_eq!(t.rewrite(7, 201, 309_000), (1003, 350_000));
    }

    #[test]
    fn gaps_of_the_source_are_counted_and_the_latest_only_once_reported() {
        let mut t = track(1000, 0);
        t.rewrite(7, 10, 0);
        t.rewrite(7, 11, 1);
        assert_eq!(t.skipped_through(1001), 0);
        // 12..=14 lost before us.
        assert_eq!(t.rewrite(7, 15, 2).0, 1005);
        // A report up to 1001..=1004 has not seen the gap close yet.
        assert_eq!(t.skipped_through(1001), 0);
        assert_eq!(t.skipped_through(1005), 3);
        assert_eq!(t.skipped_through(1006), 3);
        // A retransmission of 13 fills a hole: no progress, no new gap.
        t.rewrite(7, 13, 1);
        assert_eq!(t.skipped_through(1005), 3);
        // Withheld packets (a mute, key frames only) make no gap; a new SSRC neither.
        t.resync();
        t.rewrite(7, 40, 9);
        t.rewrite(9, 500, 9);
        assert_eq!(t.skipped_through(1010), 3);
    }

    #[test]
    fn numbering_wraps() {
        let mut t = track(65_535, u32::MAX);
        assert_eq!(t.rewrite(7, 10, 0), (65_535, u32::MAX));
        assert_eq!(t.rewrite(7, 11, 1), (0, 0));
    }
}
