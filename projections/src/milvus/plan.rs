//! Decides, without I/O, what a batch must write to Milvus given what Milvus holds for the
//! batch's documents (read with Strong consistency just before).
//!
//! Invariants kept here:
//! - older never wins: a change is skipped when the store already holds a newer version of
//!   the document; an upsert is also skipped when the store holds exactly its rows already
//!   (that makes replays cheap);
//! - after the plan is written, a document upserted at `v` has exactly its chunks' rows, all
//!   at `v`: rows of earlier versions that the new version does not overwrite are deleted by
//!   primary key, so fewer chunks than before leave no leftovers;
//! - a removal at `v` deletes only rows at versions `<= v`, never a newer version's rows;
//! - an interrupted write (some requests sent, then a crash) is never mistaken for a complete
//!   one: completeness means "every stored row is at `v` and the stored keys are exactly the
//!   new keys", so a replay finishes the job.

use std::collections::{HashMap, HashSet};

use aggregates::{Chunk, DocumentEvent, Version};

use crate::error::SinkError;
use crate::sink::{Batch, Change};

use super::schema::{self, TEXT_MAX_LENGTH};
use super::NAME;

/// One row as Milvus holds it, as far as the version guard needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// Primary key.
    pub pk: String,
    /// Version of the row.
    pub version: i64,
}

/// A row to upsert, borrowed from the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct RowToWrite<'a> {
    /// `"{doc_id}#{chunk_index}"`.
    pub pk: String,
    /// The document.
    pub doc_id: &'a str,
    /// Version of the document the chunk belongs to.
    pub version: i64,
    /// The chunk.
    pub chunk: &'a Chunk,
}

impl RowToWrite<'_> {
    /// Rough size of the row on the wire, to keep requests well below gRPC message limits.
    pub fn approx_bytes(&self) -> usize {
        const PER_ROW_OVERHEAD: usize = 64;
        self.pk.len()
            + self.doc_id.len()
            + self.chunk.text.len()
            + self.chunk.vector.len() * std::mem::size_of::<f32>()
            + PER_ROW_OVERHEAD
    }
}

/// What to send for one batch.
#[derive(Debug, Default, PartialEq)]
pub struct Plan<'a> {
    /// Rows to upsert, document by document, chunk by chunk.
    pub upserts: Vec<RowToWrite<'a>>,
    /// Primary keys to delete (stale chunks and removed documents).
    pub deletes: Vec<String>,
    /// Changes that write something.
    pub num_changes: usize,
}

/// The version as Milvus stores it.
fn stored_version(doc_id: &str, version: Version) -> Result<i64, SinkError> {
    i64::try_from(version).map_err(|_| {
        SinkError::permanent(
            NAME,
            "plan batch",
            format!("version {version} does not fit Milvus' INT64"),
        )
        .for_doc(doc_id)
    })
}

/// Plans `batch` against `stored` (every stored key of the batch's documents, by doc id).
///
/// # Errors
/// A permanent [`SinkError`] naming the document when a change can never be stored: a
/// vector of another dimension than `dim`, a text longer than the collection allows, or an
/// event that is not Milvus' to apply.
pub fn plan<'a>(
    batch: &'a Batch,
    stored: &HashMap<String, Vec<StoredKey>>,
    dim: usize,
) -> Result<Plan<'a>, SinkError> {
    let mut plan = Plan::default();
    let none = Vec::new();
    for change in &batch.changes {
        let doc_id = change.doc_id.as_str();
        let version = stored_version(doc_id, change.version)?;
        let keys = stored.get(doc_id).unwrap_or(&none);
        let newest = keys.iter().map(|k| k.version).max();
        match &change.change {
            Change::Upsert(DocumentEvent::VectorsIndexed { chunks, .. }) => {
                if newest.is_some_and(|n| n > version) {
                    continue;
                }
                check_chunks(doc_id, chunks, dim)?;
                let new_pks: HashSet<String> =
                    chunks.iter().map(|c| schema::pk(doc_id, c.index)).collect();
                let complete = keys.len() == new_pks.len()
                    && keys
                        .iter()
                        .all(|k| k.version == version && new_pks.contains(&k.pk));
                if complete {
                    continue;
                }
                plan.num_changes += 1;
                plan.deletes.extend(
                    keys.iter()
                        .filter(|k| !new_pks.contains(&k.pk))
                        .map(|k| k.pk.clone()),
                );
                plan.upserts.extend(chunks.iter().map(|chunk| RowToWrite {
                    pk: schema::pk(doc_id, chunk.index),
                    doc_id,
                    version,
                    chunk,
                }));
            }
            Change::Remove | Change::Erase | Change::Purge => {
                let before = plan.deletes.len();
                plan.deletes.extend(
                    keys.iter()
                        .filter(|k| k.version <= version)
                        .map(|k| k.pk.clone()),
                );
                if plan.deletes.len() > before {
                    plan.num_changes += 1;
                }
            }
            Change::Upsert(other) => {
                return Err(SinkError::permanent(
                    NAME,
                    "plan batch",
                    format!("{} is not an event for Milvus", other.type_name()),
                )
                .for_doc(doc_id));
            }
        }
    }
    Ok(plan)
}

