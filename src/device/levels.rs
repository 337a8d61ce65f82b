//! How loud each remote stream the device's speaker plays is right now: written by
//! the speaker thread (a few times a second), read by the room display's route
//! (`/client/levels`) to highlight who is talking. Bounded: one entry per stream
//! being played, removed when the stream ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One stream's level: its name and loudness (0.0 silence … 1.0 full scale, the RMS
/// of the last ~100 ms on a logarithmic scale, see `loudness`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Level {
    pub stream: String,
    pub level: f32,
    /// True while the stream carries speech-loud audio (above `TALKING`).
    pub talking: bool,
}

/// Above this (about -42 dBFS RMS) a stream counts as talking.
pub const TALKING: f32 = 0.3;

/// A cheap handle on the levels; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    inner: Arc<Mutex<BTreeMap<String, f32>>>,
}

impl Levels {
    pub fn set(&self, stream: &str, level: f32) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(stream) {
            Some(l) => *l = level,
            None => {
                map.insert(stream.to_owned(), level);
            }
        }
    }

    pub fn remove(&self, stream: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(stream);
    }

    /// Every stream being played now, by name.
    pub fn snapshot(&self) -> Vec<Level> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(stream, &level)| Level {
                stream: stream.clone(),
                level,
                talking: level >= TALKING,
            })
            .collect()
    }
}

/// An RMS (of samples in -1.0..=1.0) as a 0..1 loudness: -60 dBFS and below is 0,
/// 0 dBFS is 1, linear in dB between.
pub fn loudness(rms: f32) -> f32 {
    if rms <= 1e-6 {
        return 0.0;
    }
    let db = 20.0 * rms.log10();
    ((db + 60.0) / 60.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_set_listed_and_removed() {
        let levels = Levels::default();
        levels.set("room-b", 0.5);
        levels.set("room-a", 0.1);
        levels.set("room-b", 0.6);
        let snap = levels.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].stream, "room-a");
        assert!(!snap[0].talking);
        assert!(snap[1].talking);
        levels.remove("room-a");
        assert_eq!(levels.snapshot().len(), 1);
    }

    #[test]
    fn loudness_is_logarithmic() {
        assert_eq!(loudness(0.0), 0.0);
        assert!((loudness(1.0) - 1.0).abs() < 1e-6);
        // -20 dBFS (a 0.1 RMS tone) is two thirds of the scale.
        assert!((loudness(0.1) - 2.0 / 3.0).abs() < 1e-3);
        assert_eq!(loudness(0.0001), 0.0);
    }
}
