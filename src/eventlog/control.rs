//! What the `serve` processes of one log share about their projectors (migration 5): who
//! owns each partition under which fencing token, and each store's cluster-wide switches
//! (an operator's pause, a rebuild and the pause it holds).
//!
//! Invariants:
//! - a partition's `generation` grows by one each time a process takes its lease, in the
//!   same session that holds the lease's advisory lock: the newest owner has the highest
//!   token, and every write of an older one can be told apart (see `fence`);
//! - a store is paused cluster-wide while an operator paused it or while its rebuild holds
//!   the pause; every process applies that to its own runners within a control poll, and a
//!   runner that starts reads it first (`paused_now`), before its first write;
//! - a rebuild's pause is in force once every partition of the store acknowledged its
//!   epoch: each owner acknowledges only while its runner is idle under a pause it saw in
//!   the same poll, and only under its current generation, so an acknowledgement never
//!   outlives the ownership it was given under.

use serde::{Deserialize, Serialize};

use super::{LogControl, LogError};

/// A rebuild's progress as the API shows it (the `rebuild` object of a store).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RebuildStatus {
    /// `preparing` | `pausing` | `building` | `catching_up` | `switching` | `recording` |
    /// `done` | `failed`.
    pub phase: String,
    /// Documents (coalesced changes) written or checked so far.
    pub documents_done: u64,
    /// Documents the log knew at the start (deleted ones included): the ETA's basis.
    pub documents_total: u64,
    /// Log events read.
    pub events_read: u64,
    /// Documents per second since the start.
    pub rate_per_second: f64,
    /// Seconds left at the current rate, while building.
    pub eta_seconds: Option<f64>,
    /// Seconds since the start.
    pub elapsed_seconds: f64,
    /// Why the rebuild failed.
    pub error: Option<String>,
}

impl RebuildStatus {
    /// The rebuild has ended (done or failed).
    pub fn finished(&self) -> bool {
        self.phase == PHASE_DONE || self.phase == PHASE_FAILED
    }
}

/// The final phase of a successful rebuild.
pub const PHASE_DONE: &str = "done";
/// The final phase of a failed rebuild.
pub const PHASE_FAILED: &str = "failed";

/// One store's cluster-wide switches.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreControl {
    /// `mysql` | `milvus` | `s3`.
    pub sink: String,
    /// Paused by an operator.
    pub paused: bool,
    /// The newest rebuild pause request.
    pub pause_epoch: i64,
    /// `requested` | `running` | `done` | `failed`, or None when never rebuilt.
    pub rebuild_state: Option<String>,
    /// A rebuild holds the store's runners paused.
    pub rebuild_pause: bool,
    /// The rebuild's progress as the API shows it.
    pub rebuild_status: Option<RebuildStatus>,
}

impl StoreControl {
    /// A rebuild was asked for and has not ended.
    pub fn rebuild_active(&self) -> bool {
        matches!(self.rebuild_state.as_deref(), Some("requested" | "running"))
    }

    /// Whether the store's runners must be paused now.
    pub fn pause_in_force(&self) -> bool {
        self.paused || (self.rebuild_active() && self.rebuild_pause)
    }
}

/// A lease just taken: its fencing token and whether the previous owner handed it over
/// cleanly (its runner stopped) or lost it (crash, cut connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenLease {
    /// The owner's fencing token.
    pub generation: i64,
    /// The previous owner released it after its runner stopped (or there was none).
    pub clean: bool,
}

/// Records a lease taken by `owner` (in the session that holds its advisory lock).
const TAKE_LEASE: &str = r#"
WITH prev AS (
    SELECT released FROM projection_partitions
     WHERE sink = $1 AND partitions = $2 AND partition = $3
), taken AS (
    INSERT INTO projection_partitions AS p (sink, partitions, partition, generation, owner)
    VALUES ($1, $2, $3, 1, $4)
    ON CONFLICT (sink, partitions, partition) DO UPDATE
       SET generation = p.generation + 1, owner = EXCLUDED.owner, released = false,
           paused_epoch = 0, taken_at = now()
    RETURNING generation
)
SELECT taken.generation, COALESCE((SELECT released FROM prev), true) FROM taken
"#;

