//! Building one server-side peer connection (ICE-lite, our ufrag, DTLS server, the
//! shared certificate, exactly the chosen codecs) and tidying its answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, register_default_interceptors,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::codecs::{media_engine, Chosen};

/// Publishers get NACK, TWCC feedback (bandwidth estimation in the browser) and
/// reports; players NACK (answered from the sender's buffer) and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Publish,
    Play,
}

pub fn build(
    now: Instant,
    cert: &RTCCertificate,
    ufrag: &str,
    pwd: &str,
    chosen: &Chosen,
    direction: Direction,
) -> Result<RTCPeerConnection, String> {
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build();
    let mut engine = media_engine(chosen)?;
    let registry = Registry::new().with(Slot::from(14_000), KeyFrameRequests::default());
    let registry = match direction {
        Direction::Publish => register_default_interceptors(registry, &mut engine)
            .map_err(|e| format!("interceptors: {e}"))?,
        Direction::Play => configure_rtcp_reports(configure_nack(registry, &mut engine)),
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

/// The answer as the browser gets it: without the component-2 candidates the library
/// writes although rtcp-mux is on. Everything else is already as ROOM_PROTOCOL §10.2
/// asks (CRLF, BUNDLE, ice-lite, setup:passive, fmtp after rtpmap, shared msid).
pub fn tidy_answer(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        let component_2 = line
            .strip_prefix("a=candidate:")
            .and_then(|rest| rest.split_whitespace().nth(1))
            == Some("2");
        if !component_2 {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// Lets PLI and FIR from players reach the application (the interceptor chain keeps
/// RTCP to itself otherwise); everything passes through unchanged.
#[derive(Default)]
pub struct KeyFrameRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyFrameRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let wanted = packets.iter().any(|p| {
                p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
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
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\n\
a=candidate:1 2 udp 2130706431 127.0.0.1 20000 typ host\r\na=rtcp-mux\r\n";
        assert_eq!(
            tidy_answer(sdp),
            "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 20000 typ host\r\na=rtcp-mux\r\n"
        );
    }
}
