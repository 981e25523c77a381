//! A member's publish connection: the client offers, we answer; every track that arrives gets
//! a forwarding task and is reported to the member task as `PeerEvent::Published`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

use super::metrics::GaugeGuard;
use super::peer::{self, Handler, TrackSink};
use super::{forwarder, Codec, PeerEvent, SfuError, SfuInner, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{IceCandidate, MediaKind, PublishedTrackDesc, Source, Target};

/// Client track id → what the client said it is. A std mutex: held for a map lookup only, never
/// across an await.
type Sources = Arc<Mutex<HashMap<String, Source>>>;

pub struct Publisher {
    pc: Arc<dyn PeerConnection>,
    sources: Sources,
    /// Candidates that came before the first offer; applied right after it.
    early_candidates: Vec<IceCandidate>,
    has_remote: bool,
    guard: Option<GaugeGuard>,
}

impl Publisher {
    pub(crate) async fn new(
        sfu: Arc<SfuInner>,
        member: MemberId,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Publisher, SfuError> {
        let sources: Sources = Arc::default();
        let sink: TrackSink = {
            let sfu = sfu.clone();
            let sources = sources.clone();
            let events = events.clone();
            Box::new(move |track| {
                // `on_track` runs in the connection's driver loop: do the async work elsewhere.
                tokio::spawn(start_forwarding(
                    sfu.clone(),
                    member,
                    sources.clone(),
                    events.clone(),
                    track,
                ));
            })
        };
        let handler = Handler {
            target: Target::Publish,
            events,
            connected: Arc::new(AtomicBool::new(false)),
            on_track: Some(sink),
        };
        let pc = peer::build(&sfu, Arc::new(handler)).await?;
        Ok(Publisher {
            pc,
            sources,
            early_candidates: Vec::new(),
            has_remote: false,
            guard: Some(GaugeGuard::new(&sfu.metrics, |m| &m.peer_connections)),
        })
    }

    /// Applies the client's offer and returns our answer.
    pub async fn handle_offer(
        &mut self,
        sdp: String,
        tracks: &[PublishedTrackDesc],
    ) -> Result<String, SfuError> {
        {
            let mut sources = self.sources.lock().expect("sources lock is never poisoned");
            for t in tracks {
                sources.insert(t.track_id.clone(), t.source);
            }
        }
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.has_remote = true;
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(&c).await?;
        }
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(SfuError::webrtc)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(SfuError::webrtc)?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description after answering".into()))?;
        Ok(local.sdp)
    }

    pub async fn add_candidate(&mut self, c: &IceCandidate) -> Result<(), SfuError> {
        if c.candidate.is_empty() {
            return Ok(());
        }
        if !self.has_remote {
            self.early_candidates.push(c.clone());
            return Ok(());
        }
        self.pc
            .add_ice_candidate(peer::candidate_from_json(c))
            .await
            .map_err(|e| SfuError::BadCandidate(e.to_string()))
    }

    /// Closes the connection; the forwarders of its tracks end with their tracks.
    pub async fn close(mut self) {
        let _ = self.pc.close().await;
        self.guard.take();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            let pc = self.pc.clone();
            tokio::spawn(async move {
                let _ = pc.close().await;
                drop(guard);
            });
        }
    }
}

async fn start_forwarding(
    sfu: Arc<SfuInner>,
    member: MemberId,
    sources: Sources,
    events: mpsc::Sender<PeerEvent>,
    track: Arc<dyn TrackRemote>,
) {
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        tracing::warn!("published track has no SSRC; not forwarding it");
        return;
    };
    let Some(codec) = track.codec(ssrc).await else {
        tracing::warn!("published track has no negotiated codec; not forwarding it");
        return;
    };
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let client_track_id = track.track_id().await;
    let source = sources
        .lock()
        .expect("sources lock is never poisoned")
        .get(&client_track_id)
        .copied()
        .unwrap_or(match kind {
            MediaKind::Audio => Source::Microphone,
            MediaKind::Video => Source::Camera,
        });
    let info = TrackInfo {
        id: TrackId::new(),
        member,
        kind,
        source,
        client_track_id,
        codec: Codec {
            mime_type: codec.mime_type,
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            fmtp: codec.sdp_fmtp_line,
        },
        keyframes: Default::default(),
    };
    tracing::info!(track = %info.id, kind = ?info.kind, source = ?info.source, mime = %info.codec.mime_type, "track published");
    let forwarder = forwarder::spawn(
        info,
        track,
        ssrc,
        sfu.settings.keyframe_request_interval,
        sfu.metrics.clone(),
    );
    // If the member task is gone, the forwarder is dropped here and stops.
    let _ = events.send(PeerEvent::Published(forwarder)).await;
}
