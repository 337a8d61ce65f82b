//! Building one server-side peer connection (ICE-lite, our ufrag, DTLS server, the
//! shared certificate, exactly the chosen codecs) and tidying its answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, register_default_interceptors,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::codecs::{media_engine, Chosen};
use crate::metrics::MediaCounters;

/// Publishers get NACK, TWCC feedback (bandwidth estimation in the browser) and
/// reports; players' NACKs are answered and their sender reports sent by
/// `play_out`, past the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Publish,
    Play,
}

/// `simulcast`: a publisher's offer has rid layers (the mid and rid header extensions
/// are negotiated then, which rid-based simulcast needs).
pub fn build(
    now: Instant,
    cert: &RTCCertificate,
    (ufrag, pwd): (&str, &str),
    chosen: &Chosen,
    (direction, simulcast): (Direction, bool),
    silence: Duration,
    counters: &Arc<MediaCounters>,
) -> Result<RTCPeerConnection, String> {
    // A connected peer that sends nothing (no consent check, no RTCP, no media) for a
    // third of `silence` (at most 5 s) is disconnected, and failed at `silence`:
    // 15 s by default, where ICE's own 5 + 25 s would leave a vanished participant's
    // frozen picture in the room for half a minute. Browsers send consent checks
    // every ~5 s and RTCP every second.
    let disconnected = (silence / 3).min(Duration::from_secs(5));
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_timeouts(
            Some(disconnected),
            Some(silence.saturating_sub(disconnected)),
            None,
        )
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build();
    let mut engine = media_engine(chosen)?;
    if simulcast && direction == Direction::Publish {
        configure_simulcast_extension_headers(&mut engine)
            .map_err(|e| format!("simulcast header extensions: {e}"))?;
    }
    if direction == Direction::Play {
        // The player's receiver estimate: the layer it gets (`media::bandwidth`).
        engine.register_feedback(
            RTCPFeedback {
                typ: "goog-remb".into(),
                parameter: String::new(),
            },
            RtpCodecKind::Video,
        );
    }
    // A player's PLI, FIR and NACK are counted; its REMB and receiver reports reach
    // the engine too.
    let requests = KeyFrameRequests {
        counters: (direction == Direction::Play).then(|| counters.clone()),
        feedback: direction == Direction::Play,
        ..KeyFrameRequests::default()
    };
    let registry = Registry::new().with(Slot::from(14_000), requests);
    if direction == Direction::Publish {
        super::audio_level::register(&mut engine)?;
    }
    let registry = match direction {
        Direction::Publish => register_default_interceptors(registry, &mut engine)
            .map_err(|e| format!("interceptors: {e}"))?,
        // A player's RTP is protected and sent past the pipeline (`play_out`), which
        // keeps its history for NACKs and sends its reports: no sender interceptors.
        Direction::Play => registry,
    };
    let config = RTCConfigurationBuilder::new()
        .with_certificates(vec![cert.clone()])
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(|e| format!("peer connection: {e}"))
}

/// Answers `inactive` every m-line of a play that nothing is sent on: the kinds the
/// stream lacks (no camera, no microphone). Call between the remote offer and the
/// answer.
///
/// Left `sendonly` with no track, such an m-line makes the browser announce a remote
/// track that never gets a packet, in a stream of its own (the answer has no msid for
/// it): a page that shows `event.streams[0]` of every `ontrack` (the Flashphoner SDK)
/// then loses the stream that has the media, and a `<video>` holding a video track
/// that never delivers a frame never starts playing, so its audio is never heard.
/// `inactive` keeps the m-line in the bundle (a rejected first m-line would take the
/// transport with it) and announces nothing.
pub fn idle_unsent_media(pc: &mut RTCPeerConnection) {
    let ids: Vec<RTCRtpTransceiverId> = pc.get_transceivers().collect();
    for id in ids {
        if let Some(mut t) = pc.rtp_transceiver(id) {
            if t.sender().is_none() {
                t.set_direction(RTCRtpTransceiverDirection::Inactive);
            }
        }
    }
}

/// A host candidate for `addr` (an advertised address and the media port).
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), String> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| format!("candidate {addr}: {e}"))?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| format!("candidate {addr}: {e}"))?;
    pc.add_local_candidate(init)
        .map_err(|e| format!("candidate {addr}: {e}"))
}

