//! Room core tests with simulated time: every protocol race is a sequence of calls.

use std::time::{Duration, Instant};

use super::*;

struct Harness {
    core: Core,
    now: Instant,
    /// Every output so far, for whole-run invariants.
    log: Vec<Output>,
    logins: HashMap<SessionId, String>,
}

impl Harness {
    fn new(cfg: CoreConfig) -> Self {
        Harness {
            core: Core::new(cfg),
            now: Instant::now(),
            log: Vec::new(),
            logins: HashMap::new(),
        }
    }

    fn default() -> Self {
        Self::new(CoreConfig::default())
    }

    /// Default limits, these sessions connected and joined to `room` in order.
    fn in_room(room: &str, members: &[(SessionId, &str)]) -> Self {
        Self::in_room_with(CoreConfig::default(), room, members)
    }

    /// `in_room` with these limits.
    fn in_room_with(cfg: CoreConfig, room: &str, members: &[(SessionId, &str)]) -> Self {
        let mut h = Self::new(cfg);
        for (id, login) in members {
            h.connect(*id, login);
        }
        for (id, _) in members {
            h.join(*id, room);
        }
        h
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.core.poll_output() {
            out.push(o);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    /// Opens a session and sends `connection` with this login.
    fn connect(&mut self, id: SessionId, login: &str) {
        self.core.connect(self.now, id);
        self.core.command(
            self.now,
            id,
            Command::Connect(ConnectInfo {
                login: Some(login.into()),
                ..Default::default()
            }),
        );
        self.logins.insert(id, login.into());
        let out = self.drain();
        assert!(
            matches!(&out[..], [Output::Send { session, message: ServerMessage::UserData(_) }] if *session == id),
            "{out:?}"
        );
    }

    fn cmd(&mut self, id: SessionId, c: Command) -> Vec<Output> {
        self.core.command(self.now, id, c);
        self.drain()
    }

    fn join(&mut self, id: SessionId, room: &str) -> Vec<Output> {
        self.cmd(id, join(room))
    }

    fn leave(&mut self, id: SessionId, room: &str) -> Vec<Output> {
        self.cmd(
            id,
            Command::Leave {
                operation_id: format!("leave-{room}"),
                room: room.into(),
            },
        )
    }

    fn media(&mut self, e: MediaEvent) -> Vec<Output> {
        self.core.media_event(self.now, e);
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain()
    }

    fn disconnect(&mut self, id: SessionId) -> Vec<Output> {
        self.core.disconnect(self.now, id);
        self.drain()
    }

    /// Publishes `name` in `room` for `id` and brings its media up.
    fn publish_live(&mut self, id: SessionId, room: &str, msid: &str, name: &str) -> Vec<Output> {
        let out = self.cmd(id, Command::Publish(req(msid, name, room)));
        assert!(
            out.iter().any(|o| matches!(o, Output::Media(MediaRequest::Publish { stream, .. }) if stream == name)),
            "{out:?}"
        );
        self.media(MediaEvent::Up {
            session: id,
            media_session_id: msid.into(),
        })
    }

    /// ROOM_PROTOCOL §7.2 and §9.5 over everything that was sent: STATE is the first
    /// event of a room for its receiver, and no event is about the receiver.
    fn check_invariants(&self) {
        let mut checker = invariants::Checker::default();
        for o in &self.log {
            let login = match o {
                Output::Send { session, .. } => self.logins.get(session).map(String::as_str),
                _ => None,
            };
            if let Err(e) = checker.check(o, login) {
                panic!("{e}");
            }
        }
    }
}

fn join(room: &str) -> Command {
    Command::Join {
        operation_id: format!("join-{room}"),
        room: room.into(),
        record: false,
    }
}

fn chat(op: &str, room: &str, to: Option<&str>, text: &str) -> Command {
    Command::SendMessage {
        operation_id: op.into(),
        room: room.into(),
        to: to.map(str::to_owned),
        text: text.into(),
    }
}

fn req(msid: &str, name: &str, room: &str) -> StreamRequest {
    StreamRequest {
        media_session_id: msid.into(),
        name: name.into(),
        room: Some(room.into()),
        sdp: "v=0\r\n".into(),
        has_audio: true,
        has_video: true,
        record: false,
    }
}

/// The messages sent to one session, in order.
fn to(out: &[Output], id: SessionId) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { session, message } if *session == id => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output], id: SessionId) -> Vec<RoomEvent> {
    to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Room { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn accepted(op: &str) -> ServerMessage {
    ServerMessage::DataStatus {
        operation_id: op.into(),
        result: Ok(()),
    }
}

fn failed(op: &str, info: &str) -> ServerMessage {
    ServerMessage::DataStatus {
        operation_id: op.into(),
        result: Err(info.into()),
    }
}

fn statuses(out: &[Output], id: SessionId) -> Vec<(StreamState, String)> {
    to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::StreamStatus(s) => Some((s.status, s.info)),
            _ => None,
        })
        .collect()
}

fn finalized(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::RoomFinalized { room, .. } => Some(room.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn connection_gets_exactly_one_user_data() {
    let mut h = Harness::default();
    h.connect(1, "alice");
    let out = h.cmd(1, Command::Connect(ConnectInfo::default()));
    assert!(
        matches!(&to(&out, 1)[..], [ServerMessage::Fail { .. }]),
        "{out:?}"
    );
}

#[test]
fn commands_before_connection_are_refused() {
    let mut h = Harness::default();
    h.core.connect(h.now, 1);
    let out = h.join(1, "r");
    assert_eq!(to(&out, 1), vec![failed("join-r", NOT_CONNECTED)]);
    let out = h.cmd(1, Command::Publish(req("m", "r-a-1", "r")));
    assert_eq!(statuses(&out, 1)[0].0, StreamState::Failed);
}

#[test]
fn three_participant_flow() {
    let mut h = Harness::default();
    for (id, login) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        h.connect(id, login);
    }
    let out = h.join(1, "r");
    assert_eq!(
        to(&out, 1),
        vec![
            accepted("join-r"),
            ServerMessage::Room {
                room: "r".into(),
                event: RoomEvent::State(vec![])
            }
        ]
    );
    let out = h.join(2, "r");
    assert_eq!(to(&out, 2)[0], accepted("join-r"));
    assert_eq!(
        events(&out, 2),
        vec![RoomEvent::State(vec![StateEntry::Participant(
            "alice".into()
        )])]
    );
    assert_eq!(events(&out, 1), vec![RoomEvent::Joined("bob".into())]);

    h.publish_live(1, "r", "m-a", "r-alice-1a2b");
    let out = h.join(3, "r");
    assert_eq!(
        events(&out, 3),
        vec![RoomEvent::State(vec![
            StateEntry::Stream {
                login: "alice".into(),
                name: "r-alice-1a2b".into()
            },
            StateEntry::Participant("bob".into()),
        ])]
    );
    assert_eq!(events(&out, 1), vec![RoomEvent::Joined("carol".into())]);
    assert_eq!(events(&out, 2), vec![RoomEvent::Joined("carol".into())]);

    let out = h.cmd(
        2,
        chat(
            "m1",
            "r",
            Some("carol"),
            "Привет, 世界 👋\n<b>&amp;</b> \\u0041",
        ),
    );
    assert_eq!(
        events(&out, 3),
        vec![RoomEvent::Message {
            from: "bob".into(),
            text: "Привет, 世界 👋\n<b>&amp;</b> \\u0041".into()
        }]
    );
    assert!(events(&out, 1).is_empty(), "message only to its addressee");
    assert_eq!(to(&out, 2), vec![accepted("m1")]);

    let out = h.leave(2, "r");
    assert_eq!(to(&out, 2), vec![accepted("leave-r")]);
    assert_eq!(events(&out, 1), vec![RoomEvent::Left("bob".into())]);
    assert_eq!(events(&out, 3), vec![RoomEvent::Left("bob".into())]);
    h.check_invariants();
}

#[test]
fn chat_without_recipient_goes_to_every_other_member() {
    let mut h = Harness::default();
    h.connect(1, "a");
    h.connect(2, "b");
    h.connect(3, "c");
    for id in 1..=3 {
        h.join(id, "r");
    }
    let out = h.cmd(1, chat("x", "r", None, "hi"));
    assert_eq!(events(&out, 2).len(), 1);
    assert_eq!(events(&out, 3).len(), 1);
    assert!(events(&out, 1).is_empty());
    let out = h.cmd(1, chat("y", "r", Some("nobody"), "hi"));
    assert_eq!(
        to(&out, 1),
        vec![failed("y", "Participant not found: 'nobody'")]
    );
    let out = h.cmd(1, chat("z", "elsewhere", Some("b"), "hi"));
    assert_eq!(
        to(&out, 1),
        vec![failed("z", "Not a member of room 'elsewhere'")]
    );
    h.check_invariants();
}

#[test]
fn leave_then_join_always_succeeds() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    for i in 0..200 {
        // 40 messages per second: inside the default rate limit.
        h.now += Duration::from_millis(50);
        let out = h.leave(2, "r");
        assert_eq!(to(&out, 2), vec![accepted("leave-r")], "cycle {i}");
        let out = h.join(2, "r");
        assert_eq!(to(&out, 2)[0], accepted("join-r"), "cycle {i}");
        assert_eq!(events(&out, 1), vec![RoomEvent::Joined("bob".into())]);
    }
    h.check_invariants();
}

