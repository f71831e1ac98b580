//! Dense layers on weights packed once per loaded model, in the instruction set and number
//! format chosen when the model is loaded:
//!
//! | [`Isa`] | [`Precision`] | panel | register tile | instruction |
//! |---|---|---|---|---|
//! | AVX2 + FMA | f32 | 16 columns | 6 × 16 | `vfmadd231ps ymm` |
//! | AVX-512F | f32 | 32 columns | 12 × 32 | `vfmadd231ps zmm` |
//! | AVX512_BF16 | bf16 weights and activations, f32 sums | 32 | 12 × 32 | `vdpbf16ps` |
//! | AVX512_VNNI | int8 (dynamic) | 32 | 12 × 32 | `vpdpbusd` |
//!
//! burn-flex's GEMM (and `gemm`, which it calls) repacks the whole weight matrix on every
//! call, which for the few rows of a single sentence costs more than the multiply; here the
//! weights are packed as column panels once, and each micro-kernel call streams one panel past
//! a tile of activation rows held in registers.
//!
//! int8 is dynamic quantisation as PyTorch's `quantize_dynamic` does it: weights per output
//! channel, symmetric (scale = max |w| / 127); activations quantised when the layer runs, per
//! row and asymmetric (u8 with a zero point, range including 0), so that the post-GELU inputs of
//! the feed-forward output layer (almost all ≥ −0.17) use the whole range. VNNI has no
//! saturating step (PyTorch's fbgemm keeps 7-bit activations for `vpmaddubsw`, which
//! saturates), so all 8 bits are used. bf16 rounds the weights and each layer's inputs to
//! bfloat16 (round to nearest even) and accumulates in f32.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kernels::OutPtr;

/// The number format of a model's dense layers at inference. Attention scores, softmax,
/// LayerNorm, GELU and the accumulators stay f32 in every format.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (the weights as trained).
    #[default]
    F32,
    /// bfloat16 weights and activations, f32 accumulation (AVX512_BF16).
    Bf16,
    /// Dynamic int8: int8 weights per output channel, u8 activations per row (AVX512_VNNI).
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether this is a reduced precision (anything but f32).
    pub fn reduced(self) -> bool {
        self != Precision::F32
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The x86-64 vector instruction set the packed kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA: 256-bit registers, 16 of them.
    Avx2,
    /// AVX-512F (+ BW): 512-bit registers, 32 of them. bf16 and int8 need their extensions on
    /// top ([`Isa::supports`]).
    Avx512,
}

/// `METAFORA_CPU_ISA=avx2` keeps the AVX2 kernels on a CPU with AVX-512 (to compare, or to
/// rule the AVX-512 path out).
pub const ISA_ENV: &str = "METAFORA_CPU_ISA";

impl Isa {
    /// The widest instruction set this CPU has (AVX-512F + BW, else AVX2 + FMA), unless
    /// [`ISA_ENV`] says `avx2`; `None` when the CPU has neither (inference then runs on
    /// burn's ops).
    pub fn detect() -> Option<Isa> {
        Self::choose(Self::best(), std::env::var(ISA_ENV).ok().as_deref())
    }

    /// The instruction set used on a CPU whose best is `best` when [`ISA_ENV`] is `env`:
    /// `avx2` (any case) keeps AVX2; anything else changes nothing.
    pub fn choose(best: Option<Isa>, env: Option<&str>) -> Option<Isa> {
        let forced_avx2 = env.is_some_and(|v| v.trim().eq_ignore_ascii_case("avx2"));
        best.map(|isa| if forced_avx2 { Isa::Avx2 } else { isa })
    }

    /// The widest instruction set this CPU has, ignoring [`ISA_ENV`].
    pub fn best() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if !(has!("avx2") && has!("fma")) {
                return None;
            }
            if has!("avx512f") && has!("avx512bw") {
                return Some(Isa::Avx512);
            }
            Some(Isa::Avx2)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs `precision` on this instruction set: f32 always; bf16 with
    /// AVX512_BF16, int8 with AVX512_VNNI, both only on the AVX-512 path.
    pub fn supports(self, precision: Precision) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match (self, precision) {
                (_, Precision::F32) => true,
                (Isa::Avx2, _) => false,
                (Isa::Avx512, Precision::Bf16) => has!("avx512bf16"),
                (Isa::Avx512, Precision::Int8) => has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            precision == Precision::F32
        }
    }

    /// Output columns per weight panel.
    fn panel(self, precision: Precision) -> usize {
        match (self, precision) {
            (Isa::Avx2, _) => 16,
            (Isa::Avx512, _) => 32,
        }
    }
}

/// What CPU features the engine found, for logs, `metafora bench` and errors.
pub fn cpu_summary() -> String {
    match Isa::detect() {
        None => "no AVX2/FMA (burn's ops)".into(),
        Some(isa) => {
            let reduced: Vec<&str> = [Precision::Bf16, Precision::Int8]
                .into_iter()
                .filter(|p| isa.supports(*p))
                .map(Precision::as_str)
                .collect();
            let forced = if Isa::best() != Some(isa) {
                format!(" ({ISA_ENV}={})", isa.as_str())
            } else {
                String::new()
            };
            format!(
                "{}{forced}, reduced precision: {}",
                isa.as_str(),
                if reduced.is_empty() {
                    "none".to_string()
                } else {
                    reduced.join(", ")
                }
            )
        }
    }
}

