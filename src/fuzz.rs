//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`, `make fuzz`): one function
//! per parser that sees outside bytes, taking the fuzzer's bytes and asserting what it
//! can (a failed assertion is a finding, like a panic). The same functions replay the
//! committed corpora and past findings in the normal test suite (`tests/fuzz_corpus.rs`),
//! so `make test` runs every target over its corpus without a fuzzing build.
//! docs/reliability.md has the targets, their invariants and their figures.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;

/// A target's body: the fuzzer's bytes in, a panic for a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("room_api_frame", room_api_frame),
    ("sdp_offer", sdp_offer),
    ("stun_demux", stun_demux),
    ("h264", h264),
    ("config", config),
    ("jwt", jwt),
    ("rtmp_chunks", rtmp_chunks),
    ("flv_tags", flv_tags),
    ("room_core", room_core),
    ("rtmp_urls", rtmp_urls),
    ("admin_api_body", admin_api_body),
    ("rtp_depacketizers", rtp_depacketizers),
];

/// A Room API text frame (`signalling::wire`): every frame becomes one command, and a
/// refused one carries a reply that renders as a JSON object.
pub fn room_api_frame(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let crate::rooms::Command::Rejected(reply) =
        crate::signalling::wire::parse_client_frame(&text)
    {
        let rendered = crate::signalling::wire::render_server_message(&reply, 1);
        let value: serde_json::Value =
            serde_json::from_str(&rendered).expect("a rendered reply is JSON");
        assert!(value.is_object(), "{rendered}");
    }
}

/// An SDP offer (`sfu::codecs`): read, a codec chosen for publishing and for playing
/// what was chosen, and the media engine built from the choice, whatever the offer.
pub fn sdp_offer(data: &[u8]) {
    use crate::sfu::codecs;
    let sdp = String::from_utf8_lossy(data);
    let Ok(offer) = codecs::parse_offer(&sdp) else {
        return;
    };
    for prefer_vp8 in [false, true] {
        if let Ok(chosen) = codecs::choose_publish(&offer, prefer_vp8) {
            let _ = codecs::media_engine(&chosen);
            if let Ok(play) = codecs::choose_play(&offer, &chosen) {
                let _ = codecs::media_engine(&play);
            }
            let _ = codecs::fill_missing(&offer, &chosen);
        }
    }
}

/// Datagrams at the media port (`sfu::demux`): two peers are known; whatever arrives,
/// from whichever address, a datagram routed to a peer is a STUN request that verifies
/// with that peer's password, or comes from an address such a request taught. Input:
/// datagrams, each a length byte, an address byte and the bytes.
pub fn stun_demux(data: &[u8]) {
    use crate::sfu::demux::{self, Routes};
    const PEERS: [(&str, &str); 2] = [("abcd", "pwd-of-abcd-0123456789"), ("wxyz", "x")];
    let mut routes: Routes<usize, SocketAddr> = Routes::new();
    for (key, (ufrag, pwd)) in PEERS.iter().enumerate() {
        routes.add_peer((*ufrag).to_owned(), pwd, key);
    }
    let mut taught: Vec<(SocketAddr, usize)> = Vec::new();
    let mut rest = data;
    while let [len, addr, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        rest = next;
        let from = SocketAddr::from(([127, 0, 0, 1], 40_000 + u16::from(*addr % 8)));
        let _ = demux::looks_like_stun(datagram);
        if let Some(username) = demux::stun_username(datagram) {
            let _ = demux::local_ufrag(username);
        }
        if let Some(key) = routes.route(from, datagram) {
            let (ufrag, pwd) = PEERS[key];
            let verified = demux::verified_request(datagram, ufrag, &demux::integrity_key(pwd));
            assert!(
                verified || taught.contains(&(from, key)),
                "a datagram from {from} went to peer {key} without its password"
            );
            if verified {
                taught.push((from, key));
            }
        }
    }
}

