//! The PostgreSQL event log: migrations, optimistic appends, gap-free ordered reads, the
//! consistency tracker's per-store versions, checkpoints and parked changes.
//!
//! Invariants: an append is one transaction guarded by the stream row and
//! `UNIQUE (stream_id, stream_version)`; readers only see events of transactions older than
//! every running one, ordered and paged by `(epoch, xid, position)`; blob bytes are written
//! once per sha256 in the append's transaction. Plain appends of different streams may
//! share that transaction (group commit, `group`), each still with its own answer.
//!
//! [`PgLog`] is the connection (pool, notifier, identity); what consumers do with it goes
//! through its roles ([`roles`]): [`PgLog::appends`] (the document actor), [`PgLog::reads`],
//! [`PgLog::store_records`] (readiness, rebuild input), [`PgLog::parked`] (parked changes and
//! compensations), [`PgLog::control`] (pauses, rebuild requests); the projection runner's
//! role is the [`projections::LogSource`] trait.

mod append;
pub mod codec;
pub mod compaction;
pub mod connect;
pub mod content;
pub mod control;
pub use crate::metrics::AppendStats;
pub use control::{RebuildStatus, PHASE_DONE, PHASE_FAILED};
mod group;
pub mod lease;
mod listen;
mod parked;
mod reader;
pub mod roles;
pub mod schema;
mod store_reader;

use std::sync::Arc;

use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod};
use projections::tls::TlsTrust;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use append::{AppendRequest, Appended, IdempotencyKey, IdempotentResult};
pub use connect::PgConnector;
pub use content::{ContentRemoval, ErasureCheck, ErasureLeak};
pub use parked::{CompensationView, ParkedResolution, PendingParked, ResolveTarget};
pub use reader::{EventRecord, HorizonStatus, ListedDocument, StreamState, LAG_COUNT, READ_AFTER};
pub use roles::{LogAppends, LogCompaction, LogControl, LogReads, ParkedChanges, StoreRecords};
pub use store_reader::{CataloguePage, CatalogueScan, CatalogueState, CatalogueStates, RawEvents};

use crate::config::{AppendGroupConfig, StoreUrl};

/// The log database's name in messages.
const STORE: &str = "PostgreSQL";

/// The channel NOTIFY wakes readers on. Notifications never carry data.
pub const NOTIFY_CHANNEL: &str = "docledger_log";
/// The channel a parked change is announced on (the compensator's wake-up; appends do not
/// wake it).
pub const PARKED_CHANNEL: &str = "docledger_parked";

/// A failure of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another append to the stream won: the expected version is stale.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: i64,
        /// What the stream holds.
        actual: i64,
    },
    /// An idempotency key was reused for a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The database failed or is unreachable.
    #[error("log database {operation} failed: {message}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The database's message.
        message: String,
    },
    /// A stored event cannot be decoded.
    #[error("stored event at position {position} is corrupt: {source}")]
    Corrupt {
        /// The event's position.
        position: i64,
        /// Why.
        #[source]
        source: codec::DecodeError,
    },
}

impl LogError {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> LogError {
        move |e| LogError::Unavailable {
            operation,
            message: db_message(&e),
        }
    }

    pub(crate) fn pool(
        operation: &'static str,
    ) -> impl FnOnce(deadpool_postgres::PoolError) -> LogError {
        move |e| LogError::Unavailable {
            operation,
            message: projections::tls::describe_for(STORE, &e).unwrap_or_else(|| e.to_string()),
        }
    }
}

/// The server's message of a database error, with its SQLSTATE; for a failed TLS handshake
/// why it failed ("PostgreSQL TLS: certificate not trusted ...").
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => projections::tls::describe_for(STORE, e).unwrap_or_else(|| e.to_string()),
    }
}

/// A handle on the log: its connection pool, notifier and identity. Cheap to clone. What a
/// consumer does with the log goes through one of its roles ([`roles`]).
#[derive(Clone)]
pub struct PgLog {
    pub(crate) pool: Pool,
    /// Opens this log's dedicated connections (leases).
    connector: PgConnector,
    log_id: Arc<str>,
    appended: watch::Receiver<u64>,
    /// Changes when a change is parked (NOTIFY on [`PARKED_CHANNEL`]).
    parked_notified: watch::Receiver<u64>,
    /// Asks for a NOTIFY after a committed append (see [`listen::spawn_notifier`]).
    notify: mpsc::Sender<()>,
    /// Append counters, for `/metrics`.
    stats: Arc<AppendStats>,
    /// The group-commit queue of plain appends; `None` = each is its own statement.
    group: Option<group::GroupAppender>,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog")
            .field("log_id", &self.log_id)
            .finish()
    }
}

/// Creates the database `connector` names when it does not exist.
///
/// # Errors
/// [`LogError::Unavailable`] when the server cannot be reached or refuses.
pub async fn ensure_database(connector: &PgConnector) -> Result<(), LogError> {
    let db = connector.dbname().to_owned();
    let (client, conn) = connector
        .with_dbname("postgres")
        .connect()
        .await
        .map_err(LogError::db("connect"))?;
    let conn = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .map_err(LogError::db("look up database"))?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", db.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => info!(database = %db, "created log database"),
            // Another process created it between our check and our CREATE.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(LogError::db("create database")(e)),
        }
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

