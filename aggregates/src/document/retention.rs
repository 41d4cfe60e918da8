//! Retention: which versions of a document keep their content in the log.
//!
//! The rule, in one place (the log's compaction pass asks it for every event that still
//! holds content; docs/retention.md states it for users):
//! - the newest version every store accepted (`ready_version`, what a compensation rolls
//!   back to) and every version after it (not yet in every store) keep their content;
//! - a live document keeps its newest `versions` versions;
//! - every version younger than `max_age` keeps its content;
//! - anything else keeps only its metadata ([`crate::DocumentEvent::ContentRemoved`]). A
//!   deleted document keeps no version for being among the newest: its content goes once it
//!   is older than `max_age` (and all stores accepted the deletion).
//!
//! Every version of a document is complete (a put writes its blob, row and vectors at the
//! same version; a deletion writes nothing else), so the versions kept are self-contained:
//! dropping the content of older versions never changes what a store holds, nor what a
//! rebuild writes.

use std::time::Duration;

use crate::envelope::Version;

/// How much of each document's history keeps its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// A live document's newest versions that keep their content (at least 1).
    pub versions: u64,
    /// Versions younger than this keep their content.
    pub max_age: Duration,
}

/// What the rule needs to know of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionFacts {
    /// The document's current version.
    pub current: Version,
    /// Whether the current version is a deletion (or an erasure).
    pub deleted: bool,
    /// The newest version every store held at once (0: none yet).
    pub ready_version: Version,
}

impl RetentionPolicy {
    /// Whether `version` of the document, recorded `age` ago, keeps its content.
    pub fn keeps(&self, doc: &RetentionFacts, version: Version, age: Duration) -> bool {
        version >= doc.ready_version
            || age < self.max_age
            || (!doc.deleted && version + self.versions.max(1) > doc.current)
    }

    /// The highest version whose content the version rules alone let go (age aside): every
    /// version at or below it is older than the restore point and, for a live document,
    /// outside its newest versions. 0 when none.
    pub fn floor(&self, doc: &RetentionFacts) -> Version {
        let newest_kept = if doc.deleted {
            doc.current
        } else {
            doc.current.saturating_sub(self.versions.max(1))
        };
        newest_kept.min(doc.ready_version.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            versions: 3,
            max_age: 7 * DAY,
        }
    }

    fn kept(doc: RetentionFacts, age: Duration) -> Vec<Version> {
        (1..=doc.current)
            .filter(|&v| policy().keeps(&doc, v, age))
            .collect()
    }

    #[test]
    fn a_live_document_keeps_its_newest_versions_and_the_restore_point() {
        let doc = RetentionFacts {
            current: 20,
            deleted: false,
            ready_version: 20,
        };
        assert_eq!(kept(doc, 30 * DAY), [18, 19, 20]);
        assert_eq!(policy().floor(&doc), 17);
        // Every store accepted only version 12 so far: it and everything after it stay.
        let lagging = RetentionFacts {
            ready_version: 12,
            ..doc
        };
        assert_eq!(kept(lagging, 30 * DAY), (12..=20).collect::<Vec<_>>());
        assert_eq!(policy().floor(&lagging), 11);
        // Young versions stay whatever their number.
        assert_eq!(kept(doc, DAY), (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_deleted_document_keeps_nothing_once_old_and_accepted() {
        let deleted = RetentionFacts {
            current: 5,
            deleted: true,
            ready_version: 5,
        };
        assert_eq!(
            kept(deleted, 30 * DAY),
            [5],
            "the deletion itself (no content)"
        );
        assert_eq!(policy().floor(&deleted), 4);
        // A deletion some store refused: the version every store held stays restorable.
        let refused = RetentionFacts {
            ready_version: 4,
            ..deleted
        };
        assert_eq!(kept(refused, 30 * DAY), [4, 5]);
        assert_eq!(policy().floor(&refused), 3);
    }

    #[test]
    fn at_least_the_newest_version_is_kept_and_everything_is_kept_before_readiness() {
        let one = RetentionPolicy {
            versions: 0,
            max_age: Duration::ZERO,
        };
        let doc = RetentionFacts {
            current: 4,
            deleted: false,
            ready_version: 4,
        };
        assert!(one.keeps(&doc, 4, 30 * DAY));
        assert!(!one.keeps(&doc, 3, 30 * DAY));
        let never_ready = RetentionFacts {
            ready_version: 0,
            ..doc
        };
        assert!((1..=4).all(|v| one.keeps(&never_ready, v, 30 * DAY)));
        assert_eq!(one.floor(&never_ready), 0);
    }
}
