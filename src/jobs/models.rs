//! The model registry: every deployment is recorded (name, content-hash version, source
//! directory and job, who deployed it), the active one per name is served and restored at
//! start, and a name can be rolled back to the version before.

use std::path::Path;

use crate::infer::{DetectError, ModelInfo, Precision, PrecisionComparison};
use crate::store::deployments::{self, DeploymentRow};
use crate::store::{self, StoreError};

use super::Shared;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("model {0:?} is not deployed")]
    NotDeployed(String),
    #[error("{0}")]
    NoPrevious(String),
    #[error("{0}")]
    Mismatch(String),
}

/// Loads `dir`, serves it as `name` in `precision` (`None`: `--detect-precision`) and records
/// the deployment (`by`: api, job, study, project:<id>, startup). A reduced precision is first
/// checked against f32 on the job's validation split (the quality guard, recorded with the
/// deployment).
pub async fn deploy(
    sh: &Shared,
    name: &str,
    dir: &Path,
    job_id: Option<String>,
    precision: Option<Precision>,
    by: &str,
) -> Result<ModelInfo, ModelsError> {
    let precision = precision.unwrap_or(sh.registry.options().precision);
    crate::infer::engine::check_precision(sh.registry.device(), precision).map_err(|e| {
        DetectError::Invalid {
            field: "precision".into(),
            message: e.to_string(),
        }
    })?;
    let _one_at_a_time = sh.deployments.lock().await;
    // A job's best model may have been trained on another machine: this machine's copy,
    // fetched from the artifact store when missing.
    let local = sh.localize(&dir.display().to_string());
    if sh.artifacts.is_some() && local.starts_with(&sh.data_dir) {
        sh.pull_dir(&local)
            .await
            .map_err(|e| StoreError::Conflict(format!("fetching the model: {e}")))?;
    }
    let dir = local.as_path();
    let quality = guard(sh, dir, job_id.as_deref(), precision).await;
    let info = load(sh, name, dir, job_id, precision, quality).await?;
    let quality = match &info.quality {
        Some(q) => Some(serde_json::to_string(q).map_err(|e| {
            StoreError::Conflict(format!("quality guard result not serialisable: {e}"))
        })?),
        None => None,
    };
    deployments::activate_new(
        &sh.pool,
        deployments::NewDeployment {
            name,
            version: &info.version,
            path: &dir.display().to_string(),
            job_id: info.job_id.as_deref(),
            by,
            precision: precision.as_str(),
            quality: quality.as_deref(),
        },
    )
    .await?;
    Ok(info)
}

/// Most validation sentences the quality guard evaluates (twice: f32 and the reduced
/// precision; about 15 s for a roberta-base-sized model on 2 cores).
pub const GUARD_SENTENCES: usize = 500;

/// The quality guard of a reduced-precision deployment: the model against itself in f32 on
/// the validation split of the job that trained it. `None` for f32, for a model from no job,
/// a job whose dataset has no validation sentences, or when the evaluation fails (logged).
async fn guard(
    sh: &Shared,
    dir: &Path,
    job_id: Option<&str>,
    precision: Precision,
) -> Option<PrecisionComparison> {
    if !precision.reduced() {
        return None;
    }
    let job = store::jobs::get(&sh.pool, job_id?).await.ok()??;
    let spec: super::spec::JobSpec = serde_json::from_str(&job.spec).ok()?;
    let (ctx, dir) = (sh.ctx.clone(), dir.to_path_buf());
    let result = tokio::task::spawn_blocking(move || {
        let data = ctx
            .dataset_dir(&spec, &mut |_| {})
            .map_err(|e| format!("dataset: {e}"))?;
        let mut ds = crate::data::Dataset::load(&data, &super::resolve::dataset_options(&spec))
            .map_err(|e| format!("dataset: {e}"))?;
        if ds.validation.sentences.is_empty() {
            return Ok(None);
        }
        // The deploy call waits for the guard: its first GUARD_SENTENCES sentences keep that
        // within the request timeout for base-size models (`sentences` says how many ran).
        ds.validation.sentences.truncate(GUARD_SENTENCES);
        crate::train::evaluate::compare_precision(&dir, &ds.validation, precision, 8).map(Some)
    })
    .await;
    match result {
        Ok(Ok(q)) => {
            if let Some(q) = &q {
                tracing::info!(job = %job.id, precision = %precision, f1_f32 = q.f1_f32, f1 = q.f1,
                    delta = q.f1_delta, sentences = q.sentences, "reduced-precision quality guard");
            }
            q
        }
        Ok(Err(e)) => {
            tracing::warn!(job = %job.id, error = %e, "quality guard could not evaluate; deploying without it");
            None
        }
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "quality guard task failed");
            None
        }
    }
}

