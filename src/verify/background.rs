//! The background verifier of `serve`: every interval, verifies a random sample of
//! documents in every store and publishes the drift it finds (`/metrics`). It only reads;
//! drift is repaired by an operator (`docledger verify --repair`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::Verifier;

/// Counters of the background verifier, rendered by `/metrics`.
#[derive(Debug, Default)]
pub struct VerifyStats {
    /// Completed sample runs.
    pub runs_total: AtomicU64,
    /// Runs that failed to read the log or a store.
    pub failed_runs_total: AtomicU64,
    /// Documents verified.
    pub documents_total: AtomicU64,
    /// Drift findings (not in flight) over all runs.
    pub drift_findings_total: AtomicU64,
    /// Documents with drift in the last completed run.
    pub drifted_documents: AtomicU64,
    /// Unix seconds of the last completed run (0 = none yet).
    pub last_run_unix_seconds: AtomicU64,
}

impl Verifier {
    /// Verifies `sample` random documents once; returns how many of them drifted.
    ///
    /// # Errors
    /// [`super::VerifyError`] when the log or a store cannot be read.
    pub async fn verify_sample(&self, sample: u32) -> Result<u64, super::VerifyError> {
        let ids = self
            .log
            .reads()
            .sample_stream_ids(i64::from(sample))
            .await?;
        let mut drifted = 0u64;
        let mut findings = 0u64;
        for id in &ids {
            let verification = self.verify_document(id).await?;
            let drift = verification
                .findings
                .iter()
                .filter(|f| !f.in_flight)
                .count() as u64;
            if drift > 0 {
                warn!(doc_id = %id, findings = drift, "background verification found drift");
                drifted += 1;
                findings += drift;
            }
        }
        let stats = &self.stats;
        stats.runs_total.fetch_add(1, Ordering::Relaxed);
        stats
            .documents_total
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        stats
            .drift_findings_total
            .fetch_add(findings, Ordering::Relaxed);
        stats.drifted_documents.store(drifted, Ordering::Relaxed);
        stats.last_run_unix_seconds.store(
            (projections::runner::now_ms() / 1000).max(0) as u64,
            Ordering::Relaxed,
        );
        debug!(
            documents = ids.len(),
            drifted, "background verification run"
        );
        Ok(drifted)
    }

    /// Runs [`Verifier::verify_sample`] every `interval` until `cancel`.
    pub async fn run_background(self, interval: Duration, sample: u32, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.verify_sample(sample).await {
                self.stats.failed_runs_total.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "background verification failed");
            }
        }
    }
}
