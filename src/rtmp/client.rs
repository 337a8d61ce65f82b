//! An RTMP publishing client on rml_rtmp's `ClientSession`: parse
//! `rtmp://host[:port]/app/streamkey`, connect, handshake, `connect` the app, `publish`
//! the key (live), then send FLV tag bodies with their timestamps.
//!
//! Every step has a deadline and every write a timeout. What the server sends is read
//! through the chunk scanner (bounded messages, no interleaving) and answered (acks,
//! pings); an `onStatus` error or `_error` is an error carrying the server's reason.
//! The stream key is a secret (YouTube's is the credential): [`Target`] prints as
//! `rtmp://host/app/****`, and errors carry only that form and the server's text with
//! the key masked.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::chunk::{ChunkError, ChunkScanner};
use super::server::{FlvTag, TagKind, MAX_COMMAND_BYTES};

/// The default RTMP port.
pub const DEFAULT_PORT: u16 = 1935;
/// What a redacted stream key prints as.
pub const REDACTED: &str = "****";
/// Size of one socket read.
const READ_BUFFER: usize = 16 << 10;
/// The chunk size announced to the server (rml_rtmp sends it after `connect`).
const CHUNK_SIZE: u32 = 4096;
/// Longest URL accepted.
const MAX_URL: usize = 4096;

/// Where a push goes: the parts of `rtmp://host[:port]/app/streamkey`.
/// `Display` and `Debug` print the key as `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: Option<u16>,
    app: String,
    key: String,
}

/// Why an RTMP URL was refused (never quoting the URL, which holds the key).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("rtmps:// (RTMP over TLS) is not supported: use an rtmp:// URL")]
    Rtmps,
    #[error("not an rtmp:// URL (expected rtmp://host[:port]/app/streamkey)")]
    Scheme,
    #[error("no host in the RTMP URL (expected rtmp://host[:port]/app/streamkey)")]
    NoHost,
    #[error("the port of the RTMP URL is not a number from 1 to 65535")]
    BadPort,
    #[error("user:password@ in RTMP URLs is not supported")]
    Credentials,
    #[error("no application in the RTMP URL (expected rtmp://host[:port]/app/streamkey)")]
    NoApp,
    #[error("no stream key in the RTMP URL (expected rtmp://host[:port]/app/streamkey)")]
    NoKey,
    #[error("the RTMP URL contains spaces or control characters")]
    BadCharacter,
    #[error("the RTMP URL is longer than {MAX_URL} bytes")]
    TooLong,
}

impl Target {
    /// Parses `rtmp://host[:port]/app[/...]/streamkey[?query]`: the app is the first
    /// path segment, the key everything after it (query included), sent as written.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let url = url.trim();
        if url.len() > MAX_URL {
            return Err(TargetError::TooLong);
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TargetError::BadCharacter);
        }
        let (scheme, rest) = url.split_once("://").ok_or(TargetError::Scheme)?;
        match scheme.to_ascii_lowercase().as_str() {
            "rtmp" => {}
            "rtmps" | "rtmpts" | "rtmpe" | "rtmpte" => return Err(TargetError::Rtmps),
            _ => return Err(TargetError::Scheme),
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(TargetError::Credentials);
        }
        let (host, port) = split_host_port(authority)?;
        let (app, key) = path.split_once('/').unwrap_or((path, ""));
        if app.is_empty() || app.starts_with('?') {
            return Err(TargetError::NoApp);
        }
        if app.contains('?') {
            // rtmp://host/app?x=1 has no key; a key must follow the app.
            return Err(TargetError::NoKey);
        }
        let key = key.trim_start_matches('/');
        if key.is_empty() || key.starts_with('?') {
            return Err(TargetError::NoKey);
        }
        Ok(Target {
            host: host.to_string(),
            port,
            app: app.to_string(),
            key: key.to_string(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to (1935 unless the URL names one).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    /// The stream key: a secret, never to be logged.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `rtmp://host[:port]/app/****`.
    pub fn redacted(&self) -> String {
        format!("{}/{REDACTED}", self.tc_url())
    }

    /// `text` with every occurrence of the stream key (and of its part before a `?`)
    /// replaced by `****`, for server messages that may echo it.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(&self.key, REDACTED);
        if let Some((bare, _)) = self.key.split_once('?') {
            if !bare.is_empty() {
                out = out.replace(bare, REDACTED);
            }
        }
        out
    }

    /// `rtmp://host[:port]/app`: `connect`'s tcUrl.
    fn tc_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("rtmp://{host}:{p}/{}", self.app),
            None => format!("rtmp://{host}/{}", self.app),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.redacted())
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), TargetError> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(TargetError::NoHost)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or(TargetError::BadPort)?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(TargetError::NoHost);
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(TargetError::BadPort),
        },
    };
    Ok((host, port))
}

