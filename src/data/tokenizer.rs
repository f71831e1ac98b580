//! A model directory's tokenizer, from the files checkpoints ship, in this order:
//! `tokenizer.json`; a SentencePiece `spm.model` (DeBERTa-v2/v3: mDeBERTa ships no
//! tokenizer.json) or `sentencepiece.bpe.model` (XLM-R, fairseq ids), read by [`super::spm`];
//! `vocab.json` + `merges.txt` (RoBERTa's byte-level BPE: the only files
//! projecte-aina/roberta-*-ca-v2 ship).
//!
//! Every path ends in a `tokenizers` pipeline. For byte-level BPE it is the one transformers
//! builds (`convert_slow_tokenizer.RobertaConverter`): ByteLevel pre-tokenizer and decoder,
//! `RobertaProcessing` post-processor, BPE without continuing-subword prefix, with
//! `add_prefix_space` forced on, as the notebook passes `add_prefix_space=True`, so every
//! pre-split word gets a `Ġ`. Offsets are returned in Unicode code points (the `tokenizers`
//! crate counts bytes).

use std::path::Path;

use serde_json::{Value, json};
use tokenizers::Tokenizer as HfTokenizer;

use super::DataError;
use super::spm;

/// One encoded sequence with special tokens (`<s> … </s>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Index of the word each token comes from; `None` for special tokens.
    pub word_ids: Vec<Option<usize>>,
    /// Code-point offsets `[start, end)`: into each word for pre-split input, into the text for
    /// raw text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Token strings (`Ġ`-prefixed pieces).
    pub tokens: Vec<String>,
}

impl Encoded {
    /// Number of tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there are no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A loaded tokenizer plus the special-token ids the model code needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    pub pad_id: u32,
    pub cls_id: u32,
    pub sep_id: u32,
    /// `model_max_length` from tokenizer_config.json, when it is a sane number.
    pub model_max_length: Option<usize>,
    /// The serialised `tokenizer.json` (written next to exported models).
    pub json: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.into(),
        source: e,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
}

fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// SentencePiece model files and the id layout each implies.
const SPM_FILES: [(&str, spm::Layout); 2] = [
    ("spm.model", spm::Layout::Deberta),
    ("sentencepiece.bpe.model", spm::Layout::Fairseq),
];

