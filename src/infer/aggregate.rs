//! Entity aggregation of transformers' `TokenClassificationPipeline` (v4.57
//! `pipelines/token_classification.py`: `gather_pre_entities`, `aggregate`, `aggregate_word`,
//! `group_sub_entities`, `group_entities`), on per-token softmax scores.
//!
//! Differences, on purpose:
//! - `word` is exactly `text[start..end]` (code points); the pipeline returns the decoded
//!   tokens, e.g. `" pagès semb"` with a leading space.
//! - `first`/`average`/`max` group sub-tokens into words by the tokenizer's word ids; the
//!   pipeline guesses with "no space before the token", which fuses `l'home`, `d'una` or
//!   `col·lecció` tokens across punctuation into one word.

use std::str::FromStr;

use serde::Serialize;

/// `aggregation_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One entry per non-`O` token.
    None,
    /// Adjacent tokens with the same entity type merged (the notebook's choice).
    #[default]
    Simple,
    /// Word label from its first sub-token.
    First,
    /// Word label from the mean of its sub-tokens' scores.
    Average,
    /// Word label from its most confident sub-token.
    Max,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Strategy::None,
            "simple" => Strategy::Simple,
            "first" => Strategy::First,
            "average" => Strategy::Average,
            "max" => Strategy::Max,
            _ => {
                return Err(format!(
                    "aggregation_strategy must be none, simple, first, average or max, got {s:?}"
                ));
            }
        })
    }
}

/// One non-special token with its probabilities.
#[derive(Debug, Clone)]
pub struct TokenScores {
    /// Index in the encoded sequence (`<s>` is 0), the pipeline's `index`.
    pub index: usize,
    /// Code-point span in the text.
    pub start: usize,
    pub end: usize,
    pub word_id: Option<usize>,
    /// Softmax over labels.
    pub scores: Vec<f32>,
}

/// An entity (or, for `none`, a token) in the response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// Grouped label (`simple`, `first`, `average`, `max`): the label without `B-`/`I-`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_group: Option<String>,
    /// Token label (`none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    pub score: f32,
    /// Exactly `text[start..end]`.
    pub word: String,
    /// Code-point offsets into the text (word indices for pre-split `tokens` input).
    pub start: usize,
    pub end: usize,
    /// Token index (`none` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

#[derive(Debug, Clone)]
struct Labeled {
    label: String,
    score: f32,
    start: usize,
    end: usize,
}

/// Index of the first maximum (numpy's and torch's argmax).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// `get_tag`: (`B`|`I`, type); labels without a prefix count as `I` (continuation).
fn tag(label: &str) -> (char, &str) {
    if let Some(t) = label.strip_prefix("B-") {
        ('B', t)
    } else if let Some(t) = label.strip_prefix("I-") {
        ('I', t)
    } else {
        ('I', label)
    }
}

fn aggregate_word(group: &[&TokenScores], strategy: Strategy, labels: &[String]) -> Labeled {
    let (label, score) = match strategy {
        Strategy::Max => {
            let best = group
                .iter()
                .fold(None::<&TokenScores>, |acc, t| match acc {
                    Some(a) if a.scores[argmax(&a.scores)] >= t.scores[argmax(&t.scores)] => {
                        Some(a)
                    }
                    _ => Some(*t),
                })
                .expect("non-empty word group: this is a bug");
            let i = argmax(&best.scores);
            (i, best.scores[i])
        }
        Strategy::Average => {
            let n = labels.len();
            let mean: Vec<f32> = (0..n)
                .map(|l| {
                    (group.iter().map(|t| t.scores[l] as f64).sum::<f64>() / group.len() as f64)
                        as f32
                })
                .collect();
            let i = argmax(&mean);
            (i, mean[i])
        }
        _ => {
            let i = argmax(&group[0].scores);
            (i, group[0].scores[i])
        }
    };
    Labeled {
        label: labels[label].clone(),
        score,
        start: group[0].start,
        end: group[group.len() - 1].end,
    }
}

