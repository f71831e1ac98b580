//! Label Studio ML backend protocol (label-studio-ml-backend): `/health`, `/setup` (records
//! the project: its labelling config and the model it predicts with), `/predict` (one
//! prediction per task, in task order, whole-word regions with the project's label names, a
//! task score for active learning) and `/webhook` (annotations become dataset versions;
//! `START_TRAINING` retrains the project).

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::infer::aggregate::Strategy;
use crate::infer::{DetectOptions, Input, WordMode};
use crate::jobs::predictions::labelstudio_prediction;
use crate::jobs::projects::{self, RawAnnotation};
use crate::store;
use crate::store::projects::{ProjectInput, ProjectRow};

use super::AppState;
use super::detect::run_detect;
use super::error::{ApiError, ApiJson};

/// Names in a labeling config: the `Labels` control, the `Text` object, the data key and the
/// label values.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelConfig {
    pub from_name: String,
    pub to_name: String,
    pub data_key: String,
    pub labels: Vec<String>,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            from_name: "label".into(),
            to_name: "text".into(),
            data_key: "text".into(),
            labels: vec![],
        }
    }
}

/// Reads the first `<Labels>` control and the `<Text>`/`<HyperText>` object it labels from a
/// labeling config (XML; any attribute order or quoting). Defaults for what is missing.
pub fn parse_label_config(xml: &str) -> Result<LabelConfig, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not valid XML: {e}"))?;
    let mut c = LabelConfig::default();
    let Some(labels) = doc.descendants().find(|n| n.has_tag_name("Labels")) else {
        return Ok(c);
    };
    if let Some(n) = labels.attribute("name") {
        c.from_name = n.into();
    }
    if let Some(n) = labels.attribute("toName") {
        c.to_name = n.into();
    }
    c.labels = labels
        .descendants()
        .filter(|n| n.has_tag_name("Label"))
        .filter_map(|n| n.attribute("value").map(String::from))
        .collect();
    if let Some(v) = doc
        .descendants()
        .filter(|n| n.has_tag_name("Text") || n.has_tag_name("HyperText"))
        .find(|n| n.attribute("name") == Some(c.to_name.as_str()))
        .and_then(|n| n.attribute("value"))
    {
        c.data_key = v.trim_start_matches('$').to_string();
    }
    Ok(c)
}

/// Longest labeling config kept (bytes).
const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Version of the model served as `model`.
fn version_of(state: &AppState, model: &str) -> Option<String> {
    state
        .shared
        .registry
        .get(model)
        .map(|d| d.info.version.clone())
}

/// GET /labelstudio/health
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(
        json!({"status": "UP", "model_class": "metafora", "model_version": version_of(&state, "default")}),
    )
}

#[derive(Debug, Deserialize)]
pub struct SetupRequest {
    #[serde(default)]
    pub project: Option<Value>,
    #[serde(default)]
    pub schema: Option<String>,
    /// The connection's "extra params": `{"model_name": "..."}` (JSON text or object) or
    /// `model_name=...` picks the metafora model of the project.
    #[serde(default)]
    pub extra_params: Option<Value>,
    #[serde(default, flatten)]
    pub _rest: HashMap<String, Value>,
}

/// The project id Label Studio sends: `"3.1764151200"` (id.timestamp), `3` or `{"id": 3}`;
/// empty when it sends none or something unusable.
fn project_key(p: &Option<Value>) -> String {
    let key = match p {
        Some(Value::String(s)) => s.split('.').next().unwrap_or(s).to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Object(o)) => match o.get("id") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if super::projects::check_id("project", &key).is_ok() {
        key
    } else {
        String::new()
    }
}

fn config_of(field: &str, xml: &str) -> Result<LabelConfig, ApiError> {
    if xml.len() > MAX_CONFIG_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_CONFIG_BYTES}", xml.len()),
        ));
    }
    parse_label_config(xml).map_err(|e| ApiError::invalid(field, e))
}

/// A labelling config that can take span predictions: a `Labels` control with labels.
fn span_config(field: &str, xml: &str) -> Result<LabelConfig, ApiError> {
    let c = config_of(field, xml)?;
    if c.labels.is_empty() {
        return Err(ApiError::invalid(
            field,
            "has no <Labels> control with <Label value=...>: metafora predicts labelled spans",
        ));
    }
    Ok(c)
}

