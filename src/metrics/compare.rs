//! Comparing configurations over seeds: mean and sample standard deviation, and a paired
//! bootstrap over test sentences of the difference of two configurations' F1.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Counts;

/// Mean and sample standard deviation (n − 1, as pandas and `statistics.stdev`); the deviation
/// is `None` below two values. `None` for no values.
pub fn mean_std(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// A paired bootstrap of `mean F1(a) − mean F1(b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapDiff {
    /// The difference on the whole test set (means over each side's seeds).
    pub diff: f64,
    /// 2.5th and 97.5th percentiles of the resampled differences.
    pub ci95: [f64; 2],
    /// Share of resamples where `a` is not better than `b` (a one-sided bootstrap p-value).
    pub p_not_better: f64,
    pub resamples: usize,
    pub seed: u64,
    /// Test sentences resampled.
    pub sentences: usize,
    /// Whether the interval excludes 0.
    pub significant: bool,
}

/// F1 of the sentences `idx` (with repetition), averaged over runs (seeds).
fn mean_f1(runs: &[Vec<Counts>], idx: &[usize]) -> f64 {
    let total: f64 = runs
        .iter()
        .map(|r| {
            let mut c = Counts::default();
            for i in idx {
                c += r[*i];
            }
            c.f1()
        })
        .sum();
    total / runs.len() as f64
}

/// Paired bootstrap over test sentences: each resample draws `n` sentence indices with
/// replacement and scores both configurations on the same draw, each as the mean over its
/// runs (seeds) of the micro F1 of its per-sentence entity counts. `a` and `b` hold one
/// `Vec<Counts>` per run, all over the same `n` sentences. `None` when a side has no run or
/// the runs disagree on `n`.
pub fn paired_bootstrap(
    a: &[Vec<Counts>],
    b: &[Vec<Counts>],
    resamples: usize,
    seed: u64,
) -> Option<BootstrapDiff> {
    let n = a.first()?.len();
    if b.is_empty() || n == 0 || a.iter().chain(b).any(|r| r.len() != n) {
        return None;
    }
    let all: Vec<usize> = (0..n).collect();
    let diff = mean_f1(a, &all) - mean_f1(b, &all);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut diffs: Vec<f64> = (0..resamples)
        .map(|_| {
            for i in idx.iter_mut() {
                *i = rng.random_range(0..n);
            }
            mean_f1(a, &idx) - mean_f1(b, &idx)
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        // numpy's default (linear) percentile.
        let pos = q * (diffs.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        diffs[lo] + (diffs[hi] - diffs[lo]) * (pos - lo as f64)
    };
    let ci95 = if diffs.is_empty() {
        [diff, diff]
    } else {
        [pct(0.025), pct(0.975)]
    };
    let p_not_better =
        diffs.iter().filter(|d| **d <= 0.0).count() as f64 / diffs.len().max(1) as f64;
    Some(BootstrapDiff {
        diff,
        ci95,
        p_not_better,
        resamples,
        seed,
        sentences: n,
        significant: ci95[0] > 0.0 || ci95[1] < 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_standard_deviation() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(m, 5.0);
        // statistics.stdev([2, 4, 4, 4, 5, 5, 7, 9]) = 2.138089935299395
        assert!((s.unwrap() - 2.138_089_935_299_395).abs() < 1e-12);
        assert_eq!(mean_std(&[1.0]), Some((1.0, None)));
        assert_eq!(mean_std(&[]), None);
    }

    fn c(tp: usize, pred: usize, truth: usize) -> Counts {
        Counts { tp, pred, truth }
    }

    #[test]
    fn identical_configurations_differ_by_exactly_zero() {
        let run = vec![c(1, 1, 1), c(0, 1, 1), c(2, 2, 3), c(0, 0, 1)];
        let d = paired_bootstrap(
            std::slice::from_ref(&run),
            std::slice::from_ref(&run),
            200,
            7,
        )
        .unwrap();
        assert_eq!((d.diff, d.ci95), (0.0, [0.0, 0.0]));
        assert!(!d.significant);
    }

    #[test]
    fn a_clear_winner_is_significant_and_the_draw_is_reproducible() {
        let good: Vec<Counts> = (0..40).map(|_| c(1, 1, 1)).collect();
        let bad: Vec<Counts> = (0..40)
            .map(|i| if i % 4 == 0 { c(1, 1, 1) } else { c(0, 1, 1) })
            .collect();
        let d = paired_bootstrap(
            std::slice::from_ref(&good),
            std::slice::from_ref(&bad),
            1000,
            0,
        )
        .unwrap();
        assert!((d.diff - 0.75).abs() < 1e-12, "{d:?}");
        assert!(d.significant && d.ci95[0] > 0.5, "{d:?}");
        assert_eq!(d.p_not_better, 0.0);
        assert_eq!(paired_bootstrap(&[good], &[bad], 1000, 0).unwrap(), d);
    }

    #[test]
    fn sides_must_cover_the_same_sentences() {
        assert!(paired_bootstrap(&[vec![c(1, 1, 1)]], &[vec![]], 10, 0).is_none());
        assert!(paired_bootstrap(&[], &[vec![c(1, 1, 1)]], 10, 0).is_none());
    }
}
