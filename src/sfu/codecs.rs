//! Which codecs a peer connection speaks: read from the browser's offer, chosen by
//! the room's preferences for a publisher, matched against the publisher's for a
//! player (no transcoding: a player that cannot decode it gets "No common codecs").
//!
//! The offer is read with a small line parser of our own (only `m=`, `a=rtpmap`,
//! `a=fmtp`, `a=fingerprint`), so the choice does not depend on how a library models
//! SDP and bad input is easy to reason about. An offer that cannot lead to a working
//! peer (no usable DTLS fingerprint, more m-lines than a call has) is refused here, at
//! once, instead of holding a peer until the ICE timeout.

pub use crate::media::codec::{Chosen, Codec, Family, Kind};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_VP8,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};

pub const NO_COMMON_CODECS: &str = "No common codecs";

/// Most m-lines an offer may have: a browser's publish or play has two (three with a
/// data channel); anything far beyond is not a call but a way to make work for us.
pub const MAX_M_LINES: usize = 16;

/// The hash functions a DTLS fingerprint may use (RFC 8122 §5, RFC 4572), with their
/// digest sizes in bytes.
const FINGERPRINT_HASHES: [(&str, usize); 5] = [
    ("sha-1", 20),
    ("sha-224", 28),
    ("sha-256", 32),
    ("sha-384", 48),
    ("sha-512", 64),
];

/// Checks the value of one `a=fingerprint:` line: `<hash> <hex pairs>` with a known
/// hash function and exactly its digest size. The error names the problem, with the
/// client's text escaped and bounded.
fn check_fingerprint(value: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "Invalid SDP offer: a=fingerprint {}: {why}",
            crate::logging::escaped(value)
        )
    };
    let mut words = value.split_ascii_whitespace();
    let (Some(hash), Some(hex), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad("expected <hash function> <hex bytes>"));
    };
    let Some(&(name, size)) = FINGERPRINT_HASHES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(hash))
    else {
        return Err(bad("unknown hash function"));
    };
    let mut bytes = 0usize;
    for pair in hex.split(':') {
        if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not colon-separated hex bytes"));
        }
        bytes += 1;
    }
    if bytes != size {
        return Err(bad(&format!("{name} needs {size} bytes, not {bytes}")));
    }
    Ok(())
}

/// One m-line of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    pub kind: Kind,
    /// Usable codecs in the offer's order (its preference).
    pub codecs: Vec<Codec>,
}