/// The pipeline's `group_entities` followed by the `ignore_labels=["O"]` filter.
fn group_entities(items: Vec<Labeled>, span: &dyn Fn(usize, usize) -> String) -> Vec<Entity> {
    let mut groups: Vec<Vec<Labeled>> = Vec::new();
    for e in items {
        match groups.last_mut() {
            Some(g) => {
                let (bi, t) = tag(&e.label);
                let (_, last_t) = tag(&g[g.len() - 1].label);
                if t == last_t && bi != 'B' {
                    g.push(e);
                } else {
                    groups.push(vec![e]);
                }
            }
            None => groups.push(vec![e]),
        }
    }
    groups
        .into_iter()
        .filter_map(|g| {
            let group_label = g[0]
                .label
                .split_once('-')
                .map(|(_, t)| t.to_string())
                .unwrap_or_else(|| g[0].label.clone());
            if group_label == "O" {
                return None;
            }
            let score = (g.iter().map(|e| e.score as f64).sum::<f64>() / g.len() as f64) as f32;
            let (start, end) = (g[0].start, g[g.len() - 1].end);
            Some(Entity {
                entity_group: Some(group_label),
                entity: None,
                score,
                word: span(start, end),
                start,
                end,
                index: None,
            })
        })
        .collect()
}

/// Aggregates token scores into entities; `span(start, end)` renders the text of a span.
pub fn aggregate(
    tokens: &[TokenScores],
    labels: &[String],
    strategy: Strategy,
    span: &dyn Fn(usize, usize) -> String,
) -> Vec<Entity> {
    match strategy {
        Strategy::None => tokens
            .iter()
            .filter_map(|t| {
                let i = argmax(&t.scores);
                (labels[i] != "O").then(|| Entity {
                    entity_group: None,
                    entity: Some(labels[i].clone()),
                    score: t.scores[i],
                    word: span(t.start, t.end),
                    start: t.start,
                    end: t.end,
                    index: Some(t.index),
                })
            })
            .collect(),
        Strategy::Simple => {
            let items = tokens
                .iter()
                .map(|t| {
                    let i = argmax(&t.scores);
                    Labeled {
                        label: labels[i].clone(),
                        score: t.scores[i],
                        start: t.start,
                        end: t.end,
                    }
                })
                .collect();
            group_entities(items, span)
        }
        Strategy::First | Strategy::Average | Strategy::Max => {
            let items = word_groups(tokens)
                .iter()
                .map(|w| aggregate_word(w, strategy, labels))
                .collect();
            group_entities(items, span)
        }
    }
}

/// Sub-tokens grouped into words by their word ids (a token without one is its own word).
fn word_groups(tokens: &[TokenScores]) -> Vec<Vec<&TokenScores>> {
    let mut words: Vec<Vec<&TokenScores>> = Vec::new();
    for t in tokens {
        match words.last_mut() {
            Some(w) if t.word_id.is_some() && w[0].word_id == t.word_id => w.push(t),
            _ => words.push(vec![t]),
        }
    }
    words
}

