//! A port of seqeval 1.2.2's default (lenient, "conlleval") mode.
//!
//! `get_entities`, `precision_recall_fscore_support` and `accuracy_score` from
//! <https://github.com/chakki-works/seqeval/blob/v1.2.2/seqeval/metrics/sequence_labeling.py>,
//! computed in f64 in the same order so the numbers are bit-identical. Types are seqeval's
//! type strings (`ETAPHOR` for the plain label `METAPHOR`); [`super::LabelScheme`] maps them
//! back to label names.

use std::collections::{BTreeMap, BTreeSet};

/// An entity: (type, first index, last index) in the flattened sequence.
pub type Entity = (String, usize, usize);

/// seqeval's (tag, type) split of a label: `B-LOC` -> (`B`, `LOC`), `METAPHOR` -> (`M`, `ETAPHOR`),
/// `O` -> (`O`, `_`).
pub fn tag_and_type(chunk: &str) -> (char, String) {
    let mut chars = chunk.chars();
    let tag = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    // chunk[1:].split('-', maxsplit=1)[-1] or '_'
    let ty = match rest.split_once('-') {
        Some((_, after)) => after,
        None => rest,
    };
    (
        tag,
        if ty.is_empty() {
            "_".to_string()
        } else {
            ty.to_string()
        },
    )
}

fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (prev_tag == 'B' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag == 'I' && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty)
}

fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// seqeval `get_entities` over sentences (flattened with an `O` after each sentence).
pub fn get_entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Vec<Entity> {
    let flat = sentences
        .iter()
        .flat_map(|s| s.iter().map(|x| x.as_ref()).chain(std::iter::once("O")));
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    let mut chunks = Vec::new();
    for (i, chunk) in flat.chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = tag_and_type(chunk);
        if end_of_chunk(prev_tag, tag, &prev_type, &ty) {
            chunks.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, &ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty;
    }
    chunks
}

/// Precision, recall, F1 and support of one type (or of the micro average).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

impl Prf {
    /// seqeval's `_prf_divide` with zero_division -> 0 and `beta = 1`.
    fn from_counts(tp: usize, pred: usize, truth: usize) -> Self {
        let precision = if pred == 0 {
            0.0
        } else {
            tp as f64 / pred as f64
        };
        let recall = if truth == 0 {
            0.0
        } else {
            tp as f64 / truth as f64
        };
        let denom = 1.0 * precision + recall;
        let f1 = if denom == 0.0 {
            0.0
        } else {
            (1.0 + 1.0) * precision * recall / denom
        };
        Prf {
            precision,
            recall,
            f1,
            support: truth,
        }
    }
}

/// seqeval's classification report in default mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Micro average over all types.
    pub micro: Prf,
    /// Token accuracy over every position.
    pub accuracy: f64,
    /// Per seqeval type string, sorted.
    pub per_type: BTreeMap<String, Prf>,
}

/// Entity counts of the micro average: true positives, predicted and gold entities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub tp: usize,
    pub pred: usize,
    pub truth: usize,
}

impl Counts {
    /// seqeval's micro F1 of these counts.
    pub fn f1(self) -> f64 {
        Prf::from_counts(self.tp, self.pred, self.truth).f1
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.tp += o.tp;
        self.pred += o.pred;
        self.truth += o.truth;
    }
}

/// Micro-average entity counts of each sentence. seqeval puts an `O` after every sentence, so
/// no entity spans two and the sentences' counts add up to the corpus's: what a bootstrap
/// over sentences resamples.
pub fn sentence_counts<S: AsRef<str>>(y_true: &[Vec<S>], y_pred: &[Vec<S>]) -> Vec<Counts> {
    y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| {
            let truth: BTreeSet<Entity> =
                get_entities(std::slice::from_ref(t)).into_iter().collect();
            let pred: BTreeSet<Entity> =
                get_entities(std::slice::from_ref(p)).into_iter().collect();
            Counts {
                tp: truth.intersection(&pred).count(),
                pred: pred.len(),
                truth: truth.len(),
            }
        })
        .collect()
}

