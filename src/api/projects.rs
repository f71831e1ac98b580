//! `/v1/projects`: annotation projects (Label Studio projects appear on `/labelstudio/setup`;
//! doccano and scripts create theirs here), imports of Label Studio and doccano exports,
//! retraining on request, and the project's state: annotations, dataset versions, the
//! retraining job and the last deploy decision.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::data::annotations::Span;
use crate::jobs::projects::{self, RawAnnotation};
use crate::store;
use crate::store::projects::{ProjectInput, ProjectRow};

use super::AppState;
use super::error::{ApiError, ApiJson};

/// Most tasks one import may hold.
const MAX_IMPORT_TASKS: usize = 100_000;
/// Most labelled spans one task may hold.
pub const MAX_SPANS: usize = 10_000;

/// A task's text and spans within the limits `/v1/detect` applies to texts.
pub fn check_task(where_: &str, text: &str, spans: usize) -> Result<(), String> {
    let n = text.chars().count();
    if n > crate::infer::MAX_TEXT_CHARS {
        return Err(format!(
            "{where_}: the text is {n} characters; the limit is {}",
            crate::infer::MAX_TEXT_CHARS
        ));
    }
    if spans > MAX_SPANS {
        return Err(format!("{where_}: {spans} spans; the limit is {MAX_SPANS}"));
    }
    Ok(())
}

/// A project id: 1-64 letters, digits, `-`, `_`, `.` (not first).
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be 1-64 letters, digits, '-', '_' or '.' (not first), got {id:?}"),
        ))
    }
}

fn check_model_name(field: &str, n: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "must be 1-64 letters, digits, '-', '_' or '.'",
        ))
    }
}

/// `POST /v1/projects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    pub id: String,
    /// Label names annotators use (e.g. `["METAPHOR"]`).
    pub labels: Vec<String>,
    /// Deployed model the project predicts with and retraining deploys to.
    #[serde(default)]
    pub model: Option<String>,
    /// Job spec without `dataset` for retraining (default: fine-tune the deployed model).
    #[serde(default)]
    pub template: Option<Value>,
    /// Queue a retraining every N new or changed annotations.
    #[serde(default)]
    pub retrain_every: Option<i64>,
    #[serde(default)]
    pub data_key: Option<String>,
}

/// Checks a template: a job spec without `dataset` (the data directory stands in for it to
/// check the rest, local paths included).
pub fn check_template(state: &AppState, field: &str, t: &Value) -> Result<String, ApiError> {
    if !t.is_object() {
        return Err(ApiError::invalid(
            field,
            "must be a job spec object without dataset",
        ));
    }
    for (key, why) in [
        (
            "deploy_as",
            "a retraining is deployed by the project's deploy-only-if-better rule",
        ),
        ("hub", "retraining jobs are not pushed to the Hub"),
    ] {
        if t.get(key).is_some() {
            return Err(ApiError::invalid(format!("{field}.{key}"), why));
        }
    }
    if t.get("dataset").is_some() {
        return Err(ApiError::invalid(
            format!("{field}.dataset"),
            "is set by each dataset version; leave it out",
        ));
    }
    let mut probe = t.clone();
    probe["dataset"] = json!({"path": state.shared.data_dir});
    let spec = crate::jobs::spec::JobSpec::parse(probe.to_string().as_bytes())
        .map_err(|e| ApiError::invalid(format!("{field}.{}", e.field), e.message))?;
    state
        .shared
        .ctx
        .precheck(&spec)
        .map_err(|e| ApiError::invalid(format!("{field}.{}", e.field), e.message))?;
    Ok(t.to_string())
}

fn check_every(field: &str, e: Option<i64>) -> Result<(), ApiError> {
    match e {
        Some(n) if !(1..=1_000_000).contains(&n) => Err(ApiError::invalid(
            field,
            format!("must be 1-1000000, got {n}"),
        )),
        _ => Ok(()),
    }
}

