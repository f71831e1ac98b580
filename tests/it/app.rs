//! `spawn_app`: the real service on port 0 with a temp SQLite file and data dir, the tiny
//! fine-tuned fixture as the default /detect model, and a worker the test drives.

use std::path::PathBuf;
use std::time::Duration;

use metafora::config::{ServeArgs, Settings};
use metafora::jobs::worker::{Outcome, Worker};
use metafora::model::backend::DeviceSpec;
use metafora::server::{Running, start};
use serde_json::{Value, json};

use crate::common::fixture;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub running: Option<Running>,
    pub worker: Worker,
    pub dir: tempfile::TempDir,
}

pub struct Options {
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_queued_jobs: u32,
    pub allow: Vec<PathBuf>,
    pub detect_queue: usize,
    pub labelstudio_train_spec: Option<PathBuf>,
    pub hub: Option<metafora::hub::HubConfig>,
    /// Reuse this directory (database, data) instead of a fresh one.
    pub dir: Option<PathBuf>,
    /// (header read, request) timeouts in seconds.
    pub timeouts: (u64, u64),
    pub cors_origins: Vec<String>,
    /// `--artifacts` URL.
    pub artifacts: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: None,
            max_body_bytes: 1 << 20,
            max_queued_jobs: 100,
            allow: vec![fixture("")],
            detect_queue: 64,
            labelstudio_train_spec: None,
            hub: None,
            dir: None,
            timeouts: (10, 60),
            cors_origins: vec![],
            artifacts: None,
        }
    }
}

pub fn serve_args(dir: &std::path::Path, o: &Options) -> ServeArgs {
    ServeArgs {
        bind: "127.0.0.1:0".parse().unwrap(),
        database_url: crate::common::database_url(dir),
        data_dir: dir.join("data"),
        device: DeviceSpec::Cpu,
        api_key: o.api_key.clone(),
        allow_paths: o.allow.clone(),
        max_body_bytes: o.max_body_bytes,
        max_upload_bytes: 4 << 20,
        max_queued_jobs: o.max_queued_jobs,
        model: Some(fixture("tiny-roberta-finetuned")),
        detect_queue: o.detect_queue,
        batch_tokens: 4096,
        batch_wait_ms: 2,
        labelstudio_train_spec: o.labelstudio_train_spec.clone(),
        no_worker: true,
        header_read_timeout: o.timeouts.0,
        request_timeout: o.timeouts.1,
        cors_origins: o.cors_origins.clone(),
        artifacts: o.artifacts.clone(),
        ..Default::default()
    }
}

/// Validated settings for `args`, with the stand-in Hub when given.
pub fn settings(args: ServeArgs, hub: Option<metafora::hub::HubConfig>) -> Settings {
    let mut s =
        Settings::from_args(args, &metafora::config::assets_dir(None)).expect("valid settings");
    if let Some(h) = hub {
        s.hub = h;
    }
    s
}

pub async fn spawn_app_with(o: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let root = o.dir.clone().unwrap_or_else(|| dir.path().to_path_buf());
    let mut running = start(settings(serve_args(&root, &o), o.hub.clone()))
        .await
        .expect("server starts");
    let worker = running
        .worker
        .take()
        .expect("no_worker gives a worker to drive");
    let base = format!("http://{}", running.addr);
    TestApp {
        base,
        client: reqwest::Client::new(),
        running: Some(running),
        worker,
        dir,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// A small job on the tiny base model (160 training sentences).
pub fn tiny_job(epochs: usize) -> Value {
    json!({
        "model": {"checkpoint": fixture("tiny-roberta-base")},
        "dataset": {"path": fixture("data/synthetic-small")},
        "training": {"learning_rate": 5e-4, "num_train_epochs": epochs},
        "seed": 42
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/datasets` with a multipart form.
    pub async fn upload(&self, form: reqwest::multipart::Form) -> reqwest::Response {
        self.client
            .post(self.url("/v1/datasets"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn create_job(&self, spec: &Value) -> String {
        let (code, body) = self.post("/v1/jobs", spec).await;
        assert_eq!(code, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn run_next(&self) -> Outcome {
        self.worker.try_run_next().await.unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("shuts down in time")
                .unwrap();
        }
    }
}

/// Reads an SSE stream until it ends; returns (event, data) pairs.
pub async fn read_sse(resp: reqwest::Response) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let (mut ev, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    ev = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !ev.is_empty() {
                out.push((
                    ev,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
        }
    }
    out
}
