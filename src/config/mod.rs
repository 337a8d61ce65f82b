//! The service configuration: one TOML file, every key with a documented default.
//!
//! `DEFAULT_TOML` is what `huddle --print-default-config` prints; a unit test keeps
//! it equal to `Config::default()`, so the commented file and the code cannot drift.
//! Unknown keys are errors (a typo must not silently fall back to a default).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::rooms::CoreConfig;

pub mod board;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {why}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: Http,
    pub signalling: Signalling,
    pub rooms: Rooms,
    pub media: Media,
    pub records: Records,
    pub rtmp: Rtmp,
    pub device: Device,
    pub auth: Auth,
    pub log: Log,
    pub api: Api,
    pub metrics: Metrics,
    /// `[[webhooks]]`: receivers of the service's events.
    pub webhooks: Vec<Webhook>,
}

/// The admin REST API (`/api/v1/`, `server::api`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Bearer keys: `"sha256:<64 hex digits>"` (the SHA-256 of the key, as
    /// `huddle api-key` prints it) or the key itself (at least 16 characters). Empty:
    /// only loopback clients are answered.
    pub keys: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Failed key checks allowed per source address per minute; more get 429.
    pub failed_attempts_per_minute: u32,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            keys: Vec::new(),
            max_body_bytes: 65_536,
            failed_attempts_per_minute: 10,
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("keys", &format!("({} keys)", self.keys.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .field(
                "failed_attempts_per_minute",
                &self.failed_attempts_per_minute,
            )
            .finish()
    }
}

/// Prometheus metrics at `/metrics` (`metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub enabled: bool,
    /// Addresses or networks ("10.0.0.0/8", "192.0.2.7") that may read `/metrics`
    /// without an `[api]` key, besides loopback clients.
    pub allow: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            allow: Vec::new(),
        }
    }
}

/// One `[[webhooks]]` receiver. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of `X-Huddle-Signature`.
    pub secret: String,
    /// Event names to send (`crate::events::EventKind`); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// One delivery attempt may take this long.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// The first retry delay; doubles up to 60 s.
    #[serde(default = "default_webhook_retry_ms")]
    pub retry_ms: u64,
    /// Attempts per event before it is given up (and counted as dropped).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Events waiting for this receiver; more are dropped (and counted).
    #[serde(default = "default_webhook_queue")]
    pub queue: usize,
}

fn default_webhook_timeout_ms() -> u64 {
    5000
}
fn default_webhook_retry_ms() -> u64 {
    1000
}
fn default_webhook_attempts() -> u32 {
    10
}
fn default_webhook_queue() -> usize {
    1024
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"(hidden)")
            .field("events", &self.events)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_ms", &self.retry_ms)
            .field("max_attempts", &self.max_attempts)
            .field("queue", &self.queue)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: SocketAddr,
    /// Serve plain HTTP/WS on `listen`.
    pub plain: bool,
    /// Serve HTTPS/WSS on `tls_listen`.
    pub tls: bool,
    pub tls_listen: SocketAddr,
    /// PEM certificate chain and key; both empty: a generated self-signed certificate.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Where the generated certificate is kept.
    pub tls_dir: PathBuf,
    /// Web origins (besides the device's own and `file://` pages) whose pages may open
    /// the WebSocket signalling; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// TCP connections served at once, both listeners together.
    pub max_connections: usize,
    /// TCP connections at once from one source address.
    pub max_connections_per_address: usize,
    /// New connections per second from one source address (burst: twice that).
    pub connection_rate_per_address: u32,
    /// A request's header must arrive within this long (and the TLS handshake too).
    pub header_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            plain: true,
            tls: true,
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_dir: PathBuf::from("tls"),
            allowed_origins: Vec::new(),
            max_connections: 1_024,
            max_connections_per_address: 64,
            connection_rate_per_address: 50,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signalling {
    pub max_sessions: usize,
    pub max_message_bytes: usize,
    pub ping_interval_ms: u64,
    pub ping_misses: u32,
    pub rate_messages_per_sec: u32,
    pub rate_burst: u32,
    pub outbound_queue: usize,
    /// Bytes of rendered frames waiting toward one session before it is closed as too
    /// slow.
    pub outbound_bytes: usize,
    /// One frame must be written to the socket within this long.
    pub write_timeout_ms: u64,
    /// WebSocket sessions at once from one source address.
    pub max_sessions_per_address: usize,
}

impl Default for Signalling {
    fn default() -> Self {
        Signalling {
            max_sessions: 256,
            max_message_bytes: 262_144,
            ping_interval_ms: 5_000,
            ping_misses: 3,
            rate_messages_per_sec: 50,
            rate_burst: 200,
            outbound_queue: 1_024,
            outbound_bytes: 1_048_576,
            write_timeout_ms: 10_000,
            max_sessions_per_address: 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rooms {
    pub idle_timeout_ms: u64,
    pub max_participants: usize,
    pub max_rooms: usize,
    pub max_streams_per_participant: usize,
    pub max_streams: usize,
    pub max_players: usize,
    pub max_rooms_per_session: usize,
    pub max_streams_per_session: usize,
    pub max_players_per_session: usize,
    /// Longest room name and login in characters as people count them (grapheme
    /// clusters).
    pub max_name_chars: usize,
    /// The byte bound of a room name or login (UTF-8); unset: 4 × `max_name_chars`.
    pub max_name_bytes: Option<usize>,
}

impl Rooms {
    /// `max_name_bytes`, or 4 bytes per character when unset.
    pub fn name_bytes(&self) -> usize {
        self.max_name_bytes
            .unwrap_or(self.max_name_chars.saturating_mul(4))
    }

    /// Whether `name` is a valid room name or login (see `rooms::check_name`).
    pub fn check_name(&self, what: &str, name: &str) -> Result<(), String> {
        crate::rooms::check_name(what, name, self.max_name_chars, self.name_bytes())
    }
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms {
            idle_timeout_ms: 60_000,
            max_participants: 16,
            max_rooms: 64,
            max_streams_per_participant: 2,
            max_streams: 32,
            max_players: 256,
            max_rooms_per_session: 4,
            max_streams_per_session: 4,
            max_players_per_session: 32,
            max_name_chars: 128,
            max_name_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    pub udp_port: u16,
    pub advertise_ips: Vec<IpAddr>,
    pub ice_timeout_ms: u64,
    pub preferred_video_codec: VideoCodec,
    /// The web app publishes simulcast (three layers) when a room has at least this
    /// many people, itself included (0: never).
    pub simulcast_min_participants: u32,
    /// ICE-TCP (RFC 6544) for networks that block UDP: `None` (not set) the same port
    /// number as `udp_port`, `Some(0)` off.
    pub tcp_port: Option<u16>,
    /// Media workers: the SFU task and `workers - 1` threads that protect and send
    /// players' packets (`sfu::shard`). 0: one per core of the machine.
    pub workers: usize,
    /// Each player's share of a burst leaves as one UDP GSO segment train (`sfu::send`);
    /// false: datagram by datagram (a network driver that mishandles UDP segmentation).
    pub udp_gso: bool,
    /// The media socket's receive and send buffers, KiB (0: the kernel's default). The
    /// kernel caps them at `net.core.rmem_max`/`wmem_max` (raised by the sysctl.d file
    /// in `systemd/`).
    pub socket_buffer_kb: u32,
}

impl Media {
    /// `workers`, with 0 resolved to the machine's cores (at most `MAX_WORKERS`).
    pub fn workers(&self) -> usize {
        let cores = || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        match self.workers {
            0 => cores().min(crate::metrics::MAX_WORKERS),
            n => n,
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        Media {
            udp_port: 20_000,
            advertise_ips: Vec::new(),
            ice_timeout_ms: 15_000,
            preferred_video_codec: VideoCodec::H264,
            simulcast_min_participants: 3,
            tcp_port: None,
            workers: 0,
            udp_gso: true,
            socket_buffer_kb: 0,
        }
    }
}

/// The video codec a publish answer picks when the browser offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    Vp8,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Records {
    pub dir: PathBuf,
    /// A fragment (moof + mdat, synced to disk) at least this often: the most a crash
    /// or a power cut loses.
    pub fragment_ms: u64,
    /// Run with `<mixed file> <room>` after a room's mix is written; empty: none.
    pub on_room_record_hook: String,
    /// A hook still running after this is killed.
    pub hook_timeout_ms: u64,
    /// Finished records older than this are deleted (0: kept).
    pub max_age_days: u64,
    /// The oldest finished records are deleted while the directory holds more (0: no
    /// limit).
    pub max_total_mb: u64,
    pub mixer: Mixer,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            dir: PathBuf::from("records"),
            fragment_ms: 500,
            on_room_record_hook: String::new(),
            hook_timeout_ms: 60_000,
            max_age_days: 0,
            max_total_mb: 0,
            mixer: Mixer::default(),
        }
    }
}

/// `[records.mixer]`: how a recorded room's streams are mixed into one file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mixer {
    /// Mix the video (a grid of the streams present at each moment).
    pub video: bool,
    /// Mix the audio of every stream.
    pub audio: bool,
    /// Each tile labelled with its participant's login.
    pub show_names: bool,
    pub width: u32,
    pub height: u32,
    pub frame_rate: u32,
    /// The video encoder (an ffmpeg encoder name: libx264, or a board's h264_v4l2m2m).
    pub encoder: String,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer {
            video: true,
            audio: true,
            show_names: true,
            width: 1280,
            height: 720,
            frame_rate: 30,
            encoder: "libx264".into(),
        }
    }
}

