//! The task that owns the room core: it feeds the core session commands and timer
//! ticks in arrival order and carries the core's outputs to session sockets.
//!
//! Sends toward sessions never wait: each session has a bounded queue, and a
//! session whose queue is full is closed as too slow instead of stalling everyone.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot, watch};

use super::control::{AdminAnswer, AdminReply, AdminRequest};
use super::recording::Recordings;
use super::speaker::SpeakerWiring;
use crate::device::control::DeviceControl;
use crate::device::demand::Demand;
use crate::device::Participant;
use crate::events::{EventKind, Events};
use crate::logging::escaped;
use crate::rooms::{
    CloseReason, Command, Core, MediaEvent, MediaRequest, Notice, Output, ServerMessage, SessionId,
    Stats,
};
use crate::sfu::Sfu;

/// What session tasks tell the room core.
#[derive(Debug)]
pub enum ToCore {
    Connect {
        session: SessionId,
        outbound: mpsc::Sender<ServerMessage>,
        close: oneshot::Sender<CloseReason>,
    },
    /// A socket-less participant of another edge (an RTMP publisher): the core's
    /// messages go to `outbound` like a socket session's; its streams are fed by the
    /// media engine's named `source`, whose changes (`MediaEvent::SourceChanged`:
    /// audio, video) go to `source_changed`.
    ConnectLocal {
        session: SessionId,
        source: String,
        outbound: mpsc::Sender<ServerMessage>,
        close: oneshot::Sender<CloseReason>,
        source_changed: mpsc::Sender<(bool, bool)>,
    },
    Command {
        session: SessionId,
        command: Command,
    },
    Disconnect {
        session: SessionId,
    },
    /// Liveness probe for the service watchdog: answered with the live counts.
    Heartbeat(oneshot::Sender<Stats>),
    /// The admin API (`control::Control`).
    Admin {
        request: AdminRequest,
        reply: AdminReply,
    },
    Shutdown,
}

struct SessionHandle {
    outbound: mpsc::Sender<ServerMessage>,
    close: oneshot::Sender<CloseReason>,
    /// A local session's named source and who hears of its changes.
    source: Option<(String, mpsc::Sender<(bool, bool)>)>,
}

/// A publish or play the media engine could not even queue.
const MEDIA_BUSY: &str = "Media engine overloaded, try again";

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The device participant's session: no socket, never handed out to one (socket
/// sessions count from 1).
pub const DEVICE_SESSION: SessionId = 0;

/// Everything the driver carries outputs to.
struct Parties {
    sessions: HashMap<SessionId, SessionHandle>,
    device: Option<Participant>,
    /// What the device's speaker plays, when it has one.
    speaker: Option<SpeakerWiring>,
    recordings: Recordings,
    events: Events,
    /// When each room was created (the admin API shows it).
    created: HashMap<String, SystemTime>,
    /// Whether the device's camera delivered video at the last change (`None`: no
    /// change seen yet), for `device.camera_lost` / `device.camera_back`.
    camera: Option<bool>,
    /// Capture on demand, when the device has sources.
    capture: Option<OnDemand>,
}

/// Capture on demand: what needs the device's camera and microphone (company in a
/// room, a push or an operator's recording of its stream), and the grace timer.
pub(crate) struct OnDemand {
    control: DeviceControl,
    demand: Demand,
    /// The streams pushed now (`rtmp_push::PushRegistry::pushed_streams`).
    pushed: watch::Receiver<Vec<String>>,
    /// The registry is there (its changes are watched).
    pushes_open: bool,
    /// Rooms whose recording an operator started (admin API), until stopped or ended.
    recorded_rooms: BTreeSet<String>,
    /// Streams whose recording an operator started, until stopped or their room ends.
    recorded_streams: BTreeSet<String>,
}

impl OnDemand {
    pub(crate) fn new(
        control: DeviceControl,
        cfg: &crate::config::Device,
        pushed: watch::Receiver<Vec<String>>,
    ) -> OnDemand {
        OnDemand {
            control,
            demand: Demand::new(Duration::from_millis(cfg.capture_grace_ms), cfg.always_on),
            pushed,
            pushes_open: true,
            recorded_rooms: BTreeSet::new(),
            recorded_streams: BTreeSet::new(),
        }
    }
}

