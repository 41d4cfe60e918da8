//! The port every store adapter implements, and the batch it receives.
//!
//! A [`Batch`] is already coalesced: at most one [`DocChange`] per document, the newest one
//! the batch saw, because events carry full state and only the newest state matters.

use std::collections::HashMap;
use std::future::Future;

use aggregates::{DocId, DocumentEvent, LogCursor, RecordedEvent, StoreChange, StoreKind, Version};
use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::SinkError;
use crate::source::AppliedVersion;

/// The stable 31-bit hash of a document id that the log stores with every event and that
/// partitions are cut from. Never change it: stored rows and checkpoints depend on it.
pub fn stream_hash(doc_id: &str) -> i32 {
    // Top 31 bits: non-negative, so PostgreSQL's `%` gives the same partition as Rust's.
    (xxh3_64(doc_id.as_bytes()) >> 33) as i32
}

/// One slice of a store's work: the documents whose `stream_hash % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Partition {
    /// This partition, `0..count`.
    pub index: u32,
    /// How many partitions the store is cut into.
    pub count: u32,
}

impl Partition {
    /// The whole log as one partition.
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    /// Every partition of a store cut into `count`.
    pub fn all(count: u32) -> impl Iterator<Item = Partition> {
        (0..count.max(1)).map(move |index| Partition {
            index,
            count: count.max(1),
        })
    }

    /// Whether `doc_id` belongs to this partition.
    pub fn contains(&self, doc_id: &str) -> bool {
        self.count <= 1 || (stream_hash(doc_id) as u32) % self.count == self.index
    }
}

/// What a store must do for one document.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Hold exactly the state this event carries.
    Upsert(DocumentEvent),
    /// Hold nothing for the document: the log deleted it (a store that keeps tombstones
    /// keeps this one).
    Remove,
    /// Hold nothing for the document and keep nothing recoverable of it: the log erased it
    /// (as [`Change::Remove`], and a store that can hold deleted data until a later
    /// compaction, Milvus, makes the removal durable before the change counts as applied).
    Erase,
    /// Hold nothing for the document at or below the version, leaving no tombstone: a
    /// repair clearing data the store should not hold (tampered, or of a version the log
    /// never reached) before it applies the log's state again.
    Purge,
}

/// The newest change of one document within a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct DocChange {
    /// The document.
    pub doc_id: DocId,
    /// The version the store holds once applied.
    pub version: Version,
    /// The log position of the event that carries it.
    pub cursor: LogCursor,
    /// The change.
    pub change: Change,
}

/// A coalesced slice of the log for one store and partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Position after which the next batch starts; the checkpoint to persist with it.
    pub end: LogCursor,
    /// Events read (before coalescing).
    pub num_events: usize,
    /// At most one change per document, in log order of their newest event.
    pub changes: Vec<DocChange>,
    /// Blob bytes by sha256, loaded for sinks that need them.
    pub blobs: HashMap<String, Bytes>,
    /// The batch was read in log order from the store's checkpoint ([`Batch::coalesce`]):
    /// a document's first version (1) finds nothing of the document in the store but what
    /// an earlier attempt at this very change wrote, so a sink may write it without first
    /// reading what the store holds ([`Batch::is_first_write`]). A projector re-reads a
    /// first version only after a crash before its checkpoint; anything written meanwhile
    /// by a repair is older or newer state that the log's later events put right. False
    /// for single changes built elsewhere (repairs, tests), which read first.
    pub fresh_first_versions: bool,
    /// The fencing token (lease generation) of the runner that applies the batch: a sink
    /// that can check it atomically with its write refuses the batch with
    /// [`crate::ErrorClass::Fenced`] once a newer owner of the partition wrote. `None` for
    /// writes outside a leased runner (rebuilds, repairs, tests).
    pub fence: Option<i64>,
}

impl Batch {
    /// Coalesces `events` (in log order) into the newest change per document for `store`.
    /// `end` is the cursor of the last event read, relevant to the store or not.
    pub fn coalesce(
        store: StoreKind,
        end: LogCursor,
        events: &[RecordedEvent<DocumentEvent>],
    ) -> Batch {
        let newest = newest_per_document(store, events);
        let changes = events
            .iter()
            .zip(newest)
            .filter(|(_, newest)| *newest)
            .filter_map(|(recorded, _)| {
                doc_change(
                    recorded.doc_id.clone(),
                    recorded.cursor,
                    store,
                    recorded.event.clone(),
                )
            })
            .collect();
        Batch::of_changes(end, events.len(), changes)
    }

    /// [`Batch::coalesce`] of events the caller no longer needs: the newest events are moved
    /// into the batch instead of copied (a page of vectors or rows is not copied twice).
    pub fn coalesce_owned(
        store: StoreKind,
        end: LogCursor,
        events: Vec<RecordedEvent<DocumentEvent>>,
    ) -> Batch {
        let newest = newest_per_document(store, &events);
        let num_events = events.len();
        let changes = events
            .into_iter()
            .zip(newest)
            .filter(|(_, newest)| *newest)
            .filter_map(|(recorded, _)| {
                doc_change(recorded.doc_id, recorded.cursor, store, recorded.event)
            })
            .collect();
        Batch::of_changes(end, num_events, changes)
    }

