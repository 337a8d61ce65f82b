//! The admin REST API under `/api/v1` (docs/api.md, docs/openapi.json): rooms and their
//! participants, streams, recordings and records, RTMP pushes and the device's camera
//! and microphone. JSON in and out; every error is `{"error": "...", "code": "..."}`
//! with its HTTP status.
//!
//! Access is `access`'s (default deny), checked before anything else of a request is
//! looked at; `/api/v1/openapi.json` is public (it describes, it does not act). Bodies
//! are read up to `[api] max_body_bytes` (413 beyond), must be `application/json`
//! (415) and are parsed strictly: unknown fields are refused (400 with serde's reason).
//! Wrong methods get a JSON 405, unknown paths under `/api/v1` a JSON 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use log::{debug, info};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::access::{self, Failures, Keys};
use super::control::ApiError;
use super::Shared;
use crate::logging::escaped;
use crate::record::catalog::{self, RecordKind};
use crate::record::listing;

/// The API's path prefix.
pub(crate) const PREFIX: &str = "/api/v1";

/// The OpenAPI 3 description, served at `/api/v1/openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The paths the router serves (in OpenAPI's notation), for the tests' comparison with
/// docs/openapi.json.
#[cfg(test)]
const PATHS: &[&str] = &[
    "/rooms",
    "/rooms/{room}",
    "/rooms/{room}/participants/{login}/kick",
    "/rooms/{room}/participants/{login}/mute",
    "/rooms/{room}/recording",
    "/streams",
    "/streams/{stream}",
    "/streams/{stream}/recording",
    "/recordings",
    "/records",
    "/records/{name}",
    "/pushes",
    "/pushes/{id}",
    "/device",
    "/openapi.json",
];

#[derive(Clone)]
struct Api {
    shared: Shared,
    gate: Gate,
}

/// An error answer: `ApiError` rendered as JSON.
struct Failure(ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure(e)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            error_body(&self.0),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type Answer = Result<Response, Failure>;

fn ok<T: Serialize>(status: StatusCode, value: T) -> Answer {
    Ok((status, [(header::CACHE_CONTROL, "no-store")], Json(value)).into_response())
}

fn no_content() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every `/api/v1` route; the state is bound (merged into `http::router`).
pub(crate) fn router(shared: Shared, gate: Gate) -> Router {
    let api = Api { gate, shared };
    let json_405 = |m: MethodRouter<Api>| m.fallback(method_not_allowed);
    // Paths relative to `PREFIX` (nested there by `http::router`).
    let p = |path: &str| path.to_owned();
    Router::new()
        .route(&p("/rooms"), json_405(get(rooms)))
        .route(&p("/rooms/{room}"), json_405(get(room).delete(close_room)))
        .route(
            &p("/rooms/{room}/participants/{login}/kick"),
            json_405(post(kick)),
        )
        .route(
            &p("/rooms/{room}/participants/{login}/mute"),
            json_405(post(mute)),
        )
        .route(
            &p("/rooms/{room}/recording"),
            json_405(post(record_room_on).delete(record_room_off)),
        )
        .route(&p("/streams"), json_405(get(streams)))
        .route(
            &p("/streams/{stream}"),
            json_405(get(stream).delete(end_stream)),
        )
        .route(
            &p("/streams/{stream}/recording"),
            json_405(post(record_stream_on).delete(record_stream_off)),
        )
        .route(&p("/recordings"), json_405(get(recordings)))
        .route(&p("/records"), json_405(get(records)))
        .route(
            &p("/records/{name}"),
            json_405(axum::routing::delete(delete_record)),
        )
        .route(&p("/pushes"), json_405(get(pushes).post(start_push)))
        .route(
            &p("/pushes/{id}"),
            json_405(axum::routing::delete(stop_push)),
        )
        .route(&p("/device"), json_405(get(device).patch(set_device)))
        .route_layer(middleware::from_fn_with_state(api.clone(), guard))
        .route(&p("/openapi.json"), json_405(get(openapi)))
        .fallback(unknown_path)
        .with_state(api)
}

/// Access (see `access`) for the admin API.
async fn guard(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let what = format!("{} {}", request.method(), escaped(request.uri().path()));
    if let Some(refused) = api.gate.refusal(peer.ip(), request.headers(), &what) {
        return refused;
    }
    next.run(request).await
}

/// The keys and the failed-attempt limiter, shared by the admin API and `/metrics`.
#[derive(Clone)]
pub(crate) struct Gate {
    keys: Arc<Keys>,
    failures: Arc<Failures>,
}

impl Gate {
    pub fn new(cfg: &crate::config::Api) -> Gate {
        let keys = Keys::new(cfg);
        if keys.is_empty() {
            info!("admin API: no [api] keys configured, answering loopback clients only");
        } else {
            info!("admin API: {} key(s) configured", cfg.keys.len());
        }
        Gate {
            keys: Arc::new(keys),
            failures: Arc::new(Failures::new(cfg.failed_attempts_per_minute)),
        }
    }

    /// The answer refusing a request, if it is refused: 429 while the address is over
    /// its failed attempts, else the key check's; a refusal counts as a failed attempt.
    /// `what` names the request in the log.
    pub fn refusal(
        &self,
        peer: std::net::IpAddr,
        headers: &HeaderMap,
        what: &str,
    ) -> Option<Response> {
        let ip = peer.to_canonical();
        let now = Instant::now();
        if let Err(wait) = self.failures.admit(ip, now) {
            debug!("admin API: {ip} is over its failed attempts");
            let mut response = Failure(ApiError::new(
                429,
                "rate_limited",
                "Too many failed attempts: try again later",
            ))
            .into_response();
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Some(response);
        }
        if let Err(e) = access::check(&self.keys, ip, headers) {
            self.failures.failed(ip, now);
            info!("admin API: {what} from {ip} refused ({})", e.status);
            return Some(Failure(e).into_response());
        }
        None
    }
}

async fn method_not_allowed() -> Failure {
    Failure(ApiError::new(
        405,
        "method_not_allowed",
        "Method not allowed on this path (see /api/v1/openapi.json)",
    ))
}

async fn unknown_path() -> Failure {
    Failure(ApiError::not_found(
        "No such path in the admin API (see /api/v1/openapi.json)",
    ))
}

async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OPENAPI,
    )
        .into_response()
}

