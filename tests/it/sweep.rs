//! Bad-input sweep: malformed and hostile requests on every writing route. Each answer must be
//! a 4xx JSON error (naming the field where there is one), the server must stay up, and the
//! job that was queued before the sweep must come out of it untouched and alone.

use std::path::Path;

use serde_json::{Value, json};

use crate::app::{Options, spawn_app_with};
use crate::common::fixture;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

struct Case {
    what: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: &'static [u16],
    field: Option<&'static str>,
}

fn json_case(
    what: &'static str,
    body: Value,
    status: &'static [u16],
    field: Option<&'static str>,
) -> Case {
    Case {
        what,
        path: "/v1/jobs",
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        status,
        field,
    }
}

fn raw_case(what: &'static str, path: &'static str, body: &[u8], status: &'static [u16]) -> Case {
    Case {
        what,
        path,
        content_type: "application/json",
        body: body.to_vec(),
        status,
        field: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_4xx_json_and_leave_jobs_intact() {
    // An allowed directory with a real model and dataset, and one outside it that holds a
    // valid dataset too, reachable only through `..` or a symlink.
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let a = allowed.path().canonicalize().unwrap();
    let o = outside.path().canonicalize().unwrap();
    copy_dir(&fixture("tiny-roberta-base"), &a.join("model"));
    copy_dir(&fixture("data/synthetic-small"), &a.join("data"));
    copy_dir(&fixture("data/synthetic-small"), &o.join("data"));
    copy_dir(&fixture("tiny-roberta-base"), &o.join("model"));
    std::os::unix::fs::symlink(o.join("data"), a.join("link-data")).unwrap();
    std::os::unix::fs::symlink(o.join("model"), a.join("link-model")).unwrap();
    std::os::unix::fs::symlink(&o, a.join("link-dir")).unwrap();

    let app = spawn_app_with(Options {
        allow: vec![a.clone()],
        max_body_bytes: 64 * 1024,
        ..Default::default()
    })
    .await;
    let good = json!({
        "model": {"checkpoint": a.join("model")},
        "dataset": {"path": a.join("data")},
        "training": {"num_train_epochs": 1},
        "seed": 7
    });
    let id = app.create_job(&good).await;
    let (_, before) = app.get(&format!("/v1/jobs/{id}")).await;

    let with = |pointer: &str, v: Value| {
        let mut s = good.clone();
        *s.pointer_mut(pointer).unwrap() = v;
        s
    };
    let set = |section: &str, key: &str, v: Value| {
        let mut s = good.clone();
        s[section][key] = v;
        s
    };
    let a_str = a.display().to_string();
    let o_str = o.display().to_string();
    const BAD: &[u16] = &[400, 422];
    const UNPROCESSABLE: &[u16] = &[422];
    let mut cases = vec![
        raw_case("truncated JSON", "/v1/jobs", b"{\"model\": ", &[400]),
        raw_case("not JSON", "/v1/jobs", b"hello", &[400]),
        raw_case("trailing garbage", "/v1/jobs", br#"{"model":{"checkpoint":"m"},"dataset":{"path":"d"}} x"#, &[400]),
        raw_case("array body", "/v1/jobs", b"[]", BAD),
        raw_case("null body", "/v1/jobs", b"null", BAD),
        raw_case("empty body", "/v1/jobs", b"", &[400]),
        raw_case(
            "NaN literal",
            "/v1/jobs",
            br#"{"model":{"checkpoint":"m"},"dataset":{"path":"d"},"training":{"learning_rate":NaN}}"#,
            &[400],
        ),
        raw_case(
            "Infinity literal",
            "/v1/jobs",
            br#"{"model":{"checkpoint":"m"},"dataset":{"path":"d"},"seed":Infinity}"#,
            &[400],
        ),
        raw_case(
            "number out of range",
            "/v1/jobs",
            br#"{"model":{"checkpoint":"m"},"dataset":{"path":"d"},"training":{"learning_rate":1e999}}"#,
            BAD,
        ),
        raw_case("non-UTF-8 body", "/v1/jobs", b"\xff\xfe{\"model\":1}", &[400]),
        raw_case(
            "non-UTF-8 inside a string",
            "/v1/jobs",
            b"{\"model\":{\"checkpoint\":\"\xc3\x28\"},\"dataset\":{\"path\":\"d\"}}",
            &[400],
        ),
        raw_case(
            "deeply nested",
            "/v1/jobs",
            "[".repeat(5000).as_bytes(),
            &[400],
        ),
        Case {
            what: "wrong content type",
            path: "/v1/jobs",
            content_type: "text/plain",
            body: good.to_string().into_bytes(),
            status: &[415],
            field: None,
        },
        Case {
            what: "huge body",
            path: "/v1/jobs",
            content_type: "application/json",
            body: json!({"model": {"checkpoint": "x".repeat(200_000)}}).to_string().into_bytes(),
            status: &[413],
            field: None,
        },
        json_case("missing model", json!({"dataset": {"path": a.join("data")}}), UNPROCESSABLE, Some("model")),
        json_case("model is a number", with("/model", json!(3)), UNPROCESSABLE, Some("model")),
        json_case("unknown device kind", {let mut s = good.clone(); s["device"] = json!("tpu"); s}, UNPROCESSABLE, Some("device")),
        json_case("device as a number", {let mut s = good.clone(); s["device"] = json!(0); s}, UNPROCESSABLE, Some("device")),
        json_case("device with a path", {let mut s = good.clone(); s["device"] = json!("../cuda"); s}, UNPROCESSABLE, Some("device")),
        json_case("hub as an array of its fields", {let mut s = good.clone(); s["hub"] = json!([false, null, true]); s}, UNPROCESSABLE, Some("hub")),
        json_case("unknown focal field", set("training", "loss", json!({"focal": {"gamma": 2.0, "alpha": 1}})), UNPROCESSABLE, Some("training.loss.focal.alpha")),
        json_case("focal loss as an array", set("training", "loss", json!({"focal": [2.0]})), UNPROCESSABLE, Some("training.loss.focal")),
        json_case("checkpoint is a list", with("/model/checkpoint", json!(["a"])), UNPROCESSABLE, Some("model.checkpoint")),
        json_case("learning rate as text", set("training", "learning_rate", json!("fast")), UNPROCESSABLE, Some("training.learning_rate")),
        json_case("negative learning rate", set("training", "learning_rate", json!(-1)), UNPROCESSABLE, Some("training.learning_rate")),
        json_case("zero learning rate", set("training", "learning_rate", json!(0)), UNPROCESSABLE, Some("training.learning_rate")),
        json_case("fractional epochs", set("training", "num_train_epochs", json!(2.5)), UNPROCESSABLE, Some("training.num_train_epochs")),
        json_case("negative epochs", set("training", "num_train_epochs", json!(-1)), UNPROCESSABLE, Some("training.num_train_epochs")),
        json_case("zero batch", set("training", "per_device_train_batch_size", json!(0)), UNPROCESSABLE, Some("training.per_device_train_batch_size")),
        json_case("huge batch", set("training", "per_device_train_batch_size", json!(1u64 << 40)), UNPROCESSABLE, Some("training.per_device_train_batch_size")),
        json_case("negative warmup", set("training", "warmup_steps", json!(-3)), UNPROCESSABLE, Some("training.warmup_steps")),
        json_case("negative weight decay", set("training", "weight_decay", json!(-0.1)), UNPROCESSABLE, Some("training.weight_decay")),
        json_case("negative class weight", set("training", "class_weights", json!([1.0, -2.0, 1.0])), UNPROCESSABLE, Some("training.class_weights[1]")),
        json_case("unknown class weights mode", set("training", "class_weights", json!("inverse")), UNPROCESSABLE, Some("training.class_weights")),
        json_case("negative focal gamma", set("training", "loss", json!({"focal": {"gamma": -1}})), UNPROCESSABLE, Some("training.loss.focal.gamma")),
        json_case("unknown precision", set("training", "precision", json!("f8")), UNPROCESSABLE, Some("training.precision")),
        json_case("unknown scheduler", set("training", "lr_scheduler", json!("sawtooth")), UNPROCESSABLE, Some("training.lr_scheduler")),
        json_case("negative seed", with("/seed", json!(-1)), UNPROCESSABLE, Some("seed")),
        json_case("seed as text", with("/seed", json!("42")), UNPROCESSABLE, Some("seed")),
        json_case("unknown top-level field", {let mut s = good.clone(); s["foo"] = json!(1); s}, UNPROCESSABLE, Some("foo")),
        json_case("unknown training field", set("training", "lr", json!(1e-5)), UNPROCESSABLE, Some("training.lr")),
        json_case("dataset outside", with("/dataset/path", json!("/etc")), UNPROCESSABLE, Some("dataset.path")),
        json_case("dataset root", with("/dataset/path", json!("/")), UNPROCESSABLE, Some("dataset.path")),
        json_case("dot-dot out of the allowed dir", with("/dataset/path", json!(format!("{a_str}/../{}/data", o.file_name().unwrap().to_str().unwrap()))), UNPROCESSABLE, Some("dataset.path")),
        json_case("dot-dot to the outside copy", with("/dataset/path", json!(format!("{a_str}/data/../../../../../../{o_str}/data"))), UNPROCESSABLE, Some("dataset.path")),
        json_case("relative dot-dot", with("/dataset/path", json!("../../../../etc")), UNPROCESSABLE, Some("dataset.path")),
        json_case("symlinked dataset pointing out", with("/dataset/path", json!(a.join("link-data"))), UNPROCESSABLE, Some("dataset.path")),
        json_case("symlinked dir pointing out", with("/dataset/path", json!(a.join("link-dir/data"))), UNPROCESSABLE, Some("dataset.path")),
        json_case("symlinked model pointing out", with("/model/checkpoint", json!(a.join("link-model"))), UNPROCESSABLE, Some("model.checkpoint")),
        json_case("model outside", with("/model/checkpoint", json!(o.join("model"))), UNPROCESSABLE, Some("model.checkpoint")),
        json_case("NUL in a path", with("/dataset/path", json!(format!("{a_str}/data\u{0}x"))), UNPROCESSABLE, Some("dataset.path")),
        json_case("output dir outside", {let mut s = good.clone(); s["output"] = json!({"dir": "/tmp/evil"}); s}, UNPROCESSABLE, Some("output.dir")),
    ];
    // Studies: the same hostility, and sizes.
    let study = json!({
        "models": [{"checkpoint": a.join("model")}],
        "dataset": {"path": a.join("data")},
        "training": {"num_train_epochs": 1}
    });
    let study_case = |what: &'static str, body: Value, field: &'static str| Case {
        what,
        path: "/v1/studies",
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        status: UNPROCESSABLE,
        field: Some(field),
    };
    let study_with = |pointer: &str, v: Value| {
        let mut s = study.clone();
        *s.pointer_mut(pointer).unwrap() = v;
        s
    };
    cases.extend([
        raw_case("study: truncated JSON", "/v1/studies", b"{\"models\": [", &[400]),
        raw_case("study: array body", "/v1/studies", b"[]", BAD),
        raw_case("study: deeply nested", "/v1/studies", "{\"models\":".repeat(3000).as_bytes(), &[400]),
        Case {
            what: "study: wrong content type",
            path: "/v1/studies",
            content_type: "text/plain",
            body: study.to_string().into_bytes(),
            status: &[415],
            field: None,
        },
        Case {
            what: "study: huge body",
            path: "/v1/studies",
            content_type: "application/json",
            body: json!({"models": [{"checkpoint": "x".repeat(200_000)}]}).to_string().into_bytes(),
            status: &[413],
            field: None,
        },
        study_case("study: model outside", study_with("/models/0/checkpoint", json!(o.join("model"))), "models[0].checkpoint"),
        study_case("study: symlinked model pointing out", study_with("/models/0/checkpoint", json!(a.join("link-model"))), "models[0].checkpoint"),
        study_case("study: dataset through dot-dot", study_with("/dataset/path", json!(format!("{a_str}/../{}/data", o.file_name().unwrap().to_str().unwrap()))), "dataset.path"),
        study_case("study: NUL in a path", study_with("/dataset/path", json!(format!("{a_str}/data\u{0}x"))), "dataset.path"),
        study_case("study: a million trials", {let mut s = study.clone(); s["search"] = json!({"random": {"trials": 1_000_000, "space": {"learning_rate": {"uniform": [1e-5, 1e-4]}}}}); s}, "search"),
        study_case("study: grid overflowing usize", {let mut s = study.clone(); s["search"] = json!({"grid": {"learning_rate": vec![1e-4; 1000], "weight_decay": vec![0.0; 1000], "warmup_steps": vec![0; 1000], "max_grad_norm": vec![1.0; 1000], "max_length": vec![64; 1000], "num_train_epochs": vec![1; 1000], "per_device_train_batch_size": vec![8; 1000]}}); s}, "search"),
        study_case("study: output dir smuggled in", study_with("/training", json!({"output_dir": "/tmp/evil"})), "training.output_dir"),
        study_case("study: NaN-free but infinite bound", {let mut s = study.clone(); s["search"] = json!({"random": {"trials": 2, "space": {"learning_rate": {"uniform": [1e-5, 1e308]}}}}); s}, "search.random.space.learning_rate"),
    ]);
    // The annotation loop: projects, imports, webhooks, bulk predictions.
    let post = |what: &'static str,
                path: &'static str,
                body: Value,
                status: &'static [u16],
                field: Option<&'static str>| Case {
        what,
        path,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        status,
        field,
    };
    let lbl = "<View><Labels name='label' toName='text'><Label value='M'/></Labels><Text name='text' value='$text'/></View>";
    cases.extend([
        post("project: id with a path", "/v1/projects", json!({"id": "../etc", "labels": ["M"]}), UNPROCESSABLE, Some("id")),
        post("project: id too long", "/v1/projects", json!({"id": "p".repeat(65), "labels": ["M"]}), UNPROCESSABLE, Some("id")),
        post("project: no labels", "/v1/projects", json!({"id": "p", "labels": []}), UNPROCESSABLE, Some("labels")),
        post("project: label with a space", "/v1/projects", json!({"id": "p", "labels": ["a b"]}), UNPROCESSABLE, Some("labels[0]")),
        post("project: unknown field", "/v1/projects", json!({"id": "p", "labels": ["M"], "evil": 1}), UNPROCESSABLE, Some("evil")),
        post("project: retrain_every 0", "/v1/projects", json!({"id": "p", "labels": ["M"], "retrain_every": 0}), UNPROCESSABLE, Some("retrain_every")),
        post("project: model name with a slash", "/v1/projects", json!({"id": "p", "labels": ["M"], "model": "a/b"}), UNPROCESSABLE, Some("model")),
        post("project: template with a dataset", "/v1/projects", json!({"id": "p", "labels": ["M"], "template": {"model": {"checkpoint": a.join("model")}, "dataset": {"path": "/"}}}), UNPROCESSABLE, Some("template.dataset")),
        post("project: template model outside", "/v1/projects", json!({"id": "p", "labels": ["M"], "template": {"model": {"checkpoint": o.join("model")}}}), UNPROCESSABLE, Some("template.model.checkpoint")),
        post("project: template deploys itself", "/v1/projects", json!({"id": "p", "labels": ["M"], "template": {"model": {"checkpoint": a.join("model")}, "deploy_as": "default"}}), UNPROCESSABLE, Some("template.deploy_as")),
        post("project: template pushes", "/v1/projects", json!({"id": "p", "labels": ["M"], "template": {"model": {"checkpoint": a.join("model")}, "hub": {"push": true}}}), UNPROCESSABLE, Some("template.hub")),
        post("webhook: 10 001 spans", "/labelstudio/webhook", json!({"action": "ANNOTATION_CREATED", "project": {"id": 80, "label_config": lbl}, "task": {"id": 1, "data": {"text": "a b"}}, "annotation": {"id": 1, "result": vec![json!({"type": "labels", "value": {"start": 0, "end": 1, "labels": ["M"]}}); 10_001]}}), &[413, 422], None),
        post("project: template is a list", "/v1/projects", json!({"id": "p", "labels": ["M"], "template": []}), UNPROCESSABLE, Some("template")),
        raw_case("project: truncated JSON", "/v1/projects", b"{\"id\": ", &[400]),
        post("webhook: project id with a path", "/labelstudio/webhook", json!({"action": "ANNOTATION_CREATED", "project": {"id": "../../x", "label_config": lbl}, "task": {"id": 1, "data": {"text": "a"}}, "annotation": {"id": 1, "result": []}}), UNPROCESSABLE, Some("project.id")),
        post("webhook: unknown project", "/labelstudio/webhook", json!({"action": "ANNOTATION_CREATED", "project": {"id": 424242}, "task": {"id": 1, "data": {"text": "a"}}, "annotation": {"id": 1, "result": []}}), &[404], None),
        post("webhook: config without Labels", "/labelstudio/webhook", json!({"action": "ANNOTATION_CREATED", "project": {"id": 77, "label_config": "<View><Text name='t' value='$text'/></View>"}, "task": {"id": 1, "data": {"text": "a"}}, "annotation": {"id": 1, "result": []}}), UNPROCESSABLE, Some("project.label_config")),
        post("webhook: action is a number", "/labelstudio/webhook", json!({"action": 5}), UNPROCESSABLE, Some("action")),
        post("webhook: deletion without annotations", "/labelstudio/webhook", json!({"action": "ANNOTATIONS_DELETED", "project": {"id": 78, "label_config": lbl}}), UNPROCESSABLE, Some("annotations")),
        post("webhook: a 200 000-character task", "/labelstudio/webhook", json!({"action": "ANNOTATION_CREATED", "project": {"id": 79, "label_config": lbl}, "task": {"id": 1, "data": {"text": "a ".repeat(40_000)}}, "annotation": {"id": 1, "result": [{"type": "labels", "value": {"start": 0, "end": 1, "labels": ["M"]}}]}}), &[413, 422], None),
        post("predictions: two inputs", "/v1/predictions", json!({"texts": ["a"], "texts_file": "x", "format": "jsonl"}), UNPROCESSABLE, Some("dataset")),
        post("predictions: no format", "/v1/predictions", json!({"texts": ["a"]}), UNPROCESSABLE, Some("format")),
        post("predictions: bad format", "/v1/predictions", json!({"texts": ["a"], "format": "xml"}), UNPROCESSABLE, Some("format")),
        post("predictions: texts file outside", "/v1/predictions", json!({"texts_file": o.join("data/train.jsonl"), "format": "jsonl"}), UNPROCESSABLE, Some("texts_file")),
        post("predictions: texts file through a symlink", "/v1/predictions", json!({"texts_file": a.join("link-data/train.jsonl"), "format": "jsonl"}), UNPROCESSABLE, Some("texts_file")),
        post("predictions: dataset through a symlink", "/v1/predictions", json!({"dataset": {"path": a.join("link-data")}, "format": "jsonl"}), UNPROCESSABLE, Some("dataset.path")),
        post("predictions: NUL in a path", "/v1/predictions", json!({"texts_file": format!("{a_str}/x\u{0}y"), "format": "jsonl"}), UNPROCESSABLE, Some("texts_file")),
        post("predictions: unknown model", "/v1/predictions", json!({"texts": ["a"], "format": "jsonl", "model": "nope"}), UNPROCESSABLE, Some("model")),
        post("predictions: threshold 7", "/v1/predictions", json!({"texts": ["a"], "format": "jsonl", "threshold": 7}), UNPROCESSABLE, Some("threshold")),
        post("predictions: dataset id not a uuid", "/v1/predictions", json!({"dataset": {"id": "../../etc"}, "format": "jsonl"}), UNPROCESSABLE, Some("dataset.id")),
        post("rollback: unknown model", "/v1/models/nope/rollback", json!({}), &[404], None),
        post("train: unknown project", "/v1/projects/nope/train", json!({}), &[404], None),
        post("import: unknown project", "/v1/projects/nope/import?format=doccano", json!({}), &[404], None),
    ]);
    // Other writing routes.
    cases.extend([
        Case {
            what: "detect: text is a number",
            path: "/v1/detect",
            content_type: "application/json",
            body: br#"{"text": 5}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("text"),
        },
        Case {
            what: "detect: threshold out of range",
            path: "/v1/detect",
            content_type: "application/json",
            body: br#"{"text": "hola", "threshold": 2}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("threshold"),
        },
        Case {
            what: "detect: unknown strategy",
            path: "/v1/detect",
            content_type: "application/json",
            body: br#"{"text": "hola", "aggregation_strategy": "median"}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("aggregation_strategy"),
        },
        Case {
            what: "detect: NaN",
            path: "/v1/detect",
            content_type: "application/json",
            body: br#"{"text": "hola", "threshold": NaN}"#.to_vec(),
            status: &[400],
            field: None,
        },
        Case {
            what: "detect: non-UTF-8",
            path: "/v1/detect",
            content_type: "application/json",
            body: b"{\"text\": \"\xff\xff\"}".to_vec(),
            status: &[400],
            field: None,
        },
        Case {
            what: "models: path outside",
            path: "/v1/models",
            content_type: "application/json",
            body: json!({"name": "x", "path": o.join("model")})
                .to_string()
                .into_bytes(),
            status: UNPROCESSABLE,
            field: Some("path"),
        },
        Case {
            what: "models: symlink pointing out",
            path: "/v1/models",
            content_type: "application/json",
            body: json!({"name": "x", "path": a.join("link-model")})
                .to_string()
                .into_bytes(),
            status: UNPROCESSABLE,
            field: Some("path"),
        },
        Case {
            what: "labelstudio setup: config that is not XML",
            path: "/labelstudio/setup",
            content_type: "application/json",
            body: br#"{"project": 1, "schema": "<View><Labels name='x'"}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("schema"),
        },
        Case {
            what: "labelstudio setup: huge config",
            path: "/labelstudio/setup",
            content_type: "application/json",
            body: json!({"project": 1, "schema": format!("<View>{}</View>", "<Label value='a'/>".repeat(16_000))})
                .to_string()
                .into_bytes(),
            // Over this test server's 64 KiB body limit: refused before the config's own.
            status: &[413, 422],
            field: None,
        },
        Case {
            what: "labelstudio predict: too many tasks",
            path: "/labelstudio/predict",
            content_type: "application/json",
            body: json!({"tasks": vec![json!({"data": {"text": "a"}}); 300]})
                .to_string()
                .into_bytes(),
            status: UNPROCESSABLE,
            field: Some("tasks"),
        },
        Case {
            what: "job without a content type",
            path: "/v1/jobs",
            content_type: "",
            body: good.to_string().into_bytes(),
            status: &[415],
            field: None,
        },
        Case {
            what: "models: unknown precision",
            path: "/v1/models",
            content_type: "application/json",
            body: br#"{"name": "x", "path": "m", "precision": "fp16"}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("precision"),
        },
        Case {
            what: "models: precision as a number",
            path: "/v1/models",
            content_type: "application/json",
            body: br#"{"name": "x", "path": "m", "precision": 8}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("precision"),
        },
        Case {
            what: "models: precision null",
            path: "/v1/models",
            content_type: "application/json",
            body: br#"{"name": "x", "path": "m", "precision": null}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("precision"),
        },
        Case {
            what: "models: huge precision string",
            path: "/v1/models",
            content_type: "application/json",
            body: json!({"name": "x", "path": "m", "precision": "i".repeat(50_000)})
                .to_string()
                .into_bytes(),
            status: UNPROCESSABLE,
            field: Some("precision"),
        },
        Case {
            what: "models: revision-like path",
            path: "/v1/models",
            content_type: "application/json",
            body: br#"{"name": "x", "path": "../../../../etc"}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("path"),
        },
        Case {
            what: "labelstudio predict: tasks not a list",
            path: "/labelstudio/predict",
            content_type: "application/json",
            body: br#"{"tasks": "all"}"#.to_vec(),
            status: UNPROCESSABLE,
            field: Some("tasks"),
        },
    ]);

    let mut failures = Vec::new();
    for c in &cases {
        let mut req = app.client.post(app.url(c.path)).body(c.body.clone());
        if !c.content_type.is_empty() {
            req = req.header("content-type", c.content_type);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.what));
        let code = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ok = c.status.contains(&code)
            && ct.starts_with("application/json")
            && body["error"]["code"].is_string()
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
            && c.field.is_none_or(|f| body["error"]["field"] == f);
        if !ok {
            failures.push(format!("{}: {code} {ct} {text}", c.what));
        }
    }
    // Uploads with hostile content.
    for (what, name, bytes) in [
        (
            "non-UTF-8 upload",
            "train.jsonl",
            b"\xff\xfe\x00garbage\n".to_vec(),
        ),
        (
            "NaN tags upload",
            "train.jsonl",
            b"{\"tokens\":[\"a\"],\"tags\":[NaN]}\n".to_vec(),
        ),
        (
            "path in file name",
            "../../../etc/passwd",
            b"{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n".to_vec(),
        ),
        (
            "a 2 MB line",
            "train.jsonl",
            format!(
                "{{\"tokens\":[\"{}\"],\"tags\":[\"O\"]}}\n",
                "a".repeat(2 << 20)
            )
            .into_bytes(),
        ),
        (
            "a control character in the file name",
            "a\u{7}b.jsonl",
            b"{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n".to_vec(),
        ),
    ] {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
        let r = app.upload(form).await;
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !((400..500).contains(&code) && body["error"]["code"].is_string()) {
            failures.push(format!("{what}: {code} {text}"));
        }
    }
    // Multipart forms that are not uploads.
    for (what, form) in [
        (
            "four files",
            (0..4).fold(reqwest::multipart::Form::new(), |f, i| {
                f.part(
                    "file",
                    reqwest::multipart::Part::bytes(
                        b"{\"tokens\":[\"a\"],\"tags\":[\"O\"]}\n".to_vec(),
                    )
                    .file_name(format!("{i}.jsonl")),
                )
            }),
        ),
        (
            "an unknown field",
            reqwest::multipart::Form::new().text("evil", "x"),
        ),
        (
            "a huge text field",
            reqwest::multipart::Form::new().text("name", "n".repeat(100_000)),
        ),
        ("nothing", reqwest::multipart::Form::new()),
    ] {
        let r = app.upload(form).await;
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !((400..500).contains(&code) && body["error"]["code"].is_string()) {
            failures.push(format!("{what}: {code} {text}"));
        }
    }
    // Query strings.
    for q in [
        "/v1/jobs?limit=-1",
        "/v1/jobs?limit=abc",
        "/v1/jobs?limit=99999999999999999999",
        "/v1/jobs?cursor=%ff%fe",
        "/v1/jobs?cursor=../../etc",
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/%00/results",
        "/v1/jobs?study_id=../../etc",
        "/v1/studies?limit=0",
        "/v1/studies?cursor=-5",
        "/v1/studies?evil=1",
        "/v1/studies/..%2F..%2Fetc",
        "/v1/studies/%00/summary.csv",
        "/v1/studies/00000000-0000-0000-0000-000000000000/results.csv",
        "/v1/projects/..%2F..%2Fetc",
        "/v1/projects/%00",
        "/v1/predictions/..%2Fx/output",
        "/v1/predictions/00000000-0000-0000-0000-000000000000/output",
        "/v1/models/..%2Fx/versions",
        "/v1/models/nope/versions",
        "/v1/workers?evil=1",
        "/v1/workers?since_hours=-1",
        "/v1/workers?since_hours=0",
        "/v1/workers?since_hours=abc",
        "/v1/workers?since_hours=99999999999999999999",
        "/v1/workers?since_hours=1e3",
    ] {
        let (code, body) = app.get(q).await;
        if !((400..500).contains(&code) && body["error"]["code"].is_string()) {
            failures.push(format!("GET {q}: {code} {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still up, and the one good job is the only job, unchanged.
    assert_eq!(app.get("/health").await.0, 200);
    let (code, list) = app.get("/v1/jobs").await;
    assert_eq!(code, 200);
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{list}");
    assert_eq!(jobs[0]["id"], id.as_str());
    let (_, after) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(after, before);
    // And it still runs.
    assert!(matches!(
        app.run_next().await,
        metafora::jobs::worker::Outcome::Ran { .. }
    ));
    let (_, done) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    app.shutdown().await;
}
