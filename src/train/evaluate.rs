//! Batched evaluation on an inference [`Engine`]: validation loss, token argmax, word-level
//! predictions (first sub-token, as the notebook's `compute_metrics`) and seqeval metrics.

use burn::tensor::backend::Backend;

use crate::data::IGNORE;
use crate::data::align::{Example, word_predictions};
use crate::infer::aggregate::argmax;
use crate::infer::engine::Engine;
use crate::metrics::{LabelScheme, Metrics};

use super::TrainError;

/// Predictions and scores on one split.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Mean cross-entropy over label tokens, averaged over batches weighted by their size
    /// (the Trainer's `eval_loss`).
    pub loss: f64,
    pub metrics: Metrics,
    /// Per sentence, the predicted label id of every word kept after truncation.
    pub word_preds: Vec<Vec<Option<usize>>>,
    /// Per sentence, its entity counts (they add up to `metrics`' micro average).
    pub sentence_counts: Vec<crate::metrics::Counts>,
}

/// Cross-entropy of one token's logits at `label` (log-sum-exp in f64).
fn token_cross_entropy(logits: &[f32], label: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|x| (*x as f64 - max).exp()).sum();
    max + sum.ln() - logits[label] as f64
}

/// Token-level argmax for every example, in input order, plus the evaluation loss. Batches of
/// `batch_size` sentences of similar length.
pub fn predict<B: Backend>(
    engine: &Engine<B>,
    examples: &[Example],
    batch_size: usize,
) -> (Vec<Vec<usize>>, f64) {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|i| examples[*i].input_ids.len());
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let c = engine.num_labels();
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<&[u32]> = chunk
            .iter()
            .map(|i| examples[*i].input_ids.as_slice())
            .collect();
        let (mut batch_loss, mut label_tokens) = (0.0, 0usize);
        for (idx, logits) in chunk.iter().zip(engine.logits(&seqs)) {
            let ex = &examples[*idx];
            for (row, label) in logits.chunks_exact(c).zip(&ex.labels) {
                if *label != IGNORE {
                    batch_loss += token_cross_entropy(row, *label as usize);
                    label_tokens += 1;
                }
            }
            preds[*idx] = logits.chunks_exact(c).map(argmax).collect();
        }
        if label_tokens > 0 {
            loss_sum += batch_loss / label_tokens as f64 * chunk.len() as f64;
            loss_n += chunk.len();
        }
    }
    let loss = if loss_n == 0 {
        0.0
    } else {
        loss_sum / loss_n as f64
    };
    (preds, loss)
}

/// Evaluates `examples` whose gold word labels are `gold` (label ids per word).
pub fn evaluate<B: Backend>(
    engine: &Engine<B>,
    examples: &[Example],
    gold: &[Vec<i64>],
    scheme: &LabelScheme,
    batch_size: usize,
) -> Result<EvalOutput, TrainError> {
    let (token_preds, loss) = predict(engine, examples, batch_size);
    let mut word_preds = Vec::with_capacity(examples.len());
    let (mut g_all, mut p_all) = (
        Vec::with_capacity(examples.len()),
        Vec::with_capacity(examples.len()),
    );
    for ((ex, tp), g) in examples.iter().zip(&token_preds).zip(gold) {
        let wp = word_predictions(&ex.word_ids, tp, ex.num_words);
        // Words truncated away have no prediction; like the notebook they are not scored
        // (their number is reported as dropped_words).
        let (gs, ps): (Vec<usize>, Vec<usize>) = g
            .iter()
            .zip(&wp)
            .filter_map(|(g, p)| p.map(|p| (*g as usize, p)))
            .unzip();
        g_all.push(gs);
        p_all.push(ps);
        word_preds.push(wp);
    }
    let metrics = Metrics::from_ids(scheme, &g_all, &p_all)?;
    Ok(EvalOutput {
        loss,
        metrics,
        word_preds,
        sentence_counts: Metrics::sentence_counts_from_ids(scheme, &g_all, &p_all),
    })
}

/// Evaluates the model in `dir` on `split` on the CPU engine in f32 and in `precision`.
pub fn compare_precision(
    dir: &std::path::Path,
    split: &crate::data::dataset::Split,
    precision: crate::infer::Precision,
    batch_size: usize,
) -> Result<crate::infer::PrecisionComparison, String> {
    use crate::model::backend::{BackendTask, Resolved, dispatch};
    struct Task<'a>(
        &'a std::path::Path,
        &'a crate::data::dataset::Split,
        crate::infer::Precision,
        usize,
    );
    impl BackendTask for Task<'_> {
        type Output = Result<crate::infer::PrecisionComparison, String>;
        fn run<B: burn::tensor::backend::AutodiffBackend>(
            self,
            device: B::Device,
            resolved: Resolved,
        ) -> Self::Output {
            let Task(dir, split, precision, batch) = self;
            let t = std::time::Instant::now();
            let (model, config, _) = crate::model::load_token_classifier::<B::InnerBackend>(
                dir,
                None,
                crate::model::HeadInit::FromCheckpoint,
                &device,
            )
            .map_err(|e| e.to_string())?;
            let labels = config
                .labels()
                .ok_or_else(|| "the model's config.json has no id2label".to_string())?;
            let tokenizer = crate::data::Tokenizer::from_dir(dir).map_err(|e| e.to_string())?;
            let max_len = super::trainer::max_len(&config, &tokenizer, 512);
            let (examples, _) = super::trainer::encode_split(split, &tokenizer, max_len)
                .map_err(|e| e.to_string())?;
            let gold: Vec<Vec<i64>> = split.sentences.iter().map(|s| s.tags.clone()).collect();
            let scheme = LabelScheme::new(&labels).map_err(|e| e.to_string())?;
            let run = |p| -> Result<EvalOutput, String> {
                let engine = Engine::with_precision(model.clone(), &config, resolved, &device, p)
                    .map_err(|e| e.to_string())?;
                evaluate(&engine, &examples, &gold, &scheme, batch).map_err(|e| e.to_string())
            };
            let full = run(crate::infer::Precision::F32)?;
            let reduced = run(precision)?;
            let (mut words, mut changed) = (0, 0);
            for (a, b) in full.word_preds.iter().zip(&reduced.word_preds) {
                for (x, y) in a.iter().zip(b) {
                    words += 1;
                    changed += (x != y) as usize;
                }
            }
            Ok(crate::infer::PrecisionComparison {
                precision,
                split: split.name.clone(),
                sentences: split.sentences.len(),
                f1_f32: full.metrics.f1,
                f1: reduced.metrics.f1,
                f1_delta: reduced.metrics.f1 - full.metrics.f1,
                words_changed: changed,
                words,
                seconds: t.elapsed().as_secs_f64(),
            })
        }
    }
    dispatch(Resolved::Cpu, Task(dir, split, precision, batch_size))
}
