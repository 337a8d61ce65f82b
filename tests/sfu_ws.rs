//! The SFU end to end over the Room API: `webrtc` 0.21.1 clients stand in for browsers
//! (offers without candidates, as the Flashphoner SDK sends them), the server runs in
//! process with one UDP port picked by the OS (`[media] udp_port = 0`) and advertises
//! 127.0.0.1. Every wait is bounded.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use tokio::time::Instant;

use common::*;
use webrtc_client::*;

use huddle::config::Config;
use huddle::server::Server;

const ROOM: &str = "r";
const STREAM: &str = "r-alice-1a2b";
const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;
const PUB_AUDIO_SSRC: u32 = 0x1111_1111;
const PUB_VIDEO_SSRC: u32 = 0x2222_2222;
/// How long a media-level wait (connect, RTP, RTCP) may take.
const MEDIA_WAIT: Duration = Duration::from_secs(5);

async fn start_sfu_server(tweak: impl FnOnce(&mut Config)) -> Server {
    start_server(|c| {
        c.media.udp_port = 0;
        c.media.advertise_ips = vec!["127.0.0.1".parse().unwrap()];
        tweak(c);
    })
    .await
}

/// Waits (bounded) until a `/metrics` sample has this value.
async fn wait_for_metric(addr: SocketAddr, sample: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = common::metric(addr, sample).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sample} is {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Graceful stop, bounded.
async fn stop(server: Server) {
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown within 8 s");
}

// ---------------------------------------------------------------------------------
// Room API frames

fn publish_frame(msid: &str, name: &str, sdp: &str, has_audio: bool, has_video: bool) -> Value {
    stream_request(true, msid, name, ROOM, sdp, (has_audio, has_video))
}

fn play_frame(msid: &str, name: &str, sdp: &str) -> Value {
    stream_request(false, msid, name, ROOM, sdp, (true, true))
}

fn unpublish_frame(msid: &str, name: &str) -> Value {
    json!({"message": "unPublishStream", "data": [{
        "mediaSessionId": msid, "name": name, "published": true,
        "hasVideo": true, "hasAudio": true, "status": "PUBLISHING", "record": false,
    }]})
}

/// The next frame about media session `msid` (its `setRemoteSDP` or a non-PENDING
/// status); a PENDING echo is skipped, anything else fails the test.
async fn next_stream_frame(c: &mut Client, msid: &str) -> Value {
    loop {
        let v = c.recv().await;
        let d = &v["data"][0];
        match v["message"].as_str() {
            Some("notifyStreamStatusEvent") if d["mediaSessionId"] == msid => {
                if d["status"] == "PENDING" {
                    continue;
                }
                return v;
            }
            Some("setRemoteSDP") if *d == msid => return v,
            _ => panic!(
                "{}: unexpected frame while waiting for news of {msid}: {v}",
                c.name
            ),
        }
    }
}

/// `setRemoteSDP` [msid, answer, true] must be the first news of `msid`; returns the answer.
async fn expect_answer(c: &mut Client, msid: &str) -> String {
    let v = next_stream_frame(c, msid).await;
    assert_eq!(
        v["message"], "setRemoteSDP",
        "{}: the answer must come first for {msid} (nothing like PUBLISHING/PLAYING before it): {v}",
        c.name
    );
    assert_eq!(
        v["data"][2], true,
        "{}: setRemoteSDP[2] must be true: {v}",
        c.name
    );
    v["data"][1]
        .as_str()
        .unwrap_or_else(|| panic!("{}: setRemoteSDP without SDP text: {v}", c.name))
        .to_owned()
}

/// The next status of `msid` (PENDING skipped) must be `status`; returns `data[0]`.
async fn expect_status(c: &mut Client, msid: &str, status: &str) -> Value {
    let v = next_stream_frame(c, msid).await;
    let d = v["data"][0].clone();
    assert!(
        v["message"] == "notifyStreamStatusEvent" && d["status"] == status,
        "{}: expected {status} for {msid}, got {v}",
        c.name
    );
    d
}

/// Ping barrier that tolerates PENDING echoes: nothing else may be queued.
async fn sync_skip_pending(c: &mut Client) {
    c.send_json(json!({"message": "ping", "data": [null]}))
        .await;
    loop {
        let v = c.recv().await;
        if v["message"] == "pong" {
            return;
        }
        let pending =
            v["message"] == "notifyStreamStatusEvent" && v["data"][0]["status"] == "PENDING";
        assert!(
            pending,
            "{}: expected nothing but the pong, got {v}",
            c.name
        );
    }
}

fn assert_stream_object(who: &str, d: &Value, name: &str, published: bool) {
    assert_eq!(d["name"], name, "{who}: full stream object: {d}");
    assert_eq!(d["published"], published, "{who}: {d}");
    assert_eq!(d["custom"]["name"], ROOM, "{who}: {d}");
}

/// A member's stream event (PUBLISHED/UNPUBLISHED) about alice's `name`.
async fn expect_alice_event(c: &mut Client, event: &str, name: &str) {
    let p = c.expect_event_in(ROOM, event).await;
    assert_eq!(p["info"]["login"], "alice", "{}: {event} {p}", c.name);
    assert_eq!(p["info"]["name"], name, "{}: {event} {p}", c.name);
}

/// After the publisher stopped: a player gets STOPPED ("Stopped by publisher stop") for
/// its `msid` and the room event UNPUBLISHED, in either order, and nothing else.
async fn expect_stopped_by_publisher(c: &mut Client, msid: &str, name: &str) {
    let (mut stopped, mut unpublished) = (false, false);
    while !(stopped && unpublished) {
        let v = c.recv().await;
        let d = &v["data"][0];
        match v["message"].as_str() {
            Some("notifyStreamStatusEvent") if !stopped && d["mediaSessionId"] == msid => {
                assert_eq!(d["status"], "STOPPED", "{}: {v}", c.name);
                assert_eq!(d["info"], "Stopped by publisher stop", "{}: {v}", c.name);
                stopped = true;
            }
            Some("OnDataEvent") if !unpublished => {
                let p = &d["payload"];
                assert_eq!(p["name"], "UNPUBLISHED", "{}: {v}", c.name);
                assert_eq!(p["roomName"], ROOM, "{}: {v}", c.name);
                assert_eq!(p["info"]["login"], "alice", "{}: {v}", c.name);
                assert_eq!(p["info"]["name"], name, "{}: {v}", c.name);
                unpublished = true;
            }
            _ => panic!(
                "{}: expected STOPPED of {msid} and UNPUBLISHED, got {v}",
                c.name
            ),
        }
    }
}

/// Connects `login` and joins ROOM.
async fn member(addr: SocketAddr, login: &str) -> Client {
    let mut c = Client::connect(addr, login).await;
    c.join(ROOM).await;
    c
}

/// A publisher with Opus and H.264 (the tests' usual browser-like publisher).
async fn h264_publisher(name: &str) -> RtcClient {
    RtcClient::publisher(
        name,
        &[
            (AUDIO, opus(111), PUB_AUDIO_SSRC),
            (VIDEO, h264(125), PUB_VIDEO_SSRC),
        ],
    )
    .await
}

// ---------------------------------------------------------------------------------
// SDP checks (what ROOM_PROTOCOL §10.2 asks of an answer that a test can see)

/// `m=<kind>` line fields: (port, payload types).
fn m_line(sdp: &str, kind: &str) -> Option<(u16, Vec<u8>)> {
    let line = sdp
        .split("\r\n")
        .find(|l| l.starts_with(&format!("m={kind} ")))?;
    let f: Vec<&str> = line.split(' ').collect();
    let port = f.get(1)?.parse().ok()?;
    let pts = f.iter().skip(3).filter_map(|p| p.parse().ok()).collect();
    Some((port, pts))
}

/// Checks the answer; returns the port of its 127.0.0.1 UDP host candidates.
/// `HUDDLE_TEST_DUMP_SDP=1` prints every answer.
fn check_answer(what: &str, sdp: &str, direction: &str) -> u16 {
    if std::env::var_os("HUDDLE_TEST_DUMP_SDP").is_some() {
        eprintln!("--- {what} answer:\n{sdp}");
    }
    let ctx = format!("{what} answer:\n{sdp}");
    assert!(
        sdp.ends_with("\r\n") && !sdp.replace("\r\n", "").contains('\n'),
        "lines must end in CRLF; {ctx}"
    );
    let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines.contains(&"a=ice-lite"), "a=ice-lite missing; {ctx}");
    let ports: Vec<u16> = lines
        .iter()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let host_v4 = f.len() >= 8
                && f[2].eq_ignore_ascii_case("udp")
                && f[4] == "127.0.0.1"
                && f[6] == "typ"
                && f[7] == "host";
            host_v4.then(|| f[5].parse().ok()).flatten()
        })
        .collect();
    assert!(
        !ports.is_empty(),
        "no UDP host candidate on 127.0.0.1; {ctx}"
    );
    assert!(
        ports.iter().all(|p| *p == ports[0] && *p != 0 && *p != 9),
        "candidates must name the one media port: {ports:?}; {ctx}"
    );
    // Per media section: direction and DTLS role.
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for l in &lines {
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(s) = sections.last_mut() {
            s.push(l);
        }
    }
    let session_setup = lines
        .iter()
        .take_while(|l| !l.starts_with("m="))
        .find(|l| l.starts_with("a=setup:"));
    let mut msids = Vec::new();
    for s in sections
        .iter()
        .filter(|s| s[0].split(' ').nth(1) != Some("0"))
    {
        assert!(
            s.contains(&format!("a={direction}").as_str()),
            "{}: expected a={direction}; {ctx}",
            s[0]
        );
        let setup = s
            .iter()
            .find(|l| l.starts_with("a=setup:"))
            .or(session_setup);
        assert!(
            matches!(setup.copied(), Some("a=setup:passive" | "a=setup:active")),
            "{}: a=setup must be passive (or active), got {setup:?}; {ctx}",
            s[0]
        );
        if let Some(m) = s.iter().find(|l| l.starts_with("a=msid:")) {
            msids.push(
                m.trim_start_matches("a=msid:")
                    .split(' ')
                    .next()
                    .unwrap_or(""),
            );
        }
    }
    if direction == "sendonly" {
        assert_eq!(
            msids.len(),
            sections.len(),
            "every play m-line needs a=msid; {ctx}"
        );
        assert!(
            msids.iter().all(|m| *m == msids[0]),
            "audio and video must share the MediaStream id: {msids:?}; {ctx}"
        );
    }
    // a=fmtp:<pt> right after a=rtpmap:<pt>.
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("a=fmtp:") {
            let pt = rest.split(' ').next().unwrap_or("");
            assert!(
                i > 0 && lines[i - 1].starts_with(&format!("a=rtpmap:{pt} ")),
                "'{l}' must follow its a=rtpmap; {ctx}"
            );
        }
    }
    ports[0]
}

