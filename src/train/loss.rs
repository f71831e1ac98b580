//! Token-classification losses with PyTorch's `ignore_index = -100` semantics.
//!
//! burn's `CrossEntropyLoss` has no ignore index, so positions are weighted on the host: 0 for
//! ignored tokens, the class weight (1 by default) otherwise. The sum is divided by a
//! denominator the caller gives — the summed weights of the whole gradient-accumulation window,
//! as transformers does with `num_items_in_batch`, so accumulation equals one large batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::IGNORE;

/// Loss function of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LossKind {
    /// Cross-entropy (the notebook's).
    #[default]
    CrossEntropy,
    /// Focal loss `-(1 - p_t)^gamma log p_t` (Lin et al. 2017), for rare labels.
    Focal { gamma: f64 },
}

/// Per-position weights: the class weight of the label, 0 where the label is ignored.
pub fn position_weights(labels: &[i64], class_weights: Option<&[f64]>) -> Vec<f32> {
    labels
        .iter()
        .map(|l| match (*l, class_weights) {
            (IGNORE, _) => 0.0,
            (l, Some(w)) => w[l as usize] as f32,
            (_, None) => 1.0,
        })
        .collect()
}

/// Sum of weighted per-token losses divided by `denominator`.
///
/// `logits` `[batch, seq, labels]`; `labels` and `weights` are host vectors of `batch * seq`.
pub fn token_loss<B: Backend>(
    kind: LossKind,
    logits: Tensor<B, 3>,
    labels: &[i64],
    weights: &[f32],
    denominator: f64,
) -> Tensor<B, 1> {
    let [batch, seq, num_labels] = logits.dims();
    let n = batch * seq;
    let device = logits.device();
    let targets: Vec<i32> = labels
        .iter()
        .map(|l| if *l == IGNORE { 0 } else { *l as i32 })
        .collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights.to_vec(), [n]), &device);
    let logp = log_softmax(logits.reshape([n, num_labels]), 1);
    let logp_t = logp.gather(1, targets).reshape([n]); // [n]
    let per_token = match kind {
        LossKind::CrossEntropy => logp_t.neg(),
        LossKind::Focal { gamma } => {
            let p_t = logp_t.clone().exp();
            let modulating = p_t.neg().add_scalar(1.0).clamp_min(0.0).powf_scalar(gamma);
            (modulating * logp_t).neg()
        }
    };
    (per_token * weights)
        .sum()
        .div_scalar(denominator.max(f64::MIN_POSITIVE))
}

/// "balanced" class weights (scikit-learn): `n_words / (n_labels * count[label])`; labels that
/// never occur get weight 1.
pub fn balanced_weights(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    let k = counts.len() as f64;
    counts
        .iter()
        .map(|c| {
            if *c == 0 {
                1.0
            } else {
                total as f64 / (k * *c as f64)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn ignored_positions_do_not_count() {
        let device = Default::default();
        // two positions, logits favour label 0 at both; second is ignored.
        let logits = Tensor::<Flex, 3>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 2.0, 0.0], [1, 2, 2]),
            &device,
        );
        let labels = [1, IGNORE];
        let w = position_weights(&labels, None);
        let loss = token_loss(LossKind::CrossEntropy, logits, &labels, &w, 1.0).into_scalar();
        let expected = -(f64::exp(0.0) / (f64::exp(2.0) + f64::exp(0.0))).ln();
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn focal_with_gamma_zero_is_cross_entropy() {
        let device = Default::default();
        let data = TensorData::new(vec![0.3f32, -1.0, 0.5, 0.7, 1.5, -0.2], [1, 3, 2]);
        let labels = [0, 1, 1];
        let w = position_weights(&labels, Some(&[1.0, 3.0]));
        let ce = token_loss(
            LossKind::CrossEntropy,
            Tensor::<Flex, 3>::from_data(data.clone(), &device),
            &labels,
            &w,
            7.0,
        );
        let fl = token_loss(
            LossKind::Focal { gamma: 0.0 },
            Tensor::<Flex, 3>::from_data(data, &device),
            &labels,
            &w,
            7.0,
        );
        assert!((ce.into_scalar() - fl.into_scalar()).abs() < 1e-6);
    }

    #[test]
    fn balanced_weights_like_sklearn() {
        assert_eq!(
            balanced_weights(&[90, 10]),
            vec![100.0 / 180.0, 100.0 / 20.0]
        );
    }
}