/// A passive ICE-TCP host candidate for `addr` (an advertised address and the ICE-TCP
/// port, RFC 6544): `a=candidate:… 1 tcp … typ host tcptype passive`. The browser
/// connects to it and frames everything as RFC 4571 says; its priority is below the
/// UDP candidate's, so a browser that can use UDP does.
pub fn add_tcp_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), String> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "tcp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: TcpType::Passive,
    }
    .new_candidate_host()
    .map_err(|e| format!("TCP candidate {addr}: {e}"))?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| format!("TCP candidate {addr}: {e}"))?;
    pc.add_local_candidate(init)
        .map_err(|e| format!("TCP candidate {addr}: {e}"))
}

/// The answer as the browser gets it: without the component-2 candidates the library
/// writes although rtcp-mux is on, and with the candidates in every m-line that is not
/// rejected. The library writes them into the first m-line only, and a client that
/// reads candidates from the m-lines it uses (pion and webrtc-rs skip `inactive` ones)
/// would find none when the first one is inactive (a stream without audio). Everything
/// else is already as ROOM_PROTOCOL §10.2 asks (CRLF, BUNDLE, ice-lite, setup:passive,
/// fmtp after rtpmap, shared msid).
pub fn tidy_answer(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
    let is_candidate = |l: &&str| l.starts_with("a=candidate:") || *l == "a=end-of-candidates";
    let candidates: Vec<&str> = lines
        .iter()
        .copied()
        .filter(is_candidate)
        .filter(|l| {
            l.strip_prefix("a=candidate:")
                .and_then(|rest| rest.split_whitespace().nth(1))
                != Some("2")
        })
        .fold(Vec::new(), |mut unique, l| {
            if !unique.contains(&l) {
                unique.push(l);
            }
            unique
        });
    let mut out = String::with_capacity(sdp.len() * 2);
    let mut push = |l: &str| {
        out.push_str(l);
        out.push_str("\r\n");
    };
    // Session lines, then each m-section without its own candidates and with all of them
    // at its end (rejected sections, port 0, get none).
    let mut section_live = false;
    let mut in_media = false;
    for l in lines {
        if l.starts_with("m=") {
            if in_media && section_live {
                candidates.iter().for_each(|c| push(c));
            }
            in_media = true;
            section_live = l.split(' ').nth(1) != Some("0");
        }
        if !is_candidate(&l) {
            push(l);
        }
    }
    if in_media && section_live {
        candidates.iter().for_each(|c| push(c));
    }
    out
}

/// Lets PLI and FIR (and a player's REMB and receiver reports) reach the application (the interceptor chain keeps
/// RTCP to itself otherwise); everything passes through unchanged.
#[derive(Default)]
pub struct KeyFrameRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    /// Where a player's feedback is counted.
    counters: Option<Arc<MediaCounters>>,
    /// REMB and receiver reports reach the application too (a player's bandwidth).
    feedback: bool,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyFrameRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if let Some(c) = &self.counters {
                for p in packets {
                    let p = p.as_any();
                    if p.is::<PictureLossIndication>() {
                        c.pli_received.inc();
                    } else if p.is::<FullIntraRequest>() {
                        c.fir_received.inc();
                    } else if p.is::<TransportLayerNack>() {
                        c.nack_received.inc();
                    }
                }
            }
            let wanted = packets.iter().any(|p| {
                let p = p.as_any();
                p.is::<PictureLossIndication>()
                    || p.is::<FullIntraRequest>()
                    || (self.feedback
                        && (p.is::<ReceiverEstimatedMaximumBitrate>()
                            || p.is::<ReceiverReport>()
                            || p.is::<TransportLayerNack>()))
            });
            if wanted {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for KeyFrameRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_2_candidates_are_dropped_and_crlf_kept() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\n\
a=candidate:1 2 udp 2130706431 127.0.0.1 20000 typ host\r\na=rtcp-mux\r\n";
        assert_eq!(
            tidy_answer(sdp),
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtcp-mux\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\n"
        );
    }

    #[test]
    fn every_live_m_line_carries_the_candidates() {
        let c = "a=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host";
        let sdp = format!(
            "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=inactive\r\n\
{c}\r\na=end-of-candidates\r\nm=video 9 UDP/TLS/RTP/SAVPF 106\r\na=mid:1\r\na=sendonly\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\n"
        );
        assert_eq!(
            tidy_answer(&sdp),
            format!(
                "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=inactive\r\n\
{c}\r\na=end-of-candidates\r\nm=video 9 UDP/TLS/RTP/SAVPF 106\r\na=mid:1\r\na=sendonly\r\n\
{c}\r\na=end-of-candidates\r\nm=video 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:2\r\n"
            )
        );
    }
}
