//! Compares every store with the state the log implies, and repairs what differs through
//! the stores' own projection writes (`Sink::apply`).
//!
//! A generic orchestrator over the stores' audit ports ([`projections::audit`]), as the
//! runner is over their sinks: a full verification scans the log once, keeping a small
//! digest per document and store (each store's `Audit::expect`), then has each store scan
//! itself in pages against those digests (`scan.rs`). Every document that looks wrong is
//! then checked precisely against a fresh read of its own events (each store's
//! `Audit::compare`), so the report names exactly what differs; a difference whose store
//! projector has not yet reached the document's newest event is flagged `in_flight`
//! (projection lag, not drift). Which stores there are is said once, in
//! [`Stores::audited`].
//!
//! Invariants: verification never writes; repair only writes what the log's newest change
//! of the document asks for, with the sinks' version guards, so a repair racing the
//! projectors can never move a store backwards.

pub mod background;
mod repair;
mod scan;

use std::collections::HashMap;
use std::sync::Arc;

use aggregates::{DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind};
use projections::audit::{store_index, AuditError, AuditedStore};
use projections::sink::DocChange;
use projections::{Batch, Partition, SinkError};
use serde::Serialize;

pub use background::VerifyStats;
pub use projections::audit::{Expectation, ExpectedDoc, ExpectedState, Finding, FindingKind};
pub use repair::RepairSummary;

use crate::eventlog::{ErasureCheck, LogError, PgLog};
use crate::stores::Stores;

/// Why verification could not run to the end (a finding is not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A store could not be read or written.
    #[error(transparent)]
    Store(#[from] SinkError),
}

impl From<AuditError> for VerifyError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(e) => VerifyError::Store(e),
            AuditError::Log { operation, source } => VerifyError::Log(LogError::Unavailable {
                operation,
                message: source.to_string(),
            }),
        }
    }
}

/// What one store held during a full verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreScan {
    /// `mysql` | `milvus` | `s3`.
    pub store: &'static str,
    /// Rows, chunk rows or objects read.
    pub num_items: u64,
    /// Documents the log says the store must hold.
    pub num_expected_documents: u64,
    /// Findings about this store (in flight included).
    pub num_findings: u64,
}

/// The outcome of a full verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// How far the log was read.
    pub log_head: LogCursor,
    /// Documents in the log.
    pub num_documents: u64,
    /// Per store.
    pub stores: Vec<StoreScan>,
    /// Every difference, ordered by store, document and kind.
    pub findings: Vec<Finding>,
    /// The log's part of every erasure's proof: the erased documents, and anything of
    /// their content the log still holds (the stores' part is in `findings`: an erased
    /// document is expected in no store).
    pub erasures: ErasureCheck,
}

impl VerifyReport {
    /// Every store matches the log (no finding, not even one in flight).
    pub fn matches(&self) -> bool {
        self.findings.is_empty() && self.erasures.leaks.is_empty()
    }

    /// Findings that are drift (not explained by projection lag).
    pub fn num_drift(&self) -> usize {
        self.findings.iter().filter(|f| !f.in_flight).count()
    }

    /// A human summary: one line per store, then one line per finding.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "log read up to {} ({} documents)",
            self.log_head, self.num_documents
        );
        for s in &self.stores {
            let verdict = if s.num_findings == 0 { "ok" } else { "DIFFERS" };
            let _ = writeln!(
                out,
                "{:<7} {verdict:<8} {} items read, {} documents expected, {} findings",
                s.store, s.num_items, s.num_expected_documents, s.num_findings
            );
        }
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {} {} {}: expected v{}, found v{}{}{}",
                f.store,
                f.kind.as_str(),
                f.doc_id,
                f.expected_version.map_or("-".into(), |v| v.to_string()),
                f.found_version.map_or("-".into(), |v| v.to_string()),
                if f.in_flight { " (in flight)" } else { "" },
                if f.differences.is_empty() {
                    String::new()
                } else {
                    format!(": {}", f.differences.join("; "))
                },
            );
        }
        let erasures = &self.erasures;
        let _ = writeln!(
            out,
            "{:<7} {:<8} {} erased documents, {} traces of their content left",
            "log",
            if erasures.leaks.is_empty() {
                "ok"
            } else {
                "DIFFERS"
            },
            erasures.erased_documents,
            erasures.leaks.len()
        );
        for leak in &erasures.leaks {
            let _ = writeln!(out, "  log erasure {}: {}", leak.doc_id, leak.what);
        }
        let _ = write!(
            out,
            "{}",
            if self.matches() {
                "every store matches the log"
            } else {
                "stores differ from the log"
            }
        );
        out
    }
}

/// One document's verification (`GET /v1/documents/{doc_id}?verify=true`).
#[derive(Debug, Clone, Serialize)]
pub struct DocumentVerification {
    /// Every store holds exactly what the log implies, and, for an erased document, the
    /// log holds none of its content.
    pub matches: bool,
    /// What differs.
    pub findings: Vec<Finding>,
    /// For an erased document: what the log still holds of its content (the per-document
    /// part of `docledger verify`'s `log` line); empty otherwise.
    pub erasure_leaks: Vec<String>,
}

/// Compares the stores with the log; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    log: PgLog,
    stores: Stores,
    partitions: u32,
    stats: Arc<VerifyStats>,
}

/// The newest change of each store for one document, from its events.
pub(crate) struct DocChanges {
    changes: [Option<DocChange>; StoreKind::ALL.len()],
}

