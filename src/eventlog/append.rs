//! Appends: all events of one command in one transaction.
//!
//! The stream row is the lock: it is inserted (first append) or updated only where its
//! event count equals the expected one, and the events are inserted only through that row,
//! in the same statement. A concurrent append to the same stream waits on the row and then
//! finds the count changed: a typed conflict, never a silent overwrite. The idempotency key
//! is inserted first in the same transaction, so concurrent retries of one request serialise
//! on its primary key and all but the first see the first one's result.
//!
//! Without idempotency key, the stream row, the blob and the events are written by one
//! statement, sent on its own (autocommit): one round trip, and the statement's implicit
//! transaction is the append's. With group commit on (the default, see `group`), such plain
//! appends of several streams share one statement, so one transaction and one WAL flush.
//! Readers are woken by a NOTIFY sent after the commit (see `listen::spawn_notifier`), except
//! in [`LogAppends::append_in`], whose NOTIFY is part of the caller's transaction.

use aggregates::{DocId, DocumentEvent, LogCursor, StoreKind};
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

use projections::sink::stream_hash;

use super::codec::{encode, StoredEvent};
use super::{AppendStats, LogAppends, LogError, ParkedChanges, ParkedResolution, NOTIFY_CHANNEL};

/// A statement prepared once per pooled connection.
pub(super) async fn prepared(
    db: &impl GenericClient,
    sql: &str,
    operation: &'static str,
) -> Result<tokio_postgres::Statement, LogError> {
    db.prepare_cached(sql)
        .await
        .map_err(LogError::db(operation))
}

/// An idempotency key and the hash of the request it was sent with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The client's key.
    pub key: String,
    /// sha256 of the canonical request; reusing the key for another request is refused.
    pub request_hash: [u8; 32],
}

impl IdempotencyKey {
    /// A key for a request whose canonical bytes are `request`.
    pub fn new(key: String, request: &[u8]) -> Self {
        Self {
            key,
            request_hash: Sha256::digest(request).into(),
        }
    }
}

/// What an idempotent request answered the first time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResult {
    /// Document version after the command.
    pub version: u64,
    /// Log position of the command's last event (None when it appended nothing).
    pub log_position: Option<i64>,
    /// The command changed nothing.
    pub unchanged: bool,
}

/// One command's events.
#[derive(Debug, Clone)]
pub struct AppendRequest<'a> {
    /// The stream.
    pub doc_id: &'a DocId,
    /// The stream's event count the command was decided on.
    pub expected_stream_version: i64,
    /// The events, in order (may be empty only with an idempotency key).
    pub events: &'a [DocumentEvent],
    /// The document's version after the events.
    pub doc_version: u64,
    /// Whether the document is deleted after the events.
    pub deleted: bool,
    /// Blob bytes to store (sha256 hex, bytes).
    pub blob: Option<(&'a str, Bytes)>,
    /// Optional idempotency key.
    pub idempotency: Option<&'a IdempotencyKey>,
    /// Parked changes this append compensates, resolved in the same transaction.
    pub resolves: Option<&'a ParkedResolution>,
}

impl AppendRequest<'_> {
    /// Without idempotency key and parked change to resolve, with events: one statement,
    /// which group commit may share with other streams' plain appends.
    pub fn is_plain(&self) -> bool {
        self.idempotency.is_none()
            && self.resolves.is_none()
            && !self.events.is_empty()
            && self.erasure().is_none()
    }

    /// The document version of the erasure among the events, if any: its append removes
    /// every trace of the stream's earlier content in the same transaction.
    pub fn erasure(&self) -> Option<u64> {
        self.events.iter().find_map(|e| match e {
            DocumentEvent::DocumentErased { version } => Some(*version),
            _ => None,
        })
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// The events are durable.
    Committed {
        /// Cursor of the last event.
        last: LogCursor,
        /// The stream's event count now.
        stream_version: i64,
    },
    /// The idempotency key was seen: nothing appended, here is the first answer.
    Duplicate(IdempotentResult),
    /// The parked change to resolve was already resolved (by another compensator):
    /// nothing appended.
    AlreadyResolved,
}

