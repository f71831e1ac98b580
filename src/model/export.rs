//! Export a token classifier as a complete Hugging Face model directory.
//!
//! `config.json` (the family's token-classification architecture, id2label/label2id),
//! `model.safetensors` with HF key names (`roberta.*`/`deberta.*` + `classifier.*`) and the
//! tokenizer files (SentencePiece models included), so
//! `AutoModelForTokenClassification.from_pretrained(dir)` loads it with no missing or
//! unexpected keys.

use std::path::Path;

use burn::tensor::TensorData;
use burn::tensor::backend::Backend;
use safetensors::Dtype;

use super::loader::hf_tensors;
use super::{LoadError, ModelConfig, TokenClassifier};

/// Tokenizer files copied next to an exported model when the source has them.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Writes (key, f32 data) pairs as one safetensors file, atomically (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: &[(String, TensorData)]) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d)| {
            let view =
                safetensors::tensor::TensorView::new(Dtype::F32, d.shape.to_vec(), d.as_bytes())
                    .map_err(|e| LoadError::Format {
                        path: path.into(),
                        message: format!("{k}: {e}"),
                    })?;
            Ok((k.clone(), view))
        })
        .collect::<Result<_, LoadError>>()?;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| LoadError::Format {
        path: path.into(),
        message: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a JSON value atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).expect("serialising JSON: this is a bug"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Saves `model` with `config` (labels set) as an HF directory; copies the tokenizer files
/// found in `tokenizer_dir`, and writes `tokenizer.json` from `tokenizer_json` when the source
/// had only vocab.json + merges.txt.
pub fn save_hf_dir<B: Backend>(
    model: &TokenClassifier<B>,
    config: &ModelConfig,
    tokenizer_dir: &Path,
    tokenizer_json: Option<&str>,
    out: &Path,
) -> Result<(), LoadError> {
    std::fs::create_dir_all(out).map_err(|e| LoadError::Io {
        path: out.into(),
        source: e,
    })?;
    let tensors = hf_tensors(model);
    write_safetensors(&out.join("model.safetensors"), &tensors)?;
    let mut config = config.clone();
    config.set_extra("transformers_version", "4.57.0".into());
    config.set_extra("torch_dtype", "float32".into());
    // How it was trained, for the service that serves it: labels on each word's first
    // sub-token, words split on whitespace (transformers ignores the key).
    config.set_extra(
        "metafora",
        serde_json::json!({"labels_on": "first_sub_token", "words": "whitespace"}),
    );
    write_json(&out.join("config.json"), &config)?;
    copy_tokenizer_files(tokenizer_dir, out)?;
    if let Some(json) = tokenizer_json
        && !out.join("tokenizer.json").exists()
    {
        let path = out.join("tokenizer.json");
        std::fs::write(&path, json).map_err(|e| LoadError::Io { path, source: e })?;
    }
    Ok(())
}

/// Copies whichever tokenizer files exist in `from` into `to`.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<(), LoadError> {
    if from == to {
        return Ok(());
    }
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| LoadError::Io {
                path: dst,
                source: e,
            })?;
        }
    }
    Ok(())
}
