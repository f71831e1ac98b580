//! Command-line flags (every `serve` flag also an environment variable) and the validated
//! [`Settings`] the server is wired from. Raw flags stay separate from settings: paths are
//! canonicalised, contradictions refused and defaults resolved once, here.

use crate::infer::Precision;
use crate::jobs::worker::{WorkerOptions, default_name};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::hub::HubConfig;
use crate::infer::DetectorOptions;
use crate::model::backend::{DeviceSpec, Resolved};

/// Fine-tune and serve transformer token classifiers (metaphor detection in Catalan).
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
    /// Bundled demo models and data. Default: `assets/` next to the binary, then
    /// `../share/metafora/assets` from it, then the source tree the binary was built from.
    #[arg(long, env = "METAFORA_ASSETS", global = true)]
    pub assets_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: job API, worker and /detect.
    Serve(Box<ServeArgs>),
    /// Run a training worker only (no HTTP API): claims jobs from the shared database
    /// (PostgreSQL for several machines), one at a time on its device.
    Worker(WorkerArgs),
    /// Run one training job from a JSON spec (the notebook's pipeline) and print its report.
    Train(TrainArgs),
    /// Run a study (models × configurations × seeds) from a JSON spec, as POST /v1/studies,
    /// and print its summary.
    Study(StudyArgs),
    /// Evaluate a model directory on a dataset split; print metrics JSON.
    Eval(EvalArgs),
    /// Re-score a predictions file (JSON lines with `gold` and `pred` label lists).
    Score(ScoreArgs),
    /// Detect metaphors in texts with a model directory.
    Detect(DetectArgs),
    /// Benchmarks: model forward/train step, or /detect under load.
    Bench(BenchArgs),
}

/// Where the bundled assets are: `--assets-dir`, else the first of `<exe dir>/assets`,
/// `<exe dir>/../share/metafora/assets` and the crate's own `assets/` that exists.
pub fn assets_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let candidates = exe_dir
        .iter()
        .flat_map(|d| [d.join("assets"), d.join("../share/metafora/assets")])
        .chain([PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets"
        ))]);
    let mut last = PathBuf::new();
    for c in candidates {
        if c.join("models").is_dir() {
            return c;
        }
        last = c;
    }
    last
}

