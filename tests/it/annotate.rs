//! /v1/detect over HTTP, Label Studio replay, hot swap, backpressure, dataset uploads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::app::{Options, spawn_app, spawn_app_with};
use crate::common::fixture;

const NER_CONFIG: &str = r#"<View>
  <Labels name="label" toName="text">
    <Label value="METAPHOR" background="red"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"#;

fn ls_task(id: u64, text: &str) -> Value {
    // A task as Label Studio 1.x sends it to /predict.
    json!({"id": id, "data": {"text": text}, "meta": {}, "created_at": "2026-11-26T10:00:00.000000Z",
        "updated_at": "2026-11-26T10:00:00.000000Z", "is_labeled": false, "overlap": 1, "inner_id": id,
        "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
        "unresolved_comment_count": 0, "last_comment_updated_at": null, "project": 3, "updated_by": null,
        "file_upload": null, "comment_authors": [], "annotations": [], "predictions": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_studio_setup_and_predict_replay() {
    let app = spawn_app().await;
    let (code, h) = app.get("/labelstudio/health").await;
    assert_eq!((code, h["status"].as_str()), (200, Some("UP")));
    let (code, setup) = app
        .post("/labelstudio/setup", &json!({"project": "3.1764151200", "schema": NER_CONFIG, "hostname": "http://localhost:8080",
            "access_token": "9f1c2e", "model_version": null, "extra_params": null}))
        .await;
    assert_eq!(code, 200, "{setup}");
    assert!(
        setup["model_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let texts = [
        "La por devora el seu cor cada nit.",
        "Al final , la veïna va apagar el foc entre els veïns .",
        "El picapedrer talla un cor de pedra !",
    ];
    let body = json!({"tasks": [ls_task(11, texts[0]), ls_task(12, texts[1]), ls_task(13, texts[2])],
        "project": "3.1764151200", "label_config": NER_CONFIG, "params": {"login": null, "password": null, "context": null}});
    let (code, out) = app.post("/labelstudio/predict", &body).await;
    assert_eq!(code, 200, "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "one prediction per task");
    // finetuned_pipeline.json: " seu cor" (17..24) in the first, nothing in the second, "ed" (8..10) in the third.
    let regions: Vec<Vec<(u64, u64, String)>> = results
        .iter()
        .map(|r| {
            assert_eq!(r["model_version"], setup["model_version"]);
            assert!(r["score"].is_number());
            r["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    assert_eq!(
                        (
                            x["from_name"].as_str(),
                            x["to_name"].as_str(),
                            x["type"].as_str()
                        ),
                        (Some("label"), Some("text"), Some("labels"))
                    );
                    assert_eq!(x["value"]["labels"], json!(["METAPHOR"]));
                    (
                        x["value"]["start"].as_u64().unwrap(),
                        x["value"]["end"].as_u64().unwrap(),
                        x["value"]["text"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(regions[0], vec![(17, 24, "seu cor".to_string())]);
    assert!(
        regions[1].is_empty(),
        "a task without metaphor still gets an (empty) prediction"
    );
    // Whole words, as transformers' pipeline with `first` (finetuned_pipeline_first.json), where
    // `simple` cut "ed" out of "picapedrer".
    assert!(regions[2].is_empty(), "{:?}", regions[2]);
    // Other webhook events are acknowledged; START_TRAINING without a configured spec is ignored.
    let (code, w) = app
        .post(
            "/labelstudio/webhook",
            &json!({"action": "PROJECT_UPDATED", "project": {"id": 3}}),
        )
        .await;
    assert_eq!((code, w["status"].as_str()), (200, Some("ignored")));
    let (code, w) = app
        .post(
            "/labelstudio/webhook",
            &json!({"action": "START_TRAINING", "project": {"id": 3}}),
        )
        .await;
    assert_eq!((code, w["status"].as_str()), (200, Some("ignored")), "{w}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_studio_start_training_queues_the_configured_job() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, crate::app::tiny_job(1).to_string()).unwrap();
    let app = spawn_app_with(Options {
        labelstudio_train_spec: Some(spec),
        ..Default::default()
    })
    .await;
    let (code, w) = app
        .post(
            "/labelstudio/webhook",
            &json!({"action": "START_TRAINING", "project": {"id": 3}}),
        )
        .await;
    assert_eq!(code, 201, "{w}");
    let (_, job) = app
        .get(&format!("/v1/jobs/{}", w["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(job["status"], "queued");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_over_http() {
    let app = spawn_app().await;
    let (code, one) = app
        .post(
            "/v1/detect",
            &json!({"text": "La por devora el seu cor cada nit."}),
        )
        .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["model"], "default");
    assert_eq!(one["entities"][0]["word"], "seu cor");
    let (_, many) = app.post("/v1/detect", &json!({"texts": ["La por devora el seu cor cada nit.", "Avui."], "aggregation_strategy": "none"})).await;
    assert_eq!(many["results"].as_array().unwrap().len(), 2);
    assert!(many["results"][0]["entities"][0]["index"].is_number());
    let (_, words) = app.post("/v1/detect", &json!({"tokens": ["El", "jove", "prefereix", "la", "reputació", "sòlida", "."], "aggregation_strategy": "first"})).await;
    assert_eq!(words["entities"][0]["start"], 5);
    let (code, e) = app
        .post("/v1/detect", &json!({"text": "a", "texts": ["b"]}))
        .await;
    assert_eq!((code, e["error"]["field"].as_str()), (422, Some("text")));
    let (code, e) = app
        .post("/v1/detect", &json!({"text": "a", "model": "nope"}))
        .await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, e) = app
        .post(
            "/v1/detect",
            &json!({"text": "a", "aggregation_strategy": "mean"}),
        )
        .await;
    assert_eq!(
        (code, e["error"]["field"].as_str()),
        (422, Some("aggregation_strategy"))
    );
    let (code, models) = app.get("/v1/models").await;
    assert_eq!(code, 200);
    assert_eq!(models["models"][0]["labels"], json!(["O", "METAPHOR"]));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_fails_no_request_and_switches_answers() {
    let app = spawn_app().await;
    let (code, a) = app
        .post(
            "/v1/models",
            &json!({"name": "swap", "path": fixture("tiny-roberta-finetuned")}),
        )
        .await;
    assert_eq!(code, 201, "{a}");
    let text = "La por devora el seu cor cada nit.";
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, ok, failed) = (
            app.client.clone(),
            app.url("/v1/detect"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .json(&json!({"text": text, "model": "swap"}))
                    .send()
                    .await
                    .unwrap();
                if r.status().is_success() {
                    ok.fetch_add(1, Ordering::Relaxed);
                    versions.push(
                        r.json::<Value>().await.unwrap()["model_version"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            versions
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, b) = app
        .post(
            "/v1/models",
            &json!({"name": "swap", "path": fixture("tiny-roberta")}),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request fails during the swap"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_ne!(a["version"], b["version"]);
    assert!(
        seen.contains(&a["version"].as_str().unwrap().to_string())
            && seen.contains(&b["version"].as_str().unwrap().to_string())
    );
    // After the swap, answers are model B's (tiny-roberta: "v", " cada", "." in pipeline.json).
    let (_, after) = app
        .post("/v1/detect", &json!({"text": text, "model": "swap"}))
        .await;
    assert_eq!(after["model_version"], b["version"]);
    let words: Vec<&str> = after["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["word"].as_str().unwrap())
        .collect();
    assert_eq!(words, vec!["v", "cada", "."]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_429_with_retry_after() {
    let app = spawn_app_with(Options {
        detect_queue: 1,
        ..Default::default()
    })
    .await;
    let long = "La por devora el seu cor cada nit. ".repeat(200);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url, body) = (
            app.client.clone(),
            app.url("/v1/detect"),
            json!({"text": long}),
        );
        tasks.push(tokio::spawn(async move {
            let r = client.post(&url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.iter().any(|(c, _)| *c == 200));
    let busy: Vec<_> = codes.iter().filter(|(c, _)| *c == 429).collect();
    assert!(!busy.is_empty(), "{codes:?}");
    assert!(busy.iter().all(|(_, r)| r.as_deref() == Some("1")));
    assert!(codes.iter().all(|(c, _)| *c == 200 || *c == 429));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_uploads_accept_jsonl_and_conll_and_name_bad_lines() {
    let app = spawn_app().await;
    let train = std::fs::read_to_string(fixture("data/synthetic-small/train.jsonl")).unwrap();
    // JSONL with label names, one file split 80/10/10.
    let named: String = train
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let tags: Vec<&str> = v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| if t == 1 { "METAPHOR" } else { "O" })
                .collect();
            format!("{}\n", json!({"tokens": v["tokens"], "tags": tags}))
        })
        .collect();
    let (code, ds) = app.post("/v1/datasets", &json!({"name": "small", "format": "jsonl", "content": named, "split": [0.8, 0.1, 0.1], "seed": 7})).await;
    assert_eq!(code, 201, "{ds}");
    assert_eq!(ds["labels"], json!(["O", "METAPHOR"]));
    assert_eq!(ds["stats"][0]["sentences"], 128);
    // CoNLL as multipart, three files.
    let conll: String = train
        .lines()
        .take(30)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let mut s = String::new();
            for (w, t) in v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .zip(v["tags"].as_array().unwrap())
            {
                s.push_str(&format!(
                    "{}\t{}\n",
                    w.as_str().unwrap(),
                    if t == 1 { "B-METAPHOR" } else { "O" }
                ));
            }
            s + "\n"
        })
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("name", "conll")
        .part(
            "train",
            reqwest::multipart::Part::text(conll.clone()).file_name("train.conll"),
        )
        .part(
            "validation",
            reqwest::multipart::Part::text(conll.clone()).file_name("validation.conll"),
        )
        .part(
            "test",
            reqwest::multipart::Part::text(conll.clone()).file_name("test.conll"),
        );
    let r = app.upload(form).await;
    assert_eq!(r.status().as_u16(), 201);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["format"], "conll");
    assert_eq!(c["labels"], json!(["O", "B-METAPHOR"]));

    // Five malformed uploads, each rejected with the file and line.
    let bad = [
        (
            json!({"format": "jsonl", "content": "{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n{\"tokens\":[\"a\",\"b\"],\"tags\":[\"O\"]}\n"}),
            "content",
            "line 2: 2 tokens but 1 tags",
        ),
        (
            json!({"format": "jsonl", "content": "{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\nnot json\n"}),
            "content",
            "line 3: invalid JSON",
        ),
        (
            json!({"format": "conll", "content": "El\tO\ncor\tB-M\n\nLa\n"}),
            "content",
            "line 4: expected \"word<TAB>label\"",
        ),
        (
            json!({"format": "jsonl", "content": "{\"tokens\":[\"a\"],\"tags\":[0]}\n{\"tokens\":[\"a\"],\"tags\":[5]}\n{\"tokens\":[\"a\"],\"tags\":[0]}\n", "labels": ["O", "METAPHOR"]}),
            "content",
            "line 2: tag id 5 is out of range",
        ),
        (
            json!({"format": "jsonl", "files": {"train": "{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n", "validation": "{\"tokens\":[\"\"],\"tags\":[\"O\"]}\n", "test": "{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n"}}),
            "validation",
            "line 1: token 0 is not a non-empty string",
        ),
    ];
    for (body, field, msg) in bad {
        let (code, e) = app.post("/v1/datasets", &body).await;
        assert_eq!(code, 422, "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(msg),
            "{e} should contain {msg}"
        );
    }
    let (_, list) = app.get("/v1/datasets").await;
    assert_eq!(list["datasets"].as_array().unwrap().len(), 2);

    // A job trains on the uploaded dataset.
    let spec = json!({"model": {"checkpoint": fixture("tiny-roberta-base")}, "dataset": {"id": ds["id"]}, "training": {"learning_rate": 5e-4, "num_train_epochs": 1}});
    let id = app.create_job(&spec).await;
    assert_eq!(
        app.run_next().await,
        metafora::jobs::worker::Outcome::Ran {
            id: id.clone(),
            status: metafora::jobs::JobStatus::Succeeded
        }
    );
    let (_, results) = app.get(&format!("/v1/jobs/{id}/results")).await;
    assert_eq!(results["label_distribution"][0]["sentences"], 128);
    app.shutdown().await;
}
