//! What the records directory holds now, as the HTTP listing and the retention policy see
//! it: every regular `*.mp4` file with a valid sidecar (`RecordMeta` whose `name` is the
//! file's). Files without one (a half-written sidecar, temp files, manifests, anything
//! else) and symbolic links are never listed, so they are never served nor deleted.
//! Blocking (directory and file reads): call it from `spawn_blocking`.

use std::io;
use std::path::Path;
use std::time::SystemTime;

use super::catalog::{self, RecordMeta};
use super::live::Live;

/// One listed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub meta: RecordMeta,
    /// The file's length now (what a download of it gets).
    pub size: u64,
    /// The file's last modification.
    pub modified: Option<SystemTime>,
    /// Its recorder runs now (the sidecar has no `ended` and the file is live).
    pub in_progress: bool,
}

impl Listed {
    /// The file name in the records directory.
    pub fn name(&self) -> &str {
        &self.meta.name
    }
}

/// Whether `name` may name a file of the records directory: a plain file name, not hidden.
/// (The file must still be in the listing to be served.) `.` and `..` start with a dot;
/// without a separator a `..` inside a name (`v1..2-…mp4`, which `catalog::sanitize`
/// may make) cannot leave the directory.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// A regular file with a valid sidecar as listed.
fn listed(path: &Path, name: &str, metadata: &std::fs::Metadata, live: &Live) -> Option<Listed> {
    if !metadata.file_type().is_file() {
        return None;
    }
    let meta = catalog::load::<RecordMeta>(&catalog::sidecar(path)).ok()?;
    if meta.name != name {
        return None;
    }
    let in_progress = meta.ended.is_none() && live.contains(name);
    Some(Listed {
        meta,
        size: metadata.len(),
        modified: metadata.modified().ok(),
        in_progress,
    })
}

/// The record `name` of `dir` if `scan` lists it (without reading the whole directory).
pub fn find(dir: &Path, name: &str, live: &Live) -> Option<Listed> {
    if !name.ends_with(".mp4") || !plain_name(name) {
        return None;
    }
    let path = dir.join(name);
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    listed(&path, name, &metadata, live)
}

/// The records of `dir`, newest first (by `started`, then by name). A directory that does
/// not exist (nothing recorded yet) holds none.
pub fn scan(dir: &Path, live: &Live) -> io::Result<Vec<Listed>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(".mp4") || !plain_name(&name) {
            continue;
        }
        // `DirEntry::metadata` does not follow symbolic links.
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if let Some(listed) = listed(&entry.path(), &name, &metadata, live) {
            out.push(listed);
        }
    }
    out.sort_by(|a, b| {
        b.meta
            .started
            .cmp(&a.meta.started)
            .then_with(|| b.meta.name.cmp(&a.meta.name))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        assert!(plain_name("alice-20261202T101500Z.mp4"));
        for bad in [
            "",
            ".hidden.mp4",
            "..",
            "../x.mp4",
            "a/b.mp4",
            "a\\b.mp4",
            "a\0.mp4",
        ] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        assert!(plain_name("v1..2-20261202T101500Z.mp4"));
    }
}
