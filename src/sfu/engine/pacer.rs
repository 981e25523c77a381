//! A pacer per viewer (issue 20): a viewer's video leaves the engine no faster than its line
//! is estimated to carry, so a burst (a slide's keyframe of tens of KB, a newcomer's GOP, a
//! run of re-sends) is spread over time instead of overflowing the queue in front of a weak
//! home line. Pure: time comes in as an argument.
//!
//! - Sound is never held (audio first): it is sent at once and charged to the budget, so the
//!   video waits behind it, not the other way round.
//! - Video and re-sends are sent at once while nothing is held and the budget allows, and
//!   otherwise held in order (a re-send goes to the front: it repairs a picture already late).
//!   What is held is not sealed yet: its transport-wide sequence number is given when it
//!   leaves, so the estimate sees when packets really left (a number given when queued would
//!   make the pacer's own queue look like a congested line).
//! - The rate is the estimate × `PACE_FACTOR`; at least `OFFERED_FACTOR` × the video the
//!   viewer was offered lately (a smoothed rate: the pacer spreads bursts, it does not thin
//!   the stream — choosing less is the allocator's work, and a single-layer video above the
//!   estimate must not queue up here); and at least what empties the held packets within
//!   `DRAIN_WITHIN`. At most `HELD_MAX` packets are held; beyond that the oldest goes at once.
//! - Off (everything at once, as before) while no transport-cc feedback drives the estimate:
//!   an estimate from receiver reports alone may sit far below a good line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::conn::Sent;
use crate::sfu::forwarder::{DownTrack, Outgoing};

/// Pacing rate over the estimate. A slide keyframe of 27 KB paced at 1.25 × 400 kbit/s into a
/// 400 kbit/s line with a 200 ms queue leaves ≈ 5 KB in that queue (it holds 10 KB); at 2.5 ×
/// (libwebrtc's sender-side factor) it would leave ≈ 16 KB and the line would drop the rest.
pub(crate) const PACE_FACTOR: f64 = 1.25;
/// The pacing rate is at least this × the video offered to the viewer lately (the larger of
/// the last allocation pass's rate and a smoothed one).
pub(crate) const OFFERED_FACTOR: f64 = 1.1;
/// Weight of the newest measurement in the smoothed rate (one per allocation pass, 500 ms).
const OFFERED_WEIGHT: f64 = 0.25;
/// Whatever is held leaves within about this long, whatever the estimate (a backlog bigger
/// than this at the pacing rate is sent faster). A slide's keyframe is far below it; as a
/// term added to the rate instead, it sent a 29 KB keyframe fast enough to overflow a
/// 400 kbit/s line's 200 ms queue (tests/media_sim.rs).
pub(crate) const DRAIN_WITHIN: Duration = Duration::from_secs(1);
/// At most this many packets held per viewer (≈ 300 KB of pooled buffers at most, only while
/// a burst drains).
pub(crate) const HELD_MAX: usize = 256;
/// How often held packets are looked at while any are held.
pub(crate) const PACE_TICK: Duration = Duration::from_millis(5);
/// The budget a quiet moment may save up: this much time at the pacing rate, and at least two
/// full-size packets.
const BURST: Duration = Duration::from_millis(20);
const BURST_MIN_BYTES: f64 = 2.0 * 1300.0;

/// One forwarded packet held for later: what the seal needs.
pub(crate) struct Held {
    pub(crate) down: Arc<DownTrack>,
    pub(crate) out: Outgoing,
    pub(crate) marker: bool,
    /// A copy of the payload in a pooled buffer (given back to the pool once sealed).
    pub(crate) payload: BytesMut,
    pub(crate) what: Sent,
    /// A re-send's transport-wide number (extension id, number): the original's.
    pub(crate) twcc: Option<(u8, u16)>,
}

/// `T`: what is held (`Held` in the engine), with its size on the wire.
pub(crate) struct Pacer<T> {
    held: VecDeque<(T, usize)>,
    held_bytes: usize,
    /// Bytes that may leave now (negative: sent ahead of the rate).
    credit: f64,
    last: Option<Instant>,
    /// Bits per second; `None`: off.
    rate_bps: Option<f64>,
    /// Video bytes offered since the last `update`, and their smoothed rate (bit/s; `None`
    /// before the first measurement).
    offered_bytes: u64,
    offered_bps: Option<f64>,
    /// Whether the core has this viewer on its list of pacers holding packets.
    pub(crate) listed: bool,
}

