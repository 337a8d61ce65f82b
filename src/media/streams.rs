//! The stream core: sources, the publications they feed, the sinks attached to each
//! publication, forwarding with per-sink numbering, and key-frame requests from sinks
//! back to the source (at most one per source per interval, never lost).
//!
//! `Streams<E>` is generic over the edge `E` that hosts the sources and sinks (the
//! WebRTC peers for the SFU): forwarding lends it to each source and sink it calls,
//! so a sink that writes into a peer connection needs no shared ownership. Sources
//! and sinks are trait objects registered at run time; nothing here knows a protocol.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp::header::Header;
use rtc::rtp::Packet;

use super::codec::{Chosen, Codec, Kind};
use super::layers::{Preference, SinkLayer, LAYER_IDLE_MS};
use super::numbering::Renumber;
use super::picture;

pub type SourceId = u64;
pub type SinkId = u64;

/// Anything that produces a stream: a WebRTC publisher peer, the device camera and
/// microphone, an RTMP publisher. Its packets come in through `Streams::packet`.
pub trait Source<E: ?Sized>: Send {
    /// Asks for a key frame. `false`: it cannot be asked yet (a WebRTC publisher
    /// whose video SSRC is not known); the core asks again after the interval or when
    /// the edge calls `Streams::source_ready`.
    fn key_frame(&mut self, edge: &mut E, now: Instant) -> bool;

    /// Asks for a key frame of one simulcast layer (`Streams::set_layers`); a source
    /// without layers is asked for its one video.
    fn layer_key_frame(&mut self, edge: &mut E, now: Instant, layer: usize) -> bool {
        let _ = layer;
        self.key_frame(edge, now)
    }
}

/// What became of a packet given to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Taken,
    /// Lost on the way (a full queue): the sink needs a key frame.
    Dropped,
    /// The sink is done or broken: it is removed.
    Done,
}

/// Anything that consumes a stream: a WebRTC player peer, an RTMP player or push, a
/// recorder.
pub trait Sink<E: ?Sized>: Send {
    /// One packet, numbered as the sink asked (`Numbering`); `codec` is the source's.
    /// Header extensions belong to the source's leg and are not passed on.
    fn packet(
        &mut self,
        edge: &mut E,
        now: Instant,
        kind: Kind,
        codec: &Codec,
        packet: Packet,
    ) -> Delivery;
}

/// How a sink wants its packets numbered.
#[derive(Debug, Clone)]
pub enum Numbering {
    /// With the source's payload type, SSRC, sequence numbers and timestamps.
    AsSent,
    /// Its own, per track; a kind without one is not given to the sink.
    Own {
        audio: Option<Renumber>,
        video: Option<Renumber>,
    },
}

/// A source that wants key frames through a shared flag (a capture thread, an edge
/// task polling it): `take` reads and clears it.
#[derive(Debug, Clone, Default)]
pub struct KeyFrameFlag(Arc<AtomicBool>);

impl KeyFrameFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl<E: ?Sized> Source<E> for KeyFrameFlag {
    fn key_frame(&mut self, _edge: &mut E, _now: Instant) -> bool {
        self.set();
        true
    }
}

/// What the stream core counts, for the edge's metrics (relaxed atomics behind it):
/// called on the hot path, once per packet and call, never per byte.
pub trait Tally: Send + Sync {
    /// A source's packet came in (`bytes`: its payload).
    fn received(&self, _kind: Kind, _bytes: usize) {}
    /// Packets handed to sinks that took them, and their payload bytes.
    fn forwarded(&self, _kind: Kind, _packets: u64, _bytes: u64) {}
    /// A packet withheld from a publication because its kind is muted (or video
    /// waits for a key frame after an unmute).
    fn muted(&self) {}
    /// A sink could not take a packet (its queue is full).
    fn sink_dropped(&self) {}
    /// A key-frame request went to a source.
    fn key_frame_requested(&self) {}
}

/// Counts nothing.
struct NoTally;

impl Tally for NoTally {}

/// One publication as the stream core sees it (`Streams::stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub stream: String,
    /// The source's codecs.
    pub codecs: Chosen,
    /// The picture size of the source's last video key frame, when known.
    pub size: Option<(u32, u32)>,
    /// Received bits per second over the last few seconds.
    pub audio_bps: u64,
    pub video_bps: u64,
    pub sinks: usize,
}

/// Seconds of the received-bitrate window (the current one counts in part).
const RATE_SECONDS: u64 = 5;

/// Bytes received per second over the last `RATE_SECONDS`: a ring of one-second
/// buckets, the rate computed when asked.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    buckets: [u64; RATE_SECONDS as usize],
    /// The second (since the core's epoch) of the newest bucket.
    second: u64,
    /// The first packet, in milliseconds since the epoch.
    started: Option<u64>,
}

impl Rate {
    fn add(&mut self, ms: u64, bytes: usize) {
        let second = ms / 1000;
        if second > self.second {
            let from = (self.second + 1).max(second.saturating_sub(RATE_SECONDS - 1));
            for s in from..=second {
                self.buckets[(s % RATE_SECONDS) as usize] = 0;
            }
            self.second = second;
        }
        if self.started.is_none() {
            self.started = Some(ms);
            self.buckets[(second % RATE_SECONDS) as usize] = 0;
        }
        // A late packet of an older second counts into the newest.
        self.buckets[(self.second % RATE_SECONDS) as usize] += bytes as u64;
    }

    fn bps(&self, ms: u64) -> u64 {
        let Some(started) = self.started else {
            return 0;
        };
        let second = ms / 1000;
        let first = second.saturating_sub(RATE_SECONDS - 1);
        let bytes: u64 = (first..=second)
            .filter(|s| *s <= self.second && self.second - s < RATE_SECONDS)
            .map(|s| self.buckets[(s % RATE_SECONDS) as usize])
            .sum();
        let window = (RATE_SECONDS - 1) * 1000 + ms % 1000;
        // At least a second: a key frame in the first milliseconds is not a rate.
        let covered = window.min(ms.saturating_sub(started)).max(1000);
        bytes * 8 * 1000 / covered
    }
}

/// What the stream core reports on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A publication ended because its source lost a kind it carried.
    Closed { stream: String, info: String },
    /// What a named source delivers now.
    SourceChanged {
        source: String,
        audio: bool,
        video: bool,
    },
}

/// Why a publication was not opened or a sink not attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("Stream name is already in use")]
    InUse,
    #[error("Stream not found")]
    NotFound,
    #[error("{0}")]
    Unavailable(String),
}

