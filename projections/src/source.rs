//! The port through which the runtime reads the log and records progress. Implemented by the
//! PostgreSQL log in the `docledger` crate; the runner knows nothing of SQL.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aggregates::{DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind, Version};
use bytes::Bytes;

use crate::error::SinkError;
use crate::sink::{DocChange, Partition};

/// A failure of the log database (always worth retrying: the log is the system of record and
/// the runner cannot progress without it).
#[derive(Debug, thiserror::Error)]
#[error("log {operation} failed: {message}")]
pub struct SourceError {
    /// What was being done.
    pub operation: &'static str,
    /// The database's message.
    pub message: String,
}

/// A store's applied version of one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedVersion {
    /// The document.
    pub doc_id: DocId,
    /// The version the store now holds.
    pub version: Version,
}

/// A page of the log as one store's projector reads it.
#[derive(Debug, Default)]
pub struct StorePage {
    /// The page's events of the store's types, in log order.
    pub events: Vec<RecordedEvent<DocumentEvent>>,
    /// Cursor and recording time (ms since the epoch) of the page's last event, of the
    /// store's types and partition or not; `None` for an empty page.
    pub last: Option<(LogCursor, i64)>,
    /// Number of events in the page, of the store's types and partition or not: a page of
    /// the `limit` asked for may be followed by more.
    pub num_read: usize,
    /// Number of the page's events of the reader's partition, of the store's types or not.
    pub num_of_partition: usize,
}

/// The log, as the projection runtime sees it.
pub trait LogSource: Clone + Send + Sync + 'static {
    /// Identity of this log (a UUID fixed at its creation); checkpoints of another log are refused.
    fn log_id(&self) -> &str;

    /// Up to `limit` events of the log after `after`, in log order, only of transactions
    /// older than every transaction still running, so nothing can later appear before them.
    /// Only the events of `part` and of `store`'s types ([`StoreKind::event_types`]) are
    /// decoded and returned; the others count in the page's end and size, their payloads
    /// never leave the log.
    fn read_for_store(
        &self,
        store: StoreKind,
        after: LogCursor,
        part: Partition,
        limit: usize,
    ) -> impl Future<Output = Result<StorePage, SourceError>> + Send;

    /// Returns when something was appended (NOTIFY) or after `timeout` (polling fallback).
    fn wait_for_append(&self, timeout: Duration) -> impl Future<Output = ()> + Send;

    /// Blob bytes by sha256.
    fn load_blobs(
        &self,
        sha256s: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Bytes>, SourceError>> + Send;

    /// The checkpoint kept in the log database for `sink`/`part`: `(log_id, cursor)`.
    fn load_checkpoint(
        &self,
        sink: &'static str,
        part: Partition,
    ) -> impl Future<Output = Result<Option<(String, LogCursor)>, SourceError>> + Send;

    /// The checkpoint of `sink`/`part` when a change of partition count seeded it and no
    /// runner has saved it since: where a sink that keeps its own checkpoint, and has none
    /// for this partition count, starts.
    fn load_seed(
        &self,
        sink: &'static str,
        part: Partition,
    ) -> impl Future<Output = Result<Option<(String, LogCursor)>, SourceError>> + Send;

    /// Moves the checkpoint of `sink`/`part` forward to `cursor` (never backwards). With a
    /// `fence` (the lease generation the runner was started under), only while that
    /// generation still owns the partition; returns false when it no longer does (nothing
    /// saved: another process owns the partition now).
    fn save_checkpoint(
        &self,
        sink: &'static str,
        part: Partition,
        cursor: LogCursor,
        fence: Option<i64>,
    ) -> impl Future<Output = Result<bool, SourceError>> + Send;

    /// Records that `store` holds these versions (a document named more than once holds
    /// the newest; a recorded version never goes down); returns the documents that thereby
    /// became consistent (all three stores at the document's current version).
    fn record_applied(
        &self,
        store: StoreKind,
        applied: &[AppliedVersion],
    ) -> impl Future<Output = Result<Vec<AppliedVersion>, SourceError>> + Send;

    /// Of `changes` (documents and the versions a batch would write), the documents the
    /// log has deleted since, at a greater version: writing their older state now would
    /// only bring back what the deletion removed (the deletion's own change follows in the
    /// log, or was applied already). One read, however many documents.
    fn deleted_since(
        &self,
        changes: &[(&DocId, Version)],
    ) -> impl Future<Output = Result<std::collections::HashSet<DocId>, SourceError>> + Send;

    /// Parks a change the store refused, durably, with the store's error.
    fn park(
        &self,
        sink: &'static str,
        change: &DocChange,
        error: &SinkError,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}
