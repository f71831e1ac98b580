//! Request and response bodies (described in openapi.yaml).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::dataset::SplitStats;
use crate::infer::aggregate::Entity;
use crate::infer::{ModelInfo, TextResult};
use crate::jobs::{JobProgress, JobStatus};
use crate::metrics::Prf;
use crate::store::datasets::DatasetRow;
use crate::store::jobs::{JobRow, PushStatus};
use crate::store::results::{DistributionRow, EpochRow, EvaluationRow};

use super::error::ApiError;

/// How server paths are shown to clients: relative to the data directory or the bundled
/// assets, never the server's absolute layout.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: std::path::PathBuf,
    pub assets_dir: std::path::PathBuf,
}

impl Paths {
    /// `jobs/<id>/best_model` for a path under the data dir, `assets/…` under the assets;
    /// other paths (given by the user) unchanged.
    pub fn public(&self, path: &str) -> String {
        let p = std::path::Path::new(path);
        if let Ok(rel) = p.strip_prefix(&self.data_dir) {
            return rel.display().to_string();
        }
        if let Ok(rel) = p.strip_prefix(&self.assets_dir) {
            return std::path::Path::new("assets")
                .join(rel)
                .display()
                .to_string();
        }
        path.to_string()
    }

    /// A message with the data and assets directories replaced by `<data-dir>` / `<assets>`.
    pub fn redact(&self, message: &str) -> String {
        let mut m = message.to_string();
        for (dir, name) in [
            (&self.data_dir, "<data-dir>"),
            (&self.assets_dir, "<assets>"),
        ] {
            let d = dir.display().to_string();
            if d.len() > 1 {
                m = m.replace(&d, name);
            }
        }
        m
    }
}

/// The best checkpoint of a finished job.
#[derive(Debug, Serialize)]
pub struct BestCheckpointResponse {
    pub epoch: Option<i64>,
    pub checkpoint: Option<String>,
    /// The exported HF model directory, relative to the data directory (deploy it with
    /// `POST /v1/models {"job_id"}`).
    pub model_dir: Option<String>,
}

/// Push state of a job.
#[derive(Debug, Serialize)]
pub struct PushResponse {
    pub status: PushStatus,
    pub error: Option<String>,
    pub url: Option<String>,
}

/// A job.
#[derive(Debug, Serialize)]
pub struct JobResponse {
    pub id: String,
    pub status: JobStatus,
    pub progress: JobProgress,
    pub spec: Value,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Runs started (each resume counts).
    pub attempts: i64,
    /// Times the server died while running it.
    pub crashes: i64,
    pub error: Option<String>,
    pub device: Option<String>,
    pub best_checkpoint: Option<BestCheckpointResponse>,
    pub improvement_f1: Option<f64>,
    pub push: PushResponse,
    /// Set for a study's trial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study: Option<TrialOf>,
}

/// The study a job is a trial of.
#[derive(Debug, Serialize)]
pub struct TrialOf {
    pub id: String,
    pub trial: Option<i64>,
    pub params: Value,
    /// Stopped early by the study's pruner.
    pub pruned: bool,
}