/// H.264 (`device::h264`, `rtmp::egress`): an access unit (Annex-B) is read, its SPS
/// profile taken, packetized for RTP at a small MTU (FU-A, STAP-A) and the packets
/// depacketized again: what comes back is one access unit at most, made of NAL units
/// the packetizer was given.
pub fn h264(data: &[u8]) {
    use crate::device::h264::{nal_type, nal_units, summarize, Packetizer, ProfileLevel};
    let summary = summarize(data);
    let units: Vec<&[u8]> = nal_units(data).collect();
    for unit in &units {
        if nal_type(unit) == 7 {
            if let Some(p) = ProfileLevel::from_sps(unit) {
                let _ = (p.hex(), p.name(), p.browsers_decode());
            }
        }
    }
    let mut packetizer = Packetizer::new(96, 0x1234_5678, 100);
    let mut packets = Vec::new();
    packetizer.packetize(&Bytes::copy_from_slice(data), 90_000, &mut packets);
    let mut depacketizer = crate::rtmp::egress::H264Depacketizer::new();
    let mut out = Vec::new();
    for p in &packets {
        let _ = depacketizer.push(p, &mut out);
    }
    assert!(out.len() <= 1, "one access unit in, {} out", out.len());
    for au in &out {
        assert!(
            summary.idr || !au.key,
            "a key frame out of a unit without IDR"
        );
        for unit in nal_units(&au.data) {
            assert!(
                units.contains(&unit),
                "a NAL unit ({} bytes) that was not put in",
                unit.len()
            );
        }
    }
}

/// The configuration file (`config`): TOML text alone and over every board profile
/// parses or fails with an error, never a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    let _ = crate::config::Config::parse(&text, path);
    for board in [Some("imx8mp"), Some("rpi5")] {
        let _ = crate::config::Config::parse_with(&text, path, board);
    }
}

/// Tokens (`auth`): in token mode a token the fuzzer wrote is never granted (it cannot
/// sign with the secret), and a token minted here for the fuzzer's login and rooms is
/// granted exactly those, for that login only.
pub fn jwt(data: &[u8]) {
    use crate::auth::{mint, now_unix, Access, Authority, Claims, Rooms};
    use crate::config::{Auth, AuthMode};
    const SECRET: &str = "fuzzing-secret-0123456789";
    let auth = Auth {
        mode: AuthMode::Token,
        secret: SECRET.into(),
        ..Auth::default()
    };
    let authority = Authority::new(&auth).expect("a secret is a key");
    let text = String::from_utf8_lossy(data);
    let (login, token) = text.split_once('\n').unwrap_or(("alice", &text));
    assert!(
        !matches!(
            authority.check(Some(login), Some(token)),
            Access::Granted { .. } | Access::Open
        ),
        "a forged token was granted"
    );
    assert!(!authority.admin(Some(token)), "a forged token is admin");
    let _ = authority.subject(token);
    let _ = authority.reader(Some(token));
    let rooms: Vec<String> = token.split(',').take(4).map(str::to_owned).collect();
    let claims = Claims {
        sub: login.to_owned(),
        rooms: Rooms::List(rooms.clone()),
        publish: data.first().is_some_and(|b| b & 1 == 1),
        exp: now_unix() + 600,
        admin: false,
        moderator: false,
    };
    let minted = mint(&claims, SECRET, None).expect("HS256 signs");
    match authority.check(Some(login), Some(&minted)) {
        Access::Granted {
            rooms: r, publish, ..
        } => {
            assert_eq!(r, Rooms::List(rooms));
            assert_eq!(publish, claims.publish);
        }
        other => panic!("a minted token refused: {other:?}"),
    }
    let other = format!("{login}x");
    assert!(
        matches!(
            authority.check(Some(&other), Some(&minted)),
            Access::Refused(_)
        ),
        "a token granted to another login"
    );
}

/// RTMP chunk streams (`rtmp::chunk`): any bytes, fed whole and in pieces, are scanned
/// or refused with an error; a refused stream stays refused.
pub fn rtmp_chunks(data: &[u8]) {
    use crate::rtmp::chunk::ChunkScanner;
    let mut whole = ChunkScanner::new(64 * 1024);
    let whole_result = whole.scan(data);
    let mut pieces = ChunkScanner::new(64 * 1024);
    let mut piece_result = Ok(());
    for piece in data.chunks(7) {
        piece_result = pieces.scan(piece);
        if piece_result.is_err() {
            break;
        }
    }
    assert_eq!(
        whole_result.is_ok(),
        piece_result.is_ok(),
        "the same bytes whole and in pieces: {whole_result:?} / {piece_result:?}"
    );
}

