//! Label Studio ML backend protocol (label-studio-ml-backend): `/health`, `/setup`,
//! `/predict` (one prediction per task, in task order, also for tasks without entities) and
//! `/webhook` (`START_TRAINING` starts the configured job).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::infer::{DetectOptions, Input};

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

/// Most projects whose labeling config is kept; the oldest is forgotten beyond it.
const MAX_PROJECTS: usize = 1000;
/// Longest labeling config kept (bytes).
const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Labeling configs received by `/setup`, per project, bounded.
#[derive(Default)]
pub struct Projects {
    inner: Mutex<(HashMap<String, LabelConfig>, VecDeque<String>)>,
}

impl Projects {
    fn insert(&self, project: String, config: LabelConfig) {
        let mut g = self.inner.lock().expect("projects lock: this is a bug");
        let (map, order) = &mut *g;
        if map.insert(project.clone(), config).is_none() {
            order.push_back(project);
            while order.len() > MAX_PROJECTS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    fn get(&self, project: &str) -> Option<LabelConfig> {
        let g = self.inner.lock().expect("projects lock: this is a bug");
        g.0.get(project).cloned()
    }

    /// Projects remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("projects lock: this is a bug")
            .0
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn version(state: &AppState) -> Option<String> {
    state
        .shared
        .registry
        .get("default")
        .map(|d| d.info.version.clone())
}

/// GET /labelstudio/health
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "UP", "model_class": "metafora", "model_version": version(&state)}))
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
    let key = match p {
        Some(Value::String(s)) => s.split('.').next().unwrap_or(s).to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Object(o)) => o.get("id").map(|v| v.to_string()).unwrap_or_default(),
        _ => String::new(),
    };
    key.chars().take(64).collect()
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

/// POST /labelstudio/setup
pub async fn setup(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<Json<Value>, ApiError> {
    if let Some(schema) = &req.schema {
        let config = config_of("schema", schema)?;
        state.labelstudio.insert(project_key(&req.project), config);
    }
    Ok(Json(
        json!({"model_version": version(&state).unwrap_or_default()}),
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

fn pick_label(entity: &str, config: &LabelConfig) -> String {
    config
        .labels
        .iter()
        .find(|l| l.eq_ignore_ascii_case(entity))
        .cloned()
        .unwrap_or_else(|| entity.to_string())
}

/// POST /labelstudio/predict — the tasks go through `/v1/detect`'s limits.
pub async fn predict(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    let config = match &req.label_config {
        Some(xml) => config_of("label_config", xml)?,
        None => state
            .labelstudio
            .get(&project_key(&req.project))
            .unwrap_or_default(),
    };
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
    let out = run_detect(
        &state,
        "default",
        Input::Texts(texts),
        DetectOptions::default(),
    )
    .await
    .map_err(|e| match e {
        ApiError::Invalid(f) if f.field.starts_with("texts") => {
            ApiError::invalid(f.field.replacen("texts", "tasks", 1), f.message)
        }
        other => other,
    })?;
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
        assert_eq!(pick_label("METAPHOR", &c), "Metaphor");
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

    #[test]
    fn the_project_map_is_bounded() {
        let p = Projects::default();
        for i in 0..MAX_PROJECTS + 50 {
            p.insert(i.to_string(), LabelConfig::default());
        }
        assert_eq!(p.len(), MAX_PROJECTS);
        assert!(p.get("0").is_none(), "the oldest are forgotten");
        assert!(p.get(&(MAX_PROJECTS + 49).to_string()).is_some());
    }
}
