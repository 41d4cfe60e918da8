//! The bulk pass of a full verification: the log once, then each store in pages, comparing
//! digests. It only nominates suspects; [`super::compare`] decides about each one.
//!
//! Memory: one [`ExpectedDoc`] per document (ids, versions, digests; no texts, vectors or
//! bytes), plus one page of a store at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use aggregates::document::chunk_digest;
use aggregates::{DocId, LogCursor, StoreKind};
use futures::stream::{self, StreamExt};
use projections::milvus::{schema::pk, ChunkRow};
use projections::s3::KEY_PREFIX;
use projections::Partition;

use super::compare::Finding;
use super::expected::{chunks_of_rows, sha256_hex, ExpectedDoc, ExpectedState, RowFields};
use super::{StoreScan, VerifyError};
use crate::eventlog::PgLog;
use crate::stores::Stores;

/// Events read per log page.
const LOG_PAGE: usize = 1000;
/// Catalogue rows read per page.
const MYSQL_PAGE: usize = 1000;
/// Expected chunk rows per Milvus key-scan range (far below the 16,384-row query ceiling,
/// leaving room for orphans in the same range).
const MILVUS_RANGE_ROWS: usize = 4000;
/// Expected bytes of texts and vectors per Milvus content read (below gRPC's 4 MiB).
const MILVUS_CONTENT_BYTES: usize = 2 * 1024 * 1024;
/// Documents per Milvus content read (keeps the filter expression short).
const MILVUS_CONTENT_DOCS: usize = 256;

/// What the bulk pass found.
pub(super) struct Scanned {
    pub log_head: LogCursor,
    pub num_documents: u64,
    pub stores: Vec<StoreScan>,
    /// Documents to check precisely, and in which stores.
    pub suspects: BTreeMap<String, Vec<StoreKind>>,
    pub strays: Vec<Finding>,
}

struct Suspects(BTreeMap<String, Vec<StoreKind>>);

impl Suspects {
    fn add(&mut self, doc_id: &str, store: StoreKind) {
        let stores = self.0.entry(doc_id.to_owned()).or_default();
        if !stores.contains(&store) {
            stores.push(store);
        }
    }
}

