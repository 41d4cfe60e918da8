//! `--log-size`: issue 25's figure. `--docs` documents x `--versions` versions through a real
//! `docledger serve` on bench-owned stores; the log database's size after compaction against
//! its size after one version (target <= 1.5x), and the compactor's rate.
//!
//! Only versions every store accepted (`streams.ready_version`) can lose their content, so
//! every version goes through the service and the stores, and the bench waits until every
//! document is ready at that version (in MySQL, and in the log) before it compacts:
//!
//! 0. S0 = the size of the empty log (the schema the service created);
//! 1. version 1 of every document, ready; `VACUUM (ANALYZE)`; S1 = the log's size;
//! 2. for each later version (what an operator sees with hourly passes and autovacuum): the
//!    version, ready; one compaction pass (`Compactor::run_once`, timed); a plain `VACUUM`.
//!    After the last one S_plain = the log's size;
//! 3. the service stops (`VACUUM FULL` locks each table); `VACUUM FULL`; S_full = the log's
//!    size.
//!
//! The log's size is given twice: `pg_database_size` (the catalogues included, about 8 MiB
//! on an empty database) and the sum of `pg_total_relation_size` (TOAST and indexes
//! included) of the log's own tables. The service retains `--retain-versions` versions'
//! content with `DOCLEDGER_RETAIN_DAYS=0` (every version of the run is young) and runs no
//! pass of its own (`DOCLEDGER_COMPACT_INTERVAL_SECS=0`).
//!
//! Every version of a document differs from the one before in all its content (title, chunk
//! texts, vectors and blob bytes), so nothing is shared between versions. The log must hold
//! at least S0, the kept versions with their content and the other versions' rows without
//! it. The report measures a version without its content at S_full (the tuples of the
//! `ContentRemoved` rows, one per run of a document's removed events, and their share of the
//! events' indexes), derives a version with
//! its content from S_full, and gives the floor at the run's retention and at 1 version
//! against the target.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use docledger::compact::Compactor;
use docledger::config::{CompactionConfig, Config};
use docledger::eventlog::PgLog;
use projections::mysql::MysqlSink;

use super::{
    drop_names, encode_requests, generate, load_average, readiness_watch, send_requests,
    service_vars, wait_quiet, wait_ready_at, with_database, BenchArgs, Names, Service, StoreWatch,
    READY_POLL, READY_TIMEOUT,
};

/// The log's tables whose sizes make up "log tables" (each with its TOAST and indexes).
const LOG_TABLES: [&str; 6] = [
    "events",
    "blobs",
    "streams",
    "snapshots",
    "idempotency_keys",
    "parked_changes",
];

/// The target: the log after compaction at most this many times its size after one version.
const TARGET_RATIO: f64 = 1.5;

/// Connections of the bench's own handle on the log (compaction passes, sizes, VACUUM).
const LOG_POOL_SIZE: usize = 2;

const MIB: f64 = 1024.0 * 1024.0;

/// The log database's size at one moment.
struct LogSize {
    /// `pg_database_size`.
    database: i64,
    /// `pg_total_relation_size` of each of [`LOG_TABLES`].
    tables: Vec<i64>,
    /// What the log holds at that moment.
    held: Held,
}

impl LogSize {
    /// The sum over the log's tables.
    fn tables_total(&self) -> i64 {
        self.tables.iter().sum()
    }
}

/// What the log holds: content and rows.
#[derive(Clone, Copy)]
struct Held {
    /// Bytes of content as stored: the payloads and vectors of the events that hold
    /// content, and the blobs' bytes.
    content: i64,
    /// Events holding content.
    content_events: i64,
    /// Events whose content was removed.
    stripped_events: i64,
    /// Their bytes in the events table's heap: each tuple (aligned) and its line pointer.
    stripped_heap: i64,
    /// Events in all.
    events: i64,
    /// Bytes of the indexes of the events table that hold every event (not the partial
    /// index of blob references).
    events_index: i64,
    /// Blob rows.
    blobs: i64,
}