impl JobResponse {
    pub fn new(r: JobRow, paths: &Paths) -> Result<Self, ApiError> {
        let progress = match &r.progress {
            Some(p) => serde_json::from_str(p).unwrap_or_default(),
            None => JobProgress {
                stage: Some(r.status.to_string()),
                ..Default::default()
            },
        };
        let spec: Value =
            serde_json::from_str(&r.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
        let best = r.best_model_dir.as_ref().map(|d| BestCheckpointResponse {
            epoch: r.best_epoch,
            checkpoint: r.best_checkpoint.clone(),
            model_dir: Some(paths.public(d)),
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
            crashes: r.crashes,
            error: r.error.map(|e| paths.redact(&e)),
            device: r.device,
            best_checkpoint: best,
            improvement_f1: r.improvement_f1,
            push: PushResponse {
                status: r.push_status,
                error: r.push_error,
                url: r.push_url,
            },
            study: r.study_id.map(|id| TrialOf {
                id,
                trial: r.trial,
                params: r
                    .params
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or(Value::Null),
                pruned: r.pruned != 0,
            }),
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
    /// Only the trials of this study.
    pub study_id: Option<String>,
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
    /// `training.eval_train_subset` scores (loss, metrics, seconds), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_eval: Option<Value>,
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
            train_eval: r
                .train_eval
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| ApiError::Internal(e.to_string()))?,
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
    pub status: JobStatus,
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
    /// Number format of the dense layers (`f32`, `bf16`, `int8`); absent: `--detect-precision`.
    #[serde(default, deserialize_with = "non_null")]
    pub precision: Option<crate::infer::Precision>,
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
    /// Report each input's uncertainty (for active learning).
    #[serde(default)]
    pub uncertainty: Option<bool>,
    /// Words that `first`/`average`/`max` group sub-tokens into: `whitespace` (chunks with
    /// their punctuation) or `tokenizer` (the pre-tokenizer's). Default: the model's.
    #[serde(default)]
    pub words: Option<crate::infer::WordMode>,
}

/// A deployed model.
#[derive(Debug, Serialize)]
pub struct ModelResponse {
    pub name: String,
    /// The model directory (relative to the data directory for trained models).
    pub path: String,
    /// Content fingerprint of config + weights (changes when a model is replaced).
    pub version: String,
    pub labels: Vec<String>,
    pub device: String,
    /// Window of the model, special tokens included.
    pub max_input_tokens: usize,
    /// Job that produced it, when deployed from a job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Aggregation `/v1/detect` uses when a request names none (`first` for models trained
    /// here, `simple` otherwise) and the words it groups sub-tokens into.
    pub aggregation_strategy: crate::infer::aggregate::Strategy,
    pub words: crate::infer::WordMode,
    /// Number format of the dense layers; `version` ends in `-bf16` / `-int8` when reduced.
    pub precision: crate::infer::Precision,
    /// Reduced precision: the model against itself in f32 on its job's validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::infer::PrecisionComparison>,
}

impl ModelResponse {
    pub fn new(m: ModelInfo, paths: &Paths) -> Self {
        ModelResponse {
            path: paths.public(&m.path.display().to_string()),
            name: m.name,
            version: m.version,
            labels: m.labels,
            device: m.device,
            max_input_tokens: m.max_tokens,
            job_id: m.job_id,
            aggregation_strategy: m.aggregation_strategy,
            words: m.words,
            precision: m.precision,
            quality: m.quality,
        }
    }
}

/// GET /v1/models
#[derive(Debug, Serialize)]
pub struct ModelsResponse {
    pub models: Vec<ModelResponse>,
}

/// POST /v1/detect with `text` or `tokens`.
#[derive(Debug, Serialize)]
pub struct DetectResponse {
    pub model: String,
    pub model_version: String,
    pub entities: Vec<Entity>,
    /// With `uncertainty: true`: 1 − the lowest word confidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<f32>,
    /// Sequences the input needed (1 unless it exceeded the model's window).
    pub windows: usize,
}

/// POST /v1/detect with `texts`.
#[derive(Debug, Serialize)]
pub struct DetectManyResponse {
    pub model: String,
    pub model_version: String,
    pub results: Vec<TextResult>,
}

/// An uploaded dataset.
#[derive(Debug, Serialize)]
pub struct DatasetResponse {
    pub id: String,
    pub name: String,
    pub format: String,
    pub labels: Vec<String>,
    pub stats: Vec<SplitStats>,
    pub size_bytes: i64,
    pub created_at: String,
    /// The `dataset` object to put in a job spec.
    pub use_in_job: Value,
    /// `GET /v1/datasets/{id}` only: the first sentences of the training split, with their
    /// label names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Value>>,
}

impl TryFrom<DatasetRow> for DatasetResponse {
    type Error = ApiError;
    fn try_from(r: DatasetRow) -> Result<Self, ApiError> {
        let bad =
            |e: serde_json::Error| ApiError::Internal(format!("stored dataset {}: {e}", r.id));
        Ok(DatasetResponse {
            labels: serde_json::from_str(&r.labels).map_err(bad)?,
            stats: serde_json::from_str(&r.stats).map_err(bad)?,
            use_in_job: serde_json::json!({"dataset": {"id": r.id}}),
            id: r.id,
            name: r.name,
            format: r.format,
            size_bytes: r.size_bytes,
            created_at: r.created_at,
            samples: None,
        })
    }
}

/// GET /v1/datasets
#[derive(Debug, Serialize)]
pub struct DatasetsResponse {
    pub datasets: Vec<DatasetResponse>,
}

/// A deployed model's health.
#[derive(Debug, Serialize)]
pub struct ModelHealthResponse {
    pub name: String,
    pub version: String,
    /// `ok`, or `degraded` with a reason.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Executor restarts after a panic since the model was deployed.
    pub restarts: u64,
}

/// GET /health
#[derive(Debug, Serialize)]
pub struct HealthResponse {
    /// `ok`, `degraded` (answering, with problems) or `unavailable` (503).
    pub status: &'static str,
    pub problems: Vec<String>,
    pub database: String,
    pub device: String,
    pub models: Vec<ModelHealthResponse>,
    pub uptime_seconds: u64,
    pub version: &'static str,
}

/// GET /info
#[derive(Debug, Serialize)]
pub struct InfoResponse {
    pub version: &'static str,
    pub device: String,
    pub models: Vec<ModelResponse>,
    /// Longest text (code points) per input.
    pub max_input_chars: usize,
    /// Most texts per request.
    pub max_client_batch_size: usize,
    /// Requests waiting or running per model before 429.
    pub max_concurrent_requests: usize,
    /// Tokens per inference batch.
    pub max_batch_tokens: usize,
    pub batch_wait_ms: u64,
    pub window_stride: usize,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub request_timeout_seconds: u64,
    pub upload_timeout_seconds: u64,
}
