//! Who is talking: RFC 6464 audio levels in, a smoothed "talking" state per stream
//! out (`Speakers`), and per room the dominant speaker with hysteresis
//! (`Dominance`). Pure: time is passed in, nothing is read from a clock.
//!
//! A publisher's audio packets carry the level of their audio in the
//! `urn:ietf:params:rtp-hdrext:ssrc-audio-level` header extension: 0..=127 as -dBov
//! (0 is the loudest, 127 silence) and a voice-activity flag. Browsers set the flag
//! from their own voice detector, which is not always on, so the detector here uses
//! the level alone: a packet is *voiced* when its level is at most `VOICED_DBOV`.
//!
//! `Speakers` collects the packets of each tracked stream in 100 ms buckets and
//! looks at them every 100 ms (`handle_timeout`). A stream starts talking when at
//! least half of its packets of the last 300 ms were voiced, and stops when fewer
//! than a fifth of those of the last 500 ms were (a hangover of about half a second,
//! so the pauses between words do not count). Its loudness is the mean of
//! `127 - level` over the last 500 ms. It reports (`poll_activity`) each change, and
//! while talking, its loudness every `REFRESH`, so whoever decides the dominant
//! speaker can compare talkers as time passes without a timer of its own.
//!
//! Local sources (the device's microphone) put the level of each frame, computed from
//! its samples (`level_of`), into their packets the same way (`set_level`, under
//! `LOCAL_LEVEL_ID`), so one detector serves every source.
//!
//! `Dominance` keeps the streams of one room and the dominant one. Nobody dominant,
//! or the dominant one not talking: the loudest talker takes over at once. The
//! dominant one talking: another takes over only when it has been louder by
//! `OVERTAKE_MARGIN` for `OVERTAKE_AFTER`. At most one change per `MIN_GAP`, and none
//! when everybody is silent (the last speaker stays), so a room sees a few changes a
//! second at the very most.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtp::header::{Extension, Header};

/// A packet whose level is at most this (-dBov) is voiced: louder than -50 dBov.
pub const VOICED_DBOV: u8 = 50;
/// The width of one bucket of packets, and how often `Speakers` looks at them.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets kept: the window of the stop rule and of the loudness (500 ms).
const WINDOW: usize = 5;
/// Buckets of the start rule (300 ms).
const START_WINDOW: usize = 3;
/// Fewer packets than this in the start window are not enough to start talking.
const START_MIN_PACKETS: u32 = 5;
/// A talking stream's loudness is reported this often.
pub const REFRESH: Duration = Duration::from_millis(300);
/// How much louder (in dB) another talker must be to take over from a talking one.
pub const OVERTAKE_MARGIN: u8 = 6;
/// How long it must stay that much louder.
pub const OVERTAKE_AFTER: Duration = Duration::from_secs(1);
/// At most one change of the dominant speaker this often.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// One packet's audio level (RFC 6464 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// -dBov, 0..=127: 0 is the loudest, 127 silence (or muted).
    pub dbov: u8,
    /// The sender's voice-activity flag (V).
    pub voice: bool,
}

/// The audio level a packet carries under extension `id` (one-byte or two-byte
/// header form, as the RTP parser already split them). `None` without it or when the
/// extension is empty. No allocation: the parsed extension is only looked at.
pub fn audio_level(header: &Header, id: u8) -> Option<Level> {
    if !header.extension {
        return None;
    }
    let ext = header.extensions.iter().find(|e| e.id == id)?;
    let b = *ext.payload.first()?;
    Some(Level {
        dbov: b & 0x7f,
        voice: b & 0x80 != 0,
    })
}

/// The extension id local sources put their level under (one-byte form; the packets
/// of local sources are never sent as they are, players get theirs rewritten).
pub const LOCAL_LEVEL_ID: u8 = 1;

/// The level of a frame of samples (RFC 6464: the RMS in -dBov, 127 for digital
/// silence; a full-scale sine is about -3 dBov).
pub fn level_of(samples: &[i16]) -> Level {
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / samples.len().max(1) as f64).sqrt() / 32768.0;
    let dbov = if rms > 0.0 {
        (-20.0 * rms.log10()).round().clamp(0.0, 127.0) as u8
    } else {
        127
    };
    Level { dbov, voice: false }
}

