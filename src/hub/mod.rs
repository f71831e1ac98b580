//! Hugging Face Hub: pull models and datasets into the standard cache (shared with Python's
//! `huggingface_hub`), push fine-tuned models with a model card.
//!
//! Downloads go through `hf-hub` (blobs/snapshots/refs layout). Settings come from the
//! standard variables: `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`/`HF_HUB_CACHE`, and
//! `HF_HUB_OFFLINE=1` (cached files only: hf-hub itself ignores it, so offline lookups read
//! the cache directly). Only the files a run needs are fetched: config, tokenizer files and
//! one weights format (safetensors preferred, `pytorch_model.bin` otherwise).
//! Synchronous: it runs on the job thread.

pub mod card;
pub mod push;

use std::path::{Path, PathBuf};

use hf_hub::api::Progress as HfProgress;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

pub use push::push_model;

/// Download progress of one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Download {
    pub repo: String,
    pub file: String,
    pub bytes: u64,
    pub total: u64,
}

/// Why a Hub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "HF_HUB_OFFLINE is set and {repo} has no cached {what} (missing: {missing}); run once online or unset HF_HUB_OFFLINE"
    )]
    Offline {
        repo: String,
        what: &'static str,
        missing: String,
    },
    #[error("{repo}: {message}")]
    NotFound { repo: String, message: String },
    #[error("{repo}: {message}")]
    Http { repo: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub endpoint: String,
    pub token: Option<String>,
    pub cache_dir: PathBuf,
    pub offline: bool,
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl HubConfig {
    /// Reads the standard `HF_*` variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let base = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            base.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                std::fs::read_to_string(home.join("token"))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        HubConfig {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token,
            cache_dir,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
        }
    }
}

/// A Hub client bound to one configuration.
#[derive(Debug, Clone)]
pub struct HubClient {
    pub config: HubConfig,
}

struct ProgressAdapter<'a> {
    repo: String,
    file: String,
    bytes: u64,
    total: u64,
    last: std::time::Instant,
    sink: &'a mut dyn FnMut(Download),
}

impl HfProgress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.emit();
    }
    fn update(&mut self, size: usize) {
        self.bytes += size as u64;
        if self.last.elapsed().as_millis() >= 500 {
            self.emit();
        }
    }
    fn finish(&mut self) {
        self.bytes = self.bytes.max(self.total);
        self.emit();
    }
}

impl ProgressAdapter<'_> {
    fn emit(&mut self) {
        self.last = std::time::Instant::now();
        (self.sink)(Download {
            repo: self.repo.clone(),
            file: self.file.clone(),
            bytes: self.bytes,
            total: self.total,
        });
    }
}

