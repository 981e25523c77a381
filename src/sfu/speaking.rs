//! Who is speaking: the audio level a browser puts in every Opus packet it publishes (RFC 6464,
//! `urn:ietf:params:rtp-hdrext:ssrc-audio-level`: 0 is the loudest, 127 silence, in -dBov),
//! turned into "speaking" / "stopped" with hysteresis, so a cough or a pause between words does
//! not flap. Pure and allocation-free: the engine core feeds it per audio packet of a publish
//! connection and ticks it every turn (a browser with DTX sends nothing while silent).

/// A packet at least this loud (-dBov, lower is louder) counts as voice. Speech at a normal
/// headset distance measures about 20–45; a quiet room 60–127.
pub const LOUD_LEVEL: u8 = 50;
/// Loud packets for this long (with gaps of at most `GAP_MS`) start "speaking".
pub const START_MS: u64 = 250;
/// A gap longer than this between loud packets starts the count again.
pub const GAP_MS: u64 = 150;
/// "Speaking" ends after this long without a loud packet.
pub const STOP_MS: u64 = 800;

/// One publisher's speaking state.
#[derive(Debug, Default, Clone, Copy)]
pub struct Speech {
    speaking: bool,
    /// Start of the current run of loud packets.
    loud_since: Option<u64>,
    last_loud: u64,
}

impl Speech {
    /// The parsed one-byte extension payload (V flag and level): its level.
    pub fn level_of(byte: u8) -> u8 {
        byte & 0x7f
    }

    /// An audio packet with `level` arrived at `now_ms`: Some(new state) when it changed.
    pub fn observe(&mut self, now_ms: u64, level: u8) -> Option<bool> {
        if level > LOUD_LEVEL {
            return self.tick(now_ms);
        }
        let run_broken = self
            .loud_since
            .is_none_or(|_| now_ms.saturating_sub(self.last_loud) > GAP_MS);
        if run_broken {
            self.loud_since = Some(now_ms);
        }
        self.last_loud = now_ms;
        let since = self.loud_since.unwrap_or(now_ms);
        if !self.speaking && now_ms.saturating_sub(since) >= START_MS {
            self.speaking = true;
            return Some(true);
        }
        None
    }

    /// Time passed without a loud packet: Some(false) once "speaking" ends.
    pub fn tick(&mut self, now_ms: u64) -> Option<bool> {
        let quiet_for = now_ms.saturating_sub(self.last_loud);
        if self.loud_since.is_some() && quiet_for > GAP_MS && !self.speaking {
            self.loud_since = None;
        }
        if self.speaking && quiet_for >= STOP_MS {
            self.speaking = false;
            self.loud_since = None;
            return Some(false);
        }
        None
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds (ms, level) packets every 20 ms from `from` to `to`; returns the changes seen.
    fn run(s: &mut Speech, from: u64, to: u64, level: u8) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            if let Some(v) = s.observe(t, level) {
                out.push((t, v));
            }
            t += 20;
        }
        out
    }

    /// (name, segments of (from ms, to ms, level), changes expected as (ms, speaking)).
    type Case<'a> = (&'a str, &'a [(u64, u64, u8)], &'a [(u64, bool)]);

    #[test]
    fn speaking_needs_a_quarter_second_and_ends_after_a_pause() {
        let cases: &[Case] = &[
            ("silence", &[(0, 2000, 127)], &[]),
            (
                "a cough: 100 ms loud",
                &[(0, 100, 20), (100, 2000, 127)],
                &[],
            ),
            ("speech", &[(0, 1000, 30)], &[(260, true)]),
            (
                "speech, then silence",
                &[(0, 1000, 30), (1000, 3000, 127)],
                &[(260, true), (1780, false)],
            ),
            (
                "a short pause between words does not end it",
                &[(0, 1000, 30), (1000, 1400, 127), (1400, 2000, 30)],
                &[(260, true)],
            ),
            ("loud but above the threshold", &[(0, 2000, 55)], &[]),
        ];
        for (name, segments, want) in cases {
            let mut s = Speech::default();
            let mut got = Vec::new();
            for (from, to, level) in segments.iter() {
                got.extend(run(&mut s, *from, *to, *level));
            }
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn silence_without_packets_ends_it_on_tick() {
        let mut s = Speech::default();
        run(&mut s, 0, 600, 30);
        assert!(s.is_speaking());
        assert_eq!(s.tick(1000), None);
        assert_eq!(s.tick(1400), Some(false));
        assert_eq!(s.tick(1500), None);
        assert_eq!(Speech::level_of(0x80 | 33), 33);
    }
}
