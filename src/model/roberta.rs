//! RoBERTa encoder and token-classification head as burn modules, named after the HF classes.
//!
//! Mirrors transformers v4.57.0 `models/roberta/modeling_roberta.py`
//! <https://github.com/huggingface/transformers/blob/v4.57.0/src/transformers/models/roberta/modeling_roberta.py>:
//! position ids from the padding mask, exact (erf) GELU, post-LayerNorm residual blocks, dropout
//! on embeddings, attention probabilities, both block outputs and before the classifier.
//! Dropout is active only on an autodiff backend (burn's `Dropout` semantics), so the same
//! module evaluates deterministically through `.valid()`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use burn::module::{Module, ParamId};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::RobertaConfig;
use super::cpu_kernels::{self, PackedLinear};

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
        self.forward_with_positions(input_ids, position_ids)
    }

    /// [`forward`](Self::forward) with the position ids given.
    pub fn forward_with_positions(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
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

/// How the attention of a batch is masked.
#[derive(Debug, Clone)]
pub enum AttentionLayout<B: Backend> {
    /// Padded rows `[batch, seq]` with an additive key bias `[batch, 1, 1, seq]`
    /// ([`attention_bias`]), for burn's ops.
    Padded(Tensor<B, 4>),
    /// For the CPU inference kernels ([`cpu_kernels::attention`]): sequences of `lengths` back
    /// to back, each attending within itself, with an additive bias per key token (`None`: no
    /// padding). A padded batch is `batch` sequences of `seq` with the padding bias.
    Host {
        lengths: Arc<[usize]>,
        key_bias: Option<Arc<[f32]>>,
    },
}

impl<B: Backend> RobertaSelfAttention<B> {
    /// `hidden` `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, layout: &AttentionLayout<B>) -> Tensor<B, 3> {
        let [batch, seq, width] = hidden.dims();
        let heads = self.num_attention_heads;
        let head_dim = width / heads;
        let device = hidden.device();
        let mask_bias = match layout {
            AttentionLayout::Padded(mask_bias) => mask_bias.clone(),
            AttentionLayout::Host { lengths, key_bias } => {
                assert!(
                    host_kernels::<B>(&device),
                    "host attention layouts need the CPU inference kernels: this is a bug"
                );
                // Heads are read in place from the projections.
                let context = cpu_kernels::attention(
                    &host_f32(dense(&self.query, hidden.clone())),
                    &host_f32(dense(&self.key, hidden.clone())),
                    &host_f32(dense(&self.value, hidden)),
                    key_bias.as_deref(),
                    lengths,
                    heads,
                );
                return Tensor::from_data(TensorData::new(context, [batch, seq, width]), &device);
            }
        };
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
    pub fn forward(&self, hidden: Tensor<B, 3>, layout: &AttentionLayout<B>) -> Tensor<B, 3> {
        let attn = &self.attention;
        let context = attn.self_attn.forward(hidden.clone(), layout);
        let out = dropout(&attn.output.dropout, dense(&attn.output.dense, context));
        let hidden = attn.output.layer_norm.forward(out + hidden);
        let inner = gelu(dense(&self.intermediate.dense, hidden.clone()));
        let out = dropout(&self.output.dropout, dense(&self.output.dense, inner));
        self.output.layer_norm.forward(out + hidden)
    }
}

/// Exact (erf) GELU. Inference on the CPU backend computes it in one vectorisable pass over
/// the data with [`cpu_kernels::erf_f32`]; burn-flex's kernel calls scalar libm `erff`, which took 8 % of a
/// roberta-base forward. Training keeps burn's op (it has the backward).
fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !host_kernels::<B>(&device) {
        return burn::tensor::activation::gelu(x);
    }
    let shape = x.shape();
    let mut values = host_f32(x);
    cpu_kernels::gelu_in_place(&mut values);
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), &device)
}

/// Dense-layer weights packed for [`cpu_kernels::PackedLinear`], by weight parameter id.
#[derive(Debug)]
pub struct PackedWeights(HashMap<ParamId, PackedLinear>);

thread_local! {
    /// The packed weights of the forward running on this thread ([`ActivePacked`]).
    static ACTIVE_PACKED: RefCell<Option<Arc<PackedWeights>>> = const { RefCell::new(None) };
}

