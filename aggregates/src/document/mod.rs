//! The document aggregate: one stream of events per `doc_id`.

mod catalogue;
mod command;
pub mod compensation;
mod error;
mod event;
pub mod retry;
mod state;
mod store_change;

pub use catalogue::CatalogueEntry;
pub use command::{DocumentCommand, PutDocument, MAX_CHUNK_TEXT_BYTES};
pub use compensation::{
    content_at, restore_point, CompensationOutcome, CompensationState, Restore,
    UnknownCompensationState,
};
pub use error::DocumentError;
pub use event::{
    BlobRef, Chunk, DocumentEvent, RemovalCause, RemovedEvent, CONTENT_EVENT_TYPES, EVENT_TYPES,
};
pub mod retention;
pub use retry::{decide_retry, RetryDecision, RetryFacts};
pub use state::{chunk_digest, Document, DocumentContent};
pub use store_change::{StoreChange, StoreKind};
