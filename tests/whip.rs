//! WHIP and WHEP on the HTTP listener with `webrtc` 0.21.1 clients (offers without
//! candidates, answers applied as a WHIP client does): a WHIP publisher is a member of
//! the room for the Room API, a WHEP player receives its RTP, DELETE ends both; tokens,
//! quotas, CORS and every bad request. Every wait is bounded.

mod common;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::net::SocketAddr;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::json;

use common::rtmp::events_until;
use common::*;
use huddle::auth::Rooms;
use huddle::server::Server;
use webrtc_client::*;

const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;
const SECRET: &str = "whip-test-secret";
const MEDIA_WAIT: Duration = Duration::from_secs(5);

async fn stop(server: Server) {
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown within 8 s");
}

async fn publisher(name: &str) -> RtcClient {
    RtcClient::publisher(
        name,
        &[
            (AUDIO, opus(111), 0x1111_1111),
            (VIDEO, h264(125), 0x2222_2222),
        ],
    )
    .await
}

async fn player(name: &str) -> RtcClient {
    RtcClient::player(name, &[(AUDIO, opus(111)), (VIDEO, h264(125))]).await
}

/// (status, lower-cased head, body) of `http_request`.
type Answer = (u16, String, String);

/// A POST of `sdp` to `path` as `application/sdp`, with `extra` headers.
async fn post(addr: SocketAddr, path: &str, sdp: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("Content-Type", "application/sdp")];
    headers.extend_from_slice(extra);
    http_request(addr, "POST", path, &headers, Some(sdp.as_bytes().to_vec())).await
}

/// The value of a header in `http_request`'s lower-cased head.
fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").find_map(|l| {
        l.strip_prefix(&format!("{name}:"))
            .map(|v| v.trim().to_owned())
    })
}

/// A 201 with the answer: its Location (checked against `prefix`) and the SDP.
fn created(
    what: &str,
    (status, head, body): (u16, String, String),
    prefix: &str,
) -> (String, String) {
    assert_eq!(status, 201, "{what}: {head}\n{body}");
    assert_eq!(
        header(&head, "content-type").as_deref(),
        Some("application/sdp"),
        "{what}: {head}"
    );
    let location =
        header(&head, "location").unwrap_or_else(|| panic!("{what}: no Location: {head}"));
    let id = location
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{what}: Location {location} is not under {prefix}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{what}: the resource id must be 128 random bits: {location}"
    );
    assert!(
        body.contains("a=candidate:"),
        "{what}: the answer carries its candidates:\n{body}"
    );
    assert!(
        body.contains("a=ice-lite"),
        "{what}: ICE-lite answer:\n{body}"
    );
    (location, body)
}

/// Publishes `login` into `room` over WHIP: (Location, publisher, camera, stream name
/// seen by `watcher` in PUBLISHED).
async fn whip_publish(
    addr: SocketAddr,
    room: &str,
    login: &str,
    watcher: &mut Client,
) -> (String, RtcClient, Camera, String) {
    let mut pc = publisher(login).await;
    let offer = pc.create_offer().await;
    let answer = post(addr, &format!("/whip/{room}/{login}"), &offer, &[]).await;
    let (location, answer) = created("WHIP POST", answer, &format!("/whip/{room}/{login}/"));
    pc.apply_answer(&answer).await;
    pc.wait_connected(MEDIA_WAIT).await;
    let camera = Camera::start(
        &pc,
        Position {
            video: (1000, 90_000),
            audio: (2000, 48_000),
        },
    )
    .await;
    let joined = events_until(watcher, room, "JOINED", MEDIA_WAIT).await;
    assert_eq!(joined.last().unwrap()["info"], login, "{joined:?}");
    let published = events_until(watcher, room, "PUBLISHED", MEDIA_WAIT).await;
    let info = &published.last().unwrap()["info"];
    assert_eq!(info["login"], login, "{published:?}");
    let stream = info["name"].as_str().expect("stream name").to_owned();
    // Named as the SDK names a room member's stream: <room>-<login>-<4 hex>.
    let tag = stream
        .strip_prefix(&format!("{room}-{login}-"))
        .unwrap_or_else(|| panic!("stream {stream} is not named like the SDK's"));
    assert!(
        tag.len() == 4 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
        "{stream}"
    );
    (location, pc, camera, stream)
}

