//! The RTMP server: one tokio task per TCP connection around rml_rtmp's
//! `ServerSession`, with the limits rml_rtmp does not have (a handshake deadline, an
//! idle timeout, a per-connection byte budget, a connection cap) and a guard that reads
//! the message stream first and refuses what rml_rtmp would silently accept or ignore:
//! chunk sizes of 0 or ≥ 2^31, oversized AMF commands, `publish` before `connect`, a
//! second publish, media for a stream id that is not being published.
//!
//! Toward the rest of Huddle it speaks [`Handler`]: a publish or play request (room,
//! login/stream, token, record flag) is accepted with a channel or refused with a reason.
//! A publisher's media arrives as [`PublisherEvent`]s (RTP packets of H.264 access units,
//! AAC frames); a player is fed [`FlvTag`]s. Every close is one log line naming the peer
//! and the reason; client strings go through `logging::escaped`.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use log::{debug, info, warn};
use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{MessagePayload, RtmpMessage};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, Instant};

use super::chunk::{ChunkError, ChunkScanner};
use super::media::{AacFrame, AccessUnitInfo, AudioOutcome, H264Ingest, MediaError, VideoOutcome};
use super::url::{self, StreamPath};
use crate::config;
use crate::device::h264::{RtpPacket, DEFAULT_MTU};
use crate::logging::escaped;

/// A publisher asks to publish into a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub peer: SocketAddr,
    pub room: String,
    pub login: String,
    pub token: Option<String>,
    pub record: bool,
}

/// A player asks for a room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayRequest {
    pub peer: SocketAddr,
    pub room: String,
    pub stream: String,
    pub token: Option<String>,
}

/// Why a request was refused; the text goes to the log and the RTMP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The stream cannot be played at all (unknown, or in a codec FLV cannot carry):
    /// `NetStream.Play.StreamNotFound` rather than `NetStream.Play.Failed`.
    pub not_found: bool,
}

impl Refusal {
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            not_found: false,
        }
    }

    pub fn not_found(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            not_found: true,
        }
    }
}

/// What a publisher sends, in order. The channel closing (or `Ended`) ends the stream.
#[derive(Debug)]
pub enum PublisherEvent {
    /// A (new) H.264 sequence header; the profile as SDP's `profile-level-id`.
    VideoConfig { profile_level_id: String },
    /// One access unit as RTP packets (payload type 96, marker on the last).
    Video {
        packets: Vec<RtpPacket>,
        info: AccessUnitInfo,
    },
    /// A (new) AAC AudioSpecificConfig.
    AudioConfig(super::flv::AacConfig),
    /// One raw AAC frame (for the AAC → Opus transcoder).
    Audio(AacFrame),
    /// The publisher is gone; the reason for the log and the room.
    Ended { reason: String },
}

/// An FLV tag body for a player, with its RTMP timestamp in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub kind: TagKind,
    pub timestamp_ms: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Video,
    Audio,
}

/// The RTMP edge's view of the rest of Huddle (implemented by the wiring toward the
/// room and stream cores; tests implement it directly).
pub trait Handler: Send + Sync + 'static {
    /// Accept with a channel for the media (bounded: a full channel drops video until
    /// the next key frame), or refuse.
    fn publish(
        &self,
        request: PublishRequest,
    ) -> impl Future<Output = Result<mpsc::Sender<PublisherEvent>, Refusal>> + Send;

    /// Accept with a receiver of FLV tags, or refuse. The sender must start with the
    /// sequence headers and a key frame (`media::FlvVideoEgress` does that for video).
    fn play(
        &self,
        request: PlayRequest,
    ) -> impl Future<Output = Result<mpsc::Receiver<FlvTag>, Refusal>> + Send;
}

