//! Translation between WebSocket text frames and the room core's typed messages.
//!
//! Every client frame becomes exactly one `Command`: frames that cannot be
//! understood become `Command::Rejected` carrying the clearest reply the frame
//! allows (a `DataStatusEvent` when it had an `operationId`, a stream FAILED when it
//! had a `mediaSessionId`, a `fail` otherwise). Strings are passed through as the
//! JSON parser decoded them: no trimming, no escaping, no charset conversion.

use serde_json::{json, Map, Value};

use crate::rooms::{
    Command, ConnectInfo, Moderation, RoomEvent, ServerMessage, StateEntry, StreamRef,
    StreamRequest, StreamState, StreamStatus, VideoLayer,
};

/// Client messages the room logic accepts and ignores (ROOM_PROTOCOL §8.9).
const IGNORED: &[&str] = &[
    "pushLogs",
    "snapshot",
    "submitBugReport",
    "sessionDebug",
    "call",
    "answer",
    "hangup",
    "hold",
    "unhold",
    "transfer",
    "sendDtmf",
    "sendIvrRequest",
    "setStreamProperties",
];

/// Parses one text frame.
pub fn parse_client_frame(text: &str) -> Command {
    let parsed = serde_json::from_str::<Value>(text).or_else(|e| {
        // JavaScript strings may hold a lone UTF-16 surrogate (a cut emoji) and
        // JSON.stringify escapes it; it has no UTF-8 form, so it becomes U+FFFD
        // rather than costing the whole message.
        replace_lone_surrogates(text)
            .and_then(|fixed| serde_json::from_str(&fixed).ok())
            .ok_or(e)
    });
    let value = match parsed {
        Ok(v) => v,
        Err(e) => return fail("unknown", None, format!("Malformed JSON: {e}")),
    };
    let Some(frame) = value.as_object() else {
        return fail("unknown", None, "A frame must be a JSON object".into());
    };
    let Some(message) = frame.get("message").and_then(Value::as_str) else {
        return fail(
            "unknown",
            None,
            "A frame must have a string field 'message'".into(),
        );
    };
    let arg = match frame.get("data") {
        None | Some(Value::Null) => &Value::Null,
        Some(Value::Array(items)) => items.first().unwrap_or(&Value::Null),
        Some(_) => {
            return fail(
                message,
                None,
                "Field 'data' must be an array of arguments".into(),
            )
        }
    };
    match message {
        "connection" => parse_connection(arg),
        "pong" => Command::Pong,
        "ping" => Command::Ping,
        "sendData" => parse_send_data(arg),
        "publishStream" => parse_stream_request(arg, true),
        "playStream" => parse_stream_request(arg, false),
        "unPublishStream" | "stopStream" => parse_stream_ref(message, arg),
        // The SDK's mute notices; `data` and other types carry nothing the room uses.
        "sendStreamEvent" => match (str_field(arg, "mediaSessionId"), str_field(arg, "type")) {
            (Some(id), Some(kind)) => Command::StreamEvent {
                media_session_id: id.to_owned(),
                kind: kind.to_owned(),
            },
            _ => Command::Ignored,
        },
        "availableStream" => match (str_field(arg, "mediaSessionId"), str_field(arg, "name")) {
            (Some(id), Some(name)) => Command::AvailableStream {
                media_session_id: id.to_owned(),
                name: name.to_owned(),
            },
            _ => fail(
                message,
                None,
                "availableStream needs string fields 'mediaSessionId' and 'name'".into(),
            ),
        },
        m if IGNORED.contains(&m) => Command::Ignored,
        m => fail(m, None, format!("Unknown message '{m}'")),
    }
}

