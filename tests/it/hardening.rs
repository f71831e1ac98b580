//! Regression tests for what a hostile network, a crash and a slow client found: one test per
//! finding, named after it. (Timing and memory figures under load are measured by
//! `scripts/hardening_probes.py` against the release binary.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use metafora::config::{Cli, Command, ServeArgs, Settings};
use metafora::jobs::spec::JobSpec;
use metafora::jobs::worker::{JobRun, MAX_CRASHES, Msg};
use metafora::metrics::{LabelScheme, Metrics};
use metafora::store;
use metafora::train::{EpochRecord, EvalSummary, Progress, TrainError};
use serde_json::{Value, json};

use crate::app::{Options, spawn_app, spawn_app_with, tiny_job};
use crate::common::fixture;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Sends raw bytes on a new connection and returns what comes back before the server closes
/// it (or `limit` passes), and how long that took.
fn raw(addr: &str, parts: &[&[u8]], gap: Duration, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    for p in parts {
        if s.write_all(p).is_err() {
            break;
        }
        std::thread::sleep(gap);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_do_not_grow_the_metrics() {
    let app = spawn_app_with(Options {
        api_key: Some("k".into()),
        ..Default::default()
    })
    .await;
    let metrics = || async {
        app.client
            .get(app.url("/metrics"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("X{i:059}").as_bytes()).unwrap();
        let r = app
            .client
            .request(method, app.url(&format!("/nope/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "unknown routes need the key too");
    }
    let after = metrics().await;
    let lines = |t: &str, pat: &str| t.lines().filter(|l| l.contains(pat)).count();
    // 300 invented methods and paths are one label set: (other, unmatched, 401).
    assert_eq!(
        lines(&after, "method=\"other\""),
        BUCKETS_PER_SERIES,
        "{after}"
    );
    assert!(after.contains(
        "metafora_http_request_duration_seconds_count{method=\"other\",route=\"unmatched\",status=\"401\"} 300"
    ));
    assert!(!after.contains("X0000"), "raw methods never become labels");
    assert!(!after.contains("/nope"), "raw paths never become labels");
    assert!(
        after.len() < before.len() + 4000,
        "metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    app.shutdown().await;
}

/// Lines of one histogram series: 12 buckets + `+Inf`, `_sum` and `_count`.
const BUCKETS_PER_SERIES: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_is_linear_in_text_length_and_health_answers_meanwhile() {
    let app = spawn_app().await;
    let time = |chars: usize| {
        let (client, url) = (app.client.clone(), app.url("/v1/detect"));
        async move {
            let body = json!({"text": "a\n".repeat(chars / 2)});
            let t = Instant::now();
            let r = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["windows"], chars / 2, "one sentence per line");
            t.elapsed().as_secs_f64()
        }
    };
    time(2_000).await; // warm up
    let small = time(25_000).await.min(time(25_000).await);
    let large = time(200_000).await.min(time(200_000).await);
    let ratio = large / small;
    eprintln!(
        "detect 25k chars {small:.3} s, 200k chars {large:.3} s: ratio {ratio:.1} (linear 8)"
    );
    // Linear is 8×; the quadratic post-processing this guards against was 64×.
    assert!(
        ratio < 20.0,
        "200k/25k characters took {ratio:.1}× (linear: 8×)"
    );

    // Two 200k-character detections in flight: /health still answers at once.
    let (a, b) = (tokio::spawn(time(200_000)), tokio::spawn(time(200_000)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut worst = Duration::ZERO;
    while !(a.is_finished() && b.is_finished()) {
        let t = Instant::now();
        assert_eq!(app.get("/health").await.0, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.await.unwrap();
    b.await.unwrap();
    eprintln!("/health during two 200k-character detections: worst {worst:?}");
    assert!(
        worst < Duration::from_millis(1000),
        "/health took {worst:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelstudio_predict_has_the_detect_limits() {
    let app = spawn_app().await;
    let tasks: Vec<Value> = (0..300).map(|_| json!({"data": {"text": "a"}})).collect();
    let (code, body) = app
        .post("/labelstudio/predict", &json!({"tasks": tasks}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["field"], "tasks", "{body}");
    let long = "a".repeat(metafora::infer::MAX_TEXT_CHARS + 1);
    let (code, body) = app
        .post(
            "/labelstudio/predict",
            &json!({"tasks": [{"data": {"text": "b"}}, {"data": {"text": long}}]}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["field"], "tasks[1]", "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_and_rebinding_requests_are_refused() {
    let app = spawn_app_with(Options {
        cors_origins: vec!["https://labels.example".into()],
        ..Default::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // No content type: a cross-site form could send it without a preflight.
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .body(json!({"preset": "demo"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // A page on another site.
    let r = app
        .client
        .post(app.url("/v1/detect"))
        .header("origin", "http://evil.example")
        .json(&json!({"text": "hola"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    // The same origin, and an origin the operator allowed.
    for origin in [app.base.clone(), "https://labels.example".into()] {
        let r = app
            .client
            .post(app.url("/v1/detect"))
            .header("origin", &origin)
            .json(&json!({"text": "hola"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{origin}");
    }
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/detect"))
        .header("origin", "https://labels.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://labels.example"
    );
    // DNS rebinding: the attacker's name resolving to 127.0.0.1.
    let addr2 = addr.clone();
    let (resp, _) = tokio::task::spawn_blocking(move || {
        raw(
            &addr2,
            &[b"GET /v1/jobs HTTP/1.1\r\nHost: evil.example:8080\r\nConnection: close\r\n\r\n"],
            Duration::ZERO,
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let (resp, _) = tokio::task::spawn_blocking(move || {
        raw(
            &addr,
            &[b"GET /v1/jobs HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n"],
            Duration::ZERO,
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    app.shutdown().await;
}

#[test]
fn a_public_bind_needs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let args = |key: Option<&str>, insecure: bool| ServeArgs {
        bind: "0.0.0.0:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        device: metafora::model::backend::DeviceSpec::Cpu,
        api_key: key.map(String::from),
        insecure_no_auth: insecure,
        ..Default::default()
    };
    let assets = metafora::config::assets_dir(None);
    let e = Settings::from_args(args(None, false), &assets).unwrap_err();
    assert!(e.to_string().contains("--api-key"), "{e}");
    assert!(
        Settings::from_args(args(Some(""), false), &assets).is_err(),
        "an empty key is no key"
    );
    assert!(Settings::from_args(args(Some("k"), false), &assets).is_ok());
    assert!(Settings::from_args(args(None, true), &assets).is_ok());
    // compose refuses to start without a key instead of defaulting to an empty one.
    let compose =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml"))
            .unwrap();
    assert!(
        compose.contains("METAFORA_API_KEY: ${METAFORA_API_KEY:?"),
        "compose must require METAFORA_API_KEY"
    );
}

#[test]
fn bad_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let assets = metafora::config::assets_dir(None);
    let e = Settings::from_args(
        ServeArgs {
            data_dir: dir.path().join("data"),
            allow_paths: vec![dir.path().join("missing")],
            ..Default::default()
        },
        &assets,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--allow-path"), "{e}");
    use clap::Parser;
    let e = Cli::try_parse_from(["metafora", "serve", "--max-queued-jobs", "0"]).unwrap_err();
    assert!(e.to_string().contains("max-queued-jobs"), "{e}");
    assert!(matches!(
        Cli::try_parse_from(["metafora", "serve", "--max-queued-jobs", "1"])
            .unwrap()
            .command,
        Command::Serve(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_extreme_split_ratios_get_an_answer() {
    let app = spawn_app().await;
    let lines = "{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n".repeat(3);
    for split in [
        json!([1e-9, 0.999999998, 1e-9]),
        json!([0.999999998, 1e-9, 1e-9]),
        json!([1e-9, 1e-9, 0.999999998]),
    ] {
        let (code, body) = app
            .post(
                "/v1/datasets",
                &json!({"format": "jsonl", "content": lines, "split": split}),
            )
            .await;
        assert_eq!(code, 201, "{split}: {body}");
        let sizes: Vec<u64> = body["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sentences"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }
    let (code, body) = app
        .post(
            "/v1/datasets",
            &json!({"format": "jsonl", "content": lines, "split": [0.5, 0.5, 0.0]}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"]["field"], "split");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("split split")
    );
    // Nothing half-received is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(app.dir.path().join("data/datasets"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".incoming"))
        .collect();
    assert!(leftovers.is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_and_symlinked_files_cannot_escape_the_allowed_paths() {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let a = allowed.path().canonicalize().unwrap();
    let o = outside.path().canonicalize().unwrap();
    // A model directory inside the allowed root whose weights link outside it.
    copy_dir(&fixture("tiny-roberta-base"), &o.join("model"));
    std::fs::create_dir_all(a.join("model")).unwrap();
    for e in std::fs::read_dir(o.join("model")).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), a.join("model").join(e.file_name())).unwrap();
    }
    copy_dir(&fixture("data/synthetic-small"), &o.join("data"));
    std::fs::create_dir_all(a.join("data")).unwrap();
    for e in std::fs::read_dir(o.join("data")).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), a.join("data").join(e.file_name())).unwrap();
    }
    copy_dir(&fixture("data/synthetic-small"), &a.join("real-data"));
    let app = spawn_app_with(Options {
        allow: vec![a.clone(), fixture("")],
        ..Default::default()
    })
    .await;
    let cases = [
        (
            json!({"model": {"checkpoint": "projecte-aina/roberta-base-ca-v2", "revision": o.join("model/config.json")}, "dataset": {"path": a.join("real-data")}}),
            "model.revision",
        ),
        (
            json!({"model": {"checkpoint": "projecte-aina/roberta-base-ca-v2", "revision": "main/../../x"}, "dataset": {"path": a.join("real-data")}}),
            "model.revision",
        ),
        (
            json!({"model": {"checkpoint": fixture("tiny-roberta-base")}, "dataset": {"hub_id": "a/b", "revision": "/etc/passwd"}}),
            "dataset.revision",
        ),
        (
            json!({"model": {"checkpoint": a.join("model")}, "dataset": {"path": a.join("real-data")}}),
            "model.checkpoint",
        ),
        (
            json!({"model": {"checkpoint": fixture("tiny-roberta-base")}, "dataset": {"path": a.join("data")}}),
            "dataset.path",
        ),
    ];
    for (spec, field) in cases {
        let (code, body) = app.post("/v1/jobs", &spec).await;
        assert_eq!(code, 422, "{spec}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (code, body) = app
        .post("/v1/models", &json!({"name": "x", "path": a.join("model")}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("links outside"),
        "{body}"
    );
    let (_, list) = app.get("/v1/jobs").await;
    assert!(list["jobs"].as_array().unwrap().is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_are_refused_alike_whether_they_exist_or_not() {
    let allowed = tempfile::tempdir().unwrap();
    let a = allowed.path().canonicalize().unwrap();
    let app = spawn_app_with(Options {
        allow: vec![a.clone(), fixture("")],
        ..Default::default()
    })
    .await;
    let message = |path: String| {
        let spec = json!({"model": {"checkpoint": fixture("tiny-roberta-base")}, "dataset": {"path": path}});
        let app = &app;
        async move {
            let (code, body) = app.post("/v1/jobs", &spec).await;
            assert_eq!(code, 422, "{body}");
            body["error"]["message"].as_str().unwrap().to_string()
        }
    };
    let exists = message("/etc".into()).await;
    let missing = message("/no/such/directory/anywhere".into()).await;
    assert!(exists.contains("not in an allowed directory"), "{exists}");
    assert_eq!(
        exists.replace("/etc", "P"),
        missing.replace("/no/such/directory/anywhere", "P"),
        "the same answer whether it exists or not"
    );
    let inside = message(a.join("nope").display().to_string()).await;
    assert!(inside.contains("does not exist"), "{inside}");
    assert!(!inside.contains("path path"), "{inside}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_do_not_use_up_the_crash_budget() {
    use metafora::store::workers::{self, Lessee};
    let dir = tempfile::tempdir().unwrap();
    let pool = store::connect(
        &crate::common::database_url(dir.path()),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    store::jobs::insert(&pool, "j", "{}", "/tmp/j", None, 10)
        .await
        .unwrap();
    let life = |n: usize| Lessee {
        id: format!("w-{n}"),
        name: "box".into(),
        device_kind: "cpu".into(),
    };
    for n in 0..7 {
        workers::register(&pool, &life(n), "cpu", "host", 1)
            .await
            .unwrap();
    }
    // Three SIGTERM restarts: claimed, then requeued gracefully.
    for n in 0..3 {
        assert!(
            workers::claim(&pool, &life(n), 60_000)
                .await
                .unwrap()
                .is_some()
        );
        assert!(store::jobs::requeue(&pool, "j", &life(n).id).await.unwrap());
    }
    // Two kill -9s: found running by the next process of the same name.
    for crashes in 1..MAX_CRASHES {
        let n = 2 + crashes as usize;
        assert!(
            workers::claim(&pool, &life(n), 60_000)
                .await
                .unwrap()
                .is_some()
        );
        // Another worker's sweep leaves a live lease alone.
        let (requeued, _) = workers::sweep(&pool, MAX_CRASHES, Some(("other", "x")))
            .await
            .unwrap();
        assert!(requeued.is_empty());
        let next = life(n + 1);
        let (requeued, gave_up) = workers::sweep(&pool, MAX_CRASHES, Some((&next.name, &next.id)))
            .await
            .unwrap();
        assert_eq!((requeued.len(), gave_up.len()), (1, 0));
        let row = store::jobs::get(&pool, "j").await.unwrap().unwrap();
        assert_eq!(row.status, metafora::jobs::JobStatus::Queued);
        assert_eq!(row.crashes, crashes);
    }
    // The third loss is the last: this time by lease expiry (a 1 ms lease), seen by anyone.
    assert!(workers::claim(&pool, &life(5), 1).await.unwrap().is_some());
    // The old owner can no longer finish, requeue or renew once it has been taken back.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (_, gave_up) = workers::sweep(&pool, MAX_CRASHES, None).await.unwrap();
    assert_eq!(gave_up, vec!["j".to_string()]);
    assert!(
        !workers::renew(&pool, "j", &life(5).id, 60_000)
            .await
            .unwrap()
    );
    assert!(!store::jobs::requeue(&pool, "j", &life(5).id).await.unwrap());
    let row = store::jobs::get(&pool, "j").await.unwrap().unwrap();
    assert_eq!(row.status, metafora::jobs::JobStatus::Interrupted);
    assert_eq!(row.attempts, 6);
    // Every lease is on record, none open, each ended the way it did.
    let leases = workers::leases(&pool, "j").await.unwrap();
    let outcomes: Vec<&str> = leases
        .iter()
        .map(|l| l.outcome.as_deref().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "requeued",
            "requeued",
            "requeued",
            "reclaimed",
            "reclaimed",
            "expired"
        ]
    );
    assert!(
        leases
            .windows(2)
            .all(|w| w[0].ended_ms.unwrap() <= w[1].acquired_ms)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_take_each_job_once_and_respect_device_kinds() {
    use metafora::store::workers::{self, Lessee};
    let dir = tempfile::tempdir().unwrap();
    let pool = store::connect(
        &crate::common::database_url(dir.path()),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    for i in 0..40 {
        let spec = if i % 4 == 0 {
            r#"{"device": "cuda"}"#
        } else {
            "{}"
        };
        store::jobs::insert(&pool, &format!("j{i:02}"), spec, "/tmp/j", None, 100)
            .await
            .unwrap();
    }
    // Eight CPU workers claim concurrently until the queue has nothing they can run.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let me = Lessee {
                id: format!("cpu-{w}"),
                name: format!("cpu-{w}"),
                device_kind: "cpu".into(),
            };
            let mut got = Vec::new();
            while let Some(row) = workers::claim(&pool, &me, 60_000).await.unwrap() {
                got.push(row.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..40)
        .filter(|i| i % 4 != 0)
        .map(|i| format!("j{i:02}"))
        .collect();
    assert_eq!(all, expected, "each CPU job exactly once, no CUDA job");
    let gpu = Lessee {
        id: "gpu-0".into(),
        name: "gpu-0".into(),
        device_kind: "cuda".into(),
    };
    let row = workers::claim(&pool, &gpu, 60_000).await.unwrap().unwrap();
    assert_eq!(row.id, "j00", "the oldest CUDA job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let app = spawn_app_with(Options {
        timeouts: (1, 2),
        ..Default::default()
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        slow.push(tokio::task::spawn_blocking(move || {
            if i % 2 == 0 {
                // Headers one byte every 300 ms.
                let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
                let parts: Vec<&[u8]> = head.chunks(1).collect();
                raw(&addr, &parts, Duration::from_millis(300), Duration::from_secs(10))
            } else {
                // Headers at once, then the body one byte every 300 ms.
                let mut parts: Vec<&[u8]> = vec![b"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"];
                parts.extend(b"{\"text\": \"hola hola hola hola hola!!\"}   ".chunks(1));
                raw(&addr, &parts, Duration::from_millis(300), Duration::from_secs(10))
            }
        }));
    }
    // Meanwhile the server answers others.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    assert_eq!(app.get("/health").await.0, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    for (i, h) in slow.into_iter().enumerate() {
        let (resp, took) = h.await.unwrap();
        assert!(
            took < Duration::from_secs(6),
            "connection {i} held {took:?}"
        );
        if i % 2 == 1 {
            assert!(resp.starts_with("HTTP/1.1 408"), "body {i}: {resp}");
            assert!(resp.contains("\"timeout\""), "{resp}");
        } else {
            assert!(
                !resp.contains("200 OK"),
                "headers {i} never completed: {resp}"
            );
        }
    }
    app.shutdown().await;
}

fn summary(f1_gold: &[Vec<usize>], pred: &[Vec<usize>]) -> EvalSummary {
    let scheme = LabelScheme::new(&["O".to_string(), "METAPHOR".to_string()]).unwrap();
    EvalSummary {
        loss: 0.5,
        metrics: Metrics::from_ids(&scheme, f1_gold, pred).unwrap(),
        seconds: 0.1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_evaluation_queued_behind_the_result_is_stored() {
    let app = spawn_app().await;
    let id = app.create_job(&tiny_job(1)).await;
    let spec = JobSpec::parse(tiny_job(1).to_string().as_bytes()).unwrap();
    let fine = summary(&[vec![0, 1]], &[vec![0, 1]]);
    let record = EpochRecord {
        epoch: 1,
        step: 20,
        train_loss: 0.7,
        eval_loss: 0.6,
        eval: fine.metrics.clone(),
        learning_rate: 1e-5,
        train_seconds: 1.0,
        eval_seconds: 0.1,
        train_samples_per_second: 100.0,
        checkpoint: "checkpoint-20".into(),
        train_eval: None,
    };
    // The ordering that lost results: everything, the result included, already queued when
    // the worker looks.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Msg::Progress(Progress::Epoch { record })).unwrap();
    tx.send(Msg::Progress(Progress::FinalEvaluated {
        summary: fine.clone(),
        sentence_counts: vec![],
    }))
    .unwrap();
    tx.send(Msg::Done(Err(TrainError::Cancelled))).unwrap();
    let mut run = JobRun::new(&id, &spec, Default::default());
    let result = app
        .worker
        .consume(&mut run, rx, &Default::default())
        .await
        .unwrap();
    assert!(matches!(result, Err(TrainError::Cancelled)));
    let (_, results) = app.get(&format!("/v1/jobs/{id}/results")).await;
    assert_eq!(results["finetuned"]["f1"], 1.0, "{results}");
    let (_, epochs) = app.get(&format!("/v1/jobs/{id}/epochs")).await;
    assert_eq!(epochs["epochs"].as_array().unwrap().len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_forward_pass_restarts_the_model() {
    let app = spawn_app().await;
    let (code, health) = app.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["device"], "cpu");
    assert_eq!(health["models"][0]["state"], "ok");
    let detector = app
        .running
        .as_ref()
        .unwrap()
        .shared
        .registry
        .get("default")
        .unwrap();
    detector.inject_panic();
    let t = Instant::now();
    let health = loop {
        let (_, h) = app.get("/health").await;
        if h["models"][0]["restarts"] == 1 {
            break h;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["models"][0]["state"], "degraded");
    assert!(
        health["models"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("panic"),
        "{health}"
    );
    // It answers again, without a redeploy.
    let (code, body) = app
        .post("/v1/detect", &json!({"text": "Té un cor de pedra."}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (_, health) = app.get("/health").await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["models"][0]["restarts"], 1);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("metafora_detect_executor_restarts{model=\"default\"} 1"),
        "{metrics}"
    );
    // /info: what a client needs to size its requests.
    let (code, info) = app.get("/info").await;
    assert_eq!(code, 200);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["models"][0]["name"], "default");
    assert!(info["models"][0]["max_input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(info["max_input_chars"], metafora::infer::MAX_TEXT_CHARS);
    assert_eq!(info["max_client_batch_size"], metafora::infer::MAX_TEXTS);
    assert_eq!(info["max_batch_tokens"], 4096);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_comes_before_404_and_405_and_says_how() {
    let app = spawn_app_with(Options {
        api_key: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    for (method, path) in [
        (reqwest::Method::DELETE, "/v1/detect"),
        (reqwest::Method::GET, "/no/such/route"),
        (reqwest::Method::PUT, "/v1/jobs"),
        (reqwest::Method::POST, "/health"),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"metafora\"");
    }
    let r = app
        .client
        .delete(app.url("/v1/detect"))
        .header("authorization", "bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405, "the scheme is case-insensitive");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_quoted_in_errors() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/v1/jobs/nope"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "trace-42");
    // A hostile id is replaced by a fresh one.
    let r = app
        .client
        .get(app.url("/v1/jobs/nope"))
        .header("x-request-id", "a".repeat(500))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], id.as_str());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_paths_stay_out_of_responses() {
    let app = spawn_app().await;
    let id = app.create_job(&tiny_job(1)).await;
    app.run_next().await;
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    let model_dir = job["best_checkpoint"]["model_dir"].as_str().unwrap();
    assert_eq!(model_dir, format!("jobs/{id}/best_model"));
    let data_dir = app.dir.path().canonicalize().unwrap().display().to_string();
    let (code, deployed) = app
        .post("/v1/models", &json!({"name": "mine", "job_id": id}))
        .await;
    assert_eq!(code, 201, "{deployed}");
    assert!(!deployed.to_string().contains(&data_dir), "{deployed}");
    // Deploying by the path the job reports (relative to the data dir) works too.
    let (code, deployed) = app
        .post("/v1/models", &json!({"name": "mine2", "path": model_dir}))
        .await;
    assert_eq!(code, 201, "{deployed}");
    let (_, models) = app.get("/v1/models").await;
    assert!(!models.to_string().contains(&data_dir), "{models}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_latest_checkpoint_falls_back_to_the_previous_one() {
    use metafora::jobs::resolve::{ResolveContext, run_config};
    use metafora::model::backend::Resolved;
    use metafora::train::{CancelToken, checkpoint};
    let out = tempfile::tempdir().unwrap();
    let spec = JobSpec::parse(tiny_job(2).to_string().as_bytes()).unwrap();
    let cfg = run_config(
        &spec,
        &ResolveContext::default(),
        out.path(),
        Resolved::Cpu,
        &mut |_| {},
    )
    .unwrap();
    let run = |resume: bool| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            metafora::train::run(&cfg, resume, &CancelToken::new(), &mut |_| {})
        })
    };
    run(false).await.unwrap().unwrap();
    let all = checkpoint::list(out.path());
    assert_eq!(all.len(), 2);
    let (first, latest) = (&all[0].1, &all[1].1);
    // A crash while the disk filled up: the latest weights are cut short.
    let weights = latest.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (dir, state) = checkpoint::latest(out.path()).unwrap().unwrap();
    assert_eq!(&dir, first);
    assert_eq!(state.epochs_done, 1);
    let outcome = run(true).await.unwrap().unwrap();
    assert_eq!(outcome.epochs.len(), 2, "epoch 2 trained again");
}
