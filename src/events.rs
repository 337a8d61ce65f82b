//! The service's events for the fleet backend: what happened to rooms, participants,
//! streams, recordings and the device, as `[[webhooks]]` deliver them.
//!
//! Whoever sees an event (the room core's driver, the recording task, the device)
//! calls `Events::emit`; each receiver (`server::webhooks`) takes it into its own
//! bounded queue without waiting, so a dead or slow receiver never slows the rooms.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::metrics::Counter;

/// Every event the service emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RoomCreated,
    RoomFinalized,
    ParticipantJoined,
    ParticipantLeft,
    StreamPublished,
    StreamUnpublished,
    StreamFailed,
    RecordingStarted,
    RecordingFinished,
    RecordingFailed,
    MixFinished,
    DeviceCameraLost,
    DeviceCameraBack,
    RoomActiveSpeaker,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::RoomCreated,
        EventKind::RoomFinalized,
        EventKind::ParticipantJoined,
        EventKind::ParticipantLeft,
        EventKind::StreamPublished,
        EventKind::StreamUnpublished,
        EventKind::StreamFailed,
        EventKind::RecordingStarted,
        EventKind::RecordingFinished,
        EventKind::RecordingFailed,
        EventKind::MixFinished,
        EventKind::DeviceCameraLost,
        EventKind::DeviceCameraBack,
        EventKind::RoomActiveSpeaker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::RoomCreated => "room.created",
            EventKind::RoomFinalized => "room.finalized",
            EventKind::ParticipantJoined => "participant.joined",
            EventKind::ParticipantLeft => "participant.left",
            EventKind::StreamPublished => "stream.published",
            EventKind::StreamUnpublished => "stream.unpublished",
            EventKind::StreamFailed => "stream.failed",
            EventKind::RecordingStarted => "recording.started",
            EventKind::RecordingFinished => "recording.finished",
            EventKind::RecordingFailed => "recording.failed",
            EventKind::MixFinished => "mix.finished",
            EventKind::DeviceCameraLost => "device.camera_lost",
            EventKind::DeviceCameraBack => "device.camera_back",
            EventKind::RoomActiveSpeaker => "room.active_speaker",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The names, comma-separated (for error messages).
    pub fn names() -> String {
        EventKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One event: `{"id", "event", "timestamp", "room", ...data}` on the wire.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique (UUID v4): a receiver that gets a retried delivery twice can tell.
    pub id: String,
    pub kind: EventKind,
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub room: Option<String>,
    /// The event's own fields (login, stream, file, reason...).
    pub data: Map<String, Value>,
}

impl Event {
    pub fn new(kind: EventKind, room: Option<&str>, data: Value) -> Event {
        let data = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                let mut map = Map::new();
                map.insert("data".into(), other);
                map
            }
        };
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            timestamp: rfc3339(SystemTime::now()),
            room: room.map(str::to_owned),
            data,
        }
    }

    /// The JSON body as delivered.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("id".into(), Value::String(self.id.clone()));
        body.insert("event".into(), Value::String(self.kind.name().into()));
        body.insert("timestamp".into(), Value::String(self.timestamp.clone()));
        body.insert(
            "room".into(),
            self.room.clone().map_or(Value::Null, Value::String),
        );
        for (k, v) in &self.data {
            if !body.contains_key(k) {
                body.insert(k.clone(), v.clone());
            }
        }
        Value::Object(body)
    }
}

/// A receiver of events (a webhook's queue). `deliver` must never wait.
pub trait EventSink: Send + Sync {
    fn deliver(&self, event: &Arc<Event>);
}

/// What became of the events, all receivers together (`/metrics`); the receivers
/// count into it.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Events delivered (a 2xx answer).
    pub delivered: Counter,
    /// Delivery attempts that failed (and were retried or given up).
    pub failed_attempts: Counter,
    /// Events dropped: a full queue, or given up after the last attempt.
    pub dropped: Counter,
}

/// The way to emit events; cheap to clone; inert without receivers.
#[derive(Clone, Default)]
pub struct Events {
    sinks: Arc<Vec<Arc<dyn EventSink>>>,
    counters: Arc<EventCounters>,
}

impl Events {
    /// `counters` is what the sinks count into.
    pub fn new(sinks: Vec<Arc<dyn EventSink>>, counters: Arc<EventCounters>) -> Events {
        Events {
            sinks: Arc::new(sinks),
            counters,
        }
    }

    pub fn counters(&self) -> &EventCounters {
        &self.counters
    }

    /// Whether anyone listens (callers may skip building the data otherwise).
    pub fn is_active(&self) -> bool {
        !self.sinks.is_empty()
    }

    /// Emits an event; `data` is a JSON object of the event's own fields.
    pub fn emit(&self, kind: EventKind, room: Option<&str>, data: Value) {
        if self.sinks.is_empty() {
            return;
        }
        let event = Arc::new(Event::new(kind, room, data));
        for sink in self.sinks.iter() {
            sink.deliver(&event);
        }
    }
}

/// `2026-12-02T10:35:21.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_121_321_123);
        assert_eq!(rfc3339(t), "2026-12-01T10:35:21.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
        }
        assert_eq!(EventKind::from_name("room.exploded"), None);
    }

    #[test]
    fn the_body_carries_the_common_fields_first() {
        let e = Event::new(
            EventKind::ParticipantJoined,
            Some("r1"),
            serde_json::json!({"login": "alice", "event": "forged"}),
        );
        let body = e.to_json();
        assert_eq!(body["event"], "participant.joined");
        assert_eq!(body["room"], "r1");
        assert_eq!(body["login"], "alice");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
