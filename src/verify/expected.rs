//! What the log implies each store holds, per document, reduced to small digests so that a
//! whole-log scan keeps only a few hundred bytes per document in memory.
//!
//! The mapping from events to stores is `DocumentEvent::change_for` (the same one the
//! projectors coalesce with), so verification and projection can never disagree on which
//! event is which store's state. Nothing here does I/O.

use aggregates::document::chunk_digest;
use aggregates::{Chunk, DocumentEvent, LogCursor, RecordedEvent, StoreChange, StoreKind, Version};
use projections::milvus::ChunkRow;
use projections::mysql::schema::blob_key;
use projections::mysql::DocumentRow;
use sha2::{Digest, Sha256};

/// What one store must hold for one document.
#[derive(Clone, Debug, PartialEq)]
pub enum ExpectedState {
    /// Nothing (deleted, never had this store's data, or a version without blob).
    Absent,
    /// A catalogue row whose fields hash to this [`row_digest`].
    Row([u8; 32]),
    /// Chunk rows: their indexes, the aggregate's [`chunk_digest`], and their rough size.
    Chunks {
        /// Chunk indexes, in the order sent.
        indexes: Vec<u32>,
        /// [`chunk_digest`] of the chunks.
        digest: String,
        /// Rough bytes of texts and vectors, to size content reads.
        approx_bytes: usize,
    },
    /// An object with these bytes.
    Blob {
        /// Lowercase hex sha256.
        sha256: String,
        /// Size in bytes.
        size: u64,
    },
}

/// One store's expectation: the version and log place of the event that sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    /// The version the store must hold (or must have removed).
    pub version: Version,
    /// Where the event that sets it sits in the log.
    pub cursor: LogCursor,
    /// What the store must hold.
    pub state: ExpectedState,
}

/// Every store's expectation for one document (`None`: the log never asked that store for
/// anything, which means it must hold nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpectedDoc {
    /// Indexed like [`StoreKind::ALL`].
    pub stores: [Option<Expectation>; 3],
}

/// Index of `store` in [`StoreKind::ALL`].
pub fn store_index(store: StoreKind) -> usize {
    match store {
        StoreKind::Mysql => 0,
        StoreKind::Milvus => 1,
        StoreKind::S3 => 2,
    }
}

impl ExpectedDoc {
    /// Folds the next event of the document (in log order).
    pub fn apply(&mut self, recorded: &RecordedEvent<DocumentEvent>) {
        for store in StoreKind::ALL {
            if let Some(change) = recorded.event.change_for(store) {
                self.stores[store_index(store)] = Some(Expectation {
                    version: change.version(),
                    cursor: recorded.cursor,
                    state: state_of(recorded.doc_id.as_str(), &change),
                });
            }
        }
    }

    /// The expectation of `store`.
    pub fn of(&self, store: StoreKind) -> Option<&Expectation> {
        self.stores[store_index(store)].as_ref()
    }

    /// What `store` must hold (Absent when the log never asked it for anything).
    pub fn state(&self, store: StoreKind) -> &ExpectedState {
        self.of(store).map_or(&ExpectedState::Absent, |e| &e.state)
    }
}

fn state_of(doc_id: &str, change: &StoreChange<'_>) -> ExpectedState {
    match change {
        StoreChange::Remove(_) => ExpectedState::Absent,
        StoreChange::Upsert(event) => match event {
            DocumentEvent::RowInserted { .. } => RowFields::of_event(doc_id, event)
                .map_or(ExpectedState::Absent, |f| ExpectedState::Row(f.digest())),
            DocumentEvent::VectorsIndexed { chunks, .. } if chunks.is_empty() => {
                ExpectedState::Absent
            }
            DocumentEvent::VectorsIndexed { chunks, .. } => ExpectedState::Chunks {
                indexes: chunks.iter().map(|c| c.index).collect(),
                digest: chunk_digest(chunks),
                approx_bytes: chunks
                    .iter()
                    .map(|c| c.text.len() + c.vector.len() * 4 + doc_id.len() + 32)
                    .sum(),
            },
            DocumentEvent::BlobStored { sha256, size, .. } => ExpectedState::Blob {
                sha256: sha256.clone(),
                size: *size,
            },
            // change_for never maps these to an upsert.
            DocumentEvent::DocumentDeleted { .. } | DocumentEvent::CompensationRequested { .. } => {
                ExpectedState::Absent
            }
        },
    }
}

/// The compared fields of a catalogue row (`status` and `updated_at` are bookkeeping).
#[derive(Clone, Debug, PartialEq)]
pub struct RowFields {
    /// Title.
    pub title: String,
    /// Source type.
    pub source_type: String,
    /// Business tag.
    pub business_tag: Option<String>,
    /// Attributes, as canonical JSON (keys sorted).
    pub attributes: String,
    /// `docs/{doc_id}` or None.
    pub blob_key: Option<String>,
    /// Blob sha256.
    pub blob_sha256: Option<String>,
    /// Blob size.
    pub blob_size: Option<u64>,
    /// Number of chunks.
    pub chunk_count: u32,
}

impl RowFields {
    /// The row a `RowInserted` event asks for (its [`DocumentEvent::catalogue_entry`]).
    pub fn of_event(doc_id: &str, event: &DocumentEvent) -> Option<RowFields> {
        let entry = event.catalogue_entry()?;
        Some(RowFields {
            title: entry.title,
            source_type: entry.source_type,
            business_tag: entry.business_tag,
            attributes: entry.attributes,
            blob_key: entry.blob_sha256.as_ref().map(|_| blob_key(doc_id)),
            blob_sha256: entry.blob_sha256,
            blob_size: entry.blob_size,
            chunk_count: entry.chunk_count,
        })
    }

