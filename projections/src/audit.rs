//! The port through which verification audits a store, beside [`Sink`] (which it repairs
//! with): what the store must hold for a document (a compact digest of the log's newest
//! change of the store), a bulk scan of the store against those digests, a precise
//! comparison of one document's data with the log, and the store's own parts of a repair.
//!
//! Each store implements [`Audit`] in its folder (`mysql/audit.rs`, `milvus/audit.rs`,
//! `s3/audit.rs`); the verifier in the `docledger` crate drives the three through the
//! object-safe [`AuditedStore`], like the runner drives sinks, and names no store.
//! Verification only reads: every write here is a repair, through [`Sink::apply`] and its
//! version guards.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Bound;

use aggregates::{DocumentEvent, LogCursor, RecordedEvent, StoreChange, StoreKind, Version};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::error::SinkError;
use crate::sink::{Batch, Change, DocChange, Partition, Sink};
use crate::source::{AppliedVersion, LogSource, SourceError};

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The log says the store holds the document; it holds nothing.
    Missing,
    /// The store holds data of a document that does not exist, is deleted, or has no such
    /// data at its current version (an orphan).
    Extra,
    /// The store holds another version than the log's.
    StaleVersion,
    /// Right version, wrong content (fields, chunks, vectors, bytes).
    ContentMismatch,
    /// Something in the store that no document can own (a key outside `docs/`, an invalid
    /// document id).
    Stray,
}

impl FindingKind {
    /// The kind's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Missing => "missing",
            FindingKind::Extra => "extra",
            FindingKind::StaleVersion => "stale_version",
            FindingKind::ContentMismatch => "content_mismatch",
            FindingKind::Stray => "stray",
        }
    }
}

/// One difference between a store and the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// `mysql` | `milvus` | `s3`.
    pub store: &'static str,
    /// The document (for a stray: the raw key or id found).
    pub doc_id: String,
    /// What is wrong.
    pub kind: FindingKind,
    /// The version the log implies (None: the log has nothing for the document).
    pub expected_version: Option<Version>,
    /// The newest version the store holds (None: nothing, or not recorded).
    pub found_version: Option<Version>,
    /// Precisely what differs, one item per field, chunk or property.
    pub differences: Vec<String>,
    /// The store's projector has not yet reached the document's newest event: the
    /// difference may resolve by itself.
    pub in_flight: bool,
}

impl Finding {
    /// A finding of `kind` about `doc_id` in `store`, without versions or differences.
    pub fn new(store: StoreKind, doc_id: &str, kind: FindingKind) -> Finding {
        Finding {
            store: store.name(),
            doc_id: doc_id.to_owned(),
            kind,
            expected_version: None,
            found_version: None,
            differences: Vec::new(),
            in_flight: false,
        }
    }

    /// A stray: data no document can own.
    pub fn stray(store: StoreKind, key: &str, why: &str) -> Finding {
        Finding {
            differences: vec![why.to_owned()],
            ..Finding::new(store, key, FindingKind::Stray)
        }
    }

    /// The finding with the log's and the store's versions.
    pub fn versions(mut self, expected: Option<Version>, found: Option<Version>) -> Finding {
        self.expected_version = expected;
        self.found_version = found;
        self
    }
}

/// What the log's newest change for a store asks for: the upserted event, or None (hold
/// nothing), and its version (None when the log never asked that store for anything).
pub fn wanted(change: Option<&DocChange>) -> (Option<&DocumentEvent>, Option<Version>) {
    match change {
        None => (None, None),
        Some(c) => match &c.change {
            Change::Upsert(e) => (Some(e), Some(c.version)),
            Change::Remove | Change::Erase | Change::Purge => (None, Some(c.version)),
        },
    }
}

