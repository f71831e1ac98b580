//! DeBERTa-v2/v3 on the CPU engine: HF `DebertaV2ForTokenClassification` in eval mode.
//!
//! The relative-position terms need no per-request work on the position side: the
//! LayerNorm-ed relative embeddings projected by each layer's key and query projections
//! (`share_att_key`) or its own position projections are computed once, when the engine is
//! built. Per (sequence, head) only the window of relative distances the sequence can reach is
//! multiplied: `c2p[q][j] = Q_q · PK_j` and `p2c[k][j] = K_k · PQ_j` for the rows `j` of the
//! distances in `±(len - 1)`, then `score[q][k] += (c2p[q][j(q-k)] + p2c[k][j(q-k)]) / scale`.

use burn::tensor::backend::Backend;

use crate::model::config::log_bucket;
use crate::model::{DebertaV2Config, DebertaV2ForTokenClassification};

use super::kernels::{BiasAt, PackedLinear, matmul_transposed};
use super::packed::Precision;
use super::{Layer, Norm, host, packed, split_logits};

/// The relative-position side of one layer, projected once.
struct RelativeLayer {
    /// `[2 · span, hidden]`: the key projection of the relative embeddings (`c2p`).
    pos_key: Option<Vec<f32>>,
    /// `[2 · span, hidden]`: the query projection of the relative embeddings (`p2c`).
    pos_query: Option<Vec<f32>>,
}

/// DeBERTa-v2 token classifier on host memory.
pub struct CpuDeberta {
    hidden: usize,
    word_embeddings: Vec<f32>,
    /// With `position_biased_input`.
    position_embeddings: Option<Vec<f32>>,
    /// Row 0 of the token-type table, when there is one.
    token_type: Option<Vec<f32>>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    /// Per layer, with relative attention.
    relative: Vec<RelativeLayer>,
    span: usize,
    position_buckets: i64,
    max_relative: i64,
    /// `1 / sqrt(head_dim · (1 + |pos_att_type|))`.
    scale: f32,
    classifier: PackedLinear,
    num_labels: usize,
}

