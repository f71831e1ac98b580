//! `metafora` binary: parse flags, set up logging, hand over to the library.

use clap::Parser;
use metafora::config::{Cli, Command};

// Training and inference allocate and free large tensors at a high rate; glibc returns them
// to the kernel (mmap/munmap) each time, so every step page-faults its memory in again.
// mimalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    metafora::telemetry::init(&cli.log, &cli.log_format);
    let assets = metafora::config::assets_dir(cli.assets_dir.as_deref());
    let result = match cli.command {
        Command::Serve(args) => {
            metafora::config::Settings::from_args(*args, &assets).and_then(metafora::serve)
        }
        Command::Worker(args) => metafora::config::Settings::from_args(args.into_serve(), &assets)
            .and_then(|mut s| {
                s.api = false;
                s.worker = true;
                metafora::serve(s)
            }),
        Command::Train(args) => metafora::cli::train(args, &assets),
        Command::Study(args) => metafora::cli::study::run(args),
        Command::Eval(args) => metafora::cli::eval(args),
        Command::Score(args) => metafora::cli::score(args),
        Command::Detect(args) => metafora::cli::detect(args, &assets),
        Command::Bench(args) => metafora::bench::run(args, &assets),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