/// `metafora serve`
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs --api-key (or
    /// --insecure-no-auth).
    #[arg(long, env = "METAFORA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Database URL: `sqlite://FILE` (created if missing; one machine) or
    /// `postgres://USER:PASSWORD@HOST/DB` (any number of API and worker processes).
    #[arg(
        long,
        env = "METAFORA_DATABASE_URL",
        default_value = "sqlite://metafora.db"
    )]
    pub database_url: String,
    /// Seconds to keep retrying (with backoff) a PostgreSQL server that does not answer at
    /// start before giving up.
    #[arg(long, env = "METAFORA_DATABASE_WAIT", default_value_t = 60)]
    pub database_wait: u64,
    /// Directory for job artifacts and uploaded datasets.
    #[arg(long, env = "METAFORA_DATA_DIR", default_value = "./metafora-data")]
    pub data_dir: PathBuf,
    /// Compute device: auto (CUDA when built with it and a GPU is present), cpu, cuda, cuda:N.
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Bearer token required on every route except /health (unset: no auth, loopback only).
    #[arg(long, env = "METAFORA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve a non-loopback address without an API key (anyone who reaches the port can train
    /// and deploy models).
    #[arg(long, env = "METAFORA_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Host name clients use to reach the server (repeatable). Without an API key, requests
    /// must name the server by an IP address, `localhost` or one of these (DNS rebinding).
    #[arg(
        long = "public-host",
        env = "METAFORA_PUBLIC_HOSTS",
        value_delimiter = ','
    )]
    pub public_hosts: Vec<String>,
    /// Web origin allowed to call the API from a browser (CORS; repeatable), e.g.
    /// `https://labelstudio.example.org`. Other cross-origin browser requests get 403.
    #[arg(
        long = "cors-origin",
        env = "METAFORA_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Directory that local model and dataset paths in job specs may point into (repeatable;
    /// --data-dir and the bundled assets are always allowed). Must exist.
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
    /// Most trials one study may have (models × configurations × seeds); a bigger study is
    /// refused with 422.
    #[arg(long, env = "METAFORA_MAX_STUDY_TRIALS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_study_trials: u32,
    /// Most queue entries waiting (at least 1): queued jobs, plus studies not yet ended (one
    /// entry each, whatever their trials); further POST /v1/jobs or /v1/studies get 429.
    #[arg(long, env = "METAFORA_MAX_QUEUED_JOBS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queued_jobs: u32,
    /// Seconds a client may take to send a request's headers before the connection is closed.
    #[arg(long, env = "METAFORA_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a request may take (reading its body and answering); 408 after. Streams
    /// (`/events`) are not limited once they start.
    #[arg(long, env = "METAFORA_REQUEST_TIMEOUT", default_value_t = 60)]
    pub request_timeout: u64,
    /// Seconds a dataset upload may take.
    #[arg(long, env = "METAFORA_UPLOAD_TIMEOUT", default_value_t = 600)]
    pub upload_timeout: u64,
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
    /// Number format of deployed models' dense layers when a deployment names none: f32, bf16
    /// (CPU with AVX512_BF16) or int8 (dynamic quantisation, CPU with AVX512_VNNI). Evaluation
    /// during training always runs in f32.
    #[arg(long, env = "METAFORA_DETECT_PRECISION", value_enum, default_value_t = Precision::F32)]
    pub detect_precision: Precision,
    /// Job spec started by Label Studio's START_TRAINING webhook (a JSON file).
    #[arg(long, env = "METAFORA_LABELSTUDIO_TRAIN_SPEC")]
    pub labelstudio_train_spec: Option<PathBuf>,
    /// Do not start the training worker (API and /detect only).
    #[arg(long, env = "METAFORA_NO_WORKER")]
    pub no_worker: bool,
    /// Where job artifacts and uploaded datasets are shared between machines: `file:///path`
    /// or `s3://bucket/prefix` (endpoint, region and credentials from the `AWS_*` variables:
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`). Unset: the data dir only (one machine).
    #[arg(long, env = "METAFORA_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// This process's worker name (default: the host name). Unique among live workers: a
    /// worker restarted under its name takes back its running job at once.
    #[arg(long, env = "METAFORA_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// Seconds a running job's lease lasts without renewal (renewed every fifth of it); a
    /// worker silent that long loses the job to another worker, which resumes it from its last
    /// checkpoint.
    #[arg(long, env = "METAFORA_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,
    /// Times a job may lose its worker (crash, kill, lost lease) before it is marked
    /// `interrupted` instead of resumed.
    #[arg(long, env = "METAFORA_MAX_CRASHES", default_value_t = 3,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_crashes: i64,
}

impl Default for ServeArgs {
    /// The flags' defaults (and `METAFORA_*` variables), as `metafora serve` with no flags.
    fn default() -> Self {
        let cmd = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
        let matches = cmd
            .try_get_matches_from(Vec::<String>::new())
            .expect("serve flags have defaults: this is a bug");
        ServeArgs::from_arg_matches(&matches).expect("serve flags parse: this is a bug")
    }
}

/// `metafora worker`
#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// Database URL shared with the API processes (`postgres://…`; `sqlite://FILE` on one
    /// machine).
    #[arg(
        long,
        env = "METAFORA_DATABASE_URL",
        default_value = "sqlite://metafora.db"
    )]
    pub database_url: String,
    /// Seconds to keep retrying (with backoff) a database that does not answer at start.
    #[arg(long, env = "METAFORA_DATABASE_WAIT", default_value_t = 60)]
    pub database_wait: u64,
    /// Local directory for job files (a cache of the artifact store when --artifacts is set).
    #[arg(long, env = "METAFORA_DATA_DIR", default_value = "./metafora-data")]
    pub data_dir: PathBuf,
    /// Where job artifacts and uploaded datasets are shared between machines: `file:///path`
    /// or `s3://bucket/prefix` (endpoint, region and credentials from the `AWS_*` variables).
    /// Unset: the data dir only (one machine).
    #[arg(long, env = "METAFORA_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Compute device: auto, cpu, cuda, cuda:N. Jobs that require another kind are left to
    /// other workers.
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// This worker's name (default: the host name); unique among live workers.
    #[arg(long, env = "METAFORA_WORKER_NAME")]
    pub worker_name: Option<String>,
    /// Seconds a running job's lease lasts without renewal.
    #[arg(long, env = "METAFORA_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,
    /// Times a job may lose its worker before it is marked `interrupted`.
    #[arg(long, env = "METAFORA_MAX_CRASHES", default_value_t = 3,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_crashes: i64,
    /// Number format of models this worker deploys for jobs' `deploy_as` (as `serve`'s flag).
    #[arg(long, env = "METAFORA_DETECT_PRECISION", value_enum, default_value_t = Precision::F32)]
    pub detect_precision: Precision,
    /// Directory local model and dataset paths in job specs may point into (repeatable).
    #[arg(
        long = "allow-path",
        env = "METAFORA_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_paths: Vec<PathBuf>,
}

