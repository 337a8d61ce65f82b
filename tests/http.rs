//! The HTTP edge: the device page, `/health`, WebSocket upgrades on any path and
//! graceful shutdown.

mod common;

use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use common::*;

#[tokio::test]
async fn root_serves_the_device_page() {
    let server = start_server(|_| {}).await;
    let (status, headers, body) = http_get(server.local_addr(), "/").await;
    assert_eq!(status, 200, "{headers}\n{body}");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(body.contains("Huddle"), "{body}");
    assert!(
        body.trim_start()
            .to_lowercase()
            .starts_with("<!doctype html"),
        "{body}"
    );

    let (status, _, _) = http_get(server.local_addr(), "/no/such/page").await;
    assert_eq!(status, 404);
}

async fn health(server: &huddle::server::Server) -> Value {
    let (status, headers, body) = http_get(server.local_addr(), "/health").await;
    assert_eq!(status, 200, "{headers}\n{body}");
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}"))
}

/// Polls `/health` until `cond` holds (the counts follow the room core
/// asynchronously), bounded.
async fn health_until(
    server: &huddle::server::Server,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let h = health(server).await;
        if cond(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "/health never showed {what}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn health_reports_version_sessions_and_rooms() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let h = health(&server).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["version"], huddle::VERSION, "{h}");
    assert_eq!(h["sessions"], 0, "{h}");
    assert_eq!(h["rooms"], 0, "{h}");

    let mut alice = Client::connect(addr, "alice").await;
    health_until(&server, "one session", |h| h["sessions"] == 1).await;
    alice.join("health-room").await;
    let h = health_until(&server, "one room", |h| h["rooms"] == 1).await;
    assert_eq!(h["sessions"], 1, "{h}");
    assert_eq!(h["participants"], 1, "{h}");

    let mut bob = Client::connect(addr, "bob").await;
    bob.join("other-room").await;
    let h = health_until(&server, "two rooms", |h| h["rooms"] == 2).await;
    assert_eq!(h["sessions"], 2, "{h}");

    bob.leave("other-room").await;
    let h = health_until(&server, "the left room gone", |h| h["rooms"] == 1).await;
    assert_eq!(h["sessions"], 2, "{h}");
    bob.close().await;
    alice.close().await;
    let h = health_until(&server, "no sessions", |h| h["sessions"] == 0).await;
    assert_eq!(h["participants"], 0, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
}

#[tokio::test]
async fn websocket_upgrade_works_on_other_paths() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut a = Client::open_path(addr, "/ws", "alice").await;
    a.send_json(connection_frame(Some("alice"))).await;
    assert_eq!(
        a.expect_message("getUserData").await["custom"]["login"],
        "alice"
    );
    a.join("paths").await;

    let mut b = Client::open_path(addr, "/some/deep/path?x=1&y=%20", "bob").await;
    b.send_json(connection_frame(Some("bob"))).await;
    b.expect_message("getUserData").await;
    assert_eq!(b.join("paths").await.len(), 1);
    a.expect_event_in("paths", "JOINED").await;
    chat_ok(&mut a, &mut b, "paths", "across paths").await;
    // Plain GETs on those paths are still not pages.
    let (status, _, _) = http_get(addr, "/ws").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn graceful_shutdown_closes_sessions_with_1001() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = Client::connect(addr, "alice").await;
    alice.join("closing").await;
    let mut idle = Client::open(addr, "not-established").await;
    idle.sync().await;

    let started = Instant::now();
    let (done, a_closed, i_closed) = tokio::join!(
        timeout(Duration::from_secs(5), server.shutdown()),
        alice.expect_close(),
        idle.expect_close(),
    );
    assert!(done.is_ok(), "shutdown() did not return within 5 s");
    let took = started.elapsed();
    for closed in [a_closed, i_closed] {
        assert_eq!(closed.code, 1001, "{closed:?}");
        assert_eq!(closed.reason, "Server shutting down", "{closed:?}");
        assert!(closed.frames.is_empty(), "{closed:?}");
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The listener is gone.
    let refused = timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .expect("connect attempt finishes");
    assert!(
        refused.is_err(),
        "still accepting connections after shutdown"
    );
}

#[tokio::test]
async fn shutdown_without_sessions_is_quick() {
    let server = start_server(|_| {}).await;
    let started = Instant::now();
    timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown returns");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
