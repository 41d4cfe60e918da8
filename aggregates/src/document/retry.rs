//! Retry: what `POST /v1/documents/{doc_id}/retry` does to a document, decided from the
//! log's record of it (the stream, the versions the stores hold, the compensations).
//!
//! The rule, in one place: a document whose stores all hold its current version and that
//! has no open parked change is left unchanged; any other is *redriven*: its current
//! version (its full state, or its deletion) is re-emitted as a new version, which every
//! store converges on and which closes every open parked change of the document.

use crate::document::compensation::CompensationState;
use crate::envelope::Version;

/// What the log records about a document when a retry is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryFacts {
    /// The document's current version.
    pub version: Version,
    /// That version is a deletion.
    pub deleted: bool,
    /// Every store holds the current version.
    pub stores_consistent: bool,
    /// The states of the document's compensations.
    pub compensations: Vec<CompensationState>,
}

/// What a retry does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Nothing to do: every store holds `version` and no parked change is open.
    Unchanged {
        /// The document's current version.
        version: Version,
    },
    /// Re-emit `version` as a new version ([`crate::DocumentCommand::Redrive`]): its
    /// deletion when `deleted`, otherwise its full state, which the caller reads from the
    /// stream ([`crate::document::content_at`]).
    Redrive {
        /// The version to re-emit (the command is refused if the document moved since).
        version: Version,
        /// That version is a deletion (no content is needed).
        deleted: bool,
    },
}

/// Decides whether a retry redrives the document (see the module's rule).
pub fn decide_retry(facts: &RetryFacts) -> RetryDecision {
    let open = facts.compensations.iter().any(|state| state.is_open());
    if facts.stores_consistent && !open {
        return RetryDecision::Unchanged {
            version: facts.version,
        };
    }
    RetryDecision::Redrive {
        version: facts.version,
        deleted: facts.deleted,
    }
}
