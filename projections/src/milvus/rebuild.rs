//! Blue/green rebuild of the vectors: a new collection (a "generation") is filled from the
//! log while the contract's name keeps serving, then the name — an alias from then on —
//! moves to it in one `AlterAlias`.
//!
//! Readers and the projector always use the contract's name (`doc_chunks`). Migration from
//! a plain collection of that name: the first rebuild drops the plain collection and
//! creates the alias right after, so for the few milliseconds between the two calls the
//! name does not resolve (a reader retries); every later switch is one atomic alias move.
//!
//! Invariants: only the rebuild writes a generation before it goes live, so what it wrote
//! is known without asking Milvus ([`GenerationWriter`] keeps each document's keys); a
//! document written twice (its versions fell into different pages) has its earlier rows
//! replaced, never duplicated.

use std::collections::HashMap;

use aggregates::LogCursor;

use ::milvus::v2::prelude::{
    AlterAliasRequest, CreateAliasRequest, DescribeAliasRequest, InsertRequest,
    ListCollectionsRequest,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::classify::{is_alias_name_conflict, sink_error};
use super::plan::{self, RowToWrite, StoredKey};
use super::{columns, schema, upsert_requests, MilvusSink, DELETE_MAX_KEYS};
use crate::error::SinkError;
use crate::rebuild::{Rebuild, RebuildPage, RebuildStyle, RebuildTarget};
use crate::retry::{RetryOutcome, RetryPolicy};
use crate::sink::{Batch, Sink};
use tokio_util::sync::CancellationToken;

/// Separates the contract's name from a generation's number: `doc_chunks__g1700000000000`.
pub const GENERATION_SEPARATOR: &str = "__g";

/// Write requests of one page in flight at the same time.
pub const CONCURRENT_REQUESTS: usize = 4;

/// Creating the alias where a collection of its name was just dropped (see
/// [`MilvusSink::switch_alias`]): up to 12 attempts, at most 2 s apart (under 18 s in all).
const ALIAS_RETRY: RetryPolicy = RetryPolicy {
    base: std::time::Duration::from_millis(100),
    max: std::time::Duration::from_secs(2),
    max_attempts: Some(12),
};

/// The operation a create-alias failure is named by when the alias' name is taken (the
/// one failure [`ALIAS_RETRY`] retries).
const NAME_TAKEN: &str = "create alias (name taken)";

/// Failpoint (the `failpoints` feature) between dropping the plain collection of the name and
/// creating the alias: a test holds it (`pause`) to make the collection anew there, as a
/// projector starting at that moment would.
pub const FAILPOINT_AFTER_PLAIN_DROP: &str = "milvus-after-plain-collection-drop";

/// The generation collection named after `alias` and `number`.
pub fn generation_name(alias: &str, number: u64) -> String {
    format!("{alias}{GENERATION_SEPARATOR}{number}")
}

impl MilvusSink {
    /// The same client, writing to `collection`.
    pub fn on_collection(&self, collection: &str) -> MilvusSink {
        MilvusSink {
            conn: self.conn.clone(),
            collection: collection.to_owned(),
            dim: self.dim,
        }
    }

    /// The collection behind this sink's name: itself when it is a plain collection, the
    /// aliased one when it is an alias, `None` when the name does not resolve.
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn resolve(&self) -> Result<Option<String>, SinkError> {
        if !self.exists().await? {
            return Ok(None);
        }
        // Describing a collection through an alias answers with the alias' name on Milvus
        // 2.3; DescribeAlias names the collection behind it.
        let request = DescribeAliasRequest::builder()
            .alias(&self.collection)
            .build()
            .map_err(|e| sink_error("describe alias", &e))?;
        match self.client().await?.describe_alias(request).await {
            Ok(described) if !described.collection_name().is_empty() => {
                Ok(Some(described.collection_name().to_owned()))
            }
            // Not an alias: the plain collection of that name.
            Ok(_) | Err(_) => Ok(Some(self.collection.clone())),
        }
    }

    /// Every collection of the database.
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn list_collections(&self) -> Result<Vec<String>, SinkError> {
        let request = ListCollectionsRequest::builder()
            .build()
            .map_err(|e| sink_error("list collections", &e))?;
        let listed = self
            .client()
            .await?
            .list_collections(request)
            .await
            .map_err(|e| sink_error("list collections", &e))?;
        Ok(listed.collection_names().to_vec())
    }

    /// Drops every generation of this sink's name that the name does not point to (what an
    /// interrupted rebuild left).
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn drop_stale_generations(&self) -> Result<Vec<String>, SinkError> {
        let live = self.resolve().await?;
        let prefix = format!("{}{GENERATION_SEPARATOR}", self.collection);
        let mut dropped = Vec::new();
        for name in self.list_collections().await? {
            if name.starts_with(&prefix) && live.as_deref() != Some(name.as_str()) {
                self.on_collection(&name).drop_collection().await?;
                dropped.push(name);
            }
        }
        Ok(dropped)
    }

    /// Points this sink's name at `target` and returns the collection it pointed to before
    /// (for the caller to drop), `None` when there was none or it was the plain collection
    /// of the name (dropped here: an alias cannot share a collection's name).
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn switch_alias(&self, target: &str) -> Result<Option<String>, SinkError> {
        let alias = self.collection.clone();
        match self.resolve().await? {
            Some(current) if current == target => Ok(None),
            Some(current) if current != alias => {
                let request = AlterAliasRequest::builder()
                    .collection_name(target)
                    .alias(&alias)
                    .build()
                    .map_err(|e| sink_error("alter alias", &e))?;
                self.client()
                    .await?
                    .alter_alias(request)
                    .await
                    .map_err(|e| sink_error("alter alias", &e))?;
                Ok(Some(current))
            }
            _ => {
                // The name is the plain collection of the contract's name, or nothing:
                // migrate it to an alias. The name can still be taken when the alias is
                // created: Milvus releases a dropped collection's name a moment after the
                // drop answers, and a projector starting meanwhile makes the plain
                // collection anew (its runner is held paused by the rebuild, so it holds
                // nothing the rebuild does not write). Seen once in a run of the scale-out
                // test; each attempt drops what holds the name again.
                let attempt = || async {
                    if self.resolve().await?.as_deref() == Some(alias.as_str()) {
                        self.drop_collection().await?;
                        fail::fail_point!(FAILPOINT_AFTER_PLAIN_DROP);
                    }
                    let request = CreateAliasRequest::builder()
                        .collection_name(target)
                        .alias(&alias)
                        .build()
                        .map_err(|e| sink_error("create alias", &e))?;
                    self.client()
                        .await?
                        .create_alias(request)
                        .await
                        .map_err(|e| {
                            let mut error = sink_error("create alias", &e);
                            if is_alias_name_conflict(&e) {
                                error.operation = NAME_TAKEN;
                            }
                            error
                        })
                };
                ALIAS_RETRY
                    .run(
                        &CancellationToken::new(),
                        |e: &SinkError| e.operation == NAME_TAKEN,
                        |attempt, _| tracing::info!(attempt, alias = %alias, "the alias' name is still taken, retrying"),
                        attempt,
                    )
                    .await
                    .map_err(|outcome| match outcome {
                        RetryOutcome::Failed(e) => e,
                        RetryOutcome::Cancelled => unreachable!("never cancelled"),
                    })?;
                Ok(None)
            }
        }
    }

    /// Inserts `rows` (which must not be in the collection yet) in requests of the sink's
    /// size, `concurrency` at a time.
    ///
    /// # Errors
    /// The first classified failure.
    pub async fn insert_rows(
        &self,
        rows: &[RowToWrite<'_>],
        concurrency: usize,
    ) -> Result<(), SinkError> {
        const OPERATION: &str = "insert rows";
        // Collected before entering the stream (rust-lang/rust#89976).
        let sends: Vec<_> = upsert_requests(rows)
            .into_iter()
            .map(|part| async move {
                let request = InsertRequest::builder()
                    .collection_name(&self.collection)
                    .columns(columns(part))
                    .build()
                    .map_err(|e| sink_error(OPERATION, &e))?;
                self.client()
                    .await?
                    .insert(request)
                    .await
                    .map_err(|e| sink_error(OPERATION, &e))
                    .map(|_| ())
            })
            .collect();
        stream::iter(sends)
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

/// Fills a new generation page by page, remembering what it wrote.
pub struct GenerationWriter {
    sink: MilvusSink,
    /// The live sink, whose name the generation takes over at the switch.
    live: MilvusSink,
    /// The collection the name pointed to before the switch, to drop once retired.
    retired: Option<String>,
    /// Per document: the version and chunk indexes written.
    written: HashMap<String, (i64, Vec<u32>)>,
}

impl GenerationWriter {
    /// Creates the generation `collection` (schema, index, loaded) next to `live`.
    ///
    /// # Errors
    /// The classified Milvus failure.
    pub async fn create(live: &MilvusSink, collection: &str) -> Result<Self, SinkError> {
        let sink = live.on_collection(collection);
        sink.drop_collection().await?;
        sink.prepare().await?;
        Ok(GenerationWriter {
            sink,
            live: live.clone(),
            retired: None,
            written: HashMap::new(),
        })
    }

    /// The generation's collection.
    pub fn collection(&self) -> &str {
        self.sink.collection()
    }

    /// Writes a coalesced page: new documents are inserted, documents written before get
    /// their stale rows deleted and their rows upserted, removals delete what was written.
    /// Returns the number of changes written.
    ///
    /// # Errors
    /// The classified Milvus failure; permanent for data Milvus can never hold.
    pub async fn write_changes(&mut self, batch: &Batch) -> Result<usize, SinkError> {
        let mut stored: HashMap<String, Vec<StoredKey>> = HashMap::new();
        for c in &batch.changes {
            if let Some((version, indexes)) = self.written.get(c.doc_id.as_str()) {
                stored.insert(
                    c.doc_id.to_string(),
                    indexes
                        .iter()
                        .map(|i| StoredKey {
                            pk: schema::pk(c.doc_id.as_str(), *i),
                            version: *version,
                        })
                        .collect(),
                );
            }
        }
        let plan = plan::plan(batch, &stored, self.sink.dim)?;
        for keys in plan.deletes.chunks(DELETE_MAX_KEYS) {
            self.sink
                .delete(
                    "delete replaced rows",
                    schema::pk_in(keys.iter().map(String::as_str))?,
                )
                .await?;
        }
        let (again, fresh): (Vec<RowToWrite<'_>>, Vec<RowToWrite<'_>>) = plan
            .upserts
            .into_iter()
            .partition(|r| stored.contains_key(r.doc_id));
        for part in upsert_requests(&again) {
            self.sink.upsert(part).await?;
        }
        self.sink.insert_rows(&fresh, CONCURRENT_REQUESTS).await?;
        for c in &batch.changes {
            let doc = c.doc_id.as_str();
            match &c.change {
                crate::sink::Change::Remove
                | crate::sink::Change::Erase
                | crate::sink::Change::Purge => {
                    self.written.remove(doc);
                }
                crate::sink::Change::Upsert(aggregates::DocumentEvent::VectorsIndexed {
                    version,
                    chunks,
                }) => {
                    let keep = self
                        .written
                        .get(doc)
                        .is_some_and(|(v, _)| *v > *version as i64);
                    if !keep {
                        self.written.insert(
                            doc.to_owned(),
                            (*version as i64, chunks.iter().map(|c| c.index).collect()),
                        );
                    }
                }
                crate::sink::Change::Upsert(_) => {}
            }
        }
        Ok(plan.num_changes)
    }
}

/// The vectors are rebuilt blue/green into a new generation, which the name then moves to.
impl Rebuild for MilvusSink {
    type Target = GenerationWriter;
    const STYLE: RebuildStyle = RebuildStyle::BlueGreen;

    async fn begin_rebuild(&self) -> Result<GenerationWriter, SinkError> {
        // A collection dropped behind docledger's back is recreated (empty) so that its
        // runners stop retrying and can be paused.
        self.prepare().await?;
        let dropped = self.drop_stale_generations().await?;
        if !dropped.is_empty() {
            tracing::info!(collections = ?dropped, "dropped generations of an interrupted rebuild");
        }
        let number = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        GenerationWriter::create(self, &generation_name(self.collection(), number)).await
    }
}

impl RebuildTarget for GenerationWriter {
    async fn write(&mut self, page: RebuildPage) -> Result<(), SinkError> {
        match page {
            RebuildPage::Changes { batch, .. } => self.write_changes(&batch).await.map(|_| ()),
            RebuildPage::States(_) => Err(SinkError::permanent(
                super::NAME,
                "rebuild",
                "catalogue states handed to a vector rebuild".to_owned(),
            )),
        }
    }

    async fn switch(
        &mut self,
        _log_id: &str,
        _partitions: u32,
        _end: LogCursor,
    ) -> Result<(), SinkError> {
        self.retired = self.live.switch_alias(self.sink.collection()).await?;
        tracing::info!(
            alias = self.live.collection(),
            collection = self.sink.collection(),
            "alias switched"
        );
        Ok(())
    }

    async fn retire(&mut self) -> Result<(), SinkError> {
        match self.retired.take() {
            Some(old) => self.live.on_collection(&old).drop_collection().await,
            None => Ok(()),
        }
    }
}
