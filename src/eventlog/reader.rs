//! Reading the log: the gap-free ordered reader, stream loading, per-document state, and the
//! [`projections::LogSource`] port (checkpoints, applied versions, parked changes).
//!
//! Why `(epoch, xid, position)` and the snapshot horizon: positions are handed out when rows
//! are inserted, not when their transactions commit, so "position > last seen" skips rows of
//! a transaction that commits after a later one. Only transactions older than the oldest one
//! still running (`pg_snapshot_xmin`) are final; among those, `(xid, position)` is a stable
//! total order, and paging on exactly that tuple never skips a row.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aggregates::{
    CatalogueEntry, DocId, Document, DocumentEvent, LogCursor, RecordedEvent, StoreKind, Version,
};
use bytes::Bytes;
use projections::sink::DocChange;
use projections::{AppliedVersion, LogSource, Partition, SinkError, SourceError, StorePage};
use serde::Serialize;
use tokio_postgres::Row;

use super::append::prepared;
use super::codec::{decode, decode_catalogue_row};
use super::{db_message, LogAppends, LogError, LogReads, PgLog, StoreRecords};

/// Events after a cursor, below the horizon, in log order, the payload and vectors only of
/// the events of partition `$5` of `$4` (`$4 = 1`: all) and of the types `$7` (`NULL`: all);
/// the others' are NULL (the column is NOT NULL otherwise): their cursors are read, their
/// out-of-line vectors are never fetched nor sent. The last column says whether the event
/// is of the partition (the readers take it from here, the one place that decides it).
///
/// - The sort names the table's columns: a bare `xid` would be the output column
///   `xid::text`, a text order (`10` before `9`) that pages would skip events by, and that no
///   index serves (every page would sort everything after the cursor).
/// - Neither the partition nor the types filter the scan. PostgreSQL estimates a filter
///   like `stream_hash % 2 = 0` at 0.5 % of the rows (it keeps no statistics of the
///   expression), so below about 200 × `LIMIT` events after the cursor it expected the limit
///   never to be reached early and read every event after the cursor (a bitmap or
///   sequential scan) and sorted them, for each page: a page cost the whole backlog, and
///   catching up a backlog cost its square. Without a filter the page is one range scan of
///   `events_log_order` that stops after `LIMIT` rows, with or without statistics.
///
/// Public for tests and diagnostics that look at its plan (`EXPLAIN`).
pub const READ_AFTER: &str = r#"
SELECT epoch, xid::text, position, stream_id, stream_version, event_type, event_version,
       CASE WHEN ($4::integer = 1 OR stream_hash % $4::integer = $5::integer)
                 AND ($7::text[] IS NULL OR event_type = ANY($7)) THEN payload END,
       CASE WHEN ($4::integer = 1 OR stream_hash % $4::integer = $5::integer)
                 AND ($7::text[] IS NULL OR event_type = ANY($7)) THEN vectors END,
       (extract(epoch FROM recorded_at) * 1000)::bigint,
       $4::integer = 1 OR stream_hash % $4::integer = $5::integer
FROM events
WHERE (epoch, xid, position) > ($1, $2::text::xid8, $3)
  AND (epoch < (SELECT epoch FROM log_meta)
       OR xid < pg_snapshot_xmin(pg_current_snapshot()))
ORDER BY events.epoch, events.xid, events.position
LIMIT $6
"#;

/// How many of the next `$6` events of the log after a cursor are of partition `$5` of
/// `$4`, and the recording time (Unix ms) of the oldest of them ([`LogReads::lag_after`]).
/// Public for tests and diagnostics that look at its plan (`EXPLAIN`).
pub const LAG_COUNT: &str = r#"
SELECT count(*) FILTER (WHERE ours),
       (extract(epoch FROM min(recorded_at) FILTER (WHERE ours)) * 1000)::bigint
FROM (
    SELECT $4::integer = 1 OR stream_hash % $4::integer = $5::integer AS ours, recorded_at
    FROM events
    WHERE (epoch, xid, position) > ($1, $2::text::xid8, $3)
    ORDER BY events.epoch, events.xid, events.position
    LIMIT $6
) AS pending
"#;

/// A document's snapshot and the events after it, in stream order, in one statement: one
/// round trip per document a command loads (statements run for every loaded document are
/// prepared once per connection: parsing and planning them again would cost the log more
/// than running them). Columns: the event's position, type, version, payload and vectors
/// (all NULL in the one row of a stream without events after its snapshot), then, in the
/// first row only, the snapshot's state (NULL without a snapshot).
const READ_DOCUMENT: &str = r#"
SELECT e.position, e.event_type, e.event_version, e.payload, e.vectors,
       CASE WHEN row_number() OVER (ORDER BY e.stream_version) = 1 THEN s.state END,
       e.stream_version
