//! The I/O around the SFU engine: one tokio task owns the media UDP socket and the
//! engine; requests come in on a bounded channel, events go out on another. Sends
//! never wait: a datagram the socket cannot take now is dropped (and a player that
//! lost video asks its publisher for a key frame).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::shared::TransportProtocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::codecs::{Codec, Kind};
use super::engine::{Engine, EngineConfig, Peers};
use super::send::{UdpBatch, UdpReceive, RECV_BATCH};
use super::shard::Shards;
use super::tcp::{self, Connections, Inbound, TcpIn};
use crate::config::Media;
use std::collections::HashMap;

use crate::media::{Chosen, Delivery, KeyFrameFlag, Sink, SourceId, StreamError};
use crate::rooms::{MediaEvent, MediaRequest};

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    // The OS error in the message, not as a `source`: a chain would print it twice.
    #[error("cannot bind the media UDP port {port} ([media] udp_port): {why}")]
    Bind { port: u16, why: std::io::Error },
    #[error("cannot listen on the ICE-TCP port {port} ([media] tcp_port; 0 turns it off): {why}")]
    BindTcp { port: u16, why: std::io::Error },
    #[error("cannot create the DTLS certificate: {0}")]
    Certificate(String),
    #[error("no address to advertise: set [media] advertise_ips")]
    NoAddress,
}

enum Command {
    Request(MediaRequest),
    /// A named source of another edge and its inputs (see `Sfu::add_source`).
    AddSource {
        name: String,
        unavailable: String,
        inputs: mpsc::Receiver<SourceInput>,
        key_frame: KeyFrameFlag,
    },
    /// A named sink of another edge (an RTMP player): `MediaRequest::PlayExternal`
    /// naming it attaches it to the stream; each attachment is sent to `attachments`.
    AddSink {
        name: String,
        attachments: mpsc::Sender<Attachment>,
    },
    /// A sink waiting for a stream name (an RTMP push): attached to the stream now if
    /// it is published, and to every later publication of that name.
    Watch {
        stream: String,
        attachments: mpsc::Sender<Attachment>,
    },
    /// A sink of another edge needs a key frame of this stream.
    KeyFrame {
        stream: String,
    },
    /// A sink of another edge attached to a stream now (a recorder).
    Attach {
        stream: String,
        /// Only the stream's audio (the device's speaker): video is not queued.
        audio_only: bool,
        reply: tokio::sync::oneshot::Sender<Result<Attachment, StreamError>>,
    },
    /// The codecs of a stream, if it is published.
    Codecs {
        stream: String,
        reply: tokio::sync::oneshot::Sender<Option<Chosen>>,
    },
    /// What flows in every published stream now.
    Stats {
        reply: tokio::sync::oneshot::Sender<Vec<StreamStats>>,
    },
    /// Liveness probe: answered when the task comes round its loop.
    Heartbeat(tokio::sync::oneshot::Sender<()>),
    Shutdown,
}

/// Asks the SFU task whether it is alive, for the service watchdog.
#[derive(Clone)]
pub struct SfuProbe {
    commands: mpsc::Sender<Command>,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Did not answer in time.
    Hung,
    /// The task is gone (it panicked or ended).
    Dead,
}

impl SfuProbe {
    pub async fn ping(&self, timeout: Duration) -> Liveness {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let probe = async {
            if self.commands.send(Command::Heartbeat(reply)).await.is_err() {
                return Liveness::Dead;
            }
            match answer.await {
                Ok(()) => Liveness::Alive,
                Err(_) => Liveness::Dead,
            }
        };
        tokio::time::timeout(timeout, probe)
            .await
            .unwrap_or(Liveness::Hung)
    }
}

/// What a named source of another edge (the device's capture threads, next an RTMP
/// publisher) hands the SFU task.
#[derive(Debug)]
pub enum SourceInput {
    /// The codecs the camera and microphone deliver now (`None`: down, `info` says why).
    State {
        audio: Option<Codec>,
        video: Option<Codec>,
        info: String,
    },
    Packet(Kind, rtc::rtp::Packet),
}

/// A named source's way into the SFU (`Sfu::add_source`): the task hands what comes
/// in to the stream core's source of that name; its key-frame requests set the shared
/// flag the source polls. The source ends when every clone of its feed is dropped.
#[derive(Clone)]
pub struct SourceFeed {
    tx: mpsc::Sender<SourceInput>,
    key_frame: KeyFrameFlag,
}

/// The device's camera and microphone are one `SourceFeed`.
pub type DeviceFeed = SourceFeed;
pub type DeviceInput = SourceInput;

/// Packets of one source queued toward the SFU task: about a second of 720p video.
const SOURCE_QUEUE: usize = 256;

impl SourceFeed {
    /// A feed and the receiving end the SFU task reads (also for tests).
    pub fn channel() -> (SourceFeed, mpsc::Receiver<SourceInput>, KeyFrameFlag) {
        let (tx, rx) = mpsc::channel(SOURCE_QUEUE);
        let key_frame = KeyFrameFlag::default();
        (
            SourceFeed {
                tx,
                key_frame: key_frame.clone(),
            },
            rx,
            key_frame,
        )
    }

    /// Announces what the sources deliver; waits for room in the queue (a state
    /// change must not be lost). Call from a plain thread, not from async code.
    pub fn state(&self, audio: Option<Codec>, video: Option<Codec>, info: String) -> bool {
        self.tx
            .blocking_send(SourceInput::State { audio, video, info })
            .is_ok()
    }

