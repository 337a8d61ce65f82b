//! The Flashphoner WCS Room API edge: JSON frames in, room-core commands out, and
//! room-core messages back to JSON (ROOM_PROTOCOL.md). Nothing here keeps state.

pub mod wire;

pub use wire::{parse_client_frame, render_server_message};
