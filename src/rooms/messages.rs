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
}

impl Command {
    /// Keepalive traffic is exempt from the message-rate limit.
    pub fn is_keepalive(&self) -> bool {
        matches!(self, Command::Pong | Command::Ping)
    }
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
    /// `fail`: a request that cannot be answered any other way (malformed frame,
    /// unknown message). The SDK shows it through its WARN callback.
    Fail {
        api_method: String,
        id: Option<String>,
        info: String,
    },
}

impl ServerMessage {
    /// A cheap upper bound of this message's rendered frame size in bytes (what
    /// `signalling::wire::render_server_message` produces): every string's JSON-escaped
    /// length plus a constant that covers the largest frame skeleton. For a per-session
    /// outbound byte budget; O(length of the strings), no allocation.
    pub fn approx_bytes(&self) -> usize {
        let strings = match self {
            ServerMessage::UserData(u) => {
                json_len(&u.auth_token)
                    + opt_json_len(&u.info.login)
                    + opt_json_len(&u.info.app_key)
                    + opt_json_len(&u.info.client_version)
                    + opt_json_len(&u.info.client_os_version)
                    + opt_json_len(&u.info.client_browser_version)
            }
            ServerMessage::Ping | ServerMessage::Pong => 0,
            ServerMessage::DataStatus {
                operation_id,
                result,
            } => json_len(operation_id) + result.as_ref().err().map_or(0, |e| json_len(e)),
            ServerMessage::Room { room, event } => json_len(room) + event.approx_bytes(),
            ServerMessage::StreamStatus(s) => {
                json_len(&s.media_session_id)
                    + json_len(&s.name)
                    + json_len(&s.info)
                    + opt_json_len(&s.room)
            }
            ServerMessage::RemoteSdp {
                media_session_id,
                sdp,
            } => json_len(media_session_id) + json_len(sdp),
            ServerMessage::AvailableStream {
                media_session_id,
                info,
                ..
            } => json_len(media_session_id) + json_len(info),
            ServerMessage::Fail {
                api_method,
                id,
                info,
            } => json_len(api_method) + opt_json_len(id) + json_len(info),
        };
        FRAME_SKELETON_BYTES + strings
    }
}

impl RoomEvent {
    fn approx_bytes(&self) -> usize {
        match self {
            RoomEvent::State(entries) => entries
                .iter()
                .map(|e| {
                    STATE_ENTRY_BYTES
                        + match e {
                            StateEntry::Participant(login) => json_len(login),
                            StateEntry::Stream { login, name } => json_len(login) + json_len(name),
                        }
                })
                .sum(),
            RoomEvent::Joined(login) | RoomEvent::Left(login) => json_len(login),
            RoomEvent::Published { login, name }
            | RoomEvent::Unpublished { login, name }
            | RoomEvent::Failed { login, name } => json_len(login) + json_len(name),
            RoomEvent::Message { from, text } => json_len(from) + json_len(text),
        }
    }
}

/// Everything of a rendered frame but its strings, for the largest frame (a stream
/// status with its fixed fields, or `getUserData`), with room to spare.
const FRAME_SKELETON_BYTES: usize = 512;
/// The punctuation and keys of one `STATE` entry (`{"login":…,"name":…},`).
const STATE_ENTRY_BYTES: usize = 32;

/// The length of `s` as a JSON string literal: quotes, `\"` and `\\` as two bytes,
/// control characters counted as the six of `\u00XX` (an upper bound: some have
/// two-byte escapes). Other characters are written as their UTF-8 bytes.
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn opt_json_len(s: &Option<String>) -> usize {
    s.as_deref().map_or(2, json_len)
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
    /// The session does not read what we send; its outbound queue is full.
    TooSlow,
    /// The service is stopping.
    Shutdown,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::PingTimeout | CloseReason::Shutdown => 1001,
            CloseReason::Flood | CloseReason::TooSlow => 1008,
            CloseReason::TooManySessions => 1013,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::PingTimeout => "Ping timeout",
            CloseReason::Flood => "Message rate limit exceeded",
            CloseReason::TooManySessions => "Too many sessions, try again later",
            CloseReason::TooSlow => "Client does not read its messages",
            CloseReason::Shutdown => "Server shutting down",
        }
    }
}
