//! The Hub path end to end against a stand-in Hub served by the test: a model repo laid out
//! like projecte-aina/roberta-base-ca-v2 (pytorch_model.bin + vocab/merges only), a dataset
//! whose data lives on the `refs/convert/parquet` branch, push with a model card, then offline
//! runs from the cache.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::{Options, spawn_app_with};
use crate::common::fixture;

#[derive(Default)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct StandIn {
    base: Mutex<String>,
    /// (kind, repo id, revision) -> files.
    repos: Mutex<HashMap<(String, String, String), Repo>>,
    lfs: Mutex<HashMap<String, Vec<u8>>>,
    created: Mutex<Vec<Value>>,
    commits: Mutex<Vec<(String, Vec<Value>)>>,
    downloads: Mutex<Vec<String>>,
    /// Failures still to inject: "download" (a weights download cut mid-body), "commit"
    /// (503), "lfs" (500 on an LFS upload).
    flaky: Mutex<HashMap<&'static str, usize>>,
    /// `Range` headers of weights downloads.
    weight_ranges: Mutex<Vec<String>>,
    /// Requests answered, by endpoint ("commit", "lfs").
    calls: Mutex<HashMap<&'static str, usize>>,
}

impl StandIn {
    /// Whether to fail this `what` request (and counts it).
    fn fail(&self, what: &'static str) -> bool {
        *self.calls.lock().unwrap().entry(what).or_default() += 1;
        let mut f = self.flaky.lock().unwrap();
        match f.get_mut(what) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn add_dir(files: &mut BTreeMap<String, Vec<u8>>, dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = format!("{prefix}{}", p.file_name().unwrap().to_string_lossy());
        if p.is_dir() {
            add_dir(files, &p, &format!("{name}/"));
        } else {
            files.insert(name, std::fs::read(&p).unwrap());
        }
    }
}

impl StandIn {
    fn add(&self, kind: &str, id: &str, rev: &str, dir: &Path) {
        let mut files = BTreeMap::new();
        add_dir(&mut files, dir, "");
        let commit = sha256(format!("{kind}{id}{rev}").as_bytes())[..40].to_string();
        self.repos
            .lock()
            .unwrap()
            .insert((kind.into(), id.into(), rev.into()), Repo { commit, files });
    }
}

type S = State<Arc<StandIn>>;

async fn info(s: S, kind: &str, owner: String, name: String, rev: String) -> Response {
    let repos = s.repos.lock().unwrap();
    match repos.get(&(kind.to_string(), format!("{owner}/{name}"), rev)) {
        Some(r) => axum::Json(json!({"sha": r.commit, "siblings": r.files.keys().map(|f| json!({"rfilename": f})).collect::<Vec<_>>()})).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "Repository not found"}))).into_response(),
    }
}

