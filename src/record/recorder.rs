//! One stream's RTP into fragmented MP4 files (see `fmp4`), without decoding.
//!
//! - [`start`] writes the sidecar of the first file (`meta.name` in `dir`, chosen by the
//!   caller with `catalog::unique_name`) and creates the file, then runs a tokio task
//!   and one writer thread per recording. The task drains the packet channel (the
//!   SFU's side is a bounded queue fed with `try_send`, so it never waits for us),
//!   stamps each packet's arrival and hands it to the writer through a bounded std
//!   channel with `try_send`: when the writer falls behind, packets are dropped and
//!   counted (a warning on the first and every 500th); the depacketizer sees the
//!   sequence gap and the video resumes at the next key frame. The writer thread
//!   depacketizes (H.264 through `rtmp::egress::H264Depacketizer`, VP8 here), maps time,
//!   muxes and writes. A thread per recording (not a pool): each one spends its time
//!   in `sync_data`, a device records a handful of streams, and a slow disk for one
//!   file never delays another's fsync.
//! - Time: both tracks run on `rtmp::egress::TrackClock`s anchored at arrival on the
//!   recording's one origin, so audio and video stay in sync without RTCP and a gap
//!   (a muted publisher, lost packets) stays a gap: the audio fragment is cut and the
//!   next `tfdt` jumps. File time 0 is the first video key frame (or the first audio
//!   packet of an audio-only stream); audio from before it is dropped. When no key
//!   frame comes within 3 s of the first audio (a camera off from the start), the
//!   audio is recorded alone and the first key frame starts the next segment.
//! - Fragments: one at least every `fragment` of media (and after `fragment` without
//!   packets), cut before a video key frame once half of that has passed; each is
//!   written with `write_all` and `sync_data`, so a crash or a power cut loses at most
//!   the fragment being built.
//! - Segments: a codec change ([`RecorderHandle::change_codecs`]), a new picture size (a key frame whose SPS or VP8 header has other
//!   dimensions, or an SPS with another H.264 profile than the `avcC`'s), or video
//!   starting after audio was recorded alone, closes the file (it stays valid, its sidecar gets `ended`) and goes on
//!   in `catalog::segment_name` (`<name>-part2.mp4`, …) with its own sidecar.
//! - Faults: a write or fsync error (a full disk) stops the recording: the file is cut
//!   back to the end of its last complete fragment (`set_len`), its sidecar gets
//!   `error`, a warning names the file and the reason; the packet channel is then
//!   closed (the SFU's `try_send` fails, forwarding goes on). Nothing here panics on
//!   what the network, the disk or the packets hold.
//! - G.711 audio (PCMU/PCMA) has no ISO BMFF sample entry: a stream with video is
//!   recorded without it, an audio-only one is refused.
//!
//! `key_frame` asks the source for a key frame (at start and after a loss, at most every
//! 500 ms); it is called from the writer thread.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::warn;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use super::catalog::{self, RecordMeta};
use super::fmp4::{vp8_key_frame_size, Fmp4Writer, SpsInfo, TrackConfig};
use crate::device::h264::{nal, nal_type, nal_units, RtpPacket};
use crate::media::codec::{Chosen, Family, Kind};
use crate::rtmp::egress::{H264Depacketizer, KeyFrameRequests, Pushed, TrackClock};

/// Packets queued toward the writer thread (~2 s of a 2 Mbit/s stream with audio).
const QUEUE: usize = 512;
/// An audio packet this much later than the end of the previous one starts a new
/// fragment, so the gap is a jump of `tfdt`.
const AUDIO_GAP_MS: u64 = 100;
/// Audio waits this long for the first video key frame; then it is recorded alone
/// until the video starts (in a new segment).
const VIDEO_WAIT_MS: u64 = 3000;
/// A fragment is written once it holds this much, whatever its duration.
const MAX_FRAGMENT_BYTES: usize = 8 << 20;
/// Largest VP8 frame taken.
const MAX_FRAME: usize = 4 << 20;

/// Where a recording is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStatus {
    /// The file being written (the last one once stopped).
    pub file: String,
    /// Bytes written to disk (complete fragments), all segments.
    pub bytes: u64,
    /// Media time recorded, all segments.
    pub duration_ms: u64,
    /// When the first recorded media arrived (file time 0 of the first file): the
    /// stream's start on a room's timeline (monotonic: a jump of the system clock
    /// does not move it).
    pub first_media: Option<Instant>,
    /// Why the recording stopped early.
    pub error: Option<String>,
    /// Packets dropped because the writer could not keep up.
    pub dropped: u64,
}

/// What a finished recording left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSummary {
    /// File names in the records directory, in order (segments after the first).
    pub files: Vec<String>,
    pub bytes: u64,
    pub duration_ms: u64,
    pub first_media: Option<Instant>,
    pub error: Option<String>,
    pub dropped: u64,
}

#[derive(Debug, Error)]
pub enum RecordError {
    /// Nothing in the stream can be recorded (the reason).
    #[error("cannot record: {0}")]
    Unsupported(String),
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// No writer thread, or `start` was called outside a tokio runtime.
    #[error("cannot start the recorder: {0}")]
    Thread(io::Error),
}

/// A running recording.
#[derive(Debug)]
pub struct RecorderHandle {
    stop: watch::Sender<bool>,
    codecs: mpsc::UnboundedSender<Chosen>,
    status: watch::Receiver<RecordStatus>,
    done: oneshot::Receiver<RecordSummary>,
}

impl RecorderHandle {
    /// Ends the recording: the last fragment is written and the sidecar finalized
    /// (see [`RecorderHandle::finished`]). Dropping the handle does not stop it.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The stream's codecs changed (a renegotiation): the file being written is closed
    /// and the next key frame (or audio packet, audio-only) starts the next segment.
    /// Packets still queued from before the change are read as the new codecs (so
    /// mostly dropped while waiting for a key frame).
    pub fn change_codecs(&self, codecs: Chosen) {
        let _ = self.codecs.send(codecs);
    }