pub(super) async fn scan(
    log: &PgLog,
    stores: &Stores,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Scanned, VerifyError> {
    let (expected, log_head) = read_log(log, progress).await?;
    let mut suspects = Suspects(BTreeMap::new());
    let mut strays = Vec::new();
    let mysql = scan_mysql(stores, &expected, &mut suspects, progress).await?;
    let milvus = scan_milvus(stores, &expected, &mut suspects, &mut strays, progress).await?;
    let s3 = scan_s3(stores, &expected, &mut suspects, &mut strays, progress).await?;
    Ok(Scanned {
        log_head,
        num_documents: expected.len() as u64,
        stores: vec![mysql, milvus, s3],
        suspects: suspects.0,
        strays,
    })
}

async fn read_log(
    log: &PgLog,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<(BTreeMap<String, ExpectedDoc>, LogCursor), VerifyError> {
    let mut expected: BTreeMap<String, ExpectedDoc> = BTreeMap::new();
    let mut cursor = LogCursor::START;
    let mut num_events = 0u64;
    loop {
        let page = log
            .reads()
            .read_after(cursor, Partition::ALL, LOG_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        for recorded in &page {
            expected
                .entry(recorded.doc_id.as_str().to_owned())
                .or_default()
                .apply(recorded);
        }
        num_events += page.len() as u64;
        progress("log", num_events);
    }
    Ok((expected, cursor))
}

fn count_expected(expected: &BTreeMap<String, ExpectedDoc>, store: StoreKind) -> u64 {
    expected
        .values()
        .filter(|d| !matches!(d.state(store), ExpectedState::Absent))
        .count() as u64
}

async fn scan_mysql(
    stores: &Stores,
    expected: &BTreeMap<String, ExpectedDoc>,
    suspects: &mut Suspects,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<StoreScan, VerifyError> {
    let store = StoreKind::Mysql;
    let mut seen = 0u64;
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let rows = stores
            .mysql
            .rows_after(after.as_deref(), MYSQL_PAGE)
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.doc_id.clone());
        for row in &rows {
            seen += 1;
            let want = expected.get_key_value(row.doc_id.as_str());
            let ok = want.is_some_and(|(_, doc)| {
                doc.of(store).is_some_and(|e| {
                    e.version == row.version
                        && e.state == ExpectedState::Row(RowFields::of_row(row).digest())
                })
            });
            match want {
                Some((id, _)) if ok => {
                    matched.insert(id.as_str());
                }
                _ => suspects.add(&row.doc_id, store),
            }
        }
        progress("mysql", seen);
    }
    for (doc_id, doc) in expected {
        if matches!(doc.state(store), ExpectedState::Row(_)) && !matched.contains(doc_id.as_str()) {
            suspects.add(doc_id, store);
        }
    }
    Ok(StoreScan {
        store: store.name(),
        num_items: seen,
        num_expected_documents: count_expected(expected, store),
        num_findings: 0,
    })
}

/// `doc_id` bounds that cut the id space into ranges of about [`MILVUS_RANGE_ROWS`]
/// expected rows: `[None, p1), [p1, p2), …, [pn, None)`.
fn milvus_ranges(expected: &BTreeMap<String, ExpectedDoc>) -> Vec<(Option<&str>, Option<&str>)> {
    let mut points: Vec<&str> = Vec::new();
    let mut rows = 0usize;
    for (doc_id, doc) in expected {
        if let ExpectedState::Chunks { indexes, .. } = doc.state(StoreKind::Milvus) {
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

async fn scan_milvus(
    stores: &Stores,
    expected: &BTreeMap<String, ExpectedDoc>,
    suspects: &mut Suspects,
    strays: &mut Vec<Finding>,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<StoreScan, VerifyError> {
    let store = StoreKind::Milvus;
    let mut seen = 0u64;
    // Documents whose keys and versions are right: their texts and vectors are read next.
    let mut content_checks: Vec<(&str, &str, usize)> = Vec::new();
    for (from, to) in milvus_ranges(expected) {
        let keys = stores.milvus.keys_between(from, to).await?;
        seen += keys.len() as u64;
        let mut by_doc: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
        for key in &keys {
            if DocId::parse(&key.doc_id).is_err() {
                strays.push(Finding::stray(
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
        let lower = from.map_or(Bound::Unbounded, Bound::Included);
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        for (doc_id, doc) in expected.range::<str, _>((lower, upper)) {
            let ExpectedState::Chunks {
                indexes,
                digest,
                approx_bytes,
            } = doc.state(store)
            else {
                continue;
            };
            let version = doc.of(store).map_or(0, |e| e.version) as i64;
            let stored = by_doc.remove(doc_id.as_str()).unwrap_or_default();
            let want: BTreeSet<String> = indexes.iter().map(|i| pk(doc_id, *i)).collect();
            let keys_ok = stored.len() == want.len()
                && stored
                    .iter()
                    .all(|(pk, v)| *v == version && want.contains(*pk));
            if keys_ok {
                content_checks.push((doc_id, digest, *approx_bytes));
            } else {
                suspects.add(doc_id, store);
            }
        }
        // Rows of documents that must have none.
        for doc_id in by_doc.keys() {
            suspects.add(doc_id, store);
        }
        progress("milvus keys", seen);
    }
    let mut checked = 0u64;
    let mut group: Vec<(&str, &str)> = Vec::new();
    let mut bytes = 0usize;
    let mut groups = Vec::new();
    for (doc_id, digest, size) in content_checks {
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
        let rows = stores.milvus.rows_of_docs(&ids).await?;
        let mut by_doc: HashMap<&str, Vec<&ChunkRow>> = HashMap::new();
        for row in &rows {
            by_doc.entry(row.doc_id.as_str()).or_default().push(row);
        }
        for (doc_id, digest) in group {
            let rows = by_doc.remove(doc_id).unwrap_or_default();
            if chunk_digest(&chunks_of_rows(&rows)) != digest {
                suspects.add(doc_id, store);
            }
            checked += 1;
        }
        progress("milvus content", checked);
    }
    Ok(StoreScan {
        store: store.name(),
        num_items: seen,
        num_expected_documents: count_expected(expected, store),
        num_findings: 0,
    })
}

async fn scan_s3(
    stores: &Stores,
    expected: &BTreeMap<String, ExpectedDoc>,
    suspects: &mut Suspects,
    strays: &mut Vec<Finding>,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<StoreScan, VerifyError> {
    let store = StoreKind::S3;
    let keys = stores.s3.list_keys("").await?;
    let mut present: BTreeSet<&str> = BTreeSet::new();
    let mut to_read: Vec<(&str, &str, u64, u64)> = Vec::new();
    for key in &keys {
        let doc_id = key
            .strip_prefix(KEY_PREFIX)
            .filter(|d| DocId::parse(d).is_ok());
        let Some(doc_id) = doc_id else {
            strays.push(Finding::stray(
                store,
                key,
                "object key is not docs/{doc_id} of a valid document id",
            ));
            continue;
        };
        present.insert(doc_id);
        let want = expected.get(doc_id).and_then(|d| d.of(store));
        match want {
            Some(e) => match &e.state {
                ExpectedState::Blob { sha256, size } => {
                    to_read.push((doc_id, sha256.as_str(), *size, e.version));
                }
                _ => suspects.add(doc_id, store),
            },
            None => suspects.add(doc_id, store),
        }
    }
    for (doc_id, doc) in expected {
        if matches!(doc.state(store), ExpectedState::Blob { .. })
            && !present.contains(doc_id.as_str())
        {
            suspects.add(doc_id, store);
        }
    }
    let s3 = &stores.s3;
    let reads: Vec<_> = to_read
        .into_iter()
        .map(|(doc_id, sha256, size, version)| async move {
            let object = s3.object(doc_id).await?;
            let ok = object.is_some_and(|o| {
                o.version == Some(version)
                    && o.sha256.as_deref() == Some(sha256)
                    && o.bytes.len() as u64 == size
                    && sha256_hex(&o.bytes) == sha256
            });
            Ok::<_, VerifyError>((doc_id, ok))
        })
        .collect();
    let mut results = stream::iter(reads).buffer_unordered(projections::s3::CONCURRENT_REQUESTS);
    let mut read = 0u64;
    while let Some(result) = results.next().await {
        let (doc_id, ok) = result?;
        if !ok {
            suspects.add(doc_id, store);
        }
        read += 1;
        progress("s3", read);
    }
    Ok(StoreScan {
        store: store.name(),
        num_items: keys.len() as u64,
        num_expected_documents: count_expected(expected, store),
        num_findings: 0,
    })
}
