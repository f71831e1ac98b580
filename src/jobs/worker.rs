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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::hub::Download;
use crate::store::jobs::{Finish, JobRow, JobStatus};
use crate::store::workers::Lessee;
use crate::store::{self, Pool, StoreError};
use crate::train::report::{Report, append_csv};
use crate::train::{
    CancelToken, EpochGate, EpochRecord, Eta, EvalSummary, Progress, RunOutcome, TrainError,
    WriteFence,
};

use super::resolve::run_config;
use super::spec::JobSpec;
use super::{JobProgress, Shared};

/// Files rewritten in place in a job directory (uploaded whatever their size).
const ARTIFACTS_REWRITTEN: &[&str] = &["trainer_state.json", "report.json", "results.csv"];

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
    fence: Arc<dyn WriteFence>,
}

/// How a worker names itself and holds leases.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique among live workers; a worker restarted under its name takes back its jobs at
    /// once instead of waiting for their leases to run out.
    pub name: String,
    /// How long a lease lasts without renewal (renewed every fifth of it).
    pub lease: Duration,
    /// Crashes (lost leases) after which a job is marked `interrupted`.
    pub max_crashes: i64,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            name: default_name(),
            lease: Duration::from_secs(15),
            max_crashes: MAX_CRASHES,
        }
    }
}

/// This machine's host name (the default worker name).
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The job a worker is running, as its heartbeat sees it.
#[derive(Clone)]
struct Current {
    job_id: String,
    cancel: CancelToken,
    /// Set when the lease is lost: nothing more of this run is written.
    lost: Arc<AtomicBool>,
}

/// The queue consumer.
#[derive(Clone)]
pub struct Worker {
    pub shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    lessee: Lessee,
    opts: WorkerOptions,
    current: Arc<Mutex<Option<Current>>>,
    registered: Arc<tokio::sync::OnceCell<(Vec<String>, Vec<String>)>>,
}

/// Checks the lease in the store before the training thread writes a checkpoint or the best
/// model (and renews it): a worker that lost its job never writes over the next owner's files.
struct LeaseFence {
    pool: Pool,
    job_id: String,
    worker_id: String,
    ttl_ms: i64,
    handle: tokio::runtime::Handle,
    lost: Arc<AtomicBool>,
}

