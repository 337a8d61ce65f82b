//! WHIP (RFC 9725) and WHEP on the HTTP(S) listener: a WHIP client (OBS 30+, GStreamer,
//! a web page) publishes into a room as participant `<login>`, a WHEP client plays a
//! room stream, each with one HTTP POST of its SDP offer; the answer carries the
//! device's ICE-lite host candidates, so no trickle is needed (PATCH → 405, as the RFC
//! allows). `DELETE` on the resource URL ends it.
//!
//! A resource is an ordinary session of the room core without a socket: the edge sends
//! the commands a browser would (`Connect` with the bearer token's `Access`, `Join`,
//! `Publish`/`Play` with the offer), answers the core's pings, and carries the media
//! engine's answer (`setRemoteSDP`) into the HTTP response. The publish or play goes
//! through the room core and the media engine exactly like a browser's (names, limits,
//! tokens, codecs, ICE timeout). The resource ends with its stream (ICE timeout, a
//! failed peer, the publisher gone for a player), with the session (kicked, room
//! closed, shutdown) or with a DELETE; then the member leaves and the session ends.
//!
//! A WHEP player is a visible member of the room, like an RTMP player: under its
//! token's login, else "WHEP player <n>".
//!
//! Resources count as signalling sessions of their client's address
//! (`[signalling] max_sessions_per_address` → 429) and of the device
//! (`[signalling] max_sessions` → 503).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, MethodRouter};
use axum::Router;
use futures_util::StreamExt;
use log::{info, warn};
use tokio::sync::oneshot;

use super::member::{Closed, JoinError, Link, Member};
use super::Shared;
use crate::auth::Access;
use crate::logging::escaped;
use crate::metrics::signalling::classify;
use crate::metrics::RefusalReason;
use crate::rooms::{
    Command, ConnectInfo as CoreConnectInfo, ServerMessage, StreamRef, StreamRequest,
};

/// Where the WHIP and WHEP endpoints are (nested there by `http::router`).
pub(crate) const WHIP_PREFIX: &str = "/whip";
pub(crate) const WHEP_PREFIX: &str = "/whep";
/// The largest offer taken (a browser's is 4-8 KiB).
pub(crate) const MAX_OFFER_BYTES: usize = 64 * 1024;
/// How long the media engine may take to answer the offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a DELETE waits for the resource to be gone.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// The edge's label in the member's operation ids.
const LABEL: &str = "whip";
const SDP: &str = "application/sdp";

/// A publisher (WHIP) or a player (WHEP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Whip => WHIP_PREFIX,
            Kind::Whep => WHEP_PREFIX,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// One live resource: how to end it.
struct Resource {
    kind: Kind,
    room: String,
    /// The login (WHIP) or the stream (WHEP) of its URL.
    name: String,
    /// Told to end; answers once the member has left.
    stop: oneshot::Sender<oneshot::Sender<()>>,
}

type Resources = Arc<Mutex<HashMap<String, Resource>>>;

#[derive(Clone)]
struct Edge {
    shared: Shared,
    resources: Resources,
    kind: Kind,
}