/// Rewrites `\uD800`-`\uDFFF` escapes that are not part of a surrogate pair to
/// `\uFFFD`. `None` when there is nothing to replace.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    fn escape_at(bytes: &[u8], i: usize) -> Option<u16> {
        let hex = bytes.get(i + 2..i + 6)?;
        if bytes.get(i) != Some(&b'\\') || bytes.get(i + 1) != Some(&b'u') {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied, mut changed) = (0, 0, false);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(bytes, i) {
            Some(0xD800..=0xDBFF) if matches!(escape_at(bytes, i + 6), Some(0xDC00..=0xDFFF)) => {
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.push_str(&text[copied..i]);
                out.push_str("\\uFFFD");
                i += 6;
                copied = i;
                changed = true;
            }
            // Any other escape: skip the backslash and the escaped character.
            _ => i += 2,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

fn fail(api_method: &str, id: Option<&str>, info: String) -> Command {
    Command::Rejected(ServerMessage::Fail {
        api_method: api_method.to_owned(),
        id: id.map(str::to_owned),
        info,
    })
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// An optional string field; `Err` names the field when it has another type.
fn opt_str(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("Field '{key}' must be a string")),
    }
}

fn opt_bool(v: &Value, key: &str, default: bool) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("Field '{key}' must be a boolean")),
    }
}

fn parse_connection(arg: &Value) -> Command {
    if !arg.is_object() {
        return fail(
            "connection",
            None,
            "connection needs an object argument".into(),
        );
    }
    let custom = arg.get("custom").unwrap_or(&Value::Null);
    let parsed = (|| -> Result<ConnectInfo, String> {
        Ok(ConnectInfo {
            login: opt_str(custom, "login").map_err(|e| format!("custom: {e}"))?,
            token: opt_str(custom, "token").map_err(|e| format!("custom: {e}"))?,
            app_key: opt_str(arg, "appKey")?,
            client_version: opt_str(arg, "clientVersion")?,
            client_os_version: opt_str(arg, "clientOSVersion")?,
            client_browser_version: opt_str(arg, "clientBrowserVersion")?,
            // Decided by the session edge, which holds the keys.
            access: Default::default(),
        })
    })();
    match parsed {
        Ok(info) => Command::Connect(info),
        Err(e) => fail("connection", None, e),
    }
}

fn parse_send_data(arg: &Value) -> Command {
    let Some(operation_id) = str_field(arg, "operationId") else {
        return fail(
            "sendData",
            None,
            "sendData needs a string field 'operationId'".into(),
        );
    };
    let failed = |info: String| {
        Command::Rejected(ServerMessage::DataStatus {
            operation_id: operation_id.to_owned(),
            result: Err(info),
        })
    };
    let payload = arg.get("payload").unwrap_or(&Value::Null);
    let Some(command) = str_field(payload, "command") else {
        return failed("sendData needs a string field 'payload.command'".into());
    };
    let options = payload.get("options").unwrap_or(&Value::Null);
    let operation_id = operation_id.to_owned();
    let need = |key: &str| -> Result<String, String> {
        match options.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(format!("{command} needs options.{key}")),
            Some(_) => Err(format!("{command}: options.{key} must be a string")),
        }
    };
    let parsed = match command {
        "join" => need("name").and_then(|room| {
            Ok(Command::Join {
                operation_id: operation_id.clone(),
                room,
                record: opt_bool(options, "record", false)
                    .map_err(|e| format!("join: options: {e}"))?,
            })
        }),
        "leave" => need("name").map(|room| Command::Leave {
            operation_id: operation_id.clone(),
            room,
        }),
        "sendMessage" => (|| {
            let room = match options.get("roomConfig").and_then(|c| c.get("name")) {
                Some(Value::String(s)) => s.clone(),
                _ => return Err("sendMessage needs options.roomConfig.name".to_owned()),
            };
            let to = opt_str(options, "to").map_err(|e| format!("sendMessage: options: {e}"))?;
            let text = need("text")?;
            Ok(Command::SendMessage {
                operation_id: operation_id.clone(),
                room,
                to,
                text,
            })
        })(),
        "kick" | "mute" => (|| {
            let room = need("name")?;
            let login = need("login")?;
            let action = if command == "kick" {
                Moderation::Kick
            } else {
                let flag = |key: &str| match options.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(_) => Err(format!("mute: options.{key} must be a boolean")),
                };
                let (audio, video) = (flag("audio")?, flag("video")?);
                if audio.is_none() && video.is_none() {
                    return Err("mute needs options.audio and/or options.video".to_owned());
                }
                Moderation::Mute { audio, video }
            };
            Ok(Command::Moderate {
                operation_id: operation_id.clone(),
                room,
                login,
                action,
            })
        })(),
        "setLayer" => (|| {
            let media_session_id = need("mediaSessionId")?;
            let word = need("layer")?;
            let layer = VideoLayer::parse(&word).ok_or_else(|| {
                "setLayer: options.layer must be auto, low, medium or high".to_owned()
            })?;
            Ok(Command::SetLayer {
                operation_id: operation_id.clone(),
                media_session_id,
                layer,
            })
        })(),
        other => Err(format!("Unknown command '{other}'")),
    };
    parsed.unwrap_or_else(failed)
}

