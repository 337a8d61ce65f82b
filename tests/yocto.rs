//! The Yocto layer `yocto/meta-huddle` stays in step with the repository: the generated
//! crate list matches Cargo.lock, the recipe's version, license checksum, installed files and
//! service account match Cargo.toml, LICENSE and `systemd/`, and `oelint-adv` reports nothing
//! for every release in LAYERSERIES_COMPAT. No bitbake here: these are the checks that can
//! run on a plain Debian host.
//!
//! Needs `python3`, `md5sum` and `oelint-adv` (installed by `make test`; see `oelint()`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const LAYER: &str = "yocto/meta-huddle";
const RECIPE_DIR: &str = "yocto/meta-huddle/recipes-multimedia/huddle";
/// What `make test` installs; named in the failure message when oelint-adv is missing.
const OELINT_INSTALL_HINT: &str = "run `make deps-test` (scripts/install-deps.sh test installs \
     the pinned oelint-adv into target/oelint-venv), or install oelint-adv from PyPI (e.g. in a \
     venv) and put it on PATH, or point OELINT_ADV at the executable";

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A fresh directory under the system temp dir, unique per process and test, removed
/// when dropped (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("huddle-yocto-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir); // left over by an earlier process with this pid
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The one `huddle_<version>.bb` of the layer, as (file name, version, contents).
fn recipe() -> (String, String, String) {
    let mut found: Vec<String> = fs::read_dir(root().join(RECIPE_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("huddle_") && n.ends_with(".bb"))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one huddle_<version>.bb in {RECIPE_DIR}: {found:?}"
    );
    let name = found.pop().unwrap();
    let version = name["huddle_".len()..name.len() - ".bb".len()].to_owned();
    let body = read(&format!("{RECIPE_DIR}/{name}"));
    (name, version, body)
}

/// The value of a one-line `NAME = "value"` (or `?=`) assignment.
fn assignment<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.trim_start();
        let rest = rest.strip_prefix("?=").or_else(|| rest.strip_prefix('='))?;
        rest.trim().strip_prefix('"')?.strip_suffix('"')
    })
}

fn cargo_package() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    manifest["package"].as_table().unwrap().clone()
}

