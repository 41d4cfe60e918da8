//! Prometheus text exposition of docledger's gauges, computed when scraped from the live
//! state (projector status, the log's horizon, the actor registry). Names follow
//! `docledger_<subsystem>_<what>_<unit>`; labels are low-cardinality (`sink`, `partition`).
//! With several processes on one log, each reports the partitions it owns (a partition on
//! standby here is reported by its owner), so a dashboard sums the processes' series.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::actors::lease::STANDBY;
use crate::actors::projector::StoreStatus;
use crate::eventlog::AppendStats;
use crate::verify::VerifyStats;

/// Renders whether the log answered this scrape (0: the log's figures below are the last
/// ones read).
pub fn render_log_up(up: bool) -> String {
    let mut out = String::new();
    gauge(
        &mut out,
        "docledger_log_up",
        "1 when the log answered this scrape; 0 when it did not and the log's figures are the last ones read.",
        &[("", f64::from(u8::from(up)))],
    );
    out
}

/// Renders the gauges.
pub fn render(stores: &[StoreStatus], live_actors: usize) -> String {
    let mut out = String::new();
    let oldest = stores
        .first()
        .map_or(0.0, |s| s.oldest_running_xact_seconds);
    let head = stores.first().map_or(0, |s| s.head_position);
    gauge(
        &mut out,
        "docledger_log_oldest_running_transaction_seconds",
        "Age of the oldest running transaction holding the log's read horizon.",
        &[("", oldest)],
    );
    gauge(
        &mut out,
        "docledger_log_head_position",
        "Newest position in the log.",
        &[("", head as f64)],
    );
    gauge(
        &mut out,
        "docledger_actors_live",
        "Live document actors.",
        &[("", live_actors as f64)],
    );
    let mut lag_events = Vec::new();
    let mut lag_seconds = Vec::new();
    let mut applied = Vec::new();
    let mut up = Vec::new();
    for s in stores {
        // Ownership-aware: a partition another process owns (standby here) is that process's
        // to report, so that summing the processes' series counts each partition once.
        for p in s.partitions.iter().filter(|p| p.state != STANDBY) {
            let labels = format!("sink=\"{}\",partition=\"{}\"", s.name, p.partition);
            lag_events.push((labels.clone(), p.lag_events as f64));
            lag_seconds.push((labels.clone(), p.lag_seconds));
            applied.push((labels.clone(), p.applied_position as f64));
            up.push((labels, f64::from(u8::from(p.state == "running"))));
        }
    }
    gauge(
        &mut out,
        "docledger_projection_lag_events",
        "Events not yet applied, per store and partition.",
        &refs(&lag_events),
    );
    gauge(
        &mut out,
        "docledger_projection_lag_seconds",
        "Age of the oldest unapplied event, per store and partition.",
        &refs(&lag_seconds),
    );
    gauge(
        &mut out,
        "docledger_projection_applied_position",
        "Checkpoint position, per store and partition.",
        &refs(&applied),
    );
    gauge(
        &mut out,
        "docledger_projection_running",
        "1 when the partition's projector is running normally.",
        &refs(&up),
    );
    out
}

