//! `[[rtmp.push]]` wired to the stream core: each entry waits for its stream
//! (`Endpoints::watch`); every publication of it is turned into FLV tags
//! (`rtmp::egress`: H.264 depacketized, Opus → AAC) and sent to the target
//! (`rtmp::push`: reconnecting with backoff) until the stream ends. A push is a sink
//! like any player: it never holds up the source or the room.
//!
//! The `PushRegistry` holds every push, those of the configuration (`config-<n>`) and
//! those the admin API starts (`push-<n>`): one task each, the same wiring for both.
//! Its lock guards a small table only and is never held across an await.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::RtmpPush;
use crate::logging::escaped;
use crate::rtmp::egress;
use crate::rtmp::push::{Push, PushStatus};
use crate::sfu::task::Endpoints;

/// FLV tags queued toward a push's connection (~2 s of 30 fps video with audio).
const PUSH_TAGS: usize = 256;
/// How long the pushes may take to close their connections at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// The most pushes at once (configured and started by the admin API).
pub(crate) const MAX_PUSHES: usize = 16;
/// The shortest first retry delay (as `[[rtmp.push]] retry_ms`).
const MIN_RETRY_MS: u64 = 100;
/// The longest stream name the admin API may push.
const MAX_STREAM: usize = 256;

/// One push as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PushView {
    pub id: String,
    pub stream: String,
    /// The target without its stream key.
    pub url: String,
    /// `waiting` (for the stream), `connecting`, `live`, `retrying`, `stopped`.
    pub state: String,
    /// The last error, if any.
    pub error: Option<String>,
    /// From `[[rtmp.push]]` (`config`) or the admin API (`api`).
    pub origin: &'static str,
}

/// What a push's task shares with the registry.
#[derive(Default)]
struct Progress {
    /// The status of the connection of the current publication, if any.
    current: Option<watch::Receiver<PushStatus>>,
    /// The last error of any connection of this push.
    error: Option<String>,
    /// The task ended.
    ended: bool,
}

struct Entry {
    id: String,
    stream: String,
    url: String,
    origin: &'static str,
    progress: Arc<Mutex<Progress>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Entry {
    fn view(&self) -> PushView {
        let (state, error) = match self.progress.lock() {
            Ok(mut p) => {
                let status = p.current.as_ref().map(|s| s.borrow().clone());
                let state = match status {
                    _ if p.ended || *self.stop.borrow() => "stopped",
                    None | Some(PushStatus::Ended { .. }) => "waiting",
                    Some(PushStatus::Connecting { .. }) => "connecting",
                    Some(PushStatus::Live { .. }) => "live",
                    Some(PushStatus::Retrying { error, .. }) => {
                        p.error = Some(error);
                        "retrying"
                    }
                };
                (state, p.error.clone())
            }
            Err(_) => ("stopped", None),
        };
        PushView {
            id: self.id.clone(),
            stream: self.stream.clone(),
            url: self.url.clone(),
            state: state.into(),
            error,
            origin: self.origin,
        }
    }
}

#[derive(Default)]
struct Table {
    pushes: Vec<Entry>,
    next_api: u64,
    /// Shutting down: no new pushes.
    closed: bool,
}

/// The pushes of the configuration and of the admin API, started and stopped at run
/// time; cheap to clone (the server and the admin API share one).
#[derive(Clone)]
pub(crate) struct PushRegistry {
    endpoints: Option<Endpoints>,
    table: Arc<Mutex<Table>>,
    /// The streams pushed now (the driver starts the device's capture for its own).
    pushed: Arc<watch::Sender<Vec<String>>>,
}

impl Default for PushRegistry {
    fn default() -> PushRegistry {
        PushRegistry {
            endpoints: None,
            table: Arc::default(),
            pushed: Arc::new(watch::channel(Vec::new()).0),
        }
    }
}

impl PushRegistry {
    /// The names of the streams pushed now, updated whenever a push starts or stops.
    pub fn pushed_streams(&self) -> watch::Receiver<Vec<String>> {
        self.pushed.subscribe()
    }

    /// Tells `pushed_streams` what the table holds now.
    fn publish_streams(&self) {
        let streams: Vec<String> = self
            .lock()
            .pushes
            .iter()
            .map(|e| e.stream.clone())
            .collect();
        self.pushed.send_if_modified(|s| {
            let changed = *s != streams;
            *s = streams;
            changed
        });
    }

