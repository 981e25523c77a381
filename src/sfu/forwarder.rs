//! Feeds, publications and down-tracks: the data the engine's packet path reads.
//!
//! A *feed* is one track arriving on a publish connection; it lives as long as the track does,
//! whether or not it is forwarded. Forwarding is a *publication*: `Feed::publish` hands the
//! room a `Forwarder` (with a fresh `TrackId`); dropping it parks the feed, whose media the
//! engine then reads and throws away (counted). So the same track can be forwarded, parked and
//! forwarded again (floor granted twice) without the client renegotiating.
//!
//! The engine reads a feed's subscriber list as an immutable snapshot (`ArcSwap`, replaced
//! only by the room actor through its `Forwarder`), so it never takes a lock per packet. A
//! `DownTrack` is one subscriber's end of a publication: which engine connection and sender,
//! and how to rewrite the header for it. A simulcast feed has up to three layers; each
//! down-track forwards one of them and switches at keyframes, keeping its outgoing stream
//! continuous (sequence numbers, timestamps, VP8 picture ids). `DownTrack::packet` builds
//! the outgoing packet for rtc's sender with the payload shared (`Bytes`) and empty
//! extension/CSRC vectors: no heap allocation.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;

use super::conn_key::ConnKey;
use super::keyframe::{CodecFamily, KeyframeRequester, MAX_LAYERS};
use super::{Codec, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{MediaKind, Source};

/// No layer (a down-track that has not started, or whose video is paused).
pub(crate) const NO_LAYER: u8 = 0xff;
/// A target that pauses a down-track's video (its audio is a separate down-track).
pub(crate) const PAUSED: u8 = 0xfe;
/// The default target: the best layer the publisher sends.
pub(crate) const TOP_LAYER: u8 = (super::keyframe::MAX_LAYERS - 1) as u8;
/// Video RTP clocks are 90 kHz: ticks per millisecond, for the timestamp gap at a switch.
const VIDEO_TICKS_PER_MS: u64 = 90;

/// One packet as `DownTrack::admit` sees it.
#[derive(Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
    pub(crate) keyframe: bool,
    /// Which simulcast layer it came on (0 for a single-layer track).
    pub(crate) layer: u8,
    pub(crate) payload: &'a [u8],
    /// The engine's clock, ms since its epoch.
    pub(crate) now_ms: u64,
}

/// How one forwarded packet goes out to one subscriber: the outgoing sequence number, SRTP
/// rollover counter and timestamp, and the VP8 ids to write into the payload (already
/// translated; `None` where the payload is sent as it came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) seq: u16,
    pub(crate) roc: u32,
    pub(crate) timestamp: u32,
    pub(crate) rewrite: Rewrite,
}

/// VP8 ids to write into a payload copy: (offset, value, 15 bits wide) and (offset, value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rewrite {
    pub(crate) picture_id: Option<(usize, u16, bool)>,
    pub(crate) tl0: Option<(usize, u8)>,
}

impl Rewrite {
    /// Writes the ids into `payload` (the copy in the send buffer).
    pub(crate) fn apply(&self, payload: &mut [u8]) {
        if let Some((at, v, wide)) = self.picture_id {
            if wide {
                if let Some(b) = payload.get_mut(at..at + 2) {
                    b[0] = 0x80 | (v >> 8) as u8 & 0x7f;
                    b[1] = v as u8;
                }
            } else if let Some(b) = payload.get_mut(at) {
                *b = v as u8 & 0x7f;
            }
        }
        if let Some((at, v)) = self.tl0 {
            if let Some(b) = payload.get_mut(at) {
                *b = v;
            }
        }
    }
}

