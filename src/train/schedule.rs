//! Learning-rate schedules as pure functions of the optimizer step (transformers
//! `optimization.py`: `get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`,
//! `get_constant_schedule(_with_warmup)`).

use serde::{Deserialize, Serialize};

/// Schedule shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Linear decay to 0 at the last step (the Trainer's default).
    #[default]
    Linear,
    /// Half-cosine decay to 0.
    Cosine,
    /// Constant from the first step: warm-up is ignored, as transformers'
    /// `get_constant_schedule` does.
    Constant,
    /// Linear warm-up, then constant.
    ConstantWithWarmup,
}

/// Multiplier of the base learning rate for optimizer step `step` (0-based: the first update
/// uses `step = 0`), with `warmup` warm-up steps out of `total`.
pub fn lr_factor(kind: LrScheduler, step: usize, warmup: usize, total: usize) -> f64 {
    if kind == LrScheduler::Constant {
        return 1.0;
    }
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    match kind {
        LrScheduler::Constant | LrScheduler::ConstantWithWarmup => 1.0,
        LrScheduler::Linear => {
            let rest = total.saturating_sub(warmup).max(1) as f64;
            (total.saturating_sub(step) as f64 / rest).max(0.0)
        }
        LrScheduler::Cosine => {
            let rest = total.saturating_sub(warmup).max(1) as f64;
            let progress = (step - warmup) as f64 / rest;
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

/// Warm-up steps from the spec's `warmup_steps`: an integer count, or a ratio of the total
/// when below 1 (rounded up, as `TrainingArguments.get_warmup_steps`).
pub fn warmup_steps(warmup: f64, total: usize) -> usize {
    if warmup < 1.0 {
        (warmup * total as f64).ceil() as usize
    } else {
        warmup as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_without_warmup_starts_at_one_and_reaches_zero() {
        assert_eq!(lr_factor(LrScheduler::Linear, 0, 0, 10), 1.0);
        assert_eq!(lr_factor(LrScheduler::Linear, 5, 0, 10), 0.5);
        assert_eq!(lr_factor(LrScheduler::Linear, 10, 0, 10), 0.0);
    }

    #[test]
    fn linear_with_warmup() {
        assert_eq!(lr_factor(LrScheduler::Linear, 0, 4, 12), 0.0);
        assert_eq!(lr_factor(LrScheduler::Linear, 2, 4, 12), 0.5);
        assert_eq!(lr_factor(LrScheduler::Linear, 4, 4, 12), 1.0);
        assert_eq!(lr_factor(LrScheduler::Linear, 8, 4, 12), 0.5);
    }

    #[test]
    fn cosine_halfway_is_half() {
        assert!((lr_factor(LrScheduler::Cosine, 5, 0, 10) - 0.5).abs() < 1e-12);
        assert_eq!(lr_factor(LrScheduler::Constant, 7, 2, 10), 1.0);
    }

    #[test]
    fn constant_ignores_warmup_as_transformers_and_with_warmup_does_not() {
        assert_eq!(lr_factor(LrScheduler::Constant, 0, 4, 10), 1.0);
        assert_eq!(lr_factor(LrScheduler::Constant, 2, 4, 10), 1.0);
        assert_eq!(lr_factor(LrScheduler::ConstantWithWarmup, 2, 4, 10), 0.5);
        assert_eq!(lr_factor(LrScheduler::ConstantWithWarmup, 6, 4, 10), 1.0);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        assert_eq!(warmup_steps(0.1, 95), 10);
        assert_eq!(warmup_steps(3.0, 95), 3);
        assert_eq!(warmup_steps(0.0, 95), 0);
    }
}
