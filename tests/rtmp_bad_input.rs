//! Bad RTMP input against the whole service (token mode, everything on 127.0.0.1):
//! broken handshakes, junk after the handshake, chunk-size abuse, huge and malformed
//! AMF, interleaved chunk streams, unsupported or malformed media, sequence headers
//! changing without end, media for unknown stream ids, publish before connect, two
//! publishes (or a play and a publish) on one connection, a silent publisher, a flood,
//! a play of a missing stream, logins already in the room, names too long, bad
//! percent-encoding and token refusals.
//! Each bad client is closed with the reason in the log (and, for refused requests, in
//! an RTMP `onStatus`); after each one nobody it brought into a room stays, a healthy
//! ffmpeg publish still reaches a room (a WebSocket member sees it PUBLISHED, then
//! UNPUBLISHED and LEFT), a WebRTC player still receives a browser's H.264 and Opus
//! through the SFU, and a chat pair still chats.

mod common;
#[path = "common/room_media.rs"]
mod room_media;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::net::SocketAddr;
use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::json;

use common::rtmp::{
    amf_data, bad_client, capture_logs, chunks, command, connect, events_until, ffmpeg,
    huge_command, interleaved_chunks, logged_all, play, publish, publishing, sent_text,
    set_chunk_size, video,
};
use common::*;
use huddle::auth::Rooms;
use huddle::rtmp::server::MAX_CONFIG_CHANGES;
use huddle::server::Server;
use rml_rtmp::messages::RtmpMessage;
use room_media::*;
use webrtc_client::*;

const SECRET: &str = "rtmp bad input test secret";
/// The room of the healthy ffmpeg publishes.
const STAGE: &str = "stage";
/// The room of the WebRTC pair.
const MEDIA_ROOM: &str = "media";
/// The room bad clients ask for.
const BAD_ROOM: &str = "bad";
const MAX_KBPS: u32 = 8000;
const HANDSHAKE_MS: u64 = 1000;
const IDLE_MS: u64 = 1500;

/// A token for `sub`: every room, publishing allowed.
fn token(sub: &str) -> String {
    common::token(SECRET, sub, Rooms::Any("*".into()), true)
}

/// A WebSocket session of `login` with its token.
async fn member(addr: SocketAddr, login: &str) -> Client {
    let mut c = Client::open(addr, login).await;
    let mut frame = connection_frame(Some(login));
    frame["data"][0]["custom"]["token"] = json!(token(login));
    c.send_json(frame).await;
    let data = c.expect_message("getUserData").await;
    assert_eq!(data["custom"]["login"], login, "{data}");
    c.sync().await;
    c
}

/// Everything healthy that must survive each bad case.
struct World {
    server: Server,
    rtmp: SocketAddr,
    chat: Healthy,
    /// A member of STAGE, who sees the healthy ffmpeg publishes.
    watcher: Client,
    /// The WebRTC pair: w-alice publishes (the camera sends), w-bob plays.
    w_alice: Client,
    w_bob: Client,
    publisher: RtcClient,
    player: RtcClient,
    camera: Camera,
    /// Room members while no bad client is connected.
    members: usize,
}