/// Puts `level` into a packet's header under `id` (one-byte header form), replacing
/// the extensions it had.
pub fn set_level(header: &mut Header, id: u8, level: Level) {
    header.extension = true;
    header.extension_profile = 0xBEDE;
    header.extensions.clear();
    header.extensions.push(Extension {
        id,
        payload: Bytes::copy_from_slice(
            &[level.dbov.min(127) | if level.voice { 0x80 } else { 0 }],
        ),
    });
}

/// A change of a stream's talking state, or a talking stream's loudness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub stream: String,
    pub talking: bool,
    /// Mean `127 - level` over the last 500 ms: 0 silent, 127 full scale.
    pub loudness: u8,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    packets: u32,
    voiced: u32,
    loudness: u32,
}

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        self.packets += other.packets;
        self.voiced += other.voiced;
        self.loudness += other.loudness;
    }
}

/// One stream's detector.
#[derive(Debug)]
struct Talk {
    stream: String,
    /// The negotiated id of the audio-level extension.
    ext: u8,
    /// The bucket being filled.
    open: Bucket,
    /// Closed buckets, the newest last.
    closed: VecDeque<Bucket>,
    talking: bool,
    last_report: Option<Instant>,
}

impl Talk {
    fn new(stream: String, ext: u8) -> Talk {
        Talk {
            stream,
            ext,
            open: Bucket::default(),
            closed: VecDeque::with_capacity(WINDOW),
            talking: false,
            last_report: None,
        }
    }

    fn level(&mut self, level: Level) {
        let b = &mut self.open;
        b.packets = b.packets.saturating_add(1);
        b.voiced = b
            .voiced
            .saturating_add(u32::from(level.dbov <= VOICED_DBOV));
        b.loudness = b
            .loudness
            .saturating_add(u32::from(127 - level.dbov.min(127)));
    }

    fn sum(&self, buckets: usize) -> Bucket {
        let mut sum = Bucket::default();
        for b in self.closed.iter().rev().take(buckets) {
            sum.add(b);
        }
        sum
    }

    /// Closes the open bucket; the report, if there is one.
    fn tick(&mut self, now: Instant) -> Option<Activity> {
        if self.closed.len() == WINDOW {
            self.closed.pop_front();
        }
        self.closed.push_back(std::mem::take(&mut self.open));
        let was = self.talking;
        if !self.talking {
            let s = self.sum(START_WINDOW);
            self.talking = s.packets >= START_MIN_PACKETS && s.voiced * 2 >= s.packets;
        } else {
            let s = self.sum(WINDOW);
            self.talking = s.packets > 0 && s.voiced * 5 >= s.packets;
        }
        let due = self
            .last_report
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH);
        if was == self.talking && !(self.talking && due) {
            return None;
        }
        self.last_report = Some(now);
        Some(Activity {
            stream: self.stream.clone(),
            talking: self.talking,
            loudness: self.loudness(),
        })
    }

    fn loudness(&self) -> u8 {
        let s = self.sum(WINDOW);
        (s.loudness / s.packets.max(1)).min(127) as u8
    }
}

/// The talking detectors of the streams whose packets carry audio levels, keyed by
/// whatever the caller knows a stream by (a peer).
#[derive(Debug)]
pub struct Speakers<K> {
    talks: HashMap<K, Talk>,
    next_tick: Option<Instant>,
    out: VecDeque<Activity>,
}

