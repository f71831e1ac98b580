//! `/health`, `/info`, `/metrics` (Prometheus/OpenMetrics text) and `/openapi.yaml`.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store;

use super::AppState;
use super::error::ApiError;
use super::types::{HealthResponse, InfoResponse, ModelHealthResponse};

/// The OpenAPI document, embedded at build time.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// HTTP methods as metric labels: the standard ones, everything else `other` (a client
/// inventing methods must not grow the label set).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    other,
}

impl MethodLabel {
    fn of(m: &axum::http::Method) -> Self {
        use axum::http::Method as M;
        match *m {
            M::GET => Self::GET,
            M::HEAD => Self::HEAD,
            M::POST => Self::POST,
            M::PUT => Self::PUT,
            M::PATCH => Self::PATCH,
            M::DELETE => Self::DELETE,
            M::OPTIONS => Self::OPTIONS,
            _ => Self::other,
        }
    }
}

/// Labels of the HTTP histogram: bounded by the route table (templates, never raw paths).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: MethodLabel,
    /// The matched route template (`/v1/jobs/{id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    name: String,
    device: String,
}

/// `/metrics` reports workers seen within this long.
const WORKERS_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// A worker as `/v1/workers` shows it.
#[derive(Debug, serde::Serialize)]
pub struct WorkerView {
    pub id: String,
    pub name: String,
    pub device: String,
    pub device_kind: String,
    pub host: String,
    pub pid: i64,
    /// `alive` (heartbeat within the last 30 s), `stopped` (stopped cleanly) or `lost`.
    pub state: &'static str,
    pub current_job: Option<String>,
    pub started_at: String,
    pub last_heartbeat: String,
    pub seconds_since_heartbeat: f64,
    pub stopped_at: Option<String>,
}

async fn worker_views(state: &AppState, window_ms: i64) -> Result<Vec<WorkerView>, ApiError> {
    let now = store::workers::now_ms();
    let rows = store::workers::list(&state.shared.pool, now - window_ms).await?;
    Ok(rows
        .into_iter()
        .map(|w| {
            let age = (now - w.heartbeat_ms).max(0) as f64 / 1000.0;
            WorkerView {
                state: if w.stopped_at.is_some() {
                    "stopped"
                } else if age <= 30.0 {
                    "alive"
                } else {
                    "lost"
                },
                id: w.id,
                name: w.name,
                device: w.device,
                device_kind: w.device_kind,
                host: w.host,
                pid: w.pid,
                current_job: w.current_job,
                started_at: w.started_at,
                last_heartbeat: w.heartbeat_at,
                seconds_since_heartbeat: age,
                stopped_at: w.stopped_at,
            }
        })
        .collect())
}

/// `GET /v1/workers` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersQuery {
    /// Workers with a heartbeat within this many hours (1..=8760; default 24).
    since_hours: Option<i64>,
}

/// GET /v1/workers: worker processes seen recently, newest heartbeat first.
pub async fn workers(
    State(state): State<AppState>,
    q: Result<axum::extract::Query<WorkersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let hours = q.since_hours.unwrap_or(24);
    if !(1..=8760).contains(&hours) {
        return Err(ApiError::invalid(
            "since_hours",
            format!("must be in 1..=8760, got {hours}"),
        ));
    }
    let workers = worker_views(&state, hours * 3600 * 1000).await?;
    Ok(Json(serde_json::json!({ "workers": workers })))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ModelVersionLabel {
    model: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

fn http_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The metrics kept between scrapes (the rest is read at scrape time).
pub struct Metrics {
    pub http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Predicted labels absent from a Label Studio project's config, dropped from `/predict`.
    pub labels_dropped: prometheus_client::metrics::counter::Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: Family::new_with_constructor(http_histogram),
            labels_dropped: Default::default(),
        }
    }
}

/// Times every request by method, route template and status.
pub async fn record_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = MethodLabel::of(req.method());
    let t = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .http
        .get_or_create(&HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .observe(t.elapsed().as_secs_f64());
    resp
}

