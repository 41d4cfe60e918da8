//! Rebuilding a store from the log while the service keeps ingesting (docs/stores.md: the
//! stores are derived views that can always be thrown away and rebuilt).
//!
//! - MySQL: a shadow table filled from the log, caught up, then one `RENAME TABLE` swaps it
//!   in together with the projector's checkpoints.
//! - Milvus: a new collection (generation) filled from the log, caught up, then the
//!   contract's name — an alias — moves to it.
//! - S3: in place, with the S3 projector paused: objects that already hold the final state
//!   are skipped (listing, then `docledger-version` + `docledger-sha256`), the rest written,
//!   objects no document owns deleted.
//!
//! The catalogue is built from each document's final state, which the log keeps in its
//! stream row (one scan of one snapshot, [`PgLog::scan_catalogue`]; the events of documents
//! whose row predates that are read instead), then caught up from the scan's end. The other
//! stores read the log once (only the event types that carry their changes), in pages
//! coalesced per document (newest state per page; a fresh target needs no version reads).
//! Hand-over without losing or harmfully re-applying an event: the store's runners are
//! paused and observed idle, the rebuild reads to the head, switches, moves the runners'
//! checkpoints to where it stopped, and resumes them; a resumed runner re-reads its
//! checkpoint. Appends never stop. A rebuild that dies midway leaves the live store
//! untouched; the next one drops the stale shadow table or generation and starts over.

