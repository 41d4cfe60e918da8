//! The vectors' audit: a document's chunk rows are compared with the log's newest
//! `VectorsIndexed` of it, key by key, then text and vector bits. The bulk scan reads keys
//! and versions by `doc_id` ranges (no texts or vectors), then texts and vectors only of
//! the documents whose keys are right, a few documents per query, comparing digests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aggregates::document::chunk_digest;
use aggregates::{Chunk, DocId, DocumentEvent, StoreChange, StoreKind, Version};

use super::schema::pk;
use super::{ChunkRow, MilvusSink};
use crate::audit::{
    wanted, Audit, Expected, ExpectedState, Finding, FindingKind, Progress, ScanOutcome,
};
use crate::error::SinkError;
use crate::sink::DocChange;

/// Expected chunk rows per key-scan range (far below the 16,384-row query ceiling, leaving
/// room for orphans in the same range).
const MILVUS_RANGE_ROWS: usize = 4000;
/// Expected bytes of texts and vectors per content read (below gRPC's 4 MiB).
const MILVUS_CONTENT_BYTES: usize = 2 * 1024 * 1024;
/// Documents per content read (keeps the filter expression short).
const MILVUS_CONTENT_DOCS: usize = 256;

/// The chunks Milvus holds for one document, as the aggregate would digest them (rows
/// sorted by chunk index).
fn chunks_of_rows(rows: &[&ChunkRow]) -> Vec<Chunk> {
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

/// `doc_id` bounds that cut the id space into ranges of about [`MILVUS_RANGE_ROWS`]
/// expected rows: `[None, p1), [p1, p2), …, [pn, None)`.
fn ranges<'a>(expected: &Expected<'a>) -> Vec<(Option<&'a str>, Option<&'a str>)> {
    let mut points: Vec<&str> = Vec::new();
    let mut rows = 0usize;
    for (doc_id, e) in expected.iter() {
        if let ExpectedState::Chunks { indexes, .. } = &e.state {
            if rows + indexes.len() > MILVUS_RANGE_ROWS && rows > 0 {
                points.push(doc_id);
                rows = 0;
            }
            rows += indexes.len();
        }
    }
    let mut ranges = Vec::with_capacity(points.len() + 1);
    let mut from = None;
    for p in points {
        ranges.push((from, Some(p)));
        from = Some(p);
    }
    ranges.push((from, None));
    ranges
}

impl MilvusSink {
    /// Reads texts and vectors of `checks` (documents whose keys and versions are right,
    /// with their expected digest and rough size) in groups, and nominates those whose
    /// chunks digest otherwise.
    async fn scan_contents(
        &self,
        checks: Vec<(&str, &str, usize)>,
        out: &mut ScanOutcome,
        progress: &Progress<'_>,
    ) -> Result<(), SinkError> {
        let mut checked = 0u64;
        let mut group: Vec<(&str, &str)> = Vec::new();
        let mut bytes = 0usize;
        let mut groups = Vec::new();
        for (doc_id, digest, size) in checks {
            if !group.is_empty()
                && (bytes + size > MILVUS_CONTENT_BYTES || group.len() >= MILVUS_CONTENT_DOCS)
            {
                groups.push(std::mem::take(&mut group));
                bytes = 0;
            }
            group.push((doc_id, digest));
            bytes += size;
        }
        if !group.is_empty() {
            groups.push(group);
        }
        for group in groups {
            let ids: Vec<&str> = group.iter().map(|(d, _)| *d).collect();
            let rows = self.rows_of_docs(&ids).await?;
            let mut by_doc: HashMap<&str, Vec<&ChunkRow>> = HashMap::new();
            for row in &rows {
                by_doc.entry(row.doc_id.as_str()).or_default().push(row);
            }
            for (doc_id, digest) in group {
                let rows = by_doc.remove(doc_id).unwrap_or_default();
                if chunk_digest(&chunks_of_rows(&rows)) != digest {
                    out.suspect(doc_id);
                }
                checked += 1;
            }
            progress("milvus content", checked);
        }
        Ok(())
    }
}

