//! The member's two peer connections: publish offers and answers, subscribe offers and their
//! answers (re-sent, then given up), ICE candidates, forwarding parked tracks again, WHIP's
//! full answer and WHEP playback. Slow and async, so it runs here per member, never in the room.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    bad_request, internal, no_connection, no_offer, out_of_order, sfu_error, Client, Flow, Stage,
};
use crate::protocol::{
    ByeReason, ErrorCode, IceCandidate, ProtocolError, PublishClosedReason, PublishedTrackDesc,
    ServerMessage, Source, Target,
};
use crate::sfu::Forwarder;

/// Unanswered subscribe offers in a row before the client is removed.
const MAX_UNANSWERED_OFFERS: u32 = 3;
/// A sender whose media keeps arriving although it is not forwarded is told at most this often.
const REFUSAL_NOTICE_EVERY: Duration = Duration::from_secs(10);
const MAX_CLIENT_TRACK_ID: usize = 128;

impl Client {
    /// A `publish_offer`: answered on the member's publish connection (a new one for an offer
    /// from a new `RTCPeerConnection`), after the sources it lists are checked.
    pub(super) async fn publish_offer(
        &mut self,
        sdp: String,
        tracks: Vec<PublishedTrackDesc>,
    ) -> Result<Flow, ProtocolError> {
        if tracks
            .iter()
            .any(|t| t.track_id.len() > MAX_CLIENT_TRACK_ID)
        {
            return Err(bad_request("a track_id is too long"));
        }
        let sfu = self.ctx.sfu.clone();
        let joined = self.joined()?;
        // The room checks again when media arrives; this refuses the offer up front.
        if let Some(t) = tracks.iter().find(|t| !joined.may_publish(t.source)) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("You may not send your {:?} now.", t.source).to_lowercase(),
            ));
        }
        // An offer from a new RTCPeerConnection replaces the old one (its tracks stop).
        if joined
            .publisher
            .as_ref()
            .is_some_and(|p| p.is_other_connection(&sdp))
        {
            self.end_publish(PublishClosedReason::Replaced).await?;
        }
        let joined = self.joined()?;
        if joined.publisher.is_none() {
            let publisher = sfu
                .publisher(joined.member, joined.peer_events_tx.clone())
                .await
                .map_err(internal)?;
            joined.publisher = Some(publisher);
        }
        let publisher = joined.publisher.as_mut().expect("publisher was just set");
        let answer = publisher
            .handle_offer(sdp, &tracks)
            .await
            .map_err(sfu_error)?;
        // Offering again is turning the microphone back on after a mute, and a track
        // listed again is published again.
        joined.mic_muted = false;
        for t in &tracks {
            joined.unpublished.remove(&t.track_id);
        }
        self.outbox
            .push(ServerMessage::PublishAnswer { sdp: answer });
        // Tracks it kept sending while they were not forwarded go out again at once.
        self.republish().await?;
        Ok(Flow::Continue)
    }

    /// An `unpublish`: the room stops forwarding the track; its media stays parked.
    pub(super) async fn unpublish(&mut self, track_id: String) -> Result<Flow, ProtocolError> {
        let joined = self.joined()?;
        let found = joined
            .room
            .unpublish(joined.member, track_id.clone())
            .await
            .map_err(internal)?;
        if !found {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                "You do not publish a track with that id.",
            ));
        }
        // Its media may keep arriving until the client renegotiates: it stays parked.
        joined.unpublished.insert(track_id.clone());
        self.outbox.push(ServerMessage::Unpublished { track_id });
        Ok(Flow::Continue)
    }

    /// A `subscribe_answer`: applied, the ready down-tracks attached, and the next offer sent
    /// if the track set changed meanwhile.
    pub(super) async fn subscribe_answer(&mut self, sdp: String) -> Result<Flow, ProtocolError> {
        let joined = self.joined()?;
        let Some(subscriber) = joined.subscriber.as_mut() else {
            return Err(no_offer());
        };
        let ready = subscriber.apply_answer(sdp).await.map_err(sfu_error)?;
        joined.pending_offer = None;
        joined.unanswered_offers = 0;
        if !ready.is_empty() {
            joined
                .room
                .attach(joined.member, ready)
                .await
                .map_err(internal)?;
        }
        self.offer_if_needed().await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn add_candidate(
        &mut self,
        target: Target,
        c: &IceCandidate,
    ) -> Result<(), ProtocolError> {
        let joined = self.joined()?;
        let result = match target {
            Target::Publish => match joined.publisher.as_mut() {
                Some(p) => p.add_candidate(c).await,
                None => return Err(no_connection()),
            },
            Target::Subscribe => match joined.subscriber.as_mut() {
                Some(s) => s.add_candidate(c).await,
                None => return Err(no_connection()),
            },
        };
        result.map_err(sfu_error)
    }

    /// Offers the room every parked track of the publish connection whose media is arriving
    /// and that the member may send now. True if such a track had to stay parked.
    pub(super) async fn republish(&mut self) -> Result<bool, ProtocolError> {
        let joined = self.joined()?;
        let Some(publisher) = joined.publisher.as_ref() else {
            return Ok(false);
        };
        let (forwarders, refused): (Vec<Forwarder>, bool) = publisher.republish(|source| {
            !(joined.mic_muted && source == Source::Microphone) && joined.may_publish(source)
        });
        for forwarder in forwarders {
            if joined
                .unpublished
                .contains(&forwarder.info().client_track_id)
            {
                // Unpublished by the client: dropping this publication parks the feed again
                // before anyone is told of it or gets a packet (it has no subscribers yet).
                continue;
            }
            tracing::info!(track = %forwarder.info().id, source = ?forwarder.info().source, "track forwarded again");
            joined.room.publish(forwarder).await.map_err(internal)?;
        }
        Ok(refused)
    }

    /// Tells a sender (now and then) that what it sends is not forwarded.
    pub(super) fn refusal_notice(&mut self) {
        let Stage::Joined(joined) = &mut self.stage else {
            return;
        };
        let now = Instant::now();
        if joined
            .last_refusal_notice
            .is_some_and(|at| now.duration_since(at) < REFUSAL_NOTICE_EVERY)
        {
            return;
        }
        joined.last_refusal_notice = Some(now);
        let message = if joined.mic_muted {
            "The course leader turned your microphone off; what you send is not forwarded."
        } else {
            "You may not send that now; what you send is not forwarded to anyone."
        };
        self.reject(ProtocolError::new(ErrorCode::Forbidden, message), None);
    }

    /// Ends the publish connection: the room stops forwarding its tracks, it closes, and the
    /// client is told. The membership and the subscribe connection go on.
    pub(super) async fn end_publish(
        &mut self,
        reason: PublishClosedReason,
    ) -> Result<(), ProtocolError> {
        let joined = self.joined()?;
        let Some(publisher) = joined.publisher.take() else {
            return Ok(());
        };
        // A new publish connection starts with nothing unpublished.
        joined.unpublished.clear();
        joined
            .room
            .drop_tracks(joined.member)
            .await
            .map_err(internal)?;
        publisher.close().await;
        self.outbox.push(ServerMessage::PublishClosed { reason });
        Ok(())
    }

    /// The subscribe offer went unanswered: send it again, or give up on the client.
    pub(super) fn answer_timed_out(&mut self) -> Result<Flow, ProtocolError> {
        let timeout = self.ctx.answer_timeout;
        let joined = self.joined()?;
        joined.unanswered_offers += 1;
        if joined.unanswered_offers >= MAX_UNANSWERED_OFFERS {
            tracing::info!("subscribe offers went unanswered; removing the member");
            self.outbox.push(ServerMessage::Bye {
                reason: ByeReason::Unresponsive,
            });
            return Ok(Flow::Close);
        }
        let Some((offer, deadline)) = joined.pending_offer.as_mut() else {
            return Ok(Flow::Continue);
        };
        *deadline = Instant::now() + timeout;
        let offer = offer.clone();
        self.reject(
            ProtocolError::new(
                ErrorCode::AnswerTimeout,
                format!(
                    "The subscribe offer was not answered within {} s; here it is again.",
                    timeout.as_secs_f32()
                ),
            ),
            Some("subscribe_answer"),
        );
        self.outbox.push(offer);
        Ok(Flow::Continue)
    }

    pub(super) async fn subscribe_to(
        &mut self,
        info: &crate::sfu::TrackInfo,
    ) -> Result<(), ProtocolError> {
        let sfu = self.ctx.sfu.clone();
        let joined = self.joined()?;
        if info.member == joined.member {
            return Ok(());
        }
        if joined.subscriber.is_none() {
            let subscriber = sfu
                .subscriber(joined.member, joined.peer_events_tx.clone())
                .await
                .map_err(internal)?;
            if let Some(preference) = joined.video_preference.clone() {
                subscriber
                    .set_video_preference(preference)
                    .map_err(internal)?;
            }
            joined.subscriber = Some(subscriber);
        }
        let subscriber = joined.subscriber.as_mut().expect("subscriber was just set");
        subscriber.add_track(info).await.map_err(internal)
    }

    /// Sends a subscribe offer if the track set changed and none is outstanding.
    pub(super) async fn offer_if_needed(&mut self) -> Result<(), ProtocolError> {
        let Stage::Joined(joined) = &mut self.stage else {
            return Ok(());
        };
        let Some(subscriber) = joined.subscriber.as_mut() else {
            return Ok(());
        };
        if !subscriber.needs_offer() {
            return Ok(());
        }
        let (sdp, tracks) = subscriber.create_offer().await.map_err(internal)?;
        let offer = ServerMessage::SubscribeOffer { sdp, tracks };
        joined.pending_offer = Some((offer.clone(), Instant::now() + self.ctx.answer_timeout));
        self.outbox.push(offer);
        Ok(())
    }

    /// The publish answer with every local candidate in it, for an encoder that does not
    /// trickle (WHIP). Call after a `publish_offer` was answered.
    pub async fn publish_answer_with_candidates(
        &mut self,
        within: Duration,
    ) -> Result<String, ProtocolError> {
        let joined = self.joined()?;
        let Some(publisher) = joined.publisher.as_ref() else {
            return Err(no_connection());
        };
        publisher
            .answer_with_candidates(within)
            .await
            .map_err(sfu_error)
    }

    /// WHEP: answers a player's offer with the session's main feed (the encoder's, else the
    /// leader's camera and microphone, as they are now). `Ok(None)` when nothing is sent yet.
    pub async fn play(
        &mut self,
        offer: String,
        within: Duration,
    ) -> Result<Option<String>, ProtocolError> {
        let sfu = self.ctx.sfu.clone();
        let joined = self.joined()?;
        if joined.subscriber.is_some() {
            return Err(out_of_order("this member already plays"));
        }
        let feed = joined
            .room
            .main_feed(joined.member)
            .await
            .map_err(internal)?;
        if feed.is_empty() {
            return Ok(None);
        }
        let mut subscriber = sfu
            .subscriber(joined.member, joined.peer_events_tx.clone())
            .await
            .map_err(internal)?;
        for info in &feed {
            subscriber.add_track(info).await.map_err(internal)?;
        }
        let (answer, ready) = subscriber
            .answer_offer(offer, within)
            .await
            .map_err(sfu_error)?;
        joined.playing = feed.iter().map(|i| i.id).collect();
        joined.subscriber = Some(subscriber);
        if !ready.is_empty() {
            joined
                .room
                .attach(joined.member, ready)
                .await
                .map_err(internal)?;
        }
        Ok(Some(answer))
    }
}
