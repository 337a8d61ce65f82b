//! Logging through the `log` facade: to the journal when stderr is connected to it
//! (running under systemd), otherwise readable lines on stderr.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Installs the logger once for the process. Later calls only change the level.
pub fn init(level: LevelFilter) {
    let installed = if systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new()
            .map(|j| j.with_syslog_identifier("huddle".into()))
            .and_then(|j| j.install().map_err(std::io::Error::other))
            .is_ok()
    } else {
        false
    };
    if !installed {
        let _ = log::set_logger(&STDERR);
    }
    log::set_max_level(level);
}

/// Longest client-supplied string a log line carries, in characters.
pub const MAX_LOGGED_CHARS: usize = 96;

/// A client-supplied string (login, room, stream name, SDP line, token claim…) as it
/// goes into a log line or journal field: quoted, with control characters, quotes and
/// backslashes escaped as `{:?}` escapes them, and at most [`MAX_LOGGED_CHARS`]
/// characters (a longer one ends in `…`). A login with a newline cannot forge a line.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

/// Wraps a client-supplied string for logging; see [`Escaped`].
pub fn escaped(s: &str) -> Escaped<'_> {
    Escaped(s)
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            f.write_char('…')?;
        }
        f.write_char('"')
    }
}

impl std::fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

struct StderrLog;

static STDERR: StderrLog = StderrLog;

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
            // Dependencies are only interesting when asked for with trace.
            && (metadata.target().starts_with("huddle") || log::max_level() >= LevelFilter::Trace)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:5} {}: {}\n",
            utc_timestamp(SystemTime::now()),
            record.level(),
            record.target(),
            record.args()
        );
        // One write per line so lines of concurrent tasks do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` without a date-time dependency.
fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn client_strings_are_escaped_and_bounded() {
        let forged = "bob\n2026-01-01T00:00:00.000Z ERROR huddle::auth: fake";
        let shown = escaped(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("\"bob\\n2026"), "{shown}");
        assert_eq!(escaped("Борис 🎉").to_string(), "\"Борис 🎉\"");
        assert_eq!(
            escaped("a\"b\\c\r\u{1b}").to_string(),
            r#""a\"b\\c\r\u{1b}""#
        );
        let long = "x".repeat(10_000);
        let shown = escaped(&long).to_string();
        assert_eq!(shown.chars().count(), MAX_LOGGED_CHARS + 3, "{shown}");
        assert!(shown.ends_with("…\""));
    }

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_224_034_123);
        assert_eq!(utc_timestamp(t), "2026-11-21T01:20:34.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
