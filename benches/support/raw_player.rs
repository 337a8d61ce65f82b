//! A player for load (`benches/load.rs`): ICE and DTLS through the `rtc` crate
//! (Sans-I/O, its own UDP socket on 127.0.0.1), then the media is taken off the socket
//! with `recvmmsg(2)` in batches and counted from the clear RTP header (SSRC and
//! sequence number: loss); one RTP packet in `sample` goes through the peer connection
//! (SRTP authenticated and decrypted, as a browser would) and its payload's send stamp
//! gives the latency. That costs a small fraction of a full WebRTC client, so this
//! machine can hold hundreds of players against one server.
//!
//! No interceptors: a player that decrypts a sample must not NACK or report the
//! packets it skipped (the SFU would retransmit or thin it). The SFU thus gets no
//! receiver reports from these players; its per-player work is the forwarding.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::{Ws, STEP};
use crate::webrtc_client::{h264, opus};

/// Datagrams per `recvmmsg` call.
const BATCH: usize = 32;
const DATAGRAM: usize = 1500;

/// What one player counted.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// RTP packets received, and expected from each SSRC's span of sequence numbers.
    pub received: u64,
    pub expected: u64,
    /// Latencies (µs) of the sampled packets whose payload carried a stamp.
    pub latencies_us: Vec<u32>,
    /// Sampled packets, and those the peer connection did not decrypt.
    pub samples: u64,
    pub sample_failures: u64,
    pub datagrams: u64,
    pub recv_calls: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.received += other.received;
        self.expected += other.expected;
        self.latencies_us.extend(other.latencies_us);
        self.samples += other.samples;
        self.sample_failures += other.sample_failures;
        self.datagrams += other.datagrams;
        self.recv_calls += other.recv_calls;
    }
}

/// One SSRC's packets: (received, first and highest extended sequence number).
#[derive(Debug, Clone, Copy)]
struct Span(u64, u64, u64);

impl Span {
    fn new(seq: u16) -> Span {
        // Room below the first one for packets that come late.
        let ext = 0x1_0000 + u64::from(seq);
        Span(1, ext, ext)
    }

    fn packet(&mut self, seq: u16) {
        let delta = seq.wrapping_sub(self.2 as u16) as i16;
        let ext = self.2.saturating_add_signed(i64::from(delta));
        self.0 += 1;
        self.1 = self.1.min(ext);
        self.2 = self.2.max(ext);
    }
}

pub struct RawPlayer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    /// The SFU's address (the answer's candidate), where packets go.
    remote: Option<SocketAddr>,
}

fn transport(local: SocketAddr, peer: SocketAddr) -> TransportContext {
    TransportContext {
        local_addr: local,
        peer_addr: peer,
        ecn: None,
        transport_protocol: TransportProtocol::UDP,
    }
}

