//! The room core: a Sans-I/O state machine that owns sessions, rooms, members, the
//! stream registry and chat.
//!
//! Inputs are method calls carrying the current time (`connect`, `command`,
//! `disconnect`, `media_event`, `handle_timeout`, `shutdown`); outputs are queued
//! and drained with `poll_output`; `poll_timeout` tells the driver when to call
//! `handle_timeout` next. There are no sockets, tasks or clocks in here, so every
//! race of the protocol (leave-then-join, disconnect during publish, idle timeout)
//! is a plain unit test with simulated time (see `tests.rs`).
//!
//! Ordering: the driver feeds one session's commands in arrival order and this core
//! handles each to completion before the next, so a `leave` has removed the member
//! before its ACCEPTED is queued and a following `join` can never see a stale login.

mod admin;
pub mod invariants;
pub mod messages;
mod room;
mod session;
mod speaker;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::auth::Access;
use crate::logging::{escaped, field};
pub use admin::{AdminError, MemberInfo, Notice, RoomInfo, Snapshot, SourceKind, StreamInfo};
pub use messages::*;
use room::{Member, Room};
use session::{Admit, Endpoint, Session, TokenBucket};
use stream::{Playback, Publication};

/// Limits and timers of the room core (from `[rooms]`, `[signalling]` and `[media]`).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long a room whose last member vanished (without leaving) is kept.
    pub idle_timeout: Duration,
    pub max_participants: usize,
    pub max_rooms: usize,
    pub max_streams_per_participant: usize,
    /// Streams published on the device at once (the board's budget).
    pub max_streams: usize,
    /// Playbacks on the device at once (the board's budget).
    pub max_players: usize,
    /// Rooms one session may be a member of at once.
    pub max_rooms_per_session: usize,
    /// Streams one session may publish at once, all its rooms together.
    pub max_streams_per_session: usize,
    /// Streams one session may play at once, all its rooms together.
    pub max_players_per_session: usize,
    /// The device participant's login: no socket session may use it (compared after
    /// trimming whitespace, ignoring case), so nobody can impersonate the device or
    /// lock it out of a room. `None`: nothing reserved.
    pub reserved_login: Option<String>,
    pub max_sessions: usize,
    /// Longest room name and login, in characters as people count them (grapheme
    /// clusters).
    pub max_name_chars: usize,
    /// Longest room name and login, in bytes of UTF-8: a protocol safety bound,
    /// checked before the characters are counted.
    pub max_name_bytes: usize,
    pub ping_interval: Duration,
    /// A session silent for this many ping intervals is dead.
    pub ping_misses: u32,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// How long a publish or play may stay without its media path up.
    pub media_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            idle_timeout: Duration::from_millis(60_000),
            max_participants: 16,
            max_rooms: 64,
            max_streams_per_participant: 2,
            max_streams: 32,
            max_players: 256,
            max_rooms_per_session: 4,
            max_streams_per_session: 4,
            max_players_per_session: 32,
            reserved_login: None,
            max_sessions: 256,
            max_name_chars: 128,
            max_name_bytes: 512,
            ping_interval: Duration::from_secs(5),
            ping_misses: 3,
            rate_per_sec: 50,
            rate_burst: 200,
            media_timeout: Duration::from_secs(15),
        }
    }
}

/// What the core asks of the media engine (the SFU). Answered with `MediaEvent`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRequest {
    Publish {
        session: SessionId,
        media_session_id: String,
        stream: String,
        room: String,
        sdp: String,
        has_audio: bool,
        has_video: bool,
        /// The other members of the room now: the codec choice considers what
        /// their browsers can decode.
        audience: Vec<SessionId>,
    },
    Play {
        session: SessionId,
        media_session_id: String,
        stream: String,
        sdp: String,
    },
    /// Release whatever the engine holds for this media session.
    Close {
        session: SessionId,
        media_session_id: String,
    },
    /// The session is gone: forget what was learned about it.
    SessionClosed { session: SessionId },
    /// A stream of a local participant: the media engine feeds it from the named
    /// source the participant stands for (the device's camera and microphone), no
    /// SDP involved.
    PublishExternal {
        session: SessionId,
        media_session_id: String,
        stream: String,
        source: String,
    },
    /// A play of a local participant of another edge (an RTMP player): the media
    /// engine attaches the named `sink` it stands for to the stream, no SDP involved.
    PlayExternal {
        session: SessionId,
        media_session_id: String,
        stream: String,
        sink: String,
    },
    /// A moderator's mute: forward (`false`) or withhold (`true`) the stream's audio
    /// and video to every sink, from now until the next `Mute` of the stream.
    Mute {
        stream: String,
        audio: bool,
        video: bool,
    },
    /// A player's simulcast layer wish (`sendData` `setLayer`): which layer of the
    /// stream its play gets, within what its bandwidth allows.
    SetLayer {
        session: SessionId,
        media_session_id: String,
        layer: VideoLayer,
    },
}

/// What the media engine reports back about a media session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The SDP answer for the client (`setRemoteSDP`).
    Answer {
        session: SessionId,
        media_session_id: String,
        sdp: String,
    },
    /// ICE and DTLS are up: PUBLISHING / PLAYING.
    Up {
        session: SessionId,
        media_session_id: String,
    },
    /// The media session failed; `info` is shown to the client.
    Failed {
        session: SessionId,
        media_session_id: String,
        info: String,
    },
    /// What a named source delivers now (for the local participant standing for it;
    /// the room core has no use for it).
    SourceChanged {
        source: String,
        audio: bool,
        video: bool,
    },
    /// A publisher's talking state changed, or a talking one's loudness (0..=127)
    /// is refreshed (`media::speaking`): the room's dominant speaker is decided here.
    Speaking {
        stream: String,
        talking: bool,
        loudness: u8,
    },
}