    /// The fields of a stored row.
    pub fn of_row(row: &DocumentRow) -> RowFields {
        RowFields {
            title: row.title.clone(),
            source_type: row.source_type.clone(),
            business_tag: row.business_tag.clone(),
            attributes: canonical_json(&row.attributes),
            blob_key: row.blob_key.clone(),
            blob_sha256: row.blob_sha256.clone(),
            blob_size: row.blob_size,
            chunk_count: row.chunk_count,
        }
    }

    /// A stable digest of every field.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |value: Option<&[u8]>| match value {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        };
        field(Some(self.title.as_bytes()));
        field(Some(self.source_type.as_bytes()));
        field(self.business_tag.as_deref().map(str::as_bytes));
        field(Some(self.attributes.as_bytes()));
        field(self.blob_key.as_deref().map(str::as_bytes));
        field(self.blob_sha256.as_deref().map(str::as_bytes));
        field(
            self.blob_size
                .map(u64::to_le_bytes)
                .as_ref()
                .map(|b| &b[..]),
        );
        field(Some(&self.chunk_count.to_le_bytes()));
        h.finalize().into()
    }

    /// The names and values of the fields that differ from `found`.
    pub fn differences(&self, found: &RowFields) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, want: String, have: String| {
            if want != have {
                out.push(format!("{name}: expected {want}, found {have}"));
            }
        };
        cmp("title", json(&self.title), json(&found.title));
        cmp(
            "source_type",
            json(&self.source_type),
            json(&found.source_type),
        );
        cmp(
            "business_tag",
            json(&self.business_tag),
            json(&found.business_tag),
        );
        cmp(
            "attributes",
            self.attributes.clone(),
            found.attributes.clone(),
        );
        cmp("blob_key", json(&self.blob_key), json(&found.blob_key));
        cmp(
            "blob_sha256",
            json(&self.blob_sha256),
            json(&found.blob_sha256),
        );
        cmp("blob_size", json(&self.blob_size), json(&found.blob_size));
        cmp(
            "chunk_count",
            self.chunk_count.to_string(),
            found.chunk_count.to_string(),
        );
        out
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// JSON with object keys sorted at every level, so equal values print equally whatever the
/// store did to the key order.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&json(k));
                    out.push(':');
                    write(&map[k.as_str()], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The chunks Milvus holds for one document, as the aggregate would digest them (rows
/// sorted by chunk index).
pub fn chunks_of_rows(rows: &[&ChunkRow]) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = rows
        .iter()
        .map(|r| Chunk {
            index: r.chunk_index,
            text: r.text.clone(),
            vector: r.embedding.clone(),
        })
        .collect();
    chunks.sort_by_key(|c| c.index);
    chunks
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use aggregates::DocId;

    use super::*;

    fn rec(position: i64, event: DocumentEvent) -> RecordedEvent<DocumentEvent> {
        RecordedEvent {
            cursor: LogCursor {
                epoch: 1,
                xid: 1,
                position,
            },
            doc_id: DocId::parse("a").expect("valid"),
            stream_version: position,
            recorded_at_ms: 0,
            event,
        }
    }

    fn row(version: Version, title: &str, blob: Option<&str>) -> DocumentEvent {
        DocumentEvent::RowInserted {
            version,
            title: title.into(),
            source_type: "pdf".into(),
            business_tag: None,
            attributes: serde_json::Map::new(),
            blob_sha256: blob.map(str::to_owned),
            blob_size: blob.map(|_| 3),
            chunk_count: 0,
        }
    }

    #[test]
    fn the_newest_change_per_store_wins_and_a_blobless_version_removes_the_object() {
        let mut doc = ExpectedDoc::default();
        doc.apply(&rec(
            1,
            DocumentEvent::BlobStored {
                version: 1,
                sha256: "ab".into(),
                size: 3,
                content_type: "text/plain".into(),
            },
        ));
        doc.apply(&rec(2, row(1, "one", Some("ab"))));
        assert!(matches!(
            doc.state(StoreKind::S3),
            ExpectedState::Blob { .. }
        ));
        doc.apply(&rec(3, row(2, "two", None)));
        assert_eq!(doc.state(StoreKind::S3), &ExpectedState::Absent);
        assert_eq!(doc.of(StoreKind::S3).map(|e| e.version), Some(2));
        assert_eq!(doc.state(StoreKind::Milvus), &ExpectedState::Absent);
        assert!(doc.of(StoreKind::Milvus).is_none());
        let expected = RowFields::of_event("a", &row(2, "two", None)).expect("row");
        assert_eq!(
            doc.state(StoreKind::Mysql),
            &ExpectedState::Row(expected.digest())
        );
        doc.apply(&rec(4, DocumentEvent::DocumentDeleted { version: 3 }));
        for store in StoreKind::ALL {
            assert_eq!(doc.state(store), &ExpectedState::Absent);
            assert_eq!(doc.of(store).map(|e| e.version), Some(3));
        }
    }

    #[test]
    fn row_differences_name_each_field() {
        let want = RowFields::of_event("a", &row(1, "one", Some("ab"))).expect("row");
        let mut have = want.clone();
        assert!(want.differences(&have).is_empty());
        have.title = "evil".into();
        have.chunk_count = 9;
        assert_ne!(want.digest(), have.digest());
        assert_eq!(
            want.differences(&have),
            [
                "title: expected \"one\", found \"evil\"",
                "chunk_count: expected 0, found 9"
            ]
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":null}}"#).expect("json");
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }
}