/// Inserts the stream row (first append) or moves it from the expected count, with the
/// document's final catalogue state when the command changes it (`$15`–`$18`, all NULL
/// otherwise; see migration 4), then, only if that succeeded, the blob's bytes (once per sha256; `$12` is NULL without blob) and the
/// events; returns one row per inserted event. Bytes already stored are not written again,
/// but their row is locked (`DO UPDATE … WHERE false` locks without updating) until the
/// append commits: a content removal deleting unreferenced blobs waits for it and then
/// sees its reference (see `content`). One statement, so an append without
/// idempotency key is one implicit transaction: a conflict writes nothing, not even the blob.
const APPEND_EVENTS: &str = r#"
WITH created AS (
    INSERT INTO streams (stream_id, stream_version, doc_version, deleted, catalogue_version,
                         catalogue_type, catalogue_event_version, catalogue)
    SELECT $1, $3, $4, $5, $15, $16, $17, $18 WHERE $2::bigint = 0
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), moved AS (
    UPDATE streams
       SET stream_version = $3, doc_version = $4, deleted = $5, updated_at = now(),
           catalogue_version = COALESCE($15, catalogue_version),
           catalogue_type = COALESCE($16, catalogue_type),
           catalogue_event_version = COALESCE($17, catalogue_event_version),
           catalogue = COALESCE($18::json, catalogue)
     WHERE stream_id = $1 AND stream_version = $2 AND $2::bigint > 0
    RETURNING stream_id
), stream AS (
    SELECT stream_id FROM created UNION ALL SELECT stream_id FROM moved
), blob AS (
    INSERT INTO blobs (sha256, size, content)
    SELECT $12::bytea, $13::bigint, $14::bytea FROM stream WHERE $12::bytea IS NOT NULL
    ON CONFLICT (sha256) DO UPDATE SET size = blobs.size WHERE false
)
INSERT INTO events (epoch, stream_id, stream_version, stream_hash, event_type, event_version, payload, vectors)
SELECT (SELECT epoch FROM log_meta), stream.stream_id, e.stream_version, $6, e.event_type, e.event_version, e.payload, e.vectors
FROM stream, unnest($7::bigint[], $8::text[], $9::smallint[], $10::jsonb[], $11::bytea[])
     AS e(stream_version, event_type, event_version, payload, vectors)
ORDER BY e.stream_version
RETURNING epoch, xid::text, position
"#;

/// One command's append, encoded and owned: what the single statement ([`APPEND_EVENTS`])
/// and the group statement (`group::APPEND_GROUP`) send. Encoding happens in the caller's
/// task, so the events' CPU cost is spread over the callers, not paid by an appender task.
#[derive(Debug)]
pub(super) struct EncodedAppend {
    pub(super) doc_id: String,
    pub(super) expected_stream_version: i64,
    pub(super) new_stream_version: i64,
    pub(super) doc_version: i64,
    pub(super) deleted: bool,
    pub(super) stream_hash: i32,
    /// Per event, in order: stream version and stored form.
    pub(super) versions: Vec<i64>,
    pub(super) events: Vec<StoredEvent>,
    /// Blob sha256 (raw bytes) and content.
    pub(super) blob: Option<(Vec<u8>, Bytes)>,
    /// The command's newest event that carries a catalogue change (index into `events`) and
    /// the document version it sets: the stream row's final catalogue state afterwards.
    catalogue: Option<(usize, i64)>,
}

/// The stream row's catalogue columns an append writes (all `None`: unchanged).
pub(super) struct CatalogueState<'a> {
    pub(super) version: Option<i64>,
    pub(super) event_type: Option<&'a str>,
    pub(super) event_version: Option<i16>,
    pub(super) payload: Option<&'a serde_json::Value>,
}

