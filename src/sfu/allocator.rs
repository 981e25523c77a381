//! Per viewer (one subscribe connection): how much its line carries, and which simulcast layer
//! of each video it gets (issue 20, step 2). Pure: time, feedback and the layers' measured
//! rates come in; a target layer per video and the changes the viewer is told about go out.
//! The engine core (`engine/core.rs`) feeds it and applies the targets to the down-tracks.
//!
//! - `Estimate`: transport-cc feedback drives rtc's GCC (`rtc::interceptor::Gcc`, delay and
//!   loss); without transport-cc for a while, receiver reports' fraction lost drive a loss
//!   controller of the same shape (down to what was sent × (1 − loss/2) above 10 % loss, up 8 %
//!   a report below 2 %); a REMB, when the viewer sends one, caps either.
//! - `TwccSend`: the transport-wide sequence numbers stamped on what the engine sends this
//!   viewer, and when each left (a fixed ring: no allocation per packet).
//! - `Allocator`: video gets what the estimate leaves after audio and re-sends (audio is never
//!   thinned), track by track; a layer goes down at once when it no longer fits and up one step
//!   at a time, only when the next layer fits with a margin and after a hold that grows fourfold each
//!   time an up-switch fails soon after (that "trying the next layer" is the probe); when even
//!   the lowest layer does not fit the video is paused, and resumed at the lowest layer the
//!   same way once it fits.

use std::time::{Duration, Instant};

use rtc::interceptor::{Acknowledgement, BandwidthEstimator, Gcc, PacketReport};

use crate::ids::TrackId;
use crate::sfu::probe::{Proof, PROBE_OVER};

/// Where a viewer's estimate starts: enough for a camera's middle layer (≈ 500 kbit/s), not
/// its top one (≈ 1.7 Mbit/s), so a newcomer on a weak home line does not begin by flooding it
/// (at 2.5 Mbit/s the weak-line runner's viewers lost more sound, BENCHMARKS.md); a good line
/// reaches the top layer within ≈ 15 s (GCC's growth, then one step up).
pub(crate) const INITIAL_BPS: f64 = 1_200_000.0;
const MIN_BPS: f64 = 50_000.0;
const MAX_BPS: f64 = 50_000_000.0;
/// Loss above this right after a step up means the step did not fit — if it is also
/// `LOSS_RISE` above what the line lost just before the step: a line that always loses a few
/// packets (weak Wi-Fi, a busy 4G cell) is not short of room for it, and its viewer would
/// otherwise be held at the lowest layer for good (tests/bad_network.rs, 5 % each way).
const LOSSY: f64 = 0.05;
const LOSS_RISE: f64 = 0.03;
/// No step up is tried while the line loses more than this (GCC's own "overloaded" level,
/// where it lowers its estimate).
const TOO_LOSSY_TO_TRY: f64 = 0.10;
/// Without transport-cc feedback for this long, the receiver reports decide.
const TWCC_STALE: u64 = 2_000;
/// A REMB caps the estimate for this long.
const REMB_STALE: u64 = 5_000;
/// A layer up is taken only if it fits in this share of what is left (the current layer is
/// kept as long as it fits in all of it: a band against going up and down).
const UP_MARGIN: f64 = 0.75;
/// Video is paused only when even the lowest layer has not fitted for this long (a dip of
/// the estimate while it settles is not a reason to take the picture away).
const PAUSE_AFTER: u64 = 2_000;
/// Time on a layer before trying the next one up; four times as long (up to the max) each
/// time a try fails within `FAILED_TRY`. Without padding probes a try is the layer itself,
/// and one that does not fit costs the line — and the sound queued with it — a moment of
/// loss (tests/media_sim.rs: about 0.35 s on a line just above the middle layer), so tries
/// that keep failing become rare: 4 s, 16 s, then every 32 s (not longer: a line that
/// recovers gets its picture back within about half a minute).
const UP_HOLD: u64 = 4_000;
const UP_HOLD_MAX: u64 = 32_000;
const FAILED_TRY: u64 = 8_000;
/// Between two steps up of one viewer's videos (each its own try of the line).
const TRY_APART: u64 = 2_000;
/// A lower layer is announced as `reduced` ("your line is weak") only when the line has shown
/// it: a layer it got did not fit (a step down, a failed try, a pause), or the video has stayed
/// below its best this long. A newcomer's estimate starts below a camera's top layer and grows
/// (≈ 15 s to the top on a good line): that start is not the line's fault and is not announced.
const REDUCED_AFTER: u64 = 30_000;

/// Share of the estimate the allocator hands out (queues, RTCP, headers, and room for the
/// sound and re-sends when the estimate runs ahead of the line: rtc's GCC keeps growing while
/// a viewer is sent less than its estimate, tests/media_sim.rs).
pub(crate) const HEADROOM: f64 = 0.85;

/// One viewer's bandwidth estimate.
pub(crate) struct Estimate {
    gcc: Gcc,
    /// When transport-cc feedback last arrived (ms of the engine's clock).
    twcc_at: Option<u64>,
    loss_bps: f64,
    /// The worst fraction lost (of 256) in the receiver reports since the last pass, and in
    /// the last pass that had any.
    pending_loss: Option<u8>,
    last_loss: f64,
    remb: Option<(f64, u64)>,
    /// The fastest the line was seen to deliver (bit/s), and when: the rate packets arrived
    /// at within one transport-cc feedback, decaying (half in `LINK_HALF_LIFE`) unless seen
    /// again. rtc's GCC keeps growing while a viewer is sent less than it (no
    /// application-limited detection), so on its own it says little about a quiet viewer's
    /// line; a burst that arrives (a keyframe, paced) says what the line carries.
    link: Option<(f64, u64)>,
    /// Feedback gathered until it covers `GCC_BATCH` packets, then handed to GCC at once.
    batch: Vec<PacketReport>,
    /// What the line carried when a probe found it full (bit/s), and when (ms): for
    /// `CAP_FOR`, no step up (and no new video's first layer) asks for more than that (GCC's
    /// own estimate grows while the viewer is sent less than it). Not applied to what the
    /// viewer already gets: a probe's reading is short, and GCC's delay and loss signals
    /// decide a step down as before.
    cap: Option<(f64, u64)>,
}

/// How long a probe that found the line full holds steps up to what it carried (after that
/// the line is probed again before a step up; it may have got better).
const CAP_FOR: u64 = 20_000;

/// GCC is handed feedback covering at least this many packets at a time (libwebrtc's loss
/// estimate waits for 20 too). rtc's GCC takes the loss of each hand-over as one sample; one
/// feedback often covers about ten packets, so one lost packet reads as 10 % — on a line that
/// loses 5 % at random, samples above its 10 % "overloaded" level came often enough to lower
/// the estimate step by step, never raised again (below 2 % it grows), until a viewer with
/// plenty of room was paused (tests/bad_network.rs, Chromium on a 5 % / 100 ms line).
const GCC_BATCH: usize = 20;