struct SourceEntry<E: ?Sized> {
    source: Box<dyn Source<E>>,
    /// Named sources live on beyond their publications (the device).
    name: Option<String>,
    /// Said when a publication is asked of it while it delivers nothing.
    unavailable: String,
    codecs: Chosen,
    /// The publications it feeds.
    streams: Vec<String>,
    last_key_frame_request: Option<Instant>,
    /// A key frame is wanted but could not be asked yet (rate limit, or the source
    /// could not take the request): it is asked when the interval is over.
    key_frame_pending: bool,
    /// Received bytes by kind (`Kind::index`).
    rate: [Rate; 2],
    /// The picture size of the last video key frame that said it.
    size: Option<(u32, u32)>,
    /// Simulcast video layers, low → high (empty: one video, no layers).
    layers: Vec<LayerIn>,
}

/// One simulcast layer of a source.
#[derive(Default)]
struct LayerIn {
    rate: Rate,
    /// Its last packet, in milliseconds since the core's epoch.
    last_ms: Option<u64>,
    active: bool,
    size: Option<(u32, u32)>,
    last_key_frame_request: Option<Instant>,
    key_frame_pending: bool,
}

struct SinkEntry<E: ?Sized> {
    id: SinkId,
    sink: Box<dyn Sink<E>>,
    numbering: Numbering,
    /// Packets flow only to active sinks (a WebRTC player is active once up).
    active: bool,
    /// Which simulcast layer it gets (unused without layers).
    layer: SinkLayer,
}

struct Publication<E: ?Sized> {
    source: SourceId,
    sinks: Vec<SinkEntry<E>>,
    /// Kinds withheld from every sink (`Kind::index`), by a moderator.
    muted: [bool; 2],
    /// Video was unmuted: withheld until a packet starts a key frame, so players
    /// resume with a picture.
    await_key_frame: bool,
}

pub struct Streams<E: ?Sized> {
    key_frame_interval: Duration,
    next_id: u64,
    sources: HashMap<SourceId, SourceEntry<E>>,
    named: HashMap<String, SourceId>,
    publications: HashMap<String, Publication<E>>,
    events: VecDeque<Event>,
    tally: Arc<dyn Tally>,
    /// Where the received-bitrate clock starts.
    epoch: Instant,
}

/// The source's packet with the sink's numbering, without the source leg's header
/// extensions (which also keeps the copy free of allocation).
fn copy(packet: &Packet, numbering: &mut Numbering, kind: Kind) -> Option<Packet> {
    let h = &packet.header;
    let (payload_type, ssrc, sequence_number, timestamp) = match numbering {
        Numbering::AsSent => (h.payload_type, h.ssrc, h.sequence_number, h.timestamp),
        Numbering::Own { audio, video } => {
            let track = match kind {
                Kind::Audio => audio.as_mut(),
                Kind::Video => video.as_mut(),
            }?;
            let (seq, ts) = track.rewrite(h.ssrc, h.sequence_number, h.timestamp);
            (track.payload_type, track.ssrc, seq, ts)
        }
    };
    Some(Packet {
        header: Header {
            version: h.version,
            padding: h.padding,
            extension: false,
            marker: h.marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            csrc: h.csrc.clone(),
            extension_profile: 0,
            extensions: Vec::new(),
            extensions_padding: 0,
        },
        payload: packet.payload.clone(),
    })
}

impl<E: ?Sized> Streams<E> {
    /// At most one key-frame request per source this often.
    pub fn new(key_frame_interval: Duration) -> Self {
        Streams {
            key_frame_interval,
            next_id: 1,
            sources: HashMap::new(),
            named: HashMap::new(),
            publications: HashMap::new(),
            events: VecDeque::new(),
            tally: Arc::new(NoTally),
            epoch: Instant::now(),
        }
    }