/// Everything the core wants done, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        session: SessionId,
        message: ServerMessage,
    },
    /// Close the session's socket. The core has already forgotten the session.
    Close {
        session: SessionId,
        reason: CloseReason,
    },
    Media(MediaRequest),
    RoomCreated {
        room: String,
        /// Created by a join with `record: true`: the whole room is recorded from now.
        record: bool,
    },
    /// A live stream to record: it was published with `record: true`, or it is a stream
    /// of a recorded room (`whole_room`).
    Record {
        stream: String,
        room: String,
        login: String,
        whole_room: bool,
    },
    /// The room ended: hooks (room recording, mixing) start here.
    RoomFinalized {
        room: String,
        record: bool,
    },
    /// Stop recording a stream (the admin API); its file is finalized.
    StopRecording {
        stream: String,
    },
    /// The admin API started (`true`) or stopped the recording of a whole room.
    RoomRecording {
        room: String,
        on: bool,
    },
    /// Something the operators' event hooks want to hear of.
    Notice(Notice),
}

/// Live counts, for `/health` and the service status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub sessions: usize,
    pub rooms: usize,
    pub participants: usize,
    pub streams: usize,
    pub players: usize,
}

/// How a publication ends.
struct Ending<'a> {
    /// Status for the publisher, `None` when its session is gone.
    publisher: Option<(StreamState, &'a str)>,
    /// Room event for the other members (only if the stream was live).
    room_event_failed: bool,
    /// `info` of the STOPPED sent to its players.
    player_info: &'a str,
}

pub struct Core {
    cfg: CoreConfig,
    sessions: HashMap<SessionId, Session>,
    rooms: HashMap<String, Room>,
    streams: HashMap<String, Publication>,
    outputs: VecDeque<Output>,
}

const NOT_CONNECTED: &str = "Session is not established: send 'connection' first";

