//! The worker: claims queued jobs one at a time (the RNG and the CPU are process-wide), runs
//! each on a dedicated thread, stores progress, epochs, evaluations and events in the order
//! the thread reports them, and finishes the row. A training failure is data (status +
//! error), never a crash.
//!
//! The training thread reports everything, its result last, over one channel: whatever it
//! sent before finishing is stored before the job is finished.
//!
//! Tests drive it step by step with [`Worker::try_run_next`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::hub::Download;
use crate::store::jobs::{Finish, JobRow, JobStatus};
use crate::store::{self, StoreError};
use crate::train::report::{Report, append_csv};
use crate::train::{
    CancelToken, EpochGate, EpochRecord, Eta, EvalSummary, Progress, RunOutcome, TrainError,
};

use super::resolve::run_config;
use super::spec::JobSpec;
use super::{JobProgress, Shared};

/// Crashes after which a job is marked `interrupted` instead of resumed.
pub const MAX_CRASHES: i64 = 3;

/// What one `try_run_next` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing queued.
    Idle,
    /// Ran a job to this status.
    Ran { id: String, status: JobStatus },
}

/// What the training thread sends, in order; `Done` is last.
#[derive(Debug)]
pub enum Msg {
    Download(Download),
    Progress(Progress),
    Done(Result<RunOutcome, TrainError>),
}

/// How a training thread is steered: resume or start over, stop requests, the study's gate.
struct Control {
    resume: bool,
    cancel: CancelToken,
    gate: Option<Arc<dyn EpochGate>>,
}

/// The queue consumer.
#[derive(Clone)]
pub struct Worker {
    pub shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

/// What the worker keeps of a running job besides the store.
pub struct JobRun {
    pub id: String,
    epochs: usize,
    steps_total: usize,
    base: Option<EvalSummary>,
    history: Vec<EpochRecord>,
    /// Event kinds stored by earlier attempts (not repeated on resume).
    seen: HashSet<String>,
    eta: Eta,
    last_progress: Option<Instant>,
}

impl JobRun {
    /// A run of job `id`; `seen` are the kinds of its stored events.
    pub fn new(id: &str, spec: &JobSpec, seen: HashSet<String>) -> Self {
        JobRun {
            id: id.into(),
            epochs: spec.training.num_train_epochs,
            steps_total: 0,
            base: None,
            history: Vec::new(),
            seen,
            eta: Eta::default(),
            last_progress: None,
        }
    }

    /// Whether a progress row is due (at most one per interval, and the last one always).
    fn due(&mut self, every: Duration, last: bool) -> bool {
        if last || self.last_progress.is_none_or(|t| t.elapsed() >= every) {
            self.last_progress = Some(Instant::now());
            return true;
        }
        false
    }

    fn progress(&self, stage: &str, epoch: usize, step: usize, eta: Option<f64>) -> JobProgress {
        JobProgress {
            stage: Some(stage.into()),
            epoch,
            epochs: self.epochs,
            step,
            steps: self.steps_total,
            eta_seconds: eta.map(f64::round),
        }
    }
}

impl Shared {
    async fn set_progress(&self, id: &str, p: &JobProgress) -> Result<(), StoreError> {
        store::jobs::set_progress(&self.pool, id, &serde_json::to_string(p)?).await
    }

