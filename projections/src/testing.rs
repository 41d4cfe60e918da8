//! Test support shared by every crate's tests: where the real stores are, a clear failure
//! (with how to start them) when one is not running, and the sink conformance suite
//! ([`sink_suite`]) every store adapter passes. Never a mock.
//!
//! Addresses come from `PG_URL`, `MYSQL_URL`, `MILVUS_URI`, `MILVUS_TOKEN`, `S3_ENDPOINT`, `S3_ACCESS_KEY`,
//! `S3_SECRET_KEY`, `S3_REGION`; unset ones are read from the env file that
//! `scripts/stores.sh up` writes (`$STORES_DATA/env`, default `/tmp/stores-data/env`).

use std::collections::HashMap;
use std::net::TcpStream;

use aggregates::Version;

use crate::error::SinkError;
use crate::milvus::MilvusAccess;
use crate::sink::Sink;
use std::time::Duration;

/// How to start the stores, printed when one is missing.
pub const HOW_TO_START: &str = "start the stores with `scripts/stores.sh up` (see README)";

/// Where the real stores of this machine are.
#[derive(Debug, Clone)]
pub struct StoreEnv {
    /// PostgreSQL server URL (database part is replaced per test).
    pub pg_url: String,
    /// MySQL/MariaDB server URL.
    pub mysql_url: String,
    /// Milvus gRPC URL.
    pub milvus_uri: String,
    /// Milvus token (`user:password`) when the server authenticates.
    pub milvus_token: Option<String>,
    /// S3 endpoint.
    pub s3_endpoint: String,
    /// S3 access key.
    pub s3_access_key: String,
    /// S3 secret key.
    pub s3_secret_key: String,
    /// S3 region.
    pub s3_region: String,
}

fn env_file() -> HashMap<String, String> {
    let dir = std::env::var("STORES_DATA").unwrap_or_else(|_| "/tmp/stores-data".into());
    let Ok(text) = std::fs::read_to_string(format!("{dir}/env")) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("export ")) {
        for assignment in line.trim_start_matches("export ").split_whitespace() {
            if let Some((k, v)) = assignment.split_once('=') {
                out.insert(k.to_owned(), v.trim_matches('\'').to_owned());
            }
        }
    }
    out
}

