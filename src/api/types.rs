//! Request and response bodies (described in openapi.yaml).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::Prf;
use crate::store::jobs::JobRow;
use crate::store::results::{DistributionRow, EpochRow, EvaluationRow};

use super::error::ApiError;

/// Progress of a job.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct ProgressResponse {
    /// queued, downloading, evaluating_base, training, done …
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub epoch: usize,
    #[serde(default)]
    pub epochs: usize,
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

/// The best checkpoint of a finished job.
#[derive(Debug, Serialize)]
pub struct BestCheckpointResponse {
    pub epoch: Option<i64>,
    pub checkpoint: Option<String>,
    /// The exported HF model directory (deployable with POST /v1/models).
    pub model_dir: Option<String>,
}

/// Push state of a job.
#[derive(Debug, Serialize)]
pub struct PushResponse {
    pub status: String,
    pub error: Option<String>,
    pub url: Option<String>,
}

/// A job.
#[derive(Debug, Serialize)]
pub struct JobResponse {
    pub id: String,
    pub status: String,
    pub progress: ProgressResponse,
    pub spec: Value,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
    pub device: Option<String>,
    pub best_checkpoint: Option<BestCheckpointResponse>,
    pub improvement_f1: Option<f64>,
    pub push: PushResponse,
}

impl TryFrom<JobRow> for JobResponse {
    type Error = ApiError;
    fn try_from(r: JobRow) -> Result<Self, ApiError> {
        let progress = match (&r.progress, r.status.as_str()) {
            (Some(p), _) => serde_json::from_str(p).unwrap_or_default(),
            (None, s) => ProgressResponse {
                stage: Some(s.to_string()),
                ..Default::default()
            },
        };
        let spec: Value =
            serde_json::from_str(&r.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
        let best = r.best_model_dir.as_ref().map(|d| BestCheckpointResponse {
            epoch: r.best_epoch,
            checkpoint: r.best_checkpoint.clone(),
            model_dir: Some(d.clone()),
        });
        Ok(JobResponse {
            id: r.id,
            status: r.status,
            progress,
            spec,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            attempts: r.attempts,
            error: r.error,
            device: r.device,
            best_checkpoint: best,
            improvement_f1: r.improvement_f1,
            push: PushResponse {
                status: r.push_status,
                error: r.push_error,
                url: r.push_url,
            },
        })
    }
}

/// A page of jobs.
#[derive(Debug, Serialize)]
pub struct JobListResponse {
    pub jobs: Vec<JobResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of GET /v1/jobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListJobsQuery {
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Overall and per-label scores.
#[derive(Debug, Serialize)]
pub struct MetricsResponse {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub per_label: BTreeMap<String, Prf>,
}

/// One epoch.
#[derive(Debug, Serialize)]
pub struct EpochResponse {
    pub epoch: i64,
    pub step: i64,
    pub train_loss: f64,
    pub eval_loss: f64,
    pub eval: MetricsResponse,
    pub learning_rate: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub train_samples_per_second: f64,
    pub checkpoint: String,
}

impl TryFrom<EpochRow> for EpochResponse {
    type Error = ApiError;
    fn try_from(r: EpochRow) -> Result<Self, ApiError> {
        Ok(EpochResponse {
            epoch: r.epoch,
            step: r.step,
            train_loss: r.train_loss,
            eval_loss: r.eval_loss,
            eval: MetricsResponse {
                precision: r.precision,
                recall: r.recall,
                f1: r.f1,
                accuracy: r.accuracy,
                per_label: serde_json::from_str(&r.per_label)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            },
            learning_rate: r.learning_rate,
            train_seconds: r.train_seconds,
            eval_seconds: r.eval_seconds,
            train_samples_per_second: r.samples_per_second,
            checkpoint: r.checkpoint,
        })
    }
}

/// Per-epoch history.
#[derive(Debug, Serialize)]
pub struct EpochsResponse {
    pub job_id: String,
    pub epochs: Vec<EpochResponse>,
}

/// A test evaluation.
#[derive(Debug, Serialize)]
pub struct EvaluationResponse {
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: MetricsResponse,
    pub seconds: f64,
}

impl TryFrom<EvaluationRow> for EvaluationResponse {
    type Error = ApiError;
    fn try_from(r: EvaluationRow) -> Result<Self, ApiError> {
        Ok(EvaluationResponse {
            loss: r.loss,
            metrics: MetricsResponse {
                precision: r.precision,
                recall: r.recall,
                f1: r.f1,
                accuracy: r.accuracy,
                per_label: r
                    .per_label()
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            },
            seconds: r.seconds,
        })
    }
}

/// Base vs fine-tuned on test.
#[derive(Debug, Serialize)]
pub struct ResultsResponse {
    pub job_id: String,
    pub status: String,
    /// Pretrained encoder + fresh head, before training.
    pub base: Option<EvaluationResponse>,
    /// Best checkpoint after training.
    pub finetuned: Option<EvaluationResponse>,
    pub improvement_f1: Option<f64>,
    /// Per-label F1 change.
    pub improvement_f1_per_label: BTreeMap<String, f64>,
    pub best_epoch: Option<i64>,
    pub label_distribution: Vec<DistributionRow>,
}

/// A deployed model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub name: String,
    #[serde(default, deserialize_with = "non_null")]
    pub job_id: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub path: Option<String>,
}

/// `Option` that may be absent but not `null` (absent -> None, null -> error), so a body
/// like `{"text": "a", "texts": null}` is rejected as the schema's `oneOf` says.
pub fn non_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// POST /v1/detect body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectRequest {
    #[serde(default, deserialize_with = "non_null")]
    pub text: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    pub texts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "non_null")]
    pub tokens: Option<Vec<String>>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub aggregation_strategy: Option<String>,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// `sentences` (default) or `windows`, for texts longer than the model's window.
    #[serde(default)]
    pub long_text: Option<String>,
}