fn parse_stream_request(arg: &Value, publish: bool) -> Command {
    let api = if publish {
        "publishStream"
    } else {
        "playStream"
    };
    let Some(id) = str_field(arg, "mediaSessionId") else {
        return fail(
            api,
            None,
            format!("{api} needs a string field 'mediaSessionId'"),
        );
    };
    let name = str_field(arg, "name").unwrap_or_default();
    let room = arg
        .get("custom")
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let parsed = (|| -> Result<StreamRequest, String> {
        if name.is_empty() {
            return Err(format!("{api} needs a non-empty string field 'name'"));
        }
        let sdp = match arg.get("sdp") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(format!("{api} needs the SDP offer in field 'sdp'")),
        };
        Ok(StreamRequest {
            media_session_id: id.to_owned(),
            name: name.to_owned(),
            room: room.clone(),
            sdp,
            has_audio: opt_bool(arg, "hasAudio", true)?,
            has_video: opt_bool(arg, "hasVideo", true)?,
            record: opt_bool(arg, "record", false)?,
        })
    })();
    match parsed {
        Ok(req) if publish => Command::Publish(req),
        Ok(req) => Command::Play(req),
        Err(info) => Command::Rejected(ServerMessage::StreamStatus(StreamStatus {
            media_session_id: id.to_owned(),
            name: name.to_owned(),
            published: publish,
            has_audio: true,
            has_video: true,
            status: StreamState::Failed,
            info,
            record: false,
            room,
        })),
    }
}

fn parse_stream_ref(api: &str, arg: &Value) -> Command {
    let Some(id) = str_field(arg, "mediaSessionId") else {
        return fail(
            api,
            None,
            format!("{api} needs a string field 'mediaSessionId'"),
        );
    };
    let r = StreamRef {
        media_session_id: id.to_owned(),
        name: str_field(arg, "name").map(str::to_owned),
    };
    if api == "unPublishStream" {
        Command::Unpublish(r)
    } else {
        Command::Stop(r)
    }
}

