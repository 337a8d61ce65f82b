//! Huddle: the media service of a meeting-room device.
//!
//! - `rooms`: the Sans-I/O room core (sessions, rooms, members, streams, chat).
//! - `signalling`: the Flashphoner Room API wire format.
//! - `sfu`: the WebRTC SFU (one UDP port, forwarding without transcoding).
//! - `server`: the I/O edge (HTTP, WebSocket sessions, the task driving the core).
//! - `device`: the device's camera and microphone as a participant of its rooms.
//! - `rtmp`: the RTMP edge (publishers as sources, players as sinks).
//! - `config`, `logging`, `service` (sd_notify): the system edge.

pub mod audio;
pub mod auth;
pub mod config;
pub mod device;
pub mod events;
#[doc(hidden)]
pub mod fuzz;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod record;
pub mod rooms;
pub mod rtmp;
pub mod server;
pub mod service;
pub mod sfu;
pub mod signalling;

/// The version reported by `/health` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
