//! The Milvus projection: one row per chunk in the contract's collection (docs/stores.md),
//! keyed by `"{doc_id}#{chunk_index}"`.
//!
//! At least once, idempotent, version-guarded: the runner saves the checkpoint in the log
//! database after [`MilvusSink::apply`], so a batch may be applied again after a crash.
//! Each batch reads what Milvus holds for its documents (one Strong query), plans the writes
//! without I/O ([`plan`]), then upserts the new rows and deletes stale ones by primary key.
//! A document at version `v` ends with exactly its chunks' rows, all at `v`; a removed one
//! with none; an older change never overwrites a newer one.
//!
//! The adapter never retries or sleeps: the SDK's own retries are switched off so that the
//! runner's [`crate::RetryPolicy`] is the only one.

mod audit;
pub mod classify;
pub mod plan;
pub mod rebuild;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::milvus::v2::prelude::{
    ClientV2, ConnectConfig, ConsistencyLevel, CreateCollectionRequest, CreateIndexRequest,
    DeleteRequest, DescribeCollectionRequest, DropCollectionRequest, FieldData, FlushRequest,
    HasCollectionRequest, InsertRequest, ListIndexesRequest, LoadCollectionRequest, QueryRequest,
    QueryResults, RetryConfig, TelemetryConfig, UpsertRequest,
};
use aggregates::{LogCursor, StoreKind};

use crate::error::SinkError;
use crate::sink::{Applied, Batch, Partition, Sink};
use crate::tls::{self, HandshakeError, TlsMode, TlsTrust};

use self::classify::sink_error;

/// Longest wait for a flush to persist its segments (an erasure's deletions).
const FLUSH_WAIT_MS: i64 = 60_000;
use self::plan::{RowToWrite, StoredKey};
use self::schema::{
    FIELD_CHUNK_INDEX, FIELD_DOC_ID, FIELD_EMBEDDING, FIELD_PK, FIELD_TEXT, FIELD_VERSION,
};

/// The sink's name: checkpoint key and metric label.
pub const NAME: &str = "milvus";

/// Most rows per upsert request.
const UPSERT_MAX_ROWS: usize = 1000;
/// Most (approximate) bytes per upsert request, far below Milvus' gRPC receive limit.
const UPSERT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Most primary keys per delete request.
const DELETE_MAX_KEYS: usize = 1000;
/// Most documents per version-guard query. The answer (keys and versions of every chunk of
/// these documents) must stay below tonic's 4 MiB default response limit.
const QUERY_MAX_DOCS: usize = 256;
/// Deadline of one RPC; a hung call becomes a transient timeout the runner retries.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the server when connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest vector Milvus accepts.
const MAX_DIM: usize = 32_768;
/// `count(*)` output field of a Milvus query.
const COUNT_STAR: &str = "count(*)";

/// Most rows one query answers (Milvus' `limit` ceiling for queries).
pub const SCAN_MAX_ROWS: usize = 16_384;

/// A row's identity and version, as a key scan reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowKey {
    /// `"{doc_id}#{chunk_index}"`.
    pub pk: String,
    /// The row's `doc_id` field.
    pub doc_id: String,
    /// The row's `version` field.
    pub version: i64,
}

/// One chunk row as Milvus holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkRow {
    /// `"{doc_id}#{chunk_index}"`.
    pub pk: String,
    /// The document.
    pub doc_id: String,
    /// 0-based chunk index.
    pub chunk_index: u32,
    /// Document version of the row.
    pub version: u64,
    /// Chunk text.
    pub text: String,
    /// The embedding.
    pub embedding: Vec<f32>,
}

