//! The WebRTC edge, Sans-I/O: every peer connection of the device, the routing of the
//! one UDP socket, SDP answers. Publications, forwarding and key-frame requests are
//! the stream core's (`crate::media::Streams`): a publish peer is a `Source` of it, a
//! play peer a `Sink`, and sources from other edges (the device camera and microphone)
//! are registered by name and fed through `external_packet`.
//!
//! Inputs carry the time (`request`, `datagram`, `handle_timeout`); outputs are
//! drained with `poll_transmit` (datagrams to send) and `poll_event` (what the room
//! core learns: answer, up, failed); `poll_timeout` says when to call again.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::codecs::{self, Chosen, Codec, Family, Kind};
use super::demux::Routes;
use super::peer::{self, Direction};
use super::play_out::{self, PlayOut, WallClock};
use super::shard::{Out, Shards};
use super::simulcast;
use crate::media::bandwidth::{DownstreamLoss, LossReport, Thinning};
use crate::media::speaking::{self, Speakers};
use crate::media::{
    Delivery, Estimator, Event, Numbering, Preference, Renumber, Sink, SinkId, Source, SourceId,
    Stats, StreamError, Streams, Tally,
};
use crate::metrics::{DropReason, MediaCounters};
use crate::rooms::{MediaEvent, MediaRequest, SessionId};

pub type PeerId = u64;

/// A datagram to send from the media socket.
#[derive(Debug)]
pub struct Transmit {
    pub peer: PeerId,
    pub to: SocketAddr,
    pub data: BytesMut,
    /// UDP from the media socket; TCP on the ICE-TCP connection from `to`.
    pub protocol: TransportProtocol,
}

/// A remote end of a path: over UDP, or the TCP connection from that address.
type Remote = (TransportProtocol, SocketAddr);

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
    /// A connected peer that sends nothing this long has vanished (`[media]
    /// ice_timeout_ms`, see `peer::build`).
    pub silence_timeout: Duration,
}

#[derive(Debug)]
enum Role {
    /// `source` is set once the stream core has the publication.
    Publish { source: Option<SourceId> },
    /// `sink` is set once the player is attached to the publication.
    Play {
        stream: String,
        sink: Option<SinkId>,
    },
}

struct Peer {
    session: SessionId,
    media_session_id: String,
    pc: RTCPeerConnection,
    chosen: Chosen,
    role: Role,
    /// A publisher's video receiver and SSRC (for PLI), once known.
    video_in: Option<(RTCRtpReceiverId, u32)>,
    /// A simulcast publisher's layers, low → high: the rid and its SSRC once seen.
    layers: Vec<(String, Option<u32>)>,
    /// A player's bandwidth estimate, the layer cap it set and the SSRC of its video.
    bwe: Estimator,
    cap: Option<usize>,
    /// A player of a stream without layers: its heavy-loss trigger and whether it is
    /// on key frames only now.
    thin: Thinning,
    thinned: bool,
    /// Its reports' loss less the publisher's own (gaps before us).
    downstream: DownstreamLoss,
    video_out: Option<u32>,
    /// A player's media past the peer connection's pipeline, once DTLS is done (on
    /// this task or on a media worker), and where it goes (the selected candidate
    /// pair's remote).
    out: Option<Out>,
    remote: Option<Remote>,
    /// The peer connection's next timer, as of the last call into it (asking it
    /// sweeps its whole pipeline: not once per peer per datagram).
    deadline: Option<Instant>,
    up: bool,
    ice_connected: bool,
    failed: bool,
}

/// The peers and what they send: the edge the stream core lends to the WebRTC
/// sources and sinks while it forwards.
pub struct Peers {
    map: HashMap<PeerId, Peer>,
    routes: Routes<PeerId, Remote>,
    transmits: VecDeque<Transmit>,
}

impl Peers {
    /// Queues what a peer wants sent; the route table notes the STUN requests among
    /// them (only their responses may reach the peer).
    fn push_writes(&mut self, id: PeerId) {
        let Some(p) = self.map.get_mut(&id) else {
            return;
        };
        while let Some(m) = p.pc.poll_write() {
            let protocol = m.transport.transport_protocol;
            self.routes
                .sent(id, (protocol, m.transport.peer_addr), &m.message);
            self.transmits.push_back(Transmit {
                peer: id,
                to: m.transport.peer_addr,
                data: m.message,
                protocol,
            });
        }
        p.deadline = p.pc.poll_timeout();
    }
}

/// Queues a datagram of `play_out` for a peer's selected path.
fn queue(transmits: &mut VecDeque<Transmit>, peer: PeerId, (protocol, to): Remote, data: BytesMut) {
    transmits.push_back(Transmit {
        peer,
        to,
        data,
        protocol,
    });
}

/// A browser's publish peer as a source of the stream core: key frames by PLI.
struct PublisherSource {
    peer: PeerId,
}

