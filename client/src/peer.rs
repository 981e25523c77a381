//! A webrtc-rs peer connection set up like the server's own (`media_setup`: the same codec
//! set and interceptors), and the steps every kursrelay client takes on one: offer or answer,
//! candidates trickled both ways (the server's held until the remote description is set),
//! keyframe requests reaching the sender. Does not touch the socket: the caller sends what
//! these return.

use std::sync::Arc;

use kursrelay_interceptor::DeliverRtcp;
use rtc::interceptor::Slot;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCSessionDescription, Registry,
};
use webrtc::runtime::Runtime;

use crate::protocol::{ClientMessage, IceCandidate, Target};
use crate::ClientError;

/// Position of the keyframe-request link (`kursrelay_interceptor::DeliverRtcp`, the server's
/// too): after every built-in interceptor (they use lower slots), as on the server, so it sees
/// inbound RTCP last.
const KEYFRAME_REQUESTS_SLOT: usize = 14_000;

/// The codec set and interceptor chain of kursrelay's connections: webrtc-rs's default codecs
/// and interceptors, plus a last link that lets keyframe requests through to the publishing
/// track (`DeliverRtcp::default()`). The server builds its connections the same way
/// (src/sfu), so a client negotiates what a server connection offers.
pub fn media_setup() -> Result<(MediaEngine, Registry), ClientError> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
    let registry = registry.with(Slot::from(KEYFRAME_REQUESTS_SLOT), DeliverRtcp::default());
    Ok((media_engine, registry))
}

/// Where a peer connection's media goes.
pub struct PeerOptions {
    /// Local UDP addresses for media, e.g. `127.0.0.1:0`.
    pub udp_addrs: Vec<String>,
    /// A runtime whose sockets count, shape or impair the media (the load generator's and the
    /// tests' network simulators); webrtc-rs's own when None.
    pub runtime: Option<Arc<dyn Runtime>>,
}

impl PeerOptions {
    /// Media on `addr` (`0.0.0.0:0`: any interface, any port).
    pub fn bind(addr: impl Into<String>) -> PeerOptions {
        PeerOptions {
            udp_addrs: vec![addr.into()],
            runtime: None,
        }
    }

    pub fn with_runtime(mut self, runtime: Arc<dyn Runtime>) -> PeerOptions {
        self.runtime = Some(runtime);
        self
    }
}

/// One of a client's peer connections (`publish` or `subscribe`, docs/protocol.md).
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    /// The server's candidates that came before its description; added once it is set.
    early: Vec<RTCIceCandidateInit>,
}

impl Peer {
    /// A new connection; `handler` hears its candidates (send each with `candidate_message`)
    /// and its remote tracks.
    pub async fn new(
        handler: Arc<dyn PeerConnectionEventHandler>,
        options: PeerOptions,
    ) -> Result<Peer, ClientError> {
        let (media_engine, registry) = media_setup()?;
        let builder = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(options.udp_addrs);
        let builder = match options.runtime {
            Some(runtime) => builder.with_runtime(runtime),
            None => builder,
        };
        Ok(Peer {
            pc: Arc::new(builder.build().await?),
            early: Vec::new(),
        })
    }

    /// The webrtc-rs connection, for adding tracks and reading senders.
    pub fn connection(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    /// A new offer, set as the local description: the `sdp` of a `publish_offer`.
    pub async fn offer(&self) -> Result<String, ClientError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        self.local_sdp().await
    }

    /// Applies the server's `publish_answer`.
    pub async fn apply_answer(&mut self, sdp: &str) -> Result<(), ClientError> {
        let answer = RTCSessionDescription::answer(sdp.to_owned())?;
        self.pc.set_remote_description(answer).await?;
        self.add_early().await;
        Ok(())
    }

    /// Applies the server's `subscribe_offer` and returns the `sdp` of the
    /// `subscribe_answer`.
    pub async fn answer(&mut self, offer_sdp: &str) -> Result<String, ClientError> {
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned())?;
        self.pc.set_remote_description(offer).await?;
        self.add_early().await;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        self.local_sdp().await
    }

    /// A candidate from the server's `ice_candidate`; held until the remote description is
    /// set.
    pub async fn add_candidate(&mut self, candidate: &IceCandidate) -> Result<(), ClientError> {
        let init = candidate_init(candidate);
        if self.pc.remote_description().await.is_some() {
            self.pc.add_ice_candidate(init).await?;
        } else {
            self.early.push(init);
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }

    async fn add_early(&mut self) {
        for c in std::mem::take(&mut self.early) {
            // A candidate the connection cannot use is skipped, as a browser does.
            let _ = self.pc.add_ice_candidate(c).await;
        }
    }

    async fn local_sdp(&self) -> Result<String, ClientError> {
        let local = self
            .pc
            .local_description()
            .await
            .ok_or(ClientError::NoLocalDescription)?;
        Ok(local.sdp)
    }
}

/// The `ice_candidate` message for one of our connection's candidates.
pub fn candidate_message(target: Target, init: &RTCIceCandidateInit) -> ClientMessage {
    ClientMessage::IceCandidate {
        target,
        candidate: IceCandidate {
            candidate: init.candidate.clone(),
            sdp_mid: init.sdp_mid.clone(),
            sdp_mline_index: init.sdp_mline_index,
            username_fragment: None,
        },
    }
}

/// A server candidate as webrtc-rs takes it.
pub fn candidate_init(candidate: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: candidate.candidate.clone(),
        sdp_mid: candidate.sdp_mid.clone(),
        sdp_mline_index: candidate.sdp_mline_index,
        username_fragment: None,
        url: None,
    }
}