impl World {
    async fn start() -> World {
        capture_logs();
        let server = start_server(|c| {
            c.auth.mode = huddle::config::AuthMode::Token;
            c.auth.secret = SECRET.into();
            c.rtmp.handshake_timeout_ms = HANDSHAKE_MS;
            c.rtmp.idle_timeout_ms = IDLE_MS;
            c.rtmp.max_kbps = MAX_KBPS;
        })
        .await;
        let addr = server.local_addr();
        let rtmp = server.rtmp_addr().expect("[rtmp] is on in tests");
        let chat = Healthy::pair(member(addr, "h-alice").await, member(addr, "h-bob").await).await;
        let mut watcher = member(addr, "watcher").await;
        assert!(watcher.join(STAGE).await.is_empty());

        let mut w_alice = member(addr, "w-alice").await;
        w_alice.join(MEDIA_ROOM).await;
        let mut w_bob = member(addr, "w-bob").await;
        w_bob.join(MEDIA_ROOM).await;
        w_alice.expect_event_in(MEDIA_ROOM, "JOINED").await;
        let stream = format!("{MEDIA_ROOM}-w-alice");
        let mut publisher = RtcClient::publisher(
            "w-alice-pc",
            &[
                (RtpCodecKind::Audio, opus(111), 0x1111_1111),
                (RtpCodecKind::Video, h264(125), 0x2222_2222),
            ],
        )
        .await;
        let at = (MEDIA_ROOM, stream.as_str());
        start_stream(
            &mut w_alice,
            &mut publisher,
            true,
            ("m-pub", at.0, at.1),
            (true, true),
        )
        .await;
        w_bob.expect_event_in(MEDIA_ROOM, "PUBLISHED").await;
        let from = Position {
            video: (100, 0),
            audio: (100, 0),
        };
        let camera = Camera::start_for(&publisher, from, Duration::from_secs(120)).await;
        let codecs = [
            (RtpCodecKind::Audio, opus(111)),
            (RtpCodecKind::Video, h264(106)),
        ];
        let mut player = RtcClient::player("w-bob-pc", &codecs).await;
        play_in_room(&mut w_bob, &mut player, MEDIA_ROOM, &stream).await;
        let members = server.stats().participants;
        assert_eq!(members, 5, "h-alice, h-bob, watcher, w-alice, w-bob");
        World {
            server,
            rtmp,
            chat,
            watcher,
            w_alice,
            w_bob,
            publisher,
            player,
            camera,
            members,
        }
    }

    /// After a bad case: nobody it made stays in a room, a healthy ffmpeg publish is
    /// seen PUBLISHED (and leaves again), the WebRTC player receives, the pair chats.
    async fn check(&mut self, case: &str, visited_media_room: bool) {
        let members = self.members;
        let server = &self.server;
        wait_until(
            &format!("no room member left behind by {case}"),
            Duration::from_secs(3),
            || server.stats().participants == members,
        )
        .await;

        let url = format!(
            "rtmp://127.0.0.1:{}/{STAGE}/cam?token={}",
            self.rtmp.port(),
            token("cam")
        );
        let mut child = ffmpeg(&url, 2);
        let limit = Duration::from_secs(8);
        let published = events_until(&mut self.watcher, STAGE, "PUBLISHED", limit).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            published.last().map(|p| p["info"].clone()),
            Some(json!({"login": "cam", "name": format!("{STAGE}-cam")})),
            "after {case}: {published:?}"
        );
        let end = events_until(&mut self.watcher, STAGE, "LEFT", limit).await;
        let names: Vec<&str> = end.iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["UNPUBLISHED", "LEFT"], "after {case}: {end:?}");

        self.player.drain_media();
        let kinds = [RtpCodecKind::Video, RtpCodecKind::Audio];
        let (got, _) = self
            .player
            .collect_rtp(&kinds, 10, Duration::from_secs(3))
            .await;
        assert!(
            got.iter().all(|(_, packets)| packets.len() >= 10),
            "after {case}: the WebRTC player got video {} audio {}",
            got[0].1.len(),
            got[1].1.len()
        );

        self.chat.check(case).await;
        if visited_media_room {
            for c in [&mut self.w_alice, &mut self.w_bob] {
                let seen = events_until(c, MEDIA_ROOM, "LEFT", limit).await;
                let names: Vec<&str> = seen.iter().filter_map(|p| p["name"].as_str()).collect();
                assert_eq!(names, ["JOINED", "LEFT"], "{}: {seen:?}", c.name);
            }
        }
        for c in [&mut self.watcher, &mut self.w_alice, &mut self.w_bob] {
            c.sync().await;
        }
    }

    async fn stop(self) {
        self.camera.stop().await;
        self.player.close().await;
        self.publisher.close().await;
        tokio::time::timeout(Duration::from_secs(8), self.server.shutdown())
            .await
            .expect("server shutdown within 8 s");
    }
}

/// One bad case: whether it completes the handshake, what it sends, what the log line
/// of its close must say, and a text its RTMP `onStatus` must carry (if any).
struct Case {
    name: &'static str,
    handshake: bool,
    steps: Vec<Vec<u8>>,
    reason: String,
    status: Option<&'static str>,
    /// The bad client gets as far as joining MEDIA_ROOM (as an RTMP player): the
    /// WebRTC pair sees it join and leave.
    visits_media_room: bool,
}