impl Source<Peers> for PublisherSource {
    fn key_frame(&mut self, peers: &mut Peers, now: Instant) -> bool {
        let Some(p) = peers.map.get_mut(&self.peer) else {
            return true;
        };
        if p.video_in.is_none() {
            p.video_in = signalled_video(&mut p.pc);
        }
        // The video SSRC is not known yet (not in the offer): ask at the first
        // packet, or retry after the interval.
        let Some((receiver, ssrc)) = p.video_in else {
            return false;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Some(mut r) = p.pc.rtp_receiver(receiver) {
            if let Err(e) = r.write_rtcp(now, vec![Box::new(pli)]) {
                debug!("peer {}: PLI: {e}", self.peer);
            }
        }
        peers.push_writes(self.peer);
        true
    }

    /// A simulcast layer's key frame: a PLI for that layer's SSRC.
    fn layer_key_frame(&mut self, peers: &mut Peers, now: Instant, layer: usize) -> bool {
        let Some(p) = peers.map.get_mut(&self.peer) else {
            return true;
        };
        let ssrc = p.layers.get(layer).and_then(|(_, ssrc)| *ssrc);
        let (Some((receiver, _)), Some(ssrc)) = (p.video_in, ssrc) else {
            // Not arrived yet: asked again after the interval.
            return false;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Some(mut r) = p.pc.rtp_receiver(receiver) {
            if let Err(e) = r.write_rtcp(now, vec![Box::new(pli)]) {
                debug!("peer {}: PLI: {e}", self.peer);
            }
        }
        peers.push_writes(self.peer);
        true
    }
}

/// A browser's play peer as a sink of the stream core: each packet (numbered for
/// this player by the core) goes to the track's RTP sender.
struct PlayerSink {
    peer: PeerId,
    audio: Option<RTCRtpSenderId>,
    video: Option<RTCRtpSenderId>,
}

impl Sink<Peers> for PlayerSink {
    fn packet(
        &mut self,
        peers: &mut Peers,
        now: Instant,
        kind: Kind,
        codec: &Codec,
        packet: Packet,
    ) -> Delivery {
        let Some(p) = peers.map.get_mut(&self.peer) else {
            return Delivery::Done;
        };
        // Past DTLS: protected here (never through the pipeline too: the SSRCs' SRTP
        // indexes are this path's alone); nothing goes without a selected path.
        let keep = kind == Kind::Video;
        match (p.out.as_mut(), p.remote) {
            (Some(Out::Here(out, _)), Some(remote)) => {
                match out.protect(now, packet, codec.clock_rate, keep) {
                    Ok(data) => queue(&mut peers.transmits, self.peer, remote, data),
                    Err(e) => debug!("peer {}: {e}", self.peer),
                }
                return Delivery::Taken;
            }
            // Placed on a worker over UDP: its ring full is a drop, as a full socket.
            (Some(Out::There(lane)), Some((TransportProtocol::UDP, to))) => {
                return match lane.rtp(to, packet, codec.clock_rate, keep) {
                    true => Delivery::Taken,
                    false => Delivery::Dropped,
                };
            }
            (Some(_), _) => return Delivery::Taken,
            (None, _) => {}
        }
        let sender = match kind {
            Kind::Audio => self.audio,
            Kind::Video => self.video,
        };
        if let Some(mut sender) = sender.and_then(|s| p.pc.rtp_sender(s)) {
            if let Err(e) = sender.write_rtp(now, packet) {
                debug!("peer {}: write_rtp: {e}", self.peer);
            }
        }
        peers.push_writes(self.peer);
        Delivery::Taken
    }
}

/// The stream core counts into the media counters.
impl Tally for MediaCounters {
    #[inline]
    fn received(&self, kind: Kind, bytes: usize) {
        self.packets_in[kind.index()].inc();
        self.bytes_in[kind.index()].add(bytes as u64);
    }

    #[inline]
    fn forwarded(&self, kind: Kind, packets: u64, bytes: u64) {
        self.packets_out[kind.index()].add(packets);
        self.bytes_out[kind.index()].add(bytes);
    }

    #[inline]
    fn muted(&self) {
        self.dropped(DropReason::Muted);
    }

    #[inline]
    fn sink_dropped(&self) {
        self.dropped(DropReason::SinkQueueFull);
    }

    #[inline]
    fn key_frame_requested(&self) {
        self.key_frames_requested.inc();
    }
}

/// A play peer's outgoing tracks: the RTP sender and the player's numbering.
#[derive(Default)]
struct PlayTracks {
    audio: Option<(RTCRtpSenderId, Renumber)>,
    video: Option<(RTCRtpSenderId, Renumber)>,
}

pub struct Engine {
    cfg: EngineConfig,
    cert: RTCCertificate,
    next_id: PeerId,
    peers: Peers,
    by_media: HashMap<(SessionId, String), PeerId>,
    media: Streams<Peers>,
    /// Publications fed by named sources, and whose media session they are.
    external: HashMap<String, (SessionId, String)>,
    /// Sinks of other edges attached for a media session (an RTMP player): the
    /// stream and the sink, detached when the session closes it.
    external_players: HashMap<(SessionId, String), (String, SinkId)>,
    /// Streams opened since the last `take_opened` (sinks waiting for a stream name
    /// attach to them).
    opened: Vec<String>,
    /// Video codecs each session's browser offered: what it can decode.
    decoders: HashMap<SessionId, Vec<Family>>,
    events: VecDeque<MediaEvent>,
    /// A peer's RTP packets of one drive, reused (no allocation per datagram).
    rtp: Vec<(Kind, Packet)>,
    /// What the engine and its stream core count (`/metrics`).
    counters: Arc<MediaCounters>,
    /// The ICE-TCP port, when answers offer it (`enable_tcp`).
    tcp_port: Option<u16>,
    /// Who is talking among the publishers whose audio carries RFC 6464 levels:
    /// browsers that negotiated them, and local sources (the device's microphone).
    speaking: Speakers<Voice>,
    /// The streams of each named source, as `speaking` knows them.
    voices: HashMap<SourceId, Vec<Voice>>,
    /// The wall clock of players' sender reports.
    clock: WallClock,
    /// The media workers beside this task (`[media] workers` > 1).
    shards: Option<Shards>,
}

/// A stream `speaking` follows: a WebRTC publisher's, or one a named source feeds
/// (a source may feed a stream in each of several rooms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Voice {
    Peer(PeerId),
    Fed(SourceId, String),
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
        let interval = cfg.key_frame_interval;
        let counters = Arc::new(MediaCounters::default());
        let mut media = Streams::new(interval);
        media.set_tally(counters.clone());
        Engine {
            cfg,
            cert,
            next_id: 1,
            peers: Peers {
                map: HashMap::new(),
                routes: Routes::new(),
                transmits: VecDeque::new(),
            },
            by_media: HashMap::new(),
            media,
            external: HashMap::new(),
            external_players: HashMap::new(),
            opened: Vec::new(),
            decoders: HashMap::new(),
            events: VecDeque::new(),
            rtp: Vec::new(),
            counters,
            tcp_port: None,
            speaking: Speakers::default(),
            voices: HashMap::new(),
            clock: WallClock::new(Instant::now(), std::time::SystemTime::now()),
            shards: None,
        }
    }

