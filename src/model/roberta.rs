//! RoBERTa encoder and token-classification head as burn modules, named after the HF classes.
//!
//! Mirrors transformers v4.57.0 `models/roberta/modeling_roberta.py`
//! <https://github.com/huggingface/transformers/blob/v4.57.0/src/transformers/models/roberta/modeling_roberta.py>:
//! position ids from the padding mask, exact (erf) GELU, post-LayerNorm residual blocks, dropout
//! on embeddings, attention probabilities, both block outputs and before the classifier.
//! Dropout is active only on an autodiff backend (burn's `Dropout` semantics), so the same
//! module evaluates deterministically through `.valid()`. Inference on the CPU runs a host
//! copy of these weights instead (`infer::cpu`); this file is the model and nothing else.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};

use super::config::RobertaConfig;
use super::ops::{attention_bias, dense, dropout};

/// HF `RobertaEmbeddings`.
#[derive(Module, Debug)]
pub struct RobertaEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    /// HF `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
    /// `pad_token_id`: positions start at `padding_idx + 1`.
    pub padding_idx: usize,
}

/// HF `RobertaSelfAttention` (HF attribute path `attention.self`).
#[derive(Module, Debug)]
pub struct RobertaSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    pub num_attention_heads: usize,
}

/// HF `RobertaSelfOutput`.
#[derive(Module, Debug)]
pub struct RobertaSelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF `RobertaAttention`.
#[derive(Module, Debug)]
pub struct RobertaAttention<B: Backend> {
    /// HF `self` (a Rust keyword).
    pub self_attn: RobertaSelfAttention<B>,
    pub output: RobertaSelfOutput<B>,
}

/// HF `RobertaIntermediate`.
#[derive(Module, Debug)]
pub struct RobertaIntermediate<B: Backend> {
    pub dense: Linear<B>,
}

/// HF `RobertaOutput`.
#[derive(Module, Debug)]
pub struct RobertaOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF `RobertaLayer`.
#[derive(Module, Debug)]
pub struct RobertaLayer<B: Backend> {
    pub attention: RobertaAttention<B>,
    pub intermediate: RobertaIntermediate<B>,
    pub output: RobertaOutput<B>,
}

/// HF `RobertaEncoder`.
#[derive(Module, Debug)]
pub struct RobertaEncoder<B: Backend> {
    pub layer: Vec<RobertaLayer<B>>,
}

/// HF `RobertaModel` without the pooler (token classification never uses it).
#[derive(Module, Debug)]
pub struct RobertaModel<B: Backend> {
    pub embeddings: RobertaEmbeddings<B>,
    pub encoder: RobertaEncoder<B>,
}

/// HF `RobertaForTokenClassification`.
#[derive(Module, Debug)]
pub struct RobertaForTokenClassification<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub dropout: Dropout,
    pub classifier: Linear<B>,
}

fn linear(d_in: usize, d_out: usize) -> LinearConfig {
    LinearConfig::new(d_in, d_out)
}

fn layer_norm(config: &RobertaConfig) -> LayerNormConfig {
    LayerNormConfig::new(config.hidden_size).with_epsilon(config.layer_norm_eps)
}

impl RobertaConfig {
    /// Builds the encoder with lazily initialised parameters (filled by the loader).
    pub fn init_model<B: Backend>(&self, device: &B::Device) -> RobertaModel<B> {
        let h = self.hidden_size;
        let hidden_dropout = DropoutConfig::new(self.hidden_dropout_prob);
        let embeddings = RobertaEmbeddings {
            word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
            position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, h).init(device),
            token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, h).init(device),
            layer_norm: layer_norm(self).init(device),
            dropout: hidden_dropout.init(),
            padding_idx: self.pad_token_id,
        };
        let layer = (0..self.num_hidden_layers)
            .map(|_| RobertaLayer {
                attention: RobertaAttention {
                    self_attn: RobertaSelfAttention {
                        query: linear(h, h).init(device),
                        key: linear(h, h).init(device),
                        value: linear(h, h).init(device),
                        dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                        num_attention_heads: self.num_attention_heads,
                    },
                    output: RobertaSelfOutput {
                        dense: linear(h, h).init(device),
                        layer_norm: layer_norm(self).init(device),
                        dropout: hidden_dropout.init(),
                    },
                },
                intermediate: RobertaIntermediate {
                    dense: linear(h, self.intermediate_size).init(device),
                },
                output: RobertaOutput {
                    dense: linear(self.intermediate_size, h).init(device),
                    layer_norm: layer_norm(self).init(device),
                    dropout: hidden_dropout.init(),
                },
            })
            .collect();
        RobertaModel {
            embeddings,
            encoder: RobertaEncoder { layer },
        }
    }

    /// Builds the token classifier; the head is initialised as HF does
    /// (`normal(0, initializer_range)` weights, zero bias) when it is not loaded.
    pub fn init_token_classifier<B: Backend>(
        &self,
        num_labels: usize,
        device: &B::Device,
    ) -> RobertaForTokenClassification<B> {
        RobertaForTokenClassification {
            roberta: self.init_model(device),
            dropout: DropoutConfig::new(self.classifier_dropout_prob()).init(),
            classifier: LinearConfig::new(self.hidden_size, num_labels)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.initializer_range,
                })
                .init(device),
        }
    }
}

