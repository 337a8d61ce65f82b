//! Running the real `huddle` binary in tests: temp config files, the child process
//! with its stderr collected, bounded waits, signals, a raw HTTP GET.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_huddle");

/// A `Command` for the `huddle` binary. With `HUDDLE_TEST_EXEC_WRAPPER` set (e.g. to
/// `qemu-aarch64-static` when the tests of a cross build run under qemu-user without
/// binfmt_misc), it runs `<wrapper words...> BIN` instead; the child's PID is then the
/// wrapper's (qemu-user forwards signals to the emulated process).
pub fn huddle_command() -> Command {
    match std::env::var("HUDDLE_TEST_EXEC_WRAPPER") {
        Ok(wrapper) if !wrapper.trim().is_empty() => {
            let mut words = wrapper.split_whitespace();
            let mut command = Command::new(words.next().unwrap());
            command.args(words).arg(BIN);
            command
        }
        _ => Command::new(BIN),
    }
}

pub fn huddle(args: &[&str]) -> Output {
    huddle_command()
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run huddle")
}

/// A temporary file removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, contents: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "huddle-cli-test-{}-{tag}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp config");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `huddle`, killed on drop if the test did not stop it.
pub struct Running {
    pub child: Child,
    pub stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
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
    pub fn start(tag: &str) -> Running {
        Running::start_with_env(tag, &[])
    }

    /// Starts with extra environment variables (NOTIFY_SOCKET, WATCHDOG_USEC...).
    pub fn start_with_env(tag: &str, env: &[(&str, &str)]) -> Running {
        Running::start_with_config(tag, "listen = \"127.0.0.1:0\"\ntls = false", env)
    }

    /// Starts with these `[http]` lines (loopback media, no devices otherwise).
    pub fn start_with_config(tag: &str, http: &str, env: &[(&str, &str)]) -> Running {
        let config = TempFile::new(
            tag,
            &format!(
                "[http]\n{http}\n\
                 [media]\nudp_port = 0\nadvertise_ips = [\"127.0.0.1\"]\n\
                 [device]\ncamera = \"none\"\nmicrophone = \"none\"\n\
                 [rtmp]\nlisten = \"127.0.0.1:0\"\n"
            ),
        );
        let mut command = huddle_command();
        command
            .args(["--config", config.path()])
            .envs(env.iter().copied());
        Running::spawn(command, config)
    }

    /// Spawns `command` (a `huddle_command()` with its arguments) with stderr captured;
    /// `config` is kept until the process is gone.
    pub fn spawn(mut command: Command, config: TempFile) -> Running {
        // The service manager's variables only when the test sets them.
        for k in ["JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"] {
            if command.get_envs().all(|(key, _)| key != k) {
                command.env_remove(k);
            }
        }
        let mut child = command
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

    /// The child's PID (the wrapper's under `HUDDLE_TEST_EXEC_WRAPPER`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Moves the stderr lines printed so far into `log`.
    pub fn collect_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    /// SIGTERM, then exit status 0 within 10 s and no panic in the log.
    pub fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{status}; stderr: {:#?}", self.log);
        assert!(
            !self.log.iter().any(|l| l.contains("panicked")),
            "{:#?}",
            self.log
        );
    }

    /// The next stderr line containing `needle` (bounded); earlier lines go to `log`.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "no stderr line with {needle:?} within {limit:?} ({e}); stderr: {:#?}",
                    self.log
                )
            });
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits (bounded) for the `listening on http://127.0.0.1:PORT` line.
    pub fn address(&mut self) -> SocketAddr {
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
    pub fn wait_for_handler(&self, signal: Signal) {
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

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
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

pub fn get(addr: SocketAddr, path: &str) -> String {
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
