//! The training loop (HF `Trainer.train` with eval/save every epoch and
//! `load_best_model_at_end`), written out explicitly.
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
use crate::data::{Dataset, RobertaTokenizer};
use crate::metrics::LabelScheme;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::export::save_hf_dir;
use crate::model::loader::{HeadInit, load_with_weights};
use crate::model::roberta::{host_rng, is_cpu_autodiff};
use crate::model::weights::Weights;
use crate::model::{RobertaConfig, RobertaForTokenClassification};

use super::args::{BestMetric, ClassWeights};
use super::checkpoint::{self, Best, EvalSummary, TrainerState};
use super::evaluate::{EvalOutput, evaluate};
use super::loss::{balanced_weights, position_weights, token_loss};
use super::optim::{AdamW, AdamWConfig, grad_norm};
use super::schedule::{lr_factor, warmup_steps};
use super::{
    CancelToken, EpochRecord, Progress, RunConfig, RunOutcome, StopReason, TrainError,
    train_label_counts,
};

/// splitmix64: decorrelated seeds from (seed, counter).
pub fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Micro-batches per batch when training on the CPU backend.
const CPU_SHARDS: usize = 2;

/// A copy of the model whose parameters are new autodiff leaves with the same ids and values:
/// its graph is its own, and its gradients accumulate into the original's by id.
fn fresh_leaves<B: AutodiffBackend>(
    model: &RobertaForTokenClassification<B>,
) -> RobertaForTokenClassification<B> {
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
    split: &crate::data::Split,
    tokenizer: &RobertaTokenizer,
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
    tokenizer: &RobertaTokenizer,
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
pub fn max_len(config: &RobertaConfig, tokenizer: &RobertaTokenizer, requested: usize) -> usize {
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
            run_on::<B>(
                self.cfg,
                self.resume,
                self.cancel,
                self.progress,
                &device,
                resolved,
            )
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

fn run_on<B: AutodiffBackend>(
    cfg: &RunConfig,
    resume: bool,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(Progress),
    device: &B::Device,
    resolved: Resolved,
) -> Result<RunOutcome, TrainError> {
    let args = &cfg.args;
    let labels = &cfg.dataset.labels;
    let num_labels = labels.len();
    args.validate(Some(num_labels))?;
    let scheme = LabelScheme::new(labels)?;
    let tokenizer = RobertaTokenizer::from_dir(&cfg.model_dir)?;
    let base_config = RobertaConfig::from_dir(&cfg.model_dir)?;
    let config = base_config.clone().with_labels(labels);
    let max_len = max_len(&base_config, &tokenizer, args.max_length);
    let data = prepare(&cfg.dataset, &tokenizer, max_len)?;
    let gold = |split: &crate::data::Split| -> Vec<Vec<i64>> {
        split.sentences.iter().map(|s| s.tags.clone()).collect()
    };
    let (gold_val, gold_test) = (gold(&cfg.dataset.validation), gold(&cfg.dataset.test));
    let class_weights: Option<Vec<f64>> = match &args.class_weights {
        None => None,
        Some(ClassWeights::Named(_)) => Some(balanced_weights(&train_label_counts(&cfg.dataset))),
        Some(ClassWeights::Explicit(w)) => Some(w.clone()),
    };

    std::fs::create_dir_all(&cfg.output_dir).map_err(|e| TrainError::io(&cfg.output_dir, e))?;
    let resumed = if resume {
        checkpoint::latest(&cfg.output_dir)?
    } else {
        None
    };
    if !resume {
        clear_previous(&cfg.output_dir)?;
    }

    // Model: a checkpoint to resume, or the base checkpoint with a head.
    let (mut model, mut state, resumed_from): (
        RobertaForTokenClassification<B>,
        TrainerState,
        Option<String>,
    ) = match &resumed {
        Some((dir, state)) => {
            let weights = Weights::open_dir(dir)?;
            let (m, _) = load_with_weights::<B>(
                &base_config,
                &weights,
                num_labels,
                HeadInit::FromCheckpoint,
                device,
            )?;
            (m, state.clone(), Some(dir.display().to_string()))
        }
        None => {
            let weights = Weights::open_dir(&cfg.model_dir)?;
            let has_head = weights.entries.contains_key("classifier.weight");
            let head = if has_head && base_config.labels().as_deref() == Some(labels.as_slice()) {
                HeadInit::FromCheckpoint
            } else {
                HeadInit::Fresh { seed: cfg.seed }
            };
            let (m, report) =
                load_with_weights::<B>(&base_config, &weights, num_labels, head, device)?;
            tracing::info!(format = ?report.format, head = report.head, ignored = report.ignored.len(), params = report.num_parameters, "loaded base checkpoint");
            let state = TrainerState {
                global_step: 0,
                epochs_done: 0,
                step_in_epoch: 0,
                loss_sum: 0.0,
                loss_count: 0,
                epoch_seconds: 0.0,
                epoch_samples: 0,
                best: None,
                patience_counter: 0,
                history: vec![],
                base_test: None,
                seed: cfg.seed,
            };
            (m, state, None)
        }
    };
    let num_parameters = {
        use burn::module::Module;
        model.num_params()
    };

    let bs = args.per_device_train_batch_size;
    let ga = args.gradient_accumulation_steps;
    let batches_per_epoch = data.train.len().div_ceil(bs);
    let steps_per_epoch = batches_per_epoch.div_ceil(ga);
    let total_steps = steps_per_epoch * args.num_train_epochs;
    let warmup = warmup_steps(args.warmup_steps, total_steps);
    let pad = tokenizer.pad_id;

    progress(Progress::Prepared {
        device: resolved.to_string(),
        train_sentences: data.train.len(),
        steps_per_epoch,
        total_steps,
        epochs: args.num_train_epochs,
        dropped_words: data.dropped_words,
        label_distribution: cfg.dataset.stats(),
        warnings: cfg.dataset.imbalance_warnings(),
        resumed_from: resumed_from.clone(),
    });

    // Base model (pretrained encoder + fresh head) on test, before any step.
    let base_test = match &state.base_test {
        Some(b) => b.clone(),
        None => {
            let t = Instant::now();
            let out = evaluate(
                &model.valid(),
                &data.test,
                &gold_test,
                &scheme,
                args.per_device_eval_batch_size,
                pad,
                device,
            )?;
            let s = EvalSummary::new(&out, t.elapsed().as_secs_f64());
            state.base_test = Some(s.clone());
            s
        }
    };
    progress(Progress::BaseEvaluated {
        summary: base_test.clone(),
    });

    let mut optim = AdamW::<B>::new(AdamWConfig {
        weight_decay: args.weight_decay,
        ..Default::default()
    });
    if let Some((dir, st)) = &resumed {
        optim
            .load_state(
                st.global_step as u64,
                checkpoint::read_optimizer(dir)?,
                device,
            )
            .map_err(TrainError::Checkpoint)?;
    }

    // Shards: on the CPU backend each batch trains as two halves on two threads (burn-flex
    // parallelises only large matrix products; the halves keep both cores busy). A fixed split,
    // not the machine's core count, so a seed gives the same run everywhere.
    let parallel = is_cpu_autodiff::<B>(device);
    let shards = if parallel { CPU_SHARDS } else { 1 };
    let mut stopped_early = false;
    let mut last_lr = 0.0;
    'epochs: for epoch in state.epochs_done..args.num_train_epochs {
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(cfg.seed, epoch as u64)));
        let batches: Vec<&[usize]> = order.chunks(bs).collect();
        let windows: Vec<&[&[usize]]> = batches.chunks(ga).collect();
        let mut t_epoch = Instant::now();
        for window in windows.iter().skip(state.step_in_epoch) {
            if let Some(reason) = cancel.reason() {
                match reason {
                    StopReason::Cancel => return Err(TrainError::Cancelled),
                    StopReason::Shutdown => {
                        state.epoch_seconds += t_epoch.elapsed().as_secs_f64();
                        let dir =
                            checkpoint::save(&cfg.output_dir, &model, &config, &optim, &state)?;
                        return Err(TrainError::Interrupted {
                            checkpoint: dir.display().to_string(),
                        });
                    }
                }
            }
            let t_step = Instant::now();
            // Each batch is split into `shards` micro-batches (same loss: one denominator for
            // the window), run two at a time on the CPU backend.
            let hosts: Vec<HostBatch> = window
                .iter()
                .flat_map(|idx| idx.chunks(idx.len().div_ceil(shards)))
                .map(|idx| {
                    HostBatch::collate(
                        &idx.iter().map(|i| &data.train[*i]).collect::<Vec<_>>(),
                        pad,
                    )
                })
                .collect();
            let weights: Vec<Vec<f32>> = hosts
                .iter()
                .map(|h| position_weights(&h.labels, class_weights.as_deref()))
                .collect();
            let denom: f64 = weights.iter().flatten().map(|w| *w as f64).sum();
            let mut acc = GradientsAccumulator::<RobertaForTokenClassification<B>>::new();
            let mut window_loss = 0.0;
            let step_seed = mix(cfg.seed ^ 0xD50F, state.global_step as u64);
            let micro_step = |m: &RobertaForTokenClassification<B>, micro: usize| {
                let seed = mix(step_seed, micro as u64);
                B::seed(device, seed);
                host_rng::reseed(seed);
                let (host, w) = (&hosts[micro], &weights[micro]);
                let batch = host.to_device::<B>(device);
                let logits = m.forward(batch.input_ids, batch.attention_mask);
                let loss = token_loss(args.loss, logits, &host.labels, w, denom);
                let value = loss.clone().into_scalar().elem::<f64>();
                (value, GradientsParams::from_grads(loss.backward(), m))
            };
            let mut micro = 0;
            while micro < hosts.len() {
                let results = if parallel && micro + 1 < hosts.len() {
                    // Separate autodiff graphs (fresh leaves, same parameter ids): burn locks a
                    // graph for the whole backward pass. Plain threads, not rayon::join: a
                    // rayon worker waiting inside one shard may run the other shard's closure,
                    // which would interleave the two shards' dropout streams.
                    let (a, b) = (fresh_leaves(&model), fresh_leaves(&model));
                    let (ra, rb) = std::thread::scope(|scope| {
                        let other = scope.spawn(|| micro_step(&b, micro + 1));
                        let ra = micro_step(&a, micro);
                        (ra, other.join().expect("a training shard panicked"))
                    });
                    vec![ra, rb]
                } else {
                    vec![micro_step(&model, micro)]
                };
                for (value, grads) in results {
                    window_loss += value;
                    acc.accumulate(&model, grads);
                    micro += 1;
                }
            }
            if !window_loss.is_finite() {
                return Err(TrainError::Diverged(window_loss, state.global_step));
            }
            let grads = acc.grads();
            let scale = if args.max_grad_norm > 0.0 {
                let norm = grad_norm(&model, &grads);
                (args.max_grad_norm / (norm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            last_lr = args.learning_rate
                * lr_factor(args.lr_scheduler, state.global_step, warmup, total_steps);
            model = optim.step(last_lr, model, grads, scale);
            state.global_step += 1;
            state.step_in_epoch += 1;
            state.loss_sum += window_loss;
            state.loss_count += 1;
            state.epoch_samples += window.iter().map(|b| b.len()).sum::<usize>();
            progress(Progress::Step {
                epoch: epoch + 1,
                epochs: args.num_train_epochs,
                step: state.global_step,
                total_steps,
                loss: window_loss,
                learning_rate: last_lr,
                seconds_per_step: t_step.elapsed().as_secs_f64(),
            });
        }
        let train_seconds = state.epoch_seconds + t_epoch.elapsed().as_secs_f64();
        t_epoch = Instant::now();
        let eval = evaluate(
            &model.valid(),
            &data.validation,
            &gold_val,
            &scheme,
            args.per_device_eval_batch_size,
            pad,
            device,
        )?;
        let value = metric_value(args.metric_for_best_model, &eval);
        let improved = match &state.best {
            None => true,
            Some(b) => better(args.metric_for_best_model, value, b.metric, 0.0),
        };
        let significant = match &state.best {
            None => true,
            Some(b) => better(
                args.metric_for_best_model,
                value,
                b.metric,
                args.early_stopping_threshold,
            ),
        };
        let ckpt_name = checkpoint::dir_name(state.global_step);
        if improved {
            state.best = Some(Best {
                epoch: epoch + 1,
                metric: value,
                checkpoint: ckpt_name.clone(),
            });
        }
        state.patience_counter = if significant {
            0
        } else {
            state.patience_counter + 1
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            step: state.global_step,
            train_loss: if state.loss_count == 0 {
                0.0
            } else {
                state.loss_sum / state.loss_count as f64
            },
            eval_loss: eval.loss,
            eval: eval.metrics.clone(),
            learning_rate: last_lr,
            train_seconds,
            eval_seconds: 0.0,
            train_samples_per_second: state.epoch_samples as f64 / train_seconds.max(1e-9),
            checkpoint: ckpt_name.clone(),
        };
        state.history.push(record);
        state.epochs_done = epoch + 1;
        state.step_in_epoch = 0;
        state.loss_sum = 0.0;
        state.loss_count = 0;
        state.epoch_seconds = 0.0;
        state.epoch_samples = 0;
        let stop = args
            .early_stopping_patience
            .is_some_and(|p| state.patience_counter >= p);
        let eval_seconds = t_epoch.elapsed().as_secs_f64();
        if let Some(last) = state.history.last_mut() {
            last.eval_seconds = eval_seconds;
        }
        checkpoint::save(&cfg.output_dir, &model, &config, &optim, &state)?;
        let best_name = state
            .best
            .as_ref()
            .map(|b| b.checkpoint.clone())
            .unwrap_or_default();
        checkpoint::rotate(
            &cfg.output_dir,
            args.save_total_limit,
            &[best_name.as_str(), ckpt_name.as_str()],
        )?;
        progress(Progress::Epoch {
            record: state
                .history
                .last()
                .cloned()
                .expect("pushed above: this is a bug"),
        });
        if stop {
            stopped_early = true;
            tracing::info!(epoch = epoch + 1, "early stopping");
            break 'epochs;
        }
    }

    // load_best_model_at_end, then the best model on test.
    let best = state
        .best
        .clone()
        .ok_or_else(|| TrainError::Checkpoint("no epoch finished: no best checkpoint".into()))?;
    let best_dir = cfg.output_dir.join(&best.checkpoint);
    let weights = Weights::open_dir(&best_dir)?;
    let (best_model, _) = load_with_weights::<B::InnerBackend>(
        &base_config,
        &weights,
        num_labels,
        HeadInit::FromCheckpoint,
        device,
    )?;
    let t = Instant::now();
    let fin = evaluate(
        &best_model,
        &data.test,
        &gold_test,
        &scheme,
        args.per_device_eval_batch_size,
        pad,
        device,
    )?;
    let finetuned_test = EvalSummary::new(&fin, t.elapsed().as_secs_f64());
    progress(Progress::FinalEvaluated {
        summary: finetuned_test.clone(),
    });
    let best_model_dir = cfg.output_dir.join("best_model");
    save_hf_dir(
        &best_model,
        &config,
        &cfg.model_dir,
        Some(&tokenizer.json),
        &best_model_dir,
    )?;

    let train_seconds: f64 = state.history.iter().map(|e| e.train_seconds).sum();
    let samples = data.train.len() * state.history.len();
    Ok(RunOutcome {
        improvement_f1: finetuned_test.metrics.f1 - base_test.metrics.f1,
        base_test,
        finetuned_test,
        best_epoch: best.epoch,
        best_metric: best.metric,
        best_model_dir,
        epochs: state.history,
        stopped_early,
        label_distribution: cfg.dataset.stats(),
        dropped_words: data.dropped_words,
        train_seconds,
        train_samples_per_second: samples as f64 / train_seconds.max(1e-9),
        num_parameters,
        device: resolved.to_string(),
    })
}
