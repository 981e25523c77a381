//! A member's subscribe connection: we offer whenever the set of tracks it should receive
//! changes, the client answers. Each track gets a local track with its own SSRC, and once the
//! answer fixes the payload type a `DownTrack` the room attaches to the track's forwarder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::sync::Arc;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};
use webrtc::rtp_transceiver::RtpSender;

use super::forwarder::{self, DownTrack};
use super::keyframe::CodecFamily;
use super::metrics::GaugeGuard;
use super::peer::{self, Handler};
use super::{ConnId, PeerEvent, SfuError, SfuInner, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{IceCandidate, MediaKind, SubscribedTrackDesc, Target};

struct Entry {
    info: TrackInfo,
    ssrc: u32,
    local: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    down: Option<Arc<DownTrack>>,
    cancel: CancellationToken,
}

pub struct Subscriber {
    id: ConnId,
    sfu: Arc<SfuInner>,
    member: MemberId,
    pc: Arc<dyn PeerConnection>,
    connected: Arc<AtomicBool>,
    queue: Arc<forwarder::SubscriberQueue>,
    cancel: CancellationToken,
    tracks: HashMap<TrackId, Entry>,
    /// Our offer awaits the client's answer.
    offer_outstanding: bool,
    /// The track set changed since the last offer.
    dirty: bool,
    early_candidates: Vec<IceCandidate>,
    /// The first m-line's mid in our offers (candidates belong to it).
    first_mid: Option<String>,
    guard: Option<GaugeGuard>,
}

impl Subscriber {
    pub(crate) async fn new(
        sfu: Arc<SfuInner>,
        member: MemberId,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Subscriber, SfuError> {
        let connected = Arc::new(AtomicBool::new(false));
        let id = ConnId::next();
        let handler = Handler {
            target: Target::Subscribe,
            conn: id,
            events,
            connected: connected.clone(),
            on_track: None,
        };
        let pc = peer::build(&sfu, Arc::new(handler)).await?;
        let guard = GaugeGuard::new(&sfu.metrics, |m| &m.peer_connections);
        let queue = forwarder::SubscriberQueue::new(sfu.settings.subscriber_queue_packets);
        let cancel = CancellationToken::new();
        tokio::spawn(forwarder::writer_loop(
            queue.clone(),
            cancel.clone(),
            sfu.metrics.clone(),
            GaugeGuard::new(&sfu.metrics, |m| &m.writers),
        ));
        Ok(Subscriber {
            id,
            sfu,
            member,
            pc,
            connected,
            queue,
            cancel,
            tracks: HashMap::new(),
            offer_outstanding: false,
            dirty: false,
            early_candidates: Vec::new(),
            first_mid: None,
            guard: Some(guard),
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// A local candidate as the client should get it (with the m-line it belongs to).
    pub fn complete_candidate(&self, c: IceCandidate) -> IceCandidate {
        peer::with_mid(c, self.first_mid.as_deref())
    }

    pub fn has_track(&self, id: TrackId) -> bool {
        self.tracks.contains_key(&id)
    }

    /// Adds a track to receive; it is negotiated with the next offer.
    pub async fn add_track(&mut self, info: &TrackInfo) -> Result<(), SfuError> {
        if self.tracks.contains_key(&info.id) {
            return Ok(());
        }
        let ssrc = rand::random::<u32>();
        let kind = match info.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // msid = "<publishing member> <track>": the client maps tracks with it.
        let track = MediaStreamTrack::new(
            info.member.to_string(),
            info.id.to_string(),
            info.id.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: info.codec.mime_type.clone(),
                    clock_rate: info.codec.clock_rate,
                    channels: info.codec.channels,
                    sdp_fmtp_line: info.codec.fmtp.clone(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        );
        let local = Arc::new(TrackLocalStaticRTP::new(track));
        let sender = self
            .pc
            .add_track(local.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(SfuError::webrtc)?;
        self.tracks.insert(
            info.id,
            Entry {
                info: info.clone(),
                ssrc,
                local,
                sender,
                down: None,
                cancel: self.cancel.child_token(),
            },
        );
        self.dirty = true;
        Ok(())
    }

    /// Stops receiving a track; negotiated with the next offer. The room has already detached
    /// the down-track from the forwarder (or the forwarder is gone).
    pub async fn remove_track(&mut self, id: TrackId) -> Result<(), SfuError> {
        let Some(entry) = self.tracks.remove(&id) else {
            return Ok(());
        };
        // Stop the RTCP reader first: it holds the local track's event lock while it waits.
        entry.cancel.cancel();
        self.dirty = true;
        self.pc
            .remove_track(&entry.sender)
            .await
            .map_err(SfuError::webrtc)
    }

    /// True when the track set changed and no offer is outstanding: call `create_offer`.
    pub fn needs_offer(&self) -> bool {
        self.dirty && !self.offer_outstanding
    }

    pub async fn create_offer(&mut self) -> Result<(String, Vec<SubscribedTrackDesc>), SfuError> {
        let offer = self.pc.create_offer(None).await.map_err(SfuError::webrtc)?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(SfuError::webrtc)?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description after offering".into()))?;
        self.offer_outstanding = true;
        self.dirty = false;
        self.first_mid = peer::first_mid(&local.sdp);
        let tracks = self
            .tracks
            .values()
            .map(|e| SubscribedTrackDesc {
                track_id: e.info.id,
                member_id: e.info.member,
                kind: e.info.kind,
                source: e.info.source,
            })
            .collect();
        Ok((local.sdp, tracks))
    }

    /// Applies the client's answer. Returns the down-tracks that became ready, for the room to
    /// attach to their forwarders.
    pub async fn apply_answer(&mut self, sdp: String) -> Result<Vec<Arc<DownTrack>>, SfuError> {
        if !self.offer_outstanding {
            return Err(SfuError::NoOfferPending);
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.offer_outstanding = false;
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(&c).await?;
        }
        self.ready_down_tracks().await
    }

    /// Down-tracks for the tracks whose codec the last negotiation fixed (new ones only).
    async fn ready_down_tracks(&mut self) -> Result<Vec<Arc<DownTrack>>, SfuError> {
        let mut ready = Vec::new();
        for entry in self.tracks.values_mut() {
            if entry.down.is_some() {
                continue;
            }
            let params = entry
                .sender
                .get_parameters()
                .await
                .map_err(SfuError::webrtc)?;
            let wanted = &entry.info.codec;
            let codecs = &params.rtp_parameters.codecs;
            let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
                c.rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(&wanted.mime_type)
            };
            let chosen = codecs
                .iter()
                .filter(same_mime)
                .find(|c| c.rtp_codec.sdp_fmtp_line == wanted.fmtp)
                .or_else(|| codecs.iter().find(same_mime));
            let Some(chosen) = chosen else {
                tracing::warn!(track = %entry.info.id, mime = %wanted.mime_type, "subscriber did not accept the codec; not forwarding");
                continue;
            };
            let codec = CodecFamily::from_mime(&wanted.mime_type);
            let down = Arc::new(DownTrack {
                member: self.member,
                track: entry.info.id,
                codec,
                ssrc: entry.ssrc,
                payload_type: chosen.payload_type,
                local: entry.local.clone(),
                queue: self.queue.clone(),
                connected: self.connected.clone(),
                keyframes: entry.info.keyframes.clone(),
                // A newcomer starts at a keyframe, or it would show garbage until one comes.
                waiting_keyframe: AtomicBool::new(codec != CodecFamily::Audio),
                started: AtomicBool::new(false),
                last_out_seq: AtomicU16::new(0),
                seq_offset: AtomicU16::new(0),
            });
            tokio::spawn(forwarder::rtcp_loop(
                entry.local.clone(),
                entry.info.keyframes.clone(),
                entry.cancel.clone(),
                self.sfu.metrics.clone(),
                GaugeGuard::new(&self.sfu.metrics, |m| &m.rtcp_readers),
            ));
            entry.down = Some(down.clone());
            ready.push(down);
        }
        Ok(ready)
    }

    /// WHEP (issue 13): the player offers, we answer once, with every candidate, for the
    /// tracks added before (`add_track`). No renegotiation follows: the player's offer fixed the
    /// m-lines. Returns our answer and the down-tracks for the room to attach.
    pub async fn answer_offer(
        &mut self,
        sdp: String,
        within: std::time::Duration,
    ) -> Result<(String, Vec<Arc<DownTrack>>), SfuError> {
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(SfuError::webrtc)?;
        self.dirty = false;
        let sdp = super::nontrickle::gathered_local_sdp(&self.pc, within).await?;
        self.first_mid = peer::first_mid(&sdp);
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(&c).await?;
        }
        let ready = self.ready_down_tracks().await?;
        Ok((sdp, ready))
    }

    pub async fn add_candidate(&mut self, c: &IceCandidate) -> Result<(), SfuError> {
        if c.candidate.is_empty() {
            return Ok(());
        }
        if self.pc.remote_description().await.is_none() {
            self.early_candidates.push(c.clone());
            return Ok(());
        }
        self.pc
            .add_ice_candidate(peer::candidate_from_json(c))
            .await
            .map_err(|e| SfuError::BadCandidate(e.to_string()))
    }

    pub async fn close(mut self) {
        self.cancel.cancel();
        let _ = self.pc.close().await;
        self.guard.take();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(guard) = self.guard.take() {
            let pc = self.pc.clone();
            tokio::spawn(async move {
                let _ = pc.close().await;
                drop(guard);
            });
        }
    }
}
