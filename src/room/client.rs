//! One connected client: the protocol state machine (hello → join → media), its two peer
//! connections, and the translation between client messages, room events and peer events.
//! Owned by the WebSocket task in `http::ws`; it never touches the socket itself — replies go
//! to `outbox`, which that task drains — so nothing here can block on a slow client.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::permissions::{allowed, Action, MemberFacts, SessionFacts};
use super::{
    Control, Done, JoinOutcome, JoinRequest, RoomEvent, RoomHandle, Rooms, MEMBER_EVENT_QUEUE,
};
use crate::auth::{Claims, TokenKey};
use crate::clock::unix_now;
use crate::db::{Db, DbError, SessionState};
use crate::ids::{MemberId, SessionId, TrackId};
use crate::protocol::{
    ByeReason, ClientMessage, ErrorCode, IceCandidate, ProtocolError, PublishClosedReason, Role,
    ServerMessage, Source, Target, VERSION,
};
use crate::sfu::{Forwarder, PeerEvent, Publisher, Sfu, SfuError, Subscriber};

/// What a client connection needs from the rest of the server.
#[derive(Clone)]
pub struct ClientCtx {
    pub rooms: Rooms,
    pub sfu: Sfu,
    pub db: Db,
    pub tokens: TokenKey,
    /// How long a subscribe offer waits for its answer (`signalling.answer_timeout_ms`).
    pub answer_timeout: Duration,
}

/// Chat lines a member may send at once, and per second after that. A person types far
/// less; a flood is refused line by line (`rate_limited`) before it reaches the session —
/// the socket's own message limit still disconnects a client that keeps going.
const CHAT_BURST: f64 = 10.0;
const CHAT_PER_SECOND: f64 = 1.0;

/// Unanswered subscribe offers in a row before the client is removed.
const MAX_UNANSWERED_OFFERS: u32 = 3;
/// A sender whose media keeps arriving although it is not forwarded is told at most this often.
const REFUSAL_NOTICE_EVERY: Duration = Duration::from_secs(10);

/// Peer events queued per client; generous because ICE candidates arrive in bursts.
const PEER_EVENT_QUEUE: usize = 256;
const MAX_NAME_CHARS: usize = 64;
const MAX_CLIENT_TRACK_ID: usize = 128;
/// How long a member waits for its attendance record to be committed.
const ATTENDANCE_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the connection goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// Something for the client task to act on besides the socket.
pub enum ClientEvent {
    Room(RoomEvent),
    Peer(PeerEvent),
    /// The room dropped us (we stopped reading, or it shut down).
    RoomClosed,
    /// The outstanding subscribe offer was not answered in time.
    AnswerTimeout,
}

struct Joined {
    member: MemberId,
    session: SessionId,
    role: Role,
    name: String,
    /// Came by an open link: gets a rejoin token once admitted.
    open_link: Option<Claims>,
    admitted: bool,
    has_floor: bool,
    /// The leader turned the microphone off; it is forwarded again after the client's next
    /// `publish_offer` (it turned it on) or a new floor.
    mic_muted: bool,
    chat_enabled: bool,
    room: RoomHandle,
    room_events: mpsc::Receiver<RoomEvent>,
    peer_events: mpsc::Receiver<PeerEvent>,
    peer_events_tx: mpsc::Sender<PeerEvent>,
    publisher: Option<Publisher>,
    subscriber: Option<Subscriber>,
    /// The subscribe offer awaiting its answer, to send again, and until when it waits.
    pending_offer: Option<(ServerMessage, Instant)>,
    unanswered_offers: u32,
    last_refusal_notice: Option<Instant>,
    /// The publisher's own ids of tracks it unpublished on its current publish connection.
    /// A browser may go on sending them until it renegotiates; that media is read and thrown
    /// away like a revoked floor's, but never forwarded again (not even under a new server
    /// track id) until a later `publish_offer` lists the track again.
    unpublished: HashSet<String>,
    /// A WHEP player's tracks (the main feed when it started); empty for everyone else.
    playing: Vec<TrackId>,
}