/// Packed weights in one of the formats.
#[derive(Debug, Clone)]
enum Weights {
    /// `[panel][d_in][W]`.
    F32(Vec<f32>),
    /// `[panel][d_in / 2][W][2]` bf16 bits (d_in padded to even with zeros).
    Bf16(Vec<u16>),
    /// `[panel][d_in / 4][W][4]` (d_in padded to a multiple of 4 with zeros), with each
    /// column's scale and, per block of `KW` quads (`[block][column]`), the sum of its
    /// quantised weights there (for the activations' zero point).
    Int8 {
        q: Vec<i8>,
        scale: Vec<f32>,
        colsum: Vec<i32>,
    },
}

/// A Linear layer `y = x · W + b` (W `[d_in, d_out]`, burn's layout) with W packed as column
/// panels (the last one zero-padded), in the format of [`Precision`] for the kernels of
/// [`Isa`].
#[derive(Debug, Clone)]
pub struct PackedLinear {
    d_in: usize,
    d_out: usize,
    isa: Isa,
    precision: Precision,
    weights: Weights,
    /// Bias padded to whole panels (zeros when the layer has none).
    bias: Vec<f32>,
}

/// Cache blocking of the f32 paths: `KC` weight rows of a panel stay in cache while up to
/// `MC` activation rows stream past them (`KC` = 1024 leaves roberta-base's 768-wide layers
/// unblocked; `metafora bench kernels` times the shapes).
const KC: usize = 1024;
const MC: usize = 96;
/// The same for bf16 and int8, in 32-bit words of the packed inputs (pairs, quads): 384 words
/// are 768 bf16 or 1536 int8 inputs, so an `MC` × 384-word activation block (147 KB) and a
/// 384 × 32-word weight panel block (48 KB) share the L2 cache; without it roberta-base's
/// feed-forward output layer (d_in 3072) ran at half the speed of its input layer.
const KW: usize = 384;

impl PackedLinear {
    /// Packs `weight` `[d_in, d_out]` (row-major) and `bias` `[d_out]` in f32 for the best
    /// instruction set of this CPU ([`Isa::detect`]). Needs AVX2 + FMA.
    pub fn new(weight: &[f32], bias: Option<&[f32]>, d_in: usize, d_out: usize) -> Self {
        let isa = Isa::detect().expect("packed kernels need AVX2 and FMA");
        Self::with(weight, bias, d_in, d_out, isa, Precision::F32)
    }

