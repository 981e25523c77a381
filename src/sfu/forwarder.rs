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

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
use super::TrackInfo;
use crate::ids::{MemberId, TrackId};
use crate::protocol::MediaKind;

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

/// The room actor's handle on one published track's forwarding task. Dropping it stops the
/// task (and the keyframe task with it).
pub struct Forwarder {
    info: TrackInfo,
    downs: Arc<ArcSwap<Vec<Arc<DownTrack>>>>,
    cancel: CancellationToken,
}

impl Forwarder {
    pub fn info(&self) -> &TrackInfo {
        &self.info
    }

    /// Adds a subscriber's down-track. Replaces any earlier down-track of the same member.
    /// The newcomer waits for a keyframe; its first packet while waiting asks the publisher for
    /// one. (Asking here would be too early: its connection is usually not up yet, and the
    /// request would use up the pacing window for nothing.)
    pub fn add_subscriber(&self, down: Arc<DownTrack>) {
        let member = down.member;
        let mut next: Vec<Arc<DownTrack>> = self
            .downs
            .load()
            .iter()
            .filter(|d| d.member != member)
            .cloned()
            .collect();
        next.push(down);
        self.downs.store(Arc::new(next));
    }

    /// Stops sending to `member` at once.
    pub fn remove_subscriber(&self, member: MemberId) {
        let current = self.downs.load();
        if current.iter().any(|d| d.member == member) {
            let next: Vec<Arc<DownTrack>> = current
                .iter()
                .filter(|d| d.member != member)
                .cloned()
                .collect();
            self.downs.store(Arc::new(next));
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.downs.load().len()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts forwarding `remote` and returns the handle for the room. The track's codec and SSRC
/// are read once here, before the loop.
pub(crate) fn spawn(
    info: TrackInfo,
    remote: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    keyframe_interval: Duration,
    metrics: Arc<Metrics>,
) -> Forwarder {
    let downs: Arc<ArcSwap<Vec<Arc<DownTrack>>>> = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let cancel = CancellationToken::new();
    let codec = CodecFamily::from_mime(&info.codec.mime_type);

    if info.kind == MediaKind::Video {
        let guard = GaugeGuard::new(&metrics, |m| &m.keyframe_tasks);
        tokio::spawn(keyframe_loop(
            remote.clone(),
            media_ssrc,
            info.keyframes.clone(),
            keyframe_interval,
            cancel.clone(),
            metrics.clone(),
            guard,
        ));
    }
    let guard = GaugeGuard::new(&metrics, |m| &m.forwarders);
    tokio::spawn(forward_loop(
        remote,
        codec,
        downs.clone(),
        cancel.clone(),
        metrics,
        guard,
    ));
    Forwarder {
        info,
        downs,
        cancel,
    }
}

async fn forward_loop(
    remote: Arc<dyn TrackRemote>,
    codec: CodecFamily,
    downs: Arc<ArcSwap<Vec<Arc<DownTrack>>>>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    _guard: GaugeGuard,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            event = remote.poll() => event,
        };
        match event {
            Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                fan_out(codec, &downs.load(), &packet, &metrics);
            }
            Some(TrackRemoteEvent::OnEnded) | None => break,
            Some(_) => {}
        }
    }
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
