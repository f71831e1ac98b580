//! `studies` and `study_events`, and the study views of `jobs`, `epochs` and `evaluations`.

use super::Pool;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::jobs::JobRow;
use super::results::{EpochRow, EvaluationRow};
use super::{StoreError, begin_immediate, commit, now, rollback};

/// A study's status (the `status` column and its CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyStatus {
    /// No trial started yet.
    Queued,
    Running,
    /// Every trial ended and at least one succeeded.
    Succeeded,
    /// Every trial ended and none succeeded.
    Failed,
    Cancelled,
}

impl StudyStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, StudyStatus::Queued | StudyStatus::Running)
    }
}

super::text_enum!(StudyStatus);

/// One row of `studies`.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct StudyRow {
    pub seq: i64,
    pub id: String,
    pub name: Option<String>,
    pub spec: String,
    pub status: StudyStatus,
    pub trials: i64,
    pub cancel_requested: i64,
    pub best_job_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// A trial to queue with its study.
#[derive(Debug, Clone)]
pub struct NewTrial {
    pub job_id: String,
    pub spec: String,
    pub output_dir: String,
    pub params: String,
}

/// Inserts a study and its trials as queued jobs, in one transaction, unless `max_queued`
/// queue entries are already waiting (see [`super::jobs::queue_entries`]).
pub async fn insert(
    pool: &Pool,
    id: &str,
    name: Option<&str>,
    spec: &str,
    trials: &[NewTrial],
    max_queued: usize,
) -> Result<StudyRow, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let queued = super::jobs::queue_entries(&mut conn).await?;
    if queued as usize >= max_queued {
        rollback(conn).await?;
        return Err(StoreError::QueueFull(queued as usize));
    }
    let t = now();
    let row = sqlx::query_as::<_, StudyRow>(
        "INSERT INTO studies (id, name, spec, status, trials, created_at, updated_at) VALUES ($1, $2, $3, 'queued', $4, $5, $6) RETURNING *",
    )
    .bind(id)
    .bind(name)
    .bind(spec)
    .bind(trials.len() as i64)
    .bind(&t)
    .bind(&t)
    .fetch_one(&mut *conn)
    .await?;
    for (i, trial) in trials.iter().enumerate() {
        sqlx::query(
            "INSERT INTO jobs (id, status, spec, created_at, updated_at, output_dir, study_id, trial, params, requires_device)
             VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&trial.job_id)
        .bind(&trial.spec)
        .bind(&t)
        .bind(&t)
        .bind(&trial.output_dir)
        .bind(id)
        .bind(i as i64)
        .bind(&trial.params)
        .bind(super::jobs::required_device(&trial.spec))
        .execute(&mut *conn)
        .await?;
    }
    commit(conn).await?;
    Ok(row)
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<StudyRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, StudyRow>("SELECT * FROM studies WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Newest first; `cursor` is the `seq` of the last study of the previous page.
pub async fn list(
    pool: &Pool,
    limit: i64,
    cursor: Option<i64>,
) -> Result<Vec<StudyRow>, StoreError> {
    Ok(sqlx::query_as::<_, StudyRow>(
        "SELECT * FROM studies WHERE ($1 IS NULL OR seq < $1) ORDER BY seq DESC LIMIT $2",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A study's trials in trial order.
pub async fn trials(pool: &Pool, id: &str) -> Result<Vec<JobRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE study_id = $1 ORDER BY trial")
            .bind(id)
            .fetch_all(pool)
            .await?,
    )
}

/// Every epoch of every trial of a study.
pub async fn epochs(pool: &Pool, id: &str) -> Result<Vec<EpochRow>, StoreError> {
    Ok(sqlx::query_as::<_, EpochRow>(
        "SELECT e.* FROM epochs e JOIN jobs j ON j.id = e.job_id WHERE j.study_id = $1 ORDER BY j.trial, e.epoch",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Every stored test evaluation of a study's trials.
pub async fn evaluations(pool: &Pool, id: &str) -> Result<Vec<EvaluationRow>, StoreError> {
    Ok(sqlx::query_as::<_, EvaluationRow>(
        "SELECT v.* FROM evaluations v JOIN jobs j ON j.id = v.job_id WHERE j.study_id = $1 ORDER BY j.trial, v.kind",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Epoch `epoch` (validation rows) of the study's other trials, with their jobs, for pruning.
pub async fn peer_epochs(
    pool: &Pool,
    study_id: &str,
    job_id: &str,
    epoch: i64,
) -> Result<Vec<(JobRow, EpochRow)>, StoreError> {
    let jobs = trials(pool, study_id).await?;
    let rows = sqlx::query_as::<_, EpochRow>(
        "SELECT e.* FROM epochs e JOIN jobs j ON j.id = e.job_id WHERE j.study_id = $1 AND j.id != $2 AND e.epoch = $3",
    )
    .bind(study_id)
    .bind(job_id)
    .bind(epoch)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|e| {
            jobs.iter()
                .find(|j| j.id == e.job_id)
                .map(|j| (j.clone(), e))
        })
        .collect())
}

pub async fn set_status(
    pool: &Pool,
    id: &str,
    status: StudyStatus,
    best_job_id: Option<&str>,
) -> Result<(), StoreError> {
    let t = now();
    let finished = status.is_finished().then_some(t.clone());
    sqlx::query(
        "UPDATE studies SET status = $1, best_job_id = COALESCE($2, best_job_id), finished_at = COALESCE($3, finished_at), updated_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(best_job_id)
    .bind(finished)
    .bind(&t)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a queued study running (its first trial started); returns whether it changed.
pub async fn mark_running(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE studies SET status = 'running', updated_at = $1 WHERE id = $2 AND status = 'queued'",
    )
    .bind(now())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// What a study cancel did to its trials.
#[derive(Debug, Default)]
pub struct CancelledTrials {
    /// Queued trials cancelled at once.
    pub cancelled: Vec<String>,
    /// Running trials asked to stop.
    pub requested: Vec<String>,
}

/// Flags the study and cancels its queued trials, flags its running ones; `None` if there is
/// no such study, a conflict if it has ended.
pub async fn request_cancel(pool: &Pool, id: &str) -> Result<Option<CancelledTrials>, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let row: Option<(StudyStatus,)> = sqlx::query_as("SELECT status FROM studies WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => {
            rollback(conn).await?;
            return Ok(None);
        }
        Some((s,)) if s.is_finished() => {
            rollback(conn).await?;
            return Err(StoreError::Conflict(format!(
                "study is {}: it has ended",
                serde_json::to_value(s)?.as_str().unwrap_or_default()
            )));
        }
        Some(_) => {}
    }
    let t = now();
    sqlx::query("UPDATE studies SET cancel_requested = 1, updated_at = $1 WHERE id = $2")
        .bind(&t)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let cancelled: Vec<(String,)> = sqlx::query_as(
        "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, error = 'cancelled before start (study cancelled)', finished_at = $1, updated_at = $1
         WHERE study_id = $2 AND status = 'queued' RETURNING id",
    )
    .bind(&t)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let requested: Vec<(String,)> = sqlx::query_as(
        "UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE study_id = $2 AND status = 'running' RETURNING id",
    )
    .bind(&t)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(Some(CancelledTrials {
        cancelled: cancelled.into_iter().map(|r| r.0).collect(),
        requested: requested.into_iter().map(|r| r.0).collect(),
    }))
}

/// Deletes an ended study with its trials (and, by cascade, their epochs, evaluations and
/// events); returns the trials' output directories. A study still going is a conflict.
pub async fn delete(pool: &Pool, id: &str) -> Result<Option<Vec<String>>, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let row: Option<(StudyStatus,)> = sqlx::query_as("SELECT status FROM studies WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let (unfinished,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM jobs WHERE study_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    match row {
        None => {
            rollback(conn).await?;
            return Ok(None);
        }
        Some((s,)) if !s.is_finished() || unfinished > 0 => {
            rollback(conn).await?;
            return Err(StoreError::Conflict(format!(
                "study is {}: cancel it first or wait for its trials",
                serde_json::to_value(s)?.as_str().unwrap_or_default()
            )));
        }
        Some(_) => {}
    }
    let dirs: Vec<(String,)> = sqlx::query_as("SELECT output_dir FROM jobs WHERE study_id = $1")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM jobs WHERE study_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM studies WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    commit(conn).await?;
    Ok(Some(dirs.into_iter().map(|r| r.0).collect()))
}

/// Studies not marked ended although none of their trials is queued or running (the process
/// died between a trial's end and the study's).
pub async fn unsettled(pool: &Pool) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT s.id FROM studies s WHERE s.status IN ('queued', 'running')
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_id = s.id AND j.status IN ('queued', 'running'))",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// One stored study event.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct StudyEventRow {
    pub id: i64,
    pub study_id: String,
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

pub async fn insert_event(
    pool: &Pool,
    study_id: &str,
    kind: &str,
    data: &str,
) -> Result<StudyEventRow, StoreError> {
    Ok(sqlx::query_as::<_, StudyEventRow>(
        "INSERT INTO study_events (study_id, kind, data, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(study_id)
    .bind(kind)
    .bind(data)
    .bind(now())
    .fetch_one(pool)
    .await?)
}

/// Events of a study after `after` (exclusive), oldest first.
pub async fn events_since(
    pool: &Pool,
    study_id: &str,
    after: i64,
) -> Result<Vec<StudyEventRow>, StoreError> {
    Ok(sqlx::query_as::<_, StudyEventRow>(
        "SELECT * FROM study_events WHERE study_id = $1 AND id > $2 ORDER BY id",
    )
    .bind(study_id)
    .bind(after)
    .fetch_all(pool)
    .await?)
}
