//! Prometheus text exposition of docledger's gauges, computed when scraped from the live
//! state (projector status, the log's horizon, the actor registry). Names follow
//! `docledger_<subsystem>_<what>_<unit>`; labels are low-cardinality (`sink`, `partition`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::actors::projector::StoreStatus;
use crate::verify::VerifyStats;

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
        for p in &s.partitions {
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
