//! A study's results from what its trials stored: per trial, per configuration (mean and
//! sample standard deviation over seeds), the best configuration by mean validation metric,
//! the paired bootstrap of the two best models, and the two CSVs.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use super::StudySpec;
use crate::metrics::compare::{BootstrapDiff, mean_std, paired_bootstrap};
use crate::metrics::{Counts, Prf};
use crate::store::StoreError;
use crate::store::jobs::{JobRow, JobStatus};
use crate::store::results::{EpochRow, EvaluationRow, parse_sentence_counts};
use crate::store::studies::{StudyRow, StudyStatus};
use crate::train::args::BestMetric;
use crate::train::report::{CSV_COLUMNS, csv_table};

/// Resamples and seed of the paired bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
pub const BOOTSTRAP_SEED: u64 = 0;

/// Validation scores of a trial's best epoch.
#[derive(Debug, Clone, Serialize)]
pub struct ValScores {
    pub epoch: i64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub accuracy: f64,
    pub loss: f64,
}

impl ValScores {
    fn get(&self, m: BestMetric) -> f64 {
        match m {
            BestMetric::F1 => self.f1,
            BestMetric::Precision => self.precision,
            BestMetric::Recall => self.recall,
            BestMetric::Accuracy => self.accuracy,
            BestMetric::Loss => self.loss,
        }
    }
}

/// Fine-tuned test scores of a trial.
#[derive(Debug, Clone, Serialize)]
pub struct TestScores {
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub accuracy: f64,
    pub per_label: BTreeMap<String, Prf>,
}

/// One trial as the study shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrialView {
    pub trial: i64,
    pub job_id: String,
    pub model: String,
    pub seed: u64,
    pub params: Map<String, Value>,
    pub status: JobStatus,
    pub val_f1: Option<f64>,
    pub test_f1: Option<f64>,
    pub val: Option<ValScores>,
    pub test: Option<TestScores>,
    pub base_test_f1: Option<f64>,
    pub best_epoch: Option<i64>,
    pub epochs_run: usize,
    pub epochs_planned: usize,
    pub pruned: bool,
    pub error: Option<String>,
    #[serde(skip)]
    pub sentence_counts: Option<Vec<Counts>>,
    #[serde(skip)]
    pub spec: Value,
}

/// Mean and sample standard deviation (null below two values).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: Option<f64>,
}

fn spread(v: &[f64]) -> Option<Spread> {
    mean_std(v).map(|(mean, std)| Spread { mean, std })
}

/// Per-label test means over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct LabelSummary {
    pub test_f1_mean: f64,
    pub test_f1_std: Option<f64>,
    pub test_precision_mean: f64,
    pub test_recall_mean: f64,
}

/// One configuration (model + searched parameters) over its seeds; succeeded trials only.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    pub model: String,
    pub params: Map<String, Value>,
    /// Succeeded trials (seeds) the figures are over.
    pub n: usize,
    pub failed: usize,
    pub pruned: usize,
    pub val_f1_mean: Option<f64>,
    pub val_f1_std: Option<f64>,
    /// The `select_by` validation metric (same as `val_f1_*` for `f1`).
    pub val_selected_mean: Option<f64>,
    pub val_selected_std: Option<f64>,
    pub test_f1_mean: Option<f64>,
    pub test_f1_std: Option<f64>,
    pub test_precision_mean: Option<f64>,
    pub test_recall_mean: Option<f64>,
    pub test_accuracy_mean: Option<f64>,
    pub per_label: BTreeMap<String, LabelSummary>,
    pub epochs_run_mean: Option<f64>,
    pub job_ids: Vec<String>,
}

/// The configuration chosen on validation.
#[derive(Debug, Clone, Serialize)]
pub struct Best {
    pub model: String,
    pub params: Map<String, Value>,
    pub val_f1_mean: Option<f64>,
    pub val_selected_mean: Option<f64>,
    pub test_f1_mean: Option<f64>,
    pub job_ids: Vec<String>,
    /// The seed of that configuration with the best validation metric: the model deployed or
    /// pushed.
    pub best_job_id: String,
}

