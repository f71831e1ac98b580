//! Word -> sub-token label alignment and truncation, as the notebook's
//! `tokenize_and_align_labels`: the first sub-token of a word keeps the word's label, later
//! sub-tokens and special tokens get -100.

use super::tokenizer::Encoded;

/// Label id that the loss and the metrics ignore (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One training/evaluation example ready for batching.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Per token: the word's label id on its first sub-token, else [`IGNORE`].
    pub labels: Vec<i64>,
    /// Per token: the word index, `None` for special tokens.
    pub word_ids: Vec<Option<usize>>,
    /// Words in the sentence before truncation.
    pub num_words: usize,
    /// Words that lost every token to truncation (they get no prediction).
    pub dropped_words: usize,
}

/// Labels per token for word labels `tags` (first sub-token keeps the label).
pub fn align_labels(word_ids: &[Option<usize>], tags: &[i64]) -> Vec<i64> {
    let mut previous = None;
    word_ids
        .iter()
        .map(|w| {
            let label = match *w {
                None => IGNORE,
                Some(w) if Some(w) != previous => tags.get(w).copied().unwrap_or(IGNORE),
                Some(_) => IGNORE,
            };
            previous = *w;
            label
        })
        .collect()
}

/// Truncates an encoding to `max_len` tokens, keeping `<s>` and `</s>` (HF `truncation=True`
/// cuts sub-tokens on the right and re-appends the end token). Returns how many words lost
/// every token.
pub fn truncate(enc: &mut Encoded, max_len: usize, num_words: usize) -> usize {
    if enc.len() > max_len && max_len >= 2 {
        let last = enc.len() - 1;
        let keep = max_len - 1;
        let end_id = enc.ids[last];
        enc.ids.truncate(keep);
        enc.ids.push(end_id);
        enc.word_ids.truncate(keep);
        enc.word_ids.push(None);
        enc.offsets.truncate(keep);
        enc.offsets.push((0, 0));
        let end_tok = enc.tokens[last].clone();
        enc.tokens.truncate(keep);
        enc.tokens.push(end_tok);
    }
    let kept = enc
        .word_ids
        .iter()
        .flatten()
        .max()
        .map(|w| w + 1)
        .unwrap_or(0);
    num_words.saturating_sub(kept)
}

/// Builds an [`Example`] from an encoding of pre-split words and their label ids.
pub fn example(mut enc: Encoded, tags: &[i64], max_len: usize) -> Example {
    let num_words = tags.len();
    let dropped_words = truncate(&mut enc, max_len, num_words);
    let labels = align_labels(&enc.word_ids, tags);
    Example {
        input_ids: enc.ids,
        labels,
        word_ids: enc.word_ids,
        num_words,
        dropped_words,
    }
}

/// Word-level predictions from token-level ones: the prediction of each word's first
/// sub-token, `None` for words with no token (truncated away).
pub fn word_predictions(
    word_ids: &[Option<usize>],
    token_preds: &[usize],
    num_words: usize,
) -> Vec<Option<usize>> {
    let mut out = vec![None; num_words];
    let mut previous = None;
    for (w, p) in word_ids.iter().zip(token_preds) {
        if let Some(w) = *w
            && Some(w) != previous
            && w < num_words
            && out[w].is_none()
        {
            out[w] = Some(*p);
        }
        previous = *w;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(word_ids: Vec<Option<usize>>) -> Encoded {
        let n = word_ids.len();
        Encoded {
            ids: (0..n as u32).collect(),
            word_ids,
            offsets: vec![(0, 0); n],
            tokens: vec![String::new(); n],
        }
    }

    #[test]
    fn first_subtoken_keeps_label() {
        let w = vec![None, Some(0), Some(1), Some(1), Some(1), Some(2), None];
        assert_eq!(
            align_labels(&w, &[0, 1, 0]),
            vec![-100, 0, 1, -100, -100, 0, -100]
        );
    }

    #[test]
    fn truncation_keeps_end_token_and_counts_dropped_words() {
        let mut e = enc(vec![
            None,
            Some(0),
            Some(1),
            Some(1),
            Some(2),
            Some(3),
            None,
        ]);
        let dropped = truncate(&mut e, 4, 4);
        assert_eq!(e.word_ids, vec![None, Some(0), Some(1), None]);
        assert_eq!(e.ids, vec![0, 1, 2, 6]);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn no_truncation_under_limit() {
        let mut e = enc(vec![None, Some(0), None]);
        assert_eq!(truncate(&mut e, 512, 1), 0);
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn word_predictions_take_first_subtoken() {
        let w = vec![None, Some(0), Some(1), Some(1), None];
        assert_eq!(
            word_predictions(&w, &[9, 1, 0, 1, 9], 3),
            vec![Some(1), Some(0), None]
        );
    }
}
