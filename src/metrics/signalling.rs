//! What the signalling counters count: a client frame's message name and a reply's
//! refusal class, both from a bounded set.

use super::counters::{RefusalReason, MESSAGES};
use crate::rooms::{Command, ServerMessage, StreamState};

/// The position in `MESSAGES` of the message a command came from.
pub fn message_index(command: &Command) -> usize {
    let name = match command {
        Command::Connect(_) => "connection",
        Command::Ping => "ping",
        Command::Pong => "pong",
        Command::Join { .. } => "join",
        Command::Leave { .. } => "leave",
        Command::SendMessage { .. } => "sendMessage",
        Command::Moderate { .. } => "moderate",
        Command::Publish(_) => "publishStream",
        Command::Play(_) => "playStream",
        Command::Unpublish(_) => "unPublishStream",
        Command::Stop(_) => "stopStream",
        Command::StreamEvent { .. } => "sendStreamEvent",
        Command::AvailableStream { .. } => "availableStream",
        Command::Ignored | Command::Rejected(_) | Command::SetLayer { .. } => "other",
    };
    MESSAGES
        .iter()
        .position(|m| *m == name)
        .unwrap_or(MESSAGES.len() - 1)
}

/// Whether a reply refuses a request, and why (coarsely, from its text).
///
/// A stream that ends (`Stopped by ...`) is not a refusal, nor is a room event.
pub fn refusal(message: &ServerMessage) -> Option<RefusalReason> {
    let info = match message {
        ServerMessage::Fail { info, .. } => info,
        ServerMessage::DataStatus {
            result: Err(info), ..
        } => info,
        ServerMessage::StreamStatus(s) if s.status == StreamState::Failed => {
            if s.info.starts_with("Stopped by") || s.info == "The publisher vanished" {
                return None;
            }
            &s.info
        }
        _ => return None,
    };
    Some(classify(info))
}

/// The class of a refusal's text (the texts of `rooms` and `signalling`).
pub fn classify(info: &str) -> RefusalReason {
    let lower = info.to_ascii_lowercase();
    let has = |s: &str| lower.contains(s);
    if has("too many requests") || has("rate limit") {
        RefusalReason::RateLimit
    } else if has("not established") || has("login is required") {
        RefusalReason::NotConnected
    } else if has("restricted") || has("not allowed") || has("not a member") {
        RefusalReason::Restricted
    } else if has("not found") {
        RefusalReason::NotFound
    } else if has("is full") || has("too many") || has("at most") {
        RefusalReason::Limits
    } else if has("required")
        || has("too long")
        || has("must ")
        || has("needs ")
        || has("options")
        || has("json")
        || has("already")
        || has("invalid")
        || has("not supported")
        || has("cannot")
        || has("unknown")
        || has("malformed")
    {
        RefusalReason::Invalid
    } else {
        RefusalReason::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        use RefusalReason::*;
        for (text, class) in [
            (
                "Too many requests: the limit is 20 messages per second",
                RateLimit,
            ),
            ("Message rate limit exceeded", RateLimit),
            (
                "Session is not established: send 'connection' first",
                NotConnected,
            ),
            ("Login is required: connect with custom.login", NotConnected),
            ("Restricted access: the token has expired", Restricted),
            ("Not a member of room 'r'", Restricted),
            ("Room not found", NotFound),
            ("Participant not found: 'bob'", NotFound),
            ("Room is full: at most 2 participants", Limits),
            ("Too many streams on this device: at most 1", Limits),
            ("Room name is required", Invalid),
            ("Stream name is already in use", Invalid),
            (
                "Binary frames are not supported: send JSON text frames",
                Invalid,
            ),
            ("Something else", Other),
        ] {
            assert_eq!(classify(text), class, "{text}");
        }
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(message_index(&Command::Ping), 1);
        assert_eq!(message_index(&Command::Ignored), MESSAGES.len() - 1);
    }
}
