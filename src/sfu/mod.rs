//! The media path: the only module that imports `webrtc::`/`rtc::`.
//!
//! - `engine`: the media engine — a sans-IO core (`engine::core`: every publish and subscribe
//!   connection as a sans-IO `rtc` connection, demultiplexing, packet-major forwarding, timers,
//!   keyframe requests upstream; time passed in) inside a shell thread (`engine::shell`) that
//!   owns the one media port: batched reads and sends. `engine::testing` drives the core in
//!   simulated time for tests, benchmarks and fuzz targets.
//! - `conn_key`: `ConnKey`, a connection's place in the engine (a leaf).
//! - `publisher` / `subscriber`: a member's two connections as the member task sees them;
//!   every call is a command to the engine, answered on a oneshot channel.
//! - `forwarder`: feeds (tracks arriving on a publish connection) and their publications
//!   (`Forwarder`, held by the room), down-tracks and the per-subscriber header rewrite.
//! - `keyframe`: keyframe detection, VP8 picture ids and sizes, the PLI/FIR interceptor, the
//!   request handle (one want per simulcast layer).
//! - `allocator`: per viewer, the bandwidth estimate (transport-cc into rtc's GCC, else
//!   receiver-report loss; REMB caps it) and the choice of layer for each video (hysteresis,
//!   pause when nothing fits); pure, fed by the engine core.
//! - `speaking`: who is speaking, from the RFC 6464 audio level of published sound
//!   (hysteresis; pure, fed by the engine core per audio packet, no allocation).
//! - `metrics`: counters and gauges (connections, feeds, datagrams dropped and why).
//! - `check`: the connectivity check's door into the engine (`Sfu::check_answer`): a check
//!   connection on the real media port, UDP and/or ICE-TCP (`CheckTransport`), serving the
//!   page's data channel (`engine::check`).
//!
//! Everything here is driven by the member task (negotiation) and the room actor (who receives
//! what: `Forwarder::add_subscriber`/`remove_subscriber`). The public types carry no webrtc type.
//! The server links only the sans-IO `rtc`; the async `webrtc` stack is the clients'
//! (`kursrelay-client`).

pub(crate) mod allocator;
mod check;
mod conn_key;
mod engine;
mod forwarder;
pub mod keyframe;
pub mod metrics;
pub(crate) mod probe;
mod publisher;
pub mod speaking;
mod subscriber;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use allocator::{Preference, VideoQuality};
pub use check::{CheckError, CheckTransport, BURST_MESSAGE_BYTES, CHECK_LIFETIME, MAX_CHECKS};
pub use engine::testing;
pub use forwarder::{DownTrack, Forwarder};
pub use keyframe::KeyframeRequester;
pub use metrics::{LiveCounts, Metrics};
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
    #[error("the media engine is too busy to take this request now")]
    Busy,
    #[error("the media engine has stopped")]
    EngineStopped,
    #[error("the connection is closed")]
    Closed,
    #[error("{0}")]
    Bind(String),
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
    /// The one UDP port of every media connection (0: any free port, for tests).
    pub udp_port: u16,
    /// Addresses advertised instead of the bound ones (a server behind 1:1 NAT).
    pub public_ips: Vec<IpAddr>,
    /// ICE-TCP (passive) on the media port number, for networks that block UDP.
    pub ice_tcp: bool,
    /// Whether UDP candidates are offered (off only to prove the TCP path, or for a network
    /// known to drop UDP).
    pub udp_candidates: bool,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
    pub keyframe_request_interval: Duration,
    /// Accept simulcast publishing (`media.simulcast`); when off, an offer with simulcast is
    /// refused with a clear error.
    pub simulcast: bool,
    /// Pace each viewer's video to its line (`media.pacer`).
    pub pacer: bool,
    /// Probe a viewer's line before a step up (`media.probes`).
    pub probes: bool,
}

