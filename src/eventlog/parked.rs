//! Parked changes and their compensation: what the compensator reads, what it needs to
//! decide (the stream's history and the versions the stores refused), how a parked change is
//! resolved, and the listing behind `GET /v1/compensations`.
//!
//! Invariant: a parked change is resolved only together with its compensation's events (in
//! the append's transaction, see [`ParkedResolution`]) or, when the compensation appends
//! nothing, by one guarded update; `resolved_at IS NULL` in the guard makes both exactly once.

use std::collections::BTreeSet;

use aggregates::{CompensationState, DocId, DocumentEvent, PutDocument, Restore, Version};
use serde::Serialize;

use super::reader::decode_row;
use super::{LogError, ParkedChanges};

/// A parked change the compensator has to handle.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingParked {
    /// The parked row.
    pub id: i64,
    /// The document (as stored; may fail to parse only in a corrupt log).
    pub doc_id: String,
    /// The store that refused it.
    pub store: String,
    /// The refused version.
    pub version: Version,
    /// The store's error.
    pub reason: String,
}

/// Which parked changes a resolution closes.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveTarget {
    /// This one (it must still be open, otherwise nothing is appended).
    One(i64),
    /// Every open one of the document (a retry supersedes them).
    OpenOf(DocId),
}

/// Resolution of parked changes, written in the same transaction as the events (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedResolution {
    /// What to close.
    pub target: ResolveTarget,
    /// What was done, for people.
    pub resolution: String,
    /// The version whose consistency restores the document, when events were appended.
    pub resolved_version: Option<Version>,
}

/// One compensation as `GET /v1/compensations` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompensationView {
    /// The parked change's id.
    pub id: i64,
    /// The document.
    pub doc_id: String,
    /// The store that refused the version.
    pub store: String,
    /// The refused version.
    pub version: u64,
    /// The store's error.
    pub reason: String,
    /// `open` (waiting for the compensator), `needs_operator`, `restoring` (events appended,
    /// the stores are not all at the restoring version yet) or `resolved`.
    pub state: CompensationState,
    /// What the compensation did.
    pub resolution: Option<String>,
    /// The version that restores consistency.
    pub resolved_version: Option<u64>,
    /// When the store refused it (RFC 3339, UTC).
    pub parked_at: String,
    /// When it was resolved.
    pub resolved_at: Option<String>,
}

