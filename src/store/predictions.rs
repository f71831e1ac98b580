//! `predictions`: bulk prediction runs (durable: a run left unfinished by a dead process
//! starts again at the next start).

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use super::{StoreError, now};

/// One bulk prediction run.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct PredictionRow {
    pub seq: i64,
    pub id: String,
    pub model: String,
    pub request: String,
    pub format: String,
    pub status: String,
    pub done: i64,
    pub total: i64,
    pub model_version: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// Most runs not yet finished; more are refused (429).
pub const MAX_UNFINISHED: i64 = 16;

pub async fn insert(
    pool: &Pool,
    id: &str,
    model: &str,
    request: &str,
    format: &str,
) -> Result<PredictionRow, StoreError> {
    let mut conn = super::begin_immediate(pool).await?;
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM predictions WHERE status IN ('queued', 'running')")
            .fetch_one(&mut *conn)
            .await?;
    if n >= MAX_UNFINISHED {
        super::rollback(conn).await?;
        return Err(StoreError::QueueFull(n as usize));
    }
    let t = now();
    let row = sqlx::query_as::<_, PredictionRow>(
        "INSERT INTO predictions (id, model, request, format, status, created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', $5, $6) RETURNING *",
    )
    .bind(id)
    .bind(model)
    .bind(request)
    .bind(format)
    .bind(&t)
    .bind(&t)
    .fetch_one(&mut *conn)
    .await?;
    super::commit(conn).await?;
    Ok(row)
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<PredictionRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, PredictionRow>("SELECT * FROM predictions WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

pub async fn list(pool: &Pool) -> Result<Vec<PredictionRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, PredictionRow>(
            "SELECT * FROM predictions ORDER BY seq DESC LIMIT 1000",
        )
        .fetch_all(pool)
        .await?,
    )
}

/// Runs to (re)start: queued, and running ones a dead process left.
pub async fn unfinished(pool: &Pool) -> Result<Vec<PredictionRow>, StoreError> {
    Ok(sqlx::query_as::<_, PredictionRow>(
        "SELECT * FROM predictions WHERE status IN ('queued', 'running') ORDER BY seq",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn start(pool: &Pool, id: &str, total: i64, version: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE predictions SET status = 'running', done = 0, total = $1, model_version = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(total)
    .bind(version)
    .bind(now())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn progress(pool: &Pool, id: &str, done: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE predictions SET done = $1, updated_at = $2 WHERE id = $3")
        .bind(done)
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends a run: `succeeded` with its output file, or `failed` with the error.
pub async fn finish(
    pool: &Pool,
    id: &str,
    status: &str,
    output: Option<&str>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let t = now();
    sqlx::query(
        "UPDATE predictions SET status = $1, output = $2, error = $3, updated_at = $4, finished_at = $5 WHERE id = $6",
    )
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(&t)
    .bind(&t)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}