/// What one store must hold for one document, as a digest small enough to keep for every
/// document of the log during a bulk scan ([`Audit::expect`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ExpectedState {
    /// Nothing (deleted, never had this store's data, or a version without blob).
    Absent,
    /// A catalogue row whose compared fields hash to this digest.
    Row([u8; 32]),
    /// Chunk rows: their indexes, the aggregate's `chunk_digest`, and their rough size.
    Chunks {
        /// Chunk indexes, in the order sent.
        indexes: Vec<u32>,
        /// `chunk_digest` of the chunks.
        digest: String,
        /// Rough bytes of texts and vectors, to size content reads.
        approx_bytes: usize,
    },
    /// An object with these bytes.
    Blob {
        /// Lowercase hex sha256.
        sha256: String,
        /// Size in bytes.
        size: u64,
    },
}

/// One store's expectation: the version and log place of the event that sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    /// The version the store must hold (or must have removed).
    pub version: Version,
    /// Where the event that sets it sits in the log.
    pub cursor: LogCursor,
    /// What the store must hold.
    pub state: ExpectedState,
}

/// Index of `store` in [`StoreKind::ALL`].
pub fn store_index(store: StoreKind) -> usize {
    StoreKind::ALL
        .iter()
        .position(|s| *s == store)
        .expect("StoreKind::ALL holds every store")
}

/// Every store's expectation for one document (`None`: the log never asked that store for
/// anything, which means it must hold nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpectedDoc {
    /// Indexed like [`StoreKind::ALL`].
    pub stores: [Option<Expectation>; StoreKind::ALL.len()],
}

impl ExpectedDoc {
    /// Folds the next event of the document (in log order) into `store`'s expectation;
    /// `expect` gives the state a change of that store asks for ([`Audit::expect`]).
    pub fn apply(
        &mut self,
        store: StoreKind,
        recorded: &RecordedEvent<DocumentEvent>,
        expect: impl FnOnce(&StoreChange<'_>) -> ExpectedState,
    ) {
        if let Some(change) = recorded.event.change_for(store) {
            self.stores[store_index(store)] = Some(Expectation {
                version: change.version(),
                cursor: recorded.cursor,
                state: expect(&change),
            });
        }
    }

    /// The expectation of `store`.
    pub fn of(&self, store: StoreKind) -> Option<&Expectation> {
        self.stores[store_index(store)].as_ref()
    }

    /// What `store` must hold (Absent when the log never asked it for anything).
    pub fn state(&self, store: StoreKind) -> &ExpectedState {
        self.of(store).map_or(&ExpectedState::Absent, |e| &e.state)
    }
}

/// One store's expectations for every document of the log, in `doc_id` order: what a
/// bulk scan compares the store with.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    docs: &'a BTreeMap<String, ExpectedDoc>,
    store: StoreKind,
}

impl<'a> Expected<'a> {
    /// `store`'s view of `docs`.
    pub fn new(docs: &'a BTreeMap<String, ExpectedDoc>, store: StoreKind) -> Expected<'a> {
        Expected { docs, store }
    }

    /// The document and the store's expectation, when the log asked the store for anything
    /// about `doc_id` (the id is the log's, borrowed for as long as the expectations).
    pub fn get(&self, doc_id: &str) -> Option<(&'a str, &'a Expectation)> {
        let (id, doc) = self.docs.get_key_value(doc_id)?;
        doc.of(self.store).map(|e| (id.as_str(), e))
    }

    /// Every document the log asked the store for anything about, with its expectation.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Expectation)> + 'a {
        let store = self.store;
        self.docs
            .iter()
            .filter_map(move |(id, doc)| doc.of(store).map(|e| (id.as_str(), e)))
    }

    /// [`Expected::iter`] of the documents whose id lies in `[from, to)` (`None` =
    /// unbounded).
    pub fn range(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a Expectation)> + 'a {
        let store = self.store;
        let lower = from.map_or(Bound::Unbounded, Bound::Included);
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        self.docs
            .range::<str, _>((lower, upper))
            .filter_map(move |(id, doc)| doc.of(store).map(|e| (id.as_str(), e)))
    }
}

/// What a bulk scan of one store found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// Rows, chunk rows or objects read.
    pub num_items: u64,
    /// Documents to check precisely in this store ([`AuditedStore::check`]).
    pub suspects: BTreeSet<String>,
    /// Data no document can own (final: nothing to check precisely).
    pub strays: Vec<Finding>,
}

