//! The contract's Milvus collection (docs/stores.md): field names, the
//! schema, the vector index, and the filter literals built from document ids.
//!
//! Invariants: a row's primary key is always `"{doc_id}#{chunk_index}"`; the collection is
//! only ever used with the dimension it was created with; every string that enters a filter
//! expression goes through [`string_literal`], which refuses what it cannot quote safely.

use std::collections::HashMap;

use ::milvus::v2::prelude::{
    CollectionSchema, DataType, FieldSchema, IndexParam, IndexType, MetricType,
};

use crate::error::SinkError;

use super::NAME;

/// Primary key: `"{doc_id}#{chunk_index}"`.
pub const FIELD_PK: &str = "pk";
/// The document the chunk belongs to.
pub const FIELD_DOC_ID: &str = "doc_id";
/// 0-based chunk index within the document version.
pub const FIELD_CHUNK_INDEX: &str = "chunk_index";
/// The document version the row belongs to.
pub const FIELD_VERSION: &str = "version";
/// The chunk's text.
pub const FIELD_TEXT: &str = "text";
/// The chunk's embedding.
pub const FIELD_EMBEDDING: &str = "embedding";

/// Longest primary key (a 255-byte doc id, `#` and an index fit with room to spare).
pub const PK_MAX_LENGTH: u32 = 512;
/// Longest doc id (the contract's limit).
pub const DOC_ID_MAX_LENGTH: u32 = 255;
/// Longest chunk text, in bytes (Milvus' VarChar limit, which the API enforces on every put).
pub const TEXT_MAX_LENGTH: u32 = aggregates::MAX_CHUNK_TEXT_BYTES as u32;

/// HNSW graph degree. Milvus 2.3 refuses an HNSW index without explicit `M`.
const HNSW_M: &str = "16";
/// HNSW build-time candidate list. Milvus 2.3 refuses an HNSW index without it.
const HNSW_EF_CONSTRUCTION: &str = "64";

/// Separates the doc id from the chunk index in a primary key. Never part of a doc id.
const PK_SEPARATOR: char = '#';

/// The primary key of chunk `index` of `doc_id`.
pub fn pk(doc_id: &str, index: u32) -> String {
    format!("{doc_id}{PK_SEPARATOR}{index}")
}

/// The doc id part of a primary key.
pub fn doc_id_of_pk(pk: &str) -> &str {
    pk.rsplit_once(PK_SEPARATOR).map_or(pk, |(doc, _)| doc)
}

/// The contract's schema with vectors of `dim` floats.
pub fn collection_schema(dim: u32) -> CollectionSchema {
    CollectionSchema::new()
        .add_field(
            FieldSchema::new()
                .name(FIELD_PK)
                .data_type(DataType::VarChar)
                .max_length(PK_MAX_LENGTH)
                .primary_key(true)
                .auto_id(false),
        )
        .add_field(
            FieldSchema::new()
                .name(FIELD_DOC_ID)
                .data_type(DataType::VarChar)
                .max_length(DOC_ID_MAX_LENGTH),
        )
        .add_field(
            FieldSchema::new()
                .name(FIELD_CHUNK_INDEX)
                .data_type(DataType::Int64),
        )
        .add_field(
            FieldSchema::new()
                .name(FIELD_VERSION)
                .data_type(DataType::Int64),
        )
        .add_field(
            FieldSchema::new()
                .name(FIELD_TEXT)
                .data_type(DataType::VarChar)
                .max_length(TEXT_MAX_LENGTH),
        )
        .add_field(
            FieldSchema::new()
                .name(FIELD_EMBEDDING)
                .data_type(DataType::FloatVector)
                .dimension(dim),
        )
}

/// The vector index: HNSW over L2 with explicit build parameters.
pub fn embedding_index() -> IndexParam {
    IndexParam::new()
        .field_name(FIELD_EMBEDDING)
        .index_type(IndexType::Hnsw)
        .metric_type(MetricType::L2)
        .extra_params(HashMap::from([
            ("M".to_owned(), HNSW_M.to_owned()),
            ("efConstruction".to_owned(), HNSW_EF_CONSTRUCTION.to_owned()),
        ]))
}

