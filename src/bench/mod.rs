//! `metafora bench`: model forward/train-step timings, parity on a device, /detect under load,
//! the dense-layer kernels, the CPU's arithmetic peak. Figures are printed next to the reference measured in the same run
//! (PyTorch with `--python`; `gemm` for the kernels).

mod detect;
mod kernels;
mod logits;
mod model;
mod parity;
pub mod peak;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::{BenchArgs, BenchCommand};

/// Runs a benchmark.
pub fn run(args: BenchArgs, assets: &Path) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Model(m) => model::model_bench(m),
        BenchCommand::Parity(p) => parity::parity_bench(p),
        BenchCommand::Detect(d) => detect::detect_bench(d, assets),
        BenchCommand::Logits(l) => logits::logits_bench(l),
        BenchCommand::Kernels(k) => kernels::kernels_bench(k),
        BenchCommand::Peak(p) => peak::peak_bench(p.json),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("timings are finite: this is a bug"));
    v[v.len() / 2]
}

/// Median seconds of `iters` calls after `warmup` calls.
fn time_it(warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    median(
        (0..iters.max(1))
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Runs one of the repository's Python reference scripts (`bench/<script>`) and parses the
/// JSON it prints.
fn run_python(python: &Path, script: &str, args: &[String]) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join(script);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("reference output")
}