impl ScanOutcome {
    /// Nominates `doc_id` for a precise check.
    pub fn suspect(&mut self, doc_id: &str) {
        if !self.suspects.contains(doc_id) {
            self.suspects.insert(doc_id.to_owned());
        }
    }
}

/// Told each phase's name and how many items it has done so far.
pub type Progress<'a> = dyn Fn(&str, u64) + Sync + 'a;

/// A store's audit, beside its [`Sink`]: pure comparisons plus the reads they need.
/// Implementations only read, except [`Audit::delete_stray`] (a repair); they never loop
/// over other stores, sleep or retry. A store that keeps readiness
/// ([`Sink::KEEPS_READINESS`]) writes a repaired row not ready, and the repair marks it
/// again through [`Sink::mark_ready`] when the tracker had recorded it.
pub trait Audit: Sink {
    /// What the store holds for one document, as [`Audit::read`] reads it.
    type Found: Send;

    /// What the store must hold for `doc_id` when `change` is the log's newest change of
    /// the store for it. Pure and cheap: called for every event of a full scan.
    fn expect(doc_id: &str, change: &StoreChange<'_>) -> ExpectedState;

    /// Reads the whole store in pages and compares it with `expected` (each document's
    /// digest): nominates the documents that look wrong, and reports as strays the data no
    /// document can own. `progress` is told the phase (the store's name) and items read.
    fn scan(
        &self,
        expected: Expected<'_>,
        progress: &Progress<'_>,
    ) -> impl Future<Output = Result<ScanOutcome, SinkError>> + Send;

    /// Reads what the store holds for `doc_id`.
    fn read(&self, doc_id: &str) -> impl Future<Output = Result<Self::Found, SinkError>> + Send;

    /// Compares what the store holds for `doc_id` with the log's newest change of the store
    /// for it (`None`: the log never asked the store for anything): the finding that names
    /// exactly what differs, `None` when nothing does.
    fn compare(doc_id: &str, change: Option<&DocChange>, found: &Self::Found) -> Option<Finding>;

    /// The version of a [`Change::Purge`] that makes the store's guard delete data it holds
    /// at `found`.
    fn removal_version(found: Version) -> Version;

    /// Deletes a stray ([`FindingKind::Stray`]) by the key the finding names.
    fn delete_stray(&self, key: &str) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why an audit step failed: the store, or the log it reads beside the store.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] SinkError),
    /// The log could not be read.
    #[error("{operation}: {source}")]
    Log {
        /// What was being done.
        operation: &'static str,
        /// The log's failure.
        #[source]
        source: SourceError,
    },
}

fn log_error(operation: &'static str) -> impl FnOnce(SourceError) -> AuditError {
    move |source| AuditError::Log { operation, source }
}

/// A store behind both its ports ([`Sink`] and [`Audit`]), object safe, so that the verifier
/// holds every store in one list and runs the same steps on each. Implemented for every
/// `Sink + Audit`; `L` is the log whose checkpoints and blobs the steps read.
pub trait AuditedStore<L: LogSource>: Send + Sync {
    /// The store.
    fn store(&self) -> StoreKind;

    /// [`Audit::expect`].
    fn expect(&self, doc_id: &str, change: &StoreChange<'_>) -> ExpectedState;

    /// [`Audit::scan`].
    fn scan<'a>(
        &'a self,
        expected: Expected<'a>,
        progress: &'a Progress<'a>,
    ) -> BoxFuture<'a, Result<ScanOutcome, SinkError>>;

