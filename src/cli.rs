//! The one-shot commands: `train`, `eval`, `score`, `detect`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;

use crate::config::{DetectArgs, EvalArgs, ScoreArgs, TrainArgs};
use crate::data::RobertaTokenizer;
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::jobs::resolve::{ResolveContext, run_config};
use crate::jobs::spec::JobSpec;
use crate::metrics::{LabelScheme, Metrics};
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, load_token_classifier};
use crate::train::report::{CsvRow, append_csv};
use crate::train::trainer::{encode_split, max_len};
use crate::train::{CancelToken, Progress, RunOutcome};

/// Where the bundled demo model, fine-tuned model and data live.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("METAFORA_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets")))
}

/// The bundled demo job: mini-roberta-ca fine-tuned on the Catalan metaphor data.
pub fn demo_spec() -> JobSpec {
    let a = assets_dir();
    let json = serde_json::json!({
        "model": {"checkpoint": a.join("models/mini-roberta-ca"), "name": "mini-roberta-ca"},
        "dataset": {"path": a.join("data/ca_meta4xnli")},
        "training": {"learning_rate": 5e-4, "num_train_epochs": 20},
        "seed": 42
    });
    JobSpec::parse(json.to_string().as_bytes()).expect("the demo spec is valid: this is a bug")
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Console progress: a live step line on a terminal, a table row per epoch.
struct Console {
    tty: bool,
    started: std::time::Instant,
    steps_at_start: Option<usize>,
}

impl Console {
    fn on(&mut self, p: Progress) {
        let mut err = std::io::stderr();
        match p {
            Progress::Prepared {
                device,
                train_sentences,
                steps_per_epoch,
                total_steps,
                epochs,
                dropped_words,
                warnings,
                resumed_from,
                ..
            } => {
                let _ = writeln!(
                    err,
                    "device {device}: {train_sentences} training sentences, {epochs} epochs x {steps_per_epoch} steps = {total_steps} steps"
                );
                if dropped_words > 0 {
                    let _ = writeln!(
                        err,
                        "warning: {dropped_words} words beyond max_length were truncated away"
                    );
                }
                for w in warnings {
                    let _ = writeln!(err, "warning: {w}");
                }
                if let Some(r) = resumed_from {
                    let _ = writeln!(err, "resuming from {r}");
                }
            }
            Progress::BaseEvaluated { summary } => {
                let m = &summary.metrics;
                let _ = writeln!(
                    err,
                    "[base] test P={:.4} R={:.4} F1={:.4} Acc={:.4}",
                    m.precision, m.recall, m.f1, m.accuracy
                );
                let _ = writeln!(
                    err,
                    "{:>5} {:>7} {:>10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
                    "epoch", "step", "train_loss", "val_loss", "P", "R", "F1", "Acc", "lr", "time"
                );
            }
            Progress::Step {
                epoch,
                epochs,
                step,
                total_steps,
                loss,
                learning_rate,
                ..
            } => {
                let first = *self.steps_at_start.get_or_insert(step - 1);
                let done = step - first;
                let rate = self.started.elapsed().as_secs_f64() / done.max(1) as f64;
                let eta = rate * (total_steps - step) as f64;
                if self.tty {
                    let _ = write!(
                        err,
                        "\repoch {epoch}/{epochs} step {step}/{total_steps} loss {loss:.4} lr {learning_rate:.2e} eta {}   ",
                        fmt_secs(eta)
                    );
                }
            }
            Progress::Epoch { record: r } => {
                if self.tty {
                    let _ = write!(err, "\r{:80}\r", "");
                }
                let _ = writeln!(
                    err,
                    "{:>5} {:>7} {:>10.4} {:>9.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>9.2e} {:>8}",
                    r.epoch,
                    r.step,
                    r.train_loss,
                    r.eval_loss,
                    r.eval.precision,
                    r.eval.recall,
                    r.eval.f1,
                    r.eval.accuracy,
                    r.learning_rate,
                    fmt_secs(r.train_seconds + r.eval_seconds)
                );
            }
            Progress::FinalEvaluated { summary } => {
                let m = &summary.metrics;
                let _ = writeln!(
                    err,
                    "[finetuned] test P={:.4} R={:.4} F1={:.4} Acc={:.4}",
                    m.precision, m.recall, m.f1, m.accuracy
                );
            }
        }
    }
}

/// `metafora train JOB.json`: runs the pipeline, appends the CSV row, writes report.json and
/// prints it; exits non-zero on failure (after writing the failed row).
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let spec = if args.spec == "demo" {
        demo_spec()
    } else {
        let bytes = std::fs::read(&args.spec).with_context(|| format!("reading {}", args.spec))?;
        JobSpec::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", args.spec))?
    };
    let output_dir = args
        .output_dir
        .clone()
        .or_else(|| spec.output.dir.clone().map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(format!(
                "runs/{}-seed{}",
                spec.model.display_name(),
                spec.seed
            ))
        });
    let results_csv = spec
        .output
        .results_csv
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| output_dir.join("results.csv"));
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    tracing::info!(%device, "backend");
    let ctx = ResolveContext {
        hub: Some(crate::hub::HubClient::from_env()),
        ..Default::default()
    };
    let mut row = CsvRow::new(
        &spec.model.display_name(),
        &spec.model.checkpoint,
        spec.seed,
        spec.training.gradient_accumulation_steps,
    );
    let mut console = Console {
        tty: std::io::stderr().is_terminal(),
        started: std::time::Instant::now(),
        steps_at_start: None,
    };
    let mut base = None;
    let mut epochs = Vec::new();
    let started = std::time::Instant::now();
    let outcome: Result<RunOutcome, crate::train::TrainError> = (|| {
        let mut dl = |d: crate::hub::Download| {
            eprint!(
                "\rdownloading {}/{}: {} / {} bytes   ",
                d.repo, d.file, d.bytes, d.total
            );
            if d.bytes >= d.total {
                eprintln!();
            }
        };
        let cfg = run_config(&spec, &ctx, &output_dir, device, &mut dl).map_err(|e| match e {
            crate::jobs::resolve::ResolveError::Field(f) => crate::train::TrainError::Spec(f),
            crate::jobs::resolve::ResolveError::Data(d) => crate::train::TrainError::Data(d),
            crate::jobs::resolve::ResolveError::Hub(h) => {
                crate::train::TrainError::Checkpoint(h.to_string())
            }
        })?;
        crate::train::run(&cfg, args.resume, &CancelToken::new(), &mut |p| {
            match &p {
                Progress::BaseEvaluated { summary } => base = Some(summary.clone()),
                Progress::Epoch { record } => epochs.push(record.clone()),
                _ => {}
            }
            console.on(p)
        })
    })();
    let report = match &outcome {
        Ok(o) => {
            row.succeed(o);
            serde_json::json!({"status": "success", "spec": spec, "outcome": o, "versions": versions(),
                "total_seconds": started.elapsed().as_secs_f64()})
        }
        Err(e) => {
            if let Some(b) = &base {
                row.set_base(b);
            }
            row.fail(e);
            serde_json::json!({"status": "failed", "error": row.error, "spec": spec, "base_test": base, "epochs": epochs,
                "versions": versions(), "total_seconds": started.elapsed().as_secs_f64()})
        }
    };
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    append_csv(&results_csv, &row)?;
    crate::model::export::write_json(&output_dir.join("report.json"), &report)?;
    eprintln!(
        "csv -> {}; report -> {}",
        results_csv.display(),
        output_dir.join("report.json").display()
    );
    match outcome {
        Ok(o) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                "status": "success", "base_test": o.base_test, "finetuned_test": o.finetuned_test,
                "improvement_f1": o.improvement_f1, "best_epoch": o.best_epoch, "best_model_dir": o.best_model_dir,
                "train_samples_per_second": o.train_samples_per_second, "train_seconds": o.train_seconds}))?
            );
            Ok(())
        }
        Err(e) => bail!("{}: {e}", e.kind()),
    }
}

