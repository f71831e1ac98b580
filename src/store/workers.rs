//! Workers and leases: which process runs which job, until when. A worker claims the oldest
//! queued job it can run (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write transaction on
//! SQLite) together with a lease it renews while it runs; a job whose lease ran out goes back
//! to the queue (another worker resumes it from its last checkpoint). Every lease is kept in
//! `leases`, so who ran what when can be audited.

use serde::Serialize;
use sqlx::FromRow;

use super::jobs::JobRow;
use super::{Engine, Pool, StoreError, begin_immediate, commit, engine, now, rollback};

/// Unix milliseconds of this process's clock (lease times; hosts keep clocks in sync).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One row of `workers`: one per worker process ever started.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub name: String,
    pub device: String,
    pub device_kind: String,
    pub host: String,
    pub pid: i64,
    pub started_at: String,
    pub heartbeat_at: String,
    pub heartbeat_ms: i64,
    pub current_job: Option<String>,
    pub stopped_at: Option<String>,
}

/// One row of `leases`.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct LeaseRow {
    pub id: i64,
    pub job_id: String,
    pub worker_id: String,
    pub worker_name: String,
    pub attempt: i64,
    pub acquired_ms: i64,
    pub renewed_ms: i64,
    pub ended_ms: Option<i64>,
    pub outcome: Option<String>,
}

/// Who takes a lease.
#[derive(Debug, Clone)]
pub struct Lessee {
    /// This process's worker id (a UUID per start).
    pub id: String,
    pub name: String,
    /// `cpu` or `cuda`: jobs requiring another kind are left to other workers.
    pub device_kind: String,
}

/// Records a worker process at its start.
pub async fn register(
    pool: &Pool,
    w: &Lessee,
    device: &str,
    host: &str,
    pid: i64,
) -> Result<(), StoreError> {
    let t = now();
    sqlx::query(
        "INSERT INTO workers (id, name, device, device_kind, host, pid, started_at, heartbeat_at, heartbeat_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(&w.id)
    .bind(&w.name)
    .bind(device)
    .bind(&w.device_kind)
    .bind(host)
    .bind(pid)
    .bind(&t)
    .bind(now_ms())
    .execute(pool)
    .await?;
    Ok(())
}

/// A worker's heartbeat: alive, running `current_job` (or idle).
pub async fn heartbeat(
    pool: &Pool,
    worker_id: &str,
    current_job: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE workers SET heartbeat_at = $1, heartbeat_ms = $2, current_job = $3, stopped_at = NULL WHERE id = $4",
    )
    .bind(now())
    .bind(now_ms())
    .bind(current_job)
    .bind(worker_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A worker that stopped cleanly.
pub async fn stopped(pool: &Pool, worker_id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE workers SET stopped_at = $1, current_job = NULL WHERE id = $2")
        .bind(now())
        .bind(worker_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Workers whose last heartbeat is at or after `since_ms`, newest heartbeat first.
pub async fn list(pool: &Pool, since_ms: i64) -> Result<Vec<WorkerRow>, StoreError> {
    Ok(sqlx::query_as::<_, WorkerRow>(
        "SELECT * FROM workers WHERE heartbeat_ms >= $1 ORDER BY heartbeat_ms DESC, name",
    )
    .bind(since_ms)
    .fetch_all(pool)
    .await?)
}

/// Every lease of a job, oldest first.
pub async fn leases(pool: &Pool, job_id: &str) -> Result<Vec<LeaseRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, LeaseRow>("SELECT * FROM leases WHERE job_id = $1 ORDER BY id")
            .bind(job_id)
            .fetch_all(pool)
            .await?,
    )
}

/// Claims the oldest queued job `w` can run and leases it for `ttl_ms`.
pub async fn claim(pool: &Pool, w: &Lessee, ttl_ms: i64) -> Result<Option<JobRow>, StoreError> {
    let (mut conn, pick) = match engine(pool) {
        Engine::Postgres => {
            let mut c = pool.acquire().await?;
            sqlx::query("BEGIN").execute(&mut *c).await?;
            (
                c,
                "SELECT seq FROM jobs WHERE status = 'queued' AND (requires_device IS NULL OR requires_device = $1)
                 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
        }
        Engine::Sqlite => (
            begin_immediate(pool).await?,
            "SELECT seq FROM jobs WHERE status = 'queued' AND (requires_device IS NULL OR requires_device = $1)
             ORDER BY seq LIMIT 1",
        ),
    };
    let seq: Option<(i64,)> = match sqlx::query_as(pick)
        .bind(&w.device_kind)
        .fetch_optional(&mut *conn)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = rollback(conn).await;
            return Err(e.into());
        }
    };
    let Some((seq,)) = seq else {
        rollback(conn).await?;
        return Ok(None);
    };
    let (t, ms) = (now(), now_ms());
    let row = sqlx::query_as::<_, JobRow>(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, $1), updated_at = $1,
           lease_owner = $2, lease_expires_ms = $3
         WHERE seq = $4 AND status = 'queued' RETURNING *",
    )
    .bind(&t)
    .bind(&w.id)
    .bind(ms + ttl_ms)
    .bind(seq)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO leases (job_id, worker_id, worker_name, attempt, acquired_ms, renewed_ms) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&row.id)
    .bind(&w.id)
    .bind(&w.name)
    .bind(row.attempts)
    .bind(ms)
    .execute(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(Some(row))
}

