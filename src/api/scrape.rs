//! The figures `/metrics` reads when scraped: the projectors' state, lag and counters, the
//! log's horizon and append counters, open compensations, live actors and the background
//! verifier, rendered after what this process measured ([`Metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::actors::lease::STANDBY;
use crate::actors::projector::StoreStatus;
use crate::metrics::{AppendStats, Metrics};
use crate::verify::VerifyStats;

/// The figures read when scraped.
#[derive(Debug)]
pub struct Scrape<'a> {
    /// Whether the log answered this scrape.
    pub log_up: bool,
    /// Every store's status (the last one read when the log did not answer).
    pub stores: &'a [StoreStatus],
    /// Compensations not settled yet.
    pub open_compensations: usize,
    /// The log database's size on disk, bytes.
    pub log_bytes: i64,
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
    /// The exposition: what `metrics` measured, then these figures.
    pub fn render(&self, metrics: &Metrics) -> String {
        metrics.render(&self.registry())
    }

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
            "docledger_log_database_bytes",
            "Size on disk of the log database (tables, indexes, TOAST)",
            one(self.log_bytes),
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