/// Who the driver carries the core's outputs to besides the sessions.
pub(crate) struct Others {
    /// The device participant, when the device has a camera or microphone.
    pub device: Option<Participant>,
    /// The device's speaker: the streams of the device's rooms to hear.
    pub speaker: Option<SpeakerWiring>,
    pub recordings: Recordings,
    pub events: Events,
    /// Capture on demand, with the device participant.
    pub capture: Option<OnDemand>,
}

pub(crate) async fn run(
    mut core: Core,
    mut inbox: mpsc::Receiver<ToCore>,
    stats: watch::Sender<Stats>,
    (sfu, mut media_events): (Sfu, mpsc::Receiver<MediaEvent>),
    others: Others,
) {
    let mut parties = Parties {
        sessions: HashMap::new(),
        device: others.device,
        speaker: others.speaker,
        recordings: others.recordings,
        events: others.events,
        created: HashMap::new(),
        camera: None,
        capture: others.capture,
    };
    if let (Some(device), Some(capture)) = (&mut parties.device, &parties.capture) {
        // Idle from the start: it joins its rooms without publishing.
        device.set_active(capture.demand.is_on());
    }
    if let Some(device) = &mut parties.device {
        core.connect_local(now(), DEVICE_SESSION, crate::device::SOURCE);
        for command in device.start() {
            core.command(now(), DEVICE_SESSION, command);
        }
        drain(&mut core, &mut parties, &sfu);
        follow_demand(&mut core, &mut parties, &sfu);
    }
    let hang_room = fault_hang_room();
    loop {
        // The device participant's timers (join retries, the capture grace) ride on
        // the core's.
        let deadline = [
            core.poll_timeout(),
            parties.device.as_ref().and_then(Participant::poll_timeout),
            parties
                .capture
                .as_ref()
                .and_then(|c| c.demand.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        let message = tokio::select! {
            m = inbox.recv() => m,
            Some(event) = media_events.recv() => {
                match event {
                    MediaEvent::SourceChanged { source, audio, video } if source == crate::device::SOURCE => {
                        if capturing(&parties) {
                            camera_event(&mut parties, video);
                        } else {
                            // Closed because idle, not lost.
                            parties.camera = None;
                        }
                        let commands = parties
                            .device
                            .as_mut()
                            .map(|d| d.device_changed(audio, video))
                            .unwrap_or_default();
                        for command in commands {
                            core.command(now(), DEVICE_SESSION, command);
                        }
                    }
                    MediaEvent::SourceChanged { source, audio, video } => {
                        let owner = parties.sessions.values().find_map(|h| {
                            h.source.as_ref().filter(|(name, _)| *name == source)
                        });
                        if let Some((_, tell)) = owner {
                            let _ = tell.try_send((audio, video));
                        }
                    }
                    event => core.media_event(now(), event),
                }
                drain(&mut core, &mut parties, &sfu);
                follow_demand(&mut core, &mut parties, &sfu);
                publish_stats(&core, &stats);
                continue;
            }
            changed = pushes_changed(&mut parties.capture) => {
                if changed.is_err() {
                    if let Some(c) = &mut parties.capture {
                        c.pushes_open = false;
                    }
                }
                follow_demand(&mut core, &mut parties, &sfu);
                publish_stats(&core, &stats);
                continue;
            }
            _ = sleep_until(deadline) => {
                let now = now();
                core.handle_timeout(now);
                let commands = parties
                    .device
                    .as_mut()
                    .map(|d| d.handle_timeout(now))
                    .unwrap_or_default();
                for command in commands {
                    core.command(now, DEVICE_SESSION, command);
                }
                drain(&mut core, &mut parties, &sfu);
                follow_demand(&mut core, &mut parties, &sfu);
                publish_stats(&core, &stats);
                continue;
            }
        };
        let Some(message) = message else { break };
        let stop = matches!(message, ToCore::Shutdown);
        match message {
            ToCore::Connect {
                session,
                outbound,
                close,
            } => {
                parties.sessions.insert(
                    session,
                    SessionHandle {
                        outbound,
                        close,
                        source: None,
                    },
                );
                core.connect(now(), session);
            }
            ToCore::ConnectLocal {
                session,
                source,
                outbound,
                close,
                source_changed,
            } => {
                core.connect_edge(now(), session, &source);
                parties.sessions.insert(
                    session,
                    SessionHandle {
                        outbound,
                        close,
                        source: Some((source, source_changed)),
                    },
                );
            }
            ToCore::Command { session, command } => {
                if let (Some(hang), Command::Join { room, .. }) = (&hang_room, &command) {
                    if hang == room {
                        hang_forever();
                    }
                }
                core.command(now(), session, command)
            }
            ToCore::Disconnect { session } => {
                parties.sessions.remove(&session);
                core.disconnect(now(), session);
            }
            ToCore::Heartbeat(reply) => {
                let _ = reply.send(core.stats());
            }
            ToCore::Admin { request, reply } => {
                let recording = recording_request(&request);
                let answer = admin(&mut core, &parties, request);
                if answer.is_ok() {
                    note_recording(&mut parties, recording);
                }
                let _ = reply.send(answer);
            }
            ToCore::Shutdown => core.shutdown(now()),
        }
        drain(&mut core, &mut parties, &sfu);
        if !stop {
            follow_demand(&mut core, &mut parties, &sfu);
        }
        publish_stats(&core, &stats);
        if stop {
            break;
        }
    }
    sfu.shutdown().await;
    // Whatever is left (sessions that raced with shutdown) is closed too.
    for (_, handle) in parties.sessions.drain() {
        let _ = handle.close.send(CloseReason::Shutdown);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn publish_stats(core: &Core, stats: &watch::Sender<Stats>) {
    let now = core.stats();
    stats.send_if_modified(|s| {
        let changed = *s != now;
        *s = now;
        changed
    });
}

/// Carries out every output of the core, including the ones produced by reacting
/// to earlier outputs (a full queue disconnects its session; media has no engine;
/// the device participant answers what it is told with commands of its own).
fn drain(core: &mut Core, parties: &mut Parties, sfu: &Sfu) {
    let sessions = &mut parties.sessions;
    while let Some(output) = core.poll_output() {
        let device_commands = match output {
            Output::Send { session, message } if session == DEVICE_SESSION => parties
                .device
                .as_mut()
                .map(|d| d.message(now(), message))
                .unwrap_or_default(),
            Output::Send { session, message } => {
                let Some(handle) = sessions.get(&session) else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = handle.outbound.try_send(message) {
                    warn!("session {session}: outbound queue full, closing");
                    if let Some(h) = sessions.remove(&session) {
                        let _ = h.close.send(CloseReason::TooSlow);
                    }
                    core.disconnect(now(), session);
                }
                continue;
            }
            Output::Close { session, reason } => {
                if let Some(h) = sessions.remove(&session) {
                    let _ = h.close.send(reason);
                }
                continue;
            }
            Output::Media(request) => {
                if let Err(request) = sfu.request(request) {
                    warn!("media engine queue full");
                    if let Some(event) = refused(*request) {
                        core.media_event(now(), event);
                    }
                }
                continue;
            }
            Output::Record {
                stream,
                room,
                login,
                whole_room,
            } => {
                parties.recordings.stream(stream, room, login, whole_room);
                continue;
            }
            Output::StopRecording { stream } => {
                parties.recordings.stop_stream(&stream);
                continue;
            }
            Output::RoomRecording { room, on } => {
                if on {
                    parties.recordings.room_started(&room);
                } else {
                    parties.recordings.room_stopped(&room);
                }
                continue;
            }
            Output::Notice(notice) => {
                if let Some(speaker) = &mut parties.speaker {
                    speaker.hearing.notice(&notice);
                }
                emit_notice(&parties.events, notice);
                continue;
            }
            Output::RoomCreated { room, record } => {
                debug!("room {}: created", escaped(&room));
                parties.created.insert(room.clone(), SystemTime::now());
                parties.events.emit(
                    EventKind::RoomCreated,
                    Some(&room),
                    serde_json::json!({ "record": record }),
                );
                if record {
                    parties.recordings.room_started(&room);
                }
                parties
                    .device
                    .as_mut()
                    .map(|d| d.room_created(&room))
                    .unwrap_or_default()
            }
            Output::RoomFinalized { room, record } => {
                info!(
                    "room {}: finalized (room recording requested: {record})",
                    escaped(&room)
                );
                if record {
                    parties.recordings.room_finalized(&room);
                }
                parties.created.remove(&room);
                if let Some(speaker) = &mut parties.speaker {
                    speaker.hearing.room_finalized(&room);
                }
                forget_recordings(&mut parties.capture, parties.device.as_ref(), &room);
                parties.events.emit(
                    EventKind::RoomFinalized,
                    Some(&room),
                    serde_json::json!({ "record": record }),
                );
                parties
                    .device
                    .as_mut()
                    .map(|d| d.room_finalized(&room))
                    .unwrap_or_default()
            }
        };
        for command in device_commands {
            core.command(now(), DEVICE_SESSION, command);
        }
    }
    if let (Some(speaker), Some(device)) = (&mut parties.speaker, &parties.device) {
        speaker.sync(device);
    }
}

/// An admin request carried out on the core; its outputs are drained by the caller.
fn admin(
    core: &mut Core,
    parties: &Parties,
    request: AdminRequest,
) -> Result<AdminAnswer, crate::rooms::AdminError> {
    let now = now();
    match request {
        AdminRequest::Snapshot => Ok(AdminAnswer::Snapshot(
            core.snapshot(),
            parties.created.clone(),
        )),
        AdminRequest::CloseRoom { room } => core.close_room(now, &room).map(|()| AdminAnswer::Done),
        AdminRequest::Kick { room, login } => {
            core.kick(now, &room, &login).map(|()| AdminAnswer::Done)
        }
        AdminRequest::Mute {
            room,
            login,
            audio,
            video,
        } => core
            .mute(&room, &login, audio, video, None)
            .map(AdminAnswer::Member),
        AdminRequest::EndStream { stream } => core.end_stream(&stream).map(|()| AdminAnswer::Done),
        AdminRequest::RecordStream { stream, on } => {
            core.record_stream(&stream, on).map(|()| AdminAnswer::Done)
        }
        AdminRequest::RecordRoom { room, on } => {
            core.record_room(&room, on).map(|()| AdminAnswer::Done)
        }
    }
}

// ----- capture on demand -------------------------------------------------------------

/// Waits until the set of pushed streams changes (forever without a registry).
async fn pushes_changed(capture: &mut Option<OnDemand>) -> Result<(), watch::error::RecvError> {
    match capture {
        Some(c) if c.pushes_open => c.pushed.changed().await,
        _ => std::future::pending().await,
    }
}

/// Whether the device's sources are to capture now (always without capture on demand).
fn capturing(parties: &Parties) -> bool {
    parties.capture.as_ref().is_none_or(|c| c.demand.is_on())
}

/// Why the device's camera and microphone are needed now, if they are.
fn why_needed(device: &Participant, capture: &OnDemand) -> Option<String> {
    if let Some(room) = device.rooms_with_company().next() {
        return Some(format!("room {}", escaped(room)));
    }
    if let Some(stream) = capture
        .pushed
        .borrow()
        .iter()
        .find(|s| device.wants_stream(s))
    {
        return Some(format!("the push of stream {}", escaped(stream)));
    }
    if let Some(room) = capture.recorded_rooms.iter().find(|r| device.is_in(r)) {
        return Some(format!("the recording of room {}", escaped(room)));
    }
    if let Some(stream) = capture
        .recorded_streams
        .iter()
        .find(|s| device.wants_stream(s))
    {
        return Some(format!("the recording of stream {}", escaped(stream)));
    }
    None
}

/// Computes what is needed after the core's outputs were carried out and applies a
/// change of the demand: capture starts at once; it stops after the grace, the
/// device's streams unpublished before its sources close (an idle device has no
/// stream; nothing fails).
fn follow_demand(core: &mut Core, parties: &mut Parties, sfu: &Sfu) {
    let (Some(device), Some(capture)) = (&mut parties.device, &mut parties.capture) else {
        return;
    };
    let why = why_needed(device, capture);
    let Some(on) = capture.demand.update(now(), why.is_some()) else {
        return;
    };
    let commands = device.set_active(on);
    match (on, why) {
        (true, Some(why)) => info!("device: capturing for {why}"),
        (true, None) => info!("device: capturing (always on)"),
        (false, _) => info!("device: idle, capture stopped"),
    }
    if on {
        capture.control.set_demand(true);
    }
    for command in commands {
        core.command(now(), DEVICE_SESSION, command);
    }
    drain(core, parties, sfu);
    if !on {
        // The streams are unpublished (the media engine has their close queued
        // before the sources' state): the sources close now.
        if let Some(capture) = &parties.capture {
            capture.control.set_demand(false);
        }
        parties.camera = None;
    }
}

/// What an admin request does to an operator's recording: (room?, name, on).
fn recording_request(request: &AdminRequest) -> Option<(bool, String, bool)> {
    match request {
        AdminRequest::RecordRoom { room, on } => Some((true, room.clone(), *on)),
        AdminRequest::RecordStream { stream, on } => Some((false, stream.clone(), *on)),
        _ => None,
    }
}

/// Remembers an operator's recording that was started (or forgets a stopped one).
fn note_recording(parties: &mut Parties, recording: Option<(bool, String, bool)>) {
    let (Some(capture), Some((room, name, on))) = (&mut parties.capture, recording) else {
        return;
    };
    let set = match room {
        true => &mut capture.recorded_rooms,
        false => &mut capture.recorded_streams,
    };
    if on {
        set.insert(name);
    } else {
        set.remove(&name);
    }
}

/// A room ended: its recordings no longer need the device.
fn forget_recordings(capture: &mut Option<OnDemand>, device: Option<&Participant>, room: &str) {
    let (Some(capture), Some(device)) = (capture, device) else {
        return;
    };
    capture.recorded_rooms.remove(room);
    capture
        .recorded_streams
        .remove(&format!("{room}-{}", device.login()));
}

/// A notice of the core as an event for the hooks.
fn emit_notice(events: &Events, notice: Notice) {
    use serde_json::json;
    let (kind, room, data) = match notice {
        Notice::Joined { room, login } => (
            EventKind::ParticipantJoined,
            room,
            json!({ "login": login }),
        ),
        Notice::Left { room, login } => {
            (EventKind::ParticipantLeft, room, json!({ "login": login }))
        }
        Notice::Published {
            room,
            login,
            stream,
        } => (
            EventKind::StreamPublished,
            room,
            json!({ "login": login, "stream": stream }),
        ),
        Notice::Unpublished {
            room,
            login,
            stream,
        } => (
            EventKind::StreamUnpublished,
            room,
            json!({ "login": login, "stream": stream }),
        ),
        Notice::Failed {
            room,
            login,
            stream,
            info,
        } => (
            EventKind::StreamFailed,
            room,
            json!({ "login": login, "stream": stream, "reason": info }),
        ),
        Notice::ActiveSpeaker {
            room,
            login,
            stream,
        } => (
            EventKind::RoomActiveSpeaker,
            room,
            json!({ "login": login, "stream": stream }),
        ),
    };
    events.emit(kind, Some(&room), data);
}

/// `device.camera_lost` / `device.camera_back` when the device's video comes and goes.
fn camera_event(parties: &mut Parties, video: bool) {
    let before = parties.camera.replace(video);
    let kind = match (before, video) {
        (Some(true), false) => EventKind::DeviceCameraLost,
        (Some(false), true) => EventKind::DeviceCameraBack,
        _ => return,
    };
    parties.events.emit(kind, None, serde_json::json!({}));
}

fn refused(request: MediaRequest) -> Option<MediaEvent> {
    match request {
        MediaRequest::Publish {
            session,
            media_session_id,
            ..
        }
        | MediaRequest::Play {
            session,
            media_session_id,
            ..
        }
        | MediaRequest::PublishExternal {
            session,
            media_session_id,
            ..
        }
        | MediaRequest::PlayExternal {
            session,
            media_session_id,
            ..
        } => Some(MediaEvent::Failed {
            session,
            media_session_id,
            info: MEDIA_BUSY.into(),
        }),
        MediaRequest::Close { .. }
        | MediaRequest::SessionClosed { .. }
        | MediaRequest::Mute { .. }
        | MediaRequest::SetLayer { .. } => None,
    }
}

/// Fault injection for the watchdog test, in debug builds only: a join to the room
/// named by `HUDDLE_FAULT_HANG_CORE_IN_ROOM` hangs this loop the way a bug would.
fn fault_hang_room() -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var("HUDDLE_FAULT_HANG_CORE_IN_ROOM").ok()
    } else {
        None
    }
}

fn hang_forever() {
    warn!("fault injection: the room core hangs now");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
