//! One packet cache per published track, shared by all its subscribers (Galène's
//! `packetcache` and LiveKit's `buffer` do the same): the last `SLOTS` packets by sequence
//! number, so a subscriber's NACK is answered from it, and where the current GOP starts, so a
//! newcomer gets the last keyframe and every packet since instead of waiting for a PLI round
//! trip. Holding a packet is a `Bytes` reference to the payload rtc already received: no copy,
//! no allocation once the ring exists.

use std::time::Instant;

use bytes::Bytes;

/// Packets kept per track: ~8 s of a 2 Mbit/s camera (230 packets/s), ~40 s of audio.
const SLOTS: usize = 2048;

#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
    pub(crate) marker: bool,
    pub(crate) payload: Bytes,
    /// When it arrived from the publisher (a NACK for a packet older than the horizon is not
    /// answered; a GOP older than the replay limit is not replayed to a newcomer).
    pub(crate) arrived: Instant,
}

pub(crate) struct TrackCache {
    ring: Vec<Option<Cached>>,
    /// The highest sequence number stored (wrapping compare), once anything is stored.
    latest: Option<u16>,
    /// First packet of the newest keyframe still in the ring.
    gop_start: Option<u16>,
}

/// `a` is newer than `b` in RTP sequence space.
fn newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl TrackCache {
    pub(crate) fn new() -> TrackCache {
        TrackCache {
            ring: vec![None; SLOTS],
            latest: None,
            gop_start: None,
        }
    }

    pub(crate) fn insert(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &Bytes,
        keyframe: bool,
        arrived: Instant,
    ) {
        let slot = &mut self.ring[seq as usize % SLOTS];
        // The packet this slot held is gone now; if it began the GOP, the GOP is incomplete.
        if let (Some(old), Some(start)) = (slot.as_ref(), self.gop_start) {
            if old.seq == start && old.seq != seq {
                self.gop_start = None;
            }
        }
        *slot = Some(Cached {
            seq,
            timestamp,
            marker,
            payload: payload.clone(),
            arrived,
        });
        if self.latest.is_none_or(|l| newer(seq, l)) {
            self.latest = Some(seq);
            if keyframe {
                self.gop_start = Some(seq);
            }
        }
    }

    /// Whether a keyframe is in the ring to start newcomers from (if not, the engine asks the
    /// publisher for one, so the next newcomer does not wait).
    pub(crate) fn has_gop(&self) -> bool {
        self.gop_start.is_some()
    }

    /// The newest sequence number stored.
    pub(crate) fn latest(&self) -> Option<u16> {
        self.latest
    }

    pub(crate) fn get(&self, seq: u16) -> Option<&Cached> {
        self.ring[seq as usize % SLOTS]
            .as_ref()
            .filter(|c| c.seq == seq)
    }

    /// When the current GOP's keyframe arrived, and how many packets the GOP holds up to and
    /// including `until` (what replaying it to a newcomer would cost).
    pub(crate) fn gop_age(&self, until: u16) -> Option<(Instant, usize)> {
        let start = self.gop_start?;
        let first = self.get(start)?;
        Some((first.arrived, until.wrapping_sub(start) as usize + 1))
    }

    /// The current GOP up to and including `until`, if every packet of it is here.
    pub(crate) fn gop_until(&self, until: u16) -> Option<(u16, u16)> {
        let start = self.gop_start?;
        if newer(start, until) {
            return None;
        }
        let len = until.wrapping_sub(start) as usize + 1;
        if len > SLOTS {
            return None;
        }
        (0..len)
            .all(|i| self.get(start.wrapping_add(i as u16)).is_some())
            .then_some((start, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn answers_by_sequence_number_and_forgets_the_oldest() {
        let mut c = TrackCache::new();
        let p = Bytes::from_static(b"x");
        for seq in 0..(SLOTS as u16 + 10) {
            c.insert(seq, 0, false, &p, false, t0());
        }
        assert!(c.get(5).is_none(), "overwritten");
        assert_eq!(c.get(SLOTS as u16 + 5).unwrap().seq, SLOTS as u16 + 5);
    }

    #[test]
    fn knows_the_current_gop_across_a_wrap() {
        let mut c = TrackCache::new();
        let p = Bytes::from_static(b"x");
        for seq in 65530u16..=65535 {
            c.insert(seq, 0, false, &p, seq == 65533, t0());
        }
        for seq in 0u16..4 {
            c.insert(seq, 0, false, &p, false, t0());
        }
        assert_eq!(c.gop_until(3), Some((65533, 3)));
        // A newer keyframe starts a new GOP.
        c.insert(4, 0, false, &p, true, t0());
        assert_eq!(c.gop_until(4), Some((4, 4)));
        // Late (reordered) keyframe packets do not move it back.
        c.insert(2, 0, false, &p, true, t0());
        assert_eq!(c.gop_until(4), Some((4, 4)));
    }

    #[test]
    fn a_gop_with_a_hole_is_not_offered() {
        let mut c = TrackCache::new();
        let p = Bytes::from_static(b"x");
        c.insert(10, 0, false, &p, true, t0());
        c.insert(12, 0, false, &p, false, t0());
        assert_eq!(c.gop_until(12), None);
        c.insert(11, 0, false, &p, false, t0());
        assert_eq!(c.gop_until(12), Some((10, 12)));
    }

    #[test]
    fn a_gop_pushed_out_of_the_ring_is_forgotten() {
        let mut c = TrackCache::new();
        let p = Bytes::from_static(b"x");
        c.insert(0, 0, false, &p, true, t0());
        for seq in 1..=(SLOTS as u16) {
            c.insert(seq, 0, false, &p, false, t0());
        }
        assert_eq!(c.gop_until(SLOTS as u16), None);
    }
}
