//! Host kernels of the CPU inference engine, where burn-flex's generic ops cost more than the
//! arithmetic:
//! - dense layers on weights packed once per loaded model ([`PackedLinear`], in [`super::packed`]): burn-flex's GEMM
//!   repacks the whole weight matrix on every call, which for the few rows of a single
//!   sentence costs more than the multiply (figures: README, "CPU inference engine");
//! - scaled-dot-product attention that reads heads in place from the `[batch, seq, heads,
//!   head_dim]` projections (no permute copies), with a vectorisable exp and one task per
//!   (sequence, head) on the rayon pool — burn-flex's runs every (sequence, head) on the calling
//!   thread and calls scalar libm `expf`, which dominated small models' forward passes;
//! - the exact-erf GELU.

use rayon::prelude::*;

pub use super::packed::{Isa, PackedLinear, Precision};

/// `exp(x)` for f32, branch-free so loops over it vectorise: Cody-Waite range reduction and a
/// degree-6 polynomial (Cephes `expf`), within 2 ulp of libm over the normal range; 0 below
/// -87.3 (where f32 `exp` underflows), saturating above 88.3.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounding by the 1.5·2^23 trick (no libm call, exact for |n| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    // n = round(x / ln 2), left as an integer in the low mantissa bits of `shifted`: integer
    // bit operations from here (a float-to-int cast would be a saturating scalar conversion).
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r2 + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if underflow { 0.0 } else { e * scale }
}

/// erf for f32 as a branch-free rational approximation on [-4, 4] (Eigen's
/// `generic_fast_erf_float`, within a few ulp of libm's `erff`; |erf| = 1 in f32 beyond 4).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_2e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them (8 lanes instead of the
/// baseline's 4), else for the build target. Same operations either way: Rust does not contract
/// `a * b + c` into FMA on its own, so both give the same bits.
macro_rules! with_avx2 {
    ($body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(f: impl FnOnce()) {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the features were just detected.
                unsafe { avx2(|| $body) };
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        $body
    }};
}