/// Makes packed weights visible to [`dense`] for one forward; restores the previous ones when
/// dropped (also on unwind).
struct ActivePacked(Option<Arc<PackedWeights>>);

impl ActivePacked {
    fn set(packed: Option<Arc<PackedWeights>>) -> Self {
        Self(ACTIVE_PACKED.with(|a| a.replace(packed)))
    }
}

impl Drop for ActivePacked {
    fn drop(&mut self) {
        let previous = self.0.take();
        ACTIVE_PACKED.with(|a| a.replace(previous));
    }
}

/// A Linear on `[batch, seq, in]` as one `[batch * seq, in]` matrix product: one GEMM with the
/// weight packed once, instead of a batched product that repacks it for every sequence. Runs on
/// the packed weights when a forward made them active ([`RobertaForTokenClassification::forward_packed`]).
fn dense<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, width] = x.dims();
    let device = x.device();
    if host_kernels::<B>(&device) {
        let active = ACTIVE_PACKED.with(|a| a.borrow().clone());
        if let Some(layer) = active.as_ref().and_then(|p| p.0.get(&linear.weight.id)) {
            let y = layer.forward(&host_f32(x), batch * seq);
            return Tensor::from_data(TensorData::new(y, [batch, seq, layer.d_out()]), &device);
        }
    }
    let y = linear.forward(x.reshape([batch * seq, width]));
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// Dropout as `torch.nn.Dropout` (zero with probability `p`, scale the rest by `1/(1-p)`), only
/// while training. On the CPU backend the mask comes from [`host_rng`], a per-thread generator
/// the trainer reseeds for every micro-batch, so batch shards trained on parallel threads get
/// reproducible masks (burn's RNG is one process-global stream).
fn dropout<B: Backend, const D: usize>(d: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device) || d.prob == 0.0 {
        return x;
    }
    if !is_cpu_autodiff::<B>(&device) {
        return d.forward(x);
    }
    let shape = x.shape();
    let scale = (1.0 / (1.0 - d.prob)) as f32;
    let mask = host_rng::bernoulli_mask(shape.num_elements(), d.prob, scale);
    x * Tensor::<B, D>::from_data(burn::tensor::TensorData::new(mask, shape), &device)
}

/// Training on burn's CPU backend (`Autodiff<Flex>`).
pub fn is_cpu_autodiff<B: Backend>(device: &B::Device) -> bool {
    B::name(device) == "autodiff<flex>"
}