/// POST /v1/projects — creates or updates a project.
pub async fn create_project(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ProjectRequest>,
) -> Result<Response, ApiError> {
    check_id("id", &req.id)?;
    if req.labels.is_empty() || req.labels.len() > 100 {
        return Err(ApiError::invalid("labels", "give 1-100 label names"));
    }
    for (i, l) in req.labels.iter().enumerate() {
        if l.is_empty() || l.len() > 100 || l.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::invalid(
                format!("labels[{i}]"),
                "must be 1-100 characters without spaces",
            ));
        }
    }
    if let Some(m) = &req.model {
        check_model_name("model", m)?;
    }
    check_every("retrain_every", req.retrain_every)?;
    let template = req
        .template
        .as_ref()
        .map(|t| check_template(&state, "template", t))
        .transpose()?;
    let data_key = req.data_key.unwrap_or_else(|| "text".into());
    if data_key.is_empty() || data_key.len() > 100 {
        return Err(ApiError::invalid("data_key", "must be 1-100 characters"));
    }
    let existed = store::projects::get(&state.shared.pool, &req.id)
        .await?
        .is_some();
    let row = store::projects::upsert(
        &state.shared.pool,
        &req.id,
        &ProjectInput {
            source: "api".into(),
            labels: serde_json::to_string(&req.labels)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            from_name: "label".into(),
            to_name: "text".into(),
            data_key,
            label_config: None,
            model_name: req.model,
            template: Some(template),
            retrain_every: Some(req.retrain_every),
        },
    )
    .await?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(view(&state, row).await?)).into_response())
}

/// A project as the API shows it.
pub async fn view(state: &AppState, p: ProjectRow) -> Result<Value, ApiError> {
    // Stored JSON (decisions, events), with server paths shown as responses show them.
    let paths = state.paths();
    let stored = |s: &str| serde_json::from_str::<Value>(&paths.redact(s)).unwrap_or(Value::Null);
    let pool = &state.shared.pool;
    let anns = store::projects::annotations(pool, &p.id).await?;
    let mut splits = serde_json::Map::new();
    for a in &anns {
        let e = splits.entry(a.split.clone()).or_insert(json!(0));
        *e = json!(e.as_i64().unwrap_or(0) + 1);
    }
    let versions: Vec<Value> = store::projects::versions(pool, &p.id)
        .await?
        .into_iter()
        .take(20)
        .map(|v| {
            json!({"version": v.version, "stats": serde_json::from_str::<Value>(&v.stats).unwrap_or(Value::Null),
                "reason": v.reason, "created_at": v.created_at, "path": state.paths().public(&v.dir)})
        })
        .collect();
    let training = match &p.training_job_id {
        Some(j) => {
            let row = store::jobs::get(pool, j).await?;
            json!({"job_id": j, "status": row.map(|r| r.status.to_string()), "another_run_requested": p.retrain_pending != 0})
        }
        None => Value::Null,
    };
    let events: Vec<Value> = store::projects::recent_events(pool, &p.id, 50)
        .await?
        .into_iter()
        .map(|e| json!({"id": e.id, "kind": e.kind, "data": stored(&e.data), "at": e.created_at}))
        .collect();
    let deployed = state
        .shared
        .registry
        .get(&p.model_name)
        .map(|d| d.info.version.clone());
    Ok(json!({
        "id": p.id, "source": p.source,
        "labels": serde_json::from_str::<Value>(&p.labels).unwrap_or(Value::Null),
        "from_name": p.from_name, "to_name": p.to_name, "data_key": p.data_key,
        "model": p.model_name, "model_version": deployed,
        "template": p.template.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()),
        "retrain_every": p.retrain_every, "changes_since_training": p.changes_since_training,
        "annotations": anns.len(), "annotations_per_split": splits,
        "annotations_with_issues": anns.iter().filter(|a| a.report != "[]").count(),
        "dataset_versions": versions, "training": training,
        "last_decision": p.last_decision.as_deref().map(stored),
        "dropped_labels": p.dropped_labels, "events": events,
        "created_at": p.created_at, "updated_at": p.updated_at,
    }))
}

async fn load(state: &AppState, id: &str) -> Result<ProjectRow, ApiError> {
    check_id("id", id).map_err(|_| ApiError::NotFound(format!("project {id:?}")))?;
    store::projects::get(&state.shared.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project {id:?}")))
}

/// GET /v1/projects
pub async fn list_projects(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = store::projects::list(&state.shared.pool).await?;
    Ok(Json(json!({"projects": rows.into_iter().map(|p| json!({
        "id": p.id, "source": p.source, "model": p.model_name, "training_job_id": p.training_job_id,
        "changes_since_training": p.changes_since_training, "created_at": p.created_at, "updated_at": p.updated_at,
    })).collect::<Vec<_>>()})))
}

/// GET /v1/projects/{id}
pub async fn get_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = load(&state, &id).await?;
    Ok(Json(view(&state, p).await?))
}

/// DELETE /v1/projects/{id} — the project, its annotations and versions (jobs and deployed
/// models stay).
pub async fn delete_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let p = load(&state, &id).await?;
    let _no_writes = state.shared.annotation_writes.lock().await;
    store::projects::delete(&state.shared.pool, &p.id).await?;
    let dir = state.shared.data_dir.join("projects").join(&p.id);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/projects/{id}/train
