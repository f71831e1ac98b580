//! Job lifecycle: spec parsing, resolution, submission, the worker, cancellation.
//!
//! Must not import the API or the CLI: both call into it.

pub mod models;
pub mod predictions;
pub mod projects;
pub mod publish;
pub mod resolve;
pub mod spec;
pub mod study;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::hub::card::CardInput;
use crate::infer::Registry;
use crate::model::backend::Resolved;
use crate::store::{self, StoreError, jobs::JobRow};
use crate::train::CancelToken;

pub use crate::store::jobs::JobStatus;
use resolve::ResolveContext;
use spec::JobSpec;

/// A stored event, as broadcast to SSE listeners.
#[derive(Debug, Clone)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: String,
    pub kind: String,
    pub data: Value,
}

/// A stored study event, as broadcast to SSE listeners.
#[derive(Debug, Clone)]
pub struct StudyEvent {
    pub id: i64,
    pub study_id: String,
    pub kind: String,
    pub data: Value,
}

/// Event kinds after which a job's stream ends.
pub const FINAL_EVENTS: [&str; 1] = ["finished"];

/// Where a job is, as stored on its row and shown by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// `queued`, `downloading`, `evaluating_base`, `training`, `done`, …
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub epoch: usize,
    #[serde(default)]
    pub epochs: usize,
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

/// Training figures the worker publishes for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct TrainTelemetry {
    /// Seconds of the last optimizer step.
    pub step_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Optimizer steps run by this process.
    pub steps: Counter,
}

/// State shared by the worker and the API.
pub struct Shared {
    pub pool: crate::store::Pool,
    pub ctx: ResolveContext,
    pub device: Resolved,
    pub data_dir: PathBuf,
    pub registry: Arc<Registry>,
    pub events: broadcast::Sender<JobEvent>,
    pub study_events: broadcast::Sender<StudyEvent>,
    /// Wakes the worker when a job is queued.
    pub wake: Notify,
    /// Cancel tokens of running jobs.
    pub running: Mutex<HashMap<String, CancelToken>>,
    pub telemetry: TrainTelemetry,
    /// Serialises annotation changes with the dataset versions they write (one version number
    /// and folder per change, whatever the number of concurrent webhooks).
    pub annotation_writes: tokio::sync::Mutex<()>,
    /// Serialises deployments: the model served and the one recorded as active stay the same.
    pub deployments: tokio::sync::Mutex<()>,
    /// How often SSE streams read the store for events other processes wrote.
    pub event_poll: std::time::Duration,
    /// The artifact store shared by all machines (`--artifacts`); `None`: the data dir only.
    pub artifacts: Option<Arc<store::artifacts::Artifacts>>,
}

impl Shared {
    /// State over an open store, for the server and for local runs (`metafora study`).
    pub fn new(
        pool: crate::store::Pool,
        ctx: ResolveContext,
        device: Resolved,
        data_dir: PathBuf,
        registry: Arc<Registry>,
    ) -> Self {
        Shared {
            event_poll: match store::engine(&pool) {
                store::Engine::Postgres => std::time::Duration::from_millis(250),
                store::Engine::Sqlite => std::time::Duration::from_secs(1),
            },
            pool,
            ctx,
            device,
            data_dir,
            registry,
            events: broadcast::channel(1024).0,
            study_events: broadcast::channel(256).0,
            wake: Notify::new(),
            running: Mutex::new(Default::default()),
            telemetry: Default::default(),
            annotation_writes: tokio::sync::Mutex::new(()),
            deployments: tokio::sync::Mutex::new(()),
            artifacts: None,
        }
    }

    /// Stores a study event and broadcasts it.
    pub async fn emit_study(
        &self,
        study_id: &str,
        kind: &str,
        data: Value,
    ) -> Result<(), StoreError> {
        let row =
            store::studies::insert_event(&self.pool, study_id, kind, &data.to_string()).await?;
        let _ = self.study_events.send(StudyEvent {
            id: row.id,
            study_id: study_id.into(),
            kind: kind.into(),
            data,
        });
        Ok(())
    }

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

