//! Starts one runner per store and partition and reports their status. The runners are the
//! projector actors of the design (README, "How it stays consistent"): each owns its loop, retries and checkpoint; this module
//! owns their tasks and joins them at shutdown.

use std::sync::Arc;

use aggregates::StoreKind;
use projections::{LogSource, Partition, Runner, RunnerConfig, RunnerStatus, Sink, Store};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::eventlog::lease::{LeaseKey, Leases};
use crate::eventlog::RebuildStatus;
use crate::eventlog::{LogError, PgLog};
use crate::stores::{StoreVisitor, Stores};

/// Unapplied events are counted among the next this many × partitions events of the log,
/// about this many per partition (`lag_events`); a larger backlog shows as about this
/// number, and `lag_seconds` tells how far behind it is.
pub const LAG_COUNT_CAP: i64 = 10_000;

/// Every runner of the service.
#[derive(Default)]
pub struct Projectors {
    statuses: Vec<Arc<RunnerStatus>>,
    handles: Vec<JoinHandle<()>>,
    /// When set, a partition's runner runs only while this process holds its lease.
    leases: Option<Leases>,
    /// Where batch times are observed.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// One partition's status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionStatus {
    /// Partition index.
    pub partition: u32,
    /// Runner state.
    pub state: &'static str,
    /// Checkpoint position.
    pub applied_position: i64,
    /// Events of the partition not yet applied, counted up to [`LAG_COUNT_CAP`].
    pub lag_events: i64,
    /// Age of the oldest unapplied event, seconds.
    pub lag_seconds: f64,
    /// Last error.
    pub last_error: Option<String>,
    /// Events this process applied since it started.
    pub events_applied: u64,
    /// Batches this process applied since it started.
    pub batches: u64,
    /// Coalesced changes (one per document and batch) written since start.
    pub changes_applied: u64,
    /// Seconds spent applying batches since start.
    pub apply_seconds: f64,
    /// Transient failures retried since start.
    pub transient_retries: u64,
    /// Permanent refusals (parked changes) since start.
    pub permanent_failures: u64,
}

/// One store's status (the contract's `GET /v1/projections` element).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// `mysql` | `milvus` | `s3`.
    pub name: &'static str,
    /// Worst state of its partitions.
    pub state: &'static str,
    /// Lowest checkpoint position over partitions.
    pub applied_position: i64,
    /// Newest log position.
    pub head_position: i64,
    /// Unapplied events over all partitions (each counted up to [`LAG_COUNT_CAP`]).
    pub lag_events: i64,
    /// Age of the oldest unapplied event, seconds.
    pub lag_seconds: f64,
    /// A partition's last error.
    pub last_error: Option<String>,
    /// Age of the oldest running transaction holding the log's read horizon, seconds.
    pub oldest_running_xact_seconds: f64,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
    /// The store's running or last rebuild, whichever process runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

fn state_rank(state: &str) -> u8 {
    match state {
        "failed" => 5,
        "retrying" => 4,
        "paused" => 3,
        "starting" => 2,
        "stopped" => 1,
        _ => 0,
    }
}

impl Projectors {
    /// Projectors whose runners run only while this process holds their partition's lease
    /// (several processes on one log share the partitions).
    pub fn leased(leases: Leases) -> Projectors {
        Projectors {
            leases: Some(leases),
            ..Projectors::default()
        }
    }

    /// Observes every batch's time in `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Projectors {
        Projectors {
            metrics: Some(metrics),
            ..self
        }
    }

    fn observe(&self, status: &RunnerStatus) {
        if let Some(metrics) = &self.metrics {
            status.observe_batches(Box::new(
                metrics.batch_observer(status.sink, status.partition.index),
            ));
        }
    }

    /// Starts the runners of every store's partitions (see [`Projectors::start`]).
    pub fn start_all(
        &mut self,
        stores: &Stores,
        log: &PgLog,
        partitions: u32,
        config: &RunnerConfig,
        consistent: &mpsc::Sender<Vec<projections::AppliedVersion>>,
        cancel: &CancellationToken,
    ) {
        for store in StoreKind::ALL {
            stores.visit(
                store,
                StartRunners {
                    projectors: self,
                    log,
                    partitions,
                    config,
                    consistent,
                    cancel,
                },
            );
        }
    }

    /// Starts `partitions` runners of `sink` over `log` (each under its lease, if leased).
    pub fn start<S: Sink + Clone>(
        &mut self,
        sink: S,
        log: &PgLog,
        partitions: u32,
        config: &RunnerConfig,
        consistent: &mpsc::Sender<Vec<projections::AppliedVersion>>,
        cancel: &CancellationToken,
    ) {
        for part in Partition::all(partitions) {
            let shared_log = log.clone();
            let checkpoint = move || {
                let log = shared_log.clone();
                async move {
                    LogSource::load_checkpoint(&log, S::NAME, part)
                        .await
                        .ok()
                        .flatten()
                        .map(|(_, cursor)| cursor)
                }
            };
            let control_log = log.clone();
            let (sink, log, config, consistent) = (
                sink.clone(),
                log.clone(),
                config.clone(),
                consistent.clone(),
            );
            let runner = move || {
                Runner::new(
                    sink.clone(),
                    log.clone(),
                    part,
                    config.clone(),
                    Some(consistent.clone()),
                )
            };
            match &self.leases {
                None => {
                    let runner = runner();
                    self.observe(&runner.status());
                    self.statuses.push(runner.status());
                    self.handles.push(tokio::spawn(runner.run(cancel.clone())));
                }
                Some(leases) => {
                    let status = Arc::new(RunnerStatus::new(S::NAME, part));
                    self.observe(&status);
                    let claim = leases.claim(LeaseKey {
                        sink: S::NAME,
                        partition: part,
                    });
                    self.statuses.push(status.clone());
                    let shared = status.clone();
                    let paused_now = move || {
                        let log = control_log.clone();
                        async move { log.control().paused_now(S::NAME).await.ok() }
                    };
                    self.handles.push(tokio::spawn(super::lease::supervise(
                        claim,
                        status,
                        cancel.clone(),
                        move |token, generation| {
                            runner()
                                .with_status(shared.clone())
                                .with_fence(generation)
                                .run(token)
                        },
                        checkpoint,
                        paused_now,
                    )));
                }
            }
        }
    }

    /// A cloneable view of the runners' status, for the API.
    pub fn view(&self) -> ProjectionView {
        ProjectionView {
            statuses: self.statuses.clone(),
        }
    }

    /// Waits for every runner to stop (after the cancel token fired).
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// The runners' observable status and pause switches.
#[derive(Clone, Default)]
pub struct ProjectionView {
    statuses: Vec<Arc<RunnerStatus>>,
}