    fn of_changes(end: LogCursor, num_events: usize, changes: Vec<DocChange>) -> Batch {
        Batch {
            end,
            num_events,
            changes,
            blobs: HashMap::new(),
            fresh_first_versions: true,
            fence: None,
        }
    }

    /// The sha256 of every blob the batch writes.
    pub fn blob_shas(&self) -> Vec<String> {
        let mut shas: Vec<String> = self
            .changes
            .iter()
            .filter_map(|c| match &c.change {
                Change::Upsert(DocumentEvent::BlobStored { sha256, .. }) => Some(sha256.clone()),
                _ => None,
            })
            .collect();
        shas.sort();
        shas.dedup();
        shas
    }

    /// A batch of one change, ending at `end`.
    pub fn single(change: DocChange, end: LogCursor, blobs: &HashMap<String, Bytes>) -> Batch {
        let blobs = match &change.change {
            Change::Upsert(DocumentEvent::BlobStored { sha256, .. }) => blobs
                .get(sha256)
                .map(|b| HashMap::from([(sha256.clone(), b.clone())]))
                .unwrap_or_default(),
            _ => HashMap::new(),
        };
        Batch {
            end,
            num_events: 1,
            changes: vec![change],
            blobs,
            fresh_first_versions: false,
            fence: None,
        }
    }

    /// The puts of the batch (document and version), which a deletion logged since at a
    /// greater version supersedes (see [`Batch::drop_puts_of`]).
    pub fn puts(&self) -> Vec<(&DocId, Version)> {
        self.changes
            .iter()
            .filter(|c| matches!(c.change, Change::Upsert(_)))
            .map(|c| (&c.doc_id, c.version))
            .collect()
    }

    /// Deletes win: drops the puts of `deleted` (documents the log has deleted since at a
    /// greater version than the batch's put). Their older state must not reach a store: the
    /// deletion's own change follows in the log, or was applied already. Returns how many
    /// were dropped.
    pub fn drop_puts_of(&mut self, deleted: &std::collections::HashSet<DocId>) -> usize {
        let before = self.changes.len();
        self.changes
            .retain(|c| !(matches!(c.change, Change::Upsert(_)) && deleted.contains(&c.doc_id)));
        before - self.changes.len()
    }

    /// Whether `change` is the first write of its document to a store that reads this batch
    /// in log order (see [`Batch::fresh_first_versions`]): the sink need not read the store.
    pub fn is_first_write(&self, change: &DocChange) -> bool {
        self.fresh_first_versions
            && change.version == 1
            && matches!(change.change, Change::Upsert(_))
    }
}

/// For each event, whether it is the newest event of its document that carries a change for
/// `store` (the one a coalesced batch keeps).
fn newest_per_document(store: StoreKind, events: &[RecordedEvent<DocumentEvent>]) -> Vec<bool> {
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut newest = vec![false; events.len()];
    for (i, recorded) in events.iter().enumerate().rev() {
        if recorded.event.change_for(store).is_some() && seen.insert(recorded.doc_id.as_str()) {
            newest[i] = true;
        }
    }
    newest
}

/// The change `event` carries for `store`, taking the event.
fn doc_change(
    doc_id: DocId,
    cursor: LogCursor,
    store: StoreKind,
    event: DocumentEvent,
) -> Option<DocChange> {
    let (version, kind) = match event.change_for(store)? {
        change @ StoreChange::Upsert(_) => (change.version(), None),
        change @ StoreChange::Remove(_) => (change.version(), Some(Change::Remove)),
        change @ StoreChange::Erase(_) => (change.version(), Some(Change::Erase)),
    };
    Some(DocChange {
        doc_id,
        version,
        cursor,
        change: kind.unwrap_or(Change::Upsert(event)),
    })
}

/// What a sink reports after applying a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// Number of changes written to the store.
    pub num_changes: usize,
}

