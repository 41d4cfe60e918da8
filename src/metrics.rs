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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::actors::lease::STANDBY;
use crate::actors::projector::StoreStatus;
use crate::eventlog::AppendStats;
use crate::verify::VerifyStats;

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
}

impl Metrics {
    /// The metrics of a process whose log counts its appends in `appends`.
    pub fn new(appends: &AppendStats) -> Metrics {
        let mut metrics = Metrics {
            http_requests: Family::default(),
            http_duration: latencies(),
            commands: latencies(),
            batches: latencies(),
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

    /// The exposition: what this process measured, then `scrape`'s figures.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::new();
        let live = scrape.registry();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &live))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// The figures read when scraped.
#[derive(Debug)]
pub struct Scrape<'a> {
    /// Whether the log answered this scrape.
    pub log_up: bool,
    /// Every store's status (the last one read when the log did not answer).
    pub stores: &'a [StoreStatus],
    /// Compensations not settled yet.
    pub open_compensations: usize,
    /// Live document actors.
    pub live_actors: usize,
    /// This process's appends.
    pub appends: &'a AppendStats,
    /// The background verifier.
    pub verify: &'a VerifyStats,
}

type Labels = Vec<(&'static str, String)>;

/// Registers per-scrape values: one plain metric when the only sample has no labels, a
/// family otherwise (a family would print an empty `{}`).
fn register_samples<M, N>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    samples: Vec<(Labels, N)>,
    set: impl Fn(&M, N),
) where
    M: prometheus_client::registry::Metric + Default + Clone,
    Family<Labels, M>: prometheus_client::registry::Metric,
{
    if let [(labels, _)] = samples.as_slice() {
        if labels.is_empty() {
            let metric = M::default();
            if let Some((_, value)) = samples.into_iter().next() {
                set(&metric, value);
            }
            registry.register(name, help, metric);
            return;
        }
    }
    let family = Family::<Labels, M>::default();
    for (labels, value) in samples {
        set(&family.get_or_create(&labels), value);
    }
    registry.register(name, help, family);
}

/// Per-scrape values in seconds.
fn gauge(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
    register_samples(
        registry,
        name,
        help,
        samples,
        |g: &Gauge<f64, AtomicU64>, v| {
            g.set(v);
        },
    );
}

/// Per-scrape counts and positions.
fn gauge_int(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, i64)>) {
    register_samples(registry, name, help, samples, |g: &Gauge, v| {
        g.set(v);
    });
}

/// Per-scrape counters (read from the runners and the log's statistics).
fn counter(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, u64)>) {
    register_samples(registry, name, help, samples, |c: &Counter, v| {
        c.inc_by(v);
    });
}