    /// One packet; `false` when the queue is full (the packet is dropped) or the SFU
    /// is gone.
    pub fn packet(&self, kind: Kind, packet: rtc::rtp::Packet) -> bool {
        self.tx.try_send(SourceInput::Packet(kind, packet)).is_ok()
    }

    /// Whether the SFU task is gone (the service is stopping): nothing is delivered
    /// any more, and that is no loss to report.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// `state` from async code: waits for room in the queue without blocking a thread.
    pub async fn announce(&self, audio: Option<Codec>, video: Option<Codec>, info: String) -> bool {
        self.tx
            .send(SourceInput::State { audio, video, info })
            .await
            .is_ok()
    }

    /// Whether a player asked for a key frame since the last call.
    pub fn take_key_frame_request(&self) -> bool {
        self.key_frame.take()
    }

    /// Asks for a key frame (a dropped packet broke the picture).
    pub fn want_key_frame(&self) {
        self.key_frame.set();
    }
}

/// Packets of one stream queued toward a sink of another edge: about a second of
/// 720p video with its audio. A full queue drops (and asks the source for a key frame).
const SINK_QUEUE: usize = 512;
/// Attachments queued toward one named sink or watcher.
const ATTACHMENTS: usize = 4;

/// One stream a sink of another edge is attached to: its codecs (the source's, with
/// its payload types) and its RTP packets as the source sent them, from a key frame
/// on. `packets` ends when the stream does.
#[derive(Debug)]
pub struct Attachment {
    pub stream: String,
    pub codecs: Chosen,
    pub packets: mpsc::Receiver<(Kind, rtc::rtp::Packet)>,
    pub key_frame: KeyFrameRequest,
}

/// A sink's way to ask the stream's source for a key frame (it lost one on its side).
#[derive(Debug, Clone)]
pub struct KeyFrameRequest {
    commands: mpsc::Sender<Command>,
    stream: String,
}

