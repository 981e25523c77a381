//! The packet path. One forwarding task per published track reads RTP and hands each packet to
//! every subscriber's down-track; each subscribe connection has one writer task that drains its
//! bounded queue into webrtc.
//!
//! The forwarding loop reads an immutable snapshot of down-tracks (`ArcSwap`, replaced only by
//! the room actor), rewrites the header fields per subscriber, and pushes into the
//! subscriber's preallocated ring (`SubscriberQueue`, never blocking). It
//! never awaits a lock, the room actor, the database or a subscriber; a full queue drops (video:
//! up to the next keyframe) and is counted. Cloning the packet shares the payload `Bytes` and
//! builds a header with empty extension/CSRC vectors: no heap allocation per packet.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::keyframe::{is_keyframe_request, starts_keyframe, CodecFamily, KeyframeRequester};
use super::metrics::{GaugeGuard, Metrics};
use super::{Codec, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{MediaKind, Source};

/// One packet on its way to one subscriber.
pub(crate) struct Outgoing {
    pub(crate) local: Arc<TrackLocalStaticRTP>,
    pub(crate) packet: rtp::Packet,
}

/// One subscribe connection's queue: a ring allocated once (tokio's mpsc allocates a block
/// every few dozen messages under load; this allocates nothing per packet) plus a wake-up for
/// the writer task. Many forwarders push, one writer pops.
pub(crate) struct SubscriberQueue {
    ring: ArrayQueue<Outgoing>,
    wake: Notify,
}

impl SubscriberQueue {
    pub(crate) fn new(capacity: usize) -> Arc<SubscriberQueue> {
        Arc::new(SubscriberQueue {
            ring: ArrayQueue::new(capacity),
            wake: Notify::new(),
        })
    }

    /// Queues without waiting; false if full.
    fn push(&self, out: Outgoing) -> bool {
        if self.ring.push(out).is_err() {
            return false;
        }
        // Stores a permit if the writer is busy, so a push between its last pop and its next
        // wait is never missed.
        self.wake.notify_one();
        true
    }
}

/// One published track as seen by the subscribers of one member: where to queue, and how to
/// rewrite the header for that connection.
pub struct DownTrack {
    pub(crate) member: MemberId,
    pub(crate) track: TrackId,
    pub(crate) codec: CodecFamily,
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
    pub(crate) local: Arc<TrackLocalStaticRTP>,
    pub(crate) queue: Arc<SubscriberQueue>,
    /// The subscribe connection's state: forward only while connected.
    pub(crate) connected: Arc<AtomicBool>,
    /// Asks this track's publisher for a keyframe.
    pub(crate) keyframes: KeyframeRequester,
    /// Forwarder-owned state. Only the one forwarding task of this track writes these, so
    /// relaxed atomics suffice; they are atomics only because the down-track is shared.
    pub(crate) waiting_keyframe: AtomicBool,
    pub(crate) started: AtomicBool,
    pub(crate) last_out_seq: AtomicU16,
    pub(crate) seq_offset: AtomicU16,
}

impl DownTrack {
    pub fn member(&self) -> MemberId {
        self.member
    }

    pub fn track(&self) -> TrackId {
        self.track
    }

    /// Rewrites and queues one packet.
    fn forward(&self, header: &rtp::header::Header, payload: &Bytes, keyframe: bool) -> Outcome {
        if !self.connected.load(Ordering::Acquire) {
            return Outcome::Skipped;
        }
        let video = self.codec != CodecFamily::Audio;
        if video && self.waiting_keyframe.load(Ordering::Relaxed) {
            if !keyframe {
                // Paced to one PLI per interval by the keyframe task; this is only a wake-up.
                self.keyframes.request();
                return Outcome::Skipped;
            }
            self.waiting_keyframe.store(false, Ordering::Relaxed);
            if self.started.load(Ordering::Relaxed) {
                // Resume right after the last packet this subscriber got: no gap it would NACK.
                let last = self.last_out_seq.load(Ordering::Relaxed);
                self.seq_offset.store(
                    header.sequence_number.wrapping_sub(last.wrapping_add(1)),
                    Ordering::Relaxed,
                );
            }
        }
        let seq = header
            .sequence_number
            .wrapping_sub(self.seq_offset.load(Ordering::Relaxed));
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                padding: false,
                // Extension ids differ per connection; forwarding them unmapped makes webrtc drop
                // the packet, so they are stripped.
                extension: false,
                marker: header.marker,
                payload_type: self.payload_type,
                sequence_number: seq,
                timestamp: header.timestamp,
                ssrc: self.ssrc,
                csrc: Vec::new(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload: payload.clone(),
        };
        let queued = self.queue.push(Outgoing {
            local: self.local.clone(),
            packet,
        });
        match queued {
            true => {
                self.started.store(true, Ordering::Relaxed);
                self.last_out_seq.store(seq, Ordering::Relaxed);
                Outcome::Sent
            }
            false => {
                if video {
                    self.waiting_keyframe.store(true, Ordering::Relaxed);
                }
                Outcome::Dropped
            }
        }
    }
}

/// What became of one packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    /// Not connected yet, or waiting for a keyframe to start from.
    Skipped,
    /// The subscriber's queue was full.
    Dropped,
}

