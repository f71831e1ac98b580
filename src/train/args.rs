//! Training hyper-parameters: the `training` object of a job spec, with the notebook's
//! defaults (HF `TrainingArguments` names where they exist).

use serde::{Deserialize, Serialize};

use super::loss::LossKind;
use super::schedule::LrScheduler;
use crate::validate::FieldError;

/// Class weights for the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassWeights {
    /// `"balanced"`: inverse label frequency on the training words (scikit-learn's rule).
    Named(String),
    /// One weight per label id.
    Explicit(Vec<f64>),
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 (the only precision implemented for training on every backend).
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

/// Metric that picks the best checkpoint (also read with the Trainer's `eval_` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    #[default]
    #[serde(alias = "eval_f1")]
    F1,
    #[serde(alias = "eval_precision")]
    Precision,
    #[serde(alias = "eval_recall")]
    Recall,
    #[serde(alias = "eval_accuracy")]
    Accuracy,
    /// Validation loss (lower is better).
    #[serde(alias = "eval_loss")]
    Loss,
}

impl BestMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            BestMetric::F1 => "f1",
            BestMetric::Precision => "precision",
            BestMetric::Recall => "recall",
            BestMetric::Accuracy => "accuracy",
            BestMetric::Loss => "loss",
        }
    }

    /// Whether larger values are better (all but the loss).
    pub fn higher_is_better(self) -> bool {
        self != BestMetric::Loss
    }
}

fn d_lr() -> f64 {
    2e-5
}
fn d_batch() -> usize {
    8
}
fn d_epochs() -> usize {
    5
}
fn d_wd() -> f64 {
    0.01
}
fn d_one() -> usize {
    1
}
fn d_grad_norm() -> f64 {
    1.0
}
fn d_save_limit() -> usize {
    2
}
fn d_max_length() -> usize {
    512
}

/// The `training` object of a job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    /// Peak learning rate of AdamW (notebook: 2e-5).
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_batch")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "d_batch")]
    pub per_device_eval_batch_size: usize,
    #[serde(default = "d_epochs")]
    pub num_train_epochs: usize,
    /// Decoupled weight decay, not applied to biases and LayerNorm parameters.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: usize,
    /// Warm-up steps: an integer count, or a ratio of all steps when < 1.
    #[serde(default)]
    pub warmup_steps: f64,
    /// Global gradient-norm clipping; 0 disables it.
    #[serde(default = "d_grad_norm")]
    pub max_grad_norm: f64,
    /// Also read as the Trainer's `lr_scheduler_type`.
    #[serde(default, alias = "lr_scheduler_type")]
    pub lr_scheduler: LrScheduler,
    /// Epoch checkpoints kept on disk (the best and the latest are always kept).
    #[serde(default = "d_save_limit")]
    pub save_total_limit: usize,
    #[serde(default)]
    pub metric_for_best_model: BestMetric,
    /// Stop after this many epochs without improvement of the best metric.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// Minimum improvement that resets the patience counter.
    #[serde(default)]
    pub early_stopping_threshold: f64,
    #[serde(default)]
    pub class_weights: Option<ClassWeights>,
    #[serde(default)]
    pub loss: LossKind,
    /// Token limit per sentence (capped by the model's position table).
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub precision: Precision,
    /// Training sentences scored after every epoch next to validation (a fixed seeded sample),
    /// to watch for overfitting (train F1 much higher than validation F1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_train_subset: Option<usize>,
    /// Hugging Face `TrainingArguments` names, accepted as users paste them from notebooks and
    /// folded into the spec's own fields by [`TrainingArgs::normalize`] and the job spec.
    #[serde(default, skip_serializing)]
    pub warmup_ratio: Option<f64>,
    #[serde(default, skip_serializing)]
    pub fp16: Option<bool>,
    #[serde(default, skip_serializing)]
    pub bf16: Option<bool>,
    #[serde(default, skip_serializing)]
    pub push_to_hub: Option<bool>,
    #[serde(default, skip_serializing)]
    pub hub_model_id: Option<String>,
    #[serde(default, skip_serializing)]
    pub hub_private_repo: Option<bool>,
    #[serde(default, skip_serializing)]
    pub output_dir: Option<String>,
}

