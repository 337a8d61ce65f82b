//! HTTP routes: the WebSocket upgrade (on any path, as the Flashphoner SDK connects
//! to the root), the device's page and `/health`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use log::warn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{session, Shared};

/// Every route, for plain HTTP and HTTPS alike.
pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/app.js", get(asset))
        .route("/room-api.js", get(asset))
        .route("/style.css", get(asset))
        .fallback(get(other_path))
        .with_state(shared)
}

pub(crate) async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    // Signalling frames are small and latency-sensitive: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!("HTTP server error: {e}");
    }
}

async fn root(
    State(shared): State<Shared>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(shared, ws),
        Err(_) => Html(INDEX_HTML).into_response(),
    }
}

async fn other_path(
    State(shared): State<Shared>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(shared, ws),
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

fn upgrade(shared: Shared, ws: WebSocketUpgrade) -> Response {
    let limit = shared.config.signalling.max_message_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, shared))
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

async fn health(State(shared): State<Shared>) -> impl IntoResponse {
    let stats = *shared.stats.borrow();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(Health {
            status: "ok",
            version: crate::VERSION,
            stats,
            peers: shared
                .media_peers
                .load(std::sync::atomic::Ordering::Relaxed),
        }),
    )
}

/// The device web app (`web/`), compiled in: an appliance serves it without a
/// file system layout to get right.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
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
