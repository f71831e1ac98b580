//! The artifact store shared by every machine (`--artifacts file:///path` or
//! `s3://bucket/prefix`, through the `object_store` crate): job directories (checkpoints, best
//! model, reports), uploaded datasets and dataset versions are mirrored there under their path
//! relative to the data dir, and fetched by a machine that lacks them (a worker resuming
//! another's job, an API node serving a model another machine trained). Files stream in both
//! directions (8 MiB parts up, chunks down): nothing reads a whole checkpoint into memory.
//!
//! A checkpoint counts only once its `trainer_state.json` exists (see
//! `train::checkpoint::list`), so files go up with every directory's `trainer_state.json`
//! last: a worker killed mid-upload leaves an incomplete checkpoint that resuming skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Artifact store failures.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("--artifacts {0:?}: must be file:///absolute/path or s3://bucket[/prefix]")]
    Url(String),
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Files up to this size go up in one request; larger ones in parts of this size.
const PART: usize = 8 << 20;

/// A connected artifact store.
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The URL as given (shown by /info and logs; no credentials in it).
    pub url: String,
}

/// What a sync moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub files: usize,
    pub bytes: u64,
    pub deleted: usize,
}

impl Artifacts {
    /// Opens `file:///path` (created if missing) or `s3://bucket/prefix` (endpoint, region and
    /// credentials from `AWS_*`: `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    pub fn open(url: &str) -> Result<Artifacts, ArtifactError> {
        let bad = || ArtifactError::Url(url.to_string());
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad());
            }
            std::fs::create_dir_all(path).map_err(io(Path::new(path)))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)?;
            return Ok(Artifacts {
                store: Arc::new(fs),
                prefix: String::new(),
                url: url.into(),
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad());
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            return Ok(Artifacts {
                store: Arc::new(s3),
                prefix: prefix.trim_matches('/').to_string(),
                url: url.into(),
            });
        }
        Err(bad())
    }

    fn key(&self, rel: &str) -> Key {
        let rel = rel.trim_matches('/');
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Checks that the store answers (lists one key).
    pub async fn check(&self) -> Result<(), ArtifactError> {
        let mut l = self.store.list(Some(&self.key("")));
        let _ = l.try_next().await?;
        Ok(())
    }

    /// Uploads one file to `rel`, streaming it in parts when large.
    pub async fn put_file(&self, local: &Path, rel: &str) -> Result<u64, ArtifactError> {
        let key = self.key(rel);
        let mut f = tokio::fs::File::open(local).await.map_err(io(local))?;
        let len = f.metadata().await.map_err(io(local))?.len();
        if len as usize <= PART {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).await.map_err(io(local))?;
            self.store.put(&key, PutPayload::from(buf)).await?;
            return Ok(len);
        }
        let upload = self.store.put_multipart(&key).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(io(local))?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4).await?;
            w.write(&buf[..n]);
        }
        w.finish().await?;
        Ok(len)
    }

    /// Remote files under `rel_dir` (relative names → size).
    async fn listing(&self, rel_dir: &str) -> Result<HashMap<String, u64>, ArtifactError> {
        let base = self.key(rel_dir);
        let base_s = format!("{}/", base.as_ref());
        let mut out = HashMap::new();
        let mut l = self.store.list(Some(&base));
        while let Some(m) = l.try_next().await? {
            if let Some(name) = m.location.as_ref().strip_prefix(&base_s) {
                out.insert(name.to_string(), m.size);
            }
        }
        Ok(out)
    }

    /// Mirrors `local_dir` to `rel_dir`: files missing remotely or of another size, and those
    /// named in `always` (rewritten in place, e.g. reports), go up — each directory's
    /// `trainer_state.json` after its other files; remote files no longer present locally
    /// (rotated checkpoints) are deleted after the uploads.
    pub async fn push_dir(
        &self,
        local_dir: &Path,
        rel_dir: &str,
        always: &[&str],
    ) -> Result<Moved, ArtifactError> {
        let remote = self.listing(rel_dir).await?;
        let dir = local_dir.to_path_buf();
        let mut files = tokio::task::spawn_blocking(move || walk(&dir))
            .await
            .map_err(|e| ArtifactError::Io {
                path: local_dir.to_path_buf(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(local_dir))?;
        files.sort_by_key(|(rel, _)| (rel.ends_with("trainer_state.json"), rel.clone()));
        let mut moved = Moved::default();
        for (rel, size) in &files {
            let changed = remote.get(rel) != Some(size)
                || always
                    .iter()
                    .any(|a| rel == a || rel.ends_with(&format!("/{a}")));
            if changed {
                moved.bytes += self
                    .put_file(&local_dir.join(rel), &format!("{rel_dir}/{rel}"))
                    .await?;
                moved.files += 1;
            }
        }
        for name in remote.keys() {
            if !files.iter().any(|(rel, _)| rel == name) {
                self.store
                    .delete(&self.key(&format!("{rel_dir}/{name}")))
                    .await?;
                moved.deleted += 1;
            }
        }
        Ok(moved)
    }

    /// Fetches the files under `rel_dir` missing locally (or of another size) into
    /// `local_dir`, each through a temporary file renamed into place.
    pub async fn pull_dir(&self, rel_dir: &str, local_dir: &Path) -> Result<Moved, ArtifactError> {
        let mut moved = Moved::default();
        for (name, size) in self.listing(rel_dir).await? {
            if name.split('/').any(|p| p == ".." || p.is_empty()) {
                continue;
            }
            let dest = local_dir.join(&name);
            if tokio::fs::metadata(&dest)
                .await
                .is_ok_and(|m| m.len() == size)
            {
                continue;
            }
            moved.bytes += self.get_file(&format!("{rel_dir}/{name}"), &dest).await?;
            moved.files += 1;
        }
        Ok(moved)
    }

    /// Downloads one object to `dest` (streamed; renamed into place when complete).
    pub async fn get_file(&self, rel: &str, dest: &Path) -> Result<u64, ArtifactError> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
        }
        let tmp = dest.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
        let got = self.store.get(&self.key(rel)).await?;
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        let mut n = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await.map_err(io(&tmp))?;
            n += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io(&tmp))?;
        drop(out);
        tokio::fs::rename(&tmp, dest).await.map_err(io(dest))?;
        Ok(n)
    }
}

/// Files under `dir` (relative '/'-separated names and sizes); symlinks are not followed.
fn walk(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.contains(".part-") {
                    continue;
                }
                let rel = p
                    .strip_prefix(dir)
                    .map_err(std::io::Error::other)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, e.metadata()?.len()));
            }
        }
    }
    Ok(out)
}