impl<B: Backend> RobertaEmbeddings<B> {
    /// `input_ids` `[batch, seq]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let pad = self.padding_idx as i64;
        // HF create_position_ids_from_input_ids: cumsum(mask) * mask + padding_idx.
        let mask = input_ids.clone().not_equal_elem(pad).int(); // [batch, seq]
        let position_ids = mask.clone().cumsum(1) * mask + pad;
        let [batch, seq] = input_ids.dims();
        let hidden = self.word_embeddings.weight.dims()[1];
        // token_type_ids are all zero for RoBERTa: add row 0 of the table.
        let token_type = self
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 0, 1)
            .reshape([1, 1, hidden]);
        let embeddings = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(position_ids)
            + token_type;
        debug_assert_eq!(embeddings.dims(), [batch, seq, hidden]);
        dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}

impl<B: Backend> RobertaSelfAttention<B> {
    /// `hidden` `[batch, seq, hidden]`, `mask_bias` `[batch, 1, 1, seq]` (additive) ->
    /// `[batch, seq, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, seq, width] = hidden.dims();
        let heads = self.num_attention_heads;
        let head_dim = width / heads;
        let device = hidden.device();
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let query = split(dense(&self.query, hidden.clone())); // [batch, heads, seq, head_dim]
        let key = split(dense(&self.key, hidden.clone()));
        let value = split(dense(&self.value, hidden));
        let context = if self.dropout.prob == 0.0 || !B::ad_enabled(&device) {
            // No dropout on the probabilities (inference, evaluation): the backend's fused
            // scaled-dot-product attention, 1/sqrt(head_dim) scale, additive mask.
            attention(
                query,
                key,
                value,
                None,
                Some(mask_bias.expand([batch, heads, seq, seq])),
                AttentionModuleOptions::default(),
            )
        } else {
            let scale = (head_dim as f64).powf(-0.5);
            let scores = query.matmul(key.swap_dims(2, 3)).mul_scalar(scale) + mask_bias; // [batch, heads, seq, seq]
            let probs = dropout(&self.dropout, softmax(scores, 3));
            probs.matmul(value)
        }; // [batch, heads, seq, head_dim]
        context.swap_dims(1, 2).reshape([batch, seq, width])
    }
}

impl<B: Backend> RobertaLayer<B> {
    /// One post-LayerNorm transformer block.
    pub fn forward(&self, hidden: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let attn = &self.attention;
        let context = attn.self_attn.forward(hidden.clone(), mask_bias);
        let out = dropout(&attn.output.dropout, dense(&attn.output.dense, context));
        let hidden = attn.output.layer_norm.forward(out + hidden);
        let inner = gelu(dense(&self.intermediate.dense, hidden.clone()));
        let out = dropout(&self.output.dropout, dense(&self.output.dense, inner));
        self.output.layer_norm.forward(out + hidden)
    }
}

impl<B: Backend> RobertaModel<B> {
    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let bias = attention_bias(attention_mask);
        let mut hidden = self.embeddings.forward(input_ids);
        for layer in &self.encoder.layer {
            hidden = layer.forward(hidden, bias.clone());
        }
        hidden
    }
}

impl<B: Backend> RobertaForTokenClassification<B> {
    /// Logits `[batch, seq, num_labels]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let hidden = self.roberta.forward(input_ids, attention_mask);
        dense(&self.classifier, dropout(&self.dropout, hidden))
    }

    /// Number of labels of the head.
    pub fn num_labels(&self) -> usize {
        self.classifier.weight.lazy_shape().as_slice()[1]
    }
}