    /// Places players whose DTLS is done on these workers too (`[media] workers`).
    pub fn set_shards(&mut self, shards: Shards) {
        self.shards = Some(shards);
    }

    /// The counters the engine, its peers and its stream core count into.
    pub fn counters(&self) -> Arc<MediaCounters> {
        self.counters.clone()
    }

    /// What every publication carries now (the admin API's stream list).
    pub fn stats(&self, now: Instant) -> Vec<Stats> {
        self.media.stats(now)
    }

    pub fn peers(&self) -> usize {
        self.peers.map.len()
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        while let Some(event) = self.media.poll_event() {
            match event {
                Event::Closed { stream, info } => {
                    if let Some((session, media_session_id)) = self.external.remove(&stream) {
                        self.forget_voice(&stream);
                        self.events.push_back(MediaEvent::Failed {
                            session,
                            media_session_id,
                            info,
                        });
                    }
                }
                Event::SourceChanged {
                    source,
                    audio,
                    video,
                } => self.events.push_back(MediaEvent::SourceChanged {
                    source,
                    audio,
                    video,
                }),
            }
        }
        while let Some(a) = self.speaking.poll_activity() {
            self.events.push_back(MediaEvent::Speaking {
                stream: a.stream,
                talking: a.talking,
                loudness: a.loudness,
            });
        }
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.peers.transmits.pop_front()
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let key_frames = self.media.poll_timeout();
        let peers = self.peers.map.values_mut().filter_map(|p| {
            let reports = match &p.out {
                Some(Out::Here(out, _)) => out.poll_timeout(),
                _ => None,
            };
            p.deadline.into_iter().chain(reports).min()
        });
        let speaking = self.speaking.poll_timeout();
        key_frames.into_iter().chain(peers).chain(speaking).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.media.handle_timeout(&mut self.peers, now);
        self.speaking.handle_timeout(now);
        let due: Vec<PeerId> = self
            .peers
            .map
            .iter_mut()
            .filter_map(|(id, p)| p.deadline.is_some_and(|t| t <= now).then_some(*id))
            .collect();
        for id in due {
            if let Some(p) = self.peers.map.get_mut(&id) {
                if let Err(e) = p.pc.handle_timeout(now) {
                    debug!("peer {id}: timeout handling: {e}");
                }
            }
            self.drive(now, id);
        }
        for (id, p) in self.peers.map.iter_mut() {
            if let (Some(Out::Here(out, _)), Some(remote)) = (p.out.as_mut(), p.remote) {
                for data in out.reports(now) {
                    queue(&mut self.peers.transmits, *id, remote, data);
                }
            }
        }
    }

