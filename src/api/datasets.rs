//! `/v1/datasets`: upload (multipart or JSON), list, read.
//!
//! Uploaded files are streamed to disk as they arrive and imported from there on a blocking
//! thread ([`upload::import`]), so an upload costs memory for a sentence at a time, not for
//! its size (a JSON body holds its files in the body: about twice their size).

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::multipart::Field;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::data::DataError;
use crate::data::upload::{self, Format, ImportOptions, Source};
use crate::store;

use super::AppState;
use super::error::{ApiError, parse_json};
use super::types::{DatasetResponse, DatasetsResponse};

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

/// Longest value of a form field that is not a file.
const MAX_FIELD_BYTES: usize = 64 * 1024;

/// An upload being received: its files on disk and the options.
struct Upload {
    /// Where its files are written (removed when dropped).
    incoming: PathBuf,
    name: String,
    format: Option<Format>,
    files: Vec<Source>,
    bytes: u64,
    split: [f64; 3],
    seed: u64,
    labels: Option<Vec<String>>,
}

impl Upload {
    fn new(datasets: &Path) -> Result<Self, ApiError> {
        let incoming = datasets.join(format!(".incoming-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&incoming)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", incoming.display())))?;
        Ok(Upload {
            incoming,
            name: String::new(),
            format: None,
            files: vec![],
            bytes: 0,
            split: [0.8, 0.1, 0.1],
            seed: 42,
            labels: None,
        })
    }

    fn file_path(&self) -> PathBuf {
        self.incoming.join(format!("{}.part", self.files.len()))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.incoming);
    }
}

fn data_error(e: DataError) -> ApiError {
    match e {
        DataError::Record {
            split,
            line,
            message,
        } => ApiError::invalid(split, format!("line {line}: {message}")),
        DataError::Invalid(m) => ApiError::invalid("split", m),
        DataError::Io { path, source } => {
            ApiError::Internal(format!("{}: {source}", path.display()))
        }
        other => ApiError::invalid("file", other.to_string()),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("upload is too large".into())
    } else {
        ApiError::BadRequest(format!("multipart: {e}"))
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
                format!("must be three numbers like 0.8,0.1,0.1, got {s:?}"),
            )
        })?;
    <[f64; 3]>::try_from(parts)
        .map_err(|_| ApiError::invalid("split", format!("must be three numbers, got {s:?}")))
}

/// A small text field.
async fn text_field(mut field: Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(ApiError::invalid(
                name,
                format!("is longer than {MAX_FIELD_BYTES} bytes"),
            ));
        }
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(name, "is not UTF-8 text"))
}

/// Streams a file field to `path`; returns its size.
async fn save_field(mut field: Field<'_>, path: &Path) -> Result<u64, ApiError> {
    let write_err = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", path.display()));
    let mut out = tokio::fs::File::create(path).await.map_err(write_err)?;
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        size += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(write_err)?;
    }
    out.flush().await.map_err(write_err)?;
    Ok(size)
}

async fn read_multipart(mut mp: Multipart, up: &mut Upload) -> Result<(), ApiError> {
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" | "train" | "validation" | "test" => {
                let file_name = field.file_name().map(String::from);
                if up.format.is_none() {
                    up.format = file_name.as_deref().and_then(Format::guess);
                }
                if up.files.len() >= 3 {
                    return Err(ApiError::invalid(
                        name,
                        "send one file (split by ratio) or train, validation and test",
                    ));
                }
                let path = up.file_path();
                up.bytes += save_field(field, &path).await?;
                let label = if name == "file" {
                    file_name.clone().unwrap_or_else(|| "file".into())
                } else {
                    name
                };
                // The file name is only a label in messages: keep it short and printable.
                let label: String = label
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                up.files.push(Source { name: label, path });
                if up.name.is_empty() {
                    up.name = file_name.unwrap_or_default();
                }
            }
            "name" => up.name = text_field(field, "name").await?,
            "format" => {
                up.format = Some(
                    Format::guess(&text_field(field, "format").await?)
                        .ok_or_else(|| ApiError::invalid("format", "must be jsonl or conll"))?,
                )
            }
            "split" => up.split = parse_split(&text_field(field, "split").await?)?,
            "seed" => {
                up.seed = text_field(field, "seed")
                    .await?
                    .trim()
                    .parse()
                    .map_err(|_| ApiError::invalid("seed", "must be a non-negative integer"))?
            }
            "labels" => {
                up.labels = Some(
                    serde_json::from_str(&text_field(field, "labels").await?).map_err(|_| {
                        ApiError::invalid("labels", "must be a JSON list of label names")
                    })?,
                )
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "is not a form field of an upload (file, train, validation, test, name, format, split, seed, labels)",
                ));
            }
        }
    }
    Ok(())
}

