//! DeBERTa-v2 encoder and token-classification head as burn modules, named after the HF
//! classes (DeBERTa-v2, DeBERTa-v3 and mDeBERTa-v3 share them).
//!
//! Mirrors transformers v5.24.0 `models/deberta_v2/modeling_deberta_v2.py`
//! <https://github.com/huggingface/transformers/blob/v5.24.0/src/transformers/models/deberta_v2/modeling_deberta_v2.py>:
//! embeddings without absolute positions when `position_biased_input` is false, LayerNorm,
//! then the padding mask; disentangled self-attention — content-to-content plus
//! content-to-position (`c2p`) and position-to-content (`p2c`) terms over log-bucketed relative
//! positions, the relative embeddings LayerNorm-ed once per forward and projected with the
//! layer's own query/key projections when `share_att_key`, every term scaled by
//! `sqrt(head_dim · (1 + |pos_att_type|))`; post-LayerNorm blocks with exact GELU. Dropout is
//! active only on an autodiff backend, as for RoBERTa.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::config::{DebertaV2Config, log_bucket};
use super::ops::{dense, dropout};

/// HF `DebertaV2Embeddings`.
#[derive(Module, Debug)]
pub struct DebertaV2Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    /// Only with `position_biased_input`.
    pub position_embeddings: Option<Embedding<B>>,
    /// Only with `type_vocab_size > 0`.
    pub token_type_embeddings: Option<Embedding<B>>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF `DisentangledSelfAttention` (HF attribute path `attention.self`).
#[derive(Module, Debug)]
pub struct DisentangledSelfAttention<B: Backend> {
    pub query_proj: Linear<B>,
    pub key_proj: Linear<B>,
    pub value_proj: Linear<B>,
    /// Without `share_att_key`: the position projections of `c2p` and `p2c`.
    pub pos_key_proj: Option<Linear<B>>,
    pub pos_query_proj: Option<Linear<B>>,
    pub pos_dropout: Dropout,
    pub dropout: Dropout,
    pub num_attention_heads: usize,
    /// Relative attention on, and which terms.
    pub relative: bool,
    pub c2p: bool,
    pub p2c: bool,
}

/// HF `DebertaV2SelfOutput`.
#[derive(Module, Debug)]
pub struct DebertaV2SelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF `DebertaV2Attention`.
#[derive(Module, Debug)]
pub struct DebertaV2Attention<B: Backend> {
    /// HF `self` (a Rust keyword).
    pub self_attn: DisentangledSelfAttention<B>,
    pub output: DebertaV2SelfOutput<B>,
}

/// HF `DebertaV2Intermediate`.
#[derive(Module, Debug)]
pub struct DebertaV2Intermediate<B: Backend> {
    pub dense: Linear<B>,
}

/// HF `DebertaV2Output`.
#[derive(Module, Debug)]
pub struct DebertaV2Output<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF `DebertaV2Layer`.
#[derive(Module, Debug)]
pub struct DebertaV2Layer<B: Backend> {
    pub attention: DebertaV2Attention<B>,
    pub intermediate: DebertaV2Intermediate<B>,
    pub output: DebertaV2Output<B>,
}

/// HF `DebertaV2Encoder`.
#[derive(Module, Debug)]
pub struct DebertaV2Encoder<B: Backend> {
    pub layer: Vec<DebertaV2Layer<B>>,
    /// `2 · att_span` rows, with relative attention.
    pub rel_embeddings: Option<Embedding<B>>,
    /// With `norm_rel_ebd = "layer_norm"` (HF `LayerNorm` on the encoder).
    pub layer_norm: Option<LayerNorm<B>>,
    pub position_buckets: i64,
    pub max_relative_positions: i64,
    pub att_span: usize,
}

/// HF `DebertaV2Model`.
#[derive(Module, Debug)]
pub struct DebertaV2Model<B: Backend> {
    pub embeddings: DebertaV2Embeddings<B>,
    pub encoder: DebertaV2Encoder<B>,
}

/// HF `DebertaV2ForTokenClassification`.
#[derive(Module, Debug)]
pub struct DebertaV2ForTokenClassification<B: Backend> {
    pub deberta: DebertaV2Model<B>,
    pub dropout: Dropout,
    pub classifier: Linear<B>,
}