/// Waits (bounded) until no stream, player, peer and session but `sessions` is left.
async fn expect_only_sessions(server: &Server, sessions: usize, why: &str) {
    wait_until(
        &format!("{sessions} sessions and no stream/player/peer {why}"),
        Duration::from_secs(5),
        || {
            let s = server.stats();
            s.streams == 0 && s.players == 0 && server.media_peers() == 0 && s.sessions == sessions
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_is_a_member_a_whep_player_plays_delete_ends_both() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    assert!(bob.join("r").await.is_empty());

    let (location, pc, camera, stream) = whip_publish(addr, "r", "alice", &mut bob).await;
    // A Room API member plays it like any browser's stream.
    let mut bob_pc = player("bob-player").await;
    common_play(&mut bob, &mut bob_pc, "r", &stream).await;
    let (got, _) = bob_pc.collect_rtp(&[AUDIO, VIDEO], 10, MEDIA_WAIT).await;
    assert!(
        got.iter().all(|(_, v)| v.len() >= 10),
        "bob gets alice's RTP"
    );

    // WHEP: a viewer member of the room receives the RTP.
    let mut viewer = player("viewer").await;
    let offer = viewer.create_offer().await;
    let whep = post(addr, &format!("/whep/r/{stream}"), &offer, &[]).await;
    let (whep_location, answer) = created("WHEP POST", whep, &format!("/whep/r/{stream}/"));
    viewer.apply_answer(&answer).await;
    viewer.wait_connected(MEDIA_WAIT).await;
    let joined = events_until(&mut bob, "r", "JOINED", MEDIA_WAIT).await;
    let viewer_login = joined.last().unwrap()["info"].as_str().unwrap().to_owned();
    assert!(viewer_login.starts_with("WHEP player "), "{joined:?}");
    let (got, _) = viewer.collect_rtp(&[AUDIO, VIDEO], 20, MEDIA_WAIT).await;
    for (kind, packets) in &got {
        assert!(
            packets.len() >= 20,
            "WHEP viewer: {} {kind} packets",
            packets.len()
        );
    }
    assert_eq!(server.stats().players, 2);
    assert_eq!(server.stats().participants, 3);

    // DELETE of the publisher: the room sees it unpublished and gone; every player's
    // play ends, the WHEP resource with it.
    let (status, _, body) = http_request(addr, "DELETE", &location, &[], None).await;
    assert_eq!(status, 200, "DELETE {location}: {body}");
    let end = events_until(&mut bob, "r", "LEFT", MEDIA_WAIT).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.ends_with(&["UNPUBLISHED", "LEFT"]), "{end:?}");
    assert_eq!(
        end[end.len() - 2]["info"],
        json!({"login": "alice", "name": stream})
    );
    assert_eq!(end[end.len() - 1]["info"], "alice");
    let end = events_until(&mut bob, "r", "LEFT", MEDIA_WAIT).await;
    assert_eq!(
        end.last().unwrap()["info"],
        viewer_login.as_str(),
        "{end:?}"
    );
    camera.stop().await;
    // Both are gone: their URLs are unknown now.
    for gone in [&location, &whep_location] {
        let (status, _, body) = http_request(addr, "DELETE", gone, &[], None).await;
        assert_eq!(status, 404, "DELETE {gone} again: {body}");
    }
    expect_only_sessions(&server, 1, "after the DELETE").await;
    assert_eq!(server.stats().participants, 1);
    pc.close().await;
    viewer.close().await;
    bob_pc.close().await;
    stop(server).await;
}

/// The answer, then PLAYING, for a Room API play of `stream` (msid `m-play`).
async fn common_play(ws: &mut Client, pc: &mut RtcClient, room: &str, stream: &str) {
    let offer = pc.create_offer().await;
    ws.send_json(stream_request(
        false,
        "m-play",
        stream,
        room,
        &offer,
        (true, true),
    ))
    .await;
    loop {
        let v = ws.recv().await;
        match v["message"].as_str() {
            Some("setRemoteSDP") => pc.apply_answer(v["data"][1].as_str().unwrap()).await,
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PENDING" => {}
            Some("notifyStreamStatusEvent") => {
                assert_eq!(v["data"][0]["status"], "PLAYING", "{v}");
                break;
            }
            _ => {}
        }
    }
    pc.wait_connected(MEDIA_WAIT).await;
}

/// A DELETE of the WHEP resource ends that play only: the viewer leaves, the stream
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_delete_ends_the_play_only() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let (location, pc, camera, stream) = whip_publish(addr, "r", "alice", &mut bob).await;
    let mut viewer = player("viewer").await;
    let offer = viewer.create_offer().await;
    let whep = post(addr, &format!("/whep/r/{stream}"), &offer, &[]).await;
    let (whep_location, answer) = created("WHEP POST", whep, &format!("/whep/r/{stream}/"));
    viewer.apply_answer(&answer).await;
    viewer.wait_connected(MEDIA_WAIT).await;
    let (got, _) = viewer.collect_rtp(&[VIDEO], 10, MEDIA_WAIT).await;
    assert!(got[0].1.len() >= 10);
    let (status, _, body) = http_request(addr, "DELETE", &whep_location, &[], None).await;
    assert_eq!(status, 200, "{body}");
    let end = events_until(&mut bob, "r", "LEFT", MEDIA_WAIT).await;
    assert!(
        end.last().unwrap()["info"]
            .as_str()
            .unwrap()
            .starts_with("WHEP player "),
        "{end:?}"
    );
    assert!(!end.iter().any(|p| p["name"] == "UNPUBLISHED"), "{end:?}");
    wait_until("no player", MEDIA_WAIT, || server.stats().players == 0).await;
    assert_eq!(server.stats().streams, 1);
    let (status, _, _) = http_request(addr, "DELETE", &location, &[], None).await;
    assert_eq!(status, 200);
    camera.stop().await;
    expect_only_sessions(&server, 1, "after both DELETEs").await;
    pc.close().await;
    viewer.close().await;
    stop(server).await;
}

