//! The RTMP edge wired into the room and stream cores: an RTMP publisher becomes a
//! participant `<login>` of `<room>` the way a browser would, through a socket-less
//! session of the room core (`ToCore::ConnectLocal`, like the device participant)
//! whose one stream `<room>-<login>` is fed by the named source `rtmp-<session>`
//! (`Sfu::add_source`). H.264 RTP goes into the source as it comes; AAC is transcoded
//! to Opus on a thread of its own (`rtmp::audio::AacToOpus`).
//!
//! A publish of a room/login that already has an RTMP publisher replaces it (OBS
//! reconnects before its old socket is gone).
//!
//! An RTMP player is a member of the room as well (under its token's login, else
//! "RTMP player <n>"): its play goes through the room core like a browser's (the
//! stream must be in the room; limits and tokens apply) and the media engine attaches
//! the named sink `rtmp-<session>` to the stream (`Endpoints::add_sink`); the RTP is
//! turned into FLV tags by `rtmp::egress` (H.264 depacketized, Opus → AAC).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::driver::ToCore;
use super::member::{Link, Member};
use crate::auth::{Access, Authority};
use crate::device::camera::h264_codec;
use crate::device::h264::{ProfileLevel, RtpPacket};
use crate::device::microphone::{opus_codec, OPUS_PAYLOAD_TYPE};
use crate::logging::escaped;
use crate::media::speaking;
use crate::media::StreamError;
use crate::media::{Codec, Kind};
use crate::rooms::{Command, ConnectInfo, ServerMessage, SessionId, StreamRef, StreamRequest};
use crate::rtmp::audio::AacToOpus;
use crate::rtmp::egress;
use crate::rtmp::flv::AacConfig;
use crate::rtmp::media::AacFrame;
use crate::rtmp::server::{
    FlvTag, Handler, PlayRequest, PublishRequest, PublisherEvent, Refusal, VIDEO_PAYLOAD_TYPE,
};
use crate::sfu::task::{Attachment, Endpoints, SourceFeed};

/// How long a replaced publisher may take to leave its room.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the room core and the media engine may take to start a play.
const PLAY_TIMEOUT: Duration = Duration::from_secs(5);
/// FLV tags queued toward a player's connection (~2 s of 30 fps video with audio).
const PLAYER_TAGS: usize = 256;
/// How long the media engine may take to take the source's codecs.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Publisher events queued toward the participant task (~1 s of 30 fps video).
const EVENTS: usize = 64;
/// AAC frames queued toward the transcoder thread (~1 s at 48 kHz).
const AUDIO_FRAMES: usize = 48;
/// The reason a publish of the source fails while it delivers nothing.
const NO_MEDIA: &str = "The RTMP publisher sends no media yet";
/// The core's messages queued toward a member.
const OUTBOUND: usize = 256;
/// What a publisher's source delivers, queued toward its task.
const SOURCE_CHANGES: usize = 8;
/// The edge's label in the member's operation ids.
const LABEL: &str = "rtmp";

/// One running RTMP publisher of a room/login.
struct Running {
    session: SessionId,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

type Publishers = Arc<Mutex<HashMap<(String, String), Running>>>;

/// `rtmp::server::Handler` toward the room core and the media engine.
pub(crate) struct RtmpEdge {
    pub authority: Arc<Authority>,
    pub to_core: mpsc::Sender<ToCore>,
    pub endpoints: Endpoints,
    pub next_session: Arc<AtomicU64>,
    publishers: Publishers,
}

impl RtmpEdge {
    pub fn new(
        authority: Arc<Authority>,
        to_core: mpsc::Sender<ToCore>,
        endpoints: Endpoints,
        next_session: Arc<AtomicU64>,
    ) -> RtmpEdge {
        RtmpEdge {
            authority,
            to_core,
            endpoints,
            next_session,
            publishers: Arc::default(),
        }
    }

