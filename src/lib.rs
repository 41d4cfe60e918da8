//! docledger's runtime: the PostgreSQL log, the document actors, the projectors, the HTTP API
//! and the command line's building blocks. [`serve`] is what `main` and the tests start.

pub mod actors;
pub mod api;
pub mod cli;
pub mod compact;
pub mod config;
pub mod eventlog;
pub mod metrics;
pub mod rebuild;
pub mod stores;
pub mod verify;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::http::KeepAlive;
use actix_web::{web, App, HttpServer};
use projections::{RetryPolicy, RunnerConfig, SinkError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::actors::projector::Projectors;
use crate::actors::registry::Registry;
use crate::actors::{compensator, tracker};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::config::Config;
use crate::eventlog::lease::Leases;
use crate::eventlog::{LogError, PgLog};
pub use crate::stores::Stores;
use crate::verify::Verifier;

/// The allocator of every binary that links docledger (the service, the benches and the
/// tests alike, so they measure what runs). Rebuilds and projector batches allocate and free
/// pages of rows many times a second; glibc's malloc gave the freed memory back to the
/// kernel and took it again, so a fifth of a rebuild's CPU went to page faults on fresh
/// pages and another fifth to malloc and free (`perf`, benches/HISTORY.md "Rebuild").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2: the 16th option; the sys crate has
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc gives it back to the kernel,
/// in ms (mimalloc's default: 10; for its arenas × 10).
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets the allocator up for a long-running service that allocates and frees the same
/// amounts over and over; call first thing in `main`, before other threads start. Each
/// setting keeps mimalloc's own environment variable as the operator's override.
///
/// - Transparent huge pages off for this process and the processes it starts, unless
///   `MIMALLOC_ALLOW_THP` is set (`1` keeps them). mimalloc asks for huge pages on its arenas
///   (`madvise(MADV_HUGEPAGE)`), so on a kernel in THP `madvise` or `always` mode the first
///   touch of every fresh 2 MiB range zeroes all of it: request buffers, store client
///   buffers and a new thread's heap each paid for 2 MiB, ~5 % of the service's CPU in a
///   batch run (`clear_page_erms` under `perf`; README "Performance"). With 4 KiB pages only
///   what is touched is zeroed. A kernel without the switch keeps huge pages.
/// - Freed memory is given back after [`PURGE_DELAY_MS`] instead of 10 ms, unless
///   `MIMALLOC_PURGE_DELAY` is set. A batch's request bodies, vectors and store requests are
///   freed between two batches, and with the default delay their pages went back to the
///   kernel and were faulted in again, zeroed, for the next batch: page faults and
///   `madvise` were a tenth of the service's CPU in a batch run, and alternating runs
///   measured 17 % less service CPU per document with the longer delay
///   (`benches/HISTORY.md`, "Allocator purge delay"). Memory freed for good still goes back
///   within a second.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a flag on this
        // process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; not thread safe, so called before other threads
        // start (mimalloc reads options without locks).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Capacity of the projectors → tracker channel (batches of newly consistent documents).
const CONSISTENT_CHANNEL_CAPACITY: usize = 256;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The log database.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A store.
    #[error(transparent)]
    Store(#[from] SinkError),
    /// The HTTP server.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
}

/// Runs the service on `listener` until `shutdown` fires: the log, the document actors, one
/// projector per store and partition, the consistency tracker, the compensator (parked
/// changes → `RequestCompensation`) and the HTTP API. Must run
/// inside an actix system (`actix_rt::System` / `#[actix_rt::test]`).
///
/// Shutdown: the HTTP server stops accepting and lets in-flight requests finish, then the
/// projectors finish their batch and checkpoint, then the actors' arbiters stop.
///
/// # Errors
/// [`ServeError`] when the log or a store cannot be reached at start, or the server fails.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    if config.api_tokens.is_empty() {
        warn!("DOCLEDGER_API_TOKENS is not set: the API accepts requests without authentication");
    }
    info!(config = ?config, "starting docledger");
    let log = PgLog::connect_with(
        &config.eventstore_url,
        config.log_pool_size,
        &config.tls,
        config.append_group.clone(),
    )
    .await?;
    info!(log_id = log.log_id(), "log ready");
    let stores = Stores::connect(&config).await?;

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arbiters: Vec<actix::Arbiter> = (0..workers).map(|_| actix::Arbiter::new()).collect();
    let metrics = Arc::new(metrics::Metrics::new(log.appends().append_stats()));
    let registry = Registry::new(
        log.clone(),
        config.actors.clone(),
        arbiters.iter().map(|a| a.handle()).collect(),
        metrics.commands.clone(),
    );

    let retry = RetryPolicy {
        base: config.projection.retry_base,
        max: config.projection.retry_max,
        max_attempts: None,
    };
    let runner_config = RunnerConfig {
        batch_size: config.projection.batch_size,
        idle_poll: config.projection.idle_poll,
        linger: config.projection.linger,
        retry,
    };
    let projection_cancel = CancellationToken::new();
    let (consistent_tx, consistent_rx) = mpsc::channel(CONSISTENT_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = watch::channel(0u64);
    let partitions = config.projection.partitions.get();
    // Released after the projectors stopped: another process takes a partition only once
    // this one's runner has finished its batch.
    let lease_cancel = CancellationToken::new();
    let (leases, lease_task) = Leases::spawn(
        log.connector(),
        config.projection.lease_poll,
        retry,
        partitions,
        lease_cancel.clone(),
    );
    let mut projectors = Projectors::leased(leases.clone()).with_metrics(metrics.clone());
    projectors.start_all(
        &stores,
        &log,
        partitions,
        &runner_config,
        &consistent_tx,
        &projection_cancel,
    );
    drop(consistent_tx);
    let tracker = tracker::spawn(
        log.clone(),
        stores.clone(),
        consistent_rx,
        ready_tx,
        retry,
        projection_cancel.clone(),
    );

    let verifier = Verifier::new(log.clone(), stores.clone(), partitions);
    let background_verifier = config.verify.interval.map(|interval| {
        tokio::spawn(verifier.clone().run_background(
            interval,
            config.verify.sample,
            projection_cancel.clone(),
        ))
    });
    let background_compactor = config.compaction.interval.map(|interval| {
        tokio::spawn(
            compact::Compactor::new(log.clone(), config.compaction.clone())
                .with_metrics(metrics.clone())
                .run_background(interval, projection_cancel.clone()),
        )
    });
    // After the projectors: parked changes left from a previous run are compensated first.
    let compensator = compensator::spawn(
        log.clone(),
        registry.clone(),
        retry,
        config.projection.idle_poll,
        projection_cancel.clone(),
    );

    let history = actors::history::StatusHistory::default();
    let sampler = tokio::spawn(history.clone().run(
        log.clone(),
        projectors.view(),
        actors::history::SAMPLE_INTERVAL,
        projection_cancel.clone(),
    ));
    let instance = format!(
        "{} (pid {})",
        listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
        std::process::id()
    );
    let rebuilder = rebuild::Rebuilder::new(log.clone(), stores.clone(), partitions, true)
        .with_page_events(config.projection.rebuild_page_events);
    let control = actors::control::spawn(
        log.clone(),
        projectors.view(),
        leases.clone(),
        rebuilder,
        projection_cancel.clone(),
    );
    let state = AppState {
        metrics,
        metrics_cache: Arc::default(),
        instance,
        history,
        verifier,
        config: config.clone(),
        registry,
        log: log.clone(),
        projections: projectors.view(),
        ready: ready_rx,
    };
    let server = HttpServer::new(move || {
        App::new()
            .wrap_fn(api::body::hold_ignored_body)
            .wrap_fn(api::access::access_log)
            .app_data(web::Data::new(state.clone()))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::InvalidQuery(e.to_string()).into()),
            )
            .configure(api::routes)
    })
    .workers(config.http.workers)
    .max_connections(config.http.max_connections_per_worker())
    .client_request_timeout(config.http.request_timeout)
    .client_disconnect_timeout(config.http.disconnect_timeout)
    .keep_alive(
        config
            .http
            .keep_alive
            .map_or(KeepAlive::Disabled, KeepAlive::Timeout),
    )
    .disable_signals()
    .shutdown_timeout(30)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    info!(
        addr = ?handle_addr(&config),
        http_workers = config.http.workers,
        max_connections = config.http.max_connections_per_worker() * config.http.workers,
        "docledger serving"
    );

    shutdown.cancelled().await;
    info!("shutting down: draining requests");
    handle.stop(true).await;
    let served = server_task.await;
    info!("stopping projectors");
    projection_cancel.cancel();
    let _ = control.await;
    projectors.join().await;
    lease_cancel.cancel();
    let _ = lease_task.await;
    let _ = tracker.await;
    let _ = sampler.await;
    for task in [background_verifier, background_compactor]
        .into_iter()
        .flatten()
    {
        let _ = task.await;
    }
    let _ = compensator.await;
    for arbiter in arbiters {
        arbiter.stop();
    }
    info!("docledger stopped");
    match served {
        Ok(result) => result.map_err(ServeError::Http),
        Err(e) => Err(ServeError::Http(std::io::Error::other(e.to_string()))),
    }
}

fn handle_addr(config: &Config) -> String {
    config.listen.to_string()
}

#[cfg(test)]
mod tests {
    /// The option index is the one whose mimalloc default is the purge delay's 10 ms (its
    /// neighbours default to 1 and 0), and setting it takes.
    #[test]
    fn the_purge_delay_option_is_mimallocs_and_is_set() {
        // SAFETY: reads and sets integer options.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(
                    libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                    10
                );
            }
            assert_eq!(
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY - 1),
                1
            );
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            super::tune_allocator();
            // SAFETY: as above.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, super::PURGE_DELAY_MS);
        }
    }
}
