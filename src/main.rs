//! The `docledger` command line: parses arguments and calls into the library, nothing else.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use docledger::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "docledger",
    version,
    about = "Keeps a RAG knowledge base's S3 blobs, MySQL catalogue and Milvus vectors consistent through one event log"
)]
struct Cli {
    /// TOML configuration file (environment variables DOCLEDGER_* override it).
    #[arg(long, global = true, env = "DOCLEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr: human (default) or json.
    #[arg(long, global = true, env = "DOCLEDGER_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: API, document actors, projectors.
    Serve,
    /// Create the log database and apply its migrations.
    Migrate,
    /// Send NDJSON batch lines to a running service. Exit codes: 0 every line accepted,
    /// 1 some refused (each reported with its line number), 2 the run could not finish.
    Ingest {
        /// The NDJSON file, or `-` for standard input.
        input: String,
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API token (default: the first of DOCLEDGER_API_TOKENS, if set).
        #[arg(long)]
        token: Option<String>,
        /// Batch requests in flight (one document's lines always go in order).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Attempts per request before the run gives up (lost connections, 503, ...).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        attempts: u32,
        /// After a run that finished, delete every live document whose id starts with this
        /// prefix and that no line of the run named.
        #[arg(long)]
        sync_prefix: Option<String>,
    },
    /// Rebuild a store from the log (through the running service; see --standalone).
    Rebuild {
        /// mysql | milvus | s3 | all
        store: String,
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Rebuild in this process; only when no service runs (refused if one answers at --url).
        #[arg(long)]
        standalone: bool,
    },
    /// Compare every store with the log.
    Verify {
        /// Repair what differs.
        #[arg(long)]
        repair: bool,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase documents through a running service: withdraw each from every store and
    /// remove every trace of its content from the log at once (a tombstone without content
    /// stays). Exit codes: 0 every document erased everywhere, 1 some unknown, refused or
    /// not yet dropped by every store, 2 the run could not finish.
    Erase {
        /// The documents.
        #[arg(required = true)]
        doc_ids: Vec<String>,
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API token (default: the first of DOCLEDGER_API_TOKENS, if set).
        #[arg(long)]
        token: Option<String>,
        /// Longest wait for the stores to drop each document.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Remove from the log what is past its time (the content of versions retention no
    /// longer keeps and their unreferenced blobs, idempotency keys after their TTL,
    /// resolved compensations after the retention period) and print what was removed.
    /// Safe while services run.
    Compact {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ingest generated documents through a running service and show what each store holds.
    Demo {
        /// Number of documents.
        #[arg(long, default_value_t = 20)]
        docs: usize,
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("DOCLEDGER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(file: Option<&PathBuf>) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(Config::load(file.map(PathBuf::as_path), &env)?)
}

fn main() -> ExitCode {
    docledger::tune_allocator();
    let cli = Cli::parse();
    init_tracing(cli.log_format == "json");
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a command that talks to a service: 0 when `report` prints the outcome
/// and says all went well, 1 when it says something was refused, 2 when the run could not
/// finish.
fn run_outcome<T>(outcome: anyhow::Result<T>, report: impl FnOnce(&T) -> bool) -> ExitCode {
    match outcome {
        Ok(done) if report(&done) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli.config.as_ref())?;
    let system = actix_rt::System::new();
    match cli.command {
        Command::Serve => system.block_on(async move {
            let listener = TcpListener::bind(config.listen)
                .with_context(|| format!("bind {}", config.listen))?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            actix_rt::spawn(async move {
                wait_for_signal().await;
                signal.cancel();
            });
            docledger::serve(config, listener, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Migrate => system.block_on(async move {
            let log_id =
                docledger::eventlog::migrate_only(&config.eventstore_url, &config.tls).await?;
            println!("log {log_id} migrated");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Ingest {
            input,
            url,
            token,
            concurrency,
            attempts,
            sync_prefix,
        } => system.block_on(async move {
            let mut options = docledger::cli::ingest::IngestOptions::new(&url);
            options.concurrency = concurrency;
            options.retry.max_attempts = Some(attempts);
            options.bearer = docledger::cli::bearer_or(token, &config);
            options.sync_prefix = sync_prefix;
            let input = docledger::cli::ingest::Input::from_arg(&input);
            Ok(run_outcome(
                docledger::cli::ingest::ingest(input, &options).await,
                |summary| {
                    println!("{summary}");
                    summary.num_refused() == 0
                },
            ))
        }),
        Command::Demo { docs, url } => system.block_on(async move {
            let report =
                docledger::cli::demo::run(&config, &url, docs, docledger::cli::bearer(&config))
                    .await?;
            Ok(if report.mismatches.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
        Command::Rebuild {
            store,
            url,
            standalone,
        } => system.block_on(async move {
            let stores = docledger::cli::rebuild::stores_of(&store)?;
            let lines = if standalone {
                docledger::cli::rebuild::standalone(&config, &url, &stores).await?
            } else {
                let bearer = docledger::cli::bearer(&config);
                docledger::cli::rebuild::through_service(&url, bearer, &stores).await?
            };
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Erase {
            doc_ids,
            url,
            token,
            timeout_ms,
        } => system.block_on(async move {
            let bearer = docledger::cli::bearer_or(token, &config);
            let retry = docledger::cli::ingest::IngestOptions::new(&url).retry;
            Ok(run_outcome(
                docledger::cli::erase::erase(&url, bearer.as_deref(), &doc_ids, timeout_ms, &retry)
                    .await,
                |lines| {
                    for line in lines {
                        println!("{line}");
                    }
                    lines.iter().all(|l| l.is_done())
                },
            ))
        }),
        Command::Compact { json } => system.block_on(async move {
            let log = docledger::eventlog::PgLog::connect_with_tls(
                &config.eventstore_url,
                2,
                &config.tls,
            )
            .await?;
            let report = docledger::compact::Compactor::new(log, config.compaction.clone())
                .run_once()
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let content = &report.content_removed;
                println!(
                    "compaction: content of {} events of {} documents removed, {} blobs deleted, {} idempotency keys expired, {} resolved compensations pruned in {:.2} s",
                    content.events,
                    content.documents,
                    content.blobs,
                    report.idempotency_keys_expired,
                    report.compensations_pruned,
                    report.seconds
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify { repair, json } => system.block_on(async move {
            let outcome = docledger::cli::verify::run(&config, repair).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                println!("{}", outcome.report.summary());
                if let (Some(summary), Some(after)) = (&outcome.repair, &outcome.after_repair) {
                    println!(
                        "repair: {} changes re-applied, {} removals, {} strays deleted",
                        summary.num_reapplied, summary.num_removed, summary.num_strays_deleted
                    );
                    println!("after repair:\n{}", after.summary());
                }
            }
            Ok(if outcome.matches() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
