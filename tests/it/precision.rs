//! Reduced-precision inference (issue 19): bf16 and dynamic int8 on the CPU engine against the
//! transformers reference logits, F1 against f32 on real splits, the AVX2 path forced by
//! `METAFORA_CPU_ISA`, and `POST /v1/models {"precision"}` with its quality guard.
//!
//! Where this CPU lacks AVX512_BF16 / AVX512_VNNI the tests assert the refusal instead.

use burn::backend::Flex;
use metafora::infer::Precision;
use metafora::infer::engine::Engine;
use metafora::model::backend::Resolved;
use metafora::model::{HeadInit, load_token_classifier};
use serde_json::{Value, json};

use crate::app::{TestApp, spawn_app, tiny_job};
use crate::common::{fixture, floats, json as fixture_json, u32s};

/// Whether this machine runs `p` on the CPU engine.
fn runs(p: Precision) -> bool {
    metafora::infer::engine::check_precision(Resolved::Cpu, p).is_ok()
}

/// Max |Δ| of the engine's logits in `precision` against transformers' f32 logits of
/// `fixture_dir` (`None` when this CPU cannot run it; the refusal is then checked).
fn logits_delta(fixture_dir: &str, reference: &str, precision: Precision) -> Option<f32> {
    let fx = fixture_json(reference);
    let (model, config, _) = load_token_classifier::<Flex>(
        &fixture(fixture_dir),
        None,
        HeadInit::FromCheckpoint,
        &Default::default(),
    )
    .unwrap();
    let engine = match Engine::with_precision(
        model,
        &config,
        Resolved::Cpu,
        &Default::default(),
        precision,
    ) {
        Ok(e) => e,
        Err(e) => {
            assert!(!runs(precision));
            let needs = match precision {
                Precision::Bf16 => "AVX512_BF16",
                _ => "AVX512_VNNI",
            };
            assert!(e.to_string().contains(needs), "{e}");
            return None;
        }
    };
    assert!(
        engine.unpadded(),
        "reduced precision runs on the CPU engine"
    );
    let sentences = fx["sentences"].as_array().unwrap();
    let seqs: Vec<Vec<u32>> = sentences.iter().map(|s| u32s(&s["input_ids"])).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let mut worst = 0f32;
    for (s, got) in sentences.iter().zip(engine.logits(&refs)) {
        let want = floats(&s["logits"]);
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    Some(worst)
}

/// bf16 logits within 2e-2 of transformers' f32 logits (the bound); int8 within 5e-2.
/// Both are also checked to differ from f32 at all (a reduced path silently running f32
/// would be ~1e-6 off).
#[test]
fn reduced_precision_logits_stay_close_to_transformers() {
    for (dir, reference) in [
        ("tiny-roberta", "parity/tokenization_and_logits.json"),
        ("tiny-deberta-v2", "parity/deberta.json"),
    ] {
        for (precision, tol) in [(Precision::Bf16, 2e-2), (Precision::Int8, 5e-2)] {
            let Some(d) = logits_delta(dir, reference, precision) else {
                eprintln!("{dir} {precision}: not run by this CPU (refusal checked)");
                continue;
            };
            eprintln!("{dir} logits in {precision}: max |Δ| vs transformers f32 = {d:e}");
            assert!(d <= tol, "{dir} {precision}: max |Δ| {d} > {tol}");
            assert!(
                d > 1e-5,
                "{dir} {precision}: {d} — the reduced path did not run"
            );
        }
    }
}

/// `metafora eval` on a model and split in each precision: JSON metrics and the engine line.
fn eval(
    model: &std::path::Path,
    data: &std::path::Path,
    precision: &str,
    isa: Option<&str>,
) -> (bool, Value, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_metafora"));
    cmd.args([
        "eval",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--model",
    ])
    .arg(model)
    .arg("--data")
    .arg(data)
    .env_remove("METAFORA_CPU_ISA")
    .env_remove("METAFORA_CPU_KERNELS")
    .env("RAYON_NUM_THREADS", "2");
    if let Some(isa) = isa {
        cmd.env("METAFORA_CPU_ISA", isa);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let metrics = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), metrics, stderr)
}

/// The fine-tuned fixture on the synthetic test split and the bundled Catalan demo model on
/// the Catalan test split: F1 in bf16 and int8 within 0.01 of f32.
#[test]
fn reduced_precision_f1_is_within_a_hundredth_of_f32() {
    let assets = metafora::config::assets_dir(None);
    for (model, data) in [
        (fixture("tiny-roberta-finetuned"), fixture("data/synthetic")),
        (
            assets.join("models/metafora-demo-ca"),
            assets.join("data/ca_meta4xnli"),
        ),
    ] {
        let (ok, f32_metrics, err) = eval(&model, &data, "f32", None);
        assert!(ok, "{err}");
        let base = f32_metrics["f1"].as_f64().unwrap();
        for p in [Precision::Bf16, Precision::Int8] {
            let (ok, m, err) = eval(&model, &data, p.as_str(), None);
            if !runs(p) {
                assert!(!ok && err.contains("needs"), "{err}");
                continue;
            }
            assert!(ok, "{err}");
            assert!(err.contains(&format!("precision {p}")), "{err}");
            let f1 = m["f1"].as_f64().unwrap();
            eprintln!(
                "{}: f1 f32 {base:.4}, {p} {f1:.4} (Δ {:+.4})",
                model.display(),
                f1 - base
            );
            assert!(
                (f1 - base).abs() <= 0.01,
                "{}: {p} F1 {f1} vs f32 {base}",
                model.display()
            );
        }
    }
}

