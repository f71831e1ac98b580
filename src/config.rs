//! Command-line flags (every flag also an environment variable) and validated settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::backend::DeviceSpec;

/// Fine-tune and serve RoBERTa token classifiers (metaphor detection in Catalan).
#[derive(Debug, Parser)]
#[command(name = "metafora", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info,metafora=debug`.
    #[arg(long, env = "METAFORA_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "METAFORA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: job API, worker and /detect.
    Serve(ServeArgs),
    /// Run one training job from a JSON spec (the notebook's pipeline) and print its report.
    Train(TrainArgs),
    /// Evaluate a model directory on a dataset split; print metrics JSON.
    Eval(EvalArgs),
    /// Re-score a predictions file (JSON lines with `gold` and `pred` label lists).
    Score(ScoreArgs),
    /// Detect metaphors in texts with a model directory.
    Detect(DetectArgs),
    /// Benchmarks: model forward/train step, or /detect under load.
    Bench(crate::bench::BenchArgs),
}

/// `metafora serve`
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "METAFORA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// SQLite database URL (created if missing).
    #[arg(
        long,
        env = "METAFORA_DATABASE_URL",
        default_value = "sqlite://metafora.db"
    )]
    pub database_url: String,
    /// Directory for job artifacts and uploaded datasets.
    #[arg(long, env = "METAFORA_DATA_DIR", default_value = "./metafora-data")]
    pub data_dir: PathBuf,
    /// Compute device: auto (CUDA when built with it and a GPU is present), cpu, cuda, cuda:N.
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Bearer token required on every route except /health (unset: no auth).
    #[arg(long, env = "METAFORA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Directory that local model and dataset paths in job specs may point into (repeatable;
    /// --data-dir and the bundled assets are always allowed).
    #[arg(
        long = "allow-path",
        env = "METAFORA_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_paths: Vec<PathBuf>,
    /// Largest request body in bytes (dataset uploads have their own limit).
    #[arg(long, env = "METAFORA_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest dataset upload in bytes.
    #[arg(long, env = "METAFORA_MAX_UPLOAD_BYTES", default_value_t = 64 << 20)]
    pub max_upload_bytes: usize,
    /// Most queued jobs accepted; further POST /v1/jobs get 429.
    #[arg(long, env = "METAFORA_MAX_QUEUED_JOBS", default_value_t = 100)]
    pub max_queued_jobs: usize,
    /// Model served as `default` by /v1/detect (an HF model directory). Default: the bundled
    /// fine-tuned demo model.
    #[arg(long, env = "METAFORA_MODEL")]
    pub model: Option<PathBuf>,
    /// Most /detect requests waiting per model; more get 429.
    #[arg(long, env = "METAFORA_DETECT_QUEUE", default_value_t = 256)]
    pub detect_queue: usize,
    /// Dynamic batching: most tokens in one inference batch (real tokens on the CPU, whose
    /// batches are unpadded; padded tokens on a GPU).
    #[arg(long, env = "METAFORA_BATCH_TOKENS", default_value_t = 8192)]
    pub batch_tokens: usize,
    /// Dynamic batching: longest wait for more requests before running a batch, in ms. With 0 a
    /// batch is whatever is queued when the model is free (requests that arrive during a
    /// forward pass form the next batch), so a lone request never waits.
    #[arg(long, env = "METAFORA_BATCH_WAIT_MS", default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Tokens shared by consecutive windows when a text exceeds the model's window.
    #[arg(long, env = "METAFORA_WINDOW_STRIDE", default_value_t = 128)]
    pub window_stride: usize,
    /// Job spec started by Label Studio's START_TRAINING webhook (a JSON file).
    #[arg(long, env = "METAFORA_LABELSTUDIO_TRAIN_SPEC")]
    pub labelstudio_train_spec: Option<PathBuf>,
    /// Do not start the training worker (API and /detect only).
    #[arg(long, env = "METAFORA_NO_WORKER")]
    pub no_worker: bool,
    /// Hub settings; from the standard `HF_*` variables when not set (tests inject a stand-in).
    #[arg(skip)]
    pub hub: Option<crate::hub::HubConfig>,
}

/// `metafora train`
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Job spec (JSON), as for POST /v1/jobs; `demo` runs the bundled demo job.
    pub spec: String,
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Override `output.dir`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// `metafora eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Fine-tuned HF model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Write one JSON line per sentence: tokens, gold and predicted label names.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
}

/// `metafora score`
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// JSON lines with `gold` and `pred` lists of label names.
    pub file: PathBuf,
}

/// `metafora detect`
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Fine-tuned HF model directory (default: the bundled demo model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// none, simple, first, average or max.
    #[arg(long, default_value = "simple")]
    pub aggregation: String,
    /// Minimum score of an entity.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Texts longer than the model's window: `sentences` or `windows`.
    #[arg(long, default_value = "sentences")]
    pub long_text: String,
    /// Tokens shared by consecutive windows (`windows`, or a sentence longer than the window).
    #[arg(long, default_value_t = 128)]
    pub stride: usize,
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Texts to analyse.
    #[arg(required = true)]
    pub texts: Vec<String>,
}
