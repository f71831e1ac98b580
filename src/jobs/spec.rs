//! The job spec: one JSON shape for `metafora train JOB.json` and `POST /v1/jobs`.
//!
//! Unknown fields are rejected and every error names the field
//! (`training.learning_rate must be > 0, got -1`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::train::TrainingArgs;
use crate::validate::{FieldError, JsonError, from_json};

fn d_seed() -> u64 {
    42
}
fn d_train() -> String {
    "train".into()
}
fn d_validation() -> String {
    "validation".into()
}
fn d_test() -> String {
    "test".into()
}
fn d_tokens() -> String {
    "tokens".into()
}
fn d_tags() -> String {
    "tags".into()
}
fn d_true() -> bool {
    true
}

/// The base checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Local HF model directory or Hub id (`projecte-aina/roberta-large-ca-v2`); the notebook's
    /// `model_checkpoint`.
    pub checkpoint: String,
    /// Display name (the CSV `model` column); defaults to the checkpoint's last path segment.
    #[serde(default)]
    pub name: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[serde(default)]
    pub revision: Option<String>,
}

impl ModelRef {
    /// The CSV `model` value.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.checkpoint
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(&self.checkpoint)
                .to_string()
        })
    }
}

/// Where the data comes from: exactly one of `path`, `hub_id`, `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    /// Local dataset folder.
    #[serde(default)]
    pub path: Option<String>,
    /// Hub dataset id (`mariadelcarmenramirez/metaphor-catalan-iter1`).
    #[serde(default)]
    pub hub_id: Option<String>,
    /// An uploaded dataset (`POST /v1/datasets`).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default = "d_train")]
    pub train_split: String,
    #[serde(default = "d_validation")]
    pub validation_split: String,
    #[serde(default = "d_test")]
    pub test_split: String,
    #[serde(default = "d_tokens")]
    pub tokens_column: String,
    #[serde(default = "d_tags")]
    pub tags_column: String,
    /// Label names by id when the dataset carries none.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
}

/// Where results go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output directory (CLI default `runs/<model>-<seed>`; the service uses its data dir).
    #[serde(default)]
    pub dir: Option<String>,
    /// CSV the run appends its row to (default `<dir>/results.csv`).
    #[serde(default)]
    pub results_csv: Option<String>,
}

/// Pushing the result to the Hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpec {
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub repo_id: Option<String>,
    #[serde(default = "d_true")]
    pub private: bool,
}

impl Default for HubSpec {
    fn default() -> Self {
        HubSpec {
            push: false,
            repo_id: None,
            private: true,
        }
    }
}

/// A training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub model: ModelRef,
    pub dataset: DatasetRef,
    #[serde(default)]
    pub training: TrainingArgs,
    /// Seeds the head, the shuffles and dropout.
    #[serde(default = "d_seed")]
    pub seed: u64,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub hub: HubSpec,
    /// Deploy the best checkpoint under this model name when the job succeeds.
    #[serde(default)]
    pub deploy_as: Option<String>,
    /// Run only on a worker with this kind of device (`cpu` or `cuda`); any worker when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
}

/// A kind of compute device a job may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Names accepted by [`JobSpec::preset`].
pub const PRESETS: [&str; 1] = ["demo"];

fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn check_name(field: &str, v: &str) -> Result<(), FieldError> {
    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            format!("must be 1-200 printable characters, got {v:?}"),
        ));
    }
    Ok(())
}

