//! A fourth store, in test code only: chunk vectors in a plain PostgreSQL table (what a
//! pgvector store would hold, without the extension). It implements the store ports
//! ([`Sink`] and [`Rebuild`]) in this one file and touches nothing else of docledger
//! (docs/architecture.md), then:
//! - passes the shared sink conformance suite, as MySQL, Milvus and S3 do;
//! - is filled from a real log by the generic rebuild orchestrator
//!   ([`Rebuilder::rebuild_into`]) and ends up holding, document for document, what the
//!   live Milvus store holds; rebuilt again after replaces (fewer chunks) and deletes, it
//!   holds no stale row.

mod common;

use std::sync::Arc;

use aggregates::{DocumentEvent, LogCursor, StoreKind};
use common::TestService;
use docledger::eventlog::PgLog;
use docledger::rebuild::{RebuildProgress, Rebuilder};
use docledger::Stores;
use projections::sink::Change;
use projections::testing::{sink_suite, unique_name, Held, Holding, StoreEnv};
use projections::{
    Applied, Batch, Partition, Rebuild, RebuildPage, RebuildStyle, RebuildTarget, Sink, SinkError,
};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

const DIM: usize = 8;
const NAME: &str = "pgvectors";

/// Chunk vectors of each document in one PostgreSQL table, `(doc_id, idx)` the key.
#[derive(Clone)]
struct PgVectorSink {
    client: Arc<Mutex<tokio_postgres::Client>>,
    table: String,
}

fn pg_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> SinkError {
    move |e| SinkError::transient(NAME, operation, e.to_string())
}

impl PgVectorSink {
    async fn connect(url: &str, table: &str) -> PgVectorSink {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        PgVectorSink {
            client: Arc::new(Mutex::new(client)),
            table: table.to_owned(),
        }
    }

    /// The same store writing into another table of the same database.
    fn on_table(&self, table: &str) -> PgVectorSink {
        PgVectorSink {
            client: self.client.clone(),
            table: table.to_owned(),
        }
    }

    async fn drop_table(&self) {
        self.client
            .lock()
            .await
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await
            .expect("drop table");
    }

    /// Writes `batch` with a version guard: a document's rows are replaced only by a
    /// version at least as new as the one held; a removal or purge clears the versions at
    /// or below its own.
    async fn write(&self, batch: &Batch) -> Result<Applied, SinkError> {
        let t = &self.table;
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(pg_error("begin"))?;
        let mut num_changes = 0;
        for c in &batch.changes {
            let doc = c.doc_id.as_str();
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&doc])
                .await
                .map_err(pg_error("lock document"))?;
            match &c.change {
                Change::Upsert(DocumentEvent::VectorsIndexed { version, chunks }) => {
                    let held: Option<i64> = tx
                        .query_one(
                            &format!("SELECT max(version) FROM {t} WHERE doc_id = $1"),
                            &[&doc],
                        )
                        .await
                        .map_err(pg_error("read version"))?
                        .get(0);
                    if held.is_some_and(|h| h > *version as i64) {
                        continue;
                    }
                    tx.execute(&format!("DELETE FROM {t} WHERE doc_id = $1"), &[&doc])
                        .await
                        .map_err(pg_error("delete rows"))?;
                    for chunk in chunks {
                        tx.execute(
                            &format!(
                                "INSERT INTO {t} (doc_id, idx, version, text, vector)
                                 VALUES ($1, $2, $3, $4, $5)"
                            ),
                            &[
                                &doc,
                                &(chunk.index as i32),
                                &(*version as i64),
                                &chunk.text,
                                &chunk.vector,
                            ],
                        )
                        .await
                        .map_err(pg_error("insert row"))?;
                    }
                }
                Change::Upsert(other) => {
                    return Err(SinkError::permanent(
                        NAME,
                        "apply",
                        format!("{} is not an event for a vector store", other.type_name()),
                    ))
                }
                Change::Remove | Change::Erase | Change::Purge => {
                    tx.execute(
                        &format!("DELETE FROM {t} WHERE doc_id = $1 AND version <= $2"),
                        &[&doc, &(c.version as i64)],
                    )
                    .await
                    .map_err(pg_error("delete rows"))?;
                }
            }
            num_changes += 1;
        }
        tx.commit().await.map_err(pg_error("commit"))?;
        Ok(Applied { num_changes })
    }
}

impl Sink for PgVectorSink {
    const NAME: &'static str = NAME;
    const STORE: StoreKind = StoreKind::Milvus;
    const KEEPS_OWN_CHECKPOINT: bool = false;

    async fn prepare(&self) -> Result<(), SinkError> {
        self.client
            .lock()
            .await
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (doc_id text NOT NULL, idx int NOT NULL,
                 version bigint NOT NULL, text text NOT NULL, vector real[] NOT NULL,
                 PRIMARY KEY (doc_id, idx))",
                self.table
            ))
            .await
            .map_err(pg_error("create table"))
    }

    async fn checkpoint(&self, _part: Partition) -> Result<Option<(String, LogCursor)>, SinkError> {
        Ok(None)
    }

    async fn apply(
        &self,
        _log_id: &str,
        _part: Partition,
        batch: &Batch,
    ) -> Result<Applied, SinkError> {
        self.write(batch).await
    }
}

impl Held for PgVectorSink {
    async fn held(&self, doc_id: &str) -> Result<Option<Holding>, SinkError> {
        let rows = self
            .client
            .lock()
            .await
            .query(
                &format!(
                    "SELECT version, text FROM {} WHERE doc_id = $1 ORDER BY idx",
                    self.table
                ),
                &[&doc_id],
            )
            .await
            .map_err(pg_error("read rows"))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let texts: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        Ok(Some(Holding {
            version: first.get::<_, i64>(0) as u64,
            fingerprint: texts.join("|"),
        }))
    }
}

