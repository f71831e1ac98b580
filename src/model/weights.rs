//! Checkpoint readers: `model.safetensors` (memory-mapped) and PyTorch `pytorch_model.bin`
//! (zip/pickle through burn-store), single files or sharded with an `*.index.json`.
//!
//! Tensors are converted to f32 one at a time, so loading needs the checkpoint's mapping plus
//! the model itself — about 2x its f32 size at peak.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::LoadError;

/// Which weight files a model directory holds, in order of preference.
pub const WEIGHT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The file format a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    Safetensors,
    Pytorch,
}

/// A tensor's shape and a way to read it as f32.
pub struct WeightEntry {
    pub shape: Vec<usize>,
    source: EntrySource,
}

enum EntrySource {
    Safetensors { file: usize },
    Pytorch(burn_store::TensorSnapshot),
}

/// All tensors of a checkpoint, by checkpoint key, read lazily.
pub struct Weights {
    pub format: WeightFormat,
    pub entries: BTreeMap<String, WeightEntry>,
    mmaps: Vec<(PathBuf, Mmap)>,
}

impl Weights {
    /// Opens the preferred weight file(s) of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        for name in WEIGHT_FILES {
            let path = dir.join(name);
            if path.is_file() {
                return Self::open(&path);
            }
        }
        Err(LoadError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens one weight file, or every shard named by an `*.index.json`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let files: Vec<PathBuf> = if name.ends_with(".index.json") {
            read_index(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let pytorch =
            name.starts_with("pytorch_model") || name.ends_with(".bin") || name.ends_with(".pt");
        let mut weights = Weights {
            format: if pytorch {
                WeightFormat::Pytorch
            } else {
                WeightFormat::Safetensors
            },
            entries: BTreeMap::new(),
            mmaps: Vec::new(),
        };
        for file in files {
            if pytorch {
                weights.add_pytorch(&file)?;
            } else {
                weights.add_safetensors(&file)?;
            }
        }
        Ok(weights)
    }

    fn add_safetensors(&mut self, path: &Path) -> Result<(), LoadError> {
        let file = File::open(path).map_err(|e| LoadError::Io {
            path: path.into(),
            source: e,
        })?;
        // SAFETY: the file is opened read-only and not modified while mapped; a concurrent
        // writer would be a misuse of the model directory.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::Io {
            path: path.into(),
            source: e,
        })?;
        let index = self.mmaps.len();
        {
            let st = SafeTensors::deserialize(&mmap).map_err(|e| LoadError::Format {
                path: path.into(),
                message: e.to_string(),
            })?;
            for (key, view) in st.tensors() {
                self.entries.insert(
                    key,
                    WeightEntry {
                        shape: view.shape().to_vec(),
                        source: EntrySource::Safetensors { file: index },
                    },
                );
            }
        }
        self.mmaps.push((path.to_path_buf(), mmap));
        Ok(())
    }

    fn add_pytorch(&mut self, path: &Path) -> Result<(), LoadError> {
        let reader =
            burn_store::pytorch::PytorchReader::new(path).map_err(|e| LoadError::Format {
                path: path.into(),
                message: e.to_string(),
            })?;
        for (key, snapshot) in reader.into_tensors() {
            let shape = snapshot.shape.to_vec();
            self.entries.insert(
                key,
                WeightEntry {
                    shape,
                    source: EntrySource::Pytorch(snapshot),
                },
            );
        }
        Ok(())
    }

    /// Reads one tensor as f32 data.
    pub fn read(&self, key: &str) -> Result<TensorData, LoadError> {
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| LoadError::MissingTensor {
                key: key.into(),
                expected: vec![],
            })?;
        match &entry.source {
            EntrySource::Safetensors { file } => {
                let (path, mmap) = &self.mmaps[*file];
                let st = SafeTensors::deserialize(mmap).map_err(|e| LoadError::Format {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let view = st.tensor(key).map_err(|e| LoadError::Format {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let values =
                    to_f32(view.dtype(), view.data()).ok_or_else(|| LoadError::Format {
                        path: path.clone(),
                        message: format!("tensor {key}: unsupported dtype {:?}", view.dtype()),
                    })?;
                Ok(TensorData::new(values, entry.shape.clone()))
            }
            EntrySource::Pytorch(snapshot) => {
                let data = snapshot.to_data().map_err(|e| LoadError::Format {
                    path: PathBuf::from("pytorch_model.bin"),
                    message: format!("tensor {key}: {e}"),
                })?;
                Ok(data.convert::<f32>())
            }
        }
    }
}

fn read_index(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
        path: path.into(),
        source: e,
    })?;
    let index: Index = serde_json::from_str(&text).map_err(|e| LoadError::Format {
        path: path.into(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = index.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8: this is a bug")) as f32)
            .collect(),
        _ => return None,
    })
}