impl DocChanges {
    fn of(records: &[RecordedEvent<DocumentEvent>]) -> DocChanges {
        let end = records.last().map_or(LogCursor::START, |r| r.cursor);
        let newest = |store| Batch::coalesce(store, end, records).changes.pop();
        DocChanges {
            changes: StoreKind::ALL.map(newest),
        }
    }

    pub(crate) fn get(&self, store: StoreKind) -> Option<&DocChange> {
        self.changes[store_index(store)].as_ref()
    }
}

/// Store checkpoints per store and partition, to tell lag from drift.
struct Checkpoints(HashMap<(StoreKind, u32), LogCursor>);

impl Verifier {
    /// A verifier over `log` and `stores`, whose projectors cut the log into `partitions`.
    pub fn new(log: PgLog, stores: Stores, partitions: u32) -> Verifier {
        Verifier {
            log,
            stores,
            partitions: partitions.max(1),
            stats: Arc::new(VerifyStats::default()),
        }
    }

    /// The background verifier's counters (for `/metrics`).
    pub fn stats(&self) -> Arc<VerifyStats> {
        Arc::clone(&self.stats)
    }

    fn partition_of(&self, doc_id: &str) -> Partition {
        Partition::all(self.partitions)
            .find(|p| p.contains(doc_id))
            .unwrap_or(Partition::ALL)
    }

    /// Every store behind its ports, in [`StoreKind::ALL`]'s order.
    fn audited(&self) -> [&dyn AuditedStore<PgLog>; StoreKind::ALL.len()] {
        self.stores.audited()
    }

    /// The store `store` behind its ports.
    fn store(&self, store: StoreKind) -> &dyn AuditedStore<PgLog> {
        self.audited()[store_index(store)]
    }

    async fn checkpoints(&self) -> Result<Checkpoints, VerifyError> {
        let mut out = HashMap::new();
        for part in Partition::all(self.partitions) {
            for store in self.audited() {
                let cursor = store.applied(&self.log, part).await?;
                out.insert((store.store(), part.index), cursor);
            }
        }
        Ok(Checkpoints(out))
    }

    /// Checks one document in `stores` precisely against a fresh read of its events.
    async fn check_document(
        &self,
        doc_id: &str,
        stores: &[StoreKind],
        checkpoints: &Checkpoints,
    ) -> Result<Vec<Finding>, VerifyError> {
        let records = match DocId::parse(doc_id) {
            Ok(id) => self.log.reads().stream_records(&id).await?,
            Err(_) => Vec::new(),
        };
        let changes = DocChanges::of(&records);
        let part = self.partition_of(doc_id);
        let mut findings = Vec::new();
        for &store in stores {
            let change = changes.get(store);
            if let Some(mut finding) = self.store(store).check(doc_id, change).await? {
                let applied = checkpoints
                    .0
                    .get(&(store, part.index))
                    .copied()
                    .unwrap_or(LogCursor::START);
                finding.in_flight = change.is_some_and(|c| applied < c.cursor);
                findings.push(finding);
            }
        }
        Ok(findings)
    }

    /// Verifies one document in every store.
    ///
    /// # Errors
    /// [`VerifyError`] when the log or a store cannot be read.
    pub async fn verify_document(
        &self,
        doc_id: &DocId,
    ) -> Result<DocumentVerification, VerifyError> {
        let checkpoints = self.checkpoints().await?;
        let findings = self
            .check_document(doc_id.as_str(), &StoreKind::ALL, &checkpoints)
            .await?;
        let erasure_leaks: Vec<String> = self
            .log
            .reads()
            .erasure_check_of(Some(doc_id))
            .await?
            .leaks
            .into_iter()
            .map(|l| l.what)
            .collect();
        Ok(DocumentVerification {
            matches: findings.is_empty() && erasure_leaks.is_empty(),
            findings,
            erasure_leaks,
        })
    }

    /// Verifies every document of the log and everything every store holds. `progress`
    /// is told each phase's name and how many items it has done so far.
    ///
    /// # Errors
    /// [`VerifyError`] when the log or a store cannot be read.
    pub async fn verify_all(
        &self,
        progress: &(dyn Fn(&str, u64) + Sync),
    ) -> Result<VerifyReport, VerifyError> {
        let scanned = scan::scan(&self.log, &self.audited(), progress).await?;
        let checkpoints = self.checkpoints().await?;
        let mut findings = scanned.strays;
        let mut done = 0u64;
        for (doc_id, stores) in &scanned.suspects {
            findings.extend(self.check_document(doc_id, stores, &checkpoints).await?);
            done += 1;
            progress("recheck", done);
        }
        findings.sort_by(|a, b| (a.store, &a.doc_id, a.kind).cmp(&(b.store, &b.doc_id, b.kind)));
        let stores = scanned
            .stores
            .into_iter()
            .map(|mut s| {
                s.num_findings = findings.iter().filter(|f| f.store == s.store).count() as u64;
                s
            })
            .collect();
        Ok(VerifyReport {
            log_head: scanned.log_head,
            num_documents: scanned.num_documents,
            stores,
            findings,
            erasures: self.log.reads().erasure_check().await?,
        })
    }

    /// Repairs every finding of `report` (see [`repair`]); verify again afterwards.
    ///
    /// # Errors
    /// [`VerifyError`] when the log or a store fails; findings repaired before stay repaired.
    pub async fn repair(&self, report: &VerifyReport) -> Result<RepairSummary, VerifyError> {
        repair::repair(self, &report.findings).await
    }
}
