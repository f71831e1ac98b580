//! `metafora serve`: wires the store, the model registry, the worker and the router, and shuts
//! them down together (SIGTERM/Ctrl-C: stop accepting, end SSE streams, checkpoint the running
//! job and leave it queued for the next start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{Notify, broadcast, watch};

use crate::api::{self, AppState, Settings};
use crate::cli::assets_dir;
use crate::config::ServeArgs;
use crate::hub::HubClient;
use crate::infer::{DetectorOptions, Registry};
use crate::jobs::resolve::ResolveContext;
use crate::jobs::spec::JobSpec;
use crate::jobs::worker::{Shared, Worker};
use crate::store;

/// Jobs that crashed this many times are marked `interrupted` instead of retried.
pub const MAX_ATTEMPTS: i64 = 3;

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    /// Send `true` to shut down.
    pub shutdown: watch::Sender<bool>,
    /// Present when `--no-worker`: drive it by hand (tests).
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
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    tracing::info!(%device, "compute backend");
    for sub in ["jobs", "datasets"] {
        std::fs::create_dir_all(args.data_dir.join(sub))
            .with_context(|| format!("creating {}", args.data_dir.join(sub).display()))?;
    }
    let data_dir = args.data_dir.canonicalize().context("data dir")?;
    let pool = store::connect(&args.database_url)
        .await
        .with_context(|| format!("opening {}", args.database_url))?;
    let (requeued, gave_up) = store::jobs::recover_orphans(&pool, MAX_ATTEMPTS).await?;
    if !requeued.is_empty() || !gave_up.is_empty() {
        tracing::warn!(
            ?requeued,
            ?gave_up,
            "recovered jobs left running by an earlier process"
        );
    }

    let opts = DetectorOptions {
        queue: args.detect_queue,
        batch_tokens: args.batch_tokens,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
        stride: args.window_stride,
        window: None,
    };
    let registry = Arc::new(Registry::new(device, opts));
    let default_model = args
        .model
        .clone()
        .unwrap_or_else(|| assets_dir().join("models/metafora-demo-ca"));
    {
        let (r, m) = (registry.clone(), default_model.clone());
        let explicit = args.model.is_some();
        match tokio::task::spawn_blocking(move || r.deploy("default", &m, None)).await? {
            Ok(_) => {}
            Err(e) if explicit => {
                return Err(anyhow::anyhow!(
                    "loading --model {}: {e}",
                    default_model.display()
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %default_model.display(), "bundled demo model not loaded; /v1/detect has no default model")
            }
        }
    }

    let mut roots: Vec<PathBuf> = vec![data_dir.clone(), assets_dir()];
    roots.extend(args.allow_paths.iter().cloned());
    let ctx = ResolveContext {
        allowed_roots: Some(roots),
        uploads: Some(data_dir.join("datasets")),
        hub: Some(
            args.hub
                .clone()
                .map(HubClient::new)
                .unwrap_or_else(HubClient::from_env),
        ),
    };
    let (events, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        ctx,
        device,
        data_dir: data_dir.clone(),
        registry: registry.clone(),
        events,
        wake: Notify::new(),
        running: Mutex::new(Default::default()),
        step_seconds: Mutex::new(None),
        steps_total: Default::default(),
    });
    redeploy_jobs(&shared).await;

    let labelstudio_train_spec = match &args.labelstudio_train_spec {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(JobSpec::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let settings = Settings {
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        max_upload_bytes: args.max_upload_bytes,
        max_queued_jobs: args.max_queued_jobs,
        labelstudio_train_spec,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        shared: shared.clone(),
        settings: Arc::new(settings),
        shutdown: shutdown_rx.clone(),
        http: Arc::new(api::system::HttpMetrics::default()),
        started: Instant::now(),
    };
    let app = api::router(state);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");

    let worker = Worker::new(shared.clone(), shutdown_rx.clone());
    let (worker, worker_task) = if args.no_worker {
        (Some(worker), None)
    } else {
        (None, Some(tokio::spawn(worker.run())))
    };
    let mut rx = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
    });
    Ok(Running {
        addr,
        shared,
        shutdown: shutdown_tx,
        worker,
        server,
        worker_task,
    })
}

/// Deploys the best model of every succeeded job that asked for `deploy_as`, oldest first,
/// so a restart serves what was deployed before it.
async fn redeploy_jobs(shared: &Arc<Shared>) {
    let Ok(rows) = store::jobs::list_finished(&shared.pool).await else {
        return;
    };
    for row in rows.into_iter().filter(|r| r.status == "succeeded") {
        let Ok(spec) = serde_json::from_str::<JobSpec>(&row.spec) else {
            continue;
        };
        let (Some(name), Some(dir)) = (spec.deploy_as, row.best_model_dir) else {
            continue;
        };
        let (r, id) = (shared.registry.clone(), row.id.clone());
        let result = tokio::task::spawn_blocking(move || {
            r.deploy(&name, std::path::Path::new(&dir), Some(id))
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(job = %row.id, error = %e, "could not redeploy");
        }
    }
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let running = start(args).await?;
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
