//! The log's compaction pass: removes from the log what is past its time, so that the log's
//! size follows the knowledge base rather than its history:
//! - the content of versions the retention policy no longer keeps (`DOCLEDGER_RETAIN_VERSIONS`
//!   newest versions per live document, every version younger than `DOCLEDGER_RETAIN_DAYS`,
//!   the newest version every store accepted and everything after it stay whole; see
//!   `aggregates::document::retention`), and the blob bytes no kept version refers to;
//! - idempotency keys older than `DOCLEDGER_IDEMPOTENCY_TTL_SECS`;
//! - resolved compensations older than `DOCLEDGER_RETAIN_DAYS` that nothing needs any more.
//!
//! `docledger compact` runs one pass; `serve` runs one every `DOCLEDGER_COMPACT_INTERVAL_SECS`,
//! beside appends and projectors (a pass works in short transactions over bounded pages,
//! skipping what an append holds, so neither waits on it for long). Several processes may
//! run passes at once, and a pass killed at any point leaves every page done or untouched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use aggregates::document::retention::RetentionPolicy;

use crate::config::CompactionConfig;
use crate::eventlog::{ContentRemoval, LogError, PgLog};
use crate::metrics::{Metrics, OutcomeLabels, RemovedLabels};

/// What one compaction pass removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompactionReport {
    /// Content removed by the retention policy (documents, events, blobs).
    pub content_removed: ContentRemoval,
    /// Idempotency keys past their TTL, deleted.
    pub idempotency_keys_expired: u64,
    /// Resolved compensations past the retention period, deleted.
    pub compensations_pruned: u64,
    /// Seconds the pass took.
    pub seconds: f64,
}

/// Runs compaction passes over one log; cheap to clone.
#[derive(Clone)]
pub struct Compactor {
    log: PgLog,
    config: CompactionConfig,
    metrics: Option<Arc<Metrics>>,
}

impl Compactor {
    /// A compactor of `log` by `config`.
    pub fn new(log: PgLog, config: CompactionConfig) -> Compactor {
        Compactor {
            log,
            config,
            metrics: None,
        }
    }

    /// Counts every pass and what it removed in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Compactor {
        self.metrics = Some(metrics);
        self
    }

    /// The retention policy the configuration sets.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            versions: self.config.retain_versions,
            max_age: self.config.retain,
        }
    }

    /// Runs one pass now.
    ///
    /// # Errors
    /// [`LogError`] when the log fails; what was removed before stays removed.
    pub async fn run_once(&self) -> Result<CompactionReport, LogError> {
        let started = Instant::now();
        let content_removed = self
            .log
            .compaction()
            .remove_old_content(self.policy())
            .await?;
        let idempotency_keys_expired = self
            .log
            .compaction()
            .expire_idempotency_keys(self.config.idempotency_ttl)
            .await?;
        let compensations_pruned = self
            .log
            .compaction()
            .prune_resolved_compensations(self.config.retain)
            .await?;
        Ok(CompactionReport {
            content_removed,
            idempotency_keys_expired,
            compensations_pruned,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Runs a pass every `interval` (the first one after `interval`) until `cancel`.
    pub async fn run_background(self, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let pass = self.run_once().await;
            if let Some(metrics) = &self.metrics {
                let outcome = if pass.is_ok() { "done" } else { "failed" };
                metrics
                    .compaction_passes
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
                if let Ok(report) = &pass {
                    for (what, n) in [
                        ("event_contents", report.content_removed.events),
                        ("blobs", report.content_removed.blobs),
                        ("idempotency_keys", report.idempotency_keys_expired),
                        ("compensations", report.compensations_pruned),
                    ] {
                        metrics
                            .compaction_removed
                            .get_or_create(&RemovedLabels { what })
                            .inc_by(n);
                    }
                }
            }
            match pass {
                Ok(report) => info!(
                    documents_compacted = report.content_removed.documents,
                    event_contents_removed = report.content_removed.events,
                    blobs_removed = report.content_removed.blobs,
                    idempotency_keys_expired = report.idempotency_keys_expired,
                    compensations_pruned = report.compensations_pruned,
                    seconds = report.seconds,
                    "compaction pass"
                ),
                Err(e) => warn!(error = %e, "compaction pass failed; the next one tries again"),
            }
        }
    }
}