/// One published track as one subscriber receives it: where it goes (engine connection and
/// its sender), and how to rewrite the header for that connection.
///
/// Simulcast: the subscriber gets one outgoing stream (one SSRC) whichever layer it is sent.
/// `target_layer` is what its allocator wants, `layer` what it is forwarded now; a switch
/// happens at a keyframe of the target layer and starts a new *segment*: sequence numbers,
/// timestamps and VP8 picture id / TL0PICIDX go on from where the last segment ended. A NACK
/// is answered only for packets of the current segment (the switch keyframe made the older
/// ones useless), so a re-send carries the same rewrite and is byte-identical.
pub struct DownTrack {
    pub(crate) member: MemberId,
    pub(crate) track: TrackId,
    pub(crate) codec: CodecFamily,
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
    pub(crate) conn: ConnKey,
    pub(crate) sender: RTCRtpSenderId,
    /// Asks this track's publisher for a keyframe.
    pub(crate) keyframes: KeyframeRequester,
    /// Engine-owned state. Only the engine thread writes these, so relaxed atomics suffice;
    /// they are atomics only because the down-track is shared with the room.
    pub(crate) waiting_keyframe: AtomicBool,
    pub(crate) started: AtomicBool,
    pub(crate) last_out_seq: AtomicU16,
    pub(crate) seq_offset: AtomicU16,
    /// SRTP rollover counter of the outgoing stream (when the engine seals it).
    pub(crate) roc: AtomicU32,
    /// Sent so far, for sender reports.
    pub(crate) packets_sent: AtomicU32,
    pub(crate) octets_sent: AtomicU32,
    /// While a newcomer is sent the cached GOP: CATCHING_UP | the next sequence number to send.
    pub(crate) catchup: AtomicU32,
    /// The layer the allocator wants (`TOP_LAYER`, a lower one, or `PAUSED`).
    pub(crate) target_layer: AtomicU8,
    /// The layer forwarded now (`NO_LAYER` before the start and while paused).
    pub(crate) layer: AtomicU8,
    /// The current segment: its layer and first outgoing sequence number.
    seg_layer: AtomicU8,
    seg_start: AtomicU16,
    /// Outgoing timestamp = incoming − ts_offset (0 until the first switch).
    ts_offset: AtomicU32,
    last_out_ts: AtomicU32,
    last_out_ms: AtomicU64,
    /// VP8: outgoing picture id = incoming − pid_offset, TL0PICIDX likewise.
    pid_offset: AtomicU16,
    tl0_offset: AtomicU8,
    last_pid: AtomicU16,
    last_tl0: AtomicU8,
    /// Video: the transport-wide sequence number each recent outgoing packet carried
    /// ((outgoing seq << 16) | transport-wide seq, by outgoing seq modulo the ring), so a
    /// NACK re-send carries the same one and stays byte-identical.
    twcc_sent: Option<Box<[AtomicU32]>>,
}

/// Outgoing packets whose transport-wide number a video down-track remembers (≈ 1 s of a
/// 2 Mbit/s layer; older ones are not re-sent anyway, `resend::NACK_HORIZON`). 4 bytes each.
const TWCC_SENT: usize = 512;

const CATCHING_UP: u32 = 1 << 16;
/// Set (without CATCHING_UP) when a newcomer was not given the cached GOP (too long).
const GOP_SKIPPED: u32 = 1 << 17;

