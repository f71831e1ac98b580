//! The training loop (HF `Trainer.train` with eval/save every epoch and
//! `load_best_model_at_end`), written out as named steps: [`Trainer::prepare`] (data, model,
//! resume), [`Trainer::evaluate_base`], [`Trainer::train_epoch`] with [`Trainer::train_step`],
//! [`Trainer::end_epoch`] (validation, best tracking, checkpoint rotation) and
//! [`Trainer::finish`] (best model on test, export).
//!
//! Determinism: the shuffle of epoch `e` comes from `(seed, e)` and the dropout RNG is
//! re-seeded from `(seed, step)` before every micro-batch, so a run resumed from any
//! checkpoint continues exactly as the uninterrupted one (same backend).

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::align::{Example, example};
use crate::data::batch::HostBatch;
use crate::data::{Dataset, Split, Tokenizer};
use crate::infer::engine::Engine;
use crate::metrics::LabelScheme;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::export::save_hf_dir;
use crate::model::loader::{HeadInit, load_with_weights};
use crate::model::ops::dropout_rng;
use crate::model::weights::Weights;
use crate::model::{ModelConfig, TokenClassifier};

use super::args::{BestMetric, ClassWeights, TrainingArgs};
use super::checkpoint::{self, Best, EvalSummary, TrainerState};
use super::evaluate::{EvalOutput, evaluate};
use super::loss::{balanced_weights, position_weights, token_loss};
use super::optim::{AdamW, AdamWConfig, grad_norm};
use super::schedule::{lr_factor, warmup_steps};
use super::tensorboard::RunLog;
use super::{
    CancelToken, EarlyStop, EpochRecord, Progress, RunConfig, RunOutcome, StopReason, TrainError,
    train_label_counts,
};

/// splitmix64: decorrelated seeds from (seed, counter).
pub fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Micro-batches per batch when training on the CPU: burn-flex parallelises only large matrix
/// products, so two halves on two threads keep both cores busy. A fixed split, not the
/// machine's core count, so a seed gives the same run everywhere.
const CPU_SHARDS: usize = 2;

/// A copy of the model whose parameters are new autodiff leaves with the same ids and values:
/// its graph is its own, and its gradients accumulate into the original's by id.
fn fresh_leaves<B: AutodiffBackend>(model: &TokenClassifier<B>) -> TokenClassifier<B> {
    struct Fresh;
    impl<B: AutodiffBackend> ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| {
                let grad = t.is_require_grad();
                let t = Tensor::from_inner(t.inner());
                if grad { t.require_grad() } else { t }
            })
        }
    }
    model.clone().map(&mut Fresh)
}

/// Tokenized splits of a dataset.
pub struct Prepared {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
    pub dropped_words: usize,
}

