//! The single encode/decode of events to and from their stored form.
//!
//! Stored form: `event_type`, `event_version`, a JSON `payload` and, for `VectorsIndexed`,
//! the vectors packed as little-endian f32 in `vectors` (4 bytes a value instead of ~10 of
//! decimal JSON). Older payload versions are upcast here, and only here.

use aggregates::document::EVENT_TYPES;
use aggregates::{CatalogueEntry, Chunk, DocumentEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Current stored payload version of every event type.
pub const CURRENT_EVENT_VERSION: i16 = 1;

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Type name.
    pub event_type: String,
    /// Payload version.
    pub event_version: i16,
    /// JSON payload (vectors stripped).
    pub payload: Value,
    /// Packed vectors, for `VectorsIndexed`.
    #[serde(default, with = "opt_base64")]
    pub vectors: Option<Vec<u8>>,
}

/// A stored event that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {event_type} v{event_version}: {message}")]
pub struct DecodeError {
    /// Type name.
    pub event_type: String,
    /// Payload version.
    pub event_version: i16,
    /// Why.
    pub message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredChunk {
    index: u32,
    text: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVectors {
    version: u64,
    dim: usize,
    chunks: Vec<StoredChunk>,
}

/// `RowInserted`'s payload, read straight into its fields. serde reads an internally tagged
/// enum such as [`DocumentEvent`] by first collecting every entry but the tag into an
/// intermediate tree; for the catalogue's event, the one a catalogue rebuild decodes per
/// document, that was a fifth of the rebuild's client CPU (`perf`). Same fields and rules as
/// the event's own form (the golden fixtures and `row_inserted_fast_path_reads_as_the_event`
/// hold them equal).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRow {
    version: u64,
    title: String,
    source_type: String,
    business_tag: Option<String>,
    attributes: serde_json::Map<String, Value>,
    blob_sha256: Option<String>,
    blob_size: Option<u64>,
    chunk_count: u32,
}

impl From<StoredRow> for DocumentEvent {
    fn from(r: StoredRow) -> DocumentEvent {
        DocumentEvent::RowInserted {
            version: r.version,
            title: r.title,
            source_type: r.source_type,
            business_tag: r.business_tag,
            attributes: r.attributes,
            blob_sha256: r.blob_sha256,
            blob_size: r.blob_size,
            chunk_count: r.chunk_count,
        }
    }
}

/// `RowInserted`'s payload read straight into the catalogue row it writes (a catalogue
/// rebuild's final states: no event in between), the attributes object kept as its text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRowText<'a> {
    version: u64,
    title: String,
    source_type: String,
    business_tag: Option<String>,
    #[serde(borrow)]
    attributes: &'a serde_json::value::RawValue,
    blob_sha256: Option<String>,
    blob_size: Option<u64>,
    chunk_count: u32,
}

/// Whether JSON text has no whitespace outside its strings. This codec writes payloads with
/// `serde_json` (compact, keys in order); PostgreSQL's text form of a `jsonb` value (how
/// migration 4 filled in older stream rows) puts a space after every `:` and `,`.
fn is_compact(json: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            return false;
        }
    }
    true
}

/// Decodes a document's catalogue state (its newest `RowInserted` or `DocumentDeleted`
/// payload) into the catalogue entry it leaves: `None` for a deletion (no row). The entry's
/// attributes are exactly the text [`DocumentEvent::catalogue_entry`] gives for the same
/// event (`serde_json::to_string` of the object), which the MySQL projector writes: taken
/// as stored when compact, written anew otherwise.
///
/// # Errors
/// [`DecodeError`] as [`decode`]'s.
pub fn decode_catalogue_row(
    event_type: &str,
    event_version: i16,
    payload: &[u8],
) -> Result<Option<CatalogueEntry>, DecodeError> {
    if event_type != "RowInserted" || event_version != CURRENT_EVENT_VERSION {
        // A deletion (no row), or what `decode` rejects.
        return decode(event_type, event_version, payload, None)
            .map(|event| event.catalogue_entry());
    }
    let fail = |message: String| DecodeError {
        event_type: event_type.to_owned(),
        event_version,
        message,
    };
    let row: StoredRowText<'_> =
        serde_json::from_slice(payload).map_err(|e| fail(e.to_string()))?;
    let text = row.attributes.get();
    let attributes = if text.starts_with('{') && is_compact(text) {
        text.to_owned()
    } else {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|e| fail(format!("attributes: {e}")))?;
        serde_json::to_string(&object).expect("a JSON object always serializes")
    };
    Ok(Some(CatalogueEntry {
        version: row.version,
        title: row.title,
        source_type: row.source_type,
        business_tag: row.business_tag,
        attributes,
        blob_sha256: row.blob_sha256,
        blob_size: row.blob_size,
        chunk_count: row.chunk_count,
    }))
}

