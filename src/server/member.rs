//! A member of the room core without a WebSocket: the one mechanism behind a WHIP/WHEP
//! resource (`server::whip`) and an RTMP publisher or player (`server::rtmp_edge`).
//!
//! The edge connects a session (`ToCore::Connect`, or `ToCore::ConnectLocal` with the
//! named media source or sink of a local participant), sends the commands a browser
//! would, reads the session's messages (`next` answers the core's pings), joins a room
//! (`join`: `connection` + the join, confirmed under `JOIN_TIMEOUT`) and at the end
//! leaves it (`leave`: a stream ended first, the leave confirmed under
//! `LEAVE_TIMEOUT`) and disconnects. A member dropped on the way (an HTTP request or
//! an RTMP handler cancelled) disconnects its session: a socket-less session must never
//! be left behind.
//!
//! Why something failed is the core's text (`Closed`, `JoinError`): each edge maps it
//! to its own protocol (HTTP statuses, RTMP refusals).

use std::time::Duration;

use log::{info, warn};
use tokio::sync::{mpsc, oneshot};

use super::driver::ToCore;
use crate::logging::escaped;
use crate::rooms::{CloseReason, Command, ConnectInfo, ServerMessage, SessionId};

/// How long the room core may take to answer the connection and the join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the room core may take to confirm a leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The reason when the room core is gone (or going).
const STOPPING: &str = "The service is stopping";

/// How the session is connected to the room core.
pub(crate) enum Link {
    /// Like a socket's session (pinged, rate limited).
    Remote,
    /// A local participant of another edge whose media endpoint is `source` (a source
    /// or a sink of the media engine); what a source delivers goes to `changed`
    /// (audio, video).
    Local {
        source: String,
        changed: mpsc::Sender<(bool, bool)>,
    },
}

/// The session is gone: closed by the room core (with its reason) or the core is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed(pub Option<CloseReason>);

impl Closed {
    /// Why, as a refusal's text.
    pub fn text(self) -> &'static str {
        self.0.map_or(STOPPING, CloseReason::text)
    }
}

/// Why a join did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// The room core refused it (the join's failed reply, or a `fail`): its reason.
    Refused(String),
    /// The service cannot take it now (stopping, the session closed, no answer in time).
    Unavailable(String),
}

impl JoinError {
    pub fn reason(&self) -> &str {
        match self {
            JoinError::Refused(r) | JoinError::Unavailable(r) => r,
        }
    }

    pub fn into_reason(self) -> String {
        match self {
            JoinError::Refused(r) | JoinError::Unavailable(r) => r,
        }
    }
}

/// A socket-less session of the room core: disconnected on drop unless it ended.
pub(crate) struct Member {
    /// Who it is in log lines (client strings escaped).
    pub who: String,
    pub session: SessionId,
    /// The room joined, left by `leave`.
    room: Option<String>,
    /// The edge's label in operation ids (`<label>-join`, `<label>-leave`).
    label: &'static str,
    to_core: mpsc::Sender<ToCore>,
    outbound: mpsc::Receiver<ServerMessage>,
    close: Option<oneshot::Receiver<CloseReason>>,
    /// Armed until the session is disconnected (or closed by the core).
    connected: bool,
    join_timeout: Duration,
    leave_timeout: Duration,
    /// What must live as long as the session (an edge's admission slot).
    _held: Box<dyn Send + Sync>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.connected {
            return;
        }
        // Cancelled on the way: the session must not be left behind.
        let session = self.session;
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.to_core.try_send(ToCore::Disconnect { session })
        {
            let to_core = self.to_core.clone();
            tokio::spawn(async move {
                let _ = to_core.send(ToCore::Disconnect { session }).await;
            });
        }
    }
}