/// Checks that an existing collection has the contract's fields and `dim`.
///
/// # Errors
/// A permanent [`SinkError`] naming the first difference (most often another dimension):
/// writing into such a collection can never succeed.
pub fn check_schema(
    collection: &str,
    existing: &CollectionSchema,
    dim: u32,
) -> Result<(), SinkError> {
    let expected = collection_schema(dim);
    let mismatch = |what: String| {
        SinkError::permanent(
            NAME,
            "check collection schema",
            format!("collection {collection} does not match the contract: {what}"),
        )
    };
    for want in expected.get_fields() {
        let Some(have) = existing
            .get_fields()
            .iter()
            .find(|f| f.get_name() == want.get_name())
        else {
            return Err(mismatch(format!("field {} is missing", want.get_name())));
        };
        if have.get_data_type() != want.get_data_type() {
            return Err(mismatch(format!(
                "field {} is {:?}, expected {:?}",
                want.get_name(),
                have.get_data_type(),
                want.get_data_type()
            )));
        }
        if have.is_primary_key() != want.is_primary_key() {
            return Err(mismatch(format!(
                "field {} primary key is {}, expected {}",
                want.get_name(),
                have.is_primary_key(),
                want.is_primary_key()
            )));
        }
        if want.get_data_type() == DataType::FloatVector && have.get_dimension() != dim {
            return Err(mismatch(format!(
                "field {} has dimension {}, expected {dim} (DOCLEDGER_VECTOR_DIM)",
                want.get_name(),
                have.get_dimension()
            )));
        }
    }
    Ok(())
}

/// `value` as a double-quoted Milvus string literal.
///
/// # Errors
/// A permanent [`SinkError`] when `value` holds `"`, `\` or a control character: valid doc
/// ids never do, and refusing is safer than trusting the server's unescaping rules.
pub fn string_literal(value: &str) -> Result<String, SinkError> {
    if value
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(SinkError::permanent(
            NAME,
            "build filter",
            format!("cannot quote {value:?} in a filter expression"),
        )
        .for_doc(value));
    }
    Ok(format!("\"{value}\""))
}

/// `doc_id in ["a", "b", ...]`.
///
/// # Errors
/// As [`string_literal`].
pub fn doc_id_in<'a>(doc_ids: impl IntoIterator<Item = &'a str>) -> Result<String, SinkError> {
    let literals = doc_ids
        .into_iter()
        .map(string_literal)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{FIELD_DOC_ID} in [{}]", literals.join(", ")))
}

/// `pk in ["a#0", "a#1", ...]`: the cheapest delete Milvus has (no query behind it).
///
/// # Errors
/// As [`string_literal`].
pub fn pk_in<'a>(pks: impl IntoIterator<Item = &'a str>) -> Result<String, SinkError> {
    let literals = pks
        .into_iter()
        .map(string_literal)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("{FIELD_PK} in [{}]", literals.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn primary_keys_round_trip_to_their_document() {
        let pk = pk("a/b:c@d.e-f_g", 12);
        assert_eq!(pk, "a/b:c@d.e-f_g#12");
        assert_eq!(doc_id_of_pk(&pk), "a/b:c@d.e-f_g");
    }

    #[test]
    fn filters_quote_ids_and_refuse_what_they_cannot_quote() {
        assert_eq!(
            doc_id_in(["a", "b/c"]).expect("quotable"),
            r#"doc_id in ["a", "b/c"]"#
        );
        assert_eq!(pk_in(["a#0"]).expect("quotable"), r#"pk in ["a#0"]"#);
        for bad in ["a\"b", "a\\b", "a\nb"] {
            let err = doc_id_in([bad]).expect_err("refused");
            assert_eq!(err.class, ErrorClass::Permanent);
            assert_eq!(err.doc_id.as_deref(), Some(bad));
        }
    }

    #[test]
    fn schema_check_names_a_dimension_mismatch() {
        let existing = collection_schema(8);
        assert!(check_schema("c", &existing, 8).is_ok());
        let err = check_schema("c", &existing, 384).expect_err("mismatch");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("dimension 8, expected 384"), "{err}");
    }
}
