//! Runs a partition's runner only while this process holds the partition's lease
//! ([`crate::eventlog::lease`]): `standby` while another process owns it, a fresh runner
//! from the partition's checkpoint each time the lease is taken, stopped (its batch finished)
//! when the lease is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aggregates::LogCursor;

use projections::RunnerStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// State shown for a partition whose lease another process holds.
pub const STANDBY: &str = "standby";

/// How often a standby partition's shown checkpoint is refreshed from the shared one, so
/// its lag in the status is the owner's, not everything since the start of the log.
const STANDBY_REFRESH: Duration = Duration::from_secs(1);

/// Waits until the lease is (`true`) or is not (`false`) owned; `false` when the lease loop
/// ended.
async fn until(owned: &mut watch::Receiver<bool>, want: bool) -> bool {
    owned.wait_for(|o| *o == want).await.is_ok()
}

/// Drives one partition: `start(token)` runs a runner until `token` is cancelled;
/// `checkpoint()` reads the partition's shared checkpoint while another process owns it.
pub async fn supervise<F, Fut, C, CFut>(
    mut owned: watch::Receiver<bool>,
    status: Arc<RunnerStatus>,
    cancel: CancellationToken,
    mut start: F,
    checkpoint: C,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
    C: Fn() -> CFut,
    CFut: Future<Output = Option<LogCursor>>,
{
    loop {
        if !*owned.borrow() {
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
            _ = cancel.cancelled() => false,
            taken = until(&mut owned, true) => taken,
            () = standby => false,
        };
        if !taken {
            status.set_state("stopped");
            return;
        }
        let token = cancel.child_token();
        let run = start(token.clone());
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {
                // Stopped by shutdown, or failed: a failed runner keeps its lease (and its
                // failure visible) until shutdown or the lease is lost.
                let lost = tokio::select! {
                    _ = cancel.cancelled() => false,
                    lost = until(&mut owned, false) => lost,
                };
                if !lost {
                    return;
                }
            }
            lost = until(&mut owned, false) => {
                if lost {
                    warn!(sink = status.sink, partition = status.partition.index, "projection lease lost; stopping the runner");
                }
                token.cancel();
                run.await;
                if !lost {
                    status.set_state("stopped");
                    return;
                }
            }
        }
    }
}
