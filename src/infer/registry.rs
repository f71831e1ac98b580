//! Deployed models by name. Replacing a model swaps an `Arc`: requests holding the old one
//! finish on it, and its executor stops when the last holder lets go.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::model::backend::Resolved;

use super::{DetectError, Detector, DetectorOptions, ModelInfo, Precision, PrecisionComparison};

/// The deployed models.
pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<Detector>>>,
    device: Resolved,
    opts: DetectorOptions,
}

impl Registry {
    pub fn new(device: Resolved, opts: DetectorOptions) -> Self {
        Registry {
            models: RwLock::new(BTreeMap::new()),
            device,
            opts,
        }
    }

    /// The model deployed under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Detector>> {
        self.models
            .read()
            .expect("registry lock poisoned: this is a bug")
            .get(name)
            .cloned()
    }

    /// Descriptions of every deployed model.
    pub fn list(&self) -> Vec<ModelInfo> {
        self.models
            .read()
            .expect("registry lock poisoned: this is a bug")
            .values()
            .map(|d| d.info.clone())
            .collect()
    }

    /// Loads `dir` and deploys it under `name` in `precision` (`None`: the registry's default,
    /// `--detect-precision`), replacing any model of that name once the new one is ready
    /// (blocking: call from a blocking thread). `quality`: the reduced-precision guard's
    /// result, shown with the model.
    pub fn deploy(
        &self,
        name: &str,
        dir: &Path,
        job_id: Option<String>,
        precision: Option<Precision>,
        quality: Option<PrecisionComparison>,
    ) -> Result<ModelInfo, DetectError> {
        let mut opts = self.opts.clone();
        opts.precision = precision.unwrap_or(opts.precision);
        let mut detector = Detector::load(name, dir, self.device, opts)?;
        detector.info.job_id = job_id;
        detector.info.quality = quality;
        let info = detector.info.clone();
        self.models
            .write()
            .expect("registry lock poisoned: this is a bug")
            .insert(name.to_string(), Arc::new(detector));
        tracing::info!(model = name, version = %info.version, path = %dir.display(), "model deployed");
        Ok(info)
    }

    /// The device models run on.
    pub fn device(&self) -> Resolved {
        self.device
    }

    /// The executor settings every model gets.
    pub fn options(&self) -> &DetectorOptions {
        &self.opts
    }

    /// Removes a deployed model; in-flight requests finish.
    pub fn remove(&self, name: &str) -> bool {
        self.models
            .write()
            .expect("registry lock poisoned: this is a bug")
            .remove(name)
            .is_some()
    }
}
