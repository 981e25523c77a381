//! Attendance: the room actor hands events to a writer task (`Attendance`) that commits them to
//! the database (SQLite or PostgreSQL) in small batches and acknowledges each only after its commit; crash recovery closes
//! intervals left open; retention deletes old sessions' rows; `summary` turns a session's log
//! into presence figures and `export` into CSV/JSON for registration staff; `tz` gives the
//! export's local time (`attendance.time_zone`).
//!
//! The media path never touches this; the room actor never waits for it (`try_send`, with an
//! acknowledgement the member's own task may await).

pub mod export;
pub mod summary;
pub mod tz;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::db::cluster::check_fence;
use crate::db::{Db, DbError};
use crate::protocol::Role;
pub use summary::{Event, InviteInfo, Kind, LeftReason, SessionSummary};

/// Events queued for the writer before the room's `try_send` fails (and says so in the log).
const QUEUE: usize = 16_384;
/// At most this many events per transaction.
const BATCH: usize = 512;

/// UTC milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An event for one session, as the room records it.
#[derive(Debug, Clone)]
pub struct Record {
    pub session_id: String,
    pub event: Event,
}

enum Msg {
    Event(Record, Option<oneshot::Sender<()>>),
    /// These subjects of this session are present now.
    Seen(String, Vec<String>, i64),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Handle on the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Attendance {
    tx: mpsc::Sender<Msg>,
}

/// Resolves once the event is committed; errs if it could not be.
pub type Ack = oneshot::Receiver<()>;

impl Attendance {
    /// Starts the writer task on `db`.
    pub fn spawn(db: Db) -> Attendance {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(db, rx));
        Attendance { tx }
    }

    /// Queues an event without waiting. The returned `Ack` resolves once it is committed.
    pub fn record(&self, record: Record) -> Ack {
        let (ack, rx) = oneshot::channel();
        if self.tx.try_send(Msg::Event(record, Some(ack))).is_err() {
            tracing::error!("attendance writer is not keeping up; an event was not recorded");
        }
        rx
    }

    /// Notes that `subjects` are present in `session` at `at_ms` (for crash recovery).
    pub fn seen(&self, session: String, subjects: Vec<String>, at_ms: i64) {
        let _ = self.tx.try_send(Msg::Seen(session, subjects, at_ms));
    }

