//! The `huddle` binary: configuration printing and checking, running, signals.

#[path = "support/process.rs"]
mod process;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use process::*;

#[test]
fn printed_default_config_passes_check_and_has_the_product_keys() {
    let out = huddle(&["--print-default-config"]);
    assert!(out.status.success(), "{out:?}");
    let toml = text(&out.stdout);
    for key in [
        "listen",
        "udp_port",
        "advertise_ips",
        "idle_timeout_ms",
        "max_participants",
        "dir",
        "camera",
        "microphone",
    ] {
        assert!(
            toml.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "default config lacks `{key} =`:\n{toml}"
        );
    }
    let file = TempFile::new("default", &toml);
    let out = huddle(&["--check-config", file.path()]);
    assert!(
        out.status.success(),
        "the printed default config must pass --check-config: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("OK"), "{out:?}");
}

fn check_fails(tag: &str, contents: &str) -> String {
    let file = TempFile::new(tag, contents);
    let out = huddle(&["--check-config", file.path()]);
    assert!(
        !out.status.success(),
        "{contents:?} must be refused: {out:?}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(file.path()),
        "the error names the file: {stderr}"
    );
    stderr
}

#[test]
fn check_config_names_unknown_keys() {
    let e = check_fails("unknown", "[rooms]\nmax_participant = 3\n");
    assert!(e.contains("max_participant"), "{e}");
    let e = check_fails("section", "[roms]\nmax_participants = 3\n");
    assert!(e.contains("roms"), "{e}");
}

#[test]
fn check_config_names_invalid_values() {
    let e = check_fails("zero", "[rooms]\nmax_participants = 0\n");
    assert!(e.contains("rooms.max_participants"), "{e}");
    let e = check_fails("type", "[http]\nlisten = 8080\n");
    assert!(e.contains("listen"), "{e}");
}

#[test]
fn check_config_names_an_unusable_records_dir() {
    // Nothing can be created under /proc, not even by root.
    let e = check_fails("records", "[records]\ndir = \"/proc/huddle-records\"\n");
    assert!(e.contains("[records] dir /proc/huddle-records"), "{e}");
    // A relative dir is the service's working directory's: not checked from here.
    let file = TempFile::new("records-relative", "[records]\ndir = \"rec\"\n");
    assert!(huddle(&["--check-config", file.path()]).status.success());
}

#[test]
fn check_config_of_a_missing_file_fails() {
    let path = std::env::temp_dir().join(format!(
        "huddle-cli-test-{}-missing.toml",
        std::process::id()
    ));
    let out = huddle(&["--check-config", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("cannot read"), "{out:?}");
}

fn runs_and_stops_on(signal: Signal) {
    let mut huddle = Running::start(&format!("{signal:?}"));
    let addr = huddle.address();
    let response = get(addr, "/health");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let health: serde_json::Value = serde_json::from_str(body).expect("/health JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"), "{health}");

    // Work around the readiness race shown by `signal_right_at_readiness_exits_cleanly`:
    // wait until both handlers are installed, plus a moment for the listener that
    // tokio registers right after installing each handler.
    huddle.wait_for_handler(Signal::SIGTERM);
    huddle.wait_for_handler(Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    huddle.signal(signal);
    let status = huddle.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit after {signal:?}: {status:?}; stderr: {:#?}",
        huddle.log
    );
    let handled = format!("{signal:?} received");
    assert!(
        huddle.log.iter().any(|l| l.contains(&handled)),
        "no '{handled}' log line: {:#?}",
        huddle.log
    );
    assert!(
        huddle.log.iter().any(|l| l.contains("stopped")),
        "no 'stopped' log line: {:#?}",
        huddle.log
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "still listening after exit"
    );
}

#[test]
fn runs_with_config_and_exits_cleanly_on_sigterm() {
    runs_and_stops_on(Signal::SIGTERM);
}

#[test]
fn runs_with_config_and_exits_cleanly_on_sigint() {
    runs_and_stops_on(Signal::SIGINT);
}

/// A service manager may stop the service as soon as it reports readiness (the
/// `listening on` line). The signal must be handled from then on: a clean exit 0,
/// neither death by the signal's default action nor a swallowed signal (a hang).
/// Repeated because the window is short; stderr is read on this thread so the
/// signal follows the line at once. Stops at the first failure.
#[test]
fn signal_right_at_readiness_exits_cleanly() {
    const RUNS: usize = 60;
    const HANG: Duration = Duration::from_secs(3);
    let config = TempFile::new(
        "ready",
        "[http]\nlisten = \"127.0.0.1:0\"\ntls = false\n\
         [media]\nudp_port = 0\nadvertise_ips = [\"127.0.0.1\"]\n\
         [device]\ncamera = \"none\"\nmicrophone = \"none\"\n[rtmp]\nenabled = false\n",
    );
    for run in 0..RUNS {
        let signal = if run % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        let mut child = huddle_command()
            .args(["--config", config.path()])
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn huddle");
        let pid = Pid::from_raw(child.id() as i32);
        // A watchdog bounds the blocking reads below: it kills a hung child.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let hung = done_rx.recv_timeout(HANG).is_err();
            if hung {
                let _ = kill(pid, Signal::SIGKILL);
            }
            hung
        });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("read stderr");
            let ready = line.contains("listening on http://127.0.0.1:");
            seen.push(line);
            if ready {
                kill(pid, signal).expect("send signal");
                break;
            }
        }
        for line in lines {
            seen.push(line.unwrap_or_default());
        }
        let status = child.wait().expect("wait");
        let _ = done_tx.send(());
        let hung = watchdog.join().unwrap();
        assert!(
            status.success(),
            "run {run}: {signal:?} sent right after the 'listening on' line: {}; stderr {seen:#?}\n\
             (huddle announces readiness before installing its SIGTERM/SIGINT handlers)",
            if hung {
                format!("the signal was swallowed, no exit within {HANG:?} (killed by the test)")
            } else {
                format!("the process did not exit cleanly: {status:?}")
            }
        );
    }
}

#[test]
fn a_port_in_use_is_named_once_with_the_key_that_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let config = TempFile::new(
        "in-use",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\ntls = false\n\
             [media]\nudp_port = 0\nadvertise_ips = [\"127.0.0.1\"]\n\
             [device]\ncamera = \"none\"\nmicrophone = \"none\"\n[rtmp]\nenabled = false\n"
        ),
    );
    let out = huddle(&["--config", config.path()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot listen"))
        .unwrap_or_else(|| panic!("no bind error: {stderr}"));
    assert!(
        line.contains(&format!("127.0.0.1:{port} ([http] listen)")),
        "{line}"
    );
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
    assert!(line.contains("set [http] listen"), "{line}");
}
