//! `metafora bench`: model forward/train-step timings, parity on a device, /detect under load.
//! Figures are printed next to the PyTorch reference measured in the same run (`--python`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::data::RobertaTokenizer;
use crate::model::backend::{BackendTask, DeviceSpec, Resolved, dispatch};
use crate::model::{HeadInit, RobertaConfig, load_token_classifier};
use crate::train::loss::{LossKind, position_weights, token_loss};
use crate::train::optim::{AdamW, AdamWConfig, grad_norm};

/// `metafora bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward and training step (batch x seq) at tiny and roberta-base sizes.
    Model(ModelBench),
    /// Fixture parity (logits, encoder outputs, fine-tuned F1) on a device.
    Parity(ParityBench),
    /// HTTP load on /v1/detect at several client counts.
    Detect(DetectBench),
    /// Logits of a model directory for pre-split sentences (JSON), for export round trips.
    Logits(LogitsBench),
}

#[derive(Debug, Args)]
pub struct LogitsBench {
    /// HF model directory (e.g. a run's best_model).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL with `tokens` (pre-split words).
    #[arg(long)]
    pub sentences: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

#[derive(Debug, Args)]
pub struct ModelBench {
    /// Comma-separated: tiny, base, large.
    #[arg(long, default_value = "tiny,base")]
    pub sizes: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Python with torch + transformers: measure the PyTorch reference in the same run.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Time the forward only (no training step).
    #[arg(long)]
    pub forward_only: bool,
    /// PyTorch threads (set RAYON_NUM_THREADS to the same for the Rust side).
    #[arg(long, default_value_t = 1)]
    pub torch_threads: usize,
    /// Device for the PyTorch reference (cpu or cuda).
    #[arg(long, default_value = "cpu")]
    pub torch_device: String,
}

#[derive(Debug, Args)]
pub struct ParityBench {
    /// Folder with tiny-roberta*, parity/, data/synthetic (the repo's tests/fixtures).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))]
    pub fixtures: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

#[derive(Debug, Args)]
pub struct DetectBench {
    /// HF model directory to serve.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL with `tokens`: the sentences sent (joined with spaces).
    #[arg(long)]
    pub sentences: PathBuf,
    /// Comma-separated concurrent client counts.
    #[arg(long, default_value = "1,16,64")]
    pub clients: String,
    /// Seconds per client count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Python with transformers: the pipeline's single-sentence latency in the same run.
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub torch_threads: usize,
}

/// Runs a benchmark.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Model(m) => model_bench(m),
        BenchCommand::Parity(p) => parity_bench(p),
        BenchCommand::Detect(d) => detect_bench(d),
        BenchCommand::Logits(l) => logits_bench(l),
    }
}

