//! Recording (issue 12): stream recordings as fragmented MP4 written from a stream's RTP
//! without decoding, room recordings (a manifest of the room's streams on one timeline),
//! the offline mix of a finalized room, and the catalog the HTTP listing reads.
//!
//! - `catalog`: file names, sidecars (`RecordMeta`) and room manifests (`RoomManifest`).
//! - `fmp4`: a pure fragmented-MP4 writer (H.264, VP8, Opus; init segment, moof + mdat).
//! - `recorder`: one stream's RTP into fMP4 files on a writer thread (fsync per fragment).
//! - `live`: the names of the record files being written now (`Live`, shared with the
//!   recorder, the HTTP listing and retention).
//! - `listing`: the records of the directory (regular `*.mp4` files with a valid sidecar),
//!   newest first, as `GET /client/records` lists them.
//! - `retention`: `[records] max_age_days` / `max_total_mb`: the plan (pure) and the task
//!   that deletes finished records.
//! - `mix`: the offline room mix (ffmpeg grid + mixed audio) and its `Mixer` service.
//! - `hook`: bounded child processes and the room record hook run after a mix.

pub mod catalog;
pub mod fmp4;
pub mod hook;
pub mod listing;
pub mod live;
pub mod mix;
pub mod recorder;
pub mod retention;
