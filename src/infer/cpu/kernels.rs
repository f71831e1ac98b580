//! Host kernels of the CPU inference engine, where burn-flex's generic ops cost more than the
//! arithmetic:
//! - dense layers on weights packed once per loaded model ([`PackedLinear`]): burn-flex's GEMM
//!   repacks the whole weight matrix on every call, which for the few rows of a single
//!   sentence costs more than the multiply (figures: README, "CPU inference engine");
//! - scaled-dot-product attention that reads heads in place from the `[batch, seq, heads,
//!   head_dim]` projections (no permute copies), with a vectorisable exp and one task per
//!   (sequence, head) on the rayon pool — burn-flex's runs every (sequence, head) on the calling
//!   thread and calls scalar libm `expf`, which dominated small models' forward passes;
//! - the exact-erf GELU.

use rayon::prelude::*;

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
    with_avx2!({
        for v in values.iter_mut() {
            *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    })
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

/// Output columns per panel of a packed weight: two 8-lane AVX registers.
const PANEL: usize = 16;
/// Rows of activations per micro-kernel call: 6 × 2 accumulator registers + 2 weight rows + 1
/// broadcast fit the 16 AVX registers.
const ROWS: usize = 6;

/// Whether this CPU runs the packed kernels (x86-64 with AVX2 and FMA).
pub fn packed_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A Linear layer `y = x · W + b` (W `[d_in, d_out]`, burn's layout) with W repacked as
/// column panels `[ceil(d_out / 16)][d_in][16]` (the last one zero-padded): the micro-kernel
/// then reads each panel as one sequential stream.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    d_in: usize,
    d_out: usize,
    panels: Vec<f32>,
    /// Bias padded to whole panels (zeros when the layer has none).
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `weight` `[d_in, d_out]` (row-major) and `bias` `[d_out]`.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, d_in: usize, d_out: usize) -> Self {
        assert_eq!(weight.len(), d_in * d_out, "weight is not [d_in, d_out]");
        let n_panels = d_out.div_ceil(PANEL);
        let mut panels = vec![0.0f32; n_panels * d_in * PANEL];
        for (p, panel) in panels.chunks_exact_mut(d_in * PANEL).enumerate() {
            let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(d_out));
            for (k, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                row[..c1 - c0].copy_from_slice(&weight[k * d_out + c0..k * d_out + c1]);
            }
        }
        let mut padded = vec![0.0f32; n_panels * PANEL];
        if let Some(b) = bias {
            assert_eq!(b.len(), d_out, "bias is not [d_out]");
            padded[..d_out].copy_from_slice(b);
        }
        Self {
            d_in,
            d_out,
            panels,
            bias: padded,
        }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `x` `[rows, d_in]` -> `[rows, d_out]`. Needs [`packed_kernels_available`].
    ///
    /// Blocked like a BLAS GEMM: `KC` weight rows × 16 columns of a panel stay in cache while up
    /// to `MC` activation rows (`MC × KC`, in L2) stream past them; column panels are shared out
    /// over the rayon pool when the product is big enough to pay for it. (`KC` = 1024 leaves
    /// roberta-base's 768-wide layers unblocked: smaller blocks measured slower for a single
    /// sentence; `metafora bench kernels` times the shapes.)
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        const KC: usize = 1024;
        const MC: usize = 96;
        let (k, n) = (self.d_in, self.d_out);
        assert_eq!(x.len(), rows * k, "input is not [rows, d_in]");
        assert!(
            packed_kernels_available(),
            "packed kernels need AVX2 and FMA"
        );
        let n_panels = n.div_ceil(PANEL);
        // Output rows padded to whole panels; compacted at the end when d_out is not a
        // multiple of 16 (a classifier head).
        let ldc = n_panels * PANEL;
        let mut out = vec![0.0f32; rows * ldc];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let panels = |range: std::ops::Range<usize>| {
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for r0 in (0..rows).step_by(MC) {
                    let r1 = (r0 + MC).min(rows);
                    for p in range.clone() {
                        let w = &self.panels[(p * k + k0) * PANEL..(p * k + k0 + kc) * PANEL];
                        let mut r = r0;
                        while r < r1 {
                            let m = ROWS.min(r1 - r);
                            let a = &x[r * k + k0..(r + m - 1) * k + k0 + kc];
                            // SAFETY: AVX2/FMA checked above. `a` spans `m` rows of `kc` at
                            // stride `k`; `w` is `kc` × 16; `dst` is `m` rows of 16 at stride
                            // `ldc` inside `out`, in the columns of panel `p`, which only this
                            // task writes; `init` is the bias (16) or `dst` itself.
                            unsafe {
                                let dst = out_ptr.get().add(r * ldc + p * PANEL);
                                let (init, init_rs) = if k0 == 0 {
                                    (self.bias.as_ptr().add(p * PANEL), 0)
                                } else {
                                    (dst as *const f32, ldc)
                                };
                                #[cfg(target_arch = "x86_64")]
                                micro_kernel(
                                    m,
                                    kc,
                                    a.as_ptr(),
                                    k,
                                    w.as_ptr(),
                                    init,
                                    init_rs,
                                    dst,
                                    ldc,
                                );
                                #[cfg(not(target_arch = "x86_64"))]
                                unreachable!(
                                    "packed kernels are x86-64 only: {:?}",
                                    (dst, init, init_rs, a, w)
                                );
                            }
                            r += m;
                        }
                    }
                }
            }
        };
        let threads = rayon::current_num_threads().min(n_panels);
        // About a millisecond of work per extra thread before splitting is worth it.
        if threads > 1 && rows * k * n >= 1 << 20 {
            let per = n_panels.div_ceil(threads);
            (0..threads)
                .into_par_iter()
                .for_each(|t| panels(t * per..((t + 1) * per).min(n_panels)));
        } else {
            panels(0..n_panels);
        }
        if ldc != n {
            for r in 1..rows {
                out.copy_within(r * ldc..r * ldc + n, r * n);
            }
            out.truncate(rows * n);
        }
        out
    }
}

