//! metafora: fine-tune and serve RoBERTa token classifiers (metaphor detection in Catalan).
//!
//! Layers, each depending only on those below it:
//! `api -> jobs, infer, store`; `jobs -> train, hub, store`; `train -> model, data, metrics`;
//! `infer -> model, data`. `model`, `data` and `metrics` never import tokio, axum or sqlx.

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod hub;
pub mod infer;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod telemetry;
pub mod train;

/// `metafora serve`.
pub fn serve(_args: config::ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve: not wired yet")
}