/// Computes seqeval's report. `y_true` and `y_pred` must have the same shape.
pub fn report<S: AsRef<str>>(y_true: &[Vec<S>], y_pred: &[Vec<S>]) -> Report {
    let mut truth: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
    let mut pred: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
    for (ty, s, e) in get_entities(y_true) {
        truth.entry(ty).or_default().insert((s, e));
    }
    for (ty, s, e) in get_entities(y_pred) {
        pred.entry(ty).or_default().insert((s, e));
    }
    let types: BTreeSet<&String> = truth.keys().chain(pred.keys()).collect();
    let empty = BTreeSet::new();
    let (mut tp_all, mut pred_all, mut true_all) = (0, 0, 0);
    let mut per_type = BTreeMap::new();
    for ty in types {
        let t = truth.get(ty).unwrap_or(&empty);
        let p = pred.get(ty).unwrap_or(&empty);
        let tp = t.intersection(p).count();
        tp_all += tp;
        pred_all += p.len();
        true_all += t.len();
        per_type.insert(ty.clone(), Prf::from_counts(tp, p.len(), t.len()));
    }
    let (mut correct, mut total) = (0usize, 0usize);
    for (t, p) in y_true.iter().zip(y_pred) {
        for (a, b) in t.iter().zip(p) {
            correct += usize::from(a.as_ref() == b.as_ref());
            total += 1;
        }
    }
    Report {
        micro: Prf::from_counts(tp_all, pred_all, true_all),
        accuracy: if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        },
        per_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    proptest::proptest! {
        /// The sentences' counts add up to the corpus's: the same micro F1 as the report.
        #[test]
        fn sentence_counts_add_up_to_the_report(
            pairs in proptest::collection::vec(
                proptest::collection::vec((0usize..5, 0usize..5), 0..8), 1..8)
        ) {
            let tags = ["O", "B-MET", "I-MET", "B-SIM", "I-SIM"];
            let gold: Vec<Vec<&str>> = pairs.iter().map(|s| s.iter().map(|p| tags[p.0]).collect()).collect();
            let pred: Vec<Vec<&str>> = pairs.iter().map(|s| s.iter().map(|p| tags[p.1]).collect()).collect();
            let mut total = Counts::default();
            for c in sentence_counts(&gold, &pred) {
                total += c;
            }
            proptest::prop_assert_eq!(total.f1(), report(&gold, &pred).micro.f1);
            proptest::prop_assert_eq!(total.truth, report(&gold, &pred).micro.support);
        }
    }

    #[test]
    fn plain_labels_merge_adjacent_runs() {
        // seqeval_examples ex3: [METAPHOR METAPHOR O O] -> one entity (ETAPHOR, 0, 1)
        assert_eq!(
            get_entities(&[s(&["METAPHOR", "METAPHOR", "O", "O"])]),
            vec![("ETAPHOR".into(), 0, 1)]
        );
    }

    #[test]
    fn sentences_are_separated() {
        // ex9: [[METAPHOR], [METAPHOR]] -> (0,0), (2,2)
        assert_eq!(
            get_entities(&[s(&["METAPHOR"]), s(&["METAPHOR"])]),
            vec![("ETAPHOR".into(), 0, 0), ("ETAPHOR".into(), 2, 2)]
        );
    }

    #[test]
    fn b_prefixed_plain_label_splits_every_token() {
        // ex6: BODY BODY -> (ODY,0,0), (ODY,1,1); IDIOM IDIOM -> (DIOM,0,1)
        assert_eq!(
            get_entities(&[s(&["BODY", "BODY", "O"])]),
            vec![("ODY".into(), 0, 0), ("ODY".into(), 1, 1)]
        );
        assert_eq!(
            get_entities(&[s(&["IDIOM", "IDIOM", "O"])]),
            vec![("DIOM".into(), 0, 1)]
        );
    }

    #[test]
    fn mixed_b_and_plain() {
        // ex10: [B-METAPHOR, METAPHOR, I-METAPHOR] -> (METAPHOR,0,0), (ETAPHOR,1,1), (METAPHOR,2,2)
        assert_eq!(
            get_entities(&[s(&["B-METAPHOR", "METAPHOR", "I-METAPHOR"])]),
            vec![
                ("METAPHOR".into(), 0, 0),
                ("ETAPHOR".into(), 1, 1),
                ("METAPHOR".into(), 2, 2)
            ]
        );
    }

    #[test]
    fn no_entities_gives_zeros_not_nan() {
        let r = report(&[s(&["O", "O"])], &[s(&["O", "O"])]);
        assert_eq!(
            (r.micro.precision, r.micro.recall, r.micro.f1, r.accuracy),
            (0.0, 0.0, 0.0, 1.0)
        );
        assert!(r.per_type.is_empty());
    }
}
