//! The projectors' cluster-wide control in each process (see `eventlog::control`): every
//! [`CONTROL_POLL`] it
//! - applies each store's cluster-wide pause (an operator's, or a rebuild's) to this
//!   process's runners of the store, owned partitions and standby ones alike;
//! - acknowledges, for each partition this process owns, the newest pause its runner is
//!   idle under, so that a rebuild on any process knows when no runner writes the store;
//! - runs a requested (or orphaned) rebuild when no other process runs it: a rebuild holds
//!   an advisory lock on a connection of its own while it runs and reports its progress
//!   into the log, where every process reads it; if its process dies, the lock goes with
//!   the session and the next poll of another process starts the rebuild over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aggregates::StoreKind;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::projector::ProjectionView;
use crate::eventlog::lease::Leases;
use crate::eventlog::{db_message, PgLog};
use crate::rebuild::{RebuildError, RebuildProgress, Rebuilder};

/// How often a process looks at the cluster-wide switches.
pub const CONTROL_POLL: Duration = Duration::from_millis(200);

/// How often a running rebuild's progress is written to the log.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How often a process tries to take a rebuild that another process may be running (each
/// try opens a connection).
const REBUILD_TRY_EVERY: Duration = Duration::from_secs(2);

/// The first key of a rebuild's advisory lock: "dlrb".
const REBUILD_LOCK_CLASS: i32 = 0x646c_7262;

/// Runner states in which a runner writes nothing.
const IDLE_STATES: [&str; 3] = ["paused", "failed", "stopped"];

/// Starts the control loop; it stops when `cancel` fires (a rebuild it runs is cancelled
/// with it and left for another process to start over).
pub fn spawn(
    log: PgLog,
    view: ProjectionView,
    leases: Leases,
    rebuilder: Rebuilder,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut control = Control {
            log,
            view,
            leases,
            rebuilder,
            cancel,
            acknowledged: HashMap::new(),
            running: HashMap::new(),
            tried: HashMap::new(),
        };
        loop {
            if let Err(e) = control.tick().await {
                warn!(error = %e, "projection control poll failed");
            }
            tokio::select! {
                _ = control.cancel.cancelled() => break,
                _ = tokio::time::sleep(CONTROL_POLL) => {}
            }
        }
        for (_, task) in control.running.drain() {
            let _ = task.await;
        }
        info!("projection control stopped");
    })
}

struct Control {
    log: PgLog,
    view: ProjectionView,
    leases: Leases,
    rebuilder: Rebuilder,
    cancel: CancellationToken,
    /// (sink, partition) → (generation, epoch) last acknowledged.
    acknowledged: HashMap<(&'static str, u32), (i64, i64)>,
    /// Rebuilds this process runs, by store.
    running: HashMap<&'static str, JoinHandle<()>>,
    /// When this process last tried to take each store's rebuild.
    tried: HashMap<&'static str, std::time::Instant>,
}

impl Control {
    async fn tick(&mut self) -> Result<(), crate::eventlog::LogError> {
        let controls = self.log.control().store_controls().await?;
        let owned = self.leases.owned();
        for control in &controls {
            let Some(store) = StoreKind::from_name(&control.sink) else {
                continue;
            };
            let paused = control.pause_in_force();
            for runner in self.view.of(store.name()) {
                runner.set_paused(paused);
            }
            if paused {
                for (key, generation) in owned.iter().filter(|(k, _)| k.sink == store.name()) {
                    let Some(runner) = self
                        .view
                        .of(key.sink)
                        .into_iter()
                        .find(|r| r.partition == key.partition)
                    else {
                        continue;
                    };
                    let idle = runner.is_paused() && IDLE_STATES.contains(&runner.snapshot().state);
                    let seen = (*generation, control.pause_epoch);
                    let slot = (key.sink, key.partition.index);
                    if idle && self.acknowledged.get(&slot) != Some(&seen) {
                        self.log
                            .control()
                            .acknowledge_pause(
                                key.sink,
                                key.partition.count,
                                key.partition.index,
                                *generation,
                                control.pause_epoch,
                            )
                            .await?;
                        self.acknowledged.insert(slot, seen);
                    }
                }
            }
            self.running.retain(|_, task| !task.is_finished());
            let due = self
                .tried
                .get(store.name())
                .is_none_or(|t| t.elapsed() >= REBUILD_TRY_EVERY);
            if control.rebuild_active() && !self.running.contains_key(store.name()) && due {
                self.tried.insert(store.name(), std::time::Instant::now());
                if let Some(task) = self.try_rebuild(store).await {
                    self.running.insert(store.name(), task);
                }
            }
        }
        Ok(())
    }

    /// Takes `store`'s rebuild lock on a connection of its own and runs the rebuild in the
    /// background; None when another process holds the lock (it runs the rebuild).
    async fn try_rebuild(&self, store: StoreKind) -> Option<JoinHandle<()>> {
        let (client, conn) = match self.log.connector().connect().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %db_message(&e), "cannot open a rebuild's lock connection");
                return None;
            }
        };
        let conn = tokio::spawn(conn);
        let key = store_key(store);
        let locked = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&REBUILD_LOCK_CLASS, &key],
            )
            .await
            .map(|row| row.get::<_, bool>(0));
        if !matches!(locked, Ok(true)) {
            conn.abort();
            return None;
        }
        let log = self.log.clone();
        let rebuilder = self.rebuilder.clone();
        let cancel = self.cancel.clone();
        let runner = self.leases.owner().to_owned();
        Some(tokio::spawn(async move {
            // Still wanted? It may have ended between the poll and the lock.
            let active = log
                .control()
                .store_controls()
                .await
                .map(|c| {
                    c.iter()
                        .any(|c| c.sink == store.name() && c.rebuild_active())
                })
                .unwrap_or(false);
            if active {
                run_rebuild(&log, &rebuilder, store, &runner, &cancel).await;
            }
            // Closing the session releases the lock.
            drop(client);
            conn.abort();
        }))
    }
}

/// The store's rebuild lock key: its place in [`StoreKind::ALL`], from 1.
fn store_key(store: StoreKind) -> i32 {
    StoreKind::ALL
        .iter()
        .position(|s| *s == store)
        .map_or(0, |i| i as i32 + 1)
}

/// Runs the rebuild, writing its progress into the log as it goes and its outcome at the
/// end. A rebuild cancelled by this process's shutdown stays `running` in the log, for
/// another process to start over.
async fn run_rebuild(
    log: &PgLog,
    rebuilder: &Rebuilder,
    store: StoreKind,
    runner: &str,
    cancel: &CancellationToken,
) {
    info!(store = store.name(), runner, "running a requested rebuild");
    let progress = Arc::new(RebuildProgress::default());
    let _ = log
        .control()
        .report_rebuild(store.name(), runner, "running", &progress.snapshot())
        .await;
    let reporter = {
        let (log, progress, runner) = (log.clone(), progress.clone(), runner.to_owned());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let _ = log
                    .control()
                    .report_rebuild(store.name(), &runner, "running", &progress.snapshot())
                    .await;
            }
        })
    };
    let result = rebuilder.rebuild(store, &progress, cancel).await;
    reporter.abort();
    let _ = reporter.await;
    let state = match &result {
        Err(RebuildError::Cancelled) if cancel.is_cancelled() => return,
        Ok(_) => "done",
        Err(_) => "failed",
    };
    // The outcome must reach the log: retried until it does or the process stops.
    while let Err(e) = log
        .control()
        .report_rebuild(store.name(), runner, state, &progress.snapshot())
        .await
    {
        warn!(error = %e, "recording the rebuild's outcome failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
