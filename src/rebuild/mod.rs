//! Rebuilding a store from the log while the service keeps ingesting (docs/stores.md: the
//! stores are derived views that can always be thrown away and rebuilt): one orchestrator,
//! generic over the [`Rebuild`] port each store implements in its own folder of
//! `projections` (docs/architecture.md).
//!
//! - Blue/green ([`RebuildStyle::BlueGreen`]: the catalogue's shadow table, the vectors' new
//!   generation): the target is filled from the log read ahead in pages, caught up with the
//!   store's runners paused, then switched to at the cursor where the rebuild stopped.
//! - In place ([`RebuildStyle::InPlace`]: the blobs): with the store's runners paused, the
//!   log's final change of every document is handed to the live store, which skips what
//!   already holds it and removes what no document owns.
//!
//! A store rebuilt from final states ([`Rebuild::FROM_FINAL_STATES`]: the catalogue) reads
//! each document's final state, which the log keeps in its stream row (one scan of one
//! snapshot, [`crate::eventlog::StoreRecords::scan_catalogue`]; the events of documents whose row predates that are
//! read instead), then catches up from the scan's end. The others read the log once (only
//! the event types that carry their changes), in pages coalesced per document (newest state
//! per page; a fresh target needs no version reads).
//! Hand-over without losing or harmfully re-applying an event: the store's runners are
//! paused and observed idle, the rebuild reads to the head, switches, moves the runners'
//! checkpoints to where it stopped, and resumes them; a resumed runner re-reads its
//! checkpoint. Appends never stop. A rebuild that dies midway leaves the live store
//! untouched; the next one drops the stale target and starts over.

