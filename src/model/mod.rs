//! RoBERTa in burn: config, modules named after the HF classes, checkpoint import/export,
//! the backend chosen at run time.
//!
//! Must not import tokio, axum or sqlx.

pub mod backend;
pub mod config;
pub mod export;
pub mod loader;
pub mod ops;
pub mod roberta;
pub mod weights;

use std::path::PathBuf;

pub use config::RobertaConfig;
pub use loader::{HeadInit, LoadReport, load_token_classifier};
pub use roberta::RobertaForTokenClassification;

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
