//! Bulk predictions: a durable background run of a deployed model over a dataset or a texts
//! file, written as a file to download — Label Studio tasks with pre-annotations, JSONL or
//! CoNLL. Runs left unfinished by a dead process start again at the next start.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::dataset::{Dataset, DatasetOptions};
use crate::infer::aggregate::Strategy;
use crate::infer::{DetectError, DetectOptions, Input, TextResult};
use crate::store::StoreError;
use crate::store::predictions as pstore;
use crate::validate::FieldError;

use super::Shared;

/// Texts per detect call.
const CHUNK: usize = 32;
/// Most texts one run may have.
pub const MAX_TEXTS: usize = 1_000_000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON array of Label Studio tasks with `predictions` (import as pre-annotations).
    Labelstudio,
    /// One JSON object per text: text, entities, uncertainty.
    Jsonl,
    /// One word and its tag per line, a blank line between texts.
    Conll,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Labelstudio => "json",
            Format::Jsonl => "jsonl",
            Format::Conll => "conll",
        }
    }
}

/// Where the texts come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInput {
    /// A dataset folder (as in a job spec).
    #[serde(default)]
    pub path: Option<String>,
    /// An uploaded dataset.
    #[serde(default)]
    pub id: Option<String>,
    /// Splits to read, in order (default: train, validation, test).
    #[serde(default)]
    pub splits: Option<Vec<String>>,
}

/// `POST /v1/predictions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionRequest {
    #[serde(default = "d_model")]
    pub model: String,
    #[serde(default)]
    pub dataset: Option<DatasetInput>,
    /// A text file (one text per line) or JSONL (`text`, or Label Studio's `data.text`).
    #[serde(default)]
    pub texts_file: Option<String>,
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    pub format: Format,
    #[serde(default)]
    pub aggregation_strategy: Option<Strategy>,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Label Studio names (`from_name`, `to_name`, data key) for `labelstudio` output.
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub to_name: Option<String>,
    #[serde(default)]
    pub data_key: Option<String>,
}

fn d_model() -> String {
    "default".into()
}