FROM (SELECT $1::text AS stream_id) AS k
LEFT JOIN snapshots s ON s.stream_id = k.stream_id
LEFT JOIN events e ON e.stream_id = k.stream_id
                  AND e.stream_version > COALESCE(s.stream_version, 0)
ORDER BY e.stream_version
"#;

/// A stream's events with their places in the log, in stream order.
const READ_STREAM: &str = r#"
SELECT epoch, xid::text, position, stream_id, stream_version, event_type, event_version,
       payload, vectors, (extract(epoch FROM recorded_at) * 1000)::bigint
FROM events WHERE stream_id = $1 ORDER BY stream_version
"#;

/// A projection's checkpoint, never moved backwards: only a greater (epoch, xid, position)
/// replaces the stored one; and, when `$8` names a generation, only while that generation
/// still owns the partition's lease (fencing: a stale owner never moves a checkpoint after
/// its successor took over). Returns whether the fence held.
const SAVE_CHECKPOINT: &str = r#"
WITH fence AS (
    SELECT $8::bigint IS NULL OR EXISTS (
        SELECT 1 FROM projection_partitions
         WHERE sink = $1 AND partitions = $7 AND partition = $2 AND generation = $8
    ) AS held
), saved AS (
    INSERT INTO projection_checkpoints AS c (sink, partitions, partition, log_id, epoch, xid, position)
    SELECT $1, $7, $2, $3::text::uuid, $4, $5::text::xid8, $6 FROM fence WHERE held
    ON CONFLICT (sink, partitions, partition) DO UPDATE
       SET epoch = EXCLUDED.epoch, xid = EXCLUDED.xid, position = EXCLUDED.position,
           log_id = EXCLUDED.log_id, seeded = false, updated_at = now()
     WHERE (c.epoch, c.xid, c.position) < (EXCLUDED.epoch, EXCLUDED.xid, EXCLUDED.position)
    RETURNING 1
)
SELECT held FROM fence
"#;

/// A stream's events after a known event count, in stream order: what brings a cached state
/// up to the log (nothing when no other process appended since).
const READ_DOCUMENT_AFTER: &str = r#"
SELECT position, event_type, event_version, payload, vectors, stream_version
FROM events WHERE stream_id = $1 AND stream_version > $2
ORDER BY stream_version
"#;

/// A document's versions, per store and overall.
const READ_STREAM_STATE: &str = r#"
SELECT stream_version, doc_version, deleted, mysql_version, milvus_version, s3_version,
       ready_version
FROM streams WHERE stream_id = $1
"#;

/// One page of documents in byte order of their ids, after `$1` and from `$2` (inclusive)
/// up to `$3` (exclusive; NULL: no end), deleted ones with `$4`, at most `$5` rows.
const LIST_DOCUMENTS: &str = r#"
SELECT stream_id, doc_version, deleted, ready_version >= doc_version
FROM streams
WHERE stream_id COLLATE "C" > $1 COLLATE "C"
  AND stream_id COLLATE "C" >= $2 COLLATE "C"
  AND ($3::text IS NULL OR stream_id COLLATE "C" < $3 COLLATE "C")
  AND ($4 OR NOT deleted)
ORDER BY stream_id COLLATE "C"
LIMIT $5
"#;

/// One stored event of a document, as the log holds it (the API decides how it is shown).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// The event's number in its document's stream (1-based).
    pub stream_version: i64,
    /// Its position in the log.
    pub log_position: i64,
    /// `BlobStored`, `RowInserted`, ...
    pub event_type: String,
    /// The schema version of its payload.
    pub event_version: i16,
    /// Its payload as stored (vectors and blob bytes are stored apart, not here).
    pub data: serde_json::Value,
    /// When it was committed, RFC 3339 in UTC with microseconds.
    pub recorded_at: String,
}

/// A document as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ListedDocument {
    /// The document.
    pub doc_id: String,
    /// Its current version.
    pub version: u64,
    /// Deleted at `version`.
    pub deleted: bool,
    /// Every store holds `version` (the catalogue row is `ready`, or the deletion applied).
    pub ready: bool,
}