impl<T> Default for Pacer<T> {
    fn default() -> Self {
        Pacer {
            held: VecDeque::new(),
            held_bytes: 0,
            credit: 0.0,
            last: None,
            rate_bps: None,
            offered_bytes: 0,
            offered_bps: None,
            listed: false,
        }
    }
}

impl<T> Pacer<T> {
    /// Every allocation pass: the viewer's estimate now (`None` when no transport-cc drives
    /// it: pacing off), `secs` since the last pass.
    pub(crate) fn update(&mut self, estimate_bps: Option<f64>, secs: f64) {
        let sample = self.offered_bytes as f64 * 8.0 / secs.max(0.001);
        self.offered_bytes = 0;
        let smooth = self
            .offered_bps
            .map_or(sample, |o| o + OFFERED_WEIGHT * (sample - o));
        self.offered_bps = Some(smooth);
        let offered = smooth.max(sample);
        let was_on = self.is_on();
        self.rate_bps = estimate_bps.map(|e| (e * PACE_FACTOR).max(offered * OFFERED_FACTOR));
        if let (false, Some(rate)) = (was_on, self.rate_bps) {
            // Turned on: the budget starts full, counted from the next packet.
            self.credit = burst_bytes(rate);
            self.last = None;
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.rate_bps.is_some()
    }

    pub(crate) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.rate_bps else {
            return;
        };
        let rate = rate.max(self.held_bytes as f64 * 8.0 / DRAIN_WITHIN.as_secs_f64());
        let bytes_per_s = rate / 8.0;
        let since = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.credit = (self.credit + bytes_per_s * since.as_secs_f64()).min(burst_bytes(rate));
    }

    /// Whether a video packet (or re-send) of `size` wire bytes may leave now; if so it is
    /// charged. False: hold it.
    pub(crate) fn may_send(&mut self, now: Instant, size: usize) -> bool {
        self.offered_bytes += size as u64;
        if !self.is_on() {
            return true;
        }
        self.refill(now);
        if !self.held.is_empty() || self.credit < 0.0 {
            return false;
        }
        self.credit -= size as f64;
        true
    }

    /// Sound of `size` wire bytes went out at once: the video waits for it.
    pub(crate) fn charge(&mut self, now: Instant, size: usize) {
        if self.is_on() {
            self.refill(now);
            self.credit -= size as f64;
        }
    }

    /// Holds a packet of `size` wire bytes (`urgent`, a re-send: before the rest). Returns
    /// the oldest held packet when more than `HELD_MAX` are held: it must go now.
    pub(crate) fn hold(&mut self, item: T, size: usize, urgent: bool) -> Option<T> {
        self.held_bytes += size;
        if urgent {
            self.held.push_front((item, size));
        } else {
            self.held.push_back((item, size));
        }
        if self.held.len() > HELD_MAX {
            let (old, size) = self.held.pop_front()?;
            self.held_bytes -= size;
            self.credit -= size as f64;
            return Some(old);
        }
        None
    }

    /// Takes out every held packet matching `f` (order kept for the rest) and hands each to
    /// `gone`.
    pub(crate) fn remove_where(&mut self, f: impl Fn(&T) -> bool, mut gone: impl FnMut(T)) {
        for _ in 0..self.held.len() {
            let Some((item, size)) = self.held.pop_front() else {
                break;
            };
            if f(&item) {
                self.held_bytes -= size;
                gone(item);
            } else {
                self.held.push_back((item, size));
            }
        }
    }

    /// Whether a held packet matches `f`.
    pub(crate) fn holds(&self, f: impl Fn(&T) -> bool) -> bool {
        self.held.iter().any(|(item, _)| f(item))
    }

    /// The next held packet due to leave at `now`, if any (all of them when pacing is off).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.is_on() {
            self.refill(now);
            if self.credit < 0.0 {
                return None;
            }
        }
        let (item, size) = self.held.pop_front()?;
        self.held_bytes -= size;
        if self.is_on() {
            self.credit -= size as f64;
        }
        Some(item)
    }
}