/// Deadlines of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Name resolution and the TCP connection.
    pub connect: Duration,
    /// The RTMP handshake.
    pub handshake: Duration,
    /// From the handshake to the server accepting the publish.
    pub publish: Duration,
    /// Any one write (a stalled server is a dead server).
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
            publish: Duration::from_secs(10),
            write: Duration::from_secs(10),
        }
    }
}

/// A failed push connection: the redacted target and what went wrong.
#[derive(Debug, Error)]
#[error("{target}: {kind}")]
pub struct ClientError {
    /// `rtmp://host[:port]/app/****`.
    pub target: String,
    pub kind: ClientErrorKind,
}

#[derive(Debug, Error)]
pub enum ClientErrorKind {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no TCP connection within {0} ms")]
    ConnectTimeout(u128),
    #[error("no RTMP handshake within {0} ms")]
    HandshakeTimeout(u128),
    #[error("bad RTMP handshake: {0}")]
    Handshake(String),
    #[error("the server refused to connect the application: {0}")]
    ConnectRefused(String),
    #[error("the server refused the publish: {0}")]
    PublishRefused(String),
    #[error("the publish was not accepted within {0} ms")]
    PublishTimeout(u128),
    #[error("the server ended the publish: {0}")]
    Status(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("a write took longer than {0} ms")]
    WriteTimeout(u128),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("RTMP from the server refused: {0}")]
    Chunk(#[from] ChunkError),
    #[error("RTMP protocol: {0}")]
    Protocol(String),
}

/// An `onStatus`/`_error` seen on the wire (rml_rtmp reports only the code).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Status {
    /// `onStatus` or `_error`.
    command: String,
    level: String,
    code: String,
    description: String,
}

impl Status {
    fn is_error(&self) -> bool {
        self.command == "_error"
            || self.level == "error"
            || (self.level.is_empty()
                && ["Fail", "Reject", "BadName", "Denied"]
                    .iter()
                    .any(|w| self.code.contains(w)))
    }

    fn reason(&self) -> String {
        match (self.code.is_empty(), self.description.is_empty()) {
            (false, false) => format!("{} ({})", self.description, self.code),
            (false, true) => self.code.clone(),
            (true, false) => self.description.clone(),
            (true, true) => "no reason given".into(),
        }
    }
}

/// A second deserializer over the server's bytes that keeps the statuses' texts.
struct StatusReader {
    chunks: ChunkDeserializer,
    last: Option<Status>,
}

impl StatusReader {
    fn new() -> StatusReader {
        StatusReader {
            chunks: ChunkDeserializer::new(),
            last: None,
        }
    }