    /// One datagram received on the media socket.
    pub fn datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.receive(now, TransportProtocol::UDP, from, data);
    }

    /// One datagram received over UDP, or one frame of the ICE-TCP connection from
    /// `from`; whether it reached a peer (see `demux::Routes::route`).
    pub fn receive(
        &mut self,
        now: Instant,
        protocol: TransportProtocol,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some(id) = self.peers.routes.route((protocol, from), data) else {
            self.counters.dropped(DropReason::NoRoute);
            return false;
        };
        let local = self.local_address(from, protocol);
        let Some(p) = self.peers.map.get_mut(&id) else {
            return false;
        };
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                ecn: None,
                transport_protocol: protocol,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = p.pc.handle_read(message) {
            self.counters.dropped(DropReason::Invalid);
            debug!("peer {id}: datagram from {from} refused: {e}");
        }
        self.drive(now, id);
        true
    }

    /// Answers also carry a passive ICE-TCP host candidate on `port` (RFC 6544) for
    /// every advertised address.
    pub fn enable_tcp(&mut self, port: u16) {
        self.tcp_port = Some(port);
    }

    /// A datagram toward this peer was dropped (socket full): a player then misses
    /// video and needs a key frame.
    pub fn transmit_dropped(&mut self, now: Instant, id: PeerId) {
        if let Some(Role::Play { stream, sink }) = self.peers.map.get(&id).map(|p| &p.role) {
            let stream = stream.clone();
            match *sink {
                Some(sink) => {
                    self.media
                        .request_sink_key_frame(&mut self.peers, now, &stream, sink)
                }
                None => self.media.request_key_frame(&mut self.peers, now, &stream),
            }
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
            MediaRequest::PublishExternal {
                session,
                media_session_id,
                stream,
                source,
            } => self.publish_external(now, session, media_session_id, stream, &source),
            MediaRequest::Close {
                session,
                media_session_id,
            } => {
                let fed = self
                    .external
                    .iter()
                    .find(|(_, (s, m))| *s == session && *m == media_session_id)
                    .map(|(stream, _)| stream.clone());
                if let Some(stream) = fed {
                    self.external.remove(&stream);
                    self.forget_voice(&stream);
                    self.media.unpublish(&stream);
                }
                let key = (session, media_session_id);
                if let Some((stream, sink)) = self.external_players.remove(&key) {
                    self.media.detach(&stream, sink);
                }
                let (session, media_session_id) = key;
                if let Some(id) = self.by_media.remove(&(session, media_session_id)) {
                    self.close(id);
                }
            }
            MediaRequest::SessionClosed { session } => {
                self.decoders.remove(&session);
            }
            MediaRequest::Mute {
                stream,
                audio,
                video,
            } => {
                if !self
                    .media
                    .set_muted(&mut self.peers, now, &stream, audio, video)
                {
                    debug!(
                        "mute of stream {}: not published",
                        crate::logging::escaped(&stream)
                    );
                }
            }
            // The SFU task attaches the named sink (`play_external`); one that reaches
            // the engine has none.
            MediaRequest::PlayExternal {
                session,
                media_session_id,
                stream,
                sink,
            } => {
                self.play_external(now, session, media_session_id, &stream, Err(&sink));
            }
            MediaRequest::SetLayer {
                session,
                media_session_id,
                layer,
            } => self.set_layer(now, session, &media_session_id, layer),
        }
    }

    /// A player's explicit simulcast layer wish (the web app's tile sizes).
    fn set_layer(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: &str,
        layer: crate::rooms::VideoLayer,
    ) {
        use crate::rooms::VideoLayer;
        let preference = match layer {
            VideoLayer::Auto => Preference::Auto,
            VideoLayer::Low => Preference::Low,
            VideoLayer::Medium => Preference::Medium,
            VideoLayer::High => Preference::High,
        };
        let Some(id) = self.by_media.get(&(session, media_session_id.to_owned())) else {
            return;
        };
        if let Some(Role::Play {
            stream,
            sink: Some(sink),
        }) = self.peers.map.get(id).map(|p| &p.role)
        {
            let (stream, sink) = (stream.clone(), *sink);
            self.media
                .set_layer_preference(&mut self.peers, now, &stream, sink, preference);
        }
    }

    /// A play's simulcast layers: current and target (`None`: the stream has none or
    /// there is no such play).
    pub fn play_layer(
        &self,
        session: SessionId,
        media_session_id: &str,
    ) -> Option<crate::media::SinkLayer> {
        let id = self.by_media.get(&(session, media_session_id.to_owned()))?;
        match &self.peers.map.get(id)?.role {
            Role::Play {
                stream,
                sink: Some(sink),
            } => self.media.sink_layer(stream, *sink),
            _ => None,
        }
    }

    /// Every peer is closed and every stream dropped (service shutdown).
    pub fn close_all(&mut self) {
        let ids: Vec<PeerId> = self.peers.map.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        self.by_media.clear();
        self.media.clear();
        self.external.clear();
        for voice in self.voices.drain().flat_map(|(_, v)| v) {
            self.speaking.remove(&voice);
        }
        self.external_players.clear();
        self.opened.clear();
    }

    // ----- named sources of other edges ------------------------------------------

    /// Registers a source of another edge under a name (the device camera and
    /// microphone; an RTMP publisher): `MediaRequest::PublishExternal` naming it opens
    /// a publication fed by it. It delivers nothing until `external_state`;
    /// `unavailable` is the reason given to a publish meanwhile.
    pub fn add_external(
        &mut self,
        name: &str,
        unavailable: &str,
        source: Box<dyn Source<Peers>>,
    ) -> SourceId {
        self.media.add_named_source(name, unavailable, source)
    }

    /// Ends a named source (its feed is gone): its streams fail, its owner is told.
    pub fn remove_external(&mut self, source: SourceId) {
        self.media
            .set_codecs(source, Chosen::default(), "The media source ended");
        self.media.remove_source(source);
    }

    /// Whether a named source is still registered (a new one of the same name
    /// replaces it).
    pub fn has_external(&self, source: SourceId) -> bool {
        self.media.has_source(source)
    }

    /// What a named source delivers now (`None`: that kind is down, `info` says why).
    /// Streams that lose a kind fail with `info`; the owner of the source is told
    /// (`MediaEvent::SourceChanged`) and may publish again with what is left.
    pub fn external_state(
        &mut self,
        source: SourceId,
        audio: Option<Codec>,
        video: Option<Codec>,
        info: &str,
    ) {
        self.media.set_codecs(source, Chosen { audio, video }, info);
    }

    /// One RTP packet of a named source, for every stream it feeds.
    pub fn external_packet(&mut self, now: Instant, source: SourceId, kind: Kind, packet: &Packet) {
        if kind == Kind::Audio && packet.header.extension {
            for voice in self.voices.get(&source).into_iter().flatten() {
                self.speaking.packet(voice, &packet.header);
            }
        }
        self.media
            .packet(&mut self.peers, now, source, kind, packet);
    }

    /// A stream of a named source ended: `speaking` forgets it.
    fn forget_voice(&mut self, stream: &str) {
        for voices in self.voices.values_mut() {
            voices.retain(|v| match v {
                Voice::Fed(_, s) if s == stream => {
                    self.speaking.remove(v);
                    false
                }
                _ => true,
            });
        }
        self.voices.retain(|_, v| !v.is_empty());
    }

    /// The codecs of a stream (what a sink will receive).
    pub fn codecs(&self, stream: &str) -> Option<&Chosen> {
        self.media.codecs(stream)
    }

    /// Streams opened since the last call (for sinks that wait for a stream name).
    pub fn take_opened(&mut self) -> Vec<String> {
        std::mem::take(&mut self.opened)
    }

    /// Attaches a sink of another edge to a stream (an RTMP push waiting for it): it
    /// gets the source's packets as sent, from a key frame on, until the stream ends.
    /// The stream's codecs, or why not.
    pub fn attach_external(
        &mut self,
        now: Instant,
        stream: &str,
        sink: Box<dyn Sink<Peers>>,
    ) -> Result<(Chosen, SinkId), StreamError> {
        let codecs = self
            .media
            .codecs(stream)
            .cloned()
            .ok_or(StreamError::NotFound)?;
        let id = self
            .media
            .attach(&mut self.peers, now, stream, sink, Numbering::AsSent, true)?;
        Ok((codecs, id))
    }

    /// A media session playing a stream into a sink of another edge (an RTMP
    /// player, `MediaRequest::PlayExternal`): `Up` once attached (the core says
    /// PLAYING), `Failed` with the reason otherwise (`Err`: no sink by that name).
    /// The stream's codecs when attached.
    pub fn play_external(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: String,
        stream: &str,
        sink: Result<Box<dyn Sink<Peers>>, &str>,
    ) -> Option<Chosen> {
        let attached = match sink {
            Ok(sink) => self
                .attach_external(now, stream, sink)
                .map_err(|e| e.to_string()),
            Err(name) => Err(format!("No media sink {}", crate::logging::escaped(name))),
        };
        match attached {
            Ok((codecs, sink)) => {
                self.external_players.insert(
                    (session, media_session_id.clone()),
                    (stream.to_owned(), sink),
                );
                self.events.push_back(MediaEvent::Up {
                    session,
                    media_session_id,
                });
                Some(codecs)
            }
            Err(info) => {
                self.events.push_back(MediaEvent::Failed {
                    session,
                    media_session_id,
                    info,
                });
                None
            }
        }
    }

    /// A sink of another edge lost a key frame (a gap it cannot repair).
    pub fn request_key_frame(&mut self, now: Instant, stream: &str) {
        self.media.request_key_frame(&mut self.peers, now, stream);
    }

    fn publish_external(
        &mut self,
        now: Instant,
        session: SessionId,
        media_session_id: String,
        stream: String,
        source: &str,
    ) {
        let result = match self.media.named_source(source) {
            Some(id) => self.media.publish_from(&stream, id).map(|()| id),
            None => Err(StreamError::Unavailable(format!(
                "No media source {}",
                crate::logging::escaped(source)
            ))),
        };
        match result {
            Ok(id) => {
                // Local sources that measure their audio put its level in their packets.
                let voice = Voice::Fed(id, stream.clone());
                self.speaking
                    .add(now, voice.clone(), &stream, speaking::LOCAL_LEVEL_ID);
                self.voices.entry(id).or_default().push(voice);
                self.opened.push(stream.clone());
                self.external
                    .insert(stream, (session, media_session_id.clone()));
                self.events.push_back(MediaEvent::Up {
                    session,
                    media_session_id,
                });
            }
            Err(e) => self.events.push_back(MediaEvent::Failed {
                session,
                media_session_id,
                info: e.to_string(),
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
        if self.media.codecs(stream).is_some() {
            return Err(StreamError::InUse.to_string());
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
        let rids = if chosen.video.is_some() {
            simulcast::offered_layers(sdp)
        } else {
            Vec::new()
        };
        info!(stream:% = crate::logging::field(stream); "stream {}: publishing {}{}", crate::logging::escaped(stream), chosen.describe(),
            if rids.is_empty() { String::new() } else { format!(", simulcast {}", rids.join("/")) });
        let role = Role::Publish { source: None };
        let layers = rids.len();
        let (id, answer, _) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            (chosen.clone(), chosen.clone()),
            role,
            (Direction::Publish, rids),
        )?;
        let source = Box::new(PublisherSource { peer: id });
        match self.media.add_source(stream, chosen, source) {
            Ok(source) => {
                self.media.set_layers(source, layers);
                self.opened.push(stream.to_owned());
                if let Some(Role::Publish { source: slot, .. }) =
                    self.peers.map.get_mut(&id).map(|p| &mut p.role)
                {
                    *slot = Some(source);
                }
            }
            Err(e) => {
                self.close(id);
                return Err(e.to_string());
            }
        }
        if let Some(ext) = super::audio_level::offered_id(sdp) {
            self.speaking.add(now, Voice::Peer(id), stream, ext);
        }
        self.drive(now, id);
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
            .media
            .codecs(stream)
            .cloned()
            .ok_or_else(|| StreamError::NotFound.to_string())?;
        let offer = codecs::parse_offer(sdp)?;
        self.learn_decoders(session, &offer);
        let chosen = codecs::choose_play(&offer, &published)?;
        let role = Role::Play {
            stream: stream.to_owned(),
            sink: None,
        };
        // A kind the stream lacks (no microphone on a screen share) is still negotiated,
        // an m-line in the bundle with no track: a rejected first m-line would carry the
        // candidates away from the one that is used.
        let negotiated = codecs::fill_missing(&offer, &chosen);
        let (id, answer, tracks) = self.add_peer(
            now,
            session,
            media_session_id,
            sdp,
            (chosen, negotiated),
            role,
            (Direction::Play, Vec::new()),
        )?;
        if let Some(p) = self.peers.map.get_mut(&id) {
            p.video_out = tracks.video.as_ref().map(|(_, n)| n.ssrc);
        }
        let sink = Box::new(PlayerSink {
            peer: id,
            audio: tracks.audio.as_ref().map(|(sender, _)| *sender),
            video: tracks.video.as_ref().map(|(sender, _)| *sender),
        });
        let numbering = Numbering::Own {
            audio: tracks.audio.map(|(_, n)| n),
            video: tracks.video.map(|(_, n)| n),
        };
        // Inactive until the peer is up.
        match self
            .media
            .attach(&mut self.peers, now, stream, sink, numbering, false)
        {
            Ok(sink) => {
                if let Some(Role::Play { sink: slot, .. }) =
                    self.peers.map.get_mut(&id).map(|p| &mut p.role)
                {
                    *slot = Some(sink);
                }
            }
            Err(e) => {
                self.close(id);
                return Err(e.to_string());
            }
        }
        self.drive(now, id);
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
        role: Role,
        (direction, rids): (Direction, Vec<String>),
    ) -> Result<(PeerId, String, PlayTracks), String> {
        let bits = random();
        let ufrag = format!("{:08x}", bits as u32);
        let pwd = format!("{:024x}", bits >> 32);
        let mut pc = peer::build(
            now,
            &self.cert,
            (&ufrag, &pwd),
            &negotiated,
            (direction, !rids.is_empty()),
            self.cfg.silence_timeout,
            &self.counters,
        )?;
        let mut tracks = PlayTracks::default();
        if direction == Direction::Play {
            let stream_id = format!("huddle-{:08x}", (bits >> 40) as u32);
            for (kind, slot) in [
                (Kind::Audio, &mut tracks.audio),
                (Kind::Video, &mut tracks.video),
            ] {
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
                let numbering = Renumber::new(
                    codec.payload_type,
                    ssrc,
                    start as u16,
                    (start >> 16) as u32,
                    ts_step,
                );
                *slot = Some((sender, numbering));
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
            if let Some(port) = self.tcp_port {
                peer::add_tcp_host_candidate(&mut pc, SocketAddr::new(*ip, port))?;
            }
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
        self.peers.routes.add_peer(ufrag, &pwd, id);
        self.by_media
            .insert((session, media_session_id.to_owned()), id);
        self.peers.map.insert(
            id,
            Peer {
                session,
                media_session_id: media_session_id.to_owned(),
                pc,
                chosen,
                role,
                video_in: None,
                layers: rids.into_iter().map(|rid| (rid, None)).collect(),
                bwe: Estimator::default(),
                cap: None,
                thin: Thinning::default(),
                thinned: false,
                downstream: DownstreamLoss::default(),
                video_out: None,
                out: None,
                remote: None,
                deadline: None,
                up: false,
                ice_connected: false,
                failed: false,
            },
        );
        Ok((id, sdp, tracks))
    }

    fn close(&mut self, id: PeerId) {
        // The DTLS close alert goes out first, so the browser notices at once.
        if let Some(p) = self.peers.map.get_mut(&id) {
            if let Err(e) = p.pc.close() {
                debug!("peer {id}: close: {e}");
            }
        }
        self.peers.push_writes(id);
        self.speaking.remove(&Voice::Peer(id));
        let Some(p) = self.peers.map.remove(&id) else {
            return;
        };
        self.by_media
            .remove(&(p.session, p.media_session_id.clone()));
        self.peers.routes.remove_peer(id);
        match p.role {
            Role::Publish {
                source: Some(source),
            } => self.media.remove_source(source),
            Role::Play {
                stream,
                sink: Some(sink),
            } => self.media.detach(&stream, sink),
            Role::Publish { .. } | Role::Play { .. } => {}
        }
    }

    /// The local address a datagram from `from` arrived on, as the ICE agent knows it:
    /// the advertised address of the peer's kind (loopback for loopback peers), with
    /// the port of the transport.
    fn local_address(&self, from: SocketAddr, protocol: TransportProtocol) -> SocketAddr {
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
        let port = match (protocol, self.tcp_port) {
            (TransportProtocol::TCP, Some(port)) => port,
            _ => self.cfg.port,
        };
        SocketAddr::new(ip, port)
    }

    /// Drains one peer: datagrams out, state changes, media in.
    fn drive(&mut self, now: Instant, id: PeerId) {
        let mut rtp = std::mem::take(&mut self.rtp);
        let mut key_frame_requested = false;
        let mut became_up = false;
        let mut video_opened = false;
        let mut feedback = false;
        let mut report: Option<LossReport> = None;
        self.peers.push_writes(id);
        let Some(p) = self.peers.map.get_mut(&id) else {
            self.rtp = rtp;
            return;
        };
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
                        // Connected, then failed: the peer went silent (its network
                        // or its process gone), which is ICE's to tell, not DTLS's.
                        let info = if p.ice_connected && !p.up {
                            self.counters.dtls_failures.inc();
                            "Failed by DTLS error"
                        } else {
                            self.counters.ice_failures.inc();
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
                        if p.video_in.is_none() || p.layers.is_empty() {
                            p.video_in = Some((init.receiver_id, init.ssrc));
                        }
                        // A simulcast layer: its SSRC, by its rid.
                        if let Some((_, ssrc)) = init
                            .rid
                            .as_deref()
                            .and_then(|rid| p.layers.iter_mut().find(|(r, _)| r == rid))
                        {
                            *ssrc = Some(init.ssrc);
                        }
                        video_opened = true;
                    }
                }
                _ => {}
            }
        }
        if matches!(p.role, Role::Play { .. }) && p.up {
            p.remote = p.pc.selected_remote();
            // A thread sends over UDP only: a path moved to ICE-TCP brings the player
            // back to the task.
            if matches!(
                (&p.out, p.remote),
                (Some(Out::There(_)), Some((TransportProtocol::TCP, _)))
            ) {
                p.out = p.out.take().and_then(Out::recall);
            }
            if p.out.is_none() {
                if let Some(keys) = p.pc.local_srtp_keys() {
                    match PlayOut::new(keys, self.clock) {
                        // A worker sends over UDP only: ICE-TCP players stay here.
                        Ok(out) => match (&self.shards, p.remote) {
                            (Some(shards), Some((TransportProtocol::UDP, _))) => {
                                p.out = shards.place(id, out);
                            }
                            _ => p.out = Some(Out::here(out, self.counters.clone())),
                        },
                        Err(e) => warn!("peer {id}: {e}; its media goes through the pipeline"),
                    }
                }
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
                // PLI and FIR are delivered, and a player's REMB and receiver reports
                // (peer::KeyFrameRequests).
                RTCMessage::RtcpPacket(_, packets) => {
                    match (p.out.as_mut(), p.remote) {
                        (Some(Out::Here(out, _)), Some(remote)) => {
                            for (ssrc, seqs) in play_out::nacked(&packets) {
                                for data in out.resend(now, ssrc, &seqs) {
                                    self.counters.retransmitted.inc();
                                    queue(&mut self.peers.transmits, id, remote, data);
                                }
                            }
                        }
                        (Some(Out::There(lane)), Some((TransportProtocol::UDP, to))) => {
                            for (ssrc, seqs) in play_out::nacked(&packets) {
                                lane.nack(to, ssrc, seqs);
                            }
                        }
                        _ => {}
                    }
                    let f = simulcast::read_feedback(&packets, p.video_out);
                    key_frame_requested |= f.key_frame;
                    if let Some(bps) = f.remb {
                        p.bwe.remb(now, bps);
                        feedback = true;
                    }
                    if f.loss.is_some() {
                        report = f.loss;
                        feedback = true;
                    }
                }
                _ => {}
            }
        }
        match &p.role {
            Role::Publish {
                source: Some(source),
            } => {
                let source = *source;
                // A simulcast publisher's video goes in by layer (its SSRC's rid);
                // packets of an SSRC no rid named are not forwarded.
                let mut layer_ssrcs = [None; simulcast::MAX_LAYERS];
                for (slot, (_, ssrc)) in layer_ssrcs.iter_mut().zip(&p.layers) {
                    *slot = *ssrc;
                }
                let layered = !p.layers.is_empty();
                if video_opened {
                    self.media.source_ready(&mut self.peers, now, source);
                }
                for (kind, packet) in rtp.drain(..) {
                    if kind == Kind::Audio {
                        self.speaking.packet(&Voice::Peer(id), &packet.header);
                    }
                    if layered && kind == Kind::Video {
                        let ssrc = Some(packet.header.ssrc);
                        if let Some(layer) = layer_ssrcs.iter().position(|s| *s == ssrc) {
                            self.media
                                .layer_packet(&mut self.peers, now, source, layer, &packet);
                        }
                        continue;
                    }
                    self.media
                        .packet(&mut self.peers, now, source, kind, &packet);
                }
            }
            Role::Play {
                stream,
                sink: Some(sink),
            } if became_up || key_frame_requested || feedback => {
                let (stream, sink) = (stream.clone(), *sink);
                // The player's bandwidth caps its simulcast layer; without layers, heavy
                // loss puts it on key frames only.
                let mut thin = None;
                let cap = if feedback {
                    // The loss on our side: the publisher's own (gaps before us) is not
                    // this player's to pay for.
                    let lost = report.and_then(|r| {
                        let skipped =
                            self.media
                                .sink_video_skipped(&stream, sink, r.highest as u16);
                        p.downstream.report(r, skipped)
                    });
                    if let Some(fraction) = lost {
                        p.bwe.loss(fraction);
                    }
                    let bitrates = self.media.layer_bitrates(now, &stream);
                    if bitrates.is_empty() {
                        let on = p.thin.report(now, lost);
                        if on != p.thinned {
                            p.thinned = on;
                            thin = Some(on);
                        }
                    }
                    let cap = p.bwe.cap(now, &bitrates);
                    (cap != p.cap).then(|| {
                        p.cap = cap;
                        cap
                    })
                } else {
                    None
                };
                let estimate = p.bwe.estimate(now);
                if let Some(on) = thin {
                    debug!("peer {id}: key frames only: {on}");
                    self.media
                        .set_key_frames_only(&mut self.peers, now, &stream, sink, on);
                }
                if let Some(cap) = cap {
                    debug!("peer {id}: layer cap {cap:?} (estimate {estimate:?} bps)");
                    self.media
                        .set_layer_cap(&mut self.peers, now, &stream, sink, cap);
                }
                if became_up {
                    // Active now; it asks for a key frame.
                    self.media.activate(&mut self.peers, now, &stream, sink);
                } else if key_frame_requested {
                    self.media
                        .request_sink_key_frame(&mut self.peers, now, &stream, sink);
                }
            }
            _ => {}
        }
        if let Some(p) = self.peers.map.get_mut(&id) {
            p.deadline = p.pc.poll_timeout();
        }
        rtp.clear();
        self.rtp = rtp;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::KeyFrameFlag;

    fn engine() -> Engine {
        let cert = super::super::task::certificate().unwrap();
        Engine::new(
            EngineConfig {
                advertise: vec![IpAddr::from([127, 0, 0, 1])],
                port: 20_000,
                prefer_vp8: false,
                key_frame_interval: Duration::from_millis(500),
                silence_timeout: Duration::from_secs(15),
            },
            cert,
        )
    }

    fn h264_codecs() -> Chosen {
        let offer = codecs::parse_offer(codecs::tests::CHROME_PUBLISH).unwrap();
        codecs::choose_publish(&offer, false).unwrap()
    }

    #[test]
    fn a_named_source_is_published_by_request_and_its_losses_fail_the_streams() {
        let mut e = engine();
        let now = Instant::now();
        let flag = KeyFrameFlag::default();
        let cam = e.add_external("cam", "The camera is not available", Box::new(flag));
        let publish = |e: &mut Engine, id: &str, stream: &str, source: &str| {
            e.request(
                now,
                MediaRequest::PublishExternal {
                    session: 0,
                    media_session_id: id.into(),
                    stream: stream.into(),
                    source: source.into(),
                },
            )
        };
        // Nothing delivered yet: a publish fails at once, as does an unknown source.
        publish(&mut e, "d0", "a-Room system", "cam");
        assert!(
            matches!(e.poll_event(), Some(MediaEvent::Failed { info, .. }) if info == "The camera is not available")
        );
        publish(&mut e, "d0", "a-Room system", "nope");
        assert!(
            matches!(e.poll_event(), Some(MediaEvent::Failed { info, .. }) if info == "No media source \"nope\"")
        );
        let codecs = h264_codecs();
        e.external_state(cam, codecs.audio.clone(), codecs.video.clone(), "");
        assert_eq!(
            e.poll_event(),
            Some(MediaEvent::SourceChanged {
                source: "cam".into(),
                audio: true,
                video: true
            })
        );
        publish(&mut e, "d1", "a-Room system", "cam");
        publish(&mut e, "d2", "b-Room system", "cam");
        for id in ["d1", "d2"] {
            assert_eq!(
                e.poll_event(),
                Some(MediaEvent::Up {
                    session: 0,
                    media_session_id: id.into()
                })
            );
        }
        // Closing one media session ends only its stream.
        e.request(
            now,
            MediaRequest::Close {
                session: 0,
                media_session_id: "d2".into(),
            },
        );
        assert!(e.codecs("b-Room system").is_none());
        // The camera is gone: the stream fails with the reason, then the change is told.
        e.external_state(cam, codecs.audio.clone(), None, "Camera failed");
        assert_eq!(
            e.poll_event(),
            Some(MediaEvent::Failed {
                session: 0,
                media_session_id: "d1".into(),
                info: "Camera failed".into()
            })
        );
        assert!(matches!(
            e.poll_event(),
            Some(MediaEvent::SourceChanged { video: false, .. })
        ));
        assert!(e.codecs("a-Room system").is_none());
        // The source's feed is gone: its streams fail, the name is free.
        publish(&mut e, "d3", "c-Room system", "cam");
        assert!(matches!(e.poll_event(), Some(MediaEvent::Up { .. })));
        e.remove_external(cam);
        assert!(
            matches!(e.poll_event(), Some(MediaEvent::Failed { info, .. }) if info == "The media source ended")
        );
        assert!(!e.has_external(cam));
    }

    struct Kinds(std::sync::Arc<std::sync::Mutex<Vec<Kind>>>);

    impl Sink<Peers> for Kinds {
        fn packet(
            &mut self,
            _peers: &mut Peers,
            _now: Instant,
            kind: Kind,
            _codec: &Codec,
            _packet: Packet,
        ) -> Delivery {
            self.0.lock().unwrap().push(kind);
            Delivery::Taken
        }
    }

    #[test]
    fn a_mute_request_withholds_the_kind_and_is_counted() {
        let mut e = engine();
        let now = Instant::now();
        let flag = KeyFrameFlag::default();
        let cam = e.add_external("cam", "off", Box::new(flag.clone()));
        let codecs = h264_codecs();
        e.external_state(cam, codecs.audio.clone(), codecs.video.clone(), "");
        e.request(
            now,
            MediaRequest::PublishExternal {
                session: 0,
                media_session_id: "d".into(),
                stream: "s".into(),
                source: "cam".into(),
            },
        );
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        e.attach_external(now, "s", Box::new(Kinds(got.clone())))
            .unwrap();
        let mute = |e: &mut Engine, video: bool, at: Instant| {
            e.request(
                at,
                MediaRequest::Mute {
                    stream: "s".into(),
                    audio: false,
                    video,
                },
            )
        };
        mute(&mut e, true, now);
        let mut p = Packet {
            payload: bytes::Bytes::from_static(&[0x41, 0x9a, 0x00]),
            ..Packet::default()
        };
        e.external_packet(now, cam, Kind::Video, &p);
        e.external_packet(now, cam, Kind::Audio, &p);
        assert_eq!(*got.lock().unwrap(), vec![Kind::Audio]);
        let c = e.counters();
        assert_eq!(c.dropped[DropReason::Muted as usize].get(), 1);
        assert_eq!(c.packets_in[0].get() + c.packets_in[1].get(), 2);
        assert_eq!(c.packets_out[0].get(), 1);
        assert_eq!(c.bytes_out[0].get(), 3);
        flag.take();
        let later = now + Duration::from_secs(1);
        mute(&mut e, false, later);
        assert!(flag.take(), "a key frame at the video unmute");
        assert_eq!(c.key_frames_requested.get(), 2);
        // An IDR (single NAL) resumes video.
        p.payload = bytes::Bytes::from_static(&[0x65, 0x88, 0x00]);
        e.external_packet(later, cam, Kind::Video, &p);
        assert_eq!(*got.lock().unwrap(), vec![Kind::Audio, Kind::Video]);
        let stats = e.stats(later);
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].sinks, 1);
        // An unknown datagram is counted as unroutable.
        e.datagram(later, "127.0.0.1:9".parse().unwrap(), &[0x80, 0x60, 0, 1]);
        assert_eq!(c.dropped[DropReason::NoRoute as usize].get(), 1);
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
}
