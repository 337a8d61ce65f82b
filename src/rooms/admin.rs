//! What operators see of the room core and do to it: a snapshot of rooms, members and
//! streams (the admin API's reads), moderation (kick, mute; from the admin API or a
//! room's moderator over the Room API), closing a room, ending a stream, recording at
//! run time, and the notices the event hooks are fed from.
//!
//! Mute is the core's state (per member and room, so a stream published later starts
//! muted) carried out by the media engine (`MediaRequest::Mute`: its sinks are not
//! given that kind) and told to the stream's players and publisher as
//! `notifyStreamEvent`, which the Flashphoner SDK passes to the page's `STREAM_EVENT`
//! callback.

use std::time::Instant;

use log::info;

use super::messages::*;
use super::session::Endpoint;
use super::{Core, MediaRequest, Output};
use crate::auth::Access;
use crate::logging::{escaped, field};

/// Where a member's streams come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A browser or another WebRTC client over the Room API.
    WebRtc,
    /// The device's own camera and microphone.
    Device,
    /// An RTMP publisher or player.
    Rtmp,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::WebRtc => "webrtc",
            SourceKind::Device => "device",
            SourceKind::Rtmp => "rtmp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub login: String,
    pub kind: SourceKind,
    /// The room's creator or a token with the `moderator` claim.
    pub moderator: bool,
    pub muted_audio: bool,
    pub muted_video: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: String,
    /// The whole room is recorded.
    pub record: bool,
    /// In join order.
    pub members: Vec<MemberInfo>,
    /// The dominant speaker: login and stream.
    pub active_speaker: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    pub room: String,
    pub login: String,
    pub kind: SourceKind,
    /// Publishing (its media path is up); `false` while it is being set up.
    pub live: bool,
    pub has_audio: bool,
    pub has_video: bool,
    /// Recorded: published with `record`, started by the admin API, or in a recorded room.
    pub recording: bool,
    pub players: usize,
    pub muted_audio: bool,
    pub muted_video: bool,
}

/// The core's state for the admin API's reads, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rooms: Vec<RoomInfo>,
    pub streams: Vec<StreamInfo>,
}

/// Why an operator's request was refused (the admin API maps these to HTTP statuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// What happened, for the event hooks (`crate::events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined {
        room: String,
        login: String,
    },
    Left {
        room: String,
        login: String,
    },
    Published {
        room: String,
        login: String,
        stream: String,
    },
    Unpublished {
        room: String,
        login: String,
        stream: String,
    },
    Failed {
        room: String,
        login: String,
        stream: String,
        info: String,
    },
    /// The room's dominant speaker changed.
    ActiveSpeaker {
        room: String,
        login: String,
        stream: String,
    },
}

fn no_room(room: &str) -> AdminError {
    AdminError::NotFound(format!("Room '{room}' not found"))
}

fn no_member(room: &str, login: &str) -> AdminError {
    AdminError::NotFound(format!("Participant '{login}' not found in room '{room}'"))
}

impl Core {
    pub(super) fn notice(&mut self, notice: Notice) {
        self.outputs.push_back(Output::Notice(notice));
    }

    fn kind_of(&self, session: SessionId) -> SourceKind {
        match self.sessions.get(&session) {
            Some(s) if s.local && s.reserved_ok => SourceKind::Device,
            Some(s) if s.local => SourceKind::Rtmp,
            _ => SourceKind::WebRtc,
        }
    }

    /// Whether `session` may moderate `room`: its creator, or a token with the
    /// `moderator` claim (in open mode only the creator).
    fn is_moderator(&self, session: SessionId, room: &str) -> bool {
        let creator = self
            .rooms
            .get(room)
            .is_some_and(|r| r.creator() == Some(session));
        let claim = matches!(
            self.access(session),
            Some(Access::Granted {
                moderator: true,
                ..
            })
        );
        creator || claim
    }

