//! The admin REST API (`/api/v1`, docs/api.md) on a running service: rooms, kick, mute
//! and close with Room API sessions; bad input on every endpoint; a room closed while
//! it is being joined; access (keys, loopback default, failed-attempt limit, a
//! non-loopback client in a network namespace); the OpenAPI file.

mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

/// Every path of the router, as docs/openapi.json must name them.
const PATHS: &[&str] = &[
    "/api/v1/rooms",
    "/api/v1/rooms/{room}",
    "/api/v1/rooms/{room}/participants/{login}/kick",
    "/api/v1/rooms/{room}/participants/{login}/mute",
    "/api/v1/rooms/{room}/recording",
    "/api/v1/streams",
    "/api/v1/streams/{stream}",
    "/api/v1/streams/{stream}/recording",
    "/api/v1/recordings",
    "/api/v1/records",
    "/api/v1/records/{name}",
    "/api/v1/pushes",
    "/api/v1/pushes/{id}",
    "/api/v1/device",
    "/api/v1/openapi.json",
];

const KEY: &str = "test-api-key-0123456789";

struct Reply {
    status: u16,
    /// Lower-cased.
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    /// Asserts an error answer: `status`, JSON `{error, code}`.
    fn error(&self, status: u16, code: &str, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        let v = self.json();
        assert_eq!(v["code"], code, "{what}: {v}");
        let message = v["error"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "{what}: {v}");
        message
    }
}

/// One request (`common::http_request`) as a `Reply`.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let (status, headers, body) = http_request(addr, method, path, headers, body).await;
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, &[], None).await
}

async fn send_json(addr: SocketAddr, method: &str, path: &str, body: Value) -> Reply {
    call(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
    .await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn member<'a>(room: &'a Value, login: &str) -> &'a Value {
    room["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["login"] == login))
        .unwrap_or_else(|| panic!("no member {login} in {room}"))
}

#[tokio::test]
async fn rooms_mute_kick_close() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    let mut bob = Client::connect(addr, "bob").await;
    alice.join("r1").await;
    bob.join("r1").await;
    alice.expect_event_in("r1", "JOINED").await;

    let r = get(addr, "/api/v1/rooms").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("content-type: application/json"),
        "{}",
        r.headers
    );
    let rooms = r.json();
    let room = rooms["rooms"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "r1"))
        .unwrap_or_else(|| panic!("no r1 in {rooms}"))
        .clone();
    assert_eq!(room["members"].as_array().map(Vec::len), Some(2), "{room}");
    assert_eq!(member(&room, "bob")["kind"], "webrtc", "{room}");
    assert_eq!(room["recording"], false, "{room}");
    assert!(room["created_at"].is_string(), "{room}");

    let one = get(addr, "/api/v1/rooms/r1").await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.json()["name"], "r1");

    // Mute bob's video; audio stays as it was.
    let m = send_json(
        addr,
        "POST",
        "/api/v1/rooms/r1/participants/bob/mute",
        json!({"video": true}),
    )
    .await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.json(), json!({"audio": false, "video": true}));
    let room = get(addr, "/api/v1/rooms/r1").await.json();
    assert_eq!(
        member(&room, "bob")["muted"],
        json!({"audio": false, "video": true})
    );
    let m = send_json(
        addr,
        "POST",
        "/api/v1/rooms/r1/participants/bob/mute",
        json!({"video": false, "audio": true}),
    )
    .await;
    assert_eq!(m.json(), json!({"audio": true, "video": false}));

    // Kick bob: the room sees LEFT, bob's socket is closed like a WCS client expects.
    let k = call(
        addr,
        "POST",
        "/api/v1/rooms/r1/participants/bob/kick",
        &[],
        None,
    )
    .await;
    assert_eq!(k.status, 204, "{}", k.body);
    let closed = bob.expect_close().await;
    assert_eq!(closed.code, 1000, "{closed:?}");
    assert_eq!(closed.reason, "Removed from the room by a moderator");
    let left = alice.expect_event_in("r1", "LEFT").await;
    assert_eq!(left["info"], "bob", "{left}");
    get(addr, "/api/v1/rooms/r1/participants/bob/kick")
        .await
        .error(405, "method_not_allowed", "GET kick");
    call(
        addr,
        "POST",
        "/api/v1/rooms/r1/participants/bob/kick",
        &[],
        None,
    )
    .await
    .error(404, "not_found", "kick again");

    // Close the room: everyone out, the room is gone.
    let c = call(addr, "DELETE", "/api/v1/rooms/r1", &[], None).await;
    assert_eq!(c.status, 204, "{}", c.body);
    let closed = alice.expect_close().await;
    assert_eq!(closed.code, 1000, "{closed:?}");
    assert_eq!(closed.reason, "The room was closed");
    get(addr, "/api/v1/rooms/r1")
        .await
        .error(404, "not_found", "closed room");
    call(addr, "DELETE", "/api/v1/rooms/r1", &[], None)
        .await
        .error(404, "not_found", "close again");
    let rooms = get(addr, "/api/v1/rooms").await.json();
    assert_eq!(rooms, json!({"rooms": []}));
    server.shutdown().await;
}

