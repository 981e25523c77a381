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
//! and how to rewrite the header for it. `DownTrack::rewrite` builds the outgoing packet with
//! the payload shared (`Bytes`) and empty extension/CSRC vectors: no heap allocation.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;

use super::conn_key::ConnKey;
use super::keyframe::{CodecFamily, KeyframeRequester};
use super::{Codec, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{MediaKind, Source};

/// One published track as one subscriber receives it: where it goes (engine connection and
/// its sender), and how to rewrite the header for that connection.
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
}

const CATCHING_UP: u32 = 1 << 16;
/// Set (without CATCHING_UP) when a newcomer was not given the cached GOP (too long).
const GOP_SKIPPED: u32 = 1 << 17;

impl DownTrack {
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

    /// Whether this subscriber gets the packet with sequence number `seq_in`, and if so under
    /// which outgoing sequence number and SRTP rollover counter. None while it waits for a
    /// keyframe to start from (a newcomer, or after a loss that broke the picture).
    pub(crate) fn admit(&self, seq_in: u16, keyframe: bool) -> Option<(u16, u32)> {
        let video = self.codec != CodecFamily::Audio;
        if video && self.waiting_keyframe.load(Ordering::Relaxed) {
            if !keyframe {
                // Paced to one PLI per interval by the engine; this only marks the want.
                self.keyframes.request();
                return None;
            }
            self.waiting_keyframe.store(false, Ordering::Relaxed);
            if self.started.load(Ordering::Relaxed) {
                // Resume right after the last packet this subscriber got: no gap it would NACK.
                let last = self.last_out_seq.load(Ordering::Relaxed);
                self.seq_offset
                    .store(seq_in.wrapping_sub(last.wrapping_add(1)), Ordering::Relaxed);
            }
        }
        let seq = seq_in.wrapping_sub(self.seq_offset.load(Ordering::Relaxed));
        let mut roc = self.roc.load(Ordering::Relaxed);
        if self.started.load(Ordering::Relaxed) {
            let last = self.last_out_seq.load(Ordering::Relaxed);
            // Outgoing numbers are contiguous, so a smaller one far below is a wrap.
            if seq < last && last - seq > 0x8000 {
                roc = roc.wrapping_add(1);
                self.roc.store(roc, Ordering::Relaxed);
            }
        }
        self.started.store(true, Ordering::Relaxed);
        self.last_out_seq.store(seq, Ordering::Relaxed);
        Some((seq, roc))
    }

    /// Counts a packet sent (for this stream's sender reports).
    pub(crate) fn count(&self, payload_len: usize) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.octets_sent
            .fetch_add(payload_len as u32, Ordering::Relaxed);
    }

    /// The packet as this subscriber gets it, for rtc's sender (when we cannot seal it
    /// ourselves): payload shared, no extensions, no allocation.
    pub(crate) fn packet(&self, packet: &rtp::Packet, seq: u16) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                padding: false,
                // Extension ids differ per connection; the subscriber's connection adds the
                // ones it negotiated.
                extension: false,
                marker: packet.header.marker,
                payload_type: self.payload_type,
                sequence_number: seq,
                timestamp: packet.header.timestamp,
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

    /// The outgoing packet `seq` was sent with, and its rollover counter, if it was sent
    /// under the current numbering (for answering a NACK).
    pub(crate) fn incoming_of(&self, seq: u16) -> Option<(u16, u32)> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last_out_seq.load(Ordering::Relaxed);
        let behind = last.wrapping_sub(seq);
        if behind >= 0x8000 {
            return None; // not sent yet
        }
        let roc = self.roc.load(Ordering::Relaxed);
        let roc = if seq > last { roc.wrapping_sub(1) } else { roc };
        Some((
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
