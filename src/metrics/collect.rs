//! Reads a scrape's values from the running service.

use std::sync::atomic::Ordering;

use super::exposition::{Sample, SOURCES};
use super::process::Process;
use crate::server::Shared;

pub(crate) async fn sample(shared: &Shared) -> Sample {
    let stats = *shared.stats.borrow();
    let control = &shared.control;
    let streams_by_source = match control.streams().await {
        Ok(streams) => {
            let mut by_source = [0usize; 3];
            for s in &streams {
                if let Some(i) = SOURCES.iter().position(|k| *k == s.source.as_str()) {
                    by_source[i] += 1;
                }
            }
            Some(by_source)
        }
        Err(e) => {
            log::debug!("metrics: no streams from the room core: {}", e.message);
            None
        }
    };
    let (camera_up, microphone_up, device_frames) = match control.device() {
        Ok(view) => (
            view.camera.as_ref().is_some_and(|c| c.delivering),
            view.microphone.as_ref().is_some_and(|m| m.delivering),
            super::exposition::DeviceFrames {
                video: view.camera.as_ref().map_or(0, |c| c.frames),
                audio: view.microphone.as_ref().map_or(0, |m| m.frames),
            },
        ),
        Err(_) => (false, false, Default::default()),
    };
    let events = shared.events.counters();
    Sample {
        sessions: stats.sessions,
        rooms: stats.rooms,
        participants: stats.participants,
        streams: stats.streams,
        players: stats.players,
        media_peers: shared.media_peers.load(Ordering::Relaxed),
        streams_by_source,
        recordings: control.recordings().await.len(),
        camera_up,
        microphone_up,
        device_frames,
        webhook_delivered: events.delivered.get(),
        webhook_failed_attempts: events.failed_attempts.get(),
        webhook_dropped: events.dropped.get(),
        process: Process::read(),
    }
}