/// Encodes an event for storage.
pub fn encode(event: &DocumentEvent) -> StoredEvent {
    let (payload, vectors) = match event {
        DocumentEvent::VectorsIndexed { version, chunks } => {
            let dim = chunks.first().map_or(0, |c| c.vector.len());
            let mut packed = Vec::with_capacity(chunks.len() * dim * 4);
            for c in chunks {
                for x in &c.vector {
                    packed.extend_from_slice(&x.to_le_bytes());
                }
            }
            let stored = StoredVectors {
                version: *version,
                dim,
                chunks: chunks
                    .iter()
                    .map(|c| StoredChunk {
                        index: c.index,
                        text: c.text.clone(),
                    })
                    .collect(),
            };
            (serde_json::to_value(stored), Some(packed))
        }
        other => (serde_json::to_value(other), None),
    };
    let mut payload = payload.expect("events always serialize to JSON");
    if let Value::Object(map) = &mut payload {
        map.remove("type"); // the type lives in its own column
    }
    StoredEvent {
        event_type: event.type_name().to_owned(),
        event_version: CURRENT_EVENT_VERSION,
        payload,
        vectors,
    }
}

/// Decodes a stored event from its JSON payload text (as read from the `payload` column),
/// upcasting older payload versions. The text is deserialized straight into the event, with
/// the type taken from its own column, never through an intermediate `serde_json::Value`
/// (every projector page and rebuild decodes thousands of these).
///
/// # Errors
/// [`DecodeError`] for an unknown type or version or a malformed payload.
pub fn decode(
    event_type: &str,
    event_version: i16,
    payload: &[u8],
    vectors: Option<&[u8]>,
) -> Result<DocumentEvent, DecodeError> {
    let fail = |message: String| DecodeError {
        event_type: event_type.to_owned(),
        event_version,
        message,
    };
    if !EVENT_TYPES.contains(&event_type) {
        return Err(fail("unknown event type".into()));
    }
    if event_version != CURRENT_EVENT_VERSION {
        return Err(fail(format!(
            "unknown payload version (this build reads {CURRENT_EVENT_VERSION})"
        )));
    }
    if event_type == "VectorsIndexed" {
        let stored: StoredVectors =
            serde_json::from_slice(payload).map_err(|e| fail(e.to_string()))?;
        let packed = vectors.unwrap_or_default();
        if packed.len() != stored.chunks.len() * stored.dim * 4 {
            return Err(fail(format!(
                "{} vector bytes for {} chunks of dimension {}",
                packed.len(),
                stored.chunks.len(),
                stored.dim
            )));
        }
        let mut values = packed
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let chunks = stored
            .chunks
            .into_iter()
            .map(|c| Chunk {
                index: c.index,
                text: c.text,
                vector: values.by_ref().take(stored.dim).collect(),
            })
            .collect();
        return Ok(DocumentEvent::VectorsIndexed {
            version: stored.version,
            chunks,
        });
    }
    if event_type == "RowInserted" {
        let row: StoredRow = serde_json::from_slice(payload).map_err(|e| fail(e.to_string()))?;
        return Ok(row.into());
    }
    decode_tagged(event_type, payload).map_err(|e| fail(e.to_string()))
}

/// Decodes a payload through [`DocumentEvent`]'s own (internally tagged) form.
fn decode_tagged(event_type: &str, payload: &[u8]) -> Result<DocumentEvent, serde_json::Error> {
    let mut json = serde_json::Deserializer::from_slice(payload);
    let event = DocumentEvent::deserialize(tagged::WithType {
        event_type,
        inner: &mut json,
    })?;
    json.end()?;
    Ok(event)
}

/// The stored payload lacks the `type` entry that [`DocumentEvent`]'s internally tagged
/// form expects (the type lives in its own column): [`tagged::WithType`] presents the
/// payload object as one whose first entry is `"type": event_type`.
mod tagged {
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

