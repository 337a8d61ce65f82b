//! Whole-run invariants of the core's output (ROOM_PROTOCOL §7.2 and §9.5), checked
//! output by output: STATE is the first event of a room its receiver gets, and no event
//! (nor STATE's list) is about its receiver. Used by the core's unit tests and by the
//! `room_core` fuzz target (`crate::fuzz`).

use std::collections::HashSet;

use super::{Output, RoomEvent, ServerMessage, SessionId, StateEntry};

#[derive(Debug, Default)]
pub struct Checker {
    /// (session, room) pairs that got their STATE.
    seen_state: HashSet<(SessionId, String)>,
}

impl Checker {
    /// One output; `login` is the receiver's login (if it has one).
    pub fn check(&mut self, output: &Output, login: Option<&str>) -> Result<(), String> {
        let Output::Send {
            session,
            message: ServerMessage::Room { room, event },
        } = output
        else {
            return Ok(());
        };
        if matches!(event, RoomEvent::State(_)) {
            self.seen_state.insert((*session, room.clone()));
        } else if !self.seen_state.contains(&(*session, room.clone())) {
            return Err(format!(
                "session {session} got {event:?} in '{room}' before STATE"
            ));
        }
        let me = login.unwrap_or_default();
        let about = match event {
            RoomEvent::Joined(l) | RoomEvent::Left(l) => Some(l),
            RoomEvent::Published { login, .. }
            | RoomEvent::Unpublished { login, .. }
            | RoomEvent::Failed { login, .. } => Some(login),
            RoomEvent::Message { from, .. } => Some(from),
            // Every member hears who speaks, the speaker too.
            RoomEvent::ActiveSpeaker { .. } => None,
            RoomEvent::State(entries) => {
                for e in entries {
                    let l = match e {
                        StateEntry::Participant(l) => l,
                        StateEntry::Stream { login, .. } => login,
                    };
                    if l == me {
                        return Err(format!("STATE to session {session} lists itself"));
                    }
                }
                None
            }
        };
        if about.is_some_and(|l| l == me) {
            return Err(format!(
                "session {session} got an event about itself: {event:?}"
            ));
        }
        Ok(())
    }
}
