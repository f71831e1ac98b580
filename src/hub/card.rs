//! The README model card pushed with a fine-tuned model.

use std::fmt::Write;

use serde_json::Value;

use crate::train::report::versions;

/// What the card says about the run besides its outcome.
#[derive(Debug, Clone)]
pub struct CardInput {
    /// The base checkpoint as the user named it.
    pub base_model: String,
    pub base_revision: Option<String>,
    /// Display name of the model.
    pub model_name: String,
    /// Hub id, path or uploaded id of the dataset.
    pub dataset: String,
    pub dataset_revision: Option<String>,
    pub seed: u64,
    pub num_train_epochs: usize,
    /// The hyper-parameters (the spec's `training` object).
    pub training: Value,
}

fn f4(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "–".into())
}

/// Markdown card: base model, dataset and revision, hyper-parameters, seed, base vs
/// fine-tuned metrics overall and per label, label distribution, metafora version.
/// `outcome` is a run outcome as serialised in report.json.
pub fn model_card(input: &CardInput, outcome: &Value) -> String {
    let mut s = String::new();
    let dataset = &input.dataset;
    let _ = writeln!(
        s,
        "---\nlibrary_name: transformers\npipeline_tag: token-classification\nbase_model: {}\ntags:\n- metafora\n- token-classification\n- metaphor-detection\n---\n",
        input.base_model
    );
    let _ = writeln!(
        s,
        "# {} fine-tuned for token classification\n",
        input.model_name
    );
    let v = versions();
    let _ = writeln!(
        s,
        "Fine-tuned with metafora {} (burn {}).\n",
        v["metafora"].as_str().unwrap_or_default(),
        v["burn"].as_str().unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "- Base model: `{}`{}",
        input.base_model,
        input
            .base_revision
            .as_ref()
            .map(|r| format!(" (revision `{r}`)"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "- Dataset: `{dataset}`{}",
        input
            .dataset_revision
            .as_ref()
            .map(|r| format!(" (revision `{r}`)"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "- Seed: {}", input.seed);
    let _ = writeln!(
        s,
        "- Best epoch: {} of {}\n",
        outcome["best_epoch"], input.num_train_epochs
    );
    let _ = writeln!(
        s,
        "## Hyper-parameters\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&input.training).unwrap_or_default()
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