/// A document's bookkeeping row: its version and what each store holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamState {
    /// Number of events.
    pub stream_version: i64,
    /// Document version.
    pub version: u64,
    /// Deleted at `version`.
    pub deleted: bool,
    /// Applied version per store (None = nothing applied yet).
    pub mysql: Option<u64>,
    /// Milvus' applied version.
    pub milvus: Option<u64>,
    /// S3's applied version.
    pub s3: Option<u64>,
    /// Newest version whose readiness (all stores applied, MySQL row `ready`) is recorded.
    pub ready_version: u64,
}

impl StreamState {
    /// All three stores hold the document's version.
    pub fn consistent(&self) -> bool {
        [self.mysql, self.milvus, self.s3]
            .iter()
            .all(|v| *v == Some(self.version))
    }
}

/// How far the log's read horizon is held back.
#[derive(Debug, Clone, Serialize)]
pub struct HorizonStatus {
    /// Newest position in the log.
    pub head_position: i64,
    /// Age in seconds of the oldest transaction with an id that is still running, anywhere in
    /// the cluster (it holds every reader back).
    pub oldest_running_xact_seconds: f64,
}

/// A `jsonb` (or `json`) column's JSON text, borrowed from the row, for [`decode`] to read
/// straight into the event.
struct JsonText<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty != tokio_postgres::types::Type::JSONB {
            return Ok(JsonText(raw));
        }
        // jsonb's binary form: a format version byte (1), then the JSON text.
        match raw.split_first() {
            Some((1, text)) => Ok(JsonText(text)),
            _ => Err("unsupported jsonb format version".into()),
        }
    }

    tokio_postgres::types::accepts!(JSON, JSONB);
}

/// The log cursor of a row read by the readers' queries (columns epoch, `xid::text`,
/// position), without decoding its event.
pub(super) fn row_cursor(row: &Row) -> LogCursor {
    LogCursor {
        epoch: row.get(0),
        xid: row.get::<_, &str>(1).parse().unwrap_or_default(),
        position: row.get(2),
    }
}

pub(super) fn decode_row(row: &Row) -> Result<RecordedEvent<DocumentEvent>, LogError> {
    let position: i64 = row.get(2);
    Ok(RecordedEvent {
        cursor: row_cursor(row),
        doc_id: decode_doc_id(row, 3, 5, position)?,
        stream_version: row.get(4),
        recorded_at_ms: row.get(9),
        event: decode_event_columns(row, 5, position)?,
    })
}

/// The event in a row's columns `event_type, event_version, payload, vectors`, from column
/// `first` on; `position` names it in errors.
pub(super) fn decode_event_columns(
    row: &Row,
    first: usize,
    position: i64,
) -> Result<DocumentEvent, LogError> {
    decode_columns(
        row,
        first,
        position,
        |event_type, event_version, payload| {
            decode(
                event_type,
                event_version,
                payload,
                row.get::<_, Option<&[u8]>>(first + 3),
            )
        },
    )
}

/// A document's final catalogue state in columns `first..first + 3` (type, version,
/// payload) as the catalogue entry it leaves ([`decode_catalogue_row`]).
pub(super) fn decode_catalogue_columns(
    row: &Row,
    first: usize,
    position: i64,
) -> Result<Option<CatalogueEntry>, LogError> {
    decode_columns(row, first, position, decode_catalogue_row)
}

/// Runs `decode` on the type, version and payload in columns `first..first + 3`.
fn decode_columns<T>(
    row: &Row,
    first: usize,
    position: i64,
    decode: impl FnOnce(&str, i16, &[u8]) -> Result<T, super::codec::DecodeError>,
) -> Result<T, LogError> {
    let event_type: &str = row.get(first);
    let event_version: i16 = row.get(first + 1);
    let payload = row
        .try_get::<_, JsonText>(first + 2)
        .map_err(|e| LogError::Corrupt {
            position,
            source: super::codec::DecodeError {
                event_type: event_type.to_owned(),
                event_version,
                message: format!("payload: {e}"),
            },
        })?;
    decode(event_type, event_version, payload.0)
        .map_err(|source| LogError::Corrupt { position, source })
}

/// The document of a row's stream id column `column` (whose event type is in `type_column`,
/// for the error).
pub(super) fn decode_doc_id(
    row: &Row,
    column: usize,
    type_column: usize,
    position: i64,
) -> Result<DocId, LogError> {
    let stream_id: &str = row.get(column);
    DocId::parse(stream_id).map_err(|e| LogError::Corrupt {
        position,
        source: super::codec::DecodeError {
            event_type: row.get::<_, String>(type_column),
            event_version: row.get(type_column + 1),
            message: format!("stream id {stream_id:?}: {e}"),
        },
    })
}

