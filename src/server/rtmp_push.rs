//! `[[rtmp.push]]` wired to the stream core: each entry waits for its stream
//! (`Endpoints::watch`); every publication of it is turned into FLV tags
//! (`rtmp::egress`: H.264 depacketized, Opus → AAC) and sent to the target
//! (`rtmp::push`: reconnecting with backoff) until the stream ends. A push is a sink
//! like any player: it never holds up the source or the room.

use std::time::Duration;

use log::{info, warn};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::RtmpPush;
use crate::logging::escaped;
use crate::rtmp::egress;
use crate::rtmp::push::Push;
use crate::sfu::task::Endpoints;

/// FLV tags queued toward a push's connection (~2 s of 30 fps video with audio).
const PUSH_TAGS: usize = 256;
/// How long the pushes may take to close their connections at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The running `[[rtmp.push]]` entries.
pub(crate) struct Pushes {
    tasks: Vec<JoinHandle<()>>,
}

impl Pushes {
    /// Starts one task per entry (the entries were validated with the config).
    pub fn start(endpoints: &Endpoints, entries: &[RtmpPush]) -> Pushes {
        let mut tasks = Vec::new();
        for entry in entries {
            match Push::from_config(entry) {
                Ok(push) => {
                    info!(
                        "push of stream {} to {}: waiting for the stream",
                        escaped(&push.stream),
                        push.target
                    );
                    tasks.push(tokio::spawn(run(endpoints.clone(), push)));
                }
                Err(e) => warn!("push of stream {}: {e}", escaped(&entry.stream)),
            }
        }
        Pushes { tasks }
    }

    /// Waits for the pushes to end (the media engine is stopping: their streams
    /// end and the pushes close their connections), then aborts what is left.
    pub async fn stop(self) {
        for mut task in self.tasks {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// One entry's life: a push per publication of its stream.
async fn run(endpoints: Endpoints, push: Push) {
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
        let ended = egress::run(attachment.codecs, attachment.packets, tags_tx, move || {
            for_egress.request()
        })
        .await;
        // The tags' sender is gone: the push sends what it has and closes.
        handle.join().await;
        match ended {
            Ok(egress::Ended::SourceEnded) => info!("{who}: the stream ended"),
            Ok(egress::Ended::PlayerLeft) => info!("{who}: stopped"),
            Err(e) => warn!("{who}: {e}"),
        }
    }
}

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

/// The pushes of the configuration and of the admin API, started and stopped at run
/// time. TODO(pushes helper): implement on `Pushes`.
#[derive(Clone, Default)]
pub(crate) struct PushRegistry {}

impl PushRegistry {
    pub fn list(&self) -> Vec<PushView> {
        Vec::new()
    }

    /// Starts pushing `stream` to `url` (`rtmp://host[:port]/app/key`).
    pub fn start(&self, _stream: &str, _url: &str, _retry_ms: u64) -> Result<PushView, String> {
        Err("not implemented yet".into())
    }

    /// Stops a push; `false` when no push has that id.
    pub fn stop(&self, _id: &str) -> bool {
        false
    }
}