/// One TLS handshake (ALPN `h2`, as gRPC needs) with the server of `url`.
async fn tls_handshake(url: &str, trust: &TlsTrust) -> Result<(), HandshakeError> {
    let parsed = url::Url::parse(url).map_err(|e| HandshakeError::Connect(e.to_string()))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| HandshakeError::Connect(format!("{url} names no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = parsed.port_or_known_default().unwrap_or(443);
    trust
        .handshake(host, port, &[tls::ALPN_H2], CONNECT_TIMEOUT)
        .await
}

/// How to reach Milvus: where, as whom, in which database, trusting what.
#[derive(Clone, Default)]
pub struct MilvusAccess {
    /// `http://host:19530` (or `https://`).
    pub url: String,
    /// Sent as the `authorization` of every request: `user:password`, or an API key
    /// (Zilliz Cloud); `None` when the server does not authenticate.
    pub token: Option<String>,
    /// The database holding the collection; `None` is Milvus' `default`.
    pub database: Option<String>,
    /// What an `https://` server's certificate must chain to.
    pub trust: TlsTrust,
}

impl MilvusAccess {
    /// Milvus at `url`, without authentication, in the default database, trusting the
    /// system's roots.
    pub fn at(url: &str) -> MilvusAccess {
        MilvusAccess {
            url: url.trim_end_matches('/').to_owned(),
            ..MilvusAccess::default()
        }
    }

    /// The SDK's configuration for this access (no timeouts, retries or TLS roots yet).
    pub fn connect_config(&self) -> ConnectConfig {
        let mut config = ConnectConfig::new().uri(self.url.as_str());
        if let Some(token) = &self.token {
            config = config.token(token.as_str());
        }
        if let Some(database) = &self.database {
            config = config.database(database.as_str());
        }
        config
    }
}

impl std::fmt::Debug for MilvusAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusAccess")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// A client of Milvus, connected (a TLS handshake of our own first, to say why it fails when
/// it does).
async fn new_client(access: &MilvusAccess) -> Result<ClientV2, SinkError> {
    let (url, trust) = (access.url.as_str(), &access.trust);
    let mode = tls::http_tls(url).map_err(|e| SinkError::permanent(NAME, "connect", e))?;
    let mut config = access
        .connect_config()
        .connect_timeout(CONNECT_TIMEOUT)
        .rpc_timeout(RPC_TIMEOUT)
        .retry(RetryConfig::new().max_attempts(1))
        .telemetry(TelemetryConfig::new().enabled(false));
    // The SDK trusts either the system's roots or one CA file: given extra roots, it gets
    // a file of all of them, read once while the client is built.
    let mut roots_file = None;
    if mode == TlsMode::Verified {
        // The SDK retries a failed handshake until its connect timeout and then reports
        // only the timeout: one handshake of our own first says why, at once.
        if let Err(HandshakeError::Tls(why)) = tls_handshake(url, trust).await {
            return Err(SinkError::transient(
                NAME,
                "connect",
                format!("{} TLS: {why}", classify::STORE),
            ));
        }
        if trust.has_extra() {
            let file = trust.roots_pem_file().map_err(|e| {
                SinkError::transient(NAME, "connect", format!("write the TLS roots: {e}"))
            })?;
            config = config.ca_certificate(file.path().to_string_lossy().into_owned());
            roots_file = Some(file);
        }
    }
    let connected = ClientV2::new(&config).await;
    drop(roots_file);
    let client = connected.map_err(|e| sink_error("connect", &e))?;
    Ok(client)
}

/// Projects `VectorsIndexed` and removals into a Milvus collection.
#[derive(Clone)]
pub struct MilvusSink {
    conn: Arc<Connection>,
    collection: String,
    dim: usize,
}

/// The client, made at the first request that needs it (and again after a failed attempt):
/// a service starts and accepts commands while Milvus is unreachable, and its runners show
/// the store `retrying` with the connection's error until it answers.
///
/// The client's channel runs background tasks on the runtime that makes it, and fails every
/// request for good once that runtime ends; so it is made on the runtime that made the sink
/// (`home`, the service's main one), whichever runtime asks first (an HTTP worker's, say).
struct Connection {
    access: MilvusAccess,
    client: tokio::sync::OnceCell<ClientV2>,
    home: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for MilvusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusSink")
            .field("collection", &self.collection)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl MilvusSink {
    /// Connects to Milvus as `access` says, for `collection` holding vectors of `dim`
    /// floats. Telemetry heartbeats and the SDK's retries are off; an `https://` URL
    /// connects over TLS (ALPN `h2`) and the server's certificate must chain to a root of
    /// `access.trust` and name the URL's host.
    ///
    /// # Errors
    /// Permanent when `dim` is not a valid Milvus dimension or the URL is malformed;
    /// transient when the server does not answer within the connect timeout, or a TLS
    /// handshake fails (the message says why: "Milvus TLS: certificate not trusted ...").
    pub async fn connect(
        access: &MilvusAccess,
        collection: &str,
        dim: usize,
    ) -> Result<MilvusSink, SinkError> {
        let sink = Self::lazy(access, collection, dim)?;
        sink.client().await?;
        Ok(sink)
    }

    /// A sink whose client connects at its first request: only what can never work (the
    /// dimension, the URL's form) is refused here. Called on a runtime, the client is made
    /// on that runtime, which must outlive the sink's users.
    ///
    /// # Errors
    /// Permanent when `dim` is not a valid Milvus dimension or the URL is malformed.
    pub fn lazy(
        access: &MilvusAccess,
        collection: &str,
        dim: usize,
    ) -> Result<MilvusSink, SinkError> {
        if dim == 0 || dim > MAX_DIM {
            return Err(SinkError::permanent(
                NAME,
                "connect",
                format!("vector dimension {dim} is outside 1..={MAX_DIM}"),
            ));
        }
        tls::http_tls(&access.url).map_err(|e| SinkError::permanent(NAME, "connect", e))?;
        Ok(MilvusSink {
            conn: Arc::new(Connection {
                access: access.clone(),
                client: tokio::sync::OnceCell::new(),
                home: tokio::runtime::Handle::try_current().ok(),
            }),
            collection: collection.to_owned(),
            dim,
        })
    }

    /// The client, connected at the first call (a failed attempt is tried again next time).
    async fn client(&self) -> Result<&ClientV2, SinkError> {
        self.conn
            .client
            .get_or_try_init(|| async {
                let Some(home) = &self.conn.home else {
                    return new_client(&self.conn.access).await;
                };
                let access = self.conn.access.clone();
                home.spawn(async move { new_client(&access).await })
                    .await
                    .map_err(|e| SinkError::transient(NAME, "connect", e.to_string()))?
            })
            .await
    }

    /// The collection this sink writes.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    fn dim_u32(&self) -> u32 {
        u32::try_from(self.dim).expect("connect checked dim <= MAX_DIM")
    }

    /// Whether the name resolves, to a collection or through an alias.
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn exists(&self) -> Result<bool, SinkError> {
        let request = HasCollectionRequest::builder()
            .collection_name(&self.collection)
            .build()
            .map_err(|e| sink_error("has collection", &e))?;
        let response = self
            .client()
            .await?
            .has_collection(request)
            .await
            .map_err(|e| sink_error("has collection", &e))?;
        Ok(response.exists())
    }

    async fn create_or_check_collection(&self) -> Result<(), SinkError> {
        if self.exists().await? {
            let request = DescribeCollectionRequest::builder()
                .collection_name(&self.collection)
                .build()
                .map_err(|e| sink_error("describe collection", &e))?;
            let described = self
                .client()
                .await?
                .describe_collection(request)
                .await
                .map_err(|e| sink_error("describe collection", &e))?;
            return schema::check_schema(
                &self.collection,
                described.description().get_schema(),
                self.dim_u32(),
            );
        }
        let request = CreateCollectionRequest::builder()
            .collection_name(&self.collection)
            .schema(schema::collection_schema(self.dim_u32()))
            .build()
            .map_err(|e| sink_error("create collection", &e))?;
        self.client()
            .await?
            .create_collection(request)
            .await
            .map_err(|e| sink_error("create collection", &e))
    }

    async fn ensure_index(&self) -> Result<(), SinkError> {
        let request = ListIndexesRequest::builder()
            .collection_name(&self.collection)
            .field_name(FIELD_EMBEDDING)
            .build()
            .map_err(|e| sink_error("list indexes", &e))?;
        match self.client().await?.list_indexes(request).await {
            Ok(listed) if !listed.indexes().is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) if classify::is_index_not_found(&e) => {}
            Err(e) => return Err(sink_error("list indexes", &e)),
        }
        // sync(false): the index builds in the background; Milvus 2.3 loads a collection as
        // soon as an index is declared, and milvus-lite lacks the RPC the sync wait uses.
        let request = CreateIndexRequest::builder()
            .collection_name(&self.collection)
            .index_params(vec![schema::embedding_index()])
            .sync(false)
            .build()
            .map_err(|e| sink_error("create index", &e))?;
        self.client()
            .await?
            .create_index(request)
            .await
            .map_err(|e| sink_error("create index", &e))
    }

    /// Every key and version Milvus holds for `doc_ids` (Strong consistency).
    async fn stored_keys(
        &self,
        doc_ids: &[&str],
    ) -> Result<HashMap<String, Vec<StoredKey>>, SinkError> {
        let mut stored: HashMap<String, Vec<StoredKey>> = HashMap::new();
        for group in doc_ids.chunks(QUERY_MAX_DOCS) {
            let results = self
                .query(
                    "read stored versions",
                    schema::doc_id_in(group.iter().copied())?,
                    &[FIELD_PK, FIELD_VERSION],
                )
                .await?;
            let pks = varchar_column(&results, FIELD_PK)?;
            let versions = int64_column(&results, FIELD_VERSION)?;
            for (pk, version) in pks.iter().zip(versions) {
                stored
                    .entry(schema::doc_id_of_pk(pk).to_owned())
                    .or_default()
                    .push(StoredKey {
                        pk: pk.clone(),
                        version: *version,
                    });
            }
        }
        Ok(stored)
    }

    async fn query(
        &self,
        operation: &'static str,
        filter: String,
        output_fields: &[&str],
    ) -> Result<QueryResults, SinkError> {
        let request = QueryRequest::builder()
            .collection_name(&self.collection)
            .filter(filter)
            .output_fields(output_fields.iter().copied())
            .consistency_level(ConsistencyLevel::Strong)
            .build()
            .map_err(|e| sink_error(operation, &e))?;
        let response = self
            .client()
            .await?
            .query(request)
            .await
            .map_err(|e| sink_error(operation, &e))?;
        Ok(response.results().clone())
    }

    async fn upsert(&self, rows: &[RowToWrite<'_>]) -> Result<(), SinkError> {
        const OPERATION: &str = "upsert rows";
        let insert = InsertRequest::builder()
            .collection_name(&self.collection)
            .columns(columns(rows))
            .build()
            .map_err(|e| sink_error(OPERATION, &e))?;
        let request = UpsertRequest::builder()
            .insert(insert)
            .build()
            .map_err(|e| sink_error(OPERATION, &e))?;
        self.client()
            .await?
            .upsert(request)
            .await
            .map_err(|e| sink_error(OPERATION, &e))?;
        Ok(())
    }

    async fn delete(&self, operation: &'static str, filter: String) -> Result<u64, SinkError> {
        let request = DeleteRequest::builder()
            .collection_name(&self.collection)
            .filter(filter)
            .build()
            .map_err(|e| sink_error(operation, &e))?;
        let response = self
            .client()
            .await?
            .delete(request)
            .await
            .map_err(|e| sink_error(operation, &e))?;
        Ok(u64::try_from(response.delete_count()).unwrap_or_default())
    }

    /// Seals and persists the collection's pending inserts and deletions, waiting until
    /// they are flushed.
    async fn flush(&self, operation: &'static str) -> Result<(), SinkError> {
        let request = FlushRequest::builder()
            .collection_names([self.collection.as_str()])
            .wait_flushed_ms(FLUSH_WAIT_MS)
            .build()
            .map_err(|e| sink_error(operation, &e))?;
        self.client()
            .await?
            .flush(request)
            .await
            .map_err(|e| sink_error(operation, &e))?;
        Ok(())
    }

    /// Every row of `doc_id`, ordered by chunk index (Strong consistency).
    ///
    /// # Errors
    /// The classified Milvus failure; permanent when `doc_id` cannot be quoted or a stored
    /// row is out of the contract's ranges.
    pub async fn rows_of(&self, doc_id: &str) -> Result<Vec<ChunkRow>, SinkError> {
        self.rows_of_docs(&[doc_id]).await
    }

    /// The key, document and version of every row whose `doc_id` lies in `[from, to)`
    /// (`None` = unbounded), Strong consistency: a slice of a full scan, without texts or
    /// vectors. Milvus answers at most [`SCAN_MAX_ROWS`] rows per query, so a slice that
    /// holds more is refused rather than silently cut.
    ///
    /// # Errors
    /// The classified Milvus failure; permanent when a bound cannot be quoted or the slice
    /// holds more than [`SCAN_MAX_ROWS`] rows (scan narrower slices).
    pub async fn keys_between(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<RowKey>, SinkError> {
        const OPERATION: &str = "scan keys";
        let mut conditions = Vec::new();
        if let Some(from) = from {
            conditions.push(format!(
                "{FIELD_DOC_ID} >= {}",
                schema::string_literal(from)?
            ));
        }
        if let Some(to) = to {
            conditions.push(format!("{FIELD_DOC_ID} < {}", schema::string_literal(to)?));
        }
        if conditions.is_empty() {
            // Milvus refuses a query with neither filter nor limit; every pk is non-empty.
            conditions.push(format!("{FIELD_PK} != \"\""));
        }
        let request = QueryRequest::builder()
            .collection_name(&self.collection)
            .filter(conditions.join(" and "))
            .output_fields([FIELD_PK, FIELD_DOC_ID, FIELD_VERSION])
            .limit(SCAN_MAX_ROWS as i64)
            .consistency_level(ConsistencyLevel::Strong)
            .build()
            .map_err(|e| sink_error(OPERATION, &e))?;
        let response = self
            .client()
            .await?
            .query(request)
            .await
            .map_err(|e| sink_error(OPERATION, &e))?;
        let results = response.results();
        let pks = varchar_column(results, FIELD_PK)?;
        let doc_ids = varchar_column(results, FIELD_DOC_ID)?;
        let versions = int64_column(results, FIELD_VERSION)?;
        if pks.len() >= SCAN_MAX_ROWS {
            return Err(SinkError::permanent(
                NAME,
                OPERATION,
                format!(
                    "doc_id range [{from:?}, {to:?}) holds {SCAN_MAX_ROWS} rows or more: scan narrower ranges"
                ),
            ));
        }
        if doc_ids.len() != pks.len() || versions.len() != pks.len() {
            return Err(malformed(OPERATION, "columns of different lengths"));
        }
        Ok(pks
            .iter()
            .zip(doc_ids)
            .zip(versions)
            .map(|((pk, doc_id), version)| RowKey {
                pk: pk.clone(),
                doc_id: doc_id.clone(),
                version: *version,
            })
            .collect())
    }

    /// Every row of `doc_ids`, ordered by document then chunk index (Strong consistency).
    /// The caller keeps the answer below gRPC's 4 MiB response limit by asking for few
    /// enough documents.
    ///
    /// # Errors
    /// As [`MilvusSink::rows_of`].
    pub async fn rows_of_docs(&self, doc_ids: &[&str]) -> Result<Vec<ChunkRow>, SinkError> {
        const OPERATION: &str = "read rows";
        if doc_ids.is_empty() {
            return Ok(Vec::new());
        }
        let results = self
            .query(
                OPERATION,
                schema::doc_id_in(doc_ids.iter().copied())?,
                &[
                    FIELD_PK,
                    FIELD_DOC_ID,
                    FIELD_CHUNK_INDEX,
                    FIELD_VERSION,
                    FIELD_TEXT,
                    FIELD_EMBEDDING,
                ],
            )
            .await?;
        let pks = varchar_column(&results, FIELD_PK)?;
        let doc_ids = varchar_column(&results, FIELD_DOC_ID)?;
        let indexes = int64_column(&results, FIELD_CHUNK_INDEX)?;
        let versions = int64_column(&results, FIELD_VERSION)?;
        let texts = varchar_column(&results, FIELD_TEXT)?;
        let embeddings = float_vector_column(&results, FIELD_EMBEDDING)?;
        let out_of_range = |what: &str, value: i64, pk: &str| {
            SinkError::permanent(
                NAME,
                OPERATION,
                format!("row {pk} has {what} {value}, outside the contract's range"),
            )
            .for_doc(schema::doc_id_of_pk(pk))
        };
        let mut rows = Vec::with_capacity(pks.len());
        for (i, pk) in pks.iter().enumerate() {
            let (Some(row_doc), Some(index), Some(version), Some(text), Some(embedding)) = (
                doc_ids.get(i),
                indexes.get(i),
                versions.get(i),
                texts.get(i),
                embeddings.get(i),
            ) else {
                return Err(malformed(OPERATION, "columns of different lengths"));
            };
            rows.push(ChunkRow {
                pk: pk.clone(),
                doc_id: row_doc.clone(),
                chunk_index: u32::try_from(*index)
                    .map_err(|_| out_of_range("chunk_index", *index, pk))?,
                version: u64::try_from(*version)
                    .map_err(|_| out_of_range("version", *version, pk))?,
                text: text.clone(),
                embedding: embedding.clone(),
            });
        }
        rows.sort_by(|a, b| (&a.doc_id, a.chunk_index).cmp(&(&b.doc_id, b.chunk_index)));
        Ok(rows)
    }

    /// Deletes every row whose `doc_id` field is `doc_id` (verification's repair of stray
    /// rows that no valid document owns; documents' rows go through [`Sink::apply`]).
    ///
    /// # Errors
    /// The classified Milvus failure; permanent when `doc_id` cannot be quoted.
    pub async fn delete_doc_id_field(&self, doc_id: &str) -> Result<(), SinkError> {
        self.delete("delete stray rows", schema::doc_id_in([doc_id])?)
            .await
            .map(|_| ())
    }

    /// Number of rows in the collection (Strong consistency).
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn count_rows(&self) -> Result<u64, SinkError> {
        let results = self
            .query("count rows", String::new(), &[COUNT_STAR])
            .await?;
        Ok(results.get_row_count())
    }

    /// Drops the collection if it exists (a rebuild or a test's cleanup starts here).
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn drop_collection(&self) -> Result<(), SinkError> {
        if !self.exists().await? {
            return Ok(());
        }
        let request = DropCollectionRequest::builder()
            .collection_name(&self.collection)
            .build()
            .map_err(|e| sink_error("drop collection", &e))?;
        self.client()
            .await?
            .drop_collection(request)
            .await
            .map_err(|e| sink_error("drop collection", &e))
    }
}

/// The collection's columns for `rows`.
fn columns(rows: &[RowToWrite<'_>]) -> Vec<FieldData> {
    vec![
        FieldData::varchar(FIELD_PK, rows.iter().map(|r| r.pk.clone()).collect()),
        FieldData::varchar(
            FIELD_DOC_ID,
            rows.iter().map(|r| r.doc_id.to_owned()).collect(),
        ),
        FieldData::int64(
            FIELD_CHUNK_INDEX,
            rows.iter().map(|r| i64::from(r.chunk.index)).collect(),
        ),
        FieldData::int64(FIELD_VERSION, rows.iter().map(|r| r.version).collect()),
        FieldData::varchar(
            FIELD_TEXT,
            rows.iter().map(|r| r.chunk.text.clone()).collect(),
        ),
        FieldData::FloatVector {
            name: FIELD_EMBEDDING.to_owned(),
            values: rows.iter().map(|r| r.chunk.vector.clone()).collect(),
        },
    ]
}

fn malformed(operation: &'static str, what: &str) -> SinkError {
    SinkError::transient(NAME, operation, format!("malformed query result: {what}"))
}

fn varchar_column<'r>(results: &'r QueryResults, name: &str) -> Result<&'r [String], SinkError> {
    match results.get_output_field(name) {
        Some(FieldData::VarChar { values, .. }) => Ok(values),
        None if results.is_empty() => Ok(&[]),
        _ => Err(malformed(
            "read query result",
            &format!("{name} is not a VARCHAR column"),
        )),
    }
}

fn int64_column<'r>(results: &'r QueryResults, name: &str) -> Result<&'r [i64], SinkError> {
    match results.get_output_field(name) {
        Some(FieldData::Int64 { values, .. }) => Ok(values),
        None if results.is_empty() => Ok(&[]),
        _ => Err(malformed(
            "read query result",
            &format!("{name} is not an INT64 column"),
        )),
    }
}

