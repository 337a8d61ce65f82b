//! The stream registry: every publication (a named stream of a room, fed by one
//! source) and its playbacks. Names are unique server-wide (WCS semantics).
//! Media engines attach to these entries through `MediaRequest`/`MediaEvent`;
//! the registry itself never touches media.

use std::time::Instant;

use super::messages::SessionId;

#[derive(Debug)]
pub(crate) struct Playback {
    pub session: SessionId,
    pub media_session_id: String,
    /// `custom.name` as the player sent it.
    pub room: Option<String>,
    pub has_audio: bool,
    pub has_video: bool,
    /// `Some` while the media path is not up yet: the request fails at this instant.
    pub deadline: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Publication {
    pub name: String,
    pub room: String,
    pub owner: SessionId,
    pub login: String,
    pub media_session_id: String,
    pub has_audio: bool,
    pub has_video: bool,
    pub record: bool,
    /// `Some` while the media path is not up yet (not PUBLISHING, not in STATE).
    pub deadline: Option<Instant>,
    pub players: Vec<Playback>,
}

impl Publication {
    pub fn is_live(&self) -> bool {
        self.deadline.is_none()
    }
}
