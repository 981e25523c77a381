//! The database: SQLite (sqlx, WAL; the embedded default) or PostgreSQL (`db.url`, the store
//! several nodes share), both through sqlx's `Any` driver, so every query is one text for
//! both (`$1` placeholders, `ON CONFLICT`, no `INSERT OR …`). Opening it, migrations from
//! migrations/ (compiled in; one set, turned into PostgreSQL's dialect by `dialect`), server
//! secrets, the course/session/invite records (`courses`), node heartbeats and session leases
//! with their epoch fences (`cluster`) and SQLite online backups (`backup`). Never touched by the media path; the room actor reads a session once when it
//! starts.

pub mod backup;
pub mod cluster;
pub mod courses;
pub mod dialect;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::AnyPool;
use sqlx::{ConnectOptions, Connection, Row};

pub use courses::{Course, Invite, NewInvite, NewSession, Session, SessionPatch, SessionState};

use crate::config::DbLocation;

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
    /// The PostgreSQL server in `db.url` could not be reached or refused us. `target` is the
    /// URL without its password.
    #[error("cannot connect to the PostgreSQL database {target} (db.url): {reason}")]
    Connect { target: String, reason: String },
    /// A write for a session whose lease this node no longer holds with this epoch.
    #[error("session {session_id} is no longer run by this node (its lease epoch {epoch} was taken over); the write was refused")]
    Fenced { session_id: String, epoch: i64 },
}

/// Which database a `Db` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded file (the default).
    Sqlite(PathBuf),
    /// A PostgreSQL server; the URL without its password, for messages.
    Postgres(String),
}

/// Migrations, in order. Each runs once, inside a transaction, recorded in `schema_migrations`.
/// Written in SQLite's dialect; `dialect::postgres` turns each into PostgreSQL's.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
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
    (
        7,
        "cluster",
        include_str!("../../migrations/0007_cluster.sql"),
    ),
];

/// How long a start waits for a PostgreSQL connection before it gives up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ties every migration of every node sharing a PostgreSQL database to one lock, so nodes
/// starting at once never apply a migration twice (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6b75_7273_0001;

#[derive(Clone, Debug)]
pub struct Db {
    pub(crate) pool: AnyPool,
    backend: Backend,
    /// Sessions this process claimed, and the epoch its writes for them must carry
    /// (`cluster::Fence`). Empty on a single node: nothing is checked.
    fences: Arc<Mutex<HashMap<String, cluster::Fence>>>,
}

impl Db {
    /// Opens (creating if needed) the SQLite database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        Db::connect(&DbLocation::Sqlite(path.to_owned())).await
    }

    /// Opens the configured database (`db.url`, else `db.path`) and brings its schema up to
    /// date.
    pub async fn connect(location: &DbLocation) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        match location {
            DbLocation::Sqlite(path) => Db::open_sqlite(path).await,
            DbLocation::Postgres(url) => Db::open_postgres(url).await,
        }
    }

    async fn open_sqlite(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // One native connection first: it creates the file and switches it to WAL, which the
        // file keeps (setting it again on every pooled connection could wait on a lock).
        let first = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a commit survives a process crash (SIGKILL); only an OS crash
            // can lose the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .connect()
            .await?;
        first.close().await?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in ["PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON"] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            // The pool's URL made by sqlx from the path (percent-encoded; `mode=rw`).
            .connect(
                SqliteConnectOptions::new()
                    .filename(path)
                    .to_url_lossy()
                    .as_str(),
            )
            .await?;
        let db = Db {
            pool,
            backend: Backend::Sqlite(path.to_owned()),
            fences: Arc::default(),
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn open_postgres(url: &str) -> Result<Db, DbError> {
        let target = crate::config::redact_url(url);
        let failed = |reason: String| DbError::Connect {
            target: target.clone(),
            reason,
        };
        // One plain connection first: the pool would retry a refused connection until its
        // timeout, and the operator should hear at once why the server is not there.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url))
            .await
            .map_err(|_| failed(connect_reason(&sqlx::Error::PoolTimedOut)))?
            .map_err(|e| failed(connect_reason(&e)))?;
        probe.close().await.ok();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| DbError::Connect {
                target: target.clone(),
                reason: connect_reason(&e),
            })?;
        let db = Db {
            pool,
            backend: Backend::Postgres(target),
            fences: Arc::default(),
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Which database this is.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// A migration's SQL in this database's dialect.
    fn dialect(&self, sql: &str) -> String {
        if self.is_postgres() {
            dialect::postgres(sql)
        } else {
            sql.to_owned()
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let create = self.dialect("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)");
        {
            let mut tx = self.pool.begin().await?;
            self.migration_lock(&mut tx).await?;
            sqlx::query(&create).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            self.migration_lock(&mut tx).await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(&self.dialect(sql)).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(*name)
            .bind(crate::clock::unix_now() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "database migrated");
        }
        Ok(())
    }

    /// On PostgreSQL, waits for the cluster-wide migration lock (released at commit).
    /// SQLite's write lock already serialises writers.
    async fn migration_lock(&self, tx: &mut sqlx::AnyConnection) -> Result<(), DbError> {
        if self.is_postgres() {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(tx)
                .await?;
        }
        Ok(())
    }

    /// The connection pool, for tests and tools that inspect the database directly.
    #[doc(hidden)]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A secret made once and kept (e.g. the join-token key).
    pub async fn secret(&self, name: &str) -> Result<Vec<u8>, DbError> {
        if let Some(row) = sqlx::query("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(row.get::<Vec<u8>, _>(0));
        }
        let value: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(&value)
            .execute(&self.pool)
            .await?;
        // Another process may have won the race; read what is there.
        let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Vec<u8>, _>(0))
    }
}

/// Why a PostgreSQL connection failed, in words an operator can act on (never the password,
/// which the server does not echo and sqlx does not print).
fn connect_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("the server cannot be reached ({io})"),
        sqlx::Error::PoolTimedOut => format!(
            "no connection within {} s (is the server up and reachable?)",
            CONNECT_TIMEOUT.as_secs()
        ),
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Configuration(c) => format!("the URL is not usable ({c})"),
        other => other.to_string(),
    }
}
