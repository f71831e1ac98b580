//! Upload a model directory to the Hub: create the repo (409 = exists), `preupload` to learn
//! which files go through LFS, LFS batch upload for those, then one commit (NDJSON) with the
//! small files inline — the endpoints `huggingface_hub.upload_folder` uses.
//!
//! Large files are hashed and uploaded as streams from disk (a 1.4 GB model is never read
//! into memory); every request is retried on transient failures (network errors, 408, 429,
//! 5xx) with exponential backoff, honouring `Retry-After`.

// `ureq::Error` is large, but it is ureq's, and a failed request is not a hot path.
#![allow(clippy::result_large_err)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{HubConfig, HubError};

/// Tries per request.
const ATTEMPTS: u32 = 4;
/// First backoff; doubled per retry, at most [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn err(repo: &str, what: &str, e: impl std::fmt::Display) -> HubError {
    HubError::Http {
        repo: repo.into(),
        message: format!("{what}: {e}"),
    }
}

/// Whether a failed request may succeed if sent again.
fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Transport(_) => true,
        ureq::Error::Status(code, _) => matches!(code, 408 | 429 | 500..=599),
    }
}

/// `call` until it succeeds, fails for good, or [`ATTEMPTS`] are used.
fn with_retries<T>(
    what: &str,
    mut call: impl FnMut() -> Result<T, ureq::Error>,
) -> Result<T, ureq::Error> {
    let mut wait = BACKOFF;
    for attempt in 1.. {
        match call() {
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                let told = match &e {
                    ureq::Error::Status(_, r) => r
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs),
                    _ => None,
                };
                let pause = told.unwrap_or(wait).min(MAX_BACKOFF);
                tracing::warn!(request = what, attempt, error = %e, ?pause, "Hub request failed; retrying");
                std::thread::sleep(pause);
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            r => return r,
        }
    }
    unreachable!("the loop returns")
}

/// A file to upload: from disk, or generated (the model card).
struct Upload {
    /// Path in the repo.
    rel: String,
    content: Content,
    size: u64,
}

enum Content {
    Disk(PathBuf),
    Memory(Vec<u8>),
}