    /// A JSON object deserializer whose object gains a leading `type` entry.
    pub struct WithType<'t, D> {
        pub event_type: &'t str,
        pub inner: D,
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for WithType<'_, D> {
        type Error = D::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_map(TypeFirst {
                event_type: self.event_type,
                visitor,
            })
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct enum identifier ignored_any
        }
    }

    struct TypeFirst<'t, V> {
        event_type: &'t str,
        visitor: V,
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for TypeFirst<'_, V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.visitor.expecting(f)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
            self.visitor.visit_map(TypeFirstMap {
                key: Some(self.event_type),
                value: None,
                inner: map,
            })
        }
    }

    /// The object's entries, `type` first.
    struct TypeFirstMap<'t, A> {
        /// The `type` entry, until its key is taken.
        key: Option<&'t str>,
        /// The `type` entry's value, between its key and its value being taken.
        value: Option<&'t str>,
        inner: A,
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for TypeFirstMap<'_, A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            if let Some(event_type) = self.key.take() {
                self.value = Some(event_type);
                return seed
                    .deserialize(IntoDeserializer::<A::Error>::into_deserializer("type"))
                    .map(Some);
            }
            self.inner.next_key_seed(seed)
        }

        fn next_value_seed<S: DeserializeSeed<'de>>(
            &mut self,
            seed: S,
        ) -> Result<S::Value, A::Error> {
            match self.value.take() {
                Some(event_type) => {
                    seed.deserialize(IntoDeserializer::<A::Error>::into_deserializer(event_type))
                }
                None => self.inner.next_value_seed(seed),
            }
        }

        fn size_hint(&self) -> Option<usize> {
            self.inner
                .size_hint()
                .map(|n| n + usize::from(self.key.is_some()))
        }
    }
}