impl Joined {
    /// Whether the member may send `source` now, as far as this connection knows (the room
    /// decides again when the media arrives).
    fn may_publish(&self, source: Source) -> bool {
        let facts = SessionFacts {
            chat_enabled: self.chat_enabled,
            ended: false,
        };
        let me = MemberFacts {
            admitted: self.admitted,
            has_floor: self.has_floor,
        };
        allowed(self.role, facts, me, Action::Publish(source))
    }
}

enum Stage {
    New,
    Greeted,
    Joined(Box<Joined>),
}

pub struct Client {
    ctx: ClientCtx,
    stage: Stage,
    /// Messages for the socket, in order.
    pub outbox: Vec<ServerMessage>,
    /// Chat lines this member may still send at once (refilled at `CHAT_PER_SECOND`), and when
    /// the budget was last looked at.
    chat_budget: f64,
    chat_checked: Instant,
}

impl Client {
    pub fn new(ctx: ClientCtx) -> Client {
        Client {
            ctx,
            stage: Stage::New,
            outbox: Vec::new(),
            chat_budget: CHAT_BURST,
            chat_checked: Instant::now(),
        }
    }

    /// Reports a problem with a request.
    pub fn reject(&mut self, err: ProtocolError, request: Option<&str>) {
        self.outbox.push(err.into_message(request));
    }