/// The first payload type of the answer's `kind` m-line must be `pt` (and the line live).
fn assert_answer_pt(what: &str, sdp: &str, kind: &str, pt: u8) {
    let (port, pts) =
        m_line(sdp, kind).unwrap_or_else(|| panic!("{what}: no m={kind} in the answer:\n{sdp}"));
    assert!(
        port != 0 && pts.first() == Some(&pt),
        "{what}: m={kind} must be live with payload type {pt} first (port {port}, pts {pts:?}):\n{sdp}"
    );
}

// ---------------------------------------------------------------------------------
// Media

/// 50 H.264 packets from `(seq, ts)` on: STAP-A (SPS+PPS), an IDR in 4 FU-A fragments,
/// 15 P frames in 3 FU-A fragments each.
fn h264_packets(pt: u8, (mut seq, ts0): (u16, u32)) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut push = |out: &mut Vec<Packet>, ts: u32, marker: bool, payload: Vec<u8>| {
        out.push(rtp_packet(pt, PUB_VIDEO_SSRC, seq, ts, marker, payload));
        seq = seq.wrapping_add(1);
    };
    push(&mut out, ts0, false, stap_a_sps_pps());
    for (i, len) in [1100, 1100, 1100, 600].into_iter().enumerate() {
        let fu_header = match i {
            0 => 0x85,
            3 => 0x45,
            _ => 0x05,
        };
        let mut p = vec![0x7c, fu_header];
        p.extend(body(out.len(), len));
        push(&mut out, ts0, i == 3, p);
    }
    for frame in 1..=15u32 {
        let ts = ts0.wrapping_add(frame * 3000);
        for i in 0..3 {
            let fu_header = [0x81, 0x01, 0x41][i];
            let len = if i == 2 {
                300 + (frame as usize * 17) % 200
            } else {
                1000
            };
            let mut p = vec![0x5c, fu_header];
            p.extend(body(out.len(), len));
            push(&mut out, ts, i == 2, p);
        }
    }
    assert_eq!(out.len(), 50);
    out
}

/// `n` Opus packets of 20 ms with varying sizes, from `(seq, ts)` on.
fn opus_packets(pt: u8, n: usize, (seq, ts): (u16, u32)) -> Vec<Packet> {
    (0..n)
        .map(|i| {
            let mut p = vec![0xfc];
            p.extend(body(i, 60 + (i * 13) % 100));
            rtp_packet(
                pt,
                PUB_AUDIO_SSRC,
                seq.wrapping_add(i as u16),
                ts.wrapping_add(960 * i as u32),
                false,
                p,
            )
        })
        .collect()
}

/// `n` VP8 packets: a key frame start, then continuation / inter frames.
/// (The sequence number wraps after the 6th.)
fn vp8_packets(pt: u8, n: usize) -> Vec<Packet> {
    (0..n)
        .map(|i| {
            let mut p = if i == 0 {
                vec![0x10, 0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a]
            } else {
                vec![0x10, 0x31]
            };
            p.extend(body(i, 800));
            rtp_packet(
                pt,
                PUB_VIDEO_SSRC,
                65_530u16.wrapping_add(i as u16),
                90_000 + 3000 * i as u32,
                true,
                p,
            )
        })
        .collect()
}

