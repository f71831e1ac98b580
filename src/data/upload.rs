//! Uploaded datasets: JSONL (`tokens` + `tags` as ids or label names) or CoNLL (word TAB
//! label, blank line between sentences), one file split by ratio or one file per split.
//! Errors name the file, the 1-based line and the problem.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use super::DataError;

/// Upload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Conll,
}

impl Format {
    /// From a name (`jsonl`, `conll`) or a file name's extension.
    pub fn guess(name: &str) -> Option<Format> {
        let n = name.to_ascii_lowercase();
        if n == "jsonl" || n == "json" || n.ends_with(".jsonl") || n.ends_with(".json") {
            Some(Format::Jsonl)
        } else if n == "conll"
            || n.ends_with(".conll")
            || n.ends_with(".tsv")
            || n.ends_with(".txt")
            || n.ends_with(".iob")
        {
            Some(Format::Conll)
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Conll => "conll",
        }
    }
}

/// A tag as written in the upload.
#[derive(Debug, Clone, PartialEq)]
pub enum Tag {
    Id(i64),
    Name(String),
}

/// A sentence of an uploaded file, with its first line.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSentence {
    pub line: usize,
    pub tokens: Vec<String>,
    pub tags: Vec<Tag>,
}

fn rec(file: &str, line: usize, message: impl Into<String>) -> DataError {
    DataError::Record {
        split: file.into(),
        line,
        message: message.into(),
    }
}

/// Parses an uploaded file.
pub fn parse(text: &str, format: Format, file: &str) -> Result<Vec<RawSentence>, DataError> {
    let out = match format {
        Format::Jsonl => parse_jsonl(text, file)?,
        Format::Conll => parse_conll(text, file)?,
    };
    if out.is_empty() {
        return Err(rec(file, 1, "no sentences"));
    }
    Ok(out)
}

fn parse_jsonl(text: &str, file: &str) -> Result<Vec<RawSentence>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| rec(file, n, format!("invalid JSON: {e}")))?;
        let tokens = v
            .get("tokens")
            .and_then(|t| t.as_array())
            .ok_or_else(|| rec(file, n, "missing \"tokens\" list"))?;
        let tags = v
            .get("tags")
            .and_then(|t| t.as_array())
            .ok_or_else(|| rec(file, n, "missing \"tags\" list"))?;
        if tokens.is_empty() {
            return Err(rec(file, n, "empty sentence (no tokens)"));
        }
        if tokens.len() != tags.len() {
            return Err(rec(
                file,
                n,
                format!("{} tokens but {} tags", tokens.len(), tags.len()),
            ));
        }
        let tokens = tokens
            .iter()
            .enumerate()
            .map(|(k, t)| match t.as_str() {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                _ => Err(rec(file, n, format!("token {k} is not a non-empty string"))),
            })
            .collect::<Result<_, _>>()?;
        let tags = tags
            .iter()
            .enumerate()
            .map(|(k, t)| match t {
                Value::Number(x) => x
                    .as_i64()
                    .filter(|x| *x >= 0)
                    .map(Tag::Id)
                    .ok_or_else(|| rec(file, n, format!("tag {k} = {x} is not a label id"))),
                Value::String(s) if !s.is_empty() => Ok(Tag::Name(s.clone())),
                other => Err(rec(
                    file,
                    n,
                    format!("tag {k} is not a label id or name: {other}"),
                )),
            })
            .collect::<Result<_, _>>()?;
        out.push(RawSentence {
            line: n,
            tokens,
            tags,
        });
    }
    Ok(out)
}