/// Reads the audio and video m-lines of an offer. Codecs Huddle does not forward
/// (rtx, red, VP9, AV1, ...) are skipped; other m-lines (data channels) are ignored.
pub fn parse_offer(sdp: &str) -> Result<Vec<OfferedMedia>, String> {
    if !sdp.starts_with("v=0") {
        return Err("Invalid SDP offer: it must start with v=0".into());
    }
    struct Raw {
        kind: Kind,
        order: Vec<u8>,
        rtpmap: Vec<(u8, String, u32, u16)>,
        fmtp: Vec<(u8, String)>,
    }
    let mut media: Vec<Raw> = Vec::new();
    let mut skipping = false;
    let mut m_lines = 0usize;
    let mut fingerprints = 0usize;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        // Session-level or media-level, every one must be usable.
        if let Some(value) = line.strip_prefix("a=fingerprint:") {
            check_fingerprint(value)?;
            fingerprints += 1;
            continue;
        }
        if let Some(m) = line.strip_prefix("m=") {
            m_lines += 1;
            if m_lines > MAX_M_LINES {
                return Err(format!(
                    "Invalid SDP offer: more than {MAX_M_LINES} m-lines"
                ));
            }
            let mut words = m.split_whitespace();
            let kind = match words.next() {
                Some("audio") => Some(Kind::Audio),
                Some("video") => Some(Kind::Video),
                _ => None,
            };
            skipping = kind.is_none();
            if let Some(kind) = kind {
                let order = words.skip(2).filter_map(|f| f.parse().ok()).collect();
                media.push(Raw {
                    kind,
                    order,
                    rtpmap: Vec::new(),
                    fmtp: Vec::new(),
                });
            }
            continue;
        }
        let Some(current) = media.last_mut().filter(|_| !skipping) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let (pt, encoding) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut parts = encoding.split('/');
            let name = parts.next().unwrap_or_default().to_owned();
            let rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
            let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            if let Ok(pt) = pt.parse() {
                current.rtpmap.push((pt, name, rate, channels));
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let (pt, params) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Ok(pt) = pt.parse() {
                current.fmtp.push((pt, params.to_owned()));
            }
        }
    }
    if media.is_empty() {
        return Err("Invalid SDP offer: no audio or video m-line".into());
    }
    if fingerprints == 0 {
        return Err("Invalid SDP offer: no a=fingerprint".into());
    }
    Ok(media
        .into_iter()
        .map(|raw| {
            let codecs = raw
                .order
                .iter()
                .filter_map(|pt| {
                    let (_, name, rate, channels) = raw.rtpmap.iter().find(|r| r.0 == *pt)?;
                    let fmtp = raw
                        .fmtp
                        .iter()
                        .find(|f| f.0 == *pt)
                        .map(|f| f.1.clone())
                        .unwrap_or_default();
                    let family = family_of(name, &fmtp)?;
                    (family.kind() == raw.kind).then_some(Codec {
                        family,
                        payload_type: *pt,
                        clock_rate: *rate,
                        channels: *channels,
                        fmtp,
                    })
                })
                .collect();
            OfferedMedia {
                kind: raw.kind,
                codecs,
            }
        })
        .collect())
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn family_of(name: &str, fmtp: &str) -> Option<Family> {
    match name.to_ascii_uppercase().as_str() {
        "H264" => {
            if fmtp_param(fmtp, "packetization-mode") != Some("1") {
                return None;
            }
            let plid = fmtp_param(fmtp, "profile-level-id").unwrap_or("42001f");
            let byte = |i: usize| {
                plid.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            };
            Some(Family::H264 {
                profile: byte(0)?,
                constraints: byte(2)?,
            })
        }
        "VP8" => Some(Family::Vp8),
        "OPUS" => Some(Family::Opus),
        "PCMU" => Some(Family::Pcmu),
        "PCMA" => Some(Family::Pcma),
        _ => None,
    }
}

/// Rank of a publisher's video codec under the room's preference; lower is better.
fn video_rank(f: Family, prefer_vp8: bool) -> u8 {
    let h264 = match f {
        _ if f.is_constrained_baseline() => 0,
        Family::H264 { profile: 66, .. } => 1,
        Family::H264 { profile: 77, .. } => 2,
        Family::H264 { .. } => 3,
        _ => 4,
    };
    match (f, prefer_vp8) {
        (Family::Vp8, true) => 0,
        (Family::Vp8, false) => 4,
        (_, true) => h264 + 1,
        (_, false) => h264,
    }
}

fn audio_rank(f: Family) -> u8 {
    match f {
        Family::Opus => 0,
        Family::Pcmu => 1,
        Family::Pcma => 2,
        _ => 3,
    }
}

/// A publisher's codecs: H.264 (constrained baseline first, the device camera, RTMP
/// and MP4 recording use it) unless `prefer_vp8`, then VP8; Opus, then G.711.
pub fn choose_publish(offer: &[OfferedMedia], prefer_vp8: bool) -> Result<Chosen, String> {
    let best = |kind: Kind, rank: &dyn Fn(Family) -> u8| {
        offer
            .iter()
            .filter(|m| m.kind == kind)
            .flat_map(|m| m.codecs.iter())
            .min_by_key(|c| rank(c.family))
            .cloned()
    };
    let chosen = Chosen {
        audio: best(Kind::Audio, &audio_rank),
        video: best(Kind::Video, &|f| video_rank(f, prefer_vp8)),
    };
    let wants = |k| offer.iter().any(|m| m.kind == k);
    if (wants(Kind::Video) && chosen.video.is_none())
        || (wants(Kind::Audio) && chosen.audio.is_none())
    {
        return Err(NO_COMMON_CODECS.into());
    }
    Ok(chosen)
}

/// Can a decoder for `player` decode a stream of `publisher`? For H.264 a decoder of
/// a higher profile (baseline < main < high) decodes the lower ones; browsers' encoders
/// never use the baseline-only tools (FMO, ASO) that would break that.
fn decodes(player: Family, publisher: Family) -> bool {
    let level = |profile: u8| match profile {
        66 => 0,
        77 => 1,
        _ => 2,
    };
    match (player, publisher) {
        (Family::H264 { profile: p, .. }, Family::H264 { profile: s, .. }) => level(p) >= level(s),
        (a, b) => a == b,
    }
}