impl StoreEnv {
    /// Reads the addresses (environment first, then the stores' env file, then defaults).
    pub fn load() -> StoreEnv {
        let file = env_file();
        let get = |k: &str, default: &str| {
            std::env::var(k)
                .ok()
                .or_else(|| file.get(k).cloned())
                .unwrap_or_else(|| default.to_owned())
        };
        StoreEnv {
            pg_url: get("PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            mysql_url: get("MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
            milvus_uri: get("MILVUS_URI", "http://127.0.0.1:19530"),
            milvus_token: Some(get("MILVUS_TOKEN", "")).filter(|t| !t.is_empty()),
            s3_endpoint: get("S3_ENDPOINT", "http://127.0.0.1:9000"),
            s3_access_key: get("S3_ACCESS_KEY", "minioadmin"),
            s3_secret_key: get("S3_SECRET_KEY", "minioadmin-secret"),
            s3_region: get("S3_REGION", "us-east-1"),
        }
    }

    /// How to reach this machine's Milvus (its token included).
    pub fn milvus(&self) -> MilvusAccess {
        MilvusAccess {
            token: self.milvus_token.clone(),
            ..MilvusAccess::at(&self.milvus_uri)
        }
    }

    /// The `DOCLEDGER_*` variables that point a `serve` process at this machine's Milvus
    /// (the collection aside).
    pub fn milvus_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("DOCLEDGER_MILVUS_URL", self.milvus_uri.clone())];
        if let Some(token) = &self.milvus_token {
            vars.push(("DOCLEDGER_MILVUS_TOKEN", token.clone()));
        }
        vars
    }

    /// The `DOCLEDGER_*` settings of a `serve` process of test `name` on these stores: its own
    /// log database, MySQL database, Milvus collection and bucket, vectors of 8 dimensions,
    /// short polls and retries.
    pub fn service_vars(&self, name: &str) -> HashMap<String, String> {
        [
            ("DOCLEDGER_EVENTSTORE_URL", self.pg_database_url(name)),
            ("DOCLEDGER_MYSQL_URL", self.mysql_database_url(name)),
            ("DOCLEDGER_MILVUS_COLLECTION", name.to_owned()),
            ("DOCLEDGER_S3_ENDPOINT", self.s3_endpoint.clone()),
            ("DOCLEDGER_S3_BUCKET", name.replace('_', "-")),
            ("DOCLEDGER_S3_ACCESS_KEY", self.s3_access_key.clone()),
            ("DOCLEDGER_S3_SECRET_KEY", self.s3_secret_key.clone()),
            ("DOCLEDGER_S3_REGION", self.s3_region.clone()),
            ("DOCLEDGER_VECTOR_DIM", "8".to_owned()),
            ("DOCLEDGER_IDLE_POLL_MS", "100".to_owned()),
            ("DOCLEDGER_RETRY_MAX_MS", "1000".to_owned()),
        ]
        .into_iter()
        .chain(self.milvus_vars())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A raw S3 client of these stores (path-style, the static keys), for checks and sweeps.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version_latest()
            .endpoint_url(&self.s3_endpoint)
            .region(aws_sdk_s3::config::Region::new(self.s3_region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.s3_access_key,
                &self.s3_secret_key,
                None,
                None,
                "tests",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Like [`StoreEnv::load`], but panics with how to start the stores unless every one
    /// accepts TCP connections.
    pub fn require() -> StoreEnv {
        let env = Self::load();
        for (name, url) in [
            ("PostgreSQL", &env.pg_url),
            ("MySQL/MariaDB", &env.mysql_url),
            ("Milvus", &env.milvus_uri),
            ("S3", &env.s3_endpoint),
        ] {
            let addr = host_port(url);
            let reachable = addr
                .parse()
                .ok()
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
                .is_some();
            assert!(
                reachable,
                "{name} is not reachable at {url} ({addr}): {HOW_TO_START}"
            );
        }
        env
    }

    /// `pg_url` with the database replaced.
    pub fn pg_database_url(&self, database: &str) -> String {
        with_path(&self.pg_url, database)
    }

    /// `mysql_url` with the database replaced.
    pub fn mysql_database_url(&self, database: &str) -> String {
        with_path(&self.mysql_url, database)
    }
}

fn with_path(url: &str, path: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{path}")
}

/// `host:port` of a URL like `scheme://user@host:port/db`, resolving `localhost`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.replace("localhost", "127.0.0.1")
}

/// A name usable as a database, bucket and collection name, unique per test and run.
pub fn unique_name(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "t_{}_{}_{:x}",
        &clean[..clean.len().min(30)],
        std::process::id(),
        nanos & 0xffffff
    )
}

/// What a store holds for one document, as the conformance suite compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The version the store holds.
    pub version: Version,
    /// A fingerprint of the content (changes whenever the stored state does).
    pub fingerprint: String,
}

/// A sink whose stored state of a document can be read back (for the conformance suite).
pub trait Held: Sink + Sync {
    /// What the store holds for `doc_id`, `None` when nothing.
    fn held(
        &self,
        doc_id: &str,
    ) -> impl std::future::Future<Output = Result<Option<Holding>, SinkError>> + Send;
}

impl Held for crate::mysql::MysqlSink {
    async fn held(&self, doc_id: &str) -> Result<Option<Holding>, SinkError> {
        Ok(self.row(doc_id).await?.map(|r| Holding {
            version: r.version,
            fingerprint: format!("{}|{}|{:?}", r.title, r.chunk_count, r.blob_sha256),
        }))
    }
}

impl Held for crate::milvus::MilvusSink {
    async fn held(&self, doc_id: &str) -> Result<Option<Holding>, SinkError> {
        let rows = self.rows_of(doc_id).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let versions: Vec<Version> = rows.iter().map(|r| r.version).collect();
        assert!(
            versions.iter().all(|v| *v == first.version),
            "{doc_id} has rows of several versions: {versions:?}"
        );
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        Ok(Some(Holding {
            version: first.version,
            fingerprint: texts.join("|"),
        }))
    }
}

