//! Publishing a finished run: serving its best model under a name, pushing it to the Hub.
//! Used by the worker (a job's `deploy_as`, `hub.push`) and by studies (their best trial).

use std::path::Path;

use serde_json::{Value, json};

use super::Shared;
use super::spec::JobSpec;
use crate::store::jobs::PushStatus;
use crate::store::{self, StoreError};

/// Serves the model in `dir` under `name` (`deploy_as`, a study's `deploy_best_as`) and records
/// the deployment (`by`); the outcome is an event of job `id`.
pub async fn deploy(
    sh: &Shared,
    id: &str,
    name: &str,
    dir: &Path,
    by: &str,
) -> Result<(), StoreError> {
    match super::models::deploy(sh, name, dir, Some(id.to_string()), None, by).await {
        Ok(info) => {
            sh.emit(
                id,
                "deployed",
                json!({"model": info.name, "version": info.version}),
            )
            .await
        }
        Err(e) => {
            sh.emit(
                id,
                "deploy_failed",
                json!({"model": name, "error": e.to_string()}),
            )
            .await
        }
    }
}

/// Pushes a succeeded job's best model; records the outcome on the job, never fails it.
/// `outcome` is the run's outcome as JSON (as in report.json).
pub async fn push_job(
    sh: &Shared,
    id: &str,
    spec: &JobSpec,
    best_model_dir: &Path,
    outcome: &Value,
) -> Result<(), StoreError> {
    let repo = spec.hub.repo_id.clone().unwrap_or_default();
    store::jobs::set_push(&sh.pool, id, PushStatus::Pending, None, None).await?;
    let card = crate::hub::card::model_card(&super::card_input(spec), outcome);
    let (cfg, dir, private, repo2) = (
        sh.ctx.hub.as_ref().map(|h| h.config.clone()),
        best_model_dir.to_path_buf(),
        spec.hub.private,
        repo.clone(),
    );
    let result = tokio::task::spawn_blocking(move || match cfg {
        Some(cfg) => crate::hub::push_model(
            &cfg,
            &repo2,
            private,
            &dir,
            &card,
            "Upload model fine-tuned with metafora",
        ),
        None => Err(crate::hub::HubError::Http {
            repo: repo2,
            message: "Hub is not configured".into(),
        }),
    })
    .await
    .unwrap_or_else(|e| {
        Err(crate::hub::HubError::Http {
            repo: repo.clone(),
            message: format!("push task panicked: {e}"),
        })
    });
    match result {
        Ok(url) => {
            store::jobs::set_push(&sh.pool, id, PushStatus::Pushed, None, Some(&url)).await?;
            sh.emit(id, "pushed", json!({"repo_id": repo, "url": url}))
                .await?;
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "push failed");
            let message = e.to_string();
            store::jobs::set_push(&sh.pool, id, PushStatus::Failed, Some(&message), None).await?;
            sh.emit(
                id,
                "push_failed",
                json!({"repo_id": repo, "error": message}),
            )
            .await?;
        }
    }
    Ok(())
}
