//! Counters owned by the tasks that do the work (the SFU task, the signalling
//! sessions, the RTMP edge), as plain atomics: counting costs one relaxed add on the
//! hot path and no lock; `/metrics` reads them when scraped.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Media kind index of the per-kind counters: `[audio, video]`.
pub const KINDS: [&str; 2] = ["audio", "video"];

/// Why a media packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A sink's queue toward another edge (RTMP, recorder) was full.
    SinkQueueFull,
    /// The UDP socket could not take the datagram now.
    SocketBusy,
    /// The track is muted by a moderator.
    Muted,
    /// A datagram from an address no peer owns, or of no known kind.
    NoRoute,
    /// A packet that did not parse or decrypt.
    Invalid,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::SinkQueueFull,
        DropReason::SocketBusy,
        DropReason::Muted,
        DropReason::NoRoute,
        DropReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SinkQueueFull => "sink_queue_full",
            DropReason::SocketBusy => "socket_busy",
            DropReason::Muted => "muted",
            DropReason::NoRoute => "no_route",
            DropReason::Invalid => "invalid",
        }
    }
}

/// The media engine's counters (the SFU task and the stream core).
#[derive(Debug, Default)]
pub struct MediaCounters {
    /// RTP packets and payload bytes received from sources, by kind (`KINDS`).
    pub packets_in: [Counter; 2],
    pub bytes_in: [Counter; 2],
    /// RTP packets and bytes handed to sinks (players, RTMP, recorders), by kind.
    pub packets_out: [Counter; 2],
    pub bytes_out: [Counter; 2],
    /// By `DropReason` (index: position in `DropReason::ALL`).
    pub dropped: [Counter; 5],
    /// Key-frame requests and retransmission requests from players (RTCP).
    pub pli_received: Counter,
    pub fir_received: Counter,
    pub nack_received: Counter,
    /// Packets sent again to players that NACKed them (`sfu::play_out`).
    pub retransmitted: Counter,
    /// UDP GSO segment trains sent, and the datagrams they carried (`sfu::send`).
    pub udp_trains: Counter,
    pub udp_train_datagrams: Counter,
    /// Key-frame requests sent to sources (PLI to WebRTC publishers, flags to the
    /// device and RTMP publishers).
    pub key_frames_requested: Counter,
    /// Peers whose ICE or DTLS did not come up, or failed later.
    pub ice_failures: Counter,
    pub dtls_failures: Counter,
    /// The ICE-TCP port's connections (`sfu::tcp`).
    pub tcp: TcpCounters,
    /// Players per media worker (`sfu::shard`).
    pub workers: Workers,
}

/// Media workers at most (`[media] workers`).
pub const MAX_WORKERS: usize = 16;

/// The media workers (`[media] workers`) and the players each serves now.
#[derive(Debug, Default)]
pub struct Workers {
    count: AtomicUsize,
    players: [AtomicI64; MAX_WORKERS],
}

impl Workers {
    pub fn set_count(&self, n: usize) {
        self.count.store(n.min(MAX_WORKERS), Ordering::Relaxed);
    }

    /// At least 1: the SFU task.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed).max(1)
    }

    pub fn players(&self, worker: usize) -> i64 {
        self.players
            .get(worker)
            .map_or(0, |p| p.load(Ordering::Relaxed))
    }

    pub fn add(&self, worker: usize, n: i64) {
        if let Some(p) = self.players.get(worker) {
            p.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// ICE-TCP connections: what was accepted and why connections ended early.
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Connections open now.
    pub open: Gauge,
    pub accepted: Counter,
    /// Refused at accept: over the total or per-address cap.
    pub refused: Counter,
    /// Closed for bad input: a frame over the size limit, or a first frame that is
    /// not a verified STUN binding request for a known peer.
    pub invalid: Counter,
    /// Closed because no verified first frame came in time, or nothing came for long.
    pub timed_out: Counter,
    /// Closed because the peer did not take what we wrote in time.
    pub write_timed_out: Counter,
    /// Frames not sent: the connection's outbound queue was full, or it was gone.
    pub dropped: Counter,
}

impl TcpCounters {
    /// `(reason, count)` of the connections ended early, for `/metrics`.
    pub fn closed(&self) -> [(&'static str, u64); 4] {
        [
            ("invalid", self.invalid.get()),
            ("timeout", self.timed_out.get()),
            ("write_timeout", self.write_timed_out.get()),
            ("refused", self.refused.get()),
        ]
    }
}

impl MediaCounters {
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }
}

/// A gauge that goes up and down (sessions open now).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Signalling messages by name: the wire names of the Room API, `other` for the rest
/// (known messages the rooms ignore, frames that did not parse). A bounded set.
pub const MESSAGES: [&str; 14] = [
    "connection",
    "ping",
    "pong",
    "join",
    "leave",
    "sendMessage",
    "moderate",
    "publishStream",
    "playStream",
    "unPublishStream",
    "stopStream",
    "sendStreamEvent",
    "availableStream",
    "other",
];

/// Why a request was refused (a `FAILED` status, a failed `sendData`, a `fail`), by
/// coarse class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Over the message rate limit.
    RateLimit,
    /// No `connection` yet, or no login.
    NotConnected,
    /// The token or the room's membership does not allow it.
    Restricted,
    /// No such room, stream or participant.
    NotFound,
    /// A malformed or unacceptable request.
    Invalid,
    /// A room, device or session limit.
    Limits,
    Other,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::RateLimit,
        RefusalReason::NotConnected,
        RefusalReason::Restricted,
        RefusalReason::NotFound,
        RefusalReason::Invalid,
        RefusalReason::Limits,
        RefusalReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::RateLimit => "rate_limit",
            RefusalReason::NotConnected => "not_connected",
            RefusalReason::Restricted => "restricted",
            RefusalReason::NotFound => "not_found",
            RefusalReason::Invalid => "invalid",
            RefusalReason::Limits => "limits",
            RefusalReason::Other => "other",
        }
    }
}

/// The signalling sessions' counters (`server::session`).
#[derive(Debug, Default)]
pub struct SignallingCounters {
    /// Frames received, by position in `MESSAGES`.
    pub messages: [Counter; 14],
    /// Refusals sent, by position in `RefusalReason::ALL`.
    pub refusals: [Counter; 7],
}

impl SignallingCounters {
    #[inline]
    pub fn refused(&self, reason: RefusalReason) {
        self.refusals[reason as usize].inc();
    }
}

/// RTMP sessions now, by role. Process-wide: the RTMP server is started with no handle
/// on the service's state, and there is one RTMP listener per process.
#[derive(Debug, Default)]
pub struct RtmpSessions {
    pub publishers: Gauge,
    pub players: Gauge,
}

/// The RTMP sessions of this process (`rtmp::server`).
pub static RTMP_SESSIONS: RtmpSessions = RtmpSessions {
    publishers: Gauge(AtomicI64::new(0)),
    players: Gauge(AtomicI64::new(0)),
};

/// Counts one RTMP session of a role while it lives.
#[derive(Debug)]
pub struct RtmpSession(&'static Gauge);

impl RtmpSession {
    pub fn publisher() -> RtmpSession {
        RTMP_SESSIONS.publishers.inc();
        RtmpSession(&RTMP_SESSIONS.publishers)
    }

    pub fn player() -> RtmpSession {
        RTMP_SESSIONS.players.inc();
        RtmpSession(&RTMP_SESSIONS.players)
    }
}

impl Drop for RtmpSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}
