//! Studies: several models × hyper-parameter configurations × seeds in one request. Each
//! trial is an ordinary job of the durable queue (it records its study, index and searched
//! parameters); the study picks its best configuration on the mean validation metric over
//! seeds — never on test — and reports every configuration's test scores with their spread,
//! and a paired bootstrap of the two best models' test F1 difference.
//!
//! [`StudySpec::expand`] turns a spec into its trials; `prune` decides early stops,
//! `summary` computes the comparison from stored results, `lifecycle` ties trials to the
//! study (start, end, settle, cancel).

pub mod lifecycle;
pub mod prune;
pub mod summary;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::spec::{DatasetRef, HubSpec, JobSpec, ModelRef};
use crate::train::args::BestMetric;
use crate::validate::{FieldError, from_value};

fn d_seeds() -> Vec<u64> {
    vec![42]
}

/// A study request (`POST /v1/studies`, `metafora study STUDY.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Base checkpoints compared (`checkpoint`, `name`, `revision` as in a job).
    pub models: Vec<ModelRef>,
    pub dataset: DatasetRef,
    /// Every configuration runs once per seed.
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    /// Base `training` object of every trial (a job's `training`); searched fields override it.
    #[serde(default)]
    pub training: Map<String, Value>,
    #[serde(default)]
    pub search: Option<Search>,
    #[serde(default)]
    pub pruning: Option<Pruning>,
    /// Validation metric the best configuration is chosen by (mean over seeds).
    #[serde(default)]
    pub select_by: BestMetric,
    /// Serve the best configuration's best seed under this name when the study succeeds.
    #[serde(default)]
    pub deploy_best_as: Option<String>,
    /// Push the best configuration's best seed to the Hub when the study succeeds.
    #[serde(default)]
    pub hub: HubSpec,
}

/// How configurations are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Search {
    /// Every combination of the listed values (fields in name order).
    Grid(BTreeMap<String, Vec<Value>>),
    Random(RandomSearch),
}

/// `trials` configurations drawn from `space` with `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomSearch {
    pub trials: usize,
    pub space: BTreeMap<String, Distribution>,
    #[serde(default)]
    pub seed: u64,
}

/// A search distribution of one `training` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    Uniform([f64; 2]),
    LogUniform([f64; 2]),
    /// Integers from `lo` to `hi`, both included.
    IntUniform([i64; 2]),
    Choice(Vec<Value>),
}

/// Early stopping of unpromising trials, compared at the same epoch on the `select_by`
/// validation metric with the study's other trials **of the same model and another
/// configuration** (a configuration's other seeds are not its bar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pruning {
    Median(MedianRule),
    Halving(HalvingRule),
}

fn d_one() -> usize {
    1
}
fn d_two() -> usize {
    2
}
fn d_three() -> usize {
    3
}

/// From epoch `after_epochs` on, stop a trial that is worse than the median of its peers,
/// once it has at least `min_peers` of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedianRule {
    #[serde(default = "d_one")]
    pub after_epochs: usize,
    #[serde(default = "d_two")]
    pub min_peers: usize,
}

/// Asynchronous successive halving: at epochs `min_epochs · reduction_factorᵏ` a trial goes on
/// only if it is in the top `1 / reduction_factor` of the trials that reached that epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HalvingRule {
    #[serde(default = "d_one")]
    pub min_epochs: usize,
    #[serde(default = "d_three")]
    pub reduction_factor: usize,
}

/// One trial: a model, a configuration of the searched fields, a seed, and its job spec.
#[derive(Debug, Clone)]
pub struct Trial {
    pub model: usize,
    pub params: Map<String, Value>,
    pub seed: u64,
    pub spec: JobSpec,
}

/// Trainer settings that belong to the study, not to its trials.
const STUDY_LEVEL: [(&str, &str); 5] = [
    ("push_to_hub", "hub"),
    ("hub_model_id", "hub"),
    ("hub_private_repo", "hub"),
    (
        "output_dir",
        "the service (trial artifacts live under --data-dir)",
    ),
    ("seed", "seeds"),
];

/// Fields of `training` a search may not set.
const NOT_SEARCHABLE: [&str; 4] = [
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "output_dir",
];

fn check_name(field: &str, v: &str, max: usize) -> Result<(), FieldError> {
    if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            format!("must be 1-{max} printable characters, got {v:?}"),
        ));
    }
    Ok(())
}

