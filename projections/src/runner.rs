//! The only read → coalesce → apply → checkpoint loop. One runner per (store, partition);
//! each owns its retries, so one partition's trouble never blocks another.
//!
//! Invariants: the checkpoint only moves after the batch it covers is durably applied (or
//! durably parked); a transient failure is retried forever with backoff; a permanent one is
//! narrowed to the documents that cause it, which are parked and reported, never dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregates::LogCursor;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::error::{ErrorClass, SinkError};
use crate::retry::{RetryOutcome, RetryPolicy};
use crate::sink::{Batch, DocChange, Partition, Sink};
use crate::source::{AppliedVersion, LogSource, SourceError};

/// Failpoint (feature `failpoints`) after the store write, before the applied versions are
/// recorded and the log-side checkpoint saved (for a sink that keeps its own checkpoint: after
/// the commit of data and checkpoint, before the record). See [`failpoint_name`].
pub const FAILPOINT_AFTER_APPLY: &str = "after_apply";
/// Failpoint (feature `failpoints`) after the applied versions are recorded, before the
/// log-side checkpoint is saved.
pub const FAILPOINT_BEFORE_CHECKPOINT: &str = "before_checkpoint";

/// The `fail` crate name of a runner failpoint: `runner::<sink>::<point>`. With the action
/// `return` the runner stops right there as a crash would (state `failed`, nothing more
/// written); any other action of the `fail` crate works as documented there.
pub fn failpoint_name(sink: &str, point: &str) -> String {
    format!("runner::{sink}::{point}")
}

/// What a failpoint's `return` action does: stop the runner like a crash.
#[cfg(feature = "failpoints")]
fn simulated_crash(sink: &str, point: &str) -> Stop {
    Stop::Fatal(format!(
        "failpoint {}: simulated crash",
        failpoint_name(sink, point)
    ))
}

/// Tuning of a runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most events of the log read per batch, of any partition and type (only the
    /// runner's are applied).
    pub batch_size: usize,
    /// Longest wait for a NOTIFY before polling the log again.
    pub idle_poll: Duration,
    /// After a batch that was not full, the next read starts no sooner than this long after
    /// the previous one (zero: at once). Commands arriving one by one are then applied
    /// together instead of one batch each: fewer, larger store writes for at most this much
    /// more time to consistent. A full batch (a backlog) is followed by the next read at once.
    pub linger: Duration,
    /// Backoff for store and log failures.
    pub retry: RetryPolicy,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            linger: Duration::ZERO,
            retry: RetryPolicy::default(),
        }
    }
}

/// What a runner is doing, for status pages and the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunnerState {
    /// `starting` | `running` | `retrying` | `paused` | `failed` | `stopped`.
    pub state: &'static str,
    /// Checkpoint: everything up to here is applied.
    pub applied: LogCursor,
    /// Unix milliseconds of the newest applied event's recording time.
    pub applied_recorded_at_ms: Option<i64>,
    /// Last error seen (cleared by the next success).
    pub last_error: Option<String>,
    /// Changes parked since start.
    pub num_parked: u64,
    /// Events applied since start.
    pub num_events: u64,
    /// Batches applied since start.
    pub num_batches: u64,
    /// Changes (coalesced, one per document) written since start.
    pub num_changes: u64,
    /// Microseconds spent applying batches (read excluded), since start.
    pub apply_micros: u64,
    /// Retries of transient failures (store or log) since start.
    pub num_transient_retries: u64,
    /// Permanent refusals since start (each narrowed and parked).
    pub num_permanent_failures: u64,
}

/// Told the time of each batch applied (a metrics histogram, say).
pub type BatchObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// Shared, observable status of a runner plus its pause switch.
pub struct RunnerStatus {
    /// The store.
    pub sink: &'static str,
    /// The partition.
    pub partition: Partition,
    state: Mutex<RunnerState>,
    paused: watch::Sender<bool>,
    on_batch: std::sync::OnceLock<BatchObserver>,
}

