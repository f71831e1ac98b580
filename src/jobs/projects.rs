//! The annotation loop of a project: annotations in, immutable dataset versions, retraining
//! jobs from the project's template, and deploy-only-if-better.
//!
//! Each change of annotations writes a new dataset version (`<data-dir>/projects/<id>/v<N>/`,
//! the local-folder format: `train/validation/test.jsonl` + `labels.json`), every task in the
//! split its id hashes to. A retraining job trains on the newest version; when it succeeds, its
//! best model and the deployed model are both scored on that version's validation split
//! through the same detector code, and the new model is deployed only if it scores at least as
//! well. One retraining at a time per project: a trigger during one asks for one more run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::annotations::{Span, split_of, tag_words};
use crate::infer::aggregate::Strategy;
use crate::infer::{DetectOptions, Detector, Input};
use crate::metrics::seqeval;
use crate::store::jobs::JobStatus;
use crate::store::projects::{self as pstore, NewAnnotation, ProjectRow, Training, VersionRow};
use crate::store::{self, StoreError};

use super::Shared;
use super::spec::JobSpec;

/// Why a project operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something about the request or the project's state; `field` names what.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("project {0:?} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Io(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ProjectError {
    ProjectError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One task's annotation as a tool sent it.
#[derive(Debug, Clone)]
pub struct RawAnnotation {
    pub task_id: String,
    pub annotation_id: Option<String>,
    /// When the tool last changed it (RFC 3339), if it says.
    pub updated_at: Option<String>,
    pub text: String,
    pub spans: Vec<Span>,
}

/// What recording annotations did.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub annotations: usize,
    /// Per task with issues: what the conversion reported.
    pub issues: Vec<Value>,
    pub dataset_version: Option<i64>,
    /// A retraining queued by `retrain_every`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Value>,
}

/// Label set of a project's datasets: the labels of the model it serves when that model is
/// deployed, else `O` and `B-<label>` for each label of its config.
pub fn tag_labels(sh: &Shared, p: &ProjectRow) -> Vec<String> {
    if let Some(d) = sh.registry.get(&p.model_name) {
        return d.info.labels.clone();
    }
    let config: Vec<String> = serde_json::from_str(&p.labels).unwrap_or_default();
    std::iter::once("O".to_string())
        .chain(config.iter().map(|l| format!("B-{}", l.to_uppercase())))
        .collect()
}

async fn project(sh: &Shared, id: &str) -> Result<ProjectRow, ProjectError> {
    pstore::get(&sh.pool, id)
        .await?
        .ok_or_else(|| ProjectError::NotFound(id.into()))
}

/// Emits a project event (stored; also in the project's view).
pub async fn emit(sh: &Shared, id: &str, kind: &str, data: Value) -> Result<(), StoreError> {
    pstore::insert_event(&sh.pool, id, kind, &data.to_string()).await?;
    Ok(())
}

/// Converted annotations to store, and the issues reported per task.
type Converted = (Vec<NewAnnotation>, Vec<Value>);

/// Character spans to word tags for every annotation (CPU work: call from a blocking thread).
fn convert(
    project: &str,
    items: Vec<RawAnnotation>,
    labels: &[String],
) -> Result<Converted, ProjectError> {
    let mut rows = Vec::with_capacity(items.len());
    let mut issues = Vec::new();
    for a in items {
        let t = tag_words(&a.text, &a.spans, labels);
        if !t.issues.is_empty() {
            issues.push(json!({"task_id": a.task_id, "issues": t.issues}));
        }
        rows.push(NewAnnotation {
            split: split_of(project, &a.task_id).into(),
            words: serde_json::to_string(&t.words).map_err(StoreError::from)?,
            tags: serde_json::to_string(&t.tags).map_err(StoreError::from)?,
            report: serde_json::to_string(&t.issues).map_err(StoreError::from)?,
            task_id: a.task_id,
            annotation_id: a.annotation_id,
            source_updated_at: a.updated_at,
            text: a.text,
        });
    }
    Ok((rows, issues))
}

