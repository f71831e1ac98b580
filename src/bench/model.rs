//! `bench model`: forward (as inference runs it) and training step at tiny, base and large
//! RoBERTa shapes, against PyTorch in the same run.

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde_json::{Value, json};

use crate::config::ModelBench;
use crate::infer::Precision;
use crate::infer::engine::Engine;
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{DebertaV2Config, ModelConfig, RobertaConfig};
use crate::train::loss::{LossKind, position_weights, token_loss};
use crate::train::optim::{AdamW, AdamWConfig, grad_norm};

use super::{run_python, time_it};

/// Model shapes by name: RoBERTa `tiny`, `base`, `large` (roberta-base/-large), DeBERTa
/// `deberta-tiny` and `mdeberta-base` (mDeBERTa-v3-base: 12 × 768, vocab 251 000).
fn size_config(size: &str) -> anyhow::Result<ModelConfig> {
    Ok(match size {
        "tiny" => ModelConfig::Roberta(RobertaConfig::synthetic(128, 2, 4, 512, 3000)),
        "base" => ModelConfig::Roberta(RobertaConfig::synthetic(768, 12, 12, 3072, 50262)),
        "large" => ModelConfig::Roberta(RobertaConfig::synthetic(1024, 24, 16, 4096, 50262)),
        "deberta-tiny" => ModelConfig::DebertaV2(DebertaV2Config::synthetic(128, 2, 4, 256, 3000)),
        "mdeberta-base" => {
            ModelConfig::DebertaV2(DebertaV2Config::synthetic(768, 12, 12, 3072, 251_000))
        }
        other => {
            anyhow::bail!("unknown size {other:?} (tiny, base, large, deberta-tiny, mdeberta-base)")
        }
    })
}

/// `batch` sequences of `seq` random ids with `cls`/`</s>` (id 2) at the ends, and random labels.
fn random_batch(batch: usize, seq: usize, vocab: usize, cls: u32) -> (Vec<Vec<u32>>, Vec<i64>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut labels: Vec<i64> = (0..batch * seq).map(|_| rng.random_range(0..2)).collect();
    let ids = (0..batch)
        .map(|b| {
            labels[b * seq] = -100;
            labels[b * seq + seq - 1] = -100;
            (0..seq)
                .map(|i| match i {
                    0 => cls,
                    i if i == seq - 1 => 2,
                    _ => rng.random_range(5..vocab as u32),
                })
                .collect()
        })
        .collect();
    (ids, labels)
}

/// Multiply-adds ×2 of the encoder's dense layers for `tokens` tokens (what the issue's
/// figures count: 2 × non-embedding parameters × tokens; attention's score and context
/// products, 4 × seq × hidden per token and layer, are left out, as are DeBERTa's relative
/// terms).
fn dense_flops(cfg: &ModelConfig, tokens: usize) -> f64 {
    let (h, layers, ff) = match cfg {
        ModelConfig::Roberta(c) => (c.hidden_size, c.num_hidden_layers, c.intermediate_size),
        ModelConfig::DebertaV2(c) => (c.hidden_size, c.num_hidden_layers, c.intermediate_size),
    };
    2.0 * (layers * (4 * h * h + 2 * h * ff)) as f64 * tokens as f64
}

/// The peak kernel a precision's dense layers run on.
fn peak_kernel(precision: Precision) -> &'static str {
    match (precision, crate::infer::cpu::packed::Isa::detect()) {
        (Precision::F32, Some(crate::infer::cpu::packed::Isa::Avx512)) => "avx512_f32",
        (Precision::F32, _) => "avx2_f32",
        (Precision::Bf16, _) => "avx512_bf16",
        (Precision::Int8, _) => "avx512_vnni_int8",
    }
}