impl Core {
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            cfg,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            streams: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            sessions: self.sessions.values().filter(|s| !s.local).count(),
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(|r| r.members.len()).sum(),
            streams: self.streams.len(),
            players: self.streams.values().map(|p| p.players.len()).sum(),
        }
    }

    /// A socket was accepted. Over `max_sessions` it is closed at once.
    pub fn connect(&mut self, now: Instant, session: SessionId) {
        if self.sessions.len() >= self.cfg.max_sessions {
            warn!(
                "session {session} refused: {} sessions (max_sessions)",
                self.sessions.len()
            );
            self.outputs.push_back(Output::Close {
                session,
                reason: CloseReason::TooManySessions,
            });
            return;
        }
        let rate = TokenBucket::new(now, self.cfg.rate_per_sec, self.cfg.rate_burst);
        self.sessions.insert(
            session,
            Session::new(session, now, self.cfg.ping_interval, rate),
        );
    }

    /// A local participant (the device): a session without a socket, exempt from
    /// pings, rate limits and `max_sessions`. It speaks the same commands; its streams
    /// are fed by the media engine's named `source`.
    pub fn connect_local(&mut self, now: Instant, session: SessionId, source: &str) {
        let rate = TokenBucket::new(now, self.cfg.rate_per_sec, self.cfg.rate_burst);
        let mut s = Session::new(session, now, self.cfg.ping_interval, rate);
        s.local = true;
        s.source = source.to_owned();
        s.reserved_ok = true;
        self.sessions.insert(session, s);
    }

    /// A local participant of another edge (an RTMP publisher): like `connect_local`,
    /// but under the rules of every client for its login (the reserved device login
    /// is refused).
    pub fn connect_edge(&mut self, now: Instant, session: SessionId, source: &str) {
        self.connect_local(now, session, source);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.reserved_ok = false;
        }
    }

    /// The socket is gone (closed, errored). Runs the disconnect cleanup.
    pub fn disconnect(&mut self, now: Instant, session: SessionId) {
        self.drop_session(now, session);
    }

    /// One request of a session, in the order the session sent it.
    pub fn command(&mut self, now: Instant, session: SessionId, command: Command) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.last_seen = now;
        if !command.is_keepalive() && !s.local {
            match s.rate.admit(now) {
                Admit::Accept => {}
                Admit::Reject => {
                    let info = format!(
                        "Too many requests: the limit is {} messages per second",
                        self.cfg.rate_per_sec
                    );
                    self.reject(session, &command, &info);
                    return;
                }
                Admit::Close => {
                    warn!("session {session}: message flood, closing");
                    self.close(now, session, CloseReason::Flood);
                    return;
                }
            }
        }
        let established = s.info.is_some();
        match command {
            Command::Pong => {}
            Command::Ping => self.send(session, ServerMessage::Pong),
            Command::Connect(info) => self.on_connect(session, info),
            Command::Rejected(reply) => self.send(session, reply),
            Command::Ignored => {}
            other if !established => self.reject(session, &other, NOT_CONNECTED),
            Command::Join {
                operation_id,
                room,
                record,
            } => {
                // On success join() queues ACCEPTED itself: it must precede STATE.
                if let Err(info) = self.join(now, session, &operation_id, &room, record) {
                    debug!(room:% = field(&room); "session {session}: join {} failed: {}", escaped(&room), escaped(&info));
                    self.send(
                        session,
                        ServerMessage::DataStatus {
                            operation_id,
                            result: Err(info),
                        },
                    );
                }
            }
            Command::Leave { operation_id, room } => {
                let result = self.leave(now, session, &room, true);
                self.send(
                    session,
                    ServerMessage::DataStatus {
                        operation_id,
                        result,
                    },
                );
            }
            Command::SendMessage {
                operation_id,
                room,
                to,
                text,
            } => {
                let result = self.send_message(session, &room, to.as_deref(), text);
                self.send(
                    session,
                    ServerMessage::DataStatus {
                        operation_id,
                        result,
                    },
                );
            }
            Command::Publish(req) => {
                if let Err(info) = self.publish(now, session, &req) {
                    debug!(stream:% = field(&req.name); "session {session}: publish {} failed: {}", escaped(&req.name), escaped(&info));
                    self.send(
                        session,
                        stream_reply(&req, true, StreamState::Failed, &info),
                    );
                }
            }
            Command::Play(req) => {
                if let Err(info) = self.play(now, session, &req) {
                    debug!(
                        "session {session}: play {} failed: {}",
                        escaped(&req.name),
                        escaped(&info)
                    );
                    self.send(
                        session,
                        stream_reply(&req, false, StreamState::Failed, &info),
                    );
                }
            }
            Command::Unpublish(r) => self.stop_endpoint(session, &r, true),
            Command::Stop(r) => self.stop_endpoint(session, &r, false),
            Command::Moderate {
                operation_id,
                room,
                login,
                action,
            } => {
                let result = self.moderate(now, session, &room, &login, action);
                self.send(
                    session,
                    ServerMessage::DataStatus {
                        operation_id,
                        result,
                    },
                );
            }
            Command::StreamEvent {
                media_session_id,
                kind,
            } => self.stream_event(session, &media_session_id, &kind),
            Command::SetLayer {
                operation_id,
                media_session_id,
                layer,
            } => {
                let result = match self.endpoint(session, &media_session_id) {
                    Some(Endpoint::Play(_)) => {
                        self.outputs
                            .push_back(Output::Media(MediaRequest::SetLayer {
                                session,
                                media_session_id,
                                layer,
                            }));
                        Ok(())
                    }
                    _ => Err("No such play".to_owned()),
                };
                self.send(
                    session,
                    ServerMessage::DataStatus {
                        operation_id,
                        result,
                    },
                );
            }
            Command::AvailableStream {
                media_session_id,
                name,
            } => {
                let available = self.streams.get(&name).is_some_and(Publication::is_live);
                let info = if available { "" } else { "Stream not found" };
                self.send(
                    session,
                    ServerMessage::AvailableStream {
                        media_session_id,
                        available,
                        info: info.to_owned(),
                    },
                );
            }
        }
    }

    /// A report from the media engine.
    pub fn media_event(&mut self, now: Instant, event: MediaEvent) {
        match event {
            MediaEvent::Answer {
                session,
                media_session_id,
                sdp,
            } => {
                if self.endpoint(session, &media_session_id).is_some() {
                    self.send(
                        session,
                        ServerMessage::RemoteSdp {
                            media_session_id,
                            sdp,
                        },
                    );
                }
            }
            MediaEvent::Up {
                session,
                media_session_id,
            } => self.media_up(session, &media_session_id),
            MediaEvent::Failed {
                session,
                media_session_id,
                info,
            } => self.media_failed(session, &media_session_id, &info),
            MediaEvent::SourceChanged { .. } => {}
            MediaEvent::Speaking {
                stream,
                talking,
                loudness,
            } => self.speaking(now, stream, talking, loudness),
        }
    }

    /// The earliest instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dead_after = self.dead_after();
        let sessions = self
            .sessions
            .values()
            .filter(|s| !s.local)
            .flat_map(|s| [s.next_ping, s.last_seen + dead_after]);
        let rooms = self.rooms.values().filter_map(|r| r.idle_deadline);
        let media = self.streams.values().flat_map(|p| {
            p.deadline
                .into_iter()
                .chain(p.players.iter().filter_map(|pl| pl.deadline))
        });
        sessions.chain(rooms).chain(media).min()
    }

    /// Runs every timer that is due at `now`: pings, dead sessions, idle rooms,
    /// media sessions that never came up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let dead_after = self.dead_after();
        let mut dead = Vec::new();
        for s in self.sessions.values_mut().filter(|s| !s.local) {
            if now >= s.last_seen + dead_after {
                dead.push(s.id);
            } else if now >= s.next_ping {
                s.next_ping = now + self.cfg.ping_interval;
                self.outputs.push_back(Output::Send {
                    session: s.id,
                    message: ServerMessage::Ping,
                });
            }
        }
        dead.sort_unstable();
        for session in dead {
            info!("session {session}: no answer to pings, closing");
            self.close(now, session, CloseReason::PingTimeout);
        }

        let mut expired: Vec<(SessionId, String)> = Vec::new();
        for p in self.streams.values() {
            if p.deadline.is_some_and(|d| now >= d) {
                expired.push((p.owner, p.media_session_id.clone()));
            }
            for pl in &p.players {
                if pl.deadline.is_some_and(|d| now >= d) {
                    expired.push((pl.session, pl.media_session_id.clone()));
                }
            }
        }
        expired.sort();
        for (session, id) in expired {
            self.outputs.push_back(Output::Media(MediaRequest::Close {
                session,
                media_session_id: id.clone(),
            }));
            self.media_failed(session, &id, "Failed by ICE timeout");
        }

        let mut idle: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.members.is_empty() && r.idle_deadline.is_some_and(|d| now >= d))
            .map(|r| r.name.clone())
            .collect();
        idle.sort();
        for room in idle {
            info!(room:% = field(&room); "room {}: idle timeout, finalizing", escaped(&room));
            self.finalize_room(&room);
        }
    }

    /// Service shutdown: every session is closed and every room finalized.
    pub fn shutdown(&mut self, _now: Instant) {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        for session in ids {
            if let Some(s) = self.sessions.remove(&session) {
                let mut endpoints: Vec<&String> = s.endpoints.keys().collect();
                endpoints.sort();
                for id in endpoints {
                    self.outputs.push_back(Output::Media(MediaRequest::Close {
                        session,
                        media_session_id: id.clone(),
                    }));
                }
            }
            self.outputs.push_back(Output::Close {
                session,
                reason: CloseReason::Shutdown,
            });
        }
        self.streams.clear();
        let mut rooms: Vec<String> = self.rooms.keys().cloned().collect();
        rooms.sort();
        for room in rooms {
            self.finalize_room(&room);
        }
    }

    // ----- commands -------------------------------------------------------------

    fn on_connect(&mut self, session: SessionId, info: ConnectInfo) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.info.is_some() {
            // A second getUserData would make the SDK join its rooms again.
            self.send(
                session,
                ServerMessage::Fail {
                    api_method: "connection".into(),
                    id: None,
                    info: "Session is already established".into(),
                },
            );
            return;
        }
        debug!(
            "session {session}: connection as {}",
            escaped(info.login.as_deref().unwrap_or(""))
        );
        s.info = Some(info.clone());
        let auth_token = uuid::Uuid::new_v4().to_string();
        self.send(
            session,
            ServerMessage::UserData(UserData { auth_token, info }),
        );
    }

    /// On success the ACCEPTED, STATE and JOINED messages are queued here, in that
    /// order; on failure nothing is queued and the caller replies FAILED.
    fn join(
        &mut self,
        now: Instant,
        session: SessionId,
        operation_id: &str,
        room_name: &str,
        record: bool,
    ) -> Result<(), String> {
        let login = self.require_login(session)?;
        self.check_name("Room name", room_name)?;
        match self.access(session) {
            Some(Access::Refused(why)) => return Err(why.clone()),
            Some(Access::Granted { rooms, .. }) if !rooms.allows(room_name) => {
                return Err(format!(
                    "Restricted access: the token does not allow room '{room_name}'"
                ))
            }
            _ => {}
        }
        self.evict_silent_namesake(now, session, room_name, &login);
        let already_member = self
            .rooms
            .get(room_name)
            .is_some_and(|r| r.has_session(session));
        let (local, joined) = self
            .sessions
            .get(&session)
            .map_or((false, 0), |s| (s.local, s.rooms.len()));
        if !already_member && !local && joined >= self.cfg.max_rooms_per_session {
            return Err(format!(
                "Too many rooms for one session: at most {} at once",
                self.cfg.max_rooms_per_session
            ));
        }
        if !already_member {
            match self.rooms.get(room_name) {
                Some(room) => {
                    if room.member_by_login(&login).is_some() {
                        return Err("Room already has user with such login".into());
                    }
                    if room.members.len() >= self.cfg.max_participants {
                        return Err(format!(
                            "Room is full: at most {} participants",
                            self.cfg.max_participants
                        ));
                    }
                }
                None => {
                    if self.rooms.len() >= self.cfg.max_rooms {
                        return Err(format!(
                            "Too many rooms on this device: at most {}",
                            self.cfg.max_rooms
                        ));
                    }
                    info!(room:% = field(room_name), login:% = field(&login); "room {}: created by {} (record: {record})", escaped(room_name), escaped(&login));
                    self.rooms.insert(
                        room_name.to_owned(),
                        Room::new(room_name.to_owned(), record),
                    );
                    self.outputs.push_back(Output::RoomCreated {
                        room: room_name.to_owned(),
                        record,
                    });
                }
            }
        }
        let state = self.state_for(room_name, session);
        let others = {
            let Some(room) = self.rooms.get_mut(room_name) else {
                return Err("Room not found".into());
            };
            room.idle_deadline = None;
            if !already_member {
                room.members.push(Member::new(login.clone(), session));
            }
            if !local {
                room.seen(session);
            }
            room.others(session)
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.rooms.insert(room_name.to_owned());
        }
        info!(room:% = field(room_name), login:% = field(&login); "room {}: {} joined", escaped(room_name), escaped(&login));
        self.send(
            session,
            ServerMessage::DataStatus {
                operation_id: operation_id.to_owned(),
                result: Ok(()),
            },
        );
        self.room_event(session, room_name, RoomEvent::State(state));
        self.tell_active_speaker(session, room_name);
        if !already_member {
            for other in others {
                self.room_event(other, room_name, RoomEvent::Joined(login.clone()));
            }
            self.notice(Notice::Joined {
                room: room_name.to_owned(),
                login,
            });
        }
        Ok(())
    }

    /// A page reloaded on a lost network leaves a half-open socket behind that would
    /// block its own login until the ping timeout. A namesake that has already missed
    /// a pong is taken for dead and closed, so the rejoin works at once.
    fn evict_silent_namesake(&mut self, now: Instant, session: SessionId, room: &str, login: &str) {
        let Some(other) = self
            .rooms
            .get(room)
            .and_then(|r| r.member_by_login(login))
            .map(|m| m.session)
            .filter(|&s| s != session)
        else {
            return;
        };
        // A local participant (the device, an RTMP publisher) has no pings to miss: it
        // is there as long as its edge says so.
        let silent_for = self
            .sessions
            .get(&other)
            .filter(|s| !s.local)
            .map(|s| now.saturating_duration_since(s.last_seen))
            .unwrap_or_default();
        if silent_for > self.cfg.ping_interval * 3 / 2 {
            info!(
                "room {}: {} rejoined; the old session {other} has been silent for {} ms, closing it",
                escaped(room),
                escaped(login),
                silent_for.as_millis()
            );
            self.close(now, other, CloseReason::PingTimeout);
        }
    }

    fn leave(
        &mut self,
        now: Instant,
        session: SessionId,
        room_name: &str,
        reply_to_leaver: bool,
    ) -> Result<(), String> {
        let is_member = self
            .rooms
            .get(room_name)
            .is_some_and(|r| r.has_session(session));
        if !is_member {
            return Err(format!("Not a member of room '{room_name}'"));
        }
        self.end_session_streams_in_room(session, room_name, reply_to_leaver);
        let Some(room) = self.rooms.get_mut(room_name) else {
            return Err(format!("Not a member of room '{room_name}'"));
        };
        let Some(member) = room.remove_session(session) else {
            return Err(format!("Not a member of room '{room_name}'"));
        };
        let others = room.others(session);
        let (empty, shared) = (room.members.is_empty(), room.shared);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.rooms.remove(room_name);
        }
        info!(room:% = field(room_name), login:% = field(&member.login); "room {}: {} left", escaped(room_name), escaped(&member.login));
        for other in others {
            self.room_event(other, room_name, RoomEvent::Left(member.login.clone()));
        }
        self.notice(Notice::Left {
            room: room_name.to_owned(),
            login: member.login.clone(),
        });
        if empty {
            if reply_to_leaver || !shared {
                // Left on purpose, or vanished from a room nobody else ever joined:
                // there is nobody to come back to it, so it does not hold a room
                // slot of the device for the idle timeout.
                self.finalize_room(room_name);
            } else if let Some(room) = self.rooms.get_mut(room_name) {
                // Vanished without leaving: keep the room for a rejoin.
                room.idle_deadline = Some(now + self.cfg.idle_timeout);
                info!(
                    "room {}: empty after a disconnect, kept for {} ms",
                    escaped(room_name),
                    self.cfg.idle_timeout.as_millis()
                );
            }
        }
        Ok(())
    }

    fn send_message(
        &mut self,
        session: SessionId,
        room_name: &str,
        to: Option<&str>,
        text: String,
    ) -> Result<(), String> {
        let login = self.require_login(session)?;
        let room = self
            .rooms
            .get(room_name)
            .filter(|r| r.has_session(session))
            .ok_or_else(|| format!("Not a member of room '{room_name}'"))?;
        let recipients: Vec<SessionId> = match to {
            Some(to) if to == login => return Err("Cannot send a message to yourself".into()),
            Some(to) => vec![
                room.member_by_login(to)
                    .ok_or_else(|| format!("Participant not found: '{to}'"))?
                    .session,
            ],
            None => room.others(session),
        };
        // One text for every recipient: the queues hold pointers, not copies.
        let text: Arc<str> = text.into();
        for r in recipients {
            self.room_event(
                r,
                room_name,
                RoomEvent::Message {
                    from: login.clone(),
                    text: Arc::clone(&text),
                },
            );
        }
        Ok(())
    }

    fn publish(
        &mut self,
        now: Instant,
        session: SessionId,
        req: &StreamRequest,
    ) -> Result<(), String> {
        let login = self.require_login(session)?;
        self.check_media_session_id(session, &req.media_session_id)?;
        match self.access(session) {
            // The token's own fault (none, expired, forged, another login), not the
            // publish right it never granted.
            Some(Access::Refused(why)) => return Err(why.clone()),
            Some(Access::Granted { publish: false, .. }) => {
                return Err("Restricted access: the token does not allow publishing".into())
            }
            _ => {}
        }
        let room = req
            .room
            .as_deref()
            .ok_or("Restricted access: a stream must name its room in custom.name")?;
        if !self.rooms.get(room).is_some_and(|r| r.has_session(session)) {
            return Err(format!("Restricted access: not a member of room '{room}'"));
        }
        let prefix = format!("{room}-{login}");
        let rest = req.name.strip_prefix(&prefix);
        if !matches!(rest, Some(r) if r.is_empty() || r.starts_with('-')) {
            return Err(format!("Stream name must start with '{prefix}-'"));
        }
        if req.name.len() > self.cfg.max_name_bytes * 3 {
            return Err("Stream name is too long".into());
        }
        if self.streams.contains_key(&req.name) {
            return Err("Stream name is already in use".into());
        }
        let own = self
            .streams
            .values()
            .filter(|p| p.owner == session && p.room == room)
            .count();
        if own >= self.cfg.max_streams_per_participant {
            return Err(format!(
                "Too many streams: at most {} per participant",
                self.cfg.max_streams_per_participant
            ));
        }
        let local = self.sessions.get(&session).is_some_and(|s| s.local);
        if !local {
            let published = self.streams.values().filter(|p| p.owner == session).count();
            if published >= self.cfg.max_streams_per_session {
                return Err(format!(
                    "Too many streams for one session: at most {} published at once",
                    self.cfg.max_streams_per_session
                ));
            }
        }
        if self.streams.len() >= self.cfg.max_streams {
            return Err(format!(
                "Too many streams on this device: at most {}",
                self.cfg.max_streams
            ));
        }
        if req.sdp.trim().is_empty() && !local {
            return Err("Missing SDP offer".into());
        }
        self.streams.insert(
            req.name.clone(),
            Publication {
                name: req.name.clone(),
                room: room.to_owned(),
                owner: session,
                login,
                media_session_id: req.media_session_id.clone(),
                has_audio: req.has_audio,
                has_video: req.has_video,
                record: req.record,
                deadline: Some(now + self.cfg.media_timeout),
                players: Vec::new(),
            },
        );
        if let Some(s) = self.sessions.get_mut(&session) {
            s.endpoints.insert(
                req.media_session_id.clone(),
                Endpoint::Publish(req.name.clone()),
            );
        }
        if local {
            let source = self
                .sessions
                .get(&session)
                .map(|s| s.source.clone())
                .unwrap_or_default();
            self.outputs
                .push_back(Output::Media(MediaRequest::PublishExternal {
                    session,
                    media_session_id: req.media_session_id.clone(),
                    stream: req.name.clone(),
                    source,
                }));
            return Ok(());
        }
        self.outputs.push_back(Output::Media(MediaRequest::Publish {
            session,
            media_session_id: req.media_session_id.clone(),
            stream: req.name.clone(),
            room: room.to_owned(),
            sdp: req.sdp.clone(),
            has_audio: req.has_audio,
            has_video: req.has_video,
            audience: self
                .rooms
                .get(room)
                .map(|r| r.others(session))
                .unwrap_or_default(),
        }));
        Ok(())
    }

    fn play(
        &mut self,
        now: Instant,
        session: SessionId,
        req: &StreamRequest,
    ) -> Result<(), String> {
        self.check_media_session_id(session, &req.media_session_id)?;
        if let Some(Access::Refused(why)) = self.access(session) {
            return Err(why.clone());
        }
        let publication = self
            .streams
            .get(&req.name)
            .filter(|p| p.is_live())
            .filter(|p| req.room.as_deref().is_none_or(|r| r == p.room))
            .ok_or("Stream not found")?;
        if !self
            .rooms
            .get(&publication.room)
            .is_some_and(|r| r.has_session(session))
        {
            return Err(format!(
                "Restricted access: not a member of room '{}'",
                publication.room
            ));
        }
        let playing = self
            .streams
            .values()
            .flat_map(|p| &p.players)
            .filter(|pl| pl.session == session)
            .count();
        if playing >= self.cfg.max_players_per_session {
            return Err(format!(
                "Too many players for one session: at most {} played at once",
                self.cfg.max_players_per_session
            ));
        }
        if self.stats().players >= self.cfg.max_players {
            return Err(format!(
                "Too many players on this device: at most {}",
                self.cfg.max_players
            ));
        }
        let local = self
            .sessions
            .get(&session)
            .filter(|s| s.local)
            .map(|s| s.source.clone());
        if req.sdp.trim().is_empty() && local.is_none() {
            return Err("Missing SDP offer".into());
        }
        let deadline = Some(now + self.cfg.media_timeout);
        if let Some(p) = self.streams.get_mut(&req.name) {
            p.players.push(Playback {
                session,
                media_session_id: req.media_session_id.clone(),
                room: req.room.clone(),
                has_audio: req.has_audio,
                has_video: req.has_video,
                deadline,
            });
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.endpoints.insert(
                req.media_session_id.clone(),
                Endpoint::Play(req.name.clone()),
            );
        }
        let request = match local {
            Some(sink) => MediaRequest::PlayExternal {
                session,
                media_session_id: req.media_session_id.clone(),
                stream: req.name.clone(),
                sink,
            },
            None => MediaRequest::Play {
                session,
                media_session_id: req.media_session_id.clone(),
                stream: req.name.clone(),
                sdp: req.sdp.clone(),
            },
        };
        self.outputs.push_back(Output::Media(request));
        Ok(())
    }

    /// `unPublishStream` / `stopStream`: idempotent, always one terminal status.
    fn stop_endpoint(&mut self, session: SessionId, r: &StreamRef, unpublish: bool) {
        match self.endpoint(session, &r.media_session_id).cloned() {
            Some(Endpoint::Publish(name)) => {
                info!(stream:% = field(&name); "stream {}: unpublished", escaped(&name));
                self.end_publication(
                    &name,
                    Ending {
                        publisher: Some((StreamState::Unpublished, "")),
                        room_event_failed: false,
                        player_info: "Stopped by publisher stop",
                    },
                );
            }
            Some(Endpoint::Play(name)) => {
                self.end_playback(
                    session,
                    &r.media_session_id,
                    &name,
                    Some((StreamState::Stopped, "Stopped by user")),
                );
            }
            None => {
                let (status, published) = if unpublish {
                    (StreamState::Unpublished, true)
                } else {
                    (StreamState::Stopped, false)
                };
                self.send(
                    session,
                    ServerMessage::StreamStatus(StreamStatus {
                        media_session_id: r.media_session_id.clone(),
                        name: r.name.clone().unwrap_or_default(),
                        published,
                        has_audio: true,
                        has_video: true,
                        status,
                        info: String::new(),
                        record: false,
                        room: None,
                    }),
                );
            }
        }
    }

    // ----- media ----------------------------------------------------------------

    fn media_up(&mut self, session: SessionId, media_session_id: &str) {
        match self.endpoint(session, media_session_id).cloned() {
            Some(Endpoint::Publish(name)) => {
                let Some(p) = self.streams.get_mut(&name) else {
                    return;
                };
                if p.deadline.take().is_none() {
                    return; // already live
                }
                let status = publication_status(p, StreamState::Publishing, "");
                let (room, login, record) = (p.room.clone(), p.login.clone(), p.record);
                info!(stream:% = field(&name), room:% = field(&room), login:% = field(&login); "stream {}: publishing in room {}", escaped(&name), escaped(&room));
                self.send(session, ServerMessage::StreamStatus(status));
                let others = self
                    .rooms
                    .get(&room)
                    .map(|r| r.others(session))
                    .unwrap_or_default();
                for other in others {
                    self.room_event(
                        other,
                        &room,
                        RoomEvent::Published {
                            login: login.clone(),
                            name: name.clone(),
                        },
                    );
                }
                self.notice(Notice::Published {
                    room: room.clone(),
                    login: login.clone(),
                    stream: name.clone(),
                });
                self.apply_mute(&room, &login, &name);
                let whole_room = self.rooms.get(&room).is_some_and(|r| r.record);
                if record || whole_room {
                    self.outputs.push_back(Output::Record {
                        stream: name,
                        room,
                        login,
                        whole_room,
                    });
                }
            }
            Some(Endpoint::Play(name)) => {
                let Some(p) = self.streams.get_mut(&name) else {
                    return;
                };
                let Some(pl) = p
                    .players
                    .iter_mut()
                    .find(|pl| pl.session == session && pl.media_session_id == media_session_id)
                else {
                    return;
                };
                if pl.deadline.take().is_none() {
                    return;
                }
                let status = playback_status(&name, pl, StreamState::Playing, "");
                self.send(session, ServerMessage::StreamStatus(status));
                self.tell_player_muted(session, media_session_id, &name);
            }
            None => {}
        }
    }

    fn media_failed(&mut self, session: SessionId, media_session_id: &str, info: &str) {
        match self.endpoint(session, media_session_id).cloned() {
            Some(Endpoint::Publish(name)) => {
                warn!(stream:% = field(&name); "stream {}: failed: {}", escaped(&name), escaped(info));
                let player_info = format!("Stopped by publisher failure: {info}");
                self.end_publication(
                    &name,
                    Ending {
                        publisher: Some((StreamState::Failed, info)),
                        room_event_failed: true,
                        player_info: &player_info,
                    },
                );
            }
            Some(Endpoint::Play(name)) => {
                debug!(
                    "session {session}: playback of {} failed: {}",
                    escaped(&name),
                    escaped(info)
                );
                self.end_playback(
                    session,
                    media_session_id,
                    &name,
                    Some((StreamState::Failed, info)),
                );
            }
            None => {}
        }
    }

    // ----- teardown -------------------------------------------------------------

    fn end_publication(&mut self, name: &str, ending: Ending<'_>) {
        let Some(p) = self.streams.remove(name) else {
            return;
        };
        self.speaker_gone(&p.room, name);
        if let Some(s) = self.sessions.get_mut(&p.owner) {
            s.endpoints.remove(&p.media_session_id);
        }
        for pl in &p.players {
            if let Some(s) = self.sessions.get_mut(&pl.session) {
                s.endpoints.remove(&pl.media_session_id);
            }
            self.outputs.push_back(Output::Media(MediaRequest::Close {
                session: pl.session,
                media_session_id: pl.media_session_id.clone(),
            }));
            if self.sessions.contains_key(&pl.session) {
                let status = playback_status(name, pl, StreamState::Stopped, ending.player_info);
                self.send(pl.session, ServerMessage::StreamStatus(status));
            }
        }
        self.outputs.push_back(Output::Media(MediaRequest::Close {
            session: p.owner,
            media_session_id: p.media_session_id.clone(),
        }));
        let failed =
            ending.room_event_failed || matches!(ending.publisher, Some((StreamState::Failed, _)));
        if p.is_live() || failed {
            let (room, login, stream) = (p.room.clone(), p.login.clone(), p.name.clone());
            self.notice(if failed {
                let info = match ending.publisher {
                    Some((_, info)) if !info.is_empty() => info,
                    _ => "The publisher vanished",
                };
                Notice::Failed {
                    room,
                    login,
                    stream,
                    info: info.to_owned(),
                }
            } else {
                Notice::Unpublished {
                    room,
                    login,
                    stream,
                }
            });
        }
        if let Some((state, info)) = ending.publisher {
            let status = publication_status(&p, state, info);
            self.send(p.owner, ServerMessage::StreamStatus(status));
        }
        if p.is_live() {
            let others = self
                .rooms
                .get(&p.room)
                .map(|r| r.others(p.owner))
                .unwrap_or_default();
            for other in others {
                let (login, name) = (p.login.clone(), p.name.clone());
                let event = if ending.room_event_failed {
                    RoomEvent::Failed { login, name }
                } else {
                    RoomEvent::Unpublished { login, name }
                };
                self.room_event(other, &p.room, event);
            }
        }
    }

    fn end_playback(
        &mut self,
        session: SessionId,
        media_session_id: &str,
        name: &str,
        reply: Option<(StreamState, &str)>,
    ) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.endpoints.remove(media_session_id);
        }
        let Some(p) = self.streams.get_mut(name) else {
            return;
        };
        let Some(pos) = p
            .players
            .iter()
            .position(|pl| pl.session == session && pl.media_session_id == media_session_id)
        else {
            return;
        };
        let pl = p.players.remove(pos);
        self.outputs.push_back(Output::Media(MediaRequest::Close {
            session,
            media_session_id: media_session_id.to_owned(),
        }));
        if let Some((state, info)) = reply {
            let status = playback_status(name, &pl, state, info);
            self.send(session, ServerMessage::StreamStatus(status));
        }
    }

    /// Ends what `session` publishes in `room` and what it plays from `room`.
    fn end_session_streams_in_room(&mut self, session: SessionId, room: &str, reply: bool) {
        let mut published: Vec<String> = self
            .streams
            .values()
            .filter(|p| p.owner == session && p.room == room)
            .map(|p| p.name.clone())
            .collect();
        published.sort();
        for name in published {
            self.end_publication(
                &name,
                Ending {
                    publisher: reply.then_some((StreamState::Unpublished, "Left the room")),
                    room_event_failed: !reply,
                    player_info: "Stopped by publisher stop",
                },
            );
        }
        let mut played: Vec<(String, String)> = self
            .streams
            .values()
            .filter(|p| p.room == room)
            .flat_map(|p| {
                p.players
                    .iter()
                    .filter(|pl| pl.session == session)
                    .map(|pl| (pl.media_session_id.clone(), p.name.clone()))
            })
            .collect();
        played.sort();
        for (id, name) in played {
            let reply = reply.then_some((StreamState::Stopped, "Left the room"));
            self.end_playback(session, &id, &name, reply);
        }
    }

    /// Closes the session's socket and runs the disconnect cleanup.
    fn close(&mut self, now: Instant, session: SessionId, reason: CloseReason) {
        if self.sessions.contains_key(&session) {
            self.outputs.push_back(Output::Close { session, reason });
            self.drop_session(now, session);
        }
    }

    /// ROOM_PROTOCOL §9.4: leave every room without replying to the gone session,
    /// end its streams, forget it. Its login is free again at once.
    fn drop_session(&mut self, now: Instant, session: SessionId) {
        // Forget the session first: nothing of the cleanup is sent to it.
        let Some(gone) = self.sessions.remove(&session) else {
            return;
        };
        for room in &gone.rooms {
            let _ = self.leave(now, session, room, false);
        }
        // Streams outside its rooms (a play of a room it has left meanwhile).
        let mut leftovers: Vec<(&String, &Endpoint)> = gone.endpoints.iter().collect();
        leftovers.sort_by(|a, b| a.0.cmp(b.0));
        for (id, endpoint) in leftovers {
            match endpoint {
                Endpoint::Publish(name) => self.end_publication(
                    name,
                    Ending {
                        publisher: None,
                        room_event_failed: true,
                        player_info: "Stopped by publisher stop",
                    },
                ),
                Endpoint::Play(name) => self.end_playback(session, id, name, None),
            }
        }
        self.outputs
            .push_back(Output::Media(MediaRequest::SessionClosed { session }));
        debug!("session {session}: gone");
    }

    fn finalize_room(&mut self, room_name: &str) {
        if let Some(room) = self.rooms.remove(room_name) {
            info!(room:% = field(room_name); "room {}: finalized", escaped(room_name));
            self.outputs.push_back(Output::RoomFinalized {
                room: room.name,
                record: room.record,
            });
        }
    }

    // ----- helpers --------------------------------------------------------------

    fn dead_after(&self) -> Duration {
        self.cfg.ping_interval * self.cfg.ping_misses.max(1)
    }

    fn endpoint(&self, session: SessionId, media_session_id: &str) -> Option<&Endpoint> {
        self.sessions.get(&session)?.endpoints.get(media_session_id)
    }

    fn access(&self, session: SessionId) -> Option<&Access> {
        self.sessions
            .get(&session)?
            .info
            .as_ref()
            .map(|i| &i.access)
    }

    fn require_login(&self, session: SessionId) -> Result<String, String> {
        let s = self.sessions.get(&session).ok_or(NOT_CONNECTED)?;
        let login = s
            .login()
            .ok_or("Login is required: connect with custom.login")?;
        self.check_name("Login", login)?;
        if let Some(reserved) = self.cfg.reserved_login.as_deref() {
            if !s.reserved_ok && same_login(login, reserved) {
                return Err(format!(
                    "Login '{}' is reserved for the device: connect with another login",
                    reserved.trim()
                ));
            }
        }
        Ok(login.to_owned())
    }

    fn check_name(&self, what: &str, name: &str) -> Result<(), String> {
        check_name(what, name, self.cfg.max_name_chars, self.cfg.max_name_bytes)
    }

    fn check_media_session_id(&self, session: SessionId, id: &str) -> Result<(), String> {
        if id.is_empty() {
            return Err("mediaSessionId is required".into());
        }
        if self.endpoint(session, id).is_some() {
            return Err("MediaSessionId is already in use".into());
        }
        Ok(())
    }

    fn send(&mut self, session: SessionId, message: ServerMessage) {
        self.outputs.push_back(Output::Send { session, message });
    }

    fn room_event(&mut self, session: SessionId, room: &str, event: RoomEvent) {
        self.send(
            session,
            ServerMessage::Room {
                room: room.to_owned(),
                event,
            },
        );
    }

    /// STATE for a joiner: every other member, by their live streams in this room
    /// or as a bare login.
    fn state_for(&self, room_name: &str, joiner: SessionId) -> Vec<StateEntry> {
        let Some(room) = self.rooms.get(room_name) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for m in room.members.iter().filter(|m| m.session != joiner) {
            let mut streams: Vec<&Publication> = self
                .streams
                .values()
                .filter(|p| p.owner == m.session && p.room == room_name && p.is_live())
                .collect();
            streams.sort_by(|a, b| a.name.cmp(&b.name));
            if streams.is_empty() {
                entries.push(StateEntry::Participant(m.login.clone()));
            } else {
                entries.extend(streams.into_iter().map(|p| StateEntry::Stream {
                    login: m.login.clone(),
                    name: p.name.clone(),
                }));
            }
        }
        entries
    }

    /// The reply a command gets when it cannot be processed at all.
    fn reject(&mut self, session: SessionId, command: &Command, info: &str) {
        let message = match command {
            Command::Join { operation_id, .. }
            | Command::Leave { operation_id, .. }
            | Command::SendMessage { operation_id, .. } => ServerMessage::DataStatus {
                operation_id: operation_id.clone(),
                result: Err(info.to_owned()),
            },
            Command::Moderate { operation_id, .. } | Command::SetLayer { operation_id, .. } => {
                ServerMessage::DataStatus {
                    operation_id: operation_id.clone(),
                    result: Err(info.to_owned()),
                }
            }
            Command::Publish(req) => stream_reply(req, true, StreamState::Failed, info),
            Command::Play(req) => stream_reply(req, false, StreamState::Failed, info),
            Command::Unpublish(r) | Command::Stop(r) => ServerMessage::Fail {
                api_method: if matches!(command, Command::Unpublish(_)) {
                    "unPublishStream".into()
                } else {
                    "stopStream".into()
                },
                id: Some(r.media_session_id.clone()),
                info: info.to_owned(),
            },
            Command::AvailableStream {
                media_session_id, ..
            } => ServerMessage::AvailableStream {
                media_session_id: media_session_id.clone(),
                available: false,
                info: info.to_owned(),
            },
            Command::Connect(_)
            | Command::Pong
            | Command::Ping
            | Command::StreamEvent { .. }
            | Command::Ignored
            | Command::Rejected(_) => ServerMessage::Fail {
                api_method: "unknown".into(),
                id: None,
                info: info.to_owned(),
            },
        };
        self.send(session, message);
    }
}