/// Writes the packets of both lists interleaved, 1 ms apart.
async fn send_interleaved(pc: &RtcClient, lists: &[(RtpCodecKind, &[Packet])]) {
    let longest = lists.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (kind, list) in lists {
            if let Some(p) = list.get(i) {
                pc.write_rtp(*kind, p.clone()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Which sent packet (by payload) each received one is, for failure messages.
fn identify(sent: &[Packet], got: &[Packet]) -> Vec<Option<usize>> {
    got.iter()
        .map(|g| sent.iter().position(|s| s.payload == g.payload))
        .collect()
}

/// Every sent packet arrived once, in order, byte-identical, with continuous sequence
/// numbers, the same timestamp spacing and marker bits, under payload type `pt`.
/// Returns the player-side SSRC.
///
/// Under CPU emulation (`HUDDLE_TEST_EXEC_WRAPPER`, the aarch64 suite under qemu-user) the
/// emulated clients cannot keep up with a burst: UDP may drop a packet or two and the
/// clients' tasks may hand them over out of order. There every received packet must
/// still be byte-identical with the numbering and timing the forwarding gives it, but up
/// to two may be missing and the arrival order is not checked.
fn check_forwarded(who: &str, kind: RtpCodecKind, sent: &[Packet], got: &[Packet], pt: u8) -> u32 {
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let index = identify(sent, got);
    let missing = sent.len().saturating_sub(got.len());
    let in_order = index
        .windows(2)
        .all(|w| matches!(w, [Some(a), Some(b)] if a < b));
    if emulated && missing <= 2 {
        if missing > 0 || !in_order {
            eprintln!(
                "{who} {kind}: under emulation {missing} lost, in order: {in_order}: {index:?}"
            );
        }
    } else {
        assert_eq!(
            got.len(),
            sent.len(),
            "{who} {kind}: received {} of {} packets; received (sent index per packet): {index:?}",
            got.len(),
            sent.len(),
        );
        assert!(
            in_order,
            "{who} {kind}: out of order; received (sent index per packet): {index:?}"
        );
    }
    // The first packet sent that arrived anchors the player's numbering and timing.
    let (first_got, first_sent) = index
        .iter()
        .enumerate()
        .filter_map(|(g, s)| s.map(|s| (g, s)))
        .min_by_key(|(_, s)| *s)
        .unwrap_or_else(|| panic!("{who} {kind}: no sent packet arrived: {index:?}"));
    let g0 = &got[first_got].header;
    let s0 = &sent[first_sent].header;
    for (i, (g, s)) in got.iter().zip(&index).enumerate() {
        let Some(s) = *s else {
            panic!(
                "{who} {kind} packet {i}: payload is none of the sent ones ({} bytes {:02x?}..); order received: {index:?}",
                g.payload.len(),
                &g.payload[..g.payload.len().min(8)],
            );
        };
        let h = &g.header;
        let sh = &sent[s].header;
        assert_eq!(
            h.payload_type, pt,
            "{who} {kind} packet {i}: payload type (the player's own)"
        );
        assert_eq!(h.ssrc, g0.ssrc, "{who} {kind} packet {i}: SSRC changed");
        assert_eq!(
            h.sequence_number,
            g0.sequence_number.wrapping_add((s - first_sent) as u16),
            "{who} {kind} packet {i} (sent {s}): sequence numbers must be continuous: {:?}",
            got.iter()
                .map(|p| p.header.sequence_number)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            h.timestamp.wrapping_sub(g0.timestamp),
            sh.timestamp.wrapping_sub(s0.timestamp),
            "{who} {kind} packet {i}: timestamp spacing must be kept"
        );
        assert_eq!(h.marker, sh.marker, "{who} {kind} packet {i}: marker bit");
    }
    g0.ssrc
}

/// Publishes over `ws` with `pc`: answer first (checked), then PUBLISHING once the
/// client is connected. Returns the media port named by the answer.
async fn publish(
    ws: &mut Client,
    pc: &mut RtcClient,
    msid: &str,
    name: &str,
    video_pt: Option<u8>,
) -> u16 {
    let offer = pc.create_offer().await;
    assert!(
        !offer.contains("a=candidate"),
        "offer must go without candidates"
    );
    let has_video = video_pt.is_some();
    ws.send_json(publish_frame(msid, name, &offer, true, has_video))
        .await;
    let answer = expect_answer(ws, msid).await;
    let port = check_answer(&format!("{} publish", ws.name), &answer, "recvonly");
    if let Some(pt) = video_pt {
        assert_answer_pt("publish", &answer, "video", pt);
    }
    // Nothing else is queued: PUBLISHING cannot precede the client's ICE/DTLS.
    sync_skip_pending(ws).await;
    pc.apply_answer(&answer).await;
    let d = expect_status(ws, msid, "PUBLISHING").await;
    assert_stream_object(&ws.name, &d, name, true);
    // PUBLISHING means ICE + DTLS are done: the client must be connected too (a few
    // ms of slack, since the DTLS server finishes one flight before the client).
    pc.wait_connected(Duration::from_secs(1)).await;
    port
}

/// Plays STREAM over `ws` with `pc`; checks the answer's video payload type and port.
/// Alice and Bob in the room, Alice publishing `STREAM` (H.264 and Opus) and Bob told
/// of it: both sessions, Alice's peer and the media port.
async fn alice_publishing_to_bob(addr: SocketAddr) -> (Client, Client, RtcClient, u16) {
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut alice_pc = h264_publisher("alice-pc").await;
    let port = publish(&mut alice, &mut alice_pc, "m-alice", STREAM, Some(125)).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    (alice, bob, alice_pc, port)
}

async fn play(ws: &mut Client, pc: &mut RtcClient, msid: &str, video_pt: u8, port: u16) -> String {
    let offer = pc.create_offer().await;
    ws.send_json(play_frame(msid, STREAM, &offer)).await;
    let answer = expect_answer(ws, msid).await;
    let what = format!("{} play", ws.name);
    assert_eq!(
        check_answer(&what, &answer, "sendonly"),
        port,
        "{what}: one UDP port for every peer"
    );
    assert_answer_pt(&what, &answer, "video", video_pt);
    pc.apply_answer(&answer).await;
    let d = expect_status(ws, msid, "PLAYING").await;
    assert_stream_object(&ws.name, &d, STREAM, false);
    pc.wait_connected(Duration::from_secs(2)).await;
    answer
}

/// The publisher must get a key frame request for its video SSRC, received at or
/// after `since`, within `limit`; earlier ones are skipped. Returns when it came.
async fn expect_key_frame_request(
    pc: &mut RtcClient,
    since: Instant,
    why: &str,
    limit: Duration,
) -> Instant {
    let deadline = Instant::now() + limit;
    let mut earlier = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((what, ssrc, at)) = pc.wait_key_frame_request(left).await else {
            panic!(
                "publisher got no PLI/FIR within {limit:?} {why} (earlier requests, ms before: {earlier:?})"
            );
        };
        let at = Instant::from_std(at);
        if at < since {
            earlier.push(since.duration_since(at).as_millis());
            continue;
        }
        assert_eq!(
            ssrc, PUB_VIDEO_SSRC,
            "{what} {why} must name the publisher's video SSRC"
        );
        return at;
    }
}

/// `peers` (live WebRTC peer connections) from `/health`.
async fn health_peers(addr: SocketAddr) -> u64 {
    let (status, _, body) = http_get(addr, "/health").await;
    assert_eq!(status, 200, "/health: {body}");
    let v: Value = serde_json::from_str(&body).expect("/health JSON");
    v["peers"]
        .as_u64()
        .unwrap_or_else(|| panic!("/health needs a 'peers' count: {v}"))
}

/// Waits (bounded) until no stream, player and SFU peer is left.
async fn expect_nothing_left(server: &Server, why: &str) {
    let limit = Duration::from_secs(3);
    wait_until(&format!("0 streams/players/peers {why}"), limit, || {
        let s = server.stats();
        s.streams == 0 && s.players == 0 && server.media_peers() == 0
    })
    .await;
    assert_eq!(
        health_peers(server.local_addr()).await,
        0,
        "/health peers {why}"
    );
}

// ---------------------------------------------------------------------------------
// Tests

/// Publish, two players with their own payload types, forwarding of every packet,
/// key frame requests (on play start and from a player), unpublish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_two_players_forward_feedback_and_unpublish() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut carol = member(addr, "carol").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    bob.expect_event_in(ROOM, "JOINED").await;

    // 1. Publish: Opus 111 + H.264 42e01f at 125.
    let mut alice_pc = h264_publisher("alice-pc").await;
    let port = publish(&mut alice, &mut alice_pc, "m-alice", STREAM, Some(125)).await;
    assert_eq!(
        port,
        server.media_port(),
        "the answer names the media socket's port"
    );
    assert_eq!(server.media_peers(), 1);
    assert_eq!(health_peers(addr).await, 1);
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    expect_alice_event(&mut carol, "PUBLISHED", STREAM).await;
    alice.sync().await;
    let camera = Camera::start(
        &alice_pc,
        Position {
            video: (65_500, u32::MAX - 20_000),
            audio: (40_000, 1234),
        },
    )
    .await;

    // 2. Two players, each with payload types of its own; each start asks the
    // publisher for a key frame.
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let since = Instant::now();
    play(&mut bob, &mut bob_pc, "m-bob", 106, port).await;
    let t = Duration::from_secs(2);
    expect_key_frame_request(&mut alice_pc, since, "after bob's play started", t).await;
    // Past a ~500 ms key frame request rate limit (see back_to_back_players_*).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut carol_pc = RtcClient::player(
        "carol-pc",
        &[(AUDIO, opus(109)), (VIDEO, vp8(96)), (VIDEO, h264(102))],
    )
    .await;
    let since = Instant::now();
    play(&mut carol, &mut carol_pc, "m-carol", 102, port).await;
    expect_key_frame_request(&mut alice_pc, since, "after carol's play started", t).await;
    assert_eq!(server.media_peers(), 3, "one publisher and two players");

    // The camera stops; a burst of 50 + 50 packets must reach both players exactly.
    let at = camera.stop().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    bob_pc.drain_media();
    carol_pc.drain_media();
    alice_pc.drain_media();
    let video = h264_packets(alice_pc.negotiated_pt(VIDEO).await, at.video);
    let audio = opus_packets(alice_pc.negotiated_pt(AUDIO).await, 50, at.audio);
    send_interleaved(&alice_pc, &[(VIDEO, &video), (AUDIO, &audio)]).await;
    let mut video_ssrcs = Vec::new();
    for (pc, audio_pt, video_pt) in [(&mut bob_pc, 111, 106), (&mut carol_pc, 109, 102)] {
        let (got, other) = pc.collect_rtp(&[VIDEO, AUDIO], 50, MEDIA_WAIT).await;
        let who = pc.name.clone();
        let v = check_forwarded(&who, VIDEO, &video, &got[0].1, video_pt);
        let a = check_forwarded(&who, AUDIO, &audio, &got[1].1, audio_pt);
        assert_ne!(a, v, "{who}: audio and video need their own SSRCs");
        for m in &other {
            if let Media::Open { kind, ssrc } = m {
                let want = if *kind == VIDEO { v } else { a };
                assert_eq!(*ssrc, want, "{who}: {kind} track opened with another SSRC");
            }
        }
        video_ssrcs.push(v);
    }

    // 3. A player's PLI reaches the publisher (after a quiet spell > any rate limit,
    // in which nothing asks for a key frame).
    alice_pc.drain_media();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let unasked: Vec<Media> = alice_pc
        .drain_media()
        .into_iter()
        .filter(|m| matches!(m, Media::KeyFrameRequest { .. }))
        .collect();
    assert!(
        unasked.is_empty(),
        "key frame requests nobody asked for: {unasked:?}"
    );
    let since = Instant::now();
    bob_pc.send_pli(VIDEO, video_ssrcs[0]).await;
    expect_key_frame_request(&mut alice_pc, since, "after bob's PLI", t).await;

    // 4. Unpublish: the SDK closes its peer connection right after sending.
    alice.send_json(unpublish_frame("m-alice", STREAM)).await;
    alice_pc.close().await;
    let d = expect_status(&mut alice, "m-alice", "UNPUBLISHED").await;
    assert_stream_object("alice", &d, STREAM, true);
    expect_stopped_by_publisher(&mut bob, "m-bob", STREAM).await;
    expect_stopped_by_publisher(&mut carol, "m-carol", STREAM).await;
    alice.sync().await;
    bob.sync().await;
    carol.sync().await;
    expect_nothing_left(&server, "after the unpublish").await;
    bob_pc.close().await;
    carol_pc.close().await;
    stop(server).await;
}

/// The Conference page plays a stream as soon as PUBLISHED arrives, so two members'
/// players come up within moments of each other. Each one needs a key frame: a
/// request that falls inside the per-publisher rate limit must be deferred, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_players_each_get_a_key_frame() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut carol = member(addr, "carol").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    bob.expect_event_in(ROOM, "JOINED").await;
    let mut alice_pc = h264_publisher("alice-pc").await;
    let port = publish(&mut alice, &mut alice_pc, "m-alice", STREAM, Some(125)).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    expect_alice_event(&mut carol, "PUBLISHED", STREAM).await;
    let camera = Camera::start(
        &alice_pc,
        Position {
            video: (1, 0),
            audio: (1, 0),
        },
    )
    .await;

    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let mut carol_pc =
        RtcClient::player("carol-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let since = Instant::now();
    play(&mut bob, &mut bob_pc, "m-bob", 106, port).await;
    let t = Duration::from_secs(2);
    let first = expect_key_frame_request(&mut alice_pc, since, "after bob's play started", t).await;
    // carol right away; the server cannot have her up before she applied the answer,
    // so the key frame request she needs comes after `since`.
    let offer = carol_pc.create_offer().await;
    carol.send_json(play_frame("m-carol", STREAM, &offer)).await;
    let answer = expect_answer(&mut carol, "m-carol").await;
    let since = Instant::now();
    carol_pc.apply_answer(&answer).await;
    expect_status(&mut carol, "m-carol", "PLAYING").await;
    let up = Instant::now();
    let why = format!(
        "for carol, whose play came up {} ms after bob's key frame request",
        up.duration_since(first).as_millis()
    );
    expect_key_frame_request(&mut alice_pc, since, &why, t).await;

    camera.stop().await;
    alice.send_json(unpublish_frame("m-alice", STREAM)).await;
    alice_pc.close().await;
    expect_status(&mut alice, "m-alice", "UNPUBLISHED").await;
    expect_stopped_by_publisher(&mut bob, "m-bob", STREAM).await;
    expect_stopped_by_publisher(&mut carol, "m-carol", STREAM).await;
    expect_nothing_left(&server, "after the unpublish").await;
    bob_pc.close().await;
    carol_pc.close().await;
    stop(server).await;
}

/// A publish whose client never applies the answer ends FAILED by the ICE timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_ice_fails_by_ice_timeout() {
    let server = start_sfu_server(|c| c.media.ice_timeout_ms = 1500).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;

    let mut pc = h264_publisher("alice-pc").await;
    let offer = pc.create_offer().await;
    let t0 = Instant::now();
    alice
        .send_json(publish_frame("m-silent", STREAM, &offer, true, true))
        .await;
    let answer = expect_answer(&mut alice, "m-silent").await;
    check_answer("publish", &answer, "recvonly");
    // The answer is never applied: no ICE check ever reaches the server.
    let d = expect_status(&mut alice, "m-silent", "FAILED").await;
    let elapsed = t0.elapsed();
    assert_eq!(d["info"], "Failed by ICE timeout", "{d}");
    assert_stream_object("alice", &d, STREAM, true);
    assert!(
        elapsed >= Duration::from_millis(1300) && elapsed <= Duration::from_secs(3),
        "FAILED after {elapsed:?}, expected ~1.5 s (ice_timeout_ms = 1500)"
    );
    alice.sync().await;
    // A stream that never went live is never announced.
    bob.sync().await;
    expect_nothing_left(&server, "after the ICE timeout").await;
    pc.close().await;
    stop(server).await;
}

