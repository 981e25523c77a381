//! Signalling message types: the contract with `web/`, the clients and docs/protocol.md. They
//! live in the `kursrelay-protocol` crate (protocol/), which the clients share without linking
//! the server; this module re-exports it so server code says `crate::protocol::…`.

pub use kursrelay_protocol::*;
