//! Sliding windows for texts longer than the model's window: overlapping windows, each token
//! scored by the window in which it is most central, so entities at a boundary are neither
//! lost nor duplicated.

use std::ops::Range;

/// Windows of at most `size` content tokens over `n` tokens, consecutive windows sharing
/// `stride` tokens; and for every token the window that scores it (the one where its distance
/// to the nearer window edge is largest; ties go to the earlier window).
#[allow(clippy::single_range_in_vec_init)] // a list of windows that may have one element
pub fn plan(n: usize, size: usize, stride: usize) -> (Vec<Range<usize>>, Vec<usize>) {
    let size = size.max(1);
    if n <= size {
        return (vec![0..n], vec![0; n]);
    }
    let step = size.saturating_sub(stride.min(size - 1)).max(1);
    let mut windows = Vec::new();
    let mut start = 0;
    loop {
        if start + size >= n {
            windows.push(n - size..n);
            break;
        }
        windows.push(start..start + size);
        start += step;
    }
    // Each window offers itself to the tokens it covers (a token is in at most
    // size / step + 1 windows, so this is linear in n for a fixed window and stride).
    let mut best: Vec<(usize, Option<usize>)> = vec![(0, None); n];
    for (w, r) in windows.iter().enumerate() {
        for (i, b) in best.iter_mut().enumerate().take(r.end).skip(r.start) {
            let centrality = (i - r.start).min(r.end - 1 - i);
            if b.1.is_none() || centrality > b.0 {
                *b = (centrality, Some(w));
            }
        }
    }
    let owner = best
        .into_iter()
        .map(|(_, w)| w.expect("every token is in a window: this is a bug"))
        .collect();
    (windows, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn short_input_is_one_window() {
        assert_eq!(plan(5, 10, 3), (vec![0..5], vec![0; 5]));
    }

    #[test]
    fn windows_cover_everything_and_owners_are_central() {
        let (w, owner) = plan(25, 10, 4);
        assert_eq!(w, vec![0..10, 6..16, 12..22, 15..25]);
        for (i, o) in owner.iter().enumerate() {
            assert!(w[*o].contains(&i));
        }
        // token 8: distance 1 to the end of window 0, 2 to the start of window 1 -> window 1
        assert_eq!(owner[8], 1);
        assert_eq!(owner[0], 0);
        assert_eq!(owner[24], 3);
    }
}
