//! `metafora study STUDY.json`: the service's study, run locally — a study database and the
//! trials' directories under `--output-dir`, the same worker, a progress display, and the
//! summary table at the end (plus `summary.csv`, `results.csv` and `study.json`). Ctrl-C
//! checkpoints the running trial; the same command continues the study.

use std::sync::Arc;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::StudyArgs;
use crate::infer::{DetectorOptions, Registry};
use crate::jobs::Shared;
use crate::jobs::resolve::ResolveContext;
use crate::jobs::study::StudySpec;
use crate::jobs::study::lifecycle;
use crate::jobs::study::summary::StudyView;
use crate::jobs::worker::{Outcome, Worker};
use crate::model::backend::Resolved;
use crate::store;

pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?;
    let device = args.device.resolve().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args, bytes, device))
}

async fn run_async(args: StudyArgs, bytes: Vec<u8>, device: Resolved) -> anyhow::Result<()> {
    let out = &args.output_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let pool = store::connect(
        &format!("sqlite://{}", out.join("study.db").display()),
        std::time::Duration::ZERO,
    )
    .await?;
    let shared = Arc::new(Shared::new(
        pool.clone(),
        ResolveContext {
            hub: Some(crate::hub::HubClient::from_env()),
            ..Default::default()
        },
        device,
        out.clone(),
        Arc::new(Registry::new(device, DetectorOptions::default())),
    ));
    let (mut spec, trials) = StudySpec::parse(&bytes, args.max_trials)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.spec.display()))?;
    if let Some(name) = spec.deploy_best_as.take() {
        eprintln!(
            "deploy_best_as {name:?} ignored: nothing serves models after `metafora study` ends"
        );
    }
    let unfinished = store::studies::list(&pool, 200, None)
        .await?
        .into_iter()
        .find(|s| !s.status.is_finished());
    let id = match unfinished {
        Some(s) => {
            if serde_json::from_str::<StudySpec>(&s.spec).ok().as_ref() != Some(&spec) {
                bail!(
                    "{} holds an unfinished study with another spec; use another --output-dir",
                    out.display()
                );
            }
            eprintln!("continuing study {} in {}", s.id, out.display());
            s.id
        }
        None => {
            let row = lifecycle::submit(&shared, &spec, &trials, "cli", usize::MAX).await?;
            eprintln!(
                "study {}: {} trials ({} models × {} configurations × {} seeds) in {}",
                row.id,
                trials.len(),
                spec.models.len(),
                trials.len() / (spec.models.len() * spec.seeds.len()).max(1),
                spec.seeds.len(),
                out.display()
            );
            row.id
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // Takes back the trial a killed earlier run of this command left running.
    let worker = Worker::new(shared.clone(), stop_rx.clone());
    worker.register().await?;
    lifecycle::recover(&shared).await?;
    let display = tokio::spawn(progress(shared.clone(), id.clone(), trials.len()));
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "stopping: checkpointing the running trial; run the same command to continue"
            );
            let _ = stop_tx.send(true);
        }
    });
    while let Outcome::Ran { .. } = worker.try_run_next().await? {
        if *stop_rx.borrow() {
            break;
        }
    }
    display.abort();
    let view = lifecycle::view(&shared, &id)
        .await?
        .context("the study is gone from its database")?;
    if !view.status.is_finished() {
        eprintln!("study {id} stopped before its end; run the same command to continue");
        return Ok(());
    }
    let jobs = store::studies::trials(&pool, &id).await?;
    std::fs::write(out.join("summary.csv"), view.summary_csv())?;
    std::fs::write(out.join("results.csv"), view.results_csv(&jobs)?)?;
    crate::model::export::write_json(&out.join("study.json"), &serde_json::to_value(&view)?)?;
    println!("{}", table(&view));
    eprintln!(
        "summary -> {}; results -> {}; study -> {}",
        out.join("summary.csv").display(),
        out.join("results.csv").display(),
        out.join("study.json").display()
    );
    if view.best.is_none() {
        bail!("no trial succeeded");
    }
    Ok(())
}