/// One track arriving on a publish connection. It lives as long as the track does (or until
/// its publish connection closes), whether or not it is forwarded: its task keeps reading, so
/// a track the room stopped forwarding (floor taken back, muted, refused) is read and thrown
/// away instead of backing up inside webrtc-rs, whose full queue logs every further packet.
///
/// Forwarding is a *publication*: `publish` hands out a `Forwarder` (with a fresh `TrackId`)
/// for the room; dropping it parks the feed again. So the same track can be forwarded,
/// parked and forwarded again (floor granted twice) without the client renegotiating.
pub(crate) struct Feed {
    kind: MediaKind,
    client_track_id: String,
    codec: Codec,
    keyframes: KeyframeRequester,
    member: MemberId,
    /// The current publication's subscribers; empty while parked.
    downs: Arc<ArcSwap<Vec<Arc<DownTrack>>>>,
    /// The current publication, 0 while parked. Only `publish` and `Forwarder::drop` move it.
    publication: AtomicU64,
    /// While parked: when (ms since `epoch`) arriving media was last reported, 0 = not yet.
    /// Written by the feed's task, reset by `publish`.
    parked_report_ms: AtomicU64,
    /// Set once the track ended or its connection closed.
    ended: AtomicBool,
    /// Whether a packet arrived in the last `ACTIVE_WITHIN` (read by `is_active`).
    last_packet_ms: AtomicU64,
    epoch: Instant,
    cancel: CancellationToken,
}

/// A parked feed whose media still arrives is reported this often (and a feed counts as
/// active when a packet came this recently).
const PARKED_REPORT_EVERY: Duration = Duration::from_secs(1);

static PUBLICATIONS: AtomicU64 = AtomicU64::new(1);

impl Feed {
    pub(crate) fn client_track_id(&self) -> &str {
        &self.client_track_id
    }

    pub(crate) fn kind(&self) -> MediaKind {
        self.kind
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire) || self.cancel.is_cancelled()
    }

    /// Whether media arrived within the last second.
    pub(crate) fn is_active(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_packet_ms.load(Ordering::Relaxed);
        last != 0 && now.saturating_sub(last) <= PARKED_REPORT_EVERY.as_millis() as u64
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
        if !self.current() {
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

/// What a feed's task reports to the member task that owns its publish connection.
pub(crate) type FeedReport = Box<dyn Fn() + Send + Sync>;

/// Starts reading `remote` and returns its feed, parked. The track's codec and SSRC are read
/// once, before the loop. `parked_media` is called (at most once a second) while the feed is
/// parked and its media keeps arriving.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    member: MemberId,
    kind: MediaKind,
    client_track_id: String,
    codec: Codec,
    remote: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    keyframe_interval: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    parked_media: FeedReport,
) -> Arc<Feed> {
    let family = CodecFamily::from_mime(&codec.mime_type);
    let feed = Arc::new(Feed {
        kind,
        client_track_id,
        codec,
        keyframes: KeyframeRequester::default(),
        member,
        downs: Arc::new(ArcSwap::from_pointee(Vec::new())),
        publication: AtomicU64::new(0),
        parked_report_ms: AtomicU64::new(0),
        ended: AtomicBool::new(false),
        last_packet_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        cancel,
    });
    if kind == MediaKind::Video {
        let guard = GaugeGuard::new(&metrics, |m| &m.keyframe_tasks);
        tokio::spawn(keyframe_loop(
            remote.clone(),
            media_ssrc,
            feed.keyframes.clone(),
            keyframe_interval,
            feed.cancel.clone(),
            metrics.clone(),
            guard,
        ));
    }
    let guard = GaugeGuard::new(&metrics, |m| &m.forwarders);
    tokio::spawn(forward_loop(
        remote,
        family,
        feed.clone(),
        metrics,
        parked_media,
        guard,
    ));
    feed
}

async fn forward_loop(
    remote: Arc<dyn TrackRemote>,
    codec: CodecFamily,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
    parked_media: FeedReport,
    _guard: GaugeGuard,
) {
    loop {
        let event = tokio::select! {
            _ = feed.cancel.cancelled() => break,
            event = remote.poll() => event,
        };
        match event {
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                let now = feed.epoch.elapsed().as_millis().max(1) as u64;
                let previous = feed.last_packet_ms.swap(now, Ordering::Relaxed);
                let resumed = now.saturating_sub(previous) > PARKED_REPORT_EVERY.as_millis() as u64;
                if feed.publication.load(Ordering::Acquire) != 0 {
                    fan_out(codec, &feed.downs.load(), &packet, &metrics);
                } else {
                    metrics.packets_discarded.fetch_add(1, Ordering::Relaxed);
                    if feed.parked_report_due(now, resumed) {
                        parked_media();
                    }
                }
            }
            Some(TrackRemoteEvent::OnEnded) | None => break,
            Some(_) => {}
        }
    }
    feed.ended.store(true, Ordering::Release);
    feed.downs.store(Arc::new(Vec::new()));
    tracing::debug!("forwarder stopped");
}

