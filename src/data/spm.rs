//! SentencePiece model files (`spm.model` of DeBERTa-v2/v3, `sentencepiece.bpe.model` of
//! XLM-RoBERTa) read from their protobuf (`sentencepiece_model.proto`) and turned into the
//! `tokenizers` pipeline that encodes like `SentencePieceProcessor.encode`: the model's own
//! normalizer (its precompiled charsmap — NFKC for mDeBERTa — then SentencePiece's whitespace
//! rules), a Metaspace pre-tokenizer with the dummy prefix, a Unigram model with the pieces'
//! scores, and `[CLS] … [SEP]` or `<s> … </s>` around each sequence.
//!
//! transformers 5 converts DeBERTa's `spm.model` with NFC instead of the charsmap, so
//! NFKC-only characters (the precomposed Catalan `ŀ` U+0140, ligatures, circled digits) become
//! `[UNK]` there while the model was trained on their NFKC forms (`l·`); this module follows
//! SentencePiece.

use base64::Engine;
use prost::Message;
use serde_json::{Value, json};

use super::DataError;

/// `sentencepiece.ModelProto`, the fields a tokenizer needs.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
}

/// `ModelProto.SentencePiece`.
#[derive(Clone, PartialEq, Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6.
    #[prost(int32, optional, tag = "3", default = "1")]
    pub r#type: Option<i32>,
}

/// `sentencepiece.TrainerSpec`, the fields a tokenizer needs.
#[derive(Clone, PartialEq, Message)]
pub struct TrainerSpec {
    /// UNIGRAM = 1, BPE = 2, WORD = 3, CHAR = 4.
    #[prost(int32, optional, tag = "3", default = "1")]
    pub model_type: Option<i32>,
    #[prost(bool, optional, tag = "35", default = "false")]
    pub byte_fallback: Option<bool>,
    #[prost(int32, optional, tag = "40", default = "0")]
    pub unk_id: Option<i32>,
}

/// `sentencepiece.NormalizerSpec`.
#[derive(Clone, PartialEq, Message)]
pub struct NormalizerSpec {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    #[prost(bool, optional, tag = "3", default = "true")]
    pub add_dummy_prefix: Option<bool>,
    #[prost(bool, optional, tag = "4", default = "true")]
    pub remove_extra_whitespaces: Option<bool>,
    #[prost(bool, optional, tag = "5", default = "true")]
    pub escape_whitespaces: Option<bool>,
}

const NORMAL: i32 = 1;
const USER_DEFINED: i32 = 4;
const UNIGRAM: i32 = 1;

/// How ids are laid out around the SentencePiece vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The file's own ids; `[CLS] … [SEP]` (DeBERTa-v2/v3).
    Deberta,
    /// fairseq's: `<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3, the file's pieces from its fourth on
    /// shifted by one, `<mask>` last; `<s> … </s>` (XLM-RoBERTa's `sentencepiece.bpe.model`).
    Fairseq,
}

/// Reads a SentencePiece model file.
pub fn read_model(bytes: &[u8], file: &str) -> Result<ModelProto, DataError> {
    let proto = ModelProto::decode(bytes)
        .map_err(|e| DataError::Tokenizer(format!("{file}: not a SentencePiece model: {e}")))?;
    if proto.pieces.is_empty() {
        return Err(DataError::Tokenizer(format!("{file}: no pieces")));
    }
    let model_type = proto
        .trainer_spec
        .as_ref()
        .and_then(|t| t.model_type)
        .unwrap_or(UNIGRAM);
    if model_type != UNIGRAM {
        return Err(DataError::Tokenizer(format!(
            "{file}: SentencePiece model type {model_type} is not supported (only unigram, which mDeBERTa and XLM-R use)"
        )));
    }
    Ok(proto)
}

/// A piece: text, score, type.
type Piece = (String, f64, i32);

fn added(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": true})
}

fn special(name: &str, id: usize) -> Value {
    json!({"id": name, "ids": [id], "tokens": [name]})
}

