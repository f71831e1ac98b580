//! `RobertaConfig`: the Hugging Face `config.json` of a RoBERTa checkpoint, read as is.
//!
//! Field names are HF's so serde reads `config.json` directly; fields metafora does not use are
//! kept in `extra` so an exported model carries them on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LoadError;

fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_pad_token_id() -> usize {
    1
}
fn default_type_vocab_size() -> usize {
    1
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
fn default_dropout() -> f64 {
    0.1
}

/// HF `RobertaConfig` (transformers `models/roberta/configuration_roberta.py`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RobertaConfig {
    /// Size of the token vocabulary (50 262 for projecte-aina/roberta-*-ca-v2).
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Only `gelu` (exact, erf-based) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout after embeddings, attention output and feed-forward output.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Rows of the position embedding table (RoBERTa: max tokens + 2).
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table (1 for RoBERTa).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Standard deviation of the normal init of a fresh classifier head.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id; also the offset of position ids.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: usize,
    /// Only `absolute` is supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Dropout before the classifier; `hidden_dropout_prob` when null.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    /// Label names by id (string keys, as HF writes them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub id2label: BTreeMap<String, String>,
    /// Label ids by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label2id: BTreeMap<String, i64>,
    /// HF architecture names (`RobertaForMaskedLM`, `RobertaForTokenClassification`, …).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Should be `roberta` (also accepted: `xlm-roberta`, `camembert`, same layout).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Every other field of `config.json`, kept for export.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RobertaConfig {
    /// Reads and validates `config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Io {
            path: path.clone(),
            source: e,
        })?;
        let config: RobertaConfig = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|message| LoadError::Config { path, message })?;
        Ok(config)
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return Err("hidden_size and num_attention_heads must be > 0".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if let Some(t) = &self.model_type
            && !matches!(t.as_str(), "roberta" | "xlm-roberta" | "camembert")
        {
            return Err(format!("model_type {t:?} is not a RoBERTa model"));
        }
        if self.max_position_embeddings <= self.pad_token_id + 1 {
            return Err("max_position_embeddings must exceed pad_token_id + 1".into());
        }
        Ok(())
    }

    /// The longest token sequence the position table allows (514 positions -> 512 tokens).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.pad_token_id - 1
    }

    /// Label names in id order, when the config has a complete `id2label`.
    pub fn labels(&self) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(self.id2label.len());
        for i in 0..self.id2label.len() {
            out.push(self.id2label.get(&i.to_string())?.clone());
        }
        (!out.is_empty()).then_some(out)
    }

    /// Sets `id2label`/`label2id` and the token-classification architecture.
    pub fn with_labels(mut self, labels: &[String]) -> Self {
        self.id2label = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect();
        self.label2id = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i as i64))
            .collect();
        self.architectures = vec!["RobertaForTokenClassification".into()];
        self
    }

    /// Dropout probability in front of the classifier.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// A small config for unit tests and benchmarks (`roberta-base` when called with base sizes).
    pub fn synthetic(
        hidden: usize,
        layers: usize,
        heads: usize,
        intermediate: usize,
        vocab: usize,
    ) -> Self {
        RobertaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            hidden_act: default_hidden_act(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            position_embedding_type: default_position_embedding_type(),
            classifier_dropout: None,
            id2label: BTreeMap::new(),
            label2id: BTreeMap::new(),
            architectures: vec![],
            model_type: Some("roberta".into()),
            extra: serde_json::Map::new(),
        }
    }
}