impl StudySpec {
    /// Parses, validates and expands a study; at most `max_trials` trials. Errors name the
    /// field (`search.grid.learning_rate`, `models[1].checkpoint`).
    pub fn parse(json: &[u8], max_trials: usize) -> Result<(StudySpec, Vec<Trial>), FieldError> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| FieldError::new("body", format!("is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(FieldError::new("body", "must be a JSON object"));
        }
        let spec: StudySpec = from_value(value)?;
        let trials = spec.expand(max_trials)?;
        Ok((spec, trials))
    }

    fn validate(&self) -> Result<(), FieldError> {
        if let Some(n) = &self.name {
            check_name("name", n, 200)?;
        }
        if self.models.is_empty() {
            return Err(FieldError::new("models", "needs at least one model"));
        }
        if self.models.len() > 50 {
            return Err(FieldError::new("models", "at most 50 models"));
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, m) in self.models.iter().enumerate() {
            if let Some(j) = names.insert(m.display_name(), i) {
                return Err(FieldError::new(
                    format!("models[{i}].name"),
                    format!(
                        "{:?} is also models[{j}]'s name: give each model a distinct name",
                        m.display_name()
                    ),
                ));
            }
        }
        if self.seeds.is_empty() || self.seeds.len() > 100 {
            return Err(FieldError::new("seeds", "needs 1 to 100 seeds"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(s) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            return Err(FieldError::new("seeds", format!("has {s} twice")));
        }
        for (key, owner) in STUDY_LEVEL {
            if self.training.contains_key(key) {
                return Err(FieldError::new(
                    format!("training.{key}"),
                    format!("is set by the study's {owner}"),
                ));
            }
        }
        match &self.pruning {
            Some(Pruning::Median(m)) if m.min_peers == 0 => {
                return Err(FieldError::new(
                    "pruning.median.min_peers",
                    "must be >= 1, got 0",
                ));
            }
            Some(Pruning::Median(m)) if m.after_epochs == 0 => {
                return Err(FieldError::new(
                    "pruning.median.after_epochs",
                    "must be >= 1, got 0",
                ));
            }
            Some(Pruning::Halving(h)) if h.min_epochs == 0 => {
                return Err(FieldError::new(
                    "pruning.halving.min_epochs",
                    "must be >= 1, got 0",
                ));
            }
            Some(Pruning::Halving(h)) if !(2..=100).contains(&h.reduction_factor) => {
                return Err(FieldError::new(
                    "pruning.halving.reduction_factor",
                    format!("must be in [2, 100], got {}", h.reduction_factor),
                ));
            }
            _ => {}
        }
        if let Some(name) = &self.deploy_best_as
            && (!(1..=64).contains(&name.len())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(FieldError::new(
                "deploy_best_as",
                format!("must be 1-64 letters, digits, '-', '_' or '.', got {name:?}"),
            ));
        }
        Ok(())
    }

    /// Refuses a study of more than `max` trials with `configs` configurations, before they are
    /// built.
    fn check_size(&self, configs: usize, max: usize) -> Result<(), FieldError> {
        let total = self
            .models
            .len()
            .saturating_mul(configs)
            .saturating_mul(self.seeds.len());
        if total <= max {
            return Ok(());
        }
        let field = if self.search.is_some() {
            "search"
        } else {
            "seeds"
        };
        Err(FieldError::new(
            field,
            format!(
                "makes {total} trials ({} models × {configs} configurations × {} seeds), more than the {max} allowed (--max-study-trials)",
                self.models.len(),
                self.seeds.len()
            ),
        ))
    }

    /// The configurations (searched fields only) in trial order.
    pub fn configurations(&self, max: usize) -> Result<Vec<Map<String, Value>>, FieldError> {
        match &self.search {
            None => Ok(vec![Map::new()]),
            Some(Search::Grid(grid)) => {
                if grid.is_empty() {
                    return Err(FieldError::new("search.grid", "needs at least one field"));
                }
                let mut count: usize = 1;
                for (k, values) in grid {
                    check_searchable(&format!("search.grid.{k}"), k)?;
                    if values.is_empty() || values.len() > 1000 {
                        return Err(FieldError::new(
                            format!("search.grid.{k}"),
                            "needs 1 to 1000 values",
                        ));
                    }
                    count = count.saturating_mul(values.len());
                }
                self.check_size(count, max)?;
                let mut out = vec![Map::new()];
                for (k, values) in grid {
                    out = out
                        .into_iter()
                        .flat_map(|c| {
                            values.iter().map(move |v| {
                                let mut c = c.clone();
                                c.insert(k.clone(), v.clone());
                                c
                            })
                        })
                        .collect();
                }
                Ok(out)
            }
            Some(Search::Random(r)) => {
                if r.trials == 0 {
                    return Err(FieldError::new(
                        "search.random.trials",
                        "must be >= 1, got 0",
                    ));
                }
                self.check_size(r.trials, max)?;
                if r.space.is_empty() {
                    return Err(FieldError::new(
                        "search.random.space",
                        "needs at least one field",
                    ));
                }
                for (k, d) in &r.space {
                    let field = format!("search.random.space.{k}");
                    check_searchable(&field, k)?;
                    check_distribution(&field, d)?;
                }
                let mut rng = StdRng::seed_from_u64(r.seed);
                Ok((0..r.trials)
                    .map(|_| {
                        r.space
                            .iter()
                            .map(|(k, d)| (k.clone(), draw(d, &mut rng)))
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// Validates the spec and builds its trials: for each model, each configuration, each
    /// seed. Every trial's job spec is validated; a searched value the job spec refuses is an
    /// error on the search field.
    pub fn expand(&self, max_trials: usize) -> Result<Vec<Trial>, FieldError> {
        self.validate()?;
        let configs = self.configurations(max_trials)?;
        self.check_size(configs.len(), max_trials)?;
        let total = self.models.len() * configs.len() * self.seeds.len();
        // The base training alone first, so its errors keep their own names.
        self.trial_spec(0, &Map::new(), self.seeds[0])?;
        let search_field = match &self.search {
            Some(Search::Random(_)) => "search.random.space",
            _ => "search.grid",
        };
        let mut trials = Vec::with_capacity(total);
        for (m, _) in self.models.iter().enumerate() {
            for params in &configs {
                for seed in &self.seeds {
                    let spec = self.trial_spec(m, params, *seed).map_err(|e| {
                        let key = e.field.strip_prefix("training.").and_then(|rest| {
                            params
                                .keys()
                                .find(|k| rest == k.as_str() || rest.starts_with(&format!("{k}.")))
                        });
                        match key {
                            Some(k) => FieldError::new(
                                format!("{search_field}.{k}"),
                                format!("value {} is refused: {e}", params[k]),
                            ),
                            None => e,
                        }
                    })?;
                    trials.push(Trial {
                        model: m,
                        params: params.clone(),
                        seed: *seed,
                        spec,
                    });
                }
            }
        }
        Ok(trials)
    }

    /// The job spec of model `m` with `params` over the base training and `seed`.
    fn trial_spec(
        &self,
        m: usize,
        params: &Map<String, Value>,
        seed: u64,
    ) -> Result<JobSpec, FieldError> {
        let mut training = self.training.clone();
        for (k, v) in params {
            training.insert(k.clone(), v.clone());
        }
        let job = json!({
            "model": self.models[m],
            "dataset": self.dataset,
            "training": training,
            "seed": seed,
        });
        JobSpec::parse(job.to_string().as_bytes()).map_err(|e| {
            match e.field.strip_prefix("model") {
                Some(rest) => FieldError::new(format!("models[{m}]{rest}"), e.message),
                None => e,
            }
        })
    }
}

fn check_searchable(field: &str, key: &str) -> Result<(), FieldError> {
    if NOT_SEARCHABLE.contains(&key) || key == "seed" {
        return Err(FieldError::new(
            field,
            "cannot be searched (seeds have their own list; Hub and output settings belong to the study)",
        ));
    }
    Ok(())
}

fn check_distribution(field: &str, d: &Distribution) -> Result<(), FieldError> {
    let bad = |m: String| Err(FieldError::new(field, m));
    match d {
        Distribution::Uniform([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
            bad(format!("uniform needs finite lo <= hi, got [{lo}, {hi}]"))
        }
        Distribution::LogUniform([lo, hi])
            if !(lo.is_finite() && hi.is_finite() && *lo > 0.0 && lo <= hi) =>
        {
            bad(format!("log_uniform needs 0 < lo <= hi, got [{lo}, {hi}]"))
        }
        Distribution::IntUniform([lo, hi]) if lo > hi => {
            bad(format!("int_uniform needs lo <= hi, got [{lo}, {hi}]"))
        }
        Distribution::Choice(v) if v.is_empty() || v.len() > 1000 => {
            bad("choice needs 1 to 1000 values".into())
        }
        _ => Ok(()),
    }
}

fn draw(d: &Distribution, rng: &mut StdRng) -> Value {
    match d {
        Distribution::Uniform([lo, hi]) => json!(lo + (hi - lo) * rng.random::<f64>()),
        Distribution::LogUniform([lo, hi]) => {
            let (a, b) = (lo.ln(), hi.ln());
            json!((a + (b - a) * rng.random::<f64>()).exp())
        }
        Distribution::IntUniform([lo, hi]) => json!(rng.random_range(*lo..=*hi)),
        Distribution::Choice(v) => v[rng.random_range(0..v.len())].clone(),
    }
}
