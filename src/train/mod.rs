//! The notebook's pipeline as a library: base evaluation, fine-tuning with per-epoch
//! validation and checkpoints, best model on test, report and CSV row.
//!
//! Synchronous and backend-generic; it runs on its own thread and reports through a
//! callback. Must not import tokio, axum or sqlx.

pub mod args;
pub mod checkpoint;
pub mod evaluate;
pub mod loss;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use crate::data::dataset::SplitStats;
use crate::data::{DataError, Dataset};
use crate::metrics::{Metrics, MetricsError};
use crate::model::LoadError;
use crate::model::backend::Resolved;
use crate::validate::FieldError;

pub use args::TrainingArgs;
pub use checkpoint::EvalSummary;
pub use trainer::run;

/// Why a run stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Spec(#[from] FieldError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("cancelled")]
    Cancelled,
    #[error("interrupted by shutdown; resumable from {checkpoint}")]
    Interrupted { checkpoint: String },
    #[error("training diverged: loss is {0} at step {1}")]
    Diverged(f64, usize),
    /// The run may no longer write (its worker lost the job's lease, or cannot confirm it):
    /// it stopped before writing; the job resumes elsewhere from its last checkpoint.
    #[error("stopped before writing: {0}")]
    Fenced(String),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The error's kind for `error="Kind: message"` in the CSV.
    pub fn kind(&self) -> &'static str {
        match self {
            TrainError::Data(_) => "DataError",
            TrainError::Model(_) => "LoadError",
            TrainError::Metrics(_) => "MetricsError",
            TrainError::Spec(_) => "SpecError",
            TrainError::Io { .. } => "IoError",
            TrainError::Checkpoint(_) => "CheckpointError",
            TrainError::Hub(_) => "HubError",
            TrainError::Cancelled => "Cancelled",
            TrainError::Interrupted { .. } => "Interrupted",
            TrainError::Diverged(..) => "Diverged",
            TrainError::Fenced(_) => "Fenced",
        }
    }
}

/// Cooperative stop request, checked every optimizer step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

/// What a stop request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user cancelled: stop, keep nothing as best.
    Cancel,
    /// The process is shutting down: checkpoint and stop, resumable later.
    Shutdown,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }
    pub fn shutdown(&self) {
        let _ = self
            .0
            .compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst);
    }
    pub fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}

/// Time left from the pace of the optimizer steps seen so far (steps done before the first one
/// seen, e.g. by an earlier attempt, do not count).
#[derive(Debug, Clone, Default)]
pub struct Eta {
    first: Option<(usize, std::time::Instant)>,
}

impl Eta {
    /// Records that `step` of `total` is done; returns the estimated seconds left.
    pub fn observe(&mut self, step: usize, total: usize) -> f64 {
        let (s0, t0) = *self
            .first
            .get_or_insert((step.saturating_sub(1), std::time::Instant::now()));
        let per_step = t0.elapsed().as_secs_f64() / step.saturating_sub(s0).max(1) as f64;
        per_step * total.saturating_sub(step) as f64
    }
}

/// One finished epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Optimizer steps done at the end of the epoch.
    pub step: usize,
    /// Mean training loss over the epoch's optimizer steps.
    pub train_loss: f64,
    pub eval_loss: f64,
    pub eval: Metrics,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Training time of the epoch (without validation and saving).
    pub train_seconds: f64,
    /// Validation + checkpoint time.
    pub eval_seconds: f64,
    pub train_samples_per_second: f64,
    pub checkpoint: String,
    /// `training.eval_train_subset` training sentences scored like validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_eval: Option<EvalSummary>,
}

/// Why a run stopped before its last epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EarlyStop {
    /// `early_stopping_patience` epochs without improvement.
    Patience { epochs_without_improvement: usize },
    /// A study's pruner judged the run not worth finishing.
    Pruned { reason: String },
}

/// Asked after each epoch whether the run should stop there (a study's pruner). Asked again
/// with the same history when a run resumes at an epoch boundary, so the answer must depend
/// only on the history and on what the gate reads elsewhere.
pub trait EpochGate: Send + Sync {
    /// `history` holds every epoch so far; `Some(reason)` stops the run.
    fn stop_after(&self, history: &[EpochRecord]) -> Option<String>;
}

impl std::fmt::Debug for dyn EpochGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochGate")
    }
}

/// Asked before every checkpoint and the best model are written: `Err(why)` stops the run
/// (a worker that lost its job's lease must not write over the next owner's files).
pub trait WriteFence: Send + Sync {
    fn may_write(&self) -> Result<(), String>;
}

impl std::fmt::Debug for dyn WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteFence")
    }
}

/// Progress reported while a run goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// Data and model are ready.
    Prepared {
        device: String,
        train_sentences: usize,
        steps_per_epoch: usize,
        total_steps: usize,
        epochs: usize,
        dropped_words: usize,
        label_distribution: Vec<SplitStats>,
        warnings: Vec<String>,
        resumed_from: Option<String>,
    },
    /// The base model (fresh head) on test.
    BaseEvaluated { summary: EvalSummary },
    /// After an optimizer step.
    Step {
        epoch: usize,
        epochs: usize,
        step: usize,
        total_steps: usize,
        loss: f64,
        learning_rate: f64,
        seconds_per_step: f64,
    },
    /// After an epoch's validation and checkpoint.
    Epoch { record: EpochRecord },
    /// The run stops before its last epoch (after `after_epoch`).
    StoppedEarly { after_epoch: usize, why: EarlyStop },
    /// The best model on test, with each test sentence's entity counts (for bootstraps).
    FinalEvaluated {
        summary: EvalSummary,
        #[serde(skip)]
        sentence_counts: Vec<crate::metrics::Counts>,
    },
}

/// A fully specified run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Local HF directory of the base checkpoint.
    pub model_dir: PathBuf,
    /// CSV `model` column.
    pub model_name: String,
    /// CSV `checkpoint` column: the checkpoint as the user named it.
    pub checkpoint: String,
    pub dataset: Dataset,
    pub args: TrainingArgs,
    pub seed: u64,
    pub output_dir: PathBuf,
    pub device: Resolved,
    /// Consulted after every epoch but the last (study pruning).
    pub gate: Option<Arc<dyn EpochGate>>,
    /// Checked before every write of the output directory (None: always allowed).
    pub fence: Option<Arc<dyn WriteFence>>,
}

/// What a successful run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub base_test: EvalSummary,
    pub finetuned_test: EvalSummary,
    pub improvement_f1: f64,
    pub best_epoch: usize,
    pub best_metric: f64,
    /// The exported best model (HF directory).
    pub best_model_dir: PathBuf,
    pub epochs: Vec<EpochRecord>,
    pub stopped_early: bool,
    /// Why it stopped early, when it did.
    pub early_stop: Option<EarlyStop>,
    pub label_distribution: Vec<SplitStats>,
    pub dropped_words: usize,
    pub train_seconds: f64,
    pub train_samples_per_second: f64,
    pub num_parameters: usize,
    pub device: String,
}

/// Per-label count of the training words, for "balanced" class weights.
pub fn train_label_counts(dataset: &Dataset) -> Vec<usize> {
    let mut counts = vec![0; dataset.labels.len()];
    for s in &dataset.train.sentences {
        for t in &s.tags {
            counts[*t as usize] += 1;
        }
    }
    counts
}