/// Converts and stores annotations, writes a new dataset version, and queues a retraining
/// when `retrain_every` changes have accumulated.
pub async fn record(
    sh: &Shared,
    id: &str,
    items: Vec<RawAnnotation>,
    reason: &str,
    max_queued: usize,
) -> Result<Recorded, ProjectError> {
    let p = project(sh, id).await?;
    let labels = tag_labels(sh, &p);
    let (id2, labels2) = (id.to_string(), labels.clone());
    let (rows, issues) = tokio::task::spawn_blocking(move || convert(&id2, items, &labels2))
        .await
        .map_err(|e| ProjectError::Io(format!("converting annotations: {e}")))??;
    let (changes, version) = {
        let _one_at_a_time = sh.annotation_writes.lock().await;
        let changes = pstore::upsert_annotations(&sh.pool, id, &rows).await?;
        (changes, write_version(sh, &p, &labels, reason).await?)
    };
    emit(
        sh,
        id,
        "annotations",
        json!({"reason": reason, "annotations": rows.len(), "issues": issues.len(),
            "dataset_version": version.version}),
    )
    .await?;
    let training = auto_retrain(sh, &p, changes, max_queued).await?;
    Ok(Recorded {
        annotations: rows.len(),
        issues,
        dataset_version: Some(version.version),
        training,
    })
}

/// Marks annotations deleted and writes a new dataset version.
pub async fn delete(
    sh: &Shared,
    id: &str,
    items: Vec<crate::store::projects::Deletion>,
    max_queued: usize,
) -> Result<Recorded, ProjectError> {
    let p = project(sh, id).await?;
    let one_at_a_time = sh.annotation_writes.lock().await;
    let (changed, changes) = pstore::delete_annotations(&sh.pool, id, &items).await?;
    let version = if changed > 0 {
        let labels = tag_labels(sh, &p);
        let v = write_version(sh, &p, &labels, "annotations deleted").await?;
        drop(one_at_a_time);
        emit(
            sh,
            id,
            "annotations_deleted",
            json!({"deleted": changed, "dataset_version": v.version}),
        )
        .await?;
        Some(v.version)
    } else {
        None
    };
    let training = auto_retrain(sh, &p, changes, max_queued).await?;
    Ok(Recorded {
        annotations: changed as usize,
        issues: vec![],
        dataset_version: version,
        training,
    })
}

async fn auto_retrain(
    sh: &Shared,
    p: &ProjectRow,
    changes: i64,
    max_queued: usize,
) -> Result<Option<Value>, ProjectError> {
    match p.retrain_every {
        Some(n) if n > 0 && changes >= n => {
            match retrain(sh, &p.id, "retrain_every", max_queued).await {
                Ok(v) => Ok(Some(v)),
                // Not enough data yet, or a full queue: the annotations are stored already,
                // and the next change tries again.
                Err(e) => {
                    let reason = match e {
                        ProjectError::Invalid { message, .. } => message,
                        other => other.to_string(),
                    };
                    Ok(Some(json!({"status": "not_queued", "reason": reason})))
                }
            }
        }
        _ => Ok(None),
    }
}

/// Directory of a project's files.
fn project_dir(sh: &Shared, id: &str) -> PathBuf {
    sh.data_dir.join("projects").join(id)
}

