//! One WebSocket session: reads frames in order and hands them to the room core as
//! commands; writes what the core sends; closes with a reason when told to.
//!
//! The socket's two directions run apart so that a peer that stops reading cannot
//! hold the session: a writer task owns the sending half and writes one frame at a
//! time within `write_timeout_ms`; this task renders what the core queued as soon as
//! it arrives and counts the bytes waiting for the writer. Over `outbound_bytes`, or a
//! write that times out, and the session is closed as too slow. Once closed (by the
//! core, by the peer or as too slow) the task, the socket and every queued frame are
//! gone within [`CLOSE_GRACE`], whatever the peer does.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use super::listener::SessionGuard;
use super::{Shared, ToCore};
use crate::rooms::{CloseReason, Command, ServerMessage};
use crate::signalling::{parse_client_frame, render_server_message};

/// How long a closing session may spend flushing what was queued and its close frame.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// What the writer task reports back.
enum Written {
    /// One frame of this many bytes is on the socket.
    Frame(usize),
    /// The peer did not take a frame in time, or the socket failed.
    Failed(&'static str),
}

pub(crate) async fn run(socket: WebSocket, shared: Shared, guard: Option<SessionGuard>) {
    let _alive = shared.alive.clone();
    let Some(_guard) = guard else {
        refuse_busy_address(socket, &shared).await;
        return;
    };
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let signalling = &shared.config.signalling;
    let (outbound_tx, mut outbound) = mpsc::channel::<ServerMessage>(signalling.outbound_queue);
    let (close_tx, mut close_rx) = oneshot::channel::<CloseReason>();
    let connect = ToCore::Connect {
        session,
        outbound: outbound_tx,
        close: close_tx,
    };
    if shared.to_core.send(connect).await.is_err() {
        return; // shutting down
    }
    debug!("session {session}: WebSocket open");
    let (sink, mut stream) = socket.split();
    let write_timeout = Duration::from_millis(signalling.write_timeout_ms);
    let budget = signalling.outbound_bytes;
    let limit = signalling.max_message_bytes;
    let (to_writer, frames) = mpsc::unbounded_channel::<Message>();
    let (written_tx, mut written) = mpsc::unbounded_channel::<Written>();
    let writer = tokio::spawn(write_frames(sink, frames, written_tx, write_timeout));
    let mut event_id: u64 = 0;
    // Bytes handed to the writer and not yet written: at most `budget` (or one frame).
    let mut queued: usize = 0;

    // Why the loop ended: `Some(close frame)` when we close, `None` when the peer did.
    let close: Option<(u16, String)> = loop {
        // Not biased: a flood toward the client must not starve its own frames (pongs).
        tokio::select! {
            reason = &mut close_rx => {
                // Flush what the core queued before it decided to close.
                while let Ok(message) = outbound.try_recv() {
                    if let Some(reason) = crate::metrics::signalling::refusal(&message) {
                        shared.signalling_counters.refused(reason);
                    }
                    event_id += 1;
                    let text = render_server_message(&message, event_id);
                    let _ = to_writer.send(Message::Text(text.into()));
                }
                let reason = reason.unwrap_or(CloseReason::Shutdown);
                break Some((reason.code(), reason.text().to_owned()));
            }
            report = written.recv() => match report {
                Some(Written::Frame(n)) => queued = queued.saturating_sub(n),
                Some(Written::Failed(why)) => {
                    info!("session {session}: {why}, closing");
                    break Some((CloseReason::TooSlow.code(), CloseReason::TooSlow.text().into()));
                }
                None => break None,
            },
            Some(message) = outbound.recv() => {
                if let Some(reason) = crate::metrics::signalling::refusal(&message) {
                    shared.signalling_counters.refused(reason);
                }
                event_id += 1;
                let text = render_server_message(&message, event_id);
                // One frame always goes; beyond it the budget holds.
                if queued > 0 && queued + text.len() > budget {
                    info!(
                        "session {session}: {} bytes waiting for a client that does not read, closing",
                        queued + text.len()
                    );
                    break Some((CloseReason::TooSlow.code(), CloseReason::TooSlow.text().into()));
                }
                queued += text.len();
                let _ = to_writer.send(Message::Text(text.into()));
            }
            frame = stream.next() => {
                let command = match frame {
                    Some(Ok(Message::Text(text))) => match parse_client_frame(text.as_str()) {
                        Command::Connect(mut info) => {
                            info.access = shared
                                .authority
                                .check(info.login.as_deref(), info.token.as_deref());
                            if let crate::auth::Access::Refused(why) = &info.access {
                                // The reason, never the token.
                                let login = crate::logging::escaped(info.login.as_deref().unwrap_or(""));
                                info!(login:% = login; "session {session}: {login}: {why}");
                            }
                            Command::Connect(info)
                        }
                        other => other,
                    },
                    Some(Ok(Message::Binary(_))) => Command::Rejected(ServerMessage::Fail {
                        api_method: "unknown".into(),
                        id: None,
                        info: "Binary frames are not supported: send JSON text frames".into(),
                    }),
                    // Protocol-level ping/pong are answered by the WebSocket layer;
                    // they still prove the peer is alive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Command::Pong,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        info!("session {session}: WebSocket error: {text}");
                        if text.contains("too long") || text.contains("Space limit") {
                            break Some((1009, format!("Message too big: the limit is {limit} bytes")));
                        }
                        break Some((1002, "WebSocket protocol error".into()));
                    }
                };
                shared.signalling_counters.messages[crate::metrics::signalling::message_index(&command)].inc();
                if shared.to_core.send(ToCore::Command { session, command }).await.is_err() {
                    break Some((CloseReason::Shutdown.code(), CloseReason::Shutdown.text().into()));
                }
            }
        }
    };
    // The core forgets the session at once; nothing more is rendered for it.
    drop(outbound);
    let _ = shared.to_core.send(ToCore::Disconnect { session }).await;
    if let Some((code, reason)) = close {
        debug!("session {session}: closing ({code} {reason})");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = to_writer.send(Message::Close(Some(frame)));
    }
    drop(to_writer);
    // The writer ends once it wrote everything (the close frame last) or gives up;
    // a peer that reads nothing gets `CLOSE_GRACE`, then the socket is dropped.
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
        debug!("session {session}: peer did not take the close, socket dropped");
    }
    drop(stream);
    debug!("session {session}: WebSocket closed");
}

