//! Media-path counters: plain atomics written by the engine, read by /metrics and by tests that
//! prove cleanup (the gauges reach zero when everything is gone).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::engine::mux::Drop as DropReason;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Engine connections (publish and subscribe) open.
    pub peer_connections: AtomicI64,
    /// Feeds (tracks arriving on publish connections) alive.
    pub forwarders: AtomicI64,
    /// Engine tables, refreshed every liveness pass (a leak shows as growth here): addresses
    /// bound in the demux, ufrags waiting for or holding a connection, accepted ICE-TCP
    /// streams, per-track caches.
    pub bound_addresses: AtomicI64,
    pub ufrags: AtomicI64,
    pub tcp_streams: AtomicI64,
    pub track_caches: AtomicI64,
    pub packets_received: AtomicU64,
    pub packets_forwarded: AtomicU64,
    /// Packets the kernel would not take (a full socket buffer) or a subscriber lost.
    pub packets_dropped: AtomicU64,
    /// Packets read from a track that is not forwarded (floor taken back, muted, refused):
    /// read and thrown away.
    pub packets_discarded: AtomicU64,
    /// Forwarded packets sealed by the engine itself (the lean path) rather than by rtc.
    pub packets_sealed: AtomicU64,
    /// NACKed packets re-sent from the track cache, and NACKs for packets no longer in it.
    pub nacks_answered: AtomicU64,
    pub nacks_missed: AtomicU64,
    /// Newcomers started from the cached GOP instead of waiting for a keyframe.
    pub gop_joins: AtomicU64,
    /// Sender reports translated from publishers' and sent to subscribers.
    pub sender_reports: AtomicU64,
    /// `write_rtp` calls that failed (e.g. a connection going away mid-write).
    pub write_errors: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    pub keyframe_requests_sent: AtomicU64,
    /// Datagrams read from the media port.
    pub datagrams_received: AtomicU64,
    /// Datagrams dropped on the media port, by reason (`engine::mux::Drop`).
    pub dropped_unclassified: AtomicU64,
    pub dropped_unbound: AtomicU64,
    pub dropped_unknown_ufrag: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_flood: AtomicU64,
    /// NACKs not answered (`engine::resend`), by reason: the packet is older than the jitter
    /// horizon, it was re-sent to the same viewer within the repeat window, or the viewer's
    /// re-send budget (a quarter of what it is forwarded) is spent.
    pub nacks_refused_too_old: AtomicU64,
    pub nacks_refused_repeat: AtomicU64,
    pub nacks_refused_budget: AtomicU64,
    /// Newcomers not given a cached GOP because it was too long to replay (older than
    /// `GOP_REPLAY_MAX_AGE` or longer than `GOP_REPLAY_MAX_PACKETS`): they start at a fresh
    /// keyframe asked of the publisher instead.
    pub gop_joins_skipped: AtomicU64,
    /// Simulcast: a viewer's video moved to another layer (at a keyframe of it).
    pub layer_switches: AtomicU64,
    /// Simulcast: a viewer's layer was stopped at once because its line did not carry it (it
    /// goes on at the lower layer's next keyframe; the sound does not wait behind it).
    pub layer_cuts: AtomicU64,
    /// Video packets (and re-sends) a viewer's pacer held for later instead of sending at
    /// once, and held packets sent early because the pacer was full (`engine/pacer.rs`).
    pub packets_paced: AtomicU64,
    pub pacer_overflows: AtomicU64,
    /// Probes of a viewer's line before a step up (`sfu::probe`), those that found the line
    /// full (the step up not taken), and the padding they sent (bytes on the wire).
    pub probes: AtomicU64,
    pub probes_failed: AtomicU64,
    pub padding_bytes: AtomicU64,
    /// A viewer's video was paused (even the lowest layer did not fit, or it asked for none).
    pub video_pauses: AtomicU64,
    /// Viewers with at least one video paused now.
    pub video_paused_viewers: AtomicI64,
    /// Viewers with an estimate (connected subscribe connections), and the sum of their
    /// estimates in bits per second (the mean is sum / count).
    pub viewers_estimated: AtomicI64,
    pub viewer_estimate_sum_bps: AtomicI64,
    /// Of those, what drives each estimate now: transport-cc feedback (GCC), or receiver
    /// reports' loss (no transport-cc for 2 s); and how many a REMB caps below that.
    pub viewers_estimated_by_twcc: AtomicI64,
    pub viewers_estimated_by_receiver_reports: AtomicI64,
    pub viewers_capped_by_remb: AtomicI64,
}