impl DownTrack {
    /// A subscriber's end of a publication once the answer fixed its payload type. Video
    /// starts at a keyframe of the best layer, or it would show garbage until one comes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        member: MemberId,
        track: TrackId,
        codec: CodecFamily,
        ssrc: u32,
        payload_type: u8,
        conn: ConnKey,
        sender: RTCRtpSenderId,
        keyframes: KeyframeRequester,
    ) -> DownTrack {
        DownTrack {
            member,
            track,
            codec,
            ssrc,
            payload_type,
            conn,
            sender,
            keyframes,
            waiting_keyframe: AtomicBool::new(codec != CodecFamily::Audio),
            started: AtomicBool::new(false),
            last_out_seq: AtomicU16::new(0),
            seq_offset: AtomicU16::new(0),
            roc: AtomicU32::new(0),
            packets_sent: AtomicU32::new(0),
            octets_sent: AtomicU32::new(0),
            catchup: AtomicU32::new(0),
            target_layer: AtomicU8::new(TOP_LAYER),
            layer: AtomicU8::new(NO_LAYER),
            seg_layer: AtomicU8::new(NO_LAYER),
            seg_start: AtomicU16::new(0),
            ts_offset: AtomicU32::new(0),
            last_out_ts: AtomicU32::new(0),
            last_out_ms: AtomicU64::new(0),
            pid_offset: AtomicU16::new(0),
            tl0_offset: AtomicU8::new(0),
            last_pid: AtomicU16::new(0),
            last_tl0: AtomicU8::new(0),
            twcc_sent: (codec != CodecFamily::Audio)
                .then(|| (0..TWCC_SENT).map(|_| AtomicU32::new(0)).collect()),
        }
    }

    /// Remembers the transport-wide number outgoing packet `seq` was sent with.
    pub(crate) fn remember_twcc(&self, seq: u16, twcc: u16) {
        if let Some(ring) = &self.twcc_sent {
            ring[usize::from(seq) % TWCC_SENT]
                .store((u32::from(seq) << 16) | u32::from(twcc), Ordering::Relaxed);
        }
    }

    /// The transport-wide number outgoing packet `seq` was sent with, if remembered.
    pub(crate) fn twcc_of(&self, seq: u16) -> Option<u16> {
        let v = self.twcc_sent.as_ref()?[usize::from(seq) % TWCC_SENT].load(Ordering::Relaxed);
        ((v >> 16) as u16 == seq).then_some(v as u16)
    }

    pub(crate) fn is_catching_up(&self) -> bool {
        self.catchup.load(Ordering::Relaxed) & CATCHING_UP != 0
    }

    pub(crate) fn start_catchup(&self, from: u16) {
        self.catchup
            .store(CATCHING_UP | u32::from(from), Ordering::Relaxed);
    }

    pub(crate) fn catchup_next(&self) -> Option<u16> {
        let v = self.catchup.load(Ordering::Relaxed);
        (v & CATCHING_UP != 0).then_some(v as u16)
    }

    pub(crate) fn set_catchup_next(&self, next: u16) {
        self.catchup
            .store(CATCHING_UP | u32::from(next), Ordering::Relaxed);
    }

    /// Marks that this newcomer waits for a fresh keyframe instead of the cached GOP; true
    /// the first time (so it is counted once).
    pub(crate) fn skip_gop(&self) -> bool {
        self.catchup.fetch_or(GOP_SKIPPED, Ordering::Relaxed) & GOP_SKIPPED == 0
    }

    pub(crate) fn end_catchup(&self) {
        self.catchup.store(0, Ordering::Relaxed);
    }

    pub fn member(&self) -> MemberId {
        self.member
    }

    pub fn track(&self) -> TrackId {
        self.track
    }

    /// The layer the allocator wants for this subscriber.
    pub(crate) fn target_layer(&self) -> u8 {
        self.target_layer.load(Ordering::Relaxed)
    }

    pub(crate) fn set_target_layer(&self, layer: u8) {
        self.target_layer.store(layer, Ordering::Relaxed);
    }

    /// The layer forwarded now (`NO_LAYER`: none).
    pub(crate) fn layer(&self) -> u8 {
        self.layer.load(Ordering::Relaxed)
    }

    /// Takes `layer` from its next keyframe on (the first layer of a newcomer, or the one
    /// after a pause): until then nothing of it is sent.
    pub(crate) fn start_layer(&self, layer: u8) {
        self.layer.store(layer, Ordering::Relaxed);
        self.waiting_keyframe.store(true, Ordering::Relaxed);
    }

    /// Stops forwarding video (paused): resumes at a keyframe with `start_layer`.
    pub(crate) fn pause(&self) -> bool {
        if self.layer.swap(NO_LAYER, Ordering::Relaxed) == NO_LAYER {
            return false;
        }
        self.waiting_keyframe.store(true, Ordering::Relaxed);
        true
    }

    /// Whether this subscriber gets the packet, and if so how (see `Outgoing`). None while it
    /// waits for a keyframe to start from (a newcomer, a switch, or after a loss that broke
    /// the picture).
    pub(crate) fn admit(&self, p: Incoming<'_>) -> Option<Outgoing> {
        let video = self.codec != CodecFamily::Audio;
        let started = self.started.load(Ordering::Relaxed);
        let mut new_segment = !started;
        if video && self.waiting_keyframe.load(Ordering::Relaxed) {
            if !p.keyframe {
                // Paced to one PLI per interval and layer by the engine; this only marks it.
                self.keyframes.request_layer(p.layer);
                return None;
            }
            self.waiting_keyframe.store(false, Ordering::Relaxed);
            new_segment = true;
        }
        let vp8 = if self.codec == CodecFamily::Vp8 {
            super::keyframe::vp8_ids(p.payload)
        } else {
            None
        };
        if new_segment {
            let last = self.last_out_seq.load(Ordering::Relaxed);
            if started {
                // Resume right after the last packet this subscriber got: no gap it would NACK.
                self.seq_offset
                    .store(p.seq.wrapping_sub(last.wrapping_add(1)), Ordering::Relaxed);
                if self.seg_layer.load(Ordering::Relaxed) != p.layer {
                    // Another layer: another timestamp base and picture-id space. Go on from
                    // the last ones sent, the timestamp by the time that passed.
                    let gap_ms = p
                        .now_ms
                        .saturating_sub(self.last_out_ms.load(Ordering::Relaxed));
                    let gap = (gap_ms * VIDEO_TICKS_PER_MS).clamp(1, u64::from(u32::MAX / 2));
                    let want_ts = self
                        .last_out_ts
                        .load(Ordering::Relaxed)
                        .wrapping_add(gap as u32);
                    self.ts_offset
                        .store(p.timestamp.wrapping_sub(want_ts), Ordering::Relaxed);
                    if let Some(ids) = vp8 {
                        if let Some((_, pid, _)) = ids.picture_id {
                            let want = self.last_pid.load(Ordering::Relaxed).wrapping_add(1);
                            self.pid_offset
                                .store(pid.wrapping_sub(want), Ordering::Relaxed);
                        }
                        if let Some((_, tl0)) = ids.tl0 {
                            let want = self.last_tl0.load(Ordering::Relaxed).wrapping_add(1);
                            self.tl0_offset
                                .store(tl0.wrapping_sub(want), Ordering::Relaxed);
                        }
                    }
                }
            }
            self.seg_layer.store(p.layer, Ordering::Relaxed);
            self.seg_start.store(
                p.seq.wrapping_sub(self.seq_offset.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
        }
        let seq = p.seq.wrapping_sub(self.seq_offset.load(Ordering::Relaxed));
        let mut roc = self.roc.load(Ordering::Relaxed);
        if started {
            let last = self.last_out_seq.load(Ordering::Relaxed);
            // Outgoing numbers are contiguous, so a smaller one far below is a wrap.
            if seq < last && last - seq > 0x8000 {
                roc = roc.wrapping_add(1);
                self.roc.store(roc, Ordering::Relaxed);
            }
        }
        self.started.store(true, Ordering::Relaxed);
        self.last_out_seq.store(seq, Ordering::Relaxed);
        let out = Outgoing {
            seq,
            roc,
            timestamp: p
                .timestamp
                .wrapping_sub(self.ts_offset.load(Ordering::Relaxed)),
            rewrite: self.rewrite(vp8),
        };
        self.last_out_ts.store(out.timestamp, Ordering::Relaxed);
        self.last_out_ms.store(p.now_ms, Ordering::Relaxed);
        if let Some((_, v, _)) = out.rewrite.picture_id {
            self.last_pid.store(v, Ordering::Relaxed);
        }
        if let Some((_, v)) = out.rewrite.tl0 {
            self.last_tl0.store(v, Ordering::Relaxed);
        }
        Some(out)
    }

    /// The VP8 ids as this subscriber gets them (the current segment's offsets).
    fn rewrite(&self, vp8: Option<super::keyframe::Vp8Ids>) -> Rewrite {
        let Some(ids) = vp8 else {
            return Rewrite::default();
        };
        let pid_offset = self.pid_offset.load(Ordering::Relaxed);
        let tl0_offset = self.tl0_offset.load(Ordering::Relaxed);
        Rewrite {
            picture_id: ids.picture_id.map(|(at, v, wide)| {
                let mask = if wide { 0x7fff } else { 0x7f };
                (at, v.wrapping_sub(pid_offset) & mask, wide)
            }),
            tl0: ids.tl0.map(|(at, v)| (at, v.wrapping_sub(tl0_offset))),
        }
    }

    /// A cached packet of the current segment as it was sent (for a NACK re-send): the same
    /// timestamp and VP8 ids, so the re-sent bytes are the original ones.
    pub(crate) fn resent(&self, timestamp: u32, payload: &[u8]) -> (u32, Rewrite) {
        let vp8 = if self.codec == CodecFamily::Vp8 {
            super::keyframe::vp8_ids(payload)
        } else {
            None
        };
        (
            timestamp.wrapping_sub(self.ts_offset.load(Ordering::Relaxed)),
            self.rewrite(vp8),
        )
    }

    /// The RTP time of a sender report of `layer` in this subscriber's timestamps, if this
    /// subscriber is sent that layer.
    pub(crate) fn report_time(&self, layer: u8, rtp_time: u32) -> Option<u32> {
        (self.seg_layer.load(Ordering::Relaxed) == layer)
            .then(|| rtp_time.wrapping_sub(self.ts_offset.load(Ordering::Relaxed)))
    }

    /// Counts a packet sent (for this stream's sender reports).
    pub(crate) fn count(&self, payload_len: usize) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.octets_sent
            .fetch_add(payload_len as u32, Ordering::Relaxed);
    }

    /// The packet as this subscriber gets it, for rtc's sender (when we cannot seal it
    /// ourselves): payload shared, no extensions, no allocation. (Before the keys are known;
    /// the VP8 ids are not rewritten on this path, which only carries a stream's start.)
    pub(crate) fn packet(&self, packet: &rtp::Packet, out: &Outgoing) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                padding: false,
                // Extension ids differ per connection; the subscriber's connection adds the
                // ones it negotiated.
                extension: false,
                marker: packet.header.marker,
                payload_type: self.payload_type,
                sequence_number: out.seq,
                timestamp: out.timestamp,
                ssrc: self.ssrc,
                csrc: Vec::new(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload: packet.payload.clone(),
        }
    }

    /// After a send failed: video waits for the next keyframe.
    pub(crate) fn has_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// A newcomer's video that has not started yet (it may start from the cached GOP).
    pub(crate) fn is_newcomer(&self) -> bool {
        self.codec != CodecFamily::Audio
            && self.waiting_keyframe.load(Ordering::Relaxed)
            && !self.started.load(Ordering::Relaxed)
    }

    /// For answering a NACK: the layer and incoming sequence number of the outgoing packet
    /// `seq`, and its rollover counter, if it was sent in the current segment.
    pub(crate) fn incoming_of(&self, seq: u16) -> Option<(u8, u16, u32)> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last_out_seq.load(Ordering::Relaxed);
        let behind = last.wrapping_sub(seq);
        if behind >= 0x8000 {
            return None; // not sent yet
        }
        let seg_start = self.seg_start.load(Ordering::Relaxed);
        if seq.wrapping_sub(seg_start) >= 0x8000 {
            return None; // before the current segment (another layer, or before a restart)
        }
        let roc = self.roc.load(Ordering::Relaxed);
        let roc = if seq > last { roc.wrapping_sub(1) } else { roc };
        Some((
            self.seg_layer.load(Ordering::Relaxed),
            seq.wrapping_add(self.seq_offset.load(Ordering::Relaxed)),
            roc,
        ))
    }

    pub(crate) fn lost(&self) {
        if self.codec != CodecFamily::Audio {
            self.waiting_keyframe.store(true, Ordering::Relaxed);
        }
    }
}