#[test]
fn duplicate_login_is_refused_while_the_other_session_lives() {
    let mut h = Harness::default();
    h.connect(1, "alice");
    h.connect(2, "alice");
    h.join(1, "r");
    let out = h.join(2, "r");
    assert_eq!(
        to(&out, 2),
        vec![failed("join-r", "Room already has user with such login")]
    );
    h.disconnect(1);
    let out = h.join(2, "r");
    assert_eq!(to(&out, 2)[0], accepted("join-r"));
}

#[test]
fn a_silent_namesake_does_not_block_a_rejoin() {
    let mut h = Harness::in_room_with(
        CoreConfig {
            ping_interval: Duration::from_secs(5),
            ..CoreConfig::default()
        },
        "r",
        &[(1, "alice"), (2, "bob")],
    );
    // alice's network dies; her page reloads on another connection.
    h.advance(Duration::from_secs(5));
    h.cmd(2, Command::Pong);
    h.now += Duration::from_millis(2_600);
    h.connect(3, "alice");
    let out = h.join(3, "r");
    assert!(out.contains(&Output::Close {
        session: 1,
        reason: CloseReason::PingTimeout
    }));
    assert_eq!(to(&out, 3)[0], accepted("join-r"));
    assert_eq!(
        events(&out, 2),
        vec![
            RoomEvent::Left("alice".into()),
            RoomEvent::Joined("alice".into())
        ]
    );
    // A namesake that answers its pings is not evicted.
    h.connect(4, "bob");
    let out = h.join(4, "r");
    assert_eq!(
        to(&out, 4),
        vec![failed("join-r", "Room already has user with such login")]
    );
    h.check_invariants();
}

#[test]
fn rejoining_a_room_from_the_same_session_sends_one_fresh_state() {
    let mut h = Harness::default();
    h.connect(1, "a");
    h.connect(2, "b");
    h.join(1, "r");
    h.join(2, "r");
    let out = h.join(2, "r");
    assert_eq!(
        events(&out, 2),
        vec![RoomEvent::State(vec![StateEntry::Participant("a".into())])]
    );
    assert!(events(&out, 1).is_empty(), "no second JOINED");
    assert_eq!(h.core.stats().participants, 2);
}

#[test]
fn participant_and_room_limits() {
    let mut h = Harness::new(CoreConfig {
        max_participants: 2,
        max_rooms: 1,
        ..CoreConfig::default()
    });
    for (id, l) in [(1, "a"), (2, "b"), (3, "c")] {
        h.connect(id, l);
    }
    h.join(1, "r");
    h.join(2, "r");
    let out = h.join(3, "r");
    assert_eq!(
        to(&out, 3),
        vec![failed("join-r", "Room is full: at most 2 participants")]
    );
    let out = h.join(3, "other");
    assert_eq!(
        to(&out, 3),
        vec![failed(
            "join-other",
            "Too many rooms on this device: at most 1"
        )]
    );
}

#[test]
fn names_are_checked() {
    let mut h = Harness::new(CoreConfig {
        max_name_chars: 8,
        max_name_bytes: 24,
        ..CoreConfig::default()
    });
    h.connect(1, "a");
    let out = h.join(1, "");
    assert_eq!(to(&out, 1), vec![failed("join-", "Room name is required")]);
    let out = h.join(1, " \t ");
    assert_eq!(
        to(&out, 1),
        vec![failed("join- \t ", "Room name must not be only spaces")]
    );
    // Characters as people count them: 8 CJK characters (24 bytes) fit, 9 do not.
    let out = h.join(1, &"会".repeat(8));
    assert!(join_ok(&out, 1), "{out:?}");
    let long = "я".repeat(9); // 9 characters, 18 bytes
    let out = h.join(1, &long);
    assert_eq!(
        to(&out, 1),
        vec![failed(
            &format!("join-{long}"),
            "Room name is too long: at most 8 characters"
        )]
    );
    // A character of several code points is one: e + U+0301 (3 bytes), 8 of them = 24 bytes.
    let accents = "e\u{301}".repeat(8);
    let out = h.join(1, &accents);
    assert!(join_ok(&out, 1), "{out:?}");
    // The byte bound first: 7 flags are 7 characters but 56 bytes.
    let flags = "\u{1F1EB}\u{1F1F7}".repeat(7);
    let out = h.join(1, &flags);
    assert_eq!(
        to(&out, 1),
        vec![failed(
            &format!("join-{flags}"),
            "Room name is too long: at most 24 bytes of UTF-8"
        )]
    );
    h.connect(2, "");
    let out = h.join(2, "r");
    assert_eq!(
        to(&out, 2),
        vec![failed(
            "join-r",
            "Login is required: connect with custom.login"
        )]
    );
    h.connect(3, "   ");
    let out = h.join(3, "r");
    assert_eq!(
        to(&out, 3),
        vec![failed("join-r", "Login must not be only spaces")]
    );
}

fn join_ok(out: &[Output], id: SessionId) -> bool {
    to(out, id)
        .iter()
        .any(|m| matches!(m, ServerMessage::DataStatus { result: Ok(_), .. }))
}

#[test]
fn check_name_is_pure() {
    assert_eq!(crate::rooms::check_name("Login", "Ann", 128, 512), Ok(()));
    assert!(crate::rooms::check_name("Login", "\u{3000}", 128, 512).is_err());
    assert_eq!(
        crate::rooms::check_name("Room name", &"会".repeat(128), 128, 512),
        Ok(())
    );
    assert!(crate::rooms::check_name("Room name", &"会".repeat(129), 128, 512).is_err());
    // Not trimmed: leading and trailing spaces are part of a valid name.
    assert_eq!(
        crate::rooms::check_name("Room name", " r ", 128, 512),
        Ok(())
    );
}

#[test]
fn last_member_leaving_finalizes_the_room_at_once() {
    let mut h = Harness::default();
    h.connect(1, "a");
    h.join(1, "r");
    let out = h.leave(1, "r");
    assert_eq!(finalized(&out), vec!["r".to_string()]);
    assert_eq!(h.core.stats().rooms, 0);
}

