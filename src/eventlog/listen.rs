//! LISTEN on a dedicated connection: each NOTIFY bumps a counter that readers wait on.
//! Polling stays the fallback, so a lost connection only delays readers, never stalls them.

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, warn};

use projections::RetryPolicy;

use super::NOTIFY_CHANNEL;

/// Starts the listener task; the receiver changes on every notification. The task ends when
/// every receiver is dropped.
pub fn spawn(config: tokio_postgres::Config) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        let retry = RetryPolicy::default();
        let mut failures = 0u32;
        while !tx.is_closed() {
            match config.connect(NoTls).await {
                Ok((client, mut conn)) => {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    let sql = format!("LISTEN {NOTIFY_CHANNEL}");
                    let listen = client.batch_execute(&sql);
                    tokio::pin!(listen);
                    let mut listening = false;
                    loop {
                        tokio::select! {
                            r = &mut listen, if !listening => {
                                if let Err(e) = r { warn!(error = %e, "LISTEN failed"); break; }
                                listening = true;
                                failures = 0;
                                // Appends may have happened while we were not listening.
                                tx.send_modify(|n| *n += 1);
                            }
                            m = messages.next() => match m {
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
    rx
}
