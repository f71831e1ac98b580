//! `/v1/datasets`: upload (multipart or JSON), list, read.

use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::data::DataError;
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::data::upload::{self, Format, RawSentence};
use crate::store;

use super::AppState;
use super::error::{ApiError, parse_json};

/// JSON upload body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadJson {
    pub name: Option<String>,
    /// `jsonl` or `conll`.
    pub format: String,
    /// One file, split by `split` and `seed`.
    pub content: Option<String>,
    /// Or one file per split.
    pub files: Option<SplitFiles>,
    /// Train/validation/test ratios (default 0.8/0.1/0.1).
    pub split: Option<[f64; 3]>,
    pub seed: Option<u64>,
    /// Label names by id (needed when tags are ids).
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFiles {
    pub train: String,
    pub validation: String,
    pub test: String,
}

/// A parsed upload before it is stored.
struct Upload {
    name: String,
    format: Format,
    /// (file name, text): one file, or train/validation/test.
    files: Vec<(String, String)>,
    split: [f64; 3],
    seed: u64,
    labels: Option<Vec<String>>,
}

fn data_error(e: DataError) -> ApiError {
    match e {
        DataError::Record {
            split,
            line,
            message,
        } => ApiError::invalid(split, format!("line {line}: {message}")),
        other => ApiError::invalid("file", other.to_string()),
    }
}

fn parse_split(s: &str) -> Result<[f64; 3], ApiError> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::invalid(
                "split",
                format!("expected three numbers like 0.8,0.1,0.1, got {s:?}"),
            )
        })?;
    <[f64; 3]>::try_from(parts)
        .map_err(|_| ApiError::invalid("split", format!("expected three numbers, got {s:?}")))
}

async fn read_multipart(mut mp: Multipart) -> Result<Upload, ApiError> {
    let mut up = Upload {
        name: String::new(),
        format: Format::Jsonl,
        files: vec![],
        split: [0.8, 0.1, 0.1],
        seed: 42,
        labels: None,
    };
    let mut format: Option<Format> = None;
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(String::from);
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("upload is too large".into())
            } else {
                ApiError::BadRequest(format!("multipart: {e}"))
            }
        })?;
        let text = || {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::invalid(name.clone(), "is not UTF-8 text"))
        };
        match name.as_str() {
            "file" | "train" | "validation" | "test" => {
                if format.is_none() {
                    format = file_name.as_deref().and_then(Format::guess);
                }
                let label = if name == "file" {
                    file_name.clone().unwrap_or_else(|| "file".into())
                } else {
                    name.clone()
                };
                up.files.push((label, text()?));
                if up.name.is_empty() {
                    up.name = file_name.unwrap_or_default();
                }
            }
            "name" => up.name = text()?,
            "format" => {
                format = Some(
                    Format::guess(&text()?)
                        .ok_or_else(|| ApiError::invalid("format", "must be jsonl or conll"))?,
                )
            }
            "split" => up.split = parse_split(&text()?)?,
            "seed" => {
                up.seed = text()?
                    .trim()
                    .parse()
                    .map_err(|_| ApiError::invalid("seed", "must be a non-negative integer"))?
            }
            "labels" => {
                up.labels = Some(serde_json::from_str(&text()?).map_err(|_| {
                    ApiError::invalid("labels", "must be a JSON list of label names")
                })?)
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown form field (expected file, train, validation, test, name, format, split, seed, labels)",
                ));
            }
        }
    }
    up.format = format.ok_or_else(|| {
        ApiError::invalid(
            "format",
            "cannot tell the format: give format=jsonl|conll or a .jsonl/.conll file name",
        )
    })?;
    Ok(up)
}

fn from_json(j: UploadJson) -> Result<Upload, ApiError> {
    let format = Format::guess(&j.format).ok_or_else(|| {
        ApiError::invalid(
            "format",
            format!("must be jsonl or conll, got {:?}", j.format),
        )
    })?;
    let files = match (j.content, j.files) {
        (Some(c), None) => vec![("content".to_string(), c)],
        (None, Some(f)) => vec![
            ("train".into(), f.train),
            ("validation".into(), f.validation),
            ("test".into(), f.test),
        ],
        _ => {
            return Err(ApiError::invalid(
                "content",
                "give exactly one of content or files",
            ));
        }
    };
    Ok(Upload {
        name: j.name.unwrap_or_default(),
        format,
        files,
        split: j.split.unwrap_or([0.8, 0.1, 0.1]),
        seed: j.seed.unwrap_or(42),
        labels: j.labels,
    })
}