    /// Packs for `isa` in `precision`. Panics when the CPU lacks them ([`Isa::supports`]).
    pub fn with(
        weight: &[f32],
        bias: Option<&[f32]>,
        d_in: usize,
        d_out: usize,
        isa: Isa,
        precision: Precision,
    ) -> Self {
        assert_eq!(weight.len(), d_in * d_out, "weight is not [d_in, d_out]");
        assert!(
            Isa::best().is_some_and(|best| best == Isa::Avx512 || isa == Isa::Avx2)
                && isa.supports(precision),
            "this CPU cannot run {precision} on {isa:?}"
        );
        let w = isa.panel(precision);
        let n_panels = d_out.div_ceil(w);
        // Column c of the packed matrix, row k (0 past d_out).
        let at = |k: usize, c: usize| {
            if c < d_out {
                weight[k * d_out + c]
            } else {
                0.0
            }
        };
        let weights = match precision {
            Precision::F32 => {
                let mut panels = vec![0.0f32; n_panels * d_in * w];
                for (p, panel) in panels.chunks_exact_mut(d_in * w).enumerate() {
                    for (k, row) in panel.chunks_exact_mut(w).enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = at(k, p * w + j);
                        }
                    }
                }
                Weights::F32(panels)
            }
            Precision::Bf16 => {
                let kp = d_in.div_ceil(2);
                let mut panels = vec![0u16; n_panels * kp * w * 2];
                for (p, panel) in panels.chunks_exact_mut(kp * w * 2).enumerate() {
                    for (q, pair) in panel.chunks_exact_mut(w * 2).enumerate() {
                        for j in 0..w {
                            for h in 0..2 {
                                let k = 2 * q + h;
                                if k < d_in {
                                    pair[2 * j + h] = bf16_bits(at(k, p * w + j));
                                }
                            }
                        }
                    }
                }
                Weights::Bf16(panels)
            }
            Precision::Int8 => {
                let kq = d_in.div_ceil(4);
                let cols = n_panels * w;
                let scale: Vec<f32> = (0..cols)
                    .map(|c| {
                        let max = (0..d_in).map(|k| at(k, c).abs()).fold(0.0f32, f32::max);
                        if max > 0.0 { max / 127.0 } else { 1.0 }
                    })
                    .collect();
                let quant = |k: usize, c: usize| -> i8 {
                    (at(k, c) / scale[c]).round().clamp(-127.0, 127.0) as i8
                };
                let blocks = kq.div_ceil(KW);
                let colsum: Vec<i32> = (0..blocks * cols)
                    .map(|i| {
                        let (b, c) = (i / cols, i % cols);
                        (4 * KW * b..(4 * KW * (b + 1)).min(d_in))
                            .map(|k| quant(k, c) as i32)
                            .sum()
                    })
                    .collect();
                let mut q = vec![0i8; n_panels * kq * w * 4];
                for (p, panel) in q.chunks_exact_mut(kq * w * 4).enumerate() {
                    for (g, quad) in panel.chunks_exact_mut(w * 4).enumerate() {
                        for j in 0..w {
                            for h in 0..4 {
                                let k = 4 * g + h;
                                if k < d_in {
                                    quad[4 * j + h] = quant(k, p * w + j);
                                }
                            }
                        }
                    }
                }
                Weights::Int8 { q, scale, colsum }
            }
        };
        let mut padded = vec![0.0f32; n_panels * w];
        if let Some(b) = bias {
            assert_eq!(b.len(), d_out, "bias is not [d_out]");
            padded[..d_out].copy_from_slice(b);
        }
        Self {
            d_in,
            d_out,
            isa,
            precision,
            weights,
            bias: padded,
        }
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of packed weights (the memory the layer holds).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::F32(v) => v.len() * 4,
            Weights::Bf16(v) => v.len() * 2,
            Weights::Int8 { q, scale, colsum } => q.len() + scale.len() * 4 + colsum.len() * 4,
        }
    }

    /// `x` `[rows, d_in]` -> `[rows, d_out]`.
    ///
    /// Column panels are shared out over the rayon pool when the product is big enough to pay
    /// for it (about a millisecond of work per extra thread).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.d_in, self.d_out);
        assert_eq!(x.len(), rows * k, "input is not [rows, d_in]");
        let w = self.isa.panel(self.precision);
        let n_panels = n.div_ceil(w);
        // Output rows padded to whole panels; compacted at the end when d_out is not a
        // multiple of the panel (a classifier head).
        let ldc = n_panels * w;
        let mut out = vec![0.0f32; rows * ldc];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let parallel = rows * k * n >= 1 << 20;
        match &self.weights {
            Weights::F32(panels) => split_panels(n_panels, parallel, |range| {
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    for r0 in (0..rows).step_by(MC) {
                        let r1 = (r0 + MC).min(rows);
                        for p in range.clone() {
                            let wp = &panels[(p * k + k0) * w..(p * k + k0 + kc) * w];
                            let mut r = r0;
                            while r < r1 {
                                let m = self.tile_rows().min(r1 - r);
                                let a = &x[r * k + k0..(r + m - 1) * k + k0 + kc];
                                // SAFETY: the ISA was checked when packing. `a` spans `m` rows
                                // of `kc` at stride `k`; `wp` is `kc` × W; `dst` is `m` rows of
                                // W at stride `ldc` inside `out`, in the columns of panel `p`,
                                // which only this task writes; `init` is the bias (W) or `dst`
                                // itself.
                                unsafe {
                                    let dst = out_ptr.get().add(r * ldc + p * w);
                                    let (init, init_rs) = if k0 == 0 {
                                        (self.bias.as_ptr().add(p * w), 0)
                                    } else {
                                        (dst as *const f32, ldc)
                                    };
                                    // The first tile of a panel block pulls the next panel's
                                    // block towards the caches while it computes (a sentence's
                                    // few rows would otherwise wait on memory for each panel).
                                    let prefetch = if r == r0 && p + 1 < range.end {
                                        panels.as_ptr().add(((p + 1) * k + k0) * w)
                                    } else {
                                        std::ptr::null()
                                    };
                                    let tile = F32Tile {
                                        k: kc,
                                        a: a.as_ptr(),
                                        lda: k,
                                        w: wp.as_ptr(),
                                        init,
                                        init_rs,
                                        dst,
                                        ldc,
                                        prefetch,
                                    };
                                    x86::f32_tile(self.isa, m, tile);
                                }
                                r += m;
                            }
                        }
                    }
                }
            }),
            Weights::Bf16(panels) => {
                let kp = k.div_ceil(2);
                // Activations rounded to bf16, two per 32-bit word (the pair one `vdpbf16ps`
                // lane multiplies), rows padded to whole pairs with zeros.
                let a = x86::bf16_rows(x, rows, k, kp);
                assert_eq!(panels.len() * 2, n_panels * kp * w * 4);
                split_panels(n_panels, parallel, |range| {
                    self.word_tiles(rows, kp, &a, panels.as_ptr().cast(), range, out_ptr, ldc, {
                        // SAFETY: AVX512_BF16 checked when packing; operands from `word_tiles`.
                        |_, _, m, t, wp| unsafe { x86::bf16_tile(m, t, wp.cast()) }
                    })
                })
            }
            Weights::Int8 { q, scale, colsum } => {
                let kq = k.div_ceil(4);
                let (a, row_scale, zero) = x86::quantize_rows(x, rows, k, kq);
                assert_eq!(q.len(), n_panels * kq * w * 4);
                assert_eq!(colsum.len(), kq.div_ceil(KW) * ldc);
                split_panels(n_panels, parallel, |range| {
                    self.word_tiles(rows, kq, &a, q.as_ptr().cast(), range, out_ptr, ldc, {
                        |block, (p, r), m, t, wp| {
                            // SAFETY: AVX512_VNNI checked when packing; operands from
                            // `word_tiles`; rows r..r+m of the row vectors and the 32 columns
                            // of panel `p` in block `block` of the column vectors are in bounds.
                            unsafe {
                                let e = Int8Epilogue {
                                    row_scale: row_scale.as_ptr().add(r),
                                    row_zero: zero.as_ptr().add(r),
                                    col_scale: scale.as_ptr().add(p * w),
                                    col_sum: colsum.as_ptr().add(block * ldc + p * w),
                                };
                                x86::int8_tile(m, t, wp.cast(), e)
                            }
                        }
                    })
                })
            }
        }
        if ldc != n {
            for r in 1..rows {
                out.copy_within(r * ldc..r * ldc + n, r * n);
            }
            out.truncate(rows * n);
        }
        out
    }

    /// The K-blocked tile loops of the bf16 and int8 paths over the panels in `range`: per block
    /// of `KW` words of the packed inputs `a` (`words` per row), per `MC` rows, per panel and
    /// per tile of up to 12 rows, `tile(block, (panel, first row), rows, operands, weights)`,
    /// where `weights` is the panel's block in `panels` (4 bytes per column and word: bf16
    /// pairs or int8 quads, `[panel][words][W]`). The first block starts from the bias, later
    /// ones from the output; the first tile of a panel block prefetches the next panel's.
    #[allow(clippy::too_many_arguments)]
    fn word_tiles(
        &self,
        rows: usize,
        words: usize,
        a: &[u32],
        panels: *const u8,
        range: std::ops::Range<usize>,
        out: OutPtr,
        ldc: usize,
        tile: impl Fn(usize, (usize, usize), usize, WordTile, *const u8),
    ) {
        let w = self.isa.panel(self.precision);
        debug_assert_eq!(a.len(), rows * words);
        for (block, q0) in (0..words).step_by(KW).enumerate() {
            let qc = KW.min(words - q0);
            for r0 in (0..rows).step_by(MC) {
                let r1 = (r0 + MC).min(rows);
                for p in range.clone() {
                    let mut r = r0;
                    while r < r1 {
                        let m = X512_ROWS.min(r1 - r);
                        // SAFETY: the callers checked that `panels` holds all `n_panels` panels
                        // of `words` × W words (4 bytes each) and `a` `rows` × `words`; `p` and
                        // `p + 1` (when in `range`) are panels, rows r..r+m exist, and `dst` is
                        // `m` rows of W at stride `ldc` in the columns of panel `p`, which
                        // only this task writes.
                        unsafe {
                            let dst = out.get().add(r * ldc + p * w);
                            let (init, init_rs) = if q0 == 0 {
                                (self.bias.as_ptr().add(p * w), 0)
                            } else {
                                (dst as *const f32, ldc)
                            };
                            let prefetch = if r == r0 && p + 1 < range.end {
                                panels.add(((p + 1) * words + q0) * w * 4)
                            } else {
                                std::ptr::null()
                            };
                            let t = WordTile {
                                k: qc,
                                a: a.as_ptr().add(r * words + q0),
                                lda: words,
                                init,
                                init_rs,
                                dst,
                                ldc,
                                prefetch,
                            };
                            tile(block, (p, r), m, t, panels.add((p * words + q0) * w * 4));
                        }
                        r += m;
                    }
                }
            }
        }
    }

    /// Activation rows per register tile.
    fn tile_rows(&self) -> usize {
        match self.isa {
            Isa::Avx2 => X256_ROWS,
            Isa::Avx512 => X512_ROWS,
        }
    }
}

