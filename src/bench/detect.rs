//! `bench detect`: HTTP load on `/v1/detect` at several client counts, against the HF
//! pipeline's single-sentence latency measured in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::config::DetectBench;

use super::run_python;

pub fn detect_bench(d: DetectBench, assets: &Path) -> anyhow::Result<()> {
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
    let pipeline = |int8: bool| -> anyhow::Result<Option<Value>> {
        let Some(py) = &d.python else {
            return Ok(None);
        };
        let mut args = vec![
            "--model".into(),
            d.model.display().to_string(),
            "--sentences".into(),
            d.sentences.display().to_string(),
            "--threads".into(),
            d.torch_threads.to_string(),
        ];
        if int8 {
            args.push("--int8".into());
        }
        Ok(Some(run_python(py, "torch_pipeline.py", &args)?))
    };
    let python = pipeline(false)?;
    // PyTorch's own int8 (quantize_dynamic) pipeline, when metafora runs int8.
    let python_int8 = if d.precision == crate::infer::Precision::Int8 {
        pipeline(true)?
    } else {
        None
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
        model: Some(d.model.clone()),
        detect_queue: 48,
        no_worker: true,
        detect_precision: d.precision,
        ..Default::default()
    };
    let settings = crate::config::Settings::from_args(args, assets)?;
    let running = rt.block_on(crate::server::start(settings))?;
    let url = format!("http://{}/v1/detect", running.addr);
    let sentences = Arc::new(sentences);
    println!(
        "metafora bench detect: model {}, device {}, precision {}, {} s per level; queue bound 48; CPU {}",
        d.model.display(),
        running.shared.device,
        d.precision,
        d.seconds,
        crate::infer::cpu::packed::cpu_summary()
    );
    for (p, what) in [(&python, "f32"), (&python_int8, "int8")] {
        if let Some(p) = p {
            println!(
                "pipeline {what} (PyTorch, sequential, {} threads): p50 {:.2} ms, p99 {:.2} ms, {:.1} sentences/s",
                p["threads"],
                p["p50_ms"].as_f64().unwrap_or(0.0),
                p["p99_ms"].as_f64().unwrap_or(0.0),
                p["sentences_per_second"].as_f64().unwrap_or(0.0)
            );
        }
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
        ratios.push(format!(
            "p50 at 1 client / pipeline f32 p50 = {:.2}x",
            p50 / pp
        ));
    }
    if let (Some(pp), Some(p50)) = (
        python_int8.as_ref().and_then(|p| p["p50_ms"].as_f64()),
        at(1, "p50_ms"),
    ) {
        ratios.push(format!(
            "p50 at 1 client / pipeline int8 p50 = {:.2}x",
            p50 / pp
        ));
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
    println!(
        "{}",
        json!({"precision": d.precision, "pipeline": python, "pipeline_int8": python_int8, "metafora": rows})
    );
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