impl Held {
    /// The bytes an event whose content was removed takes: its tuple, line pointer and
    /// entries in the events table's indexes (their bytes shared out over all events).
    fn stripped_bytes(&self) -> f64 {
        if self.stripped_events == 0 || self.events == 0 {
            return f64::NAN;
        }
        self.stripped_heap as f64 / self.stripped_events as f64
            + self.events_index as f64 / self.events as f64
    }
}

/// The log's size and what it holds now.
async fn measure(log: &PgLog) -> anyhow::Result<LogSize> {
    let client = log.client().await?;
    let database: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .context("read the log database's size")?
        .get(0);
    let mut tables = Vec::with_capacity(LOG_TABLES.len());
    for table in LOG_TABLES {
        let size: i64 = client
            .query_one(
                &format!(
                    "SELECT COALESCE(pg_total_relation_size(to_regclass('{table}')), 0)::bigint"
                ),
                &[],
            )
            .await
            .with_context(|| format!("read the size of {table}"))?
            .get(0);
        tables.push(size);
    }
    let content_types = &*docledger::eventlog::content::CONTENT_TYPES;
    let row = client
        .query_one(
            &format!(
                "SELECT
                   (SELECT COALESCE(SUM(pg_column_size(payload)::bigint
                                        + COALESCE(pg_column_size(vectors), 0)), 0)::bigint
                      FROM events WHERE event_type IN {content_types}),
                   (SELECT COALESCE(SUM(pg_column_size(content)), 0)::bigint FROM blobs),
                   (SELECT count(*) FROM events WHERE event_type IN {content_types}),
                   (SELECT count(*) FROM events WHERE event_type = 'ContentRemoved'),
                   (SELECT COALESCE(SUM((pg_column_size(e.*) + 7) / 8 * 8 + 4), 0)::bigint
                      FROM events e WHERE event_type = 'ContentRemoved'),
                   (SELECT count(*) FROM events),
                   (SELECT COALESCE(SUM(pg_relation_size(indexrelid)), 0)::bigint
                      FROM pg_index WHERE indrelid = 'events'::regclass AND indpred IS NULL),
                   (SELECT count(*) FROM blobs)"
            ),
            &[],
        )
        .await
        .context("read what the log holds")?;
    let held = Held {
        content: row.get::<_, i64>(0) + row.get::<_, i64>(1),
        content_events: row.get(2),
        stripped_events: row.get(3),
        stripped_heap: row.get(4),
        events: row.get(5),
        events_index: row.get(6),
        blobs: row.get(7),
    };
    Ok(LogSize {
        database,
        tables,
        held,
    })
}