/// The per-packet work: one keyframe check, then rewrite and queue for every subscriber.
fn fan_out(codec: CodecFamily, downs: &[Arc<DownTrack>], packet: &rtp::Packet, metrics: &Metrics) {
    metrics.packets_received.fetch_add(1, Ordering::Relaxed);
    let keyframe = starts_keyframe(codec, &packet.payload);
    let (mut sent, mut dropped) = (0u64, 0u64);
    for down in downs {
        match down.forward(&packet.header, &packet.payload, keyframe) {
            Outcome::Sent => sent += 1,
            Outcome::Dropped => dropped += 1,
            Outcome::Skipped => {}
        }
    }
    metrics.packets_forwarded.fetch_add(sent, Ordering::Relaxed);
    if dropped > 0 {
        metrics
            .packets_dropped
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The forwarding path without a network, for the micro-benchmarks in benches/ and the
/// allocation test: `n` connected down-tracks with their queues; the caller drains them.
#[doc(hidden)]
pub struct FanoutHarness {
    downs: Vec<Arc<DownTrack>>,
    queues: Vec<Arc<SubscriberQueue>>,
    metrics: Metrics,
}

impl FanoutHarness {
    pub fn new(subscribers: usize, queue: usize) -> FanoutHarness {
        let mut downs = Vec::with_capacity(subscribers);
        let mut queues = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            let q = SubscriberQueue::new(queue);
            let track = rtc::media_stream::MediaStreamTrack::new(
                format!("bench-{i}"),
                format!("bench-{i}"),
                format!("bench-{i}"),
                rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video,
                vec![],
            );
            downs.push(Arc::new(DownTrack {
                member: MemberId::new(),
                track: TrackId::new(),
                codec: CodecFamily::Vp8,
                ssrc: 1000 + i as u32,
                payload_type: 96,
                local: Arc::new(TrackLocalStaticRTP::new(track)),
                queue: q.clone(),
                connected: Arc::new(AtomicBool::new(true)),
                keyframes: KeyframeRequester::default(),
                waiting_keyframe: AtomicBool::new(false),
                started: AtomicBool::new(false),
                last_out_seq: AtomicU16::new(0),
                seq_offset: AtomicU16::new(0),
            }));
            queues.push(q);
        }
        FanoutHarness {
            downs,
            queues,
            metrics: Metrics::default(),
        }
    }

    /// Forwards one packet to every down-track, exactly as the forwarding task does.
    pub fn forward(&self, packet: &rtp::Packet) {
        fan_out(CodecFamily::Vp8, &self.downs, packet, &self.metrics);
    }

    /// Empties every queue (the writer tasks' side); returns how many packets were queued.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        for q in &self.queues {
            while q.ring.pop().is_some() {
                n += 1;
            }
        }
        n
    }
}

/// Sends the publisher a PLI when asked, at most once per `interval`: requests inside the
/// window merge into one sent when it ends.
async fn keyframe_loop(
    remote: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    requests: KeyframeRequester,
    interval: Duration,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: GaugeGuard,
) {
    let mut last_sent: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = requests.requested() => {}
        }
        if let Some(last) = last_sent {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(last + interval) => {}
            }
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if remote.write_rtcp(vec![Box::new(pli)]).await.is_err() {
            return;
        }
        metrics
            .keyframe_requests_sent
            .fetch_add(1, Ordering::Relaxed);
        last_sent = Some(tokio::time::Instant::now());
    }
}

/// Drains one subscribe connection's queue into webrtc. Ends when cancelled.
pub(crate) async fn writer_loop(
    queue: Arc<SubscriberQueue>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: GaugeGuard,
) {
    loop {
        while let Some(out) = queue.ring.pop() {
            if out.local.write_rtp(out.packet).await.is_err() {
                metrics.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            if cancel.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = queue.wake.notified() => {}
        }
    }
}

/// Reads one down-track's RTCP from the subscriber and turns PLI/FIR into keyframe requests.
pub(crate) async fn rtcp_loop(
    local: Arc<TrackLocalStaticRTP>,
    keyframes: KeyframeRequester,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: GaugeGuard,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = local.poll() => event,
        };
        match event {
            Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                if is_keyframe_request(&packets) {
                    metrics
                        .keyframe_requests_received
                        .fetch_add(1, Ordering::Relaxed);
                    keyframes.request();
                }
            }
            Some(_) => {}
            // Not bound yet (the answer is still being applied) or unbound: look again soon;
            // `cancel` ends this when the track is removed.
            None => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
