//! What the records directory holds and how it is named, shared by the recorder, the
//! mixer, the HTTP listing and the retention policy. Pure apart from the file reads and
//! writes of its `load`/`store` functions.
//!
//! - A stream recording is `<dir>/<stream>-<UTC start>.mp4` (fragmented MP4) with a
//!   sidecar `<file>.json` (`RecordMeta`), written when it starts and rewritten when it
//!   ends: a sidecar without `ended` whose recorder is not running was cut short (a
//!   crash, a power cut); its file is still playable up to the last fragment.
//! - A room recording is the stream recordings of its streams plus a manifest
//!   `<dir>/<room>-<UTC start>.room.json` (`RoomManifest`): the room's timeline (start,
//!   end, each stream's file and offsets) and the state of its mix
//!   `<dir>/<room>-<UTC start>-mix.mp4` (with its own sidecar, kind `mix`).
//!
//! - A recording whose codec or picture size changes goes on in segments
//!   `<dir>/<stream>-<UTC start>-part2.mp4`, `-part3`, … (`segment_name`), each a valid
//!   file with its own sidecar.
//!
//! Names keep letters, digits, `-`, `_` and `.` of the stream or room name (others
//! become `_`, at most 64 bytes), so any Unicode name gives a safe, unique file name;
//! the JSON keeps the real name.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// One stream (`record: true`, or a stream of a recorded room).
    Stream,
    /// The offline mix of a recorded room.
    Mix,
}

/// The sidecar of one record file (`<file>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// The record's file name in the records directory (`alice-20261202T101500Z.mp4`).
    pub name: String,
    pub kind: RecordKind,
    pub room: String,
    /// The stream recorded (a stream record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Its publisher's login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC; `None` while recording (or cut short by a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why the recording stopped early (a full disk, a write error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One stream on a recorded room's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStream {
    pub stream: String,
    pub login: String,
    /// The stream record's file name.
    pub file: String,
    /// From the room's start to the first media of the file, in ms.
    pub start_ms: u64,
    /// From the room's start to the stream's end; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
}

/// Where a room's mix is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixState {
    /// The room still runs.
    Recording,
    /// Finalized: the mix is to be made (also after a restart).
    Pending,
    Done,
    Failed,
}

/// The manifest of a recorded room (`<room>-<UTC start>.room.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomManifest {
    pub room: String,
    /// RFC 3339, UTC.
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The room's life in ms, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub streams: Vec<RoomStream>,
    pub mix: MixState,
    /// The mix's file name (`<room>-<UTC start>-mix.mp4`).
    pub mix_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix_error: Option<String>,
}

/// Longest name part kept in a file name.
const MAX_NAME: usize = 64;

/// A stream or room name as a file-name part: letters, digits, `-`, `_`, `.` kept
/// (ASCII only), anything else `_`; never empty, never starting with `.`.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    (
        y,
        mo,
        d,
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis(),
    )
}

/// `20261202T101500Z`: the UTC start in a file name.
pub fn stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = parts(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `2026-12-02T10:15:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// A file name `<name>-<stamp><suffix>` not yet taken in `dir` (`-2`, `-3`, … added
/// before the suffix when it is).
pub fn unique_name(dir: &Path, name: &str, started: SystemTime, suffix: &str) -> String {
    let base = format!("{}-{}", sanitize(name), stamp(started));
    let mut candidate = format!("{base}{suffix}");
    let mut n = 2;
    while dir.join(&candidate).exists() || dir.join(format!("{candidate}.json")).exists() {
        candidate = format!("{base}-{n}{suffix}");
        n += 1;
    }
    candidate
}

/// The file of segment `n` (2, 3, …) of a stream recording whose first file is
/// `first`: `<first without .mp4>-part<n>.mp4` (`alice-20261202T101500Z-part2.mp4`). A
/// recording goes on in a new segment when its codec or picture size changes; `-part`
/// keeps these apart from `unique_name`'s `-2` (another recording started in the same
/// second). A name already taken in `dir` gets `-<k>` added like `unique_name`.
pub fn segment_name(dir: &Path, first: &str, n: u32) -> String {
    let (stem, ext) = match first.rfind('.') {
        Some(dot) if dot > 0 => first.split_at(dot),
        _ => (first, ""),
    };
    let base = format!("{stem}-part{n}");
    let mut candidate = format!("{base}{ext}");
    let mut k = 2;
    while dir.join(&candidate).exists() || dir.join(format!("{candidate}.json")).exists() {
        candidate = format!("{base}-{k}{ext}");
        k += 1;
    }
    candidate
}

/// The sidecar path of a record file.
pub fn sidecar(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Writes JSON next to its final place and renames it there, so a reader (or a crash)
/// never sees half a file. On a full disk (the very error a recording may end with) the
/// new file may get no block at all: an existing file is then rewritten in place, in the
/// blocks it already has (a crash just then could leave it half written).
pub fn store<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::write(&tmp, &text) {
        Ok(()) => std::fs::rename(&tmp, path),
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull && path.exists() => {
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
            std::io::Write::write_all(&mut file, &text)?;
            file.set_len(text.len() as u64)?;
            file.sync_data()
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_keep_what_they_can() {
        assert_eq!(sanitize("daily-alice"), "daily-alice");
        assert_eq!(sanitize("../etc/passwd"), "_._etc_passwd");
        assert_eq!(sanitize(".hidden"), "_hidden");
        assert_eq!(sanitize("Тест room"), "_____room");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize(&"x".repeat(200)).len(), MAX_NAME);
    }

    #[test]
    fn utc_times_format_in_both_styles() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_206_500_123);
        assert_eq!(stamp(t), "20261202T101500Z");
        assert_eq!(rfc3339(t), "2026-12-02T10:15:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn unique_names_do_not_overwrite_and_sidecars_round_trip() {
        let dir = std::env::temp_dir().join(format!("huddle-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_796_206_500);
        let first = unique_name(&dir, "room/a", t, ".mp4");
        assert_eq!(first, "room_a-20261202T101500Z.mp4");
        std::fs::write(dir.join(&first), b"").unwrap();
        let second = unique_name(&dir, "room/a", t, ".mp4");
        assert_eq!(second, "room_a-20261202T101500Z-2.mp4");
        assert_eq!(
            segment_name(&dir, &first, 2),
            "room_a-20261202T101500Z-part2.mp4"
        );
        std::fs::write(dir.join("room_a-20261202T101500Z-part3.mp4"), b"").unwrap();
        assert_eq!(
            segment_name(&dir, &first, 3),
            "room_a-20261202T101500Z-part3-2.mp4"
        );
        let meta = RecordMeta {
            name: first.clone(),
            kind: RecordKind::Stream,
            room: "room".into(),
            stream: Some("room/a".into()),
            login: Some("a".into()),
            started: rfc3339(t),
            ended: None,
            duration_ms: None,
            error: None,
        };
        let path = sidecar(&dir.join(&first));
        store(&path, &meta).unwrap();
        assert_eq!(load::<RecordMeta>(&path).unwrap(), meta);
        assert!(load::<RoomManifest>(&path).is_err(), "not a manifest");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
