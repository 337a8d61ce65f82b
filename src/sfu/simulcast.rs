//! Simulcast at the WebRTC edge: the layers a publisher's offer announces (RFC 8853
//! `a=simulcast:send` with RFC 8851 `a=rid` lines, the form Chrome, Firefox and Safari
//! use), in order low → high, and what a player's RTCP says about its bandwidth
//! (REMB, receiver reports) besides key-frame requests.

use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;

use crate::media::bandwidth::LossReport;

/// Most layers a publisher may send (the browsers' three).
pub const MAX_LAYERS: usize = 3;

/// Conventional rid names, each list low → high: the web app's and the WebRTC
/// samples' quarter/half/full, and low/mid/high.
const NAMINGS: [&[&str]; 3] = [&["q", "h", "f"], &["l", "m", "h"], &["low", "mid", "high"]];

/// The rids a publisher's offer sends in its video m-line, ordered low → high:
/// by a conventional naming (`q`/`h`/`f`, `l`/`m`/`h`) when every rid follows one, by
/// the order of `a=simulcast:send` otherwise (browsers list the encodings as the page
/// gave them, low first in our web app). At most `MAX_LAYERS`; paused rids (`~`)
/// count. Empty: not simulcast (fewer than two send rids).
pub fn offered_layers(sdp: &str) -> Vec<String> {
    let mut in_video = false;
    let mut rids: Vec<String> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_video && !rids.is_empty() {
                break;
            }
            in_video = m.starts_with("video ");
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rid:") {
            let mut words = rest.split_whitespace();
            if let (Some(id), Some("send")) = (words.next(), words.next()) {
                if valid_rid(id) && !rids.iter().any(|r| r == id) {
                    rids.push(id.to_owned());
                }
            }
        } else if let Some(rest) = line.strip_prefix("a=simulcast:") {
            let mut words = rest.split_whitespace();
            while let (Some(dir), Some(list)) = (words.next(), words.next()) {
                if dir != "send" {
                    continue;
                }
                for alt in list.split(';') {
                    // One stream, alternatives by comma: the first one names it.
                    let id = alt.split(',').next().unwrap_or("").trim_start_matches('~');
                    if valid_rid(id) && !order.iter().any(|r| r == id) {
                        order.push(id.to_owned());
                    }
                }
            }
        }
    }
    let mut layers: Vec<String> = if order.is_empty() {
        rids.clone()
    } else {
        order.into_iter().filter(|id| rids.contains(id)).collect()
    };
    if let Some(naming) = NAMINGS
        .iter()
        .find(|n| layers.iter().all(|r| n.contains(&r.as_str())))
    {
        layers.sort_by_key(|r| naming.iter().position(|n| n == r));
    }
    layers.truncate(MAX_LAYERS);
    if layers.len() < 2 {
        layers.clear();
    }
    layers
}

/// RFC 8851: a rid-id is alphanumeric (with `-` and `_`), and short in practice.
fn valid_rid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a player's RTCP compound packet says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feedback {
    /// A PLI or FIR.
    pub key_frame: bool,
    /// A REMB: the receiver's estimate, bits per second.
    pub remb: Option<u64>,
    /// A receiver report's block for `video_ssrc`.
    pub loss: Option<LossReport>,
}

/// Reads a player's RTCP; `video_ssrc`: the SSRC we send its video with.
pub fn read_feedback(packets: &[Box<dyn rtcp::Packet>], video_ssrc: Option<u32>) -> Feedback {
    let mut f = Feedback::default();
    for p in packets {
        let any = p.as_any();
        if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
            f.key_frame = true;
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            if remb.bitrate.is_finite() && remb.bitrate >= 0.0 {
                f.remb = Some(remb.bitrate as u64);
            }
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            if let Some(r) = rr.reports.iter().find(|r| Some(r.ssrc) == video_ssrc) {
                f.loss = Some(LossReport {
                    fraction: r.fraction_lost,
                    total_lost: r.total_lost,
                    highest: r.last_sequence_number,
                });
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(video: &str) -> String {
        format!(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rid:x send\r\na=mid:0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n{video}"
        )
    }

    #[test]
    fn chrome_and_firefox_rids_are_ordered_low_to_high() {
        // Chrome, as our web app asks (q, h, f).
        let chrome =
            offer("a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n");
        assert_eq!(offered_layers(&chrome), ["q", "h", "f"]);
        // Listed high first, with a paused layer: the naming decides.
        let reversed =
            offer("a=rid:f send\r\na=rid:h send\r\na=rid:q send\r\na=simulcast:send f;h;~q\r\n");
        assert_eq!(offered_layers(&reversed), ["q", "h", "f"]);
        let lmh = offer("a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n");
        assert_eq!(offered_layers(&lmh), ["l", "h"]);
        // Unknown names: the simulcast attribute's order; alternatives take the first.
        let other = offer(
            "a=rid:a1 send pt=96\r\na=rid:b2 send\r\na=rid:c3 send\r\na=rid:d4 send\r\n\
a=simulcast:send a1,b2;c3;d4\r\n",
        );
        assert_eq!(offered_layers(&other), ["a1", "c3", "d4"]);
    }

    #[test]
    fn no_simulcast_without_two_send_rids() {
        assert!(offered_layers(&offer("a=sendonly\r\n")).is_empty());
        assert!(offered_layers(&offer("a=rid:q send\r\na=simulcast:send q\r\n")).is_empty());
        // Receive rids (a player asking for simulcast) are not layers we get.
        assert!(offered_layers(&offer(
            "a=rid:q recv\r\na=rid:f recv\r\na=simulcast:recv q;f\r\n"
        ))
        .is_empty());
        // Rids with characters a rid-id may not have are ignored.
        assert!(offered_layers(&offer(
            "a=rid:<b> send\r\na=rid:q send\r\na=simulcast:send <b>;q\r\n"
        ))
        .is_empty());
    }

    #[test]
    fn feedback_is_read_from_a_compound_packet() {
        use rtc::rtcp::reception_report::ReceptionReport;
        let rr = ReceiverReport {
            ssrc: 1,
            reports: vec![
                ReceptionReport {
                    ssrc: 7,
                    fraction_lost: 10,
                    ..Default::default()
                },
                ReceptionReport {
                    ssrc: 9,
                    fraction_lost: 80,
                    total_lost: 12,
                    last_sequence_number: 70_000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: 150_000.0,
            ssrcs: vec![9],
        };
        let packets: Vec<Box<dyn rtcp::Packet>> = vec![Box::new(rr), Box::new(remb)];
        assert_eq!(
            read_feedback(&packets, Some(9)),
            Feedback {
                key_frame: false,
                remb: Some(150_000),
                loss: Some(LossReport {
                    fraction: 80,
                    total_lost: 12,
                    highest: 70_000
                })
            }
        );
        assert_eq!(read_feedback(&packets, Some(3)).loss, None);
        let pli: Vec<Box<dyn rtcp::Packet>> = vec![Box::new(PictureLossIndication::default())];
        assert!(read_feedback(&pli, None).key_frame);
    }
}
