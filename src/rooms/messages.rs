//! The typed vocabulary between sessions and the room core.
//!
//! `Command` is what a session asks for (already parsed from the wire by
//! `signalling::wire`); `ServerMessage` is what the core tells a session. Neither
//! knows about JSON: the signalling edge owns that translation, so the core can be
//! driven and inspected directly in tests.
//!
//! A chat text is the one payload a client can make large (up to the frame limit)
//! that the core fans out to many sessions: it is held as `Arc<str>`, so a broadcast
//! to N members queues N pointers to one text, not N copies.

use std::sync::Arc;

/// Identifies one signalling session (one WebSocket connection).
pub type SessionId = u64;

/// The `connection` message: who the session is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectInfo {
    /// `custom.login`: the participant's identity in every room.
    pub login: Option<String>,
    /// `custom.token`; kept for token authentication (not checked yet).
    pub token: Option<String>,
    pub app_key: Option<String>,
    pub client_version: Option<String>,
    pub client_os_version: Option<String>,
    pub client_browser_version: Option<String>,
    /// What the token allows; decided by the edge (it has the keys and the clock).
    pub access: crate::auth::Access,
}

/// A `publishStream` or `playStream` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub media_session_id: String,
    pub name: String,
    /// `custom.name`: the room this stream belongs to.
    pub room: Option<String>,
    pub sdp: String,
    pub has_audio: bool,
    pub has_video: bool,
    pub record: bool,
}

/// An `unPublishStream` or `stopStream` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub media_session_id: String,
    pub name: Option<String>,
}

/// One request from a session, in the order the session sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Connect(ConnectInfo),
    /// The client's answer to our ping.
    Pong,
    /// A client-initiated ping (SDK option `pingInterval`).
    Ping,
    Join {
        operation_id: String,
        room: String,
        record: bool,
    },
    Leave {
        operation_id: String,
        room: String,
    },
    SendMessage {
        operation_id: String,
        room: String,
        /// `None` broadcasts to every other member.
        to: Option<String>,
        text: String,
    },
    Publish(StreamRequest),
    Play(StreamRequest),
    Unpublish(StreamRef),
    Stop(StreamRef),
    /// Moderation (`sendData` command `kick` or `mute`): allowed to the room's creator
    /// and to tokens with the `moderator` claim.
    Moderate {
        operation_id: String,
        room: String,
        login: String,
        action: Moderation,
    },
    /// `sendStreamEvent` of a publisher (the SDK's own mute buttons): `kind` is
    /// `audioMuted`, `audioUnmuted`, `videoMuted` or `videoUnmuted`; passed on to the
    /// stream's players as `notifyStreamEvent`.
    StreamEvent {
        media_session_id: String,
        kind: String,
    },
    /// `availableStream`: does a stream of that name exist?
    AvailableStream {
        media_session_id: String,
        name: String,
    },
    /// A known message the room logic has no use for (`sendStreamEvent`, `pushLogs`, ...).
    Ignored,
    /// A frame the wire layer could not turn into a command. The reply is decided by
    /// the wire layer (it knows which ids the frame carried) but is sent through the
    /// core so the session's replies keep their order.
    Rejected(ServerMessage),
    /// `sendData` `setLayer` (Huddle's own; the Flashphoner SDK never sends it): which
    /// simulcast layer one of the session's plays should get.
    SetLayer {
        operation_id: String,
        media_session_id: String,
        layer: VideoLayer,
    },
}

impl Command {
    /// Keepalive traffic is exempt from the message-rate limit.
    pub fn is_keepalive(&self) -> bool {
        matches!(self, Command::Pong | Command::Ping)
    }
}

/// What a moderator does to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moderation {
    /// Close the member's session (the room sees LEFT).
    Kick,
    /// Stop (`true`) or resume (`false`) forwarding the member's audio and/or video to
    /// every player; `None` leaves that kind as it is.
    Mute {
        audio: Option<bool>,
        video: Option<bool>,
    },
}

/// One entry of a `STATE` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEntry {
    /// A member who publishes nothing.
    Participant(String),
    /// A live stream of a member.
    Stream { login: String, name: String },
}

/// Room events (`OnDataEvent` payloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    State(Vec<StateEntry>),
    Joined(String),
    Left(String),
    Published {
        login: String,
        name: String,
    },
    Unpublished {
        login: String,
        name: String,
    },
    Failed {
        login: String,
        name: String,
    },
    /// Chat. The text is shared by every recipient's copy of the event.
    Message {
        from: String,
        text: Arc<str>,
    },
    /// The room's dominant speaker changed: `login` talks in stream `name`. Not a
    /// WCS event: the Flashphoner SDK ignores event names it does not know.
    ActiveSpeaker {
        login: String,
        name: String,
    },
}

