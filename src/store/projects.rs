//! `projects`, `annotations`, `dataset_versions` and `project_events`: the annotation loop.

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use super::jobs::JobRow;
use super::{StoreError, begin_immediate, commit, now, rollback};

/// One annotation project.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ProjectRow {
    pub id: String,
    pub source: String,
    pub labels: String,
    pub from_name: String,
    pub to_name: String,
    pub data_key: String,
    pub label_config: Option<String>,
    pub model_name: String,
    pub template: Option<String>,
    pub retrain_every: Option<i64>,
    pub changes_since_training: i64,
    pub training_job_id: Option<String>,
    pub retrain_pending: i64,
    pub last_decision: Option<String>,
    pub dropped_labels: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// What a setup, an import or the API says about a project.
#[derive(Debug, Clone, Default)]
pub struct ProjectInput {
    pub source: String,
    /// JSON array of label names.
    pub labels: String,
    pub from_name: String,
    pub to_name: String,
    pub data_key: String,
    pub label_config: Option<String>,
    /// `None`: keep the stored one (or `default` for a new project).
    pub model_name: Option<String>,
    /// `None`: keep; `Some(None)`: back to the default.
    pub template: Option<Option<String>>,
    pub retrain_every: Option<Option<i64>>,
}

/// Creates or updates a project; the settings not given keep their values.
pub async fn upsert(pool: &Pool, id: &str, p: &ProjectInput) -> Result<ProjectRow, StoreError> {
    let t = now();
    let mut conn = begin_immediate(pool).await?;
    let old = sqlx::query_as::<_, ProjectRow>("SELECT * FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let model = p
        .model_name
        .clone()
        .or_else(|| old.as_ref().map(|o| o.model_name.clone()))
        .unwrap_or_else(|| "default".into());
    let template = match &p.template {
        Some(t) => t.clone(),
        None => old.as_ref().and_then(|o| o.template.clone()),
    };
    let every = match p.retrain_every {
        Some(e) => e,
        None => old.as_ref().and_then(|o| o.retrain_every),
    };
    let row = sqlx::query_as::<_, ProjectRow>(
        "INSERT INTO projects (id, source, labels, from_name, to_name, data_key, label_config, model_name, template, retrain_every, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (id) DO UPDATE SET source = excluded.source, labels = excluded.labels,
           from_name = excluded.from_name, to_name = excluded.to_name, data_key = excluded.data_key,
           label_config = excluded.label_config, model_name = excluded.model_name,
           template = excluded.template, retrain_every = excluded.retrain_every,
           updated_at = excluded.updated_at
         RETURNING *",
    )
    .bind(id)
    .bind(&p.source)
    .bind(&p.labels)
    .bind(&p.from_name)
    .bind(&p.to_name)
    .bind(&p.data_key)
    .bind(&p.label_config)
    .bind(model)
    .bind(template)
    .bind(every)
    .bind(&t)
    .bind(&t)
    .fetch_one(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(row)
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<ProjectRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, ProjectRow>("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

pub async fn list(pool: &Pool) -> Result<Vec<ProjectRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, ProjectRow>(
            "SELECT * FROM projects ORDER BY created_at, id LIMIT 1000",
        )
        .fetch_all(pool)
        .await?,
    )
}

/// Deletes a project with its annotations, versions and events (not its jobs).
pub async fn delete(pool: &Pool, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected()
        > 0)
}

/// Counts predicted labels dropped because the project's config lacks them.
pub async fn add_dropped(pool: &Pool, id: &str, n: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE projects SET dropped_labels = dropped_labels + $1 WHERE id = $2")
        .bind(n)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// One task's latest annotation.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct AnnotationRow {
    pub project_id: String,
    pub task_id: String,
    pub annotation_id: Option<String>,
    pub text: String,
    pub words: String,
    pub tags: String,
    pub report: String,
    pub split: String,
    pub source_updated_at: Option<String>,
    pub deleted: i64,
    pub updated_at: String,
}

/// A converted annotation to store.
#[derive(Debug, Clone)]
pub struct NewAnnotation {
    pub task_id: String,
    pub annotation_id: Option<String>,
    pub text: String,
    pub words: String,
    pub tags: String,
    pub report: String,
    pub split: String,
    pub source_updated_at: Option<String>,
}

/// Stores annotations — per task the newest by the tool's `updated_at` when both copies have
/// one, else the last to arrive — and counts them as changes since the last training; returns
/// the count.
pub async fn upsert_annotations(
    pool: &Pool,
    project: &str,
    items: &[NewAnnotation],
) -> Result<i64, StoreError> {
    let t = now();
    let mut conn = begin_immediate(pool).await?;
    for a in items {
        sqlx::query(
            "INSERT INTO annotations (project_id, task_id, annotation_id, text, words, tags, report, split, source_updated_at, deleted, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10)
             ON CONFLICT (project_id, task_id) DO UPDATE SET annotation_id = excluded.annotation_id,
               text = excluded.text, words = excluded.words, tags = excluded.tags,
               report = excluded.report, split = excluded.split,
               source_updated_at = excluded.source_updated_at, deleted = 0,
               updated_at = excluded.updated_at
             WHERE excluded.source_updated_at IS NULL OR annotations.source_updated_at IS NULL
               OR excluded.source_updated_at >= annotations.source_updated_at",
        )
        .bind(project)
        .bind(&a.task_id)
        .bind(&a.annotation_id)
        .bind(&a.text)
        .bind(&a.words)
        .bind(&a.tags)
        .bind(&a.report)
        .bind(&a.split)
        .bind(&a.source_updated_at)
        .bind(&t)
        .execute(&mut *conn)
        .await?;
    }
    let n = bump_changes(&mut conn, project, items.len() as i64).await?;
    commit(conn).await?;
    Ok(n)
}

async fn bump_changes(
    conn: &mut sqlx::AnyConnection,
    project: &str,
    by: i64,
) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "UPDATE projects SET changes_since_training = changes_since_training + $1, updated_at = $2 WHERE id = $3 RETURNING changes_since_training",
    )
    .bind(by)
    .bind(now())
    .bind(project)
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// An annotation to delete: its task, its annotation id, or both.
pub type Deletion = (Option<String>, Option<String>);

