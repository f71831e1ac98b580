//! The Hugging Face `config.json` of a checkpoint, read as is: [`RobertaConfig`] (RoBERTa and
//! XLM-RoBERTa), [`DebertaV2Config`] (DeBERTa-v2/v3, mDeBERTa), and [`ModelConfig`], the family
//! chosen from `model_type`.
//!
//! Field names are HF's so serde reads `config.json` directly; fields metafora does not use are
//! kept in `extra` so an exported model carries them on. A setting the model code does not
//! implement is refused by name, never ignored.

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

fn default_deberta_eps() -> f64 {
    1e-7
}
fn default_zero() -> usize {
    0
}
fn default_true() -> bool {
    true
}
fn default_minus_one() -> i64 {
    -1
}
fn default_norm_rel_ebd() -> String {
    "none".into()
}

/// `pos_att_type` as a list (`["p2c", "c2p"]`) or, in older configs, a string (`"p2c|c2p"`).
fn pos_att_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
        Null,
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v.into_iter().map(|s| s.trim().to_lowercase()).collect(),
        Either::Text(s) => s
            .split('|')
            .map(|x| x.trim().to_lowercase())
            .filter(|x| !x.is_empty())
            .collect(),
        Either::Null => vec![],
    })
}

/// HF `DebertaV2Config` (transformers `models/deberta_v2/configuration_deberta_v2.py`), the
/// config of DeBERTa-v2, DeBERTa-v3 and mDeBERTa-v3.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DebertaV2Config {
    /// 251 000 for mDeBERTa-v3.
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Only `gelu` (exact, erf-based) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Absolute positions (used only when `position_biased_input`) and the default range of
    /// relative positions.
    pub max_position_embeddings: usize,
    /// 0: no token-type embeddings (DeBERTa-v3).
    #[serde(default = "default_zero")]
    pub type_vocab_size: usize,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "default_deberta_eps")]
    pub layer_norm_eps: f64,
    /// Disentangled (relative-position) attention.
    #[serde(default)]
    pub relative_attention: bool,
    /// Range of relative positions; < 1 means `max_position_embeddings`.
    #[serde(default = "default_minus_one")]
    pub max_relative_positions: i64,
    /// Log-bucketed relative positions (256 for v3); <= 0: none.
    #[serde(default = "default_minus_one")]
    pub position_buckets: i64,
    /// `layer_norm`: the relative embeddings go through a LayerNorm.
    #[serde(default = "default_norm_rel_ebd")]
    pub norm_rel_ebd: String,
    /// Relative positions are projected with the content query/key projections.
    #[serde(default)]
    pub share_att_key: bool,
    /// `c2p` (content to position) and/or `p2c` (position to content).
    #[serde(default, deserialize_with = "pos_att_type")]
    pub pos_att_type: Vec<String>,
    /// Absolute position embeddings added to the input (false for v3).
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Not implemented: an embedding projection (`embed_proj`) when it differs from
    /// `hidden_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// Not implemented: the convolution layer of DeBERTa-v2-xlarge (`> 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_kernel_size: Option<usize>,
    /// Not implemented when it differs from `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_head_size: Option<usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub id2label: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label2id: BTreeMap<String, i64>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl DebertaV2Config {
    /// Checks the invariants the model code relies on; names what is not implemented.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_size == 0
            || self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
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
        let head = self.hidden_size / self.num_attention_heads;
        let unsupported = [
            (
                "conv_kernel_size",
                self.conv_kernel_size.is_some_and(|k| k > 0),
            ),
            (
                "embedding_size",
                self.embedding_size.is_some_and(|e| e != self.hidden_size),
            ),
            (
                "attention_head_size",
                self.attention_head_size.is_some_and(|a| a != head),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(format!(
                "{name} = {} is not implemented (DeBERTa-v2/v3 base and large checkpoints do not use it)",
                self.extra_value(name)
            ));
        }
        if let Some(t) = self
            .pos_att_type
            .iter()
            .find(|t| !matches!(t.as_str(), "c2p" | "p2c"))
        {
            return Err(format!(
                "pos_att_type {t:?} is not implemented (only \"c2p\" and \"p2c\")"
            ));
        }
        if !matches!(self.norm_rel_ebd.as_str(), "none" | "layer_norm") {
            return Err(format!(
                "norm_rel_ebd {:?} is not implemented (\"none\" or \"layer_norm\")",
                self.norm_rel_ebd
            ));
        }
        Ok(())
    }

    fn extra_value(&self, name: &str) -> String {
        match name {
            "conv_kernel_size" => format!("{:?}", self.conv_kernel_size),
            "embedding_size" => format!("{:?}", self.embedding_size),
            "attention_head_size" => format!("{:?}", self.attention_head_size),
            _ => String::new(),
        }
    }

    /// Range of relative positions (`max_relative_positions`, or the absolute table's size).
    pub fn max_relative(&self) -> usize {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }

    /// Half the rows of the relative embedding table (`pos_ebd_size` in HF).
    pub fn att_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative()
        }
    }

    pub fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "c2p")
    }

    pub fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "p2c")
    }

    /// A small config for tests and benchmarks (mDeBERTa-v3-base's shape when called with its
    /// sizes).
    pub fn synthetic(
        hidden: usize,
        layers: usize,
        heads: usize,
        intermediate: usize,
        vocab: usize,
    ) -> Self {
        let json = serde_json::json!({
            "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": intermediate,
            "max_position_embeddings": 512, "relative_attention": true, "position_buckets": 256,
            "norm_rel_ebd": "layer_norm", "share_att_key": true, "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": false, "type_vocab_size": 0, "layer_norm_eps": 1e-7,
            "model_type": "deberta-v2"
        });
        serde_json::from_value(json).expect("a valid synthetic config: this is a bug")
    }
}