/// Tokenizes and aligns one split; returns the examples and the words truncated away.
pub fn encode_split(
    split: &Split,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<(Vec<Example>, usize), TrainError> {
    let examples = split
        .sentences
        .iter()
        .map(|sent| {
            Ok(example(
                tokenizer.encode_words(&sent.tokens)?,
                &sent.tags,
                max_len,
            ))
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let dropped = examples.iter().map(|e| e.dropped_words).sum();
    Ok((examples, dropped))
}

/// Tokenizes and aligns every split (`tokenize_and_align_labels`).
pub fn prepare(
    dataset: &Dataset,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<Prepared, TrainError> {
    let (train, a) = encode_split(&dataset.train, tokenizer, max_len)?;
    let (validation, b) = encode_split(&dataset.validation, tokenizer, max_len)?;
    let (test, c) = encode_split(&dataset.test, tokenizer, max_len)?;
    Ok(Prepared {
        train,
        validation,
        test,
        dropped_words: a + b + c,
    })
}

/// Longest token sequence for a model and tokenizer under the spec's `max_length`.
pub fn max_len(config: &ModelConfig, tokenizer: &Tokenizer, requested: usize) -> usize {
    requested
        .min(config.max_tokens())
        .min(tokenizer.model_max_length.unwrap_or(usize::MAX))
}

/// Runs the whole pipeline on the configured backend.
pub fn run(
    cfg: &RunConfig,
    resume: bool,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutcome, TrainError> {
    struct Task<'a> {
        cfg: &'a RunConfig,
        resume: bool,
        cancel: &'a CancelToken,
        progress: &'a mut dyn FnMut(Progress),
    }
    impl BackendTask for Task<'_> {
        type Output = Result<RunOutcome, TrainError>;
        fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output {
            let mut t = Trainer::<B>::prepare(self.cfg, self.resume, device, resolved)?;
            t.run(self.cancel, self.progress)
        }
    }
    dispatch(
        cfg.device,
        Task {
            cfg,
            resume,
            cancel,
            progress,
        },
    )
}

fn better(metric: BestMetric, new: f64, old: f64, threshold: f64) -> bool {
    match metric {
        BestMetric::Loss => new < old - threshold,
        _ => new > old + threshold,
    }
}

fn metric_value(metric: BestMetric, out: &EvalOutput) -> f64 {
    match metric {
        BestMetric::F1 => out.metrics.f1,
        BestMetric::Precision => out.metrics.precision,
        BestMetric::Recall => out.metrics.recall,
        BestMetric::Accuracy => out.metrics.accuracy,
        BestMetric::Loss => out.loss,
    }
}

fn clear_previous(output: &Path) -> Result<(), TrainError> {
    for (_, dir) in checkpoint::list(output) {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    let best = output.join("best_model");
    if best.exists() {
        std::fs::remove_dir_all(&best).map_err(|e| TrainError::io(&best, e))?;
    }
    Ok(())
}

fn gold(split: &Split) -> Vec<Vec<i64>> {
    split.sentences.iter().map(|s| s.tags.clone()).collect()
}

/// A run in progress: data, model, optimizer and the state a checkpoint keeps.
struct Trainer<'a, B: AutodiffBackend> {
    cfg: &'a RunConfig,
    args: &'a TrainingArgs,
    device: B::Device,
    resolved: Resolved,
    tokenizer: Tokenizer,
    /// The base checkpoint's configuration, and the same with this run's labels.
    base_config: ModelConfig,
    config: ModelConfig,
    scheme: LabelScheme,
    data: Prepared,
    gold_val: Vec<Vec<i64>>,
    gold_test: Vec<Vec<i64>>,
    /// `eval_train_subset`: a fixed seeded sample of the training examples and their gold.
    train_subset: (Vec<Example>, Vec<Vec<i64>>),
    log: RunLog,
    class_weights: Option<Vec<f64>>,
    model: TokenClassifier<B>,
    optim: AdamW<B>,
    state: TrainerState,
    resumed_from: Option<String>,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    last_lr: f64,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Reads and tokenizes the data; loads the newest checkpoint to resume, or the base
    /// checkpoint with a head.
    fn prepare(
        cfg: &'a RunConfig,
        resume: bool,
        device: B::Device,
        resolved: Resolved,
    ) -> Result<Self, TrainError> {
        let args = &cfg.args;
        let labels = &cfg.dataset.labels;
        let num_labels = labels.len();
        args.validate(Some(num_labels))?;
        let scheme = LabelScheme::new(labels)?;
        let tokenizer = Tokenizer::from_dir(&cfg.model_dir)?;
        let base_config = ModelConfig::from_dir(&cfg.model_dir)?;
        let config = base_config.clone().with_labels(labels);
        let max_len = max_len(&base_config, &tokenizer, args.max_length);
        let data = prepare(&cfg.dataset, &tokenizer, max_len)?;
        let class_weights = match &args.class_weights {
            None => None,
            Some(ClassWeights::Named(_)) => {
                Some(balanced_weights(&train_label_counts(&cfg.dataset)))
            }
            Some(ClassWeights::Explicit(w)) => Some(w.clone()),
        };
        std::fs::create_dir_all(&cfg.output_dir).map_err(|e| TrainError::io(&cfg.output_dir, e))?;
        let resumed = if resume {
            checkpoint::latest(&cfg.output_dir)?
        } else {
            clear_previous(&cfg.output_dir)?;
            None
        };
        let mut optim = AdamW::<B>::new(AdamWConfig {
            weight_decay: args.weight_decay,
            ..Default::default()
        });
        let (model, state, resumed_from) = match resumed {
            Some((dir, state)) => {
                let weights = Weights::open_dir(&dir)?;
                let (m, _) = load_with_weights::<B>(
                    &base_config,
                    &weights,
                    num_labels,
                    HeadInit::FromCheckpoint,
                    &device,
                )?;
                optim
                    .load_state(
                        state.global_step as u64,
                        checkpoint::read_optimizer(&dir)?,
                        &device,
                    )
                    .map_err(TrainError::Checkpoint)?;
                (m, state, Some(dir.display().to_string()))
            }
            None => {
                let weights = Weights::open_dir(&cfg.model_dir)?;
                let has_head = weights.entries.contains_key("classifier.weight");
                let head = if has_head && base_config.labels().as_deref() == Some(labels.as_slice())
                {
                    HeadInit::FromCheckpoint
                } else {
                    HeadInit::Fresh { seed: cfg.seed }
                };
                let (m, report) =
                    load_with_weights::<B>(&base_config, &weights, num_labels, head, &device)?;
                tracing::info!(format = ?report.format, head = report.head, ignored = report.ignored.len(), params = report.num_parameters, "loaded base checkpoint");
                (m, TrainerState::new(cfg.seed), None)
            }
        };
        let bs = args.per_device_train_batch_size;
        let steps_per_epoch = data
            .train
            .len()
            .div_ceil(bs)
            .div_ceil(args.gradient_accumulation_steps);
        let total_steps = steps_per_epoch * args.num_train_epochs;
        let train_subset = match args.eval_train_subset {
            Some(n) => {
                let mut idx: Vec<usize> = (0..data.train.len()).collect();
                idx.shuffle(&mut StdRng::seed_from_u64(mix(cfg.seed, 0x7EA1)));
                idx.truncate(n);
                idx.sort_unstable();
                (
                    idx.iter().map(|i| data.train[*i].clone()).collect(),
                    idx.iter()
                        .map(|i| cfg.dataset.train.sentences[*i].tags.clone())
                        .collect(),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let log = RunLog::open(&cfg.output_dir, state.global_step);
        Ok(Trainer {
            train_subset,
            log,
            cfg,
            args,
            device,
            resolved,
            tokenizer,
            gold_val: gold(&cfg.dataset.validation),
            gold_test: gold(&cfg.dataset.test),
            base_config,
            config,
            scheme,
            data,
            class_weights,
            model,
            optim,
            state,
            resumed_from,
            steps_per_epoch,
            total_steps,
            warmup: warmup_steps(args.warmup_steps, total_steps),
            last_lr: 0.0,
        })
    }

    /// The whole run after [`prepare`](Self::prepare).
    fn run(
        &mut self,
        cancel: &CancelToken,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunOutcome, TrainError> {
        progress(Progress::Prepared {
            device: self.resolved.to_string(),
            train_sentences: self.data.train.len(),
            steps_per_epoch: self.steps_per_epoch,
            total_steps: self.total_steps,
            epochs: self.args.num_train_epochs,
            dropped_words: self.data.dropped_words,
            label_distribution: self.cfg.dataset.stats(),
            warnings: self.cfg.dataset.imbalance_warnings(),
            resumed_from: self.resumed_from.clone(),
        });
        let base_test = self.evaluate_base()?;
        if self.state.epochs_done == 0 {
            self.log.test("base", 0, &base_test);
        }
        progress(Progress::BaseEvaluated {
            summary: base_test.clone(),
        });
        let epochs = self.args.num_train_epochs;
        // A run resumed at an epoch boundary asks again what it asked before the interruption.
        let mut early_stop = match self.state.epochs_done {
            0 => None,
            done => self.early_stop(done == epochs),
        };
        if early_stop.is_none() {
            for epoch in self.state.epochs_done..epochs {
                self.train_epoch(epoch, cancel, progress)?;
                let record = self.end_epoch(epoch)?;
                self.log.epoch(&record);
                progress(Progress::Epoch { record });
                early_stop = self.early_stop(epoch + 1 == epochs);
                if early_stop.is_some() {
                    break;
                }
            }
        }
        if let Some(why) = &early_stop {
            tracing::info!(epoch = self.state.epochs_done, ?why, "stopping early");
            progress(Progress::StoppedEarly {
                after_epoch: self.state.epochs_done,
                why: why.clone(),
            });
        }
        self.finish(base_test, early_stop, progress)
    }

    /// Early stopping on patience (also after the last epoch, as reported before), then the
    /// gate (a study's pruner; never after the last epoch: nothing would be saved).
    fn early_stop(&self, last: bool) -> Option<EarlyStop> {
        if let Some(p) = self.args.early_stopping_patience
            && self.state.patience_counter >= p
        {
            return Some(EarlyStop::Patience {
                epochs_without_improvement: self.state.patience_counter,
            });
        }
        if last {
            return None;
        }
        let reason = self.cfg.gate.as_ref()?.stop_after(&self.state.history)?;
        Some(EarlyStop::Pruned { reason })
    }

    /// Whether the run may still write its output directory.
    fn fence(&self) -> Result<(), TrainError> {
        match &self.cfg.fence {
            Some(f) => f.may_write().map_err(TrainError::Fenced),
            None => Ok(()),
        }
    }

    /// Writes `checkpoint-<step>/` of the current model, optimizer and state.
    fn save_checkpoint(&self) -> Result<std::path::PathBuf, TrainError> {
        self.fence()?;
        checkpoint::save(
            &self.cfg.output_dir,
            &self.model,
            &self.config,
            &self.optim,
            &self.state,
        )
    }

    /// An inference engine over the current weights.
    fn engine(&self, model: TokenClassifier<B::InnerBackend>) -> Engine<B::InnerBackend> {
        Engine::new(model, &self.config, self.resolved, &self.device)
    }

    fn evaluate_on(
        &self,
        engine: &Engine<B::InnerBackend>,
        examples: &[Example],
        gold: &[Vec<i64>],
    ) -> Result<EvalOutput, TrainError> {
        evaluate(
            engine,
            examples,
            gold,
            &self.scheme,
            self.args.per_device_eval_batch_size,
        )
    }

    /// The base model (pretrained encoder + fresh head) on test, once per run (kept in the
    /// checkpoints' state).
    fn evaluate_base(&mut self) -> Result<EvalSummary, TrainError> {
        if let Some(b) = &self.state.base_test {
            return Ok(b.clone());
        }
        let t = Instant::now();
        let engine = self.engine(self.model.valid());
        let out = self.evaluate_on(&engine, &self.data.test, &self.gold_test)?;
        let s = EvalSummary::new(&out, t.elapsed().as_secs_f64());
        self.state.base_test = Some(s.clone());
        Ok(s)
    }

    /// The optimizer steps of one epoch (from `step_in_epoch` when resuming); on a shutdown
    /// request, a checkpoint of the step reached.
    fn train_epoch(
        &mut self,
        epoch: usize,
        cancel: &CancelToken,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), TrainError> {
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(self.cfg.seed, epoch as u64)));
        let batches: Vec<&[usize]> = order
            .chunks(self.args.per_device_train_batch_size)
            .collect();
        let windows: Vec<&[&[usize]]> = batches
            .chunks(self.args.gradient_accumulation_steps)
            .collect();
        let t_epoch = Instant::now();
        for window in windows.iter().skip(self.state.step_in_epoch) {
            match cancel.reason() {
                Some(StopReason::Cancel) => return Err(TrainError::Cancelled),
                Some(StopReason::Shutdown) => {
                    self.state.epoch_seconds += t_epoch.elapsed().as_secs_f64();
                    let dir = self.save_checkpoint()?;
                    return Err(TrainError::Interrupted {
                        checkpoint: dir.display().to_string(),
                    });
                }
                None => {}
            }
            let t_step = Instant::now();
            let loss = self.train_step(window)?;
            self.log.step(self.state.global_step, loss, self.last_lr);
            progress(Progress::Step {
                epoch: epoch + 1,
                epochs: self.args.num_train_epochs,
                step: self.state.global_step,
                total_steps: self.total_steps,
                loss,
                learning_rate: self.last_lr,
                seconds_per_step: t_step.elapsed().as_secs_f64(),
            });
        }
        self.state.epoch_seconds += t_epoch.elapsed().as_secs_f64();
        Ok(())
    }

    /// One optimizer step over a gradient-accumulation window of batches; returns its loss.
    /// On the CPU each batch trains as two halves on two threads (same loss: one denominator
    /// for the window).
    fn train_step(&mut self, window: &[&[usize]]) -> Result<f64, TrainError> {
        let parallel = self.resolved == Resolved::Cpu;
        let shards = if parallel { CPU_SHARDS } else { 1 };
        let pad = self.tokenizer.pad_id;
        let hosts: Vec<HostBatch> = window
            .iter()
            .flat_map(|idx| idx.chunks(idx.len().div_ceil(shards)))
            .map(|idx| {
                HostBatch::collate(
                    &idx.iter().map(|i| &self.data.train[*i]).collect::<Vec<_>>(),
                    pad,
                )
            })
            .collect();
        let weights: Vec<Vec<f32>> = hosts
            .iter()
            .map(|h| position_weights(&h.labels, self.class_weights.as_deref()))
            .collect();
        let denom: f64 = weights.iter().flatten().map(|w| *w as f64).sum();
        let step_seed = mix(self.cfg.seed ^ 0xD50F, self.state.global_step as u64);
        let (device, loss_kind) = (&self.device, self.args.loss);
        let micro_step = |m: &TokenClassifier<B>, micro: usize| {
            let seed = mix(step_seed, micro as u64);
            if parallel {
                dropout_rng::seed_thread(seed);
            } else {
                B::seed(device, seed);
            }
            let (host, w) = (&hosts[micro], &weights[micro]);
            let batch = host.to_device::<B>(device);
            let logits = m.forward(batch.input_ids, batch.attention_mask);
            let loss = token_loss(loss_kind, logits, &host.labels, w, denom);
            let value = loss.clone().into_scalar().elem::<f64>();
            (value, GradientsParams::from_grads(loss.backward(), m))
        };
        let mut acc = GradientsAccumulator::<TokenClassifier<B>>::new();
        let mut window_loss = 0.0;
        let mut micro = 0;
        while micro < hosts.len() {
            let results = if parallel && micro + 1 < hosts.len() {
                // Separate autodiff graphs (fresh leaves, same parameter ids): burn locks a
                // graph for the whole backward pass. Plain threads, not rayon::join: a rayon
                // worker waiting inside one shard may run the other shard's closure, which
                // would interleave the two shards' dropout streams.
                let (a, b) = (fresh_leaves(&self.model), fresh_leaves(&self.model));
                let (ra, rb) = std::thread::scope(|scope| {
                    let other = scope.spawn(|| micro_step(&b, micro + 1));
                    let ra = micro_step(&a, micro);
                    (ra, other.join().expect("a training shard panicked"))
                });
                vec![ra, rb]
            } else {
                vec![micro_step(&self.model, micro)]
            };
            for (value, grads) in results {
                window_loss += value;
                acc.accumulate(&self.model, grads);
                micro += 1;
            }
        }
        if !window_loss.is_finite() {
            return Err(TrainError::Diverged(window_loss, self.state.global_step));
        }
        let grads = acc.grads();
        let scale = if self.args.max_grad_norm > 0.0 {
            let norm = grad_norm(&self.model, &grads);
            (self.args.max_grad_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.last_lr = self.args.learning_rate
            * lr_factor(
                self.args.lr_scheduler,
                self.state.global_step,
                self.warmup,
                self.total_steps,
            );
        self.model = self
            .optim
            .step(self.last_lr, self.model.clone(), grads, scale);
        let s = &mut self.state;
        s.global_step += 1;
        s.step_in_epoch += 1;
        s.loss_sum += window_loss;
        s.loss_count += 1;
        s.epoch_samples += window.iter().map(|b| b.len()).sum::<usize>();
        Ok(window_loss)
    }

    /// Validation, best-checkpoint and patience bookkeeping, the epoch's checkpoint and the
    /// rotation of old ones; returns the epoch's record.
    fn end_epoch(&mut self, epoch: usize) -> Result<EpochRecord, TrainError> {
        let train_seconds = self.state.epoch_seconds;
        let t = Instant::now();
        let engine = self.engine(self.model.valid());
        let eval = self.evaluate_on(&engine, &self.data.validation, &self.gold_val)?;
        let train_eval = if self.train_subset.0.is_empty() {
            None
        } else {
            let t = Instant::now();
            let out = self.evaluate_on(&engine, &self.train_subset.0, &self.train_subset.1)?;
            Some(EvalSummary::new(&out, t.elapsed().as_secs_f64()))
        };
        drop(engine);
        let metric = self.args.metric_for_best_model;
        let value = metric_value(metric, &eval);
        let (improved, significant) = match &self.state.best {
            None => (true, true),
            Some(b) => (
                better(metric, value, b.metric, 0.0),
                better(metric, value, b.metric, self.args.early_stopping_threshold),
            ),
        };
        let ckpt_name = checkpoint::dir_name(self.state.global_step);
        let s = &mut self.state;
        if improved {
            s.best = Some(Best {
                epoch: epoch + 1,
                metric: value,
                checkpoint: ckpt_name.clone(),
            });
        }
        s.patience_counter = if significant {
            0
        } else {
            s.patience_counter + 1
        };
        s.history.push(EpochRecord {
            epoch: epoch + 1,
            step: s.global_step,
            train_loss: if s.loss_count == 0 {
                0.0
            } else {
                s.loss_sum / s.loss_count as f64
            },
            eval_loss: eval.loss,
            eval: eval.metrics,
            learning_rate: self.last_lr,
            train_seconds,
            eval_seconds: t.elapsed().as_secs_f64(),
            train_samples_per_second: s.epoch_samples as f64 / train_seconds.max(1e-9),
            checkpoint: ckpt_name.clone(),
            train_eval,
        });
        s.epochs_done = epoch + 1;
        s.step_in_epoch = 0;
        s.loss_sum = 0.0;
        s.loss_count = 0;
        s.epoch_seconds = 0.0;
        s.epoch_samples = 0;
        self.save_checkpoint()?;
        let best_name = self
            .state
            .best
            .as_ref()
            .map(|b| b.checkpoint.clone())
            .unwrap_or_default();
        checkpoint::rotate(
            &self.cfg.output_dir,
            self.args.save_total_limit,
            &[best_name.as_str(), ckpt_name.as_str()],
        )?;
        Ok(self
            .state
            .history
            .last()
            .cloned()
            .expect("pushed above: this is a bug"))
    }

    /// `load_best_model_at_end`: the best checkpoint on test, exported as an HF directory.
    fn finish(
        &mut self,
        base_test: EvalSummary,
        early_stop: Option<EarlyStop>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RunOutcome, TrainError> {
        let best = self.state.best.clone().ok_or_else(|| {
            TrainError::Checkpoint("no epoch finished: no best checkpoint".into())
        })?;
        let best_dir = self.cfg.output_dir.join(&best.checkpoint);
        let weights = Weights::open_dir(&best_dir)?;
        let (best_model, _) = load_with_weights::<B::InnerBackend>(
            &self.base_config,
            &weights,
            self.cfg.dataset.labels.len(),
            HeadInit::FromCheckpoint,
            &self.device,
        )?;
        let best_model_dir = self.cfg.output_dir.join("best_model");
        self.fence()?;
        save_hf_dir(
            &best_model,
            &self.config,
            &self.cfg.model_dir,
            Some(&self.tokenizer.json),
            &best_model_dir,
        )?;
        let t = Instant::now();
        let engine = self.engine(best_model);
        let fin = self.evaluate_on(&engine, &self.data.test, &self.gold_test)?;
        let finetuned_test = EvalSummary::new(&fin, t.elapsed().as_secs_f64());
        self.log
            .test("finetuned", self.state.global_step, &finetuned_test);
        progress(Progress::FinalEvaluated {
            summary: finetuned_test.clone(),
            sentence_counts: fin.sentence_counts,
        });
        let history = &self.state.history;
        let train_seconds: f64 = history.iter().map(|e| e.train_seconds).sum();
        let samples = self.data.train.len() * history.len();
        Ok(RunOutcome {
            improvement_f1: finetuned_test.metrics.f1 - base_test.metrics.f1,
            base_test,
            finetuned_test,
            best_epoch: best.epoch,
            best_metric: best.metric,
            best_model_dir,
            epochs: history.clone(),
            stopped_early: early_stop.is_some(),
            early_stop,
            label_distribution: self.cfg.dataset.stats(),
            dropped_words: self.data.dropped_words,
            train_seconds,
            train_samples_per_second: samples as f64 / train_seconds.max(1e-9),
            num_parameters: self.model.num_params(),
            device: self.resolved.to_string(),
        })
    }
}
