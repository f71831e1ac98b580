//! The one-shot commands: `train`, `study`, `eval`, `score`, `detect`.

pub mod study;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{DetectArgs, EvalArgs, ScoreArgs, TrainArgs};
use crate::data::Tokenizer;
use crate::data::dataset::{Dataset, DatasetOptions};
use crate::infer::engine::Engine;
use crate::infer::{DetectOptions, Detector, DetectorOptions, Input};
use crate::jobs::resolve::{ResolveContext, run_config};
use crate::jobs::spec::JobSpec;
use crate::metrics::{LabelScheme, Metrics};
use crate::model::backend::{BackendTask, Resolved, dispatch};
use crate::model::{HeadInit, load_token_classifier};
use crate::train::report::{Report, append_csv};
use crate::train::trainer::{encode_split, max_len};
use crate::train::{CancelToken, EpochRecord, EvalSummary, Progress, RunOutcome, TrainError};

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Console progress: a step bar on a terminal (indicatif draws nothing when stderr is not
/// one, so logs get no progress lines), a table row per epoch either way.
struct Console {
    bar: ProgressBar,
    base: Option<EvalSummary>,
    epochs: Vec<EpochRecord>,
}

impl Console {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("epoch {msg} [{bar:30}] step {pos}/{len} eta {eta}")
                .expect("a valid template: this is a bug")
                .progress_chars("=> "),
        );
        Console {
            bar,
            base: None,
            epochs: Vec::new(),
        }
    }

    /// A line above the bar (also without a terminal).
    fn line(&self, text: String) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    fn on(&mut self, p: Progress) {
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
                self.line(format!("device {device}: {train_sentences} training sentences, {epochs} epochs x {steps_per_epoch} steps = {total_steps} steps"));
                self.bar.set_length(total_steps as u64);
                if dropped_words > 0 {
                    self.line(format!(
                        "warning: {dropped_words} words beyond max_length were truncated away"
                    ));
                }
                for w in warnings {
                    self.line(format!("warning: {w}"));
                }
                if let Some(r) = resumed_from {
                    self.line(format!("resuming from {r}"));
                }
            }
            Progress::BaseEvaluated { summary } => {
                let m = &summary.metrics;
                self.line(format!(
                    "[base] test P={:.4} R={:.4} F1={:.4} Acc={:.4}",
                    m.precision, m.recall, m.f1, m.accuracy
                ));
                self.line(format!(
                    "{:>5} {:>7} {:>10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8}",
                    "epoch", "step", "train_loss", "val_loss", "P", "R", "F1", "Acc", "lr", "time"
                ));
                self.base = Some(summary);
            }
            Progress::Step {
                epoch,
                epochs,
                step,
                ..
            } => {
                self.bar.set_message(format!("{epoch}/{epochs}"));
                self.bar.set_position(step as u64);
            }
            Progress::Epoch { record: r } => {
                self.line(format!(
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
                ));
                self.epochs.push(r);
            }
            Progress::StoppedEarly { after_epoch, why } => {
                self.line(format!("stopped after epoch {after_epoch}: {why:?}"));
            }
            Progress::FinalEvaluated { summary, .. } => {
                self.bar.finish_and_clear();
                let m = &summary.metrics;
                self.line(format!(
                    "[finetuned] test P={:.4} R={:.4} F1={:.4} Acc={:.4}",
                    m.precision, m.recall, m.f1, m.accuracy
                ));
            }
        }
    }
}

/// `metafora train JOB.json`: runs the pipeline, appends the CSV row, writes report.json and
/// prints it; exits non-zero on failure (after writing the failed row).
pub fn train(args: TrainArgs, assets: &Path) -> anyhow::Result<()> {
    let spec = match JobSpec::preset(&args.spec, assets) {
        Some(spec) => spec,
        None => {
            let bytes =
                std::fs::read(&args.spec).with_context(|| format!("reading {}", args.spec))?;
            JobSpec::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", args.spec))?
        }
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
    let mut console = Console::new();
    let started = std::time::Instant::now();
    let outcome: Result<RunOutcome, TrainError> = (|| {
        let download_bar = ProgressBar::new(0);
        let mut dl = |d: crate::hub::Download| {
            download_bar.set_length(d.total);
            download_bar.set_position(d.bytes);
            download_bar.set_message(format!("{}/{}", d.repo, d.file));
        };
        let cfg = run_config(&spec, &ctx, &output_dir, device, &mut dl)?;
        download_bar.finish_and_clear();
        crate::train::run(&cfg, args.resume, &CancelToken::new(), &mut |p| {
            console.on(p)
        })
    })();
    let mut row = spec.csv_row();
    let status = match &outcome {
        Ok(o) => {
            row.succeed(o);
            "succeeded"
        }
        Err(e) => {
            if let Some(b) = &console.base {
                row.set_base(b);
            }
            row.fail(e);
            "failed"
        }
    };
    let report = Report {
        status,
        job_id: None,
        spec: serde_json::to_value(&spec)?,
        result: &outcome,
        base: console.base.as_ref(),
        epochs: &console.epochs,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    append_csv(&results_csv, &row)?;
    crate::model::export::write_json(&output_dir.join("report.json"), &report.to_json())?;
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

/// `metafora eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    struct Task(EvalArgs);
    impl BackendTask for Task {
        type Output = anyhow::Result<Metrics>;
        fn run<B: AutodiffBackend>(self, device: B::Device, resolved: Resolved) -> Self::Output {
            eval_on::<B::InnerBackend>(&self.0, &device, resolved)
        }
    }
    let metrics = dispatch(device, Task(args))?;
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}

fn eval_on<B: burn::tensor::backend::Backend>(
    args: &EvalArgs,
    device: &B::Device,
    resolved: Resolved,
) -> anyhow::Result<Metrics> {
    let (model, config, _) =
        load_token_classifier::<B>(&args.model, None, HeadInit::FromCheckpoint, device)?;
    let labels = config.labels().context("model config has no id2label")?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
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
    let engine = Engine::with_precision(model, &config, resolved, device, args.precision)?;
    eprintln!(
        "metafora eval: device {resolved}, precision {}, engine {}",
        args.precision,
        if engine.unpadded() {
            format!("cpu ({})", crate::infer::cpu::packed::cpu_summary())
        } else {
            "burn".to_string()
        }
    );
    let out =
        crate::train::evaluate::evaluate(&engine, &examples, &gold, &scheme, args.batch_size)?;
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
pub fn detect(args: DetectArgs, assets: &Path) -> anyhow::Result<()> {
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| assets.join("models/metafora-demo-ca"));
    let opts = DetectOptions {
        strategy: args
            .aggregation
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        threshold: args.threshold,
        long_text: args.long_text.parse().map_err(anyhow::Error::msg)?,
        uncertainty: args.uncertainty,
        words: None,
    };
    let detector = Detector::load(
        "cli",
        &model,
        device,
        DetectorOptions {
            stride: args.stride,
            ..Default::default()
        },
    )?;
    for text in &args.texts {
        let out = detector.detect_blocking(&Input::Text(text.clone()), opts)?;
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
