//! ICE-TCP (RFC 6544, RFC 4571 framing) end to end: `webrtc` 0.21.1 clients with no
//! UDP socket at all (`Transport::TcpOnly`) publish and play through the server's
//! passive TCP candidate, and junk on the TCP port (not STUN, oversize frames, a
//! slow trickle, a pile of idle connections) is closed and counted while the peers
//! keep flowing. The server runs in process on 127.0.0.1; every wait is bounded.

mod common;
#[path = "common/webrtc_client.rs"]
mod webrtc_client;

use std::net::SocketAddr;
use std::time::Duration;

use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;
use webrtc_client::*;

use huddle::server::Server;

const ROOM: &str = "r";
const STREAM: &str = "r-alice-tcp";
const AUDIO: RtpCodecKind = RtpCodecKind::Audio;
const VIDEO: RtpCodecKind = RtpCodecKind::Video;
const AUDIO_SSRC: u32 = 0x1111_1111;
const VIDEO_SSRC: u32 = 0x2222_2222;

async fn stop(server: Server) {
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("server shutdown within 8 s");
}

/// The `(priority, address, port)` of the answer's host candidates of `transport`
/// ("udp" or "tcp"; TCP ones must be passive).
fn candidates(answer: &str, transport: &str) -> Vec<(u32, String, u16)> {
    answer
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split(' ').collect();
            if f.len() < 8 || !f[2].eq_ignore_ascii_case(transport) || f[6..8] != ["typ", "host"] {
                return None;
            }
            if transport == "tcp" {
                assert_eq!(f.get(8..10), Some(&["tcptype", "passive"][..]), "{c}");
            }
            Some((f[3].parse().ok()?, f[4].to_owned(), f[5].parse().ok()?))
        })
        .collect()
}

/// Publishes (`publish`) or plays STREAM over `ws` with the TCP-only `pc`: the answer is
/// applied and its passive TCP candidate handed over, then PUBLISHING/PLAYING must
/// come and the peer connect. Returns the answer.
async fn start_over_tcp(ws: &mut Client, pc: &mut RtcClient, publish: bool, msid: &str) -> String {
    start_over_tcp_via(ws, pc, publish, msid, None).await
}

/// `start_over_tcp`, with the answer's TCP candidate port changed to `via` (a relay).
async fn start_over_tcp_via(
    ws: &mut Client,
    pc: &mut RtcClient,
    publish: bool,
    msid: &str,
    via: Option<u16>,
) -> String {
    let offer = pc.create_offer().await;
    ws.send_json(stream_request(
        publish,
        msid,
        STREAM,
        ROOM,
        &offer,
        (true, true),
    ))
    .await;
    let status = if publish { "PUBLISHING" } else { "PLAYING" };
    loop {
        let v = ws.recv().await;
        match v["message"].as_str() {
            Some("setRemoteSDP") => {
                let mut sdp = v["data"][1].as_str().expect("answer text").to_owned();
                if let Some(port) = via {
                    let (_, _, real) = candidates(&sdp, "tcp")[0].clone();
                    sdp = sdp.replace(
                        &format!(" {real} typ host tcptype passive"),
                        &format!(" {port} typ host tcptype passive"),
                    );
                }
                pc.apply_answer(&sdp).await;
                assert_eq!(
                    pc.connect_tcp().await,
                    1,
                    "one passive TCP candidate:\n{sdp}"
                );
            }
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PENDING" => {}
            Some("notifyStreamStatusEvent") => {
                assert_eq!(v["data"][0]["status"], status, "{v}");
                break;
            }
            _ => panic!("unexpected frame while starting {STREAM}: {v}"),
        }
    }
    pc.wait_connected(Duration::from_secs(10)).await;
    pc.answer.clone().expect("answer applied")
}