impl Member {
    /// Connects `session` to the room core (its messages queued up to `queue`);
    /// `Closed(None)` if the core is gone.
    pub async fn connect(
        to_core: &mpsc::Sender<ToCore>,
        session: SessionId,
        who: String,
        label: &'static str,
        link: Link,
        queue: usize,
    ) -> Result<Member, Closed> {
        let (outbound_tx, outbound) = mpsc::channel(queue);
        let (close_tx, close) = oneshot::channel();
        let connect = match link {
            Link::Remote => ToCore::Connect {
                session,
                outbound: outbound_tx,
                close: close_tx,
            },
            Link::Local { source, changed } => ToCore::ConnectLocal {
                session,
                source,
                outbound: outbound_tx,
                close: close_tx,
                source_changed: changed,
            },
        };
        to_core.send(connect).await.map_err(|_| Closed(None))?;
        Ok(Member {
            who,
            session,
            room: None,
            label,
            to_core: to_core.clone(),
            outbound,
            close: Some(close),
            connected: true,
            join_timeout: JOIN_TIMEOUT,
            leave_timeout: LEAVE_TIMEOUT,
            _held: Box::new(()),
        })
    }

    /// Keeps `held` alive as long as the member.
    pub fn holding(mut self, held: impl Send + Sync + 'static) -> Member {
        self._held = Box::new(held);
        self
    }

    /// Sends a command of the session; false if the core is gone.
    pub async fn command(&self, command: Command) -> bool {
        self.to_core
            .send(ToCore::Command {
                session: self.session,
                command,
            })
            .await
            .is_ok()
    }

    /// The next message for the session; the core's pings are answered here. Once
    /// `Closed`, the session is gone: nothing is left to disconnect.
    pub async fn next(&mut self) -> Result<ServerMessage, Closed> {
        loop {
            let message = match &mut self.close {
                Some(close) => tokio::select! {
                    m = self.outbound.recv() => m,
                    reason = close => {
                        self.close = None;
                        return Err(self.closed(reason.ok()));
                    }
                },
                None => self.outbound.recv().await,
            };
            match message {
                Some(ServerMessage::Ping) => {
                    if !self.command(Command::Pong).await {
                        return Err(self.closed(None));
                    }
                }
                Some(m) => return Ok(m),
                None => {
                    // The core dropped the queue: its reason, if it gave one.
                    let reason = self.close.take().and_then(|mut c| c.try_recv().ok());
                    return Err(self.closed(reason));
                }
            }
        }
    }

    fn closed(&mut self, reason: Option<CloseReason>) -> Closed {
        self.connected = false;
        Closed(reason)
    }

    /// `connection` with `info`, then the join of `room`, confirmed by the core (both
    /// outcomes logged).
    pub async fn join(&mut self, info: ConnectInfo, room: &str) -> Result<(), JoinError> {
        let operation = format!("{}-join", self.label);
        let join = Command::Join {
            operation_id: operation.clone(),
            room: room.to_owned(),
            record: false,
        };
        if !(self.command(Command::Connect(info)).await && self.command(join).await) {
            return Err(JoinError::Unavailable(STOPPING.into()));
        }
        let replied = tokio::time::timeout(self.join_timeout, async {
            loop {
                match self.next().await {
                    Ok(ServerMessage::DataStatus {
                        operation_id,
                        result,
                    }) if operation_id == operation => return result.map_err(JoinError::Refused),
                    Ok(ServerMessage::Fail { info, .. }) => return Err(JoinError::Refused(info)),
                    Ok(_) => {}
                    Err(closed) => return Err(JoinError::Unavailable(closed.text().into())),
                }
            }
        })
        .await;
        let result = replied.unwrap_or_else(|_| {
            Err(JoinError::Unavailable(
                "The room service did not answer in time".into(),
            ))
        });
        match &result {
            Ok(()) => {
                self.room = Some(room.to_owned());
                info!("{}: joined as session {}", self.who, self.session);
            }
            Err(e) => info!("{}: cannot join: {}", self.who, escaped(e.reason())),
        }
        result
    }

