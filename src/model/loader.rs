//! Checkpoint import and export naming: the one table between burn module paths and HF keys,
//! for every family (the [`TokenClassifier`] variant is not part of the key).
//!
//! | burn path segment            | HF key segment | why                                   |
//! |------------------------------|----------------|---------------------------------------|
//! | `self_attn`                  | `self`         | `self` is a Rust keyword              |
//! | `layer_norm`                 | `LayerNorm`    | HF attribute name                     |
//! | `gamma` / `beta`             | `weight`/`bias`| burn's LayerNorm parameter names      |
//! | `Linear.weight` `[in, out]`  | `[out, in]`    | burn stores Linear transposed (PyTorch) |
//!
//! Checkpoints may or may not prefix encoder keys with the family's attribute (`roberta.`,
//! `deberta.`); older ones name LayerNorm parameters `gamma`/`beta`. Heads and buffers a token
//! classifier does not use are ignored (listed in [`ignored_prefixes`]: pooler, MLM and RTD
//! heads, `position_ids`). Every other missing, unexpected or mis-shaped tensor is an error
//! naming the key and both shapes.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::weights::{WeightFormat, Weights};
use super::{LoadError, ModelConfig, TokenClassifier};

/// Renames from burn path segments to HF key segments (see the module docs).
const SEGMENT_RENAMES: [(&str, &str); 4] = [
    ("self_attn", "self"),
    ("layer_norm", "LayerNorm"),
    ("gamma", "weight"),
    ("beta", "bias"),
];

/// Checkpoint keys (after the family prefix) that carry nothing a token classifier uses.
pub fn ignored_prefixes(config: &ModelConfig) -> &'static [&'static str] {
    match config {
        ModelConfig::Roberta(_) => &[
            "pooler.",
            "lm_head.",
            "embeddings.position_ids",
            "embeddings.token_type_ids",
        ],
        // Hub v3 checkpoints carry the MLM (`lm_predictions`, legacy `cls`) and RTD
        // (`mask_predictions`) heads; HF also ignores absolute position embeddings the config
        // does not use.
        ModelConfig::DebertaV2(_) => &[
            "pooler.",
            "lm_predictions.",
            "mask_predictions.",
            "cls.",
            "embeddings.position_ids",
            "embeddings.position_embeddings",
        ],
    }
}

/// How the classifier head is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInit {
    /// Load `classifier.*` from the checkpoint; missing or mis-shaped is an error.
    FromCheckpoint,
    /// A fresh head: `normal(0, initializer_range)` weights from this seed, zero bias; any
    /// `classifier.*` tensors in the checkpoint are ignored.
    Fresh { seed: u64 },
}

/// What a load did, for logs and reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub format: WeightFormat,
    /// The model family (`roberta`, `deberta-v2`).
    pub family: &'static str,
    /// Whether the checkpoint keys carried the family's prefix (`roberta.`, `deberta.`).
    pub prefixed: bool,
    /// `loaded` or `fresh`.
    pub head: &'static str,
    /// Checkpoint keys skipped on purpose (pooler, lm_head, buffers, replaced head).
    pub ignored: Vec<String>,
    pub num_parameters: usize,
}

/// The path and parent container of a module-visitor stack, without the
/// [`TokenClassifier`] variant (an `Enum:` container, not a checkpoint key segment).
pub fn stack_path(stack: &[(String, String)]) -> (Vec<String>, String) {
    let kept: Vec<&(String, String)> = stack
        .iter()
        .filter(|(_, container)| !container.starts_with("Enum:"))
        .collect();
    let path = kept.iter().map(|(s, _)| s.clone()).collect();
    let parent = kept.last().map(|(_, c)| c.clone()).unwrap_or_default();
    (path, parent)
}

/// The HF key of a burn parameter path, and whether the tensor is stored transposed.
/// `parent` is the container type of the parameter (`Struct:Linear`, …).
pub fn hf_key(path: &[String], parent: &str) -> (String, bool) {
    let key = path
        .iter()
        .map(|seg| {
            SEGMENT_RENAMES
                .iter()
                .find(|(burn, _)| burn == seg)
                .map(|(_, hf)| (*hf).to_string())
                .unwrap_or_else(|| seg.clone())
        })
        .collect::<Vec<_>>()
        .join(".");
    let transposed = parent == "Struct:Linear" && path.last().is_some_and(|s| s == "weight");
    (key, transposed)
}

