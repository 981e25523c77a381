//! For peers that do not trickle ICE (WHIP encoders, WHEP players, RFC 9725): our session
//! description with every local candidate in it. The one helper the HTTP ingest and playback
//! need from the media path; kept apart so the rest of `sfu` is untouched by it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use webrtc::peer_connection::PeerConnection;

use super::SfuError;

/// How often the local description is looked at while gathering runs.
const POLL: Duration = Duration::from_millis(20);

/// The current local description once ICE gathering has finished (`a=end-of-candidates`), or
/// as it is after `within` (with the candidates gathered so far). webrtc-rs fills gathered
/// candidates into `local_description()`; the server gathers host candidates only (no STUN),
/// so this takes milliseconds.
pub(crate) async fn gathered_local_sdp(
    pc: &Arc<dyn PeerConnection>,
    within: Duration,
) -> Result<String, SfuError> {
    let deadline = Instant::now() + within;
    loop {
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description to complete".into()))?
            .sdp;
        if sdp.contains("a=end-of-candidates") || Instant::now() >= deadline {
            return Ok(sdp);
        }
        tokio::time::sleep(POLL).await;
    }
}
