//! `media_setup`: the codec set and interceptor chain of an async `webrtc` connection, which the
//! test client and the load generator share with the engine's connections. The server itself
//! runs no async `webrtc` connection any more (the check moved onto the engine).

use rtc::interceptor::Slot;
use webrtc::peer_connection::{register_default_interceptors, MediaEngine, Registry};

use super::keyframe::KeyframeRequestInterceptor;
use super::SfuError;

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