/// What the engine does with a packet that arrived on a feed.
pub(crate) enum Arrival {
    Forward,
    /// Parked: thrown away; `report` once in a while so the member task can tell the client.
    Discard {
        report: bool,
    },
}

/// One track arriving on a publish connection (see the module doc).
pub(crate) struct Feed {
    /// Engine-wide id (its packet cache is kept under it).
    pub(crate) id: u64,
    kind: MediaKind,
    pub(crate) family: CodecFamily,
    client_track_id: String,
    codec: Codec,
    pub(crate) keyframes: KeyframeRequester,
    /// Simulcast layers seen so far, one bit per layer (bit 0 only for a single-layer track).
    layers: AtomicU8,
    /// Per layer: payload bytes arrived, the count at the last measurement, the measured rate
    /// (bits/s, smoothed; 0 = not arriving) and the picture height of its last keyframe.
    /// Written by the engine thread only.
    layer_octets: [AtomicU64; MAX_LAYERS],
    layer_octets_seen: [AtomicU64; MAX_LAYERS],
    layer_bps: [AtomicU32; MAX_LAYERS],
    layer_height: [AtomicU16; MAX_LAYERS],
    member: MemberId,
    /// The current publication's subscribers; empty while parked.
    pub(crate) downs: Arc<ArcSwap<Vec<Arc<DownTrack>>>>,
    /// The current publication, 0 while parked. Only `publish` and `Forwarder::drop` move it.
    publication: AtomicU64,
    /// While parked: when (ms since `epoch`) arriving media was last reported, 0 = not yet.
    parked_report_ms: AtomicU64,
    /// Set once the track ended or its connection closed.
    ended: AtomicBool,
    /// When (ms since `epoch`, ≥ 1) the last packet arrived; 0 = none yet.
    last_packet_ms: AtomicU64,
    epoch: Instant,
}