/// Writes the project's live annotations as the next dataset version.
async fn write_version(
    sh: &Shared,
    p: &ProjectRow,
    labels: &[String],
    reason: &str,
) -> Result<VersionRow, ProjectError> {
    let anns = pstore::annotations(&sh.pool, &p.id).await?;
    let version = pstore::next_version(&sh.pool, &p.id).await?;
    let dir = project_dir(sh, &p.id).join(format!("v{version}"));
    let mut labels = labels.to_vec();
    let mut files: std::collections::BTreeMap<&str, String> = ["train", "validation", "test"]
        .map(|s| (s, String::new()))
        .into();
    let mut stats: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for a in &anns {
        let words: Vec<(usize, usize)> =
            serde_json::from_str(&a.words).map_err(StoreError::from)?;
        let tags: Vec<String> = serde_json::from_str(&a.tags).map_err(StoreError::from)?;
        if words.is_empty() {
            continue;
        }
        let chars: Vec<char> = a.text.chars().collect();
        let tokens: Vec<String> = words
            .iter()
            .map(|&(s, e)| chars[s..e].iter().collect())
            .collect();
        let ids: Vec<usize> = tags
            .iter()
            .map(|t| {
                labels.iter().position(|l| l == t).unwrap_or_else(|| {
                    labels.push(t.clone());
                    labels.len() - 1
                })
            })
            .collect();
        let split = a.split.as_str();
        let line = json!({"tokens": tokens, "tags": ids, "task_id": a.task_id});
        if let Some(f) = files.get_mut(split) {
            f.push_str(&line.to_string());
            f.push('\n');
        }
        let s = stats.entry(split).or_default();
        s.0 += 1;
        s.1 += tags.iter().filter(|t| *t != "O").count();
    }
    let id2label: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    let stats_json = json!({
        "tasks": anns.len(),
        "splits": stats.iter().map(|(k, (n, e))| (k.to_string(), json!({"sentences": n, "labelled_words": e}))).collect::<serde_json::Map<_, _>>(),
    });
    let meta = json!({
        "description": format!("Annotations of project {} (version {version}): {reason}", p.id),
        "project": p.id, "version": version, "labels": labels, "stats": stats_json,
        "splits": "by a stable hash of the task id: 70 % train, 15 % validation, 15 % test",
    });
    let d = dir.clone();
    let write = move || -> std::io::Result<()> {
        let tmp = d.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for (split, body) in &files {
            std::fs::write(tmp.join(format!("{split}.jsonl")), body)?;
        }
        std::fs::write(
            tmp.join("labels.json"),
            json!({"id2label": id2label, "label2id": label2id}).to_string(),
        )?;
        std::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
        let _ = std::fs::remove_dir_all(&d);
        std::fs::rename(&tmp, &d)
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| ProjectError::Io(e.to_string()))?
        .map_err(|e| ProjectError::Io(format!("writing {}: {e}", dir.display())))?;
    sh.push_dir(&dir, &[])
        .await
        .map_err(|e| ProjectError::Io(format!("artifact store: {e}")))?;
    Ok(pstore::insert_version(
        &sh.pool,
        &p.id,
        version,
        &dir.display().to_string(),
        &stats_json.to_string(),
        reason,
    )
    .await?)
}

/// The job spec of a retraining: the project's template (a job spec without `dataset`), or by
/// default fine-tuning of the model the project serves, on dataset version `dir`.
fn retrain_spec(sh: &Shared, p: &ProjectRow, dir: &Path) -> Result<JobSpec, ProjectError> {
    let mut spec: Value = match &p.template {
        Some(t) => serde_json::from_str(t).map_err(StoreError::from)?,
        None => {
            let Some(d) = sh.registry.get(&p.model_name) else {
                return Err(invalid(
                    "template",
                    format!(
                        "model {:?} is not deployed and the project has no template naming a base model",
                        p.model_name
                    ),
                ));
            };
            json!({"model": {"checkpoint": relative(sh, &d.info.path), "name": format!("{}-{}", p.model_name, d.info.version)},
                   "training": DEFAULT_TRAINING.clone()})
        }
    };
    // Relative to the data directory, where job paths resolve (responses show specs as is).
    spec["dataset"] = json!({"path": relative(sh, dir)});
    JobSpec::parse(spec.to_string().as_bytes()).map_err(|e| invalid("template", e.to_string()))
}

/// `path` relative to the data directory when it lies inside it.
fn relative(sh: &Shared, path: &Path) -> String {
    path.strip_prefix(&sh.data_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

static DEFAULT_TRAINING: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"learning_rate": 5e-5, "num_train_epochs": 10, "per_device_train_batch_size": 8}),
);

/// Queues a retraining on the newest dataset version (one at a time per project).
pub async fn retrain(
    sh: &Shared,
    id: &str,
    source: &str,
    max_queued: usize,
) -> Result<Value, ProjectError> {
    let p = project(sh, id).await?;
    let Some(v) = pstore::versions(&sh.pool, id).await?.into_iter().next() else {
        return Err(invalid("annotations", "the project has no annotations yet"));
    };
    let stats: Value = serde_json::from_str(&v.stats).map_err(StoreError::from)?;
    // The trainer needs every split; deploy-only-if-better needs entities to compare on.
    for split in ["train", "validation", "test"] {
        let n = stats["splits"][split]["sentences"].as_u64().unwrap_or(0);
        if n == 0 {
            return Err(invalid(
                "annotations",
                format!(
                    "dataset version {} has no {split} sentences yet ({} annotated tasks; tasks go to train/validation/test by a hash of their id, 70/15/15)",
                    v.version, stats["tasks"]
                ),
            ));
        }
    }
    if stats["splits"]["validation"]["labelled_words"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        return Err(invalid(
            "annotations",
            format!(
                "dataset version {} has no labelled word in its validation split: a new model could not be compared with the deployed one",
                v.version
            ),
        ));
    }
    let spec = retrain_spec(sh, &p, Path::new(&v.dir))?;
    let job_id = uuid::Uuid::new_v4().to_string();
    let out = sh.job_dir(&job_id);
    let res = pstore::queue_training(
        &sh.pool,
        id,
        v.version,
        &job_id,
        &serde_json::to_string(&spec).map_err(StoreError::from)?,
        &out.display().to_string(),
        max_queued,
    )
    .await?;
    let out = match res {
        Training::Queued(row) => {
            sh.emit(
                &row.id,
                "status",
                json!({"status": "queued", "source": format!("project:{id}")}),
            )
            .await?;
            sh.wake.notify_one();
            json!({"status": "queued", "job_id": row.id, "dataset_version": v.version, "source": source})
        }
        Training::AlreadyQueued(job) => {
            json!({"status": "already_queued", "job_id": job, "note": "one more run after it"})
        }
    };
    emit(sh, id, "training", out.clone()).await?;
    Ok(out)
}

