//! Concurrent appenders and one reader following the log, against real PostgreSQL.
//!
//! Sixteen writers append in their own transactions, hold them open for a random short
//! while and commit (or roll back about one in twenty), while a reader follows `read_after`
//! from the start. When the writers are done and the reader has drained the log, the reader
//! must have read exactly the committed events: none lost, none twice, none rolled back, and
//! every stream in its own order.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use docledger::eventlog::{Appended, PgLog};
use projections::LogSource;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{doc, request, row_events, Follower, TestLog, HORIZON_PATIENCE};

const NUM_WRITERS: usize = 16;
const APPENDS_PER_WRITER: usize = 1000;
/// Streams per writer; each writer owns its streams, so appends never conflict and every
/// writer knows its streams' versions.
const STREAMS_PER_WRITER: usize = 64;
/// Events per append: 1 to this many.
const MAX_EVENTS_PER_APPEND: usize = 3;
const MAX_COMMIT_DELAY_MICROS: u64 = 3_000;
const ROLLBACK_PROBABILITY: f64 = 0.05;
const READ_LIMIT: usize = 500;
/// One connection per writer, one for the reader, one spare.
const POOL_SIZE: usize = NUM_WRITERS + 2;
/// Signals the reader that the writers are not done yet.
const UNKNOWN_TOTAL: usize = usize::MAX;

/// What one writer committed, as `(stream, stream_version)`.
struct WriterOutcome {
    committed: Vec<(String, i64)>,
    num_rolled_back: usize,
}

async fn writer(log: PgLog, index: usize) -> Result<WriterOutcome> {
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + index as u64);
    let mut client = log.client().await.context("writer connection")?;
    let mut versions: HashMap<usize, i64> = HashMap::new();
    let mut committed = Vec::new();
    let mut num_rolled_back = 0;
    for attempt in 0..APPENDS_PER_WRITER {
        let stream = rng.random_range(0..STREAMS_PER_WRITER);
        let doc_id = doc(&format!("w{index:02}/doc-{stream:02}"));
        let expected = versions.get(&stream).copied().unwrap_or(0);
        let num_events = rng.random_range(1..=MAX_EVENTS_PER_APPEND);
        let events = row_events(expected as u64 + 1, num_events, doc_id.as_str());
        let at = || format!("writer {index}, append {attempt}, stream {doc_id}");
        let tx = client.transaction().await.with_context(at)?;
        let appended = log
            .appends()
            .append_in(&tx, request(&doc_id, expected, &events))
            .await
            .with_context(at)?;
        let Appended::Committed { stream_version, .. } = appended else {
            bail!("append without idempotency key answered {appended:?}");
        };
        ensure!(stream_version == expected + num_events as i64);
        let delay = rng.random_range(0..=MAX_COMMIT_DELAY_MICROS);
        tokio::time::sleep(Duration::from_micros(delay)).await;
        if rng.random_bool(ROLLBACK_PROBABILITY) {
            tx.rollback().await.with_context(at)?;
            num_rolled_back += 1;
        } else {
            tx.commit().await.with_context(at)?;
            versions.insert(stream, stream_version);
            committed.extend((expected + 1..=stream_version).map(|v| (doc_id.to_string(), v)));
        }
    }
    Ok(WriterOutcome {
        committed,
        num_rolled_back,
    })
}

/// Follows the log until it has read `total` events (known once the writers are done) and
/// nothing more comes. Returns the follower and how many events it read while writers ran.
async fn reader(log: PgLog, total: Arc<AtomicUsize>) -> Result<(Follower, usize)> {
    let mut follower = Follower::new(READ_LIMIT);
    let mut read_while_writing = 0;
    let mut idle_since: Option<Instant> = None;
    loop {
        let n = follower
            .read_page(&log)
            .await
            .with_context(|| format!("reader after {} events", follower.events.len()))?;
        let expected = total.load(Ordering::Acquire);
        if expected == UNKNOWN_TOTAL {
            read_while_writing += n;
        }
        if n > 0 {
            idle_since = None;
            continue;
        }
        if expected != UNKNOWN_TOTAL && follower.events.len() >= expected {
            return Ok((follower, read_while_writing));
        }
        let idle = *idle_since.get_or_insert_with(Instant::now);
        ensure!(
            expected == UNKNOWN_TOTAL || idle.elapsed() < HORIZON_PATIENCE,
            "reader stuck at {} of {expected} events",
            follower.events.len()
        );
        log.wait_for_append(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_and_a_following_reader_agree_exactly() -> Result<()> {
    let t = TestLog::create("sixteen_writers", POOL_SIZE).await?;
    let started = Instant::now();
    let total = Arc::new(AtomicUsize::new(UNKNOWN_TOTAL));
    let reader = tokio::spawn(reader(t.log.clone(), total.clone()));
    let writers: Vec<_> = (0..NUM_WRITERS)
        .map(|i| tokio::spawn(writer(t.log.clone(), i)))
        .collect();
    let mut committed = Vec::new();
    let mut num_rolled_back = 0;
    for handle in writers {
        let outcome = handle.await.context("writer task")??;
        committed.extend(outcome.committed);
        num_rolled_back += outcome.num_rolled_back;
    }
    let writing = started.elapsed();
    total.store(committed.len(), Ordering::Release);
    let (follower, read_while_writing) = reader.await.context("reader task")??;
    let elapsed = started.elapsed();

    let read = follower.keys();
    let read_set: HashSet<&(String, i64)> = read.iter().collect();
    let committed_set: HashSet<&(String, i64)> = committed.iter().collect();
    assert_eq!(read_set.len(), read.len(), "an event was read twice");
    assert_eq!(committed_set.len(), committed.len());
    let lost: Vec<_> = committed_set.difference(&read_set).take(5).collect();
    let extra: Vec<_> = read_set.difference(&committed_set).take(5).collect();
    assert!(lost.is_empty(), "committed but never read: {lost:?}…");
    assert!(
        extra.is_empty(),
        "read but not committed (rolled back?): {extra:?}…"
    );

    // Every stream is read in its own order, without gaps.
    let mut per_stream: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (stream, version) in &read {
        per_stream.entry(stream).or_default().push(*version);
    }
    for (stream, versions) in &per_stream {
        let in_order: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(versions, &in_order, "stream {stream}");
        let state = t
            .log
            .reads()
            .stream_state(&doc(stream))
            .await?
            .context("a read stream exists")?;
        assert_eq!(
            state.stream_version,
            versions.len() as i64,
            "stream {stream}"
        );
    }

    eprintln!(
        "{NUM_WRITERS} writers x {APPENDS_PER_WRITER} appends: {} events committed, \
         {num_rolled_back} appends rolled back, {} streams; writers took {writing:.1?}, \
         reader read {read_while_writing} events while they ran and drained at {elapsed:.1?}",
        committed.len(),
        per_stream.len()
    );
    t.drop_database().await
}
