//! `GET /client/records` and downloads of records, against the real server with
//! hand-made record files and sidecars: the listing (JSON and the page), byte ranges,
//! path traversal, token access and retention.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::*;
use huddle::auth::{mint, now_unix, Claims, Rooms};
use huddle::record::catalog::{self, RecordKind, RecordMeta};

const SECRET: &str = "records-secret";

/// A fresh directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("huddle-records-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Bytes whose value tells their offset (mod 251), so a range is easy to check.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[allow(clippy::too_many_arguments)]
fn record(
    dir: &Path,
    name: &str,
    kind: RecordKind,
    room: &str,
    stream: Option<&str>,
    started: &str,
    ended: Option<&str>,
    duration_ms: Option<u64>,
    len: usize,
) {
    std::fs::write(dir.join(name), content(len)).unwrap();
    let meta = RecordMeta {
        name: name.into(),
        kind,
        room: room.into(),
        stream: stream.map(str::to_owned),
        login: Some("alice".into()),
        started: started.into(),
        ended: ended.map(str::to_owned),
        duration_ms,
        error: None,
    };
    catalog::store(&catalog::sidecar(&dir.join(name)), &meta).unwrap();
}

/// The directory every listing test uses: three records of two rooms (one mix), one
/// without `ended`, and things that are not records.
fn populate(dir: &Path) {
    record(
        dir,
        "alice-20261201T090000Z.mp4",
        RecordKind::Stream,
        "daily",
        Some("alice"),
        "2026-12-01T09:00:00.000Z",
        Some("2026-12-01T09:30:00.000Z"),
        Some(1_800_000),
        1000,
    );
    record(
        dir,
        "daily-20261202T090000Z-mix.mp4",
        RecordKind::Mix,
        "daily",
        None,
        "2026-12-02T09:00:00.000Z",
        Some("2026-12-02T10:00:00.000Z"),
        Some(3_600_000),
        300,
    );
    record(
        dir,
        "bob-20261203T090000Z.mp4",
        RecordKind::Stream,
        "board",
        Some("bob"),
        "2026-12-03T09:00:00.000Z",
        None,
        None,
        50,
    );
    // Not records: a sidecar alone, a temp file, a manifest, an MP4 without a sidecar,
    // one whose sidecar is not JSON.
    std::fs::write(dir.join("orphan.mp4.json"), b"{}").unwrap();
    std::fs::write(dir.join("x.mp4.json.tmp"), b"{").unwrap();
    std::fs::write(dir.join("daily-20261202T090000Z.room.json"), b"{}").unwrap();
    std::fs::write(dir.join("stray.mp4"), b"stray").unwrap();
    std::fs::write(dir.join("broken.mp4"), b"broken").unwrap();
    std::fs::write(dir.join("broken.mp4.json"), b"not json").unwrap();
}

struct Reply {
    status: u16,
    /// Lower-cased.
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::trim)
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request over a raw socket (the path goes out as written).
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("TCP connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = timeout(RECV_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete response"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end"));
    let head = String::from_utf8(raw[..end].to_vec()).expect("UTF-8 head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {head:?}"));
    let headers = head.to_ascii_lowercase();
    assert!(
        !headers.contains("transfer-encoding: chunked"),
        "{method} {path}: chunked: {head}"
    );
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

async fn list_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let mut h = vec![("Accept", "application/json")];
    h.extend_from_slice(headers);
    let r = get(addr, path, &h).await;
    assert_eq!(r.status, 200, "{}\n{}", r.headers, r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no records array: {}", r.text()))
        .clone()
}