/// `METAFORA_CPU_ISA=avx2` keeps the AVX2 kernels on an AVX-512 CPU, in a real process: the
/// engine says so, the metrics are those of the default path (the f32 kernels add the same
/// products in the same order), and reduced precision is refused there.
#[test]
fn the_avx2_path_forced_by_the_environment_runs_and_agrees() {
    let (model, data) = (fixture("tiny-roberta-finetuned"), fixture("data/synthetic"));
    let (ok, forced, err) = eval(&model, &data, "f32", Some("avx2"));
    assert!(ok, "{err}");
    if metafora::infer::cpu::packed::Isa::best().is_none() {
        assert!(err.contains("engine burn"), "{err}");
        return;
    }
    assert!(err.contains("cpu (avx2"), "{err}");
    let (ok, default, err_default) = eval(&model, &data, "f32", None);
    assert!(ok, "{err_default}");
    if metafora::infer::cpu::packed::Isa::best() == Some(metafora::infer::cpu::packed::Isa::Avx512)
    {
        assert!(err.contains("METAFORA_CPU_ISA=avx2"), "{err}");
        assert!(err_default.contains("cpu (avx512"), "{err_default}");
    }
    assert_eq!(forced, default, "AVX2 and the default path score alike");
    // The reference F1 of this fixture (transformers' Trainer, tests/fixtures/README.md).
    assert!(
        (forced["f1"].as_f64().unwrap() - 0.8708487084870848).abs() < 1e-9,
        "{forced}"
    );
    let (ok, _, err) = eval(&model, &data, "int8", Some("avx2"));
    assert!(!ok, "int8 on the forced AVX2 path must be refused");
    assert!(err.contains("AVX512_VNNI"), "{err}");
    // A server asked for a default precision it cannot run stops at start, saying why.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metafora"))
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu"])
        .args(["--detect-precision", "bf16", "--no-worker"])
        .arg("--database-url")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("db.sqlite").display()
        ))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("METAFORA_CPU_ISA", "avx2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--detect-precision") && err.contains("AVX512_BF16"),
        "{err}"
    );
}

async fn deploy(app: &TestApp, body: Value) -> (u16, Value) {
    app.post("/v1/models", &body).await
}

/// `POST /v1/models {"precision": "int8"}` of a trained job: the model runs in int8 (version
/// suffix, `/v1/models`), the quality guard compared it with f32 on the job's validation
/// split and recorded it with the deployment; detection works and says which version ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_in_reduced_precision_records_the_quality_guard() {
    let app = spawn_app().await;
    let job = app.create_job(&tiny_job(2)).await;
    app.run_next().await;
    let (code, f32_model) = deploy(&app, json!({"name": "full", "job_id": job})).await;
    assert_eq!(code, 201, "{f32_model}");
    assert_eq!(f32_model["precision"], "f32");
    assert!(f32_model.get("quality").is_none(), "{f32_model}");
    for p in [Precision::Int8, Precision::Bf16] {
        let name = format!("small-{p}");
        let (code, m) = deploy(
            &app,
            json!({"name": name, "job_id": job, "precision": p.as_str()}),
        )
        .await;
        if !runs(p) {
            assert_eq!(code, 422, "{m}");
            assert_eq!(m["error"]["field"], "precision", "{m}");
            continue;
        }
        assert_eq!(code, 201, "{m}");
        assert_eq!(m["precision"], p.as_str());
        let version = m["version"].as_str().unwrap();
        assert_eq!(
            version,
            format!("{}-{p}", f32_model["version"].as_str().unwrap()),
            "same files, precision appended"
        );
        let q = &m["quality"];
        assert_eq!(q["split"], "validation", "{m}");
        assert_eq!(q["precision"], p.as_str());
        // The whole validation split (under the guard's 500-sentence cap).
        let validation = std::fs::read_to_string(fixture("data/synthetic-small/validation.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        assert!(validation > 0);
        assert_eq!(
            q["sentences"].as_u64().unwrap() as usize,
            validation.min(metafora::jobs::models::GUARD_SENTENCES),
            "{q}"
        );
        let (f1, f1_f32) = (q["f1"].as_f64().unwrap(), q["f1_f32"].as_f64().unwrap());
        assert!((q["f1_delta"].as_f64().unwrap() - (f1 - f1_f32)).abs() < 1e-12);
        assert!(q["words"].as_u64().unwrap() >= q["words_changed"].as_u64().unwrap());
        // The listing and the version history show the same.
        let (_, list) = app.get("/v1/models").await;
        let listed = list["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name.as_str())
            .unwrap()
            .clone();
        assert_eq!(listed["quality"], *q);
        let (_, versions) = app.get(&format!("/v1/models/{name}/versions")).await;
        assert_eq!(versions["versions"][0]["precision"], p.as_str());
        assert_eq!(versions["versions"][0]["quality"], *q);
        let (code, d) = app
            .post(
                "/v1/detect",
                &json!({"model": name, "text": "El temps vola quan estudies."}),
            )
            .await;
        assert_eq!(code, 200, "{d}");
        assert_eq!(d["model_version"], version);
    }
}

/// Bad `precision` values are 422s naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_precision_is_a_field_error() {
    let app = spawn_app().await;
    for bad in [
        json!("fp16"),
        json!(8),
        json!(null),
        json!("F32 "),
        json!(["int8"]),
    ] {
        let (code, m) = deploy(
            &app,
            json!({"name": "x", "path": fixture("tiny-roberta-finetuned"), "precision": bad}),
        )
        .await;
        assert_eq!(code, 422, "{bad}: {m}");
        assert_eq!(m["error"]["field"], "precision", "{bad}: {m}");
    }
}
