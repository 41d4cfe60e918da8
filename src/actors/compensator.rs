//! The compensator: turns parked changes (a store permanently refused a version) into
//! `RequestCompensation` commands to the document's actor.
//!
//! Durable by construction: the parked row in the log database is the source of truth, not a
//! message. The compensator reads open parked rows (also those left from before a restart),
//! asks the log what to restore ([`crate::eventlog::ParkedChanges::restore_for`]) and sends
//! the command through the registry; the actor appends the compensation's events and
//! resolves the parked row in one transaction. A crash anywhere in between leaves the row open, and the next pass handles
//! it; a second compensator (another process) finds it resolved and appends nothing.
//! Wake-ups: the NOTIFY that parking sends (on a channel of its own: appends do not wake it),
//! with polling as the fallback.

use std::time::Duration;

use aggregates::{DocId, DocumentCommand};
use projections::retry::RetryOutcome;
use projections::RetryPolicy;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::document::{CommandError, CommandOutcome, ExecuteCommand};
use super::registry::Registry;
use crate::eventlog::{LogError, PendingParked, PgLog};

/// Parked changes handled per pass.
const PAGE: i64 = 100;

/// Starts the compensator; it stops when `cancel` fires.
pub fn spawn(
    log: PgLog,
    registry: Registry,
    retry: RetryPolicy,
    poll: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let compensator = Compensator {
            log,
            registry,
            retry,
            cancel: cancel.clone(),
        };
        loop {
            match compensator.pass().await {
                Ok(handled) if handled > 0 => continue,
                Ok(_) => {}
                Err(Cancelled) => break,
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = compensator.log.wait_for_parked(poll) => {}
            }
        }
        info!("compensator stopped");
    })
}

struct Cancelled;

struct Compensator {
    log: PgLog,
    registry: Registry,
    retry: RetryPolicy,
    cancel: CancellationToken,
}

/// Why one compensation attempt failed (every kind is worth retrying: the log, the actor).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl Compensator {
    /// Handles one page of open parked changes; returns how many.
    async fn pass(&self) -> Result<usize, Cancelled> {
        let page = self
            .retry
            .run(
                &self.cancel,
                |_| true,
                |attempt, e| warn!(attempt, error = %e, "reading parked changes failed, retrying"),
                || self.log.parked().pending_parked(PAGE),
            )
            .await
            .map_err(|_| Cancelled)?;
        for parked in &page {
            self.compensate(parked).await?;
        }
        Ok(page.len())
    }

    async fn compensate(&self, parked: &PendingParked) -> Result<(), Cancelled> {
        let Ok(doc_id) = DocId::parse(&parked.doc_id) else {
            // Only a corrupt log can hold such a row; an operator has to look at it.
            error!(parked = parked.id, doc_id = %parked.doc_id, "parked change names an invalid document id");
            return self
                .retry
                .run(
                    &self.cancel,
                    |_| true,
                    |attempt, e| warn!(attempt, error = %e, "marking parked change failed, retrying"),
                    || self.log.parked().mark_needs_operator(parked.id, "invalid document id"),
                )
                .await
                .map_err(|_| Cancelled);
        };
        let result = self
            .retry
            .run(
                &self.cancel,
                // Compensation never refuses; every failure is the log's or the actor's.
                |_: &AttemptError| true,
                |attempt, e| warn!(parked = parked.id, doc_id = %doc_id, attempt, error = %e, "compensation failed, retrying"),
                || self.attempt(&doc_id, parked),
            )
            .await;
        match result {
            Ok(outcome) => {
                match &outcome.compensation {
                    Some(done) if done.resolves() => {
                        info!(parked = parked.id, doc_id = %doc_id, store = %parked.store, version = parked.version, outcome = %done.describe(), "compensated a refused change")
                    }
                    Some(done) => {
                        error!(parked = parked.id, doc_id = %doc_id, store = %parked.store, version = parked.version, outcome = %done.describe(), "refused change needs an operator")
                    }
                    None => {
                        info!(parked = parked.id, doc_id = %doc_id, "parked change was already compensated")
                    }
                }
                Ok(())
            }
            Err(RetryOutcome::Cancelled) | Err(RetryOutcome::Failed(_)) => Err(Cancelled),
        }
    }

    async fn attempt(
        &self,
        doc_id: &DocId,
        parked: &PendingParked,
    ) -> Result<CommandOutcome, AttemptError> {
        let restore = self
            .log
            .parked()
            .restore_for(doc_id, parked.version)
            .await?;
        let msg = ExecuteCommand {
            command: DocumentCommand::RequestCompensation {
                version: parked.version,
                target: parked.store.clone(),
                reason: parked.reason.clone(),
                restore,
            },
            blob: None,
            idempotency: None,
            compensates: Some(parked.id),
        };
        Ok(self.registry.execute(doc_id, msg).await?)
    }
}