impl KeyFrameRequest {
    pub fn request(&self) {
        let stream = self.stream.clone();
        let _ = self.commands.try_send(Command::KeyFrame { stream });
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The stream core's sink for an edge in another task: packets go into a bounded
/// queue, never waiting (full: dropped, the core asks for a key frame).
struct ChannelSink {
    tx: mpsc::Sender<(Kind, rtc::rtp::Packet)>,
    /// Video is taken and dropped here (an audio-only sink).
    audio_only: bool,
}

impl Sink<Peers> for ChannelSink {
    fn packet(
        &mut self,
        _peers: &mut Peers,
        _now: Instant,
        kind: Kind,
        _codec: &Codec,
        packet: rtc::rtp::Packet,
    ) -> Delivery {
        if self.audio_only && kind == Kind::Video {
            return Delivery::Taken;
        }
        match self.tx.try_send((kind, packet)) {
            Ok(()) => Delivery::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Dropped,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Done,
        }
    }
}

/// Registers named sources and sinks of other edges from any task (the RTMP edge).
#[derive(Clone)]
pub struct Endpoints {
    commands: mpsc::Sender<Command>,
}

impl Endpoints {
    /// See `Sfu::add_source`.
    pub fn add_source(&self, name: &str, unavailable: &str) -> Option<SourceFeed> {
        let (feed, inputs, key_frame) = SourceFeed::channel();
        let command = Command::AddSource {
            name: name.to_owned(),
            unavailable: unavailable.to_owned(),
            inputs,
            key_frame,
        };
        self.commands.try_send(command).ok().map(|()| feed)
    }

    /// A named sink (an RTMP player's): each `MediaRequest::PlayExternal` naming it
    /// delivers an `Attachment` here. It is forgotten when the receiver is dropped.
    /// `None` when the task's queue is full or the task is gone.
    pub fn add_sink(&self, name: &str) -> Option<mpsc::Receiver<Attachment>> {
        let (attachments, rx) = mpsc::channel(ATTACHMENTS);
        let command = Command::AddSink {
            name: name.to_owned(),
            attachments,
        };
        self.commands.try_send(command).ok().map(|()| rx)
    }

    /// The codecs of a published stream (`None`: not published, or the task is gone),
    /// for an edge that refuses what it cannot carry before anyone sees it.
    pub async fn codecs(&self, stream: &str) -> Option<Chosen> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = Command::Codecs {
            stream: stream.to_owned(),
            reply,
        };
        self.commands.send(command).await.ok()?;
        answer.await.ok().flatten()
    }

    /// A sink attached to a published stream now (a recorder): its packets from a key
    /// frame on, until the stream ends.
    pub async fn attach(&self, stream: &str) -> Result<Attachment, StreamError> {
        self.attach_kinds(stream, false).await
    }

    /// A sink of a published stream's audio only (the device's speaker): its video is
    /// never queued toward it.
    pub async fn attach_audio(&self, stream: &str) -> Result<Attachment, StreamError> {
        self.attach_kinds(stream, true).await
    }

    async fn attach_kinds(
        &self,
        stream: &str,
        audio_only: bool,
    ) -> Result<Attachment, StreamError> {
        let gone = || StreamError::Unavailable("The media engine is gone".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = Command::Attach {
            stream: stream.to_owned(),
            audio_only,
            reply,
        };
        self.commands.send(command).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// What flows in every published stream now (the admin API's stream list),
    /// sorted by stream name; empty when the task is gone.
    pub async fn stream_stats(&self) -> Vec<StreamStats> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Stats { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// A sink waiting for a stream name (an RTMP push): one `Attachment` for the
    /// publication of that name now, if any, and for each later one. It is forgotten
    /// when the receiver is dropped.
    pub async fn watch(&self, stream: &str) -> Option<mpsc::Receiver<Attachment>> {
        let (attachments, rx) = mpsc::channel(ATTACHMENTS);
        let command = Command::Watch {
            stream: stream.to_owned(),
            attachments,
        };
        self.commands.send(command).await.ok().map(|()| rx)
    }
}

/// One published stream as the media engine sees it.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub stream: String,
    /// The source's codecs.
    pub codecs: Chosen,
    /// The picture size of the last key frame, when known (H.264 SPS, VP8 key frame).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Received bits per second over the last few seconds.
    pub audio_bps: u64,
    pub video_bps: u64,
    /// Sinks attached (players, RTMP players and pushes, recorders).
    pub sinks: usize,
}

impl From<crate::media::Stats> for StreamStats {
    fn from(s: crate::media::Stats) -> Self {
        StreamStats {
            stream: s.stream,
            codecs: s.codecs,
            width: s.size.map(|(w, _)| w),
            height: s.size.map(|(_, h)| h),
            audio_bps: s.audio_bps,
            video_bps: s.video_bps,
            sinks: s.sinks,
        }
    }
}

fn stream_stats(engine: &Engine) -> Vec<StreamStats> {
    let mut all: Vec<StreamStats> = engine
        .stats(now())
        .into_iter()
        .map(StreamStats::from)
        .collect();
    all.sort_by(|a, b| a.stream.cmp(&b.stream));
    all
}

/// The sinks of other edges the task knows: named ones (players) and those waiting
/// for a stream name (pushes).
#[derive(Default)]
struct ExternalSinks {
    named: HashMap<String, mpsc::Sender<Attachment>>,
    watchers: Vec<(String, mpsc::Sender<Attachment>)>,
}

impl ExternalSinks {
    fn attachment(
        commands: &mpsc::Sender<Command>,
        stream: &str,
    ) -> (ChannelSink, impl FnOnce(Chosen) -> Attachment) {
        let (tx, packets) = mpsc::channel(SINK_QUEUE);
        let key_frame = KeyFrameRequest {
            commands: commands.clone(),
            stream: stream.to_owned(),
        };
        let stream = stream.to_owned();
        let make = move |codecs| Attachment {
            stream,
            codecs,
            packets,
            key_frame,
        };
        (
            ChannelSink {
                tx,
                audio_only: false,
            },
            make,
        )
    }

    /// Attaches the watchers of `stream` to it.
    fn opened(&mut self, engine: &mut Engine, commands: &mpsc::Sender<Command>, stream: &str) {
        self.watchers.retain(|(_, tx)| !tx.is_closed());
        for (_, tx) in self.watchers.iter().filter(|(s, _)| s == stream) {
            Self::attach_watcher(engine, commands, stream, tx);
        }
    }

    fn attach_watcher(
        engine: &mut Engine,
        commands: &mpsc::Sender<Command>,
        stream: &str,
        tx: &mpsc::Sender<Attachment>,
    ) {
        let (sink, make) = Self::attachment(commands, stream);
        if let Ok((codecs, _)) = engine.attach_external(now(), stream, Box::new(sink)) {
            if tx.try_send(make(codecs)).is_err() {
                warn!(
                    "a sink waiting for stream {} does not take it",
                    crate::logging::escaped(stream)
                );
            }
        }
    }

    fn play(
        &mut self,
        engine: &mut Engine,
        commands: &mpsc::Sender<Command>,
        request: MediaRequest,
    ) {
        let MediaRequest::PlayExternal {
            session,
            media_session_id,
            stream,
            sink,
        } = request
        else {
            return engine.request(now(), request);
        };
        let Some(tx) = self.named.get(&sink).filter(|tx| !tx.is_closed()) else {
            self.named.remove(&sink);
            engine.play_external(now(), session, media_session_id, &stream, Err(&sink));
            return;
        };
        let (channel, make) = Self::attachment(commands, &stream);
        let codecs = engine.play_external(
            now(),
            session,
            media_session_id,
            &stream,
            Ok(Box::new(channel)),
        );
        if let Some(codecs) = codecs {
            // The receiver gone meanwhile: the sink is done at its first packet.
            let _ = tx.try_send(make(codecs));
        }
    }
}

/// Handle of the running SFU task.
pub struct Sfu {
    commands: mpsc::Sender<Command>,
    port: u16,
    /// The ICE-TCP port, when on.
    tcp_port: Option<u16>,
    tcp_task: Option<JoinHandle<()>>,
    advertise: Vec<IpAddr>,
    peers: Arc<AtomicUsize>,
    counters: Arc<crate::metrics::MediaCounters>,
    task: JoinHandle<()>,
}

/// Largest datagram read; browsers keep DTLS and RTP under the path MTU.
const DATAGRAM: usize = 4096;
/// Datagrams read per wake-up before looking at requests and timers again.
const BATCH: usize = 64;

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Sfu {
    /// Binds `[media] udp_port` (0: any free port) and starts the task. Events for the
    /// room core arrive on `events`.
    pub async fn start(media: &Media, events: mpsc::Sender<MediaEvent>) -> Result<Sfu, SfuError> {
        let advertise = if media.advertise_ips.is_empty() {
            local_addresses()
        } else {
            media.advertise_ips.clone()
        };
        if advertise.is_empty() {
            return Err(SfuError::NoAddress);
        }
        let any: IpAddr = if advertise.iter().all(IpAddr::is_ipv4) {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, media.udp_port))
            .await
            .map_err(|why| SfuError::Bind {
                port: media.udp_port,
                why,
            })?;
        if media.socket_buffer_kb > 0 {
            size_buffers(&socket, media.socket_buffer_kb);
        }
        let port = socket
            .local_addr()
            .map_err(|why| SfuError::Bind {
                port: media.udp_port,
                why,
            })?
            .port();
        let tcp = listen_tcp(any, media, port).await?;
        let tcp_port = match &tcp {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|why| SfuError::BindTcp { port, why })?
                    .port(),
            ),
            None => None,
        };
        let cert = certificate()?;
        let mut engine = Engine::new(
            EngineConfig {
                advertise: advertise.clone(),
                port,
                prefer_vp8: media.preferred_video_codec == crate::config::VideoCodec::Vp8,
                key_frame_interval: Duration::from_millis(500),
                silence_timeout: Duration::from_millis(media.ice_timeout_ms),
            },
            cert,
        );
        let (commands, inbox) = mpsc::channel(1024);
        let peers = Arc::new(AtomicUsize::new(0));
        let counters = engine.counters();
        let (to_task, dropped) = mpsc::channel(DROPPED);
        let workers = media.workers();
        if workers > 1 {
            let sending = (workers, media.udp_gso);
            match start_shards(&socket, sending, counters.clone(), to_task.clone()) {
                Ok(shards) => engine.set_shards(shards),
                Err(e) => warn!("media workers: {e}; everything runs on the media task"),
            }
        }
        let (tcp_task, tcp_in) = match (tcp, tcp_port) {
            (Some(listener), Some(tcp_port)) => {
                engine.enable_tcp(tcp_port);
                let (to_sfu, from_tcp) = mpsc::channel(tcp::IN_QUEUE);
                let task = tokio::spawn(tcp::listen(
                    listener,
                    tcp::Limits::default(),
                    to_sfu,
                    counters.clone(),
                ));
                (Some(task), Some(from_tcp))
            }
            _ => (None, None),
        };
        let task = tokio::spawn(run(
            engine,
            (socket, media.udp_gso, tcp_in, (to_task, dropped)),
            (inbox, commands.downgrade()),
            events,
            peers.clone(),
        ));
        let list: Vec<String> = advertise.iter().map(ToString::to_string).collect();
        let tcp_info = tcp_port.map_or("ICE-TCP off".to_owned(), |p| format!("ICE-TCP port {p}"));
        info!(
            "media on UDP port {port} and {tcp_info}, advertised as {}; {workers} media worker(s)",
            list.join(", ")
        );
        Ok(Sfu {
            commands,
            port,
            tcp_port,
            tcp_task,
            advertise,
            peers,
            counters,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The ICE-TCP port (`None`: off).
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    pub fn advertised(&self) -> &[IpAddr] {
        &self.advertise
    }

    /// Registers a named source of another edge (the device's camera and microphone,
    /// an RTMP publisher): `MediaRequest::PublishExternal` naming it opens a stream fed
    /// by what the feed delivers; `unavailable` is the reason a publish fails while it
    /// delivers nothing. Registered in request order: a request queued after this one
    /// finds the source. `None` when the task's queue is full or the task is gone.
    pub fn add_source(&self, name: &str, unavailable: &str) -> Option<SourceFeed> {
        self.endpoints().add_source(name, unavailable)
    }

    /// A handle that registers named sources and sinks from other tasks (the RTMP
    /// edge).
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            commands: self.commands.clone(),
        }
    }

    /// A liveness probe of the task.
    pub fn probe(&self) -> SfuProbe {
        SfuProbe {
            commands: self.commands.clone(),
        }
    }

    /// The media counters (`/metrics`): what the task, its engine and the stream core
    /// count into.
    pub fn counters(&self) -> Arc<crate::metrics::MediaCounters> {
        self.counters.clone()
    }

    /// Live peer connections.
    pub fn peers(&self) -> Arc<AtomicUsize> {
        self.peers.clone()
    }

    /// Hands a request to the task without waiting; gives it back when the queue is full.
    pub fn request(&self, request: MediaRequest) -> Result<(), Box<MediaRequest>> {
        match self.commands.try_send(Command::Request(request)) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                Command::Request(r) => Err(Box::new(r)),
                _ => Ok(()),
            },
        }
    }

    /// Closes every peer (DTLS close alerts go out) and stops the task.
    pub async fn shutdown(self) {
        if let Some(t) = &self.tcp_task {
            t.abort();
        }
        let _ = self.commands.send(Command::Shutdown).await;
        if let Err(e) = self.task.await {
            warn!("media task ended abnormally: {e}");
        }
    }
}