impl EncodedAppend {
    /// Encodes a request's events and decodes its blob's sha256.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] for a blob sha256 that is not hex (the caller's bug; the
    /// document actor computes it).
    pub(super) fn new(req: &AppendRequest<'_>) -> Result<EncodedAppend, LogError> {
        let events: Vec<StoredEvent> = req.events.iter().map(encode).collect();
        let n = events.len() as i64;
        let catalogue = req.events.iter().enumerate().rev().find_map(|(i, e)| {
            e.change_for(StoreKind::Mysql)
                .map(|change| (i, change.version() as i64))
        });
        let blob = match &req.blob {
            Some((sha, bytes)) => Some((
                hex::decode(sha).map_err(|e| LogError::Unavailable {
                    operation: "decode blob sha256",
                    message: e.to_string(),
                })?,
                bytes.clone(),
            )),
            None => None,
        };
        Ok(EncodedAppend {
            doc_id: req.doc_id.as_str().to_owned(),
            expected_stream_version: req.expected_stream_version,
            new_stream_version: req.expected_stream_version + n,
            doc_version: req.doc_version as i64,
            deleted: req.deleted,
            stream_hash: stream_hash(req.doc_id.as_str()),
            versions: (1..=n).map(|i| req.expected_stream_version + i).collect(),
            events,
            blob,
            catalogue,
        })
    }

    /// The catalogue state this append leaves in the stream row, if it changes it.
    pub(super) fn catalogue(&self) -> CatalogueState<'_> {
        let event = self.catalogue.map(|(i, v)| (&self.events[i], v));
        CatalogueState {
            version: event.map(|(_, v)| v),
            event_type: event.map(|(e, _)| e.event_type.as_str()),
            event_version: event.map(|(e, _)| e.event_version),
            payload: event.map(|(e, _)| &e.payload),
        }
    }

    /// Bytes the append sends (blob, packed vectors, an estimate of the JSON payloads): what
    /// a group's byte budget counts.
    pub(super) fn num_bytes(&self) -> usize {
        const PAYLOAD_ESTIMATE: usize = 512;
        let blob = self.blob.as_ref().map_or(0, |(_, b)| b.len());
        let events: usize = self
            .events
            .iter()
            .map(|e| PAYLOAD_ESTIMATE + e.vectors.as_ref().map_or(0, Vec::len))
            .sum();
        blob + events
    }

    /// The conflict of this append against the stream's current event count.
    pub(super) fn conflict(&self, actual: i64) -> LogError {
        LogError::Conflict {
            stream: self.doc_id.clone(),
            expected: self.expected_stream_version,
            actual,
        }
    }
}

/// The cursor of a row `RETURNING epoch, xid::text, position` (at `first`, `first + 1`, ...).
pub(super) fn cursor_of(row: &tokio_postgres::Row, first: usize) -> LogCursor {
    LogCursor {
        epoch: row.get(first),
        xid: row.get::<_, &str>(first + 1).parse().unwrap_or_default(),
        position: row.get(first + 2),
    }
}