impl Tokenizer {
    /// Loads from a model directory (see the module docs for the files, in order).
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        let config = if dir.join("tokenizer_config.json").is_file() {
            read_json(&dir.join("tokenizer_config.json"))?
        } else {
            json!({})
        };
        let spm_file = SPM_FILES.iter().find(|(f, _)| dir.join(f).is_file());
        let mut doc = if dir.join("tokenizer.json").is_file() {
            read_json(&dir.join("tokenizer.json"))?
        } else if let Some((file, layout)) = spm_file {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| DataError::Io {
                path: path.clone(),
                source: e,
            })?;
            spm::tokenizer_json(
                &spm::read_model(&bytes, &path.display().to_string())?,
                *layout,
            )?
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            Self::assemble(dir, &config)?
        } else {
            return Err(DataError::Tokenizer(format!(
                "{}: no tokenizer.json, spm.model, sentencepiece.bpe.model or vocab.json + merges.txt",
                dir.display()
            )));
        };
        force_prefix_space(&mut doc);
        let text = serde_json::to_string(&doc).expect("serialising JSON: this is a bug");
        let inner = HfTokenizer::from_bytes(text.as_bytes())
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", dir.display())))?;
        // DeBERTa's special tokens are `[CLS]`-style; RoBERTa's and XLM-R's `<s>`-style.
        let bert_style = inner.token_to_id("<s>").is_none() && inner.token_to_id("[CLS]").is_some();
        let id = |name: &str, default: &str| -> Result<u32, DataError> {
            let default = match (bert_style, default) {
                (true, "<pad>") => "[PAD]",
                (true, "<s>") => "[CLS]",
                (true, "</s>") => "[SEP]",
                _ => default,
            };
            let tok = config
                .get(name)
                .and_then(token_content)
                .unwrap_or_else(|| default.to_string());
            inner.token_to_id(&tok).ok_or_else(|| {
                DataError::Tokenizer(format!("special token {tok:?} ({name}) not in vocabulary"))
            })
        };
        let model_max_length = config
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .filter(|n| *n < 1_000_000)
            .map(|n| n as usize);
        Ok(Tokenizer {
            pad_id: id("pad_token", "<pad>")?,
            cls_id: id("cls_token", "<s>")?,
            sep_id: id("sep_token", "</s>")?,
            model_max_length,
            inner,
            json: serde_json::to_string_pretty(&doc).expect("serialising JSON: this is a bug"),
        })
    }

    /// Builds the `tokenizer.json` document transformers' RobertaConverter would produce.
    fn assemble(dir: &Path, config: &Value) -> Result<Value, DataError> {
        let vocab = read_json(&dir.join("vocab.json"))?;
        let vocab_map = vocab
            .as_object()
            .ok_or_else(|| DataError::Tokenizer("vocab.json is not an object".into()))?;
        let merges_path = dir.join("merges.txt");
        let merges_text = std::fs::read_to_string(&merges_path).map_err(|e| DataError::Io {
            path: merges_path.clone(),
            source: e,
        })?;
        let merges: Vec<Value> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.split(' ');
                match (parts.next(), parts.next()) {
                    (Some(a), Some(b)) => Ok(json!([a, b])),
                    _ => Err(DataError::Tokenizer(format!("merges.txt: bad line {l:?}"))),
                }
            })
            .collect::<Result<_, _>>()?;
        let specials = special_tokens(dir, config)?;
        let id_of = |tok: &str| vocab_map.get(tok).and_then(|v| v.as_u64());
        let mut added = Vec::new();
        for (content, lstrip) in &specials {
            let Some(id) = id_of(content) else { continue };
            added.push(
                json!({"id": id, "content": content, "single_word": false, "lstrip": lstrip,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
        let tok = |name: &str, default: &str| {
            config
                .get(name)
                .and_then(token_content)
                .unwrap_or_else(|| default.into())
        };
        let (cls, sep) = (tok("cls_token", "<s>"), tok("sep_token", "</s>"));
        let (cls_id, sep_id) = (
            id_of(&cls).ok_or_else(|| {
                DataError::Tokenizer(format!("cls token {cls:?} not in vocab.json"))
            })?,
            id_of(&sep).ok_or_else(|| {
                DataError::Tokenizer(format!("sep token {sep:?} not in vocab.json"))
            })?,
        );
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": {"type": "RobertaProcessing", "sep": [sep, sep_id], "cls": [cls, cls_id],
                "trim_offsets": true, "add_prefix_space": true},
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        }))
    }

    /// Encodes pre-split words (the notebook's `is_split_into_words=True`), no truncation.
    pub fn encode_words<S: AsRef<str>>(&self, words: &[S]) -> Result<Encoded, DataError> {
        let words: Vec<&str> = words.iter().map(|w| w.as_ref()).collect();
        let enc = self
            .inner
            .encode_char_offsets(words.as_slice(), true)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            word_ids: enc
                .get_word_ids()
                .iter()
                .map(|w| w.map(|w| w as usize))
                .collect(),
            offsets: enc.get_offsets().to_vec(),
            tokens: enc.get_tokens().to_vec(),
        })
    }

    /// Encodes raw text; offsets are code points into `text`, word ids are the pre-tokenizer's
    /// words (byte-level BPE: letters, digits and punctuation runs; SentencePiece:
    /// whitespace-separated chunks), no truncation.
    ///
    /// A SentencePiece piece such as `▁dubte` carries the space before it, and `tokenizers`
    /// (like transformers' pipeline) reports its offsets with that space included. Offsets here
    /// start at the first non-whitespace character instead, as byte-level BPE's `trim_offsets`
    /// does, so a span's text is the word and nothing else; a piece that is only whitespace
    /// keeps its span.
    pub fn encode_text(&self, text: &str) -> Result<Encoded, DataError> {
        let enc = self
            .inner
            .encode_char_offsets(text, true)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        let chars: Vec<char> = text.chars().collect();
        let offsets = enc
            .get_offsets()
            .iter()
            .map(|&(start, end)| {
                let lead = chars
                    .get(start..end)
                    .map_or(0, |s| s.iter().take_while(|c| c.is_whitespace()).count());
                if start + lead < end {
                    (start + lead, end)
                } else {
                    (start, end)
                }
            })
            .collect();
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            word_ids: enc
                .get_word_ids()
                .iter()
                .map(|w| w.map(|w| w as usize))
                .collect(),
            offsets,
            tokens: enc.get_tokens().to_vec(),
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token id of a string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Special tokens with their `lstrip` flag, from tokenizer_config.json's `added_tokens_decoder`
/// or special_tokens_map.json, else RoBERTa's defaults.
fn special_tokens(dir: &Path, config: &Value) -> Result<Vec<(String, bool)>, DataError> {
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(|d| d.as_object())
    {
        let mut items: Vec<(u64, String, bool)> = decoder
            .iter()
            .filter_map(|(id, v)| {
                let id = id.parse().ok()?;
                let content = v.get("content")?.as_str()?.to_string();
                let lstrip = v.get("lstrip").and_then(|b| b.as_bool()).unwrap_or(false);
                Some((id, content, lstrip))
            })
            .collect();
        items.sort();
        return Ok(items.into_iter().map(|(_, c, l)| (c, l)).collect());
    }
    let map = if dir.join("special_tokens_map.json").is_file() {
        read_json(&dir.join("special_tokens_map.json"))?
    } else {
        json!({})
    };
    let mut out: Vec<(String, bool)> = Vec::new();
    for (name, default) in [
        ("bos_token", "<s>"),
        ("pad_token", "<pad>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("mask_token", "<mask>"),
    ] {
        let v = map.get(name).or_else(|| config.get(name));
        let content = v.and_then(token_content).unwrap_or_else(|| default.into());
        let lstrip = v
            .and_then(|v| v.get("lstrip"))
            .and_then(|b| b.as_bool())
            .unwrap_or(name == "mask_token");
        if !out.iter().any(|(c, _)| *c == content) {
            out.push((content, lstrip));
        }
    }
    Ok(out)
}

/// The notebook loads the tokenizer with `add_prefix_space=True`: apply it to the ByteLevel
/// pre-tokenizer and the RoBERTa post-processor whatever the file says.
fn force_prefix_space(doc: &mut Value) {
    for key in ["pre_tokenizer", "post_processor"] {
        let Some(node) = doc.get_mut(key) else {
            continue;
        };
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            match n {
                Value::Object(obj) => {
                    let ty = obj
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or_default()
                        .to_string();
                    if matches!(ty.as_str(), "ByteLevel" | "RobertaProcessing") {
                        obj.insert("add_prefix_space".into(), Value::Bool(true));
                    }
                    stack.extend(obj.values_mut().filter(|c| c.is_array() || c.is_object()));
                }
                Value::Array(arr) => stack.extend(arr.iter_mut()),
                _ => {}
            }
        }
    }
}
