//! Repairs findings through the stores' own projection writes: each affected document gets
//! its log's newest change for the store applied again with `Sink::apply`, after removing
//! what the version guard would otherwise protect (content tampered at the same version, or
//! a version the log never reached). Orphans get a removal; strays, which no document
//! owns, are deleted by key.
//!
//! Safe against the running projectors: every write is a guarded sink write, so a repair
//! never removes or overwrites a version newer than the one it read from the log.

use std::collections::BTreeMap;

use aggregates::{DocId, LogCursor, StoreKind, Version};
use projections::audit::AuditedStore;
use projections::sink::{Change, DocChange};
use projections::AppliedVersion;
use serde::Serialize;
use tracing::info;

use super::{DocChanges, Finding, FindingKind, Verifier, VerifyError};
use crate::eventlog::PgLog;

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSummary {
    /// Documents whose newest change was re-applied to a store.
    pub num_reapplied: u64,
    /// Documents whose store data was removed first (orphans, or data the guard protects).
    pub num_removed: u64,
    /// Stray objects or rows deleted.
    pub num_strays_deleted: u64,
}

pub(super) async fn repair(
    verifier: &Verifier,
    findings: &[Finding],
) -> Result<RepairSummary, VerifyError> {
    let mut summary = RepairSummary::default();
    let mut by_doc: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for finding in findings {
        if finding.kind == FindingKind::Stray {
            delete_stray(verifier, finding).await?;
            summary.num_strays_deleted += 1;
        } else {
            by_doc.entry(&finding.doc_id).or_default().push(finding);
        }
    }
    for (doc_id, findings) in by_doc {
        let Ok(id) = DocId::parse(doc_id) else {
            continue;
        };
        // A fresh read: the document may have moved on since the scan.
        let records = verifier.log.reads().stream_records(&id).await?;
        let changes = DocChanges::of(&records);
        let part = verifier.partition_of(doc_id);
        for finding in findings {
            let kind = StoreKind::from_name(finding.store).expect("findings name a store");
            let store = verifier.store(kind);
            let change = changes.get(kind);
            let force = matches!(
                finding.kind,
                FindingKind::Extra | FindingKind::ContentMismatch
            ) || finding.found_version > finding.expected_version;
            if force {
                // The removal that makes the store's guard delete what it holds.
                let found = finding.found_version.unwrap_or(0);
                let logged = change.map_or(0, |c| c.version);
                let version = store.removal_version(found).max(logged);
                let removal = DocChange {
                    doc_id: id.clone(),
                    version,
                    cursor: LogCursor::START,
                    change: Change::Purge,
                };
                store.apply_one(&verifier.log, part, removal).await?;
                summary.num_removed += 1;
            }
            if let Some(change) = change.filter(|c| matches!(c.change, Change::Upsert(_))) {
                store.apply_one(&verifier.log, part, change.clone()).await?;
                summary.num_reapplied += 1;
                if store.keeps_readiness() {
                    restore_ready(verifier, store, &id, change.version).await?;
                }
            }
            info!(
                store = finding.store,
                doc_id,
                kind = finding.kind.as_str(),
                "repaired"
            );
        }
    }
    Ok(summary)
}

/// A re-applied document starts not ready in a store that keeps readiness; when the tracker
/// already recorded the version as ready, the store must say so again.
async fn restore_ready(
    verifier: &Verifier,
    store: &dyn AuditedStore<PgLog>,
    doc_id: &DocId,
    version: Version,
) -> Result<(), VerifyError> {
    let ready = verifier
        .log
        .reads()
        .stream_state(doc_id)
        .await?
        .is_some_and(|s| s.version == version && s.ready_version >= version);
    if ready {
        store
            .mark_ready(AppliedVersion {
                doc_id: doc_id.clone(),
                version,
            })
            .await?;
    }
    Ok(())
}

async fn delete_stray(verifier: &Verifier, finding: &Finding) -> Result<(), VerifyError> {
    if let Some(kind) = StoreKind::from_name(finding.store) {
        verifier.store(kind).delete_stray(&finding.doc_id).await?;
    }
    info!(store = finding.store, key = %finding.doc_id, "deleted stray");
    Ok(())
}