/// The RTMP edge (`rtmp::server`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rtmp {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The whole RTMP handshake (C0..C2) must arrive within this.
    pub handshake_timeout_ms: u64,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Concurrent RTMP connections; more are closed at accept.
    pub max_connections: usize,
    /// Concurrent RTMP connections from one client address.
    pub max_connections_per_address: usize,
    /// The byte budget of one connection: more than this many kbit in any second
    /// (averaged over 2 s) closes it as a flood.
    pub max_kbps: u32,
    /// `[[rtmp.push]]`: streams sent to other RTMP servers (`rtmp::push`).
    pub push: Vec<RtmpPush>,
}

/// One `[[rtmp.push]]` entry. `Debug` hides the URL's stream key.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmpPush {
    /// The name of the stream to send.
    pub stream: String,
    /// `rtmp://host[:port]/app/streamkey`.
    pub url: String,
    /// The first retry delay after a failure; doubles up to 30 s.
    #[serde(default = "default_push_retry_ms")]
    pub retry_ms: u64,
}

fn default_push_retry_ms() -> u64 {
    1000
}

impl std::fmt::Debug for RtmpPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = crate::rtmp::client::Target::parse(&self.url)
            .map(|t| t.redacted())
            .unwrap_or_else(|_| "(invalid)".into());
        f.debug_struct("RtmpPush")
            .field("stream", &self.stream)
            .field("url", &url)
            .field("retry_ms", &self.retry_ms)
            .finish()
    }
}

impl Default for Rtmp {
    fn default() -> Self {
        Rtmp {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 1935)),
            handshake_timeout_ms: 5000,
            idle_timeout_ms: 15000,
            max_connections: 16,
            max_connections_per_address: 8,
            max_kbps: 40000,
            push: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Device {
    /// Board profile merged under this file (see `board/`); empty for none.
    pub board: String,
    pub camera: String,
    pub capture: Capture,
    pub encoder: String,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub bitrate_kbps: u32,
    pub microphone: String,
    pub login: String,
    /// A GStreamer pipeline description producing the camera's H.264; when set it
    /// replaces camera/capture/encoder.
    pub pipeline: String,
    /// Rooms the device joins at start and stays in.
    pub rooms: Vec<String>,
    /// Also join every room when it is created, and leave it when it empties.
    pub join_new_rooms: bool,
    /// A source with no frame for this long is restarted.
    pub stall_timeout_ms: u64,
    /// First retry delay after a source failed; doubles up to 30 s.
    pub retry_ms: u64,
    /// Record the device's streams (as `record: true` does for a browser's).
    pub record: bool,
    /// Where the remote participants are heard: "auto" (the default ALSA playback
    /// device when a card exists), an ALSA PCM name, or "none".
    pub speaker: String,
    /// The speaker's jitter buffer target per remote stream.
    pub speaker_latency_ms: u64,
    /// Acoustic echo cancellation of the speaker in the microphone (when both are
    /// real devices).
    pub echo_cancel: bool,
    pub noise_suppression: bool,
    pub auto_gain: bool,
    /// Camera and microphone run all the time, not only while someone is there.
    pub always_on: bool,
    /// How long capture goes on after the last remote participant left.
    pub capture_grace_ms: u64,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            board: String::new(),
            camera: "auto".into(),
            capture: Capture::Auto,
            encoder: "auto".into(),
            width: 1280,
            height: 720,
            framerate: 30,
            bitrate_kbps: 1500,
            microphone: "auto".into(),
            login: "Room system".into(),
            pipeline: String::new(),
            rooms: Vec::new(),
            join_new_rooms: true,
            stall_timeout_ms: 5000,
            retry_ms: 1000,
            record: false,
            speaker: "auto".into(),
            speaker_latency_ms: 60,
            echo_cancel: true,
            noise_suppression: true,
            auto_gain: true,
            always_on: false,
            capture_grace_ms: 10_000,
        }
    }
}

/// How the device camera's H.264 is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capture {
    /// UVC H.264 if the camera offers it, else GStreamer with `encoder`.
    Auto,
    /// The camera encodes H.264 itself (UVC), read with V4L2 mmap streaming.
    UvcH264,
    /// A GStreamer pipeline: raw camera frames into the `encoder` element.
    Gstreamer,
}

/// Who may enter rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the device.
    #[default]
    Open,
    /// A JWT in `custom.token` (see `auth.rs`).
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub mode: AuthMode,
    /// HS256 shared secret.
    pub secret: String,
    /// PEM public key (Ed25519 or RSA) for EdDSA / RS256 tokens.
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: LogLevel,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: LogLevel::Info,
        }
    }
}