/// A configuration named in a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRef {
    pub model: String,
    pub params: Map<String, Value>,
    pub test_f1_mean: Option<f64>,
}

/// The best configuration against the runner-up (the best configuration of another model
/// when there is one): test F1 difference with a paired bootstrap over test sentences.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: ConfigRef,
    pub b: ConfigRef,
    #[serde(flatten)]
    pub bootstrap: BootstrapDiff,
}

/// Everything `GET /v1/studies/{id}` returns.
#[derive(Debug, Clone, Serialize)]
pub struct StudyView {
    pub id: String,
    pub name: Option<String>,
    pub status: StudyStatus,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub select_by: BestMetric,
    /// Trials per status.
    pub counts: BTreeMap<String, usize>,
    pub trials: Vec<TrialView>,
    pub summary: Vec<ConfigSummary>,
    pub best: Option<Best>,
    pub comparison: Option<Comparison>,
    /// Epochs pruned trials did not run.
    pub epochs_saved: usize,
    pub spec: Value,
}

fn trial_view(
    job: &JobRow,
    epochs: &[&EpochRow],
    evals: &[&EvaluationRow],
) -> Result<TrialView, StoreError> {
    let spec: Value = serde_json::from_str(&job.spec)?;
    let params: Map<String, Value> = job
        .params
        .as_deref()
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    let model = match serde_json::from_value::<crate::jobs::spec::JobSpec>(spec.clone()) {
        Ok(s) => s.model.display_name(),
        Err(_) => String::new(),
    };
    let val = job.best_epoch.and_then(|b| {
        epochs.iter().find(|e| e.epoch == b).map(|e| ValScores {
            epoch: e.epoch,
            f1: e.f1,
            precision: e.precision,
            recall: e.recall,
            accuracy: e.accuracy,
            loss: e.eval_loss,
        })
    });
    let fin = evals.iter().find(|e| e.kind == "finetuned");
    let test = fin
        .map(|e| -> Result<TestScores, StoreError> {
            Ok(TestScores {
                f1: e.f1,
                precision: e.precision,
                recall: e.recall,
                accuracy: e.accuracy,
                per_label: e.per_label()?,
            })
        })
        .transpose()?;
    let succeeded = job.status == JobStatus::Succeeded;
    Ok(TrialView {
        trial: job.trial.unwrap_or_default(),
        job_id: job.id.clone(),
        model,
        seed: spec["seed"].as_u64().unwrap_or_default(),
        params,
        status: job.status,
        val_f1: val.as_ref().filter(|_| succeeded).map(|v| v.f1),
        test_f1: test.as_ref().filter(|_| succeeded).map(|t| t.f1),
        val: val.filter(|_| succeeded),
        test: test.filter(|_| succeeded),
        base_test_f1: evals.iter().find(|e| e.kind == "base").map(|e| e.f1),
        best_epoch: job.best_epoch,
        epochs_run: epochs.len(),
        epochs_planned: spec["training"]["num_train_epochs"]
            .as_u64()
            .unwrap_or_default() as usize,
        pruned: job.pruned != 0,
        error: job.error.clone(),
        sentence_counts: fin
            .and_then(|e| e.sentence_counts.as_deref())
            .map(parse_sentence_counts)
            .transpose()?,
        spec,
    })
}

fn config_key(t: &TrialView) -> (String, String) {
    (t.model.clone(), Value::Object(t.params.clone()).to_string())
}

