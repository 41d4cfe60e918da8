//! Projector partition leases shared by every process on one log: a PostgreSQL session
//! advisory lock per (store, partition), all held on one dedicated connection per process,
//! each with a fencing token (`projection_partitions.generation`, see `control`).
//!
//! Invariants:
//! - a process runs a partition's runner only while its lease connection holds that
//!   partition's lock, under the generation it recorded when it took it;
//! - a lease is released only once its runner has stopped (a hand-over to another process,
//!   or a runner that failed fatally), so two runners of one partition never overlap
//!   through a hand-over; the release is marked `released` so the next owner knows it
//!   follows a clean stop;
//! - when the connection fails, or a query on it does not answer within
//!   [`LEASE_QUERY_TIMEOUT`], every lease of the process is given up at once and its runners
//!   are told to stop; PostgreSQL releases the locks when it notices the session gone (at
//!   once for a killed process; within its TCP keepalives, about 11 s, for a peer that
//!   vanished), and the next owner, seeing no clean release, waits the hand-over grace
//!   before it writes (see `actors::lease`);
//! - each process takes at most its fair share, ceil(leases / processes), and hands the
//!   excess over when another process joins, so the partitions spread over the processes;
//! - a runner that failed fatally gives its lease back and this process leaves it to the
//!   others for a while (doubling up to [`MAX_REST`]), so one misconfigured process never
//!   holds its share of partitions stalled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projections::{Partition, RetryPolicy};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::control::{release_lease, take_lease, TakenLease};
use super::{db_message, PgConnector};

/// The first key of every lease lock (`pg_try_advisory_lock(int4, int4)`): "dlgr".
const LEASE_LOCK_CLASS: i32 = 0x646c_6772;

/// Session settings of the lease connection: PostgreSQL notices a peer that vanished
/// without closing (a network partition) within about idle + interval × count seconds and
/// then releases its locks.
const LEASE_SESSION_SETUP: &str = "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;
     SET tcp_keepalives_count = 3";

/// The first key of a store's layout lock (`int4, int4`): "dlly". Processes of the
/// store's partition count in force hold it shared while they take or hold its leases; a
/// process of another count takes it exclusively to make its count the one in force.
const LAYOUT_LOCK_CLASS: i32 = 0x646c_6c79;

/// Longest wait for an answer on the lease connection: past it the connection counts as
/// lost and every lease is given up (well before PostgreSQL's keepalives free the locks).
pub const LEASE_QUERY_TIMEOUT: Duration = Duration::from_secs(4);

/// First rest after a runner failed fatally; doubles with each failure in a row.
const FIRST_REST: Duration = Duration::from_secs(5);
/// Longest rest after a fatal failure.
const MAX_REST: Duration = Duration::from_secs(300);

/// One lease: a store's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    /// `mysql` | `milvus` | `s3`.
    pub sink: &'static str,
    /// The partition.
    pub partition: Partition,
}

impl LeaseKey {
    /// The second key of the advisory lock: store, partition count and partition index
    /// (each below 2^10, see the configuration's limit), so that processes configured
    /// with different counts never take the same lock for different slices of the log.
    fn lock_id(&self) -> i32 {
        let store = match self.sink {
            "mysql" => 1,
            "milvus" => 2,
            "s3" => 3,
            _ => 7,
        };
        (store << 20)
            | ((self.partition.count as i32 & 0x3ff) << 10)
            | (self.partition.index as i32 & 0x3ff)
    }
}

/// This process's side of one lease.
struct Claim {
    key: LeaseKey,
    /// The lease as the runner sees it: `Some` while owned (and not being handed over).
    owned: watch::Sender<Option<TakenLease>>,
    /// The generation under which this session holds the advisory lock, if it does.
    locked: Option<i64>,
    /// A runner of the partition is running in this process (set by the supervisor).
    running: Arc<AtomicBool>,
    /// Not taken again before this (after a fatal failure of its runner).
    rest_until: Option<Instant>,
    /// Fatal failures in a row.
    failures: u32,
    /// Since when every look found the lease free (no process holds it).
    free_since: Option<Instant>,
    /// Taken beyond this process's fair share because no process took it for
    /// [`ORPHAN_POLLS`] lease polls (another one's runner failed and gave it back): not
    /// handed over for [`ADOPTED_FOR`], so a lease nobody else runs does not go back and
    /// forth.
    adopted_at: Option<Instant>,
}