fn md5(path: &Path) -> String {
    let out = run(Command::new("md5sum").arg(path));
    assert!(
        out.status.success(),
        "md5sum {}: {}",
        path.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn yocto_crates(args: &[&str]) -> Output {
    run(Command::new("python3")
        .arg(root().join("scripts/yocto-crates.py"))
        .args(args)
        .current_dir(root()))
}

#[test]
fn crate_list_matches_cargo_lock() {
    let out = yocto_crates(&["--check"]);
    assert!(
        out.status.success(),
        "{RECIPE_DIR}/huddle-crates.inc is stale; run scripts/yocto-crates.py\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lock: toml::Table = read("Cargo.lock").parse().unwrap();
    let registry = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("source").is_some())
        .count();
    let inc = read(&format!("{RECIPE_DIR}/huddle-crates.inc"));
    assert_eq!(inc.matches("crate://crates.io/").count(), registry);
    assert_eq!(inc.matches(".sha256sum] = \"").count(), registry);
    assert!(
        !inc.contains("crate://crates.io/huddle/"),
        "huddle itself is not a crate entry"
    );
}

#[test]
fn crate_check_names_what_differs() {
    // A Cargo.lock whose first registry crate has another checksum and whose second has
    // another version: --check must fail and say which.
    let lock = read("Cargo.lock");
    let parsed: toml::Table = lock.parse().unwrap();
    let registry: Vec<&toml::Value> = parsed["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("source").is_some())
        .collect();
    let field = |p: &toml::Value, k: &str| p[k].as_str().unwrap().to_owned();
    let (a_name, a_version, a_sum) = (
        field(registry[0], "name"),
        field(registry[0], "version"),
        field(registry[0], "checksum"),
    );
    let (b_name, b_version) = (field(registry[1], "name"), field(registry[1], "version"));
    let other_sum: String = a_sum
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let b_entry = format!("name = \"{b_name}\"\nversion = \"{b_version}\"\n");
    assert!(
        lock.contains(&b_entry),
        "Cargo.lock layout changed: {b_entry:?}"
    );
    let changed = lock
        .replacen(
            &format!("checksum = \"{a_sum}\""),
            &format!("checksum = \"{other_sum}\""),
            1,
        )
        .replacen(
            &b_entry,
            &format!("name = \"{b_name}\"\nversion = \"{b_version}9\"\n"),
            1,
        );
    let dir = TempDir::new("lock");
    let tmp_lock = dir.0.join("Cargo.lock");
    fs::write(&tmp_lock, changed).unwrap();

    let out = yocto_crates(&["--check", "--lock", tmp_lock.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--check on a changed lock: {err}"
    );
    assert!(
        err.contains(&format!("checksum of {a_name}-{a_version} differs")),
        "{err}"
    );
    assert!(
        err.contains(&format!("missing crate {b_name} {b_version}9")),
        "{err}"
    );
    assert!(
        err.contains(&format!("stale crate {b_name} {b_version} ")),
        "{err}"
    );

    // Regenerating from that lock makes --check pass against the new file, which holds the
    // changed entries.
    let inc = dir.0.join("crates.inc");
    let lock_arg = tmp_lock.to_str().unwrap();
    let out = yocto_crates(&["--lock", lock_arg, "--output", inc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = yocto_crates(&[
        "--check",
        "--lock",
        lock_arg,
        "--output",
        inc.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let generated = fs::read_to_string(&inc).unwrap();
    assert!(generated.contains(&format!(
        "SRC_URI[{a_name}-{a_version}.sha256sum] = \"{other_sum}\""
    )));
    assert!(generated.contains(&format!("crate://crates.io/{b_name}/{b_version}9;")));

    // A git dependency is refused rather than silently left out.
    let git_lock = lock.replacen(
        "source = \"registry+https://github.com/rust-lang/crates.io-index\"",
        "source = \"git+https://example.invalid/x.git#0123456789abcdef\"",
        1,
    );
    fs::write(&tmp_lock, git_lock).unwrap();
    let out = yocto_crates(&["--check", "--lock", lock_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("only crates.io crates"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn recipe_matches_cargo_toml_and_license() {
    let (name, version, body) = recipe();
    let package = cargo_package();
    assert_eq!(
        version,
        package["version"].as_str().unwrap(),
        "{name}: rename it to huddle_<Cargo.toml version>.bb"
    );
    assert_eq!(
        assignment(&body, "LICENSE"),
        package["license"].as_str(),
        "{name}: LICENSE differs from Cargo.toml"
    );

    let chksum = assignment(&body, "LIC_FILES_CHKSUM").expect("LIC_FILES_CHKSUM");
    let (file, md5sum) = chksum
        .strip_prefix("file://")
        .and_then(|s| s.split_once(";md5="))
        .unwrap_or_else(|| panic!("LIC_FILES_CHKSUM not file://<f>;md5=<sum>: {chksum}"));
    let actual = md5(&root().join(file));
    assert_eq!(
        md5sum, actual,
        "{name}: LIC_FILES_CHKSUM md5 of {file} is stale"
    );

    assert!(
        body.lines()
            .any(|l| l.trim() == "require ${BPN}-crates.inc"),
        "{name} must require the generated crate list"
    );
}

#[test]
fn recipe_installs_the_files_of_the_repository() {
    let (name, _, body) = recipe();
    // Every ${S}/<path> the recipe reads must exist here (web/ is installed only if present).
    let mut paths: Vec<&str> = body
        .split("${S}/")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| c.is_whitespace() || c == '"' || c == '$')
                .next()
                .unwrap()
        })
        .filter(|p| *p != "web" && *p != "web/")
        .collect();
    paths.sort_unstable();
    paths.dedup();
    assert!(paths.contains(&"systemd/huddle.service"), "{paths:?}");
    for p in &paths {
        assert!(
            root().join(p).is_file(),
            "{name} installs ${{S}}/{p}, which does not exist"
        );
    }

    // The service it enables is the unit it installs.
    let service = assignment(&body, "SYSTEMD_SERVICE:${PN}").expect("SYSTEMD_SERVICE:${PN}");
    assert!(
        body.contains(&format!("${{D}}${{systemd_system_unitdir}}/{service}")),
        "{name}: SYSTEMD_SERVICE {service} is not installed"
    );

    // One account everywhere: the unit's User/Group/SupplementaryGroups, the sysusers.d
    // entry and the recipe's useradd parameters.
    let unit = read(&format!("systemd/{service}"));
    let unit_value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{service} has no {key}="))
            .trim()
            .to_owned()
    };
    let user = unit_value("User");
    assert_eq!(unit_value("Group"), user);
    let mut unit_groups: Vec<String> = unit_value("SupplementaryGroups")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    unit_groups.sort();

    let sysusers = read("systemd/huddle.sysusers");
    let entries: Vec<Vec<&str>> = sysusers
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        entries.iter().any(|e| e[0] == "u" && e[1] == user),
        "{sysusers}"
    );
    let mut sysusers_groups: Vec<String> = entries
        .iter()
        .filter(|e| e[0] == "m" && e[1] == user)
        .map(|e| e[2].to_owned())
        .collect();
    sysusers_groups.sort();
    assert_eq!(
        sysusers_groups, unit_groups,
        "sysusers.d groups vs the unit's"
    );

    let useradd = assignment(&body, "USERADD_PARAM:${PN}").expect("USERADD_PARAM:${PN}");
    let words: Vec<&str> = useradd.split_whitespace().collect();
    assert_eq!(
        words.last(),
        Some(&user.as_str()),
        "useradd creates {user}: {useradd}"
    );
    assert!(
        words.contains(&"--user-group"),
        "the unit's Group={user} needs --user-group"
    );
    let groups_at = words
        .iter()
        .position(|w| *w == "--groups")
        .expect("--groups");
    let mut useradd_groups: Vec<String> =
        words[groups_at + 1].split(',').map(str::to_owned).collect();
    useradd_groups.sort();
    assert_eq!(
        useradd_groups, unit_groups,
        "useradd --groups vs the unit's"
    );
    assert!(
        useradd.contains(&format!(
            "--home-dir ${{localstatedir}}/lib/{}",
            unit_value("StateDirectory")
        )),
        "home directory is the unit's StateDirectory: {useradd}"
    );
}

/// LAYERSERIES_COMPAT of the layer, e.g. ["scarthgap", "wrynose"].
fn layer_series() -> Vec<String> {
    let conf = read(&format!("{LAYER}/conf/layer.conf"));
    let value = conf
        .lines()
        .find_map(|l| {
            let l = l.strip_prefix("LAYERSERIES_COMPAT_")?;
            Some(l.split_once('=')?.1.trim().trim_matches('"').to_owned())
        })
        .expect("LAYERSERIES_COMPAT in layer.conf");
    value.split_whitespace().map(str::to_owned).collect()
}

/// The oelint-adv executable: $OELINT_ADV, the venv `make test` installs it into, or PATH.
fn oelint() -> PathBuf {
    if let Some(p) = std::env::var_os("OELINT_ADV").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "OELINT_ADV={} does not exist: {OELINT_INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    let venv = root().join("target/oelint-venv/bin/oelint-adv");
    if venv.is_file() {
        return venv;
    }
    let on_path = Command::new("oelint-adv").arg("--version").output();
    match on_path {
        Ok(out) if out.status.success() => PathBuf::from("oelint-adv"),
        _ => panic!("oelint-adv is not installed: {OELINT_INSTALL_HINT}"),
    }
}

/// Every recipe, append and configuration file of a layer directory.
fn lint_targets(layer: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("bb" | "bbappend" | "bbclass" | "conf")
            ) {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(layer, &mut files);
    files.sort();
    files
}

/// oelint-adv's findings for a layer directory against one release ("" when clean).
fn lint(layer: &Path, release: &str) -> (bool, String) {
    let exe = oelint();
    let out = run(Command::new(&exe)
        .args(["--quiet", "--mode", "all", "--release", release])
        .args(lint_targets(layer))
        // Only the options above count, not an ~/.oelint.cfg of whoever runs the tests.
        .env("OELINT_SKIP_CONFIG", "1")
        .current_dir(root()));
    let findings = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success(), findings)
}

#[test]
fn layer_is_lint_clean_for_every_supported_release() {
    let series = layer_series();
    assert!(!series.is_empty());
    let version = run(Command::new(oelint()).arg("--version"));
    let version = text(&version.stdout).trim().to_owned();
    for release in &series {
        let (ok, findings) = lint(&root().join(LAYER), release);
        assert!(
            ok && findings.trim().is_empty(),
            "{version} --release {release} on {LAYER}:\n{findings}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn lint_catches_a_broken_recipe() {
    // A copy of the layer with one classic mistake must not pass: proves the files are
    // really parsed and findings really fail the check.
    let dir = TempDir::new("layer");
    copy_dir(&root().join(LAYER), &dir.0);
    let (name, _, body) = recipe();
    let broken = body.replace("SECTION = \"multimedia\"", "SECTION = \"Multimedia\"");
    assert_ne!(broken, body, "SECTION line changed; update this test");
    let recipe_dir = dir.0.join(
        RECIPE_DIR
            .strip_prefix(LAYER)
            .unwrap()
            .trim_start_matches('/'),
    );
    fs::write(recipe_dir.join(&name), broken).unwrap();

    let release = layer_series().pop().unwrap();
    let (ok, findings) = lint(&dir.0, &release);
    assert!(!ok, "oelint-adv accepted a broken recipe:\n{findings}");
    assert!(
        findings.contains("oelint.vars.sectionlowercase"),
        "{findings}"
    );
}