impl LogReads<'_> {
    /// Up to `limit` events of the log after `after` (see the module doc for why this order).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn read_after(
        self,
        after: LogCursor,
        limit: usize,
    ) -> Result<Vec<RecordedEvent<DocumentEvent>>, LogError> {
        Ok(self
            .read_page(after, Partition::ALL, limit, None)
            .await?
            .events)
    }

    /// A page of up to `limit` events of the log after `after`, of which only those of
    /// `part` and of `types` (all when `None`) are decoded and returned; the page's end and
    /// size count the others too ([`StorePage`]).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn read_page(
        self,
        after: LogCursor,
        part: Partition,
        limit: usize,
        types: Option<&[&str]>,
    ) -> Result<StorePage, LogError> {
        let client = self.log.client().await?;
        let stmt = prepared(&client, READ_AFTER, "prepare read").await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &after.epoch,
                    &after.xid.to_string(),
                    &after.position,
                    &(part.count as i32),
                    &(part.index as i32),
                    &(limit as i64),
                    &types,
                ],
            )
            .await
            .map_err(LogError::db("read events"))?;
        let mut events = Vec::with_capacity(rows.len());
        let mut num_of_partition = 0;
        for row in &rows {
            if !row.get::<_, bool>(10) {
                continue; // another partition's
            }
            num_of_partition += 1;
            // A NULL payload is an event of another type (payload is NOT NULL).
            if row
                .try_get::<_, Option<JsonText>>(7)
                .is_ok_and(|p| p.is_none())
            {
                continue;
            }
            events.push(decode_row(row)?);
        }
        Ok(StorePage {
            events,
            last: rows.last().map(|row| (row_cursor(row), row.get(9))),
            num_read: rows.len(),
            num_of_partition,
        })
    }

    /// Every event of a stream with its place in the log, in stream order (what verification
    /// compares a document's stores with).
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn stream_records(
        self,
        doc_id: &DocId,
    ) -> Result<Vec<RecordedEvent<DocumentEvent>>, LogError> {
        let client = self.log.client().await?;
        let read = prepared(&client, READ_STREAM, "prepare stream read").await?;
        let rows = client
            .query(&read, &[&doc_id.as_str()])
            .await
            .map_err(LogError::db("read stream records"))?;
        rows.iter().map(decode_row).collect()
    }

    /// Up to `limit` document ids, starting at a random point of the id space and wrapping
    /// around (a cheap sample for the background verifier: one index range scan).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn sample_stream_ids(self, limit: i64) -> Result<Vec<DocId>, LogError> {
        let client = self.log.client().await?;
        let start: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..4)
                .map(|_| char::from(rng.random_range(b'0'..=b'z')))
                .collect()
        };
        let rows = client
            .query(
                "(SELECT stream_id FROM streams WHERE stream_id >= $1 ORDER BY stream_id LIMIT $2)
                 UNION ALL
                 (SELECT stream_id FROM streams WHERE stream_id < $1 ORDER BY stream_id LIMIT $2)
                 LIMIT $2",
                &[&start, &limit],
            )
            .await
            .map_err(LogError::db("sample streams"))?;
        Ok(rows
            .iter()
            .filter_map(|r| DocId::parse(r.get(0)).ok())
            .collect())
    }

    /// The stream's event count (0 when unknown).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn stream_version(self, doc_id: &DocId) -> Result<i64, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_opt(
                "SELECT stream_version FROM streams WHERE stream_id = $1",
                &[&doc_id.as_str()],
            )
            .await
            .map_err(LogError::db("read stream version"))?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// A document's version and per-store applied versions, None when never seen.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn stream_state(self, doc_id: &DocId) -> Result<Option<StreamState>, LogError> {
        let client = self.log.client().await?;
        let read_state = prepared(&client, READ_STREAM_STATE, "prepare stream state read").await?;
        let row = client
            .query_opt(&read_state, &[&doc_id.as_str()])
            .await
            .map_err(LogError::db("read stream state"))?;
        let applied = |v: i64| (v > 0).then_some(v as u64);
        Ok(row.map(|r| StreamState {
            stream_version: r.get(0),
            version: r.get::<_, i64>(1) as u64,
            deleted: r.get(2),
            mysql: applied(r.get(3)),
            milvus: applied(r.get(4)),
            s3: applied(r.get(5)),
            ready_version: r.get::<_, i64>(6) as u64,
        }))
    }

    /// Up to `limit` documents whose ids start with `prefix` and sort after `after` (byte
    /// order), deleted ones only with `include_deleted`.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn list_documents(
        self,
        prefix: &str,
        after: &str,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<ListedDocument>, LogError> {
        let client = self.log.client().await?;
        let list = prepared(&client, LIST_DOCUMENTS, "prepare document listing").await?;
        let end = prefix_end(prefix);
        let rows = client
            .query(
                &list,
                &[
                    &after,
                    &prefix,
                    &end,
                    &include_deleted,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await
            .map_err(LogError::db("list documents"))?;
        Ok(rows
            .iter()
            .map(|r| ListedDocument {
                doc_id: r.get(0),
                version: r.get::<_, i64>(1) as u64,
                deleted: r.get(2),
                ready: r.get(3),
            })
            .collect())
    }

    /// The log database's size on disk in bytes (`pg_database_size`: tables, indexes,
    /// TOAST), what compaction keeps bounded.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn database_bytes(self) -> Result<i64, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(LogError::db("read database size"))?;
        Ok(row.get(0))
    }

    /// The head position and how long the oldest running transaction has held the horizon.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn horizon(self) -> Result<HorizonStatus, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_one(
                "SELECT COALESCE((SELECT max(position) FROM events), 0),
                        COALESCE((SELECT extract(epoch FROM now() - min(xact_start))::float8
                                  FROM pg_stat_activity WHERE backend_xid IS NOT NULL), 0)",
                &[],
            )
            .await
            .map_err(LogError::db("read horizon"))?;
        Ok(HorizonStatus {
            head_position: row.get(0),
            oldest_running_xact_seconds: row.get(1),
        })
    }

    /// Events of `part` after `after`: how many, counted among the next `cap` × partitions
    /// events of the log (about `cap` of the partition's), and the recording time (Unix ms)
    /// of the oldest of them (the projection's lag). The count walks the log index from
    /// `after` and stops there, so a status sample costs at most that many rows however far
    /// a projection lags. As for a page ([`READ_AFTER`]), the partition does not filter the
    /// walk: with the filter, the planner expected the limit never to be reached on a log
    /// of less than about 200 × `cap` events after `after`, and counted them all.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn lag_after(
        self,
        after: LogCursor,
        part: Partition,
        cap: i64,
    ) -> Result<(i64, Option<i64>), LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_one(
                LAG_COUNT,
                &[
                    &after.epoch,
                    &after.xid.to_string(),
                    &after.position,
                    &(part.count as i32),
                    &(part.index as i32),
                    &(cap.max(1) * i64::from(part.count.max(1))),
                ],
            )
            .await
            .map_err(LogError::db("read lag"))?;
        Ok((row.get(0), row.get(1)))
    }

    /// A stream's events as stored, without vectors or blob bytes (for the API).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn stream_events(self, doc_id: &DocId) -> Result<Vec<EventRecord>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT stream_version, position, event_type, event_version, payload,
                        to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM events WHERE stream_id = $1 ORDER BY stream_version",
                &[&doc_id.as_str()],
            )
            .await
            .map_err(LogError::db("read stream events"))?;
        Ok(rows
            .iter()
            .map(|r| EventRecord {
                stream_version: r.get(0),
                log_position: r.get(1),
                event_type: r.get(2),
                event_version: r.get(3),
                data: r.get(4),
                recorded_at: r.get(5),
            })
            .collect())
    }
}

