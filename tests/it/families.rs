//! DeBERTa-v2/v3 and XLM-RoBERTa against the Python reference (fixtures made by
//! `../shared/ref/scripts/make_deberta_fixtures.py`): tokenizers from SentencePiece model files
//! and from tokenizer.json.

use metafora::data::Tokenizer;
use serde_json::Value;

use crate::common::{fixture, floats, json, u32s};

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
        .map(|o| {
            (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// transformers' offsets for `▁word` pieces include the space; ours start at the word.
fn trim_leading_space(text: &str, offsets: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    offsets
        .iter()
        .map(|&(s, e)| {
            let lead = chars[s..e].iter().take_while(|c| c.is_whitespace()).count();
            if s + lead < e { (s + lead, e) } else { (s, e) }
        })
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
            if dir == "tiny-deberta-v2"
                && let Some(w) = words(s).iter().position(|w| w == "…")
            {
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
        assert_eq!(
            enc_hf.offsets,
            trim_leading_space(text, &offsets(&r["offsets"])),
            "{text:?}"
        );
        if r["sentencepiece_ids"] != r["input_ids"] {
            differing += 1;
            // Offsets still point into the original text, through the charsmap.
            let chars: Vec<char> = text.chars().collect();
            for (i, (s, e)) in enc.offsets.iter().enumerate().skip(1) {
                if i + 1 < enc.offsets.len() {
                    assert!(
                        s <= e && *e <= chars.len(),
                        "{text:?}: token {i} at {s}..{e}"
                    );
                }
            }
        }
    }
    assert_eq!(
        differing, 2,
        "the ligature and the U+0140 sentences differ from transformers"
    );
}

#[test]
fn xlm_roberta_from_tokenizer_json_and_from_the_fairseq_sentencepiece_file() {
    let fx = json("parity/xlm_roberta.json");
    let dir = fixture("tiny-xlm-roberta");
    let from_json = Tokenizer::from_dir(&dir).unwrap();
    // The same directory without tokenizer.json: sentencepiece.bpe.model with fairseq ids.
    let bare = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "sentencepiece.bpe.model",
        "tokenizer_config.json",
    ] {
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

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use metafora::infer::aggregate::Strategy;
use metafora::infer::engine::Engine;
use metafora::infer::{DetectOptions, Detector, DetectorOptions, Input, LongText};
use metafora::model::backend::Resolved;
use metafora::model::{HeadInit, load_token_classifier};

/// Logit tolerance: the reference rounds to 6 decimals and f32 matmul order differs from
/// PyTorch's; the budget is the 1e-4.
const TOL: f32 = 1e-4;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn batch(rows: &[Vec<u32>], masks: &[Vec<u32>]) -> (Tensor<Flex, 2, Int>, Tensor<Flex, 2, Int>) {
    let (b, s) = (rows.len(), rows[0].len());
    let flat = |v: &[Vec<u32>]| v.iter().flatten().map(|x| *x as i32).collect::<Vec<_>>();
    let d = Default::default();
    (
        Tensor::from_data(TensorData::new(flat(rows), [b, s]), &d),
        Tensor::from_data(TensorData::new(flat(masks), [b, s]), &d),
    )
}

/// Logits of the fixture's single sentences and padded batch, through burn's ops and the
/// inference engine; returns the worst difference of each path.
fn logits_parity(dir: &str, fx: &Value) -> (f32, f32) {
    let (model, config, report) = load_token_classifier::<Flex>(
        &fixture(dir),
        None,
        HeadInit::FromCheckpoint,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(report.head, "loaded", "{dir}");
    let mut burn_worst = 0f32;
    let sentences = fx["sentences"].as_array().unwrap();
    for s in sentences {
        let ids = u32s(&s["input_ids"]);
        let (i, m) = batch(std::slice::from_ref(&ids), &[vec![1; ids.len()]]);
        let got: Vec<f32> = model.forward(i, m).into_data().to_vec().unwrap();
        burn_worst = burn_worst.max(max_abs_diff(&got, &floats(&s["logits"])));
    }
    if let Some(b) = fx.get("batch") {
        let rows: Vec<Vec<u32>> = b["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(u32s)
            .collect();
        let masks: Vec<Vec<u32>> = b["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(u32s)
            .collect();
        let want = floats(&b["logits"]);
        let (i, m) = batch(&rows, &masks);
        let got: Vec<f32> = model.forward(i, m).into_data().to_vec().unwrap();
        let mask_flat: Vec<u32> = masks.iter().flatten().copied().collect();
        let labels = want.len() / mask_flat.len();
        let (g, w): (Vec<f32>, Vec<f32>) = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(k, _)| mask_flat[k / labels] == 1)
            .map(|(_, (a, b))| (*a, *b))
            .unzip();
        burn_worst = burn_worst.max(max_abs_diff(&g, &w));
    }
    let engine = Engine::new(model, &config, Resolved::Cpu, &Default::default());
    assert_eq!(
        engine.unpadded(),
        metafora::infer::cpu::kernels::packed_kernels_available(),
        "{dir}: the CPU engine runs this family"
    );
    let mut engine_worst = 0f32;
    let seqs: Vec<Vec<u32>> = sentences.iter().map(|s| u32s(&s["input_ids"])).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    for (s, got) in sentences.iter().zip(engine.logits(&refs)) {
        engine_worst = engine_worst.max(max_abs_diff(&got, &floats(&s["logits"])));
    }
    (burn_worst, engine_worst)
}

#[test]
fn deberta_logits_match_transformers_single_padded_and_through_the_engine() {
    let fx = json("parity/deberta.json");
    let (burn, engine) = logits_parity("tiny-deberta-v2", &fx);
    eprintln!("tiny-deberta-v2 logits max |Δ|: burn ops {burn:e}, engine {engine:e}");
    assert!(burn <= TOL, "burn ops: {burn}");
    assert!(engine <= TOL, "engine: {engine}");
}

#[test]
fn xlm_roberta_logits_match_transformers() {
    let fx = json("parity/xlm_roberta.json");
    let (burn, engine) = logits_parity("tiny-xlm-roberta", &fx);
    eprintln!("tiny-xlm-roberta logits max |Δ|: burn ops {burn:e}, engine {engine:e}");
    assert!(burn <= TOL && engine <= TOL, "{burn} {engine}");
}

#[test]
fn deberta_base_checkpoint_with_mlm_and_rtd_heads_gives_the_encoder_outputs() {
    let fx = json("parity/deberta.json");
    let labels = vec!["O".to_string(), "B-METAPHOR".to_string()];
    let (model, _, report) = load_token_classifier::<Flex>(
        &fixture("tiny-deberta-v2-mlm"),
        Some(&labels),
        HeadInit::Fresh { seed: 1 },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        (report.family, report.prefixed, report.head),
        ("deberta-v2", true, "fresh")
    );
    for head in ["lm_predictions.", "mask_predictions.", "cls."] {
        assert!(
            report.ignored.iter().any(|k| k.contains(head)),
            "{head} ignored: {:?}",
            report.ignored
        );
    }
    let mut worst = 0f32;
    for s in fx["sentences"].as_array().unwrap() {
        let ids = u32s(&s["input_ids"]);
        let (i, m) = batch(std::slice::from_ref(&ids), &[vec![1; ids.len()]]);
        let got: Vec<f32> = model.encode(i, m).into_data().to_vec().unwrap();
        worst = worst.max(max_abs_diff(&got, &floats(&s["base_hidden"])));
    }
    eprintln!("tiny-deberta-v2-mlm hidden states max |Δ| = {worst:e}");
    assert!(worst <= TOL, "{worst}");
}

#[test]
fn deberta_log_buckets_match_transformers() {
    let fx = json("parity/deberta_log_buckets.json");
    for (key, want) in fx["buckets"].as_object().unwrap() {
        let (bs, mp) = key.split_once('_').unwrap();
        let (bs, mp): (i64, i64) = (bs.parse().unwrap(), mp.parse().unwrap());
        for (i, w) in want.as_array().unwrap().iter().enumerate() {
            let r = i as i64 - 1500;
            assert_eq!(
                metafora::model::config::log_bucket(r, bs, mp),
                w.as_i64().unwrap(),
                "bucket({r}, {bs}, {mp})"
            );
        }
    }
}

#[test]
fn deberta_engine_equals_burn_ops_on_long_sequences_with_log_buckets() {
    // 300 and 170 tokens: distances beyond the 128 kept as they are, into the log buckets.
    let (model, config, _) = load_token_classifier::<Flex>(
        &fixture("tiny-deberta-v2"),
        None,
        HeadInit::FromCheckpoint,
        &Default::default(),
    )
    .unwrap();
    let mut state = 9u64;
    let mut seq = |n: usize| -> Vec<u32> {
        let mut v = vec![1u32];
        for _ in 0..n - 2 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.push(5 + ((state >> 33) % 2990) as u32);
        }
        v.push(2);
        v
    };
    let (a, b) = (seq(300), seq(170));
    let mut want = Vec::new();
    for s in [&a, &b] {
        let (i, m) = batch(std::slice::from_ref(s), &[vec![1; s.len()]]);
        want.push(model.forward(i, m).into_data().to_vec::<f32>().unwrap());
    }
    let engine = Engine::new(model, &config, Resolved::Cpu, &Default::default());
    let got = engine.logits(&[&a, &b]);
    let worst = max_abs_diff(&got[0], &want[0]).max(max_abs_diff(&got[1], &want[1]));
    eprintln!("tiny-deberta-v2, 300 + 170 tokens: engine vs burn ops max |Δ| = {worst:e}");
    assert!(worst <= TOL, "{worst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_trains_a_deberta_job_and_serves_it_on_detect() {
    use crate::app::{Options, spawn_app_with};
    use serde_json::json;
    let app = spawn_app_with(Options::default()).await;
    let spec = json!({
        "model": {"checkpoint": fixture("tiny-deberta-v2-mlm")},
        "dataset": {"path": fixture("data/synthetic-small")},
        "training": {"learning_rate": 5e-4, "num_train_epochs": 2},
        "seed": 42,
        "deploy_as": "deberta"
    });
    let id = app.create_job(&spec).await;
    let outcome = app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        outcome,
        metafora::jobs::worker::Outcome::Ran {
            id: id.clone(),
            status: metafora::jobs::JobStatus::Succeeded
        },
        "{job}"
    );
    // The exported model is a DeBERTa directory with its SentencePiece model.
    let dir = app
        .dir
        .path()
        .join("data")
        .join(job["best_checkpoint"]["model_dir"].as_str().unwrap());
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        json!(["DebertaV2ForTokenClassification"])
    );
    assert!(dir.join("spm.model").is_file() && dir.join("tokenizer.json").is_file());
    // Deployed by deploy_as: detection through the DeBERTa engine, word-level aggregation.
    let (code, models) = app.get("/v1/models").await;
    assert_eq!(code, 200);
    assert!(
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "deberta"),
        "{models}"
    );
    let (code, out) = app
        .post(
            "/v1/detect",
            &json!({"text": "La coŀlecció del museu dorm un son profund.", "model": "deberta", "aggregation_strategy": "first"}),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["model"], "deberta");
    for e in out["entities"].as_array().unwrap() {
        let (s, t) = (e["start"].as_u64().unwrap(), e["end"].as_u64().unwrap());
        let word: String = "La coŀlecció del museu dorm un son profund."
            .chars()
            .skip(s as usize)
            .take((t - s) as usize)
            .collect();
        assert_eq!(
            e["word"],
            word.as_str(),
            "offsets into the original text: {out}"
        );
    }
    app.shutdown().await;
}

/// transformers' TokenClassificationPipeline on tiny-deberta-v2 (`pipeline` in
/// parity/deberta.json) for the sentences where transformers' NFC conversion and SentencePiece
/// tokenise alike. Spans start at the word, not at the space a `▁` piece carries.
#[test]
fn deberta_detect_matches_the_pipeline_simple_none_and_first() {
    let fx = json("parity/deberta.json");
    let d = Detector::load(
        "t",
        &fixture("tiny-deberta-v2"),
        Resolved::Cpu,
        DetectorOptions::default(),
    )
    .unwrap();
    let agree: Vec<bool> = fx["raw_tokenization"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["input_ids"] == r["sentencepiece_ids"])
        .collect();
    assert_eq!(agree, [true, true, true, false, false]);
    let mut compared = 0;
    for (name, strategy) in [
        ("simple", Strategy::Simple),
        ("none", Strategy::None),
        ("first", Strategy::First),
    ] {
        for (item, _) in fx["pipeline"][name]
            .as_array()
            .unwrap()
            .iter()
            .zip(&agree)
            .filter(|(_, a)| **a)
        {
            let text = item["text"].as_str().unwrap();
            let chars: Vec<char> = text.chars().collect();
            let got = d
                .detect_blocking(
                    &Input::Text(text.into()),
                    DetectOptions {
                        strategy: Some(strategy),
                        threshold: None,
                        long_text: LongText::Sentences,
                        uncertainty: false,
                        words: None,
                    },
                )
                .unwrap()
                .results
                .remove(0)
                .entities;
            let want = item["entities"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{name} {text}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                let (ws, we) = (
                    w["start"].as_u64().unwrap() as usize,
                    w["end"].as_u64().unwrap() as usize,
                );
                let want_span = trim_leading_space(text, &[(ws, we)])[0];
                assert_eq!((g.start, g.end), want_span, "{name} {text}: {g:?} vs {w}");
                let span: String = chars[g.start..g.end].iter().collect();
                assert_eq!(g.word, span);
                assert_eq!(
                    g.word,
                    w["word"].as_str().unwrap().trim_start_matches('▁'),
                    "{name}: decoded word"
                );
                assert!(
                    (g.score - w["score"].as_f64().unwrap() as f32).abs() <= 1e-4,
                    "{name} {text}: score {} vs {}",
                    g.score,
                    w["score"]
                );
                if name == "none" {
                    assert_eq!(g.entity.as_deref(), w["entity"].as_str());
                    assert_eq!(g.index.map(|i| i as u64), w["index"].as_u64());
                } else {
                    assert_eq!(g.entity_group.as_deref(), w["entity_group"].as_str());
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 30, "{compared} entities compared");
}