pub async fn train_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = load(&state, &id).await?;
    let out =
        projects::retrain(&state.shared, &p.id, "api", state.settings.max_queued_jobs).await?;
    let code = if out["status"] == "queued" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `labelstudio` (a JSON export) or `doccano` (JSONL).
    pub format: String,
}

/// Label Studio regions of a `result` list as character spans (`labels` regions only).
pub fn ls_spans(result: &Value) -> Result<Vec<Span>, String> {
    let Some(items) = result.as_array() else {
        return Err("result must be a list".into());
    };
    let mut out = Vec::new();
    for (i, r) in items.iter().enumerate() {
        let Some(v) = r.get("value") else { continue };
        let Some(labels) = v.get("labels").and_then(|l| l.as_array()) else {
            continue;
        };
        let pos = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| format!("result[{i}].value.{k} must be a non-negative integer"))
        };
        let (start, end) = (pos("start")?, pos("end")?);
        for l in labels {
            let Some(label) = l.as_str() else {
                return Err(format!("result[{i}].value.labels must be strings"));
            };
            out.push(Span {
                start: start as usize,
                end: end as usize,
                label: label.into(),
                text: v.get("text").and_then(|t| t.as_str()).map(String::from),
            });
        }
    }
    Ok(out)
}

/// A task's id as a string (numbers and strings; anything else is refused).
pub fn task_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
        _ => None,
    }
}

/// A tool's RFC 3339 timestamp (`2026-12-01T20:16:29.190461Z`) in one UTC shape with
/// microseconds, so that timestamps compare as strings; `None` when it does not parse.
pub fn timestamp(v: Option<&Value>) -> Option<String> {
    let t =
        time::OffsetDateTime::parse(v?.as_str()?, &time::format_description::well_known::Rfc3339)
            .ok()?
            .to_offset(time::UtcOffset::UTC);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    ))
    .ok()
}

/// The latest kept annotation of a Label Studio export task.
fn ls_task(task: &Value, data_key: &str, i: usize) -> Result<Option<RawAnnotation>, String> {
    let id = task_id(task.get("id"))
        .ok_or_else(|| format!("[{i}].id: missing or not a number/string"))?;
    let text = task
        .get("data")
        .and_then(|d| d.get(data_key))
        .and_then(|t| t.as_str())
        .ok_or_else(|| format!("[{i}].data.{data_key}: missing text"))?;
    let Some(anns) = task.get("annotations").and_then(|a| a.as_array()) else {
        return Ok(None);
    };
    let kept = anns
        .iter()
        .filter(|a| {
            !a.get("was_cancelled")
                .and_then(|c| c.as_bool())
                .unwrap_or(false)
        })
        .max_by_key(|a| {
            (
                a.get("updated_at")
                    .and_then(|u| u.as_str())
                    .unwrap_or("")
                    .to_string(),
                a.get("id").and_then(|x| x.as_i64()).unwrap_or(0),
            )
        });
    let Some(a) = kept else { return Ok(None) };
    let spans = ls_spans(a.get("result").unwrap_or(&json!([])))
        .map_err(|e| format!("[{i}].annotations: {e}"))?;
    check_task(&format!("[{i}]"), text, spans.len())?;
    Ok(Some(RawAnnotation {
        task_id: id,
        annotation_id: task_id(a.get("id")),
        updated_at: timestamp(a.get("updated_at")),
        text: text.into(),
        spans,
    }))
}