/// Whether a client's login would pass for the reserved one: equal after trimming
/// whitespace, ignoring case ("room system ", "ROOM SYSTEM"), so the device can be
/// neither locked out of a room nor impersonated with a look-alike.
/// The rule for room names and logins: not empty, not only whitespace, at most
/// `max_bytes` bytes of UTF-8 (checked first: it bounds the counting) and at most
/// `max_chars` characters as people count them (extended grapheme clusters: "é" as
/// e + U+0301, a flag or a family emoji are one each). Names are not trimmed: they are
/// identifiers, and "a " and "a" stay two rooms; the web app trims what people type.
/// Err: the text the client sees.
pub fn check_name(
    what: &str,
    name: &str,
    max_chars: usize,
    max_bytes: usize,
) -> Result<(), String> {
    use unicode_segmentation::UnicodeSegmentation;
    if name.is_empty() {
        return Err(format!("{what} is required"));
    }
    if name.chars().all(char::is_whitespace) {
        return Err(format!("{what} must not be only spaces"));
    }
    if name.len() > max_bytes {
        return Err(format!(
            "{what} is too long: at most {max_bytes} bytes of UTF-8"
        ));
    }
    if name.graphemes(true).count() > max_chars {
        return Err(format!(
            "{what} is too long: at most {max_chars} characters"
        ));
    }
    Ok(())
}