/// How fast a delivery-rate measurement fades when not seen again.
const LINK_HALF_LIFE: f64 = 10_000.0;
/// A feedback measures the delivery rate only if it acknowledges this many packets that
/// arrived over at least this long (a few back-to-back packets say little).
/// (A shorter span over-read a 400 kbit/s line by half in Chromium: a queue in front of a
/// line often hands on several packets at once.)
const LINK_MIN_PACKETS: usize = 8;
const LINK_MIN_SPAN: Duration = Duration::from_millis(20);

impl Default for Estimate {
    fn default() -> Self {
        Estimate {
            gcc: Gcc::new(INITIAL_BPS, MIN_BPS, MAX_BPS),
            twcc_at: None,
            loss_bps: INITIAL_BPS,
            pending_loss: None,
            last_loss: 0.0,
            remb: None,
            link: None,
            batch: Vec::with_capacity(4 * GCC_BATCH),
            cap: None,
        }
    }
}

impl Estimate {
    pub(crate) fn on_twcc(&mut self, now: Instant, now_ms: u64, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        if self.twcc_at.is_some() && !self.has_twcc(now_ms) {
            // Feedback again after a silence (video was paused): what GCC knew is old; start
            // it from the estimate that decided to send again.
            self.gcc = Gcc::new(self.loss_bps, MIN_BPS, MAX_BPS);
            self.batch.clear();
        }
        self.batch.extend_from_slice(reports);
        if self.batch.len() >= GCC_BATCH {
            self.gcc.on_reports(now, &self.batch);
            self.batch.clear();
        }
        self.twcc_at = Some(now_ms);
        self.measure_delivery(now_ms, reports);
    }

    /// The rate the acknowledged packets of one feedback arrived at (the first one's size
    /// not counted: it marks the start), kept when it is the fastest seen lately.
    fn measure_delivery(&mut self, now_ms: u64, reports: &[PacketReport]) {
        let (mut first, mut last, mut bytes, mut n) = (None, None, 0usize, 0usize);
        for r in reports.iter().filter(|r| r.arrived) {
            let Some(at) = r.arrival else {
                continue;
            };
            if first.is_none_or(|f| at < f) {
                first = Some(at);
            } else {
                bytes += r.size;
            }
            last = Some(last.map_or(at, |l: Duration| l.max(at)));
            n += 1;
        }
        let (Some(first), Some(last)) = (first, last) else {
            return;
        };
        let span = last.saturating_sub(first);
        if n < LINK_MIN_PACKETS || span < LINK_MIN_SPAN {
            return;
        }
        let sample = bytes as f64 * 8.0 / span.as_secs_f64();
        let kept = self.link_bps(now_ms).unwrap_or(0.0);
        if sample >= kept {
            self.link = Some((sample, now_ms));
        }
    }

    /// The fastest delivery seen lately, faded since.
    fn link_bps(&self, now_ms: u64) -> Option<f64> {
        self.link.map(|(bps, at)| {
            let age = now_ms.saturating_sub(at) as f64;
            bps * 0.5f64.powf(age / LINK_HALF_LIFE)
        })
    }

    /// What the viewer's pacer paces at (before its factor): the estimate, but no more than
    /// the line was seen to deliver lately once it has been.
    pub(crate) fn pace_bps(&self, now_ms: u64) -> f64 {
        let estimate = self.bps(now_ms);
        self.link_bps(now_ms)
            .map_or(estimate, |link| estimate.min(link.max(MIN_BPS)))
    }

    /// A probe's result: a line found full holds the estimate to what it carried; one that
    /// kept up with more lifts that.
    pub(crate) fn on_proof(&mut self, proof: &Proof) {
        if !proof.kept_up && proof.carried_bps > 0.0 {
            self.cap = Some((proof.carried_bps.max(MIN_BPS), proof.at_ms));
        } else if proof.kept_up && self.cap.is_some_and(|(c, _)| proof.carried_bps >= c) {
            self.cap = None;
        }
    }

    /// What a probe lately found the line to carry, if it found it full.
    pub(crate) fn cap_bps(&self, now_ms: u64) -> Option<f64> {
        self.cap
            .filter(|(_, at)| now_ms.saturating_sub(*at) <= CAP_FOR)
            .map(|(c, _)| c)
    }

    /// A receiver report block: fraction lost, of 256.
    pub(crate) fn on_loss(&mut self, fraction: u8) {
        self.pending_loss = Some(self.pending_loss.map_or(fraction, |f| f.max(fraction)));
    }

    pub(crate) fn on_remb(&mut self, now_ms: u64, bps: f64) {
        if bps.is_finite() && bps > 0.0 {
            self.remb = Some((bps, now_ms));
        }
    }

    /// Applies the receiver reports since the last pass, `sent_bps` being what the viewer was
    /// sent meanwhile. While transport-cc drives the estimate, the receiver-report estimate
    /// follows it, so a fallback (transport-cc feedback stops, e.g. while video is paused)
    /// starts from the last known value instead of an old one.
    pub(crate) fn pass(&mut self, now_ms: u64, sent_bps: f64) {
        if self.has_twcc(now_ms) {
            self.loss_bps = self.gcc.target_bitrate();
            self.pending_loss = None;
            return;
        }
        let Some(fraction) = self.pending_loss.take() else {
            return;
        };
        let loss = f64::from(fraction) / 256.0;
        self.last_loss = loss;
        if loss > 0.10 {
            self.loss_bps = self
                .loss_bps
                .min(sent_bps.max(MIN_BPS) * (1.0 - 0.5 * loss));
        } else if loss < 0.02 {
            self.loss_bps *= 1.08;
        }
        self.loss_bps = self.loss_bps.clamp(MIN_BPS, MAX_BPS);
    }

    /// The share of what the viewer is sent that its line loses (transport-cc's smoothed
    /// loss, else the last receiver reports).
    pub(crate) fn loss(&self, now_ms: u64) -> f64 {
        if self.has_twcc(now_ms) {
            self.gcc.stats().packet_loss.unwrap_or(0.0)
        } else {
            self.last_loss
        }
    }

    /// Whether transport-cc feedback drives the estimate now.
    pub(crate) fn has_twcc(&self, now_ms: u64) -> bool {
        self.twcc_at
            .is_some_and(|t| now_ms.saturating_sub(t) <= TWCC_STALE)
    }

    /// Whether a recent REMB holds the estimate below what the rest says.
    pub(crate) fn remb_caps(&self, now_ms: u64) -> bool {
        let base = if self.has_twcc(now_ms) {
            self.gcc.target_bitrate()
        } else {
            self.loss_bps
        };
        self.remb
            .is_some_and(|(remb, at)| now_ms.saturating_sub(at) <= REMB_STALE && remb < base)
    }

    /// The estimate, bits per second.
    pub(crate) fn bps(&self, now_ms: u64) -> f64 {
        let base = if self.has_twcc(now_ms) {
            self.gcc.target_bitrate()
        } else {
            self.loss_bps
        };
        match self.remb {
            Some((remb, at)) if now_ms.saturating_sub(at) <= REMB_STALE => base.min(remb),
            _ => base,
        }
    }
}

/// Packets remembered for transport-cc feedback: about 3 s of a 2 Mbit/s camera plus audio.
/// 8 bytes each.
const TWCC_HISTORY: usize = 1024;

