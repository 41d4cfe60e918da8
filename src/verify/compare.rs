//! Precise comparison of one document's data in one store with the log's newest change for
//! that store: what verification reports. Pure: callers read the store and the log.

use std::collections::{BTreeMap, BTreeSet};

use aggregates::document::chunk_digest;
use aggregates::{DocumentEvent, StoreKind, Version};
use projections::milvus::ChunkRow;
use projections::mysql::DocumentRow;
use projections::s3::StoredObject;
use projections::sink::{Change, DocChange};
use serde::Serialize;

use super::expected::{chunks_of_rows, sha256_hex, RowFields};

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The log says the store holds the document; it holds nothing.
    Missing,
    /// The store holds data of a document that does not exist, is deleted, or has no such
    /// data at its current version (an orphan).
    Extra,
    /// The store holds another version than the log's.
    StaleVersion,
    /// Right version, wrong content (fields, chunks, vectors, bytes).
    ContentMismatch,
    /// Something in the store that no document can own (a key outside `docs/`, an invalid
    /// document id).
    Stray,
}

impl FindingKind {
    /// The kind's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Missing => "missing",
            FindingKind::Extra => "extra",
            FindingKind::StaleVersion => "stale_version",
            FindingKind::ContentMismatch => "content_mismatch",
            FindingKind::Stray => "stray",
        }
    }
}

/// One difference between a store and the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// `mysql` | `milvus` | `s3`.
    pub store: &'static str,
    /// The document (for a stray: the raw key or id found).
    pub doc_id: String,
    /// What is wrong.
    pub kind: FindingKind,
    /// The version the log implies (None: the log has nothing for the document).
    pub expected_version: Option<Version>,
    /// The newest version the store holds (None: nothing, or not recorded).
    pub found_version: Option<Version>,
    /// Precisely what differs, one item per field, chunk or property.
    pub differences: Vec<String>,
    /// The store's projector has not yet reached the document's newest event: the
    /// difference may resolve by itself.
    pub in_flight: bool,
}

impl Finding {
    fn new(store: StoreKind, doc_id: &str, kind: FindingKind) -> Finding {
        Finding {
            store: store.name(),
            doc_id: doc_id.to_owned(),
            kind,
            expected_version: None,
            found_version: None,
            differences: Vec::new(),
            in_flight: false,
        }
    }

    /// A stray: data no document can own.
    pub fn stray(store: StoreKind, key: &str, why: &str) -> Finding {
        Finding {
            differences: vec![why.to_owned()],
            ..Finding::new(store, key, FindingKind::Stray)
        }
    }

    fn versions(mut self, expected: Option<Version>, found: Option<Version>) -> Finding {
        self.expected_version = expected;
        self.found_version = found;
        self
    }
}

/// What the log's newest change for a store asks for: the upserted event, or None (hold
/// nothing), and its version (None when the log never asked that store for anything).
fn wanted(change: Option<&DocChange>) -> (Option<&DocumentEvent>, Option<Version>) {
    match change {
        None => (None, None),
        Some(c) => match &c.change {
            Change::Upsert(e) => (Some(e), Some(c.version)),
            Change::Remove | Change::Purge => (None, Some(c.version)),
        },
    }
}

/// Compares a catalogue row with the log.
pub fn compare_row(
    doc_id: &str,
    change: Option<&DocChange>,
    row: Option<&DocumentRow>,
) -> Option<Finding> {
    let store = StoreKind::Mysql;
    let (event, version) = wanted(change);
    let want = event.and_then(|e| RowFields::of_event(doc_id, e));
    match (want, row) {
        (None, None) => None,
        (None, Some(row)) => Some(
            Finding::new(store, doc_id, FindingKind::Extra).versions(version, Some(row.version)),
        ),
        (Some(_), None) => {
            Some(Finding::new(store, doc_id, FindingKind::Missing).versions(version, None))
        }
        (Some(want), Some(row)) => {
            let found = Some(row.version);
            if Some(row.version) != version {
                return Some(
                    Finding::new(store, doc_id, FindingKind::StaleVersion).versions(version, found),
                );
            }
            let differences = want.differences(&RowFields::of_row(row));
            (!differences.is_empty()).then(|| Finding {
                differences,
                ..Finding::new(store, doc_id, FindingKind::ContentMismatch).versions(version, found)
            })
        }
    }
}