/// The model name in the connection's extra params, if any.
fn extra_model(extra: &Option<Value>) -> Result<Option<String>, ApiError> {
    let v = match extra {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => s
                .split(['\n', ',', ';'])
                .find_map(|kv| {
                    kv.trim()
                        .strip_prefix("model_name=")
                        .map(|m| json!({"model_name": m.trim()}))
                })
                .unwrap_or(Value::Null),
        },
        Some(v) => v.clone(),
    };
    let name = v.get("model_name").or_else(|| v.get("model"));
    match name {
        None => Ok(None),
        Some(Value::String(n))
            if (1..=64).contains(&n.len())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Ok(Some(n.clone()))
        }
        Some(_) => Err(ApiError::invalid(
            "extra_params.model_name",
            "must be a deployed model's name (1-64 letters, digits, '-', '_' or '.')",
        )),
    }
}

/// Records (creates or updates) a Label Studio project.
async fn save_project(
    state: &AppState,
    key: &str,
    config: &LabelConfig,
    xml: &str,
    model: Option<String>,
) -> Result<ProjectRow, ApiError> {
    Ok(store::projects::upsert(
        &state.shared.pool,
        key,
        &ProjectInput {
            source: "labelstudio".into(),
            labels: serde_json::to_string(&config.labels)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            from_name: config.from_name.clone(),
            to_name: config.to_name.clone(),
            data_key: config.data_key.clone(),
            label_config: Some(xml.to_string()),
            model_name: model,
            template: None,
            retrain_every: None,
        },
    )
    .await?)
}

