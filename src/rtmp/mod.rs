//! The RTMP edge: publishers (OBS, ffmpeg, encoders) as sources of a room's streams,
//! players and pushes as sinks.
//!
//! - `audio`: AAC → Opus through GStreamer for publishers' audio.
//! - `chunk`: a pure chunk-header scanner in front of rml_rtmp (message size, interleaving).
//! - `flv`: FLV tag bodies (H.264/AVCC, AAC) both ways, pure and fuzz-friendly.
//! - `url`: the room, login/stream, token and record flag of an RTMP URL.
//! - `media`: FLV H.264 into RTP through the device packetizer, timestamps, B-frames.
//! - `egress`: a room stream's RTP (H.264, Opus) into FLV tags for players and pushes.
//! - `server`: the tokio connection tasks around rml_rtmp's `ServerSession`.
//! - `client`: a publishing client around rml_rtmp's `ClientSession` (URL, redaction).
//! - `push`: a stream's tags sent to another RTMP server, reconnecting with backoff.

pub mod audio;
pub mod chunk;
pub mod client;
pub mod egress;
pub mod flv;
pub mod media;
pub mod push;
pub mod server;
pub mod url;