fn parse_conll(text: &str, file: &str) -> Result<Vec<RawSentence>, DataError> {
    let mut out = Vec::new();
    let mut cur = RawSentence {
        line: 1,
        tokens: vec![],
        tags: vec![],
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim_end_matches('\r');
        if t.trim().is_empty() || t.starts_with("-DOCSTART-") {
            if !cur.tokens.is_empty() {
                out.push(std::mem::replace(
                    &mut cur,
                    RawSentence {
                        line: n + 1,
                        tokens: vec![],
                        tags: vec![],
                    },
                ));
            } else {
                cur.line = n + 1;
            }
            continue;
        }
        let cols: Vec<&str> = if t.contains('\t') {
            t.split('\t').collect()
        } else {
            t.split_whitespace().collect()
        };
        if cols.len() < 2 || cols[0].trim().is_empty() || cols[cols.len() - 1].trim().is_empty() {
            return Err(rec(
                file,
                n,
                format!("expected \"word<TAB>label\", got {t:?}"),
            ));
        }
        if cur.tokens.is_empty() {
            cur.line = n;
        }
        cur.tokens.push(cols[0].trim().to_string());
        cur.tags
            .push(Tag::Name(cols[cols.len() - 1].trim().to_string()));
    }
    if !cur.tokens.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Label names for the sentences: `given`, else the names used (`O` first, then sorted).
pub fn labels_for(
    files: &[(&str, &[RawSentence])],
    given: Option<&[String]>,
) -> Result<Vec<String>, DataError> {
    if let Some(g) = given {
        return Ok(g.to_vec());
    }
    let mut names = std::collections::BTreeSet::new();
    for (file, sents) in files {
        for s in *sents {
            for t in &s.tags {
                match t {
                    Tag::Name(n) => {
                        names.insert(n.clone());
                    }
                    Tag::Id(_) => {
                        return Err(rec(
                            file,
                            s.line,
                            "tags are label ids: give the label names (labels)",
                        ));
                    }
                }
            }
        }
    }
    let mut out: Vec<String> = names.into_iter().collect();
    if let Some(i) = out.iter().position(|l| l == "O") {
        let o = out.remove(i);
        out.insert(0, o);
    }
    Ok(out)
}

/// Sentences as (words, label ids).
pub type Rows = Vec<(Vec<String>, Vec<i64>)>;

/// Converts tags to ids against `labels`, naming the file and line of a bad tag.
pub fn to_ids(file: &str, sents: &[RawSentence], labels: &[String]) -> Result<Rows, DataError> {
    sents
        .iter()
        .map(|s| {
            let ids = s
                .tags
                .iter()
                .map(|t| match t {
                    Tag::Id(i) if (*i as usize) < labels.len() => Ok(*i),
                    Tag::Id(i) => Err(rec(
                        file,
                        s.line,
                        format!("tag id {i} is out of range 0..{}", labels.len()),
                    )),
                    Tag::Name(n) => labels
                        .iter()
                        .position(|l| l == n)
                        .map(|p| p as i64)
                        .ok_or_else(|| {
                            rec(
                                file,
                                s.line,
                                format!("unknown label {n:?} (labels: {labels:?})"),
                            )
                        }),
                })
                .collect::<Result<_, _>>()?;
            Ok((s.tokens.clone(), ids))
        })
        .collect()
}

/// Splits sentences by `ratios` (train, validation, test) after a seeded shuffle; every split
/// gets at least one sentence.
pub fn split<T: Clone>(items: &[T], ratios: [f64; 3], seed: u64) -> Result<[Vec<T>; 3], DataError> {
    if items.len() < 3 {
        return Err(DataError::Invalid(format!(
            "need at least 3 sentences to split, got {}",
            items.len()
        )));
    }
    let total: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| !r.is_finite() || *r <= 0.0) || (total - 1.0).abs() > 1e-6 {
        return Err(DataError::Invalid(format!(
            "split ratios must be > 0 and sum to 1, got {ratios:?}"
        )));
    }
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let n = items.len();
    let n_val = ((ratios[1] * n as f64).round() as usize).max(1);
    let n_test = ((ratios[2] * n as f64).round() as usize).max(1);
    let n_train = n.saturating_sub(n_val + n_test).max(1);
    let pick =
        |r: std::ops::Range<usize>| idx[r].iter().map(|i| items[*i].clone()).collect::<Vec<_>>();
    Ok([
        pick(0..n_train),
        pick(n_train..n_train + n_val),
        pick(n_train + n_val..n),
    ])
}

/// Writes `<dir>/{train,validation,test}.jsonl` and `labels.json`.
pub fn write_dataset(
    dir: &Path,
    labels: &[String],
    splits: [&[(Vec<String>, Vec<i64>)]; 3],
) -> Result<(), DataError> {
    let io = |p: &Path, e: std::io::Error| DataError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, rows) in ["train", "validation", "test"].iter().zip(splits) {
        let p = dir.join(format!("{name}.jsonl"));
        let text: String = rows
            .iter()
            .map(|(t, g)| format!("{}\n", serde_json::json!({"tokens": t, "tags": g})))
            .collect();
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    let p = dir.join("labels.json");
    let id2label: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), Value::from(l.clone())))
        .collect();
    let label2id: serde_json::Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), Value::from(i)))
        .collect();
    std::fs::write(
        &p,
        serde_json::to_string_pretty(
            &serde_json::json!({"id2label": id2label, "label2id": label2id}),
        )
        .expect("JSON: this is a bug"),
    )
    .map_err(|e| io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conll_sentences_and_errors() {
        let s = parse(
            "El\tO\ncor\tB-METAPHOR\n\nLa\tO\n",
            Format::Conll,
            "f.conll",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].line, 4);
        let e = parse("El\tO\ncor\n", Format::Conll, "f.conll")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "f.conll line 2: expected \"word<TAB>label\", got \"cor\""
        );
    }

    #[test]
    fn jsonl_length_mismatch_names_line() {
        let e = parse(
            "{\"tokens\":[\"a\"],\"tags\":[0]}\n{\"tokens\":[\"a\",\"b\"],\"tags\":[0]}\n",
            Format::Jsonl,
            "train.jsonl",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "train.jsonl line 2: 2 tokens but 1 tags");
    }

    #[test]
    fn split_is_seeded_and_complete() {
        let items: Vec<usize> = (0..100).collect();
        let [a, b, c] = split(&items, [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (80, 10, 10));
        let [a2, _, _] = split(&items, [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!(a, a2);
        let mut all: Vec<usize> = a.into_iter().chain(b).chain(c).collect();
        all.sort();
        assert_eq!(all, items);
    }
}