/// A VP8-only publisher goes live; an H.264-only player fails with "No common
/// codecs"; a player offering VP8 gets the VP8 packets under its own payload type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_publisher_and_player_without_common_codec() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut carol = member(addr, "carol").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    bob.expect_event_in(ROOM, "JOINED").await;

    let mut alice_pc = RtcClient::publisher(
        "alice-pc",
        &[
            (AUDIO, opus(111), PUB_AUDIO_SSRC),
            (VIDEO, vp8(96), PUB_VIDEO_SSRC),
        ],
    )
    .await;
    let port = publish(&mut alice, &mut alice_pc, "m-alice", STREAM, Some(96)).await;
    assert!(
        m_line(&alice_pc.offer, "video").is_some_and(|(_, pts)| pts == [96]),
        "the publisher offers VP8 only: {}",
        alice_pc.offer
    );
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    expect_alice_event(&mut carol, "PUBLISHED", STREAM).await;

    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let offer = bob_pc.create_offer().await;
    bob.send_json(play_frame("m-bob", STREAM, &offer)).await;
    let v = next_stream_frame(&mut bob, "m-bob").await;
    assert!(
        v["message"] == "notifyStreamStatusEvent" && v["data"][0]["status"] == "FAILED",
        "an H.264-only player of a VP8 stream must get FAILED (without an answer): {v}\noffer:\n{offer}"
    );
    assert_eq!(v["data"][0]["info"], "No common codecs", "{v}");
    bob.sync().await;
    alice.sync().await;
    assert_eq!(server.stats().players, 0, "the failed player is gone");
    wait_until(
        "the failed player's peer is gone",
        Duration::from_secs(2),
        || server.media_peers() == 1,
    )
    .await;

    let mut carol_pc = RtcClient::player(
        "carol-pc",
        &[(AUDIO, opus(111)), (VIDEO, h264(102)), (VIDEO, vp8(98))],
    )
    .await;
    play(&mut carol, &mut carol_pc, "m-carol", 98, port).await;
    alice_pc.drain_media();
    let video = vp8_packets(alice_pc.negotiated_pt(VIDEO).await, 10);
    send_interleaved(&alice_pc, &[(VIDEO, &video)]).await;
    let (got, _) = carol_pc.collect_rtp(&[VIDEO], 10, MEDIA_WAIT).await;
    check_forwarded("carol-pc", VIDEO, &video, &got[0].1, 98);

    alice.send_json(unpublish_frame("m-alice", STREAM)).await;
    alice_pc.close().await;
    expect_status(&mut alice, "m-alice", "UNPUBLISHED").await;
    expect_stopped_by_publisher(&mut carol, "m-carol", STREAM).await;
    expect_alice_event(&mut bob, "UNPUBLISHED", STREAM).await;
    bob.sync().await;
    expect_nothing_left(&server, "after the unpublish").await;
    bob_pc.close().await;
    carol_pc.close().await;
    stop(server).await;
}

/// 100 publish -> unpublish cycles (every fifth with a player) leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_publish_cycles_leave_no_peers() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut port = None;
    for i in 0..100u32 {
        let name = format!("r-alice-{i:04x}");
        let msid = format!("m-cycle-{i}");
        let mut pc = h264_publisher(&format!("alice-pc-{i}")).await;
        let p = publish(&mut alice, &mut pc, &msid, &name, Some(125)).await;
        assert_eq!(
            *port.get_or_insert(p),
            p,
            "cycle {i}: the media port changed"
        );
        expect_alice_event(&mut bob, "PUBLISHED", &name).await;
        let player = if i % 5 == 4 {
            let mut bob_pc = RtcClient::player(
                &format!("bob-pc-{i}"),
                &[(AUDIO, opus(111)), (VIDEO, h264(106))],
            )
            .await;
            let offer = bob_pc.create_offer().await;
            bob.send_json(play_frame(&format!("m-play-{i}"), &name, &offer))
                .await;
            let answer = expect_answer(&mut bob, &format!("m-play-{i}")).await;
            bob_pc.apply_answer(&answer).await;
            expect_status(&mut bob, &format!("m-play-{i}"), "PLAYING").await;
            Some(bob_pc)
        } else {
            None
        };
        alice.send_json(unpublish_frame(&msid, &name)).await;
        pc.close().await;
        expect_status(&mut alice, &msid, "UNPUBLISHED").await;
        if let Some(bob_pc) = player {
            expect_stopped_by_publisher(&mut bob, &format!("m-play-{i}"), &name).await;
            bob_pc.close().await;
        } else {
            expect_alice_event(&mut bob, "UNPUBLISHED", &name).await;
        }
    }
    alice.sync().await;
    bob.sync().await;
    expect_nothing_left(&server, "after 100 publish/unpublish cycles").await;
    stop(server).await;
}

/// Waits (bounded) until `pc` received `n` more video packets.
async fn expect_video_flowing(pc: &mut RtcClient, n: usize) {
    pc.drain_media();
    let (got, _) = pc.collect_rtp(&[VIDEO], n, MEDIA_WAIT).await;
    assert!(
        got[0].1.len() >= n,
        "{}: only {} video packets within {MEDIA_WAIT:?}",
        pc.name,
        got[0].1.len()
    );
}

/// Several players in one session and a publisher playing its own stream; a player's
/// stopStream ends only that player; the publisher's socket going away ends the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_in_one_session_stop_and_publisher_disconnect() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (mut alice, mut bob, alice_pc, port) = alice_publishing_to_bob(addr).await;
    let camera = Camera::start(
        &alice_pc,
        Position {
            video: (100, 0),
            audio: (100, 0),
        },
    )
    .await;

    let codecs = [(AUDIO, opus(111)), (VIDEO, h264(106))];
    let mut bob1 = RtcClient::player("bob-pc-1", &codecs).await;
    play(&mut bob, &mut bob1, "m-bob-1", 106, port).await;
    let mut bob2 = RtcClient::player("bob-pc-2", &codecs).await;
    play(&mut bob, &mut bob2, "m-bob-2", 106, port).await;
    let mut own = RtcClient::player("alice-own-pc", &codecs).await;
    play(&mut alice, &mut own, "m-alice-own", 106, port).await;
    assert_eq!(server.media_peers(), 4);
    for pc in [&mut bob1, &mut bob2, &mut own] {
        expect_video_flowing(pc, 5).await;
    }

    bob.send_json(json!({"message": "stopStream", "data": [{
        "mediaSessionId": "m-bob-1", "name": STREAM, "published": false,
        "hasVideo": true, "hasAudio": true, "status": "PLAYING", "record": false}]}))
        .await;
    bob1.close().await;
    expect_status(&mut bob, "m-bob-1", "STOPPED").await;
    wait_until(
        "bob's stopped player's peer is gone",
        Duration::from_secs(2),
        || server.media_peers() == 3,
    )
    .await;
    expect_video_flowing(&mut bob2, 5).await;
    expect_video_flowing(&mut own, 5).await;
    alice.sync().await;
    bob.sync().await;

    // alice's socket goes away: her publish and her own player end with it.
    alice.close().await;
    let (mut stopped, mut left) = (false, false);
    for _ in 0..4 {
        if stopped && left {
            break;
        }
        let v = bob.recv().await;
        let d = &v["data"][0];
        match v["message"].as_str() {
            Some("notifyStreamStatusEvent") if d["mediaSessionId"] == "m-bob-2" => {
                assert_eq!(d["status"], "STOPPED", "bob: {v}");
                stopped = true;
            }
            Some("OnDataEvent") if d["payload"]["name"] == "LEFT" => left = true,
            Some("OnDataEvent")
                if matches!(
                    d["payload"]["name"].as_str(),
                    Some("FAILED" | "UNPUBLISHED")
                ) =>
            {
                assert_eq!(d["payload"]["info"]["name"], STREAM, "bob: {v}");
            }
            _ => panic!("bob: unexpected frame after alice disconnected: {v}"),
        }
    }
    assert!(stopped && left, "bob: STOPPED of m-bob-2 and LEFT expected");
    camera.stop().await;
    expect_nothing_left(&server, "after the publisher's session ended").await;
    alice_pc.close().await;
    bob2.close().await;
    own.close().await;
    stop(server).await;
}

