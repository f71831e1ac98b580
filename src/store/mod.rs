//! The only SQL: one pool over SQLite (WAL, busy timeout, foreign keys) or PostgreSQL, the
//! migrations of each engine embedded from `migrations/` and `migrations/postgres/`, one file
//! per table group — and the artifact store (`artifacts`), the other place state is kept.

pub mod artifacts;
pub mod datasets;
pub mod deployments;
pub mod events;
pub mod jobs;
pub mod predictions;
pub mod projects;
pub mod results;
pub mod studies;
pub mod workers;

use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

/// The pool every store function takes: SQLite or PostgreSQL behind sqlx's `Any` driver. Every
/// query is written once, in the subset both engines run (`$1` placeholders, `ON CONFLICT`,
/// `RETURNING`).
pub type Pool = sqlx::AnyPool;

/// `TEXT` columns holding a unit enum, written and read by its serde name (the same names the
/// CHECK constraints list).
macro_rules! text_enum {
    ($t:ty) => {
        impl sqlx::Type<sqlx::Any> for $t {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }
        impl<'q> sqlx::Encode<'q, sqlx::Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let name = match serde_json::to_value(self)? {
                    serde_json::Value::String(s) => s,
                    other => return Err(format!("not a unit variant: {other}").into()),
                };
                <String as sqlx::Encode<'q, sqlx::Any>>::encode(name, buf)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $t {
            fn decode(v: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <String as sqlx::Decode<'r, sqlx::Any>>::decode(v)?;
                Ok(serde_json::from_value(serde_json::Value::String(s))?)
            }
        }
    };
}
pub(crate) use text_enum;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// The engine of a `sqlite:` or `postgres(ql)://` URL.
    pub fn of(url: &str) -> Result<Engine, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err(StoreError::Conflict(format!(
                "database URL must start with sqlite: or postgres://, got {:?}",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }
}

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

/// Opens (creating if missing) the database and applies the migrations of its engine
/// (`migrations/` for SQLite, `migrations/postgres/` for PostgreSQL). A PostgreSQL server that
/// does not answer yet is retried with exponential backoff (1 s doubling to 15 s, each attempt
/// logged) for up to `wait`; then the last error is returned.
pub async fn connect(url: &str, wait: Duration) -> Result<Pool, StoreError> {
    sqlx::any::install_default_drivers();
    match Engine::of(url)? {
        Engine::Sqlite => {
            let url = if url.contains("mode=") {
                url.to_string()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            sqlx::migrate!("./migrations").run(&pool).await?;
            Ok(pool)
        }
        Engine::Postgres => {
            let started = Instant::now();
            let mut delay = Duration::from_secs(1);
            // One plain connection first: it fails at once when nothing listens (the pool
            // would retry silently until its acquire timeout).
            loop {
                let tried = tokio::time::timeout(
                    Duration::from_secs(10),
                    <sqlx::AnyConnection as sqlx::Connection>::connect(url),
                )
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut));
                match tried {
                    Ok(c) => {
                        let _ = sqlx::Connection::close(c).await;
                        break;
                    }
                    Err(e) if retryable(&e) && started.elapsed() + delay <= wait => {
                        tracing::warn!(error = %e, retry_in_s = delay.as_secs(),
                            "database not reachable; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(15));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Ok(pool)
        }
    }
}

/// `url` without its password (for logs and errors).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

/// Errors worth retrying: the server is not there (yet), not a wrong password or database.
pub fn retryable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// The engine behind a pool.
pub fn engine(pool: &Pool) -> Engine {
    if pool
        .connect_options()
        .database_url
        .scheme()
        .starts_with("postgres")
    {
        Engine::Postgres
    } else {
        Engine::Sqlite
    }
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

/// A write transaction that takes the write lock up front, so read-then-write is atomic:
/// `BEGIN IMMEDIATE` on SQLite; on PostgreSQL `BEGIN` plus a transaction-scoped advisory lock
/// that every such transaction takes (the same one-writer-at-a-time semantics across all
/// processes; the queue's claim does not take it, it uses `FOR UPDATE SKIP LOCKED`).
pub async fn begin_immediate(
    pool: &Pool,
) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
    let mut conn = pool.acquire().await?;
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("BEGIN").execute(&mut *conn).await?;
        if let Err(e) = sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(7262388165)) AS l")
            .execute(&mut *conn)
            .await
        {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e.into());
        }
    } else {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    }
    Ok(conn)
}

/// Commits a transaction opened by [`begin_immediate`].
pub async fn commit(mut conn: sqlx::pool::PoolConnection<sqlx::Any>) -> Result<(), StoreError> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Rolls back a transaction opened by [`begin_immediate`].
pub async fn rollback(mut conn: sqlx::pool::PoolConnection<sqlx::Any>) -> Result<(), StoreError> {
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    Ok(())
}