async fn read_json(bytes: &[u8], up: &mut Upload) -> Result<(), ApiError> {
    let j: UploadJson = parse_json(bytes)?;
    up.format = Some(Format::guess(&j.format).ok_or_else(|| {
        ApiError::invalid(
            "format",
            format!("must be jsonl or conll, got {:?}", j.format),
        )
    })?);
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
    for (name, text) in files {
        let path = up.file_path();
        tokio::fs::write(&path, text.as_bytes())
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
        up.bytes += text.len() as u64;
        up.files.push(Source { name, path });
    }
    up.name = j.name.unwrap_or_default();
    up.split = j.split.unwrap_or(up.split);
    up.seed = j.seed.unwrap_or(up.seed);
    up.labels = j.labels;
    Ok(())
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
        .to_ascii_lowercase();
    let datasets = state.shared.data_dir.join("datasets");
    let mut up = Upload::new(&datasets)?;
    if ct.starts_with("multipart/form-data") {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        read_multipart(mp, &mut up).await?;
    } else if ct.starts_with("application/json") {
        let bytes = axum::body::Bytes::from_request(req, &())
            .await
            .map_err(|e| super::error::body_rejection(e.status(), e.body_text()))?;
        read_json(&bytes, &mut up).await?;
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "send multipart/form-data or application/json".into(),
        ));
    }
    if !(up.files.len() == 1 || up.files.len() == 3) {
        return Err(ApiError::invalid(
            "file",
            "send one file (split by ratio) or train, validation and test",
        ));
    }
    if up.name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be at most 200 characters"));
    }
    let format = up.format.ok_or_else(|| {
        ApiError::invalid(
            "format",
            "cannot tell the format: give format=jsonl|conll or a .jsonl/.conll file name",
        )
    })?;
    if let Some(labels) = &up.labels {
        crate::metrics::LabelScheme::new(labels)
            .map_err(|e| ApiError::invalid("labels", e.to_string()))?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let dir = datasets.join(&id);
    let opts = ImportOptions {
        format,
        labels: up.labels.clone(),
        split: up.split,
        seed: up.seed,
    };
    let (sources, out) = (up.files.clone(), dir.clone());
    let imported = tokio::task::spawn_blocking(move || upload::import(&sources, &opts, &out))
        .await
        .map_err(|e| ApiError::Internal(format!("import task: {e}")));
    let imported = match imported.and_then(|r| r.map_err(data_error)) {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    if let Err(e) = crate::metrics::LabelScheme::new(&imported.labels) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(ApiError::invalid("labels", e.to_string()));
    }
    let name = if up.name.is_empty() {
        id.clone()
    } else {
        up.name.clone()
    };
    let stored = store::datasets::insert(
        &state.shared.pool,
        &id,
        &name,
        format.as_str(),
        &serde_json::to_string(&imported.labels).map_err(|e| ApiError::Internal(e.to_string()))?,
        &serde_json::to_string(&imported.stats).map_err(|e| ApiError::Internal(e.to_string()))?,
        up.bytes as i64,
    )
    .await;
    let row = match stored {
        Ok(row) => row,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    // Workers on other machines read it from the artifact store.
    state.shared.push_dir(&dir, &[]).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "dataset stored here but not in the artifact store: {e}"
        ))
    })?;
    Ok((StatusCode::CREATED, Json(DatasetResponse::try_from(row)?)).into_response())
}

/// GET /v1/datasets
pub async fn list_datasets(
    State(state): State<AppState>,
) -> Result<Json<DatasetsResponse>, ApiError> {
    let rows = store::datasets::list(&state.shared.pool).await?;
    Ok(Json(DatasetsResponse {
        datasets: rows
            .into_iter()
            .map(DatasetResponse::try_from)
            .collect::<Result<_, _>>()?,
    }))
}

/// GET /v1/datasets/{id}
pub async fn get_dataset(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DatasetResponse>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::NotFound(format!("dataset {id:?}")))?
        .to_string();
    let row = store::datasets::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("dataset {id}")))?;
    let mut out = DatasetResponse::try_from(row)?;
    let (dir, labels) = (
        state.shared.data_dir.join("datasets").join(&id),
        out.labels.clone(),
    );
    out.samples = tokio::task::spawn_blocking(move || samples(&dir, &labels, SAMPLES))
        .await
        .ok();
    Ok(Json(out))
}

/// Sentences shown with a dataset.
const SAMPLES: usize = 5;

/// The first `n` sentences of the stored training split with their label names (lines that do
/// not read back are skipped).
fn samples(dir: &std::path::Path, labels: &[String], n: usize) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(dir.join("train.jsonl")) else {
        return vec![];
    };
    std::io::BufReader::new(f)
        .lines()
        .take(n)
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.ok()?).ok()?;
            let tags: Vec<String> = v["tags"]
                .as_array()?
                .iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|i| labels.get(i as usize).cloned())
                        .unwrap_or_else(|| t.as_str().unwrap_or("?").to_string())
                })
                .collect();
            Some(serde_json::json!({"split": "train", "tokens": v["tokens"], "tags": tags}))
        })
        .collect()
}
