//! The server end of the connectivity check (`/check`): a short-lived peer connection, built
//! exactly like a media connection (same bind addresses, ICE, DTLS), that answers a browser's
//! offer with all its candidates in the SDP (no trickle) and serves a data channel:
//!
//! - a message starting with `p` is echoed back unchanged (round trip and loss);
//! - `d` followed by a big-endian u32 `n` asks for `n` messages of `BURST_MESSAGE_BYTES`
//!   (`D`, u32 sequence number, filler) sent as fast as the connection takes them, for at most
//!   `BURST_LIMIT` (rough download bandwidth).
//!
//! No media, no room, nothing stored. At most `MAX_CHECKS` run at once, each for at most
//! `CHECK_LIFETIME`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription,
};

use super::{Sfu, SfuError};

/// Check connections allowed at once (each costs a socket and a little CPU).
pub const MAX_CHECKS: usize = 64;
/// A check connection is closed after this, whatever the browser does.
pub const CHECK_LIFETIME: Duration = Duration::from_secs(30);
/// How long the answer waits for the server's candidates.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of one bandwidth-test message (fits one packet on any path).
pub const BURST_MESSAGE_BYTES: usize = 1100;
/// Most messages one `d` request may ask for (≈ 11 MB).
const BURST_MAX_MESSAGES: u32 = 10_000;
/// A burst stops after this even if not all was sent.
const BURST_LIMIT: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("too many connectivity checks are running; try again in a minute")]
    Busy,
    #[error(transparent)]
    Sfu(#[from] SfuError),
}

/// Counts running checks; cheap to clone.
#[derive(Clone)]
pub struct CheckLimiter {
    permits: Arc<Semaphore>,
}

impl Default for CheckLimiter {
    fn default() -> Self {
        CheckLimiter {
            permits: Arc::new(Semaphore::new(MAX_CHECKS)),
        }
    }
}

struct CheckHandler {
    gathered: watch::Sender<bool>,
    done: CancellationToken,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for CheckHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.done.cancel();
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        // Runs in the connection's driver loop: serve the channel elsewhere.
        tokio::spawn(serve_channel(channel, self.done.clone()));
    }
}

impl Sfu {
    /// Answers a check page's offer; the connection lives on by itself until the browser
    /// closes it, it fails, `CHECK_LIFETIME` passes or `shutdown` is cancelled.
    pub async fn check_answer(
        &self,
        limiter: &CheckLimiter,
        offer_sdp: String,
        shutdown: CancellationToken,
    ) -> Result<String, CheckError> {
        let permit = limiter
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| CheckError::Busy)?;
        let (gathered, mut gathered_rx) = watch::channel(false);
        let done = shutdown.child_token();
        let handler = Arc::new(CheckHandler {
            gathered,
            done: done.clone(),
        });
        let pc = super::peer::build(&self.inner, handler).await?;
        let answer = negotiate(&pc, offer_sdp, &mut gathered_rx).await;
        // From here the connection owns its permit and closes itself.
        spawn_lifetime(pc.clone(), done, permit);
        answer
    }
}

async fn negotiate(
    pc: &Arc<dyn PeerConnection>,
    offer_sdp: String,
    gathered: &mut watch::Receiver<bool>,
) -> Result<String, CheckError> {
    let offer =
        RTCSessionDescription::offer(offer_sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
    pc.set_remote_description(offer)
        .await
        .map_err(|e| SfuError::BadSdp(e.to_string()))?;
    let answer = pc.create_answer(None).await.map_err(SfuError::webrtc)?;
    pc.set_local_description(answer)
        .await
        .map_err(SfuError::webrtc)?;
    // Host candidates only: gathering takes milliseconds. On a timeout, answer with what
    // there is; the browser's line then says what failed.
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|g| *g)).await;
    let local = pc
        .local_description()
        .await
        .ok_or_else(|| SfuError::WebRtc("no local description after answering".into()))?;
    Ok(local.sdp)
}

fn spawn_lifetime(
    pc: Arc<dyn PeerConnection>,
    done: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CHECK_LIFETIME, done.cancelled()).await;
        done.cancel();
        let _ = pc.close().await;
        drop(permit);
    });
}

async fn serve_channel(channel: Arc<dyn DataChannel>, done: CancellationToken) {
    loop {
        let event = tokio::select! {
            _ = done.cancelled() => break,
            ev = channel.poll() => ev,
        };
        let Some(event) = event else { break };
        let more = match event {
            DataChannelEvent::OnMessage(msg) => answer(&channel, msg.data, &done).await,
            DataChannelEvent::OnClose => {
                done.cancel();
                false
            }
            _ => true,
        };
        if !more {
            break;
        }
    }
}

/// Answers one message from the page; false when the channel can no longer be written.
async fn answer(channel: &Arc<dyn DataChannel>, data: BytesMut, done: &CancellationToken) -> bool {
    match data.first() {
        Some(b'p') => channel.send(data).await.is_ok(),
        Some(b'd') if data.len() >= 5 => {
            let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
            // Sent from the channel's task: pings wait until the burst is over, which is what
            // the page expects (it measures one thing at a time).
            burst(channel, n.min(BURST_MAX_MESSAGES), done).await;
            true
        }
        _ => true, // not ours: ignored
    }
}

async fn burst(channel: &Arc<dyn DataChannel>, n: u32, done: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + BURST_LIMIT;
    for seq in 0..n {
        let mut msg = BytesMut::with_capacity(BURST_MESSAGE_BYTES);
        msg.put_u8(b'D');
        msg.put_u32(seq);
        msg.resize(BURST_MESSAGE_BYTES, 0);
        let sent = tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            r = channel.send(msg) => r,
        };
        if sent.is_err() {
            return;
        }
    }
}