    /// Stores one message of a running job and tells SSE listeners: the one place progress
    /// becomes data.
    pub async fn record(&self, run: &mut JobRun, msg: Progress) -> Result<(), StoreError> {
        let id = run.id.clone();
        match msg {
            Progress::Prepared {
                ref label_distribution,
                total_steps,
                epochs,
                ref resumed_from,
                ..
            } => {
                run.epochs = epochs;
                run.steps_total = total_steps;
                store::results::set_distribution(&self.pool, &id, label_distribution).await?;
                self.set_progress(&id, &run.progress("evaluating_base", 0, 0, None))
                    .await?;
                let kind = if resumed_from.is_some() || run.seen.contains("prepared") {
                    "resumed"
                } else {
                    "prepared"
                };
                let mut data = serde_json::to_value(&msg)?;
                // The checkpoint's name, not its server path (responses never show those).
                if let Some(from) = resumed_from {
                    data["resumed_from"] = json!(
                        std::path::Path::new(from)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                    );
                }
                self.emit(&id, kind, data).await?;
            }
            Progress::BaseEvaluated { summary } => {
                if !run.seen.contains("base_evaluated") {
                    store::results::upsert_evaluation(&self.pool, &id, "base", &summary).await?;
                    self.emit(&id, "base_evaluated", serde_json::to_value(&summary)?)
                        .await?;
                }
                run.base = Some(summary);
            }
            Progress::Step {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate,
                seconds_per_step,
                ..
            } => {
                self.telemetry.step_seconds.set(seconds_per_step);
                self.telemetry.steps.inc();
                let eta = run.eta.observe(step, total_steps);
                if run.due(Duration::from_secs(1), step == total_steps) {
                    let prog = run.progress("training", epoch, step, Some(eta));
                    self.set_progress(&id, &prog).await?;
                    let mut ev = serde_json::to_value(&prog)?;
                    ev["loss"] = json!(loss);
                    ev["learning_rate"] = json!(learning_rate);
                    self.emit(&id, "progress", ev).await?;
                }
            }
            Progress::Epoch { record } => {
                store::results::upsert_epoch(&self.pool, &id, &record).await?;
                self.emit(&id, "epoch", serde_json::to_value(&record)?)
                    .await?;
                run.history.push(record);
            }
            Progress::StoppedEarly {
                after_epoch,
                ref why,
            } => {
                if matches!(why, crate::train::EarlyStop::Pruned { .. }) {
                    store::jobs::set_pruned(&self.pool, &id).await?;
                }
                self.emit(
                    &id,
                    "stopped_early",
                    json!({"after_epoch": after_epoch, "why": why}),
                )
                .await?;
            }
            Progress::FinalEvaluated {
                summary,
                sentence_counts,
            } => {
                store::results::upsert_evaluation(&self.pool, &id, "finetuned", &summary).await?;
                store::results::set_sentence_counts(&self.pool, &id, "finetuned", &sentence_counts)
                    .await?;
                let done = run.progress("done", run.epochs, run.steps_total, Some(0.0));
                self.set_progress(&id, &done).await?;
                self.emit(&id, "final_evaluated", serde_json::to_value(&summary)?)
                    .await?;
            }
        }
        Ok(())
    }

    async fn record_download(&self, run: &mut JobRun, d: Download) -> Result<(), StoreError> {
        if run.due(Duration::from_millis(500), d.bytes >= d.total) {
            let p = json!({"stage": "downloading", "repo": d.repo, "file": d.file, "bytes": d.bytes, "total": d.total});
            store::jobs::set_progress(&self.pool, &run.id, &p.to_string()).await?;
            self.emit(&run.id, "download", p).await?;
        }
        Ok(())
    }
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

    async fn run_job(&self, row: JobRow) -> Result<JobStatus, StoreError> {
        let sh = &self.shared;
        let id = row.id.clone();
        let spec: JobSpec = serde_json::from_str(&row.spec)?;
        let output_dir = PathBuf::from(&row.output_dir);
        let resume = row.attempts > 1;
        tracing::info!(job = %id, attempt = row.attempts, resume, "job started");
        let seen = store::events::kinds(&sh.pool, &id).await?;
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
        let gate = super::study::lifecycle::trial_started(sh, &row).await?;
        let started = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let control = Control {
            resume,
            cancel: cancel.clone(),
            gate,
        };
        self.spawn_training(&id, &spec, &output_dir, control, tx)?;
        let mut run = JobRun::new(&id, &spec, seen);
        let result = self.consume(&mut run, rx, &cancel).await;
        sh.running
            .lock()
            .expect("running map poisoned: this is a bug")
            .remove(&id);
        let status = self
            .finish(&row, &spec, &output_dir, run, result?, started)
            .await?;
        tracing::info!(job = %id, %status, "job ended");
        Ok(status)
    }

