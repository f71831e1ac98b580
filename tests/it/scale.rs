//! Scale-out pieces that need no second machine: the artifact store on `file://` (always) and
//! on `s3://` (with `METAFORA_TEST_S3_URL`, which CI points at a moto server), and a job whose
//! files another "machine" (a second data dir) fetches and resumes from.

use std::path::Path;

use metafora::store::artifacts::Artifacts;

/// `file://` in a temp dir, plus `s3://` when the environment names a server.
fn stores(dir: &Path) -> Vec<Artifacts> {
    let mut out =
        vec![Artifacts::open(&format!("file://{}", dir.join("store").display())).unwrap()];
    if let Ok(url) = std::env::var("METAFORA_TEST_S3_URL") {
        let prefix = format!("{url}/{}", uuid::Uuid::new_v4().simple());
        out.push(Artifacts::open(&prefix).unwrap());
    }
    out
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_mirror_a_job_dir_both_ways_streaming_large_files() {
    let tmp = tempfile::tempdir().unwrap();
    for store in stores(tmp.path()) {
        let a = tmp
            .path()
            .join(format!("a-{}", uuid::Uuid::new_v4().simple()));
        // A checkpoint with a weight file over the single-request limit (8 MiB): it goes up
        // in parts.
        let big: Vec<u8> = (0..(9 << 20) + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        write(&a.join("checkpoint-10/model.safetensors"), &big);
        write(
            &a.join("checkpoint-10/trainer_state.json"),
            b"{\"step\": 10}",
        );
        write(&a.join("report.json"), b"{}");
        let moved = store
            .push_dir(&a, "jobs/j1", &["report.json"])
            .await
            .unwrap();
        assert_eq!((moved.files, moved.deleted), (3, 0), "{}", store.url);
        // Unchanged files stay; a rewritten report goes again.
        let again = store
            .push_dir(&a, "jobs/j1", &["report.json"])
            .await
            .unwrap();
        assert_eq!(again.files, 1);
        // Rotation: checkpoint-10 replaced by checkpoint-20; the mirror follows.
        std::fs::remove_dir_all(a.join("checkpoint-10")).unwrap();
        write(&a.join("checkpoint-20/model.safetensors"), &big[..1000]);
        write(
            &a.join("checkpoint-20/trainer_state.json"),
            b"{\"step\": 20}",
        );
        let rotated = store.push_dir(&a, "jobs/j1", &[]).await.unwrap();
        assert_eq!((rotated.files, rotated.deleted), (2, 2));
        // Another machine fetches it into its own data dir, byte for byte.
        let b = tmp
            .path()
            .join(format!("b-{}", uuid::Uuid::new_v4().simple()));
        let pulled = store.pull_dir("jobs/j1", &b).await.unwrap();
        assert_eq!(pulled.files, 3);
        for f in [
            "checkpoint-20/model.safetensors",
            "checkpoint-20/trainer_state.json",
            "report.json",
        ] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f}"
            );
        }
        assert!(!b.join("checkpoint-10").exists());
        // A big file round trip.
        store
            .put_file(&a.join("checkpoint-20/model.safetensors"), "x/big")
            .await
            .unwrap();
        write(&a.join("big"), &big);
        store.put_file(&a.join("big"), "x/big").await.unwrap();
        let n = store.get_file("x/big", &b.join("big")).await.unwrap();
        assert_eq!(n as usize, big.len());
        assert_eq!(std::fs::read(b.join("big")).unwrap(), big);
        // Nothing left behind but the files (no temporary parts).
        let left: Vec<_> = std::fs::read_dir(&b)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }
}

#[test]
fn artifact_urls_are_checked() {
    for bad in ["file://relative/path", "ftp://x/y", "s3://", "/abs/path"] {
        let e = Artifacts::open(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(
            e.to_string()
                .contains("must be file:///absolute/path or s3://bucket"),
            "{e}"
        );
    }
}

#[test]
fn a_database_down_at_start_is_retried_with_backoff_then_a_clear_error() {
    // Nothing listens on port 1: every attempt fails at once.
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_metafora"))
        .args(["worker", "--device", "cpu", "--database-wait", "4"])
        .args(["--database-url", "postgres://metafora@127.0.0.1:1/metafora"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("METAFORA_LOG", "warn")
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stderr.contains("opening postgres://"), "{stderr}");
    // Attempts after 1 s and 2 s (the next, 4 s, would pass the 4 s budget).
    let retries = stdout.matches("database not reachable; retrying").count()
        + stderr.matches("database not reachable; retrying").count();
    assert_eq!(retries, 2, "{stdout}{stderr}");
    assert!(
        took >= std::time::Duration::from_secs(3) && took < std::time::Duration::from_secs(20),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_model_the_artifact_store_refuses_fails_the_job_and_is_not_deployed() {
    use crate::app::{Options, spawn_app_with, tiny_job};
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let app = spawn_app_with(Options {
        artifacts: Some(format!("file://{}", store.display())),
        ..Default::default()
    })
    .await;
    let mut spec = tiny_job(2);
    spec["deploy_as"] = serde_json::json!("never");
    let id = app.create_job(&spec).await;
    let worker = app.worker.clone();
    let run = tokio::spawn(async move { worker.try_run_next().await.unwrap() });
    // After the first epoch (its checkpoint mirrored), the store becomes unwritable: its root
    // is now a file. The second epoch's upload and the final one fail.
    let t = std::time::Instant::now();
    loop {
        let (_, e) = app.get(&format!("/v1/jobs/{id}/epochs")).await;
        if e["epochs"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "no epoch"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        store.join(format!("jobs/{id}")).is_dir(),
        "epoch 1 mirrored"
    );
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    run.await.unwrap();
    let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.starts_with("ArtifactError: the best model could not be stored"),
        "{error}"
    );
    assert!(job["best_checkpoint"].is_null(), "{job}");
    let (code, _) = app
        .post(
            "/v1/detect",
            &serde_json::json!({"text": "El cor.", "model": "never"}),
        )
        .await;
    assert_eq!(code, 404, "a model not stored is not deployed");
    app.shutdown().await;
}
