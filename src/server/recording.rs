//! Recording wired to the room and stream cores. The room core says what to record
//! (`Output::Record` for a live stream published with `record: true` or in a recorded
//! room; `RoomCreated`/`RoomFinalized` with `record` for a room recording); the driver
//! hands that to this task, which attaches a recorder sink to the stream
//! (`Endpoints::attach` → `record::recorder`), keeps each recorded room's manifest (its
//! streams on the room's timeline), and when the room is finalized and its recordings
//! have ended, marks the manifest pending and hands it to the mixer
//! (`record::mix::Mixer`, which also runs the hook). The meeting never waits for any of
//! it: the driver's hand-off is a `try_send`, the recorder's queue drops when the disk
//! cannot keep up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config;
use crate::events::{EventKind, Events};
use crate::logging::escaped;
use crate::record::catalog::{self, MixState, RecordKind, RecordMeta, RoomManifest, RoomStream};
use crate::record::live::Live;
use crate::record::mix::Mixer;
use crate::record::recorder;
use crate::sfu::task::Endpoints;

/// Requests queued toward the recording task.
const QUEUE: usize = 256;
/// How long the recordings may take to end at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a finalized room waits for its recordings to end before it is mixed.
const ROOM_END_GRACE: Duration = Duration::from_secs(10);
/// How long the admin API waits for the list of recordings.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(3);

enum RecordCommand {
    Stream {
        stream: String,
        room: String,
        login: String,
        whole_room: bool,
    },
    RoomStarted {
        room: String,
    },
    RoomFinalized {
        room: String,
    },
    /// Finalize a stream's recordings now (the stream goes on).
    StopStream {
        stream: String,
    },
    /// The whole-room recording was switched off before the room ended.
    RoomStopped {
        room: String,
    },
    /// The recordings being written.
    Active {
        reply: oneshot::Sender<Vec<ActiveRecording>>,
    },
    /// A recording's first media was written (its place on the room's timeline).
    FirstMedia {
        room: String,
        file: String,
        at: Instant,
    },
    /// A recording ended.
    Ended {
        room: Option<String>,
        file: String,
        at: Instant,
    },
    /// A finalized room's grace for its recordings is over.
    RoomDue {
        room: String,
    },
}

/// One recording being written (the admin API's list).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ActiveRecording {
    pub stream: String,
    pub room: String,
    pub login: String,
    /// Recorded as part of a whole-room recording.
    pub whole_room: bool,
    /// The record file's name (under `[records] dir`, as `/client/records` lists it).
    pub file: String,
    /// RFC 3339.
    pub started_at: String,
}

/// The driver's way to the recording task; inert when recording is unavailable (an
/// unusable `[records] dir`, reported at start).
#[derive(Clone, Default)]
pub(crate) struct Recordings {
    tx: Option<mpsc::Sender<RecordCommand>>,
}

impl Recordings {
    fn send(&self, command: RecordCommand, what: &str) {
        match &self.tx {
            Some(tx) => {
                if tx.try_send(command).is_err() {
                    warn!("recording: {what} dropped (the recording task is busy or gone)");
                }
            }
            None => warn!("recording: {what} not recorded: recording is unavailable (see the [records] dir error at start)"),
        }
    }

    pub fn stream(&self, stream: String, room: String, login: String, whole_room: bool) {
        let what = format!("stream {}", escaped(&stream));
        let command = RecordCommand::Stream {
            stream,
            room,
            login,
            whole_room,
        };
        self.send(command, &what);
    }

    pub fn room_started(&self, room: &str) {
        let what = format!("room {}", escaped(room));
        self.send(
            RecordCommand::RoomStarted {
                room: room.to_owned(),
            },
            &what,
        );
    }

    /// Stops recording a stream (the admin API): its file is finalized now and stays
    /// complete and playable; the stream goes on.
    pub fn stop_stream(&self, stream: &str) {
        let what = format!("stopping the recording of stream {}", escaped(stream));
        self.send(
            RecordCommand::StopStream {
                stream: stream.to_owned(),
            },
            &what,
        );
    }

