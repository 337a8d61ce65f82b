//! The `huddle` binary: configuration printing and checking, running, signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_huddle");

fn huddle(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run huddle")
}

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "huddle-cli-test-{}-{tag}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp config");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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
fn check_config_of_a_missing_file_fails() {
    let path = std::env::temp_dir().join(format!(
        "huddle-cli-test-{}-missing.toml",
        std::process::id()
    ));
    let out = huddle(&["--check-config", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("cannot read"), "{out:?}");
}

/// A running `huddle`, killed on drop if the test did not stop it.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    _config: TempFile,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn start(tag: &str) -> Running {
        let config = TempFile::new(
            tag,
            "[http]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nadvertise_ips = [\"127.0.0.1\"]\n\
             [device]\ncamera = \"none\"\nmicrophone = \"none\"\n",
        );
        let mut child = Command::new(BIN)
            .args(["--config", config.path()])
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn huddle");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stderr: rx,
            log: Vec::new(),
            _config: config,
        }
    }

    /// Waits (bounded) for the `listening on http://127.0.0.1:PORT` line.
    fn address(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "no 'listening on' line ({e}); stderr so far: {:#?}",
                    self.log
                )
            });
            self.log.push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let addr: SocketAddr = addr
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
                assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
                assert_ne!(addr.port(), 0, "{line}");
                return addr;
            }
        }
    }

    /// Waits (bounded) until the process catches `signal` (Linux: `SigCgt` in
    /// /proc/PID/status), i.e. until its handler is installed.
    fn wait_for_handler(&self, signal: Signal) {
        let bit = 1u64 << (signal as i32 - 1);
        let status = format!("/proc/{}/status", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&status).expect("read /proc/PID/status");
            let caught = text
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if caught & bit != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "huddle never installed a {signal:?} handler; stderr: {:#?}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "huddle did not exit within {limit:?}; stderr: {:#?}",
                self.log
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    response
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
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [media]\nadvertise_ips = [\"127.0.0.1\"]\n\
         [device]\ncamera = \"none\"\nmicrophone = \"none\"\n",
    );
    for run in 0..RUNS {
        let signal = if run % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        };
        let mut child = Command::new(BIN)
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