/// Runs `statement` (a `VACUUM`) on the log database; returns its seconds.
async fn vacuum(log: &PgLog, statement: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    log.client()
        .await?
        .batch_execute(statement)
        .await
        .with_context(|| statement.to_owned())?;
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until `n` documents are ready at `version` in MySQL and in the log
/// (`streams.ready_version`, what compaction goes by).
async fn wait_version_ready(
    mysql: &MysqlSink,
    log: &PgLog,
    n: usize,
    version: u64,
    watch: &mut StoreWatch<'_>,
) -> anyhow::Result<()> {
    wait_ready_at(mysql, n, version, watch).await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let version = i64::try_from(version)?;
    loop {
        let accepted: i64 = log
            .client()
            .await?
            .query_one(
                &format!("SELECT count(*) FROM streams WHERE ready_version >= {version}"),
                &[],
            )
            .await
            .context("count the documents every store accepted")?
            .get(0);
        if usize::try_from(accepted)? >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {accepted} of {n} documents accepted by every store at version {version} after {READY_TIMEOUT:?}"
            );
        }
        watch.check().await?;
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The compaction passes' totals.
#[derive(Default)]
struct Passes {
    count: u64,
    seconds: f64,
    documents: u64,
    events: u64,
    blobs: u64,
    /// Seconds of the plain `VACUUM` after each pass.
    vacuum_seconds: f64,
}

/// What the scenario measured.
struct Measured {
    load_before: String,
    /// The empty log (the service's schema), before version 1.
    s0: LogSize,
    s1: LogSize,
    plain: LogSize,
    full: LogSize,
    passes: Passes,
    /// Seconds of the `VACUUM FULL`.
    full_seconds: f64,
}

/// `--log-size`: see the module's documentation.
pub(super) async fn run(
    config: &Config,
    args: &BenchArgs,
    exe: &PathBuf,
    names: &Names,
) -> anyhow::Result<String> {
    wait_quiet(Duration::from_secs(args.settle_secs)).await;
    let load_before = load_average();
    let result = measure_run(config, args, exe, names, load_before).await;
    if !args.keep {
        drop_names(config, names, args.dim).await;
    }
    Ok(report(args, &result?))
}

async fn measure_run(
    config: &Config,
    args: &BenchArgs,
    exe: &PathBuf,
    names: &Names,
    load_before: String,
) -> anyhow::Result<Measured> {
    let mut vars = service_vars(config, names, args.dim)?;
    vars.extend([
        ("DOCLEDGER_RETAIN_DAYS".to_owned(), "0".to_owned()),
        (
            "DOCLEDGER_RETAIN_VERSIONS".to_owned(),
            args.retain_versions.to_string(),
        ),
        ("DOCLEDGER_COMPACT_INTERVAL_SECS".to_owned(), "0".to_owned()),
    ]);
    let service = Service::spawn(exe, &vars).await?;
    // The bench's own handle on the service's log, for the passes, the sizes and VACUUM.
    let log_url = Config::load(
        None,
        &HashMap::from([(
            "DOCLEDGER_EVENTSTORE_URL".to_owned(),
            with_database(config.eventstore_url.expose(), &names.name)?,
        )]),
    )?
    .eventstore_url;
    let log = PgLog::connect_with_tls(&log_url, LOG_POOL_SIZE, &config.tls).await?;
    let compactor = Compactor::new(
        log.clone(),
        CompactionConfig {
            idempotency_ttl: config.compaction.idempotency_ttl,
            retain: Duration::ZERO,
            retain_versions: args.retain_versions,
            interval: None,
        },
    );
    let bearer = docledger::cli::bearer(config);
    let (mysql, mut watch) = readiness_watch(config, names, &service, bearer.as_deref(), args)?;
    let s0 = measure(&log).await?;
    let mut passes = Passes::default();
    let mut s1 = None;
    let mut plain = None;
    for version in 1..=args.versions {
        let mut docs = generate("logsize", args.docs, args.blob_bytes, args.chunks, args.dim);
        for d in &mut docs {
            d.title = format!("Bench document {} version {version}", d.id);
        }
        let requests = encode_requests(&service.base, &docs, args.batch_lines, args.vectors)?;
        drop(docs);
        let started = Instant::now();
        send_requests(requests, args.concurrency, bearer.as_deref(), None).await?;
        let sent = started.elapsed().as_secs_f64();
        wait_version_ready(&mysql, &log, args.docs, version, &mut watch).await?;
        let ready = started.elapsed().as_secs_f64();
        if version == 1 {
            let vacuumed = vacuum(&log, "VACUUM (ANALYZE)").await?;
            let size = measure(&log).await?;
            eprintln!(
                "log size: version 1 of {} documents accepted in {sent:.1}s, ready after {ready:.1}s; VACUUM (ANALYZE) {vacuumed:.1}s; log tables {:.1} MiB",
                args.docs,
                size.tables_total() as f64 / MIB
            );
            s1 = Some(size);
            continue;
        }
        let pass = compactor.run_once().await?;
        let vacuumed = vacuum(&log, "VACUUM").await?;
        passes.count += 1;
        passes.seconds += pass.seconds;
        passes.documents += pass.content_removed.documents;
        passes.events += pass.content_removed.events;
        passes.blobs += pass.content_removed.blobs;
        passes.vacuum_seconds += vacuumed;
        eprintln!(
            "log size: version {version} accepted in {sent:.1}s, ready after {ready:.1}s; pass: content of {} events of {} documents and {} blobs removed in {:.2}s; VACUUM {vacuumed:.1}s",
            pass.content_removed.events,
            pass.content_removed.documents,
            pass.content_removed.blobs,
            pass.seconds
        );
        if version == args.versions {
            plain = Some(measure(&log).await?);
        }
    }
    let s1 = s1.context("version 1 was measured")?;
    // One version only: nothing to compact, S_plain is S1.
    let plain = match plain {
        Some(p) => p,
        None => measure(&log).await?,
    };
    // VACUUM FULL takes each table's exclusive lock: the service stops first, as an
    // operator's VACUUM FULL in a maintenance window would.
    drop(watch);
    service.stop().await?;
    let full_seconds = vacuum(&log, "VACUUM FULL").await?;
    let full = measure(&log).await?;
    eprintln!("log size: VACUUM FULL {full_seconds:.1}s");
    drop(compactor);
    drop(log);
    Ok(Measured {
        load_before,
        s0,
        s1,
        plain,
        full,
        passes,
        full_seconds,
    })
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / MIB
}

fn report(args: &BenchArgs, m: &Measured) -> String {
    let Measured {
        load_before,
        s0,
        s1,
        plain,
        full,
        passes,
        full_seconds,
    } = m;
    let n = args.docs;
    let versions = args.versions;
    let retain = args.retain_versions;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "log size: {n} documents x {versions} versions (blob {} B, {} chunks x {} dims, {}), DOCLEDGER_RETAIN_VERSIONS={retain}, DOCLEDGER_RETAIN_DAYS=0, a compaction pass and VACUUM after each version; load average before {load_before}, after {}",
        args.blob_bytes,
        args.chunks,
        args.dim,
        if args.batch_lines == 0 {
            format!("PUTs, {} in flight", args.concurrency)
        } else {
            format!("NDJSON batches of {}", args.batch_lines)
        },
        load_average()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| log database | pg_database_size MiB | log tables MiB | / S1 (database) | / S1 (tables) | {} | events with content / rows without (folded) | blobs |",
        LOG_TABLES.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|{}---|---|",
        "---|".repeat(LOG_TABLES.len())
    );
    for (name, size) in [
        ("S0: the empty log (schema only)".to_owned(), s0),
        ("S1: version 1, VACUUM (ANALYZE)".to_owned(), s1),
        (
            format!("S_plain: version {versions}, a pass and VACUUM after each version"),
            plain,
        ),
        ("S_full: then VACUUM FULL".to_owned(), full),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} / {} | {} |",
            mib(size.database),
            mib(size.tables_total()),
            size.database as f64 / s1.database as f64,
            size.tables_total() as f64 / s1.tables_total() as f64,
            size.tables
                .iter()
                .map(|t| format!("{:.1}", mib(*t)))
                .collect::<Vec<_>>()
                .join(" | "),
            size.held.content_events,
            size.held.stripped_events,
            size.held.blobs,
        );
    }
    let _ = writeln!(out);
    for (label, size) in [("S_plain", plain), ("S_full", full)] {
        let _ = writeln!(
            out,
            "{label} / S1: {:.2}x pg_database_size, {:.2}x log tables (target <= {TARGET_RATIO})",
            size.database as f64 / s1.database as f64,
            size.tables_total() as f64 / s1.tables_total() as f64,
        );
    }
    let rate = |x: u64| {
        if passes.seconds > 0.0 {
            format!("{:.0}", x as f64 / passes.seconds)
        } else {
            "-".into()
        }
    };
    let _ = writeln!(
        out,
        "compactor: {} passes in {:.2} s ({:.3} s a pass): content of {} events removed ({} events/s), {} documents compacted ({} documents/s), {} blobs deleted; VACUUM after the passes {:.1} s in all, VACUUM FULL {full_seconds:.1} s",
        passes.count,
        passes.seconds,
        if passes.count > 0 { passes.seconds / passes.count as f64 } else { 0.0 },
        passes.events,
        rate(passes.events),
        passes.documents,
        rate(passes.documents),
        passes.blobs,
        passes.vacuum_seconds,
    );
    // The floor: the empty log, the versions that keep their content as VACUUM FULL packs
    // them, and the others' rows without content.
    let total1 = s1.tables_total() as f64;
    let empty = s0.tables_total() as f64;
    let kept_now = retain.min(versions);
    let stripped = full.held.stripped_bytes();
    // A version without its content, all documents (0 when no version lost it): the rows
    // the passes left for the stripped versions (one per run of a document's removed
    // events, which the passes fold) over those versions.
    let stripped_versions_now = versions.saturating_sub(kept_now).max(1) as f64;
    let rows_per_version = full.held.stripped_events as f64 / stripped_versions_now / n as f64;
    let without_content = if stripped.is_nan() {
        0.0
    } else {
        stripped * full.held.stripped_events as f64 / stripped_versions_now
    };
    let with_content =
        (full.tables_total() as f64 - empty - (versions - kept_now) as f64 * without_content)
            / kept_now as f64;
    let per_doc = |bytes: f64| bytes / n as f64;
    let _ = writeln!(
        out,
        "what the log must hold at least (log tables; every version's content is new), after VACUUM FULL:"
    );
    let _ = writeln!(out, "  the empty log S0: {:.1} MiB", empty / MIB);
    if !stripped.is_nan() {
        let _ = writeln!(
            out,
            "  a version without its content: {:.2} MiB ({:.0} B a document: {rows_per_version:.2} rows of {stripped:.0} B, {:.0} B of tuple and line pointer and {:.0} B of entries in the events' indexes each)",
            without_content / MIB,
            per_doc(without_content),
            full.held.stripped_heap as f64 / full.held.stripped_events as f64,
            full.held.events_index as f64 / full.held.events as f64,
        );
    }
    let _ = writeln!(
        out,
        "  a version with its content: (S_full - S0{}) / {kept_now} = {:.2} MiB ({:.1} KiB a document, of which {:.1} KiB content: the payloads and vectors of the events holding it, the blob's bytes)",
        if versions > kept_now {
            format!(" - {} x {:.2}", versions - kept_now, without_content / MIB)
        } else {
            String::new()
        },
        with_content / MIB,
        per_doc(with_content) / 1024.0,
        per_doc(s1.held.content as f64) / 1024.0,
    );
    let budget = TARGET_RATIO * total1;
    let mut kept_counts = vec![kept_now];
    // Fewer versions with content than the run kept needs the size of a version without
    // it, measured only when some version lost its content.
    if kept_now > 1 && !stripped.is_nan() {
        kept_counts.push(1);
    }
    for kept in kept_counts {
        let stripped_versions = versions - kept;
        let floor = empty + kept as f64 * with_content + stripped_versions as f64 * without_content;
        let ratio = floor / total1;
        // What a version without its content could take at most for the target to hold.
        let room = budget - empty - kept as f64 * with_content;
        let verdict = if ratio <= TARGET_RATIO {
            "reachable".to_owned()
        } else if room <= 0.0 {
            format!(
                "not reachable: S0 and {kept} {} with content alone are {:.2}x S1",
                if kept == 1 { "version" } else { "versions" },
                (empty + kept as f64 * with_content) / total1
            )
        } else {
            format!(
                "reachable if a version without its content took at most {:.0} B a document",
                per_doc(room / stripped_versions as f64)
            )
        };
        let _ = writeln!(
            out,
            "  floor with {kept} {} of content{}: S0 + {kept} x {:.2} + {stripped_versions} x {:.2} = {:.1} MiB = {ratio:.2}x S1 (target <= {TARGET_RATIO}: {verdict})",
            if kept == 1 { "version" } else { "versions" },
            if kept == kept_now { " (S_full)" } else { "" },
            with_content / MIB,
            without_content / MIB,
            floor / MIB,
        );
    }
    out
}
