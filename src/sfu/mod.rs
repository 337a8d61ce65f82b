//! The WebRTC SFU: one UDP socket for every peer, ICE-lite, DTLS-SRTP through the
//! webrtc-rs Sans-I/O `rtc` crate, RTP forwarded from publishers to players without
//! decoding. The room core asks through `MediaRequest` and hears back through
//! `MediaEvent`; `task` is the I/O around the Sans-I/O `engine`.

pub mod codecs;
pub mod demux;
pub mod engine;
pub mod peer;
pub mod task;

pub use engine::{Engine, EngineConfig};
pub use task::{Sfu, SfuError};
