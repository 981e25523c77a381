//! Identifier newtypes shared by every module (`SessionId`, `MemberId`, `TrackId`). They live in
//! the `kursrelay-protocol` crate (protocol/src/ids.rs) because member and track ids are on the
//! wire; this module re-exports them so server code says `crate::ids::…`.

pub use kursrelay_protocol::ids::*;