impl Held for crate::s3::S3Sink {
    async fn held(&self, doc_id: &str) -> Result<Option<Holding>, SinkError> {
        Ok(self.object(doc_id).await?.map(|o| Holding {
            version: o.version.unwrap_or_default(),
            fingerprint: format!("{:?}|{}", o.sha256, o.bytes.len()),
        }))
    }
}

/// The sink conformance suite (STYLE.md §7): the same checks against every store adapter.
///
/// - re-applying any suffix of the log changes nothing;
/// - an older version re-delivered out of log order never wins over a newer one (a batch
///   read in log order may write a document's first version without reading the store:
///   see [`crate::Batch::fresh_first_versions`]);
/// - a deletion followed by a replay of a suffix that still holds an older put converges
///   to nothing;
/// - deletes win for good: an *isolated* late delivery of an older put after a deletion
///   (a stale owner's batch, a repair, a re-read after a change of partition count) never
///   brings the document back, through the sink itself when it keeps tombstones
///   ([`crate::Sink::KEEPS_TOMBSTONES`]), else through the runner's deletion check
///   ([`crate::Batch::drop_puts_of`] with what the log says, here the suite's log);
/// - a stale owner's batch delivered after the new owner's changes nothing: refused as
///   fenced by a sink that checks fencing tokens (MySQL), kept out by the version guard
///   and the deletion check by the others;
/// - the checkpoint a sink keeps itself only moves forward (the log-side checkpoint is the
///   log's, tested with it).
///
/// A crash between the store write and the checkpoint needs a log and a runner; the
/// `docledger` crate tests it against the PostgreSQL log.
pub mod sink_suite {
    use std::collections::HashMap;

    use aggregates::{Chunk, DocId, DocumentEvent, LogCursor, RecordedEvent, StoreKind, Version};
    use bytes::Bytes;

    use super::{Held, Holding};
    use crate::sink::{Batch, Partition};

    const LOG_ID: &str = "conformance-log";

    /// A small log of several documents, their blobs by sha256, and the documents' ids.
    #[derive(Default)]
    pub struct SuiteLog {
        /// Events in log order.
        pub events: Vec<RecordedEvent<DocumentEvent>>,
        /// Blob bytes by sha256.
        pub blobs: HashMap<String, Bytes>,
    }

    fn cursor(position: i64) -> LogCursor {
        LogCursor {
            epoch: 1,
            xid: 100,
            position,
        }
    }

    impl SuiteLog {
        /// An empty log.
        pub fn new() -> SuiteLog {
            SuiteLog::default()
        }

        fn push(&mut self, doc: &str, event: DocumentEvent) {
            let position = self.events.len() as i64 + 1;
            self.events.push(RecordedEvent {
                cursor: cursor(position),
                doc_id: DocId::parse(doc).expect("suite ids are valid"),
                stream_version: position,
                recorded_at_ms: 0,
                event,
            });
        }

        /// A put of `doc` at `version` with `num_chunks` chunks of `dim` and a blob.
        pub fn put(&mut self, doc: &str, version: Version, num_chunks: u32, dim: usize) {
            let bytes = Bytes::from(format!("{doc} blob v{version}"));
            // A stand-in content address (the sinks trust the log's hashing).
            let sha = format!("{:064x}", xxhash_rust::xxh3::xxh3_64(&bytes));
            self.blobs.insert(sha.clone(), bytes.clone());
            self.push(
                doc,
                DocumentEvent::BlobStored {
                    version,
                    sha256: sha.clone(),
                    size: bytes.len() as u64,
                    content_type: "text/plain".into(),
                },
            );
            self.push(
                doc,
                DocumentEvent::RowInserted {
                    version,
                    title: format!("{doc} v{version}"),
                    source_type: "suite".into(),
                    business_tag: None,
                    attributes: serde_json::Map::new(),
                    blob_sha256: Some(sha),
                    blob_size: Some(bytes.len() as u64),
                    chunk_count: num_chunks,
                },
            );
            self.push(
                doc,
                DocumentEvent::VectorsIndexed {
                    version,
                    chunks: (0..num_chunks)
                        .map(|index| Chunk {
                            index,
                            text: format!("{doc} v{version} chunk {index}"),
                            vector: (0..dim)
                                .map(|k| version as f32 + index as f32 / 10.0 + k as f32 / 100.0)
                                .collect(),
                        })
                        .collect(),
                },
            );
        }

