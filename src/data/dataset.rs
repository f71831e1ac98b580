//! Dataset readers and validation: pre-split sentences (`tokens`) with word labels (`tags`).
//!
//! Layouts read:
//! - a folder with `train.jsonl`, `validation.jsonl`, `test.jsonl` (+ `labels.json`), the
//!   layout of `../shared/data/*` and of uploads;
//! - an HF dataset folder: parquet, JSON/JSONL or CSV data files whose name or parent folder
//!   names the split (`data/train-00000-of-00001.parquet`, `default/train/0000.parquet` as on
//!   the `refs/convert/parquet` branch, `train.csv`), label names from `labels.json`, the
//!   `ClassLabel` feature in `dataset_info.json` or the README card, or the job spec.
//!
//! Tags may be ids or label names. Everything is validated before training; errors name the
//! split, the 1-based line (row) and the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::DataError;

/// Split names and columns to read.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// Names of the train, validation and test splits in the source.
    pub splits: [String; 3],
    pub tokens_column: String,
    pub tags_column: String,
    /// Label names by id, overriding what the dataset says.
    pub labels: Option<Vec<String>>,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            splits: ["train".into(), "validation".into(), "test".into()],
            tokens_column: "tokens".into(),
            tags_column: "tags".into(),
            labels: None,
        }
    }
}

/// One pre-split sentence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentence {
    pub tokens: Vec<String>,
    pub tags: Vec<i64>,
}

/// One split of a dataset.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub sentences: Vec<Sentence>,
}

/// A validated dataset: three splits and the label names.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub labels: Vec<String>,
    pub train: Split,
    pub validation: Split,
    pub test: Split,
}

/// Class-imbalance figures of one split.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SplitStats {
    pub split: String,
    pub sentences: usize,
    pub tokens: usize,
    /// Per label: words carrying it and their share of all words (%).
    pub labels: BTreeMap<String, LabelCount>,
    /// Sentences with at least one non-`O` label.
    pub sentences_with_entity: usize,
}

/// Count and percentage of one label.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LabelCount {
    pub count: usize,
    pub percent: f64,
}

/// A record before validation, with where it came from.
#[derive(Debug)]
struct RawRecord {
    line: usize,
    value: Value,
}

impl Dataset {
    /// Reads and validates a dataset folder.
    pub fn load(dir: &Path, opts: &DatasetOptions) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::Invalid(format!(
                "dataset folder {} does not exist",
                dir.display()
            )));
        }
        let files = data_files(dir)?;
        let mut raw: Vec<(String, Vec<RawRecord>)> = Vec::new();
        for (role, name) in ["train", "validation", "test"].iter().zip(&opts.splits) {
            let candidates = split_aliases(role, name);
            let found: Vec<&PathBuf> = files
                .iter()
                .filter(|f| candidates.iter().any(|c| file_matches_split(dir, f, c)))
                .collect();
            if found.is_empty() {
                return Err(DataError::Invalid(format!(
                    "split {name:?} not found in {} (looked for {}.jsonl/.json/.parquet/.csv, data/{name}-*.parquet, {name}/*.parquet)",
                    dir.display(),
                    name
                )));
            }
            let mut records = Vec::new();
            for f in found {
                records.extend(read_records(f, name)?);
            }
            raw.push((name.clone(), records));
        }
        let labels = match &opts.labels {
            Some(l) => l.clone(),
            None => match labels_from_metadata(dir, &opts.tags_column)? {
                Some(l) => l,
                None => labels_from_string_tags(&raw, &opts.tags_column).ok_or_else(|| {
                    DataError::Invalid(format!(
                        "no label names for {}: add labels.json ({{\"id2label\": {{\"0\": \"O\", …}}}}), a ClassLabel feature, or dataset.labels in the job spec",
                        dir.display()
                    ))
                })?,
            },
        };
        validate_labels(&labels)?;
        let mut splits = raw
            .into_iter()
            .map(|(name, records)| parse_split(&name, records, opts, &labels))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let (train, validation, test) = (
            splits.next().expect("three splits: this is a bug"),
            splits.next().expect("three splits: this is a bug"),
            splits.next().expect("three splits: this is a bug"),
        );
        Ok(Dataset {
            labels,
            train,
            validation,
            test,
        })
    }

    /// The three splits in order.
    pub fn splits(&self) -> [&Split; 3] {
        [&self.train, &self.validation, &self.test]
    }

    /// Class-imbalance statistics per split.
    pub fn stats(&self) -> Vec<SplitStats> {
        self.splits()
            .iter()
            .map(|s| split_stats(s, &self.labels))
            .collect()
    }

    /// Warnings for labels under 10 % of the words of a split.
    pub fn imbalance_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.stats() {
            for (label, c) in &s.labels {
                if c.percent < 10.0 {
                    out.push(format!(
                        "{}: label {label} is {:.2}% of words ({} of {}): consider class_weights",
                        s.split, c.percent, c.count, s.tokens
                    ));
                }
            }
        }
        out
    }
}

