//! Retention (`[records] max_age_days`, `max_total_mb`): which finished records to delete
//! (`plan`, pure) and the executor that scans the directory, deletes them with their
//! sidecars and logs each deletion (`run`, blocking), run by the server at start and every
//! `INTERVAL` (`spawn`).
//!
//! Never deleted: a record being written (live), a stream record of a room whose mix is
//! not made yet (its manifest says `recording` or `pending`), and any file that is not a
//! listed record (no valid sidecar). Room manifests are kept.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use tokio::task::JoinHandle;

use super::catalog::{self, MixState, RoomManifest};
use super::listing;
use super::live::Live;
use crate::logging::escaped;

/// How often the executor runs after its first run at start.
pub const INTERVAL: Duration = Duration::from_secs(600);

const DAY: Duration = Duration::from_secs(86_400);
const MB: u64 = 1024 * 1024;

/// One record as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name in the records directory.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// When it ended: the sidecar's `ended`, else (cut short by a crash) the file's last
    /// modification; `None`: unknown (never deleted for its age; last for the size).
    pub ended: Option<SystemTime>,
    /// Being written now.
    pub live: bool,
    /// Part of a room whose mix is not made yet.
    pub held: bool,
}

impl Entry {
    fn deletable(&self) -> bool {
        !self.live && !self.held
    }
}

/// The records to delete: every finished one that ended `max_age_days` or more before
/// `now` (0: no age limit), then the oldest finished ones while all of them together
/// (live and held ones included) take more than `max_total_mb` MiB (0: no limit).
pub fn plan(
    entries: &[Entry],
    now: SystemTime,
    max_age_days: u64,
    max_total_mb: u64,
) -> Vec<String> {
    let mut doomed = Vec::new();
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut rest: Vec<&Entry> = Vec::new();
    let max_age = DAY.checked_mul(u32::try_from(max_age_days).unwrap_or(u32::MAX));
    for e in entries.iter().filter(|e| e.deletable()) {
        let too_old = match (max_age_days, max_age, e.ended) {
            (0, _, _) | (_, None, _) | (_, _, None) => false,
            (_, Some(max_age), Some(ended)) => {
                now.duration_since(ended).is_ok_and(|age| age >= max_age)
            }
        };
        if too_old {
            total = total.saturating_sub(e.size);
            doomed.push(e.name.clone());
        } else {
            rest.push(e);
        }
    }
    if max_total_mb > 0 {
        let limit = max_total_mb.saturating_mul(MB);
        // Oldest first; unknown end times last, then by name for a stable plan.
        rest.sort_by(|a, b| {
            (a.ended.is_none(), a.ended, &a.name).cmp(&(b.ended.is_none(), b.ended, &b.name))
        });
        for e in rest {
            if total <= limit {
                break;
            }
            total = total.saturating_sub(e.size);
            doomed.push(e.name.clone());
        }
    }
    doomed
}

/// `2026-12-02T10:15:00.123Z` (the catalog's RFC 3339, UTC; fraction optional) as a time.
pub fn parse_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let h: u64 = t.next()?.parse().ok()?;
    let mi: u64 = t.next()?.parse().ok()?;
    let sec: u64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
    };
    // Days from civil (the inverse of `catalog`'s).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let days = u64::try_from(days).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The stream records of rooms whose mix is not made yet (manifests `recording` or
/// `pending`): they are the mixer's input.
fn held_by_rooms(dir: &Path) -> HashSet<String> {
    let mut held = HashSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return held;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_manifest = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".room.json"));
        if !is_manifest {
            continue;
        }
        match catalog::load::<RoomManifest>(&path) {
            Ok(m) if matches!(m.mix, MixState::Recording | MixState::Pending) => {
                held.extend(m.streams.into_iter().map(|s| s.file));
            }
            Ok(_) => {}
            // Manifests are replaced whole (`catalog::store`), never seen half-written:
            // one that does not parse cannot be mixed either, so it holds nothing.
            Err(e) => warn!("records: {}: not a room manifest: {e}", path.display()),
        }
    }
    held
}