#[test]
fn vanished_last_member_keeps_the_room_for_the_idle_timeout() {
    let mut h = Harness::new(CoreConfig {
        idle_timeout: Duration::from_secs(60),
        ..CoreConfig::default()
    });
    h.connect(1, "a");
    h.connect(2, "b");
    h.join(1, "r");
    // b was there too: the room is a meeting somebody may come back to.
    h.join(2, "r");
    h.leave(2, "r");
    let out = h.disconnect(1);
    assert!(finalized(&out).is_empty());
    assert_eq!(h.core.stats().rooms, 1);
    // Pings and timers of other sessions do not finalize it early.
    let out = h.advance(Duration::from_millis(59_999));
    assert!(finalized(&out).is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(finalized(&out), vec!["r".to_string()]);
    assert_eq!(h.core.stats().rooms, 0);
}

#[test]
fn rejoin_within_the_idle_timeout_finds_the_room() {
    let mut h = Harness::new(CoreConfig {
        idle_timeout: Duration::from_secs(60),
        ..CoreConfig::default()
    });
    h.connect(1, "a");
    h.cmd(
        1,
        Command::Join {
            operation_id: "j".into(),
            room: "r".into(),
            record: true,
        },
    );
    h.connect(3, "z");
    h.join(3, "r");
    h.leave(3, "r");
    h.disconnect(1);
    h.advance(Duration::from_secs(30));
    h.connect(2, "a");
    let out = h.join(2, "r");
    assert_eq!(events(&out, 2), vec![RoomEvent::State(vec![])]);
    assert!(
        !out.iter().any(|o| matches!(o, Output::RoomCreated { .. })),
        "the same room, not a new one"
    );
    // The idle deadline is cancelled by the rejoin.
    for _ in 0..24 {
        let out = h.advance(Duration::from_secs(5));
        assert!(finalized(&out).is_empty());
        h.cmd(2, Command::Pong);
    }
    let out = h.leave(2, "r");
    assert_eq!(
        out.iter()
            .filter_map(|o| match o {
                Output::RoomFinalized { room, record } => Some((room.clone(), *record)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![("r".to_string(), true)],
        "the room keeps the creator's record flag"
    );
}

#[test]
fn pings_and_ping_timeout() {
    let mut h = Harness::new(CoreConfig {
        ping_interval: Duration::from_secs(5),
        ping_misses: 3,
        ..CoreConfig::default()
    });
    h.connect(1, "quiet");
    h.connect(2, "chatty");
    h.join(1, "r");
    h.join(2, "r");
    for _ in 0..2 {
        let out = h.advance(Duration::from_secs(5));
        assert!(to(&out, 1).contains(&ServerMessage::Ping));
        assert!(to(&out, 2).contains(&ServerMessage::Ping));
        h.cmd(2, Command::Pong);
    }
    let out = h.advance(Duration::from_secs(5));
    assert!(
        out.contains(&Output::Close {
            session: 1,
            reason: CloseReason::PingTimeout
        }),
        "{out:?}"
    );
    assert_eq!(events(&out, 2), vec![RoomEvent::Left("quiet".into())]);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Close { session: 2, .. })));
    // The dead session's login is free again.
    h.connect(3, "quiet");
    let out = h.join(3, "r");
    assert_eq!(to(&out, 3)[0], accepted("join-r"));
    h.check_invariants();
}

#[test]
fn poll_timeout_points_at_the_next_ping() {
    let mut h = Harness::default();
    assert_eq!(h.core.poll_timeout(), None);
    h.connect(1, "a");
    assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(5)));
}

#[test]
fn message_flood_is_refused_then_closed() {
    let mut h = Harness::new(CoreConfig {
        rate_per_sec: 10,
        rate_burst: 20,
        // Only the rate limit is under test here.
        max_rooms_per_session: 100,
        ..CoreConfig::default()
    });
    h.connect(1, "flood");
    h.connect(2, "calm");
    h.join(2, "r");
    let mut accepted_n = 0;
    let mut rejected_n = 0;
    let mut closed = false;
    for i in 0..100 {
        let out = h.cmd(1, join(&format!("x{i}")));
        if out.contains(&Output::Close {
            session: 1,
            reason: CloseReason::Flood,
        }) {
            closed = true;
            break;
        }
        match to(&out, 1).first() {
            Some(ServerMessage::DataStatus { result: Ok(()), .. }) => accepted_n += 1,
            Some(ServerMessage::DataStatus { result: Err(e), .. }) => {
                assert!(e.starts_with("Too many requests"), "{e}");
                rejected_n += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // One token was spent on the connection message.
    assert_eq!(accepted_n, 19);
    assert_eq!(rejected_n, 20);
    assert!(closed);
    // Everyone else carries on.
    h.connect(3, "other");
    let out = h.join(3, "r");
    assert_eq!(to(&out, 3)[0], accepted("join-r"));
    // Pongs never count against the limit.
    for _ in 0..1000 {
        assert!(h.cmd(3, Command::Pong).is_empty());
    }
}

#[test]
fn session_limit_closes_new_sockets() {
    let mut h = Harness::new(CoreConfig {
        max_sessions: 2,
        ..CoreConfig::default()
    });
    h.connect(1, "a");
    h.connect(2, "b");
    h.core.connect(h.now, 3);
    assert_eq!(
        h.drain(),
        vec![Output::Close {
            session: 3,
            reason: CloseReason::TooManySessions
        }]
    );
}

#[test]
fn publish_is_validated_against_room_and_name_rules() {
    let mut h = Harness::new(CoreConfig {
        max_streams_per_participant: 1,
        ..CoreConfig::default()
    });
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.join(1, "room-1");
    h.join(2, "room-1");
    let cases = [
        (
            req("m1", "room-1-alice-1", "other"),
            "Restricted access: not a member of room 'other'",
        ),
        (
            req("m1", "room-1-bob-1", "room-1"),
            "Stream name must start with 'room-1-alice-'",
        ),
        (
            req("m1", "room-1-alicex", "room-1"),
            "Stream name must start with 'room-1-alice-'",
        ),
        (
            req("", "room-1-alice-1", "room-1"),
            "mediaSessionId is required",
        ),
    ];
    for (r, info) in cases {
        let out = h.cmd(1, Command::Publish(r));
        assert_eq!(
            statuses(&out, 1),
            vec![(StreamState::Failed, info.to_string())]
        );
    }
    let mut no_room = req("m1", "room-1-alice-1", "room-1");
    no_room.room = None;
    let out = h.cmd(1, Command::Publish(no_room));
    assert!(statuses(&out, 1)[0].1.starts_with("Restricted access"));

    // Room names with '-' and the old "<room>-<login>" form both work.
    h.publish_live(1, "room-1", "m1", "room-1-alice");
    let out = h.cmd(1, Command::Publish(req("m1", "room-1-alice-2", "room-1")));
    assert_eq!(statuses(&out, 1)[0].1, "MediaSessionId is already in use");
    let out = h.cmd(1, Command::Publish(req("m2", "room-1-alice-2", "room-1")));
    assert_eq!(
        statuses(&out, 1)[0].1,
        "Too many streams: at most 1 per participant"
    );
    // Names are unique server-wide.
    h.connect(3, "alice");
    h.join(3, "room");
    let out = h.cmd(3, Command::Publish(req("m9", "room-1-alice", "room")));
    assert_eq!(
        statuses(&out, 3)[0].1,
        "Stream name must start with 'room-alice-'"
    );
}

#[test]
fn publish_play_unpublish_cascade() {
    let mut h = Harness::default();
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.connect(3, "carol");
    for id in 1..=3 {
        h.join(id, "r");
    }
    let out = h.cmd(1, Command::Publish(req("pa", "r-alice-1", "r")));
    assert!(
        statuses(&out, 1).is_empty(),
        "no status before the media path is up"
    );
    assert!(
        events(&out, 2).is_empty(),
        "no PUBLISHED before the media path is up"
    );
    let out = h.media(MediaEvent::Answer {
        session: 1,
        media_session_id: "pa".into(),
        sdp: "answer".into(),
    });
    assert_eq!(
        to(&out, 1),
        vec![ServerMessage::RemoteSdp {
            media_session_id: "pa".into(),
            sdp: "answer".into()
        }]
    );
    // Playing a stream that is not up yet fails.
    let out = h.cmd(2, Command::Play(req("early", "r-alice-1", "r")));
    assert_eq!(
        statuses(&out, 2),
        vec![(StreamState::Failed, "Stream not found".into())]
    );

    let out = h.media(MediaEvent::Up {
        session: 1,
        media_session_id: "pa".into(),
    });
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Publishing, String::new())]
    );
    let published = RoomEvent::Published {
        login: "alice".into(),
        name: "r-alice-1".into(),
    };
    assert_eq!(events(&out, 2), vec![published.clone()]);
    assert_eq!(events(&out, 3), vec![published]);

    // bob plays twice in one session, alice plays her own stream.
    for (id, msid) in [(2, "pb1"), (2, "pb2"), (1, "self")] {
        let out = h.cmd(id, Command::Play(req(msid, "r-alice-1", "r")));
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Media(MediaRequest::Play { media_session_id, .. }) if media_session_id == msid)));
        let out = h.media(MediaEvent::Up {
            session: id,
            media_session_id: msid.into(),
        });
        assert_eq!(
            statuses(&out, id),
            vec![(StreamState::Playing, String::new())]
        );
    }
    assert_eq!(h.core.stats().players, 3);

    let out = h.cmd(2, Command::Play(req("pb3", "r-nobody-1", "r")));
    assert_eq!(
        statuses(&out, 2),
        vec![(StreamState::Failed, "Stream not found".into())]
    );

    let out = h.cmd(
        1,
        Command::Unpublish(StreamRef {
            media_session_id: "pa".into(),
            name: None,
        }),
    );
    assert_eq!(
        statuses(&out, 1),
        vec![
            (StreamState::Stopped, "Stopped by publisher stop".into()),
            (StreamState::Unpublished, String::new())
        ]
    );
    assert_eq!(
        statuses(&out, 2),
        vec![
            (StreamState::Stopped, "Stopped by publisher stop".into()),
            (StreamState::Stopped, "Stopped by publisher stop".into())
        ]
    );
    assert_eq!(
        events(&out, 3),
        vec![RoomEvent::Unpublished {
            login: "alice".into(),
            name: "r-alice-1".into()
        }]
    );
    let closes = out
        .iter()
        .filter(|o| matches!(o, Output::Media(MediaRequest::Close { .. })))
        .count();
    assert_eq!(closes, 4, "the publisher and three players are released");
    assert_eq!(h.core.stats().streams, 0);
    assert_eq!(h.core.stats().players, 0);

    // Stops are idempotent: a terminal status echoing the id.
    let out = h.cmd(
        1,
        Command::Unpublish(StreamRef {
            media_session_id: "pa".into(),
            name: Some("r-alice-1".into()),
        }),
    );
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Unpublished, String::new())]
    );
    let out = h.cmd(
        2,
        Command::Stop(StreamRef {
            media_session_id: "pb1".into(),
            name: None,
        }),
    );
    assert_eq!(
        statuses(&out, 2),
        vec![(StreamState::Stopped, String::new())]
    );
    h.check_invariants();
}

