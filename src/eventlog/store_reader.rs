//! Reading the log for one store (rebuilds): only the event types that can carry a change
//! for that store, in log order, below the read horizon — so a rebuild of the catalogue
//! never transfers vectors, and one of the vectors never transfers catalogue rows.

use aggregates::{DocumentEvent, LogCursor, RecordedEvent, StoreKind};

use super::reader::{decode_row, row_cursor};
use super::{LogError, PgLog};

/// Events of the given types after a cursor, below the horizon, in log order. The horizon
/// and order are [`PgLog::read_after`]'s (the sort names the table's columns, so it is the
/// numeric `xid8` order of the index, not the text of the output column `xid`).
const READ_TYPES_AFTER: &str = r#"
SELECT epoch, xid::text, position, stream_id, stream_version, event_type, event_version,
       payload, vectors, (extract(epoch FROM recorded_at) * 1000)::bigint
FROM events
WHERE (epoch, xid, position) > ($1, $2::text::xid8, $3)
  AND (epoch < (SELECT epoch FROM log_meta)
       OR xid < pg_snapshot_xmin(pg_current_snapshot()))
  AND event_type = ANY($4)
ORDER BY events.epoch, events.xid, events.position
LIMIT $5
"#;

/// A page of the store's events as read, not yet decoded: reading the next page needs only
/// its end, so a reader can ask for the next page while this one is decoded elsewhere.
pub struct RawEvents {
    rows: Vec<tokio_postgres::Row>,
}

impl RawEvents {
    /// Events read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No event read (the head).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The cursor of the page's last event (`None` for an empty page), read from its
    /// cursor columns alone: the event itself is decoded once, with the page.
    pub fn end(&self) -> Option<LogCursor> {
        self.rows.last().map(row_cursor)
    }

    /// The page's events, decoded.
    ///
    /// # Errors
    /// [`LogError::Corrupt`].
    pub fn decode(&self) -> Result<Vec<RecordedEvent<DocumentEvent>>, LogError> {
        self.rows.iter().map(decode_row).collect()
    }
}

impl PgLog {
    /// Up to `limit` events after `after` that can carry a change for `store`
    /// ([`StoreKind::event_types`]), in log order, only of finished transactions.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn read_store_events(
        &self,
        after: LogCursor,
        store: StoreKind,
        limit: usize,
    ) -> Result<Vec<RecordedEvent<DocumentEvent>>, LogError> {
        self.read_store_rows(after, store, limit).await?.decode()
    }

    /// [`PgLog::read_store_events`] without decoding them yet.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn read_store_rows(
        &self,
        after: LogCursor,
        store: StoreKind,
        limit: usize,
    ) -> Result<RawEvents, LogError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(READ_TYPES_AFTER)
            .await
            .map_err(LogError::db("prepare read"))?;
        let types = store.event_types();
        let rows = client
            .query(
                &stmt,
                &[
                    &after.epoch,
                    &after.xid.to_string(),
                    &after.position,
                    &types,
                    &(limit as i64),
                ],
            )
            .await
            .map_err(LogError::db("read store events"))?;
        Ok(RawEvents { rows })
    }

    /// Number of documents the log knows (deleted ones included).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn count_streams(&self) -> Result<u64, LogError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM streams", &[])
            .await
            .map_err(LogError::db("count streams"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Of `docs` (`(doc_id, version)`), those whose version every store holds according to
    /// the log's bookkeeping (the rebuilt catalogue row may be `ready`).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn consistent_at(
        &self,
        docs: &[(&str, u64)],
    ) -> Result<std::collections::HashSet<String>, LogError> {
        let client = self.client().await?;
        let ids: Vec<&str> = docs.iter().map(|d| d.0).collect();
        let versions: Vec<i64> = docs.iter().map(|d| d.1 as i64).collect();
        let rows = client
            .query(
                "SELECT s.stream_id FROM streams s
                 JOIN unnest($1::text[], $2::bigint[]) AS u(id, v) ON s.stream_id = u.id
                 WHERE s.doc_version = u.v
                   AND (s.ready_version >= u.v
                        OR (s.mysql_version = u.v AND s.milvus_version = u.v AND s.s3_version = u.v))",
                &[&ids, &versions],
            )
            .await
            .map_err(LogError::db("read consistency"))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// Of `docs` (`(doc_id, version)`), those [`PgLog::consistent_at`] would return, found by
    /// one scan of `streams` instead of one lookup per document: cheaper once `docs` is a
    /// sizeable share of the log's documents (a rebuild settling the rows it wrote
    /// `pending`). Rows are streamed, never all held at once.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn consistent_among(
        &self,
        docs: &std::collections::HashMap<&str, u64>,
    ) -> Result<std::collections::HashSet<String>, LogError> {
        use futures::TryStreamExt;
        let client = self.client().await?;
        let rows = client
            .query_raw(
                "SELECT stream_id, doc_version FROM streams
                 WHERE ready_version >= doc_version
                    OR (mysql_version = doc_version AND milvus_version = doc_version
                        AND s3_version = doc_version)",
                std::iter::empty::<i64>(),
            )
            .await
            .map_err(LogError::db("scan consistency"))?;
        futures::pin_mut!(rows);
        let mut found = std::collections::HashSet::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(LogError::db("scan consistency"))?
        {
            let id: &str = row.get(0);
            let version: i64 = row.get(1);
            if docs.get(id).is_some_and(|v| *v as i64 == version) {
                found.insert(id.to_owned());
            }
        }
        Ok(found)
    }
}
