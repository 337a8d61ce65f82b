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

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .fallback(get(other_path))
        .with_state(shared);
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

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Huddle</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
 code { background: #f3f3f3; padding: 0 .25rem; }
</style>
</head>
<body>
<h1>Huddle</h1>
<p>This is the media service of a meeting-room device. It hosts video rooms that browsers
join through the Flashphoner Web Call Server Room API.</p>
<ul>
 <li>Room signalling: a WebSocket on this address (<code>ws://<span id="host">this-host</span>/</code>),
     compatible with the unmodified Flashphoner Web SDK (<code>flashphoner-room-api.js</code>).</li>
 <li>Service state: <a href="/health"><code>/health</code></a>.</li>
</ul>
<p>The device's own web app (join a room, see and hear the others, chat) will be served on this
page.</p>
<script>document.getElementById('host').textContent = location.host;</script>
</body>
</html>
"#;
