//! docledger's pure domain: the document aggregate, its commands, events and refusals.
//!
//! Nothing here does I/O, reads a clock or draws random numbers: the same events applied in
//! the same order always give the same state, which is what makes the log replayable.

pub mod document;
pub mod envelope;

pub use document::{
    decide_retry, restore_point, BlobRef, CatalogueEntry, Chunk, CompensationOutcome,
    CompensationState, Document, DocumentCommand, DocumentContent, DocumentError, DocumentEvent,
    PutDocument, RemovalCause, RemovedEvent, Restore, RetryDecision, RetryFacts, StoreChange,
    StoreKind, MAX_CHUNK_TEXT_BYTES,
};
pub use envelope::{
    is_doc_id_byte, DocId, DocIdError, LogCursor, RecordedEvent, Version, MAX_DOC_ID_BYTES,
};
