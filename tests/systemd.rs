//! The binary under a service manager: sd_notify READY/STATUS/WATCHDOG/STOPPING on a
//! test NOTIFY_SOCKET, and the unit file checked by systemd-analyze.

#[path = "support/process.rs"]
mod process;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use process::*;

const UNIT: &str = include_str!("../systemd/huddle.service");

/// A notify socket in a fresh temp directory.
struct NotifySocket {
    dir: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new(tag: &str) -> NotifySocket {
        let dir = std::env::temp_dir().join(format!("huddle-sd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        NotifySocket { dir, socket }
    }

    fn path(&self) -> String {
        self.dir.join("notify").to_str().unwrap().to_owned()
    }

    /// The next datagram, or `None` after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Datagrams until one contains `needle`; panics after `limit`.
    fn until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(m) if m.lines().any(|l| l == needle) => {
                    seen.push(m);
                    return seen;
                }
                Some(m) => seen.push(m),
                None => panic!("no {needle} within {limit:?}; got {seen:?}"),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn notifies_ready_after_the_port_accepts_then_watchdog_then_stopping() {
    let notify = NotifySocket::new("ready");
    let path = notify.path();
    let mut huddle = Running::start_with_env(
        "sd-ready",
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let first = notify
        .recv(Duration::from_secs(10))
        .expect("a first notification");
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        first.contains("STATUS=0 rooms, 0 participants, 0 sessions"),
        "{first:?}"
    );
    // READY means the sockets accept: the HTTP port answers right now.
    let addr = huddle.address();
    assert!(get(addr, "/health").contains("\"status\":\"ok\""));

    // The watchdog is fed twice per WatchdogSec (400 ms here) with a status line.
    let start = Instant::now();
    let mut fed = 0;
    while fed < 4 {
        let seen = notify.until("WATCHDOG=1", Duration::from_secs(2));
        let last = seen.last().unwrap();
        assert!(
            last.contains("STATUS=") && last.contains("rooms"),
            "{last:?}"
        );
        fed += 1;
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "4 watchdog pings should take about 0.6-0.8 s, took {elapsed:?}"
    );

    huddle.signal(Signal::SIGTERM);
    notify.until("STOPPING=1", Duration::from_secs(5));
    let status = huddle.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; stderr {:#?}", huddle.log);
}

/// A service with debug-only fault injection (`env`), watched on a notify socket with a
/// 300 ms watchdog; returns once it is READY and fed the watchdog.
fn faulty_service(tag: &str, env: (&str, &str)) -> (NotifySocket, Running, std::net::SocketAddr) {
    let notify = NotifySocket::new(tag);
    let path = notify.path();
    let mut huddle = Running::start_with_env(
        &format!("sd-{tag}"),
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "300000"),
            env,
        ],
    );
    notify.until("READY=1", Duration::from_secs(10));
    notify.until("WATCHDOG=1", Duration::from_secs(2));
    let addr = huddle.address();
    (notify, huddle, addr)
}

/// Opens a Room API session, sends `frames`, and runs `watch` while the socket is open.
fn with_frames_sent(addr: std::net::SocketAddr, frames: &[&str], watch: impl FnOnce()) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .unwrap();
        let connection = r#"{"message":"connection","data":[{"custom":{"login":"x"}}]}"#;
        for frame in std::iter::once(&connection).chain(frames) {
            ws.send(Message::text(*frame)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        watch();
        drop(ws);
    });
}

#[test]
fn a_hung_room_core_starves_the_watchdog() {
    let (notify, huddle, addr) = faulty_service("hang", ("HUDDLE_FAULT_HANG_CORE_IN_ROOM", "hang"));
    // A join to the fault-injection room hangs the core loop.
    let join = r#"{"message":"sendData","data":[{"operationId":"o","payload":{"command":"join","options":{"name":"hang"}}}]}"#;
    with_frames_sent(addr, &[join], || {
        // Drain what was in flight, then no WATCHDOG=1 may come for 5 periods.
        let settle = Instant::now() + Duration::from_millis(400);
        while Instant::now() < settle {
            let _ = notify.recv(Duration::from_millis(50));
        }
        let quiet_until = Instant::now() + Duration::from_millis(1500);
        while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
            if let Some(m) = notify.recv(left) {
                assert!(
                    !m.lines().any(|l| l == "WATCHDOG=1"),
                    "watchdog fed while the core hangs: {m:?}"
                );
            }
        }
    });
    assert!(
        huddle.log.iter().all(|l| !l.contains("panicked")),
        "{:#?}",
        huddle.log
    );
    // Drop kills the hung process.
}