    fn take_running(&self, key: &(String, String)) -> Option<Running> {
        self.publishers.lock().ok()?.remove(key)
    }
}

fn who(room: &str, login: &str) -> String {
    format!(
        "rtmp publisher {} in room {}",
        escaped(login),
        escaped(room)
    )
}

/// What a publisher's task owns besides the media.
struct Publisher {
    member: Member,
    /// What the member's named source delivers now.
    changed: mpsc::Receiver<(bool, bool)>,
    room: String,
    /// `<room>-<login>`.
    stream: String,
}

fn stream_name(room: &str, login: &str) -> String {
    format!("{room}-{login}")
}

/// The SDP description of the publisher's H.264 (`profile-level-id` from the avcC).
fn video_codec(profile_level_id: &str) -> Option<Codec> {
    if profile_level_id.len() != 6 || !profile_level_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u32::from_str_radix(profile_level_id, 16).ok()?;
    let [_, profile, constraints, level] = value.to_be_bytes();
    let mut codec = h264_codec(ProfileLevel {
        profile,
        constraints,
        level,
    });
    codec.payload_type = VIDEO_PAYLOAD_TYPE;
    Some(codec)
}

impl Handler for RtmpEdge {
    async fn publish(
        &self,
        request: PublishRequest,
    ) -> Result<mpsc::Sender<PublisherEvent>, Refusal> {
        let PublishRequest {
            peer,
            room,
            login,
            token,
            record,
        } = request;
        let who = who(&room, &login);
        let access = self.authority.check(Some(&login), token.as_deref());
        let refused = match &access {
            Access::Refused(why) => Some(why.clone()),
            // An RTMP participant is there to publish: the room core would refuse the
            // stream with this reason, so the connection is refused at once.
            Access::Granted { publish: false, .. } => {
                Some("Restricted access: the token does not allow publishing".to_string())
            }
            _ => None,
        };
        if let Some(why) = refused {
            // The reason, never the token.
            info!("{who} ({peer}): refused: {}", escaped(&why));
            return Err(Refusal::new(why));
        }
        let key = (room.clone(), login.clone());
        if let Some(old) = self.take_running(&key) {
            info!(
                "{who}: a new publish from {peer} replaces session {}",
                old.session
            );
            let _ = old.stop.send(());
            if tokio::time::timeout(REPLACE_TIMEOUT, old.task)
                .await
                .is_err()
            {
                warn!("{who}: the replaced publisher did not leave in time");
            }
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let source = format!("rtmp-{session}");
        let feed = self
            .endpoints
            .add_source(&source, NO_MEDIA)
            .ok_or_else(busy)?;
        let (changed_tx, changed) = mpsc::channel(SOURCE_CHANGES);
        let link = Link::Local {
            source,
            changed: changed_tx,
        };
        let member = self
            .join(who, peer, session, link, (&room, &login), access)
            .await?;
        let publisher = Publisher {
            member,
            changed,
            stream: stream_name(&room, &login),
            room,
        };
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (stop_tx, stop) = oneshot::channel();
        let publishers = self.publishers.clone();
        let mine = key.clone();
        let task = tokio::spawn(async move {
            run(publisher, feed, record, events, stop).await;
            if let Ok(mut map) = publishers.lock() {
                if map.get(&mine).is_some_and(|r| r.session == session) {
                    map.remove(&mine);
                }
            }
        });
        let running = Running {
            session,
            stop: stop_tx,
            task,
        };
        if let Ok(mut map) = self.publishers.lock() {
            if let Some(other) = map.insert(key, running) {
                // Two publishes raced past each other: the older one goes.
                let _ = other.stop.send(());
            }
        }
        Ok(events_tx)
    }

    async fn play(&self, request: PlayRequest) -> Result<mpsc::Receiver<FlvTag>, Refusal> {
        let PlayRequest {
            peer,
            room,
            stream,
            token,
        } = request;
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        // The player is a member of the room like anyone watching it: under the
        // login its token was issued for, else a name of its own.
        let login = token
            .as_deref()
            .and_then(|t| self.authority.subject(t))
            .unwrap_or_else(|| format!("RTMP player {session}"));
        let who = format!(
            "rtmp player {} of {} in room {}",
            escaped(&login),
            escaped(&stream),
            escaped(&room)
        );
        let access = self.authority.check(Some(&login), token.as_deref());
        if let Access::Refused(why) = &access {
            info!("{who} ({peer}): refused: {}", escaped(why));
            return Err(Refusal::new(why.clone()));
        }
        // What cannot be played is refused before the player joins (the room sees
        // nothing): a stream nobody publishes, or one FLV cannot carry.
        let Some(codecs) = self.endpoints.codecs(&stream).await else {
            info!("{who} ({peer}): refused: no such stream");
            return Err(Refusal::not_found(StreamError::NotFound.to_string()));
        };
        if let Err(why) = egress::check(&codecs) {
            info!("{who} ({peer}): refused: {}", escaped(&why));
            return Err(Refusal::not_found(why));
        }
        let name = format!("rtmp-{session}");
        let mut attachments = self.endpoints.add_sink(&name).ok_or_else(busy)?;
        // A sink has no source changes to tell.
        let link = Link::Local {
            source: name,
            changed: mpsc::channel(1).0,
        };
        let mut member = self
            .join(who, peer, session, link, (&room, &login), access)
            .await?;
        let media_session_id = format!("rtmp-play-{session}");
        let request = StreamRequest {
            media_session_id: media_session_id.clone(),
            name: stream.clone(),
            room: Some(room),
            sdp: String::new(),
            has_audio: true,
            has_video: true,
            record: false,
        };
        let attached = if member.command(Command::Play(request)).await {
            tokio::time::timeout(
                PLAY_TIMEOUT,
                attachment(&mut attachments, &mut member, &media_session_id),
            )
            .await
            .unwrap_or_else(|_| Err(Refusal::new("The media engine did not answer in time")))
        } else {
            Err(gone())
        };
        let checked = attached.and_then(|a| match egress::check(&a.codecs) {
            Ok(()) => Ok(a),
            Err(why) => Err(Refusal::not_found(why)),
        });
        let attachment = match checked {
            Ok(a) => a,
            Err(refusal) => {
                info!("{}: refused: {}", member.who, escaped(&refusal.reason));
                member.leave(None).await;
                return Err(refusal);
            }
        };
        info!("{}: playing ({})", member.who, attachment.codecs.describe());
        let (tags_tx, tags) = mpsc::channel(PLAYER_TAGS);
        tokio::spawn(play(member, media_session_id, attachment, tags_tx));
        Ok(tags)
    }
}

fn busy() -> Refusal {
    Refusal::new("Media engine overloaded, try again")
}

fn gone() -> Refusal {
    Refusal::new("The service is stopping")
}

impl RtmpEdge {
    /// A socket-less session of the room core for an RTMP client: connected as
    /// `login` with its `access` through `link` (its endpoint in the media engine, a
    /// source or a sink), a member of `room` once the join is confirmed.
    async fn join(
        &self,
        who: String,
        peer: std::net::SocketAddr,
        session: SessionId,
        link: Link,
        (room, login): (&str, &str),
        access: Access,
    ) -> Result<Member, Refusal> {
        let who = format!("{who} ({peer})");
        // A request cancelled on the way (the connection's handler timeout) must not
        // leave a member behind: the member disconnects its session when dropped.
        let mut member = Member::connect(&self.to_core, session, who, LABEL, link, OUTBOUND)
            .await
            .map_err(|closed| Refusal::new(closed.text()))?;
        let info = ConnectInfo {
            login: Some(login.to_owned()),
            access,
            ..ConnectInfo::default()
        };
        member
            .join(info, room)
            .await
            .map_err(|e| Refusal::new(e.into_reason()))?;
        Ok(member)
    }
}

/// The player's attachment once the room core has let it play, or the reason it
/// did not (the core's FAILED status: "Stream not found" is a not-found refusal).
async fn attachment(
    attachments: &mut mpsc::Receiver<Attachment>,
    member: &mut Member,
    media_session_id: &str,
) -> Result<Attachment, Refusal> {
    loop {
        tokio::select! {
            a = attachments.recv() => return a.ok_or_else(gone),
            message = member.next() => match message {
                Err(_) => return Err(gone()),
                Ok(ServerMessage::StreamStatus(status))
                    if status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    return Err(if status.info == StreamError::NotFound.to_string() {
                        Refusal::not_found(status.info)
                    } else {
                        Refusal::new(status.info)
                    });
                }
                Ok(_) => {}
            },
        }
    }
}

/// An RTMP player's life: the stream's RTP into FLV tags for the connection
/// (`rtmp::egress`) until the stream ends (the room core stops the play), the
/// player leaves (the connection drops the tags' receiver) or the room service
/// closes the member; then the room is left.
async fn play(
    mut member: Member,
    media_session_id: String,
    attachment: Attachment,
    tags: mpsc::Sender<FlvTag>,
) {
    let key_frame = attachment.key_frame.clone();
    let egress = egress::run(attachment.codecs, attachment.packets, tags, move || {
        key_frame.request()
    });
    tokio::pin!(egress);
    let reason = loop {
        tokio::select! {
            ended = &mut egress => break match ended {
                Ok(egress::Ended::SourceEnded) => "the stream ended".to_string(),
                Ok(egress::Ended::PlayerLeft) => "the player left".to_string(),
                Err(e) => e.to_string(),
            },
            message = member.next() => match message {
                Ok(ServerMessage::StreamStatus(status))
                    if status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    break format!("the play ended: {}", status.info);
                }
                Ok(_) => {}
                Err(closed) => {
                    info!("{}: closed by the room service ({})", member.who, closed.text());
                    return;
                }
            },
        }
    };
    info!("{}: leaving the room: {}", member.who, escaped(&reason));
    member.leave(None).await;
}

