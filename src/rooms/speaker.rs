//! The active speaker of a room: the media engine's talking reports
//! (`MediaEvent::Speaking`) go to the `media::speaking::Dominance` of the stream's
//! room; a change is told to every member as the room event `ACTIVE_SPEAKER`
//! (`{"login", "name"}`, like PUBLISHED) and to the event hooks. A joiner hears the
//! current one right after its STATE.

use std::time::Instant;

use log::debug;

use super::messages::{RoomEvent, SessionId};
use super::{Core, Notice};
use crate::logging::escaped;
use crate::media::speaking::Activity;

impl Core {
    /// A report about a stream's talking (ignored unless the stream is live). A member
    /// whose audio a moderator muted is heard by nobody: it does not talk.
    pub(super) fn speaking(&mut self, now: Instant, stream: String, talking: bool, loudness: u8) {
        let Some(p) = self.streams.get(&stream).filter(|p| p.is_live()) else {
            return;
        };
        let room_name = p.room.clone();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        let muted = room
            .member_by_login(&p.login)
            .is_some_and(|m| m.muted_audio);
        let activity = Activity {
            stream,
            talking: talking && !muted,
            loudness,
        };
        // The new speaker may be another stream than the one reported about (its
        // silence lets a talker take over).
        let Some(name) = room.speaker.update(now, &activity) else {
            return;
        };
        let members: Vec<SessionId> = room.members.iter().map(|m| m.session).collect();
        let Some(login) = self.streams.get(&name).map(|p| p.login.clone()) else {
            return;
        };
        debug!(
            "room {}: active speaker {}",
            escaped(&room_name),
            escaped(&login)
        );
        for session in members {
            let event = RoomEvent::ActiveSpeaker {
                login: login.clone(),
                name: name.clone(),
            };
            self.room_event(session, &room_name, event);
        }
        self.notice(Notice::ActiveSpeaker {
            room: room_name,
            login,
            stream: name,
        });
    }

    /// The stream ended: it no longer counts as a talker of its room.
    pub(super) fn speaker_gone(&mut self, room: &str, stream: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.speaker.remove(stream);
        }
    }

    /// The room's current active speaker, if any, for a member that just joined.
    pub(super) fn tell_active_speaker(&mut self, session: SessionId, room: &str) {
        let Some(event) = self
            .active_speaker(room)
            .map(|(login, name)| RoomEvent::ActiveSpeaker {
                login: login.to_owned(),
                name: name.to_owned(),
            })
        else {
            return;
        };
        self.room_event(session, room, event);
    }

    /// The login and stream of the room's active speaker.
    pub(super) fn active_speaker(&self, room: &str) -> Option<(&str, &str)> {
        let name = self.rooms.get(room)?.speaker.current()?;
        let p = self.streams.get(name)?;
        Some((p.login.as_str(), p.name.as_str()))
    }
}
