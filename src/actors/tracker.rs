//! The consistency tracker: when the projectors report that all three stores hold a
//! document's version, it marks the MySQL row `ready` and records that in the log database,
//! then wakes requests waiting for `consistency=applied`.
//!
//! Nothing here lives only in memory: if the process stops between the projector's report
//! and the MySQL update, the start-up sweep finds the document again in the log database
//! (all stores at the version, readiness not recorded) and finishes it.

use std::sync::Arc;

use projections::mysql::MysqlSink;
use projections::{AppliedVersion, ErrorClass, RetryPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::eventlog::PgLog;

/// Documents swept per query at start.
const SWEEP_PAGE: i64 = 1000;

/// Starts the tracker. `ready` is bumped after every batch marked ready.
pub fn spawn(
    log: PgLog,
    mysql: Arc<MysqlSink>,
    mut consistent: mpsc::Receiver<Vec<AppliedVersion>>,
    ready: watch::Sender<u64>,
    retry: RetryPolicy,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tracker = Tracker {
            log,
            mysql,
            ready,
            retry,
            cancel: cancel.clone(),
        };
        tracker.sweep().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                batch = consistent.recv() => match batch {
                    Some(batch) => { if tracker.finish(&batch).await.is_err() { break } }
                    None => break,
                },
            }
        }
        info!("consistency tracker stopped");
    })
}

struct Tracker {
    log: PgLog,
    mysql: Arc<MysqlSink>,
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
                    || self.log.unfinished_ready(SWEEP_PAGE),
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
        self.retry
            .run(
                &self.cancel,
                |e: &projections::SinkError| e.class == ErrorClass::Transient,
                |attempt, e| warn!(attempt, error = %e, "marking rows ready failed, retrying"),
                || self.mysql.mark_ready(docs),
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
                || self.log.record_ready(docs),
            )
            .await
            .map_err(|_| ())?;
        self.ready.send_modify(|n| *n += 1);
        Ok(())
    }
}