/// The complete default configuration, commented. Printed by
/// `huddle --print-default-config`.
pub const DEFAULT_TOML: &str = r#"# Huddle configuration. Every key is optional; the values below are the defaults.
# Check a file with: huddle --check-config /etc/huddle/huddle.toml

[http]
# Address and port of the web app, the WebSocket signalling (Room API, upgrade on
# any path) and the REST API (GET /health), over plain HTTP.
listen = "0.0.0.0:8080"
# Plain HTTP on `listen` (browsers allow the camera only on https pages, except on
# localhost): switch it off on a device that is only reached over the network.
plain = true
# HTTPS and WSS (the same routes) on `tls_listen`.
tls = true
tls_listen = "0.0.0.0:8443"
# The certificate chain and private key, PEM. Both empty: Huddle generates a
# self-signed certificate on the first start (names: the hostname, <hostname>.local,
# localhost and every advertised IP), keeps it in `tls_dir` and logs its SHA-256
# fingerprint. SIGHUP reloads the files without dropping sessions.
tls_cert = ""
tls_key = ""
# Where the generated certificate is kept (relative to the working directory, the
# state directory under systemd).
tls_dir = "tls"
# Web pages that may open the WebSocket signalling, by origin ("https://portal.example.com",
# scheme://host[:port]; "*" allows any page). Always allowed: pages of the device itself
# (any port of the host name or address the browser used to reach it, the device's
# hostname, <hostname>.local, its advertised IPs), pages opened from files (origin
# "null") and clients that send no Origin (ffmpeg, native apps). Others get HTTP 403.
allowed_origins = []
# TCP connections served at once (both listeners); more are closed at accept.
max_connections = 1024
# TCP connections at once from one source address, and new connections per second
# from one address (bursts of twice that); more are closed at accept.
max_connections_per_address = 64
connection_rate_per_address = 50
# A request header (and the TLS handshake) must arrive within this long...
header_timeout_ms = 10000
# ...and a keep-alive connection without a request for this long is closed.
idle_timeout_ms = 30000

[signalling]
# Concurrent WebSocket sessions; more are closed at once with code 1013.
max_sessions = 256
# Largest accepted WebSocket message, in bytes (SDP offers are 5-20 KB). A larger
# one closes the session with code 1009.
max_message_bytes = 262144
# The server pings every session this often...
ping_interval_ms = 5000
# ...and closes a session that sends nothing for this many intervals.
ping_misses = 3
# Per-session message rate: sustained messages per second, and the burst allowed
# above it. Messages over the limit are answered FAILED; a session that keeps going
# (another burst's worth) is closed with code 1008.
rate_messages_per_sec = 50
rate_burst = 200
# Messages queued toward one session, and bytes of frames waiting to be written to
# it; a client that does not read them is closed (code 1008, "too slow").
outbound_queue = 1024
outbound_bytes = 1048576
# A frame the client does not take within this long closes the session.
write_timeout_ms = 10000
# WebSocket sessions at once from one source address; more are closed with code 1013.
max_sessions_per_address = 32

[rooms]
# A room whose last participant vanished without leaving (page refresh, lost
# network) is kept this long for a rejoin, then finalized.
idle_timeout_ms = 60000
# Participants per room; a join beyond it fails with "Room is full".
max_participants = 16
# Rooms on this device (including rooms waiting out their idle timeout).
max_rooms = 64
# Streams one participant may publish in a room (camera + screen share).
max_streams_per_participant = 2
# The device's budget: streams published and playbacks served at once, all rooms
# together. Board profiles set these to what the board carries.
max_streams = 32
max_players = 256
# What one session (one browser tab) may hold at once, so a single client cannot
# take the whole device budget: rooms it is a member of, streams it publishes and
# streams it plays, all its rooms together. A meeting client is in one room,
# publishes a camera and maybe a screen share (2), and plays at most every other
# participant's two streams (2 x max_participants = 32). Over a limit the join,
# publish or play fails with the reason. The device participant is exempt.
max_rooms_per_session = 4
max_streams_per_session = 4
max_players_per_session = 32
# Longest room name and login, in characters as people count them (a CJK
# character, "é" or a flag emoji is one). Names made only of spaces are refused.
max_name_chars = 128
# And in bytes of UTF-8, a bound for the protocol (default: 4 x max_name_chars).
# max_name_bytes = 512

[media]
# The one UDP port every WebRTC peer uses (0: any free port, for tests).
udp_port = 20000
# Addresses put into ICE candidates (1:1 NAT: list the public address). Empty: the
# machine's non-loopback IPv4 addresses, up to two global IPv6 addresses (not
# link-local, not unique-local fc00::/7) and 127.0.0.1. List them to choose (IPv4 only:
# leave the IPv6 ones out).
advertise_ips = []
# A publish or play whose media path is not up after this long fails with
# "Failed by ICE timeout".
ice_timeout_ms = 15000
# The video codec a publisher is answered with when its browser offers both: "h264"
# (the device camera, RTMP and MP4 recording use it) or "vp8". Players must decode
# the publisher's codec: there is no transcoding.
preferred_video_codec = "h264"
# The web app publishes its camera in three simulcast layers (quarter, half and full
# size) when the room has at least this many people, itself included; each player then
# gets the layer its tile and its bandwidth need. 0: never.
simulcast_min_participants = 3
# ICE-TCP (RFC 6544, RFC 4571 framing) for networks that block UDP (hotel and guest
# Wi-Fi, corporate firewalls): answers also offer a TCP candidate on this port, and a
# browser that cannot reach the UDP port connects here. Browsers prefer UDP when both
# work. Not set: the same number as udp_port (open both UDP and TCP 20000 in the
# firewall); 0: off.
# tcp_port = 20000
# Media workers: the media task and workers - 1 threads beside it that encrypt and
# send players' packets, so a room's forwarding uses every core. 0: one per core of
# the machine (board profiles set their own); 1: everything on the one task.
workers = 0
# Each player's share of a burst (a key frame) leaves as one UDP GSO segment train:
# one trip through the kernel's stack for up to 64 packets. A kernel or network
# device that refuses trains is detected and sent to datagram by datagram; false
# never tries (a driver known to mishandle UDP segmentation offload).
udp_gso = true
# The media socket's receive and send buffers in KiB; 0: the kernel's default (about
# 208 KiB). A burst that overflows the receive buffer is lost before Huddle sees it
# (repaired by NACK, late). The kernel caps the size at net.core.rmem_max/wmem_max:
# systemd/huddle-sysctl.conf raises them (installed by the Yocto recipe).
socket_buffer_kb = 0

[records]
# Where stream and room recordings are written (relative to the working directory
# unless absolute).
dir = "records"
# Fragmented MP4: a fragment is written and synced at least this often, the most a
# crash or a power cut can lose.
fragment_ms = 500
# Run after a recorded room's mix is written, as <hook> <mixed file> <room>; killed
# after hook_timeout_ms. Empty: none.
on_room_record_hook = ""
hook_timeout_ms = 60000
# Retention: finished records older than max_age_days are deleted, and the oldest
# finished ones while the directory holds more than max_total_mb (0: no limit).
max_age_days = 0
max_total_mb = 0

