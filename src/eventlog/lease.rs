//! Projector partition leases shared by every process on one log: a PostgreSQL session
//! advisory lock per (store, partition), all held on one dedicated connection per process.
//!
//! Invariants: a process runs a partition's runner only while its lease connection holds
//! that partition's lock; when the connection fails (or a ping on it does), every lease of
//! the process is given up at once and its runners are stopped. A process that dies loses
//! its session, PostgreSQL releases its locks, and the others take them at their next poll:
//! a dead owner's partitions move within one poll interval of PostgreSQL noticing (at once
//! for a killed process; for a silent network partition, the session's TCP keepalives bound
//! it). Each process takes at most its fair share, ceil(leases / processes), and hands the
//! excess over when another process joins, so the partitions spread over the processes.
//! Two owners of one partition for a moment (an owner cut off from PostgreSQL that has
//! not noticed yet) are safe, only wasteful: every store write is keyed and version-guarded
//! and checkpoints never move backwards. Leases make ownership efficient, not correct.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use projections::{Partition, RetryPolicy};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{db_message, PgConnector};

/// The first key of every lease lock (`pg_try_advisory_lock(int4, int4)`): "dlgr".
const LEASE_LOCK_CLASS: i32 = 0x646c_6772;

/// Session settings of the lease connection: PostgreSQL notices a peer that vanished
/// without closing (a network partition) within about idle + interval × count seconds and
/// then releases its locks.
const LEASE_SESSION_SETUP: &str = "SET application_name = 'docledger-leases';
     SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3";

/// One lease: a store's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    /// `mysql` | `milvus` | `s3`.
    pub sink: &'static str,
    /// The partition.
    pub partition: Partition,
}

impl LeaseKey {
    /// The second key of the advisory lock: store and partition index (partition counts
    /// stay far below 2^16).
    fn lock_id(&self) -> i32 {
        let store = match self.sink {
            "mysql" => 1,
            "milvus" => 2,
            "s3" => 3,
            _ => 15,
        };
        (store << 16) | (self.partition.index as i32 & 0xffff)
    }
}

struct Claim {
    key: LeaseKey,
    owned: watch::Sender<bool>,
}

/// The leases of this process. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    claims: Arc<Mutex<Vec<Claim>>>,
    /// Wakes the lease loop when a claim arrives (runners start without waiting a poll).
    claimed: Arc<Notify>,
}

impl Leases {
    /// Starts the lease loop on a dedicated connection opened by `connector`, taking free
    /// leases every `poll`, until `cancel` (then the connection closes and every lease is
    /// released).
    pub fn spawn(
        connector: &PgConnector,
        poll: Duration,
        retry: RetryPolicy,
        cancel: CancellationToken,
    ) -> (Leases, JoinHandle<()>) {
        let leases = Leases {
            claims: Arc::new(Mutex::new(Vec::new())),
            claimed: Arc::new(Notify::new()),
        };
        let task = tokio::spawn(lease_loop(
            leases.clone(),
            connector.clone(),
            poll,
            retry,
            cancel,
        ));
        (leases, task)
    }

    /// Asks for `key`; the receiver says whether this process owns it now.
    pub fn claim(&self, key: LeaseKey) -> watch::Receiver<bool> {
        let (owned, rx) = watch::channel(false);
        self.claims
            .lock()
            .expect("lease claims lock poisoned")
            .push(Claim { key, owned });
        self.claimed.notify_one();
        rx
    }

    /// The keys owned now and the others, each in claim order.
    fn split(&self) -> (Vec<LeaseKey>, Vec<LeaseKey>) {
        let claims = self.claims.lock().expect("lease claims lock poisoned");
        let (owned, unowned): (Vec<&Claim>, Vec<&Claim>) =
            claims.iter().partition(|c| *c.owned.borrow());
        (
            owned.iter().map(|c| c.key).collect(),
            unowned.iter().map(|c| c.key).collect(),
        )
    }