/// A stream without audio (a screen share without a microphone) plays on an offer with
/// audio and video: the audio m-line stays in the bundle with no track (rejecting the
/// first m-line took the candidates away from the video), and the video flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_stream_plays_on_an_audio_and_video_offer() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut alice_pc =
        RtcClient::publisher("alice-pc", &[(VIDEO, h264(125), PUB_VIDEO_SSRC)]).await;
    publish(&mut alice, &mut alice_pc, "m-alice", STREAM, Some(125)).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;

    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let offer = bob_pc.create_offer().await;
    bob.send_json(play_frame("m-bob", STREAM, &offer)).await;
    let answer = expect_answer(&mut bob, "m-bob").await;
    let audio = answer
        .split("m=")
        .find(|s| s.starts_with("audio"))
        .unwrap_or_else(|| panic!("no audio m-line in\n{answer}"));
    assert!(
        !audio.starts_with("audio 0 "),
        "the audio m-line must stay in the bundle, not be rejected:\n{answer}"
    );
    assert!(
        !audio.contains("a=ssrc:") && !audio.contains("a=msid:"),
        "nothing is sent on the audio m-line:\n{answer}"
    );
    // Inactive, not a sendonly m-line without a track: that makes a browser announce a
    // remote track of its own stream that never gets media (see audio_only_stream_*).
    assert!(
        audio.contains("a=inactive\r\n") && audio.contains("a=candidate:"),
        "the audio m-line must be inactive and still carry the candidates:\n{answer}"
    );
    let video = answer
        .split("m=")
        .find(|s| s.starts_with("video"))
        .unwrap_or_else(|| panic!("no video m-line in\n{answer}"));
    assert!(
        video.contains("a=sendonly"),
        "video must be sendonly:\n{answer}"
    );
    bob_pc.apply_answer(&answer).await;
    expect_status(&mut bob, "m-bob", "PLAYING").await;
    bob_pc.wait_connected(Duration::from_secs(2)).await;

    alice_pc.drain_media();
    let packets = h264_packets(alice_pc.negotiated_pt(VIDEO).await, (1000, 90_000));
    send_interleaved(&alice_pc, &[(VIDEO, &packets)]).await;
    let (got, _) = bob_pc
        .collect_rtp(&[VIDEO], packets.len(), MEDIA_WAIT)
        .await;
    check_forwarded("bob-pc", VIDEO, &packets, &got[0].1, 106);
    stop(server).await;
}

/// `a=ice-ufrag` of an SDP (our ufrag, for an answer).
fn ice_ufrag(sdp: &str) -> String {
    sdp.split("\r\n")
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap_or_else(|| panic!("no a=ice-ufrag in\n{sdp}"))
        .to_owned()
}

/// A binding request as a browser's, naming `ufrag`, with a MESSAGE-INTEGRITY of
/// garbage: what a forger who read the ufrag (not the password) sends.
fn forged_binding_request(ufrag: &str, n: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |kind: u16, value: &[u8]| {
        attrs.extend_from_slice(&kind.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(value);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
    };
    attr(0x0006, format!("{ufrag}:evil").as_bytes()); // USERNAME
    attr(0x0024, &0x6e7f_1effu32.to_be_bytes()); // PRIORITY
    attr(0x0025, &[]); // USE-CANDIDATE
    attr(0x802a, &[7; 8]); // ICE-CONTROLLING
    attr(0x0008, &[0x5a; 20]); // MESSAGE-INTEGRITY
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&n.to_be_bytes());
    m.extend_from_slice(&[0x42; 8]);
    m.extend_from_slice(&attrs);
    m
}

/// RTP packets `pc` receives in `span`.
async fn rtp_in(pc: &mut RtcClient, span: Duration) -> usize {
    pc.drain_media();
    tokio::time::sleep(span).await;
    pc.drain_media()
        .iter()
        .filter(|m| matches!(m, Media::Rtp { .. }))
        .count()
}