    /// Rooms, members and streams as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let mut rooms: Vec<RoomInfo> = self
            .rooms
            .values()
            .map(|r| RoomInfo {
                name: r.name.clone(),
                record: r.record,
                members: r
                    .members
                    .iter()
                    .map(|m| MemberInfo {
                        login: m.login.clone(),
                        kind: self.kind_of(m.session),
                        moderator: self.is_moderator(m.session, &r.name),
                        muted_audio: m.muted_audio,
                        muted_video: m.muted_video,
                    })
                    .collect(),
                active_speaker: self
                    .active_speaker(&r.name)
                    .map(|(login, stream)| (login.to_owned(), stream.to_owned())),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        let mut streams: Vec<StreamInfo> = self
            .streams
            .values()
            .map(|p| {
                let room = self.rooms.get(&p.room);
                let member = room.and_then(|r| r.member_by_login(&p.login));
                StreamInfo {
                    name: p.name.clone(),
                    room: p.room.clone(),
                    login: p.login.clone(),
                    kind: self.kind_of(p.owner),
                    live: p.is_live(),
                    has_audio: p.has_audio,
                    has_video: p.has_video,
                    recording: p.is_live() && (p.record || room.is_some_and(|r| r.record)),
                    players: p.players.len(),
                    muted_audio: member.is_some_and(|m| m.muted_audio),
                    muted_video: member.is_some_and(|m| m.muted_video),
                }
            })
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot { rooms, streams }
    }

    /// Removes a member: its session is closed (a WebSocket close, or the end of an
    /// RTMP connection) and the room sees LEFT. The device cannot be kicked (it would
    /// join again); switch its camera and microphone off instead.
    pub fn kick(&mut self, now: Instant, room: &str, login: &str) -> Result<(), AdminError> {
        let r = self.rooms.get(room).ok_or_else(|| no_room(room))?;
        let member = r
            .member_by_login(login)
            .ok_or_else(|| no_member(room, login))?;
        let session = member.session;
        if self.kind_of(session) == SourceKind::Device {
            return Err(AdminError::Conflict(
                "The device participant cannot be kicked: switch its camera and microphone off instead".into(),
            ));
        }
        info!(room:% = field(room), login:% = field(login); "room {}: {} kicked", escaped(room), escaped(login));
        self.close(now, session, CloseReason::Kicked);
        Ok(())
    }

    /// Closes a room: every member's session is closed (the device only leaves it) and
    /// the room is finalized at once.
    pub fn close_room(&mut self, now: Instant, room: &str) -> Result<(), AdminError> {
        let r = self.rooms.get(room).ok_or_else(|| no_room(room))?;
        let members: Vec<SessionId> = r.members.iter().map(|m| m.session).collect();
        info!(room:% = field(room); "room {}: closed by the administrator", escaped(room));
        for session in members {
            if self.kind_of(session) == SourceKind::Device {
                let _ = self.leave(now, session, room, true);
            } else {
                self.close(now, session, CloseReason::RoomClosed);
            }
        }
        self.finalize_room(room);
        Ok(())
    }

    /// Mutes (`Some(true)`) or unmutes (`Some(false)`) a member's audio and/or video in
    /// a room: its streams there, now and later. `by`: the moderator's login (`None`:
    /// the administrator).
    pub fn mute(
        &mut self,
        room: &str,
        login: &str,
        audio: Option<bool>,
        video: Option<bool>,
        by: Option<&str>,
    ) -> Result<MemberInfo, AdminError> {
        let r = self.rooms.get_mut(room).ok_or_else(|| no_room(room))?;
        let member = r
            .members
            .iter_mut()
            .find(|m| m.login == login)
            .ok_or_else(|| no_member(room, login))?;
        let before = (member.muted_audio, member.muted_video);
        member.muted_audio = audio.unwrap_or(member.muted_audio);
        member.muted_video = video.unwrap_or(member.muted_video);
        let after = (member.muted_audio, member.muted_video);
        let session = member.session;
        if before != after {
            info!(room:% = field(room), login:% = field(login); "room {}: {} muted: audio {}, video {} (by {})", escaped(room), escaped(login), after.0, after.1, escaped(by.unwrap_or("the administrator")));
            let streams: Vec<String> = self
                .streams
                .values()
                .filter(|p| p.room == room && p.owner == session && p.is_live())
                .map(|p| p.name.clone())
                .collect();
            for stream in streams {
                self.outputs.push_back(Output::Media(MediaRequest::Mute {
                    stream: stream.clone(),
                    audio: after.0,
                    video: after.1,
                }));
                let mut kinds = Vec::new();
                if before.0 != after.0 {
                    kinds.push(if after.0 {
                        "audioMuted"
                    } else {
                        "audioUnmuted"
                    });
                }
                if before.1 != after.1 {
                    kinds.push(if after.1 {
                        "videoMuted"
                    } else {
                        "videoUnmuted"
                    });
                }
                for kind in kinds {
                    self.tell_stream_event(&stream, kind, by, true);
                }
            }
        }
        Ok(MemberInfo {
            login: login.to_owned(),
            kind: self.kind_of(session),
            moderator: self.is_moderator(session, room),
            muted_audio: after.0,
            muted_video: after.1,
        })
    }

    /// Ends a stream as if its publisher had unpublished it; its players are stopped.
    pub fn end_stream(&mut self, stream: &str) -> Result<(), AdminError> {
        if !self.streams.contains_key(stream) {
            return Err(AdminError::NotFound(format!("Stream '{stream}' not found")));
        }
        info!(stream:% = field(stream); "stream {}: ended by the administrator", escaped(stream));
        self.end_publication(
            stream,
            super::Ending {
                publisher: Some((StreamState::Unpublished, "Stopped by the administrator")),
                room_event_failed: false,
                player_info: "Stopped by the administrator",
            },
        );
        Ok(())
    }

    /// Starts or stops recording one live stream.
    pub fn record_stream(&mut self, stream: &str, on: bool) -> Result<(), AdminError> {
        let p = self
            .streams
            .get_mut(stream)
            .filter(|p| p.is_live())
            .ok_or_else(|| AdminError::NotFound(format!("Stream '{stream}' not found")))?;
        let whole_room = self.rooms.get(&p.room).is_some_and(|r| r.record);
        let recording = p.record || whole_room;
        if on && !recording {
            p.record = true;
            let output = Output::Record {
                stream: p.name.clone(),
                room: p.room.clone(),
                login: p.login.clone(),
                whole_room: false,
            };
            self.outputs.push_back(output);
        } else if !on && recording {
            if whole_room {
                return Err(AdminError::Conflict(format!(
                    "Stream '{stream}' is recorded with its whole room: stop the room's recording"
                )));
            }
            p.record = false;
            self.outputs.push_back(Output::StopRecording {
                stream: stream.to_owned(),
            });
        }
        Ok(())
    }

    /// Starts or stops recording a whole room (every stream in it, mixed when it ends).
    pub fn record_room(&mut self, room: &str, on: bool) -> Result<(), AdminError> {
        let r = self.rooms.get_mut(room).ok_or_else(|| no_room(room))?;
        if r.record == on {
            return Ok(());
        }
        r.record = on;
        self.outputs.push_back(Output::RoomRecording {
            room: room.to_owned(),
            on,
        });
        let mut live: Vec<(String, String, bool)> = self
            .streams
            .values()
            .filter(|p| p.room == room && p.is_live())
            .map(|p| (p.name.clone(), p.login.clone(), p.record))
            .collect();
        live.sort();
        for (stream, login, own) in live {
            if on {
                self.outputs.push_back(Output::Record {
                    stream,
                    room: room.to_owned(),
                    login,
                    whole_room: true,
                });
            } else if !own {
                self.outputs.push_back(Output::StopRecording { stream });
            }
        }
        Ok(())
    }

    /// A room member's `kick` or `mute` over the Room API.
    pub(super) fn moderate(
        &mut self,
        now: Instant,
        session: SessionId,
        room: &str,
        login: &str,
        action: Moderation,
    ) -> Result<(), String> {
        let me = self.require_login(session)?;
        if !self.rooms.get(room).is_some_and(|r| r.has_session(session)) {
            return Err(format!("Not a member of room '{room}'"));
        }
        if !self.is_moderator(session, room) {
            return Err(
                "Restricted access: only the room's creator or a moderator may do this".into(),
            );
        }
        if login == me {
            return Err("A moderator cannot kick or mute itself".into());
        }
        match action {
            Moderation::Kick => self.kick(now, room, login),
            Moderation::Mute { audio, video } => {
                self.mute(room, login, audio, video, Some(&me)).map(|_| ())
            }
        }
        .map_err(|e| e.to_string())
    }

    /// A publisher's own `sendStreamEvent` (the SDK's mute buttons): its players hear
    /// of it.
    pub(super) fn stream_event(&mut self, session: SessionId, media_session_id: &str, kind: &str) {
        let kind = match kind {
            "audioMuted" => "audioMuted",
            "audioUnmuted" => "audioUnmuted",
            "videoMuted" => "videoMuted",
            "videoUnmuted" => "videoUnmuted",
            _ => return,
        };
        if let Some(Endpoint::Publish(stream)) = self.endpoint(session, media_session_id).cloned() {
            self.tell_stream_event(&stream, kind, None, false);
        }
    }

    /// `notifyStreamEvent` to every player of a stream (and to its publisher when a
    /// moderator did it).
    fn tell_stream_event(
        &mut self,
        stream: &str,
        kind: &'static str,
        by: Option<&str>,
        publisher_too: bool,
    ) {
        let Some(p) = self.streams.get(stream) else {
            return;
        };
        let by = by.map(str::to_owned).or_else(|| {
            // The administrator: named as such so a page can tell it from a self-mute.
            publisher_too.then(|| "administrator".to_owned())
        });
        let mut to: Vec<(SessionId, String)> = p
            .players
            .iter()
            .map(|pl| (pl.session, pl.media_session_id.clone()))
            .collect();
        if publisher_too {
            to.push((p.owner, p.media_session_id.clone()));
        }
        let login = p.login.clone();
        for (session, media_session_id) in to {
            self.send(
                session,
                ServerMessage::StreamEvent {
                    media_session_id,
                    kind,
                    stream: stream.to_owned(),
                    login: login.clone(),
                    by: by.clone(),
                },
            );
        }
    }

    /// A player that came up on a muted stream is told so.
    pub(super) fn tell_player_muted(
        &mut self,
        session: SessionId,
        media_session_id: &str,
        stream: &str,
    ) {
        let Some(p) = self.streams.get(stream) else {
            return;
        };
        let Some(m) = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.member_by_login(&p.login))
        else {
            return;
        };
        let kinds: Vec<&'static str> =
            [(m.muted_audio, "audioMuted"), (m.muted_video, "videoMuted")]
                .into_iter()
                .filter_map(|(muted, kind)| muted.then_some(kind))
                .collect();
        let login = p.login.clone();
        for kind in kinds {
            self.send(
                session,
                ServerMessage::StreamEvent {
                    media_session_id: media_session_id.to_owned(),
                    kind,
                    stream: stream.to_owned(),
                    login: login.clone(),
                    by: Some("moderator".into()),
                },
            );
        }
    }

    /// A stream that went live for a muted member is muted in the media engine too.
    pub(super) fn apply_mute(&mut self, room: &str, login: &str, stream: &str) {
        let Some(m) = self.rooms.get(room).and_then(|r| r.member_by_login(login)) else {
            return;
        };
        if m.muted_audio || m.muted_video {
            let (audio, video) = (m.muted_audio, m.muted_video);
            self.outputs.push_back(Output::Media(MediaRequest::Mute {
                stream: stream.to_owned(),
                audio,
                video,
            }));
        }
    }
}
