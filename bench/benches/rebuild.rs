//! Rebuild throughput against the real stores (issue 6, "Benchmark"): seeds N documents into
//! a bench-owned log through `PgLog::append` (many in parallel), rebuilds each store into
//! fresh bench-owned targets with `Rebuilder::rebuild`, and in the same run writes the same
//! rows to each store directly in bulk, with the rebuild's request sizes and concurrency (the
//! ceiling). Prints one table row per store: rebuild rate, ceiling rate, their ratio and
//! whether it meets the target (≥ 0.7 of the ceiling for MySQL and S3, ≥ 0.5 for Milvus).
//!
//! `cargo bench -p docledger-bench --bench rebuild`. Knobs (environment):
//! - `REBUILD_BENCH_DOCS` documents (default 20,000; the figure is 100,000)
//! - `REBUILD_BENCH_BLOB_BYTES` blob size (4096), `REBUILD_BENCH_CHUNKS` chunks a document
//!   (8), `REBUILD_BENCH_DIM` vector dimension (384)
//! - `REBUILD_BENCH_STORES` which stores, comma-separated (`mysql,milvus,s3`)
//! - `REBUILD_BENCH_SEED_TASKS` parallel appenders while seeding (16)
//! - `REBUILD_BENCH_VACUUM` `0` to rebuild from the freshly seeded log without the
//!   `VACUUM (ANALYZE)` that brings it to a running service's state first (1)
//!
//! Every resource is named `t_rbench_<pid>_<hex>` (a `unique_name`), so the test sweeper
//! removes what a killed run left; a finished run removes them itself.

use std::collections::HashMap;
use std::time::Instant;

use aggregates::{
    BlobRef, Chunk, DocId, Document, DocumentCommand, DocumentEvent, PutDocument, StoreKind,
};
use anyhow::Context;
use bytes::Bytes;
use docledger::config::Config;
use docledger::eventlog::{AppendRequest, Appended, PgLog};
use docledger::rebuild::{RebuildProgress, Rebuilder};
use docledger::Stores;
use docledger_bench::{cpu_between, cpu_snapshot, load_average, CpuSnapshot, GROUPS};
use futures::stream::{self, StreamExt, TryStreamExt};
use mysql_async::prelude::*;
use projections::milvus::plan::RowToWrite;
use projections::milvus::rebuild::CONCURRENT_REQUESTS;
use projections::milvus::schema::pk;
use projections::mysql::schema::ROWS_PER_STATEMENT;
use projections::mysql::shadow::{
    catalogue_values, create_documents_table, insert_statement, run_concurrently,
    CONCURRENT_STATEMENTS,
};
use projections::s3::object_key;
use projections::s3::BULK_CONCURRENT_REQUESTS;
use projections::sink::Change;
use projections::testing::{unique_name, StoreEnv};
use projections::Sink;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// The ceiling's catalogue table, next to the rebuilt one in the bench's MySQL database.
const CEILING_TABLE: &str = "documents_ceiling";
/// Suffix of the ceiling's Milvus collection and S3 bucket.
const CEILING_SUFFIX: &str = "ceiling";
/// Connections of the bench's log pool (seeding appenders and the rebuild's reads).
const LOG_POOL_SIZE: usize = 24;

/// What to seed and measure.
struct Settings {
    num_docs: usize,
    blob_bytes: usize,
    chunks: u32,
    dim: usize,
    stores: Vec<StoreKind>,
    seed_tasks: usize,
}

