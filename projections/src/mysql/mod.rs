//! The MySQL catalogue sink: one row per live document, written with multi-row version-
//! guarded upserts, and its checkpoint in the same transaction (exactly once).
//!
//! Several processes: each batch first raises its partition's fencing row to the runner's
//! lease generation in its own transaction, so a batch of a previous owner that has not yet
//! noticed it lost the lease is rolled back whole once the new owner wrote; and a deletion
//! leaves a tombstone (its version), so a put of an older version delivered later never
//! brings the row back.

mod audit;
mod classify;
pub mod schema;
pub mod shadow;

use aggregates::{CatalogueEntry, DocumentEvent, LogCursor, StoreKind};
use mysql_async::prelude::*;
use mysql_async::{IsolationLevel, Opts, OptsBuilder, Pool, TxOpts, Value};

use crate::error::SinkError;
use crate::sink::{Applied, Batch, Change, Partition, Sink};
use crate::source::AppliedVersion;
use crate::tls::{self, TlsTrust};
pub use classify::classify;
use classify::sink_error;
use schema::{blob_key, ROWS_PER_STATEMENT, UPSERT_HEAD, UPSERT_ROW, UPSERT_TAIL};

/// The sink's name.
pub const NAME: &str = "mysql";

/// A catalogue row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRow {
    /// Document id.
    pub doc_id: String,
    /// Version.
    pub version: u64,
    /// Title.
    pub title: String,
    /// Source type.
    pub source_type: String,
    /// Business tag.
    pub business_tag: Option<String>,
    /// Attributes.
    pub attributes: serde_json::Value,
    /// `docs/{doc_id}` or None.
    pub blob_key: Option<String>,
    /// Blob sha256.
    pub blob_sha256: Option<String>,
    /// Blob size.
    pub blob_size: Option<u64>,
    /// Number of chunks.
    pub chunk_count: u32,
    /// `pending` or `ready`.
    pub status: String,
}

/// Writes the catalogue to MySQL or MariaDB.
#[derive(Clone)]
pub struct MysqlSink {
    pool: Pool,
    admin_opts: Opts,
    database: String,
}