impl CpuDeberta {
    /// Takes over the weights of `model` (its configuration: `config`): packs the dense layers
    /// and projects the relative embeddings for every layer.
    pub fn new<B: Backend>(
        model: DebertaV2ForTokenClassification<B>,
        config: &DebertaV2Config,
        precision: Precision,
    ) -> Self {
        let eps = config.layer_norm_eps;
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let DebertaV2ForTokenClassification {
            deberta,
            classifier,
            ..
        } = model;
        let e = deberta.embeddings;
        let word_embeddings = host(e.word_embeddings.weight.into_value());
        let position_embeddings = e.position_embeddings.map(|p| host(p.weight.into_value()));
        let token_type = e
            .token_type_embeddings
            .map(|t| host(t.weight.into_value())[..hidden].to_vec());
        let embeddings_norm = Norm::new(e.layer_norm, eps);
        let enc = deberta.encoder;
        // The relative embeddings, LayerNorm-ed as the encoder does once per forward.
        let rel = enc.rel_embeddings.map(|r| {
            let mut w = host(r.weight.into_value());
            if let Some(ln) = enc.layer_norm {
                Norm::new(ln, eps).apply(&mut w, None);
            }
            w
        });
        let rel_rows = rel.as_ref().map_or(0, |r| r.len() / hidden);
        let mut layers = Vec::with_capacity(enc.layer.len());
        let mut relative = Vec::with_capacity(enc.layer.len());
        for l in enc.layer {
            let a = l.attention;
            let sa = a.self_attn;
            let query = packed(sa.query_proj, precision);
            let key = packed(sa.key_proj, precision);
            if let Some(rel) = &rel {
                let pos_key_proj = sa.pos_key_proj.map(|l| packed(l, precision));
                let pos_query_proj = sa.pos_query_proj.map(|l| packed(l, precision));
                let project = |own: &Option<PackedLinear>, shared: &PackedLinear| {
                    own.as_ref().unwrap_or(shared).forward(rel, rel_rows)
                };
                relative.push(RelativeLayer {
                    pos_key: sa.c2p.then(|| project(&pos_key_proj, &key)),
                    pos_query: sa.p2c.then(|| project(&pos_query_proj, &query)),
                });
            }
            layers.push(Layer {
                query,
                key,
                value: packed(sa.value_proj, precision),
                attention_output: packed(a.output.dense, precision),
                attention_norm: Norm::new(a.output.layer_norm, eps),
                intermediate: packed(l.intermediate.dense, precision),
                output: packed(l.output.dense, precision),
                output_norm: Norm::new(l.output.layer_norm, eps),
                heads,
            });
        }
        let factor = 1 + config.c2p() as usize + config.p2c() as usize;
        let classifier = packed(classifier, Precision::F32);
        CpuDeberta {
            hidden,

            word_embeddings,
            position_embeddings,
            token_type,
            embeddings_norm,
            layers,
            relative,
            span: config.att_span(),
            position_buckets: config.position_buckets,
            max_relative: config.max_relative() as i64,
            scale: 1.0 / (((hidden / heads) * factor) as f32).sqrt(),
            num_labels: classifier.d_out(),
            classifier,
        }
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Word (+ absolute position 0.. when the model has them) (+ token type 0) embeddings,
    /// LayerNorm-ed. `[tokens, hidden]`.
    fn embed(&self, sequences: &[&[u32]]) -> Vec<f32> {
        let h = self.hidden;
        let total: usize = sequences.iter().map(|s| s.len()).sum();
        let mut x = Vec::with_capacity(total * h);
        for s in sequences {
            for (pos, &id) in s.iter().enumerate() {
                let id = id as usize;
                let start = x.len();
                x.extend_from_slice(&self.word_embeddings[id * h..(id + 1) * h]);
                let row = &mut x[start..];
                if let Some(p) = &self.position_embeddings {
                    for (v, a) in row.iter_mut().zip(&p[pos * h..(pos + 1) * h]) {
                        *v += a;
                    }
                }
                if let Some(t) = &self.token_type {
                    for (v, a) in row.iter_mut().zip(t) {
                        *v += a;
                    }
                }
            }
        }
        self.embeddings_norm.apply(&mut x, None);
        x
    }

    /// Row of the relative table for distance `d = q - k`.
    fn row(&self, d: i64) -> usize {
        let r = if self.position_buckets > 0 && self.max_relative > 0 {
            log_bucket(d, self.position_buckets, self.max_relative)
        } else {
            d
        };
        (r + self.span as i64).clamp(0, 2 * self.span as i64 - 1) as usize
    }

    /// Logits of sequences of token ids (special tokens included), each `[len, num_labels]`
    /// row-major.
    pub fn logits(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let rows: usize = lengths.iter().sum();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if rows == 0 {
            return vec![Vec::new(); sequences.len()];
        }
        // Table row of every distance in ±(longest - 1): rows[d + longest - 1].
        let table: Vec<usize> = (-(longest as i64 - 1)..longest as i64)
            .map(|d| self.row(d))
            .collect();
        let mut x = self.embed(sequences);
        for (i, l) in self.layers.iter().enumerate() {
            let Some(rel) = self.relative.get(i) else {
                x = l.forward(&x, &lengths, self.scale, None);
                continue;
            };
            let bias = |at: &BiasAt<'_>, scores: &mut [f32]| {
                let (seq, width, head_dim) = (at.seq, at.query.len() / rows, at.head_dim);
                // Table rows the sequence reaches: a window of rows lo..=hi.
                let row = |d: i64| table[(d + longest as i64 - 1) as usize];
                let (lo, hi) = (row(-(seq as i64 - 1)), row(seq as i64 - 1));
                let w = hi - lo + 1;
                let col = at.head * head_dim;
                let mut c2p = vec![0f32; seq * w];
                let mut p2c = vec![0f32; seq * w];
                if let Some(pk) = &rel.pos_key {
                    matmul_transposed(
                        (seq, w, head_dim),
                        &at.query[at.start * width + col..],
                        width,
                        &pk[lo * width + col..],
                        width,
                        &mut c2p,
                        self.scale,
                    );
                }
                if let Some(pq) = &rel.pos_query {
                    matmul_transposed(
                        (seq, w, head_dim),
                        &at.key[at.start * width + col..],
                        width,
                        &pq[lo * width + col..],
                        width,
                        &mut p2c,
                        self.scale,
                    );
                }
                for qi in 0..seq {
                    for ki in 0..seq {
                        let j = row(qi as i64 - ki as i64) - lo;
                        scores[qi * seq + ki] += c2p[qi * w + j] + p2c[ki * w + j];
                    }
                }
            };
            x = l.forward(&x, &lengths, self.scale, Some(&bias));
        }
        split_logits(
            &self.classifier.forward(&x, rows),
            &lengths,
            self.num_labels,
        )
    }
}
