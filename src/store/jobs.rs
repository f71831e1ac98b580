//! The `jobs` table, which is also the queue.

use super::Pool;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{StoreError, begin_immediate, commit, now, rollback};

/// A job's status (the `status` column and its CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Crashed too often; data kept.
    Interrupted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the status is final.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = JobStatus::ALL.iter().map(|v| v.as_str()).collect();
                format!("must be one of {}, got {s:?}", all.join(", "))
            })
    }
}

/// State of a job's Hub push (the `push_status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    None,
    Pending,
    Pushed,
    Failed,
}

super::text_enum!(JobStatus);
super::text_enum!(PushStatus);

/// One row of `jobs`.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct JobRow {
    pub seq: i64,
    pub id: String,
    pub status: JobStatus,
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Runs started (a resumed job counts each start).
    pub attempts: i64,
    pub cancel_requested: i64,
    pub error: Option<String>,
    pub progress: Option<String>,
    pub device: Option<String>,
    pub output_dir: String,
    pub results_csv: Option<String>,
    pub best_epoch: Option<i64>,
    pub best_checkpoint: Option<String>,
    pub best_model_dir: Option<String>,
    pub improvement_f1: Option<f64>,
    pub csv_row: Option<String>,
    pub push_status: PushStatus,
    pub push_error: Option<String>,
    pub push_url: Option<String>,
    /// Times a process died while running it (graceful restarts not counted).
    pub crashes: i64,
    /// The study this job is a trial of, its index there and its searched parameters (JSON).
    pub study_id: Option<String>,
    pub trial: Option<i64>,
    pub params: Option<String>,
    /// Stopped early by the study's pruner.
    pub pruned: i64,
}

/// The device kind a spec requires (its `device` field), for the claim's filter.
pub fn required_device(spec: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(spec)
        .ok()?
        .get("device")?
        .as_str()
        .map(str::to_string)
}