/// The `tokenizer.json` document of a SentencePiece model in `layout`; also returns the names
/// of the CLS, SEP and PAD tokens.
pub fn tokenizer_json(proto: &ModelProto, layout: Layout) -> Result<Value, DataError> {
    let pieces: Vec<Piece> = proto
        .pieces
        .iter()
        .map(|p| {
            (
                p.piece.clone().unwrap_or_default(),
                p.score.unwrap_or(0.0) as f64,
                p.r#type.unwrap_or(NORMAL),
            )
        })
        .collect();
    let trainer = proto.trainer_spec.clone().unwrap_or_default();
    let norm = proto.normalizer_spec.clone().unwrap_or_default();
    let (vocab, unk_id, specials, cls, sep): (Vec<Piece>, usize, Vec<usize>, &str, &str) =
        match layout {
            Layout::Deberta => {
                let unk = trainer.unk_id.unwrap_or(0).max(0) as usize;
                let specials = pieces
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !matches!(p.2, NORMAL | USER_DEFINED))
                    .map(|(i, _)| i)
                    .collect();
                (pieces, unk, specials, "[CLS]", "[SEP]")
            }
            Layout::Fairseq => {
                let mut v: Vec<(String, f64, i32)> = ["<s>", "<pad>", "</s>", "<unk>"]
                    .iter()
                    .map(|s| (s.to_string(), 0.0, 3))
                    .collect();
                v.extend(pieces.into_iter().skip(3));
                v.push(("<mask>".into(), 0.0, 3));
                let specials = vec![0, 1, 2, 3, v.len() - 1];
                (v, 3, specials, "<s>", "</s>")
            }
        };
    let id_of = |name: &str| vocab.iter().position(|p| p.0 == name);
    let (cls_id, sep_id) = match (id_of(cls), id_of(sep)) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(DataError::Tokenizer(format!(
                "the SentencePiece model has no {cls} or {sep} piece"
            )));
        }
    };
    let user_defined: Vec<&str> = vocab
        .iter()
        .filter(|p| p.2 == USER_DEFINED)
        .map(|p| p.0.as_str())
        .collect();
    // SentencePiece's order: charsmap, then whitespace rules.
    let mut normalizers = Vec::new();
    if let Some(map) = norm.precompiled_charsmap.as_ref().filter(|m| !m.is_empty()) {
        normalizers.push(json!({"type": "Precompiled",
            "precompiled_charsmap": base64::engine::general_purpose::STANDARD.encode(map)}));
    }
    if norm.remove_extra_whitespaces.unwrap_or(true) {
        normalizers
            .push(json!({"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""}));
        normalizers.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
    }
    // Pre-tokens split at spaces, each with the dummy prefix (`▁word`): the word ids pre-split
    // input and word-level aggregation need. Unigram pieces never span a space (SentencePiece
    // trains them within whitespace-separated words), so the ids are SentencePiece's.
    let mut pre = vec![json!({"type": "Metaspace", "replacement": "▁",
        "prepend_scheme": if norm.add_dummy_prefix.unwrap_or(true) { "always" } else { "never" },
        "split": true})];
    if !user_defined.is_empty() {
        let mut sorted = user_defined.clone();
        sorted.sort_by_key(|p| std::cmp::Reverse(p.chars().count()));
        let pattern = sorted
            .iter()
            .map(|p| fancy_escape(p))
            .collect::<Vec<_>>()
            .join("|");
        pre.push(json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false}));
    }
    let template = |a: &str, b: &str| {
        json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": a, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": b, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": a, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": b, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": b, "type_id": 1}}],
            "special_tokens": {a: special(a, cls_id), b: special(b, sep_id)}})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": specials.iter().map(|i| added(*i, &vocab[*i].0)).collect::<Vec<_>>(),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": template(cls, sep),
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": unk_id,
            "vocab": vocab.iter().map(|p| json!([p.0, p.1])).collect::<Vec<_>>(),
            "byte_fallback": trainer.byte_fallback.unwrap_or(false)}
    }))
}

/// A piece as a literal in a regular expression.
fn fancy_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}
