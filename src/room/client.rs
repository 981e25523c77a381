//! One connected client: the protocol state machine (hello → join → media), its two peer
//! connections, and the translation between client messages, room events and peer events.
//! Owned by the WebSocket task in `http::ws`; it never touches the socket itself — replies go
//! to `outbox`, which that task drains — so nothing here can block on a slow client.

use tokio::sync::mpsc;

use super::{RoomEvent, RoomHandle, Rooms, MEMBER_EVENT_QUEUE};
use crate::ids::{MemberId, SessionId};
use crate::protocol::{
    ByeReason, ClientMessage, ErrorCode, IceCandidate, MemberInfo, ProtocolError, Role,
    ServerMessage, Target, VERSION,
};
use crate::sfu::{PeerEvent, Publisher, Sfu, SfuError, Subscriber};

/// Peer events queued per client; generous because ICE candidates arrive in bursts.
const PEER_EVENT_QUEUE: usize = 256;
const MAX_NAME_CHARS: usize = 64;
const MAX_CLIENT_TRACK_ID: usize = 128;

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
}

struct Joined {
    member: MemberId,
    room: RoomHandle,
    room_events: mpsc::Receiver<RoomEvent>,
    peer_events: mpsc::Receiver<PeerEvent>,
    peer_events_tx: mpsc::Sender<PeerEvent>,
    publisher: Option<Publisher>,
    subscriber: Option<Subscriber>,
}

enum Stage {
    New,
    Greeted,
    Joined(Box<Joined>),
}

pub struct Client {
    rooms: Rooms,
    sfu: Sfu,
    stage: Stage,
    /// Messages for the socket, in order.
    pub outbox: Vec<ServerMessage>,
}

impl Client {
    pub fn new(rooms: Rooms, sfu: Sfu) -> Client {
        Client {
            rooms,
            sfu,
            stage: Stage::New,
            outbox: Vec::new(),
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
        tokio::select! {
            ev = joined.room_events.recv() => match ev {
                Some(ev) => ClientEvent::Room(ev),
                None => ClientEvent::RoomClosed,
            },
            // The member holds a sender itself, so this never yields None.
            Some(ev) = joined.peer_events.recv() => ClientEvent::Peer(ev),
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
            ClientMessage::Join {
                session,
                name,
                role,
            } => {
                self.join(&session, &name, role).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::PublishOffer { sdp, tracks } => {
                if tracks
                    .iter()
                    .any(|t| t.track_id.len() > MAX_CLIENT_TRACK_ID)
                {
                    return Err(bad_request("a track_id is too long"));
                }
                let sfu = self.sfu.clone();
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
                self.outbox
                    .push(ServerMessage::PublishAnswer { sdp: answer });
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
                self.outbox.push(ServerMessage::Unpublished { track_id });
                Ok(Flow::Continue)
            }
            ClientMessage::SubscribeAnswer { sdp } => {
                let joined = self.joined()?;
                let Some(subscriber) = joined.subscriber.as_mut() else {
                    return Err(no_offer());
                };
                let ready = subscriber.apply_answer(sdp).await.map_err(sfu_error)?;
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
                self.outbox.push(ServerMessage::Bye {
                    reason: ByeReason::Left,
                });
                Ok(Flow::Close)
            }
        }
    }

    async fn join(&mut self, session: &str, name: &str, role: Role) -> Result<(), ProtocolError> {
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
        let session = SessionId::parse(session).ok_or_else(|| {
            bad_request("session must be 1–64 characters from A–Z, a–z, 0–9, - and _")
        })?;
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(bad_request(
                "name must be 1–64 characters, without control characters",
            ));
        }
        let member = MemberId::new();
        let info = MemberInfo {
            member_id: member,
            name: name.to_owned(),
            role,
        };
        let (events_tx, room_events) = mpsc::channel(MEMBER_EVENT_QUEUE);
        let (room, reply) = self
            .rooms
            .join(&session, info, events_tx)
            .await
            .map_err(internal)?;
        let (peer_events_tx, peer_events) = mpsc::channel(PEER_EVENT_QUEUE);
        self.stage = Stage::Joined(Box::new(Joined {
            member,
            room,
            room_events,
            peer_events,
            peer_events_tx,
            publisher: None,
            subscriber: None,
        }));
        self.outbox.push(ServerMessage::Joined {
            member_id: member,
            session: session.to_string(),
            members: reply.members,
        });
        for track in &reply.tracks {
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
            ClientEvent::Room(RoomEvent::Members(members)) => {
                self.outbox.push(ServerMessage::Members { members });
            }
            ClientEvent::Room(RoomEvent::TrackAdded(info)) => {
                self.subscribe_to(&info).await?;
                self.offer_if_needed().await?;
            }
            ClientEvent::Room(RoomEvent::TrackRemoved(id)) => {
                let joined = self.joined()?;
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
            ClientEvent::Peer(PeerEvent::Candidate(target, candidate)) => {
                self.outbox
                    .push(ServerMessage::IceCandidate { target, candidate });
            }
            ClientEvent::Peer(PeerEvent::Connected(target)) => {
                tracing::debug!(?target, "media connected");
            }
            ClientEvent::Peer(PeerEvent::Failed(target)) => {
                tracing::info!(?target, "media connection failed; removing the member");
                self.outbox.push(ServerMessage::Bye {
                    reason: ByeReason::PeerFailed,
                });
                return Ok(Flow::Close);
            }
            ClientEvent::Peer(PeerEvent::Published(forwarder)) => {
                let joined = self.joined()?;
                joined.room.publish(forwarder).await.map_err(internal)?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn subscribe_to(&mut self, info: &crate::sfu::TrackInfo) -> Result<(), ProtocolError> {
        let sfu = self.sfu.clone();
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
        self.outbox
            .push(ServerMessage::SubscribeOffer { sdp, tracks });
        Ok(())
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