/// Opus packets and H.264 (a key frame: STAP-A SPS+PPS, an IDR; then P frames), the
/// `i`-th of each, 20 ms of audio and a video frame per call.
fn packets(i: u32) -> [(RtpCodecKind, Packet); 2] {
    let seq = i as u16;
    let audio = rtp_packet(
        111,
        AUDIO_SSRC,
        seq,
        i * 960,
        false,
        vec![0xfc, i as u8, 1, 2, 3],
    );
    let video = if i.is_multiple_of(50) {
        let mut stap = stap_a_sps_pps();
        stap.extend([0x00, 0x05, 0x65, 0x88, 0x84, 0x00, 0x33]);
        stap
    } else {
        vec![0x41, 0x9a, i as u8, 0x00, 0x10]
    };
    let video = rtp_packet(125, VIDEO_SSRC, seq, i * 1800, true, video);
    [(AUDIO, audio), (VIDEO, video)]
}

/// A room with alice publishing and bob playing, both over ICE-TCP only.
struct Call {
    alice_ws: Client,
    bob_ws: Client,
    alice: RtcClient,
    bob: RtcClient,
    /// The answers' TCP port.
    tcp_port: u16,
}

async fn tcp_call(addr: SocketAddr) -> Call {
    let mut alice_ws = Client::connect(addr, "alice").await;
    alice_ws.join(ROOM).await;
    let mut alice = RtcClient::publisher_on(
        "alice",
        &[
            (AUDIO, opus(111), AUDIO_SSRC),
            (VIDEO, h264(125), VIDEO_SSRC),
        ],
        Transport::TcpOnly,
    )
    .await;
    let answer = start_over_tcp(&mut alice_ws, &mut alice, true, "m-pub").await;
    let tcp = candidates(&answer, "tcp");
    let udp = candidates(&answer, "udp");
    assert!(!tcp.is_empty() && !udp.is_empty(), "{answer}");
    let (tcp_priority, tcp_ip, tcp_port) = tcp[0].clone();
    assert_eq!(tcp_ip, "127.0.0.1");
    assert!(tcp_port != 0 && tcp_port != 9, "{answer}");
    assert!(
        tcp_priority < udp[0].0,
        "a browser that can use UDP prefers it: {answer}"
    );
    let mut bob_ws = Client::connect(addr, "bob").await;
    bob_ws.join(ROOM).await;
    alice_ws.expect_event_in(ROOM, "JOINED").await;
    let mut bob = RtcClient::player_on(
        "bob",
        &[(AUDIO, opus(111)), (VIDEO, h264(125))],
        Transport::TcpOnly,
    )
    .await;
    let answer = start_over_tcp(&mut bob_ws, &mut bob, false, "m-play").await;
    assert_eq!(candidates(&answer, "tcp")[0].2, tcp_port, "one TCP port");
    Call {
        alice_ws,
        bob_ws,
        alice,
        bob,
        tcp_port,
    }
}

