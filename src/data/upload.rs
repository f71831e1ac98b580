//! Uploaded datasets: JSONL (`tokens` + `tags` as ids or label names) or CoNLL (word TAB
//! label, blank line between sentences), one file split by ratio or one file per split.
//! Errors name the file, the 1-based line and the problem.
//!
//! Streaming: files are read from disk twice, a sentence at a time — once to check them and
//! collect the label names, once to write the dataset with label ids and count its
//! statistics — so an import holds one sentence and the sentences' file positions in memory,
//! not the upload.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use super::DataError;
use super::dataset::{LabelCount, SplitStats};

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

/// Longest line accepted (a sentence per line in JSONL).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most words in one sentence.
pub const MAX_WORDS: usize = 10_000;

fn rec(file: &str, line: usize, message: impl Into<String>) -> DataError {
    DataError::Record {
        split: file.into(),
        line,
        message: message.into(),
    }
}

fn io(path: &Path, e: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn parse_jsonl_line(line: &str, file: &str, n: usize) -> Result<RawSentence, DataError> {
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
    Ok(RawSentence {
        line: n,
        tokens,
        tags,
    })
}

/// Sentences of one file, read a line at a time, with each sentence's byte span.
pub struct Sentences<R: BufRead> {
    reader: R,
    format: Format,
    file: String,
    /// Lines read so far.
    line: usize,
    /// Bytes read so far.
    offset: u64,
    buf: Vec<u8>,
    done: bool,
}

/// Where a sentence sits in its file: byte offset and length, first line.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
    pub line: usize,
}

