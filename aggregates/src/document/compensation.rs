//! Compensation: what the document does when a store permanently refused one of its
//! versions, so that every store ends up holding the same version again.
//!
//! The rule, in one place:
//! - a refused version older than the document's current one is *superseded*: the stores
//!   converge on the newer version (which gets its own compensation if it is refused too);
//! - a refused version that is the current one is *rolled back*: the state of the newest
//!   earlier version that no store refused is re-emitted as a new version (state transfer,
//!   so every store converges on it through ordinary events);
//! - when no such version exists (the refused version is the first, the one before it is a
//!   deletion, or the refused version is itself a rollback, which would loop), the document
//!   is *withdrawn* from every store;
//! - a refused deletion cannot be undone by the domain: it stays open for an operator.
//!
//! The aggregate stays pure: the earlier version's full state comes in the command, chosen by
//! [`restore_point`] from the stream's history and the versions the stores refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::document::command::PutDocument;
use crate::document::event::{BlobRef, DocumentEvent};
use crate::envelope::Version;

/// What a compensation restores the document to.
#[derive(Clone, Debug, PartialEq)]
pub enum Restore {
    /// Re-emit the full state of `version`, which no store refused, as a new version.
    Version {
        /// The version whose state is restored.
        version: Version,
        /// Its full state (blob identity, row, chunks with vectors).
        content: PutDocument,
    },
    /// Withdraw the document from every store.
    Withdraw,
}

/// What a compensation did, decided by the aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CompensationOutcome {
    /// The state of `from` was re-emitted as version `to`.
    RolledBack {
        /// The restored version.
        from: Version,
        /// The new version carrying it.
        to: Version,
    },
    /// The document was deleted at `at`.
    Withdrawn {
        /// The deletion's version.
        at: Version,
    },
    /// A newer version already replaced the refused one.
    Superseded {
        /// The document's current version.
        by: Version,
    },
    /// The refused version is unknown to the document (nothing to do).
    Unknown,
    /// A refused deletion: the domain cannot undo it; an operator must retry the document.
    NeedsOperator,
}

impl CompensationOutcome {
    /// The version whose consistency closes the compensation, if events were appended.
    pub fn restoring_version(&self) -> Option<Version> {
        match self {
            Self::RolledBack { to, .. } => Some(*to),
            Self::Withdrawn { at } => Some(*at),
            _ => None,
        }
    }

    /// Whether the compensation is finished once its events (if any) are appended.
    pub fn resolves(&self) -> bool {
        !matches!(self, Self::NeedsOperator)
    }

    /// A short human-readable description, stored with the parked change.
    pub fn describe(&self) -> String {
        match self {
            Self::RolledBack { from, to } => format!("rolled back to version {from} as {to}"),
            Self::Withdrawn { at } => format!("withdrawn from every store at version {at}"),
            Self::Superseded { by } => format!("superseded by version {by}"),
            Self::Unknown => "the document has no such version".to_owned(),
            Self::NeedsOperator => {
                "a refused deletion cannot be compensated: retry the document".to_owned()
            }
        }
    }
}

/// One version of a document as the stream recorded it.
#[derive(Clone, Debug, Default, PartialEq)]
struct VersionRecord {
    blob: Option<BlobRef>,
    row: Option<DocumentEvent>,
    vectors: Option<DocumentEvent>,
    deleted: bool,
    /// The version was emitted by a compensation (a rollback).
    is_restore: bool,
}

fn versions_of(history: &[DocumentEvent]) -> BTreeMap<Version, VersionRecord> {
    let mut versions: BTreeMap<Version, VersionRecord> = BTreeMap::new();
    let mut after_compensation = false;
    for event in history {
        match event {
            DocumentEvent::CompensationRequested { .. } => {
                after_compensation = true;
                continue;
            }
            // What retention left of an older event: no content to restore.
            DocumentEvent::ContentRemoved { removed, .. } => {
                if removed
                    .last()
                    .is_some_and(|r| r.event_type == "CompensationRequested")
                {
                    after_compensation = true;
                }
                continue;
            }
            _ => {}
        }
        let fresh = !versions.contains_key(&event.version());
        let record = versions.entry(event.version()).or_default();
        if fresh {
            record.is_restore = after_compensation;
        }
        after_compensation = false;
        match event {
            DocumentEvent::BlobStored {
                sha256,
                size,
                content_type,
                ..
            } => {
                record.blob = Some(BlobRef {
                    sha256: sha256.clone(),
                    size: *size,
                    content_type: content_type.clone(),
                });
            }
            DocumentEvent::RowInserted { .. } => record.row = Some(event.clone()),
            DocumentEvent::VectorsIndexed { .. } => record.vectors = Some(event.clone()),
            DocumentEvent::DocumentDeleted { .. } | DocumentEvent::DocumentErased { .. } => {
                record.deleted = true
            }
            DocumentEvent::CompensationRequested { .. } | DocumentEvent::ContentRemoved { .. } => {}
        }
    }
    versions
}

