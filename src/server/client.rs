//! The web app's public read-only routes: `GET /client/info` (the device's name and
//! the invite address), `GET /client/rooms` (live rooms and who is in them),
//! `GET /client/levels` (who is talking, from the device speaker's levels) and
//! `GET /client/qr.svg?room=` (the QR code of a room's invite link), plus the room
//! display's page (`/display`).
//!
//! Access to rooms and levels: anyone in open mode; in token mode only loopback
//! clients (the device's own screen) or a request with a valid token (the rule of
//! `/client/records`: `Authorization: Bearer` or `?token=`); a token limited to some
//! rooms sees those rooms only. Refusals are 401 with a JSON error. `/client/info` and
//! the QR code tell nothing a visitor of the page does not see anyway.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use log::debug;
use serde::Serialize;

use super::{access, records, Shared};
use crate::auth::Reader;

/// At most this many rooms, and members per room, in `/client/rooms`.
const MAX_ROOMS: usize = 256;
const MAX_MEMBERS: usize = 64;
/// At most this many streams in `/client/levels`.
const MAX_LEVELS: usize = 256;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Info {
    /// The device's name (its `[device] login`).
    pub name: String,
    /// The address remote people open, ending with `/` (`https://192.0.2.10:8443/`).
    pub invite_base: String,
    /// Whether `invite_base` is HTTPS (without it, remote browsers refuse cameras).
    pub https: bool,
    /// The longest room name and login in characters (`[rooms] max_name_chars`).
    pub max_name_chars: usize,
    /// `[media] simulcast_min_participants`: the web app publishes simulcast from this
    /// many people in a room (0: never).
    pub simulcast_min_participants: u32,
}

/// The ports the service listens on (bound: `[http] listen` may say port 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ports {
    pub plain: Option<u16>,
    pub tls: Option<u16>,
}

/// The invite address: the first non-loopback advertised address (IPv4 first), else
/// the first one; HTTPS on the HTTPS port when HTTPS is on, else plain HTTP. The
/// default ports are left out.
pub(crate) fn invite_base(ports: Ports, advertised: &[IpAddr]) -> (String, bool) {
    let pick = advertised
        .iter()
        .find(|ip| ip.is_ipv4() && !access::is_loopback(**ip))
        .or_else(|| advertised.iter().find(|ip| !access::is_loopback(**ip)))
        .or_else(|| advertised.first())
        .copied()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let host = match pick {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let (scheme, port, default) = match (ports.tls, ports.plain) {
        (Some(port), _) => ("https", port, 443),
        (None, Some(port)) => ("http", port, 80),
        (None, None) => ("http", 80, 80),
    };
    let base = match port == default {
        true => format!("{scheme}://{host}/"),
        false => format!("{scheme}://{host}:{port}/"),
    };
    (base, scheme == "https")
}

/// The invite link of `room` (the web app's `?roomName=`).
pub(crate) fn invite_link(base: &str, room: &str) -> String {
    format!("{base}?roomName={}", records::percent_encode(room))
}

fn info_of(shared: &Shared) -> Info {
    let (invite_base, https) = invite_base(shared.ports, &shared.advertised);
    Info {
        name: shared.config.device.login.clone(),
        invite_base,
        https,
        max_name_chars: shared.config.rooms.max_name_chars,
        simulcast_min_participants: shared.config.media.simulcast_min_participants,
    }
}

fn no_store() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-store")]
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        no_store(),
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Who may see rooms and levels: open mode and loopback clients all; else a valid
/// token's rooms; else the 401.
pub(crate) fn access_rule(
    shared: &Shared,
    peer: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Reader, Box<Response>> {
    decide(
        &shared.authority,
        peer,
        records::token(headers, uri).as_deref(),
    )
    .map_err(|why| {
        debug!("client: request refused: {why}");
        Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            &format!("Restricted access: {why}"),
        ))
    })
}