fn case(name: &'static str, handshake: bool, steps: Vec<Vec<u8>>, reason: &str) -> Case {
    Case {
        name,
        handshake,
        steps,
        reason: reason.into(),
        status: None,
        visits_media_room: false,
    }
}

/// A command message whose AMF ends in the middle of a value (one 128-byte chunk).
fn truncated_amf() -> Vec<u8> {
    let mut payload = vec![2, 0, 12];
    payload.extend_from_slice(b"createStream");
    // A number marker with 3 of its 8 bytes.
    payload.extend_from_slice(&[0, 0x40, 0, 0]);
    let mut v = vec![0x03, 0, 0, 0, 0, 0, payload.len() as u8, 20, 0, 0, 0, 0];
    v.extend_from_slice(&payload);
    v
}

fn cases() -> Vec<Case> {
    let with_token = |login: &str| format!("{login}?token={}", token(login));
    let live_stream = |login: &str| format!("{MEDIA_ROOM}-w-alice?token={}", token(login));
    // 44.1 kHz mono and 48 kHz stereo AAC-LC sequence headers, 1000 times each.
    let aac_churn: Vec<u8> = (0..2000)
        .flat_map(|i| {
            let asc = if i % 2 == 0 {
                [0x12, 0x08]
            } else {
                [0x11, 0x90]
            };
            chunks(
                RtmpMessage::AudioData {
                    data: vec![0xaf, 0, asc[0], asc[1]].into(),
                },
                1,
            )
        })
        .collect();
    let flood: Vec<u8> = (0..40).flat_map(|_| amf_data(1, 60_000)).collect();
    vec![
        case(
            "an HTTP request instead of a handshake",
            false,
            vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
            "bad handshake",
        ),
        case(
            "a silent client without a handshake",
            false,
            vec![],
            &format!("no complete handshake within {HANDSHAKE_MS} ms"),
        ),
        case(
            "random bytes after the handshake",
            true,
            vec![vec![0xff; 64]],
            "RTMP chunks refused",
        ),
        case(
            "chunk size 0",
            true,
            vec![set_chunk_size(0)],
            "chunk size 0 refused",
        ),
        case(
            "chunk size 2^31",
            true,
            vec![set_chunk_size(1 << 31)],
            "chunk size 2147483648 refused",
        ),
        case(
            "a huge AMF command",
            true,
            vec![connect(BAD_ROOM), huge_command()],
            "exceeds the limit of 65536",
        ),
        case(
            "an AMF command without a name",
            true,
            vec![connect(BAD_ROOM), {
                let mut v = vec![0x03, 0, 0, 0, 0, 0, 2, 20, 0, 0, 0, 0];
                v.extend_from_slice(&[5, 0]);
                v
            }],
            "malformed RTMP: a command without a name",
        ),
        case(
            "an AMF command cut off in a value",
            true,
            vec![connect(BAD_ROOM), truncated_amf()],
            "malformed RTMP",
        ),
        case(
            "a huge AMF data message after the publish",
            true,
            publishing(BAD_ROOM, &with_token("hal"), vec![amf_data(1, 70_000)]),
            "AMF message of 70006 bytes refused",
        ),
        case(
            "interleaved chunk streams (rml_rtmp panics on them)",
            true,
            vec![interleaved_chunks()],
            "interleaved chunk streams are not supported",
        ),
        Case {
            status: Some("video codec On2 VP6"),
            ..case(
                "VP6 video after the publish",
                true,
                publishing(
                    BAD_ROOM,
                    &with_token("vic"),
                    vec![video(1, &[0x24, 0, 1, 2])],
                ),
                "media refused: video codec On2 VP6 (FLV codec id 4) is not supported",
            )
        },
        Case {
            status: Some("(hvc1)"),
            ..case(
                "Enhanced RTMP HEVC after the publish",
                true,
                publishing(
                    BAD_ROOM,
                    &with_token("eve"),
                    vec![video(1, &[0x90, b'h', b'v', b'c', b'1', 0])],
                ),
                "Enhanced RTMP video (hvc1) is not supported",
            )
        },
        Case {
            status: Some("configurationVersion"),
            ..case(
                "a malformed AVC sequence header",
                true,
                publishing(
                    BAD_ROOM,
                    &with_token("avc"),
                    vec![video(1, &[0x17, 0, 0, 0, 0, 2, 0x42, 0xc0, 0x1f, 0xff, 0xe1])],
                ),
                "media refused: bad AVCDecoderConfigurationRecord",
            )
        },
        Case {
            status: Some("NetStream.Publish.Rejected"),
            ..case(
                "an H.264 frame whose NAL unit runs past its end",
                true,
                publishing(
                    BAD_ROOM,
                    &with_token("nal"),
                    vec![
                        video(
                            1,
                            &[
                                0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0, 4, 0x67,
                                0x42, 0xc0, 0x1f, 1, 0, 2, 0x68, 0xce,
                            ],
                        ),
                        video(1, &[0x17, 1, 0, 0, 0, 0, 0, 0, 50, 0x65, 1, 2]),
                    ],
                ),
                "runs past the end of the access unit",
            )
        },
        case(
            "AAC sequence headers changing without end",
            true,
            publishing(BAD_ROOM, &with_token("zed"), vec![aac_churn]),
            &format!(
                "the audio configuration (sequence header) changed more than {MAX_CONFIG_CHANGES} times"
            ),
        ),
        case(
            "audio for a stream id nobody publishes",
            true,
            vec![
                connect(BAD_ROOM),
                command("createStream", 0, vec![]),
                chunks(
                    RtmpMessage::AudioData {
                        data: vec![0xaf, 1, 0].into(),
                    },
                    1,
                ),
            ],
            "audio for stream id 1, which is not published",
        ),
        case(
            "video for another stream id while publishing",
            true,
            publishing(
                BAD_ROOM,
                &with_token("dave"),
                vec![video(7, &[0x17, 0, 0, 0, 0])],
            ),
            "video for stream id 7, which is not published",
        ),
        case(
            "a publish that never sends anything",
            true,
            publishing(BAD_ROOM, &with_token("ivy"), vec![]),
            &format!("nothing received for {IDLE_MS} ms"),
        ),
        case(
            "publish without connect",
            true,
            vec![publish(&with_token("erin"))],
            "publish before connect",
        ),
        case(
            "two publishes on one connection",
            true,
            publishing(
                BAD_ROOM,
                &with_token("carol"),
                vec![publish(&with_token("carol2"))],
            ),
            "a second publish or play on one connection",
        ),
        case(
            "a second connect",
            true,
            vec![connect(BAD_ROOM), connect(BAD_ROOM)],
            "a second connect on one connection",
        ),
        case(
            "a flood after the publish",
            true,
            publishing(BAD_ROOM, &with_token("flo"), vec![flood]),
            &format!("flood: more than {MAX_KBPS} kbit/s"),
        ),
        Case {
            status: Some("NetStream.Play.StreamNotFound"),
            ..case(
                "a play of a missing stream",
                true,
                vec![
                    connect(BAD_ROOM),
                    command("createStream", 0, vec![]),
                    play(&format!("{BAD_ROOM}-nobody?token={}", token("viewer"))),
                ],
                "refused play: Stream not found",
            )
        },
        Case {
            visits_media_room: true,
            ..case(
                "junk from a player of a live stream",
                true,
                vec![
                    connect(MEDIA_ROOM),
                    command("createStream", 0, vec![]),
                    play(&live_stream("viewer")),
                    vec![0xff; 64],
                ],
                "RTMP chunks refused",
            )
        },
        Case {
            visits_media_room: true,
            ..case(
                "a publish on a playing connection",
                true,
                vec![
                    connect(MEDIA_ROOM),
                    command("createStream", 0, vec![]),
                    play(&live_stream("viewer")),
                    publish(&with_token("viewer")),
                ],
                "a second publish or play on one connection",
            )
        },
        Case {
            status: Some("NetStream.Play.Failed"),
            ..case(
                "a play without a token",
                true,
                vec![
                    connect(MEDIA_ROOM),
                    command("createStream", 0, vec![]),
                    play(&format!("{MEDIA_ROOM}-w-alice")),
                ],
                "refused play: Restricted access: a token is required",
            )
        },
        case(
            "a publish under a login already in the room",
            true,
            publishing(MEDIA_ROOM, &with_token("w-bob"), vec![]),
            "refused publish: Room already has user with such login",
        ),
        case(
            "a publish under the login of a WebRTC publisher",
            true,
            publishing(MEDIA_ROOM, &with_token("w-alice"), vec![]),
            "refused publish: Room already has user with such login",
        ),
        case(
            "a room name of 300 characters",
            true,
            publishing(&"r".repeat(300), &with_token("kim"), vec![]),
            "refused publish: Room name is too long",
        ),
        case(
            "a login of 300 characters",
            true,
            publishing(BAD_ROOM, &with_token(&"k".repeat(300)), vec![]),
            "refused publish: Login is too long",
        ),
        Case {
            status: Some("NetStream.Play.Failed"),
            ..case(
                "a play under a login already in the room",
                true,
                vec![
                    connect(MEDIA_ROOM),
                    command("createStream", 0, vec![]),
                    play(&live_stream("w-bob")),
                ],
                "refused play: Room already has user with such login",
            )
        },
        Case {
            status: Some("does not allow publishing"),
            ..case(
                "a publish with a token that does not allow publishing",
                true,
                publishing(
                    BAD_ROOM,
                    &format!(
                        "nora?token={}",
                        common::token(SECRET, "nora", Rooms::Any("*".into()), false)
                    ),
                    vec![],
                ),
                "refused publish: Restricted access: the token does not allow publishing",
            )
        },
        Case {
            status: Some("NetStream.Publish.Rejected"),
            ..case(
                "a publish with a token for another room",
                true,
                publishing(
                    BAD_ROOM,
                    &format!(
                        "olga?token={}",
                        common::token(SECRET, "olga", Rooms::List(vec![STAGE.into()]), true)
                    ),
                    vec![],
                ),
                "refused publish: Restricted access: the token does not allow room",
            )
        },
        Case {
            status: Some("NetStream.Publish.BadName"),
            ..case(
                "bad percent-encoding in the room",
                true,
                publishing("bad%zzroom", &with_token("gus"), vec![]),
                "refused publish: the room is not valid percent-encoding",
            )
        },
        Case {
            status: Some("NetStream.Publish.BadName"),
            ..case(
                "a login that is not UTF-8",
                true,
                publishing(BAD_ROOM, "%ff%fe", vec![]),
                "refused publish: the login or stream name is not UTF-8",
            )
        },
        Case {
            status: Some("a token is required"),
            ..case(
                "a publish without a token",
                true,
                publishing(BAD_ROOM, "mallory", vec![]),
                "refused publish: Restricted access: a token is required",
            )
        },
        Case {
            status: Some("Restricted access"),
            ..case(
                "a publish with a forged token",
                true,
                publishing(BAD_ROOM, "mallory?token=not.a.jwt", vec![]),
                "refused publish: Restricted access",
            )
        },
        Case {
            status: Some("issued for another login"),
            ..case(
                "a publish with another login's token",
                true,
                publishing(BAD_ROOM, &format!("mallory?token={}", token("cam")), vec![]),
                "refused publish: Restricted access: the token was issued for another login",
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_rtmp_client_is_closed_and_the_service_stays_healthy() {
    let mut world = World::start().await;
    world.check("the start", false).await;
    let rtmp = world.rtmp;
    for c in cases() {
        let run = bad_client(rtmp, c.handshake, c.steps, &c.reason);
        let (line, received) = tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .unwrap_or_else(|_| panic!("{}: not over within 15 s", c.name));
        assert!(line.starts_with("WARN"), "{}: {line}", c.name);
        if let Some(status) = c.status {
            assert!(
                sent_text(&received, status),
                "{}: no onStatus with {status:?}",
                c.name
            );
        }
        world.check(c.name, c.visits_media_room).await;
    }
    // Changing sequence headers were not a log line each.
    let configs = logged_all("publisher \"zed\" in room \"bad\": AAC object type").len();
    assert!(
        (1..=MAX_CONFIG_CHANGES as usize + 1).contains(&configs),
        "{configs} AAC configuration lines"
    );
    world.stop().await;
}
