//! Pushes: a stream's FLV tags sent to an external RTMP server (YouTube Live, a CDN,
//! another Huddle) by one task per push, started and stopped at run time.
//!
//! The task keeps consuming its tags whether connected or not (the room never waits
//! for a push): while disconnected it only remembers the latest AVC and AAC sequence
//! headers. On each connection it sends those headers first, drops video until a key
//! frame (asking the source for one), and rebases timestamps to start at 0. A failure
//! is logged once per change (redacted target and reason) and retried with backoff:
//! `retry`, doubling up to 30 s, from the start again after 10 s live. The task ends
//! on [`PushHandle::stop`], on dropping the handle, or when the tags channel closes.

use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{ClientError, Publisher, Target, TargetError, Timeouts};
use super::flv;
use super::server::{FlvTag, TagKind};
use crate::config;
use crate::device::supervisor::{HEALTHY_AFTER, RETRY_MAX};
use crate::logging::escaped;
use rml_rtmp::sessions::StreamMetadata;

/// How often a push still waiting for a key frame asks the source again.
const KEY_FRAME_REPEAT: Duration = Duration::from_secs(3);
/// How long a clean stop may take before the connection is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One push: which stream goes where. Reusable: each [`spawn`](Push::spawn) starts
/// an independent task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The stream's name (for logs and the admin API).
    pub stream: String,
    pub target: Target,
    /// The first retry delay.
    pub retry: Duration,
    pub timeouts: Timeouts,
}

/// What a push is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushStatus {
    /// Connecting (attempt 1 is the first try, later ones follow failures).
    Connecting { attempt: u32 },
    /// The target accepted the publish at `since`.
    Live { since: Instant },
    /// The last attempt failed with `error` (target redacted); the next one starts
    /// after `next_in`. `attempt` counts failures in a row.
    Retrying {
        error: String,
        attempt: u32,
        next_in: Duration,
    },
    /// The task is over.
    Ended { reason: String },
}