fn same_login(login: &str, reserved: &str) -> bool {
    let (a, b) = (login.trim(), reserved.trim());
    a == b || a.to_lowercase() == b.to_lowercase()
}

fn stream_reply(
    req: &StreamRequest,
    published: bool,
    status: StreamState,
    info: &str,
) -> ServerMessage {
    ServerMessage::StreamStatus(StreamStatus {
        media_session_id: req.media_session_id.clone(),
        name: req.name.clone(),
        published,
        has_audio: req.has_audio,
        has_video: req.has_video,
        status,
        info: info.to_owned(),
        record: req.record,
        room: req.room.clone(),
    })
}

fn publication_status(p: &Publication, status: StreamState, info: &str) -> StreamStatus {
    StreamStatus {
        media_session_id: p.media_session_id.clone(),
        name: p.name.clone(),
        published: true,
        has_audio: p.has_audio,
        has_video: p.has_video,
        status,
        info: info.to_owned(),
        record: p.record,
        room: Some(p.room.clone()),
    }
}

fn playback_status(name: &str, pl: &Playback, status: StreamState, info: &str) -> StreamStatus {
    StreamStatus {
        media_session_id: pl.media_session_id.clone(),
        name: name.to_owned(),
        published: false,
        has_audio: pl.has_audio,
        has_video: pl.has_video,
        status,
        info: info.to_owned(),
        record: false,
        room: pl.room.clone(),
    }
}
