//! The log's roles: one small borrowed view per kind of consumer, over the one [`PgLog`]
//! (its pool, notifier and counters). A consumer names the role it uses at each call
//! (`log.appends().append(..)`, `log.parked().compensations(..)`), so what it depends on
//! is visible where it is used, and each role's methods live with that role.
//!
//! The projection runner's role is the [`projections::LogSource`] trait, implemented by
//! [`PgLog`] itself. No role knows a store's row type or the API's JSON: they return
//! domain records ([`super::EventRecord`], [`aggregates::Document`], ...).

use super::PgLog;

/// The document actor's role: load a stream (from its snapshot), bring a state up to the
/// log, append a command's events (alone or group-committed), remember idempotent answers,
/// store snapshots, and this process's append counters.
#[derive(Clone, Copy, Debug)]
pub struct LogAppends<'a> {
    pub(super) log: &'a PgLog,
}

/// Reads of the log as a whole: the ordered event feed (`read_after`, for verification and
/// tools), a stream's records, events and state, document listings, sampling, and the
/// horizon and lag figures the status pages show.
#[derive(Clone, Copy, Debug)]
pub struct LogReads<'a> {
    pub(super) log: &'a PgLog,
}

/// What the log records for the stores: the events as one store reads them for a rebuild
/// (rows, catalogue), and which versions the stores hold (readiness, consistency).
#[derive(Clone, Copy, Debug)]
pub struct StoreRecords<'a> {
    pub(super) log: &'a PgLog,
}

/// Parked changes and their compensation: what the compensator handles, what it needs to
/// decide, how a parked change is resolved, and the compensations the API lists.
#[derive(Clone, Copy, Debug)]
pub struct ParkedChanges<'a> {
    pub(super) log: &'a PgLog,
}

/// The stores' control records: operator pauses, rebuild requests and reports, the pauses a
/// rebuild holds and the projectors' acknowledgements of them.
#[derive(Clone, Copy, Debug)]
pub struct LogControl<'a> {
    pub(super) log: &'a PgLog,
}

/// The log's life: what the compaction pass removes once it is past its time (old
/// versions' content and unreferenced blobs, idempotency keys after their TTL, settled
/// compensations).
#[derive(Clone, Copy, Debug)]
pub struct LogCompaction<'a> {
    pub(super) log: &'a PgLog,
}

impl PgLog {
    /// The document actor's role ([`LogAppends`]).
    pub fn appends(&self) -> LogAppends<'_> {
        LogAppends { log: self }
    }

    /// Reads of the log ([`LogReads`]).
    pub fn reads(&self) -> LogReads<'_> {
        LogReads { log: self }
    }

    /// What the log records for the stores ([`StoreRecords`]).
    pub fn store_records(&self) -> StoreRecords<'_> {
        StoreRecords { log: self }
    }

    /// Parked changes and compensations ([`ParkedChanges`]).
    pub fn parked(&self) -> ParkedChanges<'_> {
        ParkedChanges { log: self }
    }

    /// The stores' control records ([`LogControl`]).
    pub fn control(&self) -> LogControl<'_> {
        LogControl { log: self }
    }

    /// What the compaction pass removes ([`LogCompaction`]).
    pub fn compaction(&self) -> LogCompaction<'_> {
        LogCompaction { log: self }
    }
}