impl DebertaV2Config {
    /// Builds the encoder with lazily initialised parameters (filled by the loader).
    pub fn init_model<B: Backend>(&self, device: &B::Device) -> DebertaV2Model<B> {
        let h = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let hidden_dropout = DropoutConfig::new(self.hidden_dropout_prob);
        let relative = self.relative_attention;
        let shared = self.share_att_key;
        let layer = (0..self.num_hidden_layers)
            .map(|_| DebertaV2Layer {
                attention: DebertaV2Attention {
                    self_attn: DisentangledSelfAttention {
                        query_proj: linear(h, h),
                        key_proj: linear(h, h),
                        value_proj: linear(h, h),
                        pos_key_proj: (relative && !shared && self.c2p()).then(|| linear(h, h)),
                        pos_query_proj: (relative && !shared && self.p2c()).then(|| linear(h, h)),
                        pos_dropout: hidden_dropout.init(),
                        dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                        num_attention_heads: self.num_attention_heads,
                        relative,
                        c2p: self.c2p(),
                        p2c: self.p2c(),
                    },
                    output: DebertaV2SelfOutput {
                        dense: linear(h, h),
                        layer_norm: ln(),
                        dropout: hidden_dropout.init(),
                    },
                },
                intermediate: DebertaV2Intermediate {
                    dense: linear(h, self.intermediate_size),
                },
                output: DebertaV2Output {
                    dense: linear(self.intermediate_size, h),
                    layer_norm: ln(),
                    dropout: hidden_dropout.init(),
                },
            })
            .collect();
        DebertaV2Model {
            embeddings: DebertaV2Embeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embeddings: self
                    .position_biased_input
                    .then(|| EmbeddingConfig::new(self.max_position_embeddings, h).init(device)),
                token_type_embeddings: (self.type_vocab_size > 0)
                    .then(|| EmbeddingConfig::new(self.type_vocab_size, h).init(device)),
                layer_norm: ln(),
                dropout: hidden_dropout.init(),
            },
            encoder: DebertaV2Encoder {
                layer,
                rel_embeddings: relative
                    .then(|| EmbeddingConfig::new(2 * self.att_span(), h).init(device)),
                layer_norm: (relative && self.norm_rel_ebd == "layer_norm").then(ln),
                position_buckets: self.position_buckets,
                max_relative_positions: self.max_relative() as i64,
                att_span: self.att_span(),
            },
        }
    }

    /// Builds the token classifier; a fresh head is initialised as HF does
    /// (`normal(0, initializer_range)` weights, zero bias).
    pub fn init_token_classifier<B: Backend>(
        &self,
        num_labels: usize,
        device: &B::Device,
    ) -> DebertaV2ForTokenClassification<B> {
        DebertaV2ForTokenClassification {
            deberta: self.init_model(device),
            dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            classifier: LinearConfig::new(self.hidden_size, num_labels)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.initializer_range,
                })
                .init(device),
        }
    }
}

impl<B: Backend> DebertaV2Embeddings<B> {
    /// `input_ids`, `mask` `[batch, seq]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let hidden = self.word_embeddings.weight.dims()[1];
        let mut embeddings = self.word_embeddings.forward(input_ids); // [batch, seq, hidden]
        if let Some(pos) = &self.position_embeddings {
            // HF position_ids: 0..seq for every row.
            let ids = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .reshape([1, seq])
                .expand([batch, seq]);
            embeddings = embeddings + pos.forward(ids);
        }
        if let Some(tt) = &self.token_type_embeddings {
            // token_type_ids are all zero: row 0 of the table.
            embeddings = embeddings + tt.weight.val().narrow(0, 0, 1).reshape([1, 1, hidden]);
        }
        let embeddings = self.layer_norm.forward(embeddings);
        let mask = mask.float().reshape([batch, seq, 1]);
        dropout(&self.dropout, embeddings * mask)
    }
}

/// `[batch, seq, heads · head_dim]` -> `[batch, heads, seq, head_dim]`.
fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

impl<B: Backend> DisentangledSelfAttention<B> {
    /// `hidden` `[batch, seq, hidden]`; `keep` `[batch, heads, seq, seq]` (true where a query
    /// may attend to a key); `rel` the relative embeddings `[2 · span, hidden]` and `pos_index`
    /// `[batch, heads, seq, seq]` (the embedding row of each query-key distance) with relative
    /// attention. -> `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 4, Bool>,
        rel: Option<(&Tensor<B, 2>, &Tensor<B, 4, Int>)>,
    ) -> Tensor<B, 3> {
        let [batch, seq, width] = hidden.dims();
        let heads = self.num_attention_heads;
        let head_dim = width / heads;
        let query = split_heads(dense(&self.query_proj, hidden.clone()), heads); // [batch, heads, seq, head_dim]
        let key = split_heads(dense(&self.key_proj, hidden.clone()), heads);
        let value = split_heads(dense(&self.value_proj, hidden), heads);
        let factor = 1 + self.c2p as usize + self.p2c as usize;
        let scale = ((head_dim * factor) as f64).sqrt();
        let mut scores = query
            .clone()
            .matmul(key.clone().swap_dims(2, 3).div_scalar(scale)); // [batch, heads, seq, seq]
        if let (true, Some((rel, pos_index))) = (self.relative, rel) {
            let rows = rel.dims()[0];
            let rel = dropout(&self.pos_dropout, rel.clone()).reshape([1, rows, width]);
            let project = |l: &Linear<B>| {
                split_heads(dense(l, rel.clone()), heads).expand([batch, heads, rows, head_dim])
            };
            if self.c2p {
                let pos_key = project(self.pos_key_proj.as_ref().unwrap_or(&self.key_proj));
                // [batch, heads, seq, 2 · span], then the column of each query-key distance.
                let c2p = query.matmul(pos_key.swap_dims(2, 3));
                scores = scores + c2p.gather(3, pos_index.clone()).div_scalar(scale);
            }
            if self.p2c {
                let pos_query = project(self.pos_query_proj.as_ref().unwrap_or(&self.query_proj));
                // Key k and query q meet at row `pos_index[q][k]` of the key's scores: gather
                // with the index transposed, then transpose back.
                let p2c = key.matmul(pos_query.swap_dims(2, 3));
                let p2c = p2c
                    .gather(3, pos_index.clone().swap_dims(2, 3))
                    .swap_dims(2, 3);
                scores = scores + p2c.div_scalar(scale);
            }
        }
        let scores = scores.mask_fill(keep.bool_not(), f32::MIN);
        let probs = dropout(&self.dropout, softmax(scores, 3));
        probs
            .matmul(value) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, seq, width])
    }
}