/// The participant's life: media from the connection into the source, the stream
/// published once the media engine has the source's codecs, the room left at the end.
async fn run(
    publisher: Publisher,
    feed: SourceFeed,
    record: bool,
    mut events: mpsc::Receiver<PublisherEvent>,
    mut stop: oneshot::Receiver<()>,
) {
    let Publisher {
        mut member,
        mut changed,
        room,
        stream,
    } = publisher;
    let media_session_id = format!("rtmp-{}", member.session);
    let mut video: Option<Codec> = None;
    let mut audio: Option<AudioBridge> = None;
    // The codecs told to the media engine, and whether the stream is published.
    let mut announced: Option<(bool, Option<Codec>)> = None;
    let mut announced_at: Option<tokio::time::Instant> = None;
    let mut published = false;
    let reason = loop {
        if feed.take_key_frame_request() {
            // RTMP has no way to ask a publisher for a key frame: players wait for the
            // next one (the encoder's key frame interval, see README).
            debug!("{}: a player asked for a key frame", member.who);
        }
        let source_deadline = announced_at
            .filter(|_| !published)
            .map(|t| t + SOURCE_TIMEOUT);
        tokio::select! {
            event = events.recv() => match event {
                None => break "the RTMP connection ended".to_string(),
                Some(PublisherEvent::Ended { reason }) => break reason,
                Some(PublisherEvent::VideoConfig { profile_level_id }) => {
                    match video_codec(&profile_level_id) {
                        Some(codec) => video = Some(codec),
                        None => warn!(
                            "{}: unusable H.264 profile-level-id {}",
                            member.who,
                            escaped(&profile_level_id)
                        ),
                    }
                }
                Some(PublisherEvent::AudioConfig(config)) => {
                    if audio.as_ref().is_none_or(|a| a.config != config) {
                        audio = AudioBridge::start(config, feed.clone(), &member.who);
                    }
                }
                Some(PublisherEvent::Audio(frame)) => {
                    let Some(bridge) = &audio else { continue };
                    // A publisher without video (no AVC sequence header before its
                    // first audio frame) is announced with its audio alone.
                    let now = (true, None);
                    if video.is_none() && announced.as_ref() != Some(&now) {
                        if !feed.announce(Some(opus_codec()), None, String::new()).await {
                            break "the media engine is gone".to_string();
                        }
                        announced = Some(now);
                        announced_at = Some(tokio::time::Instant::now());
                    }
                    bridge.push(frame);
                }
                Some(PublisherEvent::Video { packets, .. }) => {
                    let Some(codec) = &video else { continue };
                    // What the source delivers is announced with the first video (the
                    // sequence headers of both kinds come before any frame).
                    let now = (audio.is_some(), Some(codec.clone()));
                    if announced.as_ref() != Some(&now) {
                        let audio_codec = audio.as_ref().map(|_| opus_codec());
                        if !feed
                            .announce(audio_codec, now.1.clone(), String::new())
                            .await
                        {
                            break "the media engine is gone".to_string();
                        }
                        announced = Some(now);
                        announced_at = Some(tokio::time::Instant::now());
                    }
                    for packet in packets {
                        if !feed.packet(Kind::Video, packet) {
                            feed.want_key_frame();
                        }
                    }
                }
            },
            Some((has_audio, has_video)) = changed.recv() => {
                if !published && (has_audio || has_video) {
                    let request = StreamRequest {
                        media_session_id: media_session_id.clone(),
                        name: stream.clone(),
                        room: Some(room.clone()),
                        sdp: String::new(),
                        has_audio,
                        has_video,
                        record,
                    };
                    if !member.command(Command::Publish(request)).await {
                        break "the service is stopping".to_string();
                    }
                    published = true;
                    info!(
                        "{}: publishing {} (audio: {has_audio}, video: {has_video})",
                        member.who,
                        escaped(&stream)
                    );
                }
            }
            message = member.next() => match message {
                Ok(ServerMessage::StreamStatus(status))
                    if status.published
                        && status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    break format!("the stream ended: {}", status.info);
                }
                Ok(_) => {}
                Err(closed) => {
                    info!("{}: closed by the room service ({})", member.who, closed.text());
                    return;
                }
            },
            _ = &mut stop => break "replaced by a new publish of the same room and login".to_string(),
            _ = sleep_until(source_deadline) => {
                break "the media engine did not take the stream's codecs in time".to_string();
            }
        }
    };
    info!("{}: leaving the room: {}", member.who, escaped(&reason));
    drop(audio);
    // The source (the feed) must outlive the core's handling of the unpublish, or its
    // end would reach the room first as a FAILED stream: the leave's reply says it has.
    let unpublish = published.then_some(Command::Unpublish(StreamRef {
        media_session_id,
        name: Some(stream),
    }));
    member.leave(unpublish).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The AAC → Opus transcoder of one publisher on a thread of its own; dropping the
