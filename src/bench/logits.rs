//! `bench logits`: logits of a model directory for pre-split sentences (JSON lines), for the
//! export round trip against transformers.

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value, json};

use crate::config::LogitsBench;
use crate::data::Tokenizer;
use crate::infer::engine::Engine;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, load_token_classifier};

pub fn logits_bench(l: LogitsBench) -> anyhow::Result<()> {
    let device = l.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task<'a>(&'a LogitsBench);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Vec<Value>>;
        fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output {
            let (model, config, _) = load_token_classifier::<B::InnerBackend>(
                &self.0.model,
                None,
                HeadInit::FromCheckpoint,
                &device,
            )?;
            let tok = Tokenizer::from_dir(&self.0.model)?;
            let engine = Engine::new(model, &config, resolved, &device);
            let mut out = Vec::new();
            for line in std::fs::read_to_string(&self.0.sentences)?
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line)?;
                let words: Vec<String> = v["tokens"]
                    .as_array()
                    .context("tokens")?
                    .iter()
                    .filter_map(|w| w.as_str().map(String::from))
                    .collect();
                let enc = tok.encode_words(&words)?;
                let logits = engine.logits(&[enc.ids.as_slice()]).remove(0);
                out.push(json!({"tokens": words, "input_ids": enc.ids, "logits": logits}));
            }
            Ok(out)
        }
    }
    for row in dispatch(device, Task(&l))? {
        println!("{row}");
    }
    Ok(())
}