/// The pure part of [`access_rule`].
pub(crate) fn decide(
    authority: &crate::auth::Authority,
    peer: IpAddr,
    token: Option<&str>,
) -> Result<Reader, String> {
    match authority.reader(token) {
        Ok(reader) => Ok(reader),
        Err(_) if access::is_loopback(peer.to_canonical()) => Ok(Reader::All),
        Err(why) => Err(why),
    }
}

pub(crate) async fn info(State(shared): State<Shared>) -> Response {
    (no_store(), Json(info_of(&shared))).into_response()
}

#[derive(Debug, Serialize)]
struct LiveRoom {
    name: String,
    members: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct LiveRooms {
    rooms: Vec<LiveRoom>,
}

/// The rooms `reader` may see, with their members' logins.
async fn live_rooms(shared: &Shared, reader: &Reader) -> Result<Vec<LiveRoom>, Box<Response>> {
    let rooms = shared.control.rooms().await.map_err(|e| {
        Box::new(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Rooms unavailable: {}", e.message),
        ))
    })?;
    Ok(rooms
        .into_iter()
        .filter(|r| reader.allows(&r.name))
        .take(MAX_ROOMS)
        .map(|r| LiveRoom {
            members: r
                .members
                .iter()
                .take(MAX_MEMBERS)
                .map(|m| m.login.clone())
                .collect(),
            name: r.name,
            created_at: r.created_at,
        })
        .collect())
}

pub(crate) async fn rooms(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let reader = match access_rule(&shared, peer.ip(), &headers, &uri) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    match live_rooms(&shared, &reader).await {
        Ok(rooms) => (no_store(), Json(LiveRooms { rooms })).into_response(),
        Err(e) => *e,
    }
}

#[derive(Debug, Serialize)]
struct LevelsBody {
    levels: Vec<crate::device::levels::Level>,
}

/// The levels of the streams in `visible` (`None`: all), bounded.
fn levels_body(
    levels: &crate::device::levels::Levels,
    visible: Option<&[String]>,
) -> serde_json::Value {
    let levels = levels
        .snapshot()
        .into_iter()
        .filter(|l| visible.is_none_or(|v| v.contains(&l.stream)))
        .take(MAX_LEVELS)
        .collect();
    serde_json::to_value(LevelsBody { levels }).unwrap_or_default()
}

pub(crate) async fn levels(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let reader = match access_rule(&shared, peer.ip(), &headers, &uri) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let body = match reader {
        Reader::All => levels_body(&shared.levels, None),
        Reader::Rooms(_) => {
            // Only the streams of the rooms the token may see.
            let streams = match shared.control.rooms().await {
                Ok(rooms) => rooms
                    .into_iter()
                    .filter(|r| reader.allows(&r.name))
                    .flat_map(|r| r.members.into_iter().flat_map(|m| m.streams))
                    .collect::<Vec<_>>(),
                Err(_) => Vec::new(),
            };
            levels_body(&shared.levels, Some(&streams))
        }
    };
    (no_store(), Json(body)).into_response()
}

/// The `room` query parameter, decoded; `Err` when malformed.
fn room_param(uri: &Uri) -> Result<Option<String>, ()> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    match query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "room")
    {
        Some((_, value)) => records::percent_decode(&value.replace('+', " "))
            .map(Some)
            .ok_or(()),
        None => Ok(None),
    }
}

