//! The executor thread of a deployed model: it owns the engine, gathers the requests queued
//! while the previous batch ran (up to a token budget), runs them as length-sorted batches and
//! replies through oneshot channels. Requests whose caller went away are skipped.
//!
//! Supervised: a panic in a forward pass drops that batch's requests (their callers get an
//! error), counts a restart, rebuilds the engine from the model directory and serves on; the
//! model is `degraded` until a batch succeeds again.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::{AutodiffBackend, Backend};
use tokio::sync::oneshot;

use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, LoadError, load_token_classifier};

use super::cpu::packed::Precision;
use super::engine::Engine;

/// Per sequence, per token, the softmax over labels.
pub type Probs = Vec<Vec<Vec<f32>>>;

/// What the executor is asked to do.
pub enum Cmd {
    Run {
        /// Token id sequences (with special tokens).
        seqs: Vec<Vec<u32>>,
        reply: oneshot::Sender<Probs>,
    },
    /// Panic inside the serving loop (tests of the supervision).
    #[doc(hidden)]
    Panic,
}

/// What a model's executor reports about itself.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Why the model is not `ok` (a panic it restarted after; a reload that failed).
    pub degraded: Option<String>,
    /// Restarts after a panic since the model was deployed.
    pub restarts: u64,
}

/// What the loaded model says about itself.
pub struct Loaded {
    pub labels: Vec<String>,
    pub max_tokens: usize,
    pub vocab_size: usize,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most tokens in one forward batch (real tokens for an unpadded engine).
    pub budget: usize,
    /// Longest wait for more requests before a batch runs.
    pub wait: Duration,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Starts the executor of the model in `dir` on `device`; returns once it is loaded.
pub fn spawn(
    name: &str,
    dir: &Path,
    device: Resolved,
    batching: Batching,
    precision: Precision,
    health: Arc<Mutex<Health>>,
) -> Result<(mpsc::Sender<Cmd>, Loaded), LoadError> {
    let (tx, rx) = mpsc::channel::<Cmd>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Loaded, LoadError>>();
    let task = Supervisor {
        dir: dir.to_path_buf(),
        rx,
        ready: ready_tx,
        batching,
        precision,
        health,
    };
    std::thread::Builder::new()
        .name(format!("detect-{name}"))
        .spawn(move || dispatch(device, task))
        .map_err(|e| LoadError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    let loaded = ready_rx.recv().map_err(|_| LoadError::Format {
        path: dir.to_path_buf(),
        message: "the model thread stopped while loading".into(),
    })??;
    Ok((tx, loaded))
}

struct Supervisor {
    dir: PathBuf,
    rx: mpsc::Receiver<Cmd>,
    ready: mpsc::Sender<Result<Loaded, LoadError>>,
    batching: Batching,
    precision: Precision,
    health: Arc<Mutex<Health>>,
}

impl BackendTask for Supervisor {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) {
        let mut first = true;
        loop {
            let engine = match load::<B::InnerBackend>(&self.dir, resolved, &device, self.precision)
            {
                Ok((engine, loaded)) => {
                    if first {
                        let _ = self.ready.send(Ok(loaded));
                        first = false;
                    }
                    engine
                }
                Err(e) => {
                    if first {
                        let _ = self.ready.send(Err(e));
                    } else {
                        tracing::error!(dir = %self.dir.display(), error = %e, "model reload failed; requests to it fail");
                        self.health
                            .lock()
                            .expect("health lock: this is a bug")
                            .degraded = Some(format!("reload after a panic failed: {e}"));
                    }
                    return;
                }
            };
            let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
                serve(&engine, &self.rx, self.batching, &self.health)
            }));
            match served {
                // The detector was dropped: its last requests are answered.
                Ok(()) => return,
                Err(p) => {
                    let message = panic_message(p.as_ref());
                    tracing::error!(dir = %self.dir.display(), panic = %message, "model executor panicked; restarting it");
                    let mut h = self.health.lock().expect("health lock: this is a bug");
                    h.restarts += 1;
                    h.degraded = Some(format!(
                        "restarted after a panic in a forward pass: {message}"
                    ));
                }
            }
        }
    }
}

fn load<B: Backend>(
    dir: &Path,
    resolved: Resolved,
    device: &B::Device,
    precision: Precision,
) -> Result<(Engine<B>, Loaded), LoadError> {
    let (model, config, _) =
        load_token_classifier::<B>(dir, None, HeadInit::FromCheckpoint, device)?;
    let loaded = Loaded {
        labels: config.labels().unwrap_or_default(),
        max_tokens: config.max_tokens(),
        vocab_size: config.vocab_size(),
    };
    let engine =
        Engine::with_precision(model, &config, resolved, device, precision).map_err(|e| {
            LoadError::Format {
                path: dir.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    Ok((engine, loaded))
}

fn softmax_row(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The serving loop: gather requests for up to `wait` or `budget` tokens, batch, run, reply.
/// Returns when every sender is gone.
fn serve<B: Backend>(
    engine: &Engine<B>,
    rx: &mpsc::Receiver<Cmd>,
    batching: Batching,
    health: &Mutex<Health>,
) {
    let tokens_of = |seqs: &[Vec<u32>]| seqs.iter().map(|s| s.len()).sum::<usize>();
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::new();
        let mut tokens = 0;
        let mut next = Some(first);
        let deadline = Instant::now() + batching.wait;
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Run { seqs, reply } => {
                    tokens += tokens_of(&seqs);
                    jobs.push((seqs, reply));
                }
                Cmd::Panic => panic!("panic requested through the test hook"),
            }
            if tokens >= batching.budget {
                break;
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(cmd) => next = Some(cmd),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Callers that went away are not computed.
        jobs.retain(|(_, reply)| !reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let out = run_batches(engine, &jobs, batching.budget);
        // Healthy again before anyone hears back (a client that reads /health right after
        // its answer sees the state its answer came from).
        health.lock().expect("health lock: this is a bug").degraded = None;
        for ((_, reply), probs) in jobs.into_iter().zip(out) {
            let _ = reply.send(probs);
        }
    }
}

/// The (job, sequence) pairs sorted by length, in batches within the token budget (real
/// tokens for an unpadded engine, padded tokens otherwise); softmax probabilities per job.
fn run_batches<B: Backend>(
    engine: &Engine<B>,
    jobs: &[(Vec<Vec<u32>>, oneshot::Sender<Probs>)],
    budget: usize,
) -> Vec<Probs> {
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, (seqs, _))| (0..seqs.len()).map(move |s| (j, s)))
        .collect();
    order.sort_by_key(|(j, s)| jobs[*j].0[*s].len());
    let mut out: Vec<Probs> = jobs
        .iter()
        .map(|(seqs, _)| vec![Vec::new(); seqs.len()])
        .collect();
    let len = |at: usize| jobs[order[at].0].0[order[at].1].len();
    let c = engine.num_labels();
    let mut i = 0;
    while i < order.len() {
        let mut end = i + 1;
        let mut tokens = len(i);
        while end < order.len() {
            tokens += len(end);
            // Sorted by length: the last sequence is the longest.
            let cost = if engine.unpadded() {
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
            .map(|(j, s)| jobs[*j].0[*s].as_slice())
            .collect();
        for ((j, s), logits) in order[i..end].iter().zip(engine.logits(&seqs)) {
            out[*j][*s] = logits.chunks_exact(c).map(softmax_row).collect();
        }
        i = end;
    }
    out
}
