//! `/metrics`, through prometheus-client (OpenMetrics text). Names follow
//! `docledger_<subsystem>_<what>_<unit>`; labels are low-cardinality (`sink`, `partition`,
//! `route`, `command`, ...). Counters are named here without their `_total`, which the
//! encoder appends.
//!
//! Two kinds of figures:
//! - measured as things happen, in this process's [`Metrics`]: histograms of HTTP requests,
//!   commands, projection batches, log appends and time to consistent; request counts;
//!   build info; process metrics (read from `/proc` when scraped);
//! - read when scraped ([`Scrape`]): the projectors' state, lag and counters, the log's
//!   horizon, open compensations, live actors and the background verifier. The figures read
//!   from the log are the last ones read while the log does not answer (`docledger_log_up`
//!   says which).
//!
//! With several processes on one log, each reports the partitions it owns (a partition on
//! standby here is reported by its owner), so a dashboard sums the processes' series.

mod process;

use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A latency histogram: buckets from 1 ms doubling to about 65 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// A family of latency histograms.
pub type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

fn latencies<L: Clone + std::hash::Hash + Eq>() -> Latencies<L> {
    Family::new_with_constructor(latency_histogram)
}

/// An HTTP request's route (the matched pattern, `/v1/documents/{doc_id}`, never the path:
/// document ids would make one series each) and method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The route pattern; `unmatched` for a path no route serves.
    pub route: String,
}

/// An HTTP answer: its route and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// As [`RouteLabels::route`].
    pub route: String,
    /// `200`, `404`, ...
    pub status: String,
}

/// A document command and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// `put` | `delete` | `compensate` | `redrive`.
    pub command: &'static str,
    /// `committed` | `unchanged` | `refused` | `conflict` | `unavailable` | `busy`.
    pub outcome: &'static str,
}

/// A projector partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// `mysql` | `milvus` | `s3`.
    pub sink: String,
    /// 0-based partition index.
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    rustc: &'static str,
}

/// What this process measures as it goes, and the registry that exposes it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route and status.
    pub http_requests: Family<ResponseLabels, Counter>,
    /// HTTP request latency, by route.
    pub http_duration: Latencies<RouteLabels>,
    /// Document command latency (actor, decision, append), by command and outcome.
    pub commands: Latencies<CommandLabels>,
    /// Projection batch apply time, by store and partition.
    pub batches: Latencies<PartitionLabels>,
    /// Compaction passes run by this process, by outcome.
    pub compaction_passes: Family<OutcomeLabels, Counter>,
    /// What those passes removed, by kind.
    pub compaction_removed: Family<RemovedLabels, Counter>,
}

/// A compaction pass's outcome: `done` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `done` | `failed`.
    pub outcome: &'static str,
}

/// What a compaction pass removed: `event_contents` (events whose content retention
/// removed), `blobs`, `idempotency_keys`, `compensations`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemovedLabels {
    /// The kind of record.
    pub what: &'static str,
}

impl Metrics {
    /// The metrics of a process whose log counts its appends in `appends`.
    pub fn new(appends: &AppendStats) -> Metrics {
        let mut metrics = Metrics {
            http_requests: Family::default(),
            http_duration: latencies(),
            commands: latencies(),
            batches: latencies(),
            compaction_passes: Family::default(),
            compaction_removed: Family::default(),
            registry: Registry::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "docledger_build",
            "The running build: its version and the compiler that built it",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                rustc: env!("BUILD_INFO_RUSTC_VERSION"),
            }),
        );
        registry.register(
            "docledger_http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "docledger_http_request_duration_seconds",
            "Time from an HTTP request to its answer's head (reading the request body included), by method and route",
            metrics.http_duration.clone(),
        );
        registry.register(
            "docledger_command_duration_seconds",
            "Time to decide and append a document command, from the API to the actor's answer, by command and outcome",
            metrics.commands.clone(),
        );
        registry.register(
            "docledger_log_append_duration_seconds",
            "Time spent appending one command's events to the log (group commit included)",
            appends.duration.clone(),
        );
        registry.register(
            "docledger_time_to_consistent_seconds",
            "From a document version's append to the moment the last of the three stores holds it, observed by the process that recorded that last store",
            appends.time_to_consistent.clone(),
        );
        registry.register(
            "docledger_projection_batch_duration_seconds",
            "Time to apply a batch (store writes, records, checkpoint), per store and partition",
            metrics.batches.clone(),
        );
        registry.register(
            "docledger_compaction_passes",
            "Compaction passes of the log run by this process (serve's background passes), by outcome",
            metrics.compaction_passes.clone(),
        );
        registry.register(
            "docledger_compaction_removed",
            "Records those passes removed from the log, by kind",
            metrics.compaction_removed.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        metrics
    }

    /// Observes one projection batch of `sink`/`partition` that took `took`.
    pub fn batch_observer(
        &self,
        sink: &str,
        partition: u32,
    ) -> impl Fn(Duration) + Send + Sync + 'static {
        let histogram = self
            .batches
            .get_or_create(&PartitionLabels {
                sink: sink.to_owned(),
                partition: partition.to_string(),
            })
            .clone();
        move |took| histogram.observe(took.as_secs_f64())
    }

    /// The exposition: what this process measured, then the figures read when scraped
    /// (`live`, see `api::scrape`).
    pub fn render(&self, live: &Registry) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, live))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// Counters of this process's appends, and what its log measures for `/metrics`.
#[derive(Debug)]
pub struct AppendStats {
    /// Appends that committed events.
    pub committed: std::sync::atomic::AtomicU64,
    /// Appends refused for a stale expected version.
    pub conflicts: std::sync::atomic::AtomicU64,
    /// Appends answered from an idempotency key.
    pub duplicates: std::sync::atomic::AtomicU64,
    /// Appends that failed otherwise (database unavailable, ...).
    pub failed: std::sync::atomic::AtomicU64,
    /// Time of each append, over all outcomes.
    pub duration: Histogram,
    /// From a version's append to its recording by the last of the three stores (observed
    /// by the process that records that last store).
    pub time_to_consistent: Histogram,
    /// Group statements that ran (each one transaction of one or more plain appends).
    pub groups: std::sync::atomic::AtomicU64,
    /// Commands those group statements carried (committed or conflicting).
    pub grouped_commands: std::sync::atomic::AtomicU64,
    /// Group statements that failed as a whole and whose commands were appended one by one.
    pub group_fallbacks: std::sync::atomic::AtomicU64,
    /// Commands of those groups, each appended on its own.
    pub fallback_commands: std::sync::atomic::AtomicU64,
}

impl Default for AppendStats {
    fn default() -> Self {
        AppendStats {
            committed: Default::default(),
            conflicts: Default::default(),
            duplicates: Default::default(),
            failed: Default::default(),
            duration: latency_histogram(),
            time_to_consistent: latency_histogram(),
            groups: Default::default(),
            grouped_commands: Default::default(),
            group_fallbacks: Default::default(),
            fallback_commands: Default::default(),
        }
    }
}
