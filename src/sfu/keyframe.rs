//! Keyframes: recognising one in an RTP payload, letting subscribers' PLI/FIR reach us, and
//! coalescing those requests to about one per second per published track.
//! Pure functions and small types; the engine (`engine/`) paces and sends the requests.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use kursrelay_interceptor::is_keyframe_request;
use kursrelay_interceptor::DeliverRtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

/// Which codec a track carries, as far as keyframe detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecFamily {
    Vp8,
    Vp9,
    H264,
    Audio,
    /// A video codec we cannot parse: every packet counts as a possible start.
    OtherVideo,
}

impl CodecFamily {
    pub fn from_mime(mime: &str) -> CodecFamily {
        let mime = mime.to_ascii_lowercase();
        match mime.as_str() {
            "video/vp8" => CodecFamily::Vp8,
            "video/vp9" => CodecFamily::Vp9,
            "video/h264" => CodecFamily::H264,
            m if m.starts_with("audio/") => CodecFamily::Audio,
            _ => CodecFamily::OtherVideo,
        }
    }
}

/// Whether this RTP payload starts a keyframe, i.e. a subscriber can begin decoding here.
/// Audio packets are always a fine place to start.
pub fn starts_keyframe(codec: CodecFamily, payload: &[u8]) -> bool {
    match codec {
        CodecFamily::Audio | CodecFamily::OtherVideo => true,
        CodecFamily::Vp8 => vp8_keyframe_start(payload),
        CodecFamily::Vp9 => vp9_keyframe_start(payload),
        CodecFamily::H264 => h264_has_keyframe(payload),
    }
}

/// RFC 7741: payload descriptor, then the VP8 frame header whose lowest bit is 0 on keyframes.
fn vp8_keyframe_start(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = p.get(i) else { return false };
        i += 1;
        if ext & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    matches!(p.get(i), Some(&b) if b & 0x01 == 0)
}

/// The width and height a VP8 keyframe's first packet announces (RFC 6386 9.1: after the
/// payload descriptor, a 3-byte frame tag, the start code 9d 01 2a, then 14-bit width and
/// height).
pub(crate) fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    let first = *p.first()?;
    let mut i = 1;
    if first & 0x80 != 0 {
        let ext = *p.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    let f = p.get(i..i + 10)?;
    if f[0] & 0x01 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    Some((w, h))
}

/// RFC 9628 (VP9 payload): B (start of frame) set and P (inter-predicted) clear.
fn vp9_keyframe_start(p: &[u8]) -> bool {
    matches!(p.first(), Some(&b) if b & 0x08 != 0 && b & 0x40 == 0)
}

