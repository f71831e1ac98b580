//! The README model card pushed with a fine-tuned model.

use std::fmt::Write;

use serde_json::Value;

use crate::jobs::spec::JobSpec;

fn f4(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "–".into())
}

/// Markdown card: base model, dataset and revision, hyper-parameters, seed, base vs
/// fine-tuned metrics overall and per label, label distribution, metafora version.
/// `outcome` is a run outcome as serialised in report.json.
pub fn model_card(spec: &JobSpec, outcome: &Value) -> String {
    let mut s = String::new();
    let dataset = spec
        .dataset
        .hub_id
        .clone()
        .or(spec.dataset.path.clone())
        .or(spec.dataset.id.clone())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "---\nlibrary_name: transformers\npipeline_tag: token-classification\nbase_model: {}\ntags:\n- metafora\n- token-classification\n- metaphor-detection\n---\n",
        spec.model.checkpoint
    );
    let _ = writeln!(
        s,
        "# {} fine-tuned for token classification\n",
        spec.model.display_name()
    );
    let _ = writeln!(
        s,
        "Fine-tuned with metafora {} (burn 0.21.0).\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        s,
        "- Base model: `{}`{}",
        spec.model.checkpoint,
        spec.model
            .revision
            .as_ref()
            .map(|r| format!(" (revision `{r}`)"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "- Dataset: `{dataset}`{}",
        spec.dataset
            .revision
            .as_ref()
            .map(|r| format!(" (revision `{r}`)"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "- Seed: {}", spec.seed);
    let _ = writeln!(
        s,
        "- Best epoch: {} of {}\n",
        outcome["best_epoch"], spec.training.num_train_epochs
    );
    let _ = writeln!(
        s,
        "## Hyper-parameters\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&spec.training).unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "## Test metrics (seqeval, word level)\n\n| model | precision | recall | F1 | accuracy |\n|---|---|---|---|---|"
    );
    for (name, key) in [
        ("base (fresh head)", "base_test"),
        ("fine-tuned", "finetuned_test"),
    ] {
        let m = &outcome[key];
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            f4(&m["precision"]),
            f4(&m["recall"]),
            f4(&m["f1"]),
            f4(&m["accuracy"])
        );
    }
    let _ = writeln!(
        s,
        "\nImprovement in F1: {}\n",
        f4(&outcome["improvement_f1"])
    );
    let _ = writeln!(
        s,
        "### Per label\n\n| label | base P | base R | base F1 | P | R | F1 | support |\n|---|---|---|---|---|---|---|---|"
    );
    if let Some(labels) = outcome["finetuned_test"]["per_label"].as_object() {
        for (label, m) in labels {
            let b = &outcome["base_test"]["per_label"][label];
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                f4(&b["precision"]),
                f4(&b["recall"]),
                f4(&b["f1"]),
                f4(&m["precision"]),
                f4(&m["recall"]),
                f4(&m["f1"]),
                m["support"]
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## Label distribution\n\n| split | label | words | % | sentences with an entity |\n|---|---|---|---|---|"
    );
    for split in outcome["label_distribution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (label, c) in split["labels"].as_object().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {label} | {} | {:.2} | {} |",
                split["split"].as_str().unwrap_or(""),
                c["count"],
                c["percent"].as_f64().unwrap_or(0.0),
                split["sentences_with_entity"]
            );
        }
    }
    s
}