    fn read(&mut self, bytes: &[u8]) -> Result<(), ClientErrorKind> {
        let mut input = bytes;
        loop {
            let message = self
                .chunks
                .get_next_message(input)
                .map_err(|e| ClientErrorKind::Protocol(e.to_string()))?;
            input = &[];
            let Some(payload) = message else {
                return Ok(());
            };
            match payload.to_rtmp_message() {
                Ok(RtmpMessage::SetChunkSize { size }) => self
                    .chunks
                    .set_max_chunk_size(size as usize)
                    .map_err(|e| ClientErrorKind::Protocol(e.to_string()))?,
                Ok(RtmpMessage::Amf0Command {
                    command_name,
                    additional_arguments,
                    ..
                }) if command_name == "onStatus" || command_name == "_error" => {
                    self.last = Some(status_of(&command_name, &additional_arguments));
                }
                _ => {}
            }
        }
    }
}

fn status_of(command: &str, arguments: &[Amf0Value]) -> Status {
    let mut status = Status {
        command: command.into(),
        ..Status::default()
    };
    if let Some(Amf0Value::Object(properties)) = arguments.first() {
        let text = |name: &str| match properties.get(name) {
            Some(Amf0Value::Utf8String(s)) => s.clone(),
            _ => String::new(),
        };
        status.level = text("level");
        status.code = text("code");
        status.description = text("description");
    }
    status
}

/// One publishing connection. Dropping it closes the socket abruptly; [`close`]
/// stops the publish first.
///
/// [`close`]: Publisher::close
pub struct Publisher {
    target: Target,
    label: String,
    socket: TcpStream,
    session: ClientSession,
    scanner: ChunkScanner,
    statuses: StatusReader,
    /// Responses of the session (acks, pongs) waiting to go out before the next tag.
    pending: Vec<u8>,
    buf: Vec<u8>,
    write_timeout: Duration,
    publishing: bool,
}

impl Publisher {
    /// Connects, handshakes, connects the app and publishes the key (live); returns
    /// once the server accepted the publish.
    pub async fn connect(target: &Target, timeouts: Timeouts) -> Result<Publisher, ClientError> {
        let label = target.redacted();
        let fail = |kind| ClientError {
            target: label.clone(),
            kind,
        };
        let address = (target.host.as_str(), target.port());
        let socket = match timeout(timeouts.connect, TcpStream::connect(address)).await {
            Err(_) => {
                return Err(fail(ClientErrorKind::ConnectTimeout(
                    timeouts.connect.as_millis(),
                )))
            }
            Ok(Err(e)) => return Err(fail(ClientErrorKind::Connect(e))),
            Ok(Ok(s)) => s,
        };
        let _ = socket.set_nodelay(true);
        let mut config = ClientSessionConfig::new();
        config.chunk_size = CHUNK_SIZE;
        config.tc_url = Some(target.tc_url());
        config.flash_version = "FMLE/3.0 (compatible; Huddle)".into();
        let (session, init) = ClientSession::new(config)
            .map_err(|e| fail(ClientErrorKind::Protocol(e.to_string())))?;
        let mut publisher = Publisher {
            target: target.clone(),
            label: label.clone(),
            socket,
            session,
            scanner: ChunkScanner::new(MAX_COMMAND_BYTES as u32),
            statuses: StatusReader::new(),
            pending: Vec::new(),
            buf: vec![0; READ_BUFFER],
            write_timeout: timeouts.write,
            publishing: false,
        };
        publisher.queue(init);
        let rest = match timeout(timeouts.handshake, publisher.handshake()).await {
            Err(_) => {
                return Err(fail(ClientErrorKind::HandshakeTimeout(
                    timeouts.handshake.as_millis(),
                )))
            }
            Ok(r) => r.map_err(&fail)?,
        };
        match timeout(timeouts.publish, publisher.start(&rest)).await {
            Err(_) => Err(fail(ClientErrorKind::PublishTimeout(
                timeouts.publish.as_millis(),
            ))),
            Ok(r) => {
                r.map_err(|k| publisher.error(k))?;
                Ok(publisher)
            }
        }
    }

    /// The target, redacted.
    pub fn target(&self) -> &str {
        &self.label
    }