[records.mixer]
# A finalized recorded room is mixed offline into <room>-<start>-mix.mp4: a grid of
# the video streams present at each moment, each labelled with its login, and the
# audio of everyone; at idle priority, after the meeting.
video = true
audio = true
show_names = true
width = 1280
height = 720
frame_rate = 30
# An ffmpeg video encoder: libx264, or a board's hardware one (h264_v4l2m2m).
encoder = "libx264"

[rtmp]
# RTMP publishers: rtmp://<device>[:port]/<room>/<login>[?token=<jwt>] joins <room>
# as <login> and publishes <room>-<login> (H.264 without B-frames, AAC or none).
# RTMP players: rtmp://<device>[:port]/<room>/<stream>[?token=<jwt>] plays a stream
# of the room (H.264 + AAC) as a member of it.
enabled = true
listen = "0.0.0.0:1935"
# The RTMP handshake must complete within this.
handshake_timeout_ms = 5000
# A connection that sends nothing for this long is closed.
idle_timeout_ms = 15000
# Concurrent RTMP connections (publishers and players), in all and from one address.
max_connections = 16
max_connections_per_address = 8
# Per-connection byte budget: a client sending more than this (kbit/s, over 2 s)
# is closed as a flood.
max_kbps = 40000
# Pushes: a stream sent to another RTMP server (YouTube Live, a CDN, another
# Huddle), one [[rtmp.push]] table each. `stream` names the stream, `url` is
# rtmp://host[:port]/app/streamkey (rtmp:// only, no rtmps://; the key is never
# logged), `retry_ms` the first retry delay after a failure (doubling up to 30 s, from
# the start again after 10 s live). None by default.
# [[rtmp.push]]
# stream = "stream-name"
# url = "rtmp://a.rtmp.youtube.com/live2/xxxx-xxxx-xxxx-xxxx"
# retry_ms = 1000

[device]
# A board profile (rpi4, rpi5, rk3588, imx8mp, x86_64) merged under this file: its
# keys are the defaults, this file overrides them. `huddle --board NAME` wins over it.
board = ""
# The device's camera: a V4L2 device path such as "/dev/video0", "test-pattern",
# "none", or "auto" (the first /dev/video* device, else the test pattern).
camera = "auto"
# How the camera's H.264 is produced: "uvc-h264" (the camera encodes; V4L2 capture),
# "gstreamer" (raw frames into the `encoder` element, e.g. a SoC hardware encoder) or
# "auto" (uvc-h264 when the camera offers H.264, else gstreamer).
capture = "auto"
# GStreamer H.264 encoder element for capture = "gstreamer": "v4l2h264enc" (Pi 4),
# "mpph264enc" (Rockchip), "vpuenc_h264" (i.MX 8M Plus), "x264enc" or "openh264enc"
# (software), or "auto" (the first of these that exists).
encoder = "auto"
# Capture size, rate and target bitrate of the device's video.
width = 1280
height = 720
framerate = 30
bitrate_kbps = 1500
# The device's microphone: an ALSA PCM name such as "default" or "hw:1,0", "tone",
# "none", or "auto" (the "default" PCM if a capture card exists, else the tone).
microphone = "auto"
# The device's participant name in the rooms.
login = "Room system"
# Instead of camera/capture/encoder: a GStreamer pipeline that ends in H.264, e.g.
# "v4l2src device=/dev/video2 ! videoconvert ! x264enc tune=zerolatency".
pipeline = ""
# Rooms the device joins at start and stays in.
rooms = []
# Also join every room when it is created (and leave it when everyone else left).
join_new_rooms = true
# A camera or microphone that delivers nothing for this long is restarted.
stall_timeout_ms = 5000
# After a camera or microphone failed: first retry delay, doubling up to 30 s.
retry_ms = 1000
# Record the device's streams in [records] dir, like a browser's `record: true`.
record = false
# Where the remote participants are heard while the device is in a room: an ALSA PCM
# name such as "default" or "plughw:1,0", "none", or "auto" (the "default" PCM if a
# sound card exists). Every other participant's audio is mixed and played there.
speaker = "auto"
# How much audio each remote stream's jitter buffer holds (10 ms steps): lower is
# snappier, higher rides out more network jitter.
speaker_latency_ms = 60
# Cancel the speaker's echo in the microphone (WebRTC audio processing), suppress
# noise and adjust the gain. Echo cancellation runs when both the speaker and the
# microphone are real devices; a speakerphone that cancels echo itself can turn it off.
echo_cancel = true
noise_suppression = true
auto_gain = true
# The camera and microphone run only while the device is in a room with someone else
# (or an RTMP push or a recording started by an operator needs its stream), and stop
# this long after the last one left. always_on keeps them running all the time.
always_on = false
capture_grace_ms = 10000

[auth]
# "open": anyone who reaches the device may join any room. "token": the Room API
# `connection` must carry a JWT in custom.token (claims: sub = the login, rooms = a
# list or "*", publish = true/false, exp); mint one with `huddle token`.
mode = "open"
# HS256 shared secret for tokens (keep this file private).
secret = ""
# Or a PEM public key file (Ed25519 for EdDSA, or RSA for RS256 tokens).
public_key = ""

[log]
# error, warn, info, debug or trace. Under systemd logs go to the journal,
# otherwise to stderr.
level = "info"

[api]
# The admin REST API under /api/v1/ (docs/api.md; OpenAPI at /api/v1/openapi.json) on
# the HTTP and HTTPS listeners. Clients send "Authorization: Bearer <key>" with one of
# these keys: "sha256:<hex>" (the SHA-256 of the key, printed by `huddle api-key`) or
# the key itself (16 characters or more). No keys: the API answers only clients on
# this machine (loopback), such as the device's own control panel.
keys = []
# Largest request body, in bytes.
max_body_bytes = 65536
# Wrong or missing keys allowed per client address per minute; more get HTTP 429.
failed_attempts_per_minute = 10

[metrics]
# Prometheus metrics at /metrics (text format, names huddle_*), readable with an
# [api] key, from loopback, or from these addresses/networks ("10.0.0.0/8").
enabled = true
allow = []