/// An offer whose peer never connects fails by the ICE timeout: the resource ends by
/// itself, the member leaves, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_never_connects_ends_by_the_ice_timeout() {
    let server = start_server(|c| c.media.ice_timeout_ms = 1500).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let started = std::time::Instant::now();
    let answer = post(addr, "/whip/r/alice", &offer, &[]).await;
    let (location, _) = created("WHIP POST", answer, "/whip/r/alice/");
    // The answer is never applied: no ICE.
    let end = events_until(&mut bob, "r", "LEFT", Duration::from_secs(6)).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["JOINED", "LEFT"], "{end:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(4),
        "left after {elapsed:?}, expected ~1.5 s (ice_timeout_ms)"
    );
    let (status, _, _) = http_request(addr, "DELETE", &location, &[], None).await;
    assert_eq!(status, 404, "the resource is gone");
    expect_only_sessions(&server, 1, "after the ICE timeout").await;
    pc.close().await;
    stop(server).await;
}

/// Every bad request is refused with its status and a reason; the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_everyone_else_is_served() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut healthy = Healthy::start(addr).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let mut pc = publisher("x").await;
    let offer = pc.create_offer().await;

    let cases: Vec<(&str, u16, Answer, &str)> = vec![
        (
            "wrong content type",
            415,
            http_request(
                addr,
                "POST",
                "/whip/r/alice",
                &[("Content-Type", "application/json")],
                Some(offer.clone().into_bytes()),
            )
            .await,
            "application/sdp",
        ),
        (
            "no content type",
            415,
            http_request(
                addr,
                "POST",
                "/whip/r/alice",
                &[],
                Some(offer.clone().into_bytes()),
            )
            .await,
            "application/sdp",
        ),
        (
            "oversized offer",
            413,
            post(addr, "/whip/r/alice", &"a".repeat(70 * 1024), &[]).await,
            "65536",
        ),
        (
            "empty offer",
            400,
            post(addr, "/whip/r/alice", "", &[]).await,
            "Missing SDP offer",
        ),
        (
            "not UTF-8",
            400,
            http_request(
                addr,
                "POST",
                "/whip/r/alice",
                &[("Content-Type", "application/sdp")],
                Some(vec![0xff, 0xfe, 0x00, 0x80]),
            )
            .await,
            "UTF-8",
        ),
        (
            "broken SDP",
            400,
            post(addr, "/whip/r/alice", "v=0\r\nthis is not SDP\r\n", &[]).await,
            "SDP",
        ),
        (
            "login taken",
            409,
            post(addr, "/whip/r/bob", &offer, &[]).await,
            "Room already has user with such login",
        ),
        (
            "unknown stream",
            404,
            post(addr, "/whep/r/r-nobody-0000", &offer, &[]).await,
            "Stream not found",
        ),
        (
            "room name too long",
            400,
            post(
                addr,
                &format!("/whip/{}/alice", "x".repeat(600)),
                &offer,
                &[],
            )
            .await,
            "Room name",
        ),
        (
            "PATCH of a resource (trickle)",
            405,
            http_request(
                addr,
                "PATCH",
                "/whip/r/alice/0123",
                &[("Content-Type", "application/trickle-ice-sdpfrag")],
                Some(b"a=x".to_vec()),
            )
            .await,
            "no trickle ICE",
        ),
        (
            "GET of the endpoint",
            405,
            http_get(addr, "/whip/r/alice").await,
            "Method not allowed: POST, OPTIONS",
        ),
        (
            "DELETE of an unknown resource",
            404,
            http_request(
                addr,
                "DELETE",
                "/whip/r/alice/00000000000000000000000000000000",
                &[],
                None,
            )
            .await,
            "No such resource",
        ),
        (
            "path without a login",
            404,
            post(addr, "/whip/r", &offer, &[]).await,
            "Not found",
        ),
        (
            "a page of another site",
            403,
            post(
                addr,
                "/whip/r/alice",
                &offer,
                &[("Origin", "https://evil.example")],
            )
            .await,
            "allowed_origins",
        ),
    ];
    for (what, want, (status, head, body), reason) in cases {
        assert_eq!(status, want, "{what}: {head}\n{body}");
        assert!(
            body.contains(reason),
            "{what}: the reason names {reason:?}: {body}"
        );
        assert!(
            header(&head, "content-type").is_some_and(|t| t.starts_with("text/plain")),
            "{what}: plain text: {head}"
        );
        if want == 405 {
            assert!(
                header(&head, "allow").is_some(),
                "{what}: 405 with Allow: {head}"
            );
        }
        if want == 415 {
            assert_eq!(
                header(&head, "accept-post").as_deref(),
                Some("application/sdp"),
                "{what}"
            );
        }
        healthy.check(what).await;
    }
    // The refused offers left nobody in the room: bob saw at most a join and a leave
    // (the broken SDP joined before the engine refused it), and nothing is left.
    let (status, head, _) = http_request(addr, "PATCH", "/whip/r/alice", &[], None).await;
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow").as_deref(), Some("post, options"));
    expect_only_sessions(&server, 3, "after the bad requests").await;
    assert_eq!(server.stats().participants, 3, "bob and the healthy pair");
    // Only the broken SDP got as far as the room (the engine refuses it after the join).
    let seen = events_until(&mut bob, "r", "LEFT", MEDIA_WAIT).await;
    let names: Vec<&str> = seen.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["JOINED", "LEFT"], "{seen:?}");
    bob.sync().await;
    pc.close().await;
    stop(server).await;
}

