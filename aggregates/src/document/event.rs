//! The events of a document stream. Every event carries the full state its store needs at
//! its version (state transfer, never deltas), so applying one twice, or replaying the whole
//! log, converges to the same stores.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::envelope::Version;

/// Event type names as stored in the log; the single decode function matches on these.
pub const EVENT_TYPES: [&str; 7] = [
    BLOB_STORED,
    ROW_INSERTED,
    VECTORS_INDEXED,
    DOCUMENT_DELETED,
    COMPENSATION_REQUESTED,
    DOCUMENT_ERASED,
    CONTENT_REMOVED,
];
const BLOB_STORED: &str = "BlobStored";
const ROW_INSERTED: &str = "RowInserted";
const VECTORS_INDEXED: &str = "VectorsIndexed";
const DOCUMENT_DELETED: &str = "DocumentDeleted";
const COMPENSATION_REQUESTED: &str = "CompensationRequested";
const DOCUMENT_ERASED: &str = "DocumentErased";

/// The stored type names of the events that hold content ([`DocumentEvent::has_content`]):
/// what retention and erasure remove.
pub const CONTENT_EVENT_TYPES: [&str; 4] = [
    BLOB_STORED,
    ROW_INSERTED,
    VECTORS_INDEXED,
    COMPENSATION_REQUESTED,
];
const CONTENT_REMOVED: &str = "ContentRemoved";

/// Why an event's content was removed from the log.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RemovalCause {
    /// The retention policy: the version is older than every version the policy keeps.
    Retention,
    /// The document was erased (`DocumentErased`).
    Erasure,
}

impl RemovalCause {
    /// The cause's name in the log and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retention => "retention",
            Self::Erasure => "erasure",
        }
    }
}

/// Current payload version of every event type (bump with an upcaster when a shape changes).
pub const EVENT_PAYLOAD_VERSION: &str = "1";

/// A blob as the domain sees it: its identity, not its bytes (those live content-addressed
/// in the log database).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type given by the pipeline.
    pub content_type: String,
}

/// The metadata an event keeps once its content is removed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemovedEvent {
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its document version.
    pub version: Version,
    /// Its place in the document's stream.
    pub stream_version: i64,
    /// When it was recorded (RFC 3339, UTC).
    pub recorded_at: String,
    /// The blob's sha256 (`BlobStored`, `RowInserted` with a blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The blob's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The number of chunks (`RowInserted`, `VectorsIndexed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_count: Option<u32>,
    /// The refusing store (`CompensationRequested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// One chunk of a document with its embedding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// 0-based, in the order the chunks were sent.
    pub index: u32,
    /// The chunk's text.
    pub text: String,
    /// The embedding; always the configured dimension, finite values only.
    pub vector: Vec<f32>,
}

/// Everything that can happen to a document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum DocumentEvent {
    /// The blob of `version` (bytes stored in the same transaction, by sha256).
    BlobStored {
        /// Document version this belongs to.
        version: Version,
        /// Lowercase hex sha256.
        sha256: String,
        /// Size in bytes.
        size: u64,
        /// MIME type.
        content_type: String,
    },
    /// The catalogue row of `version`.
    RowInserted {
        /// Document version.
        version: Version,
        /// Title.
        title: String,
        /// Source type.
        source_type: String,
        /// Optional business tag.
        business_tag: Option<String>,
        /// Free-form attributes (a JSON object).
        attributes: serde_json::Map<String, serde_json::Value>,
        /// sha256 of the blob at this version, `None` when the version has no blob.
        blob_sha256: Option<String>,
        /// Blob size at this version, `None` without blob.
        blob_size: Option<u64>,
        /// Number of chunks at this version.
        chunk_count: u32,
    },
    /// The chunks and vectors of `version` (all of them; an empty list removes every chunk).
    VectorsIndexed {
        /// Document version.
        version: Version,
        /// Every chunk of the version.
        chunks: Vec<Chunk>,
    },
    /// The document is withdrawn from every store at `version`.
    DocumentDeleted {
        /// Document version of the deletion.
        version: Version,
    },
    /// The document is withdrawn from every store at `version` and every trace of its
    /// content before it is removed from the log in the same transaction (a legal erasure):
    /// a tombstone without content. Stores drop it as for a deletion and make the removal
    /// physical (Milvus flushes the deletion).
    DocumentErased {
        /// Document version of the erasure.
        version: Version,
    },
    /// What is left of a run of consecutive events whose content the log removed
    /// (retention or erasure): each one's type, versions, time and sizes, never its
    /// content. Never decided by the domain: the log writes it in place of the run's first
    /// event, or appends the run to the document's earlier one that ends right before it,
    /// and deletes the run's rows; it stands for every stream version its entries name.
    /// Carries no change for any store (a newer event of the same document always holds
    /// the state its stores need).
    ContentRemoved {
        /// The lowest document version among the removed events.
        version: Version,
        /// Why they were removed.
        cause: RemovalCause,
        /// The removed events, in stream order.
        removed: Vec<RemovedEvent>,
    },
    /// A projector could not apply `version` to `target` and the document must be made
    /// consistent again.
    CompensationRequested {
        /// The version the store refused.
        version: Version,
        /// The store that refused it (`mysql`, `milvus`, `s3`).
        target: String,
        /// The store's error.
        reason: String,
    },
}

impl DocumentEvent {
    /// The document version the event belongs to.
    pub fn version(&self) -> Version {
        match self {
            Self::BlobStored { version, .. }
            | Self::RowInserted { version, .. }
            | Self::VectorsIndexed { version, .. }
            | Self::DocumentDeleted { version }
            | Self::DocumentErased { version }
            | Self::ContentRemoved { version, .. }
            | Self::CompensationRequested { version, .. } => *version,
        }
    }

    /// The stored type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::BlobStored { .. } => BLOB_STORED,
            Self::RowInserted { .. } => ROW_INSERTED,
            Self::VectorsIndexed { .. } => VECTORS_INDEXED,
            Self::DocumentDeleted { .. } => DOCUMENT_DELETED,
            Self::CompensationRequested { .. } => COMPENSATION_REQUESTED,
            Self::DocumentErased { .. } => DOCUMENT_ERASED,
            Self::ContentRemoved { .. } => CONTENT_REMOVED,
        }
    }

    /// Whether the event carries content a retention pass or an erasure removes (titles,
    /// attributes, chunk texts, vectors, blob references, store errors).
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Self::BlobStored { .. }
                | Self::RowInserted { .. }
                | Self::VectorsIndexed { .. }
                | Self::CompensationRequested { .. }
        )
    }
}

impl DomainEvent for DocumentEvent {
    fn event_type(&self) -> String {
        self.type_name().to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_PAYLOAD_VERSION.to_owned()
    }
}
