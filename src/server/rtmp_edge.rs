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
use crate::auth::{Access, Authority};
use crate::device::camera::h264_codec;
use crate::device::h264::{ProfileLevel, RtpPacket};
use crate::device::microphone::{opus_codec, OPUS_PAYLOAD_TYPE};
use crate::logging::escaped;
use crate::media::StreamError;
use crate::media::{Codec, Kind};
use crate::rooms::{
    CloseReason, Command, ConnectInfo, ServerMessage, SessionId, StreamRef, StreamRequest,
};
use crate::rtmp::audio::AacToOpus;
use crate::rtmp::egress;
use crate::rtmp::flv::AacConfig;
use crate::rtmp::media::AacFrame;
use crate::rtmp::server::{
    FlvTag, Handler, PlayRequest, PublishRequest, PublisherEvent, Refusal, VIDEO_PAYLOAD_TYPE,
};
use crate::sfu::task::{Attachment, Endpoints, SourceFeed};

/// How long the room core may take to answer a join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the room core may take to confirm a leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
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
const JOIN_OPERATION: &str = "rtmp-join";
const LEAVE_OPERATION: &str = "rtmp-leave";

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

/// Disconnects a local session on drop unless disarmed (`to_core = None`): a local
/// session has no pings to time it out, so one must never be left behind.
struct PendingSession {
    to_core: Option<mpsc::Sender<ToCore>>,
    session: SessionId,
}

impl Drop for PendingSession {
    fn drop(&mut self) {
        if let Some(to_core) = self.to_core.take() {
            let session = self.session;
            if let Err(mpsc::error::TrySendError::Full(_)) =
                to_core.try_send(ToCore::Disconnect { session })
            {
                tokio::spawn(async move {
                    let _ = to_core.send(ToCore::Disconnect { session }).await;
                });
            }
        }
    }
}

fn who(room: &str, login: &str) -> String {
    format!(
        "rtmp publisher {} in room {}",
        escaped(login),
        escaped(room)
    )
}

/// Everything the participant task owns.
struct Member {
    who: String,
    session: SessionId,
    room: String,
    login: String,
    to_core: mpsc::Sender<ToCore>,
    outbound: mpsc::Receiver<ServerMessage>,
    close: oneshot::Receiver<CloseReason>,
    /// What the member's named source delivers now (a publisher's).
    changed: mpsc::Receiver<(bool, bool)>,
    /// Disconnects the session if the member is dropped without leaving (a play
    /// request cancelled by the connection's handler timeout).
    guard: PendingSession,
}

impl Member {
    async fn command(&self, command: Command) -> bool {
        self.to_core
            .send(ToCore::Command {
                session: self.session,
                command,
            })
            .await
            .is_ok()
    }

    /// Leaves the room and ends the session (its stream is unpublished first). The
    /// source (the feed) must outlive the core's handling of the unpublish, or its end
    /// would reach the room first as a FAILED stream: the leave's reply says it has.
    async fn leave(&mut self, published: Option<&str>) {
        if let Some(id) = published {
            self.command(Command::Unpublish(StreamRef {
                media_session_id: id.to_owned(),
                name: Some(stream_name(&self.room, &self.login)),
            }))
            .await;
        }
        let left = self
            .command(Command::Leave {
                operation_id: LEAVE_OPERATION.into(),
                room: self.room.clone(),
            })
            .await;
        if left {
            let outbound = &mut self.outbound;
            let replied = tokio::time::timeout(LEAVE_TIMEOUT, async {
                while let Some(message) = outbound.recv().await {
                    if matches!(&message, ServerMessage::DataStatus { operation_id, .. } if operation_id == LEAVE_OPERATION)
                    {
                        return;
                    }
                }
            })
            .await;
            if replied.is_err() {
                warn!("{}: the room service did not confirm the leave", self.who);
            }
        }
        let _ = self
            .to_core
            .send(ToCore::Disconnect {
                session: self.session,
            })
            .await;
        self.guard.to_core = None;
    }
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
        let member = self
            .join(who, peer, session, source, (room, login), access)
            .await?;
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (stop_tx, stop) = oneshot::channel();
        let publishers = self.publishers.clone();
        let mine = key.clone();
        let task = tokio::spawn(async move {
            run(member, feed, record, events, stop).await;
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
        let mut member = self
            .join(who, peer, session, name, (room.clone(), login), access)
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
                attachment(&mut attachments, &mut member.outbound, &media_session_id),
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
    /// `login` with its `access`, a member of `room` once the join is confirmed.
    /// `name` is its endpoint in the media engine (a source or a sink).
    async fn join(
        &self,
        who: String,
        peer: std::net::SocketAddr,
        session: SessionId,
        name: String,
        (room, login): (String, String),
        access: Access,
    ) -> Result<Member, Refusal> {
        let (outbound_tx, mut outbound) = mpsc::channel(256);
        let (close_tx, close) = oneshot::channel();
        let (changed_tx, changed) = mpsc::channel(8);
        // A request cancelled on the way (the connection's handler timeout) must not
        // leave a member behind: the guard goes with the member until it leaves.
        let pending = PendingSession {
            to_core: Some(self.to_core.clone()),
            session,
        };
        self.to_core
            .send(ToCore::ConnectLocal {
                session,
                source: name,
                outbound: outbound_tx,
                close: close_tx,
                source_changed: changed_tx,
            })
            .await
            .map_err(|_| gone())?;
        let commands = [
            Command::Connect(ConnectInfo {
                login: Some(login.clone()),
                access,
                ..ConnectInfo::default()
            }),
            Command::Join {
                operation_id: JOIN_OPERATION.into(),
                room: room.clone(),
                record: false,
            },
        ];
        for command in commands {
            self.to_core
                .send(ToCore::Command { session, command })
                .await
                .map_err(|_| gone())?;
        }
        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            while let Some(message) = outbound.recv().await {
                match message {
                    ServerMessage::DataStatus {
                        operation_id,
                        result,
                    } if operation_id == JOIN_OPERATION => return result,
                    ServerMessage::Fail { info, .. } => return Err(info),
                    _ => {}
                }
            }
            Err("The service is stopping".into())
        })
        .await
        .unwrap_or_else(|_| Err("The room service did not answer in time".into()));
        if let Err(why) = joined {
            info!("{who} ({peer}): cannot join: {}", escaped(&why));
            return Err(Refusal::new(why));
        }
        info!("{who} ({peer}): joined as session {session}");
        Ok(Member {
            guard: pending,
            who,
            session,
            room,
            login,
            to_core: self.to_core.clone(),
            outbound,
            close,
            changed,
        })
    }
}

