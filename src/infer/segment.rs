//! Sentence segmentation for texts longer than the model's window.
//!
//! Metaphor models are trained on single sentences; fed 512-token windows of many sentences
//! they answer differently (measured in the long-text test: under half of the entities
//! agree with sentence-by-sentence detection). So long texts are cut into sentences first,
//! and only a sentence longer than the window is split into overlapping windows.

/// Closing characters that may follow a sentence end (`."`, `.)`, `!»`).
const CLOSERS: [char; 7] = ['"', '\'', ')', ']', '»', '”', '’'];

/// Sentence spans in code points, `[start, end)`, trimmed of surrounding white space. A
/// sentence ends after `.`, `!`, `?` or `…` (plus closing quotes or brackets) followed by white
/// space, or at a line break.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let push = |out: &mut Vec<(usize, usize)>, s: usize, e: usize| {
        let (mut s, mut e) = (s, e);
        while s < e && chars[s].is_whitespace() {
            s += 1;
        }
        while e > s && chars[e - 1].is_whitespace() {
            e -= 1;
        }
        if s < e {
            out.push((s, e));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            push(&mut out, start, i);
            start = i + 1;
        } else if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len()
                && (matches!(chars[j], '.' | '!' | '?' | '…') || CLOSERS.contains(&chars[j]))
            {
                j += 1;
            }
            if j == chars.len() || chars[j].is_whitespace() {
                push(&mut out, start, j);
                start = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    push(&mut out, start, chars.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(t: &str) -> Vec<String> {
        sentences(t)
            .into_iter()
            .map(|(s, e)| t.chars().skip(s).take(e - s).collect())
            .collect()
    }

    #[test]
    fn splits_on_end_punctuation_and_lines() {
        assert_eq!(
            texts("Hola món. Què tal?\nBé… i tu!"),
            vec!["Hola món.", "Què tal?", "Bé…", "i tu!"]
        );
        assert_eq!(
            texts("Va dir: «Prou.» I se'n va anar"),
            vec!["Va dir: «Prou.»", "I se'n va anar"]
        );
        assert_eq!(texts("1.500 € i 2,5 km"), vec!["1.500 € i 2,5 km"]);
        assert!(texts("   \n ").is_empty());
    }

    #[test]
    fn offsets_are_code_points() {
        assert_eq!(sentences("😀 A. B"), vec![(0, 4), (5, 6)]);
    }
}
