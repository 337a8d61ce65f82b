//! The device as a participant of its rooms: it speaks to the room core in the same
//! commands a browser session does, and publishes the camera and microphone as one
//! stream per room (`<room>-<login>`).
//!
//! Pure logic, driven by the driver task: what the core tells the device's session,
//! rooms being created and finalized, and what the device's sources deliver
//! (`MediaEvent::SourceChanged` of `device::SOURCE`). Every reaction is a list of commands for the core.
//!
//! A join the core refuses (room full, too many rooms on the device) is retried with
//! a backoff (`JOIN_RETRY_FIRST` doubling to `JOIN_RETRY_MAX`) while the room is still
//! wanted; the driver calls `handle_timeout` at `poll_timeout`, the Sans-I/O way, so
//! the backoff is tested with simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::logging::{escaped, field};

use crate::auth::Access;
use crate::rooms::{
    Command, ConnectInfo, RoomEvent, ServerMessage, StateEntry, StreamRef, StreamRequest,
    StreamState,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub login: String,
    /// Joined at start and never left.
    pub rooms: Vec<String>,
    /// Join every room when it is created; leave it when nobody else is left.
    pub join_new_rooms: bool,
    /// Publish with `record: true` (`[device] record`).
    pub record: bool,
}

#[derive(Debug, Default)]
struct Membership {
    /// Join sent, STATE not seen yet.
    joining: bool,
    /// The other members' logins.
    others: BTreeSet<String>,
    /// The live (or pending) device stream: (media session id, stream name).
    stream: Option<(String, String)>,
}

/// The login the room display (`/display`, the device's own screen) joins with: it is
/// the device itself, not company to capture for.
pub const DISPLAY_LOGIN: &str = "Room display";

impl Membership {
    /// Someone other than the device and its own screen is in the room.
    fn has_company(&self) -> bool {
        self.others.iter().any(|o| o != DISPLAY_LOGIN)
    }
}

/// First delay before a refused join is sent again.
pub const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between join attempts.
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(30);

/// A room the device could not join.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// When to join again; `None` while that join is on its way.
    at: Option<Instant>,
    /// The delay that was waited last.
    delay: Duration,
}

#[derive(Debug)]
pub struct Participant {
    policy: Policy,
    rooms: BTreeMap<String, Membership>,
    /// Rooms whose join was refused, until a join succeeds or the room is no
    /// longer wanted.
    retries: BTreeMap<String, Retry>,
    /// What the sources deliver now: (audio, video).
    kinds: (bool, bool),
    /// Capturing (`set_active`): idle, the device stays in its rooms without streams.
    active: bool,
    next_id: u64,
}

impl Participant {
    pub fn new(policy: Policy) -> Participant {
        Participant {
            policy,
            rooms: BTreeMap::new(),
            retries: BTreeMap::new(),
            kinds: (false, false),
            active: true,
            next_id: 1,
        }
    }

    pub fn login(&self) -> &str {
        &self.policy.login
    }

    /// The rooms the device is in (or joining).
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// Whether another member is in one of its rooms (someone to send to).
    pub fn has_company(&self) -> bool {
        self.rooms.values().any(Membership::has_company)
    }

    /// The rooms with another member in them.
    pub fn rooms_with_company(&self) -> impl Iterator<Item = &str> {
        self.rooms
            .iter()
            .filter(|(_, m)| m.has_company())
            .map(|(r, _)| r.as_str())
    }

    /// Whether `stream` is (or would be) the device's stream in a room it is in or
    /// wants (its fixed rooms): `<room>-<login>`.
    pub fn wants_stream(&self, stream: &str) -> bool {
        let Some(room) = stream
            .strip_suffix(self.policy.login.as_str())
            .and_then(|s| s.strip_suffix('-'))
        else {
            return false;
        };
        self.rooms.contains_key(room) || self.is_fixed(room)
    }