async fn resolve(
    s: S,
    kind: &str,
    owner: String,
    name: String,
    rev: String,
    file: String,
    headers: HeaderMap,
) -> Response {
    let repos = s.repos.lock().unwrap();
    let Some(repo) = repos.get(&(kind.to_string(), format!("{owner}/{name}"), rev.clone())) else {
        return (StatusCode::NOT_FOUND, "repo").into_response();
    };
    let Some(bytes) = repo.files.get(&file) else {
        return (StatusCode::NOT_FOUND, "entry not found").into_response();
    };
    let total = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                total.saturating_sub(1)
            } else {
                b.parse::<usize>().unwrap().min(total.saturating_sub(1))
            };
            (a, b)
        });
    if range != Some((0, 0)) {
        s.downloads
            .lock()
            .unwrap()
            .push(format!("{kind}:{owner}/{name}@{rev}:{file}"));
    }
    if file.ends_with(".bin") || file.ends_with(".safetensors") {
        if let Some(r) = headers.get(header::RANGE).and_then(|r| r.to_str().ok()) {
            s.weight_ranges.lock().unwrap().push(r.to_string());
        }
        // A connection lost half way through a full download: the client must resume.
        if matches!(range, Some((0, b)) if b > 0) && s.fail("download") {
            let half = bytes[..total / 2].to_vec();
            let stream = futures::stream::iter(vec![
                Ok::<_, std::io::Error>(Bytes::from(half)),
                Err(std::io::Error::other("connection reset")),
            ]);
            let mut r = (
                StatusCode::PARTIAL_CONTENT,
                axum::body::Body::from_stream(stream),
            )
                .into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes 0-{}/{total}", total - 1).parse().unwrap(),
            );
            r.headers_mut().insert(header::CONTENT_LENGTH, total.into());
            r.headers_mut()
                .insert("x-repo-commit", repo.commit.parse().unwrap());
            r.headers_mut()
                .insert("etag", format!("\"{}\"", sha256(bytes)).parse().unwrap());
            return r;
        }
    }
    let etag = format!("\"{}\"", sha256(bytes));
    let common = [
        ("etag".to_string(), etag),
        ("x-repo-commit".to_string(), repo.commit.clone()),
    ];
    let mut resp = match range {
        Some((a, b)) if total > 0 => {
            let mut r = (StatusCode::PARTIAL_CONTENT, bytes[a..=b].to_vec()).into_response();
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{total}").parse().unwrap(),
            );
            r
        }
        _ => (StatusCode::OK, bytes.clone()).into_response(),
    };
    for (k, v) in common {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

async fn create(s: S, axum::Json(body): axum::Json<Value>) -> Response {
    let id = format!(
        "{}/{}",
        body["organization"].as_str().unwrap_or(""),
        body["name"].as_str().unwrap_or("")
    );
    let exists = s.repos.lock().unwrap().contains_key(&(
        "models".to_string(),
        id.clone(),
        "main".to_string(),
    ));
    s.created.lock().unwrap().push(body);
    if exists {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "You already created this model repo"})),
        )
            .into_response();
    }
    s.repos.lock().unwrap().insert(
        ("models".into(), id.clone(), "main".into()),
        Repo {
            commit: "0".repeat(40),
            files: BTreeMap::new(),
        },
    );
    axum::Json(json!({"url": format!("{}/{id}", s.base.lock().unwrap())})).into_response()
}

async fn preupload(axum::Json(body): axum::Json<Value>) -> Response {
    // Like the Hub: binary or large files go through LFS.
    let files: Vec<Value> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let sample = base64::engine::general_purpose::STANDARD.decode(f["sample"].as_str().unwrap()).unwrap();
            let binary = sample.contains(&0) || f["size"].as_u64().unwrap() > 10 << 20;
            json!({"path": f["path"], "uploadMode": if binary { "lfs" } else { "regular" }, "shouldIgnore": false})
        })
        .collect();
    axum::Json(json!({"files": files})).into_response()
}

async fn lfs_batch(s: S, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let base = s.base.lock().unwrap().clone();
    let objects: Vec<Value> = body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| json!({"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": format!("{base}/lfs-upload/{}", o["oid"].as_str().unwrap()), "header": {}}}}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/vnd.git-lfs+json")],
        axum::Json(json!({"transfer": "basic", "objects": objects})),
    )
        .into_response()
}

async fn lfs_upload(s: S, UrlPath(oid): UrlPath<String>, body: Bytes) -> StatusCode {
    if s.fail("lfs") {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    assert_eq!(sha256(&body), oid, "LFS object matches its oid");
    s.lfs.lock().unwrap().insert(oid, body.to_vec());
    StatusCode::OK
}

async fn commit(
    s: S,
    UrlPath((owner, name, _rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assert_eq!(headers["authorization"], "Bearer hf_test_token");
    if s.fail("commit") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy",
        )
            .into_response();
    }
    let ops: Vec<Value> = String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let id = format!("{owner}/{name}");
    {
        let mut repos = s.repos.lock().unwrap();
        let lfs = s.lfs.lock().unwrap();
        let repo = repos
            .get_mut(&("models".to_string(), id.clone(), "main".to_string()))
            .expect("repo created before commit");
        for op in &ops {
            let v = &op["value"];
            match op["key"].as_str().unwrap() {
                "file" => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v["content"].as_str().unwrap())
                        .unwrap();
                    repo.files
                        .insert(v["path"].as_str().unwrap().to_string(), bytes);
                }
                "lfsFile" => {
                    let bytes = lfs
                        .get(v["oid"].as_str().unwrap())
                        .expect("LFS object uploaded before commit")
                        .clone();
                    repo.files
                        .insert(v["path"].as_str().unwrap().to_string(), bytes);
                }
                _ => {}
            }
        }
        repo.commit = "1".repeat(40);
    }
    s.commits.lock().unwrap().push((id.clone(), ops));
    axum::Json(json!({"commitUrl": format!("https://hub.test/{id}/commit/1111"), "commitOid": "1".repeat(40)})).into_response()
}