/// Extends `worker_id`'s lease on a running job by `ttl_ms`; `false` when it no longer holds
/// it (expired and taken back, or the job ended).
pub async fn renew(
    pool: &Pool,
    job_id: &str,
    worker_id: &str,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let ms = now_ms();
    let held = sqlx::query(
        "UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
    )
    .bind(ms + ttl_ms)
    .bind(job_id)
    .bind(worker_id)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if held {
        sqlx::query(
            "UPDATE leases SET renewed_ms = $1 WHERE job_id = $2 AND worker_id = $3 AND ended_ms IS NULL",
        )
        .bind(ms)
        .bind(job_id)
        .bind(worker_id)
        .execute(pool)
        .await?;
    }
    Ok(held)
}

/// Closes a worker's open lease on a job with `outcome`.
pub async fn end_lease(
    conn: &mut sqlx::AnyConnection,
    job_id: &str,
    worker_id: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE leases SET ended_ms = $1, outcome = $2 WHERE job_id = $3 AND worker_id = $4 AND ended_ms IS NULL",
    )
    .bind(now_ms())
    .bind(outcome)
    .bind(job_id)
    .bind(worker_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Running jobs whose lease ran out (or was never taken: rows from before leases), and, with
/// `own`, those leased by an earlier process of the worker named `own.0` (this process is
/// `own.1`: the earlier one is dead, since names are unique), go back to the queue to resume
/// from their last checkpoint, each counted as a crash; at `max_crashes` they are marked
/// `interrupted` instead (data kept). Returns (requeued, gave up).
pub async fn sweep(
    pool: &Pool,
    max_crashes: i64,
    own: Option<(&str, &str)>,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let (t, ms) = (now(), now_ms());
    let (own_name, own_id) = own.unzip();
    let mut conn = begin_immediate(pool).await?;
    let victims: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, lease_owner, CASE WHEN lease_owner IN (SELECT id FROM workers WHERE name = $2 AND id <> $3) THEN 1 ELSE 0 END
         FROM jobs WHERE status = 'running'
           AND (lease_expires_ms IS NULL OR lease_expires_ms < $1
                OR lease_owner IN (SELECT id FROM workers WHERE name = $2 AND id <> $3))
         ORDER BY seq",
    )
    .bind(ms)
    .bind(own_name)
    .bind(own_id)
    .fetch_all(&mut *conn)
    .await?;
    let (mut requeued, mut gave_up) = (Vec::new(), Vec::new());
    for (id, owner, reclaimed) in victims {
        let outcome = if reclaimed == 1 {
            "reclaimed"
        } else {
            "expired"
        };
        if let Some(owner) = &owner {
            end_lease(&mut conn, &id, owner, outcome).await?;
        }
        let status: Option<(String,)> = sqlx::query_as(
            "UPDATE jobs SET crashes = crashes + 1, lease_owner = NULL, lease_expires_ms = NULL, updated_at = $1,
               status = CASE WHEN crashes + 1 >= $2 THEN 'interrupted' ELSE 'queued' END,
               error = CASE WHEN crashes + 1 >= $2 THEN 'interrupted: its worker died while running it ' || (crashes + 1) || ' times' ELSE error END,
               finished_at = CASE WHEN crashes + 1 >= $2 THEN $1 ELSE finished_at END
             WHERE id = $3 AND status = 'running' AND lease_owner IS NOT DISTINCT FROM $4 RETURNING status",
        )
        .bind(&t)
        .bind(max_crashes)
        .bind(&id)
        .bind(&owner)
        .fetch_optional(&mut *conn)
        .await?;
        match status.as_ref().map(|s| s.0.as_str()) {
            Some("interrupted") => gave_up.push(id),
            Some(_) => requeued.push(id),
            None => {}
        }
    }
    commit(conn).await?;
    Ok((requeued, gave_up))
}
