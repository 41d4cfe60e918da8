//! Refusals of the document aggregate. Only refusals live here: operational failures (the
//! log is down, a conflict with another writer) are the log's errors, never wrapped in these.

use crate::envelope::Version;

/// Why the aggregate refused a command. A refused command appends nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The caller's `expected_version` is not the document's version.
    #[error("expected version {expected}, document is at version {actual}")]
    VersionConflict {
        /// What the caller expected.
        expected: Version,
        /// The document's version.
        actual: Version,
    },
    /// The document was never created, or is deleted.
    #[error("document not found")]
    NotFound,
    /// The command's content breaks a domain rule.
    #[error("{0}")]
    Invalid(String),
}