fn summarize(trials: &[&TrialView], select_by: BestMetric) -> ConfigSummary {
    let ok: Vec<&&TrialView> = trials
        .iter()
        .filter(|t| t.status == JobStatus::Succeeded && t.val.is_some() && t.test.is_some())
        .collect();
    let col = |f: &dyn Fn(&TrialView) -> f64| -> Vec<f64> { ok.iter().map(|t| f(t)).collect() };
    let val_f1 = spread(&col(&|t| t.val.as_ref().map_or(0.0, |v| v.f1)));
    let val_sel = spread(&col(&|t| t.val.as_ref().map_or(0.0, |v| v.get(select_by))));
    let test_f1 = spread(&col(&|t| t.test.as_ref().map_or(0.0, |v| v.f1)));
    let mean = |f: &dyn Fn(&TrialView) -> f64| spread(&col(f)).map(|s| s.mean);
    let mut labels: Vec<String> = ok
        .iter()
        .flat_map(|t| {
            t.test
                .as_ref()
                .map(|x| x.per_label.keys().cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    labels.sort();
    labels.dedup();
    let per_label = labels
        .into_iter()
        .map(|l| {
            let get = |f: &dyn Fn(&Prf) -> f64| -> Vec<f64> {
                ok.iter()
                    .map(|t| {
                        t.test
                            .as_ref()
                            .and_then(|x| x.per_label.get(&l))
                            .map_or(0.0, f)
                    })
                    .collect()
            };
            let f1 = spread(&get(&|p| p.f1));
            let summary = LabelSummary {
                test_f1_mean: f1.map_or(0.0, |s| s.mean),
                test_f1_std: f1.and_then(|s| s.std),
                test_precision_mean: spread(&get(&|p| p.precision)).map_or(0.0, |s| s.mean),
                test_recall_mean: spread(&get(&|p| p.recall)).map_or(0.0, |s| s.mean),
            };
            (l, summary)
        })
        .collect();
    ConfigSummary {
        model: trials[0].model.clone(),
        params: trials[0].params.clone(),
        n: ok.len(),
        failed: trials
            .iter()
            .filter(|t| matches!(t.status, JobStatus::Failed | JobStatus::Interrupted))
            .count(),
        pruned: ok.iter().filter(|t| t.pruned).count(),
        val_f1_mean: val_f1.map(|s| s.mean),
        val_f1_std: val_f1.and_then(|s| s.std),
        val_selected_mean: val_sel.map(|s| s.mean),
        val_selected_std: val_sel.and_then(|s| s.std),
        test_f1_mean: test_f1.map(|s| s.mean),
        test_f1_std: test_f1.and_then(|s| s.std),
        test_precision_mean: mean(&|t| t.test.as_ref().map_or(0.0, |v| v.precision)),
        test_recall_mean: mean(&|t| t.test.as_ref().map_or(0.0, |v| v.recall)),
        test_accuracy_mean: mean(&|t| t.test.as_ref().map_or(0.0, |v| v.accuracy)),
        per_label,
        epochs_run_mean: spread(&col(&|t| t.epochs_run as f64)).map(|s| s.mean),
        job_ids: trials.iter().map(|t| t.job_id.clone()).collect(),
    }
}

/// Whether `a` ranks above `b` on the selected validation mean (ties keep the earlier).
fn ranks_above(a: f64, b: f64, select_by: BestMetric) -> bool {
    if select_by.higher_is_better() {
        a > b
    } else {
        a < b
    }
}

/// Configurations with a result, best first on the selected validation mean (ties keep the
/// earlier).
fn rank(summary: &[ConfigSummary], select_by: BestMetric) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..summary.len())
        .filter(|i| summary[*i].val_selected_mean.is_some())
        .collect();
    ranked.sort_by(|a, b| {
        let (x, y) = (
            summary[*a].val_selected_mean.unwrap_or_default(),
            summary[*b].val_selected_mean.unwrap_or_default(),
        );
        if ranks_above(x, y, select_by) {
            std::cmp::Ordering::Less
        } else if ranks_above(y, x, select_by) {
            std::cmp::Ordering::Greater
        } else {
            a.cmp(b)
        }
    });
    ranked
}

/// The best configuration, and among its seeds the trial with the best validation metric.
fn best_of(c: &ConfigSummary, trials: &[&TrialView], select_by: BestMetric) -> Best {
    let score = |t: &TrialView| t.val.as_ref().map_or(0.0, |v| v.get(select_by));
    let best_job = trials
        .iter()
        .filter(|t| t.status == JobStatus::Succeeded && t.val.is_some())
        .fold(None::<&&TrialView>, |acc, t| match acc {
            Some(a) if !ranks_above(score(t), score(a), select_by) => Some(a),
            _ => Some(t),
        })
        .map(|t| t.job_id.clone())
        .unwrap_or_default();
    Best {
        model: c.model.clone(),
        params: c.params.clone(),
        val_f1_mean: c.val_f1_mean,
        val_selected_mean: c.val_selected_mean,
        test_f1_mean: c.test_f1_mean,
        job_ids: c.job_ids.clone(),
        best_job_id: best_job,
    }
}

/// The best configuration against the best of another model (else the second best), by a
/// paired bootstrap over the test sentences of their succeeded trials.
fn compare<'a>(
    summary: &[ConfigSummary],
    ranked: &[usize],
    group: &dyn Fn(usize) -> &'a [&'a TrialView],
) -> Option<Comparison> {
    let first = *ranked.first()?;
    let other_model = ranked
        .iter()
        .skip(1)
        .find(|i| summary[**i].model != summary[first].model);
    let second = *other_model.or(ranked.get(1))?;
    let runs = |i: usize| -> Vec<Vec<Counts>> {
        group(i)
            .iter()
            .filter(|t| t.status == JobStatus::Succeeded)
            .filter_map(|t| t.sentence_counts.clone())
            .collect()
    };
    let bootstrap = paired_bootstrap(
        &runs(first),
        &runs(second),
        BOOTSTRAP_RESAMPLES,
        BOOTSTRAP_SEED,
    )?;
    let r = |i: usize| ConfigRef {
        model: summary[i].model.clone(),
        params: summary[i].params.clone(),
        test_f1_mean: summary[i].test_f1_mean,
    };
    Some(Comparison {
        a: r(first),
        b: r(second),
        bootstrap,
    })
}