/// Marks a lease handed over cleanly by the owner of `generation`.
const RELEASE_LEASE: &str = "UPDATE projection_partitions SET released = true
     WHERE sink = $1 AND partitions = $2 AND partition = $3 AND generation = $4";

/// Records a lease taken by `owner` on the lease session `client`.
///
/// # Errors
/// The database's error.
pub async fn take_lease(
    client: &tokio_postgres::Client,
    sink: &str,
    partitions: u32,
    partition: u32,
    owner: &str,
) -> Result<TakenLease, tokio_postgres::Error> {
    let row = client
        .query_one(
            TAKE_LEASE,
            &[&sink, &(partitions as i32), &(partition as i32), &owner],
        )
        .await?;
    Ok(TakenLease {
        generation: row.get(0),
        clean: row.get(1),
    })
}

/// Marks the lease of `generation` handed over cleanly, on the lease session `client`
/// (before its advisory lock is released).
///
/// # Errors
/// The database's error.
pub async fn release_lease(
    client: &tokio_postgres::Client,
    sink: &str,
    partitions: u32,
    partition: u32,
    generation: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            RELEASE_LEASE,
            &[
                &sink,
                &(partitions as i32),
                &(partition as i32),
                &generation,
            ],
        )
        .await?;
    Ok(())
}