impl std::fmt::Debug for RunnerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerStatus")
            .field("sink", &self.sink)
            .field("partition", &self.partition)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RunnerStatus {
    /// The status of a runner of `sink` over `partition` that has not started.
    pub fn new(sink: &'static str, partition: Partition) -> Self {
        Self {
            sink,
            partition,
            state: Mutex::new(RunnerState {
                state: "starting",
                ..Default::default()
            }),
            paused: watch::Sender::new(false),
            on_batch: std::sync::OnceLock::new(),
        }
    }

    /// Tells `observer` the time of every batch applied from now on (the first observer
    /// set stays).
    pub fn observe_batches(&self, observer: BatchObserver) {
        let _ = self.on_batch.set(observer);
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> RunnerState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut RunnerState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// Sets the state shown while no runner drives the partition (`standby`: another process
    /// holds its lease).
    pub fn set_state(&self, state: &'static str) {
        self.update(|s| s.state = state);
    }

    /// Moves the shown checkpoint forward to `cursor` (for a partition another process
    /// drives: its progress is read from the shared checkpoint).
    pub fn set_applied(&self, cursor: LogCursor) {
        self.update(|s| s.applied = s.applied.max(cursor));
    }

    /// Pauses or resumes the runner (it finishes the batch in hand first). A resumed runner
    /// continues from its stored checkpoint, which a rebuild may have moved meanwhile.
    pub fn set_paused(&self, paused: bool) {
        // Only a change wakes the runner: the cluster-wide control sets the switch on every
        // poll, and a wake-up cuts the runner's linger and idle waits short.
        self.paused.send_if_modified(|p| {
            let changed = *p != paused;
            *p = paused;
            changed
        });
    }

    /// Whether the runner is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }
}

/// Drives one sink over one partition of the log.
pub struct Runner<S: Sink, L: LogSource> {
    sink: S,
    source: L,
    partition: Partition,
    config: RunnerConfig,
    status: Arc<RunnerStatus>,
    consistent: Option<mpsc::Sender<Vec<AppliedVersion>>>,
    /// The lease generation this runner writes under (see [`Runner::with_fence`]).
    fence: Option<i64>,
}

enum Stop {
    Cancelled,
    /// Another process owns the partition now: stop without writing anything more.
    Fenced(String),
    Fatal(String),
}

impl<S: Sink, L: LogSource> Runner<S, L> {
    /// A runner for `sink` over `partition`. `consistent` receives the documents that became
    /// consistent across all stores after each batch.
    pub fn new(
        sink: S,
        source: L,
        partition: Partition,
        config: RunnerConfig,
        consistent: Option<mpsc::Sender<Vec<AppliedVersion>>>,
    ) -> Self {
        Self {
            sink,
            source,
            partition,
            config,
            status: Arc::new(RunnerStatus::new(S::NAME, partition)),
            consistent,
            fence: None,
        }
    }

    /// Writes under the fencing token `generation` (the partition's lease generation when
    /// the runner started): every batch carries it to the sink, and the checkpoint moves
    /// only while it still owns the partition. A runner that finds itself fenced off stops.
    pub fn with_fence(mut self, generation: i64) -> Self {
        self.fence = Some(generation);
        self
    }

    /// Reports through `status` instead of a fresh one (a partition's successive runners,
    /// when its lease moves away and back, keep one status).
    pub fn with_status(mut self, status: Arc<RunnerStatus>) -> Self {
        self.status = status;
        self
    }

    /// The runner's observable status (keep it before calling [`Runner::run`]).
    pub fn status(&self) -> Arc<RunnerStatus> {
        Arc::clone(&self.status)
    }

    /// Runs until `cancel`; the batch in hand is finished and checkpointed first.
    pub async fn run(mut self, cancel: CancellationToken) {
        let part = self.partition;
        match self.run_inner(&cancel).await {
            Stop::Cancelled => {
                self.status.update(|s| s.state = "stopped");
                info!(sink = S::NAME, partition = part.index, "projector stopped");
            }
            Stop::Fenced(message) => {
                warn!(sink = S::NAME, partition = part.index, generation = ?self.fence, reason = %message, "projector fenced off: another process owns the partition now");
                self.status.update(|s| s.state = "stopped");
            }
            Stop::Fatal(message) => {
                error!(sink = S::NAME, partition = part.index, error = %message, "projector stopped on a fatal error");
                self.status.update(|s| {
                    s.state = "failed";
                    s.last_error = Some(message);
                });
            }
        }
    }

    async fn with_retry<T, E, Fut>(
        &self,
        cancel: &CancellationToken,
        what: &'static str,
        class: impl Fn(&E) -> ErrorClass,
        op: impl FnMut() -> Fut,
    ) -> Result<T, RetryOutcome<E>>
    where
        E: std::fmt::Display,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let status = &self.status;
        let part = self.partition;
        let result = self
            .config
            .retry
            .run(
                cancel,
                |e| class(e) == ErrorClass::Transient,
                |attempt, e| {
                    warn!(sink = S::NAME, partition = part.index, attempt, error = %e, what, "projection step failed, retrying");
                    status.update(|s| {
                        s.num_transient_retries += 1;
                        s.state = "retrying";
                        s.last_error = Some(e.to_string());
                    });
                },
                op,
            )
            .await;
        if result.is_ok() {
            status.update(|s| {
                if s.state == "retrying" {
                    s.state = "running";
                    s.last_error = None;
                }
            });
        }
        result
    }

    async fn source_step<T, Fut>(
        &self,
        cancel: &CancellationToken,
        what: &'static str,
        op: impl FnMut() -> Fut,
    ) -> Result<T, Stop>
    where
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        self.with_retry(cancel, what, |_: &SourceError| ErrorClass::Transient, op)
            .await
            .map_err(|_| Stop::Cancelled)
    }

    async fn start_cursor(&mut self, cancel: &CancellationToken) -> Result<LogCursor, Stop> {
        let part = self.partition;
        let own = if S::KEEPS_OWN_CHECKPOINT {
            let sink = &self.sink;
            let retry = self.config.retry;
            retry
                .run(
                    cancel,
                    |e: &SinkError| e.class == ErrorClass::Transient,
                    |attempt, e| warn!(sink = S::NAME, attempt, error = %e, "reading checkpoint failed, retrying"),
                    || sink.checkpoint(part),
                )
                .await
                .map_err(|e| match e {
                    RetryOutcome::Cancelled => Stop::Cancelled,
                    RetryOutcome::Failed(e) => Stop::Fatal(e.to_string()),
                })?
        } else {
            None
        };
        let source = self.source.clone();
        let stored = match own {
            Some(own) => Some(own),
            // No checkpoint of its own for this partition count: where a change of count
            // seeded the log-side one, or the start of the log (an emptied store).
            None if S::KEEPS_OWN_CHECKPOINT => {
                self.source_step(cancel, "load seeded checkpoint", || {
                    source.load_seed(S::NAME, part)
                })
                .await?
            }
            None => {
                self.source_step(cancel, "load checkpoint", || {
                    source.load_checkpoint(S::NAME, part)
                })
                .await?
            }
        };
        match stored {
            None => Ok(LogCursor::START),
            Some((log_id, cursor)) if log_id == self.source.log_id() => Ok(cursor),
            Some((log_id, _)) => Err(Stop::Fatal(format!(
                "checkpoint belongs to log {log_id}, not to this log {}: rebuild the store",
                self.source.log_id()
            ))),
        }
    }

    async fn run_inner(&mut self, cancel: &CancellationToken) -> Stop {
        let part = self.partition;
        {
            // The shared retry shows a store that cannot be prepared (refused credentials,
            // say) as retrying with its error in /v1/projections.
            let sink = &self.sink;
            let prepared = self
                .with_retry(
                    cancel,
                    "prepare store",
                    |e: &SinkError| e.class,
                    || sink.prepare(),
                )
                .await;
            match prepared {
                Ok(()) => {}
                Err(RetryOutcome::Cancelled) => return Stop::Cancelled,
                Err(RetryOutcome::Failed(e)) => return Stop::Fatal(e.to_string()),
            }
        }
        let mut cursor = match self.start_cursor(cancel).await {
            Ok(c) => c,
            Err(stop) => return stop,
        };
        if S::KEEPS_OWN_CHECKPOINT {
            if let Err(stop) = self.catch_up_records(cancel, cursor).await {
                return stop;
            }
        }
        self.status.update(|s| {
            s.state = "running";
            s.applied = cursor;
        });
        info!(sink = S::NAME, partition = part.index, partitions = part.count, %cursor, "projector started");
        let mut paused = self.status.paused.subscribe();
        // When the next read may start (see `RunnerConfig::linger`).
        let mut linger_until: Option<tokio::time::Instant> = None;
        loop {
            if cancel.is_cancelled() {
                return Stop::Cancelled;
            }
            if *paused.borrow_and_update() {
                self.status.update(|s| s.state = "paused");
                tokio::select! {
                    _ = cancel.cancelled() => return Stop::Cancelled,
                    _ = paused.changed() => {}
                }
                if !*paused.borrow() {
                    // Resumed: a rebuild may have replaced the store and moved the
                    // checkpoint while the runner was paused; continue from the stored one.
                    cursor = match self.resume_cursor(cancel).await {
                        Ok(c) => c,
                        Err(stop) => return stop,
                    };
                }
                continue;
            }
            if let Some(until) = linger_until.take() {
                tokio::select! {
                    _ = cancel.cancelled() => return Stop::Cancelled,
                    // A pause (or resume) is looked at before reading.
                    _ = paused.changed() => continue,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            let source = self.source.clone();
            let limit = self.config.batch_size;
            let read_started = std::time::Instant::now();
            let page = match self
                .source_step(cancel, "read", || {
                    source.read_for_store(S::STORE, cursor, part, limit)
                })
                .await
            {
                Ok(p) => p,
                Err(stop) => return stop,
            };
            let Some((end, recorded_at)) = page.last else {
                self.status.update(|s| {
                    if s.state != "retrying" {
                        s.state = "running";
                    }
                });
                tokio::select! {
                    _ = cancel.cancelled() => return Stop::Cancelled,
                    _ = paused.changed() => {}
                    _ = self.source.wait_for_append(self.config.idle_poll) => {}
                }
                continue;
            };
            if page.num_read < limit && !self.config.linger.is_zero() {
                linger_until =
                    Some(tokio::time::Instant::from_std(read_started) + self.config.linger);
            }
            let mut batch = Batch::coalesce_owned(S::STORE, end, page.events);
            batch.num_events = page.num_of_partition;
            batch.fence = self.fence;
            let span = tracing::debug_span!(
                "batch",
                sink = S::NAME,
                partition = part.index,
                from = %cursor,
                to = %end,
                events = batch.num_events
            );
            let started = std::time::Instant::now();
            let steps = match self.apply_batch(cancel, &mut batch).instrument(span).await {
                Ok(steps) => steps,
                Err(stop) => return stop,
            };
            let took = started.elapsed();
            if let Some(observe) = self.status.on_batch.get() {
                observe(took);
            }
            let took = took.as_micros() as u64;
            debug!(
                sink = S::NAME,
                partition = part.index,
                events = batch.num_events,
                changes = batch.changes.len(),
                read_ms = ms(started - read_started),
                store_ms = ms(steps.store),
                record_ms = ms(steps.record),
                checkpoint_ms = ms(steps.checkpoint),
                lag_ms = now_ms() - recorded_at,
                "batch done"
            );
            cursor = end;
            self.status.update(|s| {
                s.applied = end;
                s.applied_recorded_at_ms = Some(recorded_at);
                s.num_events += batch.num_events as u64;
                s.num_batches += 1;
                s.num_changes += batch.changes.len() as u64;
                s.apply_micros += took;
            });
        }
    }

    /// The checkpoint to continue from after a pause (see [`RunnerStatus::set_paused`]).
    async fn resume_cursor(&mut self, cancel: &CancellationToken) -> Result<LogCursor, Stop> {
        let cursor = self.start_cursor(cancel).await?;
        if S::KEEPS_OWN_CHECKPOINT {
            self.catch_up_records(cancel, cursor).await?;
        }
        self.status.update(|s| {
            s.state = "running";
            s.applied = cursor;
        });
        info!(sink = S::NAME, partition = self.partition.index, %cursor, "projector resumed");
        Ok(cursor)
    }

    /// Applies a batch under the retry policy; on a permanent failure, narrows it down to the
    /// refused documents, parks them and applies the rest.
    async fn apply_batch(
        &mut self,
        cancel: &CancellationToken,
        batch: &mut Batch,
    ) -> Result<StepTimes, Stop> {
        let started = std::time::Instant::now();
        let part = self.partition;
        debug!(sink = S::NAME, partition = part.index, from = ?batch.changes.first().map(|c| c.cursor), to = %batch.end, events = batch.num_events, changes = batch.changes.len(), "applying batch");
        let mut applied = Vec::with_capacity(batch.changes.len());
        // Sinks that need blob bytes get them in slices of at most MAX_BLOB_BYTES_IN_MEMORY,
        // so a batch of large blobs never sits in memory at once.
        match S::NEEDS_BLOBS.then(|| blob_slices(batch)).flatten() {
            None => self.apply_slice(cancel, batch, &mut applied).await?,
            Some(slices) => {
                for mut slice in slices {
                    self.apply_slice(cancel, &mut slice, &mut applied).await?;
                }
            }
        }
        fail::fail_point!(&failpoint_name(S::NAME, FAILPOINT_AFTER_APPLY), |_| Err(
            simulated_crash(S::NAME, FAILPOINT_AFTER_APPLY)
        ));
        let stored = std::time::Instant::now();
        // Applied versions are recorded before the log-side checkpoint moves: a crash in
        // between re-applies (idempotent) and re-records (idempotent), never skips a record.
        self.record(cancel, &applied).await?;
        let recorded = std::time::Instant::now();
        fail::fail_point!(
            &failpoint_name(S::NAME, FAILPOINT_BEFORE_CHECKPOINT),
            |_| Err(simulated_crash(S::NAME, FAILPOINT_BEFORE_CHECKPOINT))
        );
        self.save_checkpoint(cancel, batch.end).await?;
        Ok(StepTimes {
            store: stored - started,
            record: recorded - stored,
            checkpoint: recorded.elapsed(),
        })
    }

    /// Saves the log-side checkpoint under the runner's fence.
    async fn save_checkpoint(
        &self,
        cancel: &CancellationToken,
        end: LogCursor,
    ) -> Result<(), Stop> {
        let source = self.source.clone();
        let (part, fence) = (self.partition, self.fence);
        let held = self
            .source_step(cancel, "save checkpoint", || {
                source.save_checkpoint(S::NAME, part, end, fence)
            })
            .await?;
        if held {
            Ok(())
        } else {
            Err(Stop::Fenced(format!(
                "the checkpoint at {end} was not saved: generation {fence:?} no longer owns the lease"
            )))
        }
    }

    /// Loads the slice's blobs (for sinks that need them) and applies it; on a permanent
    /// refusal narrows it to the refused documents. Appends what was applied to `applied`.
    async fn apply_slice(
        &mut self,
        cancel: &CancellationToken,
        slice: &mut Batch,
        applied: &mut Vec<AppliedVersion>,
    ) -> Result<(), Stop> {
        let part = self.partition;
        if S::NEEDS_BLOBS {
            let shas = slice.blob_shas();
            if !shas.is_empty() {
                let source = self.source.clone();
                slice.blobs = self
                    .source_step(cancel, "load blobs", || source.load_blobs(&shas))
                    .await?;
            }
        }
        self.drop_superseded_by_deletion(cancel, slice).await?;
        match self.apply_with_retry(cancel, slice).await? {
            Ok(()) => applied.extend(slice.changes.iter().map(|c| AppliedVersion {
                doc_id: c.doc_id.clone(),
                version: c.version,
            })),
            Err(fenced) if fenced.class == ErrorClass::Fenced => {
                return Err(Stop::Fenced(fenced.to_string()))
            }
            Err(first) => {
                warn!(sink = S::NAME, partition = part.index, error = %first, "batch refused, applying its documents one by one");
                applied.extend(self.apply_one_by_one(cancel, slice).await?);
            }
        }
        slice.blobs.clear();
        Ok(())
    }

    /// Deletes win: drops from `slice` the puts of documents the log has deleted since at a
    /// greater version (a store would hold a deleted document's older state until the
    /// deletion is applied, or for good if it was applied already by another owner). One
    /// read per slice, for sinks that do not keep tombstones themselves.
    async fn drop_superseded_by_deletion(
        &self,
        cancel: &CancellationToken,
        slice: &mut Batch,
    ) -> Result<(), Stop> {
        if S::KEEPS_TOMBSTONES {
            return Ok(());
        }
        let candidates = slice.puts();
        if candidates.is_empty() {
            return Ok(());
        }
        let source = self.source.clone();
        let deleted = self
            .source_step(cancel, "check deletions", || {
                source.deleted_since(&candidates)
            })
            .await?;
        let dropped = slice.drop_puts_of(&deleted);
        if dropped > 0 {
            debug!(
                sink = S::NAME,
                partition = self.partition.index,
                dropped,
                "puts superseded by a deletion skipped"
            );
        }
        Ok(())
    }

    async fn record(
        &self,
        cancel: &CancellationToken,
        applied: &[AppliedVersion],
    ) -> Result<(), Stop> {
        if applied.is_empty() {
            return Ok(());
        }
        let source = self.source.clone();
        let consistent = self
            .source_step(cancel, "record applied versions", || {
                source.record_applied(S::STORE, applied)
            })
            .await?;
        if let (Some(tx), false) = (&self.consistent, consistent.is_empty()) {
            // Bounded: a slow tracker slows projection down instead of growing memory.
            // A closed tracker is fine: readiness is recomputed from the log database.
            let _ = tx.send(consistent).await;
        }
        Ok(())
    }

    /// For sinks that checkpoint with their data: the log-side checkpoint marks how far
    /// applied versions were recorded. After a crash between the store's commit and that
    /// record, re-record the versions of the events in between (without re-applying them).
    async fn catch_up_records(
        &self,
        cancel: &CancellationToken,
        own: LogCursor,
    ) -> Result<(), Stop> {
        let part = self.partition;
        let source = self.source.clone();
        let mut cursor = self
            .source_step(cancel, "load checkpoint", || {
                source.load_checkpoint(S::NAME, part)
            })
            .await?
            .map_or(LogCursor::START, |(_, c)| c);
        while cursor < own {
            let source = self.source.clone();
            let limit = self.config.batch_size;
            let page = self
                .source_step(cancel, "read", || {
                    source.read_for_store(S::STORE, cursor, part, limit)
                })
                .await?;
            let Some((last, _)) = page.last else { break };
            let end = last.min(own);
            let within: Vec<_> = page
                .events
                .into_iter()
                .take_while(|e| e.cursor <= own)
                .collect();
            let batch = Batch::coalesce_owned(S::STORE, end, within);
            let applied: Vec<AppliedVersion> = batch
                .changes
                .iter()
                .map(|c| AppliedVersion {
                    doc_id: c.doc_id.clone(),
                    version: c.version,
                })
                .collect();
            self.record(cancel, &applied).await?;
            self.save_checkpoint(cancel, end).await?;
            cursor = end;
        }
        Ok(())
    }

    /// `Ok(Ok(()))` applied; `Ok(Err(e))` permanently refused; `Err` cancelled.
    async fn apply_with_retry(
        &mut self,
        cancel: &CancellationToken,
        batch: &Batch,
    ) -> Result<Result<(), SinkError>, Stop> {
        let part = self.partition;
        let log_id = self.source.log_id().to_owned();
        let sink = &self.sink;
        let status = &self.status;
        let result = self
            .config
            .retry
            .run(
                cancel,
                |e: &SinkError| e.class == ErrorClass::Transient,
                |attempt, e| {
                    warn!(sink = S::NAME, partition = part.index, attempt, error = %e, "batch apply failed, retrying");
                    status.update(|s| s.num_transient_retries += 1);
                    status.update(|s| {
                        s.state = "retrying";
                        s.last_error = Some(e.to_string());
                    });
                },
                || sink.apply(&log_id, part, batch),
            )
            .await;
        match result {
            Ok(_) => {
                status.update(|s| {
                    s.state = "running";
                    s.last_error = None;
                });
                Ok(Ok(()))
            }
            Err(RetryOutcome::Cancelled) => Err(Stop::Cancelled),
            Err(RetryOutcome::Failed(e)) => Ok(Err(e)),
        }
    }

    async fn apply_one_by_one(
        &mut self,
        cancel: &CancellationToken,
        batch: &Batch,
    ) -> Result<Vec<AppliedVersion>, Stop> {
        let mut applied = Vec::with_capacity(batch.changes.len());
        let n = batch.changes.len();
        for (i, change) in batch.changes.iter().enumerate() {
            // Each piece checkpoints at its own event; the last one at the batch's end.
            // State transfer makes that safe: a restart re-reads only newer states.
            let end = if i + 1 == n { batch.end } else { change.cursor };
            let mut single = Batch::single(change.clone(), end, &batch.blobs);
            single.fresh_first_versions = batch.fresh_first_versions;
            single.fence = batch.fence;
            match self.apply_with_retry(cancel, &single).await? {
                Ok(()) => applied.push(AppliedVersion {
                    doc_id: change.doc_id.clone(),
                    version: change.version,
                }),
                Err(e) if e.class == ErrorClass::Fenced => return Err(Stop::Fenced(e.to_string())),
                Err(e) => {
                    self.park(cancel, change, &e).await?;
                    let only_checkpoint = Batch {
                        end,
                        fence: batch.fence,
                        ..Batch::default()
                    };
                    if let Err(e) = self.apply_with_retry(cancel, &only_checkpoint).await? {
                        if e.class == ErrorClass::Fenced {
                            return Err(Stop::Fenced(e.to_string()));
                        }
                        return Err(Stop::Fatal(format!(
                            "cannot move checkpoint past a parked change: {e}"
                        )));
                    }
                }
            }
        }
        Ok(applied)
    }

    async fn park(
        &self,
        cancel: &CancellationToken,
        change: &DocChange,
        e: &SinkError,
    ) -> Result<(), Stop> {
        error!(sink = S::NAME, partition = self.partition.index, doc_id = %change.doc_id, version = change.version, error = %e, "store refused a change; parked, compensation required");
        let source = self.source.clone();
        self.source_step(cancel, "park", || source.park(S::NAME, change, e))
            .await?;
        self.status.update(|s| {
            s.num_parked += 1;
            s.num_permanent_failures += 1;
        });
        Ok(())
    }
}

/// Where one batch's time went (debug log `batch done`).
struct StepTimes {
    /// Blobs loaded and the store written.
    store: Duration,
    /// Applied versions recorded in the log database.
    record: Duration,
    /// Checkpoint saved.
    checkpoint: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Most blob bytes a sink that needs them holds in memory for one apply.
pub const MAX_BLOB_BYTES_IN_MEMORY: u64 = 64 * 1024 * 1024;

/// Cuts a batch into slices whose blobs add up to at most [`MAX_BLOB_BYTES_IN_MEMORY`] (a
/// single larger blob is a slice of its own); `None` when the whole batch fits. Every slice
/// but the last ends at its newest change's event (state transfer makes that a safe
/// checkpoint); the last one at the batch's end.
fn blob_slices(batch: &Batch) -> Option<Vec<Batch>> {
    use aggregates::DocumentEvent;
    let size = |c: &crate::sink::DocChange| match &c.change {
        crate::sink::Change::Upsert(DocumentEvent::BlobStored { size, .. }) => *size,
        _ => 0,
    };
    let total: u64 = batch.changes.iter().map(size).sum();
    if total <= MAX_BLOB_BYTES_IN_MEMORY {
        return None;
    }
    let mut slices: Vec<Vec<crate::sink::DocChange>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for change in &batch.changes {
        let n = size(change);
        let current = slices.last().map_or(0, Vec::len);
        if current > 0 && bytes + n > MAX_BLOB_BYTES_IN_MEMORY {
            slices.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(last) = slices.last_mut() {
            last.push(change.clone());
        }
    }
    let count = slices.len();
    slices
        .into_iter()
        .enumerate()
        .map(|(i, changes)| Batch {
            end: if i + 1 == count {
                batch.end
            } else {
                changes.iter().map(|c| c.cursor).max().unwrap_or(batch.end)
            },
            num_events: if i + 1 == count { batch.num_events } else { 0 },
            changes,
            blobs: Default::default(),
            fresh_first_versions: batch.fresh_first_versions,
            fence: batch.fence,
        })
        .collect::<Vec<_>>()
        .into()
}

/// Milliseconds since the Unix epoch, for lag computations.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod blob_slice_tests {
    use aggregates::{DocId, DocumentEvent, LogCursor};

    use super::{blob_slices, MAX_BLOB_BYTES_IN_MEMORY};
    use crate::sink::{Batch, Change, DocChange};

    fn blob_change(doc: &str, position: i64, size: u64) -> DocChange {
        DocChange {
            doc_id: DocId::parse(doc).expect("valid id"),
            version: 1,
            cursor: LogCursor {
                epoch: 1,
                xid: 7,
                position,
            },
            change: Change::Upsert(DocumentEvent::BlobStored {
                version: 1,
                sha256: "a".repeat(64),
                size,
                content_type: "application/pdf".into(),
            }),
        }
    }

    #[test]
    fn large_blobs_are_applied_in_bounded_slices() {
        let end = LogCursor {
            epoch: 1,
            xid: 9,
            position: 100,
        };
        let big = MAX_BLOB_BYTES_IN_MEMORY * 5 / 8;
        let batch = Batch {
            end,
            num_events: 9,
            changes: vec![
                blob_change("a", 3, big),
                blob_change("b", 6, big),
                blob_change("c", 9, 10),
            ],
            ..Batch::default()
        };
        let slices = blob_slices(&batch).expect("over the limit: sliced");
        let docs: Vec<Vec<&str>> = slices
            .iter()
            .map(|s| s.changes.iter().map(|c| c.doc_id.as_str()).collect())
            .collect();
        assert_eq!(docs, vec![vec!["a"], vec!["b", "c"]]);
        assert_eq!(
            slices[0].end.position, 3,
            "an inner slice checkpoints at its own newest event"
        );
        assert_eq!(
            slices[1].end, end,
            "the last slice ends where the batch ends"
        );

        let small = Batch {
            changes: vec![blob_change("a", 3, 10), blob_change("b", 6, 10)],
            ..batch
        };
        assert!(
            blob_slices(&small).is_none(),
            "a batch within the limit is applied whole"
        );
    }
}

#[cfg(test)]
mod status_tests {
    use super::RunnerStatus;
    use crate::sink::Partition;

    #[test]
    fn setting_the_pause_switch_to_its_value_wakes_nobody() {
        let status = RunnerStatus::new("mysql", Partition::ALL);
        let mut seen = status.paused.subscribe();
        status.set_paused(false);
        assert!(!seen.has_changed().expect("open"), "unchanged: no wake-up");
        status.set_paused(true);
        assert!(seen.has_changed().expect("open"), "paused: a wake-up");
        seen.borrow_and_update();
        status.set_paused(true);
        assert!(
            !seen.has_changed().expect("open"),
            "still paused: no wake-up"
        );
    }
}
