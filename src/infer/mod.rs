//! Detection: a loaded model on its own executor thread, fed by a queue with dynamic batching;
//! aggregation as the HF pipeline; sliding windows for long texts.
//!
//! The handle ([`Detector`]) tokenizes on the caller's side and sends token sequences; the
//! executor batches sequences of all waiting requests by a token budget, runs the model, and
//! replies through oneshot channels. Requests whose caller went away are skipped.
//! Must not import axum or sqlx.

pub mod aggregate;
pub mod registry;
pub mod segment;
pub mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};

use crate::data::RobertaTokenizer;
use crate::data::batch::HostBatch;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, LoadError, load_token_classifier};

use aggregate::{Entity, Strategy, TokenScores, aggregate};

pub use registry::Registry;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Requests waiting or running per model; beyond it `detect` fails with `Busy`.
    pub queue: usize,
    /// Most padded tokens in one forward batch.
    pub batch_tokens: usize,
    /// Longest wait for more requests before a batch runs.
    pub batch_wait: Duration,
    /// Tokens shared by consecutive windows of a long text.
    pub stride: usize,
    /// Window size in tokens (special tokens included); `None`: the model's maximum.
    pub window: Option<usize>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            queue: 256,
            batch_tokens: 8192,
            batch_wait: Duration::ZERO,
            stride: 128,
            window: None,
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
            _ => Err(format!("long_text must be sentences or windows, got {s:?}")),
        }
    }
}

/// What to analyse.
#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    /// Pre-split words; entity offsets are word indices.
    Tokens(Vec<String>),
}

/// Why detection failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("too many requests waiting for model {0}")]
    Busy(String),
    #[error("model {0} stopped")]
    Stopped(String),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Invalid(String),
}

/// Description of a loaded model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    /// Content fingerprint of config + weights (changes when a model is replaced).
    pub version: String,
    pub labels: Vec<String>,
    pub device: String,
    /// Window of the model, special tokens included.
    pub max_tokens: usize,
    /// Job that produced it, when deployed from a job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Entities of one input.
#[derive(Debug, Clone, Serialize)]
pub struct TextResult {
    pub entities: Vec<Entity>,
    /// Windows the input needed (1 unless it exceeded the model's window).
    pub windows: usize,
}

/// A detection answer.
#[derive(Debug, Clone, Serialize)]
pub struct DetectOutput {
    pub model: String,
    pub model_version: String,
    pub results: Vec<TextResult>,
}

type Probs = Vec<Vec<Vec<f32>>>;

struct Job {
    /// Token id sequences (with special tokens).
    seqs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Probs>,
}

/// A loaded model behind its executor thread.
pub struct Detector {
    pub info: ModelInfo,
    tokenizer: RobertaTokenizer,
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    opts: DetectorOptions,
}

