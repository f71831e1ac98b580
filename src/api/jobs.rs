//! `/v1/jobs`: create, list, read, cancel, delete, push; epochs, results and CSV.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::jobs::JobStatus;
use crate::jobs::spec::{JobSpec, PRESETS};
use crate::store::{self, jobs::Cancel};
use crate::train::report::csv_text;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::types::*;

/// Job ids are UUIDs; anything else cannot exist.
pub fn parse_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("job {id:?}")))
}

async fn load(state: &AppState, id: &str) -> Result<store::jobs::JobRow, ApiError> {
    let id = parse_id(id)?;
    store::jobs::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))
}

/// Turns the request body into a spec: `{"preset": "demo"}` or a full spec.
pub fn spec_from_body(body: &Value, assets: &std::path::Path) -> Result<JobSpec, ApiError> {
    if let Some(obj) = body.as_object()
        && obj.contains_key("preset")
    {
        if obj.len() != 1 {
            let extra = obj
                .keys()
                .find(|k| *k != "preset")
                .cloned()
                .unwrap_or_default();
            return Err(ApiError::invalid(extra, "a preset takes no other fields"));
        }
        return obj["preset"]
            .as_str()
            .and_then(|name| JobSpec::preset(name, assets))
            .ok_or_else(|| {
                ApiError::invalid(
                    "preset",
                    format!("must be one of {PRESETS:?}, got {}", obj["preset"]),
                )
            });
    }
    let spec = JobSpec::parse(body.to_string().as_bytes())?;
    if spec.output.dir.is_some() || spec.output.results_csv.is_some() {
        return Err(ApiError::invalid(
            if spec.output.dir.is_some() {
                "output.dir"
            } else {
                "output.results_csv"
            },
            "is chosen by the service (artifacts live under --data-dir; read results via /v1/jobs/{id}/results.csv)",
        ));
    }
    Ok(spec)
}

/// POST /v1/jobs
pub async fn create_job(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let spec = spec_from_body(&body, &state.settings.assets_dir)?;
    state.shared.ctx.precheck(&spec)?;
    let row = state
        .shared
        .submit(&spec, "api", state.settings.max_queued_jobs)
        .await?;
    let location = format!("/v1/jobs/{}", row.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(JobResponse::new(row, &state.paths())?),
    )
        .into_response())
}

/// GET /v1/jobs
pub async fn list_jobs(
    State(state): State<AppState>,
    q: Result<Query<ListJobsQuery>, QueryRejection>,
) -> Result<Json<JobListResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| ApiError::invalid("status", e))?;
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
    let study_id = match &q.study_id {
        Some(s) => Some(
            uuid::Uuid::parse_str(s)
                .map(|u| u.to_string())
                .map_err(|_| ApiError::invalid("study_id", "is not a study id"))?,
        ),
        None => None,
    };
    let rows = store::jobs::list(
        &state.shared.pool,
        status,
        study_id.as_deref(),
        limit + 1,
        cursor,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let paths = state.paths();
    Ok(Json(JobListResponse {
        jobs: rows
            .into_iter()
            .map(|r| JobResponse::new(r, &paths))
            .collect::<Result<_, _>>()?,
        next_cursor,
    }))
}

/// GET /v1/jobs/{id}
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobResponse>, ApiError> {
    Ok(Json(JobResponse::new(
        load(&state, &id).await?,
        &state.paths(),
    )?))
}

/// GET /v1/jobs/{id}/epochs
pub async fn get_epochs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EpochsResponse>, ApiError> {
    let job = load(&state, &id).await?;
    let rows = store::results::epochs(&state.shared.pool, &job.id).await?;
    Ok(Json(EpochsResponse {
        job_id: job.id,
        epochs: rows
            .into_iter()
            .map(EpochResponse::try_from)
            .collect::<Result<_, _>>()?,
    }))
}

/// GET /v1/jobs/{id}/results
pub async fn get_results(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResultsResponse>, ApiError> {
    let job = load(&state, &id).await?;
    let evals = store::results::evaluations(&state.shared.pool, &job.id).await?;
    let mut base = None;
    let mut finetuned = None;
    for e in evals {
        let kind = e.kind.clone();
        let r = EvaluationResponse::try_from(e)?;
        if kind == "base" {
            base = Some(r)
        } else {
            finetuned = Some(r)
        }
    }
    let improvement_f1_per_label = match (&base, &finetuned) {
        (Some(b), Some(f)) => f
            .metrics
            .per_label
            .iter()
            .map(|(l, m)| {
                (
                    l.clone(),
                    m.f1 - b.metrics.per_label.get(l).map(|x| x.f1).unwrap_or(0.0),
                )
            })
            .collect(),
        _ => Default::default(),
    };
    let improvement_f1 = match (&base, &finetuned) {
        (Some(b), Some(f)) => Some(f.metrics.f1 - b.metrics.f1),
        _ => None,
    };
    Ok(Json(ResultsResponse {
        label_distribution: store::results::distribution(&state.shared.pool, &job.id).await?,
        job_id: job.id,
        status: job.status,
        base,
        finetuned,
        improvement_f1,
        improvement_f1_per_label,
        best_epoch: job.best_epoch,
    }))
}

fn csv_response(rows: Vec<Vec<String>>, filename: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        csv_text(true, &rows),
    )
        .into_response()
}

