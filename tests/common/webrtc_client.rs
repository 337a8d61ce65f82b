//! A browser stand-in for the SFU tests: a `webrtc` 0.21.1 (async) peer connection
//! that offers like the Flashphoner SDK does (the browser always offers, candidates
//! are never sent), bound to 127.0.0.1 only.
//!
//! Everything the peer reports (connection states, remote tracks and their RTP,
//! RTCP feedback about the tracks it sends) ends up in one channel of `Media`
//! items, read with bounded waits.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huddle::sfu::peer::KeyFrameRequests;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

pub const H264_42E01F: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("nack", ""),
        ("nack", "pli"),
        ("ccm", "fir"),
        ("goog-remb", ""),
    ]
    .iter()
    .map(|(t, p)| RTCPFeedback {
        typ: (*t).into(),
        parameter: (*p).into(),
    })
    .collect()
}

/// H.264 constrained baseline (42e01f), packetization-mode=1, at `pt`.
/// The Room API `publishStream` (with `kinds` = (audio, video) published) or
/// `playStream` request for `name` in `room`, shaped as the Flashphoner SDK sends it.
pub fn stream_request(
    publish: bool,
    msid: &str,
    name: &str,
    room: &str,
    sdp: &str,
    (has_audio, has_video): (bool, bool),
) -> serde_json::Value {
    let mut data = serde_json::json!({
        "mediaSessionId": msid,
        "name": name,
        "published": publish,
        "hasVideo": has_video,
        "hasAudio": has_audio,
        "status": "PENDING",
        "record": false,
        "mediaProvider": "WebRTC",
        "sdp": sdp,
        "custom": {"name": room},
        "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
    });
    if publish {
        data["constraints"] = serde_json::json!({"audio": has_audio, "video": has_video});
    } else {
        data["width"] = 0.into();
        data["height"] = 0.into();
        data["quality"] = 0.into();
        data["constraints"] = serde_json::json!({"audio": {"deviceId": "default"}});
    }
    let message = if publish {
        "publishStream"
    } else {
        "playStream"
    };
    serde_json::json!({"message": message, "data": [data]})
}

/// An RTP packet with these header fields (version 2, no extensions).
pub fn rtp_packet(
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: bytes::Bytes::from(payload),
    }
}

pub fn h264(pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: H264_42E01F.into(),
            rtcp_feedback: video_feedback(),
        },
        payload_type: pt,
    }
}

pub fn vp8(pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: video_feedback(),
        },
        payload_type: pt,
    }
}

pub fn opus(pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

/// An H.264 STAP-A payload holding a Constrained Baseline SPS (level 3.1) and its PPS,
/// as a browser sends before a key frame.
pub fn stap_a_sps_pps() -> Vec<u8> {
    let sps = [
        0x67, 0x42, 0xe0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0x84, 0x00,
    ];
    let pps = [0x68, 0xce, 0x3c, 0x80];
    let mut stap = vec![0x78, 0x00, sps.len() as u8];
    stap.extend(sps);
    stap.extend([0x00, pps.len() as u8]);
    stap.extend(pps);
    stap
}

/// The offer as the Flashphoner SDK sends it: no `a=candidate` / `a=end-of-candidates`.
pub fn strip_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// What the client observed, in arrival order.
#[derive(Debug)]
pub enum Media {
    /// A remote track opened (first RTP packet of `ssrc`).
    Open { kind: RtpCodecKind, ssrc: u32 },
    Rtp {
        kind: RtpCodecKind,
        packet: rtc::rtp::Packet,
    },
    /// A remote track ended.
    Ended { kind: RtpCodecKind },
    /// A key frame request about one of our sent tracks: "PLI" or "FIR", for `media_ssrc`.
    KeyFrameRequest {
        kind: RtpCodecKind,
        what: &'static str,
        media_ssrc: u32,
        at: Instant,
    },
}

struct Shared {
    name: String,
    state: watch::Sender<RTCPeerConnectionState>,
    states: Mutex<Vec<RTCPeerConnectionState>>,
    media: mpsc::UnboundedSender<Media>,
    remote: Mutex<Vec<(RtpCodecKind, Arc<dyn TrackRemote>)>>,
}

struct Handler(Arc<Shared>);

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

// `PeerConnectionEventHandler` is an `#[async_trait]` trait; `async-trait` is not a
// dependency of Huddle, so these are its expansions written out by hand.
impl PeerConnectionEventHandler for Handler {
    fn on_connection_state_change<'life0, 'async_trait>(
        &'life0 self,
        state: RTCPeerConnectionState,
    ) -> BoxFut<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.0.states.lock().unwrap().push(state);
            self.0.state.send_replace(state);
        })
    }

    fn on_track<'life0, 'async_trait>(
        &'life0 self,
        track: Arc<dyn TrackRemote>,
    ) -> BoxFut<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let kind = track.kind().await;
            self.0
                .remote
                .lock()
                .unwrap()
                .push((kind, Arc::clone(&track)));
            let tx = self.0.media.clone();
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    let item = match ev {
                        TrackRemoteEvent::OnOpen(init) => Media::Open {
                            kind,
                            ssrc: init.ssrc,
                        },
                        TrackRemoteEvent::OnRtpPacket(packet) => Media::Rtp { kind, packet },
                        TrackRemoteEvent::OnEnded => Media::Ended { kind },
                        _ => continue,
                    };
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            });
        })
    }
}