/// Takes the stream version of the row just applied: counting events is not enough once
/// content removal folded a run of events into one row (a state cached or snapshotted
/// inside the run then counts fewer events than the stream holds; see `content`).
fn at_stream_version(doc: &mut Document, stream_version: i64) {
    doc.stream_version = doc.stream_version.max(stream_version);
}

impl LogAppends<'_> {
    /// Every event of a stream, in stream order, starting after its snapshot if any; returns
    /// the rebuilt document.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn load(self, doc_id: &DocId) -> Result<Document, LogError> {
        let client = self.log.client().await?;
        let read = prepared(&client, READ_DOCUMENT, "prepare document read").await?;
        let rows = client
            .query(&read, &[&doc_id.as_str()])
            .await
            .map_err(LogError::db("load document"))?;
        let mut doc = Document::default();
        if let Some(state) = rows
            .first()
            .and_then(|row| row.get::<_, Option<serde_json::Value>>(5))
        {
            match serde_json::from_value::<Document>(state) {
                Ok(snapshot) => doc = snapshot,
                Err(_) => {
                    // A snapshot of an older shape: replay the whole stream.
                    drop(client);
                    let events = self.log.reads().stream_records(doc_id).await?;
                    let mut doc = Document::replay(events.iter().map(|e| &e.event));
                    if let Some(last) = events.last() {
                        at_stream_version(&mut doc, last.stream_version);
                    }
                    return Ok(doc);
                }
            }
        }
        for row in &rows {
            let Some(position) = row.get::<_, Option<i64>>(0) else {
                continue; // no events after the snapshot
            };
            doc.apply_event(&decode_event_columns(row, 1, position)?);
            at_stream_version(&mut doc, row.get(6));
        }
        Ok(doc)
    }

    /// Brings `doc`, a state of `doc_id` that some process held, up to the log: applies the
    /// events appended after `doc.stream_version` (one indexed read; none when no other
    /// process appended since). Returns the state and whether it moved.
    ///
    /// # Errors
    /// [`LogError::Unavailable`]; [`LogError::Corrupt`].
    pub async fn refresh(
        self,
        doc_id: &DocId,
        mut doc: Document,
    ) -> Result<(Document, bool), LogError> {
        let client = self.log.client().await?;
        let read = prepared(&client, READ_DOCUMENT_AFTER, "prepare document refresh").await?;
        let rows = client
            .query(&read, &[&doc_id.as_str(), &doc.stream_version])
            .await
            .map_err(LogError::db("refresh document"))?;
        for row in &rows {
            doc.apply_event(&decode_event_columns(row, 1, row.get(0))?);
            at_stream_version(&mut doc, row.get(5));
        }
        Ok((doc, !rows.is_empty()))
    }

    /// Stores a snapshot of a document (best effort: a missing snapshot only costs load time).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn save_snapshot(self, doc_id: &DocId, doc: &Document) -> Result<(), LogError> {
        let client = self.log.client().await?;
        let state = serde_json::to_value(doc).expect("document serializes");
        client
            .execute(
                // Never a state whose content the log has since removed (an erasure, see
                // `content`): the stream row is locked and its floor read after any
                // erasure in flight commits.
                "INSERT INTO snapshots (stream_id, stream_version, state)
                 SELECT $1, $2, $3 FROM streams s
                  WHERE s.stream_id = $1 AND s.content_floor < $4
                    FOR SHARE OF s
                 ON CONFLICT (stream_id) DO UPDATE SET stream_version = EXCLUDED.stream_version,
                     state = EXCLUDED.state, taken_at = now()
                 WHERE snapshots.stream_version < EXCLUDED.stream_version",
                &[
                    &doc_id.as_str(),
                    &doc.stream_version,
                    &state,
                    &(doc.version as i64),
                ],
            )
            .await
            .map_err(LogError::db("save snapshot"))?;
        Ok(())
    }
}