/// Writes one command's stream row, blob and events with [`APPEND_EVENTS`]; returns the
/// cursor of its last event, or the conflict when the stream is not at the expected count.
/// On a connection in autocommit this is the whole append, one implicit transaction.
pub(super) async fn insert_events(
    tx: &impl GenericClient,
    cmd: &EncodedAppend,
) -> Result<LogCursor, LogError> {
    let append_events = prepared(tx, APPEND_EVENTS, "prepare event insert").await?;
    let types: Vec<&str> = cmd.events.iter().map(|s| s.event_type.as_str()).collect();
    let event_versions: Vec<i16> = cmd.events.iter().map(|s| s.event_version).collect();
    let payloads: Vec<&serde_json::Value> = cmd.events.iter().map(|s| &s.payload).collect();
    let vectors: Vec<Option<&[u8]>> = cmd.events.iter().map(|s| s.vectors.as_deref()).collect();
    let (blob_sha, blob_size, blob_content) = match &cmd.blob {
        Some((sha, bytes)) => (Some(sha), Some(bytes.len() as i64), Some(&bytes[..])),
        None => (None, None, None),
    };
    let catalogue = cmd.catalogue();
    let params: [&(dyn ToSql + Sync); 18] = [
        &cmd.doc_id,
        &cmd.expected_stream_version,
        &cmd.new_stream_version,
        &cmd.doc_version,
        &cmd.deleted,
        &cmd.stream_hash,
        &cmd.versions,
        &types,
        &event_versions,
        &payloads,
        &vectors,
        &blob_sha,
        &blob_size,
        &blob_content,
        &catalogue.version,
        &catalogue.event_type,
        &catalogue.event_version,
        &catalogue.payload,
    ];
    let rows = tx
        .query(&append_events, &params)
        .await
        .map_err(LogError::db("insert events"))?;
    match rows.last() {
        Some(last) if rows.len() == cmd.events.len() => Ok(cursor_of(last, 0)),
        _ => {
            // Read on the append's own connection, in its transaction if any (a new statement
            // sees the winner's commit under READ COMMITTED): taking a second pooled
            // connection here waits forever when every connection of the pool holds a
            // conflicting append.
            let read = prepared(tx, READ_STREAM_VERSION, "prepare stream version read").await?;
            let actual = tx
                .query_opt(&read, &[&cmd.doc_id])
                .await
                .map_err(LogError::db("read stream version"))?
                .map_or(0, |r| r.get(0));
            Err(cmd.conflict(actual))
        }
    }
}

/// Claims an idempotency key; concurrent retries wait on the first claim's row.
const CLAIM_IDEMPOTENCY_KEY: &str =
    "INSERT INTO idempotency_keys (key, stream_id, request_hash, result)
     VALUES ($1, $2, $3, 'null') ON CONFLICT (key) DO NOTHING";

const READ_IDEMPOTENCY_KEY: &str =
    "SELECT request_hash, result FROM idempotency_keys WHERE key = $1";

const STORE_IDEMPOTENCY_RESULT: &str = "UPDATE idempotency_keys SET result = $2 WHERE key = $1";

pub(super) const READ_STREAM_VERSION: &str =
    "SELECT stream_version FROM streams WHERE stream_id = $1";

/// Where an append wakes readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// NOTIFY inside the transaction (delivered when the caller commits).
    InTransaction,
    /// The caller asks the notifier for a NOTIFY once it has committed.
    AfterCommit,
}

