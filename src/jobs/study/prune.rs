//! Pruning decisions: pure functions of one trial's validation metric and its peers' at the
//! same epoch, and the [`EpochGate`] a trial's training thread asks after every epoch.

use std::sync::Arc;

use crate::store::Pool;

use super::{HalvingRule, MedianRule, Pruning};
use crate::store;
use crate::train::args::BestMetric;
use crate::train::{EpochGate, EpochRecord};

/// Value of `metric` in an epoch's validation.
pub fn epoch_value(metric: BestMetric, r: &EpochRecord) -> f64 {
    match metric {
        BestMetric::F1 => r.eval.f1,
        BestMetric::Precision => r.eval.precision,
        BestMetric::Recall => r.eval.recall,
        BestMetric::Accuracy => r.eval.accuracy,
        BestMetric::Loss => r.eval_loss,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median rule: after `after_epochs`, stop when strictly worse than the median of the peers
/// (fewer than `min_peers`: go on).
pub fn median_stops(
    rule: &MedianRule,
    epoch: usize,
    mine: f64,
    peers: &[f64],
    higher_is_better: bool,
) -> Option<String> {
    if epoch < rule.after_epochs || peers.len() < rule.min_peers.max(1) {
        return None;
    }
    let m = median(peers.to_vec());
    let worse = if higher_is_better { mine < m } else { mine > m };
    worse.then(|| {
        format!(
            "{mine:.4} at epoch {epoch} is worse than the median {m:.4} of {} other trials",
            peers.len()
        )
    })
}

/// Successive halving: at a rung epoch, go on only within the best `ceil(n / factor)` of the
/// `n` trials (this one included) that reached it; off the rungs, go on.
pub fn halving_stops(
    rule: &HalvingRule,
    epoch: usize,
    mine: f64,
    peers: &[f64],
    higher_is_better: bool,
) -> Option<String> {
    let mut rung = rule.min_epochs;
    while rung < epoch {
        rung = rung.saturating_mul(rule.reduction_factor);
    }
    if rung != epoch {
        return None;
    }
    let n = peers.len() + 1;
    let keep = n.div_ceil(rule.reduction_factor);
    let better = peers
        .iter()
        .filter(|p| {
            if higher_is_better {
                **p > mine
            } else {
                **p < mine
            }
        })
        .count();
    (better >= keep).then(|| {
        format!(
            "{mine:.4} at epoch {epoch} ranks {} of {n} trials at this rung; the best {keep} go on",
            better + 1
        )
    })
}

/// The decision of `rule` for a trial whose validation history is `history`.
pub fn decide(
    rule: &Pruning,
    metric: BestMetric,
    history: &[EpochRecord],
    peers: &[f64],
) -> Option<String> {
    let last = history.last()?;
    let mine = epoch_value(metric, last);
    let higher = metric.higher_is_better();
    let why = match rule {
        Pruning::Median(m) => median_stops(m, last.epoch, mine, peers, higher),
        Pruning::Halving(h) => halving_stops(h, last.epoch, mine, peers, higher),
    }?;
    Some(format!("validation {} {why}", metric.as_str()))
}

/// Asks the store for the peers of a running trial: the study's trials of the same model and
/// another configuration, at the same epoch. Runs on the training thread, blocking on the
/// runtime.
pub struct StudyGate {
    pub pool: Pool,
    pub runtime: tokio::runtime::Handle,
    pub study_id: String,
    pub job_id: String,
    pub model: String,
    /// The trial's searched parameters as stored (JSON): peers with the same are its seeds.
    pub params: Option<String>,
    pub rule: Pruning,
    pub metric: BestMetric,
}

impl StudyGate {
    pub fn arc(self) -> Arc<dyn EpochGate> {
        Arc::new(self)
    }
}

impl EpochGate for StudyGate {
    fn stop_after(&self, history: &[EpochRecord]) -> Option<String> {
        let epoch = history.last()?.epoch as i64;
        let peers = self.runtime.block_on(store::studies::peer_epochs(
            &self.pool,
            &self.study_id,
            &self.job_id,
            epoch,
        ));
        let peers = match peers {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job = %self.job_id, error = %e, "pruning: peers unreadable; going on");
                return None;
            }
        };
        let values: Vec<f64> = peers
            .iter()
            .filter(|(job, _)| {
                job.params != self.params
                    && serde_json::from_str::<crate::jobs::spec::JobSpec>(&job.spec)
                        .is_ok_and(|s| s.model.display_name() == self.model)
            })
            .map(|(_, e)| match self.metric {
                BestMetric::F1 => e.f1,
                BestMetric::Precision => e.precision,
                BestMetric::Recall => e.recall,
                BestMetric::Accuracy => e.accuracy,
                BestMetric::Loss => e.eval_loss,
            })
            .collect();
        decide(&self.rule, self.metric, history, &values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_rule() {
        let r = MedianRule {
            after_epochs: 2,
            min_peers: 1,
        };
        assert_eq!(
            median_stops(&r, 1, 0.1, &[0.5, 0.6], true),
            None,
            "too early"
        );
        assert_eq!(
            median_stops(&r, 2, 0.5, &[0.4, 0.6], true),
            None,
            "at the median"
        );
        assert!(median_stops(&r, 2, 0.49, &[0.4, 0.6], true).is_some());
        assert_eq!(median_stops(&r, 3, 0.1, &[], true), None, "no peers");
        let two = MedianRule {
            after_epochs: 1,
            min_peers: 2,
        };
        assert_eq!(
            median_stops(&two, 3, 0.1, &[0.9], true),
            None,
            "one peer of two"
        );
        assert!(median_stops(&two, 3, 0.1, &[0.9, 0.8], true).is_some());
        // Loss: lower is better.
        assert!(median_stops(&r, 2, 0.9, &[0.2, 0.3, 0.4], false).is_some());
        assert_eq!(median_stops(&r, 2, 0.25, &[0.2, 0.3, 0.4], false), None);
    }

    #[test]
    fn halving_rungs_keep_the_top_third() {
        let r = HalvingRule {
            min_epochs: 1,
            reduction_factor: 3,
        };
        // Rungs at epochs 1, 3, 9.
        assert_eq!(
            halving_stops(&r, 2, 0.0, &[0.9, 0.9], true),
            None,
            "not a rung"
        );
        // Alone at a rung: the best 1 of 1 goes on.
        assert_eq!(halving_stops(&r, 1, 0.1, &[], true), None);
        // 3 trials: only the best goes on.
        assert!(halving_stops(&r, 3, 0.5, &[0.6, 0.4], true).is_some());
        assert_eq!(halving_stops(&r, 3, 0.7, &[0.6, 0.4], true), None);
        // 4 trials: the best 2 go on.
        assert_eq!(halving_stops(&r, 9, 0.5, &[0.6, 0.4, 0.3], true), None);
        assert!(halving_stops(&r, 9, 0.35, &[0.6, 0.4, 0.3], true).is_some());
    }
}