/// The transport-wide sequence numbers of one viewer's connection.
pub(crate) struct TwccSend {
    /// The negotiated header extension id.
    pub(crate) ext_id: u8,
    next: u16,
    /// Packets stamped so far (ids for `PacketReport`, which wants them monotonic).
    stamped: u64,
    epoch: Instant,
    /// By sequence number modulo the ring: (departure in µs since `epoch`, wrapping; size;
    /// sequence number).
    ring: Box<[(u32, u16, u16)]>,
}

impl TwccSend {
    pub(crate) fn new(ext_id: u8, now: Instant) -> TwccSend {
        TwccSend {
            ext_id,
            next: 0,
            stamped: 0,
            epoch: now,
            ring: vec![(0, 0, 0); TWCC_HISTORY].into_boxed_slice(),
        }
    }

    fn micros(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// The id (`PacketReport::id`) the next packet stamped will have.
    pub(crate) fn next_id(&self) -> u64 {
        self.stamped
    }

    /// The next sequence number, for a packet of `size` bytes leaving at `now`.
    pub(crate) fn stamp(&mut self, now: Instant, size: usize) -> u16 {
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        self.stamped += 1;
        self.ring[usize::from(seq) % TWCC_HISTORY] = (
            self.micros(now),
            size.min(usize::from(u16::MAX)) as u16,
            seq,
        );
        seq
    }

    /// The packets a feedback acknowledges, as the estimator wants them (those still in the
    /// ring).
    pub(crate) fn reports(
        &self,
        now: Instant,
        acks: &[Acknowledgement],
        out: &mut Vec<PacketReport>,
    ) {
        let now_us = self.micros(now);
        for a in acks {
            let (at_us, size, seq) = self.ring[usize::from(a.sequence_number) % TWCC_HISTORY];
            if seq != a.sequence_number || size == 0 {
                continue;
            }
            let behind = self.next.wrapping_sub(seq);
            if behind == 0 || usize::from(behind) > TWCC_HISTORY {
                continue;
            }
            let age = Duration::from_micros(u64::from(now_us.wrapping_sub(at_us)));
            out.push(PacketReport {
                ssrc: 0,
                id: self.stamped - u64::from(behind),
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: seq,
                size: usize::from(size),
                arrived: a.arrived,
                departure: now.checked_sub(age).unwrap_or(now),
                arrival: a.arrival,
                ecn: a.ecn,
            });
        }
    }
}

/// What a transport-cc feedback says of each packet it covers. A status vector chunk always
/// holds 7 or 14 symbols; those past the feedback's packet count are padding, not packets —
/// rtc's `convert_twcc` reads them as lost, and with packets in flight on a 100 ms line
/// Chromium's feedback then said a line that lost 5 % lost 15 % (tests/bad_network.rs), and
/// GCC lowered the estimate until the viewer's video was paused.
pub(crate) fn twcc_acks(
    cc: &rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc,
) -> Vec<Acknowledgement> {
    let mut acks = rtc::interceptor::convert_twcc(cc);
    acks.truncate(usize::from(cc.packet_status_count));
    acks
}

/// What a viewer is told about one of its videos (`video_quality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoQuality {
    /// The best layer the viewer asked for (its size cap, "save data").
    Full,
    /// A lower layer: the line does not carry more.
    Reduced,
    /// No video: even the lowest layer does not fit. Audio goes on.
    Paused,
}

impl VideoQuality {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoQuality::Full => "full",
            VideoQuality::Reduced => "reduced",
            VideoQuality::Paused => "paused",
        }
    }
}

/// One simulcast layer of a video as the allocator sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LayerInfo {
    /// Measured rate, bits per second (0: not arriving).
    pub(crate) bps: u32,
    /// Picture height from its last keyframe (0: not known).
    pub(crate) height: u16,
}

/// The viewer's own wishes (`video_preference`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    /// The largest height it renders video at, in device pixels.
    pub max_height: Option<u32>,
    /// The lowest layer only.
    pub save_data: bool,
    /// The videos it shows, most needed first (its page knows which picture is the
    /// interpreter's and how large it shows each). These get the budget first, in this
    /// order; videos not listed follow in the server's own order. Empty: the server's order.
    pub order: Vec<TrackId>,
}

impl Preference {
    /// Where a video comes in the viewer's own order: its place in `order`, or after all of
    /// them.
    pub(crate) fn rank(&self, track: TrackId) -> usize {
        self.order
            .iter()
            .position(|t| *t == track)
            .unwrap_or(self.order.len())
    }
}

/// A target for one video: a layer index or `PAUSED` (`forwarder::PAUSED`).
pub(crate) type Target = u8;

struct Choice {
    track: TrackId,
    target: Target,
    quality: Option<VideoQuality>,
    /// When the target last changed, and whether that was a step up.
    changed_at: u64,
    went_up: bool,
    hold: u64,
    /// Since when even the lowest layer has not fitted.
    short_since: Option<u64>,
    /// The viewer changed its preference: the next pass may go up more than one layer.
    jump: bool,
    /// The target before the last change (where a failed try goes back to).
    from: Target,
    /// What the line lost when the last step up was taken.
    loss_before: f64,
    /// The line did not carry a layer this video got, since it was last at its best.
    short_shown: bool,
    /// Since when the video has been below its best.
    below_since: Option<u64>,
    /// No step up before this (ms): a probe found the line could not carry the last one.
    try_after: u64,
}

/// What a pass knows of probing the viewer's line (`probe.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probing {
    /// The last probe's result.
    pub(crate) proof: Option<Proof>,
    /// What the viewer was sent lately, everything together (bit/s).
    pub(crate) sent_bps: f64,
    /// What a probe lately found the line to carry for video (its rate less what audio and
    /// re-sends take), when it found the line full: steps up and a new video's first layer
    /// stay within it.
    pub(crate) room_bps: Option<f64>,
}

/// After a probe the line did not carry, the next one waits this long (ms).
const PROBE_AGAIN: u64 = 8_000;
/// A proof older than this (ms) no longer decides a step up.
const PROOF_FOR: u64 = 1_500;
/// A step up is taken when the probe showed the line carries this much more than all the
/// viewer would then be sent (a probe that the line kept up with shows `PROBE_OVER` times).
const STEP_MARGIN: f64 = 1.1;

/// One viewer's layer choices.
#[derive(Default)]
pub(crate) struct Allocator {
    choices: Vec<Choice>,
    preference: Preference,
    /// When a step up was last sent back for the loss it caused.
    blamed_at: Option<u64>,
    /// Set by the engine before a pass when the viewer's line can be probed: a step up then
    /// waits for a probe that shows the line carries it. None: a step up is tried with the
    /// layer itself (a client without transport-cc or a repair stream, or probes off).
    pub(crate) probing: Option<Probing>,
    /// When the last proof used was known (each decides one step up).
    proof_used_at: Option<u64>,
    /// The rate a pass wants the line probed at (bit/s), for the engine to take.
    want_probe: Option<f64>,
}