        /// A deletion of `doc` at `version`.
        pub fn delete(&mut self, doc: &str, version: Version) {
            self.push(doc, DocumentEvent::DocumentDeleted { version });
        }

        /// The coalesced batch of `events[from..to]` for `store`, with blobs.
        pub fn batch(&self, store: StoreKind, from: usize, to: usize) -> Batch {
            let slice = &self.events[from..to];
            let end = slice.last().map_or(LogCursor::START, |e| e.cursor);
            let mut batch = Batch::coalesce(store, end, slice);
            batch.blobs = self.blobs.clone();
            batch
        }

        /// The documents this log deleted, at its end, at a greater version than each of
        /// `puts`: what the log's deletion check answers.
        pub fn deleted_since(
            &self,
            puts: &[(&DocId, Version)],
        ) -> std::collections::HashSet<DocId> {
            puts.iter()
                .filter(|(doc, version)| {
                    let last = self.events.iter().rev().find(|e| &e.doc_id == *doc);
                    matches!(
                        last.map(|e| &e.event),
                        Some(DocumentEvent::DocumentDeleted { version: deleted }) if deleted > version
                    )
                })
                .map(|(doc, _)| (*doc).clone())
                .collect()
        }

        /// [`SuiteLog::batch`] delivered out of log order (a repair's write, or any other
        /// re-delivery): not marked as read from the checkpoint, so the sink reads what the
        /// store holds before writing a first version too.
        pub fn redelivery(&self, store: StoreKind, from: usize, to: usize) -> Batch {
            Batch {
                fresh_first_versions: false,
                ..self.batch(store, from, to)
            }
        }
    }

    async fn apply<S: Held>(sink: &S, batch: &Batch) {
        sink.apply(LOG_ID, Partition::ALL, batch)
            .await
            .unwrap_or_else(|e| panic!("{} applies the batch: {e}", S::NAME));
    }

    async fn held<S: Held>(sink: &S, doc: &str) -> Option<Holding> {
        sink.held(doc)
            .await
            .unwrap_or_else(|e| panic!("{} reads {doc}: {e}", S::NAME))
    }

    /// Runs every check against `sink` (prepared, empty or not: documents are prefixed with
    /// `prefix`); `dim` is the vector dimension the store expects.
    pub async fn run<S: Held>(sink: &S, prefix: &str, dim: usize) {
        reapplying_any_suffix_changes_nothing(sink, prefix, dim).await;
        an_older_version_never_wins(sink, prefix, dim).await;
        delete_then_suffix_replay_with_an_older_put_converges(sink, prefix, dim).await;
        an_older_put_after_a_deletion_never_revives(sink, prefix, dim).await;
        a_stale_owners_batch_after_the_new_owners_changes_nothing(sink, prefix, dim).await;
        own_checkpoint_only_moves_forward(sink).await;
    }

    /// Delivers `batch` as the runtime does: through the runner's deletion check (the
    /// documents `log` has deleted since at a greater version lose their puts) unless the
    /// sink keeps tombstones itself; then applies it.
    async fn deliver<S: Held>(
        sink: &S,
        log: &SuiteLog,
        mut batch: Batch,
    ) -> Result<(), crate::SinkError> {
        if !S::KEEPS_TOMBSTONES {
            let deleted = log.deleted_since(&batch.puts());
            batch.drop_puts_of(&deleted);
        }
        sink.apply(LOG_ID, Partition::ALL, &batch).await.map(|_| ())
    }