/// Per-label counts of a split.
pub fn split_stats(split: &Split, labels: &[String]) -> SplitStats {
    let mut counts = vec![0usize; labels.len()];
    let mut with_entity = 0;
    let o = labels.iter().position(|l| l == "O");
    for s in &split.sentences {
        for t in &s.tags {
            counts[*t as usize] += 1;
        }
        if s.tags.iter().any(|t| Some(*t as usize) != o) {
            with_entity += 1;
        }
    }
    let tokens: usize = counts.iter().sum();
    let labels = labels
        .iter()
        .zip(counts)
        .map(|(l, count)| {
            let percent = if tokens == 0 {
                0.0
            } else {
                100.0 * count as f64 / tokens as f64
            };
            (l.clone(), LabelCount { count, percent })
        })
        .collect();
    SplitStats {
        split: split.name.clone(),
        sentences: split.sentences.len(),
        tokens,
        labels,
        sentences_with_entity: with_entity,
    }
}

fn split_aliases(role: &str, name: &str) -> Vec<String> {
    let mut v = vec![name.to_string()];
    if role == "validation" && name == "validation" {
        v.extend(["valid", "dev", "val"].map(String::from));
    }
    v
}

/// Candidate data files under `dir` (two folder levels deep), sorted.
fn data_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DataError::Io {
            path: d.clone(),
            source: e,
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::Io {
                path: d.clone(),
                source: e,
            })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() && depth < 3 {
                stack.push((path, depth + 1));
            } else if is_data_file(&name) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_data_file(name: &str) -> bool {
    [".jsonl", ".json", ".parquet", ".csv"]
        .iter()
        .any(|e| name.ends_with(e))
        && !matches!(
            name,
            "labels.json"
                | "dataset_info.json"
                | "dataset_infos.json"
                | "meta.json"
                | "stats.json"
                | "state.json"
        )
}

/// `train.jsonl`, `train-00000-of-00001.parquet`, `data/train.csv`, `train/0000.parquet`.
fn file_matches_split(root: &Path, file: &Path, split: &str) -> bool {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    if stem == split
        || stem.starts_with(&format!("{split}-"))
        || stem.starts_with(&format!("{split}_"))
    {
        return true;
    }
    file.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.parent())
        .is_some_and(|p| p.file_name().is_some_and(|n| n == split))
}

fn read_records(path: &Path, split: &str) -> Result<Vec<RawRecord>, DataError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let io = |e: std::io::Error| DataError::Io {
        path: path.into(),
        source: e,
    };
    if name.ends_with(".parquet") {
        let file = std::fs::File::open(path).map_err(io)?;
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
            .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
        let mut out = Vec::new();
        for (i, row) in reader.into_iter().enumerate() {
            let row = row.map_err(|e| DataError::Record {
                split: split.into(),
                line: i + 1,
                message: e.to_string(),
            })?;
            out.push(RawRecord {
                line: i + 1,
                value: row.to_json_value(),
            });
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    if name.ends_with(".csv") {
        return read_csv(&text, split);
    }
    // A .json file may be one JSON array or JSON lines.
    if name.ends_with(".json") && text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| DataError::Record {
            split: split.into(),
            line: e.line(),
            message: format!("invalid JSON: {e}"),
        })?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| RawRecord { line: i + 1, value })
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::Record {
            split: split.into(),
            line: i + 1,
            message: format!("invalid JSON: {e}"),
        })?;
        out.push(RawRecord { line: i + 1, value });
    }
    Ok(out)
}

