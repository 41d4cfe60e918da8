//! Append throughput of the log against real PostgreSQL, with a raw multi-row INSERT of the
//! same bytes as the ceiling.
//!
//! One command is what a document put appends: `BlobStored` (with 4 KiB of blob bytes in the
//! request), `RowInserted` and `VectorsIndexed` (8 chunks of 384-dimensional vectors), each
//! command on a new document, in its own transaction. The ceiling writes the same rows (the
//! same JSON payloads, packed vectors and blob bytes) into a plain table without constraints,
//! `ROWS_PER_RAW_INSERT` rows per statement, one transaction per statement. The log's appends
//! run twice: with group commit off (one statement and transaction per command, as before
//! group commit) and as the service runs them (plain appends queued and group-committed,
//! `DOCLEDGER_APPEND_GROUP*` defaults).
//!
//! Run with `cargo bench --bench log_append`; `BENCH_SECS` sets each scenario's duration
//! (default 3.5), `BENCH_STORAGE_EXTERNAL=1` tries vectors and blobs without compression,
//! `DOCLEDGER_APPEND_GROUP*` tune the group-commit rows.
//! The bench uses a database of its own and drops it at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::{DocId, Document, DocumentCommand, DocumentEvent};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use docledger::config::{AppendGroupConfig, Config};
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
/// Writers of the product's group append beyond `MANY_WRITERS`: more in flight, larger groups.
const GROUPED_MANY_WRITERS: usize = 64;
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

/// Experiment (`BENCH_STORAGE_EXTERNAL=1`): store vectors and blob bytes out of line without
/// trying to compress them first, in the log and in the ceiling's table alike.
const STORAGE_EXTERNAL: &str = "
    ALTER TABLE events ALTER COLUMN vectors SET STORAGE EXTERNAL;
    ALTER TABLE blobs ALTER COLUMN content SET STORAGE EXTERNAL;
    ALTER TABLE raw_events ALTER COLUMN vectors SET STORAGE EXTERNAL,
                           ALTER COLUMN blob SET STORAGE EXTERNAL";

const RAW_INSERT: &str = "INSERT INTO raw_events (stream_id, stream_version, event_type, payload, vectors, blob)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[], $5::bytea[], $6::bytea[])";

/// Deterministic pseudo-random numbers: blobs (compressed files in practice) and embeddings
/// do not compress, and neither must the bench's.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn unit_f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

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
            let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ t as u64);
            let blob: Vec<u8> = (0..BLOB_BYTES).map(|_| random.next() as u8).collect();
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
                        vector: (0..VECTOR_DIM).map(|_| random.unit_f32()).collect(),
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
    cpu: Option<CpuUsed>,
}

/// CPU seconds used by the PostgreSQL backends of the bench's database (found by their process
/// title) and by this process: where an append's time goes, and a measure that other load on
/// the machine disturbs much less than throughput. Background processes (WAL writer,
/// checkpointer) are shared with other databases and not counted. Linux only.
struct CpuSample {
    /// Ticks per backend process id.
    postgres: HashMap<u32, u64>,
    bench: u64,
}

/// CPU seconds between two samples.
#[derive(Clone, Copy)]
struct CpuUsed {
    postgres: f64,
    bench: f64,
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on every common Linux build).
const TICKS_PER_SEC: f64 = 100.0;

impl CpuSample {
    fn now(database: &str) -> Option<CpuSample> {
        let mut postgres = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let path = entry.path();
            let Some(pid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let is_backend = std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|c| c.trim() == "postgres")
                && std::fs::read(path.join("cmdline"))
                    .is_ok_and(|title| String::from_utf8_lossy(&title).contains(database));
            if let Some(ticks) = is_backend.then(|| stat_ticks(&path.join("stat"))).flatten() {
                postgres.insert(pid, ticks);
            }
        }
        let bench = stat_ticks(std::path::Path::new("/proc/self/stat"))?;
        Some(CpuSample { postgres, bench })
    }

    /// CPU used since `before`, by the backends alive now (ones that exited in between,
    /// like the connections of an earlier scenario, do not count).
    fn since(self, before: Option<CpuSample>) -> Option<CpuUsed> {
        let before = before?;
        let postgres: u64 = self
            .postgres
            .iter()
            .map(|(pid, ticks)| {
                ticks.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0))
            })
            .sum();
        Some(CpuUsed {
            postgres: postgres as f64 / TICKS_PER_SEC,
            bench: (self.bench - before.bench) as f64 / TICKS_PER_SEC,
        })
    }
}

