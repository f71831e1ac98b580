//! `bench kernels`: the CPU engine's packed dense-layer kernel against a direct call of the
//! `gemm` crate (the GEMM burn-flex uses) on the same weights, at roberta-base and -large
//! layer shapes. `gemm` packs the weight matrix inside every call; the engine packs it once
//! per deployed model.

use serde_json::json;

use crate::config::KernelsBench;
use crate::infer::cpu::packed::{Isa, PackedLinear, Precision};

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
    let Some(best) = Isa::detect() else {
        anyhow::bail!("this CPU has no AVX2/FMA: the packed kernel is not used here");
    };
    let rows: Vec<usize> = parse_list(&k.rows);
    let shapes: Vec<(usize, usize)> = k
        .shapes
        .split(',')
        .filter_map(|s| {
            let (a, b) = s.trim().split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    // Every (instruction set, format) this CPU runs, f32 on AVX2 first (the baseline).
    let mut variants = vec![(Isa::Avx2, Precision::F32)];
    if best == Isa::Avx512 {
        variants.extend(
            Precision::ALL
                .into_iter()
                .filter(|p| Isa::Avx512.supports(*p))
                .map(|p| (Isa::Avx512, p)),
        );
    }
    let name = |(isa, p): (Isa, Precision)| format!("{} {p}", isa.as_str());
    println!(
        "metafora bench kernels: {}; rayon threads {}; median of {} calls; gemm 0.19 (x86-v4: \
         AVX-512 where present) packs the weights in every call",
        crate::infer::cpu::packed::cpu_summary(),
        rayon::current_num_threads(),
        k.iters
    );
    print!("{:>5} {:>11}", "rows", "d_in x d_out");
    for v in &variants {
        print!(" {:>16}", format!("{} ms", name(*v)));
    }
    println!(" {:>9} {:>11}", "gemm ms", "best GF/s");
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
        let packed: Vec<PackedLinear> = variants
            .iter()
            .map(|(isa, p)| PackedLinear::with(&w, Some(&b), d_in, d_out, *isa, *p))
            .collect();
        for &r in &rows {
            let x: Vec<f32> = (0..r * d_in).map(|_| rnd()).collect();
            let want = gemm_linear(&x, &w, &b, r, d_in, d_out);
            let mut times = Vec::new();
            for (v, layer) in variants.iter().zip(&packed) {
                let got = layer.forward(&x, r);
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Values here are ~sqrt(d_in)/6: f32 agrees to rounding, bf16/int8 to their
                // steps.
                let tol = match v.1 {
                    Precision::F32 => 1e-3,
                    _ => 0.05 * (d_in as f32).sqrt(),
                };
                anyhow::ensure!(diff < tol, "{}: results differ by {diff}", name(*v));
                times.push(time_it(k.warmup, k.iters, || {
                    std::hint::black_box(layer.forward(&x, r));
                }));
            }
            let tg = time_it(k.warmup, k.iters, || {
                std::hint::black_box(gemm_linear(&x, &w, &b, r, d_in, d_out));
            });
            let flops = 2.0 * (r * d_in * d_out) as f64;
            print!("{r:>5} {:>11}", format!("{d_in}x{d_out}"));
            for t in &times {
                print!(" {:>16.3}", t * 1e3);
            }
            let best_t = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!(" {:>9.3} {:>11.1}", tg * 1e3, flops / best_t / 1e9);
            let per: serde_json::Map<String, serde_json::Value> = variants
                .iter()
                .zip(&times)
                .map(|(v, t)| (name(*v).replace(' ', "_") + "_ms", json!(t * 1e3)))
                .collect();
            report.push(json!({"rows": r, "d_in": d_in, "d_out": d_out, "gemm_ms": tg * 1e3, "variants": per}));
        }
    }
    println!(
        "{}",
        json!({"threads": rayon::current_num_threads(), "results": report})
    );
    Ok(())
}
