//! Recording (issue 12): stream recordings as fragmented MP4 written from a stream's RTP
//! without decoding, room recordings (a manifest of the room's streams on one timeline),
//! the offline mix of a finalized room, and the catalog the HTTP listing reads.
//!
//! - `catalog`: file names, sidecars (`RecordMeta`) and room manifests (`RoomManifest`).
//! - `fmp4`: a pure fragmented-MP4 writer (H.264, VP8, Opus; init segment, moof + mdat).
//! - `recorder`: one stream's RTP into fMP4 files on a writer thread (fsync per fragment).

pub mod catalog;
pub mod fmp4;
pub mod recorder;
