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

use super::codecs::{self, Chosen, Kind};
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

/// Where a player's copy of one track goes.
#[derive(Debug)]
struct OutTrack {
    sender: RTCRtpSenderId,
    payload_type: u8,
    ssrc: u32,
    /// Sequence and timestamp offsets, fixed by the first forwarded packet.
    offsets: Option<(u16, u32)>,
    first_seq: u16,
    first_ts: u32,
}

#[derive(Debug)]
enum Role {
    Publish {
        stream: String,
        players: Vec<PeerId>,
        /// The browser's video receiver and SSRC, for key-frame requests.
        video: Option<(RTCRtpReceiverId, u32)>,
        last_key_frame_request: Option<Instant>,
        key_frame_wanted: bool,
    },
    Play {
        publisher: PeerId,
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
    /// Stream name → its publishing peer.
    publications: HashMap<String, PeerId>,
    events: VecDeque<MediaEvent>,
    transmits: VecDeque<Transmit>,
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
            events: VecDeque::new(),
            transmits: VecDeque::new(),
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
        self.peers
            .values_mut()
            .filter_map(|p| p.pc.poll_timeout())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
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
        if let Some(Role::Play { publisher, .. }) = self.peers.get(&id).map(|p| &p.role) {
            let publisher = *publisher;
            self.request_key_frame(now, publisher);
        }
    }

