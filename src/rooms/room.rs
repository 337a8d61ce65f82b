//! A room: its members in join order and its lifecycle. Streams live in the
//! stream registry (`stream.rs`) and point at their room by name.

use std::time::Instant;

use super::messages::SessionId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub login: String,
    pub session: SessionId,
    /// Muted by a moderator: that kind of its streams in this room is not forwarded.
    pub muted_audio: bool,
    pub muted_video: bool,
}

impl Member {
    pub fn new(login: String, session: SessionId) -> Member {
        Member {
            login,
            session,
            muted_audio: false,
            muted_video: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Room {
    pub name: String,
    /// In join order, so STATE lists participants the way they arrived.
    pub members: Vec<Member>,
    /// The creator joined with `record: true`: the whole room is recorded.
    pub record: bool,
    /// Set when the last member vanished without leaving: the room is finalized
    /// at this instant unless somebody joins first.
    pub idle_deadline: Option<Instant>,
    /// The first socket session that joined (the device participant not counted).
    first: Option<SessionId>,
    /// A second socket session has joined at some point: the room is somebody's
    /// meeting, worth keeping for a rejoin when its last member vanishes. A room only
    /// one session ever saw is finalized as soon as that session is gone.
    pub shared: bool,
    /// Who talks, and the dominant speaker (`speaker.rs`).
    pub speaker: crate::media::speaking::Dominance,
}

impl Room {
    pub fn new(name: String, record: bool) -> Self {
        Room {
            name,
            members: Vec::new(),
            record,
            idle_deadline: None,
            first: None,
            shared: false,
            speaker: Default::default(),
        }
    }

    /// A socket session joined.
    pub fn seen(&mut self, session: SessionId) {
        match self.first {
            None => self.first = Some(session),
            Some(first) if first != session => self.shared = true,
            Some(_) => {}
        }
    }

    /// The first socket session that joined: it may moderate the room.
    pub fn creator(&self) -> Option<SessionId> {
        self.first
    }

    pub fn has_session(&self, session: SessionId) -> bool {
        self.members.iter().any(|m| m.session == session)
    }

    pub fn member_by_login(&self, login: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.login == login)
    }

    pub fn remove_session(&mut self, session: SessionId) -> Option<Member> {
        let pos = self.members.iter().position(|m| m.session == session)?;
        Some(self.members.remove(pos))
    }

    /// Sessions of every member except `except`.
    pub fn others(&self, except: SessionId) -> Vec<SessionId> {
        self.members
            .iter()
            .filter(|m| m.session != except)
            .map(|m| m.session)
            .collect()
    }
}