impl StoreRecords<'_> {
    /// Documents whose three stores hold their version but whose readiness was not recorded
    /// (the tracker stopped between the two): the tracker finishes them at start.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn unfinished_ready(self, limit: i64) -> Result<Vec<AppliedVersion>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT stream_id, doc_version FROM streams
                 WHERE ready_version < doc_version AND mysql_version = doc_version
                   AND milvus_version = doc_version AND s3_version = doc_version
                 LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(LogError::db("read unfinished readiness"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(AppliedVersion {
                    doc_id: DocId::parse(r.get(0)).ok()?,
                    version: r.get::<_, i64>(1) as u64,
                })
            })
            .collect())
    }

    /// Records that readiness of these versions is reflected in MySQL.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn record_ready(self, done: &[AppliedVersion]) -> Result<(), LogError> {
        let client = self.log.client().await?;
        let ids: Vec<&str> = done.iter().map(|d| d.doc_id.as_str()).collect();
        let versions: Vec<i64> = done.iter().map(|d| d.version as i64).collect();
        let record = prepared(
            &client,
            &raise_versions_sql("ready_version", ""),
            "prepare readiness record",
        )
        .await?;
        client
            .execute(&record, &[&ids, &versions])
            .await
            .map_err(LogError::db("record readiness"))?;
        Ok(())
    }
}

/// The first string after every string that starts with `prefix`, in byte order (`None`:
/// no such string, the prefix is empty or all `0xff`). Document ids are ASCII, so the
/// result is too.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// A log failure as the projection port's error. An unavailable database keeps its own
/// operation and message, so the runner's status reads "log prepare blob read failed: ..."
/// once, not wrapped in a second "failed".
impl From<LogError> for SourceError {
    fn from(e: LogError) -> SourceError {
        match e {
            LogError::Unavailable { operation, message } => SourceError { operation, message },
            other => SourceError {
                operation: "read",
                message: other.to_string(),
            },
        }
    }
}

fn pg_source_error(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    move |e| SourceError {
        operation,
        message: db_message(&e),
    }
}

