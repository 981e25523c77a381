//! Getting in: a `join`, its token checked against the invite and the
//! session in the database, handed to the room as a `JoinRequest`; and what follows admission
//! (`joined` once attendance is committed, then the tracks to receive).

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::{
    bad_request, internal, out_of_order, Client, Flow, Joined, Stage, ATTENDANCE_ACK_TIMEOUT,
};
use crate::auth::{Claims, Genuine, TokenError};
use crate::clock::unix_now;
use crate::db::{DbError, SessionState};
use crate::ids::{MemberId, SessionId};
use crate::protocol::{ErrorCode, ProtocolError, Role, ServerMessage};
use crate::room::{JoinOutcome, JoinRequest, SessionSettings, MEMBER_EVENT_QUEUE};

/// Peer events queued per client; generous because ICE candidates arrive in bursts.
const PEER_EVENT_QUEUE: usize = 256;
const MAX_NAME_CHARS: usize = 64;

impl Client {
    /// A `join` whose token's signature the caller checked (`TokenKey::genuine`, once: see
    /// `http::ws`). Refused with the first reason that holds: not genuine, unknown, withdrawn,
    /// session ended, expired (docs/protocol.md).
    pub async fn join(&mut self, token: Result<Genuine, TokenError>, name: Option<&str>) -> Flow {
        match self.try_join(token, name).await {
            Ok(flow) => flow,
            Err(err) => {
                self.reject(err, Some("join"));
                Flow::Continue
            }
        }
    }