/// Rows per tile: AVX2, 6 × 2 accumulators + 2 weight rows + 1 broadcast of 16 registers;
/// AVX-512, 12 × 2 accumulators + 2 weight rows + broadcasts of 32.
const X256_ROWS: usize = 6;
const X512_ROWS: usize = 12;

/// Runs `f` over ranges of column panels: on the calling thread, or split over the rayon pool
/// when `parallel` (and the pool has threads).
fn split_panels(n_panels: usize, parallel: bool, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = rayon::current_num_threads().min(n_panels);
    if parallel && threads > 1 {
        let per = n_panels.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .for_each(|t| f(t * per..((t + 1) * per).min(n_panels)));
    } else {
        f(0..n_panels)
    }
}

/// bfloat16 bits of `v`, rounded to nearest even (NaN stays NaN).
fn bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// One f32 register tile's operands: `m` rows of `a` (row stride `lda`) times `k` rows of a
/// packed panel `w`, added to `init` (row stride `init_rs`: 0 for a bias row), into `dst`
/// (row stride `ldc`).
#[derive(Clone, Copy)]
struct F32Tile {
    k: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    init: *const f32,
    init_rs: usize,
    dst: *mut f32,
    ldc: usize,
    /// `k` × W values to prefetch into L2 while the tile runs (the next panel's block), or
    /// null.
    prefetch: *const f32,
}

/// A bf16 or int8 register tile's operands: `m` rows of packed inputs `a` (pairs or quads
/// in 32-bit words, row stride `lda` words) times `k` words of a packed panel, added to `init`
/// (row stride `init_rs`: 0 for a bias row), into `dst` (row stride `ldc`).
#[derive(Clone, Copy)]
struct WordTile {
    k: usize,
    a: *const u32,
    lda: usize,
    init: *const f32,
    init_rs: usize,
    dst: *mut f32,
    ldc: usize,
    /// The next panel's block to prefetch into L2 while the tile runs (`k` × 128 bytes), or
    /// null.
    prefetch: *const u8,
}

/// Per-row and per-column terms of an int8 tile's block:
/// `y = init + row_scale · col_scale · (Σ a·w − row_zero · col_sum)`.
#[derive(Clone, Copy)]
struct Int8Epilogue {
    row_scale: *const f32,
    row_zero: *const i32,
    col_scale: *const f32,
    col_sum: *const i32,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{F32Tile, Int8Epilogue, Isa, WordTile};

