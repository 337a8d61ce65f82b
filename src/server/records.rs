//! `GET /client/records` (the listing, JSON or a page) and `GET|HEAD
//! /client/records/<name>` (a download, with byte ranges, streamed from the file).
//!
//! Access: anyone in open mode; in token mode a valid token in `Authorization: Bearer
//! <jwt>` or `?token=<jwt>` (so a `<video src>` works): an admin token sees every record,
//! another token the records of the rooms its `rooms` claim allows. Refusals are 401 with
//! a short text; the token is never logged.
//!
//! Only records of the listing are served (a regular `*.mp4` file with a valid sidecar,
//! see `record::listing`), by a plain file name, and only if the file's canonical path is
//! inside the canonical records directory: no path leaves it, not even through a link.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use log::{debug, warn};

use super::Shared;
use crate::auth::Reader;
use crate::record::catalog::RecordKind;
use crate::record::listing::{self, Listed};

/// The listing's path (WCS's).
pub(crate) const PREFIX: &str = "/client/records";

/// Bytes read from the file per body chunk (one chunk in flight per download).
const CHUNK: usize = 64 * 1024;

#[derive(serde::Serialize)]
struct Listing {
    records: Vec<Item>,
}

#[derive(serde::Serialize)]
struct Item {
    name: String,
    url: String,
    kind: RecordKind,
    room: String,
    stream: Option<String>,
    started: String,
    /// `None`: still recording, or cut short without a duration.
    duration_ms: Option<u64>,
    size: u64,
    in_progress: bool,
}

/// The token of a request: `Authorization: Bearer`, else `?token=`.
pub(crate) fn token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| query_token(uri))
}

fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "token")
        .and_then(|(_, value)| percent_decode(value))
}

/// `%XX` decoded; `None` when malformed or not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Everything but the unreserved characters as `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], body).into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Not found\n")
}

/// Who may read which records, or the 401 (boxed: a refusal is the rare path).
fn reader(shared: &Shared, headers: &HeaderMap, uri: &Uri) -> Result<Reader, Box<Response>> {
    let token = token(headers, uri);
    shared.authority.reader(token.as_deref()).map_err(|why| {
        debug!("records: request refused: {why}");
        Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CACHE_CONTROL, "no-store"),
                    (header::WWW_AUTHENTICATE, "Bearer"),
                ],
                format!("Restricted access: {why}\n"),
            )
                .into_response(),
        )
    })
}

/// The records `reader` may see, newest first; on failure the 500.
async fn visible(shared: &Shared, reader: &Reader) -> Result<Vec<Listed>, Box<Response>> {
    let dir = shared.config.records.dir.clone();
    let live = shared.live.clone();
    let scan = tokio::task::spawn_blocking(move || listing::scan(&dir, &live)).await;
    match scan {
        Ok(Ok(all)) => Ok(all
            .into_iter()
            .filter(|l| reader.allows(&l.meta.room))
            .collect()),
        Ok(Err(e)) => {
            warn!(
                "records: cannot read {}: {e}",
                shared.config.records.dir.display()
            );
            Err(Box::new(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read the records directory\n",
            )))
        }
        Err(_) => Err(Box::new(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error\n",
        ))),
    }
}

/// Whether the client asked for JSON (`Accept` names `application/json` before any
/// `text/html`).
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        _ => false,
    }
}