fn env_usize(key: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(key) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{key}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let stores = std::env::var("REBUILD_BENCH_STORES")
            .unwrap_or_else(|_| "mysql,milvus,s3".to_owned())
            .split(',')
            .map(|s| {
                StoreKind::from_name(s.trim())
                    .with_context(|| format!("unknown store {s:?} in REBUILD_BENCH_STORES"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Settings {
            num_docs: env_usize("REBUILD_BENCH_DOCS", 20_000)?,
            blob_bytes: env_usize("REBUILD_BENCH_BLOB_BYTES", 4096)?,
            chunks: env_usize("REBUILD_BENCH_CHUNKS", 8)? as u32,
            dim: env_usize("REBUILD_BENCH_DIM", 384)?,
            stores,
            seed_tasks: env_usize("REBUILD_BENCH_SEED_TASKS", 16)?.max(1),
        })
    }
}

/// splitmix64: cheap, deterministic, incompressible enough for blobs and vectors.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Document `i` of the corpus: the same every time it is asked for, so the ceiling writes
/// exactly the rows the rebuild writes.
struct BenchDoc {
    doc_id: String,
    put: PutDocument,
    blob: Bytes,
}

fn bench_doc(i: usize, s: &Settings) -> BenchDoc {
    let mut rng = SplitMix(i as u64);
    let mut blob = Vec::with_capacity(s.blob_bytes + 8);
    while blob.len() < s.blob_bytes {
        blob.extend_from_slice(&rng.next().to_le_bytes());
    }
    blob.truncate(s.blob_bytes);
    let sha256 = hex::encode(Sha256::digest(&blob));
    let mut attributes = serde_json::Map::new();
    attributes.insert("lang".into(), "en".into());
    attributes.insert("department".into(), format!("dept-{}", i % 13).into());
    attributes.insert("pages".into(), (1 + i % 40).into());
    let chunks = (0..s.chunks)
        .map(|c| Chunk {
            index: c,
            text: format!(
                "Quarterly report {i}, section {c}: revenue, costs and outlook for the \
                 business unit, with tables and footnotes as extracted from the PDF ({})",
                rng.next()
            ),
            vector: (0..s.dim).map(|_| rng.unit()).collect(),
        })
        .collect();
    BenchDoc {
        doc_id: format!("bench-{i:07}"),
        put: PutDocument {
            title: format!("Quarterly report {i}"),
            source_type: "pdf".into(),
            business_tag: Some("finance".into()),
            attributes,
            blob: Some(BlobRef {
                sha256,
                size: blob.len() as u64,
                content_type: "application/pdf".into(),
            }),
            chunks,
            expected_version: None,
        },
        blob: Bytes::from(blob),
    }
}

/// The events a fresh document's put decides (BlobStored, RowInserted, VectorsIndexed).
fn decide(doc: &BenchDoc) -> anyhow::Result<(Vec<DocumentEvent>, Document)> {
    let state = Document::default();
    let events = state
        .decide(&DocumentCommand::Put(doc.put.clone()))
        .map_err(|e| anyhow::anyhow!("put of {} refused: {e}", doc.doc_id))?;
    let mut next = state;
    for e in &events {
        next.apply_event(e);
    }
    Ok((events, next))
}

async fn append(log: &PgLog, doc: &BenchDoc) -> anyhow::Result<()> {
    let doc_id = DocId::parse(&doc.doc_id)?;
    let (events, next) = decide(doc)?;
    let sha = doc.put.blob.as_ref().map(|b| b.sha256.as_str());
    let appended = log
        .appends()
        .append(AppendRequest {
            doc_id: &doc_id,
            expected_stream_version: 0,
            events: &events,
            doc_version: next.version,
            deleted: next.deleted,
            blob: sha.map(|sha| (sha, doc.blob.clone())),
            idempotency: None,
            resolves: None,
        })
        .await?;
    anyhow::ensure!(
        matches!(appended, Appended::Committed { .. }),
        "append of {} not committed: {appended:?}",
        doc.doc_id
    );
    Ok(())
}

/// Appends every document, `seed_tasks` appenders in parallel (each on its own task, so
/// generating and encoding use every core).
async fn seed(log: &PgLog, s: &std::sync::Arc<Settings>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..s.seed_tasks)
        .map(|w| {
            let (log, s) = (log.clone(), s.clone());
            tokio::spawn(async move {
                for i in (w..s.num_docs).step_by(s.seed_tasks) {
                    append(&log, &bench_doc(i, &s)).await?;
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Wall time and CPU seconds per process group ([`GROUPS`]: the bench process is the
/// rebuild's and the ceiling's client) of one measured step.
struct Measured {
    seconds: f64,
    cpu: HashMap<&'static str, f64>,
}

/// Starts measuring: CPU of the stores' processes (PostgreSQL: the server's own and the
/// backends of `log_database`) and of this process.
struct Stopwatch {
    started: Instant,
    cpu: CpuSnapshot,
    log_database: String,
}

impl Stopwatch {
    fn start(log_database: &str) -> Stopwatch {
        Stopwatch {
            cpu: cpu_snapshot(None, Some(log_database)),
            started: Instant::now(),
            log_database: log_database.to_owned(),
        }
    }

    fn stop(self) -> Measured {
        let seconds = self.started.elapsed().as_secs_f64();
        Measured {
            seconds,
            cpu: cpu_between(&self.cpu, &cpu_snapshot(None, Some(&self.log_database))),
        }
    }
}

/// One store's measurement.
struct Row {
    store: StoreKind,
    rebuild: Measured,
    ceiling: Measured,
    /// Where the rebuild's time went, phase by phase.
    phases: Vec<(String, f64)>,
    /// Load average when the rebuild started.
    load: String,
}

impl Row {
    fn target(&self) -> f64 {
        match self.store {
            StoreKind::Milvus => 0.5,
            StoreKind::Mysql | StoreKind::S3 => 0.7,
        }
    }
}

/// The catalogue rows of every document in multi-row plain inserts of the rebuild's size,
/// `CONCURRENT_STATEMENTS` at a time, into a fresh table.
async fn ceiling_mysql(stores: &Stores, name: &str, s: &Settings) -> anyhow::Result<Measured> {
    let pool = stores.mysql.pool();
    let mut conn = pool.get_conn().await?;
    conn.query_drop(format!("DROP TABLE IF EXISTS {CEILING_TABLE}"))
        .await?;
    conn.query_drop(create_documents_table(CEILING_TABLE))
        .await?;
    drop(conn);
    let mut rows = Vec::with_capacity(s.num_docs);
    for i in 0..s.num_docs {
        let doc = bench_doc(i, s);
        let (events, _) = decide(&doc)?;
        let row = events
            .into_iter()
            .find(|e| matches!(e, DocumentEvent::RowInserted { .. }))
            .context("a put decides a RowInserted")?;
        rows.push(
            catalogue_values(&doc.doc_id, &Change::Upsert(row), true)
                .context("a RowInserted has catalogue values")?,
        );
    }
    let statements = rows
        .chunks(ROWS_PER_STATEMENT)
        .map(|part| {
            (
                insert_statement(CEILING_TABLE, part.len(), ""),
                part.iter().flat_map(|r| r.iter().cloned()).collect(),
            )
        })
        .collect();
    let watch = Stopwatch::start(name);
    run_concurrently(pool, "ceiling insert", statements, CONCURRENT_STATEMENTS).await?;
    Ok(watch.stop())
}

/// Every chunk row inserted into a fresh collection of the same schema and index, in
/// requests of the rebuild's size, `CONCURRENT_REQUESTS` at a time.
async fn ceiling_milvus(stores: &Stores, name: &str, s: &Settings) -> anyhow::Result<Measured> {
    let sink = stores
        .milvus
        .on_collection(&format!("{name}_{CEILING_SUFFIX}"));
    sink.drop_collection().await?;
    sink.prepare().await?;
    let docs: Vec<BenchDoc> = (0..s.num_docs).map(|i| bench_doc(i, s)).collect();
    let rows: Vec<RowToWrite<'_>> = docs
        .iter()
        .flat_map(|d| {
            d.put.chunks.iter().map(|c| RowToWrite {
                pk: pk(&d.doc_id, c.index),
                doc_id: &d.doc_id,
                version: 1,
                chunk: c,
            })
        })
        .collect();
    let watch = Stopwatch::start(name);
    sink.insert_rows(&rows, CONCURRENT_REQUESTS).await?;
    Ok(watch.stop())
}

/// Every blob put at its key in a fresh bucket, `BULK_CONCURRENT_REQUESTS` at a time.
async fn ceiling_s3(
    env: &StoreEnv,
    name: &str,
    bucket: &str,
    s: &Settings,
) -> anyhow::Result<Measured> {
    let sink = s3_sink(env, bucket);
    sink.prepare().await?;
    let blobs: Vec<(String, Bytes)> = (0..s.num_docs)
        .map(|i| {
            let d = bench_doc(i, s);
            (object_key(&d.doc_id), d.blob)
        })
        .collect();
    let puts: Vec<_> = blobs
        .into_iter()
        .map(|(key, bytes)| {
            let sink = &sink;
            async move { sink.put_raw(&key, bytes).await }
        })
        .collect();
    let watch = Stopwatch::start(name);
    stream::iter(puts)
        .buffer_unordered(BULK_CONCURRENT_REQUESTS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(watch.stop())
}

fn s3_sink(env: &StoreEnv, bucket: &str) -> projections::S3Sink {
    projections::S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        bucket,
    )
}

/// The bench's configuration: its own log database, MySQL database, Milvus name and bucket.
fn config(env: &StoreEnv, name: &str, s: &Settings) -> anyhow::Result<Config> {
    let vars: HashMap<String, String> = [
        ("DOCLEDGER_EVENTSTORE_URL", env.pg_database_url(name)),
        ("DOCLEDGER_MYSQL_URL", env.mysql_database_url(name)),
        ("DOCLEDGER_MILVUS_COLLECTION", name.to_owned()),
        ("DOCLEDGER_S3_ENDPOINT", env.s3_endpoint.clone()),
        ("DOCLEDGER_S3_BUCKET", bucket_name(name)),
        ("DOCLEDGER_S3_ACCESS_KEY", env.s3_access_key.clone()),
        ("DOCLEDGER_S3_SECRET_KEY", env.s3_secret_key.clone()),
        ("DOCLEDGER_S3_REGION", env.s3_region.clone()),
        ("DOCLEDGER_VECTOR_DIM", s.dim.to_string()),
    ]
    .into_iter()
    .chain(env.milvus_vars())
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Config::load(None, &vars)?)
}

fn bucket_name(name: &str) -> String {
    name.replace('_', "-")
}

async fn measure(
    env: &StoreEnv,
    name: &str,
    s: std::sync::Arc<Settings>,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let config = config(env, name, &s)?;
    let log = PgLog::connect(&config.eventstore_url, LOG_POOL_SIZE).await?;
    let stores = Stores::connect(&config).await?;
    eprintln!(
        "seeding {} documents ({} B blob, {} chunks x {} dims) into {name} ...",
        s.num_docs, s.blob_bytes, s.chunks, s.dim
    );
    let seconds = seed(&log, &s).await?;
    eprintln!(
        "seeded in {seconds:.1}s ({:.0} documents/s)",
        s.num_docs as f64 / seconds
    );
    wait_for_horizon(env, name).await?;
    if env_usize("REBUILD_BENCH_VACUUM", 1)? == 1 {
        vacuum_log(env, name).await?;
    }
    // The rebuild marks rebuilt documents ready in the catalogue: it must exist.
    stores.mysql.prepare().await?;
    let rebuilder = Rebuilder::new(
        log.clone(),
        stores.clone(),
        config.projection.partitions.get(),
        false,
    );
    let cancel = CancellationToken::new();
    for &store in &s.stores {
        eprintln!("{}: rebuilding ...", store.name());
        let progress = RebuildProgress::default();
        let load = load_average();
        let watch = Stopwatch::start(name);
        let summary = rebuilder.rebuild(store, &progress, &cancel).await?;
        let rebuild = watch.stop();
        anyhow::ensure!(
            summary.num_documents as usize >= s.num_docs,
            "{} rebuilt {} documents of {}",
            store.name(),
            summary.num_documents,
            s.num_docs
        );
        eprintln!(
            "{}: rebuilt in {:.1}s; ceiling ...",
            store.name(),
            rebuild.seconds
        );
        let ceiling = match store {
            StoreKind::Mysql => ceiling_mysql(&stores, name, &s).await?,
            StoreKind::Milvus => ceiling_milvus(&stores, name, &s).await?,
            StoreKind::S3 => {
                let bucket = format!("{}-{CEILING_SUFFIX}", bucket_name(name));
                ceiling_s3(env, name, &bucket, &s).await?
            }
        };
        eprintln!("{}: ceiling in {:.1}s", store.name(), ceiling.seconds);
        rows.push(Row {
            store,
            rebuild,
            ceiling,
            phases: progress.phase_seconds(),
            load,
        });
    }
    Ok(())
}

/// Removes every bench-owned resource; best effort, reporting what it could not remove.
async fn clean_up(env: &StoreEnv, name: &str) {
    let report = |what: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("clean-up: could not remove {what}: {e:#}");
        }
    };
    report("the log database", drop_pg(env, name).await);
    report("the MySQL database", drop_mysql(env, name).await);
    report("the Milvus collections", drop_milvus(env, name).await);
    let bucket = bucket_name(name);
    report("the bucket", drop_bucket(env, &bucket).await);
    report(
        "the ceiling bucket",
        drop_bucket(env, &format!("{bucket}-{CEILING_SUFFIX}")).await,
    );
}

/// Waits until every seeded event is below the log's read horizon: readers (the rebuild)
/// only take events of transactions older than the oldest one still running anywhere in the
/// PostgreSQL cluster, and on a shared server another client's long transaction holds that
/// back, so a rebuild started now would stop short of the seeded documents.
async fn wait_for_horizon(env: &StoreEnv, name: &str) -> anyhow::Result<()> {
    const HORIZON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
    let (client, conn) =
        tokio_postgres::connect(&env.pg_database_url(name), tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let started = Instant::now();
    let mut told = false;
    loop {
        let above: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())",
                &[],
            )
            .await?
            .get(0);
        if above == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < HORIZON_TIMEOUT,
            "{above} seeded events still above the read horizon after {HORIZON_TIMEOUT:?}: \
             a long transaction on the PostgreSQL server holds it back"
        );
        if !told {
            eprintln!("waiting for the read horizon to pass {above} seeded events ...");
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if told {
        eprintln!(
            "horizon passed after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// `VACUUM (ANALYZE)` of the seeded log, so the rebuild reads it as it would in a running
/// service: there the projectors' own reads (and autovacuum) have long set the events' commit
/// hint bits and the planner's statistics, while here 300,000 events of 100,000 just-committed
/// transactions would make the first reader look up and write back each one's commit status.
async fn vacuum_log(env: &StoreEnv, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let (client, conn) =
        tokio_postgres::connect(&env.pg_database_url(name), tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    // One statement each: several in one string would be one transaction, which VACUUM
    // refuses.
    for table in ["events", "streams"] {
        client
            .batch_execute(&format!("VACUUM (ANALYZE) {table}"))
            .await?;
    }
    drop(client);
    let _ = task.await;
    eprintln!(
        "log vacuumed in {:.1}s (REBUILD_BENCH_VACUUM=0 skips it)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn drop_pg(env: &StoreEnv, name: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&env.pg_url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

async fn drop_mysql(env: &StoreEnv, name: &str) -> anyhow::Result<()> {
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&env.mysql_url)?).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await?;
    conn.disconnect().await?;
    Ok(())
}

async fn drop_milvus(env: &StoreEnv, name: &str) -> anyhow::Result<()> {
    use milvus::v2::prelude::*;
    let config = env
        .milvus()
        .connect_config()
        .telemetry(TelemetryConfig::new().enabled(false));
    let client = ClientV2::new(&config).await?;
    // The rebuilt name is an alias; it must go before its collection.
    if let Ok(request) = DropAliasRequest::builder().alias(name).build() {
        let _ = client.drop_alias(request).await;
    }
    let listed = client
        .list_collections(ListCollectionsRequest::builder().build()?)
        .await?;
    for collection in listed
        .collection_names()
        .iter()
        .filter(|c| c.starts_with(name))
    {
        client
            .drop_collection(
                DropCollectionRequest::builder()
                    .collection_name(collection.as_str())
                    .build()?,
            )
            .await?;
    }
    Ok(())
}

async fn drop_bucket(env: &StoreEnv, bucket: &str) -> anyhow::Result<()> {
    // Its objects, then the bucket; a bucket never created (that store was not measured)
    // is fine.
    s3_sink(env, bucket).drop_bucket().await?;
    Ok(())
}

fn print_table(rows: &[Row], num_docs: usize) {
    println!();
    println!("| store  | documents | rebuild docs/s | ceiling docs/s | ratio | target | result |");
    println!("|--------|----------:|---------------:|---------------:|------:|-------:|--------|");
    for r in rows {
        let rebuild = num_docs as f64 / r.rebuild.seconds;
        let ceiling = num_docs as f64 / r.ceiling.seconds;
        let ratio = rebuild / ceiling;
        println!(
            "| {:<6} | {:>9} | {:>14.0} | {:>14.0} | {:>5.2} | ≥ {:.1}  | {} |",
            r.store.name(),
            num_docs,
            rebuild,
            ceiling,
            ratio,
            r.target(),
            if ratio >= r.target() { "met" } else { "missed" }
        );
    }
    // The bench process is the rebuild's (and the ceiling's) client.
    println!();
    println!(
        "CPU seconds per process group (the bench process runs the rebuild and the ceiling's \
         client; shared store processes include other users' work):"
    );
    println!("| store  | step    | seconds | {} |", GROUPS.join(" | "));
    println!(
        "|--------|---------|--------:|{}",
        "--:|".repeat(GROUPS.len())
    );
    for r in rows {
        for (step, m) in [("rebuild", &r.rebuild), ("ceiling", &r.ceiling)] {
            let cpu: Vec<String> = GROUPS
                .iter()
                .map(|g| format!("{:.2}", m.cpu.get(g).copied().unwrap_or_default()))
                .collect();
            println!(
                "| {:<6} | {step} | {:>7.2} | {} |",
                r.store.name(),
                m.seconds,
                cpu.join(" | ")
            );
        }
    }
    println!();
    for r in rows {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|(phase, seconds)| format!("{phase} {seconds:.2}s"))
            .collect();
        println!(
            "{} rebuild phases: {} (load average at its start: {})",
            r.store.name(),
            phases.join(", "),
            r.load
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = std::sync::Arc::new(Settings::from_env()?);
    let env = StoreEnv::require();
    let name = unique_name("rbench");
    let mut rows = Vec::new();
    let load_before = load_average();
    let measured = measure(&env, &name, settings.clone(), &mut rows).await;
    let load_after = load_average();
    clean_up(&env, &name).await;
    print_table(&rows, settings.num_docs);
    println!("load average (1, 5, 15 min): {load_before} before, {load_after} after");
    measured
}