/// Marks annotations deleted, each named by its task, its annotation id or both (both: only
/// if the annotation is still the task's; Label Studio's `ANNOTATIONS_DELETED` sends only
/// annotation ids); returns how many changed and the changes since training.
pub async fn delete_annotations(
    pool: &Pool,
    project: &str,
    items: &[Deletion],
) -> Result<(u64, i64), StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let mut changed = 0;
    for (task, ann) in items {
        if task.is_none() && ann.is_none() {
            continue;
        }
        changed += sqlx::query(
            "UPDATE annotations SET deleted = 1, updated_at = $1 WHERE project_id = $2 AND deleted = 0
               AND ($3 IS NULL OR task_id = $4)
               AND ($5 IS NULL OR annotation_id IS NULL OR annotation_id = $6)
               AND ($7 IS NOT NULL OR annotation_id IS NOT NULL)",
        )
        .bind(now())
        .bind(project)
        .bind(task)
        .bind(task)
        .bind(ann)
        .bind(ann)
        .bind(task)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    let n = bump_changes(&mut conn, project, changed as i64).await?;
    commit(conn).await?;
    Ok((changed, n))
}

/// Live annotations of a project, by task id.
pub async fn annotations(pool: &Pool, project: &str) -> Result<Vec<AnnotationRow>, StoreError> {
    Ok(sqlx::query_as::<_, AnnotationRow>(
        "SELECT * FROM annotations WHERE project_id = $1 AND deleted = 0 ORDER BY task_id",
    )
    .bind(project)
    .fetch_all(pool)
    .await?)
}

/// One immutable dataset version.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct VersionRow {
    pub project_id: String,
    pub version: i64,
    pub dir: String,
    pub stats: String,
    pub reason: String,
    pub created_at: String,
}

/// The next version number of a project.
pub async fn next_version(pool: &Pool, project: &str) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE project_id = $1",
    )
    .bind(project)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// Records version `version` (written to `dir` beforehand); a version number taken meanwhile
/// is a conflict.
pub async fn insert_version(
    pool: &Pool,
    project: &str,
    version: i64,
    dir: &str,
    stats: &str,
    reason: &str,
) -> Result<VersionRow, StoreError> {
    sqlx::query_as::<_, VersionRow>(
        "INSERT INTO dataset_versions (project_id, version, dir, stats, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(project)
    .bind(version)
    .bind(dir)
    .bind(stats)
    .bind(reason)
    .bind(now())
    .fetch_one(pool)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            StoreError::Conflict(format!("dataset version {version} of project {project} exists"))
        }
        e => e.into(),
    })
}

pub async fn versions(pool: &Pool, project: &str) -> Result<Vec<VersionRow>, StoreError> {
    Ok(sqlx::query_as::<_, VersionRow>(
        "SELECT * FROM dataset_versions WHERE project_id = $1 ORDER BY version DESC LIMIT 1000",
    )
    .bind(project)
    .fetch_all(pool)
    .await?)
}

pub async fn version(
    pool: &Pool,
    project: &str,
    version: i64,
) -> Result<Option<VersionRow>, StoreError> {
    Ok(sqlx::query_as::<_, VersionRow>(
        "SELECT * FROM dataset_versions WHERE project_id = $1 AND version = $2",
    )
    .bind(project)
    .bind(version)
    .fetch_optional(pool)
    .await?)
}

