//! The last link of a webrtc-rs interceptor chain, shared by the server (`src/sfu`) and the
//! typed client (`client/`), which must not depend on each other.
//!
//! Inbound RTCP normally stops inside the chain (the interceptors before this one have acted
//! on it). [`DeliverRtcp`] marks the batches its filter wants for delivery to the application
//! and drops the rest; RTP and everything written pass through unchanged. The server wants
//! keyframe requests, NACKs, sender reports and congestion feedback (`sfu::keyframe`); a
//! publishing client only keyframe requests ([`is_keyframe_request`]), which its local track
//! sees as `TrackLocalEvent::OnRtcpPacket`.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;

/// Which inbound RTCP batches reach the application.
pub type Wanted = fn(&[Box<dyn rtc::rtcp::Packet>]) -> bool;

/// True if any packet in the batch asks for a keyframe (PLI or FIR).
pub fn is_keyframe_request(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
    })
}

/// Lets the RTCP batches `wanted` picks through to the application, drops the other RTCP.
pub struct DeliverRtcp {
    wanted: Wanted,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl DeliverRtcp {
    pub fn new(wanted: Wanted) -> DeliverRtcp {
        DeliverRtcp {
            wanted,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }
}

/// A link for a publishing client: keyframe requests only.
impl Default for DeliverRtcp {
    fn default() -> DeliverRtcp {
        DeliverRtcp::new(is_keyframe_request)
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if !(self.wanted)(packets) {
                return Ok(());
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;

    #[test]
    fn keyframe_requests_are_told_from_the_rest() {
        let pli: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(PictureLossIndication::default())];
        let fir: Vec<Box<dyn rtc::rtcp::Packet>> = vec![
            Box::new(ReceiverReport::default()),
            Box::new(FullIntraRequest::default()),
        ];
        let rr: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(ReceiverReport::default())];
        assert!(is_keyframe_request(&pli));
        assert!(is_keyframe_request(&fir));
        assert!(!is_keyframe_request(&rr));
        assert!(!is_keyframe_request(&[]));
    }
}