    /// Where the core counts (the edge's metrics).
    pub fn set_tally(&mut self, tally: Arc<dyn Tally>) {
        self.tally = tally;
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ----- sources ---------------------------------------------------------------

    /// A source that feeds one publication and ends with it (a WebRTC publisher).
    pub fn add_source(
        &mut self,
        stream: &str,
        codecs: Chosen,
        source: Box<dyn Source<E>>,
    ) -> Result<SourceId, StreamError> {
        if self.publications.contains_key(stream) {
            return Err(StreamError::InUse);
        }
        let id = self.id();
        self.sources.insert(
            id,
            SourceEntry {
                source,
                name: None,
                unavailable: String::new(),
                codecs,
                streams: Vec::new(),
                last_key_frame_request: None,
                key_frame_pending: false,
                rate: Default::default(),
                size: None,
                layers: Vec::new(),
            },
        );
        self.open(stream, id);
        Ok(id)
    }

    /// A named source that outlives its publications and may feed several (the
    /// device camera and microphone; an RTMP publisher). It delivers nothing until
    /// `set_codecs`; `unavailable` is the reason given to a publication asked of it
    /// meanwhile. A name already registered is replaced.
    pub fn add_named_source(
        &mut self,
        name: &str,
        unavailable: &str,
        source: Box<dyn Source<E>>,
    ) -> SourceId {
        if let Some(old) = self.named.get(name).copied() {
            let streams = self
                .sources
                .get(&old)
                .map(|s| s.streams.clone())
                .unwrap_or_default();
            self.events
                .extend(streams.into_iter().map(|stream| Event::Closed {
                    stream,
                    info: "The source was replaced".into(),
                }));
            self.remove_source(old);
        }
        let id = self.id();
        self.sources.insert(
            id,
            SourceEntry {
                source,
                name: Some(name.to_owned()),
                unavailable: unavailable.to_owned(),
                codecs: Chosen::default(),
                streams: Vec::new(),
                last_key_frame_request: None,
                key_frame_pending: false,
                rate: Default::default(),
                size: None,
                layers: Vec::new(),
            },
        );
        self.named.insert(name.to_owned(), id);
        id
    }

    pub fn has_source(&self, source: SourceId) -> bool {
        self.sources.contains_key(&source)
    }

    pub fn named_source(&self, name: &str) -> Option<SourceId> {
        self.named.get(name).copied()
    }

    /// What a named source delivers now (`None`: that kind is down, `info` says why).
    /// Its publications that lose a kind close (`Event::Closed` with `info`); then
    /// `Event::SourceChanged` tells its owner, who may publish again with what is left.
    pub fn set_codecs(&mut self, source: SourceId, codecs: Chosen, info: &str) {
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        if s.codecs == codecs {
            return;
        }
        let old = std::mem::replace(&mut s.codecs, codecs);
        let lost = (old.audio.is_some() && s.codecs.audio.is_none())
            || (old.video.is_some() && s.codecs.video.is_none());
        let changed = s.name.clone().map(|name| Event::SourceChanged {
            source: name,
            audio: s.codecs.audio.is_some(),
            video: s.codecs.video.is_some(),
        });
        if lost {
            for stream in std::mem::take(&mut s.streams) {
                self.publications.remove(&stream);
                self.events.push_back(Event::Closed {
                    stream,
                    info: info.to_owned(),
                });
            }
        }
        self.events.extend(changed);
    }

    /// Removes a source and closes every publication it feeds (their sinks are
    /// dropped; the room core ends the players).
    pub fn remove_source(&mut self, source: SourceId) {
        let Some(s) = self.sources.remove(&source) else {
            return;
        };
        if let Some(name) = &s.name {
            self.named.remove(name);
        }
        for stream in &s.streams {
            self.publications.remove(stream);
        }
    }

    /// Whether a source that could not take a key-frame request can now (a WebRTC
    /// publisher's video SSRC became known): a pending request is asked at once.
    pub fn source_ready(&mut self, edge: &mut E, now: Instant, source: SourceId) {
        if self
            .sources
            .get(&source)
            .is_some_and(|s| s.key_frame_pending)
        {
            self.ask_key_frame(edge, now, source);
        }
    }

    // ----- publications ------------------------------------------------------------

    fn open(&mut self, stream: &str, source: SourceId) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.streams.push(stream.to_owned());
        }
        self.publications.insert(
            stream.to_owned(),
            Publication {
                source,
                sinks: Vec::new(),
                muted: [false; 2],
                await_key_frame: false,
            },
        );
    }

    /// A publication fed by a named source (a stream of the device in one room).
    pub fn publish_from(&mut self, stream: &str, source: SourceId) -> Result<(), StreamError> {
        if self.publications.contains_key(stream) {
            return Err(StreamError::InUse);
        }
        let s = self
            .sources
            .get(&source)
            .ok_or_else(|| StreamError::Unavailable("Source not found".into()))?;
        if s.codecs.audio.is_none() && s.codecs.video.is_none() {
            return Err(StreamError::Unavailable(s.unavailable.clone()));
        }
        self.open(stream, source);
        Ok(())
    }

    /// Ends a publication; a source that fed only it (not named) goes with it.
    pub fn unpublish(&mut self, stream: &str) {
        let Some(p) = self.publications.remove(stream) else {
            return;
        };
        let Some(s) = self.sources.get_mut(&p.source) else {
            return;
        };
        s.streams.retain(|n| n != stream);
        if s.name.is_none() {
            self.sources.remove(&p.source);
        }
    }

    /// The source feeding a stream.
    pub fn source_of(&self, stream: &str) -> Option<SourceId> {
        self.publications.get(stream).map(|p| p.source)
    }

    /// The codecs of a stream (what a sink will receive, with the source's payload
    /// types).
    pub fn codecs(&self, stream: &str) -> Option<&Chosen> {
        let p = self.publications.get(stream)?;
        self.sources.get(&p.source).map(|s| &s.codecs)
    }

    /// What every publication carries now: codecs, picture size, received bitrate,
    /// sinks (the admin API's stream list).
    pub fn stats(&self, now: Instant) -> Vec<Stats> {
        let ms = self.millis(now);
        self.publications
            .iter()
            .filter_map(|(stream, p)| {
                let s = self.sources.get(&p.source)?;
                Some(Stats {
                    stream: stream.clone(),
                    codecs: s.codecs.clone(),
                    size: s.size,
                    audio_bps: s.rate[Kind::Audio.index()].bps(ms),
                    video_bps: s.rate[Kind::Video.index()].bps(ms),
                    sinks: p.sinks.len(),
                })
            })
            .collect()
    }

    /// A moderator's mute of a publication, the whole state (`true`: muted): a muted
    /// kind goes to none of its sinks until unmuted. Players see no gap in their
    /// sequence numbers across it; their timestamps keep the source's clock. At a
    /// video unmute the source is asked for a key frame, and video stays withheld
    /// until one starts. `false`: no such publication.
    pub fn set_muted(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        audio: bool,
        video: bool,
    ) -> bool {
        let Some(p) = self.publications.get_mut(stream) else {
            return false;
        };
        let was = p.muted;
        p.muted = [audio, video];
        for kind in [Kind::Audio, Kind::Video] {
            if was[kind.index()] || !p.muted[kind.index()] {
                continue;
            }
            // Muted now: what the sinks get next continues their numbering.
            for sink in &mut p.sinks {
                if let Numbering::Own { audio, video } = &mut sink.numbering {
                    let track = match kind {
                        Kind::Audio => audio.as_mut(),
                        Kind::Video => video.as_mut(),
                    };
                    if let Some(track) = track {
                        track.resync();
                    }
                }
            }
        }
        if was[Kind::Video.index()] && !video {
            p.await_key_frame = true;
            let source = p.source;
            self.ask_key_frame(edge, now, source);
        }
        true
    }

    /// Whether a kind of a publication is muted.
    pub fn is_muted(&self, stream: &str, kind: Kind) -> bool {
        self.publications
            .get(stream)
            .is_some_and(|p| p.muted[kind.index()])
    }

    // ----- sinks -------------------------------------------------------------------

    /// Attaches a sink to a stream. An active sink gets a key frame soon; an inactive
    /// one gets nothing until `activate`.
    pub fn attach(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: Box<dyn Sink<E>>,
        numbering: Numbering,
        active: bool,
    ) -> Result<SinkId, StreamError> {
        if !self.publications.contains_key(stream) {
            return Err(StreamError::NotFound);
        }
        let id = self.id();
        let arriving = self.arriving(stream);
        if let Some(p) = self.publications.get_mut(stream) {
            let mut layer = SinkLayer::default();
            layer.retarget(&arriving);
            p.sinks.push(SinkEntry {
                id,
                sink,
                numbering,
                active,
                layer,
            });
        }
        if active {
            self.request_key_frame(edge, now, stream);
        }
        Ok(id)
    }

    /// The sink is ready for packets (a player's peer is up); it gets a key frame.
    pub fn activate(&mut self, edge: &mut E, now: Instant, stream: &str, sink: SinkId) {
        let found = self
            .publications
            .get_mut(stream)
            .and_then(|p| p.sinks.iter_mut().find(|s| s.id == sink));
        if let Some(s) = found {
            s.active = true;
            self.request_key_frame(edge, now, stream);
        }
    }

    pub fn detach(&mut self, stream: &str, sink: SinkId) {
        if let Some(p) = self.publications.get_mut(stream) {
            p.sinks.retain(|s| s.id != sink);
        }
    }

    // ----- forwarding and key frames --------------------------------------------------

    /// One RTP packet of a source, for every active sink of every publication it
    /// feeds, numbered as each sink asked. Nothing here knows what the source or the
    /// sinks are.
    pub fn packet(
        &mut self,
        edge: &mut E,
        now: Instant,
        source: SourceId,
        kind: Kind,
        packet: &Packet,
    ) {
        self.forward(edge, now, source, kind, 0, packet);
    }

    /// One video packet of simulcast layer `layer` (`set_layers`) of a source: each
    /// sink gets it when that is its layer, or when it starts a key frame of the
    /// layer the sink should switch to.
    pub fn layer_packet(
        &mut self,
        edge: &mut E,
        now: Instant,
        source: SourceId,
        layer: usize,
        packet: &Packet,
    ) {
        self.forward(edge, now, source, Kind::Video, layer, packet);
    }

    fn forward(
        &mut self,
        edge: &mut E,
        now: Instant,
        source: SourceId,
        kind: Kind,
        layer: usize,
        packet: &Packet,
    ) {
        let ms = self.millis(now);
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        let Some(codec) = s.codecs.get(kind) else {
            return;
        };
        let bytes = packet.payload.len();
        self.tally.received(kind, bytes);
        s.rate[kind.index()].add(ms, bytes);
        // Byte checks on video packets; an SPS is parsed only where a key frame starts.
        let key_frame = match kind {
            Kind::Video => picture::key_frame_start(codec.family, &packet.payload),
            Kind::Audio => None,
        };
        // Simulcast: which layer this is, and whether the arriving layers changed.
        let layered = kind == Kind::Video && !s.layers.is_empty();
        let layer = layer.min(s.layers.len().saturating_sub(1));
        let mut arriving: Option<Vec<bool>> = None;
        if layered {
            let l = &mut s.layers[layer];
            l.rate.add(ms, bytes);
            l.last_ms = Some(ms);
            if let Some(k) = key_frame {
                // What was asked came: no second request when the interval ends.
                l.key_frame_pending = false;
                l.size = k.size.or(l.size);
            }
            let mut changed = false;
            for l in &mut s.layers {
                let active = l
                    .last_ms
                    .is_some_and(|t| ms.saturating_sub(t) < LAYER_IDLE_MS);
                changed |= active != l.active;
                l.active = active;
            }
            if changed {
                arriving = Some(s.layers.iter().map(|l| l.active).collect());
            }
            if let Some(size) = s
                .layers
                .iter()
                .rev()
                .find(|l| l.active)
                .and_then(|l| l.size)
            {
                s.size = Some(size);
            }
        } else if let Some(size) = key_frame.and_then(|k| k.size) {
            s.size = Some(size);
        }
        let tally = &*self.tally;
        let mut dropped = false;
        let mut want_key_frame = false;
        // Layers a sink waits for a key frame of (bit per layer).
        let mut want_layers = 0u32;
        let mut taken = 0u64;
        for stream in &s.streams {
            let Some(p) = self.publications.get_mut(stream) else {
                continue;
            };
            if let Some(arriving) = &arriving {
                for sink in &mut p.sinks {
                    if sink.layer.retarget(arriving) {
                        want_layers |= 1 << sink.layer.target.min(31);
                    }
                }
            }
            if p.muted[kind.index()] {
                tally.muted();
                continue;
            }
            if kind == Kind::Video && p.await_key_frame {
                if key_frame.is_none() {
                    tally.muted();
                    want_key_frame = true;
                    continue;
                }
                p.await_key_frame = false;
            }
            p.sinks.retain_mut(|sink| {
                if !sink.active {
                    return true;
                }
                if layered && !sink.layer.forwards(layer, key_frame.is_some()) {
                    if sink.layer.switching() {
                        want_layers |= 1 << sink.layer.target.min(31);
                    }
                    return true;
                }
                if kind == Kind::Video
                    && !sink
                        .layer
                        .passes(key_frame.is_some(), packet.header.timestamp)
                {
                    // Withheld: the next packet given continues the numbering.
                    if let Numbering::Own {
                        video: Some(track), ..
                    } = &mut sink.numbering
                    {
                        track.resync();
                    }
                    return true;
                }
                let Some(out) = copy(packet, &mut sink.numbering, kind) else {
                    return true;
                };
                match sink.sink.packet(edge, now, kind, codec, out) {
                    Delivery::Taken => {
                        taken += 1;
                        true
                    }
                    Delivery::Dropped => {
                        tally.sink_dropped();
                        dropped = true;
                        true
                    }
                    Delivery::Done => false,
                }
            });
        }
        if taken > 0 {
            tally.forwarded(kind, taken, taken * bytes as u64);
        }
        // Waiting for a key frame after an unmute: asked again each interval.
        if (dropped && kind == Kind::Video) || want_key_frame {
            self.ask_key_frame(edge, now, source);
        }
        for l in 0..32usize {
            if want_layers & (1 << l) != 0 {
                self.ask_layer_key_frame(edge, now, source, l);
            }
        }
    }

    /// A sink of this stream needs a key frame (a player's PLI, a lost datagram).
    pub fn request_key_frame(&mut self, edge: &mut E, now: Instant, stream: &str) {
        if let Some(source) = self.source_of(stream) {
            self.ask_key_frame(edge, now, source);
        }
    }

    /// Asks the source for a key frame, at most once per interval: a request inside
    /// the interval is coalesced into one when it is over, which serves everyone. A
    /// source with simulcast layers is asked for the layers its sinks get or wait for.
    fn ask_key_frame(&mut self, edge: &mut E, now: Instant, source: SourceId) {
        let interval = self.key_frame_interval;
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        if !s.layers.is_empty() {
            let mut wanted = 0u32;
            for stream in &s.streams {
                for sink in self
                    .publications
                    .get(stream)
                    .into_iter()
                    .flat_map(|p| &p.sinks)
                {
                    let l = sink.layer.current.unwrap_or(sink.layer.target);
                    wanted |= 1 << l.min(31);
                }
            }
            if wanted == 0 {
                let top = s.layers.iter().rposition(|l| l.active).unwrap_or(0);
                wanted = 1 << top.min(31);
            }
            for l in 0..32usize {
                if wanted & (1 << l) != 0 {
                    self.ask_layer_key_frame(edge, now, source, l);
                }
            }
            return;
        }
        if s.last_key_frame_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            s.key_frame_pending = true;
            return;
        }
        s.last_key_frame_request = Some(now);
        let asked = s.source.key_frame(edge, now);
        s.key_frame_pending = !asked;
        if asked {
            self.tally.key_frame_requested();
        }
    }

    /// Asks for a key frame of one simulcast layer, at most once per interval per
    /// layer (coalesced like `ask_key_frame`).
    fn ask_layer_key_frame(&mut self, edge: &mut E, now: Instant, source: SourceId, layer: usize) {
        let interval = self.key_frame_interval;
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        let Some(l) = s.layers.get_mut(layer) else {
            return;
        };
        if l.last_key_frame_request
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            l.key_frame_pending = true;
            return;
        }
        l.last_key_frame_request = Some(now);
        let asked = s.source.layer_key_frame(edge, now, layer);
        if let Some(l) = s.layers.get_mut(layer) {
            l.key_frame_pending = !asked;
        }
        if asked {
            self.tally.key_frame_requested();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let interval = self.key_frame_interval;
        let sources = self
            .sources
            .values()
            .filter(|s| s.key_frame_pending)
            .filter_map(|s| s.last_key_frame_request.map(|t| t + interval));
        let layers = self
            .sources
            .values()
            .flat_map(|s| &s.layers)
            .filter(|l| l.key_frame_pending)
            .filter_map(|l| l.last_key_frame_request.map(|t| t + interval));
        sources.chain(layers).min()
    }

    pub fn handle_timeout(&mut self, edge: &mut E, now: Instant) {
        let interval = self.key_frame_interval;
        let due = |pending: bool, last: Option<Instant>| {
            pending && last.is_some_and(|t| now >= t + interval)
        };
        let sources: Vec<SourceId> = self
            .sources
            .iter()
            .filter(|(_, s)| due(s.key_frame_pending, s.last_key_frame_request))
            .map(|(id, _)| *id)
            .collect();
        for source in sources {
            self.ask_key_frame(edge, now, source);
        }
        let layers: Vec<(SourceId, usize)> = self
            .sources
            .iter()
            .flat_map(|(id, s)| {
                s.layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| due(l.key_frame_pending, l.last_key_frame_request))
                    .map(|(i, _)| (*id, i))
            })
            .collect();
        for (source, layer) in layers {
            self.ask_layer_key_frame(edge, now, source, layer);
        }
    }

    // ----- simulcast layers -------------------------------------------------------

    /// The source's video comes in `count` simulcast layers, low → high (a WebRTC
    /// publisher's rids), each given with `layer_packet`. Fewer than two: no layers.
    pub fn set_layers(&mut self, source: SourceId, count: usize) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.layers = if count >= 2 {
                (0..count.min(8)).map(|_| LayerIn::default()).collect()
            } else {
                Vec::new()
            };
        }
    }

    /// Which layers of a stream's source are arriving (empty: no layers).
    fn arriving(&self, stream: &str) -> Vec<bool> {
        self.publications
            .get(stream)
            .and_then(|p| self.sources.get(&p.source))
            .map(|s| s.layers.iter().map(|l| l.active).collect())
            .unwrap_or_default()
    }

    /// The received bitrate of each layer of a stream, low → high (empty: no layers).
    pub fn layer_bitrates(&self, now: Instant, stream: &str) -> Vec<u64> {
        let ms = self.millis(now);
        self.publications
            .get(stream)
            .and_then(|p| self.sources.get(&p.source))
            .map(|s| s.layers.iter().map(|l| l.rate.bps(ms)).collect())
            .unwrap_or_default()
    }

    /// A sink's layer state (the current and target layers), when the stream has layers.
    pub fn sink_layer(&self, stream: &str, sink: SinkId) -> Option<SinkLayer> {
        let p = self.publications.get(stream)?;
        let layered = self
            .sources
            .get(&p.source)
            .is_some_and(|s| !s.layers.is_empty());
        let s = p.sinks.iter().find(|s| s.id == sink)?;
        layered.then_some(s.layer)
    }

    /// The video sequence numbers a sink with its own numbering was given as gaps up
    /// to `highest` (losses before us; see `Renumber::skipped_through`).
    pub fn sink_video_skipped(&self, stream: &str, sink: SinkId, highest: u16) -> Option<u64> {
        let p = self.publications.get(stream)?;
        match &p.sinks.iter().find(|s| s.id == sink)?.numbering {
            Numbering::Own {
                video: Some(video), ..
            } => Some(video.skipped_through(highest)),
            _ => None,
        }
    }

    /// Changes a sink's layer wish and cap; a new target it is not fed yet asks for a
    /// key frame of it (the switch happens there). `false`: no such sink.
    fn update_layer(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: SinkId,
        change: impl FnOnce(&mut SinkLayer),
    ) -> bool {
        let arriving = self.arriving(stream);
        let Some(p) = self.publications.get_mut(stream) else {
            return false;
        };
        let source = p.source;
        let Some(s) = p.sinks.iter_mut().find(|s| s.id == sink) else {
            return false;
        };
        change(&mut s.layer);
        if !arriving.is_empty() && s.layer.retarget(&arriving) && s.active {
            let target = s.layer.target;
            self.ask_layer_key_frame(edge, now, source, target);
        }
        true
    }

    /// A player's explicit layer wish (`Low` for a small tile, `High` for the focused
    /// one). `false`: no such sink.
    pub fn set_layer_preference(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: SinkId,
        preference: Preference,
    ) -> bool {
        self.update_layer(edge, now, stream, sink, |l| l.preference = preference)
    }

    /// The highest layer a sink's bandwidth allows (`None`: no limit).
    pub fn set_layer_cap(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: SinkId,
        cap: Option<usize>,
    ) -> bool {
        self.update_layer(edge, now, stream, sink, |l| l.cap = cap)
    }

    /// A player that cannot keep up (a stream without layers): only key frames from now
    /// on (`true`), or everything again from the next key frame (`false`, which is
    /// asked for). `false` as the result: no such sink.
    pub fn set_key_frames_only(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: SinkId,
        on: bool,
    ) -> bool {
        let Some(p) = self.publications.get_mut(stream) else {
            return false;
        };
        let source = p.source;
        let Some(s) = p.sinks.iter_mut().find(|s| s.id == sink) else {
            return false;
        };
        if on {
            s.layer.key_frames_only = true;
            s.layer.resume = false;
        } else if s.layer.key_frames_only && !s.layer.resume {
            // Back to every frame from a key frame (the decoder would get deltas of
            // frames it never had), which is asked for.
            s.layer.resume = true;
            self.ask_key_frame(edge, now, source);
        }
        true
    }

    /// A sink of this stream needs a key frame (a player's PLI): of the layer it is
    /// fed, when the stream has layers.
    pub fn request_sink_key_frame(
        &mut self,
        edge: &mut E,
        now: Instant,
        stream: &str,
        sink: SinkId,
    ) {
        let Some(p) = self.publications.get(stream) else {
            return;
        };
        let source = p.source;
        let layered = self
            .sources
            .get(&source)
            .is_some_and(|s| !s.layers.is_empty());
        match p.sinks.iter().find(|s| s.id == sink) {
            Some(s) if layered => {
                let l = s.layer.current.unwrap_or(s.layer.target);
                self.ask_layer_key_frame(edge, now, source, l);
            }
            _ => self.ask_key_frame(edge, now, source),
        }
    }

    /// Every publication and source dropped (service shutdown).
    pub fn clear(&mut self) {
        self.publications.clear();
        self.sources.clear();
        self.named.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::Family;
    use super::*;
    use std::sync::Mutex;

    /// What a test sink got: kind, sequence number, payload type.
    type Got = Arc<Mutex<Vec<(Kind, u16, u8)>>>;

    /// A sink that records what it is given; `Done` once `budget` packets are in.
    struct Recorder {
        got: Got,
        budget: usize,
    }

    impl Sink<()> for Recorder {
        fn packet(
            &mut self,
            _edge: &mut (),
            _now: Instant,
            kind: Kind,
            _codec: &Codec,
            packet: Packet,
        ) -> Delivery {
            let mut got = self.got.lock().unwrap();
            got.push((
                kind,
                packet.header.sequence_number,
                packet.header.payload_type,
            ));
            if got.len() < self.budget {
                Delivery::Taken
            } else {
                Delivery::Done
            }
        }
    }

    fn codecs() -> Chosen {
        Chosen {
            audio: Some(Codec {
                family: Family::Opus,
                payload_type: 111,
                clock_rate: 48_000,
                channels: 2,
                fmtp: String::new(),
            }),
            video: Some(Codec {
                family: Family::Vp8,
                payload_type: 96,
                clock_rate: 90_000,
                channels: 0,
                fmtp: String::new(),
            }),
        }
    }

    fn recorder(got: &Got, budget: usize) -> Box<dyn Sink<()>> {
        Box::new(Recorder {
            got: got.clone(),
            budget,
        })
    }

    fn packet(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.payload_type = 96;
        p
    }

    #[test]
    fn a_source_feeds_sinks_without_knowing_them() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let now = Instant::now();
        let flag = KeyFrameFlag::default();
        let src = m
            .add_source("room-Room system-cam", codecs(), Box::new(flag.clone()))
            .unwrap();
        assert_eq!(
            m.add_source("room-Room system-cam", codecs(), Box::new(flag.clone())),
            Err(StreamError::InUse)
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        m.attach(
            &mut (),
            now,
            "room-Room system-cam",
            recorder(&got, 3),
            Numbering::AsSent,
            true,
        )
        .unwrap();
        assert!(flag.take(), "a new sink asks for a key frame");
        assert!(!flag.take(), "once");
        for seq in 0..5u16 {
            m.packet(&mut (), now, src, Kind::Video, &packet(seq));
        }
        // The sink said it was done after three packets and was dropped.
        assert_eq!(
            *got.lock().unwrap(),
            vec![
                (Kind::Video, 0, 96),
                (Kind::Video, 1, 96),
                (Kind::Video, 2, 96)
            ]
        );
        assert_eq!(
            m.attach(
                &mut (),
                now,
                "nope",
                recorder(&got, 1),
                Numbering::AsSent,
                true
            )
            .unwrap_err(),
            StreamError::NotFound
        );
        m.unpublish("room-Room system-cam");
        assert!(m.codecs("room-Room system-cam").is_none());
        assert!(
            m.sources.is_empty(),
            "an unnamed source ends with its stream"
        );
    }

    #[test]
    fn each_sink_has_its_own_numbering_and_inactive_sinks_get_nothing() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let now = Instant::now();
        let src = m
            .add_source("s", codecs(), Box::new(KeyFrameFlag::default()))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let own = Numbering::Own {
            audio: None,
            video: Some(Renumber::new(100, 5, 1000, 0, 3000)),
        };
        let player = m
            .attach(&mut (), now, "s", recorder(&got, 100), own, false)
            .unwrap();
        m.packet(&mut (), now, src, Kind::Video, &packet(7));
        assert!(got.lock().unwrap().is_empty(), "not active yet");
        m.activate(&mut (), now, "s", player);
        m.packet(&mut (), now, src, Kind::Video, &packet(8));
        m.packet(&mut (), now, src, Kind::Audio, &packet(9));
        assert_eq!(
            *got.lock().unwrap(),
            vec![(Kind::Video, 1000, 100)],
            "renumbered; audio has no track of this sink"
        );
        m.detach("s", player);
        m.packet(&mut (), now, src, Kind::Video, &packet(10));
        assert_eq!(got.lock().unwrap().len(), 1);
    }

    fn vp8(seq: u16, ts: u32, key: bool) -> Packet {
        let mut p = packet(seq);
        p.header.ssrc = 42;
        p.header.timestamp = ts;
        // Descriptor S=1 PID=0; P bit 0 for a key frame (640x480).
        let frame: &[u8] = if key {
            &[
                0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
            ]
        } else {
            &[0x10, 0x11, 0x02, 0x00]
        };
        p.payload = bytes::Bytes::copy_from_slice(frame);
        p
    }

    fn opus(seq: u16, ts: u32) -> Packet {
        let mut p = packet(seq);
        p.header.ssrc = 43;
        p.header.payload_type = 111;
        p.header.timestamp = ts;
        p.payload = bytes::Bytes::from_static(&[0xfc, 0xff, 0xfe]);
        p
    }

    #[derive(Default)]
    struct Counts {
        muted: std::sync::atomic::AtomicU64,
        key_frames: std::sync::atomic::AtomicU64,
        received: std::sync::atomic::AtomicU64,
        forwarded: std::sync::atomic::AtomicU64,
    }

    impl Tally for Counts {
        fn received(&self, _kind: Kind, _bytes: usize) {
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        fn forwarded(&self, _kind: Kind, packets: u64, _bytes: u64) {
            self.forwarded.fetch_add(packets, Ordering::Relaxed);
        }
        fn muted(&self) {
            self.muted.fetch_add(1, Ordering::Relaxed);
        }
        fn key_frame_requested(&self) {
            self.key_frames.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A sink that records kind, sequence number and timestamp.
    struct Timed(Arc<Mutex<Vec<(Kind, u16, u32)>>>);

    impl Sink<()> for Timed {
        fn packet(
            &mut self,
            _edge: &mut (),
            _now: Instant,
            kind: Kind,
            _codec: &Codec,
            packet: Packet,
        ) -> Delivery {
            let h = &packet.header;
            self.0
                .lock()
                .unwrap()
                .push((kind, h.sequence_number, h.timestamp));
            Delivery::Taken
        }
    }

    #[test]
    fn a_muted_kind_is_withheld_and_resumes_without_a_gap_from_a_key_frame() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let counts = Arc::new(Counts::default());
        m.set_tally(counts.clone());
        let t0 = Instant::now();
        let flag = KeyFrameFlag::default();
        let src = m.add_source("s", codecs(), Box::new(flag.clone())).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let own = Numbering::Own {
            audio: Some(Renumber::new(111, 6, 500, 0, 960)),
            video: Some(Renumber::new(96, 5, 1000, 0, 3000)),
        };
        m.attach(&mut (), t0, "s", Box::new(Timed(got.clone())), own, true)
            .unwrap();
        assert!(flag.take());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        m.packet(&mut (), at(0), src, Kind::Video, &vp8(10, 90_000, true));
        m.packet(&mut (), at(0), src, Kind::Audio, &opus(70, 48_000));
        assert!(!m.set_muted(&mut (), at(0), "nope", false, true));
        assert!(m.set_muted(&mut (), at(10), "s", false, true));
        assert!(m.is_muted("s", Kind::Video) && !m.is_muted("s", Kind::Audio));
        // Video is withheld, audio flows.
        for i in 1..=5u16 {
            let ms = u64::from(i) * 33;
            m.packet(
                &mut (),
                at(ms),
                src,
                Kind::Video,
                &vp8(10 + i, 90_000 + u32::from(i) * 3000, false),
            );
            m.packet(
                &mut (),
                at(ms),
                src,
                Kind::Audio,
                &opus(70 + i, 48_000 + u32::from(i) * 960),
            );
        }
        assert_eq!(counts.muted.load(Ordering::Relaxed), 5);
        {
            let got = got.lock().unwrap();
            assert!(
                got.iter().skip(1).all(|(k, _, _)| *k == Kind::Audio),
                "{got:?}"
            );
            assert_eq!(got.len(), 7);
        }
        assert!(!flag.take(), "no key frame wanted while muted");
        // Unmuted: the source is asked for a key frame at once (the interval is over).
        assert!(m.set_muted(&mut (), at(600), "s", false, false));
        assert!(flag.take(), "a key frame is asked at a video unmute");
        assert_eq!(counts.key_frames.load(Ordering::Relaxed), 2);
        // Until it comes, video stays withheld (the decoder could not use it).
        m.packet(&mut (), at(610), src, Kind::Video, &vp8(30, 144_000, false));
        assert_eq!(counts.muted.load(Ordering::Relaxed), 6);
        m.packet(&mut (), at(640), src, Kind::Video, &vp8(31, 147_000, true));
        m.packet(&mut (), at(670), src, Kind::Video, &vp8(32, 150_000, false));
        let video: Vec<(u16, u32)> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| *k == Kind::Video)
            .map(|(_, seq, ts)| (*seq, *ts))
            .collect();
        // No gap in the sequence numbers; the timestamps kept the source's clock.
        assert_eq!(video, vec![(1000, 0), (1001, 57_000), (1002, 60_000)]);
        let audio: Vec<u16> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| *k == Kind::Audio)
            .map(|(_, seq, _)| *seq)
            .collect();
        assert_eq!(audio, (500..506).collect::<Vec<_>>());
        // Audio muted and unmuted: continuous too, and no key frame is asked for it.
        m.set_muted(&mut (), at(700), "s", true, false);
        m.packet(&mut (), at(700), src, Kind::Audio, &opus(90, 96_000));
        m.set_muted(&mut (), at(720), "s", false, false);
        m.packet(&mut (), at(720), src, Kind::Audio, &opus(91, 96_960));
        assert_eq!(
            got.lock().unwrap().last(),
            Some(&(Kind::Audio, 506, 48_960))
        );
        assert!(!flag.take());
        assert_eq!(counts.received.load(Ordering::Relaxed), 17);
        assert_eq!(counts.forwarded.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn stats_tell_codecs_picture_size_bitrate_and_sinks() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let src = m
            .add_source("s", codecs(), Box::new(KeyFrameFlag::default()))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        m.attach(
            &mut (),
            t0,
            "s",
            recorder(&got, 10_000),
            Numbering::AsSent,
            true,
        )
        .unwrap();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 10 s of 100 audio packets of 3 bytes and 50 video packets of 4 bytes a second.
        for i in 0..1000u16 {
            let ms = u64::from(i) * 10;
            m.packet(&mut (), at(ms), src, Kind::Audio, &opus(i, 0));
            if i % 2 == 0 {
                let key = i == 0;
                m.packet(&mut (), at(ms), src, Kind::Video, &vp8(i, 0, key));
            }
        }
        let stats = m.stats(at(10_000));
        assert_eq!(stats.len(), 1);
        let st = &stats[0];
        assert_eq!(st.stream, "s");
        assert_eq!(st.codecs, codecs());
        assert_eq!(st.size, Some((640, 480)));
        assert_eq!(st.sinks, 1);
        assert!((2300..=2500).contains(&st.audio_bps), "{}", st.audio_bps);
        assert!((1500..=1700).contains(&st.video_bps), "{}", st.video_bps);
        // Long silent: nothing in the window.
        let st = &m.stats(at(60_000))[0];
        assert_eq!((st.audio_bps, st.video_bps), (0, 0));
    }

    #[test]
    fn key_frame_requests_are_coalesced_not_dropped() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let flag = KeyFrameFlag::default();
        m.add_source("s", codecs(), Box::new(flag.clone())).unwrap();
        m.request_key_frame(&mut (), t0, "s");
        assert!(flag.take());
        // A second request inside the interval waits for its end.
        m.request_key_frame(&mut (), t0 + Duration::from_millis(100), "s");
        assert!(!flag.take());
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        m.handle_timeout(&mut (), t0 + Duration::from_millis(500));
        assert!(flag.take());
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn a_named_source_feeds_every_stream_and_losing_a_kind_closes_them() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let now = Instant::now();
        let flag = KeyFrameFlag::default();
        let dev = m.add_named_source("device", "Camera off", Box::new(flag.clone()));
        assert_eq!(m.named_source("device"), Some(dev));
        // Nothing delivered yet: a publication is refused with the source's reason.
        assert_eq!(
            m.publish_from("a", dev),
            Err(StreamError::Unavailable("Camera off".into()))
        );
        let all = codecs();
        m.set_codecs(dev, all.clone(), "");
        assert_eq!(
            m.poll_event(),
            Some(Event::SourceChanged {
                source: "device".into(),
                audio: true,
                video: true
            })
        );
        m.publish_from("a", dev).unwrap();
        m.publish_from("b", dev).unwrap();
        assert_eq!(m.publish_from("b", dev), Err(StreamError::InUse));
        let got = Arc::new(Mutex::new(Vec::new()));
        for stream in ["a", "b"] {
            m.attach(
                &mut (),
                now,
                stream,
                recorder(&got, 100),
                Numbering::AsSent,
                true,
            )
            .unwrap();
        }
        assert!(flag.take(), "new sinks want a key frame");
        m.packet(&mut (), now, dev, Kind::Video, &packet(7));
        assert_eq!(
            *got.lock().unwrap(),
            vec![(Kind::Video, 7, 96), (Kind::Video, 7, 96)]
        );
        // The camera is gone: both streams close with the reason, then the change is told.
        let audio_only = Chosen {
            audio: all.audio.clone(),
            video: None,
        };
        m.set_codecs(dev, audio_only.clone(), "Camera failed");
        for stream in ["a", "b"] {
            assert_eq!(
                m.poll_event(),
                Some(Event::Closed {
                    stream: stream.into(),
                    info: "Camera failed".into()
                })
            );
        }
        assert_eq!(
            m.poll_event(),
            Some(Event::SourceChanged {
                source: "device".into(),
                audio: true,
                video: false
            })
        );
        assert!(m.codecs("a").is_none());
        // The same state again changes nothing; the source stays registered.
        m.set_codecs(dev, audio_only, "");
        assert_eq!(m.poll_event(), None);
        assert_eq!(m.named_source("device"), Some(dev));
        // Registering the name again replaces the source and closes its streams.
        m.set_codecs(dev, all, "");
        m.poll_event();
        m.publish_from("c", dev).unwrap();
        let again = m.add_named_source("device", "Camera off", Box::new(flag));
        assert_ne!(again, dev);
        assert_eq!(
            m.poll_event(),
            Some(Event::Closed {
                stream: "c".into(),
                info: "The source was replaced".into()
            })
        );
        assert!(m.codecs("c").is_none());
    }

    /// A source whose key-frame requests are recorded by layer.
    #[derive(Clone, Default)]
    struct Layered(Arc<Mutex<Vec<usize>>>);

    impl Source<()> for Layered {
        fn key_frame(&mut self, _edge: &mut (), _now: Instant) -> bool {
            self.0.lock().unwrap().push(usize::MAX);
            true
        }
        fn layer_key_frame(&mut self, _edge: &mut (), _now: Instant, layer: usize) -> bool {
            self.0.lock().unwrap().push(layer);
            true
        }
    }

    #[test]
    fn a_sink_gets_one_layer_and_switches_at_its_key_frame_without_a_gap() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let asked = Layered::default();
        let src = m
            .add_source("s", codecs(), Box::new(asked.clone()))
            .unwrap();
        m.set_layers(src, 2);
        // Layer l: SSRC 100 + l, its own sequence numbers and clock.
        let layer = |l: usize, n: u16, key: bool| {
            let mut p = vp8(
                n + 1000 * l as u16,
                10_000 * l as u32 + u32::from(n) * 3000,
                key,
            );
            p.header.ssrc = 100 + l as u32;
            p
        };
        let got = Arc::new(Mutex::new(Vec::new()));
        let own = Numbering::Own {
            audio: None,
            video: Some(Renumber::new(96, 5, 500, 0, 3000)),
        };
        let sink = m
            .attach(&mut (), at(0), "s", Box::new(Timed(got.clone())), own, true)
            .unwrap();
        let mut n = 0u16;
        let mut send = |m: &mut Streams<()>, ms: u64, keys: [bool; 2]| {
            for (l, key) in keys.into_iter().enumerate() {
                m.layer_packet(&mut (), at(ms), src, l, &layer(l, n, key));
            }
            n += 1;
        };
        // The low layer comes first: the sink starts with its key frame; then the top
        // one arrives, a key frame of it is asked, and the low layer flows until it.
        send(&mut m, 0, [true, false]);
        send(&mut m, 20, [false, false]);
        assert_eq!(got.lock().unwrap().len(), 2);
        // Asked at the attach (the top layer), of the low one when it alone came,
        // and of the top one again once the interval is over.
        assert_eq!(*asked.0.lock().unwrap(), vec![1, 0]);
        assert_eq!(m.poll_timeout(), Some(at(500)));
        send(&mut m, 40, [false, true]);
        send(&mut m, 60, [false, false]);
        assert_eq!(
            got.lock().unwrap().len(),
            5,
            "switched at the top's key frame"
        );
        assert_eq!(
            m.sink_layer("s", sink).map(|l| (l.current, l.target)),
            Some((Some(1), 1))
        );
        // Asked down (the interval is over): a key frame of layer 0 is requested; the
        // top layer flows until it.
        asked.0.lock().unwrap().clear();
        assert!(m.set_layer_preference(&mut (), at(600), "s", sink, Preference::Low));
        assert_eq!(*asked.0.lock().unwrap(), vec![0]);
        send(&mut m, 600, [false, false]);
        send(&mut m, 620, [true, false]);
        send(&mut m, 640, [false, true]);
        let seen: Vec<(u16, u32)> = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s, t)| (*s, *t))
            .collect();
        // Sequence numbers go on; the clock is rebased one frame on at each switch.
        let expected: Vec<(u16, u32)> = (0..8u16).map(|i| (500 + i, u32::from(i) * 3000)).collect();
        assert_eq!(seen, expected);
        // A PLI of the player asks its layer; bitrates are per layer.
        asked.0.lock().unwrap().clear();
        m.request_sink_key_frame(&mut (), at(1200), "s", sink);
        assert_eq!(*asked.0.lock().unwrap(), vec![0]);
        let rates = m.layer_bitrates(at(1000), "s");
        assert_eq!(rates.len(), 2);
        // The bandwidth cap lowers the target too (and says nothing when unchanged).
        assert!(m.set_layer_preference(&mut (), at(1000), "s", sink, Preference::High));
        assert!(m.set_layer_cap(&mut (), at(1000), "s", sink, Some(0)));
        assert_eq!(m.sink_layer("s", sink).map(|l| l.target), Some(0));
        assert!(
            !m.set_layer_cap(&mut (), at(1000), "s", 999, None),
            "no such sink"
        );
    }

    #[test]
    fn a_sink_on_key_frames_only_gets_them_without_a_sequence_gap() {
        let mut m: Streams<()> = Streams::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let flag = KeyFrameFlag::default();
        let src = m.add_source("s", codecs(), Box::new(flag.clone())).unwrap();
        let (slow, fast) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let own = || Numbering::Own {
            audio: None,
            video: Some(Renumber::new(96, 5, 100, 0, 3000)),
        };
        let sink = m
            .attach(
                &mut (),
                at(0),
                "s",
                Box::new(Timed(slow.clone())),
                own(),
                true,
            )
            .unwrap();
        m.attach(
            &mut (),
            at(0),
            "s",
            Box::new(Timed(fast.clone())),
            own(),
            true,
        )
        .unwrap();
        assert!(m.set_key_frames_only(&mut (), at(0), "s", sink, true));
        // A key frame every 4th packet.
        for i in 0..12u16 {
            let p = vp8(i, u32::from(i) * 3000, i % 4 == 0);
            m.packet(&mut (), at(u64::from(i) * 33), src, Kind::Video, &p);
        }
        type Seen = Arc<Mutex<Vec<(Kind, u16, u32)>>>;
        let seqs = |got: &Seen| -> Vec<(u16, u32)> {
            got.lock()
                .unwrap()
                .iter()
                .map(|(_, s, t)| (*s, *t))
                .collect()
        };
        // Key frames only, numbered on without gaps, on the source's clock.
        assert_eq!(seqs(&slow), vec![(100, 0), (101, 12_000), (102, 24_000)]);
        assert_eq!(seqs(&fast).len(), 12, "the other sink gets everything");
        // Back to every frame: a key frame is asked, and it resumes there.
        flag.take();
        assert!(m.set_key_frames_only(&mut (), at(1000), "s", sink, false));
        assert!(flag.take());
        m.packet(&mut (), at(1000), src, Kind::Video, &vp8(12, 36_000, false));
        m.packet(&mut (), at(1033), src, Kind::Video, &vp8(13, 39_000, true));
        m.packet(&mut (), at(1066), src, Kind::Video, &vp8(14, 42_000, false));
        assert_eq!(
            seqs(&slow)[3..],
            [(103, 39_000), (104, 42_000)],
            "from the key frame on"
        );
    }
}