#[test]
fn leave_ends_streams_before_left_and_before_the_ack() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.publish_live(2, "r", "pb", "r-bob-1");
    h.cmd(1, Command::Play(req("pa", "r-bob-1", "r")));
    h.media(MediaEvent::Up {
        session: 1,
        media_session_id: "pa".into(),
    });
    let out = h.leave(2, "r");
    let bob = to(&out, 2);
    assert!(
        matches!(&bob[0], ServerMessage::StreamStatus(s) if s.status == StreamState::Unpublished)
    );
    assert_eq!(bob.last(), Some(&accepted("leave-r")));
    let alice = to(&out, 1);
    assert!(
        matches!(&alice[0], ServerMessage::StreamStatus(s) if s.status == StreamState::Stopped)
    );
    assert_eq!(
        events(&out, 1),
        vec![
            RoomEvent::Unpublished {
                login: "bob".into(),
                name: "r-bob-1".into()
            },
            RoomEvent::Left("bob".into())
        ]
    );
    // The ACK comes after everything else the leave caused.
    let last_send = out
        .iter()
        .rev()
        .find(|o| matches!(o, Output::Send { .. }))
        .cloned();
    assert_eq!(
        last_send,
        Some(Output::Send {
            session: 2,
            message: accepted("leave-r")
        })
    );
    h.check_invariants();
}

#[test]
fn disconnect_cleans_up_streams_and_membership() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.publish_live(2, "r", "pb", "r-bob-1");
    h.cmd(1, Command::Play(req("pa", "r-bob-1", "r")));
    h.media(MediaEvent::Up {
        session: 1,
        media_session_id: "pa".into(),
    });
    h.cmd(2, Command::Play(req("pself", "r-bob-1", "r")));
    let out = h.disconnect(2);
    assert!(to(&out, 2).is_empty(), "nothing is sent to a gone session");
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Stopped, "Stopped by publisher stop".into())]
    );
    assert_eq!(
        events(&out, 1),
        vec![
            RoomEvent::Failed {
                login: "bob".into(),
                name: "r-bob-1".into()
            },
            RoomEvent::Left("bob".into())
        ]
    );
    assert_eq!(
        h.core.stats(),
        Stats {
            sessions: 1,
            rooms: 1,
            participants: 1,
            streams: 0,
            players: 0
        }
    );
    h.check_invariants();
}

#[test]
fn media_that_never_comes_up_fails_in_bounded_time() {
    let mut h = Harness::in_room_with(
        CoreConfig {
            media_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(60),
            ..CoreConfig::default()
        },
        "r",
        &[(1, "alice"), (2, "bob")],
    );
    h.publish_live(1, "r", "pa", "r-alice-1");
    h.cmd(1, Command::Publish(req("pa2", "r-alice-2", "r")));
    h.cmd(2, Command::Play(req("pb", "r-alice-1", "r")));
    let out = h.advance(Duration::from_millis(14_999));
    assert!(statuses(&out, 1).is_empty() && statuses(&out, 2).is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Failed, "Failed by ICE timeout".into())]
    );
    assert_eq!(
        statuses(&out, 2),
        vec![(StreamState::Failed, "Failed by ICE timeout".into())]
    );
    assert!(
        events(&out, 2).is_empty(),
        "a stream that never went live is not announced"
    );
    assert_eq!(h.core.stats().streams, 1);
}

#[test]
fn media_failure_of_a_live_stream_is_announced() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.publish_live(1, "r", "pa", "r-alice-1");
    let out = h.media(MediaEvent::Failed {
        session: 1,
        media_session_id: "pa".into(),
        info: "Failed by DTLS error".into(),
    });
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Failed, "Failed by DTLS error".into())]
    );
    assert_eq!(
        events(&out, 2),
        vec![RoomEvent::Failed {
            login: "alice".into(),
            name: "r-alice-1".into()
        }]
    );
    // The name is free for a new publish.
    let out = h.publish_live(1, "r", "pa2", "r-alice-1");
    assert_eq!(
        statuses(&out, 1),
        vec![(StreamState::Publishing, String::new())]
    );
}

#[test]
fn play_requires_membership() {
    let mut h = Harness::default();
    h.connect(1, "alice");
    h.connect(2, "eve");
    h.join(1, "r");
    h.publish_live(1, "r", "pa", "r-alice-1");
    let mut r = req("pe", "r-alice-1", "r");
    r.room = None;
    let out = h.cmd(2, Command::Play(r));
    assert_eq!(
        statuses(&out, 2),
        vec![(
            StreamState::Failed,
            "Restricted access: not a member of room 'r'".into()
        )]
    );
}

#[test]
fn shutdown_closes_sessions_and_finalizes_rooms() {
    let mut h = Harness::default();
    h.connect(1, "a");
    h.connect(2, "b");
    h.join(1, "r1");
    h.join(2, "r2");
    h.publish_live(1, "r1", "pa", "r1-a-1");
    h.core.shutdown(h.now);
    let out = h.drain();
    let mut closed: Vec<SessionId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Close {
                session,
                reason: CloseReason::Shutdown,
            } => Some(*session),
            _ => None,
        })
        .collect();
    closed.sort_unstable();
    assert_eq!(closed, vec![1, 2]);
    assert_eq!(finalized(&out), vec!["r1".to_string(), "r2".to_string()]);
    assert!(out.contains(&Output::Media(MediaRequest::Close {
        session: 1,
        media_session_id: "pa".into()
    })));
    assert_eq!(h.core.stats(), Stats::default());
}

#[test]
fn device_wide_stream_and_player_budgets() {
    let mut h = Harness::in_room_with(
        CoreConfig {
            max_streams: 1,
            max_players: 1,
            ..CoreConfig::default()
        },
        "r",
        &[(1, "alice"), (2, "bob")],
    );
    h.publish_live(1, "r", "pa", "r-alice-1");
    let out = h.cmd(2, Command::Publish(req("pb", "r-bob-1", "r")));
    assert_eq!(
        statuses(&out, 2),
        vec![(
            StreamState::Failed,
            "Too many streams on this device: at most 1".into()
        )]
    );
    h.cmd(2, Command::Play(req("p1", "r-alice-1", "r")));
    let out = h.cmd(2, Command::Play(req("p2", "r-alice-1", "r")));
    assert_eq!(
        statuses(&out, 2),
        vec![(
            StreamState::Failed,
            "Too many players on this device: at most 1".into()
        )]
    );
}