/// The deploy-only-if-better decision on a finished retraining job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub job_id: String,
    pub job_status: String,
    pub dataset_version: i64,
    pub deployed: bool,
    pub reason: String,
    pub candidate_val_f1: Option<f64>,
    pub incumbent_val_f1: Option<f64>,
    pub incumbent_version: Option<String>,
    pub new_version: Option<String>,
    pub validation_sentences: usize,
    pub decided_at: String,
}

/// Called when any job ends: settles it if it is a project's retraining.
pub async fn job_ended(sh: &Shared, job_id: &str, max_queued: usize) -> Result<(), StoreError> {
    let Some((project_id, version)) = pstore::job_project(&sh.pool, job_id).await? else {
        return Ok(());
    };
    let decision = match decide(sh, &project_id, version, job_id).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(project = %project_id, job = %job_id, error = %e, "retraining decision failed");
            Decision {
                job_id: job_id.into(),
                job_status: "unknown".into(),
                dataset_version: version,
                deployed: false,
                reason: format!("the decision failed: {e}"),
                candidate_val_f1: None,
                incumbent_val_f1: None,
                incumbent_version: None,
                new_version: None,
                validation_sentences: 0,
                decided_at: store::now(),
            }
        }
    };
    let data = serde_json::to_value(&decision)?;
    let Some(again) =
        pstore::settle_training(&sh.pool, &project_id, job_id, &data.to_string()).await?
    else {
        return Ok(());
    };
    emit(sh, &project_id, "decision", data).await?;
    if again && let Err(e) = retrain(sh, &project_id, "pending trigger", max_queued).await {
        emit(
            sh,
            &project_id,
            "training",
            json!({"status": "not_queued", "reason": e.to_string()}),
        )
        .await?;
    }
    Ok(())
}

/// At start: settles retrainings that ended while no process was there.
pub async fn recover(sh: &Shared, max_queued: usize) -> Result<(), StoreError> {
    for (_, job) in pstore::unsettled(&sh.pool).await? {
        job_ended(sh, &job, max_queued).await?;
    }
    Ok(())
}