mod opt_base64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event type in its current stored form: decoding each fixture gives the event,
    /// and encoding the event gives the fixture back. A payload change that breaks old
    /// stored events fails here.
    #[test]
    fn golden_fixtures_of_every_event_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture");
            let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
            let stored: StoredEvent =
                serde_json::from_value(fixture["stored"].clone()).expect("stored form");
            let expected: DocumentEvent =
                serde_json::from_value(fixture["event"].clone()).expect("event");
            let decoded = decode(
                &stored.event_type,
                stored.event_version,
                stored.payload.to_string().as_bytes(),
                stored.vectors.as_deref(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(decoded, expected, "{}", path.display());
            if stored.event_version == CURRENT_EVENT_VERSION {
                assert_eq!(encode(&expected), stored, "{}", path.display());
            }
            seen.push(format!("{}.v{}", stored.event_type, stored.event_version));
        }
        for t in EVENT_TYPES {
            assert!(
                seen.contains(&format!("{t}.v1")),
                "no golden fixture for {t} v1"
            );
        }
    }

    #[test]
    fn vectors_round_trip_bit_exactly_and_compactly() {
        let event = DocumentEvent::VectorsIndexed {
            version: 3,
            chunks: (0..8)
                .map(|i| Chunk {
                    index: i,
                    text: format!("chunk {i}"),
                    vector: (0..384).map(|j| (i * 1000 + j) as f32 / 7.0).collect(),
                })
                .collect(),
        };
        let stored = encode(&event);
        assert_eq!(stored.vectors.as_ref().map(Vec::len), Some(8 * 384 * 4));
        assert!(stored.payload.to_string().len() < 400);
        let back = decode(
            &stored.event_type,
            stored.event_version,
            stored.payload.to_string().as_bytes(),
            stored.vectors.as_deref(),
        )
        .expect("decodes");
        assert_eq!(back, event);
    }

    /// A catalogue state decodes into exactly the row the projector writes for its event,
    /// whether its payload is this codec's text or PostgreSQL's `jsonb` text of it
    /// (whitespace, keys by length); a deletion is no row; what `decode` rejects stays
    /// rejected.
    #[test]
    fn catalogue_state_decodes_into_the_projectors_row() {
        let event: DocumentEvent = serde_json::from_value(serde_json::json!({
            "type": "RowInserted", "version": 4, "title": "Q3 \"report\"\t\u{e9}",
            "source_type": "pdf", "business_tag": null, "blob_sha256": "ab", "blob_size": 9,
            "chunk_count": 2,
            "attributes": {"pages": 3, "lang": "en", "note": "a b, c: d", "n": {"zz": [1.5, null], "a": {}}}
        }))
        .expect("an event");
        let expected = event.catalogue_entry();
        assert!(expected.is_some());
        let stored = encode(&event);
        let ours = serde_json::to_vec(&stored.payload).expect("serializes");
        let decoded = decode_catalogue_row("RowInserted", 1, &ours).expect("decodes");
        assert_eq!(decoded, expected);
        let jsonb = br#"{"title": "Q3 \"report\"\t\u00e9", "version": 4, "blob_size": 9, "attributes": {"n": {"a": {}, "zz": [1.5, null]}, "lang": "en", "note": "a b, c: d", "pages": 3}, "blob_sha256": "ab", "chunk_count": 2, "source_type": "pdf", "business_tag": null}"#;
        let decoded = decode_catalogue_row("RowInserted", 1, jsonb).expect("decodes");
        assert_eq!(decoded, expected);
        assert_eq!(
            decode_catalogue_row("DocumentDeleted", 1, br#"{"version":5}"#).expect("decodes"),
            None
        );
        for (event_type, version, payload) in [
            ("RowInserted", 2, ours.as_slice()),
            ("Nope", 1, br#"{"version":5}"#.as_slice()),
            ("RowInserted", 1, br#"{"version":1,"title":"T","source_type":"pdf","attributes":[1],"chunk_count":0}"#.as_slice()),
            ("RowInserted", 1, br#"{"version":1,"title":"T","source_type":"pdf","attributes":{},"chunk_count":0,"x":1}"#.as_slice()),
            ("DocumentDeleted", 1, br#"{"version":"x"}"#.as_slice()),
        ] {
            assert!(
                decode_catalogue_row(event_type, version, payload).is_err(),
                "{event_type} v{version} {}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn compact_json_is_whitespace_free_outside_strings() {
        assert!(is_compact(r#"{"a":"x y","b":[1,2],"c":"\" :"}"#));
        assert!(is_compact("{}"));
        assert!(!is_compact(r#"{"a": 1}"#));
        assert!(!is_compact(r#"{"a":"\\", "b":1}"#));
        assert!(!is_compact("{\n}"));
    }

    #[test]
    fn row_inserted_fast_path_reads_as_the_event() {
        let payloads: [&[u8]; 6] = [
            br#"{"version":3,"title":"T","source_type":"pdf","business_tag":"fin","attributes":{"a":[1,{"b":null}]},"blob_sha256":"ab","blob_size":9,"chunk_count":2}"#,
            br#"{"version":1,"title":"T","source_type":"pdf","business_tag":null,"attributes":{},"blob_sha256":null,"blob_size":null,"chunk_count":0}"#,
            // Optional fields left out.
            br#"{"version":1,"title":"T","source_type":"pdf","attributes":{},"chunk_count":0}"#,
            // Unknown field, missing required field, wrong type, trailing data.
            br#"{"version":1,"title":"T","source_type":"pdf","attributes":{},"chunk_count":0,"x":1}"#,
            br#"{"version":1,"source_type":"pdf","attributes":{},"chunk_count":0}"#,
            br#"{"version":"1","title":"T","source_type":"pdf","attributes":{},"chunk_count":0} {}"#,
        ];
        for (i, payload) in payloads.iter().enumerate() {
            let fast = decode("RowInserted", CURRENT_EVENT_VERSION, payload, None).ok();
            let tagged = decode_tagged("RowInserted", payload).ok();
            assert_eq!(fast, tagged, "payload {i}");
            assert_eq!(fast.is_some(), i < 3, "payload {i}");
        }
        let event = DocumentEvent::RowInserted {
            version: 2,
            title: "t".into(),
            source_type: "s".into(),
            business_tag: Some("b".into()),
            attributes: serde_json::Map::from_iter([("k".to_owned(), Value::from(1))]),
            blob_sha256: Some("cd".into()),
            blob_size: Some(4),
            chunk_count: 1,
        };
        let stored = encode(&event);
        let text = serde_json::to_vec(&stored.payload).expect("serializes");
        assert_eq!(
            decode("RowInserted", stored.event_version, &text, None).ok(),
            Some(event)
        );
    }

    #[test]
    fn unknown_types_versions_and_bad_payloads_are_errors() {
        assert!(decode("Nope", 1, b"{}", None).is_err());
        assert!(decode("DocumentDeleted", 9, br#"{"version": 1}"#, None).is_err());
        assert!(decode("DocumentDeleted", 1, br#"{"version": "x"}"#, None).is_err());
        assert!(decode(
            "VectorsIndexed",
            1,
            br#"{"version": 1, "dim": 2, "chunks": [{"index": 0, "text": ""}]}"#,
            Some(&[0; 4])
        )
        .is_err());
        // Not an object, trailing bytes, an unknown field, a type named inside the payload.
        assert!(decode("DocumentDeleted", 1, b"[1]", None).is_err());
        assert!(decode("DocumentDeleted", 1, br#"{"version": 1} x"#, None).is_err());
        assert!(decode("DocumentDeleted", 1, br#"{"version": 1, "extra": 2}"#, None).is_err());
        assert!(decode(
            "DocumentDeleted",
            1,
            br#"{"type": "RowInserted", "version": 1}"#,
            None
        )
        .is_err());
        // The type comes from its column; the payload's own fields keep their order.
        assert_eq!(
            decode("DocumentDeleted", 1, br#" { "version" : 7 } "#, None).expect("decodes"),
            DocumentEvent::DocumentDeleted { version: 7 }
        );
    }
}
