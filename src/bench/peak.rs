//! `bench peak`: the arithmetic limit of this CPU, measured, so that every inference figure can
//! be given as a fraction of it. Each kernel is a loop of 12 independent accumulator chains
//! (more than FMA latency × issue width on current x86 cores) over register operands only:
//! AVX2 f32 FMA (`vfmadd231ps ymm`), AVX-512 f32 FMA (`zmm`), AVX512_BF16 dot products
//! (`vdpbf16ps`, 2 multiplies + 2 adds per lane) and AVX512_VNNI (`vpdpbusd`, 4 + 4 integer
//! operations per lane). Per core (one thread) and for the whole rayon pool.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

/// One instruction's peak.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    /// `avx2_f32`, `avx512_f32`, `avx512_bf16`, `avx512_vnni_int8`.
    pub kernel: &'static str,
    /// Operations (FLOP, or integer ops for int8) per second on one thread, in units of 1e9.
    pub per_core_gops: f64,
    /// The same with one thread per core of the rayon pool, together.
    pub all_cores_gops: f64,
    pub threads: usize,
}

/// Each kernel's peak on this CPU (those it lacks are left out).
pub fn measure() -> Vec<Peak> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // (name, kernel, operations per instruction)
        type Kernel = (&'static str, fn(u64) -> f32, f64);
        let mut kernels: Vec<Kernel> = Vec::new();
        if has!("avx2") && has!("fma") {
            kernels.push(("avx2_f32", x86::avx2_f32, 16.0));
        }
        if has!("avx512f") {
            kernels.push(("avx512_f32", x86::avx512_f32, 32.0));
        }
        if has!("avx512f") && has!("avx512bf16") {
            kernels.push(("avx512_bf16", x86::avx512_bf16, 64.0));
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
            kernels.push(("avx512_vnni_int8", x86::avx512_vnni, 128.0));
        }
        let threads = rayon::current_num_threads();
        // Start the pool's threads before the first multi-thread measurement.
        if let Some((_, f, _)) = kernels.first() {
            (0..threads).into_par_iter().for_each(|_| {
                std::hint::black_box(f(std::hint::black_box(2_000_000)));
            });
        }
        kernels
            .into_iter()
            .map(|(kernel, f, ops_per_instruction)| {
                // Operations per loop iteration: 12 instructions.
                let per_iter = 12.0 * ops_per_instruction;
                let rate = |iters: u64| {
                    let t = Instant::now();
                    std::hint::black_box(f(std::hint::black_box(iters)));
                    per_iter * iters as f64 / t.elapsed().as_secs_f64() / 1e9
                };
                // Warm up (clocks, license transitions), then the best of 5 runs of ~50 ms.
                rate(2_000_000);
                let per_core = (0..5).map(|_| rate(5_000_000)).fold(0.0, f64::max);
                let all_cores = (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        (0..threads).into_par_iter().for_each(|_| {
                            std::hint::black_box(f(std::hint::black_box(5_000_000)));
                        });
                        per_iter * 5e6 * threads as f64 / t.elapsed().as_secs_f64() / 1e9
                    })
                    .fold(0.0, f64::max);
                Peak {
                    kernel,
                    per_core_gops: per_core,
                    all_cores_gops: all_cores,
                    threads,
                }
            })
            .collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The peak of `kernel` in a measured set, per core.
pub fn per_core(peaks: &[Peak], kernel: &str) -> Option<f64> {
    peaks
        .iter()
        .find(|p| p.kernel == kernel)
        .map(|p| p.per_core_gops)
}

pub fn peak_bench(json: bool) -> anyhow::Result<()> {
    let peaks = measure();
    if json {
        println!("{}", serde_json::to_string_pretty(&peaks)?);
        return Ok(());
    }
    println!(
        "metafora bench peak: {} ; 12 independent chains per kernel, best of 5",
        crate::infer::cpu::packed::cpu_summary()
    );
    println!(
        "{:<18} {:>14} {:>22}",
        "kernel",
        "1 thread GOP/s",
        format!("{} threads GOP/s", rayon::current_num_threads())
    );
    for p in &peaks {
        println!(
            "{:<18} {:>14.1} {:>22.1}",
            p.kernel, p.per_core_gops, p.all_cores_gops
        );
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Sums the accumulators so that nothing is dead code.
    macro_rules! chains {
        ($iters:expr, $zero:expr, $init_a:expr, $init_b:expr, $op:expr, $reduce:expr) => {{
            let (a, b) = (std::hint::black_box($init_a), std::hint::black_box($init_b));
            let mut acc = [$zero; 12];
            for _ in 0..$iters {
                for c in acc.iter_mut() {
                    *c = $op(*c, a, b);
                }
            }
            acc.iter().map(|c| $reduce(*c)).sum::<f32>()
        }};
    }

    pub(super) fn avx2_f32(iters: u64) -> f32 {
        #[target_feature(enable = "avx2,fma")]
        fn run(iters: u64) -> f32 {
            chains!(
                iters,
                _mm256_setzero_ps(),
                _mm256_set1_ps(1.0),
                _mm256_set1_ps(1e-9),
                |c, a, b| _mm256_fmadd_ps(a, b, c),
                |c: __m256| _mm256_cvtss_f32(c)
            )
        }
        // SAFETY: only called when the features were detected (see `measure`).
        unsafe { run(iters) }
    }

    pub(super) fn avx512_f32(iters: u64) -> f32 {
        #[target_feature(enable = "avx512f")]
        fn run(iters: u64) -> f32 {
            chains!(
                iters,
                _mm512_setzero_ps(),
                _mm512_set1_ps(1.0),
                _mm512_set1_ps(1e-9),
                |c, a, b| _mm512_fmadd_ps(a, b, c),
                |c: __m512| _mm512_reduce_add_ps(c)
            )
        }
        // SAFETY: only called when the features were detected.
        unsafe { run(iters) }
    }

    pub(super) fn avx512_bf16(iters: u64) -> f32 {
        #[target_feature(enable = "avx512f,avx512bf16")]
        fn run(iters: u64) -> f32 {
            // bf16 1.0 = 0x3f80 in both halves; 2^-30 ≈ 0x3080.
            // SAFETY: bit casts between 512-bit vector types.
            let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)) };
            let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3080_3080)) };
            chains!(
                iters,
                _mm512_setzero_ps(),
                a,
                b,
                |c, a, b| _mm512_dpbf16_ps(c, a, b),
                |c: __m512| _mm512_reduce_add_ps(c)
            )
        }
        // SAFETY: only called when the features were detected.
        unsafe { run(iters) }
    }

    pub(super) fn avx512_vnni(iters: u64) -> f32 {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn run(iters: u64) -> f32 {
            chains!(
                iters,
                _mm512_setzero_si512(),
                _mm512_set1_epi32(0x0101_0101),
                _mm512_set1_epi32(0),
                |c, a, b| _mm512_dpbusd_epi32(c, a, b),
                |c: __m512i| _mm512_reduce_add_epi32(c) as f32
            )
        }
        // SAFETY: only called when the features were detected.
        unsafe { run(iters) }
    }
}
