//! The control path. One actor task per live session owns its members (roles, lobby, hands,
//! floor, headcounts), its published tracks and who receives what; `client` is the
//! per-connection state machine that speaks the protocol for one member; `permissions` is the
//! pure rule book.
//!
//! No mutex guards room state: the actor owns it, others send commands through a bounded
//! channel (`RoomHandle`). The actor never awaits a member, the database or the media path:
//! events to members go out with `try_send`, and subscriber snapshots are swapped, not locked.
//! The registry (`Rooms`) is a std mutex around a map of handles, held for a lookup only.

pub mod client;
pub mod equipment;
pub mod permissions;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use self::permissions::{allowed, receives, Action, MemberFacts, SessionFacts};
use crate::attendance::{self, Ack, Attendance, Kind, LeftReason};
use crate::cluster::Node;
use crate::db::cluster::Claim;
use crate::ids::{MemberId, SessionId, TrackId};
use crate::protocol::{
    ByeReason, ErrorCode, FloorDecline, LobbyEntry, MemberInfo, ProtocolError, Role, RosterEntry,
    RosterMode, RosterView, Source,
};
use crate::sfu::{DownTrack, Forwarder, TrackInfo};

/// Commands queued per room before senders wait.
const ROOM_QUEUE: usize = 256;
/// Events queued per member before the member counts as stuck and is removed.
pub const MEMBER_EVENT_QUEUE: usize = 256;
/// How long a command may wait for room in the room's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Sites report at most this many people in the room.
const MAX_HEADCOUNT: u32 = 1000;
const MAX_TEXT_CHARS: usize = 1000;
/// Rooms up to this size get every roster change at once; larger ones every `ROSTER_COALESCE`.
const ROSTER_IMMEDIATE_UP_TO: usize = 30;
const ROSTER_COALESCE: Duration = Duration::from_millis(250);

/// What the room tells a member's connection.
#[derive(Debug)]
pub enum RoomEvent {
    Roster(RosterView),
    TrackAdded(TrackInfo),
    TrackRemoved(TrackId),
    /// Let in from the lobby: start receiving these tracks (once `recorded` resolves).
    Admitted {
        tracks: Vec<TrackInfo>,
        recorded: Option<Ack>,
        chat_enabled: bool,
        /// Who is speaking at this moment (told right after `joined`).
        speaking: Vec<MemberId>,
    },
    Floor(bool),
    /// Someone (the leader) lowered this member's hand.
    HandLowered,
    Muted,
    Chat {
        member_id: MemberId,
        name: String,
        text: String,
    },
    Caption {
        member_id: MemberId,
        text: String,
        automatic: bool,
        partial: bool,
    },
    /// A member started or stopped speaking.
    Speaking {
        member_id: MemberId,
        speaking: bool,
    },
    /// The member must go.
    Bye(ByeReason),
}

#[derive(Debug, thiserror::Error)]
#[error("the session's room is no longer running")]
pub struct RoomGone;

/// The session's settings a room follows. It is given them when it starts (read from the
/// database by the member whose join starts it) and again whenever the admin API changes them
/// (`Rooms::set_settings`); a join never changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    pub chat_enabled: bool,
    /// What participants see of each other.
    pub roster: RosterMode,
}

impl SessionSettings {
    pub fn of(session: &crate::db::Session) -> SessionSettings {
        SessionSettings {
            chat_enabled: session.chat_enabled,
            roster: session.roster,
        }
    }
}

/// Who is joining, as established from a verified token and the database.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: MemberId,
    /// The invite the token names (for an open link, the link's invite).
    pub invite_id: String,
    /// Pseudonymous and stable across reconnects: the invite id, or for someone who came by
    /// an open link, the id issued at their first admission.
    pub subject: String,
    pub relative_of: Option<String>,
    pub role: Role,
    /// None: no name given. Someone rejoining gets the name they were admitted with; anyone
    /// else is shown without a name (by their number, e.g. "Deltaker 4").
    pub name: Option<String>,
    /// Came by an open link and has not been admitted before: waits in the lobby.
    pub open: bool,
    /// A participant's number in the session (kept across rejoins and restarts, from the
    /// database); None for every other role, who are shown by name or role.
    pub number: Option<u32>,
}

pub enum JoinOutcome {
    /// In the room; subscribe to these tracks. `recorded` resolves once the attendance
    /// event is committed.
    Admitted {
        tracks: Vec<TrackInfo>,
        recorded: Option<Ack>,
        chat_enabled: bool,
        /// Who is speaking at this moment (told right after `joined`).
        speaking: Vec<MemberId>,
    },
    /// Waiting for the leader.
    Lobby,
}

/// Why a join was refused by the room.
pub fn refused(code: ErrorCode) -> ProtocolError {
    let message = match code {
        ErrorCode::Locked => "The course leader has locked the session. Ask them to unlock it.",
        ErrorCode::Removed => "The course leader removed you from this session.",
        ErrorCode::SessionEnded => "The session has ended.",
        _ => "You cannot join this session.",
    };
    ProtocolError::new(code, message)
}

/// A leader's (or member's) action on the room.
#[derive(Debug, Clone)]
pub enum Control {
    RaiseHand,
    /// Your own hand, or (leader, co-host) someone else's.
    LowerHand(Option<MemberId>),
    DeclineFloor(FloorDecline),
    SetCohost(MemberId, bool),
    Admit(MemberId),
    Deny(MemberId),
    GrantFloor(MemberId),
    RevokeFloor(MemberId),
    Mute(MemberId),
    Remove(MemberId),
    Lock,
    Unlock,
    EndSession,
    SetHeadcount(u32),
    Chat(String),
    /// Caption text; `partial`: a recogniser's guess that the next caption replaces.
    Caption(String, bool),
    SetAutoCaptions(bool),
}

type Reply<T> = oneshot::Sender<Result<T, ProtocolError>>;