pub(crate) async fn list(State(shared): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    let reader = match reader(&shared, &headers, &uri) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let records = match visible(&shared, &reader).await {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let vary = [
        (header::CACHE_CONTROL, "no-store"),
        (header::VARY, "Accept"),
    ];
    if wants_json(&headers) {
        let records = records
            .into_iter()
            .map(|l| Item {
                url: format!("{PREFIX}/{}", percent_encode(l.name())),
                name: l.meta.name,
                kind: l.meta.kind,
                room: l.meta.room,
                stream: l.meta.stream,
                started: l.meta.started,
                duration_ms: if l.in_progress {
                    None
                } else {
                    l.meta.duration_ms
                },
                size: l.size,
                in_progress: l.in_progress,
            })
            .collect();
        return (vary, Json(Listing { records })).into_response();
    }
    // Links keep a `?token=` the page was opened with, so they play from the page.
    let link_suffix = match query_token(&uri) {
        Some(t) if headers.get(header::AUTHORIZATION).is_none() => {
            format!("?token={}", percent_encode(&t))
        }
        _ => String::new(),
    };
    (vary, axum::response::Html(page(&records, &link_suffix))).into_response()
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// The page for people: one table, no external assets, the web app's colours.
fn page(records: &[Listed], link_suffix: &str) -> String {
    let mut rows = String::new();
    for l in records {
        let url = html_escape(&format!(
            "{PREFIX}/{}{link_suffix}",
            percent_encode(l.name())
        ));
        let what = match (&l.meta.stream, l.meta.kind) {
            (_, RecordKind::Mix) => "room mix".to_owned(),
            (Some(stream), RecordKind::Stream) => html_escape(stream),
            (None, RecordKind::Stream) => String::new(),
        };
        let length = match (l.in_progress, l.meta.duration_ms) {
            (true, _) => "<span class=\"live\">● recording</span>".to_owned(),
            (false, Some(ms)) => duration(ms),
            (false, None) if l.meta.ended.is_none() => "cut short".to_owned(),
            (false, None) => "–".to_owned(),
        };
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"{url}\">{name}</a></td><td>{room}</td><td>{what}</td>\
             <td>{started}</td><td>{length}</td><td class=\"n\">{size}</td>\
             <td><a href=\"{url}\" download>Download</a></td></tr>",
            name = html_escape(l.name()),
            room = html_escape(&l.meta.room),
            started = html_escape(&l.meta.started),
            size = size(l.size),
        );
    }
    let body = match records.is_empty() {
        true => "<p class=\"empty\">No records yet.</p>".to_owned(),
        false => format!(
            "<table>\n<thead><tr><th>Record</th><th>Room</th><th>Stream</th><th>Started (UTC)</th>\
             <th>Duration</th><th class=\"n\">Size</th><th></th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>"
        ),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Huddle records</title>
<link rel="icon" href="data:,">
<style>
:root {{ color-scheme: dark; --bg: #111418; --panel: #1c2128; --line: #2d333b; --text: #e6edf3; --muted: #9aa5b1; --accent: #2f81f7; --danger: #da3633;
  font: 16px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
body {{ margin: 0; padding: 0.75rem; background: var(--bg); color: var(--text); }}
h1 {{ margin: 0 0 0.75rem; font-size: 1.25rem; }}
table {{ border-collapse: collapse; width: 100%; background: var(--panel); border-radius: 0.6rem; overflow: hidden; }}
th, td {{ padding: 0.45rem 0.7rem; border-bottom: 1px solid var(--line); text-align: left; overflow-wrap: anywhere; }}
th {{ color: var(--muted); font-weight: 600; }}
.n {{ text-align: right; white-space: nowrap; }}
a {{ color: var(--accent); }}
.live {{ color: var(--danger); white-space: nowrap; }}
.empty {{ color: var(--muted); }}
</style>
</head>
<body>
<h1>Records</h1>
{body}
</body>
</html>
"#
    )
}

/// One byte range of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// No (usable) `Range`: the whole file.
    Whole,
    /// `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// `Range: bytes=a-b | a- | -n` (one range). Malformed headers, other units and several
/// ranges are ignored (the whole file, as RFC 9110 allows).
fn range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        match !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            true => s.parse().ok(),
            false => None,
        }
    };
    match (first.trim(), last.trim()) {
        ("", n) => match number(n) {
            None => Range::Whole,
            Some(0) => Range::Unsatisfiable,
            Some(_) if len == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part(len.saturating_sub(n), len - 1),
        },
        (a, "") => match number(a) {
            None => Range::Whole,
            Some(a) if a >= len => Range::Unsatisfiable,
            Some(a) => Range::Part(a, len - 1),
        },
        (a, b) => match (number(a), number(b)) {
            (Some(a), Some(b)) if a <= b => match a >= len {
                true => Range::Unsatisfiable,
                false => Range::Part(a, b.min(len - 1)),
            },
            _ => Range::Whole,
        },
    }
}

