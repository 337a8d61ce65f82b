//! Which record files are being written right now: the recorder inserts a file name when
//! it opens the file and removes it when the file is finalized (or abandoned). The HTTP
//! listing reads it to tell a recording in progress from one cut short by a crash (both
//! have a sidecar without `ended`), and retention never deletes a live file.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The names (`<name>.mp4`, as in the records directory) of the files being written.
#[derive(Debug, Default)]
pub struct Live {
    names: Mutex<HashSet<String>>,
}

impl Live {
    pub fn new() -> Live {
        Live::default()
    }

    fn names(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever a panicking holder did: one insert or remove.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a file as being written; false if it already was.
    pub fn insert(&self, name: &str) -> bool {
        self.names().insert(name.to_owned())
    }

    /// The file is finalized (or abandoned); false if it was not live.
    pub fn remove(&self, name: &str) -> bool {
        self.names().remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names().contains(name)
    }

    /// The live names now, in no order.
    pub fn snapshot(&self) -> Vec<String> {
        self.names().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_remove() {
        let live = Live::new();
        assert!(!live.contains("a.mp4"));
        assert!(live.insert("a.mp4"));
        assert!(!live.insert("a.mp4"));
        assert!(live.contains("a.mp4"));
        assert_eq!(live.snapshot(), vec!["a.mp4".to_owned()]);
        assert!(live.remove("a.mp4"));
        assert!(!live.remove("a.mp4"));
        assert!(!live.contains("a.mp4"));
    }
}
