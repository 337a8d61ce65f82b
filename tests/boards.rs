//! Board profiles through the real binary: every profile in `board/` is known to
//! `--list-boards`, passes `--check-config` with the shipped config on top, and prints
//! back exactly the file in the repository.

#[path = "support/process.rs"]
mod process;

use process::*;

const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/huddle.toml");

fn board_dirs() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/board");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("board/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("profile.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_board_directory_is_a_known_profile() {
    let listed = text(&huddle(&["--list-boards"]).stdout);
    let dirs = board_dirs();
    assert_eq!(dirs.len(), 5, "{dirs:?}");
    for name in &dirs {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from --list-boards:\n{listed}"
        );
        let readme = format!("{}/board/{name}/README.md", env!("CARGO_MANIFEST_DIR"));
        assert!(std::path::Path::new(&readme).is_file(), "{readme} missing");
    }
}

#[test]
fn every_board_passes_check_config_and_prints_its_file() {
    for name in board_dirs() {
        let out = huddle(&["--check-config", SHIPPED_CONFIG, "--board", &name]);
        assert!(out.status.success(), "{name}: {out:?}");
        let printed = huddle(&["--print-board", &name]);
        let file = std::fs::read_to_string(format!(
            "{}/board/{name}/profile.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(text(&printed.stdout), file, "{name}");
        // The profile alone is a valid configuration file too.
        let alone = TempFile::new(&format!("board-{name}"), &file);
        let out = huddle(&["--check-config", alone.path()]);
        assert!(out.status.success(), "{name} alone: {out:?}");
    }
}

#[test]
fn unknown_board_is_refused_with_the_known_names() {
    let out = huddle(&["--check-config", SHIPPED_CONFIG, "--board", "pi9"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("device.board") && err.contains("rpi4"),
        "{err}"
    );
    let bad = TempFile::new("board-bad", "[device]\nboard = \"pi9\"\n");
    let out = huddle(&["--check-config", bad.path()]);
    assert!(!out.status.success());
}
