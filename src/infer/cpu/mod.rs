//! The CPU inference engine: a model family's forward pass in eval mode on host memory, with
//! the dense layers on weights packed once when a model is deployed or evaluated
//! ([`kernels::PackedLinear`]) and attention over unpadded sequences: RoBERTa/XLM-R
//! ([`roberta`]) and DeBERTa-v2/v3 ([`deberta_v2`]).
//!
//! Built from a loaded burn model, whose tensors it takes over. Sequences of different lengths
//! go back to back through the dense layers as one matrix and each attends within itself, so a
//! batch costs its real tokens, not its padding.

pub mod deberta_v2;
pub mod kernels;
pub mod packed;
pub mod roberta;

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::model::{ModelConfig, TokenClassifier};

use deberta_v2::CpuDeberta;
use packed::{Isa, PackedLinear, Precision};
use roberta::CpuRoberta;

/// Whether this CPU runs the engine (x86-64 with AVX2 and FMA; AVX-512 when present, see
/// [`packed::Isa`]); otherwise inference uses burn's ops. `METAFORA_CPU_KERNELS=off` turns it
/// off (to compare, or to rule it out).
pub fn available() -> bool {
    kernels::packed_kernels_available()
        && std::env::var("METAFORA_CPU_KERNELS").map_or(true, |v| v != "off")
}

/// A model on the CPU engine, by family.
pub enum CpuModel {
    Roberta(CpuRoberta),
    DebertaV2(CpuDeberta),
}

impl CpuModel {
    /// Takes over `model` when the engine implements its family, its encoder's dense layers
    /// packed in `precision` (the classifier head stays f32); gives it back otherwise.
    /// `precision` must be one this CPU runs ([`Isa::supports`]).
    #[allow(clippy::result_large_err)]
    pub fn new<B: Backend>(
        model: TokenClassifier<B>,
        config: &ModelConfig,
        precision: Precision,
    ) -> Result<Self, TokenClassifier<B>> {
        match (model, config) {
            (TokenClassifier::Roberta(m), ModelConfig::Roberta(c)) => {
                Ok(CpuModel::Roberta(CpuRoberta::new(m, c, precision)))
            }
            (TokenClassifier::DebertaV2(m), ModelConfig::DebertaV2(c)) => {
                Ok(CpuModel::DebertaV2(CpuDeberta::new(m, c, precision)))
            }
            (model, _) => Err(model),
        }
    }

    pub fn num_labels(&self) -> usize {
        match self {
            CpuModel::Roberta(m) => m.num_labels(),
            CpuModel::DebertaV2(m) => m.num_labels(),
        }
    }

    /// Logits of each sequence, `[len, num_labels]` row-major.
    pub fn logits(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        match self {
            CpuModel::Roberta(m) => m.logits(sequences),
            CpuModel::DebertaV2(m) => m.logits(sequences),
        }
    }
}

pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 weights: this is a bug")
}

