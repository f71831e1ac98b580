//! AdamW as `torch.optim.AdamW` under the HF Trainer: betas (0.9, 0.999), eps 1e-8, decoupled
//! weight decay `p -= lr * wd * p`, no decay on biases and LayerNorm parameters
//! (`Trainer.get_decay_parameter_names`), and global-norm gradient clipping
//! (`torch.nn.utils.clip_grad_norm_`, coefficient `max_norm / (norm + 1e-6)` capped at 1).
//!
//! burn 0.21 has no parameter groups and clips per parameter, hence this small optimizer. Its
//! state is keyed by HF parameter names, so it is saved next to the weights and a resumed run
//! continues exactly.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::model::loader::{hf_key, stack_path};

/// Hyper-parameters of one AdamW.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, flattened.
struct Moments<B: Backend> {
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// AdamW with per-parameter state keyed by HF name.
pub struct AdamW<B: AutodiffBackend> {
    pub config: AdamWConfig,
    /// Optimizer steps taken (bias correction uses it).
    pub step: u64,
    state: BTreeMap<String, Moments<B::InnerBackend>>,
}

/// Whether a parameter is excluded from weight decay (biases and LayerNorm parameters).
pub fn no_decay(path: &[String], parent: &str) -> bool {
    parent == "Struct:LayerNorm" || path.last().is_some_and(|s| s == "bias")
}

struct PathStack(Vec<(String, String)>);

impl PathStack {
    fn key(&self) -> (String, Vec<String>, String) {
        let (path, parent) = stack_path(&self.0);
        (hf_key(&path, &parent).0, path, parent)
    }
}

/// Global L2 norm of the gradients of `module`.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                // Row sums first: a full `sum` of a large tensor is a rayon reduction whose
                // order depends on timing (burn-flex), which would make runs differ in the last
                // bits; per-row sums are ordered, and the rest is small enough to be serial.
                let dims = g.dims();
                let rows = if D >= 2 { dims[0] } else { 1 };
                let sq = g
                    .square()
                    .reshape([rows, dims.iter().product::<usize>() / rows.max(1)])
                    .sum_dim(1)
                    .sum();
                self.sum = Some(match self.sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
            }
        }
    }
    let mut v = Norm::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum
        .map(|s| (s.into_scalar().elem::<f64>()).sqrt())
        .unwrap_or(0.0)
}

use burn::tensor::ElementConversion;

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update with learning rate `lr`; gradients are scaled by `grad_scale` first (clipping).
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        grad_scale: f64,
    ) -> M {
        self.step += 1;
        let mut mapper = StepMapper {
            optim: self,
            grads,
            lr,
            grad_scale,
            stack: PathStack(Vec::new()),
        };
        module.map(&mut mapper)
    }

    /// The state as (name, data) pairs for a checkpoint: `{param}.exp_avg`, `{param}.exp_avg_sq`.
    pub fn state_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::with_capacity(self.state.len() * 2);
        for (k, m) in &self.state {
            out.push((
                format!("{k}.exp_avg"),
                m.exp_avg.clone().into_data().convert::<f32>(),
            ));
            out.push((
                format!("{k}.exp_avg_sq"),
                m.exp_avg_sq.clone().into_data().convert::<f32>(),
            ));
        }
        out
    }

    /// Restores the state written by [`Self::state_tensors`].
    pub fn load_state(
        &mut self,
        step: u64,
        tensors: Vec<(String, TensorData)>,
        device: &<B::InnerBackend as burn::tensor::backend::BackendTypes>::Device,
    ) -> Result<(), String> {
        let mut avg: BTreeMap<String, TensorData> = BTreeMap::new();
        let mut sq: BTreeMap<String, TensorData> = BTreeMap::new();
        for (k, d) in tensors {
            if let Some(p) = k.strip_suffix(".exp_avg") {
                avg.insert(p.to_string(), d);
            } else if let Some(p) = k.strip_suffix(".exp_avg_sq") {
                sq.insert(p.to_string(), d);
            } else {
                return Err(format!("unexpected optimizer tensor {k}"));
            }
        }
        self.state.clear();
        for (k, a) in avg {
            let s = sq
                .remove(&k)
                .ok_or_else(|| format!("optimizer state for {k} has no exp_avg_sq"))?;
            let n = a.shape.iter().product::<usize>();
            self.state.insert(
                k,
                Moments {
                    exp_avg: Tensor::from_data(
                        TensorData::new(a.to_vec::<f32>().map_err(|e| format!("{e:?}"))?, [n]),
                        device,
                    ),
                    exp_avg_sq: Tensor::from_data(
                        TensorData::new(s.to_vec::<f32>().map_err(|e| format!("{e:?}"))?, [n]),
                        device,
                    ),
                },
            );
        }
        self.step = step;
        Ok(())
    }
}

struct StepMapper<'a, B: AutodiffBackend> {
    optim: &'a mut AdamW<B>,
    grads: GradientsParams,
    lr: f64,
    grad_scale: f64,
    stack: PathStack,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .0
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (key, path, parent) = self.stack.key();
        let c = self.optim.config;
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let grad = grad.reshape([n]);
        let grad = if self.grad_scale != 1.0 {
            grad.mul_scalar(self.grad_scale)
        } else {
            grad
        };
        let m = match self.optim.state.remove(&key) {
            Some(m) => Moments {
                exp_avg: m.exp_avg.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: m.exp_avg_sq.mul_scalar(c.beta2)
                    + grad.square().mul_scalar(1.0 - c.beta2),
            },
            None => Moments {
                exp_avg: grad.clone().mul_scalar(1.0 - c.beta1),
                exp_avg_sq: grad.square().mul_scalar(1.0 - c.beta2),
            },
        };
        let t = self.optim.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        // torch: denom = sqrt(v) / sqrt(bias2) + eps; p -= (lr / bias1) * m / denom
        let denom = m
            .exp_avg_sq
            .clone()
            .sqrt()
            .div_scalar(bias2.sqrt())
            .add_scalar(c.eps);
        let update = m.exp_avg.clone().div(denom).mul_scalar(self.lr / bias1);
        let mut value = tensor.inner().reshape([n]);
        if c.weight_decay != 0.0 && !no_decay(&path, &parent) {
            value = value.mul_scalar(1.0 - self.lr * c.weight_decay);
        }
        let value = (value - update).reshape(dims);
        self.optim.state.insert(key, m);
        Param::from_mapped_value(id, Tensor::from_inner(value).require_grad(), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn decay_groups_match_the_trainer() {
        assert!(no_decay(
            &p("roberta.embeddings.layer_norm.gamma"),
            "Struct:LayerNorm"
        ));
        assert!(no_decay(&p("classifier.bias"), "Struct:Linear"));
        assert!(!no_decay(&p("classifier.weight"), "Struct:Linear"));
        assert!(!no_decay(
            &p("roberta.embeddings.word_embeddings.weight"),
            "Struct:Embedding"
        ));
    }
}