/// Compares a document's chunk rows (any order) with the log.
pub fn compare_chunks(
    doc_id: &str,
    change: Option<&DocChange>,
    rows: &[ChunkRow],
) -> Option<Finding> {
    let store = StoreKind::Milvus;
    let (event, version) = wanted(change);
    let chunks = match event {
        Some(DocumentEvent::VectorsIndexed { chunks, .. }) => chunks.as_slice(),
        _ => &[],
    };
    let found = rows.iter().map(|r| r.version).max();
    match (chunks.is_empty(), rows.is_empty()) {
        (true, true) => return None,
        (true, false) => {
            let mut f = Finding::new(store, doc_id, FindingKind::Extra).versions(version, found);
            f.differences = rows.iter().map(|r| format!("row {}", r.pk)).collect();
            return Some(f);
        }
        (false, true) => {
            return Some(Finding::new(store, doc_id, FindingKind::Missing).versions(version, None))
        }
        (false, false) => {}
    }
    let versions: BTreeSet<Version> = rows.iter().map(|r| r.version).collect();
    if versions.len() > 1 || found != version {
        let mut f = Finding::new(store, doc_id, FindingKind::StaleVersion).versions(version, found);
        f.differences = versions
            .iter()
            .map(|v| {
                let n = rows.iter().filter(|r| r.version == *v).count();
                format!("{n} rows at version {v}")
            })
            .collect();
        return Some(f);
    }
    let stored: BTreeMap<u32, &ChunkRow> = rows.iter().map(|r| (r.chunk_index, r)).collect();
    let mut differences = Vec::new();
    if chunks.len() != rows.len() {
        differences.push(format!(
            "chunk_count: expected {}, found {}",
            chunks.len(),
            rows.len()
        ));
    }
    let mut wanted_indexes = BTreeSet::new();
    for chunk in chunks {
        wanted_indexes.insert(chunk.index);
        match stored.get(&chunk.index) {
            None => differences.push(format!("chunk {}: missing", chunk.index)),
            Some(row) => {
                if row.text != chunk.text {
                    differences.push(format!("chunk {}: text differs", chunk.index));
                }
                let same_bits = row.embedding.len() == chunk.vector.len()
                    && row
                        .embedding
                        .iter()
                        .zip(&chunk.vector)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if !same_bits {
                    differences.push(format!("chunk {}: vector differs", chunk.index));
                }
            }
        }
    }
    for row in rows {
        if !wanted_indexes.contains(&row.chunk_index) {
            differences.push(format!("chunk {}: extra row {}", row.chunk_index, row.pk));
        }
    }
    if differences.is_empty() {
        // Belt and braces: the digest the bulk scan used must agree with the field check.
        let refs: Vec<&ChunkRow> = rows.iter().collect();
        if chunk_digest(&chunks_of_rows(&refs)) != chunk_digest(chunks) {
            differences.push("chunk digest differs".to_owned());
        }
    }
    (!differences.is_empty()).then(|| Finding {
        differences,
        ..Finding::new(store, doc_id, FindingKind::ContentMismatch).versions(version, found)
    })
}

/// Compares a document's object with the log.
pub fn compare_object(
    doc_id: &str,
    change: Option<&DocChange>,
    object: Option<&StoredObject>,
) -> Option<Finding> {
    let store = StoreKind::S3;
    let (event, version) = wanted(change);
    let blob = match event {
        Some(DocumentEvent::BlobStored {
            sha256,
            size,
            content_type,
            ..
        }) => Some((sha256, *size, content_type)),
        _ => None,
    };
    match (blob, object) {
        (None, None) => None,
        (None, Some(o)) => {
            Some(Finding::new(store, doc_id, FindingKind::Extra).versions(version, o.version))
        }
        (Some(_), None) => {
            Some(Finding::new(store, doc_id, FindingKind::Missing).versions(version, None))
        }
        (Some((sha256, size, content_type)), Some(o)) => {
            if o.version != version {
                return Some(
                    Finding::new(store, doc_id, FindingKind::StaleVersion)
                        .versions(version, o.version),
                );
            }
            let mut differences = Vec::new();
            let actual = sha256_hex(&o.bytes);
            if &actual != sha256 {
                differences.push(format!("bytes sha256: expected {sha256}, found {actual}"));
            }
            if o.bytes.len() as u64 != size {
                differences.push(format!("size: expected {size}, found {}", o.bytes.len()));
            }
            if o.sha256.as_ref() != Some(sha256) {
                differences.push(format!(
                    "docledger-sha256 metadata: expected {sha256}, found {}",
                    o.sha256.as_deref().unwrap_or("none")
                ));
            }
            if !content_type.is_empty() && o.content_type.as_ref() != Some(content_type) {
                differences.push(format!(
                    "content_type: expected {content_type}, found {}",
                    o.content_type.as_deref().unwrap_or("none")
                ));
            }
            (!differences.is_empty()).then(|| Finding {
                differences,
                ..Finding::new(store, doc_id, FindingKind::ContentMismatch)
                    .versions(version, o.version)
            })
        }
    }
}
