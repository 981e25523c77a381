//! `ConnKey`: a connection's place in the engine. A leaf: the engine, the forwarder's
//! down-tracks and the member tasks' handles all name connections by it, and it depends on
//! nothing.

/// A connection's slot in the engine and the slot's generation, so a stale key (a closed
/// connection's down-track) never reaches the connection that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnKey {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}