# Webhooks: the service's events POSTed as JSON to a receiver, signed with
# X-Huddle-Signature: sha256=<hex HMAC-SHA256 of the body with `secret`>, from a
# bounded queue per receiver, retried with exponential backoff. One table each; none
# by default. `events` lists the event names to send (empty: all): room.created,
# room.finalized, participant.joined, participant.left, stream.published,
# stream.unpublished, stream.failed, recording.started, recording.finished,
# recording.failed, mix.finished, device.camera_lost, device.camera_back,
# room.active_speaker.
# [[webhooks]]
# url = "https://fleet.example.com/huddle/events"
# secret = "a long random string"
# events = []
# timeout_ms = 5000
# retry_ms = 1000
# max_attempts = 10
# queue = 1024
"#;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(Some(path), None)
    }

    /// The configuration from an optional file with an optional board profile under
    /// it. `board` (the `--board` option) wins over the file's `[device] board`.
    pub fn load_with(path: Option<&Path>, board: Option<&str>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|why| ConfigError::Read {
                    path: path.to_owned(),
                    why,
                })?;
                Config::parse_with(&text, path, board)
            }
            None => Config::parse_with("", Path::new("(defaults)"), board),
        }
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, None)
    }

    /// `parse` with a board profile merged under the text (see `board`).
    pub fn parse_with(text: &str, path: &Path, board: Option<&str>) -> Result<Config, ConfigError> {
        let parse_error = |path: &Path, e: &dyn std::fmt::Display| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let file: toml::Table = toml::from_str(text).map_err(|e| parse_error(path, &e))?;
        let from_file = match file.get("device").and_then(|d| d.get("board")) {
            None => None,
            Some(toml::Value::String(name)) => Some(name.clone()),
            Some(_) => {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "device.board",
                    why: "must be a string".into(),
                })
            }
        };
        let name = board.map(str::to_owned).or(from_file).unwrap_or_default();
        let config: Config = if name.is_empty() {
            // Straight from the text, so errors point at its lines.
            toml::from_str(text).map_err(|e| parse_error(path, &e))?
        } else {
            let Some(profile) = board::find(&name) else {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "device.board",
                    why: format!("unknown board '{name}' (known: {})", board::names()),
                });
            };
            let profile_path = PathBuf::from(format!("board/{name}/profile.toml"));
            let mut merged: toml::Table =
                toml::from_str(profile.profile).map_err(|e| parse_error(&profile_path, &e))?;
            board::merge(&mut merged, file);
            let device = merged
                .entry("device")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(device) = device {
                device.insert("board".into(), toml::Value::String(name.clone()));
            }
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e| parse_error(path, &format!("with board '{name}': {e}")))?
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, why: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            why,
        };
        let at_least = |key: &'static str, value: u64, min: u64| {
            if value < min {
                Err(invalid(key, format!("must be at least {min}, got {value}")))
            } else {
                Ok(())
            }
        };
        let h = &self.http;
        if !h.plain && !h.tls {
            return Err(invalid(
                "http.tls",
                "plain HTTP and HTTPS are both switched off: nothing would be served".into(),
            ));
        }
        if h.tls_cert.as_os_str().is_empty() != h.tls_key.as_os_str().is_empty() {
            return Err(invalid(
                "http.tls_key",
                "tls_cert and tls_key go together: set both, or neither for a generated certificate"
                    .into(),
            ));
        }
        if self.auth.mode == AuthMode::Token
            && self.auth.secret.is_empty()
            && self.auth.public_key.as_os_str().is_empty()
        {
            return Err(invalid(
                "auth.mode",
                "\"token\" needs auth.secret or auth.public_key".into(),
            ));
        }
        if self.media.workers > crate::metrics::MAX_WORKERS {
            return Err(invalid(
                "media.workers",
                format!(
                    "must be 0 (one per core) to {}, got {}",
                    crate::metrics::MAX_WORKERS,
                    self.media.workers
                ),
            ));
        }
        let s = &self.signalling;
        at_least("signalling.max_sessions", s.max_sessions as u64, 1)?;
        at_least(
            "signalling.max_message_bytes",
            s.max_message_bytes as u64,
            4096,
        )?;
        if s.max_message_bytes > 16 << 20 {
            return Err(invalid(
                "signalling.max_message_bytes",
                format!("must be at most {} (16 MiB)", 16 << 20),
            ));
        }
        at_least("signalling.ping_interval_ms", s.ping_interval_ms, 100)?;
        at_least("signalling.ping_misses", s.ping_misses.into(), 1)?;
        at_least(
            "signalling.rate_messages_per_sec",
            s.rate_messages_per_sec.into(),
            1,
        )?;
        at_least("signalling.rate_burst", s.rate_burst.into(), 1)?;
        at_least("signalling.outbound_queue", s.outbound_queue as u64, 16)?;
        at_least(
            "signalling.outbound_bytes",
            s.outbound_bytes as u64,
            s.max_message_bytes as u64,
        )?;
        at_least("signalling.write_timeout_ms", s.write_timeout_ms, 100)?;
        at_least(
            "signalling.max_sessions_per_address",
            s.max_sessions_per_address as u64,
            1,
        )?;
        at_least("http.max_connections", h.max_connections as u64, 1)?;
        at_least(
            "http.max_connections_per_address",
            h.max_connections_per_address as u64,
            1,
        )?;
        at_least(
            "http.connection_rate_per_address",
            h.connection_rate_per_address.into(),
            1,
        )?;
        at_least("http.header_timeout_ms", h.header_timeout_ms, 100)?;
        at_least("http.idle_timeout_ms", h.idle_timeout_ms, 100)?;
        if let Some(bad) = h
            .allowed_origins
            .iter()
            .find(|o| o.as_str() != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(invalid(
                "http.allowed_origins",
                format!("'{bad}' is not an origin: write scheme://host[:port] or \"*\""),
            ));
        }
        let rt = &self.rtmp;
        at_least("rtmp.handshake_timeout_ms", rt.handshake_timeout_ms, 100)?;
        at_least("rtmp.idle_timeout_ms", rt.idle_timeout_ms, 100)?;
        at_least("rtmp.max_connections", rt.max_connections as u64, 1)?;
        at_least(
            "rtmp.max_connections_per_address",
            rt.max_connections_per_address as u64,
            1,
        )?;
        at_least("rtmp.max_kbps", rt.max_kbps.into(), 100)?;
        for (i, push) in rt.push.iter().enumerate() {
            let which = |why: String| format!("entry {} ({why})", i + 1);
            if push.stream.trim().is_empty() {
                return Err(invalid(
                    "[[rtmp.push]] stream",
                    which("must name a stream".into()),
                ));
            }
            if let Err(e) = crate::rtmp::client::Target::parse(&push.url) {
                return Err(invalid(
                    "[[rtmp.push]] url",
                    which(format!("stream {:?}: {e}", push.stream)),
                ));
            }
            if push.retry_ms < 100 {
                return Err(invalid(
                    "[[rtmp.push]] retry_ms",
                    which(format!("must be at least 100, got {}", push.retry_ms)),
                ));
            }
        }
        self.validate_operations(path)?;
        let r = &self.rooms;
        at_least("rooms.max_participants", r.max_participants as u64, 1)?;
        at_least("rooms.max_rooms", r.max_rooms as u64, 1)?;
        at_least(
            "rooms.max_streams_per_participant",
            r.max_streams_per_participant as u64,
            1,
        )?;
        at_least("rooms.max_streams", r.max_streams as u64, 1)?;
        at_least("rooms.max_players", r.max_players as u64, 1)?;
        at_least(
            "rooms.max_rooms_per_session",
            r.max_rooms_per_session as u64,
            1,
        )?;
        at_least(
            "rooms.max_streams_per_session",
            r.max_streams_per_session as u64,
            1,
        )?;
        at_least(
            "rooms.max_players_per_session",
            r.max_players_per_session as u64,
            1,
        )?;
        at_least("rooms.max_name_chars", r.max_name_chars as u64, 8)?;
        if r.name_bytes() < r.max_name_chars {
            return Err(invalid(
                "rooms.max_name_bytes",
                format!(
                    "must be at least max_name_chars ({}), got {}",
                    r.max_name_chars,
                    r.name_bytes()
                ),
            ));
        }
        at_least("media.ice_timeout_ms", self.media.ice_timeout_ms, 100)?;
        if self.media.socket_buffer_kb > 65_536 {
            return Err(invalid(
                "media.socket_buffer_kb",
                format!(
                    "must be at most 65536 (64 MiB), got {}",
                    self.media.socket_buffer_kb
                ),
            ));
        }
        if self.records.dir.as_os_str().is_empty() {
            return Err(invalid("records.dir", "must not be empty".into()));
        }
        let rec = &self.records;
        at_least("records.fragment_ms", rec.fragment_ms, 100)?;
        at_least("records.hook_timeout_ms", rec.hook_timeout_ms, 100)?;
        let m = &rec.mixer;
        at_least("records.mixer.width", m.width.into(), 16)?;
        at_least("records.mixer.height", m.height.into(), 16)?;
        at_least("records.mixer.frame_rate", m.frame_rate.into(), 1)?;
        if m.encoder.trim().is_empty() {
            return Err(invalid("records.mixer.encoder", "must not be empty".into()));
        }
        let d = &self.device;
        if d.camera.is_empty() {
            return Err(invalid(
                "device.camera",
                "must be a V4L2 device path, \"test-pattern\", \"auto\" or \"none\"".into(),
            ));
        }
        if d.encoder.is_empty() {
            return Err(invalid(
                "device.encoder",
                "must be a GStreamer element name or \"auto\"".into(),
            ));
        }
        let in_range = |key: &'static str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(key, format!("must be {lo} to {hi}, got {v}")))
            }
        };
        in_range("device.width", d.width, 160, 3840)?;
        in_range("device.height", d.height, 120, 2160)?;
        if !d.width.is_multiple_of(2) || !d.height.is_multiple_of(2) {
            return Err(invalid(
                "device.width",
                format!(
                    "{}x{} must have even sides (4:2:0 video)",
                    d.width, d.height
                ),
            ));
        }
        in_range("device.framerate", d.framerate, 1, 60)?;
        in_range("device.bitrate_kbps", d.bitrate_kbps, 100, 20_000)?;
        if d.microphone.is_empty() {
            return Err(invalid(
                "device.microphone",
                "must be an ALSA PCM name, \"tone\", \"auto\" or \"none\"".into(),
            ));
        }
        if d.stall_timeout_ms < 100 {
            return Err(invalid(
                "device.stall_timeout_ms",
                format!("must be at least 100, got {}", d.stall_timeout_ms),
            ));
        }
        in_range(
            "device.retry_ms",
            d.retry_ms.min(u32::MAX as u64) as u32,
            10,
            30_000,
        )?;
        if let Some(why) = d
            .rooms
            .iter()
            .find_map(|n| r.check_name("Room name", n).err())
        {
            return Err(invalid("device.rooms", why));
        }
        in_range(
            "device.speaker_latency_ms",
            d.speaker_latency_ms.min(u32::MAX as u64) as u32,
            20,
            1000,
        )?;
        in_range(
            "device.capture_grace_ms",
            d.capture_grace_ms.min(u32::MAX as u64) as u32,
            0,
            3_600_000,
        )?;
        if d.speaker.trim().is_empty() {
            return Err(invalid(
                "device.speaker",
                "must be \"auto\", \"none\" or an ALSA PCM name".into(),
            ));
        }
        if let Err(why) = r.check_name("Login", &d.login) {
            return Err(invalid("device.login", why));
        }
        Ok(())
    }

    /// `[api]`, `[metrics]` and `[[webhooks]]`.
    fn validate_operations(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, why: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            why,
        };
        for (i, key) in self.api.keys.iter().enumerate() {
            let ok = match key.strip_prefix("sha256:") {
                Some(hex) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                None => key.chars().count() >= 16,
            };
            if !ok {
                return Err(invalid(
                    "api.keys",
                    format!(
                        "entry {}: write \"sha256:<64 hex digits>\" (huddle api-key prints it) or a key of 16 characters or more",
                        i + 1
                    ),
                ));
            }
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid(
                "api.max_body_bytes",
                format!("must be at least 1024, got {}", self.api.max_body_bytes),
            ));
        }
        if self.api.failed_attempts_per_minute < 1 {
            return Err(invalid(
                "api.failed_attempts_per_minute",
                "must be at least 1".into(),
            ));
        }
        for allow in &self.metrics.allow {
            if parse_network(allow).is_none() {
                return Err(invalid(
                    "metrics.allow",
                    format!("'{allow}' is not an address or network (\"10.0.0.0/8\")"),
                ));
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            let which = |why: String| format!("entry {} ({why})", i + 1);
            if let Some(why) = crate::server::webhooks::url_problem(&hook.url) {
                return Err(invalid("[[webhooks]] url", which(why)));
            }
            if hook.secret.is_empty() {
                return Err(invalid(
                    "[[webhooks]] secret",
                    which("must not be empty: events are signed with it".into()),
                ));
            }
            if let Some(bad) = hook
                .events
                .iter()
                .find(|e| crate::events::EventKind::from_name(e).is_none())
            {
                return Err(invalid(
                    "[[webhooks]] events",
                    which(format!(
                        "unknown event '{bad}' (known: {})",
                        crate::events::EventKind::names()
                    )),
                ));
            }
            if hook.timeout_ms < 100
                || hook.retry_ms < 10
                || hook.max_attempts < 1
                || hook.queue < 1
            {
                return Err(invalid(
                    "[[webhooks]]",
                    which(
                        "timeout_ms >= 100, retry_ms >= 10, max_attempts >= 1, queue >= 1".into(),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The room core's view of this configuration.
    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            idle_timeout: Duration::from_millis(self.rooms.idle_timeout_ms),
            max_participants: self.rooms.max_participants,
            max_rooms: self.rooms.max_rooms,
            max_streams_per_participant: self.rooms.max_streams_per_participant,
            max_streams: self.rooms.max_streams,
            max_players: self.rooms.max_players,
            max_rooms_per_session: self.rooms.max_rooms_per_session,
            max_streams_per_session: self.rooms.max_streams_per_session,
            max_players_per_session: self.rooms.max_players_per_session,
            // Reserved whether or not the device has a camera or microphone now:
            // one may appear later, and the name stays the device's.
            reserved_login: Some(self.device.login.clone()),
            max_sessions: self.signalling.max_sessions,
            max_name_chars: self.rooms.max_name_chars,
            max_name_bytes: self.rooms.name_bytes(),
            ping_interval: Duration::from_millis(self.signalling.ping_interval_ms),
            ping_misses: self.signalling.ping_misses,
            rate_per_sec: self.signalling.rate_messages_per_sec,
            rate_burst: self.signalling.rate_burst,
            media_timeout: Duration::from_millis(self.media.ice_timeout_ms),
        }
    }
}

/// An address ("192.0.2.7", "::1") or a network ("10.0.0.0/8", "fd00::/8").
pub fn parse_network(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (text.trim(), None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max)?,
        None => max,
    };
    Some((addr, bits))
}

/// Whether `ip` is inside the network `(net, bits)` of `parse_network`.
pub fn in_network(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_the_default_config() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn core_defaults_match_config_defaults() {
        let core = Config::default().core();
        // The one key the core has no default for: the device's login.
        let plain = CoreConfig {
            reserved_login: Some(Device::default().login),
            ..CoreConfig::default()
        };
        assert_eq!(format!("{core:?}"), format!("{plain:?}"));
    }

    #[test]
    fn name_limits_count_characters() {
        let c = Config::default();
        assert_eq!(c.rooms.max_name_chars, 128);
        assert_eq!(c.rooms.name_bytes(), 512);
        assert_eq!(c.core().max_name_bytes, 512);
        // A 128-character CJK room name (384 bytes) is a valid device room.
        let cjk = "会".repeat(128);
        let c = parse(&format!("[device]\nrooms = [\"{cjk}\"]\n")).unwrap();
        assert_eq!(c.device.rooms, vec![cjk.clone()]);
        let e = parse(&format!("[device]\nrooms = [\"{cjk}x\"]\n")).unwrap_err();
        assert!(e.to_string().contains("at most 128 characters"), "{e}");
        let e = parse("[device]\nlogin = \"   \"\n").unwrap_err();
        assert!(e.to_string().contains("device.login"), "{e}");
        assert!(e.to_string().contains("only spaces"), "{e}");
        let c = parse("[rooms]\nmax_name_chars = 20\nmax_name_bytes = 40\n").unwrap();
        assert_eq!(c.core().max_name_chars, 20);
        assert_eq!(c.core().max_name_bytes, 40);
        let e = parse("[rooms]\nmax_name_chars = 20\nmax_name_bytes = 19\n").unwrap_err();
        assert!(e.to_string().contains("rooms.max_name_bytes"), "{e}");
        assert!(parse("[rooms]\nmax_name_chars = 2\n").is_err());
    }

    #[test]
    fn product_contract_keys_exist() {
        let c = parse(
            r#"
            [http]
            listen = "127.0.0.1:9000"
            [media]
            udp_port = 30000
            advertise_ips = ["127.0.0.1", "::1"]
            [rooms]
            idle_timeout_ms = 1000
            max_participants = 3
            [records]
            dir = "/tmp/rec"
            [device]
            camera = "test-pattern"
            microphone = "tone"
            "#,
        )
        .unwrap();
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.media.advertise_ips.len(), 2);
        assert_eq!(c.rooms.max_participants, 3);
        assert_eq!(c.device.camera, "test-pattern");
    }

    #[test]
    fn media_workers_default_to_the_cores_and_are_bounded() {
        let auto = parse("").unwrap().media;
        assert_eq!(auto.workers, 0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(auto.workers(), cores.min(crate::metrics::MAX_WORKERS));
        assert_eq!(parse("[media]\nworkers = 3\n").unwrap().media.workers(), 3);
        let e = parse("[media]\nworkers = 17\n").unwrap_err().to_string();
        assert!(e.contains("media.workers") && e.contains("17"), "{e}");
        assert!(parse("[media]\nworkers = -1\n").is_err());
        assert!(auto.udp_gso, "segment trains by default");
        assert!(!parse("[media]\nudp_gso = false\n").unwrap().media.udp_gso);
        assert!(parse("[media]\nudp_gso = 1\n").is_err());
        assert_eq!(auto.socket_buffer_kb, 0, "the kernel's buffers by default");
        let big = parse("[media]\nsocket_buffer_kb = 4096\n").unwrap();
        assert_eq!(big.media.socket_buffer_kb, 4096);
        assert!(parse("[media]\nsocket_buffer_kb = 70000\n").is_err());
        assert!(parse("[media]\nsocket_buffer_kb = -1\n").is_err());
    }

    #[test]
    fn ice_tcp_port_defaults_to_the_udp_number_and_zero_turns_it_off() {
        assert_eq!(parse("").unwrap().media.tcp_port, None);
        assert_eq!(Config::default().media.tcp_port, None);
        let c = parse("[media]\ntcp_port = 0\n").unwrap();
        assert_eq!(c.media.tcp_port, Some(0));
        let c = parse("[media]\ntcp_port = 443\n").unwrap();
        assert_eq!(c.media.tcp_port, Some(443));
        assert!(parse("[media]\ntcp_port = 70000\n").is_err());
        assert!(parse("[media]\ntcp_port = \"udp\"\n").is_err());
    }

    #[test]
    fn every_board_profile_is_valid_on_its_own() {
        for b in board::BOARDS {
            let c = parse_with_board("", b.name).unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(c.device.board, b.name);
            // A profile is a partial config: it must parse as one by itself too.
            Config::parse(b.profile, Path::new(b.name))
                .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        }
    }

    fn parse_with_board(text: &str, board: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, Path::new("test.toml"), Some(board))
    }

    #[test]
    fn board_profile_is_merged_under_the_file() {
        let profile = Config::parse(board::find("rpi4").unwrap().profile, Path::new("p")).unwrap();
        let c = parse_with_board("[rooms]\nmax_rooms = 1\n", "rpi4").unwrap();
        assert_eq!(c.rooms.max_rooms, 1, "the file wins");
        assert_eq!(c.rooms.max_participants, profile.rooms.max_participants);
        assert_eq!(
            c.device.encoder, "v4l2h264enc",
            "the profile beats the default"
        );
        assert_eq!(
            c.http,
            Http::default(),
            "what neither sets keeps its default"
        );
        // The board named in the file, and --board winning over it.
        let c = Config::parse("[device]\nboard = \"rk3588\"\n", Path::new("t")).unwrap();
        assert_eq!(c.device.encoder, "mpph264enc");
        let c = parse_with_board("[device]\nboard = \"rk3588\"\n", "imx8mp").unwrap();
        assert_eq!(c.device.board, "imx8mp");
        assert_eq!(c.device.encoder, "vpuenc_h264");
    }

    #[test]
    fn unknown_board_is_named() {
        let e = parse_with_board("", "pi9").unwrap_err().to_string();
        assert!(
            e.contains("device.board") && e.contains("pi9") && e.contains("rpi4"),
            "{e}"
        );
        let e = parse_with_board("[rooms]\nmax_room = 1\n", "rpi4")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_room"), "{e}");
    }

    #[test]
    fn rtmp_pushes_parse_and_validate() {
        let c = parse(
            "[rtmp]
[[rtmp.push]]
stream = \"room1-alice\"
url = \"rtmp://a.rtmp.youtube.com/live2/secret-key\"
[[rtmp.push]]
stream = \"room1-bob\"
url = \"rtmp://127.0.0.1:19350/live/bob\"
retry_ms = 250
",
        )
        .unwrap();
        assert_eq!(c.rtmp.push.len(), 2);
        assert_eq!(c.rtmp.push[0].retry_ms, 1000);
        assert_eq!(c.rtmp.push[1].retry_ms, 250);
        assert!(!format!("{c:?}").contains("secret-key"));
        for (entry, key, needle) in [
            (
                "stream = \"\"\nurl = \"rtmp://h/a/k\"",
                "[[rtmp.push]] stream",
                "entry 1",
            ),
            (
                "stream = \"s\"\nurl = \"rtmps://h/a/topsecret\"",
                "[[rtmp.push]] url",
                "rtmps://",
            ),
            (
                "stream = \"s\"\nurl = \"rtmp://h/app\"",
                "[[rtmp.push]] url",
                "stream key",
            ),
            (
                "stream = \"s\"\nurl = \"rtmp://h/a/k\"\nretry_ms = 5",
                "[[rtmp.push]] retry_ms",
                "100",
            ),
        ] {
            let e = parse(&format!("[[rtmp.push]]\n{entry}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(needle), "{e}");
            assert!(!e.contains("topsecret"), "{e}");
        }
        let e = parse("[[rtmp.push]]\nstream = \"s\"\nurl = \"rtmp://h/a/k\"\nretry = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry"), "{e}");
        let e = parse("[[rtmp.push]]\nurl = \"rtmp://h/a/k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stream"), "{e}");
    }

    #[test]
    fn device_video_settings_are_checked() {
        let e = parse("[device]\nwidth = 1281\n").unwrap_err().to_string();
        assert!(e.contains("device.width"), "{e}");
        let e = parse("[device]\nframerate = 0\n").unwrap_err().to_string();
        assert!(e.contains("device.framerate"), "{e}");
        let e = parse("[device]\ncapture = \"magic\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn device_participant_settings_are_checked() {
        let c = parse(
            "[device]
rooms = [\"lobby\", \"комната\"]
join_new_rooms = false
",
        )
        .unwrap();
        assert_eq!(c.device.rooms, vec!["lobby", "комната"]);
        assert!(!c.device.join_new_rooms);
        for (text, key) in [
            (
                "[device]
stall_timeout_ms = 50
",
                "device.stall_timeout_ms",
            ),
            (
                "[device]
retry_ms = 5
",
                "device.retry_ms",
            ),
            (
                "[device]
retry_ms = 99999999999
",
                "device.retry_ms",
            ),
            (
                "[device]
rooms = [\"\"]
",
                "device.rooms",
            ),
            (
                "[device]
rooms = \"lobby\"
",
                "rooms",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[rooms]\nmax_participant = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_participant"), "{e}");
        let e = parse("[roms]\n").unwrap_err().to_string();
        assert!(e.contains("roms"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let e = parse("[http]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = parse("[media]\nadvertise_ips = [\"1.2.3\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("advertise_ips"), "{e}");
        let e = parse("[rooms]\nmax_participants = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rooms.max_participants"), "{e}");
        let e = parse("[log]\nlevel = \"loud\"\n").unwrap_err().to_string();
        assert!(e.contains("loud"), "{e}");
        let e = parse("[rooms]\nidle_timeout_ms = -5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle_timeout_ms"), "{e}");
    }

    #[test]
    fn per_session_limits_and_the_reserved_login_reach_the_core() {
        let c = parse(
            "[rooms]\nmax_rooms_per_session = 2\nmax_streams_per_session = 3\n\
             max_players_per_session = 5\n[device]\nlogin = \"Boardroom\"\n",
        )
        .unwrap();
        let core = c.core();
        assert_eq!(
            (
                core.max_rooms_per_session,
                core.max_streams_per_session,
                core.max_players_per_session
            ),
            (2, 3, 5)
        );
        assert_eq!(core.reserved_login.as_deref(), Some("Boardroom"));
        let d = Config::default().core();
        assert_eq!(
            (
                d.max_rooms_per_session,
                d.max_streams_per_session,
                d.max_players_per_session
            ),
            (4, 4, 32)
        );
        for key in [
            "max_rooms_per_session",
            "max_streams_per_session",
            "max_players_per_session",
        ] {
            let e = parse(&format!("[rooms]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("rooms.{key}")), "{e}");
        }
    }

    #[test]
    fn operations_keys_are_checked() {
        let ok = parse(
            "[api]\nkeys = [\"a-key-of-sixteen-chars\", \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"]\n\
             [metrics]\nallow = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]\n\
             [[webhooks]]\nurl = \"https://fleet.example.com/hooks?x=1\"\nsecret = \"s\"\nevents = [\"room.created\"]\n",
        )
        .expect("valid");
        assert_eq!(ok.webhooks[0].max_attempts, 10);
        assert_eq!(ok.webhooks[0].timeout_ms, 5000);
        assert!(format!("{:?}", ok.webhooks[0]).contains("(hidden)"));
        assert!(!format!("{:?}", ok.api).contains("sixteen"));
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("[api]\nkeys = [\"short\"]\n").contains("api.keys"));
        assert!(err("[api]\nkeys = [\"sha256:abc\"]\n").contains("api.keys"));
        assert!(err("[metrics]\nallow = [\"10.0.0.0/33\"]\n").contains("metrics.allow"));
        assert!(err("[metrics]\nallow = [\"lan\"]\n").contains("metrics.allow"));
        let hook = |extra: &str| format!("[[webhooks]]\nsecret = \"s\"\n{extra}\n");
        assert!(err(&hook("url = \"ftp://x/\"")).contains("[[webhooks]] url"));
        assert!(err(&hook("url = \"http://:80/\"")).contains("[[webhooks]] url"));
        assert!(err(&hook("url = \"http://h:port/\"")).contains("[[webhooks]] url"));
        let e = err(&hook("url = \"http://h/\"\nevents = [\"room.exploded\"]"));
        assert!(e.contains("unknown event 'room.exploded'"), "{e}");
        let e = err("[[webhooks]]\nurl = \"http://h/\"\nsecret = \"\"\n");
        assert!(e.contains("[[webhooks]] secret"), "{e}");
        assert!(err(&hook("url = \"http://h/\"\nmax_attempts = 0")).contains("[[webhooks]]"));
    }

    #[test]
    fn networks() {
        let net = parse_network("10.1.0.0/16").unwrap();
        assert!(in_network("10.1.2.3".parse().unwrap(), net));
        assert!(!in_network("10.2.0.1".parse().unwrap(), net));
        assert!(in_network("::ffff:10.1.0.9".parse().unwrap(), net));
        let one = parse_network("192.0.2.7").unwrap();
        assert!(in_network("192.0.2.7".parse().unwrap(), one));
        assert!(!in_network("192.0.2.8".parse().unwrap(), one));
        let v6 = parse_network("fd00::/8").unwrap();
        assert!(in_network("fd12::1".parse().unwrap(), v6));
        assert!(!in_network("10.1.2.3".parse().unwrap(), v6));
        assert_eq!(parse_network("0.0.0.0/0").map(|n| n.1), Some(0));
        assert!(in_network(
            "8.8.8.8".parse().unwrap(),
            parse_network("0.0.0.0/0").unwrap()
        ));
    }
}