    /// The recording of a whole room stopped before the room ended (the admin API):
    /// the recordings made only for the room stop, and what was recorded is mixed as
    /// if the room had ended.
    pub fn room_stopped(&self, room: &str) {
        let what = format!("stopping the recording of room {}", escaped(room));
        self.send(
            RecordCommand::RoomStopped {
                room: room.to_owned(),
            },
            &what,
        );
    }

    /// The recordings being written now (empty when recording is unavailable or the
    /// task does not answer in time).
    pub async fn active(&self) -> Vec<ActiveRecording> {
        let Some(tx) = &self.tx else {
            return Vec::new();
        };
        let (reply, answer) = oneshot::channel();
        let ask = async {
            tx.send(RecordCommand::Active { reply }).await.ok()?;
            answer.await.ok()
        };
        match tokio::time::timeout(ACTIVE_TIMEOUT, ask).await {
            Ok(Some(list)) => list,
            _ => {
                warn!("recording: the recording task did not list its recordings in time");
                Vec::new()
            }
        }
    }

    pub fn room_finalized(&self, room: &str) {
        let what = format!("the end of room {}", escaped(room));
        self.send(
            RecordCommand::RoomFinalized {
                room: room.to_owned(),
            },
            &what,
        );
    }
}

/// The running recording task (it owns the mixer).
pub(crate) struct RecordingTask {
    task: JoinHandle<()>,
    /// The tests' way to the task (weak: the task ends when the driver's handle goes).
    #[cfg(test)]
    tx: mpsc::WeakSender<RecordCommand>,
}

impl RecordingTask {
    /// Starts the task when `[records] dir` is usable; otherwise says why (once) and
    /// gives an inert handle: meetings go on without recording.
    pub fn start(
        records: &config::Records,
        endpoints: Endpoints,
        live: std::sync::Arc<Live>,
        events: Events,
    ) -> (Recordings, Option<RecordingTask>) {
        if let Some(why) = crate::record::dir_problem(&records.dir, true) {
            log::error!("recording unavailable: {why}");
            return (Recordings::default(), None);
        }
        let mixer = Mixer::start_with_events(records, events.clone());
        let (tx, rx) = mpsc::channel(QUEUE);
        let state = State {
            dir: records.dir.clone(),
            fragment: Duration::from_millis(records.fragment_ms),
            endpoints,
            live,
            rooms: HashMap::new(),
            tx: tx.downgrade(),
            mixer: Some(mixer),
            active: HashMap::new(),
            events,
        };
        let task = tokio::spawn(run(state, rx));
        let running = RecordingTask {
            task,
            #[cfg(test)]
            tx: tx.downgrade(),
        };
        (Recordings { tx: Some(tx) }, Some(running))
    }

    /// At shutdown, after the room core is gone (the driver's handle with it): the
    /// recordings end with their streams and finished rooms are handed to the mixer,
    /// within a bound; a room still recording then is mixed at the next start. The
    /// mixer stops (a mix under way is taken up again at the next start).
    /// A handle on the running task (tests).
    #[cfg(test)]
    fn recordings(&self) -> Recordings {
        Recordings {
            tx: self.tx.upgrade(),
        }
    }

    pub async fn stop(mut self) {
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            warn!("recording: recordings did not end within {STOP_TIMEOUT:?}");
            self.task.abort();
        }
    }
}

/// One recorded room.
struct RoomRecording {
    manifest_path: PathBuf,
    manifest: RoomManifest,
    /// When it started: the wall clock (its names, `started`) and the monotonic one
    /// (its timeline: offsets and duration stay right when the system clock jumps).
    started: SystemTime,
    t0: Instant,
    /// Recordings of its streams still running.
    running: usize,
    finalized: Option<Instant>,
}

struct State {
    dir: PathBuf,
    fragment: Duration,
    endpoints: Endpoints,
    live: std::sync::Arc<Live>,
    rooms: HashMap<String, RoomRecording>,
    tx: mpsc::WeakSender<RecordCommand>,
    /// Stopped (a mix under way is taken up at the next start) when the task ends.
    mixer: Option<Mixer>,
    /// The recordings being written, by their first file's name.
    active: HashMap<String, Active>,
    events: Events,
}

