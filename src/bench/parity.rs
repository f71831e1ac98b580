//! `bench parity`: the tiny fixtures against the Python reference's outputs on a device —
//! logits through burn's ops and through the inference engine, encoder outputs, fine-tuned F1.

use std::path::Path;

use anyhow::Context;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::{Value, json};

use crate::config::ParityBench;
use crate::data::Tokenizer;
use crate::infer::engine::Engine;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, load_token_classifier};

pub fn parity_bench(p: ParityBench) -> anyhow::Result<()> {
    let device = p.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task<'a>(&'a Path);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Value>;
        fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output {
            parity_on::<B::InnerBackend>(self.0, &device, resolved)
        }
    }
    let out = dispatch(device, Task(&p.fixtures))?;
    println!("{}", json!({"device": device.to_string(), "parity": out}));
    Ok(())
}

fn floats(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| floats(x, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN) as f32),
        _ => {}
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn parity_on<B: Backend>(
    fx: &Path,
    device: &B::Device,
    resolved: Resolved,
) -> anyhow::Result<Value> {
    let read = |p: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_str(
            &std::fs::read_to_string(fx.join(p)).with_context(|| p.to_string())?,
        )?)
    };
    let ids = |v: &Value| -> Vec<i32> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(0) as i32).collect())
            .unwrap_or_default()
    };
    let tl = read("parity/tokenization_and_logits.json")?;
    let (model, config, _) = load_token_classifier::<B>(
        &fx.join("tiny-roberta"),
        None,
        HeadInit::FromCheckpoint,
        device,
    )?;
    // burn's ops, and the engine /v1/detect and evaluation use (the host kernels on the CPU).
    let engine = Engine::new(model.clone(), &config, resolved, device);
    let (mut logits_diff, mut engine_diff) = (0f32, 0f32);
    for s in tl["sentences"].as_array().into_iter().flatten() {
        let i = ids(&s["input_ids"]);
        let n = i.len();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(i, [1, n]), device);
        let m = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i32; n], [1, n]), device);
        let mut want = Vec::new();
        floats(&s["logits"], &mut want);
        let got: Vec<f32> = model
            .forward(t, m)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        logits_diff = logits_diff.max(max_diff(&got, &want));
        let host: Vec<u32> = ids(&s["input_ids"]).iter().map(|x| *x as u32).collect();
        let got = engine.logits(&[host.as_slice()]).remove(0);
        engine_diff = engine_diff.max(max_diff(&got, &want));
    }
    let bh = read("parity/base_hidden.json")?;
    let labels = vec!["O".to_string(), "METAPHOR".to_string()];
    let (base, _, _) = load_token_classifier::<B>(
        &fx.join("tiny-roberta-base"),
        Some(&labels),
        HeadInit::Fresh { seed: 1 },
        device,
    )?;
    let mut hidden_diff = 0f32;
    for s in bh["sentences"].as_array().into_iter().flatten() {
        let i = ids(&s["input_ids"]);
        let n = i.len();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(i, [1, n]), device);
        let m = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i32; n], [1, n]), device);
        let got: Vec<f32> = base
            .encode(t, m)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut want = Vec::new();
        floats(&s["last_hidden_state"], &mut want);
        hidden_diff = hidden_diff.max(max_diff(&got, &want));
    }
    // Fine-tuned word-level F1 on the synthetic test split (reference 0.870849).
    let dir = fx.join("tiny-roberta-finetuned");
    let (ft, config, _) = load_token_classifier::<B>(&dir, None, HeadInit::FromCheckpoint, device)?;
    let labels = config.labels().context("labels")?;
    let tok = Tokenizer::from_dir(&dir)?;
    let opts = crate::data::dataset::DatasetOptions {
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let ds = crate::data::Dataset::load(&fx.join("data/synthetic"), &opts)?;
    let (ex, _) = crate::train::trainer::encode_split(&ds.test, &tok, 512)?;
    let gold: Vec<Vec<i64>> = ds.test.sentences.iter().map(|s| s.tags.clone()).collect();
    let scheme = crate::metrics::LabelScheme::new(&labels)?;
    let ft = Engine::new(ft, &config, resolved, device);
    let out = crate::train::evaluate::evaluate(&ft, &ex, &gold, &scheme, 8)?;
    Ok(
        json!({"tiny_roberta_logits_max_abs_diff": logits_diff, "tiny_roberta_logits_max_abs_diff_inference_engine": engine_diff, "tiny_roberta_base_hidden_max_abs_diff": hidden_diff,
        "finetuned_test_f1": out.metrics.f1, "finetuned_test_f1_reference": 0.8708487084870848}),
    )
}