/// Parked changes with their derived state; `$1` filters on a document (NULL = all); open
/// ones first, then the most recent. The state's names are [`CompensationState::as_str`]'s.
const LIST_COMPENSATIONS: &str = r#"
SELECT p.id, p.stream_id, p.sink, p.version, p.error, p.resolution, p.resolved_version,
       to_char(p.parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       to_char(p.resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       CASE WHEN p.resolved_at IS NULL THEN
                CASE WHEN p.needs_operator THEN 'needs_operator' ELSE 'open' END
            WHEN p.resolved_version IS NOT NULL AND s.doc_version = p.resolved_version
                 AND s.ready_version < p.resolved_version THEN 'restoring'
            ELSE 'resolved' END
FROM parked_changes p LEFT JOIN streams s ON s.stream_id = p.stream_id
WHERE ($1::text IS NULL OR p.stream_id = $1::text)
ORDER BY (p.resolved_at IS NULL) DESC, p.id DESC
LIMIT $2
"#;

impl ParkedChanges<'_> {
    /// Open parked changes the compensator has not handled, oldest first.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn pending_parked(self, limit: i64) -> Result<Vec<PendingParked>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT id, stream_id, sink, version, error FROM parked_changes
                 WHERE resolved_at IS NULL AND NOT needs_operator ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(LogError::db("read parked changes"))?;
        Ok(rows
            .iter()
            .map(|r| PendingParked {
                id: r.get(0),
                doc_id: r.get(1),
                store: r.get(2),
                version: r.get::<_, i64>(3) as u64,
                reason: r.get(4),
            })
            .collect())
    }

    /// Every event of a stream, in stream order (no snapshot: compensation needs history).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn stream_history(self, doc_id: &DocId) -> Result<Vec<DocumentEvent>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT epoch, xid::text, position, stream_id, stream_version, event_type, event_version,
                        payload, vectors, (extract(epoch FROM recorded_at) * 1000)::bigint
                 FROM events WHERE stream_id = $1 ORDER BY stream_version",
                &[&doc_id.as_str()],
            )
            .await
            .map_err(LogError::db("load stream history"))?;
        rows.iter()
            .map(|r| decode_row(r).map(|e| e.event))
            .collect()
    }

    /// Every version of the document that some store refused (resolved or not).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn refused_versions(self, doc_id: &DocId) -> Result<BTreeSet<Version>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT version FROM parked_changes WHERE stream_id = $1",
                &[&doc_id.as_str()],
            )
            .await
            .map_err(LogError::db("read refused versions"))?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    /// What a compensation of `refused_version` restores ([`aggregates::restore_point`]).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn restore_for(
        self,
        doc_id: &DocId,
        refused_version: Version,
    ) -> Result<Restore, LogError> {
        let history = self.stream_history(doc_id).await?;
        let refused = self.refused_versions(doc_id).await?;
        Ok(aggregates::restore_point(
            &history,
            &refused,
            refused_version,
        ))
    }

    /// The full state of `version` (None for a deletion or an unknown version).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn content_at(
        self,
        doc_id: &DocId,
        version: Version,
    ) -> Result<Option<PutDocument>, LogError> {
        let history = self.stream_history(doc_id).await?;
        Ok(aggregates::document::content_at(&history, version))
    }

    /// Resolves parked changes inside `tx`; false when a single target was already resolved.
    pub(crate) async fn resolve_in(
        tx: &impl deadpool_postgres::GenericClient,
        resolution: &ParkedResolution,
    ) -> Result<bool, LogError> {
        let resolved_version = resolution.resolved_version.map(|v| v as i64);
        match &resolution.target {
            ResolveTarget::One(id) => {
                let n = tx
                    .execute(
                        "UPDATE parked_changes SET resolved_at = now(), resolution = $2,
                                resolved_version = $3
                         WHERE id = $1 AND resolved_at IS NULL",
                        &[id, &resolution.resolution, &resolved_version],
                    )
                    .await
                    .map_err(LogError::db("resolve parked change"))?;
                Ok(n == 1)
            }
            ResolveTarget::OpenOf(doc_id) => {
                tx.execute(
                    "UPDATE parked_changes SET resolved_at = now(), resolution = $2,
                            resolved_version = $3
                     WHERE stream_id = $1 AND resolved_at IS NULL",
                    &[&doc_id.as_str(), &resolution.resolution, &resolved_version],
                )
                .await
                .map_err(LogError::db("resolve parked changes"))?;
                Ok(true)
            }
        }
    }

    /// Resolves parked changes when the compensation appends nothing; false when a single
    /// target was already resolved.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn resolve_parked(self, resolution: &ParkedResolution) -> Result<bool, LogError> {
        let mut client = self.log.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(LogError::db("begin resolve"))?;
        let done = Self::resolve_in(&tx, resolution).await?;
        tx.commit().await.map_err(LogError::db("commit resolve"))?;
        Ok(done)
    }

    /// Marks a parked change as one the compensator cannot handle (it stays open, visible,
    /// and is closed by a retry of its document).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn mark_needs_operator(self, id: i64, why: &str) -> Result<(), LogError> {
        let client = self.log.client().await?;
        client
            .execute(
                "UPDATE parked_changes SET needs_operator = true, resolution = $2
                 WHERE id = $1 AND resolved_at IS NULL",
                &[&id, &why],
            )
            .await
            .map_err(LogError::db("mark parked change for an operator"))?;
        Ok(())
    }

    /// Compensations, open ones first, then the most recent; only `doc_id`'s when given.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn compensations(
        self,
        doc_id: Option<&DocId>,
        limit: i64,
    ) -> Result<Vec<CompensationView>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(LIST_COMPENSATIONS, &[&doc_id.map(DocId::as_str), &limit])
            .await
            .map_err(LogError::db("list compensations"))?;
        Ok(rows
            .iter()
            .map(|r| CompensationView {
                id: r.get(0),
                doc_id: r.get(1),
                store: r.get(2),
                version: r.get::<_, i64>(3) as u64,
                reason: r.get(4),
                resolution: r.get(5),
                resolved_version: r.get::<_, Option<i64>>(6).map(|v| v as u64),
                parked_at: r.get(7),
                resolved_at: r.get(8),
                state: r
                    .get::<_, &str>(9)
                    .parse()
                    .expect("LIST_COMPENSATIONS yields only CompensationState names"),
            })
            .collect())
    }
}