async fn spawn_hub() -> (Arc<StandIn>, String) {
    let hub = Arc::new(StandIn::default());
    hub.add(
        "models",
        "projecte-aina/tiny-ca",
        "main",
        &fixture("hub/model"),
    );
    // A DeBERTa-v3 base checkpoint as the Hub has mdeberta-v3-base: spm.model, no tokenizer.json.
    hub.add(
        "models",
        "microsoft/tiny-mdeberta",
        "main",
        &fixture("tiny-deberta-v2-mlm"),
    );
    hub.add(
        "datasets",
        "someone/metaphor-small",
        "main",
        &fixture("hub/dataset-main"),
    );
    hub.add(
        "datasets",
        "someone/metaphor-small",
        "refs/convert/parquet",
        &fixture("hub/dataset-parquet"),
    );
    let app = Router::new()
        .route(
            "/api/models/{owner}/{name}/revision/{rev}",
            get(
                |s: S, UrlPath((o, n, r)): UrlPath<(String, String, String)>| async move {
                    info(s, "models", o, n, r).await
                },
            ),
        )
        .route(
            "/api/datasets/{owner}/{name}/revision/{rev}",
            get(
                |s: S, UrlPath((o, n, r)): UrlPath<(String, String, String)>| async move {
                    info(s, "datasets", o, n, r).await
                },
            ),
        )
        .route(
            "/{owner}/{name}/resolve/{rev}/{*file}",
            get(
                |s: S,
                 UrlPath((o, n, r, f)): UrlPath<(String, String, String, String)>,
                 h: HeaderMap| async move { resolve(s, "models", o, n, r, f, h).await },
            ),
        )
        .route(
            "/datasets/{owner}/{name}/resolve/{rev}/{*file}",
            get(
                |s: S,
                 UrlPath((o, n, r, f)): UrlPath<(String, String, String, String)>,
                 h: HeaderMap| async move {
                    resolve(s, "datasets", o, n, r, f, h).await
                },
            ),
        )
        .route("/api/repos/create", post(create))
        .route(
            "/api/models/{owner}/{name}/preupload/{rev}",
            post(|axum::Json(b): axum::Json<Value>| async move { preupload(axum::Json(b)).await }),
        )
        .route(
            "/{owner}/{repo}/info/lfs/objects/batch",
            post(|s: S, body: Bytes| async move { lfs_batch(s, body).await }),
        )
        .route("/lfs-upload/{oid}", put(lfs_upload))
        .route("/api/models/{owner}/{name}/commit/{rev}", post(commit))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *hub.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hub, base)
}