/// FLV tag bodies (`rtmp::flv`): video and audio tags, AVC and AAC configurations and
/// AVCC NAL units read or refused; an AVC configuration made from SPS and PPS reads
/// back as them.
pub fn flv_tags(data: &[u8]) {
    use crate::rtmp::flv;
    let _ = flv::parse_video(data);
    let _ = flv::parse_audio(data);
    let _ = flv::parse_aac_config(data);
    if let Ok(config) = flv::parse_avc_config(data) {
        let _ = (config.sps().count(), config.pps().count());
    }
    for size in 1..=4 {
        let _ = flv::avcc_nal_units(data, size).count();
    }
    // Round trip: the input cut in two as SPS and PPS.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (sps, pps) = data.split_at(cut);
    if let Ok(bytes) = flv::avc_config_bytes(sps, pps) {
        let config = flv::parse_avc_config(&bytes).expect("our own configuration reads");
        assert_eq!(config.sps().collect::<Vec<_>>(), vec![sps]);
        assert_eq!(config.pps().collect::<Vec<_>>(), vec![pps]);
    }
}

/// The room core (`rooms::Core`) driven by arbitrary sequences of sessions connecting,
/// joining, publishing, playing, chatting, moderating, leaving and vanishing, with time
/// passing, through the wire layer's parser like the real edge: every output keeps the
/// protocol's invariants (`rooms::invariants`: STATE first, never about the receiver),
/// goes only to sessions that exist, and once everyone is gone and time has passed,
/// no session, room, member, stream or player is left. Input: two bytes per step.
pub fn room_core(data: &[u8]) {
    use crate::rooms::invariants::Checker;
    use crate::rooms::{Core, CoreConfig, Output, SessionId};
    use crate::signalling::wire::parse_client_frame;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    const LOGINS: [&str; 5] = ["alice", "bob", "carol", "Alice ", ""];
    const ROOMS: [&str; 3] = ["r1", "r2", "R1"];
    let mut core = Core::new(CoreConfig {
        max_participants: 3,
        max_rooms: 2,
        max_sessions: 4,
        ..CoreConfig::default()
    });
    let mut now = Instant::now();
    let mut next_id: SessionId = 1;
    // Sessions the core knows, with the login they sent.
    let mut alive: HashMap<SessionId, String> = HashMap::new();
    let mut order: Vec<SessionId> = Vec::new();
    let mut checker = Checker::default();
    let drain = |core: &mut Core, alive: &mut HashMap<SessionId, String>, checker: &mut Checker| {
        while let Some(out) = core.poll_output() {
            match &out {
                Output::Send { session, message } => {
                    assert!(
                        alive.contains_key(session),
                        "{message:?} to session {session}, which is gone"
                    );
                }
                Output::Close { session, .. } => {
                    alive.remove(session);
                }
                _ => {}
            }
            let login = match &out {
                Output::Send { session, .. } => alive.get(session).map(String::as_str),
                _ => None,
            };
            if let Err(e) = checker.check(&out, login) {
                panic!("{e}");
            }
        }
    };
    let frame = |message: &str, arg: serde_json::Value| {
        serde_json::json!({ "message": message, "data": [arg] }).to_string()
    };
    let mut i = 0;
    while let [op, arg, ..] = data[i..] {
        let arg = usize::from(arg);
        i += 2;
        order.retain(|s| alive.contains_key(s));
        let session = (!order.is_empty()).then(|| order[arg % order.len()]);
        let room = ROOMS[arg % ROOMS.len()];
        let login = session
            .and_then(|s| alive.get(&s))
            .cloned()
            .unwrap_or_default();
        let text = match op % 14 {
            0 => {
                let id = next_id;
                next_id += 1;
                core.connect(now, id);
                let login = LOGINS[arg % LOGINS.len()];
                alive.insert(id, login.to_owned());
                order.push(id);
                let connect = frame(
                    "connection",
                    serde_json::json!({ "appKey": "roomApp", "login": login, "custom": { "login": login } }),
                );
                core.command(now, id, parse_client_frame(&connect));
                drain(&mut core, &mut alive, &mut checker);
                continue;
            }
            1 => frame(
                "joinRoom",
                serde_json::json!({ "name": room, "operationId": arg }),
            ),
            2 => frame(
                "leaveRoom",
                serde_json::json!({ "name": room, "operationId": arg }),
            ),
            3 => frame(
                "publishStream",
                serde_json::json!({ "mediaSessionId": format!("p{arg}"), "name": format!("{room}-{login}"),
                    "published": true, "hasVideo": true, "hasAudio": arg % 2 == 0, "sdp": "v=0\r\n",
                    "custom": { "name": room } }),
            ),
            4 => frame(
                "playStream",
                serde_json::json!({ "mediaSessionId": format!("v{arg}"),
                    "name": format!("{room}-{}", LOGINS[arg % LOGINS.len()]), "sdp": "v=0\r\n",
                    "custom": { "name": room } }),
            ),
            5 => frame(
                "unPublishStream",
                serde_json::json!({ "mediaSessionId": format!("p{arg}") }),
            ),
            6 => frame(
                "stopStream",
                serde_json::json!({ "mediaSessionId": format!("v{arg}") }),
            ),
            7 => frame(
                "sendMessage",
                serde_json::json!({ "roomName": room, "to": if arg % 2 == 0 { "" } else { LOGINS[arg % LOGINS.len()] },
                    "body": "hi", "operationId": arg }),
            ),
            8 => frame(
                "sendData",
                serde_json::json!({ "operationId": arg, "name": if arg % 2 == 0 { "kick" } else { "mute" },
                    "payload": { "roomName": room, "login": LOGINS[arg % LOGINS.len()], "audio": true } }),
            ),
            9 => {
                if let Some(s) = session {
                    core.disconnect(now, s);
                    alive.remove(&s);
                }
                drain(&mut core, &mut alive, &mut checker);
                continue;
            }
            10 => {
                now += Duration::from_millis(arg as u64 * 100);
                core.handle_timeout(now);
                drain(&mut core, &mut alive, &mut checker);
                continue;
            }
            11 => r#"{"message":"pong","data":[null]}"#.to_owned(),
            12 => frame(
                "availableStream",
                serde_json::json!({ "name": format!("{room}-{login}"), "mediaSessionId": "a" }),
            ),
            // The next `arg` bytes as a frame of their own.
            _ => {
                let n = arg.min(data.len() - i);
                let text = String::from_utf8_lossy(&data[i..i + n]).into_owned();
                i += n;
                text
            }
        };
        if let Some(s) = session {
            core.command(now, s, parse_client_frame(&text));
        }
        drain(&mut core, &mut alive, &mut checker);
    }
    // Everyone goes; rooms whose last member vanished last until their idle timeout.
    for s in order.iter().filter(|s| alive.contains_key(s)) {
        core.disconnect(now, *s);
    }
    alive.clear();
    drain(&mut core, &mut alive, &mut checker);
    for _ in 0..100 {
        let Some(at) = core.poll_timeout() else { break };
        now = now.max(at);
        core.handle_timeout(now);
        drain(&mut core, &mut alive, &mut checker);
    }
    let stats = core.stats();
    assert_eq!(
        (
            stats.sessions,
            stats.rooms,
            stats.participants,
            stats.streams,
            stats.players
        ),
        (0, 0, 0, 0, 0),
        "left after everyone went: {stats:?}"
    );
}