/// The per-thread generator behind CPU dropout masks (SplitMix64).
pub mod host_rng {
    use std::cell::Cell;

    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
    }

    /// Restarts this thread's sequence: same seed, same masks.
    pub fn reseed(seed: u64) {
        STATE.with(|s| s.set(seed));
    }

    #[inline(always)]
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` values, each `0` with probability `p` and `keep` otherwise (24-bit uniforms).
    pub fn bernoulli_mask(n: usize, p: f64, keep: f32) -> Vec<f32> {
        let threshold = (p * (1u64 << 24) as f64).round() as u32;
        STATE.with(|s| {
            let mut state = s.get();
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let r = next(&mut state);
                for half in [r as u32, (r >> 32) as u32] {
                    if out.len() < n {
                        out.push(if (half >> 8) < threshold { 0.0 } else { keep });
                    }
                }
            }
            s.set(state);
            out
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn mask_rate_and_reproducibility() {
            super::reseed(7);
            let a = super::bernoulli_mask(100_000, 0.1, 2.0);
            super::reseed(7);
            assert_eq!(a, super::bernoulli_mask(100_000, 0.1, 2.0));
            let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
            assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
            assert!(a.iter().all(|v| *v == 0.0 || *v == 2.0));
        }
    }
}

/// Whether the model runs [`cpu_kernels`] instead of burn ops: inference on the CPU backend.
fn host_kernels<B: Backend>(device: &B::Device) -> bool {
    !B::ad_enabled(device) && B::name(device) == "flex"
}

/// The values of an f32 activation tensor (no copy when the tensor is not shared).
fn host_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 activations: this is a bug")
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

impl<B: Backend> RobertaModel<B> {
    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let bias = attention_bias(attention_mask);
        let layout = if host_kernels::<B>(&bias.device()) {
            // The bias read once for every layer's host attention.
            let [batch, _, _, seq] = bias.dims();
            AttentionLayout::Host {
                lengths: vec![seq; batch].into(),
                key_bias: Some(host_f32(bias).into()),
            }
        } else {
            AttentionLayout::Padded(bias)
        };
        let hidden = self.embeddings.forward(input_ids);
        self.encode(hidden, &layout)
    }

    fn encode(&self, mut hidden: Tensor<B, 3>, layout: &AttentionLayout<B>) -> Tensor<B, 3> {
        for layer in &self.encoder.layer {
            hidden = layer.forward(hidden, layout);
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

    /// [`forward`](Self::forward) with the dense layers on `packed` weights (from
    /// [`pack_for_cpu`](Self::pack_for_cpu) of this model; `None` runs burn's ops).
    pub fn forward_packed(
        &self,
        packed: Option<&Arc<PackedWeights>>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let _active = ActivePacked::set(packed.cloned());
        self.forward(input_ids, attention_mask)
    }

    /// Logits of sequences of different lengths with no padding, on the CPU inference kernels:
    /// the sequences go back to back through the dense layers as one matrix and each attends
    /// within itself, so a batch costs what its real tokens cost (a padded batch of 16
    /// single-sentence requests is ~1.8× that). Returns `[len, num_labels]` row-major per
    /// sequence; equal to [`forward`](Self::forward) on the padded batch at the real tokens.
    pub fn forward_unpadded(
        &self,
        packed: &Arc<PackedWeights>,
        sequences: &[&[u32]],
    ) -> Vec<Vec<f32>> {
        let device = self.classifier.weight.device();
        assert!(
            host_kernels::<B>(&device),
            "forward_unpadded runs on the CPU backend"
        );
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let pad = self.roberta.embeddings.padding_idx as i64;
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        for s in sequences {
            // As `forward`: position = running count of non-padding tokens, padding_idx + it.
            let mut count = 0;
            for &id in *s {
                let real = id as i64 != pad;
                count += real as i64;
                ids.push(id as i64);
                positions.push(if real { count + pad } else { pad });
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, total]), &device);
        let positions =
            Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [1, total]), &device);
        let lengths: Arc<[usize]> = sequences.iter().map(|s| s.len()).collect();
        let _active = ActivePacked::set(Some(packed.clone()));
        let hidden = self
            .roberta
            .embeddings
            .forward_with_positions(ids, positions);
        let hidden = self.roberta.encode(
            hidden,
            &AttentionLayout::Host {
                lengths,
                key_bias: None,
            },
        );
        let logits = host_f32(dense(&self.classifier, hidden));
        let labels = self.num_labels();
        let mut out = Vec::with_capacity(sequences.len());
        let mut at = 0;
        for s in sequences {
            out.push(logits[at * labels..(at + s.len()) * labels].to_vec());
            at += s.len();
        }
        out
    }

    /// Every dense layer's weights packed for the CPU kernels, for a model that is only going
    /// to be evaluated (a deployed model, an evaluation pass). `None` unless this is inference
    /// on the CPU backend and the CPU has AVX2 + FMA.
    pub fn pack_for_cpu(&self) -> Option<Arc<PackedWeights>> {
        let device = self.classifier.weight.device();
        if !host_kernels::<B>(&device) || !cpu_kernels::packed_kernels_available() {
            return None;
        }
        let mut packed = HashMap::new();
        let mut add = |l: &Linear<B>| {
            let [d_in, d_out] = l.weight.dims();
            let w = host_f32(l.weight.val());
            let b = l.bias.as_ref().map(|b| host_f32(b.val()));
            packed.insert(
                l.weight.id,
                PackedLinear::new(&w, b.as_deref(), d_in, d_out),
            );
        };
        for layer in &self.roberta.encoder.layer {
            let a = &layer.attention;
            for l in [&a.self_attn.query, &a.self_attn.key, &a.self_attn.value] {
                add(l);
            }
            add(&a.output.dense);
            add(&layer.intermediate.dense);
            add(&layer.output.dense);
        }
        add(&self.classifier);
        Some(Arc::new(PackedWeights(packed)))
    }

    /// Number of labels of the head.
    pub fn num_labels(&self) -> usize {
        self.classifier.weight.lazy_shape().as_slice()[1]
    }
}
