//! Commands a document accepts. They arrive already parsed (the API checks syntax and the
//! configured vector dimension); the aggregate checks the domain rules and decides.

use crate::document::compensation::Restore;
use crate::document::event::{BlobRef, Chunk};
use crate::envelope::Version;

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 1024;
/// Longest source type, in characters.
pub const MAX_SOURCE_TYPE_CHARS: usize = 64;
/// Longest business tag, in characters (the MySQL column's width).
pub const MAX_BUSINESS_TAG_CHARS: usize = 255;
/// Longest chunk text, in UTF-8 bytes: the vector store's text field holds no more (Milvus'
/// VARCHAR `max_length`), so a longer one is refused here rather than parked later.
pub const MAX_CHUNK_TEXT_BYTES: usize = 65_535;

/// Create or replace a document.
#[derive(Clone, Debug, PartialEq)]
pub struct PutDocument {
    /// Required, at most [`MAX_TITLE_CHARS`] characters.
    pub title: String,
    /// Required, at most [`MAX_SOURCE_TYPE_CHARS`] characters.
    pub source_type: String,
    /// Optional tag.
    pub business_tag: Option<String>,
    /// Free-form attributes.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The blob's identity (its bytes travel beside the command to the log).
    pub blob: Option<BlobRef>,
    /// Chunks, indexed 0.. in order.
    pub chunks: Vec<Chunk>,
    /// Refuse unless the document is at this version.
    pub expected_version: Option<Version>,
}

/// Everything a document can be asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum DocumentCommand {
    /// Create or replace.
    Put(PutDocument),
    /// Withdraw from every store.
    Delete {
        /// Refuse unless the document is at this version.
        expected_version: Option<Version>,
    },
    /// Withdraw from every store and remove every trace of the document's content from the
    /// log at once (no retention): a tombstone without content stays.
    Erase {
        /// Refuse unless the document is at this version.
        expected_version: Option<Version>,
    },
    /// A store permanently refused `version`: make every store hold the same version again
    /// (see [`crate::document::compensation`]).
    RequestCompensation {
        /// The refused version.
        version: Version,
        /// The refusing store.
        target: String,
        /// The store's error.
        reason: String,
        /// What to restore when `version` is the current one ([`crate::restore_point`]).
        restore: Restore,
    },
    /// Re-apply the current version to every store by re-emitting its full state (or its
    /// deletion) as a new version (`POST /v1/documents/{doc_id}/retry`).
    Redrive {
        /// The version the caller read `content` at; refused when the document moved since.
        current_version: Version,
        /// The full state of that version; `None` when it is a deletion.
        content: Option<PutDocument>,
    },
}

impl DocumentCommand {
    /// The command's name in logs and metrics: `put`, `delete`, `erase`, `compensate`,
    /// `redrive`.
    pub fn kind(&self) -> &'static str {
        match self {
            DocumentCommand::Put(_) => "put",
            DocumentCommand::Delete { .. } => "delete",
            DocumentCommand::Erase { .. } => "erase",
            DocumentCommand::RequestCompensation { .. } => "compensate",
            DocumentCommand::Redrive { .. } => "redrive",
        }
    }
}

impl PutDocument {
    /// Checks the domain rules that need no configuration.
    ///
    /// # Errors
    /// [`crate::DocumentError::Invalid`] naming the first broken rule.
    pub fn validate(&self) -> Result<(), String> {
        fn text_field(name: &str, value: &str, max: usize, required: bool) -> Result<(), String> {
            if required && value.trim().is_empty() {
                return Err(format!("{name} is required"));
            }
            let n = value.chars().count();
            if n > max {
                return Err(format!("{name} is {n} characters, at most {max} allowed"));
            }
            Ok(())
        }
        text_field("title", &self.title, MAX_TITLE_CHARS, true)?;
        text_field(
            "source_type",
            &self.source_type,
            MAX_SOURCE_TYPE_CHARS,
            true,
        )?;
        if let Some(tag) = &self.business_tag {
            text_field("business_tag", tag, MAX_BUSINESS_TAG_CHARS, false)?;
        }
        let dim = self.chunks.first().map(|c| c.vector.len());
        for (i, chunk) in self.chunks.iter().enumerate() {
            if chunk.index as usize != i {
                return Err(format!("chunk {i} has index {}", chunk.index));
            }
            if Some(chunk.vector.len()) != dim || chunk.vector.is_empty() {
                return Err(format!(
                    "chunk {i} has a vector of {} values",
                    chunk.vector.len()
                ));
            }
            if chunk.text.len() > MAX_CHUNK_TEXT_BYTES {
                return Err(format!(
                    "chunk {i} has {} bytes of text, at most {MAX_CHUNK_TEXT_BYTES} allowed",
                    chunk.text.len()
                ));
            }
            if chunk.vector.iter().any(|x| !x.is_finite()) {
                return Err(format!("chunk {i} has a value that is not a finite number"));
            }
        }
        if let Some(blob) = &self.blob {
            let hex_ok = blob.sha256.len() == 64
                && blob
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err("blob sha256 must be 64 lowercase hex digits".to_owned());
            }
        }
        Ok(())
    }
}