impl StudyView {
    /// Builds the view of `study` from its trials' rows.
    pub fn build(
        study: &StudyRow,
        jobs: &[JobRow],
        epochs: &[EpochRow],
        evals: &[EvaluationRow],
    ) -> Result<StudyView, StoreError> {
        let spec_value: Value = serde_json::from_str(&study.spec)?;
        let select_by = serde_json::from_value::<StudySpec>(spec_value.clone())
            .map(|s| s.select_by)
            .unwrap_or_default();
        let trials = jobs
            .iter()
            .map(|j| {
                let e: Vec<&EpochRow> = epochs.iter().filter(|e| e.job_id == j.id).collect();
                let v: Vec<&EvaluationRow> = evals.iter().filter(|e| e.job_id == j.id).collect();
                trial_view(j, &e, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &trials {
            *counts.entry(t.status.to_string()).or_default() += 1;
        }
        // Configurations in the order their first trial appears.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut groups: BTreeMap<(String, String), Vec<&TrialView>> = BTreeMap::new();
        for t in &trials {
            let k = config_key(t);
            if !groups.contains_key(&k) {
                order.push(k.clone());
            }
            groups.entry(k).or_default().push(t);
        }
        let summary: Vec<ConfigSummary> = order
            .iter()
            .map(|k| summarize(&groups[k], select_by))
            .collect();
        let ranked = rank(&summary, select_by);
        let group = |i: usize| groups[&order[i]].as_slice();
        let best = ranked
            .first()
            .map(|i| best_of(&summary[*i], group(*i), select_by));
        let comparison = compare(&summary, &ranked, &group);
        let epochs_saved = trials
            .iter()
            .filter(|t| t.pruned)
            .map(|t| t.epochs_planned.saturating_sub(t.epochs_run))
            .sum();
        Ok(StudyView {
            id: study.id.clone(),
            name: study.name.clone(),
            status: study.status,
            created_at: study.created_at.clone(),
            updated_at: study.updated_at.clone(),
            finished_at: study.finished_at.clone(),
            select_by,
            counts,
            trials,
            summary,
            best,
            comparison,
            epochs_saved,
            spec: spec_value,
        })
    }

    /// `results.csv`: one row per finished trial, the notebook's 15 columns then the study's.
    pub fn results_csv(&self, jobs: &[JobRow]) -> Result<String, StoreError> {
        let extra = [
            "study_id",
            "job_id",
            "learning_rate",
            "per_device_train_batch_size",
            "num_train_epochs",
            "weight_decay",
            "warmup_steps",
            "lr_scheduler",
            "loss",
            "class_weights",
            "best_epoch",
            "val_f1",
            "epochs_run",
            "pruned",
        ];
        let header: Vec<&str> = CSV_COLUMNS.iter().copied().chain(extra).collect();
        let num = |v: Option<f64>| v.map(|x| format!("{x:?}")).unwrap_or_default();
        let cell = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut rows = Vec::new();
        for t in &self.trials {
            let Some(job) = jobs.iter().find(|j| j.id == t.job_id) else {
                continue;
            };
            let Some(cells) = job.csv_row.as_deref() else {
                continue;
            };
            let mut row: Vec<String> = serde_json::from_str(cells)?;
            let tr = &t.spec["training"];
            row.extend([
                self.id.clone(),
                t.job_id.clone(),
                cell(&tr["learning_rate"]),
                cell(&tr["per_device_train_batch_size"]),
                cell(&tr["num_train_epochs"]),
                cell(&tr["weight_decay"]),
                cell(&tr["warmup_steps"]),
                cell(&tr["lr_scheduler"]),
                cell(&tr["loss"]),
                cell(&tr["class_weights"]),
                t.best_epoch.map(|b| b.to_string()).unwrap_or_default(),
                num(t.val_f1),
                t.epochs_run.to_string(),
                t.pruned.to_string(),
            ]);
            rows.push(row);
        }
        Ok(csv_table(&header, &rows))
    }

    /// `summary.csv`: one row per configuration with means and standard deviations; the
    /// comparison's bootstrap on the runner-up's row.
    pub fn summary_csv(&self) -> String {
        let mut labels: Vec<String> = self
            .summary
            .iter()
            .flat_map(|c| c.per_label.keys().cloned())
            .collect();
        labels.sort();
        labels.dedup();
        let mut header: Vec<String> = [
            "model",
            "params",
            "n",
            "failed",
            "pruned",
            "val_f1_mean",
            "val_f1_std",
            "val_selected_mean",
            "val_selected_std",
            "test_f1_mean",
            "test_f1_std",
            "test_precision_mean",
            "test_recall_mean",
            "test_accuracy_mean",
            "epochs_run_mean",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for l in &labels {
            header.push(format!("test_f1_{l}_mean"));
            header.push(format!("test_f1_{l}_std"));
        }
        header.extend(
            [
                "best",
                "diff_vs_best_test_f1",
                "diff_ci95_low",
                "diff_ci95_high",
                "diff_significant",
            ]
            .map(String::from),
        );
        let num = |v: Option<f64>| v.map(|x| format!("{x:?}")).unwrap_or_default();
        let rows: Vec<Vec<String>> = self
            .summary
            .iter()
            .map(|c| {
                let mut r = vec![
                    c.model.clone(),
                    Value::Object(c.params.clone()).to_string(),
                    c.n.to_string(),
                    c.failed.to_string(),
                    c.pruned.to_string(),
                    num(c.val_f1_mean),
                    num(c.val_f1_std),
                    num(c.val_selected_mean),
                    num(c.val_selected_std),
                    num(c.test_f1_mean),
                    num(c.test_f1_std),
                    num(c.test_precision_mean),
                    num(c.test_recall_mean),
                    num(c.test_accuracy_mean),
                    num(c.epochs_run_mean),
                ];
                for l in &labels {
                    let s = c.per_label.get(l);
                    r.push(num(s.map(|s| s.test_f1_mean)));
                    r.push(num(s.and_then(|s| s.test_f1_std)));
                }
                let is = |x: &ConfigRef| x.model == c.model && x.params == c.params;
                let best = self
                    .best
                    .as_ref()
                    .is_some_and(|b| b.model == c.model && b.params == c.params);
                r.push(best.to_string());
                match &self.comparison {
                    Some(cmp) if is(&cmp.b) => {
                        let d = &cmp.bootstrap;
                        // From the runner-up's side: its F1 minus the best's.
                        r.push(num(Some(-d.diff)));
                        r.push(num(Some(-d.ci95[1])));
                        r.push(num(Some(-d.ci95[0])));
                        r.push(d.significant.to_string());
                    }
                    _ => r.extend(std::iter::repeat_n(String::new(), 4)),
                }
                r
            })
            .collect();
        csv_table(&header, &rows)
    }
}
