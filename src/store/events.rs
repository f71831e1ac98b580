//! `events`: the job's history, replayed to SSE listeners.

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use super::{StoreError, now};

/// One stored event.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub job_id: String,
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

/// Appends an event; returns its id.
pub async fn insert(
    pool: &Pool,
    job_id: &str,
    kind: &str,
    data: &str,
) -> Result<EventRow, StoreError> {
    Ok(sqlx::query_as::<_, EventRow>(
        "INSERT INTO events (job_id, kind, data, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(job_id)
    .bind(kind)
    .bind(data)
    .bind(now())
    .fetch_one(pool)
    .await?)
}

/// The kinds of event stored for a job.
pub async fn kinds(
    pool: &Pool,
    job_id: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT kind FROM events WHERE job_id = $1")
        .bind(job_id)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Events of a job after `after` (exclusive), oldest first.
pub async fn since(pool: &Pool, job_id: &str, after: i64) -> Result<Vec<EventRow>, StoreError> {
    Ok(sqlx::query_as::<_, EventRow>(
        "SELECT * FROM events WHERE job_id = $1 AND id > $2 ORDER BY id",
    )
    .bind(job_id)
    .bind(after)
    .fetch_all(pool)
    .await?)
}