#[tokio::test]
async fn encoded_logins_and_rooms() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let (room, login) = ("salle à manger/2", "Zoë O'Brien/ops");
    let mut a = Client::connect(addr, login).await;
    a.join(room).await;
    let r = get(addr, &format!("/api/v1/rooms/{}", enc(room))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(member(&r.json(), login)["login"], login);
    let m = send_json(
        addr,
        "POST",
        &format!(
            "/api/v1/rooms/{}/participants/{}/mute",
            enc(room),
            enc(login)
        ),
        json!({"audio": true}),
    )
    .await;
    assert_eq!(
        m.json(),
        json!({"audio": true, "video": false}),
        "{}",
        m.body
    );
    let k = call(
        addr,
        "POST",
        &format!(
            "/api/v1/rooms/{}/participants/{}/kick",
            enc(room),
            enc(login)
        ),
        &[],
        None,
    )
    .await;
    assert_eq!(k.status, 204, "{}", k.body);
    assert_eq!(a.expect_close().await.code, 1000);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_on_every_endpoint() {
    let server = start_server(|c| c.api.max_body_bytes = 1024).await;
    let addr = server.local_addr();
    let mut healthy = Healthy::start(addr).await;
    let mut a = Client::connect(addr, "a").await;
    a.join("room").await;

    // Wrong methods: a JSON 405 on every path.
    let wrong: &[(&str, &str)] = &[
        ("POST", "/api/v1/rooms"),
        ("PUT", "/api/v1/rooms/room"),
        ("GET", "/api/v1/rooms/room/participants/a/mute"),
        ("DELETE", "/api/v1/rooms/room/participants/a/kick"),
        ("GET", "/api/v1/rooms/room/recording"),
        ("DELETE", "/api/v1/streams"),
        ("POST", "/api/v1/streams/s"),
        ("PATCH", "/api/v1/streams/s/recording"),
        ("POST", "/api/v1/recordings"),
        ("DELETE", "/api/v1/records"),
        ("GET", "/api/v1/records/x.mp4"),
        ("PUT", "/api/v1/pushes"),
        ("GET", "/api/v1/pushes/1"),
        ("POST", "/api/v1/device"),
        ("POST", "/api/v1/openapi.json"),
    ];
    for (method, path) in wrong {
        call(addr, method, path, &[], None).await.error(
            405,
            "method_not_allowed",
            &format!("{method} {path}"),
        );
        healthy.check(&format!("{method} {path}")).await;
    }

    // Unknown paths under /api/v1.
    for path in [
        "/api/v1",
        "/api/v1/",
        "/api/v1/nope",
        "/api/v1/rooms/room/nope",
        "/api/v2x",
    ] {
        let r = get(addr, path).await;
        if path.starts_with("/api/v1") {
            r.error(404, "not_found", path);
        } else {
            assert_eq!(r.status, 404, "{path}");
        }
    }

    // Bodies: bad JSON, unknown fields, wrong types, empty, nothing to do, wrong
    // content type, too large.
    let bodies: &[(&str, &str)] = &[
        ("/api/v1/rooms/room/participants/a/mute", "{\"audio\": tru"),
        ("/api/v1/pushes", "[1, 2"),
        ("/api/v1/device", "{\"camera\": }"),
    ];
    for (path, text) in bodies {
        let method = if path.ends_with("device") {
            "PATCH"
        } else {
            "POST"
        };
        let r = call(
            addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            Some(text.as_bytes().to_vec()),
        )
        .await;
        let why = r.error(400, "invalid_request", path);
        assert!(why.contains("JSON"), "{path}: {why}");
        healthy.check(path).await;
    }
    let mute = "/api/v1/rooms/room/participants/a/mute";
    let why = send_json(addr, "POST", mute, json!({"audio": true, "speaker": true}))
        .await
        .error(400, "invalid_request", "unknown field");
    assert!(why.contains("unknown field `speaker`"), "{why}");
    let why = send_json(addr, "POST", mute, json!({"audio": "yes"}))
        .await
        .error(400, "invalid_request", "wrong type");
    assert!(why.contains("invalid type"), "{why}");
    send_json(addr, "POST", mute, json!({}))
        .await
        .error(400, "invalid_request", "nothing to mute");
    call(
        addr,
        "POST",
        mute,
        &[("Content-Type", "application/json")],
        None,
    )
    .await
    .error(400, "invalid_request", "empty body");
    call(
        addr,
        "POST",
        mute,
        &[("Content-Type", "text/plain")],
        Some(b"{\"audio\":true}".to_vec()),
    )
    .await
    .error(415, "unsupported_media_type", "text body");
    call(addr, "POST", mute, &[], None)
        .await
        .error(400, "invalid_request", "no body at all");
    call(addr, "POST", mute, &[], Some(b"{\"audio\":true}".to_vec()))
        .await
        .error(415, "unsupported_media_type", "no content type");
    send_json(
        addr,
        "POST",
        "/api/v1/pushes",
        json!({"stream": "s", "url": "rtmp://x/a/b", "extra": 1}),
    )
    .await
    .error(400, "invalid_request", "push unknown field");
    send_json(
        addr,
        "POST",
        "/api/v1/pushes",
        json!({"url": "rtmp://x/a/b"}),
    )
    .await
    .error(400, "invalid_request", "push without stream");
    send_json(addr, "PATCH", "/api/v1/device", json!({"speaker": false}))
        .await
        .error(400, "invalid_request", "device unknown field");
    let huge = format!("{{\"audio\": true, \"pad\": \"{}\"}}", "x".repeat(1 << 20));
    for path in [mute, "/api/v1/pushes"] {
        call(
            addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(huge.clone().into_bytes()),
        )
        .await
        .error(413, "payload_too_large", path);
        healthy.check(path).await;
    }
    // A body just over the limit (so not refused by its declared length alone).
    let over = format!("{{\"audio\": true, \"pad\": \"{}\"}}", "x".repeat(1024));
    call(
        addr,
        "PATCH",
        "/api/v1/device",
        &[("Content-Type", "application/json")],
        Some(over.into_bytes()),
    )
    .await
    .error(413, "payload_too_large", "device");

    // Unknown ids.
    let unknown: &[(&str, &str)] = &[
        ("GET", "/api/v1/rooms/nope"),
        ("DELETE", "/api/v1/rooms/nope"),
        ("POST", "/api/v1/rooms/nope/participants/a/kick"),
        ("POST", "/api/v1/rooms/room/participants/nobody/kick"),
        ("POST", "/api/v1/rooms/nope/recording"),
        ("DELETE", "/api/v1/rooms/nope/recording"),
        ("GET", "/api/v1/streams/nope"),
        ("DELETE", "/api/v1/streams/nope"),
        ("POST", "/api/v1/streams/nope/recording"),
        ("DELETE", "/api/v1/streams/nope/recording"),
        ("DELETE", "/api/v1/records/nope.mp4"),
        ("DELETE", "/api/v1/pushes/nope"),
    ];
    for (method, path) in unknown {
        call(addr, method, path, &[], None).await.error(
            404,
            "not_found",
            &format!("{method} {path}"),
        );
    }
    for who in ["nobody", "no%20body", "%C3%A9", "a%2Fb"] {
        send_json(
            addr,
            "POST",
            &format!("/api/v1/rooms/room/participants/{who}/mute"),
            json!({"video": true}),
        )
        .await
        .error(404, "not_found", who);
    }
    // Record names that are not plain file names.
    for name in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd.mp4",
        ".hidden.mp4",
        "x.json",
        "%00.mp4",
    ] {
        call(
            addr,
            "DELETE",
            &format!("/api/v1/records/{name}"),
            &[],
            None,
        )
        .await
        .error(400, "invalid_request", name);
    }
    // Not UTF-8 once decoded.
    call(addr, "GET", "/api/v1/rooms/%FF%FE", &[], None)
        .await
        .error(400, "invalid_request", "not UTF-8");

    a.sync().await;
    healthy.check("after everything").await;
    server.shutdown().await;
}