/// The delimiter of a CSV file from its header line: the most frequent of `,`, `;` and tab
/// (comma on a tie): spreadsheets in Catalan and Spanish locales write `;`.
fn sniff_delimiter(text: &str) -> u8 {
    let header = text.lines().next().unwrap_or_default();
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| (header.bytes().filter(|c| c == d).count(), *d == b','))
        .unwrap_or(b',')
}

/// CSV with a header (RFC 4180 quoting, a leading BOM ignored, `,` `;` or tab delimited);
/// list cells as JSON (`["a", "b"]`) or Python reprs (`['a', 'b']`).
fn read_csv(text: &str, split: &str) -> Result<Vec<RawRecord>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(sniff_delimiter(text))
        .flexible(true)
        .from_reader(text.as_bytes());
    let bad = |line: usize, message: String| DataError::Record {
        split: split.into(),
        line,
        message,
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(1, format!("invalid CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            bad(line, format!("invalid CSV: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.len() == 1 && record[0].trim().is_empty() {
            continue;
        }
        if record.len() != header.len() {
            return Err(bad(
                line,
                format!("{} cells but the header has {}", record.len(), header.len()),
            ));
        }
        let obj: serde_json::Map<String, Value> = header
            .iter()
            .zip(record.iter())
            .map(|(h, c)| (h.clone(), parse_cell(c)))
            .collect();
        out.push(RawRecord {
            line,
            value: Value::Object(obj),
        });
    }
    Ok(out)
}

fn parse_cell(cell: &str) -> Value {
    let t = cell.trim();
    if t.starts_with('[') {
        if let Ok(v) = serde_json::from_str(t) {
            return v;
        }
        if let Some(v) = parse_python_list(t) {
            return v;
        }
    }
    Value::String(cell.to_string())
}

/// Parses a Python list repr of strings/ints (`['a', "b's", 1]`) as written by pandas.
fn parse_python_list(s: &str) -> Option<Value> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '\'' || c == '"' {
            chars.next();
            let mut item = String::new();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    q if q == c => break,
                    other => item.push(other),
                }
            }
            items.push(Value::String(item));
        } else {
            let num: String = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            items.push(Value::from(num.trim().parse::<i64>().ok()?));
        }
    }
    Some(Value::Array(items))
}

/// Label names from `labels.json`, `dataset_info.json`/`dataset_infos.json`, or the README card.
fn labels_from_metadata(dir: &Path, tags_column: &str) -> Result<Option<Vec<String>>, DataError> {
    let read = |p: PathBuf| -> Result<Value, DataError> {
        let text = std::fs::read_to_string(&p).map_err(|e| DataError::Io {
            path: p.clone(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| DataError::Invalid(format!("{}: {e}", p.display())))
    };
    let labels_json = dir.join("labels.json");
    if labels_json.is_file() {
        let v = read(labels_json.clone())?;
        return labels_from_value(v.get("id2label").unwrap_or(&v))
            .map(Some)
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "{}: expected {{\"id2label\": {{\"0\": \"O\", …}}}} or a list",
                    labels_json.display()
                ))
            });
    }
    for name in ["dataset_info.json", "dataset_infos.json"] {
        let p = dir.join(name);
        if p.is_file() {
            let v = read(p)?;
            if let Some(l) = find_class_label(&v, tags_column) {
                return Ok(Some(l));
            }
        }
    }
    let readme = dir.join("README.md");
    if readme.is_file() {
        let text = std::fs::read_to_string(&readme).map_err(|e| DataError::Io {
            path: readme.clone(),
            source: e,
        })?;
        return Ok(class_label_from_card(&text, tags_column));
    }
    Ok(None)
}

fn labels_from_value(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        Value::Object(o) => {
            let mut out = Vec::with_capacity(o.len());
            for i in 0..o.len() {
                out.push(o.get(&i.to_string())?.as_str()?.to_string());
            }
            Some(out)
        }
        _ => None,
    }
}

/// Finds `{"<column>": {"feature": {"names": [...]}}}` (datasets' Sequence(ClassLabel)).
fn find_class_label(v: &Value, column: &str) -> Option<Vec<String>> {
    match v {
        Value::Object(o) => {
            if let Some(col) = o.get(column) {
                let names = col
                    .pointer("/feature/names")
                    .or_else(|| col.pointer("/names"));
                if let Some(l) = names.and_then(labels_from_value) {
                    return Some(l);
                }
            }
            o.values().find_map(|c| find_class_label(c, column))
        }
        Value::Array(a) => a.iter().find_map(|c| find_class_label(c, column)),
        _ => None,
    }
}