/// Issue 10, finding 4: datagrams naming a peer's ufrag (it is in the answer) with a
/// MESSAGE-INTEGRITY that does not verify must not take the peer's address over. A
/// forger sprays such binding requests for the player's and the publisher's ufrag
/// from five ports; the player keeps receiving at the same rate, and nothing is ever
/// sent to the forger (no route toward it was learned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stun_does_not_take_over_a_peers_address() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (mut alice, mut bob, alice_pc, port) = alice_publishing_to_bob(addr).await;
    let camera = Camera::start(
        &alice_pc,
        Position {
            video: (1, 0),
            audio: (1, 0),
        },
    )
    .await;
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let answer = play(&mut bob, &mut bob_pc, "m-bob", 106, port).await;
    let ufrags = [
        ice_ufrag(&answer),
        ice_ufrag(alice_pc.answer.as_deref().unwrap_or_default()),
    ];
    // 50 video + 50 audio packets a second.
    let before = rtp_in(&mut bob_pc, Duration::from_secs(1)).await;
    assert!(
        before >= 60,
        "bob-pc: only {before} packets/s before the attack"
    );

    let media: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut forgers = Vec::new();
    for _ in 0..5 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        forgers.push(Arc::new(s));
    }
    let spray = {
        let forgers = forgers.clone();
        let ufrags = ufrags.clone();
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_millis(2500);
            let mut n = 0u32;
            while Instant::now() < end {
                for s in &forgers {
                    for u in &ufrags {
                        n += 1;
                        let _ = s.send_to(&forged_binding_request(u, n), media).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rtp_in(&mut bob_pc, Duration::from_secs(1)).await;
    let sent = spray.await.expect("spray task");
    let after = rtp_in(&mut bob_pc, Duration::from_secs(1)).await;
    assert!(sent >= 200, "the forger sent only {sent} datagrams");
    // A hijacked route drops the player to ~2 % (measured without the integrity check).
    // Under CPU emulation (the aarch64 suite under qemu) the verification of ~1,600
    // forged MACs costs real time: there the player need only keep a fifth of its rate.
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let tenths = if emulated { 2 } else { 8 };
    assert!(
        during * 10 >= before * tenths && after * 10 >= before * tenths,
        "bob-pc's packets per second: {before} before, {during} during, {after} after {sent} forged requests"
    );
    let mut buf = [0u8; 2048];
    for (i, s) in forgers.iter().enumerate() {
        match s.try_recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("forger {i} got something back: {other:?}"),
        }
    }
    assert_eq!(server.media_peers(), 2, "no peer came or went");

    camera.stop().await;
    alice.send_json(unpublish_frame("m-alice", STREAM)).await;
    alice_pc.close().await;
    expect_status(&mut alice, "m-alice", "UNPUBLISHED").await;
    expect_stopped_by_publisher(&mut bob, "m-bob", STREAM).await;
    expect_nothing_left(&server, "after the unpublish").await;
    bob_pc.close().await;
    stop(server).await;
}

/// Issue 10, finding 8: offers that cannot lead to a working peer (a DTLS fingerprint
/// with an unknown hash, non-hex or of the wrong size; too many m-lines) fail at once
/// with "Invalid SDP offer: …", well before `ice_timeout_ms`, and hold no peer; the
/// session goes on and publishes with a good offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_with_bad_fingerprints_or_too_many_m_lines_fail_at_once() {
    let server = start_sfu_server(|c| c.media.ice_timeout_ms = 15_000).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut alice_pc = h264_publisher("alice-pc").await;
    let offer = alice_pc.create_offer().await;
    let fingerprint = offer
        .split("\r\n")
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap_or_else(|| panic!("no fingerprint in the offer:\n{offer}"))
        .to_owned();
    let sha256 = vec!["AB"; 32].join(":");
    let extra_m_lines =
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n".repeat(16);
    let bad = [
        (
            offer.replace(&fingerprint, &format!("a=fingerprint:md5 {sha256}")),
            "unknown hash function",
        ),
        (
            offer.replace(&fingerprint, "a=fingerprint:sha-256 not:hex"),
            "not colon-separated hex bytes",
        ),
        (
            offer.replace(&fingerprint, "a=fingerprint:sha-256 AB"),
            "sha-256 needs 32 bytes, not 1",
        ),
        (
            offer.replace(&format!("{fingerprint}\r\n"), ""),
            "no a=fingerprint",
        ),
        (format!("{offer}{extra_m_lines}"), "more than 16 m-lines"),
    ];
    for (i, (sdp, why)) in bad.iter().enumerate() {
        let msid = format!("m-bad-{i}");
        let t0 = Instant::now();
        alice
            .send_json(publish_frame(&msid, STREAM, sdp, true, true))
            .await;
        let v = next_stream_frame(&mut alice, &msid).await;
        let elapsed = t0.elapsed();
        let d = &v["data"][0];
        assert!(
            v["message"] == "notifyStreamStatusEvent" && d["status"] == "FAILED",
            "offer {i} ({why}) must fail without an answer: {v}"
        );
        let info = d["info"].as_str().unwrap_or_default();
        assert!(
            info.starts_with("Invalid SDP offer: ") && info.ends_with(why),
            "offer {i}: FAILED info {info:?} must say {why:?}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "offer {i} ({why}) failed after {elapsed:?}, not at once"
        );
        assert_eq!(server.media_peers(), 0, "offer {i} ({why}) holds no peer");
    }
    // Nobody heard of the failed streams; the session still publishes.
    bob.sync().await;
    publish(&mut alice, &mut alice_pc, "m-good", STREAM, Some(125)).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    assert_eq!(server.media_peers(), 1);
    alice.send_json(unpublish_frame("m-good", STREAM)).await;
    alice_pc.close().await;
    expect_status(&mut alice, "m-good", "UNPUBLISHED").await;
    expect_alice_event(&mut bob, "UNPUBLISHED", STREAM).await;
    expect_nothing_left(&server, "after the unpublish").await;
    stop(server).await;
}

/// Issue 10, finding 13: a stream without video (a participant without a camera) plays
/// on an offer with audio and video. The video m-line is answered inactive (no track
/// announced to the browser, whose page would otherwise show an empty video stream
/// instead of the audio) and the audio flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_stream_plays_on_an_audio_and_video_offer() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;
    let mut alice_pc =
        RtcClient::publisher("alice-pc", &[(AUDIO, opus(111), PUB_AUDIO_SSRC)]).await;
    publish(&mut alice, &mut alice_pc, "m-alice", STREAM, None).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;

    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(109)), (VIDEO, h264(106))]).await;
    let offer = bob_pc.create_offer().await;
    bob.send_json(play_frame("m-bob", STREAM, &offer)).await;
    let answer = expect_answer(&mut bob, "m-bob").await;
    assert_answer_pt("bob play", &answer, "audio", 109);
    let video = answer
        .split("m=")
        .find(|s| s.starts_with("video"))
        .unwrap_or_else(|| panic!("no video m-line in\n{answer}"));
    assert!(
        !video.starts_with("video 0 ") && video.contains("a=inactive\r\n"),
        "the video m-line stays in the bundle, inactive:\n{answer}"
    );
    assert!(
        !video.contains("a=msid:") && !video.contains("a=ssrc:"),
        "no video track is announced:\n{answer}"
    );
    bob_pc.apply_answer(&answer).await;
    expect_status(&mut bob, "m-bob", "PLAYING").await;
    bob_pc.wait_connected(Duration::from_secs(2)).await;

    alice_pc.drain_media();
    let audio = opus_packets(alice_pc.negotiated_pt(AUDIO).await, 50, (7, 960));
    send_interleaved(&alice_pc, &[(AUDIO, &audio)]).await;
    let (got, other) = bob_pc.collect_rtp(&[AUDIO], audio.len(), MEDIA_WAIT).await;
    check_forwarded("bob-pc", AUDIO, &audio, &got[0].1, 109);
    assert!(
        !other
            .iter()
            .any(|m| matches!(m, Media::Open { kind: VIDEO, .. })),
        "no video track opened: {other:?}"
    );
    stop(server).await;
}

/// A burst of 200 video packets (four key frames and their deltas, written back to
/// back) fanned out to 30 players over the one media socket, in batches (each
/// player's share of what arrived together as a UDP GSO segment train, the rest by
/// sendmmsg): every player gets all 200, in order, with its own consecutive sequence
/// numbers.
/// With two media workers (as every test server), half the players are served by the
/// worker thread beside the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_packets_reaches_30_players_whole_and_in_order() {
    burst_to_players(2).await;
}

/// The same on one media worker: everything on the SFU task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_packets_reaches_30_players_on_one_media_worker() {
    burst_to_players(1).await;
}

/// Up to `n` video packets a player receives, within 10 s (60 s under emulation).
async fn video_packets(pc: &mut RtcClient, n: usize, emulated: bool) -> Vec<Packet> {
    let mut got: Vec<Packet> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(if emulated { 60 } else { 10 });
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match pc.next_media(left).await {
            Some(Media::Rtp { kind, packet }) if kind == VIDEO => got.push(packet),
            Some(_) => {}
            None => break,
        }
    }
    got
}