/// A player's codecs: the publisher's, under the player's payload types.
pub fn choose_play(offer: &[OfferedMedia], published: &Chosen) -> Result<Chosen, String> {
    let pick = |kind: Kind| -> Result<Option<Codec>, String> {
        let Some(source) = published.get(kind) else {
            return Ok(None);
        };
        let mut candidates = offer
            .iter()
            .filter(|m| m.kind == kind)
            .flat_map(|m| m.codecs.iter())
            .filter(|c| decodes(c.family, source.family));
        let exact = candidates.clone().find(|c| c.family == source.family);
        match exact.or_else(|| candidates.next()) {
            Some(c) => Ok(Some(c.clone())),
            None => Err(NO_COMMON_CODECS.into()),
        }
    };
    Ok(Chosen {
        audio: pick(Kind::Audio)?,
        video: pick(Kind::Video)?,
    })
}

/// `chosen` plus, for each kind it lacks, the first codec the offer has of that kind:
/// negotiated (so the m-line stays in the bundle) but never sent.
pub fn fill_missing(offer: &[OfferedMedia], chosen: &Chosen) -> Chosen {
    let first = |kind: Kind| {
        offer
            .iter()
            .filter(|m| m.kind == kind)
            .flat_map(|m| m.codecs.first())
            .next()
            .cloned()
    };
    Chosen {
        audio: chosen.audio.clone().or_else(|| first(Kind::Audio)),
        video: chosen.video.clone().or_else(|| first(Kind::Video)),
    }
}

fn feedback(kind: Kind) -> Vec<RTCPFeedback> {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    match kind {
        Kind::Video => vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
        Kind::Audio => Vec::new(),
    }
}

fn mime(family: Family) -> &'static str {
    match family {
        Family::H264 { .. } => MIME_TYPE_H264,
        Family::Vp8 => MIME_TYPE_VP8,
        Family::Opus => MIME_TYPE_OPUS,
        Family::Pcmu => MIME_TYPE_PCMU,
        Family::Pcma => MIME_TYPE_PCMA,
    }
}

pub fn rtp_codec(c: &Codec) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime(c.family).into(),
        clock_rate: c.clock_rate,
        channels: c.channels,
        sdp_fmtp_line: c.fmtp.clone(),
        rtcp_feedback: feedback(c.family.kind()),
    }
}

/// A media engine that knows exactly the chosen codecs, under their payload types,
/// so the answer names nothing else.
pub fn media_engine(chosen: &Chosen) -> Result<MediaEngine, String> {
    let mut engine = MediaEngine::default();
    for (codec, kind) in [
        (&chosen.audio, RtpCodecKind::Audio),
        (&chosen.video, RtpCodecKind::Video),
    ] {
        if let Some(c) = codec {
            engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: rtp_codec(c),
                        payload_type: c.payload_type,
                    },
                    kind,
                )
                .map_err(|e| format!("codec {}: {e}", c.family.name()))?;
        }
    }
    Ok(engine)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The media part of a Chrome publish offer (shortened: the codecs that matter).
    pub const CHROME_PUBLISH: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=ice-ufrag:brws\r\na=ice-pwd:browserpassword0123456789\r\n\
