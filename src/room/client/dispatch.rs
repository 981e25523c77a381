//! Client messages: each is answered (`ok`, `hand`, an error, or what it asked for) or turned
//! into a room `Control`, which the room checks against the rule book.

use tokio::time::Instant;

use super::{
    internal, no_connection, out_of_order, Client, Flow, Stage, ATTENDANCE_ACK_TIMEOUT, CHAT_BURST,
    CHAT_PER_SECOND,
};
use crate::db::SessionState;
use crate::protocol::{
    ByeReason, ClientMessage, ErrorCode, ProtocolError, PublishClosedReason, Role, ServerMessage,
    VERSION,
};
use crate::room::{Control, Done};

/// The largest `max_height` a `video_preference` may give (a 16K screen).
const MAX_VIDEO_HEIGHT: u32 = 8640;
/// The most track ids a `video_preference`'s `order` may list (a page shows a handful).
const MAX_VIDEO_ORDER: usize = 16;

impl Client {
    /// Handles one parsed client message; an error is answered to the client (and ends the
    /// connection only for a protocol version this server does not speak).
    pub async fn handle_message(&mut self, msg: ClientMessage) -> Flow {
        let request = msg.type_name();
        match self.dispatch(msg).await {
            Ok(flow) => flow,
            Err(err) => {
                let close = err.code == ErrorCode::UnsupportedVersion;
                self.reject(err, Some(request));
                if close {
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
        }
    }

    async fn dispatch(&mut self, msg: ClientMessage) -> Result<Flow, ProtocolError> {
        match msg {
            ClientMessage::Hello { version } => {
                if !matches!(self.stage, Stage::New) {
                    return Err(out_of_order("hello was already received"));
                }
                if version != VERSION {
                    return Err(ProtocolError::new(
                        ErrorCode::UnsupportedVersion,
                        format!("This server speaks protocol version {VERSION}, not {version}."),
                    ));
                }
                self.stage = Stage::Greeted;
                self.outbox.push(ServerMessage::Welcome {
                    version: VERSION,
                    server: concat!("kursrelay ", env!("CARGO_PKG_VERSION")).to_owned(),
                });
                Ok(Flow::Continue)
            }
            // The door that read the message checks the token's signature and calls `join`
            // (so that it is checked once, and a forged one counts against its address).
            ClientMessage::Join { .. } => Err(internal(
                "a join reached handle_message instead of Client::join",
            )),
            ClientMessage::PublishOffer { sdp, tracks } => self.publish_offer(sdp, tracks).await,
            ClientMessage::ClosePublish => {
                if self.joined()?.publisher.is_none() {
                    return Err(no_connection());
                }
                self.end_publish(PublishClosedReason::Requested).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::Unpublish { track_id } => self.unpublish(track_id).await,
            ClientMessage::SubscribeAnswer { sdp } => self.subscribe_answer(sdp).await,
            ClientMessage::IceCandidate { target, candidate } => {
                self.add_candidate(target, &candidate).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::Leave => {
                // `bye` confirms the departure is recorded (when there was one to record).
                if let Stage::Joined(joined) = &self.stage {
                    if let Some(ack) = joined.room.leave_recorded(joined.member).await {
                        let _ = tokio::time::timeout(ATTENDANCE_ACK_TIMEOUT, ack).await;
                    }
                }
                self.outbox.push(ServerMessage::Bye {
                    reason: ByeReason::Left,
                });
                Ok(Flow::Close)
            }
            ClientMessage::RaiseHand => self.control("raise_hand", Control::RaiseHand).await,
            ClientMessage::LowerHand { member_id } => {
                let own = member_id.is_none_or(|m| Some(m) == self.member_id());
                let reply = if own { "hand" } else { "lower_hand" };
                self.control(reply, Control::LowerHand(member_id)).await
            }
            ClientMessage::DeclineFloor { reason } => {
                self.control("decline_floor", Control::DeclineFloor(reason))
                    .await
            }
            ClientMessage::SetCohost { member_id, cohost } => {
                self.control("set_cohost", Control::SetCohost(member_id, cohost))
                    .await
            }
            ClientMessage::Admit { member_id } => {
                self.control("admit", Control::Admit(member_id)).await
            }
            ClientMessage::Deny { member_id } => {
                self.control("deny", Control::Deny(member_id)).await
            }
            ClientMessage::GrantFloor { member_id } => {
                self.control("grant_floor", Control::GrantFloor(member_id))
                    .await
            }
            ClientMessage::RevokeFloor { member_id } => {
                self.control("revoke_floor", Control::RevokeFloor(member_id))
                    .await
            }
            ClientMessage::Mute { member_id } => {
                self.control("mute", Control::Mute(member_id)).await
            }
            ClientMessage::Remove { member_id } => {
                self.control("remove", Control::Remove(member_id)).await
            }
            ClientMessage::Lock => self.control("lock", Control::Lock).await,
            ClientMessage::Unlock => self.control("unlock", Control::Unlock).await,
            ClientMessage::SetHeadcount { count } => {
                self.control("set_headcount", Control::SetHeadcount(count))
                    .await
            }
            ClientMessage::Chat { text } => {
                let now = Instant::now();
                let refill = now.duration_since(self.chat_checked).as_secs_f64() * CHAT_PER_SECOND;
                self.chat_checked = now;
                self.chat_budget = (self.chat_budget + refill).min(CHAT_BURST);
                if self.chat_budget < 1.0 {
                    return Err(ProtocolError::new(
                        ErrorCode::RateLimited,
                        "Too many chat messages at once; wait a moment.",
                    ));
                }
                self.chat_budget -= 1.0;
                self.control("chat", Control::Chat(text)).await
            }
            ClientMessage::Caption { text, partial } => {
                self.control("caption", Control::Caption(text, partial))
                    .await
            }
            ClientMessage::VideoPreference {
                max_height,
                save_data,
                order,
            } => {
                if max_height.is_some_and(|h| h == 0 || h > MAX_VIDEO_HEIGHT) {
                    return Err(ProtocolError::new(
                        ErrorCode::BadMessage,
                        format!(
                            "Bad \"video_preference\" message: max_height must be null or 1 to \
                             {MAX_VIDEO_HEIGHT} (the largest height you show video at, in device \
                             pixels)."
                        ),
                    ));
                }
                if order.len() > MAX_VIDEO_ORDER {
                    return Err(ProtocolError::new(
                        ErrorCode::BadMessage,
                        format!(
                            "Bad \"video_preference\" message: order lists at most \
                             {MAX_VIDEO_ORDER} track ids (the videos you show, most needed \
                             first)."
                        ),
                    ));
                }
                if order
                    .iter()
                    .enumerate()
                    .any(|(i, t)| order[..i].contains(t))
                {
                    return Err(ProtocolError::new(
                        ErrorCode::BadMessage,
                        "Bad \"video_preference\" message: order names a track twice.",
                    ));
                }
                let preference = crate::sfu::Preference {
                    max_height,
                    save_data,
                    order,
                };
                let joined = self.joined()?;
                joined.video_preference = Some(preference.clone());
                if let Some(s) = joined.subscriber.as_ref() {
                    s.set_video_preference(preference).map_err(internal)?;
                }
                self.outbox.push(ServerMessage::Ok {
                    request: "video_preference".to_owned(),
                });
                Ok(Flow::Continue)
            }
            ClientMessage::SetAutoCaptions { on } => {
                self.control("set_auto_captions", Control::SetAutoCaptions(on))
                    .await
            }
            ClientMessage::EndSession => {
                let joined = self.joined()?;
                if joined.role != Role::Leader {
                    return Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        "Only the course leader can end the session.",
                    ));
                }
                // Recorded first, so no link works any more even if the room were to fail.
                let session = joined.session.to_string();
                self.ctx
                    .db
                    .advance_session(&session, SessionState::Ended)
                    .await
                    .map_err(internal)?;
                self.control("end_session", Control::EndSession).await
            }
        }
    }

    /// Sends a control action to the room; the room checks the permission.
    async fn control(&mut self, request: &str, control: Control) -> Result<Flow, ProtocolError> {
        let joined = self.joined()?;
        // Your own hand is answered with `hand`; everything else with `ok`.
        let raise = match control {
            Control::RaiseHand => Some(true),
            Control::LowerHand(_) if request == "hand" => Some(false),
            _ => None,
        };
        let done = joined
            .room
            .control(joined.member, control)
            .await
            .map_err(internal)??;
        if let Done::Removed { subject } = done {
            // So their link or rejoin token stays refused after the room closes and reopens.
            let session = joined.session.to_string();
            self.ctx
                .db
                .remove_subject(&session, &subject)
                .await
                .map_err(internal)?;
        }
        self.outbox.push(match raise {
            Some(raised) => ServerMessage::Hand { raised },
            None => ServerMessage::Ok {
                request: request.to_owned(),
            },
        });
        Ok(Flow::Continue)
    }
}
