//! metafora: fine-tune and serve RoBERTa token classifiers (metaphor detection in Catalan).
//!
//! Layers, each depending only on those below it:
//! `api -> jobs, infer, store`; `jobs -> train, hub, store`; `train -> model, data, metrics`;
//! `infer -> model, data`. `model`, `data` and `metrics` never import tokio, axum or sqlx.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod hub;
pub mod infer;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod train;

/// `metafora serve`: runs the service until SIGTERM/Ctrl-C.
pub fn serve(args: config::ServeArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::run(args))
}
