//! The control path. One actor task per live session owns its members and published tracks
//! and decides who receives what; `client` is the per-connection state machine that speaks the
//! protocol for one member and negotiates its peer connections.
//!
//! No mutex guards room state: the actor owns it, others send commands through a bounded
//! channel (`RoomHandle`). The actor never awaits a member or the media path: events to
//! members go out with `try_send`, and subscriber snapshots are swapped, not locked.
//! The registry (`Rooms`) is a std mutex around a map of handles, held for a lookup only.

pub mod client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::ids::{MemberId, SessionId, TrackId};
use crate::protocol::MemberInfo;
use crate::sfu::{DownTrack, Forwarder, TrackInfo};

/// Commands queued per room before senders wait.
const ROOM_QUEUE: usize = 256;
/// Events queued per member before the member counts as stuck and is removed.
pub const MEMBER_EVENT_QUEUE: usize = 256;
/// How long a command may wait for room in the room's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the room tells a member's connection.
#[derive(Debug)]
pub enum RoomEvent {
    Members(Vec<MemberInfo>),
    TrackAdded(TrackInfo),
    TrackRemoved(TrackId),
}

#[derive(Debug, thiserror::Error)]
#[error("the session's room is no longer running")]
pub struct RoomGone;

pub struct JoinReply {
    pub members: Vec<MemberInfo>,
    /// Tracks already published, for the newcomer to subscribe to.
    pub tracks: Vec<TrackInfo>,
}

enum Command {
    Join {
        info: MemberInfo,
        events: mpsc::Sender<RoomEvent>,
        reply: oneshot::Sender<JoinReply>,
    },
    Leave {
        member: MemberId,
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

    async fn join(
        &self,
        info: MemberInfo,
        events: mpsc::Sender<RoomEvent>,
    ) -> Result<JoinReply, RoomGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            info,
            events,
            reply,
        })
        .await?;
        rx.await.map_err(|_| RoomGone)
    }

    pub async fn leave(&self, member: MemberId) {
        let _ = self.send(Command::Leave { member }).await;
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
}

/// All live rooms, by session.
#[derive(Clone, Default)]
pub struct Rooms {
    map: Arc<Mutex<HashMap<SessionId, RoomHandle>>>,
}

impl Rooms {
    /// Joins `session`, starting its room if needed.
    pub async fn join(
        &self,
        session: &SessionId,
        info: MemberInfo,
        events: mpsc::Sender<RoomEvent>,
    ) -> Result<(RoomHandle, JoinReply), RoomGone> {
        // A room that empties shuts down; a join can race with that and find it closed. Then a
        // fresh room is started: the second attempt cannot meet the same race with itself.
        for _ in 0..3 {
            let handle = self.get_or_start(session);
            match handle.join(info.clone(), events.clone()).await {
                Ok(reply) => return Ok((handle, reply)),
                Err(RoomGone) => self.forget(session, &handle),
            }
        }
        Err(RoomGone)
    }

    /// Number of running rooms.
    pub fn count(&self) -> usize {
        self.map.lock().expect("rooms lock is never poisoned").len()
    }

    fn get_or_start(&self, session: &SessionId) -> RoomHandle {
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
        };
        let span = tracing::info_span!("session", id = %session);
        tokio::spawn(room.run(rx, self.clone(), handle.clone()).instrument(span));
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
    events: mpsc::Sender<RoomEvent>,
}

struct Room {
    session: SessionId,
    /// In join order, so everyone sees the same list.
    members: Vec<Member>,
    tracks: HashMap<TrackId, Forwarder>,
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, rooms: Rooms, me: RoomHandle) {
        tracing::info!("room started");
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
            if self.members.is_empty() {
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

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join {
                info,
                events,
                reply,
            } => {
                let member = info.member_id;
                tracing::info!(member = %member, role = ?info.role, "member joined");
                self.members.push(Member { info, events });
                let tracks = self.tracks.values().map(|f| f.info().clone()).collect();
                if reply
                    .send(JoinReply {
                        members: self.member_list(),
                        tracks,
                    })
                    .is_err()
                {
                    self.remove_member(member);
                    return;
                }
                self.broadcast_members(Some(member));
            }
            Command::Leave { member } => self.remove_member(member),
            Command::Publish { forwarder } => {
                let info = forwarder.info().clone();
                if !self.members.iter().any(|m| m.info.member_id == info.member) {
                    return; // published by someone who already left: dropping stops it
                }
                self.tracks.insert(info.id, forwarder);
                let publisher = info.member;
                self.send_to_all_but(Some(publisher), || RoomEvent::TrackAdded(info.clone()));
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
                if !self.members.iter().any(|m| m.info.member_id == member) {
                    return;
                }
                for down in downs {
                    if let Some(forwarder) = self.tracks.get(&down.track()) {
                        forwarder.add_subscriber(down);
                    }
                }
            }
        }
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        self.members.iter().map(|m| m.info.clone()).collect()
    }

    fn remove_member(&mut self, member: MemberId) {
        let Some(pos) = self.members.iter().position(|m| m.info.member_id == member) else {
            return;
        };
        self.members.remove(pos);
        tracing::info!(member = %member, "member left");
        let theirs: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, f)| f.info().member == member)
            .map(|(id, _)| *id)
            .collect();
        for id in theirs {
            self.remove_track(id);
        }
        for forwarder in self.tracks.values() {
            forwarder.remove_subscriber(member);
        }
        self.broadcast_members(None);
    }

    fn remove_track(&mut self, id: TrackId) {
        if let Some(forwarder) = self.tracks.remove(&id) {
            let publisher = forwarder.info().member;
            drop(forwarder); // stops its forwarding task
            self.send_to_all_but(Some(publisher), || RoomEvent::TrackRemoved(id));
        }
    }

    fn broadcast_members(&mut self, except: Option<MemberId>) {
        let list = self.member_list();
        self.send_to_all_but(except, || RoomEvent::Members(list.clone()));
    }

    /// Sends without waiting. A member whose queue is full has stopped reading: it is removed
    /// rather than allowed to stall the room.
    fn send_to_all_but(&mut self, except: Option<MemberId>, event: impl Fn() -> RoomEvent) {
        let mut stuck = Vec::new();
        for m in &self.members {
            if Some(m.info.member_id) == except {
                continue;
            }
            if m.events.try_send(event()).is_err() {
                stuck.push(m.info.member_id);
            }
        }
        for member in stuck {
            tracing::warn!(member = %member, "member stopped reading room events; removing it");
            self.remove_member(member);
        }
    }
}
