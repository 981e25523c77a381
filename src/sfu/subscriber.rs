//! A member's subscribe connection, as the member task sees it: we offer whenever the set of
//! tracks it should receive changes, the client answers. Each track gets a sender with its own
//! SSRC inside the engine, and once the answer fixes the payload type a `DownTrack` the room
//! attaches to the track's forwarder.

use std::collections::HashMap;
use std::sync::Arc;

use rtc::rtp_transceiver::RTCRtpSenderId;

use super::engine::{Command, ConnKey, EngineHandle, TrackSpec};
use super::forwarder::DownTrack;
use super::keyframe::CodecFamily;
use super::{ConnId, Preference, SfuError, TrackInfo};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{IceCandidate, SubscribedTrackDesc};

struct Entry {
    info: TrackInfo,
    ssrc: u32,
    sender: RTCRtpSenderId,
    down: Option<Arc<DownTrack>>,
}

pub struct Subscriber {
    id: ConnId,
    key: ConnKey,
    engine: EngineHandle,
    member: MemberId,
    tracks: HashMap<TrackId, Entry>,
    /// Our offer awaits the client's answer.
    offer_outstanding: bool,
    /// The track set changed since the last offer.
    dirty: bool,
    /// The first m-line's mid in our offers (candidates belong to it).
    first_mid: Option<String>,
    closed: bool,
}

impl Subscriber {
    pub(crate) fn new(id: ConnId, key: ConnKey, engine: EngineHandle, member: MemberId) -> Self {
        Subscriber {
            id,
            key,
            engine,
            member,
            tracks: HashMap::new(),
            offer_outstanding: false,
            dirty: false,
            first_mid: None,
            closed: false,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// A local candidate as the client should get it (with the m-line it belongs to).
    pub fn complete_candidate(&self, c: IceCandidate) -> IceCandidate {
        super::with_mid(c, self.first_mid.as_deref())
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
        let spec = TrackSpec {
            id: info.id,
            member: info.member,
            kind: info.kind,
            codec: info.codec.clone(),
            ssrc,
            keyframes: info.keyframes.clone(),
            feed: info.feed,
        };
        let key = self.key;
        let sender = self
            .engine
            .call(|reply| Command::AddTrack {
                conn: key,
                track: spec,
                reply,
            })
            .await?;
        self.tracks.insert(
            info.id,
            Entry {
                info: info.clone(),
                ssrc,
                sender,
                down: None,
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
        self.dirty = true;
        let key = self.key;
        self.engine
            .call(|reply| Command::RemoveTrack {
                conn: key,
                sender: entry.sender,
                reply,
            })
            .await
    }

    /// True when the track set changed and no offer is outstanding: call `create_offer`.
    pub fn needs_offer(&self) -> bool {
        self.dirty && !self.offer_outstanding
    }

    pub async fn create_offer(&mut self) -> Result<(String, Vec<SubscribedTrackDesc>), SfuError> {
        let key = self.key;
        let sdp = self
            .engine
            .call(|reply| Command::CreateOffer { conn: key, reply })
            .await?;
        self.offer_outstanding = true;
        self.dirty = false;
        self.first_mid = super::first_mid(&sdp);
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
        Ok((sdp, tracks))
    }

    /// Applies the client's answer. Returns the down-tracks that became ready, for the room to
    /// attach to their forwarders.
    pub async fn apply_answer(&mut self, sdp: String) -> Result<Vec<Arc<DownTrack>>, SfuError> {
        if !self.offer_outstanding {
            return Err(SfuError::NoOfferPending);
        }
        let (pending, senders) = self.pending_senders();
        let key = self.key;
        let chosen = self
            .engine
            .call(|reply| Command::Answer {
                conn: key,
                sdp,
                senders,
                reply,
            })
            .await?;
        self.offer_outstanding = false;
        Ok(self.ready_down_tracks(&pending, chosen))
    }

    /// WHEP (issue 13): the player offers, we answer once, with every candidate, for the
    /// tracks added before (`add_track`). No renegotiation follows: the player's offer fixed the
    /// m-lines. Returns our answer and the down-tracks for the room to attach.
    pub async fn answer_offer(
        &mut self,
        sdp: String,
        _within: std::time::Duration,
    ) -> Result<(String, Vec<Arc<DownTrack>>), SfuError> {
        let (pending, senders) = self.pending_senders();
        let key = self.key;
        let (answer, chosen) = self
            .engine
            .call(|reply| Command::AnswerOffer {
                conn: key,
                sdp,
                senders,
                reply,
            })
            .await?;
        self.dirty = false;
        self.first_mid = super::first_mid(&answer);
        Ok((answer, self.ready_down_tracks(&pending, chosen)))
    }

    /// The tracks without a down-track yet, and their senders with the codec each wants.
    #[allow(clippy::type_complexity)]
    fn pending_senders(&self) -> (Vec<TrackId>, Vec<(RTCRtpSenderId, super::Codec)>) {
        let pending: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, e)| e.down.is_none())
            .map(|(id, _)| *id)
            .collect();
        let senders = pending
            .iter()
            .filter_map(|id| self.tracks.get(id))
            .map(|e| (e.sender, e.info.codec.clone()))
            .collect();
        (pending, senders)
    }

    /// Down-tracks for the tracks whose payload type the last negotiation fixed.
    fn ready_down_tracks(
        &mut self,
        pending: &[TrackId],
        chosen: Vec<Option<u8>>,
    ) -> Vec<Arc<DownTrack>> {
        let mut ready = Vec::new();
        for (id, pt) in pending.iter().zip(chosen) {
            let Some(entry) = self.tracks.get_mut(id) else {
                continue;
            };
            let Some(payload_type) = pt else {
                tracing::warn!(track = %entry.info.id, mime = %entry.info.codec.mime_type, "subscriber did not accept the codec; not forwarding");
                continue;
            };
            let codec = CodecFamily::from_mime(&entry.info.codec.mime_type);
            let down = Arc::new(DownTrack::new(
                self.member,
                entry.info.id,
                codec,
                entry.ssrc,
                payload_type,
                self.key,
                entry.sender,
                entry.info.keyframes.clone(),
            ));
            entry.down = Some(down.clone());
            ready.push(down);
        }
        ready
    }

    pub async fn add_candidate(&mut self, c: &IceCandidate) -> Result<(), SfuError> {
        if c.candidate.is_empty() {
            return Ok(());
        }
        let key = self.key;
        let candidate = c.clone();
        self.engine
            .call(|reply| Command::Candidate {
                conn: key,
                candidate,
                reply,
            })
            .await
    }

    /// The viewer's own wishes for its video (`video_preference`): the largest height it
    /// renders at (device pixels) caps the layer; `save_data` asks for the lowest only; its
    /// order says which videos get the budget first.
    pub fn set_video_preference(&self, preference: Preference) -> Result<(), SfuError> {
        self.engine.send(Command::VideoPreference {
            conn: self.key,
            preference,
        })
    }

    pub async fn close(mut self) {
        self.closed = true;
        self.engine.close(self.key);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if !self.closed {
            self.engine.close(self.key);
        }
    }
}