/// The path's parameters, or a JSON 400 (not UTF-8 once decoded).
fn params<T>(path: Result<Path<T>, PathRejection>) -> Result<T, Failure> {
    path.map(|Path(p)| p).map_err(|e| {
        Failure(ApiError::invalid(format!(
            "Invalid path: {}",
            e.body_text()
        )))
    })
}

/// The request's JSON body as `T`: `application/json` (415), at most `[api]
/// max_body_bytes` (413), valid and without unknown fields (400 with the reason).
async fn json_body<T: DeserializeOwned>(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Failure> {
    let limit = api.shared.config.api.max_body_bytes;
    let too_large = || {
        Failure(ApiError::new(
            413,
            "payload_too_large",
            format!("The request body is over {limit} bytes ([api] max_body_bytes)"),
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() && declared.unwrap_or(0) == 0 {
        return Err(Failure(ApiError::invalid(
            "A JSON body is required (Content-Type: application/json)",
        )));
    }
    if essence != "application/json" {
        return Err(Failure(ApiError::new(
            415,
            "unsupported_media_type",
            "The request body must be JSON: Content-Type: application/json",
        )));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    Ok(decode_body(&bytes)?)
}

/// A request body's bytes as `T` (valid JSON, no unknown fields), or the 400 saying why.
pub(crate) fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("A JSON body is required"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("Invalid JSON body: {e}")))
}

/// The JSON body of an error answer.
pub(crate) fn error_body(e: &ApiError) -> String {
    serde_json::to_string(&ErrorBody {
        error: &e.message,
        code: e.code,
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct Rooms {
    rooms: Vec<super::control::RoomView>,
}

async fn rooms(State(api): State<Api>) -> Answer {
    let rooms = api.shared.control.rooms().await?;
    ok(StatusCode::OK, Rooms { rooms })
}

async fn room(State(api): State<Api>, path: Result<Path<String>, PathRejection>) -> Answer {
    let room = params(path)?;
    ok(StatusCode::OK, api.shared.control.room(&room).await?)
}

async fn close_room(State(api): State<Api>, path: Result<Path<String>, PathRejection>) -> Answer {
    let room = params(path)?;
    api.shared.control.close_room(&room).await?;
    info!("admin API: room '{}' closed", escaped(&room));
    no_content()
}

async fn kick(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer {
    let (room, login) = params(path)?;
    api.shared.control.kick(&room, &login).await?;
    info!(
        "admin API: '{}' kicked from room '{}'",
        escaped(&login),
        escaped(&room)
    );
    no_content()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MuteRequest {
    audio: Option<bool>,
    video: Option<bool>,
}

impl MuteRequest {
    pub(crate) fn check(self) -> Result<Self, ApiError> {
        if self.audio.is_none() && self.video.is_none() {
            return Err(ApiError::invalid(
                "Give \"audio\" and/or \"video\" (true: muted, false: unmuted)",
            ));
        }
        Ok(self)
    }
}

async fn mute(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let (room, login) = params(path)?;
    let m = json_body::<MuteRequest>(&api, &headers, body)
        .await?
        .check()?;
    let muted = api
        .shared
        .control
        .mute(&room, &login, m.audio, m.video)
        .await?;
    ok(StatusCode::OK, muted)
}

#[derive(Serialize)]
struct RoomRecording {
    room: String,
    recording: bool,
}

async fn record_room(api: Api, path: Result<Path<String>, PathRejection>, on: bool) -> Answer {
    let room = params(path)?;
    api.shared.control.record_room(&room, on).await?;
    if on {
        ok(
            StatusCode::CREATED,
            RoomRecording {
                room,
                recording: on,
            },
        )
    } else {
        no_content()
    }
}

async fn record_room_on(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    record_room(api, path, true).await
}

async fn record_room_off(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    record_room(api, path, false).await
}

#[derive(Serialize)]
struct Streams {
    streams: Vec<super::control::StreamView>,
}

async fn streams(State(api): State<Api>) -> Answer {
    let streams = api.shared.control.streams().await?;
    ok(StatusCode::OK, Streams { streams })
}

async fn stream(State(api): State<Api>, path: Result<Path<String>, PathRejection>) -> Answer {
    let name = params(path)?;
    ok(StatusCode::OK, api.shared.control.stream(&name).await?)
}

async fn end_stream(State(api): State<Api>, path: Result<Path<String>, PathRejection>) -> Answer {
    let name = params(path)?;
    api.shared.control.end_stream(&name).await?;
    info!("admin API: stream '{}' terminated", escaped(&name));
    no_content()
}

#[derive(Serialize)]
struct StreamRecording {
    stream: String,
    recording: bool,
}

async fn record_stream(api: Api, path: Result<Path<String>, PathRejection>, on: bool) -> Answer {
    let stream = params(path)?;
    api.shared.control.record_stream(&stream, on).await?;
    if on {
        ok(
            StatusCode::CREATED,
            StreamRecording {
                stream,
                recording: on,
            },
        )
    } else {
        no_content()
    }
}

async fn record_stream_on(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    record_stream(api, path, true).await
}

async fn record_stream_off(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    record_stream(api, path, false).await
}

#[derive(Serialize)]
struct Recordings {
    recordings: Vec<super::recording::ActiveRecording>,
}

async fn recordings(State(api): State<Api>) -> Answer {
    let recordings = api.shared.control.recordings().await;
    ok(StatusCode::OK, Recordings { recordings })
}

#[derive(Serialize)]
struct Records {
    records: Vec<RecordItem>,
}

/// One record file, as `/client/records` lists it (JSON).
#[derive(Serialize)]
struct RecordItem {
    name: String,
    /// Its download, `/client/records/<name>`.
    url: String,
    kind: RecordKind,
    room: String,
    stream: Option<String>,
    login: Option<String>,
    started: String,
    duration_ms: Option<u64>,
    size: u64,
    in_progress: bool,
}

/// `%XX` for everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn internal(what: &str) -> Failure {
    Failure(ApiError::new(500, "internal", what.to_owned()))
}

async fn records(State(api): State<Api>) -> Answer {
    let dir = api.shared.config.records.dir.clone();
    let live = api.shared.live.clone();
    let scan = tokio::task::spawn_blocking(move || listing::scan(&dir, &live))
        .await
        .map_err(|_| internal("Internal error"))?
        .map_err(|e| {
            log::warn!(
                "admin API: cannot read {}: {e}",
                api.shared.config.records.dir.display()
            );
            internal("Cannot read the records directory")
        })?;
    let records = scan
        .into_iter()
        .map(|l| RecordItem {
            url: format!("{}/{}", super::records::PREFIX, percent_encode(l.name())),
            duration_ms: if l.in_progress {
                None
            } else {
                l.meta.duration_ms
            },
            name: l.meta.name,
            kind: l.meta.kind,
            room: l.meta.room,
            stream: l.meta.stream,
            login: l.meta.login,
            started: l.meta.started,
            size: l.size,
            in_progress: l.in_progress,
        })
        .collect();
    ok(StatusCode::OK, Records { records })
}

/// Deletes a finished record and its sidecar: 400 for a name that is not a plain
/// `*.mp4` file name, 404 when not listed, 409 while it is being written.
async fn delete_record(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let name = params(path)?;
    if !name.ends_with(".mp4") || !listing::plain_name(&name) {
        return Err(Failure(ApiError::invalid(
            "Not a record name: a plain file name ending in .mp4",
        )));
    }
    let dir = api.shared.config.records.dir.clone();
    let live = api.shared.live.clone();
    let target = name.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let Some(listed) = listing::find(&dir, &target, &live) else {
            return Err(ApiError::not_found(format!("Record '{target}' not found")));
        };
        if listed.in_progress || live.contains(&target) {
            return Err(ApiError::conflict(format!(
                "Record '{target}' is being written: stop its recording first"
            )));
        }
        let path = dir.join(&target);
        std::fs::remove_file(&path).map_err(|e| {
            ApiError::new(500, "internal", format!("Cannot delete '{target}': {e}"))
        })?;
        // The sidecar last: a file without one is not listed.
        let _ = std::fs::remove_file(catalog::sidecar(&path));
        Ok(())
    })
    .await
    .map_err(|_| internal("Internal error"))?;
    removed?;
    info!("admin API: record '{}' deleted", escaped(&name));
    no_content()
}

#[derive(Serialize)]
struct Pushes {
    pushes: Vec<super::rtmp_push::PushView>,
}

async fn pushes(State(api): State<Api>) -> Answer {
    ok(
        StatusCode::OK,
        Pushes {
            pushes: api.shared.control.pushes(),
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushRequest {
    pub(crate) stream: String,
    pub(crate) url: String,
    retry_ms: Option<u64>,
}

impl PushRequest {
    pub(crate) fn check(self) -> Result<Self, ApiError> {
        if self.stream.is_empty() || self.url.is_empty() {
            return Err(ApiError::invalid(
                "\"stream\" and \"url\" must not be empty",
            ));
        }
        Ok(self)
    }
}

/// The retry interval of a push when the request names none (`[[rtmp.push]]`'s default).
const DEFAULT_PUSH_RETRY_MS: u64 = 1000;

async fn start_push(State(api): State<Api>, headers: HeaderMap, body: Body) -> Answer {
    let p = json_body::<PushRequest>(&api, &headers, body)
        .await?
        .check()?;
    let view = api.shared.control.start_push(
        &p.stream,
        &p.url,
        p.retry_ms.unwrap_or(DEFAULT_PUSH_RETRY_MS),
    )?;
    let location = format!("{PREFIX}/pushes/{}", percent_encode(&view.id));
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn stop_push(State(api): State<Api>, path: Result<Path<String>, PathRejection>) -> Answer {
    let id = params(path)?;
    api.shared.control.stop_push(&id)?;
    no_content()
}

async fn device(State(api): State<Api>) -> Answer {
    ok(StatusCode::OK, api.shared.control.device()?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceRequest {
    camera: Option<bool>,
    microphone: Option<bool>,
}

impl DeviceRequest {
    pub(crate) fn check(self) -> Result<Self, ApiError> {
        if self.camera.is_none() && self.microphone.is_none() {
            return Err(ApiError::invalid(
                "Give \"camera\" and/or \"microphone\" (true: on, false: off)",
            ));
        }
        Ok(self)
    }
}

async fn set_device(State(api): State<Api>, headers: HeaderMap, body: Body) -> Answer {
    let d = json_body::<DeviceRequest>(&api, &headers, body)
        .await?
        .check()?;
    ok(
        StatusCode::OK,
        api.shared.control.set_device(d.camera, d.microphone)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_is_json_with_every_path() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in PATHS {
            assert!(paths.contains_key(&format!("{PREFIX}{path}")), "{path}");
        }
        assert_eq!(paths.len(), PATHS.len());
    }
}
