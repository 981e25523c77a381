//! Media-path counters: plain atomics, read by /metrics and by tests that count leaked tasks.
//! Gauges are RAII guards moved into the thing they count, so a leak shows as a number.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Peer connections built and not yet closed.
    pub peer_connections: AtomicI64,
    /// Forwarding tasks (one per published track) still running.
    pub forwarders: AtomicI64,
    /// Subscriber writer tasks (one per subscribe connection) still running.
    pub writers: AtomicI64,
    /// Tasks reading subscribers' RTCP (one per down-track) still running.
    pub rtcp_readers: AtomicI64,
    /// Tasks sending keyframe requests upstream (one per published video track).
    pub keyframe_tasks: AtomicI64,
    pub packets_received: AtomicU64,
    pub packets_forwarded: AtomicU64,
    /// Packets not queued because a subscriber's queue was full (or it awaited a keyframe
    /// after such a drop).
    pub packets_dropped: AtomicU64,
    /// Packets read from a track that is not forwarded (floor taken back, muted, refused):
    /// read and thrown away, so nothing backs up into the WebRTC library.
    pub packets_discarded: AtomicU64,
    /// `write_rtp` calls that failed (e.g. a connection going away mid-write).
    pub write_errors: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    pub keyframe_requests_sent: AtomicU64,
}

impl Metrics {
    /// Every task and connection gauge; all zero when nothing is left behind.
    pub fn live_tasks(&self) -> LiveCounts {
        LiveCounts {
            peer_connections: self.peer_connections.load(Ordering::SeqCst),
            forwarders: self.forwarders.load(Ordering::SeqCst),
            writers: self.writers.load(Ordering::SeqCst),
            rtcp_readers: self.rtcp_readers.load(Ordering::SeqCst),
            keyframe_tasks: self.keyframe_tasks.load(Ordering::SeqCst),
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let gauges = [
            (
                "kursrelay_peer_connections",
                &self.peer_connections,
                "Open peer connections",
            ),
            (
                "kursrelay_forwarder_tasks",
                &self.forwarders,
                "Running forwarding tasks",
            ),
            (
                "kursrelay_writer_tasks",
                &self.writers,
                "Running subscriber writer tasks",
            ),
            (
                "kursrelay_rtcp_reader_tasks",
                &self.rtcp_readers,
                "Running subscriber RTCP readers",
            ),
            (
                "kursrelay_keyframe_tasks",
                &self.keyframe_tasks,
                "Running keyframe request tasks",
            ),
        ];
        for (name, value, help) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let counters = [
            (
                "kursrelay_packets_received_total",
                &self.packets_received,
                "RTP packets received from publishers",
            ),
            (
                "kursrelay_packets_forwarded_total",
                &self.packets_forwarded,
                "RTP packets queued to subscribers",
            ),
            (
                "kursrelay_packets_dropped_total",
                &self.packets_dropped,
                "RTP packets dropped for full subscriber queues",
            ),
            (
                "kursrelay_packets_discarded_total",
                &self.packets_discarded,
                "RTP packets read and discarded from tracks not being forwarded",
            ),
            (
                "kursrelay_write_errors_total",
                &self.write_errors,
                "Failed RTP writes",
            ),
            (
                "kursrelay_keyframe_requests_received_total",
                &self.keyframe_requests_received,
                "PLI/FIR received from subscribers",
            ),
            (
                "kursrelay_keyframe_requests_sent_total",
                &self.keyframe_requests_sent,
                "PLI sent to publishers",
            ),
        ];
        for (name, value, help) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    pub peer_connections: i64,
    pub forwarders: i64,
    pub writers: i64,
    pub rtcp_readers: i64,
    pub keyframe_tasks: i64,
}

/// Increments a gauge now and decrements it when dropped.
#[derive(Debug)]
pub(crate) struct GaugeGuard {
    metrics: Arc<Metrics>,
    pick: fn(&Metrics) -> &AtomicI64,
}

impl GaugeGuard {
    pub(crate) fn new(metrics: &Arc<Metrics>, pick: fn(&Metrics) -> &AtomicI64) -> Self {
        pick(metrics).fetch_add(1, Ordering::SeqCst);
        Self {
            metrics: metrics.clone(),
            pick,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.pick)(&self.metrics).fetch_sub(1, Ordering::SeqCst);
    }
}