/// Renders one server message as a frame: always `{"message", "data": [...]}`.
pub fn render_server_message(message: &ServerMessage, event_id: u64) -> String {
    let (name, data) = match message {
        ServerMessage::UserData(u) => {
            let mut custom = Map::new();
            if let Some(login) = &u.info.login {
                custom.insert("login".into(), json!(login));
            }
            let echo = |v: &Option<String>| json!(v.as_deref().unwrap_or(""));
            (
                "getUserData",
                json!([{
                    "status": "ESTABLISHED",
                    "authToken": u.auth_token,
                    "appKey": u.info.app_key.as_deref().unwrap_or("roomApp"),
                    "mediaProviders": ["WebRTC"],
                    "useWsTunnel": false,
                    "useWsTunnelPacketization2": false,
                    "useBase64BinaryEncoding": false,
                    "keepAlive": false,
                    "clientVersion": echo(&u.info.client_version),
                    "clientOSVersion": echo(&u.info.client_os_version),
                    "clientBrowserVersion": echo(&u.info.client_browser_version),
                    "custom": custom,
                }]),
            )
        }
        ServerMessage::Ping => ("ping", json!([null])),
        ServerMessage::Pong => ("pong", json!([null])),
        ServerMessage::DataStatus {
            operation_id,
            result,
        } => {
            let mut obj = Map::new();
            obj.insert("operationId".into(), json!(operation_id));
            match result {
                Ok(()) => {
                    obj.insert("status".into(), json!("ACCEPTED"));
                }
                Err(info) => {
                    obj.insert("status".into(), json!("FAILED"));
                    obj.insert("info".into(), json!(info));
                }
            }
            ("DataStatusEvent", Value::Array(vec![Value::Object(obj)]))
        }
        ServerMessage::Room { room, event } => (
            "OnDataEvent",
            json!([{
                "operationId": format!("evt-{event_id}"),
                "payload": {
                    "roomName": room,
                    "name": event.name(),
                    "info": room_event_info(event),
                }
            }]),
        ),
        ServerMessage::StreamStatus(s) => ("notifyStreamStatusEvent", json!([stream_object(s)])),
        ServerMessage::RemoteSdp {
            media_session_id,
            sdp,
        } => ("setRemoteSDP", json!([media_session_id, sdp, true])),
        ServerMessage::AvailableStream {
            media_session_id,
            available,
            info,
        } => (
            "availableStream",
            json!([{
                "id": media_session_id,
                "status": if *available { "true" } else { "false" },
                "info": info,
            }]),
        ),
        ServerMessage::StreamEvent {
            media_session_id,
            kind,
            stream,
            login,
            by,
        } => (
            "notifyStreamEvent",
            json!([{
                "mediaSessionId": media_session_id,
                "type": kind,
                "payload": {"streamName": stream, "login": login, "by": by},
            }]),
        ),
        ServerMessage::Fail {
            api_method,
            id,
            info,
        } => {
            let mut obj = Map::new();
            obj.insert("apiMethod".into(), json!(api_method));
            if let Some(id) = id {
                obj.insert("id".into(), json!(id));
            }
            obj.insert("status".into(), json!("FAILED"));
            obj.insert("info".into(), json!(info));
            ("fail", Value::Array(vec![Value::Object(obj)]))
        }
    };
    json!({ "message": name, "data": data }).to_string()
}

fn room_event_info(event: &RoomEvent) -> Value {
    match event {
        RoomEvent::State(entries) => Value::Array(
            entries
                .iter()
                .map(|e| match e {
                    StateEntry::Participant(login) => json!(login),
                    StateEntry::Stream { login, name } => json!({"login": login, "name": name}),
                })
                .collect(),
        ),
        RoomEvent::Joined(login) | RoomEvent::Left(login) => json!(login),
        RoomEvent::Published { login, name }
        | RoomEvent::Unpublished { login, name }
        | RoomEvent::Failed { login, name }
        | RoomEvent::ActiveSpeaker { login, name } => json!({"login": login, "name": name}),
        RoomEvent::Message { from, text } => json!({"from": from, "text": &**text}),
    }
}