/// A recording being written.
struct Active {
    view: ActiveRecording,
    /// Asks its task to finalize it now.
    stop: watch::Sender<bool>,
}

fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

impl State {
    fn store(&self, room: &RoomRecording) {
        if let Err(e) = catalog::store(&room.manifest_path, &room.manifest) {
            warn!(
                "recording: cannot write the manifest {}: {e}",
                room.manifest_path.display()
            );
        }
    }

    fn room_started(&mut self, room: String) {
        match self.rooms.get(&room) {
            // Recorded again after a stop, before the last recording was mixed: that
            // one is mixed with what it has.
            Some(r) if r.finalized.is_some() => self.finish(&room),
            Some(_) => return,
            None => {}
        }
        let started = SystemTime::now();
        let name = catalog::unique_name(&self.dir, &room, started, ".room.json");
        let base = name.trim_end_matches(".room.json").to_owned();
        let recording = RoomRecording {
            manifest_path: self.dir.join(&name),
            manifest: RoomManifest {
                room: room.clone(),
                started: catalog::rfc3339(started),
                ended: None,
                duration_ms: None,
                streams: Vec::new(),
                mix: MixState::Recording,
                mix_file: format!("{base}-mix.mp4"),
                mix_error: None,
            },
            started,
            t0: Instant::now(),
            running: 0,
            finalized: None,
        };
        info!("room {}: recording into {name}", escaped(&room));
        self.store(&recording);
        self.rooms.insert(room, recording);
    }

    async fn stream(&mut self, stream: String, room: String, login: String, whole_room: bool) {
        let attachment = match self.endpoints.attach(&stream).await {
            Ok(a) => a,
            Err(e) => {
                warn!("recording of stream {}: {e}", escaped(&stream));
                return;
            }
        };
        let started = SystemTime::now();
        let started_at = Instant::now();
        let file = catalog::unique_name(&self.dir, &stream, started, ".mp4");
        let meta = RecordMeta {
            name: file.clone(),
            kind: RecordKind::Stream,
            room: room.clone(),
            stream: Some(stream.clone()),
            login: Some(login.clone()),
            started: catalog::rfc3339(started),
            ended: None,
            duration_ms: None,
            error: None,
        };
        let key_frame = attachment.key_frame.clone();
        let handle = match recorder::start(
            &self.dir,
            meta,
            attachment.codecs,
            attachment.packets,
            move || key_frame.request(),
            self.fragment,
        ) {
            Ok(h) => h,
            Err(e) => {
                warn!("recording of stream {}: {e}", escaped(&stream));
                self.events.emit(
                    EventKind::RecordingFailed,
                    Some(&room),
                    serde_json::json!({
                        "stream": stream, "login": login, "file": file, "reason": e.to_string(),
                    }),
                );
                return;
            }
        };
        info!("stream {}: recording into {file}", escaped(&stream));
        self.live.insert(&file);
        self.events.emit(
            EventKind::RecordingStarted,
            Some(&room),
            serde_json::json!({ "stream": stream, "login": login, "file": file }),
        );
        let (stop, mut stop_rx) = watch::channel(false);
        self.active.insert(
            file.clone(),
            Active {
                view: ActiveRecording {
                    stream: stream.clone(),
                    room: room.clone(),
                    login: login.clone(),
                    whole_room,
                    file: file.clone(),
                    started_at: crate::events::rfc3339(started),
                },
                stop,
            },
        );
        let (event_room, event_stream, event_login) = (room.clone(), stream.clone(), login.clone());
        let events = self.events.clone();
        let in_room = whole_room
            .then_some(room)
            .filter(|r| self.rooms.contains_key(r));
        if let Some(room) = &in_room {
            if let Some(r) = self.rooms.get_mut(room) {
                r.running += 1;
                r.manifest.streams.push(RoomStream {
                    stream: stream.clone(),
                    login,
                    file: file.clone(),
                    start_ms: ms_between(r.t0, started_at),
                    end_ms: None,
                });
            }
            if let Some(r) = self.rooms.get(room) {
                self.store(r);
            }
        }
        let Some(tx) = self.tx.upgrade() else {
            handle.stop();
            return;
        };
        let live = self.live.clone();
        tokio::spawn(async move {
            // Segments after the first (a new picture size) are live while written too.
            let mut status = handle.status();
            let mut placed = in_room.is_none();
            let mut current = file.clone();
            let watching = async {
                while status.changed().await.is_ok() {
                    let now = status.borrow_and_update().clone();
                    if now.file != current && !now.file.is_empty() {
                        live.remove(&current);
                        live.insert(&now.file);
                        current = now.file;
                    }
                    if let (false, Some(at), Some(room)) = (placed, now.first_media, &in_room) {
                        placed = true;
                        let _ = tx
                            .send(RecordCommand::FirstMedia {
                                room: room.clone(),
                                file: file.clone(),
                                at,
                            })
                            .await;
                    }
                }
            };
            // A stop asked for (the admin API, the room core) finalizes the file; the
            // status then ends with the writer.
            let stopping = async {
                if stop_rx.wait_for(|s| *s).await.is_ok() {
                    handle.stop();
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                () = watching => {}
                () = stopping => {}
            }
            let summary = handle.finished().await;
            for f in &summary.files {
                live.remove(f);
            }
            match &summary.error {
                Some(e) => {
                    warn!("recording {file}: stopped: {}", escaped(e));
                    events.emit(
                        EventKind::RecordingFailed,
                        Some(&event_room),
                        serde_json::json!({
                            "stream": event_stream, "login": event_login, "file": file,
                            "reason": e, "duration_ms": summary.duration_ms,
                        }),
                    );
                }
                None => events.emit(
                    EventKind::RecordingFinished,
                    Some(&event_room),
                    serde_json::json!({
                        "stream": event_stream, "login": event_login, "file": file,
                        "duration_ms": summary.duration_ms,
                    }),
                ),
            }
            let _ = tx
                .send(RecordCommand::Ended {
                    room: in_room,
                    file,
                    at: Instant::now(),
                })
                .await;
        });
    }

    fn first_media(&mut self, room: &str, file: &str, at: Instant) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let started = r.t0;
        if let Some(s) = r.manifest.streams.iter_mut().find(|s| s.file == file) {
            s.start_ms = ms_between(started, at);
        }
        if let Some(r) = self.rooms.get(room) {
            self.store(r);
        }
    }

