//! The port through which a store is rebuilt from the log: [`Rebuild`] beside [`Sink`].
//!
//! The orchestrator (`docledger::rebuild`) reads the log, coalesces it per document and hands
//! the store pages; the store decides where they go and how its target goes live. Two styles:
//!
//! - [`RebuildStyle::BlueGreen`]: a fresh target beside the live store (a shadow table, a new
//!   collection) is filled while the live one keeps serving, caught up with the store's
//!   runners paused, then switched to at a cursor. A rebuild that dies midway leaves the live
//!   store untouched; the next one drops the stale target.
//! - [`RebuildStyle::InPlace`]: the live store itself is made to hold each document's final
//!   state while the store's runners are paused, and what no document owns is removed.
//!
//! Invariants every target keeps: pages arrive in log order; a later page's change of a
//! document supersedes an earlier one's; writing is idempotent (a rebuild started over writes
//! the same pages again); nothing is live before [`RebuildTarget::switch`].

use std::collections::HashSet;
use std::future::Future;

use aggregates::{CatalogueEntry, LogCursor};

use crate::error::SinkError;

use crate::sink::{Batch, Sink};

/// How a store is rebuilt (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebuildStyle {
    /// Fill a fresh target beside the live store, then switch to it.
    BlueGreen,
    /// Make the live store hold the final state, its runners paused throughout.
    InPlace,
}

/// One document's final catalogue state, as the log keeps it in its stream row.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalState {
    /// The document (an id the log validated).
    pub doc_id: String,
    /// Its newest catalogue entry; `None` when the document is deleted (nothing to write,
    /// but it counts as done).
    pub entry: Option<CatalogueEntry>,
    /// Every store holds its newest version already.
    pub ready: bool,
}

/// What the orchestrator hands a target.
#[derive(Debug)]
pub enum RebuildPage {
    /// The newest change per document of a page of the log, with the blobs it writes when
    /// the store needs them ([`Sink::NEEDS_BLOBS`]).
    Changes {
        /// The coalesced page.
        batch: Batch,
        /// For a store that keeps readiness ([`Sink::KEEPS_READINESS`]; the orchestrator settles after the
        /// switch the ones written pending, [`RebuildTarget::pending`]): the page's
        /// upserted documents whose version every store already holds; empty otherwise.
        consistent: HashSet<String>,
    },
    /// Final catalogue states of documents new to the target (only for a store that
    /// rebuilds from them, [`Rebuild::FROM_FINAL_STATES`]), in no particular order.
    States(Vec<FinalState>),
}

impl RebuildPage {
    /// The documents the page covers.
    pub fn num_documents(&self) -> usize {
        match self {
            RebuildPage::Changes { batch, .. } => batch.changes.len(),
            RebuildPage::States(states) => states.len(),
        }
    }
}

/// What a target did, beyond the documents it was handed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetCounts {
    /// Documents that already held their final state (nothing was sent).
    pub num_identical: u64,
    /// Items no document owns, removed at the switch.
    pub num_strays_removed: u64,
}

/// A store that can be rebuilt from the log.
pub trait Rebuild: Sink {
    /// What [`Rebuild::begin_rebuild`] returns.
    type Target: RebuildTarget;
    /// How the store is rebuilt.
    const STYLE: RebuildStyle;
    /// The store holds only each document's newest catalogue entry, which the log keeps per
    /// stream: the bulk of the rebuild reads those ([`RebuildPage::States`]) instead of the
    /// events; the catch-up reads events.
    const FROM_FINAL_STATES: bool = false;
    /// Documents per page of an in-place rebuild (with their blobs in memory).
    const IN_PLACE_PAGE: usize = 32;

    /// Starts a rebuild: creates what the store needs if missing, drops what an interrupted
    /// rebuild left, and returns an empty target (blue/green) or the live store made ready to
    /// be overwritten (in place).
    fn begin_rebuild(&self) -> impl Future<Output = Result<Self::Target, SinkError>> + Send;
}

/// Where a rebuild writes.
pub trait RebuildTarget: Send + 'static {
    /// Writes a page. Pages arrive in log order; blue/green targets are written by one
    /// writer at a time.
    fn write(&mut self, page: RebuildPage) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Makes the target live, holding the log up to `end`. A store that keeps its own
    /// checkpoints ([`Sink::KEEPS_OWN_CHECKPOINT`]) moves those of its `partitions` with it;
    /// the orchestrator saves the others' in the log afterwards. An in-place target removes
    /// what no document owns.
    fn switch(
        &mut self,
        log_id: &str,
        partitions: u32,
        end: LogCursor,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// After the checkpoints moved: drops what the switch retired (the old collection, say).
    fn retire(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// `(doc_id, version)` of every row written pending so far (a store that keeps
    /// readiness; a document may appear more than once).
    fn pending(&self) -> &[(String, u64)] {
        &[]
    }

    /// What the target did beyond writing.
    fn counts(&self) -> TargetCounts {
        TargetCounts::default()
    }
}

/// A shared store is rebuilt as the store.
impl<S: Rebuild> Rebuild for std::sync::Arc<S> {
    type Target = S::Target;
    const STYLE: RebuildStyle = S::STYLE;
    const FROM_FINAL_STATES: bool = S::FROM_FINAL_STATES;
    const IN_PLACE_PAGE: usize = S::IN_PLACE_PAGE;

    fn begin_rebuild(&self) -> impl Future<Output = Result<Self::Target, SinkError>> + Send {
        S::begin_rebuild(self)
    }
}