/// One self-signed certificate for every peer of this process: every answer carries
/// the same fingerprint.
pub(crate) fn certificate() -> Result<RTCCertificate, SfuError> {
    let provider =
        rtc::crypto::default_provider().map_err(|e| SfuError::Certificate(e.to_string()))?;
    let params = CertificateParams::new(vec!["huddle".to_owned()])
        .map_err(|e| SfuError::Certificate(e.to_string()))?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| SfuError::Certificate(e.to_string()))
}

/// IPv6 addresses advertised at most, when `[media] advertise_ips` is empty (each one
/// adds a UDP and a TCP candidate to every answer).
pub const MAX_AUTO_V6: usize = 2;

/// The machine's addresses for `[media] advertise_ips = []`: see `advertisable`.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut found: Vec<(bool, IpAddr)> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let Some(a) = ifa.address.as_ref() else {
                continue;
            };
            if let Some(v4) = a.as_sockaddr_in() {
                found.push((up, IpAddr::V4(v4.ip())));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                found.push((up, IpAddr::V6(v6.ip())));
            }
        }
    }
    advertisable(&found)
}

/// Which interface addresses (`(up, address)`, in interface order) go into ICE
/// candidates when none are configured: every IPv4 address of an interface that is up
/// but loopback and link-local ones; then up to `MAX_AUTO_V6` global unicast IPv6
/// addresses (2000::/3, not documentation, Teredo or 6to4), which is how a device on a
/// dual-stack network is reached over IPv6 from outside. Link-local IPv6 needs a scope
/// browsers cannot use, and unique local addresses (fc00::/7) reach nothing the LAN's
/// IPv4 does not: neither is advertised. Last, 127.0.0.1 (a browser on the device).
pub fn advertisable(addrs: &[(bool, IpAddr)]) -> Vec<IpAddr> {
    let mut v4: Vec<IpAddr> = Vec::new();
    let mut v6: Vec<IpAddr> = Vec::new();
    for (up, ip) in addrs.iter().copied() {
        if !up {
            continue;
        }
        let (list, usable) = match ip {
            IpAddr::V4(a) => (
                &mut v4,
                !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
            ),
            IpAddr::V6(a) => (&mut v6, is_global_v6(a)),
        };
        if usable && !list.contains(&ip) {
            list.push(ip);
        }
    }
    v6.truncate(MAX_AUTO_V6);
    v4.extend(v6);
    v4.push(Ipv4Addr::LOCALHOST.into());
    v4
}