/// The full state of `version` as the stream recorded it; `None` when the version is a
/// deletion or unknown.
pub fn content_at(history: &[DocumentEvent], version: Version) -> Option<PutDocument> {
    versions_of(history).get(&version).and_then(content_of)
}

/// Chooses what a compensation of `refused_version` restores, from the stream's events in
/// stream order and every version of the document that some store refused.
pub fn restore_point(
    history: &[DocumentEvent],
    refused: &BTreeSet<Version>,
    refused_version: Version,
) -> Restore {
    let versions = versions_of(history);
    if versions.get(&refused_version).is_some_and(|r| r.is_restore) {
        // Restoring the same earlier state again would be refused again: stop here.
        return Restore::Withdraw;
    }
    for (version, record) in versions.range(..refused_version).rev() {
        if record.deleted {
            return Restore::Withdraw;
        }
        if refused.contains(version) {
            continue;
        }
        if let Some(content) = content_of(record) {
            return Restore::Version {
                version: *version,
                content,
            };
        }
    }
    Restore::Withdraw
}

fn content_of(record: &VersionRecord) -> Option<PutDocument> {
    if record.deleted {
        return None;
    }
    let Some(DocumentEvent::RowInserted {
        title,
        source_type,
        business_tag,
        attributes,
        blob_sha256,
        ..
    }) = &record.row
    else {
        return None;
    };
    let Some(DocumentEvent::VectorsIndexed { chunks, .. }) = &record.vectors else {
        return None;
    };
    let blob = match (blob_sha256, &record.blob) {
        (None, _) => None,
        (Some(sha), Some(b)) if &b.sha256 == sha => Some(b.clone()),
        // A row naming a blob whose BlobStored is missing: not a restorable version.
        (Some(_), _) => return None,
    };
    Some(PutDocument {
        title: title.clone(),
        source_type: source_type.clone(),
        business_tag: business_tag.clone(),
        attributes: attributes.clone(),
        blob,
        chunks: chunks.clone(),
        expected_version: None,
    })
}

/// Where a compensation (the follow-up of one parked change) stands.
///
/// A parked change is *open* until its compensation appended events or was found to need
/// none; it may be marked as needing an operator on the way. Once resolved, it is
/// *restoring* while the stores have not all reached the version that restores the
/// document, then *resolved*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationState {
    /// Waiting for the compensator.
    Open,
    /// The compensator cannot handle it (a refused deletion): a retry of the document closes it.
    NeedsOperator,
    /// Events were appended; the stores are not all at the restoring version yet.
    Restoring,
    /// Done.
    Resolved,
}

/// A name that is not a [`CompensationState`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown compensation state {0:?}")]
pub struct UnknownCompensationState(pub String);

impl CompensationState {
    /// Every state, in the order of its life.
    pub const ALL: [Self; 4] = [
        Self::Open,
        Self::NeedsOperator,
        Self::Restoring,
        Self::Resolved,
    ];

    /// The state's name in the API, the log's queries and on the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::NeedsOperator => "needs_operator",
            Self::Restoring => "restoring",
            Self::Resolved => "resolved",
        }
    }

    /// The parked change is not resolved yet (open, or waiting for an operator): a retry of
    /// the document has something to close.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Open | Self::NeedsOperator)
    }

    /// The compensation still concerns its document (open, needing an operator, or restoring).
    pub fn is_unsettled(self) -> bool {
        !matches!(self, Self::Resolved)
    }
}

impl std::fmt::Display for CompensationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CompensationState {
    type Err = UnknownCompensationState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownCompensationState(s.to_owned()))
    }
}
