//! Character-span annotations (Label Studio regions, doccano `label` triples) to word-level
//! tags, and the stable split of annotated tasks.
//!
//! Words are the whitespace-separated chunks of the text, punctuation attached (`petites.`,
//! `d'ofertes`, `col·lecció`, `veure'l,`): the shape of the bundled Catalan corpus, of what
//! models trained here learn on, and of the words `/v1/detect` groups sub-tokens into for them.
//! A span covers the words whose letters it overlaps; a span that starts or ends inside a word
//! (other than before or after the word's edge punctuation) still tags the whole word, and is
//! reported. Every covered word is tagged `B-<type>`, or `I-<type>` after the first word of a
//! span when the label set has `I-<type>` (the corpus tags each metaphor word `B-METAPHOR`).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Whitespace-separated chunks of `text` as code-point ranges.
pub fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    let mut n = 0;
    for (i, c) in text.chars().enumerate() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
        n = i + 1;
    }
    if let Some(s) = start {
        out.push((s, n));
    }
    out
}

/// The part of a chunk without its leading and trailing punctuation (the chunk itself when it
/// is all punctuation).
fn core(chars: &[char], (s, e): (usize, usize)) -> (usize, usize) {
    let word = |c: &char| c.is_alphanumeric();
    let a = chars[s..e].iter().position(word);
    let b = chars[s..e].iter().rposition(word);
    match (a, b) {
        (Some(a), Some(b)) => (s + a, s + b + 1),
        _ => (s, e),
    }
}

/// One labelled character span, as a tool sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub label: String,
    /// The span's text as the tool saw it, when sent (used to detect UTF-16 offsets).
    pub text: Option<String>,
}

/// Something a conversion could not keep exactly as given.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Issue {
    /// The span starts or ends inside a word; the whole words it covers were tagged.
    OffBoundary {
        start: usize,
        end: usize,
        words: String,
    },
    /// The span overlaps a word already tagged with another type by an earlier span.
    Overlap {
        start: usize,
        end: usize,
        word: String,
        kept: String,
    },
    /// The label is not in the project's label set; the span was dropped.
    UnknownLabel { label: String },
    /// The span lies (partly) outside the text, or is empty; dropped.
    OutOfText {
        start: usize,
        end: usize,
        len: usize,
    },
    /// The span covers only whitespace; dropped.
    NoWord { start: usize, end: usize },
    /// The offsets were UTF-16 code units (a JavaScript client); converted.
    Utf16Offsets { start: usize, end: usize },
}

/// A task's text as words with tags.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tagged {
    pub words: Vec<(usize, usize)>,
    pub tokens: Vec<String>,
    /// Label names (`O`, `B-…`, `I-…`) per word.
    pub tags: Vec<String>,
    pub issues: Vec<Issue>,
}

/// Code-point index of UTF-16 offset `u` in `chars`, if it falls on a character boundary.
fn from_utf16(chars: &[char], u: usize) -> Option<usize> {
    let mut units = 0;
    for (i, c) in chars.iter().enumerate() {
        if units == u {
            return Some(i);
        }
        units += c.len_utf16();
    }
    (units == u).then_some(chars.len())
}

/// Offsets in code points: as given when they match the span's text (or no text was sent),
/// converted from UTF-16 code units when only that reading matches.
fn resolve(chars: &[char], s: &Span, issues: &mut Vec<Issue>) -> (usize, usize) {
    let Some(text) = &s.text else {
        return (s.start, s.end);
    };
    let slice = |a: usize, b: usize| {
        (a <= b && b <= chars.len()).then(|| chars[a..b].iter().collect::<String>())
    };
    if slice(s.start, s.end).as_deref() == Some(text.as_str()) {
        return (s.start, s.end);
    }
    if let (Some(a), Some(b)) = (from_utf16(chars, s.start), from_utf16(chars, s.end))
        && slice(a, b).as_deref() == Some(text.as_str())
    {
        issues.push(Issue::Utf16Offsets {
            start: s.start,
            end: s.end,
        });
        return (a, b);
    }
    (s.start, s.end)
}