/// The player's attachment once the room core has let it play, or the reason it
/// did not (the core's FAILED status: "Stream not found" is a not-found refusal).
async fn attachment(
    attachments: &mut mpsc::Receiver<Attachment>,
    outbound: &mut mpsc::Receiver<ServerMessage>,
    media_session_id: &str,
) -> Result<Attachment, Refusal> {
    loop {
        tokio::select! {
            a = attachments.recv() => return a.ok_or_else(gone),
            message = outbound.recv() => match message {
                None => return Err(gone()),
                Some(ServerMessage::StreamStatus(status))
                    if status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    return Err(if status.info == StreamError::NotFound.to_string() {
                        Refusal::not_found(status.info)
                    } else {
                        Refusal::new(status.info)
                    });
                }
                Some(_) => {}
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
            message = member.outbound.recv() => match message {
                None => break "the room service is gone".to_string(),
                Some(ServerMessage::StreamStatus(status))
                    if status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    break format!("the play ended: {}", status.info);
                }
                Some(_) => {}
            },
            reason = &mut member.close => {
                let why = reason.map(|r| format!("{r:?}")).unwrap_or_default();
                info!("{}: closed by the room service ({why})", member.who);
                return;
            }
        }
    };
    info!("{}: leaving the room: {}", member.who, escaped(&reason));
    member.leave(None).await;
}

/// The participant's life: media from the connection into the source, the stream
/// published once the media engine has the source's codecs, the room left at the end.
async fn run(
    mut member: Member,
    feed: SourceFeed,
    record: bool,
    mut events: mpsc::Receiver<PublisherEvent>,
    mut stop: oneshot::Receiver<()>,
) {
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
            Some((has_audio, has_video)) = member.changed.recv() => {
                if !published && (has_audio || has_video) {
                    let request = StreamRequest {
                        media_session_id: media_session_id.clone(),
                        name: stream_name(&member.room, &member.login),
                        room: Some(member.room.clone()),
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
                        escaped(&stream_name(&member.room, &member.login))
                    );
                }
            }
            message = member.outbound.recv() => match message {
                None => break "the room service is gone".to_string(),
                Some(ServerMessage::StreamStatus(status))
                    if status.published
                        && status.media_session_id == media_session_id
                        && status.status.is_terminal() =>
                {
                    break format!("the stream ended: {}", status.info);
                }
                Some(_) => {}
            },
            reason = &mut member.close => {
                let why = reason.map(|r| format!("{r:?}")).unwrap_or_default();
                info!("{}: closed by the room service ({why})", member.who);
                return;
            }
            _ = &mut stop => break "replaced by a new publish of the same room and login".to_string(),
            _ = sleep_until(source_deadline) => {
                break "the media engine did not take the stream's codecs in time".to_string();
            }
        }
    };
    info!("{}: leaving the room: {}", member.who, escaped(&reason));
    drop(audio);
    member
        .leave(published.then_some(media_session_id.as_str()))
        .await;
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