/// A parked feed whose media still arrives is reported this often (and a feed counts as
/// active when a packet came this recently).
const PARKED_REPORT_EVERY: Duration = Duration::from_secs(1);

static PUBLICATIONS: AtomicU64 = AtomicU64::new(1);
static FEEDS: AtomicU64 = AtomicU64::new(1);

impl Feed {
    /// `now`: the engine's clock (the feed's arrival times count from it).
    pub(crate) fn new(
        now: Instant,
        member: MemberId,
        kind: MediaKind,
        client_track_id: String,
        codec: Codec,
    ) -> Arc<Feed> {
        Arc::new(Feed {
            id: FEEDS.fetch_add(1, Ordering::Relaxed),
            kind,
            family: CodecFamily::from_mime(&codec.mime_type),
            client_track_id,
            codec,
            keyframes: KeyframeRequester::default(),
            layers: AtomicU8::new(0),
            layer_octets: Default::default(),
            layer_octets_seen: Default::default(),
            layer_bps: Default::default(),
            layer_height: Default::default(),
            member,
            downs: Arc::new(ArcSwap::from_pointee(Vec::new())),
            publication: AtomicU64::new(0),
            parked_report_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            last_packet_ms: AtomicU64::new(0),
            epoch: now,
        })
    }

    pub(crate) fn client_track_id(&self) -> &str {
        &self.client_track_id
    }