/// Sends `n` rounds of audio and video, 20 ms apart, from round `from` on.
async fn send(pc: &RtcClient, from: u32, n: u32) {
    for i in from..from + n {
        for (kind, p) in packets(i) {
            pc.write_rtp(kind, p).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `name` (exact, with its labels) in `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_peers_publish_and_play_over_ice_tcp() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut call = tcp_call(addr).await;
    // Without a UDP socket on either client, this is TCP: the server's port number is
    // the UDP one's unless the OS had it taken on TCP (udp_port = 0 in tests).
    eprintln!("UDP {} TCP {}", server.media_port(), call.tcp_port);
    assert_eq!(metric(addr, "huddle_ice_tcp_connections_open").await, 2.0);
    assert_eq!(metric(addr, "huddle_ice_tcp_connections_total").await, 2.0);

    call.bob.drain_media();
    send(&call.alice, 0, 100).await;
    let (got, _) = call
        .bob
        .collect_rtp(&[AUDIO, VIDEO], 90, Duration::from_secs(5))
        .await;
    let audio = &got[0].1;
    let video = &got[1].1;
    assert!(audio.len() >= 90, "audio over TCP: {} of 100", audio.len());
    assert!(
        video.len() >= 45,
        "video from the key frame on: {} of 50",
        video.len()
    );
    // Video starts at a key frame (the STAP-A with the SPS) and keeps its payload.
    assert_eq!(video[0].payload[0] & 0x1f, 24, "STAP-A first");
    assert_eq!(&video[1].payload[..2], &[0x41, 0x9a]);
    // Sequence numbers continuous, as forwarded.
    for w in audio.windows(2) {
        assert_eq!(
            w[1].header.sequence_number,
            w[0].header.sequence_number.wrapping_add(1)
        );
    }
    assert_eq!(
        metric(addr, "huddle_ice_tcp_closed_total{reason=\"invalid\"}").await,
        0.0
    );
    drop(call.alice_ws);
    drop(call.bob_ws);
    stop(server).await;
}

/// Whether the server closes `s` within `limit` (EOF or reset; it never writes to a
/// connection that did not verify).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A STUN binding request naming `user`, without MESSAGE-INTEGRITY.
fn unsigned_binding_request(user: &str) -> Vec<u8> {
    let u = user.as_bytes();
    let mut attrs = vec![0x00, 0x06];
    attrs.extend((u.len() as u16).to_be_bytes());
    attrs.extend(u);
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut m = vec![0x00, 0x01];
    m.extend((attrs.len() as u16).to_be_bytes());
    m.extend([0x21, 0x12, 0xa4, 0x42]);
    m.extend([7u8; 12]);
    m.extend(attrs);
    m
}

fn framed(p: &[u8]) -> Vec<u8> {
    let mut f = (p.len() as u16).to_be_bytes().to_vec();
    f.extend(p);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_tcp_port_is_closed_and_counted_while_peers_flow() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut call = tcp_call(addr).await;
    let tcp: SocketAddr = ([127, 0, 0, 1], call.tcp_port).into();
    let ufrag = call
        .bob
        .answer
        .as_deref()
        .and_then(|a| a.split("\r\n").find_map(|l| l.strip_prefix("a=ice-ufrag:")))
        .expect("the answer's ufrag")
        .to_owned();

    // Media keeps flowing in the background the whole time.
    let sender = {
        let alice = call.alice;
        tokio::spawn(async move {
            send(&alice, 0, 450).await;
            alice
        })
    };

    // Not STUN, an HTTP request (its first two bytes read as a 18245-byte frame), a
    // frame over the size limit, a STUN request for a known ufrag that does not
    // verify: each is closed at once.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("DTLS first", framed(&[0x16, 0xfe, 0xfd, 0, 0, 0, 0])),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("oversize frame", {
            let mut f = vec![0xff, 0xff];
            f.extend([0u8; 600]);
            f
        }),
        (
            "unsigned STUN for a known ufrag",
            framed(&unsigned_binding_request(&format!("{ufrag}:evil"))),
        ),
    ];
    for (what, bytes) in &cases {
        let mut s = TcpStream::connect(tcp).await.expect("connect");
        let _ = s.write_all(bytes).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "{what}: closed at once"
        );
    }
    assert_eq!(
        metric(addr, "huddle_ice_tcp_closed_total{reason=\"invalid\"}").await,
        cases.len() as f64
    );

    // A slow trickle (one byte of a frame header, then nothing whole) and a pile of
    // idle connections: over the per-address cap of unverified ones (8) the rest are
    // refused at once; the admitted ones are closed when the first frame is overdue.
    let started = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(tcp).await.expect("connect");
    slow.write_all(&[0x00]).await.expect("one byte");
    let trickle = tokio::spawn(async move {
        // Keeps sending a byte now and then: never a whole verified frame.
        for b in [0x40u8, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00] {
            tokio::time::sleep(Duration::from_millis(700)).await;
            if slow.write_all(&[b]).await.is_err() {
                break;
            }
        }
        closed_within(&mut slow, Duration::from_secs(8)).await
    });
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(tcp).await.expect("connect"));
    }
    // The refusals are done well within a second (slow CPUs included), the admitted ones
    // are closed only at 5 s: look at each once after a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut refused = 0;
    let mut held = Vec::new();
    for mut s in idle {
        if closed_within(&mut s, Duration::from_millis(50)).await {
            refused += 1;
        } else {
            held.push(s);
        }
    }
    assert_eq!(
        held.len(),
        7,
        "8 unverified per address: the trickle and 7 idle"
    );
    assert_eq!(refused, 13);
    assert_eq!(
        metric(addr, "huddle_ice_tcp_closed_total{reason=\"refused\"}").await,
        13.0
    );
    for mut s in held {
        assert!(closed_within(&mut s, Duration::from_secs(7)).await);
    }
    assert!(
        trickle.await.expect("trickle task"),
        "the trickle is closed"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "closed when the first frame was overdue (5 s), after {took:?}"
    );
    assert_eq!(
        metric(addr, "huddle_ice_tcp_closed_total{reason=\"timeout\"}").await,
        8.0
    );

    // Through all of it the player kept receiving.
    let alice = sender.await.expect("sender");
    let (got, _) = call
        .bob
        .collect_rtp(&[AUDIO], 400, Duration::from_secs(3))
        .await;
    assert!(
        got[0].1.len() >= 400,
        "audio over TCP while the port was attacked: {} of 450",
        got[0].1.len()
    );
    assert_eq!(metric(addr, "huddle_ice_tcp_connections_open").await, 2.0);
    drop(alice);
    drop(call.alice_ws);
    drop(call.bob_ws);
    stop(server).await;
}

/// IPv6: the server advertises ::1 only (its sockets listen on [::] then); a publisher
/// over UDP on ::1 and a player over ICE-TCP on ::1 meet, and media flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_publisher_over_udp_and_player_over_tcp() {
    let server = start_server(|c| c.media.advertise_ips = vec!["::1".parse().unwrap()]).await;
    let addr = server.local_addr();
    let mut alice_ws = Client::connect(addr, "alice").await;
    alice_ws.join(ROOM).await;
    let mut alice = RtcClient::publisher_on(
        "alice",
        &[
            (AUDIO, opus(111), AUDIO_SSRC),
            (VIDEO, h264(125), VIDEO_SSRC),
        ],
        Transport::Udp6,
    )
    .await;
    let offer = alice.create_offer().await;
    alice_ws
        .send_json(stream_request(
            true,
            "m-pub",
            STREAM,
            ROOM,
            &offer,
            (true, true),
        ))
        .await;
    loop {
        let v = alice_ws.recv().await;
        match v["message"].as_str() {
            Some("setRemoteSDP") => {
                let sdp = v["data"][1].as_str().expect("answer text");
                let udp = candidates(sdp, "udp");
                let tcp = candidates(sdp, "tcp");
                assert!(!udp.is_empty() && !tcp.is_empty(), "{sdp}");
                assert!(
                    udp.iter().chain(&tcp).all(|c| c.1 == "::1"),
                    "only ::1 advertised: {sdp}"
                );
                alice.apply_answer(sdp).await;
            }
            Some("notifyStreamStatusEvent") if v["data"][0]["status"] == "PENDING" => {}
            Some("notifyStreamStatusEvent") => {
                assert_eq!(v["data"][0]["status"], "PUBLISHING", "{v}");
                break;
            }
            _ => panic!("unexpected frame while publishing: {v}"),
        }
    }
    alice.wait_connected(Duration::from_secs(10)).await;
    let mut bob_ws = Client::connect(addr, "bob").await;
    bob_ws.join(ROOM).await;
    alice_ws.expect_event_in(ROOM, "JOINED").await;
    let mut bob = RtcClient::player_on(
        "bob",
        &[(AUDIO, opus(111)), (VIDEO, h264(125))],
        Transport::TcpOnly6,
    )
    .await;
    start_over_tcp(&mut bob_ws, &mut bob, false, "m-play").await;
    assert_eq!(metric(addr, "huddle_ice_tcp_connections_open").await, 1.0);
    bob.drain_media();
    send(&alice, 0, 60).await;
    let (got, _) = bob.collect_rtp(&[AUDIO], 55, Duration::from_secs(5)).await;
    assert!(
        got[0].1.len() >= 55,
        "audio over IPv6: {} of 60",
        got[0].1.len()
    );
    drop(alice_ws);
    drop(bob_ws);
    stop(server).await;
}

/// A TCP relay on 127.0.0.1 for one connection toward `to` that stops reading from `to`
/// once `stall` is set (a browser whose network went away without a FIN): the server's
/// writes then back up. Its socket toward `to` has a small receive buffer, so that
/// happens soon.
async fn stalling_relay(
    to: SocketAddr,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay bind");
    let port = listener.local_addr().expect("relay address").port();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let Ok(server) = socket.connect(to).await else {
            return;
        };
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        });
        let mut buf = vec![0u8; 4096];
        loop {
            if stall.load(std::sync::atomic::Ordering::Relaxed) {
                // Holds the connection open, reading nothing.
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    port
}

/// A player whose TCP path stops taking data: its queue toward it fills (frames dropped
/// and counted), the write times out and the connection is closed (counted); another
/// player over TCP keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_is_cut_off_by_the_write_timeout() {
    let server = start_server(|_| {}).await;
    let addr = server.local_addr();
    let mut call = tcp_call(addr).await;
    let tcp: SocketAddr = ([127, 0, 0, 1], call.tcp_port).into();
    let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = stalling_relay(tcp, stall.clone()).await;
    let mut carol_ws = Client::connect(addr, "carol").await;
    carol_ws.join(ROOM).await;
    call.alice_ws.expect_event_in(ROOM, "JOINED").await;
    call.bob_ws.expect_event_in(ROOM, "JOINED").await;
    let mut carol = RtcClient::player_on(
        "carol",
        &[(AUDIO, opus(111)), (VIDEO, h264(125))],
        Transport::TcpOnly,
    )
    .await;
    start_over_tcp_via(&mut carol_ws, &mut carol, false, "m-carol", Some(relay)).await;
    send(&call.alice, 0, 10).await;
    let (got, _) = carol.collect_rtp(&[AUDIO], 5, Duration::from_secs(5)).await;
    assert!(
        got[0].1.len() >= 5,
        "carol receives through the relay before it stalls"
    );

    // The relay stops reading; alice sends about 1 MB/s of video until the server gives
    // carol's connection up (bounded).
    stall.store(true, std::sync::atomic::Ordering::Relaxed);
    call.bob.drain_media();
    let started = tokio::time::Instant::now();
    let write_timeouts = "huddle_ice_tcp_closed_total{reason=\"write_timeout\"}";
    let mut i = 0u32;
    loop {
        for _ in 0..20 {
            let p = rtp_packet(
                125,
                VIDEO_SSRC,
                (1000 + i) as u16,
                i * 90,
                false,
                vec![0x41; 1100],
            );
            call.alice.write_rtp(VIDEO, p).await;
            i += 1;
        }
        let audio = rtp_packet(
            111,
            AUDIO_SSRC,
            (1000 + i) as u16,
            i * 960,
            false,
            vec![0xfc, 1, 2],
        );
        call.alice.write_rtp(AUDIO, audio).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i.is_multiple_of(500) && metric(addr, write_timeouts).await > 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "carol's stalled connection was not closed within 40 s"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "not before the 5 s write timeout: {took:?}"
    );
    assert_eq!(metric(addr, write_timeouts).await, 1.0);
    assert!(metric(addr, "huddle_ice_tcp_frames_dropped_total").await > 0.0);
    assert_eq!(metric(addr, "huddle_ice_tcp_connections_open").await, 2.0);
    // bob, on his own connection, kept receiving all along.
    let rtp = call
        .bob
        .drain_media()
        .iter()
        .filter(|m| matches!(m, Media::Rtp { .. }))
        .count();
    assert!(
        rtp > 1000,
        "bob received {rtp} packets while carol's path stalled"
    );
    drop(carol_ws);
    drop(call.alice_ws);
    drop(call.bob_ws);
    stop(server).await;
}