/// Writes frames in order, each within `timeout`; ends when the channel closes (after
/// a close frame, the socket is closed too) or a write fails.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::UnboundedReceiver<Message>,
    written: mpsc::UnboundedSender<Written>,
    timeout: Duration,
) {
    while let Some(frame) = frames.recv().await {
        let (bytes, closing) = match &frame {
            Message::Text(t) => (t.len(), false),
            Message::Close(_) => (0, true),
            _ => (0, false),
        };
        match tokio::time::timeout(timeout, sink.send(frame)).await {
            Ok(Ok(())) => {
                let _ = written.send(Written::Frame(bytes));
            }
            Ok(Err(_)) => {
                let _ = written.send(Written::Failed("WebSocket write failed"));
                return;
            }
            Err(_) => {
                let _ = written.send(Written::Failed("write timed out"));
                return;
            }
        }
        if closing {
            let _ = tokio::time::timeout(timeout, sink.close()).await;
            return;
        }
    }
}

/// A session over `[signalling] max_sessions_per_address`: closed at once with 1013.
async fn refuse_busy_address(mut socket: WebSocket, shared: &Shared) {
    let max = shared.config.signalling.max_sessions_per_address;
    let frame = CloseFrame {
        code: 1013,
        reason: format!("Too many sessions from your address (at most {max})").into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.send(Message::Close(Some(frame)))).await;
}