/// The Hub and output settings a `training` object carried under Trainer names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HfSpecNames {
    pub push_to_hub: Option<bool>,
    pub hub_model_id: Option<String>,
    pub hub_private_repo: Option<bool>,
    pub output_dir: Option<String>,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults deserialise: this is a bug")
    }
}

impl TrainingArgs {
    /// Folds the Trainer's names into this struct's fields (`warmup_ratio` -> `warmup_steps`,
    /// `fp16`/`bf16` -> `precision`) and hands back the ones that belong to the job spec
    /// (`push_to_hub`, `hub_model_id`, `hub_private_repo`, `output_dir`). Giving a value under
    /// both names is an error naming the Trainer's one.
    pub fn normalize(&mut self) -> Result<HfSpecNames, FieldError> {
        if let Some(r) = self.warmup_ratio.take() {
            if self.warmup_steps != 0.0 {
                return field(
                    "warmup_ratio",
                    "give warmup_steps or warmup_ratio, not both".into(),
                );
            }
            if !(r.is_finite() && (0.0..1.0).contains(&r)) {
                return field("warmup_ratio", format!("must be in [0, 1), got {r}"));
            }
            self.warmup_steps = r;
        }
        for (name, flag) in [("fp16", self.fp16.take()), ("bf16", self.bf16.take())] {
            if flag == Some(true) {
                return field(
                    name,
                    "mixed-precision training is not implemented yet; leave it false".into(),
                );
            }
        }
        Ok(HfSpecNames {
            push_to_hub: self.push_to_hub.take(),
            hub_model_id: self.hub_model_id.take(),
            hub_private_repo: self.hub_private_repo.take(),
            output_dir: self.output_dir.take(),
        })
    }

    /// Checks values; `labels` is the number of labels when known (for explicit weights).
    pub fn validate(&self, num_labels: Option<usize>) -> Result<(), FieldError> {
        let f = |name: &str, msg: String| Err(FieldError::new(format!("training.{name}"), msg));
        let finite = |v: f64| v.is_finite();
        if !(finite(self.learning_rate) && self.learning_rate > 0.0) {
            return f(
                "learning_rate",
                format!("must be > 0, got {}", self.learning_rate),
            );
        }
        if self.learning_rate > 10.0 {
            return f(
                "learning_rate",
                format!("must be <= 10, got {}", self.learning_rate),
            );
        }
        self.validate_sizes()?;
        if !(finite(self.weight_decay) && self.weight_decay >= 0.0) {
            return f(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            );
        }
        if !(finite(self.warmup_steps) && self.warmup_steps >= 0.0)
            || (self.warmup_steps >= 1.0 && self.warmup_steps.fract() != 0.0)
        {
            return f(
                "warmup_steps",
                format!(
                    "must be a ratio in [0, 1) or a whole number of steps, got {}",
                    self.warmup_steps
                ),
            );
        }
        if !(finite(self.max_grad_norm) && self.max_grad_norm >= 0.0) {
            return f(
                "max_grad_norm",
                format!("must be >= 0, got {}", self.max_grad_norm),
            );
        }
        if self.save_total_limit == 0 {
            return f("save_total_limit", "must be >= 1, got 0".into());
        }
        if self.early_stopping_patience == Some(0) {
            return f(
                "early_stopping_patience",
                "must be >= 1 or null, got 0".into(),
            );
        }
        if !(finite(self.early_stopping_threshold) && self.early_stopping_threshold >= 0.0) {
            return f(
                "early_stopping_threshold",
                format!("must be >= 0, got {}", self.early_stopping_threshold),
            );
        }
        if let LossKind::Focal { gamma } = self.loss
            && !(finite(gamma) && (0.0..=10.0).contains(&gamma))
        {
            return f(
                "loss.focal.gamma",
                format!("must be in [0, 10], got {gamma}"),
            );
        }
        if !(8..=100_000).contains(&self.max_length) {
            return f(
                "max_length",
                format!("must be in [8, 100000], got {}", self.max_length),
            );
        }
        self.validate_class_weights(num_labels)?;
        if let Some(n) = self.eval_train_subset
            && !(1..=1_000_000).contains(&n)
        {
            return f(
                "eval_train_subset",
                format!("must be in [1, 1000000] or null, got {n}"),
            );
        }
        if matches!(self.precision, Precision::Bf16 | Precision::F16) {
            return f(
                "precision",
                "bf16/f16 training is not implemented yet; use \"auto\" or \"f32\"".into(),
            );
        }
        Ok(())
    }
}

