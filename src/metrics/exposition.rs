//! The `/metrics` exposition: a sample of every value, read when scraped, encoded by
//! `prometheus-client` in the OpenMetrics text format (a registry per scrape: the
//! values live in the tasks that own them, not in the registry).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::counters::{
    DropReason, MediaCounters, RefusalReason, SignallingCounters, KINDS, MESSAGES, RTMP_SESSIONS,
};
use super::process::Process;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Stream sources, the label values of `huddle_streams{source}`.
pub const SOURCES: [&str; 3] = ["webrtc", "device", "rtmp"];

/// The values of one scrape that are not counters shared by reference.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub sessions: usize,
    pub rooms: usize,
    pub participants: usize,
    pub streams: usize,
    pub players: usize,
    pub media_peers: usize,
    /// Streams by position in `SOURCES`; `None` when the room core did not answer.
    pub streams_by_source: Option<[usize; 3]>,
    pub recordings: usize,
    pub camera_up: bool,
    pub microphone_up: bool,
    /// Frames the device's camera and microphone delivered (video access units, audio
    /// frames); zero without a camera and a microphone.
    pub device_frames: DeviceFrames,
    pub webhook_delivered: u64,
    pub webhook_failed_attempts: u64,
    pub webhook_dropped: u64,
    pub process: Process,
}

/// The device's frame counts (`huddle_device_frames_total{kind}`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceFrames {
    pub video: u64,
    pub audio: u64,
}

type Labeled = [(&'static str, &'static str); 1];

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstCounter::new(value));
}

fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) {
    let family = Family::<Labeled, Counter>::default();
    for (value, n) in values {
        family.get_or_create(&[(label, value)]).inc_by(n);
    }
    registry.register(name, help, family);
}

fn gauges(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'static str, i64)>,
) {
    let family = Family::<Labeled, Gauge>::default();
    for (value, n) in values {
        family.get_or_create(&[(label, value)]).set(n);
    }
    registry.register(name, help, family);
}

