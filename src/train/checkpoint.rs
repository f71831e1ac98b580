//! Checkpoints: `checkpoint-{step}/` holds an HF model directory (config.json +
//! model.safetensors, loadable by transformers), `optimizer.safetensors` (AdamW moments by
//! parameter name) and `trainer_state.json`, written last and atomically, so a directory
//! without it is incomplete and ignored. Rotation keeps `save_total_limit` checkpoints, never
//! deleting the best or the latest.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::model::export::{write_json, write_safetensors};
use crate::model::loader::hf_tensors;
use crate::model::weights::Weights;
use crate::model::{ModelConfig, TokenClassifier};

use super::evaluate::EvalOutput;
use super::optim::AdamW;
use super::{EpochRecord, TrainError};

/// Everything needed to continue a run from a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Epochs fully done (0-based index of the epoch in progress when `step_in_epoch > 0`).
    pub epochs_done: usize,
    /// Optimizer steps done inside the epoch in progress (0 at an epoch boundary).
    pub step_in_epoch: usize,
    /// Running sums for the epoch in progress.
    pub loss_sum: f64,
    pub loss_count: usize,
    pub epoch_seconds: f64,
    pub epoch_samples: usize,
    /// Best epoch so far (1-based), its metric and checkpoint directory name.
    pub best: Option<Best>,
    /// Epochs without improvement (early stopping).
    pub patience_counter: usize,
    pub history: Vec<EpochRecord>,
    /// Base-model test evaluation, done once before training.
    pub base_test: Option<EvalSummary>,
    pub seed: u64,
}

impl TrainerState {
    /// The state before the first step.
    pub fn new(seed: u64) -> Self {
        TrainerState {
            global_step: 0,
            epochs_done: 0,
            step_in_epoch: 0,
            loss_sum: 0.0,
            loss_count: 0,
            epoch_seconds: 0.0,
            epoch_samples: 0,
            best: None,
            patience_counter: 0,
            history: vec![],
            base_test: None,
            seed,
        }
    }
}

/// The best checkpoint so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub metric: f64,
    pub checkpoint: String,
}

/// Loss and metrics of an evaluation, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    pub loss: f64,
    #[serde(flatten)]
    pub metrics: crate::metrics::Metrics,
    /// Evaluation wall time in seconds.
    pub seconds: f64,
}

impl EvalSummary {
    pub fn new(out: &EvalOutput, seconds: f64) -> Self {
        EvalSummary {
            loss: out.loss,
            metrics: out.metrics.clone(),
            seconds,
        }
    }
}

/// Directory name of the checkpoint after `step` optimizer steps.
pub fn dir_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Writes a checkpoint; `trainer_state.json` last.
pub fn save<B: AutodiffBackend>(
    output: &Path,
    model: &TokenClassifier<B>,
    config: &ModelConfig,
    optim: &AdamW<B>,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let dir = output.join(dir_name(state.global_step));
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let inner = model.valid();
    write_safetensors(&dir.join("model.safetensors"), &hf_tensors(&inner))?;
    write_json(&dir.join("config.json"), config)?;
    write_safetensors(&dir.join("optimizer.safetensors"), &optim.state_tensors())?;
    write_json(&dir.join("trainer_state.json"), state)?;
    Ok(dir)
}

/// Reads the optimizer tensors of a checkpoint.
pub fn read_optimizer(dir: &Path) -> Result<Vec<(String, burn::tensor::TensorData)>, TrainError> {
    let w = Weights::open(&dir.join("optimizer.safetensors"))?;
    w.entries
        .keys()
        .map(|k| Ok((k.clone(), w.read(k)?)))
        .collect()
}

/// Complete checkpoints under `output`, oldest first.
pub fn list(output: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(output) else {
        return vec![];
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Reads a checkpoint's state and checks that its weight and optimizer files open.
fn open_checkpoint(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let state = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    Weights::open(&dir.join("model.safetensors"))?;
    Weights::open(&dir.join("optimizer.safetensors"))?;
    Ok(state)
}

/// The newest checkpoint that reads back, and its state. A damaged one (a crash while the
/// disk filled up, a truncated file) is skipped with a warning for the one before it.
pub fn latest(output: &Path) -> Result<Option<(PathBuf, TrainerState)>, TrainError> {
    for (_, dir) in list(output).into_iter().rev() {
        match open_checkpoint(&dir) {
            Ok(state) => return Ok(Some((dir, state))),
            Err(e) => {
                tracing::warn!(checkpoint = %dir.display(), error = %e, "damaged checkpoint skipped; resuming from an earlier one");
            }
        }
    }
    Ok(None)
}

/// Deletes the oldest checkpoints beyond `limit`, keeping every name in `protect`.
pub fn rotate(output: &Path, limit: usize, protect: &[&str]) -> Result<(), TrainError> {
    let all = list(output);
    let mut excess = all.len().saturating_sub(limit);
    for (_, dir) in all {
        if excess == 0 {
            break;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if protect.contains(&name) {
            continue;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        excess -= 1;
    }
    Ok(())
}