/// A QR code of `text` as an SVG document.
pub(crate) fn qr_svg(text: &str) -> Option<String> {
    let code =
        qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

pub(crate) async fn qr(State(shared): State<Shared>, uri: Uri) -> Response {
    let Ok(room) = room_param(&uri) else {
        return json_error(StatusCode::BAD_REQUEST, "Malformed room parameter");
    };
    let info = info_of(&shared);
    let text = match room.as_deref() {
        Some(room) => {
            if let Err(why) = shared.config.rooms.check_name("Room name", room) {
                return json_error(StatusCode::BAD_REQUEST, &why);
            }
            invite_link(&info.invite_base, room)
        }
        None => info.invite_base,
    };
    match qr_svg(&text) {
        Some(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            svg,
        )
            .into_response(),
        None => json_error(StatusCode::BAD_REQUEST, "Too long for a QR code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(tls: bool, port: u16, tls_port: u16) -> Ports {
        Ports {
            plain: Some(port),
            tls: tls.then_some(tls_port),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn invite_base_is_the_advertised_https_address() {
        let adv = ips(&["127.0.0.1", "2001:db8::5", "192.0.2.10"]);
        assert_eq!(
            invite_base(http(true, 8080, 8443), &adv),
            ("https://192.0.2.10:8443/".into(), true)
        );
        assert_eq!(
            invite_base(http(true, 8080, 443), &adv),
            ("https://192.0.2.10/".into(), true)
        );
        // HTTPS off: plain HTTP on the advertised address.
        assert_eq!(
            invite_base(http(false, 8080, 8443), &adv),
            ("http://192.0.2.10:8080/".into(), false)
        );
        // IPv6 only.
        assert_eq!(
            invite_base(http(true, 8080, 8443), &ips(&["::1", "2001:db8::5"])),
            ("https://[2001:db8::5]:8443/".into(), true)
        );
        // Only loopback advertised (tests): that, never "localhost".
        assert_eq!(
            invite_base(http(true, 8080, 8443), &ips(&["127.0.0.1"])),
            ("https://127.0.0.1:8443/".into(), true)
        );
        assert_eq!(
            invite_link("https://192.0.2.10:8443/", "会议 1&x"),
            "https://192.0.2.10:8443/?roomName=%E4%BC%9A%E8%AE%AE%201%26x"
        );
    }

    #[test]
    fn qr_is_svg() {
        let svg = qr_svg("https://192.0.2.10:8443/?roomName=r").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(qr_svg(&"x".repeat(5000)).is_none());
    }

    #[test]
    fn room_parameter() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(room_param(&uri("/q")), Ok(None));
        assert_eq!(
            room_param(&uri("/q?a=1&room=a%20b+c")),
            Ok(Some("a b c".into()))
        );
        assert_eq!(room_param(&uri("/q?room=%E4")), Err(()));
        assert_eq!(room_param(&uri("/q?room=%zz")), Err(()));
    }

    #[test]
    fn access_in_token_mode() {
        let open = crate::auth::Authority::new(&crate::config::Auth::default()).unwrap();
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(decide(&open, far, None), Ok(Reader::All));
        let cfg = crate::config::Auth {
            mode: crate::config::AuthMode::Token,
            secret: "s".repeat(32),
            ..crate::config::Auth::default()
        };
        let token = crate::auth::Authority::new(&cfg).unwrap();
        // Loopback (the device's own screen): all; anyone else needs a valid token.
        assert_eq!(
            decide(&token, "127.0.0.1".parse().unwrap(), None),
            Ok(Reader::All)
        );
        assert_eq!(
            decide(&token, "::ffff:127.0.0.1".parse().unwrap(), None),
            Ok(Reader::All)
        );
        assert!(decide(&token, far, None).is_err());
        assert!(decide(&token, far, Some("not.a.token")).is_err());
    }

    #[test]
    fn levels_are_listed_and_filtered() {
        let levels = crate::device::levels::Levels::default();
        levels.set("r-ann-00aa", 0.6);
        levels.set("r-bob-00bb", 0.1);
        let all = levels_body(&levels, None);
        assert_eq!(all["levels"][0]["stream"], "r-ann-00aa");
        assert_eq!(all["levels"][0]["talking"], true);
        assert_eq!(all["levels"][1]["talking"], false);
        let some = levels_body(&levels, Some(&["r-bob-00bb".to_string()]));
        assert_eq!(some["levels"].as_array().map(Vec::len), Some(1));
        assert_eq!(some["levels"][0]["stream"], "r-bob-00bb");
    }
}
