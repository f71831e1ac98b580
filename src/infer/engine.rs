//! What runs a model's forward pass for inference and evaluation, chosen from the resolved
//! device: the CPU engine ([`super::cpu`], host kernels on unpadded sequences) on the CPU when
//! the processor has AVX2 + FMA, burn's ops on padded batches otherwise (GPU, other CPUs).

use burn::tensor::backend::Backend;

use crate::data::batch::HostBatch;
use crate::model::backend::Resolved;
use crate::model::{ModelConfig, TokenClassifier};

use super::cpu::packed::Precision;
use super::cpu::{self, CpuModel};

/// A precision this machine cannot run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{precision} inference needs {needs}; this machine: {has}")]
pub struct Unsupported {
    pub precision: Precision,
    pub needs: &'static str,
    pub has: String,
}

/// Whether models on `resolved` can run in `precision` here: f32 everywhere; bf16 and int8
/// only on the CPU engine, with AVX512_BF16 and AVX512_VNNI respectively.
pub fn check_precision(resolved: Resolved, precision: Precision) -> Result<(), Unsupported> {
    let needs = match precision {
        Precision::F32 => return Ok(()),
        Precision::Bf16 => "the CPU engine on a CPU with AVX512_BF16",
        Precision::Int8 => "the CPU engine on a CPU with AVX512_VNNI",
    };
    if resolved == Resolved::Cpu && cpu::runs(precision) {
        return Ok(());
    }
    let has = if resolved != Resolved::Cpu {
        format!("device {resolved}")
    } else if !cpu::available() {
        "the CPU engine is off (no AVX2/FMA, or METAFORA_CPU_KERNELS=off)".to_string()
    } else {
        cpu::packed::cpu_summary()
    };
    Err(Unsupported {
        precision,
        needs,
        has,
    })
}

/// A model ready for inference.
// One engine per deployed model or evaluation pass, never moved in a loop: no boxing.
#[allow(clippy::large_enum_variant)]
pub enum Engine<B: Backend> {
    /// Host kernels; the burn model has been dropped.
    Cpu(CpuModel),
    /// burn's ops on padded batches.
    Burn {
        model: TokenClassifier<B>,
        pad_id: u32,
        device: B::Device,
    },
}

impl<B: Backend> Engine<B> {
    /// The engine for `model` on `resolved`, in f32 (what evaluation always uses).
    pub fn new(
        model: TokenClassifier<B>,
        config: &ModelConfig,
        resolved: Resolved,
        device: &B::Device,
    ) -> Self {
        Self::build(model, config, resolved, device, Precision::F32)
    }

    /// The engine for `model` on `resolved` with its dense layers in `precision`.
    pub fn with_precision(
        model: TokenClassifier<B>,
        config: &ModelConfig,
        resolved: Resolved,
        device: &B::Device,
        precision: Precision,
    ) -> Result<Self, Unsupported> {
        check_precision(resolved, precision)?;
        Ok(Self::build(model, config, resolved, device, precision))
    }

    fn build(
        model: TokenClassifier<B>,
        config: &ModelConfig,
        resolved: Resolved,
        device: &B::Device,
        precision: Precision,
    ) -> Self {
        let pad_id = config.pad_token_id() as u32;
        if resolved == Resolved::Cpu && cpu::available() {
            match CpuModel::new(model, config, precision) {
                Ok(m) => return Engine::Cpu(m),
                Err(model) => {
                    return Engine::Burn {
                        model,
                        pad_id,
                        device: device.clone(),
                    };
                }
            }
        }
        Engine::Burn {
            model,
            pad_id,
            device: device.clone(),
        }
    }

    /// Whether batches cost their real tokens (no padding); otherwise the longest sequence
    /// times the batch size.
    pub fn unpadded(&self) -> bool {
        matches!(self, Engine::Cpu(_))
    }

    pub fn num_labels(&self) -> usize {
        match self {
            Engine::Cpu(m) => m.num_labels(),
            Engine::Burn { model, .. } => model.num_labels(),
        }
    }

    /// Logits of token-id sequences (special tokens included), each `[len, num_labels]`
    /// row-major, in input order.
    pub fn logits(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        match self {
            Engine::Cpu(m) => m.logits(sequences),
            Engine::Burn {
                model,
                pad_id,
                device,
            } => {
                let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
                if seq == 0 {
                    return vec![Vec::new(); sequences.len()];
                }
                let host =
                    HostBatch::collate_ids(sequences.iter().map(|s| (*s, None)), seq, *pad_id);
                let batch = host.to_device::<B>(device);
                let logits = model.forward(batch.input_ids, batch.attention_mask); // [batch, seq, labels]
                let c = model.num_labels();
                let flat: Vec<f32> = logits
                    .into_data()
                    .convert::<f32>()
                    .into_vec()
                    .expect("f32 logits: this is a bug");
                sequences
                    .iter()
                    .enumerate()
                    .map(|(row, s)| flat[row * seq * c..(row * seq + s.len()) * c].to_vec())
                    .collect()
            }
        }
    }
}
