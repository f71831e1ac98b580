//! `epochs`, `evaluations` and `label_distribution`.

use std::collections::BTreeMap;

use super::Pool;
use serde::Serialize;
use sqlx::FromRow;

use crate::data::dataset::SplitStats;
use crate::metrics::Prf;
use crate::train::{EpochRecord, EvalSummary};

use super::StoreError;

/// One row of `epochs`.
#[derive(Debug, Clone, FromRow)]
pub struct EpochRow {
    pub job_id: String,
    pub epoch: i64,
    pub step: i64,
    pub train_loss: f64,
    pub eval_loss: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub per_label: String,
    pub learning_rate: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub samples_per_second: f64,
    pub checkpoint: String,
    /// `training.eval_train_subset` scores (JSON [`EvalSummary`]).
    pub train_eval: Option<String>,
}

/// Inserts or replaces an epoch (a resumed job may report an epoch again: no duplicates).
pub async fn upsert_epoch(pool: &Pool, job_id: &str, r: &EpochRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO epochs (job_id, epoch, step, train_loss, eval_loss, precision, recall, f1, accuracy, per_label,
         learning_rate, train_seconds, eval_seconds, samples_per_second, checkpoint, train_eval)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (job_id, epoch) DO UPDATE SET step = excluded.step, train_loss = excluded.train_loss,
           eval_loss = excluded.eval_loss, precision = excluded.precision, recall = excluded.recall,
           f1 = excluded.f1, accuracy = excluded.accuracy, per_label = excluded.per_label,
           learning_rate = excluded.learning_rate, train_seconds = excluded.train_seconds,
           eval_seconds = excluded.eval_seconds, samples_per_second = excluded.samples_per_second,
           checkpoint = excluded.checkpoint, train_eval = excluded.train_eval",
    )
    .bind(job_id)
    .bind(r.epoch as i64)
    .bind(r.step as i64)
    .bind(r.train_loss)
    .bind(r.eval_loss)
    .bind(r.eval.precision)
    .bind(r.eval.recall)
    .bind(r.eval.f1)
    .bind(r.eval.accuracy)
    .bind(serde_json::to_string(&r.eval.per_label)?)
    .bind(r.learning_rate)
    .bind(r.train_seconds)
    .bind(r.eval_seconds)
    .bind(r.train_samples_per_second)
    .bind(&r.checkpoint)
    .bind(r.train_eval.as_ref().map(serde_json::to_string).transpose()?)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn epochs(pool: &Pool, job_id: &str) -> Result<Vec<EpochRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, EpochRow>("SELECT * FROM epochs WHERE job_id = $1 ORDER BY epoch")
            .bind(job_id)
            .fetch_all(pool)
            .await?,
    )
}

/// One row of `evaluations`.
#[derive(Debug, Clone, FromRow)]
pub struct EvaluationRow {
    pub job_id: String,
    pub kind: String,
    pub loss: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub per_label: String,
    pub seconds: f64,
    /// Fine-tuned test only: per-sentence entity counts (JSON `[[tp, pred, truth], ...]`).
    pub sentence_counts: Option<String>,
}

impl EvaluationRow {
    pub fn per_label(&self) -> Result<BTreeMap<String, Prf>, StoreError> {
        Ok(serde_json::from_str(&self.per_label)?)
    }
}

/// Stores the `base` or `finetuned` test evaluation.
pub async fn upsert_evaluation(
    pool: &Pool,
    job_id: &str,
    kind: &str,
    s: &EvalSummary,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO evaluations (job_id, kind, loss, precision, recall, f1, accuracy, per_label, seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (job_id, kind) DO UPDATE SET loss = excluded.loss, precision = excluded.precision,
           recall = excluded.recall, f1 = excluded.f1, accuracy = excluded.accuracy,
           per_label = excluded.per_label, seconds = excluded.seconds",
    )
    .bind(job_id)
    .bind(kind)
    .bind(s.loss)
    .bind(s.metrics.precision)
    .bind(s.metrics.recall)
    .bind(s.metrics.f1)
    .bind(s.metrics.accuracy)
    .bind(serde_json::to_string(&s.metrics.per_label)?)
    .bind(s.seconds)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores the per-sentence entity counts of a stored evaluation, as `[tp, pred, truth]` rows.
pub async fn set_sentence_counts(
    pool: &Pool,
    job_id: &str,
    kind: &str,
    counts: &[crate::metrics::Counts],
) -> Result<(), StoreError> {
    let rows: Vec<[usize; 3]> = counts.iter().map(|c| [c.tp, c.pred, c.truth]).collect();
    sqlx::query("UPDATE evaluations SET sentence_counts = $1 WHERE job_id = $2 AND kind = $3")
        .bind(serde_json::to_string(&rows)?)
        .bind(job_id)
        .bind(kind)
        .execute(pool)
        .await?;
    Ok(())
}

/// Parses stored sentence counts.
pub fn parse_sentence_counts(json: &str) -> Result<Vec<crate::metrics::Counts>, StoreError> {
    let rows: Vec<[usize; 3]> = serde_json::from_str(json)?;
    Ok(rows
        .into_iter()
        .map(|[tp, pred, truth]| crate::metrics::Counts { tp, pred, truth })
        .collect())
}

pub async fn evaluations(pool: &Pool, job_id: &str) -> Result<Vec<EvaluationRow>, StoreError> {
    Ok(sqlx::query_as::<_, EvaluationRow>(
        "SELECT * FROM evaluations WHERE job_id = $1 ORDER BY kind",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}

/// One label of one split.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DistributionRow {
    pub split: String,
    pub label: String,
    pub count: i64,
    pub percent: f64,
    pub sentences: i64,
    pub words: i64,
    pub sentences_with_entity: i64,
}

/// Replaces the label distribution of a job.
pub async fn set_distribution(
    pool: &Pool,
    job_id: &str,
    stats: &[SplitStats],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM label_distribution WHERE job_id = $1")
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    for s in stats {
        for (label, c) in &s.labels {
            sqlx::query(
                "INSERT INTO label_distribution (job_id, split, label, count, percent, sentences, words, sentences_with_entity) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(job_id)
            .bind(&s.split)
            .bind(label)
            .bind(c.count as i64)
            .bind(c.percent)
            .bind(s.sentences as i64)
            .bind(s.tokens as i64)
            .bind(s.sentences_with_entity as i64)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

pub async fn distribution(pool: &Pool, job_id: &str) -> Result<Vec<DistributionRow>, StoreError> {
    Ok(sqlx::query_as::<_, DistributionRow>(
        "SELECT split, label, count, percent, sentences, words, sentences_with_entity FROM label_distribution WHERE job_id = $1 ORDER BY rowid",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}
