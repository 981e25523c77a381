//! The async `webrtc` peer connection, where it still serves: the connectivity check's test
//! connection (`check`), and `media_setup`, the codec set and interceptor chain the test client
//! and the load generator share with the engine's connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc::interceptor::Slot;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, Registry, SettingEngineBuilder,
    SrtpProtectionProfile,
};

use super::keyframe::KeyframeRequestInterceptor;
use super::{SfuError, SfuInner};

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