async fn burst_to_players(workers: usize) {
    // Under CPU emulation (the aarch64 suite under qemu-user) 30 emulated clients'
    // DTLS and SRTP take minutes: 4 players there, and more time between bursts.
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let (players_n, pause) = if emulated { (4, 250) } else { (30, 40) };
    let server = start_sfu_server(|c| c.media.workers = workers).await;
    let addr = server.local_addr();
    let (alice, mut bob, alice_pc, port) = alice_publishing_to_bob(addr).await;
    // One session plays the stream 30 times (a play per peer connection).
    let mut players = Vec::new();
    for i in 0..players_n {
        let mut pc = RtcClient::player(
            &format!("bob-pc-{i}"),
            &[(AUDIO, opus(111)), (VIDEO, h264(106))],
        )
        .await;
        play(&mut bob, &mut pc, &format!("m-bob-{i}"), 106, port).await;
        players.push(pc);
    }
    // Placed as their DTLS came up: evenly over the workers (the thread first).
    let placed = |w: usize| format!("huddle_media_worker_players{{worker=\"{w}\"}}");
    let half = (players_n / workers) as f64;
    wait_for_metric(
        addr,
        &placed(0),
        players_n as f64 - half * (workers as f64 - 1.0),
    )
    .await;
    if workers == 2 {
        wait_for_metric(addr, &placed(1), half).await;
    }
    let sent: Vec<Packet> = (0..4u16)
        .flat_map(|k| h264_packets(125, (1000 + k * 50, u32::from(k) * 90_000)))
        .collect();
    // Frame-sized bursts of ten packets every 40 ms: each burst goes out to 30
    // players at once (300 datagrams); the pause lets 30 debug-build clients in this
    // process drain their sockets (a single 200-packet burst overflowed their receive
    // buffers, with or without batching).
    for frame in sent.chunks(10) {
        for p in frame {
            alice_pc.write_rtp(VIDEO, p.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    for (i, pc) in players.iter_mut().enumerate() {
        let got = video_packets(pc, sent.len(), emulated).await;
        assert_eq!(got.len(), sent.len(), "player {i}: packets of the burst");
        for (n, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(g.payload, s.payload, "player {i}: packet {n} out of order");
        }
        assert!(
            got.windows(2).all(|w| w[1].header.sequence_number
                == w[0].header.sequence_number.wrapping_add(1)),
            "player {i}: sequence numbers with a gap"
        );
    }
    // Frames' packets that arrived together left as trains (read from /metrics).
    let trains = common::metric(addr, "huddle_udp_trains_total").await;
    let in_trains = common::metric(addr, "huddle_udp_train_datagrams_total").await;
    eprintln!("{workers} worker(s): {trains} trains of {in_trains} datagrams");
    assert!(
        emulated || trains > 0.0,
        "no segment train among {} datagrams",
        sent.len() * players_n
    );
    assert!(
        in_trains >= 2.0 * trains,
        "a train is two datagrams or more"
    );
    alice_pc.close().await;
    for pc in players {
        pc.close().await;
    }
    drop((alice, bob));
    stop(server).await;
}

/// A player behind a link that loses one RTP packet in ten still gets every packet:
/// its NACKs are answered from the SFU's history of what it sent that player (the
/// forwarding fast path, `sfu::play_out`), and sender reports come for both tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_losing_one_packet_in_ten_gets_each_again_by_nack() {
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (alice, mut bob, alice_pc, _) = alice_publishing_to_bob(addr).await;

    let mut pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let offer = pc.create_offer().await;
    bob.send_json(play_frame("m-bob", STREAM, &offer)).await;
    let answer = expect_answer(&mut bob, "m-bob").await;
    let relay = room_media::Relay::bind().await;
    let seen = std::sync::Arc::clone(&relay.seen);
    let loss = room_media::Loss {
        drop: 1,
        every: 10,
        repairable: true,
    };
    pc.apply_answer(&relay.answer(&answer, loss)).await;
    expect_status(&mut bob, "m-bob", "PLAYING").await;
    pc.wait_connected(Duration::from_secs(5)).await;
    // The one player is on the media worker thread: its NACKs and reports are
    // answered there.
    wait_for_metric(addr, "huddle_media_worker_players{worker=\"1\"}", 1.0).await;

    let video: Vec<Packet> = (0..4u16)
        .flat_map(|k| h264_packets(125, (1000 + k * 50, u32::from(k) * 90_000)))
        .collect();
    let audio = opus_packets(alice_pc.negotiated_pt(AUDIO).await, 40, (7, 960));
    // A frame's worth every 20 ms, with an audio packet beside it.
    for (frame, a) in video.chunks(5).zip(&audio) {
        alice_pc.write_rtp(AUDIO, a.clone()).await;
        for p in frame {
            alice_pc.write_rtp(VIDEO, p.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = std::collections::HashSet::new();
    let mut ssrcs = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < video.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match pc.next_media(left).await {
            Some(Media::Rtp { kind, packet }) => {
                ssrcs.insert(packet.header.ssrc);
                if kind == VIDEO {
                    got.insert(packet.payload);
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    let dropped = seen.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let repaired = seen.repaired.load(std::sync::atomic::Ordering::Relaxed);
    let missing = video.iter().filter(|p| !got.contains(&p.payload)).count();
    assert_eq!(
        missing, 0,
        "video packets never received ({dropped} dropped, {repaired} sent again)"
    );
    // The relay drops audio too (1 in 10 of 40 packets), which nobody asks for again:
    // the video it dropped (about 20 of 200) came back, or `missing` would say so.
    assert!(dropped >= 20, "the relay dropped {dropped}");
    assert!(repaired >= 15, "{repaired} of {dropped} sent again");
    // Sender reports (every second) for the player's audio and video SSRCs.
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.sender_reports.lock().expect("seen").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reported = seen.sender_reports.lock().expect("seen").clone();
    assert_eq!(
        reported, ssrcs,
        "sender reports for every SSRC the player got"
    );
    assert_eq!(ssrcs.len(), 2, "audio and video");

    alice_pc.close().await;
    pc.close().await;
    drop((alice, bob));
    stop(server).await;
}

/// Datagrams no peer sent: random bytes, STUN requests for unknown ufrags or with a
/// forged MESSAGE-INTEGRITY, RTP and DTLS lookalikes, empty ones; `i` picks the kind.
fn junk_datagram(i: u64, rng: &mut u64) -> Vec<u8> {
    // xorshift64: deterministic junk.
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                *rng as u8
            })
            .collect()
    };
    let stun = |username: &[u8], tail: &[u8]| {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&[0x00, 0x06, 0, username.len() as u8]);
        attrs.extend_from_slice(username);
        attrs.resize(attrs.len().div_ceil(4) * 4, 0);
        attrs.extend_from_slice(&[0x00, 0x08, 0, 20]);
        attrs.extend_from_slice(tail);
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    };
    match i % 6 {
        0 => {
            let n =
                1 + usize::from(random(2).iter().fold(0u16, |a, b| a * 4 + u16::from(*b)) % 1200);
            random(n)
        }
        1 => stun(b"nosuchufrag:x", &[0xab; 20]),
        2 => {
            let mac = random(20);
            stun(b"abcd:efgh", &mac)
        }
        3 => {
            let mut p = vec![0x80, 0x60, 0, i as u8, 0, 0, 0, 1];
            p.extend(random(4 + 200));
            p
        }
        4 => {
            let mut p = vec![22, 0xfe, 0xfd, 0, 0];
            p.extend(random(100));
            p
        }
        _ => Vec::new(),
    }
}

/// Fault injection (issue 17): a flood of junk datagrams at the media port while a
/// room is live, from addresses no peer uses. The room's media keeps flowing: a player
/// gets every packet of 200 published during the flood, whole and in order, and the
/// junk is counted as unroutable, not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_at_the_media_port_leaves_the_room_flowing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (alice, mut bob, alice_pc, port) = alice_publishing_to_bob(addr).await;
    let mut player = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    play(&mut bob, &mut player, "m-bob", 106, port).await;
    let before = common::metric(addr, "huddle_packets_dropped_total{reason=\"no_route\"}").await;

    // About 20 000 datagrams a second (2 500 emulated) from four sockets, until told to
    // stop; at most 300 000 and 30 s.
    let halt = Arc::new(AtomicBool::new(false));
    let flood = {
        let halt = halt.clone();
        std::thread::spawn(move || {
            let sockets: Vec<std::net::UdpSocket> = (0..4)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let (burst, pause) = if emulated { (25, 10) } else { (200, 10) };
            let started = std::time::Instant::now();
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let mut sent = 0u64;
            while !halt.load(Ordering::Relaxed)
                && sent < 300_000
                && started.elapsed() < Duration::from_secs(30)
            {
                for _ in 0..burst {
                    let d = junk_datagram(sent, &mut rng);
                    let s = &sockets[(sent % 4) as usize];
                    if s.send_to(&d, ("127.0.0.1", port)).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(pause));
            }
            sent
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<Packet> = (0..4u16)
        .flat_map(|k| h264_packets(125, (2000 + k * 50, u32::from(k) * 90_000)))
        .collect();
    for frame in sent.chunks(10) {
        for p in frame {
            alice_pc.write_rtp(VIDEO, p.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let got = video_packets(&mut player, sent.len(), emulated).await;
    halt.store(true, Ordering::Relaxed);
    let junk = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    assert_eq!(got.len(), sent.len(), "packets published during the flood");
    // Every one of them, each once: one that a full socket buffer dropped during the
    // flood comes again by NACK (later than its neighbours: the player's jitter buffer
    // puts it back in place).
    let late = got
        .iter()
        .zip(&sent)
        .filter(|(g, s)| g.payload != s.payload)
        .count();
    let mut got_payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    let mut sent_payloads: Vec<&[u8]> = sent.iter().map(|p| &p.payload[..]).collect();
    got_payloads.sort();
    sent_payloads.sort();
    assert!(
        got_payloads == sent_payloads,
        "the packets published during the flood"
    );
    // The junk was seen and dropped as unroutable (not all: some kinds are dropped
    // uncounted, some may still be queued or the kernel's buffer overflowed).
    let dropped =
        common::metric(addr, "huddle_packets_dropped_total{reason=\"no_route\"}").await - before;
    eprintln!("{junk} junk datagrams sent, {dropped} counted unroutable; {late} media packets out of place");
    assert!(
        junk >= if emulated { 200 } else { 2_000 },
        "the flood sent {junk}"
    );
    assert!(dropped >= junk as f64 / 10.0, "{dropped} of {junk} counted");
    alice_pc.close().await;
    player.close().await;
    drop((alice, bob));
    stop(server).await;
}

/// Fault injection (issue 17): a player whose network goes bad — 10 % loss, a 200 kbps
/// cap with a 100 ms queue (a third of the stream's rate) and 150 ms of delay, made by
/// a relay — does not touch the publisher or the other player: the other player gets
/// every packet, each once, and the publisher is asked for key frames no more often
/// than the SFU's interval (500 ms) allows, whatever the bad player's losses; the bad
/// player's repair costs at most half again its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_a_bad_network_leaves_the_publisher_and_the_other_player_alone() {
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let server = start_sfu_server(|_| {}).await;
    let addr = server.local_addr();
    let (alice, mut bob, mut alice_pc, port) = alice_publishing_to_bob(addr).await;
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    play(&mut bob, &mut bob_pc, "m-bob", 106, port).await;

    let mut carol = member(addr, "carol").await;
    let mut carol_pc =
        RtcClient::player("carol-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    let offer = carol_pc.create_offer().await;
    carol.send_json(play_frame("m-carol", STREAM, &offer)).await;
    let answer = expect_answer(&mut carol, "m-carol").await;
    let relay = room_media::Relay::bind().await;
    let seen = Arc::clone(&relay.seen);
    let bad = room_media::Impairment {
        loss_percent: 10,
        rate_bps: 200_000,
        queue: Duration::from_millis(100),
        delay: Duration::from_millis(150),
    };
    carol_pc
        .apply_answer(&relay.impaired_answer(&answer, bad))
        .await;
    expect_status(&mut carol, "m-carol", "PLAYING").await;
    carol_pc.wait_connected(Duration::from_secs(10)).await;
    // The key frame requests of the players' starts are not the window's.
    while alice_pc
        .wait_key_frame_request(Duration::from_millis(600))
        .await
        .is_some()
    {}

    // About 600 kbps for ~4 s: eight runs of a key frame and 15 frames, a frame every
    // 33 ms (emulated: every 66 ms).
    let frame_gap = Duration::from_millis(if emulated { 66 } else { 33 });
    let sent: Vec<Packet> = (0..8u16)
        .flat_map(|k| h264_packets(125, (3000 + k * 50, u32::from(k) * 48_000)))
        .collect();
    // The sessions stay alive (their pings answered) however long the window takes.
    let sessions = [alice, bob, carol].map(common::Client::keep_alive);
    let (carol_stop, mut carol_stopped) = tokio::sync::oneshot::channel::<()>();
    let carol_counter = tokio::spawn(async move {
        let mut got = 0usize;
        let cap = Instant::now() + Duration::from_secs(60);
        while matches!(
            carol_stopped.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ) && Instant::now() < cap
        {
            let m = carol_pc.next_media(Duration::from_millis(100)).await;
            if matches!(m, Some(Media::Rtp { kind, .. }) if kind == VIDEO) {
                got += 1;
            }
        }
        (got, carol_pc)
    });
    let window = Instant::now();
    let mut frame = Vec::new();
    for p in &sent {
        frame.push(p.clone());
        if p.header.marker {
            for p in frame.drain(..) {
                alice_pc.write_rtp(VIDEO, p).await;
            }
            tokio::time::sleep(frame_gap).await;
        }
    }
    let got = video_packets(&mut bob_pc, sent.len(), emulated).await;
    let window = window.elapsed();

    // Bob: every packet, each once, in the order sent.
    assert_eq!(got.len(), sent.len(), "bob's packets");
    let out_of_order = got
        .iter()
        .zip(&sent)
        .filter(|(g, s)| g.payload != s.payload)
        .count();
    assert_eq!(out_of_order, 0, "bob got every packet in order");
    let seqs: Vec<u16> = got.iter().map(|p| p.header.sequence_number).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "bob's sequence numbers are consecutive"
    );

    // Alice: key frame requests in the window within the interval's allowance.
    let mut requests = 0u32;
    while alice_pc
        .wait_key_frame_request(Duration::from_millis(200))
        .await
        .is_some()
    {
        requests += 1;
    }
    let allowed = (window.as_millis() / 500) as u32 + 2;
    // Carol: a bad link, but still playing and getting some of it (what her link's
    // queue and delay still hold comes within half a second).
    tokio::time::sleep(bad.queue + bad.delay + Duration::from_millis(250)).await;
    let _ = carol_stop.send(());
    let (carol_got, carol_pc) = carol_counter.await.expect("carol's counter");
    assert_eq!(server.stats().players, 2, "both players still playing");
    let (dropped, queue_dropped, passed) = (
        seen.dropped.load(std::sync::atomic::Ordering::Relaxed),
        seen.queue_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        seen.passed.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!(
        "window {window:?}: alice asked for {requests} key frames (at most {allowed}); carol got {carol_got} of {} video packets; her link lost {dropped}, dropped {queue_dropped} at its queue, passed {passed}",
        sent.len()
    );
    assert!(
        requests <= allowed,
        "{requests} key frame requests in {window:?}"
    );
    assert!(queue_dropped > 0, "the cap must bite ({passed} passed)");
    // Repair costs at most half again what is forwarded (and the burst saved up at
    // the start, `play_out::RESEND_BURST`): the SFU does not pour NACK answers into
    // the bad link. A few sender reports and consent answers on top.
    let toward_carol = dropped + queue_dropped + passed;
    let most = sent.len() as u64 * 3 / 2 + 128 + 60;
    assert!(
        toward_carol <= most,
        "{toward_carol} datagrams toward carol for {} packets (at most {most})",
        sent.len()
    );
    assert!(
        carol_got > 0 && carol_got < sent.len(),
        "carol got {carol_got} of {}",
        sent.len()
    );
    // Nobody was told anything about their streams meanwhile.
    let mut back = Vec::new();
    for kept in sessions {
        back.push(kept.back().await);
    }
    for (who, frames) in &back {
        assert!(
            frames
                .iter()
                .all(|f| f["message"] != "notifyStreamStatusEvent"),
            "{}: {frames:?}",
            who.name
        );
    }

    alice_pc.close().await;
    bob_pc.close().await;
    carol_pc.close().await;
    stop(server).await;
}

/// Fault injection (issue 17): a publisher whose network vanishes in the middle of a
/// frame — two of its three fragments sent, then nothing at all, no goodbye — while
/// it is played and recorded. The player gets everything that was sent, in order;
/// after `ice_timeout_ms` of silence the stream fails ("Failed by ICE timeout"), the
/// player is told it stopped and the room that it is gone; the record is finished and
/// holds every whole frame and not the half one; nothing is left of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_vanishing_mid_frame_ends_cleanly_and_its_record_keeps_every_whole_frame() {
    let emulated = std::env::var("HUDDLE_TEST_EXEC_WRAPPER").is_ok_and(|w| !w.trim().is_empty());
    let records =
        std::env::temp_dir().join(format!("huddle-vanish-records-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&records);
    let dir = records.clone();
    let server = start_sfu_server(move |c| {
        c.media.ice_timeout_ms = 4000;
        c.records.dir = dir;
    })
    .await;
    let addr = server.local_addr();
    let mut alice = member(addr, "alice").await;
    let mut bob = member(addr, "bob").await;
    alice.expect_event_in(ROOM, "JOINED").await;

    // Alice publishes through a relay that will lose her network.
    let mut alice_pc = h264_publisher("alice-pc").await;
    let offer = alice_pc.create_offer().await;
    alice
        .send_json(publish_frame("m-alice", STREAM, &offer, true, true))
        .await;
    let answer = expect_answer(&mut alice, "m-alice").await;
    let relay = room_media::Relay::bind().await;
    let seen = Arc::clone(&relay.seen);
    let pass = room_media::Loss {
        drop: 0,
        every: 1,
        repairable: true,
    };
    alice_pc.apply_answer(&relay.answer(&answer, pass)).await;
    expect_status(&mut alice, "m-alice", "PUBLISHING").await;
    alice_pc.wait_connected(Duration::from_secs(5)).await;
    expect_alice_event(&mut bob, "PUBLISHED", STREAM).await;
    let port = check_answer("alice publish", &answer, "recvonly");
    let mut bob_pc = RtcClient::player("bob-pc", &[(AUDIO, opus(111)), (VIDEO, h264(106))]).await;
    play(&mut bob, &mut bob_pc, "m-bob", 106, port).await;
    let path = format!("/api/v1/streams/{STREAM}/recording");
    let (status, _, reply) = http_request(addr, "POST", &path, &[], None).await;
    assert_eq!(status, 201, "POST {path}: {reply}");

    // 16 whole frames (a key frame with SPS and PPS first), then the first two of the
    // 17th frame's three fragments.
    let mut sent = h264_packets(125, (500, 0));
    let ts = 16 * 3000;
    for (i, fu_header) in [0x81u8, 0x01].into_iter().enumerate() {
        let mut payload = vec![0x5c, fu_header];
        payload.extend(body(900 + i, 1000));
        sent.push(rtp_packet(
            125,
            PUB_VIDEO_SSRC,
            550 + i as u16,
            ts,
            false,
            payload,
        ));
    }
    let mut frame = Vec::new();
    for p in &sent {
        frame.push(p.clone());
        if p.header.marker || p.header.sequence_number == 551 {
            for p in frame.drain(..) {
                alice_pc.write_rtp(VIDEO, p).await;
            }
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    }
    let got = video_packets(&mut bob_pc, sent.len(), emulated).await;
    // Her network goes: nothing more either way.
    seen.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    let cut = Instant::now();
    assert_eq!(got.len(), sent.len(), "bob got what alice sent");
    assert!(
        got.iter().zip(&sent).all(|(g, s)| g.payload == s.payload),
        "in order"
    );

    // The stream fails by ICE timeout after 4 s of silence; bob and the room are told.
    let d = expect_status(&mut alice, "m-alice", "FAILED").await;
    assert_eq!(d["info"], "Failed by ICE timeout", "{d}");
    let failed_after = cut.elapsed();
    let (mut stopped, mut gone) = (false, false);
    while !(stopped && gone) {
        let v = bob.recv().await;
        let d = &v["data"][0];
        match v["message"].as_str() {
            Some("notifyStreamStatusEvent") if d["mediaSessionId"] == "m-bob" => {
                assert_eq!(d["status"], "STOPPED", "bob: {v}");
                stopped = true;
            }
            Some("OnDataEvent") => {
                let p = &d["payload"];
                if matches!(p["name"].as_str(), Some("FAILED" | "UNPUBLISHED")) {
                    assert_eq!(p["info"]["name"], STREAM, "bob: {v}");
                    gone = true;
                }
            }
            _ => {}
        }
    }
    // ~4 s after the last datagram the relay let through (a keepalive may have come
    // up to 2 s before the cut).
    eprintln!("failed {} ms after the cut", failed_after.as_millis());
    expect_nothing_left(&server, "after the publisher vanished").await;

    // The record: finished, listed with its duration, 16 video frames, not 17.
    let deadline = Instant::now() + Duration::from_secs(if emulated { 60 } else { 15 });
    let record = loop {
        let (_, _, listing) = http_get(addr, "/api/v1/records").await;
        let v: Value = serde_json::from_str(&listing).expect("records JSON");
        let done = v["records"].as_array().and_then(|r| {
            r.iter()
                .find(|r| r["stream"] == STREAM && !r["duration_ms"].is_null())
                .cloned()
        });
        if let Some(r) = done {
            break r;
        }
        assert!(Instant::now() < deadline, "no finished record: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let file = records.join(record["name"].as_str().expect("record name"));
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_packets",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .expect("ffprobe is installed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let stream = &v["streams"][0];
    assert_eq!(
        stream["codec_name"],
        "h264",
        "{v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stream["nb_read_packets"], "16",
        "every whole frame recorded, the half one not: {v}"
    );

    bob_pc.close().await;
    alice_pc.close().await;
    drop((alice, bob));
    stop(server).await;
    let _ = std::fs::remove_dir_all(&records);
}