/// Label names of a `class_label`: a mapping of ids to names (`'0': O`) or a list.
fn class_label_names(names: &Yaml) -> Option<Vec<String>> {
    let scalar = |y: &Yaml| match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    match names {
        Yaml::Array(items) => items.iter().map(scalar).collect(),
        Yaml::Hash(map) => {
            let mut by_id = BTreeMap::new();
            for (k, v) in map {
                let id: usize = scalar(k)?.trim().parse().ok()?;
                by_id.insert(id, scalar(v)?);
            }
            let n = by_id.len();
            by_id
                .keys()
                .copied()
                .eq(0..n)
                .then(|| by_id.into_values().collect())
        }
        _ => None,
    }
}

/// The feature named `column` anywhere under `node` that carries a `class_label` (directly or
/// under `sequence`), and its names.
fn find_card_class_label(node: &Yaml, column: &str) -> Option<Vec<String>> {
    match node {
        Yaml::Hash(map) => {
            if node["name"].as_str() == Some(column) {
                for holder in [node, &node["sequence"], &node["sequence"]["feature"]] {
                    if let Some(names) = class_label_names(&holder["class_label"]["names"]) {
                        return Some(names);
                    }
                }
            }
            map.values().find_map(|v| find_card_class_label(v, column))
        }
        Yaml::Array(items) => items.iter().find_map(|v| find_card_class_label(v, column)),
        _ => None,
    }
}

/// Reads the `class_label` names of `column` from a dataset card's YAML header (parsed with a
/// YAML parser: names as a mapping or a list, any quoting, one config or several):
/// ```yaml
/// dataset_info:
///   features:
///   - name: tags
///     sequence:
///       class_label:
///         names:
///           '0': O
///           '1': B-METAPHOR
/// ```
pub fn class_label_from_card(card: &str, column: &str) -> Option<Vec<String>> {
    let rest = card.trim_start_matches('\u{feff}').strip_prefix("---")?;
    let end = rest.find("\n---").unwrap_or(rest.len());
    let docs = YamlLoader::load_from_str(&rest[..end]).ok()?;
    docs.iter()
        .find_map(|d| find_card_class_label(&d["dataset_info"], column))
}

/// When tags are label names: the sorted names, `O` first.
fn labels_from_string_tags(
    raw: &[(String, Vec<RawRecord>)],
    tags_column: &str,
) -> Option<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for (_, records) in raw {
        for r in records {
            for t in r.value.get(tags_column)?.as_array()? {
                names.insert(t.as_str()?.to_string());
            }
        }
    }
    let mut out: Vec<String> = names.into_iter().collect();
    if let Some(i) = out.iter().position(|l| l == "O") {
        let o = out.remove(i);
        out.insert(0, o);
    }
    (!out.is_empty()).then_some(out)
}

