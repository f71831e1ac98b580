//! metafora: fine-tune and serve transformer token classifiers (metaphor detection in
//! Catalan).
//!
//! Layers, each depending only on those below it (`scripts/module_graph.py` checks it):
//! `server -> api -> jobs -> train -> infer -> model, data, metrics`; `jobs, api -> store`;
//! `jobs -> hub`. `cli` and `bench` sit beside `server` on top; `config` holds the flags.
//! `model`, `data` and `metrics` never import tokio, axum or sqlx.

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
pub mod validate;

/// `metafora serve`: runs the service until SIGTERM/Ctrl-C.
pub fn serve(settings: config::Settings) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::run(settings))
}
