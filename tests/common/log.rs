//! Support shared by the log's integration tests: a log in its own PostgreSQL database (named
//! after the test, dropped at the end), builders of realistic events and append requests, and
//! readers that follow `read_after` while checking that the cursor only moves forward.
//!
//! Everything runs against the real PostgreSQL of this machine; a missing store fails with how
//! to start it (`StoreEnv::require`).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)] // reason: each test binary uses a different subset of these helpers

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use aggregates::{BlobRef, Chunk, DocId, DocumentEvent, LogCursor, PutDocument, RecordedEvent};
use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use docledger::config::{Config, StoreUrl};
use docledger::eventlog::{AppendRequest, PgLog};
use projections::testing::{unique_name, StoreEnv};
use projections::LogSource;
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

/// How long a reader may be held back by transactions it does not own (other tests or sessions
/// on the same cluster hold the snapshot horizon for as long as their transactions run).
pub const HORIZON_PATIENCE: Duration = Duration::from_secs(30);

/// A log in a database of its own.
pub struct TestLog {
    /// The log under test.
    pub log: PgLog,
    /// Its database.
    pub database: String,
    env: StoreEnv,
}

impl TestLog {
    /// Creates (and migrates) a fresh database named after `test`.
    pub async fn create(test: &str, pool_size: usize) -> Result<TestLog> {
        let env = StoreEnv::require();
        let database = unique_name(test);
        let url = store_url(&env.pg_database_url(&database))?;
        let log = PgLog::connect(&url, pool_size)
            .await
            .with_context(|| format!("connect log database {database}"))?;
        Ok(TestLog { log, database, env })
    }

    /// Another handle on the same database, connected (and migrated) anew.
    pub async fn connect_again(&self, pool_size: usize) -> Result<PgLog> {
        let url = store_url(&self.env.pg_database_url(&self.database))?;
        PgLog::connect(&url, pool_size)
            .await
            .with_context(|| format!("reconnect log database {}", self.database))
    }

    /// A plain connection to the test's database (for raw SQL that is not the log's API).
    pub async fn raw_client(&self) -> Result<tokio_postgres::Client> {
        connect(&self.env.pg_database_url(&self.database)).await
    }

    /// Drops the database (closing the log's connections first).
    pub async fn drop_database(self) -> Result<()> {
        let TestLog { log, database, env } = self;
        drop(log);
        let admin = connect(&env.pg_database_url("postgres")).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
            ))
            .await
            .with_context(|| format!("drop database {database}"))?;
        Ok(())
    }
}

/// A connection whose driver task runs in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A typed log URL, built the way the service builds it (through its configuration).
pub fn store_url(url: &str) -> Result<StoreUrl> {
    let env = HashMap::from([("DOCLEDGER_EVENTSTORE_URL".to_owned(), url.to_owned())]);
    Ok(Config::load(None, &env)
        .context("configuration with a test log url")?
        .eventstore_url)
}

/// A valid document id.
pub fn doc(id: &str) -> DocId {
    DocId::parse(id).expect("test doc ids are valid")
}

/// A small catalogue event (no blob, no chunks).
pub fn row_event(version: u64, title: &str) -> DocumentEvent {
    DocumentEvent::RowInserted {
        version,
        title: title.to_owned(),
        source_type: "test".to_owned(),
        business_tag: None,
        attributes: serde_json::Map::new(),
        blob_sha256: None,
        blob_size: None,
        chunk_count: 0,
    }
}

/// `n` small events of one command at document version `version`.
pub fn row_events(version: u64, n: usize, label: &str) -> Vec<DocumentEvent> {
    (0..n)
        .map(|i| row_event(version, &format!("{label} #{i}")))
        .collect()
}

/// A plain append request: no blob, no idempotency key; the document version is the one of
/// the last event.
pub fn request<'a>(
    doc_id: &'a DocId,
    expected_stream_version: i64,
    events: &'a [DocumentEvent],
) -> AppendRequest<'a> {
    AppendRequest {
        doc_id,
        expected_stream_version,
        events,
        doc_version: events.last().map_or(0, DocumentEvent::version),
        deleted: false,
        blob: None,
        idempotency: None,
        resolves: None,
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (a blob's content).
pub fn blob_bytes(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A realistic put: a blob, attributes and `num_chunks` chunks of `dim`-dimensional vectors.
pub fn put_document(
    title: &str,
    blob: &[u8],
    num_chunks: u32,
    dim: usize,
    seed: u64,
) -> PutDocument {
    let mut attributes = serde_json::Map::new();
    attributes.insert("lang".into(), "en".into());
    attributes.insert("pages".into(), (seed % 300).into());
    PutDocument {
        title: title.to_owned(),
        source_type: "pdf".to_owned(),
        business_tag: Some("finance".to_owned()),
        attributes,
        blob: Some(BlobRef {
            sha256: sha256_hex(blob),
            size: blob.len() as u64,
            content_type: "application/pdf".to_owned(),
        }),
        chunks: (0..num_chunks)
            .map(|index| Chunk {
                index,
                text: format!("{title}: text of chunk {index}, about a paragraph long. ").repeat(4),
                vector: (0..dim)
                    .map(|j| ((seed as usize * 31 + index as usize * 7 + j) % 1000) as f32 / 999.0)
                    .collect(),
            })
            .collect(),
        expected_version: None,
    }
}

/// Polls `probe` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `read_after` follower that checks the log's reader contract on every page: the cursor
/// only moves forward and pages hold at most `limit` events.
pub struct Follower {
    /// Where the next page starts.
    pub cursor: LogCursor,
    /// Every event read, in reading order.
    pub events: Vec<RecordedEvent<DocumentEvent>>,
    /// Page size.
    pub limit: usize,
}

impl Follower {
    /// A follower from the start of the log.
    pub fn new(limit: usize) -> Follower {
        Follower {
            cursor: LogCursor::START,
            events: Vec::new(),
            limit,
        }
    }

    /// Reads one page and moves the cursor to its last event. Returns the page's size.
    pub async fn read_page(&mut self, log: &PgLog) -> Result<usize> {
        let page = log
            .reads()
            .read_after(self.cursor, self.limit)
            .await
            .context("read_after")?;
        ensure!(
            page.len() <= self.limit,
            "page of {} events for limit {}",
            page.len(),
            self.limit
        );
        for event in &page {
            ensure!(
                event.cursor > self.cursor,
                "cursor moved backwards or repeated: {} after {}",
                event.cursor,
                self.cursor
            );
            self.cursor = event.cursor;
        }
        let n = page.len();
        self.events.extend(page);
        Ok(n)
    }

    /// Reads until `expected` events were read in total (waiting for the horizon), then checks
    /// that nothing more comes.
    pub async fn read_exactly(&mut self, log: &PgLog, expected: usize) -> Result<()> {
        let deadline = Instant::now() + HORIZON_PATIENCE;
        while self.events.len() < expected {
            if self.read_page(log).await? == 0 {
                ensure!(
                    Instant::now() < deadline,
                    "read {} of {expected} events within {HORIZON_PATIENCE:?}",
                    self.events.len()
                );
                log.wait_for_append(Duration::from_millis(50)).await;
            }
        }
        let extra = self.read_page(log).await?;
        ensure!(
            self.events.len() == expected && extra == 0,
            "read {} events, expected exactly {expected}",
            self.events.len()
        );
        Ok(())
    }

    /// `(stream, stream_version)` of every event read.
    pub fn keys(&self) -> Vec<(String, i64)> {
        self.events
            .iter()
            .map(|e| (e.doc_id.to_string(), e.stream_version))
            .collect()
    }
}