    /// Bytes, duration, first media time and error, updated after each fragment.
    pub fn status(&self) -> watch::Receiver<RecordStatus> {
        self.status.clone()
    }

    /// Waits for the end (the stream ended, `stop`, or a write error).
    pub async fn finished(self) -> RecordSummary {
        let last = self.status.borrow().clone();
        self.done.await.unwrap_or(RecordSummary {
            files: vec![last.file],
            bytes: last.bytes,
            duration_ms: last.duration_ms,
            first_media: last.first_media,
            error: Some("the writer thread stopped".into()),
            dropped: last.dropped,
        })
    }
}

/// Records a stream: see the module documentation. `meta.name` is the first file's
/// name in `dir` (created here, never overwritten); `fragment` is the longest media
/// time in one fragment. Call it inside a tokio runtime (its drain task runs there).
pub fn start(
    dir: &Path,
    meta: RecordMeta,
    codecs: Chosen,
    packets: mpsc::Receiver<(Kind, RtpPacket)>,
    key_frame: impl FnMut() + Send + 'static,
    fragment: Duration,
) -> Result<RecorderHandle, RecordError> {
    start_with(Disk, dir, meta, codecs, packets, key_frame, fragment)
}

/// Where segment files go: the disk, or a failing double in tests.
pub(crate) trait Storage: Send + 'static {
    type File: SegmentFile;
    fn create(&mut self, path: &Path) -> io::Result<Self::File>;
}

pub(crate) trait SegmentFile: Send + 'static {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

pub(crate) struct Disk;

impl Storage for Disk {
    type File = std::fs::File;

    fn create(&mut self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(path)
    }
}

impl SegmentFile for std::fs::File {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, data)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)?;
        io::Seek::seek(self, io::SeekFrom::Start(len)).map(|_| ())
    }
}

enum Msg {
    Packet {
        kind: Kind,
        packet: RtpPacket,
        /// ms since the recording started.
        arrival_ms: u64,
    },
    /// The stream's codecs changed.
    Codecs(Chosen),
}

/// What of a stream's codecs is recorded: the video depacketizer and Opus channels.
fn inputs(codecs: &Chosen) -> (Option<Video>, Option<u8>) {
    let video = match codecs.video.as_ref().map(|c| c.family) {
        Some(Family::H264 { .. }) => Some(Video::H264(Box::default())),
        Some(Family::Vp8) => Some(Video::Vp8(Vp8Depacketizer::new())),
        _ => None,
    };
    let opus = codecs
        .audio
        .as_ref()
        .filter(|c| c.family == Family::Opus)
        .map(|c| c.channels.clamp(1, 2) as u8);
    (video, opus)
}

