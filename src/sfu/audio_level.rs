//! RFC 6464 audio levels on the WebRTC edge: the publisher's offer names the id of
//! `urn:ietf:params:rtp-hdrext:ssrc-audio-level` in its audio m-line (Chrome, Firefox
//! and Safari offer it), the publish peer's media engine knows the extension so the
//! answer accepts it under that id, and each audio packet's level is read with
//! `crate::media::speaking::audio_level` under the same id.
//!
//! Play peers do not negotiate it: the stream core does not pass header extensions
//! on (they belong to the source's leg).

use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};

pub const URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Lets a publish peer's answer accept the extension for audio.
pub fn register(engine: &mut MediaEngine) -> Result<(), String> {
    engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: URI.into() },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(|e| format!("audio level extension: {e}"))
}

/// The id the offer gives the extension in its first audio m-line: `a=extmap:<id>`
/// or `a=extmap:<id>/<direction>`, 1..=255 (one-byte or two-byte headers). `None`
/// when it is not offered, not in an audio m-line, or the id is not a number.
pub fn offered_id(sdp: &str) -> Option<u8> {
    let mut in_audio = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                // Only the first audio m-line: a publish has one.
                return None;
            }
            in_audio = m.starts_with("audio ");
            continue;
        }
        if !in_audio {
            continue;
        }
        let Some(rest) = line.strip_prefix("a=extmap:") else {
            continue;
        };
        let mut words = rest.split_ascii_whitespace();
        let (Some(id), Some(uri)) = (words.next(), words.next()) else {
            continue;
        };
        if uri != URI {
            continue;
        }
        let id = id.split('/').next().unwrap_or_default();
        return id.parse::<u8>().ok().filter(|id| *id > 0);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::{MediaEvent, MediaRequest};
    use crate::sfu::{codecs, Engine, EngineConfig};
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    /// Chrome's publish offer with the extensions Chrome puts into its audio m-line.
    fn chrome_offer_with_levels() -> String {
        codecs::tests::CHROME_PUBLISH.replacen(
            "a=mid:0\r\n",
            "a=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
             a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
            1,
        )
    }

    #[test]
    fn the_offered_id_is_read_from_the_audio_m_line_only() {
        assert_eq!(offered_id(&chrome_offer_with_levels()), Some(1));
        assert_eq!(offered_id(codecs::tests::CHROME_PUBLISH), None);
        let video_only = codecs::tests::CHROME_PUBLISH.replacen(
            "a=mid:1\r\n",
            "a=mid:1\r\na=extmap:7 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
            1,
        );
        assert_eq!(offered_id(&video_only), None);
        let two_byte = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=extmap:200/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=on\r\n";
        assert_eq!(offered_id(two_byte), Some(200));
        for bad in ["0", "256", "x", "-1"] {
            let sdp = format!("v=0\r\nm=audio 9 RTP/AVP 0\r\na=extmap:{bad} {URI}\r\n");
            assert_eq!(offered_id(&sdp), None, "{bad}");
        }
    }

    #[test]
    fn a_publish_answer_accepts_the_extension_under_the_offered_id() {
        let cert = crate::sfu::task::certificate().unwrap();
        let mut e = Engine::new(
            EngineConfig {
                advertise: vec![IpAddr::from([127, 0, 0, 1])],
                port: 20_000,
                prefer_vp8: false,
                key_frame_interval: Duration::from_millis(500),
                silence_timeout: Duration::from_secs(15),
            },
            cert,
        );
        let publish = |sdp: String| MediaRequest::Publish {
            session: 1,
            media_session_id: "m".into(),
            stream: "r-a-1".into(),
            room: "r".into(),
            sdp,
            has_audio: true,
            has_video: true,
            audience: vec![],
        };
        e.request(Instant::now(), publish(chrome_offer_with_levels()));
        let answer = match e.poll_event() {
            Some(MediaEvent::Answer { sdp, .. }) => sdp,
            other => panic!("{other:?}"),
        };
        let audio = answer
            .split("m=video")
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            audio.contains(&format!("a=extmap:1 {URI}\r\n")),
            "the answer must accept the audio level extension:\n{answer}"
        );
        assert!(!answer.contains("abs-send-time"), "{answer}");
    }
}
