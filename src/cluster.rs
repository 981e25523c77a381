//! This server as one node of several on a shared PostgreSQL store (issue 22): its heartbeat
//! row, and the leases of the sessions it owns — claimed through `Node::claim`, renewed on a
//! timer, given up through `Node::release`. A lease lost to another node is dropped from the
//! renewals but its fence stays registered with the `Db`, so whatever this node still tries to
//! write for that session (attendance, session state) is refused by the epoch.
//!
//! Rooms claim their session through `Node::take` when they start (which also closes what a
//! dead previous owner left open in the attendance record) and give it up when they end;
//! `Node::owner_elsewhere` tells the signalling door (`http::forward`) which other node to
//! carry a member's signalling to. Knows nothing of rooms or media; the database rules are in
//! `db::cluster`. Not built yet: the media cascade (docs/ARCHITECTURE.md, "Several nodes").

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::attendance::{self, now_ms};
use crate::config::ClusterConfig;
use crate::db::cluster::{Claim, Lease, NodeRow};
use crate::db::{Db, DbError};

/// Another node that holds a live lease on a session: where to carry its members' signalling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub internal_url: String,
    /// When its lease runs out unless it renews it (ms since the epoch).
    pub expires_ms: i64,
}

/// This node: its name, where others reach it, and the leases it holds. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    db: Db,
    id: String,
    internal_url: String,
    secret: Arc<str>,
    lease_ms: i64,
    renew_every: Duration,
    held: Arc<Mutex<HashMap<String, Lease>>>,
    /// Sessions whose lease this node lost (`lost_sessions`).
    lost: tokio::sync::broadcast::Sender<String>,
    /// Since when (ms since the epoch) every round of heartbeat and renewals has reached the
    /// store; 0 before the first and after a failed one (the store unreachable). See
    /// `judges_leases`.
    store_ok_since: Arc<AtomicI64>,
}