/// The running push. Dropping it stops the push.
#[derive(Debug)]
pub struct PushHandle {
    stream: String,
    target: String,
    status: watch::Receiver<PushStatus>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl PushHandle {
    pub fn status(&self) -> PushStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn subscribe(&self) -> watch::Receiver<PushStatus> {
        self.status.clone()
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The target, redacted.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Asks the push to stop (the publish is ended cleanly if live); returns at once.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the task to end (after [`stop`](PushHandle::stop) or the end of the
    /// stream).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PushHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl Push {
    pub fn new(stream: impl Into<String>, url: &str, retry: Duration) -> Result<Push, TargetError> {
        Ok(Push {
            stream: stream.into(),
            target: Target::parse(url)?,
            retry,
            timeouts: Timeouts::default(),
        })
    }

    /// A `[[rtmp.push]]` entry (validated at load, so this fails only on entries
    /// made up elsewhere).
    pub fn from_config(entry: &config::RtmpPush) -> Result<Push, TargetError> {
        Push::new(
            entry.stream.clone(),
            &entry.url,
            Duration::from_millis(entry.retry_ms),
        )
    }

    /// Starts the task: it reads `tags` (the sender should be bounded and use
    /// `try_send`, skipping to the next key frame when full) and calls `key_frame`
    /// when it needs one. Needs a tokio runtime.
    pub fn spawn(
        &self,
        tags: mpsc::Receiver<FlvTag>,
        key_frame: impl FnMut() + Send + 'static,
    ) -> PushHandle {
        let (status_tx, status) = watch::channel(PushStatus::Connecting { attempt: 1 });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            self.clone(),
            tags,
            Box::new(key_frame),
            status_tx,
            stop_rx,
        ));
        PushHandle {
            stream: self.stream.clone(),
            target: self.target.redacted(),
            status,
            stop,
            task: Some(task),
        }
    }
}

/// Why a connection (or the wait for the next one) ended.
enum Outcome {
    Failed(ClientError),
    Stopped,
    StreamEnded,
}

struct Task {
    push: Push,
    who: String,
    tags: mpsc::Receiver<FlvTag>,
    key_frame: Box<dyn FnMut() + Send>,
    status: watch::Sender<PushStatus>,
    stop: watch::Receiver<bool>,
    gate: Gate,
    backoff: Backoff,
}

async fn run(
    push: Push,
    tags: mpsc::Receiver<FlvTag>,
    key_frame: Box<dyn FnMut() + Send>,
    status: watch::Sender<PushStatus>,
    stop: watch::Receiver<bool>,
) {
    let who = format!("rtmp push {} to {}", escaped(&push.stream), push.target);
    let backoff = Backoff::new(push.retry);
    let mut task = Task {
        push,
        who,
        tags,
        key_frame,
        status,
        stop,
        gate: Gate::default(),
        backoff,
    };
    let reason = task.run().await;
    info!("{}: ended: {reason}", task.who);
    task.set(PushStatus::Ended { reason });
}

/// Ends the publish cleanly, within `CLOSE_TIMEOUT`.
async fn close(who: &str, publisher: Publisher) {
    match tokio::time::timeout(CLOSE_TIMEOUT, publisher.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("{who}: close: {e}"),
        Err(_) => debug!("{who}: close: timed out"),
    }
}

/// Resolves when a stop was asked for or the handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl Task {
    /// Publishes a status (subscribers are woken only by a change).
    fn set(&self, status: PushStatus) {
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    async fn run(&mut self) -> String {
        let mut logged: Option<String> = None;
        loop {
            self.set(PushStatus::Connecting {
                attempt: self.backoff.failures + 1,
            });
            let outcome = self.connection(&mut logged).await;
            let error = match outcome {
                Outcome::Stopped => return "stopped".into(),
                Outcome::StreamEnded => return "the stream ended".into(),
                Outcome::Failed(error) => error,
            };
            // The log line names the target already; the status carries it.
            let reason = error.kind.to_string();
            let error = error.to_string();
            self.gate.disconnected();
            let (attempt, next_in) = self.backoff.failed(Instant::now());
            if logged.as_deref() != Some(reason.as_str()) {
                warn!(
                    "{}: {reason}; retrying in {} ms",
                    self.who,
                    next_in.as_millis()
                );
                logged = Some(reason);
            } else {
                debug!("{}: attempt {attempt} failed the same way", self.who);
            }
            self.set(PushStatus::Retrying {
                error,
                attempt,
                next_in,
            });
            if let Some(end) = self.idle(next_in).await {
                return end;
            }
        }
    }

    /// Waits `delay` while consuming (and dropping) tags.
    async fn idle(&mut self, delay: Duration) -> Option<String> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Some("stopped".into()),
                _ = &mut sleep => return None,
                tag = self.tags.recv() => match tag {
                    None => return Some("the stream ended".into()),
                    Some(tag) => {
                        self.gate.tag(tag);
                    }
                },
            }
        }
    }

    /// One connection: connect (consuming tags meanwhile), then forward tags.
    async fn connection(&mut self, logged: &mut Option<String>) -> Outcome {
        let connect = Publisher::connect(&self.push.target, self.push.timeouts);
        tokio::pin!(connect);
        let mut publisher = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Outcome::Stopped,
                r = &mut connect => match r {
                    Ok(p) => break p,
                    Err(e) => return Outcome::Failed(e),
                },
                tag = self.tags.recv() => match tag {
                    None => return Outcome::StreamEnded,
                    Some(tag) => {
                        self.gate.tag(tag);
                    }
                },
            }
        };
        let since = Instant::now();
        self.backoff.live(since);
        *logged = None;
        info!("{}: live", self.who);
        let mut asked = Instant::now();
        (self.key_frame)();
        self.set(PushStatus::Live { since });
        if let Err(e) = publisher.send_metadata(&self.gate.metadata()).await {
            return Outcome::Failed(e);
        }
        for tag in self.gate.connected() {
            if let Err(e) = publisher.send(&tag).await {
                return Outcome::Failed(e);
            }
        }
        loop {
            let tag = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => {
                    close(&self.who, publisher).await;
                    return Outcome::Stopped;
                }
                r = publisher.receive() => {
                    if let Err(e) = r {
                        return Outcome::Failed(e);
                    }
                    None
                }
                tag = self.tags.recv() => match tag {
                    None => {
                        close(&self.who, publisher).await;
                        return Outcome::StreamEnded;
                    }
                    Some(tag) => Some(tag),
                },
            };
            let out = tag.and_then(|t| self.gate.tag(t));
            if self.gate.waiting_for_key() && asked.elapsed() >= KEY_FRAME_REPEAT {
                asked = Instant::now();
                (self.key_frame)();
            }
            let sent = tokio::select! {
                biased;
                // A stalled write must not delay a stop beyond this.
                _ = stopped(&mut self.stop) => return Outcome::Stopped,
                r = async {
                    match &out {
                        Some(tag) => publisher.send(tag).await,
                        None => publisher.flush().await,
                    }
                } => r,
            };
            if let Err(e) = sent {
                return Outcome::Failed(e);
            }
        }
    }
}