/// One track we send.
pub struct SendTrack {
    pub kind: RtpCodecKind,
    pub ssrc: u32,
    pub codec: RTCRtpCodecParameters,
    pub track: Arc<TrackLocalStaticRTP>,
}

pub struct RtcClient {
    pub name: String,
    pub pc: Box<dyn PeerConnection>,
    shared: Arc<Shared>,
    state: watch::Receiver<RTCPeerConnectionState>,
    media: mpsc::UnboundedReceiver<Media>,
    /// Items taken out of `media` by a wait for something else, kept in order.
    backlog: VecDeque<Media>,
    pub sending: Vec<SendTrack>,
    /// The SDP offer sent to the server (candidates stripped).
    pub offer: String,
    /// The answer applied, if any.
    pub answer: Option<String>,
}

/// How a client reaches the server: UDP, or ICE-TCP only (no UDP socket at all; it
/// connects to the server's passive TCP candidate, see `RtcClient::connect_tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    TcpOnly,
    /// The same on ::1.
    Udp6,
    TcpOnly6,
    /// UDP on another local address (benches/janus.rs: Janus never gathers loopback
    /// candidates, so its bench runs on a veth address in a network namespace).
    UdpAt(std::net::IpAddr),
}

impl RtcClient {
    /// A peer connection on 127.0.0.1 with exactly `codecs` in its media engine.
    pub async fn new(name: &str, codecs: &[(RtpCodecKind, RTCRtpCodecParameters)]) -> RtcClient {
        RtcClient::with_options(name, codecs, &[], Transport::Udp).await
    }

    /// `new` reaching the server over `transport`.
    pub async fn new_on(
        name: &str,
        codecs: &[(RtpCodecKind, RTCRtpCodecParameters)],
        transport: Transport,
    ) -> RtcClient {
        RtcClient::with_options(name, codecs, &[], transport).await
    }

