//! The operators' view of the running service and their actions on it, for the admin
//! API (`api`): rooms, members and streams from the room core (`ToCore::Admin`, answered
//! by the driver from `Core::snapshot` and the core's admin commands) joined with what
//! the media engine measures (`Endpoints::stream_stats`); pushes, recordings and the
//! device through their own handles. Every method answers the API's JSON types or an
//! `ApiError`, so the HTTP layer only routes and renders.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::driver::ToCore;
use super::recording::{ActiveRecording, Recordings};
use super::rtmp_push::{PushRegistry, PushView};
use crate::device::control::{DeviceControl, DeviceView};
use crate::media::Family;
use crate::rooms::{AdminError, MemberInfo, Snapshot, SourceKind};
use crate::sfu::task::{Endpoints, StreamStats};

/// How long the room core may take to answer an admin request.
const CORE_TIMEOUT: Duration = Duration::from_secs(5);

/// An admin request to the room core (`ToCore::Admin`).
#[derive(Debug)]
pub enum AdminRequest {
    Snapshot,
    CloseRoom {
        room: String,
    },
    Kick {
        room: String,
        login: String,
    },
    Mute {
        room: String,
        login: String,
        audio: Option<bool>,
        video: Option<bool>,
    },
    EndStream {
        stream: String,
    },
    RecordStream {
        stream: String,
        on: bool,
    },
    RecordRoom {
        room: String,
        on: bool,
    },
}

/// The room core's answer.
#[derive(Debug)]
pub enum AdminAnswer {
    /// The snapshot and when each room was created.
    Snapshot(Snapshot, HashMap<String, SystemTime>),
    Member(MemberInfo),
    Done,
}

pub type AdminReply = oneshot::Sender<Result<AdminAnswer, AdminError>>;

/// An error as the API renders it: `{"error": message, "code": code}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "unavailable", message)
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::NotFound(m) => ApiError::not_found(m),
            AdminError::Conflict(m) => ApiError::conflict(m),
            AdminError::Invalid(m) => ApiError::invalid(m),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Muted {
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub login: String,
    /// `webrtc`, `device` or `rtmp`.
    pub kind: SourceKind,
    pub moderator: bool,
    pub muted: Muted,
    /// The names of its streams in this room.
    pub streams: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub name: String,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// The whole room is being recorded.
    pub recording: bool,
    pub members: Vec<MemberView>,
    /// Who talks in the room now (RFC 6464 audio levels), if anybody has.
    pub active_speaker: Option<SpeakerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeakerView {
    pub login: String,
    pub stream: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrackView {
    /// `H264`, `VP8`, `opus`, `PCMU`, `PCMA`.
    pub codec: &'static str,
    /// H.264: `profile_idc` and the constraint flags, hex (`42e0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub clock_rate: u32,
    pub bitrate_bps: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub name: String,
    pub room: String,
    pub login: String,
    /// `webrtc`, `device` or `rtmp`.
    pub source: SourceKind,
    /// `publishing`, or `pending` while its media path is set up.
    pub state: &'static str,
    pub audio: Option<TrackView>,
    pub video: Option<TrackView>,
    /// Players in the room (browsers, RTMP players).
    pub players: usize,
    pub recording: bool,
    pub muted: Muted,
}

/// Everything the admin API acts on; cheap to clone.
#[derive(Clone)]
pub(crate) struct Control {
    pub to_core: mpsc::Sender<ToCore>,
    pub endpoints: Endpoints,
    pub recordings: Recordings,
    pub pushes: PushRegistry,
    pub device: Option<DeviceControl>,
}

impl Control {
    async fn ask(&self, request: AdminRequest) -> Result<AdminAnswer, ApiError> {
        let gone = || ApiError::unavailable("The room core is not running");
        let (reply, answer) = oneshot::channel();
        let call = async {
            self.to_core
                .send(ToCore::Admin { request, reply })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())
        };
        match tokio::time::timeout(CORE_TIMEOUT, call).await {
            Ok(answer) => Ok(answer??),
            Err(_) => Err(ApiError::unavailable(
                "The room core did not answer in time",
            )),
        }
    }

    async fn snapshot(&self) -> Result<(Snapshot, HashMap<String, SystemTime>), ApiError> {
        match self.ask(AdminRequest::Snapshot).await? {
            AdminAnswer::Snapshot(s, created) => Ok((s, created)),
            _ => Err(ApiError::unavailable("Unexpected answer of the room core")),
        }
    }

    async fn done(&self, request: AdminRequest) -> Result<(), ApiError> {
        self.ask(request).await.map(|_| ())
    }

    pub async fn rooms(&self) -> Result<Vec<RoomView>, ApiError> {
        let (snapshot, created) = self.snapshot().await?;
        Ok(room_views(&snapshot, &created))
    }

    pub async fn room(&self, name: &str) -> Result<RoomView, ApiError> {
        self.rooms()
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("Room '{name}' not found")))
    }

    pub async fn close_room(&self, room: &str) -> Result<(), ApiError> {
        self.done(AdminRequest::CloseRoom { room: room.into() })
            .await
    }

    pub async fn kick(&self, room: &str, login: &str) -> Result<(), ApiError> {
        self.done(AdminRequest::Kick {
            room: room.into(),
            login: login.into(),
        })
        .await
    }

    /// Mutes or unmutes; answers the member's state after it.
    pub async fn mute(
        &self,
        room: &str,
        login: &str,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<Muted, ApiError> {
        let request = AdminRequest::Mute {
            room: room.into(),
            login: login.into(),
            audio,
            video,
        };
        match self.ask(request).await? {
            AdminAnswer::Member(m) => Ok(Muted {
                audio: m.muted_audio,
                video: m.muted_video,
            }),
            _ => Err(ApiError::unavailable("Unexpected answer of the room core")),
        }
    }

    pub async fn streams(&self) -> Result<Vec<StreamView>, ApiError> {
        let (snapshot, _) = self.snapshot().await?;
        let stats = self.endpoints.stream_stats().await;
        Ok(stream_views(&snapshot, &stats))
    }

    pub async fn stream(&self, name: &str) -> Result<StreamView, ApiError> {
        self.streams()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::not_found(format!("Stream '{name}' not found")))
    }

    pub async fn end_stream(&self, stream: &str) -> Result<(), ApiError> {
        self.done(AdminRequest::EndStream {
            stream: stream.into(),
        })
        .await
    }

    pub async fn record_stream(&self, stream: &str, on: bool) -> Result<(), ApiError> {
        self.done(AdminRequest::RecordStream {
            stream: stream.into(),
            on,
        })
        .await
    }

    pub async fn record_room(&self, room: &str, on: bool) -> Result<(), ApiError> {
        self.done(AdminRequest::RecordRoom {
            room: room.into(),
            on,
        })
        .await
    }

    pub async fn recordings(&self) -> Vec<ActiveRecording> {
        self.recordings.active().await
    }

    pub fn pushes(&self) -> Vec<PushView> {
        self.pushes.list()
    }

    pub fn start_push(&self, stream: &str, url: &str, retry_ms: u64) -> Result<PushView, ApiError> {
        self.pushes
            .start(stream, url, retry_ms)
            .map_err(ApiError::invalid)
    }

    pub fn stop_push(&self, id: &str) -> Result<(), ApiError> {
        match self.pushes.stop(id) {
            true => Ok(()),
            false => Err(ApiError::not_found(format!("Push '{id}' not found"))),
        }
    }

    fn device_control(&self) -> Result<&DeviceControl, ApiError> {
        self.device.as_ref().ok_or_else(|| {
            ApiError::not_found("This device has no camera and no microphone configured")
        })
    }

    pub fn device(&self) -> Result<DeviceView, ApiError> {
        Ok(self.device_control()?.state())
    }

    pub fn set_device(
        &self,
        camera: Option<bool>,
        microphone: Option<bool>,
    ) -> Result<DeviceView, ApiError> {
        self.device_control()?
            .set(camera, microphone)
            .map_err(ApiError::conflict)
    }
}

