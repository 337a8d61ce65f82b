//! The web app's public read-only routes: `/client/info`, `/client/rooms`,
//! `/client/levels`, `/client/qr.svg`, and the room display's page (`/display`).
//! The access rule's refusal of a non-loopback client without a token is tested on the
//! pure function (`server::client` unit tests): every client here is on 127.0.0.1.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::*;

fn json(what: &str, status: u16, headers: &str, body: &str) -> Value {
    assert_eq!(status, 200, "{what}: {headers}\n{body}");
    assert!(
        headers.contains("content-type: application/json"),
        "{what}: {headers}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what} is not JSON ({e}): {body}"))
}

#[tokio::test]
async fn info_names_the_device_and_the_invite_address() {
    let server = start_server(|c| c.device.login = "Salle 3 — 会议室".into()).await;
    let addr = server.local_addr();
    let (status, headers, body) = http_get(addr, "/client/info").await;
    let info = json("/client/info", status, &headers, &body);
    assert_eq!(info["name"], "Salle 3 — 会议室", "{info}");
    // HTTPS is off in these tests: plain HTTP on the advertised address and bound port.
    assert_eq!(
        info["invite_base"],
        format!("http://127.0.0.1:{}/", addr.port()),
        "{info}"
    );
    assert_eq!(info["https"], false, "{info}");
    assert_eq!(info["max_name_chars"], 128, "{info}");
}

#[tokio::test]
async fn info_with_https_points_at_the_https_port() {
    let dir = std::env::temp_dir().join(format!("huddle-client-routes-{}", std::process::id()));
    let tls_dir = dir.join("tls");
    let server = start_server(|c| {
        c.http.tls = true;
        c.http.tls_listen = "127.0.0.1:0".parse().unwrap();
        c.http.tls_dir = tls_dir;
    })
    .await;
    let tls = server.tls_addr().expect("HTTPS on");
    let (status, headers, body) = http_get(server.local_addr(), "/client/info").await;
    let info = json("/client/info", status, &headers, &body);
    assert_eq!(
        info["invite_base"],
        format!("https://127.0.0.1:{}/", tls.port()),
        "{info}"
    );
    assert_eq!(info["https"], true, "{info}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn rooms(addr: std::net::SocketAddr) -> Value {
    let (status, headers, body) = http_get(addr, "/client/rooms").await;
    json("/client/rooms", status, &headers, &body)
}

#[tokio::test]
async fn rooms_lists_live_rooms_with_their_members() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    assert_eq!(rooms(addr).await, serde_json::json!({ "rooms": [] }));
    let mut ann = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "Борис").await;
    ann.join("会议 1").await;
    bob.join("会议 1").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let list = loop {
        let list = rooms(addr).await;
        if list["rooms"][0]["members"].as_array().map(Vec::len) == Some(2) {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(list["rooms"][0]["name"], "会议 1", "{list}");
    let mut members: Vec<String> = list["rooms"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    members.sort();
    assert_eq!(members, vec!["ann", "Борис"], "{list}");
    drop((ann, bob));
}

#[tokio::test]
async fn token_mode_answers_the_device_s_own_screen() {
    let server = start_server(|c| {
        c.auth.mode = huddle::config::AuthMode::Token;
        c.auth.secret = "s".repeat(32);
    })
    .await;
    let addr = server.local_addr();
    // The device's own screen (loopback) sees the rooms without a token.
    assert_eq!(rooms(addr).await, serde_json::json!({ "rooms": [] }));
    let (status, _, body) = http_get(addr, "/client/levels").await;
    assert_eq!(status, 200, "{body}");
    // From loopback a token that does not verify changes nothing.
    let (status, headers, body) = http_request(
        addr,
        "GET",
        "/client/rooms",
        &[("Authorization", "Bearer not.a.token")],
        None,
    )
    .await;
    assert_eq!(status, 200, "loopback: {headers}\n{body}");
}

#[tokio::test]
async fn levels_route_answers_json() {
    let server = start_server(|_| {}).await;
    let (status, headers, body) = http_get(server.local_addr(), "/client/levels").await;
    let levels = json("/client/levels", status, &headers, &body);
    assert_eq!(levels, serde_json::json!({ "levels": [] }));
}

#[tokio::test]
async fn qr_code_is_an_svg_of_the_invite_link() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let (status, headers, body) =
        http_get(addr, "/client/qr.svg?room=%E4%BC%9A%E8%AE%AE%201").await;
    assert_eq!(status, 200, "{headers}\n{body}");
    assert!(headers.contains("content-type: image/svg+xml"), "{headers}");
    assert!(
        body.contains("<svg") && body.trim_end().ends_with("</svg>"),
        "{body}"
    );
    let (status, _, plain) = http_get(addr, "/client/qr.svg").await;
    assert_eq!(status, 200);
    assert_ne!(plain, body, "the room is in the code");
    for bad in ["/client/qr.svg?room=%E4", "/client/qr.svg?room=%20%20"] {
        let (status, _, body) = http_get(addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let long = "x".repeat(600);
    let (status, _, body) = http_get(addr, &format!("/client/qr.svg?room={long}")).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn display_page_and_script_are_served() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let (status, headers, body) = http_get(addr, "/display").await;
    assert_eq!(status, 200, "{headers}");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(body.contains("/display.js"), "{body}");
    let (status, headers, _) = http_get(addr, "/display.js").await;
    assert_eq!(status, 200);
    assert!(headers.contains("text/javascript"), "{headers}");
}