/// Tokenizer and config files a model run uses, when the repo has them: byte-level BPE
/// (`vocab.json` + `merges.txt`), SentencePiece (`spm.model` for DeBERTa-v2/v3,
/// `sentencepiece.bpe.model` for XLM-R) or `tokenizer.json`.
const MODEL_SIDE_FILES: [&str; 8] = [
    "config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

impl HubClient {
    pub fn new(config: HubConfig) -> Self {
        HubClient { config }
    }

    /// From the standard environment variables.
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    fn api(&self) -> Result<Api, HubError> {
        ApiBuilder::new()
            .with_endpoint(self.config.endpoint.clone())
            .with_cache_dir(self.config.cache_dir.clone())
            .with_token(self.config.token.clone())
            .with_progress(false)
            .with_retries(2)
            .build()
            .map_err(|e| HubError::Http {
                repo: String::new(),
                message: e.to_string(),
            })
    }

    /// The repo at a revision; refuses revisions that are not ref names or commit ids (they
    /// become paths under the cache).
    fn repo(kind: RepoType, id: &str, revision: Option<&str>) -> Result<Repo, HubError> {
        let revision = revision.unwrap_or("main");
        if !is_valid_revision(revision) {
            return Err(HubError::NotFound {
                repo: id.into(),
                message: format!("invalid revision {revision:?}"),
            });
        }
        Ok(Repo::with_revision(
            id.to_string(),
            kind,
            revision.to_string(),
        ))
    }

    fn http_error(repo: &str, e: ApiError) -> HubError {
        let message = e.to_string();
        if message.contains("404") || message.contains("401") {
            HubError::NotFound {
                repo: repo.into(),
                message: format!(
                    "not found or not accessible ({message}); check the id, revision and HF_TOKEN"
                ),
            }
        } else {
            HubError::Http {
                repo: repo.into(),
                message,
            }
        }
    }

    /// Files of a repo at a revision.
    fn list_files(&self, repo: &Repo) -> Result<Vec<String>, HubError> {
        let api = self.api()?;
        let info = api
            .repo(repo.clone())
            .info()
            .map_err(|e| Self::http_error(&repo.url(), e))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    fn fetch(
        &self,
        repo: &Repo,
        files: &[String],
        progress: &mut dyn FnMut(Download),
    ) -> Result<PathBuf, HubError> {
        let api = self.api()?;
        let handle = api.repo(repo.clone());
        let cache = Cache::new(self.config.cache_dir.clone()).repo(repo.clone());
        let mut snapshot = None;
        for f in files {
            let path = match cache.get(f) {
                Some(p) => p,
                None => {
                    let adapter = ProgressAdapter {
                        repo: repo.url(),
                        file: f.clone(),
                        bytes: 0,
                        total: 0,
                        last: std::time::Instant::now(),
                        sink: progress,
                    };
                    handle
                        .download_with_progress(f, adapter)
                        .map_err(|e| Self::http_error(&repo.url(), e))?
                }
            };
            snapshot = Some(snapshot_root(&path, f));
        }
        snapshot.ok_or_else(|| HubError::NotFound {
            repo: repo.url(),
            message: "nothing to download".into(),
        })
    }

    /// Cached copies only (`HF_HUB_OFFLINE`): the snapshot holding `needed`, and which of
    /// `optional` are there.
    fn cached(
        &self,
        repo: &Repo,
        needed: &[&[&str]],
        what: &'static str,
    ) -> Result<PathBuf, HubError> {
        let cache = Cache::new(self.config.cache_dir.clone()).repo(repo.clone());
        let mut root = None;
        let mut missing = Vec::new();
        for alternatives in needed {
            match alternatives
                .iter()
                .find_map(|f| cache.get(f).map(|p| (p, *f)))
            {
                Some((p, f)) => root = Some(snapshot_root(&p, f)),
                None => missing.push(alternatives.join(" or ")),
            }
        }
        match root {
            Some(r) if missing.is_empty() => Ok(r),
            _ => Err(HubError::Offline {
                repo: format!("{} (revision {})", repo.url(), repo.revision()),
                what,
                missing: missing.join(", "),
            }),
        }
    }

    /// A model repo's config, tokenizer files and one weights format, in the cache; returns the
    /// snapshot directory.
    pub fn model(
        &self,
        id: &str,
        revision: Option<&str>,
        progress: &mut dyn FnMut(Download),
    ) -> Result<PathBuf, HubError> {
        let repo = Self::repo(RepoType::Model, id, revision)?;
        if self.config.offline {
            return self.cached(
                &repo,
                &[
                    &["config.json"],
                    &[
                        "tokenizer.json",
                        "vocab.json",
                        "spm.model",
                        "sentencepiece.bpe.model",
                    ],
                    &["model.safetensors", "pytorch_model.bin"],
                ],
                "model files",
            );
        }
        let files = self.list_files(&repo)?;
        let mut wanted: Vec<String> = MODEL_SIDE_FILES
            .iter()
            .filter(|f| files.iter().any(|x| x == *f))
            .map(|f| f.to_string())
            .collect();
        if !wanted.iter().any(|f| f == "config.json") {
            return Err(HubError::NotFound {
                repo: id.into(),
                message: "no config.json: not a transformers model".into(),
            });
        }
        wanted.extend(choose_weights(&files).ok_or_else(|| HubError::NotFound {
            repo: id.into(),
            message: "no model.safetensors or pytorch_model.bin".into(),
        })?);
        self.fetch(&repo, &wanted, progress)
    }

    /// A dataset repo's data files for `splits` (plus card and label files); falls back to the
    /// auto-converted `refs/convert/parquet` branch when the revision holds no usable files.
    pub fn dataset(
        &self,
        id: &str,
        revision: Option<&str>,
        splits: &[&str],
        progress: &mut dyn FnMut(Download),
    ) -> Result<PathBuf, HubError> {
        let mut tried = Vec::new();
        let revisions: Vec<Option<&str>> = match revision {
            Some(r) => vec![Some(r)],
            None => vec![None, Some("refs/convert/parquet")],
        };
        for rev in revisions {
            let repo = Self::repo(RepoType::Dataset, id, rev)?;
            if self.config.offline {
                if let Some(root) = offline_dataset(&self.config.cache_dir, &repo, splits) {
                    return Ok(root);
                }
                tried.push(rev.unwrap_or("main").to_string());
                continue;
            }
            let files = match self.list_files(&repo) {
                Ok(f) => f,
                Err(e) if rev.is_some() && revision.is_none() => {
                    tried.push(format!("{} ({e})", rev.unwrap_or("main")));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let data: Vec<String> = files
                .iter()
                .filter(|f| is_split_file(f, splits))
                .cloned()
                .collect();
            if splits
                .iter()
                .all(|s| data.iter().any(|f| is_split_file(f, &[s])))
            {
                let mut wanted = data;
                wanted.extend(
                    [
                        "README.md",
                        "labels.json",
                        "dataset_info.json",
                        "dataset_infos.json",
                    ]
                    .iter()
                    .filter(|f| files.iter().any(|x| x == *f))
                    .map(|f| f.to_string()),
                );
                let root = self.fetch(&repo, &wanted, progress)?;
                // The parquet branch has no card: bring the main branch's for ClassLabel names.
                if rev == Some("refs/convert/parquet") && !root.join("README.md").exists() {
                    let main = Self::repo(RepoType::Dataset, id, None)?;
                    if let Ok(card) = self.fetch(&main, &["README.md".to_string()], progress) {
                        let _ = std::fs::copy(card.join("README.md"), root.join("README.md"));
                    }
                }
                return Ok(root);
            }
            tried.push(rev.unwrap_or("main").to_string());
        }
        if self.config.offline {
            return Err(HubError::Offline {
                repo: format!("datasets/{id}"),
                what: "dataset files",
                missing: format!("splits {splits:?} (revisions tried: {})", tried.join(", ")),
            });
        }
        Err(HubError::NotFound {
            repo: format!("datasets/{id}"),
            message: format!(
                "no data files for splits {splits:?} (revisions tried: {})",
                tried.join(", ")
            ),
        })
    }
}

/// Whether `r` can name a revision: a 40-hex commit id, or a branch or tag name as git allows
/// them (`main`, `v1.0`, `refs/convert/parquet`): ASCII letters, digits and `._-/`, no empty,
/// `.`-leading or `..` component, nothing absolute. The revision becomes a path under the
/// cache (`refs/<revision>`), so anything else could read files elsewhere.
pub fn is_valid_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 200
        && r.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && !part.ends_with(".lock")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        && !r.contains("..")
}

/// The snapshot directory that holds `file` (`.../snapshots/<commit>/<file>`).
fn snapshot_root(path: &Path, file: &str) -> PathBuf {
    let mut root = path.to_path_buf();
    for _ in file.split('/') {
        root.pop();
    }
    root
}

/// Which weight files to download: safetensors preferred, sharded or not, else PyTorch.
pub fn choose_weights(files: &[String]) -> Option<Vec<String>> {
    let has = |f: &str| files.iter().any(|x| x == f);
    for single in ["model.safetensors", "pytorch_model.bin"] {
        if has(single) {
            return Some(vec![single.into()]);
        }
        let index = format!("{single}.index.json");
        if has(&index) {
            let stem = single.split('.').next().unwrap_or_default();
            let mut v = vec![index];
            v.extend(
                files
                    .iter()
                    .filter(|f| f.starts_with(&format!("{stem}-")) && !f.ends_with(".json"))
                    .cloned(),
            );
            return Some(v);
        }
    }
    None
}

/// A data file of one of `splits`: `train.jsonl`, `data/train-0000.parquet`, `default/train/0000.parquet`.
pub fn is_split_file(path: &str, splits: &[&str]) -> bool {
    let data_ext = [".parquet", ".jsonl", ".json", ".csv"]
        .iter()
        .any(|e| path.ends_with(e));
    if !data_ext
        || path.ends_with("dataset_info.json")
        || path.ends_with("labels.json")
        || path.ends_with("dataset_infos.json")
    {
        return false;
    }
    let parts: Vec<&str> = path.split('/').collect();
    let name = parts.last().copied().unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    splits.iter().any(|s| {
        stem == *s
            || stem.starts_with(&format!("{s}-"))
            || stem.starts_with(&format!("{s}_"))
            || (parts.len() >= 2 && parts[parts.len() - 2] == *s)
    })
}

/// Offline: the cached snapshot of a dataset revision, if its ref resolves and it holds a
/// data file for every split.
fn offline_dataset(cache_dir: &Path, repo: &Repo, splits: &[&str]) -> Option<PathBuf> {
    let folder = cache_dir.join(repo.folder_name());
    let commit = std::fs::read_to_string(folder.join("refs").join(repo.revision())).ok()?;
    let commit = commit.trim();
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let snap = folder.join("snapshots").join(commit);
    let mut files = Vec::new();
    let mut stack = vec![snap.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(&snap) {
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    splits
        .iter()
        .all(|s| files.iter().any(|f| is_split_file(f, &[s])))
        .then_some(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn weights_preference() {
        assert_eq!(
            choose_weights(&v(&["pytorch_model.bin", "model.safetensors"])),
            Some(v(&["model.safetensors"]))
        );
        assert_eq!(
            choose_weights(&v(&["pytorch_model.bin", "config.json"])),
            Some(v(&["pytorch_model.bin"]))
        );
        assert_eq!(
            choose_weights(&v(&[
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])),
            Some(v(&[
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]))
        );
        assert_eq!(choose_weights(&v(&["tf_model.h5"])), None);
    }

    #[test]
    fn revisions() {
        for ok in [
            "main",
            "v1.0",
            "refs/convert/parquet",
            "refs/pr/3",
            &"a".repeat(40),
        ] {
            assert!(is_valid_revision(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../../x",
            "a/../b",
            "a//b",
            ".hidden",
            "a/",
            "a b",
            "x\0",
            "main.lock",
            "ré",
        ] {
            assert!(!is_valid_revision(bad), "{bad}");
        }
    }

    #[test]
    fn split_files() {
        assert!(is_split_file("default/train/0000.parquet", &["train"]));
        assert!(is_split_file(
            "data/validation-00000-of-00001.parquet",
            &["validation"]
        ));
        assert!(is_split_file("test.jsonl", &["test"]));
        assert!(!is_split_file("README.md", &["train"]));
        assert!(!is_split_file("data/train.txt", &["train"]));
    }
}
