//! Detection: a loaded model behind its executor thread ([`executor`]), fed by a bounded queue
//! with dynamic batching; aggregation as the HF pipeline; sentences and sliding windows for
//! long texts.
//!
//! The handle ([`Detector`]) does the CPU work around the model — tokenising, cutting long
//! texts, aggregating — on the caller's blocking thread, in time linear in the text's length,
//! and sends token sequences to the executor. Every entry point (`/v1/detect`, Label Studio,
//! the CLI) goes through [`Input::check`]'s limits. Must not import axum or sqlx.

pub mod aggregate;
pub mod cpu;
pub mod engine;
pub mod executor;
pub mod registry;
pub mod segment;
pub mod window;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use crate::data::{Encoded, Tokenizer};
use crate::model::LoadError;
use crate::model::backend::Resolved;

use aggregate::{Entity, Strategy, TokenScores, aggregate};
use executor::{Batching, Cmd, Health, Probs};

pub use cpu::packed::Precision;
pub use registry::Registry;

/// Longest text accepted (code points); longer texts are windowed, this only bounds work.
pub const MAX_TEXT_CHARS: usize = 200_000;
/// Most texts in one request (a Label Studio `/predict` call included).
pub const MAX_TEXTS: usize = 256;
/// Most pre-split words in one request.
pub const MAX_WORDS: usize = 20_000;
/// Most code points in one request, all texts together.
pub const MAX_TOTAL_CHARS: usize = 1_000_000;
/// Inputs up to this many code points are tokenised and aggregated on the calling task (tens
/// of microseconds: a hop to the blocking pool would cost more); longer ones on the blocking
/// pool, so the async runtime never waits on them.
const INLINE_CHARS: usize = 4096;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Requests waiting or running per model; beyond it `detect` fails with `Busy`.
    pub queue: usize,
    /// Most tokens in one forward batch.
    pub batch_tokens: usize,
    /// Longest wait for more requests before a batch runs.
    pub batch_wait: Duration,
    /// Tokens shared by consecutive windows of a long text.
    pub stride: usize,
    /// Window size in tokens (special tokens included); `None`: the model's maximum.
    pub window: Option<usize>,
    /// Number format of the dense layers of models deployed without one (`--detect-precision`).
    pub precision: Precision,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            queue: 256,
            batch_tokens: 8192,
            batch_wait: Duration::ZERO,
            stride: 128,
            window: None,
            precision: Precision::F32,
        }
    }
}

/// How a text longer than the window is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongText {
    /// Sentence by sentence (each sentence its own sequence; a sentence longer than the window
    /// gets overlapping windows). Matches sentence-by-sentence detection exactly.
    #[default]
    Sentences,
    /// Overlapping token windows over the whole text; each token scored by the window where it
    /// is most central.
    Windows,
}

impl std::str::FromStr for LongText {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sentences" => Ok(LongText::Sentences),
            "windows" => Ok(LongText::Windows),
            _ => Err(format!("must be sentences or windows, got {s:?}")),
        }
    }
}

/// How entities are formed and filtered.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectOptions {
    /// `None`: the model's default ([`ModelInfo::aggregation_strategy`]).
    pub strategy: Option<Strategy>,
    /// Entities scored below it are dropped.
    pub threshold: Option<f64>,
    pub long_text: LongText,
    /// Also report each input's uncertainty (see [`TextResult::uncertainty`]).
    pub uncertainty: bool,
    /// `None`: the model's ([`ModelInfo::words`]).
    pub words: Option<WordMode>,
}

/// What to analyse.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    /// Pre-split words; entity offsets are word indices.
    Tokens(Vec<String>),
}

