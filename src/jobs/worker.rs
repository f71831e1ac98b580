//! The worker: claims queued jobs one at a time (the RNG and the CPU are process-wide), runs
//! each on a dedicated thread, persists progress, epochs, evaluations and events as they
//! arrive, and finishes the row. A training failure is data (status + error), never a crash.
//!
//! Tests drive it step by step with [`Worker::try_run_next`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::SqlitePool;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::hub::Download;
use crate::infer::Registry;
use crate::model::backend::Resolved;
use crate::store::{self, StoreError, jobs::Finish};
use crate::train::report::{CsvRow, append_csv};
use crate::train::{CancelToken, Progress, RunOutcome, TrainError};

use super::resolve::{ResolveContext, ResolveError, run_config};
use super::spec::JobSpec;

/// A stored event, as broadcast to SSE listeners.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: String,
    pub kind: String,
    pub data: Value,
}

/// Event kinds after which a job's stream ends.
pub const FINAL_EVENTS: [&str; 1] = ["finished"];

/// State shared by the worker and the API.
pub struct Shared {
    pub pool: SqlitePool,
    pub ctx: ResolveContext,
    pub device: Resolved,
    pub data_dir: PathBuf,
    pub registry: Arc<Registry>,
    pub events: broadcast::Sender<JobEvent>,
    /// Wakes the worker when a job is queued.
    pub wake: Notify,
    /// Cancel tokens of running jobs.
    pub running: Mutex<HashMap<String, CancelToken>>,
    /// Seconds per optimizer step, last observed (for /metrics).
    pub step_seconds: Mutex<Option<f64>>,
    pub steps_total: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Stores an event and broadcasts it.
    pub async fn emit(&self, job_id: &str, kind: &str, data: Value) -> Result<(), StoreError> {
        let row = store::events::insert(&self.pool, job_id, kind, &data.to_string()).await?;
        let _ = self.events.send(JobEvent {
            id: row.id,
            job_id: job_id.into(),
            kind: kind.into(),
            data,
        });
        Ok(())
    }

    /// Directory of a job's artifacts.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("jobs").join(id)
    }
}

/// What one `try_run_next` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing queued.
    Idle,
    /// Ran a job to this status.
    Ran { id: String, status: String },
}

/// Messages from the training thread.
enum Msg {
    Progress(Progress),
    Download(Download),
}

