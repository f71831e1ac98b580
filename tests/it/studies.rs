//! Studies end to end: a grid of models × learning rates × seeds whose summary is recomputed
//! here from the child jobs' own results; random search draws; pruning; cancel and delete;
//! bad bodies.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::app::{TestApp, spawn_app};
use crate::common::fixture;

async fn run_all(app: &TestApp) -> usize {
    let mut n = 0;
    while let metafora::jobs::worker::Outcome::Ran { .. } = app.run_next().await {
        n += 1;
    }
    n
}

/// Mean and sample standard deviation, computed here independently of the service.
fn mean_sd(v: &[f64]) -> (f64, Option<f64>) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt());
    (m, sd)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_study_summarizes_its_trials_and_chooses_on_validation() {
    let app = spawn_app().await;
    let spec = json!({
        "name": "two models",
        "models": [
            {"checkpoint": fixture("tiny-roberta-base")},
            {"checkpoint": fixture("tiny-deberta-v2-mlm"), "name": "tiny-deberta"}
        ],
        "dataset": {"path": fixture("data/synthetic")},
        "seeds": [42, 43],
        "training": {"num_train_epochs": 2, "eval_train_subset": 16},
        "search": {"grid": {"learning_rate": [5e-4, 1e-4]}}
    });
    let (code, created) = app.post("/v1/studies", &spec).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        (
            &created["trials"],
            &created["models"],
            &created["configurations"],
            &created["seeds"]
        ),
        (&json!(8), &json!(2), &json!(2), &json!(2))
    );
    let id = created["id"].as_str().unwrap().to_string();
    let (_, listed) = app.get(&format!("/v1/jobs?study_id={id}")).await;
    let listed = listed["jobs"].as_array().unwrap();
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|j| j["study"]["id"] == id.as_str()));

    assert_eq!(run_all(&app).await, 8);
    let (_, study) = app.get(&format!("/v1/studies/{id}")).await;
    assert_eq!(study["status"], "succeeded", "{study}");
    let trials = study["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8);

    // The summary recomputed from each child job's own endpoints.
    // (model, learning rate) -> (job, validation F1, test F1) per seed.
    type Runs = Vec<(String, f64, f64)>;
    let mut groups: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for t in trials {
        let job = t["job_id"].as_str().unwrap();
        let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
        assert_eq!(j["status"], "succeeded");
        let (_, results) = app.get(&format!("/v1/jobs/{job}/results")).await;
        let (_, epochs) = app.get(&format!("/v1/jobs/{job}/epochs")).await;
        let best = j["best_checkpoint"]["epoch"].as_i64().unwrap();
        let epochs = epochs["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        assert!(
            epochs.iter().all(|e| e["train_eval"]["f1"].is_number()),
            "training subset scored each epoch"
        );
        let val = epochs.iter().find(|e| e["epoch"] == best).unwrap()["eval"]["f1"]
            .as_f64()
            .unwrap();
        let test = results["finetuned"]["f1"].as_f64().unwrap();
        assert_eq!(t["val_f1"].as_f64().unwrap(), val);
        assert_eq!(t["test_f1"].as_f64().unwrap(), test);
        let model = t["model"].as_str().unwrap().to_string();
        let lr = j["spec"]["training"]["learning_rate"].to_string();
        assert_eq!(t["params"]["learning_rate"].to_string(), lr);
        groups
            .entry((model, lr))
            .or_default()
            .push((job.to_string(), val, test));
        // TensorBoard files are written next to the job's other artifacts.
        let dir = app
            .dir
            .path()
            .join("data/jobs")
            .join(job)
            .join("tensorboard");
        assert!(
            std::fs::read_dir(&dir).unwrap().count() >= 1,
            "{}",
            dir.display()
        );
    }
    let summary = study["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 4);
    let mut best: Option<(f64, &Value)> = None;
    for c in summary {
        let key = (
            c["model"].as_str().unwrap().to_string(),
            c["params"]["learning_rate"].to_string(),
        );
        let runs = &groups[&key];
        assert_eq!(c["n"], 2);
        let (vm, vs) = mean_sd(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
        let (tm, ts) = mean_sd(&runs.iter().map(|r| r.2).collect::<Vec<_>>());
        assert!(close(c["val_f1_mean"].as_f64().unwrap(), vm), "{c}");
        assert!(close(c["val_f1_std"].as_f64().unwrap(), vs.unwrap()), "{c}");
        assert!(close(c["test_f1_mean"].as_f64().unwrap(), tm), "{c}");
        assert!(
            close(c["test_f1_std"].as_f64().unwrap(), ts.unwrap()),
            "{c}"
        );
        assert!(c["per_label"]["METAPHOR"]["test_f1_mean"].is_number());
        if best.is_none_or(|(b, _)| vm > b) {
            best = Some((vm, c));
        }
    }
    let (_, best) = best.unwrap();
    assert_eq!(study["best"]["model"], best["model"]);
    assert_eq!(study["best"]["params"], best["params"]);
    assert_eq!(study["best"]["job_ids"], best["job_ids"]);
    // The comparison: the best against the other model's best, paired over test sentences.
    let cmp = &study["comparison"];
    assert_eq!(cmp["a"]["model"], best["model"]);
    assert_ne!(cmp["b"]["model"], best["model"]);
    let diff =
        cmp["a"]["test_f1_mean"].as_f64().unwrap() - cmp["b"]["test_f1_mean"].as_f64().unwrap();
    assert!(close(cmp["diff"].as_f64().unwrap(), diff), "{cmp}");
    let (lo, hi) = (
        cmp["ci95"][0].as_f64().unwrap(),
        cmp["ci95"][1].as_f64().unwrap(),
    );
    assert!(lo <= hi && cmp["resamples"] == 1000, "{cmp}");
    assert_eq!(cmp["sentences"], 250);

    // CSVs.
    let text = |path: String| {
        let client = app.client.clone();
        let url = app.url(&path);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let results = text(format!("/v1/studies/{id}/results.csv")).await;
    let mut rows = csv::Reader::from_reader(results.as_bytes());
    let header = rows.headers().unwrap().clone();
    for col in [
        "status",
        "finetuned_f1",
        "study_id",
        "job_id",
        "learning_rate",
        "val_f1",
        "epochs_run",
        "pruned",
    ] {
        assert!(header.iter().any(|h| h == col), "{col} in {header:?}");
    }
    assert_eq!(rows.records().count(), 8);
    let summary_csv = text(format!("/v1/studies/{id}/summary.csv")).await;
    assert_eq!(
        csv::Reader::from_reader(summary_csv.as_bytes())
            .records()
            .count(),
        4
    );

    // The study's events: every trial's start and end, then the end.
    let events = crate::app::read_sse(
        app.client
            .get(app.url(&format!("/v1/studies/{id}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let count = |k: &str| events.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(
        (
            count("trial_started"),
            count("trial_finished"),
            count("finished")
        ),
        (8, 8, 1),
        "{events:?}"
    );

    // Deleting removes the trials and their artifacts; a trial cannot be deleted alone.
    let first = trials[0]["job_id"].as_str().unwrap().to_string();
    let r = app
        .client
        .delete(app.url(&format!("/v1/jobs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = app
        .client
        .delete(app.url(&format!("/v1/studies/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(app.get(&format!("/v1/jobs/{first}")).await.0, 404);
    assert_eq!(app.get(&format!("/v1/studies/{id}")).await.0, 404);
    assert!(!app.dir.path().join("data/jobs").join(&first).exists());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_study_with_a_fixed_seed_draws_the_same_parameters() {
    let app = spawn_app().await;
    let spec = |seed: u64| {
        json!({
            "models": [{"checkpoint": fixture("tiny-roberta-base")}],
            "dataset": {"path": fixture("data/synthetic-small")},
            "training": {"num_train_epochs": 1},
            "search": {"random": {"trials": 6, "seed": seed, "space": {
                "learning_rate": {"log_uniform": [1e-5, 1e-3]},
                "warmup_steps": {"uniform": [0, 0.1]},
                "weight_decay": {"choice": [0, 0.01]},
                "per_device_train_batch_size": {"int_uniform": [4, 16]}}}}
        })
    };
    let params = |v: &Value| -> Vec<Value> {
        v["trial_jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["params"].clone())
            .collect()
    };
    let (c1, a) = app.post("/v1/studies", &spec(7)).await;
    let (c2, b) = app.post("/v1/studies", &spec(7)).await;
    let (c3, c) = app.post("/v1/studies", &spec(8)).await;
    assert_eq!((c1, c2, c3), (201, 201, 201), "{a} {b} {c}");
    assert_eq!(params(&a), params(&b));
    assert_ne!(params(&a), params(&c));
    for p in params(&a) {
        let lr = p["learning_rate"].as_f64().unwrap();
        let bs = p["per_device_train_batch_size"].as_i64().unwrap();
        assert!((1e-5..=1e-3).contains(&lr) && (4..=16).contains(&bs), "{p}");
        assert!([json!(0), json!(0.01)].contains(&p["weight_decay"]));
    }
    // The stored trial specs carry the drawn values.
    let job = a["trial_jobs"][0]["job_id"].as_str().unwrap();
    let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(
        j["spec"]["training"]["learning_rate"],
        a["trial_jobs"][0]["params"]["learning_rate"]
    );
    // Cancel before anything ran: every trial cancelled, the study ends at once.
    for s in [&a, &b, &c] {
        let sid = s["id"].as_str().unwrap();
        let (code, body) = app
            .post(&format!("/v1/studies/{sid}/cancel"), &json!({}))
            .await;
        assert_eq!(
            (code, &body["status"]),
            (200, &json!("cancelled")),
            "{body}"
        );
        let (code, _) = app
            .post(&format!("/v1/studies/{sid}/cancel"), &json!({}))
            .await;
        assert_eq!(code, 409);
    }
    assert_eq!(run_all(&app).await, 0, "nothing left to run");
    let (_, jobs) = app.get("/v1/jobs?status=cancelled&limit=50").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 18);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn median_pruning_stops_a_hopeless_trial_early_and_still_tests_it() {
    let app = spawn_app().await;
    let spec = json!({
        "models": [{"checkpoint": fixture("tiny-roberta-base")}],
        "dataset": {"path": fixture("data/synthetic-small")},
        "training": {"num_train_epochs": 3},
        // The second rate barely moves the fresh head: its validation loss stays far above
        // the first's after epoch 1.
        "search": {"grid": {"learning_rate": [5e-4, 1e-8]}},
        "select_by": "loss",
        "pruning": {"median": {"after_epochs": 1, "min_peers": 1}}
    });
    let (code, created) = app.post("/v1/studies", &spec).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(run_all(&app).await, 2);
    let (_, study) = app.get(&format!("/v1/studies/{id}")).await;
    let t = study["trials"].as_array().unwrap();
    assert_eq!(
        (t[0]["pruned"].clone(), t[0]["epochs_run"].clone()),
        (json!(false), json!(3))
    );
    assert_eq!(
        (t[1]["pruned"].clone(), t[1]["epochs_run"].clone()),
        (json!(true), json!(1)),
        "{study}"
    );
    assert_eq!(t[1]["status"], "succeeded");
    assert!(
        t[1]["test_f1"].is_number(),
        "a pruned trial's best checkpoint is tested"
    );
    assert_eq!(study["epochs_saved"], 2);
    assert_eq!(study["summary"][1]["pruned"], 1);
    // Chosen on the lowest mean validation loss.
    assert_eq!(study["best"]["params"]["learning_rate"], 5e-4);
    let job = t[1]["job_id"].as_str().unwrap();
    let (_, j) = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(j["study"]["pruned"], true);
    let events = crate::app::read_sse(
        app.client
            .get(app.url(&format!("/v1/jobs/{job}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let stop = events
        .iter()
        .find(|(k, _)| k == "stopped_early")
        .expect("a stopped_early event");
    assert_eq!(stop.1["why"]["kind"], "pruned", "{stop:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_studies_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let good = json!({
        "models": [{"checkpoint": fixture("tiny-roberta-base")}],
        "dataset": {"path": fixture("data/synthetic-small")},
        "seeds": [1, 2],
        "search": {"grid": {"learning_rate": [1e-4, 2e-4]}}
    });
    let with = |pointer: &str, v: Value| {
        let mut s = good.clone();
        match s.pointer_mut(pointer) {
            Some(x) => *x = v,
            None => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                s.pointer_mut(if parent.is_empty() { "" } else { parent })
                    .unwrap()[key] = v;
            }
        }
        s
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no models", with("/models", json!([])), "models"),
        ("unknown field", with("/budget", json!(3)), "budget"),
        (
            "model without checkpoint",
            with("/models/0", json!({"name": "x"})),
            "models[0].checkpoint",
        ),
        (
            "duplicate model names",
            with(
                "/models",
                json!([{"checkpoint": fixture("tiny-roberta-base")}, {"checkpoint": fixture("tiny-roberta-base")}]),
            ),
            "models[1].name",
        ),
        ("empty seeds", with("/seeds", json!([])), "seeds"),
        ("repeated seed", with("/seeds", json!([3, 3])), "seeds"),
        (
            "empty grid",
            with("/search", json!({"grid": {}})),
            "search.grid",
        ),
        (
            "empty value list",
            with("/search/grid/learning_rate", json!([])),
            "search.grid.learning_rate",
        ),
        (
            "unknown training field searched",
            with("/search", json!({"grid": {"lr": [1e-4]}})),
            "search.grid.lr",
        ),
        (
            "invalid searched value",
            with("/search/grid/learning_rate", json!([1e-4, -1])),
            "search.grid.learning_rate",
        ),
        (
            "grid and random at once",
            with(
                "/search",
                json!({"grid": {"learning_rate": [1e-4]}, "random": {"trials": 2, "space": {}}}),
            ),
            "search",
        ),
        (
            "log-uniform through zero",
            with(
                "/search",
                json!({"random": {"trials": 2, "space": {"learning_rate": {"log_uniform": [0, 1e-3]}}}}),
            ),
            "search.random.space.learning_rate",
        ),
        (
            "zero random trials",
            with(
                "/search",
                json!({"random": {"trials": 0, "space": {"learning_rate": {"uniform": [1e-5, 1e-4]}}}}),
            ),
            "search.random.trials",
        ),
        (
            "seed searched",
            with("/search", json!({"grid": {"seed": [1, 2]}})),
            "search.grid.seed",
        ),
        (
            "hub name in training",
            with("/training", json!({"push_to_hub": true})),
            "training.push_to_hub",
        ),
        (
            "bad base training",
            with("/training", json!({"learning_rate": 0})),
            "training.learning_rate",
        ),
        (
            "pruning after zero epochs",
            with("/pruning", json!({"median": {"after_epochs": 0}})),
            "pruning.median.after_epochs",
        ),
        (
            "unknown select_by",
            with("/select_by", json!("bleu")),
            "select_by",
        ),
        (
            "bad deploy name",
            with("/deploy_best_as", json!("a b")),
            "deploy_best_as",
        ),
        (
            "model outside the allowed paths",
            with("/models/0/checkpoint", json!("/etc")),
            "models[0].checkpoint",
        ),
        (
            "10 000 trials",
            with(
                "/search/grid",
                json!({"learning_rate": (1..=100).map(|i| i as f64 * 1e-6).collect::<Vec<_>>(), "weight_decay": (0..50).map(|i| i as f64 * 1e-3).collect::<Vec<_>>()}),
            ),
            "search",
        ),
        (
            "too many trials",
            with("/seeds", json!((0..101).collect::<Vec<u64>>())),
            "seeds",
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, field) in &cases {
        let (code, resp) = app.post("/v1/studies", body).await;
        if code != 422 || resp["error"]["field"] != *field {
            failures.push(format!("{what}: {code} {resp}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (_, list) = app.get("/v1/studies").await;
    assert_eq!(
        list["studies"].as_array().unwrap().len(),
        0,
        "nothing was created"
    );
    app.shutdown().await;
}