impl<B: Backend> DebertaV2Layer<B> {
    /// One post-LayerNorm transformer block.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        keep: Tensor<B, 4, Bool>,
        rel: Option<(&Tensor<B, 2>, &Tensor<B, 4, Int>)>,
    ) -> Tensor<B, 3> {
        let attn = &self.attention;
        let context = attn.self_attn.forward(hidden.clone(), keep, rel);
        let out = dropout(&attn.output.dropout, dense(&attn.output.dense, context));
        let hidden = attn.output.layer_norm.forward(out + hidden);
        let inner = gelu(dense(&self.intermediate.dense, hidden.clone()));
        let out = dropout(&self.output.dropout, dense(&self.output.dense, inner));
        self.output.layer_norm.forward(out + hidden)
    }
}

impl<B: Backend> DebertaV2Encoder<B> {
    /// Row of the relative embedding table for each (query, key) distance `q - k` of a
    /// sequence of `seq` tokens: `clamp(bucket(q - k) + span, 0, 2 · span - 1)`, row-major
    /// `[seq, seq]`. The same for every sequence: relative positions depend only on the
    /// distance.
    pub fn position_index(&self, seq: usize) -> Vec<i64> {
        let span = self.att_span as i64;
        let mut out = Vec::with_capacity(seq * seq);
        for q in 0..seq as i64 {
            for k in 0..seq as i64 {
                let r = if self.position_buckets > 0 && self.max_relative_positions > 0 {
                    log_bucket(q - k, self.position_buckets, self.max_relative_positions)
                } else {
                    q - k
                };
                out.push((r + span).clamp(0, 2 * span - 1));
            }
        }
        out
    }

    /// `hidden` `[batch, seq, hidden]`, `mask` `[batch, seq]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, mut hidden: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq, _] = hidden.dims();
        let device = hidden.device();
        let heads = self
            .layer
            .first()
            .map(|l| l.attention.self_attn.num_attention_heads)
            .unwrap_or(1);
        // HF get_attention_mask: a query attends to a key when both are real tokens.
        let m = mask.equal_elem(1);
        let keep = m
            .clone()
            .reshape([batch, 1, seq, 1])
            .expand([batch, 1, seq, seq])
            .bool_and(m.reshape([batch, 1, 1, seq]).expand([batch, 1, seq, seq]))
            .expand([batch, heads, seq, seq]);
        let rel = self.rel_embeddings.as_ref().map(|r| {
            let w = r.weight.val();
            let w = match &self.layer_norm {
                Some(ln) => ln.forward(w),
                None => w,
            };
            let index = Tensor::<B, 2, Int>::from_data(
                TensorData::new(self.position_index(seq), [seq, seq]),
                &device,
            )
            .reshape([1, 1, seq, seq])
            .expand([batch, heads, seq, seq]);
            (w, index)
        });
        for layer in &self.layer {
            hidden = layer.forward(hidden, keep.clone(), rel.as_ref().map(|(w, i)| (w, i)));
        }
        hidden
    }
}

impl<B: Backend> DebertaV2Model<B> {
    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let hidden = self.embeddings.forward(input_ids, attention_mask.clone());
        self.encoder.forward(hidden, attention_mask)
    }
}

impl<B: Backend> DebertaV2ForTokenClassification<B> {
    /// Logits `[batch, seq, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let hidden = self.deberta.forward(input_ids, attention_mask);
        dense(&self.classifier, dropout(&self.dropout, hidden))
    }
}
