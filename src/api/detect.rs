//! `/v1/detect` and `/v1/models`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::infer::aggregate::Strategy;
use crate::infer::{DetectOutput, Input, LongText};
use crate::store;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::types::{DeployRequest, DetectRequest};

/// Longest text accepted (code points); longer texts are still windowed, this only bounds work.
pub const MAX_TEXT_CHARS: usize = 200_000;
/// Most texts in one request.
pub const MAX_TEXTS: usize = 256;

/// Checks a detect request and turns it into an input, a strategy and a threshold.
pub fn parse_detect(
    req: DetectRequest,
) -> Result<(Input, Strategy, Option<f64>, String, LongText), ApiError> {
    let input = match (req.text, req.texts, req.tokens) {
        (Some(t), None, None) => {
            check_text("text", &t)?;
            Input::Text(t)
        }
        (None, Some(ts), None) => {
            if ts.is_empty() || ts.len() > MAX_TEXTS {
                return Err(ApiError::invalid(
                    "texts",
                    format!("needs 1 to {MAX_TEXTS} texts, got {}", ts.len()),
                ));
            }
            for (i, t) in ts.iter().enumerate() {
                check_text(&format!("texts[{i}]"), t)?;
            }
            Input::Texts(ts)
        }
        (None, None, Some(words)) => {
            if words.is_empty() || words.len() > 20_000 {
                return Err(ApiError::invalid(
                    "tokens",
                    format!("needs 1 to 20000 words, got {}", words.len()),
                ));
            }
            if let Some(i) = words.iter().position(|w| w.trim().is_empty()) {
                return Err(ApiError::invalid(
                    format!("tokens[{i}]"),
                    "must not be empty",
                ));
            }
            Input::Tokens(words)
        }
        _ => {
            return Err(ApiError::invalid(
                "text",
                "give exactly one of text, texts or tokens",
            ));
        }
    };
    let strategy = match req.aggregation_strategy.as_deref() {
        None => Strategy::Simple,
        Some(s) => s
            .parse()
            .map_err(|e: String| ApiError::invalid("aggregation_strategy", e))?,
    };
    if let Some(t) = req.threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ApiError::invalid(
            "threshold",
            format!("must be in [0, 1], got {t}"),
        ));
    }
    let long = match req.long_text.as_deref() {
        None => LongText::Sentences,
        Some(s) => s
            .parse()
            .map_err(|e: String| ApiError::invalid("long_text", e))?,
    };
    let model = req.model.unwrap_or_else(|| "default".into());
    Ok((input, strategy, req.threshold, model, long))
}

fn check_text(field: &str, t: &str) -> Result<(), ApiError> {
    let n = t.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("is {n} characters; the limit is {MAX_TEXT_CHARS}"),
        ));
    }
    Ok(())
}

/// Runs detection on a deployed model.
pub async fn run_detect(
    state: &AppState,
    model: &str,
    input: Input,
    strategy: Strategy,
    threshold: Option<f64>,
    long: LongText,
) -> Result<DetectOutput, ApiError> {
    let detector = state
        .shared
        .registry
        .get(model)
        .ok_or_else(|| ApiError::NotFound(format!("model {model:?}")))?;
    Ok(detector.detect(input, strategy, threshold, long).await?)
}

/// POST /v1/detect
pub async fn detect(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetectRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (input, strategy, threshold, model, long) = parse_detect(req)?;
    let many = matches!(input, Input::Texts(_));
    let out = run_detect(&state, &model, input, strategy, threshold, long).await?;
    Ok(Json(if many {
        json!({"model": out.model, "model_version": out.model_version, "results": out.results})
    } else {
        let r = &out.results[0];
        json!({"model": out.model, "model_version": out.model_version, "entities": r.entities, "windows": r.windows})
    }))
}

/// GET /v1/models
pub async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"models": state.shared.registry.list()}))
}

/// POST /v1/models — deploys a finished job's best model or an HF model directory.
pub async fn deploy_model(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<Response, ApiError> {
    if !(1..=64).contains(&req.name.len())
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::invalid(
            "name",
            "must be 1-64 letters, digits, '-', '_' or '.'",
        ));
    }
    let (dir, job_id) = match (&req.job_id, &req.path) {
        (Some(job), None) => {
            let id = uuid::Uuid::parse_str(job)
                .map_err(|_| ApiError::invalid("job_id", format!("no job {job:?}")))?
                .to_string();
            let row = store::jobs::get(&state.shared.pool, &id)
                .await?
                .ok_or_else(|| ApiError::invalid("job_id", format!("no job {job:?}")))?;
            let dir = row
                .best_model_dir
                .filter(|_| row.status == "succeeded")
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "job {id} is {}: no best model to deploy",
                        row.status
                    ))
                })?;
            (std::path::PathBuf::from(dir), Some(id))
        }
        (None, Some(p)) => {
            let dir = state.shared.ctx.local_path("path", p)?;
            if !dir.join("config.json").is_file() {
                return Err(ApiError::invalid("path", format!("{p} has no config.json")));
            }
            (dir, None)
        }
        _ => {
            return Err(ApiError::invalid(
                "job_id",
                "give exactly one of job_id or path",
            ));
        }
    };
    let registry = state.shared.registry.clone();
    let name = req.name.clone();
    let info = tokio::task::spawn_blocking(move || registry.deploy(&name, &dir, job_id))
        .await
        .map_err(|e| ApiError::Internal(format!("deploy task: {e}")))?
        .map_err(|e| match e {
            crate::infer::DetectError::Load(l) => ApiError::invalid(
                if req.path.is_some() { "path" } else { "job_id" },
                l.to_string(),
            ),
            other => ApiError::from(other),
        })?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}
