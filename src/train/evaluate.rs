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