/// Versions written into reports and model cards.
pub fn versions() -> serde_json::Value {
    serde_json::json!({"metafora": env!("CARGO_PKG_VERSION"), "burn": "0.21.0", "tokenizers": "0.22.2"})
}

/// `metafora eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task(EvalArgs);
    impl BackendTask for Task {
        type Output = anyhow::Result<Metrics>;
        fn run<B: AutodiffBackend>(self, device: B::Device, _: Resolved) -> Self::Output {
            eval_on::<B::InnerBackend>(&self.0, &device)
        }
    }
    let metrics = dispatch(device, Task(args))?;
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}

fn eval_on<B: burn::tensor::backend::Backend>(
    args: &EvalArgs,
    device: &B::Device,
) -> anyhow::Result<Metrics> {
    let (model, config, _) =
        load_token_classifier::<B>(&args.model, None, HeadInit::FromCheckpoint, device)?;
    let labels = config.labels().context("model config has no id2label")?;
    let tokenizer = RobertaTokenizer::from_dir(&args.model)?;
    let opts = DatasetOptions {
        splits: ["train".into(), "validation".into(), args.split.clone()],
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let split = load_one_split(&args.data, &opts, &args.split)?;
    let scheme = LabelScheme::new(&labels)?;
    let max_len = max_len(&config, &tokenizer, args.max_length);
    let (examples, dropped) = encode_split(&split, &tokenizer, max_len)?;
    let gold: Vec<Vec<i64>> = split.sentences.iter().map(|s| s.tags.clone()).collect();
    let out = crate::train::evaluate::evaluate(
        &model,
        &examples,
        &gold,
        &scheme,
        args.batch_size,
        tokenizer.pad_id,
        device,
    )?;
    if dropped > 0 {
        eprintln!("warning: {dropped} words beyond max_length were not scored");
    }
    if let Some(path) = &args.predictions {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for (s, wp) in split.sentences.iter().zip(&out.word_preds) {
            let gold: Vec<&str> = s
                .tags
                .iter()
                .map(|t| labels[*t as usize].as_str())
                .collect();
            let pred: Vec<Option<&str>> =
                wp.iter().map(|p| p.map(|p| labels[p].as_str())).collect();
            serde_json::to_writer(
                &mut f,
                &serde_json::json!({"tokens": s.tokens, "gold": gold, "pred": pred}),
            )?;
            f.write_all(b"\n")?;
        }
    }
    Ok(out.metrics)
}

/// Reads only `split` of a dataset folder (the other splits may be absent).
fn load_one_split(
    dir: &Path,
    opts: &DatasetOptions,
    split: &str,
) -> anyhow::Result<crate::data::Split> {
    let o = DatasetOptions {
        splits: [split.into(), split.into(), split.into()],
        ..opts.clone()
    };
    Ok(Dataset::load(dir, &o)?.test)
}

/// `metafora score FILE`.
pub fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let f = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let (mut gold, mut pred) = (Vec::new(), Vec::new());
    let mut labels = std::collections::BTreeSet::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        #[derive(serde::Deserialize)]
        struct Row {
            gold: Vec<String>,
            pred: Vec<Option<String>>,
        }
        let r: Row = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", args.file.display(), i + 1))?;
        if r.gold.len() != r.pred.len() {
            bail!(
                "{} line {}: {} gold labels but {} predicted",
                args.file.display(),
                i + 1,
                r.gold.len(),
                r.pred.len()
            );
        }
        // Words without a prediction (truncated) are left out, as in evaluation.
        let (g, p): (Vec<String>, Vec<String>) = r
            .gold
            .into_iter()
            .zip(r.pred)
            .filter_map(|(g, p)| p.map(|p| (g, p)))
            .unzip();
        labels.extend(g.iter().cloned());
        labels.extend(p.iter().cloned());
        gold.push(g);
        pred.push(p);
    }
    let labels: Vec<String> = labels.into_iter().collect();
    let scheme = LabelScheme::new(&labels)?;
    let m = Metrics::compute(&scheme, &gold, &pred)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// `metafora detect`.
pub fn detect(args: DetectArgs) -> anyhow::Result<()> {
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| assets_dir().join("models/metafora-demo-ca"));
    let strategy: crate::infer::aggregate::Strategy =
        args.aggregation.parse().map_err(anyhow::Error::msg)?;
    let long: crate::infer::LongText = args.long_text.parse().map_err(anyhow::Error::msg)?;
    let opts = crate::infer::DetectorOptions {
        stride: args.stride,
        ..Default::default()
    };
    let detector = crate::infer::Detector::load("cli", &model, device, opts)?;
    for text in &args.texts {
        let out = detector.detect_blocking(
            crate::infer::Input::Text(text.clone()),
            strategy,
            args.threshold,
            long,
        )?;
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