/// Why a connection was closed.
#[derive(Debug, Error)]
pub enum Close {
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("no complete handshake within {0} ms")]
    HandshakeTimeout(u64),
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("nothing received for {0} ms")]
    Idle(u64),
    #[error("flood: more than {0} kbit/s")]
    Flood(u32),
    #[error("more than {0} bytes before a publish or play")]
    TooMuchBeforeRequest(usize),
    #[error("chunk size {0} refused (valid: 1..={MAX_CHUNK_SIZE})")]
    ChunkSize(u32),
    #[error("AMF message of {0} bytes refused (limit {MAX_COMMAND_BYTES})")]
    CommandTooLarge(usize),
    #[error("{0} before connect")]
    BeforeConnect(&'static str),
    #[error("a second connect on one connection")]
    SecondConnect,
    #[error("a second publish or play on one connection")]
    SecondRequest,
    #[error(
        "the {0} configuration (sequence header) changed more than {MAX_CONFIG_CHANGES} times"
    )]
    ConfigChanges(&'static str),
    #[error("{kind} for stream id {stream_id}, which is not published")]
    UnknownStream { kind: &'static str, stream_id: u32 },
    #[error("RTMP chunks refused: {0}")]
    Chunk(#[from] ChunkError),
    #[error("malformed RTMP: {0}")]
    Protocol(String),
    #[error("refused {what}: {reason}")]
    Refused { what: &'static str, reason: String },
    #[error("media refused: {0}")]
    Media(#[from] MediaError),
    #[error("the room side ended the stream")]
    Gone,
    #[error("the handler did not answer within {0} ms")]
    HandlerTimeout(u64),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Largest chunk size a client may announce (RTMP messages are at most 16 MiB).
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;
/// Largest message of a publisher (a key frame of a high-bitrate 1080p stream is ~1 MB).
pub const MAX_MESSAGE_BYTES: u32 = 4 << 20;
/// Largest AMF command or data message (connect, publish, onMetaData...).
pub const MAX_COMMAND_BYTES: usize = 64 << 10;
/// How often a publisher's sequence headers may change (audio and video together):
/// each change restarts the AAC transcoder and is a log line, encoders change them
/// once in a long while (a new resolution), never without end.
pub const MAX_CONFIG_CHANGES: u32 = 16;
/// Bytes a client may send before its publish or play is accepted.
pub const MAX_BYTES_BEFORE_REQUEST: usize = 256 << 10;
/// Size of one socket read (and so of one rml_rtmp input).
const READ_BUFFER: usize = 16 << 10;
/// How long the handler may take to accept or refuse.
const HANDLER_TIMEOUT_MS: u64 = 10_000;
/// The close reason when rml_rtmp panics on input.
const PANIC: &str =
    "chunk streams the RTMP library cannot parse (interleaved or inconsistent chunk headers)";
/// RTP payload type of RTMP video handed to the stream core (rewritten per player).
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;

/// Accepts RTMP connections on `listener` until the task is dropped.
pub async fn serve<H: Handler>(listener: TcpListener, config: config::Rtmp, handler: Arc<H>) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let addresses = Arc::new(PerAddress::default());
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("rtmp: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(
                "rtmp {peer}: closed: {} connections already open (rtmp.max_connections)",
                config.max_connections
            );
            drop(socket);
            continue;
        };
        let Some(counted) = addresses.admit(peer.ip(), config.max_connections_per_address) else {
            warn!(
                "rtmp {peer}: closed: {} connections from this address already open (rtmp.max_connections_per_address)",
                config.max_connections_per_address
            );
            drop(socket);
            continue;
        };
        let config = config.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            let _ = socket.set_nodelay(true);
            let mut connection = Connection::new(socket, peer, config);
            let result = connection.run(&*handler).await;
            connection.end(result).await;
        });
    }
}

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One counted connection of an address; uncounted when dropped.
struct Counted {
    addresses: Arc<PerAddress>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, limit: usize) -> Option<Counted> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(ip).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(Counted {
            addresses: self.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.addresses.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The guard's view of the message stream (a second chunk deserializer over the same
/// bytes, which sees what `ServerSession` does not report).
struct Guard {
    scanner: ChunkScanner,
    chunks: ChunkDeserializer,
    connected: bool,
    requested: bool,
    /// The message stream id of the accepted publish.
    publishing: Option<u32>,
}

impl Guard {
    fn new() -> Guard {
        Guard {
            // Until a publish, only commands are expected.
            scanner: ChunkScanner::new(MAX_COMMAND_BYTES as u32),
            chunks: ChunkDeserializer::new(),
            connected: false,
            requested: false,
            publishing: None,
        }
    }

    /// Checks every complete message in `bytes`.
    fn check(&mut self, bytes: &[u8]) -> Result<(), Close> {
        self.scanner.scan(bytes)?;
        let mut input = bytes;
        loop {
            let message = self
                .chunks
                .get_next_message(input)
                .map_err(|e| Close::Protocol(e.to_string()))?;
            input = &[];
            let Some(m) = message else { return Ok(()) };
            self.message(&m)?;
        }
    }

    fn message(&mut self, m: &MessagePayload) -> Result<(), Close> {
        match m.type_id {
            1 => {
                let size = match m.data.get(..4) {
                    Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                    _ => return Err(Close::Protocol("short SetChunkSize".into())),
                };
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(Close::ChunkSize(size));
                }
                self.chunks
                    .set_max_chunk_size(size as usize)
                    .map_err(|e| Close::Protocol(e.to_string()))?;
            }
            // AMF0/AMF3 data and commands.
            15 | 17 | 18 | 20 => {
                if m.data.len() > MAX_COMMAND_BYTES {
                    return Err(Close::CommandTooLarge(m.data.len()));
                }
                if matches!(m.type_id, 17 | 20) {
                    self.command(m)?;
                } else if self.publishing.is_some_and(|id| id != m.message_stream_id) {
                    return Err(Close::UnknownStream {
                        kind: "data",
                        stream_id: m.message_stream_id,
                    });
                }
            }
            8 | 9 => {
                let kind = if m.type_id == 8 { "audio" } else { "video" };
                if !self.connected {
                    return Err(Close::BeforeConnect(kind));
                }
                if self.publishing != Some(m.message_stream_id) {
                    return Err(Close::UnknownStream {
                        kind,
                        stream_id: m.message_stream_id,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn command(&mut self, m: &MessagePayload) -> Result<(), Close> {
        // AMF3 commands (type 17) start with a format byte, then AMF0.
        let data = if m.type_id == 17 {
            m.data.get(1..).unwrap_or(&[])
        } else {
            &m.data[..]
        };
        let name = match data {
            [2, hi, lo, rest @ ..] => {
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                rest.get(..len).unwrap_or(&[])
            }
            _ => return Err(Close::Protocol("a command without a name".into())),
        };
        match name {
            b"connect" => {
                if self.connected {
                    return Err(Close::SecondConnect);
                }
                self.connected = true;
            }
            b"publish" | b"play" => {
                let what = if name == b"publish" {
                    "publish"
                } else {
                    "play"
                };
                if !self.connected {
                    return Err(Close::BeforeConnect(what));
                }
                if self.requested {
                    return Err(Close::SecondRequest);
                }
                self.requested = true;
                if what == "publish" {
                    self.publishing = Some(m.message_stream_id);
                    self.scanner.set_max_message(MAX_MESSAGE_BYTES);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Bytes per 2-second window.
struct Budget {
    window_start: Instant,
    bytes: u64,
    limit: u64,
    kbps: u32,
}

impl Budget {
    fn new(kbps: u32) -> Budget {
        Budget {
            window_start: Instant::now(),
            bytes: 0,
            limit: kbps as u64 * 1000 / 8 * 2,
            kbps,
        }
    }

    fn spend(&mut self, n: usize) -> Result<(), Close> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(2) {
            self.window_start = now;
            self.bytes = 0;
        }
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(Close::Flood(self.kbps));
        }
        Ok(())
    }
}

enum Step {
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    Tag(Option<FlvTag>),
}

// One per connection, never moved around: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Role {
    None,
    Publisher {
        path: StreamPath,
        events: mpsc::Sender<PublisherEvent>,
        video: H264Ingest,
        audio: super::media::AacIngest,
        /// Video is dropped until the next key frame after a full channel.
        skip_to_key: bool,
        dropped: u64,
        /// Counted in `huddle_rtmp_sessions` while the role lasts.
        _counted: crate::metrics::RtmpSession,
    },
    Player {
        path: StreamPath,
        stream_id: u32,
        tags: mpsc::Receiver<FlvTag>,
        _counted: crate::metrics::RtmpSession,
    },
}

struct Connection {
    socket: TcpStream,
    peer: SocketAddr,
    config: Arc<config::Rtmp>,
    role: Role,
    received: usize,
    /// The message stream id of the publish (for an `onStatus` on a media refusal).
    publish_stream: Option<u32>,
    headers: SequenceHeaders,
}

/// A publisher's last sequence headers and how often they changed.
#[derive(Debug, Default)]
struct SequenceHeaders {
    video: Option<String>,
    audio: Option<super::flv::AacConfig>,
    changes: u32,
}

impl SequenceHeaders {
    /// Whether `new` (video: the profile-level-id) differs from the last one.
    fn video(&mut self, new: &str) -> Result<bool, Close> {
        let last = self.video.replace(new.to_owned());
        self.count(last.as_deref(), Some(new), "video")
    }

    /// Whether `new` differs from the last AAC configuration.
    fn audio(&mut self, new: super::flv::AacConfig) -> Result<bool, Close> {
        let last = self.audio.replace(new);
        self.count(last.as_ref(), Some(&new), "audio")
    }

    fn count<T: PartialEq>(
        &mut self,
        last: Option<T>,
        new: Option<T>,
        what: &'static str,
    ) -> Result<bool, Close> {
        if last == new {
            return Ok(false);
        }
        if last.is_some() {
            self.changes += 1;
            if self.changes > MAX_CONFIG_CHANGES {
                return Err(Close::ConfigChanges(what));
            }
        }
        Ok(true)
    }
}

impl Connection {
    fn new(socket: TcpStream, peer: SocketAddr, config: Arc<config::Rtmp>) -> Connection {
        Connection {
            socket,
            peer,
            config,
            role: Role::None,
            received: 0,
            publish_stream: None,
            headers: SequenceHeaders::default(),
        }
    }

    fn who(&self) -> String {
        match &self.role {
            Role::None => format!("rtmp {}", self.peer),
            Role::Publisher { path, .. } => format!(
                "rtmp {} publisher {} in room {}",
                self.peer,
                escaped(&path.name),
                escaped(&path.room)
            ),
            Role::Player { path, .. } => format!(
                "rtmp {} player of {} in room {}",
                self.peer,
                escaped(&path.name),
                escaped(&path.room)
            ),
        }
    }

    async fn end(&mut self, result: Result<(), Close>) {
        let reason = match &result {
            Ok(()) | Err(Close::PeerClosed) => {
                info!("{}: closed: the peer closed the connection", self.who());
                "the publisher closed the connection".to_string()
            }
            // A player or publisher that goes away with unread data resets the
            // connection: routine, not a warning.
            Err(e @ Close::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                info!("{}: closed: {e}", self.who());
                e.to_string()
            }
            Err(e) => {
                warn!("{}: closed: {e}", self.who());
                e.to_string()
            }
        };
        if let (Err(Close::Media(e)), Some(id)) = (&result, self.publish_stream) {
            if let Some(status) = status_packet(id, "NetStream.Publish.Rejected", &e.to_string()) {
                let _ = self.write(&status).await;
            }
        }
        if let Role::Publisher {
            events, dropped, ..
        } = &self.role
        {
            if *dropped > 0 {
                info!("{}: {dropped} video access units dropped", self.who());
            }
            let _ = events.try_send(PublisherEvent::Ended { reason });
        }
        let _ = timeout(Duration::from_millis(500), self.socket.shutdown()).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Close> {
        match timeout(
            Duration::from_millis(self.config.idle_timeout_ms),
            self.socket.write_all(bytes),
        )
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(Close::Idle(self.config.idle_timeout_ms)),
        }
    }

    async fn handshake(&mut self, buf: &mut [u8]) -> Result<Vec<u8>, Close> {
        let mut hs = Handshake::new(PeerType::Server);
        let mut total = 0;
        loop {
            let n = self.socket.read(buf).await?;
            if n == 0 {
                return Err(Close::Handshake(
                    "the peer closed during the handshake".into(),
                ));
            }
            total += n;
            // C0 + C1 + C2 are 3073 bytes; a client may pipeline its first command.
            if total > 3073 + READ_BUFFER {
                return Err(Close::Handshake("too many bytes".into()));
            }
            match hs.process_bytes(&buf[..n]) {
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    self.write(&response_bytes).await?
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    self.write(&response_bytes).await?;
                    return Ok(remaining_bytes);
                }
                Err(e) => return Err(Close::Handshake(e.to_string())),
            }
        }
    }

    async fn run<H: Handler>(&mut self, handler: &H) -> Result<(), Close> {
        let mut buf = vec![0u8; READ_BUFFER];
        let limit = self.config.handshake_timeout_ms;
        let rest = match timeout(Duration::from_millis(limit), self.handshake(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(Close::HandshakeTimeout(limit)),
        };
        debug!("rtmp {}: handshake done", self.peer);
        let mut session_config = ServerSessionConfig::new();
        session_config.chunk_size = 4096;
        let (mut session, init) =
            ServerSession::new(session_config).map_err(|e| Close::Protocol(e.to_string()))?;
        let mut guard = Guard::new();
        let mut budget = Budget::new(self.config.max_kbps);
        self.respond(&mut session, init, handler).await?;
        self.input(&mut session, &mut guard, &rest, handler).await?;
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        loop {
            let step = {
                let socket = &mut self.socket;
                let role = &mut self.role;
                let tag = async move {
                    match role {
                        Role::Player { tags, .. } => tags.recv().await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    read = timeout(idle, socket.read(&mut buf)) => Step::Read(read),
                    tag = tag => Step::Tag(tag),
                }
            };
            match step {
                Step::Read(Err(_)) => return Err(Close::Idle(self.config.idle_timeout_ms)),
                Step::Read(Ok(read)) => {
                    let n = read?;
                    if n == 0 {
                        return Err(Close::PeerClosed);
                    }
                    budget.spend(n)?;
                    self.input(&mut session, &mut guard, &buf[..n], handler)
                        .await?;
                }
                Step::Tag(None) => return Err(Close::Gone),
                Step::Tag(Some(tag)) => {
                    let Role::Player { stream_id, .. } = &self.role else {
                        continue;
                    };
                    let id = *stream_id;
                    let time = RtmpTimestamp::new(tag.timestamp_ms);
                    let packet = match tag.kind {
                        TagKind::Video => session.send_video_data(id, tag.data, time, false),
                        TagKind::Audio => session.send_audio_data(id, tag.data, time, false),
                    }
                    .map_err(|e| Close::Protocol(e.to_string()))?;
                    self.write(&packet.bytes).await?;
                }
            }
        }
    }

    /// Feeds received bytes through the guard, then the session.
    async fn input<H: Handler>(
        &mut self,
        session: &mut ServerSession,
        guard: &mut Guard,
        bytes: &[u8],
        handler: &H,
    ) -> Result<(), Close> {
        if bytes.is_empty() {
            return Ok(());
        }
        if matches!(self.role, Role::None) {
            self.received += bytes.len();
            if self.received > MAX_BYTES_BEFORE_REQUEST {
                return Err(Close::TooMuchBeforeRequest(MAX_BYTES_BEFORE_REQUEST));
            }
        }
        // rml_rtmp 0.8's chunk deserializer panics on some malformed inputs (a new
        // message on another chunk stream while one is partial underflows a length):
        // a panic is a malformed-input close, and the session is dropped with it.
        let checked = catch_unwind(AssertUnwindSafe(|| guard.check(bytes)))
            .unwrap_or_else(|_| Err(Close::Protocol(PANIC.into())));
        self.publish_stream = guard.publishing;
        checked?;
        let results = catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|_| Close::Protocol(PANIC.into()))?
            .map_err(|e| Close::Protocol(e.to_string()))?;
        self.respond(session, results, handler).await
    }

    async fn respond<H: Handler>(
        &mut self,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
        handler: &H,
    ) -> Result<(), Close> {
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => self.write(&packet.bytes).await?,
                ServerSessionResult::UnhandleableMessageReceived(m) => {
                    debug!("{}: ignored RTMP message type {}", self.who(), m.type_id);
                }
                ServerSessionResult::RaisedEvent(event) => {
                    let more = self.event(session, event, handler).await?;
                    // Responses of this event go out before the rest.
                    for r in more.into_iter().rev() {
                        queue.push_front(r);
                    }
                }
            }
        }
        Ok(())
    }

    async fn event<H: Handler>(
        &mut self,
        session: &mut ServerSession,
        event: ServerSessionEvent,
        handler: &H,
    ) -> Result<Vec<ServerSessionResult>, Close> {
        let protocol = |e: rml_rtmp::sessions::ServerSessionError| Close::Protocol(e.to_string());
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                debug!("rtmp {}: connect app {}", self.peer, escaped(&app_name));
                session.accept_request(request_id).map_err(protocol)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                if !matches!(self.role, Role::None) {
                    return Err(Close::SecondRequest);
                }
                let path = match url::parse(&app_name, &stream_key) {
                    Ok(p) => p,
                    Err(e) => {
                        return self
                            .refuse(
                                session,
                                request_id,
                                "NetStream.Publish.BadName",
                                "publish",
                                e.to_string(),
                            )
                            .await
                    }
                };
                let request = PublishRequest {
                    peer: self.peer,
                    room: path.room.clone(),
                    login: path.name.clone(),
                    token: path.token.clone(),
                    record: path.record,
                };
                let answer = timeout(
                    Duration::from_millis(HANDLER_TIMEOUT_MS),
                    handler.publish(request),
                )
                .await
                .map_err(|_| Close::HandlerTimeout(HANDLER_TIMEOUT_MS))?;
                match answer {
                    Err(Refusal { reason, .. }) => {
                        self.refuse(
                            session,
                            request_id,
                            "NetStream.Publish.Rejected",
                            "publish",
                            reason,
                        )
                        .await
                    }
                    Ok(events) => {
                        let ssrc = rand_ssrc(self.peer);
                        self.role = Role::Publisher {
                            path,
                            events,
                            video: H264Ingest::new(VIDEO_PAYLOAD_TYPE, ssrc, DEFAULT_MTU),
                            audio: Default::default(),
                            skip_to_key: false,
                            dropped: 0,
                            _counted: crate::metrics::RtmpSession::publisher(),
                        };
                        info!("{}: publishing", self.who());
                        session.accept_request(request_id).map_err(protocol)
                    }
                }
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => {
                if !matches!(self.role, Role::None) {
                    return Err(Close::SecondRequest);
                }
                let path = match url::parse(&app_name, &stream_key) {
                    Ok(p) => p,
                    Err(e) => {
                        return self
                            .refuse(
                                session,
                                request_id,
                                "NetStream.Play.StreamNotFound",
                                "play",
                                e.to_string(),
                            )
                            .await
                    }
                };
                let request = PlayRequest {
                    peer: self.peer,
                    room: path.room.clone(),
                    stream: path.name.clone(),
                    token: path.token.clone(),
                };
                let answer = timeout(
                    Duration::from_millis(HANDLER_TIMEOUT_MS),
                    handler.play(request),
                )
                .await
                .map_err(|_| Close::HandlerTimeout(HANDLER_TIMEOUT_MS))?;
                match answer {
                    Err(Refusal { reason, not_found }) => {
                        let code = if not_found {
                            "NetStream.Play.StreamNotFound"
                        } else {
                            "NetStream.Play.Failed"
                        };
                        self.refuse(session, request_id, code, "play", reason).await
                    }
                    Ok(tags) => {
                        self.role = Role::Player {
                            path,
                            stream_id,
                            tags,
                            _counted: crate::metrics::RtmpSession::player(),
                        };
                        info!("{}: playing", self.who());
                        // These packets must precede any media (recipes/rtmp-recording.md).
                        session.accept_request(request_id).map_err(protocol)
                    }
                }
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.video(data, timestamp.value)?;
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.audio(data, timestamp.value)?;
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => Err(Close::PeerClosed),
            ServerSessionEvent::PlayStreamFinished { .. } => Err(Close::PeerClosed),
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                debug!(
                    "{}: metadata video codec {:?} audio codec {:?}",
                    self.who(),
                    metadata.video_codec_id,
                    metadata.audio_codec_id
                );
                Ok(Vec::new())
            }
            other => {
                debug!("{}: {:?}", self.who(), DebugEvent(&other));
                Ok(Vec::new())
            }
        }
    }

    /// Refuses a publish or play: the status to the client, then the connection closes.
    async fn refuse(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
        code: &str,
        what: &'static str,
        reason: String,
    ) -> Result<Vec<ServerSessionResult>, Close> {
        if let Ok(results) = session.reject_request(request_id, code, &reason) {
            for r in results {
                if let ServerSessionResult::OutboundResponse(p) = r {
                    self.write(&p.bytes).await?;
                }
            }
        }
        Err(Close::Refused { what, reason })
    }

    fn send(&mut self, event: PublisherEvent) -> Result<bool, Close> {
        let Role::Publisher { events, .. } = &self.role else {
            return Ok(false);
        };
        match events.try_send(event) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Close::Gone),
        }
    }

    fn video(&mut self, data: Bytes, ms: u32) -> Result<(), Close> {
        let Role::Publisher { video, .. } = &mut self.role else {
            return Ok(());
        };
        let mut packets = Vec::new();
        let event = match video.push(&data, ms, &mut packets)? {
            VideoOutcome::Config { profile_level_id } => {
                if self.headers.video(&profile_level_id)? {
                    info!("{}: H.264 {profile_level_id}", self.who());
                }
                PublisherEvent::VideoConfig { profile_level_id }
            }
            VideoOutcome::EndOfSequence => return Ok(()),
            VideoOutcome::AccessUnit(info) => {
                if info.b_frames_detected {
                    return Err(Close::Media(MediaError::BFrames(info.composition_time)));
                }
                let Role::Publisher { skip_to_key, .. } = &mut self.role else {
                    return Ok(());
                };
                if *skip_to_key && !info.key {
                    if let Role::Publisher { dropped, .. } = &mut self.role {
                        *dropped += 1;
                    }
                    return Ok(());
                }
                *skip_to_key = false;
                PublisherEvent::Video { packets, info }
            }
        };
        if !self.send(event)? {
            if let Role::Publisher {
                skip_to_key,
                dropped,
                ..
            } = &mut self.role
            {
                *skip_to_key = true;
                *dropped += 1;
            }
        }
        Ok(())
    }

    fn audio(&mut self, data: Bytes, ms: u32) -> Result<(), Close> {
        let Role::Publisher { audio, .. } = &mut self.role else {
            return Ok(());
        };
        let event = match audio.push(&data, ms)? {
            AudioOutcome::Config(c) => {
                if !self.headers.audio(c)? {
                    // The same again (some encoders repeat it): nothing changes.
                    return Ok(());
                }
                info!(
                    "{}: AAC object type {}, {} Hz, {} channels",
                    self.who(),
                    c.object_type,
                    c.sample_rate,
                    c.channels
                );
                PublisherEvent::AudioConfig(c)
            }
            AudioOutcome::Frame(f) => PublisherEvent::Audio(f),
        };
        // Audio frames are small; a full channel drops this one.
        self.send(event)?;
        Ok(())
    }
}

/// Events worth only a debug line, printed without client strings.
struct DebugEvent<'a>(&'a ServerSessionEvent);

impl std::fmt::Debug for DebugEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. } => {
                write!(f, "ignored command {}", escaped(command_name))
            }
            ServerSessionEvent::ReleaseStreamRequested { .. } => write!(f, "releaseStream"),
            ServerSessionEvent::AcknowledgementReceived { bytes_received } => {
                write!(f, "acknowledgement of {bytes_received} bytes")
            }
            _ => write!(f, "session event"),
        }
    }
}