/// Loads a token classifier from an HF model directory (config.json + weights).
///
/// `labels` overrides the config's `id2label` (a base checkpoint has none).
pub fn load_token_classifier<B: Backend>(
    dir: &Path,
    labels: Option<&[String]>,
    head: HeadInit,
    device: &B::Device,
) -> Result<(TokenClassifier<B>, ModelConfig, LoadReport), LoadError> {
    let config = ModelConfig::from_dir(dir)?;
    let labels: Vec<String> = match labels {
        Some(l) => l.to_vec(),
        None => config.labels().ok_or_else(|| LoadError::Config {
            path: dir.join("config.json"),
            message: "no id2label in config.json and no labels given".into(),
        })?,
    };
    let weights = Weights::open_dir(dir)?;
    let (model, report) = load_with_weights(&config, &weights, labels.len(), head, device)?;
    Ok((model, config.with_labels(&labels), report))
}

/// Fills a freshly built model from opened weights.
pub fn load_with_weights<B: Backend>(
    config: &ModelConfig,
    weights: &Weights,
    num_labels: usize,
    head: HeadInit,
    device: &B::Device,
) -> Result<(TokenClassifier<B>, LoadReport), LoadError> {
    let prefix = format!("{}.", config.base_prefix());
    let prefixed = weights.entries.keys().any(|k| k.starts_with(&prefix));
    let model = config.init_token_classifier::<B>(num_labels, device);
    let mut mapper = LoadMapper::<B> {
        weights,
        prefix: prefix.clone(),
        prefixed,
        head,
        std: config.initializer_range(),
        device: device.clone(),
        stack: Vec::new(),
        used: BTreeSet::new(),
        problems: Vec::new(),
        _b: std::marker::PhantomData,
    };
    let model = model.map(&mut mapper);
    let mut ignored = Vec::new();
    for (key, entry) in &weights.entries {
        if mapper.used.contains(key) {
            continue;
        }
        let bare = key.strip_prefix(&prefix).unwrap_or(key);
        let replaced_head =
            matches!(head, HeadInit::Fresh { .. }) && key.starts_with("classifier.");
        if replaced_head || ignored_prefixes(config).iter().any(|p| bare.starts_with(p)) {
            ignored.push(key.clone());
        } else {
            mapper.problems.push(format!(
                "unexpected tensor {key} with shape {:?}",
                entry.shape
            ));
        }
    }
    if !mapper.problems.is_empty() {
        return Err(LoadError::Tensors {
            problems: mapper.problems,
        });
    }
    let report = LoadReport {
        format: weights.format,
        family: config.family(),
        prefixed,
        head: if matches!(head, HeadInit::Fresh { .. }) {
            "fresh"
        } else {
            "loaded"
        },
        ignored,
        num_parameters: model.num_params(),
    };
    Ok((model, report))
}

struct LoadMapper<'a, B: Backend> {
    weights: &'a Weights,
    /// The family's key prefix (`roberta.`).
    prefix: String,
    prefixed: bool,
    head: HeadInit,
    std: f64,
    device: B::Device,
    /// (segment, container type) of the modules entered so far.
    stack: Vec<(String, String)>,
    used: BTreeSet<String>,
    problems: Vec<String>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> LoadMapper<'_, B> {
    /// Checkpoint key candidates for an HF key, most likely first.
    fn candidates(&self, hf: &str) -> Vec<String> {
        let mut keys = Vec::with_capacity(4);
        let base = match hf.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !self.prefixed => rest.to_string(),
            _ => hf.to_string(),
        };
        keys.push(base.clone());
        // TF-era checkpoints: LayerNorm.gamma / LayerNorm.beta.
        if let Some(stem) = base.strip_suffix("LayerNorm.weight") {
            keys.push(format!("{stem}LayerNorm.gamma"));
        }
        if let Some(stem) = base.strip_suffix("LayerNorm.bias") {
            keys.push(format!("{stem}LayerNorm.beta"));
        }
        keys
    }

    fn fresh_head(&self, hf: &str, shape: &[usize]) -> TensorData {
        let HeadInit::Fresh { seed } = self.head else {
            unreachable!("fresh_head only for HeadInit::Fresh: this is a bug")
        };
        if hf.ends_with("bias") {
            return TensorData::new(vec![0f32; shape.iter().product()], shape.to_vec());
        }
        // HF draws weight [num_labels, hidden]; burn stores it as [hidden, num_labels].
        let (hidden, labels) = (shape[0], shape[1]);
        let mut rng = StdRng::seed_from_u64(seed);
        let hf_layout: Vec<f32> = (0..hidden * labels)
            .map(|_| (normal(&mut rng) * self.std) as f32)
            .collect();
        let mut values = vec![0f32; hidden * labels];
        for l in 0..labels {
            for h in 0..hidden {
                values[h * labels + l] = hf_layout[l * hidden + h];
            }
        }
        TensorData::new(values, shape.to_vec())
    }
}