    /// Ends the stream (`end`: an unpublish or a stop), leaves the room (the leave is
    /// confirmed, so the room has seen it) and disconnects the session.
    pub async fn leave(&mut self, end: Option<Command>) {
        if let Some(command) = end {
            self.command(command).await;
        }
        if let Some(room) = self.room.take() {
            let operation = format!("{}-leave", self.label);
            let leave = Command::Leave {
                operation_id: operation.clone(),
                room,
            };
            if self.command(leave).await {
                let confirmed = tokio::time::timeout(self.leave_timeout, async {
                    loop {
                        match self.next().await {
                            Ok(ServerMessage::DataStatus { operation_id, .. })
                                if operation_id == operation =>
                            {
                                return
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
                .await;
                if confirmed.is_err() {
                    warn!("{}: the room service did not confirm the leave", self.who);
                }
            }
        }
        let _ = self
            .to_core
            .send(ToCore::Disconnect {
                session: self.session,
            })
            .await;
        self.connected = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member of a fake core: the receiver stands in for the room core.
    async fn connected() -> (
        Member,
        mpsc::Receiver<ToCore>,
        mpsc::Sender<ServerMessage>,
        oneshot::Sender<CloseReason>,
    ) {
        let (to_core, mut core) = mpsc::channel(16);
        let member = Member::connect(&to_core, 7, "test member".into(), "test", Link::Remote, 8)
            .await
            .expect("the fake core is there");
        let Some(ToCore::Connect {
            session: 7,
            outbound,
            close,
        }) = core.recv().await
        else {
            panic!("not a Connect of session 7");
        };
        (member, core, outbound, close)
    }

    /// The next command of session 7 the fake core got.
    async fn command(core: &mut mpsc::Receiver<ToCore>) -> Command {
        match core.recv().await {
            Some(ToCore::Command {
                session: 7,
                command,
            }) => command,
            _ => panic!("not a command of session 7"),
        }
    }

    /// Takes the `connection` and the join; the join's operation id.
    async fn joining(core: &mut mpsc::Receiver<ToCore>) -> String {
        assert!(matches!(command(core).await, Command::Connect(_)));
        match command(core).await {
            Command::Join {
                operation_id, room, ..
            } if room == "stage" => operation_id,
            other => panic!("not the join of stage: {other:?}"),
        }
    }

    fn status(operation_id: &str, result: Result<(), String>) -> ServerMessage {
        ServerMessage::DataStatus {
            operation_id: operation_id.into(),
            result,
        }
    }

    #[tokio::test]
    async fn a_join_is_confirmed_by_its_reply() {
        let (mut member, mut core, outbound, _close) = connected().await;
        let fake = tokio::spawn(async move {
            let operation = joining(&mut core).await;
            assert_eq!(operation, "test-join");
            // Someone else's reply first: not the join's.
            outbound.send(status("other", Err("no".into()))).await.ok();
            outbound.send(status(&operation, Ok(()))).await.ok();
            (core, outbound)
        });
        let joined = member.join(ConnectInfo::default(), "stage").await;
        assert_eq!(joined, Ok(()));
        assert_eq!(member.room.as_deref(), Some("stage"));
        let _keep = fake.await.expect("fake core");
    }

    #[tokio::test]
    async fn a_refused_join_gives_the_core_reason() {
        let (mut member, mut core, outbound, _close) = connected().await;
        tokio::spawn(async move {
            let operation = joining(&mut core).await;
            let why = "Room is full: at most 16 participants";
            outbound
                .send(status(&operation, Err(why.into())))
                .await
                .ok();
            core
        });
        let joined = member.join(ConnectInfo::default(), "stage").await;
        assert_eq!(
            joined,
            Err(JoinError::Refused(
                "Room is full: at most 16 participants".into()
            ))
        );
        assert_eq!(member.room, None);
    }

    #[tokio::test]
    async fn a_fail_or_a_close_ends_the_join() {
        let (mut member, mut core, outbound, _close) = connected().await;
        tokio::spawn(async move {
            joining(&mut core).await;
            let fail = ServerMessage::Fail {
                api_method: "sendData".into(),
                id: None,
                info: "Malformed".into(),
            };
            outbound.send(fail).await.ok();
            core
        });
        let joined = member.join(ConnectInfo::default(), "stage").await;
        assert_eq!(joined, Err(JoinError::Refused("Malformed".into())));

        let (mut member, mut core, _outbound, close) = connected().await;
        tokio::spawn(async move {
            joining(&mut core).await;
            close.send(CloseReason::Kicked).ok();
            core
        });
        let joined = member.join(ConnectInfo::default(), "stage").await;
        assert_eq!(
            joined,
            Err(JoinError::Unavailable(
                CloseReason::Kicked.text().to_string()
            ))
        );
        // Closed by the core: nothing left to disconnect.
        assert!(!member.connected);
    }

    #[tokio::test]
    async fn a_join_without_an_answer_times_out() {
        let (mut member, mut core, _outbound, _close) = connected().await;
        member.join_timeout = Duration::from_millis(50);
        let joined = member.join(ConnectInfo::default(), "stage").await;
        assert_eq!(
            joined.map_err(JoinError::into_reason),
            Err("The room service did not answer in time".to_string())
        );
        joining(&mut core).await;
    }

    #[tokio::test]
    async fn pings_are_answered_with_pongs() {
        let (mut member, mut core, outbound, _close) = connected().await;
        outbound.send(ServerMessage::Ping).await.ok();
        outbound.send(ServerMessage::Pong).await.ok();
        // The ping is answered, not returned: the next message is.
        assert_eq!(member.next().await, Ok(ServerMessage::Pong));
        assert!(matches!(command(&mut core).await, Command::Pong));
    }

    #[tokio::test]
    async fn a_closed_session_gives_the_core_reason() {
        let (mut member, _core, outbound, close) = connected().await;
        close.send(CloseReason::RoomClosed).ok();
        drop(outbound);
        assert_eq!(
            member.next().await,
            Err(Closed(Some(CloseReason::RoomClosed)))
        );
        assert_eq!(Closed(None).text(), STOPPING);
    }

    #[tokio::test]
    async fn a_dropped_member_disconnects_its_session() {
        let (member, mut core, _outbound, _close) = connected().await;
        drop(member);
        assert!(matches!(
            core.recv().await,
            Some(ToCore::Disconnect { session: 7 })
        ));
    }

    #[tokio::test]
    async fn a_leave_waits_for_its_reply() {
        let (mut member, mut core, outbound, _close) = connected().await;
        member.room = Some("stage".into());
        let (confirm, confirmed) = oneshot::channel::<()>();
        let fake = tokio::spawn(async move {
            assert!(matches!(command(&mut core).await, Command::Unpublish(_)));
            let operation = match command(&mut core).await {
                Command::Leave {
                    operation_id, room, ..
                } if room == "stage" => operation_id,
                other => panic!("not the leave of stage: {other:?}"),
            };
            assert_eq!(operation, "test-leave");
            // The member waits for the reply: no Disconnect before it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(core.try_recv().is_err());
            outbound.send(ServerMessage::Ping).await.ok();
            assert!(matches!(command(&mut core).await, Command::Pong));
            outbound.send(status(&operation, Ok(()))).await.ok();
            assert!(matches!(
                core.recv().await,
                Some(ToCore::Disconnect { session: 7 })
            ));
            confirm.send(()).ok();
            core
        });
        let end = Command::Unpublish(crate::rooms::StreamRef {
            media_session_id: "m".into(),
            name: Some("stage-x".into()),
        });
        member.leave(Some(end)).await;
        assert!(!member.connected);
        assert_eq!(member.room, None);
        confirmed.await.expect("the leave was confirmed first");
        let mut core = fake.await.expect("fake core");
        drop(member);
        // Disconnected once: the drop sends nothing more.
        assert!(core.try_recv().is_err());
    }
}