    fn ended(&mut self, room: Option<String>, file: &str, at: Instant) {
        self.live.remove(file);
        self.active.remove(file);
        let Some(room) = room else { return };
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let started = r.t0;
        let Some(s) = r.manifest.streams.iter_mut().find(|s| s.file == file) else {
            // A recording of an earlier recording of the room (already mixed).
            return;
        };
        s.end_ms = Some(ms_between(started, at));
        r.running = r.running.saturating_sub(1);
        let done = r.finalized.is_some() && r.running == 0;
        if done {
            self.finish(&room);
        } else if let Some(r) = self.rooms.get(&room) {
            self.store(r);
        }
    }

    /// Finalizes every recording of `stream` now.
    fn stop_stream(&mut self, stream: &str) {
        let mut stopped = 0;
        for a in self.active.values().filter(|a| a.view.stream == stream) {
            a.stop.send_replace(true);
            stopped += 1;
        }
        match stopped {
            0 => info!("stream {}: no recording to stop", escaped(stream)),
            _ => info!("stream {}: recording stopped", escaped(stream)),
        }
    }

    /// The room is no longer recorded: its streams' recordings made for the room stop,
    /// and the room is finalized (then mixed) as if it had ended.
    fn room_stopped(&mut self, room: String) {
        for a in self
            .active
            .values()
            .filter(|a| a.view.whole_room && a.view.room == room)
        {
            a.stop.send_replace(true);
        }
        if self.rooms.get(&room).is_some_and(|r| r.finalized.is_none()) {
            info!("room {}: room recording stopped", escaped(&room));
            self.room_finalized(room);
        }
    }

    fn active(&self) -> Vec<ActiveRecording> {
        let mut list: Vec<ActiveRecording> = self.active.values().map(|a| a.view.clone()).collect();
        list.sort_by(|a, b| (&a.started_at, &a.file).cmp(&(&b.started_at, &b.file)));
        list
    }

