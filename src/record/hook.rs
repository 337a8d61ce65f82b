//! Child processes of the recording: bounded waits that kill a child's whole process
//! group (a shell script's own children too) on a timeout or a shutdown, and the room
//! record hook (`[records] on_room_record_hook`) run after a room's mix is written.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How a bounded wait for a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    Exited(ExitStatus),
    /// Still running at the deadline: killed.
    TimedOut,
    /// The stop flag was raised (a shutdown): killed.
    Stopped,
}

/// Kills the process group of a child started with `process_group(0)` (the child itself
/// if the group is already gone) and reaps it.
pub(crate) fn kill_group(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    if killpg(pid, Signal::SIGKILL).is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits for a child (started in its own process group) at most `timeout`, polling
/// `stop`; kills its group when either runs out.
pub(crate) fn wait_bounded(child: &mut Child, timeout: Duration, stop: &AtomicBool) -> Waited {
    // A deadline past what an Instant can hold: none.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Waited::Exited(status),
            Ok(None) => {}
            Err(e) => {
                warn!("waiting for child {}: {e}; killing it", child.id());
                kill_group(child);
                return Waited::TimedOut;
            }
        }
        if stop.load(Ordering::SeqCst) {
            kill_group(child);
            return Waited::Stopped;
        }
        let now = Instant::now();
        let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now));
        if left.is_zero() {
            kill_group(child);
            return Waited::TimedOut;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// What became of a hook run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// `on_room_record_hook` is empty.
    None,
    Exited(ExitStatus),
    /// Still running after `hook_timeout_ms`: killed.
    Killed,
    /// Killed by a shutdown.
    Stopped,
    /// It could not be started (the reason).
    NotStarted(String),
}

/// Runs `hook` (a program, optionally followed by its own whitespace-separated
/// arguments; no shell) as `<hook> <absolute path of the mixed file> <room>`, in its
/// own process group with no stdin/stdout/stderr, killed (with its children) after
/// `timeout`. Every outcome is logged.
pub fn run_room_hook(
    hook: &str,
    file: &Path,
    room: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> HookOutcome {
    let mut words = hook.split_whitespace();
    let Some(program) = words.next() else {
        return HookOutcome::None;
    };
    // A path that is not an executable file is named as such before anything runs
    // (where exec fails only in the child, e.g. under CPU emulation, it would otherwise
    // look like a hook that exited with 127).
    if program.contains('/') {
        use std::os::unix::fs::PermissionsExt;
        let runnable = std::fs::metadata(program)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    Ok(())
                } else {
                    Err("not an executable file".to_string())
                }
            });
        if let Err(e) = runnable {
            warn!("room record hook {program:?} for room {room:?} could not start: {e}");
            return HookOutcome::NotStarted(e);
        }
    }
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let mut command = Command::new(program);
    command
        .args(words)
        .arg(&file)
        .arg(room)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!("room record hook {program:?} for room {room:?} could not start: {e}");
            return HookOutcome::NotStarted(e.to_string());
        }
    };
    match wait_bounded(&mut child, timeout, stop) {
        Waited::Exited(status) => {
            if status.success() {
                info!(
                    "room record hook {program:?} for room {room:?} ({}) exited: {status}",
                    file.display()
                );
            } else {
                warn!(
                    "room record hook {program:?} for room {room:?} ({}) failed: {status}",
                    file.display()
                );
            }
            HookOutcome::Exited(status)
        }
        Waited::TimedOut => {
            warn!(
                "room record hook {program:?} for room {room:?} still running after {} ms: killed",
                timeout.as_millis()
            );
            HookOutcome::Killed
        }
        Waited::Stopped => {
            warn!("room record hook {program:?} for room {room:?} killed by the shutdown");
            HookOutcome::Stopped
        }
    }
}