/// Which tags go out on a connection: the pure part of a push.
#[derive(Debug, Default)]
struct Gate {
    video_header: Option<FlvTag>,
    audio_header: Option<FlvTag>,
    connected: bool,
    /// A key frame went out on this connection.
    started: bool,
    /// The source timestamp sent as 0 on this connection.
    base: Option<u32>,
}

/// An AVC sequence header: codec 7, AVCPacketType 0.
fn is_video_header(data: &[u8]) -> bool {
    matches!(data, [b0, 0, ..] if b0 & 0x0f == 7)
}

/// An AAC sequence header: sound format 10, AACPacketType 0.
fn is_audio_header(data: &[u8]) -> bool {
    matches!(data, [b0, 0, ..] if b0 >> 4 == 10)
}

/// A key frame carrying a picture (not an AVC end-of-sequence).
fn is_key_frame(data: &[u8]) -> bool {
    match data {
        [b0, packet_type, ..] if b0 & 0x0f == 7 => b0 >> 4 == 1 && *packet_type == 1,
        [b0, ..] => b0 >> 4 == 1,
        [] => false,
    }
}

impl Gate {
    /// A connection is up: the cached sequence headers to send first, at time 0.
    fn connected(&mut self) -> Vec<FlvTag> {
        self.connected = true;
        self.started = false;
        self.base = None;
        [&self.video_header, &self.audio_header]
            .into_iter()
            .flatten()
            .map(|t| FlvTag {
                timestamp_ms: 0,
                ..t.clone()
            })
            .collect()
    }

    fn disconnected(&mut self) {
        self.connected = false;
    }

    /// `onMetaData` from the cached sequence headers: codecs and the AAC format.
    fn metadata(&self) -> StreamMetadata {
        let mut m = StreamMetadata::new();
        m.encoder = Some(format!("Huddle {}", crate::VERSION));
        if let Some(&b0) = self.video_header.as_ref().and_then(|t| t.data.first()) {
            m.video_codec_id = Some((b0 & 0x0f).into());
        }
        if let Some(t) = &self.audio_header {
            if let Some(&b0) = t.data.first() {
                m.audio_codec_id = Some((b0 >> 4).into());
            }
            if let Ok(c) = flv::parse_aac_config(t.data.get(2..).unwrap_or(&[])) {
                m.audio_sample_rate = Some(c.sample_rate);
                if (1..=2).contains(&c.channels) {
                    m.audio_channels = Some(c.channels.into());
                    m.audio_is_stereo = Some(c.channels == 2);
                }
            }
        }
        m
    }

    /// Whether video is being dropped until a key frame.
    fn waiting_for_key(&self) -> bool {
        self.connected && !self.started && self.video_header.is_some()
    }

    /// A tag of the source: what to send, with its timestamp rebased, if anything.
    fn tag(&mut self, tag: FlvTag) -> Option<FlvTag> {
        let header = match tag.kind {
            TagKind::Video if is_video_header(&tag.data) => {
                self.video_header = Some(tag.clone());
                true
            }
            TagKind::Audio if is_audio_header(&tag.data) => {
                self.audio_header = Some(tag.clone());
                true
            }
            _ => false,
        };
        if !self.connected {
            return None;
        }
        if !header {
            let pass = match tag.kind {
                TagKind::Video => self.started || is_key_frame(&tag.data),
                // Audio waits for the first key frame when there is video.
                TagKind::Audio => self.started || self.video_header.is_none(),
            };
            if !pass {
                return None;
            }
            if tag.kind == TagKind::Video {
                self.started = true;
            }
            if self.base.is_none() {
                self.base = Some(tag.timestamp_ms);
            }
        }
        let timestamp_ms = match self.base {
            None => 0,
            Some(base) => {
                let t = tag.timestamp_ms.wrapping_sub(base);
                // A tag slightly older than the first one sent goes out at 0.
                if t > i32::MAX as u32 {
                    0
                } else {
                    t
                }
            }
        };
        Some(FlvTag {
            timestamp_ms,
            ..tag
        })
    }
}