/// A derived store. Implementations write; they never loop, sleep or retry (the runner does).
pub trait Sink: Send + Sync + 'static {
    /// `mysql` | `milvus` | `s3`: checkpoint key and metric label.
    const NAME: &'static str;
    /// The store this sink projects.
    const STORE: StoreKind;
    /// The sink persists its checkpoint itself, atomically with the data (exactly once).
    /// Otherwise the runner saves it in the log database after `apply` (at least once).
    const KEEPS_OWN_CHECKPOINT: bool;
    /// The runner loads blob bytes into [`Batch::blobs`] before `apply`.
    const NEEDS_BLOBS: bool = false;
    /// The sink keeps each deleted document's deletion version and never lets an older put
    /// bring it back, atomically with its writes. Otherwise the runner drops, before
    /// `apply`, the puts the log has since deleted (see `LogSource::deleted_since`).
    const KEEPS_TOMBSTONES: bool = false;
    /// The sink checks [`Batch::fence`] atomically with its write and refuses a batch of an
    /// older fencing token than one it already took ([`crate::ErrorClass::Fenced`]).
    const CHECKS_FENCE: bool = false;
    /// The store records each document's readiness (whether every store holds its version)
    /// with its data: the readiness tracker, a rebuild and a repair mark documents ready
    /// through [`Sink::mark_ready`].
    const KEEPS_READINESS: bool = false;

    /// Creates what the store needs (database, table, collection, bucket) when missing.
    fn prepare(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The checkpoint the sink keeps for `part` (only when `KEEPS_OWN_CHECKPOINT`):
    /// `(log_id, cursor)`.
    fn checkpoint(
        &self,
        part: Partition,
    ) -> impl Future<Output = Result<Option<(String, LogCursor)>, SinkError>> + Send;

    /// Applies a coalesced batch and, when `KEEPS_OWN_CHECKPOINT`, persists `batch.end` for
    /// `part` with it. Idempotent: re-applying any suffix of the log changes nothing. An
    /// empty batch only moves the checkpoint.
    fn apply(
        &self,
        log_id: &str,
        part: Partition,
        batch: &Batch,
    ) -> impl Future<Output = Result<Applied, SinkError>> + Send;

    /// Marks `docs` ready where the store holds exactly these versions (only when
    /// [`Sink::KEEPS_READINESS`]; a version since replaced stays as it is).
    fn mark_ready(
        &self,
        docs: &[AppliedVersion],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = docs;
        async { Ok(()) }
    }
}

/// A shared sink is a sink: one store client serves every partition's runner.
impl<S: Sink> Sink for std::sync::Arc<S> {
    const NAME: &'static str = S::NAME;
    const STORE: StoreKind = S::STORE;
    const KEEPS_OWN_CHECKPOINT: bool = S::KEEPS_OWN_CHECKPOINT;
    const NEEDS_BLOBS: bool = S::NEEDS_BLOBS;
    const KEEPS_TOMBSTONES: bool = S::KEEPS_TOMBSTONES;
    const CHECKS_FENCE: bool = S::CHECKS_FENCE;
    const KEEPS_READINESS: bool = S::KEEPS_READINESS;

    fn prepare(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        S::prepare(self)
    }

    fn checkpoint(
        &self,
        part: Partition,
    ) -> impl Future<Output = Result<Option<(String, LogCursor)>, SinkError>> + Send {
        S::checkpoint(self, part)
    }

    fn apply(
        &self,
        log_id: &str,
        part: Partition,
        batch: &Batch,
    ) -> impl Future<Output = Result<Applied, SinkError>> + Send {
        S::apply(self, log_id, part, batch)
    }

    fn mark_ready(
        &self,
        docs: &[AppliedVersion],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        S::mark_ready(self, docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pos: i64, doc: &str, event: DocumentEvent) -> RecordedEvent<DocumentEvent> {
        RecordedEvent {
            cursor: LogCursor {
                epoch: 1,
                xid: 10,
                position: pos,
            },
            doc_id: DocId::parse(doc).expect("valid id"),
            stream_version: pos,
            recorded_at_ms: 0,
            event,
        }
    }

    fn vectors(version: Version, n: u32) -> DocumentEvent {
        DocumentEvent::VectorsIndexed {
            version,
            chunks: (0..n)
                .map(|index| aggregates::Chunk {
                    index,
                    text: format!("t{index}"),
                    vector: vec![0.5; 4],
                })
                .collect(),
        }
    }

    #[test]
    fn coalesce_keeps_the_newest_change_per_document_in_log_order() {
        let events = vec![
            rec(1, "a", vectors(1, 2)),
            rec(2, "b", vectors(1, 1)),
            rec(3, "a", vectors(2, 3)),
            rec(4, "b", DocumentEvent::DocumentDeleted { version: 2 }),
            rec(
                5,
                "c",
                DocumentEvent::CompensationRequested {
                    version: 1,
                    target: "s3".into(),
                    reason: "x".into(),
                },
            ),
        ];
        let end = events[4].cursor;
        let batch = Batch::coalesce(StoreKind::Milvus, end, &events);
        assert_eq!(batch.end, end);
        assert_eq!(batch.num_events, 5);
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(batch.changes[0].doc_id.as_str(), "a");
        assert_eq!(batch.changes[0].version, 2);
        assert_eq!(batch.changes[0].change, Change::Upsert(vectors(2, 3)));
        assert_eq!(batch.changes[1].doc_id.as_str(), "b");
        assert_eq!(batch.changes[1].change, Change::Remove);
        assert!(batch.fresh_first_versions, "read in log order");

        for store in StoreKind::ALL {
            assert_eq!(
                Batch::coalesce_owned(store, end, events.clone()),
                Batch::coalesce(store, end, &events),
                "{store:?}: moving the events gives the same batch as copying them"
            );
        }
    }

    #[test]
    fn partitions_cover_every_document_exactly_once() {
        for doc in ["a", "b", "Report-1", "report-1", "x/y:z"] {
            let owners = Partition::all(4).filter(|p| p.contains(doc)).count();
            assert_eq!(owners, 1, "{doc}");
            assert!(stream_hash(doc) >= 0);
        }
    }
}