/// The budget a quiet moment may save up at `rate_bps`.
fn burst_bytes(rate_bps: f64) -> f64 {
    (rate_bps / 8.0 * BURST.as_secs_f64()).max(BURST_MIN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pacer on at `estimate`, its budget counted from `t0` (what it returns).
    fn pacer_at(estimate: f64) -> (Instant, Pacer<&'static str>) {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.update(Some(estimate), 0.5);
        p.may_send(t0, 0);
        (t0, p)
    }

    /// 40 packets of 1 000 bytes at once into a 400 kbit/s estimate: the first leave at once
    /// (the saved-up budget), the rest at the pacing rate (500 kbit/s), not faster.
    #[test]
    fn a_burst_leaves_at_the_pacing_rate() {
        let (t0, mut p) = pacer_at(400_000.0);
        let mut at_once = 0;
        for _ in 0..40 {
            if p.may_send(t0, 1000) {
                at_once += 1;
            } else {
                assert!(p.hold("video", 1000, false).is_none());
            }
        }
        assert!(at_once <= 3, "{at_once} left at once");
        let mut left = Vec::new();
        let mut t = t0;
        while p.is_holding() {
            t += PACE_TICK;
            while p.pop_due(t).is_some() {
                left.push(t - t0);
            }
            assert!(t - t0 < Duration::from_secs(2), "still holding after 2 s");
        }
        let last = *left.last().unwrap();
        // 37 KB at 500 kbit/s: 0.59 s (0.55 s measured: the first packets leave at once).
        assert!(last <= Duration::from_millis(650), "{last:?}");
        assert!(last >= Duration::from_millis(500), "{last:?}");
    }

    /// Sound goes at once and the video waits behind it; a re-send goes before held video.
    #[test]
    fn sound_first_and_re_sends_before_held_video() {
        let (t0, mut p) = pacer_at(400_000.0);
        p.charge(t0, 10_000);
        assert!(
            !p.may_send(t0, 1000),
            "video went although sound took the budget"
        );
        p.hold("video", 1000, false);
        p.hold("re-send", 500, true);
        let mut t = t0;
        let first = loop {
            t += PACE_TICK;
            if let Some(h) = p.pop_due(t) {
                break h;
            }
        };
        assert_eq!(first, "re-send");
    }

    /// Off (no transport-cc): nothing is ever held; held packets all leave at once.
    #[test]
    fn off_sends_everything_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::<&str>::default();
        for _ in 0..100 {
            assert!(p.may_send(t0, 1200));
        }
        p.update(Some(100_000.0), 0.5);
        for _ in 0..10 {
            if !p.may_send(t0, 1200) {
                p.hold("video", 1200, false);
            }
        }
        assert!(p.is_holding());
        p.update(None, 0.5);
        let mut n = 0;
        while p.pop_due(t0).is_some() {
            n += 1;
        }
        assert!(n > 0 && !p.is_holding());
    }

    /// A stream offered above the estimate is not held back for long: the rate follows what
    /// is offered (the allocator, not the pacer, decides how much a viewer gets).
    #[test]
    fn a_steady_stream_above_the_estimate_is_not_queued_up() {
        let (t0, mut p) = pacer_at(1_000_000.0);
        // 2 Mbit/s offered: 1 000-byte packets every 4 ms, for 10 s.
        let mut t = t0;
        let mut next_update = t0 + Duration::from_millis(500);
        let mut worst = Duration::ZERO;
        let mut held_at: VecDeque<Instant> = VecDeque::new();
        while t - t0 < Duration::from_secs(10) {
            t += Duration::from_millis(4);
            if t >= next_update {
                p.update(Some(1_000_000.0), 0.5);
                next_update += Duration::from_millis(500);
            }
            while p.pop_due(t).is_some() {
                let at = held_at.pop_front().unwrap();
                if t - t0 > Duration::from_secs(5) {
                    worst = worst.max(t - at);
                }
            }
            if !p.may_send(t, 1000) {
                p.hold("video", 1000, false);
                held_at.push_back(t);
            }
        }
        assert!(
            worst <= Duration::from_millis(50),
            "held {worst:?} after 5 s"
        );
    }

    /// Never more than HELD_MAX held: the oldest goes.
    #[test]
    fn the_held_packets_are_bounded() {
        let (t0, mut p) = pacer_at(50_000.0);
        p.may_send(t0, 100_000);
        let mut forced = 0;
        for _ in 0..HELD_MAX + 10 {
            forced += usize::from(p.hold("video", 1200, false).is_some());
        }
        assert_eq!(forced, 10);
    }
}