/// By hand: the client's options print the password.
impl std::fmt::Debug for MysqlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSink")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl MysqlSink {
    /// A sink for the database named in `url` (created by [`Sink::prepare`] when missing),
    /// trusting the system's roots when the URL asks for TLS.
    ///
    /// # Errors
    /// A permanent [`SinkError`] for a URL without database or that does not parse.
    pub fn new(url: &str) -> Result<MysqlSink, SinkError> {
        Self::with_tls(url, &TlsTrust::system())
    }

    /// A sink for the database named in `url`; when the URL asks for TLS
    /// (`require_ssl=true`), the server's certificate must chain to a root of `trust` and
    /// name the URL's host, and the connection never moves to the server's unix socket.
    ///
    /// # Errors
    /// A permanent [`SinkError`] for a URL without database or that does not parse.
    pub fn with_tls(url: &str, trust: &TlsTrust) -> Result<MysqlSink, SinkError> {
        let mut opts = Opts::from_url(url)
            .map_err(|e| SinkError::permanent(NAME, "parse url", e.to_string()))?;
        if let Some(ssl) = opts.ssl_opts().cloned() {
            tls::install_crypto_provider();
            if ssl.accept_invalid_certs() || ssl.skip_domain_validation() {
                tracing::warn!(
                    "the MySQL URL switches TLS certificate verification off \
                     (verify_ca=false or verify_identity=false)"
                );
            }
            // The same roots as every other store (not mysql_async's built-in Mozilla set).
            let ssl = ssl
                .with_root_certs(vec![trust.roots_pem().into()])
                .with_disable_built_in_roots(true);
            // mysql_async would otherwise reconnect through the server's unix socket when it
            // runs on this host, which it never secures.
            opts = OptsBuilder::from_opts(opts)
                .ssl_opts(Some(ssl))
                .prefer_socket(false)
                .into();
        }
        let database = opts
            .db_name()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                SinkError::permanent(NAME, "parse url", "the MySQL URL names no database")
            })?
            .to_owned();
        if !database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(SinkError::permanent(
                NAME,
                "parse url",
                format!("database name {database:?} must be [A-Za-z0-9_]"),
            ));
        }
        let admin_opts: Opts = OptsBuilder::from_opts(opts.clone())
            .db_name(None::<String>)
            .into();
        Ok(MysqlSink {
            pool: Pool::new(opts),
            admin_opts,
            database,
        })
    }

    /// Starts the pool's background work (its recycler) on the calling runtime, which must
    /// outlive every user of the sink; sends nothing. mysql_async starts it at the pool's
    /// first request, on whatever runtime that runs, and once that runtime ends the pool
    /// answers every request with "Pool was disconnected", for good: a first request from an
    /// HTTP worker (`?verify=true`) would break the sink at the next graceful stop.
    pub fn bind_to_current_runtime(&self) {
        use futures::FutureExt;
        // The first poll starts the recycler; the connection attempt is then dropped.
        drop(self.pool.get_conn().now_or_never());
    }

    /// The connection pool (for tools and tests that read the catalogue).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Marks documents `ready` where the row is still at the given version.
    ///
    /// # Errors
    /// A classified [`SinkError`].
    async fn mark_rows_ready(&self, docs: &[AppliedVersion]) -> Result<(), SinkError> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        for part in docs.chunks(ROWS_PER_STATEMENT) {
            let cond = vec!["(doc_id = ? AND version = ?)"; part.len()].join(" OR ");
            let params: Vec<Value> = part
                .iter()
                .flat_map(|d| [Value::from(d.doc_id.as_str()), Value::from(d.version)])
                .collect();
            conn.exec_drop(
                format!(
                    "UPDATE documents SET status = 'ready' WHERE status <> 'ready' AND ({cond})"
                ),
                params,
            )
            .await
            .map_err(sink_error("mark ready"))?;
        }
        Ok(())
    }

    /// The row of a document, if any.
    ///
    /// # Errors
    /// A classified [`SinkError`].
    pub async fn row(&self, doc_id: &str) -> Result<Option<DocumentRow>, SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        let row: Option<mysql_async::Row> = conn
            .exec_first(format!("{SELECT_ROW} WHERE doc_id = ?"), (doc_id,))
            .await
            .map_err(sink_error("read row"))?;
        row.map(decode_row).transpose()
    }

    /// Up to `limit` rows with `doc_id` greater than `after` (all rows when `None`), in
    /// `doc_id` order: a page of a full scan, as verification reads the catalogue.
    ///
    /// # Errors
    /// A classified [`SinkError`].
    pub async fn rows_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocumentRow>, SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        let rows: Vec<mysql_async::Row> = conn
            .exec(
                format!("{SELECT_ROW} WHERE doc_id > ? ORDER BY doc_id LIMIT ?"),
                (after.unwrap_or(""), limit as u64),
            )
            .await
            .map_err(sink_error("scan rows"))?;
        rows.into_iter().map(decode_row).collect()
    }

    /// Number of rows, and of those `ready`.
    ///
    /// # Errors
    /// A classified [`SinkError`].
    pub async fn counts(&self) -> Result<(u64, u64), SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        let r: Option<(u64, Option<u64>)> = conn
            .query_first("SELECT COUNT(*), SUM(status = 'ready') FROM documents")
            .await
            .map_err(sink_error("count rows"))?;
        Ok(r.map_or((0, 0), |(n, ready)| (n, ready.unwrap_or(0))))
    }

    /// Closes the pool's connections.
    pub async fn close(self) {
        let _ = self.pool.disconnect().await;
    }
}