/// RFC 6184: an IDR slice or an SPS, alone, aggregated in STAP-A, or starting an FU-A.
fn h264_has_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let is_key = |nal_type: u8| nal_type == IDR || nal_type == SPS;
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                if is_key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => matches!(p.get(1), Some(&fu) if fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

/// However many viewers ask (PLI or FIR), however often, and whatever else wants a keyframe
/// (a newcomer waiting, a track with no GOP cached), a publisher is sent at most one PLI per
/// published track per this interval: every want sets the track's one `KeyframeRequester`
/// flag, and the engine sends the flag upstream at most once per
/// `max(media.keyframe_request_interval_ms, this)` per track (issue 20: one weak viewer's
/// PLIs made the hall camera encode keyframes 6–9 times as often).
pub const MIN_KEYFRAME_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Simulcast layers a published track may have (rids such as `q`/`h`/`f`; index 0 is the
/// lowest). A single-layer track uses layer 0 only.
pub const MAX_LAYERS: usize = 3;
const ALL_LAYERS: u8 = (1 << MAX_LAYERS) - 1;

/// A cheap handle that asks the publisher of one track for a keyframe, per simulcast layer.
/// Requests made while one is already wanted merge into it; the engine sends them upstream,
/// paced per layer.
#[derive(Debug, Clone, Default)]
pub struct KeyframeRequester {
    /// One bit per layer.
    wanted: Arc<AtomicU8>,
}

impl KeyframeRequester {
    /// Asks for a keyframe on every layer the track has (one, unless it is simulcast).
    pub fn request(&self) {
        self.wanted.fetch_or(ALL_LAYERS, Ordering::Relaxed);
    }

    /// Asks for a keyframe on one simulcast layer.
    pub(crate) fn request_layer(&self, layer: u8) {
        if usize::from(layer) < MAX_LAYERS {
            self.wanted.fetch_or(1 << layer, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) != 0
    }

    pub(crate) fn is_wanted_layer(&self, layer: u8) -> bool {
        self.wanted.load(Ordering::Relaxed) & (1 << layer) != 0
    }

    /// Clears one layer's want; the engine calls this when it sends the request.
    pub(crate) fn take_layer(&self, layer: u8) -> bool {
        let bit = 1 << layer;
        self.wanted.fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }

    /// Clears the wants of layers the track does not have (`present`: one bit per layer).
    pub(crate) fn forget_absent(&self, present: u8) {
        self.wanted.fetch_and(present, Ordering::Relaxed);
    }
}

/// Where a VP8 payload descriptor (RFC 7741) carries its picture id and TL0PICIDX, so a
/// down-track can rewrite them when it switches between simulcast layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp8Ids {
    /// Offset of the picture id in the payload, its value, and whether it is 15 bits wide.
    pub(crate) picture_id: Option<(usize, u16, bool)>,
    /// Offset and value of TL0PICIDX.
    pub(crate) tl0: Option<(usize, u8)>,
}

/// The picture id and TL0PICIDX of a VP8 payload, if it carries either.
pub(crate) fn vp8_ids(p: &[u8]) -> Option<Vp8Ids> {
    let first = *p.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let ext = *p.get(1)?;
    let mut i = 2;
    let mut picture_id = None;
    if ext & 0x80 != 0 {
        let b = *p.get(i)?;
        if b & 0x80 != 0 {
            let lo = *p.get(i + 1)?;
            picture_id = Some((i, (u16::from(b & 0x7f) << 8) | u16::from(lo), true));
            i += 2;
        } else {
            picture_id = Some((i, u16::from(b), false));
            i += 1;
        }
    }
    let tl0 = if ext & 0x40 != 0 {
        Some((i, *p.get(i)?))
    } else {
        None
    };
    (picture_id.is_some() || tl0.is_some()).then_some(Vp8Ids { picture_id, tl0 })
}

/// The last link of a connection's interceptor chain: PLI, FIR, NACK, sender reports and
/// congestion feedback are delivered to the application (the engine turns them into keyframe
/// requests, re-sends from the track cache, translated sender reports, a viewer's estimate);
/// the rest is dropped, the other interceptors have already acted on it. The link itself is
/// `kursrelay_interceptor::DeliverRtcp`, which the client crate uses too.
pub fn rtcp_link() -> DeliverRtcp {
    DeliverRtcp::new(is_for_application)
}

/// True if the batch holds something the engine acts on: a keyframe request, a NACK (answered
/// from the track cache) or a sender report (translated for the subscribers).
pub fn is_for_application(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
            || any.is::<rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            || any.is::<rtc::rtcp::sender_report::SenderReport>()
            || is_congestion_feedback(any)
    })
}