impl<K> Default for Speakers<K> {
    fn default() -> Self {
        Speakers {
            talks: HashMap::new(),
            next_tick: None,
            out: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq> Speakers<K> {
    /// Tracks `stream`, whose audio packets carry their level under extension `ext`.
    pub fn add(&mut self, now: Instant, key: K, stream: &str, ext: u8) {
        self.talks.insert(key, Talk::new(stream.to_owned(), ext));
        self.next_tick.get_or_insert(now + BUCKET);
    }

    /// Forgets a stream. One that was talking is reported silent, so nobody keeps it
    /// as a talker.
    pub fn remove(&mut self, key: &K) {
        if let Some(t) = self.talks.remove(key) {
            if t.talking {
                self.out.push_back(Activity {
                    stream: t.stream,
                    talking: false,
                    loudness: 0,
                });
            }
        }
        if self.talks.is_empty() {
            self.next_tick = None;
        }
    }

    pub fn is_tracked(&self, key: &K) -> bool {
        self.talks.contains_key(key)
    }

    /// An audio packet of the stream of `key` (ignored when it is not tracked or the
    /// packet has no level).
    #[inline]
    pub fn packet(&mut self, key: &K, header: &Header) {
        if let Some(t) = self.talks.get_mut(key) {
            if let Some(level) = audio_level(header, t.ext) {
                t.level(level);
            }
        }
    }

    /// A level of the stream of `key` (levels from elsewhere than an RTP header).
    pub fn level(&mut self, key: &K, level: Level) {
        if let Some(t) = self.talks.get_mut(key) {
            t.level(level);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_tick else {
            return;
        };
        if now < due {
            return;
        }
        // A late call counts as one tick: buckets are about packets, not wall time.
        self.next_tick = Some(now.max(due) + BUCKET);
        let mut reports: Vec<Activity> = self
            .talks
            .values_mut()
            .filter_map(|t| t.tick(now))
            .collect();
        reports.sort_by(|a, b| a.stream.cmp(&b.stream));
        self.out.extend(reports);
    }

    pub fn poll_activity(&mut self) -> Option<Activity> {
        self.out.pop_front()
    }
}

#[derive(Debug, Clone, Copy)]
struct Talker {
    talking: bool,
    loudness: u8,
    /// Since when it has been louder than the dominant speaker by the margin.
    louder_since: Option<Instant>,
}

/// The dominant speaker of one room.
#[derive(Debug, Default)]
pub struct Dominance {
    talkers: HashMap<String, Talker>,
    current: Option<String>,
    changed_at: Option<Instant>,
}

impl Dominance {
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// A report about `stream`; the new dominant speaker when it changes.
    pub fn update(&mut self, now: Instant, a: &Activity) -> Option<String> {
        let t = self.talkers.entry(a.stream.clone()).or_insert(Talker {
            talking: false,
            loudness: 0,
            louder_since: None,
        });
        t.talking = a.talking;
        t.loudness = a.loudness;
        self.decide(now)
    }

    /// The stream ended. When it was the dominant one there is none until somebody
    /// talks (no change is reported for that).
    pub fn remove(&mut self, stream: &str) {
        self.talkers.remove(stream);
        if self.current.as_deref() == Some(stream) {
            self.current = None;
        }
    }

    fn decide(&mut self, now: Instant) -> Option<String> {
        let current = self
            .current
            .as_ref()
            .and_then(|c| self.talkers.get(c))
            .copied()
            .filter(|c| c.talking);
        // Who has been louder than a talking dominant speaker, and since when.
        for (name, t) in self.talkers.iter_mut() {
            let louder = match current {
                Some(c) => {
                    Some(name) != self.current.as_ref()
                        && t.talking
                        && t.loudness >= c.loudness.saturating_add(OVERTAKE_MARGIN)
                }
                None => false,
            };
            if !louder {
                t.louder_since = None;
            } else if t.louder_since.is_none() {
                t.louder_since = Some(now);
            }
        }
        if self
            .changed_at
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_GAP)
        {
            return None;
        }
        let eligible = |t: &Talker| match current {
            None => t.talking,
            Some(_) => t
                .louder_since
                .is_some_and(|since| now.saturating_duration_since(since) >= OVERTAKE_AFTER),
        };
        // The loudest eligible one; ties go to the smaller name (deterministic).
        let next = self
            .talkers
            .iter()
            .filter(|(name, t)| Some(*name) != self.current.as_ref() && eligible(t))
            .max_by(|(an, a), (bn, b)| a.loudness.cmp(&b.loudness).then(bn.cmp(an)))
            .map(|(name, _)| name.clone())?;
        self.current = Some(next.clone());
        self.changed_at = Some(now);
        for t in self.talkers.values_mut() {
            t.louder_since = None;
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::rtp::header::Extension;

    const EXT: u8 = 3;

    fn header(dbov: u8, voice: bool) -> Header {
        Header {
            version: 2,
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![
                Extension {
                    id: 1,
                    payload: Bytes::from_static(&[9, 9, 9]),
                },
                Extension {
                    id: EXT,
                    payload: Bytes::copy_from_slice(&[dbov | if voice { 0x80 } else { 0 }]),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_frames_level_is_its_rms_in_dbov_and_written_where_it_is_read() {
        let sine = |amplitude: f64| -> Vec<i16> {
            (0..960)
                .map(|i| ((i as f64 * 0.13).sin() * amplitude * 32767.0) as i16)
                .collect()
        };
        assert_eq!(level_of(&sine(1.0)).dbov, 3);
        assert_eq!(level_of(&sine(0.1)).dbov, 23);
        assert_eq!(level_of(&[0; 960]).dbov, 127);
        assert_eq!(level_of(&[1; 960]).dbov, 90);
        assert_eq!(level_of(&[]).dbov, 127);
        let mut h = Header::default();
        set_level(&mut h, LOCAL_LEVEL_ID, level_of(&sine(0.1)));
        assert_eq!(
            audio_level(&h, LOCAL_LEVEL_ID),
            Some(Level {
                dbov: 23,
                voice: false
            })
        );
    }

    #[test]
    fn the_level_is_read_under_the_negotiated_id_only() {
        assert_eq!(
            audio_level(&header(10, true), EXT),
            Some(Level {
                dbov: 10,
                voice: true
            })
        );
        assert_eq!(
            audio_level(&header(127, false), EXT),
            Some(Level {
                dbov: 127,
                voice: false
            })
        );
        assert_eq!(audio_level(&header(10, true), 4), None);
        let mut empty = header(10, true);
        empty.extensions[1].payload = Bytes::new();
        assert_eq!(audio_level(&empty, EXT), None);
        let mut off = header(10, true);
        off.extension = false;
        assert_eq!(audio_level(&off, EXT), None);
    }

    /// A simulated publisher: one packet every 20 ms with the level `dbov(t)`, ms
    /// since the start; the detector ticks as a driver would. Reports with their time.
    struct Sim {
        speakers: Speakers<u32>,
        start: Instant,
        now: Instant,
        reports: Vec<(u64, Activity)>,
    }

    impl Sim {
        fn new(streams: &[(u32, &str)]) -> Sim {
            let start = Instant::now();
            let mut speakers = Speakers::default();
            for (key, name) in streams {
                speakers.add(start, *key, name, EXT);
            }
            Sim {
                speakers,
                start,
                now: start,
                reports: Vec::new(),
            }
        }

        fn run(&mut self, until_ms: u64, mut dbov: impl FnMut(u32, u64) -> Option<u8>) {
            while self.now < self.start + Duration::from_millis(until_ms) {
                self.now += Duration::from_millis(20);
                let ms = (self.now - self.start).as_millis() as u64;
                let keys: Vec<u32> = self.speakers.talks.keys().copied().collect();
                for key in keys {
                    if let Some(d) = dbov(key, ms) {
                        self.speakers.packet(&key, &header(d, false));
                    }
                }
                if self.speakers.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.speakers.handle_timeout(self.now);
                }
                while let Some(a) = self.speakers.poll_activity() {
                    self.reports.push((ms, a));
                }
            }
        }
    }

    #[test]
    fn a_loud_stream_talks_within_300_ms_and_a_silent_one_never() {
        let mut sim = Sim::new(&[(1, "loud"), (2, "quiet")]);
        sim.run(2000, |key, _| Some(if key == 1 { 10 } else { 127 }));
        let first = sim
            .reports
            .iter()
            .find(|(_, a)| a.stream == "loud")
            .unwrap();
        assert!(first.0 <= 300, "talking after {} ms", first.0);
        assert!(first.1.talking);
        assert_eq!(first.1.loudness, 117);
        assert!(sim.reports.iter().all(|(_, a)| a.stream != "quiet"));
        // While talking, a refresh every 300 ms: not a flood.
        let loud = sim
            .reports
            .iter()
            .filter(|(_, a)| a.stream == "loud")
            .count();
        assert!((5..=8).contains(&loud), "{loud} reports in 2 s");
    }

    #[test]
    fn pauses_between_words_do_not_stop_talking_but_silence_does() {
        let mut sim = Sim::new(&[(1, "a")]);
        // Speech: 240 ms voiced, 160 ms pause, repeated for 2 s; then silence.
        sim.run(3000, |_, ms| {
            Some(if ms < 2000 && ms % 400 < 240 { 20 } else { 110 })
        });
        let states: Vec<(u64, bool)> = sim
            .reports
            .iter()
            .filter(|(_, a)| a.stream == "a")
            .map(|(ms, a)| (*ms, a.talking))
            .collect();
        let on = states.iter().position(|s| s.1).unwrap();
        let off = states.iter().position(|s| !s.1).unwrap();
        assert!(on < off, "{states:?}");
        // It stops after the hangover, not at the first pause.
        let off_ms = states[off].0;
        assert!(
            (2300..=2700).contains(&off_ms),
            "stopped at {off_ms} ms: {states:?}"
        );
        assert!(states[off + 1..].is_empty(), "{states:?}");
    }

    #[test]
    fn a_stream_that_stops_sending_stops_talking_and_removal_reports_silence() {
        let mut sim = Sim::new(&[(1, "a"), (2, "b")]);
        sim.run(1000, |_, ms| (ms < 500).then_some(10));
        let a: Vec<bool> = sim
            .reports
            .iter()
            .filter(|(_, r)| r.stream == "a")
            .map(|(_, r)| r.talking)
            .collect();
        assert_eq!(a.first(), Some(&true));
        assert_eq!(a.last(), Some(&false));
        sim.reports.clear();
        sim.run(1500, |_, _| Some(10));
        assert!(sim
            .reports
            .iter()
            .any(|(_, r)| r.stream == "b" && r.talking));
        sim.speakers.remove(&2);
        assert_eq!(
            sim.speakers.poll_activity().map(|a| (a.stream, a.talking)),
            Some(("b".to_owned(), false))
        );
        sim.speakers.remove(&1);
        assert_eq!(sim.speakers.poll_timeout(), None);
    }

    /// Runs a room: streams per `dbov`, every report into a `Dominance`; the changes
    /// with their time.
    fn room(
        streams: &[(u32, &str)],
        until_ms: u64,
        dbov: impl FnMut(u32, u64) -> Option<u8>,
    ) -> Vec<(u64, String)> {
        let mut sim = Sim::new(streams);
        sim.run(until_ms, dbov);
        let mut d = Dominance::default();
        sim.reports
            .iter()
            .filter_map(|(ms, a)| {
                d.update(sim.start + Duration::from_millis(*ms), a)
                    .map(|s| (*ms, s))
            })
            .collect()
    }

    #[test]
    fn the_loud_one_becomes_dominant_within_a_second_and_a_swap_follows() {
        let changes = room(&[(1, "a"), (2, "b")], 6000, |key, ms| {
            let a_loud = ms < 3000;
            Some(if (key == 1) == a_loud { 10 } else { 127 })
        });
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].1, "a");
        assert!(changes[0].0 <= 1000, "{changes:?}");
        assert_eq!(changes[1].1, "b");
        assert!(
            (3000..=4000).contains(&changes[1].0),
            "the swap took over a second: {changes:?}"
        );
    }

    #[test]
    fn a_louder_talker_takes_over_only_after_a_second_and_an_interjection_does_not() {
        // a talks at -30 dBov all along; b at -10 dBov from 2 s on, c at -10 dBov for
        // 400 ms at 1 s.
        let changes = room(&[(1, "a"), (2, "b"), (3, "c")], 5000, |key, ms| {
            Some(match key {
                1 => 30,
                2 if ms >= 2000 => 10,
                3 if (1000..1400).contains(&ms) => 10,
                _ => 127,
            })
        });
        let names: Vec<&str> = changes.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(names, ["a", "b"], "{changes:?}");
        assert!(
            (3000..=3800).contains(&changes[1].0),
            "overtaken at {} ms",
            changes[1].0
        );
    }

    #[test]
    fn silence_keeps_the_last_speaker_and_changes_are_rate_limited() {
        // a and b alternate every 300 ms: at most one change a second.
        let changes = room(&[(1, "a"), (2, "b")], 6000, |key, ms| {
            let a_turn = (ms / 300) % 2 == 0;
            Some(if (key == 1) == a_turn { 10 } else { 127 })
        });
        for w in changes.windows(2) {
            assert!(w[1].0 - w[0].0 >= 1000, "{changes:?}");
        }
        // Everybody silent after a spoke: a stays (no change reported).
        let changes = room(&[(1, "a"), (2, "b")], 4000, |key, ms| {
            Some(if key == 1 && ms < 1000 { 10 } else { 127 })
        });
        assert_eq!(changes.len(), 1, "{changes:?}");
    }

    #[test]
    fn a_removed_dominant_speaker_leaves_the_place_to_the_next_talker() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let act = |s: &str, talking: bool, loudness: u8| Activity {
            stream: s.into(),
            talking,
            loudness,
        };
        let mut d = Dominance::default();
        assert_eq!(d.update(at(0), &act("a", true, 100)), Some("a".into()));
        assert_eq!(d.update(at(100), &act("b", true, 90)), None);
        d.remove("a");
        assert_eq!(d.current(), None);
        assert_eq!(d.update(at(1200), &act("b", true, 90)), Some("b".into()));
        assert_eq!(d.current(), Some("b"));
    }
}