    /// [`Audit::read`], then [`Audit::compare`].
    fn check<'a>(
        &'a self,
        doc_id: &'a str,
        change: Option<&'a DocChange>,
    ) -> BoxFuture<'a, Result<Option<Finding>, SinkError>>;

    /// How far the store's projector of `part` has applied `log` (its checkpoint, kept by
    /// the store or in the log; the start when it has none of this log).
    fn applied<'a>(
        &'a self,
        log: &'a L,
        part: Partition,
    ) -> BoxFuture<'a, Result<LogCursor, AuditError>>;

    /// Applies one change of `part` with the store's sink, as its projector would (a put the
    /// log has deleted since is dropped, blob bytes are loaded), leaving its checkpoint
    /// where it is.
    fn apply_one<'a>(
        &'a self,
        log: &'a L,
        part: Partition,
        change: DocChange,
    ) -> BoxFuture<'a, Result<(), AuditError>>;

    /// [`Audit::removal_version`].
    fn removal_version(&self, found: Version) -> Version;

    /// [`Audit::KEEPS_READINESS`].
    fn keeps_readiness(&self) -> bool;

    /// [`Audit::mark_ready`] of one document.
    fn mark_ready(&self, doc: AppliedVersion) -> BoxFuture<'_, Result<(), SinkError>>;

    /// [`Audit::delete_stray`].
    fn delete_stray<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), SinkError>>;
}

impl<L: LogSource, S: Sink + Audit> AuditedStore<L> for S {
    fn store(&self) -> StoreKind {
        S::STORE
    }

    fn expect(&self, doc_id: &str, change: &StoreChange<'_>) -> ExpectedState {
        S::expect(doc_id, change)
    }

