//! `metafora serve`: wires the store, the model registry, the worker and the router from
//! validated [`Settings`], and shuts them down together (SIGTERM/Ctrl-C: stop accepting, end
//! SSE streams, checkpoint the running job and leave it queued for the next start).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{self, ApiSettings, AppState};
use crate::config::Settings;
use crate::hub::HubClient;
use crate::infer::Registry;
use crate::jobs::resolve::ResolveContext;
use crate::jobs::spec::JobSpec;
use crate::jobs::worker::Worker;
use crate::jobs::{JobStatus, Shared};
use crate::store;

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Send `true` to shut down.
    pub shutdown: watch::Sender<bool>,
    /// Present without a worker task (`--no-worker`): drive it by hand (tests).
    pub worker: Option<Worker>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    worker_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits for the HTTP server and the worker to stop.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("server task")??;
        if let Some(w) = self.worker_task {
            w.await.context("worker task")?;
        }
        Ok(())
    }
}

/// Starts everything and returns once the listener is bound.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    tracing::info!(device = %settings.device, "compute backend");
    let pool = store::connect(&settings.database_url, settings.database_wait)
        .await
        .with_context(|| format!("opening {}", store::redact_url(&settings.database_url)))?;
    crate::infer::engine::check_precision(settings.device, settings.detector.precision)
        .map_err(|e| anyhow::anyhow!("--detect-precision: {e}"))?;
    tracing::info!(cpu = %crate::infer::cpu::packed::cpu_summary(),
        precision = %settings.detector.precision, "inference engine");
    let registry = Arc::new(Registry::new(settings.device, settings.detector.clone()));
    if settings.api {
        deploy_default(&registry, &settings).await?;
    }
    let labelstudio_train_spec = match &settings.labelstudio_train_spec {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(JobSpec::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let artifacts = match &settings.artifacts {
        Some(url) => {
            let a = crate::store::artifacts::Artifacts::open(url)?;
            a.check()
                .await
                .with_context(|| format!("--artifacts {url}: the store does not answer"))?;
            tracing::info!(artifacts = %url, "artifact store");
            Some(Arc::new(a))
        }
        None => None,
    };
    let mut shared = Shared::new(
        pool,
        ResolveContext {
            allowed_roots: Some(settings.allowed_roots.clone()),
            base_dir: Some(settings.data_dir.clone()),
            uploads: Some(settings.data_dir.join("datasets")),
            hub: Some(HubClient::new(settings.hub.clone())),
        },
        settings.device,
        settings.data_dir.clone(),
        registry,
    );
    shared.artifacts = artifacts;
    let shared = Arc::new(shared);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = Worker::with_options(
        shared.clone(),
        shutdown_rx.clone(),
        settings.worker_options.clone(),
    );
    // Jobs whose worker died: a worker takes back those of its own name at once (its earlier
    // process is dead); any process requeues those whose lease ran out.
    let (requeued, gave_up) = if settings.worker {
        worker.register().await?.clone()
    } else {
        store::workers::sweep(&shared.pool, settings.worker_options.max_crashes, None).await?
    };
    if !requeued.is_empty() || !gave_up.is_empty() {
        tracing::warn!(
            ?requeued,
            ?gave_up,
            "recovered jobs left running by an earlier process"
        );
    }
    if !settings.api {
        // `metafora worker`: no API, no models served; the worker only.
        let worker_task = Some(tokio::spawn(worker.run()));
        let server = tokio::spawn(async move {
            let mut rx = shutdown_rx;
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        return Ok(Running {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            shared,
            shutdown: shutdown_tx,
            worker: None,
            server,
            worker_task,
        });
    }
    redeploy_jobs(&shared).await;
    crate::jobs::study::lifecycle::recover(&shared)
        .await
        .context("settling studies")?;
    crate::jobs::models::restore(&shared)
        .await
        .context("restoring deployments")?;
    crate::jobs::projects::recover(&shared, settings.limits.max_queued_jobs)
        .await
        .context("settling project retrainings")?;
    let restarted = crate::jobs::predictions::recover(&shared, shutdown_rx.clone())
        .await
        .context("restarting prediction runs")?;
    if restarted > 0 {
        tracing::warn!(
            runs = restarted,
            "restarted bulk prediction runs left unfinished"
        );
    }

    // Deployments made by other processes (a worker's deploy_as, another API node) are served
    // here too.
    tokio::spawn(crate::jobs::models::follow(
        shared.clone(),
        shutdown_rx.clone(),
    ));

    let limits = &settings.limits;
    let state = AppState {
        shared: shared.clone(),
        settings: Arc::new(ApiSettings {
            api_key: settings.access.api_key.clone(),
            public_hosts: settings.access.public_hosts.clone(),
            cors_origins: settings.access.cors_origins.clone(),
            max_body_bytes: limits.max_body_bytes,
            max_upload_bytes: limits.max_upload_bytes,
            max_queued_jobs: limits.max_queued_jobs,
            max_study_trials: limits.max_study_trials,
            request_timeout: limits.request_timeout,
            upload_timeout: limits.upload_timeout,
            assets_dir: settings.assets_dir.clone(),
            labelstudio_train_spec,
        }),
        shutdown: shutdown_rx.clone(),
        metrics: Default::default(),
        started: Instant::now(),
    };
    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("binding {}", settings.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let server = tokio::spawn(api::serve::serve(
        listener,
        api::router(state),
        limits.header_read_timeout,
        shutdown_rx.clone(),
    ));
    let (worker, worker_task) = if settings.worker {
        (None, Some(tokio::spawn(worker.run())))
    } else {
        (Some(worker), None)
    };
    Ok(Running {
        addr,
        shared,
        shutdown: shutdown_tx,
        worker,
        server,
        worker_task,
    })
}

/// Serves `--model` (or the bundled demo) as `default`; only an explicit `--model` that does
/// not load stops the start.
async fn deploy_default(registry: &Arc<Registry>, settings: &Settings) -> anyhow::Result<()> {
    let (r, dir) = (registry.clone(), settings.default_model.clone());
    match tokio::task::spawn_blocking(move || r.deploy("default", &dir, None, None, None)).await? {
        Ok(_) => Ok(()),
        Err(e) if settings.default_model_explicit => Err(anyhow::anyhow!(
            "loading --model {}: {e}",
            settings.default_model.display()
        )),
        Err(e) => {
            tracing::warn!(error = %e, path = %settings.default_model.display(), "bundled demo model not loaded; /v1/detect has no default model");
            Ok(())
        }
    }
}

/// Deploys the best model of every succeeded job that asked for `deploy_as`, oldest first,
/// so a restart serves what was deployed before it.
async fn redeploy_jobs(shared: &Arc<Shared>) {
    let Ok(rows) = store::jobs::list_finished(&shared.pool).await else {
        return;
    };
    for row in rows
        .into_iter()
        .filter(|r| r.status == JobStatus::Succeeded)
    {
        let Ok(spec) = serde_json::from_str::<JobSpec>(&row.spec) else {
            continue;
        };
        let (Some(name), Some(dir)) = (spec.deploy_as, row.best_model_dir) else {
            continue;
        };
        if crate::jobs::models::recorded(shared, &name)
            .await
            .unwrap_or(false)
        {
            continue;
        }
        let (r, id) = (shared.registry.clone(), row.id.clone());
        let result = tokio::task::spawn_blocking(move || {
            r.deploy(&name, std::path::Path::new(&dir), Some(id), None, None)
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(job = %row.id, error = %e, "could not redeploy");
        }
    }
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let running = start(settings).await?;
    let tx = running.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing requests, checkpointing the running job");
        let _ = tx.send(true);
    });
    running.wait().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler: this is a bug");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
