//! The process's own resources, from `/proc/self` (Linux). A value that cannot be read
//! is left out of the exposition rather than shown as 0.

use std::fs;

/// Ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux's ABI).
const CLOCK_TICKS: f64 = 100.0;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<usize>,
    pub threads: Option<usize>,
    /// Tasks alive in the tokio runtime the sample is taken on (none outside one).
    pub tasks: Option<usize>,
}

impl Process {
    pub fn read() -> Process {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
        Process {
            resident_bytes: status_field(&status, "VmRSS:").map(|kb| kb * 1024),
            cpu_seconds: cpu_seconds(&stat),
            open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count()),
            threads: status_field(&status, "Threads:").and_then(|n| usize::try_from(n).ok()),
            tasks: tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| h.metrics().num_alive_tasks()),
        }
    }
}

/// The number of a `/proc/self/status` line ("VmRSS:   1234 kB" -> 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `/proc/self/stat`, in seconds. The fields are counted after the
/// command name's closing parenthesis (the name may hold spaces and parentheses).
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\thuddle\nVmRSS:\t  2048 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "Threads:"), Some(7));
        let me = Process::read();
        assert!(me.resident_bytes.unwrap_or(0) > 0);
        assert!(me.threads.unwrap_or(0) >= 1);
        assert!(me.open_fds.unwrap_or(0) >= 1);
        assert!(me.cpu_seconds.is_some());
        assert_eq!(me.tasks, None, "no runtime in a plain test");
    }
}
