//! Log records carry the room, login and stream as key-value pairs; under systemd the
//! journal backend (systemd-journal-logger) turns them into the fields ROOM, LOGIN and
//! STREAM, so `journalctl -u huddle ROOM=daily` finds a meeting's lines.

use std::sync::Mutex;
use std::time::Instant;

use huddle::rooms::{Command, ConnectInfo, Core, CoreConfig, MediaEvent, StreamRef, StreamRequest};
use log::kv::{Key, VisitSource};
use log::{Log, Metadata, Record};

/// The key-value pairs of one record.
type Fields = Vec<(String, String)>;

/// (message, fields) of every record.
static RECORDS: Mutex<Vec<(String, Fields)>> = Mutex::new(Vec::new());

struct Capture;

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        struct Pairs(Vec<(String, String)>);
        impl<'kvs> VisitSource<'kvs> for Pairs {
            fn visit_pair(
                &mut self,
                key: Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
        let mut pairs = Pairs(Vec::new());
        let _ = record.key_values().visit(&mut pairs);
        RECORDS
            .lock()
            .unwrap()
            .push((record.args().to_string(), pairs.0));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn fields_of(needle: &str) -> Fields {
    let records = RECORDS.lock().unwrap();
    records
        .iter()
        .find(|(m, _)| m.contains(needle))
        .unwrap_or_else(|| panic!("no log line containing {needle:?} in {records:#?}"))
        .1
        .clone()
}

fn pair(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn room_login_and_stream_are_structured_fields() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let now = Instant::now();
    let mut core = Core::new(CoreConfig::default());
    core.connect(now, 1);
    core.command(
        now,
        1,
        Command::Connect(ConnectInfo {
            login: Some("Алиса".into()),
            ..Default::default()
        }),
    );
    core.command(
        now,
        1,
        Command::Join {
            operation_id: "j".into(),
            room: "daily".into(),
            record: false,
        },
    );
    core.command(
        now,
        1,
        Command::Publish(StreamRequest {
            media_session_id: "m".into(),
            name: "daily-Алиса-1a2b".into(),
            room: Some("daily".into()),
            sdp: "v=0\r\n".into(),
            has_audio: true,
            has_video: true,
            record: false,
        }),
    );
    core.media_event(
        now,
        MediaEvent::Up {
            session: 1,
            media_session_id: "m".into(),
        },
    );
    core.command(
        now,
        1,
        Command::Unpublish(StreamRef {
            media_session_id: "m".into(),
            name: None,
        }),
    );
    core.command(
        now,
        1,
        Command::Leave {
            operation_id: "l".into(),
            room: "daily".into(),
        },
    );

    let joined = fields_of("joined");
    assert!(joined.contains(&pair("room", "daily")), "{joined:?}");
    assert!(joined.contains(&pair("login", "Алиса")), "{joined:?}");
    let publishing = fields_of("publishing in room");
    assert!(
        publishing.contains(&pair("stream", "daily-Алиса-1a2b")),
        "{publishing:?}"
    );
    assert!(
        publishing.contains(&pair("room", "daily")),
        "{publishing:?}"
    );
    assert!(fields_of("unpublished").contains(&pair("stream", "daily-Алиса-1a2b")));
    assert!(fields_of("left").contains(&pair("login", "Алиса")));
    assert!(fields_of("finalized").contains(&pair("room", "daily")));
}