/// A global unicast IPv6 address worth a candidate (RFC 4291 2000::/3), without the
/// documentation prefix (2001:db8::/32) and the tunnels (Teredo 2001::/32, 6to4
/// 2002::/16).
fn is_global_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    let global_unicast = s[0] & 0xe000 == 0x2000;
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    let teredo = s[0] == 0x2001 && s[1] == 0;
    let six_to_four = s[0] == 0x2002;
    global_unicast && !documentation && !teredo && !six_to_four
}

/// The ICE-TCP listener on `[media] tcp_port`, on the same wildcard address as the
/// media socket; `None` when `tcp_port = 0`. Not set, it is the UDP port's number, and
/// when that is taken on TCP the service still starts: with `udp_port = 0` (tests) on
/// any free port, otherwise without ICE-TCP (a warning says why), so an upgrade never
/// stops a device that worked. A port set explicitly must be free.
async fn listen_tcp(any: IpAddr, media: &Media, udp: u16) -> Result<Option<TcpListener>, SfuError> {
    let port = match media.tcp_port {
        Some(0) => return Ok(None),
        Some(port) => port,
        None => udp,
    };
    match TcpListener::bind(SocketAddr::new(any, port)).await {
        Ok(l) => Ok(Some(l)),
        Err(_) if media.tcp_port.is_none() && media.udp_port == 0 => {
            TcpListener::bind(SocketAddr::new(any, 0))
                .await
                .map(Some)
                .map_err(|why| SfuError::BindTcp { port: 0, why })
        }
        Err(why) if media.tcp_port.is_none() => {
            warn!(
                "ICE-TCP off: cannot listen on TCP port {port} (the UDP port's number): {why}; \
                 set [media] tcp_port to a free port, or 0"
            );
            Ok(None)
        }
        Err(why) => Err(SfuError::BindTcp { port, why }),
    }
}

/// The next message of the ICE-TCP connections; never, when ICE-TCP is off.
async fn next_tcp(rx: &mut Option<mpsc::Receiver<TcpIn>>) -> Option<TcpIn> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One message of the ICE-TCP connections. A connection's first frame must be a STUN
/// binding request the engine routes (it verifies for a known peer); otherwise the
/// connection is closed.
fn tcp_input(engine: &mut Engine, conns: &mut Connections, input: TcpIn) {
    match input {
        TcpIn::Opened {
            id,
            from,
            out,
            verified,
        } => conns.opened(id, from, out, verified),
        TcpIn::Closed { id, from } => conns.closed(id, from),
        TcpIn::Frame { id, from, data } => {
            match conns.inbound(id, from) {
                Inbound::Ignore => {}
                Inbound::Deliver { first: false } => {
                    engine.receive(now(), TransportProtocol::TCP, from, &data);
                }
                Inbound::Deliver { first: true } => {
                    let request = super::demux::parse_stun(&data).is_some_and(|v| v.class == 0);
                    if request && engine.receive(now(), TransportProtocol::TCP, from, &data) {
                        conns.verify(from);
                    } else {
                        engine.counters().tcp.invalid.inc();
                        debug!("ICE-TCP connection from {from} closed: its first frame does not verify");
                        conns.reject(from);
                    }
                }
            }
        }
    }
}

/// A v4 address as the dual-stack socket wants it.
pub(crate) fn target(socket_v6: bool, to: SocketAddr) -> SocketAddr {
    match (socket_v6, to) {
        (true, SocketAddr::V4(v4)) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => to,
    }
}

fn source_input(engine: &mut Engine, source: SourceId, input: SourceInput) {
    match input {
        SourceInput::State { audio, video, info } => {
            engine.external_state(source, audio, video, &info)
        }
        SourceInput::Packet(kind, packet) => engine.external_packet(now(), source, kind, &packet),
    }
}

