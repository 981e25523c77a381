//! Node heartbeats and session leases in the shared store (issue 22): which node owns each
//! live session, claimed by one conditional statement, renewed by its owner, fenced by an
//! epoch that only rises. Times are passed in (milliseconds since the epoch), so the rules are
//! tested without sleeping; the `cluster` module runs them on a clock.
//!
//! Safety rests on the epoch, not on clocks: a write for a session is accepted only inside a
//! transaction that finds this node and this epoch still in the session's lease row
//! (`check_fence`, which also locks that row on PostgreSQL until the commit, so a takeover
//! waits for a write in flight). Clocks only decide when a lease counts as expired.

use super::{Db, DbError};

/// A node's tenure over one session: only writes carrying the current epoch are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node_id: String,
    pub epoch: i64,
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub session_id: String,
    pub node_id: String,
    pub epoch: i64,
    pub expires_ms: i64,
}

impl Lease {
    pub fn fence(&self) -> Fence {
        Fence {
            node_id: self.node_id.clone(),
            epoch: self.epoch,
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the session now (a new lease, a taken-over one with a higher epoch, or
    /// its own lease renewed).
    Owned(Lease),
    /// Another node holds an unexpired lease.
    Elsewhere {
        node_id: String,
        epoch: i64,
        expires_ms: i64,
    },
}

/// A node as its heartbeat row shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: String,
    pub internal_url: String,
    pub heartbeat_ms: i64,
}

impl Db {
    /// Writes this node's heartbeat row (created at its first beat).
    pub async fn heartbeat(
        &self,
        node_id: &str,
        internal_url: &str,
        now_ms: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO cluster_nodes (node_id, internal_url, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (node_id) DO UPDATE SET internal_url = excluded.internal_url, heartbeat_ms = excluded.heartbeat_ms",
        )
        .bind(node_id)
        .bind(internal_url)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Nodes whose last heartbeat is at most `dead_after_ms` old, by id.
    pub async fn live_nodes(
        &self,
        now_ms: i64,
        dead_after_ms: i64,
    ) -> Result<Vec<NodeRow>, DbError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT node_id, internal_url, heartbeat_ms FROM cluster_nodes WHERE heartbeat_ms >= $1 ORDER BY node_id",
        )
        .bind(now_ms - dead_after_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node_id, internal_url, heartbeat_ms)| NodeRow {
                node_id,
                internal_url,
                heartbeat_ms,
            })
            .collect())
    }

    /// Claims `session` for `node_id` until `now_ms + lease_ms`: a free session gets epoch 1;
    /// an expired lease (whoever held it) is taken over with the epoch raised by one; this
    /// node's own unexpired lease is renewed with its epoch. Each case is one conditional
    /// statement, so of two nodes claiming at once exactly one wins.
    pub async fn claim_session(
        &self,
        session_id: &str,
        node_id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Claim, DbError> {
        let expires = now_ms + lease_ms;
        let owned = |epoch: i64| {
            Claim::Owned(Lease {
                session_id: session_id.to_owned(),
                node_id: node_id.to_owned(),
                epoch,
                expires_ms: expires,
            })
        };
        let fresh: Option<i64> = sqlx::query_scalar(
            "INSERT INTO session_leases (session_id, node_id, epoch, expires_ms) VALUES ($1, $2, 1, $3)
             ON CONFLICT (session_id) DO NOTHING RETURNING epoch",
        )
        .bind(session_id)
        .bind(node_id)
        .bind(expires)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(epoch) = fresh {
            return Ok(owned(epoch));
        }
        // The right-hand sides see the row before the update: a takeover, or this node's
        // own expired lease, raises the epoch; this node's live lease keeps it.
        let taken: Option<i64> = sqlx::query_scalar(
            "UPDATE session_leases SET
                 epoch = CASE WHEN node_id = $2 AND expires_ms > $4 THEN epoch ELSE epoch + 1 END,
                 node_id = $2,
                 expires_ms = $3
             WHERE session_id = $1 AND (expires_ms <= $4 OR node_id = $2)
             RETURNING epoch",
        )
        .bind(session_id)
        .bind(node_id)
        .bind(expires)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(epoch) = taken {
            return Ok(owned(epoch));
        }
        let (node_id, epoch, expires_ms): (String, i64, i64) = sqlx::query_as(
            "SELECT node_id, epoch, expires_ms FROM session_leases WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Claim::Elsewhere {
            node_id,
            epoch,
            expires_ms,
        })
    }

    /// Extends `lease` to `now_ms + lease_ms` if this node still holds it with the same
    /// epoch; `None` once another node has taken it (the lease is lost).
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Lease>, DbError> {
        let expires = now_ms + lease_ms;
        let n = sqlx::query(
            "UPDATE session_leases SET expires_ms = $4 WHERE session_id = $1 AND node_id = $2 AND epoch = $3",
        )
        .bind(&lease.session_id)
        .bind(&lease.node_id)
        .bind(lease.epoch)
        .bind(expires)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((n == 1).then(|| Lease {
            expires_ms: expires,
            ..lease.clone()
        }))
    }

    /// Lets `lease` expire now (the room ended). The row stays, so the next claim raises the
    /// epoch and nothing of this tenure can be written after it.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE session_leases SET expires_ms = 0 WHERE session_id = $1 AND node_id = $2 AND epoch = $3",
        )
        .bind(&lease.session_id)
        .bind(&lease.node_id)
        .bind(lease.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sessions whose lease expired by `expired_by_ms` without being given up (a release sets
    /// the expiry to 0) and whose owner's last heartbeat is older than `owner_beat_before_ms`
    /// (an owner that still beats is alive and renews its leases when it can).
    pub async fn orphaned_leases(
        &self,
        expired_by_ms: i64,
        owner_beat_before_ms: i64,
    ) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT l.session_id FROM session_leases l LEFT JOIN cluster_nodes n ON n.node_id = l.node_id
             WHERE l.expires_ms > 0 AND l.expires_ms <= $1 AND (n.heartbeat_ms IS NULL OR n.heartbeat_ms < $2)
             ORDER BY l.session_id",
        )
        .bind(expired_by_ms)
        .bind(owner_beat_before_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A node's internal URL and last heartbeat (ms), if it ever beat.
    pub async fn node_row(&self, node_id: &str) -> Result<Option<(String, i64)>, DbError> {
        Ok(sqlx::query_as(
            "SELECT internal_url, heartbeat_ms FROM cluster_nodes WHERE node_id = $1",
        )
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The lease row of a session, if it was ever claimed: (node, epoch, expires).
    pub async fn lease_of(&self, session_id: &str) -> Result<Option<(String, i64, i64)>, DbError> {
        Ok(sqlx::query_as(
            "SELECT node_id, epoch, expires_ms FROM session_leases WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// From now on, every write this process makes for `session_id` (attendance, session
    /// state) is checked against `fence` inside its transaction. Set when this node claims
    /// the session; kept after the lease is lost, so the stale owner's writes are refused.
    pub fn set_fence(&self, session_id: &str, fence: Fence) {
        self.fences
            .lock()
            .expect("fences lock is never poisoned")
            .insert(session_id.to_owned(), fence);
    }

    /// The fence this process writes `session_id` under, if it ever claimed it.
    pub fn fence_of(&self, session_id: &str) -> Option<Fence> {
        self.fences
            .lock()
            .expect("fences lock is never poisoned")
            .get(session_id)
            .cloned()
    }
}

/// Inside a write transaction: `Ok(())` if `fence` still holds `session_id`'s lease, else
/// `DbError::Fenced`. On PostgreSQL the (no-op) update locks the lease row until the
/// transaction ends, so a takeover cannot slip between this check and the commit; SQLite's
/// single writer gives the same.
pub async fn check_fence(
    conn: &mut sqlx::AnyConnection,
    session_id: &str,
    fence: &Fence,
) -> Result<(), DbError> {
    let n = sqlx::query(
        "UPDATE session_leases SET epoch = epoch WHERE session_id = $1 AND node_id = $2 AND epoch = $3",
    )
    .bind(session_id)
    .bind(&fence.node_id)
    .bind(fence.epoch)
    .execute(conn)
    .await?
    .rows_affected();
    if n == 1 {
        Ok(())
    } else {
        Err(DbError::Fenced {
            session_id: session_id.to_owned(),
            epoch: fence.epoch,
        })
    }
}