impl ProjectionView {
    /// The runners of one store.
    pub fn of(&self, name: &str) -> Vec<Arc<RunnerStatus>> {
        self.statuses
            .iter()
            .filter(|s| s.sink == name)
            .cloned()
            .collect()
    }

    /// The status of every store, in the contract's shape.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the log cannot be read.
    pub async fn status(&self, log: &PgLog) -> Result<Vec<StoreStatus>, LogError> {
        let horizon = log.reads().horizon().await?;
        let controls = log.control().store_controls().await?;
        let now = projections::runner::now_ms();
        let mut out = Vec::new();
        for store in StoreKind::ALL {
            let mut partitions = Vec::new();
            for status in self.of(store.name()) {
                let snap = status.snapshot();
                let (lag_events, oldest) = log
                    .reads()
                    .lag_after(snap.applied, status.partition, LAG_COUNT_CAP)
                    .await?;
                partitions.push(PartitionStatus {
                    partition: status.partition.index,
                    state: snap.state,
                    applied_position: snap.applied.position,
                    lag_events,
                    lag_seconds: oldest.map_or(0.0, |t| ((now - t).max(0) as f64) / 1000.0),
                    last_error: snap.last_error,
                    events_applied: snap.num_events,
                    batches: snap.num_batches,
                    changes_applied: snap.num_changes,
                    apply_seconds: snap.apply_micros as f64 / 1e6,
                    transient_retries: snap.num_transient_retries,
                    permanent_failures: snap.num_permanent_failures,
                });
            }
            let state = partitions
                .iter()
                .map(|p| p.state)
                .max_by_key(|s| state_rank(s))
                .unwrap_or("stopped");
            out.push(StoreStatus {
                name: store.name(),
                state,
                applied_position: partitions
                    .iter()
                    .map(|p| p.applied_position)
                    .min()
                    .unwrap_or(0),
                head_position: horizon.head_position,
                lag_events: partitions.iter().map(|p| p.lag_events).sum(),
                lag_seconds: partitions.iter().map(|p| p.lag_seconds).fold(0.0, f64::max),
                last_error: partitions.iter().find_map(|p| p.last_error.clone()),
                oldest_running_xact_seconds: horizon.oldest_running_xact_seconds,
                partitions,
                rebuild: controls
                    .iter()
                    .find(|c| c.sink == store.name())
                    .and_then(|c| c.rebuild_status.clone()),
            });
        }
        Ok(out)
    }
}

/// The source and runner types are generic; this keeps the log's `LogSource` impl in use.
#[allow(dead_code)] // reason: compile-time check that PgLog satisfies the projection port
fn assert_log_source<L: LogSource>() {}
const _: fn() = assert_log_source::<PgLog>;

/// [`Projectors::start`] for whichever store [`Stores::visit`] hands it.
struct StartRunners<'a> {
    projectors: &'a mut Projectors,
    log: &'a PgLog,
    partitions: u32,
    config: &'a RunnerConfig,
    consistent: &'a mpsc::Sender<Vec<projections::AppliedVersion>>,
    cancel: &'a CancellationToken,
}

impl StoreVisitor<'_> for StartRunners<'_> {
    type Output = ();

    fn visit<S: Store>(self, store: &Arc<S>) {
        self.projectors.start(
            store.clone(),
            self.log,
            self.partitions,
            self.config,
            self.consistent,
            self.cancel,
        );
    }
}