/// The queue consumer.
#[derive(Clone)]
pub struct Worker {
    pub shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

fn progress_json(
    stage: &str,
    epoch: usize,
    epochs: usize,
    step: usize,
    steps: usize,
    eta: Option<f64>,
) -> Value {
    json!({"stage": stage, "epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "eta_seconds": eta.map(|e| e.round())})
}

impl Worker {
    pub fn new(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Self {
        Worker { shared, shutdown }
    }

    /// Runs until shutdown: claim, run, repeat; sleep until woken when the queue is empty.
    pub async fn run(mut self) {
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            match self.try_run_next().await {
                Ok(Outcome::Ran { .. }) => continue,
                Ok(Outcome::Idle) => {}
                Err(e) => tracing::error!(error = %e, "worker: store error"),
            }
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// Claims and runs the next queued job, if any.
    pub async fn try_run_next(&self) -> Result<Outcome, StoreError> {
        if *self.shutdown.borrow() {
            return Ok(Outcome::Idle);
        }
        let Some(row) = store::jobs::claim_next(&self.shared.pool).await? else {
            return Ok(Outcome::Idle);
        };
        let id = row.id.clone();
        let status = self.run_job(row).await?;
        Ok(Outcome::Ran { id, status })
    }

    async fn run_job(&self, row: store::jobs::JobRow) -> Result<String, StoreError> {
        let sh = &self.shared;
        let id = row.id.clone();
        let spec: JobSpec = serde_json::from_str(&row.spec)?;
        let output_dir = PathBuf::from(&row.output_dir);
        let resume = row.attempts > 1;
        tracing::info!(job = %id, attempt = row.attempts, resume, "job started");
        sh.emit(
            &id,
            "status",
            json!({"status": "running", "attempt": row.attempts, "resumed": resume}),
        )
        .await?;
        store::jobs::set_device(&sh.pool, &id, &sh.device.to_string()).await?;

        let cancel = CancelToken::new();
        sh.running
            .lock()
            .expect("running map poisoned: this is a bug")
            .insert(id.clone(), cancel.clone());
        // A cancel requested while queued->running raced: honour it.
        if store::jobs::cancel_requested(&sh.pool, &id).await? {
            cancel.cancel();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let (done_tx, mut done_rx) =
            tokio::sync::oneshot::channel::<Result<RunOutcome, TrainError>>();
        let thread_ctx = sh.ctx.clone();
        let (thread_spec, thread_out, device, thread_cancel) =
            (spec.clone(), output_dir.clone(), sh.device, cancel.clone());
        std::thread::Builder::new()
            .name(format!("train-{}", &id[..8.min(id.len())]))
            .spawn(move || {
                let tx2 = tx.clone();
                let result = (|| {
                    let mut dl = |d: Download| {
                        let _ = tx2.send(Msg::Download(d));
                    };
                    let cfg = run_config(&thread_spec, &thread_ctx, &thread_out, device, &mut dl)
                        .map_err(|e| match e {
                        ResolveError::Field(f) => TrainError::Spec(f),
                        ResolveError::Data(d) => TrainError::Data(d),
                        ResolveError::Hub(h) => TrainError::Checkpoint(format!("hub: {h}")),
                    })?;
                    crate::train::run(&cfg, resume, &thread_cancel, &mut |p| {
                        let _ = tx.send(Msg::Progress(p));
                    })
                })();
                let _ = done_tx.send(result);
            })
            .map_err(|e| StoreError::Conflict(format!("cannot start training thread: {e}")))?;

        let mut epochs = spec.training.num_train_epochs;
        let mut steps_total = 0usize;
        let mut base = None;
        let (mut last_progress, mut last_cancel_check) =
            (Instant::now() - Duration::from_secs(10), Instant::now());
        let started = Instant::now();
        let mut first_step: Option<(usize, Instant)> = None;
        let mut shutdown = self.shutdown.clone();
        let result = loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { continue };
                    match msg {
                        Msg::Download(d) => {
                            if last_progress.elapsed() >= Duration::from_millis(500) || d.bytes >= d.total {
                                last_progress = Instant::now();
                                let p = json!({"stage": "downloading", "repo": d.repo, "file": d.file, "bytes": d.bytes, "total": d.total});
                                store::jobs::set_progress(&sh.pool, &id, &p.to_string()).await?;
                                sh.emit(&id, "download", p).await?;
                            }
                        }
                        Msg::Progress(p) => match p {
                            Progress::Prepared { ref label_distribution, total_steps, epochs: e, .. } => {
                                epochs = e;
                                steps_total = total_steps;
                                store::results::set_distribution(&sh.pool, &id, label_distribution).await?;
                                store::jobs::set_progress(&sh.pool, &id, &progress_json("evaluating_base", 0, epochs, 0, steps_total, None).to_string()).await?;
                                sh.emit(&id, "prepared", serde_json::to_value(&p)?).await?;
                            }
                            Progress::BaseEvaluated { summary } => {
                                store::results::upsert_evaluation(&sh.pool, &id, "base", &summary).await?;
                                sh.emit(&id, "base_evaluated", serde_json::to_value(&summary)?).await?;
                                base = Some(summary);
                            }
                            Progress::Step { epoch, step, total_steps, loss, learning_rate, seconds_per_step, .. } => {
                                *sh.step_seconds.lock().expect("poisoned: this is a bug") = Some(seconds_per_step);
                                sh.steps_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let (s0, t0) = *first_step.get_or_insert((step - 1, Instant::now()));
                                if last_progress.elapsed() >= Duration::from_secs(1) || step == total_steps {
                                    last_progress = Instant::now();
                                    let rate = t0.elapsed().as_secs_f64() / (step - s0).max(1) as f64;
                                    let eta = rate * (total_steps - step) as f64;
                                    let prog = progress_json("training", epoch, epochs, step, total_steps, Some(eta));
                                    store::jobs::set_progress(&sh.pool, &id, &prog.to_string()).await?;
                                    let mut ev = prog.clone();
                                    ev["loss"] = json!(loss);
                                    ev["learning_rate"] = json!(learning_rate);
                                    sh.emit(&id, "progress", ev).await?;
                                }
                            }
                            Progress::Epoch { record } => {
                                store::results::upsert_epoch(&sh.pool, &id, &record).await?;
                                sh.emit(&id, "epoch", serde_json::to_value(&record)?).await?;
                            }
                            Progress::FinalEvaluated { summary } => {
                                store::results::upsert_evaluation(&sh.pool, &id, "finetuned", &summary).await?;
                                store::jobs::set_progress(&sh.pool, &id, &progress_json("done", epochs, epochs, steps_total, steps_total, Some(0.0)).to_string()).await?;
                                sh.emit(&id, "final_evaluated", serde_json::to_value(&summary)?).await?;
                            }
                        },
                    }
                    if last_cancel_check.elapsed() >= Duration::from_secs(1) {
                        last_cancel_check = Instant::now();
                        if store::jobs::cancel_requested(&sh.pool, &id).await? {
                            cancel.cancel();
                        }
                    }
                }
                r = &mut done_rx => {
                    // Drain what the thread sent before finishing.
                    while let Ok(Msg::Progress(Progress::Epoch { record })) = rx.try_recv() {
                        store::results::upsert_epoch(&sh.pool, &id, &record).await?;
                        sh.emit(&id, "epoch", serde_json::to_value(&record)?).await?;
                    }
                    break r.unwrap_or_else(|_| Err(TrainError::Checkpoint("training thread panicked".into())));
                }
                _ = shutdown.changed() => {
                    cancel.shutdown();
                }
            }
        };
        sh.running
            .lock()
            .expect("running map poisoned: this is a bug")
            .remove(&id);
        let status = self
            .finish(
                &id,
                &spec,
                &output_dir,
                row.results_csv.as_deref(),
                base,
                result,
                started,
            )
            .await?;
        tracing::info!(job = %id, %status, "job ended");
        Ok(status)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        id: &str,
        spec: &JobSpec,
        output_dir: &Path,
        results_csv: Option<&str>,
        base: Option<crate::train::EvalSummary>,
        result: Result<RunOutcome, TrainError>,
        started: Instant,
    ) -> Result<String, StoreError> {
        let sh = &self.shared;
        if let Err(TrainError::Interrupted { checkpoint }) = &result {
            store::jobs::requeue(&sh.pool, id).await?;
            sh.emit(
                id,
                "status",
                json!({"status": "queued", "reason": "shutdown", "checkpoint": checkpoint}),
            )
            .await?;
            return Ok("queued".into());
        }
        let mut row = CsvRow::new(
            &spec.model.display_name(),
            &spec.model.checkpoint,
            spec.seed,
            spec.training.gradient_accumulation_steps,
        );
        let (status, mut finish) = match &result {
            Ok(o) => {
                row.succeed(o);
                let f = Finish {
                    status: "succeeded",
                    best_epoch: Some(o.best_epoch as i64),
                    best_checkpoint: o
                        .epochs
                        .iter()
                        .find(|e| e.epoch == o.best_epoch)
                        .map(|e| e.checkpoint.clone()),
                    best_model_dir: Some(o.best_model_dir.display().to_string()),
                    improvement_f1: Some(o.improvement_f1),
                    ..Default::default()
                };
                ("succeeded", f)
            }
            Err(e) => {
                if let Some(b) = &base {
                    row.set_base(b);
                }
                row.fail(e);
                let status = if matches!(e, TrainError::Cancelled) {
                    "cancelled"
                } else {
                    "failed"
                };
                (
                    status,
                    Finish {
                        status,
                        error: Some(row.error.clone()),
                        ..Default::default()
                    },
                )
            }
        };
        finish.csv_row = Some(serde_json::to_string(&row.cells())?);
        let _ = std::fs::create_dir_all(output_dir);
        let csv_path = results_csv
            .map(PathBuf::from)
            .unwrap_or_else(|| output_dir.join("results.csv"));
        if let Err(e) = append_csv(&csv_path, &row) {
            tracing::warn!(job = %id, error = %e, "could not write results.csv");
        }
        let report = match &result {
            Ok(o) => {
                json!({"status": status, "job_id": id, "spec": spec, "outcome": o, "versions": crate::cli::versions(), "total_seconds": started.elapsed().as_secs_f64()})
            }
            Err(e) => {
                json!({"status": status, "job_id": id, "spec": spec, "error": format!("{}: {e}", e.kind()), "base_test": base, "versions": crate::cli::versions(), "total_seconds": started.elapsed().as_secs_f64()})
            }
        };
        if let Err(e) = crate::model::export::write_json(&output_dir.join("report.json"), &report) {
            tracing::warn!(job = %id, error = %e, "could not write report.json");
        }
        store::jobs::finish(&sh.pool, id, &finish).await?;
        if let Ok(o) = &result {
            if let Some(name) = &spec.deploy_as {
                let (registry, dir, job) = (
                    sh.registry.clone(),
                    o.best_model_dir.clone(),
                    id.to_string(),
                );
                let name2 = name.clone();
                match tokio::task::spawn_blocking(move || registry.deploy(&name2, &dir, Some(job)))
                    .await
                {
                    Ok(Ok(info)) => {
                        sh.emit(
                            id,
                            "deployed",
                            json!({"model": info.name, "version": info.version}),
                        )
                        .await?
                    }
                    Ok(Err(e)) => {
                        sh.emit(
                            id,
                            "deploy_failed",
                            json!({"model": name, "error": e.to_string()}),
                        )
                        .await?
                    }
                    Err(e) => tracing::error!(error = %e, "deploy task panicked"),
                }
            }
            if spec.hub.push {
                push_job(sh, id, spec, &o.best_model_dir, &serde_json::to_value(o)?).await?;
            }
        }
        let final_data = json!({"status": status, "error": finish.error, "improvement_f1": finish.improvement_f1, "best_epoch": finish.best_epoch});
        sh.emit(id, "finished", final_data).await?;
        Ok(status.into())
    }
}

/// Pushes a succeeded job's best model; records the outcome on the job, never fails it.
/// `outcome` is the run's outcome as JSON (as in report.json).
pub async fn push_job(
    sh: &Shared,
    id: &str,
    spec: &JobSpec,
    best_model_dir: &Path,
    outcome: &Value,
) -> Result<(), StoreError> {
    let repo = spec.hub.repo_id.clone().unwrap_or_default();
    store::jobs::set_push(&sh.pool, id, "pending", None, None).await?;
    let card = crate::hub::card::model_card(spec, outcome);
    let (cfg, dir, private) = (
        sh.ctx.hub.as_ref().map(|h| h.config.clone()),
        best_model_dir.to_path_buf(),
        spec.hub.private,
    );
    let repo2 = repo.clone();
    let result = tokio::task::spawn_blocking(move || match cfg {
        Some(cfg) => crate::hub::push_model(
            &cfg,
            &repo2,
            private,
            &dir,
            &card,
            "Upload model fine-tuned with metafora",
        ),
        None => Err(crate::hub::HubError::Http {
            repo: repo2,
            message: "Hub is not configured".into(),
        }),
    })
    .await
    .unwrap_or_else(|e| {
        Err(crate::hub::HubError::Http {
            repo: repo.clone(),
            message: format!("push task panicked: {e}"),
        })
    });
    match result {
        Ok(url) => {
            store::jobs::set_push(&sh.pool, id, "pushed", None, Some(&url)).await?;
            sh.emit(id, "pushed", json!({"repo_id": repo, "url": url}))
                .await?;
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "push failed");
            store::jobs::set_push(&sh.pool, id, "failed", Some(&e.to_string()), None).await?;
            sh.emit(
                id,
                "push_failed",
                json!({"repo_id": repo, "error": e.to_string()}),
            )
            .await?;
        }
    }
    Ok(())
}
