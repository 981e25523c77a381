//! The media path: the only module that imports `webrtc::`/`rtc::`.
//!
//! - `peer`: how a connection is built; the event handler that reports to the member task.
//! - `publisher`: a member's publish connection (client offers, we answer); starts a
//!   feed per incoming track (read for as long as the track lives, forwarded only while the
//!   room holds a publication of it).
//! - `subscriber`: a member's subscribe connection (we offer); one down-track per track it
//!   receives, one writer task draining its queue.
//! - `forwarder`: feeds and their publications (`Forwarder`), the per-packet loop,
//!   down-tracks, the writer, keyframe pacing.
//! - `keyframe`: keyframe detection, the PLI/FIR interceptor, the request handle.
//! - `metrics`: counters and live-task gauges.
//! - `check`: the connectivity check's short-lived test connection (data channel echo and
//!   bandwidth burst; no media).
//! - `nontrickle`: a local description with all candidates, for WHIP/WHEP peers (issue 13).
//!
//! Everything here is driven by the member task (negotiation) and the room actor (who receives
//! what: `Forwarder::add_subscriber`/`remove_subscriber`). The public types carry no webrtc type
//! except `peer::media_setup`, which the test client shares.

mod check;
mod forwarder;
pub mod keyframe;
pub mod metrics;
mod nontrickle;
mod peer;
mod publisher;
mod subscriber;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use check::{CheckError, CheckLimiter, BURST_MESSAGE_BYTES, CHECK_LIFETIME, MAX_CHECKS};
pub use forwarder::{DownTrack, FanoutHarness, Forwarder};
pub use keyframe::KeyframeRequester;
pub use metrics::{LiveCounts, Metrics};
pub use peer::media_setup;
pub use publisher::Publisher;
pub use subscriber::Subscriber;

use crate::config::MediaConfig;
use crate::ids::{MemberId, TrackId};
use crate::protocol::{IceCandidate, MediaKind, Source, Target};

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("the session description could not be used: {0}")]
    BadSdp(String),
    #[error("the ICE candidate could not be used: {0}")]
    BadCandidate(String),
    #[error("no offer is outstanding on this connection")]
    NoOfferPending,
    #[error("webrtc: {0}")]
    WebRtc(String),
}

impl SfuError {
    fn webrtc(e: impl std::fmt::Display) -> SfuError {
        SfuError::WebRtc(e.to_string())
    }
}

/// Settings the media path needs, taken from `[media]` in the config.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub bind_ips: Vec<IpAddr>,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub subscriber_queue_packets: usize,
    pub keyframe_request_interval: Duration,
}

impl From<&MediaConfig> for MediaSettings {
    fn from(c: &MediaConfig) -> Self {
        MediaSettings {
            bind_ips: c.bind_ips.clone(),
            ice_disconnected_timeout: c.ice_disconnected_timeout(),
            ice_failed_timeout: c.ice_failed_timeout(),
            subscriber_queue_packets: c.subscriber_queue_packets,
            keyframe_request_interval: c.keyframe_request_interval(),
        }
    }
}

/// The codec of a published track, as negotiated with its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
}

/// What the room and the subscribers need to know about a published track.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    pub id: TrackId,
    pub member: MemberId,
    pub kind: MediaKind,
    pub source: Source,
    /// The publisher's own id for the track (its `MediaStreamTrack.id`), for `unpublish`.
    pub client_track_id: String,
    pub codec: Codec,
    pub keyframes: KeyframeRequester,
}

/// Identifies one peer connection, so events of a replaced connection can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u64);

impl ConnId {
    fn next() -> ConnId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// What a member's connections report to its member task.
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the client.
    Candidate(Target, ConnId, IceCandidate),
    Connected(Target, ConnId),
    /// The connection failed or closed underneath us.
    Failed(Target, ConnId),
    /// A new track arrived on the publish connection: forward it if the room agrees.
    Published(ConnId, Forwarder),
    /// A track of this publish connection that is not forwarded (floor taken back, muted,
    /// refused) still receives media; sent about once a second while that lasts.
    ParkedMedia(ConnId),
}

pub(crate) struct SfuInner {
    pub(crate) settings: MediaSettings,
    pub(crate) metrics: Arc<Metrics>,
}

/// Entry point of the media path: builds publish and subscribe connections.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

impl Sfu {
    pub fn new(settings: MediaSettings) -> Sfu {
        Sfu {
            inner: Arc::new(SfuInner {
                settings,
                metrics: Arc::new(Metrics::default()),
            }),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Builds `member`'s publish connection. Tracks that arrive on it are forwarded and
    /// reported as `PeerEvent::Published` on `events`.
    pub async fn publisher(
        &self,
        member: MemberId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
    ) -> Result<Publisher, SfuError> {
        Publisher::new(self.inner.clone(), member, events).await
    }

    /// Builds `member`'s subscribe connection.
    pub async fn subscriber(
        &self,
        member: MemberId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
    ) -> Result<Subscriber, SfuError> {
        Subscriber::new(self.inner.clone(), member, events).await
    }
}