fn connect_with(h: &mut Harness, id: SessionId, login: &str, access: crate::auth::Access) {
    h.core.connect(h.now, id);
    h.core.command(
        h.now,
        id,
        Command::Connect(ConnectInfo {
            login: Some(login.into()),
            access,
            ..Default::default()
        }),
    );
    h.logins.insert(id, login.into());
    h.drain();
}

#[test]
fn token_access_limits_rooms_and_publishing() {
    use crate::auth::{Access, Rooms};
    let mut h = Harness::default();
    connect_with(
        &mut h,
        1,
        "alice",
        Access::Refused("Restricted access: the token has expired".into()),
    );
    let out = h.join(1, "r");
    assert_eq!(
        to(&out, 1),
        vec![failed("join-r", "Restricted access: the token has expired")]
    );
    // Every other request names the token's real fault too, not a missing right.
    let out = h.cmd(1, Command::Publish(req("m1", "r-alice-1", "r")));
    assert_eq!(
        statuses(&out, 1),
        vec![(
            StreamState::Failed,
            "Restricted access: the token has expired".into()
        )]
    );
    let out = h.cmd(1, Command::Play(req("m2", "r-bob-1", "r")));
    assert_eq!(
        statuses(&out, 1),
        vec![(
            StreamState::Failed,
            "Restricted access: the token has expired".into()
        )]
    );
    connect_with(
        &mut h,
        2,
        "bob",
        Access::Granted {
            rooms: Rooms::List(vec!["r".into()]),
            publish: false,
            moderator: false,
        },
    );
    let out = h.join(2, "other");
    assert_eq!(
        to(&out, 2),
        vec![failed(
            "join-other",
            "Restricted access: the token does not allow room 'other'"
        )]
    );
    let out = h.join(2, "r");
    assert_eq!(to(&out, 2)[0], accepted("join-r"));
    let out = h.cmd(2, Command::Publish(req("m", "r-bob-1", "r")));
    assert_eq!(
        statuses(&out, 2),
        vec![(
            StreamState::Failed,
            "Restricted access: the token does not allow publishing".into()
        )]
    );
    connect_with(
        &mut h,
        3,
        "carol",
        Access::Granted {
            rooms: Rooms::Any("*".into()),
            publish: true,
            moderator: false,
        },
    );
    h.join(3, "anywhere");
    let out = h.cmd(
        3,
        Command::Publish(req("m", "anywhere-carol-1", "anywhere")),
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaRequest::Publish { .. }))));
}

#[test]
fn per_session_limits_leave_the_device_budget_to_others() {
    let mut h = Harness::new(CoreConfig {
        max_rooms_per_session: 2,
        max_streams_per_session: 3,
        max_players_per_session: 2,
        ..CoreConfig::default()
    });
    h.connect(1, "greedy");
    h.connect(2, "alice");
    h.join(1, "r1");
    h.join(1, "r2");
    let out = h.join(1, "r3");
    assert_eq!(
        to(&out, 1),
        vec![failed(
            "join-r3",
            "Too many rooms for one session: at most 2 at once"
        )]
    );
    assert_eq!(h.core.stats().rooms, 2, "the refused join created nothing");
    // Somebody else still gets a new room.
    let out = h.join(2, "r3");
    assert_eq!(to(&out, 2)[0], accepted("join-r3"));
    // Rejoining a room it is in is not a new room.
    let out = h.join(1, "r2");
    assert_eq!(to(&out, 1)[0], accepted("join-r2"));

    // Streams: a pending publish counts as much as a live one.
    h.publish_live(1, "r1", "g1", "r1-greedy-1");
    h.publish_live(1, "r1", "g2", "r1-greedy-2");
    h.cmd(1, Command::Publish(req("g3", "r2-greedy-1", "r2")));
    let out = h.cmd(1, Command::Publish(req("g4", "r2-greedy-2", "r2")));
    assert_eq!(
        statuses(&out, 1),
        vec![(
            StreamState::Failed,
            "Too many streams for one session: at most 3 published at once".into()
        )]
    );
    h.publish_live(2, "r3", "a1", "r3-alice-1");
    assert_eq!(h.core.stats().streams, 4);

    // Players: all its rooms together.
    h.join(2, "r1");
    h.publish_live(2, "r1", "a2", "r1-alice-2");
    h.cmd(1, Command::Play(req("p1", "r1-alice-2", "r1")));
    h.cmd(1, Command::Play(req("p2", "r1-alice-2", "r1")));
    let out = h.cmd(1, Command::Play(req("p3", "r1-alice-2", "r1")));
    assert_eq!(
        statuses(&out, 1),
        vec![(
            StreamState::Failed,
            "Too many players for one session: at most 2 played at once".into()
        )]
    );
    let out = h.cmd(2, Command::Play(req("p1", "r1-greedy-1", "r1")));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Media(MediaRequest::Play { session: 2, .. }))),
        "{out:?}"
    );
    // Freed budget is usable again.
    h.cmd(
        1,
        Command::Stop(StreamRef {
            media_session_id: "p1".into(),
            name: None,
        }),
    );
    let out = h.cmd(1, Command::Play(req("p4", "r1-alice-2", "r1")));
    assert!(statuses(&out, 1).is_empty(), "{out:?}");
    h.leave(1, "r2");
    let out = h.join(1, "r3");
    assert_eq!(to(&out, 1)[0], accepted("join-r3"));
    h.check_invariants();
}

#[test]
fn the_local_participant_is_not_held_to_the_per_session_limits() {
    let mut h = Harness::new(CoreConfig {
        max_rooms_per_session: 1,
        max_streams_per_session: 1,
        ..CoreConfig::default()
    });
    h.core.connect_local(h.now, 100, "device");
    h.cmd(
        100,
        Command::Connect(ConnectInfo {
            login: Some("Room system".into()),
            ..Default::default()
        }),
    );
    for room in ["a", "b", "c"] {
        let out = h.join(100, room);
        assert_eq!(to(&out, 100)[0], accepted(&format!("join-{room}")));
        let mut r = req(&format!("d-{room}"), &format!("{room}-Room system"), room);
        r.sdp = String::new();
        let out = h.cmd(100, Command::Publish(r));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Media(MediaRequest::PublishExternal { .. }))),
            "{out:?}"
        );
    }
}

#[test]
fn a_room_only_its_vanished_creator_ever_saw_is_finalized_at_once() {
    let mut h = Harness::new(CoreConfig {
        idle_timeout: Duration::from_secs(60),
        max_rooms: 2,
        ..CoreConfig::default()
    });
    h.connect(1, "greedy");
    h.join(1, "r1");
    h.join(1, "r2");
    // Joining again from the same session does not make it anybody else's room.
    h.join(1, "r2");
    let out = h.disconnect(1);
    let mut gone = finalized(&out);
    gone.sort();
    assert_eq!(gone, vec!["r1".to_string(), "r2".to_string()]);
    assert_eq!(h.core.stats().rooms, 0);
    // The device's room budget is free for the next client at once.
    h.connect(2, "alice");
    let out = h.join(2, "fresh");
    assert_eq!(to(&out, 2)[0], accepted("join-fresh"));
    // A room somebody else was in keeps the idle timeout for a rejoin.
    h.connect(3, "bob");
    h.join(3, "fresh");
    h.leave(3, "fresh");
    let out = h.disconnect(2);
    assert!(finalized(&out).is_empty());
    let out = h.advance(Duration::from_secs(60));
    assert_eq!(finalized(&out), vec!["fresh".to_string()]);
}