/// Entries waiting in the queue: queued jobs outside studies, plus studies not yet ended (a
/// study counts once, whatever its number of trials).
pub async fn queue_entries(conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND study_id IS NULL)
              + (SELECT COUNT(*) FROM studies WHERE status IN ('queued', 'running'))",
    )
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Inserts a queued job unless `max_queued` entries are already waiting.
pub async fn insert(
    pool: &Pool,
    id: &str,
    spec: &str,
    output_dir: &str,
    results_csv: Option<&str>,
    max_queued: usize,
) -> Result<JobRow, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let queued = queue_entries(&mut conn).await?;
    if queued as usize >= max_queued {
        rollback(conn).await?;
        return Err(StoreError::QueueFull(queued as usize));
    }
    let t = now();
    let row = sqlx::query_as::<_, JobRow>(
        "INSERT INTO jobs (id, status, spec, created_at, updated_at, output_dir, results_csv, requires_device) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(id)
    .bind(spec)
    .bind(&t)
    .bind(&t)
    .bind(output_dir)
    .bind(results_csv)
    .bind(required_device(spec))
    .fetch_one(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(row)
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<JobRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Newest first; `cursor` is the `seq` of the last job of the previous page.
pub async fn list(
    pool: &Pool,
    status: Option<JobStatus>,
    study_id: Option<&str>,
    limit: i64,
    cursor: Option<i64>,
) -> Result<Vec<JobRow>, StoreError> {
    Ok(sqlx::query_as::<_, JobRow>(
        "SELECT * FROM jobs WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR seq < $2) AND ($3 IS NULL OR study_id = $3)
         ORDER BY seq DESC LIMIT $4",
    )
    .bind(status)
    .bind(cursor)
    .bind(study_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Marks a trial as stopped by its study's pruner.
pub async fn set_pruned(pool: &Pool, id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET pruned = 1, updated_at = $1 WHERE id = $2")
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Finished jobs, oldest first (the comparison CSV).
pub async fn list_finished(pool: &Pool) -> Result<Vec<JobRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE csv_row IS NOT NULL ORDER BY seq")
            .fetch_all(pool)
            .await?,
    )
}

pub async fn set_progress(pool: &Pool, id: &str, progress: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET progress = $1, updated_at = $2 WHERE id = $3")
        .bind(progress)
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_device(pool: &Pool, id: &str, device: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET device = $1, updated_at = $2 WHERE id = $3")
        .bind(device)
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What a finished run leaves on the row.
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: JobStatus,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    pub best_checkpoint: Option<String>,
    pub best_model_dir: Option<String>,
    pub improvement_f1: Option<f64>,
    pub csv_row: Option<String>,
}

/// Marks a running job finished, if `owner` (a worker id) still holds its lease; `false` when
/// it does not (the job was taken back: nothing is changed).
pub async fn finish(pool: &Pool, id: &str, owner: &str, f: &Finish) -> Result<bool, StoreError> {
    let t = now();
    let mut conn = begin_immediate(pool).await?;
    let done = sqlx::query(
        "UPDATE jobs SET status = $1, error = $2, best_epoch = $3, best_checkpoint = $4, best_model_dir = $5, improvement_f1 = $6,
         csv_row = COALESCE($7, csv_row), finished_at = $8, updated_at = $9, lease_owner = NULL, lease_expires_ms = NULL
         WHERE id = $10 AND lease_owner = $11 AND status = 'running'",
    )
    .bind(f.status)
    .bind(&f.error)
    .bind(f.best_epoch)
    .bind(&f.best_checkpoint)
    .bind(&f.best_model_dir)
    .bind(f.improvement_f1)
    .bind(&f.csv_row)
    .bind(&t)
    .bind(&t)
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if done {
        super::workers::end_lease(&mut conn, id, owner, "finished").await?;
    }
    commit(conn).await?;
    Ok(done)
}

/// Puts a running job whose lease `owner` holds back in the queue (graceful shutdown: it
/// resumes at the next start, on any worker).
pub async fn requeue(pool: &Pool, id: &str, owner: &str) -> Result<bool, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let done = sqlx::query(
        "UPDATE jobs SET status = 'queued', updated_at = $1, lease_owner = NULL, lease_expires_ms = NULL
         WHERE id = $2 AND status = 'running' AND lease_owner = $3",
    )
    .bind(now())
    .bind(id)
    .bind(owner)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if done {
        super::workers::end_lease(&mut conn, id, owner, "requeued").await?;
    }
    commit(conn).await?;
    Ok(done)
}

/// Result of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued: cancelled now.
    Cancelled,
    /// It is running: the worker stops it within one step.
    Requested,
}

/// Cancels a queued job at once, flags a running one; a finished job is a conflict.
pub async fn request_cancel(pool: &Pool, id: &str) -> Result<Option<Cancel>, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let row: Option<(JobStatus,)> = sqlx::query_as("SELECT status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let t = now();
    let out = match row.map(|r| r.0) {
        None => None,
        Some(JobStatus::Queued) => {
            // `status = 'queued'`: on PostgreSQL a worker may claim it meanwhile (claims do not
            // take this transaction's lock); then the running branch's flag below applies.
            sqlx::query("UPDATE jobs SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                 cancel_requested = 1,
                 error = CASE WHEN status = 'queued' THEN 'cancelled before start' ELSE error END,
                 finished_at = CASE WHEN status = 'queued' THEN $1 ELSE finished_at END, updated_at = $1 WHERE id = $2")
                .bind(&t)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Some(Cancel::Cancelled)
        }
        Some(JobStatus::Running) => {
            sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2")
                .bind(&t)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Some(Cancel::Requested)
        }
        Some(other) => {
            rollback(conn).await?;
            return Err(StoreError::Conflict(format!("job is {other}")));
        }
    };
    commit(conn).await?;
    Ok(out)
}

/// Deletes a finished job (and, by cascade, its epochs, evaluations and events).
pub async fn delete(pool: &Pool, id: &str) -> Result<Option<JobRow>, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let row = sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match &row {
        Some(r) if r.study_id.is_some() => {
            let s = format!(
                "job is a trial of study {}: delete the study",
                r.study_id.as_deref().unwrap_or_default()
            );
            rollback(conn).await?;
            return Err(StoreError::Conflict(s));
        }
        Some(r) if !r.status.is_finished() => {
            let s = format!("job is {}", r.status);
            rollback(conn).await?;
            return Err(StoreError::Conflict(s));
        }
        Some(_) => {
            sqlx::query("DELETE FROM jobs WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        None => {}
    }
    commit(conn).await?;
    Ok(row)
}

/// Jobs per status (every status present, 0 when none).
pub async fn counts(pool: &Pool) -> Result<Vec<(JobStatus, i64)>, StoreError> {
    let rows: Vec<(JobStatus, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(JobStatus::ALL
        .iter()
        .map(|s| {
            (
                *s,
                rows.iter().find(|r| r.0 == *s).map(|r| r.1).unwrap_or(0),
            )
        })
        .collect())
}

pub async fn set_push(
    pool: &Pool,
    id: &str,
    status: PushStatus,
    error: Option<&str>,
    url: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET push_status = $1, push_error = $2, push_url = COALESCE($3, push_url), updated_at = $4 WHERE id = $5")
        .bind(status)
        .bind(error)
        .bind(url)
        .bind(now())
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether a cancel was requested for a running job.
pub async fn cancel_requested(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT cancel_requested FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(r.is_some_and(|r| r.0 != 0))
}