impl PredictionRequest {
    /// Checks the request; paths must be allowed.
    pub fn check(&self, sh: &Shared) -> Result<(), FieldError> {
        let given = [
            self.dataset.is_some(),
            self.texts_file.is_some(),
            self.texts.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(FieldError::new(
                "dataset",
                "give exactly one of dataset, texts_file or texts",
            ));
        }
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(FieldError::new(
                "threshold",
                format!("must be in [0, 1], got {t}"),
            ));
        }
        if let Some(ts) = &self.texts
            && (ts.is_empty() || ts.len() > crate::infer::MAX_TEXTS * 100)
        {
            return Err(FieldError::new(
                "texts",
                format!(
                    "give 1-{} texts inline (more: texts_file)",
                    crate::infer::MAX_TEXTS * 100
                ),
            ));
        }
        if let Some(d) = &self.dataset {
            match (&d.path, &d.id) {
                (Some(p), None) => {
                    sh.ctx.local_dataset_dir("dataset.path", p)?;
                }
                (None, Some(id)) => {
                    let ok = uuid::Uuid::parse_str(id).is_ok()
                        && sh.data_dir.join("datasets").join(id).is_dir();
                    if !ok {
                        return Err(FieldError::new(
                            "dataset.id",
                            format!("no uploaded dataset {id:?}"),
                        ));
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        "dataset.path",
                        "give exactly one of path or id",
                    ));
                }
            }
        }
        if let Some(f) = &self.texts_file {
            let p = sh.ctx.local_path("texts_file", f)?;
            if !p.is_file() {
                return Err(FieldError::new(
                    "texts_file",
                    format!("{f:?} is not a file"),
                ));
            }
        }
        for (field, v) in [
            ("from_name", &self.from_name),
            ("to_name", &self.to_name),
            ("data_key", &self.data_key),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 200)
            {
                return Err(FieldError::new(field, "must be 1-200 characters"));
            }
        }
        Ok(())
    }

    /// The texts to run.
    /// The texts to run, each within `/v1/detect`'s length limit (checked before any runs,
    /// naming the text).
    fn texts(&self, sh: &Shared) -> Result<Vec<String>, String> {
        let texts = self.read_texts(sh)?;
        if let Some((i, n)) = texts
            .iter()
            .map(|t| t.chars().count())
            .enumerate()
            .find(|(_, n)| *n > crate::infer::MAX_TEXT_CHARS)
        {
            return Err(format!(
                "text {} is {n} characters; the limit is {}",
                i + 1,
                crate::infer::MAX_TEXT_CHARS
            ));
        }
        Ok(texts)
    }

    fn read_texts(&self, sh: &Shared) -> Result<Vec<String>, String> {
        if let Some(t) = &self.texts {
            return Ok(t.clone());
        }
        if let Some(d) = &self.dataset {
            let dir = match (&d.path, &d.id) {
                (Some(p), _) => sh
                    .ctx
                    .local_dataset_dir("dataset.path", p)
                    .map_err(|e| e.to_string())?,
                (_, Some(id)) => sh.data_dir.join("datasets").join(id),
                _ => return Err("no dataset".into()),
            };
            let ds = Dataset::load(&dir, &DatasetOptions::default()).map_err(|e| e.to_string())?;
            let names = d
                .splits
                .clone()
                .unwrap_or_else(|| vec!["train".into(), "validation".into(), "test".into()]);
            let mut out = Vec::new();
            for n in names {
                let split = ds
                    .splits()
                    .into_iter()
                    .find(|s| s.name == n)
                    .ok_or_else(|| format!("dataset has no split {n:?}"))?;
                out.extend(split.sentences.iter().map(|s| s.tokens.join(" ")));
            }
            return Ok(out);
        }
        let f = self.texts_file.as_deref().unwrap_or_default();
        let p = sh
            .ctx
            .local_path("texts_file", f)
            .map_err(|e| e.to_string())?;
        use std::io::BufRead;
        let file = std::fs::File::open(&p).map_err(|e| format!("{f}: {e}"))?;
        let jsonl = p.extension().is_some_and(|e| e == "jsonl");
        let mut out = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{f} line {}: {e}", i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            if jsonl {
                let v: Value =
                    serde_json::from_str(&line).map_err(|e| format!("{f} line {}: {e}", i + 1))?;
                let t = v
                    .get("text")
                    .or_else(|| v.get("data").and_then(|d| d.get("text")))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| format!("{f} line {}: no \"text\" (or data.text)", i + 1))?;
                out.push(t.to_string());
            } else {
                out.push(line.to_string());
            }
            if out.len() > MAX_TEXTS {
                return Err(format!("{f} has more than {MAX_TEXTS} texts"));
            }
        }
        Ok(out)
    }
}

/// Stores a run and starts it.
/// Set when the server shuts down: a run stops between chunks and stays `running`, to start
/// again at the next start.
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// Stores a run and starts it.
pub async fn submit(
    sh: &Arc<Shared>,
    req: PredictionRequest,
    stop: Stop,
) -> Result<pstore::PredictionRow, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let fmt = serde_json::to_value(req.format)?;
    let row = pstore::insert(
        &sh.pool,
        &id,
        &req.model,
        &serde_json::to_string(&req)?,
        fmt.as_str().unwrap_or_default(),
    )
    .await?;
    spawn(sh.clone(), row.clone(), stop);
    Ok(row)
}

/// At start: runs left queued or running start again.
pub async fn recover(sh: &Arc<Shared>, stop: Stop) -> Result<usize, StoreError> {
    let rows = pstore::unfinished(&sh.pool).await?;
    let n = rows.len();
    for row in rows {
        spawn(sh.clone(), row, stop.clone());
    }
    Ok(n)
}