impl RawPlayer {
    /// Joins `room` as `login`, plays `stream` and waits until ICE and DTLS are up;
    /// with the player comes its signalling session (to be kept alive). An error when
    /// its connection failed or did not come up in time (a saturated server).
    pub async fn connect(
        server: SocketAddr,
        login: &str,
        room: &str,
        stream: &str,
    ) -> Result<(RawPlayer, Ws), String> {
        let mut ws = Ws::connect(server, login).await;
        ws.join(room).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let local = socket.local_addr().expect("local address");
        let mut engine = MediaEngine::default();
        for (kind, codec) in [
            (RtpCodecKind::Audio, opus(111)),
            (RtpCodecKind::Video, h264(106)),
        ] {
            engine.register_codec(codec, kind).expect("codec");
        }
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .build(Instant::now())
            .expect("peer connection");
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .expect("transceiver");
        }
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("host candidate");
        let offer = pc.create_offer(None).expect("offer");
        pc.set_local_description(Instant::now(), offer.clone())
            .expect("local description");
        pc.add_local_candidate(
            RTCIceCandidate::from(&candidate)
                .to_json()
                .expect("candidate"),
        )
        .expect("local candidate");
        let msid = format!("m-{login}");
        let answer = ws.offer(room, stream, &msid, false, &offer.sdp).await;
        let remote = answer.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (l.starts_with("a=candidate:")
                && w.get(2) == Some(&"udp")
                && w.get(4) == Some(&"127.0.0.1"))
            .then(|| format!("127.0.0.1:{}", w[5]).parse().ok())
            .flatten()
        });
        pc.set_remote_description(
            Instant::now(),
            RTCSessionDescription::answer(answer).expect("answer"),
        )
        .expect("remote description");
        let mut player = RawPlayer {
            pc,
            socket,
            local,
            remote,
        };
        player.handshake(login).await?;
        ws.wait_status(&msid, "PLAYING").await;
        Ok((player, ws))
    }

    /// What the peer connection wants sent.
    fn flush(&mut self) {
        while let Some(m) = self.pc.poll_write() {
            let _ = self.socket.try_send_to(&m.message, m.transport.peer_addr);
        }
    }

    fn feed(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: transport(self.local, from),
            message: BytesMut::from(data),
        });
    }

    async fn handshake(&mut self, login: &str) -> Result<(), String> {
        let deadline = Instant::now() + STEP;
        let mut buf = vec![0u8; DATAGRAM];
        loop {
            self.flush();
            while let Some(e) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = e {
                    match s {
                        RTCPeerConnectionState::Connected => return Ok(()),
                        RTCPeerConnectionState::Failed => {
                            return Err(format!("{login}: connection failed"))
                        }
                        _ => {}
                    }
                }
            }
            while self.pc.poll_read().is_some() {}
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("{login}: not connected within {STEP:?}"));
            }
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_millis(50))
                .min(now + Duration::from_millis(50));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.feed(Instant::now(), from, &buf[..n]);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let _ = self.pc.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Receives until `stop`: every datagram counted, RTP one in `sample` decrypted
    /// and `stamp` read from it (send time in ns of `epoch`), everything else (RTCP,
    /// STUN) through the peer connection. Its timers run every 100 ms (ICE consent).
    pub async fn receive(
        mut self,
        mut stop: watch::Receiver<bool>,
        sample: u64,
        epoch: Instant,
        stamp: fn(&Packet) -> Option<u64>,
    ) -> Tally {
        let mut tally = Tally::default();
        let mut bufs = vec![[0u8; DATAGRAM]; BATCH];
        let mut lens = Vec::with_capacity(BATCH);
        let mut rtp_seen = 0u64;
        let mut timers = tokio::time::interval(Duration::from_millis(100));
        let mut spans: HashMap<u32, Span> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = timers.tick() => {
                    let _ = self.pc.handle_timeout(Instant::now());
                    self.flush();
                    while self.pc.poll_event().is_some() {}
                    continue;
                }
                r = self.socket.readable() => if r.is_err() { break },
            }
            lens.clear();
            let fd = self.socket.as_raw_fd();
            let got = self.socket.try_io(Interest::READABLE, || {
                let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                let results = recvmmsg(
                    fd,
                    &mut headers,
                    slices.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(std::io::Error::from)?;
                for r in results {
                    let from = r.address.and_then(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    });
                    lens.push((r.bytes, from));
                }
                Ok(())
            });
            if got.is_err() {
                continue;
            }
            tally.recv_calls += 1;
            let now = Instant::now();
            for (i, &(n, from)) in lens.iter().enumerate() {
                tally.datagrams += 1;
                let d = &bufs[i][..n];
                let rtp = n > 12 && d[0] >> 6 == 2 && !(200..=207).contains(&d[1]);
                if !rtp {
                    if let Some(from) = from.or(self.remote) {
                        self.feed(now, from, d);
                    }
                    continue;
                }
                let seq = u16::from_be_bytes([d[2], d[3]]);
                let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                spans
                    .entry(ssrc)
                    .and_modify(|s| s.packet(seq))
                    .or_insert_with(|| Span::new(seq));
                rtp_seen += 1;
                if rtp_seen.is_multiple_of(sample) {
                    tally.samples += 1;
                    if let Some(from) = from.or(self.remote) {
                        self.feed(now, from, d);
                    }
                    let mut decrypted = false;
                    while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
                        if let RTCMessage::RtpPacket(_, p) = message {
                            decrypted = true;
                            if let Some(sent) = stamp(&p) {
                                let at = now.saturating_duration_since(epoch).as_nanos() as u64;
                                tally
                                    .latencies_us
                                    .push((at.saturating_sub(sent) / 1000) as u32);
                            }
                        }
                    }
                    if !decrypted {
                        tally.sample_failures += 1;
                    }
                } else if rtp_seen.is_multiple_of(64) {
                    // Keep the peer connection's pipeline short.
                    while self.pc.poll_read().is_some() {}
                }
            }
            self.flush();
        }
        for Span(n, first, highest) in spans.into_values() {
            tally.received += n;
            tally.expected += highest - first + 1;
        }
        tally
    }
}