/// The entries of the records directory now.
pub fn entries(dir: &Path, live: &Live) -> std::io::Result<Vec<Entry>> {
    let held = held_by_rooms(dir);
    Ok(listing::scan(dir, live)?
        .into_iter()
        .map(|l| Entry {
            ended: match &l.meta.ended {
                Some(ended) => parse_utc(ended).or(l.modified),
                None => l.modified,
            },
            live: live.contains(l.name()),
            held: held.contains(l.name()),
            size: l.size,
            name: l.meta.name,
        })
        .collect())
}

/// Plans and deletes (each record and its sidecar), logging each deletion; returns the
/// names deleted. Blocking.
pub fn run(
    dir: &Path,
    live: &Live,
    max_age_days: u64,
    max_total_mb: u64,
    now: SystemTime,
) -> Vec<String> {
    if max_age_days == 0 && max_total_mb == 0 {
        return Vec::new();
    }
    let entries = match entries(dir, live) {
        Ok(e) => e,
        Err(e) => {
            warn!("records: cannot read {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut deleted = Vec::new();
    for name in plan(&entries, now, max_age_days, max_total_mb) {
        // Started again since the scan (a name is never reused, but be sure).
        if live.contains(&name) {
            continue;
        }
        let file = dir.join(&name);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!("records: cannot delete {}: {e}", escaped(&name));
                continue;
            }
        }
        if let Err(e) = std::fs::remove_file(catalog::sidecar(&file)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(
                    "records: cannot delete the sidecar of {}: {e}",
                    escaped(&name)
                );
            }
        }
        info!(
            "records: deleted {} (retention: max_age_days {max_age_days}, max_total_mb {max_total_mb})",
            escaped(&name)
        );
        deleted.push(name);
    }
    deleted
}

