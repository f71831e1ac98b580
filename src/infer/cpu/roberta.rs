//! RoBERTa (and XLM-RoBERTa) on the CPU engine: HF `RobertaForTokenClassification` in eval
//! mode.

use burn::tensor::backend::Backend;

use crate::model::{RobertaConfig, RobertaForTokenClassification};

use super::kernels::PackedLinear;
use super::packed::Precision;
use super::{Layer, Norm, host, packed, split_logits};

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
        precision: Precision,
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
                    query: packed(a.self_attn.query, precision),
                    key: packed(a.self_attn.key, precision),
                    value: packed(a.self_attn.value, precision),
                    attention_output: packed(a.output.dense, precision),
                    attention_norm: Norm::new(a.output.layer_norm, eps),
                    intermediate: packed(l.intermediate.dense, precision),
                    output: packed(l.output.dense, precision),
                    output_norm: Norm::new(l.output.layer_norm, eps),
                    heads: config.num_attention_heads,
                }
            })
            .collect();
        let classifier = packed(classifier, Precision::F32);
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
        let scale = 1.0 / ((self.hidden / self.heads) as f32).sqrt();
        for l in &self.layers {
            x = l.forward(&x, &lengths, scale, None);
        }
        split_logits(
            &self.classifier.forward(&x, rows),
            &lengths,
            self.num_labels,
        )
    }
}
