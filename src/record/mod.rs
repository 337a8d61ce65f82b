//! Recording (issue 12): stream recordings as fragmented MP4 written from a stream's RTP
//! without decoding, room recordings (a manifest of the room's streams on one timeline),
//! the offline mix of a finalized room, and the catalog the HTTP listing reads.
//!
//! - `catalog`: file names, sidecars (`RecordMeta`) and room manifests (`RoomManifest`).
//! - `mix`: the offline room mix (ffmpeg grid + mixed audio) and its `Mixer` service.
//! - `hook`: bounded child processes and the room record hook run after a mix.

pub mod catalog;
pub mod hook;
pub mod mix;
