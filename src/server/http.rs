//! HTTP routes: the WebSocket upgrade (on any path, as the Flashphoner SDK connects
//! to the root), the device's page, `/health`, `/metrics`, the records
//! (`/client/records`, see `records`), the web app's public read-only routes and the
//! room display (`/client/info|rooms|levels|qr.svg`, `/display`, see `client`) and the
//! admin API (`/api/v1`, see `api`), WHIP and WHEP (`/whip`, `/whep`, see `whip`).
//!
//! An upgrade from a web page is allowed only for the origins of [`OriginPolicy`]: a
//! page on some other site a LAN user visits must not drive the device's rooms.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use log::info;

use super::{access, api, client, records, session, whip, Shared};
use crate::logging::escaped;

/// Every route, for plain HTTP and HTTPS alike.
pub(crate) fn router(shared: Shared) -> Router {
    let gate = api::Gate::new(&shared.config.api);
    let metrics_gate = gate.clone();
    let (whip_routes, whep_routes) = whip::routers(shared.clone());
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route(
            "/metrics",
            get(move |state, peer, headers| metrics(state, peer, headers, metrics_gate.clone())),
        )
        .route("/app.js", get(asset))
        .route("/room-api.js", get(asset))
        .route("/style.css", get(asset))
        .route("/display", get(display))
        .route("/display.js", get(asset))
        .route("/client/info", get(client::info))
        .route("/client/rooms", get(client::rooms))
        .route("/client/levels", get(client::levels))
        .route("/client/qr.svg", get(client::qr))
        .route(records::PREFIX, get(records::list))
        .route(
            &format!("{}/{{name}}", records::PREFIX),
            get(records::download),
        )
        .nest_service(api::PREFIX, api::router(shared.clone(), gate.clone()))
        .nest_service(whip::WHIP_PREFIX, whip_routes)
        .nest_service(whip::WHEP_PREFIX, whep_routes)
        .fallback(get(other_path))
        .with_state(shared)
}

/// Which web pages may open the signalling WebSocket (`[http] allowed_origins`).
///
/// Allowed: requests without `Origin` (not a browser page: ffmpeg, native apps), pages
/// opened from files (`Origin: null`), pages of the host the browser reached the device
/// by (any port: the web app, an SDK page served beside it), the device's own names
/// and addresses, and the configured origins (`"*"`: any).
#[derive(Debug)]
pub(crate) struct OriginPolicy {
    any: bool,
    /// Configured origins, lower case, without a trailing slash.
    allowed: Vec<String>,
    /// The device's own host names and addresses, lower case.
    own_hosts: Vec<String>,
}

impl OriginPolicy {
    pub fn new(allowed: &[String], advertised: &[IpAddr]) -> OriginPolicy {
        let mut own_hosts: Vec<String> =
            vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        if let Some(host) = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
        {
            let host = host.to_ascii_lowercase();
            own_hosts.push(format!("{host}.local"));
            own_hosts.push(host);
        }
        for ip in advertised {
            own_hosts.push(match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            });
        }
        OriginPolicy {
            any: allowed.iter().any(|o| o == "*"),
            allowed: allowed
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            own_hosts,
        }
    }

    /// Whether a page of `origin` may upgrade a request that came with `host`.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(|o| o.trim().to_ascii_lowercase()) else {
            return true;
        };
        if self.any || origin == "null" {
            return true;
        }
        if self.allowed.contains(&origin) {
            return true;
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        let origin_host = host_part(authority);
        let same_host = host.is_some_and(|h| host_part(&h.to_ascii_lowercase()) == origin_host);
        same_host || self.own_hosts.iter().any(|h| *h == origin_host)
    }
}

/// The host of `host[:port]` or `[v6][:port]`.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority.split(':').next().unwrap_or(authority)
}

async fn root(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(shared, peer, &headers, ws),
        Err(_) => Html(INDEX_HTML).into_response(),
    }
}

/// The room display (`web/display.html`): the device's own screen, a kiosk browser.
async fn display() -> Response {
    Html(DISPLAY_HTML).into_response()
}

async fn other_path(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(shared, peer, &headers, ws),
        Err(_) => (StatusCode::NOT_FOUND, "Not found\n").into_response(),
    }
}

