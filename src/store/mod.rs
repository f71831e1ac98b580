//! The only SQL: an SQLite pool (WAL, busy timeout, foreign keys), migrations embedded from
//! `migrations/`, and one file per table group.

pub mod datasets;
pub mod deployments;
pub mod events;
pub mod jobs;
pub mod predictions;
pub mod projects;
pub mod results;
pub mod studies;

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    /// The row's state forbids the change; the message says which and why.
    #[error("{0}")]
    Conflict(String),
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Opens (creating if missing) the database and applies the migrations.
pub async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Current time as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .expect("formatting a UTC timestamp: this is a bug")
}

/// `BEGIN IMMEDIATE` transaction: takes the write lock up front, so read-then-write is atomic.
pub async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(conn)
}

/// Commits a transaction opened by [`begin_immediate`].
pub async fn commit(mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> Result<(), StoreError> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Rolls back a transaction opened by [`begin_immediate`].
pub async fn rollback(
    mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
) -> Result<(), StoreError> {
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    Ok(())
}