    fn set_owned(&self, key: LeaseKey, owned: bool) {
        let claims = self.claims.lock().expect("lease claims lock poisoned");
        for c in claims.iter().filter(|c| c.key == key) {
            c.owned.send_replace(owned);
        }
    }

    fn release_all(&self) {
        let claims = self.claims.lock().expect("lease claims lock poisoned");
        for c in claims.iter() {
            c.owned.send_replace(false);
        }
    }
}

async fn lease_loop(
    leases: Leases,
    connector: PgConnector,
    poll: Duration,
    retry: RetryPolicy,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let connected = tokio::select! {
            _ = cancel.cancelled() => break,
            c = connector.connect() => c,
        };
        match connected {
            Ok((client, conn)) => {
                let conn = tokio::spawn(conn);
                if let Err(e) = client.batch_execute(LEASE_SESSION_SETUP).await {
                    warn!(error = %db_message(&e), "lease connection setup failed");
                } else {
                    failures = 0;
                    hold(&leases, &client, poll, &cancel).await;
                }
                leases.release_all();
                // Closing the session releases every lock it holds.
                drop(client);
                let _ = conn.await;
            }
            Err(e) => warn!(error = %db_message(&e), "lease connection refused"),
        }
        if cancel.is_cancelled() {
            break;
        }
        failures += 1;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = retry.backoff(failures) => {}
        }
    }
    leases.release_all();
    info!("projection leases released");
}

/// Lease sessions of all processes on this log (each process has one).
const COUNT_LEASE_HOLDERS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE datname = current_database() AND application_name = 'docledger-leases'";

/// Takes free leases up to this process's fair share, hands over what exceeds it, and
/// checks the connection every `poll` until it fails or `cancel`.
///
/// Fair share: ceil(leases / processes holding a lease session on this log). A process
/// over it (another one joined) gives the excess up in two steps: first its runners stop
/// (the lease is marked lost), one poll later the lock is released, so the next owner
/// normally starts after the last batch of the previous one.
async fn hold(
    leases: &Leases,
    client: &tokio_postgres::Client,
    poll: Duration,
    cancel: &CancellationToken,
) {
    let lost = |e: tokio_postgres::Error| {
        warn!(error = %db_message(&e), "lease connection failed; giving up every lease");
    };
    let mut handing_over: Vec<LeaseKey> = Vec::new();
    loop {
        for key in handing_over.drain(..) {
            if let Err(e) = client
                .query_one(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&LEASE_LOCK_CLASS, &key.lock_id()],
                )
                .await
            {
                return lost(e);
            }
        }
        let processes = match client.query_one(COUNT_LEASE_HOLDERS, &[]).await {
            Ok(row) => row.get::<_, i64>(0).max(1) as usize,
            Err(e) => return lost(e),
        };
        let (owned, unowned) = leases.split();
        let fair = (owned.len() + unowned.len()).div_ceil(processes);
        if owned.len() > fair {
            for key in owned.into_iter().skip(fair) {
                info!(
                    sink = key.sink,
                    partition = key.partition.index,
                    processes,
                    "handing a projection lease over to another process"
                );
                leases.set_owned(key, false);
                handing_over.push(key);
            }
        } else {
            let mut wanted = fair - owned.len();
            for key in unowned {
                if wanted == 0 {
                    break;
                }
                match client
                    .query_one(
                        "SELECT pg_try_advisory_lock($1, $2)",
                        &[&LEASE_LOCK_CLASS, &key.lock_id()],
                    )
                    .await
                {
                    Ok(row) if row.get::<_, bool>(0) => {
                        info!(
                            sink = key.sink,
                            partition = key.partition.index,
                            "projection lease taken"
                        );
                        leases.set_owned(key, true);
                        wanted -= 1;
                    }
                    Ok(_) => {}
                    Err(e) => return lost(e),
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = leases.claimed.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