/// bridge ends the thread (what is queued is dropped).
struct AudioBridge {
    config: AacConfig,
    frames: std_mpsc::SyncSender<AacFrame>,
}

impl AudioBridge {
    fn start(config: AacConfig, feed: SourceFeed, who: &str) -> Option<AudioBridge> {
        let transcoder = match AacToOpus::new(config) {
            Ok(t) => t,
            Err(e) => {
                warn!("{who}: no audio for the room: {e}");
                return None;
            }
        };
        let (frames, rx) = std_mpsc::sync_channel(AUDIO_FRAMES);
        let who = who.to_owned();
        let spawned = std::thread::Builder::new()
            .name("rtmp-aac-opus".into())
            .spawn(move || transcode(transcoder, rx, feed, who));
        match spawned {
            Ok(_) => Some(AudioBridge { config, frames }),
            Err(e) => {
                warn!("cannot start the AAC to Opus thread: {e}");
                None
            }
        }
    }

    fn push(&self, frame: AacFrame) {
        // A full queue drops the frame: audio must never hold up the connection.
        let _ = self.frames.try_send(frame);
    }
}

/// Pushes AAC frames into the transcoder and sends what comes out as Opus RTP
/// (48 kHz timestamps from the presentation times, so gaps stay gaps).
fn transcode(
    mut transcoder: AacToOpus,
    frames: std_mpsc::Receiver<AacFrame>,
    feed: SourceFeed,
    who: String,
) {
    let ssrc = crate::device::camera::rand_u32();
    let mut sequence = crate::device::camera::rand_u32() as u16;
    let mut origin_ms: Option<i64> = None;
    let mut dropped = 0u64;
    loop {
        match frames.recv_timeout(Duration::from_millis(10)) {
            Ok(frame) => {
                origin_ms.get_or_insert(frame.time_ms);
                if let Err(e) = transcoder.push(&frame.data, frame.time_ms) {
                    warn!("{who}: audio transcoding stopped: {e}");
                    return;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        loop {
            match transcoder.pull(Duration::ZERO) {
                Ok(Some(opus)) => {
                    let ms = origin_ms.unwrap_or(0) + opus.pts.as_millis() as i64;
                    let mut packet = RtpPacket::default();
                    packet.header.version = 2;
                    packet.header.payload_type = OPUS_PAYLOAD_TYPE;
                    packet.header.sequence_number = sequence;
                    packet.header.timestamp = (ms.wrapping_mul(48)) as u32;
                    packet.header.ssrc = ssrc;
                    packet.payload = opus.data;
                    if let Some(dbov) = opus.level {
                        // Its loudness for the room's active speaker, as the device does.
                        speaking::set_level(
                            &mut packet.header,
                            speaking::LOCAL_LEVEL_ID,
                            speaking::Level { dbov, voice: false },
                        );
                    }
                    sequence = sequence.wrapping_add(1);
                    if !feed.packet(Kind::Audio, packet) {
                        dropped += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!("{who}: audio transcoding stopped: {e}");
                    return;
                }
            }
        }
    }
    if dropped > 0 {
        info!("{who}: {dropped} Opus packets dropped (media engine busy)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Family;

    #[test]
    fn the_video_codec_comes_from_the_profile_level_id() {
        let c = video_codec("42c01f").expect("constrained baseline");
        assert_eq!(
            c.family,
            Family::H264 {
                profile: 0x42,
                constraints: 0xc0
            }
        );
        assert_eq!(c.payload_type, VIDEO_PAYLOAD_TYPE);
        assert_eq!(c.clock_rate, 90_000);
        assert!(c.fmtp.contains("profile-level-id=42c01f"), "{}", c.fmtp);
        assert!(c.fmtp.contains("packetization-mode=1"), "{}", c.fmtp);
        for bad in ["", "42c0", "42c01f00", "zzzzzz", "+42c01"] {
            assert_eq!(video_codec(bad), None, "{bad:?}");
        }
    }
}