fn size_config(size: &str) -> anyhow::Result<RobertaConfig> {
    Ok(match size {
        "tiny" => RobertaConfig::synthetic(128, 2, 4, 512, 3000),
        "base" => RobertaConfig::synthetic(768, 12, 12, 3072, 50262),
        "large" => RobertaConfig::synthetic(1024, 24, 16, 4096, 50262),
        other => bail!("unknown size {other:?} (tiny, base, large)"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("timings are finite: this is a bug"));
    v[v.len() / 2]
}

fn time_it(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    median(
        (0..iters.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn random_batch<B: Backend>(
    batch: usize,
    seq: usize,
    vocab: usize,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Vec<i64>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut ids: Vec<i32> = (0..batch * seq)
        .map(|_| rng.random_range(5..vocab as i32))
        .collect();
    let mut labels: Vec<i64> = (0..batch * seq).map(|_| rng.random_range(0..2)).collect();
    for b in 0..batch {
        ids[b * seq] = 0;
        ids[b * seq + seq - 1] = 2;
        labels[b * seq] = -100;
        labels[b * seq + seq - 1] = -100;
    }
    let ids = Tensor::from_data(TensorData::new(ids, [batch, seq]), device);
    let mask = Tensor::from_data(
        TensorData::new(vec![1i32; batch * seq], [batch, seq]),
        device,
    );
    (ids, mask, labels)
}

/// (forward ms, train step ms, parameters) on backend `B`.
fn time_model<B: AutodiffBackend>(
    cfg: &RobertaConfig,
    m: &ModelBench,
    device: &B::Device,
) -> (f64, f64, usize) {
    use burn::module::Module;
    let model = cfg.init_token_classifier::<B>(2, device);
    let params = model.num_params();
    let (ids, mask, labels) = random_batch::<B>(m.batch, m.seq, cfg.vocab_size, device);
    let inner = model.valid();
    // Inference as /v1/detect runs it (on the CPU: dense weights packed once, at load).
    let packed = inner.pack_for_cpu();
    let (iids, imask) = (ids.clone().inner(), mask.clone().inner());
    let forward = time_it(m.warmup, m.iters, || {
        let _ = inner
            .forward_packed(packed.as_ref(), iids.clone(), imask.clone())
            .sum()
            .into_scalar()
            .elem::<f32>();
    });
    if m.forward_only {
        return (forward * 1000.0, f64::NAN, params);
    }
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
        let _ = model
            .classifier
            .weight
            .val()
            .slice([0..1, 0..1])
            .into_scalar()
            .elem::<f32>();
    });
    (forward * 1000.0, step * 1000.0, params)
}

fn model_bench(m: ModelBench) -> anyhow::Result<()> {
    let device = m.device.resolve().map_err(anyhow::Error::msg)?;
    let sizes: Vec<String> = m.sizes.split(',').map(|s| s.trim().to_string()).collect();
    let torch = match &m.python {
        Some(py) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_model.py");
            let out = Command::new(py)
                .arg(&script)
                .args([
                    "--sizes",
                    &m.sizes,
                    "--batch",
                    &m.batch.to_string(),
                    "--seq",
                    &m.seq.to_string(),
                ])
                .args([
                    "--threads",
                    &m.torch_threads.to_string(),
                    "--iters",
                    &m.iters.to_string(),
                    "--warmup",
                    &m.warmup.to_string(),
                ])
                .args(["--device", &m.torch_device])
                .args(m.forward_only.then_some("--forward-only"))
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            if !out.status.success() {
                bail!(
                    "PyTorch reference failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Some(serde_json::from_slice::<Value>(&out.stdout).context("PyTorch reference output")?)
        }
        None => None,
    };
    struct Task<'a>(&'a ModelBench, &'a [String]);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Vec<(String, f64, f64, usize)>>;
        fn run<B: AutodiffBackend>(self, device: B::Device, _: Resolved) -> Self::Output {
            self.1
                .iter()
                .map(|s| {
                    let (f, t, p) = time_model::<B>(&size_config(s)?, self.0, &device);
                    Ok((s.clone(), f, t, p))
                })
                .collect()
        }
    }
    let ours = dispatch(device, Task(&m, &sizes))?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "metafora bench model: batch {} x {} tokens, device {device}, rayon threads {threads}; PyTorch threads {} on {}",
        m.batch, m.seq, m.torch_threads, m.torch_device
    );
    println!(
        "{:<6} {:>11} {:>12} {:>9} {:>14} {:>15} {:>9}",
        "size", "params", "forward ms", "torch ms", "ratio", "train step ms", "torch ms"
    );
    let mut report = Vec::new();
    for (size, f, t, p) in ours {
        let (tf, tt) = torch
            .as_ref()
            .map(|j| {
                (
                    j["sizes"][&size]["forward_ms"].as_f64(),
                    j["sizes"][&size]["train_step_ms"].as_f64(),
                )
            })
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
        report.push(json!({"size": size, "parameters": p, "forward_ms": f, "train_step_ms": t, "torch_forward_ms": tf, "torch_train_step_ms": tt}));
    }
    println!(
        "{}",
        json!({"device": device.to_string(), "results": report})
    );
    Ok(())
}

fn parity_bench(p: ParityBench) -> anyhow::Result<()> {
    let device = p.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task<'a>(&'a Path);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Value>;
        fn run<B: AutodiffBackend>(self, device: B::Device, _: Resolved) -> Self::Output {
            parity_on::<B::InnerBackend>(self.0, &device)
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

fn parity_on<B: Backend>(fx: &Path, device: &B::Device) -> anyhow::Result<Value> {
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
    let (model, _, _) = load_token_classifier::<B>(
        &fx.join("tiny-roberta"),
        None,
        HeadInit::FromCheckpoint,
        device,
    )?;
    // Burn's ops, and the packed CPU kernels /v1/detect and evaluation use (same as burn's ops
    // where there are none).
    let packed = model.pack_for_cpu();
    let (mut logits_diff, mut packed_diff) = (0f32, 0f32);
    for s in tl["sentences"].as_array().into_iter().flatten() {
        let i = ids(&s["input_ids"]);
        let n = i.len();
        let t = Tensor::<B, 2, Int>::from_data(TensorData::new(i, [1, n]), device);
        let m = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i32; n], [1, n]), device);
        let mut want = Vec::new();
        floats(&s["logits"], &mut want);
        for (p, diff) in [
            (None, &mut logits_diff),
            (packed.as_ref(), &mut packed_diff),
        ] {
            let got: Vec<f32> = model
                .forward_packed(p, t.clone(), m.clone())
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            *diff = diff.max(max_diff(&got, &want));
        }
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
            .roberta
            .forward(t, m)
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
    let tok = RobertaTokenizer::from_dir(&dir)?;
    let opts = crate::data::dataset::DatasetOptions {
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let ds = crate::data::Dataset::load(&fx.join("data/synthetic"), &opts)?;
    let (ex, _) = crate::train::trainer::encode_split(&ds.test, &tok, 512)?;
    let gold: Vec<Vec<i64>> = ds.test.sentences.iter().map(|s| s.tags.clone()).collect();
    let scheme = crate::metrics::LabelScheme::new(&labels)?;
    let out = crate::train::evaluate::evaluate(&ft, &ex, &gold, &scheme, 8, tok.pad_id, device)?;
    Ok(
        json!({"tiny_roberta_logits_max_abs_diff": logits_diff, "tiny_roberta_logits_max_abs_diff_inference_kernels": packed_diff, "tiny_roberta_base_hidden_max_abs_diff": hidden_diff,
        "finetuned_test_f1": out.metrics.f1, "finetuned_test_f1_reference": 0.8708487084870848}),
    )
}

fn detect_bench(d: DetectBench) -> anyhow::Result<()> {
    let sentences: Vec<String> = std::fs::read_to_string(&d.sentences)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["tokens"].as_array().map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .collect();
    if sentences.is_empty() {
        bail!("no sentences in {}", d.sentences.display());
    }
    let python = match &d.python {
        Some(py) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_pipeline.py");
            let out = Command::new(py)
                .arg(&script)
                .arg("--model")
                .arg(&d.model)
                .arg("--sentences")
                .arg(&d.sentences)
                .args(["--threads", &d.torch_threads.to_string()])
                .output()
                .with_context(|| format!("running {}", py.display()))?;
            if !out.status.success() {
                bail!(
                    "pipeline reference failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Some(serde_json::from_slice::<Value>(&out.stdout)?)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile_dir()?;
    let args = crate::config::ServeArgs {
        bind: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}", dir.join("bench.db").display()),
        data_dir: dir.join("data"),
        device: d.device,
        api_key: None,
        allow_paths: vec![],
        max_body_bytes: 1 << 20,
        max_upload_bytes: 1 << 20,
        max_queued_jobs: 1,
        model: Some(d.model.clone()),
        detect_queue: 48,
        batch_tokens: 8192,
        batch_wait_ms: 0,
        window_stride: 128,
        labelstudio_train_spec: None,
        no_worker: true,
        hub: None,
    };
    let running = rt.block_on(crate::server::start(args))?;
    let url = format!("http://{}/v1/detect", running.addr);
    let sentences = Arc::new(sentences);
    println!(
        "metafora bench detect: model {}, device {}, {} s per level; queue bound 48",
        d.model.display(),
        running.shared.device,
        d.seconds
    );
    if let Some(p) = &python {
        println!(
            "pipeline (PyTorch, sequential, {} threads): p50 {:.2} ms, p99 {:.2} ms, {:.1} sentences/s",
            p["threads"],
            p["p50_ms"].as_f64().unwrap_or(0.0),
            p["p99_ms"].as_f64().unwrap_or(0.0),
            p["sentences_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>8} {:>8}",
        "clients", "p50 ms", "p99 ms", "requests/s", "429s", "errors"
    );
    let mut rows = Vec::new();
    for c in d
        .clients
        .split(',')
        .filter_map(|c| c.trim().parse::<usize>().ok())
    {
        let r = load(&url, c, Duration::from_secs(d.seconds), sentences.clone());
        println!(
            "{c:>8} {:>10.2} {:>10.2} {:>12.1} {:>8} {:>8}",
            r.p50_ms, r.p99_ms, r.rps, r.busy, r.errors
        );
        rows.push(json!({"clients": c, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "requests_per_second": r.rps, "busy_429": r.busy, "errors": r.errors}));
    }
    let _ = running.shutdown.send(true);
    let _ = rt.block_on(running.wait());
    let _ = std::fs::remove_dir_all(&dir);
    // The targets as ratios: p50 against the pipeline's, throughput at each client
    // count against the sequential pipeline and against one client.
    let at = |c: u64, key: &str| {
        rows.iter()
            .find(|r| r["clients"] == c)
            .and_then(|r| r[key].as_f64())
    };
    let mut ratios = Vec::new();
    if let (Some(pp), Some(p50)) = (
        python.as_ref().and_then(|p| p["p50_ms"].as_f64()),
        at(1, "p50_ms"),
    ) {
        ratios.push(format!("p50 at 1 client / pipeline p50 = {:.2}x", p50 / pp));
    }
    for c in [16u64, 64] {
        if let Some(rps) = at(c, "requests_per_second") {
            if let Some(seq) = python
                .as_ref()
                .and_then(|p| p["sentences_per_second"].as_f64())
            {
                ratios.push(format!(
                    "{c} clients / sequential pipeline = {:.2}x",
                    rps / seq
                ));
            }
            if let Some(one) = at(1, "requests_per_second") {
                ratios.push(format!("{c} clients / 1 client = {:.2}x", rps / one));
            }
        }
    }
    if !ratios.is_empty() {
        println!("{}", ratios.join("; "));
    }
    println!("{}", json!({"pipeline": python, "metafora": rows}));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("metafora-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct LoadResult {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    busy: u64,
    errors: u64,
}

/// `clients` threads, each sending single-sentence requests back to back for `dur`.
fn load(url: &str, clients: usize, dur: Duration, sentences: Arc<Vec<String>>) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let (busy, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let (url, stop, busy, errors, sentences) = (
                url.to_string(),
                stop.clone(),
                busy.clone(),
                errors.clone(),
                sentences.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut lat = Vec::new();
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"text": sentences[i % sentences.len()]});
                    i += clients;
                    let t = Instant::now();
                    match agent.post(&url).send_json(body) {
                        Ok(r) => {
                            let _ = r.into_string();
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        Err(ureq::Error::Status(429, r)) => {
                            // A well-behaved client: wait as told by Retry-After.
                            busy.fetch_add(1, Ordering::Relaxed);
                            let secs = r
                                .header("retry-after")
                                .and_then(|v| v.parse::<f64>().ok())
                                .unwrap_or(1.0);
                            let until = Instant::now() + Duration::from_secs_f64(secs);
                            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite: this is a bug"));
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)]
        }
    };
    LoadResult {
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rps: lat.len() as f64 / elapsed,
        busy: busy.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn logits_bench(l: LogitsBench) -> anyhow::Result<()> {
    let device = l.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task<'a>(&'a LogitsBench);
    impl BackendTask for Task<'_> {
        type Output = anyhow::Result<Vec<Value>>;
        fn run<B: AutodiffBackend>(self, device: B::Device, _: Resolved) -> Self::Output {
            let (model, _, _) = load_token_classifier::<B::InnerBackend>(
                &self.0.model,
                None,
                HeadInit::FromCheckpoint,
                &device,
            )?;
            let tok = RobertaTokenizer::from_dir(&self.0.model)?;
            let packed = model.pack_for_cpu();
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
                let n = enc.ids.len();
                let ids = Tensor::<B::InnerBackend, 2, Int>::from_data(
                    TensorData::new(
                        enc.ids.iter().map(|x| *x as i32).collect::<Vec<_>>(),
                        [1, n],
                    ),
                    &device,
                );
                let mask = Tensor::<B::InnerBackend, 2, Int>::from_data(
                    TensorData::new(vec![1i32; n], [1, n]),
                    &device,
                );
                let logits: Vec<f32> = model
                    .forward_packed(packed.as_ref(), ids, mask)
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
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