pub(crate) fn start_with<S: Storage>(
    mut storage: S,
    dir: &Path,
    meta: RecordMeta,
    codecs: Chosen,
    mut packets: mpsc::Receiver<(Kind, RtpPacket)>,
    key_frame: impl FnMut() + Send + 'static,
    fragment: Duration,
) -> Result<RecorderHandle, RecordError> {
    let (video, opus) = inputs(&codecs);
    if video.is_none() && opus.is_none() {
        return Err(RecordError::Unsupported(format!(
            "{}: only H.264, VP8 and Opus are recorded",
            codecs.describe()
        )));
    }
    if let Some(audio) = codecs.audio.as_ref().filter(|c| c.family != Family::Opus) {
        warn!(
            "recording {}: {} audio has no MP4 form, recording video only",
            meta.name,
            audio.family.name()
        );
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| RecordError::Thread(io::Error::other(e)))?;
    let path = dir.join(&meta.name);
    let io_error = |path: &Path, source| RecordError::Io {
        path: path.to_owned(),
        source,
    };
    catalog::store(&catalog::sidecar(&path), &meta)
        .map_err(|e| io_error(&catalog::sidecar(&path), e))?;
    let file = storage.create(&path).map_err(|e| io_error(&path, e))?;

    let (stop, mut stop_rx) = watch::channel(false);
    let (status_tx, status) = watch::channel(RecordStatus {
        file: meta.name.clone(),
        ..RecordStatus::default()
    });
    let (done_tx, done) = oneshot::channel();
    let (tx, rx) = std_mpsc::sync_channel::<Msg>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let fragment_ms = (fragment.as_millis() as u64).max(1);
    let recording = Recording {
        dir: dir.to_owned(),
        storage,
        first: meta,
        first_file: Some(file),
        started_wall: SystemTime::now(),
        started_at: Instant::now(),
        has_video: video.is_some(),
        video,
        opus,
        video_clock: TrackClock::new(codecs.video.as_ref().map_or(90_000, |c| c.clock_rate)),
        audio_clock: TrackClock::new(48_000),
        last_audio_seq: None,
        families: (
            codecs.video.as_ref().map(|c| c.family),
            codecs.audio.as_ref().map(|c| (c.family, c.channels)),
        ),
        first_audio_ms: None,
        requests: KeyFrameRequests::default(),
        key_frame: Box::new(key_frame),
        segment: None,
        files: Vec::new(),
        buf: Vec::new(),
        units: Vec::new(),
        closed_bytes: 0,
        closed_ms: 0,
        first_media: None,
        error: None,
        status: status_tx,
        dropped: dropped.clone(),
        fragment_ms,
        last_write: Instant::now(),
        stopped: false,
    };
    let thread = std::thread::Builder::new()
        .name("record".into())
        .spawn(move || {
            let summary = recording.run(rx, fragment);
            let _ = done_tx.send(summary);
        })
        .map_err(RecordError::Thread)?;
    drop(thread);
    let name = status.borrow().file.clone();
    let (codecs_tx, mut codecs_rx) = mpsc::unbounded_channel::<Chosen>();
    runtime.spawn(async move {
        let mut stop_open = true;
        loop {
            tokio::select! {
                biased;
                changed = stop_rx.changed(), if stop_open => match changed {
                    Ok(()) if *stop_rx.borrow() => break,
                    Ok(()) => {}
                    Err(_) => stop_open = false,
                },
                Some(codecs) = codecs_rx.recv() => {
                    // Rare: waits for room rather than be dropped.
                    let mut msg = Msg::Codecs(codecs);
                    while let Err(std_mpsc::TrySendError::Full(back)) = tx.try_send(msg) {
                        msg = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                packet = packets.recv() => {
                    let Some((kind, packet)) = packet else { break };
                    let arrival_ms = started.elapsed().as_millis() as u64;
                    match tx.try_send(Msg::Packet { kind, packet, arrival_ms }) {
                        Ok(()) => {}
                        Err(std_mpsc::TrySendError::Full(_)) => {
                            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            if n == 1 || n.is_multiple_of(500) {
                                warn!(
                                    "recording {name}: the writer falls behind, {n} packets \
                                     dropped (video resumes at a key frame)"
                                );
                            }
                        }
                        // The writer stopped (a write error): drop what comes.
                        Err(std_mpsc::TrySendError::Disconnected(_)) => break,
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it has taken what is queued.
    });
    Ok(RecorderHandle {
        stop,
        codecs: codecs_tx,
        status,
        done,
    })
}

enum Video {
    H264(Box<H264Depacketizer>),
    Vp8(Vp8Depacketizer),
}

/// The file being written.
struct Segment<F> {
    meta: RecordMeta,
    path: PathBuf,
    file: F,
    mux: Fmp4Writer,
    /// Bytes on disk up to the end of the last complete fragment.
    written: u64,
    /// The media time on disk, in ms.
    written_ms: u64,
    /// Recording time (ms) of file time 0.
    base_ms: u64,
    video: Option<usize>,
    audio: Option<usize>,
}

impl<F> Segment<F> {
    /// The media time of the file so far, in ms.
    fn duration_ms(&self) -> u64 {
        (0..self.mux.track_count())
            .filter_map(|t| {
                let scale = u64::from(self.mux.config(t)?.timescale());
                Some(self.mux.end_time(t)? * 1000 / scale)
            })
            .max()
            .unwrap_or(0)
    }
}

/// The writer thread's state.
struct Recording<S: Storage> {
    dir: PathBuf,
    storage: S,
    /// The first file's sidecar (a template for the segments).
    first: RecordMeta,
    /// The first file, created at start, until its first media.
    first_file: Option<S::File>,
    started_wall: SystemTime,
    /// `started_wall` on the monotonic clock.
    started_at: Instant,
    has_video: bool,
    video: Option<Video>,
    /// Channels of an Opus track.
    opus: Option<u8>,
    video_clock: TrackClock,
    audio_clock: TrackClock,
    last_audio_seq: Option<u16>,
    /// The codec families (and audio channels) being recorded.
    families: (Option<Family>, Option<(Family, u16)>),
    /// Recording time of the first audio packet.
    first_audio_ms: Option<u64>,
    requests: KeyFrameRequests,
    key_frame: Box<dyn FnMut() + Send>,
    segment: Option<Segment<S::File>>,
    files: Vec<String>,
    buf: Vec<u8>,
    units: Vec<crate::rtmp::egress::AccessUnit>,
    closed_bytes: u64,
    closed_ms: u64,
    first_media: Option<Instant>,
    error: Option<String>,
    status: watch::Sender<RecordStatus>,
    dropped: Arc<AtomicU64>,
    fragment_ms: u64,
    /// When the last fragment was written.
    last_write: Instant,
    /// A write failed: nothing more is written.
    stopped: bool,
}

impl<S: Storage> Recording<S> {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>, fragment: Duration) -> RecordSummary {
        if self.has_video {
            self.requests.want();
            self.requests
                .poll(Instant::now(), true, &mut self.key_frame.as_mut());
        }
        while !self.stopped {
            match rx.recv_timeout(fragment) {
                Ok(msg) => self.packet(msg),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.last_write.elapsed() >= fragment {
                self.flush();
            }
        }
        drop(rx);
        self.finish()
    }

    fn packet(&mut self, msg: Msg) {
        match msg {
            Msg::Packet {
                kind: Kind::Video,
                packet,
                arrival_ms,
            } => self.video_packet(&packet, arrival_ms),
            Msg::Packet {
                kind: Kind::Audio,
                packet,
                arrival_ms,
            } => self.audio_packet(&packet, arrival_ms),
            Msg::Codecs(codecs) => self.change_codecs(codecs),
        }
    }

    /// New codecs: a new segment with new clocks and depacketizers.
    fn change_codecs(&mut self, codecs: Chosen) {
        let families = (
            codecs.video.as_ref().map(|c| c.family),
            codecs.audio.as_ref().map(|c| (c.family, c.channels)),
        );
        if families == self.families {
            return; // payload types or SDP parameters only
        }
        self.families = families;
        self.close();
        let (video, opus) = inputs(&codecs);
        if video.is_none() && opus.is_none() {
            warn!(
                "recording {}: {} cannot be recorded, waiting for other codecs",
                self.first.name,
                codecs.describe()
            );
        }
        self.has_video = video.is_some();
        self.video = video;
        self.opus = opus;
        self.video_clock = TrackClock::new(codecs.video.as_ref().map_or(90_000, |c| c.clock_rate));
        self.audio_clock = TrackClock::new(48_000);
        self.last_audio_seq = None;
        self.first_audio_ms = None;
        if self.has_video {
            self.requests.want();
            self.requests
                .poll(Instant::now(), true, &mut self.key_frame.as_mut());
        }
    }

    fn video_packet(&mut self, packet: &RtpPacket, arrival_ms: u64) {
        let Some(video) = self.video.as_mut() else {
            return;
        };
        self.video_clock.map(packet.header.timestamp, arrival_ms);
        let mut units = std::mem::take(&mut self.units);
        let (pushed, waiting) = match video {
            Video::H264(d) => {
                let pushed = d.push(packet, &mut units);
                (pushed, d.waiting_for_key_frame())
            }
            Video::Vp8(d) => {
                let mut frames = Vec::new();
                let pushed = d.push(packet, |data, timestamp, key| {
                    frames.push((data.to_vec(), timestamp, key))
                });
                for (data, timestamp, key) in frames {
                    units.push(crate::rtmp::egress::AccessUnit {
                        data: data.into(),
                        timestamp,
                        key,
                    });
                }
                (pushed, d.waiting)
            }
        };
        if pushed == Pushed::Lost {
            self.requests.want();
        }
        for au in units.drain(..) {
            let ms = self.video_clock.map(au.timestamp, arrival_ms);
            self.video_frame(&au.data, au.key, ms);
        }
        self.units = units;
        let waiting = waiting || self.segment.is_none();
        self.requests
            .poll(Instant::now(), waiting, &mut self.key_frame.as_mut());
    }

    /// The track config a key frame describes.
    fn video_config(&self, data: &[u8]) -> Option<TrackConfig> {
        match self.video.as_ref()? {
            Video::H264(_) => {
                let (mut sps, mut pps) = (None, None);
                for unit in nal_units(data) {
                    match nal_type(unit) {
                        nal::SPS => sps = Some(unit),
                        nal::PPS => pps = Some(unit),
                        _ => {}
                    }
                }
                let (sps, pps) = (sps?, pps?);
                let info = SpsInfo::parse(sps)?;
                Some(TrackConfig::H264 {
                    sps: sps.to_vec(),
                    pps: pps.to_vec(),
                    width: u16::try_from(info.width).ok()?,
                    height: u16::try_from(info.height).ok()?,
                })
            }
            Video::Vp8(_) => {
                let (width, height) = vp8_key_frame_size(data)?;
                Some(TrackConfig::Vp8 { width, height })
            }
        }
    }

    fn video_frame(&mut self, data: &[u8], key: bool, ms: u64) {
        if self.stopped {
            return;
        }
        if key {
            let config = self.video_config(data);
            // None: no file yet; Some(None): an audio-only file (the video was late).
            let current = self
                .segment
                .as_ref()
                .map(|s| s.video.and_then(|t| s.mux.config(t)).cloned());
            match (config, current) {
                (Some(config), None) => self.open(ms, Some(config)),
                (Some(config), Some(old))
                    if old.as_ref().is_none_or(|old| !same_picture(&config, old)) =>
                {
                    self.close();
                    if !self.stopped {
                        self.open(ms, Some(config));
                    }
                }
                (None, None) => {
                    // A key frame without parameter sets: wait for the next one.
                    self.requests.want();
                    return;
                }
                _ => {}
            }
        }
        let Some(segment) = self.segment.as_ref() else {
            return;
        };
        let Some(track) = segment.video else { return };
        let Some(since) = ms.checked_sub(segment.base_ms) else {
            return;
        };
        self.cut_if_due(since, key);
        let is_h264 = matches!(self.video, Some(Video::H264(_)));
        if let Some(segment) = self.segment.as_mut() {
            if is_h264 {
                segment.mux.push_annex_b(track, since * 90, key, data);
            } else {
                segment.mux.push(track, since * 90, key, data);
            }
        }
    }

    fn audio_packet(&mut self, packet: &RtpPacket, arrival_ms: u64) {
        if self.opus.is_none() || self.stopped {
            return;
        }
        let seq = packet.header.sequence_number;
        if self
            .last_audio_seq
            .is_some_and(|last| (seq.wrapping_sub(last) as i16) <= 0)
        {
            return; // late or duplicated
        }
        self.last_audio_seq = Some(seq);
        let ms = self.audio_clock.map(packet.header.timestamp, arrival_ms);
        if packet.payload.is_empty() {
            return;
        }
        if self.segment.is_none() {
            let first = *self.first_audio_ms.get_or_insert(ms);
            if self.has_video && ms.saturating_sub(first) < VIDEO_WAIT_MS {
                return; // audio starts with the first picture
            }
            self.open(ms, None);
        }
        let Some(segment) = self.segment.as_ref() else {
            return;
        };
        let Some(track) = segment.audio else { return };
        let Some(since) = ms.checked_sub(segment.base_ms) else {
            return;
        };
        let gap = segment
            .mux
            .end_time(track)
            .is_some_and(|end| since * 48 > end + AUDIO_GAP_MS * 48);
        if gap {
            self.flush();
        }
        self.cut_if_due(since, false);
        if let Some(segment) = self.segment.as_mut() {
            segment.mux.push(track, since * 48, true, &packet.payload);
        }
    }

    /// Writes the pending fragment before a sample at `since` (file ms) when due.
    fn cut_if_due(&mut self, since: u64, key: bool) {
        let Some(segment) = self.segment.as_ref() else {
            return;
        };
        let Some(first) = segment.mux.pending_since_ms() else {
            return;
        };
        let elapsed = since.saturating_sub(first);
        if elapsed >= self.fragment_ms
            || (key && elapsed >= self.fragment_ms / 2)
            || segment.mux.pending_bytes() >= MAX_FRAGMENT_BYTES
        {
            self.flush();
        }
    }

    /// Starts a file at recording time `base_ms`.
    fn open(&mut self, base_ms: u64, video: Option<TrackConfig>) {
        let when = self.started_wall + Duration::from_millis(base_ms);
        let (meta, file) = match self.first_file.take() {
            Some(file) => (self.first.clone(), file),
            None => {
                let n = self.files.len() as u32 + 1;
                let name = catalog::segment_name(&self.dir, &self.first.name, n);
                let meta = RecordMeta {
                    name,
                    started: catalog::rfc3339(when),
                    ended: None,
                    duration_ms: None,
                    error: None,
                    ..self.first.clone()
                };
                let path = self.dir.join(&meta.name);
                if let Err(e) = catalog::store(&catalog::sidecar(&path), &meta) {
                    self.fail_before(&meta.name, &e);
                    return;
                }
                match self.storage.create(&path) {
                    Ok(file) => (meta, file),
                    Err(e) => {
                        self.fail_before(&meta.name, &e);
                        return;
                    }
                }
            }
        };
        self.first_media
            .get_or_insert(self.started_at + Duration::from_millis(base_ms));
        let mut tracks = Vec::new();
        let video_track = video.map(|config| {
            tracks.push(config);
            tracks.len() - 1
        });
        let audio_track = self.opus.map(|channels| {
            tracks.push(TrackConfig::Opus { channels });
            tracks.len() - 1
        });
        let mux = Fmp4Writer::new(tracks);
        self.files.push(meta.name.clone());
        self.segment = Some(Segment {
            path: self.dir.join(&meta.name),
            meta,
            file,
            mux,
            written: 0,
            written_ms: 0,
            base_ms,
            video: video_track,
            audio: audio_track,
        });
        self.buf.clear();
        if let Some(segment) = self.segment.as_ref() {
            segment.mux.init_segment(&mut self.buf);
        }
        self.write_buf();
    }

    /// A segment could not even be created.
    fn fail_before(&mut self, name: &str, e: &io::Error) {
        warn!("recording {name}: {e}; the recording stopped");
        self.error = Some(e.to_string());
        self.stopped = true;
        self.publish();
    }

    /// Writes the pending samples as one fragment.
    fn flush(&mut self) {
        self.last_write = Instant::now();
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        self.buf.clear();
        if segment.mux.fragment(&mut self.buf) {
            self.write_buf();
        }
    }

    /// Writes `buf` (an init segment or a fragment) and syncs it, or stops.
    fn write_buf(&mut self) {
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        let result = segment
            .file
            .write_all(&self.buf)
            .and_then(|()| segment.file.sync_data());
        match result {
            Ok(()) => {
                segment.written += self.buf.len() as u64;
                segment.written_ms = segment.duration_ms();
                self.publish();
            }
            Err(e) => self.fail(e),
        }
    }

    /// A write failed: cut the file back to its last fragment, note the error, stop.
    fn fail(&mut self, e: io::Error) {
        self.stopped = true;
        let reason = e.to_string();
        self.error = Some(reason.clone());
        let Some(mut segment) = self.segment.take() else {
            return;
        };
        let cut = segment
            .file
            .set_len(segment.written)
            .and_then(|()| segment.file.sync_data());
        let cut = match cut {
            Ok(()) => String::new(),
            Err(e) => format!(" (cutting it back failed: {e})"),
        };
        warn!(
            "recording {}: writing failed: {reason}; the recording stopped, the file is \
             kept up to its last complete fragment ({} bytes){cut}",
            segment.path.display(),
            segment.written
        );
        let duration_ms = segment.written_ms;
        self.end_segment(segment, duration_ms, Some(reason));
    }

    /// Closes the file being written (its last fragment flushed).
    fn close(&mut self) {
        self.flush();
        if let Some(segment) = self.segment.take() {
            let duration_ms = segment.duration_ms();
            self.end_segment(segment, duration_ms, None);
        }
    }

    fn end_segment(
        &mut self,
        mut segment: Segment<S::File>,
        duration_ms: u64,
        error: Option<String>,
    ) {
        segment.meta.ended = Some(catalog::rfc3339(SystemTime::now()));
        segment.meta.duration_ms = Some(duration_ms);
        segment.meta.error = error;
        self.closed_bytes += segment.written;
        self.closed_ms += duration_ms;
        let sidecar = catalog::sidecar(&segment.path);
        if let Err(e) = catalog::store(&sidecar, &segment.meta) {
            warn!("recording {}: {e}", sidecar.display());
        }
        self.publish();
    }

    fn publish(&self) {
        let (file, bytes, ms) = match &self.segment {
            Some(s) => (s.meta.name.clone(), s.written, s.written_ms),
            None => (
                self.files
                    .last()
                    .cloned()
                    .unwrap_or_else(|| self.first.name.clone()),
                0,
                0,
            ),
        };
        self.status.send_replace(RecordStatus {
            file,
            bytes: self.closed_bytes + bytes,
            duration_ms: self.closed_ms + ms,
            first_media: self.first_media,
            error: self.error.clone(),
            dropped: self.dropped.load(Ordering::Relaxed),
        });
    }

    fn finish(mut self) -> RecordSummary {
        if !self.stopped {
            self.close();
        }
        if self.files.is_empty() {
            // No media came: the empty first file keeps a finished sidecar.
            let mut meta = self.first.clone();
            meta.ended = Some(catalog::rfc3339(SystemTime::now()));
            meta.duration_ms = Some(0);
            meta.error = self.error.clone();
            let sidecar = catalog::sidecar(&self.dir.join(&meta.name));
            if let Err(e) = catalog::store(&sidecar, &meta) {
                warn!("recording {}: {e}", sidecar.display());
            }
            self.files.push(meta.name);
        }
        self.publish();
        RecordSummary {
            files: self.files,
            bytes: self.closed_bytes,
            duration_ms: self.closed_ms,
            first_media: self.first_media,
            error: self.error,
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Whether a key frame's config fits the file being written: the same picture size
/// (and for H.264 the same profile, which the `avcC` announces).
fn same_picture(new: &TrackConfig, old: &TrackConfig) -> bool {
    let profile = |c: &TrackConfig| match c {
        TrackConfig::H264 { sps, .. } => sps.get(1).copied(),
        _ => None,
    };
    new.dimensions() == old.dimensions() && profile(new) == profile(old)
}

/// RTP VP8 (RFC 7741) into frames: a frame ends with the marker bit or a timestamp
/// change; a sequence gap drops the frame and everything up to the next key frame.
#[derive(Debug)]
pub(crate) struct Vp8Depacketizer {
    buf: Vec<u8>,
    timestamp: Option<u32>,
    next_seq: Option<u16>,
    broken: bool,
    gap: bool,
    pub(crate) waiting: bool,
}

impl Vp8Depacketizer {
    pub(crate) fn new() -> Vp8Depacketizer {
        Vp8Depacketizer {
            buf: Vec::new(),
            timestamp: None,
            next_seq: None,
            broken: false,
            gap: true,
            waiting: true,
        }
    }

    /// Takes one packet; a completed frame goes to `emit(data, timestamp, key)`.
    pub(crate) fn push(
        &mut self,
        packet: &RtpPacket,
        mut emit: impl FnMut(&[u8], u32, bool),
    ) -> Pushed {
        let h = &packet.header;
        let mut lost = false;
        if let Some(next) = self.next_seq {
            let ahead = h.sequence_number.wrapping_sub(next) as i16;
            if ahead < 0 {
                return self.state(false); // late or duplicated
            }
            lost = ahead > 0;
        }
        self.next_seq = Some(h.sequence_number.wrapping_add(1));
        let was_waiting = self.waiting;
        if lost {
            self.broken = true;
            self.gap = true;
            self.waiting = true;
        }
        if self.timestamp.is_some_and(|t| t != h.timestamp) {
            self.finish(&mut emit);
        }
        let (start, data) = descriptor(&packet.payload);
        if self.timestamp.is_none() {
            self.timestamp = Some(h.timestamp);
            self.broken = self.gap && !start;
            self.buf.clear();
        }
        self.gap = false;
        match data {
            Some(data) if !self.broken => {
                self.buf.extend_from_slice(data);
                if self.buf.len() > MAX_FRAME {
                    self.broken = true;
                    self.waiting = true;
                    lost = true;
                }
            }
            None => {
                self.broken = true;
                self.waiting = true;
                lost = true;
            }
            _ => {}
        }
        if h.marker {
            self.finish(&mut emit);
        }
        self.state(lost && !was_waiting)
    }

    fn state(&self, lost_now: bool) -> Pushed {
        if lost_now {
            Pushed::Lost
        } else if self.waiting {
            Pushed::Waiting
        } else {
            Pushed::Ok
        }
    }

    fn finish(&mut self, emit: &mut impl FnMut(&[u8], u32, bool)) {
        let Some(timestamp) = self.timestamp.take() else {
            return;
        };
        if !self.broken && !self.buf.is_empty() {
            let key = self.buf[0] & 1 == 0;
            if key || !self.waiting {
                self.waiting = false;
                emit(&self.buf, timestamp, key);
            }
        }
        self.buf.clear();
        self.broken = false;
    }
}

/// The VP8 payload descriptor: whether the packet starts a frame (S=1, PID 0) and the
/// VP8 data after it; `None` data for a broken descriptor.
fn descriptor(payload: &[u8]) -> (bool, Option<&[u8]>) {
    let Some(&b0) = payload.first() else {
        return (false, None);
    };
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return (start, None);
        };
        at = 2;
        if x & 0x80 != 0 {
            let Some(&id) = payload.get(at) else {
                return (start, None);
            };
            at += if id & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    (start, payload.get(at..).filter(|d| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::h264::Packetizer;
    use crate::media::codec::Codec;
    use crate::record::catalog::RecordKind;
    use crate::record::fmp4::tests::{boxes, PPS, SPS_360};
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Files in memory; writes past `limit` bytes fail like a full disk (after writing
    /// what fits, as a real short write does).
    type Shared = Arc<Mutex<Vec<u8>>>;

    #[derive(Clone)]
    struct Memory {
        files: Arc<Mutex<Vec<(PathBuf, Shared)>>>,
        limit: usize,
        syncs: Arc<AtomicUsize>,
    }

    struct MemFile {
        data: Arc<Mutex<Vec<u8>>>,
        limit: usize,
        syncs: Arc<AtomicUsize>,
    }

    impl Storage for Memory {
        type File = MemFile;
        fn create(&mut self, path: &Path) -> io::Result<MemFile> {
            let data = Arc::new(Mutex::new(Vec::new()));
            self.files
                .lock()
                .unwrap()
                .push((path.to_owned(), data.clone()));
            Ok(MemFile {
                data,
                limit: self.limit,
                syncs: self.syncs.clone(),
            })
        }
    }

    impl SegmentFile for MemFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let mut data = self.data.lock().unwrap();
            let room = self.limit.saturating_sub(data.len());
            data.extend_from_slice(&buf[..buf.len().min(room)]);
            if buf.len() > room {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.data.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
    }

    static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if record.level() <= log::Level::Warn {
                LOGGED.lock().unwrap().push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("huddle-recorder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn meta(name: &str) -> RecordMeta {
        RecordMeta {
            name: format!("{name}.mp4"),
            kind: RecordKind::Stream,
            room: "room".into(),
            stream: Some(name.into()),
            login: None,
            started: catalog::rfc3339(SystemTime::now()),
            ended: None,
            duration_ms: None,
            error: None,
        }
    }

    fn codec(family: Family, clock_rate: u32) -> Codec {
        Codec {
            family,
            payload_type: 100,
            clock_rate,
            channels: 2,
            fmtp: String::new(),
        }
    }

    fn h264() -> Codec {
        codec(
            Family::H264 {
                profile: 0x42,
                constraints: 0xc0,
            },
            90_000,
        )
    }

    /// A picture of `len` bytes: an IDR with parameter sets, or a P slice.
    fn picture(key: bool, len: usize, n: usize) -> Bytes {
        let mut au = Vec::new();
        if key {
            for unit in [SPS_360, PPS] {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(unit);
            }
        }
        au.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }, 0x88]);
        au.extend((0..len).map(|k| ((k + n) % 250) as u8 + 1));
        Bytes::from(au)
    }

    fn audio_packet(seq: u16, timestamp: u32) -> RtpPacket {
        let mut p = RtpPacket::default();
        p.header.sequence_number = seq;
        p.header.timestamp = timestamp;
        p.payload = Bytes::from_static(&[0xfc, 1, 2, 3, 4, 5, 6, 7]);
        p
    }

    /// `seconds` of 30 fps video (a key frame a second) and 20 ms audio, sent as fast
    /// as the recorder takes them (times come from RTP after the arrival anchor).
    async fn feed(tx: &mpsc::Sender<(Kind, RtpPacket)>, seconds: usize, video: bool) {
        let mut p = Packetizer::new(100, 7, 1200);
        let mut out = Vec::new();
        for slot in 0..seconds * 50 {
            let t_ms = slot * 20;
            let frame = t_ms * 30 / 1000;
            if video && (t_ms * 30) % 1000 < 600 && (slot == 0 || (t_ms - 20) * 30 / 1000 != frame)
            {
                out.clear();
                p.packetize(
                    &picture(frame % 30 == 0, 600, frame),
                    frame as u32 * 3000,
                    &mut out,
                );
                for packet in out.drain(..) {
                    if tx.send((Kind::Video, packet)).await.is_err() {
                        return;
                    }
                }
            }
            if tx
                .send((
                    Kind::Audio,
                    audio_packet(slot as u16, 1000 + slot as u32 * 960),
                ))
                .await
                .is_err()
            {
                return;
            }
            if slot % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_stops_at_the_last_complete_fragment() {
        let _ = log::set_logger(&Capture).map(|()| log::set_max_level(log::LevelFilter::Info));
        let dir = dir("enospc");
        let storage = Memory {
            files: Arc::default(),
            limit: 40_000,
            syncs: Arc::default(),
        };
        let (tx, rx) = mpsc::channel(64);
        let codecs = Chosen {
            audio: Some(codec(Family::Opus, 48_000)),
            video: Some(h264()),
        };
        let handle = start_with(
            storage.clone(),
            &dir,
            meta("full"),
            codecs,
            rx,
            || {},
            Duration::from_millis(500),
        )
        .unwrap();
        let status = handle.status();
        feed(&tx, 10, true).await;
        let summary = handle.finished().await;
        assert!(
            tx.is_closed(),
            "the packet channel is closed after the failure"
        );
        let error = summary.error.clone().expect("an error");
        assert!(error.contains("No space left"), "{error}");
        assert_eq!(status.borrow().error.as_deref(), Some(error.as_str()));
        let files = storage.files.lock().unwrap();
        assert_eq!(files.len(), 1);
        let data = files[0].1.lock().unwrap().clone();
        assert_eq!(data.len() as u64, summary.bytes);
        assert!(
            data.len() > 10_000 && data.len() <= 40_000,
            "{}",
            data.len()
        );
        // Whole boxes only: ftyp, moov, then complete moof + mdat pairs.
        let kinds: Vec<[u8; 4]> = boxes(&data).into_iter().map(|(k, _)| k).collect();
        assert_eq!(&kinds[..2], &[*b"ftyp", *b"moov"]);
        assert!(
            kinds.len() >= 4 && kinds.len().is_multiple_of(2),
            "{}",
            kinds.len()
        );
        assert_eq!(kinds.last(), Some(b"mdat"));
        assert!(storage.syncs.load(Ordering::Relaxed) >= kinds.len() / 2);
        let side: RecordMeta = catalog::load(&catalog::sidecar(&dir.join("full.mp4"))).unwrap();
        assert_eq!(side.error.as_deref(), Some(error.as_str()));
        assert!(side.ended.is_some());
        assert_eq!(side.duration_ms, Some(summary.duration_ms));
        assert!(summary.duration_ms >= 1000, "{}", summary.duration_ms);
        let logged = LOGGED.lock().unwrap();
        assert!(
            logged
                .iter()
                .any(|l| l.contains("full.mp4") && l.contains("No space left")),
            "{logged:?}"
        );
        drop(logged);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audio_only_starts_at_once_and_stop_finalizes() {
        let dir = dir("audio");
        let storage = Memory {
            files: Arc::default(),
            limit: usize::MAX,
            syncs: Arc::default(),
        };
        let (tx, rx) = mpsc::channel(64);
        let codecs = Chosen {
            audio: Some(codec(Family::Opus, 48_000)),
            video: None,
        };
        let key_frames = Arc::new(AtomicUsize::new(0));
        let counter = key_frames.clone();
        let handle = start_with(
            storage.clone(),
            &dir,
            meta("voice"),
            codecs,
            rx,
            move || {
                counter.fetch_add(1, Ordering::Relaxed);
            },
            Duration::from_millis(500),
        )
        .unwrap();
        feed(&tx, 3, false).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.stop();
        let summary = handle.finished().await;
        assert_eq!(summary.error, None);
        assert_eq!(summary.files, vec!["voice.mp4".to_string()]);
        assert!(
            (2900..=3100).contains(&summary.duration_ms),
            "{}",
            summary.duration_ms
        );
        assert_eq!(
            key_frames.load(Ordering::Relaxed),
            0,
            "no video, no requests"
        );
        let data = storage.files.lock().unwrap()[0].1.lock().unwrap().clone();
        let kinds: Vec<[u8; 4]> = boxes(&data).into_iter().map(|(k, _)| k).collect();
        assert!(
            kinds.len() >= 2 + 2 * 6,
            "fragments of 500 ms: {}",
            kinds.len()
        );
        let side: RecordMeta = catalog::load(&catalog::sidecar(&dir.join("voice.mp4"))).unwrap();
        assert!(side.ended.is_some() && side.error.is_none());
        assert_eq!(side.duration_ms, Some(summary.duration_ms));
        drop(tx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn g711_alone_is_refused_and_the_sidecar_is_written_at_start() {
        let dir = dir("refuse");
        let (_tx, rx) = mpsc::channel(4);
        let codecs = Chosen {
            audio: Some(codec(Family::Pcmu, 8000)),
            video: None,
        };
        let refused = start(
            &dir,
            meta("pcmu"),
            codecs,
            rx,
            || {},
            Duration::from_millis(500),
        );
        assert!(matches!(refused, Err(RecordError::Unsupported(_))));
        assert!(!dir.join("pcmu.mp4.json").exists());
        let (tx, rx) = mpsc::channel(4);
        let codecs = Chosen {
            audio: None,
            video: Some(h264()),
        };
        let handle = start(
            &dir,
            meta("v"),
            codecs,
            rx,
            || {},
            Duration::from_millis(500),
        )
        .unwrap();
        let side: RecordMeta = catalog::load(&dir.join("v.mp4.json")).unwrap();
        assert!(side.ended.is_none());
        assert!(dir.join("v.mp4").exists());
        drop(tx);
        let summary = handle.finished().await;
        assert_eq!(summary.duration_ms, 0);
        let side: RecordMeta = catalog::load(&dir.join("v.mp4.json")).unwrap();
        assert_eq!(side.duration_ms, Some(0));
        // The same name again is never overwritten.
        let (_tx, rx) = mpsc::channel(4);
        let codecs = Chosen {
            audio: None,
            video: Some(h264()),
        };
        let again = start(
            &dir,
            meta("v"),
            codecs,
            rx,
            || {},
            Duration::from_millis(500),
        );
        assert!(matches!(again, Err(RecordError::Io { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_codec_change_goes_on_in_the_next_segment() {
        let dir = dir("codec");
        let storage = Memory {
            files: Arc::default(),
            limit: usize::MAX,
            syncs: Arc::default(),
        };
        let (tx, rx) = mpsc::channel(64);
        let opus = codec(Family::Opus, 48_000);
        let codecs = Chosen {
            audio: Some(opus.clone()),
            video: Some(h264()),
        };
        let handle = start_with(
            storage.clone(),
            &dir,
            meta("switch"),
            codecs.clone(),
            rx,
            || {},
            Duration::from_millis(500),
        )
        .unwrap();
        feed(&tx, 2, true).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.change_codecs(codecs.clone()); // the same codecs: nothing happens
        handle.change_codecs(Chosen {
            audio: Some(opus),
            video: Some(codec(Family::Vp8, 90_000)),
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let key: Vec<u8> = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
            .into_iter()
            .chain((0..250).map(|k| k as u8))
            .collect();
        let inter: Vec<u8> = [0x31]
            .into_iter()
            .chain((0..150).map(|k| k as u8))
            .collect();
        let mut seq = 500u16;
        for i in 0..30u32 {
            let frame = if i % 10 == 0 { &key } else { &inter };
            for p in vp8_packets(frame, seq, i * 3000) {
                seq = seq.wrapping_add(1);
                tx.send((Kind::Video, p)).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.stop();
        let summary = handle.finished().await;
        assert_eq!(summary.error, None);
        assert_eq!(
            summary.files,
            vec!["switch.mp4".to_string(), "switch-part2.mp4".to_string()]
        );
        let files = storage.files.lock().unwrap();
        let second = files[1].1.lock().unwrap().clone();
        let has = |data: &[u8], kind: &[u8]| data.windows(4).any(|w| w == kind);
        assert!(has(&files[0].1.lock().unwrap(), b"avc1"));
        assert!(has(&second, b"vp08") && !has(&second, b"avc1"));
        assert!(boxes(&second).len() >= 4);
        for name in &summary.files {
            let side: RecordMeta = catalog::load(&catalog::sidecar(&dir.join(name))).unwrap();
            assert!(side.ended.is_some(), "{name}");
        }
        drop(files);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn outside_a_runtime_start_fails_without_a_panic() {
        let dir = dir("no-runtime");
        let (_tx, rx) = mpsc::channel(4);
        let codecs = Chosen {
            audio: None,
            video: Some(h264()),
        };
        let result = start(
            &dir,
            meta("x"),
            codecs,
            rx,
            || {},
            Duration::from_millis(500),
        );
        assert!(matches!(result, Err(RecordError::Thread(_))));
        assert!(!dir.join("x.mp4").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn vp8_packets(frame: &[u8], seq: u16, timestamp: u32) -> Vec<RtpPacket> {
        frame
            .chunks(100)
            .enumerate()
            .map(|(i, chunk)| {
                let mut p = RtpPacket::default();
                p.header.sequence_number = seq.wrapping_add(i as u16);
                p.header.timestamp = timestamp;
                p.header.marker = (i + 1) * 100 >= frame.len();
                // X with a 15-bit picture ID, S on the first packet.
                let mut payload = vec![0x80 | if i == 0 { 0x10 } else { 0 }, 0x80, 0x81, 0x23];
                payload.extend_from_slice(chunk);
                p.payload = payload.into();
                p
            })
            .collect()
    }

    #[test]
    fn vp8_frames_are_rebuilt_and_a_loss_waits_for_a_key_frame() {
        let key: Vec<u8> = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
            .into_iter()
            .chain((0..250).map(|k| k as u8))
            .collect();
        let inter: Vec<u8> = [0x31]
            .into_iter()
            .chain((0..150).map(|k| k as u8))
            .collect();
        let mut d = Vp8Depacketizer::new();
        let mut frames = Vec::new();
        let mut pushed = Vec::new();
        let mut seq = 10u16;
        let mut packets = Vec::new();
        for (i, frame) in [&inter, &key, &inter, &inter, &key, &inter]
            .iter()
            .enumerate()
        {
            let p = vp8_packets(frame, seq, i as u32 * 3000);
            seq = seq.wrapping_add(p.len() as u16);
            packets.push(p);
        }
        packets[3].remove(1); // a loss inside the third inter frame
        for p in packets.concat() {
            pushed.push(d.push(&p, |data, ts, key| frames.push((data.to_vec(), ts, key))));
        }
        let times: Vec<(u32, bool)> = frames.iter().map(|(_, t, k)| (*t, *k)).collect();
        assert_eq!(
            times,
            vec![(3000, true), (6000, false), (12000, true), (15000, false)],
            "the first inter frame waits, the broken one and nothing else is dropped"
        );
        assert_eq!(frames[0].0, key);
        assert_eq!(frames[1].0, inter);
        assert_eq!(pushed.iter().filter(|p| **p == Pushed::Lost).count(), 1);
        assert_eq!(vp8_key_frame_size(&frames[0].0), Some((640, 360)));
        // Garbage never panics.
        let mut d = Vp8Depacketizer::new();
        for len in 0..8 {
            let mut p = RtpPacket::default();
            p.header.sequence_number = len as u16;
            p.header.marker = true;
            p.payload = vec![0xff; len].into();
            d.push(&p, |_, _, _| {});
        }
    }
}
