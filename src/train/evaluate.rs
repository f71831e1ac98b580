//! Batched evaluation: validation loss, token argmax, word-level predictions (first
//! sub-token, as the notebook's `compute_metrics`) and seqeval metrics.

use burn::tensor::backend::Backend;

use crate::data::align::{Example, word_predictions};
use crate::data::batch::HostBatch;
use crate::metrics::{LabelScheme, Metrics};
use crate::model::RobertaForTokenClassification;

use super::TrainError;
use super::loss::{LossKind, position_weights, token_loss};

/// Predictions and scores on one split.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Mean cross-entropy over label tokens, averaged over batches weighted by their size
    /// (the Trainer's `eval_loss`).
    pub loss: f64,
    pub metrics: Metrics,
    /// Per sentence, the predicted label id of every word kept after truncation.
    pub word_preds: Vec<Vec<Option<usize>>>,
}

/// Token-level argmax for every example, in input order, plus the evaluation loss.
pub fn predict<B: Backend>(
    model: &RobertaForTokenClassification<B>,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> (Vec<Vec<usize>>, f64) {
    // Batches of similar length pad less; the order is restored below.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|i| examples[*i].input_ids.len());
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let packed = model.pack_for_cpu();
    for chunk in order.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().map(|i| &examples[*i]).collect();
        let host = HostBatch::collate(&refs, pad_id);
        let batch = host.to_device::<B>(device);
        let logits = model.forward_packed(packed.as_ref(), batch.input_ids, batch.attention_mask); // [batch, seq, labels]
        let n_label = host.num_label_tokens();
        if n_label > 0 {
            let w = position_weights(&host.labels, None);
            let l = token_loss(
                LossKind::CrossEntropy,
                logits.clone(),
                &host.labels,
                &w,
                n_label as f64,
            );
            loss_sum += l.into_scalar().elem::<f64>() * chunk.len() as f64;
            loss_n += chunk.len();
        }
        let arg = logits.argmax(2).into_data(); // [batch, seq, 1]
        let arg: Vec<i64> = arg
            .convert::<i64>()
            .to_vec()
            .expect("argmax as i64: this is a bug");
        for (row, idx) in chunk.iter().enumerate() {
            let len = examples[*idx].input_ids.len();
            preds[*idx] = arg[row * host.seq..row * host.seq + len]
                .iter()
                .map(|x| *x as usize)
                .collect();
        }
    }
    (
        preds,
        if loss_n == 0 {
            0.0
        } else {
            loss_sum / loss_n as f64
        },
    )
}

use burn::tensor::ElementConversion;

/// Evaluates `examples` whose gold word labels are `gold` (label ids per word).
pub fn evaluate<B: Backend>(
    model: &RobertaForTokenClassification<B>,
    examples: &[Example],
    gold: &[Vec<i64>],
    scheme: &LabelScheme,
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Result<EvalOutput, TrainError> {
    let (token_preds, loss) = predict(model, examples, batch_size, pad_id, device);
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
    })
}