fn cells(row: &store::jobs::JobRow) -> Result<Option<Vec<String>>, ApiError> {
    row.csv_row
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// GET /v1/jobs/{id}/results.csv — the notebook's one-row CSV.
pub async fn get_results_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load(&state, &id).await?;
    let row = cells(&job)?
        .ok_or_else(|| ApiError::Conflict(format!("job is {}: no results yet", job.status)))?;
    Ok(csv_response(vec![row], &format!("results-{}.csv", job.id)))
}

/// GET /v1/jobs/{id}/report.json — the run's report (spec, outcome, base and fine-tuned
/// evaluations, epochs), server paths shown as the API shows them.
pub async fn get_report(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load(&state, &id).await?;
    let dir = state.shared.localize(&job.output_dir);
    if !dir.join("report.json").is_file() {
        // Written by a worker on another machine.
        let _ = state.shared.pull_dir(&dir).await;
    }
    let path = dir.join("report.json");
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(_) => {
            return Err(ApiError::Conflict(format!(
                "job is {}: no report yet",
                job.status
            )));
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.paths().redact(&text),
    )
        .into_response())
}

/// GET /v1/results.csv — one row per finished job.
pub async fn all_results_csv(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = store::jobs::list_finished(&state.shared.pool).await?;
    let rows = rows
        .iter()
        .map(cells)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(csv_response(rows, "results.csv"))
}

/// POST /v1/jobs/{id}/cancel
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match store::jobs::request_cancel(&state.shared.pool, &id).await? {
        None => Err(ApiError::NotFound(format!("job {id}"))),
        Some(outcome) => {
            let code = match outcome {
                Cancel::Cancelled => {
                    state.shared.emit(&id, "finished", serde_json::json!({"status": "cancelled", "error": "cancelled before start"})).await?;
                    crate::jobs::study::lifecycle::trial_ended(&state.shared, &id).await?;
                    crate::jobs::projects::job_ended(
                        &state.shared,
                        &id,
                        state.settings.max_queued_jobs,
                    )
                    .await?;
                    StatusCode::OK
                }
                Cancel::Requested => {
                    state.shared.signal_cancel(&id);
                    StatusCode::ACCEPTED
                }
            };
            let row = store::jobs::get(&state.shared.pool, &id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
            Ok((code, Json(JobResponse::new(row, &state.paths())?)).into_response())
        }
    }
}

/// DELETE /v1/jobs/{id} — finished jobs only; removes artifacts.
pub async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let row = store::jobs::delete(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let dir = std::path::PathBuf::from(&row.output_dir);
    if dir.starts_with(state.shared.data_dir.join("jobs")) && dir.exists() {
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| ApiError::Internal(format!("removing {}: {e}", dir.display())))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/jobs/{id}/push — (re)try pushing a succeeded job's model to the Hub.
pub async fn push_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = load(&state, &id).await?;
    if job.status != JobStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "job is {}: only succeeded jobs can be pushed",
            job.status
        )));
    }
    if job.push_status == store::jobs::PushStatus::Pending {
        return Err(ApiError::Conflict("a push is already in progress".into()));
    }
    let spec: JobSpec =
        serde_json::from_str(&job.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    if spec.hub.repo_id.is_none() {
        return Err(ApiError::invalid(
            "hub.repo_id",
            "the job spec has no hub.repo_id",
        ));
    }
    let report_path = std::path::Path::new(&job.output_dir).join("report.json");
    let report: Value = serde_json::from_slice(
        &tokio::fs::read(&report_path)
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", report_path.display())))?,
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let dir = job
        .best_model_dir
        .clone()
        .ok_or_else(|| ApiError::Conflict("job has no best model".into()))?;
    store::jobs::set_push(
        &state.shared.pool,
        &job.id,
        store::jobs::PushStatus::Pending,
        None,
        None,
    )
    .await?;
    let shared = state.shared.clone();
    let jid = job.id.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::jobs::publish::push_job(
            &shared,
            &jid,
            &spec,
            std::path::Path::new(&dir),
            &report["outcome"],
        )
        .await
        {
            tracing::error!(job = %jid, error = %e, "push bookkeeping failed");
        }
    });
    let row = store::jobs::get(&state.shared.pool, &job.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {}", job.id)))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobResponse::new(row, &state.paths())?),
    )
        .into_response())
}