    /// Sends one FLV tag body (video or audio) with its timestamp as given; writes
    /// pending responses first. Not cancel-safe: a cancelled send breaks the stream.
    pub async fn send(&mut self, tag: &FlvTag) -> Result<(), ClientError> {
        let time = RtmpTimestamp::new(tag.timestamp_ms);
        let packet = match tag.kind {
            TagKind::Video => self
                .session
                .publish_video_data(tag.data.clone(), time, false),
            TagKind::Audio => self
                .session
                .publish_audio_data(tag.data.clone(), time, false),
        }
        .map_err(|e| self.error(ClientErrorKind::Protocol(e.to_string())))?;
        self.queue(vec![packet]);
        self.flush().await
    }

    /// Sends `@setDataFrame onMetaData` (stamped by rml_rtmp with its session clock).
    pub async fn send_metadata(&mut self, metadata: &StreamMetadata) -> Result<(), ClientError> {
        let packet = self
            .session
            .publish_metadata(metadata)
            .map_err(|e| self.error(ClientErrorKind::Protocol(e.to_string())))?;
        self.queue(vec![packet]);
        self.flush().await
    }

    /// Waits for bytes from the server and handles them (acks, pings, statuses):
    /// responses are queued for the next [`send`](Publisher::send) or
    /// [`flush`](Publisher::flush). Cancel-safe. An error status or the server
    /// closing is an error.
    pub async fn receive(&mut self) -> Result<(), ClientError> {
        let n = self
            .socket
            .read(&mut self.buf)
            .await
            .map_err(|e| self.error(ClientErrorKind::Io(e)))?;
        if n == 0 {
            return Err(self.error(ClientErrorKind::Closed));
        }
        let bytes = self.buf[..n].to_vec();
        let events = self.input(&bytes).map_err(|k| self.error(k))?;
        for event in events {
            self.event(event).map_err(|k| self.error(k))?;
        }
        Ok(())
    }