fn validate_labels(labels: &[String]) -> Result<(), DataError> {
    if labels.len() < 2 {
        return Err(DataError::Invalid(format!(
            "need at least 2 labels, got {labels:?}"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in labels {
        if l.trim().is_empty() || !seen.insert(l) {
            return Err(DataError::Invalid(format!(
                "label names must be non-empty and unique, got {labels:?}"
            )));
        }
    }
    Ok(())
}

fn parse_split(
    name: &str,
    records: Vec<RawRecord>,
    opts: &DatasetOptions,
    labels: &[String],
) -> Result<Split, DataError> {
    let err = |line: usize, message: String| DataError::Record {
        split: name.into(),
        line,
        message,
    };
    let mut sentences = Vec::with_capacity(records.len());
    for r in records {
        let obj = r
            .value
            .as_object()
            .ok_or_else(|| err(r.line, "expected a JSON object".into()))?;
        let tokens = obj
            .get(&opts.tokens_column)
            .ok_or_else(|| err(r.line, format!("missing field {:?}", opts.tokens_column)))?
            .as_array()
            .ok_or_else(|| {
                err(
                    r.line,
                    format!("{:?} must be a list of strings", opts.tokens_column),
                )
            })?;
        let tags = obj
            .get(&opts.tags_column)
            .ok_or_else(|| err(r.line, format!("missing field {:?}", opts.tags_column)))?
            .as_array()
            .ok_or_else(|| {
                err(
                    r.line,
                    format!(
                        "{:?} must be a list of label ids or names",
                        opts.tags_column
                    ),
                )
            })?;
        if tokens.is_empty() {
            return Err(err(r.line, "empty sentence (no tokens)".into()));
        }
        if tokens.len() != tags.len() {
            return Err(err(
                r.line,
                format!("{} tokens but {} tags", tokens.len(), tags.len()),
            ));
        }
        let tokens: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                Some(_) => Err(err(r.line, format!("token {i} is empty"))),
                None => Err(err(r.line, format!("token {i} is not a string: {t}"))),
            })
            .collect::<Result<_, _>>()?;
        let tags: Vec<i64> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::Number(n) => match n.as_i64() {
                    Some(id) if id >= 0 && (id as usize) < labels.len() => Ok(id),
                    _ => Err(err(
                        r.line,
                        format!("tag {i} = {n} is out of range 0..{}", labels.len()),
                    )),
                },
                Value::String(s) => labels
                    .iter()
                    .position(|l| l == s)
                    .map(|p| p as i64)
                    .ok_or_else(|| {
                        err(
                            r.line,
                            format!("tag {i} = {s:?} is not a known label {labels:?}"),
                        )
                    }),
                other => Err(err(
                    r.line,
                    format!("tag {i} is not a label id or name: {other}"),
                )),
            })
            .collect::<Result<_, _>>()?;
        sentences.push(Sentence { tokens, tags });
    }
    if sentences.is_empty() {
        return Err(DataError::Invalid(format!(
            "split {name:?} has no sentences"
        )));
    }
    Ok(Split {
        name: name.into(),
        sentences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_list_repr() {
        assert_eq!(
            parse_python_list("['a', \"l'\", 'b\\'c', 1]"),
            Some(serde_json::json!(["a", "l'", "b'c", 1]))
        );
        assert_eq!(
            parse_python_list("['El', \"l'\", 'x']"),
            Some(serde_json::json!(["El", "l'", "x"]))
        );
        assert_eq!(
            parse_python_list("[0, 1, 0]"),
            Some(serde_json::json!([0, 1, 0]))
        );
    }

    #[test]
    fn csv_quotes_newlines_bom_and_delimiters() {
        let rows = read_csv(
            "\u{feff}tokens,tags\n\"['a', 'b,c']\",\"[0, 1]\"\n\"x\"\"y\",\"2\nz\"\n",
            "train",
        )
        .unwrap();
        assert_eq!(rows[0].value["tokens"], serde_json::json!(["a", "b,c"]));
        assert_eq!(rows[0].value["tags"], serde_json::json!([0, 1]));
        assert_eq!(rows[1].line, 3);
        assert_eq!(rows[1].value["tokens"], "x\"y");
        assert_eq!(rows[1].value["tags"], "2\nz");
        // A spreadsheet export with ';' and CRLF.
        let rows = read_csv("tokens;tags\r\n\"['El', 'cor']\";\"[0, 1]\"\r\n", "train").unwrap();
        assert_eq!(rows[0].value["tokens"], serde_json::json!(["El", "cor"]));
        let e = read_csv("tokens,tags\n\"['a']\"\n", "train").unwrap_err();
        assert_eq!(e.to_string(), "train line 2: 1 cells but the header has 2");
    }

    #[test]
    fn card_class_labels() {
        let card = "---\ndataset_info:\n  features:\n  - name: id\n    dtype: string\n  - name: tags\n    sequence:\n      class_label:\n        names:\n          '0': O\n          '1': B-METAPHOR\n  splits:\n  - name: train\n---\n# card";
        assert_eq!(
            class_label_from_card(card, "tags"),
            Some(vec!["O".into(), "B-METAPHOR".into()])
        );
        assert_eq!(class_label_from_card(card, "ner_tags"), None);
        // The list form (which the line reader lost), double quotes, several configs.
        let card = "---\nlicense: apache-2.0\ndataset_info:\n- config_name: default\n  features:\n  - name: \"tags\"\n    sequence:\n      class_label:\n        names:\n        - O\n        - B-METAPHOR\n---\n";
        assert_eq!(
            class_label_from_card(card, "tags"),
            Some(vec!["O".into(), "B-METAPHOR".into()])
        );
        assert_eq!(class_label_from_card("---\n: : bad\n---", "tags"), None);
    }
}