    fn room_finalized(&mut self, room: String) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.finalized.is_some() {
            // Its recording was stopped before the end: already being finished.
            return;
        }
        r.finalized = Some(Instant::now());
        if r.running == 0 {
            self.finish(&room);
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(ROOM_END_GRACE).await;
            let _ = tx.send(RecordCommand::RoomDue { room }).await;
        });
    }

    /// The room ended and its recordings with it: the manifest is complete and the
    /// mix pending.
    fn finish(&mut self, room: &str) {
        let Some(mut r) = self.rooms.remove(room) else {
            return;
        };
        let ended = r.finalized.unwrap_or_else(Instant::now);
        let duration_ms = ms_between(r.t0, ended);
        // The end on the start's wall clock: a clock that jumped meanwhile moves
        // neither the duration nor the end.
        r.manifest.ended = Some(catalog::rfc3339(
            r.started + Duration::from_millis(duration_ms),
        ));
        r.manifest.duration_ms = Some(duration_ms);
        for s in &mut r.manifest.streams {
            s.end_ms.get_or_insert(duration_ms);
        }
        r.manifest.mix = MixState::Pending;
        self.store(&r);
        info!(
            "room {}: recording ended ({} streams), mixing {}",
            escaped(room),
            r.manifest.streams.len(),
            r.manifest.mix_file
        );
        if let Some(mixer) = &self.mixer {
            mixer.submit(r.manifest_path.clone());
        }
    }
}

async fn run(mut state: State, mut rx: mpsc::Receiver<RecordCommand>) {
    serve(&mut state, &mut rx).await;
    // The mixer's stop waits for its worker (bounded): not on a runtime thread.
    if let Some(mut mixer) = state.mixer.take() {
        let _ = tokio::task::spawn_blocking(move || mixer.stop()).await;
    }
}