/// Retry delays: `retry`, doubling up to `RETRY_MAX` (30 s); a connection live for
/// `HEALTHY_AFTER` (10 s) starts over (the policy of `device::supervisor`).
#[derive(Debug)]
struct Backoff {
    retry: Duration,
    /// Failures in a row.
    failures: u32,
    live_since: Option<Instant>,
}

impl Backoff {
    fn new(retry: Duration) -> Backoff {
        Backoff {
            retry,
            failures: 0,
            live_since: None,
        }
    }

    fn live(&mut self, now: Instant) {
        self.live_since = Some(now);
    }

    /// A failure: the attempt number (failures in a row) and the delay before the next.
    fn failed(&mut self, now: Instant) -> (u32, Duration) {
        if let Some(since) = self.live_since.take() {
            if now.saturating_duration_since(since) >= HEALTHY_AFTER {
                self.failures = 0;
            }
        }
        let delay = self
            .retry
            .saturating_mul(1u32 << self.failures.min(16))
            .min(RETRY_MAX.max(self.retry));
        self.failures = self.failures.saturating_add(1);
        (self.failures, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tag(kind: TagKind, ms: u32, data: &[u8]) -> FlvTag {
        FlvTag {
            kind,
            timestamp_ms: ms,
            data: Bytes::copy_from_slice(data),
        }
    }

    const AVC_HEADER: &[u8] = &[0x17, 0, 0, 0, 0, 1, 0x42];
    const AAC_HEADER: &[u8] = &[0xaf, 0, 0x12, 0x08];
    const KEY: &[u8] = &[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
    const INTER: &[u8] = &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41];
    const AAC: &[u8] = &[0xaf, 1, 0x21];

    fn times(tags: &[Option<FlvTag>]) -> Vec<Option<u32>> {
        tags.iter()
            .map(|t| t.as_ref().map(|t| t.timestamp_ms))
            .collect()
    }

    #[test]
    fn tag_kinds_are_recognised() {
        assert!(is_video_header(AVC_HEADER));
        assert!(!is_video_header(KEY));
        assert!(is_audio_header(AAC_HEADER));
        assert!(!is_audio_header(AAC));
        assert!(is_key_frame(KEY));
        assert!(!is_key_frame(INTER));
        assert!(!is_key_frame(AVC_HEADER));
        assert!(!is_key_frame(&[0x17, 2, 0, 0, 0]), "end of sequence");
        assert!(!is_key_frame(&[]));
        assert!(!is_video_header(&[0x17]));
    }

    #[test]
    fn disconnected_tags_are_dropped_but_headers_cached() {
        let mut g = Gate::default();
        assert_eq!(g.tag(tag(TagKind::Video, 500, AVC_HEADER)), None);
        assert_eq!(g.tag(tag(TagKind::Audio, 500, AAC_HEADER)), None);
        assert_eq!(g.tag(tag(TagKind::Video, 600, KEY)), None);
        assert_eq!(g.tag(tag(TagKind::Audio, 600, AAC)), None);
        // A newer header replaces the cached one.
        let newer = [0x17, 0, 0, 0, 0, 1, 0x64];
        g.tag(tag(TagKind::Video, 700, &newer));
        let first = g.connected();
        assert_eq!(
            first,
            vec![
                tag(TagKind::Video, 0, &newer),
                tag(TagKind::Audio, 0, AAC_HEADER)
            ]
        );
    }

    #[test]
    fn video_waits_for_a_key_frame_and_time_starts_at_zero() {
        let mut g = Gate::default();
        g.tag(tag(TagKind::Video, 0, AVC_HEADER));
        g.tag(tag(TagKind::Audio, 0, AAC_HEADER));
        assert_eq!(g.connected().len(), 2);
        assert!(g.waiting_for_key());
        let out = vec![
            g.tag(tag(TagKind::Video, 10_000, INTER)),
            g.tag(tag(TagKind::Audio, 10_010, AAC)),
            g.tag(tag(TagKind::Video, 10_033, KEY)),
            g.tag(tag(TagKind::Audio, 10_030, AAC)),
            g.tag(tag(TagKind::Video, 10_066, INTER)),
            g.tag(tag(TagKind::Audio, 10_053, AAC)),
        ];
        assert_eq!(
            times(&out),
            vec![None, None, Some(0), Some(0), Some(33), Some(20)]
        );
        assert!(!g.waiting_for_key());
        // A new header mid-stream goes out at once, on the rebased clock.
        let h = g.tag(tag(TagKind::Video, 10_100, AVC_HEADER)).unwrap();
        assert_eq!(h.timestamp_ms, 67);
        // A reconnection starts over: headers at 0, wait for a key frame, rebase.
        g.disconnected();
        assert_eq!(g.tag(tag(TagKind::Video, 11_000, KEY)), None);
        let first = g.connected();
        assert!(first.iter().all(|t| t.timestamp_ms == 0));
        let out = vec![
            g.tag(tag(TagKind::Video, 12_000, INTER)),
            g.tag(tag(TagKind::Video, 12_033, KEY)),
            g.tag(tag(TagKind::Video, 12_066, INTER)),
        ];
        assert_eq!(times(&out), vec![None, Some(0), Some(33)]);
    }

    #[test]
    fn timestamps_rebase_across_the_32_bit_wrap() {
        let mut g = Gate::default();
        g.connected();
        let out = vec![
            g.tag(tag(TagKind::Video, u32::MAX - 10, KEY)),
            g.tag(tag(TagKind::Video, 22, INTER)),
        ];
        assert_eq!(times(&out), vec![Some(0), Some(33)]);
    }

    #[test]
    fn metadata_comes_from_the_sequence_headers() {
        let mut g = Gate::default();
        let m = g.metadata();
        assert_eq!((m.video_codec_id, m.audio_codec_id), (None, None));
        g.tag(tag(TagKind::Video, 0, AVC_HEADER));
        g.tag(tag(TagKind::Audio, 0, AAC_HEADER));
        let m = g.metadata();
        assert_eq!((m.video_codec_id, m.audio_codec_id), (Some(7), Some(10)));
        assert_eq!(m.audio_sample_rate, Some(44100));
        assert_eq!(
            (m.audio_channels, m.audio_is_stereo),
            (Some(1), Some(false))
        );
    }

    #[test]
    fn audio_only_streams_pass_without_a_key_frame() {
        let mut g = Gate::default();
        g.tag(tag(TagKind::Audio, 5, AAC_HEADER));
        g.connected();
        assert!(!g.waiting_for_key());
        let out = vec![
            g.tag(tag(TagKind::Audio, 100, AAC)),
            g.tag(tag(TagKind::Audio, 123, AAC)),
        ];
        assert_eq!(times(&out), vec![Some(0), Some(23)]);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::new(ms(1000));
        let delays: Vec<(u32, u64)> = (0..7)
            .map(|i| {
                let (n, d) = b.failed(t0 + ms(i));
                (n, d.as_millis() as u64)
            })
            .collect();
        assert_eq!(
            delays,
            vec![
                (1, 1000),
                (2, 2000),
                (3, 4000),
                (4, 8000),
                (5, 16000),
                (6, 30000),
                (7, 30000)
            ]
        );
        // A retry above the cap is kept as is.
        assert_eq!(Backoff::new(ms(45_000)).failed(t0).1, ms(45_000));
    }

    #[test]
    fn backoff_starts_over_after_ten_seconds_live_only() {
        let t0 = Instant::now();
        let mut b = Backoff::new(ms(500));
        assert_eq!(b.failed(t0), (1, ms(500)));
        assert_eq!(b.failed(t0 + ms(500)), (2, ms(1000)));
        // Live for 9.9 s: still backing off.
        b.live(t0 + ms(2000));
        assert_eq!(b.failed(t0 + ms(11_900)), (3, ms(2000)));
        // Live for 10 s: from the start.
        b.live(t0 + ms(20_000));
        assert_eq!(b.failed(t0 + ms(30_000)), (1, ms(500)));
    }
}
