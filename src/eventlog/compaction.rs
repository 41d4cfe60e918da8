//! What the compaction pass removes from the log once it is past its time: idempotency keys
//! after their TTL, resolved compensations after the retention period.
//!
//! Invariants: a pass only deletes what is past its time at the moment it runs, a bounded
//! number of rows per statement (no long transaction holds appends back), and several
//! processes may run passes at once (each row is deleted once; the others find it gone).

use std::time::Duration;

use super::{LogCompaction, LogError};

/// Rows deleted per statement.
const DELETE_PAGE: i64 = 10_000;

/// Deletes up to `$2` idempotency keys created more than `$1` seconds ago, oldest first
/// (`idempotency_keys_created_at`, migration 7).
const EXPIRE_IDEMPOTENCY_KEYS: &str = "DELETE FROM idempotency_keys WHERE key IN (
     SELECT key FROM idempotency_keys
     WHERE created_at < now() - make_interval(secs => $1)
     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes up to `$2` parked changes resolved more than `$1` seconds ago that nothing needs
/// any more: settled (not restoring) and below a version every store has held since. A
/// later compensation's restore point never looks below that version (every store accepted
/// it), so the refusals it forgets can no longer matter.
const PRUNE_RESOLVED_COMPENSATIONS: &str = "DELETE FROM parked_changes WHERE id IN (
     SELECT p.id FROM parked_changes p JOIN streams s ON s.stream_id = p.stream_id
     WHERE p.resolved_at < now() - make_interval(secs => $1)
       AND s.ready_version > p.version
       AND (p.resolved_version IS NULL OR s.ready_version >= p.resolved_version)
     ORDER BY p.id LIMIT $2 FOR UPDATE OF p SKIP LOCKED)";

impl LogCompaction<'_> {
    /// Deletes the resolved compensations (parked changes) older than `retain` whose
    /// document every store has held at a newer version since. Returns how many.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; what was deleted before the failure stays deleted.
    pub async fn prune_resolved_compensations(self, retain: Duration) -> Result<u64, LogError> {
        self.delete_in_pages(
            PRUNE_RESOLVED_COMPENSATIONS,
            retain,
            "prune resolved compensations",
        )
        .await
    }

    /// Deletes the idempotency keys older than `ttl`: a request retried with one of them
    /// afterwards is a new request. Returns how many were deleted.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; keys deleted before the failure stay deleted.
    pub async fn expire_idempotency_keys(self, ttl: Duration) -> Result<u64, LogError> {
        self.delete_in_pages(EXPIRE_IDEMPOTENCY_KEYS, ttl, "expire idempotency keys")
            .await
    }

    /// Runs `statement` (`$1`: an age in seconds, `$2`: [`DELETE_PAGE`]) until it deletes
    /// less than a page; returns the rows deleted.
    async fn delete_in_pages(
        self,
        statement: &str,
        age: Duration,
        operation: &'static str,
    ) -> Result<u64, LogError> {
        let client = self.log.client().await?;
        let mut deleted = 0;
        loop {
            let n = client
                .execute(statement, &[&age.as_secs_f64(), &DELETE_PAGE])
                .await
                .map_err(LogError::db(operation))?;
            deleted += n;
            if n < DELETE_PAGE as u64 {
                return Ok(deleted);
            }
        }
    }
}
