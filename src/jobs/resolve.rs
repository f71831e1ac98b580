//! From a job spec to a runnable [`RunConfig`]: local paths checked against the allowed roots,
//! Hub ids fetched into the standard cache, uploaded datasets found under the data dir.

use std::path::{Path, PathBuf};

use crate::data::dataset::DatasetOptions;
use crate::data::{DataError, Dataset};
use crate::hub::{HubClient, HubError};
use crate::model::backend::Resolved;
use crate::train::{RunConfig, TrainError};
use crate::validate::FieldError;

use super::spec::JobSpec;

/// Where local paths may point and where uploads live.
#[derive(Debug, Clone, Default)]
pub struct ResolveContext {
    /// Canonical roots local paths must resolve under — the path itself and every file read
    /// below it, symlinks followed; `None` allows any path (CLI).
    pub allowed_roots: Option<Vec<PathBuf>>,
    /// What relative paths are relative to (the service's data dir); `None`: the working
    /// directory.
    pub base_dir: Option<PathBuf>,
    /// Uploaded datasets live in `<uploads>/<id>/`.
    pub uploads: Option<PathBuf>,
    /// Hub access (downloads into the HF cache).
    pub hub: Option<HubClient>,
}

/// Most files checked under one model or dataset directory.
const MAX_FILES: usize = 10_000;

/// `.` and `..` resolved without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
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

impl From<ResolveError> for TrainError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Field(f) => TrainError::Spec(f),
            ResolveError::Data(d) => TrainError::Data(d),
            ResolveError::Hub(h) => TrainError::Hub(h.to_string()),
        }
    }
}

impl ResolveContext {
    fn allowed(&self, canonical: &Path) -> bool {
        self.allowed_roots
            .as_ref()
            .is_none_or(|roots| roots.iter().any(|r| canonical.starts_with(r)))
    }

    /// Canonical path of `raw` if it exists and lies under an allowed root. Anything outside
    /// is "not in an allowed directory" whether it exists or not (no existence oracle);
    /// "does not exist" only for paths inside.
    pub fn local_path(&self, field: &str, raw: &str) -> Result<PathBuf, FieldError> {
        let outside = || {
            FieldError::new(
                field,
                format!(
                    "{raw:?} is not in an allowed directory (--allow-path, --data-dir, the bundled assets)"
                ),
            )
        };
        if raw.contains('\0') {
            return Err(outside());
        }
        let mut path = match raw.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .unwrap_or_else(|| PathBuf::from(raw)),
            None => PathBuf::from(raw),
        };
        if path.is_relative()
            && let Some(base) = &self.base_dir
        {
            path = base.join(path);
        }
        match path.canonicalize() {
            Ok(c) if self.allowed(&c) => Ok(c),
            Ok(_) => Err(outside()),
            Err(_) => {
                // The nearest existing ancestor decides: outside the roots, say nothing more.
                let lexical = lexical(&path);
                let ancestor = lexical
                    .ancestors()
                    .find_map(|a| a.canonicalize().ok())
                    .unwrap_or_default();
                if self.allowed(&ancestor) {
                    Err(FieldError::new(field, format!("{raw:?} does not exist")))
                } else {
                    Err(outside())
                }
            }
        }
    }

    /// Checks that every file under `dir` (a model or dataset directory) resolves inside the
    /// allowed roots: a directory inside them whose files link elsewhere is refused.
    pub fn confine(&self, field: &str, raw: &str, dir: &Path) -> Result<(), FieldError> {
        if self.allowed_roots.is_none() {
            return Ok(());
        }
        let mut stack = vec![(dir.to_path_buf(), 0usize)];
        let mut seen = 0usize;
        while let Some((d, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                seen += 1;
                if seen > MAX_FILES {
                    return Err(FieldError::new(
                        field,
                        format!("{raw:?} holds more than {MAX_FILES} files"),
                    ));
                }
                let p = e.path();
                let name = e.file_name().to_string_lossy().to_string();
                let Ok(c) = p.canonicalize() else {
                    continue; // a dangling link: nothing can be read through it
                };
                if !self.allowed(&c) {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "{raw:?}: {name} links outside the allowed directories (--allow-path, --data-dir)"
                        ),
                    ));
                }
                if c.is_dir() && depth < 4 {
                    stack.push((c, depth + 1));
                }
            }
        }
        Ok(())
    }

    /// A local model directory: allowed, confined, with a config.json.
    pub fn local_model_dir(&self, field: &str, raw: &str) -> Result<PathBuf, FieldError> {
        let dir = self.local_path(field, raw)?;
        if !dir.join("config.json").is_file() {
            return Err(FieldError::new(
                field,
                format!("{raw:?} has no config.json"),
            ));
        }
        self.confine(field, raw, &dir)?;
        Ok(dir)
    }

    /// A local dataset directory: allowed and confined.
    pub fn local_dataset_dir(&self, field: &str, raw: &str) -> Result<PathBuf, FieldError> {
        let dir = self.local_path(field, raw)?;
        self.confine(field, raw, &dir)?;
        Ok(dir)
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
        Ok(self.local_model_dir("model.checkpoint", &spec.model.checkpoint)?)
    }

    /// The local dataset folder of `spec.dataset`.
    pub fn dataset_dir(
        &self,
        spec: &JobSpec,
        progress: &mut dyn FnMut(crate::hub::Download),
    ) -> Result<PathBuf, ResolveError> {
        let d = &spec.dataset;
        if let Some(p) = &d.path {
            return Ok(self.local_dataset_dir("dataset.path", p)?);
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
            self.local_model_dir("model.checkpoint", &spec.model.checkpoint)?;
        }
        if let Some(p) = &spec.dataset.path {
            self.local_dataset_dir("dataset.path", p)?;
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
        gate: None,
        fence: None,
    })
}