fn fingerprint(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(std::fs::read(dir.join("config.json")).unwrap_or_default());
    for f in crate::model::weights::WEIGHT_FILES {
        if let Ok(m) = std::fs::metadata(dir.join(f)) {
            h.update(f.as_bytes());
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified().and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_err(std::io::Error::other)
            }) {
                h.update(t.as_nanos().to_le_bytes());
            }
        }
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Detector {
    /// Loads an HF model directory onto `device` and starts its executor thread.
    pub fn load(
        name: &str,
        dir: &Path,
        device: Resolved,
        opts: DetectorOptions,
    ) -> Result<Self, DetectError> {
        let tokenizer = RobertaTokenizer::from_dir(dir)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(Vec<String>, usize), LoadError>>();
        let dir_owned = dir.to_path_buf();
        let (batch_tokens, batch_wait) = (opts.batch_tokens, opts.batch_wait);
        std::thread::Builder::new()
            .name(format!("detect-{name}"))
            .spawn(move || {
                struct Task {
                    dir: PathBuf,
                    rx: mpsc::Receiver<Job>,
                    ready: mpsc::Sender<Result<(Vec<String>, usize), LoadError>>,
                    batch_tokens: usize,
                    batch_wait: Duration,
                }
                impl BackendTask for Task {
                    type Output = ();
                    fn run<B: AutodiffBackend>(self, device: B::Device, _: Resolved) {
                        executor::<B::InnerBackend>(self, &device)
                    }
                }
                fn executor<B: Backend>(t: Task, device: &B::Device) {
                    let (model, config) = match load_token_classifier::<B>(
                        &t.dir,
                        None,
                        HeadInit::FromCheckpoint,
                        device,
                    ) {
                        Ok((m, c, _)) => (m, c),
                        Err(e) => {
                            let _ = t.ready.send(Err(e));
                            return;
                        }
                    };
                    // Weights packed before the model is announced ready (once per deployment).
                    let packed = model.pack_for_cpu();
                    let labels = config.labels().unwrap_or_default();
                    let _ = t.ready.send(Ok((labels, config.max_tokens())));
                    run_executor(
                        &model,
                        packed.as_ref(),
                        &t.rx,
                        t.batch_tokens,
                        t.batch_wait,
                        config.pad_token_id as u32,
                        device,
                    );
                }
                dispatch(
                    device,
                    Task {
                        dir: dir_owned,
                        rx,
                        ready: ready_tx,
                        batch_tokens,
                        batch_wait,
                    },
                );
            })
            .map_err(|e| DetectError::Invalid(format!("cannot start executor thread: {e}")))?;
        let (labels, max_tokens) = ready_rx
            .recv()
            .map_err(|_| DetectError::Stopped(name.into()))??;
        if labels.is_empty() {
            return Err(DetectError::Invalid(format!(
                "{}: config.json has no id2label",
                dir.display()
            )));
        }
        let max_tokens = max_tokens.min(tokenizer.model_max_length.unwrap_or(usize::MAX));
        let info = ModelInfo {
            name: name.into(),
            path: dir.to_path_buf(),
            version: fingerprint(dir),
            labels,
            device: device.to_string(),
            max_tokens,
            job_id: None,
        };
        Ok(Detector {
            info,
            tokenizer,
            tx,
            permits: Arc::new(Semaphore::new(opts.queue.max(1))),
            opts,
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
    fn piece(&self, enc: crate::data::Encoded, char_offset: usize) -> Piece {
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

    /// Cuts an input into pieces: the whole text when it fits the window (the pipeline's
    /// behaviour), else sentences or one windowed piece.
    fn prepare(&self, input: Either<'_>, long: LongText) -> Result<Vec<Piece>, DetectError> {
        match input {
            Either::Words(w) => Ok(vec![self.piece(self.tokenizer.encode_words(w)?, 0)]),
            Either::Text(t) => {
                let enc = self.tokenizer.encode_text(t)?;
                if enc.len() <= self.window() || long == LongText::Windows {
                    return Ok(vec![self.piece(enc, 0)]);
                }
                let chars: Vec<char> = t.chars().collect();
                segment::sentences(t)
                    .into_iter()
                    .map(|(s, e)| {
                        let sentence: String = chars[s..e].iter().collect();
                        Ok(self.piece(self.tokenizer.encode_text(&sentence)?, s))
                    })
                    .collect()
            }
        }
    }

    fn postprocess(
        &self,
        pieces: &[Piece],
        probs: &[Vec<Vec<f32>>],
        input: Either<'_>,
        strategy: Strategy,
        threshold: Option<f64>,
    ) -> TextResult {
        let mut entities = Vec::new();
        let mut probs = probs.iter();
        for p in pieces {
            let mine: Vec<&Vec<Vec<f32>>> = probs.by_ref().take(p.seqs.len()).collect();
            let tokens: Vec<TokenScores> = (0..p.owner.len())
                .map(|i| {
                    let w = p.owner[i];
                    let pos = i - p.windows[w].start + 1; // +1 for <s>
                    let (start, end) = p.enc.offsets[i + 1];
                    TokenScores {
                        index: i + 1,
                        start: start + p.char_offset,
                        end: end + p.char_offset,
                        word_id: p.enc.word_ids[i + 1],
                        scores: mine[w][pos].clone(),
                    }
                })
                .collect();
            entities.extend(match input {
                Either::Text(text) => {
                    let chars: Vec<char> = text.chars().collect();
                    let span = |s: usize, e: usize| {
                        chars[s.min(chars.len())..e.min(chars.len())]
                            .iter()
                            .collect::<String>()
                    };
                    aggregate(&tokens, &self.info.labels, strategy, &span)
                }
                Either::Words(words) => {
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
        if let Some(th) = threshold {
            entities.retain(|e| e.score as f64 >= th);
        }
        TextResult {
            entities,
            windows: pieces.iter().map(|p| p.seqs.len()).sum(),
        }
    }

    fn inputs(input: &Input) -> Vec<Either<'_>> {
        match input {
            Input::Text(t) => vec![Either::Text(t)],
            Input::Texts(ts) => ts.iter().map(|t| Either::Text(t)).collect(),
            Input::Tokens(w) => vec![Either::Words(w)],
        }
    }

    /// Detects entities; fails fast with `Busy` when the queue is full.
    pub async fn detect(
        &self,
        input: Input,
        strategy: Strategy,
        threshold: Option<f64>,
        long: LongText,
    ) -> Result<DetectOutput, DetectError> {
        let _permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| DetectError::Busy(self.info.name.clone()))?;
        let items = Self::inputs(&input);
        let prepared: Vec<Vec<Piece>> = items
            .iter()
            .map(|i| self.prepare(*i, long))
            .collect::<Result<_, _>>()?;
        let (reply, rx) = oneshot::channel();
        let seqs: Vec<Vec<u32>> = prepared
            .iter()
            .flatten()
            .flat_map(|p| p.seqs.iter().cloned())
            .collect();
        self.tx
            .send(Job { seqs, reply })
            .map_err(|_| DetectError::Stopped(self.info.name.clone()))?;
        let probs = rx
            .await
            .map_err(|_| DetectError::Stopped(self.info.name.clone()))?;
        Ok(self.assemble(&prepared, probs, &items, strategy, threshold))
    }

    /// Blocking variant for the CLI and benchmarks (no queue bound).
    pub fn detect_blocking(
        &self,
        input: Input,
        strategy: Strategy,
        threshold: Option<f64>,
        long: LongText,
    ) -> Result<DetectOutput, DetectError> {
        let items = Self::inputs(&input);
        let prepared: Vec<Vec<Piece>> = items
            .iter()
            .map(|i| self.prepare(*i, long))
            .collect::<Result<_, _>>()?;
        let (reply, rx) = oneshot::channel();
        let seqs: Vec<Vec<u32>> = prepared
            .iter()
            .flatten()
            .flat_map(|p| p.seqs.iter().cloned())
            .collect();
        self.tx
            .send(Job { seqs, reply })
            .map_err(|_| DetectError::Stopped(self.info.name.clone()))?;
        let probs = rx
            .blocking_recv()
            .map_err(|_| DetectError::Stopped(self.info.name.clone()))?;
        Ok(self.assemble(&prepared, probs, &items, strategy, threshold))
    }

    fn assemble(
        &self,
        prepared: &[Vec<Piece>],
        probs: Probs,
        items: &[Either<'_>],
        strategy: Strategy,
        threshold: Option<f64>,
    ) -> DetectOutput {
        let mut probs = probs.into_iter();
        let results = prepared
            .iter()
            .zip(items)
            .map(|(pieces, input)| {
                let n: usize = pieces.iter().map(|p| p.seqs.len()).sum();
                let mine: Vec<Vec<Vec<f32>>> = probs.by_ref().take(n).collect();
                self.postprocess(pieces, &mine, *input, strategy, threshold)
            })
            .collect();
        DetectOutput {
            model: self.info.name.clone(),
            model_version: self.info.version.clone(),
            results,
        }
    }

    /// Requests currently waiting or running.
    pub fn in_flight(&self) -> usize {
        self.opts.queue.max(1) - self.permits.available_permits()
    }
}

#[derive(Clone, Copy)]
enum Either<'a> {
    Text(&'a str),
    Words(&'a [String]),
}

/// A part of an input run as one or more sequences.
struct Piece {
    enc: crate::data::Encoded,
    /// Code-point offset of the piece in the text.
    char_offset: usize,
    windows: Vec<std::ops::Range<usize>>,
    owner: Vec<usize>,
    seqs: Vec<Vec<u32>>,
}

/// Softmax of one token's logits.
fn softmax_row(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The executor loop: gather requests for up to `wait` or `budget` tokens, batch, run, reply.
fn run_executor<B: Backend>(
    model: &crate::model::RobertaForTokenClassification<B>,
    packed: Option<&std::sync::Arc<crate::model::roberta::PackedWeights>>,
    rx: &mpsc::Receiver<Job>,
    budget: usize,
    wait: Duration,
    pad_id: u32,
    device: &B::Device,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut tokens: usize = jobs[0].seqs.iter().map(|s| s.len()).sum();
        let deadline = Instant::now() + wait;
        while tokens < budget {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    tokens += j.seqs.iter().map(|s| s.len()).sum::<usize>();
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Callers that went away are not computed.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        // (job, seq) pairs sorted by length; batches bounded by padded tokens.
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.seqs.len()).map(move |s| (j, s)))
            .collect();
        order.sort_by_key(|(j, s)| jobs[*j].seqs[*s].len());
        let mut out: Vec<Vec<Vec<Vec<f32>>>> = jobs
            .iter()
            .map(|j| vec![Vec::new(); j.seqs.len()])
            .collect();
        let len = |at: usize| jobs[order[at].0].seqs[order[at].1].len();
        let mut i = 0;
        while i < order.len() {
            // Batches within the token budget: real tokens for the CPU kernels (unpadded
            // batches), padded tokens otherwise (sorted by length, so the last is the longest).
            let mut end = i + 1;
            let mut tokens = len(i);
            while end < order.len() {
                tokens += len(end);
                let cost = if packed.is_some() {
                    tokens
                } else {
                    len(end) * (end + 1 - i)
                };
                if cost > budget {
                    break;
                }
                end += 1;
            }
            let seqs: Vec<&[u32]> = order[i..end]
                .iter()
                .map(|(j, s)| jobs[*j].seqs[*s].as_slice())
                .collect();
            let c = model.num_labels();
            let probs: Vec<Vec<Vec<f32>>> = match packed {
                Some(packed) => model
                    .forward_unpadded(packed, &seqs)
                    .iter()
                    .map(|logits| logits.chunks_exact(c).map(softmax_row).collect())
                    .collect(),
                None => {
                    let seq = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
                    let items = seqs.iter().map(|s| (*s, None));
                    let host = HostBatch::collate_ids(items, seq, pad_id);
                    let batch = host.to_device::<B>(device);
                    let logits = model.forward(batch.input_ids, batch.attention_mask); // [batch, seq, labels]
                    let probs: Vec<f32> = softmax(logits, 2)
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .expect("f32 probabilities: this is a bug");
                    seqs.iter()
                        .enumerate()
                        .map(|(row, s)| {
                            (0..s.len())
                                .map(|t| {
                                    probs[(row * seq + t) * c..(row * seq + t + 1) * c].to_vec()
                                })
                                .collect()
                        })
                        .collect()
                }
            };
            for ((j, s), p) in order[i..end].iter().zip(probs) {
                out[*j][*s] = p;
            }
            i = end;
        }
        for (job, probs) in jobs.into_iter().zip(out) {
            let _ = job.reply.send(probs);
        }
    }
}