impl From<&MediaConfig> for MediaSettings {
    fn from(c: &MediaConfig) -> Self {
        MediaSettings {
            bind_ips: c.bind_ips.clone(),
            udp_port: c.udp_port,
            public_ips: c.public_ips.clone(),
            ice_tcp: c.transports.iter().any(|t| t == "tcp"),
            udp_candidates: c.transports.iter().any(|t| t == "udp"),
            ice_disconnected_timeout: c.ice_disconnected_timeout(),
            ice_failed_timeout: c.ice_failed_timeout(),
            keyframe_request_interval: c.keyframe_request_interval(),
            simulcast: c.simulcast,
            pacer: c.pacer,
            probes: c.probes,
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
    /// The feed this publication forwards (the engine's key for its packet cache).
    pub(crate) feed: u64,
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
    /// Subscribe connection: what the viewer gets of a video changed (its line, its own
    /// preference): tell it (`video_quality`).
    VideoQuality(ConnId, TrackId, VideoQuality),
    /// Publish connection: its sender started (true) or stopped (false) speaking, from the
    /// audio level of its forwarded sound (`speaking`).
    Speaking(ConnId, bool),
}

pub(crate) struct SfuInner {
    pub(crate) settings: MediaSettings,
    pub(crate) metrics: Arc<Metrics>,
    engine: engine::EngineHandle,
}

/// Entry point of the media path: starts the engine, builds publish and subscribe connections.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

impl Sfu {
    /// Binds the media port and starts the engine thread.
    pub fn start(settings: MediaSettings) -> Result<Sfu, SfuError> {
        let metrics = Arc::new(Metrics::default());
        let engine = engine::start(settings.clone(), metrics.clone())?;
        Ok(Sfu {
            inner: Arc::new(SfuInner {
                settings,
                metrics,
                engine,
            }),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether publishers may send simulcast (`media.simulcast`).
    pub fn simulcast(&self) -> bool {
        self.inner.settings.simulcast
    }

    /// The media sockets' local addresses: one port, one socket per bound address.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.inner.engine.local_addrs().to_vec()
    }

    async fn open(
        &self,
        target: Target,
        member: MemberId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
        publish: Option<Arc<engine::PublishShared>>,
    ) -> Result<(ConnId, engine::ConnKey), SfuError> {
        let id = ConnId::next();
        let key = self
            .inner
            .engine
            .call(|reply| engine::Command::Open {
                target,
                member,
                id,
                events,
                publish,
                reply,
            })
            .await?;
        Ok((id, key))
    }

    /// Builds `member`'s publish connection. Tracks that arrive on it are forwarded and
    /// reported as `PeerEvent::Published` on `events`.
    pub async fn publisher(
        &self,
        member: MemberId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
    ) -> Result<Publisher, SfuError> {
        let shared = Arc::new(engine::PublishShared::default());
        let (id, key) = self
            .open(Target::Publish, member, events, Some(shared.clone()))
            .await?;
        Ok(Publisher::new(id, key, self.inner.engine.clone(), shared))
    }

    /// Builds `member`'s subscribe connection.
    pub async fn subscriber(
        &self,
        member: MemberId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
    ) -> Result<Subscriber, SfuError> {
        let (id, key) = self.open(Target::Subscribe, member, events, None).await?;
        Ok(Subscriber::new(id, key, self.inner.engine.clone(), member))
    }
}

/// The `a=mid` of an SDP's first m-line: with BUNDLE, the line our candidates belong to.
pub(crate) fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

/// Fills in the m-line a local candidate belongs to when it is missing. With BUNDLE every
/// candidate is for the first m-line's transport.
pub(crate) fn with_mid(mut c: IceCandidate, first_mid: Option<&str>) -> IceCandidate {
    if c.sdp_mid.as_deref().is_none_or(str::is_empty) {
        if let Some(mid) = first_mid {
            c.sdp_mid = Some(mid.to_owned());
            c.sdp_mline_index = Some(0);
        }
    }
    c
}