impl Metrics {
    /// Every connection and feed gauge; all zero when nothing is left behind.
    pub fn live_tasks(&self) -> LiveCounts {
        LiveCounts {
            peer_connections: self.peer_connections.load(Ordering::SeqCst),
            forwarders: self.forwarders.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn count_drop(&self, why: DropReason) {
        let c = match why {
            DropReason::Unclassified => &self.dropped_unclassified,
            DropReason::Unbound => &self.dropped_unbound,
            DropReason::UnknownUfrag => &self.dropped_unknown_ufrag,
            DropReason::Rejected => &self.dropped_rejected,
            DropReason::Flood => &self.dropped_flood,
        };
        c.fetch_add(1, Ordering::Relaxed);
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
                "kursrelay_feeds",
                &self.forwarders,
                "Tracks arriving on publish connections",
            ),
            (
                "kursrelay_media_bound_addresses",
                &self.bound_addresses,
                "Client addresses bound to a connection on the media port",
            ),
            (
                "kursrelay_media_ufrags",
                &self.ufrags,
                "ICE ufrags known to the media port",
            ),
            (
                "kursrelay_media_tcp_streams",
                &self.tcp_streams,
                "Accepted ICE-TCP streams",
            ),
            (
                "kursrelay_track_caches",
                &self.track_caches,
                "Per-track packet caches (NACK answers, GOP joins)",
            ),
            (
                "kursrelay_video_paused_viewers",
                &self.video_paused_viewers,
                "Viewers with a video paused because their line does not carry its lowest layer",
            ),
            (
                "kursrelay_viewers_estimated",
                &self.viewers_estimated,
                "Viewers with a bandwidth estimate",
            ),
            (
                "kursrelay_viewer_estimate_sum_bps",
                &self.viewer_estimate_sum_bps,
                "Sum of the viewers' bandwidth estimates, bits per second (mean = sum / viewers_estimated)",
            ),
            (
                "kursrelay_viewers_estimated_by_twcc",
                &self.viewers_estimated_by_twcc,
                "Viewers whose estimate transport-cc feedback drives now",
            ),
            (
                "kursrelay_viewers_estimated_by_receiver_reports",
                &self.viewers_estimated_by_receiver_reports,
                "Viewers whose estimate receiver reports' loss drives now (no transport-cc)",
            ),
            (
                "kursrelay_viewers_capped_by_remb",
                &self.viewers_capped_by_remb,
                "Viewers whose estimate a REMB caps now",
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
                "RTP packets received from publishers and forwarded",
            ),
            (
                "kursrelay_packets_forwarded_total",
                &self.packets_forwarded,
                "RTP packets sent to subscribers",
            ),
            (
                "kursrelay_packets_dropped_total",
                &self.packets_dropped,
                "RTP packets the media socket would not take",
            ),
            (
                "kursrelay_packets_discarded_total",
                &self.packets_discarded,
                "RTP packets read and discarded from tracks not being forwarded",
            ),
            (
                "kursrelay_packets_sealed_total",
                &self.packets_sealed,
                "Forwarded RTP packets sealed by the engine itself (SRTP AES-GCM in place)",
            ),
            (
                "kursrelay_nacks_answered_total",
                &self.nacks_answered,
                "Packets a subscriber NACKed, re-sent from the track cache",
            ),
            (
                "kursrelay_nacks_missed_total",
                &self.nacks_missed,
                "NACKed packets no longer in the track cache",
            ),
            (
                "kursrelay_gop_joins_total",
                &self.gop_joins,
                "Subscribers started from the cached GOP",
            ),
            (
                "kursrelay_gop_joins_skipped_total",
                &self.gop_joins_skipped,
                "Newcomers started at a fresh keyframe because the cached GOP was too long",
            ),
            (
                "kursrelay_layer_switches_total",
                &self.layer_switches,
                "Simulcast layer switches of a viewer's video (each at a keyframe)",
            ),
            (
                "kursrelay_layer_cuts_total",
                &self.layer_cuts,
                "A viewer's layer stopped at once because its line did not carry it",
            ),
            (
                "kursrelay_packets_paced_total",
                &self.packets_paced,
                "Video packets a viewer's pacer held so a burst leaves no faster than the line carries",
            ),
            (
                "kursrelay_pacer_overflows_total",
                &self.pacer_overflows,
                "Held packets sent early because a viewer's pacer was full",
            ),
            (
                "kursrelay_probes_total",
                &self.probes,
                "Probes of a viewer's line with padding before a step up",
            ),
            (
                "kursrelay_probes_failed_total",
                &self.probes_failed,
                "Probes that found a viewer's line could not carry the step up",
            ),
            (
                "kursrelay_padding_bytes_total",
                &self.padding_bytes,
                "Bytes of probe padding sent to viewers (on the wire)",
            ),
            (
                "kursrelay_video_pauses_total",
                &self.video_pauses,
                "Times a viewer's video was paused (audio goes on)",
            ),
            (
                "kursrelay_sender_reports_total",
                &self.sender_reports,
                "Sender reports translated for subscribers",
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
            (
                "kursrelay_media_datagrams_received_total",
                &self.datagrams_received,
                "Datagrams read from the media port",
            ),
        ];
        for (name, value, help) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "kursrelay_media_datagrams_dropped_total";
        let _ = writeln!(
            out,
            "# HELP {name} Datagrams dropped on the media port, by reason\n# TYPE {name} counter"
        );
        for (reason, value) in [
            ("unclassified", &self.dropped_unclassified),
            ("unbound", &self.dropped_unbound),
            ("unknown_ufrag", &self.dropped_unknown_ufrag),
            ("rejected", &self.dropped_rejected),
            ("flood", &self.dropped_flood),
        ] {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{reason}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "kursrelay_nacks_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} NACKed packets not re-sent, by reason\n# TYPE {name} counter"
        );
        for (reason, value) in [
            ("too_old", &self.nacks_refused_too_old),
            ("repeat", &self.nacks_refused_repeat),
            ("budget", &self.nacks_refused_budget),
        ] {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{reason}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    pub peer_connections: i64,
    pub forwarders: i64,
}
