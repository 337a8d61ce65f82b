//! Every fuzz target (`huddle::fuzz`, run by libFuzzer in `make fuzz`) over its
//! committed corpus (`fuzz/corpus/<target>/`: seeds and what fuzzing runs kept) and its
//! past findings (`fuzz/regressions/<target>/`: each input that once failed): in the
//! normal suite, so `make test` checks every target's invariants on all of them.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_holds_over_its_corpus_and_past_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut report = Vec::new();
    for (name, target) in huddle::fuzz::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
        let regressions = inputs(&root.join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("a corpus file reads");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
        report.push(format!("{name}: {} + {}", corpus.len(), regressions.len()));
    }
    eprintln!("inputs (corpus + past findings): {}", report.join(", "));
}

/// Every target has its fuzz target file, and every fuzz target file is a target.
#[test]
fn the_fuzz_crate_names_every_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut files: Vec<String> = inputs(&dir)
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    files.sort();
    let mut names: Vec<String> = huddle::fuzz::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    names.sort();
    assert_eq!(files, names);
    let manifest = std::fs::read_to_string(dir.with_file_name("Cargo.toml")).unwrap();
    for name in &names {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml lacks {name}"
        );
    }
}

/// The STUN seed is a request signed with the target's peer password (made by
/// scripts/fuzz-seeds.py): the fuzzer starts past the integrity check.
#[test]
fn the_stun_seed_verifies() {
    use huddle::sfu::demux::{integrity_key, verified_request};
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stun_demux/verified-then-rtp");
    let data = std::fs::read(path).unwrap();
    let datagram = &data[2..2 + usize::from(data[0])];
    assert!(verified_request(
        datagram,
        "abcd",
        &integrity_key("pwd-of-abcd-0123456789")
    ));
}