#[test]
fn the_device_login_is_reserved() {
    let reserved = "Login 'Room system' is reserved for the device: connect with another login";
    let mut h = Harness::new(CoreConfig {
        reserved_login: Some("Room system".into()),
        ..CoreConfig::default()
    });
    // The device itself (a local session) uses it.
    h.core.connect_local(h.now, 100, "device");
    h.cmd(
        100,
        Command::Connect(ConnectInfo {
            login: Some("Room system".into()),
            ..Default::default()
        }),
    );
    let out = h.join(100, "r");
    assert_eq!(to(&out, 100)[0], accepted("join-r"));
    // Browsers may connect with it (the SDK shows a join failure, not a dead
    // socket) but not enter a room, nor a new one, in any spelling that would pass
    // for the device.
    for (id, login) in [
        (1, "Room system"),
        (2, " room SYSTEM "),
        (3, "Room system\t"),
    ] {
        h.connect(id, login);
        for room in ["r", "new"] {
            let out = h.join(id, room);
            assert_eq!(
                to(&out, id),
                vec![failed(&format!("join-{room}"), reserved)]
            );
        }
    }
    assert_eq!(h.core.stats().rooms, 1);
    assert_eq!(h.core.stats().participants, 1);
    // Other logins are fine, even close ones.
    h.connect(4, "Room system 2");
    let out = h.join(4, "r");
    assert_eq!(to(&out, 4)[0], accepted("join-r"));
    // A local participant of another edge (an RTMP publisher) is under the rules of
    // every client: not the device's login either.
    h.core.connect_edge(h.now, 200, "rtmp-200");
    h.cmd(
        200,
        Command::Connect(ConnectInfo {
            login: Some("room system".into()),
            ..Default::default()
        }),
    );
    let out = h.join(200, "r");
    assert_eq!(to(&out, 200), vec![failed("join-r", reserved)]);
    // Nor a login already in the room.
    h.core.connect_edge(h.now, 201, "rtmp-201");
    h.cmd(
        201,
        Command::Connect(ConnectInfo {
            login: Some("Room system 2".into()),
            ..Default::default()
        }),
    );
    let out = h.join(201, "r");
    assert_eq!(
        to(&out, 201),
        vec![failed("join-r", "Room already has user with such login")]
    );
    // An edge participant that has said nothing for long is not a silent namesake to
    // evict: a browser with its login is refused.
    h.core.connect_edge(h.now, 202, "rtmp-202");
    h.cmd(
        202,
        Command::Connect(ConnectInfo {
            login: Some("obs".into()),
            ..Default::default()
        }),
    );
    let out = h.join(202, "r");
    assert_eq!(to(&out, 202)[0], accepted("join-r"));
    h.advance(Duration::from_secs(600));
    h.connect(5, "obs");
    let out = h.join(5, "r");
    assert_eq!(
        to(&out, 5),
        vec![failed("join-r", "Room already has user with such login")]
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Close { session: 202, .. })));
}

#[test]
fn broadcast_chat_shares_one_text() {
    let mut h = Harness::in_room("r", &[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
    let big = "x".repeat(200_000);
    let out = h.cmd(1, chat("c1", "r", None, &big));
    let texts: Vec<Arc<str>> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                message:
                    ServerMessage::Room {
                        event: RoomEvent::Message { text, .. },
                        ..
                    },
                ..
            } => Some(Arc::clone(text)),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(texts.iter().all(|t| Arc::ptr_eq(t, &texts[0])), "one copy");
    assert_eq!(&*texts[0], big.as_str());
    assert_eq!(to(&out, 1), vec![accepted("c1")]);
}

/// The dependency goes config → rooms only: `Config::core()` builds `CoreConfig`.
#[test]
fn the_room_core_does_not_know_the_configuration_file() {
    let files = [
        ("mod.rs", include_str!("mod.rs")),
        ("messages.rs", include_str!("messages.rs")),
        ("room.rs", include_str!("room.rs")),
        ("session.rs", include_str!("session.rs")),
        ("stream.rs", include_str!("stream.rs")),
        ("tests.rs", include_str!("tests.rs")),
    ];
    let needle = concat!("crate::", "config");
    for (name, text) in files {
        assert!(!text.contains(needle), "src/rooms/{name} uses {needle}");
    }
}

/// What is recorded: a live stream published with `record: true`, and every live stream
/// of a room created by a join with `record: true` (which `RoomCreated` announces); a
/// stream is recorded once it is up, never before.
#[test]
fn recording_is_asked_for_live_streams_that_want_it() {
    fn records(out: &[Output]) -> Vec<(String, String, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Record {
                    stream,
                    login,
                    whole_room,
                    ..
                } => Some((stream.clone(), login.clone(), *whole_room)),
                _ => None,
            })
            .collect()
    }
    let mut h = Harness::default();
    h.connect(1, "alice");
    h.connect(2, "bob");
    let out = h.join(1, "plain");
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RoomCreated { record: false, .. })));
    assert!(records(&h.publish_live(1, "plain", "m1", "plain-alice")).is_empty());
    let mut wanted = req("m2", "plain-alice-2", "plain");
    wanted.record = true;
    let out = h.cmd(1, Command::Publish(wanted));
    assert!(records(&out).is_empty(), "not before the media is up");
    let out = h.media(MediaEvent::Up {
        session: 1,
        media_session_id: "m2".into(),
    });
    assert_eq!(
        records(&out),
        [("plain-alice-2".to_string(), "alice".to_string(), false)]
    );

    let out = h.cmd(
        2,
        Command::Join {
            operation_id: "j".into(),
            room: "board".into(),
            record: true,
        },
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::RoomCreated { record: true, room } if room == "board")));
    assert_eq!(
        records(&h.publish_live(2, "board", "m3", "board-bob")),
        [("board-bob".to_string(), "bob".to_string(), true)]
    );
    h.join(1, "board");
    assert_eq!(
        records(&h.publish_live(1, "board", "m4", "board-alice")),
        [("board-alice".to_string(), "alice".to_string(), true)],
        "a later joiner's stream is recorded with the room"
    );
    h.check_invariants();
}

// ----- operators: moderation, the admin API's commands, notices -------------------

fn moderate(op: &str, room: &str, login: &str, action: Moderation) -> Command {
    Command::Moderate {
        operation_id: op.into(),
        room: room.into(),
        login: login.into(),
        action,
    }
}

fn mute_video(on: bool) -> Moderation {
    Moderation::Mute {
        audio: None,
        video: Some(on),
    }
}

fn stream_events(out: &[Output], id: SessionId) -> Vec<(String, &'static str, Option<String>)> {
    to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::StreamEvent {
                media_session_id,
                kind,
                by,
                ..
            } => Some((media_session_id, kind, by)),
            _ => None,
        })
        .collect()
}