    /// An older put delivered alone after the document's deletion was applied: nothing.
    pub async fn an_older_put_after_a_deletion_never_revives<S: Held>(
        sink: &S,
        prefix: &str,
        dim: usize,
    ) {
        let doc = format!("{prefix}-tombstone");
        let mut log = SuiteLog::new();
        log.put(&doc, 1, 2, dim);
        log.put(&doc, 2, 3, dim);
        log.delete(&doc, 3);
        // The deletion first (a new owner, a rebuild's hand-over), then the older puts.
        deliver(sink, &log, log.batch(S::STORE, 6, 7))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", S::NAME));
        for (from, to) in [(0, 3), (3, 6), (0, 6)] {
            deliver(sink, &log, log.redelivery(S::STORE, from, to))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", S::NAME));
            assert_eq!(
                held(sink, &doc).await,
                None,
                "{}: an older put (events {from}..{to}) brought a deleted document back",
                S::NAME
            );
        }
    }

    /// The new owner (fencing token 2) wrote the newest state; the old owner (token 1) then
    /// delivers an older batch: the store still holds the new owner's state.
    pub async fn a_stale_owners_batch_after_the_new_owners_changes_nothing<S: Held>(
        sink: &S,
        prefix: &str,
        dim: usize,
    ) {
        let (kept, gone) = (
            format!("{prefix}-fence-kept"),
            format!("{prefix}-fence-gone"),
        );
        let mut log = SuiteLog::new();
        log.put(&kept, 1, 2, dim); // 0..3
        log.put(&gone, 1, 2, dim); // 3..6
        log.put(&kept, 2, 3, dim); // 6..9
        log.delete(&gone, 2); // 9
        log.put(&kept, 3, 1, dim); // 10..13
        let part = Partition { index: 3, count: 4 };
        let owned_by = |generation, mut batch: Batch| {
            batch.fence = Some(generation);
            batch
        };
        let newer = owned_by(2, log.batch(S::STORE, 0, 13));
        sink.apply(LOG_ID, part, &newer)
            .await
            .unwrap_or_else(|e| panic!("{}: the new owner's batch: {e}", S::NAME));
        let want = held(sink, &kept).await;
        assert_eq!(want.as_ref().map(|h| h.version), Some(3), "{}", S::NAME);
        assert_eq!(held(sink, &gone).await, None, "{}", S::NAME);
        for (from, to) in [(0, 9), (6, 9), (0, 6), (3, 6)] {
            let mut stale = owned_by(1, log.redelivery(S::STORE, from, to));
            if !S::KEEPS_TOMBSTONES {
                let deleted = log.deleted_since(&stale.puts());
                stale.drop_puts_of(&deleted);
            }
            match sink.apply(LOG_ID, part, &stale).await {
                Err(e) if e.class == crate::ErrorClass::Fenced => assert!(S::CHECKS_FENCE),
                Err(e) => panic!("{}: the stale batch failed otherwise: {e}", S::NAME),
                Ok(_) => assert!(
                    !S::CHECKS_FENCE,
                    "{}: checks fencing tokens, yet took a stale owner's batch",
                    S::NAME
                ),
            }
            assert_eq!(
                held(sink, &kept).await,
                want,
                "{}: a stale owner's batch (events {from}..{to}) changed the newest state",
                S::NAME
            );
            assert_eq!(
                held(sink, &gone).await,
                None,
                "{}: a stale owner's batch (events {from}..{to}) revived a deletion",
                S::NAME
            );
        }
    }

