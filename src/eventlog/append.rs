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
//! transaction is the append's. Readers are woken by a NOTIFY sent after the commit (see
//! `listen::spawn_notifier`), except in [`PgLog::append_in`], whose NOTIFY is part of the
//! caller's transaction.

use aggregates::{DocId, DocumentEvent, LogCursor};
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

use projections::sink::stream_hash;

use super::codec::encode;
use super::{LogError, ParkedResolution, PgLog, NOTIFY_CHANNEL};

/// A statement prepared once per pooled connection.
async fn prepared(
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
#[derive(Debug)]
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

/// Inserts the stream row (first append) or moves it from the expected count, then, only if
/// that succeeded, the blob's bytes (once per sha256; `$12` is NULL without blob) and the
/// events; returns one row per inserted event. One statement, so an append without
/// idempotency key is one implicit transaction: a conflict writes nothing, not even the blob.
const APPEND_EVENTS: &str = r#"
WITH created AS (
    INSERT INTO streams (stream_id, stream_version, doc_version, deleted)
    SELECT $1, $3, $4, $5 WHERE $2::bigint = 0
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id
), moved AS (
    UPDATE streams
       SET stream_version = $3, doc_version = $4, deleted = $5, updated_at = now()
     WHERE stream_id = $1 AND stream_version = $2 AND $2::bigint > 0
    RETURNING stream_id
), stream AS (
    SELECT stream_id FROM created UNION ALL SELECT stream_id FROM moved
), blob AS (
    INSERT INTO blobs (sha256, size, content)
    SELECT $12::bytea, $13::bigint, $14::bytea FROM stream WHERE $12::bytea IS NOT NULL
    ON CONFLICT (sha256) DO NOTHING
)
INSERT INTO events (epoch, stream_id, stream_version, stream_hash, event_type, event_version, payload, vectors)
SELECT (SELECT epoch FROM log_meta), stream.stream_id, e.stream_version, $6, e.event_type, e.event_version, e.payload, e.vectors
FROM stream, unnest($7::bigint[], $8::text[], $9::smallint[], $10::jsonb[], $11::bytea[])
     AS e(stream_version, event_type, event_version, payload, vectors)
ORDER BY e.stream_version
RETURNING epoch, xid::text, position
"#;

/// Claims an idempotency key; concurrent retries wait on the first claim's row.
const CLAIM_IDEMPOTENCY_KEY: &str =
    "INSERT INTO idempotency_keys (key, stream_id, request_hash, result)
     VALUES ($1, $2, $3, 'null') ON CONFLICT (key) DO NOTHING";

const READ_IDEMPOTENCY_KEY: &str =
    "SELECT request_hash, result FROM idempotency_keys WHERE key = $1";

const STORE_IDEMPOTENCY_RESULT: &str = "UPDATE idempotency_keys SET result = $2 WHERE key = $1";

const READ_STREAM_VERSION: &str = "SELECT stream_version FROM streams WHERE stream_id = $1";

/// Where an append wakes readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// NOTIFY inside the transaction (delivered when the caller commits).
    InTransaction,
    /// The caller asks the notifier for a NOTIFY once it has committed.
    AfterCommit,
}

impl PgLog {
    /// Appends one command's events atomically.
    ///
    /// # Errors
    /// [`LogError::Conflict`] when the stream moved past `expected_stream_version`;
    /// [`LogError::IdempotencyKeyReused`]; [`LogError::Unavailable`].
    pub async fn append(&self, req: AppendRequest<'_>) -> Result<Appended, LogError> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let result = self.append_once(req).await;
        let stats = &self.stats;
        stats
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match &result {
            Ok(Appended::Committed { .. }) => stats.committed.fetch_add(1, Relaxed),
            Ok(Appended::Duplicate(_)) => stats.duplicates.fetch_add(1, Relaxed),
            Ok(Appended::AlreadyResolved) => 0,
            Err(LogError::Conflict { .. }) => stats.conflicts.fetch_add(1, Relaxed),
            Err(_) => stats.failed.fetch_add(1, Relaxed),
        };
        result
    }