fn notices(out: &[Output]) -> Vec<Notice> {
    out.iter()
        .filter_map(|o| match o {
            Output::Notice(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// alice (1) created "r"; bob (2) publishes "r-bob" live; carol (3) plays it.
fn moderated_room() -> Harness {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob"), (3, "carol")]);
    h.publish_live(2, "r", "pub-b", "r-bob");
    h.cmd(3, Command::Play(req("play-c", "r-bob", "r")));
    h.media(MediaEvent::Up {
        session: 3,
        media_session_id: "play-c".into(),
    });
    h
}

#[test]
fn the_creator_mutes_and_everyone_concerned_is_told() {
    let mut h = moderated_room();
    let out = h.cmd(1, moderate("m1", "r", "bob", mute_video(true)));
    assert_eq!(to(&out, 1), vec![accepted("m1")]);
    assert!(out.iter().any(|o| *o
        == Output::Media(MediaRequest::Mute {
            stream: "r-bob".into(),
            audio: false,
            video: true
        })));
    let by = Some("alice".to_owned());
    assert_eq!(
        stream_events(&out, 3),
        vec![("play-c".into(), "videoMuted", by.clone())]
    );
    assert_eq!(
        stream_events(&out, 2),
        vec![("pub-b".into(), "videoMuted", by.clone())]
    );
    // Muting again changes nothing and tells nobody.
    let out = h.cmd(1, moderate("m2", "r", "bob", mute_video(true)));
    assert_eq!(to(&out, 1), vec![accepted("m2")]);
    assert!(stream_events(&out, 3).is_empty());
    let snap = h.core.snapshot();
    let bob = &snap.rooms[0].members[1];
    assert!(bob.muted_video && !bob.muted_audio);
    assert!(snap.streams[0].muted_video);
    assert!(snap.rooms[0].members[0].moderator && !bob.moderator);
    // Unmute.
    let out = h.cmd(1, moderate("m3", "r", "bob", mute_video(false)));
    assert_eq!(
        stream_events(&out, 3),
        vec![("play-c".into(), "videoUnmuted", by)]
    );
    assert!(out.iter().any(|o| *o
        == Output::Media(MediaRequest::Mute {
            stream: "r-bob".into(),
            audio: false,
            video: false
        })));
    h.check_invariants();
}

#[test]
fn only_moderators_moderate_and_never_themselves() {
    let mut h = moderated_room();
    let out = h.cmd(2, moderate("m1", "r", "alice", Moderation::Kick));
    assert_eq!(
        to(&out, 2),
        vec![failed(
            "m1",
            "Restricted access: only the room's creator or a moderator may do this"
        )]
    );
    let out = h.cmd(1, moderate("m2", "r", "alice", mute_video(true)));
    assert_eq!(
        to(&out, 1),
        vec![failed("m2", "A moderator cannot kick or mute itself")]
    );
    let out = h.cmd(1, moderate("m3", "r", "nobody", Moderation::Kick));
    assert_eq!(
        to(&out, 1),
        vec![failed("m3", "Participant 'nobody' not found in room 'r'")]
    );
    let out = h.cmd(1, moderate("m4", "other", "bob", Moderation::Kick));
    assert_eq!(
        to(&out, 1),
        vec![failed("m4", "Not a member of room 'other'")]
    );
    // A token's moderator claim makes a non-creator a moderator.
    connect_with(
        &mut h,
        4,
        "dave",
        crate::auth::Access::Granted {
            rooms: crate::auth::Rooms::Any("*".into()),
            publish: true,
            moderator: true,
        },
    );
    h.join(4, "r");
    let out = h.cmd(4, moderate("m5", "r", "alice", mute_video(true)));
    assert_eq!(to(&out, 4), vec![accepted("m5")]);
}

#[test]
fn a_kick_closes_the_session_and_the_room_sees_left() {
    let mut h = moderated_room();
    let out = h.cmd(1, moderate("k1", "r", "bob", Moderation::Kick));
    assert!(out.contains(&Output::Close {
        session: 2,
        reason: CloseReason::Kicked
    }));
    assert_eq!(to(&out, 1).last(), Some(&accepted("k1")));
    assert!(events(&out, 1).contains(&RoomEvent::Left("bob".into())));
    assert!(events(&out, 3).contains(&RoomEvent::Left("bob".into())));
    // The player of bob's stream was stopped.
    assert!(statuses(&out, 3)
        .iter()
        .any(|(s, _)| *s == StreamState::Stopped));
    assert!(notices(&out).contains(&Notice::Left {
        room: "r".into(),
        login: "bob".into()
    }));
    assert_eq!(
        h.core.kick(h.now, "r", "bob"),
        Err(AdminError::NotFound(
            "Participant 'bob' not found in room 'r'".into()
        ))
    );
    assert_eq!(
        h.core.kick(h.now, "nope", "bob"),
        Err(AdminError::NotFound("Room 'nope' not found".into()))
    );
    h.check_invariants();
}

#[test]
fn a_muted_member_publishes_muted_and_late_players_are_told() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob"), (3, "carol")]);
    let member = h
        .core
        .mute("r", "bob", Some(true), None, None)
        .expect("mute");
    assert!(member.muted_audio && !member.muted_video);
    let out = h.publish_live(2, "r", "pub-b", "r-bob");
    assert!(out.iter().any(|o| *o
        == Output::Media(MediaRequest::Mute {
            stream: "r-bob".into(),
            audio: true,
            video: false
        })));
    h.cmd(3, Command::Play(req("play-c", "r-bob", "r")));
    let out = h.media(MediaEvent::Up {
        session: 3,
        media_session_id: "play-c".into(),
    });
    let msgs = to(&out, 3);
    assert!(
        matches!(&msgs[..], [ServerMessage::StreamStatus(s), ServerMessage::StreamEvent { kind: "audioMuted", .. }] if s.status == StreamState::Playing),
        "{msgs:?}"
    );
    // The publisher's own mute notice (the SDK's sendStreamEvent) reaches its players.
    let out = h.cmd(
        2,
        Command::StreamEvent {
            media_session_id: "pub-b".into(),
            kind: "videoMuted".into(),
        },
    );
    assert_eq!(
        stream_events(&out, 3),
        vec![("play-c".into(), "videoMuted", None)]
    );
    assert!(stream_events(&out, 2).is_empty());
    let out = h.cmd(
        2,
        Command::StreamEvent {
            media_session_id: "pub-b".into(),
            kind: "data".into(),
        },
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn closing_a_room_closes_its_members_and_finalizes_it() {
    let mut h = moderated_room();
    h.connect(4, "dave");
    h.join(4, "elsewhere");
    h.drain();
    h.core.close_room(h.now, "r").expect("close");
    let out = h.drain();
    for s in [1, 2, 3] {
        assert!(
            out.contains(&Output::Close {
                session: s,
                reason: CloseReason::RoomClosed
            }),
            "{s}: {out:?}"
        );
    }
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Close { session: 4, .. })));
    assert_eq!(finalized(&out), vec!["r".to_owned()]);
    let snap = h.core.snapshot();
    assert_eq!(snap.rooms.len(), 1);
    assert_eq!(snap.rooms[0].name, "elsewhere");
    assert!(snap.streams.is_empty());
    assert_eq!(
        h.core.close_room(h.now, "r"),
        Err(AdminError::NotFound("Room 'r' not found".into()))
    );
    h.check_invariants();
}

#[test]
fn notices_follow_the_meeting() {
    let mut h = Harness::default();
    h.connect(1, "alice");
    h.connect(2, "bob");
    let mut all = notices(&h.join(1, "r"));
    all.extend(notices(&h.join(2, "r")));
    all.extend(notices(&h.publish_live(2, "r", "p", "r-bob")));
    all.extend(notices(&h.cmd(
        2,
        Command::Unpublish(StreamRef {
            media_session_id: "p".into(),
            name: None,
        }),
    )));
    all.extend(notices(&h.publish_live(2, "r", "p2", "r-bob-2")));
    all.extend(notices(&h.disconnect(2)));
    all.extend(notices(&h.leave(1, "r")));
    let (r, a, b) = ("r".to_owned(), "alice".to_owned(), "bob".to_owned());
    assert_eq!(
        all,
        vec![
            Notice::Joined {
                room: r.clone(),
                login: a.clone()
            },
            Notice::Joined {
                room: r.clone(),
                login: b.clone()
            },
            Notice::Published {
                room: r.clone(),
                login: b.clone(),
                stream: "r-bob".into()
            },
            Notice::Unpublished {
                room: r.clone(),
                login: b.clone(),
                stream: "r-bob".into()
            },
            Notice::Published {
                room: r.clone(),
                login: b.clone(),
                stream: "r-bob-2".into()
            },
            Notice::Failed {
                room: r.clone(),
                login: b.clone(),
                stream: "r-bob-2".into(),
                info: "The publisher vanished".into()
            },
            Notice::Left {
                room: r.clone(),
                login: b
            },
            Notice::Left { room: r, login: a },
        ]
    );
}

#[test]
fn recording_starts_and_stops_at_run_time() {
    let mut h = moderated_room();
    h.core.record_stream("r-bob", true).expect("record");
    let out = h.drain();
    assert_eq!(
        out,
        vec![Output::Record {
            stream: "r-bob".into(),
            room: "r".into(),
            login: "bob".into(),
            whole_room: false
        }]
    );
    assert!(h.core.snapshot().streams[0].recording);
    // Asking again changes nothing.
    h.core.record_stream("r-bob", true).expect("record");
    assert!(h.drain().is_empty());
    h.core.record_stream("r-bob", false).expect("stop");
    assert_eq!(
        h.drain(),
        vec![Output::StopRecording {
            stream: "r-bob".into()
        }]
    );
    assert_eq!(
        h.core.record_stream("nope", true),
        Err(AdminError::NotFound("Stream 'nope' not found".into()))
    );
    // The whole room.
    h.core.record_room("r", true).expect("room");
    let out = h.drain();
    assert_eq!(
        out,
        vec![
            Output::RoomRecording {
                room: "r".into(),
                on: true
            },
            Output::Record {
                stream: "r-bob".into(),
                room: "r".into(),
                login: "bob".into(),
                whole_room: true
            }
        ]
    );
    assert!(matches!(
        h.core.record_stream("r-bob", false),
        Err(AdminError::Conflict(_))
    ));
    h.core.record_room("r", false).expect("room off");
    assert_eq!(
        h.drain(),
        vec![
            Output::RoomRecording {
                room: "r".into(),
                on: false
            },
            Output::StopRecording {
                stream: "r-bob".into()
            }
        ]
    );
}

#[test]
fn an_ended_stream_stops_its_players() {
    let mut h = moderated_room();
    h.core.end_stream("r-bob").expect("end");
    let out = h.drain();
    assert_eq!(
        statuses(&out, 2),
        vec![(
            StreamState::Unpublished,
            "Stopped by the administrator".into()
        )]
    );
    assert_eq!(
        statuses(&out, 3),
        vec![(StreamState::Stopped, "Stopped by the administrator".into())]
    );
    assert!(events(&out, 1).contains(&RoomEvent::Unpublished {
        login: "bob".into(),
        name: "r-bob".into()
    }));
    assert!(h.core.end_stream("r-bob").is_err());
}

#[test]
fn the_device_is_not_kicked_but_leaves_a_closed_room() {
    let mut h = Harness::default();
    h.core.connect_local(h.now, 0, "device");
    h.cmd(
        0,
        Command::Connect(ConnectInfo {
            login: Some("Room system".into()),
            ..Default::default()
        }),
    );
    h.connect(1, "alice");
    h.join(0, "r");
    h.join(1, "r");
    h.drain();
    let snap = h.core.snapshot();
    assert_eq!(snap.rooms[0].members[0].kind, SourceKind::Device);
    assert_eq!(snap.rooms[0].members[1].kind, SourceKind::WebRtc);
    assert!(matches!(
        h.core.kick(h.now, "r", "Room system"),
        Err(AdminError::Conflict(_))
    ));
    h.core.close_room(h.now, "r").expect("close");
    let out = h.drain();
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Close { session: 0, .. })));
    assert_eq!(finalized(&out), vec!["r".to_owned()]);
    // The device's session lives on: it may join again (its policy decides).
    let out = h.join(0, "r");
    assert_eq!(to(&out, 0).first(), Some(&accepted("join-r")));
}