fn one<N>(value: N) -> Vec<(Labels, N)> {
    vec![(Vec::new(), value)]
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Scrape<'_> {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        gauge_int(
            &mut r,
            "docledger_log_up",
            "1 when the log answered this scrape; 0 when it did not and the log's figures are the last ones read",
            one(i64::from(self.log_up)),
        );
        let first = self.stores.first();
        gauge(
            &mut r,
            "docledger_log_oldest_running_transaction_seconds",
            "Age of the oldest running transaction holding the log's read horizon",
            one(first.map_or(0.0, |s| s.oldest_running_xact_seconds)),
        );
        gauge_int(
            &mut r,
            "docledger_log_head_position",
            "Newest position in the log",
            one(first.map_or(0, |s| s.head_position)),
        );
        gauge_int(
            &mut r,
            "docledger_actors_live",
            "Live document actors",
            one(int(self.live_actors as u64)),
        );
        self.partitions(&mut r);
        counter(
            &mut r,
            "docledger_log_appends",
            "Command appends to the log by this process, by outcome",
            [
                ("committed", &self.appends.committed),
                ("conflict", &self.appends.conflicts),
                ("duplicate", &self.appends.duplicates),
                ("failed", &self.appends.failed),
            ]
            .into_iter()
            .map(|(outcome, n)| (vec![("outcome", outcome.to_owned())], get(n)))
            .collect(),
        );
        for (name, help, value) in [
            (
                "docledger_log_append_groups",
                "Group statements of plain appends (one transaction each) run by this process",
                &self.appends.groups,
            ),
            (
                "docledger_log_append_grouped_commands",
                "Commands carried by those group statements",
                &self.appends.grouped_commands,
            ),
            (
                "docledger_log_append_group_fallbacks",
                "Group statements that failed as a whole; their commands were appended one by one",
                &self.appends.group_fallbacks,
            ),
            (
                "docledger_log_append_fallback_commands",
                "Commands of those group statements, each appended on its own",
                &self.appends.fallback_commands,
            ),
        ] {
            counter(&mut r, name, help, one(get(value)));
        }
        gauge_int(
            &mut r,
            "docledger_compensations_open",
            "Compensations not settled yet (open, needing an operator, or restoring)",
            one(int(self.open_compensations as u64)),
        );
        let v = self.verify;
        counter(
            &mut r,
            "docledger_verify_runs",
            "Background verification runs, by outcome",
            vec![
                (vec![("outcome", "ok".to_owned())], get(&v.runs_total)),
                (
                    vec![("outcome", "failed".to_owned())],
                    get(&v.failed_runs_total),
                ),
            ],
        );
        counter(
            &mut r,
            "docledger_verify_documents",
            "Documents verified by the background verifier",
            one(get(&v.documents_total)),
        );
        counter(
            &mut r,
            "docledger_verify_drift_findings",
            "Differences between a store and the log found by the background verifier (projection lag excluded)",
            one(get(&v.drift_findings_total)),
        );
        gauge_int(
            &mut r,
            "docledger_verify_drifted_documents",
            "Documents of the last background sample whose stores differ from the log",
            one(int(get(&v.drifted_documents))),
        );
        gauge_int(
            &mut r,
            "docledger_verify_last_run_timestamp_seconds",
            "Unix time of the last completed background verification (0 = none yet)",
            one(int(get(&v.last_run_unix_seconds))),
        );
        r
    }

    /// Per store and partition: the gauges of the partitions this process owns, and the
    /// counters of every partition this process has run.
    fn partitions(&self, r: &mut Registry) {
        let mut lag_events = Vec::new();
        let mut lag_seconds = Vec::new();
        let mut applied = Vec::new();
        let mut running = Vec::new();
        let mut batches = Vec::new();
        let mut changes = Vec::new();
        let mut retries = Vec::new();
        let mut parked = Vec::new();
        for s in self.stores {
            for p in &s.partitions {
                let labels: Labels = vec![
                    ("sink", s.name.to_owned()),
                    ("partition", p.partition.to_string()),
                ];
                batches.push((labels.clone(), p.batches));
                changes.push((labels.clone(), p.changes_applied));
                parked.push((labels.clone(), p.permanent_failures));
                for (class, n) in [
                    ("transient", p.transient_retries),
                    ("permanent", p.permanent_failures),
                ] {
                    let mut with_class = labels.clone();
                    with_class.push(("class", class.to_owned()));
                    retries.push((with_class, n));
                }
                // Ownership-aware: a partition another process owns (standby here) is that
                // process's to report, so that summing the processes' series counts each
                // partition once.
                if p.state != STANDBY {
                    lag_events.push((labels.clone(), p.lag_events));
                    lag_seconds.push((labels.clone(), p.lag_seconds));
                    applied.push((labels.clone(), p.applied_position));
                    running.push((labels, i64::from(p.state == "running")));
                }
            }
        }
        gauge_int(
            r,
            "docledger_projection_lag_events",
            "Events not yet applied, per store and partition",
            lag_events,
        );
        gauge(
            r,
            "docledger_projection_lag_seconds",
            "Age of the oldest unapplied event, per store and partition",
            lag_seconds,
        );
        gauge_int(
            r,
            "docledger_projection_applied_position",
            "Checkpoint position, per store and partition",
            applied,
        );
        gauge_int(
            r,
            "docledger_projection_running",
            "1 when the partition's projector is running normally",
            running,
        );
        counter(
            r,
            "docledger_projection_batches",
            "Batches applied by this process, per store and partition",
            batches,
        );
        counter(
            r,
            "docledger_projection_changes",
            "Coalesced changes (newest state per document and batch) written by this process, per store and partition",
            changes,
        );
        counter(
            r,
            "docledger_projection_retries",
            "Failures of projection steps, by class: transient ones are retried, permanent ones parked",
            retries,
        );
        counter(
            r,
            "docledger_projection_parked",
            "Changes a store refused and that were parked for compensation",
            parked,
        );
    }
}