/// A doccano JSONL line: `label`/`labels` as `[[start, end, tag], ...]` or `entities` as
/// `[{start_offset, end_offset, label}]`.
fn doccano_line(line: &str, n: usize) -> Result<RawAnnotation, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
    let text = v
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or_else(|| format!("line {n}: missing \"text\""))?;
    let mut spans = Vec::new();
    if let Some(items) = v
        .get("label")
        .or_else(|| v.get("labels"))
        .and_then(|l| l.as_array())
    {
        for (k, it) in items.iter().enumerate() {
            let t = it
                .as_array()
                .filter(|t| t.len() == 3)
                .ok_or_else(|| format!("line {n}: label[{k}] must be [start, end, tag]"))?;
            let (Some(s), Some(e), Some(l)) = (t[0].as_u64(), t[1].as_u64(), t[2].as_str()) else {
                return Err(format!("line {n}: label[{k}] must be [start, end, tag]"));
            };
            spans.push(Span {
                start: s as usize,
                end: e as usize,
                label: l.into(),
                text: None,
            });
        }
    } else if let Some(items) = v.get("entities").and_then(|l| l.as_array()) {
        for (k, it) in items.iter().enumerate() {
            let f = |key: &str| it.get(key).and_then(|x| x.as_u64());
            let (Some(s), Some(e), Some(l)) = (
                f("start_offset"),
                f("end_offset"),
                it.get("label").and_then(|l| l.as_str()),
            ) else {
                return Err(format!(
                    "line {n}: entities[{k}] needs start_offset, end_offset, label"
                ));
            };
            spans.push(Span {
                start: s as usize,
                end: e as usize,
                label: l.into(),
                text: None,
            });
        }
    }
    check_task(&format!("line {n}"), text, spans.len())?;
    let id = task_id(v.get("id")).unwrap_or_else(|| {
        use sha2::{Digest, Sha256};
        Sha256::digest(text.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    });
    Ok(RawAnnotation {
        task_id: id,
        annotation_id: None,
        updated_at: None,
        text: text.into(),
        spans,
    })
}

/// POST /v1/projects/{id}/import?format=labelstudio|doccano — records every annotated task of
/// an export (the newest kept annotation per task) as one new dataset version.
pub async fn import(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("format", e.body_text()))?;
    let p = load(&state, &id).await?;
    let items = match q.format.as_str() {
        "labelstudio" => {
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::invalid("body", format!("not a JSON export: {e}")))?;
            let tasks = v.as_array().ok_or_else(|| {
                ApiError::invalid("body", "a Label Studio JSON export is a list of tasks")
            })?;
            if tasks.len() > MAX_IMPORT_TASKS {
                return Err(ApiError::invalid(
                    "body",
                    format!("{} tasks; the limit is {MAX_IMPORT_TASKS}", tasks.len()),
                ));
            }
            let mut out = Vec::new();
            for (i, t) in tasks.iter().enumerate() {
                if let Some(a) =
                    ls_task(t, &p.data_key, i).map_err(|e| ApiError::invalid("body", e))?
                {
                    out.push(a);
                }
            }
            out
        }
        "doccano" => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::invalid("body", "doccano JSONL must be UTF-8"))?;
            let mut out = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                out.push(doccano_line(line, i + 1).map_err(|e| ApiError::invalid("body", e))?);
                if out.len() > MAX_IMPORT_TASKS {
                    return Err(ApiError::invalid(
                        "body",
                        format!("more than {MAX_IMPORT_TASKS} lines"),
                    ));
                }
            }
            out
        }
        other => {
            return Err(ApiError::invalid(
                "format",
                format!("must be labelstudio or doccano, got {other:?}"),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::invalid("body", "no annotated task in the export"));
    }
    let reason = format!("{} import", q.format);
    let rec = projects::record(
        &state.shared,
        &p.id,
        items,
        &reason,
        state.settings.max_queued_jobs,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(rec))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_compare_as_strings() {
        let t = |s: &str| timestamp(Some(&json!(s))).unwrap();
        assert!(t("2026-12-01T11:00:00Z") < t("2026-12-01T11:00:00.5Z"));
        assert!(t("2026-12-01T12:00:00+02:00") < t("2026-12-01T11:00:00.000001Z"));
        assert_eq!(
            t("2026-12-01T20:16:29.190461Z"),
            "2026-12-01T20:16:29.190461Z"
        );
        assert!(timestamp(Some(&json!("yesterday"))).is_none());
        assert!(timestamp(Some(&json!(5))).is_none());
    }

    #[test]
    fn doccano_lines_in_both_shapes() {
        let a = doccano_line(
            r#"{"id": 7, "text": "cor de pedra", "label": [[7, 12, "METAPHOR"]]}"#,
            1,
        )
        .unwrap();
        assert_eq!(
            (a.task_id.as_str(), a.spans.len(), a.spans[0].start),
            ("7", 1, 7)
        );
        let b = doccano_line(r#"{"text": "cor de pedra", "entities": [{"start_offset": 0, "end_offset": 3, "label": "M"}]}"#, 2).unwrap();
        assert_eq!(b.spans[0].end, 3);
        assert_eq!(b.task_id.len(), 16, "text hash");
        assert!(
            doccano_line(r#"{"text": "x", "label": [[0, "a", "M"]]}"#, 3)
                .unwrap_err()
                .contains("line 3")
        );
        assert!(doccano_line("[1]", 4).is_err());
    }
}
