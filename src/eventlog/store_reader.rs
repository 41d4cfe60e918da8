//! Reading the log for one store (rebuilds): only the event types that can carry a change
//! for that store, in log order, below the read horizon — so a rebuild of the catalogue
//! never transfers vectors, and one of the vectors never transfers catalogue rows. And the
//! catalogue's final state per document ([`CatalogueScan`]), kept in the stream rows, read
//! in one scan of one snapshot instead of every historical event.

use aggregates::{CatalogueEntry, DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind};

use super::reader::{decode_catalogue_columns, decode_row, row_cursor};
use super::{LogError, StoreRecords};

/// Events of the given types after a cursor, below the horizon, in log order. The horizon
/// and order are [`LogReads::read_after`]'s (the sort names the table's columns, so it is the
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

/// The cursor over every stream row, in the columns [`CatalogueStates::states`] reads: the
/// document's version, its final catalogue state (see migration 4), whether all three
/// stores hold that version (the rebuilt row may be `ready`), and whether the row holds its
/// document's state at all (it does not when written by a binary older than migration 4).
const DECLARE_STATES: &str = r#"
DECLARE catalogue_states NO SCROLL CURSOR FOR
SELECT stream_id, doc_version, catalogue_type, catalogue_event_version, catalogue, NULL::bytea,
       (ready_version >= doc_version
        OR (mysql_version = doc_version AND milvus_version = doc_version
            AND s3_version = doc_version)),
       (catalogue_version = doc_version AND catalogue_type IS NOT NULL
        AND catalogue IS NOT NULL) IS TRUE
FROM streams
"#;

/// The catalogue events of the given documents (`$1`; `$2`: the catalogue's event types),
/// per document in version order, in [`RawEvents`]'s columns.
const READ_STALE: &str = r#"
SELECT epoch, xid::text, position, stream_id, stream_version, event_type, event_version,
       payload, vectors, (extract(epoch FROM recorded_at) * 1000)::bigint
FROM events
WHERE stream_id = ANY($1) AND event_type = ANY($2)
ORDER BY stream_id, stream_version
"#;

/// Documents whose catalogue events [`READ_STALE`] reads at a time.
const STALE_DOCS_PER_READ: usize = 500;

/// Every document's final catalogue state, read in one `REPEATABLE READ` snapshot of the
/// log: first the stream rows that hold it, a page at a time through a server-side cursor
/// (one sequential scan), then the catalogue events of the documents whose row does not
/// (looked up by document: normally there are none). [`CatalogueScan::end`] is
/// a cursor below which every event is reflected in what the scan returns: every event of a
/// transaction older than the snapshot's oldest running one. Events after it may be
/// reflected too (transactions that committed before the snapshot while an older one still
/// ran); reading on from `end` applies them again, which leaves a store where it was, since
/// each event holds its document's whole state at its version.
///
/// The transaction is read-only, so it has no transaction id and holds back no reader's
/// horizon. A scan dropped before its end closes its connection (it is not returned to the
/// pool in the middle of a transaction).
pub struct CatalogueScan {
    client: Option<deadpool_postgres::Object>,
    end: LogCursor,
    /// Still reading stream rows.
    reading_states: bool,
    /// Documents whose stream row does not hold their state, whose events are still to read.
    stale: Vec<String>,
}

/// A page of a [`CatalogueScan`].
pub enum CataloguePage {
    /// Stream rows holding their document's final catalogue state.
    States(CatalogueStates),
    /// Catalogue events of documents whose stream row does not, per document in version
    /// order.
    Events(RawEvents),
}

/// Stream rows holding their document's final catalogue state, as read.
pub struct CatalogueStates {
    rows: Vec<tokio_postgres::Row>,
    end: LogCursor,
}

/// A document's final catalogue state, decoded from its stream row.
#[derive(Debug)]
pub struct CatalogueState<'a> {
    pub doc_id: &'a str,
    /// The document's version.
    pub version: u64,
    /// Every store holds this version.
    pub ready: bool,
    /// The catalogue entry it leaves; `None`: deleted.
    pub row: Option<CatalogueEntry>,
}

impl CatalogueStates {
    /// Documents read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No document read.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The scan's end ([`CatalogueScan::end`]), where every state stands.
    pub fn end(&self) -> LogCursor {
        self.end
    }

    /// The states, decoded (rows that do not hold their document's state left out).
    ///
    /// # Errors
    /// [`LogError::Corrupt`] (with position 0: the state is not an event of the log).
    pub fn states(&self) -> impl Iterator<Item = Result<CatalogueState<'_>, LogError>> {
        self.rows.iter().filter(|r| holds_state(r)).map(|row| {
            let doc_id: &str = row.get(0);
            if let Err(e) = DocId::validate(doc_id) {
                return Err(LogError::Corrupt {
                    position: 0,
                    source: super::codec::DecodeError {
                        event_type: row.get::<_, String>(2),
                        event_version: row.get(3),
                        message: format!("stream id {doc_id:?}: {e}"),
                    },
                });
            }
            Ok(CatalogueState {
                doc_id,
                version: row.get::<_, i64>(1) as u64,
                ready: row.get(6),
                row: decode_catalogue_columns(row, 2, 0)?,
            })
        })
    }
}