impl Audit for MilvusSink {
    type Found = Vec<ChunkRow>;

    fn expect(doc_id: &str, change: &StoreChange<'_>) -> ExpectedState {
        match change {
            StoreChange::Upsert(DocumentEvent::VectorsIndexed { chunks, .. })
                if !chunks.is_empty() =>
            {
                ExpectedState::Chunks {
                    indexes: chunks.iter().map(|c| c.index).collect(),
                    digest: chunk_digest(chunks),
                    approx_bytes: chunks
                        .iter()
                        .map(|c| c.text.len() + c.vector.len() * 4 + doc_id.len() + 32)
                        .sum(),
                }
            }
            // No chunks, a removal, or (never: `change_for` maps nothing else here) another event.
            _ => ExpectedState::Absent,
        }
    }

    async fn scan(
        &self,
        expected: Expected<'_>,
        progress: &Progress<'_>,
    ) -> Result<ScanOutcome, SinkError> {
        let store = StoreKind::Milvus;
        let mut out = ScanOutcome::default();
        // Documents whose keys and versions are right: their texts and vectors are read next.
        let mut content_checks: Vec<(&str, &str, usize)> = Vec::new();
        for (from, to) in ranges(&expected) {
            let keys = self.keys_between(from, to).await?;
            out.num_items += keys.len() as u64;
            let mut by_doc: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
            for key in &keys {
                if DocId::parse(&key.doc_id).is_err() {
                    out.strays.push(Finding::stray(
                        store,
                        &key.doc_id,
                        &format!("row {} has a doc_id no document can have", key.pk),
                    ));
                    continue;
                }
                by_doc
                    .entry(key.doc_id.as_str())
                    .or_default()
                    .push((key.pk.as_str(), key.version));
            }
            for (doc_id, e) in expected.range(from, to) {
                let ExpectedState::Chunks {
                    indexes,
                    digest,
                    approx_bytes,
                } = &e.state
                else {
                    continue;
                };
                let version = e.version as i64;
                let stored = by_doc.remove(doc_id).unwrap_or_default();
                let want: BTreeSet<String> = indexes.iter().map(|i| pk(doc_id, *i)).collect();
                let keys_ok = stored.len() == want.len()
                    && stored
                        .iter()
                        .all(|(pk, v)| *v == version && want.contains(*pk));
                if keys_ok {
                    content_checks.push((doc_id, digest, *approx_bytes));
                } else {
                    out.suspect(doc_id);
                }
            }
            // Rows of documents that must have none.
            for doc_id in by_doc.keys() {
                out.suspect(doc_id);
            }
            progress("milvus keys", out.num_items);
        }
        self.scan_contents(content_checks, &mut out, progress)
            .await?;
        Ok(out)
    }

    async fn read(&self, doc_id: &str) -> Result<Vec<ChunkRow>, SinkError> {
        self.rows_of(doc_id).await
    }

    fn compare(doc_id: &str, change: Option<&DocChange>, rows: &Vec<ChunkRow>) -> Option<Finding> {
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
                let mut f =
                    Finding::new(store, doc_id, FindingKind::Extra).versions(version, found);
                f.differences = rows.iter().map(|r| format!("row {}", r.pk)).collect();
                return Some(f);
            }
            (false, true) => {
                return Some(
                    Finding::new(store, doc_id, FindingKind::Missing).versions(version, None),
                )
            }
            (false, false) => {}
        }
        let versions: BTreeSet<Version> = rows.iter().map(|r| r.version).collect();
        if versions.len() > 1 || found != version {
            let mut f =
                Finding::new(store, doc_id, FindingKind::StaleVersion).versions(version, found);
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

    /// The guard deletes rows at or below the removal.
    fn removal_version(found: Version) -> Version {
        found
    }

    /// Deletes every row whose `doc_id` field is `key` (a stray's id, which no valid
    /// document has).
    async fn delete_stray(&self, key: &str) -> Result<(), SinkError> {
        self.delete_doc_id_field(key).await
    }
}