    /// Starts the training thread; it sends its messages and finally its result on `tx`.
    fn spawn_training(
        &self,
        id: &str,
        spec: &JobSpec,
        output_dir: &Path,
        control: Control,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Result<(), StoreError> {
        let (ctx, spec, out, device) = (
            self.shared.ctx.clone(),
            spec.clone(),
            output_dir.to_path_buf(),
            self.shared.device,
        );
        std::thread::Builder::new()
            .name(format!("train-{}", &id[..8.min(id.len())]))
            .spawn(move || {
                let progress_tx = tx.clone();
                let result = (|| {
                    let mut download = |d: Download| {
                        let _ = progress_tx.send(Msg::Download(d));
                    };
                    let mut cfg = run_config(&spec, &ctx, &out, device, &mut download)?;
                    cfg.gate = control.gate;
                    crate::train::run(&cfg, control.resume, &control.cancel, &mut |p| {
                        let _ = progress_tx.send(Msg::Progress(p));
                    })
                })();
                let _ = tx.send(Msg::Done(result));
            })
            .map(|_| ())
            .map_err(|e| StoreError::Conflict(format!("cannot start training thread: {e}")))
    }

    /// Stores the thread's messages in order until its result arrives. Checks for cancel
    /// requests every second and turns a shutdown into a checkpoint-and-stop request.
    pub async fn consume(
        &self,
        run: &mut JobRun,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        cancel: &CancelToken,
    ) -> Result<Result<RunOutcome, TrainError>, StoreError> {
        let sh = &self.shared;
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Progress(p)) => sh.record(run, p).await?,
                    Some(Msg::Download(d)) => sh.record_download(run, d).await?,
                    Some(Msg::Done(result)) => return Ok(result),
                    None => {
                        return Ok(Err(TrainError::Checkpoint(
                            "the training thread panicked".into(),
                        )));
                    }
                },
                _ = tick.tick() => {
                    if store::jobs::cancel_requested(&sh.pool, &run.id).await? {
                        cancel.cancel();
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_ok() && *shutdown.borrow() {
                        cancel.shutdown();
                    }
                }
            }
        }
    }

    async fn finish(
        &self,
        row: &JobRow,
        spec: &JobSpec,
        output_dir: &Path,
        run: JobRun,
        result: Result<RunOutcome, TrainError>,
        started: Instant,
    ) -> Result<JobStatus, StoreError> {
        let sh = &self.shared;
        let id = row.id.as_str();
        if let Err(TrainError::Interrupted { checkpoint }) = &result {
            store::jobs::requeue(&sh.pool, id).await?;
            let checkpoint = Path::new(checkpoint)
                .file_name()
                .map(|n| n.to_string_lossy().to_string());
            sh.emit(
                id,
                "status",
                json!({"status": "queued", "reason": "shutdown", "checkpoint": checkpoint}),
            )
            .await?;
            return Ok(JobStatus::Queued);
        }
        let mut csv = spec.csv_row();
        let finish = match &result {
            Ok(o) => {
                csv.succeed(o);
                Finish {
                    status: JobStatus::Succeeded,
                    error: None,
                    best_epoch: Some(o.best_epoch as i64),
                    best_checkpoint: o
                        .epochs
                        .iter()
                        .find(|e| e.epoch == o.best_epoch)
                        .map(|e| e.checkpoint.clone()),
                    best_model_dir: Some(o.best_model_dir.display().to_string()),
                    improvement_f1: Some(o.improvement_f1),
                    csv_row: Some(serde_json::to_string(&csv.cells())?),
                }
            }
            Err(e) => {
                if let Some(b) = &run.base {
                    csv.set_base(b);
                }
                csv.fail(e);
                Finish {
                    status: if matches!(e, TrainError::Cancelled) {
                        JobStatus::Cancelled
                    } else {
                        JobStatus::Failed
                    },
                    error: Some(csv.error.clone()),
                    best_epoch: None,
                    best_checkpoint: None,
                    best_model_dir: None,
                    improvement_f1: None,
                    csv_row: Some(serde_json::to_string(&csv.cells())?),
                }
            }
        };
        let _ = std::fs::create_dir_all(output_dir);
        let csv_path = row
            .results_csv
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or_else(|| output_dir.join("results.csv"));
        if let Err(e) = append_csv(&csv_path, &csv) {
            tracing::warn!(job = %id, error = %e, "could not write results.csv");
        }
        let report = Report {
            status: finish.status.as_str(),
            job_id: Some(id),
            spec: serde_json::to_value(spec)?,
            result: &result,
            base: run.base.as_ref(),
            epochs: &run.history,
            total_seconds: started.elapsed().as_secs_f64(),
        };
        if let Err(e) =
            crate::model::export::write_json(&output_dir.join("report.json"), &report.to_json())
        {
            tracing::warn!(job = %id, error = %e, "could not write report.json");
        }
        store::jobs::finish(&sh.pool, id, &finish).await?;
        if let Ok(o) = &result {
            if let Some(name) = &spec.deploy_as {
                super::publish::deploy(sh, id, name, &o.best_model_dir, "job").await?;
            }
            if spec.hub.push {
                super::publish::push_job(
                    sh,
                    id,
                    spec,
                    &o.best_model_dir,
                    &serde_json::to_value(o)?,
                )
                .await?;
            }
        }
        let final_data = json!({"status": finish.status, "error": finish.error,
            "improvement_f1": finish.improvement_f1, "best_epoch": finish.best_epoch});
        sh.emit(id, "finished", final_data).await?;
        super::study::lifecycle::trial_ended(sh, id).await?;
        super::projects::job_ended(sh, id, usize::MAX).await?;
        Ok(finish.status)
    }
}
