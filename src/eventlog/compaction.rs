//! What the compaction pass removes from the log once it is past its time.
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

impl LogCompaction<'_> {
    /// Deletes the idempotency keys older than `ttl`: a request retried with one of them
    /// afterwards is a new request. Returns how many were deleted.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; keys deleted before the failure stay deleted.
    pub async fn expire_idempotency_keys(self, ttl: Duration) -> Result<u64, LogError> {
        let client = self.log.client().await?;
        let mut expired = 0;
        loop {
            let n = client
                .execute(EXPIRE_IDEMPOTENCY_KEYS, &[&ttl.as_secs_f64(), &DELETE_PAGE])
                .await
                .map_err(LogError::db("expire idempotency keys"))?;
            expired += n;
            if n < DELETE_PAGE as u64 {
                return Ok(expired);
            }
        }
    }
}
