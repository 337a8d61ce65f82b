//! The device's speaker wired to the room and stream cores: which streams the room
//! hears (`Hearing`, pure, kept by the driver from the core's notices), and the task
//! that attaches an audio sink to each of them (`Endpoints::attach_audio`, the same
//! mechanism as recorders and RTMP players) and hands their RTP to the speaker
//! thread (`device::speaker`).
//!
//! Heard: every live stream of every room the device is in, except the device's own.
//! The driver never waits for any of it: its hand-off is a `try_send`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use log::{debug, warn};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::device::speaker::{Input, SpeakerHandle};
use crate::device::Participant;
use crate::logging::escaped;
use crate::media::Kind;
use crate::rooms::Notice;
use crate::sfu::task::Endpoints;

/// Hear/stop requests queued toward the wiring task.
const QUEUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Hear(String),
    Stop(String),
}

/// Which streams the speaker should play, from what the room core says (pure).
#[derive(Debug, Default)]
pub(crate) struct Hearing {
    /// Live streams: stream → (room, login).
    live: BTreeMap<String, (String, String)>,
    /// Streams being heard now.
    heard: BTreeSet<String>,
}

impl Hearing {
    /// A notice of the core: streams come and go.
    pub(crate) fn notice(&mut self, notice: &Notice) {
        match notice {
            Notice::Published {
                room,
                login,
                stream,
            } => {
                self.live
                    .insert(stream.clone(), (room.clone(), login.clone()));
            }
            Notice::Unpublished { stream, .. } | Notice::Failed { stream, .. } => {
                self.live.remove(stream);
            }
            Notice::Joined { .. } | Notice::Left { .. } | Notice::ActiveSpeaker { .. } => {}
        }
    }

    /// A room ended: none of its streams are live.
    pub(crate) fn room_finalized(&mut self, room: &str) {
        self.live.retain(|_, (r, _)| r != room);
    }

    /// What to start and stop hearing now that the device is where it is.
    fn changes(&mut self, device: &Participant) -> Vec<Request> {
        let rooms: BTreeSet<&str> = device.rooms().collect();
        let wanted: BTreeSet<String> = self
            .live
            .iter()
            .filter(|(_, (room, login))| rooms.contains(room.as_str()) && login != device.login())
            .map(|(stream, _)| stream.clone())
            .collect();
        let mut out: Vec<Request> = self
            .heard
            .difference(&wanted)
            .map(|s| Request::Stop(s.clone()))
            .collect();
        out.extend(
            wanted
                .difference(&self.heard)
                .map(|s| Request::Hear(s.clone())),
        );
        self.heard = wanted;
        out
    }
}

/// The driver's side: the streams to hear and the queue toward the wiring task.
pub(crate) struct SpeakerWiring {
    pub hearing: Hearing,
    requests: mpsc::Sender<Request>,
}

impl SpeakerWiring {
    /// Starts the wiring task feeding `speaker` from the media engine.
    pub(crate) fn start(endpoints: Endpoints, speaker: SpeakerHandle) -> SpeakerWiring {
        let (requests, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(endpoints, speaker, rx));
        SpeakerWiring {
            hearing: Hearing::default(),
            requests,
        }
    }

    /// Brings what is heard in line with where the device is (after each batch of
    /// the core's outputs).
    pub(crate) fn sync(&mut self, device: &Participant) {
        for request in self.hearing.changes(device) {
            if self.requests.try_send(request).is_err() {
                warn!("device: speaker: request queue full");
            }
        }
    }
}

async fn run(endpoints: Endpoints, speaker: SpeakerHandle, mut rx: mpsc::Receiver<Request>) {
    let mut feeding: HashMap<String, (u64, JoinHandle<()>)> = HashMap::new();
    while let Some(request) = rx.recv().await {
        feeding.retain(|_, (_, task)| !task.is_finished());
        match request {
            Request::Hear(stream) => {
                if feeding.contains_key(&stream) {
                    continue;
                }
                if let Some(fed) = hear(&endpoints, &speaker, &stream).await {
                    feeding.insert(stream, fed);
                }
            }
            Request::Stop(stream) => {
                if let Some((id, task)) = feeding.remove(&stream) {
                    task.abort();
                    speaker.send(Input::End { id });
                }
            }
        }
    }
    for (_, (id, task)) in feeding {
        task.abort();
        speaker.send(Input::End { id });
    }
}

/// Attaches to a stream's audio and feeds it to the speaker until it ends.
async fn hear(
    endpoints: &Endpoints,
    speaker: &SpeakerHandle,
    stream: &str,
) -> Option<(u64, JoinHandle<()>)> {
    let mut attachment = match endpoints.attach_audio(stream).await {
        Ok(a) => a,
        Err(e) => {
            debug!("device: speaker: stream {}: {e}", escaped(stream));
            return None;
        }
    };
    let Some(codec) = attachment.codecs.audio.clone() else {
        debug!("device: speaker: stream {} has no audio", escaped(stream));
        return None;
    };
    let id = speaker.next_id();
    speaker.send(Input::Start {
        id,
        stream: stream.to_owned(),
        family: codec.family,
        clock_rate: codec.clock_rate,
    });
    let speaker = speaker.clone();
    let task = tokio::spawn(async move {
        while let Some((kind, packet)) = attachment.packets.recv().await {
            if kind != Kind::Audio {
                continue;
            }
            let fed = speaker.send(Input::Packet {
                id,
                sequence: packet.header.sequence_number,
                timestamp: packet.header.timestamp,
                payload: packet.payload,
            });
            if !fed {
                return;
            }
        }
        speaker.send(Input::End { id });
    });
    Some((id, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Policy;

    fn published(room: &str, login: &str) -> Notice {
        Notice::Published {
            room: room.into(),
            login: login.into(),
            stream: format!("{room}-{login}"),
        }
    }

    #[test]
    fn every_other_stream_of_the_devices_rooms_is_heard_never_its_own() {
        let device = Participant::new(Policy {
            login: "Room system".into(),
            rooms: vec!["main".into()],
            join_new_rooms: false,
            record: false,
        });
        let mut device = device;
        let _ = device.start();
        let mut h = Hearing::default();
        h.notice(&published("main", "alice"));
        h.notice(&published("main", "Room system"));
        h.notice(&published("other", "bob"));
        assert_eq!(h.changes(&device), vec![Request::Hear("main-alice".into())]);
        // Nothing new: nothing to do.
        assert!(h.changes(&device).is_empty());
        h.notice(&Notice::Unpublished {
            room: "main".into(),
            login: "alice".into(),
            stream: "main-alice".into(),
        });
        h.notice(&published("main", "carol"));
        assert_eq!(
            h.changes(&device),
            vec![
                Request::Stop("main-alice".into()),
                Request::Hear("main-carol".into())
            ]
        );
        h.room_finalized("main");
        assert_eq!(h.changes(&device), vec![Request::Stop("main-carol".into())]);
    }
}
