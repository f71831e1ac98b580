//! Crash recovery with the real binary: a 10-epoch job, `kill -9` mid-epoch, restart; the job
//! finishes with every epoch exactly once and the metrics of an uninterrupted run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::tiny_job;
use crate::common::fixture;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process, killed when dropped (also when an assertion fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_metafora"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--device",
            "cpu",
        ])
        .arg("--database-url")
        .arg(crate::common::database_url(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--allow-path")
        .arg(fixture(""))
        .arg("--model")
        .arg(fixture("tiny-roberta-finetuned"))
        .env("METAFORA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts the binary");
    Server(child)
}

async fn wait_health(client: &reqwest::Client, base: &str) {
    let t = Instant::now();
    while !client
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_epoch_then_resume_gives_the_uninterrupted_result() {
    let spec_json = tiny_job(10);
    // Reference: the same spec, uninterrupted, run by `metafora train` in its own process
    // (burn's RNG is process-global: an in-process run would share it with the other tests).
    let ref_dir = tempfile::tempdir().unwrap();
    let spec_path = ref_dir.path().join("job.json");
    std::fs::write(&spec_path, spec_json.to_string()).unwrap();
    let out = tokio::task::spawn_blocking({
        let ref_dir = ref_dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_metafora"))
                .arg("train")
                .arg(ref_dir.join("job.json"))
                .args(["--device", "cpu", "--output-dir"])
                .arg(ref_dir.join("out"))
                .env("METAFORA_LOG", "warn")
                .output()
                .expect("runs metafora train")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(ref_dir.path().join("out/report.json")).unwrap())
            .unwrap();
    let reference = &report["outcome"];

    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_health(&client, &base).await;
    let created: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&spec_json)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    // Wait until three epochs are stored, then a little into the fourth.
    let t = Instant::now();
    loop {
        let e = get(&client, format!("{base}/v1/jobs/{id}/epochs")).await;
        if e["epochs"].as_array().unwrap().len() >= 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "server is down"
    );

    let port2 = free_port();
    let base2 = format!("http://127.0.0.1:{port2}");
    let child = serve(dir.path(), port2);
    wait_health(&client, &base2).await;
    let t = Instant::now();
    let job = loop {
        let j = get(&client, format!("{base2}/v1/jobs/{id}")).await;
        if j["status"] == "succeeded" || j["status"] == "failed" {
            break j;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "job did not finish: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "resumed once");
    let epochs = get(&client, format!("{base2}/v1/jobs/{id}/epochs")).await;
    let epochs = epochs["epochs"].as_array().unwrap();
    let numbers: Vec<u64> = epochs
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=10).collect::<Vec<_>>(),
        "no duplicated or missing epoch"
    );
    // Bit-identical: same seed, same backend, per-step RNG seeding.
    let ref_epochs = reference["epochs"].as_array().unwrap();
    assert_eq!(ref_epochs.len(), 10);
    for (e, r) in epochs.iter().zip(ref_epochs) {
        for k in ["precision", "recall", "f1", "accuracy"] {
            assert_eq!(
                e["eval"][k].as_f64().unwrap(),
                r["eval"][k].as_f64().unwrap(),
                "epoch {} validation {k}",
                r["epoch"]
            );
        }
        for k in ["train_loss", "eval_loss"] {
            assert_eq!(
                e[k].as_f64().unwrap(),
                r[k].as_f64().unwrap(),
                "epoch {} {k}",
                r["epoch"]
            );
        }
    }
    let results = get(&client, format!("{base2}/v1/jobs/{id}/results")).await;
    for k in ["precision", "recall", "f1", "accuracy"] {
        let want = reference["finetuned_test"][k].as_f64().unwrap();
        assert_eq!(results["finetuned"][k].as_f64().unwrap(), want, "test {k}");
    }
    assert_eq!(
        results["base"]["f1"].as_f64().unwrap(),
        reference["base_test"]["f1"].as_f64().unwrap()
    );
    assert_eq!(
        results["best_epoch"].as_u64().unwrap(),
        reference["best_epoch"].as_u64().unwrap()
    );
    // The history reads as one run that resumed: prepared and the base evaluation once,
    // then one `resumed`.
    let events = crate::app::read_sse(
        client
            .get(format!("{base2}/v1/jobs/{id}/events"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let count = |kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("prepared"), 1, "{events:?}");
    assert_eq!(count("base_evaluated"), 1, "{events:?}");
    assert_eq!(count("resumed"), 1, "{events:?}");
    // It names the checkpoint it resumed from (none when the kill came before the first),
    // not a server path.
    let resumed = &events.iter().find(|(k, _)| k == "resumed").unwrap().1;
    match resumed["resumed_from"].as_str() {
        Some(from) => assert!(
            from.starts_with("checkpoint-") && !from.contains('/'),
            "{resumed}"
        ),
        None => assert!(resumed["resumed_from"].is_null(), "{resumed}"),
    }
    assert_eq!(count("epoch"), 10, "{events:?}");
    assert_eq!(count("finished"), 1, "{events:?}");
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_study_then_restart_runs_every_trial_once_with_the_uninterrupted_summary() {
    let spec = serde_json::json!({
        "models": [{"checkpoint": fixture("tiny-roberta-base")}],
        "dataset": {"path": fixture("data/synthetic-small")},
        "training": {"num_train_epochs": 6},
        "search": {"grid": {"learning_rate": [5e-4, 2e-4]}},
        "seeds": [42]
    });
    // Reference: `metafora study`, uninterrupted, in its own process.
    let ref_dir = tempfile::tempdir().unwrap();
    std::fs::write(ref_dir.path().join("study.json"), spec.to_string()).unwrap();
    let out = tokio::task::spawn_blocking({
        let d = ref_dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_metafora"))
                .arg("study")
                .arg(d.join("study.json"))
                .args(["--device", "cpu", "--output-dir"])
                .arg(d.join("out"))
                .env("METAFORA_LOG", "warn")
                .output()
                .expect("runs metafora study")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "reference study failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value =
        serde_json::from_slice(&std::fs::read(ref_dir.path().join("out/study.json")).unwrap())
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_health(&client, &base).await;
    let created: Value = client
        .post(format!("{base}/v1/studies"))
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let second = created["trial_jobs"][1]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill while the second trial is in its third epoch.
    let t = Instant::now();
    loop {
        let e = get(&client, format!("{base}/v1/jobs/{second}/epochs")).await;
        if e["epochs"].as_array().is_some_and(|e| e.len() >= 2) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let port2 = free_port();
    let base2 = format!("http://127.0.0.1:{port2}");
    let child = serve(dir.path(), port2);
    wait_health(&client, &base2).await;
    let t = Instant::now();
    let study = loop {
        let s = get(&client, format!("{base2}/v1/studies/{id}")).await;
        if s["status"] == "succeeded" || s["status"] == "failed" {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "study did not end: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(study["status"], "succeeded", "{study}");
    let jobs = get(&client, format!("{base2}/v1/jobs?study_id={id}")).await;
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "no duplicated trial");
    let attempts: i64 = jobs.iter().map(|j| j["attempts"].as_i64().unwrap()).sum();
    assert_eq!(attempts, 3, "one trial resumed once");
    for j in jobs {
        let e = get(
            &client,
            format!("{base2}/v1/jobs/{}/epochs", j["id"].as_str().unwrap()),
        )
        .await;
        let numbers: Vec<u64> = e["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["epoch"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (1..=6).collect::<Vec<_>>(), "every epoch once");
    }
    // Bit-identical summary and choice.
    for (got, want) in study["summary"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["summary"].as_array().unwrap())
    {
        for k in [
            "model",
            "params",
            "n",
            "val_f1_mean",
            "test_f1_mean",
            "test_precision_mean",
            "test_recall_mean",
            "per_label",
        ] {
            assert_eq!(got[k], want[k], "{k}: {got} vs {want}");
        }
    }
    assert_eq!(study["best"]["params"], reference["best"]["params"]);
    assert_eq!(study["comparison"]["diff"], reference["comparison"]["diff"]);
    let events = crate::app::read_sse(
        client
            .get(format!("{base2}/v1/studies/{id}/events"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let count = |kind: &str| events.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("trial_started"), 3, "{events:?}");
    assert_eq!(count("trial_finished"), 2, "{events:?}");
    assert_eq!(count("finished"), 1, "{events:?}");
    drop(child);
}