/// What a control action did, when the member task has more to do about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    Done,
    /// Someone was removed: their pseudonymous subject, to be refused at every later join
    /// (the member task records it in the database; the room cannot wait for that).
    Removed {
        subject: String,
    },
}

enum Command {
    Join {
        req: JoinRequest,
        events: mpsc::Sender<RoomEvent>,
        reply: Reply<(JoinOutcome, String)>,
    },
    Leave {
        member: MemberId,
        reason: LeftReason,
        /// Gets the attendance acknowledgement of the `left` event, if one was recorded.
        reply: Option<oneshot::Sender<Option<Ack>>>,
    },
    Publish {
        forwarder: Forwarder,
    },
    Unpublish {
        member: MemberId,
        client_track_id: String,
        reply: oneshot::Sender<bool>,
    },
    Attach {
        member: MemberId,
        downs: Vec<Arc<DownTrack>>,
    },
    /// The member's publish connection ended: forward none of its tracks any more.
    DropTracks {
        member: MemberId,
    },
    /// The member started or stopped speaking (its publish connection's audio level).
    Speaking {
        member: MemberId,
        speaking: bool,
    },
    Control {
        member: MemberId,
        control: Control,
        reply: Reply<Done>,
    },
    /// An invite was withdrawn: whoever holds it goes at once.
    Revoke {
        invite_id: String,
    },
    /// Ended from outside (the admin API): everyone is told and the room closes.
    End,
    /// Several nodes: this node lost the session's lease (another node runs it now). Everyone
    /// is told to reconnect (`bye` `server_shutdown`), which brings them to the new owner; the
    /// room closes without recording anything (its writes would be refused).
    Moved,
    /// The admin API changed the session's settings.
    Settings(SessionSettings),
    /// The session's main feed for a WHEP player (`member`), attached with `attach`.
    MainFeed {
        member: MemberId,
        reply: oneshot::Sender<Vec<TrackInfo>>,
    },
}

/// A cloneable handle on one room actor.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<Command>,
}

impl RoomHandle {
    async fn send(&self, cmd: Command) -> Result<(), RoomGone> {
        self.tx
            .send_timeout(cmd, SEND_TIMEOUT)
            .await
            .map_err(|_| RoomGone)
    }

    /// The member is gone (socket closed, connection failed). No-op if it already left.
    pub async fn leave(&self, member: MemberId) {
        let _ = self
            .send(Command::Leave {
                member,
                reason: LeftReason::Dropped,
                reply: None,
            })
            .await;
    }

    /// The member leaves on purpose; resolves once the room has processed it, with the
    /// acknowledgement of the attendance record.
    pub async fn leave_recorded(&self, member: MemberId) -> Option<Ack> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Leave {
            member,
            reason: LeftReason::Left,
            reply: Some(reply),
        })
        .await
        .ok()?;
        rx.await.ok().flatten()
    }

    /// `member` started or stopped speaking: everyone admitted is told.
    pub async fn speaking(&self, member: MemberId, speaking: bool) -> Result<(), RoomGone> {
        self.send(Command::Speaking { member, speaking }).await
    }

    pub async fn publish(&self, forwarder: Forwarder) -> Result<(), RoomGone> {
        self.send(Command::Publish { forwarder }).await
    }

    /// Stops forwarding one of `member`'s tracks. False if it publishes no such track.
    pub async fn unpublish(
        &self,
        member: MemberId,
        client_track_id: String,
    ) -> Result<bool, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Unpublish {
            member,
            client_track_id,
            reply,
        })
        .await?;
        rx.await.map_err(|_| RoomGone)
    }

    pub async fn attach(
        &self,
        member: MemberId,
        downs: Vec<Arc<DownTrack>>,
    ) -> Result<(), RoomGone> {
        self.send(Command::Attach { member, downs }).await
    }

    /// The session's main feed as it is now, for a WHEP player: the hall encoder's camera and
    /// microphone if one sends, else the course leader's. Empty if nothing is sent.
    pub async fn main_feed(&self, member: MemberId) -> Result<Vec<TrackInfo>, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::MainFeed { member, reply }).await?;
        rx.await.map_err(|_| RoomGone)
    }

    /// Stops forwarding every track of `member` (its publish connection ended).
    pub async fn drop_tracks(&self, member: MemberId) -> Result<(), RoomGone> {
        self.send(Command::DropTracks { member }).await
    }

    /// Asks the room to do `control` on behalf of `member`; the room checks the permission.
    pub async fn control(
        &self,
        member: MemberId,
        control: Control,
    ) -> Result<Result<Done, ProtocolError>, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Control {
            member,
            control,
            reply,
        })
        .await?;
        rx.await.map_err(|_| RoomGone)
    }
}

