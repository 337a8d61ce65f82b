//! What an RTMP client asks for: `rtmp://<device>[:port]/<room>/<name>[?token=…&record=…]`.
//!
//! RTMP splits the URL into the application name (`connect`'s `app`, here the room) and
//! the stream key (`publish`/`play`, here the login of a publisher or the stream a
//! player wants). Both are percent-decoded as UTF-8, so any Unicode room or login can be
//! reached. The query may sit on the stream key (ffmpeg, OBS's "stream key" field) or on
//! the app (`rtmp://dev/room?token=…` + key `alice`); on the key it wins.
//! Pure: strings in, a typed request or a reason out.

use thiserror::Error;

/// The typed request of a publish or play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPath {
    pub room: String,
    /// The publisher's login, or the stream a player asks for.
    pub name: String,
    /// `?token=<jwt>`.
    pub token: Option<String>,
    /// `?record=true`.
    pub record: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("no room in the RTMP URL (expected rtmp://<device>/<room>/<login>)")]
    MissingRoom,
    #[error("no login or stream name in the RTMP URL (expected rtmp://<device>/<room>/<login>)")]
    MissingName,
    #[error("the {0} is not valid percent-encoding")]
    BadPercent(&'static str),
    #[error("the {0} is not UTF-8 after percent-decoding")]
    NotUtf8(&'static str),
    #[error("the {0} contains a control character")]
    ControlCharacter(&'static str),
    #[error("the {0} contains a '/' (expected rtmp://<device>/<room>/<login>)")]
    Slash(&'static str),
    #[error("record={0:?} is not true or false")]
    BadRecord(String),
    #[error("the {0} is longer than {MAX_PART} bytes")]
    TooLong(&'static str),
}

/// Longest room, name or token accepted (after decoding).
pub const MAX_PART: usize = 4096;

/// Parses rml_rtmp's app name and stream key into the request.
pub fn parse(app: &str, stream_key: &str) -> Result<StreamPath, UrlError> {
    let (app_path, app_query) = split_query(app);
    let (key_path, key_query) = split_query(stream_key);
    let room = decode(app_path.trim_matches('/'), "room")?;
    let name = decode(key_path.trim_matches('/'), "login or stream name")?;
    if room.is_empty() {
        return Err(UrlError::MissingRoom);
    }
    if name.is_empty() {
        return Err(UrlError::MissingName);
    }
    if room.contains('/') {
        return Err(UrlError::Slash("room"));
    }
    if name.contains('/') {
        return Err(UrlError::Slash("login or stream name"));
    }
    let mut path = StreamPath {
        room,
        name,
        token: None,
        record: false,
    };
    // The app's query first, so the stream key's overrides it.
    for query in [app_query, key_query].into_iter().flatten() {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "token" => path.token = Some(decode(value, "token")?),
                "record" => {
                    let value = decode(value, "record value")?;
                    path.record = match value.as_str() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(UrlError::BadRecord(value)),
                    }
                }
                // Other parameters (e.g. OBS's or a CDN's) are not ours: ignored.
                _ => {}
            }
        }
    }
    Ok(path)
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (s, None),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (a `+` stays a `+`: this is a path, not a form).
pub fn decode(s: &str, what: &'static str) -> Result<String, UrlError> {
    if s.len() > 3 * MAX_PART {
        return Err(UrlError::TooLong(what));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(UrlError::BadPercent(what)),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.len() > MAX_PART {
        return Err(UrlError::TooLong(what));
    }
    let text = String::from_utf8(out).map_err(|_| UrlError::NotUtf8(what))?;
    if text.chars().any(char::is_control) {
        return Err(UrlError::ControlCharacter(what));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_room_and_login() {
        assert_eq!(
            parse("room", "alice").unwrap(),
            StreamPath {
                room: "room".into(),
                name: "alice".into(),
                token: None,
                record: false
            }
        );
    }

    #[test]
    fn unicode_is_percent_decoded() {
        let p = parse(
            "%D0%BA%D0%BE%D0%BC%D0%BD%D0%B0%D1%82%D0%B0",
            "J%C3%BCrgen%20M",
        )
        .unwrap();
        assert_eq!((p.room.as_str(), p.name.as_str()), ("комната", "Jürgen M"));
        // Raw UTF-8 (a client that does not encode) works too; '+' is literal.
        let p = parse("会议室", "a+b").unwrap();
        assert_eq!((p.room.as_str(), p.name.as_str()), ("会议室", "a+b"));
    }

    #[test]
    fn token_and_record_from_the_key_or_the_app() {
        let p = parse("room", "alice?token=eyJ.a.b&record=true").unwrap();
        assert_eq!(p.token.as_deref(), Some("eyJ.a.b"));
        assert!(p.record);
        let p = parse("room?token=T1&record=1", "alice").unwrap();
        assert_eq!((p.token.as_deref(), p.record), (Some("T1"), true));
        let p = parse("room?token=T1", "alice?token=T2&record=false&obs=x").unwrap();
        assert_eq!((p.token.as_deref(), p.record), (Some("T2"), false));
        assert_eq!(
            parse("room", "alice?record=maybe"),
            Err(UrlError::BadRecord("maybe".into()))
        );
        let p = parse("room", "alice?token=a%2Bb").unwrap();
        assert_eq!(p.token.as_deref(), Some("a+b"));
    }

    #[test]
    fn missing_or_broken_parts_are_named() {
        assert_eq!(parse("", "alice"), Err(UrlError::MissingRoom));
        assert_eq!(parse("?token=x", "alice"), Err(UrlError::MissingRoom));
        assert_eq!(parse("room", ""), Err(UrlError::MissingName));
        assert_eq!(parse("room", "?token=x"), Err(UrlError::MissingName));
        assert_eq!(
            parse("room", "a%zz"),
            Err(UrlError::BadPercent("login or stream name"))
        );
        assert_eq!(
            parse("room", "a%4"),
            Err(UrlError::BadPercent("login or stream name"))
        );
        assert_eq!(parse("r%ff", "a"), Err(UrlError::NotUtf8("room")));
        assert_eq!(
            parse("r", "a%00"),
            Err(UrlError::ControlCharacter("login or stream name"))
        );
        assert_eq!(
            parse("r", "a\nb"),
            Err(UrlError::ControlCharacter("login or stream name"))
        );
        assert_eq!(parse("a/b", "c"), Err(UrlError::Slash("room")));
        assert_eq!(
            parse("r", "a%2Fb"),
            Err(UrlError::Slash("login or stream name"))
        );
        assert_eq!(parse("r", "x?token=%"), Err(UrlError::BadPercent("token")));
        let long = "x".repeat(MAX_PART + 1);
        assert_eq!(parse(&long, "a"), Err(UrlError::TooLong("room")));
        // A leading/trailing slash some clients add is tolerated.
        assert_eq!(parse("/room/", "/alice").unwrap().room, "room");
    }
}
