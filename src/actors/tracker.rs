//! The consistency tracker: when the projectors report that all three stores hold a
//! document's version, it marks the MySQL row `ready` and records that in the log database,
//! then wakes requests waiting for `consistency=applied`.
//!
//! Nothing here lives only in memory: if the process stops between the projector's report
//! and the MySQL update, the start-up sweep finds the document again in the log database
//! (all stores at the version, readiness not recorded) and finishes it.

use projections::{AppliedVersion, ErrorClass, RetryPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::eventlog::PgLog;
use crate::stores::Stores;

/// Documents swept per query at start.
const SWEEP_PAGE: i64 = 1000;

/// Most documents finished together: reports waiting in the channel are merged up to this
/// many, so one MySQL update and one log update cover many projector batches.
const MAX_MERGED: usize = 4096;

/// Starts the tracker. `ready` is bumped after every batch marked ready.
pub fn spawn(
    log: PgLog,
    stores: Stores,
    mut consistent: mpsc::Receiver<Vec<AppliedVersion>>,
    ready: watch::Sender<u64>,
    retry: RetryPolicy,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tracker = Tracker {
            log,
            stores,
            ready,
            retry,
            cancel: cancel.clone(),
        };
        tracker.sweep().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                batch = consistent.recv() => match batch {
                    Some(mut batch) => {
                        // Under load the projectors report faster than one update per report
                        // can follow: take what is already waiting along.
                        let mut merged = false;
                        while batch.len() < MAX_MERGED {
                            match consistent.try_recv() {
                                Ok(more) => { batch.extend(more); merged = true; }
                                Err(_) => break,
                            }
                        }
                        if merged {
                            newest_per_document(&mut batch);
                        }
                        if tracker.finish(&batch).await.is_err() { break }
                    }
                    None => break,
                },
            }
        }
        info!("consistency tracker stopped");
    })
}

/// Keeps one entry per document, at its newest reported version: fewer rows to send (the
/// log's readiness update keeps a document's newest version of several itself).
fn newest_per_document(batch: &mut Vec<AppliedVersion>) {
    batch.sort_by(|a, b| a.doc_id.cmp(&b.doc_id).then(b.version.cmp(&a.version)));
    batch.dedup_by(|later, first| later.doc_id == first.doc_id);
}

struct Tracker {
    log: PgLog,
    stores: Stores,
    ready: watch::Sender<u64>,
    retry: RetryPolicy,
    cancel: CancellationToken,
}

impl Tracker {
    async fn sweep(&self) {
        loop {
            let page = self
                .retry
                .run(
                    &self.cancel,
                    |_| true,
                    |attempt, e| warn!(attempt, error = %e, "readiness sweep failed, retrying"),
                    || self.log.store_records().unfinished_ready(SWEEP_PAGE),
                )
                .await;
            match page {
                Ok(page) if !page.is_empty() => {
                    info!(
                        documents = page.len(),
                        "finishing readiness left over from a previous run"
                    );
                    if self.finish(&page).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Marks rows ready, then records it; `Err` only when cancelled.
    async fn finish(&self, docs: &[AppliedVersion]) -> Result<(), ()> {
        let started = std::time::Instant::now();
        self.retry
            .run(
                &self.cancel,
                |e: &projections::SinkError| e.class == ErrorClass::Transient,
                |attempt, e| warn!(attempt, error = %e, "marking rows ready failed, retrying"),
                || self.stores.mark_ready(docs),
            )
            .await
            .or_else(|e| match e {
                projections::retry::RetryOutcome::Cancelled => Err(()),
                projections::retry::RetryOutcome::Failed(e) => {
                    warn!(error = %e, "marking rows ready refused; readiness stays pending");
                    Ok(())
                }
            })?;
        self.retry
            .run(
                &self.cancel,
                |_| true,
                |attempt, e| warn!(attempt, error = %e, "recording readiness failed, retrying"),
                || self.log.store_records().record_ready(docs),
            )
            .await
            .map_err(|_| ())?;
        debug!(
            documents = docs.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "rows marked ready"
        );
        self.ready.send_modify(|n| *n += 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use aggregates::DocId;

    use super::*;

    fn applied(doc: &str, version: u64) -> AppliedVersion {
        AppliedVersion {
            doc_id: DocId::parse(doc).expect("valid id"),
            version,
        }
    }

    #[test]
    fn merged_reports_keep_the_newest_version_of_each_document() {
        let mut batch = vec![
            applied("b", 1),
            applied("a", 1),
            applied("b", 3),
            applied("b", 2),
        ];
        newest_per_document(&mut batch);
        assert_eq!(batch, vec![applied("a", 1), applied("b", 3)]);
    }
}