/// Output file of a run.
pub fn output_path(sh: &Shared, id: &str, format: Format) -> PathBuf {
    sh.data_dir
        .join("predictions")
        .join(id)
        .join(format!("output.{}", format.extension()))
}

fn spawn(sh: Arc<Shared>, row: pstore::PredictionRow, stop: Stop) {
    tokio::spawn(async move {
        let id = row.id.clone();
        let res = run(&sh, row, &stop).await;
        let (status, out, err) = match res {
            Ok(Some(p)) => ("succeeded", Some(p.display().to_string()), None),
            Ok(None) => {
                tracing::info!(prediction = %id, "prediction run stopped by the shutdown; it starts again at the next start");
                return;
            }
            Err(e) => ("failed", None, Some(e)),
        };
        if let Err(e) = pstore::finish(&sh.pool, &id, status, out.as_deref(), err.as_deref()).await
        {
            tracing::error!(prediction = %id, error = %e, "could not record the end of a prediction run");
        }
    });
}

async fn run(
    sh: &Arc<Shared>,
    row: pstore::PredictionRow,
    stop: &Stop,
) -> Result<Option<PathBuf>, String> {
    let req: PredictionRequest = serde_json::from_str(&row.request).map_err(|e| e.to_string())?;
    let (sh2, req2) = (sh.clone(), req.clone());
    let texts = tokio::task::spawn_blocking(move || req2.texts(&sh2))
        .await
        .map_err(|e| e.to_string())??;
    let det = sh
        .registry
        .get(&req.model)
        .ok_or_else(|| format!("model {:?} is not deployed", req.model))?;
    let version = det.info.version.clone();
    pstore::start(&sh.pool, &row.id, texts.len() as i64, &version)
        .await
        .map_err(|e| e.to_string())?;
    let path = output_path(sh, &row.id, req.format);
    let dir = path.parent().expect("output has a folder").to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A name of this attempt's own: an attempt of an earlier process never shares it.
    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| e.to_string())?);
    // Whole words, as Label Studio and doccano want them: word-level aggregation over
    // whitespace words (the model's default when word-level, else `first`).
    let strategy = req
        .aggregation_strategy
        .unwrap_or(match det.info.aggregation_strategy {
            Strategy::Simple | Strategy::None => Strategy::First,
            s => s,
        });
    let opts = DetectOptions {
        strategy: Some(strategy),
        threshold: req.threshold,
        uncertainty: true,
        words: Some(crate::infer::WordMode::Whitespace),
        ..Default::default()
    };
    let io = |e: std::io::Error| e.to_string();
    if req.format == Format::Labelstudio {
        out.write_all(b"[\n").map_err(io)?;
    }
    let mut done = 0usize;
    for chunk in chunks(&texts) {
        if *stop.borrow() {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        let result = loop {
            match det.clone().detect(Input::Texts(chunk.to_vec()), opts).await {
                Err(DetectError::Busy(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                other => break other.map_err(|e| e.to_string())?,
            }
        };
        for (text, r) in chunk.iter().zip(&result.results) {
            let first = done == 0;
            write_one(&mut out, &req, text, r, &version, first).map_err(io)?;
            done += 1;
        }
        pstore::progress(&sh.pool, &row.id, done as i64)
            .await
            .map_err(|e| e.to_string())?;
    }
    if req.format == Format::Labelstudio {
        out.write_all(b"\n]\n").map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| e.to_string())?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    tracing::info!(prediction = %row.id, texts = done, "bulk predictions written");
    Ok(Some(path))
}

/// Consecutive texts in requests within `/v1/detect`'s limits: at most `CHUNK` texts and
/// `MAX_TOTAL_CHARS` characters each (a text alone is within the limit, checked on reading).
fn chunks(texts: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut chars) = (0, 0);
    for (i, t) in texts.iter().enumerate() {
        let n = t.chars().count();
        if i > start && (i - start == CHUNK || chars + n > crate::infer::MAX_TOTAL_CHARS) {
            out.push(&texts[start..i]);
            (start, chars) = (i, 0);
        }
        chars += n;
    }
    if start < texts.len() {
        out.push(&texts[start..]);
    }
    out
}

/// A Label Studio prediction for one text: whole-word regions with their scores, the task
/// score = 1 − uncertainty (sort ascending for the least certain tasks first).
pub fn labelstudio_prediction(
    r: &TextResult,
    version: &str,
    from_name: &str,
    to_name: &str,
    label_of: &dyn Fn(&str) -> Option<String>,
) -> (Value, usize) {
    let mut dropped = 0;
    let regions: Vec<Value> = r
        .entities
        .iter()
        .filter_map(|e| {
            let group = e
                .entity_group
                .as_deref()
                .or(e.entity.as_deref())
                .unwrap_or_default();
            let Some(label) = label_of(group) else {
                dropped += 1;
                return None;
            };
            Some(
                json!({"from_name": from_name, "to_name": to_name, "type": "labels",
                "value": {"start": e.start, "end": e.end, "text": e.word, "labels": [label]},
                "score": e.score}),
            )
        })
        .collect();
    let score = 1.0 - r.uncertainty.unwrap_or(0.0) as f64;
    (
        json!({"result": regions, "score": score, "model_version": version}),
        dropped,
    )
}

fn write_one(
    out: &mut impl Write,
    req: &PredictionRequest,
    text: &str,
    r: &TextResult,
    version: &str,
    first: bool,
) -> std::io::Result<()> {
    match req.format {
        Format::Labelstudio => {
            let key = req.data_key.as_deref().unwrap_or("text");
            let (pred, _) = labelstudio_prediction(
                r,
                version,
                req.from_name.as_deref().unwrap_or("label"),
                req.to_name.as_deref().unwrap_or("text"),
                &|l| Some(l.to_string()),
            );
            let task = json!({"data": {key: text}, "predictions": [pred]});
            if !first {
                out.write_all(b",\n")?;
            }
            serde_json::to_writer(&mut *out, &task)?;
        }
        Format::Jsonl => {
            serde_json::to_writer(
                &mut *out,
                &json!({"text": text, "entities": r.entities, "uncertainty": r.uncertainty, "model_version": version}),
            )?;
            out.write_all(b"\n")?;
        }
        Format::Conll => {
            let words = crate::data::annotations::words(text);
            let chars: Vec<char> = text.chars().collect();
            for (s, e) in words {
                let tag = r
                    .entities
                    .iter()
                    .find(|x| x.start < e && s < x.end)
                    .map(|x| {
                        let kind = x
                            .entity_group
                            .as_deref()
                            .or(x.entity.as_deref())
                            .unwrap_or_default();
                        let b = if x.start >= s { "B" } else { "I" };
                        let kind = kind.trim_start_matches("B-").trim_start_matches("I-");
                        format!("{b}-{kind}")
                    })
                    .unwrap_or_else(|| "O".into());
                writeln!(out, "{}\t{tag}", chars[s..e].iter().collect::<String>())?;
            }
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// A run as the API shows it.
pub fn view(row: &pstore::PredictionRow) -> Value {
    json!({"id": row.id, "model": row.model, "format": row.format, "status": row.status,
        "done": row.done, "total": row.total, "model_version": row.model_version,
        "error": row.error, "created_at": row.created_at, "finished_at": row.finished_at,
        "output": (row.status == "succeeded").then(|| format!("/v1/predictions/{}/output", row.id))})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_count_and_characters() {
        let texts: Vec<String> = (0..70).map(|_| "a".repeat(10)).collect();
        let sizes: Vec<usize> = chunks(&texts).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, 70 - 2 * CHUNK]);
        let big: Vec<String> = (0..5).map(|_| "a".repeat(400_000)).collect();
        let sizes: Vec<usize> = chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 2, 1], "at most 1M characters per request");
        assert!(chunks(&[]).is_empty());
    }
}