impl Upload {
    fn reader(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.content {
            Content::Disk(p) => Box::new(std::fs::File::open(p)?),
            Content::Memory(b) => Box::new(b.as_slice()),
        })
    }

    /// The first 512 bytes (preupload decides LFS from them and the size).
    fn sample(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(512);
        self.reader()?.take(512).read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn sha256(&self) -> std::io::Result<String> {
        let mut h = Sha256::new();
        std::io::copy(&mut self.reader()?, &mut h)?;
        Ok(hex(&h.finalize()))
    }

    fn bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(self.size as usize);
        self.reader()?.read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Every file under `dir` except a README, then the card as `README.md`.
fn uploads(dir: &Path, card: &str) -> std::io::Result<Vec<Upload>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir)
                .expect("walked from dir: this is a bug")
                .to_string_lossy()
                .replace('\\', "/");
            if rel != "README.md" {
                let size = std::fs::metadata(&p)?.len();
                out.push(Upload {
                    rel,
                    content: Content::Disk(p),
                    size,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.push(Upload {
        rel: "README.md".into(),
        size: card.len() as u64,
        content: Content::Memory(card.as_bytes().to_vec()),
    });
    Ok(out)
}

struct Session<'a> {
    agent: ureq::Agent,
    endpoint: &'a str,
    auth: String,
    repo_id: &'a str,
}

impl Session<'_> {
    fn create_repo(&self, private: bool) -> Result<(), HubError> {
        let (org, name) = self.repo_id.split_once('/').ok_or_else(|| HubError::Http {
            repo: self.repo_id.into(),
            message: "repo_id must be owner/name".into(),
        })?;
        let body = json!({"name": name, "organization": org, "private": private, "type": "model"});
        match with_retries("create repo", || {
            self.agent
                .post(&format!("{}/api/repos/create", self.endpoint))
                .set("Authorization", &self.auth)
                .send_json(body.clone())
        }) {
            Ok(_) | Err(ureq::Error::Status(409, _)) => Ok(()),
            Err(e) => Err(err(self.repo_id, "create repo", e)),
        }
    }

    /// The repo paths the Hub wants through LFS.
    fn lfs_paths(&self, files: &[Upload]) -> Result<Vec<String>, HubError> {
        let listed = files
            .iter()
            .map(|f| Ok(json!({"path": f.rel, "size": f.size, "sample": B64.encode(f.sample()?)})))
            .collect::<std::io::Result<Vec<_>>>()?;
        let pre: Value = with_retries("preupload", || {
            self.agent
                .post(&format!(
                    "{}/api/models/{}/preupload/main",
                    self.endpoint, self.repo_id
                ))
                .set("Authorization", &self.auth)
                .send_json(json!({"files": listed}))
        })
        .map_err(|e| err(self.repo_id, "preupload", e))?
        .into_json()
        .map_err(|e| err(self.repo_id, "preupload response", e))?;
        Ok(pre["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|f| f["uploadMode"] == "lfs")
                    .filter_map(|f| f["path"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Uploads the LFS objects the Hub does not have yet, streamed from disk.
    fn upload_lfs(&self, lfs: &[(&Upload, String)]) -> Result<(), HubError> {
        if lfs.is_empty() {
            return Ok(());
        }
        let request = json!({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
            "objects": lfs.iter().map(|(f, oid)| json!({"oid": oid, "size": f.size})).collect::<Vec<_>>()})
        .to_string();
        let batch: Value = with_retries("lfs batch", || {
            self.agent
                .post(&format!(
                    "{}/{}.git/info/lfs/objects/batch",
                    self.endpoint, self.repo_id
                ))
                .set("Authorization", &self.auth)
                .set("Accept", "application/vnd.git-lfs+json")
                .set("Content-Type", "application/vnd.git-lfs+json")
                .send_string(&request)
        })
        .map_err(|e| err(self.repo_id, "lfs batch", e))?
        .into_json()
        .map_err(|e| err(self.repo_id, "lfs batch response", e))?;
        for obj in batch["objects"].as_array().into_iter().flatten() {
            let oid = obj["oid"].as_str().unwrap_or_default();
            let Some((file, _)) = lfs.iter().find(|(_, o)| o == oid) else {
                continue;
            };
            if let Some(e) = obj.get("error") {
                return Err(err(self.repo_id, &format!("lfs {}", file.rel), e));
            }
            let Some(upload) = obj.pointer("/actions/upload") else {
                continue; // already stored
            };
            let href = upload["href"]
                .as_str()
                .ok_or_else(|| err(self.repo_id, "lfs", "upload action without href"))?;
            with_retries("lfs upload", || {
                let mut req = self
                    .agent
                    .put(href)
                    .set("Content-Length", &file.size.to_string());
                for (k, v) in upload["header"].as_object().into_iter().flatten() {
                    req = req.set(k, v.as_str().unwrap_or_default());
                }
                let body = file.reader().map_err(ureq::Error::from)?;
                req.send(body)
            })
            .map_err(|e| err(self.repo_id, &format!("lfs upload {}", file.rel), e))?;
            if let Some(verify) = obj.pointer("/actions/verify") {
                let href = verify["href"].as_str().unwrap_or_default();
                with_retries("lfs verify", || {
                    let mut req = self.agent.post(href).set("Authorization", &self.auth);
                    for (k, v) in verify["header"].as_object().into_iter().flatten() {
                        req = req.set(k, v.as_str().unwrap_or_default());
                    }
                    req.send_json(json!({"oid": oid, "size": file.size}))
                })
                .map_err(|e| err(self.repo_id, &format!("lfs verify {}", file.rel), e))?;
            }
        }
        Ok(())
    }

    /// One commit: LFS files by pointer, the others inline.
    fn commit(&self, ops: &[Value]) -> Result<String, HubError> {
        let body: String = ops.iter().map(|o| format!("{o}\n")).collect();
        let resp: Value = with_retries("commit", || {
            self.agent
                .post(&format!(
                    "{}/api/models/{}/commit/main",
                    self.endpoint, self.repo_id
                ))
                .set("Authorization", &self.auth)
                .set("Content-Type", "application/x-ndjson")
                .send_string(&body)
        })
        .map_err(|e| err(self.repo_id, "commit", e))?
        .into_json()
        .map_err(|e| err(self.repo_id, "commit response", e))?;
        Ok(resp["commitUrl"]
            .as_str()
            .or(resp["commitOid"].as_str())
            .unwrap_or("committed")
            .to_string())
    }
}

/// Pushes every file of `dir` plus `README.md` = `card` to `repo_id` (created if needed,
/// `private` honoured). Returns the commit URL (or oid).
pub fn push_model(
    cfg: &HubConfig,
    repo_id: &str,
    private: bool,
    dir: &Path,
    card: &str,
    summary: &str,
) -> Result<String, HubError> {
    if cfg.offline {
        return Err(HubError::Http {
            repo: repo_id.into(),
            message: "HF_HUB_OFFLINE is set: cannot push".into(),
        });
    }
    let token = cfg.token.clone().ok_or_else(|| HubError::Http {
        repo: repo_id.into(),
        message: "pushing needs HF_TOKEN".into(),
    })?;
    let session = Session {
        agent: ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .build(),
        endpoint: &cfg.endpoint,
        auth: format!("Bearer {token}"),
        repo_id,
    };
    session.create_repo(private)?;
    let files = uploads(dir, card)?;
    let lfs_paths = session.lfs_paths(&files)?;
    let mut ops = vec![json!({"key": "header", "value": {"summary": summary, "description": ""}})];
    let mut lfs = Vec::new();
    for f in &files {
        if lfs_paths.contains(&f.rel) {
            let oid = f.sha256()?;
            ops.push(json!({"key": "lfsFile", "value": {"path": f.rel, "algo": "sha256", "oid": oid, "size": f.size}}));
            lfs.push((f, oid));
        } else {
            ops.push(json!({"key": "file", "value": {"path": f.rel, "content": B64.encode(f.bytes()?), "encoding": "base64"}}));
        }
    }
    session.upload_lfs(&lfs)?;
    session.commit(&ops)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
