//! Which NACKs are answered (issue 20, "the part that stops congestion feeding itself").
//! Before this, every NACK was answered: below the stream rate a viewer lost more, asked for
//! more, and was sent more (≈ 3 000 re-sends a second at a 500 kbit/s line). Per down-track
//! (one viewer, one track) the engine keeps a `ResendGuard`, made at its first NACK (not per
//! packet), and refuses a re-send when:
//!
//! - **too old**: the packet arrived from the publisher more than `NACK_HORIZON` ago — it
//!   cannot reach the viewer before its jitter buffer has given up on it;
//! - **repeat**: the same sequence number was re-sent to this viewer less than
//!   `NACK_REPEAT_WINDOW` ago — the first re-send may still be on its way (the engine has no
//!   round-trip estimate yet, so the window is fixed);
//! - **budget**: re-sends would exceed `1 / RESEND_SHARE` of the media bytes forwarded to this
//!   down-track (a token bucket: every forwarded byte adds `1 / RESEND_SHARE` byte of credit,
//!   a re-send spends its payload's size, credit is capped at `RESEND_BURST`). There is no
//!   bandwidth estimate yet; this cap is what stops the spiral.
//!
//! Pure: time and byte counts come in, a verdict goes out. No allocation after `new`.

use std::time::Duration;

/// A NACK for a packet that arrived from the publisher longer ago than this is not answered:
/// browsers' jitter buffers hold video for well under a second on a live stream (Chromium
/// gives up on a frame after about its target delay plus the NACK round trips), so a re-send
/// later than this only costs the line.
pub(crate) const NACK_HORIZON: Duration = Duration::from_secs(1);
/// The same sequence number is re-sent to the same viewer at most once per this window.
/// Fixed, because the engine has no round-trip estimate yet: 250 ms covers the 200 ms RTT of
/// RELIABILITY.md's lossy-link case and a home line's queue (the weak-line runner's bucket
/// holds 200 ms), and lets a lost re-send be answered again up to four times within the
/// horizon. Chromium's receiver, without an RTT of its own, asks again every 100 ms.
pub(crate) const NACK_REPEAT_WINDOW: Duration = Duration::from_millis(250);
/// Re-sends may use at most 1/RESEND_SHARE of the bytes forwarded to the down-track.
pub(crate) const RESEND_SHARE: u32 = 4;
/// Credit saved for a burst of losses (a lost keyframe of ≈ 50 packets ≈ 55 KB).
pub(crate) const RESEND_BURST: u64 = 64 * 1024;
/// Sequence numbers remembered per down-track (direct-mapped by the low bits; a collision
/// only forgets an older re-send, i.e. may answer it again).
const RECENT: usize = 256;

/// Why a NACKed packet was not re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooOld,
    Repeat,
    Budget,
}

pub(crate) struct ResendGuard {
    /// (sequence number, when it was last re-sent in ms of the engine's clock).
    recent: [Option<(u16, u64)>; RECENT],
    /// Bytes that may still be re-sent.
    credit: u64,
    /// The down-track's forwarded-bytes counter when credit was last added (wrapping u32).
    octets_seen: u32,
}

impl ResendGuard {
    /// `octets`: the down-track's forwarded bytes so far (what was sent before its first NACK
    /// counts too, up to the burst).
    pub(crate) fn new(octets: u32) -> ResendGuard {
        ResendGuard {
            recent: [None; RECENT],
            credit: (u64::from(octets) / u64::from(RESEND_SHARE)).min(RESEND_BURST),
            octets_seen: octets,
        }
    }

    /// Whether to re-send `seq` (`len` payload bytes, `age` since it arrived) at `now_ms`,
    /// the down-track having forwarded `octets` bytes so far. On yes the re-send is recorded.
    pub(crate) fn check(
        &mut self,
        now_ms: u64,
        seq: u16,
        age: Duration,
        len: usize,
        octets: u32,
    ) -> Result<(), Refusal> {
        if age > NACK_HORIZON {
            return Err(Refusal::TooOld);
        }
        let slot = &mut self.recent[seq as usize % RECENT];
        if let Some((s, at)) = *slot {
            if s == seq && now_ms.saturating_sub(at) < NACK_REPEAT_WINDOW.as_millis() as u64 {
                return Err(Refusal::Repeat);
            }
        }
        let added = octets.wrapping_sub(self.octets_seen);
        self.octets_seen = octets;
        self.credit = (self.credit + u64::from(added) / u64::from(RESEND_SHARE)).min(RESEND_BURST);
        let len = len as u64;
        if len > self.credit {
            return Err(Refusal::Budget);
        }
        self.credit -= len;
        *slot = Some((seq, now_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: Duration = Duration::from_millis(50);

    #[test]
    fn a_repeat_within_the_window_is_refused_and_allowed_after_it() {
        let mut g = ResendGuard::new(1_000_000);
        assert_eq!(g.check(1000, 7, NEW, 1000, 1_000_000), Ok(()));
        assert_eq!(g.check(1100, 7, NEW, 1000, 1_000_000), Err(Refusal::Repeat));
        assert_eq!(g.check(1100, 8, NEW, 1000, 1_000_000), Ok(()));
        assert_eq!(g.check(1250, 7, NEW, 1000, 1_000_000), Ok(()));
    }

    #[test]
    fn too_old_packets_are_refused() {
        let mut g = ResendGuard::new(1_000_000);
        assert_eq!(
            g.check(0, 1, Duration::from_millis(1001), 10, 1_000_000),
            Err(Refusal::TooOld)
        );
        assert_eq!(g.check(0, 1, Duration::from_secs(1), 10, 1_000_000), Ok(()));
    }

    #[test]
    fn re_sends_stay_within_a_quarter_of_what_was_forwarded() {
        let mut g = ResendGuard::new(0);
        let (mut forwarded, mut resent) = (0u32, 0u64);
        for i in 0..10_000u32 {
            forwarded = forwarded.wrapping_add(1000);
            for k in 0..4u16 {
                let seq = (i as u16).wrapping_mul(4).wrapping_add(k);
                if g.check(u64::from(i) * 10, seq, NEW, 1000, forwarded)
                    .is_ok()
                {
                    resent += 1000;
                }
            }
        }
        let share = 10_000u64 * 1000 / u64::from(RESEND_SHARE);
        assert!(resent <= share + RESEND_BURST, "{resent} > {share}");
        assert!(resent >= share - 1000, "{resent} well under {share}");
    }
}