async fn serve(state: &mut State, rx: &mut mpsc::Receiver<RecordCommand>) {
    while let Some(command) = rx.recv().await {
        match command {
            RecordCommand::Stream {
                stream,
                room,
                login,
                whole_room,
            } => state.stream(stream, room, login, whole_room).await,
            RecordCommand::RoomStarted { room } => state.room_started(room),
            RecordCommand::RoomFinalized { room } => state.room_finalized(room),
            RecordCommand::StopStream { stream } => state.stop_stream(&stream),
            RecordCommand::RoomStopped { room } => state.room_stopped(room),
            RecordCommand::Active { reply } => {
                let _ = reply.send(state.active());
            }
            RecordCommand::FirstMedia { room, file, at } => state.first_media(&room, &file, at),
            RecordCommand::Ended { room, file, at } => state.ended(room, &file, at),
            RecordCommand::RoomDue { room } => {
                if state
                    .rooms
                    .get(&room)
                    .is_some_and(|r| r.finalized.is_some())
                {
                    warn!(
                        "room {}: recordings still running {ROOM_END_GRACE:?} after the end; mixing what is written",
                        escaped(&room)
                    );
                    state.finish(&room);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::control::AdminRequest;
    use crate::server::{Server, ToCore};

    const STREAM: &str = "r-Room system";

    fn config(dir: &std::path::Path) -> Config {
        let mut c = crate::server::test_support::device_config(dir);
        c.rtmp.enabled = false;
        // The device's stream is recorded with nobody in its room.
        c.device.always_on = true;
        c
    }

    async fn admin(server: &Server, request: AdminRequest) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        server
            .to_core
            .send(ToCore::Admin { request, reply })
            .await
            .expect("the core runs");
        answer
            .await
            .expect("the core answers")
            .expect("the request is done");
    }

    async fn active_until(
        recordings: &Recordings,
        what: &str,
        mut cond: impl FnMut(&[ActiveRecording]) -> bool,
    ) -> Vec<ActiveRecording> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let list = recordings.active().await;
            if cond(&list) {
                return list;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {list:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runtime_recordings_are_listed_and_stopped_by_stream_and_by_room() {
        let dir = std::env::temp_dir().join(format!("huddle-rec-runtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let server = Server::start(config(&dir)).await.expect("server starts");
        let recordings = server
            .recording
            .as_ref()
            .expect("recording available")
            .recordings();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while server.stats().streams != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the device publishes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recordings.active().await.is_empty());

        // One stream, recorded on its own, then stopped: the file is finalized.
        admin(
            &server,
            AdminRequest::RecordStream {
                stream: STREAM.into(),
                on: true,
            },
        )
        .await;
        let list = active_until(&recordings, "the stream is recorded", |l| l.len() == 1).await;
        let r = &list[0];
        assert_eq!(
            (r.stream.as_str(), r.room.as_str(), r.login.as_str()),
            (STREAM, "r", "Room system")
        );
        assert!(!r.whole_room && r.file.ends_with(".mp4"), "{r:?}");
        assert!(
            r.started_at.ends_with('Z') && r.started_at.contains('T'),
            "{r:?}"
        );
        let file = dir.join(&r.file);
        tokio::time::sleep(Duration::from_secs(2)).await;
        admin(
            &server,
            AdminRequest::RecordStream {
                stream: STREAM.into(),
                on: false,
            },
        )
        .await;
        active_until(&recordings, "the recording stops", <[_]>::is_empty).await;
        let meta: RecordMeta = catalog::load(&catalog::sidecar(&file)).expect("the sidecar");
        assert!(meta.ended.is_some() && meta.error.is_none(), "{meta:?}");
        assert!(meta.duration_ms.unwrap_or(0) > 500, "{meta:?}");
        assert!(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) > 1000);
        assert!(!server.live_records().contains(&r.file));

        // The whole room, recorded then stopped while the room goes on: its manifest
        // is finalized and handed to the mixer.
        admin(
            &server,
            AdminRequest::RecordRoom {
                room: "r".into(),
                on: true,
            },
        )
        .await;
        let list = active_until(&recordings, "the room is recorded", |l| l.len() == 1).await;
        assert!(list[0].whole_room, "{list:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        admin(
            &server,
            AdminRequest::RecordRoom {
                room: "r".into(),
                on: false,
            },
        )
        .await;
        active_until(&recordings, "the room recording stops", <[_]>::is_empty).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let manifest = loop {
            let found: Vec<RoomManifest> = std::fs::read_dir(&dir)
                .expect("dir")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".room.json"))
                .filter_map(|p| catalog::load(&p).ok())
                .collect();
            if let Some(m) = found.into_iter().find(|m| m.mix != MixState::Recording) {
                break m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the manifest is finalized"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(manifest.room, "r");
        assert!(
            manifest.ended.is_some() && manifest.duration_ms.is_some(),
            "{manifest:?}"
        );
        assert_eq!(manifest.streams.len(), 1, "{manifest:?}");
        assert!(manifest.streams[0].end_ms.is_some());
        // The device still publishes: only the recordings stopped.
        assert_eq!(server.stats().streams, 1);
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The device switched off at run time: its room loses its stream (UNPUBLISHED)
    /// when both sources are off and gets it back (PUBLISHED) when they are on; the
    /// device stays a participant. (Here for the server fixture of this module.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runtime_the_device_switched_off_unpublishes_and_on_publishes_again() {
        let dir = std::env::temp_dir().join(format!("huddle-dev-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let server = Server::start(config(&dir)).await.expect("server starts");
        let control = server.device.as_ref().expect("a device").control();
        let wait = |streams: usize, what: &'static str| {
            let server = &server;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while server.stats().streams != streams {
                    assert!(tokio::time::Instant::now() < deadline, "{what}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        wait(1, "the device publishes").await;
        control.set(Some(false), None).expect("a camera");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while control
            .state()
            .camera
            .as_ref()
            .is_some_and(|c| c.delivering)
        {
            assert!(tokio::time::Instant::now() < deadline, "the camera stops");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Republished with the microphone only.
        wait(1, "the device republishes its audio").await;
        control.set(None, Some(false)).expect("a microphone");
        wait(0, "the device publishes nothing").await;
        assert_eq!(
            server.stats().participants,
            1,
            "the device stays in its room"
        );
        control.set(Some(true), Some(true)).expect("both");
        wait(1, "the device publishes again").await;
        let view = control.state();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !control
            .state()
            .camera
            .as_ref()
            .is_some_and(|c| c.delivering)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the camera is back: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