async fn load(
    sh: &Shared,
    name: &str,
    dir: &Path,
    job_id: Option<String>,
    precision: Precision,
    quality: Option<PrecisionComparison>,
) -> Result<ModelInfo, ModelsError> {
    let (r, name, dir) = (sh.registry.clone(), name.to_string(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || r.deploy(&name, &dir, job_id, Some(precision), quality))
        .await
        .map_err(|e| StoreError::Conflict(format!("deploy task failed: {e}")))?
        .map_err(ModelsError::from)
}

/// Serves the active deployment of `name` recorded as `row` again: from this machine's copy,
/// fetched from the artifact store when missing; a copy whose content hash is not the
/// recorded version is refused.
async fn redeploy(sh: &Shared, row: &DeploymentRow) -> Result<ModelInfo, ModelsError> {
    let dir = sh.localize(&row.path);
    if sh.artifacts.is_some() && dir.starts_with(&sh.data_dir) {
        sh.pull_dir(&dir)
            .await
            .map_err(|e| StoreError::Conflict(format!("fetching model {}: {e}", row.name)))?;
    }
    let (r, name, d, job) = (
        sh.registry.clone(),
        row.name.clone(),
        dir.clone(),
        row.job_id.clone(),
    );
    let precision = Precision::parse(&row.precision).unwrap_or_default();
    let quality = row
        .quality
        .as_deref()
        .and_then(|q| serde_json::from_str::<PrecisionComparison>(q).ok());
    // A copy from the artifact store must be the recorded bytes.
    let verify = sh.artifacts.is_some().then(|| row.version.clone());
    tokio::task::spawn_blocking(move || {
        if let Some(version) = verify {
            let v = crate::infer::versioned(&crate::infer::fingerprint(&d), precision);
            if v != version {
                return Err(ModelsError::Mismatch(format!(
                    "model {name:?}: the files' content hash {v} is not the deployed version {version}"
                )));
            }
        }
        Ok(r.deploy(&name, &d, job, Some(precision), quality)?)
    })
    .await
    .map_err(|e| StoreError::Conflict(format!("deploy task failed: {e}")))?
}

/// Keeps this process serving what the store says is deployed (other processes deploy,
/// roll back and remove too): every 5 s, each active deployment whose version is not the one
/// served is loaded, and names no longer deployed stop being served.
pub async fn follow(sh: std::sync::Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
        let Ok(active) = deployments::active(&sh.pool).await else {
            continue;
        };
        let _one_at_a_time = sh.deployments.lock().await;
        for row in &active {
            let served = sh.registry.get(&row.name).map(|d| d.info.version.clone());
            if served.as_deref() == Some(row.version.as_str()) {
                continue;
            }
            match redeploy(&sh, row).await {
                Ok(info) => tracing::info!(model = %row.name, version = %info.version,
                    "serving a deployment made elsewhere"),
                Err(e) => tracing::warn!(model = %row.name, error = %e,
                    "a deployment made elsewhere could not be loaded here"),
            }
        }
        for name in sh.registry.list().into_iter().map(|i| i.name) {
            if !active.iter().any(|r| r.name == name)
                && deployments::known(&sh.pool, &name).await.unwrap_or(false)
            {
                sh.registry.remove(&name);
                tracing::info!(model = %name, "removed elsewhere: no longer served");
            }
        }
    }
}

/// Stops serving `name`; its history stays.
pub async fn remove(sh: &Shared, name: &str) -> Result<(), ModelsError> {
    let _one_at_a_time = sh.deployments.lock().await;
    let served = sh.registry.remove(name);
    let recorded = deployments::deactivate(&sh.pool, name).await? > 0;
    if !served && !recorded {
        return Err(ModelsError::NotDeployed(name.into()));
    }
    Ok(())
}

/// Serves the version of `name` deployed before the active one (by deployment order, skipping
/// deployments of the same version and those whose files are gone). Rolling back again goes
/// further back.
pub async fn rollback(sh: &Shared, name: &str) -> Result<(ModelInfo, DeploymentRow), ModelsError> {
    let _one_at_a_time = sh.deployments.lock().await;
    let history = deployments::history(&sh.pool, name).await?;
    let Some(current) = history.iter().find(|r| r.active != 0) else {
        return Err(ModelsError::NotDeployed(name.into()));
    };
    let Some(prev) = history
        .iter()
        .filter(|r| r.seq < current.seq && r.version != current.version)
        .find(|r| Path::new(&r.path).is_dir())
    else {
        return Err(ModelsError::NoPrevious(format!(
            "model {name:?} has no earlier version to roll back to (active: {})",
            current.version
        )));
    };
    let info = redeploy(sh, prev).await?;
    if info.version != prev.version {
        tracing::warn!(model = name, recorded = %prev.version, loaded = %info.version,
            "the files of the earlier version changed since it was deployed");
    }
    deployments::activate(&sh.pool, name, prev.seq).await?;
    Ok((info, prev.clone()))
}

/// At start: records the `default` model the flags chose (unless a deployment made through
/// the API, a job or a project replaced it, which is then served), and serves the active
/// deployment of every other name.
pub async fn restore(sh: &Shared) -> Result<(), StoreError> {
    for row in deployments::active(&sh.pool).await? {
        if row.name == "default" && row.deployed_by == "startup" {
            continue;
        }
        match redeploy(sh, &row).await {
            Ok(info) => {
                tracing::info!(model = %row.name, version = %info.version, "deployment restored")
            }
            Err(e) => tracing::warn!(model = %row.name, path = %row.path, error = %e,
                "could not restore a deployment; the model is not served"),
        }
    }
    if let Some(info) = sh.registry.get("default").map(|d| d.info.clone()) {
        let active = deployments::active_of(&sh.pool, "default").await?;
        let path = info.path.display().to_string();
        let same = active
            .as_ref()
            .is_some_and(|a| a.version == info.version && a.path == path);
        if !same && active.as_ref().is_none_or(|a| a.deployed_by == "startup") {
            deployments::activate_new(
                &sh.pool,
                deployments::NewDeployment {
                    name: "default",
                    version: &info.version,
                    path: &path,
                    job_id: None,
                    by: "startup",
                    precision: info.precision.as_str(),
                    quality: None,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Whether `name` has a recorded deployment (older databases have none: their `deploy_as`
/// jobs are redeployed the old way).
pub async fn recorded(sh: &Shared, name: &str) -> Result<bool, StoreError> {
    store::deployments::known(&sh.pool, name).await
}
