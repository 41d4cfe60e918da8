//! LISTEN on a dedicated connection: each NOTIFY bumps its channel's counter, that readers
//! (appends) or the compensator (parked changes) wait on; and the NOTIFY of committed
//! appends, sent from another dedicated connection. Polling stays the fallback, so a lost
//! connection or notification only delays its waiters, never stalls them.

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tracing::{debug, warn};

use projections::RetryPolicy;

use super::{PgConnector, NOTIFY_CHANNEL, PARKED_CHANNEL};

/// What the listener counts: notifications of committed appends, and of parked changes.
pub struct Notified {
    pub appended: watch::Receiver<u64>,
    pub parked: watch::Receiver<u64>,
}

/// Starts the listener task; each receiver changes on every notification of its channel (and
/// both whenever listening starts again). The task ends when every append receiver is dropped.
pub fn spawn(connector: PgConnector) -> Notified {
    let (tx, rx) = watch::channel(0u64);
    let (parked_tx, parked_rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let retry = RetryPolicy::default();
        let mut failures = 0u32;
        while !tx.is_closed() {
            match connector.connect().await {
                Ok((client, mut conn)) => {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    let sql = format!("LISTEN {NOTIFY_CHANNEL}; LISTEN {PARKED_CHANNEL}");
                    let listen = client.batch_execute(&sql);
                    tokio::pin!(listen);
                    let mut listening = false;
                    loop {
                        tokio::select! {
                            r = &mut listen, if !listening => {
                                if let Err(e) = r { warn!(error = %e, "LISTEN failed"); break; }
                                listening = true;
                                failures = 0;
                                // Appends and parkings may have happened while we were not
                                // listening.
                                tx.send_modify(|n| *n += 1);
                                parked_tx.send_modify(|n| *n += 1);
                            }
                            m = messages.next() => match m {
                                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == PARKED_CHANNEL => {
                                    parked_tx.send_modify(|n| *n += 1)
                                }
                                Some(Ok(AsyncMessage::Notification(_))) => tx.send_modify(|n| *n += 1),
                                Some(Ok(_)) => {}
                                Some(Err(e)) => { debug!(error = %e, "listen connection failed"); break; }
                                None => break,
                            },
                            _ = tx.closed() => return,
                        }
                    }
                }
                Err(e) => debug!(error = %e, "listen connection refused"),
            }
            failures += 1;
            retry.backoff(failures).await;
        }
    });
    Notified {
        appended: rx,
        parked: parked_rx,
    }
}

/// Returns at the next notification counted by `counter` (not one counted before the call),
/// or after `timeout`.
pub async fn wait_for_next(counter: &watch::Receiver<u64>, timeout: std::time::Duration) {
    let mut rx = counter.clone();
    rx.mark_unchanged();
    let _ = tokio::time::timeout(timeout, rx.changed()).await;
}

/// Starts the notifier task: every message on the returned sender is followed by a NOTIFY
/// that starts after it was sent. Messages sent while one is pending share its NOTIFY (send
/// with `try_send`: a full channel means one is already due). The task ends when every sender
/// is dropped.
///
/// Why not NOTIFY inside the append's transaction: PostgreSQL serialises the commits of all
/// notifying transactions of the cluster on one lock that is held until the commit record is
/// flushed, so concurrent appends could never share a WAL flush. This transaction holds no
/// data and commits asynchronously: a notification lost in a crash only delays readers until
/// their next poll.
pub fn spawn_notifier(connector: PgConnector) -> mpsc::Sender<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let sql =
            format!("BEGIN; SET LOCAL synchronous_commit TO off; NOTIFY {NOTIFY_CHANNEL}; COMMIT");
        let mut client: Option<tokio_postgres::Client> = None;
        while rx.recv().await.is_some() {
            if client
                .as_ref()
                .is_none_or(tokio_postgres::Client::is_closed)
            {
                client = match connector.connect().await {
                    Ok((client, conn)) => {
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                debug!(error = %e, "notify connection failed");
                            }
                        });
                        Some(client)
                    }
                    Err(e) => {
                        debug!(error = %e, "notify connection refused, readers poll");
                        None
                    }
                };
            }
            if let Some(notifier) = &client {
                if let Err(e) = notifier.batch_execute(&sql).await {
                    debug!(error = %e, "notify failed, readers poll");
                    client = None;
                }
            }
        }
    });
    tx
}