impl<'a> LogAppends<'a> {
    /// This process's append counters.
    pub fn append_stats(self) -> &'a AppendStats {
        &self.log.stats
    }

    /// Appends one command's events atomically.
    ///
    /// # Errors
    /// [`LogError::Conflict`] when the stream moved past `expected_stream_version`;
    /// [`LogError::IdempotencyKeyReused`]; [`LogError::Unavailable`].
    pub async fn append(self, req: AppendRequest<'_>) -> Result<Appended, LogError> {
        let started = std::time::Instant::now();
        let result = self.append_once(req).await;
        self.count_append(&result, started.elapsed());
        result
    }

    /// Counts one append's outcome and time in [`AppendStats`].
    pub(super) fn count_append(
        self,
        result: &Result<Appended, LogError>,
        elapsed: std::time::Duration,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.log.stats;
        stats.duration.observe(elapsed.as_secs_f64());
        match result {
            Ok(Appended::Committed { .. }) => stats.committed.fetch_add(1, Relaxed),
            Ok(Appended::Duplicate(_)) => stats.duplicates.fetch_add(1, Relaxed),
            Ok(Appended::AlreadyResolved) => 0,
            Err(LogError::Conflict { .. }) => stats.conflicts.fetch_add(1, Relaxed),
            Err(_) => stats.failed.fetch_add(1, Relaxed),
        };
    }

    async fn append_once(self, req: AppendRequest<'_>) -> Result<Appended, LogError> {
        if req.is_plain() {
            // One writing statement, its own transaction: no BEGIN and COMMIT round trips.
            // (Without events the statement would create an empty stream: that request takes
            // the transaction below, which rolls back its conflict.) With group commit on,
            // the statement is shared with other streams' plain appends.
            let encoded = EncodedAppend::new(&req)?;
            if let Some(group) = &self.log.group {
                return group.append(encoded).await;
            }
            let client = self.log.client().await?;
            let last = insert_events(&client, &encoded).await?;
            self.wake_readers();
            return Ok(Appended::Committed {
                last,
                stream_version: encoded.new_stream_version,
            });
        }
        let mut client = self.log.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(LogError::db("begin append"))?;
        let appended = self.append_statements(&tx, req, Wake::AfterCommit).await?;
        if matches!(appended, Appended::Committed { .. }) {
            tx.commit().await.map_err(LogError::db("commit append"))?;
            self.wake_readers();
        }
        Ok(appended)
    }

    /// Asks the notifier for a NOTIFY after a commit. A full channel means one is already due
    /// (and starts after this commit); a closed one cannot happen while this handle lives.
    fn wake_readers(self) {
        let _ = self.log.notify.try_send(());
    }

    /// The statements of [`LogAppends::append`] inside a transaction the caller commits (or rolls
    /// back). The result is durable only once the caller commits; tests use this to hold a
    /// transaction open across other appends.
    ///
    /// # Errors
    /// As [`LogAppends::append`].
    pub async fn append_in(
        self,
        tx: &deadpool_postgres::Transaction<'_>,
        req: AppendRequest<'_>,
    ) -> Result<Appended, LogError> {
        self.append_statements(tx, req, Wake::InTransaction).await
    }

    /// The append's statements, prepared once per connection, in a transaction or (without
    /// idempotency key) on a connection in autocommit, where the single writing statement is
    /// its own transaction.
    async fn append_statements(
        self,
        tx: &impl GenericClient,
        req: AppendRequest<'_>,
        wake: Wake,
    ) -> Result<Appended, LogError> {
        let encoded = EncodedAppend::new(&req)?;

        // The key is claimed before anything else is written, so a duplicate leaves the
        // transaction without writes whatever the caller does with it.
        if let Some(key) = req.idempotency {
            let claim = prepared(tx, CLAIM_IDEMPOTENCY_KEY, "prepare idempotency key").await?;
            let inserted = tx
                .execute(
                    &claim,
                    &[&key.key, &req.doc_id.as_str(), &&key.request_hash[..]],
                )
                .await
                .map_err(LogError::db("insert idempotency key"))?;
            if inserted == 0 {
                let read = prepared(tx, READ_IDEMPOTENCY_KEY, "prepare idempotency read").await?;
                let row = tx
                    .query_one(&read, &[&key.key])
                    .await
                    .map_err(LogError::db("read idempotency key"))?;
                let hash: Vec<u8> = row.get(0);
                if hash != key.request_hash {
                    return Err(LogError::IdempotencyKeyReused {
                        key: key.key.clone(),
                    });
                }
                let result: serde_json::Value = row.get(1);
                let result = serde_json::from_value(result).map_err(|e| LogError::Unavailable {
                    operation: "decode idempotency result",
                    message: e.to_string(),
                })?;
                return Ok(Appended::Duplicate(result));
            }
        }

        if let Some(resolution) = req.resolves {
            // First: a concurrent compensator of the same parked change waits on its row
            // here and then appends nothing.
            if !ParkedChanges::resolve_in(tx, resolution).await? {
                return Ok(Appended::AlreadyResolved);
            }
        }

        let last = insert_events(tx, &encoded).await?;
        let new_stream_version = encoded.new_stream_version;
        if let Some(version) = req.erasure() {
            let removed = super::content::erase_in(
                tx,
                req.doc_id.as_str(),
                req.expected_stream_version,
                version,
            )
            .await?;
            tracing::info!(doc_id = %req.doc_id, version, events = removed.events, blobs = removed.blobs, "document erased from the log");
        }

        let result_stored = async {
            let Some(key) = req.idempotency else {
                return Ok(());
            };
            let result = IdempotentResult {
                version: req.doc_version,
                log_position: Some(last.position),
                unchanged: false,
            };
            let store =
                prepared(tx, STORE_IDEMPOTENCY_RESULT, "prepare idempotency result").await?;
            tx.execute(
                &store,
                &[
                    &key.key,
                    &serde_json::to_value(&result).expect("serializable"),
                ],
            )
            .await
            .map(drop)
            .map_err(LogError::db("store idempotency result"))
        };
        let notified = async {
            if wake != Wake::InTransaction {
                return Ok(());
            }
            let notify =
                prepared(tx, &format!("NOTIFY {NOTIFY_CHANNEL}"), "prepare notify").await?;
            tx.execute(&notify, &[])
                .await
                .map(drop)
                .map_err(LogError::db("notify"))
        };
        futures::try_join!(result_stored, notified)?;
        Ok(Appended::Committed {
            last,
            stream_version: new_stream_version,
        })
    }

    /// What the command that first used `key` answered, when one did (a retry whose first
    /// attempt was applied is answered that way, even when the command would now be
    /// refused: a delete of a document the first attempt deleted, say).
    ///
    /// # Errors
    /// [`LogError::IdempotencyKeyReused`] when the key was used for another request;
    /// [`LogError::Unavailable`].
    pub async fn idempotent_result(
        self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotentResult>, LogError> {
        let client = self.log.client().await?;
        let read = prepared(&client, READ_IDEMPOTENCY_KEY, "prepare idempotency read").await?;
        let Some(row) = client
            .query_opt(&read, &[&key.key])
            .await
            .map_err(LogError::db("read idempotency key"))?
        else {
            return Ok(None);
        };
        let hash: Vec<u8> = row.get(0);
        if hash != key.request_hash {
            return Err(LogError::IdempotencyKeyReused {
                key: key.key.clone(),
            });
        }
        let result: serde_json::Value = row.get(1);
        if result.is_null() {
            return Ok(None);
        }
        serde_json::from_value(result)
            .map(Some)
            .map_err(|e| LogError::Unavailable {
                operation: "decode idempotency result",
                message: e.to_string(),
            })
    }

    /// Records the answer to an idempotent request that appended nothing (an unchanged put).
    /// Returns the first answer when the key was already used.
    ///
    /// # Errors
    /// [`LogError::IdempotencyKeyReused`]; [`LogError::Unavailable`].
    pub async fn record_idempotent(
        self,
        doc_id: &DocId,
        key: &IdempotencyKey,
        result: &IdempotentResult,
    ) -> Result<IdempotentResult, LogError> {
        let client = self.log.client().await?;
        let value = serde_json::to_value(result).expect("serializable");
        let row = client
            .query_one(
                "WITH ins AS (
                     INSERT INTO idempotency_keys (key, stream_id, request_hash, result)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING RETURNING request_hash, result)
                 SELECT request_hash, result FROM ins
                 UNION ALL
                 SELECT request_hash, result FROM idempotency_keys WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)",
                &[&key.key, &doc_id.as_str(), &&key.request_hash[..], &value],
            )
            .await
            .map_err(LogError::db("record idempotency key"))?;
        let hash: Vec<u8> = row.get(0);
        if hash != key.request_hash {
            return Err(LogError::IdempotencyKeyReused {
                key: key.key.clone(),
            });
        }
        serde_json::from_value(row.get(1)).map_err(|e| LogError::Unavailable {
            operation: "decode idempotency result",
            message: e.to_string(),
        })
    }
}
