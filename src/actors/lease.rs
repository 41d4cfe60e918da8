//! Runs a partition's runner only while this process holds the partition's lease
//! ([`crate::eventlog::lease`]): `standby` while another process owns it, a fresh runner
//! from the partition's checkpoint each time the lease is taken, stopped (its batch finished)
//! when the lease is lost, and the lease given back when the runner fails fatally.
//!
//! A runner whose process lost its lease connection is aborted at once (its in-flight store
//! requests cancelled), not left to finish its batch: the lease connection gives up within
//! 4 s of silence plus a poll, PostgreSQL frees the locks of a silent peer after about 11 s
//! of keepalives, and a new owner then waits [`HANDOVER_GRACE`]; the old owner's last
//! requests were sent at least 8 s before the new owner's first.
//!
//! Before a new owner's runner writes anything it learns whether the store is paused
//! cluster-wide (read fresh from the log), and after an unclean hand-over (the previous
//! owner crashed or was cut off) it first waits [`HANDOVER_GRACE`], so that store requests
//! the previous owner sent before it died land before the new owner's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aggregates::LogCursor;

use projections::RunnerStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::eventlog::control::TakenLease;
use crate::eventlog::lease::ClaimHandle;

/// State shown for a partition whose lease another process holds.
pub const STANDBY: &str = "standby";

/// How often a standby partition's shown checkpoint is refreshed from the shared one, so
/// its lag in the status is the owner's, not everything since the start of the log.
const STANDBY_REFRESH: Duration = Duration::from_secs(1);

/// How long a new owner waits before its first write when the previous owner did not hand
/// the lease over cleanly: the store requests a crashed owner had in flight land first.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// Waits until the lease is owned (`Some` generation) or not (`None`); `Err` when the lease
/// loop ended.
async fn until_owned(owned: &mut watch::Receiver<Option<TakenLease>>) -> Option<TakenLease> {
    owned.wait_for(Option::is_some).await.ok().and_then(|o| *o)
}

/// Returns when the lease of `generation` is no longer owned; `false` when the lease loop
/// ended.
async fn until_lost(owned: &mut watch::Receiver<Option<TakenLease>>, generation: i64) -> bool {
    owned
        .wait_for(|o| o.is_none_or(|t| t.generation != generation))
        .await
        .is_ok()
}

/// Drives one partition: `start(token, generation)` runs a runner fenced by `generation`
/// until `token` is cancelled; `checkpoint()` reads the partition's shared checkpoint while
/// another process owns it; `paused_now()` reads whether the store is paused cluster-wide
/// (None when the log cannot say).
pub async fn supervise<F, Fut, C, CFut, P, PFut>(
    claim: ClaimHandle,
    status: Arc<RunnerStatus>,
    cancel: CancellationToken,
    mut start: F,
    checkpoint: C,
    paused_now: P,
) where
    F: FnMut(CancellationToken, i64) -> Fut,
    Fut: Future<Output = ()>,
    C: Fn() -> CFut,
    CFut: Future<Output = Option<LogCursor>>,
    P: Fn() -> PFut,
    PFut: Future<Output = Option<bool>>,
{
    let mut owned = claim.subscribe();
    loop {
        if owned.borrow().is_none() && status.snapshot().state != "failed" {
            status.set_state(STANDBY);
        }
        let standby = async {
            loop {
                if let Some(cursor) = checkpoint().await {
                    status.set_applied(cursor);
                }
                tokio::time::sleep(STANDBY_REFRESH).await;
            }
        };
        let taken = tokio::select! {
            _ = cancel.cancelled() => None,
            taken = until_owned(&mut owned) => taken,
            () = standby => None,
        };
        let Some(lease) = taken else {
            status.set_state("stopped");
            return;
        };
        let generation = lease.generation;
        // Before the first write: the previous owner's requests have landed, and the store's
        // cluster-wide pause is known.
        let ready = async {
            if !lease.clean {
                info!(sink = status.sink, partition = status.partition.index, grace_ms = HANDOVER_GRACE.as_millis() as u64, "the previous owner did not hand the lease over; waiting before the first write");
                tokio::time::sleep(HANDOVER_GRACE).await;
            }
            loop {
                if let Some(paused) = paused_now().await {
                    status.set_paused(paused);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let lost = tokio::select! {
            _ = cancel.cancelled() => { status.set_state("stopped"); return; }
            lost = until_lost(&mut owned, generation) => Some(lost),
            () = ready => None,
        };
        if let Some(lost) = lost {
            if !lost {
                status.set_state("stopped");
                return;
            }
            continue;
        }
        // Running is announced before ownership is checked again, so the lease loop never
        // releases a lease whose runner is about to start.
        claim.set_running(true);
        if owned.borrow().is_none_or(|t| t.generation != generation) {
            claim.set_running(false);
            continue;
        }
        status.set_state("starting");
        let losses = claim.losses();
        let token = cancel.child_token();
        let mut run = Box::pin(start(token.clone(), generation));
        tokio::select! {
            _ = &mut run => {
                claim.set_running(false);
                if cancel.is_cancelled() {
                    return;
                }
                // Failed fatally (the lease goes back, for another process to try, and this
                // one rests), or fenced off (another process took the partition: the lease
                // goes back at once, taken again only under a new generation).
                claim.give_back(status.snapshot().state == "failed");
            }
            lost = until_lost(&mut owned, generation) => {
                if lost {
                    warn!(sink = status.sink, partition = status.partition.index, generation, "projection lease lost or handed over; stopping the runner");
                }
                token.cancel();
                if claim.losses() == losses {
                    // Handed over (or shutdown): the batch in hand is finished first.
                    run.await;
                } else {
                    // The lease connection was lost: another process may own the partition
                    // within PostgreSQL's keepalives, so the runner is dropped at once, its
                    // store requests cancelled, as a crash would (every write is idempotent).
                    drop(run);
                    status.set_state("stopped");
                }
                claim.set_running(false);
                if status.snapshot().state != "failed" {
                    claim.succeeded();
                }
                if !lost {
                    status.set_state("stopped");
                    return;
                }
            }
        }
    }
}
