//! Word-level sequence-labelling metrics with seqeval semantics; pure functions.
//!
//! Must not import tokio, axum or sqlx.

pub mod compare;
pub mod seqeval;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use seqeval::{Counts, Prf};

/// Why a label set cannot be scored faithfully.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "label {0:?} would be misread by seqeval (a plain label starting with B, I, E, S or O is taken as that prefix); rename it or use IOB2 (B-{0})"
    )]
    MisreadPrefix(String),
    #[error("labels {0:?} and {1:?} collide in seqeval (both become entity type {2:?})")]
    Collision(String, String, String),
    #[error("{0}")]
    Shape(String),
}

/// A label set checked for seqeval, with the map from seqeval type strings to label names.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScheme {
    pub labels: Vec<String>,
    /// seqeval type -> the name reported (`ETAPHOR` -> `METAPHOR`, `LOC` -> `LOC`).
    display: BTreeMap<String, String>,
}

fn is_prefixed(label: &str) -> bool {
    ["B-", "I-", "E-", "S-"]
        .iter()
        .any(|p| label.starts_with(p) && label.len() > 2)
}

impl LabelScheme {
    /// Validates `labels` (by id) and builds the type -> name map.
    pub fn new(labels: &[String]) -> Result<Self, MetricsError> {
        let mut display: BTreeMap<String, String> = BTreeMap::new();
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for label in labels {
            if label == "O" {
                continue;
            }
            let (_, ty) = seqeval::tag_and_type(label);
            let name = if is_prefixed(label) {
                label[2..].to_string()
            } else {
                if label.starts_with(['B', 'I', 'E', 'S', 'O']) {
                    return Err(MetricsError::MisreadPrefix(label.clone()));
                }
                label.clone()
            };
            match display.get(&ty) {
                Some(existing) if *existing != name => {
                    return Err(MetricsError::Collision(
                        owner[&ty].clone(),
                        label.clone(),
                        ty,
                    ));
                }
                _ => {
                    display.insert(ty.clone(), name);
                    owner.insert(ty, label.clone());
                }
            }
        }
        Ok(LabelScheme {
            labels: labels.to_vec(),
            display,
        })
    }

    /// The label name reported for a seqeval type.
    pub fn name_of_type(&self, ty: &str) -> String {
        self.display
            .get(ty)
            .cloned()
            .unwrap_or_else(|| ty.to_string())
    }
}

/// Overall and per-label scores (per label keyed by the real label name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub accuracy: f64,
    pub per_label: BTreeMap<String, Prf>,
}

impl Metrics {
    /// Scores word-level label sequences with seqeval semantics.
    pub fn compute<S: AsRef<str>>(
        scheme: &LabelScheme,
        gold: &[Vec<S>],
        pred: &[Vec<S>],
    ) -> Result<Self, MetricsError> {
        if gold.len() != pred.len() {
            return Err(MetricsError::Shape(format!(
                "{} gold sentences but {} predicted",
                gold.len(),
                pred.len()
            )));
        }
        for (i, (g, p)) in gold.iter().zip(pred).enumerate() {
            if g.len() != p.len() {
                return Err(MetricsError::Shape(format!(
                    "sentence {i}: {} gold labels but {} predicted",
                    g.len(),
                    p.len()
                )));
            }
        }
        let r = seqeval::report(gold, pred);
        // Every non-O label gets a row, even with no entity (support 0): a stable table.
        let mut per_label: BTreeMap<String, Prf> = scheme
            .labels
            .iter()
            .filter(|l| *l != "O")
            .map(|l| {
                (
                    scheme.name_of_type(&seqeval::tag_and_type(l).1),
                    Prf {
                        precision: 0.0,
                        recall: 0.0,
                        f1: 0.0,
                        support: 0,
                    },
                )
            })
            .collect();
        for (ty, prf) in r.per_type {
            per_label.insert(scheme.name_of_type(&ty), prf);
        }
        Ok(Metrics {
            precision: r.micro.precision,
            recall: r.micro.recall,
            f1: r.micro.f1,
            accuracy: r.accuracy,
            per_label,
        })
    }

    /// Scores label-id sequences.
    pub fn from_ids(
        scheme: &LabelScheme,
        gold: &[Vec<usize>],
        pred: &[Vec<usize>],
    ) -> Result<Self, MetricsError> {
        let names = |v: &[Vec<usize>]| -> Vec<Vec<&str>> {
            v.iter()
                .map(|s| s.iter().map(|i| scheme.labels[*i].as_str()).collect())
                .collect()
        };
        Self::compute(scheme, &names(gold), &names(pred))
    }

    /// Per-sentence entity counts of label-id sequences (see [`seqeval::sentence_counts`]).
    pub fn sentence_counts_from_ids(
        scheme: &LabelScheme,
        gold: &[Vec<usize>],
        pred: &[Vec<usize>],
    ) -> Vec<Counts> {
        let names = |v: &[Vec<usize>]| -> Vec<Vec<&str>> {
            v.iter()
                .map(|s| s.iter().map(|i| scheme.labels[*i].as_str()).collect())
                .collect()
        };
        seqeval::sentence_counts(&names(gold), &names(pred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn plain_label_reported_under_its_name() {
        let scheme = LabelScheme::new(&l(&["O", "METAPHOR"])).unwrap();
        let m =
            Metrics::compute(&scheme, &[l(&["O", "METAPHOR"])], &[l(&["O", "METAPHOR"])]).unwrap();
        assert_eq!(m.per_label.keys().collect::<Vec<_>>(), vec!["METAPHOR"]);
        assert_eq!(m.f1, 1.0);
    }

    #[test]
    fn rejects_labels_seqeval_misreads() {
        assert_eq!(
            LabelScheme::new(&l(&["O", "BODY"])),
            Err(MetricsError::MisreadPrefix("BODY".into()))
        );
        assert_eq!(
            LabelScheme::new(&l(&["O", "SIMIL"])),
            Err(MetricsError::MisreadPrefix("SIMIL".into()))
        );
        assert!(matches!(
            LabelScheme::new(&l(&["O", "MET", "NET"])),
            Err(MetricsError::Collision(..))
        ));
        assert!(matches!(
            LabelScheme::new(&l(&["O", "B-ETAPHOR", "METAPHOR"])),
            Err(MetricsError::Collision(..))
        ));
        assert!(LabelScheme::new(&l(&["O", "B-METAPHOR", "I-METAPHOR"])).is_ok());
    }

    #[test]
    fn all_o_is_zero_with_rows() {
        let scheme = LabelScheme::new(&l(&["O", "B-METAPHOR"])).unwrap();
        let m = Metrics::compute(&scheme, &[l(&["O"])], &[l(&["O"])]).unwrap();
        assert_eq!((m.f1, m.accuracy), (0.0, 1.0));
        assert_eq!(m.per_label["METAPHOR"].support, 0);
    }
}