/// The WHIP and WHEP routers (relative to `WHIP_PREFIX` and `WHEP_PREFIX`), sharing
/// one table of resources.
pub(crate) fn routers(shared: Shared) -> (Router, Router) {
    let resources = Resources::default();
    let make = |kind| {
        let edge = Edge {
            shared: shared.clone(),
            resources: resources.clone(),
            kind,
        };
        let endpoint: MethodRouter<Edge> = any(endpoint);
        let resource: MethodRouter<Edge> = any(resource);
        Router::new()
            .route("/{room}/{name}", endpoint)
            .route("/{room}/{name}/{id}", resource)
            .fallback(|| async { plain(StatusCode::NOT_FOUND, "Not found") })
            .with_state(edge)
    };
    (make(Kind::Whip), make(Kind::Whep))
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// The endpoint URL: POST an offer; OPTIONS (CORS preflight); nothing else.
async fn endpoint(
    State(edge): State<Edge>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Path((room, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ALLOW: &str = "POST, OPTIONS";
    let cors = match cors(&edge.shared, &headers) {
        Ok(c) => c,
        Err(refused) => return refused.response(),
    };
    let mut response = match method {
        Method::POST => offer(&edge, peer, (room, name), &headers, body).await,
        Method::OPTIONS => options(ALLOW, cors.is_some()),
        _ => not_allowed(&method, ALLOW),
    };
    add_cors(&mut response, cors);
    response
}

/// The resource URL: DELETE ends it; PATCH (trickle, ICE restart) is not supported.
async fn resource(
    State(edge): State<Edge>,
    method: Method,
    Path((room, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    const ALLOW: &str = "DELETE, OPTIONS";
    let cors = match cors(&edge.shared, &headers) {
        Ok(c) => c,
        Err(refused) => return refused.response(),
    };
    let mut response = match method {
        Method::DELETE => delete(&edge, &room, &name, &id).await,
        Method::OPTIONS => options(ALLOW, cors.is_some()),
        _ => not_allowed(&method, ALLOW),
    };
    add_cors(&mut response, cors);
    response
}

fn not_allowed(method: &Method, allow: &'static str) -> Response {
    let text = match *method {
        Method::PATCH => "Method not allowed: no trickle ICE and no ICE restart here (RFC 9725 §4.3.1); the answer carries every candidate, POST a new offer to reconnect".to_string(),
        _ => format!("Method not allowed: {allow}"),
    };
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, &text);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn options(allow: &'static str, cors: bool) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(allow));
    h.insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static(SDP),
    );
    if cors {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, DELETE, PATCH, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, If-Match"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    r
}

/// The origin to allow in CORS answers (`None`: not a page), or the refusal of a page
/// the Origin policy does not allow (the WebSocket's: `[http] allowed_origins`).
fn cors(shared: &Shared, headers: &HeaderMap) -> Result<Option<HeaderValue>, Refused> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(origin) = text(header::ORIGIN) else {
        return Ok(None);
    };
    if !shared.origins.allows(Some(origin), text(header::HOST)) {
        let origin = escaped(origin);
        info!("WHIP/WHEP request from a page of {origin} refused: not in [http] allowed_origins");
        return Err(Refused(
            StatusCode::FORBIDDEN,
            format!("Origin {origin} is not allowed to use this device's rooms: add it to [http] allowed_origins"),
        ));
    }
    Ok(HeaderValue::from_str(origin).ok())
}

fn add_cors(response: &mut Response, origin: Option<HeaderValue>) {
    let Some(origin) = origin else { return };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Accept-Post, Allow"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// Why an offer is refused, as an HTTP answer.
struct Refused(StatusCode, String);

impl Refused {
    fn response(self) -> Response {
        let mut r = plain(self.0, &self.1);
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.0 == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            r.headers_mut().insert(
                HeaderName::from_static("accept-post"),
                HeaderValue::from_static(SDP),
            );
        }
        r
    }

    /// A refusal of the room core or the media engine, by its text.
    fn from_core(reason: String) -> Refused {
        Refused(status_of(&reason), reason)
    }

    /// The service cannot take it now.
    fn unavailable(reason: impl Into<String>) -> Refused {
        Refused(StatusCode::SERVICE_UNAVAILABLE, reason.into())
    }

    /// A join the room core refused, or could not answer.
    fn from_join(e: JoinError) -> Refused {
        match e {
            JoinError::Refused(reason) => Refused::from_core(reason),
            JoinError::Unavailable(reason) => Refused::unavailable(reason),
        }
    }
}

/// The HTTP status of a room core or media engine refusal.
fn status_of(reason: &str) -> StatusCode {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("overloaded") || lower.contains("in time") || lower.contains("stopping") {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // The device's own login: taken, like a member's.
    if lower.contains("reserved for the device") {
        return StatusCode::CONFLICT;
    }
    // A name the core refuses ("... is too long: at most N characters").
    if lower.contains("too long") || lower.contains("is required") || lower.contains("must not") {
        return StatusCode::BAD_REQUEST;
    }
    match classify(reason) {
        RefusalReason::RateLimit => StatusCode::TOO_MANY_REQUESTS,
        RefusalReason::Restricted => StatusCode::FORBIDDEN,
        RefusalReason::NotFound => StatusCode::NOT_FOUND,
        RefusalReason::Limits if lower.contains("device") => StatusCode::SERVICE_UNAVAILABLE,
        RefusalReason::Limits => StatusCode::FORBIDDEN,
        RefusalReason::Invalid if lower.contains("already") => StatusCode::CONFLICT,
        RefusalReason::Invalid | RefusalReason::Other | RefusalReason::NotConnected => {
            StatusCode::BAD_REQUEST
        }
    }
}

/// Whether the Content-Type is `application/sdp` (parameters ignored).
fn is_sdp(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(SDP))
}

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// The body, at most `MAX_OFFER_BYTES`, as text.
async fn read_offer(headers: &HeaderMap, body: Body) -> Result<String, Refused> {
    let too_large = || {
        Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The offer is larger than {MAX_OFFER_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_OFFER_BYTES as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| Refused(StatusCode::BAD_REQUEST, "The offer was cut off".into()))?;
        if bytes.len() + chunk.len() > MAX_OFFER_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        Refused(
            StatusCode::BAD_REQUEST,
            "The offer is not UTF-8 text".into(),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Refused(StatusCode::BAD_REQUEST, "Missing SDP offer".into()));
    }
    Ok(text)
}

/// (audio, video): the kinds the offer has m-lines for (port 0 = rejected).
fn offered_kinds(sdp: &str) -> (bool, bool) {
    let has = |kind: &str| {
        sdp.lines().any(|l| {
            l.strip_prefix("m=")
                .and_then(|rest| rest.strip_prefix(kind))
                .and_then(|rest| rest.strip_prefix(' '))
                .is_some_and(|rest| !rest.starts_with("0 ") && !rest.starts_with("0/"))
        })
    };
    (has("audio"), has("video"))
}

/// A path segment, percent-encoded (RFC 3986 unreserved characters kept).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn offer(
    edge: &Edge,
    peer: SocketAddr,
    (room, name): (String, String),
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match start(edge, peer, (room, name), headers, body).await {
        Ok(r) => r,
        Err(refused) => refused.response(),
    }
}

/// Checks the request, opens the session, joins, offers; the 201 with the answer.
async fn start(
    edge: &Edge,
    peer: SocketAddr,
    (room, name): (String, String),
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let shared = &edge.shared;
    let kind = edge.kind;
    if !is_sdp(headers) {
        return Err(Refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The offer must be sent as Content-Type: application/sdp".into(),
        ));
    }
    let sdp = read_offer(headers, body).await?;
    let token = bearer(headers);
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let login = match kind {
        Kind::Whip => name.clone(),
        Kind::Whep => token
            .and_then(|t| shared.authority.subject(t))
            .unwrap_or_else(|| format!("WHEP player {session}")),
    };
    let who = match kind {
        Kind::Whip => format!(
            "whip publisher {} in room {} ({peer})",
            escaped(&login),
            escaped(&room)
        ),
        Kind::Whep => format!(
            "whep player {} of {} in room {} ({peer})",
            escaped(&login),
            escaped(&name),
            escaped(&room)
        ),
    };
    let access = shared.authority.check(Some(&login), token);
    let refused = match &access {
        // No token, or not a valid one: who is asking is unknown.
        Access::Refused(why) if token.and_then(|t| shared.authority.subject(t)).is_none() => {
            Some(Refused(StatusCode::UNAUTHORIZED, why.clone()))
        }
        Access::Refused(why) => Some(Refused(StatusCode::FORBIDDEN, why.clone())),
        Access::Granted { publish: false, .. } if kind == Kind::Whip => Some(Refused(
            StatusCode::FORBIDDEN,
            "Restricted access: the token does not allow publishing".into(),
        )),
        _ => None,
    };
    if let Some(refused) = refused {
        // The reason, never the token.
        info!("{who}: refused: {}", escaped(&refused.1));
        return Err(refused);
    }
    // The token's rooms, before anything about the room is told.
    if let Access::Granted { rooms, .. } = &access {
        if !rooms.allows(&room) {
            let why = format!("Restricted access: the token does not allow room '{room}'");
            info!("{who}: refused: {}", escaped(&why));
            return Err(Refused(StatusCode::FORBIDDEN, why));
        }
    }
    if kind == Kind::Whip {
        replace(edge, &room, &login, &who).await;
    }
    let Some(admission) = shared.admission.session(peer.ip()) else {
        let max = shared.config.signalling.max_sessions_per_address;
        info!("{who}: refused: too many sessions from the address");
        return Err(Refused(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many sessions from your address (at most {max})"),
        ));
    };
    // A play of a stream that is not there is refused before anyone sees a member.
    if kind == Kind::Whep
        && (!name.starts_with(&format!("{room}-"))
            || shared.control.endpoints.codecs(&name).await.is_none())
    {
        info!("{who}: refused: no such stream");
        return Err(Refused(StatusCode::NOT_FOUND, "Stream not found".into()));
    }
    let queue = shared.config.signalling.outbound_queue;
    let mut member = Member::connect(&shared.to_core, session, who, LABEL, Link::Remote, queue)
        .await
        .map_err(|closed| Refused::unavailable(closed.text()))?
        // The address's session slot, and the service's shutdown waits for the session.
        .holding((admission, shared.alive.clone()));
    let joined = member
        .join(
            CoreConnectInfo {
                login: Some(login.clone()),
                access,
                client_browser_version: Some(kind.label().to_ascii_uppercase()),
                ..CoreConnectInfo::default()
            },
            &room,
        )
        .await;
    if let Err(e) = joined {
        member.leave(None).await;
        return Err(Refused::from_join(e));
    }
    let (has_audio, has_video) = offered_kinds(&sdp);
    let media_session_id = format!("{}-{session}", kind.label());
    let stream = match kind {
        Kind::Whip => {
            // Named as the web app and the Flashphoner SDK name theirs.
            let tag = uuid::Uuid::new_v4().simple().to_string();
            format!("{room}-{login}-{}", &tag[..4])
        }
        Kind::Whep => name.clone(),
    };
    let request = StreamRequest {
        media_session_id: media_session_id.clone(),
        name: stream.clone(),
        room: Some(room.clone()),
        sdp,
        has_audio,
        has_video,
        record: false,
    };
    let command = match kind {
        Kind::Whip => Command::Publish(request),
        Kind::Whep => Command::Play(request),
    };
    let answer = match member.command(command).await {
        true => answer(&mut member, &media_session_id).await,
        false => Err(Refused::unavailable(Closed(None).text())),
    };
    let answer = match answer {
        Ok(a) => a,
        Err(refused) => {
            info!("{}: refused: {}", member.who, escaped(&refused.1));
            // The core ended the failed stream: only the leave is left.
            member.leave(None).await;
            return Err(refused);
        }
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let location = format!(
        "{}/{}/{}/{id}",
        kind.prefix(),
        encode_segment(&room),
        encode_segment(&name)
    );
    let (stop_tx, stop) = oneshot::channel();
    if let Ok(mut map) = edge.resources.lock() {
        map.insert(
            id.clone(),
            Resource {
                kind,
                room: room.clone(),
                name: name.clone(),
                stop: stop_tx,
            },
        );
    }
    info!(
        "{}: {} {} as resource {id}",
        member.who,
        match kind {
            Kind::Whip => "publishing",
            Kind::Whep => "playing",
        },
        escaped(&stream)
    );
    let ending = Ending {
        media_session_id,
        stream,
        kind,
    };
    tokio::spawn(run(member, ending, stop, edge.resources.clone(), id));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    Ok(response)
}

/// DELETE of a resource URL: the stream ends and the member leaves, then 200.
async fn delete(edge: &Edge, room: &str, name: &str, id: &str) -> Response {
    let found = edge.resources.lock().ok().and_then(|mut map| {
        let matches = map
            .get(id)
            .is_some_and(|r| r.kind == edge.kind && r.room == room && r.name == name);
        matches.then(|| map.remove(id)).flatten()
    });
    match found {
        Some(resource) => {
            end_resource(resource, id).await;
            plain(StatusCode::OK, "Ended")
        }
        None => plain(StatusCode::NOT_FOUND, "No such resource"),
    }
}

/// Ends the WHIP resource of `room`/`login`, if there is one (a client that reconnects
/// before its old peer has failed: OBS after a crash or a network change).
async fn replace(edge: &Edge, room: &str, login: &str, who: &str) {
    let found = edge.resources.lock().ok().and_then(|mut map| {
        let id = map
            .iter()
            .find(|(_, r)| r.kind == Kind::Whip && r.room == room && r.name == login)
            .map(|(id, _)| id.clone())?;
        map.remove(&id).map(|r| (id, r))
    });
    if let Some((id, resource)) = found {
        info!("{who}: replaces resource {id} of the same room and login");
        end_resource(resource, &id).await;
    }
}

/// Tells a resource's task to end and waits (bounded) until its member has left.
async fn end_resource(resource: Resource, id: &str) {
    let (done_tx, done) = oneshot::channel();
    if resource.stop.send(done_tx).is_ok()
        && tokio::time::timeout(DELETE_TIMEOUT, done).await.is_err()
    {
        warn!(
            "{} resource {}: did not end in time",
            resource.kind.label(),
            escaped(id)
        );
    }
}

/// What the resource's task needs to end its stream.
struct Ending {
    media_session_id: String,
    stream: String,
    kind: Kind,
}

/// A resource's life: pings answered, until its stream ends, the session is closed or
/// a DELETE comes; then the member leaves and the session ends.
async fn run(
    mut member: Member,
    ending: Ending,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    resources: Resources,
    id: String,
) {
    let (reason, done) = loop {
        tokio::select! {
            next = member.next() => match next {
                Ok(ServerMessage::StreamStatus(status))
                    if status.media_session_id == ending.media_session_id
                        && status.status.is_terminal() =>
                {
                    let why = format!("the stream ended ({}): {}", status.status.as_str(), status.info);
                    break (why, None);
                }
                Ok(_) => {}
                Err(closed) => {
                    info!("{}: closed by the room service ({})", member.who, closed.text());
                    if let Ok(mut map) = resources.lock() {
                        map.remove(&id);
                    }
                    return;
                }
            },
            done = &mut stop => break ("deleted".to_string(), done.ok()),
        }
    };
    info!("{}: leaving the room: {}", member.who, escaped(&reason));
    if let Ok(mut map) = resources.lock() {
        map.remove(&id);
    }
    let end = done.as_ref().map(|_| {
        let r = StreamRef {
            media_session_id: ending.media_session_id.clone(),
            name: Some(ending.stream.clone()),
        };
        match ending.kind {
            Kind::Whip => Command::Unpublish(r),
            Kind::Whep => Command::Stop(r),
        }
    });
    member.leave(end).await;
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// The media engine's answer to the offer of `media_session_id`, or why not.
async fn answer(member: &mut Member, media_session_id: &str) -> Result<String, Refused> {
    let waited = tokio::time::timeout(ANSWER_TIMEOUT, async {
        loop {
            match member.next().await {
                Ok(ServerMessage::RemoteSdp {
                    media_session_id: id,
                    sdp,
                }) if id == media_session_id => return Ok(sdp),
                Ok(ServerMessage::StreamStatus(s))
                    if s.media_session_id == media_session_id && s.status.is_terminal() =>
                {
                    return Err(Refused::from_core(s.info))
                }
                Ok(_) => {}
                Err(closed) => return Err(Refused::unavailable(closed.text())),
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        Err(Refused::unavailable(
            "The media engine did not answer in time",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_http_statuses() {
        for (reason, status) in [
            ("Room already has user with such login", 409),
            (
                "Login 'Room system' is reserved for the device: connect with another login",
                409,
            ),
            ("Login is required: connect with custom.login", 400),
            ("Room is full: at most 16 participants", 403),
            ("Too many rooms on this device: at most 64", 503),
            ("Too many streams on this device: at most 32", 503),
            ("Restricted access: the token does not allow room 'x'", 403),
            ("Stream not found", 404),
            ("Invalid SDP offer: no m-lines", 400),
            ("No common codecs", 400),
            ("Room name is too long: at most 128 characters", 400),
            ("Room name must not be only spaces", 400),
            ("Media engine overloaded, try again", 503),
            (
                "Too many requests: the limit is 50 messages per second",
                429,
            ),
        ] {
            assert_eq!(status_of(reason).as_u16(), status, "{reason}");
        }
    }

    #[test]
    fn content_type_and_bearer() {
        let mut h = HeaderMap::new();
        assert!(!is_sdp(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/SDP; charset=utf-8"),
        );
        assert!(is_sdp(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_sdp(&h));
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  x "),
        );
        assert_eq!(bearer(&h), Some("x"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "abc"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(bearer(&h), None, "{bad}");
        }
    }

    #[test]
    fn kinds_of_an_offer() {
        let both = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(offered_kinds(both), (true, true));
        let video = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(offered_kinds(video), (false, true));
        assert_eq!(offered_kinds("v=0\r\nm=audiox 9 x\r\n"), (false, false));
    }

    #[test]
    fn location_segments_are_encoded() {
        assert_eq!(encode_segment("room 1/ü"), "room%201%2F%C3%BC");
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
    }
}