fn field<T>(name: &str, msg: String) -> Result<T, FieldError> {
    Err(FieldError::new(format!("training.{name}"), msg))
}

impl TrainingArgs {
    /// Batch sizes, epochs and accumulation steps: at least 1 and bounded.
    fn validate_sizes(&self) -> Result<(), FieldError> {
        for (name, v) in [
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            ("num_train_epochs", self.num_train_epochs),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
        ] {
            if v == 0 {
                return field(name, "must be >= 1, got 0".into());
            }
        }
        if self.per_device_train_batch_size > 4096 || self.per_device_eval_batch_size > 4096 {
            return field("per_device_train_batch_size", "must be <= 4096".into());
        }
        if self.num_train_epochs > 10_000 {
            return field(
                "num_train_epochs",
                format!("must be <= 10000, got {}", self.num_train_epochs),
            );
        }
        Ok(())
    }

    /// `"balanced"` or one positive weight per label.
    fn validate_class_weights(&self, num_labels: Option<usize>) -> Result<(), FieldError> {
        match &self.class_weights {
            Some(ClassWeights::Named(n)) if n != "balanced" => {
                return field(
                    "class_weights",
                    format!("must be null, \"balanced\" or a list of numbers, got {n:?}"),
                );
            }
            Some(ClassWeights::Explicit(w)) => {
                if let Some(i) = w.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
                    return field(
                        &format!("class_weights[{i}]"),
                        format!("must be > 0, got {}", w[i]),
                    );
                }
                if let Some(n) = num_labels
                    && w.len() != n
                {
                    return field(
                        "class_weights",
                        format!("needs one weight per label ({n}), got {}", w.len()),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_notebooks() {
        let a = TrainingArgs::default();
        assert_eq!(
            (
                a.learning_rate,
                a.per_device_train_batch_size,
                a.num_train_epochs
            ),
            (2e-5, 8, 5)
        );
        assert_eq!(
            (a.weight_decay, a.save_total_limit, a.max_length),
            (0.01, 2, 512)
        );
        assert_eq!(a.loss, LossKind::CrossEntropy);
    }

    #[test]
    fn negative_learning_rate_names_the_field() {
        let a: TrainingArgs = serde_json::from_str(r#"{"learning_rate": -1}"#).unwrap();
        assert_eq!(
            a.validate(None).unwrap_err().to_string(),
            "training.learning_rate must be > 0, got -1"
        );
    }

    #[test]
    fn loss_and_weights_forms() {
        let a: TrainingArgs =
            serde_json::from_str(r#"{"loss": {"focal": {"gamma": 1.5}}, "class_weights": [1, 4]}"#)
                .unwrap();
        assert_eq!(a.loss, LossKind::Focal { gamma: 1.5 });
        assert!(a.validate(Some(2)).is_ok());
        assert!(a.validate(Some(3)).is_err());
        assert!(serde_json::from_str::<TrainingArgs>(r#"{"lr": 1}"#).is_err());
        assert!(
            serde_json::from_str::<TrainingArgs>(r#"{"loss": {"focal": {"gamma": 2, "x": 1}}}"#)
                .is_err()
        );
    }
}