    async fn try_join(
        &mut self,
        token: Result<Genuine, TokenError>,
        name: Option<&str>,
    ) -> Result<Flow, ProtocolError> {
        match self.stage {
            Stage::New => return Err(out_of_order("send hello before join")),
            Stage::Joined(_) => {
                return Err(ProtocolError::new(
                    ErrorCode::AlreadyJoined,
                    "This connection has already joined a session.",
                ))
            }
            Stage::Greeted => {}
        }
        // The signature first; expiry is told last, after the truer reasons a genuine link
        // can have (withdrawn, session ended: docs/protocol.md).
        let genuine = token.map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadToken,
                "This link is not valid. Check that you copied all of it.",
            )
        })?;
        let claims = genuine.claims();
        let session_id = SessionId::parse(&claims.sid)
            .ok_or_else(|| ProtocolError::new(ErrorCode::BadToken, "This link is not valid."))?;
        let session = match self.ctx.db.session(&claims.sid).await {
            Ok(s) => s,
            Err(DbError::NotFound(_)) => {
                return Err(ProtocolError::new(
                    ErrorCode::BadToken,
                    "This link is not valid.",
                ))
            }
            Err(e) => return Err(internal(e)),
        };
        let invite = match self.ctx.db.invite(&claims.sub).await {
            Ok(i) => i,
            Err(DbError::NotFound(_)) => {
                return Err(ProtocolError::new(
                    ErrorCode::BadToken,
                    "This link is not valid.",
                ))
            }
            Err(e) => return Err(internal(e)),
        };
        // The token is signed, but check it against the record anyway: role and session come
        // from the invite, never from the client.
        if invite.session_id != claims.sid
            || invite.role != claims.role
            || invite.open != claims.open
        {
            return Err(ProtocolError::new(
                ErrorCode::BadToken,
                "This link is not valid.",
            ));
        }
        if invite.revoked {
            return Err(ProtocolError::new(
                ErrorCode::InviteRevoked,
                "This link has been withdrawn. Ask the course organisers for a new one.",
            ));
        }
        if session.state == SessionState::Ended {
            return Err(crate::room::refused(ErrorCode::SessionEnded));
        }
        if claims.expired(unix_now()) {
            return Err(ProtocolError::new(
                ErrorCode::BadToken,
                "This link has expired. Ask the course organisers for a new one.",
            ));
        }
        let role = invite.role;
        // Sites are named by their invite; people may choose how they are shown.
        let chosen = name.map(str::trim).filter(|n| !n.is_empty());
        let name = match (role, chosen, invite.display_name.as_deref()) {
            (Role::Site, _, Some(site)) => Some(site.to_owned()),
            (_, Some(n), _) => Some(n.to_owned()),
            (_, None, Some(n)) => Some(n.to_owned()),
            // No name: the room uses the one it admitted them with, or shows their number.
            (_, None, None) => None,
        };
        if name
            .as_ref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control))
        {
            return Err(bad_request(
                "name must be 1–64 characters, without control characters",
            ));
        }
        let member = MemberId::new();
        // Someone on an open link is a new pseudonymous subject, unless they rejoin with the
        // token they were given at admission.
        let (subject, first_time_open) = match (invite.open, &claims.member) {
            (true, Some(returning)) => (returning.clone(), false),
            (true, None) => (
                format!("{}-{}", invite.id, uuid::Uuid::new_v4().simple()),
                true,
            ),
            (false, _) => (invite.id.clone(), false),
        };
        if self
            .ctx
            .db
            .is_removed(&session.id, &subject)
            .await
            .map_err(internal)?
        {
            return Err(crate::room::refused(ErrorCode::Removed));
        }
        // Participants are numbered in the session ("Deltaker 4"), in order of first arrival,
        // by the database so the number survives a restart; nobody else is.
        let number = if role == Role::Participant {
            Some(
                self.ctx
                    .db
                    .participant_number(&session.id, &subject)
                    .await
                    .map_err(internal)?,
            )
        } else {
            None
        };
        let req = JoinRequest {
            member_id: member,
            invite_id: invite.id.clone(),
            subject: subject.clone(),
            relative_of: invite.relative_of.clone(),
            role,
            name,
            open: first_time_open,
            number,
        };
        // Used only if this join starts the session's room; a running room keeps its own.
        let settings = SessionSettings::of(&session);
        let (events_tx, room_events) = mpsc::channel(MEMBER_EVENT_QUEUE);
        let (room, outcome) = self
            .ctx
            .rooms
            .join(&session_id, settings, req, events_tx)
            .await
            .map_err(internal)?;
        let (outcome, joined_name) = outcome?;
        if role == Role::Leader {
            self.ctx
                .db
                .advance_session(&session.id, SessionState::Live)
                .await
                .map_err(internal)?;
        }
        let (peer_events_tx, peer_events) = mpsc::channel(PEER_EVENT_QUEUE);
        let open_link = invite.open.then(|| Claims {
            member: Some(subject.clone()),
            ..claims.clone()
        });
        self.stage = Stage::Joined(Box::new(Joined {
            member,
            session: session_id.clone(),
            role,
            name: joined_name,
            open_link,
            admitted: false,
            has_floor: false,
            mic_muted: false,
            room,
            room_events,
            peer_events,
            peer_events_tx,
            publisher: None,
            subscriber: None,
            pending_offer: None,
            unanswered_offers: 0,
            last_refusal_notice: None,
            unpublished: HashSet::new(),
            playing: Vec::new(),
            video_preference: None,
        }));
        match outcome {
            JoinOutcome::Admitted {
                tracks,
                recorded,
                chat_enabled,
                speaking,
            } => {
                self.admitted(tracks, recorded, chat_enabled, speaking)
                    .await?
            }
            JoinOutcome::Lobby => self.outbox.push(ServerMessage::Lobby {
                member_id: member,
                session: session_id.to_string(),
            }),
        }
        Ok(Flow::Continue)
    }

    /// In the room: say so, and start receiving what is published.
    pub(super) async fn admitted(
        &mut self,
        tracks: Vec<crate::sfu::TrackInfo>,
        recorded: Option<crate::attendance::Ack>,
        chat_enabled: bool,
        speaking: Vec<crate::ids::MemberId>,
    ) -> Result<(), ProtocolError> {
        // `joined` means "you are registered as present": only once the record is committed.
        if let Some(ack) = recorded {
            match tokio::time::timeout(ATTENDANCE_ACK_TIMEOUT, ack).await {
                Ok(Ok(())) => {}
                _ => return Err(internal("attendance was not recorded")),
            }
        }
        let tokens = self.ctx.tokens.clone();
        let joined = self.joined()?;
        joined.admitted = true;
        let rejoin_token = joined.open_link.as_ref().map(|c| tokens.sign(c));
        let msg = ServerMessage::Joined {
            member_id: joined.member,
            session: joined.session.to_string(),
            role: joined.role,
            name: joined.name.clone(),
            chat_enabled,
            rejoin_token,
            simulcast: self.ctx.sfu.simulcast(),
        };
        self.outbox.push(msg);
        // Who speaks now, so a page that joins (or rejoins) mid-sentence marks them at once.
        for member_id in speaking {
            self.outbox.push(ServerMessage::Speaking {
                member_id,
                speaking: true,
            });
        }
        for track in &tracks {
            self.subscribe_to(track).await?;
        }
        self.offer_if_needed().await
    }
}