fn check_chunks(doc_id: &str, chunks: &[Chunk], dim: usize) -> Result<(), SinkError> {
    let refuse =
        |message: String| SinkError::permanent(NAME, "plan batch", message).for_doc(doc_id);
    let mut indexes = HashSet::with_capacity(chunks.len());
    for chunk in chunks {
        if chunk.vector.len() != dim {
            return Err(refuse(format!(
                "chunk {} has a vector of {} floats, the collection holds {dim}",
                chunk.index,
                chunk.vector.len()
            )));
        }
        if chunk.text.len() > TEXT_MAX_LENGTH as usize {
            return Err(refuse(format!(
                "chunk {} has {} bytes of text, the collection holds at most {TEXT_MAX_LENGTH}",
                chunk.index,
                chunk.text.len()
            )));
        }
        if !indexes.insert(chunk.index) {
            return Err(refuse(format!("chunk index {} appears twice", chunk.index)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aggregates::{DocId, LogCursor};

    use super::*;
    use crate::error::ErrorClass;
    use crate::sink::DocChange;

    const DIM: usize = 2;

    fn vectors(version: Version, n: u32) -> Change {
        Change::Upsert(DocumentEvent::VectorsIndexed {
            version,
            chunks: (0..n)
                .map(|index| Chunk {
                    index,
                    text: format!("t{index}"),
                    vector: vec![0.5; DIM],
                })
                .collect(),
        })
    }

    fn batch(changes: Vec<(&str, Version, Change)>) -> Batch {
        Batch {
            changes: changes
                .into_iter()
                .map(|(doc, version, change)| DocChange {
                    doc_id: DocId::parse(doc).expect("valid id"),
                    version,
                    cursor: LogCursor::START,
                    change,
                })
                .collect(),
            ..Batch::default()
        }
    }

    fn stored(doc: &str, version: i64, n: u32) -> (String, Vec<StoredKey>) {
        let keys = (0..n)
            .map(|i| StoredKey {
                pk: schema::pk(doc, i),
                version,
            })
            .collect();
        (doc.to_owned(), keys)
    }

    #[test]
    fn a_new_document_is_upserted_without_deletes() {
        let b = batch(vec![("a", 1, vectors(1, 3))]);
        let p = plan(&b, &HashMap::new(), DIM).expect("plan");
        assert_eq!(p.num_changes, 1);
        let pks: Vec<_> = p.upserts.iter().map(|r| r.pk.as_str()).collect();
        assert_eq!(pks, ["a#0", "a#1", "a#2"]);
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn fewer_chunks_delete_the_leftovers_and_replays_do_nothing() {
        let b = batch(vec![("a", 2, vectors(2, 1))]);
        let p = plan(&b, &HashMap::from([stored("a", 1, 3)]), DIM).expect("plan");
        assert_eq!(p.upserts.len(), 1);
        assert_eq!(p.deletes, ["a#1", "a#2"]);

        let p = plan(&b, &HashMap::from([stored("a", 2, 1)]), DIM).expect("plan");
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn older_never_wins() {
        let b = batch(vec![("a", 1, vectors(1, 3)), ("b", 1, Change::Remove)]);
        let p = plan(
            &b,
            &HashMap::from([stored("a", 2, 1), stored("b", 2, 2)]),
            DIM,
        )
        .expect("plan");
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn an_interrupted_write_at_the_same_version_is_finished() {
        let b = batch(vec![("a", 2, vectors(2, 3))]);
        // Only chunk 0 made it at v2; chunks 1 and 2 are still v1, chunk 3 is a v1 leftover.
        let mut keys = stored("a", 1, 4);
        keys.1[0].version = 2;
        let p = plan(&b, &HashMap::from([keys]), DIM).expect("plan");
        assert_eq!(p.upserts.len(), 3);
        assert_eq!(p.deletes, ["a#3"]);
    }

    #[test]
    fn remove_deletes_only_versions_up_to_its_own() {
        let b = batch(vec![("a", 3, Change::Remove), ("b", 1, Change::Remove)]);
        let (_, mut keys) = stored("a", 2, 2);
        keys.push(StoredKey {
            pk: "a#9".into(),
            version: 4,
        });
        let p = plan(&b, &HashMap::from([("a".to_owned(), keys)]), DIM).expect("plan");
        assert_eq!(p.deletes, ["a#0", "a#1"]);
        assert_eq!(p.num_changes, 1);
    }

    #[test]
    fn data_milvus_can_never_hold_is_refused_naming_the_document() {
        let bad_dim = batch(vec![(
            "a",
            1,
            Change::Upsert(DocumentEvent::VectorsIndexed {
                version: 1,
                chunks: vec![Chunk {
                    index: 0,
                    text: "x".into(),
                    vector: vec![0.0; DIM + 1],
                }],
            }),
        )]);
        let too_long = batch(vec![(
            "b",
            1,
            Change::Upsert(DocumentEvent::VectorsIndexed {
                version: 1,
                chunks: vec![Chunk {
                    index: 0,
                    text: "x".repeat(TEXT_MAX_LENGTH as usize + 1),
                    vector: vec![0.0; DIM],
                }],
            }),
        )]);
        for (b, doc) in [(bad_dim, "a"), (too_long, "b")] {
            let err = plan(&b, &HashMap::new(), DIM).expect_err("refused");
            assert_eq!(err.class, ErrorClass::Permanent);
            assert_eq!(err.doc_id.as_deref(), Some(doc));
        }
    }
}
