//! Label Studio ML backend protocol (label-studio-ml-backend): `/health`, `/setup`,
//! `/predict` (one prediction per task, in task order, also for tasks without entities) and
//! `/webhook` (`START_TRAINING` starts the configured job).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::infer::aggregate::Strategy;
use crate::infer::{Input, LongText};
use crate::store;

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

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

/// Reads the first `<Labels>`/`<Text>` pair of a labeling config (XML, read leniently).
pub fn parse_label_config(xml: &str) -> LabelConfig {
    let mut c = LabelConfig::default();
    let tags: Vec<&str> = xml
        .split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap_or_default())
        .collect();
    if let Some(labels) = tags
        .iter()
        .find(|t| t.starts_with("Labels ") || t.starts_with("Labels\t"))
    {
        if let Some(n) = attr(labels, "name") {
            c.from_name = n;
        }
        if let Some(n) = attr(labels, "toName") {
            c.to_name = n;
        }
    }
    if let Some(text) = tags.iter().find(|t| {
        (t.starts_with("Text ") || t.starts_with("HyperText "))
            && attr(t, "name").as_deref() == Some(&c.to_name)
    }) && let Some(v) = attr(text, "value")
    {
        c.data_key = v.trim_start_matches('$').to_string();
    }
    c.labels = tags
        .iter()
        .filter(|t| t.starts_with("Label "))
        .filter_map(|t| attr(t, "value"))
        .collect();
    c
}

/// Label configs received by `/setup`, per project.
static PROJECTS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// GET /labelstudio/health
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let model = state
        .shared
        .registry
        .get("default")
        .map(|d| d.info.version.clone());
    Json(json!({"status": "UP", "model_class": "metafora", "model_version": model}))
}

#[derive(Debug, Deserialize)]
pub struct SetupRequest {
    #[serde(default)]
    pub project: Option<Value>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default, flatten)]
    pub _rest: HashMap<String, Value>,
}

fn project_key(p: &Option<Value>) -> String {
    match p {
        Some(Value::String(s)) => s.split('.').next().unwrap_or(s).to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Object(o)) => o.get("id").map(|v| v.to_string()).unwrap_or_default(),
        _ => String::new(),
    }
}

/// POST /labelstudio/setup
pub async fn setup(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Json<Value> {
    if let Some(schema) = &req.schema {
        PROJECTS
            .lock()
            .expect("poisoned: this is a bug")
            .get_or_insert_with(HashMap::new)
            .insert(project_key(&req.project), schema.clone());
    }
    let version = state
        .shared
        .registry
        .get("default")
        .map(|d| d.info.version.clone())
        .unwrap_or_default();
    Json(json!({"model_version": version}))
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

fn pick_label(entity: &str, config: &LabelConfig) -> String {
    config
        .labels
        .iter()
        .find(|l| l.eq_ignore_ascii_case(entity))
        .cloned()
        .unwrap_or_else(|| entity.to_string())
}

/// POST /labelstudio/predict
pub async fn predict(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    let xml = req.label_config.clone().or_else(|| {
        PROJECTS
            .lock()
            .expect("poisoned: this is a bug")
            .as_ref()
            .and_then(|m| m.get(&project_key(&req.project)).cloned())
    });
    let config = xml.map(|x| parse_label_config(&x)).unwrap_or_default();
    let mut texts = Vec::with_capacity(req.tasks.len());
    for (i, task) in req.tasks.iter().enumerate() {
        let text = task
            .pointer(&format!("/data/{}", config.data_key))
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("tasks[{i}].data.{}", config.data_key),
                    "missing text",
                )
            })?;
        texts.push(text.to_string());
    }
    if texts.is_empty() {
        return Ok(Json(json!({"results": []})));
    }
    let out = run_detect(
        &state,
        "default",
        Input::Texts(texts),
        Strategy::Simple,
        None,
        LongText::Sentences,
    )
    .await?;
    let results: Vec<Value> = out
        .results
        .iter()
        .map(|r| {
            let regions: Vec<Value> = r
                .entities
                .iter()
                .map(|e| {
                    let label = pick_label(e.entity_group.as_deref().unwrap_or_default(), &config);
                    json!({"from_name": config.from_name, "to_name": config.to_name, "type": "labels",
                        "value": {"start": e.start, "end": e.end, "text": e.word, "labels": [label]}, "score": e.score})
                })
                .collect();
            let score = if r.entities.is_empty() { 0.0 } else { r.entities.iter().map(|e| e.score as f64).sum::<f64>() / r.entities.len() as f64 };
            json!({"result": regions, "score": score, "model_version": out.model_version})
        })
        .collect();
    Ok(Json(json!({"results": results})))
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
    if action != "START_TRAINING" {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "action": action})),
        )
            .into_response());
    }
    let Some(spec) = state.settings.labelstudio_train_spec.clone() else {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": "no --labelstudio-train-spec configured"})),
        )
            .into_response());
    };
    let id = uuid::Uuid::new_v4().to_string();
    let out = state.shared.job_dir(&id);
    let spec_json = serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    store::jobs::insert(
        &state.shared.pool,
        &id,
        &spec_json,
        &out.display().to_string(),
        None,
        state.settings.max_queued_jobs,
    )
    .await?;
    state
        .shared
        .emit(
            &id,
            "status",
            json!({"status": "queued", "source": "labelstudio"}),
        )
        .await?;
    state.shared.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": "queued", "job_id": id})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_from_a_ner_config() {
        let xml = r#"<View><Labels name="metaphor" toName="txt"><Label value="Metaphor" background="red"/></Labels><Text name="txt" value="$sentence"/></View>"#;
        let c = parse_label_config(xml);
        assert_eq!(
            c,
            LabelConfig {
                from_name: "metaphor".into(),
                to_name: "txt".into(),
                data_key: "sentence".into(),
                labels: vec!["Metaphor".into()]
            }
        );
        assert_eq!(pick_label("METAPHOR", &c), "Metaphor");
    }
}