/// `m` (1..=6) rows of `a` (row stride `lda`) times `k` rows of one packed panel, added to
/// `init` (row stride `init_rs`: 0 for a bias row), into `dst` (row stride `ldc`).
///
/// # Safety
/// AVX2 and FMA present; pointers valid as described in [`PackedLinear::forward`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    init: *const f32,
    init_rs: usize,
    dst: *mut f32,
    ldc: usize,
) {
    unsafe {
        match m {
            6 => micro_kernel_rows::<6>(k, a, lda, w, init, init_rs, dst, ldc),
            5 => micro_kernel_rows::<5>(k, a, lda, w, init, init_rs, dst, ldc),
            4 => micro_kernel_rows::<4>(k, a, lda, w, init, init_rs, dst, ldc),
            3 => micro_kernel_rows::<3>(k, a, lda, w, init, init_rs, dst, ldc),
            2 => micro_kernel_rows::<2>(k, a, lda, w, init, init_rs, dst, ldc),
            _ => micro_kernel_rows::<1>(k, a, lda, w, init, init_rs, dst, ldc),
        }
    }
}

/// The `MR` × 16 register tile: for each of the `k` steps, two loads of the weight row, one
/// broadcast per activation row and two FMAs per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel_rows<const MR: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    init: *const f32,
    init_rs: usize,
    dst: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut lo = [_mm256_setzero_ps(); MR];
        let mut hi = [_mm256_setzero_ps(); MR];
        for r in 0..MR {
            lo[r] = _mm256_loadu_ps(init.add(r * init_rs));
            hi[r] = _mm256_loadu_ps(init.add(r * init_rs + 8));
        }
        let mut wp = w;
        for p in 0..k {
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            for r in 0..MR {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                lo[r] = _mm256_fmadd_ps(x, w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(x, w1, hi[r]);
            }
            wp = wp.add(PANEL);
        }
        for r in 0..MR {
            _mm256_storeu_ps(dst.add(r * ldc), lo[r]);
            _mm256_storeu_ps(dst.add(r * ldc + 8), hi[r]);
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own (sequence, head) columns; see `attention`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    fn get(self) -> *mut f32 {
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
    fn packed_linear_matches_reference() {
        if !packed_kernels_available() {
            eprintln!("no AVX2/FMA: packed kernels not used on this CPU");
            return;
        }
        let mut state = 3u64;
        let mut rnd = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        // Row counts around the 6-row tile, widths around the 16-column panel (a 2-label head).
        // Also past the blocking edges production hits: more than MC = 96 activation rows
        // (a batch of sentences) and d_in > KC = 1024 (the feed-forward output layer of base
        // and large models, d_in 3072 / 4096), with a remainder block.
        for (rows, d_in, d_out) in [
            (1, 8, 16),
            (7, 33, 2),
            (13, 64, 40),
            (35, 96, 128),
            (70, 128, 512),
            (97, 64, 24),
            (200, 48, 17),
            (5, 1025, 16),
            (31, 3072, 40),
            (103, 2100, 33),
        ] {
            let x: Vec<f32> = (0..rows * d_in).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..d_out).map(|_| rnd()).collect();
            let want: Vec<f64> = (0..rows * d_out)
                .map(|i| {
                    let (r, c) = (i / d_out, i % d_out);
                    b[c] as f64
                        + (0..d_in)
                            .map(|k| x[r * d_in + k] as f64 * w[k * d_out + c] as f64)
                            .sum::<f64>()
                })
                .collect();
            // f32 accumulation error grows with the dot product's length: allow 4× the typical
            // rounding error sqrt(d_in)·ε·|y|, with |y| ≈ sqrt(d_in)/3 for these uniform
            // inputs (4.9e-4 at d_in 3072), never less than 1e-4. A wrong panel, block or
            // remainder is off by whole values (~1).
            let tol = (4.0 / 3.0 * d_in as f64 * f32::EPSILON as f64).max(1e-4);
            let packed = PackedLinear::new(&w, Some(&b), d_in, d_out);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| packed.forward(&x, rows));
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff < tol,
                    "{rows}x{d_in}x{d_out}, threads {threads}: max |diff| {diff} (tolerance {tol})"
                );
            }
            let no_bias = PackedLinear::new(&w, None, d_in, d_out).forward(&x, rows);
            let diff = no_bias
                .iter()
                .zip(&want)
                .enumerate()
                .map(|(i, (g, w))| (*g as f64 - (w - b[i % d_out] as f64)).abs())
                .fold(0.0, f64::max);
            assert!(
                diff < tol,
                "{rows}x{d_in}x{d_out} without bias: max |diff| {diff} (tolerance {tol})"
            );
        }
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
