//! What a document's catalogue entry holds at a version: the one mapping of an event to the
//! catalogue, shared by the MySQL projector (which writes it), the log's catalogue reads
//! (which decode it) and verification (which compares a stored row with it).

use crate::document::event::DocumentEvent;
use crate::envelope::Version;

/// A document's catalogue entry besides its id and readiness (docs/stores.md), owned, so
/// that its strings move into a store's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogueEntry {
    /// The document version the entry belongs to.
    pub version: Version,
    /// Title.
    pub title: String,
    /// Source type.
    pub source_type: String,
    /// Business tag.
    pub business_tag: Option<String>,
    /// The attributes object as canonical JSON text: compact, with its keys sorted at every
    /// level, as `serde_json::to_string` writes a `serde_json::Map` (an ordered map: the
    /// workspace never enables serde_json's `preserve_order`).
    pub attributes: String,
    /// sha256 of the blob at this version, `None` without blob.
    pub blob_sha256: Option<String>,
    /// Blob size at this version, `None` without blob.
    pub blob_size: Option<u64>,
    /// Number of chunks at this version.
    pub chunk_count: u32,
}

impl DocumentEvent {
    /// The catalogue entry a `RowInserted` sets; `None` for any other event.
    pub fn catalogue_entry(&self) -> Option<CatalogueEntry> {
        let DocumentEvent::RowInserted {
            version,
            title,
            source_type,
            business_tag,
            attributes,
            blob_sha256,
            blob_size,
            chunk_count,
        } = self
        else {
            return None;
        };
        Some(CatalogueEntry {
            version: *version,
            title: title.clone(),
            source_type: source_type.clone(),
            business_tag: business_tag.clone(),
            attributes: serde_json::to_string(attributes).expect("a JSON object always serializes"),
            blob_sha256: blob_sha256.clone(),
            blob_size: *blob_size,
            chunk_count: *chunk_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_row_has_an_entry_and_its_attributes_are_canonical() {
        let attributes: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":null}}"#).expect("json");
        let event = DocumentEvent::RowInserted {
            version: 2,
            title: "T".into(),
            source_type: "pdf".into(),
            business_tag: Some("tag".into()),
            attributes,
            blob_sha256: Some("ab".into()),
            blob_size: Some(3),
            chunk_count: 4,
        };
        let entry = event.catalogue_entry().expect("a row");
        assert_eq!(
            entry.attributes, r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#,
            "keys sorted at every level"
        );
        assert_eq!(
            (entry.version, entry.blob_size, entry.chunk_count),
            (2, Some(3), 4)
        );
        assert_eq!(
            DocumentEvent::DocumentDeleted { version: 3 }.catalogue_entry(),
            None
        );
    }
}