    /// Whether the device is in `room` (or joining it).
    pub fn is_in(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Capture starts (`true`) or stops: stopping, every room's stream is unpublished
    /// first (so no stream fails when the sources close); starting, they are published
    /// again with what the sources deliver (once they report, `device_changed`).
    pub fn set_active(&mut self, active: bool) -> Vec<Command> {
        if self.active == active {
            return Vec::new();
        }
        self.active = active;
        self.republish()
    }

    /// Its first commands: identify, then join the fixed rooms.
    pub fn start(&mut self) -> Vec<Command> {
        let mut out = vec![Command::Connect(ConnectInfo {
            login: Some(self.policy.login.clone()),
            access: Access::Open,
            ..ConnectInfo::default()
        })];
        for room in self.policy.rooms.clone() {
            out.extend(self.join(&room));
        }
        out
    }

    /// A room came into being (someone joined it first).
    pub fn room_created(&mut self, room: &str) -> Vec<Command> {
        if self.policy.join_new_rooms {
            self.join(room)
        } else {
            Vec::new()
        }
    }

    /// A room ended: it is forgotten (a fixed room is joined again).
    pub fn room_finalized(&mut self, room: &str) -> Vec<Command> {
        let fixed = self.is_fixed(room);
        if !fixed {
            // Nobody to meet there any more: stop trying to join it.
            self.retries.remove(room);
        }
        if self.rooms.remove(room).is_some() && fixed {
            return self.join(room);
        }
        Vec::new()
    }

    /// When `handle_timeout` has a join to retry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retries.values().filter_map(|r| r.at).min()
    }

