//! The few operations the model files share that burn does not provide as the HF classes
//! use them: a Linear over flattened rows, torch-style dropout with reproducible per-thread
//! masks on the CPU, and the additive attention mask.

use burn::nn::{Dropout, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// A Linear on `[batch, seq, in]` as one `[batch * seq, in]` matrix product: one GEMM with the
/// weight packed once instead of a batched product that repacks it for every sequence.
pub fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let y = linear.forward(x.reshape([batch * seq, width]));
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// Dropout as `torch.nn.Dropout` (zero with probability `p`, scale the rest by `1/(1-p)`),
/// only while training (autodiff backend). When the calling thread has seeded
/// [`dropout_rng`] (the CPU trainer does, per micro-batch) the mask comes from that per-thread
/// generator, so batch shards trained on parallel threads get reproducible masks; otherwise
/// from burn's (process-global) RNG.
pub fn dropout<B: Backend, const D: usize>(d: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device) || d.prob == 0.0 {
        return x;
    }
    let shape = x.shape();
    let scale = (1.0 / (1.0 - d.prob)) as f32;
    match dropout_rng::mask(shape.num_elements(), d.prob, scale) {
        Some(mask) => x * Tensor::<B, D>::from_data(TensorData::new(mask, shape), &device),
        None => d.forward(x),
    }
}

/// Per-thread dropout masks (SplitMix64), active on a thread once seeded.
pub mod dropout_rng {
    use std::cell::Cell;

    thread_local! {
        static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Restarts this thread's sequence and makes [`super::dropout`] use it: same seed, same
    /// masks.
    pub fn seed_thread(seed: u64) {
        STATE.with(|s| s.set(Some(seed)));
    }

    #[inline(always)]
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` values, each `0` with probability `p` and `keep` otherwise (24-bit uniforms);
    /// `None` when this thread was never seeded.
    pub fn mask(n: usize, p: f64, keep: f32) -> Option<Vec<f32>> {
        let threshold = (p * (1u64 << 24) as f64).round() as u32;
        STATE.with(|s| {
            let mut state = s.get()?;
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let r = next(&mut state);
                for half in [r as u32, (r >> 32) as u32] {
                    if out.len() < n {
                        out.push(if (half >> 8) < threshold { 0.0 } else { keep });
                    }
                }
            }
            s.set(Some(state));
            Some(out)
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn mask_rate_and_reproducibility() {
            assert!(
                std::thread::spawn(|| super::mask(4, 0.5, 2.0))
                    .join()
                    .unwrap()
                    .is_none(),
                "an unseeded thread leaves dropout to burn"
            );
            super::seed_thread(7);
            let a = super::mask(100_000, 0.1, 2.0).unwrap();
            super::seed_thread(7);
            assert_eq!(a, super::mask(100_000, 0.1, 2.0).unwrap());
            let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
            assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
            assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
        }
    }
}

/// Additive attention bias from an `attention_mask` `[batch, seq]` (1 = token, 0 = padding):
/// 0 where attended, the most negative f32 where masked (HF's `finfo.min`), `[batch, 1, 1, seq]`.
pub fn attention_bias<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = attention_mask.dims();
    let masked = attention_mask.equal_elem(0);
    // mask_fill rather than an Int->Float cast: casts on the autodiff path are avoided (burn#5337).
    Tensor::<B, 2>::zeros([batch, seq], &masked.device())
        .mask_fill(masked, f32::MIN)
        .reshape([batch, 1, 1, seq])
}