/// Renders the activity counters: appends by outcome and their latency, projection batches,
/// changes, apply time, retries by class and parked changes per store and partition, and
/// the number of open compensations.
pub fn render_activity(
    stores: &[StoreStatus],
    appends: &AppendStats,
    open_compensations: usize,
) -> String {
    let mut out = String::new();
    let get = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
    counter(
        &mut out,
        "docledger_log_appends_total",
        "Command appends to the log by this process, by outcome.",
        &[
            ("outcome=\"committed\"", get(&appends.committed)),
            ("outcome=\"conflict\"", get(&appends.conflicts)),
            ("outcome=\"duplicate\"", get(&appends.duplicates)),
            ("outcome=\"failed\"", get(&appends.failed)),
        ],
    );
    let num_appends = get(&appends.committed)
        + get(&appends.conflicts)
        + get(&appends.duplicates)
        + get(&appends.failed);
    counter(
        &mut out,
        "docledger_log_append_groups_total",
        "Group statements of plain appends (one transaction each) run by this process.",
        &[("", get(&appends.groups))],
    );
    counter(
        &mut out,
        "docledger_log_append_grouped_commands_total",
        "Commands carried by those group statements.",
        &[("", get(&appends.grouped_commands))],
    );
    counter(
        &mut out,
        "docledger_log_append_group_fallbacks_total",
        "Group statements that failed as a whole; their commands were appended one by one.",
        &[("", get(&appends.group_fallbacks))],
    );
    counter(
        &mut out,
        "docledger_log_append_fallback_commands_total",
        "Commands of those group statements, each appended on its own.",
        &[("", get(&appends.fallback_commands))],
    );
    summary(
        &mut out,
        "docledger_log_append_duration_seconds",
        "Time spent appending commands to the log.",
        &[("", get(&appends.micros) / 1e6, num_appends)],
    );
    let mut batches = Vec::new();
    let mut changes = Vec::new();
    let mut apply = Vec::new();
    let mut retries = Vec::new();
    let mut parked = Vec::new();
    for s in stores {
        for p in &s.partitions {
            let labels = format!("sink=\"{}\",partition=\"{}\"", s.name, p.partition);
            batches.push((labels.clone(), p.batches as f64));
            changes.push((labels.clone(), p.changes_applied as f64));
            apply.push((labels.clone(), p.apply_seconds, p.batches as f64));
            retries.push((
                format!("{labels},class=\"transient\""),
                p.transient_retries as f64,
            ));
            retries.push((
                format!("{labels},class=\"permanent\""),
                p.permanent_failures as f64,
            ));
            parked.push((labels, p.permanent_failures as f64));
        }
    }
    counter(
        &mut out,
        "docledger_projection_batches_total",
        "Batches applied, per store and partition.",
        &refs(&batches),
    );
    counter(
        &mut out,
        "docledger_projection_changes_total",
        "Coalesced changes (newest state per document and batch) written, per store and partition.",
        &refs(&changes),
    );
    let apply_refs: Vec<(&str, f64, f64)> = apply
        .iter()
        .map(|(l, sum, n)| (l.as_str(), *sum, *n))
        .collect();
    summary(
        &mut out,
        "docledger_projection_batch_duration_seconds",
        "Time to apply a batch (store writes, records, checkpoint), per store and partition.",
        &apply_refs,
    );
    counter(
        &mut out,
        "docledger_projection_retries_total",
        "Failures of projection steps, by class: transient ones are retried, permanent ones parked.",
        &refs(&retries),
    );
    counter(
        &mut out,
        "docledger_projection_parked_total",
        "Changes a store refused and that were parked for compensation.",
        &refs(&parked),
    );
    gauge(
        &mut out,
        "docledger_compensations_open",
        "Compensations not settled yet (open, needing an operator, or restoring).",
        &[("", open_compensations as f64)],
    );
    out
}

/// Renders the background verifier's counters and drift gauge.
pub fn render_verify(stats: &VerifyStats) -> String {
    let mut out = String::new();
    let get = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64;
    counter(
        &mut out,
        "docledger_verify_runs_total",
        "Background verification runs, by outcome.",
        &[
            ("outcome=\"ok\"", get(&stats.runs_total)),
            ("outcome=\"failed\"", get(&stats.failed_runs_total)),
        ],
    );
    counter(
        &mut out,
        "docledger_verify_documents_total",
        "Documents verified by the background verifier.",
        &[("", get(&stats.documents_total))],
    );
    counter(
        &mut out,
        "docledger_verify_drift_findings_total",
        "Differences between a store and the log found by the background verifier (projection lag excluded).",
        &[("", get(&stats.drift_findings_total))],
    );
    gauge(
        &mut out,
        "docledger_verify_drifted_documents",
        "Documents of the last background sample whose stores differ from the log.",
        &[("", get(&stats.drifted_documents))],
    );
    gauge(
        &mut out,
        "docledger_verify_last_run_timestamp_seconds",
        "Unix time of the last completed background verification (0 = none yet).",
        &[("", get(&stats.last_run_unix_seconds))],
    );
    out
}

/// A summary without quantiles: `_sum` and `_count` per label set.
fn summary(out: &mut String, name: &str, help: &str, samples: &[(&str, f64, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} summary");
    for (labels, sum, count) in samples {
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    metric(out, "counter", name, help, samples);
}

fn refs(v: &[(String, f64)]) -> Vec<(&str, f64)> {
    v.iter().map(|(l, x)| (l.as_str(), *x)).collect()
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]) {
    metric(out, "gauge", name, help, samples);
}

fn metric(out: &mut String, kind: &str, name: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}