    /// Dispatches `m` rows to the tile of that height for `isa`.
    ///
    /// # Safety
    /// The CPU has `isa`; pointers valid as described on [`F32Tile`].
    pub(super) unsafe fn f32_tile(isa: Isa, m: usize, t: F32Tile) {
        macro_rules! rows {
            ($f:ident, $($n:literal)+) => {
                match m { $($n => $f::<$n>(t),)+ _ => unreachable!("tile of {m} rows") }
            };
        }
        unsafe {
            match isa {
                Isa::Avx2 => rows!(f32_256, 1 2 3 4 5 6),
                Isa::Avx512 => rows!(f32_512, 1 2 3 4 5 6 7 8 9 10 11 12),
            }
        }
    }

    /// The `MR` × 16 AVX2 tile: per step, two loads of the weight row, one broadcast per
    /// activation row and two FMAs per row.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn f32_256<const MR: usize>(t: F32Tile) {
        unsafe {
            let mut lo = [_mm256_setzero_ps(); MR];
            let mut hi = [_mm256_setzero_ps(); MR];
            for r in 0..MR {
                lo[r] = _mm256_loadu_ps(t.init.add(r * t.init_rs));
                hi[r] = _mm256_loadu_ps(t.init.add(r * t.init_rs + 8));
            }
            let mut wp = t.w;
            for p in 0..t.k {
                let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
                for r in 0..MR {
                    let x = _mm256_broadcast_ss(&*t.a.add(r * t.lda + p));
                    lo[r] = _mm256_fmadd_ps(x, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(x, w1, hi[r]);
                }
                wp = wp.add(16);
            }
            for r in 0..MR {
                _mm256_storeu_ps(t.dst.add(r * t.ldc), lo[r]);
                _mm256_storeu_ps(t.dst.add(r * t.ldc + 8), hi[r]);
            }
        }
    }