/// All live rooms, by session.
#[derive(Clone)]
pub struct Rooms {
    map: Arc<Mutex<HashMap<SessionId, RoomHandle>>>,
    attendance: Attendance,
    /// How often rooms note who is present (closes intervals after a crash).
    seen_every: Duration,
    /// This server as one node of several: a room runs only while this node holds its
    /// session's lease. `None` on a single server (no leases).
    node: Option<Node>,
    /// Held while a room of this node starts or gives its lease up, across the store's round
    /// trips (claim, recovery, release): so a room's start never interleaves with another
    /// start or release of the same session. An async mutex on purpose: it guards those
    /// awaits, never room state, and only the first join of a session and a room's end take it.
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl Rooms {
    pub fn new(attendance: Attendance, seen_every: Duration) -> Rooms {
        Rooms {
            map: Arc::default(),
            attendance,
            seen_every,
            node: None,
            starting: Arc::default(),
        }
    }

    /// Rooms that run only under their session's lease on `node` (several nodes).
    pub fn with_node(mut self, node: Option<Node>) -> Rooms {
        self.node = node;
        self
    }

    /// Several nodes: follows this node's leases until `stop`. A room whose lease was lost
    /// sends its members on (`Command::Moved`); every lease period, sessions whose owner
    /// stopped renewing a lease ago and that nobody took since (a dead node whose members did
    /// not come back) are taken and given up at once, which closes their open attendance
    /// intervals. Nothing on a single server.
    pub fn spawn_lease_follower(&self, stop: tokio_util::sync::CancellationToken) {
        let Some(node) = self.node.clone() else {
            return;
        };
        let rooms = self.clone();
        let mut lost = node.lost_sessions();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(node.lease_length());
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    session = lost.recv() => match session {
                        Ok(session) => {
                            if let Some(session) = SessionId::parse(&session) {
                                if let Some(handle) = rooms.running(&session) {
                                    let _ = handle.send(Command::Moved).await;
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = sweep.tick() => rooms.sweep_orphans(&node).await,
                }
            }
        });
    }

    /// Takes and gives up every session whose lease expired without anyone taking it over
    /// (`Node::take` closes the dead tenure's open intervals).
    async fn sweep_orphans(&self, node: &Node) {
        let orphans = match node.orphans().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for sessions a dead node left");
                return;
            }
        };
        for session in orphans {
            let Some(session) = SessionId::parse(&session) else {
                continue;
            };
            let _starting = self.starting.lock().await;
            if self.is_live(&session) {
                continue;
            }
            self.attendance.flush().await;
            if let Ok(Claim::Owned(_)) = node.take(session.as_str()).await {
                if let Err(e) = node.release(session.as_str()).await {
                    tracing::warn!(session = %session, error = %e, "could not give a swept session's lease up; it expires by itself");
                }
            }
        }
    }

    /// Whether a room of `session` is running here and takes commands.
    fn is_live(&self, session: &SessionId) -> bool {
        self.running(session).is_some_and(|h| !h.tx.is_closed())
    }

    /// Several nodes: before a room of `session` starts here, this node takes the session's
    /// lease (and closes what a dead previous owner left open). False if another node holds
    /// it. On a single server, always true.
    async fn claim_for_start(
        &self,
        session: &SessionId,
        settings: SessionSettings,
    ) -> Result<bool, RoomGone> {
        let Some(node) = &self.node else {
            return Ok(true);
        };
        let _starting = self.starting.lock().await;
        if self.is_live(session) {
            return Ok(true);
        }
        // What this node's earlier room of the session queued (its `left`s) is committed
        // first, so the recovery below sees only intervals a dead tenure left open.
        self.attendance.flush().await;
        match node.take(session.as_str()).await {
            Ok(Claim::Owned(_)) => {
                // Started under the lock, so the next start of the session finds it live.
                self.get_or_start(session, settings);
                Ok(true)
            }
            Ok(Claim::Elsewhere { node_id, .. }) => {
                tracing::info!(session = %session, owner = %node_id, "another node started this session first");
                Ok(false)
            }
            Err(e) => {
                tracing::error!(session = %session, error = %e, "cannot claim the session's lease");
                Err(RoomGone)
            }
        }
    }

    /// Several nodes: a room of `session` ended here; unless another started meanwhile, its
    /// `left` events are committed and the lease given up, so any node may take the session
    /// at once (with a higher epoch).
    async fn release_after_end(&self, session: &SessionId) {
        let Some(node) = &self.node else {
            return;
        };
        let _starting = self.starting.lock().await;
        if self.is_live(session) {
            return;
        }
        if !self.attendance.flush().await {
            tracing::warn!(session = %session, "attendance not flushed before the lease was given up");
        }
        if let Err(e) = node.release(session.as_str()).await {
            tracing::warn!(session = %session, error = %e, "could not give the session's lease up; it expires by itself");
        }
    }

    /// Joins `session`, starting its room with `settings` if it is not running (a running
    /// room keeps its own).
    pub async fn join(
        &self,
        session: &SessionId,
        settings: SessionSettings,
        req: JoinRequest,
        events: mpsc::Sender<RoomEvent>,
    ) -> Result<(RoomHandle, Result<(JoinOutcome, String), ProtocolError>), RoomGone> {
        // A room that empties shuts down; a join can race with that and find it closed. Then a
        // fresh room is started: the second attempt cannot meet the same race with itself.
        for _ in 0..3 {
            if !self.is_live(session) && !self.claim_for_start(session, settings).await? {
                // Another node won the session between the door's look at the lease and this
                // claim; the member's client reconnects and is carried there.
                return Err(RoomGone);
            }
            let handle = self.get_or_start(session, settings);
            let (reply, rx) = oneshot::channel();
            let sent = handle
                .send(Command::Join {
                    req: req.clone(),
                    events: events.clone(),
                    reply,
                })
                .await;
            match (sent, rx.await) {
                (Ok(()), Ok(outcome)) => return Ok((handle, outcome)),
                _ => self.forget(session, &handle),
            }
        }
        Err(RoomGone)
    }

    /// The handle of a session's room, if it is running.
    fn running(&self, session: &SessionId) -> Option<RoomHandle> {
        self.map
            .lock()
            .expect("rooms lock is never poisoned")
            .get(session)
            .cloned()
    }

    /// Ends a running session's room (everyone gets `bye`); nothing if it is not running.
    pub async fn end(&self, session: &SessionId) {
        if let Some(handle) = self.running(session) {
            let _ = handle.send(Command::End).await;
        }
    }

    /// Gives a running session's room the settings the admin API just stored; nothing if it is
    /// not running (it reads them when it starts).
    pub async fn set_settings(&self, session: &SessionId, settings: SessionSettings) {
        if let Some(handle) = self.running(session) {
            let _ = handle.send(Command::Settings(settings)).await;
        }
    }

    /// Removes whoever holds `invite_id` from a running session (`bye {reason: revoked}`).
    pub async fn revoke(&self, session: &SessionId, invite_id: &str) {
        if let Some(handle) = self.running(session) {
            let _ = handle
                .send(Command::Revoke {
                    invite_id: invite_id.to_owned(),
                })
                .await;
        }
    }

    /// Number of running rooms.
    pub fn count(&self) -> usize {
        self.map.lock().expect("rooms lock is never poisoned").len()
    }

    fn get_or_start(&self, session: &SessionId, settings: SessionSettings) -> RoomHandle {
        let mut map = self.map.lock().expect("rooms lock is never poisoned");
        if let Some(handle) = map.get(session) {
            if !handle.tx.is_closed() {
                return handle.clone();
            }
        }
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let handle = RoomHandle { tx };
        map.insert(session.clone(), handle.clone());
        let room = Room {
            session: session.clone(),
            members: Vec::new(),
            tracks: HashMap::new(),
            hands: Vec::new(),
            locked: false,
            settings,
            admitted_subjects: HashMap::new(),
            removed_subjects: HashSet::new(),
            attendance: self.attendance.clone(),
            roster_dirty: false,
            auto_captions: false,
            speaking: HashSet::new(),
        };
        let span = tracing::info_span!("session", id = %session);
        let run = room.run(rx, self.clone(), handle.clone(), self.seen_every);
        let (rooms, session) = (self.clone(), session.clone());
        tokio::spawn(
            async move {
                run.await;
                rooms.release_after_end(&session).await;
            }
            .instrument(span),
        );
        handle
    }

    fn forget(&self, session: &SessionId, handle: &RoomHandle) {
        let mut map = self.map.lock().expect("rooms lock is never poisoned");
        if map
            .get(session)
            .is_some_and(|h| h.tx.same_channel(&handle.tx))
        {
            map.remove(session);
        }
    }
}