pub mod progress;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aggregates::{DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind};
use futures::future::BoxFuture;
use projections::sink::Change;
use projections::{
    AppliedVersion, Batch, DocChange, FinalState, LogSource, Partition, Rebuild, RebuildPage,
    RebuildStyle, RebuildTarget, SinkError, Store,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use progress::{RebuildProgress, RebuildStatus};

use crate::eventlog::{CataloguePage, CatalogueStates, LogError, PgLog, RawEvents};
use crate::stores::{StoreVisitor, Stores};

/// Events read per page of the log, unless [`Rebuilder::with_page_events`] says otherwise.
pub const PAGE_EVENTS: usize = 5000;
/// Pages read ahead of the writer.
const READ_AHEAD_PAGES: usize = 4;
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
    /// The log and the sink's name (its runners' key).
    held: Option<(PgLog, &'static str)>,
    /// The store's partition count in force while paused: the checkpoints to move.
    partitions: u32,
}

impl Paused {
    /// Lifts the rebuild's pause (an operator's own pause stays). Cancelled by shutdown,
    /// the rebuild keeps its pause: another process starts it over and lifts it.
    async fn resume(self, outcome_cancelled: bool) -> Result<(), RebuildError> {
        match self.held {
            Some((log, sink)) if !outcome_cancelled => {
                log.control().lift_rebuild_pause(sink).await?;
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
        self.stores
            .visit(
                store,
                RebuildOne {
                    rebuilder: self,
                    progress,
                    cancel,
                },
            )
            .await
    }

    /// Rebuilds the store behind `sink` (any implementation of the [`Rebuild`] port; its
    /// runners, if any run, are those keyed by [`projections::Sink::NAME`]), reporting into
    /// `progress`.
    ///
    /// # Errors
    /// [`RebuildError`]; the live store is untouched unless the switch happened.
    pub async fn rebuild_into<S: Rebuild>(
        &self,
        sink: &S,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        info!(store = S::NAME, "rebuild started");
        let result = match S::STYLE {
            RebuildStyle::BlueGreen => self.blue_green(sink, progress, cancel).await,
            RebuildStyle::InPlace => self.in_place(sink, progress, cancel).await,
        };
        match &result {
            Ok(summary) => {
                progress.finish();
                info!(
                    store = S::NAME,
                    documents = summary.num_documents,
                    seconds = summary.seconds,
                    "rebuild finished"
                );
            }
            Err(e) => {
                progress.fail(e.to_string());
                progress.finish();
                warn!(store = S::NAME, error = %e, "rebuild failed; the live store is unchanged unless it was switched");
            }
        }
        result
    }

    /// Pauses the runners of the sink named `sink` on every process and waits until each
    /// partition's owner acknowledged it: from then on no runner writes the store until
    /// [`Paused::resume`].
    async fn pause(
        &self,
        sink: &'static str,
        cancel: &CancellationToken,
    ) -> Result<Paused, RebuildError> {
        if !self.in_service {
            return Ok(Paused {
                held: None,
                partitions: self.partitions,
            });
        }
        let epoch = self.log.control().hold_rebuild_pause(sink).await?;
        loop {
            // The count in force may change while processes of another count roll in; it
            // cannot once the runners holding its leases are paused.
            let partitions = self.partitions_now(sink).await?;
            let acknowledged = self
                .log
                .control()
                .partitions_paused(sink, partitions, epoch)
                .await?;
            if acknowledged >= partitions {
                return Ok(Paused {
                    held: Some((self.log.clone(), sink)),
                    partitions,
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(RebuildError::Cancelled),
                _ = tokio::time::sleep(PAUSE_POLL) => {}
            }
        }
    }

    /// The sink's partition count in force among the service's processes (this process's
    /// own for a standalone rebuild, or before any process recorded one).
    async fn partitions_now(&self, sink: &'static str) -> Result<u32, RebuildError> {
        if !self.in_service {
            return Ok(self.partitions);
        }
        Ok(self
            .log
            .control()
            .partitions_in_force(sink)
            .await?
            .unwrap_or(self.partitions))
    }

    /// The lowest checkpoint of the sink named `sink` over partitions in the log database
    /// (changes after it may not have been recorded as applied).
    async fn lowest_checkpoint(&self, sink: &'static str) -> Result<LogCursor, RebuildError> {
        let mut lowest: Option<LogCursor> = None;
        for part in Partition::all(self.partitions_now(sink).await?) {
            let stored = LogSource::load_checkpoint(&self.log, sink, part)
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
        sink: &'static str,
        partitions: u32,
        end: LogCursor,
    ) -> Result<(), RebuildError> {
        for part in Partition::all(partitions) {
            LogSource::save_checkpoint(&self.log, sink, part, end, None)
                .await
                .map_err(source_error)?;
        }
        Ok(())
    }

    /// Records that the store holds these versions, then marks ready (catalogue row and log
    /// bookkeeping) the documents that thereby became consistent — what the runner and the
    /// tracker would have done had they applied the changes themselves. Not for a store that
    /// keeps its own checkpoint: the rebuild moves that one with the data and leaves the
    /// log-side one (how far versions were recorded) where it was, so the resumed runner
    /// records the versions in between itself (`Runner::catch_up_records`).
    async fn record<S: Rebuild>(&self, applied: &[AppliedVersion]) -> Result<(), RebuildError> {
        if S::KEEPS_OWN_CHECKPOINT {
            return Ok(());
        }
        for part in applied.chunks(READY_PAGE) {
            let consistent = LogSource::record_applied(&self.log, S::STORE, part)
                .await
                .map_err(source_error)?;
            if !consistent.is_empty() {
                self.stores.mark_ready(&consistent).await?;
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
                self.stores.mark_ready(part).await?;
            }
            return Ok(());
        }
        for part in docs.chunks(SETTLE_PAGE) {
            let consistent = self.log.store_records().consistent_at(part).await?;
            self.stores.mark_ready(&ready_of(&consistent, part)).await?;
        }
        Ok(())
    }

    /// Fills a fresh target beside the live store, catches it up with the store's runners
    /// paused, switches to it and moves the checkpoints (see [`RebuildStyle::BlueGreen`]).
    async fn blue_green<S: Rebuild>(
        &self,
        sink: &S,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        let started = std::time::Instant::now();
        progress.phase("preparing");
        let mut target = sink.begin_rebuild().await?;
        let lowest = self.lowest_checkpoint(S::NAME).await?;
        let num_streams = self.log.store_records().count_streams().await?;
        progress.total(num_streams);
        let mut done = Written::default();

        progress.phase("building");
        let (mut pages, reader) = self.read_ahead::<S>(cancel);
        while let Some(page) = pages.recv().await {
            let page = page?;
            done.count(&page, lowest, progress);
            target.write(page.content).await?;
        }
        let _ = reader.await;
        if cancel.is_cancelled() {
            return Err(RebuildError::Cancelled);
        }

        progress.phase("pausing");
        let paused = self.pause(S::NAME, cancel).await?;
        let switched = async {
            progress.phase("catching_up");
            while let Some(page) = read_page::<S>(&self.log, done.cursor, self.page_events).await? {
                done.count(&page, lowest, progress);
                target.write(page.content).await?;
            }
            progress.phase("switching");
            self.switch::<S>(&mut target, paused.partitions, done.cursor)
                .await?;
            progress.phase("recording");
            self.record::<S>(&done.applied).await?;
            if S::KEEPS_READINESS {
                self.settle_readiness(target.pending(), num_streams).await?;
            }
            Ok::<(), RebuildError>(())
        }
        .await;
        paused
            .resume(matches!(switched, Err(RebuildError::Cancelled)))
            .await?;
        switched?;
        let counts = target.counts();
        Ok(RebuildSummary {
            store: S::NAME,
            num_documents: done.num_documents,
            num_events: done.num_events,
            end: done.cursor,
            seconds: started.elapsed().as_secs_f64(),
            num_identical: counts.num_identical,
            num_orphans_deleted: counts.num_strays_removed,
        })
    }

    /// Makes `target` live at `end`, then moves the checkpoints the store does not keep
    /// itself, then lets the target drop what it retired.
    async fn switch<S: Rebuild>(
        &self,
        target: &mut S::Target,
        partitions: u32,
        end: LogCursor,
    ) -> Result<(), RebuildError> {
        target.switch(self.log.log_id(), partitions, end).await?;
        if !S::KEEPS_OWN_CHECKPOINT {
            self.save_checkpoints(S::NAME, partitions, end).await?;
        }
        target.retire().await?;
        Ok(())
    }

    /// With the store's runners paused throughout: reads the store's events to the head,
    /// keeps each document's final change, and hands them to the live store in pages of
    /// [`Rebuild::IN_PLACE_PAGE`] documents, in document order (see
    /// [`RebuildStyle::InPlace`]).
    async fn in_place<S: Rebuild>(
        &self,
        sink: &S,
        progress: &RebuildProgress,
        cancel: &CancellationToken,
    ) -> Result<RebuildSummary, RebuildError> {
        let store = S::STORE;
        let started = std::time::Instant::now();
        progress.phase("preparing");
        let mut target = sink.begin_rebuild().await?;
        progress.phase("pausing");
        let paused = self.pause(S::NAME, cancel).await?;
        let result = async {
            let lowest = self.lowest_checkpoint(S::NAME).await?;
            progress.total(self.log.store_records().count_streams().await?);
            progress.phase("building");
            let mut finals: HashMap<DocId, DocChange> = HashMap::new();
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
                    finals.insert(change.doc_id.clone(), change);
                }
                if cancel.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
            }
            let mut finals: Vec<DocChange> = finals.into_values().collect();
            finals.sort_unstable_by(|a, b| a.doc_id.cmp(&b.doc_id));
            let applied: Vec<AppliedVersion> = finals
                .iter()
                .filter(|c| c.cursor > lowest)
                .map(|c| AppliedVersion {
                    doc_id: c.doc_id.clone(),
                    version: c.version,
                })
                .collect();
            let num_documents = finals.len() as u64;
            let mut finals = finals.into_iter().peekable();
            while finals.peek().is_some() {
                let changes: Vec<DocChange> = finals.by_ref().take(S::IN_PLACE_PAGE).collect();
                let num = changes.len() as u64;
                let mut batch = Batch {
                    end: cursor,
                    num_events: changes.len(),
                    changes,
                    ..Batch::default()
                };
                if S::NEEDS_BLOBS {
                    batch.blobs = LogSource::load_blobs(&self.log, &batch.blob_shas())
                        .await
                        .map_err(source_error)?;
                }
                target
                    .write(RebuildPage::Changes {
                        batch,
                        consistent: Default::default(),
                    })
                    .await?;
                progress.advance(num, 0);
                if cancel.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
            }
            progress.phase("switching");
            self.switch::<S>(&mut target, paused.partitions, cursor)
                .await?;
            progress.phase("recording");
            self.record::<S>(&applied).await?;
            let counts = target.counts();
            Ok(RebuildSummary {
                store: S::NAME,
                num_documents,
                num_events,
                end: cursor,
                seconds: started.elapsed().as_secs_f64(),
                num_identical: counts.num_identical,
                num_orphans_deleted: counts.num_strays_removed,
            })
        }
        .await;
        paused
            .resume(matches!(result, Err(RebuildError::Cancelled)))
            .await?;
        result
    }

    /// Reads and prepares the store's pages up to [`READ_AHEAD_PAGES`] pages ahead of the
    /// writer: for a store rebuilt from final states, every document's final catalogue state
    /// ([`crate::eventlog::StoreRecords::scan_catalogue`], [`prepare_states`]); for the others, the store's events
    /// from the start ([`prepare_page`]) until a page comes back short (the head is near: the
    /// hand-over reads the rest). Two tasks: one reads pages (it needs only a page's end to
    /// ask for the next one), the other decodes, coalesces and looks up readiness on its own
    /// connection. So PostgreSQL reads page k+1 while page k is decoded and checked, and
    /// both run while the target store writes the pages before.
    fn read_ahead<S: Rebuild>(
        &self,
        cancel: &CancellationToken,
    ) -> (mpsc::Receiver<Page>, JoinHandle<()>) {
        let store = S::STORE;
        let (raw_tx, mut raw_rx) = mpsc::channel::<Result<RawPage, LogError>>(READ_AHEAD_PAGES);
        let (tx, rx) = mpsc::channel(READ_AHEAD_PAGES);
        let log = self.log.clone();
        let page_events = self.page_events;
        let reader_cancel = cancel.clone();
        let reader = tokio::spawn(async move {
            let read = if S::FROM_FINAL_STATES {
                read_states(&log, page_events, &raw_tx, &reader_cancel).await
            } else {
                read_events(&log, store, page_events, &raw_tx, &reader_cancel).await
            };
            if let Err(e) = read {
                let _ = raw_tx.send(Err(e)).await;
            }
        });
        let log = self.log.clone();
        let handle = tokio::spawn(async move {
            while let Some(raw) = raw_rx.recv().await {
                let page = match raw {
                    Ok(RawPage::Events(raw, end)) => prepare_page::<S>(&log, &raw, end).await,
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
}

/// A rebuild of whichever store [`Stores::visit`] hands it.
struct RebuildOne<'a> {
    rebuilder: &'a Rebuilder,
    progress: &'a RebuildProgress,
    cancel: &'a CancellationToken,
}

impl<'a> StoreVisitor<'_> for RebuildOne<'a> {
    type Output = BoxFuture<'a, Result<RebuildSummary, RebuildError>>;

    fn visit<S: Store>(self, store: &Arc<S>) -> Self::Output {
        let sink = store.clone();
        Box::pin(async move {
            let RebuildOne {
                rebuilder,
                progress,
                cancel,
            } = self;
            rebuilder.rebuild_into(&*sink, progress, cancel).await
        })
    }
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
        if let RebuildPage::Changes { batch, .. } = &page.content {
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

/// A page of the log as the read-ahead task hands it over.
type Page = Result<PreparedPage, LogError>;

/// A page of the log as the writer takes it, with what it needs to know beside it.
struct PreparedPage {
    content: RebuildPage,
    /// Where the page ends: the target holds the log up to here once it is written.
    end: LogCursor,
    /// Events (or final states) read.
    num_events: usize,
    /// Documents the page covers (final states of deleted documents write nothing but
    /// count).
    num_documents: usize,
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

/// Reads the page of the store's events after `after` (at most `page_events`) and prepares
/// it; `None` at the head.
async fn read_page<S: Rebuild>(
    log: &PgLog,
    after: LogCursor,
    page_events: usize,
) -> Result<Option<PreparedPage>, LogError> {
    let raw = log
        .store_records()
        .read_store_rows(after, S::STORE, page_events)
        .await?;
    if raw.is_empty() {
        return Ok(None);
    }
    prepare_page::<S>(log, &raw, None).await.map(Some)
}

/// Decodes and coalesces a page read by [`crate::eventlog::StoreRecords::read_store_rows`] (not empty) and, for a
/// store that keeps readiness, looks up which of its documents every store already holds.
/// The page ends at `end` if given, else at its last event.
async fn prepare_page<S: Rebuild>(
    log: &PgLog,
    raw: &RawEvents,
    end: Option<LogCursor>,
) -> Result<PreparedPage, LogError> {
    let events: Vec<RecordedEvent<DocumentEvent>> = raw.decode()?;
    let end = end.unwrap_or_else(|| events.last().map_or(LogCursor::START, |e| e.cursor));
    let num_events = events.len();
    let batch = Batch::coalesce_owned(S::STORE, end, events);
    let consistent = if S::KEEPS_READINESS {
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
        content: RebuildPage::Changes { batch, consistent },
        num_events,
    })
}

/// Decodes a page of final catalogue states (deleted documents included: they write
/// nothing but count as done).
fn prepare_states(states: &CatalogueStates) -> Result<PreparedPage, LogError> {
    let page = states
        .states()
        .map(|state| {
            state.map(|state| FinalState {
                doc_id: state.doc_id.to_owned(),
                entry: state.row,
                ready: state.ready,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PreparedPage {
        num_documents: page.len(),
        num_events: page.len(),
        content: RebuildPage::States(page),
        end: states.end(),
    })
}