/// The record's file: opened only if its canonical path is directly in the canonical
/// records directory and it is a regular file. With its length now.
fn open(dir: &Path, name: &str) -> io::Result<(std::fs::File, u64)> {
    let outside = || io::Error::new(io::ErrorKind::NotFound, "outside the records directory");
    let dir = dir.canonicalize()?;
    let path: PathBuf = dir.join(name).canonicalize()?;
    if path.parent() != Some(dir.as_path()) {
        return Err(outside());
    }
    let file = std::fs::File::open(&path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(outside());
    }
    Ok((file, metadata.len()))
}

/// `len` bytes of `file` from `start`, read a chunk at a time as the client takes them.
fn file_body(file: Arc<std::fs::File>, start: u64, len: u64) -> Body {
    let stream = futures_util::stream::unfold((file, start, len), |(file, pos, left)| async move {
        if left == 0 {
            return None;
        }
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let reading = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            let got = reading.read_at(&mut buf, pos)?;
            buf.truncate(got);
            Ok::<_, io::Error>(buf)
        })
        .await;
        match read {
            Ok(Ok(buf)) if !buf.is_empty() => {
                let got = buf.len() as u64;
                Some((Ok(Bytes::from(buf)), (file, pos + got, left - got)))
            }
            // The file shrank (it is never truncated by the recorder): end the body
            // short, which the client sees as a cut download.
            Ok(Ok(_)) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the record shrank",
                )),
                (file, pos, 0),
            )),
            Ok(Err(e)) => Some((Err(e), (file, pos, 0))),
            Err(e) => Some((Err(io::Error::other(e)), (file, pos, 0))),
        }
    });
    Body::from_stream(stream)
}

pub(crate) async fn download(
    State(shared): State<Shared>,
    UrlPath(name): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let reader = match reader(&shared, &headers, &uri) {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let dir = shared.config.records.dir.clone();
    let opened = {
        let (name, live) = (name.clone(), shared.live.clone());
        tokio::task::spawn_blocking(move || match listing::find(&dir, &name, &live) {
            Some(listed) if reader.allows(&listed.meta.room) => open(&dir, &name).map(Some),
            _ => Ok(None),
        })
        .await
    };
    let (file, len) = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => {
            debug!("records: cannot open a listed record: {e}");
            return not_found();
        }
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "Internal error\n"),
    };
    let requested = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match range(requested, len) {
        Range::Whole => (StatusCode::OK, 0, len),
        Range::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Range::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [
                    (header::CONTENT_RANGE, format!("bytes */{len}")),
                    (header::ACCEPT_RANGES, "bytes".to_owned()),
                ],
                "Range not satisfiable\n",
            )
                .into_response();
        }
    };
    let body = match method == Method::HEAD {
        true => Body::empty(),
        false => file_body(Arc::new(file), start, count),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The name is a plain file name, but only its safe characters go in the header.
    let safe: String = name
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                true => c,
                false => '_',
            },
        )
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range(None, 100), Range::Whole);
        assert_eq!(range(Some("bytes=0-9"), 100), Range::Part(0, 9));
        assert_eq!(range(Some("bytes=90-200"), 100), Range::Part(90, 99));
        assert_eq!(range(Some("bytes=10-"), 100), Range::Part(10, 99));
        assert_eq!(range(Some("bytes=-10"), 100), Range::Part(90, 99));
        assert_eq!(range(Some("bytes=-1000"), 100), Range::Part(0, 99));
        assert_eq!(range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=100-200"), 100), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 100), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=0-"), 0), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=-5"), 0), Range::Unsatisfiable);
        // Ignored: malformed, another unit, several ranges, last before first.
        for ignored in [
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=9-5",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(range(Some(ignored), 100), Range::Whole, "{ignored}");
        }
    }

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(
            html_escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(percent_encode("a b/ü.mp4"), "a%20b%2F%C3%BC.mp4");
        assert_eq!(
            percent_decode("a%20b%2F%C3%BC.mp4").as_deref(),
            Some("a b/ü.mp4")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn accept_negotiation() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            wants_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json, text/html;q=0.5"));
        assert!(!with(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!with("*/*"));
        assert!(!wants_json(&HeaderMap::new()));
    }

    #[test]
    fn human_sizes_and_durations() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(duration(61_500), "1:01");
        assert_eq!(duration(3_725_000), "1:02:05");
    }
}
