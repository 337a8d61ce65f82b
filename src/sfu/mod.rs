//! The WebRTC edge: one UDP socket for every peer, ICE-lite, DTLS-SRTP through the
//! webrtc-rs Sans-I/O `rtc` crate. Publish peers are sources and play peers sinks of
//! the stream core (`crate::media`), which forwards RTP without decoding. The room
//! core asks through `MediaRequest` and hears back through `MediaEvent`; `task` is the
//! I/O around the Sans-I/O `engine`.

pub mod audio_level;
pub mod codecs;
pub mod demux;
pub mod engine;
pub mod peer;
pub mod play_out;
pub mod send;
pub mod shard;
pub mod simulcast;
pub mod task;
pub mod tcp;

pub use engine::{Engine, EngineConfig};
pub use task::{Sfu, SfuError};