impl RoomEvent {
    pub fn name(&self) -> &'static str {
        match self {
            RoomEvent::State(_) => "STATE",
            RoomEvent::Joined(_) => "JOINED",
            RoomEvent::Left(_) => "LEFT",
            RoomEvent::Published { .. } => "PUBLISHED",
            RoomEvent::Unpublished { .. } => "UNPUBLISHED",
            RoomEvent::Failed { .. } => "FAILED",
            RoomEvent::Message { .. } => "MESSAGE",
            RoomEvent::ActiveSpeaker { .. } => "ACTIVE_SPEAKER",
        }
    }
}

/// Stream statuses the server sends (`STREAM_STATUS` of the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Pending,
    Publishing,
    Playing,
    Unpublished,
    Stopped,
    Failed,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Pending => "PENDING",
            StreamState::Publishing => "PUBLISHING",
            StreamState::Playing => "PLAYING",
            StreamState::Unpublished => "UNPUBLISHED",
            StreamState::Stopped => "STOPPED",
            StreamState::Failed => "FAILED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StreamState::Unpublished | StreamState::Stopped | StreamState::Failed
        )
    }
}

/// The full stream object of a `notifyStreamStatusEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub media_session_id: String,
    pub name: String,
    /// `true` for a publish, `false` for a play.
    pub published: bool,
    pub has_audio: bool,
    pub has_video: bool,
    pub status: StreamState,
    pub info: String,
    pub record: bool,
    /// `custom.name`.
    pub room: Option<String>,
}

/// The `getUserData` reply to `connection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    pub auth_token: String,
    pub info: ConnectInfo,
}

/// Everything the core sends to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    UserData(UserData),
    Ping,
    Pong,
    /// `DataStatusEvent`: the one reply to a `sendData`; `Err` carries the info text.
    DataStatus {
        operation_id: String,
        result: Result<(), String>,
    },
    Room {
        room: String,
        event: RoomEvent,
    },
    StreamStatus(StreamStatus),
    /// `setRemoteSDP`: the answer to a publish or play offer.
    RemoteSdp {
        media_session_id: String,
        sdp: String,
    },
    /// `availableStream` reply.
    AvailableStream {
        media_session_id: String,
        available: bool,
        info: String,
    },
    /// `notifyStreamEvent`: a stream's mute state changed (`kind`: `audioMuted`,
    /// `audioUnmuted`, `videoMuted`, `videoUnmuted`), sent to its players (with their
    /// own media session id) and to its publisher. `by`: the moderator's login, or
    /// `None` when the publisher muted itself.
    StreamEvent {
        media_session_id: String,
        kind: &'static str,
        stream: String,
        login: String,
        by: Option<String>,
    },
    /// `fail`: a request that cannot be answered any other way (malformed frame,
    /// unknown message). The SDK shows it through its WARN callback.
    Fail {
        api_method: String,
        id: Option<String>,
        info: String,
    },
}

/// Why the core wants a session's socket closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No frame for several ping intervals.
    PingTimeout,
    /// The session kept sending after its rate limit rejected it.
    Flood,
    /// `[signalling] max_sessions` reached.
    TooManySessions,
    /// The session does not read what we send: its outbound queue or byte budget is
    /// full, or a write timed out.
    TooSlow,
    /// The service is stopping.
    Shutdown,
    /// A moderator or the admin API removed the participant.
    Kicked,
    /// The admin API closed the room the session was in.
    RoomClosed,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::PingTimeout | CloseReason::Shutdown => 1001,
            CloseReason::Flood | CloseReason::TooSlow => 1008,
            CloseReason::TooManySessions => 1013,
            CloseReason::Kicked | CloseReason::RoomClosed => 1000,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::PingTimeout => "Ping timeout",
            CloseReason::Flood => "Message rate limit exceeded",
            CloseReason::TooManySessions => "Too many sessions, try again later",
            CloseReason::TooSlow => "Client does not read its messages",
            CloseReason::Shutdown => "Server shutting down",
            CloseReason::Kicked => "Removed from the room by a moderator",
            CloseReason::RoomClosed => "The room was closed",
        }
    }
}

/// A simulcast layer a player asks for: `Low` for a small tile, `High` for the focused
/// one, `Auto` the highest its bandwidth allows (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoLayer {
    Auto,
    Low,
    Medium,
    High,
}

impl VideoLayer {
    /// `auto`, `low`, `medium`, `high` (the wire's words).
    pub fn parse(word: &str) -> Option<VideoLayer> {
        match word {
            "auto" => Some(VideoLayer::Auto),
            "low" => Some(VideoLayer::Low),
            "medium" => Some(VideoLayer::Medium),
            "high" => Some(VideoLayer::High),
            _ => None,
        }
    }
}