impl<R: BufRead> Sentences<R> {
    pub fn new(reader: R, format: Format, file: &str) -> Self {
        Sentences {
            reader,
            format,
            file: file.into(),
            line: 0,
            offset: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Starts counting lines at `line + 1` and bytes at `offset` (reading a span again).
    fn at(mut self, line: usize, offset: u64) -> Self {
        self.line = line.saturating_sub(1);
        self.offset = offset;
        self
    }

    /// The next line without its line end, or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<String>, DataError> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| rec(&self.file, self.line + 1, format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        self.offset += n as u64;
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(rec(
                &self.file,
                self.line,
                format!("line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
            self.buf.pop();
        }
        String::from_utf8(std::mem::take(&mut self.buf))
            .map(Some)
            .map_err(|_| rec(&self.file, self.line, "is not UTF-8 text"))
    }

    fn next_sentence(&mut self) -> Result<Option<(RawSentence, Span)>, DataError> {
        let mut cur: Option<(RawSentence, u64)> = None;
        loop {
            let start = self.offset;
            let Some(line) = self.next_line()? else {
                return Ok(cur.map(|(s, o)| {
                    let span = Span {
                        offset: o,
                        len: self.offset - o,
                        line: s.line,
                    };
                    (s, span)
                }));
            };
            let n = self.line;
            match self.format {
                Format::Jsonl => {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let s = parse_jsonl_line(&line, &self.file, n)?;
                    if s.tokens.len() > MAX_WORDS {
                        return Err(rec(&self.file, n, format!("more than {MAX_WORDS} words")));
                    }
                    let span = Span {
                        offset: start,
                        len: self.offset - start,
                        line: n,
                    };
                    return Ok(Some((s, span)));
                }
                Format::Conll => {
                    let t = line.as_str();
                    if t.trim().is_empty() || t.starts_with("-DOCSTART-") {
                        match cur.take() {
                            Some((s, o)) => {
                                let span = Span {
                                    offset: o,
                                    len: self.offset - o,
                                    line: s.line,
                                };
                                return Ok(Some((s, span)));
                            }
                            None => continue,
                        }
                    }
                    let cols: Vec<&str> = if t.contains('\t') {
                        t.split('\t').collect()
                    } else {
                        t.split_whitespace().collect()
                    };
                    if cols.len() < 2
                        || cols[0].trim().is_empty()
                        || cols[cols.len() - 1].trim().is_empty()
                    {
                        return Err(rec(
                            &self.file,
                            n,
                            format!("expected \"word<TAB>label\", got {t:?}"),
                        ));
                    }
                    let (s, _) = cur.get_or_insert_with(|| {
                        (
                            RawSentence {
                                line: n,
                                tokens: vec![],
                                tags: vec![],
                            },
                            start,
                        )
                    });
                    if s.tokens.len() >= MAX_WORDS {
                        return Err(rec(&self.file, n, format!("more than {MAX_WORDS} words")));
                    }
                    s.tokens.push(cols[0].trim().to_string());
                    s.tags
                        .push(Tag::Name(cols[cols.len() - 1].trim().to_string()));
                }
            }
        }
    }
}

impl<R: BufRead> Iterator for Sentences<R> {
    type Item = Result<(RawSentence, Span), DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_sentence().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

/// Parses a whole text (tests and small inputs).
pub fn parse(text: &str, format: Format, file: &str) -> Result<Vec<RawSentence>, DataError> {
    let out: Vec<RawSentence> = Sentences::new(text.as_bytes(), format, file)
        .map(|r| r.map(|(s, _)| s))
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err(rec(file, 1, "no sentences"));
    }
    Ok(out)
}

/// Sizes of the train, validation and test splits of `n` sentences for `ratios`: each split
/// gets at least one sentence and all of them are used. Ratios must be finite, positive and
/// sum to 1.
pub fn split_counts(n: usize, ratios: [f64; 3]) -> Result<[usize; 3], DataError> {
    if n < 3 {
        return Err(DataError::Invalid(format!(
            "needs at least 3 sentences, got {n}"
        )));
    }
    let total: f64 = ratios.iter().sum();
    if ratios.iter().any(|r| !r.is_finite() || *r <= 0.0) || (total - 1.0).abs() > 1e-6 {
        return Err(DataError::Invalid(format!(
            "ratios must be > 0 and sum to 1, got {ratios:?}"
        )));
    }
    let want = |r: f64| (r * n as f64).round() as usize;
    let n_val = want(ratios[1]).clamp(1, n - 2);
    let n_test = want(ratios[2]).clamp(1, n - 1 - n_val);
    Ok([n - n_val - n_test, n_val, n_test])
}

/// Which split each of `n` sentences goes to, in the order it is written: a seeded shuffle,
/// then the first `counts[0]` to train, the next to validation, the rest to test.
pub fn split_order(n: usize, ratios: [f64; 3], seed: u64) -> Result<[Vec<usize>; 3], DataError> {
    let [a, b, _] = split_counts(n, ratios)?;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let test = idx.split_off(a + b);
    let validation = idx.split_off(a);
    Ok([idx, validation, test])
}

/// One file of an upload: its name in errors and where it is on disk.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
}

/// How an upload is read.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: Format,
    /// Label names by id (needed when tags are ids).
    pub labels: Option<Vec<String>>,
    /// Train/validation/test ratios, for a single file.
    pub split: [f64; 3],
    pub seed: u64,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub labels: Vec<String>,
    pub stats: Vec<SplitStats>,
}

fn open(path: &Path) -> Result<BufReader<File>, DataError> {
    Ok(BufReader::new(File::open(path).map_err(|e| io(path, e))?))
}

/// Label names: `given`, else the names used (`O` first, then sorted). Checks every file.
fn scan(
    sources: &[Source],
    opts: &ImportOptions,
) -> Result<(Vec<String>, Vec<Vec<Span>>), DataError> {
    let mut names = std::collections::BTreeSet::new();
    let mut spans = Vec::with_capacity(sources.len());
    for src in sources {
        let mut file_spans = Vec::new();
        for r in Sentences::new(open(&src.path)?, opts.format, &src.name) {
            let (s, span) = r?;
            if opts.labels.is_none() {
                for t in &s.tags {
                    match t {
                        Tag::Name(n) => {
                            names.insert(n.clone());
                        }
                        Tag::Id(_) => {
                            return Err(rec(
                                &src.name,
                                s.line,
                                "tags are label ids: give the label names (labels)",
                            ));
                        }
                    }
                }
            }
            file_spans.push(span);
        }
        if file_spans.is_empty() {
            return Err(rec(&src.name, 1, "no sentences"));
        }
        spans.push(file_spans);
    }
    let labels = match &opts.labels {
        Some(g) => g.clone(),
        None => {
            let mut out: Vec<String> = names.into_iter().collect();
            if let Some(i) = out.iter().position(|l| l == "O") {
                let o = out.remove(i);
                out.insert(0, o);
            }
            out
        }
    };
    Ok((labels, spans))
}

/// Tag ids against `labels`, naming the file and line of a bad tag.
fn tag_ids(file: &str, s: &RawSentence, labels: &[String]) -> Result<Vec<i64>, DataError> {
    s.tags
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
        .collect()
}

/// A split being written: the JSONL file and its statistics.
struct SplitWriter {
    name: &'static str,
    out: BufWriter<File>,
    path: PathBuf,
    sentences: usize,
    counts: Vec<usize>,
    with_entity: usize,
    o: Option<usize>,
}

impl SplitWriter {
    fn new(dir: &Path, name: &'static str, labels: &[String]) -> Result<Self, DataError> {
        let path = dir.join(format!("{name}.jsonl"));
        Ok(SplitWriter {
            name,
            out: BufWriter::new(File::create(&path).map_err(|e| io(&path, e))?),
            path,
            sentences: 0,
            counts: vec![0; labels.len()],
            with_entity: 0,
            o: labels.iter().position(|l| l == "O"),
        })
    }