fn names(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_listing_shows_records_with_sidecars_newest_first() {
    let dir = temp_dir("list");
    populate(&dir);
    let d = dir.clone();
    let server = start_server(move |c| c.records.dir = d).await;
    let addr = server.local_addr();
    // The recorder writes bob's file now.
    server.live_records().insert("bob-20261203T090000Z.mp4");

    let records = list_json(addr, "/client/records", &[]).await;
    assert_eq!(
        names(&records),
        [
            "bob-20261203T090000Z.mp4",
            "daily-20261202T090000Z-mix.mp4",
            "alice-20261201T090000Z.mp4"
        ]
    );
    let bob = &records[0];
    assert_eq!(bob["kind"], "stream");
    assert_eq!(bob["room"], "board");
    assert_eq!(bob["stream"], "bob");
    assert_eq!(bob["in_progress"], true);
    assert_eq!(bob["size"], 50);
    assert_eq!(bob["duration_ms"], Value::Null);
    assert_eq!(bob["url"], "/client/records/bob-20261203T090000Z.mp4");
    let mix = &records[1];
    assert_eq!(mix["kind"], "mix");
    assert_eq!(mix["stream"], Value::Null);
    assert_eq!(mix["duration_ms"], 3_600_000);
    assert_eq!(mix["in_progress"], false);
    let alice = &records[2];
    assert_eq!(alice["started"], "2026-12-01T09:00:00.000Z");
    assert_eq!(alice["duration_ms"], 1_800_000);
    assert_eq!(alice["size"], 1000);
    for r in &records {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        for key in [
            "name",
            "url",
            "kind",
            "room",
            "stream",
            "started",
            "duration_ms",
            "size",
            "in_progress",
        ] {
            assert!(r.get(key).is_some(), "{key} missing in {r}: {keys:?}");
        }
    }

    // Its recorder gone without `ended` (a crash): finished, duration unknown.
    server.live_records().remove("bob-20261203T090000Z.mp4");
    let records = list_json(addr, "/client/records", &[]).await;
    assert_eq!(records[0]["in_progress"], false);
    assert_eq!(records[0]["duration_ms"], Value::Null);

    // A listed in-progress file downloads as far as it is written.
    server.live_records().insert("bob-20261203T090000Z.mp4");
    let r = get(addr, "/client/records/bob-20261203T090000Z.mp4", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, content(50));

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_page_escapes_what_it_shows() {
    let dir = temp_dir("page");
    populate(&dir);
    record(
        &dir,
        "_script_-20261204T090000Z.mp4",
        RecordKind::Stream,
        "<b>room</b>",
        Some("<script>alert('x')</script>"),
        "2026-12-04T09:00:00.000Z",
        Some("2026-12-04T09:01:00.000Z"),
        Some(60_000),
        10,
    );
    let d = dir.clone();
    let server = start_server(move |c| c.records.dir = d).await;
    let addr = server.local_addr();
    server.live_records().insert("bob-20261203T090000Z.mp4");
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for accept in [Some(browser), None] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let r = get(addr, "/client/records", &headers).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        let page = r.text();
        assert!(page.to_lowercase().starts_with("<!doctype html"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>room"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("&lt;b&gt;room&lt;/b&gt;"), "{page}");
        assert!(
            page.contains("href=\"/client/records/alice-20261201T090000Z.mp4\""),
            "{page}"
        );
        assert!(page.contains("recording"), "the live one is marked: {page}");
        // Nothing from elsewhere.
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
        assert!(!page.contains("orphan") && !page.contains("stray") && !page.contains("broken"));
    }
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn downloads_serve_byte_ranges_and_head() {
    let dir = temp_dir("ranges");
    populate(&dir);
    let d = dir.clone();
    let server = start_server(move |c| c.records.dir = d).await;
    let addr = server.local_addr();
    let path = "/client/records/alice-20261201T090000Z.mp4";
    let all = content(1000);

    let r = get(addr, path, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.body, all);

    for (range, from, to) in [
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, 999),
        ("bytes=-7", 993, 999),
        ("bytes=995-5000", 995, 999),
        ("bytes=0-0", 0, 0),
    ] {
        let r = get(addr, path, &[("Range", range)]).await;
        assert_eq!(r.status, 206, "{range}: {}", r.headers);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{to}/1000").as_str()),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((to - from + 1).to_string().as_str())
        );
        assert_eq!(r.body, all[from..=to], "{range}");
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = get(addr, path, &[("Range", range)]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */1000"), "{range}");
    }

    // A bigger file than one chunk, streamed whole and in a range across chunks.
    let big = content(300_000);
    record(
        &dir,
        "big-20261205T090000Z.mp4",
        RecordKind::Stream,
        "daily",
        Some("big"),
        "2026-12-05T09:00:00.000Z",
        Some("2026-12-05T09:10:00.000Z"),
        Some(600_000),
        big.len(),
    );
    let r = get(addr, "/client/records/big-20261205T090000Z.mp4", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == big, "a big file comes whole");
    let r = get(
        addr,
        "/client/records/big-20261205T090000Z.mp4",
        &[("Range", "bytes=65000-200000")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert!(r.body == big[65_000..=200_000]);

    let r = request(addr, "HEAD", path, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert!(r.body.is_empty());
    let r = request(addr, "HEAD", path, &[("Range", "bytes=-10")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 990-999/1000"));
    assert!(r.body.is_empty());

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn no_path_leaves_the_records_directory() {
    let dir = temp_dir("traversal");
    populate(&dir);
    // Outside the directory: a secret, a record-looking file with a sidecar, and a link
    // to it inside the directory with its own valid sidecar.
    let outside = temp_dir("traversal-outside");
    std::fs::write(outside.join("secret.mp4"), b"secret").unwrap();
    record(
        &outside,
        "elsewhere.mp4",
        RecordKind::Stream,
        "daily",
        Some("x"),
        "2026-12-01T00:00:00.000Z",
        Some("2026-12-01T00:01:00.000Z"),
        None,
        10,
    );
    std::os::unix::fs::symlink(outside.join("secret.mp4"), dir.join("link.mp4")).unwrap();
    let meta = RecordMeta {
        name: "link.mp4".into(),
        kind: RecordKind::Stream,
        room: "daily".into(),
        stream: Some("x".into()),
        login: None,
        started: "2026-12-01T00:00:00.000Z".into(),
        ended: Some("2026-12-01T00:01:00.000Z".into()),
        duration_ms: None,
        error: None,
    };
    catalog::store(&catalog::sidecar(&dir.join("link.mp4")), &meta).unwrap();
    let d = dir.clone();
    let server = start_server(move |c| c.records.dir = d).await;
    let addr = server.local_addr();

    assert!(!names(&list_json(addr, "/client/records", &[]).await).contains(&"link.mp4".into()));
    let escape = format!(
        "..%2F{}%2Felsewhere.mp4",
        outside.file_name().unwrap().to_str().unwrap()
    );
    for path in [
        "/client/records/..%2F..%2Fetc%2Fpasswd",
        "/client/records/%2e%2e%2F%2e%2e%2Fetc%2Fpasswd",
        "/client/records/%2e%2e",
        "/client/records/..",
        "/client/records/../../etc/passwd",
        "/client/records/%2Fetc%2Fpasswd",
        "/client/records/..%5C..%5Cetc%5Cpasswd",
        "/client/records/alice-20261201T090000Z.mp4%00",
        &format!("/client/records/{escape}"),
        "/client/records/link.mp4",
        "/client/records/.hidden.mp4",
        // Not records.
        "/client/records/orphan.mp4.json",
        "/client/records/alice-20261201T090000Z.mp4.json",
        "/client/records/x.mp4.json.tmp",
        "/client/records/daily-20261202T090000Z.room.json",
        "/client/records/stray.mp4",
        "/client/records/broken.mp4",
        "/client/records/nothing.mp4",
        "/client/records/%ff%fe.mp4",
    ] {
        let r = get(addr, path, &[]).await;
        assert!(
            r.status == 404 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("secret"), "{path}");
        assert!(!r.text().contains("root:"), "{path}");
    }
    // A listed name, percent-encoded, still works.
    let r = get(addr, "/client/records/alice%2D20261201T090000Z%2Emp4", &[]).await;
    assert_eq!(r.status, 200);

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

fn token(rooms: Rooms, admin: bool, exp: u64) -> String {
    mint(
        &Claims {
            sub: "viewer".into(),
            rooms,
            publish: false,
            exp,
            admin,
            moderator: false,
        },
        SECRET,
        None,
    )
    .expect("mint")
}

#[tokio::test]
async fn token_mode_shows_each_token_its_rooms() {
    let dir = temp_dir("tokens");
    populate(&dir);
    let d = dir.clone();
    let server = start_server(move |c| {
        c.records.dir = d;
        c.auth.mode = huddle::config::AuthMode::Token;
        c.auth.secret = SECRET.into();
    })
    .await;
    let addr = server.local_addr();
    let exp = now_unix() + 300;
    let daily = token(Rooms::List(vec!["daily".into()]), false, exp);
    let admin = token(Rooms::List(vec![]), true, exp);
    let any = token(Rooms::Any("*".into()), false, exp);
    let expired = token(Rooms::Any("*".into()), true, now_unix() - 3600);
    let forged = mint(
        &Claims {
            sub: "viewer".into(),
            rooms: Rooms::Any("*".into()),
            publish: false,
            exp,
            admin: true,
            moderator: false,
        },
        "not the secret",
        None,
    )
    .unwrap();
    let file = "/client/records/alice-20261201T090000Z.mp4";
    let other_room = "/client/records/bob-20261203T090000Z.mp4";

    // Refused without a valid token, the listing and a download alike.
    for path in ["/client/records", file] {
        let r = get(addr, path, &[]).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.text().starts_with("Restricted access"), "{}", r.text());
        for bad in [&expired, &forged, &"junk".to_owned()] {
            let bearer = format!("Bearer {bad}");
            let r = get(addr, path, &[("Authorization", &bearer)]).await;
            assert_eq!(r.status, 401, "{path}");
            assert!(!r.text().contains(bad.as_str()), "the token echoed");
            let r = get(addr, &format!("{path}?token={bad}"), &[]).await;
            assert_eq!(r.status, 401, "{path}?token=");
        }
    }

    let bearer = format!("Bearer {daily}");
    let seen = names(&list_json(addr, "/client/records", &[("Authorization", &bearer)]).await);
    assert_eq!(
        seen,
        [
            "daily-20261202T090000Z-mix.mp4",
            "alice-20261201T090000Z.mp4"
        ]
    );
    let seen = names(&list_json(addr, &format!("/client/records?token={daily}"), &[]).await);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        get(addr, file, &[("Authorization", &bearer)]).await.status,
        200
    );
    assert_eq!(
        get(addr, other_room, &[("Authorization", &bearer)])
            .await
            .status,
        404
    );
    // `?token=` for a `<video src>`.
    let r = get(
        addr,
        &format!("{file}?token={daily}"),
        &[("Range", "bytes=0-3")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, content(4));
    assert_eq!(
        get(addr, &format!("{other_room}?token={daily}"), &[])
            .await
            .status,
        404
    );
    // The page keeps `?token=` in its links.
    let r = get(addr, &format!("/client/records?token={daily}"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains(&format!("href=\"{file}?token={daily}\"")),
        "{}",
        r.text()
    );

    for all in [&admin, &any] {
        let seen = names(&list_json(addr, &format!("/client/records?token={all}"), &[]).await);
        assert_eq!(seen.len(), 3, "{seen:?}");
        let bearer = format!("Bearer {all}");
        assert_eq!(
            get(addr, other_room, &[("Authorization", &bearer)])
                .await
                .status,
            200
        );
    }

    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn retention_deletes_old_finished_records_but_keeps_live_ones() {
    let dir = temp_dir("retention");
    populate(&dir);
    // Old and finished; old and live (no `ended`, its recorder runs); cut short by a
    // crash long ago (no `ended`, not live, an old file).
    record(
        &dir,
        "old-20200101T000000Z.mp4",
        RecordKind::Stream,
        "daily",
        Some("old"),
        "2020-01-01T00:00:00.000Z",
        Some("2020-01-01T01:00:00.000Z"),
        Some(3_600_000),
        10,
    );
    for name in ["live-20200101T000000Z.mp4", "crashed-20200101T000000Z.mp4"] {
        record(
            &dir,
            name,
            RecordKind::Stream,
            "daily",
            Some("x"),
            "2020-01-01T00:00:00.000Z",
            None,
            None,
            10,
        );
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join(name))
            .unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(1_577_840_400))
            .unwrap();
    }
    // The executor alone.
    let live = huddle::record::live::Live::new();
    live.insert("live-20200101T000000Z.mp4");
    let mut deleted = huddle::record::retention::run(&dir, &live, 30, 0, SystemTime::now());
    deleted.sort();
    assert_eq!(
        deleted,
        ["crashed-20200101T000000Z.mp4", "old-20200101T000000Z.mp4"]
    );
    for gone in &deleted {
        assert!(!dir.join(gone).exists());
        assert!(!catalog::sidecar(&dir.join(gone)).exists());
    }
    assert!(dir.join("live-20200101T000000Z.mp4").exists());

    // The server's task at start: the live one goes once it is not live any more.
    record(
        &dir,
        "old2-20200101T000000Z.mp4",
        RecordKind::Stream,
        "daily",
        Some("old"),
        "2020-01-01T00:00:00.000Z",
        Some("2020-01-01T01:00:00.000Z"),
        Some(3_600_000),
        10,
    );
    let d = dir.clone();
    let server = start_server(move |c| {
        c.records.dir = d;
        c.records.max_age_days = 30;
    })
    .await;
    let old2 = dir.join("old2-20200101T000000Z.mp4");
    wait_until("retention at start", Duration::from_secs(5), || {
        !old2.exists()
    })
    .await;
    // Without the recorder's registry entry the stale live file is a crashed one.
    assert!(!dir.join("live-20200101T000000Z.mp4").exists());
    // Recent records stay.
    let records = list_json(server.local_addr(), "/client/records", &[]).await;
    assert_eq!(records.len(), 3, "{records:?}");
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
