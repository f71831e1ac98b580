//! Tokenizer wrapper, label alignment, dataset readers and batching.
//!
//! Must not import tokio, axum or sqlx.

pub mod align;
pub mod annotations;
pub mod batch;
pub mod dataset;
pub mod spm;
pub mod tokenizer;
pub mod upload;

use std::path::PathBuf;

pub use align::{Example, IGNORE};
pub use dataset::{Dataset, Split};
pub use tokenizer::{Encoded, Tokenizer};

/// Why data could not be read or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A problem in one record: the split (or file), 1-based line and what is wrong.
    #[error("{split} line {line}: {message}")]
    Record {
        split: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}
