//! One connected client: the protocol state machine (`New → Greeted → Joined`) for one member,
//! its two peer connections, and the translation between client messages, room events and
//! peer events. Owned by the WebSocket task in `http::ws` (or an equipment task); it never
//! touches the socket itself — replies go to `outbox`, which that task drains — so nothing here
//! can block on a slow client.
//!
//! The state and its lifetime are here; the work is in one file per concern: `admission`
//! (join and admission), `dispatch` (client messages, room controls), `negotiation` (the
//! publish and subscribe connections) and `events` (room and peer events).

mod admission;
mod dispatch;
mod events;
mod negotiation;

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::permissions::{allowed, Action, MemberFacts, SessionFacts};
use super::{RoomEvent, RoomHandle, Rooms};
use crate::auth::{Claims, TokenKey};
use crate::db::Db;
use crate::ids::{MemberId, SessionId, TrackId};
use crate::protocol::{ErrorCode, ProtocolError, Role, ServerMessage, Source};
use crate::sfu::{PeerEvent, Publisher, Sfu, SfuError, Subscriber};

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
    /// The viewer's last `video_preference`, applied to its subscribe connection now and
    /// whenever one is made.
    video_preference: Option<crate::sfu::Preference>,
}

impl Joined {
    /// Whether the member may send `source` now, as far as this connection knows (the room
    /// decides again when the media arrives).
    fn may_publish(&self, source: Source) -> bool {
        // Chat, the one session setting in the rule book, does not bear on publishing.
        let facts = SessionFacts {
            chat_enabled: false,
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