/// CORS: a page of the device's own origins gets its preflight and the headers it
/// needs to read the answer and the Location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_origin_policy() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let page = "http://127.0.0.1:9";
    let (status, head, _) = http_request(
        addr,
        "OPTIONS",
        "/whip/r/alice",
        &[
            ("Origin", page),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        None,
    )
    .await;
    assert_eq!(status, 204, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin").as_deref(),
        Some(page)
    );
    let methods = header(&head, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("post") && methods.contains("delete"),
        "{head}"
    );
    let allowed = header(&head, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{head}"
    );
    assert_eq!(
        header(&head, "accept-post").as_deref(),
        Some("application/sdp")
    );

    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let answer = post(addr, "/whip/r/alice", &offer, &[("Origin", page)]).await;
    let head = answer.1.clone();
    let (location, _) = created("WHIP POST from a page", answer, "/whip/r/alice/");
    assert_eq!(
        header(&head, "access-control-allow-origin").as_deref(),
        Some(page)
    );
    assert!(
        header(&head, "access-control-expose-headers").is_some_and(|h| h.contains("location")),
        "{head}"
    );
    // Another site's page gets no CORS headers (its browser refuses the POST).
    let (status, head, _) = http_request(
        addr,
        "OPTIONS",
        &location,
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(status, 403, "{head}");
    assert!(
        header(&head, "access-control-allow-origin").is_none(),
        "{head}"
    );
    let (status, head, _) =
        http_request(addr, "DELETE", &location, &[("Origin", page)], None).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin").as_deref(),
        Some(page)
    );
    expect_only_sessions(&server, 0, "after the DELETE").await;
    pc.close().await;
    stop(server).await;
}