    fn scan<'a>(
        &'a self,
        expected: Expected<'a>,
        progress: &'a Progress<'a>,
    ) -> BoxFuture<'a, Result<ScanOutcome, SinkError>> {
        Box::pin(Audit::scan(self, expected, progress))
    }

    fn check<'a>(
        &'a self,
        doc_id: &'a str,
        change: Option<&'a DocChange>,
    ) -> BoxFuture<'a, Result<Option<Finding>, SinkError>> {
        Box::pin(async move {
            let found = self.read(doc_id).await?;
            Ok(S::compare(doc_id, change, &found))
        })
    }

    fn applied<'a>(
        &'a self,
        log: &'a L,
        part: Partition,
    ) -> BoxFuture<'a, Result<LogCursor, AuditError>> {
        Box::pin(async move {
            let stored = if S::KEEPS_OWN_CHECKPOINT {
                Sink::checkpoint(self, part).await?
            } else {
                log.load_checkpoint(S::NAME, part)
                    .await
                    .map_err(log_error("load checkpoint"))?
            };
            Ok(stored
                .filter(|(log_id, _)| log_id == log.log_id())
                .map_or(LogCursor::START, |(_, c)| c))
        })
    }

    fn apply_one<'a>(
        &'a self,
        log: &'a L,
        part: Partition,
        change: DocChange,
    ) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            // `end` = START: the sinks only move a checkpoint forward, so this one never
            // moves it.
            let mut batch = Batch::single(change, LogCursor::START, &Default::default());
            // Deletes win here too: a put the log has deleted since is not written (a
            // store that keeps tombstones sees to it itself).
            if !S::KEEPS_TOMBSTONES {
                let deleted = log
                    .deleted_since(&batch.puts())
                    .await
                    .map_err(log_error("check deletions"))?;
                batch.drop_puts_of(&deleted);
            }
            if S::NEEDS_BLOBS {
                let shas = batch.blob_shas();
                if !shas.is_empty() {
                    batch.blobs = log
                        .load_blobs(&shas)
                        .await
                        .map_err(log_error("load blobs"))?;
                }
            }
            Sink::apply(self, log.log_id(), part, &batch).await?;
            Ok(())
        })
    }

    fn removal_version(&self, found: Version) -> Version {
        S::removal_version(found)
    }

    fn keeps_readiness(&self) -> bool {
        S::KEEPS_READINESS
    }

    fn mark_ready(&self, doc: AppliedVersion) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { Sink::mark_ready(self, &[doc]).await })
    }

    fn delete_stray<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(Audit::delete_stray(self, key))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use aggregates::DocId;

    use super::*;
    use crate::mysql::MysqlSink;
    use crate::{MilvusSink, S3Sink};

    fn rec(position: i64, event: DocumentEvent) -> RecordedEvent<DocumentEvent> {
        RecordedEvent {
            cursor: LogCursor {
                epoch: 1,
                xid: 1,
                position,
            },
            doc_id: DocId::parse("a").expect("valid"),
            stream_version: position,
            recorded_at_ms: 0,
            event,
        }
    }

    /// A `RowInserted` of `version` titled `title`, with a 3-byte blob `blob` if given.
    pub(crate) fn row(version: Version, title: &str, blob: Option<&str>) -> DocumentEvent {
        DocumentEvent::RowInserted {
            version,
            title: title.into(),
            source_type: "pdf".into(),
            business_tag: None,
            attributes: serde_json::Map::new(),
            blob_sha256: blob.map(str::to_owned),
            blob_size: blob.map(|_| 3),
            chunk_count: 0,
        }
    }

    /// Folds `recorded` into every store's expectation through the stores' own ports.
    fn apply(doc: &mut ExpectedDoc, recorded: &RecordedEvent<DocumentEvent>) {
        let id = recorded.doc_id.as_str();
        doc.apply(StoreKind::Mysql, recorded, |c| {
            <MysqlSink as Audit>::expect(id, c)
        });
        doc.apply(StoreKind::Milvus, recorded, |c| {
            <MilvusSink as Audit>::expect(id, c)
        });
        doc.apply(StoreKind::S3, recorded, |c| {
            <S3Sink as Audit>::expect(id, c)
        });
    }

    #[test]
    fn the_newest_change_per_store_wins_and_a_blobless_version_removes_the_object() {
        let mut doc = ExpectedDoc::default();
        apply(
            &mut doc,
            &rec(
                1,
                DocumentEvent::BlobStored {
                    version: 1,
                    sha256: "ab".into(),
                    size: 3,
                    content_type: "text/plain".into(),
                },
            ),
        );
        apply(&mut doc, &rec(2, row(1, "one", Some("ab"))));
        assert!(matches!(
            doc.state(StoreKind::S3),
            ExpectedState::Blob { .. }
        ));
        apply(&mut doc, &rec(3, row(2, "two", None)));
        assert_eq!(doc.state(StoreKind::S3), &ExpectedState::Absent);
        assert_eq!(doc.of(StoreKind::S3).map(|e| e.version), Some(2));
        assert_eq!(doc.state(StoreKind::Milvus), &ExpectedState::Absent);
        assert!(doc.of(StoreKind::Milvus).is_none());
        let two = row(2, "two", None);
        assert_eq!(
            doc.state(StoreKind::Mysql),
            &<MysqlSink as Audit>::expect("a", &StoreChange::Upsert(&two))
        );
        assert!(matches!(doc.state(StoreKind::Mysql), ExpectedState::Row(_)));
        apply(
            &mut doc,
            &rec(4, DocumentEvent::DocumentDeleted { version: 3 }),
        );
        for store in StoreKind::ALL {
            assert_eq!(doc.state(store), &ExpectedState::Absent);
            assert_eq!(doc.of(store).map(|e| e.version), Some(3));
        }
    }

    #[test]
    fn a_store_sees_only_its_own_expectations_in_doc_id_order() {
        let mut docs = BTreeMap::new();
        for (i, id) in ["c", "a", "b"].into_iter().enumerate() {
            let mut doc = ExpectedDoc::default();
            if id != "b" {
                doc.stores[store_index(StoreKind::S3)] = Some(Expectation {
                    version: i as Version,
                    cursor: LogCursor::START,
                    state: ExpectedState::Absent,
                });
            }
            docs.insert(id.to_owned(), doc);
        }
        let s3 = Expected::new(&docs, StoreKind::S3);
        let ids: Vec<&str> = s3.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a", "c"]);
        let ids: Vec<&str> = s3.range(Some("b"), None).map(|(id, _)| id).collect();
        assert_eq!(ids, ["c"]);
        let ids: Vec<&str> = s3.range(None, Some("c")).map(|(id, _)| id).collect();
        assert_eq!(ids, ["a"]);
        assert!(s3.get("b").is_none(), "the log never asked s3 about b");
        assert_eq!(s3.get("c").map(|(_, e)| e.version), Some(0));
        assert!(Expected::new(&docs, StoreKind::Mysql).get("a").is_none());
    }
}