/// utime + stime of a `/proc/<pid>/stat`.
fn stat_ticks(path: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start with field 3, the state.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
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
    /// Microseconds of CPU per command: (PostgreSQL, this process).
    fn cpu_micros_per_command(&self) -> Option<(f64, f64)> {
        let cpu = self.cpu?;
        let per = |secs: f64| secs * 1e6 / self.commands.max(1) as f64;
        Some((per(cpu.postgres), per(cpu.bench)))
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

/// What every scenario runs against.
struct Bench {
    /// The log as the service runs it: plain appends group-committed.
    log: PgLog,
    /// The same log with group commit off (`DOCLEDGER_APPEND_GROUP=1`): one statement per
    /// append, as before group commit.
    single: PgLog,
    /// The log's database (the raw table lives there too).
    database: String,
    url: String,
    templates: Arc<Vec<Template>>,
}

async fn docledger_scenario(
    bench: &Bench,
    log: &PgLog,
    name: &str,
    writers: usize,
    idempotent: bool,
    duration: Duration,
) -> Result<Outcome> {
    let (templates, database) = (&bench.templates, bench.database.as_str());
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuSample::now(database);
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
                        .appends()
                        .append(AppendRequest {
                            doc_id: &command.doc_id,
                            expected_stream_version: 0,
                            events: &command.events,
                            doc_version: 1,
                            deleted: false,
                            blob: Some((&command.sha256, command.blob.clone())),
                            idempotency: key.as_ref(),
                            resolves: None,
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
    let cpu = CpuSample::now(database).and_then(|after| after.since(cpu_before));
    Ok(Outcome {
        name: name.to_owned(),
        writers,
        commands: latencies.len() as u64,
        elapsed,
        bytes_per_command: templates[0].bytes_per_command(),
        latencies,
        cpu,
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
    bench: &Bench,
    name: &str,
    connections: usize,
    duration: Duration,
) -> Result<Outcome> {
    let (url, templates, database) = (&bench.url, &bench.templates, bench.database.as_str());
    let cpu_before = CpuSample::now(database);
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
                // The connection lives until the CPU is sampled (its backend's time counts).
                Ok::<_, anyhow::Error>((rows, client))
            })
        })
        .collect();
    let mut rows = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (written, client) = task.await.context("raw writer task")??;
        rows += written;
        clients.push(client);
    }
    let elapsed = started.elapsed();
    let cpu = CpuSample::now(database).and_then(|after| after.since(cpu_before));
    drop(clients);
    Ok(Outcome {
        name: name.to_owned(),
        writers: connections,
        commands: rows / EVENTS_PER_COMMAND,
        elapsed,
        bytes_per_command: templates[0].bytes_per_command(),
        latencies: Vec::new(),
        cpu,
    })
}

fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<39} {:>7} {:>8} {:>9} {:>10} {:>7} {:>7} {:>7} {:>11} {:>11}",
        "scenario",
        "writers",
        "commands",
        "events/s",
        "commands/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "PG us/cmd",
        "bench us/cmd"
    );
    println!("{}", "-".repeat(130));
    for o in outcomes {
        let ms = |q| {
            o.latency_ms(q)
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        };
        let (pg, bench) = o
            .cpu_micros_per_command()
            .map_or(("-".to_owned(), "-".to_owned()), |(pg, bench)| {
                (format!("{pg:.0}"), format!("{bench:.0}"))
            });
        println!(
            "{:<39} {:>7} {:>8} {:>9.0} {:>10.0} {:>7.2} {:>7} {:>7} {:>11} {:>11}",
            o.name,
            o.writers,
            o.commands,
            o.events_per_sec(),
            o.commands_per_sec(),
            o.mb_per_sec(),
            ms(0.5),
            ms(0.99),
            pg,
            bench
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
    // The group-commit tuning keys are taken from the environment, to compare settings.
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DOCLEDGER_APPEND_GROUP"))
        .collect();
    vars.insert("DOCLEDGER_EVENTSTORE_URL".to_owned(), url.clone());
    let config = Config::load(None, &vars)?;
    let log = PgLog::connect_with(
        &config.eventstore_url,
        MANY_WRITERS + 1,
        &config.tls,
        config.append_group.clone(),
    )
    .await?;
    let single = PgLog::connect_with(
        &config.eventstore_url,
        MANY_WRITERS + 1,
        &config.tls,
        AppendGroupConfig {
            max_commands: 1,
            ..config.append_group.clone()
        },
    )
    .await?;
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(CREATE_RAW_TABLE).await?;
    let external_storage = std::env::var_os("BENCH_STORAGE_EXTERNAL").is_some();
    if external_storage {
        client.batch_execute(STORAGE_EXTERNAL).await?;
    }

    let templates = Arc::new(templates()?);
    let per_command = templates[0].bytes_per_command();
    println!(
        "log_append: {EVENTS_PER_COMMAND} events per command (BlobStored + {BLOB_BYTES} B blob, \
         RowInserted, VectorsIndexed {NUM_CHUNKS}x{VECTOR_DIM} f32), {per_command} B per command; \
         {secs} s per scenario; database {database}{}",
        if external_storage {
            "; vectors and blobs STORAGE EXTERNAL"
        } else {
            ""
        }
    );

    let group = config.append_group.clone();
    let bench = Bench {
        log,
        single,
        database: database.clone(),
        url: url.clone(),
        templates,
    };
    let mut outcomes = Vec::new();
    // A short warm-up so connections, prepared statements and the catalog caches exist.
    let warm_up = Duration::from_millis(500);
    let single = &bench.single;
    docledger_scenario(&bench, single, "warm-up", MANY_WRITERS, false, warm_up).await?;
    docledger_scenario(
        &bench,
        &bench.log,
        "warm-up grouped",
        MANY_WRITERS,
        false,
        warm_up,
    )
    .await?;
    let appends = "docledger append, 1 per statement";
    let keyed = "docledger append + idempotency key";
    outcomes.push(docledger_scenario(&bench, single, appends, 1, false, duration).await?);
    outcomes
        .push(docledger_scenario(&bench, single, appends, MANY_WRITERS, false, duration).await?);
    outcomes.push(docledger_scenario(&bench, single, keyed, MANY_WRITERS, true, duration).await?);
    let raw = format!("raw INSERT, {ROWS_PER_RAW_INSERT} rows/statement");
    outcomes.push(raw_scenario(&bench, &raw, 1, duration).await?);
    outcomes.push(raw_scenario(&bench, &raw, MANY_WRITERS, duration).await?);
    let grouped = format!(
        "docledger group append (<= {} cmds, {} tasks)",
        group.max_commands, group.tasks
    );
    let stats = bench.log.appends().append_stats();
    let groups_before = stats.groups.load(Ordering::Relaxed);
    let grouped_before = stats.grouped_commands.load(Ordering::Relaxed);
    for writers in [1, MANY_WRITERS, GROUPED_MANY_WRITERS] {
        outcomes.push(
            docledger_scenario(&bench, &bench.log, &grouped, writers, false, duration).await?,
        );
    }
    let num_groups = stats.groups.load(Ordering::Relaxed) - groups_before;
    let num_grouped = stats.grouped_commands.load(Ordering::Relaxed) - grouped_before;
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
        "ratio docledger group append/raw events/s: {MANY_WRITERS} writers {:.3}, \
         {GROUPED_MANY_WRITERS} writers {:.3}; group/1 per statement with \
         {MANY_WRITERS} writers {:.3}",
        ratio(&outcomes[6], &outcomes[4]),
        ratio(&outcomes[7], &outcomes[4]),
        ratio(&outcomes[6], &outcomes[1]),
    );
    println!(
        "group append: {num_grouped} commands in {num_groups} group statements ({:.1} per group)",
        num_grouped as f64 / num_groups.max(1) as f64
    );
    println!(
        "target: >= 10000 events/s with {MANY_WRITERS} writers ({:.0} grouped, {:.0} one per \
         statement) and ratio >= 0.5 ({:.3} grouped)",
        outcomes[6].events_per_sec(),
        outcomes[1].events_per_sec(),
        ratio(&outcomes[6], &outcomes[4])
    );

    drop(bench);
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