    pub fn request(&mut self, now: Instant, request: MediaRequest) {
        match request {
            MediaRequest::Publish {
                session,
                media_session_id,
                stream,
                sdp,
                ..
            } => {
                let result = self.publish(now, session, &media_session_id, &stream, &sdp);
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
            MediaRequest::Close {
                session,
                media_session_id,
            } => {
                if let Some(id) = self.by_media.remove(&(session, media_session_id)) {
                    self.close(id);
                }
            }
        }
    }

    /// Every peer is closed (service shutdown).
    pub fn close_all(&mut self) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.by_media.clear();
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
    ) -> Result<String, String> {
        let offer = codecs::parse_offer(sdp)?;
        let chosen = codecs::choose_publish(&offer, self.cfg.prefer_vp8)?;
        info!(stream = stream; "stream '{stream}': publishing {}", chosen.describe());
        let role = Role::Publish {
            stream: stream.to_owned(),
            players: Vec::new(),
            video: None,
            last_key_frame_request: None,
            key_frame_wanted: false,
        };
        let (id, answer) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            chosen,
            role,
            Direction::Publish,
        )?;
        self.publications.insert(stream.to_owned(), id);
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
        let publisher = *self
            .publications
            .get(stream)
            .ok_or_else(|| "Stream not found".to_owned())?;
        let published = self
            .peers
            .get(&publisher)
            .map(|p| p.chosen.clone())
            .ok_or_else(|| "Stream not found".to_owned())?;
        let offer = codecs::parse_offer(sdp)?;
        let chosen = codecs::choose_play(&offer, &published)?;
        let role = Role::Play {
            publisher,
            audio: None,
            video: None,
        };
        let (id, answer) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            chosen,
            role,
            Direction::Play,
        )?;
        if let Some(Peer {
            role: Role::Publish { players, .. },
            ..
        }) = self.peers.get_mut(&publisher)
        {
            players.push(id);
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
        chosen: Chosen,
        mut role: Role,
        direction: Direction,
    ) -> Result<(PeerId, String), String> {
        let bits = random();
        let ufrag = format!("{:08x}", bits as u32);
        let pwd = format!("{:024x}", bits >> 32);
        let mut pc = peer::build(now, &self.cert, &ufrag, &pwd, &chosen, direction)?;
        if let Role::Play { audio, video, .. } = &mut role {
            let stream_id = format!("huddle-{:08x}", (bits >> 40) as u32);
            for (kind, slot) in [(Kind::Audio, audio), (Kind::Video, video)] {
                let Some(codec) = chosen.get(kind) else {
                    continue;
                };
                let ssrc = (random() as u32).max(1);
                let (rtp_kind, track_id) = match kind {
                    Kind::Audio => (RtpCodecKind::Audio, "audio"),
                    Kind::Video => (RtpCodecKind::Video, "video"),
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
                    offsets: None,
                    first_seq: start as u16,
                    first_ts: (start >> 16) as u32,
                });
            }
        }
        let offer = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|e| format!("Invalid SDP offer: {e}"))?;
        pc.set_remote_description(now, offer)
            .map_err(|e| format!("Invalid SDP offer: {e}"))?;
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
        self.routes.add_peer(ufrag, id);
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
        while let Some(m) = p.pc.poll_write() {
            self.transmits.push_back(Transmit {
                peer: id,
                to: m.transport.peer_addr,
                data: m.message,
            });
        }
        self.routes.remove_peer(id);
        match p.role {
            Role::Publish { stream, .. } => {
                if self.publications.get(&stream) == Some(&id) {
                    self.publications.remove(&stream);
                }
            }
            Role::Play { publisher, .. } => {
                if let Some(Peer {
                    role: Role::Publish { players, .. },
                    ..
                }) = self.peers.get_mut(&publisher)
                {
                    players.retain(|pl| *pl != id);
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

    /// Drains one peer: datagrams out, state changes, media in.
    fn drive(&mut self, now: Instant, id: PeerId) {
        let mut rtp: Vec<(Kind, rtc::rtp::Packet)> = Vec::new();
        let mut key_frame_requested = false;
        let mut became_up = false;
        {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            while let Some(m) = p.pc.poll_write() {
                self.transmits.push_back(Transmit {
                    peer: id,
                    to: m.transport.peer_addr,
                    data: m.message,
                });
            }
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
                            warn!("peer {id} ({}): {info}", p.media_session_id);
                            self.events.push_back(MediaEvent::Failed {
                                session: p.session,
                                media_session_id: p.media_session_id.clone(),
                                info: info.into(),
                            });
                        }
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        if let Role::Publish { video, .. } = &mut p.role {
                            let is_video =
                                p.pc.rtp_receiver(init.receiver_id)
                                    .is_some_and(|r| r.track().kind() == RtpCodecKind::Video);
                            if is_video {
                                *video = Some((init.receiver_id, init.ssrc));
                            }
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
                    RTCMessage::RtcpPacket(_, _) => key_frame_requested = true,
                    _ => {}
                }
            }
        }
        let publisher = match self.peers.get(&id).map(|p| &p.role) {
            Some(Role::Play { publisher, .. }) => Some(*publisher),
            _ => None,
        };
        if let Some(publisher) = publisher {
            if key_frame_requested || became_up {
                self.request_key_frame(now, publisher);
            }
        }
        if !rtp.is_empty() {
            self.forward(now, id, rtp);
        }
        if let Some(Peer {
            role:
                Role::Publish {
                    key_frame_wanted: true,
                    video: Some(_),
                    ..
                },
            ..
        }) = self.peers.get(&id)
        {
            self.request_key_frame(now, id);
        }
    }

    /// PLI to the publisher, at most once per `key_frame_interval`.
    fn request_key_frame(&mut self, now: Instant, publisher: PeerId) {
        let interval = self.cfg.key_frame_interval;
        let Some(p) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Role::Publish {
            video,
            last_key_frame_request,
            key_frame_wanted,
            ..
        } = &mut p.role
        else {
            return;
        };
        if video.is_none() {
            *video = signalled_video(&mut p.pc);
        }
        let Some((receiver, ssrc)) = *video else {
            // The video SSRC is not known yet (not in the offer): ask at the first packet.
            *key_frame_wanted = true;
            return;
        };
        if last_key_frame_request.is_some_and(|t| now.saturating_duration_since(t) < interval) {
            return;
        }
        *last_key_frame_request = Some(now);
        *key_frame_wanted = false;
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Some(mut r) = p.pc.rtp_receiver(receiver) {
            if let Err(e) = r.write_rtcp(now, vec![Box::new(pli)]) {
                debug!("peer {publisher}: PLI: {e}");
            }
        }
        while let Some(m) = p.pc.poll_write() {
            self.transmits.push_back(Transmit {
                peer: publisher,
                to: m.transport.peer_addr,
                data: m.message,
            });
        }
    }

    /// Copies the publisher's packets to every player that is up, rewritten to the
    /// player's payload type, SSRC and sequence/timestamp space.
    fn forward(&mut self, now: Instant, publisher: PeerId, packets: Vec<(Kind, rtc::rtp::Packet)>) {
        let players = match self.peers.get(&publisher).map(|p| &p.role) {
            Some(Role::Publish { players, .. }) => players.clone(),
            _ => return,
        };
        for player in players {
            let Some(p) = self.peers.get_mut(&player) else {
                continue;
            };
            if !p.up {
                continue;
            }
            for (kind, packet) in &packets {
                let Role::Play { audio, video, .. } = &mut p.role else {
                    break;
                };
                let Some(track) = (match kind {
                    Kind::Audio => audio.as_mut(),
                    Kind::Video => video.as_mut(),
                }) else {
                    continue;
                };
                let mut out = packet.clone();
                let (seq_offset, ts_offset) = *track.offsets.get_or_insert((
                    track.first_seq.wrapping_sub(packet.header.sequence_number),
                    track.first_ts.wrapping_sub(packet.header.timestamp),
                ));
                out.header.payload_type = track.payload_type;
                out.header.ssrc = track.ssrc;
                out.header.sequence_number = packet.header.sequence_number.wrapping_add(seq_offset);
                out.header.timestamp = packet.header.timestamp.wrapping_add(ts_offset);
                // Extension ids are the publisher leg's; the player leg adds its own.
                out.header.extension = false;
                out.header.extensions.clear();
                out.header.extension_profile = 0;
                let sender = track.sender;
                if let Some(mut s) = p.pc.rtp_sender(sender) {
                    if let Err(e) = s.write_rtp(now, out) {
                        debug!("peer {player}: write_rtp: {e}");
                    }
                }
            }
            while let Some(m) = p.pc.poll_write() {
                self.transmits.push_back(Transmit {
                    peer: player,
                    to: m.transport.peer_addr,
                    data: m.message,
                });
            }
        }
    }
}