/// POST /labelstudio/setup — Label Studio calls it when the backend is connected and when the
/// project's config changes.
pub async fn setup(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<Json<Value>, ApiError> {
    let key = project_key(&req.project);
    let model = extra_model(&req.extra_params)?;
    let mut served = model.clone().unwrap_or_else(|| "default".into());
    if let Some(schema) = &req.schema {
        let config = span_config("schema", schema)?;
        if !key.is_empty() {
            let row = save_project(&state, &key, &config, schema, model).await?;
            served = row.model_name;
        }
    }
    Ok(Json(
        json!({"model_version": version_of(&state, &served).unwrap_or_default()}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub tasks: Vec<Value>,
    #[serde(default)]
    pub project: Option<Value>,
    #[serde(default)]
    pub label_config: Option<String>,
    #[serde(default, flatten)]
    pub _rest: HashMap<String, Value>,
}

/// The project's config label a model label maps to (case-insensitively, without `B-`/`I-`);
/// `None` when the config lacks it (the region is dropped). A config without labels keeps
/// the model's names.
fn pick_label(entity: &str, config: &LabelConfig) -> Option<String> {
    if config.labels.is_empty() {
        return Some(entity.to_string());
    }
    let entity = entity
        .strip_prefix("B-")
        .or_else(|| entity.strip_prefix("I-"))
        .unwrap_or(entity);
    config
        .labels
        .iter()
        .find(|l| l.eq_ignore_ascii_case(entity))
        .cloned()
}

/// POST /labelstudio/predict — the tasks go through `/v1/detect`'s limits. Regions are whole
/// words (word-level aggregation over whitespace words: the model's default when it is
/// word-level, else `first`); each prediction's `score` is 1 − the task's uncertainty.
pub async fn predict(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    let key = project_key(&req.project);
    let project = if key.is_empty() {
        None
    } else {
        store::projects::get(&state.shared.pool, &key).await?
    };
    let config = match (&req.label_config, &project) {
        (Some(xml), _) => config_of("label_config", xml)?,
        (None, Some(p)) => LabelConfig {
            from_name: p.from_name.clone(),
            to_name: p.to_name.clone(),
            data_key: p.data_key.clone(),
            labels: serde_json::from_str(&p.labels).unwrap_or_default(),
        },
        (None, None) => LabelConfig::default(),
    };
    let model = project
        .as_ref()
        .map(|p| p.model_name.clone())
        .unwrap_or_else(|| "default".into());
    if req.tasks.is_empty() {
        return Ok(Json(json!({"results": []})));
    }
    let texts = req
        .tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            task.get("data")
                .and_then(|d| d.get(&config.data_key))
                .and_then(|t| t.as_str())
                .map(String::from)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("tasks[{i}].data.{}", config.data_key),
                        "missing text",
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let strategy = state
        .shared
        .registry
        .get(&model)
        .map(|d| match d.info.aggregation_strategy {
            Strategy::Simple | Strategy::None => Strategy::First,
            s => s,
        });
    let opts = DetectOptions {
        strategy,
        uncertainty: true,
        words: Some(WordMode::Whitespace),
        ..Default::default()
    };
    let out = run_detect(&state, &model, Input::Texts(texts), opts)
        .await
        .map_err(|e| match e {
            ApiError::Invalid(f) if f.field.starts_with("texts") => {
                ApiError::invalid(f.field.replacen("texts", "tasks", 1), f.message)
            }
            other => other,
        })?;
    let mut dropped = 0;
    let results: Vec<Value> = out
        .results
        .iter()
        .map(|r| {
            let (p, d) = labelstudio_prediction(
                r,
                &out.model_version,
                &config.from_name,
                &config.to_name,
                &|l| pick_label(l, &config),
            );
            dropped += d;
            p
        })
        .collect();
    if dropped > 0 {
        state.metrics.labels_dropped.inc_by(dropped as u64);
        if let Some(p) = &project {
            store::projects::add_dropped(&state.shared.pool, &p.id, dropped as i64).await?;
        }
    }
    Ok(Json(json!({"results": results})))
}

/// The project a webhook is about: stored, or created from the payload's `label_config`.
async fn webhook_project(state: &AppState, body: &Value) -> Result<ProjectRow, ApiError> {
    let p = body.get("project").cloned();
    let key = project_key(&p);
    if key.is_empty() {
        return Err(ApiError::invalid(
            "project.id",
            "missing or not a project id",
        ));
    }
    if let Some(row) = store::projects::get(&state.shared.pool, &key).await? {
        return Ok(row);
    }
    match p
        .as_ref()
        .and_then(|p| p.get("label_config"))
        .and_then(|c| c.as_str())
    {
        Some(xml) => {
            let config = span_config("project.label_config", xml)?;
            save_project(state, &key, &config, xml, None).await
        }
        None => Err(ApiError::NotFound(format!(
            "project {key:?} (connect metafora as the project's ML backend first)"
        ))),
    }
}

/// The annotation of an `ANNOTATION_CREATED`/`UPDATED` webhook.
fn webhook_annotation(body: &Value, p: &ProjectRow) -> Result<Option<RawAnnotation>, ApiError> {
    let task = body
        .get("task")
        .filter(|t| t.is_object())
        .ok_or_else(|| ApiError::invalid("task", "missing task object"))?;
    let ann = body
        .get("annotation")
        .filter(|t| t.is_object())
        .ok_or_else(|| ApiError::invalid("annotation", "missing annotation object"))?;
    let task_id = super::projects::task_id(task.get("id"))
        .ok_or_else(|| ApiError::invalid("task.id", "missing or not a number/string"))?;
    if ann.get("was_cancelled").and_then(|c| c.as_bool()) == Some(true) {
        return Ok(None);
    }
    let text = task
        .get("data")
        .and_then(|d| d.get(&p.data_key))
        .and_then(|t| t.as_str())
        .ok_or_else(|| ApiError::invalid(format!("task.data.{}", p.data_key), "missing text"))?;
    if text.chars().count() > crate::infer::MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            format!("task.data.{}", p.data_key),
            format!("longer than {} characters", crate::infer::MAX_TEXT_CHARS),
        ));
    }
    let spans = super::projects::ls_spans(ann.get("result").unwrap_or(&json!([])))
        .map_err(|e| ApiError::invalid("annotation.result", e))?;
    if spans.len() > super::projects::MAX_SPANS {
        return Err(ApiError::invalid(
            "annotation.result",
            format!(
                "{} spans; the limit is {}",
                spans.len(),
                super::projects::MAX_SPANS
            ),
        ));
    }
    Ok(Some(RawAnnotation {
        task_id,
        annotation_id: super::projects::task_id(ann.get("id")),
        updated_at: super::projects::timestamp(ann.get("updated_at")),
        text: text.into(),
        spans,
    }))
}

/// (task, annotation) pairs of a deletion webhook (Label Studio 1.23 sends only annotation
/// ids: `{"annotations": [{"id": 1}]}`).
fn deleted_items(body: &Value) -> Result<Vec<store::projects::Deletion>, ApiError> {
    let list: Vec<&Value> = match (body.get("annotations"), body.get("annotation")) {
        (Some(Value::Array(a)), _) => a.iter().collect(),
        (_, Some(a @ Value::Object(_))) => vec![a],
        _ => {
            return Err(ApiError::invalid(
                "annotations",
                "missing list of annotations",
            ));
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let task = a
                .get("task")
                .and_then(|t| if t.is_object() { t.get("id") } else { Some(t) });
            let task = super::projects::task_id(task)
                .or_else(|| super::projects::task_id(body.get("task").and_then(|t| t.get("id"))));
            let ann = super::projects::task_id(a.get("id"));
            if task.is_none() && ann.is_none() {
                return Err(ApiError::invalid(
                    format!("annotations[{i}].id"),
                    "missing annotation id",
                ));
            }
            Ok((task, ann))
        })
        .collect()
}

/// POST /labelstudio/webhook
pub async fn webhook(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let action = match body.get("action") {
        None => "",
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(ApiError::invalid("action", "must be a string")),
    };
    let max = state.settings.max_queued_jobs;
    match action {
        "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" => {
            let p = webhook_project(&state, &body).await?;
            let rec = match webhook_annotation(&body, &p)? {
                Some(a) => projects::record(&state.shared, &p.id, vec![a], action, max).await?,
                None => {
                    // A skipped task: only this annotation goes (another annotator's stays).
                    let task = super::projects::task_id(body["task"].get("id"));
                    let ann = super::projects::task_id(body["annotation"].get("id"));
                    projects::delete(&state.shared, &p.id, vec![(task, ann)], max).await?
                }
            };
            Ok(
                Json(json!({"status": "recorded", "action": action, "result": rec}))
                    .into_response(),
            )
        }
        "ANNOTATIONS_DELETED" | "ANNOTATION_DELETED" => {
            let p = webhook_project(&state, &body).await?;
            let items = deleted_items(&body)?;
            let rec = projects::delete(&state.shared, &p.id, items, max).await?;
            Ok(
                Json(json!({"status": "recorded", "action": action, "result": rec}))
                    .into_response(),
            )
        }
        "START_TRAINING" => start_training(&state, &body).await,
        _ => Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "action": action})),
        )
            .into_response()),
    }
}