    /// Writes the queued responses.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        self.write(&bytes).await.map_err(|k| self.error(k))
    }

    /// Stops the publish (`deleteStream`, what rml_rtmp offers) and closes the
    /// connection, each write bounded by the write timeout.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.publishing {
            let results = self
                .session
                .stop_publishing()
                .map_err(|e| self.error(ClientErrorKind::Protocol(e.to_string())))?;
            self.queue(results);
        }
        self.flush().await?;
        let limit = self.write_timeout;
        match timeout(limit, self.socket.shutdown()).await {
            Ok(r) => r.map_err(|e| self.error(ClientErrorKind::Io(e))),
            Err(_) => Err(self.error(ClientErrorKind::WriteTimeout(limit.as_millis()))),
        }
    }

    fn error(&self, kind: ClientErrorKind) -> ClientError {
        let kind = match kind {
            ClientErrorKind::ConnectRefused(r) => {
                ClientErrorKind::ConnectRefused(self.target.redact(&r))
            }
            ClientErrorKind::PublishRefused(r) => {
                ClientErrorKind::PublishRefused(self.target.redact(&r))
            }
            ClientErrorKind::Status(r) => ClientErrorKind::Status(self.target.redact(&r)),
            other => other,
        };
        ClientError {
            target: self.label.clone(),
            kind,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientErrorKind> {
        match timeout(self.write_timeout, self.socket.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClientErrorKind::WriteTimeout(
                self.write_timeout.as_millis(),
            )),
        }
    }

    async fn handshake(&mut self) -> Result<Vec<u8>, ClientErrorKind> {
        let mut hs = Handshake::new(PeerType::Client);
        let hello = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| ClientErrorKind::Handshake(e.to_string()))?;
        self.write(&hello).await?;
        let mut total = 0;
        loop {
            let n = self.socket.read(&mut self.buf).await?;
            if n == 0 {
                return Err(ClientErrorKind::Handshake(
                    "the server closed the connection during the handshake".into(),
                ));
            }
            total += n;
            // S0 + S1 + S2 are 3073 bytes; the server may pipeline more.
            if total > 3073 + READ_BUFFER {
                return Err(ClientErrorKind::Handshake("too many bytes".into()));
            }
            let bytes = self.buf[..n].to_vec();
            match hs.process_bytes(&bytes) {
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
                Err(e) => return Err(ClientErrorKind::Handshake(e.to_string())),
            }
        }
    }

    /// `connect`, then `publish`, until the server accepts the publish.
    async fn start(&mut self, rest: &[u8]) -> Result<(), ClientErrorKind> {
        let request = self
            .session
            .request_connection(self.target.app.clone())
            .map_err(|e| ClientErrorKind::Protocol(e.to_string()))?;
        self.queue(vec![request]);
        self.flush_kind().await?;
        let mut events = self.input(rest)?;
        let mut connected = false;
        loop {
            for event in std::mem::take(&mut events) {
                match event {
                    ClientSessionEvent::ConnectionRequestAccepted => {
                        connected = true;
                        let request = self
                            .session
                            .request_publishing(self.target.key.clone(), PublishRequestType::Live)
                            .map_err(|e| ClientErrorKind::Protocol(e.to_string()))?;
                        self.queue(vec![request]);
                    }
                    ClientSessionEvent::ConnectionRequestRejected { description } => {
                        let reason = match (&self.statuses.last, description.is_empty()) {
                            (Some(s), true) => s.reason(),
                            (_, false) => description,
                            (None, true) => "no reason given".into(),
                        };
                        return Err(ClientErrorKind::ConnectRefused(reason));
                    }
                    ClientSessionEvent::PublishRequestAccepted => {
                        self.publishing = true;
                        return self.flush_kind().await;
                    }
                    other => {
                        if let Err(ClientErrorKind::Status(reason)) = self.event(other) {
                            return Err(if connected {
                                ClientErrorKind::PublishRefused(reason)
                            } else {
                                ClientErrorKind::ConnectRefused(reason)
                            });
                        }
                    }
                }
            }
            self.flush_kind().await?;
            let n = self.socket.read(&mut self.buf).await?;
            if n == 0 {
                return Err(match &self.statuses.last {
                    Some(s) if s.is_error() && connected => {
                        ClientErrorKind::PublishRefused(s.reason())
                    }
                    Some(s) if s.is_error() => ClientErrorKind::ConnectRefused(s.reason()),
                    _ => ClientErrorKind::Closed,
                });
            }
            let bytes = self.buf[..n].to_vec();
            // rml_rtmp fails on a refused createStream: a refused publish.
            events = self.input(&bytes).map_err(|e| match e {
                ClientErrorKind::Status(r) if connected => ClientErrorKind::PublishRefused(r),
                ClientErrorKind::Status(r) => ClientErrorKind::ConnectRefused(r),
                e => e,
            })?;
        }
    }

    async fn flush_kind(&mut self) -> Result<(), ClientErrorKind> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        self.write(&bytes).await
    }

    fn queue(&mut self, results: Vec<ClientSessionResult>) -> Vec<ClientSessionEvent> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    self.pending.extend_from_slice(&p.bytes)
                }
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        events
    }

    /// Server bytes through the scanner, the status reader and the session.
    fn input(&mut self, bytes: &[u8]) -> Result<Vec<ClientSessionEvent>, ClientErrorKind> {
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        self.scanner.scan(bytes)?;
        // rml_rtmp 0.8 panics on some malformed chunk streams (see `server`).
        let panic = || ClientErrorKind::Protocol("chunks the RTMP library cannot parse".into());
        catch_unwind(AssertUnwindSafe(|| self.statuses.read(bytes))).map_err(|_| panic())??;
        let results = catch_unwind(AssertUnwindSafe(|| self.session.handle_input(bytes)))
            .map_err(|_| panic())?;
        match results {
            Ok(results) => Ok(self.queue(results)),
            Err(e) => match &self.statuses.last {
                // rml_rtmp fails on a refused createStream; the reason is in the status.
                Some(s) if s.is_error() => Err(ClientErrorKind::Status(s.reason())),
                _ => Err(ClientErrorKind::Protocol(e.to_string())),
            },
        }
    }

    /// Events after the publish: an error status ends it, the rest is bookkeeping.
    fn event(&mut self, event: ClientSessionEvent) -> Result<(), ClientErrorKind> {
        let status = match &event {
            ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                match self.statuses.last.take() {
                    Some(s) if &s.code == code => s,
                    _ => Status {
                        code: code.clone(),
                        ..Status::default()
                    },
                }
            }
            // An `_error` for a transaction rml_rtmp does not track (Huddle's and
            // rml_rtmp's servers refuse a publish that way).
            ClientSessionEvent::UnknownTransactionResultReceived { .. } => {
                match self.statuses.last.take() {
                    Some(s) if s.command == "_error" => s,
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        if status.is_error() {
            return Err(ClientErrorKind::Status(status.reason()));
        }
        Ok(())
    }
}

/// The statuses of a fake server, for tests: `onStatus` with these properties.
#[cfg(test)]
fn status_object(level: &str, code: &str, description: &str) -> Vec<Amf0Value> {
    let mut p = std::collections::HashMap::new();
    p.insert("level".to_string(), Amf0Value::Utf8String(level.into()));
    p.insert("code".to_string(), Amf0Value::Utf8String(code.into()));
    p.insert(
        "description".to_string(),
        Amf0Value::Utf8String(description.into()),
    );
    vec![Amf0Value::Object(p)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(String, u16, String, String), TargetError> {
        Target::parse(url).map(|t| (t.host.clone(), t.port(), t.app.clone(), t.key.clone()))
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn urls_split_into_host_port_app_and_key() {
        assert_eq!(
            parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl"),
            Ok((
                s("a.rtmp.youtube.com"),
                1935,
                s("live2"),
                s("abcd-efgh-ijkl")
            ))
        );
        assert_eq!(
            parse("rtmp://127.0.0.1:19350/live/key?pw=1&x=2"),
            Ok((s("127.0.0.1"), 19350, s("live"), s("key?pw=1&x=2")))
        );
        assert_eq!(
            parse("RTMP://cdn.example/app/_definst_/stream"),
            Ok((s("cdn.example"), 1935, s("app"), s("_definst_/stream")))
        );
        assert_eq!(
            parse("rtmp://[::1]:2000/live/k"),
            Ok((s("::1"), 2000, s("live"), s("k")))
        );
        assert_eq!(
            parse("  rtmp://h//k  ").map(|p| p.2),
            Err(TargetError::NoApp),
            "an empty app"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, error) in [
            (
                "rtmps://a.rtmps.youtube.com:443/live2/k",
                TargetError::Rtmps,
            ),
            ("http://example.com/live/k", TargetError::Scheme),
            ("a.rtmp.youtube.com/live2/k", TargetError::Scheme),
            ("", TargetError::Scheme),
            ("rtmp://", TargetError::NoHost),
            ("rtmp:///live/k", TargetError::NoHost),
            ("rtmp://:1935/live/k", TargetError::NoHost),
            ("rtmp://h:0/live/k", TargetError::BadPort),
            ("rtmp://h:65536/live/k", TargetError::BadPort),
            ("rtmp://h:+1/live/k", TargetError::BadPort),
            ("rtmp://h:x/live/k", TargetError::BadPort),
            ("rtmp://[::1/live/k", TargetError::NoHost),
            ("rtmp://[::1]x/live/k", TargetError::BadPort),
            ("rtmp://u:p@h/live/k", TargetError::Credentials),
            ("rtmp://h", TargetError::NoApp),
            ("rtmp://h/", TargetError::NoApp),
            ("rtmp://h/live", TargetError::NoKey),
            ("rtmp://h/live/", TargetError::NoKey),
            ("rtmp://h/live?x=1", TargetError::NoKey),
            ("rtmp://h/live/?x=1", TargetError::NoKey),
            ("rtmp://h/li ve/k", TargetError::BadCharacter),
        ] {
            assert_eq!(Target::parse(url).map(|_| ()), Err(error), "{url:?}");
        }
        // Surrounding space (a trailing newline of a pasted key) is trimmed.
        assert!(Target::parse(" rtmp://h/live/k\n").is_ok());
        assert_eq!(
            Target::parse("rtmp://h/live/k\u{7}"),
            Err(TargetError::BadCharacter)
        );
        let long = format!("rtmp://h/live/{}", "k".repeat(MAX_URL));
        assert_eq!(Target::parse(&long), Err(TargetError::TooLong));
    }

    #[test]
    fn the_key_is_never_printed() {
        let t = Target::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl").unwrap();
        assert_eq!(t.redacted(), "rtmp://a.rtmp.youtube.com/live2/****");
        assert_eq!(t.to_string(), "rtmp://a.rtmp.youtube.com/live2/****");
        assert!(!format!("{t:?}").contains("abcd"));
        let t = Target::parse("rtmp://[::1]:2000/live/sec?token=zzz").unwrap();
        assert_eq!(t.redacted(), "rtmp://[::1]:2000/live/****");
        assert_eq!(t.tc_url(), "rtmp://[::1]:2000/live");
        assert_eq!(
            t.redact("stream sec?token=zzz refused; sec is busy"),
            "stream **** refused; **** is busy"
        );
        // Parse errors never quote the URL.
        let e = Target::parse("rtmps://h/live/topsecret").unwrap_err();
        assert!(!e.to_string().contains("topsecret"));
    }

    #[test]
    fn statuses_carry_the_server_reason() {
        let s = status_of(
            "onStatus",
            &status_object(
                "error",
                "NetStream.Publish.BadName",
                "Stream already exists",
            ),
        );
        assert!(s.is_error());
        assert_eq!(
            s.reason(),
            "Stream already exists (NetStream.Publish.BadName)"
        );
        let s = status_of(
            "onStatus",
            &status_object("status", "NetStream.Unpublish.Success", ""),
        );
        assert!(!s.is_error());
        assert!(status_of("_error", &[]).is_error());
        let s = status_of(
            "_error",
            &status_object("_error", "NetStream.Publish.Rejected", "room full is full"),
        );
        assert!(s.is_error());
        assert_eq!(s.reason(), "room full is full (NetStream.Publish.Rejected)");
        let bare = Status {
            code: "NetStream.Publish.Rejected".into(),
            ..Status::default()
        };
        assert!(bare.is_error());
        assert_eq!(bare.reason(), "NetStream.Publish.Rejected");
    }

    #[test]
    fn the_status_reader_follows_the_servers_chunk_size() {
        use rml_rtmp::chunk_io::ChunkSerializer;
        let mut ser = ChunkSerializer::new();
        let mut wire = ser
            .set_max_chunk_size(4096, RtmpTimestamp::new(0))
            .unwrap()
            .bytes;
        let long = "x".repeat(300);
        let message = RtmpMessage::Amf0Command {
            command_name: "onStatus".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: status_object("error", "NetStream.Publish.Rejected", &long),
        };
        let payload = message
            .into_message_payload(RtmpTimestamp::new(0), 1)
            .unwrap();
        wire.extend(ser.serialize(&payload, false, false).unwrap().bytes);
        let mut r = StatusReader::new();
        // Byte by byte: statuses spanning reads are assembled.
        for b in &wire {
            r.read(std::slice::from_ref(b)).unwrap();
        }
        let last = r.last.unwrap();
        assert_eq!(last.code, "NetStream.Publish.Rejected");
        assert_eq!(last.description, long);
    }
}