pub mod progress;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregates::{DocumentEvent, LogCursor, RecordedEvent, StoreKind};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use projections::milvus::rebuild::{generation_name, GenerationWriter};
use projections::mysql::shadow::{NewRows, ShadowWriter};
use projections::s3::rebuild::ObjectOutcome;
use projections::s3::KEY_PREFIX;
use projections::sink::Change;
use projections::{AppliedVersion, Batch, LogSource, Partition, Sink, SinkError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use progress::{RebuildProgress, RebuildStatus};

use crate::eventlog::{CataloguePage, CatalogueStates, LogError, PgLog, RawEvents};
use crate::stores::Stores;

/// Events read per page of the log, unless [`Rebuilder::with_page_events`] says otherwise.
pub const PAGE_EVENTS: usize = 5000;
/// Pages read ahead of the writer.
const READ_AHEAD_PAGES: usize = 4;
/// Documents whose blobs are loaded from the log in one query.
const S3_BLOB_GROUP: usize = 32;
/// How often a pausing rebuild looks at the runners.
const PAUSE_POLL: Duration = Duration::from_millis(50);
/// Documents per readiness query while recording.
const READY_PAGE: usize = 1000;
/// Documents per readiness query (or MySQL update) after a catalogue swap.
const SETTLE_PAGE: usize = 10_000;
/// Settling scans `streams` once, instead of looking documents up, when the pending rows
/// are at least one in this many of the log's documents.
const SCAN_SHARE: u64 = 20;

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store.
    #[error(transparent)]
    Store(#[from] SinkError),
    /// The service is shutting down.
    #[error("rebuild cancelled")]
    Cancelled,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildSummary {
    /// The store.
    pub store: &'static str,
    /// Documents written or checked.
    pub num_documents: u64,
    /// Log events read.
    pub num_events: u64,
    /// Where the rebuilt store's checkpoint stands.
    pub end: LogCursor,
    /// Seconds, start to end.
    pub seconds: f64,
    /// S3: objects already right; others: 0.
    pub num_identical: u64,
    /// S3: orphan objects deleted.
    pub num_orphans_deleted: u64,
}

impl RebuildSummary {
    /// Documents per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.num_documents as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Rebuilds stores; cheap to clone.
#[derive(Clone)]
pub struct Rebuilder {
    log: PgLog,
    stores: Stores,
    partitions: u32,
    /// Run by a service: the store's runners on every process of the log are paused for
    /// the hand-over. False for a standalone rebuild, which must not run next to a service.
    in_service: bool,
    /// Events read per page of the log.
    page_events: usize,
}

/// A store's runners held paused by a rebuild, on every process of the log (see
/// `eventlog::control`); none for a standalone rebuild, which runs with no service.
struct Paused {
    held: Option<(PgLog, StoreKind)>,
    /// The store's partition count in force while paused: the checkpoints to move.
    partitions: u32,
}

impl Paused {
    /// Lifts the rebuild's pause (an operator's own pause stays). Cancelled by shutdown,
    /// the rebuild keeps its pause: another process starts it over and lifts it.
    async fn resume(self, outcome_cancelled: bool) -> Result<(), RebuildError> {
        match self.held {
            Some((log, store)) if !outcome_cancelled => {
                log.control().lift_rebuild_pause(store.name()).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Rebuilder {
    /// A rebuilder over `log` and `stores` whose projectors cut the log into `partitions`.
    /// `in_service`: run by a service, which pauses the store's runners on every process for
    /// the hand-over (false for a standalone rebuild, which must not run next to a service).
    pub fn new(log: PgLog, stores: Stores, partitions: u32, in_service: bool) -> Rebuilder {
        Rebuilder {
            log,
            stores,
            partitions: partitions.max(1),
            in_service,
            page_events: PAGE_EVENTS,
        }
    }

    /// Reads the log `page_events` events at a time (at least 1) instead of [`PAGE_EVENTS`]:
    /// `DOCLEDGER_REBUILD_PAGE_EVENTS`.
    pub fn with_page_events(mut self, page_events: usize) -> Rebuilder {
        self.page_events = page_events.max(1);
        self
    }

    /// Rebuilds `store`, reporting into `progress`.
    ///
    /// # Errors
    /// [`RebuildError`]; the live store is untouched unless the switch happened.
    pub async fn rebuild(
        &self,
        store: StoreKind,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        info!(store = store.name(), "rebuild started");
        let result = match store {
            StoreKind::Mysql | StoreKind::Milvus => self.blue_green(store, progress, cancel).await,
            StoreKind::S3 => self.s3_in_place(progress, cancel).await,
        };
        match &result {
            Ok(summary) => {
                progress.finish();
                info!(
                    store = store.name(),
                    documents = summary.num_documents,
                    seconds = summary.seconds,
                    "rebuild finished"
                );
            }
            Err(e) => {
                progress.fail(e.to_string());
                progress.finish();
                warn!(store = store.name(), error = %e, "rebuild failed; the live store is unchanged unless it was switched");
            }
        }
        result
    }

    /// Pauses `store`'s runners on every process and waits until each partition's owner
    /// acknowledged it: from then on no runner writes the store until [`Paused::resume`].
    async fn pause(
        &self,
        store: StoreKind,
        cancel: &CancellationToken,
    ) -> Result<Paused, RebuildError> {
        if !self.in_service {
            return Ok(Paused {
                held: None,
                partitions: self.partitions,
            });
        }
        let epoch = self.log.control().hold_rebuild_pause(store.name()).await?;
        loop {
            // The count in force may change while processes of another count roll in; it
            // cannot once the runners holding its leases are paused.
            let partitions = self.partitions_now(store).await?;
            let acknowledged = self
                .log
                .control()
                .partitions_paused(store.name(), partitions, epoch)
                .await?;
            if acknowledged >= partitions {
                return Ok(Paused {
                    held: Some((self.log.clone(), store)),
                    partitions,
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(RebuildError::Cancelled),
                _ = tokio::time::sleep(PAUSE_POLL) => {}
            }
        }
    }

    /// The store's partition count in force among the service's processes (this process's
    /// own for a standalone rebuild, or before any process recorded one).
    async fn partitions_now(&self, store: StoreKind) -> Result<u32, RebuildError> {
        if !self.in_service {
            return Ok(self.partitions);
        }
        Ok(self
            .log
            .control()
            .partitions_in_force(store.name())
            .await?
            .unwrap_or(self.partitions))
    }

    /// The lowest checkpoint of `store` over partitions in the log database (changes after
    /// it may not have been recorded as applied).
    async fn lowest_checkpoint(&self, store: StoreKind) -> Result<LogCursor, RebuildError> {
        let mut lowest: Option<LogCursor> = None;
        for part in Partition::all(self.partitions_now(store).await?) {
            let stored = LogSource::load_checkpoint(&self.log, store.name(), part)
                .await
                .map_err(source_error)?
                .filter(|(log_id, _)| log_id == self.log.log_id())
                .map_or(LogCursor::START, |(_, c)| c);
            lowest = Some(lowest.map_or(stored, |l| l.min(stored)));
        }
        Ok(lowest.unwrap_or(LogCursor::START))
    }

    async fn save_checkpoints(
        &self,
        store: StoreKind,
        partitions: u32,
        end: LogCursor,
    ) -> Result<(), RebuildError> {
        for part in Partition::all(partitions) {
            LogSource::save_checkpoint(&self.log, store.name(), part, end, None)
                .await
                .map_err(source_error)?;
        }
        Ok(())
    }

    /// Records that `store` holds these versions, then marks ready (MySQL row and log
    /// bookkeeping) the documents that thereby became consistent — what the runner and the
    /// tracker would have done had they applied the changes themselves.
    async fn record(
        &self,
        store: StoreKind,
        applied: &[AppliedVersion],
    ) -> Result<(), RebuildError> {
        for part in applied.chunks(READY_PAGE) {
            let consistent = LogSource::record_applied(&self.log, store, part)
                .await
                .map_err(source_error)?;
            if !consistent.is_empty() {
                self.stores.mysql.mark_ready(&consistent).await?;
                self.log.store_records().record_ready(&consistent).await?;
            }
        }
        Ok(())
    }

    /// Marks `ready` the rows the rebuild wrote `pending` whose version every store holds by
    /// now (documents that became consistent while their shadow row was being written: the
    /// tracker marked the old live row). Only the rebuild wrote the shadow table, so these are
    /// all its `pending` rows (the newest written per document counts); an entry since
    /// overwritten or deleted no longer matches its document's version and is skipped.
    /// A few pending rows are looked up one by one; once they are a sizeable share of the
    /// log's `streams` documents, one scan of `streams` is cheaper.
    async fn settle_readiness(
        &self,
        pending: &[(String, u64)],
        num_streams: u64,
    ) -> Result<(), RebuildError> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut newest: HashMap<&str, u64> = HashMap::with_capacity(pending.len());
        for (d, v) in pending {
            let entry = newest.entry(d.as_str()).or_insert(*v);
            *entry = (*entry).max(*v);
        }
        let ready_of = |consistent: &std::collections::HashSet<String>, docs: &[(&str, u64)]| {
            docs.iter()
                .filter(|(d, _)| consistent.contains(*d))
                .filter_map(|(d, v)| {
                    Some(AppliedVersion {
                        doc_id: aggregates::DocId::parse(d).ok()?,
                        version: *v,
                    })
                })
                .collect::<Vec<_>>()
        };
        let docs: Vec<(&str, u64)> = newest.iter().map(|(d, v)| (*d, *v)).collect();
        if (docs.len() as u64).saturating_mul(SCAN_SHARE) >= num_streams {
            let consistent = self.log.store_records().consistent_among(&newest).await?;
            for part in ready_of(&consistent, &docs).chunks(SETTLE_PAGE) {
                self.stores.mysql.mark_ready(part).await?;
            }
            return Ok(());
        }
        for part in docs.chunks(SETTLE_PAGE) {
            let consistent = self.log.store_records().consistent_at(part).await?;
            self.stores
                .mysql
                .mark_ready(&ready_of(&consistent, part))
                .await?;
        }
        Ok(())
    }

    async fn blue_green(
        &self,
        store: StoreKind,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        let started = std::time::Instant::now();
        progress.phase("preparing");
        // A store dropped behind docledger's back: recreate it (empty) so that its runners
        // stop retrying and can be paused; the rebuild then fills the new target.
        let mut target = match store {
            StoreKind::Mysql => {
                self.stores.mysql.prepare().await?;
                self.stores.mysql.create_shadow().await?;
                Target::Mysql(self.stores.mysql.shadow_writer())
            }
            _ => {
                self.stores.milvus.prepare().await?;
                let dropped = self.stores.milvus.drop_stale_generations().await?;
                if !dropped.is_empty() {
                    info!(collections = ?dropped, "dropped generations of an interrupted rebuild");
                }
                let name = generation_name(self.stores.milvus.collection(), unix_ms());
                Target::Milvus(GenerationWriter::create(&self.stores.milvus, &name).await?)
            }
        };
        let lowest = self.lowest_checkpoint(store).await?;
        let num_streams = self.log.store_records().count_streams().await?;
        progress.total(num_streams);
        let mut done = Written::default();

        progress.phase("building");
        let (mut pages, reader) = self.read_ahead(store, cancel);
        while let Some(page) = pages.recv().await {
            let page = page?;
            done.count(&page, lowest, progress);
            self.write(&mut target, page).await?;
        }
        let _ = reader.await;
        if cancel.is_cancelled() {
            return Err(RebuildError::Cancelled);
        }

        progress.phase("pausing");
        let paused = self.pause(store, cancel).await?;
        let switched = async {
            progress.phase("catching_up");
            loop {
                let Some(page) = read_page(&self.log, store, done.cursor, self.page_events).await?
                else {
                    break;
                };
                done.count(&page, lowest, progress);
                self.write(&mut target, page).await?;
            }
            progress.phase("switching");
            match &mut target {
                Target::Mysql(writer) => {
                    // Every row in before the shadow goes live.
                    writer.finish().await?;
                    self.stores
                        .mysql
                        .swap_shadow(self.log.log_id(), paused.partitions, done.cursor)
                        .await?;
                    progress.phase("recording");
                    self.settle_readiness(writer.pending(), num_streams).await?;
                }
                Target::Milvus(generation) => {
                    let old = self
                        .stores
                        .milvus
                        .switch_alias(generation.collection())
                        .await?;
                    info!(
                        alias = self.stores.milvus.collection(),
                        collection = generation.collection(),
                        "alias switched"
                    );
                    self.save_checkpoints(store, paused.partitions, done.cursor)
                        .await?;
                    if let Some(old) = old {
                        self.stores
                            .milvus
                            .on_collection(&old)
                            .drop_collection()
                            .await?;
                    }
                    progress.phase("recording");
                    self.record(store, &done.applied).await?;
                }
            }
            Ok::<(), RebuildError>(())
        }
        .await;
        paused
            .resume(matches!(switched, Err(RebuildError::Cancelled)))
            .await?;
        switched?;
        Ok(RebuildSummary {
            store: store.name(),
            num_documents: done.num_documents,
            num_events: done.num_events,
            end: done.cursor,
            seconds: started.elapsed().as_secs_f64(),
            num_identical: 0,
            num_orphans_deleted: 0,
        })
    }

    async fn write(&self, target: &mut Target, page: PreparedPage) -> Result<(), RebuildError> {
        match (target, page.content) {
            (Target::Mysql(writer), PageContent::Changes(batch)) => {
                writer
                    .write(&batch, |doc, _| page.consistent.contains(doc))
                    .await?;
            }
            (Target::Mysql(writer), PageContent::NewRows(rows)) => writer.insert_new(rows).await?,
            (Target::Milvus(generation), PageContent::Changes(batch)) => {
                generation.write(&batch).await?;
            }
            (Target::Milvus(_), PageContent::NewRows(_)) => {
                return Err(RebuildError::Store(SinkError::permanent(
                    "milvus",
                    "rebuild",
                    "catalogue rows handed to a vector rebuild".to_owned(),
                )))
            }
        }
        Ok(())
    }

    /// Reads and prepares the store's pages up to [`READ_AHEAD_PAGES`] pages ahead of the
    /// writer: for the catalogue, every document's final state ([`PgLog::scan_catalogue`],
    /// [`prepare_states`]); for the others, the store's events from the start
    /// ([`prepare_page`]) until a page comes back short (the head is near: the hand-over
    /// reads the rest). Two tasks: one reads pages (it needs only a page's end to ask for the
    /// next one), the other decodes, coalesces and looks up readiness on its own connection.
    /// So PostgreSQL reads page k+1 while page k is decoded and checked, and both run while
    /// the target store writes the pages before.
    fn read_ahead(
        &self,
        store: StoreKind,
        cancel: &CancellationToken,
    ) -> (mpsc::Receiver<Page>, JoinHandle<()>) {
        let (raw_tx, mut raw_rx) = mpsc::channel::<Result<RawPage, LogError>>(READ_AHEAD_PAGES);
        let (tx, rx) = mpsc::channel(READ_AHEAD_PAGES);
        let log = self.log.clone();
        let page_events = self.page_events;
        let reader_cancel = cancel.clone();
        let reader = tokio::spawn(async move {
            let read = match store {
                StoreKind::Mysql => read_states(&log, page_events, &raw_tx, &reader_cancel).await,
                _ => read_events(&log, store, page_events, &raw_tx, &reader_cancel).await,
            };
            if let Err(e) = read {
                let _ = raw_tx.send(Err(e)).await;
            }
        });
        let log = self.log.clone();
        let handle = tokio::spawn(async move {
            while let Some(raw) = raw_rx.recv().await {
                let page = match raw {
                    Ok(RawPage::Events(raw, end)) => prepare_page(&log, store, &raw, end).await,
                    Ok(RawPage::States(states)) => prepare_states(&states),
                    Err(e) => Err(e),
                };
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    break;
                }
            }
            // The reader stops at its next send once the pages are no longer wanted.
            drop(raw_rx);
            let _ = reader.await;
        });
        (rx, handle)
    }

    async fn s3_in_place(
        &self,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        let store = StoreKind::S3;
        let started = std::time::Instant::now();
        let s3 = &self.stores.s3;
        progress.phase("preparing");
        s3.prepare().await?;
        progress.phase("pausing");
        let paused = self.pause(store, cancel).await?;
        let result = async {
            let lowest = self.lowest_checkpoint(store).await?;
            progress.total(self.log.store_records().count_streams().await?);
            // The final change of every document, by reading the store's events to the head.
            progress.phase("building");
            let mut finals: HashMap<String, projections::DocChange> = HashMap::new();
            let mut cursor = LogCursor::START;
            let mut num_events = 0u64;
            loop {
                let page = self
                    .log
                    .store_records()
                    .read_store_events(cursor, store, self.page_events)
                    .await?;
                let Some(last) = page.last() else { break };
                cursor = last.cursor;
                num_events += page.len() as u64;
                progress.advance(0, page.len() as u64);
                for change in Batch::coalesce_owned(store, cursor, page).changes {
                    finals.insert(change.doc_id.to_string(), change);
                }
                if cancel.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
            }
            let existing: std::collections::HashSet<String> =
                s3.list_keys("").await?.into_iter().collect();
            let mut upserts: Vec<&projections::DocChange> = finals
                .values()
                .filter(|c| matches!(c.change, Change::Upsert(_)))
                .collect();
            upserts.sort_by(|a, b| a.doc_id.cmp(&b.doc_id));
            let identical = Arc::new(Mutex::new(0u64));
            // Futures are built before they enter the streams: a closure inside a stream
            // would fail the spawned task's `Send` check (rust-lang/rust#89976).
            let groups: Vec<_> = upserts
                .chunks(S3_BLOB_GROUP)
                .map(|group| {
                    let identical = identical.clone();
                    let existing = &existing;
                    async move {
                        let shas: Vec<String> = group
                            .iter()
                            .filter_map(|c| match &c.change {
                                Change::Upsert(DocumentEvent::BlobStored { sha256, .. }) => {
                                    Some(sha256.clone())
                                }
                                _ => None,
                            })
                            .collect();
                        let blobs = LogSource::load_blobs(&self.log, &shas)
                            .await
                            .map_err(source_error)?;
                        let writes: Vec<_> = group
                            .iter()
                            .map(|c| {
                                let blobs = &blobs;
                                async move {
                                    let Change::Upsert(event) = &c.change else {
                                        return Ok(ObjectOutcome::Identical);
                                    };
                                    let DocumentEvent::BlobStored { sha256, .. } = event else {
                                        return Ok(ObjectOutcome::Identical);
                                    };
                                    let bytes =
                                        blobs.get(sha256).cloned().unwrap_or_else(Bytes::new);
                                    let key = format!("{KEY_PREFIX}{}", c.doc_id);
                                    if existing.contains(&key) {
                                        s3.rebuild_object(c.doc_id.as_str(), event, bytes).await
                                    } else {
                                        s3.write_object(c.doc_id.as_str(), event, bytes).await
                                    }
                                }
                            })
                            .collect();
                        let outcomes: Vec<Result<ObjectOutcome, SinkError>> = stream::iter(writes)
                            .buffer_unordered(S3_BLOB_GROUP)
                            .collect()
                            .await;
                        let mut same = 0u64;
                        for o in outcomes {
                            if o? == ObjectOutcome::Identical {
                                same += 1;
                            }
                        }
                        if let Ok(mut n) = identical.lock() {
                            *n += same;
                        }
                        progress.advance(group.len() as u64, 0);
                        Ok::<(), RebuildError>(())
                    }
                })
                .collect();
            let mut groups = stream::iter(groups).buffer_unordered(
                (projections::s3::BULK_CONCURRENT_REQUESTS / S3_BLOB_GROUP).max(1),
            );
            while let Some(done) = groups.next().await {
                done?;
                if cancel.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
            }
            drop(groups);
            progress.phase("switching");
            let wanted: std::collections::HashSet<String> = upserts
                .iter()
                .map(|c| format!("{KEY_PREFIX}{}", c.doc_id))
                .collect();
            let mut orphans: Vec<String> = existing
                .iter()
                .filter(|k| !wanted.contains(*k))
                .cloned()
                .collect();
            orphans.sort();
            s3.delete_keys(&orphans).await?;
            self.save_checkpoints(store, paused.partitions, cursor)
                .await?;
            progress.phase("recording");
            let applied: Vec<AppliedVersion> = finals
                .values()
                .filter(|c| c.cursor > lowest)
                .map(|c| AppliedVersion {
                    doc_id: c.doc_id.clone(),
                    version: c.version,
                })
                .collect();
            self.record(store, &applied).await?;
            let num_identical = identical.lock().map(|n| *n).unwrap_or_default();
            Ok(RebuildSummary {
                store: store.name(),
                num_documents: upserts.len() as u64,
                num_events,
                end: cursor,
                seconds: started.elapsed().as_secs_f64(),
                num_identical,
                num_orphans_deleted: orphans.len() as u64,
            })
        }
        .await;
        paused
            .resume(matches!(result, Err(RebuildError::Cancelled)))
            .await?;
        result
    }
}

enum Target {
    /// Writes into the shadow table in the background: finish it before the swap.
    Mysql(ShadowWriter),
    Milvus(GenerationWriter),
}

/// What a blue/green rebuild has written so far.
#[derive(Default)]
struct Written {
    /// Versions written past the store's lowest checkpoint (to record as applied).
    applied: Vec<AppliedVersion>,
    num_documents: u64,
    num_events: u64,
    /// The last page's end: where the rebuilt store's checkpoint stands.
    cursor: LogCursor,
}

impl Written {
    /// Counts a written page (and reports it to `progress`).
    fn count(&mut self, page: &PreparedPage, lowest: LogCursor, progress: &RebuildProgress) {
        if let PageContent::Changes(batch) = &page.content {
            self.applied
                .extend(batch.changes.iter().filter(|c| c.cursor > lowest).map(|c| {
                    AppliedVersion {
                        doc_id: c.doc_id.clone(),
                        version: c.version,
                    }
                }));
        }
        self.num_documents += page.num_documents as u64;
        self.num_events += page.num_events as u64;
        progress.advance(page.num_documents as u64, page.num_events as u64);
        self.cursor = page.end;
    }
}

fn source_error(e: projections::SourceError) -> RebuildError {
    RebuildError::Log(LogError::Unavailable {
        operation: e.operation,
        message: e.message,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A page of the log as the read-ahead task hands it over.
type Page = Result<PreparedPage, LogError>;

/// A page of the log as the writer takes it, with what it needs to know beside it.
struct PreparedPage {
    content: PageContent,
    /// Where the page ends: the target holds the log up to here once it is written.
    end: LogCursor,
    /// Events (or final states) read.
    num_events: usize,
    /// MySQL: the page's upserted documents whose version every store already holds (their
    /// rows are written `ready`); empty for other stores and for [`PageContent::NewRows`]
    /// (which carry their status).
    consistent: std::collections::HashSet<String>,
    /// Documents the page covers (final states of deleted documents write nothing but
    /// count).
    num_documents: usize,
}

/// What a [`PreparedPage`] writes.
enum PageContent {
    /// The newest change per document of a page of events.
    Changes(Batch),
    /// MySQL: the rows of documents' final states, new to the shadow table.
    NewRows(NewRows),
}

/// A page as the read-ahead's reader hands it to its preparer.
enum RawPage {
    /// Events, and the end to give the page instead of its last event's cursor.
    Events(RawEvents, Option<LogCursor>),
    /// Documents' final catalogue states.
    States(CatalogueStates),
}

/// Reads `store`'s events from the start, a page at a time, until a page comes back short.
async fn read_events(
    log: &PgLog,
    store: StoreKind,
    page_events: usize,
    pages: &mpsc::Sender<Result<RawPage, LogError>>,
    cancel: &CancellationToken,
) -> Result<(), LogError> {
    let mut cursor = LogCursor::START;
    while !cancel.is_cancelled() {
        let raw = log
            .store_records()
            .read_store_rows(cursor, store, page_events)
            .await?;
        let Some(end) = raw.end() else { break };
        cursor = end;
        let short = raw.len() < page_events;
        if pages.send(Ok(RawPage::Events(raw, None))).await.is_err() || short {
            break;
        }
    }
    Ok(())
}

/// Reads every document's final catalogue state in one snapshot, a page at a time; every
/// page ends at the scan's end, so the writer's cursor stands there once it is done.
async fn read_states(
    log: &PgLog,
    page_events: usize,
    pages: &mpsc::Sender<Result<RawPage, LogError>>,
    cancel: &CancellationToken,
) -> Result<(), LogError> {
    let mut scan = log.store_records().scan_catalogue().await?;
    let end = scan.end();
    while !cancel.is_cancelled() {
        let page = match scan.next(page_events).await? {
            None => break,
            Some(CataloguePage::States(states)) => RawPage::States(states),
            Some(CataloguePage::Events(raw)) => RawPage::Events(raw, Some(end)),
        };
        if pages.send(Ok(page)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Reads the page of `store`'s events after `after` (at most `page_events`) and prepares it;
/// `None` at the head.
async fn read_page(
    log: &PgLog,
    store: StoreKind,
    after: LogCursor,
    page_events: usize,
) -> Result<Option<PreparedPage>, LogError> {
    let raw = log
        .store_records()
        .read_store_rows(after, store, page_events)
        .await?;
    if raw.is_empty() {
        return Ok(None);
    }
    prepare_page(log, store, &raw, None).await.map(Some)
}

/// Decodes and coalesces a page read by [`PgLog::read_store_rows`] (not empty) and, for
/// MySQL, looks up which of its documents every store already holds. The page ends at `end`
/// if given, else at its last event.
async fn prepare_page(
    log: &PgLog,
    store: StoreKind,
    raw: &RawEvents,
    end: Option<LogCursor>,
) -> Result<PreparedPage, LogError> {
    let events: Vec<RecordedEvent<DocumentEvent>> = raw.decode()?;
    let end = end.unwrap_or_else(|| events.last().map_or(LogCursor::START, |e| e.cursor));
    let num_events = events.len();
    let batch = Batch::coalesce_owned(store, end, events);
    let consistent = if store == StoreKind::Mysql {
        let docs: Vec<(&str, u64)> = batch
            .changes
            .iter()
            .filter(|c| matches!(c.change, Change::Upsert(_)))
            .map(|c| (c.doc_id.as_str(), c.version))
            .collect();
        log.store_records().consistent_at(&docs).await?
    } else {
        Default::default()
    };
    Ok(PreparedPage {
        end: batch.end,
        num_documents: batch.changes.len(),
        content: PageContent::Changes(batch),
        num_events,
        consistent,
    })
}

/// Decodes a page of final catalogue states straight into the shadow table's new rows (the
/// parameters of their inserts, built here in the read-ahead rather than by the writer).
/// Deleted documents are left out: the target is fresh, there is nothing to remove (they
/// still count as documents done).
fn prepare_states(states: &CatalogueStates) -> Result<PreparedPage, LogError> {
    let mut page = states.states().collect::<Result<Vec<_>, _>>()?;
    let num_documents = page.len();
    // In the catalogue's key order: MariaDB appends each statement's rows to its B-tree
    // instead of inserting them between each other in append order.
    page.sort_unstable_by(|a, b| a.doc_id.cmp(b.doc_id));
    let mut rows = NewRows::default();
    for state in page {
        if let Some(row) = state.row {
            rows.push(state.doc_id, row, state.ready);
        }
    }
    Ok(PreparedPage {
        content: PageContent::NewRows(rows),
        end: states.end(),
        num_events: num_documents,
        consistent: Default::default(),
        num_documents,
    })
}
