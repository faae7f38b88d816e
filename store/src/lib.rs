//! The metadata store: every DAG, DAG version, run, task instance, try, XCom, variable and
//! pool lives here, on SQLite (embedded default) or PostgreSQL. The scheduler and the
//! executors are stateless around it: anything they decide is decided inside one of the
//! transactions below, so a crash loses nothing and several processes can share one
//! PostgreSQL database.
//!
//! Both backends run the same SQL (`$N` placeholders, `ON CONFLICT`, `RETURNING` work on
//! both); the few statements that differ — row locks, list parameters — are chosen by
//! [`Dialect`] in `sql.rs`.

pub mod api;
mod credentials;
mod dags;
pub use dags::schedule_label;
mod exec;
mod models;
mod runs;
pub mod scratch;
mod sql;
pub mod state;
mod stats;
pub use stats::ActiveCounts;
mod notify;
pub use notify::WorkListener;
#[cfg(feature = "testing")]
pub mod testing;
mod xcom;
pub use xcom::XcomRow;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sluice_core::Dag;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, PgPool, SqlitePool};

pub use api::{
    evaluate_run, run_order_column, ti_order_column, RunFilter, TiFilter, TiSelector, TimeRange,
    UserRow,
};
pub use credentials::{StoredConnection, StoredSecret};
pub use exec::{
    checkpoint_namespace, log_path, Claimed, FinishReport, OutboxEntry, Outcome, StateProposal,
    TryIo, TryResult, XcomValue,
};
pub use models::*;
pub use state::{RunState, TiState};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot connect to the metadata database at {url}: {cause}")]
    Connect { url: String, cause: sqlx::Error },
    #[error("stored DAG version {id} is unreadable: {reason}")]
    BadVersion { id: i64, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend. The body is
/// written once and compiled for both, so the two backends cannot drift apart. The body
/// may name the backend as `DbKind` (e.g. for a `QueryBuilder`).
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type DbKind = sqlx::Sqlite;
                $body
            }
            $crate::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type DbKind = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// Starts a write transaction. On SQLite it is `BEGIN IMMEDIATE`: the write lock is
/// taken up front, so two processes never deadlock upgrading a read lock, and a
/// read-then-write inside the transaction cannot be invalidated by another writer.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = sqlx::Result<sqlx::Transaction<'static, Self::Db>>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.begin().await
    }
}

/// Handle on the metadata store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) dialect: Dialect,
    url: String,
    sqlite_path: Option<std::path::PathBuf>,
    /// DAG versions are immutable once written, so a cache never goes stale.
    versions: Arc<RwLock<HashMap<i64, Arc<Dag>>>>,
}

/// The current time at the precision both backends keep (microseconds), so a value
/// written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Takes an exclusive lock on `path` (created if missing), held until the file is
/// dropped. Blocks in a thread, not on the runtime.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File> {
    let locked = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("migration lock task failed: {e}")))?;
    locked.map_err(|e| StoreError::Db(sqlx::Error::Io(e)))
}

/// A database URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let auth_end = rest.find('/').unwrap_or(rest.len());
            match rest[..auth_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    let masked = if userinfo.contains(':') {
                        format!("{user}:***")
                    } else {
                        user.to_string()
                    };
                    format!("{}://{}{}", &url[..scheme_end], masked, &rest[at..])
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

impl Store {
    /// Connects once. `url` is `sqlite://PATH` (created when missing) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store> {
        let connect_err = |cause| StoreError::Connect {
            url: redact_url(url),
            cause,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts: PgConnectOptions = url.parse().map_err(connect_err)?;
            let opts = opts
                .log_statements(tracing::log::LevelFilter::Trace)
                .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(200));
            // One direct connection first: the pool would retry a refused connection
            // silently until its acquire timeout, hiding the cause; this fails at once
            // with it, and the caller decides whether to retry.
            let probe = tokio::time::timeout(
                Duration::from_secs(10),
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
            )
            .await
            .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
            .map_err(connect_err)?;
            let _ = sqlx::Connection::close(probe).await;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            Ok(Self::from_db(Db::Postgres(pool), Dialect::Postgres, url))
        } else if url.starts_with("sqlite:") {
            let opts: SqliteConnectOptions = url.parse().map_err(connect_err)?;
            let opts = opts
                .create_if_missing(true)
                // WAL lets readers (CLI, web) run beside the writer; NORMAL sync is
                // crash-safe in WAL mode (only an OS crash can lose the last commits).
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                .log_statements(tracing::log::LevelFilter::Trace)
                .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(200));
            let path = opts.get_filename().to_path_buf();
            if let Some(parent) = opts.get_filename().parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        connect_err(sqlx::Error::Io(std::io::Error::new(
                            e.kind(),
                            format!("cannot create {}: {e}", parent.display()),
                        )))
                    })?;
                }
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            let mut store = Self::from_db(Db::Sqlite(pool), Dialect::Sqlite, url);
            store.sqlite_path = Some(path);
            Ok(store)
        } else {
            Err(StoreError::Invalid(format!(
                "unsupported database URL {}: use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(url)
            )))
        }
    }

    /// Connects, retrying with exponential backoff (0.5 s doubling to 8 s) for up to
    /// `patience`; each failed attempt is logged with the (redacted) URL.
    pub async fn connect_with_retry(url: &str, patience: Duration) -> Result<Store> {
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            let delay =
                sluice_core::backoff(attempt, Duration::from_millis(500), Duration::from_secs(8));
            match Self::connect(url).await {
                Ok(store) => return Ok(store),
                Err(err @ StoreError::Invalid(_)) => return Err(err),
                Err(err) => {
                    if started.elapsed() + delay > patience {
                        return Err(err);
                    }
                    tracing::warn!(attempt, "{err}; retrying in {:.1}s", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    fn from_db(db: Db, dialect: Dialect, url: &str) -> Store {
        Store {
            db,
            dialect,
            url: url.to_string(),
            sqlite_path: None,
            versions: Arc::default(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL this store was opened with, password redacted.
    pub fn url(&self) -> String {
        redact_url(&self.url)
    }

    /// Applies pending migrations (idempotent; safe from several processes at once:
    /// PostgreSQL migrations take an advisory lock, SQLite ones a lock file beside the
    /// database, since sqlx's SQLite migrator does not lock).
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => {
                let lock = match &self.sqlite_path {
                    Some(path) => Some(lock_file(path.with_extension("migrate.lock")).await?),
                    None => None,
                };
                let result = SQLITE_MIGRATIONS.run(pool).await;
                drop(lock);
                result?
            }
            Db::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(&self.db, pool => pool.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }
}
