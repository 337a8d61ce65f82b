//! Recording (issue 12): stream recordings as fragmented MP4 written from a stream's RTP
//! without decoding, room recordings (a manifest of the room's streams on one timeline),
//! the offline mix of a finalized room, and the catalog the HTTP listing reads.
//!
//! - `catalog`: file names, sidecars (`RecordMeta`) and room manifests (`RoomManifest`).
//! - `fmp4`: a pure fragmented-MP4 writer (H.264, VP8, Opus; init segment, moof + mdat).
//! - `recorder`: one stream's RTP into fMP4 files on a writer thread (fsync per fragment).
//! - `live`: the names of the record files being written now (`Live`, shared with the
//!   recorder, the HTTP listing and retention).
//! - `listing`: the records of the directory (regular `*.mp4` files with a valid sidecar),
//!   newest first, as `GET /client/records` lists them.
//! - `retention`: `[records] max_age_days` / `max_total_mb`: the plan (pure) and the task
//!   that deletes finished records.
//! - `mix`: the offline room mix (ffmpeg grid + mixed audio) and its `Mixer` service.
//! - `hook`: bounded child processes and the room record hook run after a mix.

pub mod catalog;
pub mod fmp4;
pub mod hook;
pub mod listing;
pub mod live;
pub mod mix;
pub mod recorder;
pub mod retention;

/// Why `dir` cannot hold records, if it cannot: with `create`, a missing directory is
/// created first (the service at start); without, it is reported only when it could not
/// be created either (`--check-config`: the nearest existing parent must be writable).
/// Writability is tried with a file written and removed.
pub fn dir_problem(dir: &std::path::Path, create: bool) -> Option<String> {
    let shown = dir.display();
    if create {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Some(format!("cannot create [records] dir {shown}: {e}"));
        }
    }
    let mut probe_dir = dir;
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
            _ => return None,
        }
    }
    if !probe_dir.is_dir() {
        return Some(format!(
            "[records] dir {shown}: {} is not a directory",
            probe_dir.display()
        ));
    }
    let probe = probe_dir.join(format!(".huddle-write-test-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if probe_dir == dir => Some(format!("cannot write in [records] dir {shown}: {e}")),
        Err(e) => Some(format!(
            "[records] dir {shown} does not exist and cannot be created in {}: {e}",
            probe_dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_records_dirs_are_named() {
        let base = std::env::temp_dir().join(format!("huddle-recdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let missing = base.join("a/b");
        assert_eq!(dir_problem(&missing, false), None, "creatable");
        assert!(!missing.exists(), "a check creates nothing");
        assert_eq!(dir_problem(&missing, true), None);
        assert!(missing.is_dir());
        let file = base.join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = dir_problem(&file.join("records"), true).unwrap();
        assert!(e.contains("cannot create"), "{e}");
        let e = dir_problem(&file, false).unwrap();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
