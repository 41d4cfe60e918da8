//! `docledger-bench`: measures docledger end to end against the dual-write coordinator it
//! replaces and against each store's own bulk ceiling, in one run, on the real stores named
//! by the configuration, with bench-owned databases, collections and buckets (each dropped
//! as soon as its scenario is measured, unless `--keep`). Every scenario starts on a quiet
//! machine: the bench waits until the stores' background work (Milvus sealing and indexing,
//! Garage deleting a dropped bucket's objects) has settled, so one scenario's leftovers do
//! not count against the next.
//!
//! docledger runs as a spawned `docledger serve` (the `docledger` executable beside this one,
//! or `--bin`), so its CPU and peak RSS
//! are read from `/proc/<pid>` apart from the bench's own clients. CPU of the stores is the
//! difference of `utime + stime` per process between the start and the end of a scenario:
//! PostgreSQL's server processes plus the backends of the scenario's own database, MariaDB,
//! the Milvus server's process tree and the S3 server. Other work on the machine that uses
//! the shared MariaDB, Milvus or S3 processes meanwhile is counted too: run it on a quiet
//! machine.
//!
//! `--log-size` runs one scenario instead, issue 25's figure: `--docs` documents ×
//! `--versions` versions through a real `docledger serve` (retaining `--retain-versions`
//! versions' content, `DOCLEDGER_RETAIN_DAYS=0`, no background compaction), a compaction pass
//! and a plain `VACUUM` after each version; it reports the log database's size after the
//! last version, and after `VACUUM FULL`, against its size after the first version (target
//! ≤ 1.5×), the compactor's rate, and the least the log must hold at that retention (see
//! `src/log_size.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aggregates::{Chunk, DocumentEvent};
use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use futures::{stream, StreamExt};
use mysql_async::prelude::Queryable;
use mysql_async::Value;
use projections::milvus::plan::RowToWrite;
use projections::mysql::schema::DOCUMENTS;
use projections::mysql::shadow::{entry_values, insert_statement, run_concurrently};
use projections::mysql::MysqlSink;
use projections::s3::{object_key, BULK_CONCURRENT_REQUESTS};
use projections::{MilvusSink, RetryPolicy, S3Sink, Sink};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use docledger::config::Config;
use docledger::eventlog::PgConnector;

mod log_size;

/// `USER_HZ`: the unit of CPU times in `/proc/<pid>/stat` on every Linux architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// Rows per MySQL statement in the ceiling (the sink's own bulk size is of this order).
const CEILING_MYSQL_ROWS_PER_STATEMENT: usize = 500;
/// Statements, Milvus requests in flight in the ceilings.
const CEILING_CONCURRENCY: usize = 2;
/// Poll interval while waiting for readiness.
const READY_POLL: Duration = Duration::from_millis(50);
/// Longest wait for every document to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// How often the service's projections are looked at while waiting for readiness. Each look
/// counts every partition's unapplied events (up to 10,000 each): at one a second, during a
/// batch run with the projectors behind, that was 7 % of PostgreSQL's statement time, charged
/// to docledger's own cost. A store stuck retrying is still seen within seconds.
const STATUS_POLL: Duration = Duration::from_secs(5);
/// Attempts per step of the dual-write coordinator.
const DUAL_WRITE_ATTEMPTS: u32 = 5;
/// Requests in flight at most in the paced scenario (an open loop needs room to queue).
const PACED_SLOTS: usize = 256;
/// Lines per NDJSON request in `--touch` mode.
const TOUCH_BATCH_LINES: usize = 1000;
/// A scenario starts once the machine's cores have been this idle over one [`QUIET_SAMPLE`].
const QUIET_BUSY_FRACTION: f64 = 0.20;
/// How long each reading of the machine's busy fraction lasts.
const QUIET_SAMPLE: Duration = Duration::from_millis(500);

/// Options of `docledger bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Documents per scenario (docledger, dual-write with 16 writers, ceilings).
    #[arg(long, default_value_t = 2000)]
    pub docs: usize,
    /// Documents of the sequential dual-write scenario (it is slow).
    #[arg(long, default_value_t = 500)]
    pub sequential_docs: usize,
    /// Blob bytes per document (incompressible).
    #[arg(long, default_value_t = 4096)]
    pub blob_bytes: usize,
    /// Chunks (vectors) per document.
    #[arg(long, default_value_t = 8)]
    pub chunks: usize,
    /// Vector dimension.
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    /// Client requests in flight (docledger) and writers (the concurrent dual-write).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Send NDJSON batches of this many documents instead of one PUT per document (0 = PUTs).
    #[arg(long, default_value_t = 0)]
    pub batch_lines: usize,
    /// Documents of the paced docledger scenario, sent open-loop at half the throughput the
    /// first docledger scenario reached (its p99 time to consistent is the latency
    /// target); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    pub paced_docs: usize,
    /// Only measure RSS after this many distinct cheap documents (no blob, 1 chunk).
    #[arg(long)]
    pub touch: Option<usize>,
    /// The `docledger` executable to serve with (default: the one beside this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Stop waiting, with the store's error, when a store has been shown `retrying` in the
    /// service's `/v1/projections` for this many seconds (a store refusing every write, say a
    /// wrong key, would otherwise hold the run until the 15-minute readiness timeout).
    #[arg(long, default_value_t = 60)]
    pub stuck_after_secs: u64,
    /// Before each scenario, wait at most this many seconds for the machine to settle (its
    /// cores at most 20 % busy over half a second); 0 starts each scenario at once.
    #[arg(long, default_value_t = 60)]
    pub settle_secs: u64,
    /// Keep the bench's databases, collections and buckets.
    #[arg(long)]
    pub keep: bool,
    /// Only measure the log database's size under retention (issue 25): `--docs` documents
    /// x `--versions` versions, a compaction pass and a `VACUUM` after each version; the
    /// size after the last version and after `VACUUM FULL` against the size after the first
    /// (target <= 1.5x), and the compactor's rate.
    #[arg(long)]
    pub log_size: bool,
    /// Versions of each document in `--log-size` (each with a new title, texts, vectors
    /// and blob).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub versions: u64,
    /// `DOCLEDGER_RETAIN_VERSIONS` in `--log-size`: each document's newest versions that
    /// keep their content (every version counts as old: `DOCLEDGER_RETAIN_DAYS=0`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_versions: u64,
    /// How requests carry vectors: `b64` (`vector_b64`, little-endian float32) or `json`
    /// (`vector`, numbers).
    #[arg(long, value_enum, default_value_t = VectorEncoding::B64)]
    pub vectors: VectorEncoding,
}

