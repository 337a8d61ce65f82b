//! Simulcast layers as the stream core sees them: a source's video may come in up to a
//! few layers (the same picture at different sizes and bitrates, each its own SSRC),
//! ordered low → high. Every sink gets exactly one of them: a target chosen from its
//! preference, its bandwidth cap and the layers that are arriving, and the current
//! one it is fed, which becomes the target only where a key frame of the target
//! starts. Pure: no clock, no I/O.

/// What a player asked for (the web app: `Low` for a small tile, `High` for the
/// focused one); `Auto` is the highest layer its bandwidth allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    #[default]
    Auto,
    Low,
    Medium,
    High,
}

/// A layer that sent nothing for this long counts as stopped (a browser drops its
/// upper layers when its uplink or CPU cannot carry them).
pub const LAYER_IDLE_MS: u64 = 1500;

/// The layer a sink should get: its preference, lowered to its cap, then the highest
/// arriving layer at or below that (or the lowest arriving one above it, when none
/// below arrives). `active[i]`: layer `i` is arriving.
pub fn choose(preference: Preference, cap: Option<usize>, active: &[bool]) -> usize {
    let Some(top) = active.len().checked_sub(1) else {
        return 0;
    };
    let wanted = match preference {
        Preference::Low => 0,
        Preference::Medium => 1.min(top),
        Preference::High | Preference::Auto => top,
    };
    let wanted = cap.map_or(wanted, |c| wanted.min(c));
    (0..=wanted)
        .rev()
        .find(|&i| active[i])
        .or_else(|| (wanted + 1..=top).find(|&i| active[i]))
        .unwrap_or(wanted)
}

/// One sink's layer state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkLayer {
    pub preference: Preference,
    /// The highest layer its bandwidth allows (`None`: no limit known).
    pub cap: Option<usize>,
    /// The layer it is fed now (`None`: none yet).
    pub current: Option<usize>,
    /// The layer it should be fed.
    pub target: usize,
    /// Only key frames (a player that cannot keep up with a stream without layers).
    pub key_frames_only: bool,
    /// The timestamp of the key frame being passed in that mode.
    key_ts: Option<u32>,
    /// Every frame again from the next key frame.
    pub resume: bool,
}

impl SinkLayer {
    /// Whether a video packet of `layer` goes to this sink (`key`: the packet starts
    /// a key frame). The sink stays on its current layer until a key frame of the
    /// target starts, and switches there.
    pub fn forwards(&mut self, layer: usize, key: bool) -> bool {
        if layer == self.target && self.current != Some(layer) {
            if key {
                self.current = Some(layer);
            }
            return key;
        }
        self.current == Some(layer)
    }

    /// Whether a video packet passes the key-frames-only mode (`key`: it starts a key
    /// frame; `ts`: its timestamp): when on, only the packets of key frames do.
    pub fn passes(&mut self, key: bool, ts: u32) -> bool {
        if !self.key_frames_only {
            self.key_ts = None;
            return true;
        }
        if key {
            self.key_ts = Some(ts);
            if self.resume {
                // Every frame from this key frame on.
                self.key_frames_only = false;
                self.resume = false;
                self.key_ts = None;
                return true;
            }
        }
        self.key_ts == Some(ts)
    }

    /// A switch is wanted: a key frame of the target is needed.
    pub fn switching(&self) -> bool {
        self.current != Some(self.target)
    }

    /// Recomputes the target; `true` when it changed to a layer the sink is not fed
    /// (a key frame of it is needed).
    pub fn retarget(&mut self, active: &[bool]) -> bool {
        let target = choose(self.preference, self.cap, active);
        let changed = target != self.target;
        self.target = target;
        changed && self.switching()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_follows_preference_cap_and_arriving_layers() {
        let all = [true, true, true];
        assert_eq!(choose(Preference::Auto, None, &all), 2);
        assert_eq!(choose(Preference::High, None, &all), 2);
        assert_eq!(choose(Preference::Medium, None, &all), 1);
        assert_eq!(choose(Preference::Low, None, &all), 0);
        assert_eq!(choose(Preference::High, Some(1), &all), 1);
        assert_eq!(choose(Preference::Low, Some(2), &all), 0);
        // The top layer stopped: the highest arriving one below it.
        assert_eq!(choose(Preference::High, None, &[true, true, false]), 1);
        // Only the top arrives: a low preference still gets a picture.
        assert_eq!(choose(Preference::Low, None, &[false, false, true]), 2);
        // Nothing arrives yet: the wish as it is.
        assert_eq!(choose(Preference::Auto, None, &[false, false, false]), 2);
        assert_eq!(choose(Preference::Auto, None, &[]), 0);
    }

    #[test]
    fn a_sink_switches_only_at_a_key_frame_of_its_target() {
        let mut s = SinkLayer::default();
        assert!(s.retarget(&[true, true, true]));
        assert_eq!((s.current, s.target), (None, 2));
        assert!(!s.forwards(0, true), "not its layer");
        assert!(!s.forwards(2, false), "no key frame yet");
        assert!(s.forwards(2, true));
        assert!(s.forwards(2, false) && !s.switching());
        // Asked down: the high layer flows until the low one's key frame.
        s.preference = Preference::Low;
        assert!(s.retarget(&[true, true, true]));
        assert!(s.switching());
        assert!(s.forwards(2, false));
        assert!(!s.forwards(0, false));
        assert!(!s.forwards(1, true));
        assert!(s.forwards(0, true));
        assert!(!s.forwards(2, true), "the old layer stops at the switch");
        assert!(!s.retarget(&[true, true, true]), "no change");
    }

    #[test]
    fn key_frames_only_passes_whole_key_frames() {
        let mut s = SinkLayer::default();
        assert!(s.passes(false, 1));
        s.key_frames_only = true;
        assert!(!s.passes(false, 2));
        assert!(s.passes(true, 3), "a key frame's first packet");
        assert!(s.passes(false, 3), "and the rest of it");
        assert!(!s.passes(false, 4));
        // Resuming waits for the next key frame.
        s.resume = true;
        assert!(!s.passes(false, 5));
        assert!(s.passes(true, 6));
        assert!(s.passes(false, 7) && !s.key_frames_only);
    }
}