    /// Waits for the next room or peer event. Pending forever before `join`.
    pub async fn next_event(&mut self) -> ClientEvent {
        let Stage::Joined(joined) = &mut self.stage else {
            return std::future::pending().await;
        };
        let deadline = joined.pending_offer.as_ref().map(|(_, at)| *at);
        tokio::select! {
            ev = joined.room_events.recv() => match ev {
                Some(ev) => ClientEvent::Room(ev),
                None => ClientEvent::RoomClosed,
            },
            // The member holds a sender itself, so this never yields None.
            Some(ev) = joined.peer_events.recv() => ClientEvent::Peer(ev),
            _ = sleep_until_some(deadline) => ClientEvent::AnswerTimeout,
        }
    }

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
            ClientMessage::Join { token, name } => self.join(&token, name.as_deref()).await,
            ClientMessage::PublishOffer { sdp, tracks } => {
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
            ClientMessage::ClosePublish => {
                if self.joined()?.publisher.is_none() {
                    return Err(no_connection());
                }
                self.end_publish(PublishClosedReason::Requested).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::Unpublish { track_id } => {
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
            ClientMessage::SubscribeAnswer { sdp } => {
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

    async fn join(&mut self, token: &str, name: Option<&str>) -> Result<Flow, ProtocolError> {
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
        let claims = self.ctx.tokens.verify_signature(token).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadToken,
                "This link is not valid. Check that you copied all of it.",
            )
        })?;
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
            return Err(super::refused(ErrorCode::SessionEnded));
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
            return Err(super::refused(ErrorCode::Removed));
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
            chat_enabled: session.chat_enabled,
            roster: session.roster,
            number,
        };
        let (events_tx, room_events) = mpsc::channel(MEMBER_EVENT_QUEUE);
        let (room, outcome) = self
            .ctx
            .rooms
            .join(&session_id, req, events_tx)
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
            chat_enabled: session.chat_enabled,
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
        }));
        match outcome {
            JoinOutcome::Admitted { tracks, recorded } => self.admitted(tracks, recorded).await?,
            JoinOutcome::Lobby => self.outbox.push(ServerMessage::Lobby {
                member_id: member,
                session: session_id.to_string(),
            }),
        }
        Ok(Flow::Continue)
    }

    /// In the room: say so, and start receiving what is published.
    async fn admitted(
        &mut self,
        tracks: Vec<crate::sfu::TrackInfo>,
        recorded: Option<crate::attendance::Ack>,
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
            chat_enabled: joined.chat_enabled,
            rejoin_token,
        };
        self.outbox.push(msg);
        for track in &tracks {
            self.subscribe_to(track).await?;
        }
        self.offer_if_needed().await
    }

    async fn add_candidate(
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
            ClientEvent::Room(RoomEvent::Admitted { tracks, recorded }) => {
                self.admitted(tracks, recorded).await?
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
            PeerEvent::ParkedMedia(conn) if publish_id == Some(conn) => {
                let still_refused = self.republish().await?;
                if still_refused {
                    self.refusal_notice();
                }
            }
            // From a replaced connection: dropping a forwarder parks its (closing) feed.
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// Offers the room every parked track of the publish connection whose media is arriving
    /// and that the member may send now. True if such a track had to stay parked.
    async fn republish(&mut self) -> Result<bool, ProtocolError> {
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
    fn refusal_notice(&mut self) {
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
    async fn end_publish(&mut self, reason: PublishClosedReason) -> Result<(), ProtocolError> {
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
    fn answer_timed_out(&mut self) -> Result<Flow, ProtocolError> {
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

    async fn subscribe_to(&mut self, info: &crate::sfu::TrackInfo) -> Result<(), ProtocolError> {
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
            joined.subscriber = Some(subscriber);
        }
        let subscriber = joined.subscriber.as_mut().expect("subscriber was just set");
        subscriber.add_track(info).await.map_err(internal)
    }

    /// Sends a subscribe offer if the track set changed and none is outstanding.
    async fn offer_if_needed(&mut self) -> Result<(), ProtocolError> {
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

    /// Whether the member is in its session: joined with a valid token and not (or no longer)
    /// waiting in the lobby.
    pub fn is_admitted(&self) -> bool {
        matches!(&self.stage, Stage::Joined(j) if j.admitted)
    }

    /// The member's role once joined.
    pub fn role(&self) -> Option<Role> {
        match &self.stage {
            Stage::Joined(j) => Some(j.role),
            _ => None,
        }
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

    fn member_id(&self) -> Option<MemberId> {
        match &self.stage {
            Stage::Joined(j) => Some(j.member),
            _ => None,
        }
    }

    fn joined(&mut self) -> Result<&mut Joined, ProtocolError> {
        match &mut self.stage {
            Stage::Joined(j) => Ok(j),
            _ => Err(out_of_order("join a session first")),
        }
    }

    /// Leaves the room and closes both connections. Call once, when the socket is done.
    pub async fn shutdown(self) {
        if let Stage::Joined(joined) = self.stage {
            let joined = *joined;
            joined.room.leave(joined.member).await;
            if let Some(p) = joined.publisher {
                p.close().await;
            }
            if let Some(s) = joined.subscriber {
                s.close().await;
            }
        }
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn out_of_order(message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::OutOfOrder, format!("Out of order: {message}."))
}

fn bad_request(message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadRequest, format!("Not allowed: {message}."))
}

fn no_offer() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NoOfferPending,
        "There is no subscribe offer waiting for an answer.",
    )
}

fn no_connection() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NoConnection,
        "That peer connection does not exist yet.",
    )
}

/// Logs the detail once; the client gets a generic message.
fn internal(err: impl std::fmt::Display) -> ProtocolError {
    tracing::error!(error = %err, "request failed inside the server");
    ProtocolError::new(
        ErrorCode::Internal,
        "The server could not do that. Please try again.",
    )
}

fn sfu_error(err: SfuError) -> ProtocolError {
    match err {
        SfuError::BadSdp(detail) => ProtocolError::new(
            ErrorCode::BadSdp,
            format!("The session description could not be used: {detail}"),
        ),
        SfuError::BadCandidate(detail) => ProtocolError::new(
            ErrorCode::BadCandidate,
            format!("The ICE candidate could not be used: {detail}"),
        ),
        SfuError::NoOfferPending => no_offer(),
        other => internal(other),
    }
}
