//! `/v1/detect` and `/v1/models`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::infer::aggregate::Strategy;
use crate::infer::{DetectError, DetectOptions, DetectOutput, Input, LongText};
use crate::jobs::JobStatus;
use crate::jobs::models::{self, ModelsError};
use crate::store;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::types::{
    DeployRequest, DetectManyResponse, DetectRequest, DetectResponse, ModelResponse, ModelsResponse,
};

pub use crate::infer::{MAX_TEXT_CHARS, MAX_TEXTS};

/// Checks a detect request and turns it into an input, the options and the model name.
pub fn parse_detect(req: DetectRequest) -> Result<(Input, DetectOptions, String), ApiError> {
    let input = match (req.text, req.texts, req.tokens) {
        (Some(t), None, None) => Input::Text(t),
        (None, Some(ts), None) => Input::Texts(ts),
        (None, None, Some(words)) => Input::Tokens(words),
        _ => {
            return Err(ApiError::invalid(
                "text",
                "give exactly one of text, texts or tokens",
            ));
        }
    };
    input.check()?;
    let strategy = req
        .aggregation_strategy
        .as_deref()
        .map(|s| {
            s.parse::<Strategy>()
                .map_err(|e| ApiError::invalid("aggregation_strategy", e))
        })
        .transpose()?;
    if let Some(t) = req.threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ApiError::invalid(
            "threshold",
            format!("must be in [0, 1], got {t}"),
        ));
    }
    let long_text = match req.long_text.as_deref() {
        None => LongText::Sentences,
        Some(s) => s
            .parse()
            .map_err(|e: String| ApiError::invalid("long_text", e))?,
    };
    let opts = DetectOptions {
        strategy,
        threshold: req.threshold,
        long_text,
        uncertainty: req.uncertainty.unwrap_or(false),
        words: req.words,
    };
    Ok((input, opts, req.model.unwrap_or_else(|| "default".into())))
}

/// Runs detection on a deployed model.
pub async fn run_detect(
    state: &AppState,
    model: &str,
    input: Input,
    opts: DetectOptions,
) -> Result<DetectOutput, ApiError> {
    let detector = state
        .shared
        .registry
        .get(model)
        .ok_or_else(|| ApiError::NotFound(format!("model {model:?}")))?;
    Ok(detector.detect(input, opts).await?)
}

/// POST /v1/detect
pub async fn detect(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetectRequest>,
) -> Result<Response, ApiError> {
    let (input, opts, model) = parse_detect(req)?;
    let many = matches!(input, Input::Texts(_));
    let out = run_detect(&state, &model, input, opts).await?;
    Ok(if many {
        Json(DetectManyResponse {
            model: out.model,
            model_version: out.model_version,
            results: out.results,
        })
        .into_response()
    } else {
        let r = out
            .results
            .into_iter()
            .next()
            .expect("one input, one result: this is a bug");
        Json(DetectResponse {
            model: out.model,
            model_version: out.model_version,
            entities: r.entities,
            uncertainty: r.uncertainty,
            windows: r.windows,
        })
        .into_response()
    })
}

/// GET /v1/models
pub async fn list_models(State(state): State<AppState>) -> Json<ModelsResponse> {
    let paths = state.paths();
    Json(ModelsResponse {
        models: state
            .shared
            .registry
            .list()
            .into_iter()
            .map(|m| ModelResponse::new(m, &paths))
            .collect(),
    })
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
    let (dir, job_id, field) = match (&req.job_id, &req.path) {
        (Some(job), None) => {
            let id = uuid::Uuid::parse_str(job)
                .map_err(|_| ApiError::invalid("job_id", format!("names no job: {job:?}")))?
                .to_string();
            let row = store::jobs::get(&state.shared.pool, &id)
                .await?
                .ok_or_else(|| ApiError::invalid("job_id", format!("names no job: {job:?}")))?;
            let dir = row
                .best_model_dir
                .filter(|_| row.status == JobStatus::Succeeded)
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "job {id} is {}: no best model to deploy",
                        row.status
                    ))
                })?;
            (std::path::PathBuf::from(dir), Some(id), "job_id")
        }
        (None, Some(p)) => (state.shared.ctx.local_model_dir("path", p)?, None, "path"),
        _ => {
            return Err(ApiError::invalid(
                "job_id",
                "give exactly one of job_id or path",
            ));
        }
    };
    let paths = state.paths();
    let info = models::deploy(&state.shared, &req.name, &dir, job_id, req.precision, "api")
        .await
        .map_err(|e| match e {
            ModelsError::Detect(DetectError::Load(l)) => {
                ApiError::invalid(field, paths.redact(&l.to_string()))
            }
            ModelsError::Detect(DetectError::Data(d)) => {
                ApiError::invalid(field, paths.redact(&d.to_string()))
            }
            other => ApiError::from(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(ModelResponse::new(info, &state.paths())),
    )
        .into_response())
}

fn model_name(name: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("model {name:?}")))
    }
}

/// DELETE /v1/models/{name} — stops serving the model (in-flight requests finish); its
/// deployment history stays.
pub async fn delete_model(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    model_name(&name)?;
    models::remove(&state.shared, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/models/{name}/rollback — serves the version deployed before the active one.
pub async fn rollback_model(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    model_name(&name)?;
    let (info, row) = models::rollback(&state.shared, &name).await?;
    Ok(Json(serde_json::json!({
        "model": ModelResponse::new(info, &state.paths()),
        "deployment": deployment_json(&state, &row),
    })))
}

fn deployment_json(state: &AppState, r: &store::deployments::DeploymentRow) -> serde_json::Value {
    serde_json::json!({"version": r.version, "path": state.paths().public(&r.path), "job_id": r.job_id,
        "deployed_by": r.deployed_by, "active": r.active != 0, "created_at": r.created_at,
        "precision": r.precision,
        "quality": r.quality.as_deref().and_then(|q| serde_json::from_str::<serde_json::Value>(q).ok())})
}

/// GET /v1/models/{name}/versions — every deployment of the name, newest first.
pub async fn model_versions(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    model_name(&name)?;
    let rows = store::deployments::history(&state.shared.pool, &name).await?;
    if rows.is_empty() && state.shared.registry.get(&name).is_none() {
        return Err(ApiError::NotFound(format!("model {name:?}")));
    }
    Ok(Json(serde_json::json!({
        "name": name,
        "versions": rows.iter().map(|r| deployment_json(&state, r)).collect::<Vec<_>>(),
    })))
}
