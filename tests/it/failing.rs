//! A job whose training split is broken on line 7 (3 tags for 4 tokens): a clear error naming
//! split, line and problem, a `failed` CSV row, and no model presented as the best — from the
//! CLI and from the service.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::app::{Options, spawn_app_with};
use crate::common::fixture;

/// synthetic-small with train line 7 replaced by a record whose tags are one short.
fn broken_dataset(dir: &Path) -> PathBuf {
    let data = dir.join("broken");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["labels.json", "validation.jsonl", "test.jsonl"] {
        std::fs::copy(fixture("data/synthetic-small").join(f), data.join(f)).unwrap();
    }
    let train = std::fs::read_to_string(fixture("data/synthetic-small/train.jsonl")).unwrap();
    let mut lines: Vec<String> = train.lines().map(String::from).collect();
    lines[6] = json!({"tokens": ["El", "temps", "vola", "."], "tags": [0, 0, 1]}).to_string();
    std::fs::write(data.join("train.jsonl"), lines.join("\n") + "\n").unwrap();
    data
}

fn assert_names_the_problem(message: &str) {
    assert!(
        message.contains("train") && message.contains("line 7") && message.contains("4 tokens"),
        "error should name split, line and the mismatch: {message}"
    );
}

#[test]
fn cli_run_fails_with_the_line_a_failed_row_and_no_best_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = broken_dataset(dir.path());
    let out = dir.path().join("run");
    let spec = json!({
        "model": {"checkpoint": fixture("tiny-roberta-base")},
        "dataset": {"path": data},
        "training": {"num_train_epochs": 1},
    });
    std::fs::write(dir.path().join("job.json"), spec.to_string()).unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_metafora"))
        .arg("train")
        .arg(dir.path().join("job.json"))
        .args(["--device", "cpu", "--output-dir"])
        .arg(&out)
        .env("METAFORA_LOG", "warn")
        .output()
        .unwrap();
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_names_the_problem(&stderr);

    let mut csv = csv_rows(&out.join("results.csv"));
    assert_eq!(csv.len(), 1);
    let row = csv.remove(0);
    assert_eq!(row["status"], "failed");
    assert_names_the_problem(&row["error"]);
    assert_eq!(
        row["finetuned_f1"], "",
        "no fine-tuned metrics for a failed run"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(!out.join("best_model").exists(), "no partial best model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_job_fails_with_the_line_and_no_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = broken_dataset(dir.path());
    let app = spawn_app_with(Options {
        allow: vec![fixture(""), dir.path().to_path_buf()],
        ..Default::default()
    })
    .await;
    let id = app
        .create_job(&json!({
            "model": {"checkpoint": fixture("tiny-roberta-base")},
            "dataset": {"path": data},
            "training": {"num_train_epochs": 1},
        }))
        .await;
    app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_names_the_problem(job["error"].as_str().unwrap());
    assert!(job["best_checkpoint"].is_null(), "{job}");
    let r = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/results.csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["status"], "failed");
    assert_names_the_problem(&rows[0]["error"]);
    // The model registry was not handed anything from the failed job.
    let (_, models) = app.get("/v1/models").await;
    assert!(!models.to_string().contains(&id), "{models}");
    app.shutdown().await;
}

fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    parse_csv(&std::fs::read_to_string(path).unwrap())
}

/// Rows as header -> cell maps (the `csv` crate's RFC 4180 reader).
fn parse_csv(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .map(|r| r.expect("a CSV row"))
        .collect()
}
