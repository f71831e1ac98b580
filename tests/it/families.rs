//! DeBERTa-v2/v3 and XLM-RoBERTa against the Python reference (fixtures made by
//! `../shared/ref/scripts/make_deberta_fixtures.py`): tokenizers from SentencePiece model files
//! and from tokenizer.json.

use metafora::data::Tokenizer;
use serde_json::Value;

use crate::common::{fixture, json};

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn words(s: &Value) -> Vec<String> {
    s["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

fn word_ids(v: &Value) -> Vec<Option<usize>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().map(|w| w as usize))
        .collect()
}

fn offsets(v: &Value) -> Vec<(usize, usize)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize))
        .collect()
}

#[test]
fn deberta_pre_split_words_match_transformers_from_spm_model_and_tokenizer_json() {
    let fx = json("parity/deberta.json");
    // tiny-deberta-v2 ships spm.model and no tokenizer.json (as mdeberta-v3-base);
    // spm/ has transformers' tokenizer.json for the same model.
    for dir in ["tiny-deberta-v2", "spm"] {
        let tok = Tokenizer::from_dir(&fixture(dir)).unwrap();
        assert_eq!((tok.cls_id, tok.sep_id, tok.pad_id), (1, 2, 0), "{dir}");
        for s in fx["sentences"].as_array().unwrap() {
            let enc = tok.encode_words(&words(s)).unwrap();
            let (mut ids, mut wids) = (u32s(&s["input_ids"]), word_ids(&s["word_ids"]));
            if dir == "tiny-deberta-v2" && let Some(w) = words(s).iter().position(|w| w == "…") {
                // SentencePiece's NFKC makes `…` three full stops where transformers' NFC
                // conversion has `[UNK]`: the one place these sentences differ.
                let at = wids.iter().rposition(|x| *x == Some(w)).unwrap();
                assert_eq!(ids[at], 3, "transformers: [UNK]");
                let dot = tok.token_to_id(".").unwrap();
                ids.splice(at..=at, [dot; 3]);
                wids.splice(at..=at, [Some(w); 3]);
                assert_eq!(enc.ids, ids, "{dir}: {:?}", words(s));
                assert_eq!(enc.word_ids, wids, "{dir}: word ids");
                continue;
            }
            assert_eq!(enc.ids, ids, "{dir}: {:?}", words(s));
            assert_eq!(enc.word_ids, wids, "{dir}: word ids");
            assert_eq!(enc.offsets, offsets(&s["offsets"]), "{dir}: offsets");
        }
    }
}

#[test]
fn deberta_raw_text_follows_sentencepiece_normalization() {
    let fx = json("parity/deberta.json");
    let tok = Tokenizer::from_dir(&fixture("tiny-deberta-v2")).unwrap();
    let hf = Tokenizer::from_dir(&fixture("spm")).unwrap();
    let mut differing = 0;
    for r in fx["raw_tokenization"].as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        // SentencePiece's own ids (its NFKC charsmap): `ŀ` -> `l·`, `ﬁ` -> `fi`, `①` -> `1`.
        let enc = tok.encode_text(text).unwrap();
        assert_eq!(enc.ids, u32s(&r["sentencepiece_ids"]), "{text:?}");
        // transformers' conversion (NFC) from its tokenizer.json, offsets included.
        let enc_hf = hf.encode_text(text).unwrap();
        assert_eq!(enc_hf.ids, u32s(&r["input_ids"]), "{text:?}");
        assert_eq!(enc_hf.offsets, offsets(&r["offsets"]), "{text:?}");
        if r["sentencepiece_ids"] != r["input_ids"] {
            differing += 1;
            // Offsets still point into the original text, through the charsmap.
            let chars: Vec<char> = text.chars().collect();
            for (i, (s, e)) in enc.offsets.iter().enumerate().skip(1) {
                if i + 1 < enc.offsets.len() {
                    assert!(s <= e && *e <= chars.len(), "{text:?}: token {i} at {s}..{e}");
                }
            }
        }
    }
    assert_eq!(differing, 2, "the ligature and the U+0140 sentences differ from transformers");
}

#[test]
fn xlm_roberta_from_tokenizer_json_and_from_the_fairseq_sentencepiece_file() {
    let fx = json("parity/xlm_roberta.json");
    let dir = fixture("tiny-xlm-roberta");
    let from_json = Tokenizer::from_dir(&dir).unwrap();
    // The same directory without tokenizer.json: sentencepiece.bpe.model with fairseq ids.
    let bare = tempfile::tempdir().unwrap();
    for f in ["config.json", "sentencepiece.bpe.model", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), bare.path().join(f)).unwrap();
    }
    let from_spm = Tokenizer::from_dir(bare.path()).unwrap();
    for tok in [&from_json, &from_spm] {
        assert_eq!((tok.cls_id, tok.sep_id, tok.pad_id), (0, 2, 1));
        for s in fx["sentences"].as_array().unwrap() {
            let enc = tok.encode_words(&words(s)).unwrap();
            assert_eq!(enc.ids, u32s(&s["input_ids"]), "{:?}", words(s));
            assert_eq!(enc.word_ids, word_ids(&s["word_ids"]));
        }
    }
}
