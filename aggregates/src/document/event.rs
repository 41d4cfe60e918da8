//! The events of a document stream. Every event carries the full state its store needs at
//! its version (state transfer, never deltas), so applying one twice, or replaying the whole
//! log, converges to the same stores.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::envelope::Version;

/// Event type names as stored in the log; the single decode function matches on these.
pub const EVENT_TYPES: [&str; 5] = [
    BLOB_STORED,
    ROW_INSERTED,
    VECTORS_INDEXED,
    DOCUMENT_DELETED,
    COMPENSATION_REQUESTED,
];
const BLOB_STORED: &str = "BlobStored";
const ROW_INSERTED: &str = "RowInserted";
const VECTORS_INDEXED: &str = "VectorsIndexed";
const DOCUMENT_DELETED: &str = "DocumentDeleted";
const COMPENSATION_REQUESTED: &str = "CompensationRequested";

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
        }
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