/// `START_TRAINING`: retrains the project on its annotations; a project without any (or not
/// set up) starts `--labelstudio-train-spec` when configured.
async fn start_training(state: &AppState, body: &Value) -> Result<Response, ApiError> {
    let key = project_key(&body.get("project").cloned());
    let has_versions = !key.is_empty()
        && !store::projects::versions(&state.shared.pool, &key)
            .await?
            .is_empty();
    if has_versions {
        // Not enough annotations yet is an answer, not an error: Label Studio marks a backend
        // that fails START_TRAINING as broken, and with "train on annotation" it sends one
        // before each annotation's own webhook.
        let mut out = match projects::retrain(
            &state.shared,
            &key,
            "START_TRAINING",
            state.settings.max_queued_jobs,
        )
        .await
        {
            Err(projects::ProjectError::Invalid { message, .. }) => {
                json!({"status": "not_queued", "reason": message})
            }
            other => other?,
        };
        let code = if out["status"] == "queued" {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        // Label Studio records a training job when the answer names one.
        if let Some(j) = out.get("job_id").cloned() {
            out["job"] = j;
        }
        return Ok((code, Json(out)).into_response());
    }
    let Some(spec) = state.settings.labelstudio_train_spec.clone() else {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": "the project has no annotations yet and no --labelstudio-train-spec is configured"})),
        )
            .into_response());
    };
    let row = state
        .shared
        .submit(&spec, "labelstudio", state.settings.max_queued_jobs)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "queued", "job_id": row.id})),
    )
        .into_response())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_from_a_ner_config() {
        let xml = r#"<View><Labels name="metaphor" toName="txt"><Label value="Metaphor" background="red"/></Labels><Text name="txt" value="$sentence"/></View>"#;
        let c = parse_label_config(xml).unwrap();
        assert_eq!(
            c,
            LabelConfig {
                from_name: "metaphor".into(),
                to_name: "txt".into(),
                data_key: "sentence".into(),
                labels: vec!["Metaphor".into()]
            }
        );
        assert_eq!(pick_label("METAPHOR", &c).as_deref(), Some("Metaphor"));
        assert_eq!(pick_label("B-metaphor", &c).as_deref(), Some("Metaphor"));
        assert_eq!(pick_label("PERSON", &c), None);
    }

    #[test]
    fn attributes_in_any_order_quoting_and_line() {
        // Attributes on other lines, single quotes, the Text before the Labels, comments.
        let xml = "<View>\n  <!-- a comment with <Labels name=\"no\"> inside -->\n  <Text value='$body'\n        name='doc'/>\n  <Labels\n     toName='doc'\n     name=\"tags\">\n    <Label value='MET&amp;A'/>\n    <Label\n value=\"Other\"/>\n  </Labels>\n</View>";
        let c = parse_label_config(xml).unwrap();
        assert_eq!(
            c,
            LabelConfig {
                from_name: "tags".into(),
                to_name: "doc".into(),
                data_key: "body".into(),
                labels: vec!["MET&A".into(), "Other".into()]
            }
        );
        assert!(parse_label_config("<View><Labels").is_err());
        assert_eq!(
            parse_label_config("<View/>").unwrap(),
            LabelConfig::default()
        );
    }
}
