//! The wall clock, in seconds since the Unix epoch: for token expiry, TURN credentials and the
//! database's timestamps. A leaf: it imports nothing of the crate, so every module may use it
//! without a circle (`auth` and `db` both need the time, and neither may need the other).
//! Code that must be testable in simulated time takes `now` as an argument instead.

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
