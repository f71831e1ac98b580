//! Right-padded batches (`DataCollatorForTokenClassification`): pad id for inputs, 0 in the
//! attention mask, -100 for labels.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::align::{Example, IGNORE};

/// Host-side padded batch; turned into tensors on the device that runs it.
#[derive(Debug, Clone)]
pub struct HostBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i32>,
    pub attention_mask: Vec<i32>,
    pub labels: Vec<i64>,
}

/// Device tensors of a batch.
pub struct Batch<B: Backend> {
    /// `[batch, seq]`
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
}

impl HostBatch {
    /// Pads `examples` to the longest one.
    pub fn collate(examples: &[&Example], pad_id: u32) -> Self {
        let seq = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0);
        Self::collate_ids(
            examples
                .iter()
                .map(|e| (e.input_ids.as_slice(), Some(e.labels.as_slice()))),
            seq,
            pad_id,
        )
    }

    /// Pads id sequences (with optional labels) to `seq`.
    pub fn collate_ids<'a>(
        items: impl ExactSizeIterator<Item = (&'a [u32], Option<&'a [i64]>)>,
        seq: usize,
        pad_id: u32,
    ) -> Self {
        let batch = items.len();
        let mut input_ids = vec![pad_id as i32; batch * seq];
        let mut attention_mask = vec![0i32; batch * seq];
        let mut labels = vec![IGNORE; batch * seq];
        for (row, (ids, labs)) in items.enumerate() {
            for (i, id) in ids.iter().enumerate() {
                input_ids[row * seq + i] = *id as i32;
                attention_mask[row * seq + i] = 1;
            }
            if let Some(labs) = labs {
                labels[row * seq..row * seq + labs.len()].copy_from_slice(labs);
            }
        }
        HostBatch {
            batch,
            seq,
            input_ids,
            attention_mask,
            labels,
        }
    }

    /// Number of label positions that count in the loss.
    pub fn num_label_tokens(&self) -> usize {
        self.labels.iter().filter(|l| **l != IGNORE).count()
    }

    /// Moves the inputs to a device.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Batch<B> {
        let shape = [self.batch, self.seq];
        Batch {
            input_ids: Tensor::from_data(TensorData::new(self.input_ids.clone(), shape), device),
            attention_mask: Tensor::from_data(
                TensorData::new(self.attention_mask.clone(), shape),
                device,
            ),
        }
    }
}