/// GET /health — 200 `ok` or `degraded` (a model restarting after a panic, or the default
/// model missing: the server still answers), 503 `unavailable` when the database does not
/// answer or the server is shutting down.
pub async fn health(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    let database = match sqlx::query("SELECT 1").execute(&state.shared.pool).await {
        Ok(_) => "ok".to_string(),
        Err(e) => {
            problems.push(format!("database: {e}"));
            "unavailable".to_string()
        }
    };
    if *state.shutdown.borrow() {
        problems.push("shutting down".to_string());
    }
    let registry = &state.shared.registry;
    let models: Vec<ModelHealthResponse> = registry
        .list()
        .into_iter()
        .filter_map(|info| {
            let h = registry.get(&info.name)?.health();
            Some(ModelHealthResponse {
                name: info.name,
                version: info.version,
                state: h.state,
                reason: h.reason,
                restarts: h.restarts,
            })
        })
        .collect();
    let mut degraded: Vec<String> = models
        .iter()
        .filter(|m| m.state != "ok")
        .map(|m| format!("model {}: {}", m.name, m.reason.as_deref().unwrap_or("")))
        .collect();
    if registry.get("default").is_none() {
        degraded.push("no default model deployed".into());
    }
    let status = if !problems.is_empty() {
        "unavailable"
    } else if !degraded.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    problems.extend(degraded);
    let body = HealthResponse {
        status,
        problems,
        database,
        device: state.shared.device.to_string(),
        models,
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let code = if status == "unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// GET /info — what a client needs to size its requests (as TEI's `/info`).
pub async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let opts = state.shared.registry.options();
    Json(InfoResponse {
        version: env!("CARGO_PKG_VERSION"),
        device: state.shared.device.to_string(),
        models: state
            .shared
            .registry
            .list()
            .into_iter()
            .map(|m| super::types::ModelResponse::new(m, &state.paths()))
            .collect(),
        max_input_chars: super::detect::MAX_TEXT_CHARS,
        max_client_batch_size: super::detect::MAX_TEXTS,
        max_concurrent_requests: opts.queue,
        max_batch_tokens: opts.batch_tokens,
        batch_wait_ms: opts.batch_wait.as_millis() as u64,
        window_stride: opts.stride,
        max_body_bytes: state.settings.max_body_bytes,
        max_upload_bytes: state.settings.max_upload_bytes,
        request_timeout_seconds: state.settings.request_timeout.as_secs(),
        upload_timeout_seconds: state.settings.upload_timeout.as_secs(),
    })
}

/// GET /metrics
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = store::jobs::counts(&state.shared.pool).await?;
    let mut reg = Registry::default();
    let jobs = Family::<StatusLabel, Gauge>::default();
    let mut queued = 0;
    for (s, n) in &counts {
        jobs.get_or_create(&StatusLabel { status: s.as_str() })
            .set(*n);
        if *s == crate::jobs::JobStatus::Queued {
            queued = *n;
        }
    }
    reg.register("metafora_jobs", "Jobs by status", jobs);
    reg.register(
        "metafora_queue_depth",
        "Jobs waiting to run",
        ConstGauge::new(queued),
    );
    let heartbeat_age = Family::<WorkerLabel, Gauge<f64, AtomicU64>>::default();
    let busy = Family::<WorkerLabel, Gauge>::default();
    for w in worker_views(&state, WORKERS_WINDOW_MS).await? {
        if w.state != "alive" {
            continue;
        }
        let l = WorkerLabel {
            name: w.name.clone(),
            device: w.device.clone(),
        };
        heartbeat_age
            .get_or_create(&l)
            .set(w.seconds_since_heartbeat);
        busy.get_or_create(&l).set(w.current_job.is_some() as i64);
    }
    reg.register(
        "metafora_worker_heartbeat_age_seconds",
        "Seconds since each live worker's last heartbeat",
        heartbeat_age,
    );
    reg.register(
        "metafora_worker_busy",
        "1 when a live worker is running a job",
        busy,
    );
    let t = &state.shared.telemetry;
    reg.register(
        "metafora_train_step_seconds",
        "Duration of the last optimizer step",
        t.step_seconds.clone(),
    );
    reg.register(
        "metafora_train_steps",
        "Optimizer steps run by this process",
        t.steps.clone(),
    );
    let in_flight = Family::<ModelLabel, Gauge>::default();
    let restarts = Family::<ModelLabel, Gauge<u64, AtomicU64>>::default();
    for m in state.shared.registry.list() {
        if let Some(d) = state.shared.registry.get(&m.name) {
            let label = ModelLabel { model: m.name };
            in_flight.get_or_create(&label).set(d.in_flight() as i64);
            restarts.get_or_create(&label).set(d.health().restarts);
        }
    }
    reg.register(
        "metafora_detect_in_flight",
        "Detect requests waiting or running, by model",
        in_flight,
    );
    reg.register(
        "metafora_detect_executor_restarts",
        "Times a model's executor was restarted after a panic, by model",
        restarts,
    );
    reg.register(
        "metafora_uptime_seconds",
        "Seconds since the server started",
        ConstCounter::new(state.started.elapsed().as_secs()),
    );
    reg.register(
        "metafora_labelstudio_labels_dropped",
        "Predicted regions dropped from Label Studio predictions because the project's config lacks their label",
        state.metrics.labels_dropped.clone(),
    );
    let deployed = Family::<ModelVersionLabel, Gauge>::default();
    for m in state.shared.registry.list() {
        deployed
            .get_or_create(&ModelVersionLabel {
                model: m.name,
                version: m.version,
            })
            .set(1);
    }
    reg.register(
        "metafora_model_deployed",
        "Deployed models with their content-hash versions (1 per served version)",
        deployed,
    );
    reg.register(
        "metafora_http_request_duration_seconds",
        "HTTP request latency by method, route template and status",
        state.metrics.http.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// GET /openapi.yaml
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}