impl PgLog {
    /// Connects (creating the database when missing), migrates, and starts listening for
    /// appends; a URL asking for TLS (`sslmode=require`) trusts the system's roots.
    ///
    /// The listener, the notifier and the group commit run as tasks of the calling runtime,
    /// which must outlive the handle's users (the service connects on its main runtime); the
    /// pooled connections run on a runtime of their own ([`connect::home`]).
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the database cannot be reached or migrated.
    pub async fn connect(url: &StoreUrl, pool_size: usize) -> Result<PgLog, LogError> {
        Self::connect_with_tls(url, pool_size, &TlsTrust::system()).await
    }

    /// Like [`PgLog::connect`]; a URL asking for TLS trusts the roots of `trust`.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the database cannot be reached (a failed TLS handshake
    /// included) or migrated.
    pub async fn connect_with_tls(
        url: &StoreUrl,
        pool_size: usize,
        trust: &TlsTrust,
    ) -> Result<PgLog, LogError> {
        Self::connect_with(url, pool_size, trust, AppendGroupConfig::default()).await
    }

    /// As [`PgLog::connect_with_tls`], with the group commit of plain appends tuned by
    /// `group` (`max_commands == 1` turns it off: each append is a statement of its own).
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the database cannot be reached (a failed TLS handshake
    /// included) or migrated.
    pub async fn connect_with(
        url: &StoreUrl,
        pool_size: usize,
        trust: &TlsTrust,
        group: AppendGroupConfig,
    ) -> Result<PgLog, LogError> {
        let connector = PgConnector::new(url, trust)?;
        ensure_database(&connector).await?;
        let pool = connector.pool(
            pool_size,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        )?;
        let log_id = migrate(&pool).await?;
        let notify = listen::spawn_notifier(connector.clone());
        let notified = listen::spawn(connector.clone());
        let stats = Arc::<AppendStats>::default();
        let group = (group.max_commands > 1).then(|| {
            group::GroupAppender::spawn(pool.clone(), stats.clone(), notify.clone(), group)
        });
        Ok(PgLog {
            stats,
            group,
            pool,
            connector,
            log_id: log_id.into(),
            appended: notified.appended,
            parked_notified: notified.parked,
            notify,
        })
    }

    /// Opens dedicated connections to this log's database.
    pub fn connector(&self) -> &PgConnector {
        &self.connector
    }

    /// This log's identity.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Returns when a change was parked, by this process or another (NOTIFY), or after
    /// `timeout` (polling fallback).
    pub async fn wait_for_parked(&self, timeout: std::time::Duration) {
        listen::wait_for_next(&self.parked_notified, timeout).await;
    }

    /// A pooled connection (for tests and tools that inspect the log directly).
    ///
    /// # Errors
    /// [`LogError::Unavailable`].
    pub async fn client(&self) -> Result<deadpool_postgres::Object, LogError> {
        self.pool
            .get()
            .await
            .map_err(LogError::pool("get connection"))
    }
}

/// Applies pending migrations and makes sure the log has an identity and a current epoch.
/// Returns the log id.
///
/// The epoch grows when the database's transaction counter is not past every recorded
/// transaction id, which happens when the log was restored into another cluster: events
/// written from then on sort after all earlier ones.
async fn migrate(pool: &Pool) -> Result<String, LogError> {
    let mut client = pool.get().await.map_err(LogError::pool("get connection"))?;
    let tx = client
        .transaction()
        .await
        .map_err(LogError::db("begin migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::MIGRATION_LOCK_KEY],
    )
    .await
    .map_err(LogError::db("lock migrations"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(LogError::db("create schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(LogError::db("read schema_migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in schema::MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(LogError::db("apply migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(LogError::db("record migration"))?;
        info!(version, name, "applied log migration");
    }
    tx.execute(
        "INSERT INTO log_meta (log_id, epoch) VALUES (gen_random_uuid(), 1) ON CONFLICT DO NOTHING",
        &[],
    )
    .await
    .map_err(LogError::db("create log identity"))?;
    let row = tx
        .query_one(
            "SELECT m.log_id::text, m.epoch,
                    pg_current_xact_id() <= COALESCE(
                        (SELECT max(xid) FROM events WHERE epoch = m.epoch), '0'::xid8) AS reused
             FROM log_meta m",
            &[],
        )
        .await
        .map_err(LogError::db("read log identity"))?;
    let log_id: String = row.get(0);
    let epoch: i32 = row.get(1);
    if row.get::<_, bool>(2) {
        warn!(epoch, "transaction ids of this database do not follow the log's: starting a new log epoch (restored or migrated database?)");
        tx.execute("UPDATE log_meta SET epoch = epoch + 1", &[])
            .await
            .map_err(LogError::db("bump epoch"))?;
    }
    tx.commit()
        .await
        .map_err(LogError::db("commit migration"))?;
    Ok(log_id)
}

/// Runs the migrations (for `docledger migrate`); a URL asking for TLS trusts `trust`.
///
/// # Errors
/// [`LogError::Unavailable`].
pub async fn migrate_only(url: &StoreUrl, trust: &TlsTrust) -> Result<String, LogError> {
    let connector = PgConnector::new(url, trust)?;
    ensure_database(&connector).await?;
    let pool = connector.pool(1, ManagerConfig::default())?;
    migrate(&pool).await
}
