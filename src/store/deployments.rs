//! `deployments`: every deployment of a model name; one active row per name is served.

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use super::{StoreError, begin_immediate, commit, now};

/// One deployment.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DeploymentRow {
    pub seq: i64,
    pub name: String,
    pub version: String,
    pub path: String,
    pub job_id: Option<String>,
    pub deployed_by: String,
    pub active: i64,
    pub created_at: String,
    /// `f32`, `bf16` or `int8`.
    pub precision: String,
    /// Reduced precision: the quality guard's comparison with f32 (JSON), when there was one.
    pub quality: Option<String>,
}

/// What a new deployment records.
pub struct NewDeployment<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub path: &'a str,
    pub job_id: Option<&'a str>,
    pub by: &'a str,
    pub precision: &'a str,
    pub quality: Option<&'a str>,
}

/// Records a deployment and makes it the active one of its name.
pub async fn activate_new(pool: &Pool, d: NewDeployment<'_>) -> Result<DeploymentRow, StoreError> {
    let NewDeployment {
        name,
        version,
        path,
        job_id,
        by,
        precision,
        quality,
    } = d;
    let mut conn = begin_immediate(pool).await?;
    sqlx::query("UPDATE deployments SET active = 0 WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query_as::<_, DeploymentRow>(
        "INSERT INTO deployments (name, version, path, job_id, deployed_by, active, created_at, precision, quality) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8) RETURNING *",
    )
    .bind(name)
    .bind(version)
    .bind(path)
    .bind(job_id)
    .bind(by)
    .bind(now())
    .bind(precision)
    .bind(quality)
    .fetch_one(&mut *conn)
    .await?;
    commit(conn).await?;
    Ok(row)
}

/// Makes deployment `seq` the active one of its name.
pub async fn activate(pool: &Pool, name: &str, seq: i64) -> Result<(), StoreError> {
    let mut conn = begin_immediate(pool).await?;
    sqlx::query(
        "UPDATE deployments SET active = CASE WHEN seq = $1 THEN 1 ELSE 0 END WHERE name = $2",
    )
    .bind(seq)
    .bind(name)
    .execute(&mut *conn)
    .await?;
    commit(conn).await
}

/// No version of `name` is served any more (the history stays).
pub async fn deactivate(pool: &Pool, name: &str) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("UPDATE deployments SET active = 0 WHERE name = $1 AND active = 1")
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// The active deployment of every name.
pub async fn active(pool: &Pool) -> Result<Vec<DeploymentRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeploymentRow>(
        "SELECT * FROM deployments WHERE active = 1 ORDER BY seq",
    )
    .fetch_all(pool)
    .await?)
}

/// The active deployment of `name`.
pub async fn active_of(pool: &Pool, name: &str) -> Result<Option<DeploymentRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeploymentRow>(
        "SELECT * FROM deployments WHERE name = $1 AND active = 1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?)
}

/// Every deployment of `name`, newest first.
pub async fn history(pool: &Pool, name: &str) -> Result<Vec<DeploymentRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeploymentRow>(
        "SELECT * FROM deployments WHERE name = $1 ORDER BY seq DESC LIMIT 1000",
    )
    .bind(name)
    .fetch_all(pool)
    .await?)
}

/// Whether `name` was ever deployed through the registry.
pub async fn known(pool: &Pool, name: &str) -> Result<bool, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM deployments WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}