/// The store's applied-version column in `streams` (a fixed name per store, never input).
/// The statement that raises `column` of the stream rows named in `$1` to the versions in
/// `$2`, then `returning`. Rows are locked in doc_id order, so the three stores' runners, the
/// readiness record and group appends (`group::APPEND_GROUP`) never deadlock. A document
/// named more than once (a rebuild records the versions of all its pages at once) counts
/// with its newest version: `UPDATE ... FROM` applies one arbitrary matching row per target
/// row, in practice the first, which was the oldest.
fn raise_versions_sql(column: &str, returning: &str) -> String {
    format!(
        "WITH u AS (SELECT id, max(v) AS v FROM unnest($1::text[], $2::bigint[]) AS u(id, v)
                    GROUP BY id),
              locked AS (SELECT s.stream_id FROM streams s WHERE s.stream_id = ANY($1)
                         ORDER BY s.stream_id FOR UPDATE)
         UPDATE streams s SET {column} = GREATEST(s.{column}, u.v)
           FROM u WHERE s.stream_id = u.id AND s.stream_id IN (SELECT stream_id FROM locked)
         {returning}"
    )
}

fn applied_column(store: StoreKind) -> &'static str {
    match store {
        StoreKind::Mysql => "mysql_version",
        StoreKind::Milvus => "milvus_version",
        StoreKind::S3 => "s3_version",
    }
}

impl PgLog {
    /// The log-side checkpoint of `sink`/`part`: `(log_id, cursor)`; with `seeded_only`, only
    /// while a change of partition count seeded it and no runner has saved it since.
    async fn checkpoint_row(
        &self,
        sink: &'static str,
        part: Partition,
        seeded_only: bool,
    ) -> Result<Option<(String, LogCursor)>, SourceError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT log_id::text, epoch, xid::text, position FROM projection_checkpoints
                 WHERE sink = $1 AND partitions = $2 AND partition = $3 AND (seeded OR NOT $4)",
                &[
                    &sink,
                    &(part.count as i32),
                    &(part.index as i32),
                    &seeded_only,
                ],
            )
            .await
            .map_err(pg_source_error("load checkpoint"))?;
        Ok(row.map(|r| {
            (
                r.get(0),
                LogCursor {
                    epoch: r.get(1),
                    xid: r.get::<_, &str>(2).parse().unwrap_or_default(),
                    position: r.get(3),
                },
            )
        }))
    }
}

impl LogSource for PgLog {
    fn log_id(&self) -> &str {
        PgLog::log_id(self)
    }

    async fn read_for_store(
        &self,
        store: StoreKind,
        after: LogCursor,
        part: Partition,
        limit: usize,
    ) -> Result<StorePage, SourceError> {
        Ok(self
            .reads()
            .read_page(after, part, limit, Some(&store.event_types()))
            .await?)
    }

    async fn wait_for_append(&self, timeout: Duration) {
        super::listen::wait_for_next(&self.appended, timeout).await;
    }