    /// The `MR` × 32 AVX-512 tile: as the AVX2 one with 16-lane registers (the broadcast
    /// folds into the FMA's memory operand).
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_512<const MR: usize>(t: F32Tile) {
        unsafe {
            let mut lo = [_mm512_setzero_ps(); MR];
            let mut hi = [_mm512_setzero_ps(); MR];
            for r in 0..MR {
                lo[r] = _mm512_loadu_ps(t.init.add(r * t.init_rs));
                hi[r] = _mm512_loadu_ps(t.init.add(r * t.init_rs + 16));
            }
            let mut wp = t.w;
            for p in 0..t.k {
                let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
                if !t.prefetch.is_null() {
                    // Two 64-byte lines: one row of the next panel per step.
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(p * 32).cast());
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(p * 32 + 16).cast());
                }
                for r in 0..MR {
                    let x = _mm512_set1_ps(*t.a.add(r * t.lda + p));
                    lo[r] = _mm512_fmadd_ps(x, w0, lo[r]);
                    hi[r] = _mm512_fmadd_ps(x, w1, hi[r]);
                }
                wp = wp.add(32);
            }
            for r in 0..MR {
                _mm512_storeu_ps(t.dst.add(r * t.ldc), lo[r]);
                _mm512_storeu_ps(t.dst.add(r * t.ldc + 16), hi[r]);
            }
        }
    }

    /// `m` rows of bf16 pairs times a packed bf16 panel block (`t.k` × 32 pairs at `w`).
    ///
    /// # Safety
    /// AVX512_BF16 present; pointers valid as described on [`WordTile`].
    pub(super) unsafe fn bf16_tile(m: usize, t: WordTile, w: *const u16) {
        macro_rules! rows {
            ($($n:literal)+) => {
                match m {
                    $($n => bf16_512::<$n>(t, w),)+
                    _ => unreachable!("tile of {m} rows"),
                }
            };
        }
        unsafe { rows!(1 2 3 4 5 6 7 8 9 10 11 12) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16_512<const MR: usize>(t: WordTile, w: *const u16) {
        unsafe {
            let mut lo = [_mm512_setzero_ps(); MR];
            let mut hi = [_mm512_setzero_ps(); MR];
            for r in 0..MR {
                lo[r] = _mm512_loadu_ps(t.init.add(r * t.init_rs));
                hi[r] = _mm512_loadu_ps(t.init.add(r * t.init_rs + 16));
            }
            let mut wp = w;
            for q in 0..t.k {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(32).cast()));
                if !t.prefetch.is_null() {
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(q * 128).cast());
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(q * 128 + 64).cast());
                }
                for r in 0..MR {
                    let x: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*t.a.add(r * t.lda + q) as i32));
                    lo[r] = _mm512_dpbf16_ps(lo[r], x, w0);
                    hi[r] = _mm512_dpbf16_ps(hi[r], x, w1);
                }
                wp = wp.add(64);
            }
            for r in 0..MR {
                _mm512_storeu_ps(t.dst.add(r * t.ldc), lo[r]);
                _mm512_storeu_ps(t.dst.add(r * t.ldc + 16), hi[r]);
            }
        }
    }

    /// `m` rows of u8 quads times a packed int8 panel block (`t.k` × 32 quads at `w`), scaled
    /// by `e` and added to `t.init`.
    ///
    /// # Safety
    /// AVX512_VNNI + BW present; pointers valid as described on [`WordTile`] (`e`'s row
    /// vectors from the tile's first row, column vectors from its first column).
    pub(super) unsafe fn int8_tile(m: usize, t: WordTile, w: *const i8, e: Int8Epilogue) {
        macro_rules! rows {
            ($($n:literal)+) => {
                match m {
                    $($n => int8_512::<$n>(t, w, e),)+
                    _ => unreachable!("tile of {m} rows"),
                }
            };
        }
        unsafe { rows!(1 2 3 4 5 6 7 8 9 10 11 12) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn int8_512<const MR: usize>(t: WordTile, w: *const i8, e: Int8Epilogue) {
        unsafe {
            let mut lo = [_mm512_setzero_si512(); MR];
            let mut hi = [_mm512_setzero_si512(); MR];
            let mut wp = w;
            for q in 0..t.k {
                let w0 = _mm512_loadu_si512(wp.cast());
                let w1 = _mm512_loadu_si512(wp.add(64).cast());
                if !t.prefetch.is_null() {
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(q * 128).cast());
                    _mm_prefetch::<_MM_HINT_T1>(t.prefetch.add(q * 128 + 64).cast());
                }
                for r in 0..MR {
                    let x = _mm512_set1_epi32(*t.a.add(r * t.lda + q) as i32);
                    lo[r] = _mm512_dpbusd_epi32(lo[r], x, w0);
                    hi[r] = _mm512_dpbusd_epi32(hi[r], x, w1);
                }
                wp = wp.add(128);
            }
            let (cs0, cs1) = (
                _mm512_loadu_si512(e.col_sum.cast()),
                _mm512_loadu_si512(e.col_sum.add(16).cast()),
            );
            let (sc0, sc1) = (
                _mm512_loadu_ps(e.col_scale),
                _mm512_loadu_ps(e.col_scale.add(16)),
            );
            for r in 0..MR {
                let zero = _mm512_set1_epi32(*e.row_zero.add(r));
                let rs = _mm512_set1_ps(*e.row_scale.add(r));
                let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo[r], _mm512_mullo_epi32(zero, cs0)));
                let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi[r], _mm512_mullo_epi32(zero, cs1)));
                let (i0, i1) = (
                    _mm512_loadu_ps(t.init.add(r * t.init_rs)),
                    _mm512_loadu_ps(t.init.add(r * t.init_rs + 16)),
                );
                _mm512_storeu_ps(
                    t.dst.add(r * t.ldc),
                    _mm512_fmadd_ps(v0, _mm512_mul_ps(rs, sc0), i0),
                );
                _mm512_storeu_ps(
                    t.dst.add(r * t.ldc + 16),
                    _mm512_fmadd_ps(v1, _mm512_mul_ps(rs, sc1), i1),
                );
            }
        }
    }

    /// Rows per rayon task when converting `rows` rows of `k` inputs: all of them below
    /// [`crate::infer::cpu::kernels::PARALLEL_ELEMENTS`] values, else a share per thread.
    fn rows_per_task(rows: usize, k: usize) -> usize {
        let threads = rayon::current_num_threads();
        if threads < 2 || rows * k < crate::infer::cpu::kernels::PARALLEL_ELEMENTS {
            rows.max(1)
        } else {
            rows.div_ceil(threads).max(1)
        }
    }

    /// `x` `[rows, k]` rounded to bf16 (nearest even, `vcvtne2ps2bf16`), two per word (`kp`
    /// words per row, a missing last value 0). Needs AVX512_BF16 (checked when packing).
    pub(super) fn bf16_rows(x: &[f32], rows: usize, k: usize, kp: usize) -> Vec<u32> {
        let mut out = vec![0u32; rows * kp];
        let per = rows_per_task(rows, k);
        out.par_chunks_mut((per * kp).max(1))
            .zip(x.par_chunks((per * k).max(1)))
            // SAFETY: only bf16-packed layers call this, and packing checked AVX512_BF16.
            .for_each(|(out, x)| unsafe { bf16_rows_512(x, k, kp, out) });
        out
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn bf16_rows_512(x: &[f32], k: usize, kp: usize, out: &mut [u32]) {
        for (row, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(kp)) {
            let mut c = 0;
            while c + 32 <= k {
                // SAFETY: c + 32 <= k, so 32 values of `row` from c and 16 words of `dst`
                // from c / 2 are in bounds.
                unsafe {
                    let lo = _mm512_loadu_ps(row.as_ptr().add(c));
                    let hi = _mm512_loadu_ps(row.as_ptr().add(c + 16));
                    let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_storeu_si512(dst.as_mut_ptr().add(c / 2).cast(), packed);
                }
                c += 32;
            }
            for (q, d) in dst.iter_mut().enumerate().skip(c / 2) {
                let lo = super::bf16_bits(row[2 * q]) as u32;
                let hi = row
                    .get(2 * q + 1)
                    .map_or(0, |v| super::bf16_bits(*v) as u32);
                *d = lo | (hi << 16);
            }
        }
    }

    /// Dynamic per-row quantisation of `x` `[rows, k]` to u8 with a zero point: each row's
    /// range (including 0) mapped onto 0..=255. Returns the rows four bytes to a word (`kq`
    /// words per row, padding bytes 0), each row's scale and zero point. Needs AVX-512F + BW
    /// (checked when packing).
    pub(super) fn quantize_rows(
        x: &[f32],
        rows: usize,
        k: usize,
        kq: usize,
    ) -> (Vec<u32>, Vec<f32>, Vec<i32>) {
        let mut a = vec![0u32; rows * kq];
        let mut scales = vec![0.0f32; rows];
        let mut zeros = vec![0i32; rows];
        let per = rows_per_task(rows, k);
        a.par_chunks_mut((per * kq).max(1))
            .zip(x.par_chunks((per * k).max(1)))
            .zip(scales.par_chunks_mut(per).zip(zeros.par_chunks_mut(per)))
            .for_each(|((a, x), (scales, zeros))| {
                for (((row, dst), s), z) in x
                    .chunks_exact(k)
                    .zip(a.chunks_exact_mut(kq))
                    .zip(scales.iter_mut())
                    .zip(zeros.iter_mut())
                {
                    // SAFETY: only int8-packed layers call this, and packing checked
                    // AVX-512F + BW.
                    (*s, *z) = unsafe { quantize_row_512(row, dst) };
                }
            });
        (a, scales, zeros)
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn quantize_row_512(row: &[f32], dst: &mut [u32]) -> (f32, i32) {
        // Lane-wise extremes (vectorised), then the row's.
        let (mut lo, mut hi) = ([0.0f32; 16], [0.0f32; 16]);
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for l in 0..16 {
                lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
                hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            }
        }
        let mut lo_v = lo.iter().fold(0.0f32, |a, &b| a.min(b));
        let mut hi_v = hi.iter().fold(0.0f32, |a, &b| a.max(b));
        for &v in chunks.remainder() {
            lo_v = lo_v.min(v);
            hi_v = hi_v.max(v);
        }
        let scale = if hi_v > lo_v {
            (hi_v - lo_v) / 255.0
        } else {
            1.0
        };
        let zero = (-lo_v / scale).round_ties_even().clamp(0.0, 255.0);
        let inv = 1.0 / scale;
        // SAFETY: u32 words viewed as their bytes (little-endian: byte 0 of word q is element
        // 4q); the byte slice covers exactly the words' memory.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 4) };
        for (b, v) in bytes.iter_mut().zip(row) {
            *b = (v * inv + zero).round_ties_even().clamp(0.0, 255.0) as u8;
        }
        (scale, zero as i32)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    //! No packed kernels off x86-64: [`super::Isa::detect`] is `None` there, so nothing calls
    //! these.
    use super::{F32Tile, Int8Epilogue, Isa, WordTile};

    pub(super) unsafe fn f32_tile(_: Isa, _: usize, _: F32Tile) {
        unreachable!("packed kernels are x86-64 only")
    }
    pub(super) unsafe fn bf16_tile(_: usize, _: WordTile, _: *const u16) {
        unreachable!("packed kernels are x86-64 only")
    }
    pub(super) unsafe fn int8_tile(_: usize, _: WordTile, _: *const i8, _: Int8Epilogue) {
        unreachable!("packed kernels are x86-64 only")
    }
    pub(super) fn bf16_rows(_: &[f32], _: usize, _: usize, _: usize) -> Vec<u32> {
        unreachable!("packed kernels are x86-64 only")
    }
    pub(super) fn quantize_rows(
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
    ) -> (Vec<u32>, Vec<f32>, Vec<i32>) {
        unreachable!("packed kernels are x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd_fn(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
    }

    /// The (ISA, precision) pairs this CPU runs.
    fn variants() -> Vec<(Isa, Precision)> {
        let mut v = Vec::new();
        for isa in [Isa::Avx2, Isa::Avx512] {
            if Isa::best().is_none() || (isa == Isa::Avx512 && Isa::best() != Some(Isa::Avx512)) {
                continue;
            }
            for p in Precision::ALL {
                if isa.supports(p) {
                    v.push((isa, p));
                }
            }
        }
        v
    }

    /// Row counts around the 6- and 12-row tiles, widths around the 16/32-column panels (a
    /// 2-label head), and past the blocking edges production hits: more than MC = 96 rows (a
    /// batch of sentences) and d_in > KC = 1024 (the feed-forward output layer of base and
    /// large models, d_in 3072 / 4096) with a remainder block; odd d_in (bf16 pairs, int8
    /// quads).
    const SHAPES: [(usize, usize, usize); 11] = [
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
        (25, 7, 3),
    ];

    #[test]
    fn packed_linear_matches_reference_in_every_isa_and_precision() {
        let variants = variants();
        if variants.is_empty() {
            eprintln!("no AVX2/FMA: packed kernels not used on this CPU");
            return;
        }
        eprintln!("variants on this CPU: {variants:?}");
        let mut rnd = rnd_fn(3);
        for (rows, d_in, d_out) in SHAPES {
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
            for &(isa, precision) in &variants {
                // f32: accumulation error grows with the dot product's length; allow 4× the
                // typical rounding error sqrt(d_in)·ε·|y|, |y| ≈ sqrt(d_in)/3 for these
                // uniform inputs (4.9e-4 at d_in 3072), never under 1e-4.
                // bf16: each product off by up to 2·2⁻⁹ relative, so about 5.3e-4·sqrt(d_in)
                // standard deviation for the sum: 5e-3·sqrt(d_in) is ~9σ.
                // int8: steps of max|w|/127 and range/255 (≈ 1/127 for both): about
                // 1.9e-3·sqrt(d_in) standard deviation, 1.5e-2·sqrt(d_in) is ~8σ.
                // A wrong panel, block, pair or quad is off by whole values (~sqrt(d_in)/3).
                let root = (d_in as f64).sqrt();
                let tol = match precision {
                    Precision::F32 => (4.0 / 3.0 * d_in as f64 * f32::EPSILON as f64).max(1e-4),
                    Precision::Bf16 => 5e-3 * root,
                    Precision::Int8 => 1.5e-2 * root,
                };
                let packed = PackedLinear::with(&w, Some(&b), d_in, d_out, isa, precision);
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let got = pool.install(|| packed.forward(&x, rows));
                    assert_eq!(got.len(), rows * d_out);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (*g as f64 - w).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        diff < tol,
                        "{isa:?} {precision}: {rows}x{d_in}x{d_out}, threads {threads}: \
                         max |diff| {diff} (tolerance {tol})"
                    );
                }
                let no_bias =
                    PackedLinear::with(&w, None, d_in, d_out, isa, precision).forward(&x, rows);
                let diff = no_bias
                    .iter()
                    .zip(&want)
                    .enumerate()
                    .map(|(i, (g, w))| (*g as f64 - (w - b[i % d_out] as f64)).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff < tol,
                    "{isa:?} {precision}: {rows}x{d_in}x{d_out} without bias: max |diff| \
                     {diff} (tolerance {tol})"
                );
            }
        }
    }

    /// The AVX-512 f32 tile adds the same products in the same order as the AVX2 one (k in
    /// order, one FMA each, same cache blocks): results agree to 1e-5 (in fact bit for bit).
    #[test]
    fn avx512_f32_agrees_with_avx2_at_production_shapes() {
        if Isa::best() != Some(Isa::Avx512) {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let mut rnd = rnd_fn(11);
        // roberta-base's projections, feed-forward in and out, and a 2-label head; one
        // sentence (23 tokens) and a batch (8 × 64).
        for (d_in, d_out) in [(768, 768), (768, 3072), (3072, 768), (768, 2)] {
            let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd() * 0.05).collect();
            let b: Vec<f32> = (0..d_out).map(|_| rnd() * 0.1).collect();
            let wide = PackedLinear::with(&w, Some(&b), d_in, d_out, Isa::Avx512, Precision::F32);
            let narrow = PackedLinear::with(&w, Some(&b), d_in, d_out, Isa::Avx2, Precision::F32);
            for rows in [23, 512] {
                let x: Vec<f32> = (0..rows * d_in).map(|_| rnd()).collect();
                let (a, b) = (wide.forward(&x, rows), narrow.forward(&x, rows));
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff <= 1e-5,
                    "{rows}x{d_in}x{d_out}: AVX-512 vs AVX2 {diff}"
                );
            }
        }
    }

    /// The variable's rule (the binary run with it set is tested end to end in
    /// `tests/it/parity.rs`, in its own process: setting it here would race other tests).
    #[test]
    fn the_environment_variable_forces_the_avx2_path() {
        assert_eq!(
            Isa::choose(Some(Isa::Avx512), Some("avx2")),
            Some(Isa::Avx2)
        );
        assert_eq!(
            Isa::choose(Some(Isa::Avx512), Some(" AVX2 ")),
            Some(Isa::Avx2)
        );
        assert_eq!(Isa::choose(Some(Isa::Avx512), None), Some(Isa::Avx512));
        assert_eq!(
            Isa::choose(Some(Isa::Avx512), Some("avx512")),
            Some(Isa::Avx512)
        );
        assert_eq!(Isa::choose(Some(Isa::Avx2), Some("avx2")), Some(Isa::Avx2));
        // No AVX2: nothing to force, burn's ops run.
        assert_eq!(Isa::choose(None, Some("avx2")), None);
        assert!(!Isa::Avx2.supports(Precision::Bf16));
        assert!(!Isa::Avx2.supports(Precision::Int8));
        assert!(Isa::Avx2.supports(Precision::F32));
    }

    #[test]
    fn int8_quantisation_is_per_channel_and_per_row() {
        if !Isa::best().is_some_and(|i| i.supports(Precision::Int8)) {
            eprintln!("no AVX512_VNNI: int8 not used on this CPU");
            return;
        }
        // Column 1's weights are 1000× column 0's and row 1's inputs 1000× row 0's: per-tensor
        // scales would round column 0 and row 0 to nothing; per-channel/per-row keep them to
        // about 1 %.
        let (d_in, d_out, rows) = (64, 2, 2);
        let mut rnd = rnd_fn(5);
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|i| rnd() * if i % 2 == 0 { 1e-3 } else { 1.0 })
            .collect();
        let x: Vec<f32> = (0..rows * d_in)
            .map(|i| rnd().abs() * if i < d_in { 1e-3 } else { 1.0 })
            .collect();
        let got = PackedLinear::with(&w, None, d_in, d_out, Isa::Avx512, Precision::Int8)
            .forward(&x, rows);
        for r in 0..rows {
            for c in 0..d_out {
                let want: f32 = (0..d_in).map(|k| x[r * d_in + k] * w[k * d_out + c]).sum();
                let scale: f32 = (0..d_in)
                    .map(|k| (x[r * d_in + k] * w[k * d_out + c]).abs())
                    .sum();
                let err = (got[r * d_out + c] - want).abs() / scale;
                assert!(err < 0.02, "row {r} column {c}: relative error {err}");
            }
        }
    }
}