a=fingerprint:sha-256 AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\na=setup:actpass\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107 127 125\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:107 rtx/90000\r\na=fmtp:107 apt=106\r\n\
a=rtpmap:127 H264/90000\r\na=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:125 H264/90000\r\na=fmtp:125 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n";

    /// A session-level DTLS fingerprint line (SHA-256).
    const FINGERPRINT: &str = "a=fingerprint:sha-256 AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\n";

    /// `sdp` (starting with `v=0`) with a session-level fingerprint.
    fn fp(sdp: &str) -> String {
        sdp.replacen("v=0\r\n", &format!("v=0\r\n{FINGERPRINT}"), 1)
    }

    /// An offer with one audio and one video m-line; the m-lines list the payload
    /// types of the given rtpmap lines.
    fn offer(video: &str, audio: &str) -> String {
        let pts = |lines: &str| {
            lines
                .lines()
                .filter_map(|l| l.strip_prefix("a=rtpmap:"))
                .filter_map(|l| l.split(' ').next())
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "v=0\r\ns=-\r\n{FINGERPRINT}m=audio 9 UDP/TLS/RTP/SAVPF {}\r\n{audio}m=video 9 UDP/TLS/RTP/SAVPF {}\r\n{video}",
            pts(audio),
            pts(video)
        )
    }

    #[test]
    fn chrome_publish_picks_constrained_baseline_and_opus() {
        let media = parse_offer(CHROME_PUBLISH).unwrap();
        assert_eq!(media.len(), 2);
        let c = choose_publish(&media, false).unwrap();
        let v = c.video.unwrap();
        assert_eq!(
            (v.payload_type, v.family),
            (
                106,
                Family::H264 {
                    profile: 0x42,
                    constraints: 0xe0
                }
            )
        );
        assert_eq!(c.audio.unwrap().payload_type, 111);
        let c = choose_publish(&media, true).unwrap();
        assert_eq!(c.video.unwrap().family, Family::Vp8);
    }

    #[test]
    fn packetization_mode_0_and_rtx_are_not_usable() {
        let media = parse_offer(CHROME_PUBLISH).unwrap();
        let video = &media[1].codecs;
        assert!(video
            .iter()
            .all(|c| c.payload_type != 102 && c.payload_type != 97));
    }

    #[test]
    fn offer_without_a_forwardable_codec_fails() {
        let av1_only = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n";
        let media = parse_offer(&fp(av1_only)).unwrap();
        assert_eq!(choose_publish(&media, false).unwrap_err(), NO_COMMON_CODECS);
        assert!(parse_offer("hello").is_err());
        assert!(parse_offer("v=0\r\ns=-\r\n").is_err());
        assert!(parse_offer(&fp("v=0\r\ns=-\r\n")).is_err());
    }

    #[test]
    fn screen_share_without_audio_has_only_video() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let c = choose_publish(&parse_offer(&fp(sdp)).unwrap(), false).unwrap();
        assert!(c.audio.is_none() && c.video.is_some());
    }

    #[test]
    fn player_gets_the_publishers_codec_under_its_own_payload_type() {
        let published = choose_publish(&parse_offer(CHROME_PUBLISH).unwrap(), false).unwrap();
        let player = offer(
            "a=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n",
            "a=rtpmap:109 opus/48000/2\r\n",
        );
        let c = choose_play(&parse_offer(&player).unwrap(), &published).unwrap();
        assert_eq!(c.video.unwrap().payload_type, 100);
        assert_eq!(c.audio.unwrap().payload_type, 109);
    }

    #[test]
    fn constrained_baseline_plays_on_baseline_and_main_decoders() {
        let published = choose_publish(&parse_offer(CHROME_PUBLISH).unwrap(), false).unwrap();
        let main_only = offer(
            "a=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=1;profile-level-id=4d001f\r\n",
            "a=rtpmap:111 opus/48000/2\r\n",
        );
        let c = choose_play(&parse_offer(&main_only).unwrap(), &published).unwrap();
        assert_eq!(c.video.unwrap().payload_type, 100);
    }

    #[test]
    fn vp8_publisher_and_h264_only_player_have_no_common_codec() {
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let published = choose_publish(&parse_offer(&fp(vp8)).unwrap(), false).unwrap();
        let h264_player = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 100\r\na=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n";
        assert_eq!(
            choose_play(&parse_offer(&fp(h264_player)).unwrap(), &published).unwrap_err(),
            NO_COMMON_CODECS
        );
    }

    #[test]
    fn main_profile_does_not_play_on_a_baseline_only_decoder() {
        let main = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 127\r\na=rtpmap:127 H264/90000\r\na=fmtp:127 packetization-mode=1;profile-level-id=4d001f\r\n";
        let published = choose_publish(&parse_offer(&fp(main)).unwrap(), false).unwrap();
        let cb = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 100\r\na=rtpmap:100 H264/90000\r\na=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n";
        assert!(choose_play(&parse_offer(&fp(cb)).unwrap(), &published).is_err());
    }

    /// CHROME_PUBLISH with its fingerprint line replaced by `line` (none if empty).
    fn with_fingerprint(line: &str) -> String {
        CHROME_PUBLISH
            .split_inclusive("\r\n")
            .map(|l| {
                if l.starts_with("a=fingerprint:") {
                    line
                } else {
                    l
                }
            })
            .collect()
    }

    #[test]
    fn every_hash_function_with_its_size_is_accepted_at_session_or_media_level() {
        for (name, size) in FINGERPRINT_HASHES {
            let hex = vec!["0f"; size].join(":");
            for hash in [name.to_owned(), name.to_ascii_uppercase()] {
                let sdp = with_fingerprint(&format!("a=fingerprint:{hash} {hex}\r\n"));
                parse_offer(&sdp).unwrap_or_else(|e| panic!("{hash}: {e}"));
            }
        }
        // Media-level only (Firefox writes it per m-line).
        let media_level = with_fingerprint("").replace("a=mid:", &format!("{FINGERPRINT}a=mid:"));
        assert_eq!(parse_offer(&media_level).unwrap().len(), 2);
    }

    #[test]
    fn offers_with_unusable_fingerprints_are_refused() {
        let sha256 = vec!["AB"; 32].join(":");
        let cases = [
            (
                format!("a=fingerprint:md5 {}\r\n", vec!["AB"; 16].join(":")),
                "unknown hash function",
            ),
            (
                format!("a=fingerprint:sha-257 {sha256}\r\n"),
                "unknown hash function",
            ),
            (
                "a=fingerprint:sha-256 ZZ:XX\r\n".to_owned(),
                "not colon-separated hex bytes",
            ),
            (
                format!("a=fingerprint:sha-256 {}\r\n", sha256.replace(':', "")),
                "not colon-separated hex bytes",
            ),
            (
                format!("a=fingerprint:sha-256 {sha256}:\r\n"),
                "not colon-separated hex bytes",
            ),
            (
                format!(
                    "a=fingerprint:sha-256 {}\r\n",
                    sha256.replacen("AB", "A\u{e9}", 1)
                ),
                "not colon-separated hex bytes",
            ),
            (
                "a=fingerprint:sha-256 AB\r\n".to_owned(),
                "sha-256 needs 32 bytes, not 1",
            ),
            (
                format!("a=fingerprint:sha-1 {sha256}\r\n"),
                "sha-1 needs 20 bytes, not 32",
            ),
            (
                "a=fingerprint:sha-256\r\n".to_owned(),
                "expected <hash function> <hex bytes>",
            ),
            (
                format!("a=fingerprint:sha-256 {sha256} extra\r\n"),
                "expected <hash function> <hex bytes>",
            ),
        ];
        for (line, why) in cases {
            let err = parse_offer(&with_fingerprint(&line)).unwrap_err();
            assert!(
                err.starts_with("Invalid SDP offer: a=fingerprint \"") && err.ends_with(why),
                "{line:?}: {err}"
            );
        }
        // One bad line spoils the offer even when another is good.
        let two = with_fingerprint(&format!(
            "a=fingerprint:sha-256 {sha256}\r\na=fingerprint:sha-256 AB\r\n"
        ));
        assert!(parse_offer(&two).is_err());
        assert_eq!(
            parse_offer(&with_fingerprint("")).unwrap_err(),
            "Invalid SDP offer: no a=fingerprint"
        );
    }

    #[test]
    fn the_client_text_in_a_refusal_is_escaped_and_bounded() {
        let long = format!("a=fingerprint:sha-256 \"\u{1b}[31m{}\r\n", "A".repeat(5000));
        let err = parse_offer(&with_fingerprint(&long)).unwrap_err();
        assert!(err.len() < 400, "bounded: {} chars", err.len());
        assert!(
            !err.contains('\u{1b}') && err.contains("\\u{1b}"),
            "escaped: {err}"
        );
    }

    #[test]
    fn offers_with_too_many_m_lines_are_refused() {
        let section = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let ok = fp(&format!("v=0\r\ns=-\r\n{}", section.repeat(MAX_M_LINES)));
        assert_eq!(parse_offer(&ok).unwrap().len(), MAX_M_LINES);
        let many = fp(&format!("v=0\r\ns=-\r\n{}", section.repeat(2000)));
        assert_eq!(
            parse_offer(&many).unwrap_err(),
            format!("Invalid SDP offer: more than {MAX_M_LINES} m-lines")
        );
        // Data channel m-lines count too.
        let app = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let many = fp(&format!(
            "v=0\r\ns=-\r\n{section}{}",
            app.repeat(MAX_M_LINES)
        ));
        assert!(parse_offer(&many).is_err());
    }

    #[test]
    fn media_engine_accepts_the_choice() {
        let c = choose_publish(&parse_offer(CHROME_PUBLISH).unwrap(), false).unwrap();
        media_engine(&c).unwrap();
    }
}