    /// `new`, with the mid/rid header extensions of rid-based simulcast when `simulcast`.
    pub async fn with_engine(
        name: &str,
        codecs: &[(RtpCodecKind, RTCRtpCodecParameters)],
        simulcast: bool,
    ) -> RtcClient {
        let video = RtpCodecKind::Video;
        let extensions: &[(RtpCodecKind, &str)] = if simulcast {
            &[
                (video, "urn:ietf:params:rtp-hdrext:sdes:mid"),
                (video, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
                (
                    video,
                    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
                ),
            ]
        } else {
            &[]
        };
        RtcClient::with_options(name, codecs, extensions, Transport::Udp).await
    }

    /// `new`, also offering these RTP header extensions (URIs) for their kinds.
    pub async fn with_extensions(
        name: &str,
        codecs: &[(RtpCodecKind, RTCRtpCodecParameters)],
        extensions: &[(RtpCodecKind, &str)],
    ) -> RtcClient {
        RtcClient::with_options(name, codecs, extensions, Transport::Udp).await
    }

    /// A peer connection with exactly `codecs`, offering `extensions`, over `transport`.
    pub async fn with_options(
        name: &str,
        codecs: &[(RtpCodecKind, RTCRtpCodecParameters)],
        extensions: &[(RtpCodecKind, &str)],
        transport: Transport,
    ) -> RtcClient {
        let mut me = MediaEngine::default();
        for (kind, c) in codecs {
            me.register_codec(c.clone(), *kind)
                .unwrap_or_else(|e| panic!("{name}: register codec {c:?}: {e}"));
        }
        for (kind, uri) in extensions {
            me.register_header_extension(
                rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                    uri: (*uri).to_owned(),
                },
                *kind,
                None,
            )
            .unwrap_or_else(|e| panic!("{name}: register extension {uri}: {e}"));
        }
        let reg = Registry::new().with(Slot::from(14_000), KeyFrameRequests::default());
        let reg = register_default_interceptors(reg, &mut me)
            .unwrap_or_else(|e| panic!("{name}: interceptors: {e}"));
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (media_tx, media) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            state: state_tx,
            states: Mutex::new(Vec::new()),
            media: media_tx,
            remote: Mutex::new(Vec::new()),
        });
        let builder = PeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_interceptor_registry(reg)
            .with_handler(Arc::new(Handler(Arc::clone(&shared))));
        let builder = match transport {
            Transport::Udp => builder.with_udp_addrs(vec!["127.0.0.1:0".to_string()]),
            Transport::TcpOnly => builder.with_tcp_addrs(vec!["127.0.0.1:0".to_string()]),
            Transport::Udp6 => builder.with_udp_addrs(vec!["[::1]:0".to_string()]),
            Transport::TcpOnly6 => builder.with_tcp_addrs(vec!["[::1]:0".to_string()]),
            Transport::UdpAt(ip) => {
                builder.with_udp_addrs(vec![std::net::SocketAddr::new(ip, 0).to_string()])
            }
        };
        let pc = builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: build peer connection: {e}"));
        RtcClient {
            name: name.to_owned(),
            pc: Box::new(pc),
            shared,
            state,
            media,
            backlog: VecDeque::new(),
            sending: Vec::new(),
            offer: String::new(),
            answer: None,
        }
    }

    /// A publisher: one sendonly transceiver per `(kind, codec, ssrc)`.
    pub async fn publisher(
        name: &str,
        tracks: &[(RtpCodecKind, RTCRtpCodecParameters, u32)],
    ) -> RtcClient {
        RtcClient::publisher_on(name, tracks, Transport::Udp).await
    }

    /// `publisher` reaching the server over `transport`.
    pub async fn publisher_on(
        name: &str,
        tracks: &[(RtpCodecKind, RTCRtpCodecParameters, u32)],
        transport: Transport,
    ) -> RtcClient {
        let codecs: Vec<_> = tracks.iter().map(|(k, c, _)| (*k, c.clone())).collect();
        let mut c = RtcClient::new_on(name, &codecs, transport).await;
        for (kind, codec, ssrc) in tracks {
            c.add_send_track(*kind, codec.clone(), *ssrc).await;
        }
        c
    }

    /// A player: one recvonly transceiver per kind, `codecs` in the media engine.
    pub async fn player(name: &str, codecs: &[(RtpCodecKind, RTCRtpCodecParameters)]) -> RtcClient {
        RtcClient::player_on(name, codecs, Transport::Udp).await
    }

    /// `player` reaching the server over `transport`.
    pub async fn player_on(
        name: &str,
        codecs: &[(RtpCodecKind, RTCRtpCodecParameters)],
        transport: Transport,
    ) -> RtcClient {
        let c = RtcClient::new_on(name, codecs, transport).await;
        let mut kinds: Vec<RtpCodecKind> = Vec::new();
        for (k, _) in codecs {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        for kind in kinds {
            c.pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: recvonly {kind} transceiver: {e}"));
        }
        c
    }

    pub async fn add_send_track(
        &mut self,
        kind: RtpCodecKind,
        codec: RTCRtpCodecParameters,
        ssrc: u32,
    ) {
        self.add_send_layers(kind, codec, &[("", ssrc)]).await;
    }

    /// A sent track with one encoding per `(rid, ssrc)`: simulcast when there are
    /// several (rids non-empty). Each layer is listed in `sending` (same track).
    pub async fn add_send_layers(
        &mut self,
        kind: RtpCodecKind,
        codec: RTCRtpCodecParameters,
        layers: &[(&str, u32)],
    ) {
        let label = format!("{}-{kind}", self.name);
        let encodings = layers
            .iter()
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: (*rid).to_owned(),
                    ssrc: Some(*ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            })
            .collect();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{}-stream", self.name),
            label.clone(),
            label,
            kind,
            encodings,
        )));
        self.pc
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: sendonly {kind} transceiver: {e}", self.name));
        // Feedback about this track (PLI/FIR) -> `Media::KeyFrameRequest`.
        let tx = self.shared.media.clone();
        let t = Arc::clone(&track);
        tokio::spawn(async move {
            while let Some(ev) = t.poll().await {
                let TrackLocalEvent::OnRtcpPacket(pkts) = ev else {
                    continue;
                };
                for p in pkts {
                    let any = p.as_any();
                    let pli = any
                        .downcast_ref::<PictureLossIndication>()
                        .map(|p| ("PLI", p.media_ssrc));
                    let found = pli.or_else(|| {
                        any.downcast_ref::<FullIntraRequest>()
                            .map(|f| ("FIR", f.fir.first().map_or(f.media_ssrc, |e| e.ssrc)))
                    });
                    if let Some((what, media_ssrc)) = found {
                        let item = Media::KeyFrameRequest {
                            kind,
                            what,
                            media_ssrc,
                            at: Instant::now(),
                        };
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        for (_, ssrc) in layers {
            self.sending.push(SendTrack {
                kind,
                ssrc: *ssrc,
                codec: codec.clone(),
                track: Arc::clone(&track),
            });
        }
    }

    /// createOffer + setLocalDescription; returns the offer without candidates (kept in `offer`).
    pub async fn create_offer(&mut self) -> String {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .unwrap_or_else(|e| panic!("{}: create_offer: {e}", self.name));
        self.pc
            .set_local_description(offer.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: set_local_description: {e}", self.name));
        self.offer = strip_candidates(&offer.sdp);
        self.offer.clone()
    }

    pub async fn apply_answer(&mut self, sdp: &str) {
        let desc = RTCSessionDescription::answer(sdp.to_owned())
            .unwrap_or_else(|e| panic!("{}: bad answer ({e}):\n{sdp}", self.name));
        self.pc
            .set_remote_description(desc)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: set_remote_description(answer) failed: {e}\nanswer:\n{sdp}",
                    self.name
                )
            });
        self.answer = Some(sdp.to_owned());
    }

    /// The answering side, for a server that offers (Janus to its subscribers):
    /// setRemoteDescription(offer), createAnswer, setLocalDescription. Returns the
    /// answer with its candidates (kept in `answer`; the offer in `offer`).
    pub async fn answer_offer(&mut self, sdp: &str) -> String {
        let desc = RTCSessionDescription::offer(sdp.to_owned())
            .unwrap_or_else(|e| panic!("{}: bad offer ({e}):\n{sdp}", self.name));
        self.pc
            .set_remote_description(desc)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: set_remote_description(offer) failed: {e}\noffer:\n{sdp}",
                    self.name
                )
            });
        let answer = self
            .pc
            .create_answer(None)
            .await
            .unwrap_or_else(|e| panic!("{}: create_answer: {e}\noffer:\n{sdp}", self.name));
        self.pc
            .set_local_description(answer.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: set_local_description(answer): {e}", self.name));
        self.offer = sdp.to_owned();
        let answer = self.local_sdp().await;
        self.answer = Some(answer.clone());
        answer
    }

    /// The local description as set, with the candidates gathered since (`create_offer`
    /// returns it without them, as the Flashphoner SDK sends it; Janus wants them):
    /// waits (up to 3 s) until gathering is complete (`a=end-of-candidates`).
    pub async fn local_sdp(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let sdp = self
                .pc
                .local_description()
                .await
                .unwrap_or_else(|| panic!("{}: no local description", self.name))
                .sdp;
            if sdp.contains("a=end-of-candidates") || Instant::now() >= deadline {
                return sdp;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Hands the answer's passive ICE-TCP candidates to the peer connection as trickled
    /// ones: webrtc-rs connects to a passive TCP candidate only when it is added that
    /// way. Returns how many there were.
    pub async fn connect_tcp(&self) -> usize {
        let answer = self.answer.clone().unwrap_or_default();
        let mut n = 0;
        let mut seen: Vec<&str> = Vec::new();
        for line in answer.split("\r\n") {
            let Some(c) = line.strip_prefix("a=") else {
                continue;
            };
            let passive_tcp =
                c.starts_with("candidate:") && c.contains(" tcp ") && c.contains("tcptype passive");
            // Every m-line repeats the candidates: each is added once.
            if !passive_tcp || seen.contains(&c) {
                continue;
            }
            seen.push(c);
            let init = rtc::peer_connection::transport::RTCIceCandidateInit {
                candidate: c.to_owned(),
                sdp_mid: Some("0".to_owned()),
                sdp_mline_index: Some(0),
                username_fragment: None,
                url: None,
            };
            self.pc
                .add_ice_candidate(init)
                .await
                .unwrap_or_else(|e| panic!("{}: add_ice_candidate {c}: {e}", self.name));
            n += 1;
        }
        n
    }

    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Every connection state reported so far, in order.
    pub fn states(&self) -> Vec<RTCPeerConnectionState> {
        self.shared.states.lock().unwrap().clone()
    }

    /// Waits (bounded) for `Connected`; panics on `Failed`/`Closed` or timeout.
    pub async fn wait_connected(&mut self, limit: Duration) {
        let name = self.name.clone();
        let r = tokio::time::timeout(
            limit,
            self.state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .map(|r| r.map(|s| *s));
        let states = self.states();
        match r {
            Ok(Ok(RTCPeerConnectionState::Connected)) => {}
            Ok(Ok(s)) => {
                panic!("{name}: peer connection {s} instead of connected; states {states:?}")
            }
            Ok(Err(_)) => panic!("{name}: state channel closed; states {states:?}"),
            Err(_) => panic!(
                "{name}: not connected within {limit:?}; states {states:?}\nanswer:\n{}",
                self.answer.as_deref().unwrap_or("(none)")
            ),
        }
    }

    /// The sent track of `kind`.
    pub fn send_track(&self, kind: RtpCodecKind) -> &SendTrack {
        self.sending
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("{}: no {kind} track", self.name))
    }

    /// The payload type the answer gave our `kind` codec (falls back to ours).
    pub async fn negotiated_pt(&self, kind: RtpCodecKind) -> u8 {
        let t = self.send_track(kind);
        for s in self.pc.get_senders().await {
            if s.track().kind().await != kind {
                continue;
            }
            if let Ok(p) = s.get_parameters().await {
                if let Some(c) = p.rtp_parameters.codecs.iter().find(|c| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(&t.codec.rtp_codec.mime_type)
                }) {
                    return c.payload_type;
                }
            }
        }
        t.codec.payload_type
    }

    /// Writes one RTP packet on the sent track of `kind`.
    pub async fn write_rtp(&self, kind: RtpCodecKind, packet: rtc::rtp::Packet) {
        self.send_track(kind)
            .track
            .write_rtp(packet)
            .await
            .unwrap_or_else(|e| panic!("{}: write_rtp {kind}: {e}", self.name));
    }

    /// The remote track of `kind`, once `on_track` has fired.
    pub fn remote_track(&self, kind: RtpCodecKind) -> Option<Arc<dyn TrackRemote>> {
        self.shared
            .remote
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| Arc::clone(t))
    }

    /// Sends a PLI for `media_ssrc` on the received track of `kind`.
    pub async fn send_pli(&self, kind: RtpCodecKind, media_ssrc: u32) {
        let t = self
            .remote_track(kind)
            .unwrap_or_else(|| panic!("{}: no remote {kind} track to send a PLI on", self.name));
        t.write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        })])
        .await
        .unwrap_or_else(|e| panic!("{}: PLI write_rtcp: {e}", self.name));
    }

    /// The next observed item, `None` after `limit`.
    pub async fn next_media(&mut self, limit: Duration) -> Option<Media> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        tokio::time::timeout(limit, self.media.recv())
            .await
            .ok()
            .flatten()
    }

    /// Drops every item observed so far (`Rtp` included); returns them.
    pub fn drain_media(&mut self) -> Vec<Media> {
        let mut out: Vec<Media> = self.backlog.drain(..).collect();
        while let Ok(m) = self.media.try_recv() {
            out.push(m);
        }
        out
    }

    /// Waits (bounded) for a key frame request; other items stay queued in order.
    pub async fn wait_key_frame_request(
        &mut self,
        limit: Duration,
    ) -> Option<(&'static str, u32, Instant)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut kept = VecDeque::new();
        let mut found = None;
        while let Some(m) = self.backlog.pop_front() {
            match m {
                Media::KeyFrameRequest {
                    what,
                    media_ssrc,
                    at,
                    ..
                } if found.is_none() => found = Some((what, media_ssrc, at)),
                other => kept.push_back(other),
            }
        }
        while found.is_none() {
            match tokio::time::timeout_at(deadline, self.media.recv()).await {
                Ok(Some(Media::KeyFrameRequest {
                    what,
                    media_ssrc,
                    at,
                    ..
                })) => found = Some((what, media_ssrc, at)),
                Ok(Some(other)) => kept.push_back(other),
                Ok(None) | Err(_) => break,
            }
        }
        kept.extend(self.backlog.drain(..));
        self.backlog = kept;
        found
    }

    /// Receives until `n` RTP packets of each kind in `kinds` arrived, or `limit`.
    /// Returns the packets per kind (in arrival order) and everything else seen.
    pub async fn collect_rtp(
        &mut self,
        kinds: &[RtpCodecKind],
        n: usize,
        limit: Duration,
    ) -> (Vec<(RtpCodecKind, Vec<rtc::rtp::Packet>)>, Vec<Media>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut got: Vec<(RtpCodecKind, Vec<rtc::rtp::Packet>)> =
            kinds.iter().map(|k| (*k, Vec::new())).collect();
        let mut other = Vec::new();
        let done = |got: &Vec<(RtpCodecKind, Vec<rtc::rtp::Packet>)>| {
            got.iter().all(|(_, v)| v.len() >= n)
        };
        while !done(&got) {
            let next = match self.backlog.pop_front() {
                Some(m) => Some(m),
                None => tokio::time::timeout_at(deadline, self.media.recv())
                    .await
                    .unwrap_or_default(),
            };
            let Some(m) = next else { break };
            match m {
                Media::Rtp { kind, packet } => match got.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, v)) => v.push(packet),
                    None => other.push(Media::Rtp { kind, packet }),
                },
                m => other.push(m),
            }
        }
        (got, other)
    }

    /// Closes the peer connection (bounded).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }
}

