//! Courses, sessions (course days) and invites (join links) in SQLite. Plain queries; the rules
//! about what a change may do (state only moves forward, an ended session is final) live here
//! with the data.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Db, DbError};
use crate::clock::unix_now;
use crate::protocol::{Role, RosterMode};

/// Formats UTC seconds as RFC 3339 (`2026-11-22T09:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses an RFC 3339 UTC time (`…Z`) into seconds since the epoch.
pub fn parse_time(field: &str, s: &str) -> Result<i64, DbError> {
    let t = humantime::parse_rfc3339(s).map_err(|_| {
        DbError::Invalid(format!(
            "{field} must be a UTC time like 2026-11-22T09:00:00Z"
        ))
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct Course {
    pub id: String,
    pub title: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Scheduled,
    Open,
    Live,
    Ended,
}

impl SessionState {
    fn as_str(self) -> &'static str {
        match self {
            SessionState::Scheduled => "scheduled",
            SessionState::Open => "open",
            SessionState::Live => "live",
            SessionState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> SessionState {
        match s {
            "open" => SessionState::Open,
            "live" => SessionState::Live,
            "ended" => SessionState::Ended,
            _ => SessionState::Scheduled,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    pub course_id: String,
    pub title: String,
    pub starts_at: String,
    pub ends_at: String,
    pub host_site: String,
    pub state: SessionState,
    pub chat_enabled: bool,
    /// What participants see of each other: `names` (default) or `count`.
    pub roster: RosterMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip)]
    pub ends_at_unix: i64,
    #[serde(skip)]
    pub ended_at_unix: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub title: String,
    pub starts_at: String,
    pub ends_at: String,
    pub host_site: String,
    #[serde(default)]
    pub chat_enabled: bool,
    #[serde(default)]
    pub roster: RosterMode,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPatch {
    pub title: Option<String>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub host_site: Option<String>,
    pub chat_enabled: Option<bool>,
    pub roster: Option<RosterMode>,
    /// Only forward: scheduled → open → live → ended.
    pub state: Option<SessionState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Invite {
    pub id: String,
    pub session_id: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_of: Option<String>,
    pub open: bool,
    pub revoked: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    pub role: Role,
    /// The person's name as they want it shown (first name is fine), or the site's name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// For a relative: the invite of the patient they accompany.
    #[serde(default)]
    pub relative_of: Option<String>,
    /// An open link (participants only): anyone with it may ask to join, via the lobby.
    #[serde(default)]
    pub open: bool,
}

fn check_text(field: &str, value: &str, max: usize) -> Result<String, DbError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(DbError::Invalid(format!(
            "{field} must be 1–{max} characters"
        )));
    }
    Ok(v.to_owned())
}

fn course_from(row: &AnyRow) -> Course {
    Course {
        id: row.get("id"),
        title: row.get("title"),
        created_at: rfc3339(row.get("created_at")),
    }
}

fn session_from(row: &AnyRow) -> Session {
    let ends: i64 = row.get("ends_at");
    Session {
        id: row.get("id"),
        course_id: row.get("course_id"),
        title: row.get("title"),
        starts_at: rfc3339(row.get("starts_at")),
        ends_at: rfc3339(ends),
        host_site: row.get("host_site"),
        state: SessionState::parse(row.get::<String, _>("state").as_str()),
        chat_enabled: row.get::<i64, _>("chat_enabled") != 0,
        roster: RosterMode::parse(row.get::<String, _>("roster").as_str()).unwrap_or_default(),
        ended_at: row.get::<Option<i64>, _>("ended_at").map(rfc3339),
        ends_at_unix: ends,
        ended_at_unix: row.get("ended_at"),
    }
}

fn invite_from(row: &AnyRow) -> Invite {
    Invite {
        id: row.get("id"),
        session_id: row.get("session_id"),
        role: Role::parse(row.get::<String, _>("role").as_str()).unwrap_or(Role::Participant),
        display_name: row.get("display_name"),
        relative_of: row.get("relative_of"),
        open: row.get::<i64, _>("open") != 0,
        revoked: row.get::<Option<i64>, _>("revoked_at").is_some(),
        created_at: rfc3339(row.get("created_at")),
    }
}

impl Db {
    pub async fn create_course(&self, title: &str) -> Result<Course, DbError> {
        let title = check_text("title", title, 200)?;
        let id = new_id();
        sqlx::query("INSERT INTO courses (id, title, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(&title)
            .bind(unix_now() as i64)
            .execute(&self.pool)
            .await?;
        self.course(&id).await
    }

    pub async fn course(&self, id: &str) -> Result<Course, DbError> {
        let row = sqlx::query("SELECT * FROM courses WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("course"))?;
        Ok(course_from(&row))
    }

    pub async fn courses(&self) -> Result<Vec<Course>, DbError> {
        let rows = sqlx::query("SELECT * FROM courses ORDER BY created_at, rowid")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(course_from).collect())
    }

    pub async fn create_session(
        &self,
        course_id: &str,
        new: &NewSession,
    ) -> Result<Session, DbError> {
        self.course(course_id).await?;
        let title = check_text("title", &new.title, 200)?;
        let host = check_text("host_site", &new.host_site, 200)?;
        let starts = parse_time("starts_at", &new.starts_at)?;
        let ends = parse_time("ends_at", &new.ends_at)?;
        if ends <= starts {
            return Err(DbError::Invalid("ends_at must be after starts_at".into()));
        }
        let id = new_id();
        sqlx::query("INSERT INTO sessions (id, course_id, title, starts_at, ends_at, host_site, state, chat_enabled, roster, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', $7, $8, $9)")
            .bind(&id)
            .bind(course_id)
            .bind(&title)
            .bind(starts)
            .bind(ends)
            .bind(&host)
            .bind(new.chat_enabled as i64)
            .bind(new.roster.as_str())
            .bind(unix_now() as i64)
            .execute(&self.pool)
            .await?;
        self.session(&id).await
    }

    pub async fn session(&self, id: &str) -> Result<Session, DbError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("session"))?;
        Ok(session_from(&row))
    }

    pub async fn sessions(&self, course_id: Option<&str>) -> Result<Vec<Session>, DbError> {
        let rows = match course_id {
            Some(c) => {
                sqlx::query("SELECT * FROM sessions WHERE course_id = $1 ORDER BY starts_at, rowid")
                    .bind(c)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM sessions ORDER BY starts_at, rowid")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(session_from).collect())
    }

    pub async fn update_session(&self, id: &str, patch: &SessionPatch) -> Result<Session, DbError> {
        let current = self.session(id).await?;
        if current.state == SessionState::Ended {
            return Err(DbError::Invalid(
                "the session has ended and cannot change".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        if let Some(t) = &patch.title {
            sqlx::query("UPDATE sessions SET title = $1 WHERE id = $2")
                .bind(check_text("title", t, 200)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(h) = &patch.host_site {
            sqlx::query("UPDATE sessions SET host_site = $1 WHERE id = $2")
                .bind(check_text("host_site", h, 200)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(s) = &patch.starts_at {
            sqlx::query("UPDATE sessions SET starts_at = $1 WHERE id = $2")
                .bind(parse_time("starts_at", s)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(e) = &patch.ends_at {
            sqlx::query("UPDATE sessions SET ends_at = $1 WHERE id = $2")
                .bind(parse_time("ends_at", e)?)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(c) = patch.chat_enabled {
            sqlx::query("UPDATE sessions SET chat_enabled = $1 WHERE id = $2")
                .bind(c as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(r) = patch.roster {
            sqlx::query("UPDATE sessions SET roster = $1 WHERE id = $2")
                .bind(r.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(state) = patch.state {
            if state < current.state {
                return Err(DbError::Invalid(format!(
                    "a session cannot go back from {} to {}",
                    current.state.as_str(),
                    state.as_str()
                )));
            }
            let ended_at = (state == SessionState::Ended).then(|| unix_now() as i64);
            sqlx::query(
                "UPDATE sessions SET state = $1, ended_at = COALESCE(ended_at, $2) WHERE id = $3",
            )
            .bind(state.as_str())
            .bind(ended_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let (s, e): (i64, i64) =
            sqlx::query_as("SELECT starts_at, ends_at FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if e <= s {
            return Err(DbError::Invalid("ends_at must be after starts_at".into()));
        }
        tx.commit().await?;
        self.session(id).await
    }

    /// Moves a session forward to `state` if it is not there yet (e.g. live when the leader
    /// joins). Never moves back; ended stays ended.
    pub async fn advance_session(&self, id: &str, state: SessionState) -> Result<(), DbError> {
        let order = ["scheduled", "open", "live", "ended"];
        let earlier: Vec<&str> = order
            .iter()
            .take_while(|s| **s != state.as_str())
            .copied()
            .collect();
        if earlier.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (0..earlier.len()).map(|i| format!("${}", i + 5)).collect();
        let sql = format!(
            "UPDATE sessions SET state = $1, ended_at = CASE WHEN $2 = 'ended' THEN $3 ELSE ended_at END WHERE id = $4 AND state IN ({})",
            placeholders.join(",")
        );
        let mut q = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(state.as_str())
            .bind(unix_now() as i64)
            .bind(id);
        for s in earlier {
            q = q.bind(s);
        }
        // A node that claimed the session writes its state only while it still owns it.
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = self.fence_of(id) {
            super::cluster::check_fence(&mut tx, id, &fence).await?;
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_invite(
        &self,
        session_id: &str,
        new: &NewInvite,
    ) -> Result<Invite, DbError> {
        let mut created = self
            .create_invites(session_id, std::slice::from_ref(new))
            .await?;
        Ok(created.remove(0))
    }

    /// Creates many invites at once (registration staff inviting a whole course): every one is
    /// checked first, then all are written in one transaction — all or none. An error names
    /// the entry (`invites[3].display_name: …`).
    pub async fn create_invites(
        &self,
        session_id: &str,
        new: &[NewInvite],
    ) -> Result<Vec<Invite>, DbError> {
        let session = self.session(session_id).await?;
        if session.state == SessionState::Ended {
            return Err(DbError::Invalid("the session has ended".into()));
        }
        let many = new.len() > 1;
        let mut names = Vec::with_capacity(new.len());
        for (i, n) in new.iter().enumerate() {
            let name = self
                .check_invite(session_id, n)
                .await
                .map_err(|e| match e {
                    DbError::Invalid(m) if many => DbError::Invalid(format!("invites[{i}]: {m}")),
                    other => other,
                })?;
            names.push(name);
        }
        let mut ids = Vec::with_capacity(new.len());
        let mut tx = self.pool.begin().await?;
        let now = unix_now() as i64;
        for (n, name) in new.iter().zip(&names) {
            let id = new_id();
            sqlx::query("INSERT INTO invites (id, session_id, role, display_name, relative_of, open, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&id)
                .bind(session_id)
                .bind(n.role.as_str())
                .bind(name)
                .bind(&n.relative_of)
                .bind(n.open as i64)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            out.push(self.invite(id).await?);
        }
        Ok(out)
    }

    /// Checks one new invite; its display name, trimmed.
    async fn check_invite(
        &self,
        session_id: &str,
        new: &NewInvite,
    ) -> Result<Option<String>, DbError> {
        if new.open && new.role != Role::Participant {
            return Err(DbError::Invalid(
                "only participant links can be open".into(),
            ));
        }
        let name = match &new.display_name {
            Some(n) => Some(check_text("display_name", n, 64)?),
            None if new.role == Role::Site => {
                return Err(DbError::Invalid(
                    "a site invite needs display_name (the room's name)".into(),
                ))
            }
            None => None,
        };
        if new.open && name.is_some() {
            return Err(DbError::Invalid(
                "an open link has no display_name; people type their own".into(),
            ));
        }
        if let Some(of) = &new.relative_of {
            let patient = match self.invite(of).await {
                Err(DbError::NotFound(_)) => None,
                other => Some(other?),
            };
            if patient.is_none_or(|p| p.session_id != session_id || p.open) {
                return Err(DbError::Invalid(
                    "relative_of must be a personal invite of the same session".into(),
                ));
            }
        }
        Ok(name)
    }

    pub async fn invite(&self, id: &str) -> Result<Invite, DbError> {
        let row = sqlx::query("SELECT * FROM invites WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("invite"))?;
        Ok(invite_from(&row))
    }

    pub async fn invites(&self, session_id: &str) -> Result<Vec<Invite>, DbError> {
        self.session(session_id).await?;
        let rows =
            sqlx::query("SELECT * FROM invites WHERE session_id = $1 ORDER BY created_at, rowid")
                .bind(session_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(invite_from).collect())
    }

    pub async fn revoke_invite(&self, id: &str) -> Result<Invite, DbError> {
        self.invite(id).await?;
        sqlx::query("UPDATE invites SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(unix_now() as i64)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.invite(id).await
    }

    /// Records that the leader removed `subject` from the session: its link or rejoin token
    /// no longer lets it in.
    pub async fn remove_subject(&self, session_id: &str, subject: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO removed_subjects (session_id, subject, removed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(session_id)
        .bind(subject)
        .bind(unix_now() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The participant's number in the session: the one it was given before, or the next
    /// free one (1, 2, …). One statement, so two people arriving at once never share one.
    pub async fn participant_number(
        &self,
        session_id: &str,
        subject: &str,
    ) -> Result<u32, DbError> {
        let known = |pool| {
            sqlx::query_scalar::<_, i64>(
                "SELECT number FROM participant_numbers WHERE session_id = $1 AND subject = $2",
            )
            .bind(session_id)
            .bind(subject)
            .fetch_optional(pool)
        };
        // On PostgreSQL two arrivals at once may compute the same next number; the second
        // insert then does nothing and is tried again (SQLite serialises writers).
        for _ in 0..8 {
            if let Some(n) = known(&self.pool).await? {
                return Ok(n as u32);
            }
            sqlx::query(
            "INSERT INTO participant_numbers (session_id, subject, number)
             SELECT $1, $2, COALESCE(MAX(number), 0) + 1 FROM participant_numbers WHERE session_id = $3
             ON CONFLICT DO NOTHING",
        )
        .bind(session_id)
        .bind(subject)
        .bind(session_id)
        .execute(&self.pool)
        .await?;
        }
        known(&self.pool)
            .await?
            .map(|n| n as u32)
            .ok_or(DbError::NotFound("participant number"))
    }

    pub async fn is_removed(&self, session_id: &str, subject: &str) -> Result<bool, DbError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT removed_at FROM removed_subjects WHERE session_id = $1 AND subject = $2",
        )
        .bind(session_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }
}
