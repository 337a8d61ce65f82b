//! The stream core, Sans-I/O and protocol-free: publications (one source each, the
//! tracks and codecs it carries), the sinks attached to each, RTP forwarding with each
//! sink's own numbering, and key-frame requests from sinks back to the source.
//!
//! Every edge meets media here the same way. A source (a WebRTC publisher peer, the
//! device camera and microphone, next an RTMP publisher) implements `Source` and is
//! registered with `Streams::add_source` (it feeds one publication and ends with it)
//! or `add_named_source` (it lives on and feeds publications opened with
//! `publish_from`); its packets go in through `Streams::packet`. A sink (a WebRTC
//! player, next an RTMP player or push, a recorder) implements `Sink` and is attached
//! with `Streams::attach`. Adding one is implementing the trait, not editing this
//! module. RTP packets (`rtc::rtp::Packet`) are the unit of media throughout.
//!
//! - `codec`: kinds, codec families, the codecs of a stream.
//! - `numbering`: a sink's payload type, SSRC, sequence numbers and timestamps.
//! - `picture`: key-frame starts and picture sizes in H.264 and VP8 payloads.
//! - `layers`: simulcast layers, a sink's choice among them and its switch at a key frame.
//! - `bandwidth`: a player's bandwidth estimate (REMB, loss) capping its layer.
//! - `streams`: `Streams`, the `Source` and `Sink` traits, events, mutes, statistics.
//! - `speaking`: RFC 6464 audio levels, who is talking, the dominant speaker of a room.

pub mod bandwidth;
pub mod codec;
pub mod layers;
pub mod numbering;
pub mod picture;
pub mod speaking;
pub mod streams;

pub use bandwidth::Estimator;
pub use codec::{Chosen, Codec, Family, Kind};
pub use layers::{Preference, SinkLayer};
pub use numbering::Renumber;
pub use streams::{
    Delivery, Event, KeyFrameFlag, Numbering, Sink, SinkId, Source, SourceId, Stats, StreamError,
    Streams, Tally,
};

#[cfg(test)]
mod tests {
    /// The stream core stays protocol- and runtime-free: no async runtime, no edge, no core
    /// of another layer (the needles are split so this file does not match itself).
    #[test]
    fn the_stream_core_depends_on_no_edge() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("codec.rs", include_str!("codec.rs")),
            ("layers.rs", include_str!("layers.rs")),
            ("bandwidth.rs", include_str!("bandwidth.rs")),
            ("numbering.rs", include_str!("numbering.rs")),
            ("picture.rs", include_str!("picture.rs")),
            ("streams.rs", include_str!("streams.rs")),
            ("speaking.rs", include_str!("speaking.rs")),
        ];
        let needles = [
            concat!("tok", "io"),
            concat!("crate", "::"),
            concat!("super::super::", "super"),
        ];
        for (name, text) in files {
            for needle in needles {
                assert!(!text.contains(needle), "src/media/{name} uses {needle}");
            }
        }
    }
}
