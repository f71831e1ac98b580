//! The CPU inference engine: RoBERTa's forward pass (HF `RobertaForTokenClassification` in
//! eval mode) on host memory, with the dense layers on weights packed once when a model is
//! deployed or evaluated ([`kernels::PackedLinear`]) and attention over unpadded sequences.
//!
//! Built from a loaded burn model ([`CpuRoberta::new`]); the burn model can then be dropped.
//! Sequences of different lengths go back to back through the dense layers as one matrix and
//! each attends within itself, so a batch costs its real tokens, not its padding.

pub mod kernels;

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::model::{ModelConfig, RobertaConfig, RobertaForTokenClassification, TokenClassifier};

use kernels::PackedLinear;

/// Whether this CPU runs the engine (x86-64 with AVX2 and FMA); otherwise inference uses
/// burn's ops. `METAFORA_CPU_KERNELS=off` turns it off (to compare, or to rule it out).
pub fn available() -> bool {
    kernels::packed_kernels_available()
        && std::env::var("METAFORA_CPU_KERNELS").map_or(true, |v| v != "off")
}

/// A model on the CPU engine, by family.
pub enum CpuModel {
    Roberta(CpuRoberta),
}

impl CpuModel {
    /// Takes over `model` when the engine implements its family; gives it back otherwise.
    #[allow(clippy::result_large_err)]
    pub fn new<B: Backend>(
        model: TokenClassifier<B>,
        config: &ModelConfig,
    ) -> Result<Self, TokenClassifier<B>> {
        match (model, config) {
            (TokenClassifier::Roberta(m), ModelConfig::Roberta(c)) => {
                Ok(CpuModel::Roberta(CpuRoberta::new(m, c)))
            }
            (model, _) => Err(model),
        }
    }

    pub fn num_labels(&self) -> usize {
        match self {
            CpuModel::Roberta(m) => m.num_labels(),
        }
    }

    /// Logits of each sequence, `[len, num_labels]` row-major.
    pub fn logits(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        match self {
            CpuModel::Roberta(m) => m.logits(sequences),
        }
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 weights: this is a bug")
}

/// LayerNorm weights.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new<B: Backend>(ln: LayerNorm<B>, eps: f64) -> Self {
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
    fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
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

/// Packs a Linear, consuming it (its weights are freed as the packed copy is made).
fn packed<B: Backend>(l: Linear<B>) -> PackedLinear {
    let [d_in, d_out] = l.weight.dims();
    let w = host(l.weight.into_value());
    let b = l.bias.map(|b| host(b.into_value()));
    PackedLinear::new(&w, b.as_deref(), d_in, d_out)
}

/// One encoder layer (`RobertaLayer`).
struct Layer {
    query: PackedLinear,
    key: PackedLinear,
    value: PackedLinear,
    attention_output: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
}

/// RoBERTa token classifier on host memory.
pub struct CpuRoberta {
    hidden: usize,
    heads: usize,
    pad: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Row 0 of the token-type table (RoBERTa's token types are all 0).
    token_type: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    classifier: PackedLinear,
    num_labels: usize,
}

impl CpuRoberta {
    /// Takes over the weights of `model` (its configuration: `config`), packing the dense
    /// layers; each burn tensor is freed as its host copy is made, so building the engine
    /// does not hold two copies of the model.
    pub fn new<B: Backend>(
        model: RobertaForTokenClassification<B>,
        config: &RobertaConfig,
    ) -> Self {
        let eps = config.layer_norm_eps;
        let hidden = config.hidden_size;
        let RobertaForTokenClassification {
            roberta,
            classifier,
            ..
        } = model;
        let e = roberta.embeddings;
        let pad = e.padding_idx;
        let word_embeddings = host(e.word_embeddings.weight.into_value());
        let position_embeddings = host(e.position_embeddings.weight.into_value());
        let token_type = host(e.token_type_embeddings.weight.into_value())[..hidden].to_vec();
        let embeddings_norm = Norm::new(e.layer_norm, eps);
        let layers = roberta
            .encoder
            .layer
            .into_iter()
            .map(|l| {
                let a = l.attention;
                Layer {
                    query: packed(a.self_attn.query),
                    key: packed(a.self_attn.key),
                    value: packed(a.self_attn.value),
                    attention_output: packed(a.output.dense),
                    attention_norm: Norm::new(a.output.layer_norm, eps),
                    intermediate: packed(l.intermediate.dense),
                    output: packed(l.output.dense),
                    output_norm: Norm::new(l.output.layer_norm, eps),
                }
            })
            .collect();
        let classifier = packed(classifier);
        CpuRoberta {
            hidden,
            heads: config.num_attention_heads,
            pad,
            word_embeddings,
            position_embeddings,
            token_type,
            embeddings_norm,
            layers,
            num_labels: classifier.d_out(),
            classifier,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Rows of the word-embedding table (ids must be below it).
    pub fn vocab_size(&self) -> usize {
        self.word_embeddings.len() / self.hidden
    }

    /// Embeddings of sequences back to back: word + position (HF
    /// `create_position_ids_from_input_ids`: padding_idx + running count of non-padding
    /// tokens, padding_idx for padding) + token type 0, then LayerNorm. `[tokens, hidden]`.
    fn embed(&self, sequences: &[&[u32]]) -> Vec<f32> {
        let h = self.hidden;
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        for s in sequences {
            let mut count = 0;
            for &id in *s {
                let id = id as usize;
                let real = id != self.pad;
                count += real as usize;
                let pos = if real { self.pad + count } else { self.pad };
                let word = &self.word_embeddings[id * h..(id + 1) * h];
                let position = &self.position_embeddings[pos * h..(pos + 1) * h];
                x.extend(
                    word.iter()
                        .zip(position)
                        .zip(&self.token_type)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        self.embeddings_norm.apply(&mut x, None);
        x
    }

    /// Logits of sequences of token ids (special tokens included), each `[len, num_labels]`
    /// row-major. Ids must be below [`vocab_size`](Self::vocab_size).
    pub fn logits(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let rows: usize = lengths.iter().sum();
        if rows == 0 {
            return vec![Vec::new(); sequences.len()];
        }
        let mut x = self.embed(sequences); // [rows, hidden]
        for l in &self.layers {
            let context = kernels::attention(
                &l.query.forward(&x, rows),
                &l.key.forward(&x, rows),
                &l.value.forward(&x, rows),
                None,
                &lengths,
                self.heads,
            );
            let mut attended = l.attention_output.forward(&context, rows);
            l.attention_norm.apply(&mut attended, Some(&x));
            let mut inner = l.intermediate.forward(&attended, rows);
            kernels::gelu_in_place(&mut inner);
            let mut out = l.output.forward(&inner, rows);
            l.output_norm.apply(&mut out, Some(&attended));
            x = out;
        }
        let logits = self.classifier.forward(&x, rows);
        let c = self.num_labels;
        let mut at = 0;
        lengths
            .iter()
            .map(|len| {
                let s = logits[at * c..(at + len) * c].to_vec();
                at += len;
                s
            })
            .collect()
    }
}