struct Member {
    info: MemberInfo,
    invite_id: String,
    subject: String,
    relative_of: Option<String>,
    events: mpsc::Sender<RoomEvent>,
    admitted: bool,
    floor: bool,
    headcount: Option<u32>,
    /// A participant's number in the session (stable across rejoins and restarts), shown
    /// when it has no name.
    number: Option<u32>,
    /// A user representative the leader made co-host: admits and gives the floor too.
    cohost: bool,
    /// Given the floor but could not send; shown to the leader until the next grant.
    declined: Option<FloorDecline>,
}

struct Room {
    session: SessionId,
    /// In join order, so everyone sees the same list. Lobby members included (not admitted).
    members: Vec<Member>,
    tracks: HashMap<TrackId, Forwarder>,
    /// Hand-raise queue, in order of raising.
    hands: Vec<MemberId>,
    locked: bool,
    settings: SessionSettings,
    /// Subjects let in once, with the name they had: they come back without the lobby
    /// (reload, network loss).
    admitted_subjects: HashMap<String, String>,
    /// Subjects the leader removed: their links no longer let them in.
    removed_subjects: HashSet<String>,
    attendance: Attendance,
    /// A roster change is waiting to be sent (large rooms only).
    roster_dirty: bool,
    /// The leader turned automatic captions on: captioners receive speech and may caption.
    auto_captions: bool,
    /// Members announced as speaking: a microphone taken away while its member speaks (they
    /// leave, lose the floor) is followed by "stopped" for everyone.
    speaking: HashSet<MemberId>,
}