fn room_views(snapshot: &Snapshot, created: &HashMap<String, SystemTime>) -> Vec<RoomView> {
    snapshot
        .rooms
        .iter()
        .map(|r| RoomView {
            name: r.name.clone(),
            created_at: created.get(&r.name).map(|t| crate::events::rfc3339(*t)),
            recording: r.record,
            members: r
                .members
                .iter()
                .map(|m| MemberView {
                    login: m.login.clone(),
                    kind: m.kind,
                    moderator: m.moderator,
                    muted: Muted {
                        audio: m.muted_audio,
                        video: m.muted_video,
                    },
                    streams: snapshot
                        .streams
                        .iter()
                        .filter(|s| s.room == r.name && s.login == m.login)
                        .map(|s| s.name.clone())
                        .collect(),
                })
                .collect(),
            active_speaker: r
                .active_speaker
                .as_ref()
                .map(|(login, stream)| SpeakerView {
                    login: login.clone(),
                    stream: stream.clone(),
                }),
        })
        .collect()
}

fn stream_views(snapshot: &Snapshot, stats: &[StreamStats]) -> Vec<StreamView> {
    snapshot
        .streams
        .iter()
        .map(|s| {
            let media = stats.iter().find(|m| m.stream == s.name);
            let track = |kind: crate::media::Kind| {
                let m = media?;
                let codec = m.codecs.get(kind)?;
                let video = kind == crate::media::Kind::Video;
                let (name, profile) = match codec.family {
                    Family::H264 {
                        profile,
                        constraints,
                    } => ("H264", Some(format!("{profile:02x}{constraints:02x}"))),
                    Family::Vp8 => ("VP8", None),
                    Family::Opus => ("opus", None),
                    Family::Pcmu => ("PCMU", None),
                    Family::Pcma => ("PCMA", None),
                };
                Some(TrackView {
                    codec: name,
                    profile,
                    clock_rate: codec.clock_rate,
                    bitrate_bps: if video { m.video_bps } else { m.audio_bps },
                    width: if video { m.width } else { None },
                    height: if video { m.height } else { None },
                })
            };
            StreamView {
                name: s.name.clone(),
                room: s.room.clone(),
                login: s.login.clone(),
                source: s.kind,
                state: if s.live { "publishing" } else { "pending" },
                audio: track(crate::media::Kind::Audio),
                video: track(crate::media::Kind::Video),
                players: s.players,
                recording: s.recording,
                muted: Muted {
                    audio: s.muted_audio,
                    video: s.muted_video,
                },
            }
        })
        .collect()
}