    pub(crate) fn kind(&self) -> MediaKind {
        self.kind
    }

    /// A simulcast layer (or the one layer, 0) of this track is arriving.
    pub(crate) fn add_layer(&self, layer: u8) {
        self.layers.fetch_or(1 << layer, Ordering::Relaxed);
    }

    /// A packet of `layer` arrived (`payload_len` bytes; `keyframe`: its first packet).
    pub(crate) fn count_layer(&self, layer: u8, payload: &[u8], keyframe: bool) {
        let l = usize::from(layer);
        self.layer_octets[l].fetch_add(payload.len() as u64, Ordering::Relaxed);
        if keyframe && self.family == CodecFamily::Vp8 {
            if let Some((_, h)) = super::keyframe::vp8_keyframe_size(payload) {
                self.layer_height[l].store(h, Ordering::Relaxed);
            }
        }
    }

    /// Measures each layer's rate over the `secs` since the last measurement.
    pub(crate) fn measure(&self, secs: f64) {
        for l in 0..MAX_LAYERS {
            let now = self.layer_octets[l].load(Ordering::Relaxed);
            let before = self.layer_octets_seen[l].swap(now, Ordering::Relaxed);
            let bps = (now.wrapping_sub(before) as f64 * 8.0 / secs.max(0.001)) as u32;
            let old = self.layer_bps[l].load(Ordering::Relaxed);
            let smoothed = if bps == 0 || old == 0 {
                bps
            } else {
                ((u64::from(old) * 2 + u64::from(bps)) / 3) as u32
            };
            self.layer_bps[l].store(smoothed, Ordering::Relaxed);
        }
    }

    /// Each layer's measured rate and picture height, for the allocator.
    pub(crate) fn layer_info(&self) -> [crate::sfu::allocator::LayerInfo; MAX_LAYERS] {
        std::array::from_fn(|l| crate::sfu::allocator::LayerInfo {
            bps: self.layer_bps[l].load(Ordering::Relaxed),
            height: self.layer_height[l].load(Ordering::Relaxed),
        })
    }

    /// The layers that arrive, one bit each.
    pub(crate) fn layers(&self) -> u8 {
        self.layers.load(Ordering::Relaxed)
    }