/// How a request carries its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VectorEncoding {
    /// `vector_b64`: base64 of little-endian float32.
    B64,
    /// `vector`: JSON numbers.
    Json,
}

/// One generated document.
struct Doc {
    id: String,
    title: String,
    blob: Option<Bytes>,
    sha256: Option<String>,
    chunks: Vec<Chunk>,
}

fn generate(prefix: &str, n: usize, blob_bytes: usize, chunks: usize, dim: usize) -> Vec<Doc> {
    let mut rng = rand::rng();
    (0..n)
        .map(|i| {
            let blob = (blob_bytes > 0).then(|| {
                let mut bytes = vec![0u8; blob_bytes];
                rng.fill(&mut bytes[..]);
                Bytes::from(bytes)
            });
            let sha256 = blob.as_ref().map(|b| hex::encode(Sha256::digest(b)));
            let chunks = (0..chunks)
                .map(|c| Chunk {
                    index: u32::try_from(c).expect("chunk count fits u32"),
                    text: format!(
                        "document {i} chunk {c}: {:016x}{:016x} lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua",
                        rng.random::<u64>(),
                        rng.random::<u64>()
                    ),
                    vector: (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                })
                .collect();
            let id = format!("{prefix}/doc-{i:07}");
            Doc {
                title: format!("Bench document {id}"),
                id,
                blob,
                sha256,
                chunks,
            }
        })
        .collect()
}

impl Doc {
    fn title(&self) -> String {
        self.title.clone()
    }

    /// The PUT body (also a batch line with `op` and `doc_id` added).
    fn body(&self, vectors: VectorEncoding) -> serde_json::Value {
        let chunk = |c: &Chunk| match vectors {
            VectorEncoding::Json => json!({"text": c.text, "vector": c.vector}),
            VectorEncoding::B64 => {
                let bytes: Vec<u8> = c.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!({
                    "text": c.text,
                    "vector_b64": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
        };
        let mut body = json!({
            "title": self.title(),
            "source_type": "bench",
            "business_tag": "docledger-bench",
            "attributes": {"bench": true},
            "chunks": self.chunks.iter().map(chunk).collect::<Vec<_>>(),
        });
        if let Some(blob) = &self.blob {
            body["blob"] = json!({
                "content_base64": base64::engine::general_purpose::STANDARD.encode(blob),
                "content_type": "application/octet-stream",
            });
        }
        body
    }

    /// The `RowInserted` the service decides for the document's put (version 1, the
    /// attributes of [`Doc::body`]).
    fn row_event(&self) -> DocumentEvent {
        let mut attributes = serde_json::Map::new();
        attributes.insert("bench".into(), true.into());
        DocumentEvent::RowInserted {
            version: 1,
            title: self.title(),
            source_type: "bench".into(),
            business_tag: Some("docledger-bench".into()),
            attributes,
            blob_sha256: self.sha256.clone(),
            blob_size: self.blob.as_ref().map(|b| b.len() as u64),
            chunk_count: u32::try_from(self.chunks.len()).expect("chunk count fits u32"),
        }
    }

    /// The catalogue row as the dual-write coordinator and the ceiling insert it: the
    /// service's own catalogue entry of [`Doc::row_event`], written `ready`.
    fn row_values(&self) -> [Value; 11] {
        let entry = self
            .row_event()
            .catalogue_entry()
            .expect("a RowInserted has a catalogue entry");
        entry_values(&self.id, entry, true)
    }

    fn vector_rows(&self) -> Vec<RowToWrite<'_>> {
        self.chunks
            .iter()
            .map(|c| RowToWrite {
                pk: projections::milvus::schema::pk(&self.id, c.index),
                doc_id: &self.id,
                version: 1,
                chunk: c,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// /proc accounting

/// One process as `/proc/<pid>/stat` and `cmdline` show it.
struct ProcInfo {
    comm: String,
    /// `R`, `S`, ...; `Z` once exited and not yet waited for.
    state: char,
    ppid: u32,
    ticks: u64,
    cmdline: String,
}

fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    Some(ProcInfo {
        comm,
        state,
        ppid,
        ticks: utime + stime,
        cmdline,
    })
}

fn all_procs() -> HashMap<u32, ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect()
}

/// The process groups whose CPU a scenario reports.
pub const GROUPS: [&str; 6] = [
    "docledger",
    "bench client",
    "postgresql",
    "mariadb",
    "milvus",
    "s3 (garage)",
];

/// Which group a process belongs to, for a scenario whose service is `service` and whose
/// log database is `pg_database`.
fn group_of(
    pid: u32,
    procs: &HashMap<u32, ProcInfo>,
    service: Option<u32>,
    pg_database: Option<&str>,
) -> Option<&'static str> {
    let p = procs.get(&pid)?;
    if Some(pid) == service {
        return Some("docledger");
    }
    if pid == std::process::id() {
        return Some("bench client");
    }
    match p.comm.as_str() {
        "postgres" => {
            // Client backends show `user database host(port) state`; count only ours and the
            // server's own processes (WAL writer, checkpointer, ...).
            let is_backend = p.cmdline.contains('(') && p.cmdline.contains(')');
            let ours = pg_database.is_some_and(|db| p.cmdline.contains(&format!(" {db} ")));
            (!is_backend || ours).then_some("postgresql")
        }
        "mariadbd" | "mysqld" => Some("mariadb"),
        "garage" | "s3s-fs" | "minio" => Some("s3 (garage)"),
        _ => {
            // The Milvus server and everything it started.
            let mut cur = pid;
            for _ in 0..8 {
                let info = procs.get(&cur)?;
                if info.comm.starts_with("milvus") {
                    return Some("milvus");
                }
                cur = info.ppid;
            }
            None
        }
    }
}

/// CPU ticks per process at one moment, with each process's group.
pub struct CpuSnapshot(HashMap<u32, (&'static str, u64)>);

/// CPU ticks of every process of [`GROUPS`] now: `service` is the docledger process when it
/// is not this one, `pg_database` the log database whose PostgreSQL backends count.
pub fn cpu_snapshot(service: Option<u32>, pg_database: Option<&str>) -> CpuSnapshot {
    let procs = all_procs();
    CpuSnapshot(
        procs
            .keys()
            .filter_map(|&pid| {
                let g = group_of(pid, &procs, service, pg_database)?;
                Some((pid, (g, procs[&pid].ticks)))
            })
            .collect(),
    )
}

/// CPU seconds per group between two snapshots (a process that started meanwhile counts
/// from zero).
pub fn cpu_between(start: &CpuSnapshot, end: &CpuSnapshot) -> HashMap<&'static str, f64> {
    let mut out: HashMap<&'static str, f64> = GROUPS.iter().map(|g| (*g, 0.0)).collect();
    for (pid, (group, ticks)) in &end.0 {
        let before = start.0.get(pid).map_or(0, |(_, t)| *t);
        *out.entry(group).or_default() +=
            ticks.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SECOND;
    }
    out
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// Names and the spawned service

/// Bench-owned resource names of one scenario.
#[derive(Clone)]
struct Names {
    /// Log database, MySQL database and Milvus collection.
    name: String,
    /// S3 bucket.
    bucket: String,
}

impl Names {
    fn new(run: &str, scenario: &str) -> Names {
        let name = format!("{run}_{scenario}");
        Names {
            bucket: name.replace('_', "-"),
            name,
        }
    }
}

fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut u =
        url::Url::parse(url).context("parse a store url (not printed: it may hold a password)")?;
    u.set_path(&format!("/{database}"));
    Ok(u.to_string())
}

/// The `DOCLEDGER_*` settings of a service on `names`, as `config` names the stores.
fn service_vars(
    config: &Config,
    names: &Names,
    dim: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(vec![
        (
            "DOCLEDGER_EVENTSTORE_URL".into(),
            with_database(config.eventstore_url.expose(), &names.name)?,
        ),
        (
            "DOCLEDGER_MYSQL_URL".into(),
            with_database(config.mysql_url.expose(), &names.name)?,
        ),
        ("DOCLEDGER_MILVUS_COLLECTION".into(), names.name.clone()),
        ("DOCLEDGER_S3_BUCKET".into(), names.bucket.clone()),
        ("DOCLEDGER_VECTOR_DIM".into(), dim.to_string()),
        ("DOCLEDGER_VERIFY_INTERVAL_SECS".into(), "0".into()),
    ])
}

/// The three store clients of `names`, created.
async fn prepared_stores(
    config: &Config,
    names: &Names,
    dim: usize,
) -> anyhow::Result<(MysqlSink, MilvusSink, S3Sink)> {
    let (mysql, milvus, s3) = store_clients(config, names, dim).await?;
    mysql.prepare().await?;
    milvus.prepare().await?;
    s3.prepare().await?;
    Ok((mysql, milvus, s3))
}

/// The three store clients of `names`, without creating anything.
async fn store_clients(
    config: &Config,
    names: &Names,
    dim: usize,
) -> anyhow::Result<(MysqlSink, MilvusSink, S3Sink)> {
    let mysql = MysqlSink::with_tls(
        &with_database(config.mysql_url.expose(), &names.name)?,
        &config.tls,
    )?;
    let milvus = MilvusSink::connect(&config.milvus_access(), &names.name, dim).await?;
    let s3 = S3Sink::with_tls(
        config.s3_endpoint.expose().trim_end_matches('/'),
        &config.s3_credentials,
        &config.s3_region,
        &names.bucket,
        &config.tls,
    )?;
    Ok((mysql, milvus, s3))
}

/// Drops everything a scenario created (best effort, each store on its own: a store that
/// refused the run must not keep the others' leftovers).
async fn drop_names(config: &Config, names: &Names, dim: usize) {
    let server = with_database(config.mysql_url.expose(), "information_schema")
        .and_then(|url| Ok(MysqlSink::with_tls(&url, &config.tls)?));
    if let Ok(mysql) = server {
        if let Ok(mut conn) = mysql.pool().get_conn().await {
            let _ = conn
                .query_drop(format!("DROP DATABASE IF EXISTS `{}`", names.name))
                .await;
        }
    }
    if let Ok((_, milvus, s3)) = store_clients(config, names, dim).await {
        let _ = milvus.drop_collection().await;
        let _ = s3.drop_bucket().await;
    }
    if let Ok(connector) = PgConnector::new(&config.eventstore_url, &config.tls) {
        if let Ok((client, conn)) = connector.with_dbname("postgres").connect().await {
            let task = tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    names.name
                ))
                .await;
            drop(client);
            let _ = task.await;
        }
    }
}

/// A spawned `docledger serve`.
struct Service {
    child: Child,
    base: String,
    /// Where its standard error goes.
    log: PathBuf,
}

impl Service {
    async fn spawn(exe: &PathBuf, vars: &[(String, String)]) -> anyhow::Result<Service> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = std::env::temp_dir().join(format!("docledger-bench-{port}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .env_remove("DOCLEDGER_CONFIG")
            .env("DOCLEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "DOCLEDGER_LOG",
                std::env::var("DOCLEDGER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {exe:?} serve"))?;
        let service = Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log_path.clone(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = client
                .get(format!("{}/readyz", service.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!("the service did not become ready; see {log_path:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (it is a zombie until waited for, or gone).
    fn exited(&self) -> bool {
        read_proc(self.pid()).is_none_or(|p| matches!(p.state, 'Z' | 'X'))
    }

    /// Stops the service with SIGTERM (graceful shutdown) and waits for it.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        tokio::task::spawn_blocking(move || {
            let mut service = self;
            service.child.wait()
        })
        .await?
        .context("wait for docledger serve")?;
        Ok(())
    }
}

impl Drop for Service {
    /// A scenario that failed leaves no service running behind the bench (a stopped one
    /// has exited, and this does nothing).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Results

/// Milliseconds at a quantile of `values` (sorted in place).
fn quantile_ms(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[i] * 1e3
}

/// One scenario's figures.
struct Row {
    name: String,
    docs: usize,
    seconds: f64,
    /// Command latency, seconds, per document.
    latency: Vec<f64>,
    /// Acceptance to consistent in all stores, seconds, per document.
    to_consistent: Vec<f64>,
    cpu: Option<HashMap<&'static str, f64>>,
}

impl Row {
    fn docs_per_second(&self) -> f64 {
        self.docs as f64 / self.seconds
    }

    fn cpu_ms_per_doc(&self, groups: &[&str]) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        Some(
            groups
                .iter()
                .map(|g| cpu.get(g).unwrap_or(&0.0))
                .sum::<f64>()
                * 1e3
                / self.docs as f64,
        )
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// One encoded request: its URL, its body, the documents it carries and whether it is an
/// NDJSON batch.
struct Request {
    url: String,
    body: Vec<u8>,
    docs: usize,
    is_batch: bool,
}

/// Encodes `docs` as requests to the service at `base`: one PUT each, or NDJSON batches of
/// `batch_lines` (when not 0).
fn encode_requests(
    base: &str,
    docs: &[Doc],
    batch_lines: usize,
    vectors: VectorEncoding,
) -> anyhow::Result<Vec<Request>> {
    if batch_lines == 0 {
        docs.iter()
            .map(|d| {
                let url = format!(
                    "{base}/v1/documents/{}",
                    percent_encoding::utf8_percent_encode(
                        &d.id,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                Ok(Request {
                    url,
                    body: serde_json::to_vec(&d.body(vectors))?,
                    docs: 1,
                    is_batch: false,
                })
            })
            .collect()
    } else {
        docs.chunks(batch_lines)
            .map(|group| {
                let mut body = Vec::new();
                for d in group {
                    let mut line = d.body(vectors);
                    line["op"] = json!("put");
                    line["doc_id"] = json!(d.id);
                    serde_json::to_writer(&mut body, &line)?;
                    body.push(b'\n');
                }
                Ok(Request {
                    url: format!("{base}/v1/documents:batch"),
                    body,
                    docs: group.len(),
                    is_batch: true,
                })
            })
            .collect()
    }
}

/// Encodes and sends `docs` (see [`encode_requests`], [`send_requests`]).
async fn send_all(
    base: &str,
    docs: &[Doc],
    concurrency: usize,
    batch_lines: usize,
    vectors: VectorEncoding,
    bearer: Option<&str>,
    rate: Option<f64>,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let requests = encode_requests(base, docs, batch_lines, vectors)?;
    send_requests(requests, concurrency, bearer, rate).await
}

/// Sends encoded requests, `concurrency` in flight (or on a schedule of `rate` documents/s);
/// returns per document the command latency and the wall-clock time of acceptance.
async fn send_requests(
    requests: Vec<Request>,
    concurrency: usize,
    bearer: Option<&str>,
    rate: Option<f64>,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let num_docs = requests.iter().map(|r| r.docs).sum();
    // Open loop when paced: `rate` is in documents/s, so request i (a batch of `n` lines in
    // batch mode) leaves when the documents before it are due, whatever the answers before
    // it; latency counts from its departure.
    let origin = tokio::time::Instant::now();
    let mut due_docs = 0usize;
    let sends: Vec<_> = requests
        .into_iter()
        .map(
            |Request {
                 url,
                 body,
                 docs: n,
                 is_batch,
             }| {
                let client = client.clone();
                let docs_before = due_docs;
                due_docs += n;
                async move {
                    if let Some(rate) = rate {
                        let due = Duration::from_secs_f64(docs_before as f64 / rate);
                        tokio::time::sleep_until(origin + due).await;
                    }
                    let started = Instant::now();
                    let mut req = if is_batch {
                        client
                            .post(&url)
                            .header("content-type", "application/x-ndjson")
                    } else {
                        client.put(&url).header("content-type", "application/json")
                    };
                    if let Some(b) = bearer {
                        req = req.header("authorization", b);
                    }
                    let res = req.body(body).send().await.with_context(|| url.clone())?;
                    let status = res.status();
                    let text = res.text().await?;
                    if !status.is_success() || (is_batch && text.contains("\"error\"")) {
                        // A batch's first refused line, not its first lines.
                        let shown = text
                            .lines()
                            .find(|l| l.contains("\"error\""))
                            .unwrap_or(&text);
                        bail!(
                            "{url} answered {status}: {}",
                            shown.chars().take(300).collect::<String>()
                        );
                    }
                    let latency = started.elapsed().as_secs_f64();
                    Ok(vec![(latency, now_epoch()); n])
                }
            },
        )
        .collect();
    // Paced requests wait for their departure inside their slot: enough slots that the
    // schedule, not the slots, decides when each leaves.
    let slots = if rate.is_some() {
        PACED_SLOTS
    } else {
        concurrency.max(1)
    };
    let answers: Vec<anyhow::Result<Vec<(f64, f64)>>> =
        stream::iter(sends).buffered(slots).collect().await;
    let mut out = Vec::with_capacity(num_docs);
    for a in answers {
        out.extend(a?);
    }
    Ok(out)
}

/// MySQL's "unknown database" and "table doesn't exist": the projector creates both when it
/// starts, and nothing is ready before.
const NOT_CREATED_YET: [u16; 2] = [1049, 1146];

/// `(busy, total)` clock ticks of all cores since boot, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    busy_and_total(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `(busy, total)` ticks of the `cpu` line of a `/proc/stat` text: user, nice, system, idle,
/// iowait, irq, softirq and steal in all; idle and iowait are not busy (the guest fields
/// after them are already counted in user and nice).
fn busy_and_total(stat: &str) -> Option<(u64, u64)> {
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The share of the ticks between two [`machine_ticks`] readings that were busy.
fn busy_fraction(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// Waits until the machine's cores are at most [`QUIET_BUSY_FRACTION`] busy over one
/// [`QUIET_SAMPLE`], at most `timeout` (then warns and returns).
async fn wait_quiet(timeout: Duration) {
    if timeout.is_zero() {
        return;
    }
    let started = Instant::now();
    let mut busy = f64::NAN;
    while started.elapsed() < timeout {
        let Some(before) = machine_ticks() else {
            return;
        };
        tokio::time::sleep(QUIET_SAMPLE).await;
        let Some(after) = machine_ticks() else {
            return;
        };
        busy = busy_fraction(before, after);
        if busy <= QUIET_BUSY_FRACTION {
            return;
        }
    }
    eprintln!(
        "the machine is still {:.0} % busy after {}s; the next scenario starts anyway",
        busy * 100.0,
        timeout.as_secs()
    );
}

/// The number of `ready` rows at `version` or later.
async fn count_ready(mysql: &MysqlSink, version: u64) -> Result<u64, mysql_async::Error> {
    let mut conn = mysql.pool().get_conn().await?;
    let ready: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM documents WHERE status = 'ready' AND version >= ?",
            (version,),
        )
        .await?;
    Ok(ready.unwrap_or(0))
}

/// The bench-owned catalogue that readiness is read from, and a watch of `service`'s
/// projections while the bench waits for it.
fn readiness_watch<'a>(
    config: &Config,
    names: &Names,
    service: &'a Service,
    bearer: Option<&'a str>,
    args: &BenchArgs,
) -> anyhow::Result<(MysqlSink, StoreWatch<'a>)> {
    let mysql = MysqlSink::with_tls(
        &with_database(config.mysql_url.expose(), &names.name)?,
        &config.tls,
    )?;
    let watch = StoreWatch::new(service, bearer, Duration::from_secs(args.stuck_after_secs));
    Ok((mysql, watch))
}

/// Watches the service's `GET /v1/projections` while the bench waits for readiness.
struct StoreWatch<'a> {
    service: &'a Service,
    bearer: Option<&'a str>,
    stuck_after: Duration,
    http: reqwest::Client,
    /// Since when each store has been seen `retrying`, and its latest error.
    retrying: HashMap<String, (Instant, String)>,
    next_poll: Instant,
}

impl<'a> StoreWatch<'a> {
    fn new(service: &'a Service, bearer: Option<&'a str>, stuck_after: Duration) -> Self {
        StoreWatch {
            service,
            bearer,
            stuck_after,
            http: reqwest::Client::new(),
            retrying: HashMap::new(),
            next_poll: Instant::now(),
        }
    }

    /// The stores' states now (`None` when the service does not answer).
    async fn stores(&self) -> Option<Vec<serde_json::Value>> {
        let mut req = self
            .http
            .get(format!("{}/v1/projections", self.service.base))
            .timeout(STATUS_POLL * 2);
        if let Some(b) = self.bearer {
            req = req.bearer_auth(b);
        }
        req.send().await.ok()?.json().await.ok()
    }

    /// Fails once a store has been `retrying` for longer than `stuck_after` (or the service
    /// has exited); polls at most every [`STATUS_POLL`].
    async fn check(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if now < self.next_poll {
            return Ok(());
        }
        self.next_poll = now + STATUS_POLL;
        let Some(stores) = self.stores().await else {
            if self.service.exited() {
                bail!("docledger serve exited; see {:?}", self.service.log);
            }
            return Ok(());
        };
        let mut retrying = HashMap::new();
        for store in &stores {
            if store["state"] != "retrying" {
                continue;
            }
            let name = store["name"].as_str().unwrap_or("?").to_owned();
            let error = store["last_error"].as_str().unwrap_or("").to_owned();
            let since = self.retrying.get(&name).map_or(now, |(since, _)| *since);
            if now.duration_since(since) >= self.stuck_after {
                bail!(
                    "the {name} projection has been retrying for {}s: {error}; see {:?}",
                    self.stuck_after.as_secs(),
                    self.service.log
                );
            }
            retrying.insert(name, (since, error));
        }
        self.retrying = retrying;
        Ok(())
    }

    /// Each store's state, lag and last error, for a timeout's message.
    async fn describe(&self) -> String {
        match self.stores().await {
            None => "the service does not answer".into(),
            Some(stores) => stores
                .iter()
                .map(|s| {
                    format!(
                        "{} {} (lag {} events{})",
                        s["name"].as_str().unwrap_or("?"),
                        s["state"].as_str().unwrap_or("?"),
                        s["lag_events"],
                        s["last_error"]
                            .as_str()
                            .map(|e| format!(", last error: {e}"))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// Waits until `n` rows are `ready`; gives up with the store's error when `watch` sees a store
/// stuck retrying.
async fn wait_ready(mysql: &MysqlSink, n: usize, watch: &mut StoreWatch<'_>) -> anyhow::Result<()> {
    wait_ready_at(mysql, n, 1, watch).await
}

/// Waits until `n` rows are `ready` at `version` or later (see [`wait_ready`]).
async fn wait_ready_at(
    mysql: &MysqlSink,
    n: usize,
    version: u64,
    watch: &mut StoreWatch<'_>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let ready = match count_ready(mysql, version).await {
            Ok(ready) => ready,
            Err(mysql_async::Error::Server(e)) if NOT_CREATED_YET.contains(&e.code) => 0,
            Err(e) => return Err(e.into()),
        };
        if ready as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready} of {n} documents ready at version {version} after {READY_TIMEOUT:?}: {}",
                watch.describe().await
            );
        }
        watch.check().await?;
        tokio::time::sleep(READY_POLL).await;
    }
}

/// docledger end to end; returns the scenario and the service's peak RSS in KiB.
async fn run_docledger(
    config: &Config,
    args: &BenchArgs,
    exe: &PathBuf,
    names: &Names,
    docs: &[Doc],
    rate: Option<f64>,
) -> anyhow::Result<(Row, Option<u64>)> {
    let vars = service_vars(config, names, args.dim)?;
    let service = Service::spawn(exe, &vars).await?;
    let bearer = docledger::cli::bearer(config);
    let (mysql, mut watch) = readiness_watch(config, names, &service, bearer.as_deref(), args)?;
    // Steady state, not start-up: a new service's first documents wait while its projectors
    // create the bench's Milvus collection, index and bucket (about 3 s here). One document
    // through every store first; the clock starts after it.
    let warm_up = Instant::now();
    let warm_doc = generate("warmup", 1, args.blob_bytes, args.chunks, args.dim);
    send_all(
        &service.base,
        &warm_doc,
        1,
        0,
        args.vectors,
        bearer.as_deref(),
        None,
    )
    .await?;
    wait_ready(&mysql, warm_doc.len(), &mut watch).await?;
    eprintln!(
        "docledger: warm-up document consistent {:.1}s after start",
        warm_up.elapsed().as_secs_f64()
    );
    // The bodies are encoded before the clock starts: the load generator's JSON encoding
    // (about 2 s of CPU for 4,000 documents) is not the service's time.
    let requests = encode_requests(&service.base, docs, args.batch_lines, args.vectors)?;
    let cpu_start = cpu_snapshot(Some(service.pid()), Some(&names.name));
    let started = Instant::now();
    let accepted = send_requests(requests, args.concurrency, bearer.as_deref(), rate).await?;
    let sent = started.elapsed().as_secs_f64();
    wait_ready(&mysql, warm_doc.len() + docs.len(), &mut watch).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_end = cpu_snapshot(Some(service.pid()), Some(&names.name));
    let peak_rss = status_kib(service.pid(), "VmHWM:");
    eprintln!(
        "docledger: {} documents accepted in {sent:.1}s, all ready after {seconds:.1}s",
        docs.len()
    );
    let mut conn = mysql.pool().get_conn().await?;
    let ready_at: Vec<(String, f64)> = conn
        .query("SELECT doc_id, CAST(UNIX_TIMESTAMP(updated_at) AS DOUBLE) FROM documents")
        .await?;
    drop(conn);
    let ready_at: HashMap<String, f64> = ready_at.into_iter().collect();
    let to_consistent = docs
        .iter()
        .zip(&accepted)
        .filter_map(|(d, (_, at))| Some((ready_at.get(&d.id)? - at).max(0.0)))
        .collect();
    service.stop().await?;
    Ok((
        Row {
            name: format!(
                "docledger ({}, {}, {})",
                if args.batch_lines == 0 {
                    "PUTs".to_owned()
                } else {
                    format!("NDJSON batches of {}", args.batch_lines)
                },
                match args.vectors {
                    VectorEncoding::B64 => "vector_b64",
                    VectorEncoding::Json => "JSON vectors",
                },
                match rate {
                    Some(r) => format!("paced at {r:.0} docs/s"),
                    None => format!("{} in flight", args.concurrency),
                }
            ),
            docs: docs.len(),
            seconds,
            latency: accepted.iter().map(|(l, _)| *l).collect(),
            to_consistent,
            cpu: Some(cpu_between(&cpu_start, &cpu_end)),
        },
        peak_rss,
    ))
}

/// The dual-write coordinator: blob, row, vectors, in sequence, each step retried.
async fn dual_write_one(
    mysql: &MysqlSink,
    milvus: &MilvusSink,
    s3: &S3Sink,
    doc: &Doc,
    retry: &RetryPolicy,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let transient = |e: &projections::SinkError| e.class == projections::ErrorClass::Transient;
    let failed = |step: &'static str| move |e| anyhow::anyhow!("{step}: {e:?}");
    if let Some(blob) = &doc.blob {
        let key = object_key(&doc.id);
        retry
            .run(
                cancel,
                transient,
                |_, _| {},
                || s3.put_raw(&key, blob.clone()),
            )
            .await
            .map_err(failed("put blob"))?;
    }
    let sql = insert_statement(
        DOCUMENTS,
        1,
        " ON DUPLICATE KEY UPDATE version = VALUES(version)",
    );
    let params = doc.row_values().to_vec();
    retry
        .run(
            cancel,
            transient,
            |_, _| {},
            || {
                run_concurrently(
                    mysql.pool(),
                    "insert row",
                    vec![(sql.clone(), params.clone())],
                    1,
                )
            },
        )
        .await
        .map_err(failed("insert row"))?;
    let rows = doc.vector_rows();
    retry
        .run(
            cancel,
            transient,
            |_, _| {},
            || milvus.insert_rows(&rows, 1),
        )
        .await
        .map_err(failed("insert vectors"))?;
    Ok(())
}

async fn run_dual_write(
    config: &Config,
    args: &BenchArgs,
    names: &Names,
    docs: &[Doc],
    writers: usize,
) -> anyhow::Result<Row> {
    let (mysql, milvus, s3) = prepared_stores(config, names, args.dim).await?;
    let retry = RetryPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_secs(1),
        max_attempts: Some(DUAL_WRITE_ATTEMPTS),
    };
    let cancel = CancellationToken::new();
    let cpu_start = cpu_snapshot(None, None);
    let started = Instant::now();
    let sends: Vec<_> = docs
        .iter()
        .map(|d| {
            let (mysql, milvus, s3, retry, cancel) = (&mysql, &milvus, &s3, &retry, &cancel);
            async move {
                let t = Instant::now();
                dual_write_one(mysql, milvus, s3, d, retry, cancel).await?;
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64())
            }
        })
        .collect();
    let latencies: Vec<anyhow::Result<f64>> = stream::iter(sends)
        .buffer_unordered(writers.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_end = cpu_snapshot(None, None);
    let latency: Vec<f64> = latencies.into_iter().collect::<anyhow::Result<_>>()?;
    eprintln!(
        "dual-write x{writers}: {} documents in {seconds:.1}s",
        docs.len()
    );
    Ok(Row {
        name: format!("dual-write coordinator, {writers} writer(s)"),
        docs: docs.len(),
        seconds,
        to_consistent: latency.clone(),
        latency,
        cpu: Some(cpu_between(&cpu_start, &cpu_end)),
    })
}

/// Each store alone, in bulk, through the sinks' own clients.
async fn run_ceilings(
    config: &Config,
    args: &BenchArgs,
    names: &Names,
    docs: &[Doc],
) -> anyhow::Result<Vec<Row>> {
    let (mysql, milvus, s3) = prepared_stores(config, names, args.dim).await?;
    let row = |name: &str, seconds: f64| Row {
        name: name.to_owned(),
        docs: docs.len(),
        seconds,
        latency: Vec::new(),
        to_consistent: Vec::new(),
        cpu: None,
    };
    let mut rows = Vec::new();

    let statements: Vec<(String, Vec<Value>)> = docs
        .chunks(CEILING_MYSQL_ROWS_PER_STATEMENT)
        .map(|group| {
            (
                insert_statement(DOCUMENTS, group.len(), ""),
                group.iter().flat_map(Doc::row_values).collect(),
            )
        })
        .collect();
    let started = Instant::now();
    run_concurrently(mysql.pool(), "insert rows", statements, CEILING_CONCURRENCY).await?;
    rows.push(row(
        &format!(
            "ceiling: MySQL multi-row INSERT ({CEILING_MYSQL_ROWS_PER_STATEMENT} rows/statement)"
        ),
        started.elapsed().as_secs_f64(),
    ));

    let vectors: Vec<RowToWrite<'_>> = docs.iter().flat_map(Doc::vector_rows).collect();
    let started = Instant::now();
    milvus.insert_rows(&vectors, CEILING_CONCURRENCY).await?;
    rows.push(row(
        "ceiling: Milvus batched insert (1000 rows/request)",
        started.elapsed().as_secs_f64(),
    ));

    if docs.iter().any(|d| d.blob.is_some()) {
        let puts: Vec<_> = docs
            .iter()
            .filter_map(|d| Some((object_key(&d.id), d.blob.clone()?)))
            .map(|(key, blob)| {
                let s3 = &s3;
                async move { s3.put_raw(&key, blob).await }
            })
            .collect();
        let started = Instant::now();
        let results: Vec<Result<(), projections::SinkError>> = stream::iter(puts)
            .buffer_unordered(BULK_CONCURRENT_REQUESTS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        rows.push(row(
            &format!("ceiling: S3 parallel PUTs ({BULK_CONCURRENT_REQUESTS} in flight)"),
            started.elapsed().as_secs_f64(),
        ));
    }
    for r in &rows {
        eprintln!("{}: {:.0} documents/s", r.name, r.docs_per_second());
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Entry points

/// The 1, 5 and 15 minute load averages as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("bench_{}_{secs}", std::process::id())
}

/// Runs the benchmark and returns the report (a Markdown table and notes).
///
/// # Errors
/// When a store or the service cannot be reached, or a scenario fails.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<String> {
    let exe = match &args.bin {
        Some(b) => b.clone(),
        None => {
            let beside = std::env::current_exe()?.with_file_name("docledger");
            if !beside.exists() {
                anyhow::bail!(
                    "no docledger executable at {} (build it: cargo build --release --bin docledger), or name one with --bin",
                    beside.display()
                );
            }
            beside
        }
    };
    let run = run_id();
    if let Some(n) = args.touch {
        return touch(config, args, &exe, &Names::new(&run, "touch"), n).await;
    }
    if args.log_size {
        return log_size::run(config, args, &exe, &Names::new(&run, "logsize")).await;
    }
    let load_before = load_average();
    eprintln!(
        "generating {} documents ...",
        args.docs.max(args.sequential_docs)
    );
    let docs = generate(
        "bench",
        args.docs.max(args.sequential_docs),
        args.blob_bytes,
        args.chunks,
        args.dim,
    );
    let scenarios = [
        Names::new(&run, "dl"),
        Names::new(&run, "dw1"),
        Names::new(&run, "dw16"),
        Names::new(&run, "ceil"),
        Names::new(&run, "dlh"),
    ];
    // Each scenario's stores are dropped once it is measured, and the next one waits for
    // the machine to settle; whatever a failed run leaves is dropped at the end.
    let quiet = Duration::from_secs(args.settle_secs);
    let dropped = std::cell::RefCell::new(std::collections::HashSet::new());
    let settle = |names: &Names| {
        let names = names.clone();
        let dropped = &dropped;
        async move {
            if !args.keep {
                drop_names(config, &names, args.dim).await;
                dropped.borrow_mut().insert(names.name);
            }
            wait_quiet(quiet).await;
        }
    };
    let result = async {
        wait_quiet(quiet).await;
        let (docledger, peak_rss) =
            run_docledger(config, args, &exe, &scenarios[0], &docs[..args.docs], None).await?;
        settle(&scenarios[0]).await;
        let paced = if args.paced_docs == 0 {
            None
        } else {
            let rate = docledger.docs_per_second() / 2.0;
            let n = args.paced_docs.min(docs.len());
            let (row, _) =
                run_docledger(config, args, &exe, &scenarios[4], &docs[..n], Some(rate)).await?;
            settle(&scenarios[4]).await;
            Some(row)
        };
        let sequential = run_dual_write(
            config,
            args,
            &scenarios[1],
            &docs[..args.sequential_docs],
            1,
        )
        .await?;
        settle(&scenarios[1]).await;
        let concurrent = run_dual_write(
            config,
            args,
            &scenarios[2],
            &docs[..args.docs],
            args.concurrency,
        )
        .await?;
        settle(&scenarios[2]).await;
        let ceilings = run_ceilings(config, args, &scenarios[3], &docs[..args.docs]).await?;
        Ok::<_, anyhow::Error>((docledger, paced, peak_rss, sequential, concurrent, ceilings))
    }
    .await;
    if !args.keep {
        let left: Vec<&Names> = scenarios
            .iter()
            .filter(|n| !dropped.borrow().contains(&n.name))
            .collect();
        for names in left {
            drop_names(config, names, args.dim).await;
        }
    }
    let (docledger, paced, peak_rss, sequential, concurrent, ceilings) = result?;
    let measured = Measured {
        docledger,
        paced,
        peak_rss,
        sequential,
        concurrent,
        ceilings,
    };
    Ok(report(args, &load_before, measured))
}

/// What one run measured.
struct Measured {
    docledger: Row,
    paced: Option<Row>,
    peak_rss: Option<u64>,
    sequential: Row,
    concurrent: Row,
    ceilings: Vec<Row>,
}

fn report(args: &BenchArgs, load_before: &str, measured: Measured) -> String {
    let Measured {
        mut docledger,
        mut paced,
        peak_rss,
        mut sequential,
        mut concurrent,
        ceilings,
    } = measured;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "documents: blob {} B, {} chunks x {} dims; load average before {load_before}, after {}",
        args.blob_bytes,
        args.chunks,
        args.dim,
        load_average()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | docs | docs/s | command p50 / p99 ms | to consistent p50 / p99 ms | CPU ms/doc all | own (service + log, or coordinator) | stores | own / stores | docledger (or coordinator) | postgresql | mariadb | milvus | s3 | bench client |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    // docledger's own cost per document, and the coordinator's, for the targets below.
    let mut own_cost: Vec<(String, f64)> = Vec::new();
    let all = [
        "docledger",
        "postgresql",
        "mariadb",
        "milvus",
        "s3 (garage)",
    ];
    let mut rows = vec![(&mut docledger, "docledger")];
    if let Some(p) = paced.as_mut() {
        rows.push((p, "docledger"));
    }
    rows.push((&mut sequential, "bench client"));
    rows.push((&mut concurrent, "bench client"));
    for (r, coordinator) in rows {
        let groups: Vec<&str> = if coordinator == "docledger" {
            all.to_vec()
        } else {
            // The coordinator is the bench process itself.
            vec![
                "bench client",
                "postgresql",
                "mariadb",
                "milvus",
                "s3 (garage)",
            ]
        };
        let (lat50, lat99) = (
            quantile_ms(&mut r.latency, 0.5),
            quantile_ms(&mut r.latency, 0.99),
        );
        let (con50, con99) = (
            quantile_ms(&mut r.to_consistent, 0.5),
            quantile_ms(&mut r.to_consistent, 0.99),
        );
        let r = &*r;
        let per = |g: &str| {
            r.cpu_ms_per_doc(&[g])
                .map_or_else(|| "-".into(), |v| format!("{v:.2}"))
        };
        let client = if coordinator == "docledger" {
            per("bench client")
        } else {
            "(coordinator)".to_owned()
        };
        // Own: what a user pays docledger for (the service and its log), or the coordinator
        // itself; stores: what the three stores spend either way.
        let own_groups: &[&str] = if coordinator == "docledger" {
            &["docledger", "postgresql"]
        } else {
            &["bench client"]
        };
        let own = r.cpu_ms_per_doc(own_groups);
        let stores = r.cpu_ms_per_doc(&["mariadb", "milvus", "s3 (garage)"]);
        if let Some(own) = own {
            own_cost.push((r.name.clone(), own));
        }
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        let ratio = match (own, stores) {
            (Some(o), Some(s)) if s > 0.0 => format!("{:.2}", o / s),
            _ => "-".into(),
        };
        let line = format!(
            "| {} | {} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.docs,
            r.docs_per_second(),
            lat50,
            lat99,
            con50,
            con99,
            r.cpu_ms_per_doc(&groups).unwrap_or(f64::NAN),
            ms(own),
            ms(stores),
            ratio,
            per(coordinator),
            if coordinator == "docledger" { per("postgresql") } else { "-".into() },
            per("mariadb"),
            per("milvus"),
            per("s3 (garage)"),
            client,
        );
        let _ = writeln!(out, "{line}");
    }
    for c in &ceilings {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | - | - | - | - | - | - | - | - | - | - | - | - |",
            c.name,
            c.docs,
            c.docs_per_second()
        );
    }
    let _ = writeln!(out);
    let dl = docledger.docs_per_second();
    let slowest = ceilings
        .iter()
        .min_by(|a, b| a.docs_per_second().total_cmp(&b.docs_per_second()));
    let _ = writeln!(
        out,
        "docledger / dual-write sequential: {:.2}x (target >= 3)",
        dl / sequential.docs_per_second()
    );
    for (name, own) in &own_cost {
        let _ = writeln!(out, "own CPU per document, {name}: {own:.2} ms");
    }
    if let (Some(own), Some(coordinator)) = (
        docledger.cpu_ms_per_doc(&["docledger", "postgresql"]),
        concurrent.cpu_ms_per_doc(&["bench client"]),
    ) {
        let _ = writeln!(
            out,
            "docledger's own CPU per document: {own:.2} ms (target <= 0.5); {:.2}x the {}-writer coordinator's own {coordinator:.2} ms (target <= 1)",
            own / coordinator,
            args.concurrency
        );
    }
    let _ = writeln!(
        out,
        "docledger / dual-write x{}: {:.2}x (target >= 2)",
        args.concurrency,
        dl / concurrent.docs_per_second()
    );
    if let Some(s) = slowest {
        let _ = writeln!(
            out,
            "docledger / slowest ceiling ({}): {:.2} (target >= 0.7)",
            s.name,
            dl / s.docs_per_second()
        );
    }
    let dl_cpu = docledger.cpu_ms_per_doc(&all).unwrap_or(f64::NAN);
    let baseline_groups = [
        "bench client",
        "postgresql",
        "mariadb",
        "milvus",
        "s3 (garage)",
    ];
    for (label, b) in [("sequential", &sequential), ("concurrent", &concurrent)] {
        let b_cpu = b.cpu_ms_per_doc(&baseline_groups).unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "CPU per document, docledger / dual-write {label}: {dl_cpu:.2} / {b_cpu:.2} ms = {:.2} (target <= 0.5)",
            dl_cpu / b_cpu
        );
    }
    match paced.as_mut() {
        Some(p) => {
            let p99 = quantile_ms(&mut p.to_consistent, 0.99);
            let _ = writeln!(
                out,
                "p99 time to consistent at half throughput ({}): {p99:.0} ms (target <= 1000)",
                p.name
            );
        }
        None => {
            let _ = writeln!(out, "p99 at half throughput: not measured (--paced-docs 0)");
        }
    }
    if let Some(kib) = peak_rss {
        let _ = writeln!(
            out,
            "peak RSS of docledger serve (VmHWM): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    out
}

/// `--touch N`: RSS of the service after `n` distinct cheap documents.
async fn touch(
    config: &Config,
    args: &BenchArgs,
    exe: &PathBuf,
    names: &Names,
    n: usize,
) -> anyhow::Result<String> {
    let vars = service_vars(config, names, args.dim)?;
    let service = Service::spawn(exe, &vars).await?;
    let bearer = docledger::cli::bearer(config);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "touch: {n} distinct documents (no blob, 1 chunk x {} dims), NDJSON batches of {TOUCH_BATCH_LINES}; load average before {}",
        args.dim,
        load_average()
    );
    let _ = writeln!(
        out,
        "| documents touched | docs/s so far | VmRSS MiB | VmHWM MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let step = (n / 10).max(TOUCH_BATCH_LINES);
    let started = Instant::now();
    let mut done = 0;
    let result = async {
        while done < n {
            let count = step.min(n - done);
            let docs = generate(&format!("touch{done}"), count, 0, 1, args.dim);
            send_all(
                &service.base,
                &docs,
                args.concurrency.min(4),
                TOUCH_BATCH_LINES,
                args.vectors,
                bearer.as_deref(),
                None,
            )
            .await?;
            done += count;
            let mib = |f| status_kib(service.pid(), f).map_or(f64::NAN, |k| k as f64 / 1024.0);
            let _ = writeln!(
                out,
                "| {done} | {:.0} | {:.1} | {:.1} |",
                done as f64 / started.elapsed().as_secs_f64(),
                mib("VmRSS:"),
                mib("VmHWM:")
            );
            eprintln!("touched {done} of {n}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = writeln!(out, "load average after {}", load_average());
    service.stop().await?;
    if !args.keep {
        drop_names(config, names, args.dim).await;
    }
    result?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first lines of a real `/proc/stat` (2 cores).
    const STAT: &str = "cpu  100 20 30 400 50 6 4 10 7 0\n\
                        cpu0 50 10 15 200 25 3 2 5 3 0\n\
                        cpu1 50 10 15 200 25 3 2 5 4 0\n\
                        intr 12345 0 0\n";

    #[test]
    fn idle_and_iowait_are_not_busy_and_guest_time_is_not_counted_twice() {
        // user + nice + system + irq + softirq + steal; the guest fields (7, 0) are inside user.
        assert_eq!(busy_and_total(STAT), Some((170, 620)));
        assert_eq!(busy_and_total("intr 1 2 3\n"), None);
        assert_eq!(busy_and_total(""), None);
    }

    #[test]
    fn the_busy_fraction_is_of_the_ticks_between_two_readings() {
        assert_eq!(busy_fraction((170, 620), (270, 1020)), 0.25);
        // No tick between the readings (or a counter that went back) is not busy.
        assert_eq!(busy_fraction((170, 620), (170, 620)), 0.0);
        assert_eq!(busy_fraction((170, 620), (100, 600)), 0.0);
    }
}