    /// Starts one push per `[[rtmp.push]]` entry (validated with the config), ids
    /// `config-1`, `config-2`...
    pub fn start_config(endpoints: &Endpoints, entries: &[RtmpPush]) -> PushRegistry {
        let registry = PushRegistry {
            endpoints: Some(endpoints.clone()),
            ..PushRegistry::default()
        };
        for (i, entry) in entries.iter().enumerate() {
            match Push::from_config(entry) {
                Ok(push) => {
                    registry.spawn(format!("config-{}", i + 1), push, "config");
                }
                Err(e) => warn!("push of stream {}: {e}", escaped(&entry.stream)),
            }
        }
        registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns the push's task and enters it (the caller checked the limit).
    fn spawn(&self, id: String, push: Push, origin: &'static str) -> Option<PushView> {
        let endpoints = self.endpoints.clone()?;
        info!(
            "push {id} of stream {} to {}: waiting for the stream",
            escaped(&push.stream),
            push.target
        );
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (stop, stop_rx) = watch::channel(false);
        let entry = Entry {
            id,
            stream: push.stream.clone(),
            url: push.target.redacted(),
            origin,
            progress: progress.clone(),
            stop,
            task: tokio::spawn(run(endpoints, push, progress, stop_rx)),
        };
        let view = entry.view();
        self.lock().pushes.push(entry);
        self.publish_streams();
        Some(view)
    }

    pub fn list(&self) -> Vec<PushView> {
        self.lock().pushes.iter().map(Entry::view).collect()
    }

    /// Starts pushing `stream` to `url` (`rtmp://host[:port]/app/key`).
    pub fn start(&self, stream: &str, url: &str, retry_ms: u64) -> Result<PushView, String> {
        let stream = stream.trim();
        if stream.is_empty() {
            return Err("stream: must not be empty".into());
        }
        if stream.len() > MAX_STREAM || stream.chars().any(char::is_control) {
            return Err(format!(
                "stream: at most {MAX_STREAM} bytes without control characters"
            ));
        }
        if retry_ms < MIN_RETRY_MS {
            return Err(format!(
                "retry_ms: must be at least {MIN_RETRY_MS}, got {retry_ms}"
            ));
        }
        let push = Push::new(stream, url, Duration::from_millis(retry_ms))
            .map_err(|e| format!("url: {e}"))?;
        if self.endpoints.is_none() {
            return Err("pushes are not available".into());
        }
        let id = {
            let mut table = self.lock();
            if table.closed {
                return Err("the service is shutting down".into());
            }
            if table.pushes.len() >= MAX_PUSHES {
                return Err(format!(
                    "too many pushes (at most {MAX_PUSHES}): stop one first"
                ));
            }
            table.next_api += 1;
            format!("push-{}", table.next_api)
        };
        self.spawn(id, push, "api")
            .ok_or_else(|| "pushes are not available".into())
    }

    /// Stops a push (its connection is closed) and removes it; `false` when no push
    /// has that id.
    pub fn stop(&self, id: &str) -> bool {
        let entry = {
            let mut table = self.lock();
            match table.pushes.iter().position(|e| e.id == id) {
                Some(i) => table.pushes.remove(i),
                None => return false,
            }
        };
        info!("push {id} of stream {}: stopped", escaped(&entry.stream));
        self.publish_streams();
        entry.stop.send_replace(true);
        // The task ends on its own: it closes the connection (bounded by the push).
        drop(entry.task);
        true
    }

    /// At shutdown: no new pushes; waits for the pushes to end (the media engine is
    /// stopping: their streams end and the pushes close their connections), then
    /// stops and aborts what is left.
    pub async fn shutdown(&self) {
        let entries = {
            let mut table = self.lock();
            table.closed = true;
            std::mem::take(&mut table.pushes)
        };
        self.publish_streams();
        for mut entry in entries {
            if tokio::time::timeout(STOP_TIMEOUT, &mut entry.task)
                .await
                .is_err()
            {
                entry.stop.send_replace(true);
                if tokio::time::timeout(Duration::from_millis(500), &mut entry.task)
                    .await
                    .is_err()
                {
                    entry.task.abort();
                }
            }
        }
    }
}

/// One push's life: until stopped, a push per publication of its stream.
async fn run(
    endpoints: Endpoints,
    push: Push,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = publications(endpoints, push, &progress) => {}
    }
    // Dropping the publication's push handle stopped it: it closes its connection.
    if let Ok(mut p) = progress.lock() {
        p.ended = true;
    }
}

async fn publications(endpoints: Endpoints, push: Push, progress: &Mutex<Progress>) {
    let who = format!(
        "push of stream {} to {}",
        escaped(&push.stream),
        push.target
    );
    let Some(mut attachments) = endpoints.watch(&push.stream).await else {
        return;
    };
    while let Some(attachment) = attachments.recv().await {
        if let Err(why) = egress::check(&attachment.codecs) {
            warn!("{who}: the stream cannot be pushed: {why}");
            if let Ok(mut p) = progress.lock() {
                p.error = Some(format!("the stream cannot be pushed: {why}"));
            }
            continue;
        }
        info!(
            "{who}: the stream is published ({}), pushing",
            attachment.codecs.describe()
        );
        let (tags_tx, tags) = mpsc::channel(PUSH_TAGS);
        let for_push = attachment.key_frame.clone();
        let for_egress = attachment.key_frame.clone();
        let handle = push.spawn(tags, move || for_push.request());
        let mut status = handle.subscribe();
        if let Ok(mut p) = progress.lock() {
            p.current = Some(status.clone());
        }
        // Keeps the last error of the connection (`list` shows it after a recovery).
        let errors = async {
            while status.changed().await.is_ok() {
                if let PushStatus::Retrying { error, .. } = &*status.borrow_and_update() {
                    if let Ok(mut p) = progress.lock() {
                        p.error = Some(error.clone());
                    }
                }
            }
        };
        let egress = async {
            let ended = egress::run(attachment.codecs, attachment.packets, tags_tx, move || {
                for_egress.request()
            })
            .await;
            // The tags' sender is gone: the push sends what it has and closes.
            handle.join().await;
            ended
        };
        let (ended, ()) = tokio::join!(egress, errors);
        if let Ok(mut p) = progress.lock() {
            p.current = None;
        }
        match ended {
            Ok(egress::Ended::SourceEnded) => info!("{who}: the stream ended"),
            Ok(egress::Ended::PlayerLeft) => info!("{who}: stopped"),
            Err(e) => {
                warn!("{who}: {e}");
                if let Ok(mut p) = progress.lock() {
                    p.error = Some(e.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::Server;

    fn config() -> Config {
        crate::server::test_support::device_config(
            &std::env::temp_dir().join(format!("huddle-push-reg-{}", std::process::id())),
        )
    }

    async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin-API push of the device's stream to the server's own RTMP listener (a
    /// real RTMP receiver: the push joins room `r2` as publisher `pusher`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runtime_an_api_push_is_listed_goes_live_and_stops() {
        let server = Server::start(config()).await.expect("server starts");
        let rtmp = server.rtmp_addr().expect("rtmp on");
        let registry = server.pushes.clone();
        assert!(registry.list().is_empty());

        let refused = registry.start("s", "rtmps://example.com/app/secret", 1000);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("rtmps://")),
            "{refused:?}"
        );
        assert!(registry.start("s", "http://example.com/a/b", 1000).is_err());
        assert!(registry.start("", "rtmp://example.com/a/b", 1000).is_err());
        assert!(registry.start("s", "rtmp://example.com/a/b", 10).is_err());

        let url = format!("rtmp://127.0.0.1:{}/r2/pusher", rtmp.port());
        let view = registry
            .start("r-Room system", &url, 200)
            .expect("the push starts");
        assert_eq!((view.id.as_str(), view.origin), ("push-1", "api"));
        assert!(!view.url.contains("pusher"), "{view:?}");
        assert_eq!(view.stream, "r-Room system");
        wait("the push is live", Duration::from_secs(30), || {
            registry.list().first().is_some_and(|p| p.state == "live")
        })
        .await;
        // The receiving side has the pusher as a participant of r2.
        wait("the pusher joins r2", Duration::from_secs(10), || {
            server.stats().participants == 2
        })
        .await;

        assert!(registry.stop("push-1"));
        assert!(!registry.stop("push-1"));
        assert!(registry.list().is_empty());
        wait(
            "the pushed connection ends",
            Duration::from_secs(10),
            || server.stats().participants == 1,
        )
        .await;

        // At most MAX_PUSHES at once.
        for _ in 0..MAX_PUSHES {
            registry
                .start("absent", &url, 1000)
                .expect("under the limit");
        }
        let over = registry.start("absent", &url, 1000);
        assert!(
            over.as_ref().is_err_and(|e| e.contains("too many")),
            "{over:?}"
        );
        assert!(registry.list().iter().all(|p| p.state == "waiting"));
        assert_eq!(
            registry.list().last().map(|p| p.id.clone()).as_deref(),
            Some("push-17")
        );
        server.shutdown().await;
        assert!(registry.list().is_empty());
        assert!(registry.start("absent", &url, 1000).is_err());
    }
}