/// A line per trial as it ends, a bar over the trials.
async fn progress(shared: Arc<Shared>, id: String, total: usize) {
    let mut studies = shared.study_events.subscribe();
    let mut jobs = shared.events.subscribe();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("trials {pos}/{len} [{bar:30}] {msg}")
            .expect("a valid template: this is a bug")
            .progress_chars("=> "),
    );
    let done = store::studies::trials(&shared.pool, &id)
        .await
        .map(|t| t.iter().filter(|j| j.status.is_finished()).count())
        .unwrap_or(0);
    bar.set_position(done as u64);
    let brief = |d: &Value| {
        format!(
            "{} seed {} {}",
            d["model"].as_str().unwrap_or_default(),
            d["seed"],
            d["params"]
        )
    };
    loop {
        tokio::select! {
            Ok(ev) = studies.recv() => {
                if ev.study_id != id { continue; }
                match ev.kind.as_str() {
                    "trial_started" => bar.set_message(brief(&ev.data)),
                    "trial_finished" => {
                        bar.inc(1);
                        let f = |k: &str| ev.data[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
                        let line = format!(
                            "trial {}: {} -> {} val F1 {} test F1 {} ({} epochs{})",
                            ev.data["trial"], brief(&ev.data), ev.data["status"].as_str().unwrap_or_default(),
                            f("val_f1"), f("test_f1"), ev.data["epochs_run"],
                            if ev.data["pruned"] == true { ", pruned" } else { "" }
                        );
                        bar.suspend(|| eprintln!("{line}"));
                    }
                    _ => {}
                }
            }
            Ok(ev) = jobs.recv() => {
                if ev.kind == "epoch" {
                    bar.set_message(format!(
                        "epoch {} val F1 {:.4}",
                        ev.data["epoch"], ev.data["eval"]["f1"].as_f64().unwrap_or_default()
                    ));
                } else if ev.kind == "stopped_early" {
                    bar.suspend(|| eprintln!("  stopped after epoch {}: {}", ev.data["after_epoch"], ev.data["why"]));
                }
            }
            else => break,
        }
    }
}

fn pm(mean: Option<f64>, std: Option<f64>) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{m:.4} ± {s:.4}"),
        (Some(m), None) => format!("{m:.4}"),
        _ => "-".into(),
    }
}

/// The summary as a text table: a row per configuration, the best marked, then the
/// comparison.
pub fn table(v: &StudyView) -> String {
    let selected = if v.select_by == crate::train::args::BestMetric::F1 {
        String::new()
    } else {
        format!("val {}", v.select_by.as_str())
    };
    let mut rows = vec![[
        "".to_string(),
        "model".into(),
        "params".into(),
        "n".into(),
        selected.clone(),
        "val F1 (mean ± sd)".into(),
        "test F1 (mean ± sd)".into(),
        "epochs".into(),
    ]];
    for c in &v.summary {
        let best = v
            .best
            .as_ref()
            .is_some_and(|b| b.model == c.model && b.params == c.params);
        rows.push([
            if best { "*".into() } else { "".into() },
            c.model.clone(),
            if c.params.is_empty() {
                "-".into()
            } else {
                Value::Object(c.params.clone()).to_string()
            },
            format!(
                "{}{}",
                c.n,
                if c.pruned > 0 {
                    format!(" ({} pruned)", c.pruned)
                } else {
                    String::new()
                }
            ),
            if selected.is_empty() {
                String::new()
            } else {
                pm(c.val_selected_mean, c.val_selected_std)
            },
            pm(c.val_f1_mean, c.val_f1_std),
            pm(c.test_f1_mean, c.test_f1_std),
            c.epochs_run_mean.map_or("-".into(), |e| format!("{e:.1}")),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let cells: Vec<&String> = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4 || !selected.is_empty())
            .map(|(_, c)| c)
            .collect();
        out.push_str(
            cells
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end(),
        );
        out.push('\n');
    }
    out.push_str(&format!(
        "* best on validation ({} mean over seeds); test scores are reported, never used to choose\n",
        v.select_by.as_str()
    ));
    if v.epochs_saved > 0 {
        out.push_str(&format!("pruning saved {} epochs\n", v.epochs_saved));
    }
    if let Some(c) = &v.comparison {
        let b = &c.bootstrap;
        out.push_str(&format!(
            "{} {} vs {} {}: test F1 difference {:+.4}, 95% CI [{:+.4}, {:+.4}] ({} paired bootstrap resamples over {} test sentences): {}\n",
            c.a.model,
            Value::Object(c.a.params.clone()),
            c.b.model,
            Value::Object(c.b.params.clone()),
            b.diff,
            b.ci95[0],
            b.ci95[1],
            b.resamples,
            b.sentences,
            if b.significant { "the difference is significant" } else { "not significant: the interval includes 0" }
        ));
    }
    out
}