    /// The best layer at or below `target` that this track has, else its lowest one; None
    /// for `PAUSED`.
    pub(crate) fn best_layer(&self, target: u8) -> Option<u8> {
        if target == PAUSED {
            return None;
        }
        // A feed nobody told of its layers has one: 0.
        let present = self.layers().max(1);
        let at_most = if target >= 7 {
            present
        } else {
            present & ((2u8 << target) - 1)
        };
        if at_most != 0 {
            Some(7 - at_most.leading_zeros() as u8)
        } else {
            Some(present.trailing_zeros() as u8)
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The track ended or its connection closed: nothing is forwarded any more.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.downs.store(Arc::new(Vec::new()));
    }

    /// Whether media arrived within the last second.
    pub(crate) fn is_active(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_packet_ms.load(Ordering::Relaxed);
        last != 0 && now.saturating_sub(last) <= PARKED_REPORT_EVERY.as_millis() as u64
    }

    /// Notes a packet's arrival at `now` and says what to do with it.
    pub(crate) fn arrived(&self, now: Instant) -> Arrival {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis().max(1) as u64;
        let previous = self.last_packet_ms.swap(now_ms, Ordering::Relaxed);
        if self.publication.load(Ordering::Acquire) != 0 {
            return Arrival::Forward;
        }
        let resumed = now_ms.saturating_sub(previous) > PARKED_REPORT_EVERY.as_millis() as u64;
        Arrival::Discard {
            report: self.parked_report_due(now_ms, resumed),
        }
    }

    /// Starts a publication of this feed as `source`, unless one is running or it ended.
    pub(crate) fn publish(self: &Arc<Self>, source: Source) -> Option<Forwarder> {
        if self.is_ended() {
            return None;
        }
        let id = PUBLICATIONS.fetch_add(1, Ordering::Relaxed);
        self.publication
            .compare_exchange(0, id, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.parked_report_ms.store(0, Ordering::Relaxed);
        Some(Forwarder {
            info: TrackInfo {
                id: TrackId::new(),
                member: self.member,
                kind: self.kind,
                source,
                client_track_id: self.client_track_id.clone(),
                codec: self.codec.clone(),
                keyframes: self.keyframes.clone(),
                feed: self.id,
            },
            feed: self.clone(),
            publication: id,
        })
    }

    /// Once per `PARKED_REPORT_EVERY` while parked and media keeps arriving: true if this
    /// packet (at `now_ms`) should be reported. Media that resumes after a pause (the client
    /// turned its camera back on) is reported at once; media that simply goes on after the
    /// feed was parked only after a while, so packets in flight at that moment are not.
    fn parked_report_due(&self, now_ms: u64, resumed: bool) -> bool {
        let last = self.parked_report_ms.load(Ordering::Relaxed);
        let due = (last == 0 && resumed)
            || (last != 0 && now_ms.saturating_sub(last) >= PARKED_REPORT_EVERY.as_millis() as u64);
        if last == 0 || due {
            self.parked_report_ms.store(now_ms, Ordering::Relaxed);
        }
        due
    }
}

/// The room actor's handle on one publication of a feed. Dropping it stops forwarding at once
/// and parks the feed (which keeps reading and discarding).
pub struct Forwarder {
    info: TrackInfo,
    feed: Arc<Feed>,
    publication: u64,
}

impl Forwarder {
    pub fn info(&self) -> &TrackInfo {
        &self.info
    }

    /// The feed this publishes (`testing::Sim` parks and re-publishes it).
    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    fn current(&self) -> bool {
        self.feed.publication.load(Ordering::Acquire) == self.publication
    }

    /// Adds a subscriber's down-track. Replaces any earlier down-track of the same member.
    /// The newcomer waits for a keyframe; its first packet while waiting asks the publisher for
    /// one. (Asking here would be too early: its connection is usually not up yet, and the
    /// request would use up the pacing window for nothing.)
    pub fn add_subscriber(&self, down: Arc<DownTrack>) {
        if !self.current() || self.feed.is_ended() {
            return;
        }
        let downs = &self.feed.downs;
        let member = down.member;
        let mut next: Vec<Arc<DownTrack>> = downs
            .load()
            .iter()
            .filter(|d| d.member != member)
            .cloned()
            .collect();
        next.push(down);
        downs.store(Arc::new(next));
    }

    /// Stops sending to `member` at once.
    pub fn remove_subscriber(&self, member: MemberId) {
        if !self.current() {
            return;
        }
        let downs = &self.feed.downs;
        let current = downs.load();
        if current.iter().any(|d| d.member == member) {
            let next: Vec<Arc<DownTrack>> = current
                .iter()
                .filter(|d| d.member != member)
                .cloned()
                .collect();
            downs.store(Arc::new(next));
        }
    }

    pub fn subscriber_count(&self) -> usize {
        if self.current() {
            self.feed.downs.load().len()
        } else {
            0
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Park, unless a newer publication took over already.
        if self
            .feed
            .publication
            .compare_exchange(self.publication, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.feed.downs.store(Arc::new(Vec::new()));
        }
    }
}
