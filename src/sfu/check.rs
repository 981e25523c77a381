//! The server end of the connectivity check (`/check`): the page's offer is answered by a
//! check connection inside the media engine, on the real media port — the same sockets, ICE
//! and DTLS a course uses — with all its candidates in the SDP (no trickle). Which candidates
//! (`CheckTransport`): the media port's UDP ones, its ICE-TCP one, or both, so the page tests
//! each transport on its own. The data-channel protocol (echo, burst) is served by the engine
//! (`engine::check`). No media, no room, nothing stored. At most `MAX_CHECKS` run at once,
//! each for at most `CHECK_LIFETIME`; the engine enforces both.

use std::time::Duration;

pub use super::engine::check::BURST_MESSAGE_BYTES;
use super::{engine, Sfu, SfuError};

/// Check connections allowed at once (each costs an rtc connection and a little CPU).
pub const MAX_CHECKS: usize = 64;
/// A check connection is closed after this, whatever the browser does.
pub const CHECK_LIFETIME: Duration = Duration::from_secs(30);

/// Which of the media port's transports a check connection offers the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTransport {
    /// The UDP host (or `media.public_ips`) candidates on `media.udp_port`.
    Udp,
    /// The ICE-TCP passive candidate on the same port number.
    Tcp,
    /// Both, as a course connection has them.
    Both,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("too many connectivity checks are running; try again in a minute")]
    Busy,
    #[error(transparent)]
    Sfu(#[from] SfuError),
}

impl Sfu {
    /// Answers a check page's offer with a check connection on the media port; the engine
    /// closes it when the page closes its channel, it fails, or `CHECK_LIFETIME` passes.
    pub async fn check_answer(
        &self,
        offer_sdp: String,
        transport: CheckTransport,
    ) -> Result<String, CheckError> {
        let (udp, tcp) = match transport {
            CheckTransport::Udp => (true, false),
            CheckTransport::Tcp => (false, true),
            CheckTransport::Both => (true, true),
        };
        self.inner
            .engine
            .call(|reply| engine::Command::Check {
                sdp: offer_sdp,
                udp,
                tcp,
                reply,
            })
            .await
            .map_err(|e| match e {
                SfuError::Busy => CheckError::Busy,
                e => CheckError::Sfu(e),
            })
    }
}