/// Tags the words of `text` from `spans`. `labels` is the label set (`O`, `B-X`, `I-X`…); a
/// span's label matches `B-X` case-insensitively on `X` (or the whole name). Earlier spans win
/// overlaps (spans are taken by start, longer first).
pub fn tag_words(text: &str, spans: &[Span], labels: &[String]) -> Tagged {
    let chars: Vec<char> = text.chars().collect();
    let ws = words(text);
    let cores: Vec<(usize, usize)> = ws.iter().map(|&w| core(&chars, w)).collect();
    let mut tags = vec!["O".to_string(); ws.len()];
    let mut owner: Vec<Option<usize>> = vec![None; ws.len()];
    let mut issues = Vec::new();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].start, std::cmp::Reverse(spans[i].end)));
    for i in order {
        let span = &spans[i];
        let Some(kind) = entity_type(&span.label, labels) else {
            issues.push(Issue::UnknownLabel {
                label: span.label.clone(),
            });
            continue;
        };
        let (s, e) = resolve(&chars, span, &mut issues);
        if s >= e || e > chars.len() {
            issues.push(Issue::OutOfText {
                start: span.start,
                end: span.end,
                len: chars.len(),
            });
            continue;
        }
        // Words are in order: the covered ones are a range, found by binary search.
        let lo = cores.partition_point(|&(_, b)| b <= s);
        let covered: Vec<usize> = (lo..ws.len())
            .take_while(|&w| cores[w].0 < e)
            .filter(|&w| cores[w].0 < e && s < cores[w].1)
            .collect();
        let (Some(&first), Some(&last)) = (covered.first(), covered.last()) else {
            issues.push(Issue::NoWord { start: s, end: e });
            continue;
        };
        let (fs, fe) = (ws[first], cores[first]);
        let (ls, le) = (ws[last], cores[last]);
        if !(s == fs.0 || s == fe.0) || !(e == ls.1 || e == le.1) {
            issues.push(Issue::OffBoundary {
                start: s,
                end: e,
                words: chars[fs.0..ls.1].iter().collect(),
            });
        }
        for (k, &w) in covered.iter().enumerate() {
            if let Some(prev) = owner[w] {
                if entity_type(&spans[prev].label, labels).as_deref() != Some(kind.as_str()) {
                    issues.push(Issue::Overlap {
                        start: s,
                        end: e,
                        word: chars[ws[w].0..ws[w].1].iter().collect(),
                        kept: tags[w].clone(),
                    });
                }
                continue;
            }
            owner[w] = Some(i);
            tags[w] = tag_of(&kind, k, labels);
        }
    }
    Tagged {
        tokens: ws
            .iter()
            .map(|&(a, b)| chars[a..b].iter().collect())
            .collect(),
        words: ws,
        tags,
        issues,
    }
}

/// The entity type a tool label names in `labels`, case-insensitively: `X` for a `B-X` label
/// (BIO sets) or for a plain `X` label (sets without prefixes).
pub fn entity_type(label: &str, labels: &[String]) -> Option<String> {
    let label = label
        .strip_prefix("B-")
        .or_else(|| label.strip_prefix("I-"))
        .unwrap_or(label);
    labels
        .iter()
        .find_map(|l| {
            let t = l.strip_prefix("B-")?;
            t.eq_ignore_ascii_case(label).then(|| t.to_string())
        })
        .or_else(|| {
            labels
                .iter()
                .find(|l| *l != "O" && !l.starts_with("I-") && l.eq_ignore_ascii_case(label))
                .cloned()
        })
}

/// The tag of the `k`-th word of a span of type `kind`.
fn tag_of(kind: &str, k: usize, labels: &[String]) -> String {
    let b = format!("B-{kind}");
    if !labels.contains(&b) {
        return kind.to_string();
    }
    let i = format!("I-{kind}");
    if k > 0 && labels.contains(&i) { i } else { b }
}