/// Relative position `q - k` in the bucket the embedding table uses: itself within
/// `bucket_size / 2`, log-spaced beyond up to `max_position` (HF `make_log_bucket_position`,
/// computed in f32 as torch does).
pub fn log_bucket(relative: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    if relative < mid && relative > -mid {
        return relative;
    }
    let abs = relative.abs() as f32;
    let log_pos = ((abs / mid as f32).ln() / ((max_position - 1) as f32 / mid as f32).ln()
        * (mid - 1) as f32)
        .ceil()
        + mid as f32;
    if relative.abs() <= mid {
        relative
    } else {
        log_pos as i64 * relative.signum()
    }
}

/// A checkpoint's configuration, by model family.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ModelConfig {
    /// `roberta`, `xlm-roberta`, `camembert`.
    Roberta(RobertaConfig),
    /// `deberta-v2` (DeBERTa-v2, -v3, mDeBERTa-v3).
    DebertaV2(DebertaV2Config),
}

/// The `model_type`s that load, for error messages.
pub const SUPPORTED_MODEL_TYPES: [&str; 4] = ["roberta", "xlm-roberta", "camembert", "deberta-v2"];

impl ModelConfig {
    /// Reads `config.json` from a model directory; the family comes from `model_type`
    /// (`roberta` when absent, as older RoBERTa checkpoints).
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Io {
            path: path.clone(),
            source: e,
        })?;
        let err = |message: String| LoadError::Config {
            path: path.clone(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let model_type = value
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or("roberta")
            .to_string();
        let config = match model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => {
                ModelConfig::Roberta(serde_json::from_value(value).map_err(|e| err(e.to_string()))?)
            }
            "deberta-v2" => ModelConfig::DebertaV2(
                serde_json::from_value(value).map_err(|e| err(e.to_string()))?,
            ),
            other => {
                return Err(err(format!(
                    "model_type {other:?} is not supported; supported: {}",
                    SUPPORTED_MODEL_TYPES.join(", ")
                )));
            }
        };
        config.validate().map_err(err)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Roberta(c) => c.validate(),
            ModelConfig::DebertaV2(c) => c.validate(),
        }
    }

    /// The family's name (`roberta`, `deberta-v2`).
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Roberta(_) => "roberta",
            ModelConfig::DebertaV2(_) => "deberta-v2",
        }
    }

    /// The HF class of a token classifier of this family.
    pub fn token_classification_architecture(&self) -> &'static str {
        match self {
            ModelConfig::Roberta(c) if c.model_type.as_deref() == Some("xlm-roberta") => {
                "XLMRobertaForTokenClassification"
            }
            ModelConfig::Roberta(c) if c.model_type.as_deref() == Some("camembert") => {
                "CamembertForTokenClassification"
            }
            ModelConfig::Roberta(_) => "RobertaForTokenClassification",
            ModelConfig::DebertaV2(_) => "DebertaV2ForTokenClassification",
        }
    }

    /// The attribute of the encoder in HF's task models (`roberta.*`, `deberta.*` keys).
    pub fn base_prefix(&self) -> &'static str {
        match self {
            ModelConfig::Roberta(_) => "roberta",
            ModelConfig::DebertaV2(_) => "deberta",
        }
    }

    /// The longest token sequence the model takes.
    pub fn max_tokens(&self) -> usize {
        match self {
            ModelConfig::Roberta(c) => c.max_tokens(),
            ModelConfig::DebertaV2(c) => c.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Roberta(c) => c.vocab_size,
            ModelConfig::DebertaV2(c) => c.vocab_size,
        }
    }

    pub fn pad_token_id(&self) -> usize {
        match self {
            ModelConfig::Roberta(c) => c.pad_token_id,
            ModelConfig::DebertaV2(c) => c.pad_token_id,
        }
    }

    pub fn initializer_range(&self) -> f64 {
        match self {
            ModelConfig::Roberta(c) => c.initializer_range,
            ModelConfig::DebertaV2(c) => c.initializer_range,
        }
    }

    /// Label names in id order, when the config has a complete `id2label`.
    pub fn labels(&self) -> Option<Vec<String>> {
        let id2label = match self {
            ModelConfig::Roberta(c) => &c.id2label,
            ModelConfig::DebertaV2(c) => &c.id2label,
        };
        let mut out = Vec::with_capacity(id2label.len());
        for i in 0..id2label.len() {
            out.push(id2label.get(&i.to_string())?.clone());
        }
        (!out.is_empty()).then_some(out)
    }

    /// Sets `id2label`/`label2id` and the token-classification architecture.
    pub fn with_labels(self, labels: &[String]) -> Self {
        let arch = self.token_classification_architecture().to_string();
        let id2label: BTreeMap<String, String> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect();
        let label2id: BTreeMap<String, i64> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i as i64))
            .collect();
        match self {
            ModelConfig::Roberta(mut c) => {
                (c.id2label, c.label2id, c.architectures) = (id2label, label2id, vec![arch]);
                ModelConfig::Roberta(c)
            }
            ModelConfig::DebertaV2(mut c) => {
                (c.id2label, c.label2id, c.architectures) = (id2label, label2id, vec![arch]);
                ModelConfig::DebertaV2(c)
            }
        }
    }

    /// Fields written into an exported `config.json` besides the model's own.
    pub fn set_extra(&mut self, key: &str, value: serde_json::Value) {
        let extra = match self {
            ModelConfig::Roberta(c) => &mut c.extra,
            ModelConfig::DebertaV2(c) => &mut c.extra,
        };
        extra.insert(key.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_att_type_as_list_or_string() {
        let c = DebertaV2Config::synthetic(8, 1, 2, 16, 10);
        assert_eq!(c.pos_att_type, vec!["p2c", "c2p"]);
        let mut v = serde_json::to_value(&c).unwrap();
        v["pos_att_type"] = serde_json::json!("C2P|p2c");
        let c: DebertaV2Config = serde_json::from_value(v).unwrap();
        assert_eq!(c.pos_att_type, vec!["c2p", "p2c"]);
        assert!(c.c2p() && c.p2c());
    }

    #[test]
    fn unsupported_settings_are_refused_by_name() {
        let base = serde_json::to_value(DebertaV2Config::synthetic(8, 1, 2, 16, 10)).unwrap();
        for (key, value, name) in [
            ("conv_kernel_size", serde_json::json!(3), "conv_kernel_size"),
            ("pos_att_type", serde_json::json!(["p2p", "c2p"]), "p2p"),
            ("embedding_size", serde_json::json!(4), "embedding_size"),
            ("hidden_act", serde_json::json!("relu"), "hidden_act"),
        ] {
            let mut v = base.clone();
            v[key] = value;
            let c: DebertaV2Config = serde_json::from_value(v).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn unknown_model_types_list_the_supported_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type": "bert", "vocab_size": 10}"#,
        )
        .unwrap();
        let e = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("\"bert\"") && e.contains("deberta-v2"), "{e}");
    }
}