/// RTMP URLs: what a publisher or player asks for (`rtmp::url`: the app and the stream
/// key, here the input's two lines) and a push target (`rtmp::client::Target`, from the
/// configuration or the admin API: the whole input). An accepted request names a room
/// and a login or stream without '/', control characters or over-long parts; an
/// accepted target has a host, an app and a key, and its printable form never holds
/// the key.
pub fn rtmp_urls(data: &[u8]) {
    use crate::rtmp::client::Target;
    use crate::rtmp::url::{parse, MAX_PART};
    let text = String::from_utf8_lossy(data);
    let (app, key) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(p) = parse(app, key) {
        for part in [&p.room, &p.name] {
            assert!(!part.is_empty(), "{p:?}");
            assert!(part.len() <= MAX_PART, "{p:?}");
            assert!(!part.contains('/'), "{p:?}");
            assert!(!part.chars().any(char::is_control), "{p:?}");
        }
    }
    if let Ok(t) = Target::parse(&text) {
        assert!(!t.host().is_empty() && !t.app().is_empty() && !t.key().is_empty());
        let shown = format!("{t} {t:?} {}", t.redacted());
        assert!(!shown.contains(t.key()), "the key in {shown:?}");
        assert!(
            !t.redact(&text).contains(t.key()),
            "the key left in the redacted URL"
        );
    }
}

