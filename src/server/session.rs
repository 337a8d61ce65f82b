//! One WebSocket session: reads frames in order and hands them to the room core as
//! commands; writes what the core sends; closes with a reason when told to.

use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use super::{Shared, ToCore};
use crate::rooms::{CloseReason, Command, ServerMessage};
use crate::signalling::{parse_client_frame, render_server_message};

pub(crate) async fn run(socket: WebSocket, shared: Shared) {
    let _alive = shared.alive.clone();
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (outbound_tx, mut outbound) =
        mpsc::channel::<ServerMessage>(shared.config.signalling.outbound_queue);
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
    let (mut sink, mut stream) = socket.split();
    let mut event_id: u64 = 0;
    let limit = shared.config.signalling.max_message_bytes;

    // Why the loop ended: `Some(close frame)` when we close, `None` when the peer did.
    let close: Option<(u16, String)> = loop {
        tokio::select! {
            biased;
            Some(message) = outbound.recv() => {
                event_id += 1;
                let text = render_server_message(&message, event_id);
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break None;
                }
            }
            reason = &mut close_rx => {
                // Flush what the core queued before it decided to close.
                while let Ok(message) = outbound.try_recv() {
                    event_id += 1;
                    let text = render_server_message(&message, event_id);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                let reason = reason.unwrap_or(CloseReason::Shutdown);
                break Some((reason.code(), reason.text().to_owned()));
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
                                info!(login = info.login.as_deref().unwrap_or(""); "session {session}: {why}");
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
                if shared.to_core.send(ToCore::Command { session, command }).await.is_err() {
                    break Some((CloseReason::Shutdown.code(), CloseReason::Shutdown.text().into()));
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        debug!("session {session}: closing ({code} {reason})");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    }
    let _ = shared.to_core.send(ToCore::Disconnect { session }).await;
    debug!("session {session}: WebSocket closed");
}