/// A room closed again and again while clients join it: nothing panics, the server
/// keeps serving, and the room ends up either closed or with exactly the members that
/// are still in it.
#[tokio::test]
async fn close_while_joining() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut healthy = Healthy::start(addr).await;
    let mut joiners = Vec::new();
    for i in 0..24 {
        joiners.push(tokio::spawn(async move {
            let login = format!("j{i}");
            let mut c = Client::open(addr, &login).await;
            c.send_json(connection_frame(Some(&login))).await;
            c.send_json(send_data_frame(
                &format!("op{i}"),
                "join",
                json!({"name": "busy"}),
            ))
            .await;
            // Whatever comes: STATE, JOINED, LEFT or the close; until quiet or closed.
            let mut closed = false;
            while let Some(m) = c.recv_any_within(Duration::from_millis(1500)).await {
                if matches!(m, Incoming::Close(_) | Incoming::Ended(_)) {
                    closed = true;
                    break;
                }
            }
            (login, closed, c)
        }));
    }
    let closer = tokio::spawn(async move {
        let mut codes = Vec::new();
        for _ in 0..30 {
            codes.push(
                call(addr, "DELETE", "/api/v1/rooms/busy", &[], None)
                    .await
                    .status,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        codes
    });
    let codes = closer.await.expect("closer");
    assert!(codes.iter().all(|c| *c == 204 || *c == 404), "{codes:?}");
    let mut open = Vec::new();
    for j in joiners {
        let (login, closed, c) = j.await.expect("joiner does not panic");
        if !closed {
            open.push((login, c));
        }
    }
    let r = get(addr, "/api/v1/rooms/busy").await;
    match r.status {
        404 => {}
        200 => {
            let room = r.json();
            let mut members: Vec<String> = room["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|m| m["login"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            members.sort();
            let mut still: Vec<String> = open.iter().map(|(l, _)| l.clone()).collect();
            still.sort();
            assert_eq!(members, still, "members of the re-created room: {room}");
        }
        s => panic!("GET busy: {s} {}", r.body),
    }
    healthy.check("after the storm").await;
    assert_eq!(get(addr, "/api/v1/rooms").await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn lists_streams_recordings_pushes_device() {
    let dir = std::env::temp_dir().join(format!("huddle-api-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let records_dir = dir.clone();
    let server = start_server(move |c| c.records.dir = records_dir).await;
    let addr = server.local_addr();

    assert_eq!(
        get(addr, "/api/v1/streams").await.json(),
        json!({"streams": []})
    );
    assert_eq!(
        get(addr, "/api/v1/recordings").await.json(),
        json!({"recordings": []})
    );
    let pushes = get(addr, "/api/v1/pushes").await;
    assert_eq!(pushes.status, 200);
    assert!(pushes.json()["pushes"].is_array());
    let d = get(addr, "/api/v1/device").await;
    // No camera, no microphone configured in the tests.
    d.error(404, "not_found", "device");

    // Records: a finished one is listed and deleted; one being written is refused.
    let meta = |name: &str| {
        json!({"name": name, "kind": "stream", "room": "r", "stream": "r/a", "login": "a",
               "started": "2026-12-02T10:00:00Z", "ended": "2026-12-02T10:01:00Z",
               "duration_ms": 60000})
    };
    for name in ["done.mp4", "busy.mp4"] {
        std::fs::write(dir.join(name), b"not really mp4").unwrap();
        std::fs::write(dir.join(format!("{name}.json")), meta(name).to_string()).unwrap();
    }
    let mut busy = meta("busy.mp4");
    busy.as_object_mut().unwrap().remove("ended");
    std::fs::write(dir.join("busy.mp4.json"), busy.to_string()).unwrap();
    server.live_records().insert("busy.mp4");
    let list = get(addr, "/api/v1/records").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let records = list.json()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let done = records
        .iter()
        .find(|r| r["name"] == "done.mp4")
        .expect("done listed");
    assert_eq!(done["url"], "/client/records/done.mp4");
    assert_eq!(done["in_progress"], false);
    let b = records
        .iter()
        .find(|r| r["name"] == "busy.mp4")
        .expect("busy listed");
    assert_eq!(b["in_progress"], true);
    call(addr, "DELETE", "/api/v1/records/busy.mp4", &[], None)
        .await
        .error(409, "conflict", "in progress");
    let del = call(addr, "DELETE", "/api/v1/records/done.mp4", &[], None).await;
    assert_eq!(del.status, 204, "{}", del.body);
    assert!(!dir.join("done.mp4").exists() && !dir.join("done.mp4.json").exists());
    call(addr, "DELETE", "/api/v1/records/done.mp4", &[], None)
        .await
        .error(404, "not_found", "deleted");
    // Outside the directory, even when it exists.
    std::fs::write(dir.join("../huddle-api-outside.mp4"), b"x").unwrap();
    call(
        addr,
        "DELETE",
        "/api/v1/records/..%2Fhuddle-api-outside.mp4",
        &[],
        None,
    )
    .await
    .error(400, "invalid_request", "traversal");
    assert!(dir.join("../huddle-api-outside.mp4").exists());
    let _ = std::fs::remove_file(dir.join("../huddle-api-outside.mp4"));

    // Whole-room recording of an empty room: 404; of a room: started and stopped.
    let mut a = Client::connect(addr, "a").await;
    a.join("rec").await;
    let on = call(addr, "POST", "/api/v1/rooms/rec/recording", &[], None).await;
    assert_eq!(on.status, 201, "{}", on.body);
    assert_eq!(on.json(), json!({"room": "rec", "recording": true}));
    assert_eq!(
        get(addr, "/api/v1/rooms/rec").await.json()["recording"],
        true
    );
    let off = call(addr, "DELETE", "/api/v1/rooms/rec/recording", &[], None).await;
    assert_eq!(off.status, 204, "{}", off.body);
    assert_eq!(
        get(addr, "/api/v1/rooms/rec").await.json()["recording"],
        false
    );

    // Pushes (final behaviour: the registry of the pushes helper).
    let p = send_json(
        addr,
        "POST",
        "/api/v1/pushes",
        json!({"stream": "rec/a", "url": "rtmp://127.0.0.1:1/live/key", "retry_ms": 500}),
    )
    .await;
    assert_eq!(p.status, 201, "POST push: {}", p.body);
    let id = p.json()["id"].as_str().unwrap_or_default().to_owned();
    assert!(p.headers.contains(&format!(
        "location: /api/v1/pushes/{}",
        enc(&id).to_ascii_lowercase()
    )));
    let listed = get(addr, "/api/v1/pushes").await.json();
    assert!(listed["pushes"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["id"] == id.as_str())));
    let s = call(
        addr,
        "DELETE",
        &format!("/api/v1/pushes/{}", enc(&id)),
        &[],
        None,
    )
    .await;
    assert_eq!(s.status, 204, "{}", s.body);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn keys_and_failed_attempts() {
    let server = start_server(|c| {
        c.api.keys = vec![KEY.into()];
        c.api.failed_attempts_per_minute = 4;
    })
    .await;
    let addr = server.local_addr();
    // The description is public.
    let doc = get(addr, "/api/v1/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"].as_str().map(|v| &v[..2]), Some("3."));

    let missing = get(addr, "/api/v1/rooms").await;
    let wrong = call(
        addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", "Bearer not-the-key")],
        None,
    )
    .await;
    missing.error(401, "unauthorized", "missing key");
    wrong.error(401, "unauthorized", "wrong key");
    assert_eq!(
        missing.body, wrong.body,
        "a wrong key and a missing key look alike"
    );
    assert!(
        wrong.headers.contains("www-authenticate: bearer"),
        "{}",
        wrong.headers
    );
    // A proxy header does not help.
    call(
        addr,
        "GET",
        "/api/v1/rooms",
        &[("X-Forwarded-For", "127.0.0.1")],
        None,
    )
    .await
    .error(401, "unauthorized", "forwarded");
    let bearer = format!("Bearer {KEY}");
    let right = call(
        addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(right.status, 200, "{}", right.body);
    // A fourth failure uses the last attempt; then 429, even with the right key.
    call(
        addr,
        "GET",
        "/api/v1/streams",
        &[("Authorization", "Bearer x")],
        None,
    )
    .await
    .error(401, "unauthorized", "fourth");
    let limited = call(
        addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    limited.error(429, "rate_limited", "over the limit");
    assert!(
        limited.headers.contains("retry-after: "),
        "{}",
        limited.headers
    );
    server.shutdown().await;

    // A hashed key, as `huddle api-key` prints it.
    let out = process::huddle_command()
        .arg("api-key")
        .output()
        .expect("huddle api-key");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no key in {text}"))
        .to_owned();
    let hashed = text
        .split('"')
        .find(|s| s.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no sha256 form in {text}"))
        .to_owned();
    assert_eq!(key.len(), 64);
    assert_eq!(hashed.len(), 7 + 64);
    let server = start_server(move |c| c.api.keys = vec![hashed]).await;
    let addr = server.local_addr();
    let ok = call(
        addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", &format!("Bearer {key}"))],
        None,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    server.shutdown().await;
}

/// No key configured: loopback clients are answered, others refused. A non-loopback
/// client needs an address of this host that is not loopback: a network namespace
/// where the service and the client run, with 192.0.2.1 on a dummy interface (or on
/// `lo` when the kernel has no dummy driver: the address is not loopback either).
#[test]
fn no_keys_answers_loopback_only() {
    let probe = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED no_keys_answers_loopback_only: cannot create a network namespace (unshare --net; needs root)");
        return;
    }
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED no_keys_answers_loopback_only: no curl");
        return;
    }
    let config = std::env::temp_dir().join(format!("huddle-api-netns-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[http]\nlisten = \"0.0.0.0:18931\"\ntls = false\n\
         [media]\nudp_port = 0\nadvertise_ips = [\"192.0.2.1\"]\n\
         [device]\ncamera = \"none\"\nmicrophone = \"none\"\n[rtmp]\nenabled = false\n",
    )
    .unwrap();
    let script = format!(
        "set -e; ip link set lo up; \
         if ip link add d0 type dummy 2>/dev/null; then ip addr add 192.0.2.1/24 dev d0; ip link set d0 up; \
         else ip addr add 192.0.2.1/32 dev lo; fi; \
         {bin} --config {cfg} 2>/tmp/huddle-api-netns.log & pid=$!; \
         for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18931/health && break; sleep 0.1; done; \
         echo loopback=$(curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:18931/api/v1/rooms); \
         echo remote=$(curl -s -w '%{{http_code}}' --interface 192.0.2.1 -H 'X-Forwarded-For: 127.0.0.1' http://192.0.2.1:18931/api/v1/rooms); \
         echo doc=$(curl -s -o /dev/null -w '%{{http_code}}' --interface 192.0.2.1 http://192.0.2.1:18931/api/v1/openapi.json); \
         kill $pid; wait $pid || true",
        // Under CPU emulation the binary runs through the wrapper, like this test.
        bin = {
            let c = process::huddle_command();
            std::iter::once(c.get_program())
                .chain(c.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        },
        cfg = config.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let _ = std::fs::remove_file(&config);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = std::fs::read_to_string("/tmp/huddle-api-netns.log").unwrap_or_default();
    assert!(stdout.contains("loopback=200"), "{stdout}\n{log}");
    assert!(stdout.contains("doc=200"), "{stdout}\n{log}");
    let remote = stdout
        .lines()
        .find_map(|l| l.strip_prefix("remote="))
        .unwrap_or_default();
    assert!(remote.ends_with("403"), "{stdout}\n{log}");
    assert!(remote.contains("\"code\":\"forbidden\""), "{stdout}");
    assert!(
        log.contains("admin API: no [api] keys configured, answering loopback clients only"),
        "{log}"
    );
}

/// docs/openapi.json is a valid OpenAPI 3 document (openapi-spec-validator) and names
/// exactly the router's paths, each with the methods the router serves.
#[test]
fn openapi_file_validates_and_names_every_route() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let mut named: Vec<&str> = paths.keys().map(String::as_str).collect();
    named.sort();
    let mut served = PATHS.to_vec();
    served.sort();
    assert_eq!(named, served);
    let methods: &[(&str, &[&str])] = &[
        ("/api/v1/rooms", &["get"]),
        ("/api/v1/rooms/{room}", &["get", "delete"]),
        ("/api/v1/rooms/{room}/participants/{login}/kick", &["post"]),
        ("/api/v1/rooms/{room}/participants/{login}/mute", &["post"]),
        ("/api/v1/rooms/{room}/recording", &["post", "delete"]),
        ("/api/v1/streams", &["get"]),
        ("/api/v1/streams/{stream}", &["get", "delete"]),
        ("/api/v1/streams/{stream}/recording", &["post", "delete"]),
        ("/api/v1/recordings", &["get"]),
        ("/api/v1/records", &["get"]),
        ("/api/v1/records/{name}", &["delete"]),
        ("/api/v1/pushes", &["get", "post"]),
        ("/api/v1/pushes/{id}", &["delete"]),
        ("/api/v1/device", &["get", "patch"]),
        ("/api/v1/openapi.json", &["get"]),
    ];
    for (path, want) in methods {
        let mut have: Vec<&str> = paths[*path]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| ["get", "post", "put", "patch", "delete"].contains(k))
            .collect();
        have.sort();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(have, want, "{path}");
    }
    // The venv of scripts/install-deps.sh test (Debian 12 has no package of it).
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/oelint-venv/bin/python3");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, json\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\n\
             print('valid')",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("target/oelint-venv/bin/python3 (scripts/install-deps.sh test installs openapi-spec-validator there)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("valid"),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Streams over the API with an RTMP publisher (ffmpeg): listed with its source, recorded
/// at run time, terminated. The codecs, the bitrate and the active-recordings list come
/// from the media engine and the recorder (final behaviour; asserted last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_stream_listed_recorded_terminated() {
    let dir = std::env::temp_dir().join(format!("huddle-api-rtmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let records_dir = dir.clone();
    let server = start_server(move |c| c.records.dir = records_dir).await;
    let addr = server.local_addr();
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(addr, "alice").await;
    alice.join("live").await;
    let child = common::rtmp::ffmpeg(&format!("rtmp://127.0.0.1:{port}/live/obs"), 20);
    common::rtmp::events_until(&mut alice, "live", "PUBLISHED", Duration::from_secs(10)).await;
    let name = "live-obs";

    let s = get(addr, &format!("/api/v1/streams/{name}")).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let s = s.json();
    assert_eq!(s["source"], "rtmp", "{s}");
    assert_eq!(s["room"], "live", "{s}");
    assert_eq!(s["login"], "obs", "{s}");
    let room = get(addr, "/api/v1/rooms/live").await.json();
    assert_eq!(member(&room, "obs")["kind"], "rtmp", "{room}");
    assert_eq!(member(&room, "obs")["streams"], json!([name]), "{room}");

    let on = call(
        addr,
        "POST",
        &format!("/api/v1/streams/{name}/recording"),
        &[],
        None,
    )
    .await;
    assert_eq!(on.status, 201, "{}", on.body);
    assert_eq!(on.json(), json!({"stream": name, "recording": true}));
    assert_eq!(
        get(addr, &format!("/api/v1/streams/{name}")).await.json()["recording"],
        true
    );
    // The recorder's list (final behaviour of the recordings helper).
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = get(addr, "/api/v1/recordings").await.json();
        if listed["recordings"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let off = call(
        addr,
        "DELETE",
        &format!("/api/v1/streams/{name}/recording"),
        &[],
        None,
    )
    .await;
    assert_eq!(off.status, 204, "{}", off.body);

    // Terminate it: the room sees it unpublished; the API no longer lists it.
    let end = call(
        addr,
        "DELETE",
        &format!("/api/v1/streams/{name}"),
        &[],
        None,
    )
    .await;
    assert_eq!(end.status, 204, "{}", end.body);
    common::rtmp::events_until(&mut alice, "live", "UNPUBLISHED", Duration::from_secs(10)).await;
    get(addr, &format!("/api/v1/streams/{name}"))
        .await
        .error(404, "not_found", "ended stream");
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        listed["recordings"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["stream"] == name && r["whole_room"] == false)),
        "GET /api/v1/recordings while recording: {listed}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The codecs, resolution and bitrate of a stream (final behaviour: the media engine's
/// `stream_stats`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_codecs_and_bitrate() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let port = server.rtmp_addr().expect("[rtmp] is on in tests").port();
    let mut alice = Client::connect(addr, "alice").await;
    alice.join("codecs").await;
    let mut child = common::rtmp::ffmpeg(&format!("rtmp://127.0.0.1:{port}/codecs/obs"), 20);
    common::rtmp::events_until(&mut alice, "codecs", "PUBLISHED", Duration::from_secs(10)).await;
    let mut s = Value::Null;
    for _ in 0..60 {
        s = get(addr, "/api/v1/streams/codecs-obs").await.json();
        if s["video"]["bitrate_bps"].as_u64().is_some_and(|b| b > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(s["video"]["codec"], "H264", "{s}");
    assert_eq!(s["video"]["width"], 320, "{s}");
    assert_eq!(s["video"]["height"], 240, "{s}");
    assert!(
        s["video"]["bitrate_bps"].as_u64().is_some_and(|b| b > 0),
        "{s}"
    );
    assert!(s["audio"]["codec"].is_string(), "{s}");
    server.shutdown().await;
}