fn float_vector_column<'r>(
    results: &'r QueryResults,
    name: &str,
) -> Result<&'r [Vec<f32>], SinkError> {
    match results.get_output_field(name) {
        Some(FieldData::FloatVector { values, .. }) => Ok(values),
        None if results.is_empty() => Ok(&[]),
        _ => Err(malformed(
            "read query result",
            &format!("{name} is not a FLOAT_VECTOR column"),
        )),
    }
}

/// Splits `rows` into upsert requests of at most [`UPSERT_MAX_ROWS`] rows and about
/// [`UPSERT_MAX_BYTES`] bytes (a single larger row still goes alone).
fn upsert_requests<'p, 'a>(rows: &'p [RowToWrite<'a>]) -> Vec<&'p [RowToWrite<'a>]> {
    let mut requests = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let size = row.approx_bytes();
        if i > start && (i - start >= UPSERT_MAX_ROWS || bytes + size > UPSERT_MAX_BYTES) {
            requests.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < rows.len() {
        requests.push(&rows[start..]);
    }
    requests
}

impl Sink for MilvusSink {
    const NAME: &'static str = NAME;
    const STORE: StoreKind = StoreKind::Milvus;
    const KEEPS_OWN_CHECKPOINT: bool = false;

    /// Creates the collection with the contract's schema when missing (or checks the
    /// existing one), declares the HNSW index before loading (Milvus refuses to load an
    /// unindexed collection), then loads it.
    async fn prepare(&self) -> Result<(), SinkError> {
        self.create_or_check_collection().await?;
        self.ensure_index().await?;
        let request = LoadCollectionRequest::builder()
            .collection_name(&self.collection)
            .build()
            .map_err(|e| sink_error("load collection", &e))?;
        self.client()
            .await?
            .load_collection(request)
            .await
            .map_err(|e| sink_error("load collection", &e))
    }

    async fn checkpoint(&self, _part: Partition) -> Result<Option<(String, LogCursor)>, SinkError> {
        // At least once: the runner keeps this sink's checkpoint in the log database.
        Ok(None)
    }

    async fn apply(
        &self,
        _log_id: &str,
        _part: Partition,
        batch: &Batch,
    ) -> Result<Applied, SinkError> {
        if batch.changes.is_empty() {
            return Ok(Applied::default());
        }
        // First writes need no Strong read (which waits for Milvus' time tick): nothing of
        // theirs can be stored but their own rows.
        let doc_ids: Vec<&str> = batch
            .changes
            .iter()
            .filter(|c| !batch.is_first_write(c))
            .map(|c| c.doc_id.as_str())
            .collect();
        let started = std::time::Instant::now();
        let stored = self.stored_keys(&doc_ids).await?;
        let read = started.elapsed();
        let plan = plan::plan(batch, &stored, self.dim)?;
        for rows in upsert_requests(&plan.upserts) {
            self.upsert(rows).await?;
        }
        let upserted = started.elapsed();
        for keys in plan.deletes.chunks(DELETE_MAX_KEYS) {
            self.delete(
                "delete stale rows",
                schema::pk_in(keys.iter().map(String::as_str))?,
            )
            .await?;
        }
        if batch
            .changes
            .iter()
            .any(|c| matches!(c.change, crate::sink::Change::Erase))
        {
            // An erasure: the deletions are flushed, so that Milvus' compaction removes the
            // rows physically, before the change counts as applied. Every batch holding an
            // erasure flushes, so a crash between the deletion and the flush is put right
            // when the batch is applied again.
            self.flush("flush an erasure").await?;
        }
        tracing::debug!(
            documents_read = doc_ids.len(),
            rows = plan.upserts.len(),
            deletes = plan.deletes.len(),
            read_ms = read.as_secs_f64() * 1e3,
            upsert_ms = (upserted - read).as_secs_f64() * 1e3,
            delete_ms = (started.elapsed() - upserted).as_secs_f64() * 1e3,
            "milvus batch written"
        );
        Ok(Applied {
            num_changes: plan.num_changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use aggregates::Chunk;

    use super::*;

    fn rows(chunk: &Chunk, n: usize) -> Vec<RowToWrite<'_>> {
        (0..n)
            .map(|i| RowToWrite {
                pk: format!("a#{i}"),
                doc_id: "a",
                version: 1,
                chunk,
            })
            .collect()
    }

    #[test]
    fn upserts_are_cut_by_rows_and_by_bytes() {
        let small = Chunk {
            index: 0,
            text: "x".into(),
            vector: vec![0.0; 4],
        };
        let sizes: Vec<usize> = upsert_requests(&rows(&small, 2500))
            .iter()
            .map(|r| r.len())
            .collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert!(upsert_requests(&rows(&small, 0)).is_empty());

        let big = Chunk {
            index: 0,
            text: "x".repeat(60_000),
            vector: vec![0.0; 4],
        };
        let big_rows = rows(&big, 600);
        let requests = upsert_requests(&big_rows);
        assert!(requests.len() > 1);
        assert_eq!(requests.iter().map(|r| r.len()).sum::<usize>(), 600);
        for request in requests {
            let bytes: usize = request.iter().map(RowToWrite::approx_bytes).sum();
            assert!(bytes <= UPSERT_MAX_BYTES, "{bytes}");
        }
    }
}