    /// Applies a log of several documents, then every suffix of it again: nothing changes.
    pub async fn reapplying_any_suffix_changes_nothing<S: Held>(
        sink: &S,
        prefix: &str,
        dim: usize,
    ) {
        let (a, b, c) = (
            format!("{prefix}-a"),
            format!("{prefix}-b"),
            format!("{prefix}-c"),
        );
        let mut log = SuiteLog::new();
        log.put(&a, 1, 3, dim);
        log.put(&b, 1, 2, dim);
        log.put(&a, 2, 1, dim);
        log.put(&c, 1, 2, dim);
        log.delete(&a, 3);
        log.put(&b, 2, 4, dim);
        log.delete(&c, 2);
        log.put(&a, 4, 2, dim);
        let n = log.events.len();
        apply(sink, &log.batch(S::STORE, 0, n)).await;
        let mut expected = Vec::new();
        for doc in [&a, &b, &c] {
            expected.push(held(sink, doc).await);
        }
        assert_eq!(
            expected[0].as_ref().map(|h| h.version),
            Some(4),
            "{}",
            S::NAME
        );
        assert_eq!(
            expected[1].as_ref().map(|h| h.version),
            Some(2),
            "{}",
            S::NAME
        );
        assert_eq!(expected[2], None, "{}", S::NAME);
        for from in (0..n).rev() {
            apply(sink, &log.batch(S::STORE, from, n)).await;
            for (doc, want) in [&a, &b, &c].into_iter().zip(&expected) {
                assert_eq!(
                    &held(sink, doc).await,
                    want,
                    "{}: replaying the suffix from event {from} changed {doc}",
                    S::NAME
                );
            }
        }
    }

    /// A newer version applied first is kept when an older put or removal is re-delivered
    /// after it (out of log order: the runner itself reads in log order from its checkpoint).
    pub async fn an_older_version_never_wins<S: Held>(sink: &S, prefix: &str, dim: usize) {
        let doc = format!("{prefix}-older");
        let mut log = SuiteLog::new();
        log.put(&doc, 1, 3, dim);
        log.delete(&doc, 1);
        log.put(&doc, 2, 2, dim);
        apply(sink, &log.batch(S::STORE, 4, 7)).await;
        let newer = held(sink, &doc).await;
        assert_eq!(newer.as_ref().map(|h| h.version), Some(2), "{}", S::NAME);
        apply(sink, &log.redelivery(S::STORE, 0, 3)).await;
        assert_eq!(
            held(sink, &doc).await,
            newer,
            "{}: an older put won",
            S::NAME
        );
        apply(sink, &log.redelivery(S::STORE, 3, 4)).await;
        assert_eq!(
            held(sink, &doc).await,
            newer,
            "{}: an older removal won",
            S::NAME
        );
    }

    /// A deleted document stays deleted when a suffix holding an older put is replayed.
    pub async fn delete_then_suffix_replay_with_an_older_put_converges<S: Held>(
        sink: &S,
        prefix: &str,
        dim: usize,
    ) {
        let doc = format!("{prefix}-deleted");
        let mut log = SuiteLog::new();
        log.put(&doc, 1, 2, dim);
        log.delete(&doc, 2);
        apply(sink, &log.batch(S::STORE, 0, 3)).await;
        apply(sink, &log.batch(S::STORE, 3, 4)).await;
        assert_eq!(held(sink, &doc).await, None, "{}", S::NAME);
        for from in 0..4 {
            apply(sink, &log.batch(S::STORE, from, 4)).await;
            assert_eq!(
                held(sink, &doc).await,
                None,
                "{}: replaying from event {from} resurrected the document",
                S::NAME
            );
        }
    }

    /// A sink that keeps its checkpoint never moves it backwards.
    pub async fn own_checkpoint_only_moves_forward<S: Held>(sink: &S) {
        if !S::KEEPS_OWN_CHECKPOINT {
            return;
        }
        let part = Partition { index: 7, count: 8 };
        let empty = |position| Batch {
            end: cursor(position),
            ..Batch::default()
        };
        for (position, want) in [(50, 50), (20, 50), (80, 80), (79, 80)] {
            sink.apply(LOG_ID, part, &empty(position))
                .await
                .unwrap_or_else(|e| panic!("{} moves its checkpoint: {e}", S::NAME));
            let stored = sink
                .checkpoint(part)
                .await
                .unwrap_or_else(|e| panic!("{} reads its checkpoint: {e}", S::NAME));
            assert_eq!(
                stored,
                Some((LOG_ID.to_owned(), cursor(want))),
                "{}: checkpoint after {position}",
                S::NAME
            );
        }
    }
}