impl JobSpec {
    /// Parses and validates a spec; errors name the field.
    pub fn parse(json: &[u8]) -> Result<JobSpec, FieldError> {
        let mut spec: JobSpec = from_json(json).map_err(|e| match e {
            JsonError::Field(f) => f,
            JsonError::Syntax(m) => FieldError::new("body", format!("is not valid JSON: {m}")),
        })?;
        // serde also reads a struct from a JSON array of its fields (`"output": [null, null]`);
        // the documented shape is an object.
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| FieldError::new("body", e.to_string()))?;
        for pointer in [
            "/model",
            "/dataset",
            "/training",
            "/output",
            "/hub",
            "/training/loss/focal",
        ] {
            if value.pointer(pointer).is_some_and(|v| v.is_array()) {
                return Err(FieldError::new(
                    pointer[1..].replace('/', "."),
                    "must be an object, got an array",
                ));
            }
        }
        spec.absorb_trainer_names(value.get("hub").is_some())?;
        spec.validate()?;
        Ok(spec)
    }

    /// Moves what `training` carried under Hugging Face `TrainingArguments` names into the
    /// spec (`push_to_hub`, `hub_model_id`, `hub_private_repo` -> `hub`, `output_dir` ->
    /// `output.dir`), so the stored spec has one name for each setting.
    fn absorb_trainer_names(&mut self, hub_given: bool) -> Result<(), FieldError> {
        let hf = self.training.normalize()?;
        let hub_names = [
            ("training.push_to_hub", hf.push_to_hub.is_some()),
            ("training.hub_model_id", hf.hub_model_id.is_some()),
            ("training.hub_private_repo", hf.hub_private_repo.is_some()),
        ];
        if let Some((name, _)) = hub_names.iter().find(|(_, given)| *given)
            && hub_given
        {
            return Err(FieldError::new(
                *name,
                "give the hub object or the Trainer's names, not both",
            ));
        }
        if let Some(push) = hf.push_to_hub {
            self.hub.push = push;
        }
        if let Some(repo) = hf.hub_model_id {
            self.hub.repo_id = Some(repo);
        }
        if let Some(private) = hf.hub_private_repo {
            self.hub.private = private;
        }
        if let Some(dir) = hf.output_dir {
            if self.output.dir.is_some() {
                return Err(FieldError::new(
                    "training.output_dir",
                    "give output.dir or training.output_dir, not both",
                ));
            }
            self.output.dir = Some(dir);
        }
        Ok(())
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("model.checkpoint", &self.model.checkpoint)?;
        if let Some(n) = &self.model.name {
            check_name("model.name", n)?;
        }
        for (field, rev) in [
            ("model.revision", &self.model.revision),
            ("dataset.revision", &self.dataset.revision),
        ] {
            if let Some(r) = rev
                && !crate::hub::is_valid_revision(r)
            {
                return Err(FieldError::new(
                    field,
                    format!("must be a branch or tag name or a 40-hex commit id, got {r:?}"),
                ));
            }
        }
        let d = &self.dataset;
        let sources = [d.path.is_some(), d.hub_id.is_some(), d.id.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if sources != 1 {
            return Err(FieldError::new(
                "dataset",
                "needs exactly one of path, hub_id or id",
            ));
        }
        if let Some(h) = &d.hub_id
            && !is_hub_id(h)
        {
            return Err(FieldError::new(
                "dataset.hub_id",
                format!("must look like owner/name, got {h:?}"),
            ));
        }
        for (f, v) in [
            ("dataset.train_split", &d.train_split),
            ("dataset.validation_split", &d.validation_split),
            ("dataset.test_split", &d.test_split),
            ("dataset.tokens_column", &d.tokens_column),
            ("dataset.tags_column", &d.tags_column),
        ] {
            check_name(f, v)?;
        }
        if let Some(labels) = &d.labels {
            if labels.len() < 2 {
                return Err(FieldError::new("dataset.labels", "needs at least 2 labels"));
            }
            crate::metrics::LabelScheme::new(labels)
                .map_err(|e| FieldError::new("dataset.labels", e.to_string()))?;
        }
        self.training.validate(d.labels.as_ref().map(|l| l.len()))?;
        if self.hub.push
            && self
                .hub
                .repo_id
                .as_deref()
                .is_none_or(|r| !is_hub_id(r) || !r.contains('/'))
        {
            return Err(FieldError::new(
                "hub.repo_id",
                "must be owner/name when hub.push is true",
            ));
        }
        if let Some(name) = &self.deploy_as
            && !(1..=64).contains(&name.len())
        {
            return Err(FieldError::new("deploy_as", "must be 1-64 characters"));
        }
        if let Some(name) = &self.deploy_as
            && !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(FieldError::new(
                "deploy_as",
                format!("may use letters, digits, '-', '_' and '.', got {name:?}"),
            ));
        }
        Ok(())
    }

    /// A named spec: `demo` fine-tunes the bundled `mini-roberta-ca` on the bundled Catalan
    /// metaphor data (lr 5e-4, 20 epochs). `None` for an unknown name (see [`PRESETS`]).
    pub fn preset(name: &str, assets: &Path) -> Option<JobSpec> {
        let json = match name {
            "demo" => serde_json::json!({
                "model": {"checkpoint": assets.join("models/mini-roberta-ca"), "name": "mini-roberta-ca"},
                "dataset": {"path": assets.join("data/ca_meta4xnli")},
                "training": {"learning_rate": 5e-4, "num_train_epochs": 20},
                "seed": 42
            }),
            _ => return None,
        };
        Some(JobSpec::parse(json.to_string().as_bytes()).expect("presets are valid: this is a bug"))
    }

    /// The notebook's CSV row for this job, to be filled with its outcome.
    pub fn csv_row(&self) -> crate::train::report::CsvRow {
        crate::train::report::CsvRow::new(
            &self.model.display_name(),
            &self.model.checkpoint,
            self.seed,
            self.training.gradient_accumulation_steps,
        )
    }

    /// Whether `model.checkpoint` names a Hub repository rather than a local directory.
    pub fn model_is_hub(&self) -> bool {
        let c = &self.model.checkpoint;
        !(c.starts_with('/')
            || c.starts_with('.')
            || c.starts_with('~')
            || std::path::Path::new(c).exists())
            && is_hub_id(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<JobSpec, FieldError> {
        JobSpec::parse(s.as_bytes())
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse(r#"{"model": {"checkpoint": "x/y"}, "dataset": {"path": "d"}}"#).unwrap();
        assert_eq!(s.seed, 42);
        assert_eq!(s.training.learning_rate, 2e-5);
        assert_eq!(s.model.display_name(), "y");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"model": {"checkpoint": "x"}, "dataset": {"path": "d"}, "training": {"learning_rate": -1}}"#).unwrap_err();
        assert_eq!(e.to_string(), "training.learning_rate must be > 0, got -1");
        let e = parse(
            r#"{"model": {"checkpoint": "x"}, "dataset": {"path": "d"}, "training": {"lr": 1}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "training.lr");
        let e = parse(r#"{"model": {"checkpoint": "x"}, "dataset": {"path": "d"}, "seed": "a"}"#)
            .unwrap_err();
        assert_eq!(e.field, "seed");
        let e =
            parse(r#"{"model": {"checkpoint": "x"}, "dataset": {"path": "d", "hub_id": "a/b"}}"#)
                .unwrap_err();
        assert_eq!(e.field, "dataset");
        let e = parse(r#"{"model": {"checkpoint": "x"}}"#).unwrap_err();
        assert_eq!(e.field, "dataset");
        let e = parse(r#"{"model": {}, "dataset": {"path": "d"}}"#).unwrap_err();
        assert_eq!(e.field, "model.checkpoint");
    }

    #[test]
    fn trainer_names_pasted_from_a_notebook_are_understood() {
        let s = parse(
            r#"{"model": {"checkpoint": "x/y"}, "dataset": {"path": "d"}, "training": {
                "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "fp16": false, "bf16": false,
                "push_to_hub": true, "hub_model_id": "me/m", "hub_private_repo": false,
                "output_dir": "runs/x", "metric_for_best_model": "eval_f1"}}"#,
        )
        .unwrap();
        let t = &s.training;
        assert_eq!(t.lr_scheduler, crate::train::schedule::LrScheduler::Cosine);
        assert_eq!(t.warmup_steps, 0.1);
        assert_eq!(t.metric_for_best_model, crate::train::args::BestMetric::F1);
        assert_eq!(
            (s.hub.push, s.hub.repo_id.as_deref(), s.hub.private),
            (true, Some("me/m"), false)
        );
        assert_eq!(s.output.dir.as_deref(), Some("runs/x"));
        // Stored under one name each.
        let stored = serde_json::to_value(&s).unwrap();
        for k in [
            "warmup_ratio",
            "fp16",
            "push_to_hub",
            "output_dir",
            "lr_scheduler_type",
        ] {
            assert!(stored["training"].get(k).is_none(), "{k} in {stored}");
        }
        assert_eq!(JobSpec::parse(stored.to_string().as_bytes()).unwrap(), s);
        let bad = |training: &str| {
            parse(&format!(
                r#"{{"model": {{"checkpoint": "x/y"}}, "dataset": {{"path": "d"}}, "training": {training}}}"#
            ))
            .unwrap_err()
            .field
        };
        assert_eq!(bad(r#"{"fp16": true}"#), "training.fp16");
        assert_eq!(bad(r#"{"bf16": true}"#), "training.bf16");
        assert_eq!(
            bad(r#"{"warmup_ratio": 0.1, "warmup_steps": 5}"#),
            "training.warmup_ratio"
        );
        assert_eq!(bad(r#"{"warmup_ratio": 1.5}"#), "training.warmup_ratio");
        assert_eq!(
            bad(r#"{"metric_for_best_model": "eval_bleu"}"#),
            "training.metric_for_best_model"
        );
        assert_eq!(
            bad(r#"{"eval_train_subset": 0}"#),
            "training.eval_train_subset"
        );
        let e = parse(
            r#"{"model": {"checkpoint": "x/y"}, "dataset": {"path": "d"}, "hub": {"push": false}, "training": {"push_to_hub": true}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "training.push_to_hub");
    }
}