/// The next input of any named source's feed (`None`: that feed is gone). Polled in
/// order; each wake-up drains a batch of one feed, so none starves the others long.
async fn next_input(
    feeds: &mut [(SourceId, mpsc::Receiver<SourceInput>)],
) -> (usize, Option<SourceInput>) {
    std::future::poll_fn(|cx| {
        for (i, (_, rx)) in feeds.iter_mut().enumerate() {
            if let std::task::Poll::Ready(input) = rx.poll_recv(cx) {
                return std::task::Poll::Ready((i, input));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Sends what the engine queued: UDP datagrams in batches (each player's part of a
/// burst as one segment train, see `send`), TCP frames on their connections; a drop for
/// a full buffer is told to the engine, which may queue more (a key-frame request).
fn send_transmits(
    engine: &mut Engine,
    socket: &UdpSocket,
    conns: &mut Connections,
    batch: &mut UdpBatch,
    (v6, counters): (bool, &crate::metrics::MediaCounters),
) {
    loop {
        queue_transmits(engine, socket, conns, batch, (v6, counters));
        if batch.is_empty() {
            break;
        }
        batch
            .flush(socket, |peer| busy(engine, counters, peer))
            .count(counters);
    }
}

/// A datagram a full socket buffer refused: counted, and told to the engine.
fn busy(
    engine: &mut Engine,
    counters: &crate::metrics::MediaCounters,
    peer: super::engine::PeerId,
) {
    counters.dropped(crate::metrics::DropReason::SocketBusy);
    engine.transmit_dropped(now(), peer);
}

/// What the engine queued, into the batch (sent only when the batch is full): the
/// datagrams of several received packets leave together, a player's as one train.
fn queue_transmits(
    engine: &mut Engine,
    socket: &UdpSocket,
    conns: &mut Connections,
    batch: &mut UdpBatch,
    (v6, counters): (bool, &crate::metrics::MediaCounters),
) {
    while let Some(t) = engine.poll_transmit() {
        if t.protocol == TransportProtocol::TCP {
            if !conns.send(t.to, &t.data) {
                counters.tcp.dropped.inc();
                engine.transmit_dropped(now(), t.peer);
            }
            continue;
        }
        batch.push(t.peer, target(v6, t.to), t.data);
        if batch.is_full() {
            batch
                .flush(socket, |peer| busy(engine, counters, peer))
                .count(counters);
        }
    }
}

/// Datagrams a media worker could not send, told back to the task (each asks its
/// player's publisher for a key frame); more are only counted.
const DROPPED: usize = 1024;

/// The media workers beside the task, sending from their own handles on `socket`.
fn start_shards(
    socket: &UdpSocket,
    (workers, trains): (usize, bool),
    counters: Arc<crate::metrics::MediaCounters>,
    dropped: mpsc::Sender<super::engine::PeerId>,
) -> std::io::Result<Shards> {
    use std::os::fd::AsFd;
    let v6 = socket.local_addr()?.is_ipv6();
    let handle = std::net::UdpSocket::from(socket.as_fd().try_clone_to_owned()?);
    Shards::start(workers, &handle, (v6, trains), counters, dropped)
}

#[allow(clippy::type_complexity)]
async fn run(
    mut engine: Engine,
    (socket, trains, mut tcp_in, (_to_task, mut dropped)): (
        UdpSocket,
        bool,
        Option<mpsc::Receiver<TcpIn>>,
        (
            mpsc::Sender<super::engine::PeerId>,
            mpsc::Receiver<super::engine::PeerId>,
        ),
    ),
    (mut inbox, commands): (mpsc::Receiver<Command>, mpsc::WeakSender<Command>),
    events: mpsc::Sender<MediaEvent>,
    peers: Arc<AtomicUsize>,
) {
    // Weak: the task still ends when every handle is gone. Attachments' key-frame
    // requests come back through it.
    let mut sinks = ExternalSinks::default();
    let mut feeds: Vec<(SourceId, mpsc::Receiver<SourceInput>)> = Vec::new();
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut received = UdpReceive::new(DATAGRAM);
    let fault_panic = fault_panic_on_request();
    let counters = engine.counters();
    let mut conns = Connections::default();
    let mut batch = UdpBatch::new(trains);
    loop {
        let opened = engine.take_opened();
        if let (false, Some(commands)) = (opened.is_empty(), commands.upgrade()) {
            for stream in opened {
                sinks.opened(&mut engine, &commands, &stream);
            }
        }
        send_transmits(
            &mut engine,
            &socket,
            &mut conns,
            &mut batch,
            (v6, &counters),
        );
        while let Some(event) = engine.poll_event() {
            if let Err(e) = events.try_send(event) {
                // The core's own media timeout still ends the stream.
                warn!("room core does not take media events: {e}");
            }
        }
        peers.store(engine.peers(), Ordering::Relaxed);
        let deadline = engine.poll_timeout();
        tokio::select! {
            ready = socket.readable() => {
                if let Err(e) = ready {
                    warn!("media socket: {e}");
                }
                // Up to BATCH datagrams per wake-up, read RECV_BATCH a system call.
                for _ in 0..BATCH / RECV_BATCH {
                    match received.recv(&socket) {
                        Ok(n) => {
                            for i in 0..n {
                                let Some((data, from)) = received.datagram(i) else { break };
                                engine.datagram(now(), from, data);
                                queue_transmits(&mut engine, &socket, &mut conns, &mut batch, (v6, &counters));
                            }
                            // What one system call's packets fan out to leaves together
                            // (a frame's first packets wait for at most RECV_BATCH - 1
                            // others, and each player's share is one train).
                            send_transmits(&mut engine, &socket, &mut conns, &mut batch, (v6, &counters));
                            if n < RECV_BATCH {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP port unreachable from a gone browser, and the like.
                        Err(e) => debug!("media socket: {e}"),
                    }
                }
            }
            Some(input) = next_tcp(&mut tcp_in) => {
                tcp_input(&mut engine, &mut conns, input);
                for _ in 0..BATCH {
                    match tcp_in.as_mut().map(mpsc::Receiver::try_recv) {
                        Some(Ok(input)) => tcp_input(&mut engine, &mut conns, input),
                        _ => break,
                    }
                }
            }
            (i, input) = next_input(&mut feeds), if !feeds.is_empty() => match input {
                Some(input) => {
                    let (source, rx) = &mut feeds[i];
                    let source = *source;
                    source_input(&mut engine, source, input);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(input) => source_input(&mut engine, source, input),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    let (source, _) = feeds.swap_remove(i);
                    engine.remove_external(source);
                }
            },
            command = inbox.recv() => match command {
                Some(Command::Request(request)) => {
                    if fault_panic {
                        panic!("fault injection: the media task panics");
                    }
                    match commands.upgrade() {
                        Some(commands) => sinks.play(&mut engine, &commands, request),
                        None => engine.request(now(), request),
                    }
                }
                Some(Command::AddSink { name, attachments }) => {
                    sinks.named.retain(|_, tx| !tx.is_closed());
                    sinks.named.insert(name, attachments);
                }
                Some(Command::Watch { stream, attachments }) => {
                    sinks.watchers.retain(|(_, tx)| !tx.is_closed());
                    if engine.codecs(&stream).is_some() {
                        if let Some(commands) = commands.upgrade() {
                            ExternalSinks::attach_watcher(&mut engine, &commands, &stream, &attachments);
                        }
                    }
                    sinks.watchers.push((stream, attachments));
                }
                Some(Command::KeyFrame { stream }) => engine.request_key_frame(now(), &stream),
                Some(Command::Attach { stream, audio_only, reply }) => {
                    let attached = match commands.upgrade() {
                        Some(commands) => {
                            let (mut sink, make) = ExternalSinks::attachment(&commands, &stream);
                            sink.audio_only = audio_only;
                            engine
                                .attach_external(now(), &stream, Box::new(sink))
                                .map(|(codecs, _)| make(codecs))
                        }
                        None => Err(StreamError::Unavailable("The media engine is stopping".into())),
                    };
                    let _ = reply.send(attached);
                }
                Some(Command::Codecs { stream, reply }) => {
                    let _ = reply.send(engine.codecs(&stream).cloned());
                }
                Some(Command::AddSource { name, unavailable, inputs, key_frame }) => {
                    let source = engine.add_external(&name, &unavailable, Box::new(key_frame));
                    feeds.retain(|(id, _)| engine.has_external(*id));
                    feeds.push((source, inputs));
                }
                Some(Command::Stats { reply }) => {
                    let _ = reply.send(stream_stats(&engine));
                }
                Some(Command::Heartbeat(reply)) => {
                    let _ = reply.send(());
                }
                Some(Command::Shutdown) | None => {
                    engine.close_all();
                    while let Some(t) = engine.poll_transmit() {
                        if t.protocol == TransportProtocol::TCP {
                            conns.send(t.to, &t.data);
                        } else {
                            let _ = socket.try_send_to(&t.data, target(v6, t.to));
                        }
                    }
                    peers.store(0, Ordering::Relaxed);
                    break;
                }
            },
            Some(peer) = dropped.recv() => {
                engine.transmit_dropped(now(), peer);
                while let Ok(peer) = dropped.try_recv() {
                    engine.transmit_dropped(now(), peer);
                }
            }
            _ = sleep_until(deadline) => engine.handle_timeout(now()),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Fault injection for the supervision test, in debug builds only: with
/// `HUDDLE_FAULT_PANIC_MEDIA` set, the first media request panics this task the way a
/// bug would.
fn fault_panic_on_request() -> bool {
    cfg!(debug_assertions) && std::env::var_os("HUDDLE_FAULT_PANIC_MEDIA").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Family;

    #[tokio::test]
    async fn a_taken_tcp_port_is_an_error_only_when_set() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (events, _rx) = mpsc::channel(16);
        let mut media = Media {
            udp_port: port,
            advertise_ips: vec![Ipv4Addr::LOCALHOST.into()],
            ..Media::default()
        };
        // Not set: the service starts, without ICE-TCP.
        let sfu = Sfu::start(&media, events.clone()).await.unwrap();
        assert_eq!((sfu.port(), sfu.tcp_port()), (port, None));
        sfu.shutdown().await;
        // Set to the taken port: a clear error.
        media.tcp_port = Some(port);
        let e = Sfu::start(&media, events.clone()).await.err().unwrap();
        assert!(e.to_string().contains("[media] tcp_port"), "{e}");
        // Off.
        media.tcp_port = Some(0);
        let sfu = Sfu::start(&media, events.clone()).await.unwrap();
        assert_eq!(sfu.tcp_port(), None);
        sfu.shutdown().await;
        // Not set, and free: the UDP port's number.
        drop(taken);
        media.tcp_port = None;
        let sfu = Sfu::start(&media, events).await.unwrap();
        assert_eq!(sfu.tcp_port(), Some(port));
        sfu.shutdown().await;
    }

    #[test]
    fn auto_advertising_takes_ipv4_and_global_ipv6_but_not_local_scopes() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let addrs = [
            (true, ip("127.0.0.1")),
            (true, ip("::1")),
            (true, ip("192.168.1.20")),
            (true, ip("fe80::1c2:3ff:fe04:506")),
            (true, ip("fd00::2")),
            (true, ip("2a01:4f8:1:2::20")),
            (false, ip("10.0.0.7")),
            (false, ip("2a01:4f8:1:3::30")),
            (true, ip("169.254.3.4")),
            (true, ip("2001:db8::1")),
            (true, ip("2001:0:4136:e378::1")),
            (true, ip("2002:c000:204::1")),
            (true, ip("192.168.1.20")),
            (true, ip("2a01:4f8:1:2::20")),
            (true, ip("2600:1700::5")),
            (true, ip("2600:1700::6")),
            (true, ip("::ffff:10.1.1.1")),
            (true, ip("10.8.0.1")),
        ];
        assert_eq!(
            advertisable(&addrs),
            vec![
                ip("192.168.1.20"),
                ip("10.8.0.1"),
                ip("2a01:4f8:1:2::20"),
                ip("2600:1700::5"),
                ip("127.0.0.1"),
            ]
        );
        // IPv4 only (or nothing at all): as before, loopback last.
        assert_eq!(
            advertisable(&[(true, ip("10.0.0.2")), (true, ip("fd12::1"))]),
            vec![ip("10.0.0.2"), ip("127.0.0.1")]
        );
        assert_eq!(advertisable(&[]), vec![ip("127.0.0.1")]);
    }

    #[tokio::test]
    async fn stream_stats_and_counters_come_from_the_task() {
        let media = Media {
            udp_port: 0,
            advertise_ips: vec![Ipv4Addr::LOCALHOST.into()],
            ..Media::default()
        };
        let (events, mut rx) = mpsc::channel(16);
        let sfu = Sfu::start(&media, events).await.unwrap();
        let endpoints = sfu.endpoints();
        assert!(endpoints.stream_stats().await.is_empty());
        let feed = sfu.add_source("cam", "off").unwrap();
        let video = Codec {
            family: Family::H264 {
                profile: 0x42,
                constraints: 0xc0,
            },
            payload_type: 102,
            clock_rate: 90_000,
            channels: 0,
            fmtp: String::new(),
        };
        assert!(feed.announce(None, Some(video), String::new()).await);
        async fn next(rx: &mut mpsc::Receiver<MediaEvent>) -> Option<MediaEvent> {
            let event = tokio::time::timeout(Duration::from_secs(2), rx.recv());
            event.await.ok().flatten()
        }
        assert!(matches!(
            next(&mut rx).await,
            Some(MediaEvent::SourceChanged { video: true, .. })
        ));
        sfu.request(MediaRequest::PublishExternal {
            session: 1,
            media_session_id: "m".into(),
            stream: "s".into(),
            source: "cam".into(),
        })
        .unwrap();
        let up = next(&mut rx).await;
        assert!(matches!(up, Some(MediaEvent::Up { .. })), "{up:?}");
        // An SPS (640x480) starts a key frame.
        let sps = [0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xa1, 0x00];
        let p = rtc::rtp::Packet {
            payload: bytes::Bytes::copy_from_slice(&sps),
            ..rtc::rtp::Packet::default()
        };
        assert!(feed.packet(Kind::Video, p));
        let mut stats = Vec::new();
        for _ in 0..100 {
            stats = endpoints.stream_stats().await;
            if stats.first().is_some_and(|s| s.width.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.len(), 1);
        let s = &stats[0];
        assert_eq!(s.stream, "s");
        assert_eq!((s.width, s.height), (Some(640), Some(480)));
        assert!(s.codecs.video.is_some() && s.codecs.audio.is_none());
        assert!(s.video_bps > 0 && s.audio_bps == 0);
        assert_eq!(s.sinks, 0);
        let counters = sfu.counters();
        assert_eq!(counters.packets_in[1].get(), 1);
        assert_eq!(counters.bytes_in[1].get(), sps.len() as u64);
        sfu.shutdown().await;
    }
}

/// Sets the media socket's receive and send buffers to `kib` (`[media]
/// socket_buffer_kb`); says what the kernel gave, and why when it is less. Returns the
/// sizes (KiB) the kernel reports back for use, halved as Linux doubles them.
pub(crate) fn size_buffers(socket: &impl std::os::fd::AsFd, kib: u32) -> (usize, usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let want = kib as usize * 1024;
    let _ = setsockopt(socket, sockopt::RcvBuf, &want);
    let _ = setsockopt(socket, sockopt::SndBuf, &want);
    let got = |o: Result<usize, nix::Error>| o.map_or(0, |b| b / 2 / 1024);
    let rcv = got(getsockopt(socket, sockopt::RcvBuf));
    let snd = got(getsockopt(socket, sockopt::SndBuf));
    if rcv < kib as usize || snd < kib as usize {
        warn!(
            "media socket: buffers of {rcv} KiB (receive) and {snd} KiB (send), {kib} KiB asked ([media] socket_buffer_kb): \
             the kernel caps them at net.core.rmem_max/wmem_max (systemd/huddle-sysctl.conf raises those)"
        );
    } else {
        info!("media socket: buffers of {rcv} KiB (receive) and {snd} KiB (send)");
    }
    (rcv, snd)
}

#[cfg(test)]
mod buffer_tests {
    use super::size_buffers;

    #[test]
    fn buffers_are_sized_up_to_what_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // 64 KiB is under every kernel's default cap.
        assert_eq!(size_buffers(&socket, 64), (64, 64));
        // 64 MiB: whatever the kernel allows, reported as it is.
        let max = |f: &str| -> usize {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0)
        };
        let (rcv, snd) = size_buffers(&socket, 65_536);
        let (rmax, wmax) = (
            max("/proc/sys/net/core/rmem_max"),
            max("/proc/sys/net/core/wmem_max"),
        );
        if rmax > 0 && wmax > 0 {
            assert_eq!(rcv, (rmax / 1024).min(65_536), "rmem_max {rmax}");
            assert_eq!(snd, (wmax / 1024).min(65_536), "wmem_max {wmax}");
        }
    }
}