/// `worker` label values (`MAX_WORKERS` of them).
const WORKER_LABELS: [&str; crate::metrics::MAX_WORKERS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The OpenMetrics text of a scrape.
pub fn encode_sample(
    sample: &Sample,
    media: &MediaCounters,
    signalling: &SignallingCounters,
) -> String {
    let mut r = Registry::with_prefix("huddle");
    let reg = &mut r;

    reg.register(
        "build",
        "The running version",
        Info::new([("version", crate::VERSION)]),
    );
    gauge(
        reg,
        "sessions",
        "Signalling sessions",
        count(sample.sessions),
    );
    gauge(reg, "rooms", "Rooms", count(sample.rooms));
    gauge(
        reg,
        "participants",
        "Room members",
        count(sample.participants),
    );
    if let Some(by_source) = sample.streams_by_source {
        gauges(
            reg,
            "streams",
            "Published streams by source",
            "source",
            SOURCES.iter().zip(by_source).map(|(s, n)| (*s, count(n))),
        );
    }
    gauge(reg, "players", "Players of streams", count(sample.players));
    gauge(
        reg,
        "media_peers",
        "Live WebRTC peer connections",
        count(sample.media_peers),
    );

    let by_kind = |c: &[super::Counter; 2]| [(KINDS[0], c[0].get()), (KINDS[1], c[1].get())];
    counters(
        reg,
        "rtp_packets_received",
        "RTP packets received from sources",
        "kind",
        by_kind(&media.packets_in),
    );
    counters(
        reg,
        "rtp_bytes_received",
        "RTP payload bytes received from sources",
        "kind",
        by_kind(&media.bytes_in),
    );
    counters(
        reg,
        "rtp_packets_sent",
        "RTP packets handed to players, RTMP and recorders",
        "kind",
        by_kind(&media.packets_out),
    );
    counters(
        reg,
        "rtp_bytes_sent",
        "RTP bytes handed to players, RTMP and recorders",
        "kind",
        by_kind(&media.bytes_out),
    );
    counters(
        reg,
        "packets_dropped",
        "Media packets not forwarded, by reason",
        "reason",
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), media.dropped[*r as usize].get())),
    );
    counter(
        reg,
        "rtcp_pli_received",
        "RTCP picture loss indications from players",
        media.pli_received.get(),
    );
    counter(
        reg,
        "rtcp_fir_received",
        "RTCP full intra requests from players",
        media.fir_received.get(),
    );
    counter(
        reg,
        "rtcp_nack_received",
        "RTCP NACKs from players",
        media.nack_received.get(),
    );
    counter(
        reg,
        "rtp_retransmitted",
        "RTP packets sent again to players that NACKed them",
        media.retransmitted.get(),
    );
    counter(
        reg,
        "udp_trains",
        "UDP GSO segment trains sent (several datagrams to one player in one system call)",
        media.udp_trains.get(),
    );
    counter(
        reg,
        "udp_train_datagrams",
        "Datagrams sent in UDP GSO segment trains",
        media.udp_train_datagrams.get(),
    );
    counter(
        reg,
        "key_frame_requests",
        "Key frames requested from sources",
        media.key_frames_requested.get(),
    );
    counter(
        reg,
        "ice_failures",
        "Peers whose ICE did not come up or failed",
        media.ice_failures.get(),
    );
    counter(
        reg,
        "dtls_failures",
        "Peers whose DTLS did not come up or failed",
        media.dtls_failures.get(),
    );
    gauge(
        reg,
        "ice_tcp_connections_open",
        "ICE-TCP connections open",
        media.tcp.open.get(),
    );
    gauges(
        reg,
        "media_worker_players",
        "Players each media worker serves ([media] workers; 0 is the SFU task)",
        "worker",
        WORKER_LABELS
            .iter()
            .take(media.workers.count())
            .enumerate()
            .map(|(i, label)| (*label, media.workers.players(i))),
    );
    counter(
        reg,
        "ice_tcp_connections",
        "ICE-TCP connections accepted",
        media.tcp.accepted.get(),
    );
    counters(
        reg,
        "ice_tcp_closed",
        "ICE-TCP connections refused or closed early, by reason",
        "reason",
        media.tcp.closed(),
    );
    counter(
        reg,
        "ice_tcp_frames_dropped",
        "Frames not sent on an ICE-TCP connection (its queue full or gone)",
        media.tcp.dropped.get(),
    );

    counters(
        reg,
        "signalling_messages",
        "Signalling messages received, by message",
        "message",
        MESSAGES
            .iter()
            .zip(&signalling.messages)
            .map(|(m, c)| (*m, c.get())),
    );
    counters(
        reg,
        "signalling_refusals",
        "Signalling requests refused, by reason",
        "reason",
        RefusalReason::ALL
            .iter()
            .map(|r| (r.as_str(), signalling.refusals[*r as usize].get())),
    );
    gauges(
        reg,
        "rtmp_sessions",
        "RTMP sessions publishing or playing, by role",
        "role",
        [
            ("publisher", RTMP_SESSIONS.publishers.get()),
            ("player", RTMP_SESSIONS.players.get()),
        ],
    );
    gauge(
        reg,
        "recordings_active",
        "Streams being recorded",
        count(sample.recordings),
    );
    gauge(
        reg,
        "device_camera_up",
        "The device's camera delivers video (1) or not (0)",
        i64::from(sample.camera_up),
    );
    gauge(
        reg,
        "device_microphone_up",
        "The device's microphone delivers audio (1) or not (0)",
        i64::from(sample.microphone_up),
    );
    let frames = sample.device_frames;
    counters(
        reg,
        "device_frames",
        "Frames the device's camera (access units) and microphone delivered",
        "kind",
        [("video", frames.video), ("audio", frames.audio)],
    );
    counter(
        reg,
        "webhook_events_delivered",
        "Webhook events delivered",
        sample.webhook_delivered,
    );
    counter(
        reg,
        "webhook_delivery_failures",
        "Webhook delivery attempts that failed",
        sample.webhook_failed_attempts,
    );
    counter(
        reg,
        "webhook_events_dropped",
        "Webhook events dropped (queue full or given up)",
        sample.webhook_dropped,
    );

    let p = &sample.process;
    if let Some(rss) = p.resident_bytes {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(rss).unwrap_or(i64::MAX));
        reg.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            g,
        );
    }
    if let Some(cpu) = p.cpu_seconds {
        reg.register_with_unit(
            "process_cpu",
            "CPU time of the process (user and system)",
            Unit::Seconds,
            ConstCounter::new(cpu),
        );
    }
    if let Some(fds) = p.open_fds {
        gauge(reg, "process_open_fds", "Open file descriptors", count(fds));
    }
    if let Some(threads) = p.threads {
        gauge(
            reg,
            "process_threads",
            "Threads of the process",
            count(threads),
        );
    }
    if let Some(tasks) = p.tasks {
        gauge(
            reg,
            "tasks",
            "Tasks alive in the async runtime",
            count(tasks),
        );
    }

    let mut text = String::new();
    // Writing into a String does not fail.
    let _ = encode(&mut text, &r);
    text
}
