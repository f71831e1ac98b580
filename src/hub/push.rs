//! Upload a model directory to the Hub: create the repo (409 = exists), `preupload` to learn
//! which files go through LFS, LFS batch upload for those, then one commit (NDJSON) with the
//! small files inline. The same endpoints `huggingface_hub.upload_folder` uses.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{HubConfig, HubError};

fn err(repo: &str, what: &str, e: impl std::fmt::Display) -> HubError {
    HubError::Http {
        repo: repo.into(),
        message: format!("{what}: {e}"),
    }
}

fn files_under(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("walked from dir: this is a bug")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
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
    let auth = format!("Bearer {token}");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .build();
    let ep = &cfg.endpoint;
    let (org, name) = repo_id.split_once('/').ok_or_else(|| HubError::Http {
        repo: repo_id.into(),
        message: "repo_id must be owner/name".into(),
    })?;

    match agent
        .post(&format!("{ep}/api/repos/create"))
        .set("Authorization", &auth)
        .send_json(json!({"name": name, "organization": org, "private": private, "type": "model"}))
    {
        Ok(_) | Err(ureq::Error::Status(409, _)) => {}
        Err(e) => return Err(err(repo_id, "create repo", e)),
    }

    let mut files: Vec<(String, Vec<u8>)> = files_under(dir)?
        .into_iter()
        .filter(|(rel, _)| rel != "README.md")
        .map(|(rel, p)| std::fs::read(&p).map(|b| (rel, b)))
        .collect::<std::io::Result<_>>()?;
    files.push(("README.md".into(), card.as_bytes().to_vec()));

    let pre: Value = agent
        .post(&format!("{ep}/api/models/{repo_id}/preupload/main"))
        .set("Authorization", &auth)
        .send_json(json!({"files": files.iter().map(|(p, b)| json!({
            "path": p, "size": b.len(), "sample": B64.encode(&b[..b.len().min(512)])
        })).collect::<Vec<_>>()}))
        .map_err(|e| err(repo_id, "preupload", e))?
        .into_json()
        .map_err(|e| err(repo_id, "preupload response", e))?;
    let lfs_paths: Vec<String> = pre["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["uploadMode"] == "lfs")
                .filter_map(|f| f["path"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();

    let mut ops = vec![json!({"key": "header", "value": {"summary": summary, "description": ""}})];
    let mut lfs = Vec::new();
    for (path, bytes) in &files {
        if lfs_paths.contains(path) {
            let oid = hex(&Sha256::digest(bytes));
            lfs.push((path.clone(), oid.clone(), bytes));
            ops.push(json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": bytes.len()}}));
        } else {
            ops.push(json!({"key": "file", "value": {"path": path, "content": B64.encode(bytes), "encoding": "base64"}}));
        }
    }
    if !lfs.is_empty() {
        let batch: Value = agent
            .post(&format!("{ep}/{repo_id}.git/info/lfs/objects/batch"))
            .set("Authorization", &auth)
            .set("Accept", "application/vnd.git-lfs+json")
            .set("Content-Type", "application/vnd.git-lfs+json")
            .send_string(
                &json!({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                    "objects": lfs.iter().map(|(_, oid, b)| json!({"oid": oid, "size": b.len()})).collect::<Vec<_>>()})
                .to_string(),
            )
            .map_err(|e| err(repo_id, "lfs batch", e))?
            .into_json()
            .map_err(|e| err(repo_id, "lfs batch response", e))?;
        for obj in batch["objects"].as_array().into_iter().flatten() {
            let oid = obj["oid"].as_str().unwrap_or_default();
            let Some((path, _, bytes)) = lfs.iter().find(|(_, o, _)| o == oid) else {
                continue;
            };
            if let Some(e) = obj.get("error") {
                return Err(err(repo_id, &format!("lfs {path}"), e));
            }
            let Some(upload) = obj.pointer("/actions/upload") else {
                continue;
            }; // already stored
            let href = upload["href"]
                .as_str()
                .ok_or_else(|| err(repo_id, "lfs", "upload action without href"))?;
            let mut req = agent.put(href);
            for (k, v) in upload["header"].as_object().into_iter().flatten() {
                req = req.set(k, v.as_str().unwrap_or_default());
            }
            req.send_bytes(bytes)
                .map_err(|e| err(repo_id, &format!("lfs upload {path}"), e))?;
            if let Some(verify) = obj.pointer("/actions/verify") {
                let href = verify["href"].as_str().unwrap_or_default();
                let mut req = agent.post(href).set("Authorization", &auth);
                for (k, v) in verify["header"].as_object().into_iter().flatten() {
                    req = req.set(k, v.as_str().unwrap_or_default());
                }
                req.send_json(json!({"oid": oid, "size": bytes.len()}))
                    .map_err(|e| err(repo_id, &format!("lfs verify {path}"), e))?;
            }
        }
    }
    let body: String = ops.iter().map(|o| format!("{o}\n")).collect();
    let resp: Value = agent
        .post(&format!("{ep}/api/models/{repo_id}/commit/main"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/x-ndjson")
        .send_string(&body)
        .map_err(|e| err(repo_id, "commit", e))?
        .into_json()
        .map_err(|e| err(repo_id, "commit response", e))?;
    Ok(resp["commitUrl"]
        .as_str()
        .or(resp["commitOid"].as_str())
        .unwrap_or("committed")
        .to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
