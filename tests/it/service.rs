//! The job API end to end: create -> run -> results; SSE; cancel; error shapes.

use serde_json::{Value, json};

use crate::app::{Options, read_sse, spawn_app, spawn_app_with, tiny_job};
use crate::common::fixture;

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_to_success_with_epochs_results_and_csv() {
    let app = spawn_app().await;
    let id = app.create_job(&tiny_job(2)).await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "queued");
    let outcome = app.run_next().await;
    assert_eq!(
        outcome,
        metafora::jobs::worker::Outcome::Ran {
            id: id.clone(),
            status: metafora::jobs::JobStatus::Succeeded
        }
    );

    let (code, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["progress"]["epoch"], 2);
    assert_eq!(job["progress"]["step"], job["progress"]["steps"]);
    assert!(
        job["best_checkpoint"]["model_dir"]
            .as_str()
            .unwrap()
            .ends_with("best_model")
    );

    let (_, epochs) = app.get(&format!("/v1/jobs/{id}/epochs")).await;
    let epochs = epochs["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["epoch"], i + 1);
        assert_eq!(
            e["step"],
            (i + 1) * 20,
            "160 sentences / batch 8 = 20 steps per epoch"
        );
        assert!(e["train_loss"].as_f64().unwrap() > 0.0);
        assert!(e["eval"]["per_label"]["METAPHOR"]["f1"].is_number());
    }

    let (_, results) = app.get(&format!("/v1/jobs/{id}/results")).await;
    let (b, f) = (
        results["base"]["f1"].as_f64().unwrap(),
        results["finetuned"]["f1"].as_f64().unwrap(),
    );
    assert!((results["improvement_f1"].as_f64().unwrap() - (f - b)).abs() < 1e-12);
    assert!(
        results["finetuned"]["per_label"]["METAPHOR"]["support"]
            .as_u64()
            .unwrap()
            > 0
    );
    let dist = results["label_distribution"].as_array().unwrap();
    assert_eq!(dist.len(), 6, "3 splits x 2 labels: {dist:?}");

    let csv = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/results.csv")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], metafora::train::report::CSV_COLUMNS.join(","));
    assert_eq!(lines.len(), 2);
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(cells.len(), 15);
    assert_eq!(
        (cells[0], cells[1], cells[3]),
        ("success", "tiny-roberta-base", "42")
    );
    assert_eq!(cells[11].parse::<f64>().unwrap(), f);

    let all = app
        .client
        .get(app.url("/v1/results.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all.lines().count(), 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_receives_epochs_and_ends() {
    let app = spawn_app().await;
    let id = app.create_job(&tiny_job(2)).await;
    let resp = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let worker = app.worker.clone();
    let run = tokio::spawn(async move { worker.try_run_next().await.unwrap() });
    let events = tokio::time::timeout(std::time::Duration::from_secs(120), read_sse(resp))
        .await
        .expect("stream ends");
    run.await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "epoch").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"base_evaluated") && kinds.contains(&"final_evaluated"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"finished"));
    assert_eq!(events.last().unwrap().1["status"], "succeeded");
    // A late subscriber gets the whole history and the stream still ends.
    let resp = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let replay = read_sse(resp).await;
    assert_eq!(replay.len(), events.len());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_running_and_finished() {
    let app = spawn_app().await;
    // Queued: cancelled at once.
    let queued = app.create_job(&tiny_job(1)).await;
    let (code, body) = app
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    assert_eq!(
        app.run_next().await,
        metafora::jobs::worker::Outcome::Idle,
        "a cancelled job is not run"
    );
    // Finished: conflict.
    let (code, body) = app
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 409);
    assert_error(&body, "conflict");

    // Running: stops within a step.
    let running = app.create_job(&tiny_job(50)).await;
    let worker = app.worker.clone();
    let run = tokio::spawn(async move { worker.try_run_next().await.unwrap() });
    loop {
        let (_, j) = app.get(&format!("/v1/jobs/{running}")).await;
        if j["progress"]["stage"] == "training" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, _) = app
        .post(&format!("/v1/jobs/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 202);
    let t = std::time::Instant::now();
    let out = run.await.unwrap();
    assert!(t.elapsed().as_secs_f64() < 10.0, "stopped within a step");
    assert_eq!(
        out,
        metafora::jobs::worker::Outcome::Ran {
            id: running.clone(),
            status: metafora::jobs::JobStatus::Cancelled
        }
    );
    let (_, j) = app.get(&format!("/v1/jobs/{running}")).await;
    assert_eq!(j["status"], "cancelled");
    assert!(
        j["best_checkpoint"].is_null(),
        "no partial model presented as best"
    );
    // Delete removes artifacts; a second delete is 404.
    let dir = app.dir.path().join("data/jobs").join(&running);
    let code = app
        .client
        .delete(app.url(&format!("/v1/jobs/{running}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(code, 204);
    assert!(!dir.exists());
    let (code, body) = app.get(&format!("/v1/jobs/{running}")).await;
    assert_eq!(code, 404);
    assert_error(&body, "not_found");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_cases_are_json() {
    let app = spawn_app_with(Options {
        max_body_bytes: 4096,
        ..Default::default()
    })
    .await;
    let (code, body) = app
        .get("/v1/jobs/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(code, 404);
    assert_error(&body, "not_found");
    let (code, body) = app.get("/v1/jobs/not-a-uuid/epochs").await;
    assert_eq!(code, 404);
    assert_error(&body, "not_found");
    let (code, body) = app.get("/nope").await;
    assert_eq!(code, 404);
    assert_error(&body, "not_found");

    let mut bad = tiny_job(1);
    bad["training"]["learning_rate"] = json!(-1);
    let (code, body) = app.post("/v1/jobs", &bad).await;
    assert_eq!(code, 422);
    assert_eq!(body["error"]["field"], "training.learning_rate");
    assert_eq!(
        body["error"]["message"],
        "training.learning_rate must be > 0, got -1"
    );

    let mut bad = tiny_job(1);
    bad["dataset"]["path"] = json!("/etc");
    let (code, body) = app.post("/v1/jobs", &bad).await;
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (422, Some("dataset.path")),
        "{body}"
    );
    let mut bad = tiny_job(1);
    bad["model"]["checkpoint"] = json!(fixture("does-not-exist"));
    let (code, body) = app.post("/v1/jobs", &bad).await;
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (422, Some("model.checkpoint")),
        "{body}"
    );

    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_error(&r.json().await.unwrap(), "bad_request");

    let big = json!({"model": {"checkpoint": "x".repeat(10_000)}, "dataset": {"path": "d"}});
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_error(&r.json().await.unwrap(), "payload_too_large");

    let (code, body) = app.get("/v1/jobs?limit=0").await;
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (422, Some("limit"))
    );
    let (code, body) = app.get("/v1/jobs?status=done").await;
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (422, Some("status"))
    );
    let (code, body) = app
        .get("/v1/jobs/00000000-0000-0000-0000-000000000000/results.csv")
        .await;
    assert_eq!(code, 404, "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let app = spawn_app_with(Options {
        api_key: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(app.get("/health").await.0, 200);
    let (code, body) = app.get("/v1/jobs").await;
    assert_eq!(code, 401);
    assert_error(&body, "unauthorized");
    let r = app
        .client
        .get(app.url("/v1/jobs"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .client
        .get(app.url("/v1/jobs"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    app.shutdown().await;
}
