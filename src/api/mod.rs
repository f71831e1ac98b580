//! HTTP only: the router, one file per resource, the error type and DTOs.

pub mod datasets;
pub mod detect;
pub mod error;
pub mod events;
pub mod jobs;
pub mod labelstudio;
pub mod system;
pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

use crate::jobs::spec::JobSpec;
use crate::jobs::worker::Shared;
use error::ApiError;

/// Validated service settings the handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_queued_jobs: usize,
    /// Spec started by Label Studio's START_TRAINING webhook.
    pub labelstudio_train_spec: Option<JobSpec>,
}

/// State of every handler.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub settings: Arc<Settings>,
    pub shutdown: watch::Receiver<bool>,
    pub http: Arc<system::HttpMetrics>,
    pub started: Instant,
}

/// The router with every route, auth, limits, tracing and HTTP metrics.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/jobs", post(jobs::create_job).get(jobs::list_jobs))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/v1/jobs/{id}/epochs", get(jobs::get_epochs))
        .route("/v1/jobs/{id}/results", get(jobs::get_results))
        .route("/v1/jobs/{id}/results.csv", get(jobs::get_results_csv))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/push", post(jobs::push_job))
        .route("/v1/jobs/{id}/events", get(events::job_events))
        .route("/v1/results.csv", get(jobs::all_results_csv))
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
        .route("/labelstudio/health", get(labelstudio::health))
        .route("/labelstudio/setup", post(labelstudio::setup))
        .route("/labelstudio/predict", post(labelstudio::predict))
        .route("/labelstudio/webhook", post(labelstudio::webhook))
        .route("/metrics", get(system::metrics))
        .route("/openapi.yaml", get(system::openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(system::health))
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::BadRequest("method not allowed on this route".into()).into_response_405()
        })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), record_http))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

impl ApiError {
    fn into_response_405(self) -> Response {
        let mut r = self.into_response();
        *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
        r
    }
}

/// Bearer token (or Basic with the key as password, as Label Studio sends) when `--api-key`
/// is set.
async fn auth(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = &state.settings.api_key else {
        return Ok(next.run(req).await);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ok = if let Some(token) = given.strip_prefix("Bearer ") {
        constant_time_eq(token.trim().as_bytes(), key.as_bytes())
    } else if let Some(b64) = given.strip_prefix("Basic ") {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
            .is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes()))
    } else {
        false
    };
    if ok {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn record_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    state
        .http
        .observe(&method, &route, resp.status().as_u16(), t.elapsed());
    resp
}

/// How long SSE keep-alives wait.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