    /// A path another machine recorded (under its own data dir) as a path under this one's:
    /// every machine keeps `jobs/`, `datasets/` and `projects/` under its data dir.
    pub fn localize(&self, recorded: &str) -> PathBuf {
        let p = std::path::Path::new(recorded);
        if p.starts_with(&self.data_dir) || !p.is_absolute() {
            return if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.data_dir.join(p)
            };
        }
        let parts: Vec<_> = p.components().collect();
        for (i, c) in parts.iter().enumerate().rev() {
            let name = c.as_os_str();
            if (name == "jobs" || name == "datasets" || name == "projects") && i + 1 < parts.len() {
                let rest: PathBuf = parts[i..].iter().collect();
                return self.data_dir.join(rest);
            }
        }
        p.to_path_buf()
    }

    /// `dir` relative to the data dir ('/'-separated), if it is under it.
    fn rel(&self, dir: &std::path::Path) -> Option<String> {
        let r = dir.strip_prefix(&self.data_dir).ok()?;
        let parts: Vec<String> = r
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        (!parts.is_empty() && parts.iter().all(|p| p != "..")).then(|| parts.join("/"))
    }

    /// Mirrors a directory under the data dir to the artifact store (nothing without one);
    /// `always`: file names uploaded even when their size did not change.
    pub async fn push_dir(
        &self,
        dir: &std::path::Path,
        always: &[&str],
    ) -> Result<(), store::artifacts::ArtifactError> {
        let (Some(a), Some(rel)) = (&self.artifacts, self.rel(dir)) else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let moved = a.push_dir(dir, &rel, always).await?;
        if moved.files + moved.deleted > 0 {
            tracing::info!(dir = %rel, files = moved.files, bytes = moved.bytes,
                deleted = moved.deleted, seconds = t.elapsed().as_secs_f64(), "artifacts pushed");
        }
        Ok(())
    }

    /// Fetches what the artifact store has under a directory of the data dir and this machine
    /// lacks (nothing without a store).
    pub async fn pull_dir(
        &self,
        dir: &std::path::Path,
    ) -> Result<(), store::artifacts::ArtifactError> {
        let (Some(a), Some(rel)) = (&self.artifacts, self.rel(dir)) else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let moved = a.pull_dir(&rel, dir).await?;
        if moved.files > 0 {
            tracing::info!(dir = %rel, files = moved.files, bytes = moved.bytes,
                seconds = t.elapsed().as_secs_f64(), "artifacts pulled");
        }
        Ok(())
    }

    /// Directory of a job's artifacts.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("jobs").join(id)
    }

    /// Queues a job (the API and Label Studio's webhook both submit through here): stores it,
    /// records a `status` event naming `source`, wakes the worker.
    pub async fn submit(
        &self,
        spec: &JobSpec,
        source: &str,
        max_queued: usize,
    ) -> Result<JobRow, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let out = self.job_dir(&id);
        let row = store::jobs::insert(
            &self.pool,
            &id,
            &serde_json::to_string(spec)?,
            &out.display().to_string(),
            None,
            max_queued,
        )
        .await?;
        self.emit(&id, "status", json!({"status": "queued", "source": source}))
            .await?;
        self.wake.notify_one();
        Ok(row)
    }

    /// Asks a running job's training thread to stop (the worker also polls the flag).
    pub fn signal_cancel(&self, id: &str) {
        if let Some(t) = self
            .running
            .lock()
            .expect("running map poisoned: this is a bug")
            .get(id)
        {
            t.cancel();
        }
    }
}

/// The model card's description of a job.
pub fn card_input(spec: &JobSpec) -> CardInput {
    let d = &spec.dataset;
    CardInput {
        base_model: spec.model.checkpoint.clone(),
        base_revision: spec.model.revision.clone(),
        model_name: spec.model.display_name(),
        dataset: d
            .hub_id
            .clone()
            .or(d.path.clone())
            .or(d.id.clone())
            .unwrap_or_default(),
        dataset_revision: d.revision.clone(),
        seed: spec.seed,
        num_train_epochs: spec.training.num_train_epochs,
        training: serde_json::to_value(&spec.training).unwrap_or(Value::Null),
    }
}