/// Token mode: the bearer token is checked as the WebSocket's `custom.token` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_in_token_mode() {
    let server = start_server(|c| {
        c.auth.mode = huddle::config::AuthMode::Token;
        c.auth.secret = SECRET.into();
    })
    .await;
    let addr = server.local_addr();
    let room_r = || Rooms::List(vec!["r".into()]);
    let alice = token(SECRET, "alice", room_r(), true);
    let bearer = |t: &str| format!("Bearer {t}");
    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("no token", String::new(), 401, "token is required"),
        ("a forged token", bearer("a.b.c"), 401, "Restricted access"),
        (
            "a token of another secret",
            bearer(&token("other", "alice", room_r(), true)),
            401,
            "Restricted access",
        ),
        (
            "a token of another login",
            bearer(&token(SECRET, "mallory", room_r(), true)),
            403,
            "another login",
        ),
        (
            "a token without the room",
            bearer(&token(
                SECRET,
                "alice",
                Rooms::List(vec!["other".into()]),
                true,
            )),
            403,
            "does not allow room",
        ),
        (
            "a token without publishing",
            bearer(&token(SECRET, "alice", room_r(), false)),
            403,
            "does not allow publishing",
        ),
    ];
    for (what, authorization, want, reason) in cases {
        let headers: Vec<(&str, &str)> = match authorization.is_empty() {
            true => vec![],
            false => vec![("Authorization", authorization.as_str())],
        };
        let (status, head, body) = post(addr, "/whip/r/alice", &offer, &headers).await;
        assert_eq!(status, want, "{what}: {head}\n{body}");
        assert!(body.contains(reason), "{what}: {body}");
        assert!(!body.contains(SECRET), "{what}");
        if want == 401 {
            assert_eq!(
                header(&head, "www-authenticate").as_deref(),
                Some("bearer"),
                "{what}"
            );
        }
    }
    expect_only_sessions(&server, 0, "after the refusals").await;

    // A member with a token watches; alice publishes with hers.
    let mut bob = Client::open(addr, "bob").await;
    let mut frame = connection_frame(Some("bob"));
    frame["data"][0]["custom"]["token"] = token(SECRET, "bob", room_r(), true).into();
    bob.send_json(frame).await;
    bob.expect_message("getUserData").await;
    bob.join("r").await;
    let auth = bearer(&alice);
    let answer = post(addr, "/whip/r/alice", &offer, &[("Authorization", &auth)]).await;
    let (location, answer) = created("WHIP POST with a token", answer, "/whip/r/alice/");
    pc.apply_answer(&answer).await;
    pc.wait_connected(MEDIA_WAIT).await;
    let camera = Camera::start(
        &pc,
        Position {
            video: (1, 0),
            audio: (1, 0),
        },
    )
    .await;
    let published = events_until(&mut bob, "r", "PUBLISHED", MEDIA_WAIT).await;
    let stream = published.last().unwrap()["info"]["name"]
        .as_str()
        .unwrap()
        .to_owned();

    // WHEP: without a token 401; with one, the viewer is its login.
    let mut viewer = player("carol").await;
    let offer = viewer.create_offer().await;
    let (status, _, body) = post(addr, &format!("/whep/r/{stream}"), &offer, &[]).await;
    assert_eq!(status, 401, "{body}");
    let carol = bearer(&token(SECRET, "carol", room_r(), false));
    let whep = post(
        addr,
        &format!("/whep/r/{stream}"),
        &offer,
        &[("Authorization", &carol)],
    )
    .await;
    let (whep_location, answer) = created(
        "WHEP POST with a token",
        whep,
        &format!("/whep/r/{stream}/"),
    );
    viewer.apply_answer(&answer).await;
    viewer.wait_connected(MEDIA_WAIT).await;
    let joined = events_until(&mut bob, "r", "JOINED", MEDIA_WAIT).await;
    assert_eq!(joined.last().unwrap()["info"], "carol");
    let (got, _) = viewer.collect_rtp(&[VIDEO], 10, MEDIA_WAIT).await;
    assert!(got[0].1.len() >= 10);
    for l in [&whep_location, &location] {
        let (status, _, _) = http_request(addr, "DELETE", l, &[], None).await;
        assert_eq!(status, 200, "DELETE {l}");
    }
    camera.stop().await;
    expect_only_sessions(&server, 1, "after the DELETEs").await;
    pc.close().await;
    viewer.close().await;
    stop(server).await;
}