/// Why an operator's switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A rebuild of the store runs and owns its pause switch, or is already running.
    #[error("a rebuild of {0} is running")]
    RebuildRunning(String),
    /// The log.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl LogControl<'_> {
    /// Every store's cluster-wide switches.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn store_controls(self) -> Result<Vec<StoreControl>, LogError> {
        let client = self.log.client().await?;
        let rows = client
            .query(
                "SELECT sink, paused, pause_epoch, rebuild_state, rebuild_pause, rebuild_status
                   FROM projection_control ORDER BY sink",
                &[],
            )
            .await
            .map_err(LogError::db("read projection control"))?;
        Ok(rows
            .iter()
            .map(|r| StoreControl {
                sink: r.get(0),
                paused: r.get(1),
                pause_epoch: r.get(2),
                rebuild_state: r.get(3),
                rebuild_pause: r.get(4),
                rebuild_status: r
                    .get::<_, Option<serde_json::Value>>(5)
                    .and_then(|v| serde_json::from_value(v).ok()),
            })
            .collect())
    }

    /// Whether `sink`'s runners must be paused now (read fresh: a runner that starts asks
    /// this before its first write).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn paused_now(self, sink: &str) -> Result<bool, LogError> {
        Ok(self
            .store_controls()
            .await?
            .iter()
            .any(|c| c.sink == sink && c.pause_in_force()))
    }

    /// `sink`'s partition count in force (None before any process recorded one).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn partitions_in_force(self, sink: &str) -> Result<Option<u32>, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_opt(
                "SELECT partitions FROM projection_control WHERE sink = $1",
                &[&sink],
            )
            .await
            .map_err(LogError::db("read partition count"))?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i32>>(0))
            .map(|p| p as u32))
    }

    /// An operator pauses or resumes `sink` on every process.
    ///
    /// # Errors
    /// [`ControlError::RebuildRunning`] while a rebuild of the store runs.
    pub async fn set_operator_pause(self, sink: &str, paused: bool) -> Result<(), ControlError> {
        let client = self.log.client().await?;
        let n = client
            .execute(
                "UPDATE projection_control SET paused = $2, updated_at = now()
                  WHERE sink = $1 AND rebuild_state IS DISTINCT FROM 'requested'
                    AND rebuild_state IS DISTINCT FROM 'running'",
                &[&sink, &paused],
            )
            .await
            .map_err(LogError::db("set pause"))?;
        if n == 0 {
            return Err(ControlError::RebuildRunning(sink.to_owned()));
        }
        Ok(())
    }

    /// Asks for a rebuild of `sink`, run by whichever process takes it first.
    ///
    /// # Errors
    /// [`ControlError::RebuildRunning`] while one is requested or running.
    pub async fn request_rebuild(
        self,
        sink: &str,
        status: &RebuildStatus,
    ) -> Result<(), ControlError> {
        let client = self.log.client().await?;
        let status = serde_json::to_value(status).expect("a rebuild status serializes");
        let n = client
            .execute(
                "UPDATE projection_control
                    SET rebuild_state = 'requested', rebuild_pause = false, rebuild_runner = NULL,
                        rebuild_status = $2, updated_at = now()
                  WHERE sink = $1 AND rebuild_state IS DISTINCT FROM 'requested'
                    AND rebuild_state IS DISTINCT FROM 'running'",
                &[&sink, &status],
            )
            .await
            .map_err(LogError::db("request rebuild"))?;
        if n == 0 {
            return Err(ControlError::RebuildRunning(sink.to_owned()));
        }
        Ok(())
    }

    /// Records the progress of `sink`'s rebuild run by `runner`; `state` moves it on
    /// (`running`, or `done` / `failed` at the end, which also lifts its pause).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn report_rebuild(
        self,
        sink: &str,
        runner: &str,
        state: &str,
        status: &RebuildStatus,
    ) -> Result<(), LogError> {
        let client = self.log.client().await?;
        let status = serde_json::to_value(status).expect("a rebuild status serializes");
        client
            .execute(
                "UPDATE projection_control
                    SET rebuild_state = $3, rebuild_runner = $2, rebuild_status = $4,
                        rebuild_pause = rebuild_pause AND $3 IN ('requested', 'running'),
                        updated_at = now()
                  WHERE sink = $1 AND rebuild_state IN ('requested', 'running')",
                &[&sink, &runner, &state, &status],
            )
            .await
            .map_err(LogError::db("report rebuild"))?;
        Ok(())
    }

    /// A rebuild pauses `sink`'s runners everywhere; returns the pause's epoch (see
    /// [`LogControl::partitions_paused`]).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn hold_rebuild_pause(self, sink: &str) -> Result<i64, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_one(
                "UPDATE projection_control
                    SET rebuild_pause = true, pause_epoch = pause_epoch + 1, updated_at = now()
                  WHERE sink = $1 RETURNING pause_epoch",
                &[&sink],
            )
            .await
            .map_err(LogError::db("pause for rebuild"))?;
        Ok(row.get(0))
    }

    /// Lifts a rebuild's pause of `sink` (the operator's own pause stays as it is).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn lift_rebuild_pause(self, sink: &str) -> Result<(), LogError> {
        let client = self.log.client().await?;
        client
            .execute(
                "UPDATE projection_control SET rebuild_pause = false, updated_at = now()
                  WHERE sink = $1",
                &[&sink],
            )
            .await
            .map_err(LogError::db("resume after rebuild"))?;
        Ok(())
    }

    /// How many of `sink`'s `partitions` partitions acknowledged pause `epoch` (idle under
    /// it, under their current owner).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn partitions_paused(
        self,
        sink: &str,
        partitions: u32,
        epoch: i64,
    ) -> Result<u32, LogError> {
        let client = self.log.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM projection_partitions
                  WHERE sink = $1 AND partitions = $2 AND paused_epoch >= $3",
                &[&sink, &(partitions as i32), &epoch],
            )
            .await
            .map_err(LogError::db("count paused partitions"))?;
        Ok(row.get::<_, i64>(0) as u32)
    }

    /// The owner of `generation` acknowledges that its runner is idle under pause `epoch`.
    /// Nothing happens when the lease has moved on.
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn acknowledge_pause(
        self,
        sink: &str,
        partitions: u32,
        partition: u32,
        generation: i64,
        epoch: i64,
    ) -> Result<(), LogError> {
        let client = self.log.client().await?;
        client
            .execute(
                "UPDATE projection_partitions SET paused_epoch = GREATEST(paused_epoch, $5)
                  WHERE sink = $1 AND partitions = $2 AND partition = $3 AND generation = $4",
                &[
                    &sink,
                    &(partitions as i32),
                    &(partition as i32),
                    &generation,
                    &epoch,
                ],
            )
            .await
            .map_err(LogError::db("acknowledge pause"))?;
        Ok(())
    }
}