/// The admin API's JSON bodies (`server::api`: mute, push, device; the first byte picks
/// one, the rest is the body): each is decoded and checked like the handler does, a push
/// target's URL parsed like the push does; a refusal renders as the JSON error body the
/// API answers with, with its code and a message.
pub fn admin_api_body(data: &[u8]) {
    use crate::server::api::{decode_body, error_body, DeviceRequest, MuteRequest, PushRequest};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let refused = match which % 3 {
        0 => decode_body::<MuteRequest>(body)
            .and_then(MuteRequest::check)
            .err(),
        1 => match decode_body::<PushRequest>(body).and_then(PushRequest::check) {
            Ok(p) => {
                let _ = crate::rtmp::client::Target::parse(&p.url);
                None
            }
            Err(e) => Some(e),
        },
        _ => decode_body::<DeviceRequest>(body)
            .and_then(DeviceRequest::check)
            .err(),
    };
    if let Some(e) = refused {
        assert_eq!(e.status, 400, "{e:?}");
        let rendered = error_body(&e);
        let v: serde_json::Value = serde_json::from_str(&rendered).expect("an error body is JSON");
        assert_eq!(v["code"], e.code, "{rendered}");
        assert!(
            v["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{rendered}"
        );
    }
}

/// What a publisher's RTP becomes in the recorder and the RTMP egress
/// (`rtmp::egress::H264Depacketizer`, `record::recorder::Vp8Depacketizer`): any packet
/// sequence — reordered, lost, duplicated, broken FU-A/STAP-A or VP8 descriptors —
/// gives whole frames only: H.264 access units of non-empty NAL units, a key frame
/// exactly when one holds an IDR, and one first, and after every loss, before anything
/// else; VP8 frames non-empty, a key frame first, key exactly when the frame says so.
/// Input: packets, each a flags byte (marker, sequence step), a timestamp step and a
/// length byte, then the payload.
pub fn rtp_depacketizers(data: &[u8]) {
    use crate::device::h264::{nal_type, nal_units};
    use crate::record::recorder::Vp8Depacketizer;
    use crate::rtmp::egress::{H264Depacketizer, Pushed};
    let mut packets = Vec::new();
    let (mut seq, mut ts) = (1000u16, 90_000u32);
    let mut rest = data;
    while let [flags, ts_step, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(n);
        // Sequence steps -2..=5: duplicates, reordering, losses.
        seq = seq.wrapping_add_signed(i16::from((flags >> 1) & 7) - 2);
        ts = ts.wrapping_add(u32::from(*ts_step) * 100);
        packets.push(crate::device::h264::RtpPacket {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: flags & 1 == 1,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0x1234,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        });
        rest = next;
    }

    let mut h264 = H264Depacketizer::new();
    let mut out = Vec::new();
    let mut need_key = true;
    for p in &packets {
        out.clear();
        let pushed = h264.push(p, &mut out);
        for au in &out {
            let units: Vec<&[u8]> = nal_units(&au.data).collect();
            assert!(!units.is_empty(), "an empty access unit");
            assert!(units.iter().all(|u| !u.is_empty()), "an empty NAL unit");
            let idr = units.iter().any(|u| nal_type(u) == 5);
            assert_eq!(au.key, idr, "key flag vs IDR in {units:?}");
            assert!(
                !need_key || au.key,
                "a delta frame after a loss or at the start"
            );
            need_key = false;
        }
        // What this packet completed may precede the loss it revealed.
        if pushed == Pushed::Lost {
            need_key = true;
        }
    }

    let mut vp8 = Vp8Depacketizer::new();
    let mut first = true;
    for p in &packets {
        vp8.push(p, |frame, _ts, key| {
            assert!(!frame.is_empty(), "an empty VP8 frame");
            assert_eq!(key, frame[0] & 1 == 0, "the key flag vs the frame's");
            assert!(!first || key, "the first VP8 frame is not a key frame");
            first = false;
        });
    }
}