/// The retention task: `run` at start and every `INTERVAL`; `None` when neither limit is
/// set. Abort the handle to stop it.
pub fn spawn(
    dir: std::path::PathBuf,
    live: Arc<Live>,
    max_age_days: u64,
    max_total_mb: u64,
) -> Option<JoinHandle<()>> {
    if max_age_days == 0 && max_total_mb == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (dir, live) = (dir.clone(), live.clone());
            let pass = tokio::task::spawn_blocking(move || {
                run(&dir, &live, max_age_days, max_total_mb, SystemTime::now())
            });
            if let Err(e) = pass.await {
                warn!("records: a retention pass failed: {e}");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_206_500) + DAY * days as u32
    }

    fn entry(name: &str, mb: u64, ended_day: Option<u64>) -> Entry {
        Entry {
            name: name.into(),
            size: mb * MB,
            ended: ended_day.map(at),
            live: false,
            held: false,
        }
    }

    #[test]
    fn no_limits_delete_nothing() {
        let e = [entry("a.mp4", 100, Some(0))];
        assert!(plan(&e, at(1000), 0, 0).is_empty());
    }

    #[test]
    fn old_finished_records_go() {
        let e = [
            entry("old.mp4", 1, Some(0)),
            entry("edge.mp4", 1, Some(3)),
            entry("new.mp4", 1, Some(9)),
            entry("unknown.mp4", 1, None),
        ];
        assert_eq!(plan(&e, at(10), 7, 0), vec!["old.mp4", "edge.mp4"]);
        // Ended in the future (a clock step back): not old.
        assert!(plan(&e, at(0), 1, 0).is_empty());
    }

    #[test]
    fn live_and_held_records_are_never_deleted() {
        let mut live = entry("live.mp4", 500, Some(0));
        live.live = true;
        let mut held = entry("held.mp4", 500, Some(0));
        held.held = true;
        let e = [live, held, entry("done.mp4", 10, Some(1))];
        assert_eq!(plan(&e, at(100), 1, 1), vec!["done.mp4"]);
    }

    #[test]
    fn the_oldest_go_while_over_the_total() {
        let e = [
            entry("c.mp4", 40, Some(3)),
            entry("a.mp4", 40, Some(1)),
            entry("u.mp4", 40, None),
            entry("b.mp4", 40, Some(2)),
        ];
        // 160 MiB, limit 100: a and b go (80 left).
        assert_eq!(plan(&e, at(4), 0, 100), vec!["a.mp4", "b.mp4"]);
        // Limit 10: the unknown one last.
        assert_eq!(
            plan(&e, at(4), 0, 10),
            vec!["a.mp4", "b.mp4", "c.mp4", "u.mp4"]
        );
        // Exactly at the limit: nothing.
        assert!(plan(&e, at(4), 0, 160).is_empty());
    }

    #[test]
    fn age_first_then_size_counting_what_age_freed() {
        let mut live = entry("live.mp4", 60, Some(9));
        live.live = true;
        let e = [
            entry("old.mp4", 50, Some(0)),
            entry("mid.mp4", 30, Some(8)),
            entry("new.mp4", 30, Some(9)),
            live,
        ];
        // 170 total; age frees old (120 left), size 100: mid goes (90 left).
        assert_eq!(plan(&e, at(10), 5, 100), vec!["old.mp4", "mid.mp4"]);
        // A live record alone over the limit: everything else goes, it stays.
        assert_eq!(
            plan(&e, at(10), 0, 1),
            vec!["old.mp4", "mid.mp4", "new.mp4"]
        );
    }

    #[test]
    fn utc_times_parse_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_206_500_123);
        assert_eq!(parse_utc(&catalog::rfc3339(t)), Some(t));
        assert_eq!(
            parse_utc("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(parse_utc("1970-01-01T00:00:00.000Z"), Some(UNIX_EPOCH));
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02T10:15:00",
            "2026-13-02T10:15:00Z",
            "2026-12-02T10:15:00.Z",
            "1969-12-31T23:59:59Z",
            "x-y-zTa:b:cZ",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_executor_deletes_records_and_sidecars_but_not_live_or_held_ones() {
        let dir = std::env::temp_dir().join(format!("huddle-retention-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, ended: Option<&str>| {
            std::fs::write(dir.join(name), b"0123456789").unwrap();
            let meta = catalog::RecordMeta {
                name: name.into(),
                kind: catalog::RecordKind::Stream,
                room: "r".into(),
                stream: Some("s".into()),
                login: None,
                started: "2020-01-01T00:00:00.000Z".into(),
                ended: ended.map(str::to_owned),
                duration_ms: None,
                error: None,
            };
            catalog::store(&catalog::sidecar(&dir.join(name)), &meta).unwrap();
        };
        write("old.mp4", Some("2020-01-01T01:00:00.000Z"));
        write("live.mp4", None);
        write("held.mp4", Some("2020-01-01T01:00:00.000Z"));
        write("fresh.mp4", Some(&catalog::rfc3339(SystemTime::now())));
        // Cut short by a crash long ago: its file's time counts.
        write("crashed.mp4", None);
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_577_840_400);
        for old in ["crashed.mp4", "live.mp4"] {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(old))
                .unwrap();
            f.set_modified(long_ago).unwrap();
        }
        std::fs::write(dir.join("stray.mp4"), b"no sidecar").unwrap();
        let manifest = RoomManifest {
            room: "r".into(),
            started: "2020-01-01T00:00:00.000Z".into(),
            ended: None,
            duration_ms: None,
            streams: vec![catalog::RoomStream {
                stream: "s".into(),
                login: "l".into(),
                file: "held.mp4".into(),
                start_ms: 0,
                end_ms: None,
            }],
            mix: MixState::Pending,
            mix_file: "r-mix.mp4".into(),
            mix_error: None,
        };
        catalog::store(&dir.join("r.room.json"), &manifest).unwrap();
        let live = Live::new();
        live.insert("live.mp4");
        let deleted = run(&dir, &live, 1, 0, SystemTime::now());
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        for gone in ["old.mp4", "crashed.mp4"] {
            assert!(deleted.iter().any(|d| d == gone), "{deleted:?}");
            assert!(!dir.join(gone).exists(), "{gone}");
            assert!(!catalog::sidecar(&dir.join(gone)).exists(), "{gone}");
        }
        for kept in [
            "live.mp4",
            "held.mp4",
            "fresh.mp4",
            "stray.mp4",
            "r.room.json",
        ] {
            assert!(dir.join(kept).exists(), "{kept}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