    async fn load_blobs(&self, sha256s: &[String]) -> Result<HashMap<String, Bytes>, SourceError> {
        let client = self.client().await?;
        let keys: Vec<Vec<u8>> = sha256s.iter().filter_map(|s| hex::decode(s).ok()).collect();
        let read_blobs = prepared(
            &client,
            "SELECT sha256, content FROM blobs WHERE sha256 = ANY($1)",
            "prepare blob read",
        )
        .await?;
        let rows = client
            .query(&read_blobs, &[&keys])
            .await
            .map_err(pg_source_error("load blobs"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    hex::encode(r.get::<_, &[u8]>(0)),
                    Bytes::copy_from_slice(r.get::<_, &[u8]>(1)),
                )
            })
            .collect())
    }

    async fn load_checkpoint(
        &self,
        sink: &'static str,
        part: Partition,
    ) -> Result<Option<(String, LogCursor)>, SourceError> {
        self.checkpoint_row(sink, part, false).await
    }

    async fn load_seed(
        &self,
        sink: &'static str,
        part: Partition,
    ) -> Result<Option<(String, LogCursor)>, SourceError> {
        self.checkpoint_row(sink, part, true).await
    }

    async fn save_checkpoint(
        &self,
        sink: &'static str,
        part: Partition,
        cursor: LogCursor,
        fence: Option<i64>,
    ) -> Result<bool, SourceError> {
        let client = self.client().await?;
        let save = prepared(&client, SAVE_CHECKPOINT, "prepare checkpoint save").await?;
        let row = client
            .query_one(
                &save,
                &[
                    &sink,
                    &(part.index as i32),
                    &self.log_id(),
                    &cursor.epoch,
                    &cursor.xid.to_string(),
                    &cursor.position,
                    &(part.count as i32),
                    &fence,
                ],
            )
            .await
            .map_err(pg_source_error("save checkpoint"))?;
        Ok(row.get(0))
    }

    async fn record_applied(
        &self,
        store: StoreKind,
        applied: &[AppliedVersion],
    ) -> Result<Vec<AppliedVersion>, SourceError> {
        let client = self.client().await?;
        let mut sorted: Vec<&AppliedVersion> = applied.iter().collect();
        sorted.sort_by(|a, b| a.doc_id.cmp(&b.doc_id));
        let ids: Vec<&str> = sorted.iter().map(|a| a.doc_id.as_str()).collect();
        let versions: Vec<i64> = sorted.iter().map(|a| a.version as i64).collect();
        let sql = raise_versions_sql(
            applied_column(store),
            "RETURNING s.stream_id, s.doc_version, s.mysql_version, s.milvus_version, \
             s.s3_version, s.ready_version, \
             extract(epoch FROM clock_timestamp() - s.updated_at)::float8",
        );
        let record = prepared(&client, &sql, "prepare applied versions record").await?;
        let rows = client
            .query(&record, &[&ids, &versions])
            .await
            .map_err(pg_source_error("record applied versions"))?;
        Ok(rows
            .iter()
            .filter(|r| {
                let v: i64 = r.get(1);
                r.get::<_, i64>(2) == v
                    && r.get::<_, i64>(3) == v
                    && r.get::<_, i64>(4) == v
                    && r.get::<_, i64>(5) < v
            })
            .inspect(|r| {
                // `updated_at` is the stream's last append: this version's, unless a
                // compensation request came after it.
                let since_append: f64 = r.get(6);
                self.appends()
                    .append_stats()
                    .time_to_consistent
                    .observe(since_append.max(0.0));
            })
            .filter_map(|r| {
                Some(AppliedVersion {
                    doc_id: DocId::parse(r.get(0)).ok()?,
                    version: r.get::<_, i64>(1) as u64,
                })
            })
            .collect())
    }

    async fn deleted_since(
        &self,
        changes: &[(&DocId, Version)],
    ) -> Result<HashSet<DocId>, SourceError> {
        if changes.is_empty() {
            return Ok(HashSet::new());
        }
        let client = self.client().await?;
        let ids: Vec<&str> = changes.iter().map(|(d, _)| d.as_str()).collect();
        let versions: Vec<i64> = changes.iter().map(|(_, v)| *v as i64).collect();
        let read = prepared(
            &client,
            "SELECT s.stream_id FROM unnest($1::text[], $2::bigint[]) AS c(stream_id, version)
               JOIN streams s ON s.stream_id = c.stream_id
              WHERE s.deleted AND s.doc_version > c.version",
            "prepare deletion check",
        )
        .await?;
        let rows = client
            .query(&read, &[&ids, &versions])
            .await
            .map_err(pg_source_error("check deletions"))?;
        Ok(rows
            .iter()
            .filter_map(|r| DocId::parse(r.get(0)).ok())
            .collect())
    }

    async fn park(
        &self,
        sink: &'static str,
        change: &DocChange,
        error: &SinkError,
    ) -> Result<(), SourceError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO parked_changes (sink, stream_id, version, position, error) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &sink,
                    &change.doc_id.as_str(),
                    &(change.version as i64),
                    &change.cursor.position,
                    &error.to_string(),
                ],
            )
            .await
            .map_err(pg_source_error("park change"))?;
        // Wakes the compensators (of every process) without waiting for a poll.
        client
            .batch_execute(&format!("NOTIFY {}", super::PARKED_CHANNEL))
            .await
            .map_err(pg_source_error("notify parked change"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_raised() {
        assert_eq!(prefix_end("docs/a"), Some("docs/b".into()));
        assert_eq!(prefix_end("kb/"), Some("kb0".into()));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{7f}"), Some("b".into()));
        let end = prefix_end("docs/a").expect("an end");
        for id in ["docs/a", "docs/a/b", "docs/az", "docs/a~"] {
            assert!(id < end.as_str(), "{id}");
        }
        assert!("docs/b" >= end.as_str());
    }

    #[test]
    fn a_log_failure_reaches_the_runner_named_once() {
        let e = SourceError::from(LogError::Unavailable {
            operation: "prepare blob read",
            message: "connection reset".into(),
        });
        assert_eq!(
            e.to_string(),
            "log prepare blob read failed: connection reset"
        );
    }
}