/// Payload bytes of packet `index`: its index, then a pattern.
pub fn body(index: usize, len: usize) -> Vec<u8> {
    let mut b = vec![(index >> 8) as u8, index as u8];
    b.extend((0..len.saturating_sub(2)).map(|i| ((index * 131 + i * 7) % 251) as u8));
    b
}

/// Where a publisher's RTP streams are: next (sequence number, timestamp) per kind.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub video: (u16, u32),
    pub audio: (u16, u32),
}

/// A browser sends media from the moment it is connected: this does too, one video
/// packet (a P frame) and one Opus packet every 20 ms on the publisher's send tracks,
/// until stopped (or for `limit` at the most).
pub struct Camera {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Position>,
}

impl Camera {
    pub async fn start(pc: &RtcClient, from: Position) -> Camera {
        Camera::start_for(pc, from, Duration::from_secs(20)).await
    }

    pub async fn start_for(pc: &RtcClient, from: Position, limit: Duration) -> Camera {
        let (video_kind, audio_kind) = (RtpCodecKind::Video, RtpCodecKind::Audio);
        let (vssrc, assrc) = (
            pc.send_track(video_kind).ssrc,
            pc.send_track(audio_kind).ssrc,
        );
        let video = Arc::clone(&pc.send_track(video_kind).track);
        let audio = Arc::clone(&pc.send_track(audio_kind).track);
        let (vpt, apt) = (
            pc.negotiated_pt(video_kind).await,
            pc.negotiated_pt(audio_kind).await,
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut at = from;
            let limit = tokio::time::Instant::now() + limit;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0usize;
            while !*stopped.borrow() && tokio::time::Instant::now() < limit {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let mut v = vec![0x41];
                v.extend(body(n, 900));
                let (seq, ts) = at.video;
                let _ = video
                    .write_rtp(rtp_packet(vpt, vssrc, seq, ts, true, v))
                    .await;
                at.video = (seq.wrapping_add(1), ts.wrapping_add(1800));
                let mut a = vec![0xfc];
                a.extend(body(n, 80));
                let (seq, ts) = at.audio;
                let _ = audio
                    .write_rtp(rtp_packet(apt, assrc, seq, ts, false, a))
                    .await;
                at.audio = (seq.wrapping_add(1), ts.wrapping_add(960));
                n += 1;
            }
            at
        });
        Camera { stop, task }
    }

    /// Stops it; returns where the streams continue.
    pub async fn stop(self) -> Position {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("camera task stops")
            .expect("camera task")
    }
}
