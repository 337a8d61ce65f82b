//! Counters owned by the tasks that do the work (the SFU task, the signalling
//! sessions, the RTMP edge), as plain atomics: counting costs one relaxed add on the
//! hot path and no lock; `/metrics` reads them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Key-frame requests sent to sources (PLI to WebRTC publishers, flags to the
    /// device and RTMP publishers).
    pub key_frames_requested: Counter,
    /// Peers whose ICE or DTLS did not come up, or failed later.
    pub ice_failures: Counter,
    pub dtls_failures: Counter,
}

impl MediaCounters {
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }
}