/// The lowest confidence over the input's words (tokens for `none` and `simple`): the
/// probability of the label each word gets under `strategy`, `O` included. 1 for no tokens.
pub fn confidence(tokens: &[TokenScores], strategy: Strategy) -> f32 {
    let top = |v: &[f32]| v[argmax(v)];
    match strategy {
        Strategy::None | Strategy::Simple => {
            tokens.iter().map(|t| top(&t.scores)).fold(1.0, f32::min)
        }
        Strategy::First | Strategy::Average | Strategy::Max => word_groups(tokens)
            .iter()
            .map(|w| match strategy {
                Strategy::Max => w.iter().map(|t| top(&t.scores)).fold(0.0, f32::max),
                Strategy::Average => {
                    let n = w[0].scores.len();
                    let mean: Vec<f32> = (0..n)
                        .map(|l| w.iter().map(|t| t.scores[l]).sum::<f32>() / w.len() as f32)
                        .collect();
                    top(&mean)
                }
                _ => top(&w[0].scores),
            })
            .fold(1.0, f32::min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["O".into(), "B-METAPHOR".into(), "I-METAPHOR".into()]
    }

    fn tok(index: usize, start: usize, end: usize, word: usize, s: [f32; 3]) -> TokenScores {
        TokenScores {
            index,
            start,
            end,
            word_id: Some(word),
            scores: s.to_vec(),
        }
    }

    #[test]
    fn simple_merges_b_then_i_and_drops_o() {
        let text = "a bc de";
        let span = |s: usize, e: usize| text.chars().skip(s).take(e - s).collect::<String>();
        let t = vec![
            tok(1, 0, 1, 0, [0.9, 0.05, 0.05]),
            tok(2, 2, 4, 1, [0.1, 0.8, 0.1]),
            tok(3, 5, 7, 2, [0.2, 0.2, 0.6]),
        ];
        let e = aggregate(&t, &labels(), Strategy::Simple, &span);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].start, e[0].end, e[0].word.as_str()), (2, 7, "bc de"));
        assert!((e[0].score - 0.7).abs() < 1e-6);
    }

    #[test]
    fn confidence_counts_o_words_and_orders_tasks() {
        // A confident "no metaphor" task and a task hesitating on one word labelled O.
        let sure = vec![
            tok(1, 0, 1, 0, [0.99, 0.01, 0.0]),
            tok(2, 2, 4, 1, [0.98, 0.02, 0.0]),
        ];
        let unsure = vec![
            tok(1, 0, 1, 0, [0.99, 0.01, 0.0]),
            tok(2, 2, 4, 1, [0.55, 0.45, 0.0]),
        ];
        let with_entity = vec![
            tok(1, 0, 1, 0, [0.97, 0.03, 0.0]),
            tok(2, 2, 4, 1, [0.05, 0.95, 0.0]),
            // A later sub-token of word 1: ignored by `first`, counted by `simple`.
            tok(3, 4, 6, 1, [0.6, 0.4, 0.0]),
        ];
        let c = |t: &[TokenScores]| confidence(t, Strategy::First);
        assert!((c(&sure) - 0.98).abs() < 1e-6);
        assert!((c(&unsure) - 0.55).abs() < 1e-6);
        assert!((c(&with_entity) - 0.95).abs() < 1e-6);
        let mut order = [
            ("sure", c(&sure)),
            ("unsure", c(&unsure)),
            ("entity", c(&with_entity)),
        ];
        order.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(order.map(|o| o.0), ["unsure", "entity", "sure"]);
        assert!((confidence(&with_entity, Strategy::Simple) - 0.6).abs() < 1e-6);
        assert!((confidence(&with_entity, Strategy::Average) - 0.675).abs() < 1e-6);
        assert_eq!(confidence(&[], Strategy::First), 1.0);
    }

    #[test]
    fn word_strategies_use_word_ids() {
        let text = "l'home";
        let span = |s: usize, e: usize| text.chars().skip(s).take(e - s).collect::<String>();
        // "l" "'" "home": three words by the tokenizer's word ids.
        let t = vec![
            tok(1, 0, 1, 0, [0.9, 0.1, 0.0]),
            tok(2, 1, 2, 1, [0.9, 0.1, 0.0]),
            tok(3, 2, 6, 2, [0.2, 0.8, 0.0]),
        ];
        let e = aggregate(&t, &labels(), Strategy::First, &span);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].word, "home");
        // two sub-tokens of one word: average picks the mean
        let t = vec![
            tok(1, 0, 2, 0, [0.6, 0.4, 0.0]),
            tok(2, 2, 4, 0, [0.0, 1.0, 0.0]),
        ];
        let e = aggregate(&t, &labels(), Strategy::Average, &span);
        assert_eq!((e[0].start, e[0].end), (0, 4));
        assert!((e[0].score - 0.7).abs() < 1e-6);
        let e = aggregate(&t, &labels(), Strategy::Max, &span);
        assert_eq!(e[0].score, 1.0);
        assert!(aggregate(&t, &labels(), Strategy::First, &span).is_empty());
    }
}