impl WorkerArgs {
    /// The serve flags of a worker-only process.
    pub fn into_serve(self) -> ServeArgs {
        ServeArgs {
            database_url: self.database_url,
            database_wait: self.database_wait,
            data_dir: self.data_dir,
            artifacts: self.artifacts,
            device: self.device,
            worker_name: self.worker_name,
            lease_seconds: self.lease_seconds,
            max_crashes: self.max_crashes,
            allow_paths: self.allow_paths,
            detect_precision: self.detect_precision,
            ..ServeArgs::default()
        }
    }
}

/// Who may call the API.
#[derive(Debug, Clone)]
pub struct Access {
    /// Bearer token (or Basic password) every route but `/health` needs.
    pub api_key: Option<String>,
    /// Without a key: host names (besides IP addresses and `localhost`) a request's `Host`
    /// may name. `None` with a key (the key is the protection).
    pub public_hosts: Option<Vec<String>>,
    /// Origins whose browser requests are allowed (CORS).
    pub cors_origins: Vec<String>,
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub max_queued_jobs: usize,
    pub max_study_trials: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
}

/// The validated configuration of `metafora serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub database_wait: Duration,
    /// Canonical, created.
    pub data_dir: PathBuf,
    pub assets_dir: PathBuf,
    pub device: Resolved,
    pub access: Access,
    pub limits: Limits,
    /// Canonical directories local paths in specs may point into: the data dir, the assets,
    /// every `--allow-path`.
    pub allowed_roots: Vec<PathBuf>,
    /// Served as `default`; `explicit` when `--model` named it (then a load failure is fatal).
    pub default_model: PathBuf,
    pub default_model_explicit: bool,
    pub detector: DetectorOptions,
    pub labelstudio_train_spec: Option<PathBuf>,
    pub worker: bool,
    /// Serve the HTTP API (false for `metafora worker`).
    pub api: bool,
    pub artifacts: Option<String>,
    pub worker_options: WorkerOptions,
    /// Hub access, from the standard `HF_*` variables (tests put a stand-in here).
    pub hub: HubConfig,
}

