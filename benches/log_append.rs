//! Append throughput of the log against real PostgreSQL, with a raw multi-row INSERT of the
//! same bytes as the ceiling.
//!
//! One command is what a document put appends: `BlobStored` (with 4 KiB of blob bytes in the
//! request), `RowInserted` and `VectorsIndexed` (8 chunks of 384-dimensional vectors), each
//! command on a new document, in its own transaction. The ceiling writes the same rows (the
//! same JSON payloads, packed vectors and blob bytes) into a plain table without constraints,
//! `ROWS_PER_RAW_INSERT` rows per statement, one transaction per statement.
//!
//! Run with `cargo bench --bench log_append`; `BENCH_SECS` sets each scenario's duration
//! (default 3.5). The bench uses a database of its own and drops it at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::{DocId, Document, DocumentCommand, DocumentEvent};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use docledger::config::Config;
use docledger::eventlog::codec::encode;
use docledger::eventlog::{AppendRequest, Appended, IdempotencyKey, PgLog};
use projections::testing::{unique_name, StoreEnv};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

const BLOB_BYTES: usize = 4096;
const NUM_CHUNKS: u32 = 8;
const VECTOR_DIM: usize = 384;
const EVENTS_PER_COMMAND: u64 = 3;
/// Distinct documents the commands cycle through (contents only: every command has its own
/// document id and blob).
const NUM_TEMPLATES: usize = 64;
const ROWS_PER_RAW_INSERT: usize = 100;
const MANY_WRITERS: usize = 16;
const DEFAULT_SECS: f64 = 3.5;

/// The ceiling's table: the same columns the log stores per event, no keys but an identity.
const CREATE_RAW_TABLE: &str = "CREATE TABLE raw_events (
    position   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id  text NOT NULL,
    stream_version bigint NOT NULL,
    event_type text NOT NULL,
    payload    jsonb NOT NULL,
    vectors    bytea,
    blob       bytea)";

const RAW_INSERT: &str = "INSERT INTO raw_events (stream_id, stream_version, event_type, payload, vectors, blob)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[], $5::bytea[], $6::bytea[])";

/// A document put's events, with a blob whose first bytes are replaced per command.
struct Template {
    events: Vec<DocumentEvent>,
    blob: Vec<u8>,
}

/// One command's request parts.
struct Command {
    doc_id: DocId,
    events: Vec<DocumentEvent>,
    sha256: String,
    blob: Bytes,
}

fn templates() -> Result<Vec<Template>> {
    (0..NUM_TEMPLATES)
        .map(|t| {
            let blob: Vec<u8> = (0..BLOB_BYTES)
                .map(|i| ((i * 131 + t * 7919) % 251) as u8)
                .collect();
            let mut attributes = serde_json::Map::new();
            attributes.insert("lang".into(), "en".into());
            attributes.insert("pages".into(), (t * 3 + 1).into());
            attributes.insert("department".into(), "finance".into());
            let put = aggregates::PutDocument {
                title: format!("Quarterly report {t}"),
                source_type: "pdf".into(),
                business_tag: Some("finance".into()),
                attributes,
                blob: Some(aggregates::BlobRef {
                    sha256: hex::encode(Sha256::digest(&blob)),
                    size: BLOB_BYTES as u64,
                    content_type: "application/pdf".into(),
                }),
                chunks: (0..NUM_CHUNKS)
                    .map(|index| aggregates::Chunk {
                        index,
                        text: format!(
                            "Chunk {index} of report {t}: revenue, costs and outlook, \
                             about one paragraph of extracted text per chunk."
                        )
                        .repeat(3),
                        vector: (0..VECTOR_DIM)
                            .map(|j| ((t * 31 + index as usize * 17 + j) % 997) as f32 / 997.0)
                            .collect(),
                    })
                    .collect(),
                expected_version: None,
            };
            let events = Document::default().decide(&DocumentCommand::Put(put))?;
            Ok(Template { events, blob })
        })
        .collect()
}

impl Template {
    /// Command `i` of a scenario: its own document and blob bytes (so its own sha256).
    fn command(&self, scenario: &str, i: u64) -> Command {
        let mut blob = self.blob.clone();
        blob[..8].copy_from_slice(&i.to_le_bytes());
        blob[8] = scenario.len() as u8;
        let sha256 = hex::encode(Sha256::digest(&blob));
        let events = self
            .events
            .iter()
            .map(|e| match e {
                DocumentEvent::BlobStored {
                    version,
                    size,
                    content_type,
                    ..
                } => DocumentEvent::BlobStored {
                    version: *version,
                    sha256: sha256.clone(),
                    size: *size,
                    content_type: content_type.clone(),
                },
                DocumentEvent::RowInserted {
                    version,
                    title,
                    source_type,
                    business_tag,
                    attributes,
                    blob_size,
                    chunk_count,
                    ..
                } => DocumentEvent::RowInserted {
                    version: *version,
                    title: title.clone(),
                    source_type: source_type.clone(),
                    business_tag: business_tag.clone(),
                    attributes: attributes.clone(),
                    blob_sha256: Some(sha256.clone()),
                    blob_size: *blob_size,
                    chunk_count: *chunk_count,
                },
                other => other.clone(),
            })
            .collect();
        Command {
            doc_id: DocId::parse(&format!("{scenario}/doc-{i:08}")).expect("valid bench doc id"),
            events,
            sha256,
            blob: blob.into(),
        }
    }

