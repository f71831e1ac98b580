//! A study's life: queued with all its trials in one transaction; running from its first
//! trial's start; settled (status, best, deployment, Hub push, final event) when its last
//! trial ends, after a cancel, or at the next start if the process died in between.

use std::sync::Arc;

use serde_json::{Value, json};

use super::prune::StudyGate;
use super::summary::StudyView;
use super::{StudySpec, Trial};
use crate::jobs::Shared;
use crate::jobs::spec::JobSpec;
use crate::store::jobs::{JobRow, JobStatus};
use crate::store::studies::{CancelledTrials, NewTrial, StudyRow, StudyStatus};
use crate::store::{self, StoreError};
use crate::train::EpochGate;

/// Queues a study and its trials; `source` names who asked (`api`, `cli`).
pub async fn submit(
    sh: &Shared,
    spec: &StudySpec,
    trials: &[Trial],
    source: &str,
    max_queued: usize,
) -> Result<StudyRow, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let new: Vec<NewTrial> = trials
        .iter()
        .map(|t| -> Result<NewTrial, StoreError> {
            let job_id = uuid::Uuid::new_v4().to_string();
            Ok(NewTrial {
                output_dir: sh.job_dir(&job_id).display().to_string(),
                job_id,
                spec: serde_json::to_string(&t.spec)?,
                params: Value::Object(t.params.clone()).to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    let row = store::studies::insert(
        &sh.pool,
        &id,
        spec.name.as_deref(),
        &serde_json::to_string(spec)?,
        &new,
        max_queued,
    )
    .await?;
    for t in &new {
        sh.emit(
            &t.job_id,
            "status",
            json!({"status": "queued", "source": "study", "study_id": id}),
        )
        .await?;
    }
    sh.emit_study(
        &id,
        "status",
        json!({"status": "queued", "source": source, "trials": new.len()}),
    )
    .await?;
    sh.wake.notify_one();
    Ok(row)
}

/// The study's current view, from the store.
pub async fn view(sh: &Shared, id: &str) -> Result<Option<StudyView>, StoreError> {
    let Some(row) = store::studies::get(&sh.pool, id).await? else {
        return Ok(None);
    };
    let jobs = store::studies::trials(&sh.pool, id).await?;
    let epochs = store::studies::epochs(&sh.pool, id).await?;
    let evals = store::studies::evaluations(&sh.pool, id).await?;
    Ok(Some(StudyView::build(&row, &jobs, &epochs, &evals)?))
}

fn trial_data(job: &JobRow) -> Value {
    let spec: Value = serde_json::from_str(&job.spec).unwrap_or(Value::Null);
    let params: Value = job
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    json!({"job_id": job.id, "trial": job.trial, "model": spec["model"]["name"].as_str()
        .map(String::from)
        .or_else(|| serde_json::from_value::<JobSpec>(spec.clone()).ok().map(|s| s.model.display_name())),
        "seed": spec["seed"], "params": params})
}

/// A trial was claimed: the study runs, listeners hear of it. Returns the trial's pruning
/// gate, if the study prunes.
pub async fn trial_started(
    sh: &Shared,
    job: &JobRow,
) -> Result<Option<Arc<dyn EpochGate>>, StoreError> {
    let Some(study_id) = &job.study_id else {
        return Ok(None);
    };
    if store::studies::mark_running(&sh.pool, study_id).await? {
        sh.emit_study(study_id, "status", json!({"status": "running"}))
            .await?;
    }
    let mut data = trial_data(job);
    data["attempt"] = json!(job.attempts);
    sh.emit_study(study_id, "trial_started", data).await?;
    let Some(study) = store::studies::get(&sh.pool, study_id).await? else {
        return Ok(None);
    };
    let spec: StudySpec = serde_json::from_str(&study.spec)?;
    let trial: JobSpec = serde_json::from_str(&job.spec)?;
    Ok(spec.pruning.map(|rule| {
        StudyGate {
            pool: sh.pool.clone(),
            runtime: tokio::runtime::Handle::current(),
            study_id: study_id.clone(),
            job_id: job.id.clone(),
            model: trial.model.display_name(),
            params: job.params.clone(),
            rule,
            metric: spec.select_by,
        }
        .arc()
    }))
}

/// A trial ended (or was requeued by a shutdown: then nothing happens): listeners hear of
/// it, and the study settles if it was the last.
pub async fn trial_ended(sh: &Shared, job_id: &str) -> Result<(), StoreError> {
    let Some(job) = store::jobs::get(&sh.pool, job_id).await? else {
        return Ok(());
    };
    let (Some(study_id), true) = (&job.study_id, job.status.is_finished()) else {
        return Ok(());
    };
    let mut data = trial_data(&job);
    data["status"] = json!(job.status);
    data["pruned"] = json!(job.pruned != 0);
    if let Some(v) = view(sh, study_id).await?
        && let Some(t) = v.trials.iter().find(|t| t.job_id == job.id)
    {
        data["val_f1"] = json!(t.val_f1);
        data["test_f1"] = json!(t.test_f1);
        data["epochs_run"] = json!(t.epochs_run);
    }
    sh.emit_study(study_id, "trial_finished", data).await?;
    settle(sh, study_id).await
}

/// Ends a study whose trials have all ended: its status (cancelled if asked, succeeded if any
/// trial succeeded, else failed), its best trial, the final event; then deploys and pushes
/// the best trial's model when the spec asks. Does nothing while a trial is queued or running
/// or when the study has already ended.
pub async fn settle(sh: &Shared, study_id: &str) -> Result<(), StoreError> {
    let Some(row) = store::studies::get(&sh.pool, study_id).await? else {
        return Ok(());
    };
    if row.status.is_finished() {
        return Ok(());
    }
    let jobs = store::studies::trials(&sh.pool, study_id).await?;
    if jobs.iter().any(|j| !j.status.is_finished()) {
        return Ok(());
    }
    let Some(v) = view(sh, study_id).await? else {
        return Ok(());
    };
    let status = if row.cancel_requested != 0 {
        StudyStatus::Cancelled
    } else if jobs.iter().any(|j| j.status == JobStatus::Succeeded) {
        StudyStatus::Succeeded
    } else {
        StudyStatus::Failed
    };
    let best_job = v.best.as_ref().map(|b| b.best_job_id.clone());
    store::studies::set_status(&sh.pool, study_id, status, best_job.as_deref()).await?;
    let spec: StudySpec = serde_json::from_str(&row.spec)?;
    if status == StudyStatus::Succeeded
        && let Some(job_id) = &best_job
        && let Some(job) = jobs.iter().find(|j| &j.id == job_id)
        && let Some(dir) = &job.best_model_dir
    {
        let dir = std::path::PathBuf::from(dir);
        if let Some(name) = &spec.deploy_best_as {
            crate::jobs::publish::deploy(sh, job_id, name, &dir, "study").await?;
            sh.emit_study(
                study_id,
                "deployed",
                json!({"model": name, "job_id": job_id}),
            )
            .await?;
        }
        if spec.hub.push {
            let mut trial: JobSpec = serde_json::from_str(&job.spec)?;
            trial.hub = spec.hub.clone();
            let report: Value =
                std::fs::read(std::path::Path::new(&job.output_dir).join("report.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
            crate::jobs::publish::push_job(sh, job_id, &trial, &dir, &report["outcome"]).await?;
            let pushed = store::jobs::get(&sh.pool, job_id).await?;
            sh.emit_study(
                study_id,
                "pushed",
                json!({"job_id": job_id, "status": pushed.as_ref().map(|j| j.push_status),
                    "url": pushed.and_then(|j| j.push_url)}),
            )
            .await?;
        }
    }
    sh.emit_study(
        study_id,
        "finished",
        json!({"status": status, "best": v.best, "comparison": v.comparison, "epochs_saved": v.epochs_saved}),
    )
    .await?;
    tracing::info!(study = %study_id, ?status, "study ended");
    Ok(())
}

/// Cancels a study: queued trials at once, running ones within a step; the study ends when
/// they have. `None` if there is no such study.
pub async fn cancel(sh: &Shared, id: &str) -> Result<Option<CancelledTrials>, StoreError> {
    let Some(out) = store::studies::request_cancel(&sh.pool, id).await? else {
        return Ok(None);
    };
    for job in &out.cancelled {
        sh.emit(
            job,
            "finished",
            json!({"status": "cancelled", "error": "cancelled before start (study cancelled)"}),
        )
        .await?;
    }
    for job in &out.requested {
        sh.signal_cancel(job);
    }
    sh.emit_study(
        id,
        "cancel_requested",
        json!({"cancelled": out.cancelled.len(), "stopping": out.requested.len()}),
    )
    .await?;
    settle(sh, id).await?;
    Ok(Some(out))
}

/// At start: settles studies whose last trial ended while no process was there to settle
/// them, and serves the best model of every succeeded study with `deploy_best_as`.
pub async fn recover(sh: &Shared) -> Result<(), StoreError> {
    for id in store::studies::unsettled(&sh.pool).await? {
        settle(sh, &id).await?;
    }
    let mut cursor = None;
    loop {
        let page = store::studies::list(&sh.pool, 200, cursor).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        for row in &page {
            let Ok(spec) = serde_json::from_str::<StudySpec>(&row.spec) else {
                continue;
            };
            let (StudyStatus::Succeeded, Some(name), Some(job_id)) =
                (row.status, &spec.deploy_best_as, &row.best_job_id)
            else {
                continue;
            };
            if crate::jobs::models::recorded(sh, name).await? {
                continue;
            }
            if let Some(job) = store::jobs::get(&sh.pool, job_id).await?
                && let Some(dir) = &job.best_model_dir
            {
                let (r, name, dir, id) = (
                    sh.registry.clone(),
                    name.clone(),
                    std::path::PathBuf::from(dir),
                    job_id.clone(),
                );
                let res = tokio::task::spawn_blocking(move || {
                    r.deploy(&name, &dir, Some(id), None, None)
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(study = %row.id, error = %e, "could not redeploy the study's best model");
                }
            }
        }
    }
    Ok(())
}
