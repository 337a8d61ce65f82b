//! The service manager edge: sd_notify readiness, status, watchdog and stopping.
//! Every call is a no-op when the process is not run by systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use log::warn;
use sd_notify::NotifyState;

use crate::rooms::Stats;

/// How often the status line is refreshed when there is no watchdog.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify failed: {e}");
    }
}

/// The one-line status `systemctl status` shows.
pub fn status_line(stats: &Stats) -> String {
    format!(
        "{} rooms, {} participants, {} sessions, {} streams, {} players",
        stats.rooms, stats.participants, stats.sessions, stats.streams, stats.players
    )
}

/// Every socket accepts connections: tell the service manager.
pub fn ready(stats: &Stats) {
    send(&[NotifyState::Ready, NotifyState::Status(&status_line(stats))]);
}

/// The room core answered a heartbeat.
pub fn alive(stats: &Stats, watchdog: bool) {
    let status = status_line(stats);
    if watchdog {
        send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
    } else {
        send(&[NotifyState::Status(&status)]);
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `WatchdogSec=` of the unit, if set for this process.
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// How often to probe the room core: twice per watchdog period, as sd_watchdog_enabled(3)
/// recommends, else every few seconds for the status line.
pub fn heartbeat_period(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(STATUS_PERIOD, |w| (w / 2).max(Duration::from_millis(50)))
}