/// Outcome of asking for a retraining.
#[derive(Debug)]
pub enum Training {
    /// A job was queued.
    Queued(Box<JobRow>),
    /// This job is already queued or running: one more run is noted for after it.
    AlreadyQueued(String),
}

/// Queues a retraining job of `project` on dataset `version` unless one is queued or running
/// (then notes that another run is wanted after it), in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn queue_training(
    pool: &Pool,
    project: &str,
    version: i64,
    job_id: &str,
    spec: &str,
    output_dir: &str,
    max_queued: usize,
) -> Result<Training, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let current: Option<(Option<String>,)> =
        sqlx::query_as("SELECT training_job_id FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((current,)) = current else {
        rollback(conn).await?;
        return Err(StoreError::Conflict(format!(
            "project {project} does not exist"
        )));
    };
    if let Some(job) = current {
        let status: Option<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE id = $1")
            .bind(&job)
            .fetch_optional(&mut *conn)
            .await?;
        if matches!(
            status.as_ref().map(|s| s.0.as_str()),
            Some("queued" | "running")
        ) {
            sqlx::query("UPDATE projects SET retrain_pending = 1 WHERE id = $1")
                .bind(project)
                .execute(&mut *conn)
                .await?;
            commit(conn).await?;
            return Ok(Training::AlreadyQueued(job));
        }
    }
    let queued = super::jobs::queue_entries(&mut conn).await?;
    if queued as usize >= max_queued {
        rollback(conn).await?;
        return Err(StoreError::QueueFull(queued as usize));
    }
    let t = now();
    let row = sqlx::query_as::<_, JobRow>(
        "INSERT INTO jobs (id, status, spec, created_at, updated_at, output_dir, project_id, project_version, requires_device) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8) RETURNING *",
    )
    .bind(job_id)
    .bind(spec)
    .bind(&t)
    .bind(&t)
    .bind(output_dir)
    .bind(project)
    .bind(version)
    .bind(super::jobs::required_device(spec))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE projects SET training_job_id = $1, retrain_pending = 0, changes_since_training = 0, updated_at = $2 WHERE id = $3",
    )
    .bind(job_id)
    .bind(&t)
    .bind(project)
    .execute(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(Training::Queued(Box::new(row)))
}

/// The project and dataset version a job was queued for.
pub async fn job_project(pool: &Pool, job_id: &str) -> Result<Option<(String, i64)>, StoreError> {
    let row: Option<(Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT project_id, project_version FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(p, v)| Some((p?, v?))))
}

/// Records the decision on job `job_id` if it is still the project's training job; returns
/// whether another run was asked for meanwhile (and clears that wish), `None` when the job was
/// no longer the project's.
pub async fn settle_training(
    pool: &Pool,
    project: &str,
    job_id: &str,
    decision: &str,
) -> Result<Option<bool>, StoreError> {
    let mut conn = begin_immediate(pool).await?;
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT retrain_pending FROM projects WHERE id = $1 AND training_job_id = $2",
    )
    .bind(project)
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((pending,)) = row else {
        rollback(conn).await?;
        return Ok(None);
    };
    sqlx::query(
        "UPDATE projects SET training_job_id = NULL, retrain_pending = 0, last_decision = $1, updated_at = $2 WHERE id = $3",
    )
    .bind(decision)
    .bind(now())
    .bind(project)
    .execute(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(Some(pending != 0))
}

/// Projects whose training job has ended (settled at start when a process died first).
pub async fn unsettled(pool: &Pool) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT p.id, p.training_job_id FROM projects p JOIN jobs j ON j.id = p.training_job_id
         WHERE j.status NOT IN ('queued', 'running')",
    )
    .fetch_all(pool)
    .await?)
}

/// One stored project event.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ProjectEventRow {
    pub id: i64,
    pub project_id: String,
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

pub async fn insert_event(
    pool: &Pool,
    project: &str,
    kind: &str,
    data: &str,
) -> Result<ProjectEventRow, StoreError> {
    Ok(sqlx::query_as::<_, ProjectEventRow>(
        "INSERT INTO project_events (project_id, kind, data, created_at) VALUES ($1, $2, $3, $4) RETURNING *",
    )
    .bind(project)
    .bind(kind)
    .bind(data)
    .bind(now())
    .fetch_one(pool)
    .await?)
}

/// The newest `limit` events of a project, oldest first.
pub async fn recent_events(
    pool: &Pool,
    project: &str,
    limit: i64,
) -> Result<Vec<ProjectEventRow>, StoreError> {
    let mut rows = sqlx::query_as::<_, ProjectEventRow>(
        "SELECT * FROM project_events WHERE project_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(project)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}