/// (forward ms per precision, train step ms, parameters) on backend `B`.
fn time_model<B: AutodiffBackend>(
    cfg: &ModelConfig,
    m: &ModelBench,
    precisions: &[Precision],
    device: &B::Device,
    resolved: Resolved,
) -> anyhow::Result<(Vec<f64>, f64, usize)> {
    let model = cfg.init_token_classifier::<B>(2, device);
    let params = model.num_params();
    let cls = match cfg {
        ModelConfig::Roberta(_) => 0,
        ModelConfig::DebertaV2(_) => 1,
    };
    let (seqs, labels) = random_batch(m.batch, m.seq, cfg.vocab_size(), cls);
    // Inference as /v1/detect and evaluation run it (on the CPU: the host engine, weights
    // packed once, at load).
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let mut forward = Vec::new();
    for &p in precisions {
        let engine = Engine::with_precision(model.valid(), cfg, resolved, device, p)?;
        forward.push(
            time_it(m.warmup, m.iters, || {
                let _ = engine.logits(&refs);
            }) * 1000.0,
        );
    }
    if m.forward_only {
        return Ok((forward, f64::NAN, params));
    }
    let flat: Vec<i32> = seqs.iter().flatten().map(|x| *x as i32).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [m.batch, m.seq]), device);
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![1i32; m.batch * m.seq], [m.batch, m.seq]),
        device,
    );
    let mut model = model;
    let mut optim = AdamW::<B>::new(AdamWConfig {
        weight_decay: 0.01,
        ..Default::default()
    });
    let weights = position_weights(&labels, None);
    let denom: f64 = weights.iter().map(|w| *w as f64).sum();
    let step = time_it(m.warmup, (m.iters / 2).max(3), || {
        let logits = model.forward(ids.clone(), mask.clone());
        let loss = token_loss(LossKind::CrossEntropy, logits, &labels, &weights, denom);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let norm = grad_norm(&model, &grads);
        let scale = (1.0 / (norm + 1e-6)).min(1.0);
        model = optim.step(2e-5, model.clone(), grads, scale);
        // Wait for the device: read one value of the updated classifier.
        let classifier = match &model {
            crate::model::TokenClassifier::Roberta(m) => &m.classifier,
            crate::model::TokenClassifier::DebertaV2(m) => &m.classifier,
        };
        let _ = classifier
            .weight
            .val()
            .slice([0..1, 0..1])
            .into_scalar()
            .elem::<f32>();
    });
    Ok((forward, step * 1000.0, params))
}