/// LayerNorm weights.
pub(crate) struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub(crate) fn new<B: Backend>(ln: LayerNorm<B>, eps: f64) -> Self {
        let gamma = host(ln.gamma.into_value());
        let beta = ln
            .beta
            .map(|b| host(b.into_value()))
            .unwrap_or_else(|| vec![0.0; gamma.len()]);
        Norm {
            gamma,
            beta,
            eps: eps as f32,
        }
    }

    /// `x = LayerNorm(x + residual)` row by row (`residual` `None`: plain LayerNorm).
    pub(crate) fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        let h = self.gamma.len();
        match residual {
            // Rows split over the pool for big batches; each piece with its own rows of the
            // residual.
            Some(res)
                if x.len() >= kernels::PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 =>
            {
                use rayon::prelude::*;
                let per = (x.len() / h).div_ceil(rayon::current_num_threads()) * h;
                x.par_chunks_mut(per)
                    .zip(res.par_chunks(per))
                    .for_each(|(x, res)| self.rows(x, Some(res)));
            }
            _ => kernels::for_rows(x, h, kernels::PARALLEL_ELEMENTS, |x| self.rows(x, residual)),
        }
    }

    fn rows(&self, x: &mut [f32], residual: Option<&[f32]>) {
        let h = self.gamma.len();
        for (r, row) in x.chunks_exact_mut(h).enumerate() {
            if let Some(res) = residual {
                for (v, a) in row.iter_mut().zip(&res[r * h..(r + 1) * h]) {
                    *v += a;
                }
            }
            let mean = row.iter().sum::<f32>() / h as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// Packs a Linear in `precision` for this CPU's instruction set, consuming it (its weights
/// are freed as the packed copy is made).
pub(crate) fn packed<B: Backend>(l: Linear<B>, precision: Precision) -> PackedLinear {
    let [d_in, d_out] = l.weight.dims();
    let w = host(l.weight.into_value());
    let b = l.bias.map(|b| host(b.into_value()));
    let isa = Isa::detect().expect("the CPU engine needs AVX2 and FMA: this is a bug");
    PackedLinear::with(&w, b.as_deref(), d_in, d_out, isa, precision)
}

/// Whether this machine's CPU engine runs `precision` (f32: always when the engine runs).
pub fn runs(precision: Precision) -> bool {
    available() && Isa::detect().is_some_and(|isa| isa.supports(precision))
}

/// One encoder layer of a post-LayerNorm transformer (`RobertaLayer`, `DebertaV2Layer`): the
/// families differ only in the attention scores.
pub(crate) struct Layer {
    pub query: PackedLinear,
    pub key: PackedLinear,
    pub value: PackedLinear,
    pub attention_output: PackedLinear,
    pub attention_norm: Norm,
    pub intermediate: PackedLinear,
    pub output: PackedLinear,
    pub output_norm: Norm,
    pub heads: usize,
}

impl Layer {
    /// `x` `[tokens, hidden]` of sequences of `lengths` back to back -> the same shape.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        lengths: &[usize],
        scale: f32,
        score_bias: Option<&kernels::ScoreBias<'_>>,
    ) -> Vec<f32> {
        let rows: usize = lengths.iter().sum();
        let context = kernels::attention(
            &self.query.forward(x, rows),
            &self.key.forward(x, rows),
            &self.value.forward(x, rows),
            None,
            lengths,
            self.heads,
            scale,
            score_bias,
        );
        let mut attended = self.attention_output.forward(&context, rows);
        self.attention_norm.apply(&mut attended, Some(x));
        let mut inner = self.intermediate.forward(&attended, rows);
        kernels::gelu_in_place(&mut inner);
        let mut out = self.output.forward(&inner, rows);
        self.output_norm.apply(&mut out, Some(&attended));
        out
    }
}

/// Per sequence, its rows of `logits` `[tokens, labels]`.
pub(crate) fn split_logits(logits: &[f32], lengths: &[usize], labels: usize) -> Vec<Vec<f32>> {
    let mut at = 0;
    lengths
        .iter()
        .map(|len| {
            let s = logits[at * labels..(at + len) * labels].to_vec();
            at += len;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 6.0 - 3.0
            })
            .collect()
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// LayerNorm (with and without residual), GELU and the int8/bf16 input conversions split
    /// over the pool for big batches (here 200 × 768, above `PARALLEL_ELEMENTS`) give the
    /// same bits as on one thread, including a last piece shorter than the others.
    #[test]
    fn parallel_elementwise_work_equals_one_thread() {
        let (rows, h) = (203, 768);
        let norm = Norm {
            gamma: values(h, 1),
            beta: values(h, 2),
            eps: 1e-5,
        };
        let x = values(rows * h, 3);
        let res = values(rows * h, 4);
        assert!(x.len() >= kernels::PARALLEL_ELEMENTS);
        let run = |threads: usize| {
            pool(threads).install(|| {
                let mut a = x.clone();
                norm.apply(&mut a, Some(&res));
                let mut b = x.clone();
                norm.apply(&mut b, None);
                let mut g = x.clone();
                kernels::gelu_in_place(&mut g);
                (a, b, g)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(run(threads) == one, "{threads} threads differ from one");
        }
        // LayerNorm of one row by hand.
        let row: Vec<f32> = x[..h].iter().zip(&res[..h]).map(|(a, b)| a + b).collect();
        let mean = row.iter().sum::<f32>() / h as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let want = (row[5] - mean) / (var + 1e-5).sqrt() * norm.gamma[5] + norm.beta[5];
        assert!((one.0[5] - want).abs() < 1e-5);
        // The packed layers' input conversions, through a layer that uses them.
        if let Some(isa) = Isa::best() {
            for p in [Precision::Bf16, Precision::Int8] {
                if !isa.supports(p) {
                    continue;
                }
                let w = values(h * 64, 5);
                let layer = PackedLinear::with(&w, None, h, 64, isa, p);
                let y1 = pool(1).install(|| layer.forward(&x, rows));
                let y2 = pool(2).install(|| layer.forward(&x, rows));
                assert!(y1 == y2, "{p}: 2 threads differ from one");
            }
        }
    }
}