/// Lease polls (and at least a second) a lease stays free before a process at its fair
/// share takes it anyway.
const ORPHAN_POLLS: u32 = 3;
/// How long an adopted lease does not count towards its process's fair share.
const ADOPTED_FOR: Duration = Duration::from_secs(60);

/// The supervisor's handle on its claim: says when the runner runs, gives the lease back.
#[derive(Clone)]
pub struct ClaimHandle {
    leases: Leases,
    key: LeaseKey,
    running: Arc<AtomicBool>,
}

impl ClaimHandle {
    /// Whether this process owns the lease now, and under which generation.
    pub fn subscribe(&self) -> watch::Receiver<Option<TakenLease>> {
        let claims = self
            .leases
            .claims
            .lock()
            .expect("lease claims lock poisoned");
        claims
            .iter()
            .find(|c| c.key == self.key)
            .map(|c| c.owned.subscribe())
            .expect("a claim handle's claim exists")
    }

    /// How many times this process lost its lease connection so far: a runner started
    /// before a loss is aborted at once rather than left to finish its batch, since another
    /// process may own its partition by then.
    pub fn losses(&self) -> u64 {
        self.leases.losses.load(Ordering::SeqCst)
    }

    /// The supervisor started (`true`) or joined (`false`) the partition's runner. A lease
    /// is released only while its runner is not running.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
        self.leases.claimed.notify_one();
    }

    /// The runner stopped by itself: hand the lease over; when it `failed` fatally, leave it
    /// to other processes for a rest that doubles with each failure in a row.
    pub fn give_back(&self, failed: bool) {
        self.with_claim(|c| {
            c.owned.send_replace(None);
            if !failed {
                return;
            }
            let rest = FIRST_REST
                .saturating_mul(1 << c.failures.min(10))
                .min(MAX_REST);
            c.failures = c.failures.saturating_add(1);
            c.rest_until = Some(Instant::now() + rest);
            warn!(
                sink = c.key.sink,
                partition = c.key.partition.index,
                rest_secs = rest.as_secs(),
                "giving a failed projection partition's lease back"
            );
        });
        self.leases.claimed.notify_one();
    }

    /// The runner stopped without failing: the next fatal failure rests the shortest time.
    pub fn succeeded(&self) {
        self.with_claim(|c| c.failures = 0);
    }

    fn with_claim(&self, f: impl FnOnce(&mut Claim)) {
        let mut claims = self
            .leases
            .claims
            .lock()
            .expect("lease claims lock poisoned");
        if let Some(c) = claims.iter_mut().find(|c| c.key == self.key) {
            f(c);
        }
    }
}

/// The leases of this process. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    claims: Arc<Mutex<Vec<Claim>>>,
    /// Wakes the lease loop when a claim arrives or a runner stops.
    claimed: Arc<Notify>,
    /// How many times the lease connection was lost (every lease given up at once).
    losses: Arc<std::sync::atomic::AtomicU64>,
    /// This process, as `projection_partitions.owner` names it.
    owner: Arc<str>,
}

impl Leases {
    /// Starts the lease loop on a dedicated connection opened by `connector`, taking free
    /// leases every `poll`, until `cancel` (then the connection closes and every lease is
    /// released). `partitions` is this process's partition count: processes configured
    /// alike share the leases.
    pub fn spawn(
        connector: &PgConnector,
        poll: Duration,
        retry: RetryPolicy,
        partitions: u32,
        cancel: CancellationToken,
    ) -> (Leases, JoinHandle<()>) {
        let leases = Leases {
            claims: Arc::new(Mutex::new(Vec::new())),
            claimed: Arc::new(Notify::new()),
            losses: Arc::default(),
            owner: process_name().into(),
        };
        let task = tokio::spawn(lease_loop(
            leases.clone(),
            connector.clone(),
            poll,
            retry,
            partitions,
            cancel,
        ));
        (leases, task)
    }