/// A per-connection SSRC (the stream core rewrites SSRCs per player anyway).
fn rand_ssrc(peer: SocketAddr) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ (peer.port() as u32) << 16
}

/// An `onStatus` error for `stream_id`, for refusals after a publish was accepted
/// (rml_rtmp only sends statuses for outstanding requests).
pub fn status_packet(stream_id: u32, code: &str, description: &str) -> Option<Vec<u8>> {
    let mut info = std::collections::HashMap::new();
    info.insert("level".to_string(), Amf0Value::Utf8String("error".into()));
    info.insert("code".to_string(), Amf0Value::Utf8String(code.into()));
    info.insert(
        "description".to_string(),
        Amf0Value::Utf8String(description.into()),
    );
    let message = RtmpMessage::Amf0Command {
        command_name: "onStatus".into(),
        transaction_id: 0.0,
        command_object: Amf0Value::Null,
        additional_arguments: vec![Amf0Value::Object(info)],
    };
    let payload = message
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .ok()?;
    let mut serializer = ChunkSerializer::new();
    // The chunk size the session announced; the SetChunkSize packet itself is not sent.
    serializer
        .set_max_chunk_size(4096, RtmpTimestamp::new(0))
        .ok()?;
    serializer
        .serialize(&payload, true, false)
        .ok()
        .map(|p| p.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_address_until_dropped() {
        let addresses = Arc::new(PerAddress::default());
        let a: std::net::IpAddr = [192, 0, 2, 1].into();
        let b: std::net::IpAddr = [192, 0, 2, 2].into();
        let first = addresses.admit(a, 2).expect("first");
        let second = addresses.admit(a, 2).expect("second");
        assert!(addresses.admit(a, 2).is_none(), "a third from one address");
        let other = addresses
            .admit(b, 2)
            .expect("another address is counted apart");
        drop(second);
        let again = addresses.admit(a, 2).expect("a slot is free again");
        drop((first, again, other));
        assert!(
            addresses.0.lock().unwrap().is_empty(),
            "nothing left counted"
        );
    }

    fn message(type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        // One type-0 chunk on csid 3 (payloads here stay under the 128-byte chunk size).
        let len = payload.len() as u32;
        let mut v = vec![0x03, 0, 0, 0];
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&stream_id.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn command(name: &str, stream_id: u32) -> Vec<u8> {
        let mut p = vec![2];
        p.extend_from_slice(&(name.len() as u16).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        message(20, stream_id, &p)
    }

    #[test]
    fn guard_refuses_chunk_size_abuse() {
        for (size, refused) in [
            (0u32, true),
            (1, false),
            (4096, false),
            (MAX_CHUNK_SIZE, false),
            (MAX_CHUNK_SIZE + 1, true),
            (1 << 31, true),
            (u32::MAX, true),
        ] {
            let r = Guard::new().check(&message(1, 0, &size.to_be_bytes()));
            let caught = matches!(r, Err(Close::ChunkSize(s)) if s == size)
                || matches!(r, Err(Close::Chunk(ChunkError::ChunkSize(s))) if s == size);
            assert_eq!(caught, refused, "{size}");
        }
        assert!(matches!(
            Guard::new().check(&message(1, 0, &[0, 1])),
            Err(Close::Protocol(_))
        ));
    }

    #[test]
    fn guard_follows_the_command_order() {
        let mut g = Guard::new();
        assert!(matches!(
            g.check(&command("publish", 1)),
            Err(Close::BeforeConnect("publish"))
        ));
        let mut g = Guard::new();
        assert!(matches!(
            g.check(&message(9, 1, &[0x17, 1])),
            Err(Close::BeforeConnect("video"))
        ));
        let mut g = Guard::new();
        g.check(&command("connect", 0)).unwrap();
        g.check(&command("createStream", 0)).unwrap();
        assert!(matches!(
            g.check(&message(8, 1, &[0xaf, 1])),
            Err(Close::UnknownStream {
                kind: "audio",
                stream_id: 1
            })
        ));
        let mut g = Guard::new();
        g.check(&command("connect", 0)).unwrap();
        g.check(&command("publish", 1)).unwrap();
        g.check(&message(9, 1, &[0x17, 1])).unwrap();
        assert!(matches!(
            g.check(&message(9, 2, &[0x17, 1])),
            Err(Close::UnknownStream {
                kind: "video",
                stream_id: 2
            })
        ));
        assert!(matches!(
            g.check(&command("play", 1)),
            Err(Close::SecondRequest)
        ));
        assert!(matches!(
            g.check(&command("connect", 0)),
            Err(Close::SecondConnect)
        ));
        // A command without a name string.
        assert!(matches!(
            Guard::new().check(&message(20, 0, &[5, 0])),
            Err(Close::Protocol(_))
        ));
        // Junk chunks.
        assert!(matches!(
            Guard::new().check(&[0xff; 16]),
            Err(Close::Chunk(ChunkError::NoPreviousHeader(63)))
        ));
    }

    #[test]
    fn guard_bounds_amf_messages() {
        let mut g = Guard::new();
        // 70 000 bytes of AMF data in 128-byte chunks.
        let len = 70_000u32;
        let mut v = vec![0x03, 0, 0, 0];
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.extend_from_slice(&[18, 0, 0, 0, 0]);
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(128);
            v.extend(std::iter::repeat_n(0u8, n));
            left -= n;
            if left > 0 {
                v.push(0xc3);
            }
        }
        // Before a publish the chunk scanner refuses its header already.
        assert!(matches!(
            g.check(&v),
            Err(Close::Chunk(ChunkError::MessageTooLarge {
                length: 70_000,
                ..
            }))
        ));
        // After it, media may be large but AMF still may not.
        let mut g = Guard::new();
        g.check(&command("connect", 0)).unwrap();
        g.check(&command("publish", 1)).unwrap();
        assert!(matches!(g.check(&v), Err(Close::CommandTooLarge(70_000))));
    }

    #[test]
    fn sequence_headers_may_repeat_but_not_change_without_end() {
        let aac = |sample_rate| crate::rtmp::flv::AacConfig {
            object_type: 2,
            sample_rate,
            channels: 2,
        };
        let mut h = SequenceHeaders::default();
        assert!(h.video("42c01f").unwrap());
        assert!(h.audio(aac(44100)).unwrap());
        // Repeats (with every key frame, for some encoders) are no change.
        for _ in 0..100 {
            assert!(!h.video("42c01f").unwrap());
            assert!(!h.audio(aac(44100)).unwrap());
        }
        // Changes are counted across audio and video.
        for i in 0..MAX_CONFIG_CHANGES / 2 {
            assert!(h
                .video(if i % 2 == 0 { "64001f" } else { "42c01f" })
                .unwrap());
            assert!(h
                .audio(aac(if i % 2 == 0 { 48000 } else { 44100 }))
                .unwrap());
        }
        assert!(matches!(
            h.audio(aac(32000)),
            Err(Close::ConfigChanges("audio"))
        ));
        assert_eq!(
            Close::ConfigChanges("audio").to_string(),
            "the audio configuration (sequence header) changed more than 16 times"
        );
    }

    #[test]
    fn budget_is_per_window() {
        let mut b = Budget::new(8); // 2000 bytes per 2 s
        b.spend(1500).unwrap();
        b.spend(500).unwrap();
        assert!(matches!(b.spend(1), Err(Close::Flood(8))));
    }

    #[test]
    fn status_packets_are_well_formed_chunks() {
        let bytes = status_packet(1, "NetStream.Publish.Rejected", "video codec VP6").unwrap();
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(4096).unwrap();
        let m = d.get_next_message(&bytes).unwrap().unwrap();
        assert_eq!((m.type_id, m.message_stream_id), (20, 1));
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains("onStatus") && text.contains("video codec VP6"),
            "{text}"
        );
    }
}