#[test]
fn a_panicked_media_task_stops_the_service_for_a_restart() {
    let (notify, mut huddle, addr) = faulty_service("panic", ("HUDDLE_FAULT_PANIC_MEDIA", "1"));
    // The first media request (a publish) panics the SFU task.
    let join = r#"{"message":"sendData","data":[{"operationId":"o","payload":{"command":"join","options":{"name":"r"}}}]}"#;
    let publish = r#"{"message":"publishStream","data":[{"mediaSessionId":"m1","name":"r-x","sdp":"v=0\r\n","custom":{"name":"r"}}]}"#;
    with_frames_sent(addr, &[join, publish], || {
        // The heartbeat finds the task gone: no more WATCHDOG=1, STOPPING=1, exit 1.
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(m) = notify.recv(left) {
                let stopping = m.lines().any(|l| l == "STOPPING=1");
                seen.push(m);
                if stopping {
                    break;
                }
            }
        }
        let stop = seen
            .iter()
            .position(|m| m.contains("STOPPING=1"))
            .unwrap_or_else(|| panic!("no STOPPING=1 after the media task died: {seen:?}"));
        // At most the heartbeat already under way when the task died fed it.
        let fed = seen[..stop]
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count();
        assert!(
            fed <= 2,
            "watchdog fed {fed} times with a dead media task: {seen:?}"
        );
    });
    let status = huddle.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    assert!(
        huddle
            .log
            .iter()
            .any(|l| l.contains("the media (SFU) task ended")),
        "{:#?}",
        huddle.log
    );
}

#[test]
fn no_notify_socket_no_trouble() {
    let mut huddle = Running::start("sd-none");
    let addr = huddle.address();
    assert!(get(addr, "/health").contains("\"status\":\"ok\""));
    huddle.signal(Signal::SIGTERM);
    assert!(huddle.wait_exit(Duration::from_secs(10)).success());
}

/// The unit with ExecStart pointing at the binary under test, in a temp directory.
fn unit_copy(tag: &str) -> (TempFile, PathBuf) {
    let dir = std::env::temp_dir().join(format!("huddle-unit-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("huddle.service");
    std::fs::write(&unit, UNIT.replace("/usr/bin/huddle", BIN)).unwrap();
    // TempFile only to clean up; the directory goes with the file's parent below.
    (TempFile(unit.clone()), dir)
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze (Debian package systemd; make test installs it)")
}

#[test]
fn unit_file_verifies_cleanly() {
    let (unit, dir) = unit_copy("verify");
    let out = systemd_analyze(&["verify", unit.path()]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(dir);
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains("huddle.service"),
        "verify complains about the unit: {text}"
    );
}

#[test]
fn unit_file_exposure_is_at_most_2_5() {
    let (unit, dir) = unit_copy("security");
    let out = systemd_analyze(&["security", "--offline=true", "--no-pager", unit.path()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(dir);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for huddle.service"))
        .unwrap_or_else(|| panic!("no exposure line in {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.5, "exposure {score} > 2.5: {line}");
}

#[test]
fn shipped_config_passes_check_config() {
    let out = huddle(&[
        "--check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/huddle.toml"),
    ]);
    assert!(out.status.success(), "{out:?}");
}
