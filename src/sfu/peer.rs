//! Building a peer connection the way every kursrelay connection is built (codecs,
//! interceptors, ICE timeouts, SRTP profiles, bind addresses), and the event handler that turns
//! webrtc callbacks into `PeerEvent`s for the member task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::interceptor::Slot;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    SrtpProtectionProfile,
};

use super::keyframe::KeyframeRequestInterceptor;
use super::{ConnId, PeerEvent, SfuError, SfuInner};
use crate::protocol::{IceCandidate, Target};

/// Position of our interceptor: after every built-in one (they use lower slots), so it sees
/// inbound RTCP last.
const KEYFRAME_INTERCEPTOR_SLOT: usize = 14_000;

/// The codec set and interceptor chain every kursrelay connection uses. Public so the test
/// client can build connections that behave like the server's.
pub fn media_setup() -> Result<(MediaEngine, Registry), SfuError> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_default_codecs()
        .map_err(SfuError::webrtc)?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .map_err(SfuError::webrtc)?;
    let registry = registry.with(
        Slot::from(KEYFRAME_INTERCEPTOR_SLOT),
        KeyframeRequestInterceptor::default(),
    );
    Ok((media_engine, registry))
}

pub(crate) async fn build(
    sfu: &SfuInner,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, SfuError> {
    let (media_engine, registry) = media_setup()?;
    let settings = SettingEngineBuilder::new()
        .with_ice_timeouts(
            Some(sfu.settings.ice_disconnected_timeout),
            Some(sfu.settings.ice_failed_timeout),
            // Our own consent checks keep the connection alive; at the default 2 s a short
            // disconnected timeout would flap between connected and disconnected.
            Some((sfu.settings.ice_disconnected_timeout / 3).min(Duration::from_secs(2))),
        )
        // A client's candidate often reaches us as peer-reflexive (its check arrives before its
        // trickled candidate, and browsers hide host addresses behind mDNS names we cannot
        // resolve). The default 1 s (prflx) / 0.5 s (srflx) wait for a better pair only delays
        // every join: the server has one address per interface, there is no better pair.
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
        // GCM first: about three times cheaper per packet than AES-CM + HMAC here.
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .build();
    let addrs: Vec<SocketAddr> = sfu
        .settings
        .bind_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, 0))
        .collect();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(addrs)
        .build()
        .await
        .map_err(SfuError::webrtc)?;
    Ok(Arc::new(pc))
}

pub(crate) fn candidate_to_json(event: &RTCPeerConnectionIceEvent) -> Option<IceCandidate> {
    let init = event.candidate.to_json().ok()?;
    Some(IceCandidate {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_mline_index: init.sdp_mline_index,
        username_fragment: init.username_fragment,
    })
}

/// The `a=mid` of an SDP's first m-line: with BUNDLE, the line our candidates belong to.
pub(crate) fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

/// Fills in the m-line a local candidate belongs to when webrtc-rs leaves it out. With BUNDLE
/// every candidate is for the first m-line's transport.
pub(crate) fn with_mid(mut c: IceCandidate, first_mid: Option<&str>) -> IceCandidate {
    if c.sdp_mid.as_deref().is_none_or(str::is_empty) {
        if let Some(mid) = first_mid {
            c.sdp_mid = Some(mid.to_owned());
            c.sdp_mline_index = Some(0);
        }
    }
    c
}

pub(crate) fn candidate_from_json(c: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment.clone(),
        url: None,
    }
}

/// What a connection's handler does with a remote track (publish connections only).
pub(crate) type TrackSink = Box<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync>;

/// Turns callbacks into `PeerEvent`s. Runs inside the connection's driver loop, so it never
/// waits: events go out with `try_send` (the channel is sized so that only a member task that
/// stopped reading can fill it, and then nobody is listening anyway).
pub(crate) struct Handler {
    pub(crate) target: Target,
    /// Which connection this is, so the member task can ignore a replaced one.
    pub(crate) conn: ConnId,
    pub(crate) events: mpsc::Sender<PeerEvent>,
    /// True while the connection is `connected`; down-tracks forward only then.
    pub(crate) connected: Arc<AtomicBool>,
    pub(crate) on_track: Option<TrackSink>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Some(candidate) = candidate_to_json(&event) {
            let _ = self
                .events
                .try_send(PeerEvent::Candidate(self.target, self.conn, candidate));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(target_pc = ?self.target, %state, "peer connection state");
        match state {
            RTCPeerConnectionState::Connected => {
                self.connected.store(true, Ordering::Release);
                let _ = self
                    .events
                    .try_send(PeerEvent::Connected(self.target, self.conn));
            }
            RTCPeerConnectionState::Disconnected => {
                self.connected.store(false, Ordering::Release);
            }
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                self.connected.store(false, Ordering::Release);
                let _ = self
                    .events
                    .try_send(PeerEvent::Failed(self.target, self.conn));
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        match &self.on_track {
            Some(sink) => sink(track),
            None => {
                tracing::debug!(target_pc = ?self.target, "ignoring a track on a receive-only connection")
            }
        }
    }
}
