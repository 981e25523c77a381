//! A token bucket with a drop-tail queue: the bandwidth limit of a simulated home line, as pure
//! logic (time is passed in). Used by the test harness's impairer (`netsim`, a sibling file)
//! and by the load generator (benches/loadgen, through `#[path]`); it must not depend on
//! either.

use std::time::Duration;

use tokio::time::Instant;

/// How deep a shaper's drop-tail queue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// At most this much waiting time at the line's rate (200 ms: a typical 4G buffer).
    Millis(u64),
    /// At most this many bytes waiting.
    Bytes(u64),
}

/// A line's capacity: `bits_per_sec` sustained, `burst_bytes` at once after a quiet spell,
/// and the queue in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub bits_per_sec: u64,
    pub burst_bytes: u64,
    pub queue: Queue,
}

impl Rate {
    /// `kbit_per_sec` with a 200 ms queue and a burst of 10 ms of the rate (at least one
    /// 1 500-byte packet): the shape the issue 20 measurements used.
    pub fn kbps(kbit_per_sec: u64) -> Rate {
        let bits_per_sec = kbit_per_sec * 1000;
        Rate {
            bits_per_sec,
            burst_bytes: (bits_per_sec / 800).max(1500),
            queue: Queue::Millis(200),
        }
    }
}

/// What a `Shaper` does with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It leaves the queue (is on the wire) at this time: `now` when the bucket had tokens.
    Leaves(Instant),
    /// The queue was full: dropped at its tail.
    Dropped,
}

/// A token bucket with a drop-tail queue, as pure logic: time is passed in, so it is tested
/// with made-up instants (tests/weak_line.rs) and used with the real clock by `netsim::Link`
/// and the load generator's capped subscribers.
///
/// The bucket holds up to `burst_bytes` of tokens and fills at the rate. The state is one
/// number: the tokens left at `at` after every admitted datagram has taken its share. Below
/// zero it is the backlog, the bytes still queued, so a datagram admitted now leaves when the
/// bucket has refilled to zero: `now + backlog / rate` (first in, first out). A datagram whose
/// own wait would exceed the queue's depth is dropped and takes nothing.
#[derive(Clone, Debug)]
pub struct Shaper {
    rate: Rate,
    tokens: f64,
    at: Instant,
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
}

impl Shaper {
    /// A shaper whose bucket is full at `now`.
    pub fn new(now: Instant, rate: Rate) -> Shaper {
        assert!(
            rate.bits_per_sec > 0,
            "a line of 0 bit/s: use Link::set_down"
        );
        Shaper {
            rate,
            tokens: rate.burst_bytes as f64,
            at: now,
            passed: 0,
            passed_bytes: 0,
            dropped: 0,
            dropped_bytes: 0,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn bytes_per_sec(&self) -> f64 {
        self.rate.bits_per_sec as f64 / 8.0
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let earned = now.duration_since(self.at).as_secs_f64() * self.bytes_per_sec();
            self.tokens = (self.tokens + earned).min(self.rate.burst_bytes as f64);
            self.at = now;
        }
    }

    /// The bytes queued at `now` (0 when the line is idle).
    pub fn backlog(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (-self.tokens).max(0.0).round() as u64
    }

    /// The queue's depth in bytes at the current rate.
    fn depth(&self) -> f64 {
        match self.rate.queue {
            Queue::Bytes(b) => b as f64,
            Queue::Millis(ms) => self.bytes_per_sec() * ms as f64 / 1000.0,
        }
    }

    /// A datagram of `len` bytes arrives at `now`.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        self.refill(now);
        let after = self.tokens - len as f64;
        if after < 0.0 && -after > self.depth() {
            self.dropped += 1;
            self.dropped_bytes += len as u64;
            return Verdict::Dropped;
        }
        self.tokens = after;
        self.passed += 1;
        self.passed_bytes += len as u64;
        if after >= 0.0 {
            Verdict::Leaves(now)
        } else {
            Verdict::Leaves(now + Duration::from_secs_f64(-after / self.bytes_per_sec()))
        }
    }

    /// The line changes speed at `now` (what is queued drains at the new rate from now on;
    /// datagrams already given a time keep it).
    pub fn set_rate(&mut self, now: Instant, rate: Rate) {
        assert!(
            rate.bits_per_sec > 0,
            "a line of 0 bit/s: use Link::set_down"
        );
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(rate.burst_bytes as f64);
    }
}