/// Transport-cc feedback, receiver reports and REMB: a viewer's estimate (`allocator.rs`).
fn is_congestion_feedback(any: &dyn std::any::Any) -> bool {
    use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    any.is::<rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc>()
        || any.is::<rtc::rtcp::receiver_report::ReceiverReport>()
        || any.is::<ReceiverEstimatedMaximumBitrate>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8() {
        use CodecFamily::Vp8;
        let cases: &[(&[u8], bool)] = &[
            (&[0x10, 0x00], true),                               // S=1, PID=0, P=0
            (&[0x10, 0x01], false),                              // inter frame
            (&[0x00, 0x00], false),                              // not a partition start
            (&[0x11, 0x00], false),                              // partition 1
            (&[0x90, 0x80, 0x05, 0x00], true),                   // X, I with 7-bit picture id
            (&[0x90, 0x80, 0x85, 0x05, 0x00], true),             // 15-bit picture id
            (&[0x90, 0xe0, 0x85, 0x05, 0x01, 0x02, 0x00], true), // I, L, T
            (&[0x90, 0xe0, 0x85, 0x05, 0x01, 0x02, 0x01], false),
            (&[0x90], false),
            (&[], false),
        ];
        for (payload, want) in cases {
            assert_eq!(starts_keyframe(Vp8, payload), *want, "{payload:02x?}");
        }
    }

    #[test]
    fn h264() {
        use CodecFamily::H264;
        let cases: &[(&[u8], bool)] = &[
            (&[0x65, 0x88], true),                                     // IDR
            (&[0x67, 0x42], true),                                     // SPS
            (&[0x41, 0x9a], false),                                    // non-IDR slice
            (&[0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68], true), // STAP-A with SPS
            (&[0x18, 0x00, 0x01, 0x41], false),
            (&[0x7c, 0x85, 0x00], true),  // FU-A start of IDR
            (&[0x7c, 0x05, 0x00], false), // FU-A continuation
            (&[0x7c, 0x81, 0x00], false), // FU-A start of non-IDR
            (&[], false),
        ];
        for (payload, want) in cases {
            assert_eq!(starts_keyframe(H264, payload), *want, "{payload:02x?}");
        }
    }

    #[test]
    fn vp8_picture_ids() {
        assert_eq!(vp8_ids(&[0x10, 0x00]), None);
        assert_eq!(
            vp8_ids(&[0x90, 0xc0, 0x85, 0x05, 0x07, 0x00]),
            Some(Vp8Ids {
                picture_id: Some((2, 0x0505, true)),
                tl0: Some((4, 7)),
            })
        );
        assert_eq!(
            vp8_ids(&[0x90, 0x80, 0x05, 0x00]),
            Some(Vp8Ids {
                picture_id: Some((2, 5, false)),
                tl0: None,
            })
        );
        assert_eq!(vp8_ids(&[0x90, 0x80]), None, "truncated");
    }

    #[test]
    fn vp8_keyframe_sizes() {
        let key = [
            0x10, 0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        assert_eq!(vp8_keyframe_size(&key), Some((640, 360)));
        let mut delta = key;
        delta[1] = 0x51;
        assert_eq!(vp8_keyframe_size(&delta), None);
        assert_eq!(vp8_keyframe_size(&key[..8]), None);
    }

    #[test]
    fn keyframe_wants_per_layer() {
        let k = KeyframeRequester::default();
        k.request_layer(2);
        assert!(k.is_wanted_layer(2) && !k.is_wanted_layer(0));
        assert!(k.take_layer(2) && !k.take_layer(2) && !k.is_wanted());
        k.request();
        k.forget_absent(0b001);
        assert!(k.is_wanted_layer(0) && !k.is_wanted_layer(1));
    }

    #[test]
    fn vp9_audio_and_unknown() {
        assert!(starts_keyframe(CodecFamily::Vp9, &[0x08]));
        assert!(!starts_keyframe(CodecFamily::Vp9, &[0x48]));
        assert!(!starts_keyframe(CodecFamily::Vp9, &[0x00]));
        assert!(starts_keyframe(CodecFamily::Audio, &[]));
        assert!(starts_keyframe(CodecFamily::OtherVideo, &[1]));
        assert_eq!(CodecFamily::from_mime("video/VP8"), CodecFamily::Vp8);
        assert_eq!(CodecFamily::from_mime("audio/opus"), CodecFamily::Audio);
        assert_eq!(CodecFamily::from_mime("video/H264"), CodecFamily::H264);
    }
}