impl Settings {
    /// Checks the flags and resolves paths and the device.
    pub fn from_args(args: ServeArgs, assets_dir: &Path) -> anyhow::Result<Settings> {
        let api_key = args.api_key.filter(|k| !k.trim().is_empty());
        if api_key.is_none() && !args.bind.ip().is_loopback() && !args.insecure_no_auth {
            bail!(
                "--bind {} is reachable from other machines but no --api-key is set; set \
                 METAFORA_API_KEY, bind a loopback address, or pass --insecure-no-auth",
                args.bind
            );
        }
        let device = args.device.resolve().map_err(anyhow::Error::msg)?;
        for sub in ["jobs", "datasets"] {
            let d = args.data_dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let data_dir = args
            .data_dir
            .canonicalize()
            .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
        let mut allowed_roots = vec![data_dir.clone()];
        if let Ok(a) = assets_dir.canonicalize() {
            allowed_roots.push(a);
        }
        for p in &args.allow_paths {
            let c = p
                .canonicalize()
                .with_context(|| format!("--allow-path {} does not exist", p.display()))?;
            if !c.is_dir() {
                bail!("--allow-path {} is not a directory", p.display());
            }
            allowed_roots.push(c);
        }
        for (flag, v) in [
            ("--header-read-timeout", args.header_read_timeout),
            ("--request-timeout", args.request_timeout),
            ("--upload-timeout", args.upload_timeout),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1 second");
            }
        }
        for o in &args.cors_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                bail!("--cors-origin {o:?} must look like https://host[:port]");
            }
        }
        let public_hosts = api_key.is_none().then(|| {
            args.public_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
        Ok(Settings {
            bind: args.bind,
            database_url: args.database_url,
            database_wait: Duration::from_secs(args.database_wait),
            data_dir,
            assets_dir: assets_dir.to_path_buf(),
            device,
            access: Access {
                api_key,
                public_hosts,
                cors_origins: args.cors_origins,
            },
            limits: Limits {
                max_body_bytes: args.max_body_bytes,
                max_upload_bytes: args.max_upload_bytes,
                max_queued_jobs: args.max_queued_jobs as usize,
                max_study_trials: args.max_study_trials as usize,
                header_read_timeout: Duration::from_secs(args.header_read_timeout),
                request_timeout: Duration::from_secs(args.request_timeout),
                upload_timeout: Duration::from_secs(args.upload_timeout),
            },
            allowed_roots,
            default_model_explicit: args.model.is_some(),
            default_model: args
                .model
                .unwrap_or_else(|| assets_dir.join("models/metafora-demo-ca")),
            detector: DetectorOptions {
                queue: args.detect_queue,
                batch_tokens: args.batch_tokens,
                batch_wait: Duration::from_millis(args.batch_wait_ms),
                stride: args.window_stride,
                window: None,
                precision: args.detect_precision,
            },
            labelstudio_train_spec: args.labelstudio_train_spec,
            worker: !args.no_worker,
            api: true,
            artifacts: args.artifacts,
            worker_options: WorkerOptions {
                name: match args.worker_name.as_deref().map(str::trim) {
                    Some(n) if n.is_empty() || n.len() > 100 || n.chars().any(char::is_control) => {
                        bail!("--worker-name must be 1-100 printable characters")
                    }
                    Some(n) => n.to_string(),
                    None => default_name(),
                },
                lease: Duration::from_secs(args.lease_seconds),
                max_crashes: args.max_crashes,
            },
            hub: HubConfig::from_env(),
        })
    }
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

/// `metafora study`
#[derive(Debug, Args)]
pub struct StudyArgs {
    /// Study spec (JSON), as for POST /v1/studies.
    pub spec: PathBuf,
    #[arg(long, env = "METAFORA_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Where trials, the study's database and its CSVs go. Running again with the same
    /// directory continues an unfinished study.
    #[arg(long, default_value = "runs/study")]
    pub output_dir: PathBuf,
    /// Most trials the study may have.
    #[arg(long, env = "METAFORA_MAX_STUDY_TRIALS", default_value_t = 200)]
    pub max_trials: usize,
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
    /// Number format of the dense layers (bf16 and int8: CPU engine only), to measure what
    /// reduced-precision inference costs in F1.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
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
    /// none, simple, first, average or max. Default: `first` for models fine-tuned here, the
    /// pipeline's `simple` for other checkpoints.
    #[arg(long)]
    pub aggregation: Option<String>,
    /// Also print each text's uncertainty (1 − the lowest word confidence).
    #[arg(long)]
    pub uncertainty: bool,
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

/// `metafora bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward and training step (batch x seq) at tiny and roberta-base sizes.
    Model(ModelBench),
    /// Fixture parity (logits, encoder outputs, fine-tuned F1) on a device.
    Parity(ParityBench),
    /// HTTP load on /v1/detect at several client counts.
    Detect(DetectBench),
    /// Logits of a model directory for pre-split sentences (JSON), for export round trips.
    Logits(LogitsBench),
    /// The packed dense-layer kernel against a direct `gemm::gemm` call on the same weights.
    Kernels(KernelsBench),
    /// The CPU's arithmetic peak per core and for all threads: AVX2 and AVX-512 f32 FMAs,
    /// AVX512_BF16 and AVX512_VNNI dot products (what the inference figures are fractions of).
    Peak(PeakBench),
}

#[derive(Debug, Args)]
pub struct PeakBench {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogitsBench {
    /// HF model directory (e.g. a run's best_model).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL with `tokens` (pre-split words).
    #[arg(long)]
    pub sentences: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

#[derive(Debug, Args)]
pub struct ModelBench {
    /// Comma-separated: tiny, base, large (RoBERTa), deberta-tiny, mdeberta-base (mDeBERTa-v3-base
    /// shapes, vocab 251 000).
    #[arg(long, default_value = "tiny,base")]
    pub sizes: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Python with torch + transformers: measure the PyTorch reference in the same run.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Time the forward only (no training step).
    #[arg(long)]
    pub forward_only: bool,
    /// PyTorch threads (set RAYON_NUM_THREADS to the same for the Rust side).
    #[arg(long, default_value_t = 1)]
    pub torch_threads: usize,
    /// Device for the PyTorch reference (cpu or cuda).
    #[arg(long, default_value = "cpu")]
    pub torch_device: String,
    /// Comma-separated number formats of the CPU engine's forward: f32, bf16, int8 (each
    /// timed and given as a fraction of the CPU's measured peak for that format).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

#[derive(Debug, Args)]
pub struct ParityBench {
    /// Folder with tiny-roberta*, parity/, data/synthetic (the repo's tests/fixtures).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))]
    pub fixtures: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
}

#[derive(Debug, Args)]
pub struct DetectBench {
    /// HF model directory to serve.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL with `tokens`: the sentences sent (joined with spaces).
    #[arg(long)]
    pub sentences: PathBuf,
    /// Comma-separated concurrent client counts.
    #[arg(long, default_value = "1,16,64")]
    pub clients: String,
    /// Seconds per client count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Python with transformers: the pipeline's single-sentence latency in the same run.
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub torch_threads: usize,
    /// Number format the served model runs in (as `serve --detect-precision`).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// `metafora bench kernels`
#[derive(Debug, Args)]
pub struct KernelsBench {
    /// Comma-separated activation row counts (tokens in a batch).
    #[arg(long, default_value = "1,16,64,256")]
    pub rows: String,
    /// Comma-separated `d_in`x`d_out` weight shapes (default: roberta-base and -large layers).
    #[arg(long, default_value = "768x768,768x3072,3072x768,1024x4096,4096x1024")]
    pub shapes: String,
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
}