impl Input {
    /// The limits every entry point applies; the error names the field.
    pub fn check(&self) -> Result<(), DetectError> {
        let invalid = |field: String, message: String| DetectError::Invalid { field, message };
        let text = |field: String, t: &str| {
            let n = t.chars().count();
            if n > MAX_TEXT_CHARS {
                return Err(invalid(
                    field,
                    format!("is {n} characters; the limit is {MAX_TEXT_CHARS}"),
                ));
            }
            Ok(n)
        };
        match self {
            Input::Text(t) => text("text".into(), t).map(|_| ()),
            Input::Texts(ts) => {
                if ts.is_empty() || ts.len() > MAX_TEXTS {
                    return Err(invalid(
                        "texts".into(),
                        format!("needs 1 to {MAX_TEXTS} texts, got {}", ts.len()),
                    ));
                }
                let mut total = 0;
                for (i, t) in ts.iter().enumerate() {
                    total += text(format!("texts[{i}]"), t)?;
                }
                if total > MAX_TOTAL_CHARS {
                    return Err(invalid(
                        "texts".into(),
                        format!("hold {total} characters in all; the limit is {MAX_TOTAL_CHARS}"),
                    ));
                }
                Ok(())
            }
            Input::Tokens(words) => {
                if words.is_empty() || words.len() > MAX_WORDS {
                    return Err(invalid(
                        "tokens".into(),
                        format!("needs 1 to {MAX_WORDS} words, got {}", words.len()),
                    ));
                }
                if let Some(i) = words.iter().position(|w| w.trim().is_empty()) {
                    return Err(invalid(format!("tokens[{i}]"), "must not be empty".into()));
                }
                let total: usize = words.iter().map(|w| w.chars().count()).sum();
                if total > MAX_TEXT_CHARS {
                    return Err(invalid(
                        "tokens".into(),
                        format!("hold {total} characters; the limit is {MAX_TEXT_CHARS}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Code points (bytes as an upper bound) of the whole input.
    fn size(&self) -> usize {
        match self {
            Input::Text(t) => t.len(),
            Input::Texts(ts) => ts.iter().map(String::len).sum(),
            Input::Tokens(w) => w.iter().map(String::len).sum(),
        }
    }

    fn items(&self) -> Vec<Item<'_>> {
        match self {
            Input::Text(t) => vec![Item::Text(t)],
            Input::Texts(ts) => ts.iter().map(|t| Item::Text(t)).collect(),
            Input::Tokens(w) => vec![Item::Words(w)],
        }
    }
}

/// Why detection failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("too many requests waiting for model {0}")]
    Busy(String),
    #[error("model {0} stopped")]
    Stopped(String),
    #[error("model {model} failed on this request and was restarted: {message}")]
    Failed { model: String, message: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{field} {message}")]
    Invalid { field: String, message: String },
}

/// Description of a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    /// Content fingerprint of config + weights (changes when a model is replaced), with
    /// `-bf16` / `-int8` appended when the model runs in reduced precision.
    pub version: String,
    /// Number format of the dense layers.
    pub precision: Precision,
    pub labels: Vec<String>,
    pub device: String,
    /// Window of the model, special tokens included.
    pub max_tokens: usize,
    /// Job that produced it, when deployed from a job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// What sub-tokens are grouped into for word-level aggregation.
    pub words: WordMode,
    /// Aggregation when a request names none: `first` for models trained here (labels on each
    /// word's first sub-token), the pipeline's `simple` for other checkpoints.
    pub aggregation_strategy: Strategy,
    /// Reduced precision only: the model against itself in f32 on its job's validation split
    /// (`None` when there is no such split, or for f32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<PrecisionComparison>,
}

/// How a model in reduced precision scores against itself in f32 on one split (the quality
/// guard of reduced-precision deployments; `metafora eval --precision` prints the same).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PrecisionComparison {
    pub precision: Precision,
    /// Split name (`validation` for a deployment's guard).
    pub split: String,
    pub sentences: usize,
    /// Word-level micro F1 (seqeval) in f32 and in `precision`.
    pub f1_f32: f64,
    pub f1: f64,
    /// `f1 − f1_f32`.
    pub f1_delta: f64,
    /// Words whose predicted label differs between the two.
    pub words_changed: usize,
    pub words: usize,
    pub seconds: f64,
}

/// Words that `first`/`average`/`max` aggregate over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordMode {
    /// The tokenizer's pre-tokenizer words (byte-level BPE splits `l'home` into `l`, `'`,
    /// `home`), as transformers' pipeline.
    Tokenizer,
    /// Whitespace-separated chunks with their punctuation, the words of the training data of
    /// models fine-tuned here (recorded in their `config.json` under `metafora`).
    Whitespace,
}

/// The `metafora` entry of a `config.json` written by this service's training.
fn trained_here(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("metafora")
                .and_then(|m| m.get("labels_on"))
                .and_then(|l| l.as_str())
                .map(|l| l == "first_sub_token")
        })
        .unwrap_or(false)
}

/// Entities of one input.
#[derive(Debug, Clone, Serialize)]
pub struct TextResult {
    pub entities: Vec<Entity>,
    /// 1 − the lowest word confidence of the input (the winning probability of each word
    /// under the aggregation used, `O` words included): 0 when the model is sure of every
    /// word, up to 1 − 1/labels when it hesitates on one. Only when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<f32>,
    /// Sequences the input needed (1 unless it exceeded the model's window).
    pub windows: usize,
}

/// A detection answer.
#[derive(Debug, Clone, Serialize)]
pub struct DetectOutput {
    pub model: String,
    pub model_version: String,
    pub results: Vec<TextResult>,
}

/// A model's state for `/health`.
#[derive(Debug, Clone)]
pub struct ModelHealth {
    /// `ok` or `degraded`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub restarts: u64,
}

/// A loaded model behind its executor thread.
pub struct Detector {
    pub info: ModelInfo,
    tokenizer: Tokenizer,
    tx: mpsc::Sender<Cmd>,
    permits: Arc<Semaphore>,
    opts: DetectorOptions,
    health: Arc<Mutex<Health>>,
}

/// Content hash of `config.json` and the weight files (SHA-256, first 12 hex digits):
/// the same bytes give the same version on any machine, whatever the files' times.
pub fn fingerprint(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::fs::read(dir.join("config.json")).unwrap_or_default());
    for f in crate::model::weights::WEIGHT_FILES {
        let Ok(file) = std::fs::File::open(dir.join(f)) else {
            continue;
        };
        h.update(f.as_bytes());
        if let Err(e) = std::io::copy(&mut std::io::BufReader::new(file), &mut h) {
            // The model loads from the same file: it fails there with the reason.
            tracing::warn!(file = %dir.join(f).display(), error = %e, "could not hash a weight file");
        }
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A model's version string: its content hash, with the precision appended when reduced
/// (`c28080c9c0f8-int8`), so that predictions say what produced them.
pub fn versioned(hash: &str, precision: Precision) -> String {
    if precision.reduced() {
        format!("{hash}-{precision}")
    } else {
        hash.to_string()
    }
}

/// One text or word list of an input.
#[derive(Clone, Copy)]
enum Item<'a> {
    Text(&'a str),
    Words(&'a [String]),
}

/// A part of an input run as one or more sequences.
struct Piece {
    enc: Encoded,
    /// Code-point offset of the piece in the text.
    char_offset: usize,
    windows: Vec<std::ops::Range<usize>>,
    owner: Vec<usize>,
    seqs: Vec<Vec<u32>>,
}

/// An input cut into sequences, ready for the executor.
pub struct Prepared {
    pieces: Vec<Vec<Piece>>,
}

impl Prepared {
    fn sequences(&self) -> Vec<Vec<u32>> {
        self.pieces
            .iter()
            .flatten()
            .flat_map(|p| p.seqs.iter().cloned())
            .collect()
    }
}

impl Detector {
    /// Loads an HF model directory onto `device` and starts its executor thread.
    pub fn load(
        name: &str,
        dir: &Path,
        device: Resolved,
        opts: DetectorOptions,
    ) -> Result<Self, DetectError> {
        engine::check_precision(device, opts.precision).map_err(|e| DetectError::Invalid {
            field: "precision".into(),
            message: e.to_string(),
        })?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let health = Arc::new(Mutex::new(Health::default()));
        let batching = Batching {
            budget: opts.batch_tokens,
            wait: opts.batch_wait,
        };
        let (tx, loaded) =
            executor::spawn(name, dir, device, batching, opts.precision, health.clone())?;
        let invalid = |message: String| DetectError::Invalid {
            field: "model".into(),
            message,
        };
        if loaded.labels.is_empty() {
            return Err(invalid(format!(
                "{}: config.json has no id2label",
                dir.display()
            )));
        }
        // A tokenizer with ids beyond the embedding table would index past it.
        if tokenizer.vocab_size() > loaded.vocab_size {
            return Err(invalid(format!(
                "the tokenizer has {} tokens but the model's embedding table {} rows",
                tokenizer.vocab_size(),
                loaded.vocab_size
            )));
        }
        let here = trained_here(dir);
        let max_tokens = loaded
            .max_tokens
            .min(tokenizer.model_max_length.unwrap_or(usize::MAX));
        let info = ModelInfo {
            name: name.into(),
            path: dir.to_path_buf(),
            version: versioned(&fingerprint(dir), opts.precision),
            precision: opts.precision,
            labels: loaded.labels,
            device: device.to_string(),
            max_tokens,
            job_id: None,
            words: if here {
                WordMode::Whitespace
            } else {
                WordMode::Tokenizer
            },
            aggregation_strategy: if here {
                Strategy::First
            } else {
                Strategy::Simple
            },
            quality: None,
        };
        Ok(Detector {
            info,
            tokenizer,
            tx,
            permits: Arc::new(Semaphore::new(opts.queue.max(1))),
            opts,
            health,
        })
    }

    /// Window size (content tokens + 2 special tokens).
    fn window(&self) -> usize {
        self.opts
            .window
            .map(|w| w.min(self.info.max_tokens))
            .unwrap_or(self.info.max_tokens)
            .max(3)
    }

    /// Encodes one piece of input with its windows.
    fn piece(&self, enc: Encoded, char_offset: usize) -> Piece {
        // Content tokens sit between <s> and </s>.
        let n = enc.len().saturating_sub(2);
        let size = self.window() - 2;
        let (windows, owner) = window::plan(n, size, self.opts.stride.min(size / 2));
        let seqs = windows
            .iter()
            .map(|r| {
                let mut s = Vec::with_capacity(r.len() + 2);
                s.push(self.tokenizer.cls_id);
                s.extend_from_slice(&enc.ids[1 + r.start..1 + r.end]);
                s.push(self.tokenizer.sep_id);
                s
            })
            .collect();
        Piece {
            enc,
            char_offset,
            windows,
            owner,
            seqs,
        }
    }

    /// Cuts one item into pieces: the whole text when it fits the window (the pipeline's
    /// behaviour), else sentences or one windowed piece.
    fn pieces(&self, item: Item<'_>, long: LongText) -> Result<Vec<Piece>, DetectError> {
        match item {
            Item::Words(w) => Ok(vec![self.piece(self.tokenizer.encode_words(w)?, 0)]),
            Item::Text(t) => {
                let enc = self.tokenizer.encode_text(t)?;
                if enc.len() <= self.window() || long == LongText::Windows {
                    return Ok(vec![self.piece(enc, 0)]);
                }
                // Byte offset of every code point, once for the whole text.
                let bytes: Vec<usize> = t.char_indices().map(|(b, _)| b).chain([t.len()]).collect();
                segment::sentences(t)
                    .into_iter()
                    .map(|(s, e)| {
                        let sentence = &t[bytes[s]..bytes[e]];
                        Ok(self.piece(self.tokenizer.encode_text(sentence)?, s))
                    })
                    .collect()
            }
        }
    }

    /// Tokenises and cuts an input (CPU work: call from a blocking thread).
    pub fn prepare(&self, input: &Input, long: LongText) -> Result<Prepared, DetectError> {
        input.check()?;
        let pieces = input
            .items()
            .into_iter()
            .map(|i| self.pieces(i, long))
            .collect::<Result<_, _>>()?;
        Ok(Prepared { pieces })
    }

    fn entities(
        &self,
        pieces: &[Piece],
        probs: &[Vec<Vec<f32>>],
        item: Item<'_>,
        opts: DetectOptions,
    ) -> TextResult {
        let mut entities = Vec::new();
        let mut confidence = 1.0f32;
        let strategy = opts.strategy.unwrap_or(self.info.aggregation_strategy);
        let mut probs = probs.iter();
        // The text's code points, once (spans are code-point ranges).
        let chars: Vec<char> = match item {
            Item::Text(t) => t.chars().collect(),
            Item::Words(_) => Vec::new(),
        };
        // Whitespace words: token -> chunk holding its first character.
        let chunks: Vec<usize> = match (item, opts.words.unwrap_or(self.info.words)) {
            (Item::Text(t), WordMode::Whitespace) => crate::data::annotations::words(t)
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            _ => Vec::new(),
        };
        for p in pieces {
            let mine: Vec<&Vec<Vec<f32>>> = probs.by_ref().take(p.seqs.len()).collect();
            let tokens: Vec<TokenScores> = (0..p.owner.len())
                .map(|i| {
                    let w = p.owner[i];
                    let pos = i - p.windows[w].start + 1; // +1 for <s>
                    let (start, end) = p.enc.offsets[i + 1];
                    let start = start + p.char_offset;
                    let word_id = if chunks.is_empty() {
                        p.enc.word_ids[i + 1]
                    } else {
                        Some(chunks.partition_point(|&c| c <= start).saturating_sub(1))
                    };
                    TokenScores {
                        index: i + 1,
                        start,
                        end: end + p.char_offset,
                        word_id,
                        scores: mine[w][pos].clone(),
                    }
                })
                .collect();
            if opts.uncertainty {
                confidence = confidence.min(aggregate::confidence(&tokens, strategy));
            }
            entities.extend(match item {
                Item::Text(_) => {
                    let span = |s: usize, e: usize| {
                        chars[s.min(chars.len())..e.min(chars.len())]
                            .iter()
                            .collect::<String>()
                    };
                    let mut found = aggregate(&tokens, &self.info.labels, strategy, &span);
                    if !chunks.is_empty() {
                        // Whole words without the punctuation attached to them.
                        for e in &mut found {
                            let core = |c: &char| c.is_alphanumeric();
                            let inner = &chars[e.start.min(chars.len())..e.end.min(chars.len())];
                            if let (Some(a), Some(b)) =
                                (inner.iter().position(core), inner.iter().rposition(core))
                            {
                                (e.start, e.end) = (e.start + a, e.start + b + 1);
                                e.word = span(e.start, e.end);
                            }
                        }
                    }
                    found
                }
                Item::Words(words) => {
                    // Pre-split input: offsets become word indices [start, end).
                    let by_word: Vec<TokenScores> = tokens
                        .into_iter()
                        .map(|mut t| {
                            let w = t.word_id.unwrap_or(0);
                            (t.start, t.end) = (w, w + 1);
                            t
                        })
                        .collect();
                    let span = |s: usize, e: usize| {
                        words[s.min(words.len())..e.min(words.len())].join(" ")
                    };
                    aggregate(&by_word, &self.info.labels, strategy, &span)
                }
            });
        }
        if let Some(th) = opts.threshold {
            entities.retain(|e| e.score as f64 >= th);
        }
        TextResult {
            entities,
            uncertainty: opts.uncertainty.then_some(1.0 - confidence),
            windows: pieces.iter().map(|p| p.seqs.len()).sum(),
        }
    }

    /// Entities from the executor's probabilities (CPU work: call from a blocking thread).
    pub fn assemble(
        &self,
        input: &Input,
        prepared: &Prepared,
        probs: Probs,
        opts: DetectOptions,
    ) -> DetectOutput {
        let mut probs = probs.into_iter();
        let results = prepared
            .pieces
            .iter()
            .zip(input.items())
            .map(|(pieces, item)| {
                let n: usize = pieces.iter().map(|p| p.seqs.len()).sum();
                let mine: Vec<Vec<Vec<f32>>> = probs.by_ref().take(n).collect();
                self.entities(pieces, &mine, item, opts)
            })
            .collect();
        DetectOutput {
            model: self.info.name.clone(),
            model_version: self.info.version.clone(),
            results,
        }
    }

    /// Queues the sequences on the executor; the receiver yields their probabilities.
    fn submit(&self, prepared: &Prepared) -> Result<oneshot::Receiver<Probs>, DetectError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Run {
                seqs: prepared.sequences(),
                reply,
            })
            .map_err(|_| DetectError::Stopped(self.info.name.clone()))?;
        Ok(rx)
    }

    fn lost(&self) -> DetectError {
        DetectError::Failed {
            model: self.info.name.clone(),
            message: self
                .health
                .lock()
                .expect("health lock: this is a bug")
                .degraded
                .clone()
                .unwrap_or_else(|| "its executor failed while running this request".into()),
        }
    }

    /// Detects entities; fails fast with `Busy` when the queue is full. Tokenising and
    /// aggregation of long inputs run on the blocking pool, the forward pass on the executor; a
    /// caller that goes away is skipped by the executor.
    pub async fn detect(
        self: Arc<Self>,
        input: Input,
        opts: DetectOptions,
    ) -> Result<DetectOutput, DetectError> {
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| DetectError::Busy(self.info.name.clone()))?;
        if input.size() <= INLINE_CHARS {
            let prepared = self.prepare(&input, opts.long_text)?;
            let probs = self.submit(&prepared)?.await.map_err(|_| self.lost())?;
            return Ok(self.assemble(&input, &prepared, probs, opts));
        }
        let input = Arc::new(input);
        let (me, inp) = (self.clone(), input.clone());
        let prepared = tokio::task::spawn_blocking(move || me.prepare(&inp, opts.long_text))
            .await
            .map_err(|_| self.lost())??;
        let probs = self.submit(&prepared)?.await.map_err(|_| self.lost())?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.assemble(&input, &prepared, probs, opts))
            .await
            .map_err(|_| self.lost())
    }

    /// [`detect`](Self::detect) for the CLI and benchmarks: on this thread, no queue bound.
    pub fn detect_blocking(
        &self,
        input: &Input,
        opts: DetectOptions,
    ) -> Result<DetectOutput, DetectError> {
        let prepared = self.prepare(input, opts.long_text)?;
        let probs = self
            .submit(&prepared)?
            .blocking_recv()
            .map_err(|_| self.lost())?;
        Ok(self.assemble(input, &prepared, probs, opts))
    }

    /// Requests currently waiting or running.
    pub fn in_flight(&self) -> usize {
        self.opts.queue.max(1) - self.permits.available_permits()
    }

    /// `ok`, or `degraded` with the reason, and the restarts after panics.
    pub fn health(&self) -> ModelHealth {
        let h = self.health.lock().expect("health lock: this is a bug");
        ModelHealth {
            state: if h.degraded.is_some() {
                "degraded"
            } else {
                "ok"
            },
            reason: h.degraded.clone(),
            restarts: h.restarts,
        }
    }

    /// Makes the executor panic inside its serving loop, as a failing forward pass would
    /// (tests of the supervision).
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        let _ = self.tx.send(Cmd::Panic);
    }
}