async fn decide(
    sh: &Shared,
    project_id: &str,
    version: i64,
    job_id: &str,
) -> Result<Decision, ProjectError> {
    let p = project(sh, project_id).await?;
    let job = store::jobs::get(&sh.pool, job_id)
        .await?
        .ok_or_else(|| ProjectError::NotFound(format!("job {job_id}")))?;
    let incumbent = sh.registry.get(&p.model_name);
    let mut d = Decision {
        job_id: job_id.into(),
        job_status: job.status.to_string(),
        dataset_version: version,
        deployed: false,
        reason: String::new(),
        candidate_val_f1: None,
        incumbent_val_f1: None,
        incumbent_version: incumbent.as_ref().map(|i| i.info.version.clone()),
        new_version: None,
        validation_sentences: 0,
        decided_at: store::now(),
    };
    let (JobStatus::Succeeded, Some(best)) = (job.status, job.best_model_dir.clone()) else {
        d.reason = format!("the job {}", job.status);
        return Ok(d);
    };
    let v = pstore::version(&sh.pool, project_id, version)
        .await?
        .ok_or_else(|| invalid("dataset_version", format!("version {version} is gone")))?;
    let sentences = read_split(
        &Path::new(&v.dir).join("validation.jsonl"),
        &Path::new(&v.dir).join("labels.json"),
    )?;
    d.validation_sentences = sentences.len();
    let (device, opts) = (sh.device, sh.registry.options().clone());
    let (best2, sents) = (PathBuf::from(&best), sentences.clone());
    let cand = tokio::task::spawn_blocking(move || -> Result<f64, String> {
        let det = Detector::load("candidate", &best2, device, opts).map_err(|e| e.to_string())?;
        Ok(score(&det, &sents))
    })
    .await
    .map_err(|e| ProjectError::Io(e.to_string()))?
    .map_err(|e| invalid("candidate", e))?;
    d.candidate_val_f1 = Some(cand);
    if let Some(inc) = incumbent {
        let sents = sentences.clone();
        let inc2: Arc<Detector> = inc.clone();
        let f = tokio::task::spawn_blocking(move || score(&inc2, &sents))
            .await
            .map_err(|e| ProjectError::Io(e.to_string()))?;
        d.incumbent_val_f1 = Some(f);
        if cand < f {
            d.reason = format!(
                "validation F1 {cand:.4} is below the deployed model's {f:.4} on the same {} sentences",
                sentences.len()
            );
            return Ok(d);
        }
        d.reason = format!(
            "validation F1 {cand:.4} >= the deployed model's {f:.4} on the same {} sentences",
            sentences.len()
        );
    } else {
        d.reason = format!("no model was deployed as {:?}", p.model_name);
    }
    match super::models::deploy(
        sh,
        &p.model_name,
        Path::new(&best),
        Some(job_id.into()),
        None,
        &format!("project:{project_id}"),
    )
    .await
    {
        Ok(info) => {
            d.deployed = true;
            d.new_version = Some(info.version);
        }
        Err(e) => d.reason = format!("{}; deploying failed: {e}", d.reason),
    }
    Ok(d)
}

/// A pre-split sentence with its tag names.
pub type Tagged = (Vec<String>, Vec<String>);

/// Sentences of a dataset version's split.
fn read_split(path: &Path, labels: &Path) -> Result<Vec<Tagged>, ProjectError> {
    let io = |e: std::io::Error| ProjectError::Io(format!("{}: {e}", path.display()));
    let l: Value =
        serde_json::from_slice(&std::fs::read(labels).map_err(io)?).map_err(StoreError::from)?;
    let name = |i: u64| {
        l["id2label"][i.to_string()]
            .as_str()
            .unwrap_or("O")
            .to_string()
    };
    let mut out = Vec::new();
    for line in std::fs::read_to_string(path).map_err(io)?.lines() {
        let v: Value = serde_json::from_str(line).map_err(StoreError::from)?;
        let tokens: Vec<String> =
            serde_json::from_value(v["tokens"].clone()).map_err(StoreError::from)?;
        let tags: Vec<u64> = serde_json::from_value(v["tags"].clone()).map_err(StoreError::from)?;
        out.push((tokens, tags.into_iter().map(name).collect()));
    }
    Ok(out)
}

/// seqeval micro F1 of a model on pre-split sentences, word labels from each word's first
/// sub-token (as the trainer's evaluation). Entities come back grouped; their words get the
/// model's own label names again (`B-X` then `I-X` when the set has them, plain `X` in sets
/// without prefixes), which gives seqeval the same entities as the word labels themselves.
pub fn score(det: &Detector, sentences: &[Tagged]) -> f64 {
    let labels = &det.info.labels;
    let name = |kind: &str, k: usize| {
        let (b, i) = (format!("B-{kind}"), format!("I-{kind}"));
        if !labels.contains(&b) {
            kind.to_string()
        } else if k > 0 && labels.contains(&i) {
            i
        } else {
            b
        }
    };
    let opts = DetectOptions {
        strategy: Some(Strategy::First),
        ..Default::default()
    };
    let mut truth = Vec::new();
    let mut pred = Vec::new();
    for (words, tags) in sentences {
        let mut p = vec!["O".to_string(); words.len()];
        if let Ok(out) = det.detect_blocking(&Input::Tokens(words.clone()), opts) {
            for e in &out.results[0].entities {
                let kind = e.entity_group.clone().unwrap_or_default();
                for (k, w) in (e.start..e.end.min(words.len())).enumerate() {
                    p[w] = name(&kind, k);
                }
            }
        }
        truth.push(tags.clone());
        pred.push(p);
    }
    seqeval::report(&truth, &pred).micro.f1
}
