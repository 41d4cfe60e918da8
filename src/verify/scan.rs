//! The bulk pass of a full verification: the log once, then each store scans itself in
//! pages against the digests ([`AuditedStore::scan`]). It only nominates suspects; each
//! store's precise comparison decides about each one.
//!
//! Memory: one [`ExpectedDoc`] per document (ids, versions, digests; no texts, vectors or
//! bytes), plus what one store's scan holds at a time.

use std::collections::BTreeMap;

use aggregates::{LogCursor, StoreKind};
use projections::audit::{AuditedStore, Expected, ExpectedState, Progress};

use super::{ExpectedDoc, Finding, StoreScan, VerifyError};
use crate::eventlog::PgLog;

/// Events read per log page.
const LOG_PAGE: usize = 1000;

/// What the bulk pass found.
pub(super) struct Scanned {
    pub log_head: LogCursor,
    pub num_documents: u64,
    pub stores: Vec<StoreScan>,
    /// Documents to check precisely, and in which stores.
    pub suspects: BTreeMap<String, Vec<StoreKind>>,
    pub strays: Vec<Finding>,
}

pub(super) async fn scan(
    log: &PgLog,
    stores: &[&dyn AuditedStore<PgLog>],
    progress: &Progress<'_>,
) -> Result<Scanned, VerifyError> {
    let (expected, log_head) = read_log(log, stores, progress).await?;
    let mut suspects: BTreeMap<String, Vec<StoreKind>> = BTreeMap::new();
    let mut strays = Vec::new();
    let mut scans = Vec::with_capacity(stores.len());
    for store in stores {
        let kind = store.store();
        let outcome = store.scan(Expected::new(&expected, kind), progress).await?;
        for doc_id in outcome.suspects {
            suspects.entry(doc_id).or_default().push(kind);
        }
        strays.extend(outcome.strays);
        scans.push(StoreScan {
            store: kind.name(),
            num_items: outcome.num_items,
            num_expected_documents: count_expected(&expected, kind),
            num_findings: 0,
        });
    }
    Ok(Scanned {
        log_head,
        num_documents: expected.len() as u64,
        stores: scans,
        suspects,
        strays,
    })
}

/// Every document's expectations in every store, folded from the whole log through the
/// stores' ports, and the cursor the log was read up to.
async fn read_log(
    log: &PgLog,
    stores: &[&dyn AuditedStore<PgLog>],
    progress: &Progress<'_>,
) -> Result<(BTreeMap<String, ExpectedDoc>, LogCursor), VerifyError> {
    let mut expected: BTreeMap<String, ExpectedDoc> = BTreeMap::new();
    let mut cursor = LogCursor::START;
    let mut num_events = 0u64;
    loop {
        let page = log.reads().read_after(cursor, LOG_PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.cursor;
        for recorded in &page {
            let doc_id = recorded.doc_id.as_str();
            let doc = expected.entry(doc_id.to_owned()).or_default();
            for store in stores {
                doc.apply(store.store(), recorded, |change| {
                    store.expect(doc_id, change)
                });
            }
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