/// What a pass decided for one video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) target: Target,
    /// Set when what the viewer gets changed in a way it is told about.
    pub(crate) tell: Option<VideoQuality>,
    /// A step down because the line does not carry the layer it gets (not the viewer's
    /// choice): the engine stops sending that layer at once instead of at the lower layer's
    /// keyframe, so the sound does not queue (and drop) behind it meanwhile.
    pub(crate) cut: bool,
}

impl Allocator {
    pub(crate) fn preference(&self) -> &Preference {
        &self.preference
    }

    /// The probe the last pass asked for: the rate everything sent to the viewer together
    /// should reach (bit/s).
    pub(crate) fn take_probe(&mut self) -> Option<f64> {
        self.want_probe.take()
    }

    /// The viewer's own wishes; a new size cap or "save data" applies at the next pass,
    /// without waiting out a hold. A new order changes who gets the budget first: a video it
    /// puts first comes up as the estimate allows, one step at a time as always, after the
    /// shortest hold.
    pub(crate) fn set_preference(&mut self, preference: Preference) {
        let layers_changed = preference.max_height != self.preference.max_height
            || preference.save_data != self.preference.save_data;
        let order_changed = preference.order != self.preference.order;
        self.preference = preference;
        for c in &mut self.choices {
            if layers_changed {
                c.hold = UP_HOLD;
                c.jump = true;
            } else if order_changed {
                // Tries that failed under another order say little about this one.
                c.hold = c.hold.min(UP_HOLD);
            }
        }
    }

    /// One pass over the viewer's videos, in priority order: `layers[i]` is video i's layers
    /// (index = layer), `budget` what the estimate leaves for video, `loss` the share of its
    /// packets the line loses now. `paused` is the target that pauses a video. Decisions come
    /// out in the same order.
    pub(crate) fn allocate(
        &mut self,
        now_ms: u64,
        budget: f64,
        videos: &[(TrackId, [LayerInfo; 3])],
        paused: Target,
        loss: f64,
        out: &mut Vec<Decision>,
    ) {
        self.choices
            .retain(|c| videos.iter().any(|(t, _)| *t == c.track));
        let mut left = budget.max(0.0);
        // What a probe found the line to carry, when it found it full: the ceiling for steps
        // up and new videos (not for what the viewer already gets).
        let mut room = self.probing.and_then(|p| p.room_bps).map(|r| r.max(0.0));
        // Steps up (and resumes) are tried one at a time across the viewer's videos, at least
        // TRY_APART from one another, so a loss that follows is blamed on the one that caused
        // it: the latest step up still on trial goes back, the others stay.
        let tried = |c: &Choice| c.went_up && c.from != u8::MAX;
        let on_trial = self
            .choices
            .iter()
            .filter(|c| tried(c) && now_ms.saturating_sub(c.changed_at) < FAILED_TRY)
            .map(|c| c.changed_at)
            .max();
        let mut last_try = self
            .choices
            .iter()
            .filter(|c| tried(c))
            .map(|c| c.changed_at)
            .max();
        // The loss a step up was sent back for is not blamed again on an earlier one: for
        // TRY_APART after it (what the failed try put on the line is still being lost), the
        // loss seen is the others' new baseline.
        let mut blamed = None;
        let quiet = self
            .blamed_at
            .is_some_and(|t| now_ms.saturating_sub(t) < TRY_APART);
        if quiet {
            for c in self.choices.iter_mut().filter(|c| tried(c)) {
                c.loss_before = c.loss_before.max(loss);
            }
        }
        for (track, layers) in videos {
            let i = match self.choices.iter().position(|c| c.track == *track) {
                Some(i) => i,
                None => {
                    self.choices.push(Choice {
                        track: *track,
                        target: u8::MAX,
                        quality: None,
                        changed_at: now_ms,
                        went_up: false,
                        hold: UP_HOLD,
                        short_since: None,
                        jump: false,
                        from: u8::MAX,
                        loss_before: 0.0,
                        short_shown: false,
                        below_since: None,
                        try_after: 0,
                    });
                    self.choices.len() - 1
                }
            };
            let allowed = allowed_layers(layers, &self.preference);
            let listed = self.preference.rank(*track) < self.preference.order.len();
            let c = &mut self.choices[i];
            let Some(&best) = allowed.last() else {
                // Nothing arrives yet: leave the track as it is.
                out.push(Decision {
                    target: if c.target == u8::MAX { 2 } else { c.target },
                    tell: None,
                    cut: false,
                });
                continue;
            };
            let rate = |l: u8| f64::from(layers[usize::from(l)].bps);
            let fits: Vec<u8> = allowed
                .iter()
                .copied()
                .filter(|l| rate(*l) <= left)
                .collect();
            let fitting = fits.last().copied();
            if fitting.is_some() {
                c.short_since = None;
            } else if c.short_since.is_none() {
                c.short_since = Some(now_ms);
            }
            // A try up that does not fit at once is given up at once (it costs the line, and
            // the sound with it); a layer that had been fine gets PAUSE_AFTER.
            let failed_try = c.went_up && now_ms.saturating_sub(c.changed_at) < FAILED_TRY;
            let pause_now = c
                .short_since
                .is_some_and(|t| failed_try || now_ms.saturating_sub(t) >= PAUSE_AFTER);
            let lowest = allowed[0];
            let mut over = false;
            let new = if c.target == u8::MAX {
                // A new video: the best that fits now (the lowest while it is unclear).
                let ceiling = room.map_or(left, |r| r.min(left));
                fits.iter()
                    .copied()
                    .rfind(|l| rate(*l) <= ceiling)
                    .unwrap_or(lowest)
            } else if failed_try
                && loss > LOSSY.max(c.loss_before + LOSS_RISE)
                && c.from != u8::MAX
                && on_trial == Some(c.changed_at)
                && !quiet
            {
                // The line loses packets since the last step up: back to where it came from
                // (a pause, if it was a resume), before the estimate has caught up.
                over = true;
                blamed = Some(loss);
                c.from
            } else {
                let current = (c.target != paused).then_some(c.target);
                let current_fits = current.is_some_and(|l| rate(l) <= left && allowed.contains(&l));
                if current.is_some() && !current_fits {
                    over = current.is_some_and(|l| rate(l) > left);
                    // Down at once to the best that fits; below the lowest, pause once that
                    // has lasted.
                    match fitting {
                        Some(l) => l,
                        None if pause_now => paused,
                        None => lowest,
                    }
                } else {
                    // Up after the hold, one layer at a time (the estimate may have grown only
                    // because the line was not used: each step up tests it), if it fits with
                    // a margin. Right after a preference change: straight to the best fit.
                    let apart = last_try.is_none_or(|t| now_ms.saturating_sub(t) >= TRY_APART);
                    let held = c.jump
                        || (now_ms.saturating_sub(c.changed_at) >= c.hold
                            && now_ms >= c.try_after
                            && apart);
                    let mut ups = allowed
                        .iter()
                        .copied()
                        .filter(|n| current.is_none_or(|l| *n > l))
                        .filter(|n| room.is_none_or(|r| rate(*n) <= r));
                    let up = if c.jump {
                        ups.rfind(|n| rate(*n) <= left * UP_MARGIN)
                    } else {
                        ups.next().filter(|n| rate(*n) <= left * UP_MARGIN)
                    };
                    let stay = current.unwrap_or(paused);
                    match (up, self.probing) {
                        (Some(n), _) if c.jump && loss <= TOO_LOSSY_TO_TRY => n,
                        (Some(n), None) if held && loss <= TOO_LOSSY_TO_TRY => n,
                        (Some(n), Some(p)) if held && loss <= TOO_LOSSY_TO_TRY => {
                            // A probe first: everything the viewer is sent, with this step.
                            let need = p.sent_bps + rate(n) - current.map_or(0.0, rate);
                            let proof = p.proof.filter(|pr| {
                                now_ms.saturating_sub(pr.at_ms) <= PROOF_FOR
                                    && self.proof_used_at.is_none_or(|u| pr.at_ms > u)
                            });
                            match proof {
                                Some(pr) if pr.carried_bps >= need * STEP_MARGIN => {
                                    self.proof_used_at = Some(pr.at_ms);
                                    n
                                }
                                Some(pr) => {
                                    // The line does not carry it: probed again after
                                    // PROBE_AGAIN (a probe costs the line ≈ 0.1 s of queue,
                                    // not the loss of a try, so it need not back off further).
                                    self.proof_used_at = Some(pr.at_ms);
                                    c.try_after = now_ms + PROBE_AGAIN;
                                    stay
                                }
                                None => {
                                    if self.want_probe.is_none() {
                                        self.want_probe = Some(need * PROBE_OVER);
                                    }
                                    stay
                                }
                            }
                        }
                        _ => stay,
                    }
                }
            };
            let cut = over
                && new != paused
                && c.target != paused
                && c.target != u8::MAX
                && new < c.target;
            if new != c.target {
                let was_up = c.went_up;
                let up =
                    c.target == u8::MAX || c.target == paused || (new != paused && new > c.target);
                if !up && was_up && now_ms.saturating_sub(c.changed_at) < FAILED_TRY {
                    // The last step up did not hold: wait longer before the next try.
                    c.hold = (c.hold * 4).min(UP_HOLD_MAX);
                } else if !up {
                    c.hold = UP_HOLD;
                }
                if up {
                    c.loss_before = loss;
                    if c.target != u8::MAX {
                        last_try = Some(now_ms);
                    }
                }
                c.from = c.target;
                c.target = new;
                c.changed_at = now_ms;
                c.went_up = up;
            }
            if c.target != paused {
                left -= rate(c.target);
                room = room.map(|r| r - rate(c.target));
            } else if listed && rate(lowest) <= left * UP_MARGIN {
                // A video the viewer's own order puts here, paused for want of room but one
                // the estimate says could come back, pauses the ones after it: they come later
                // in what this viewer needs, and what they would take is what the paused one
                // needs for its way back (its try costs them nothing). When even its lowest
                // layer is beyond the estimate, the others take what there is: a small
                // picture of the lecturer rather than none. Only in the viewer's own order:
                // the server's cannot know which camera is the interpreter a deaf viewer
                // follows.
                left = 0.0;
            }
            if over || c.target == paused {
                c.short_shown = true;
            }
            let quality = if c.target == paused {
                VideoQuality::Paused
            } else if c.target >= best {
                c.short_shown = false;
                c.below_since = None;
                VideoQuality::Full
            } else {
                let since = *c.below_since.get_or_insert(now_ms);
                if c.short_shown || now_ms.saturating_sub(since) >= REDUCED_AFTER {
                    VideoQuality::Reduced
                } else {
                    // Still growing into its best (a newcomer's start): nothing to tell.
                    VideoQuality::Full
                }
            };
            c.jump = false;
            let tell = (c.quality != Some(quality)).then_some(quality);
            c.quality = Some(quality);
            out.push(Decision {
                target: c.target,
                tell,
                cut,
            });
        }
        if let Some(loss) = blamed {
            self.blamed_at = Some(now_ms);
            for c in self.choices.iter_mut().filter(|c| tried(c)) {
                c.loss_before = c.loss_before.max(loss);
            }
        }
    }
}