    fn write(&mut self, tokens: &[String], ids: &[i64]) -> Result<(), DataError> {
        serde_json::to_writer(
            &mut self.out,
            &serde_json::json!({"tokens": tokens, "tags": ids}),
        )
        .map_err(|e| io(&self.path, e.into()))?;
        self.out.write_all(b"\n").map_err(|e| io(&self.path, e))?;
        self.sentences += 1;
        for t in ids {
            self.counts[*t as usize] += 1;
        }
        if ids.iter().any(|t| Some(*t as usize) != self.o) {
            self.with_entity += 1;
        }
        Ok(())
    }

    fn finish(mut self, labels: &[String]) -> Result<SplitStats, DataError> {
        self.out.flush().map_err(|e| io(&self.path, e))?;
        let tokens: usize = self.counts.iter().sum();
        Ok(SplitStats {
            split: self.name.into(),
            sentences: self.sentences,
            tokens,
            labels: labels
                .iter()
                .zip(&self.counts)
                .map(|(l, &count)| {
                    let percent = if tokens == 0 {
                        0.0
                    } else {
                        100.0 * count as f64 / tokens as f64
                    };
                    (l.clone(), LabelCount { count, percent })
                })
                .collect(),
            sentences_with_entity: self.with_entity,
        })
    }
}

/// Reads the sentence at `span` of `src` again.
fn read_span(
    file: &mut BufReader<File>,
    src: &Source,
    format: Format,
    span: Span,
) -> Result<RawSentence, DataError> {
    file.seek(SeekFrom::Start(span.offset))
        .map_err(|e| io(&src.path, e))?;
    let reader = file.by_ref().take(span.len);
    match Sentences::new(reader, format, &src.name)
        .at(span.line, span.offset)
        .next()
    {
        Some(r) => r.map(|(s, _)| s),
        None => Err(rec(&src.name, span.line, "sentence vanished while reading")),
    }
}

/// Writes the dataset of `sources` into `out` (`{train,validation,test}.jsonl` with label ids,
/// `labels.json`): one source is split by `opts.split` after a seeded shuffle, three are the
/// splits in order.
pub fn import(sources: &[Source], opts: &ImportOptions, out: &Path) -> Result<Imported, DataError> {
    if !(sources.len() == 1 || sources.len() == 3) {
        return Err(DataError::Invalid(format!(
            "needs one file (split by ratio) or train, validation and test, got {} files",
            sources.len()
        )));
    }
    let (labels, spans) = scan(sources, opts)?;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut writers = ["train", "validation", "test"]
        .iter()
        .map(|n| SplitWriter::new(out, n, &labels))
        .collect::<Result<Vec<_>, _>>()?;
    if sources.len() == 1 {
        let src = &sources[0];
        let order = split_order(spans[0].len(), opts.split, opts.seed)?;
        let mut file = open(&src.path)?;
        for (w, idx) in writers.iter_mut().zip(order) {
            for i in idx {
                let s = read_span(&mut file, src, opts.format, spans[0][i])?;
                w.write(&s.tokens, &tag_ids(&src.name, &s, &labels)?)?;
            }
        }
    } else {
        for (w, src) in writers.iter_mut().zip(sources) {
            for r in Sentences::new(open(&src.path)?, opts.format, &src.name) {
                let (s, _) = r?;
                w.write(&s.tokens, &tag_ids(&src.name, &s, &labels)?)?;
            }
        }
    }
    let stats = writers
        .into_iter()
        .map(|w| w.finish(&labels))
        .collect::<Result<Vec<_>, _>>()?;
    write_labels(out, &labels)?;
    Ok(Imported { labels, stats })
}

/// `labels.json`: `{"id2label": {"0": …}, "label2id": {…: 0}}`.
fn write_labels(dir: &Path, labels: &[String]) -> Result<(), DataError> {
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
    use proptest::prelude::*;

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
        let [a, b, c] = split_order(100, [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (80, 10, 10));
        let [a2, _, _] = split_order(100, [0.8, 0.1, 0.1], 7).unwrap();
        assert_eq!(a, a2);
        let mut all: Vec<usize> = a.into_iter().chain(b).chain(c).collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn split_with_extreme_ratios_does_not_panic() {
        // The ratios that used to close the connection: 3 sentences, almost all "validation".
        assert_eq!(
            split_counts(3, [1e-9, 0.999999998, 1e-9]).unwrap(),
            [1, 1, 1]
        );
        assert!(split_counts(2, [0.8, 0.1, 0.1]).is_err());
        assert!(split_counts(10, [0.5, 0.5, 0.0]).is_err());
        assert!(split_counts(10, [f64::NAN, 0.5, 0.5]).is_err());
        assert!(split_counts(10, [0.5, 0.5, 0.5]).is_err());
    }

    proptest! {
        /// Every input gives an error or a split that uses each sentence once, with every
        /// split non-empty.
        #[test]
        fn split_is_a_partition(n in 0usize..2000, a in -1.0f64..2.0, b in -1.0f64..2.0, seed: u64) {
            let c = 1.0 - a - b;
            match split_order(n, [a, b, c], seed) {
                Ok(parts) => {
                    prop_assert!(parts.iter().all(|p| !p.is_empty()));
                    let mut all: Vec<usize> = parts.concat();
                    all.sort_unstable();
                    prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
                }
                Err(DataError::Invalid(_)) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// Ratios near the edges (tiny, nearly 1) on small sets.
        #[test]
        fn tiny_ratios(n in 3usize..12, e1 in 1e-12f64..1e-3, e2 in 1e-12f64..1e-3) {
            for r in [[e1, 1.0 - e1 - e2, e2], [1.0 - e1 - e2, e1, e2], [e1, e2, 1.0 - e1 - e2]] {
                let c = split_counts(n, r).unwrap();
                prop_assert_eq!(c.iter().sum::<usize>(), n);
                prop_assert!(c.iter().all(|x| *x >= 1));
            }
        }
    }

    #[test]
    fn import_streams_single_file_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.conll");
        let mut text = String::new();
        for i in 0..20 {
            text.push_str(&format!(
                "w{i}\tO\nx{i}\t{}\n\n",
                if i % 2 == 0 { "B-M" } else { "O" }
            ));
        }
        std::fs::write(&src, &text).unwrap();
        let opts = ImportOptions {
            format: Format::Conll,
            labels: None,
            split: [0.8, 0.1, 0.1],
            seed: 3,
        };
        let out = dir.path().join("ds");
        let got = import(
            &[Source {
                name: "in.conll".into(),
                path: src,
            }],
            &opts,
            &out,
        )
        .unwrap();
        assert_eq!(got.labels, vec!["O", "B-M"]);
        let sizes: Vec<usize> = got.stats.iter().map(|s| s.sentences).collect();
        assert_eq!(sizes, vec![16, 2, 2]);
        let entities: usize = got.stats.iter().map(|s| s.sentences_with_entity).sum();
        assert_eq!(entities, 10);
        // Every sentence written once, with its own words and ids.
        let mut words = Vec::new();
        for split in ["train", "validation", "test"] {
            for line in std::fs::read_to_string(out.join(format!("{split}.jsonl")))
                .unwrap()
                .lines()
            {
                let v: Value = serde_json::from_str(line).unwrap();
                let w0 = v["tokens"][0].as_str().unwrap().to_string();
                let i: usize = w0[1..].parse().unwrap();
                assert_eq!(v["tags"][1], if i.is_multiple_of(2) { 1 } else { 0 });
                words.push(i);
            }
        }
        words.sort();
        assert_eq!(words, (0..20).collect::<Vec<_>>());
    }
}