    /// This process's name in `projection_partitions.owner`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Asks for `key`.
    pub fn claim(&self, key: LeaseKey) -> ClaimHandle {
        let (owned, _) = watch::channel(None);
        let running = Arc::new(AtomicBool::new(false));
        self.claims
            .lock()
            .expect("lease claims lock poisoned")
            .push(Claim {
                key,
                owned,
                locked: None,
                running: running.clone(),
                rest_until: None,
                failures: 0,
                free_since: None,
                adopted_at: None,
            });
        self.claimed.notify_one();
        ClaimHandle {
            leases: self.clone(),
            key,
            running,
        }
    }

    /// The leases owned now, with their generations.
    pub fn owned(&self) -> Vec<(LeaseKey, i64)> {
        let claims = self.claims.lock().expect("lease claims lock poisoned");
        claims
            .iter()
            .filter_map(|c| c.owned.borrow().map(|t| (c.key, t.generation)))
            .collect()
    }

    fn release_all(&self) {
        let mut claims = self.claims.lock().expect("lease claims lock poisoned");
        for c in claims.iter_mut() {
            c.owned.send_replace(None);
            c.locked = None;
        }
    }
}

/// `host:pid:random`: one process among those on this log.
fn process_name() -> String {
    use rand::Rng;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let tag: u32 = rand::rng().random();
    format!("{host}:{}:{tag:08x}", std::process::id())
}