/// Every column of a catalogue row, in [`decode_row`]'s order.
const SELECT_ROW: &str = "SELECT doc_id, version, title, source_type, business_tag,
        CAST(attributes AS CHAR), blob_key, blob_sha256, blob_size, chunk_count,
        CAST(status AS CHAR)
    FROM documents";

fn decode_row(row: mysql_async::Row) -> Result<DocumentRow, SinkError> {
    let bad = |m: String| SinkError::permanent(NAME, "decode row", m);
    type Cols = (
        String,
        u64,
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<u64>,
        u32,
        String,
    );
    let c: Cols = mysql_async::from_row_opt(row).map_err(|e| bad(e.to_string()))?;
    Ok(DocumentRow {
        doc_id: c.0,
        version: c.1,
        title: c.2,
        source_type: c.3,
        business_tag: c.4,
        attributes: serde_json::from_str(&c.5).map_err(|e| bad(e.to_string()))?,
        blob_key: c.6,
        blob_sha256: c.7,
        blob_size: c.8,
        chunk_count: c.9,
        status: c.10,
    })
}

fn upsert_params(doc_id: &str, event: &DocumentEvent) -> Option<[Value; 10]> {
    event
        .catalogue_entry()
        .map(|entry| entry_params(doc_id, entry))
}

/// One document's write in a batch: its row's parameters, or the version it was removed at.
#[allow(clippy::large_enum_variant)] // reason: built once per row and moved into its statement
enum RowOp {
    Upsert([Value; 10]),
    /// The version it is removed at, and whether a tombstone stays.
    Remove(u64, bool),
}

impl RowOp {
    fn is_upsert(&self) -> bool {
        matches!(self, RowOp::Upsert(_))
    }
}

/// A catalogue entry's values in the catalogue's column order, from `doc_id` to
/// `chunk_count` (`blob_key` is `docs/{doc_id}` when the entry has a blob): the strings
/// move into the statement's parameters.
pub fn entry_params(doc_id: &str, entry: CatalogueEntry) -> [Value; 10] {
    [
        Value::from(doc_id),
        Value::from(entry.version),
        Value::from(entry.title),
        Value::from(entry.source_type),
        Value::from(entry.business_tag),
        Value::from(entry.attributes),
        Value::from(entry.blob_sha256.as_ref().map(|_| blob_key(doc_id))),
        Value::from(entry.blob_sha256),
        Value::from(entry.blob_size),
        Value::from(entry.chunk_count),
    ]
}

impl Sink for MysqlSink {
    const NAME: &'static str = NAME;
    const STORE: StoreKind = StoreKind::Mysql;
    const KEEPS_OWN_CHECKPOINT: bool = true;
    const KEEPS_TOMBSTONES: bool = true;
    const CHECKS_FENCE: bool = true;
    const KEEPS_READINESS: bool = true;

    async fn prepare(&self) -> Result<(), SinkError> {
        let mut admin = mysql_async::Conn::new(self.admin_opts.clone())
            .await
            .map_err(sink_error("connect"))?;
        admin
            .query_drop(format!("CREATE DATABASE IF NOT EXISTS `{}`", self.database))
            .await
            .map_err(sink_error("create database"))?;
        let _ = admin.disconnect().await;
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        conn.query_drop(schema::CREATE_DOCUMENTS)
            .await
            .map_err(sink_error("create table documents"))?;
        conn.query_drop(schema::CREATE_CHECKPOINTS)
            .await
            .map_err(sink_error("create table projection_checkpoints"))?;
        let counted: Option<u64> = conn
            .query_first(
                "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
                   AND TABLE_NAME = 'projection_checkpoints' AND COLUMN_NAME = 'partition_count'",
            )
            .await
            .map_err(sink_error("read checkpoints table"))?;
        if counted == Some(0) {
            // Another process may be doing the same: its change is as good as ours.
            if let Err(e) = conn.query_drop(schema::ADD_PARTITION_COUNT).await {
                tracing::info!(error = %e, "checkpoints table already changed by another process");
            }
        }
        conn.query_drop(schema::CREATE_FENCES)
            .await
            .map_err(sink_error("create table projection_fences"))?;
        conn.query_drop(schema::CREATE_TOMBSTONES)
            .await
            .map_err(sink_error("create table document_tombstones"))?;
        Ok(())
    }