impl Room {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        rooms: Rooms,
        me: RoomHandle,
        seen_every: Duration,
    ) {
        tracing::info!("room started");
        let mut seen = tokio::time::interval(seen_every);
        let mut roster_tick = tokio::time::interval(ROSTER_COALESCE);
        roster_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                _ = roster_tick.tick(), if self.roster_dirty => {
                    self.flush_roster();
                    continue;
                }
                _ = seen.tick() => {
                    let present: Vec<String> = self.members.iter().filter(|m| m.admitted).map(|m| m.subject.clone()).collect();
                    if !present.is_empty() {
                        self.attendance.seen(self.session.to_string(), present, attendance::now_ms());
                    }
                    continue;
                }
            };
            let end = matches!(cmd, Command::End | Command::Moved);
            self.handle(cmd);
            if end || self.members.is_empty() {
                // Leave the registry first so new joins start a fresh room, then refuse what
                // is still queued: a queued join's caller sees RoomGone and retries.
                rooms.forget(&self.session, &me);
                rx.close();
                while rx.recv().await.is_some() {}
                break;
            }
        }
        tracing::info!("room closed");
    }

    fn facts(&self) -> SessionFacts {
        SessionFacts {
            chat_enabled: self.settings.chat_enabled,
            ended: false,
        }
    }

    fn member(&self, id: MemberId) -> Option<&Member> {
        self.members.iter().find(|m| m.info.member_id == id)
    }

    fn member_mut(&mut self, id: MemberId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.info.member_id == id)
    }

    fn may(&self, member: MemberId, action: Action) -> bool {
        self.member(member).is_some_and(|m| {
            let facts = MemberFacts {
                admitted: m.admitted,
                has_floor: m.floor,
            };
            allowed(m.info.role, self.facts(), facts, action)
                // A co-host is a user representative with the leader's admit and floor
                // controls (kept here, not in the rule book: it is the room's state).
                || (m.cohost
                    && m.admitted
                    && matches!(action, Action::Admit | Action::GrantFloor))
        })
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join { req, events, reply } => self.join(req, events, reply),
            Command::Leave {
                member,
                reason,
                reply,
            } => {
                let ack = self.remove_member(member, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(ack);
                }
            }
            Command::Publish { forwarder } => {
                let info = forwarder.info().clone();
                if !self.may(info.member, Action::Publish(info.source)) {
                    // Dropping the forwarder parks its feed: the media is read and discarded,
                    // never forwarded, and the sender is told if it keeps coming.
                    tracing::info!(member = %info.member, source = ?info.source, "refused media the member may not publish");
                    return;
                }
                self.tracks.insert(info.id, forwarder);
                self.announce(&info);
            }
            Command::Unpublish {
                member,
                client_track_id,
                reply,
            } => {
                let found = self
                    .tracks
                    .iter()
                    .find(|(_, f)| {
                        f.info().member == member && f.info().client_track_id == client_track_id
                    })
                    .map(|(id, _)| *id);
                if let Some(id) = found {
                    self.remove_track(id);
                }
                let _ = reply.send(found.is_some());
            }
            Command::Attach { member, downs } => {
                let Some(role) = self
                    .member(member)
                    .filter(|m| m.admitted)
                    .map(|m| m.info.role)
                else {
                    return;
                };
                for down in downs {
                    if let Some(forwarder) = self.tracks.get(&down.track()) {
                        // A player asked for the main feed itself; everyone else only gets
                        // what the room sent (a captioner's audio may have been turned off
                        // while its answer was on the way).
                        if role == Role::Player
                            || receives(role, self.auto_captions, forwarder.info().kind)
                        {
                            forwarder.add_subscriber(down);
                        }
                    }
                }
            }
            Command::MainFeed { member, reply } => {
                let _ = reply.send(self.main_feed(member));
            }
            Command::DropTracks { member } => self.remove_tracks_of(member, |_| true),
            Command::Speaking { member, speaking } => self.set_speaking(member, speaking),
            Command::Control {
                member,
                control,
                reply,
            } => {
                let result = self.control(member, control);
                let _ = reply.send(result);
            }
            Command::Revoke { invite_id } => {
                let holders: Vec<(MemberId, String)> = self
                    .members
                    .iter()
                    .filter(|m| m.invite_id == invite_id)
                    .map(|m| (m.info.member_id, m.subject.clone()))
                    .collect();
                for (member, subject) in holders {
                    tracing::info!(member = %member, "invite withdrawn; removing its holder");
                    self.admitted_subjects.remove(&subject);
                    self.send_to(member, RoomEvent::Bye(ByeReason::Revoked));
                    self.remove_member(member, LeftReason::Removed);
                }
            }
            Command::End => self.end(),
            Command::Moved => self.moved(),
            Command::Settings(settings) => {
                if settings != self.settings {
                    tracing::info!(
                        chat = settings.chat_enabled,
                        roster = settings.roster.as_str(),
                        "session settings changed"
                    );
                    self.settings = settings;
                    self.broadcast_roster();
                }
            }
        }
    }

    /// Admits, puts in the lobby or refuses; replies with the outcome and the name shown.
    fn join(
        &mut self,
        req: JoinRequest,
        events: mpsc::Sender<RoomEvent>,
        reply: Reply<(JoinOutcome, String)>,
    ) {
        if self.removed_subjects.contains(&req.subject) {
            let _ = reply.send(Err(refused(ErrorCode::Removed)));
            return;
        }
        let returning = self.admitted_subjects.contains_key(&req.subject);
        // A name is optional: without one, people are shown by their number.
        let name = req
            .name
            .clone()
            .or_else(|| self.admitted_subjects.get(&req.subject).cloned())
            .unwrap_or_default();
        if self.locked && req.role != Role::Leader && !returning {
            let _ = reply.send(Err(refused(ErrorCode::Locked)));
            return;
        }
        // The same person joining again (reload, second tab): the new connection replaces
        // the old one, which is told why.
        if let Some(old) = self
            .members
            .iter()
            .find(|m| m.subject == req.subject)
            .map(|m| m.info.member_id)
        {
            self.send_to(old, RoomEvent::Bye(ByeReason::Replaced));
            self.remove_member(old, LeftReason::Dropped);
        }
        let admitted = !req.open || returning;
        let member = req.member_id;
        let number = req.number;
        tracing::info!(member = %member, role = ?req.role, admitted, "member joined");
        self.members.push(Member {
            info: MemberInfo {
                member_id: member,
                name: name.clone(),
                role: req.role,
            },
            invite_id: req.invite_id.clone(),
            subject: req.subject.clone(),
            relative_of: req.relative_of,
            events,
            admitted,
            floor: false,
            headcount: None,
            number,
            cohost: false,
            declined: None,
        });
        let outcome = if admitted {
            self.admitted_subjects.insert(req.subject, name.clone());
            let recorded = self.record(member, Kind::Joined);
            JoinOutcome::Admitted {
                tracks: self.tracks_for(req.role),
                recorded,
                chat_enabled: self.settings.chat_enabled,
                speaking: self.speaking.iter().copied().collect(),
            }
        } else {
            JoinOutcome::Lobby
        };
        if reply.send(Ok((outcome, name))).is_err() {
            self.remove_member(member, LeftReason::Dropped);
            return;
        }
        self.broadcast_roster();
    }

    fn control(&mut self, member: MemberId, control: Control) -> Result<Done, ProtocolError> {
        let forbidden =
            || ProtocolError::new(ErrorCode::Forbidden, "Your role may not do that now.");
        let need = |room: &Room, action: Action| {
            if room.may(member, action) {
                Ok(())
            } else {
                Err(forbidden())
            }
        };
        match control {
            Control::RaiseHand => {
                need(self, Action::RaiseHand)?;
                if !self.hands.contains(&member) {
                    self.hands.push(member);
                }
            }
            Control::LowerHand(None) => self.hands.retain(|m| *m != member),
            Control::LowerHand(Some(target)) if target == member => {
                self.hands.retain(|m| *m != member)
            }
            Control::LowerHand(Some(target)) => {
                need(self, Action::GrantFloor)?;
                if !self.hands.contains(&target) {
                    return Err(unknown_member());
                }
                self.hands.retain(|m| *m != target);
                self.send_to(target, RoomEvent::HandLowered);
            }
            Control::DeclineFloor(reason) => {
                let m = self.admitted_member(member)?;
                if !m.floor {
                    return Err(forbidden());
                }
                m.floor = false;
                m.declined = Some(reason);
                self.record(member, Kind::FloorRevoked);
                self.remove_tracks_of(member, |s| matches!(s, Source::Camera | Source::Microphone));
                self.send_to(member, RoomEvent::Floor(false));
            }
            Control::SetCohost(target, cohost) => {
                need(self, Action::Lock)?;
                let m = self.admitted_member(target)?;
                if m.info.role != Role::Representative {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "Only the user representative can be co-host.",
                    ));
                }
                m.cohost = cohost;
            }
            Control::Admit(target) => {
                need(self, Action::Admit)?;
                let m = self.lobby_member(target)?;
                m.admitted = true;
                let (subject, name) = (m.subject.clone(), m.info.name.clone());
                self.admitted_subjects.insert(subject, name);
                self.record(target, Kind::Admitted);
                let recorded = self.record(target, Kind::Joined);
                let role = self
                    .member(target)
                    .map_or(Role::Participant, |m| m.info.role);
                let tracks = self.tracks_for(role);
                let chat_enabled = self.settings.chat_enabled;
                let speaking = self.speaking.iter().copied().collect();
                self.send_to(
                    target,
                    RoomEvent::Admitted {
                        tracks,
                        recorded,
                        chat_enabled,
                        speaking,
                    },
                );
            }
            Control::Deny(target) => {
                need(self, Action::Admit)?;
                self.lobby_member(target)?;
                self.send_to(target, RoomEvent::Bye(ByeReason::Denied));
                self.remove_member(target, LeftReason::Dropped);
                return Ok(Done::Done);
            }
            Control::GrantFloor(target) => {
                need(self, Action::GrantFloor)?;
                let m = self.admitted_member(target)?;
                if !matches!(m.info.role, Role::Participant | Role::Site) {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "Only participants and sites are given the floor.",
                    ));
                }
                m.floor = true;
                m.declined = None;
                self.hands.retain(|h| *h != target);
                self.record(target, Kind::FloorGranted);
                self.send_to(target, RoomEvent::Floor(true));
            }
            Control::RevokeFloor(target) => {
                need(self, Action::GrantFloor)?;
                let m = self.admitted_member(target)?;
                m.floor = false;
                self.record(target, Kind::FloorRevoked);
                self.remove_tracks_of(target, |s| matches!(s, Source::Camera | Source::Microphone));
                self.send_to(target, RoomEvent::Floor(false));
            }
            Control::Mute(target) => {
                need(self, Action::MuteMember)?;
                self.admitted_member(target)?;
                self.remove_tracks_of(target, |s| s == Source::Microphone);
                self.send_to(target, RoomEvent::Muted);
                return Ok(Done::Done);
            }
            Control::Remove(target) => {
                need(self, Action::RemoveMember)?;
                let subject = self
                    .member(target)
                    .ok_or_else(unknown_member)?
                    .subject
                    .clone();
                if target == member {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "Use leave to leave.",
                    ));
                }
                self.removed_subjects.insert(subject.clone());
                self.admitted_subjects.remove(&subject);
                self.send_to(target, RoomEvent::Bye(ByeReason::Removed));
                self.remove_member(target, LeftReason::Removed);
                return Ok(Done::Removed { subject });
            }
            Control::Lock | Control::Unlock => {
                need(self, Action::Lock)?;
                self.locked = matches!(control, Control::Lock);
            }
            Control::EndSession => {
                need(self, Action::EndSession)?;
                self.end();
                return Ok(Done::Done);
            }
            Control::SetHeadcount(count) => {
                need(self, Action::SetHeadcount)?;
                if count > MAX_HEADCOUNT {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        format!("A headcount is at most {MAX_HEADCOUNT}."),
                    ));
                }
                if let Some(m) = self.member_mut(member) {
                    m.headcount = Some(count);
                }
                self.record(member, Kind::Headcount(count));
            }
            Control::Chat(text) | Control::Caption(text, _)
                if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS =>
            {
                return Err(ProtocolError::new(
                    ErrorCode::BadRequest,
                    format!("Text must be 1–{MAX_TEXT_CHARS} characters."),
                ));
            }
            Control::Chat(_) if !self.settings.chat_enabled => {
                return Err(ProtocolError::new(
                    ErrorCode::ChatDisabled,
                    "Chat is turned off for this session.",
                ));
            }
            Control::Chat(text) => {
                need(self, Action::Chat)?;
                let (name, role) = self
                    .member(member)
                    .map(|m| (m.info.name.clone(), m.info.role))
                    .unwrap_or((String::new(), Role::Participant));
                // In a count-only session a participant's name reaches only the teaching team,
                // as in the roster; the others see the line without it.
                let hidden = self.settings.roster == RosterMode::Count && role == Role::Participant;
                let mut stuck = Vec::new();
                for m in self.members.iter().filter(|m| m.admitted) {
                    let sees =
                        !hidden || matches!(m.info.role, Role::Leader | Role::Representative);
                    // Relayed only: chat is never stored or logged.
                    let event = RoomEvent::Chat {
                        member_id: member,
                        name: if sees { name.clone() } else { String::new() },
                        text: text.clone(),
                    };
                    if m.events.try_send(event).is_err() {
                        stuck.push(m.info.member_id);
                    }
                }
                self.drop_stuck(stuck);
                return Ok(Done::Done);
            }
            Control::Caption(text, partial) => {
                need(self, Action::Caption)?;
                let automatic = self
                    .member(member)
                    .is_some_and(|m| m.info.role == Role::Captioner);
                if automatic && !self.auto_captions {
                    return Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        "Automatic captions are turned off; the course leader turns them on.",
                    ));
                }
                // Relayed only: captions are never stored or logged.
                self.send_to_admitted(None, || RoomEvent::Caption {
                    member_id: member,
                    text: text.clone(),
                    automatic,
                    partial,
                });
                return Ok(Done::Done);
            }
            Control::SetAutoCaptions(on) => {
                need(self, Action::SetAutoCaptions)?;
                if self.auto_captions != on {
                    self.auto_captions = on;
                    tracing::info!(on, "automatic captions switched");
                    self.captioners_follow();
                }
            }
        }
        self.broadcast_roster();
        Ok(Done::Done)
    }

    fn lobby_member(&mut self, target: MemberId) -> Result<&mut Member, ProtocolError> {
        match self.member_mut(target) {
            Some(m) if !m.admitted => Ok(m),
            Some(_) => Err(ProtocolError::new(
                ErrorCode::UnknownMember,
                "That member is not waiting in the lobby.",
            )),
            None => Err(unknown_member()),
        }
    }

    fn admitted_member(&mut self, target: MemberId) -> Result<&mut Member, ProtocolError> {
        match self.member_mut(target) {
            Some(m) if m.admitted => Ok(m),
            _ => Err(unknown_member()),
        }
    }

    fn end(&mut self) {
        tracing::info!("session ended");
        let all: Vec<MemberId> = self.members.iter().map(|m| m.info.member_id).collect();
        for m in &all {
            if self.member(*m).is_some_and(|x| x.admitted) {
                self.record(*m, Kind::Left(LeftReason::SessionEnded));
            }
            self.send_to(*m, RoomEvent::Bye(ByeReason::SessionEnded));
        }
        self.tracks.clear();
        self.members.clear();
        self.hands.clear();
    }

    fn moved(&mut self) {
        tracing::warn!("session lease lost to another node; members are sent there");
        let all: Vec<MemberId> = self.members.iter().map(|m| m.info.member_id).collect();
        for m in &all {
            self.send_to(*m, RoomEvent::Bye(ByeReason::ServerShutdown));
        }
        self.tracks.clear();
        self.members.clear();
        self.hands.clear();
    }

    /// Queues an attendance event for an admitted or admitting member. The room never waits
    /// for it; the member's task may await the returned acknowledgement.
    fn record(&self, member: MemberId, kind: Kind) -> Option<Ack> {
        let m = self.member(member)?;
        Some(self.attendance.record(attendance::Record {
            session_id: self.session.to_string(),
            event: attendance::Event {
                subject: m.subject.clone(),
                invite_id: m.invite_id.clone(),
                role: m.info.role,
                kind,
                at_ms: attendance::now_ms(),
                by_recovery: false,
            },
        }))
    }

    /// Removes a member (recording `left` if it was in the room); the acknowledgement of that
    /// record, if any.
    fn remove_member(&mut self, member: MemberId, reason: LeftReason) -> Option<Ack> {
        let pos = self
            .members
            .iter()
            .position(|m| m.info.member_id == member)?;
        let ack = if self.members[pos].admitted {
            self.record(member, Kind::Left(reason))
        } else {
            None
        };
        self.members.remove(pos);
        self.hands.retain(|h| *h != member);
        tracing::info!(member = %member, "member left");
        self.remove_tracks_of(member, |_| true);
        for forwarder in self.tracks.values() {
            forwarder.remove_subscriber(member);
        }
        self.broadcast_roster();
        ack
    }

    fn remove_tracks_of(&mut self, member: MemberId, which: impl Fn(Source) -> bool) {
        let ids: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, f)| f.info().member == member && which(f.info().source))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove_track(id);
        }
    }

    fn remove_track(&mut self, id: TrackId) {
        if let Some(forwarder) = self.tracks.remove(&id) {
            let publisher = forwarder.info().member;
            let microphone = forwarder.info().source == Source::Microphone;
            drop(forwarder); // stops its forwarding task at once
            self.send_to_admitted(Some(publisher), || RoomEvent::TrackRemoved(id));
            if microphone {
                self.set_speaking(publisher, false);
            }
        }
    }

    /// The engine says `member` started or stopped speaking (or its microphone went): told to
    /// everyone admitted on a change only. Starting counts only while the member is admitted
    /// and its microphone is forwarded (a late event after the track went is dropped).
    fn set_speaking(&mut self, member: MemberId, speaking: bool) {
        let changed = if speaking {
            let forwarded = self
                .tracks
                .values()
                .any(|f| f.info().member == member && f.info().source == Source::Microphone);
            forwarded
                && self.member(member).is_some_and(|m| m.admitted)
                && self.speaking.insert(member)
        } else {
            self.speaking.remove(&member)
        };
        if changed {
            self.send_to_admitted(None, || RoomEvent::Speaking {
                member_id: member,
                speaking,
            });
        }
    }

    /// The roster as a viewer with `role` (and co-host or not) may see it. Who sees what:
    /// docs/protocol.md, "roster".
    fn roster_for(&self, viewer: Role, cohost: bool) -> RosterView {
        let leader = viewer == Role::Leader;
        // The session decides whether participants see each other's names; the teaching
        // team always does (the user representative calls on raised hands by name).
        let names =
            leader || viewer == Role::Representative || self.settings.roster == RosterMode::Names;
        let members = self
            .members
            .iter()
            .filter(|m| m.admitted)
            .filter(|m| names || m.info.role != Role::Participant)
            .map(|m| RosterEntry {
                member_id: m.info.member_id,
                name: m.info.name.clone(),
                number: m.number.filter(|_| m.info.name.is_empty()),
                role: m.info.role,
                floor: m.floor,
                cohost: m.cohost,
                headcount: m.headcount,
                floor_declined: if leader { m.declined } else { None },
                subject: leader.then(|| m.subject.clone()),
                relative_of: if leader { m.relative_of.clone() } else { None },
            })
            .collect();
        let lobby = (leader || cohost).then(|| {
            self.members
                .iter()
                .filter(|m| !m.admitted)
                .map(|m| LobbyEntry {
                    member_id: m.info.member_id,
                    name: m.info.name.clone(),
                    number: m.number.filter(|_| m.info.name.is_empty()),
                })
                .collect()
        });
        let sees_hands = allowed(
            viewer,
            self.facts(),
            MemberFacts {
                admitted: true,
                has_floor: false,
            },
            Action::SeeHandQueue,
        );
        let participant_count = self
            .members
            .iter()
            .filter(|m| m.admitted)
            .map(|m| match m.info.role {
                Role::Participant => 1,
                Role::Site => m.headcount.unwrap_or(0),
                _ => 0,
            })
            .sum();
        RosterView {
            members,
            lobby,
            hands: sees_hands.then(|| self.hands.clone()),
            locked: self.locked,
            participant_count,
            roster: self.settings.roster,
            chat_enabled: self.settings.chat_enabled,
            hand_position: None,
            auto_captions: self.auto_captions,
        }
    }

    /// What a member with `role` receives of the tracks forwarded now.
    fn tracks_for(&self, role: Role) -> Vec<TrackInfo> {
        self.tracks
            .values()
            .map(|f| f.info())
            .filter(|i| receives(role, self.auto_captions, i.kind))
            .cloned()
            .collect()
    }

    /// Tells every admitted member that should receive it (but its publisher) about a new
    /// track. A member whose queue is full has stopped reading and is removed.
    fn announce(&mut self, info: &TrackInfo) {
        let mut stuck = Vec::new();
        for m in self.members.iter().filter(|m| m.admitted) {
            if m.info.member_id == info.member
                || !receives(m.info.role, self.auto_captions, info.kind)
            {
                continue;
            }
            if m.events
                .try_send(RoomEvent::TrackAdded(info.clone()))
                .is_err()
            {
                stuck.push(m.info.member_id);
            }
        }
        self.drop_stuck(stuck);
    }

    /// Automatic captions were switched: captioners start or stop receiving speech. Turned
    /// off, nothing more reaches the recogniser (down-tracks detached at once).
    fn captioners_follow(&mut self) {
        let captioners: Vec<MemberId> = self
            .members
            .iter()
            .filter(|m| m.admitted && m.info.role == Role::Captioner)
            .map(|m| m.info.member_id)
            .collect();
        let audio: Vec<TrackInfo> = self
            .tracks
            .values()
            .map(|f| f.info())
            .filter(|i| i.kind == crate::protocol::MediaKind::Audio)
            .cloned()
            .collect();
        for c in captioners {
            for info in &audio {
                if info.member == c {
                    continue;
                }
                if self.auto_captions {
                    self.send_to(c, RoomEvent::TrackAdded(info.clone()));
                } else {
                    if let Some(f) = self.tracks.get(&info.id) {
                        f.remove_subscriber(c);
                    }
                    self.send_to(c, RoomEvent::TrackRemoved(info.id));
                }
            }
        }
    }

    /// The main feed for a WHEP player: the encoder's camera and microphone, else the
    /// leader's (the first one present). At most one video and one audio track.
    fn main_feed(&self, player: MemberId) -> Vec<TrackInfo> {
        if !self.member(player).is_some_and(|m| m.admitted) {
            return Vec::new();
        }
        for role in [Role::Encoder, Role::Leader] {
            for m in self.members.iter().filter(|m| m.info.role == role) {
                let mine: Vec<&TrackInfo> = self
                    .tracks
                    .values()
                    .map(|f| f.info())
                    .filter(|i| i.member == m.info.member_id)
                    .collect();
                let pick = |source: Source| mine.iter().find(|i| i.source == source);
                let feed: Vec<TrackInfo> = [pick(Source::Camera), pick(Source::Microphone)]
                    .into_iter()
                    .flatten()
                    .map(|i| (*i).clone())
                    .collect();
                if !feed.is_empty() {
                    return feed;
                }
            }
        }
        Vec::new()
    }

    /// The roster changed. Small rooms hear at once; in large ones the changes of up to
    /// `ROSTER_COALESCE` are sent together (a storm of joins would otherwise send N rosters of
    /// N entries each to N members).
    fn broadcast_roster(&mut self) {
        if self.members.len() <= ROSTER_IMMEDIATE_UP_TO {
            self.flush_roster();
        } else {
            self.roster_dirty = true;
        }
    }

    fn flush_roster(&mut self) {
        self.roster_dirty = false;
        let mut views: HashMap<(Role, bool), RosterView> = HashMap::new();
        let recipients: Vec<(MemberId, Role, bool)> = self
            .members
            .iter()
            .filter(|m| m.admitted)
            .map(|m| (m.info.member_id, m.info.role, m.cohost))
            .collect();
        let mut stuck = Vec::new();
        for (id, role, cohost) in recipients {
            let mut view = views
                .entry((role, cohost))
                .or_insert_with(|| self.roster_for(role, cohost))
                .clone();
            // Each member learns its own place in the hand queue.
            view.hand_position = self
                .hands
                .iter()
                .position(|h| *h == id)
                .map(|p| p as u32 + 1);
            if let Some(m) = self.member(id) {
                if m.events.try_send(RoomEvent::Roster(view)).is_err() {
                    stuck.push(id);
                }
            }
        }
        self.drop_stuck(stuck);
    }

    fn send_to(&mut self, member: MemberId, event: RoomEvent) {
        if let Some(m) = self.member(member) {
            // A full queue here means the member stopped reading; its socket task will end.
            let _ = m.events.try_send(event);
        }
    }

    /// Sends to every admitted member but `except`, without waiting. A member whose queue is
    /// full has stopped reading: it is removed rather than allowed to stall the room.
    fn send_to_admitted(&mut self, except: Option<MemberId>, event: impl Fn() -> RoomEvent) {
        let mut stuck = Vec::new();
        for m in self.members.iter().filter(|m| m.admitted) {
            if Some(m.info.member_id) == except {
                continue;
            }
            if m.events.try_send(event()).is_err() {
                stuck.push(m.info.member_id);
            }
        }
        self.drop_stuck(stuck);
    }

    fn drop_stuck(&mut self, stuck: Vec<MemberId>) {
        for member in stuck {
            // Closed: its socket task has already ended (a shutdown, a socket that just
            // closed) and its leave is on the way. Full: it stopped reading while connected.
            if self.member(member).is_some_and(|m| m.events.is_closed()) {
                tracing::debug!(member = %member, "member's socket task has ended; removing it");
            } else {
                tracing::warn!(member = %member, "member stopped reading room events; removing it");
            }
            self.remove_member(member, LeftReason::Dropped);
        }
    }
}

fn unknown_member() -> ProtocolError {
    ProtocolError::new(ErrorCode::UnknownMember, "No such member in this session.")
}