impl Node {
    /// The node `config` names, or `None` on a single server.
    pub fn new(db: Db, config: &ClusterConfig) -> Option<Node> {
        config.enabled().then(|| Node {
            db,
            id: config.node_id.clone(),
            internal_url: config.internal_url.clone(),
            secret: config.secret.as_str().into(),
            lease_ms: config.lease_ms as i64,
            renew_every: Duration::from_millis(config.renew_interval_ms),
            held: Arc::default(),
            lost: tokio::sync::broadcast::channel(64).0,
            store_ok_since: Arc::new(AtomicI64::new(0)),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The region's shared node secret (`cluster.secret`).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// How long a lease lasts without renewal.
    pub fn lease_length(&self) -> Duration {
        Duration::from_millis(self.lease_ms as u64)
    }

    /// The other node that holds `session`, if one does: a live lease, or an expired (not given
    /// up) one
    /// whose owner is still alive (its heartbeat within one lease: it was cut off from the
    /// store and renews as soon as it can), or any other node's lease while this node cannot
    /// judge yet (`judges_leases`). `None`: nobody, a lease given up, a dead owner's expired
    /// lease, or this node: the session may run here.
    pub async fn owner_elsewhere(&self, session: &str) -> Result<Option<Owner>, DbError> {
        let Some((node_id, _, expires_ms)) = self.db.lease_of(session).await? else {
            return Ok(None);
        };
        if node_id == self.id {
            return Ok(None);
        }
        let now = now_ms();
        let Some((internal_url, heartbeat_ms)) = self.db.node_row(&node_id).await? else {
            return Ok(None);
        };
        // A lease given up (expiry 0) is free at once: its owner let it go.
        let released = expires_ms == 0;
        let owner_alive = heartbeat_ms > now - self.lease_ms;
        if released || (expires_ms <= now && !owner_alive && self.judges_leases(now)) {
            return Ok(None);
        }
        Ok(Some(Owner {
            node_id,
            internal_url,
            expires_ms,
        }))
    }

    /// Whether this node may judge other nodes' expired leases (take them over, sweep them):
    /// only once its own rounds have reached the store for a whole lease. Just after the
    /// store came back, every lease and heartbeat looks stale; the owners that were cut off
    /// with it are given one lease to renew before anyone counts them dead.
    pub fn judges_leases(&self, now_ms: i64) -> bool {
        let since = self.store_ok_since.load(Ordering::SeqCst);
        since > 0 && now_ms - since >= self.lease_ms
    }

    /// Takes `session` for a room about to start on this node: claims its lease and, holding
    /// it, closes the attendance intervals a previous tenure left open (a node that died, or
    /// this node before a crash) at that tenure's last renewal. No room of the session runs
    /// anywhere at that moment, so every open interval is a dead one. `Claim::Elsewhere`:
    /// another node runs it.
    pub async fn take(&self, session: &str) -> Result<Claim, DbError> {
        let before = self.db.lease_of(session).await?;
        let claim = self.claim(session).await?;
        if let Claim::Owned(lease) = &claim {
            // The last renewal of the previous tenure: its expiry minus one lease (a released
            // lease has expiry 0 and left nothing open; then the last-seen times count).
            let end_ms = before
                .filter(|(_, _, expires)| *expires > 0)
                .map(|(_, _, expires)| expires - self.lease_ms);
            if let Err(e) =
                attendance::recover_session(&self.db, session, &lease.fence(), end_ms).await
            {
                // The room still starts; the intervals stay open until the next takeover or
                // the summary's end-of-session rule closes them.
                tracing::error!(session = %session, error = %e, "could not close the previous node's open attendance intervals");
            }
        }
        Ok(claim)
    }

    /// Claims `session` for this node. `Claim::Owned`: this node runs it, and its writes for it
    /// carry the new epoch from now on. `Claim::Elsewhere`: another node holds a live lease.
    pub async fn claim(&self, session: &str) -> Result<Claim, DbError> {
        let claim = self
            .db
            .claim_session(session, &self.id, now_ms(), self.lease_ms)
            .await?;
        if let Claim::Owned(lease) = &claim {
            self.db.set_fence(session, lease.fence());
            self.held
                .lock()
                .expect("leases lock is never poisoned")
                .insert(session.to_owned(), lease.clone());
            tracing::info!(session = %session, epoch = lease.epoch, "session lease claimed");
        }
        Ok(claim)
    }

    /// Gives `session` up (its room ended): the lease expires now, so any node may claim it,
    /// with a higher epoch.
    pub async fn release(&self, session: &str) -> Result<(), DbError> {
        let lease = self
            .held
            .lock()
            .expect("leases lock is never poisoned")
            .remove(session);
        if let Some(lease) = lease {
            self.db.release_lease(&lease).await?;
        }
        Ok(())
    }

    /// Tells of each session whose lease this node loses to another node from now on.
    pub fn lost_sessions(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.lost.subscribe()
    }

    /// Sessions whose lease ran out at least one lease ago without being given up or renewed
    /// and whose owner's heartbeat stopped as long ago (it died, or is cut off from the store
    /// — then its writes are fenced once another node takes the session), and that this node
    /// does not hold: candidates for `take` and `release`. The extra lease leaves the members'
    /// reconnects time to take the session themselves, with the next epoch. None while this
    /// node cannot judge (`judges_leases`).
    pub async fn orphans(&self) -> Result<Vec<String>, DbError> {
        let now = now_ms();
        if !self.judges_leases(now) {
            return Ok(Vec::new());
        }
        let expired = self
            .db
            .orphaned_leases(now - self.lease_ms, now - self.lease_ms)
            .await?;
        let held = self.held.lock().expect("leases lock is never poisoned");
        Ok(expired
            .into_iter()
            .filter(|s| !held.contains_key(s))
            .collect())
    }

    /// The lease this node holds for `session`, if it does.
    pub fn lease(&self, session: &str) -> Option<Lease> {
        self.held
            .lock()
            .expect("leases lock is never poisoned")
            .get(session)
            .cloned()
    }

    /// Nodes whose heartbeat is recent (within one lease), this one included.
    pub async fn live_nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        self.db.live_nodes(now_ms(), self.lease_ms).await
    }

    /// One round at `now_ms`: the heartbeat, then every held lease renewed. Returns the
    /// sessions whose lease was lost to another node.
    pub async fn tick(&self, now_ms: i64) -> Result<Vec<String>, DbError> {
        self.db
            .heartbeat(&self.id, &self.internal_url, now_ms)
            .await?;
        // Copied out, so no lock is held across the awaits below.
        let leases: Vec<Lease> = self
            .held
            .lock()
            .expect("leases lock is never poisoned")
            .values()
            .cloned()
            .collect();
        let mut lost = Vec::new();
        for lease in leases {
            let renewed = self.db.renew_lease(&lease, now_ms, self.lease_ms).await?;
            let mut held = self.held.lock().expect("leases lock is never poisoned");
            match renewed {
                // Only if the entry is still this tenure (not released or re-claimed meanwhile).
                Some(new) => {
                    if held
                        .get(&lease.session_id)
                        .is_some_and(|h| h.epoch == lease.epoch)
                    {
                        held.insert(lease.session_id.clone(), new);
                    }
                }
                None => {
                    if held
                        .get(&lease.session_id)
                        .is_some_and(|h| h.epoch == lease.epoch)
                    {
                        held.remove(&lease.session_id);
                        lost.push(lease.session_id.clone());
                    }
                }
            }
        }
        // Reached the store: counted from the first of an unbroken run of rounds.
        let _ = self
            .store_ok_since
            .compare_exchange(0, now_ms, Ordering::SeqCst, Ordering::SeqCst);
        for session in &lost {
            tracing::warn!(session = %session, "session lease lost to another node; this node's writes for it are refused from now on");
            // Nobody listening (no rooms follow the leases) is fine.
            let _ = self.lost.send(session.clone());
        }
        Ok(lost)
    }

    /// Runs `tick` every `cluster.renew_interval_ms` until `stop`.
    ///
    /// The store unreachable (docs/ARCHITECTURE.md, "The store unreachable"): a round that
    /// fails or gets no answer within one renewal period is logged and tried again at the
    /// next one, with a fresh time. The leases held stay held — the rooms keep their media and
    /// members, nothing is handed to nobody — and are renewed with the same epoch as soon as
    /// the store answers, unless another node took one meanwhile (then its room sends its
    /// members there, as for any lost lease).
    pub fn spawn(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(node.renew_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Only to log the change once each way.
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                let began = now_ms();
                let round =
                    tokio::time::timeout(node.renew_every.max(ROUND_AT_LEAST), node.tick(began))
                        .await;
                match round {
                    Ok(Ok(_)) => {
                        if failing {
                            tracing::warn!("the store answers again; leases renewed");
                            failing = false;
                        }
                    }
                    Ok(Err(e)) => {
                        node.store_ok_since.store(0, Ordering::SeqCst);
                        if !failing {
                            tracing::error!(error = %e, "the store cannot be reached; running sessions go on, new joins are refused until it answers");
                            failing = true;
                        }
                    }
                    Err(_) => {
                        node.store_ok_since.store(0, Ordering::SeqCst);
                        if !failing {
                            tracing::error!("the store does not answer; running sessions go on, new joins are refused until it answers");
                            failing = true;
                        }
                    }
                }
            }
        })
    }
}

/// The least time a round of heartbeat and renewals is given before it counts as failed (a
/// very short renewal period must not make a busy store look unreachable).
const ROUND_AT_LEAST: Duration = Duration::from_millis(500);