/// POST /v1/datasets
pub async fn upload_dataset(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let up = if ct.starts_with("multipart/form-data") {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        read_multipart(mp).await?
    } else if ct.starts_with("application/json") {
        let bytes = axum::body::Bytes::from_request(req, &())
            .await
            .map_err(|e| super::error::body_rejection(e.status(), e.body_text()))?;
        from_json(parse_json(&bytes)?)?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "send multipart/form-data or application/json".into(),
        ));
    };
    if !(up.files.len() == 1 || up.files.len() == 3) {
        return Err(ApiError::invalid(
            "file",
            "send one file (split by ratio) or train, validation and test",
        ));
    }
    if up.name.len() > 200 {
        return Err(ApiError::invalid("name", "must be at most 200 characters"));
    }
    let size: usize = up.files.iter().map(|(_, t)| t.len()).sum();
    let parsed: Vec<(String, Vec<RawSentence>)> = up
        .files
        .iter()
        .map(|(f, t)| upload::parse(t, up.format, f).map(|s| (f.clone(), s)))
        .collect::<Result<_, _>>()
        .map_err(data_error)?;
    let refs: Vec<(&str, &[RawSentence])> = parsed
        .iter()
        .map(|(f, s)| (f.as_str(), s.as_slice()))
        .collect();
    let labels = upload::labels_for(&refs, up.labels.as_deref()).map_err(data_error)?;
    crate::metrics::LabelScheme::new(&labels)
        .map_err(|e| ApiError::invalid("labels", e.to_string()))?;
    let rows: Vec<Vec<(Vec<String>, Vec<i64>)>> = parsed
        .iter()
        .map(|(f, s)| upload::to_ids(f, s, &labels))
        .collect::<Result<_, _>>()
        .map_err(data_error)?;
    let splits: [Vec<(Vec<String>, Vec<i64>)>; 3] = if rows.len() == 1 {
        upload::split(&rows[0], up.split, up.seed)
            .map_err(|e| ApiError::invalid("split", e.to_string()))?
    } else {
        let mut it = rows.into_iter();
        [
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
        ]
    };
    let id = uuid::Uuid::new_v4().to_string();
    let dir = state.shared.data_dir.join("datasets").join(&id);
    let written = (|| {
        upload::write_dataset(&dir, &labels, [&splits[0], &splits[1], &splits[2]])?;
        Dataset::load(&dir, &DatasetOptions::default())
    })();
    let ds = match written {
        Ok(ds) => ds,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(data_error(e));
        }
    };
    let stats =
        serde_json::to_string(&ds.stats()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let name = if up.name.is_empty() {
        id.clone()
    } else {
        up.name
    };
    let row = store::datasets::insert(
        &state.shared.pool,
        &id,
        &name,
        up.format.as_str(),
        &serde_json::to_string(&labels).unwrap_or_default(),
        &stats,
        size as i64,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dataset_json(&row))).into_response())
}

fn dataset_json(r: &store::datasets::DatasetRow) -> Value {
    json!({"id": r.id, "name": r.name, "format": r.format, "labels": serde_json::from_str::<Value>(&r.labels).unwrap_or(Value::Null),
        "stats": serde_json::from_str::<Value>(&r.stats).unwrap_or(Value::Null), "size_bytes": r.size_bytes, "created_at": r.created_at,
        "use_in_job": {"dataset": {"id": r.id}}})
}

/// GET /v1/datasets
pub async fn list_datasets(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = store::datasets::list(&state.shared.pool).await?;
    Ok(Json(
        json!({"datasets": rows.iter().map(dataset_json).collect::<Vec<_>>()}),
    ))
}

/// GET /v1/datasets/{id}
pub async fn get_dataset(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::NotFound(format!("dataset {id:?}")))?
        .to_string();
    let row = store::datasets::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("dataset {id}")))?;
    Ok(Json(dataset_json(&row)))
}
