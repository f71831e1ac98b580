//! `/v1/predictions`: bulk prediction runs in the background (Label Studio pre-annotations,
//! JSONL or CoNLL) and their output files.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::jobs::predictions::{self, PredictionRequest};
use crate::store;

use super::AppState;
use super::error::{ApiError, ApiJson};

async fn load(state: &AppState, id: &str) -> Result<store::predictions::PredictionRow, ApiError> {
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("prediction run {id:?}")))?
        .to_string();
    store::predictions::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("prediction run {id}")))
}

/// POST /v1/predictions — 202 with the run; poll it, then download its output.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PredictionRequest>,
) -> Result<Response, ApiError> {
    req.check(&state.shared)?;
    if state.shared.registry.get(&req.model).is_none() {
        return Err(ApiError::invalid(
            "model",
            format!("no model {:?} is deployed", req.model),
        ));
    }
    let row = predictions::submit(&state.shared, req, state.shutdown.clone())
        .await
        .map_err(|e| match e {
            store::StoreError::QueueFull(n) => ApiError::Busy {
                message: format!("{n} prediction runs are unfinished; wait for one to end"),
                retry_after: 30,
            },
            other => other.into(),
        })?;
    Ok((StatusCode::ACCEPTED, Json(predictions::view(&row))).into_response())
}

/// GET /v1/predictions
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut rows = store::predictions::list(&state.shared.pool).await?;
    for r in &mut rows {
        r.error = r.error.take().map(|e| state.paths().redact(&e));
    }
    Ok(Json(
        json!({"predictions": rows.iter().map(predictions::view).collect::<Vec<_>>()}),
    ))
}

/// GET /v1/predictions/{id}
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut row = load(&state, &id).await?;
    row.error = row.error.map(|e| state.paths().redact(&e));
    Ok(Json(predictions::view(&row)))
}

/// GET /v1/predictions/{id}/output — streams the file.
pub async fn output(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load(&state, &id).await?;
    let Some(path) = row.output.filter(|_| row.status == "succeeded") else {
        return Err(ApiError::Conflict(format!(
            "prediction run {} is {}: no output yet",
            row.id, row.status
        )));
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening the output: {e}")))?;
    let ctype = match row.format.as_str() {
        "labelstudio" => "application/json",
        "jsonl" => "application/x-ndjson",
        _ => "text/plain; charset=utf-8",
    };
    let name = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-{name}\"", row.id),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}