fn stream_object(s: &StreamStatus) -> Value {
    let mut custom = Map::new();
    if let Some(room) = &s.room {
        custom.insert("name".into(), json!(room));
    }
    json!({
        "mediaSessionId": s.media_session_id,
        "name": s.name,
        "published": s.published,
        "hasVideo": s.has_video,
        "hasAudio": s.has_audio,
        "status": s.status.as_str(),
        "info": s.info,
        "record": s.record,
        "width": 0,
        "height": 0,
        "bitrate": 0,
        "minBitrate": 0,
        "maxBitrate": 0,
        "quality": 0,
        "mediaProvider": "WebRTC",
        "custom": custom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_info(c: Command) -> String {
        match c {
            Command::Rejected(ServerMessage::Fail { info, .. }) => info,
            Command::Rejected(ServerMessage::DataStatus {
                result: Err(info), ..
            }) => info,
            Command::Rejected(ServerMessage::StreamStatus(s)) => {
                assert_eq!(s.status, StreamState::Failed);
                s.info
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_connection_with_login_and_token() {
        let c = parse_client_frame(
            r#"{"message":"connection","data":[{"appKey":"roomApp","custom":{"login":"Алиса","token":"t"}}]}"#,
        );
        assert_eq!(
            c,
            Command::Connect(ConnectInfo {
                login: Some("Алиса".into()),
                token: Some("t".into()),
                app_key: Some("roomApp".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn parses_room_commands() {
        let join = parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"o1","payload":{"command":"join","options":{"name":"r"}}}]}"#,
        );
        assert_eq!(
            join,
            Command::Join {
                operation_id: "o1".into(),
                room: "r".into(),
                record: false
            }
        );
        let msg = parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"o2","payload":{"command":"sendMessage","options":{"roomConfig":{"name":"r"},"to":"bob","text":"\ud83d\udc4b\n<b>"}}}]}"#,
        );
        assert_eq!(
            msg,
            Command::SendMessage {
                operation_id: "o2".into(),
                room: "r".into(),
                to: Some("bob".into()),
                text: "👋\n<b>".into()
            }
        );
    }

    #[test]
    fn bad_frames_get_clear_rejections() {
        assert!(rejected_info(parse_client_frame("{not json")).starts_with("Malformed JSON"));
        assert!(rejected_info(parse_client_frame("[1,2]")).contains("JSON object"));
        assert!(rejected_info(parse_client_frame(r#"{"data":[]}"#)).contains("'message'"));
        assert!(
            rejected_info(parse_client_frame(r#"{"message":"x","data":5}"#)).contains("'data'")
        );
        assert!(
            rejected_info(parse_client_frame(r#"{"message":"nope","data":[{}]}"#))
                .contains("Unknown message 'nope'")
        );
        assert!(rejected_info(parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"o","payload":{"command":"dance"}}]}"#
        ))
        .contains("Unknown command 'dance'"));
        assert!(rejected_info(parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"o","payload":{"command":"join","options":{"name":7}}}]}"#
        ))
        .contains("options.name must be a string"));
        assert!(rejected_info(parse_client_frame(
            r#"{"message":"publishStream","data":[{"mediaSessionId":"m","name":"r-a-1"}]}"#
        ))
        .contains("SDP offer"));
        assert!(rejected_info(parse_client_frame(
            r#"{"message":"connection","data":[{"custom":{"login":5}}]}"#
        ))
        .contains("custom: Field 'login' must be a string"));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let c = parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"o","payload":{"command":"sendMessage","options":{"roomConfig":{"name":"r"},"to":"b","text":"a\ud83d b \\ud800 \ud83d\udc4b \udc4b"}}}]}"#,
        );
        match c {
            Command::SendMessage { text, .. } => {
                assert_eq!(text, "a\u{FFFD} b \\ud800 👋 \u{FFFD}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            replace_lone_surrogates(r#"{"a":"\u0041 \ud83d\udc4b"}"#),
            None
        );
    }

    #[test]
    fn failed_data_status_echoes_operation_id() {
        match parse_client_frame(
            r#"{"message":"sendData","data":[{"operationId":"op-9","payload":{}}]}"#,
        ) {
            Command::Rejected(ServerMessage::DataStatus {
                operation_id,
                result: Err(_),
            }) => assert_eq!(operation_id, "op-9"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn moderation_commands_parse_and_bad_ones_get_reasons() {
        let frame = |options: &str, command: &str| {
            parse_client_frame(&format!(
                r#"{{"message":"sendData","data":[{{"operationId":"o","payload":{{"command":"{command}","options":{options}}}}}]}}"#
            ))
        };
        assert_eq!(
            frame(r#"{"name":"r","login":"bob"}"#, "kick"),
            Command::Moderate {
                operation_id: "o".into(),
                room: "r".into(),
                login: "bob".into(),
                action: Moderation::Kick
            }
        );
        assert_eq!(
            frame(r#"{"name":"r","login":"bob","video":true}"#, "mute"),
            Command::Moderate {
                operation_id: "o".into(),
                room: "r".into(),
                login: "bob".into(),
                action: Moderation::Mute {
                    audio: None,
                    video: Some(true)
                }
            }
        );
        assert_eq!(
            rejected_info(frame(r#"{"name":"r","login":"bob"}"#, "mute")),
            "mute needs options.audio and/or options.video"
        );
        assert_eq!(
            rejected_info(frame(r#"{"name":"r","login":"bob","audio":"yes"}"#, "mute")),
            "mute: options.audio must be a boolean"
        );
        assert_eq!(
            rejected_info(frame(r#"{"name":"r"}"#, "kick")),
            "kick needs options.login"
        );
        // Huddle's own layer choice for one of the session's plays.
        assert_eq!(
            frame(r#"{"mediaSessionId":"p1","layer":"low"}"#, "setLayer"),
            Command::SetLayer {
                operation_id: "o".into(),
                media_session_id: "p1".into(),
                layer: VideoLayer::Low
            }
        );
        assert_eq!(
            rejected_info(frame(
                r#"{"mediaSessionId":"p1","layer":"huge"}"#,
                "setLayer"
            )),
            "setLayer: options.layer must be auto, low, medium or high"
        );
        assert_eq!(
            rejected_info(frame(r#"{"layer":"high"}"#, "setLayer")),
            "setLayer needs options.mediaSessionId"
        );
    }

    #[test]
    fn stream_events_render_as_notify_stream_event() {
        let text = render_server_message(
            &ServerMessage::StreamEvent {
                media_session_id: "play-1".into(),
                kind: "videoMuted",
                stream: "r-bob".into(),
                login: "bob".into(),
                by: Some("alice".into()),
            },
            1,
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], "notifyStreamEvent");
        assert_eq!(v["data"][0]["mediaSessionId"], "play-1");
        assert_eq!(v["data"][0]["type"], "videoMuted");
        assert_eq!(v["data"][0]["payload"]["login"], "bob");
        assert_eq!(v["data"][0]["payload"]["by"], "alice");
    }

    #[test]
    fn the_active_speaker_is_an_on_data_event_shaped_like_published() {
        let text = render_server_message(
            &ServerMessage::Room {
                room: "комната".into(),
                event: RoomEvent::ActiveSpeaker {
                    login: "bob".into(),
                    name: "комната-bob-1".into(),
                },
            },
            7,
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], "OnDataEvent");
        let payload = &v["data"][0]["payload"];
        assert_eq!(payload["roomName"], "комната");
        assert_eq!(payload["name"], "ACTIVE_SPEAKER");
        assert_eq!(
            payload["info"],
            json!({"login": "bob", "name": "комната-bob-1"})
        );
        assert_eq!(v["data"][0]["operationId"], "evt-7");
    }

    #[test]
    fn ignorable_messages_are_ignored() {
        assert_eq!(
            parse_client_frame(r#"{"message":"pushLogs","data":[{"logs":"x"}]}"#),
            Command::Ignored
        );
        assert_eq!(
            parse_client_frame(
                r#"{"message":"sendStreamEvent","data":[{"mediaSessionId":"m","type":"audioMuted"}]}"#
            ),
            Command::StreamEvent {
                media_session_id: "m".into(),
                kind: "audioMuted".into()
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"message":"pong","data":[null]}"#),
            Command::Pong
        );
    }

    #[test]
    fn rendered_frames_always_have_a_data_array() {
        let frames = [
            ServerMessage::Ping,
            ServerMessage::DataStatus {
                operation_id: "o".into(),
                result: Err("x".into()),
            },
            ServerMessage::Room {
                room: "комната".into(),
                event: RoomEvent::State(vec![
                    StateEntry::Participant("carol".into()),
                    StateEntry::Stream {
                        login: "bob".into(),
                        name: "комната-bob-1".into(),
                    },
                ]),
            },
            ServerMessage::RemoteSdp {
                media_session_id: "m".into(),
                sdp: "v=0\r\n".into(),
            },
        ];
        for f in &frames {
            let v: Value = serde_json::from_str(&render_server_message(f, 1)).unwrap();
            assert!(v["data"].is_array(), "{v}");
            assert!(v["message"].is_string(), "{v}");
        }
        let v: Value = serde_json::from_str(&render_server_message(&frames[2], 1)).unwrap();
        assert_eq!(v["data"][0]["payload"]["info"][0], "carol");
        assert_eq!(v["data"][0]["payload"]["info"][1]["login"], "bob");
        assert_eq!(v["data"][0]["payload"]["roomName"], "комната");
        let v: Value = serde_json::from_str(&render_server_message(&frames[3], 1)).unwrap();
        assert_eq!(v["data"][2], true);
    }
}