/// Exact (erf) GELU in place.
pub fn gelu_in_place(values: &mut [f32]) {
    fn run(values: &mut [f32]) {
        with_avx2!({
            for v in values.iter_mut() {
                *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        })
    }
    for_chunks(values, PARALLEL_ELEMENTS, run);
}

/// Element-wise work below this many values stays on the calling thread (a rayon split costs
/// a few microseconds; 64 Ki GELUs take about 30 µs).
pub const PARALLEL_ELEMENTS: usize = 1 << 16;

/// Runs the element-wise `f` over `values` in one piece, or in one contiguous piece per rayon
/// thread when there are at least `min` values.
pub fn for_chunks(values: &mut [f32], min: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    for_rows(values, 1, min, f)
}

/// Runs `f` over whole rows of `row_len` values: in one piece, or split over the rayon pool
/// (each piece a run of whole rows) when there are at least `min` values.
pub fn for_rows(
    values: &mut [f32],
    row_len: usize,
    min: usize,
    f: impl Fn(&mut [f32]) + Sync + Send,
) {
    let threads = rayon::current_num_threads();
    let rows = values.len() / row_len.max(1);
    if threads < 2 || values.len() < min || rows < 2 {
        return f(values);
    }
    let per = rows.div_ceil(threads) * row_len;
    values.par_chunks_mut(per).for_each(f);
}

/// Lanes of the reductions below: independent accumulators, so they vectorise.
const LANES: usize = 8;

/// Sum with independent lane accumulators (a plain float sum does not vectorise).
#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Maximum with independent lane accumulators.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// Row-wise `softmax(row + bias)` over `rows` (each `bias.len()` long), in place. Each step is
/// its own simple loop so that each vectorises.
fn softmax_rows(rows: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    with_avx2!({
        for row in rows.chunks_exact_mut(n) {
            for (s, b) in row.iter_mut().zip(bias) {
                *s += b;
            }
            let max = lane_max(row);
            for s in row.iter_mut() {
                *s = exp_f32(*s - max);
            }
            let inv = 1.0 / lane_sum(row);
            for s in row.iter_mut() {
                *s *= inv;
            }
        }
    })
}

/// Whether this CPU runs the packed kernels (x86-64 with AVX2 and FMA; AVX-512 used when
/// present).
pub fn packed_kernels_available() -> bool {
    Isa::detect().is_some()
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer (attention's
/// (sequence, head) columns here, a packed layer's panels in [`super::packed`]).
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: every user writes only its own task's part of the buffer (`attention`'s
// (sequence, head) columns, `PackedLinear::forward`'s panels).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[i][j] = alpha · Σ_p a[i][p] · b[j][p]` for `m` rows of `a` and `n` rows of `b`, each of
/// `k` values at column stride 1 and the given row strides (heads read in place).
pub fn matmul_transposed(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    dst: &mut [f32],
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * a_rs + k && b.len() >= (n - 1) * b_rs + k);
    assert!(dst.len() >= m * n);
    // SAFETY: the asserts bound every element the strides address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            b_rs as isize,
            1,
            0.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Where a [`ScoreBias`] is called: one (sequence, head) of an attention call.
pub struct BiasAt<'a> {
    pub head: usize,
    /// First token of the sequence, and its length.
    pub start: usize,
    pub seq: usize,
    /// The attention's query and key projections `[tokens, heads · head_dim]`.
    pub query: &'a [f32],
    pub key: &'a [f32],
    pub head_dim: usize,
}

/// A term added to the `[seq, seq]` scores of one (sequence, head) before the softmax
/// (DeBERTa's relative-position terms).
pub type ScoreBias<'a> = dyn Fn(&BiasAt<'_>, &mut [f32]) + Sync + 'a;

/// Scaled-dot-product attention in eval mode:
/// `softmax(scale · Q·Kᵀ + score_bias + key_bias) · V` per (sequence, head) (HF RoBERTa:
/// `scale = 1/sqrt(head_dim)`, no score bias).
///
/// `query`, `key`, `value`: the projections `[tokens, heads * head_dim]` of sequences of
/// `lengths` stored back to back (a padded batch is `batch` sequences of `seq`); heads are
/// column blocks, read in place through strides. `key_bias`: one value per token, added to
/// every query's score for that key (0, or a large negative value for padding); `None` is all
/// zeros. Returns the context `[tokens, heads * head_dim]`, i.e. already in the layout the
/// output dense layer takes.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    query: &[f32],
    key: &[f32],
    value: &[f32],
    key_bias: Option<&[f32]>,
    lengths: &[usize],
    heads: usize,
    scale: f32,
    score_bias: Option<&ScoreBias<'_>>,
) -> Vec<f32> {
    let tokens: usize = lengths.iter().sum();
    let len = query.len();
    assert!(tokens > 0 && len.is_multiple_of(tokens) && (len / tokens).is_multiple_of(heads));
    let width = len / tokens;
    let head_dim = width / heads;
    assert!(key.len() == len && value.len() == len);
    if let Some(b) = key_bias {
        assert_eq!(b.len(), tokens);
    }
    let starts: Vec<usize> = lengths
        .iter()
        .scan(0, |at, l| {
            let s = *at;
            *at += l;
            Some(s)
        })
        .collect();
    let mut out = vec![0.0f32; len];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let zeros = vec![0.0f32; lengths.iter().copied().max().unwrap_or(0)];
    let run = |task: usize, scores: &mut Vec<f32>| {
        let (b, h) = (task / heads, task % heads);
        let (start, seq) = (starts[b], lengths[b]);
        let base = start * width + h * head_dim;
        let bias = match key_bias {
            Some(bias) => &bias[start..start + seq],
            None => &zeros[..seq],
        };
        scores.resize(seq * seq, 0.0);
        // scores = scale · Q_bh · K_bhᵀ   ([seq, head_dim] · [head_dim, seq])
        matmul_transposed(
            (seq, seq, head_dim),
            &query[base..],
            width,
            &key[base..],
            width,
            &mut scores[..seq * seq],
            scale,
        );
        if let Some(extra) = score_bias {
            let at = BiasAt {
                head: h,
                start,
                seq,
                query,
                key,
                head_dim,
            };
            extra(&at, &mut scores[..seq * seq]);
        }
        softmax_rows(&mut scores[..seq * seq], bias);
        // SAFETY: the pointers and strides address the rows of sequence `b` and the columns of
        // head `h` inside buffers of `len` elements; `scores` holds `seq * seq`. The output
        // block of (b, h) is written by this task only.
        unsafe {
            // context_bh = P · V_bh   ([seq, seq] · [seq, head_dim])
            gemm::gemm(
                seq,
                head_dim,
                seq,
                out_ptr.get().add(base),
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                seq as isize,
                value.as_ptr().add(base),
                1,
                width as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    let tasks = lengths.len() * heads;
    if rayon::current_num_threads() > 1 && tasks > 1 {
        (0..tasks)
            .into_par_iter()
            .for_each_init(Vec::new, |scores, t| run(t, scores));
    } else {
        let mut scores = Vec::new();
        (0..tasks).for_each(|t| run(t, &mut scores));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_libm() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((erf_f32(x) - libm_erf(x)).abs());
        }
        assert!(worst < 5e-7, "max |erf_f32 - erf| = {worst}");
    }

    /// Reference erf in f64 (Abramowitz & Stegun 7.1.28 is too coarse; integrate the series).
    fn libm_erf(x: f32) -> f32 {
        let x = x as f64;
        if x.abs() > 6.0 {
            return x.signum() as f32;
        }
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), summed with care for |x| <= 3,
        // complementary continued fraction beyond.
        if x.abs() <= 3.0 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            loop {
                n += 1.0;
                term *= -x * x / n;
                let add = term / (2.0 * n + 1.0);
                sum += add;
                if add.abs() < 1e-17 {
                    break;
                }
            }
            (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
        } else {
            let ax = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (ax + f);
            }
            let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
            (x.signum() * (1.0 - erfc)) as f32
        }
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), x.exp());
            // Below -87.3 the kernel flushes to 0: exp is then < 1.2e-38, about f32::MIN_POSITIVE.
            let tol = want * 3e-7 + 2.0 * f32::MIN_POSITIVE;
            assert!((got - want).abs() <= tol, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[derive(Clone, Copy)]
    struct AttentionShape {
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    }

    /// Straightforward f64 attention over `[batch, heads, seq, head_dim]` views.
    fn reference(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], s: AttentionShape) -> Vec<f32> {
        let width = s.heads * s.head_dim;
        let at = |t: &[f32], b: usize, i: usize, h: usize, d: usize| {
            t[(b * s.seq + i) * width + h * s.head_dim + d] as f64
        };
        let mut out = vec![0.0f32; q.len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.seq {
                    let scores: Vec<f64> = (0..s.seq)
                        .map(|j| {
                            (0..s.head_dim)
                                .map(|d| at(q, b, i, h, d) * at(k, b, j, h, d))
                                .sum::<f64>()
                                / (s.head_dim as f64).sqrt()
                                + bias[b * s.seq + j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..s.head_dim {
                        let c: f64 = (0..s.seq).map(|j| e[j] / sum * at(v, b, j, h, d)).sum();
                        out[(b * s.seq + i) * width + h * s.head_dim + d] = c as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_reference_with_padding() {
        let s = AttentionShape {
            batch: 3,
            seq: 7,
            heads: 4,
            head_dim: 5,
        };
        let n = s.batch * s.seq * s.heads * s.head_dim;
        let mut state = 1u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n).map(|_| rnd()).collect(),
            (0..n).map(|_| rnd()).collect(),
            (0..n).map(|_| rnd()).collect(),
        );
        // Sequence 1 has 3 padding keys at the end, sequence 2 one in the middle.
        let mut bias = vec![0.0f32; s.batch * s.seq];
        for j in 4..7 {
            bias[s.seq + j] = f32::MIN;
        }
        bias[2 * s.seq + 3] = f32::MIN;
        let want = reference(&q, &k, &v, &bias, s);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let scale = 1.0 / (s.head_dim as f32).sqrt();
            let got = pool
                .install(|| attention(&q, &k, &v, Some(&bias), &[s.seq; 3], s.heads, scale, None));
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-5, "threads {threads}: max |diff| {diff}");
        }
        // Unpadded: sequence 0 (7 tokens) and sequence 1 without its 3 padding tokens, back to
        // back, no bias: the real tokens' outputs equal the padded batch's.
        let width = s.heads * s.head_dim;
        let take = |t: &[f32]| [&t[..7 * width], &t[7 * width..11 * width]].concat();
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let got = attention(
            &take(&q),
            &take(&k),
            &take(&v),
            None,
            &[7, 4],
            s.heads,
            scale,
            None,
        );
        let diff = got
            .iter()
            .zip(&take(&want))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "unpadded: max |diff| {diff}");
    }
}