/// A fresh table beside the live one, renamed over it in one transaction at the switch.
struct NextTable {
    live: PgVectorSink,
    next: PgVectorSink,
}

impl Rebuild for PgVectorSink {
    type Target = NextTable;
    const STYLE: RebuildStyle = RebuildStyle::BlueGreen;

    async fn begin_rebuild(&self) -> Result<NextTable, SinkError> {
        self.prepare().await?;
        let next = self.on_table(&format!("{}_next", self.table));
        next.drop_table().await;
        next.prepare().await?;
        Ok(NextTable {
            live: self.clone(),
            next,
        })
    }
}

impl RebuildTarget for NextTable {
    async fn write(&mut self, page: RebuildPage) -> Result<(), SinkError> {
        match page {
            RebuildPage::Changes { batch, .. } => self.next.write(&batch).await.map(|_| ()),
            RebuildPage::States(_) => Err(SinkError::permanent(
                NAME,
                "rebuild",
                "catalogue states handed to a vector store".to_owned(),
            )),
        }
    }

    async fn switch(
        &mut self,
        _log_id: &str,
        _partitions: u32,
        _end: LogCursor,
    ) -> Result<(), SinkError> {
        let (live, next) = (&self.live.table, &self.next.table);
        self.live
            .client
            .lock()
            .await
            .batch_execute(&format!(
                "BEGIN; DROP TABLE {live}; ALTER TABLE {next} RENAME TO {live}; COMMIT"
            ))
            .await
            .map_err(pg_error("switch tables"))
    }
}

async fn pg_sink(table: &str) -> PgVectorSink {
    let env = StoreEnv::require();
    let sink = PgVectorSink::connect(&env.pg_database_url("postgres"), table).await;
    sink.drop_table().await;
    sink.prepare().await.expect("prepare table");
    sink
}

#[tokio::test]
async fn a_fourth_store_passes_the_sink_suite() {
    let sink = pg_sink(&unique_name("fourth_suite")).await;
    sink_suite::run(&sink, "doc", DIM).await;
    sink.drop_table().await;
}

fn body(title: &str, chunks: usize) -> serde_json::Value {
    json!({
        "title": title,
        "source_type": "pdf",
        "chunks": (0..chunks)
            .map(|i| json!({"text": format!("{title} chunk {i}"), "vector": vec![i as f32 / 10.0; DIM]}))
            .collect::<Vec<_>>(),
    })
}

/// The fourth store holds, for every document, what the live Milvus store holds.
async fn assert_same_as_milvus(fourth: &PgVectorSink, stores: &Stores, docs: &[String]) {
    for doc in docs {
        let want = stores.milvus.held(doc).await.expect("read milvus");
        let got = fourth.held(doc).await.expect("read the fourth store");
        assert_eq!(got, want, "{doc}");
    }
}

#[actix_rt::test]
async fn the_generic_rebuild_fills_a_fourth_store_from_the_log() {
    let svc = TestService::start("fourth_store", &[]).await;
    let http = reqwest::Client::new();
    let docs: Vec<String> = (0..12).map(|i| format!("fourth-{i:02}")).collect();
    for (i, doc) in docs.iter().enumerate() {
        let res = http
            .put(svc.doc_url(doc, ""))
            .json(&body(&format!("{doc} v1"), 1 + i % 4))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status(), 200);
    }
    common::projections_caught_up(&http, &svc.url(""), std::time::Duration::from_secs(60)).await;

    let log = PgLog::connect(&svc.config.eventstore_url, 2)
        .await
        .expect("log");
    let stores = Stores::connect(&svc.config).await.expect("stores");
    let rebuilder = Rebuilder::new(log, stores.clone(), 2, false).with_page_events(5);
    let fourth = pg_sink(&unique_name("fourth_rebuild")).await;
    let summary = rebuilder
        .rebuild_into(
            &fourth,
            &RebuildProgress::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("rebuild the fourth store");
    assert_eq!(summary.store, NAME);
    assert_eq!(summary.num_documents, docs.len() as u64);
    assert_same_as_milvus(&fourth, &stores, &docs).await;

    // Replaces with fewer chunks and deletes: a second rebuild leaves no row of the first.
    for doc in &docs[..4] {
        let res = http
            .put(svc.doc_url(doc, ""))
            .json(&body(&format!("{doc} v2"), 1))
            .send()
            .await
            .expect("replace");
        assert_eq!(res.status(), 200);
    }
    for doc in &docs[4..7] {
        let res = http
            .delete(svc.doc_url(doc, ""))
            .send()
            .await
            .expect("delete");
        assert_eq!(res.status(), 200);
    }
    common::projections_caught_up(&http, &svc.url(""), std::time::Duration::from_secs(60)).await;
    rebuilder
        .rebuild_into(
            &fourth,
            &RebuildProgress::default(),
            &CancellationToken::new(),
        )
        .await
        .expect("rebuild the fourth store again");
    assert_same_as_milvus(&fourth, &stores, &docs).await;
    for doc in &docs[4..7] {
        assert_eq!(
            fourth.held(doc).await.expect("read"),
            None,
            "{doc} was deleted"
        );
    }
    let v2 = fourth.held(&docs[3]).await.expect("read").expect("held");
    assert_eq!(
        (v2.version, v2.fingerprint.as_str()),
        (2, "fourth-03 v2 chunk 0")
    );
    fourth.drop_table().await;
    svc.stop().await;
}