/// Standard normal sample (Box–Muller), so head init does not depend on the backend RNG.
fn normal(rng: &mut StdRng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl<B: Backend> ModuleMapper<B> for LoadMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (path, parent) = stack_path(&self.stack);
        let (hf, transposed) = hf_key(&path, &parent);
        let expected: Vec<usize> = param.lazy_shape().to_vec();
        let expected_hf: Vec<usize> = if transposed {
            expected.iter().rev().copied().collect()
        } else {
            expected.clone()
        };

        if hf.starts_with("classifier.") && matches!(self.head, HeadInit::Fresh { .. }) {
            let data = self.fresh_head(&hf, &expected);
            let id = param.id;
            return param.transform_for_load(Tensor::from_data(data, &self.device), id);
        }
        let Some(key) = self
            .candidates(&hf)
            .into_iter()
            .find(|k| self.weights.entries.contains_key(k))
        else {
            self.problems.push(format!(
                "missing tensor {hf} (expected shape {expected_hf:?})"
            ));
            return param;
        };
        self.used.insert(key.clone());
        let found = &self.weights.entries[&key].shape;
        if *found != expected_hf {
            self.problems.push(format!(
                "tensor {key} has shape {found:?}, expected {expected_hf:?}"
            ));
            return param;
        }
        let data = match self.weights.read(&key) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(e.to_string());
                return param;
            }
        };
        // Transpose on the host so the parameter is contiguous: a strided view would send the
        // matmuls down another kernel, and a resumed run would differ from an uninterrupted one
        // in the last bits.
        let data = if transposed { transpose_2d(data) } else { data };
        let tensor = Tensor::<B, D>::from_data(data, &self.device);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Transposes `[rows, cols]` f32 data into `[cols, rows]`.
fn transpose_2d(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape[0], data.shape[1]);
    let src: Vec<f32> = data.to_vec().expect("f32 weights: this is a bug");
    let mut out = vec![0f32; src.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

/// Every float parameter of a module as (HF key, HF-layout tensor data), in module order.
pub fn hf_tensors<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    struct Collect {
        stack: Vec<(String, String)>,
        out: Vec<(String, TensorData)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (path, parent) = stack_path(&self.stack);
            let (key, transposed) = hf_key(&path, &parent);
            let t = param.val();
            let t = if transposed { t.transpose() } else { t };
            self.out.push((key, t.into_data().convert::<f32>()));
        }
    }
    let mut c = Collect {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn hf_key_renames_and_transposes() {
        assert_eq!(
            hf_key(
                &p("roberta.encoder.layer.3.attention.self_attn.query.weight"),
                "Struct:Linear"
            ),
            (
                "roberta.encoder.layer.3.attention.self.query.weight".into(),
                true
            )
        );
        assert_eq!(
            hf_key(
                &p("roberta.embeddings.layer_norm.gamma"),
                "Struct:LayerNorm"
            ),
            ("roberta.embeddings.LayerNorm.weight".into(), false)
        );
        assert_eq!(
            hf_key(&p("classifier.bias"), "Struct:Linear"),
            ("classifier.bias".into(), false)
        );
        assert_eq!(
            hf_key(
                &p("roberta.embeddings.word_embeddings.weight"),
                "Struct:Embedding"
            ),
            ("roberta.embeddings.word_embeddings.weight".into(), false)
        );
    }
}