    async fn append_once(&self, req: AppendRequest<'_>) -> Result<Appended, LogError> {
        let mut client = self.client().await?;
        if req.idempotency.is_none() && req.resolves.is_none() && !req.events.is_empty() {
            // One writing statement, its own transaction: no BEGIN and COMMIT round trips.
            // (Without events the statement would create an empty stream: that request takes
            // the transaction below, which rolls back its conflict.)
            let appended = self
                .append_statements(&client, req, Wake::AfterCommit)
                .await?;
            self.wake_readers();
            return Ok(appended);
        }
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
    fn wake_readers(&self) {
        let _ = self.notify.try_send(());
    }

    /// The statements of [`PgLog::append`] inside a transaction the caller commits (or rolls
    /// back). The result is durable only once the caller commits; tests use this to hold a
    /// transaction open across other appends.
    ///
    /// # Errors
    /// As [`PgLog::append`].
    pub async fn append_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        req: AppendRequest<'_>,
    ) -> Result<Appended, LogError> {
        self.append_statements(tx, req, Wake::InTransaction).await
    }

    /// The append's statements, prepared once per connection, in a transaction or (without
    /// idempotency key) on a connection in autocommit, where the single writing statement is
    /// its own transaction.
    async fn append_statements(
        &self,
        tx: &impl GenericClient,
        req: AppendRequest<'_>,
        wake: Wake,
    ) -> Result<Appended, LogError> {
        let stored: Vec<_> = req.events.iter().map(encode).collect();
        let n = stored.len() as i64;
        let versions: Vec<i64> = (1..=n).map(|i| req.expected_stream_version + i).collect();
        let types: Vec<&str> = stored.iter().map(|s| s.event_type.as_str()).collect();
        let event_versions: Vec<i16> = stored.iter().map(|s| s.event_version).collect();
        let payloads: Vec<&serde_json::Value> = stored.iter().map(|s| &s.payload).collect();
        let vectors: Vec<Option<&[u8]>> = stored.iter().map(|s| s.vectors.as_deref()).collect();
        let new_stream_version = req.expected_stream_version + n;
        let doc_version = req.doc_version as i64;
        let hash = stream_hash(req.doc_id.as_str());
        let blob = match &req.blob {
            Some((sha, bytes)) => Some((
                hex::decode(sha).map_err(|e| LogError::Unavailable {
                    operation: "decode blob sha256",
                    message: e.to_string(),
                })?,
                bytes,
            )),
            None => None,
        };

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
            if !PgLog::resolve_in(tx, resolution).await? {
                return Ok(Appended::AlreadyResolved);
            }
        }

        let append_events = prepared(tx, APPEND_EVENTS, "prepare event insert").await?;
        let (blob_sha, blob_size, blob_content) = match &blob {
            Some((sha, bytes)) => (Some(sha), Some(bytes.len() as i64), Some(&bytes[..])),
            None => (None, None, None),
        };
        let params: [&(dyn ToSql + Sync); 14] = [
            &req.doc_id.as_str(),
            &req.expected_stream_version,
            &new_stream_version,
            &doc_version,
            &req.deleted,
            &hash,
            &versions,
            &types,
            &event_versions,
            &payloads,
            &vectors,
            &blob_sha,
            &blob_size,
            &blob_content,
        ];
        let rows = tx
            .query(&append_events, &params)
            .await
            .map_err(LogError::db("insert events"))?;
        if rows.len() as i64 != n || n == 0 {
            // Read on the append's own connection, in its transaction if any (a new statement
            // sees the winner's commit under READ COMMITTED): taking a second pooled
            // connection here waits forever when every connection of the pool holds a
            // conflicting append.
            let read = prepared(tx, READ_STREAM_VERSION, "prepare stream version read").await?;
            let actual = tx
                .query_opt(&read, &[&req.doc_id.as_str()])
                .await
                .map_err(LogError::db("read stream version"))?
                .map_or(0, |r| r.get(0));
            return Err(LogError::Conflict {
                stream: req.doc_id.to_string(),
                expected: req.expected_stream_version,
                actual,
            });
        }
        let last = rows.last().map(|r| LogCursor {
            epoch: r.get(0),
            xid: r.get::<_, &str>(1).parse().unwrap_or_default(),
            position: r.get(2),
        });
        let last = last.expect("n > 0 rows were returned");

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

    /// Records the answer to an idempotent request that appended nothing (an unchanged put).
    /// Returns the first answer when the key was already used.
    ///
    /// # Errors
    /// [`LogError::IdempotencyKeyReused`]; [`LogError::Unavailable`].
    pub async fn record_idempotent(
        &self,
        doc_id: &DocId,
        key: &IdempotencyKey,
        result: &IdempotentResult,
    ) -> Result<IdempotentResult, LogError> {
        let client = self.client().await?;
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