async fn asset(uri: axum::http::Uri) -> Response {
    match ASSETS.iter().find(|(path, _, _)| *path == uri.path()) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "Not found\n").into_response(),
    }
}

fn upgrade(
    shared: Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = text(header::ORIGIN);
    if !shared.origins.allows(origin, text(header::HOST)) {
        let origin = escaped(origin.unwrap_or_default());
        info!("WebSocket upgrade from a page of {origin} refused: not in [http] allowed_origins");
        return (
            StatusCode::FORBIDDEN,
            format!("Origin {origin} is not allowed to use this device's rooms: add it to [http] allowed_origins\n"),
        )
            .into_response();
    }
    // Counted per address from the upgrade until the session ends.
    let guard = shared.admission.session(peer.ip());
    let limit = shared.config.signalling.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, shared, guard))
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    #[serde(flatten)]
    stats: crate::rooms::Stats,
    /// Live WebRTC peer connections.
    peers: usize,
}

#[derive(serde::Serialize)]
struct Liveness {
    status: &'static str,
}

/// Liveness for anyone; occupancy and version only in open mode or with an admin
/// token (`Authorization: Bearer <token>`, minted with `huddle token --admin`).
async fn health(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    if !shared.authority.admin(bearer) {
        return (no_store, Json(Liveness { status: "ok" })).into_response();
    }
    let stats = *shared.stats.borrow();
    (
        no_store,
        Json(Health {
            status: "ok",
            version: crate::VERSION,
            stats,
            peers: shared
                .media_peers
                .load(std::sync::atomic::Ordering::Relaxed),
        }),
    )
        .into_response()
}

/// Prometheus metrics, for loopback clients, `[metrics] allow` and `[api]` keys.
async fn metrics(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    gate: api::Gate,
) -> Response {
    let config = &shared.config;
    if !config.metrics.enabled {
        return (StatusCode::NOT_FOUND, "Not found\n").into_response();
    }
    let ip = peer.ip().to_canonical();
    let listed = config
        .metrics
        .allow
        .iter()
        .filter_map(|a| crate::config::parse_network(a))
        .any(|net| crate::config::in_network(ip, net));
    if !(access::is_loopback(ip) || listed) {
        if let Some(refused) = gate.refusal(ip, &headers, "GET /metrics") {
            return refused;
        }
    }
    let sample = crate::metrics::collect::sample(&shared).await;
    let text =
        crate::metrics::encode_sample(&sample, &shared.media_counters, &shared.signalling_counters);
    (
        [
            (header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// The device web app (`web/`), compiled in: an appliance serves it without a
/// file system layout to get right.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const DISPLAY_HTML: &str = include_str!("../../web/display.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/display.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/display.js"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/room-api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/room-api.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let p = OriginPolicy::new(
            &["https://Portal.example.com/".into()],
            &[
                "192.0.2.10".parse().unwrap(),
                "2001:db8::5".parse().unwrap(),
            ],
        );
        // Not a page, or a page from a file.
        assert!(p.allows(None, Some("device:8080")));
        assert!(p.allows(Some("null"), Some("device:8080")));
        // The device's own pages, on any port of the name the browser used.
        assert!(p.allows(Some("http://device:8080"), Some("device:8080")));
        assert!(p.allows(Some("http://device:3000"), Some("device:8080")));
        assert!(p.allows(Some("https://[2001:db8::5]:8443"), Some("x:1")));
        assert!(p.allows(Some("http://192.0.2.10:9000"), Some("huddle.corp:8080")));
        assert!(p.allows(Some("http://localhost:5000"), Some("127.0.0.1:8080")));
        // Configured.
        assert!(p.allows(Some("https://portal.example.com"), Some("device:8443")));
        // Anything else.
        assert!(!p.allows(Some("https://evil.example"), Some("device:8080")));
        assert!(!p.allows(Some("http://portal.example.com"), Some("device:8080")));
        assert!(!p.allows(Some("https://device.evil.example"), Some("device:8080")));
        assert!(!p.allows(Some("chrome-extension://abc"), Some("device:8080")));
        assert!(!p.allows(Some("http://evil.example"), None));
        let any = OriginPolicy::new(&["*".into()], &[]);
        assert!(any.allows(Some("https://evil.example"), Some("device")));
    }
}