    async fn checkpoint(&self, part: Partition) -> Result<Option<(String, LogCursor)>, SinkError> {
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        let row: Option<(String, i32, u64, i64)> = conn
            .exec_first(
                "SELECT log_id, epoch, xid, position FROM projection_checkpoints
                  WHERE sink = ? AND partition_count = ? AND partition_index = ?",
                (NAME, part.count, part.index),
            )
            .await
            .map_err(sink_error("read checkpoint"))?;
        Ok(row.map(|(log_id, epoch, xid, position)| {
            (
                log_id,
                LogCursor {
                    epoch,
                    xid,
                    position,
                },
            )
        }))
    }

    async fn apply(
        &self,
        log_id: &str,
        part: Partition,
        batch: &Batch,
    ) -> Result<Applied, SinkError> {
        // Rows are written in doc_id order, the order in which `mark_ready` (a range scan of
        // the primary key) locks them: written in log order, a batch and a readiness update
        // of the same documents deadlocked, and InnoDB rolled one of them back.
        let mut ops: Vec<(&str, RowOp)> = batch
            .changes
            .iter()
            .filter_map(|change| {
                let doc_id = change.doc_id.as_str();
                match &change.change {
                    Change::Upsert(event) => {
                        upsert_params(doc_id, event).map(|row| (doc_id, RowOp::Upsert(row)))
                    }
                    Change::Remove | Change::Erase => {
                        Some((doc_id, RowOp::Remove(change.version, true)))
                    }
                    Change::Purge => Some((doc_id, RowOp::Remove(change.version, false))),
                }
            })
            .collect();
        ops.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut conn = self.pool.get_conn().await.map_err(sink_error("connect"))?;
        // READ COMMITTED: a batch locks the rows it writes, not the gaps between keys it
        // reads. Under REPEATABLE READ, two partitions' batches that check and write
        // tombstones of neighbouring documents held gap locks on each other's inserts and
        // deadlocked (InnoDB rolled one back: seen in the multi-process fault test).
        let mut opts = TxOpts::default();
        opts.with_isolation_level(IsolationLevel::ReadCommitted);
        let mut tx = conn
            .start_transaction(opts)
            .await
            .map_err(sink_error("begin"))?;
        if let Some(generation) = batch.fence {
            // The fencing row is locked until the commit: a new owner's first batch waits
            // for this one, and this one fails if the new owner's came first.
            tx.exec_drop(
                "INSERT INTO projection_fences (sink, partition_count, partition_index, generation)
                 VALUES (?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE generation = GREATEST(generation, VALUES(generation))",
                (NAME, part.count, part.index, generation),
            )
            .await
            .map_err(sink_error("raise fence"))?;
            let newest: Option<i64> = tx
                .exec_first(
                    "SELECT generation FROM projection_fences
                      WHERE sink = ? AND partition_count = ? AND partition_index = ?",
                    (NAME, part.count, part.index),
                )
                .await
                .map_err(sink_error("read fence"))?;
            if let Some(newest) = newest.filter(|n| *n > generation) {
                let _ = tx.rollback().await;
                return Err(SinkError::fenced(
                    NAME,
                    "raise fence",
                    format!(
                        "partition {} of {} was written by lease generation {newest}, this batch is of {generation}",
                        part.index, part.count
                    ),
                ));
            }
        }
        let mut ops = ops.into_iter().peekable();
        while let Some(first) = ops.next() {
            // The next run of one kind, at most `ROWS_PER_STATEMENT` rows, moved into the
            // statement's parameters.
            let upsert = first.1.is_upsert();
            let mut rows = 0;
            let mut params = Vec::new();
            // Upserts, to check against their documents' tombstones; removals, to leave one.
            let mut marks: Vec<Value> = Vec::new();
            let mut next = Some(first);
            while let Some((doc_id, op)) = next {
                match op {
                    RowOp::Upsert(row) => {
                        marks.push(Value::from(doc_id));
                        params.extend(row)
                    }
                    RowOp::Remove(version, tombstone) => {
                        params.extend([Value::from(doc_id), Value::from(version)]);
                        if tombstone {
                            marks.extend([Value::from(doc_id), Value::from(version)]);
                        }
                    }
                }
                rows += 1;
                next = if rows < ROWS_PER_STATEMENT {
                    ops.next_if(|(_, op)| op.is_upsert() == upsert)
                } else {
                    None
                };
            }
            let (sql, what) = if upsert {
                let values = vec![UPSERT_ROW; rows].join(", ");
                (format!("{UPSERT_HEAD}{values}{UPSERT_TAIL}"), "upsert rows")
            } else {
                // Guarded: a row newer than the deletion is kept.
                let cond = vec!["(doc_id = ? AND version < ?)"; rows].join(" OR ");
                (format!("DELETE FROM documents WHERE {cond}"), "delete rows")
            };
            tx.exec_drop(sql, params).await.map_err(sink_error(what))?;
            if marks.is_empty() {
                continue;
            }
            if upsert {
                // A put older than the document's deletion does not bring its row back.
                let ids = vec!["?"; marks.len()].join(", ");
                tx.exec_drop(
                    format!(
                        // Only the batch's own rows are read and locked (by primary key):
                        // a join may be driven from the tombstones and wait on other
                        // documents' rows, which another batch or the readiness update
                        // holds (a deadlock, seen in the multi-process fault test).
                        "DELETE FROM documents WHERE doc_id IN ({ids})
                            AND version <= (SELECT t.version FROM document_tombstones t
                                             WHERE t.doc_id = documents.doc_id)"
                    ),
                    marks,
                )
                .await
                .map_err(sink_error("apply tombstones"))?;
            } else {
                let values = vec!["(?, ?)"; marks.len() / 2].join(", ");
                tx.exec_drop(
                    format!(
                        "INSERT INTO document_tombstones (doc_id, version) VALUES {values}
                         ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version))"
                    ),
                    marks,
                )
                .await
                .map_err(sink_error("write tombstones"))?;
            }
        }
        let end = batch.end;
        tx.exec_drop(
            "INSERT IGNORE INTO projection_checkpoints (sink, partition_count, partition_index, log_id, epoch, xid, position)
             VALUES (?, ?, ?, ?, 0, 0, 0)",
            (NAME, part.count, part.index, log_id),
        )
        .await
        .map_err(sink_error("create checkpoint"))?;
        // Never backwards.
        tx.exec_drop(
            "UPDATE projection_checkpoints SET log_id = ?, epoch = ?, xid = ?, position = ?
             WHERE sink = ? AND partition_count = ? AND partition_index = ?
               AND (epoch, xid, position) < (?, ?, ?)",
            (
                log_id,
                end.epoch,
                end.xid,
                end.position,
                NAME,
                part.count,
                part.index,
                end.epoch,
                end.xid,
                end.position,
            ),
        )
        .await
        .map_err(sink_error("save checkpoint"))?;
        tx.commit().await.map_err(sink_error("commit"))?;
        Ok(Applied {
            num_changes: batch.changes.len(),
        })
    }

    async fn mark_ready(&self, docs: &[AppliedVersion]) -> Result<(), SinkError> {
        self.mark_rows_ready(docs).await
    }
}

#[cfg(test)]
mod debug_tests {
    use super::MysqlSink;

    #[test]
    fn printing_a_sink_hides_the_password() {
        let sink =
            MysqlSink::new("mysql://user:hunter2@127.0.0.1:1/catalogue").expect("a valid url");
        let printed = format!("{sink:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("catalogue"), "{printed}");
    }
}