/// Resources count as sessions of their client's address: over the quota 429, and a
/// slot comes back when a resource ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_per_address_are_limited() {
    let server = start_server(|c| c.signalling.max_sessions_per_address = 2).await;
    let addr = server.local_addr();
    let mut pcs = Vec::new();
    let mut locations = Vec::new();
    for login in ["p1", "p2"] {
        let mut pc = publisher(login).await;
        let offer = pc.create_offer().await;
        let answer = post(addr, &format!("/whip/r/{login}"), &offer, &[]).await;
        let (location, _) = created(login, answer, &format!("/whip/r/{login}/"));
        locations.push(location);
        pcs.push(pc);
    }
    let mut pc = publisher("p3").await;
    let offer = pc.create_offer().await;
    let (status, _, body) = post(addr, "/whip/r/p3", &offer, &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("at most 2"), "{body}");
    let (status, _, _) = post(addr, "/whep/r/r-p1-0000", &offer, &[]).await;
    assert_eq!(status, 429, "WHEP counts too");
    let (status, _, _) = http_request(addr, "DELETE", &locations[0], &[], None).await;
    assert_eq!(status, 200);
    let answer = post(addr, "/whip/r/p3", &offer, &[]).await;
    let (location, _) = created("p3 after a DELETE", answer, "/whip/r/p3/");
    for l in [&locations[1], &location] {
        let (status, _, _) = http_request(addr, "DELETE", l, &[], None).await;
        assert_eq!(status, 200);
    }
    expect_only_sessions(&server, 0, "after the DELETEs").await;
    for pc in pcs {
        pc.close().await;
    }
    pc.close().await;
    stop(server).await;
}

/// The service's shutdown ends the resources (no session is left to wait for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_resources() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let answer = post(addr, "/whip/r/alice", &offer, &[]).await;
    created("WHIP POST", answer, "/whip/r/alice/");
    let started = std::time::Instant::now();
    stop(server).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for the resource",
        started.elapsed()
    );
    pc.close().await;
}

/// A publisher that vanishes after connecting (no DELETE): the media engine's peer
/// fails, the resource ends, the member leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_vanishes_is_ended() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let (location, pc, camera, _) = whip_publish(addr, "r", "alice", &mut bob).await;
    camera.stop().await;
    let started = std::time::Instant::now();
    pc.close().await;
    drop(pc);
    // The engine's peer fails when ICE has heard nothing for its failed timeout
    // (~30 s with the rtc crate's defaults).
    let end = events_until(&mut bob, "r", "LEFT", Duration::from_secs(45)).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["FAILED", "LEFT"], "{end:?}");
    eprintln!("alice left {:?} after she vanished", started.elapsed());
    let (status, _, _) = http_request(addr, "DELETE", &location, &[], None).await;
    assert_eq!(status, 404, "the resource is gone");
    expect_only_sessions(&server, 1, "after the publisher vanished").await;
    stop(server).await;
}

/// A second WHIP publish of the same room and login replaces the first (OBS reconnecting
/// before its old peer failed); a browser member's login stays taken (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_whip_publish_of_the_same_login_replaces_the_old_one() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let (old, pc, camera, stream) = whip_publish(addr, "r", "alice", &mut bob).await;
    camera.stop().await;
    let (new, pc2, camera2, stream2) = whip_publish(addr, "r", "alice", &mut bob).await;
    assert_ne!(old, new);
    assert_ne!(stream, stream2);
    let (status, _, _) = http_request(addr, "DELETE", &old, &[], None).await;
    assert_eq!(status, 404, "the old resource is gone");
    assert_eq!(server.stats().streams, 1);
    assert_eq!(server.stats().participants, 2);
    let (status, _, _) = http_request(addr, "DELETE", &new, &[], None).await;
    assert_eq!(status, 200);
    camera2.stop().await;
    expect_only_sessions(&server, 1, "after the DELETE").await;
    pc.close().await;
    pc2.close().await;
    stop(server).await;
}