/// Where an annotated task goes, fixed by its id: 70 % train, 15 % validation, 15 % test.
/// The same task always lands in the same split, so a growing dataset never moves a test
/// sentence into training.
pub fn split_of(project: &str, task: &str) -> &'static str {
    let h = Sha256::new()
        .chain_update(project.as_bytes())
        .chain_update([0])
        .chain_update(task.as_bytes())
        .finalize();
    let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 100;
    match v {
        0..70 => "train",
        70..85 => "validation",
        _ => "test",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["O".into(), "B-METAPHOR".into()]
    }

    fn span(start: usize, end: usize, label: &str) -> Span {
        Span {
            start,
            end,
            label: label.into(),
            text: None,
        }
    }

    fn tagged(text: &str, spans: &[Span]) -> Vec<(String, String)> {
        let t = tag_words(text, spans, &labels());
        t.tokens.into_iter().zip(t.tags).collect()
    }

    #[test]
    fn words_are_whitespace_chunks_with_punctuation() {
        let text = "L'home  col·lecciona\tveure'l, petites.";
        let w: Vec<String> = words(text)
            .iter()
            .map(|&(a, b)| text.chars().skip(a).take(b - a).collect())
            .collect();
        assert_eq!(w, ["L'home", "col·lecciona", "veure'l,", "petites."]);
        assert!(words("  \n").is_empty());
    }

    #[test]
    fn clitics_punt_volat_and_trailing_punctuation_are_one_word() {
        // "d'ofertes" annotated as "ofertes" (after the apostrophe): the whole chunk, reported.
        let text = "una guerra d'ofertes contra la intel·ligència.";
        let t = tag_words(text, &[span(13, 20, "metaphor")], &labels());
        assert_eq!(t.tags, ["O", "O", "B-METAPHOR", "O", "O", "O"]);
        assert!(
            matches!(&t.issues[..], [Issue::OffBoundary { words, .. }] if words == "d'ofertes")
        );
        // The word without its final full stop is on the boundary: no issue.
        let s = text.chars().count();
        let t = tag_words(text, &[span(31, s - 1, "METAPHOR")], &labels());
        assert_eq!(t.tags[5], "B-METAPHOR");
        assert!(t.issues.is_empty(), "{:?}", t.issues);
        // Punt volat inside the word: part of the word.
        let t = tag_words(text, &[span(31, 35, "METAPHOR")], &labels());
        assert_eq!(t.tags[5], "B-METAPHOR");
        assert_eq!(t.issues.len(), 1);
    }

    #[test]
    fn multiword_spans_use_i_only_when_the_label_set_has_it() {
        let text = "va obrir la porta";
        assert_eq!(
            tagged(text, &[span(3, 17, "METAPHOR")])
                .iter()
                .map(|p| p.1.as_str())
                .collect::<Vec<_>>(),
            ["O", "B-METAPHOR", "B-METAPHOR", "B-METAPHOR"]
        );
        let bio = vec!["O".into(), "B-MET".into(), "I-MET".into()];
        let t = tag_words(text, &[span(3, 17, "met")], &bio);
        assert_eq!(t.tags, ["O", "B-MET", "I-MET", "I-MET"]);
        // A label set without prefixes (the synthetic fixture's `O`, `METAPHOR`).
        let plain = vec!["O".into(), "METAPHOR".into()];
        let t = tag_words(text, &[span(3, 8, "Metaphor")], &plain);
        assert_eq!(t.tags, ["O", "METAPHOR", "O", "O"]);
    }

    #[test]
    fn emoji_offsets_in_code_points_or_utf16() {
        let text = "El temps vola 🕊️ quan l'home somriu.";
        // Code points: "somriu" starts at 29.
        let cp = text.chars().position(|c| c == 's').unwrap();
        let cp = text.chars().skip(cp + 1).position(|c| c == 's').unwrap() + cp + 1;
        let good = Span {
            start: cp,
            end: cp + 6,
            label: "METAPHOR".into(),
            text: Some("somriu".into()),
        };
        let t = tag_words(text, std::slice::from_ref(&good), &labels());
        assert_eq!(t.tags.last().unwrap(), "B-METAPHOR");
        assert!(t.issues.is_empty());
        // The same span from a JavaScript client: the dove is 2 UTF-16 units.
        let js = Span {
            start: cp + 1,
            end: cp + 7,
            ..good
        };
        let t = tag_words(text, &[js], &labels());
        assert_eq!(t.tags.last().unwrap(), "B-METAPHOR");
        assert!(matches!(t.issues[..], [Issue::Utf16Offsets { .. }]));
    }

    #[test]
    fn overlaps_unknown_labels_and_spans_beyond_the_text_are_reported() {
        let labels = vec!["O".into(), "B-METAPHOR".into(), "B-OTHER".into()];
        let text = "cor de pedra";
        let t = tag_words(
            text,
            &[
                span(0, 12, "OTHER"),
                span(7, 12, "METAPHOR"),
                span(0, 3, "PERSON"),
                span(10, 40, "METAPHOR"),
                span(3, 4, "METAPHOR"),
            ],
            &labels,
        );
        assert_eq!(t.tags, ["B-OTHER", "B-OTHER", "B-OTHER"]);
        let kinds: Vec<&str> = t
            .issues
            .iter()
            .map(|i| match i {
                Issue::Overlap { .. } => "overlap",
                Issue::UnknownLabel { .. } => "unknown",
                Issue::OutOfText { .. } => "out",
                Issue::NoWord { .. } => "noword",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["unknown", "noword", "overlap", "out"]);
    }

    #[test]
    fn splits_are_stable_and_roughly_70_15_15() {
        assert_eq!(split_of("p", "42"), split_of("p", "42"));
        let n = 10_000;
        let mut c = std::collections::HashMap::new();
        for i in 0..n {
            *c.entry(split_of("p", &i.to_string())).or_insert(0) += 1;
        }
        let share = |s| c[s] as f64 / n as f64;
        assert!((share("train") - 0.70).abs() < 0.02);
        assert!((share("validation") - 0.15).abs() < 0.02);
        assert!((share("test") - 0.15).abs() < 0.02);
    }
}
