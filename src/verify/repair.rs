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
use projections::sink::{Change, DocChange};
use projections::{AppliedVersion, Batch, LogSource, Sink};
use serde::Serialize;
use tracing::info;

use super::compare::{Finding, FindingKind};
use super::{DocChanges, Verifier, VerifyError};
use crate::eventlog::LogError;

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

/// The removal version that makes `store`'s guard delete data at `found`: MySQL deletes
/// rows older than the removal, Milvus and S3 rows/objects at or below it.
fn removal_version(store: StoreKind, found: Version) -> Version {
    match store {
        StoreKind::Mysql => found + 1,
        StoreKind::Milvus | StoreKind::S3 => found,
    }
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
        for finding in findings {
            let store = StoreKind::from_name(finding.store).expect("findings name a store");
            let change = changes.get(store);
            let force = matches!(
                finding.kind,
                FindingKind::Extra | FindingKind::ContentMismatch
            ) || finding.found_version > finding.expected_version;
            if force {
                let found = finding.found_version.unwrap_or(0);
                let logged = change.map_or(0, |c| c.version);
                let version = removal_version(store, found).max(logged);
                let removal = DocChange {
                    doc_id: id.clone(),
                    version,
                    cursor: LogCursor::START,
                    change: Change::Purge,
                };
                apply(verifier, store, removal).await?;
                summary.num_removed += 1;
            }
            if let Some(change) = change.filter(|c| matches!(c.change, Change::Upsert(_))) {
                apply(verifier, store, change.clone()).await?;
                summary.num_reapplied += 1;
                if store == StoreKind::Mysql {
                    restore_ready(verifier, &id, change.version).await?;
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

/// Applies one change with the store's sink, leaving its checkpoint where it is.
async fn apply(
    verifier: &Verifier,
    store: StoreKind,
    change: DocChange,
) -> Result<(), VerifyError> {
    let log_id = verifier.log.log_id().to_owned();
    let part = verifier.partition_of(change.doc_id.as_str());
    // `end` = START: the sinks only move a checkpoint forward, so this one never moves it.
    let mut batch = Batch::single(change, LogCursor::START, &Default::default());
    // Deletes win here too: a put the log has deleted since the fresh read is not written
    // (MySQL's tombstones see to it themselves).
    if store != StoreKind::Mysql {
        let deleted = LogSource::deleted_since(&verifier.log, &batch.puts())
            .await
            .map_err(|e| LogError::Unavailable {
                operation: "check deletions",
                message: e.to_string(),
            })?;
        batch.drop_puts_of(&deleted);
    }
    match store {
        StoreKind::Mysql => {
            verifier.stores.mysql.apply(&log_id, part, &batch).await?;
        }
        StoreKind::Milvus => {
            verifier.stores.milvus.apply(&log_id, part, &batch).await?;
        }
        StoreKind::S3 => {
            let shas = batch.blob_shas();
            if !shas.is_empty() {
                batch.blobs = LogSource::load_blobs(&verifier.log, &shas)
                    .await
                    .map_err(|e| LogError::Unavailable {
                        operation: "load blobs",
                        message: e.to_string(),
                    })?;
            }
            verifier.stores.s3.apply(&log_id, part, &batch).await?;
        }
    }
    Ok(())
}

/// A re-inserted row starts `pending`; when the tracker already recorded the version as
/// ready, the row must say so again.
async fn restore_ready(
    verifier: &Verifier,
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
        verifier
            .stores
            .mysql
            .mark_ready(&[AppliedVersion {
                doc_id: doc_id.clone(),
                version,
            }])
            .await?;
    }
    Ok(())
}

async fn delete_stray(verifier: &Verifier, finding: &Finding) -> Result<(), VerifyError> {
    match StoreKind::from_name(finding.store) {
        Some(StoreKind::S3) => verifier.stores.s3.delete_key(&finding.doc_id).await?,
        Some(StoreKind::Milvus) => {
            verifier
                .stores
                .milvus
                .delete_doc_id_field(&finding.doc_id)
                .await?
        }
        _ => {}
    }
    info!(store = finding.store, key = %finding.doc_id, "deleted stray");
    Ok(())
}
