//! Room and peer events, translated into server messages and into what the member's
//! connections must do (subscribe to a new track, drop one, end a connection).

use super::{internal, Client, ClientEvent, Flow};
use crate::protocol::{ByeReason, ProtocolError, PublishClosedReason, ServerMessage, Target};
use crate::room::RoomEvent;
use crate::sfu::PeerEvent;

impl Client {
    /// Handles a room or peer event. Returns `Close` when the member cannot go on.
    pub async fn handle_event(&mut self, event: ClientEvent) -> Flow {
        match self.apply_event(event).await {
            Ok(flow) => flow,
            Err(err) => {
                self.reject(err, None);
                Flow::Continue
            }
        }
    }

    async fn apply_event(&mut self, event: ClientEvent) -> Result<Flow, ProtocolError> {
        match event {
            ClientEvent::Room(RoomEvent::Roster(roster)) => {
                self.outbox.push(ServerMessage::Roster { roster });
            }
            ClientEvent::Room(RoomEvent::Admitted {
                tracks,
                recorded,
                chat_enabled,
                speaking,
            }) => {
                self.admitted(tracks, recorded, chat_enabled, speaking)
                    .await?
            }
            ClientEvent::Room(RoomEvent::Floor(granted)) => {
                let joined = self.joined()?;
                joined.has_floor = granted;
                if granted {
                    joined.mic_muted = false;
                }
                self.outbox.push(ServerMessage::Floor { granted });
                if granted {
                    // Whatever the client kept sending on its publish connection goes out again.
                    self.republish().await?;
                }
            }
            ClientEvent::Room(RoomEvent::Muted) => {
                self.joined()?.mic_muted = true;
                self.outbox.push(ServerMessage::Muted);
            }
            ClientEvent::Room(RoomEvent::Speaking {
                member_id,
                speaking,
            }) => {
                self.outbox.push(ServerMessage::Speaking {
                    member_id,
                    speaking,
                });
            }
            ClientEvent::Room(RoomEvent::HandLowered) => {
                self.outbox.push(ServerMessage::Hand { raised: false })
            }
            ClientEvent::Room(RoomEvent::Chat {
                member_id,
                name,
                text,
            }) => {
                self.outbox.push(ServerMessage::Chat {
                    member_id,
                    name,
                    text,
                });
            }
            ClientEvent::Room(RoomEvent::Caption {
                member_id,
                text,
                automatic,
                partial,
            }) => {
                self.outbox.push(ServerMessage::Caption {
                    member_id,
                    text,
                    automatic,
                    partial,
                });
            }
            ClientEvent::Room(RoomEvent::Bye(reason)) => {
                self.outbox.push(ServerMessage::Bye { reason });
                return Ok(Flow::Close);
            }
            ClientEvent::Room(RoomEvent::TrackAdded(info)) => {
                self.subscribe_to(&info).await?;
                self.offer_if_needed().await?;
            }
            ClientEvent::Room(RoomEvent::TrackRemoved(id)) => {
                let joined = self.joined()?;
                if joined.playing.contains(&id) {
                    // A WHEP player's feed ended; it cannot be renegotiated: the session ends
                    // and the player connects again.
                    tracing::info!(track = %id, "main feed ended; ending the playback session");
                    return Ok(Flow::Close);
                }
                if !joined.playing.is_empty() {
                    return Ok(Flow::Continue);
                }
                if let Some(subscriber) = joined.subscriber.as_mut() {
                    subscriber.remove_track(id).await.map_err(internal)?;
                }
                self.offer_if_needed().await?;
            }
            ClientEvent::RoomClosed => {
                self.outbox.push(ServerMessage::Bye {
                    reason: ByeReason::ServerShutdown,
                });
                return Ok(Flow::Close);
            }
            ClientEvent::AnswerTimeout => return self.answer_timed_out(),
            ClientEvent::Peer(event) => return self.peer_event(event).await,
        }
        Ok(Flow::Continue)
    }

    async fn peer_event(&mut self, event: PeerEvent) -> Result<Flow, ProtocolError> {
        let joined = self.joined()?;
        let publish_id = joined.publisher.as_ref().map(|p| p.id());
        let subscribe_id = joined.subscriber.as_ref().map(|s| s.id());
        // Events of a connection that was replaced or closed are old news.
        let current = |target: Target, conn| match target {
            Target::Publish => publish_id == Some(conn),
            Target::Subscribe => subscribe_id == Some(conn),
        };
        match event {
            PeerEvent::Candidate(target, conn, candidate) if current(target, conn) => {
                let candidate = match target {
                    Target::Publish => joined
                        .publisher
                        .as_ref()
                        .map(|p| p.complete_candidate(candidate)),
                    Target::Subscribe => joined
                        .subscriber
                        .as_ref()
                        .map(|s| s.complete_candidate(candidate)),
                };
                if let Some(candidate) = candidate {
                    self.outbox
                        .push(ServerMessage::IceCandidate { target, candidate });
                }
            }
            PeerEvent::Connected(target, conn) if current(target, conn) => {
                tracing::debug!(?target, "media connected");
            }
            PeerEvent::Failed(Target::Publish, conn) if current(Target::Publish, conn) => {
                // Only what it sent ends; the member stays and still receives.
                tracing::info!("publish connection ended; its tracks stop");
                self.end_publish(PublishClosedReason::Failed).await?;
            }
            PeerEvent::Failed(Target::Subscribe, conn) if current(Target::Subscribe, conn) => {
                tracing::info!("subscribe connection failed; removing the member");
                self.outbox.push(ServerMessage::Bye {
                    reason: ByeReason::PeerFailed,
                });
                return Ok(Flow::Close);
            }
            PeerEvent::Published(conn, forwarder) if publish_id == Some(conn) => {
                if joined
                    .unpublished
                    .contains(&forwarder.info().client_track_id)
                {
                    // Dropping the publication parks the feed: read and discarded.
                    return Ok(Flow::Continue);
                }
                joined.room.publish(forwarder).await.map_err(internal)?;
            }
            PeerEvent::Speaking(conn, speaking) if publish_id == Some(conn) => {
                let member = joined.member;
                joined
                    .room
                    .speaking(member, speaking)
                    .await
                    .map_err(internal)?;
            }
            PeerEvent::ParkedMedia(conn) if publish_id == Some(conn) => {
                let still_refused = self.republish().await?;
                if still_refused {
                    self.refusal_notice();
                }
            }
            PeerEvent::VideoQuality(conn, track, quality) if subscribe_id == Some(conn) => {
                use crate::protocol::VideoQualityState as S;
                use crate::sfu::VideoQuality as Q;
                let state = match quality {
                    Q::Full => S::Full,
                    Q::Reduced => S::Reduced,
                    Q::Paused => S::Paused,
                };
                self.outbox.push(ServerMessage::VideoQuality {
                    track_id: track.to_string(),
                    state,
                });
            }
            // From a replaced connection: dropping a forwarder parks its (closing) feed.
            _ => {}
        }
        Ok(Flow::Continue)
    }
}