/// Puts a viewer's videos (`videos`, and `with` beside them, one entry per video) in its own
/// order (`Preference::order`): the listed ones first, as listed, the others after them in the
/// order they came (the server's). A stable insertion sort: a handful of videos, no
/// allocation.
pub(crate) fn in_viewer_order<V, W>(
    pref: &Preference,
    videos: &mut [(TrackId, V)],
    with: &mut [W],
) {
    debug_assert_eq!(videos.len(), with.len());
    if pref.order.is_empty() {
        return;
    }
    for i in 1..videos.len().min(with.len()) {
        let mut j = i;
        while j > 0 && pref.rank(videos[j - 1].0) > pref.rank(videos[j].0) {
            videos.swap(j - 1, j);
            with.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// The layers a viewer may get, lowest first: those arriving, at most its size cap (the
/// smallest layer at or above the height it renders, so the picture is never upscaled), only
/// the lowest with "save data".
fn allowed_layers(layers: &[LayerInfo; 3], pref: &Preference) -> Vec<u8> {
    let mut present: Vec<u8> = (0..3u8)
        .filter(|l| layers[usize::from(*l)].bps > 0)
        .collect();
    if pref.save_data {
        present.truncate(1);
    }
    if let Some(max) = pref.max_height {
        let enough = present
            .iter()
            .position(|l| u32::from(layers[usize::from(*l)].height) >= max);
        if let Some(i) = enough {
            // Layers of the same height as the first that is high enough stay allowed: a
            // shared screen sends its layers at full resolution and differs in frame rate.
            let height = layers[usize::from(present[i])].height;
            let keep = present[i..]
                .iter()
                .take_while(|l| layers[usize::from(**l)].height == height)
                .count();
            present.truncate(i + keep);
        }
    }
    present
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSED: u8 = 0xfe;

    fn layers() -> [LayerInfo; 3] {
        [
            LayerInfo {
                bps: 150_000,
                height: 180,
            },
            LayerInfo {
                bps: 500_000,
                height: 360,
            },
            LayerInfo {
                bps: 1_700_000,
                height: 720,
            },
        ]
    }

    fn run(a: &mut Allocator, now: u64, budget: f64, t: TrackId) -> Decision {
        let mut out = Vec::new();
        a.allocate(now, budget, &[(t, layers())], PAUSED, 0.0, &mut out);
        out[0]
    }

    #[test]
    fn goes_down_at_once_and_up_one_step_after_the_hold() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        let d = run(&mut a, 0, 2_000_000.0, t);
        assert_eq!((d.target, d.tell), (2, Some(VideoQuality::Full)));
        let d = run(&mut a, 500, 600_000.0, t);
        assert_eq!((d.target, d.tell), (1, Some(VideoQuality::Reduced)));
        // Below the lowest layer: it stays on it for a while, then video is paused.
        let d = run(&mut a, 1000, 100_000.0, t);
        assert_eq!((d.target, d.tell), (0, None));
        assert_eq!(run(&mut a, 2500, 100_000.0, t).target, 0);
        let d = run(&mut a, 3000, 100_000.0, t);
        assert_eq!((d.target, d.tell), (PAUSED, Some(VideoQuality::Paused)));
        // Recovering: back only after the hold, to what fits with a margin (a layer fits in
        // 0.75 of the budget to be taken, and is kept while it fits in all of it).
        assert_eq!(run(&mut a, 4000, 3_000_000.0, t).target, PAUSED);
        let d = run(&mut a, 7000, 300_000.0, t);
        assert_eq!((d.target, d.tell), (0, Some(VideoQuality::Reduced)));
        assert_eq!(run(&mut a, 8000, 3_000_000.0, t).target, 0, "held");
        assert_eq!(run(&mut a, 11_000, 1_000_000.0, t).target, 1);
        assert_eq!(
            run(&mut a, 14_000, 600_000.0, t).target,
            1,
            "kept while it fits"
        );
        let d = run(&mut a, 15_000, 3_000_000.0, t);
        assert_eq!((d.target, d.tell), (2, Some(VideoQuality::Full)));
        assert_eq!(run(&mut a, 15_500, 3_000_000.0, t).tell, None, "told once");
        // One layer at a time on the estimate alone; a preference change goes straight there.
        let d = run(&mut a, 16_000, 200_000.0, t);
        assert_eq!((d.target, d.tell), (0, Some(VideoQuality::Reduced)));
        // (The step up at 15 s failed within 8 s: 16 s before the next try.)
        assert_eq!(run(&mut a, 31_000, 5_000_000.0, t).target, 0, "held");
        assert_eq!(run(&mut a, 32_000, 5_000_000.0, t).target, 1);
        a.set_preference(Preference {
            max_height: Some(720),
            save_data: false,
            ..Preference::default()
        });
        assert_eq!(run(&mut a, 32_500, 200_000.0, t).target, 0);
        a.set_preference(Preference::default());
        assert_eq!(run(&mut a, 33_000, 5_000_000.0, t).target, 2);
    }

    /// With probing (`probe.rs`), a step up the estimate allows waits for a probe of the line
    /// at the rate it needs: taken when the line kept up, not when it did not (and the next
    /// probe waits twice as long).
    #[test]
    fn a_step_up_waits_for_a_probe_that_shows_the_line_carries_it() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        let probing = |proof: Option<Proof>| {
            Some(Probing {
                proof,
                sent_bps: 200_000.0,
                room_bps: None,
            })
        };
        a.probing = probing(None);
        assert_eq!(
            run(&mut a, 0, 300_000.0, t).target,
            0,
            "a newcomer: what fits"
        );
        assert_eq!(a.take_probe(), None);
        // After the hold the estimate (runaway, as GCC's is) says the middle layer fits: a
        // probe first, for what the viewer gets now plus the step (150 → 500 kbit/s).
        assert_eq!(run(&mut a, 4_000, 5_000_000.0, t).target, 0);
        let want = a.take_probe().expect("a probe asked for");
        assert!((want - 550_000.0 * PROBE_OVER).abs() < 1.0, "{want}");
        assert_eq!(run(&mut a, 4_500, 5_000_000.0, t).target, 0, "waits for it");
        // (Asked again while no result came: the engine's probe is busy and ignores it.)
        assert!(a.take_probe().is_some());
        // The line did not keep up (it carried 300 kbit/s): no step, and 8 s before the next.
        let failed = Proof {
            target_bps: want,
            carried_bps: 300_000.0,
            kept_up: false,
            at_ms: 4_700,
        };
        a.probing = probing(Some(failed));
        assert_eq!(run(&mut a, 5_000, 5_000_000.0, t).target, 0);
        assert_eq!(a.take_probe(), None);
        assert_eq!(run(&mut a, 12_000, 5_000_000.0, t).target, 0, "held");
        assert_eq!(a.take_probe(), None, "the old result decides nothing again");
        a.probing = probing(None);
        assert_eq!(run(&mut a, 13_000, 5_000_000.0, t).target, 0);
        assert!(a.take_probe().is_some(), "probed again after 8 s");
        // The line kept up: the step is taken.
        a.probing = probing(Some(Proof {
            target_bps: want,
            carried_bps: want,
            kept_up: true,
            at_ms: 13_200,
        }));
        assert_eq!(run(&mut a, 13_500, 5_000_000.0, t).target, 1);
        // Without probing (a client without a repair stream) the step is tried at once.
        let mut b = Allocator::default();
        assert_eq!(run(&mut b, 0, 300_000.0, t).target, 0);
        assert_eq!(run(&mut b, 4_000, 5_000_000.0, t).target, 1);
        assert_eq!(b.take_probe(), None);
    }

    /// After a probe found the line full at 400 kbit/s (for video), a new video starts at
    /// the layer within that, not at the one GCC's runaway estimate allows, and no step up
    /// goes beyond it; what a video already gets is kept (GCC's delay and loss decide a step
    /// down).
    #[test]
    fn what_a_probe_found_the_line_carries_holds_steps_up_and_new_videos_not_the_rest() {
        let (t, u) = (TrackId::new(), TrackId::new());
        let mut a = Allocator {
            probing: Some(Probing {
                proof: None,
                sent_bps: 700_000.0,
                room_bps: Some(400_000.0),
            }),
            ..Allocator::default()
        };
        let mut out = Vec::new();
        let mut pass = |a: &mut Allocator, now: u64, videos: &[(TrackId, [LayerInfo; 3])]| {
            out.clear();
            a.allocate(now, 5_000_000.0, videos, PAUSED, 0.0, &mut out);
            out.iter().map(|d| d.target).collect::<Vec<_>>()
        };
        assert_eq!(
            pass(&mut a, 0, &[(t, layers())]),
            vec![0],
            "within the room"
        );
        assert_eq!(
            pass(&mut a, 10_000, &[(t, layers())]),
            vec![0],
            "no step beyond it"
        );
        assert_eq!(a.take_probe(), None, "not even probed");
        // A video already on its middle layer (500 kbit/s) keeps it; the next one gets what
        // is left of the room: nothing, so its lowest.
        let mut b = Allocator::default();
        assert_eq!(
            pass(
                &mut b,
                0,
                &[(t, [layers()[0], layers()[1], LayerInfo::default()])]
            ),
            vec![1]
        );
        b.probing = a.probing;
        let both = [(t, layers()), (u, layers())];
        assert_eq!(pass(&mut b, 500, &both), vec![1, 0]);
        // Without a room the estimate decides, as before.
        let mut c = Allocator::default();
        assert_eq!(pass(&mut c, 0, &[(t, layers())]), vec![2]);
    }

    #[test]
    fn a_newcomer_growing_into_its_best_is_not_told_reduced() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        // The start estimate carries the middle layer only: not the line's fault.
        let d = run(&mut a, 0, 1_020_000.0, t);
        assert_eq!((d.target, d.tell), (1, Some(VideoQuality::Full)));
        let d = run(&mut a, 4000, 3_000_000.0, t);
        assert_eq!((d.target, d.tell), (2, None));
        // A line that never grows is announced once the lower layer has lasted.
        let t2 = TrackId::new();
        let mut b = Allocator::default();
        assert_eq!(
            run(&mut b, 0, 1_020_000.0, t2).tell,
            Some(VideoQuality::Full)
        );
        assert_eq!(run(&mut b, 29_500, 1_020_000.0, t2).tell, None);
        assert_eq!(
            run(&mut b, 30_000, 1_020_000.0, t2).tell,
            Some(VideoQuality::Reduced)
        );
        // A try up the line does not carry is shown at once, and so is what follows it.
        let t3 = TrackId::new();
        let mut c = Allocator::default();
        run(&mut c, 0, 1_020_000.0, t3);
        assert_eq!(run(&mut c, 4000, 3_000_000.0, t3).target, 2);
        let d = run(&mut c, 4500, 1_000_000.0, t3);
        assert_eq!((d.target, d.tell), (1, Some(VideoQuality::Reduced)));
    }

    #[test]
    fn a_failed_step_up_holds_four_times_as_long() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        run(&mut a, 0, 600_000.0, t); // layer 1
        assert_eq!(run(&mut a, 4000, 2_300_000.0, t).target, 2);
        assert_eq!(run(&mut a, 5000, 1_000_000.0, t).target, 1, "did not hold");
        // 16 s now before the next try.
        assert_eq!(run(&mut a, 20_000, 2_300_000.0, t).target, 1);
        assert_eq!(run(&mut a, 21_000, 2_300_000.0, t).target, 2);
    }

    #[test]
    fn the_viewer_caps_its_own_layer() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        a.set_preference(Preference {
            max_height: Some(300),
            save_data: false,
            ..Preference::default()
        });
        let d = run(&mut a, 0, 5_000_000.0, t);
        assert_eq!((d.target, d.tell), (1, Some(VideoQuality::Full)));
        a.set_preference(Preference {
            max_height: None,
            save_data: true,
            ..Preference::default()
        });
        let d = run(&mut a, 500, 5_000_000.0, t);
        assert_eq!((d.target, d.tell), (0, None), "still the best it asked for");
    }

    #[test]
    fn a_height_cap_keeps_a_screens_full_resolution_layers() {
        // A shared screen: two layers at the full height, differing in frame rate.
        let screen = [
            LayerInfo {
                bps: 150_000,
                height: 1080,
            },
            LayerInfo {
                bps: 900_000,
                height: 1080,
            },
            LayerInfo { bps: 0, height: 0 },
        ];
        let pref = Preference {
            max_height: Some(720),
            ..Preference::default()
        };
        assert_eq!(allowed_layers(&screen, &pref), vec![0, 1]);
        assert_eq!(allowed_layers(&layers(), &pref), vec![0, 1, 2]);
        let small = Preference {
            max_height: Some(300),
            ..Preference::default()
        };
        assert_eq!(allowed_layers(&layers(), &small), vec![0, 1]);
    }

    #[test]
    fn the_viewers_own_order_comes_first_and_the_rest_keep_theirs() {
        let [slides, lecturer, interpreter, other] = [(); 4].map(|_| TrackId::new());
        let mut videos = vec![
            (slides, 'S'),
            (lecturer, 'L'),
            (interpreter, 'I'),
            (other, 'O'),
        ];
        let mut with = vec![0, 1, 2, 3];
        in_viewer_order(&Preference::default(), &mut videos, &mut with);
        assert_eq!(with, vec![0, 1, 2, 3], "no order of its own: the server's");
        let pref = Preference {
            // A track it shows that this viewer is not sent (yet) is passed over.
            order: vec![interpreter, TrackId::new(), slides],
            ..Preference::default()
        };
        in_viewer_order(&pref, &mut videos, &mut with);
        let got: String = videos.iter().map(|(_, c)| *c).collect();
        assert_eq!(got, "ISLO");
        assert_eq!(with, vec![2, 0, 1, 3], "the other list moved with it");
    }

    #[test]
    fn the_video_first_in_the_viewers_order_keeps_its_picture_on_a_weak_line() {
        // Two cameras; the line carries one lowest layer (150 kbit/s) and no more. In the
        // server's order the first keeps its picture and the second pauses; in the viewer's
        // order (the interpreter first) the other way round.
        let (lecturer, interpreter) = (TrackId::new(), TrackId::new());
        let pass = |a: &mut Allocator, now: u64, pref: &Preference| {
            let mut videos = vec![(lecturer, layers()), (interpreter, layers())];
            let mut idx = vec![0usize, 1];
            in_viewer_order(pref, &mut videos, &mut idx);
            let mut out = Vec::new();
            a.allocate(now, 200_000.0, &videos, PAUSED, 0.0, &mut out);
            let mut by_track = [0u8; 2];
            for (d, i) in out.iter().zip(&idx) {
                by_track[*i] = d.target;
            }
            by_track
        };
        let servers = Preference::default();
        let mut a = Allocator::default();
        let mut last = [0; 2];
        for now in (0..6_000).step_by(500) {
            last = pass(&mut a, now, &servers);
        }
        assert_eq!(
            last,
            [0, PAUSED],
            "the server's order: the older camera first"
        );
        let viewers = Preference {
            order: vec![interpreter],
            ..Preference::default()
        };
        let mut b = Allocator::default();
        b.set_preference(viewers.clone());
        for now in (0..6_000).step_by(500) {
            last = pass(&mut b, now, &viewers);
        }
        assert_eq!(
            last,
            [PAUSED, 0],
            "the viewer's order: the interpreter first"
        );
    }

    #[test]
    fn a_video_paused_in_the_viewers_order_pauses_the_ones_after_it() {
        // The interpreter first in the viewer's order (300 kbit/s at its lowest: a busy
        // picture), the lecturer's camera after it (150 kbit/s at its lowest).
        let (interpreter, lecturer) = (TrackId::new(), TrackId::new());
        let big = layers().map(|l| LayerInfo {
            bps: l.bps * 2,
            ..l
        });
        let videos = [(interpreter, big), (lecturer, layers())];
        let passes = |a: &mut Allocator, steps: &[(u64, f64, f64)]| {
            let mut out = Vec::new();
            steps
                .iter()
                .map(|&(now, budget, loss)| {
                    out.clear();
                    a.allocate(now, budget, &videos, PAUSED, loss, &mut out);
                    (out[0].target, out[1].target)
                })
                .collect::<Vec<_>>()
        };
        let steps = [
            (0, 800_000.0, 0.0),
            // Nothing fits: both pause.
            (500, 100_000.0, 0.0),
            // After the hold, 420 kbit/s: room for one. The interpreter comes back first (the
            // lecturer's try waits 2 s behind it), and its try makes the line lose packets.
            (17_000, 420_000.0, 0.0),
            (18_000, 420_000.0, 0.2),
            // The interpreter waits out a longer hold; the line has room again.
            (20_500, 420_000.0, 0.0),
            (25_000, 420_000.0, 0.0),
            // Even the interpreter's lowest layer is beyond the estimate now.
            (26_000, 250_000.0, 0.0),
            (30_000, 250_000.0, 0.0),
        ];
        let mut mine = Allocator::default();
        mine.set_preference(Preference {
            order: vec![interpreter],
            ..Preference::default()
        });
        let got = passes(&mut mine, &steps);
        assert_eq!(got[0], (0, 1), "300 kbit/s for the one, 500 for the other");
        assert_eq!(got[1], (PAUSED, PAUSED));
        assert_eq!(got[2], (0, PAUSED), "the interpreter tries first");
        assert_eq!(got[3], (PAUSED, PAUSED), "its try taken back");
        // While the interpreter waits to try again, the lecturer does not take its room.
        assert_eq!(got[4..6], [(PAUSED, PAUSED); 2], "{got:?}");
        // A line too weak for the interpreter's picture gives the lecturer's.
        assert_eq!(got[7], (PAUSED, 0), "{got:?}");
        // In the server's own order a paused video leaves the room to the next at once.
        let mut servers = Allocator::default();
        let got = passes(&mut servers, &steps);
        assert_eq!(got[5], (PAUSED, 0), "{got:?}");
    }

    #[test]
    fn a_preference_change_applies_at_once() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        assert_eq!(run(&mut a, 0, 3_000_000.0, t).target, 2);
        a.set_preference(Preference {
            max_height: None,
            save_data: true,
            ..Preference::default()
        });
        assert_eq!(run(&mut a, 500, 3_000_000.0, t).target, 0);
        a.set_preference(Preference::default());
        assert_eq!(run(&mut a, 1000, 3_000_000.0, t).target, 2);
    }

    #[test]
    fn a_try_up_that_loses_packets_goes_back_at_once() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        let pass = |a: &mut Allocator, now: u64, budget: f64, loss: f64| {
            let mut out = Vec::new();
            a.allocate(now, budget, &[(t, layers())], PAUSED, loss, &mut out);
            out[0].target
        };
        assert_eq!(pass(&mut a, 0, 600_000.0, 0.0), 1);
        assert_eq!(pass(&mut a, 8000, 3_000_000.0, 0.0), 2);
        // The estimate still says 3 Mbit/s, but the line loses packets.
        assert_eq!(pass(&mut a, 8500, 3_000_000.0, 0.08), 1);
        // A settled layer is not given up for loss alone (the estimate decides), and no step
        // up is tried while the line loses packets heavily.
        assert_eq!(pass(&mut a, 30_000, 3_000_000.0, 0.12), 1);
        assert_eq!(pass(&mut a, 30_500, 3_000_000.0, 0.0), 2);
    }

    #[test]
    fn a_line_that_always_loses_a_little_still_gets_the_top_layer() {
        let t = TrackId::new();
        let mut a = Allocator::default();
        let pass = |a: &mut Allocator, now: u64, loss: f64| {
            let mut out = Vec::new();
            a.allocate(now, 3_000_000.0, &[(t, layers())], PAUSED, loss, &mut out);
            out[0].target
        };
        assert_eq!(pass(&mut a, 0, 0.0), 2);
        // 5–7 % lost before and after the step (random loss, not the step's): it stays.
        let mut a = Allocator::default();
        let mut out = Vec::new();
        a.allocate(0, 600_000.0, &[(t, layers())], PAUSED, 0.06, &mut out);
        assert_eq!(out[0].target, 1);
        assert_eq!(pass(&mut a, 4_000, 0.06), 2, "the step up is tried");
        for (i, loss) in [0.07, 0.05, 0.08, 0.06].into_iter().enumerate() {
            assert_eq!(pass(&mut a, 4_500 + 500 * i as u64, loss), 2, "{loss}");
        }
        // The same step making the line lose 12 % did not fit.
        let mut a = Allocator::default();
        a.allocate(0, 600_000.0, &[(t, layers())], PAUSED, 0.06, &mut out);
        assert_eq!(pass(&mut a, 4_000, 0.06), 2);
        assert_eq!(pass(&mut a, 4_500, 0.12), 1);
    }

    #[test]
    fn videos_share_the_budget_in_order() {
        let (t1, t2) = (TrackId::new(), TrackId::new());
        let mut a = Allocator::default();
        let mut out = Vec::new();
        a.allocate(
            0,
            2_000_000.0,
            &[(t1, layers()), (t2, layers())],
            PAUSED,
            0.0,
            &mut out,
        );
        assert_eq!(out[0].target, 2);
        assert_eq!(out[1].target, 0, "what the first left");
    }

    #[test]
    fn receiver_report_loss_lowers_the_estimate_and_none_raises_it() {
        let mut e = Estimate::default();
        e.on_loss(77); // 30 %
        e.pass(0, 1_000_000.0);
        assert!((e.bps(0) - 850_000.0).abs() < 1_000.0, "{}", e.bps(0));
        e.on_loss(0);
        e.pass(0, 800_000.0);
        assert!((e.bps(0) - 918_000.0).abs() < 1_000.0, "{}", e.bps(0));
        e.on_remb(0, 300_000.0);
        assert_eq!(e.bps(1000), 300_000.0);
        assert_eq!(e.bps(10_000), e.loss_bps, "an old REMB no longer caps");
    }

    #[test]
    fn a_feedbacks_padding_symbols_are_not_lost_packets() {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
            PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
            SymbolTypeTcc, TransportLayerCc,
        };
        // Three packets, the second lost, in a one-bit vector of 14 symbols (11 of padding).
        let mut symbols = vec![SymbolTypeTcc::PacketNotReceived; 14];
        symbols[0] = SymbolTypeTcc::PacketReceivedSmallDelta;
        symbols[2] = SymbolTypeTcc::PacketReceivedSmallDelta;
        let delta = RecvDelta {
            type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
            delta: 1_000,
        };
        let cc = TransportLayerCc {
            base_sequence_number: 65_534,
            packet_status_count: 3,
            packet_chunks: vec![PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size: SymbolSizeTypeTcc::OneBit,
                symbol_list: symbols,
            })],
            recv_deltas: vec![delta.clone(), delta],
            ..Default::default()
        };
        let acks = twcc_acks(&cc);
        let seen: Vec<_> = acks
            .iter()
            .map(|a| (a.sequence_number, a.arrived))
            .collect();
        assert_eq!(seen, [(65_534, true), (65_535, false), (0, true)]);
    }

    #[test]
    fn twcc_history_gives_departures_of_acknowledged_packets() {
        let t0 = Instant::now();
        let mut h = TwccSend::new(3, t0);
        let a = h.stamp(t0, 1000);
        let b = h.stamp(t0 + Duration::from_millis(5), 1200);
        let acks = [
            Acknowledgement {
                sequence_number: a,
                arrived: true,
                arrival: Some(Duration::from_millis(40)),
                ecn: Default::default(),
            },
            Acknowledgement {
                sequence_number: b,
                arrived: false,
                arrival: None,
                ecn: Default::default(),
            },
        ];
        let mut out = Vec::new();
        h.reports(t0 + Duration::from_millis(50), &acks, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].departure, t0);
        assert_eq!(out[1].departure, t0 + Duration::from_millis(5));
        assert_eq!((out[0].id, out[1].id), (0, 1));
        assert_eq!(out[1].size, 1200);
        assert!(!out[1].arrived);
    }
}