pub fn model_bench(m: ModelBench) -> anyhow::Result<()> {
    let device = m.device.resolve().map_err(anyhow::Error::msg)?;
    let precisions = m
        .precision
        .split(',')
        .map(|p| {
            Precision::parse(p.trim()).ok_or_else(|| {
                anyhow::anyhow!("--precision: unknown format {p:?} (f32, bf16, int8)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The CPU's peak, measured first (a quiet machine is assumed for the whole run).
    let peaks = if device == Resolved::Cpu {
        super::peak::measure()
    } else {
        Vec::new()
    };
    let sizes: Vec<String> = m.sizes.split(',').map(|s| s.trim().to_string()).collect();
    let torch = match &m.python {
        Some(py) => {
            let mut args: Vec<String> = [
                "--sizes",
                &m.sizes,
                "--batch",
                &m.batch.to_string(),
                "--seq",
                &m.seq.to_string(),
                "--threads",
                &m.torch_threads.to_string(),
                "--iters",
                &m.iters.to_string(),
                "--warmup",
                &m.warmup.to_string(),
                "--device",
                &m.torch_device,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if m.forward_only {
                args.push("--forward-only".into());
            }
            if precisions.iter().any(|p| p.reduced()) {
                args.push("--reduced".into());
            }
            Some(run_python(py, "torch_model.py", &args)?)
        }
        None => None,
    };
    struct Task<'a>(&'a ModelBench, &'a [String], &'a [Precision]);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Vec<(String, Vec<f64>, f64, usize)>>;
        fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output {
            self.1
                .iter()
                .map(|s| {
                    let (f, t, p) =
                        time_model::<B>(&size_config(s)?, self.0, self.2, &device, resolved)?;
                    Ok((s.clone(), f, t, p))
                })
                .collect()
        }
    }
    let ours = dispatch(device, Task(&m, &sizes, &precisions))?;
    let threads_n = rayon::current_num_threads();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "metafora bench model: batch {} x {} tokens, device {device}, rayon threads {threads}; PyTorch threads {} on {}",
        m.batch, m.seq, m.torch_threads, m.torch_device
    );
    if !peaks.is_empty() {
        println!(
            "CPU {}; peak GOP/s (1 thread / {threads_n} threads): {}",
            crate::infer::cpu::packed::cpu_summary(),
            peaks
                .iter()
                .map(|p| format!(
                    "{} {:.0}/{:.0}",
                    p.kernel, p.per_core_gops, p.all_cores_gops
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "{:<6} {:>11} {:>12} {:>9} {:>14} {:>15} {:>9}",
        "size", "params", "forward ms", "torch ms", "ratio", "train step ms", "torch ms"
    );
    let mut report = Vec::new();
    for (size, fs, t, p) in ours {
        let cfg = size_config(&size)?;
        let flops = dense_flops(&cfg, m.batch * m.seq);
        let mut per_precision = Vec::new();
        for (precision, f) in precisions.iter().zip(&fs) {
            let kernel = peak_kernel(*precision);
            let peak = peaks.iter().find(|p| p.kernel == kernel).map(|p| {
                if threads_n > 1 {
                    p.all_cores_gops
                } else {
                    p.per_core_gops
                }
            });
            let gops = flops / (f / 1000.0) / 1e9;
            let fraction = peak.map(|p| gops / p);
            let key = match precision {
                Precision::F32 => "forward_ms".to_string(),
                p => format!("forward_{p}_ms"),
            };
            let torch_f32 = torch
                .as_ref()
                .and_then(|j| j["sizes"][&size]["forward_ms"].as_f64());
            let torch_same = torch
                .as_ref()
                .and_then(|j| j["sizes"][&size][&key].as_f64());
            let vs = |t: Option<f64>| {
                t.map(|t| format!("{:.2}x", f / t))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "  {size} {precision}: forward {f:.2} ms = {} of PyTorch f32, {} of PyTorch {precision}; dense layers {gops:.1} GFLOP/s = {} of the {kernel} peak",
                vs(torch_f32),
                vs(torch_same),
                fraction
                    .map(|x| format!("{:.0} %", x * 100.0))
                    .unwrap_or_else(|| "-".into())
            );
            per_precision.push(
                json!({"precision": precision, "forward_ms": f, "dense_gflops": gops,
                "peak_kernel": kernel, "peak_gops": peak, "fraction_of_peak": fraction,
                "torch_f32_forward_ms": torch_f32, "torch_same_precision_forward_ms": torch_same}),
            );
        }
        let f = fs[0];
        let pick = |j: &Value, k: &str| j["sizes"][&size][k].as_f64();
        let (tf, tt) = torch
            .as_ref()
            .map(|j| (pick(j, "forward_ms"), pick(j, "train_step_ms")))
            .unwrap_or((None, None));
        let ratio = |a: f64, b: Option<f64>| {
            b.map(|b| format!("{:.2}x", a / b))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{size:<6} {p:>11} {f:>12.2} {:>9} {:>14} {t:>15.1} {:>9}  train ratio {}",
            tf.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
            ratio(f, tf),
            tt.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into()),
            ratio(t, tt)
        );
        report.push(json!({"size": size, "parameters": p, "forward_ms": f, "train_step_ms": t, "torch_forward_ms": tf, "torch_train_step_ms": tt,
            "precisions": per_precision}));
    }
    println!(
        "{}",
        json!({"device": device.to_string(), "rayon_threads": threads_n, "peaks": peaks, "results": report})
    );
    Ok(())
}