fn hub_job() -> Value {
    json!({
        "model": {"checkpoint": "projecte-aina/tiny-ca"},
        "dataset": {"hub_id": "someone/metaphor-small"},
        "training": {"learning_rate": 5e-4, "num_train_epochs": 1},
        "hub": {"push": true, "repo_id": "me/tiny-metaphor", "private": true},
        "seed": 42
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_by_hub_ids_downloads_trains_pushes_then_runs_offline() {
    let (hub, endpoint) = spawn_hub().await;
    let cache_root = tempfile::tempdir().unwrap();
    // METAFORA_TEST_HF_CACHE keeps the cache for scripts/check_hf_cache.py.
    let cache = std::env::var("METAFORA_TEST_HF_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| cache_root.path().join("hub"));
    let config = |offline: bool| metafora::hub::HubConfig {
        endpoint: endpoint.clone(),
        token: Some("hf_test_token".into()),
        cache_dir: cache.clone(),
        offline,
    };

    let app = spawn_app_with(Options {
        hub: Some(config(false)),
        ..Default::default()
    })
    .await;
    let (_, job) = run_to_success(&app, &hub_job()).await;
    assert_eq!(job["push"]["status"], "pushed", "{job}");
    assert_eq!(
        job["push"]["url"],
        "https://hub.test/me/tiny-metaphor/commit/1111"
    );

    // Only the files a run needs: config, tokenizer files, one weights format; the dataset's
    // parquet files from the convert branch and its card from main.
    let mut downloads = hub.downloads.lock().unwrap().clone();
    downloads.sort();
    assert_eq!(
        downloads,
        vec![
            "datasets:someone/metaphor-small@main:README.md",
            "datasets:someone/metaphor-small@refs/convert/parquet:default/test/0000.parquet",
            "datasets:someone/metaphor-small@refs/convert/parquet:default/train/0000.parquet",
            "datasets:someone/metaphor-small@refs/convert/parquet:default/validation/0000.parquet",
            "models:projecte-aina/tiny-ca@main:config.json",
            "models:projecte-aina/tiny-ca@main:merges.txt",
            "models:projecte-aina/tiny-ca@main:pytorch_model.bin",
            "models:projecte-aina/tiny-ca@main:special_tokens_map.json",
            "models:projecte-aina/tiny-ca@main:tokenizer_config.json",
            "models:projecte-aina/tiny-ca@main:vocab.json",
        ]
    );
    // The push: repo created private, the HF directory and the card committed.
    let created = hub.created.lock().unwrap().clone();
    assert_eq!(created[0]["private"], true);
    {
        let repos = hub.repos.lock().unwrap();
        let pushed = &repos[&(
            "models".to_string(),
            "me/tiny-metaphor".to_string(),
            "main".to_string(),
        )];
        let names: Vec<&str> = pushed.files.keys().map(|s| s.as_str()).collect();
        for f in [
            "README.md",
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
        ] {
            assert!(names.contains(&f), "{f} pushed: {names:?}");
        }
        let config_json: Value = serde_json::from_slice(&pushed.files["config.json"]).unwrap();
        assert_eq!(
            config_json["architectures"],
            json!(["RobertaForTokenClassification"])
        );
        assert_eq!(
            config_json["id2label"],
            json!({"0": "O", "1": "METAPHOR"}),
            "labels from the card's ClassLabel"
        );
        let card = String::from_utf8(pushed.files["README.md"].clone()).unwrap();
        for needle in [
            "base_model: projecte-aina/tiny-ca",
            "Dataset: `someone/metaphor-small`",
            "Seed: 42",
            "| base (fresh head) |",
            "| fine-tuned |",
            "| METAPHOR |",
            "## Label distribution",
            "\"learning_rate\": 0.0005",
            "metafora 0.1.0",
        ] {
            assert!(card.contains(needle), "card has {needle:?}:\n{card}");
        }
        let commit_ops = hub.commits.lock().unwrap()[0].1.clone();
        assert!(
            commit_ops
                .iter()
                .any(|o| o["key"] == "lfsFile" && o["value"]["path"] == "model.safetensors"),
            "weights go through LFS"
        );
    }
    app.shutdown().await;

    // Offline: the same job runs from the cache without a single request.
    let before = hub.downloads.lock().unwrap().len();
    let mut spec = hub_job();
    spec["hub"] = json!({"push": false});
    let app = spawn_app_with(Options {
        hub: Some(config(true)),
        ..Default::default()
    })
    .await;
    let _ = run_to_success(&app, &spec).await;
    assert_eq!(
        hub.downloads.lock().unwrap().len(),
        before,
        "offline: nothing downloaded"
    );

    // Offline and not cached: a clear error naming what is missing.
    spec["model"]["checkpoint"] = json!("projecte-aina/roberta-large-ca-v2");
    let id = app.create_job(&spec).await;
    app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "failed");
    let err = job["error"].as_str().unwrap();
    assert!(
        err.contains("HF_HUB_OFFLINE")
            && err.contains("projecte-aina/roberta-large-ca-v2")
            && err.contains("config.json"),
        "{err}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deberta_by_hub_id_fetches_its_sentencepiece_model_and_runs_offline_after() {
    let (hub, endpoint) = spawn_hub().await;
    let cache = tempfile::tempdir().unwrap();
    let config = |offline: bool| metafora::hub::HubConfig {
        endpoint: endpoint.clone(),
        token: None,
        cache_dir: cache.path().join("hub"),
        offline,
    };
    let spec = json!({
        "model": {"checkpoint": "microsoft/tiny-mdeberta"},
        "dataset": {"path": fixture("data/synthetic").to_str().unwrap()},
        "training": {"learning_rate": 5e-4, "num_train_epochs": 1},
        "seed": 42
    });
    for offline in [false, true] {
        let app = spawn_app_with(Options {
            hub: Some(config(offline)),
            ..Default::default()
        })
        .await;
        let (id, _) = run_to_success(&app, &spec).await;
        let (_, results) = app.get(&format!("/v1/jobs/{id}/results")).await;
        assert!(
            results["finetuned"]["f1"].as_f64().unwrap() > 0.0,
            "{results}"
        );
        app.shutdown().await;
    }
    let mut downloads = hub.downloads.lock().unwrap().clone();
    downloads.sort();
    assert_eq!(
        downloads,
        vec![
            "models:microsoft/tiny-mdeberta@main:config.json",
            "models:microsoft/tiny-mdeberta@main:model.safetensors",
            "models:microsoft/tiny-mdeberta@main:spm.model",
            "models:microsoft/tiny-mdeberta@main:tokenizer_config.json",
        ],
        "once, online; nothing offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_push_is_recorded_and_retried() {
    let (hub, endpoint) = spawn_hub().await;
    let cache = tempfile::tempdir().unwrap();
    // No token: the push fails, the job still succeeds.
    let cfg = metafora::hub::HubConfig {
        endpoint: endpoint.clone(),
        token: None,
        cache_dir: cache.path().join("hub"),
        offline: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(Options {
        hub: Some(cfg.clone()),
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let id = app.create_job(&hub_job()).await;
    app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["push"]["status"], "failed");
    assert!(
        job["push"]["error"].as_str().unwrap().contains("HF_TOKEN"),
        "{job}"
    );
    app.shutdown().await;
    // Same database and artifacts, now with a token: POST /push succeeds.
    let app = spawn_app_with(Options {
        hub: Some(metafora::hub::HubConfig {
            token: Some("hf_test_token".into()),
            ..cfg
        }),
        dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let (code, _) = app.post(&format!("/v1/jobs/{id}/push"), &json!({})).await;
    assert_eq!(code, 202);
    let mut status = Value::Null;
    for _ in 0..100 {
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        status = job["push"]["status"].clone();
        if status == "pushed" || status == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "pushed");
    assert!(hub.repos.lock().unwrap().contains_key(&(
        "models".to_string(),
        "me/tiny-metaphor".to_string(),
        "main".to_string()
    )));
    app.shutdown().await;
}

/// Queues `spec`, runs it, and asserts it succeeded; returns the id and the job.
async fn run_to_success(app: &crate::app::TestApp, spec: &Value) -> (String, Value) {
    let id = app.create_job(spec).await;
    let outcome = app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        outcome,
        metafora::jobs::worker::Outcome::Ran {
            id: id.clone(),
            status: metafora::jobs::JobStatus::Succeeded
        },
        "{job}"
    );
    (id, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resume_and_pushes_retry_on_a_flaky_hub() {
    let (hub, endpoint) = spawn_hub().await;
    hub.flaky
        .lock()
        .unwrap()
        .extend([("download", 1), ("commit", 1), ("lfs", 1)]);
    let cache = tempfile::tempdir().unwrap();
    let app = spawn_app_with(Options {
        hub: Some(metafora::hub::HubConfig {
            endpoint,
            token: Some("hf_test_token".into()),
            cache_dir: cache.path().join("hub"),
            offline: false,
        }),
        ..Default::default()
    })
    .await;
    let (_, job) = run_to_success(&app, &hub_job()).await;
    assert_eq!(job["push"]["status"], "pushed", "{job}");
    // The weights download was cut half way and resumed from where it stopped.
    let ranges = hub.weight_ranges.lock().unwrap().clone();
    let total = std::fs::metadata(fixture("hub/model/pytorch_model.bin"))
        .unwrap()
        .len();
    assert!(
        ranges.contains(&format!("bytes={}-", total / 2)),
        "resumed at byte {}: {ranges:?}",
        total / 2
    );
    // The LFS upload and the commit failed once each and were sent again.
    let calls = hub.calls.lock().unwrap().clone();
    assert_eq!(calls["lfs"], 2, "{calls:?}");
    assert_eq!(calls["commit"], 2, "{calls:?}");
    assert_eq!(hub.commits.lock().unwrap().len(), 1);
    app.shutdown().await;
}
