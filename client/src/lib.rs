//! # kursrelay-client
//!
//! One typed client for kursrelay's protocol (docs/protocol.md), shared by everything that is
//! not the server: the test harness (tests/common), the load generator (benches/loadgen) and
//! the reference captioner (captioner/). It links the async `webrtc` stack so the server does
//! not have to.
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`signalling`] | the WebSocket: typed `ClientMessage` out, `ServerMessage` in, hello + join, WebSocket pings answered while it reads | know about peer connections |
//! | [`peer`] | a webrtc-rs peer connection set up like the server's (`media_setup`: codec set and interceptors), offer/answer, trickled candidates (held until the remote description is set), keyframe requests | speak on the socket |
//!
//! The message types are [`protocol`] (the `kursrelay-protocol` crate, re-exported).

pub mod peer;
pub mod signalling;

pub use kursrelay_interceptor::is_keyframe_request;
pub use kursrelay_protocol as protocol;
pub use peer::{candidate_init, candidate_message, media_setup, Peer, PeerOptions};
pub use signalling::{Signalling, SignallingRx, SignallingTx};

/// What can go wrong on the client's side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the WebSocket upgrade with this HTTP status.
    #[error("the server refused the WebSocket with HTTP {0}")]
    Refused(u16),
    #[error("WebSocket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    /// A frame from the server that is not a `ServerMessage`.
    #[error("the server sent a message this client does not understand: {0}")]
    BadMessage(#[from] serde_json::Error),
    #[error("the socket closed while waiting for {0}")]
    Closed(&'static str),
    /// The server answered a request with `error`.
    #[error("the server refused {request}: {code:?}: {message}")]
    Server {
        request: String,
        code: protocol::ErrorCode,
        message: String,
    },
    #[error("the peer connection has no local description after setting one")]
    NoLocalDescription,
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::error::Error),
}
