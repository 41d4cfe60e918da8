//! `docledger-bench`: docledger end to end against the dual-write coordinator it replaces
//! and each store's own bulk ceiling, on the stores the `DOCLEDGER_*` configuration names
//! (see the crate's documentation and the README's "Performance"). It runs the
//! `docledger` executable beside it (or `--bin`) as the service. `--touch N` and
//! `--log-size` each run one scenario of their own instead (the service's RSS; the log
//! database's size under retention).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use docledger::config::Config;

#[derive(Parser)]
#[command(
    name = "docledger-bench",
    version,
    about = "Measure docledger against the dual-write coordinator and each store's ceiling"
)]
struct Cli {
    /// TOML configuration file (environment variables DOCLEDGER_* override it).
    #[arg(long, env = "DOCLEDGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: docledger_bench::BenchArgs,
}

fn main() -> ExitCode {
    docledger::tune_allocator();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOCLEDGER_LOG")
        // The driver's NOTICEs (a migration's "already exists, skipping") are not news.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let env: HashMap<String, String> = std::env::vars().collect();
    let run = async {
        let config = Config::load(cli.config.as_deref(), &env)?;
        docledger_bench::run(&config, &cli.args).await
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
