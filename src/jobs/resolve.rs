//! From a job spec to a runnable [`RunConfig`]: local paths checked against the allowed roots,
//! Hub ids fetched into the standard cache, uploaded datasets found under the data dir.

use std::path::{Path, PathBuf};

use crate::data::dataset::DatasetOptions;
use crate::data::{DataError, Dataset};
use crate::hub::{HubClient, HubError};
use crate::model::backend::Resolved;
use crate::train::{FieldError, RunConfig};

use super::spec::JobSpec;

/// Where local paths may point and where uploads live.
#[derive(Debug, Clone, Default)]
pub struct ResolveContext {
    /// Roots local paths must resolve under (symlinks followed); `None` allows any path (CLI).
    pub allowed_roots: Option<Vec<PathBuf>>,
    /// Uploaded datasets live in `<uploads>/<id>/`.
    pub uploads: Option<PathBuf>,
    /// Hub access (downloads into the HF cache).
    pub hub: Option<HubClient>,
}

/// Why a spec cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

impl ResolveContext {
    /// Canonical path of `raw` if it exists and lies under an allowed root.
    pub fn local_path(&self, field: &str, raw: &str) -> Result<PathBuf, FieldError> {
        let expanded = match raw.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .unwrap_or_else(|| PathBuf::from(raw)),
            None => PathBuf::from(raw),
        };
        let canonical = expanded
            .canonicalize()
            .map_err(|_| FieldError::new(field, format!("path {raw:?} does not exist")))?;
        if let Some(roots) = &self.allowed_roots
            && !roots
                .iter()
                .any(|r| r.canonicalize().is_ok_and(|r| canonical.starts_with(r)))
        {
            return Err(FieldError::new(
                field,
                format!(
                    "path {raw:?} is outside the allowed directories (--allow-path, --data-dir)"
                ),
            ));
        }
        Ok(canonical)
    }

    /// The local model directory of `spec.model`, downloading from the Hub when needed.
    pub fn model_dir(
        &self,
        spec: &JobSpec,
        progress: &mut dyn FnMut(crate::hub::Download),
    ) -> Result<PathBuf, ResolveError> {
        if spec.model_is_hub() {
            let hub = self.hub.as_ref().ok_or_else(|| {
                FieldError::new("model.checkpoint", "Hub ids are not available here")
            })?;
            return Ok(hub.model(
                &spec.model.checkpoint,
                spec.model.revision.as_deref(),
                progress,
            )?);
        }
        let dir = self.local_path("model.checkpoint", &spec.model.checkpoint)?;
        if !dir.join("config.json").is_file() {
            return Err(FieldError::new(
                "model.checkpoint",
                format!("{} has no config.json", spec.model.checkpoint),
            )
            .into());
        }
        Ok(dir)
    }

    /// The local dataset folder of `spec.dataset`.
    pub fn dataset_dir(
        &self,
        spec: &JobSpec,
        progress: &mut dyn FnMut(crate::hub::Download),
    ) -> Result<PathBuf, ResolveError> {
        let d = &spec.dataset;
        if let Some(p) = &d.path {
            return Ok(self.local_path("dataset.path", p)?);
        }
        if let Some(id) = &d.id {
            let uploads = self.uploads.as_ref().ok_or_else(|| {
                FieldError::new("dataset.id", "uploaded datasets need the service")
            })?;
            let valid = uuid::Uuid::parse_str(id).is_ok();
            let dir = uploads.join(id);
            if !valid || !dir.is_dir() {
                return Err(
                    FieldError::new("dataset.id", format!("no uploaded dataset {id:?}")).into(),
                );
            }
            return Ok(dir);
        }
        let hub_id = d
            .hub_id
            .as_deref()
            .expect("validated: exactly one source: this is a bug");
        let hub = self
            .hub
            .as_ref()
            .ok_or_else(|| FieldError::new("dataset.hub_id", "Hub ids are not available here"))?;
        Ok(hub.dataset(
            hub_id,
            d.revision.as_deref(),
            &[&d.train_split, &d.validation_split, &d.test_split],
            progress,
        )?)
    }

    /// Checks what can be checked at submission without downloading or reading data.
    pub fn precheck(&self, spec: &JobSpec) -> Result<(), FieldError> {
        if !spec.model_is_hub() {
            let dir = self.local_path("model.checkpoint", &spec.model.checkpoint)?;
            if !dir.join("config.json").is_file() {
                return Err(FieldError::new(
                    "model.checkpoint",
                    format!("{} has no config.json", spec.model.checkpoint),
                ));
            }
        }
        if let Some(p) = &spec.dataset.path {
            self.local_path("dataset.path", p)?;
        }
        if let Some(id) = &spec.dataset.id {
            let ok = uuid::Uuid::parse_str(id).is_ok()
                && self.uploads.as_ref().is_some_and(|u| u.join(id).is_dir());
            if !ok {
                return Err(FieldError::new(
                    "dataset.id",
                    format!("no uploaded dataset {id:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Dataset reading options from a spec.
pub fn dataset_options(spec: &JobSpec) -> DatasetOptions {
    let d = &spec.dataset;
    DatasetOptions {
        splits: [
            d.train_split.clone(),
            d.validation_split.clone(),
            d.test_split.clone(),
        ],
        tokens_column: d.tokens_column.clone(),
        tags_column: d.tags_column.clone(),
        labels: d.labels.clone(),
    }
}

/// Resolves paths, loads and validates the dataset: a runnable configuration.
pub fn run_config(
    spec: &JobSpec,
    ctx: &ResolveContext,
    output_dir: &Path,
    device: Resolved,
    progress: &mut dyn FnMut(crate::hub::Download),
) -> Result<RunConfig, ResolveError> {
    let model_dir = ctx.model_dir(spec, progress)?;
    let data_dir = ctx.dataset_dir(spec, progress)?;
    let dataset = Dataset::load(&data_dir, &dataset_options(spec))?;
    Ok(RunConfig {
        model_dir,
        model_name: spec.model.display_name(),
        checkpoint: spec.model.checkpoint.clone(),
        dataset,
        args: spec.training.clone(),
        seed: spec.seed,
        output_dir: output_dir.to_path_buf(),
        device,
    })
}
