//! `/v1/studies`: create, list, read, cancel, delete; results and summary CSVs. Trials are
//! jobs (`GET /v1/jobs?study_id=`); events are under `/v1/studies/{id}/events`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jobs::study::StudySpec;
use crate::jobs::study::lifecycle;
use crate::jobs::study::summary::StudyView;
use crate::store;
use crate::store::studies::{StudyRow, StudyStatus};

use super::AppState;
use super::error::{ApiError, ApiJson};

fn parse_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("study {id:?}")))
}

async fn load_view(state: &AppState, id: &str) -> Result<StudyView, ApiError> {
    let id = parse_id(id)?;
    lifecycle::view(&state.shared, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("study {id}")))
}

/// A study as listed and as created.
#[derive(Debug, Serialize)]
pub struct StudyBrief {
    pub id: String,
    pub name: Option<String>,
    pub status: StudyStatus,
    pub trials: i64,
    pub best_job_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl From<StudyRow> for StudyBrief {
    fn from(r: StudyRow) -> Self {
        StudyBrief {
            id: r.id,
            name: r.name,
            status: r.status,
            trials: r.trials,
            best_job_id: r.best_job_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// What `POST /v1/studies` answers: the study, its trials (job ids and parameters).
#[derive(Debug, Serialize)]
pub struct CreatedStudy {
    #[serde(flatten)]
    pub study: StudyBrief,
    pub models: usize,
    pub configurations: usize,
    pub seeds: usize,
    pub trial_jobs: Vec<CreatedTrial>,
}

#[derive(Debug, Serialize)]
pub struct CreatedTrial {
    pub job_id: String,
    pub model: String,
    pub seed: u64,
    pub params: Value,
}

/// POST /v1/studies
pub async fn create_study(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (spec, trials) =
        StudySpec::parse(body.to_string().as_bytes(), state.settings.max_study_trials)?;
    // Paths and uploads, once per model (the dataset is shared).
    for t in trials
        .iter()
        .filter(|t| t.params == trials[0].params && t.seed == trials[0].seed)
    {
        state
            .shared
            .ctx
            .precheck(&t.spec)
            .map_err(|e| match e.field.strip_prefix("model") {
                Some(rest) => crate::validate::FieldError::new(
                    format!("models[{}]{rest}", t.model),
                    e.message,
                ),
                None => e,
            })?;
    }
    let row = lifecycle::submit(
        &state.shared,
        &spec,
        &trials,
        "api",
        state.settings.max_queued_jobs,
    )
    .await?;
    let jobs = store::studies::trials(&state.shared.pool, &row.id).await?;
    let configurations = trials.len() / (spec.models.len() * spec.seeds.len()).max(1);
    let trial_jobs = jobs
        .iter()
        .zip(&trials)
        .map(|(j, t)| CreatedTrial {
            job_id: j.id.clone(),
            model: spec.models[t.model].display_name(),
            seed: t.seed,
            params: Value::Object(t.params.clone()),
        })
        .collect();
    let location = format!("/v1/studies/{}", row.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(CreatedStudy {
            study: row.into(),
            models: spec.models.len(),
            configurations,
            seeds: spec.seeds.len(),
            trial_jobs,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StudyList {
    pub studies: Vec<StudyBrief>,
    pub next_cursor: Option<String>,
}

/// GET /v1/studies
pub async fn list_studies(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<StudyList>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be in 1..=200, got {limit}"),
        ));
    }
    let cursor =
        match &q.cursor {
            Some(c) => Some(c.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                ApiError::invalid("cursor", "is not a cursor from a previous page")
            })?),
            None => None,
        };
    let rows = store::studies::list(&state.shared.pool, limit + 1, cursor).await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<StudyRow> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    Ok(Json(StudyList {
        studies: rows.into_iter().map(StudyBrief::from).collect(),
        next_cursor,
    }))
}

/// GET /v1/studies/{id}
pub async fn get_study(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StudyView>, ApiError> {
    let mut v = load_view(&state, &id).await?;
    let paths = state.paths();
    for t in &mut v.trials {
        t.error = t.error.as_deref().map(|e| paths.redact(e));
    }
    Ok(Json(v))
}

/// POST /v1/studies/{id}/cancel
pub async fn cancel_study(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let out = lifecycle::cancel(&state.shared, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("study {id}")))?;
    let row = store::studies::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("study {id}")))?;
    let code = if out.requested.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(StudyBrief::from(row))).into_response())
}

/// DELETE /v1/studies/{id} — ended studies only; removes their trials and artifacts.
pub async fn delete_study(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let dirs = store::studies::delete(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("study {id}")))?;
    let root = state.shared.data_dir.join("jobs");
    for dir in dirs.iter().map(std::path::PathBuf::from) {
        if dir.starts_with(&root) && dir.exists() {
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(|e| ApiError::Internal(format!("removing {}: {e}", dir.display())))?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

fn csv(body: String, filename: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// GET /v1/studies/{id}/results.csv — a row per finished trial.
pub async fn results_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = load_view(&state, &id).await?;
    let jobs = store::studies::trials(&state.shared.pool, &v.id).await?;
    Ok(csv(
        v.results_csv(&jobs)?,
        format!("study-{}-results.csv", v.id),
    ))
}

/// GET /v1/studies/{id}/summary.csv — a row per configuration.
pub async fn summary_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = load_view(&state, &id).await?;
    Ok(csv(v.summary_csv(), format!("study-{}-summary.csv", v.id)))
}
