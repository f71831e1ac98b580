//! HTTP only: the router, one file per resource, the guards every request passes, the error
//! type, DTOs and the connection loop.
//!
//! Must not import the CLI, the trainer or the model code: handlers call `jobs`, `infer` and
//! `store`.

pub mod datasets;
pub mod detect;
pub mod error;
pub mod events;
pub mod guard;
pub mod jobs;
pub mod labelstudio;
pub mod predictions;
pub mod projects;
pub mod serve;
pub mod studies;
pub mod system;
pub mod types;
pub mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::jobs::Shared;
use crate::jobs::spec::JobSpec;
use error::ApiError;

/// What the handlers and guards need of the service's settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Bearer token (or Basic password) every route but `/health` needs.
    pub api_key: Option<String>,
    /// Without a key: host names a request's `Host` may name besides IP addresses and
    /// `localhost`. `None`: no check (a key is set).
    pub public_hosts: Option<Vec<String>>,
    /// Origins allowed to call from a browser.
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_queued_jobs: usize,
    pub max_study_trials: usize,
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
    /// Where presets find the bundled model and data.
    pub assets_dir: PathBuf,
    /// Spec started by Label Studio's START_TRAINING webhook.
    pub labelstudio_train_spec: Option<JobSpec>,
}

/// State of every handler.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub settings: Arc<ApiSettings>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<system::Metrics>,
    pub started: Instant,
}

impl AppState {
    /// How server paths are shown to clients.
    pub fn paths(&self) -> types::Paths {
        types::Paths {
            data_dir: self.shared.data_dir.clone(),
            assets_dir: self.settings.assets_dir.clone(),
        }
    }
}

/// The router with every route and the guards: request ids, panics as 500s, HTTP metrics,
/// Host/Origin checks (DNS rebinding, cross-site requests), CORS, auth, timeouts, body limits.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(ui::index))
        .route("/ui", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/health", get(system::health))
        .route("/info", get(system::info))
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/v1/jobs/{id}/epochs", get(jobs::get_epochs))
        .route("/v1/jobs/{id}/results", get(jobs::get_results))
        .route("/v1/jobs/{id}/results.csv", get(jobs::get_results_csv))
        .route("/v1/jobs/{id}/report.json", get(jobs::get_report))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/push", post(jobs::push_job))
        .route("/v1/jobs/{id}/events", get(events::job_events))
        .route("/v1/results.csv", get(jobs::all_results_csv))
        .route(
            "/v1/studies",
            post(studies::create_study).get(studies::list_studies),
        )
        .route(
            "/v1/studies/{id}",
            get(studies::get_study).delete(studies::delete_study),
        )
        .route("/v1/studies/{id}/cancel", post(studies::cancel_study))
        .route("/v1/studies/{id}/results.csv", get(studies::results_csv))
        .route("/v1/studies/{id}/summary.csv", get(studies::summary_csv))
        .route("/v1/studies/{id}/events", get(events::study_events))
        .route("/v1/detect", post(detect::detect))
        .route(
            "/v1/models",
            get(detect::list_models).post(detect::deploy_model),
        )
        .route(
            "/v1/datasets",
            post(datasets::upload_dataset)
                .layer(DefaultBodyLimit::max(state.settings.max_upload_bytes))
                .get(datasets::list_datasets),
        )
        .route("/v1/datasets/{id}", get(datasets::get_dataset))
        .route(
            "/v1/models/{name}",
            axum::routing::delete(detect::delete_model),
        )
        .route("/v1/models/{name}/rollback", post(detect::rollback_model))
        .route("/v1/models/{name}/versions", get(detect::model_versions))
        .route(
            "/v1/projects",
            post(projects::create_project).get(projects::list_projects),
        )
        .route(
            "/v1/projects/{id}",
            get(projects::get_project).delete(projects::delete_project),
        )
        .route("/v1/projects/{id}/train", post(projects::train_project))
        .route(
            "/v1/projects/{id}/import",
            post(projects::import).layer(DefaultBodyLimit::max(state.settings.max_upload_bytes)),
        )
        .route(
            "/v1/predictions",
            post(predictions::create).get(predictions::list),
        )
        .route("/v1/predictions/{id}", get(predictions::get))
        .route("/v1/predictions/{id}/output", get(predictions::output))
        .route("/labelstudio/health", get(labelstudio::health))
        .route("/labelstudio/setup", post(labelstudio::setup))
        .route("/labelstudio/predict", post(labelstudio::predict))
        .route("/labelstudio/webhook", post(labelstudio::webhook))
        .route("/metrics", get(system::metrics))
        .route("/v1/workers", get(system::workers))
        .route("/openapi.yaml", get(system::openapi))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    // Layers run outermost last-added: request id, trace, panics, metrics, Host/Origin, CORS,
    // auth, timeout, then the body limit and the handler.
    let mut app = routes
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard::auth));
    if let Some(cors) = guard::cors(&state.settings.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(
        state.clone(),
        guard::same_site,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        system::record_http,
    ))
    .layer(CatchPanicLayer::custom(guard::panic_response))
    .layer(TraceLayer::new_for_http().make_span_with(guard::request_span))
    .layer(middleware::from_fn(guard::request_id))
    .with_state(state)
}

/// How long SSE keep-alives wait.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
