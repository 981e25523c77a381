//! The SQLite database (sqlx, WAL): opening it, migrations from migrations/ (compiled in),
//! server secrets, the course/session/invite records (`courses`), and online backups
//! (`backup`). Never touched by the media path; the
//! room actor reads a session once when it starts.

pub mod backup;
pub mod courses;

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

pub use courses::{Course, Invite, NewInvite, NewSession, Session, SessionPatch, SessionState};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

/// Migrations, in order. Each runs once, inside a transaction, recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "courses",
        include_str!("../../migrations/0001_courses.sql"),
    ),
    (
        2,
        "attendance",
        include_str!("../../migrations/0002_attendance.sql"),
    ),
    (
        3,
        "removed_subjects",
        include_str!("../../migrations/0003_removed_subjects.sql"),
    ),
    (
        4,
        "roster",
        include_str!("../../migrations/0004_roster.sql"),
    ),
    (
        5,
        "equipment_roles",
        include_str!("../../migrations/0005_equipment_roles.sql"),
    ),
    (
        6,
        "participant_numbers",
        include_str!("../../migrations/0006_participant_numbers.sql"),
    ),
];

#[derive(Clone, Debug)]
pub struct Db {
    pub(crate) pool: SqlitePool,
}

impl Db {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash (SIGKILL); only an OS crash
            // can lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let db = Db { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            .execute(&self.pool)
            .await?;
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(version)
            .bind(name)
            .bind(crate::clock::unix_now() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "database migrated");
        }
        Ok(())
    }

    /// The connection pool, for tests and tools that inspect the database directly.
    #[doc(hidden)]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A secret made once and kept (e.g. the join-token key).
    pub async fn secret(&self, name: &str) -> Result<Vec<u8>, DbError> {
        if let Some(row) = sqlx::query("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.get::<Vec<u8>, _>(0));
        }
        let value: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        sqlx::query("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(&value)
            .execute(&self.pool)
            .await?;
        // Another process may have won the race; read what is there.
        let row = sqlx::query("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Vec<u8>, _>(0))
    }
}
