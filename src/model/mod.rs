//! Transformer token classifiers in burn: one file per model family with modules named after
//! the HF classes (RoBERTa and XLM-R in `roberta.rs`, DeBERTa-v2/v3 in `deberta_v2.rs`), their
//! configs, checkpoint import/export, the backend chosen at run time. The rest of the crate
//! sees one type, [`TokenClassifier`], and one config, [`ModelConfig`].
//!
//! Must not import tokio, axum or sqlx.

pub mod backend;
pub mod config;
pub mod deberta_v2;
pub mod export;
pub mod loader;
pub mod ops;
pub mod roberta;
pub mod weights;

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

pub use config::{DebertaV2Config, ModelConfig, RobertaConfig};
pub use deberta_v2::DebertaV2ForTokenClassification;
pub use loader::{HeadInit, LoadReport, load_token_classifier};
pub use roberta::RobertaForTokenClassification;

/// A token classifier of any supported family.
// One per model loaded, never moved in a loop: the variants are not boxed (burn's derive
// visits the variant's module directly).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TokenClassifier<B: Backend> {
    /// RoBERTa, XLM-RoBERTa, CamemBERT.
    Roberta(RobertaForTokenClassification<B>),
    /// DeBERTa-v2, DeBERTa-v3, mDeBERTa-v3.
    DebertaV2(DebertaV2ForTokenClassification<B>),
}

impl<B: Backend> TokenClassifier<B> {
    /// Logits `[batch, seq, num_labels]` of `input_ids` `[batch, seq]` with its
    /// `attention_mask` (1 = token, 0 = padding).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        match self {
            TokenClassifier::Roberta(m) => m.forward(input_ids, attention_mask),
            TokenClassifier::DebertaV2(m) => m.forward(input_ids, attention_mask),
        }
    }

    /// Last hidden state of the encoder `[batch, seq, hidden]`.
    pub fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        match self {
            TokenClassifier::Roberta(m) => m.roberta.forward(input_ids, attention_mask),
            TokenClassifier::DebertaV2(m) => m.deberta.forward(input_ids, attention_mask),
        }
    }

    /// Number of labels of the head.
    pub fn num_labels(&self) -> usize {
        let classifier = match self {
            TokenClassifier::Roberta(m) => &m.classifier,
            TokenClassifier::DebertaV2(m) => &m.classifier,
        };
        classifier.weight.lazy_shape().as_slice()[1]
    }
}

impl ModelConfig {
    /// Builds the family's token classifier with lazily initialised parameters.
    pub fn init_token_classifier<B: Backend>(
        &self,
        num_labels: usize,
        device: &B::Device,
    ) -> TokenClassifier<B> {
        match self {
            ModelConfig::Roberta(c) => {
                TokenClassifier::Roberta(c.init_token_classifier(num_labels, device))
            }
            ModelConfig::DebertaV2(c) => {
                TokenClassifier::DebertaV2(c.init_token_classifier(num_labels, device))
            }
        }
    }
}

/// Why a model could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "no weights in {dir} (looked for model.safetensors, pytorch_model.bin and their sharded index)"
    )]
    NoWeights { dir: PathBuf },
    #[error("missing tensor {key} (expected shape {expected:?})")]
    MissingTensor { key: String, expected: Vec<usize> },
    #[error("checkpoint does not match the model: {}", problems.join("; "))]
    Tensors { problems: Vec<String> },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