async fn lease_loop(
    leases: Leases,
    connector: PgConnector,
    poll: Duration,
    retry: RetryPolicy,
    partitions: u32,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let setup = format!(
        "SET application_name = '{}'; {LEASE_SESSION_SETUP}",
        application_name(partitions)
    );
    while !cancel.is_cancelled() {
        let connected = tokio::select! {
            _ = cancel.cancelled() => break,
            c = tokio::time::timeout(LEASE_QUERY_TIMEOUT, connector.connect()) => c,
        };
        match connected {
            Ok(Ok((client, conn))) => {
                let conn = tokio::spawn(conn);
                match timed(client.batch_execute(&setup)).await {
                    Err(e) => warn!(error = %e, "lease connection setup failed"),
                    Ok(()) => {
                        failures = 0;
                        if let Err(e) = hold(&leases, &client, poll, partitions, &cancel).await {
                            leases.losses.fetch_add(1, Ordering::SeqCst);
                            warn!(error = %e, "lease connection failed; giving up every lease");
                        }
                    }
                }
                leases.release_all();
                // Closing the session releases every lock it holds.
                drop(client);
                conn.abort();
            }
            Ok(Err(e)) => warn!(error = %db_message(&e), "lease connection refused"),
            Err(_) => warn!("lease connection did not answer in time"),
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

/// The lease session's name: processes with the same partition count share leases (and
/// count each other for their fair share).
fn application_name(partitions: u32) -> String {
    format!("docledger-leases/{partitions}")
}

/// Lease sessions of the processes on this log with the same partition count.
const COUNT_LEASE_HOLDERS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE datname = current_database() AND application_name = $1";

/// `op` on the lease connection, given up after [`LEASE_QUERY_TIMEOUT`].
async fn timed<T>(
    op: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(LEASE_QUERY_TIMEOUT, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(db_message(&e)),
        Err(_) => Err(format!(
            "no answer within {} s",
            LEASE_QUERY_TIMEOUT.as_secs()
        )),
    }
}

/// Releases the leases being handed over whose runner stopped, takes free leases up to
/// this process's fair share, hands over what exceeds it, every `poll` (or when a claim or
/// a stopped runner wakes it) until the connection fails or `cancel`.
///
/// Fair share: ceil(leases / processes holding a lease session with this partition count).
/// A process over it (another one joined) first tells the excess runners to stop; each
/// lease is released once its runner has stopped, so the next owner starts after the last
/// batch of the previous one.
async fn hold(
    leases: &Leases,
    client: &tokio_postgres::Client,
    poll: Duration,
    partitions: u32,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let app = application_name(partitions);
    let mut layouts = Layouts::default();
    loop {
        let stopped: Vec<(LeaseKey, i64)> = {
            let claims = leases.claims.lock().expect("lease claims lock poisoned");
            claims
                .iter()
                .filter(|c| c.owned.borrow().is_none() && !c.running.load(Ordering::SeqCst))
                .filter_map(|c| c.locked.map(|g| (c.key, g)))
                .collect()
        };
        for (key, generation) in stopped {
            let p = key.partition;
            timed(release_lease(
                client, key.sink, p.count, p.index, generation,
            ))
            .await?;
            timed(client.query_one(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LEASE_LOCK_CLASS, &key.lock_id()],
            ))
            .await?;
            info!(
                sink = key.sink,
                partition = p.index,
                generation,
                "projection lease released"
            );
            let mut claims = leases.claims.lock().expect("lease claims lock poisoned");
            if let Some(c) = claims.iter_mut().find(|c| c.key == key) {
                c.locked = None;
            }
        }
        let still_held: Vec<&'static str> = {
            let claims = leases.claims.lock().expect("lease claims lock poisoned");
            claims
                .iter()
                .filter(|c| c.locked.is_some())
                .map(|c| c.key.sink)
                .collect()
        };
        layouts.let_go_unless(client, &still_held).await?;
        let processes = timed(client.query_one(COUNT_LEASE_HOLDERS, &[&app]))
            .await?
            .get::<_, i64>(0)
            .max(1) as usize;
        // Which leases no process holds, to adopt those left free for several polls.
        let held_locks: Vec<i32> = timed(client.query(
            "SELECT objid::bigint::int FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND classid::bigint = $1::bigint
                AND objsubid = 2
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&i64::from(LEASE_LOCK_CLASS)],
        ))
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        let (held, total, candidates) = {
            let mut claims = leases.claims.lock().expect("lease claims lock poisoned");
            let now = Instant::now();
            let orphan_after = (poll * ORPHAN_POLLS).max(Duration::from_secs(1));
            for c in claims.iter_mut() {
                c.free_since = if held_locks.contains(&c.key.lock_id()) {
                    None
                } else {
                    c.free_since.or(Some(now))
                };
                if c.adopted_at
                    .is_some_and(|t| now.duration_since(t) >= ADOPTED_FOR)
                {
                    c.adopted_at = None;
                }
            }
            (
                // Handed-over leases stay locked until their runner stops: they count as
                // held (nothing more is taken meanwhile) but not as running here.
                (
                    claims
                        .iter()
                        .filter(|c| c.locked.is_some() && c.adopted_at.is_none())
                        .count(),
                    claims
                        .iter()
                        .filter(|c| c.owned.borrow().is_some() && c.adopted_at.is_none())
                        .count(),
                ),
                claims.len(),
                claims
                    .iter()
                    .filter(|c| c.locked.is_none() && c.rest_until.is_none_or(|t| t <= now))
                    .map(|c| {
                        let orphaned = c
                            .free_since
                            .is_some_and(|t| now.duration_since(t) >= orphan_after);
                        (c.key, orphaned)
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let (held, running) = held;
        let fair = total.div_ceil(processes);
        if running > fair {
            let claims = leases.claims.lock().expect("lease claims lock poisoned");
            let mut excess = running - fair;
            for c in claims.iter().rev() {
                if excess == 0 {
                    break;
                }
                if c.owned.borrow().is_some() && c.adopted_at.is_none() {
                    info!(
                        sink = c.key.sink,
                        partition = c.key.partition.index,
                        processes,
                        "handing a projection lease over to another process once its runner stops"
                    );
                    c.owned.send_replace(None);
                    excess -= 1;
                }
            }
        } else {
            let mut wanted = fair.saturating_sub(held);
            for (key, orphaned) in candidates {
                let adopting = wanted == 0 && orphaned;
                if wanted == 0 && !orphaned {
                    continue;
                }
                if !layouts.may_take(client, key.sink, partitions).await? {
                    continue;
                }
                let got: bool = timed(client.query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&LEASE_LOCK_CLASS, &key.lock_id()],
                ))
                .await?
                .get(0);
                if !got {
                    continue;
                }
                let p = key.partition;
                let taken = timed(take_lease(
                    client,
                    key.sink,
                    p.count,
                    p.index,
                    &leases.owner,
                ))
                .await?;
                info!(
                    sink = key.sink,
                    partition = p.index,
                    generation = taken.generation,
                    clean = taken.clean,
                    "projection lease taken"
                );
                let mut claims = leases.claims.lock().expect("lease claims lock poisoned");
                if let Some(c) = claims.iter_mut().find(|c| c.key == key) {
                    c.locked = Some(taken.generation);
                    c.rest_until = None;
                    c.adopted_at = adopting.then(Instant::now);
                    c.owned.send_replace(Some(taken));
                }
                if adopting {
                    info!(
                        sink = key.sink,
                        partition = p.index,
                        "adopted a projection lease no process took"
                    );
                } else {
                    wanted -= 1;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = leases.claimed.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// This session's view of each store's layout (the partition count in force).
#[derive(Default)]
struct Layouts {
    /// Stores whose layout lock this session holds shared (its count is in force).
    shared: Vec<&'static str>,
    /// Stores whose count in force differs from this process's, as last warned about.
    warned: Vec<(&'static str, i32)>,
}

impl Layouts {
    /// Whether this process may take a lease of `sink`: its partition count is the one in
    /// force (it then holds the layout lock shared until it holds no lease of the store).
    /// When the store has no count in force yet, this one is adopted; when it has another,
    /// this process makes its own count the one in force if, and only if, no process of
    /// the other count holds a lease of the store (then none holds its layout lock).
    async fn may_take(
        &mut self,
        client: &tokio_postgres::Client,
        sink: &'static str,
        partitions: u32,
    ) -> Result<bool, String> {
        if self.shared.contains(&sink) {
            return Ok(true);
        }
        let key = layout_key(sink);
        let shared: bool = timed(client.query_one(
            "SELECT pg_try_advisory_lock_shared($1, $2)",
            &[&LAYOUT_LOCK_CLASS, &key],
        ))
        .await?
        .get(0);
        if !shared {
            return Ok(false); // another process is changing the count right now
        }
        let in_force: Option<i32> = timed(client.query_one(
            "SELECT partitions FROM projection_control WHERE sink = $1",
            &[&sink],
        ))
        .await?
        .get(0);
        match in_force {
            Some(p) if p == partitions as i32 => {
                self.shared.push(sink);
                return Ok(true);
            }
            None => {
                // The first count of this log (or the first since migration 5): adopt it,
                // seeded from the checkpoints kept before counts were recorded.
                let done = seed_layout(client, sink, None, partitions).await;
                timed(client.query_one(
                    "SELECT pg_advisory_unlock_shared($1, $2)",
                    &[&LAYOUT_LOCK_CLASS, &key],
                ))
                .await?;
                done?;
                return Ok(false); // taken at the next poll, under the count now in force
            }
            Some(_) => {}
        }
        timed(client.query_one(
            "SELECT pg_advisory_unlock_shared($1, $2)",
            &[&LAYOUT_LOCK_CLASS, &key],
        ))
        .await?;
        let in_force = in_force.unwrap_or_default();
        let exclusive: bool = timed(client.query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&LAYOUT_LOCK_CLASS, &key],
        ))
        .await?
        .get(0);
        if !exclusive {
            if !self.warned.contains(&(sink, in_force)) {
                warn!(
                    sink,
                    partitions_in_force = in_force,
                    partitions,
                    "this process is configured for another partition count than the one in \
                     force: it projects this store once no process of that count holds a lease"
                );
                self.warned.push((sink, in_force));
            }
            return Ok(false);
        }
        let done = seed_layout(client, sink, Some(in_force), partitions).await;
        timed(client.query_one(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&LAYOUT_LOCK_CLASS, &key],
        ))
        .await?;
        done?;
        info!(
            sink,
            from = in_force,
            to = partitions,
            "partition count changed"
        );
        Ok(false)
    }

    /// Lets go of the layout lock of every store of which this session holds no lease.
    async fn let_go_unless(
        &mut self,
        client: &tokio_postgres::Client,
        held: &[&'static str],
    ) -> Result<(), String> {
        let idle: Vec<&'static str> = self
            .shared
            .iter()
            .copied()
            .filter(|s| !held.contains(s))
            .collect();
        for sink in idle {
            timed(client.query_one(
                "SELECT pg_advisory_unlock_shared($1, $2)",
                &[&LAYOUT_LOCK_CLASS, &layout_key(sink)],
            ))
            .await?;
            self.shared.retain(|s| *s != sink);
        }
        Ok(())
    }
}

fn layout_key(sink: &str) -> i32 {
    match sink {
        "mysql" => 1,
        "milvus" => 2,
        "s3" => 3,
        _ => 7,
    }
}

/// Seeds partition i of the new count ($2) from partition i of the old one ($3).
const SEED_EACH: &str = r#"
INSERT INTO projection_checkpoints AS c (sink, partitions, partition, log_id, epoch, xid, position, seeded)
SELECT sink, $2, partition, log_id, epoch, xid, position, true
  FROM projection_checkpoints WHERE sink = $1 AND partitions = $3
ON CONFLICT (sink, partitions, partition) DO UPDATE
   SET log_id = EXCLUDED.log_id, epoch = EXCLUDED.epoch, xid = EXCLUDED.xid,
       position = EXCLUDED.position, seeded = true, updated_at = now()
"#;

/// Seeds every partition of the new count ($2) at the lowest checkpoint of the old one ($3).
const SEED_LOWEST: &str = r#"
INSERT INTO projection_checkpoints AS c (sink, partitions, partition, log_id, epoch, xid, position, seeded)
SELECT $1, $2, g.i, m.log_id, m.epoch, m.xid, m.position, true
  FROM generate_series(0, $2 - 1) AS g(i),
       (SELECT log_id, epoch, xid, position FROM projection_checkpoints
         WHERE sink = $1 AND partitions = $3
         ORDER BY epoch, xid, position LIMIT 1) AS m
ON CONFLICT (sink, partitions, partition) DO UPDATE
   SET log_id = EXCLUDED.log_id, epoch = EXCLUDED.epoch, xid = EXCLUDED.xid,
       position = EXCLUDED.position, seeded = true, updated_at = now()
"#;

/// In one transaction: makes `partitions` the count in force for `sink` and seeds
/// its checkpoints from those of the count before (`from`; None: the rows kept before
/// counts were recorded, whose count is unknown). Every new partition starts at the lowest
/// checkpoint of the old count (so nothing is skipped; re-applying is idempotent), or at the
/// start of the log when some old partition has none. Rows kept before counts were recorded
/// that cover exactly partitions 0..count are taken as this count's own.
async fn seed_layout(
    client: &tokio_postgres::Client,
    sink: &str,
    from: Option<i32>,
    partitions: u32,
) -> Result<(), String> {
    timed(client.batch_execute("BEGIN")).await?;
    match seed_layout_in_transaction(client, sink, from, partitions).await {
        Ok(()) => timed(client.batch_execute("COMMIT")).await,
        Err(e) => {
            let _ = timed(client.batch_execute("ROLLBACK")).await;
            Err(e)
        }
    }
}

async fn seed_layout_in_transaction(
    client: &tokio_postgres::Client,
    sink: &str,
    from: Option<i32>,
    partitions: u32,
) -> Result<(), String> {
    let old = from.unwrap_or(0);
    let rows = timed(client.query(
        "SELECT partition FROM projection_checkpoints WHERE sink = $1 AND partitions = $2",
        &[&sink, &old],
    ))
    .await?;
    let updated = timed(client.execute(
        "UPDATE projection_control SET partitions = $2, updated_at = now()
          WHERE sink = $1 AND partitions IS NOT DISTINCT FROM $3",
        &[&sink, &(partitions as i32), &from],
    ))
    .await?;
    if updated == 0 || rows.is_empty() {
        return Ok(()); // another process got there first, or nothing was ever applied
    }
    let indexes: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let exact = from.is_none()
        && indexes.len() == partitions as usize
        && (0..partitions as i32).all(|i| indexes.contains(&i));
    let complete = from.is_none_or(|count| indexes.len() == count as usize);
    let sql = if exact {
        SEED_EACH
    } else if complete {
        SEED_LOWEST
    } else {
        return Ok(()); // an old partition never applied anything: from the start of the log
    };
    timed(client.execute(sql, &[&sink, &(partitions as i32), &old])).await?;
    Ok(())
}