    /// Bytes a command carries: blob, JSON payloads and packed vectors, as stored.
    fn bytes_per_command(&self) -> u64 {
        let events: u64 = self
            .events
            .iter()
            .map(encode)
            .map(|s| (s.payload.to_string().len() + s.vectors.map_or(0, |v| v.len())) as u64)
            .sum();
        events + BLOB_BYTES as u64
    }
}

/// One scenario's outcome.
struct Outcome {
    name: String,
    writers: usize,
    commands: u64,
    elapsed: Duration,
    bytes_per_command: u64,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn events_per_sec(&self) -> f64 {
        (self.commands * EVENTS_PER_COMMAND) as f64 / self.elapsed.as_secs_f64()
    }
    fn commands_per_sec(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_sec(&self) -> f64 {
        (self.commands * self.bytes_per_command) as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    fn latency_ms(&self, quantile: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let at = ((sorted.len() - 1) as f64 * quantile).round() as usize;
        Some(sorted[at].as_secs_f64() * 1000.0)
    }
}

async fn docledger_scenario(
    log: &PgLog,
    templates: &Arc<Vec<Template>>,
    name: &str,
    writers: usize,
    idempotent: bool,
    duration: Duration,
) -> Result<Outcome> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (log, templates, next) = (log.clone(), templates.clone(), next.clone());
            let scenario: String = format!("{name} {writers}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let command = templates[i as usize % templates.len()].command(&scenario, i);
                    let key = idempotent.then(|| {
                        IdempotencyKey::new(format!("{scenario}-{i}"), command.sha256.as_bytes())
                    });
                    let begun = Instant::now();
                    let appended = log
                        .append(AppendRequest {
                            doc_id: &command.doc_id,
                            expected_stream_version: 0,
                            events: &command.events,
                            doc_version: 1,
                            deleted: false,
                            blob: Some((&command.sha256, command.blob.clone())),
                            idempotency: key.as_ref(),
                        })
                        .await?;
                    if !matches!(appended, Appended::Committed { .. }) {
                        bail!("command {i} was not appended: {appended:?}");
                    }
                    latencies.push(begun.elapsed());
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("writer task")??);
    }
    let elapsed = started.elapsed();
    Ok(Outcome {
        name: name.to_owned(),
        writers,
        commands: latencies.len() as u64,
        elapsed,
        bytes_per_command: templates[0].bytes_per_command(),
        latencies,
    })
}

/// The rows of `ROWS_PER_RAW_INSERT / 3` commands, as the log would store them.
struct RawBatch {
    stream_ids: Vec<String>,
    stream_versions: Vec<i64>,
    event_types: Vec<String>,
    payloads: Vec<serde_json::Value>,
    vectors: Vec<Option<Vec<u8>>>,
    blobs: Vec<Option<Vec<u8>>>,
}

fn raw_batch(templates: &[Template], writer: usize) -> RawBatch {
    let mut batch = RawBatch {
        stream_ids: Vec::new(),
        stream_versions: Vec::new(),
        event_types: Vec::new(),
        payloads: Vec::new(),
        vectors: Vec::new(),
        blobs: Vec::new(),
    };
    let mut i = 0u64;
    while batch.stream_ids.len() < ROWS_PER_RAW_INSERT {
        let command = templates[(writer + i as usize) % templates.len()].command("raw", i);
        for (n, event) in command.events.iter().enumerate() {
            let stored = encode(event);
            batch.stream_ids.push(command.doc_id.to_string());
            batch.stream_versions.push(n as i64 + 1);
            batch.event_types.push(stored.event_type);
            batch.payloads.push(stored.payload);
            batch.vectors.push(stored.vectors);
            batch.blobs.push(
                matches!(event, DocumentEvent::BlobStored { .. }).then(|| command.blob.to_vec()),
            );
        }
        i += 1;
    }
    batch
}