    /// Sends the joins whose retry time has come.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Command> {
        let due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at.is_some_and(|at| at <= now))
            .map(|(room, _)| room.clone())
            .collect();
        let mut out = Vec::new();
        for room in due {
            if let Some(r) = self.retries.get_mut(&room) {
                r.at = None;
            }
            info!(room:% = field(&room); "device: joining room {} again", escaped(&room));
            out.extend(self.join(&room));
        }
        out
    }

    /// The camera and microphone deliver `audio`/`video` now: every room's stream is
    /// published again with what there is.
    pub fn device_changed(&mut self, audio: bool, video: bool) -> Vec<Command> {
        if self.kinds == (audio, video) {
            return Vec::new();
        }
        self.kinds = (audio, video);
        self.republish()
    }

    /// Every joined room's stream published again with what there is now.
    fn republish(&mut self) -> Vec<Command> {
        let rooms: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, m)| !m.joining)
            .map(|(r, _)| r.clone())
            .collect();
        let mut out = Vec::new();
        for room in rooms {
            out.extend(self.unpublish(&room));
            out.extend(self.publish(&room));
        }
        out
    }

    /// What the room core sent the device's session at `now`.
    pub fn message(&mut self, now: Instant, message: ServerMessage) -> Vec<Command> {
        match message {
            ServerMessage::Room { room, event } => self.room_event(room, event),
            ServerMessage::DataStatus {
                operation_id,
                result: Err(why),
            } => {
                // A join that failed (room full, too many rooms): not in that room,
                // but try again later while the room is wanted.
                if let Some(room) = operation_id.strip_prefix("device-join:") {
                    self.rooms.remove(room);
                    let delay = match self.retries.get(room) {
                        Some(r) => (r.delay * 2).min(JOIN_RETRY_MAX),
                        None => JOIN_RETRY_FIRST,
                    };
                    warn!(
                        room = room;
                        "device: cannot join room {}: {}; trying again in {} s",
                        escaped(room),
                        escaped(&why),
                        delay.as_secs()
                    );
                    self.retries.insert(
                        room.to_owned(),
                        Retry {
                            at: Some(now + delay),
                            delay,
                        },
                    );
                }
                Vec::new()
            }
            ServerMessage::StreamStatus(status)
                if status.published && status.status.is_terminal() =>
            {
                for (room, m) in &mut self.rooms {
                    if m.stream
                        .as_ref()
                        .is_some_and(|(id, _)| *id == status.media_session_id)
                    {
                        m.stream = None;
                        if status.status == StreamState::Failed {
                            warn!(room:% = field(room); "device: stream {} failed: {}", escaped(&status.name), escaped(&status.info));
                        }
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn room_event(&mut self, room: String, event: RoomEvent) -> Vec<Command> {
        let me = self.policy.login.clone();
        let Some(m) = self.rooms.get_mut(&room) else {
            return Vec::new();
        };
        match event {
            RoomEvent::State(entries) => {
                m.joining = false;
                self.retries.remove(&room);
                m.others = entries
                    .iter()
                    .map(|e| match e {
                        StateEntry::Participant(login) => login.clone(),
                        StateEntry::Stream { login, .. } => login.clone(),
                    })
                    .filter(|l| *l != me)
                    .collect();
                info!(room:% = field(&room); "device: joined room {}", escaped(&room));
                self.publish(&room)
            }
            RoomEvent::Joined(login) => {
                m.others.insert(login);
                Vec::new()
            }
            RoomEvent::Left(login) => {
                m.others.remove(&login);
                let fixed = self.policy.rooms.contains(&room);
                if m.others.is_empty() && !m.joining && !fixed {
                    self.rooms.remove(&room);
                    info!(room:% = field(&room); "device: leaving room {}, nobody else is in it", escaped(&room));
                    return vec![Command::Leave {
                        operation_id: format!("device-leave:{room}"),
                        room,
                    }];
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn is_fixed(&self, room: &str) -> bool {
        self.policy.rooms.iter().any(|r| r == room)
    }

    fn join(&mut self, room: &str) -> Vec<Command> {
        if self.rooms.contains_key(room) {
            return Vec::new();
        }
        self.rooms.insert(
            room.to_owned(),
            Membership {
                joining: true,
                ..Membership::default()
            },
        );
        vec![Command::Join {
            operation_id: format!("device-join:{room}"),
            room: room.to_owned(),
            record: false,
        }]
    }

    fn publish(&mut self, room: &str) -> Vec<Command> {
        let (audio, video) = self.kinds;
        if !self.active || !(audio || video) {
            return Vec::new();
        }
        let id = format!("device-{}", self.next_id);
        self.next_id += 1;
        let name = format!("{room}-{}", self.policy.login);
        let Some(m) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        m.stream = Some((id.clone(), name.clone()));
        vec![Command::Publish(StreamRequest {
            media_session_id: id,
            name,
            room: Some(room.to_owned()),
            sdp: String::new(),
            has_audio: audio,
            has_video: video,
            record: self.policy.record,
        })]
    }

    fn unpublish(&mut self, room: &str) -> Vec<Command> {
        match self.rooms.get_mut(room).and_then(|m| m.stream.take()) {
            Some((media_session_id, name)) => vec![Command::Unpublish(StreamRef {
                media_session_id,
                name: Some(name),
            })],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::rooms::{Core, CoreConfig, MediaEvent, MediaRequest, Output, SessionId};

    const DEVICE: SessionId = 0;

    /// The room core with the device participant wired to it the way the driver
    /// does, and an SFU stand-in that brings every device stream up at once.
    struct World {
        core: Core,
        device: Participant,
        now: Instant,
        /// What the browser sessions were sent.
        sent: Vec<(SessionId, ServerMessage)>,
        /// Device streams the "SFU" holds.
        fed: Vec<String>,
        finalized: Vec<String>,
    }

    impl World {
        fn new(rooms: &[&str], join_new_rooms: bool) -> World {
            let mut w = World::unstarted(CoreConfig::default(), rooms, join_new_rooms);
            w.start();
            w
        }

        /// The core with these limits, the device not started yet.
        fn unstarted(cfg: CoreConfig, rooms: &[&str], join_new_rooms: bool) -> World {
            World {
                core: Core::new(cfg),
                device: Participant::new(Policy {
                    login: "Room system".into(),
                    rooms: rooms.iter().map(|r| r.to_string()).collect(),
                    join_new_rooms,
                    record: false,
                }),
                now: Instant::now(),
                sent: Vec::new(),
                fed: Vec::new(),
                finalized: Vec::new(),
            }
        }

        fn start(&mut self) {
            self.core
                .connect_local(self.now, DEVICE, crate::device::SOURCE);
            let commands = self.device.start();
            self.run(DEVICE, commands);
        }

        /// Simulated time passes; both timers run, the way the driver runs them.
        fn advance(&mut self, d: std::time::Duration) {
            self.now += d;
            self.core.handle_timeout(self.now);
            let commands = self.device.handle_timeout(self.now);
            self.run(DEVICE, commands);
        }

        fn run(&mut self, session: SessionId, commands: Vec<Command>) {
            for c in commands {
                self.core.command(self.now, session, c);
            }
            while let Some(o) = self.core.poll_output() {
                let more = match o {
                    Output::Send {
                        session: DEVICE,
                        message,
                    } => self.device.message(self.now, message),
                    Output::Send { session, message } => {
                        self.sent.push((session, message));
                        Vec::new()
                    }
                    Output::RoomCreated { room, .. } => self.device.room_created(&room),
                    Output::RoomFinalized { room, .. } => {
                        self.finalized.push(room.clone());
                        self.device.room_finalized(&room)
                    }
                    Output::Media(MediaRequest::PublishExternal {
                        session,
                        media_session_id,
                        stream,
                        ..
                    }) => {
                        self.fed.push(stream);
                        self.core.media_event(
                            self.now,
                            MediaEvent::Up {
                                session,
                                media_session_id,
                            },
                        );
                        Vec::new()
                    }
                    Output::Media(MediaRequest::Close {
                        session: DEVICE, ..
                    }) => {
                        self.fed.clear();
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                for c in more {
                    self.core.command(self.now, DEVICE, c);
                }
            }
        }

        fn device_changed(&mut self, audio: bool, video: bool) {
            let commands = self.device.device_changed(audio, video);
            self.run(DEVICE, commands);
        }

        fn browser(&mut self, id: SessionId, login: &str, room: &str) {
            self.core.connect(self.now, id);
            self.run(
                id,
                vec![
                    Command::Connect(ConnectInfo {
                        login: Some(login.into()),
                        ..ConnectInfo::default()
                    }),
                    Command::Join {
                        operation_id: "j".into(),
                        room: room.into(),
                        record: false,
                    },
                ],
            );
        }

        fn events(&mut self, id: SessionId) -> Vec<RoomEvent> {
            let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sent)
                .into_iter()
                .partition(|(s, _)| *s == id);
            self.sent = rest;
            mine.into_iter()
                .filter_map(|(_, m)| match m {
                    ServerMessage::Room { event, .. } => Some(event),
                    _ => None,
                })
                .collect()
        }
    }

    fn device_stream(room: &str) -> StateEntry {
        StateEntry::Stream {
            login: "Room system".into(),
            name: format!("{room}-Room system"),
        }
    }

    #[test]
    fn the_device_is_in_its_fixed_rooms_and_publishes_once_its_sources_are_up() {
        let mut w = World::new(&["lobby"], false);
        assert_eq!(w.device.rooms().collect::<Vec<_>>(), vec!["lobby"]);
        assert!(w.fed.is_empty(), "nothing to publish yet");
        w.device_changed(true, true);
        assert_eq!(w.fed, vec!["lobby-Room system"]);
        w.browser(1, "alice", "lobby");
        assert_eq!(
            w.events(1),
            vec![RoomEvent::State(vec![device_stream("lobby")])]
        );
        // A room the device was not asked into stays without it.
        w.browser(2, "bob", "other");
        assert_eq!(w.events(2), vec![RoomEvent::State(vec![])]);
        // Its stream is playable like any other.
        assert_eq!(w.core.stats().streams, 1);
        assert_eq!(w.core.stats().sessions, 2, "the device has no socket");
    }

    #[test]
    fn the_device_joins_new_rooms_and_leaves_when_the_last_member_leaves() {
        let mut w = World::new(&[], true);
        w.device_changed(true, true);
        w.browser(1, "alice", "standup");
        assert_eq!(
            w.events(1),
            vec![
                RoomEvent::State(vec![]),
                RoomEvent::Joined("Room system".into()),
                RoomEvent::Published {
                    login: "Room system".into(),
                    name: "standup-Room system".into()
                }
            ]
        );
        w.browser(2, "bob", "standup");
        w.events(1);
        w.run(
            1,
            vec![Command::Leave {
                operation_id: "l".into(),
                room: "standup".into(),
            }],
        );
        assert!(w.finalized.is_empty(), "bob is still there");
        w.run(
            2,
            vec![Command::Leave {
                operation_id: "l".into(),
                room: "standup".into(),
            }],
        );
        assert_eq!(
            w.finalized,
            vec!["standup"],
            "the device left, the room ended"
        );
        assert_eq!(w.core.stats().rooms, 0);
        assert_eq!(w.core.stats().streams, 0);
        // A new room of the same name gets the device again.
        w.browser(3, "carol", "standup");
        assert_eq!(w.core.stats().streams, 1);
    }

    #[test]
    fn losing_the_camera_fails_the_stream_and_it_comes_back_with_what_is_left() {
        let mut w = World::new(&["lobby"], false);
        w.device_changed(true, true);
        w.browser(1, "alice", "lobby");
        w.events(1);
        // The SFU fails the device stream (camera gone) and reports what is left.
        w.core.media_event(
            w.now,
            MediaEvent::Failed {
                session: DEVICE,
                media_session_id: "device-1".into(),
                info: "Camera /dev/video0 failed: No such device".into(),
            },
        );
        w.run(DEVICE, Vec::new());
        w.device_changed(true, false);
        let published = RoomEvent::Published {
            login: "Room system".into(),
            name: "lobby-Room system".into(),
        };
        let failed = RoomEvent::Failed {
            login: "Room system".into(),
            name: "lobby-Room system".into(),
        };
        let events = w.events(1);
        assert!(events.contains(&failed), "{events:?}");
        assert_eq!(events.last(), Some(&published), "audio-only again");
        // The camera returns: unpublished, then published with video.
        w.device_changed(true, true);
        let events = w.events(1);
        assert_eq!(
            events,
            vec![
                RoomEvent::Unpublished {
                    login: "Room system".into(),
                    name: "lobby-Room system".into()
                },
                published
            ]
        );
        // Nothing at all: the stream just ends.
        w.device_changed(false, false);
        assert_eq!(w.core.stats().streams, 0);
    }

    fn leave(w: &mut World, id: SessionId, room: &str) {
        w.run(
            id,
            vec![Command::Leave {
                operation_id: "l".into(),
                room: room.into(),
            }],
        );
    }

    #[test]
    fn a_refused_join_is_retried_with_backoff_until_it_fits() {
        use std::time::Duration;
        // One room on the device, and a browser got it first.
        let cfg = CoreConfig {
            max_rooms: 1,
            ..CoreConfig::default()
        };
        let mut w = World::unstarted(cfg, &["lobby"], false);
        w.browser(1, "alice", "other");
        w.start();
        assert_eq!(w.device.rooms().count(), 0, "refused");
        assert_eq!(
            w.device.poll_timeout(),
            Some(w.now + Duration::from_secs(1))
        );
        w.advance(Duration::from_millis(999));
        assert_eq!(
            w.device.poll_timeout(),
            Some(w.now + Duration::from_millis(1))
        );
        w.advance(Duration::from_millis(1));
        assert_eq!(w.device.rooms().count(), 0, "refused again");
        assert_eq!(
            w.device.poll_timeout(),
            Some(w.now + Duration::from_secs(2)),
            "the delay doubles"
        );
        // The slot frees up; the next attempt gets in and the retries end.
        leave(&mut w, 1, "other");
        assert_eq!(w.finalized, vec!["other"]);
        w.advance(Duration::from_secs(2));
        assert_eq!(w.device.rooms().collect::<Vec<_>>(), vec!["lobby"]);
        assert_eq!(w.device.poll_timeout(), None);
        w.device_changed(true, true);
        assert_eq!(w.fed, vec!["lobby-Room system"]);
    }

    #[test]
    fn join_retries_back_off_to_thirty_seconds() {
        use std::time::Duration;
        let mut p = Participant::new(Policy {
            login: "Room system".into(),
            rooms: vec!["lobby".into()],
            join_new_rooms: false,
            record: false,
        });
        let mut now = Instant::now();
        p.start();
        let refused = || ServerMessage::DataStatus {
            operation_id: "device-join:lobby".into(),
            result: Err("Too many rooms on this device: at most 1".into()),
        };
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(p.message(now, refused()).is_empty());
            let at = p.poll_timeout().expect("a retry is planned");
            delays.push((at - now).as_secs());
            assert!(p.handle_timeout(at - Duration::from_millis(1)).is_empty());
            now = at;
            assert_eq!(
                p.handle_timeout(now),
                vec![Command::Join {
                    operation_id: "device-join:lobby".into(),
                    room: "lobby".into(),
                    record: false
                }]
            );
            assert_eq!(p.poll_timeout(), None, "one join in flight, no timer");
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_new_room_that_ends_is_not_retried() {
        use std::time::Duration;
        let cfg = CoreConfig {
            max_participants: 1,
            ..CoreConfig::default()
        };
        let mut w = World::unstarted(cfg, &[], true);
        w.start();
        w.browser(1, "alice", "standup");
        assert_eq!(w.device.rooms().count(), 0, "the room is full");
        assert!(w.device.poll_timeout().is_some());
        leave(&mut w, 1, "standup");
        assert_eq!(w.finalized, vec!["standup"]);
        assert_eq!(w.device.poll_timeout(), None, "nothing left to join");
        w.advance(Duration::from_secs(60));
        assert_eq!(
            w.core.stats().rooms,
            0,
            "no room recreated by a stale retry"
        );
    }

    #[test]
    fn company_is_another_member_in_one_of_its_rooms() {
        let mut w = World::new(&["lobby"], true);
        assert!(!w.device.has_company(), "alone in its fixed room");
        // Its own screen in the room is not company.
        w.browser(3, DISPLAY_LOGIN, "lobby");
        assert!(!w.device.has_company(), "only the room display with it");
        w.browser(1, "alice", "lobby");
        assert!(w.device.has_company());
        assert_eq!(w.device.rooms_with_company().collect::<Vec<_>>(), ["lobby"]);
        w.browser(2, "bob", "standup");
        leave(&mut w, 1, "lobby");
        assert!(w.device.has_company(), "bob in the room it joined");
        leave(&mut w, 2, "standup");
        assert!(!w.device.has_company());
        assert_eq!(
            w.device.rooms().collect::<Vec<_>>(),
            ["lobby"],
            "left standup"
        );
        assert!(w.device.wants_stream("lobby-Room system"));
        assert!(!w.device.wants_stream("standup-Room system"));
        assert!(!w.device.wants_stream("lobby-alice"));
    }

    #[test]
    fn idle_it_stays_in_its_rooms_without_a_stream_and_nothing_fails() {
        let mut w = World::new(&["lobby"], false);
        w.device_changed(true, true);
        w.browser(1, "alice", "lobby");
        w.events(1);
        // Capture stops: the stream is unpublished before the sources close.
        let commands = w.device.set_active(false);
        w.run(DEVICE, commands);
        w.device_changed(true, false);
        w.device_changed(false, false);
        let unpublished = RoomEvent::Unpublished {
            login: "Room system".into(),
            name: "lobby-Room system".into(),
        };
        assert_eq!(w.events(1), vec![unpublished]);
        assert_eq!(w.core.stats().streams, 0);
        assert_eq!(w.device.rooms().collect::<Vec<_>>(), ["lobby"]);
        // Capturing again: published once, when both sources are back.
        let commands = w.device.set_active(true);
        assert!(commands.is_empty(), "nothing delivers yet");
        w.device_changed(true, true);
        assert_eq!(
            w.events(1),
            vec![RoomEvent::Published {
                login: "Room system".into(),
                name: "lobby-Room system".into()
            }]
        );
    }

    #[test]
    fn with_the_demand_a_participant_who_comes_back_within_the_grace_changes_nothing() {
        use crate::device::demand::Demand;
        use std::time::Duration;
        let grace = Duration::from_secs(10);
        let mut w = World::new(&[], true);
        let mut demand = Demand::new(grace, false);
        let mut changes = Vec::new();
        let mut step = |w: &mut World, d: Duration| {
            w.advance(d);
            if let Some(on) = demand.update(w.now, w.device.has_company()) {
                changes.push((on, w.now));
            }
        };
        step(&mut w, Duration::ZERO);
        w.browser(1, "alice", "standup");
        let t_join = w.now;
        step(&mut w, Duration::ZERO);
        leave(&mut w, 1, "standup");
        step(&mut w, Duration::from_secs(3));
        // Back 3 s later, gone again: the grace counts from the last departure.
        w.browser(2, "alice", "standup");
        step(&mut w, Duration::ZERO);
        leave(&mut w, 2, "standup");
        let t_left = w.now;
        step(&mut w, Duration::ZERO);
        step(&mut w, Duration::from_millis(9_999));
        step(&mut w, Duration::from_millis(1));
        assert_eq!(changes, vec![(true, t_join), (false, t_left + grace)]);
    }
}
