//! `bench kernels`: the CPU engine's packed dense-layer kernel against a direct call of the
//! `gemm` crate (the GEMM burn-flex uses) on the same weights, at roberta-base and -large
//! layer shapes. `gemm` packs the weight matrix inside every call; the engine packs it once
//! per deployed model.

use serde_json::json;

use crate::config::KernelsBench;
use crate::infer::cpu::kernels::{PackedLinear, packed_kernels_available};

use super::time_it;

fn parse_list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// `y = x · w + b` through `gemm::gemm` (bias written first, then accumulated into).
fn gemm_linear(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    let mut y: Vec<f32> = b.iter().copied().cycle().take(rows * d_out).collect();
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: x is [rows, d_in], w is [d_in, d_out], y is [rows, d_out], all row-major and
    // alive for the call.
    unsafe {
        gemm::gemm(
            rows,
            d_out,
            d_in,
            y.as_mut_ptr(),
            1,
            d_out as isize,
            true,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            1,
            d_out as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    y
}

pub fn kernels_bench(k: KernelsBench) -> anyhow::Result<()> {
    if !packed_kernels_available() {
        anyhow::bail!("this CPU has no AVX2/FMA: the packed kernel is not used here");
    }
    let rows: Vec<usize> = parse_list(&k.rows);
    let shapes: Vec<(usize, usize)> = k
        .shapes
        .split(',')
        .filter_map(|s| {
            let (a, b) = s.trim().split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    println!(
        "metafora bench kernels: rayon threads {}; median of {} calls",
        rayon::current_num_threads(),
        k.iters
    );
    println!(
        "{:>5} {:>11} {:>11} {:>11} {:>12} {:>12} {:>11}",
        "rows", "d_in x d_out", "packed ms", "gemm ms", "packed GF/s", "gemm GF/s", "gemm/packed"
    );
    let mut report = Vec::new();
    let mut state = 7u64;
    let mut rnd = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for &(d_in, d_out) in &shapes {
        let w: Vec<f32> = (0..d_in * d_out).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..d_out).map(|_| rnd()).collect();
        let packed = PackedLinear::new(&w, Some(&b), d_in, d_out);
        for &r in &rows {
            let x: Vec<f32> = (0..r * d_in).map(|_| rnd()).collect();
            let got = packed.forward(&x, r);
            let want = gemm_linear(&x, &w, &b, r, d_in, d_out);
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            anyhow::ensure!(diff < 1e-3, "results differ by {diff}");
            let tp = time_it(k.warmup, k.iters, || {
                std::hint::black_box(packed.forward(&x, r));
            });
            let tg = time_it(k.warmup, k.iters, || {
                std::hint::black_box(gemm_linear(&x, &w, &b, r, d_in, d_out));
            });
            let flops = 2.0 * (r * d_in * d_out) as f64;
            println!(
                "{r:>5} {:>11} {:>11.3} {:>11.3} {:>12.1} {:>12.1} {:>10.2}x",
                format!("{d_in}x{d_out}"),
                tp * 1e3,
                tg * 1e3,
                flops / tp / 1e9,
                flops / tg / 1e9,
                tg / tp
            );
            report.push(json!({"rows": r, "d_in": d_in, "d_out": d_out, "packed_ms": tp * 1e3, "gemm_ms": tg * 1e3}));
        }
    }
    println!(
        "{}",
        json!({"threads": rayon::current_num_threads(), "results": report})
    );
    Ok(())
}
