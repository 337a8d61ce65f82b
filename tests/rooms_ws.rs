//! The Room API over real WebSockets on 127.0.0.1 (ROOM_PROTOCOL §§3-9), without media.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::time::Instant;

use common::*;

fn logins(state: &[Value]) -> BTreeSet<String> {
    state
        .iter()
        .map(|e| {
            e.as_str()
                .unwrap_or_else(|| {
                    panic!("STATE entry of a member without streams must be a string: {e}")
                })
                .to_owned()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// ROOM_PROTOCOL §6 without media: alice, bob and carol.
#[tokio::test]
async fn three_participants_join_chat_and_leave() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let room = "room-3fa1c2";

    let mut alice = Client::connect(addr, "alice").await;
    let state = alice.join(room).await;
    assert!(
        state.is_empty(),
        "alice created the room: STATE must be []: {state:?}"
    );

    let mut bob = Client::connect(addr, "bob").await;
    let state = bob.join(room).await;
    assert_eq!(
        logins(&state),
        set(&["alice"]),
        "bob's STATE lists alice only (not bob)"
    );
    let p = alice.expect_event_in(room, "JOINED").await;
    assert_eq!(p["info"], "bob");

    let mut carol = Client::connect(addr, "carol").await;
    let state = carol.join(room).await;
    assert_eq!(
        logins(&state),
        set(&["alice", "bob"]),
        "carol's STATE excludes carol"
    );
    for c in [&mut alice, &mut bob] {
        let p = c.expect_event_in(room, "JOINED").await;
        assert_eq!(p["info"], "carol", "{}", c.name);
    }
    // The joiner never hears about itself.
    carol.sync().await;

    // Chat goes to the addressee only, with `from`; the sender gets ACCEPTED.
    chat_ok(&mut bob, &mut alice, room, "Привет 👋").await;
    chat_ok(&mut carol, &mut bob, room, "hi bob").await;
    chat_ok(&mut alice, &mut carol, room, "hi carol").await;
    // Nobody got anything else (no echo to the sender, no copy to the third member).
    for c in [&mut alice, &mut bob, &mut carol] {
        c.sync().await;
    }

    // The raw DataStatusEvent shape: exactly ACCEPTED and the echoed operationId.
    let op = bob.send_chat(room, "carol", "raw").await;
    let m = carol.expect_event_in(room, "MESSAGE").await;
    assert_eq!(m["info"], json!({"from": "bob", "text": "raw"}));
    let d = bob.expect_data_status(&op).await;
    assert_eq!(d["status"], "ACCEPTED");
    assert_eq!(d["operationId"], op.as_str());

    // bob leaves: the others get LEFT, bob gets only its ACCEPTED.
    bob.leave(room).await;
    for c in [&mut alice, &mut carol] {
        let p = c.expect_event_in(room, "LEFT").await;
        assert_eq!(p["info"], "bob", "{}", c.name);
    }
    bob.sync().await;
    // bob is no longer a member: chat to or from it fails.
    let op = alice.send_chat(room, "bob", "are you there?").await;
    alice.expect_failed(&op).await;
    let op = bob.send_chat(room, "alice", "still here").await;
    bob.expect_failed(&op).await;

    // carol's socket closes: alice gets LEFT.
    carol.close().await;
    let p = alice.expect_event_in(room, "LEFT").await;
    assert_eq!(p["info"], "carol");

    // bob rejoins: STATE lists alice, alice gets JOINED.
    let state = bob.join(room).await;
    assert_eq!(logins(&state), set(&["alice"]));
    let p = alice.expect_event_in(room, "JOINED").await;
    assert_eq!(p["info"], "bob");
    alice.sync().await;
    bob.sync().await;
}

/// ROOM_PROTOCOL §11.2: leave immediately followed by join never fails.
#[tokio::test]
async fn two_hundred_leave_join_cycles_never_fail() {
    let server = start_server(|c| {
        c.signalling.rate_messages_per_sec = 100_000;
        c.signalling.rate_burst = 100_000;
    })
    .await;
    let addr = server.local_addr();
    let room = "cycle-room";
    let mut alice = Client::connect(addr, "alice").await;
    alice.join(room).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join(room).await;
    alice.expect_event_in(room, "JOINED").await;

    let started = Instant::now();
    for cycle in 0..200 {
        // Pipelined, as Conference does: join sent right after leave, no waiting.
        let leave = bob.send_data("leave", json!({"name": room})).await;
        let join = bob
            .send_data("join", json!({"name": room, "record": false}))
            .await;
        let d = bob.expect_data_status(&leave).await;
        assert_eq!(d["status"], "ACCEPTED", "cycle {cycle}: leave {d}");
        let mut got_join = false;
        let mut got_state = false;
        for _ in 0..2 {
            let v = bob.recv().await;
            match v["message"].as_str() {
                Some("DataStatusEvent") => {
                    let d = &v["data"][0];
                    assert_eq!(d["operationId"], join.as_str(), "cycle {cycle}: {v}");
                    assert_eq!(d["status"], "ACCEPTED", "cycle {cycle}: join {v}");
                    got_join = true;
                }
                Some("OnDataEvent") => {
                    let p = &v["data"][0]["payload"];
                    assert_eq!(p["name"], "STATE", "cycle {cycle}: {v}");
                    assert_eq!(p["info"], json!(["alice"]), "cycle {cycle}: {v}");
                    got_state = true;
                }
                _ => panic!("cycle {cycle}: unexpected {v}"),
            }
        }
        assert!(got_join && got_state, "cycle {cycle}");
        let p = alice.expect_event_in(room, "LEFT").await;
        assert_eq!(p["info"], "bob", "cycle {cycle}");
        let p = alice.expect_event_in(room, "JOINED").await;
        assert_eq!(p["info"], "bob", "cycle {cycle}");
    }
    alice.sync().await;
    bob.sync().await;
    chat_ok(&mut alice, &mut bob, room, "still together").await;
    assert_eq!(server.stats().participants, 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Escapes every non-ASCII character (and `"`/`\`/controls) as JSON `\uXXXX`
/// UTF-16 units, so astral characters become surrogate pairs.
fn json_escape_all(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `encodeURIComponent`, as the React conference example applies to chat text.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// ROOM_PROTOCOL §11.1: logins, room names and chat text are opaque Unicode.
#[tokio::test]
async fn unicode_names_and_chat_round_trip_byte_exact() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let room = "Комната 会议室 🚀 «test»";
    let (a, b) = ("Алиса", "鲍勃 👨‍👩‍👧");

    let mut alice = Client::connect(addr, a).await;
    assert!(alice.join(room).await.is_empty());
    let mut bob = Client::connect(addr, b).await;
    assert_eq!(bob.join(room).await, vec![json!(a)]);
    let p = alice.expect_event_in(room, "JOINED").await;
    assert_eq!(p["info"], b);

    let percent = encode_uri_component("Привет, мир! 你好 👋");
    assert_eq!(
        percent,
        "%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82%2C%20%D0%BC%D0%B8%D1%80!%20\
         %E4%BD%A0%E5%A5%BD%20%F0%9F%91%8B"
    );
    let long: String = "Длинный текст 長い 🎉\n".repeat(2000);
    let texts: Vec<String> = vec![
        "Привет, как дела? Ёжик".into(),
        "中文 日本語 한국어".into(),
        "emoji 😀🎉👋🏽 astral 𝄞 𠜎".into(),
        "family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 keycap 1️⃣".into(),
        "line one\nline two\r\nline three\n".into(),
        "tab\there\tand\tthere".into(),
        "<b>&amp;</b> <script>alert('x')</script> &lt;".into(),
        r#"quotes " ' ` and backslashes \ \\ \n (literal)"#.into(),
        r"\u0041 is not A".into(),
        "  leading and trailing spaces  ".into(),
        "nul \u{0} inside, bell \u{7}, DEL \u{7f}".into(),
        "mixed RTL: שלום مرحبا".into(),
        "combining: e\u{301} vs é, ZWJ alone \u{200d}, BOM \u{feff}".into(),
        String::new(),
        percent.clone(),
        long,
    ];
    for text in &texts {
        chat_ok(&mut alice, &mut bob, room, text).await;
        chat_ok(&mut bob, &mut alice, room, text).await;
    }

    // Frames written by hand with JSON \uXXXX escapes (surrogate pairs included):
    // the server must decode them and deliver the same characters.
    let escaped_cases: Vec<(String, &str)> = vec![
        (
            r"\u041f\u0440\u0438\u0432\u0435\u0442 \ud83d\udc4b".into(),
            "Привет 👋",
        ),
        (r"\u4e2d\u6587 \ud834\udd1e".into(), "中文 𝄞"),
        (
            r#"\"quoted\" \\ back\/slash \u0041"#.into(),
            r#""quoted" \ back/slash A"#,
        ),
        (
            r"\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67".into(),
            "👨‍👩‍👧",
        ),
        (
            json_escape_all("Ёлка 🎄 <b>&amp;</b>\n\t"),
            "Ёлка 🎄 <b>&amp;</b>\n\t",
        ),
    ];
    for (i, (raw_text, expected)) in escaped_cases.iter().enumerate() {
        let op = format!("escaped-{i}");
        let frame = format!(
            r#"{{"message":"sendData","data":[{{"operationId":"{op}","payload":{{"command":"sendMessage","options":{{"roomConfig":{{"name":"{}"}},"to":"{}","text":"{raw_text}"}}}}}}]}}"#,
            json_escape_all(room),
            json_escape_all(b),
        );
        alice.send_text(&frame).await;
        let p = bob.expect_event_in(room, "MESSAGE").await;
        assert_eq!(p["info"]["text"], *expected, "escaped case {i}: {frame}");
        assert_eq!(p["info"]["from"], a);
        alice.expect_accepted(&op).await;
    }

    // The React example's workaround survives the trip and decodes back.
    let op = alice.send_chat(room, b, &percent).await;
    let p = bob.expect_event_in(room, "MESSAGE").await;
    assert_eq!(p["info"]["text"].as_str(), Some(percent.as_str()));
    alice.expect_accepted(&op).await;

    // A decomposed login is a different login (no normalization).
    let nfc = "José";
    let nfd = "Jose\u{301}";
    let mut j1 = Client::connect(addr, nfc).await;
    j1.join(room).await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.expect_event_in(room, "JOINED").await["info"], nfc);
    }
    let mut j2 = Client::connect(addr, nfd).await;
    let state = j2.join(room).await;
    assert_eq!(logins(&state), set(&[a, b, nfc]));
    for c in [&mut alice, &mut bob, &mut j1] {
        assert_eq!(c.expect_event_in(room, "JOINED").await["info"], nfd);
    }
    chat_ok(&mut j2, &mut j1, room, "same name?").await;

    // Room names differing only in normalization are different rooms.
    let other_room = "Комната 会议室 🚀 «test»\u{301}";
    assert!(alice.join(other_room).await.is_empty());

    for c in [&mut alice, &mut bob, &mut j1, &mut j2] {
        c.sync().await;
    }
}

/// 100 sessions in 20 rooms of 5, everybody chatting to every other member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_sessions_in_twenty_rooms_chat_concurrently() {
    const ROOMS: usize = 20;
    const PER_ROOM: usize = 5;
    const N: usize = ROOMS * PER_ROOM;
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let joined = Arc::new(Barrier::new(N));
    let done = Arc::new(Barrier::new(N));
    let started = Instant::now();

    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..ROOMS {
        for k in 0..PER_ROOM {
            let (joined, done) = (joined.clone(), done.clone());
            tasks.spawn(async move {
                let room = format!("room-{r:02}");
                let login = format!("u{r:02}-{k}");
                let others: BTreeSet<String> = (0..PER_ROOM)
                    .filter(|&j| j != k)
                    .map(|j| format!("u{r:02}-{j}"))
                    .collect();
                let mut c = Client::connect(addr, &login).await;
                // Who this session learns about, and how often: STATE + JOINED.
                let mut known: HashMap<String, usize> = HashMap::new();
                for login in logins(&c.join(&room).await) {
                    *known.entry(login).or_default() += 1;
                }
                joined.wait().await;

                let mut ops = HashSet::new();
                for to in &others {
                    ops.insert(c.send_chat(&room, to, &format!("{login}->{to}")).await);
                }
                let mut messages: HashMap<String, usize> = HashMap::new();
                while !ops.is_empty() || messages.len() < others.len() || known.len() < others.len()
                {
                    let v = c.recv().await;
                    let d = &v["data"][0];
                    match v["message"].as_str() {
                        Some("DataStatusEvent") => {
                            assert_eq!(d["status"], "ACCEPTED", "{login}: {v}");
                            let op = d["operationId"].as_str().unwrap_or_default();
                            assert!(ops.remove(op), "{login}: unknown or repeated reply {v}");
                        }
                        Some("OnDataEvent") => {
                            let p = &d["payload"];
                            assert_eq!(p["roomName"], room.as_str(), "{login}: {v}");
                            match p["name"].as_str() {
                                Some("JOINED") => {
                                    let who = p["info"].as_str().unwrap_or_default();
                                    *known.entry(who.to_owned()).or_default() += 1;
                                }
                                Some("MESSAGE") => {
                                    let from = p["info"]["from"].as_str().unwrap_or_default();
                                    assert_eq!(
                                        p["info"]["text"],
                                        format!("{from}->{login}"),
                                        "{login}: {v}"
                                    );
                                    *messages.entry(from.to_owned()).or_default() += 1;
                                }
                                _ => panic!("{login}: unexpected room event {v}"),
                            }
                        }
                        _ => panic!("{login}: unexpected {v}"),
                    }
                }
                let known_set: BTreeSet<String> = known.keys().cloned().collect();
                assert_eq!(known_set, others, "{login}: STATE + JOINED");
                assert!(known.values().all(|&n| n == 1), "{login}: {known:?}");
                let from_set: BTreeSet<String> = messages.keys().cloned().collect();
                assert_eq!(from_set, others, "{login}: MESSAGE senders");
                assert!(messages.values().all(|&n| n == 1), "{login}: {messages:?}");
                // Everybody has sent and been answered: nothing more may arrive.
                done.wait().await;
                c.sync().await;
                c
            });
        }
    }
    let mut clients = Vec::new();
    let all = async {
        while let Some(res) = tasks.join_next().await {
            match res {
                Ok(c) => clients.push(c),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("100 sessions finished within 20 s");
    assert_eq!(clients.len(), N);
    let stats = server.stats();
    assert_eq!(
        (stats.sessions, stats.rooms, stats.participants),
        (N, ROOMS, N)
    );
    eprintln!(
        "100 sessions / 20 rooms / 400 messages in {:?}",
        started.elapsed()
    );
}

/// `rooms.idle_timeout_ms`: a room whose last member vanished is kept that long.
#[tokio::test]
async fn idle_room_is_kept_for_a_rejoin_then_finalized() {
    let server = start_server(|c| c.rooms.idle_timeout_ms = 500).await;
    let addr = server.local_addr();
    let room = "idle-room";

    // A member that leaves explicitly ends the room at once.
    let mut a = Client::connect(addr, "alice").await;
    a.join(room).await;
    a.leave(room).await;
    assert_eq!(
        server.stats().rooms,
        0,
        "an explicitly left empty room is dropped"
    );

    // A room nobody else ever joined ends as soon as its one session vanishes: there
    // is no meeting to come back to, and it must not hold a room slot meanwhile.
    a.join(room).await;
    drop(a);
    wait_until("the solo room to end", Duration::from_millis(400), || {
        let s = server.stats();
        s.sessions == 0 && s.rooms == 0
    })
    .await;

    // A member that vanishes from a shared room keeps it for the idle timeout...
    let mut a = Client::connect(addr, "alice").await;
    a.join(room).await;
    let mut b = Client::connect(addr, "bob").await;
    b.join(room).await;
    a.expect_event_in(room, "JOINED").await;
    b.leave(room).await;
    a.expect_event_in(room, "LEFT").await;
    drop(a);
    wait_until(
        "the dropped socket's cleanup",
        Duration::from_secs(2),
        || {
            let s = server.stats();
            s.sessions == 1 && s.participants == 0
        },
    )
    .await;
    assert_eq!(
        server.stats().rooms,
        1,
        "room kept right after the disconnect"
    );

    // ...so a rejoin within it finds the room (and gets its STATE).
    let mut a = Client::connect(addr, "alice").await;
    let state = a.join(room).await;
    assert!(state.is_empty(), "{state:?}");
    assert_eq!(server.stats().rooms, 1);
    // The rejoin cancelled the timer: the room outlives the original deadline.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(
        server.stats().rooms,
        1,
        "a rejoined room must not be finalized"
    );
    assert_eq!(b.join(room).await, vec![json!("alice")]);
    a.expect_event_in(room, "JOINED").await;
    chat_ok(&mut b, &mut a, room, "the room survived").await;
    b.leave(room).await;
    a.expect_event_in(room, "LEFT").await;

    // Without a rejoin the room is gone after the timeout, not before.
    drop(a);
    wait_until("the second disconnect", Duration::from_secs(2), || {
        server.stats().participants == 0
    })
    .await;
    let empty_since = Instant::now();
    assert_eq!(server.stats().rooms, 1);
    wait_until(
        "the idle room to be finalized",
        Duration::from_secs(3),
        || server.stats().rooms == 0,
    )
    .await;
    let kept = empty_since.elapsed();
    assert!(
        kept >= Duration::from_millis(400),
        "finalized too early: {kept:?}"
    );
    assert!(
        kept < Duration::from_millis(1500),
        "finalized too late: {kept:?}"
    );

    // A join now creates a fresh room.
    let mut c = Client::connect(addr, "carol").await;
    assert!(c.join(room).await.is_empty());
    b.sync().await;
}

const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=sendonly\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
c=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n";

fn stream_frame(message: &str, msid: &str, name: &str, room: &str, publish: bool) -> Value {
    json!({"message": message, "data": [{
        "mediaSessionId": msid,
        "name": name,
        "published": publish,
        "hasVideo": true,
        "hasAudio": true,
        "status": "PENDING",
        "record": false,
        "mediaProvider": "WebRTC",
        "sdp": OFFER,
        "custom": {"name": room},
        "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
        "constraints": {"audio": true, "video": true},
    }]})
}

/// Until the SFU exists every publish ends FAILED (never PUBLISHING); plays of
/// unknown streams fail with "Stream not found"; stops are idempotent.
#[tokio::test]
async fn streams_without_media_engine() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let room = "media-room";
    let mut alice = Client::connect(addr, "alice").await;
    alice.join(room).await;
    let mut bob = Client::connect(addr, "bob").await;
    bob.join(room).await;
    alice.expect_event_in(room, "JOINED").await;

    let name = "media-room-alice-8c5d";
    alice
        .send_json(stream_frame("publishStream", "m-a1", name, room, true))
        .await;
    // Everything about m-a1 until its terminal status; PENDING and setRemoteSDP
    // would be fine, PUBLISHING must never come.
    let failed = loop {
        let v = alice.recv().await;
        let d = &v["data"][0];
        match v["message"].as_str() {
            Some("notifyStreamStatusEvent") => {
                assert_eq!(d["mediaSessionId"], "m-a1", "{v}");
                match d["status"].as_str() {
                    Some("PENDING") => continue,
                    Some("FAILED") => break d.clone(),
                    _ => panic!("publish without a media engine must end FAILED: {v}"),
                }
            }
            Some("setRemoteSDP") => assert_eq!(d, "m-a1", "{v}"),
            _ => panic!("unexpected {v}"),
        }
    };
    let info = failed["info"].as_str().unwrap_or_default();
    assert!(!info.is_empty(), "FAILED needs a reason: {failed}");
    assert_eq!(failed["name"], name, "full stream object: {failed}");
    assert_eq!(failed["published"], true, "{failed}");
    assert_eq!(failed["custom"]["name"], room, "{failed}");
    alice.sync().await;
    // bob never hears PUBLISHED about a stream that never went live.
    bob.sync().await;
    assert_eq!(server.stats().streams, 0);

    // Playing something that is not published.
    let missing = "media-room-nobody-0000";
    bob.send_json(stream_frame("playStream", "m-b1", missing, room, false))
        .await;
    let d = bob.expect_stream_status("m-b1").await;
    assert_eq!(d["status"], "FAILED", "{d}");
    assert_eq!(d["info"], "Stream not found", "{d}");
    assert_eq!(d["published"], false, "{d}");
    // The stream alice tried to publish does not exist either.
    bob.send_json(stream_frame("playStream", "m-b2", name, room, false))
        .await;
    let d = bob.expect_stream_status("m-b2").await;
    assert_eq!(d["status"], "FAILED", "{d}");
    assert_eq!(d["info"], "Stream not found", "{d}");

    // Stops of unknown ids: terminal statuses echoing the id (and name).
    alice
        .send_json(json!({"message": "unPublishStream", "data": [{
            "mediaSessionId": "m-unknown-1", "name": "media-room-alice-ffff",
            "published": true, "hasVideo": true, "hasAudio": true,
            "status": "PUBLISHING", "record": false}]}))
        .await;
    let d = alice.expect_stream_status("m-unknown-1").await;
    assert_eq!(d["status"], "UNPUBLISHED", "{d}");
    assert_eq!(d["name"], "media-room-alice-ffff", "{d}");
    bob.send_json(json!({"message": "stopStream", "data": [{
        "mediaSessionId": "m-unknown-2", "name": missing,
        "published": false, "hasVideo": true, "hasAudio": true,
        "status": "PLAYING", "record": false}]}))
        .await;
    let d = bob.expect_stream_status("m-unknown-2").await;
    assert_eq!(d["status"], "STOPPED", "{d}");
    assert_eq!(d["name"], missing, "{d}");
    // The already failed publish and play: still idempotent.
    alice
        .send_json(json!({"message": "unPublishStream", "data": [{"mediaSessionId": "m-a1", "name": name}]}))
        .await;
    assert_eq!(
        alice.expect_stream_status("m-a1").await["status"],
        "UNPUBLISHED"
    );
    bob.send_json(
        json!({"message": "stopStream", "data": [{"mediaSessionId": "m-b1", "name": missing}]}),
    )
    .await;
    assert_eq!(bob.expect_stream_status("m-b1").await["status"], "STOPPED");

    // The Conference page ignores mute notices; they must not disturb anything.
    alice
        .send_json(json!({"message": "sendStreamEvent", "data": [{"mediaSessionId": "m-a1", "type": "audioMuted"}]}))
        .await;
    alice.sync().await;
    chat_ok(&mut alice, &mut bob, room, "no media yet").await;
    bob.sync().await;
    let s = server.stats();
    assert_eq!((s.streams, s.players, s.participants), (0, 0, 2));
}