#[test]
fn a_layer_wish_of_a_play_goes_to_the_media_engine_and_others_are_refused() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.publish_live(1, "r", "pub-a", "r-alice");
    h.cmd(2, Command::Play(req("play-b", "r-alice", "r")));
    let layer = |op: &str, msid: &str| Command::SetLayer {
        operation_id: op.into(),
        media_session_id: msid.into(),
        layer: VideoLayer::Low,
    };
    let out = h.cmd(2, layer("l1", "play-b"));
    assert!(out.iter().any(|o| *o
        == Output::Media(MediaRequest::SetLayer {
            session: 2,
            media_session_id: "play-b".into(),
            layer: VideoLayer::Low
        })));
    assert_eq!(to(&out, 2), vec![accepted("l1")]);
    // Not a play of this session: refused, nothing asked of the engine.
    for (session, msid) in [(1, "pub-a"), (1, "play-b"), (2, "nope")] {
        let out = h.cmd(session, layer("l2", msid));
        assert!(
            !out.iter().any(|o| matches!(o, Output::Media(_))),
            "{out:?}"
        );
        assert_eq!(to(&out, session), vec![failed("l2", "No such play")]);
    }
}
fn speaking(stream: &str, talking: bool, loudness: u8) -> MediaEvent {
    MediaEvent::Speaking {
        stream: stream.into(),
        talking,
        loudness,
    }
}

fn speaker_notices(out: &[Output]) -> Vec<(String, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::ActiveSpeaker {
                room,
                login,
                stream,
            }) => Some((room.clone(), login.clone(), stream.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_active_speaker_is_told_to_every_member_on_changes_only() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob"), (3, "carol")]);
    h.publish_live(1, "r", "m-a", "r-alice");
    h.publish_live(2, "r", "m-b", "r-bob");
    // Another room's member hears nothing of it.
    h.connect(4, "dave");
    h.join(4, "other");
    h.drain();

    let alice = RoomEvent::ActiveSpeaker {
        login: "alice".into(),
        name: "r-alice".into(),
    };
    let out = h.media(speaking("r-alice", true, 110));
    for id in [1, 2, 3] {
        assert_eq!(events(&out, id), vec![alice.clone()], "session {id}");
    }
    assert!(events(&out, 4).is_empty());
    assert_eq!(
        speaker_notices(&out),
        vec![("r".into(), "alice".into(), "r-alice".into())]
    );
    // A refresh of the same speaker is no news.
    h.now += Duration::from_millis(300);
    let out = h.media(speaking("r-alice", true, 108));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        h.core
            .snapshot()
            .rooms
            .iter()
            .find(|r| r.name == "r")
            .unwrap()
            .active_speaker,
        Some(("alice".into(), "r-alice".into()))
    );

    // Bob talks too, alice then falls silent: bob, told on alice's report.
    h.now += Duration::from_millis(900);
    assert!(h.media(speaking("r-bob", true, 100)).is_empty());
    let out = h.media(speaking("r-alice", false, 20));
    let bob = RoomEvent::ActiveSpeaker {
        login: "bob".into(),
        name: "r-bob".into(),
    };
    for id in [1, 2, 3] {
        assert_eq!(events(&out, id), vec![bob.clone()], "session {id}");
    }
    assert_eq!(
        speaker_notices(&out),
        vec![("r".into(), "bob".into(), "r-bob".into())]
    );

    // A joiner hears the current speaker right after its STATE.
    h.connect(5, "erin");
    let out = h.join(5, "r");
    let got = events(&out, 5);
    assert!(matches!(got.first(), Some(RoomEvent::State(_))), "{got:?}");
    assert_eq!(got.get(1), Some(&bob), "{got:?}");

    // The speaker's stream ends: nobody is the speaker, and nothing is sent for it.
    let out = h.cmd(
        2,
        Command::Unpublish(StreamRef {
            media_session_id: "m-b".into(),
            name: Some("r-bob".into()),
        }),
    );
    assert!(speaker_notices(&out).is_empty());
    assert!(!events(&out, 1)
        .iter()
        .any(|e| matches!(e, RoomEvent::ActiveSpeaker { .. })));
    let room = h
        .core
        .snapshot()
        .rooms
        .into_iter()
        .find(|r| r.name == "r")
        .unwrap();
    assert_eq!(room.active_speaker, None);
    // Reports about an unknown or ended stream are ignored.
    h.now += Duration::from_secs(2);
    assert!(h.media(speaking("r-bob", true, 120)).is_empty());
    assert!(h.media(speaking("nope", true, 120)).is_empty());
    h.check_invariants();
}

#[test]
fn a_stream_not_up_yet_is_not_a_speaker() {
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.cmd(1, Command::Publish(req("m-a", "r-alice", "r")));
    h.drain();
    assert!(h.media(speaking("r-alice", true, 110)).is_empty());
    h.media(MediaEvent::Up {
        session: 1,
        media_session_id: "m-a".into(),
    });
    let out = h.media(speaking("r-alice", true, 110));
    assert_eq!(events(&out, 2).len(), 1, "{out:?}");
}

#[test]
fn a_member_muted_by_a_moderator_is_not_the_speaker() {
    // alice created the room: she may mute bob.
    let mut h = Harness::in_room("r", &[(1, "alice"), (2, "bob")]);
    h.publish_live(2, "r", "m-b", "r-bob");
    let out = h.cmd(
        1,
        Command::Moderate {
            operation_id: "mute".into(),
            room: "r".into(),
            login: "bob".into(),
            action: Moderation::Mute {
                audio: Some(true),
                video: None,
            },
        },
    );
    assert!(to(&out, 1).contains(&accepted("mute")), "{out:?}");
    assert!(h.media(speaking("r-bob", true, 120)).is_empty());
    assert_eq!(h.core.snapshot().rooms[0].active_speaker, None);
}