/// A row of [`DECLARE_STATES`] holds its document's final catalogue state.
fn holds_state(row: &tokio_postgres::Row) -> bool {
    row.get(7)
}

impl CatalogueScan {
    /// Where the log stands for this scan: reading the catalogue's events after it brings
    /// the scanned state to the head.
    pub fn end(&self) -> LogCursor {
        self.end
    }

    /// The next page: at most `limit` stream rows (states), or the catalogue events of a
    /// few documents whose row does not hold their state; `None` at the end, after which
    /// the snapshot is released.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn next(&mut self, limit: usize) -> Result<Option<CataloguePage>, LogError> {
        let Some(client) = self.client.as_ref() else {
            return Ok(None);
        };
        if self.reading_states {
            let rows = client
                .query(&format!("FETCH {limit} FROM catalogue_states"), &[])
                .await
                .map_err(LogError::db("scan catalogue"))?;
            if !rows.is_empty() {
                self.stale.extend(
                    rows.iter()
                        .filter(|r| !holds_state(r))
                        .map(|r| r.get::<_, String>(0)),
                );
                return Ok(Some(CataloguePage::States(CatalogueStates {
                    rows,
                    end: self.end,
                })));
            }
            self.reading_states = false;
        }
        while !self.stale.is_empty() {
            let take = self.stale.len().min(STALE_DOCS_PER_READ);
            let docs: Vec<String> = self.stale.drain(..take).collect();
            let rows = client
                .query(READ_STALE, &[&docs, &StoreKind::Mysql.event_types()])
                .await
                .map_err(LogError::db("read stale catalogue events"))?;
            if !rows.is_empty() {
                return Ok(Some(CataloguePage::Events(RawEvents { rows })));
            }
        }
        if let Some(client) = self.client.take() {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(LogError::db("end catalogue scan"))?;
        }
        Ok(None)
    }
}

impl Drop for CatalogueScan {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Mid-transaction: close the connection rather than pool it.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

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

impl StoreRecords<'_> {
    /// Up to `limit` events after `after` that can carry a change for `store`
    /// ([`StoreKind::event_types`]), in log order, only of finished transactions.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn read_store_events(
        self,
        after: LogCursor,
        store: StoreKind,
        limit: usize,
    ) -> Result<Vec<RecordedEvent<DocumentEvent>>, LogError> {
        self.read_store_rows(after, store, limit).await?.decode()
    }

    /// [`StoreRecords::read_store_events`] without decoding them yet.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn read_store_rows(
        self,
        after: LogCursor,
        store: StoreKind,
        limit: usize,
    ) -> Result<RawEvents, LogError> {
        let client = self.log.client().await?;
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

    /// Starts a [`CatalogueScan`] of every document's final catalogue state.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn scan_catalogue(self) -> Result<CatalogueScan, LogError> {
        let client = self.log.client().await?;
        let mut scan = CatalogueScan {
            client: None,
            end: LogCursor::START,
            reading_states: true,
            stale: Vec::new(),
        };
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(LogError::db("begin catalogue scan"))?;
        // From here on, a failure drops the scan, which closes the connection.
        let client = scan.client.insert(client);
        let row = client
            .query_one(
                "SELECT m.epoch, pg_snapshot_xmin(pg_current_snapshot())::text,
                        COALESCE((SELECT max(position) FROM events), 0)
                 FROM log_meta m",
                &[],
            )
            .await
            .map_err(LogError::db("begin catalogue scan"))?;
        // Every transaction before the snapshot's oldest running one is in the snapshot.
        let xmin: u64 = row.get::<_, &str>(1).parse().unwrap_or_default();
        scan.end = LogCursor {
            epoch: row.get(0),
            xid: xmin.saturating_sub(1),
            position: row.get(2),
        };
        client
            .batch_execute(DECLARE_STATES)
            .await
            .map_err(LogError::db("begin catalogue scan"))?;
        Ok(scan)
    }

    /// Number of documents the log knows (deleted ones included).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn count_streams(self) -> Result<u64, LogError> {
        let client = self.log.client().await?;
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
        self,
        docs: &[(&str, u64)],
    ) -> Result<std::collections::HashSet<String>, LogError> {
        let client = self.log.client().await?;
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

    /// Of `docs` (`(doc_id, version)`), those [`StoreRecords::consistent_at`] would return, found by
    /// one scan of `streams` instead of one lookup per document: cheaper once `docs` is a
    /// sizeable share of the log's documents (a rebuild settling the rows it wrote
    /// `pending`). Rows are streamed, never all held at once.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn consistent_among(
        self,
        docs: &std::collections::HashMap<&str, u64>,
    ) -> Result<std::collections::HashSet<String>, LogError> {
        use futures::TryStreamExt;
        let client = self.log.client().await?;
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