async fn raw_scenario(
    url: &str,
    templates: &Arc<Vec<Template>>,
    name: &str,
    connections: usize,
    duration: Duration,
) -> Result<Outcome> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|writer| {
            let (url, templates) = (url.to_owned(), templates.clone());
            tokio::spawn(async move {
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
                tokio::spawn(conn);
                let statement = client.prepare(RAW_INSERT).await?;
                let batch = raw_batch(&templates, writer);
                let params: [&(dyn ToSql + Sync); 6] = [
                    &batch.stream_ids,
                    &batch.stream_versions,
                    &batch.event_types,
                    &batch.payloads,
                    &batch.vectors,
                    &batch.blobs,
                ];
                let mut rows = 0u64;
                while Instant::now() < deadline {
                    rows += client.execute(&statement, &params).await?;
                }
                Ok::<_, anyhow::Error>(rows)
            })
        })
        .collect();
    let mut rows = 0;
    for task in tasks {
        rows += task.await.context("raw writer task")??;
    }
    let elapsed = started.elapsed();
    Ok(Outcome {
        name: name.to_owned(),
        writers: connections,
        commands: rows / EVENTS_PER_COMMAND,
        elapsed,
        bytes_per_command: templates[0].bytes_per_command(),
        latencies: Vec::new(),
    })
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<38} {:>7} {:>9} {:>10} {:>11} {:>8} {:>8} {:>8}",
        "scenario", "writers", "commands", "events/s", "commands/s", "MB/s", "p50 ms", "p99 ms"
    );
    println!("{}", "-".repeat(106));
    for o in outcomes {
        let ms = |q| {
            o.latency_ms(q)
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        };
        println!(
            "{:<38} {:>7} {:>9} {:>10.0} {:>11.0} {:>8.2} {:>8} {:>8}",
            o.name,
            o.writers,
            o.commands,
            o.events_per_sec(),
            o.commands_per_sec(),
            o.mb_per_sec(),
            ms(0.5),
            ms(0.99)
        );
    }
}

async fn run() -> Result<()> {
    let secs: f64 = match std::env::var("BENCH_SECS") {
        Ok(s) => s.parse().context("BENCH_SECS")?,
        Err(_) => DEFAULT_SECS,
    };
    let duration = Duration::from_secs_f64(secs);
    let env = StoreEnv::require();
    let database = unique_name("bench_log_append");
    let url = env.pg_database_url(&database);
    let config = Config::load(
        None,
        &HashMap::from([("DOCLEDGER_EVENTSTORE_URL".to_owned(), url.clone())]),
    )?;
    let log = PgLog::connect(&config.eventstore_url, MANY_WRITERS + 1).await?;
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(CREATE_RAW_TABLE).await?;

    let templates = Arc::new(templates()?);
    let per_command = templates[0].bytes_per_command();
    println!(
        "log_append: {EVENTS_PER_COMMAND} events per command (BlobStored + {BLOB_BYTES} B blob, \
         RowInserted, VectorsIndexed {NUM_CHUNKS}x{VECTOR_DIM} f32), {per_command} B per command; \
         {secs} s per scenario; database {database}"
    );

    let mut outcomes = Vec::new();
    // A short warm-up so connections, prepared statements and the catalog caches exist.
    docledger_scenario(
        &log,
        &templates,
        "warm-up",
        MANY_WRITERS,
        false,
        Duration::from_millis(500),
    )
    .await?;
    outcomes
        .push(docledger_scenario(&log, &templates, "docledger append", 1, false, duration).await?);
    outcomes.push(
        docledger_scenario(
            &log,
            &templates,
            "docledger append",
            MANY_WRITERS,
            false,
            duration,
        )
        .await?,
    );
    outcomes.push(
        docledger_scenario(
            &log,
            &templates,
            "docledger append + idempotency key",
            MANY_WRITERS,
            true,
            duration,
        )
        .await?,
    );
    let raw_name = format!("raw INSERT, {ROWS_PER_RAW_INSERT} rows/statement");
    outcomes.push(raw_scenario(&url, &templates, &raw_name, 1, duration).await?);
    outcomes.push(raw_scenario(&url, &templates, &raw_name, MANY_WRITERS, duration).await?);
    print_table(&outcomes);

    let ratio =
        |docledger: &Outcome, raw: &Outcome| docledger.events_per_sec() / raw.events_per_sec();
    println!();
    println!(
        "ratio docledger/raw events/s: 1 writer {:.3}, {MANY_WRITERS} writers {:.3}",
        ratio(&outcomes[0], &outcomes[3]),
        ratio(&outcomes[1], &outcomes[4])
    );
    println!(
        "target: >= 10000 events/s with {MANY_WRITERS} writers ({:.0}) and ratio >= 0.5 ({:.3})",
        outcomes[1].events_per_sec(),
        ratio(&outcomes[1], &outcomes[4])
    );

    drop(log);
    drop(client);
    let (admin, conn) = tokio_postgres::connect(&env.pg_database_url("postgres"), NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
        ))
        .await?;
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
