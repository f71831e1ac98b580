//! `datasets`: uploaded datasets (files under `<data-dir>/datasets/<id>/`).

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use super::{StoreError, now};

/// One uploaded dataset.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    pub format: String,
    pub labels: String,
    pub stats: String,
    pub size_bytes: i64,
    pub created_at: String,
}

pub async fn insert(
    pool: &Pool,
    id: &str,
    name: &str,
    format: &str,
    labels: &str,
    stats: &str,
    size: i64,
) -> Result<DatasetRow, StoreError> {
    Ok(sqlx::query_as::<_, DatasetRow>(
        "INSERT INTO datasets (id, name, format, labels, stats, size_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(id)
    .bind(name)
    .bind(format)
    .bind(labels)
    .bind(stats)
    .bind(size)
    .bind(now())
    .fetch_one(pool)
    .await?)
}

pub async fn list(pool: &Pool) -> Result<Vec<DatasetRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, DatasetRow>("SELECT * FROM datasets ORDER BY created_at DESC, id")
            .fetch_all(pool)
            .await?,
    )
}

pub async fn get(pool: &Pool, id: &str) -> Result<Option<DatasetRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, DatasetRow>("SELECT * FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}