impl WriteFence for LeaseFence {
    fn may_write(&self) -> Result<(), String> {
        if self.lost.load(Ordering::SeqCst) {
            return Err("this worker lost the job's lease".into());
        }
        // The timer is created inside the runtime's context (this is the training thread).
        let renewed = self.handle.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                store::workers::renew(&self.pool, &self.job_id, &self.worker_id, self.ttl_ms),
            )
            .await
        });
        match renewed {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => {
                self.lost.store(true, Ordering::SeqCst);
                Err("this worker no longer holds the job's lease".into())
            }
            Ok(Err(e)) => Err(format!("cannot confirm the job's lease: {e}")),
            Err(_) => {
                Err("cannot confirm the job's lease: the database did not answer in 10 s".into())
            }
        }
    }
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
    /// Set when the worker lost the job's lease: nothing more is stored.
    pub lost: Arc<AtomicBool>,
    /// Mirrored to the artifact store after every epoch.
    pub output_dir: Option<PathBuf>,
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
            lost: Default::default(),
            output_dir: None,
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
                // The epoch's checkpoint goes to the artifact store first: another worker
                // resuming the job finds it. A failed upload is retried after the next epoch.
                if let Some(dir) = &run.output_dir
                    && let Err(e) = self.push_dir(dir, ARTIFACTS_REWRITTEN).await
                {
                    tracing::warn!(job = %id, error = %e, "artifact store: checkpoint not uploaded yet");
                }
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
        Worker::with_options(shared, shutdown, WorkerOptions::default())
    }

    pub fn with_options(
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
        opts: WorkerOptions,
    ) -> Self {
        let device_kind = if shared.device.to_string().starts_with("cuda") {
            "cuda"
        } else {
            "cpu"
        };
        Worker {
            lessee: Lessee {
                id: uuid::Uuid::new_v4().to_string(),
                name: opts.name.clone(),
                device_kind: device_kind.into(),
            },
            shared,
            shutdown,
            opts,
            current: Default::default(),
            registered: Default::default(),
        }
    }

    /// This process's worker id.
    pub fn id(&self) -> &str {
        &self.lessee.id
    }

    /// Records this worker, takes back the jobs an earlier process of the same name left
    /// running and starts the heartbeat (once; later calls return the first answer).
    /// Returns the jobs (requeued, given up).
    pub async fn register(&self) -> Result<&(Vec<String>, Vec<String>), StoreError> {
        self.registered
            .get_or_try_init(|| async {
                let pool = &self.shared.pool;
                store::workers::register(
                    pool,
                    &self.lessee,
                    &self.shared.device.to_string(),
                    &default_name(),
                    std::process::id() as i64,
                )
                .await?;
                let swept = store::workers::sweep(
                    pool,
                    self.opts.max_crashes,
                    Some((&self.lessee.name, &self.lessee.id)),
                )
                .await?;
                self.spawn_heartbeat();
                tracing::info!(worker = %self.lessee.name, id = %self.lessee.id,
                    device = %self.shared.device, "worker registered");
                Ok(swept)
            })
            .await
    }

    fn ttl_ms(&self) -> i64 {
        self.opts.lease.as_millis() as i64
    }

    /// Every fifth of the lease: the worker's heartbeat, and the running job's lease renewed.
    /// A lease found taken, or not renewed for a whole lease period (database unreachable),
    /// stops the run before its next write.
    fn spawn_heartbeat(&self) {
        let (pool, id, ttl) = (
            self.shared.pool.clone(),
            self.lessee.id.clone(),
            self.opts.lease,
        );
        let ttl_ms = self.ttl_ms();
        let current = self.current.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let every = (ttl / 5).max(Duration::from_millis(100));
            let mut last_ok = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() {
                            let _ = store::workers::stopped(&pool, &id).await;
                            return;
                        }
                    }
                }
                let cur = current
                    .lock()
                    .expect("current job poisoned: this is a bug")
                    .clone();
                let beat = async {
                    store::workers::heartbeat(&pool, &id, cur.as_ref().map(|c| c.job_id.as_str()))
                        .await?;
                    match &cur {
                        Some(c) => store::workers::renew(&pool, &c.job_id, &id, ttl_ms).await,
                        None => Ok(true),
                    }
                };
                let lose = |why: &str| {
                    if let Some(c) = &cur {
                        if !c.lost.swap(true, Ordering::SeqCst) {
                            tracing::warn!(job = %c.job_id, why, "lease lost: stopping the run before its next write");
                        }
                        c.cancel.shutdown();
                    }
                };
                match tokio::time::timeout(ttl, beat).await {
                    Ok(Ok(true)) => last_ok = Instant::now(),
                    Ok(Ok(false)) => lose("taken back"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        if last_ok.elapsed() >= ttl {
                            lose("not renewed for a whole lease period");
                        }
                    }
                    Err(_) => {
                        tracing::warn!("heartbeat timed out");
                        if last_ok.elapsed() >= ttl {
                            lose("not renewed for a whole lease period");
                        }
                    }
                }
            }
        });
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
        self.register().await?;
        let pool = &self.shared.pool;
        let (requeued, gave_up) = store::workers::sweep(pool, self.opts.max_crashes, None).await?;
        if !requeued.is_empty() || !gave_up.is_empty() {
            tracing::warn!(?requeued, ?gave_up, "took back jobs whose lease ran out");
        }
        let Some(row) = store::workers::claim(pool, &self.lessee, self.ttl_ms()).await? else {
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
        // Recorded by the process that queued it, under its data dir: the same place under
        // this machine's.
        let output_dir = sh.localize(&row.output_dir);
        let resume = row.attempts > 1;
        tracing::info!(job = %id, attempt = row.attempts, resume, "job started");
        let seen = store::events::kinds(&sh.pool, &id).await?;
        sh.emit(
            &id,
            "status",
            json!({"status": "running", "attempt": row.attempts, "resumed": resume,
                   "worker": self.lessee.name}),
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
        let lost = Arc::new(AtomicBool::new(false));
        *self
            .current
            .lock()
            .expect("current job poisoned: this is a bug") = Some(Current {
            job_id: id.clone(),
            cancel: cancel.clone(),
            lost: lost.clone(),
        });
        let fence: Arc<dyn WriteFence> = Arc::new(LeaseFence {
            pool: sh.pool.clone(),
            job_id: id.clone(),
            worker_id: self.lessee.id.clone(),
            ttl_ms: self.ttl_ms(),
            handle: tokio::runtime::Handle::current(),
            lost: lost.clone(),
        });
        let gate = super::study::lifecycle::trial_started(sh, &row).await?;
        // What another machine left: the job's checkpoints, its dataset, a base model trained
        // here earlier.
        let mut inputs = vec![output_dir.clone()];
        if let Some(d) = &spec.dataset.id {
            inputs.push(sh.data_dir.join("datasets").join(d));
        }
        for p in [
            spec.dataset.path.as_deref(),
            Some(spec.model.checkpoint.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            // Only what the service itself keeps (a hub id is not a path to fetch).
            let local = sh.localize(p);
            let kept = local
                .strip_prefix(&sh.data_dir)
                .ok()
                .and_then(|r| r.components().next())
                .is_some_and(|c| {
                    ["jobs", "datasets", "projects"].contains(&&*c.as_os_str().to_string_lossy())
                });
            if kept {
                inputs.push(local);
            }
        }
        let mut fetched = Ok(());
        for dir in &inputs {
            if let Err(e) = sh.pull_dir(dir).await {
                fetched = Err(e);
                break;
            }
        }
        let started = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let control = Control {
            resume,
            cancel: cancel.clone(),
            gate,
            fence,
        };
        match fetched {
            Ok(()) => self.spawn_training(&id, &spec, &output_dir, control, tx)?,
            Err(e) => {
                let _ = tx.send(Msg::Done(Err(TrainError::Checkpoint(format!(
                    "artifact store: cannot fetch the job's inputs: {e}"
                )))));
            }
        }
        let mut run = JobRun::new(&id, &spec, seen);
        run.output_dir = Some(output_dir.clone());
        run.lost = lost.clone();
        let result = self.consume(&mut run, rx, &cancel).await;
        sh.running
            .lock()
            .expect("running map poisoned: this is a bug")
            .remove(&id);
        *self
            .current
            .lock()
            .expect("current job poisoned: this is a bug") = None;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // The store failed mid-run: the run was stopped before its next write. Hand
                // the job back if the store answers again; else its lease runs out. Either
                // way a worker resumes it from its last checkpoint.
                tracing::error!(job = %id, error = %e, "store failed mid-job: run stopped");
                let _ = self.shared.push_dir(&output_dir, ARTIFACTS_REWRITTEN).await;
                let _ = store::jobs::requeue(&sh.pool, &id, &self.lessee.id).await;
                return Err(e);
            }
        };
        if let Err(TrainError::Fenced(why)) = &result {
            tracing::warn!(job = %id, why, "run stopped before writing; the job resumes elsewhere");
            return Ok(JobStatus::Running);
        }
        if lost.load(Ordering::SeqCst) {
            tracing::warn!(job = %id, "lease lost: the result of this run is not recorded");
            return Ok(JobStatus::Running);
        }
        let status = self
            .finish(&row, &spec, &output_dir, run, result, started)
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
                    cfg.fence = Some(control.fence);
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
        // A store failure stops the run (checkpoint-and-stop, which the lease fence refuses
        // while the store is unreachable); the thread is drained, then the error returned.
        let mut failed: Option<StoreError> = None;
        let job_id = run.id.clone();
        let fail = |e: StoreError, failed: &mut Option<StoreError>| {
            if failed.is_none() {
                tracing::error!(job = %job_id, error = %e, "store write failed: stopping the run");
                cancel.shutdown();
                *failed = Some(e);
            }
        };
        loop {
            let quiet = failed.is_some() || run.lost.load(Ordering::SeqCst);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Progress(p)) if !quiet => {
                        if let Err(e) = sh.record(run, p).await {
                            fail(e, &mut failed);
                        }
                    }
                    Some(Msg::Download(d)) if !quiet => {
                        if let Err(e) = sh.record_download(run, d).await {
                            fail(e, &mut failed);
                        }
                    }
                    Some(Msg::Progress(_) | Msg::Download(_)) => {}
                    Some(Msg::Done(result)) => {
                        return match failed {
                            Some(e) => Err(e),
                            None => Ok(result),
                        };
                    }
                    None => {
                        if let Some(e) = failed {
                            return Err(e);
                        }
                        return Ok(Err(TrainError::Checkpoint(
                            "the training thread panicked".into(),
                        )));
                    }
                },
                _ = tick.tick(), if !quiet => {
                    match store::jobs::cancel_requested(&sh.pool, &run.id).await {
                        Ok(true) => cancel.cancel(),
                        Ok(false) => {}
                        Err(e) => fail(e, &mut failed),
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
            if let Err(e) = sh.push_dir(output_dir, ARTIFACTS_REWRITTEN).await {
                tracing::warn!(job = %id, error = %e, "artifact store: the shutdown checkpoint stays local");
            }
            if !store::jobs::requeue(&sh.pool, id, &self.lessee.id).await? {
                tracing::warn!(job = %id, "lease lost before the requeue: left to its new owner");
                return Ok(JobStatus::Running);
            }
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
        let mut finish = match &result {
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
        // Epochs a killed earlier attempt checkpointed but did not record (the outcome holds
        // every epoch; rows are upserts).
        if let Ok(o) = &result {
            for e in &o.epochs {
                store::results::upsert_epoch(&sh.pool, id, e).await?;
            }
        }
        // The best model and reports are in the artifact store before the job is marked
        // succeeded: a model recorded as good is always complete there.
        if let Err(e) = sh.push_dir(output_dir, ARTIFACTS_REWRITTEN).await {
            if finish.status == JobStatus::Succeeded {
                tracing::error!(job = %id, error = %e, "artifact store: best model not stored; the job fails");
                finish = Finish {
                    status: JobStatus::Failed,
                    error: Some(format!(
                        "ArtifactError: the best model could not be stored: {e}"
                    )),
                    best_epoch: None,
                    best_checkpoint: None,
                    best_model_dir: None,
                    improvement_f1: None,
                    csv_row: finish.csv_row,
                };
            } else {
                tracing::warn!(job = %id, error = %e, "artifact store: reports not stored");
            }
        }
        if !store::jobs::finish(&sh.pool, id, &self.lessee.id, &finish).await? {
            tracing::warn!(job = %id, "lease lost before the job was finished: its result is not recorded");
            return Ok(JobStatus::Running);
        }
        if let (Ok(o), JobStatus::Succeeded) = (&result, finish.status) {
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