    /// Waits until every event queued so far is committed (false if the writer failed or is
    /// gone). For a clean stop: the leaves the rooms recorded must be on disk before the
    /// process exits, or the next start would take them for a crash's. Waits for room in the
    /// queue rather than dropping: this is no member's hot path.
    pub async fn flush(&self) -> bool {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // The store unreachable: the batch is kept and tried again until it commits, so what
        // was recorded while it was away is written when it is back; the acks wait for that.
        // Events queue behind it meanwhile (up to `QUEUE`).
        let mut wait = RETRY_FIRST;
        let result = loop {
            match commit(&db, &batch).await {
                Err(e) if unreachable(&e) => {
                    tracing::warn!(error = %e, events = batch.len(), retry_ms = wait.as_millis() as u64, "attendance store unreachable; the events are kept and written when it answers");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_AT_MOST);
                }
                other => break other,
            }
        };
        match result {
            Ok(refused) => {
                for session in &refused {
                    // The session id is pseudonymous; a stale owner must hear it loudly.
                    tracing::warn!(session = %session, "attendance refused: this node no longer owns the session");
                }
                for msg in batch.drain(..) {
                    match msg {
                        // Not written: dropping the ack tells the member task so.
                        Msg::Event(r, Some(_)) if refused.contains(&r.session_id) => {}
                        Msg::Event(_, Some(ack)) | Msg::Flush(ack) => {
                            let _ = ack.send(());
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // Dropping the acks tells every waiting member task it was not recorded.
                tracing::error!(error = %e, events = batch.len(), "attendance could not be written");
                batch.clear();
            }
        }
    }
}

/// First pause before a batch is tried again on an unreachable store; doubled up to the most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_AT_MOST: Duration = Duration::from_secs(4);

/// Whether `e` says the store could not be reached (worth trying the batch again), rather than
/// that it refused the batch. A connection lost during the commit itself may in rare cases
/// have committed it; the retry then writes its events twice (docs/ARCHITECTURE.md).
fn unreachable(e: &DbError) -> bool {
    match e {
        DbError::Sqlx(sqlx::Error::Io(_))
        | DbError::Sqlx(sqlx::Error::PoolTimedOut)
        | DbError::Sqlx(sqlx::Error::PoolClosed)
        | DbError::Sqlx(sqlx::Error::Tls(_))
        | DbError::Sqlx(sqlx::Error::Protocol(_))
        | DbError::Sqlx(sqlx::Error::WorkerCrashed) => true,
        // PostgreSQL's connection exceptions (08…) and shutdowns (57P…).
        DbError::Sqlx(sqlx::Error::Database(d)) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Writes a batch in one transaction; returns the sessions whose events were refused because
/// this node no longer holds their lease (`db::cluster::Fence`; none on a single node).
async fn commit(db: &Db, batch: &[Msg]) -> Result<HashSet<String>, DbError> {
    let mut tx = db.pool.begin().await?;
    let mut refused = HashSet::new();
    let mut checked = HashSet::new();
    for msg in batch {
        let session = match msg {
            Msg::Event(r, _) => &r.session_id,
            Msg::Seen(s, _, _) => s,
            Msg::Flush(_) => continue,
        };
        if !checked.insert(session.as_str()) {
            continue;
        }
        if let Some(fence) = db.fence_of(session) {
            match check_fence(&mut tx, session, &fence).await {
                Ok(()) => {}
                Err(DbError::Fenced { .. }) => {
                    refused.insert(session.clone());
                }
                Err(e) => return Err(e),
            }
        }
    }
    for msg in batch {
        match msg {
            Msg::Event(r, _) if refused.contains(&r.session_id) => {}
            Msg::Seen(session, _, _) if refused.contains(session) => {}
            Msg::Event(r, _) => {
                let e = &r.event;
                let (kind, reason, count) = kind_columns(e.kind);
                sqlx::query("INSERT INTO attendance_events (session_id, subject, invite_id, role, kind, reason, count, at_ms, by_recovery) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                    .bind(&r.session_id)
                    .bind(&e.subject)
                    .bind(&e.invite_id)
                    .bind(e.role.as_str())
                    .bind(kind)
                    .bind(reason)
                    .bind(count)
                    .bind(e.at_ms)
                    .bind(e.by_recovery as i64)
                    .execute(&mut *tx)
                    .await?;
                seen_one(&mut tx, &r.session_id, &e.subject, e.at_ms).await?;
            }
            Msg::Seen(session, subjects, at) => {
                for s in subjects {
                    seen_one(&mut tx, session, s, *at).await?;
                }
            }
            Msg::Flush(_) => {}
        }
    }
    tx.commit().await?;
    Ok(refused)
}

async fn seen_one(
    tx: &mut sqlx::AnyConnection,
    session: &str,
    subject: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO attendance_seen (session_id, subject, last_seen_ms) VALUES ($1, $2, $3) ON CONFLICT (session_id, subject) DO UPDATE SET last_seen_ms = excluded.last_seen_ms WHERE excluded.last_seen_ms > attendance_seen.last_seen_ms")
        .bind(session)
        .bind(subject)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

fn kind_columns(kind: Kind) -> (&'static str, Option<&'static str>, Option<i64>) {
    match kind {
        Kind::Joined => ("joined", None, None),
        Kind::Left(r) => ("left", Some(r.as_str()), None),
        Kind::Admitted => ("admitted", None, None),
        Kind::FloorGranted => ("floor_granted", None, None),
        Kind::FloorRevoked => ("floor_revoked", None, None),
        Kind::Headcount(n) => ("headcount", None, Some(n as i64)),
    }
}

/// Every event of a session, oldest first.
pub async fn events(db: &Db, session_id: &str) -> Result<Vec<Event>, DbError> {
    let rows =
        sqlx::query("SELECT * FROM attendance_events WHERE session_id = $1 ORDER BY at_ms, id")
            .bind(session_id)
            .fetch_all(&db.pool)
            .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind = match r.get::<String, _>("kind").as_str() {
                "joined" => Kind::Joined,
                "left" => Kind::Left(LeftReason::parse(
                    &r.get::<Option<String>, _>("reason").unwrap_or_default(),
                )),
                "admitted" => Kind::Admitted,
                "floor_granted" => Kind::FloorGranted,
                "floor_revoked" => Kind::FloorRevoked,
                _ => Kind::Headcount(r.get::<Option<i64>, _>("count").unwrap_or(0).max(0) as u32),
            };
            Event {
                subject: r.get("subject"),
                invite_id: r.get("invite_id"),
                role: Role::parse(&r.get::<String, _>("role")).unwrap_or(Role::Participant),
                kind,
                at_ms: r.get("at_ms"),
                by_recovery: r.get::<i64, _>("by_recovery") != 0,
            }
        })
        .collect())
}

/// The summary of a session as of `now_ms`.
pub async fn session_summary(
    db: &Db,
    session_id: &str,
    now_ms: i64,
    threshold_pct: f64,
) -> Result<SessionSummary, DbError> {
    let session = db.session(session_id).await?;
    let events = events(db, session_id).await?;
    let invites: HashMap<String, InviteInfo> = db
        .invites(session_id)
        .await?
        .into_iter()
        .map(|i| {
            (
                i.id.clone(),
                InviteInfo {
                    name: i.display_name,
                    relative_of: i.relative_of,
                    open: i.open,
                },
            )
        })
        .collect();
    let ended = session.ended_at_unix.map(|s| s * 1000);
    Ok(summary::summarise(
        &events,
        &invites,
        ended,
        now_ms,
        threshold_pct,
    ))
}

/// Closes every interval a crash left open: a `left` event at the subject's last-seen time,
/// reason `recovered`. Returns how many. Run at start-up, before any room exists.
pub async fn recover(db: &Db) -> Result<u64, DbError> {
    let open = sqlx::query(
        "SELECT e.session_id, e.subject, e.invite_id, e.role, e.at_ms, s.last_seen_ms FROM attendance_events e
         LEFT JOIN attendance_seen s ON s.session_id = e.session_id AND s.subject = e.subject
         WHERE e.kind IN ('joined', 'left') AND e.id = (
             SELECT id FROM attendance_events x WHERE x.session_id = e.session_id AND x.subject = e.subject
             AND x.kind IN ('joined', 'left') ORDER BY at_ms DESC, id DESC LIMIT 1)
         AND e.kind = 'joined'",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut tx = db.pool.begin().await?;
    for r in &open {
        let joined: i64 = r.get("at_ms");
        let seen: Option<i64> = r.get("last_seen_ms");
        sqlx::query("INSERT INTO attendance_events (session_id, subject, invite_id, role, kind, reason, at_ms, by_recovery) VALUES ($1, $2, $3, $4, 'left', 'recovered', $5, 1)")
            .bind(r.get::<String, _>("session_id"))
            .bind(r.get::<String, _>("subject"))
            .bind(r.get::<String, _>("invite_id"))
            .bind(r.get::<String, _>("role"))
            .bind(seen.unwrap_or(joined).max(joined))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !open.is_empty() {
        tracing::warn!(
            intervals = open.len(),
            "closed attendance intervals left open by a crash"
        );
    }
    Ok(open.len() as u64)
}

/// Closes the intervals of one session that a dead owner left open, for the node that just
/// took the session over (issue 22): a `left` event with reason `recovered`, at `end_ms` (the
/// dead owner's last lease renewal, which it wrote in the same round as its heartbeat) when
/// known, else at the subject's last-seen time, never before the join. Written inside one
/// transaction under `fence`, the new owner's, so a node that lost the session meanwhile
/// cannot do it. Returns how many.
pub async fn recover_session(
    db: &Db,
    session_id: &str,
    fence: &crate::db::cluster::Fence,
    end_ms: Option<i64>,
) -> Result<u64, DbError> {
    let mut tx = db.pool.begin().await?;
    check_fence(&mut tx, session_id, fence).await?;
    let open = sqlx::query(
        "SELECT e.subject, e.invite_id, e.role, e.at_ms, s.last_seen_ms FROM attendance_events e
         LEFT JOIN attendance_seen s ON s.session_id = e.session_id AND s.subject = e.subject
         WHERE e.session_id = $1 AND e.kind IN ('joined', 'left') AND e.id = (
             SELECT id FROM attendance_events x WHERE x.session_id = e.session_id AND x.subject = e.subject
             AND x.kind IN ('joined', 'left') ORDER BY at_ms DESC, id DESC LIMIT 1)
         AND e.kind = 'joined'",
    )
    .bind(session_id)
    .fetch_all(&mut *tx)
    .await?;
    for r in &open {
        let joined: i64 = r.get("at_ms");
        let seen: Option<i64> = r.get("last_seen_ms");
        let at = end_ms.or(seen).unwrap_or(joined).max(joined);
        sqlx::query("INSERT INTO attendance_events (session_id, subject, invite_id, role, kind, reason, at_ms, by_recovery) VALUES ($1, $2, $3, $4, 'left', 'recovered', $5, 1)")
            .bind(session_id)
            .bind(r.get::<String, _>("subject"))
            .bind(r.get::<String, _>("invite_id"))
            .bind(r.get::<String, _>("role"))
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if !open.is_empty() {
        tracing::warn!(
            session = %session_id,
            intervals = open.len(),
            "closed attendance intervals the session's previous node left open"
        );
    }
    Ok(open.len() as u64)
}

/// Deletes the attendance of sessions that ended more than `retention` ago. Returns
/// (sessions, events) deleted. Logs counts only.
pub async fn purge(db: &Db, now_ms: i64, retention: Duration) -> Result<(u64, u64), DbError> {
    let cutoff_s = (now_ms - retention.as_millis() as i64) / 1000;
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE state = 'ended' AND ended_at IS NOT NULL AND ended_at < $1
         AND EXISTS (SELECT 1 FROM attendance_events e WHERE e.session_id = sessions.id)",
    )
    .bind(cutoff_s)
    .fetch_all(&db.pool)
    .await?;
    let mut events = 0;
    let mut tx = db.pool.begin().await?;
    for s in &sessions {
        events += sqlx::query("DELETE FROM attendance_events WHERE session_id = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM attendance_seen WHERE session_id = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?;
        // Who was removed, and participants' numbers, are pseudonymous, but they are about
        // people: they go with the rest.
        sqlx::query("DELETE FROM removed_subjects WHERE session_id = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM participant_numbers WHERE session_id = $1")
            .bind(s)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if events > 0 {
        tracing::info!(
            sessions = sessions.len(),
            events,
            "deleted attendance past its retention"
        );
    }
    Ok((sessions.len() as u64, events))
}

/// Runs `purge` now and then every `every`, until `stop` (the server's shutdown) — so a server
/// stopped inside a process that goes on (tests, the fuzz runs) leaves no database pool behind.
pub fn spawn_retention(
    db: Db,
    retention: Duration,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = purge(&db, now_ms(), retention).await {
                tracing::error!(error = %e, "attendance retention failed");
            }
        }
    });
}

/// Notes an export in the audit table.
pub async fn record_export(
    db: &Db,
    session_id: &str,
    requested_by: &str,
    format: &str,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO attendance_exports (session_id, requested_by, format, at_ms) VALUES ($1, $2, $3, $4)")
        .bind(session_id)
        .bind(requested_by)
        .bind(format)
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportRecord {
    pub session_id: String,
    pub requested_by: String,
    pub format: String,
    pub at: String,
}

/// The export audit, newest first.
pub async fn exports(db: &Db) -> Result<Vec<ExportRecord>, DbError> {
    let rows = sqlx::query("SELECT * FROM attendance_exports ORDER BY at_ms DESC, id DESC")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| ExportRecord {
            session_id: r.get("session_id"),
            requested_by: r.get("requested_by"),
            format: r.get("format"),
            at: crate::db::courses::rfc3339(r.get::<i64, _>("at_ms") / 1000),
        })
        .collect())
}
