//! `/health`, `/metrics` (Prometheus text format) and `/openapi.yaml`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store;

use super::AppState;
use super::error::ApiError;

/// The OpenAPI document, embedded at build time.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// HTTP request counters and latency histograms by route.
#[derive(Default)]
pub struct HttpMetrics {
    inner: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        let mut m = self
            .inner
            .lock()
            .expect("metrics lock poisoned: this is a bug");
        let h = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        h.count += 1;
        h.sum += s;
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
    }

    fn render(&self, out: &mut String) {
        let m = self
            .inner
            .lock()
            .expect("metrics lock poisoned: this is a bug");
        let _ = writeln!(
            out,
            "# HELP metafora_http_request_duration_seconds HTTP request latency.\n# TYPE metafora_http_request_duration_seconds histogram"
        );
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "metafora_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "metafora_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "metafora_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "metafora_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}

/// GET /health — 200 when the database answers and (unless disabled) the default model is
/// loaded; 503 with the reason otherwise.
pub async fn health(State(state): State<AppState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.shared.pool).await {
        problems.push(format!("database: {e}"));
    }
    if *state.shutdown.borrow() {
        problems.push("shutting down".to_string());
    }
    let models = state.shared.registry.list();
    let body = json!({
        "status": if problems.is_empty() { "ok" } else { "unavailable" },
        "problems": problems,
        "device": state.shared.device.to_string(),
        "models": models.iter().map(|m| &m.name).collect::<Vec<_>>(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// GET /metrics
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut out = String::new();
    let counts = store::jobs::counts(&state.shared.pool).await?;
    let _ = writeln!(
        out,
        "# HELP metafora_jobs Jobs by status.\n# TYPE metafora_jobs gauge"
    );
    for (s, n) in &counts {
        let _ = writeln!(out, "metafora_jobs{{status=\"{s}\"}} {n}");
    }
    let queued = counts
        .iter()
        .find(|(s, _)| s == "queued")
        .map(|c| c.1)
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP metafora_queue_depth Jobs waiting to run.\n# TYPE metafora_queue_depth gauge\nmetafora_queue_depth {queued}"
    );
    let step = *state
        .shared
        .step_seconds
        .lock()
        .expect("poisoned: this is a bug");
    let _ = writeln!(
        out,
        "# HELP metafora_train_step_seconds Duration of the last optimizer step.\n# TYPE metafora_train_step_seconds gauge"
    );
    let _ = writeln!(out, "metafora_train_step_seconds {}", step.unwrap_or(0.0));
    let _ = writeln!(
        out,
        "# HELP metafora_train_steps_total Optimizer steps run by this process.\n# TYPE metafora_train_steps_total counter"
    );
    let _ = writeln!(
        out,
        "metafora_train_steps_total {}",
        state
            .shared
            .steps_total
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP metafora_detect_in_flight Detect requests waiting or running, by model.\n# TYPE metafora_detect_in_flight gauge"
    );
    for m in state.shared.registry.list() {
        if let Some(d) = state.shared.registry.get(&m.name) {
            let _ = writeln!(
                out,
                "metafora_detect_in_flight{{model=\"{}\"}} {}",
                m.name,
                d.in_flight()
            );
        }
    }
    state.http.render(&mut out);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// GET /openapi.yaml
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}