/// A full room refuses a WHIP publisher as it refuses a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_a_whip_publisher() {
    let server = start_server(|c| c.rooms.max_participants = 1).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let (status, _, body) = post(addr, "/whip/r/alice", &offer, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Room is full"), "{body}");
    expect_only_sessions(&server, 1, "after the refusal").await;
    bob.sync().await;
    pc.close().await;
    stop(server).await;
}

/// An operator's kick (admin API) closes the WHIP member's session: the resource ends,
/// its URL is unknown, no session is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_whip_publisher_is_ended() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("r").await;
    let (location, pc, camera, stream) = whip_publish(addr, "r", "alice", &mut bob).await;
    let (status, _, body) = http_request(
        addr,
        "POST",
        "/api/v1/rooms/r/participants/alice/kick",
        &[],
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let end = events_until(&mut bob, "r", "LEFT", MEDIA_WAIT).await;
    let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
    // As for a kicked browser: its stream ends with its session (FAILED), then LEFT.
    assert_eq!(names, ["FAILED", "LEFT"], "{end:?}");
    assert_eq!(end[0]["info"], json!({"login": "alice", "name": stream}));
    camera.stop().await;
    expect_only_sessions(&server, 1, "after the kick").await;
    let (status, _, _) = http_request(addr, "DELETE", &location, &[], None).await;
    assert_eq!(status, 404, "the kicked resource is gone");
    pc.close().await;
    stop(server).await;
}

/// A resource answers the room core's pings itself: it outlives many ping timeouts
/// (here 200 ms × 3 misses) while its media flows. No WebSocket client here: one that
/// is not reading all the time would be closed by such pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_answer_the_cores_pings() {
    // The log says why, if a resource is closed.
    common::rtmp::capture_logs();
    let server = start_server(|c| {
        c.signalling.ping_interval_ms = 200;
        c.signalling.ping_misses = 3;
    })
    .await;
    let addr = server.local_addr();
    let mut pc = publisher("alice").await;
    let offer = pc.create_offer().await;
    let answer = post(addr, "/whip/r/alice", &offer, &[]).await;
    let (location, answer) = created("WHIP POST", answer, "/whip/r/alice/");
    pc.apply_answer(&answer).await;
    pc.wait_connected(MEDIA_WAIT).await;
    let camera = Camera::start(
        &pc,
        Position {
            video: (1, 0),
            audio: (1, 0),
        },
    )
    .await;
    // Its name from the admin API (loopback), once it is live.
    let deadline = tokio::time::Instant::now() + MEDIA_WAIT;
    let stream = loop {
        let (status, _, body) = http_get(addr, "/api/v1/streams").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let live = v["streams"].as_array().and_then(|a| {
            a.iter()
                .find(|s| s["state"] == "publishing")
                .and_then(|s| s["name"].as_str().map(str::to_owned))
        });
        if let Some(name) = live {
            break name;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not publishing: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut viewer = player("viewer").await;
    let offer = viewer.create_offer().await;
    let whep = post(addr, &format!("/whep/r/{stream}"), &offer, &[]).await;
    let (whep_location, answer) = created("WHEP POST", whep, &format!("/whep/r/{stream}/"));
    viewer.apply_answer(&answer).await;
    viewer.wait_connected(MEDIA_WAIT).await;
    // 3 s = 15 ping intervals: a session that did not answer would be closed after 0.6 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = server.stats();
    assert_eq!(
        (s.sessions, s.participants, s.streams, s.players),
        (2, 2, 1, 1),
        "{s:?}"
    );
    viewer.drain_media();
    let (got, _) = viewer.collect_rtp(&[VIDEO], 10, MEDIA_WAIT).await;
    assert!(got[0].1.len() >= 10, "still playing");
    for l in [&whep_location, &location] {
        let (status, _, _) = http_request(addr, "DELETE", l, &[], None).await;
        assert_eq!(status, 200, "DELETE {l}");
    }
    camera.stop().await;
    expect_only_sessions(&server, 0, "after the DELETEs").await;
    pc.close().await;
    viewer.close().await;
    stop(server).await;
}
