//! The SFU engine, Sans-I/O: every peer connection of the device, the routing of the
//! one UDP socket, and RTP forwarding from publishers to players without decoding.
//!
//! Inputs carry the time (`request`, `datagram`, `handle_timeout`); outputs are
//! drained with `poll_transmit` (datagrams to send) and `poll_event` (what the room
//! core learns: answer, up, failed); `poll_timeout` says when to call again.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::{debug, info, warn};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::codecs::{self, Chosen, Codec, Family, Kind};
use super::demux::Routes;
use super::peer::{self, Direction};
use crate::rooms::{MediaEvent, MediaRequest, SessionId};

pub type PeerId = u64;

/// A datagram to send from the media socket.
#[derive(Debug)]
pub struct Transmit {
    pub peer: PeerId,
    pub to: SocketAddr,
    pub data: BytesMut,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Addresses put into host candidates.
    pub advertise: Vec<IpAddr>,
    /// The media socket's port.
    pub port: u16,
    /// Publishers use VP8 when offered, instead of H.264.
    pub prefer_vp8: bool,
    /// At most one key-frame request per publisher this often.
    pub key_frame_interval: Duration,
}

/// A consumer of a stream other than a WebRTC player: a recorder, an RTMP push.
/// It sees every packet as the source sent it (source payload type and SSRC).
pub trait MediaSink: Send {
    /// One packet of the stream; `false` removes the sink (it is done or broken).
    fn packet(&mut self, kind: Kind, codec: &Codec, packet: &rtc::rtp::Packet) -> bool;
}

/// What feeds a stream.
enum Source {
    /// A browser's publish peer; `video` is its video receiver and SSRC (for PLI).
    WebRtc {
        peer: PeerId,
        video: Option<(RTCRtpReceiverId, u32)>,
    },
    /// Fed through `source_packet` (device camera, RTMP publisher); it polls
    /// `take_key_frame_request`.
    External { key_frame_wanted: bool },
}

/// A stream in the SFU: its codecs, its source and its consumers.
struct Publication {
    codecs: Chosen,
    source: Source,
    players: Vec<PeerId>,
    sinks: Vec<Box<dyn MediaSink>>,
    last_key_frame_request: Option<Instant>,
    /// A key frame is wanted but the source could not be asked yet (rate limit, or
    /// its video SSRC is not known): it is asked when the interval is over.
    key_frame_pending: bool,
}

/// Where a player's copy of one track goes, and how its numbering continues.
#[derive(Debug)]
struct OutTrack {
    sender: RTCRtpSenderId,
    payload_type: u8,
    ssrc: u32,
    /// Offsets from the current source SSRC's numbering to ours.
    map: Option<(u32, u16, u32)>,
    next_seq: u16,
    next_ts: u32,
    /// Timestamp step assumed across a source change (one frame / one 20 ms packet).
    ts_step: u32,
}

impl OutTrack {
    /// The player's sequence number and timestamp for a source packet. A new source
    /// SSRC (a restarted camera, a re-publish into the same stream) continues where
    /// the player's numbering left off, so its decoder sees one continuous stream.
    fn rewrite(&mut self, ssrc: u32, seq: u16, ts: u32) -> (u16, u32) {
        let (seq_offset, ts_offset) = match self.map {
            Some((source, so, to)) if source == ssrc => (so, to),
            _ => {
                let so = self.next_seq.wrapping_sub(seq);
                let to = self.next_ts.wrapping_sub(ts);
                self.map = Some((ssrc, so, to));
                (so, to)
            }
        };
        let out_seq = seq.wrapping_add(seq_offset);
        let out_ts = ts.wrapping_add(ts_offset);
        // Only forward progress moves the continuation point (retransmissions and
        // reordered packets do not).
        if out_seq.wrapping_sub(self.next_seq) < 0x8000 {
            self.next_seq = out_seq.wrapping_add(1);
            self.next_ts = out_ts.wrapping_add(self.ts_step);
        }
        (out_seq, out_ts)
    }
}

#[derive(Debug)]
enum Role {
    Publish {
        stream: String,
    },
    Play {
        stream: String,
        audio: Option<OutTrack>,
        video: Option<OutTrack>,
    },
}

struct Peer {
    session: SessionId,
    media_session_id: String,
    pc: RTCPeerConnection,
    chosen: Chosen,
    role: Role,
    up: bool,
    ice_connected: bool,
    failed: bool,
}

pub struct Engine {
    cfg: EngineConfig,
    cert: RTCCertificate,
    next_id: PeerId,
    peers: HashMap<PeerId, Peer>,
    by_media: HashMap<(SessionId, String), PeerId>,
    routes: Routes<PeerId>,
    publications: HashMap<String, Publication>,
    /// Video codecs each session's browser offered: what it can decode.
    decoders: HashMap<SessionId, Vec<Family>>,
    events: VecDeque<MediaEvent>,
    transmits: VecDeque<Transmit>,
    device: DeviceFeed,
}

/// The device's camera and microphone as the engine sees them: the codecs they
/// deliver now, and the streams (one per room the device is in) they feed.
#[derive(Default)]
struct DeviceFeed {
    codecs: Chosen,
    /// (session, media session id, stream).
    streams: Vec<(SessionId, String, String)>,
}

/// The publisher's video receiver and the SSRC its offer announced (`a=ssrc`), known
/// before the first packet arrives.
fn signalled_video(pc: &mut RTCPeerConnection) -> Option<(RTCRtpReceiverId, u32)> {
    let receivers: Vec<RTCRtpReceiverId> = pc.get_receivers().collect();
    receivers.into_iter().find_map(|id| {
        let r = pc.rtp_receiver(id)?;
        let track = r.track();
        if track.kind() != RtpCodecKind::Video {
            return None;
        }
        let ssrc = track.ssrcs().next()?;
        Some((id, ssrc))
    })
}

/// 128 random bits (the OS generator, through uuid).
fn random() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

impl Engine {
    pub fn new(cfg: EngineConfig, cert: RTCCertificate) -> Self {
        Engine {
            cfg,
            cert,
            next_id: 1,
            peers: HashMap::new(),
            by_media: HashMap::new(),
            routes: Routes::new(),
            publications: HashMap::new(),
            decoders: HashMap::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            device: DeviceFeed::default(),
        }
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let interval = self.cfg.key_frame_interval;
        let key_frames = self
            .publications
            .values()
            .filter(|p| p.key_frame_pending)
            .filter_map(|p| p.last_key_frame_request.map(|t| t + interval));
        let peers = self.peers.values_mut().filter_map(|p| p.pc.poll_timeout());
        key_frames.chain(peers).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let interval = self.cfg.key_frame_interval;
        let key_frames: Vec<String> = self
            .publications
            .iter()
            .filter(|(_, p)| {
                p.key_frame_pending
                    && p.last_key_frame_request
                        .is_some_and(|t| now >= t + interval)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for stream in key_frames {
            self.request_key_frame(now, &stream);
        }
        let due: Vec<PeerId> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.pc.poll_timeout().is_some_and(|t| t <= now).then_some(*id))
            .collect();
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                if let Err(e) = p.pc.handle_timeout(now) {
                    debug!("peer {id}: timeout handling: {e}");
                }
            }
            self.drive(now, id);
        }
    }

    /// One datagram received on the media socket.
    pub fn datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(id) = self.routes.route(from, data) else {
            return;
        };
        let local = self.local_address(from);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = p.pc.handle_read(message) {
            debug!("peer {id}: datagram from {from} refused: {e}");
        }
        self.drive(now, id);
    }

    /// A datagram toward this peer was dropped (socket full): a player then misses
    /// video and needs a key frame.
    pub fn transmit_dropped(&mut self, now: Instant, id: PeerId) {
        if let Some(Role::Play { stream, .. }) = self.peers.get(&id).map(|p| &p.role) {
            let stream = stream.clone();
            self.request_key_frame(now, &stream);
        }
    }

    pub fn request(&mut self, now: Instant, request: MediaRequest) {
        match request {
            MediaRequest::Publish {
                session,
                media_session_id,
                stream,
                sdp,
                audience,
                ..
            } => {
                let result =
                    self.publish(now, session, &media_session_id, &stream, &sdp, &audience);
                self.answer_or_fail(session, media_session_id, result);
            }
            MediaRequest::Play {
                session,
                media_session_id,
                stream,
                sdp,
            } => {
                let result = self.play(now, session, &media_session_id, &stream, &sdp);
                self.answer_or_fail(session, media_session_id, result);
            }
            MediaRequest::PublishDevice {
                session,
                media_session_id,
                stream,
            } => self.publish_device(session, media_session_id, stream),
            MediaRequest::Close {
                session,
                media_session_id,
            } => {
                let fed = &mut self.device.streams;
                if let Some(i) = fed
                    .iter()
                    .position(|(s, m, _)| *s == session && *m == media_session_id)
                {
                    let (_, _, stream) = fed.swap_remove(i);
                    self.close_source(&stream);
                }
                if let Some(id) = self.by_media.remove(&(session, media_session_id)) {
                    self.close(id);
                }
            }
            MediaRequest::SessionClosed { session } => {
                self.decoders.remove(&session);
            }
        }
    }

    /// Every peer is closed and every stream dropped (service shutdown).
    pub fn close_all(&mut self) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.by_media.clear();
        self.publications.clear();
        self.device.streams.clear();
    }

    // ----- sources and sinks other than WebRTC peers ----------------------------

    /// A stream fed by `source_packet` (the device camera, an RTMP publisher) with
    /// these codecs (their payload types are the source's).
    pub fn open_source(&mut self, stream: &str, codecs: Chosen) -> Result<(), String> {
        if self.publications.contains_key(stream) {
            return Err("Stream name is already in use".into());
        }
        self.publications.insert(
            stream.to_owned(),
            Publication {
                codecs,
                source: Source::External {
                    key_frame_wanted: false,
                },
                players: Vec::new(),
                sinks: Vec::new(),
                last_key_frame_request: None,
                key_frame_pending: false,
            },
        );
        Ok(())
    }

    /// One RTP packet of an external source, forwarded like a publisher's.
    pub fn source_packet(
        &mut self,
        now: Instant,
        stream: &str,
        kind: Kind,
        packet: rtc::rtp::Packet,
    ) {
        self.forward(now, stream, vec![(kind, packet)]);
    }

    /// Whether the players of an external source need a key frame (and clears it).
    pub fn take_key_frame_request(&mut self, stream: &str) -> bool {
        match self.publications.get_mut(stream).map(|p| &mut p.source) {
            Some(Source::External { key_frame_wanted }) => std::mem::take(key_frame_wanted),
            _ => false,
        }
    }

    /// Ends a stream of an external source; its players are ended by the room core.
    pub fn close_source(&mut self, stream: &str) {
        if matches!(
            self.publications.get(stream).map(|p| &p.source),
            Some(Source::External { .. })
        ) {
            self.publications.remove(stream);
        }
    }

    /// Adds a consumer (recorder, RTMP push) to a stream; it gets a key frame soon.
    pub fn add_sink(
        &mut self,
        now: Instant,
        stream: &str,
        sink: Box<dyn MediaSink>,
    ) -> Result<(), String> {
        let p = self
            .publications
            .get_mut(stream)
            .ok_or_else(|| "Stream not found".to_owned())?;
        p.sinks.push(sink);
        self.request_key_frame(now, stream);
        Ok(())
    }

    /// The codecs of a stream (what a sink will receive).
    pub fn codecs(&self, stream: &str) -> Option<&Chosen> {
        self.publications.get(stream).map(|p| &p.codecs)
    }

    // ----- the device's camera and microphone -------------------------------------

    /// What the device delivers now (`None`: that source is down, `info` says why).
    /// Streams that lose a kind fail with `info`; the device participant is told
    /// (`MediaEvent::DeviceChanged`) and republishes with what is left or came back.
    pub fn device_state(&mut self, audio: Option<Codec>, video: Option<Codec>, info: &str) {
        let new = Chosen { audio, video };
        if new == self.device.codecs {
            return;
        }
        let old = std::mem::replace(&mut self.device.codecs, new);
        let lost = (old.audio.is_some() && self.device.codecs.audio.is_none())
            || (old.video.is_some() && self.device.codecs.video.is_none());
        if lost {
            for (session, media_session_id, stream) in std::mem::take(&mut self.device.streams) {
                self.close_source(&stream);
                self.events.push_back(MediaEvent::Failed {
                    session,
                    media_session_id,
                    info: info.to_owned(),
                });
            }
        }
        self.events.push_back(MediaEvent::DeviceChanged {
            audio: self.device.codecs.audio.is_some(),
            video: self.device.codecs.video.is_some(),
        });
    }

    /// One RTP packet of the device's camera or microphone, for every stream it feeds.
    pub fn device_packet(&mut self, now: Instant, kind: Kind, packet: rtc::rtp::Packet) {
        // Taken out and put back: no allocation per packet (payloads are shared `Bytes`).
        let streams = std::mem::take(&mut self.device.streams);
        for (_, _, stream) in &streams {
            self.source_packet(now, stream, kind, packet.clone());
        }
        self.device.streams = streams;
    }

    /// Whether a player of any device stream needs a key frame (and clears it).
    pub fn take_device_key_frame_request(&mut self) -> bool {
        let mut wanted = false;
        for (_, _, stream) in &self.device.streams {
            if let Some(Source::External { key_frame_wanted }) =
                self.publications.get_mut(stream).map(|p| &mut p.source)
            {
                wanted |= std::mem::take(key_frame_wanted);
            }
        }
        wanted
    }

    fn publish_device(&mut self, session: SessionId, media_session_id: String, stream: String) {
        let codecs = self.device.codecs.clone();
        if codecs.audio.is_none() && codecs.video.is_none() {
            self.events.push_back(MediaEvent::Failed {
                session,
                media_session_id,
                info: "The device's camera and microphone are not available".into(),
            });
            return;
        }
        match self.open_source(&stream, codecs) {
            Ok(()) => {
                self.device
                    .streams
                    .push((session, media_session_id.clone(), stream));
                self.events.push_back(MediaEvent::Up {
                    session,
                    media_session_id,
                });
            }
            Err(info) => self.events.push_back(MediaEvent::Failed {
                session,
                media_session_id,
                info,
            }),
        }
    }

    // ----- WebRTC peers -----------------------------------------------------------

    /// Remembers the video codecs a session's browser offers (its decoders).
    fn learn_decoders(&mut self, session: SessionId, offer: &[codecs::OfferedMedia]) {
        let video: Vec<Family> = offer
            .iter()
            .filter(|m| m.kind == Kind::Video)
            .flat_map(|m| m.codecs.iter().map(|c| c.family))
            .collect();
        if !video.is_empty() {
            self.decoders.insert(session, video);
        }
    }

    fn answer_or_fail(
        &mut self,
        session: SessionId,
        media_session_id: String,
        result: Result<String, String>,
    ) {
        self.events.push_back(match result {
            Ok(sdp) => MediaEvent::Answer {
                session,
                media_session_id,
                sdp,
            },
            Err(info) => MediaEvent::Failed {
                session,
                media_session_id,
                info,
            },
        });
    }

    fn publish(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: &str,
        stream: &str,
        sdp: &str,
        audience: &[SessionId],
    ) -> Result<String, String> {
        if self.publications.contains_key(stream) {
            return Err("Stream name is already in use".into());
        }
        let offer = codecs::parse_offer(sdp)?;
        self.learn_decoders(session, &offer);
        // A member whose browser cannot decode H.264 (Firefox without OpenH264) would
        // get "No common codecs": answer VP8 if the publisher offers it.
        let h264_blind = audience.iter().any(|s| {
            self.decoders
                .get(s)
                .is_some_and(|fs| !fs.iter().any(|f| matches!(f, Family::H264 { .. })))
        });
        let chosen = codecs::choose_publish(&offer, self.cfg.prefer_vp8 || h264_blind)?;
        info!(stream:% = crate::logging::field(stream); "stream {}: publishing {}", crate::logging::escaped(stream), chosen.describe());
        let role = Role::Publish {
            stream: stream.to_owned(),
        };
        let (id, answer) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            (chosen.clone(), chosen.clone()),
            role,
            Direction::Publish,
        )?;
        self.publications.insert(
            stream.to_owned(),
            Publication {
                codecs: chosen,
                source: Source::WebRtc {
                    peer: id,
                    video: None,
                },
                players: Vec::new(),
                sinks: Vec::new(),
                last_key_frame_request: None,
                key_frame_pending: false,
            },
        );
        Ok(answer)
    }

    fn play(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: &str,
        stream: &str,
        sdp: &str,
    ) -> Result<String, String> {
        let published = self
            .publications
            .get(stream)
            .map(|p| p.codecs.clone())
            .ok_or_else(|| "Stream not found".to_owned())?;
        let offer = codecs::parse_offer(sdp)?;
        self.learn_decoders(session, &offer);
        let chosen = codecs::choose_play(&offer, &published)?;
        let role = Role::Play {
            stream: stream.to_owned(),
            audio: None,
            video: None,
        };
        // A kind the stream lacks (no microphone on a screen share) is still negotiated,
        // an m-line in the bundle with no track: a rejected first m-line would carry the
        // candidates away from the one that is used.
        let negotiated = codecs::fill_missing(&offer, &chosen);
        let (id, answer) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            (chosen, negotiated),
            role,
            Direction::Play,
        )?;
        if let Some(p) = self.publications.get_mut(stream) {
            p.players.push(id);
        }
        Ok(answer)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_peer(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: &str,
        offer: &str,
        (chosen, negotiated): (Chosen, Chosen),
        mut role: Role,
        direction: Direction,
    ) -> Result<(PeerId, String), String> {
        let bits = random();
        let ufrag = format!("{:08x}", bits as u32);
        let pwd = format!("{:024x}", bits >> 32);
        let mut pc = peer::build(now, &self.cert, &ufrag, &pwd, &negotiated, direction)?;
        if let Role::Play { audio, video, .. } = &mut role {
            let stream_id = format!("huddle-{:08x}", (bits >> 40) as u32);
            for (kind, slot) in [(Kind::Audio, audio), (Kind::Video, video)] {
                let Some(codec) = chosen.get(kind) else {
                    continue;
                };
                let ssrc = (random() as u32).max(1);
                let (rtp_kind, track_id, ts_step) = match kind {
                    Kind::Audio => (RtpCodecKind::Audio, "audio", codec.clock_rate / 50),
                    Kind::Video => (RtpCodecKind::Video, "video", codec.clock_rate / 30),
                };
                let track = MediaStreamTrack::new(
                    stream_id.clone(),
                    track_id.to_owned(),
                    track_id.to_owned(),
                    rtp_kind,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codecs::rtp_codec(codec),
                        ..Default::default()
                    }],
                );
                let sender = pc
                    .add_track(track)
                    .map_err(|e| format!("track {track_id}: {e}"))?;
                let start = random();
                *slot = Some(OutTrack {
                    sender,
                    payload_type: codec.payload_type,
                    ssrc,
                    map: None,
                    next_seq: start as u16,
                    next_ts: (start >> 16) as u32,
                    ts_step,
                });
            }
        }
        // The parser's errors may quote the client's lines: escaped and bounded.
        let invalid = |e: &dyn std::fmt::Display| {
            format!(
                "Invalid SDP offer: {}",
                crate::logging::escaped(&e.to_string())
            )
        };
        let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(|e| invalid(&e))?;
        pc.set_remote_description(now, offer)
            .map_err(|e| invalid(&e))?;
        if direction == Direction::Play {
            peer::idle_unsent_media(&mut pc);
        }
        for ip in &self.cfg.advertise {
            peer::add_host_candidate(&mut pc, SocketAddr::new(*ip, self.cfg.port))?;
        }
        let answer = pc
            .create_answer(None)
            .map_err(|e| format!("Cannot answer the offer: {e}"))?;
        pc.set_local_description(now, answer)
            .map_err(|e| format!("Cannot answer the offer: {e}"))?;
        let sdp = pc
            .local_description()
            .map(|d| peer::tidy_answer(&d.sdp))
            .ok_or_else(|| "Cannot answer the offer".to_owned())?;
        let id = self.next_id;
        self.next_id += 1;
        self.routes.add_peer(ufrag, &pwd, id);
        self.by_media
            .insert((session, media_session_id.to_owned()), id);
        self.peers.insert(
            id,
            Peer {
                session,
                media_session_id: media_session_id.to_owned(),
                pc,
                chosen,
                role,
                up: false,
                ice_connected: false,
                failed: false,
            },
        );
        self.drive(now, id);
        Ok((id, sdp))
    }

    fn close(&mut self, id: PeerId) {
        let Some(mut p) = self.peers.remove(&id) else {
            return;
        };
        self.by_media
            .remove(&(p.session, p.media_session_id.clone()));
        if let Err(e) = p.pc.close() {
            debug!("peer {id}: close: {e}");
        }
        // The DTLS close alert, so the browser notices at once.
        Self::push_writes(&mut self.transmits, &mut self.routes, id, &mut p.pc);
        self.routes.remove_peer(id);
        match p.role {
            Role::Publish { stream } => {
                let own = matches!(
                    self.publications.get(&stream).map(|p| &p.source),
                    Some(Source::WebRtc { peer, .. }) if *peer == id
                );
                if own {
                    self.publications.remove(&stream);
                }
            }
            Role::Play { stream, .. } => {
                if let Some(p) = self.publications.get_mut(&stream) {
                    p.players.retain(|pl| *pl != id);
                }
            }
        }
    }

    /// The local address a datagram from `from` arrived on, as the ICE agent knows it:
    /// the advertised address of the peer's kind (loopback for loopback peers).
    fn local_address(&self, from: SocketAddr) -> SocketAddr {
        let ip = self
            .cfg
            .advertise
            .iter()
            .find(|ip| {
                ip.is_loopback() == from.ip().is_loopback() && ip.is_ipv4() == from.is_ipv4()
            })
            .or_else(|| {
                self.cfg
                    .advertise
                    .iter()
                    .find(|ip| ip.is_ipv4() == from.is_ipv4())
            })
            .or(self.cfg.advertise.first())
            .copied()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        SocketAddr::new(ip, self.cfg.port)
    }

    /// Queues what a peer wants sent; the route table notes the STUN requests among
    /// them (only their responses may reach the peer).
    fn push_writes(
        transmits: &mut VecDeque<Transmit>,
        routes: &mut Routes<PeerId>,
        id: PeerId,
        pc: &mut RTCPeerConnection,
    ) {
        while let Some(m) = pc.poll_write() {
            routes.sent(id, m.transport.peer_addr, &m.message);
            transmits.push_back(Transmit {
                peer: id,
                to: m.transport.peer_addr,
                data: m.message,
            });
        }
    }

    /// Drains one peer: datagrams out, state changes, media in.
    fn drive(&mut self, now: Instant, id: PeerId) {
        let mut rtp: Vec<(Kind, rtc::rtp::Packet)> = Vec::new();
        let mut key_frame_requested = false;
        let mut became_up = false;
        let mut video_track: Option<(RTCRtpReceiverId, u32)> = None;
        let stream = {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            Self::push_writes(&mut self.transmits, &mut self.routes, id, &mut p.pc);
            while let Some(event) = p.pc.poll_event() {
                match event {
                    RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                        RTCIceConnectionState::Connected | RTCIceConnectionState::Completed,
                    ) => p.ice_connected = true,
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                        RTCPeerConnectionState::Connected if !p.up => {
                            p.up = true;
                            became_up = true;
                            self.events.push_back(MediaEvent::Up {
                                session: p.session,
                                media_session_id: p.media_session_id.clone(),
                            });
                        }
                        RTCPeerConnectionState::Failed if !p.failed => {
                            p.failed = true;
                            let info = if p.ice_connected {
                                "Failed by DTLS error"
                            } else {
                                "Failed by ICE timeout"
                            };
                            warn!(
                                "peer {id} ({}): {info}",
                                crate::logging::escaped(&p.media_session_id)
                            );
                            self.events.push_back(MediaEvent::Failed {
                                session: p.session,
                                media_session_id: p.media_session_id.clone(),
                                info: info.into(),
                            });
                        }
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        let is_video =
                            p.pc.rtp_receiver(init.receiver_id)
                                .is_some_and(|r| r.track().kind() == RtpCodecKind::Video);
                        if is_video {
                            video_track = Some((init.receiver_id, init.ssrc));
                        }
                    }
                    _ => {}
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = p.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => {
                        let kind = [Kind::Audio, Kind::Video].into_iter().find(|k| {
                            p.chosen
                                .get(*k)
                                .is_some_and(|c| c.payload_type == packet.header.payload_type)
                        });
                        if let Some(kind) = kind {
                            rtp.push((kind, packet));
                        }
                    }
                    // Only PLI and FIR are delivered (peer::KeyFrameRequests).
                    RTCMessage::RtcpPacket(_, _) => key_frame_requested = true,
                    _ => {}
                }
            }
            match &p.role {
                Role::Publish { stream } | Role::Play { stream, .. } => stream.clone(),
            }
        };
        let is_publisher = matches!(
            self.publications.get(&stream).map(|p| &p.source),
            Some(Source::WebRtc { peer, .. }) if *peer == id
        );
        if is_publisher {
            if let Some(track) = video_track {
                let pending = self.publications.get_mut(&stream).is_some_and(|p| {
                    if let Source::WebRtc { video, .. } = &mut p.source {
                        *video = Some(track);
                    }
                    p.key_frame_pending
                });
                if pending {
                    self.request_key_frame(now, &stream);
                }
            }
            if !rtp.is_empty() {
                self.forward(now, &stream, rtp);
            }
        } else if key_frame_requested || became_up {
            self.request_key_frame(now, &stream);
        }
    }

    /// Asks the stream's source for a key frame, at most once per `key_frame_interval`:
    /// a PLI to a browser, a flag for an external source.
    fn request_key_frame(&mut self, now: Instant, stream: &str) {
        let interval = self.cfg.key_frame_interval;
        let Some(publication) = self.publications.get_mut(stream) else {
            return;
        };
        if publication
            .last_key_frame_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            // Coalesced: one request when the interval is over serves everyone.
            publication.key_frame_pending = true;
            return;
        }
        match &mut publication.source {
            Source::External { key_frame_wanted } => *key_frame_wanted = true,
            Source::WebRtc { peer, video } => {
                let Some(p) = self.peers.get_mut(peer) else {
                    return;
                };
                if video.is_none() {
                    *video = signalled_video(&mut p.pc);
                }
                let Some((receiver, ssrc)) = *video else {
                    // The video SSRC is not known yet (not in the offer): ask at the
                    // first packet, or retry after the interval.
                    publication.key_frame_pending = true;
                    publication.last_key_frame_request = Some(now);
                    return;
                };
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: ssrc,
                };
                if let Some(mut r) = p.pc.rtp_receiver(receiver) {
                    if let Err(e) = r.write_rtcp(now, vec![Box::new(pli)]) {
                        debug!("peer {peer}: PLI: {e}");
                    }
                }
                Self::push_writes(&mut self.transmits, &mut self.routes, *peer, &mut p.pc);
            }
        }
        publication.last_key_frame_request = Some(now);
        publication.key_frame_pending = false;
    }

    /// Gives the source's packets to every sink and to every player that is up,
    /// rewritten to the player's payload type, SSRC and numbering. Nothing here knows
    /// what kind of source fed them.
    fn forward(&mut self, now: Instant, stream: &str, packets: Vec<(Kind, rtc::rtp::Packet)>) {
        let Some(publication) = self.publications.get_mut(stream) else {
            return;
        };
        let codecs = &publication.codecs;
        publication.sinks.retain_mut(|sink| {
            packets.iter().all(|(kind, packet)| {
                codecs
                    .get(*kind)
                    .is_none_or(|codec| sink.packet(*kind, codec, packet))
            })
        });
        for &player in &publication.players {
            let Some(p) = self.peers.get_mut(&player) else {
                continue;
            };
            let Role::Play { audio, video, .. } = &mut p.role else {
                continue;
            };
            if !p.up {
                continue;
            }
            for (kind, packet) in &packets {
                let Some(track) = (match kind {
                    Kind::Audio => audio.as_mut(),
                    Kind::Video => video.as_mut(),
                }) else {
                    continue;
                };
                let mut out = packet.clone();
                let (seq, ts) = track.rewrite(
                    packet.header.ssrc,
                    packet.header.sequence_number,
                    packet.header.timestamp,
                );
                out.header.payload_type = track.payload_type;
                out.header.ssrc = track.ssrc;
                out.header.sequence_number = seq;
                out.header.timestamp = ts;
                // Extension ids are the publisher leg's; the player leg adds its own.
                out.header.extension = false;
                out.header.extensions.clear();
                out.header.extension_profile = 0;
                if let Some(mut sender) = p.pc.rtp_sender(track.sender) {
                    if let Err(e) = sender.write_rtp(now, out) {
                        debug!("peer {player}: write_rtp: {e}");
                    }
                }
            }
            Self::push_writes(&mut self.transmits, &mut self.routes, player, &mut p.pc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A sink that records what it is given; `false` once `budget` packets are in.
    struct Recorder {
        got: Arc<Mutex<Vec<(Kind, u16)>>>,
        budget: usize,
    }

    impl MediaSink for Recorder {
        fn packet(&mut self, kind: Kind, _codec: &Codec, packet: &rtc::rtp::Packet) -> bool {
            let mut got = self.got.lock().unwrap();
            got.push((kind, packet.header.sequence_number));
            got.len() < self.budget
        }
    }

    fn engine() -> Engine {
        let cert = super::super::task::certificate().unwrap();
        Engine::new(
            EngineConfig {
                advertise: vec![IpAddr::from([127, 0, 0, 1])],
                port: 20_000,
                prefer_vp8: false,
                key_frame_interval: Duration::from_millis(500),
            },
            cert,
        )
    }

    fn h264_codecs() -> Chosen {
        let offer = codecs::parse_offer(codecs::tests::CHROME_PUBLISH).unwrap();
        codecs::choose_publish(&offer, false).unwrap()
    }

    #[test]
    fn an_external_source_feeds_sinks_without_knowing_them() {
        let mut e = engine();
        let now = Instant::now();
        e.open_source("room-Room system-cam", h264_codecs())
            .unwrap();
        assert_eq!(
            e.open_source("room-Room system-cam", h264_codecs())
                .unwrap_err(),
            "Stream name is already in use"
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Recorder {
            got: got.clone(),
            budget: 3,
        };
        e.add_sink(now, "room-Room system-cam", Box::new(sink))
            .unwrap();
        assert!(
            e.take_key_frame_request("room-Room system-cam"),
            "a new sink asks for a key frame"
        );
        assert!(!e.take_key_frame_request("room-Room system-cam"), "once");
        for seq in 0..5u16 {
            let mut p = rtc::rtp::Packet::default();
            p.header.sequence_number = seq;
            e.source_packet(now, "room-Room system-cam", Kind::Video, p);
        }
        // The sink said it was done after three packets and was dropped.
        assert_eq!(
            *got.lock().unwrap(),
            vec![(Kind::Video, 0), (Kind::Video, 1), (Kind::Video, 2)]
        );
        assert!(e
            .add_sink(now, "nope", Box::new(Recorder { got, budget: 1 }))
            .is_err());
        e.close_source("room-Room system-cam");
        assert!(e.codecs("room-Room system-cam").is_none());
    }

    #[test]
    fn key_frame_requests_are_coalesced_not_dropped() {
        let mut e = engine();
        let t0 = Instant::now();
        e.open_source("s", h264_codecs()).unwrap();
        e.request_key_frame(t0, "s");
        assert!(e.take_key_frame_request("s"));
        // A second request inside the interval waits for its end.
        e.request_key_frame(t0 + Duration::from_millis(100), "s");
        assert!(!e.take_key_frame_request("s"));
        assert_eq!(e.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        e.handle_timeout(t0 + Duration::from_millis(500));
        assert!(e.take_key_frame_request("s"));
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn the_device_feeds_every_room_stream_and_losing_a_source_fails_them() {
        let mut e = engine();
        let now = Instant::now();
        let publish = |e: &mut Engine, id: &str, stream: &str| {
            e.request(
                now,
                MediaRequest::PublishDevice {
                    session: 0,
                    media_session_id: id.into(),
                    stream: stream.into(),
                },
            )
        };
        // Nothing delivered yet: a publish fails at once.
        publish(&mut e, "d0", "a-Room system");
        assert!(
            matches!(e.poll_event(), Some(MediaEvent::Failed { info, .. }) if info.contains("not available"))
        );
        let codecs = h264_codecs();
        e.device_state(codecs.audio.clone(), codecs.video.clone(), "");
        assert_eq!(
            e.poll_event(),
            Some(MediaEvent::DeviceChanged {
                audio: true,
                video: true
            })
        );
        publish(&mut e, "d1", "a-Room system");
        publish(&mut e, "d2", "b-Room system");
        for id in ["d1", "d2"] {
            assert_eq!(
                e.poll_event(),
                Some(MediaEvent::Up {
                    session: 0,
                    media_session_id: id.into()
                })
            );
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        for stream in ["a-Room system", "b-Room system"] {
            let sink = Recorder {
                got: got.clone(),
                budget: 100,
            };
            e.add_sink(now, stream, Box::new(sink)).unwrap();
        }
        assert!(
            e.take_device_key_frame_request(),
            "new sinks want a key frame"
        );
        assert!(!e.take_device_key_frame_request());
        let mut p = rtc::rtp::Packet::default();
        p.header.sequence_number = 7;
        e.device_packet(now, Kind::Video, p);
        assert_eq!(
            *got.lock().unwrap(),
            vec![(Kind::Video, 7), (Kind::Video, 7)]
        );
        // The camera is gone: both streams fail with the reason, then the change is told.
        e.device_state(
            codecs.audio.clone(),
            None,
            "Camera /dev/video0 failed: No such device",
        );
        for id in ["d1", "d2"] {
            assert_eq!(
                e.poll_event(),
                Some(MediaEvent::Failed {
                    session: 0,
                    media_session_id: id.into(),
                    info: "Camera /dev/video0 failed: No such device".into()
                })
            );
        }
        assert_eq!(
            e.poll_event(),
            Some(MediaEvent::DeviceChanged {
                audio: true,
                video: false
            })
        );
        assert!(
            e.codecs("a-Room system").is_none(),
            "the sources are closed"
        );
        // The same state again changes nothing.
        e.device_state(codecs.audio.clone(), None, "");
        assert_eq!(e.poll_event(), None);
    }

    #[test]
    fn a_play_of_an_unknown_stream_fails_with_stream_not_found() {
        let mut e = engine();
        e.request(
            Instant::now(),
            MediaRequest::Play {
                session: 1,
                media_session_id: "m".into(),
                stream: "nope".into(),
                sdp: codecs::tests::CHROME_PUBLISH.into(),
            },
        );
        assert_eq!(
            e.poll_event(),
            Some(MediaEvent::Failed {
                session: 1,
                media_session_id: "m".into(),
                info: "Stream not found".into()
            })
        );
    }

    #[test]
    fn a_publish_is_answered_ice_lite_with_our_candidate() {
        let mut e = engine();
        e.request(
            Instant::now(),
            MediaRequest::Publish {
                session: 1,
                media_session_id: "m".into(),
                stream: "r-a-1".into(),
                room: "r".into(),
                sdp: codecs::tests::CHROME_PUBLISH.into(),
                has_audio: true,
                has_video: true,
                audience: vec![],
            },
        );
        match e.poll_event() {
            Some(MediaEvent::Answer { sdp, .. }) => {
                assert!(sdp.contains("a=ice-lite\r\n"), "{sdp}");
                assert!(sdp.contains(" 127.0.0.1 20000 typ host"), "{sdp}");
                assert!(sdp.contains("a=setup:passive"), "{sdp}");
                assert!(
                    sdp.contains("a=rtpmap:106 H264/90000\r\na=fmtp:106 "),
                    "{sdp}"
                );
                assert!(!sdp.contains("VP8"), "only the chosen codec: {sdp}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.peers(), 1);
        e.request(
            Instant::now(),
            MediaRequest::Close {
                session: 1,
                media_session_id: "m".into(),
            },
        );
        assert_eq!(e.peers(), 0);
        assert!(e.codecs("r-a-1").is_none());
    }

    fn track(next_seq: u16, next_ts: u32) -> OutTrack {
        OutTrack {
            sender: RTCRtpSenderId::default(),
            payload_type: 100,
            ssrc: 1,
            map: None,
            next_seq,
            next_ts,
            ts_step: 3000,
        }
    }

    #[test]
    fn numbering_is_continuous_across_a_source_change() {
        let mut t = track(1000, 50_000);
        assert_eq!(t.rewrite(7, 40_000, 9_000), (1000, 50_000));
        assert_eq!(t.rewrite(7, 40_001, 12_000), (1001, 53_000));
        // Retransmission of an old packet: mapped, but the continuation stays.
        assert_eq!(t.rewrite(7, 40_000, 9_000), (1000, 50_000));
        // The source restarts with a new SSRC and numbering.
        assert_eq!(t.rewrite(8, 5, 123), (1002, 56_000));
        assert_eq!(t.rewrite(8, 6, 3123), (1003, 59_000));
    }

    #[test]
    fn numbering_wraps() {
        let mut t = track(65_535, u32::MAX);
        assert_eq!(t.rewrite(7, 10, 0), (65_535, u32::MAX));
        assert_eq!(t.rewrite(7, 11, 1), (0, 0));
    }
}
